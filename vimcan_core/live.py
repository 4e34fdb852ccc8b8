"""One-frame-at-a-time pose estimation with a streaming (causal) VIMCAN.

    est = StreamingPoseEstimator("runs/vimcan-t-stream.pt")      # or a Vimcan instance
    joints_cam_m = est.step(kp_17x3, quats_6x4, imu_valid_6)     # 17 x 3 numpy, metres
    est.reset()                                                  # a new take

Inputs per frame (conventions of ``vimcan_core.model.config``): keypoints 17 x 3 (x, y
normalised, confidence) or 17 x 2; bone-in-camera quaternions 6 x 4 (w x y z); IMU validity
6 bool. The estimator carries the model's convolution and SSM states between calls, runs under
``torch.inference_mode`` and picks CUDA when available (``device="auto"``). On the CPU each
frame takes the model's inference-only path (``SSMMixer.infer`` / ``step``: two fused C kernel
calls per mixer, derived weights cached), which gives the reference path's poses to ~1e-6 m.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from vimcan_core.errors import InputShapeError, VimcanError
from vimcan_core.model.scan import cuda_scan_available
from vimcan_core.model import scan_cpu
from vimcan_core.model.vimcan import Vimcan, VimcanState
from vimcan_core.skeleton import NUM_IMUS, NUM_JOINTS

log = logging.getLogger(__name__)


def pick_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"``: CUDA when available, else the CPU; anything else as given."""
    if isinstance(device, str) and device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


class StreamingPoseEstimator:
    """Wraps a streaming VIMCAN for live use: ``step`` one frame, get 17 x 3 joints."""

    def __init__(self, model: Vimcan | str | Path, device: str | torch.device = "auto") -> None:
        self.device = pick_device(device)
        if isinstance(model, (str, Path)):
            from vimcan_core.model.checkpoint import load_checkpoint

            model, self.metadata = load_checkpoint(model, device=self.device)
        else:
            self.metadata = {}
        if not model.config.streaming:
            raise VimcanError(
                "StreamingPoseEstimator needs a streaming (causal) model; train one with "
                "preset(..., streaming=True) (the bidirectional model is for offline takes)"
            )
        self.model = model.to(self.device).eval()
        self._uses_imu = model.config.uses_imu
        self._state: VimcanState | None = None
        self.reset()
        log.info("streaming pose estimator on %s", self.backend)

    @property
    def backend(self) -> str:
        """Device and scan implementation, e.g. ``"cpu / fused C kernel"`` or ``"cuda / mamba_ssm"``.
        (On the CPU, stepping runs the fused inference kernels of ``scan_cpu`` when they build;
        elsewhere the recurrence in PyTorch. The scan backend named is the one ``forward`` uses.)"""
        if self.device.type == "cuda":
            return "cuda / mamba_ssm" if cuda_scan_available() else "cuda / chunked scan"
        if self.device.type == "cpu" and scan_cpu.load_kernel() is not None:
            return "cpu / fused C kernel"
        return f"{self.device.type} / chunked scan"

    def reset(self) -> None:
        """Forget the past (start of a new take)."""
        self._state = self.model.init_state(1, device=self.device)

    @torch.inference_mode()
    def step(self, keypoints: np.ndarray, quats: np.ndarray | None = None,
             imu_valid: np.ndarray | None = None) -> np.ndarray:
        """keypoints 17 x 3 (or 17 x 2), quats 6 x 4, imu_valid 6 -> 17 x 3 root-relative joints, camera frame, metres."""
        kp = np.asarray(keypoints, dtype=np.float32)
        if kp.shape not in ((NUM_JOINTS, 3), (NUM_JOINTS, 2)):
            raise InputShapeError(f"StreamingPoseEstimator.step: keypoints must be {NUM_JOINTS} x 3 or {NUM_JOINTS} x 2, got {kp.shape}")
        q_t = valid_t = None
        if self._uses_imu:
            q = np.asarray(quats, dtype=np.float32) if quats is not None else None
            if q is None or q.shape != (NUM_IMUS, 4):
                raise InputShapeError(f"StreamingPoseEstimator.step: quats must be {NUM_IMUS} x 4 (w x y z), got "
                                      f"{None if q is None else q.shape}")
            valid = np.ones(NUM_IMUS, bool) if imu_valid is None else np.asarray(imu_valid, dtype=bool)
            if valid.shape != (NUM_IMUS,):
                raise InputShapeError(f"StreamingPoseEstimator.step: imu_valid must have {NUM_IMUS} entries, got {valid.shape}")
            q_t = torch.from_numpy(q)[None].to(self.device)
            valid_t = torch.from_numpy(valid)[None].to(self.device)
        kp_t = torch.from_numpy(kp)[None].to(self.device)
        joints, self._state = self.model.step(kp_t, q_t, valid_t, self._state)
        return joints[0].float().cpu().numpy()
