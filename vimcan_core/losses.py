"""Training losses of VIMCAN (differentiable, torch).

Inputs: ``pred`` and ``target`` B x T x 17 x 3, root-relative joints in metres (camera frame).
The losses are computed in metres (the scale the weights below were chosen for, as in
MotionBERT / MixSTE); the reported metrics in ``vimcan_core.metrics`` are in millimetres.

    total = MPJPE + 0.5 N-MPJPE + 20 MPJVE + 0.5 TC

* MPJPE: mean joint distance.  N-MPJPE: the same after the per-frame least-squares scale of the
  prediction.  MPJVE: mean distance between predicted and true velocities (frame differences).
* TC, temporal consistency: the mean squared frame-to-frame motion of the prediction, weighted
  per joint with distal joints (wrists, ankles, elbows, knees, head) weighted higher
  (``TC_JOINT_WEIGHTS``, the weights of MixSTE).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from vimcan_core.errors import InputShapeError

#: per-joint weights of the temporal-consistency loss (H36M order): distal joints weigh more
TC_JOINT_WEIGHTS: tuple[float, ...] = (1.0, 1.0, 2.5, 2.5, 1.0, 2.5, 2.5, 1.0, 1.0, 1.0, 1.5, 1.5, 4.0, 4.0, 1.5, 4.0, 4.0)


@dataclass(frozen=True)
class LossWeights:
    """Weights of the total loss (the paper's)."""

    mpjpe: float = 1.0
    n_mpjpe: float = 0.5
    mpjve: float = 20.0
    tc: float = 0.5


@dataclass(frozen=True)
class LossTerms:
    """The total and its terms (0-dim tensors, metres); ``total`` is the one to backpropagate."""

    total: Tensor
    mpjpe: Tensor
    n_mpjpe: Tensor
    mpjve: Tensor
    tc: Tensor

    def as_floats(self) -> dict[str, float]:
        return {k: float(getattr(self, k).detach()) for k in ("total", "mpjpe", "n_mpjpe", "mpjve", "tc")}


def _check(pred: Tensor, target: Tensor) -> None:
    if pred.shape != target.shape or pred.dim() != 4 or pred.shape[-1] != 3:
        raise InputShapeError(
            f"losses need pred and target both B x T x J x 3 (metres), got {tuple(pred.shape)} and {tuple(target.shape)}"
        )


def mpjpe_loss(pred: Tensor, target: Tensor) -> Tensor:
    """Mean joint distance, metres. B x T x J x 3 -> scalar."""
    return (pred - target).norm(dim=-1).mean()


def n_mpjpe_loss(pred: Tensor, target: Tensor) -> Tensor:
    """MPJPE after scaling pred per frame by the least-squares s = <p, t> / <p, p>."""
    pp = (pred * pred).sum(dim=(-2, -1), keepdim=True)  # B x T x 1 x 1
    pt = (pred * target).sum(dim=(-2, -1), keepdim=True)
    return mpjpe_loss(pt / pp.clamp_min(1e-12) * pred, target)


def mpjve_loss(pred: Tensor, target: Tensor) -> Tensor:
    """Mean velocity error (first differences along T), metres per frame; 0 when T = 1."""
    if pred.shape[1] < 2:
        return pred.new_zeros(())
    return ((pred[:, 1:] - pred[:, :-1]) - (target[:, 1:] - target[:, :-1])).norm(dim=-1).mean()


def tc_loss(pred: Tensor, weights: Tensor | None = None) -> Tensor:
    """Weighted temporal consistency: mean over B, T-1, J, xyz of w_j * (p_{t+1} - p_t)^2."""
    if pred.shape[1] < 2:
        return pred.new_zeros(())
    if weights is None:
        weights = torch.tensor(TC_JOINT_WEIGHTS, dtype=pred.dtype, device=pred.device)
    diff = pred[:, 1:] - pred[:, :-1]  # B x (T-1) x J x 3
    return (diff.square() * weights[:, None]).mean()


def vimcan_loss_terms(pred: Tensor, target: Tensor, weights: LossWeights = LossWeights()) -> LossTerms:
    """Every term of the training loss and the weighted total."""
    _check(pred, target)
    terms = dict(
        mpjpe=mpjpe_loss(pred, target),
        n_mpjpe=n_mpjpe_loss(pred, target),
        mpjve=mpjve_loss(pred, target),
        tc=tc_loss(pred),
    )
    total = sum(getattr(weights, k) * v for k, v in terms.items())
    return LossTerms(total=total, **terms)


def vimcan_loss(pred: Tensor, target: Tensor, weights: LossWeights = LossWeights()) -> Tensor:
    """The training loss MPJPE + 0.5 N-MPJPE + 20 MPJVE + 0.5 TC (scalar tensor, metres).
    pred, target: B x T x 17 x 3 root-relative, metres."""
    return vimcan_loss_terms(pred, target, weights).total
