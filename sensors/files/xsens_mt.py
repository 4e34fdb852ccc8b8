"""Xsens MT Manager text exports (MTw Awinda and MTi), old and new header generations.

* Old (MT Manager 4.x): ``// Start Time``, ``// Update Rate: 100.0Hz``, ``// Filter Profile``...
* New (2019+): ``// General information:``, ``// Device information:`` (``DeviceId``,
  ``ProductCode``, firmware), ``// Device settings:``, ``// Coordinate system: ENU``; no rate.

The separator is a tab or a comma (read from the column-header line). Orientation, in order
of preference: ``Quat_q0..q3`` (scalar first), ``Mat[r][c]`` (any column order: exported
column by column), ``Roll/Pitch/Yaw`` (degrees, Z-Y-X). All are sensor-to-world (ENU).
Units: ``Acc_*`` m/s^2 sensor frame, ``Gyr_*`` rad/s (converted to deg/s). Time: from
``SampleTimeFine`` (100 us ticks) when filled in, otherwise ``PacketCounter`` (uint16,
zero-padded, wraps) divided by the update rate. Files without a rate (new header) use
``assume_rate_hz`` (100 Hz, the MTw default) and say so in ``metadata['rate_source']``.
"""

from __future__ import annotations

import logging
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
from vimcan_core.rotations import matrix_to_quat

log = logging.getLogger(__name__)

COUNTER_MODULO = 1 << 16
TIME_MODULO = 1 << 32
SAMPLE_TIME_FINE_S = 1e-4


def is_mt_manager_txt(head: str) -> bool:
    first = head.lstrip("\ufeff").split("\n", 1)[0]
    return first.startswith("//") or (first.startswith("PacketCounter") and ("Acc_" in first or "Quat_" in first))


def read_mt_manager_txt(path: str | Path, assume_rate_hz: float = 100.0) -> ImuRecording:
    path = Path(path)
    lines = read_lines(path)
    meta: dict[str, str] = {}
    header_idx = None
    for i, line in enumerate(lines):
        if line.startswith("//"):
            text = line[2:].strip()
            if ":" in text:
                k, v = text.split(":", 1)
                if v.strip():
                    meta[k.strip()] = v.strip()
            continue
        if line.strip():
            header_idx = i
            break
    if header_idx is None:
        raise MotionFileError(f"{path}: no column header after the // lines; is this an MT Manager export?")
    header_line = lines[header_idx]
    sep = "\t" if "\t" in header_line else ","
    header = [h.strip() for h in header_line.split(sep)]
    if "PacketCounter" not in header:
        raise MotionFileError(f"{path}:{header_idx + 1}: expected a PacketCounter column, got {header[:4]}...")
    body = [ln for ln in lines[header_idx + 1:] if ln.strip()]
    rows = parse_numeric_rows(body, sep, len(header), path, header_idx + 2)

    def col(name: str) -> np.ndarray:
        return table_column(header, rows, name, path)

    counter = unwrap_counter(col("PacketCounter").astype(np.int64), COUNTER_MODULO)
    rate = None
    m = re.match(r"([\d.]+)\s*Hz", meta.get("Update Rate", ""))
    if m:
        rate = float(m.group(1))
        meta["rate_source"] = "header"
    fine = col("SampleTimeFine") if "SampleTimeFine" in header else None
    if fine is not None and np.all(np.isfinite(fine)):
        ticks = unwrap_counter(fine.astype(np.int64), TIME_MODULO)
        time_s = ticks * SAMPLE_TIME_FINE_S
        meta["time_source"] = "SampleTimeFine"
    else:
        if rate is None:
            log.info("%s: no update rate in the header; assuming %.1f Hz", path.name, assume_rate_hz)
            meta["rate_source"] = "assumed"
        time_s = counter / (rate or assume_rate_hz)
        meta["time_source"] = "PacketCounter"

    norm = None
    if "Quat_q0" in header:
        q, norm = normalise_quats(np.column_stack([col(f"Quat_q{k}") for k in range(4)]))
        source = OrientationSource.QUATERNION
    elif "Mat[1][1]" in header:
        mats = np.empty((len(rows), 3, 3))
        for r in range(3):
            for c in range(3):
                mats[:, r, c] = col(f"Mat[{r + 1}][{c + 1}]")
        q = matrix_to_quat(mats)
        source = OrientationSource.ROTATION_MATRIX
    elif "Roll" in header:
        q = euler_to_quat(np.column_stack([col("Roll"), col("Pitch"), col("Yaw")]))
        source = OrientationSource.EULER
    else:
        raise MotionFileError(f"{path}: no orientation (Quat_q0..q3, Mat[r][c] or Roll/Pitch/Yaw columns); "
                              "export with an orientation output enabled")
    acc = np.column_stack([col(f"Acc_{c}") for c in "XYZ"]) if "Acc_X" in header else None
    free = free_acc_from_sensor(q, acc) if acc is not None else None
    gyro = np.degrees(np.column_stack([col(f"Gyr_{c}") for c in "XYZ"])) if "Gyr_X" in header else None
    device = meta.get("DeviceId") or path.stem.rsplit("_", 1)[-1]
    return ImuRecording(
        device_id=f"xsens:{device}", source=path, format=RecordingFormat.MT_MANAGER_TXT, time_s=time_s,
        quat_wxyz=q, orientation_source=source, world_frame=meta.get("Coordinate system", "ENU"),
        quat_norm_recorded=norm, acc_free_mps2=free, acc_mps2=acc, gyro_dps=gyro, packet_counter=counter,
        rate_hz=rate, metadata=meta,
    )
