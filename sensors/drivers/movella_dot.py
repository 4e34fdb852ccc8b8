"""Movella DOT (formerly Xsens DOT) over Bluetooth Low Energy.

The GATT layout used here, from the Movella DOT BLE Services Specification (XD0506P) and
Movella's own example code (xsens/xsens_dot_server, bleHandler.js). All UUIDs share the base
``1517xxxx-4947-11e9-8646-d663bd873d93``:

================  ========  ===================================================================
service / char    UUID      use
================  ========  ===================================================================
configuration     1517100x  1002 *device control* (32 bytes, read/write): byte 0 is a "visit
                            index" bit mask saying which fields a write changes; bit 0x10 =
                            output rate, an uint16 LE at bytes 24-25 (1, 4, 10, 12, 15, 20, 30
                            or 60 Hz when streaming)
measurement       1517200x  2001 *control* (write ``[1, start=1|stop=0, payload mode]``);
                            2002 long (63 B), 2003 medium (40 B), 2004 short (20 B) payload
                            notifications; 2006 *orientation reset control* (write uint16 LE
                            1 = heading reset, 7 = revert to the default heading; read: byte 0
                            is the heading status 1 reset / 7 default / 8 none)
battery           1517300x  3001 (read/notify): ``[level %, charging 0|1]``
message           1517700x  7001/7002/7003 control, ack, notification (recording, sync; unused)
================  ========  ===================================================================

Payloads (little-endian; each starts with the device timestamp, uint32 microseconds,
wrapping every 71.6 minutes, unwrapped here):

* Extended (Quaternion), mode 2, medium: quaternion w x y z (4 float32), free acceleration
  x y z (3 float32, m/s^2), status int16, acc clip count uint8, gyro clip count uint8.
* Complete (Quaternion), mode 3, medium: quaternion, free acceleration.
* Orientation (Quaternion), mode 5, short: quaternion.
* Custom mode 3, mode 24, medium: quaternion, angular velocity (3 float32, deg/s).

Frames: the quaternion rotates the sensor frame into the DOT's local earth frame (east,
north, up: Z up) and the free acceleration (gravity removed) is in that earth frame. The
driver passes both on unchanged, as "sensor-to-its-own-world"; calibration maps that world
onto ours (Y up). Heading reset makes the current sensor heading the earth frame's X axis.

Dropped packets are counted from gaps in the device timestamps (a gap of n periods means n - 1
packets missing, less those that did arrive but were corrupt and are counted as such).
"""

from __future__ import annotations

import logging
import struct
from dataclasses import dataclass
from enum import Enum, IntEnum

import numpy as np
from bleak import BleakClient
from bleak.backends.client import BaseBleakClient
from bleak.backends.scanner import BaseBleakScanner

from sensors.device import DeviceConfig
from sensors.drivers.ble_base import BleConfig, BleDevice
from sensors.samples import ImuSample
from vimcan_core.errors import DeviceError

log = logging.getLogger(__name__)


def dot_uuid(short: int) -> str:
    """The full 128-bit UUID of a DOT service or characteristic from its 16-bit part (0x2001)."""
    return f"1517{short:04x}-4947-11e9-8646-d663bd873d93"


CONFIG_SERVICE = dot_uuid(0x1000)
DEVICE_INFO_CHAR = dot_uuid(0x1001)
DEVICE_CONTROL_CHAR = dot_uuid(0x1002)
MEASUREMENT_SERVICE = dot_uuid(0x2000)
MEASUREMENT_CONTROL_CHAR = dot_uuid(0x2001)
LONG_PAYLOAD_CHAR = dot_uuid(0x2002)
MEDIUM_PAYLOAD_CHAR = dot_uuid(0x2003)
SHORT_PAYLOAD_CHAR = dot_uuid(0x2004)
ORIENTATION_RESET_CHAR = dot_uuid(0x2006)
BATTERY_SERVICE = dot_uuid(0x3000)
BATTERY_CHAR = dot_uuid(0x3001)
MESSAGE_SERVICE = dot_uuid(0x7000)

DEVICE_CONTROL_SIZE = 32
VISIT_OUTPUT_RATE = 0x10  # device control byte 0: "write the output rate field"
OUTPUT_RATE_OFFSET = 24  # uint16 LE in the device control record
HEADING_RESET = 1  # orientation reset control values (and heading status when read back)
HEADING_DEFAULT = 7
STREAMING_RATES_HZ = (1, 4, 10, 12, 15, 20, 30, 60)
TIMESTAMP_WRAP_US = 1 << 32


class DotPayloadMode(IntEnum):
    """Measurement payload modes that carry a quaternion (the ones this driver decodes)."""

    EXTENDED_QUATERNION = 2
    COMPLETE_QUATERNION = 3
    ORIENTATION_QUATERNION = 5
    CUSTOM_MODE_3 = 24


class HeadingStatus(IntEnum):
    """What the orientation reset control characteristic reads back."""

    HEADING_RESET = HEADING_RESET  # a heading reset is in effect
    DEFAULT = HEADING_DEFAULT  # the factory default heading (magnetic north)
    NONE = 8


class _Extra(Enum):
    """What follows the quaternion in a payload."""

    NONE = "none"
    FREE_ACC = "free_acc"  # 3 float32, m/s^2, earth frame
    GYRO = "gyro"  # 3 float32, deg/s, sensor frame


@dataclass(frozen=True)
class _Layout:
    char_uuid: str
    size: int  # bytes used (the characteristic may be longer, zero padded)
    extra: _Extra


_LAYOUTS: dict[DotPayloadMode, _Layout] = {
    DotPayloadMode.EXTENDED_QUATERNION: _Layout(MEDIUM_PAYLOAD_CHAR, 36, _Extra.FREE_ACC),
    DotPayloadMode.COMPLETE_QUATERNION: _Layout(MEDIUM_PAYLOAD_CHAR, 32, _Extra.FREE_ACC),
    DotPayloadMode.ORIENTATION_QUATERNION: _Layout(SHORT_PAYLOAD_CHAR, 20, _Extra.NONE),
    DotPayloadMode.CUSTOM_MODE_3: _Layout(MEDIUM_PAYLOAD_CHAR, 32, _Extra.GYRO),
}

_HEAD = struct.Struct("<I4f")  # timestamp_us, w, x, y, z
_VEC3 = struct.Struct("<3f")


@dataclass(frozen=True)
class DotPayload:
    """One decoded measurement notification."""

    timestamp_us: int  # device clock, wraps at 2**32
    quat_wxyz: tuple[float, float, float, float]  # sensor -> DOT earth frame (ENU)
    acc_free_mps2: tuple[float, float, float] | None = None  # earth frame, gravity removed
    gyro_dps: tuple[float, float, float] | None = None  # sensor frame


def decode_payload(mode: DotPayloadMode, data: bytes) -> DotPayload:
    """Decode one payload notification of ``mode``; raises ``ValueError`` if it is too short."""
    layout = _LAYOUTS[mode]
    if len(data) < layout.size:
        raise ValueError(f"{mode.name} payload needs {layout.size} bytes, got {len(data)}")
    ts, w, x, y, z = _HEAD.unpack_from(data, 0)
    acc = gyro = None
    if layout.extra == _Extra.FREE_ACC:
        acc = _VEC3.unpack_from(data, _HEAD.size)
    elif layout.extra == _Extra.GYRO:
        gyro = _VEC3.unpack_from(data, _HEAD.size)
    return DotPayload(ts, (w, x, y, z), acc, gyro)


def encode_payload(mode: DotPayloadMode, payload: DotPayload) -> bytes:
    """Inverse of ``decode_payload`` (zero padded to the characteristic's size): for simulators and tests."""
    layout = _LAYOUTS[mode]
    out = bytearray(_HEAD.pack(payload.timestamp_us % TIMESTAMP_WRAP_US, *payload.quat_wxyz))
    if layout.extra == _Extra.FREE_ACC:
        out += _VEC3.pack(*(payload.acc_free_mps2 or (0.0, 0.0, 0.0)))
    elif layout.extra == _Extra.GYRO:
        out += _VEC3.pack(*(payload.gyro_dps or (0.0, 0.0, 0.0)))
    size = {SHORT_PAYLOAD_CHAR: 20, MEDIUM_PAYLOAD_CHAR: 40, LONG_PAYLOAD_CHAR: 63}[layout.char_uuid]
    return bytes(out.ljust(size, b"\x00"))


def measurement_command(mode: DotPayloadMode, start: bool) -> bytes:
    """Measurement control write: ``[type 1, start 1 / stop 0, payload mode]``."""
    return bytes((1, 1 if start else 0, int(mode)))


def output_rate_command(rate_hz: int) -> bytes:
    """Device control write that sets the output rate (the other fields are left alone)."""
    record = bytearray(DEVICE_CONTROL_SIZE)
    record[0] = VISIT_OUTPUT_RATE
    struct.pack_into("<H", record, OUTPUT_RATE_OFFSET, rate_hz)
    return bytes(record)


def output_rate_from_control(record: bytes) -> int:
    """The output rate (Hz) in a device control record read back from the sensor."""
    if len(record) < OUTPUT_RATE_OFFSET + 2:
        raise ValueError(f"device control record must be {DEVICE_CONTROL_SIZE} bytes, got {len(record)}")
    return struct.unpack_from("<H", record, OUTPUT_RATE_OFFSET)[0]


@dataclass(frozen=True)
class MovellaDotConfig:
    """What to ask the DOT for."""

    payload_mode: DotPayloadMode = DotPayloadMode.COMPLETE_QUATERNION  # quaternion + free acceleration
    output_rate_hz: int = 60  # the highest streaming rate; the studio's synchroniser wants >= the 30 Hz camera
    heading_reset_on_connect: bool = False  # usually done once, in calibration, with all sensors aligned

    def __post_init__(self) -> None:
        if self.output_rate_hz not in STREAMING_RATES_HZ:
            raise DeviceError(f"Movella DOT output rate must be one of {STREAMING_RATES_HZ} Hz, got {self.output_rate_hz}")


class MovellaDotDevice(BleDevice):
    """A Movella DOT streaming quaternions (and free acceleration) over BLE."""

    def __init__(
        self,
        address: str,
        dot_config: MovellaDotConfig | None = None,
        device_id: str | None = None,
        config: DeviceConfig | None = None,
        ble_config: BleConfig | None = None,
        backend: type[BaseBleakClient] | None = None,
        scanner_backend: type[BaseBleakScanner] | None = None,
    ) -> None:
        super().__init__(device_id or f"dot:{address}", address, config, ble_config, backend, scanner_backend)
        self.dot_config = dot_config or MovellaDotConfig()
        self._layout = _LAYOUTS[self.dot_config.payload_mode]
        self._last_ts_us: int | None = None  # unwrapped; kept across reconnects (the sensor's clock runs on)
        self._ts_offset_us = 0  # added to the raw timestamp to unwrap it
        self._gap_ref_us: int | None = None  # previous timestamp for loss counting, reset on reconnect
        self._corrupt_in_gap = 0  # corrupt packets since then: already counted, not lost
        self.output_rate_hz: int | None = None  # as read back from the sensor
        self.charging: bool | None = None

    # --------------------------------------------------------------- commands
    async def _set_output_rate(self, client: BleakClient, rate_hz: int, strict: bool = True) -> int:
        """Write the output rate and read it back. ``strict``: a sensor that keeps another rate is
        an error; otherwise (on connect) it is a warning and the driver goes on at the sensor's rate."""
        self.output_rate_hz = None  # no gap counting while the rate changes
        await client.write_gatt_char(DEVICE_CONTROL_CHAR, output_rate_command(rate_hz), response=True)
        rate = output_rate_from_control(bytes(await client.read_gatt_char(DEVICE_CONTROL_CHAR)))
        if rate != rate_hz:
            msg = f"{self.device_id}: asked for {rate_hz} Hz, the sensor reports {rate} Hz; update its firmware (Movella DOT app)"
            if strict:
                raise DeviceError(msg)
            log.warning("%s", msg)
        self.output_rate_hz = rate if rate in STREAMING_RATES_HZ else None
        return rate

    async def _read_battery(self, client: BleakClient) -> float:
        data = bytes(await client.read_gatt_char(BATTERY_CHAR))
        if len(data) < 2:
            raise DeviceError(f"{self.device_id}: battery record must be 2 bytes, got {data.hex()}")
        self.charging = bool(data[1])
        self._set_battery(float(data[0]))
        return float(data[0])

    def heading_reset(self) -> None:
        """Make the sensor's current heading the zero heading (call from any thread while streaming)."""

        async def reset(client: BleakClient) -> None:
            await client.write_gatt_char(ORIENTATION_RESET_CHAR, struct.pack("<H", HEADING_RESET), response=True)

        self.call(reset)
        log.info("%s: heading reset", self.device_id)

    def revert_heading(self) -> None:
        """Undo a heading reset: back to the sensor's default heading (call from any thread)."""

        async def revert(client: BleakClient) -> None:
            await client.write_gatt_char(ORIENTATION_RESET_CHAR, struct.pack("<H", HEADING_DEFAULT), response=True)

        self.call(revert)

    def heading_status(self) -> HeadingStatus:
        """Whether a heading reset is in effect (read from the sensor)."""

        async def read(client: BleakClient) -> bytes:
            return bytes(await client.read_gatt_char(ORIENTATION_RESET_CHAR))

        data = self.call(read)
        try:
            return HeadingStatus(data[0])
        except (IndexError, ValueError) as exc:
            raise DeviceError(f"{self.device_id}: unexpected heading status {data.hex()}") from exc

    def set_output_rate(self, rate_hz: int) -> int:
        """Change the output rate while streaming; returns the rate the sensor confirms."""
        if rate_hz not in STREAMING_RATES_HZ:
            raise DeviceError(f"Movella DOT output rate must be one of {STREAMING_RATES_HZ} Hz, got {rate_hz}")
        return self.call(lambda client: self._set_output_rate(client, rate_hz))

    def read_battery(self) -> float:
        """Battery level in percent (also kept in ``stats().battery_pct``)."""
        return self.call(self._read_battery)

    # ------------------------------------------------------------ BleDevice
    async def _setup(self, client: BleakClient) -> None:
        self._gap_ref_us = None  # the link was down: that gap is not a loss on the air
        await self._set_output_rate(client, self.dot_config.output_rate_hz, strict=False)
        try:
            await self._read_battery(client)
        except DeviceError as exc:
            log.warning("%s", exc)
        if self.dot_config.heading_reset_on_connect:
            await client.write_gatt_char(ORIENTATION_RESET_CHAR, struct.pack("<H", HEADING_RESET), response=True)
        await client.start_notify(self._layout.char_uuid, self._notification_handler)
        await client.write_gatt_char(
            MEASUREMENT_CONTROL_CHAR, measurement_command(self.dot_config.payload_mode, True), response=True
        )
        log.info("%s: streaming %s at %d Hz", self.device_id, self.dot_config.payload_mode.name, self.output_rate_hz)

    async def _teardown(self, client: BleakClient) -> None:
        await client.write_gatt_char(
            MEASUREMENT_CONTROL_CHAR, measurement_command(self.dot_config.payload_mode, False), response=True
        )

    async def _housekeeping(self, client: BleakClient) -> None:
        await self._read_battery(client)

    def _on_notification(self, char_uuid: str, data: bytes, host_time_s: float) -> None:
        if char_uuid != self._layout.char_uuid:
            return
        try:
            p = decode_payload(self.dot_config.payload_mode, data)
        except ValueError as exc:
            self._count_corrupt()
            self._corrupt_in_gap += 1
            log.debug("%s: %s", self.device_id, exc)
            return
        q = np.asarray(p.quat_wxyz, dtype=np.float64)
        norm = float(np.linalg.norm(q))
        extras = [v for v in (p.acc_free_mps2, p.gyro_dps) if v is not None]
        if not np.isfinite(norm) or abs(norm - 1.0) > 0.05 or not all(np.all(np.isfinite(v)) for v in extras):
            self._count_corrupt()
            self._corrupt_in_gap += 1
            return
        ts_us = self._unwrap(p.timestamp_us)
        self._emit(
            ImuSample(
                device_id=self.device_id,
                host_time_s=host_time_s,
                device_time_s=ts_us * 1e-6,
                quat_wxyz=tuple(float(v) for v in q / norm),
                acc_free_mps2=None if p.acc_free_mps2 is None else tuple(float(v) for v in p.acc_free_mps2),
                gyro_dps=None if p.gyro_dps is None else tuple(float(v) for v in p.gyro_dps),
            )
        )

    def _unwrap(self, raw_us: int) -> int:
        """Unwrap the 32-bit microsecond clock and count the packets lost in a gap."""
        if self._last_ts_us is not None and raw_us + self._ts_offset_us < self._last_ts_us - TIMESTAMP_WRAP_US // 2:
            self._ts_offset_us += TIMESTAMP_WRAP_US
        ts = raw_us + self._ts_offset_us
        if self._gap_ref_us is not None and self.output_rate_hz:
            missing = int(round((ts - self._gap_ref_us) * self.output_rate_hz / 1e6)) - 1 - self._corrupt_in_gap
            if missing > 0:
                self._count_dropped(missing)
        self._last_ts_us = ts
        self._gap_ref_us = ts
        self._corrupt_in_gap = 0
        return ts
