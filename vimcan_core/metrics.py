"""Pose metrics in millimetres, root-relative (the numbers of the paper's tables).

Inputs are joint positions in metres, ``... x T x 17 x 3`` (any leading axes, typically
B x T x 17 x 3 or T x 17 x 3), as numpy arrays or torch tensors; both are made root-relative
(pelvis, joint 0, subtracted) before comparing. Each function returns one float: the mean
over every frame and joint.

* ``mpjpe_mm`` (Protocol 1): mean Euclidean joint error.
* ``p_mpjpe_mm`` (Protocol 2): after the per-frame similarity transform (rotation, uniform
  scale, translation) that best aligns the prediction to the target (Procrustes).
* ``n_mpjpe_mm``: after the per-frame least-squares scale of the prediction.
* ``mpjve_mm``: mean Euclidean error of the joint velocities (first differences over frames),
  millimetres per frame.
"""

from __future__ import annotations

import numpy as np

from vimcan_core.errors import InputShapeError

def _as_numpy(x, name: str) -> np.ndarray:
    if hasattr(x, "detach"):  # torch tensor, without importing torch here
        x = x.detach().cpu().double().numpy()
    a = np.asarray(x, dtype=np.float64)
    if a.ndim < 2 or a.shape[-1] != 3:
        raise InputShapeError(f"{name} must be ... x J x 3 joint positions in metres, got shape {a.shape}")
    return a


def _pair(pred, target) -> tuple[np.ndarray, np.ndarray]:
    p = _as_numpy(pred, "pred")
    t = _as_numpy(target, "target")
    if p.shape != t.shape:
        raise InputShapeError(f"pred and target must have the same shape, got {p.shape} and {t.shape}")
    return p - p[..., :1, :], t - t[..., :1, :]


def mpjpe_mm(pred, target) -> float:
    """Mean per-joint position error (P1), mm. pred, target: ... x J x 3 metres."""
    p, t = _pair(pred, target)
    return float(np.linalg.norm(p - t, axis=-1).mean() * 1000.0)


def procrustes_align(pred: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Per-frame similarity alignment of pred to target: ... x J x 3 -> ... x J x 3 (scale * R pred + t)."""
    mu_p = pred.mean(axis=-2, keepdims=True)
    mu_t = target.mean(axis=-2, keepdims=True)
    p0 = pred - mu_p
    t0 = target - mu_t
    norm_p = np.sqrt((p0 ** 2).sum(axis=(-2, -1), keepdims=True))
    norm_t = np.sqrt((t0 ** 2).sum(axis=(-2, -1), keepdims=True))
    p0 = p0 / np.maximum(norm_p, 1e-12)
    t0 = t0 / np.maximum(norm_t, 1e-12)
    H = np.swapaxes(t0, -1, -2) @ p0  # ... x 3 x 3
    U, s, Vt = np.linalg.svd(H)
    V = np.swapaxes(Vt, -1, -2)
    # R = V U^T maximises tr(t0^T p0 R) (row vectors: aligned = p0 @ R, as VideoPose3D); no reflections:
    # flip the last singular direction where det(V U^T) < 0
    sign = np.sign(np.linalg.det(V @ np.swapaxes(U, -1, -2)))
    V[..., :, -1] *= sign[..., None]
    s[..., -1] *= sign
    R = V @ np.swapaxes(U, -1, -2)  # ... x 3 x 3
    scale = s.sum(axis=-1)[..., None, None] * norm_t / np.maximum(norm_p, 1e-12)
    return scale * (pred - mu_p) @ R + mu_t


def p_mpjpe_mm(pred, target) -> float:
    """Procrustes-aligned MPJPE (P2), mm: rotation, scale and translation removed per frame."""
    p, t = _pair(pred, target)
    return float(np.linalg.norm(procrustes_align(p, t) - t, axis=-1).mean() * 1000.0)


def n_mpjpe_mm(pred, target) -> float:
    """Scale-normalised MPJPE, mm: pred scaled per frame by the least-squares s = <p, t> / <p, p>."""
    p, t = _pair(pred, target)
    s = (p * t).sum(axis=(-2, -1), keepdims=True) / np.maximum((p * p).sum(axis=(-2, -1), keepdims=True), 1e-12)
    return float(np.linalg.norm(s * p - t, axis=-1).mean() * 1000.0)


def mpjve_mm(pred, target) -> float:
    """Mean per-joint velocity error, mm per frame. pred, target: ... x T x J x 3 with T >= 2."""
    p, t = _pair(pred, target)
    if p.ndim < 3 or p.shape[-3] < 2:
        raise InputShapeError(f"mpjve needs ... x T x J x 3 with T >= 2 frames, got shape {p.shape}")
    dv = np.diff(p, axis=-3) - np.diff(t, axis=-3)
    return float(np.linalg.norm(dv, axis=-1).mean() * 1000.0)
