"""The driver interface every sensor and camera implements.

A ``Device`` owns one thread. The thread connects, then polls the device for samples and
pushes them into the device's bounded ``SampleBuffer``; when the device is lost
(``DeviceLost``: unplugged, out of range, port gone) it reports ``DISCONNECTED``, waits
with a growing back-off and reconnects (``RECONNECTING``), while the other devices keep
streaming. ``stop()`` sets an Event and joins the thread.

States::

    CONNECTING -> STREAMING <-> STALLED          (no sample for stall_after_s)
         ^            |
         |            v  DeviceLost
    RECONNECTING <- DISCONNECTED                  stop() -> STOPPED from any state

A subclass implements three methods, all called from the device thread only:
``_connect()`` (raise ``DeviceLost`` if the device is not there), ``_poll()`` (return the
samples that arrived, blocking at most about 0.1 s; raise ``DeviceLost``) and
``_disconnect()``. Corrupt and dropped packets are counted with ``_count_corrupt`` and
``_count_dropped``.
"""

from __future__ import annotations

import logging
import threading
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from enum import Enum
from typing import Sequence

from sensors.buffer import SampleBuffer
from sensors.clock import ClockOffsetEstimator
from sensors.samples import Sample
from vimcan_core.calibration import ImuWorldUp
from vimcan_core.errors import DeviceError, DeviceLost

log = logging.getLogger(__name__)


class DeviceState(Enum):
    IDLE = "idle"
    CONNECTING = "connecting"
    STREAMING = "streaming"
    STALLED = "stalled"
    DISCONNECTED = "disconnected"
    RECONNECTING = "reconnecting"
    STOPPED = "stopped"


class DeviceKind(Enum):
    IMU = "imu"
    CAMERA = "camera"


@dataclass(frozen=True)
class DeviceStats:
    """Live statistics of one device, as shown in the devices panel and by ``vimcan monitor``."""

    state: DeviceState
    samples: int = 0
    rate_hz: float = 0.0  # over the last ~2 s
    dropped: int = 0  # packets the device sent that never arrived (sequence gaps)
    corrupt: int = 0  # packets that arrived damaged (bad checksum, bad line)
    last_sample_age_s: float | None = None
    reconnects: int = 0
    clock_offset_s: float | None = None  # host - device
    battery_pct: float | None = None
    last_error: str | None = None


@dataclass(frozen=True)
class DeviceConfig:
    """Settings common to every driver."""

    buffer_capacity: int = 4096  # samples kept for interpolation and readers
    stall_after_s: float = 0.5  # no sample for this long -> STALLED
    reconnect_initial_s: float = 0.2  # first back-off after a loss
    reconnect_max_s: float = 2.0  # back-off cap
    latency_s: float = 0.0  # known transport delay, subtracted by the synchroniser


class Device(ABC):
    """Base of every driver: a thread, a state, statistics and a bounded buffer."""

    kind: DeviceKind = DeviceKind.IMU
    #: the vertical axis of the IMU's own world frame: hardware AHRS worlds (ENU, NWU) are Z-up;
    #: the calibration uses it when it has no raw accelerometer data
    imu_world_up: ImuWorldUp = ImuWorldUp.Z

    def __init__(self, device_id: str, config: DeviceConfig | None = None) -> None:
        self.device_id = device_id
        self.config = config or DeviceConfig()
        self.buffer: SampleBuffer[Sample] = SampleBuffer(self.config.buffer_capacity)
        self.clock = ClockOffsetEstimator()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()  # guards the statistics below
        self._state = DeviceState.IDLE
        self._samples = 0
        self._dropped = 0
        self._corrupt = 0
        self._reconnects = 0
        self._battery_pct: float | None = None
        self._last_error: str | None = None
        self._last_host_time: float | None = None
        self._recent_times: list[float] = []
        self._state_listeners: list = []

    # ----------------------------------------------------------------- public API
    def start(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name=f"device-{self.device_id}", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 2.0) -> None:
        """Ask the thread to stop and join it."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
            if self._thread.is_alive():
                log.warning("%s: thread did not stop within %.1f s", self.device_id, timeout_s)
        self._set_state(DeviceState.STOPPED)

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    @property
    def state(self) -> DeviceState:
        with self._lock:
            state = self._state
            last = self._last_host_time
        if state == DeviceState.STREAMING and last is not None and time.monotonic() - last > self.config.stall_after_s:
            return DeviceState.STALLED
        return state

    def stats(self) -> DeviceStats:
        state = self.state
        now = time.monotonic()
        with self._lock:
            recent = [t for t in self._recent_times if now - t <= 2.0]
            self._recent_times = recent
            rate = (len(recent) - 1) / (recent[-1] - recent[0]) if len(recent) > 1 and recent[-1] > recent[0] else 0.0
            return DeviceStats(
                state=state,
                samples=self._samples,
                rate_hz=rate,
                dropped=self._dropped,
                corrupt=self._corrupt,
                last_sample_age_s=None if self._last_host_time is None else now - self._last_host_time,
                reconnects=self._reconnects,
                clock_offset_s=self.clock.offset_s,
                battery_pct=self._battery_pct,
                last_error=self._last_error,
            )

    def add_state_listener(self, callback) -> None:
        """``callback(device_id, DeviceState)`` is called from the device thread on each change."""
        self._state_listeners.append(callback)

    # ----------------------------------------------------------- for subclasses
    @abstractmethod
    def _connect(self) -> None: ...

    @abstractmethod
    def _poll(self) -> Sequence[Sample]: ...

    @abstractmethod
    def _disconnect(self) -> None: ...

    def _count_corrupt(self, n: int = 1) -> None:
        with self._lock:
            self._corrupt += n

    def _count_dropped(self, n: int = 1) -> None:
        with self._lock:
            self._dropped += n

    def _set_battery(self, pct: float) -> None:
        with self._lock:
            self._battery_pct = pct

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    # ----------------------------------------------------------------- the thread
    def _set_state(self, state: DeviceState) -> None:
        with self._lock:
            changed = state != self._state
            self._state = state
        if changed:
            log.info("%s: %s", self.device_id, state.value)
            for cb in list(self._state_listeners):
                try:
                    cb(self.device_id, state)
                except Exception:  # a listener must never kill the device thread
                    log.exception("%s: state listener failed", self.device_id)

    def _deliver(self, samples: Sequence[Sample]) -> None:
        for s in samples:
            if s.device_time_s is not None:
                self.clock.update(s.host_time_s, s.device_time_s)
            self.buffer.push(s)
        if samples:
            with self._lock:
                self._samples += len(samples)
                self._last_host_time = samples[-1].host_time_s
                self._recent_times.extend(s.host_time_s for s in samples)
                if len(self._recent_times) > 4096:
                    del self._recent_times[:-2048]

    def _run(self) -> None:
        backoff = self.config.reconnect_initial_s
        first = True
        while not self._stop.is_set():
            self._set_state(DeviceState.CONNECTING if first else DeviceState.RECONNECTING)
            try:
                self._connect()
                self.clock.reset()  # a reconnected device may have restarted its clock
                backoff = self.config.reconnect_initial_s
                self._set_state(DeviceState.STREAMING)
                while not self._stop.is_set():
                    self._deliver(self._poll())
            except DeviceLost as exc:
                with self._lock:
                    self._last_error = str(exc)
                log.warning("%s: lost: %s", self.device_id, exc)
            except DeviceError as exc:
                with self._lock:
                    self._last_error = str(exc)
                log.error("%s: %s", self.device_id, exc)
            except Exception as exc:  # a driver bug must not take the studio down silently
                with self._lock:
                    self._last_error = f"{type(exc).__name__}: {exc}"
                log.exception("%s: driver error", self.device_id)
            finally:
                try:
                    self._disconnect()
                except Exception:
                    log.debug("%s: error while disconnecting", self.device_id, exc_info=True)
            if self._stop.is_set():
                break
            self._set_state(DeviceState.DISCONNECTED)
            first = False
            with self._lock:
                self._reconnects += 1
            self._stop.wait(backoff)
            backoff = min(backoff * 2, self.config.reconnect_max_s)
        self._set_state(DeviceState.STOPPED)

