"""Forward kinematics on the H36M skeleton and bone orientations from positions.

Local rotations are relative to the T-pose (see ``vimcan_core.skeleton``): joint j's global
rotation is ``global[parent] * local[j]``, and its position is
``pos[parent] + global[parent] * offsets[j]``.
"""

from __future__ import annotations

import numpy as np

from vimcan_core.rotations import quat_mul, quat_rotate
from vimcan_core.skeleton import NUM_JOINTS, PARENTS, RestPose


def forward_kinematics(
    local_quats: np.ndarray, root_pos_m: np.ndarray, rest: RestPose
) -> tuple[np.ndarray, np.ndarray]:
    """Joint positions and bone orientations from local rotations.

    Args:
        local_quats: ... x J x 4, wxyz, each joint's rotation relative to its parent
            (the root's is its global rotation).
        root_pos_m: ... x 3, pelvis position in the world, metres.
        rest: the T-pose bone offsets.

    Returns:
        (joints_world_m ... x J x 3, global_quats ... x J x 4)
    """
    local_quats = np.asarray(local_quats, dtype=np.float64)
    if local_quats.shape[-2:] != (NUM_JOINTS, 4):
        raise ValueError(f"local_quats must be ... x {NUM_JOINTS} x 4, got {local_quats.shape}")
    glob = np.empty_like(local_quats)
    pos = np.empty(local_quats.shape[:-1] + (3,))
    for j, p in enumerate(PARENTS):
        if p < 0:
            glob[..., j, :] = local_quats[..., j, :]
            pos[..., j, :] = root_pos_m
        else:
            glob[..., j, :] = quat_mul(glob[..., p, :], local_quats[..., j, :])
            pos[..., j, :] = pos[..., p, :] + quat_rotate(glob[..., p, :], rest.offsets_m[j])
    return pos, glob


def local_from_global(global_quats: np.ndarray) -> np.ndarray:
    """Inverse of the rotation part of FK: ... x J x 4 global -> ... x J x 4 local."""
    from vimcan_core.rotations import quat_conj

    local = np.empty_like(global_quats)
    for j, p in enumerate(PARENTS):
        local[..., j, :] = global_quats[..., j, :] if p < 0 else quat_mul(quat_conj(global_quats[..., p, :]), global_quats[..., j, :])
    return local


def root_relative(joints_m: np.ndarray) -> np.ndarray:
    """Subtract the pelvis (joint 0): ... x J x 3 -> ... x J x 3."""
    joints_m = np.asarray(joints_m)
    return joints_m - joints_m[..., :1, :]
