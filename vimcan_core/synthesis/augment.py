"""Augmentation of H36M motion: mirroring, rotation about the vertical, bone-length scaling.

Every function takes world joints ``T x 17 x 3`` (metres, Y up) and bone orientations
``T x 6 x 4`` (wxyz, world from bone, identity in the T-pose) and returns the same.
"""

from __future__ import annotations

import numpy as np

from vimcan_core.rotations import quat_mul, quat_normalize, quat_rotate, yaw_quat
from vimcan_core.skeleton import IMU_MIRROR, MIRROR, MIRROR_POSITION_SIGN, MIRROR_QUAT_SIGN, PARENTS


def mirror(joints_world_m: np.ndarray, bone_quats: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Reflect x -> -x and swap left and right (joints and IMU sites); see ``skeleton.MIRROR_QUAT_SIGN``.
    The T-pose stays the identity."""
    j = joints_world_m[:, list(MIRROR)] * np.array(MIRROR_POSITION_SIGN)
    q = bone_quats[:, list(IMU_MIRROR)] * np.array(MIRROR_QUAT_SIGN)
    return j, q


def rotate_yaw(joints_world_m: np.ndarray, bone_quats: np.ndarray, angle_rad: float) -> tuple[np.ndarray, np.ndarray]:
    """Rotate the whole performance about world +Y through the origin. Training does not call it:
    the model sees everything in the camera frame, where this is the same as the webcam's azimuth
    about the performer, which ``webcam.random_webcam`` draws over the full circle."""
    r = yaw_quat(np.float64(angle_rad))
    return quat_rotate(r, joints_world_m), quat_normalize(quat_mul(r, bone_quats))


def scale_bones(joints_world_m: np.ndarray, factors: np.ndarray) -> np.ndarray:
    """Scale each bone (parent -> joint) by factors[j] (17, factor of the root ignored): the
    pelvis trajectory and every bone direction are kept."""
    out = joints_world_m.copy()
    for j, p in enumerate(PARENTS):
        if p >= 0:
            out[:, j] = out[:, p] + factors[j] * (joints_world_m[:, j] - joints_world_m[:, p])
    return out


def random_bone_factors(rng: np.random.Generator, overall: tuple[float, float] = (0.85, 1.15), per_bone: float = 0.05) -> np.ndarray:
    """17 bone-length factors: one overall body scale times a left/right-symmetric per-bone
    variation of +-per_bone."""
    f = rng.uniform(1.0 - per_bone, 1.0 + per_bone, size=len(PARENTS))
    f = np.where(np.arange(len(PARENTS)) < np.asarray(MIRROR), f, f[list(MIRROR)])  # symmetric
    return rng.uniform(*overall) * f
