"""The small messages that flow from devices to the synchroniser, recorder and views.

Times: ``host_time_s`` is ``time.monotonic()`` when the host received the sample;
``device_time_s`` is the device's own clock (seconds, arbitrary origin) or None.
Quaternions are w x y z, sensor-to-world (see ``vimcan_core.rotations``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from vimcan_core.errors import InputShapeError
from vimcan_core.skeleton import NUM_JOINTS


@dataclass(frozen=True, slots=True)
class ImuSample:
    """One orientation sample of one IMU."""

    device_id: str
    host_time_s: float
    device_time_s: float | None
    quat_wxyz: tuple[float, float, float, float]
    acc_free_mps2: tuple[float, float, float] | None = None  # world frame, gravity removed
    gyro_dps: tuple[float, float, float] | None = None  # sensor frame
    seq: int | None = None  # packet counter where the device sends one

    def __post_init__(self) -> None:
        q = self.quat_wxyz
        if len(q) != 4 or not all(np.isfinite(q)):
            raise InputShapeError(f"{self.device_id}: quaternion must be 4 finite numbers (w x y z), got {q}")


@dataclass(frozen=True, slots=True)
class KeypointFrame:
    """One camera frame's 17 H36M keypoints, in pixels, with a confidence per joint."""

    device_id: str
    host_time_s: float
    device_time_s: float | None
    keypoints_px: np.ndarray  # 17 x 2
    confidence: np.ndarray  # 17, in [0, 1]; 0 = not seen
    width_px: int
    height_px: int
    image_bgr: np.ndarray | None = field(default=None, compare=False, repr=False)  # H x W x 3 for preview

    def __post_init__(self) -> None:
        if self.keypoints_px.shape != (NUM_JOINTS, 2):
            raise InputShapeError(f"{self.device_id}: keypoints must be {NUM_JOINTS} x 2, got {self.keypoints_px.shape}")
        if self.confidence.shape != (NUM_JOINTS,):
            raise InputShapeError(f"{self.device_id}: confidence must be {NUM_JOINTS}, got {self.confidence.shape}")


Sample = ImuSample | KeypointFrame


@dataclass(frozen=True)
class SyncedFrame:
    """One instant sent to the pose stage: a camera frame and the six IMUs at its timestamp.

    The IMU arrays are in site order (``vimcan_core.skeleton.ImuSite``) and hold what the
    sensors measured (sensor-to-their-own-world, before calibration); rows of missing
    sensors are NaN and flagged in ``imu_present``.
    """

    frame_index: int
    time_s: float  # host monotonic time of this instant (the camera frame's, latency-corrected)
    keypoints_px: np.ndarray | None  # 17 x 2, None when the camera is missing
    keypoint_confidence: np.ndarray | None  # 17
    image_size_px: tuple[int, int] | None  # (width, height)
    imu_quat_wxyz: np.ndarray  # 6 x 4, NaN where missing
    imu_acc_free_mps2: np.ndarray  # 6 x 3, NaN where missing or not measured
    imu_present: np.ndarray  # 6 bool
    sample_host_time_s: float  # host time of the oldest sample used (for end-to-end latency)
    image_bgr: np.ndarray | None = field(default=None, compare=False, repr=False)

    @property
    def camera_present(self) -> bool:
        return self.keypoints_px is not None


@dataclass(frozen=True)
class PoseFrame:
    """The pose stage's output for one SyncedFrame, as the views and the recorder consume it."""

    frame_index: int
    time_s: float
    joints_world_m: np.ndarray  # 17 x 3, world frame (Y up), root-relative (pelvis at 0)
    root_world_m: np.ndarray | None  # 3, pelvis position in the world, None if unknown
    source: str  # what produced the pose, shown on screen ("simulation ground truth", "VIMCAN-T streaming, cpu")
    camera_present: bool
    imu_present: np.ndarray  # 6 bool
    confidence: float = 1.0  # 1 = all inputs present; lower when running on IMUs alone, etc.
    sample_host_time_s: float | None = None  # oldest input sample's host time, for latency
    bone_quats_world: np.ndarray | None = None  # 6 x 4 calibrated bone orientations at the IMU sites (world frame), for BVH twist
