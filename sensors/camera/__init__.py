"""The webcam: OpenCV capture (``webcam``), MediaPipe keypoints (``mediapipe_pose``) and both
together as one device (``camera_device.CameraDevice``). MediaPipe is imported only when a
pose estimator is built."""

from sensors.camera.camera_device import CameraDevice
from sensors.camera.mediapipe_pose import HeadPoint, MediaPipePoseEstimator, PoseConfig, landmarks_to_h36m, mediapipe_ms_per_frame
from sensors.camera.webcam import PlaybackMode, VideoFrame, WebcamCapture, WebcamConfig

__all__ = [
    "CameraDevice",
    "HeadPoint",
    "MediaPipePoseEstimator",
    "PlaybackMode",
    "PoseConfig",
    "VideoFrame",
    "WebcamCapture",
    "WebcamConfig",
    "landmarks_to_h36m",
    "mediapipe_ms_per_frame",
]
