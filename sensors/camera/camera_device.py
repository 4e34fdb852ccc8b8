"""The webcam as one ``Device``: OpenCV capture thread + MediaPipe pose in the device thread.

The capture thread (``WebcamCapture``) grabs and time-stamps frames; the device thread takes
the newest frame from the one-frame mailbox, runs MediaPipe on it and delivers a
``KeypointFrame`` (stamped with the frame's capture time, not the time MediaPipe finished)
into the device buffer. Frames are processed in capture order; when MediaPipe is slower than
the camera the frames it had no time for are skipped and counted in ``stats().dropped``,
so the keypoints never lag behind a growing queue.

A camera that stops delivering frames (unplugged) is lost: the device reports DISCONNECTED and
reopens it with back-off, like every other device. A video file that ends (without ``loop``)
sets ``finished``; the device then stays connected and delivers nothing (STALLED).
"""

from __future__ import annotations

import logging
import math
import threading
from typing import Sequence

from sensors.camera.mediapipe_pose import MediaPipePoseEstimator, PoseConfig
from sensors.camera.webcam import WebcamCapture, WebcamConfig
from sensors.device import Device, DeviceConfig, DeviceKind
from sensors.samples import KeypointFrame, Sample
from vimcan_core.camera import PinholeCamera
from vimcan_core.errors import DeviceLost

log = logging.getLogger(__name__)

#: default buffer length: 2 s at 30 fps. Each frame keeps its image for the preview (0.9 MB at
#: 640 x 480, 2.8 MB at 1280 x 720), so the IMUs' 4096-sample default would hold gigabytes.
CAMERA_BUFFER_FRAMES = 64


class CameraDevice(Device):
    """A webcam (or video file, or stream) delivering H36M-17 keypoints with confidences."""

    kind = DeviceKind.CAMERA

    def __init__(
        self,
        webcam: WebcamConfig | None = None,
        pose: PoseConfig | None = None,
        device_id: str | None = None,
        config: DeviceConfig | None = None,
        keep_images: bool = True,
    ) -> None:
        webcam = webcam or WebcamConfig()
        super().__init__(device_id or f"camera:{webcam.source}", config or DeviceConfig(buffer_capacity=CAMERA_BUFFER_FRAMES))
        self.webcam_config = webcam
        self.pose_config = pose or PoseConfig()
        self.keep_images = keep_images  # attach each frame's image to its KeypointFrame (for the preview)
        self._capture: WebcamCapture | None = None
        self._estimator: MediaPipePoseEstimator | None = None
        self._dropped_seen = 0
        self._image_size_px: tuple[int, int] | None = None
        self.finished = threading.Event()  # a video file played to its end

    @property
    def image_size_px(self) -> tuple[int, int] | None:
        """(width, height) of the delivered frames, once known (from the first connection on)."""
        return self._image_size_px

    @property
    def camera_model(self) -> PinholeCamera | None:
        """Default intrinsics for the delivered frames (principal point at the centre, square pixels,
        ``WebcamConfig.hfov_deg``), None until the first connection; calibration replaces them."""
        if self._image_size_px is None:
            return None
        w, h = self._image_size_px
        f = 0.5 * w / math.tan(math.radians(self.webcam_config.hfov_deg) / 2.0)
        return PinholeCamera(width_px=w, height_px=h, fx_px=f, fy_px=f, cx_px=w / 2.0, cy_px=h / 2.0)

    # ------------------------------------------------------------- Device API
    def _connect(self) -> None:
        self.finished.clear()
        capture = WebcamCapture(self.webcam_config, name=self.device_id)
        capture.open()
        self._capture = capture
        if capture.width_px:
            self._image_size_px = (capture.width_px, capture.height_px)
        self._dropped_seen = 0
        # a fresh graph per connection: tracking must not carry over a gap in the video
        self._estimator = MediaPipePoseEstimator(self.pose_config)
        capture.start()

    def _poll(self) -> Sequence[Sample]:
        capture, estimator = self._capture, self._estimator
        assert capture is not None and estimator is not None, "_poll before _connect"
        frame = capture.get(0.1)
        dropped = capture.dropped
        if dropped > self._dropped_seen:
            self._count_dropped(dropped - self._dropped_seen)
            self._dropped_seen = dropped
        if frame is None:
            if capture.lost.is_set():
                raise DeviceLost(capture.error or f"{self.device_id}: camera stopped delivering frames")
            if capture.finished.is_set():
                self.finished.set()
            return []
        result = estimator.process(frame.image_bgr)
        h, w = frame.image_bgr.shape[:2]
        return [
            KeypointFrame(
                device_id=self.device_id,
                host_time_s=frame.host_time_s,
                device_time_s=frame.device_time_s,
                keypoints_px=result.keypoints_px,
                confidence=result.confidence,
                width_px=w,
                height_px=h,
                image_bgr=frame.image_bgr if self.keep_images else None,
            )
        ]

    def _disconnect(self) -> None:
        if self._capture is not None:
            self._capture.stop()
            self._capture = None
        if self._estimator is not None:
            self._estimator.close()
            self._estimator = None
