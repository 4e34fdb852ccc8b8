"""Metrics (mm) and losses (m) against hand-computed values."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vimcan_core.errors import InputShapeError
from vimcan_core.losses import TC_JOINT_WEIGHTS, LossWeights, vimcan_loss, vimcan_loss_terms
from vimcan_core.metrics import mpjpe_mm, mpjve_mm, n_mpjpe_mm, p_mpjpe_mm
from vimcan_core.rotations import quat_from_axis_angle, quat_to_matrix
from vimcan_core.skeleton import default_rest_pose


def _pose() -> np.ndarray:
    """The T-pose, root-relative, 17 x 3 metres."""
    p = default_rest_pose().positions()
    return p - p[:1]


def test_mpjpe_hand_computed() -> None:
    target = _pose()
    pred = target.copy()
    pred[1:] += [0.003, 0.004, 0.0]  # every non-root joint 5 mm off, the root exact
    assert mpjpe_mm(pred, target) == pytest.approx(5.0 * 16 / 17)
    # a global translation is removed (root-relative)
    assert mpjpe_mm(target + [1.0, 2.0, 3.0], target) == pytest.approx(0.0, abs=1e-9)
    # torch tensors and batches work the same
    assert mpjpe_mm(torch.tensor(pred)[None, None], torch.tensor(target)[None, None]) == pytest.approx(5.0 * 16 / 17)


def test_p_mpjpe_removes_a_known_similarity_transform() -> None:
    target = np.stack([_pose(), _pose() * 0.9])  # 2 frames
    R = quat_to_matrix(quat_from_axis_angle(np.array([0.3, 1.0, -0.2]) / np.linalg.norm([0.3, 1.0, -0.2]), 0.7))
    pred = 1.3 * target @ R.T + np.array([0.5, -0.2, 2.0])
    assert mpjpe_mm(pred, target) > 50.0
    assert p_mpjpe_mm(pred, target) == pytest.approx(0.0, abs=1e-6)
    # a reflection is not a rotation: P2 must not remove it (a chiral, non-planar point cloud)
    cloud = np.random.default_rng(0).normal(size=(17, 3)) * 0.3
    assert p_mpjpe_mm(cloud * np.array([-1.0, 1.0, 1.0]), cloud) > 50.0


def test_p_mpjpe_hand_computed_residual() -> None:
    """Two points: any error along the segment's direction is a scale, removed by P2; the
    residual of a symmetric perpendicular error is known in closed form."""
    target = np.array([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0]])
    pred = target * 2.0 + 5.0  # similarity: removed
    assert p_mpjpe_mm(pred, target) == pytest.approx(0.0, abs=1e-9)
    # four points of a square, the prediction a rotated, shrunk square: exact alignment
    sq = np.array([[0, 0, 0], [1, 0, 0], [1, 1, 0], [0, 1, 0]], dtype=float)
    c, s = np.cos(0.4), np.sin(0.4)
    rot = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])
    assert p_mpjpe_mm(0.5 * sq @ rot.T, sq) == pytest.approx(0.0, abs=1e-9)


def test_n_mpjpe_hand_computed() -> None:
    target = _pose()
    assert n_mpjpe_mm(2.0 * target, target) == pytest.approx(0.0, abs=1e-9)
    # pred = target + e with e orthogonal to target: s = <p,t>/<p,p> = |t|^2 / (|t|^2 + |e|^2)
    t = np.array([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0]])
    p = np.array([[0.0, 0.0, 0.0], [1.0, 1.0, 0.0]])
    s = 1.0 / 2.0
    expected = np.linalg.norm(s * p[1] - t[1]) / 2 * 1000.0
    assert n_mpjpe_mm(p, t) == pytest.approx(expected)


def test_mpjve_hand_computed() -> None:
    T = 5
    target = np.repeat(_pose()[None], T, axis=0)
    pred = target.copy()
    pred[:, 13, 0] += 0.002 * np.arange(T)  # the left wrist drifts 2 mm per frame
    assert mpjve_mm(pred, target) == pytest.approx(2.0 / 17)
    assert mpjpe_mm(pred, target) == pytest.approx(np.mean(2.0 * np.arange(T)) / 17)
    with pytest.raises(InputShapeError, match="T >= 2"):
        mpjve_mm(pred[:1], target[:1])


def test_shape_mismatch_is_an_error() -> None:
    with pytest.raises(InputShapeError, match="same shape"):
        mpjpe_mm(np.zeros((3, 17, 3)), np.zeros((2, 17, 3)))


def test_losses_hand_computed() -> None:
    B, T = 1, 3
    target = torch.zeros(B, T, 17, 3, dtype=torch.float64)
    pred = torch.zeros_like(target)
    pred[0, 1, 12, 1] = 0.017  # the left elbow jumps 17 mm up in frame 1 only
    terms = vimcan_loss_terms(pred, target)
    assert float(terms.mpjpe) == pytest.approx(0.017 / (T * 17))
    # N-MPJPE: target all zero, so the best scale is 0 and the error is the target itself: 0
    assert float(terms.n_mpjpe) == pytest.approx(0.0)
    # velocities: +0.017 then -0.017 on one joint, 2 frame pairs x 17 joints
    assert float(terms.mpjve) == pytest.approx(2 * 0.017 / (2 * 17))
    # TC: mean over 2 x 17 x 3 entries of w * diff^2, two entries of 0.017^2 with w = 4
    w = TC_JOINT_WEIGHTS[12]
    assert w == 4.0
    assert float(terms.tc) == pytest.approx(2 * w * 0.017 ** 2 / (2 * 17 * 3))
    expected_total = float(terms.mpjpe) + 0.5 * float(terms.n_mpjpe) + 20 * float(terms.mpjve) + 0.5 * float(terms.tc)
    assert float(vimcan_loss(pred, target)) == pytest.approx(expected_total)
    only_mpjpe = LossWeights(mpjpe=1.0, n_mpjpe=0.0, mpjve=0.0, tc=0.0)
    assert float(vimcan_loss(pred, target, only_mpjpe)) == pytest.approx(float(terms.mpjpe))


def test_distal_joints_weigh_more_in_tc() -> None:
    w = np.array(TC_JOINT_WEIGHTS)
    for distal in (3, 6, 13, 16):  # ankles and wrists
        assert w[distal] > w[0]


def test_loss_is_differentiable_and_zero_at_the_target() -> None:
    target = torch.randn(2, 4, 17, 3, dtype=torch.float64) * 0.2
    pred = target.clone().requires_grad_()
    loss = vimcan_loss(pred, target)
    # TC is a smoothness prior on the prediction, not zero at a moving target; the rest is
    assert loss.item() == pytest.approx(0.5 * vimcan_loss_terms(pred, target).tc.item())
    loss.backward()
    assert torch.isfinite(pred.grad).all()
    with pytest.raises(InputShapeError):
        vimcan_loss(pred[:, :, :3], target)
