"""OpenCV video capture in its own thread: a webcam by index, a video file, or a stream URL.

The capture thread grabs frames as the source delivers them, time-stamps each one on the
host's monotonic clock right after ``grab()`` (before decoding, the closest we get to the
exposure) and hands it to the consumer through a one-frame mailbox (``LatestFrameSlot``).
When the consumer (the MediaPipe worker) is slower than the camera, a new frame replaces the
one still waiting, which is counted as dropped: the consumer always gets the newest frame,
in order, and never a backlog. Only file playback in ``PlaybackMode.FAST`` (offline
processing) blocks the reader instead, so that no frame is skipped.

Files play at their own frame rate (``REALTIME``, optionally sped up by ``speed``) or as fast
as they can be read (``FAST``); a file frame's ``device_time_s`` is its position in the file.
A live camera that stops delivering frames (unplugged) ends the thread with ``lost`` set, which
the camera device turns into ``DeviceLost`` and a reconnect.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

import cv2
import numpy as np

from vimcan_core.errors import DeviceError, DeviceLost

log = logging.getLogger(__name__)


class SourceKind(Enum):
    INDEX = "index"  # a local camera: /dev/videoN, or the Nth camera on Windows/macOS
    FILE = "file"
    URL = "url"  # rtsp://, http://, ... (whatever OpenCV's FFmpeg can open)


class PlaybackMode(Enum):
    REALTIME = "realtime"  # files play at their frame rate (times ``speed``), like a camera
    FAST = "fast"  # files are read as fast as the consumer takes frames; nothing is dropped


@dataclass(frozen=True)
class WebcamConfig:
    """Where the frames come from and how."""

    source: int | str = 0  # camera index, file path or URL; "0" and 0 both mean the first camera
    width_px: int | None = 640  # requested from a camera; files and streams are resized to it (None: native)
    height_px: int | None = 480
    fps: float | None = 30.0  # requested from a camera (it may deliver less); ignored for files
    playback: PlaybackMode = PlaybackMode.REALTIME
    speed: float = 1.0  # REALTIME file playback speed factor
    loop: bool = False  # restart a file at its end
    read_failures_before_lost: int = 30  # consecutive failed reads of a live source -> lost
    hfov_deg: float = 60.0  # horizontal field of view for the default intrinsics (typical webcams: 55-78); calibration refines it

    def __post_init__(self) -> None:
        if self.speed <= 0:
            raise DeviceError(f"playback speed must be positive, got {self.speed}")
        if (self.width_px is None) != (self.height_px is None):
            raise DeviceError("give both width_px and height_px, or neither (native size)")


def classify_source(source: int | str) -> tuple[SourceKind, int | str]:
    """(kind, value to open): ``0``/``"0"`` -> camera 0; ``"rtsp://..."`` -> URL; else a file path."""
    if isinstance(source, int):
        return SourceKind.INDEX, source
    text = str(source).strip()
    if text.isdigit():
        return SourceKind.INDEX, int(text)
    if "://" in text:
        return SourceKind.URL, text
    return SourceKind.FILE, os.path.expanduser(text)


@dataclass(frozen=True)
class VideoFrame:
    """One captured frame."""

    index: int  # 0, 1, 2, ... in capture order (counting dropped frames)
    host_time_s: float  # time.monotonic() when it was grabbed (for files in REALTIME: when it was due)
    device_time_s: float | None  # position in the file (s), or None for live sources
    image_bgr: np.ndarray  # H x W x 3, uint8


class LatestFrameSlot:
    """A one-frame mailbox between the capture thread and its consumer.

    ``put`` replaces a frame nobody took yet (returns True: that frame was dropped) or, with
    ``block=True``, waits until the consumer took it. ``get`` waits up to ``timeout_s``."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._frame: VideoFrame | None = None
        self._closed = False

    def put(self, frame: VideoFrame, block: bool = False, stop: threading.Event | None = None) -> bool:
        with self._cond:
            if block:
                while self._frame is not None and not self._closed and not (stop is not None and stop.is_set()):
                    self._cond.wait(0.05)
            dropped = self._frame is not None
            self._frame = frame
            self._cond.notify_all()
            return dropped

    def get(self, timeout_s: float) -> VideoFrame | None:
        with self._cond:
            if self._frame is None:
                self._cond.wait(timeout_s)
            frame, self._frame = self._frame, None
            self._cond.notify_all()
            return frame

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()


class WebcamCapture:
    """Reads a camera, file or stream in its own thread into a ``LatestFrameSlot``."""

    def __init__(self, config: WebcamConfig, name: str = "camera") -> None:
        self.config = config
        self.name = name
        self.kind, self._target = classify_source(config.source)
        self.slot = LatestFrameSlot()
        self._cap: cv2.VideoCapture | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._dropped = 0
        self._grabbed = 0
        self.lost = threading.Event()  # a live source stopped delivering
        self.finished = threading.Event()  # a file reached its end (and does not loop)
        self.error: str | None = None
        self.width_px = 0  # of the frames delivered
        self.height_px = 0
        self.source_fps: float | None = None  # what the source says its rate is

    # -------------------------------------------------------------- lifecycle
    def open(self) -> None:
        """Open the source (raises ``DeviceLost`` with a fix when it cannot be opened)."""
        if self.kind == SourceKind.FILE and not Path(self._target).is_file():
            raise DeviceError(f"{self.name}: video file {self._target} does not exist")
        cap = cv2.VideoCapture(self._target)
        if not cap.isOpened():
            cap.release()
            hint = {
                SourceKind.INDEX: "is the camera plugged in, and not used by another program? "
                "(Linux: ls /dev/video*; try another index)",
                SourceKind.FILE: "is it a video format FFmpeg can read (mp4, avi, mkv)?",
                SourceKind.URL: "is the stream reachable from this computer (try it in a media player)?",
            }[self.kind]
            raise DeviceLost(f"{self.name}: could not open {self.kind.value} {self._target!r}; {hint}")
        cfg = self.config
        if self.kind == SourceKind.INDEX:
            if cfg.width_px is not None:
                cap.set(cv2.CAP_PROP_FRAME_WIDTH, cfg.width_px)
                cap.set(cv2.CAP_PROP_FRAME_HEIGHT, cfg.height_px)
            if cfg.fps is not None:
                cap.set(cv2.CAP_PROP_FPS, cfg.fps)
            cap.set(cv2.CAP_PROP_BUFFERSIZE, 1)  # we want the newest frame, not the driver's backlog
        fps = cap.get(cv2.CAP_PROP_FPS)
        self.source_fps = float(fps) if fps and fps > 0 and np.isfinite(fps) else None
        native_w = int(cap.get(cv2.CAP_PROP_FRAME_WIDTH))
        native_h = int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
        if self.kind != SourceKind.INDEX and cfg.width_px is not None:
            self.width_px, self.height_px = cfg.width_px, cfg.height_px
        else:
            self.width_px, self.height_px = native_w, native_h
        if self.kind == SourceKind.INDEX and cfg.width_px is not None and (native_w, native_h) != (cfg.width_px, cfg.height_px):
            log.warning("%s: asked for %dx%d, the camera delivers %dx%d", self.name, cfg.width_px, cfg.height_px, native_w, native_h)
        self._cap = cap
        log.info("%s: opened %s %r, %dx%d at %s fps", self.name, self.kind.value, self._target,
                 self.width_px, self.height_px, "?" if self.source_fps is None else f"{self.source_fps:g}")

    def start(self) -> None:
        if self._cap is None:
            self.open()
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name=f"capture-{self.name}", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 2.0) -> None:
        self._stop.set()
        self.slot.close()
        if self._thread is not None:
            self._thread.join(timeout_s)
            if self._thread.is_alive():
                log.warning("%s: capture thread did not stop within %.1f s", self.name, timeout_s)
        if self._cap is not None:
            self._cap.release()
            self._cap = None

    def __enter__(self) -> "WebcamCapture":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def dropped(self) -> int:
        """Frames replaced in the mailbox before the consumer took them."""
        with self._lock:
            return self._dropped

    @property
    def grabbed(self) -> int:
        with self._lock:
            return self._grabbed

    def get(self, timeout_s: float = 0.1) -> VideoFrame | None:
        """The newest frame not taken yet, waiting up to ``timeout_s``; None if there is none."""
        return self.slot.get(timeout_s)

    # ------------------------------------------------------------------ thread
    def _run(self) -> None:
        cap = self._cap
        assert cap is not None
        cfg = self.config
        is_file = self.kind == SourceKind.FILE
        paced = is_file and cfg.playback == PlaybackMode.REALTIME
        block = is_file and cfg.playback == PlaybackMode.FAST
        failures = 0
        index = 0
        t0_host: float | None = None  # REALTIME file playback: host time of file position 0
        loop_offset_s = 0.0  # file time added per loop so device time keeps increasing
        last_pos_s = 0.0
        try:
            while not self._stop.is_set():
                if not cap.grab():
                    if is_file:
                        if cfg.loop and index > 0:
                            cap.set(cv2.CAP_PROP_POS_FRAMES, 0)
                            loop_offset_s = last_pos_s + (1.0 / self.source_fps if self.source_fps else 0.0)
                            continue
                        self.finished.set()
                        log.info("%s: end of %s after %d frames", self.name, self._target, index)
                        return
                    failures += 1
                    if failures >= cfg.read_failures_before_lost:
                        self.error = f"{self.name}: {self.kind.value} {self._target!r} stopped delivering frames (unplugged?)"
                        self.lost.set()
                        return
                    self._stop.wait(0.01)
                    continue
                host_t = time.monotonic()
                failures = 0
                device_t = None
                if is_file:
                    last_pos_s = cap.get(cv2.CAP_PROP_POS_MSEC) / 1000.0
                    device_t = loop_offset_s + last_pos_s
                    if paced:
                        if t0_host is None:
                            t0_host = host_t - device_t / cfg.speed
                        due = t0_host + device_t / cfg.speed
                        if due > host_t and self._stop.wait(due - host_t):
                            return
                        host_t = max(due, host_t)
                ok, image = cap.retrieve()
                if not ok or image is None:
                    failures += 1
                    continue
                if self.width_px and (image.shape[1], image.shape[0]) != (self.width_px, self.height_px):
                    image = cv2.resize(image, (self.width_px, self.height_px), interpolation=cv2.INTER_AREA)
                frame = VideoFrame(index, host_t, device_t, image)
                index += 1
                with self._lock:
                    self._grabbed += 1
                if self.slot.put(frame, block=block, stop=self._stop):
                    with self._lock:
                        self._dropped += 1
        except cv2.error as exc:  # the backend died (device removed mid-read)
            self.error = f"{self.name}: capture failed: {exc}"
            self.lost.set()
