"""The WitMotion IMU protocols (WT901 / HWT905 serial family and BWT901BLE 5.0 family).

No I/O: bytes in, frozen packet objects out, plus the command bytes to send.

Serial frames (11 bytes)::

    0x55  TYPE  D0 D1 D2 D3 D4 D5 D6 D7  SUM        SUM = (0x55 + TYPE + D0 + ... + D7) & 0xFF

The eight data bytes are four little-endian int16 values ``v0..v3``:

======  ==========================  ==========================================
TYPE    meaning                     scaling
======  ==========================  ==========================================
0x50    chip time                   YY MM DD hh mm ss msL msH (bytes, not int16)
0x51    acceleration + temperature  v/32768*16 g, v3/100 degC
0x52    angular rate                v/32768*2000 deg/s, v3 raw (voltage/temp)
0x53    angles roll pitch yaw       v/32768*180 deg, v3 firmware version
0x54    magnetometer                raw counts, v3/100 degC
0x59    quaternion q0..q3           v/32768 (q0 is the scalar part)
======  ==========================  ==========================================

Types 0x56-0x58 and 0x5A (pressure, GPS) are recognised and returned raw; 0x55 (port
status) is not recognised, so that runs of 0x55 bytes never look like frame heads.

Receive state machine (``WitMotionSerialParser``): the stream is scanned for a 0x55 byte
followed by a known TYPE; if a whole frame is there and its SUM matches, the frame is
taken and scanning resumes after it; otherwise one byte is skipped (resynchronisation).
A frame with a known TYPE and a wrong SUM counts as corrupt. Incomplete frames at the end
of a chunk are kept for the next ``feed``. The scan is vectorised with numpy (candidate
heads with ``flatnonzero``, checksums from a cumulative sum) because a byte-by-byte Python
loop is far too slow for a 200 Hz x 6 sensor stream plus replay at many times real time.

BLE 5.0 packets (20 bytes, one per notification, no checksum)::

    0x55 0x61  ax ay az  wx wy wz  roll pitch yaw      (9 int16 LE, scaled as above)
    0x55 0x71  RegL RegH  r0 .. r7                     (reply to a register read)

A register read is requested with ``FF AA 27 REG 00`` (``read_register_command``).

Configuration writes are ``FF AA REG LOW HIGH``: unlock (``FF AA 69 88 B5``) first, then the
writes, then save (register 0x00 value 0). Registers: 0x02 RSW (output content bits),
0x03 RATE (output rate code), 0x04 BAUD (baud code).

Orientation convention (documented once, used by every WitMotion path): the angles are
roll about the sensor X axis, pitch about Y, yaw about Z, composed Z-Y-X (aerospace):
``R_world_from_sensor = Rz(yaw) @ Ry(pitch) @ Rx(roll)``; the world frame is the sensor's
own Z-up frame (X towards its start-up heading). The 0x59 quaternion is the same rotation,
w x y z. Accelerations in the packets are in the sensor frame and include gravity.
"""

from __future__ import annotations

import calendar
import struct
import time
from dataclasses import dataclass
from enum import IntEnum, IntFlag
from typing import NamedTuple, Union

import numpy as np

from vimcan_core.errors import DeviceError

HEADER = 0x55
SERIAL_FRAME_LEN = 11
BLE_PACKET_LEN = 20
GRAVITY_MPS2 = 9.80665
ACC_SCALE_G = 16.0 / 32768.0
GYRO_SCALE_DPS = 2000.0 / 32768.0
ANGLE_SCALE_DEG = 180.0 / 32768.0
QUAT_SCALE = 1.0 / 32768.0


class PacketType(IntEnum):
    """The TYPE byte of serial frames and the flag byte of BLE packets."""

    TIME = 0x50
    ACC = 0x51
    GYRO = 0x52
    ANGLE = 0x53
    MAG = 0x54
    PORT = 0x55
    PRESSURE = 0x56
    GPS_POSITION = 0x57
    GPS_SPEED = 0x58
    QUAT = 0x59
    GPS_ACCURACY = 0x5A
    BLE_DATA = 0x61
    BLE_REGISTERS = 0x71


class Register(IntEnum):
    """Configuration registers used here (``FF AA REG LOW HIGH``)."""

    SAVE = 0x00
    CALSW = 0x01
    RSW = 0x02  # output content, ``Content`` bits
    RATE = 0x03  # output rate, ``RATE_CODES``
    BAUD = 0x04  # baud rate, ``BAUD_CODES``
    READ_ADDRESS = 0x27  # write a register number here to read it back
    MAG_X = 0x3A
    QUAT_0 = 0x51
    KEY = 0x69  # unlock


class Content(IntFlag):
    """RSW bits: which frames the sensor outputs each period."""

    TIME = 1 << 0
    ACC = 1 << 1
    GYRO = 1 << 2
    ANGLE = 1 << 3
    MAG = 1 << 4
    PORT = 1 << 5
    PRESSURE = 1 << 6
    GPS = 1 << 7
    VELOCITY = 1 << 8
    QUATERNION = 1 << 9
    GPS_ACCURACY = 1 << 10


#: output rate in Hz -> RATE register code
RATE_CODES: dict[float, int] = {
    0.2: 0x01, 0.5: 0x02, 1.0: 0x03, 2.0: 0x04, 5.0: 0x05, 10.0: 0x06,
    20.0: 0x07, 50.0: 0x08, 100.0: 0x09, 200.0: 0x0B,
}
#: baud rate -> BAUD register code
BAUD_CODES: dict[int, int] = {
    4800: 0x01, 9600: 0x02, 19200: 0x03, 38400: 0x04, 57600: 0x05,
    115200: 0x06, 230400: 0x07, 460800: 0x08, 921600: 0x09,
}

# 0x55 (port status) is left out on purpose: "55 55" would then look like a frame head
# in every run of 0x55 bytes, and port status is of no use for motion capture.
_SERIAL_TYPES = (PacketType.TIME, PacketType.ACC, PacketType.GYRO, PacketType.ANGLE, PacketType.MAG,
                 PacketType.PRESSURE, PacketType.GPS_POSITION, PacketType.GPS_SPEED,
                 PacketType.QUAT, PacketType.GPS_ACCURACY)
_KNOWN_SERIAL = np.zeros(256, dtype=bool)
_KNOWN_SERIAL[list(_SERIAL_TYPES)] = True
_EPOCH_2000_S = calendar.timegm((2000, 1, 1, 0, 0, 0))
# int16 value -> physical unit, per frame type (rows: type byte; columns: v0..v3)
_SCALES = np.ones((256, 4))
_SCALES[PacketType.ACC] = (ACC_SCALE_G, ACC_SCALE_G, ACC_SCALE_G, 0.01)
_SCALES[PacketType.GYRO] = (GYRO_SCALE_DPS, GYRO_SCALE_DPS, GYRO_SCALE_DPS, 1.0)
_SCALES[PacketType.ANGLE] = (ANGLE_SCALE_DEG, ANGLE_SCALE_DEG, ANGLE_SCALE_DEG, 1.0)
_SCALES[PacketType.MAG] = (1.0, 1.0, 1.0, 0.01)
_SCALES[PacketType.QUAT] = (QUAT_SCALE,) * 4


# ------------------------------------------------------------------ packet messages
# Serial frames are NamedTuples of four numbers (immutable, and built straight from rows of
# scaled values in one C-level pass, several times faster than frozen dataclasses: this
# matters at hundreds of thousands of frames per second); their vector properties give the
# same view as the BLE messages below. Integer register values are kept as floats (exact
# for int16) and exposed as ints by properties.
class WitTime(NamedTuple):
    """0x50: the sensor's real-time clock, as seconds since 2000-01-01 00:00 (its own clock)."""

    device_time_s: float


class WitAcc(NamedTuple):
    """0x51: acceleration in the sensor frame (gravity included)."""

    ax_g: float
    ay_g: float
    az_g: float
    temp_celsius: float

    @property
    def acc_g(self) -> tuple[float, float, float]:
        return (self.ax_g, self.ay_g, self.az_g)


class WitGyro(NamedTuple):
    """0x52: angular rate in the sensor frame."""

    gx_dps: float
    gy_dps: float
    gz_dps: float
    extra_raw: float  # int16 register value (voltage or temperature depending on the model)

    @property
    def gyro_dps(self) -> tuple[float, float, float]:
        return (self.gx_dps, self.gy_dps, self.gz_dps)


class WitAngle(NamedTuple):
    """0x53: roll, pitch, yaw (Z-Y-X convention, see the module docstring)."""

    roll_deg: float
    pitch_deg: float
    yaw_deg: float
    version_raw: float  # int16 register value

    @property
    def roll_pitch_yaw_deg(self) -> tuple[float, float, float]:
        return (self.roll_deg, self.pitch_deg, self.yaw_deg)

    @property
    def version(self) -> int:
        """Firmware version word (unsigned 16 bit)."""
        return int(self.version_raw) & 0xFFFF


class WitMag(NamedTuple):
    """0x54: magnetometer, raw counts."""

    mx_raw: float  # int16 counts
    my_raw: float
    mz_raw: float
    temp_celsius: float

    @property
    def mag_raw(self) -> tuple[int, int, int]:
        return (int(self.mx_raw), int(self.my_raw), int(self.mz_raw))


class WitQuat(NamedTuple):
    """0x59: orientation sensor-to-world, as sent (not renormalised)."""

    w: float
    x: float
    y: float
    z: float

    @property
    def quat_wxyz(self) -> tuple[float, float, float, float]:
        return (self.w, self.x, self.y, self.z)


class WitOther(NamedTuple):
    """A valid frame of a type this project does not use (pressure, GPS)."""

    packet_type: int
    raw: tuple[int, int, int, int]


@dataclass(frozen=True, slots=True)
class WitBleData:
    """BLE 0x55 0x61: acceleration, angular rate and angles in one packet."""

    acc_g: tuple[float, float, float]
    gyro_dps: tuple[float, float, float]
    roll_pitch_yaw_deg: tuple[float, float, float]


@dataclass(frozen=True, slots=True)
class WitRegisters:
    """BLE 0x55 0x71: eight consecutive registers starting at ``start_register``."""

    start_register: int
    values: tuple[int, ...]  # 8 signed int16

    def quat_wxyz(self) -> tuple[float, float, float, float]:
        """The quaternion, when this is the reply to reading register 0x51."""
        if self.start_register != Register.QUAT_0:
            raise DeviceError(f"register reply starts at 0x{self.start_register:02X}, not at the quaternion (0x51)")
        return tuple(v * QUAT_SCALE for v in self.values[:4])  # type: ignore[return-value]


WitPacket = Union[WitTime, WitAcc, WitGyro, WitAngle, WitMag, WitQuat, WitOther, WitBleData, WitRegisters]


# ------------------------------------------------------------------ serial parser
def checksum(frame_head: bytes) -> int:
    """SUM byte of a serial frame from its first 10 bytes."""
    return sum(frame_head[:10]) & 0xFF


def encode_frame(packet_type: int, data: bytes) -> bytes:
    """A serial frame: 0x55, TYPE, eight data bytes, SUM (for tests, simulators and firmware)."""
    if len(data) != 8:
        raise ValueError(f"a WitMotion frame carries 8 data bytes, got {len(data)}")
    head = bytes((HEADER, packet_type)) + data
    return head + bytes((checksum(head),))


def encode_values(packet_type: int, values: tuple[int, int, int, int]) -> bytes:
    """A serial frame from four int16 values (clipped to the int16 range)."""
    clipped = [max(-32768, min(32767, int(round(v)))) for v in values]
    return encode_frame(packet_type, struct.pack("<4h", *clipped))


def encode_acc(acc_g: tuple[float, float, float], temp_celsius: float = 25.0) -> bytes:
    return encode_values(PacketType.ACC, (*(a / ACC_SCALE_G for a in acc_g), temp_celsius * 100))


def encode_gyro(gyro_dps: tuple[float, float, float]) -> bytes:
    return encode_values(PacketType.GYRO, (*(g / GYRO_SCALE_DPS for g in gyro_dps), 0))


def encode_angle(roll_pitch_yaw_deg: tuple[float, float, float], version: int = 0) -> bytes:
    return encode_values(PacketType.ANGLE, (*(a / ANGLE_SCALE_DEG for a in roll_pitch_yaw_deg), version))


def encode_quat(quat_wxyz: tuple[float, float, float, float]) -> bytes:
    return encode_values(PacketType.QUAT, tuple(q / QUAT_SCALE for q in quat_wxyz))  # type: ignore[arg-type]


def encode_time(device_time_s: float) -> bytes:
    """0x50 frame for a time given as seconds since 2000-01-01 (millisecond resolution)."""
    whole = int(device_time_s)
    ms = int(round((device_time_s - whole) * 1000.0))
    if ms == 1000:
        whole, ms = whole + 1, 0
    t = time.gmtime(_EPOCH_2000_S + whole)
    data = bytes((t.tm_year - 2000, t.tm_mon, t.tm_mday, t.tm_hour, t.tm_min, t.tm_sec)) + struct.pack("<H", ms)
    return encode_frame(PacketType.TIME, data)


def _decode_time(b: bytes) -> WitTime:
    yy, mo, dd, hh, mi, ss = b[0], b[1], b[2], b[3], b[4], b[5]
    ms = b[6] | (b[7] << 8)
    try:
        secs = calendar.timegm((2000 + yy, max(mo, 1), max(dd, 1), hh, mi, ss)) - _EPOCH_2000_S
    except (ValueError, OverflowError):
        secs = 0
    return WitTime(device_time_s=float(secs) + ms / 1000.0)


# frame type -> message class built straight from the scaled row (see ``WitMotionSerialParser.feed``)
_ROW_CLASSES = np.full(256, tuple, dtype=object)
_DIRECT = np.zeros(256, dtype=bool)
for _t, _cls in ((PacketType.ACC, WitAcc), (PacketType.GYRO, WitGyro), (PacketType.ANGLE, WitAngle),
                 (PacketType.MAG, WitMag), (PacketType.QUAT, WitQuat)):
    _ROW_CLASSES[_t] = _cls
    _DIRECT[_t] = True


class WitMotionSerialParser:
    """Incremental parser of the 11-byte serial frames (see the module docstring).

    ``feed(data)`` returns the packets completed by ``data``; statistics accumulate in
    ``frames``, ``corrupt`` (known TYPE, bad SUM) and ``skipped_bytes`` (garbage)."""

    def __init__(self) -> None:
        self._pending = b""
        self.frames = 0
        self.corrupt = 0
        self.skipped_bytes = 0

    def reset(self) -> None:
        self._pending = b""

    def feed_offsets(self, data: bytes) -> tuple[bytes, np.ndarray]:
        """Scan ``data`` (after what was pending) and return (buffer, start offsets of the
        valid frames in it). The cheap core of ``feed``, also used by the benchmark."""
        buf = self._pending + bytes(data) if self._pending else bytes(data)
        n = len(buf)
        if n < SERIAL_FRAME_LEN:
            self._pending = buf
            return buf, np.empty(0, dtype=np.int64)
        arr = np.frombuffer(buf, dtype=np.uint8)
        last_head = n - SERIAL_FRAME_LEN  # last position where a whole frame fits
        heads = np.flatnonzero(arr[: last_head + 1] == HEADER)
        heads = heads[_KNOWN_SERIAL[arr[heads + 1]]]
        cums = np.zeros(n + 1, dtype=np.int64)
        np.cumsum(arr, out=cums[1:])
        sums = (cums[heads + 10] - cums[heads]) & 0xFF
        good_mask = sums == arr[heads + 10]
        good = heads[good_mask]
        bad = heads[~good_mask]
        if good.size > 1 and np.any(np.diff(good) < SERIAL_FRAME_LEN):
            good = _greedy_non_overlapping(good)
        # a bad candidate counts as corrupt unless it lies inside an accepted frame
        if bad.size:
            if good.size:
                i = np.searchsorted(good, bad, side="right") - 1
                inside = (i >= 0) & (bad < good[np.maximum(i, 0)] + SERIAL_FRAME_LEN)
                bad = bad[~inside]
            self.corrupt += int(bad.size)
        end = int(good[-1]) + SERIAL_FRAME_LEN if good.size else 0
        keep_from = max(end, last_head + 1)
        self.skipped_bytes += max(0, keep_from - good.size * SERIAL_FRAME_LEN)
        self._pending = buf[keep_from:]
        self.frames += int(good.size)
        return buf, good

    def feed(self, data: bytes) -> list[WitPacket]:
        """Parse ``data``; returns the frames completed by it, in stream order.

        The int16 values of all frames are scaled at once with a per-type scale table and
        each frame's message is built from its row; time frames are decoded one by one."""
        buf, good = self.feed_offsets(data)
        n = good.size
        if not n:
            return []
        arr = np.frombuffer(buf, dtype=np.uint8)
        frames = arr[good[:, None] + np.arange(SERIAL_FRAME_LEN)]  # N x 11
        types = frames[:, 1]
        raw = np.ascontiguousarray(frames[:, 2:10]).view("<i2")  # N x 4 int16
        scaled = raw * _SCALES[types]  # N x 4 float64, in the units of each type
        # every frame built from its row in one pass (tuple.__new__ is what NamedTuple._make uses)
        out: list = list(map(tuple.__new__, _ROW_CLASSES[types].tolist(), scaled.tolist()))
        special = np.flatnonzero(~_DIRECT[types])  # time frames and unused types: decoded one by one
        for i in special.tolist():
            t = int(types[i])
            if t == PacketType.TIME:
                out[i] = _decode_time(frames[i, 2:10].tobytes())
            else:
                out[i] = WitOther(t, tuple(raw[i].tolist()))
        return out


def _greedy_non_overlapping(starts: np.ndarray) -> np.ndarray:
    """Frames accepted left to right, each starting after the previous one ends."""
    kept = []
    next_free = -1
    for s in starts.tolist():
        if s >= next_free:
            kept.append(s)
            next_free = s + SERIAL_FRAME_LEN
    return np.asarray(kept, dtype=np.int64)


# ------------------------------------------------------------------ BLE parser
def encode_ble_data(acc_g: tuple[float, float, float], gyro_dps: tuple[float, float, float],
                    roll_pitch_yaw_deg: tuple[float, float, float]) -> bytes:
    """A 20-byte 0x55 0x61 packet (what a BWT901BLE 5.0 notifies by default)."""
    raw = [*(a / ACC_SCALE_G for a in acc_g), *(g / GYRO_SCALE_DPS for g in gyro_dps),
           *(a / ANGLE_SCALE_DEG for a in roll_pitch_yaw_deg)]
    clipped = [max(-32768, min(32767, int(round(v)))) for v in raw]
    return bytes((HEADER, PacketType.BLE_DATA)) + struct.pack("<9h", *clipped)


def encode_ble_registers(start_register: int, values: tuple[int, ...]) -> bytes:
    """A 20-byte 0x55 0x71 register reply (8 int16 values)."""
    vals = list(values) + [0] * (8 - len(values))
    return bytes((HEADER, PacketType.BLE_REGISTERS)) + struct.pack("<H8h", start_register, *vals[:8])


class WitMotionBleParser:
    """Parser of BLE 5.0 notifications (20-byte 0x55 0x61 / 0x55 0x71 packets).

    Notifications normally carry exactly one packet, but several may be concatenated or a
    packet split across notifications; bytes are buffered. There is no checksum, so a
    packet is recognised by its two header bytes (and, for register replies, a start
    register below 0x100); anything else is skipped one byte at a time and counted in
    ``skipped_bytes``."""

    def __init__(self) -> None:
        self._pending = b""
        self.packets = 0
        self.skipped_bytes = 0

    def feed(self, data: bytes) -> list[WitPacket]:
        buf = self._pending + bytes(data)
        out: list[WitPacket] = []
        i = 0
        n = len(buf)
        while i + 1 < n:
            j = buf.find(HEADER, i)
            if j < 0 or j + 1 >= n:
                self.skipped_bytes += (n if j < 0 else j) - i
                i = n if j < 0 else j
                break
            self.skipped_bytes += j - i
            i = j
            flag = buf[i + 1]
            if flag not in (PacketType.BLE_DATA, PacketType.BLE_REGISTERS):
                i += 1
                self.skipped_bytes += 1
                continue
            if i + BLE_PACKET_LEN > n:
                break
            body = buf[i + 2 : i + BLE_PACKET_LEN]
            if flag == PacketType.BLE_DATA:
                v = struct.unpack("<9h", body)
                out.append(WitBleData(
                    acc_g=(v[0] * ACC_SCALE_G, v[1] * ACC_SCALE_G, v[2] * ACC_SCALE_G),
                    gyro_dps=(v[3] * GYRO_SCALE_DPS, v[4] * GYRO_SCALE_DPS, v[5] * GYRO_SCALE_DPS),
                    roll_pitch_yaw_deg=(v[6] * ANGLE_SCALE_DEG, v[7] * ANGLE_SCALE_DEG, v[8] * ANGLE_SCALE_DEG),
                ))
            else:
                reg = body[0] | (body[1] << 8)
                if reg > 0xFF:
                    i += 1
                    self.skipped_bytes += 1
                    continue
                out.append(WitRegisters(reg, struct.unpack("<8h", body[2:])))
            self.packets += 1
            i += BLE_PACKET_LEN
        self._pending = buf[i:]
        return out


# ------------------------------------------------------------------ commands
def write_register_command(register: int, value: int) -> bytes:
    """``FF AA REG LOW HIGH``: write a 16-bit value to a register."""
    if not 0 <= register <= 0xFF or not 0 <= value <= 0xFFFF:
        raise ValueError(f"register 0x{register:X} / value {value} out of range (8-bit register, 16-bit value)")
    return bytes((0xFF, 0xAA, register, value & 0xFF, (value >> 8) & 0xFF))


def unlock_command() -> bytes:
    """Unlock configuration (``FF AA 69 88 B5``); the sensor locks again after about 10 s."""
    return bytes((0xFF, 0xAA, Register.KEY, 0x88, 0xB5))


def save_command() -> bytes:
    """Save the configuration to flash (``FF AA 00 00 00``)."""
    return write_register_command(Register.SAVE, 0x0000)


def rate_command(rate_hz: float) -> bytes:
    """Set the output rate; ``rate_hz`` must be one of ``RATE_CODES``."""
    code = RATE_CODES.get(float(rate_hz))
    if code is None:
        raise DeviceError(f"WitMotion output rate {rate_hz} Hz is not supported; choose one of {sorted(RATE_CODES)}")
    return write_register_command(Register.RATE, code)


def baud_command(baud: int) -> bytes:
    """Set the serial baud rate (takes effect after save and power cycle on most models)."""
    code = BAUD_CODES.get(int(baud))
    if code is None:
        raise DeviceError(f"WitMotion baud rate {baud} is not supported; choose one of {sorted(BAUD_CODES)}")
    return write_register_command(Register.BAUD, code)


def content_command(content: Content) -> bytes:
    """Choose the frames output each period (RSW register bits)."""
    return write_register_command(Register.RSW, int(content))


def read_register_command(register: int) -> bytes:
    """``FF AA 27 REG 00``: ask for eight registers from ``register`` (reply 0x55 0x71 on BLE)."""
    return write_register_command(Register.READ_ADDRESS, register)


def configure_commands(rate_hz: float | None = None, content: Content | None = None,
                       baud: int | None = None, save: bool = True) -> list[bytes]:
    """The command sequence to configure a sensor: unlock, the writes, save."""
    writes = []
    if content is not None:
        writes.append(content_command(content))
    if rate_hz is not None:
        writes.append(rate_command(rate_hz))
    if baud is not None:
        writes.append(baud_command(baud))
    if not writes:
        return []
    return [unlock_command(), *writes, *([save_command()] if save else [])]


def parse_command(cmd: bytes) -> tuple[int, int]:
    """(register, value) of a 5-byte ``FF AA REG LOW HIGH`` command (for tests and simulators)."""
    if len(cmd) != 5 or cmd[0] != 0xFF or cmd[1] != 0xAA:
        raise DeviceError(f"not a WitMotion command: {cmd.hex(' ')} (expected FF AA REG LOW HIGH)")
    return cmd[2], cmd[3] | (cmd[4] << 8)


# ------------------------------------------------------------------ orientation
def euler_to_quat(roll_pitch_yaw_deg: np.ndarray) -> np.ndarray:
    """... x 3 (roll, pitch, yaw in degrees, Z-Y-X) -> ... x 4 unit quaternions w x y z, w >= 0.

    ``q = q_z(yaw) * q_y(pitch) * q_x(roll)``: the sensor-to-world rotation."""
    a = np.radians(np.asarray(roll_pitch_yaw_deg, dtype=np.float64)) * 0.5
    cr, sr = np.cos(a[..., 0]), np.sin(a[..., 0])
    cp, sp = np.cos(a[..., 1]), np.sin(a[..., 1])
    cy, sy = np.cos(a[..., 2]), np.sin(a[..., 2])
    q = np.stack((
        cy * cp * cr + sy * sp * sr,
        cy * cp * sr - sy * sp * cr,
        cy * sp * cr + sy * cp * sr,
        sy * cp * cr - cy * sp * sr,
    ), axis=-1)
    return np.where(q[..., :1] < 0, -q, q)


def free_acceleration(quat_wxyz: np.ndarray, acc_sensor_g: np.ndarray) -> np.ndarray:
    """Sensor-frame acceleration with gravity (... x 3, g) -> world-frame acceleration with
    gravity removed (... x 3, m/s^2), for a Z-up world and sensor-to-world quaternions."""
    from vimcan_core.rotations import quat_rotate

    acc_world = quat_rotate(quat_wxyz, np.asarray(acc_sensor_g, dtype=np.float64) * GRAVITY_MPS2)
    return acc_world - np.array([0.0, 0.0, GRAVITY_MPS2])
