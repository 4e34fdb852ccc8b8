"""Replaying a recording as a live ``Device``, at real time or faster.

The sample recorded at device time ``t`` is delivered at host time
``start + (t - t_first) / speed`` and stamped with that host time, so everything downstream
(synchroniser, recorder, monitor) sees what it would see from the live sensor, including
the recording's own gaps (packet-counter gaps are counted as dropped as they are replayed).
``speed = 0`` replays as fast as the consumer takes it (chunks of ``chunk`` samples). At the
end the device either loops (time keeps increasing) or sets ``finished`` and goes quiet.

Recordings made together (synced DOTs, the x-IMU3 units of one session) share a device
clock; ``replay_group`` replays them on one ``ReplayClock`` so that samples measured at the
same instant are delivered at the same host time, as they were live.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Sequence

import numpy as np

from sensors.device import Device, DeviceConfig
from sensors.files.recording import ImuRecording
from sensors.samples import Sample

log = logging.getLogger(__name__)


class ReplayClock:
    """Device time ``origin_device_s`` is replayed at the host instant of the first start;
    ``span_s`` is the loop length (device seconds). Shared by the devices of a group."""

    def __init__(self, origin_device_s: float, span_s: float) -> None:
        self.origin_device_s = float(origin_device_s)
        self.span_s = float(span_s)
        self._start_host_s: float | None = None
        self._lock = threading.Lock()

    def start_host_s(self) -> float:
        """The host time of the origin, fixed by the first device that asks."""
        with self._lock:
            if self._start_host_s is None:
                self._start_host_s = time.monotonic()
            return self._start_host_s


def _median_period(recording: ImuRecording) -> float:
    return float(np.median(np.diff(recording.time_s))) if len(recording) > 1 else 0.01


def replay_group(recordings: Sequence[ImuRecording], speed: float = 1.0, loop: bool = False,
                 config: DeviceConfig | None = None) -> list[FileReplayDevice]:
    """Devices replaying recordings of one session on a shared clock (their device times must
    be on the same clock, as for synced sensors)."""
    if not recordings:
        raise ValueError("replay_group needs at least one recording")
    origin = min(float(r.time_s[0]) for r in recordings)
    end = max(float(r.time_s[-1]) for r in recordings)
    clock = ReplayClock(origin, end - origin + min(_median_period(r) for r in recordings))
    return [FileReplayDevice(r, speed=speed, loop=loop, config=config, clock=clock) for r in recordings]


class FileReplayDevice(Device):
    """A recorded IMU file (any format ``open_recording`` reads) streamed like a sensor."""

    def __init__(self, recording: ImuRecording | str | Path, speed: float = 1.0, loop: bool = False,
                 device_id: str | None = None, config: DeviceConfig | None = None, chunk: int = 256,
                 clock: ReplayClock | None = None) -> None:
        if not isinstance(recording, ImuRecording):
            from sensors.files import open_recording

            recording = open_recording(recording)
        if speed < 0:
            raise ValueError(f"replay speed must be >= 0 (0 = as fast as possible), got {speed}")
        super().__init__(device_id or recording.device_id, config)
        self.recording = recording
        self.speed = speed
        self.loop = loop
        self.chunk = chunk
        self.finished = threading.Event()
        if clock is None:
            clock = ReplayClock(recording.time_s[0], recording.duration_s + _median_period(recording))
        if recording.time_s[0] < clock.origin_device_s:
            raise ValueError(f"{recording.source}: starts before the replay clock's origin")
        self.replay_clock = clock
        self._times = recording.time_s - clock.origin_device_s  # N, device seconds from the origin
        self._lost = recording.lost_before()
        self._index = 0
        self._start_host = 0.0
        self._loop_offset_s = 0.0  # added to device time on each loop
        self._started = False

    def _connect(self) -> None:
        if not self._started:  # a reconnection resumes where it was
            self._start_host = self.replay_clock.start_host_s()
            self._started = True

    def _disconnect(self) -> None:
        pass

    def _poll(self) -> Sequence[Sample]:
        if self._index >= len(self._times):
            if not self.loop:
                self.finished.set()
                self._stop.wait(0.1)
                return []
            self._index = 0
            span = self.replay_clock.span_s
            self._loop_offset_s += span
            if self.speed > 0:
                self._start_host += span / self.speed
        rec = self.recording
        if self.speed == 0:
            end = min(self._index + self.chunk, len(self._times))
            now = time.monotonic()
            out = [rec.sample(i, now, self.device_id, self._loop_offset_s) for i in range(self._index, end)]
            self._account(self._index, end)
            self._index = end
            return out
        elapsed = (time.monotonic() - self._start_host) * self.speed
        due = self._index
        n = len(self._times)
        while due < n and self._times[due] <= elapsed and due - self._index < 5000:
            due += 1
        if due == self._index:
            wait = (float(self._times[self._index]) - elapsed) / self.speed
            self._stop.wait(min(max(wait, 0.0), 0.1))
            return []
        out = [rec.sample(i, self._start_host + float(self._times[i]) / self.speed, self.device_id,
                          self._loop_offset_s) for i in range(self._index, due)]
        self._account(self._index, due)
        self._index = due
        return out

    def _account(self, start: int, end: int) -> None:
        lost = int(self._lost[start:end].sum())  # lost_before()[0] is 0: nothing counted across a loop
        if lost:
            self._count_dropped(lost)

    @property
    def progress(self) -> float:
        """Fraction of the recording replayed (of the current loop)."""
        return self._index / len(self._times)
