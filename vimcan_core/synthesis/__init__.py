"""Synthetic sensor signals from motion: IMU orientations and accelerations, 2D keypoints
from a virtual webcam, noise presets and augmentation (see each module)."""

from vimcan_core.synthesis.noise import IMU_PRESETS, KEYPOINT_PRESETS, ImuNoise, KeypointNoise, NoisePreset, parse_preset
from vimcan_core.synthesis.sample import NO_AUGMENT, AugmentConfig, Sample, synthesize
from vimcan_core.synthesis.webcam import WebcamConfig, random_webcam, synthesize_keypoints

__all__ = [
    "IMU_PRESETS", "KEYPOINT_PRESETS", "ImuNoise", "KeypointNoise", "NoisePreset", "parse_preset",
    "NO_AUGMENT", "AugmentConfig", "Sample", "synthesize", "WebcamConfig", "random_webcam", "synthesize_keypoints",
]
