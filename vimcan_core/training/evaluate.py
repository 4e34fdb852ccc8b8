"""Evaluation the way the paper reports it: P1 (MPJPE) and P2 (P-MPJPE) in millimetres on
root-relative joints in the camera frame, per clip and over all frames.

The bidirectional model sees each clip in consecutive windows of ``window`` frames (81 by
default, the longest training window; a last short window is taken as the final ``window``
frames of the clip so every window is full length). The streaming model runs over the whole
clip at once (it is causal, so this equals stepping frame by frame).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import partial

import numpy as np
import torch
from torch import nn

from vimcan_core.dataset import EvalClip

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ClipResult:
    name: str
    frames: int
    p1_mm: float  # MPJPE
    p2_mm: float  # P-MPJPE (Procrustes-aligned per frame)


@dataclass(frozen=True)
class EvalResult:
    clips: tuple[ClipResult, ...]

    @property
    def frames(self) -> int:
        return sum(c.frames for c in self.clips)

    @property
    def p1_mm(self) -> float:
        """Frame-weighted mean over clips."""
        return float(sum(c.p1_mm * c.frames for c in self.clips) / max(self.frames, 1))

    @property
    def p2_mm(self) -> float:
        return float(sum(c.p2_mm * c.frames for c in self.clips) / max(self.frames, 1))

    def to_dict(self) -> dict:
        return {
            "p1_mm": round(self.p1_mm, 2), "p2_mm": round(self.p2_mm, 2), "frames": self.frames,
            "clips": [{"name": c.name, "frames": c.frames, "p1_mm": round(c.p1_mm, 2), "p2_mm": round(c.p2_mm, 2)} for c in self.clips],
        }


def _windows(num_frames: int, window: int) -> list[tuple[int, int]]:
    """(start, stop) windows covering [0, num_frames); the last aligned to the end."""
    if num_frames <= window:
        return [(0, num_frames)]
    starts = list(range(0, num_frames - window + 1, window))
    if starts[-1] + window < num_frames:
        starts.append(num_frames - window)
    return [(s, s + window) for s in starts]


@torch.no_grad()
def predict_clip(model: nn.Module, clip: EvalClip, window: int | None = 81, device: str | torch.device = "cpu",
                 flip: bool = False) -> np.ndarray:
    """Model output for a whole clip: T x 17 x 3 (root-relative, camera frame, metres).

    window None: the whole clip in one pass (streaming / causal models); flip: averaged with the
    mirrored prediction of the mirrored inputs (``model.mirror.flip_averaged``)."""
    from vimcan_core.model.mirror import flip_averaged

    run = partial(flip_averaged, model) if flip else model
    s = clip.sample
    kp = torch.from_numpy(s.keypoints).float().to(device)  # T x 17 x 3
    q = torch.from_numpy(s.quats).float().to(device)  # T x 6 x 4
    valid = torch.from_numpy(s.imu_valid).to(device)  # T x 6
    n = kp.shape[0]
    if window is None:
        return run(kp[None], q[None], imu_valid=valid[None])[0].double().cpu().numpy()
    out = np.zeros((n, 17, 3))
    wins = _windows(n, window)
    full = [w for w in wins if w[1] - w[0] == min(window, n)]
    idx = torch.stack([torch.arange(a, b) for a, b in full]).to(device)  # W x L
    pred = run(kp[idx], q[idx], imu_valid=valid[idx]).double().cpu().numpy()  # W x L x 17 x 3
    for (a, b), p in zip(full, pred):
        out[a:b] = p  # the last (end-aligned) window overwrites the overlap
    return out


def evaluate(model: nn.Module, clips: list[EvalClip], window: int | None = 81, device: str | torch.device = "cpu",
             flip: bool = False, known_height: bool = False) -> EvalResult:
    """P1 / P2 per clip (mm). The model is put in eval mode and restored afterwards. ``flip``: see
    ``predict_clip``; ``known_height``: each clip's prediction is scaled to the height of its true
    skeleton first (``body_scale.scale_to_height``), as the studio does with a performer height."""
    from vimcan_core.body_scale import scale_to_height, skeleton_height_m
    from vimcan_core.metrics import mpjpe_mm, p_mpjpe_mm

    was_training = model.training
    model.eval()
    results = []
    try:
        for c in clips:
            pred_np = predict_clip(model, c, window, device, flip)  # T x 17 x 3
            if known_height:
                pred_np, _ = scale_to_height(pred_np, skeleton_height_m(c.sample.target))
            pred = torch.from_numpy(pred_np)
            tgt = torch.from_numpy(c.sample.target)
            results.append(ClipResult(c.name, int(tgt.shape[0]), float(mpjpe_mm(pred, tgt)), float(p_mpjpe_mm(pred, tgt))))
    finally:
        model.train(was_training)
    return EvalResult(tuple(results))


def format_table(result: EvalResult, title: str = "") -> str:
    """A plain-text table of P1 / P2 per clip and overall."""
    w = max([len(c.name) for c in result.clips] + [7])
    lines = [title] if title else []
    lines.append(f"{'clip':<{w}}  {'frames':>7}  {'P1 mm':>7}  {'P2 mm':>7}")
    for c in result.clips:
        lines.append(f"{c.name:<{w}}  {c.frames:>7d}  {c.p1_mm:>7.1f}  {c.p2_mm:>7.1f}")
    lines.append(f"{'overall':<{w}}  {result.frames:>7d}  {result.p1_mm:>7.1f}  {result.p2_mm:>7.1f}")
    return "\n".join(lines)
