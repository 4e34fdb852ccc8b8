"""Recorded IMU files as sources: readers for vendor exports and a replaying ``Device``.

``open_recording(path)`` recognises the format: Movella DOT CSV (app or SDK header), Xsens
MT Manager text export, an x-IMU3 logger folder (or a CSV inside one), or a CSV written by
``vimcan monitor``.
"""

from __future__ import annotations

from pathlib import Path

from sensors.files.monitor_csv import MonitorCsvWriter, is_monitor_csv, read_monitor_csv
from sensors.files.movella_dot import is_dot_csv, read_dot_csv
from sensors.files.recording import ImuRecording, OrientationSource, RecordingFormat
from sensors.files.ximu3 import is_ximu3_folder, read_ximu3_folder
from sensors.files.xsens_mt import is_mt_manager_txt, read_mt_manager_txt
from vimcan_core.errors import MotionFileError

__all__ = [
    "ImuRecording", "MonitorCsvWriter", "OrientationSource", "RecordingFormat", "open_recording",
    "read_dot_csv", "read_monitor_csv", "read_mt_manager_txt", "read_ximu3_folder",
]


def open_recording(path: str | Path) -> ImuRecording:
    """Read any supported recording, choosing the reader from the content."""
    path = Path(path).expanduser()
    if not path.exists():
        raise MotionFileError(f"{path}: no such file or folder")
    if path.is_dir():
        if is_ximu3_folder(path):
            return read_ximu3_folder(path)
        raise MotionFileError(f"{path}: a folder, but not an x-IMU3 logger folder (no Quaternion.csv or other AHRS CSV)")
    if is_ximu3_folder(path.parent) and path.suffix.lower() == ".csv" and path.parent.name.endswith(")"):
        return read_ximu3_folder(path.parent)
    with open(path, encoding="utf-8", errors="replace") as f:
        head = f.read(4096)
    if is_dot_csv(head):
        return read_dot_csv(path)
    if is_mt_manager_txt(head):
        return read_mt_manager_txt(path)
    if is_monitor_csv(head):
        return read_monitor_csv(path)
    raise MotionFileError(
        f"{path}:1: unrecognised IMU recording (first line {head.splitlines()[0][:60] if head else ''!r}); "
        "supported: Movella DOT CSV, Xsens MT Manager .txt, x-IMU3 logger folder, vimcan monitor CSV")
