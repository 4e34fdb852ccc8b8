"""Noise presets for the synthetic sensor signals, with their numbers.

Two presets, for the IMUs and for the 2D keypoints:

``clean``
    Exact bone orientations (the mounting rotation is undone exactly by the calibration) and
    exact projections with confidence 1.

``realistic`` (IMUs)
    * white orientation noise: 2 degrees RMS angle per sample (``white_deg``);
    * heading (yaw about world up) drift: a smooth error of up to 5 degrees per sensor, a sum of
      two slow sinusoids (0.01-0.1 Hz) scaled to a random amplitude in [0, 5] degrees;
    * residual mounting error after the T-pose calibration: a fixed rotation per sensor and
      clip of 3 degrees RMS angle;
    * timing jitter: each sample is taken at t + dt, dt ~ N(0, 8 ms), clipped to +-1 frame
      (Bluetooth packets arrive late or early relative to the camera frame);
    * free acceleration noise: 0.15 m/s^2 white.

``realistic`` (keypoints, modelled on MediaPipe Pose's errors on webcam video)
    * pixel noise proportional to the person's height in the image (H, pixels): a per-frame
      white part of 0.8 % H and a slowly varying (AR(1), 0.9 per frame) part of 1.0 % H,
      scaled per joint (x1.5 wrists and ankles, x1.3 elbows and knees, x2 hips, whose
      landmark MediaPipe places inconsistently);
    * outliers: 1 % of joints per frame are displaced by 10-30 % H, with confidence 0.1-0.5;
    * left/right swaps: 0.5 % of frames start a swap of all left and right joints lasting
      1-4 frames, with full confidence (the detector is confidently wrong);
    * low-confidence joints: 5 % of joints have confidence 0-0.5 and three times the noise;
      the others have confidence 0.75-1;
    * joints outside the image get a confidence of at most 0.1.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


class NoisePreset(Enum):
    CLEAN = "clean"
    REALISTIC = "realistic"


@dataclass(frozen=True)
class ImuNoise:
    white_deg: float = 0.0  # RMS angle of per-sample orientation noise, degrees
    heading_drift_max_deg: float = 0.0  # largest amplitude of the slow heading error, degrees
    heading_drift_hz: tuple[float, float] = (0.01, 0.1)  # frequency range of the drift sinusoids
    mounting_residual_deg: float = 0.0  # RMS angle of the sensor-to-bone error left after calibration
    timing_jitter_ms: float = 0.0  # std of the sample-time error, milliseconds
    acc_noise_mps2: float = 0.0  # std of free-acceleration noise, m/s^2


@dataclass(frozen=True)
class KeypointNoise:
    white_frac: float = 0.0  # per-frame pixel noise, fraction of the person's height in the image
    drift_frac: float = 0.0  # slowly varying AR(1) noise, fraction of the person's height
    drift_rho: float = 0.9  # AR(1) coefficient per frame of the slow part
    outlier_prob: float = 0.0  # probability per joint and frame of an outlier
    outlier_frac: tuple[float, float] = (0.1, 0.3)  # outlier displacement, fraction of the height
    swap_prob: float = 0.0  # probability per frame that a left/right swap starts
    swap_frames: tuple[int, int] = (1, 4)  # length of a swap, frames
    low_conf_prob: float = 0.0  # probability per joint and frame of a low-confidence joint
    conf_range: tuple[float, float] = (1.0, 1.0)  # confidence of the normal joints


IMU_PRESETS: dict[NoisePreset, ImuNoise] = {
    NoisePreset.CLEAN: ImuNoise(),
    NoisePreset.REALISTIC: ImuNoise(
        white_deg=2.0, heading_drift_max_deg=5.0, mounting_residual_deg=3.0, timing_jitter_ms=8.0, acc_noise_mps2=0.15
    ),
}

KEYPOINT_PRESETS: dict[NoisePreset, KeypointNoise] = {
    NoisePreset.CLEAN: KeypointNoise(),
    NoisePreset.REALISTIC: KeypointNoise(
        white_frac=0.008, drift_frac=0.010, outlier_prob=0.01, swap_prob=0.005, low_conf_prob=0.05,
        conf_range=(0.75, 1.0),
    ),
}

#: per-joint multiplier of the keypoint noise (H36M order): hips x2, knees/elbows x1.3, ankles/wrists x1.5
KEYPOINT_JOINT_SCALE: tuple[float, ...] = (
    1.5, 2.0, 1.3, 1.5, 2.0, 1.3, 1.5, 1.2, 1.0, 1.0, 1.0, 1.0, 1.3, 1.5, 1.0, 1.3, 1.5,
)


def parse_preset(name: str | NoisePreset) -> NoisePreset:
    """'clean' / 'realistic' -> NoisePreset (ValueError naming the choices otherwise)."""
    if isinstance(name, NoisePreset):
        return name
    try:
        return NoisePreset(name.lower())
    except ValueError:
        raise ValueError(f"unknown noise preset {name!r}; choose one of {', '.join(p.value for p in NoisePreset)}") from None
