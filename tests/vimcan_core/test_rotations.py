"""Quaternion and Euler helpers against scipy's independent implementation."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from vimcan_core import rotations as R
from vimcan_core.skeleton import MIRROR, PARENTS, SKELETON_SCAN_ORDER, default_rest_pose
from vimcan_core.kinematics import forward_kinematics, local_from_global


def _scipy(q: np.ndarray) -> Rotation:
    return Rotation.from_quat(q[..., [1, 2, 3, 0]])


def test_quaternion_products_match_scipy() -> None:
    rng = np.random.default_rng(1)
    a, b = R.random_quat(rng, (50,)), R.random_quat(rng, (50,))
    v = rng.normal(size=(50, 3))
    np.testing.assert_allclose(R.quat_to_matrix(R.quat_mul(a, b)), (_scipy(a) * _scipy(b)).as_matrix(), atol=1e-12)
    np.testing.assert_allclose(R.quat_rotate(a, v), _scipy(a).apply(v), atol=1e-12)
    assert np.max(R.quat_angle(R.matrix_to_quat(R.quat_to_matrix(a)), a)) < 1e-6


@pytest.mark.parametrize("order", ["ZXY", "ZYX", "XYZ", "YXZ", "XZY", "YZX"])
def test_euler_round_trip_matches_scipy(order: str) -> None:
    rng = np.random.default_rng(2)
    angles = rng.uniform(-1.5, 1.5, size=(200, 3))
    m = R.euler_to_matrix(angles, order)
    np.testing.assert_allclose(m, Rotation.from_euler(order, angles).as_matrix(), atol=1e-12)
    np.testing.assert_allclose(R.matrix_to_euler(m, order), angles, atol=1e-9)


def test_slerp_halfway_and_short_arc() -> None:
    a = R.yaw_quat(0.0)
    b = -R.yaw_quat(np.radians(90))  # same rotation, other hemisphere
    mid = R.quat_slerp(a, b, 0.5)
    assert np.degrees(R.quat_angle(mid, R.yaw_quat(np.radians(45)))) < 1e-6


def test_quat_between_takes_u_to_v() -> None:
    rng = np.random.default_rng(3)
    u, v = rng.normal(size=(20, 3)), rng.normal(size=(20, 3))
    q = R.quat_between(u, v)
    out = R.quat_rotate(q, u / np.linalg.norm(u, axis=-1, keepdims=True))
    np.testing.assert_allclose(out, v / np.linalg.norm(v, axis=-1, keepdims=True), atol=1e-9)
    q = R.quat_between(np.array([1.0, 0, 0]), np.array([-1.0, 0, 0]))
    np.testing.assert_allclose(R.quat_rotate(q, np.array([1.0, 0, 0])), [-1, 0, 0], atol=1e-9)


def test_skeleton_tables_are_consistent() -> None:
    assert all(p < c for c, p in enumerate(PARENTS) if p >= 0)
    seen = set()
    for j in SKELETON_SCAN_ORDER:
        assert PARENTS[j] < 0 or PARENTS[j] in seen
        seen.add(j)
    assert sorted(SKELETON_SCAN_ORDER) == list(range(17))
    assert all(MIRROR[MIRROR[j]] == j for j in range(17))
    rest = default_rest_pose()
    pos = rest.positions()
    assert pos[11, 0] > 0 and pos[14, 0] < 0  # left at +X
    assert 1.5 < rest.height() < 1.9


def test_forward_kinematics_identity_is_rest_pose_and_inverts() -> None:
    rest = default_rest_pose()
    local = np.tile(R.IDENTITY_QUAT, (17, 1))
    pos, glob = forward_kinematics(local, rest.offsets_m[0], rest)
    np.testing.assert_allclose(pos, rest.positions(), atol=1e-12)
    rng = np.random.default_rng(4)
    local = R.random_quat(rng, (5, 17))
    pos, glob = forward_kinematics(local, np.zeros((5, 3)), rest)
    assert np.max(R.quat_angle(local_from_global(glob), local)) < 1e-6
    # bone lengths are preserved by any rotation
    for c, p in enumerate(PARENTS):
        if p >= 0:
            np.testing.assert_allclose(np.linalg.norm(pos[:, c] - pos[:, p], axis=-1), np.linalg.norm(rest.offsets_m[c]), atol=1e-9)
