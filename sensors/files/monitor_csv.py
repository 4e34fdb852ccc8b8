"""The CSV written by ``vimcan monitor --csv`` (one row per sample), and its reader.

Columns: ``host_time_s`` (host monotonic clock), ``device_time_s`` (device clock, empty when
the device has none), ``seq`` (empty without a counter), ``quat_w..z`` (sensor-to-world),
``acc_free_x/y/z_mps2`` (world frame, gravity removed; empty when not measured),
``gyro_x/y/z_dps`` (sensor frame; empty when not measured).
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import IO, Iterable

import numpy as np

from sensors.files.recording import ImuRecording, OrientationSource, RecordingFormat, normalise_quats, parse_numeric_rows
from sensors.samples import ImuSample
from vimcan_core.errors import MotionFileError

COLUMNS = ("host_time_s", "device_time_s", "seq", "quat_w", "quat_x", "quat_y", "quat_z",
           "acc_free_x_mps2", "acc_free_y_mps2", "acc_free_z_mps2", "gyro_x_dps", "gyro_y_dps", "gyro_z_dps")


def is_monitor_csv(head: str) -> bool:
    return head.lstrip("\ufeff").startswith("host_time_s,")


class MonitorCsvWriter:
    """Appends samples to an open text file (header written on creation)."""

    def __init__(self, stream: IO[str]) -> None:
        self._writer = csv.writer(stream, lineterminator="\n")
        self._writer.writerow(COLUMNS)
        self.rows = 0

    def write(self, samples: Iterable[ImuSample]) -> None:
        def f(v: float | None, fmt: str = "{:.9f}") -> str:
            return "" if v is None else fmt.format(v)

        for s in samples:
            acc = s.acc_free_mps2 or (None, None, None)
            gyro = s.gyro_dps or (None, None, None)
            self._writer.writerow((
                f(s.host_time_s, "{:.6f}"), f(s.device_time_s, "{:.6f}"), "" if s.seq is None else str(s.seq),
                *(f(q) for q in s.quat_wxyz), *(f(a, "{:.5f}") for a in acc), *(f(g, "{:.4f}") for g in gyro),
            ))
            self.rows += 1


def read_monitor_csv(path: str | Path) -> ImuRecording:
    path = Path(path)
    lines = path.read_text(encoding="utf-8").splitlines()
    header = lines[0].split(",") if lines else []
    if tuple(header) != COLUMNS:
        raise MotionFileError(f"{path}:1: expected the vimcan monitor header {','.join(COLUMNS)}")
    rows = parse_numeric_rows([ln for ln in lines[1:] if ln.strip()], ",", len(COLUMNS), path, 2)
    if not len(rows):
        raise MotionFileError(f"{path}: no samples after the header")
    device_t = rows[:, 1]
    time_s = device_t if np.all(np.isfinite(device_t)) else rows[:, 0]
    q, norm = normalise_quats(rows[:, 3:7])
    free = rows[:, 7:10]
    gyro = rows[:, 10:13]
    seq = rows[:, 2]
    return ImuRecording(
        device_id=f"file:{path.stem}", source=path, format=RecordingFormat.MONITOR_CSV, time_s=time_s,
        quat_wxyz=q, orientation_source=OrientationSource.QUATERNION, world_frame="as recorded",
        quat_norm_recorded=norm, acc_free_mps2=None if np.all(np.isnan(free)) else free,
        gyro_dps=None if np.all(np.isnan(gyro)) else gyro,
        packet_counter=seq.astype(np.int64) if np.all(np.isfinite(seq)) else None,
        metadata={"time_source": "device" if time_s is device_t else "host"},
    )
