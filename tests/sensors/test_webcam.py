"""OpenCV capture thread on the real test video: order, timestamps, pacing, dropping, looping, errors."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from sensors.camera.webcam import (
    LatestFrameSlot,
    PlaybackMode,
    SourceKind,
    VideoFrame,
    WebcamCapture,
    WebcamConfig,
    classify_source,
)
from sensors.device import DeviceConfig, DeviceState
from vimcan_core.errors import DeviceError, DeviceLost

FRAMES = 65  # pose_squats.mp4: 720 x 1280, 5 fps, 65 frames (see its README)
FPS = 5.0


@pytest.fixture
def video(shared_data: Path) -> Path:
    return shared_data / "video" / "pose_squats.mp4"


def drain(cap: WebcamCapture, consume_s: float = 0.0, limit: int | None = None, timeout_s: float = 30.0) -> list[VideoFrame]:
    """Take frames until the file ends (or ``limit``), spending ``consume_s`` on each like a slow worker."""
    frames: list[VideoFrame] = []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and (limit is None or len(frames) < limit):
        f = cap.get(0.05)
        if f is None:
            if cap.finished.is_set():
                f = cap.get(0.0)  # the last frame may have landed just before the end was flagged
                if f is None:
                    break
            else:
                continue
        frames.append(f)
        if consume_s:
            time.sleep(consume_s)
    return frames


def test_classify_source() -> None:
    assert classify_source(0) == (SourceKind.INDEX, 0)
    assert classify_source("2") == (SourceKind.INDEX, 2)
    assert classify_source("rtsp://10.0.0.5/stream")[0] == SourceKind.URL
    assert classify_source("~/clip.mp4") == (SourceKind.FILE, str(Path("~/clip.mp4").expanduser()))


def test_fast_playback_delivers_every_frame_in_order(video: Path) -> None:
    cfg = WebcamConfig(source=str(video), width_px=None, height_px=None, playback=PlaybackMode.FAST)
    with WebcamCapture(cfg) as cap:
        assert cap.source_fps == pytest.approx(FPS)
        frames = drain(cap)
        assert cap.dropped == 0
    assert [f.index for f in frames] == list(range(FRAMES))
    assert frames[0].image_bgr.shape == (1280, 720, 3)
    t = np.array([f.device_time_s for f in frames])
    assert np.allclose(t, np.arange(FRAMES) / FPS, atol=1e-3)  # a file frame's time is its position
    assert np.all(np.diff([f.host_time_s for f in frames]) >= 0)
    # frames differ (a real video, decoded frame by frame)
    assert np.abs(frames[0].image_bgr.astype(int) - frames[30].image_bgr.astype(int)).mean() > 1.0


def test_resize_to_the_requested_resolution(video: Path) -> None:
    cfg = WebcamConfig(source=str(video), width_px=360, height_px=640, playback=PlaybackMode.FAST)
    with WebcamCapture(cfg) as cap:
        frames = drain(cap, limit=3)
        assert (cap.width_px, cap.height_px) == (360, 640)
    assert all(f.image_bgr.shape == (640, 360, 3) for f in frames)


def test_realtime_playback_is_paced_and_drops_stale_frames(video: Path) -> None:
    speed = 40.0  # 200 frames per second, far faster than the 50 ms consumer below
    cfg = WebcamConfig(source=str(video), width_px=180, height_px=320, playback=PlaybackMode.REALTIME, speed=speed)
    with WebcamCapture(cfg) as cap:
        frames = drain(cap, consume_s=0.05)
        dropped, grabbed = cap.dropped, cap.grabbed
    idx = [f.index for f in frames]
    assert idx == sorted(idx) and len(set(idx)) == len(idx)  # in order, never twice
    assert grabbed == FRAMES
    assert len(frames) + dropped == FRAMES  # every frame was either processed or counted as dropped
    assert dropped > 0
    assert idx[-1] == FRAMES - 1  # the consumer always gets the newest frame, so it ends on the last one
    # pacing: a frame is never delivered before its time in the file (scaled by the speed)
    host = np.array([f.host_time_s for f in frames])
    dev = np.array([f.device_time_s for f in frames])
    assert np.all(host - host[0] >= (dev - dev[0]) / speed - 1e-3)


def test_loop_keeps_device_time_increasing(video: Path) -> None:
    cfg = WebcamConfig(source=str(video), width_px=90, height_px=160, playback=PlaybackMode.FAST, loop=True)
    with WebcamCapture(cfg) as cap:
        frames = drain(cap, limit=FRAMES + 10)
        assert not cap.finished.is_set()
    t = np.array([f.device_time_s for f in frames])
    assert np.all(np.diff(t) > 0)
    assert t[FRAMES] == pytest.approx(FRAMES / FPS, abs=1e-3)
    # the second pass shows the first frame again
    assert np.array_equal(frames[FRAMES].image_bgr, frames[0].image_bgr)


def test_latest_frame_slot_replaces_or_blocks() -> None:
    slot = LatestFrameSlot()
    img = np.zeros((2, 2, 3), np.uint8)
    assert slot.put(VideoFrame(0, 0.0, None, img)) is False
    assert slot.put(VideoFrame(1, 0.1, None, img)) is True  # frame 0 was never taken: dropped
    assert slot.get(0.0).index == 1
    assert slot.get(0.01) is None


def test_missing_sources_say_what_to_fix(tmp_path: Path) -> None:
    with pytest.raises(DeviceError, match="does not exist"):
        WebcamCapture(WebcamConfig(source=str(tmp_path / "nope.mp4"))).open()
    bad = tmp_path / "not_a_video.mp4"
    bad.write_bytes(b"this is not a video")
    with pytest.raises(DeviceLost, match="FFmpeg"):
        WebcamCapture(WebcamConfig(source=str(bad))).open()
    with pytest.raises(DeviceLost, match="plugged in"):
        WebcamCapture(WebcamConfig(source=9)).open()


def test_camera_device_reports_a_missing_camera_and_keeps_retrying() -> None:
    from sensors.camera.camera_device import CameraDevice

    dev = CameraDevice(WebcamConfig(source=9), config=DeviceConfig(reconnect_initial_s=0.02, reconnect_max_s=0.05))
    dev.start()
    try:
        deadline = time.monotonic() + 10
        while dev.stats().reconnects < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        st = dev.stats()
        assert st.reconnects >= 2
        assert st.samples == 0
        assert "camera" in (st.last_error or "") and "9" in st.last_error
        assert dev.state in (DeviceState.DISCONNECTED, DeviceState.RECONNECTING)
    finally:
        dev.stop()
    assert dev.state == DeviceState.STOPPED


def test_a_stream_that_stops_is_lost_and_reopened(video: Path) -> None:
    """A URL source is live: when it stops delivering frames the capture reports it lost, and the
    camera device goes DISCONNECTED and reopens it (a file:// URL ends like a dropped stream)."""
    from sensors.camera.camera_device import CameraDevice

    url = video.resolve().as_uri()
    with WebcamCapture(WebcamConfig(source=url, width_px=90, height_px=160, read_failures_before_lost=5)) as cap:
        assert cap.kind == SourceKind.URL
        deadline = time.monotonic() + 20
        while not cap.lost.is_set() and time.monotonic() < deadline:
            cap.get(0.05)
        assert cap.lost.is_set() and not cap.finished.is_set()
        assert "stopped delivering frames" in cap.error
        assert cap.grabbed == FRAMES

    states: list[DeviceState] = []
    dev = CameraDevice(
        WebcamConfig(source=url, width_px=90, height_px=160, read_failures_before_lost=5),
        config=DeviceConfig(reconnect_initial_s=0.05, reconnect_max_s=0.1),
        keep_images=False,
    )
    dev.add_state_listener(lambda _id, s: states.append(s))
    dev.start()
    try:
        deadline = time.monotonic() + 30
        while dev.stats().reconnects < 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        n = dev.stats().samples
        while dev.stats().samples <= n and time.monotonic() < deadline:
            time.sleep(0.05)
        st = dev.stats()
    finally:
        dev.stop()
    assert st.reconnects >= 1 and st.samples > n  # it streamed again after reopening
    assert "stopped delivering frames" in (st.last_error or "")
    assert states[:3] == [DeviceState.CONNECTING, DeviceState.STREAMING, DeviceState.DISCONNECTED]
    assert DeviceState.RECONNECTING in states
