"""`camera:` specs open the webcam driver (here on the real squat video) through the same registry."""

from __future__ import annotations

import time

import numpy as np
import pytest

from sensors.device import DeviceKind
from sensors.samples import KeypointFrame
from sensors.spec import create_device, parse_spec
from vimcan_core.errors import DeviceError


def test_camera_spec_options_are_parsed() -> None:
    spec = parse_spec("camera:0?width=1280&height=720&fps=60")
    assert (spec.kind, spec.address) == ("camera", "0")
    assert spec.int_option("width", 0) == 1280 and spec.float_option("fps", 0) == 60.0
    with pytest.raises(DeviceError, match="speed|option"):
        parse_spec("camera:0?speed=2")


def test_camera_spec_streams_keypoints_from_a_video_file(shared_data) -> None:
    video = shared_data / "video" / "pose_squats.mp4"
    device = create_device(f"camera:{video}?fast&width=360&height=640")
    assert device.kind == DeviceKind.CAMERA
    device.start()
    try:
        deadline = time.monotonic() + 60
        while device.buffer.total_pushed < 5 and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        device.stop()
    frames = [s for s in device.buffer.snapshot() if isinstance(s, KeypointFrame)]
    assert len(frames) >= 5
    f = frames[0]
    assert (f.width_px, f.height_px) == (360, 640)
    assert np.all(f.confidence > 0.5)
    # the performer stands: ankles below the pelvis in the image (y grows downwards)
    assert np.all(f.keypoints_px[[3, 6], 1] > f.keypoints_px[0, 1])
