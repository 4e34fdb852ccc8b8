"""Movella (Xsens) DOT CSV exports, both header styles.

* DOT app export: ``sep=,``, then one ``Key:,Value`` line per item, a copyright line, a
  blank line, then the column header.
* PC SDK logger: the whole header on one line (``DeviceTag: ...,FirmwareVersion: ...``),
  then the column header; no ``PacketCounter`` column.

Columns used: ``PacketCounter``, ``SampleTimeFine`` (uint32 device clock, wraps),
``Quat_W..Z`` (scalar first, sensor-to-ENU) or ``Euler_X..Z`` (roll, pitch, yaw in degrees,
Z-Y-X), ``FreeAcc_*`` (ENU, gravity removed, m/s^2), ``Acc_*`` (sensor frame, m/s^2),
``Gyr_*`` (deg/s). ``SampleTimeFine`` is in microseconds in app exports; SDK logs are
reported to use 100 us ticks, so the unit is chosen from the data: the one that puts the
median step at a rate DOTs can output (at most 120 Hz, i.e. ticks of 1 us give < 240 Hz).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from sensors.files.recording import (
    ImuRecording, OrientationSource, RecordingFormat, free_acc_from_sensor, normalise_quats,
    parse_numeric_rows, read_lines, table_column,
)
from sensors.protocols.counters import unwrap_counter
from sensors.protocols.witmotion import euler_to_quat
from vimcan_core.errors import MotionFileError

TIME_MODULO = 1 << 32
COUNTER_MODULO = 1 << 16


def is_dot_csv(head: str) -> bool:
    first = head.lstrip("\ufeff").split("\n", 1)[0]
    return first.startswith("sep=") or first.startswith("DeviceTag")


def read_dot_csv(path: str | Path) -> ImuRecording:
    path = Path(path)
    lines = read_lines(path)
    meta: dict[str, str] = {}
    header_idx = None
    fmt = RecordingFormat.DOT_APP_CSV
    for i, line in enumerate(lines[:40]):
        s = line.lstrip("\ufeff").strip()
        if s.startswith("PacketCounter") or s.startswith("SampleTimeFine"):
            header_idx = i
            break
        if s.startswith("sep=") or not s or s.startswith("©") or "Xsens Technologies" in s:
            continue
        if s.startswith("DeviceTag:") and s.count(":") > 2:  # SDK: every item on one line
            fmt = RecordingFormat.DOT_SDK_CSV
            for item in s.split(","):
                if ":" in item:
                    k, v = item.split(":", 1)
                    meta[k.strip()] = v.strip()
            continue
        if ":" in s:
            k, v = s.split(",", 1) if "," in s else (s, "")
            meta[k.rstrip(": ").strip()] = v.strip()
    if header_idx is None:
        raise MotionFileError(f"{path}: no column header (a line starting with PacketCounter or SampleTimeFine) "
                              "in the first 40 lines; is this a Movella DOT CSV export?")
    header = [h.strip() for h in lines[header_idx].split(",")]
    while header and not header[-1]:
        header.pop()
    body = [ln for ln in lines[header_idx + 1:] if ln.strip()]
    rows = parse_numeric_rows(body, ",", len(header), path, header_idx + 2)

    def col(name: str) -> np.ndarray:
        return table_column(header, rows, name, path)

    ticks = unwrap_counter(col("SampleTimeFine").astype(np.int64), TIME_MODULO)
    step = float(np.median(np.diff(ticks))) if len(ticks) > 1 else 1e4
    tick_s = 1e-6 if 1.0 / (step * 1e-6) < 240.0 else 1e-4
    time_s = ticks * tick_s  # the device clock itself: synced DOTs share it
    counter = None
    if "PacketCounter" in header:
        counter = unwrap_counter(col("PacketCounter").astype(np.int64), COUNTER_MODULO)

    norm = None
    if "Quat_W" in header:
        q, norm = normalise_quats(np.column_stack([col(f"Quat_{c}") for c in "WXYZ"]))
        source = OrientationSource.QUATERNION
    elif "Euler_X" in header:
        q = euler_to_quat(np.column_stack([col(f"Euler_{c}") for c in "XYZ"]))
        source = OrientationSource.EULER
    else:
        raise MotionFileError(f"{path}: no orientation columns (Quat_W..Z or Euler_X..Z); "
                              "export with a sensor-fusion measurement mode")
    acc = np.column_stack([col(f"Acc_{c}") for c in "XYZ"]) if "Acc_X" in header else None
    if "FreeAcc_X" in header:
        free = np.column_stack([col(f"FreeAcc_{c}") for c in "XYZ"])
    elif acc is not None:
        free = free_acc_from_sensor(q, acc)
        free[~np.any(acc != 0, axis=1)] = np.nan  # rows where the sensor reported nothing yet
    else:
        free = None
    gyro = np.column_stack([col(f"Gyr_{c}") for c in "XYZ"]) if "Gyr_X" in header else None
    rate = None
    m = re.match(r"([\d.]+)\s*Hz", meta.get("OutputRate", ""))
    if m:
        rate = float(m.group(1))
    if counter is None and rate and len(time_s) > 1:
        # SDK logs have no PacketCounter: derive one from the clock so gaps still count as dropped
        derived = np.round((time_s - time_s[0]) * rate).astype(np.int64)
        if np.all(np.diff(derived) >= 1):
            counter = derived
            meta["packet_counter"] = "derived from SampleTimeFine and OutputRate"
    tag = meta.get("DeviceTag") or path.stem
    return ImuRecording(
        device_id=f"dot:{tag}", source=path, format=fmt, time_s=time_s, quat_wxyz=q,
        orientation_source=source, world_frame="ENU", quat_norm_recorded=norm,
        acc_free_mps2=free, acc_mps2=acc, gyro_dps=gyro, packet_counter=counter, rate_hz=rate,
        metadata={**meta, "sample_time_unit_s": f"{tick_s:g}"},
    )
