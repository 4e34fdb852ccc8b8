"""The VIMCAN line protocol for do-it-yourself IMU boards (ESP32/Arduino + BNO08x, BNO055, ...).

No I/O: bytes in, frozen messages out. The full description, with an example sketch, is in
``resources/firmware/README.md``; in short, ASCII lines ending in ``\\n`` (``\\r\\n`` is fine)::

    Q,<sensor>,<seq>,<time_us>,<qw>,<qx>,<qy>,<qz>[,<ax>,<ay>,<az>][*<hh>]
    I,<key>,<value>                     information (board, firmware, rate_hz, ...)
    # free text                         log / boot message, ignored

* ``sensor``: a small integer naming the IMU on the board (several IMUs may share a port);
* ``seq``: packet counter 0..65535, wrapping, or empty when the board does not count;
* ``time_us``: the board's clock in microseconds (Arduino ``micros()``), uint32, wrapping;
* ``qw qx qy qz``: orientation sensor-to-world, unit quaternion, scalar first;
* ``ax ay az`` (optional): linear acceleration, gravity removed, **sensor frame**, m/s^2;
* ``*hh`` (optional): two hex digits, XOR of every byte between the first character and
  the ``*`` (the NMEA checksum). When present it must match.

A line is *corrupt* when it does not parse, has the wrong field count, a non-finite number,
a quaternion whose norm is not within 5 % of 1, a bad checksum, or is longer than
``MAX_LINE_BYTES`` without a newline. Receive state machine: bytes are appended to a line
buffer; each ``\\n`` ends a line, which is decoded; a buffer that grows past the limit is
dropped (counted corrupt) and the parser waits for the next ``\\n``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Union

MAX_LINE_BYTES = 256
SEQ_MODULO = 1 << 16
TIME_MODULO_US = 1 << 32
QUAT_NORM_TOLERANCE = 0.05


@dataclass(frozen=True, slots=True)
class LineSample:
    """One ``Q`` line."""

    sensor: int
    seq: int | None
    time_us: int
    quat_wxyz: tuple[float, float, float, float]
    acc_sensor_mps2: tuple[float, float, float] | None


@dataclass(frozen=True, slots=True)
class LineInfo:
    """One ``I`` line: a key and its value as text."""

    key: str
    value: str


LineMessage = Union[LineSample, LineInfo]


def nmea_checksum(body: str) -> str:
    """Two upper-case hex digits: XOR of the bytes of ``body``."""
    x = 0
    for b in body.encode("ascii", "replace"):
        x ^= b
    return f"{x:02X}"


def format_sample(sample: LineSample, with_checksum: bool = True, decimals: int = 5) -> bytes:
    """The line a board would send for ``sample`` (for tests, simulators and the docs)."""
    seq = "" if sample.seq is None else str(sample.seq % SEQ_MODULO)
    fields = ["Q", str(sample.sensor), seq, str(sample.time_us % TIME_MODULO_US)]
    fields += [f"{v:.{decimals}f}" for v in sample.quat_wxyz]
    if sample.acc_sensor_mps2 is not None:
        fields += [f"{v:.3f}" for v in sample.acc_sensor_mps2]
    body = ",".join(fields)
    if with_checksum:
        body += "*" + nmea_checksum(body)
    return (body + "\n").encode("ascii")


def parse_line(line: str) -> LineMessage | None:
    """Decode one line (without its newline). Returns None for comments and blank lines;
    raises ``ValueError`` (with the reason) for a corrupt line."""
    line = line.strip()
    if not line or line.startswith("#"):
        return None
    star = line.rfind("*")
    if star >= 0:
        body, given = line[:star], line[star + 1 :]
        if len(given) != 2 or given.upper() != nmea_checksum(body):
            raise ValueError(f"bad checksum *{given} (expected *{nmea_checksum(body)})")
    else:
        body = line
    fields = body.split(",")
    tag = fields[0]
    if tag == "Q":
        if len(fields) not in (8, 11):
            raise ValueError(f"a Q line has 8 or 11 fields, got {len(fields)}")
        sensor = int(fields[1])
        seq = int(fields[2]) if fields[2] else None
        time_us = int(fields[3])
        if sensor < 0 or time_us < 0 or (seq is not None and seq < 0):
            raise ValueError("sensor, seq and time_us must be non-negative integers")
        q = tuple(float(f) for f in fields[4:8])
        if not all(math.isfinite(v) for v in q):
            raise ValueError("quaternion has a non-finite component")
        norm = math.sqrt(sum(v * v for v in q))
        if abs(norm - 1.0) > QUAT_NORM_TOLERANCE:
            raise ValueError(f"quaternion norm {norm:.3f} is not 1")
        acc = None
        if len(fields) == 11:
            acc = tuple(float(f) for f in fields[8:11])
            if not all(math.isfinite(v) for v in acc):
                raise ValueError("acceleration has a non-finite component")
        return LineSample(sensor, seq, time_us, q, acc)  # type: ignore[arg-type]
    if tag == "I":
        if len(fields) < 3:
            raise ValueError(f"an I line has a key and a value, got {line!r}")
        return LineInfo(fields[1].strip(), ",".join(fields[2:]).strip())
    raise ValueError(f"unknown line type {tag[:8]!r} (expected Q, I or #)")


class LineParser:
    """Incremental parser: ``feed(bytes) -> [LineMessage]``; counts ``lines``, ``corrupt``
    and keeps the last error in ``last_error``."""

    def __init__(self, max_line_bytes: int = MAX_LINE_BYTES) -> None:
        self.max_line_bytes = max_line_bytes
        self._pending = bytearray()
        self._discarding = False  # inside an over-long line: drop until the next newline
        self.lines = 0
        self.corrupt = 0
        self.last_error: str | None = None

    def reset(self) -> None:
        self._pending.clear()
        self._discarding = False

    def feed(self, data: bytes) -> list[LineMessage]:
        out: list[LineMessage] = []
        self._pending += data
        start = 0
        buf = self._pending
        while True:
            nl = buf.find(b"\n", start)
            if nl < 0:
                break
            raw = bytes(buf[start:nl])
            start = nl + 1
            if self._discarding:
                self._discarding = False
                continue
            self._decode(raw, out)
        del buf[:start]
        if len(buf) > self.max_line_bytes:
            if not self._discarding:
                self.corrupt += 1
                self.last_error = f"line longer than {self.max_line_bytes} bytes without a newline"
            self._discarding = True
            buf.clear()
        return out

    def _decode(self, raw: bytes, out: list[LineMessage]) -> None:
        if len(raw) > self.max_line_bytes:
            self.corrupt += 1
            self.last_error = f"line longer than {self.max_line_bytes} bytes"
            return
        try:
            msg = parse_line(raw.decode("ascii"))
        except (ValueError, UnicodeDecodeError) as exc:
            self.corrupt += 1
            self.last_error = f"bad line {raw[:60]!r}: {exc}"
            return
        if msg is not None:
            self.lines += 1
            out.append(msg)
