"""Serial-port devices: the device thread is the port's reader thread.

Reading and parsing are separate, as in pyserial's ``ReaderThread``/``Protocol`` split: this
class opens the port, reads whatever arrived (blocking at most ``read_timeout_s``), stamps it
with the host's monotonic clock and hands the bytes to the subclass's protocol object in
``_handle_bytes``. Opening failures and read errors (the port vanished: USB unplugged, pty
closed) become ``DeviceLost``, so the ``Device`` base reports DISCONNECTED and reconnects
with back-off. Ports are opened with ``serial.serial_for_url`` so ``loop://`` and
``socket://`` URLs work as well as device paths.

A port is opened for exclusive use (pyserial's ``exclusive=True``: an advisory ``flock`` on POSIX;
Windows ports are exclusive anyway). Two readers of one tty each get part of the bytes, and the one
that loses a race for them is told "device reports readiness to read but returned no data": a
drop and a reconnect that look like an unplugged cable. With the lock, a second opener (another
driver, a second studio, a probe that takes the lock) is refused at once, with a message saying the
port is in use, and the first one streams on.
"""

from __future__ import annotations

import logging
import threading
import time
from abc import abstractmethod
from dataclasses import dataclass
from typing import Sequence

import serial

from sensors.device import Device, DeviceConfig
from sensors.samples import Sample
from vimcan_core.errors import DeviceLost

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SerialSettings:
    """Where and how to open a serial port."""

    port: str  # device path (/dev/ttyUSB0, COM3) or a pyserial URL (loop://, socket://host:port)
    baud: int = 115200
    read_timeout_s: float = 0.05  # one poll blocks at most this long waiting for the first byte
    max_read_bytes: int = 65536  # cap on one read, so a flood cannot starve the statistics
    command_gap_s: float = 0.05  # pause between configuration commands written on connect
    exclusive: bool = True  # lock the port: a second opener is refused instead of sharing (and losing) bytes


def port_in_use(exc: BaseException) -> bool:
    """True when opening a port failed because another open file holds its exclusive lock."""
    return "exclusively lock" in str(exc)  # pyserial's words for it


class SerialDevice(Device):
    """Base of the serial drivers; subclasses parse bytes into samples."""

    def __init__(self, device_id: str, settings: SerialSettings, config: DeviceConfig | None = None) -> None:
        super().__init__(device_id, config)
        self.settings = settings
        self._port: serial.SerialBase | None = None
        self._write_lock = threading.Lock()
        self.bytes_received = 0

    # --------------------------------------------------------------- subclass hooks
    @abstractmethod
    def _handle_bytes(self, data: bytes, host_time_s: float) -> list[Sample]:
        """Parse ``data`` (received at ``host_time_s``) and return the completed samples."""

    def _on_open(self) -> None:
        """Called in the device thread right after the port opened (send configuration here)."""

    def _reset_protocol(self) -> None:
        """Forget partial packets and counters (called on every (re)connect)."""

    # --------------------------------------------------------------- Device methods
    def _connect(self) -> None:
        s = self.settings
        try:
            self._port = serial.serial_for_url(s.port, baudrate=s.baud, timeout=s.read_timeout_s, write_timeout=1.0,
                                               exclusive=s.exclusive or None)
        except (serial.SerialException, OSError, ValueError) as exc:
            if port_in_use(exc):
                raise DeviceLost(
                    f"{self.device_id}: serial port {s.port} is in use by another program or device ({exc}); "
                    "close the other one (a terminal, a second studio, another device on this port)"
                ) from exc
            raise DeviceLost(
                f"{self.device_id}: cannot open serial port {s.port} at {s.baud} baud ({exc}); "
                "check that it is plugged in, that no other program holds it, and that you may use it "
                "(Linux: be in the 'dialout' group)"
            ) from exc
        self._reset_protocol()
        log.info("%s: opened %s at %d baud", self.device_id, s.port, s.baud)
        self._on_open()

    def _poll(self) -> Sequence[Sample]:
        port = self._port
        if port is None:
            raise DeviceLost(f"{self.device_id}: serial port {self.settings.port} is not open")
        try:
            data = port.read(1)
            if data:
                waiting = port.in_waiting
                if waiting:
                    data += port.read(min(waiting, self.settings.max_read_bytes))
        except (serial.SerialException, OSError) as exc:
            raise DeviceLost(f"{self.device_id}: serial port {self.settings.port} failed ({exc}); unplugged?") from exc
        if not data:
            return []
        host_time_s = time.monotonic()
        self.bytes_received += len(data)
        return self._handle_bytes(data, host_time_s)

    def _disconnect(self) -> None:
        port, self._port = self._port, None
        if port is not None:
            try:
                port.close()
            except (serial.SerialException, OSError):
                log.debug("%s: error closing %s", self.device_id, self.settings.port, exc_info=True)

    # --------------------------------------------------------------- writing
    def write(self, data: bytes) -> None:
        """Send bytes to the device (thread-safe; raises ``DeviceLost`` if the port is gone)."""
        port = self._port
        if port is None:
            raise DeviceLost(f"{self.device_id}: cannot write, serial port {self.settings.port} is not open")
        try:
            with self._write_lock:
                port.write(data)
                port.flush()
        except (serial.SerialException, OSError) as exc:
            raise DeviceLost(f"{self.device_id}: writing to {self.settings.port} failed ({exc})") from exc

    def write_commands(self, commands: Sequence[bytes]) -> None:
        """Send commands one by one with ``command_gap_s`` between them (stops early on stop())."""
        for cmd in commands:
            self.write(cmd)
            if self._stop.wait(self.settings.command_gap_s):
                return
