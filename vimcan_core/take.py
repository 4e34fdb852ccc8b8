"""The take format: one folder per recording.

::

    TAKE/
      take.json            metadata (``TakeMeta``), rewritten atomically while recording
      poses.csv            one row per pose frame (``POSE_COLUMNS``)
      inputs.csv           one row per pose frame: the model inputs as paired live (``INPUT_COLUMNS``)
      raw.csv              one row per sensor sample or sensor event (``RAW_COLUMNS``)
      take.bvh             the H36M-17 BVH (``vimcan_core.bvh.writer``), written at the end
      poses_resolved.csv   (after ``vimcan export --resolve``) poses from the bidirectional model
      take_resolved.bvh    its BVH

Every CSV is plain comma-separated text with one header line, numbers in ``repr``-like
precision, ``nan`` for a missing number, ``0``/``1`` for flags and an empty cell for a
missing text: ``pandas.read_csv`` and ``numpy.genfromtxt(path, delimiter=",", names=True,
dtype=None, encoding="utf-8")`` load them as they are (``numpy.loadtxt(path, delimiter=",",
skiprows=1)`` too for the all-numeric poses.csv and inputs.csv). Columns are documented in
``docs/take-format.md``.

Times: ``time_s`` in every file is host time (``time.monotonic()``) minus the take's origin
``TakeMeta.host_time_origin_s``, so rows of all files line up. Positions are metres in the
world frame (Y up, the axes of the BVH).

Recovery: a take whose recorder was killed has ``status = "recording"`` in its take.json and
possibly a torn last line in each CSV. ``recover_take`` drops the torn lines, counts what
is there, marks the take ``recovered`` and writes its BVH.
"""

from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import asdict, dataclass, field, fields, replace
from datetime import datetime, timezone
from enum import Enum
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from vimcan_core import __version__
from vimcan_core.body_scale import check_height_m, scale_to_height
from vimcan_core.bvh.writer import BvhClip, BvhWriterConfig, writable_frames, write_bvh
from vimcan_core.errors import TakeError, VimcanError
from vimcan_core.skeleton import IMU_SITE_NAMES, JOINT_NAMES, NUM_IMUS, NUM_JOINTS

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1

TAKE_JSON = "take.json"
POSES_CSV = "poses.csv"
INPUTS_CSV = "inputs.csv"
RAW_CSV = "raw.csv"
TAKE_BVH = "take.bvh"
RESOLVED_POSES_CSV = "poses_resolved.csv"
RESOLVED_BVH = "take_resolved.bvh"

#: poses.csv: time, 17 joints root-relative (m, world axes), frame index, root position (m, NaN if
#: unknown), which inputs were present, the pose's confidence, bone orientations at the IMU sites.
POSE_COLUMNS: tuple[str, ...] = (
    ("time_s",)
    + tuple(f"{j}_{a}" for j in JOINT_NAMES for a in "xyz")
    + ("frame_index", "root_x", "root_y", "root_z", "camera_present")
    + tuple(f"{s}_present" for s in IMU_SITE_NAMES)
    + ("confidence",)
    + tuple(f"{s}_q{c}" for s in IMU_SITE_NAMES for c in "wxyz")
)

_POSE_INDEX = {name: i for i, name in enumerate(POSE_COLUMNS)}

#: inputs.csv: the live pairing of camera and IMUs for each pose frame (model inputs, uncalibrated IMUs).
INPUT_COLUMNS: tuple[str, ...] = (
    ("frame_index", "time_s", "image_width_px", "image_height_px")
    + tuple(f"{j}_{c}" for j in JOINT_NAMES for c in ("u_px", "v_px", "conf"))
    + tuple(f"{s}_sensor_q{c}" for s in IMU_SITE_NAMES for c in "wxyz")
    + tuple(f"{s}_acc_{a}_mps2" for s in IMU_SITE_NAMES for a in "xyz")
)

#: raw.csv: every sample and sensor event. ``kind`` is ``imu``, ``keypoints``, ``state`` (the
#: device's state changed to ``event``) or ``lost`` (``lost`` samples never reached the file).
RAW_COLUMNS: tuple[str, ...] = (
    ("time_s", "device_time_s", "device_id", "kind", "seq", "qw", "qx", "qy", "qz")
    + ("acc_x_mps2", "acc_y_mps2", "acc_z_mps2", "gyro_x_dps", "gyro_y_dps", "gyro_z_dps")
    + ("image_width_px", "image_height_px")
    + tuple(f"{j}_{c}" for j in JOINT_NAMES for c in ("u_px", "v_px", "conf"))
    + ("event", "lost")
)


class RawKind(Enum):
    """What a raw.csv row is."""

    IMU = "imu"
    KEYPOINTS = "keypoints"
    STATE = "state"
    LOST = "lost"


class TakeStatus(Enum):
    RECORDING = "recording"  # being written, or the recorder died (recover it)
    COMPLETE = "complete"  # stopped normally
    FAILED = "failed"  # stopped by an error (disk full, folder gone); what was written is readable
    RECOVERED = "recovered"  # was interrupted, recovered with ``recover_take``


@dataclass(frozen=True)
class DeviceRecord:
    """One device of a take, with its counters at the end of the take."""

    device_id: str
    kind: str  # "imu" or "camera"
    site: str | None = None  # IMU site name (``IMU_SITE_NAMES``) or None
    samples: int = 0  # rows written to raw.csv
    lost: int = 0  # samples that never reached the file (buffer overrun)
    dropped: int = 0  # packets the device itself reported missing
    reconnects: int = 0
    gaps: int = 0  # times the device left the streaming state during the take


@dataclass(frozen=True)
class TakeMeta:
    """take.json."""

    name: str
    created_utc: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))
    status: TakeStatus = TakeStatus.RECORDING
    duration_s: float = 0.0
    frames: int = 0
    frames_missed: int = 0  # pose frames that never reached the recorder (gaps in frame_index)
    frame_rate_hz: float = 30.0  # nominal pose rate
    host_time_origin_s: float = 0.0  # time.monotonic() that every time_s counts from
    devices: tuple[DeviceRecord, ...] = ()
    calibration_profile: str | None = None  # name of the calibration profile used
    calibration: dict[str, Any] | None = None  # its arrays (``sensors.export.calibration_to_dict``), for re-solving
    model: str | None = None  # what produced the poses (PoseFrame.source)
    backend: str | None = None  # "cpu", "cuda", ...
    camera: dict[str, Any] | None = None  # vimcan_core.camera.PinholeCamera fields
    performer_height_m: float | None = None  # the poses are scaled to it (vimcan_core.body_scale); None: unknown
    software_version: str = __version__
    notes: str = ""
    error: str | None = None  # why a FAILED take stopped
    schema: int = SCHEMA_VERSION

    def to_json(self) -> str:
        d = asdict(self)
        d["status"] = self.status.value
        return json.dumps(d, indent=2, allow_nan=False)

    @staticmethod
    def from_dict(d: dict[str, Any], where: str = "take.json") -> "TakeMeta":
        try:
            known = {f.name for f in fields(TakeMeta)}
            d = {k: v for k, v in d.items() if k in known}
            d["status"] = TakeStatus(d.get("status", "recording"))
            d["devices"] = tuple(DeviceRecord(**x) for x in d.get("devices", ()))
            meta = TakeMeta(**d)
        except (TypeError, ValueError) as exc:
            raise TakeError(f"{where}: not a valid take.json ({exc})") from exc
        if meta.performer_height_m is not None:
            try:
                check_height_m(meta.performer_height_m, f"{where}: field 'performer_height_m'")
            except VimcanError as exc:
                raise TakeError(f"{exc}; correct it, or remove the field to keep the network's size") from None
        return meta


@dataclass(frozen=True)
class TakePaths:
    """Where the files of a take are."""

    folder: Path

    @property
    def meta(self) -> Path:
        return self.folder / TAKE_JSON

    @property
    def poses(self) -> Path:
        return self.folder / POSES_CSV

    @property
    def inputs(self) -> Path:
        return self.folder / INPUTS_CSV

    @property
    def raw(self) -> Path:
        return self.folder / RAW_CSV

    @property
    def bvh(self) -> Path:
        return self.folder / TAKE_BVH

    @property
    def resolved_poses(self) -> Path:
        return self.folder / RESOLVED_POSES_CSV

    @property
    def resolved_bvh(self) -> Path:
        return self.folder / RESOLVED_BVH


def new_take_folder(parent: str | Path, name: str | None = None) -> Path:
    """A fresh folder ``parent/name`` (default ``take-YYYYmmdd-HHMMSS``, ``-2``, ``-3`` ... if taken)."""
    parent = Path(parent)
    base = name or datetime.now().strftime("take-%Y%m%d-%H%M%S")
    folder, k = parent / base, 2
    while folder.exists():
        folder, k = parent / f"{base}-{k}", k + 1
    try:
        folder.mkdir(parents=True)
    except OSError as exc:
        raise TakeError(f"{folder}: cannot create the take folder ({exc.strerror or exc}); choose another --out") from exc
    return folder


# --------------------------------------------------------------------------------------
# metadata


def write_meta(folder: str | Path, meta: TakeMeta) -> None:
    """Write take.json atomically (temporary file, then rename). Raises OSError."""
    path = Path(folder) / TAKE_JSON
    tmp = path.with_name(TAKE_JSON + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(meta.to_json())
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def read_meta(folder: str | Path) -> TakeMeta:
    """Read take.json; raises TakeError naming the file if it is missing or not valid."""
    path = Path(folder) / TAKE_JSON
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise TakeError(f"{path}: no take.json; is {Path(folder)} a take folder? (`vimcan export --recover` rebuilds it)") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise TakeError(f"{path}: cannot read take.json ({exc}); `vimcan export --recover` rebuilds it") from exc
    if not isinstance(d, dict):
        raise TakeError(f"{path}: take.json must hold an object, found {type(d).__name__}")
    return TakeMeta.from_dict(d, str(path))


def performer_height_of(folder: str | Path) -> float | None:
    """The performer's height in take.json (metres), or None: none given, or no take.json (poses
    written outside a take). A take.json that cannot be read raises ``TakeError``."""
    if not (Path(folder) / TAKE_JSON).is_file():
        return None
    return read_meta(folder).performer_height_m


def at_performer_height(folder: str | Path, joints_m: np.ndarray) -> np.ndarray:
    """A take's joints (T x 17 x 3) scaled about the root so that the take's BVH skeleton stands as
    tall as the performer of take.json (unchanged without a height). The live stage scales each
    frame by a running estimate (``body_scale.LiveHeightScaler``); this makes the whole take exact."""
    height = performer_height_of(folder)
    if height is None:
        return joints_m
    scaled, factor = scale_to_height(joints_m, height)
    log.info("%s: skeleton scaled by %.3f to the performer's height of %.2f m", folder, factor, height)
    return scaled


# --------------------------------------------------------------------------------------
# writing rows


def fmt_number(x: float | int | None) -> str:
    """A number as CSV text: ``nan`` for None/NaN, 9 significant digits for floats
    (micrometres for positions under 1 km, microseconds for times under 1000 s)."""
    if x is None:
        return "nan"
    if isinstance(x, (bool, np.bool_)):
        return "1" if x else "0"
    if isinstance(x, (int, np.integer)):
        return str(int(x))
    return "%.9g" % float(x)


def csv_line(values: Iterable[Any]) -> str:
    """One CSV line (with newline) from numbers, bools, None and plain strings without commas."""
    out = []
    for v in values:
        if isinstance(v, str):
            if any(c in v for c in ',"\n\r'):
                v = '"' + v.replace('"', '""').replace("\n", " ").replace("\r", " ") + '"'
            out.append(v)
        else:
            out.append(fmt_number(v))
    return ",".join(out) + "\n"


def header_line(columns: Sequence[str]) -> str:
    return ",".join(columns) + "\n"


def pose_row(
    frame_index: int,
    time_s: float,
    joints_m: np.ndarray,
    root_m: np.ndarray | None,
    camera_present: bool,
    imu_present: np.ndarray,
    confidence: float,
    bone_quats_world: np.ndarray | None,
) -> str:
    """One poses.csv line. joints_m: 17 x 3 root-relative, world, metres; bone quats 6 x 4 or None."""
    root = np.full(3, np.nan) if root_m is None else np.asarray(root_m, dtype=np.float64)
    quats = np.full((NUM_IMUS, 4), np.nan) if bone_quats_world is None else np.asarray(bone_quats_world, dtype=np.float64)
    present = np.asarray(imu_present, dtype=bool)
    quats = np.where(present[:, None], quats, np.nan)  # a missing sensor is never filled in
    return csv_line(
        [float(time_s), *np.asarray(joints_m, dtype=np.float64).reshape(-1).tolist(), int(frame_index), *root.tolist(),
         bool(camera_present), *[bool(p) for p in present], float(confidence), *quats.reshape(-1).tolist()]
    )


def input_row(
    frame_index: int,
    time_s: float,
    image_size_px: tuple[int, int] | None,
    keypoints_px: np.ndarray | None,
    keypoint_confidence: np.ndarray | None,
    imu_quat_wxyz: np.ndarray,
    imu_acc_free_mps2: np.ndarray,
) -> str:
    """One inputs.csv line from a SyncedFrame's arrays (NaN keypoints when the camera is missing)."""
    w, h = image_size_px if image_size_px is not None else (None, None)
    kp = np.full((NUM_JOINTS, 3), np.nan)
    if keypoints_px is not None:
        kp[:, :2] = keypoints_px
        kp[:, 2] = keypoint_confidence if keypoint_confidence is not None else 1.0
    return csv_line(
        [int(frame_index), float(time_s), w, h, *kp.reshape(-1).tolist(),
         *np.asarray(imu_quat_wxyz, dtype=np.float64).reshape(-1).tolist(),
         *np.asarray(imu_acc_free_mps2, dtype=np.float64).reshape(-1).tolist()]
    )


# --------------------------------------------------------------------------------------
# reading


@dataclass(frozen=True)
class PoseTable:
    """poses.csv as arrays (T frames)."""

    frame_index: np.ndarray  # T int
    time_s: np.ndarray  # T
    joints_m: np.ndarray  # T x 17 x 3, root-relative, world, metres
    root_m: np.ndarray  # T x 3, NaN where unknown
    camera_present: np.ndarray  # T bool
    imu_present: np.ndarray  # T x 6 bool
    confidence: np.ndarray  # T
    bone_quats_world: np.ndarray  # T x 6 x 4, NaN where missing

    @property
    def num_frames(self) -> int:
        return int(self.time_s.shape[0])

    def frame_time_s(self, default: float = 1 / 30) -> float:
        """Median time between frames (``default`` for fewer than two frames)."""
        if self.num_frames < 2:
            return default
        dt = float(np.median(np.diff(self.time_s)))
        return dt if dt > 0 else default

    @staticmethod
    def from_array(a: np.ndarray) -> "PoseTable":
        """From a T x len(POSE_COLUMNS) array in column order."""
        T = a.shape[0]
        c = _POSE_INDEX
        j0 = c["pelvis_x"]
        p0 = c[f"{IMU_SITE_NAMES[0]}_present"]
        q0 = c[f"{IMU_SITE_NAMES[0]}_qw"]
        return PoseTable(
            frame_index=a[:, c["frame_index"]].astype(np.int64),
            time_s=a[:, c["time_s"]],
            joints_m=a[:, j0 : j0 + 3 * NUM_JOINTS].reshape(T, NUM_JOINTS, 3),
            root_m=a[:, c["root_x"] : c["root_z"] + 1],
            camera_present=a[:, c["camera_present"]] > 0.5,
            imu_present=a[:, p0 : p0 + NUM_IMUS] > 0.5,
            confidence=a[:, c["confidence"]],
            bone_quats_world=a[:, q0 : q0 + 4 * NUM_IMUS].reshape(T, NUM_IMUS, 4),
        )


@dataclass(frozen=True)
class InputTable:
    """inputs.csv as arrays (T frames)."""

    frame_index: np.ndarray  # T int
    time_s: np.ndarray  # T
    image_size_px: np.ndarray  # T x 2 (width, height), NaN without a camera frame
    keypoints_px: np.ndarray  # T x 17 x 2, NaN without a camera frame
    keypoint_confidence: np.ndarray  # T x 17
    sensor_quats: np.ndarray  # T x 6 x 4, sensor-to-world, NaN where missing
    acc_free_mps2: np.ndarray  # T x 6 x 3

    @staticmethod
    def from_array(a: np.ndarray) -> "InputTable":
        T = a.shape[0]
        k0, q0 = 4, 4 + 3 * NUM_JOINTS
        kp = a[:, k0:q0].reshape(T, NUM_JOINTS, 3)
        return InputTable(
            frame_index=a[:, 0].astype(np.int64), time_s=a[:, 1], image_size_px=a[:, 2:4],
            keypoints_px=kp[..., :2], keypoint_confidence=kp[..., 2],
            sensor_quats=a[:, q0 : q0 + 4 * NUM_IMUS].reshape(T, NUM_IMUS, 4),
            acc_free_mps2=a[:, q0 + 4 * NUM_IMUS :].reshape(T, NUM_IMUS, 3),
        )


def read_numeric_csv(path: str | Path, columns: Sequence[str]) -> tuple[np.ndarray, int]:
    """Rows of an all-numeric take CSV with the given header, as a float array.

    Lines that are torn (a crash mid-write: wrong number of cells or not numbers) are
    skipped and counted; only the file's last line may be torn in a take written by
    ``TakeRecorder``. Returns (N x C array, number of skipped lines). Raises TakeError when the
    file is missing or its header is not ``columns``."""
    path = Path(path)
    try:
        with open(path, "r", encoding="utf-8", errors="replace", newline="") as f:
            header = f.readline()
            if header.rstrip("\r\n").split(",") != list(columns):
                got = header.rstrip("\r\n").split(",")
                diff = next((i for i, (a, b) in enumerate(zip(got, columns)) if a != b), min(len(got), len(columns)))
                raise TakeError(
                    f"{path}:1: unexpected header (column {diff + 1}: expected "
                    f"{columns[diff] if diff < len(columns) else 'end of line'!r}, found {got[diff] if diff < len(got) else 'end of line'!r}); "
                    "is this a take file of another version?"
                )
            rows, skipped = [], 0
            n = len(columns)
            for lineno, line in enumerate(f, start=2):
                if not line.endswith("\n"):
                    skipped += 1  # torn last line
                    continue
                cells = line.rstrip("\r\n").split(",")
                if len(cells) != n:
                    skipped += 1
                    log.warning("%s:%d: %d cells, expected %d; line skipped", path, lineno, len(cells), n)
                    continue
                try:
                    rows.append([float(c) for c in cells])
                except ValueError:
                    skipped += 1
                    log.warning("%s:%d: not numbers; line skipped", path, lineno)
    except FileNotFoundError:
        raise TakeError(f"{path}: missing; a take folder holds {POSES_CSV}, {INPUTS_CSV}, {RAW_CSV} and {TAKE_JSON}") from None
    except OSError as exc:
        raise TakeError(f"{path}: cannot read ({exc})") from exc
    return (np.array(rows, dtype=np.float64) if rows else np.zeros((0, len(columns)))), skipped


def read_poses(path: str | Path) -> PoseTable:
    """poses.csv (or poses_resolved.csv) -> PoseTable; torn lines are skipped."""
    a, _ = read_numeric_csv(path, POSE_COLUMNS)
    return PoseTable.from_array(a)


def read_inputs(path: str | Path) -> InputTable:
    """inputs.csv -> InputTable; torn lines are skipped."""
    a, _ = read_numeric_csv(path, INPUT_COLUMNS)
    return InputTable.from_array(a)


@dataclass(frozen=True)
class RawTable:
    """raw.csv as arrays (N rows; text columns as object arrays)."""

    time_s: np.ndarray  # N
    device_time_s: np.ndarray  # N, NaN without a device clock
    device_id: np.ndarray  # N str
    kind: np.ndarray  # N str (RawKind values)
    values: np.ndarray  # N x (len(RAW_COLUMNS) - 4 - 2) numbers from "seq" to the last keypoint column
    event: np.ndarray  # N str
    lost: np.ndarray  # N

    def column(self, name: str) -> np.ndarray:
        """A numeric column by name (``qw``, ``acc_x_mps2``, ``left_wrist_u_px``, ...)."""
        i = RAW_COLUMNS.index(name)
        if i < 4 or i >= len(RAW_COLUMNS) - 2:
            raise KeyError(f"{name!r} is not a numeric raw.csv column")
        return self.values[:, i - 4]

    def rows(self, kind: RawKind, device_id: str | None = None) -> np.ndarray:
        """Boolean mask of the rows of one kind (and device)."""
        m = self.kind == kind.value
        return m if device_id is None else m & (self.device_id == device_id)


def read_raw(path: str | Path) -> RawTable:
    """raw.csv -> RawTable; torn lines are skipped."""
    path = Path(path)
    n = len(RAW_COLUMNS)
    t, dt, dev, kind, vals, ev, lost = [], [], [], [], [], [], []
    try:
        with open(path, "r", encoding="utf-8", errors="replace", newline="") as f:
            header = f.readline().rstrip("\r\n").split(",")
            if header != list(RAW_COLUMNS):
                raise TakeError(f"{path}:1: unexpected raw.csv header; is this a take of another version?")
            for lineno, line in enumerate(f, start=2):
                if not line.endswith("\n"):
                    continue
                cells = line.rstrip("\r\n").split(",")
                if len(cells) != n:
                    log.warning("%s:%d: %d cells, expected %d; line skipped", path, lineno, len(cells), n)
                    continue
                try:
                    row_vals = [float(c) if c else math.nan for c in cells[4:-2]]
                    t.append(float(cells[0]))
                    dt.append(float(cells[1]) if cells[1] else math.nan)
                    lost.append(float(cells[-1]) if cells[-1] else math.nan)
                except ValueError:
                    log.warning("%s:%d: not numbers; line skipped", path, lineno)
                    continue
                dev.append(cells[2])
                kind.append(cells[3])
                vals.append(row_vals)
                ev.append(cells[-2])
    except FileNotFoundError:
        raise TakeError(f"{path}: missing") from None
    except OSError as exc:
        raise TakeError(f"{path}: cannot read ({exc})") from exc
    return RawTable(
        time_s=np.array(t), device_time_s=np.array(dt), device_id=np.array(dev, dtype=object),
        kind=np.array(kind, dtype=object),
        values=np.array(vals, dtype=np.float64) if vals else np.zeros((0, n - 6)),
        event=np.array(ev, dtype=object), lost=np.array(lost),
    )


# --------------------------------------------------------------------------------------
# recovery


def _truncate_torn_tail(path: Path) -> int:
    """Cut a file after its last complete line; returns the bytes removed (0 if none)."""
    if not path.exists():
        return 0
    size = path.stat().st_size
    if size == 0:
        return 0
    with open(path, "rb+") as f:
        block = 1 << 16
        pos = size
        while pos > 0:
            start = max(0, pos - block)
            f.seek(start)
            chunk = f.read(pos - start)
            k = chunk.rfind(b"\n")
            if k >= 0:
                end = start + k + 1
                if end < size:
                    f.truncate(end)
                return size - end
            pos = start
        f.truncate(0)
        return size


def recover_take(folder: str | Path, write_bvh: bool = True) -> TakeMeta:
    """Make an interrupted take whole: keep every complete line, fix take.json, write the BVH.

    Works when take.json is missing or torn too (it is rebuilt from the CSVs). A take that
    completed normally is left as it is (its BVH is rewritten if missing). Returns the new
    metadata. Raises TakeError when there is no poses.csv to recover."""
    paths = TakePaths(Path(folder))
    if not paths.folder.is_dir():
        raise TakeError(f"{paths.folder}: no such take folder")
    try:
        meta = read_meta(paths.folder)
    except TakeError as exc:
        log.warning("%s; rebuilding it from the CSV files", exc)
        meta = TakeMeta(name=paths.folder.name, status=TakeStatus.RECORDING, notes="take.json rebuilt by recovery")
    removed = {p.name: _truncate_torn_tail(p) for p in (paths.poses, paths.inputs, paths.raw)}
    for name, n in removed.items():
        if n:
            log.info("%s: removed a torn last line (%d bytes)", paths.folder / name, n)
    poses = read_poses(paths.poses)
    duration = float(poses.time_s[-1] - poses.time_s[0]) if poses.num_frames else 0.0
    status = meta.status
    if status is TakeStatus.RECORDING:
        status = TakeStatus.RECOVERED
    meta = replace(meta, status=status, frames=poses.num_frames, duration_s=max(meta.duration_s if status is TakeStatus.COMPLETE else 0.0, duration))
    try:
        write_meta(paths.folder, meta)
    except OSError as exc:
        raise TakeError(f"{paths.meta}: cannot write ({exc.strerror or exc})") from exc
    if write_bvh and poses.num_frames and (status is not TakeStatus.COMPLETE or not paths.bvh.exists()):
        write_take_bvh(paths.folder, poses)
    log.info("recovered %s: %d frames, %.1f s", paths.folder, poses.num_frames, duration)
    return meta


def write_take_bvh(
    folder: str | Path,
    poses: PoseTable | None = None,
    out: str | Path | None = None,
    config: BvhWriterConfig = BvhWriterConfig(),
    frame_rate_hz: float | None = None,
) -> BvhClip:
    """Write the BVH of a take's poses (default: folder/take.bvh). Returns the ``BvhClip``.

    Frames with NaN joints are left out; the frame time is the median spacing of the frames
    unless ``frame_rate_hz`` is given; with a performer height in take.json the skeleton stands
    that tall (``at_performer_height``). Raises TakeError when there are no frames."""
    folder = Path(folder)
    poses = poses if poses is not None else read_poses(folder / POSES_CSV)
    ok = writable_frames(poses.joints_m)
    if not np.any(ok):
        raise TakeError(f"{folder / POSES_CSV}: no complete pose frame to write a BVH from")
    if not np.all(ok):
        log.warning("%s: %d of %d frames have no usable pose (NaN or collapsed bones); the BVH leaves them out",
                    folder, int((~ok).sum()), len(ok))
    frame_time = 1.0 / frame_rate_hz if frame_rate_hz else poses.frame_time_s()
    gaps = int(np.sum(np.diff(poses.time_s[ok]) > 1.5 * frame_time))
    if gaps:
        log.warning("%s: %d gaps between pose frames; the BVH has one frame per recorded pose at %.1f fps, "
                    "so it runs slightly short across them", folder, gaps, 1.0 / frame_time)
    root = poses.root_m[ok] if np.any(np.isfinite(poses.root_m[ok])) else None
    try:
        return write_bvh(
            Path(out) if out is not None else folder / TAKE_BVH, at_performer_height(folder, poses.joints_m[ok]), frame_time, root_m=root,
            bone_quats_world=poses.bone_quats_world[ok], imu_valid=poses.imu_present[ok], config=config,
        )
    except OSError as exc:
        raise TakeError(f"{out or folder / TAKE_BVH}: cannot write the BVH ({exc.strerror or exc})") from exc
