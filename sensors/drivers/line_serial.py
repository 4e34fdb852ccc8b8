"""Do-it-yourself boards speaking the VIMCAN line protocol over serial (``sensors.protocols.line``).

A board may carry several IMUs on one port (the ``sensor`` field), for instance six BNO08x
on one ESP32. Two ways to read it:

* ``LineSerialDevice``: owns the port and follows one IMU, the one named in ``sensor`` or
  the first one it hears (a board with one IMU).
* ``LineBoardImu``: one ``Device`` per IMU of a shared board. The first one started opens
  the port through a ``LineBoard`` (a ``LineSerialDevice`` in fan-out mode, with its own
  reader thread and reconnection); every sample is routed to the device of its sensor id.
  The board closes when its last IMU device stops. ``line:PORT?sensor=N`` specs build these.

Per IMU: board clocks (uint32 microseconds) are unwrapped into ``device_time_s``; sequence
gaps are counted as dropped; bad lines are corrupt (a bad line cannot be attributed to an
IMU, so every IMU of the board counts it); ``I`` lines are kept in ``info``. The optional
acceleration (sensor frame, gravity removed) is rotated into the sensor's world frame with
the sample's own quaternion.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
import time
from collections import deque
from typing import Callable, Sequence

from sensors.device import Device, DeviceConfig, DeviceState
from sensors.drivers.serial_port import SerialDevice, SerialSettings
from sensors.protocols import line as lp
from sensors.protocols import scalar_math as sm
from sensors.protocols.counters import SequenceTracker, Unwrapper
from sensors.samples import ImuSample, Sample
from vimcan_core.errors import DeviceError, DeviceLost

log = logging.getLogger(__name__)

#: ``listener(sample, lost_before_it)`` for one sensor id; ``listener(None, 0)`` is never called
SampleListener = Callable[[ImuSample, int], None]


class LineSerialDevice(SerialDevice):
    """An ESP32/Arduino board streaming ``Q`` lines; delivers one IMU into its own buffer and
    hands every IMU's samples to the listeners registered with ``add_listener`` (fan-out)."""

    def __init__(self, port: str, baud: int = 115200, sensor: int | None = None, device_id: str | None = None,
                 config: DeviceConfig | None = None, settings: SerialSettings | None = None,
                 follow: bool = True) -> None:
        name = device_id or f"line:{port}" + ("" if sensor is None else f"#{sensor}")
        super().__init__(name, settings or SerialSettings(port=port, baud=baud), config)
        self.requested_sensor = sensor
        self.follow = follow  # False: a pure fan-out reader, its own buffer stays empty
        self.parser = lp.LineParser()
        self.info: dict[str, str] = {}
        self.other_sensor_lines = 0  # lines from IMUs this device neither follows nor routes
        self._sensor = sensor
        self._seq: dict[int, SequenceTracker] = {}
        self._clocks: dict[int, Unwrapper] = {}
        self._corrupt_seen = 0
        self._listeners: dict[int, SampleListener] = {}
        self._corrupt_listeners: list[Callable[[int], None]] = []
        self._listeners_lock = threading.Lock()

    @property
    def sensor(self) -> int | None:
        """The IMU id followed (None until the first sample when not chosen)."""
        return self._sensor

    def add_listener(self, sensor: int, on_sample: SampleListener, on_corrupt: Callable[[int], None]) -> None:
        with self._listeners_lock:
            if sensor in self._listeners:
                raise DeviceError(f"{self.device_id}: sensor {sensor} already has a device on this board")
            self._listeners[sensor] = on_sample
            self._corrupt_listeners.append(on_corrupt)

    def remove_listener(self, sensor: int, on_corrupt: Callable[[int], None]) -> None:
        with self._listeners_lock:
            self._listeners.pop(sensor, None)
            if on_corrupt in self._corrupt_listeners:
                self._corrupt_listeners.remove(on_corrupt)

    @property
    def listener_count(self) -> int:
        with self._listeners_lock:
            return len(self._listeners)

    def _reset_protocol(self) -> None:
        self.parser.reset()
        for tracker in self._seq.values():
            tracker.reset()
        for clock in self._clocks.values():
            clock.reset()

    def _handle_bytes(self, data: bytes, host_time_s: float) -> list[Sample]:
        messages = self.parser.feed(data)
        if self.parser.corrupt != self._corrupt_seen:
            bad = self.parser.corrupt - self._corrupt_seen
            self._corrupt_seen = self.parser.corrupt
            self._count_corrupt(bad)
            log.debug("%s: %s", self.device_id, self.parser.last_error)
            with self._listeners_lock:
                corrupt_listeners = list(self._corrupt_listeners)
            for cb in corrupt_listeners:
                cb(bad)
        out: list[Sample] = []
        for m in messages:
            if isinstance(m, lp.LineInfo):
                self.info[m.key] = m.value
                continue
            if self.follow and self._sensor is None:
                self._sensor = m.sensor
                log.info("%s: following sensor %d", self.device_id, m.sensor)
            with self._listeners_lock:
                listener = self._listeners.get(m.sensor)
            followed = self.follow and m.sensor == self._sensor
            if listener is None and not followed:
                self.other_sensor_lines += 1
                continue
            lost = 0
            if m.seq is not None:
                tracker = self._seq.get(m.sensor)
                if tracker is None:
                    tracker = self._seq[m.sensor] = SequenceTracker(lp.SEQ_MODULO)
                lost = tracker.update(m.seq)
            clock = self._clocks.get(m.sensor)
            if clock is None:
                clock = self._clocks[m.sensor] = Unwrapper(lp.TIME_MODULO_US)
            q = sm.normalise(m.quat_wxyz)  # the parser checked the norm is about 1
            acc = None if m.acc_sensor_mps2 is None else sm.rotate(q, m.acc_sensor_mps2)
            sample = ImuSample(
                device_id=self.device_id,
                host_time_s=host_time_s,
                device_time_s=clock.update(m.time_us) * 1e-6,
                quat_wxyz=q,
                acc_free_mps2=acc,
                seq=m.seq,
            )
            if listener is not None:
                listener(sample, lost)
            if followed:
                if lost:
                    self._count_dropped(lost)
                out.append(sample)
        return out


class LineBoard:
    """A serial port shared by the ``LineBoardImu`` devices of one board (reference counted).

    ``LineBoard.shared(port, baud)`` returns the one board object per port path (resolved
    through symlinks); the reader starts with the first subscriber and stops with the last."""

    _boards: dict[str, "LineBoard"] = {}
    _registry_lock = threading.Lock()

    def __init__(self, port: str, baud: int, config: DeviceConfig | None = None) -> None:
        self.port = port
        self.baud = baud
        self.reader = LineSerialDevice(port, baud, device_id=f"line-board:{port}", config=config, follow=False)
        self._users = 0

    @classmethod
    def shared(cls, port: str, baud: int, config: DeviceConfig | None = None) -> "LineBoard":
        key = os.path.realpath(port) if os.path.exists(port) else port
        with cls._registry_lock:
            board = cls._boards.get(key)
            if board is None:
                board = cls._boards[key] = LineBoard(port, baud, config)
            elif board.baud != baud:
                raise DeviceError(f"line board {port} is already open at {board.baud} baud, not {baud}; "
                                  "give every IMU of one board the same @BAUD")
            return board

    def subscribe(self, sensor: int, on_sample: SampleListener, on_corrupt: Callable[[int], None]) -> None:
        self.reader.add_listener(sensor, on_sample, on_corrupt)
        with self._registry_lock:  # IMU devices subscribe from their own threads: start one reader only
            self._users += 1
            if not self.reader.running:
                self.reader.start()

    def unsubscribe(self, sensor: int, on_corrupt: Callable[[int], None]) -> None:
        self.reader.remove_listener(sensor, on_corrupt)
        with self._registry_lock:
            self._users = max(0, self._users - 1)
            last = self._users == 0
            if last:
                for key, board in list(self._boards.items()):
                    if board is self:
                        del self._boards[key]
        if last:
            self.reader.stop()

    @property
    def connected(self) -> bool:
        return self.reader.state in (DeviceState.STREAMING, DeviceState.STALLED)


class LineBoardImu(Device):
    """One IMU (``sensor`` id) of a line-protocol board whose port other IMUs share."""

    def __init__(self, port: str, baud: int = 115200, sensor: int = 0, device_id: str | None = None,
                 config: DeviceConfig | None = None) -> None:
        super().__init__(device_id or f"line:{port}#{sensor}", config)
        self.port = port
        self.baud = baud
        self.sensor = sensor
        self._board: LineBoard | None = None
        self._pending: deque[tuple[ImuSample, int]] = deque(maxlen=self.config.buffer_capacity)
        self._arrived = threading.Event()

    @property
    def board(self) -> LineBoard | None:
        return self._board

    def _on_sample(self, sample: ImuSample, lost: int) -> None:  # the board's reader thread
        self._pending.append((dataclasses.replace(sample, device_id=self.device_id), lost))
        self._arrived.set()

    def _on_corrupt(self, n: int) -> None:  # the board's reader thread
        self._count_corrupt(n)

    def _connect(self) -> None:
        if self._board is None:
            self._board = LineBoard.shared(self.port, self.baud, DeviceConfig(
                stall_after_s=self.config.stall_after_s, reconnect_initial_s=self.config.reconnect_initial_s,
                reconnect_max_s=self.config.reconnect_max_s))
            self._board.subscribe(self.sensor, self._on_sample, self._on_corrupt)
        end = time.monotonic() + 1.0
        while not self._board.connected:
            if self._stop.wait(0.02) or time.monotonic() > end:
                raise DeviceLost(f"{self.device_id}: board port {self.port} is not connected "
                                 f"({self._board.reader.stats().last_error or 'opening'})")

    def _poll(self) -> Sequence[Sample]:
        board = self._board
        if board is None or not board.connected:
            raise DeviceLost(f"{self.device_id}: board port {self.port} was lost")
        self._arrived.wait(0.1)
        self._arrived.clear()
        out: list[Sample] = []
        lost = 0
        while self._pending:
            sample, n = self._pending.popleft()
            out.append(sample)
            lost += n
        if lost:
            self._count_dropped(lost)
        return out

    def _disconnect(self) -> None:
        pass  # the board stays open for the other IMUs; ``stop`` releases it

    def stop(self, timeout_s: float = 2.0) -> None:
        super().stop(timeout_s)
        board, self._board = self._board, None
        if board is not None:
            board.unsubscribe(self.sensor, self._on_corrupt)

    @property
    def info(self) -> dict[str, str]:
        """The board's ``I`` lines."""
        return {} if self._board is None else dict(self._board.reader.info)
