"""Replaying a recording as a live ``Device``, at real time or faster.

The sample recorded at device time ``t`` is delivered at host time
``start + (t - t_first) / speed`` and stamped with that host time, so everything downstream
(synchroniser, recorder, monitor) sees what it would see from the live sensor, including
the recording's own gaps (packet-counter gaps are counted as dropped as they are replayed).
``speed = 0`` replays as fast as the consumer takes it (chunks of ``chunk`` samples). At the
end the device either loops (time keeps increasing) or sets ``finished`` and goes quiet.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Sequence

from sensors.device import Device, DeviceConfig
from sensors.files.recording import ImuRecording
from sensors.samples import Sample

log = logging.getLogger(__name__)


class FileReplayDevice(Device):
    """A recorded IMU file (any format ``open_recording`` reads) streamed like a sensor."""

    def __init__(self, recording: ImuRecording | str | Path, speed: float = 1.0, loop: bool = False,
                 device_id: str | None = None, config: DeviceConfig | None = None, chunk: int = 256) -> None:
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
        self._times = recording.time_s - recording.time_s[0]  # N, seconds from the first sample
        self._lost = recording.lost_before()
        self._period = float(self._times[-1] / max(len(self._times) - 1, 1)) if len(self._times) > 1 else 0.01
        self._index = 0
        self._start_host = 0.0
        self._loop_offset_s = 0.0  # added to device time on each loop
        self._started = False

    def _connect(self) -> None:
        if not self._started:  # a reconnection resumes where it was
            self._start_host = time.monotonic()
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
            span = float(self._times[-1]) + self._period
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
