"""The one place where pipeline output enters the Qt world.

The capture pipeline runs in its own threads and publishes ``(SyncedFrame, PoseFrame)`` pairs
into a bounded ``queue.Queue`` (``pipeline.subscribe(maxsize)``). ``PipelineBridge`` lives in
the UI thread and drains that queue with ``get_nowait`` from a ``QTimer``: it never blocks the
Qt thread, and a slow UI only makes the pipeline drop into the bounded queue (counted, never
accumulating latency). After each drain it emits the frames and the newest pair, then measures
the end-to-end latency (oldest sensor sample of the frame to the pose handed to the views).
"""

from __future__ import annotations

import logging
import queue
import time
from collections import deque
from dataclasses import dataclass

import numpy as np
from PySide6 import QtCore

log = logging.getLogger(__name__)

DRAIN_INTERVAL_MS = 8  # the timer period (frames come at 30 Hz): adds 4 ms of latency on average
MAX_PER_TICK = 512  # never spend long in one tick even after a stall
STATS_WINDOW = 120  # frames over which rate and latency are measured


@dataclass(frozen=True)
class BridgeStats:
    """What the UI measured about the frames it received."""

    frames: int = 0  # frames received in total
    poses_per_s: float = 0.0  # receive rate over the last frames
    latency_median_ms: float | None = None  # sample host time -> pose handed to the views
    latency_p95_ms: float | None = None
    gaps: int = 0  # frames never received (gaps in ``frame_index``): dropped somewhere upstream or in the queue


class PipelineBridge(QtCore.QObject):
    """Drains a subscription queue in the UI thread.

    Signals:
        frames(list): every ``(SyncedFrame, PoseFrame)`` drained in one tick, oldest first.
        latest(object, object): the newest ``SyncedFrame`` and ``PoseFrame`` of the tick.
    """

    frames = QtCore.Signal(list)
    latest = QtCore.Signal(object, object)

    def __init__(self, subscription: "queue.Queue | None" = None, interval_ms: int = DRAIN_INTERVAL_MS,
                 parent: QtCore.QObject | None = None) -> None:
        super().__init__(parent)
        self._queue = subscription
        self._timer = QtCore.QTimer(self)
        self._timer.setInterval(interval_ms)
        self._timer.timeout.connect(self.drain)
        self._times = deque(maxlen=STATS_WINDOW)  # host receive times
        self._latency_s = deque(maxlen=STATS_WINDOW)
        self._frames = 0
        self._gaps = 0
        self._last_index: int | None = None

    def set_subscription(self, subscription: "queue.Queue | None") -> None:
        """Switch to another queue (a new pipeline); statistics restart."""
        self._queue = subscription
        self._last_index = None
        self._times.clear()
        self._latency_s.clear()

    def start(self) -> None:
        self._timer.start()

    def stop(self) -> None:
        self._timer.stop()

    @property
    def active(self) -> bool:
        return self._timer.isActive()

    @QtCore.Slot()
    def drain(self) -> int:
        """Take what is in the queue now (never waits); returns how many frames were taken."""
        if self._queue is None:
            return 0
        got = []
        for _ in range(MAX_PER_TICK):
            try:
                got.append(self._queue.get_nowait())
            except queue.Empty:
                break
        if not got:
            return 0
        now = time.monotonic()
        for synced, pose in got:
            idx = getattr(pose, "frame_index", None)
            if idx is not None:
                if self._last_index is not None and idx > self._last_index + 1:
                    self._gaps += idx - self._last_index - 1
                self._last_index = idx
            self._times.append(now)
        self._frames += len(got)
        self.frames.emit(got)
        synced, pose = got[-1]
        self.latest.emit(synced, pose)
        shown = time.monotonic()
        t0 = getattr(pose, "sample_host_time_s", None) or getattr(synced, "sample_host_time_s", None)
        if t0 is not None:
            self._latency_s.append(shown - t0)
        return len(got)

    def stats(self) -> BridgeStats:
        times = list(self._times)
        rate = 0.0
        if len(times) > 1 and times[-1] > times[0]:
            # rate of frames over the window, counting to now so that a stalled pipeline reads as slowing
            rate = (len(times) - 1) / max(times[-1] - times[0], 1e-6)
            if time.monotonic() - times[-1] > 1.0:
                rate = 0.0
        lat = np.array(self._latency_s) * 1000.0
        return BridgeStats(
            frames=self._frames,
            poses_per_s=rate,
            latency_median_ms=float(np.median(lat)) if len(lat) else None,
            latency_p95_ms=float(np.percentile(lat, 95)) if len(lat) else None,
            gaps=self._gaps,
        )
