"""Finding sensors: serial ports recognised by their USB ids, an optional probe that listens
for WitMotion frames or line-protocol lines, and BLE scanning (the BLE driver's scanner).

USB ids only say which USB-serial chip or board is there: a CH340 or CP210x is what
WitMotion's USB adapters use, but so do many ESP32 and Arduino clone boards, so the id gives
a guess and the probe (``probe_port``) tells for sure by listening to the data. The probe
opens the port for a fraction of a second at each candidate baud rate; opening a port
resets most Arduino boards, which then print their boot lines first (the probe waits for
them). Nothing is written to the device.
"""

from __future__ import annotations

import importlib
import logging
import os
import time
from dataclasses import dataclass, replace
from enum import Enum
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from sensors.protocols.line import LineInfo, LineParser, LineSample
from sensors.protocols.witmotion import WitMotionSerialParser
from vimcan_core.errors import DeviceError

log = logging.getLogger(__name__)


class Detected(Enum):
    """What a probe heard on a port."""

    WITMOTION = "WitMotion 0x55 frames"
    LINE = "VIMCAN line protocol"
    UNKNOWN_DATA = "data in an unknown format"
    SILENT = "no data"
    UNAVAILABLE = "could not be opened"


@dataclass(frozen=True)
class UsbId:
    """What a USB vendor (and product) id says about a serial port."""

    chip: str  # the USB-serial chip or board
    guess: str  # what it most likely is, for the user
    kind: str | None  # the spec kind to try first (None: not a sensor we can read directly)
    bauds: tuple[int, ...]  # the probe's baud rates, most likely first


_WIT_ADAPTER = "WitMotion USB adapter, or an ESP32/Arduino clone board"
_WIT_BAUDS = (9600, 115200, 230400, 921600)
_BOARD_BAUDS = (115200, 9600)

#: (vendor id, product id) -> what it is; product id None matches any product of the vendor
USB_IDS: dict[tuple[int, int | None], UsbId] = {
    (0x1A86, 0x7523): UsbId("CH340", _WIT_ADAPTER, "witmotion", _WIT_BAUDS),
    (0x1A86, 0x7522): UsbId("CH340K", _WIT_ADAPTER, "witmotion", _WIT_BAUDS),
    (0x1A86, 0x5523): UsbId("CH341", _WIT_ADAPTER, "witmotion", _WIT_BAUDS),
    (0x1A86, 0x55D3): UsbId("CH343", _WIT_ADAPTER, "witmotion", _WIT_BAUDS),
    (0x1A86, 0x55D4): UsbId("CH9102", _WIT_ADAPTER, "witmotion", _WIT_BAUDS),
    (0x10C4, 0xEA60): UsbId("CP210x", _WIT_ADAPTER, "witmotion", _WIT_BAUDS),
    (0x10C4, 0xEA70): UsbId("CP2105", _WIT_ADAPTER, "witmotion", _WIT_BAUDS),
    (0x0403, 0x6001): UsbId("FTDI FT232R", "FTDI USB-serial adapter (sensor adapter or Arduino)", "line", _BOARD_BAUDS + _WIT_BAUDS[2:]),
    (0x0403, 0x6010): UsbId("FTDI FT2232", "FTDI USB-serial adapter", "line", _BOARD_BAUDS),
    (0x0403, 0x6011): UsbId("FTDI FT4232", "FTDI USB-serial adapter", "line", _BOARD_BAUDS),
    (0x0403, 0x6014): UsbId("FTDI FT232H", "FTDI USB-serial adapter", "line", _BOARD_BAUDS),
    (0x0403, 0x6015): UsbId("FTDI FT-X", "FTDI USB-serial adapter (sensor adapter or Arduino)", "line", _BOARD_BAUDS),
    (0x303A, None): UsbId("Espressif native USB", "ESP32 board (S2/S3/C3/C6)", "line", _BOARD_BAUDS),
    (0x2341, None): UsbId("Arduino", "Arduino board", "line", _BOARD_BAUDS),
    (0x2A03, None): UsbId("Arduino", "Arduino board (arduino.org)", "line", _BOARD_BAUDS),
    (0x239A, None): UsbId("Adafruit", "Adafruit board (Feather, QT Py...)", "line", _BOARD_BAUDS),
    (0x1B4F, None): UsbId("SparkFun", "SparkFun board", "line", _BOARD_BAUDS),
    (0x2E8A, None): UsbId("Raspberry Pi RP2040/RP2350", "Raspberry Pi Pico board", "line", _BOARD_BAUDS),
    (0x16C0, 0x0483): UsbId("Teensy", "Teensy board", "line", _BOARD_BAUDS),
    (0x0483, 0x5740): UsbId("STM32 virtual COM", "STM32 board", "line", _BOARD_BAUDS),
    (0x2639, None): UsbId("Xsens", "Xsens MTi or Awinda station (use MT Manager; replay its exports with file:)", None, ()),
}


def recognise_usb(vid: int | None, pid: int | None) -> UsbId | None:
    if vid is None:
        return None
    return USB_IDS.get((vid, pid)) or USB_IDS.get((vid, None))


@dataclass(frozen=True)
class ProbeResult:
    detected: Detected
    baud: int | None  # the baud rate it was heard at
    packets: int  # valid frames or lines heard
    bytes_heard: int
    detail: str = ""  # board info lines, error text


@dataclass(frozen=True)
class SerialPortInfo:
    """One serial port and what it is recognised as."""

    port: str
    description: str
    vid: int | None
    pid: int | None
    serial_number: str | None
    usb: UsbId | None
    probe: ProbeResult | None = None
    stable_path: str | None = None  # /dev/serial/by-id/... link to this port (survives re-plugging)

    @property
    def spec_path(self) -> str:
        """The path to put in a spec: the by-id link when there is one, so that a sensor that comes
        back as /dev/ttyUSB1 after being unplugged is found again by the reconnection."""
        return self.stable_path or self.port

    @property
    def usb_id(self) -> str:
        return "" if self.vid is None else f"{self.vid:04X}:{self.pid or 0:04X}"

    @property
    def recognised_as(self) -> str:
        if self.probe is not None and self.probe.detected in (Detected.WITMOTION, Detected.LINE):
            what = "WitMotion IMU" if self.probe.detected == Detected.WITMOTION else "DIY IMU board (line protocol)"
            return f"{what} at {self.probe.baud} baud" + (f" ({self.probe.detail})" if self.probe.detail else "")
        if self.usb is not None:
            return self.usb.guess
        return "unknown serial port"

    @property
    def suggested_spec(self) -> str | None:
        if self.probe is not None and self.probe.detected == Detected.WITMOTION:
            return f"witmotion:{self.spec_path}@{self.probe.baud}"
        if self.probe is not None and self.probe.detected == Detected.LINE:
            return f"line:{self.spec_path}@{self.probe.baud}"
        if self.usb is not None and self.usb.kind is not None:
            return f"{self.usb.kind}:{self.spec_path}@{self.usb.bauds[0]}"
        return None


BY_ID_DIR = Path("/dev/serial/by-id")


def stable_links(by_id_dir: Path = BY_ID_DIR) -> dict[str, str]:
    """Real device path -> its udev by-id link (Linux; empty elsewhere)."""
    links: dict[str, str] = {}
    try:
        entries = sorted(by_id_dir.iterdir())
    except OSError:
        return links
    for link in entries:
        try:
            links.setdefault(os.path.realpath(link), str(link))
        except OSError:
            continue
    return links


def list_serial_ports(comports: Callable[[], Iterable[Any]] | None = None,
                      by_id_dir: Path = BY_ID_DIR) -> list[SerialPortInfo]:
    """The serial ports the OS reports (pyserial's ``comports``), recognised by USB id,
    with their stable by-id links where udev made them."""
    if comports is None:
        from serial.tools import list_ports

        comports = list_ports.comports
    links = stable_links(by_id_dir)
    out = []
    for p in comports():
        vid, pid = getattr(p, "vid", None), getattr(p, "pid", None)
        out.append(SerialPortInfo(
            port=p.device, description=getattr(p, "description", "") or "", vid=vid, pid=pid,
            serial_number=getattr(p, "serial_number", None), usb=recognise_usb(vid, pid),
            stable_path=links.get(os.path.realpath(p.device)),
        ))
    return sorted(out, key=lambda i: i.port)


def detect_protocol(data: bytes) -> tuple[Detected, int, str]:
    """What ``data`` heard on a port is: (kind, valid packets, board info). No I/O."""
    wit = WitMotionSerialParser()
    frames = len(wit.feed(data))
    parser = LineParser()
    messages = parser.feed(data)
    samples = sum(isinstance(m, LineSample) for m in messages)
    info = ", ".join(f"{m.key}={m.value}" for m in messages if isinstance(m, LineInfo))
    if frames >= 3 and frames * 11 >= 0.5 * len(data):
        return Detected.WITMOTION, frames, ""
    if samples >= 2:
        return Detected.LINE, samples, info
    if data:
        return Detected.UNKNOWN_DATA, 0, ""
    return Detected.SILENT, 0, ""


def probe_port(port: str, bauds: Sequence[int] = _BOARD_BAUDS + _WIT_BAUDS[2:] + (9600,), listen_s: float = 0.6,
               opener: Callable[..., Any] | None = None) -> ProbeResult:
    """Listen on ``port`` at each baud rate in turn until a known protocol is heard. The port is
    opened for exclusive use, as the drivers open it: a port a running device streams from is
    reported as in use instead of being read beside it (both readers would lose bytes)."""
    import serial

    from sensors.drivers.serial_port import port_in_use

    opener = opener or serial.serial_for_url
    last = ProbeResult(Detected.SILENT, None, 0, 0)
    for baud in dict.fromkeys(bauds):  # unique, in order
        try:
            ser = opener(port, baudrate=baud, timeout=0.05, exclusive=True)
        except (serial.SerialException, OSError, ValueError) as exc:
            why = f"in use by another program or device (a running studio or monitor?): {exc}" if port_in_use(exc) else str(exc)
            return ProbeResult(Detected.UNAVAILABLE, None, 0, 0, why)
        data = bytearray()
        try:
            end = time.monotonic() + listen_s
            while time.monotonic() < end and len(data) < 65536:
                data += ser.read(max(1, ser.in_waiting))
        except (serial.SerialException, OSError) as exc:
            return ProbeResult(Detected.UNAVAILABLE, baud, 0, len(data), str(exc))
        finally:
            ser.close()
        detected, packets, info = detect_protocol(bytes(data))
        log.debug("probe %s @%d: %d bytes, %s", port, baud, len(data), detected.value)
        if detected in (Detected.WITMOTION, Detected.LINE):
            return ProbeResult(detected, baud, packets, len(data), info)
        if detected == Detected.UNKNOWN_DATA or last.detected == Detected.SILENT:
            last = ProbeResult(detected, baud if data else None, 0, len(data))
    return last


def probe_ports(ports: Sequence[SerialPortInfo], listen_s: float = 0.6,
                bauds: Sequence[int] | None = None) -> list[SerialPortInfo]:
    """The same ports with their probe results (ports that are not sensors are not probed)."""
    out = []
    for info in ports:
        if info.usb is not None and info.usb.kind is None:
            out.append(info)
            continue
        candidate = bauds or (info.usb.bauds if info.usb else _BOARD_BAUDS + (9600,))
        out.append(replace(info, probe=probe_port(info.port, candidate, listen_s)))
    return out


def explicit_port(path: str) -> SerialPortInfo:
    """A port named by the user (a pty, a by-id link, a URL) that the OS listing may not show."""
    return SerialPortInfo(port=path, description="given on the command line", vid=None, pid=None,
                          serial_number=None, usb=None)


def scan_ble(timeout_s: float = 5.0) -> list[Any]:
    """BLE IMUs in range, through the BLE driver's ``sensors.drivers.ble_scan.scan_ble``."""
    try:
        module = importlib.import_module("sensors.drivers.ble_scan")
        scanner = module.scan_ble
    except (ImportError, AttributeError) as exc:
        raise DeviceError(f"BLE scanning is not available ({exc}); install bleak (`pip install bleak`) "
                          "and make sure sensors/drivers/ble_scan.py is present") from exc
    try:
        return list(scanner(timeout_s))
    except DeviceError:
        raise
    except Exception as exc:  # bleak raises backend-specific errors (no adapter, BlueZ not running...)
        raise DeviceError(f"BLE scan failed: {type(exc).__name__}: {exc}; is Bluetooth on and an adapter present?") from exc
