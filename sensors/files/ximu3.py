"""x-io Technologies x-IMU3 data-logger folders (x-IMU3 GUI or ``ximu3.DataLogger``).

One folder per device, ``<name> <serial> (<interface>)``, one CSV per message type, header
on row 1, ``Timestamp (us)`` the device clock. Orientation comes from whichever AHRS
outputs were logged (``Quaternion.csv`` W X Y Z; ``RotationMatrix.csv`` XX XY XZ YX ... row
by row; ``EulerAngles.csv`` roll pitch yaw in degrees, Z-Y-X; ``LinearAcceleration.csv`` and
``EarthAcceleration.csv`` repeat the quaternion). A logger that switched AHRS message type
writes them over different time windows, so all of them are merged by timestamp.
``EarthAcceleration`` gives the free acceleration (g, Earth frame); ``LinearAcceleration``
(g, sensor frame, gravity removed) is rotated into the Earth frame. ``Inertial.csv`` gives
the gyroscope (deg/s) and accelerometer (g), interpolated to the orientation timestamps.
The Earth axes (NWU by default, ENU or NED possible) are a device setting that the logger
does not record; ``world_frame`` says so. Logged quaternions are not exactly unit (norm
about 1.00012); they are normalised and the recorded norms kept.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np

from sensors.files.recording import (
    GRAVITY_MPS2, ImuRecording, OrientationSource, RecordingFormat, normalise_quats, parse_numeric_rows,
    table_column,
)
from sensors.protocols.witmotion import euler_to_quat
from vimcan_core.errors import MotionFileError
from vimcan_core.rotations import matrix_to_quat, quat_rotate

AHRS_FILES = ("Quaternion.csv", "RotationMatrix.csv", "EulerAngles.csv", "LinearAcceleration.csv",
              "EarthAcceleration.csv")


def is_ximu3_folder(path: Path) -> bool:
    return path.is_dir() and any((path / f).is_file() for f in AHRS_FILES)


def _read_table(path: Path) -> tuple[list[str], np.ndarray]:
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    if not lines:
        raise MotionFileError(f"{path}: empty file")
    header = [h.strip() for h in lines[0].split(",")]
    rows = parse_numeric_rows([ln for ln in lines[1:] if ln.strip()], ",", len(header), path, 2)
    return header, rows


def read_ximu3_folder(folder: str | Path) -> ImuRecording:
    folder = Path(folder)
    if folder.is_file():
        folder = folder.parent
    if not is_ximu3_folder(folder):
        raise MotionFileError(f"{folder}: not an x-IMU3 logger folder (none of {', '.join(AHRS_FILES)} in it)")
    times, quats, norms, free_g, used = [], [], [], [], []
    for name in AHRS_FILES:
        path = folder / name
        if not path.is_file():
            continue
        header, rows = _read_table(path)
        if not len(rows):
            continue
        col = lambda n, h=header, r=rows, p=path: table_column(h, r, n, p)  # noqa: E731
        t = col("Timestamp (us)")
        free = np.full((len(rows), 3), np.nan)
        norm = np.full(len(rows), np.nan)
        if name == "Quaternion.csv":
            q, norm = normalise_quats(np.column_stack([col(c) for c in "WXYZ"]))
        elif name == "RotationMatrix.csv":
            m = np.column_stack([col(c) for c in ("XX", "XY", "XZ", "YX", "YY", "YZ", "ZX", "ZY", "ZZ")]).reshape(-1, 3, 3)
            q = matrix_to_quat(m)
        elif name == "EulerAngles.csv":
            q = euler_to_quat(np.column_stack([col("Roll (deg)"), col("Pitch (deg)"), col("Yaw (deg)")]))
        else:
            q, norm = normalise_quats(np.column_stack([col(f"Quaternion {c}") for c in "WXYZ"]))
            acc = np.column_stack([col(f"Acceleration {c} (g)") for c in "XYZ"])
            free = acc if name == "EarthAcceleration.csv" else quat_rotate(q, acc)
        times.append(t)
        quats.append(q)
        norms.append(norm)
        free_g.append(free)
        used.append(name[:-4])
    if not times:
        raise MotionFileError(f"{folder}: the AHRS files hold no rows")
    t = np.concatenate(times)
    order = np.argsort(t, kind="stable")
    t = t[order]
    keep = np.concatenate(([True], np.diff(t) > 0))  # a timestamp logged by two outputs is kept once
    idx = order[keep]
    q = np.concatenate(quats)[idx]
    norm = np.concatenate(norms)[idx]
    free = np.concatenate(free_g)[idx] * GRAVITY_MPS2
    t_us = t[keep]

    gyro = acc = None
    inertial = folder / "Inertial.csv"
    if inertial.is_file():
        header, rows = _read_table(inertial)
        if len(rows) > 1:
            ti = table_column(header, rows, "Timestamp (us)", inertial)
            gyro = np.column_stack([np.interp(t_us, ti, table_column(header, rows, f"Gyroscope {c} (deg/s)", inertial),
                                              left=np.nan, right=np.nan) for c in "XYZ"])
            acc = np.column_stack([np.interp(t_us, ti, table_column(header, rows, f"Accelerometer {c} (g)", inertial),
                                             left=np.nan, right=np.nan) for c in "XYZ"]) * GRAVITY_MPS2

    meta = {"outputs": ",".join(used)}
    name, serial = folder.name, ""
    m = re.match(r"(.*?)\s+([0-9A-Fa-f]{8})\s+\((.*)\)$", folder.name)
    if m:
        name, serial, meta["interface"] = m.group(1), m.group(2), m.group(3)
    cmd = folder / "Command.json"
    if cmd.is_file():
        try:
            for entry in json.loads(cmd.read_text(encoding="utf-8")):
                if "ping" in entry and isinstance(entry["ping"], dict):
                    name = entry["ping"].get("name", name)
                    serial = entry["ping"].get("sn", serial)
                elif "time" in entry:
                    meta["device_time"] = str(entry["time"])
        except (ValueError, TypeError):
            meta["command_json"] = "unreadable"
    meta["name"], meta["serial"] = name, serial
    source = OrientationSource.MIXED if len(used) > 1 else {
        "Quaternion": OrientationSource.QUATERNION, "RotationMatrix": OrientationSource.ROTATION_MATRIX,
        "EulerAngles": OrientationSource.EULER}.get(used[0], OrientationSource.QUATERNION)
    return ImuRecording(
        device_id=f"ximu3:{serial or name}", source=folder, format=RecordingFormat.XIMU3_FOLDER,
        time_s=t_us * 1e-6, quat_wxyz=q, orientation_source=source,
        world_frame="Earth frame of the device setting (x-io default NWU; not recorded)",
        quat_norm_recorded=None if np.all(np.isnan(norm)) else norm,
        acc_free_mps2=None if np.all(np.isnan(free)) else free, acc_mps2=acc, gyro_dps=gyro,
        packet_counter=None, rate_hz=None, metadata=meta,
    )
