"""A recorded IMU stream loaded into arrays, whatever file it came from.

Every reader returns an ``ImuRecording``: the device's own clock (unwrapped, seconds), the
orientation as unit quaternions (w x y z, sensor-to-world, w >= 0, in the vendor's world
frame, named in ``world_frame``), and what else the file measured. Conversions done by
the readers: gyroscope to deg/s, accelerations to m/s^2, free acceleration (world frame,
gravity removed) computed from the sensor-frame acceleration and the orientation where the
file has no free acceleration of its own.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path

import numpy as np

from sensors.protocols.counters import count_gaps
from sensors.samples import ImuSample
from vimcan_core.errors import MotionFileError
from vimcan_core.rotations import quat_rotate

GRAVITY_MPS2 = 9.80665


class RecordingFormat(Enum):
    DOT_APP_CSV = "Movella DOT app export"
    DOT_SDK_CSV = "Movella DOT PC SDK log"
    XIMU3_FOLDER = "x-IMU3 data-logger folder"
    MT_MANAGER_TXT = "Xsens MT Manager text export"
    MONITOR_CSV = "vimcan monitor CSV"


class OrientationSource(Enum):
    QUATERNION = "quaternion"
    ROTATION_MATRIX = "rotation matrix"
    EULER = "euler angles"
    MIXED = "mixed"  # several outputs merged (x-IMU3 logs that switched AHRS message type)


@dataclass(frozen=True)
class ImuRecording:
    """One sensor's recording. N samples; arrays are NaN where a row did not measure a value."""

    device_id: str
    source: Path
    format: RecordingFormat
    time_s: np.ndarray  # N, device clock in seconds (unwrapped, increasing)
    quat_wxyz: np.ndarray  # N x 4, unit, sensor-to-world, w >= 0
    orientation_source: OrientationSource
    world_frame: str  # "ENU", "NWU", "Z-up (vendor)", ...
    quat_norm_recorded: np.ndarray | None = None  # N, norm of the quaternion as written (None if derived)
    acc_free_mps2: np.ndarray | None = None  # N x 3, world frame, gravity removed
    acc_mps2: np.ndarray | None = None  # N x 3, sensor frame, gravity included
    gyro_dps: np.ndarray | None = None  # N x 3, sensor frame
    packet_counter: np.ndarray | None = None  # N, unwrapped
    rate_hz: float | None = None  # nominal rate stated by the file
    metadata: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        n = len(self.time_s)
        if n == 0:
            raise MotionFileError(f"{self.source}: no samples")
        if self.quat_wxyz.shape != (n, 4):
            raise MotionFileError(f"{self.source}: orientation must be {n} x 4, got {self.quat_wxyz.shape}")
        if np.any(np.diff(self.time_s) <= 0):
            i = int(np.argmax(np.diff(self.time_s) <= 0))
            raise MotionFileError(f"{self.source}: time does not increase at sample {i + 1} "
                                  f"({self.time_s[i]:.6f} s then {self.time_s[i + 1]:.6f} s)")

    def __len__(self) -> int:
        return len(self.time_s)

    @property
    def duration_s(self) -> float:
        return float(self.time_s[-1] - self.time_s[0])

    @property
    def measured_rate_hz(self) -> float:
        """Samples per second from the packet counter (or the median time step without one)."""
        if self.packet_counter is not None and len(self) > 1 and self.duration_s > 0:
            return float((self.packet_counter[-1] - self.packet_counter[0]) / self.duration_s)
        if len(self) < 2:
            return 0.0
        return float(1.0 / np.median(np.diff(self.time_s)))

    @property
    def dropped(self) -> int:
        """Samples missing according to the packet counter (0 without a counter)."""
        return 0 if self.packet_counter is None else count_gaps(self.packet_counter)

    def lost_before(self) -> np.ndarray:
        """N ints: how many samples were missing just before each one (packet-counter gaps)."""
        out = np.zeros(len(self), dtype=np.int64)
        if self.packet_counter is not None and len(self) > 1:
            steps = np.diff(self.packet_counter)
            out[1:] = np.where(steps > 1, steps - 1, 0)
        return out

    def sample(self, i: int, host_time_s: float, device_id: str | None = None,
               time_offset_s: float = 0.0) -> ImuSample:
        """Sample ``i`` as the message a live device would deliver."""
        acc = None
        if self.acc_free_mps2 is not None and np.all(np.isfinite(self.acc_free_mps2[i])):
            acc = tuple(float(a) for a in self.acc_free_mps2[i])
        gyro = None
        if self.gyro_dps is not None and np.all(np.isfinite(self.gyro_dps[i])):
            gyro = tuple(float(g) for g in self.gyro_dps[i])
        q = self.quat_wxyz[i]
        return ImuSample(
            device_id=device_id or self.device_id,
            host_time_s=host_time_s,
            device_time_s=float(self.time_s[i]) + time_offset_s,
            quat_wxyz=(float(q[0]), float(q[1]), float(q[2]), float(q[3])),
            acc_free_mps2=acc,  # type: ignore[arg-type]
            gyro_dps=gyro,  # type: ignore[arg-type]
            seq=None if self.packet_counter is None else int(self.packet_counter[i]),
        )


def normalise_quats(q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """N x 4 as written -> (N x 4 unit with w >= 0, N norms as written)."""
    q = np.asarray(q, dtype=np.float64)
    norm = np.linalg.norm(q, axis=-1)
    unit = q / np.where(norm > 0, norm, 1.0)[..., None]
    unit = np.where(unit[..., :1] < 0, -unit, unit)
    return unit, norm


def free_acc_from_sensor(quat_wxyz: np.ndarray, acc_sensor_mps2: np.ndarray) -> np.ndarray:
    """Sensor-frame specific force (N x 3, m/s^2, gravity included) -> world-frame
    acceleration with gravity removed (Z-up world frames: ENU, NWU)."""
    return quat_rotate(quat_wxyz, acc_sensor_mps2) - np.array([0.0, 0.0, GRAVITY_MPS2])


def read_lines(path: Path) -> list[str]:
    """The text lines of a vendor export (UTF-8, undecodable bytes replaced); an unreadable file is a ``MotionFileError``."""
    try:
        return path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError as exc:
        raise MotionFileError(f"{path}: cannot read ({exc})") from exc


def table_column(header: list[str], rows: np.ndarray, name: str, source: Path) -> np.ndarray:
    """The column called ``name`` as floats (empty or NaN cells -> NaN)."""
    try:
        return rows[:, header.index(name)]
    except ValueError:
        raise MotionFileError(f"{source}: no column {name!r}; columns are {', '.join(header)}") from None


def parse_numeric_rows(lines: list[str], sep: str, ncols: int, source: Path, first_line_no: int) -> np.ndarray:
    """Text rows -> R x ncols float array; empty cells are NaN. Errors name the file and line."""
    out = np.full((len(lines), ncols), np.nan)
    for r, line in enumerate(lines):
        cells = line.rstrip("\r\n").split(sep)
        if len(cells) < ncols:
            cells += [""] * (ncols - len(cells))
        for c in range(ncols):
            cell = cells[c].strip()
            if cell:
                try:
                    out[r, c] = float(cell)
                except ValueError:
                    raise MotionFileError(
                        f"{source}:{first_line_no + r}: column {c + 1} is {cell!r}, expected a number") from None
    return out
