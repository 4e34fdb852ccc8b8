"""The capture pipeline: devices -> synchroniser -> pose source -> subscribers.

One pipeline thread waits for new camera frames (or, without a camera or while it is
lost, ticks at the camera rate on the IMUs alone), pairs each frame with the IMUs
(``sensors.sync``), runs the pluggable pose stage (``PoseSource``) and fans the result out
to every subscriber's bounded queue. It always takes the newest camera frame: frames
that arrived while the pose stage was busy are skipped and counted, so a slow pose
source shows up as dropped frames rather than growing latency. A full subscriber queue
drops its oldest item; the pipeline never blocks on a consumer.

Threads: each device owns its thread (``sensors.device``); the pipeline owns one more.
``stop()`` sets an Event and joins all of them.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np

from sensors.device import Device, DeviceStats
from sensors.samples import KeypointFrame, PoseFrame, SyncedFrame
from sensors.sync import SyncConfig, Synchronizer
from vimcan_core.skeleton import ImuSite

log = logging.getLogger(__name__)


@runtime_checkable
class PoseSource(Protocol):
    """The pose stage: one ``PoseFrame`` per ``SyncedFrame``.

    ``estimate`` is called from the pipeline thread only, one frame at a time, in time
    order; ``reset`` before the first frame and whenever the stream restarts (a source
    with state, such as the streaming model, clears it there)."""

    name: str

    def estimate(self, frame: SyncedFrame) -> PoseFrame: ...

    def reset(self) -> None: ...


@dataclass(frozen=True)
class PipelineConfig:
    """Timing of the pipeline thread."""

    camera_rate_hz: float = 30.0  # IMU-only tick rate when there is no camera or it is lost
    sync: SyncConfig = field(default_factory=SyncConfig)
    imu_wait_s: float = 0.03  # a frame may wait this long for the IMU samples just after it (see sync.SyncConfig.snap_s)
    camera_timeout_s: float = 0.3  # no camera frame for this long: run on the IMUs alone
    imu_only_delay_s: float = 0.03  # IMU-only instants lag "now" by this, so samples after them have arrived
    poll_s: float = 0.002  # how often the thread looks for new frames
    stats_window: int = 300  # recent poses used for rates and latency percentiles
    subscriber_maxsize: int = 8  # default size of a subscriber's queue
    join_timeout_s: float = 3.0  # per thread, in stop()


@dataclass(frozen=True)
class PipelineStats:
    """What the status bar and ``vimcan monitor`` show."""

    running: bool
    pose_source: str
    poses: int  # PoseFrames produced since start()
    poses_per_s: float  # over the last ~2 s
    latency_median_ms: float | None  # now - frame.sample_host_time_s when the pose is handed out
    latency_p95_ms: float | None
    frames_in: int  # camera frames that reached the pipeline
    frames_dropped: int  # camera frames skipped because the pose stage was behind
    imu_only_frames: int  # instants produced without a camera frame
    source_errors: int  # frames on which the pose source raised
    last_error: str | None
    devices: dict[str, DeviceStats]
    # where a camera frame's time goes, median ms over the recent frames (STAGES order); empty before the first
    stage_ms_median: dict[str, float] = field(default_factory=dict)


#: the stages of ``PipelineStats.stage_ms_median``, in order: capture instant -> the pipeline
#: thread has the frame (the camera's own delivery delay plus the pick-up), waiting for the
#: IMU samples around the frame's instant, pairing them, the pose source, fan-out to the queues
STAGES = ("camera_to_pipeline", "imu_wait", "sync", "pose_source", "fan_out")


class CapturePipeline:
    """Owns the devices, the synchroniser and the pose stage, and runs them on one thread.

    Args:
        imus: the IMU drivers by the site they are strapped to.
        camera: the keypoint camera, or None for IMU-only capture.
        pose_source: the pose stage (swap it at run time with ``set_pose_source``).
        config: timing.
    """

    def __init__(self, imus: dict[ImuSite, Device], camera: Device | None, pose_source: PoseSource,
                 config: PipelineConfig | None = None) -> None:
        self.imus: dict[ImuSite, Device] = {ImuSite(s): d for s, d in imus.items()}
        self.camera = camera
        self.config = config or PipelineConfig()
        self.demo: Any = None  # sensors.demo.DemoRig when built by build_demo_pipeline
        self._sync = Synchronizer(self.config.sync)
        self._source = pose_source
        self._source_lock = threading.Lock()
        self._pending_source: PoseSource | None = None
        self._subscribers: list[queue.Queue] = []
        self._subscribers_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._stats_lock = threading.Lock()
        self._latencies: deque[float] = deque(maxlen=self.config.stats_window)
        self._out_times: deque[float] = deque(maxlen=self.config.stats_window)
        self._stage_s: deque[tuple[float, ...]] = deque(maxlen=self.config.stats_window)  # len(STAGES) each
        self._poses = 0
        self._frames_in = 0
        self._frames_dropped = 0
        self._imu_only = 0
        self._errors = 0
        self._last_error: str | None = None
        self._latest: tuple[SyncedFrame, PoseFrame] | None = None

    # ---------------------------------------------------------------- control
    def devices(self) -> list[Device]:
        """Every device: the IMUs in site order, then the camera."""
        out = [self.imus[s] for s in sorted(self.imus)]
        return out + ([self.camera] if self.camera is not None else [])

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> None:
        """Start every device and the pipeline thread (no-op when running)."""
        if self.running:
            return
        self._stop.clear()
        self._sync.reset()
        with self._stats_lock:
            self._latencies.clear()
            self._out_times.clear()
            self._stage_s.clear()
            self._poses = self._frames_in = self._frames_dropped = self._imu_only = self._errors = 0
            self._last_error = None
        with self._source_lock:
            self._source.reset()
        for device in self.devices():
            device.start()
        self._thread = threading.Thread(target=self._run, name="capture-pipeline", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the pipeline thread and every device, joining all their threads."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(self.config.join_timeout_s)
            if self._thread.is_alive():
                log.warning("capture pipeline thread did not stop within %.1f s", self.config.join_timeout_s)
        for device in self.devices():
            device.stop(self.config.join_timeout_s)

    def __enter__(self) -> "CapturePipeline":
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def pose_source(self) -> PoseSource:
        with self._source_lock:
            return self._pending_source or self._source

    def set_pose_source(self, source: PoseSource) -> None:
        """Replace the pose stage; the pipeline thread resets it and switches before its next frame."""
        with self._source_lock:
            self._pending_source = source
        log.info("pose source -> %s", source.name)

    def subscribe(self, maxsize: int | None = None) -> "queue.Queue[tuple[SyncedFrame, PoseFrame]]":
        """A new bounded queue that receives every (SyncedFrame, PoseFrame); when it is full
        the oldest item is dropped."""
        q: queue.Queue = queue.Queue(maxsize=maxsize or self.config.subscriber_maxsize)
        with self._subscribers_lock:
            self._subscribers.append(q)
        return q

    def unsubscribe(self, q: queue.Queue) -> None:
        with self._subscribers_lock:
            if q in self._subscribers:
                self._subscribers.remove(q)

    def latest(self) -> tuple[SyncedFrame, PoseFrame] | None:
        """The most recent output (for views that poll instead of subscribing)."""
        return self._latest

    def stats(self) -> PipelineStats:
        now = time.monotonic()
        with self._stats_lock:
            lat = np.array(self._latencies) * 1e3
            stages = np.median(np.array(self._stage_s), axis=0) * 1e3 if self._stage_s else None  # len(STAGES)
            recent = [t for t in self._out_times if now - t <= 2.0]
            rate = (len(recent) - 1) / (recent[-1] - recent[0]) if len(recent) > 1 and recent[-1] > recent[0] else 0.0
            return PipelineStats(
                running=self.running,
                pose_source=self.pose_source.name,
                poses=self._poses,
                poses_per_s=rate,
                latency_median_ms=float(np.median(lat)) if len(lat) else None,
                latency_p95_ms=float(np.percentile(lat, 95)) if len(lat) else None,
                frames_in=self._frames_in,
                frames_dropped=self._frames_dropped,
                imu_only_frames=self._imu_only,
                source_errors=self._errors,
                last_error=self._last_error,
                devices={d.device_id: d.stats() for d in self.devices()},
                stage_ms_median={} if stages is None else dict(zip(STAGES, stages.tolist())),
            )

    # ---------------------------------------------------------------- the thread
    def _run(self) -> None:
        cfg = self.config
        cursor_camera = self.camera  # the camera the buffer cursor belongs to
        cursor = cursor_camera.buffer.total_pushed if cursor_camera is not None else 0
        last_camera = time.monotonic()  # the camera gets camera_timeout_s to deliver its first frame
        period = 1.0 / cfg.camera_rate_hz
        next_tick = time.monotonic() + period
        try:
            while not self._stop.is_set():
                frame: KeypointFrame | None = None
                camera = self.camera  # read once per pass: another thread may add or remove the camera
                if camera is not cursor_camera:  # a camera joined or left: follow the new one from its newest frame
                    cursor_camera, last_camera = camera, time.monotonic()
                    cursor = camera.buffer.total_pushed if camera is not None else 0
                if camera is not None:
                    items, cursor, lost = camera.buffer.read_since(cursor)
                    frames = [x for x in items if isinstance(x, KeypointFrame)]
                    if frames:
                        frame = frames[-1]
                        last_camera = time.monotonic()
                        with self._stats_lock:
                            self._frames_in += len(frames) + lost
                            self._frames_dropped += len(frames) - 1 + lost
                now = time.monotonic()
                if frame is not None:
                    latency = camera.config.latency_s
                    self._wait_for_imus(frame.host_time_s - latency)
                    waited = time.monotonic()
                    synced = self._sync.synchronize(self.imus, frame, camera_latency_s=latency)
                    self._process(synced, (now - synced.time_s, waited - now, time.monotonic() - waited))
                    next_tick = time.monotonic() + period
                elif (camera is None or now - last_camera > cfg.camera_timeout_s) and now >= next_tick:
                    next_tick = next_tick + period if now - next_tick < period else now + period
                    with self._stats_lock:
                        self._imu_only += 1
                    self._process(self._sync.synchronize(self.imus, None, time_s=now - cfg.imu_only_delay_s))
                else:
                    self._stop.wait(cfg.poll_s)
        except Exception:  # a bug here must be visible, not a silently frozen view
            log.exception("capture pipeline thread failed")
            with self._stats_lock:
                self._last_error = "pipeline thread failed (see the log)"

    def _wait_for_imus(self, time_s: float) -> None:
        deadline = time.monotonic() + self.config.imu_wait_s
        while not self._sync.imus_ready(self.imus, time_s):
            if time.monotonic() >= deadline or self._stop.is_set():
                return
            self._stop.wait(self.config.poll_s)

    def _current_source(self) -> PoseSource:
        with self._source_lock:
            if self._pending_source is not None:
                self._source = self._pending_source
                self._pending_source = None
                self._source.reset()
            return self._source

    def _process(self, synced: SyncedFrame, stages_s: tuple[float, float, float] | None = None) -> None:
        """Run the pose source on one frame and hand the result out; ``stages_s`` (camera frames):
        the first three ``STAGES`` durations, seconds."""
        source = self._current_source()
        started = time.monotonic()
        try:
            pose = source.estimate(synced)
        except Exception as exc:
            with self._stats_lock:
                self._errors += 1
                first = self._errors == 1
                self._last_error = f"{source.name}: {type(exc).__name__}: {exc}"
            if first:
                log.exception("pose source %r failed on frame %d", source.name, synced.frame_index)
            else:
                log.debug("pose source %r failed on frame %d: %s", source.name, synced.frame_index, exc)
            return
        now = time.monotonic()
        item = (synced, pose)
        self._latest = item
        with self._subscribers_lock:
            subscribers = list(self._subscribers)
        for q in subscribers:
            _put_drop_oldest(q, item)
        handed = time.monotonic()
        with self._stats_lock:
            self._poses += 1
            self._out_times.append(now)
            self._latencies.append(handed - synced.sample_host_time_s)
            if stages_s is not None:
                self._stage_s.append((*stages_s, now - started, handed - now))


def _put_drop_oldest(q: queue.Queue, item: object) -> None:
    """Put without blocking; when the queue is full, discard its oldest item first."""
    for _ in range(8):  # a consumer may race us; give up rather than spin
        try:
            q.put_nowait(item)
            return
        except queue.Full:
            try:
                q.get_nowait()
            except queue.Empty:
                pass
