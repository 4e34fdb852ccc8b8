"""Is the performer holding still? Angular rate and orientation spread of each IMU over a window.

Used by the T-pose capture (the wizard restarts the capture when someone moved) and by the
per-sensor quality score of ``vimcan_core.calibration``. Works on the sensors' own
quaternions (sensor-to-IMU-world, wxyz), so it needs no calibration and no gyroscope; a NaN
row (a missing sample) is skipped.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from vimcan_core.errors import InputShapeError
from vimcan_core.rotations import quat_angle, quat_normalize


@dataclass(frozen=True)
class StillnessConfig:
    """Thresholds of ``detect_stillness``."""

    max_rate_dps: float = 15.0  # peak angular rate between block means; a held pose stays well below
    max_spread_deg: float = 4.0  # largest angle of a block mean from the window's mean orientation
    block_s: float = 0.2  # samples are averaged in blocks this long first, so sensor noise is not taken for motion
    min_samples: int = 5  # fewer valid samples than this: not enough evidence, not still


@dataclass(frozen=True, eq=False)
class Stillness:
    """Result of ``detect_stillness``, one entry per sensor (S = number of sensors, 6 in site order)."""

    still: np.ndarray  # S bool
    peak_rate_dps: np.ndarray  # S, NaN where fewer than two valid samples
    spread_deg: np.ndarray  # S, NaN where no valid sample
    valid_samples: np.ndarray  # S int

    @property
    def all_still(self) -> bool:
        return bool(np.all(self.still))


def mean_quat(quats: np.ndarray) -> np.ndarray:
    """Average orientation of ``N x ... x 4`` quaternions along axis 0 -> ``... x 4``.

    The largest eigenvector of the sum of outer products (Markley et al. 2007), so that q and
    -q count the same; NaN samples are ignored, all-NaN gives NaN.
    """
    quats = np.asarray(quats, dtype=np.float64)
    ok = np.all(np.isfinite(quats), axis=-1)  # N x ...
    q = np.where(ok[..., None], quats, 0.0)
    m = np.einsum("n...i,n...j->...ij", q, q)  # ... x 4 x 4
    _, vecs = np.linalg.eigh(m)
    out = quat_normalize(vecs[..., :, -1])
    return np.where(np.any(ok, axis=0)[..., None], out, np.nan)


def angular_rate_dps(quats: np.ndarray, times_s: np.ndarray) -> np.ndarray:
    """Angular rate between consecutive samples: ``N x S x 4`` quats, ``N`` times -> ``(N-1) x S`` deg/s."""
    quats = np.asarray(quats, dtype=np.float64)
    times_s = np.asarray(times_s, dtype=np.float64)
    if quats.ndim != 3 or quats.shape[-1] != 4 or times_s.shape != quats.shape[:1]:
        raise InputShapeError(f"angular_rate_dps: expected quats N x S x 4 and times N, got {quats.shape} and {times_s.shape}")
    dt = np.diff(times_s)[:, None]  # (N-1) x 1
    dt = np.where(dt > 1e-6, dt, np.nan)
    return np.degrees(quat_angle(quats[1:], quats[:-1])) / dt


def detect_stillness(
    quats: np.ndarray, times_s: np.ndarray, config: StillnessConfig = StillnessConfig()
) -> Stillness:
    """Which sensors held still over a window.

    Args:
        quats: N x S x 4, wxyz, each sensor's own orientation (sensor-to-IMU-world); NaN rows skipped.
        times_s: N, seconds (any origin), increasing.
        config: thresholds.

    The samples of each sensor are first averaged over blocks of ``block_s`` (white orientation
    noise of a few degrees per sample would otherwise look like hundreds of degrees per second).
    A sensor is still when it has ``min_samples`` valid samples, the peak rate between
    consecutive block means is below ``max_rate_dps`` and no block mean is further than
    ``max_spread_deg`` from the window's mean orientation (the spread catches a slow drift
    that stays under the rate threshold).
    """
    quats = np.asarray(quats, dtype=np.float64)
    times_s = np.asarray(times_s, dtype=np.float64)
    if quats.ndim != 3 or quats.shape[-1] != 4 or times_s.shape != quats.shape[:1]:
        raise InputShapeError(f"detect_stillness: expected quats N x S x 4 and times N, got {quats.shape} and {times_s.shape}")
    n_sensors = quats.shape[1]
    ok = np.all(np.isfinite(quats), axis=-1)  # N x S
    peak = np.full(n_sensors, np.nan)
    spread = np.full(n_sensors, np.nan)
    block = np.floor((times_s - times_s[0]) / config.block_s).astype(int) if n_sensors and times_s.size else np.zeros(0, int)
    for s in range(n_sensors):
        idx = np.flatnonzero(ok[:, s])
        if idx.size == 0:
            continue
        blocks = np.unique(block[idx])
        means = np.stack([mean_quat(quats[idx[block[idx] == b], s]) for b in blocks])  # K x 4
        centres = np.array([times_s[idx[block[idx] == b]].mean() for b in blocks])  # K
        if blocks.size >= 2:
            peak[s] = float(np.nanmax(angular_rate_dps(means[:, None], centres)[:, 0], initial=0.0))
        else:
            peak[s] = 0.0
        spread[s] = float(np.degrees(np.max(quat_angle(means, mean_quat(quats[idx, s])))))
    count = ok.sum(axis=0)
    with np.errstate(invalid="ignore"):
        still = (count >= config.min_samples) & (peak < config.max_rate_dps) & (spread < config.max_spread_deg)
    return Stillness(still=still, peak_rate_dps=peak, spread_deg=spread, valid_samples=count)
