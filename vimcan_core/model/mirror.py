"""Left-right mirroring of VIMCAN's inputs and outputs, and flip-averaged prediction.

Mirroring the webcam image (x -> -x about the image centre) mirrors the scene in the camera
frame, so the model's inputs have an exact mirror image: keypoints with x negated and left and
right joints swapped, bone-in-camera quaternions reflected (``skeleton.MIRROR_QUAT_SIGN``) with
left and right sensors swapped. Averaging the prediction with the mirrored prediction of the
mirrored inputs (test-time flip augmentation, as video pose lifters commonly report) removes
part of the model's error; the model was trained with mirrored motion, so both halves are in
distribution. Measured on the validation subjects with the shipped bidirectional model: P1
42.8 -> 42.3 mm clean (P2 27.9 -> 26.6), 50.0 -> 48.9 realistic (P2 33.7 -> 32.3); a less trained
checkpoint gained more (47.4 -> 45.5 clean).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from vimcan_core.skeleton import IMU_MIRROR, MIRROR, MIRROR_POSITION_SIGN, MIRROR_QUAT_SIGN


def mirror_points(points: Tensor) -> Tensor:
    """... x 17 x C joints (C = 3: positions; or keypoints x, y, confidence, whose x is negated
    the same way) -> their mirror image."""
    signs = (MIRROR_POSITION_SIGN + (1.0,) * points.shape[-1])[: points.shape[-1]]  # a confidence keeps its sign
    sign = torch.tensor(signs, dtype=points.dtype, device=points.device)
    return points[..., list(MIRROR), :] * sign


def mirror_quats(quats: Tensor) -> Tensor:
    """... x 6 x 4 bone quaternions (wxyz) -> their mirror image (sites swapped)."""
    sign = torch.tensor(MIRROR_QUAT_SIGN, dtype=quats.dtype, device=quats.device)
    return quats[..., list(IMU_MIRROR), :] * sign


def mirror_imu_valid(imu_valid: Tensor) -> Tensor:
    """... x 6 validity -> the same with the sites swapped."""
    return imu_valid[..., list(IMU_MIRROR)]


def flip_averaged(model: nn.Module, keypoints: Tensor, quats: Tensor | None = None,
                  imu_valid: Tensor | None = None) -> Tensor:
    """``model`` run on the inputs and on their mirror image in one batch of 2B, the second
    output mirrored back, the two averaged: B x T x 17 x 3. Inputs as ``Vimcan.forward``."""
    from vimcan_core.model.vimcan import validate_inputs

    needs_imu = bool(getattr(getattr(model, "config", None), "uses_imu", True))
    kp, q, valid = validate_inputs(keypoints, quats, imu_valid, needs_imu=needs_imu)
    B = kp.shape[0]
    kp2 = torch.cat((kp, mirror_points(kp)))  # 2B x T x 17 x 3
    q2 = None if q is None else torch.cat((q, mirror_quats(q)))  # 2B x T x 6 x 4
    v2 = None if valid is None else torch.cat((valid, mirror_imu_valid(valid)))  # 2B x T x 6
    out = model(kp2, q2, v2)  # 2B x T x 17 x 3
    return 0.5 * (out[:B] + mirror_points(out[B:]))
