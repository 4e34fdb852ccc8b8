"""Loader for the TotalCapture dataset's own file formats (for users who have the dataset).

Files of one take (subject ``s1``, action ``acting1``), anywhere under the dataset folder:

* ``s1_acting1_Xsens.sensors``: first line ``<sensors>\\t<frames>``; then for each frame a line
  with the frame number followed by one line per sensor: ``<name> qw qx qy qz ax ay az``
  (optionally gyroscope and magnetometer after). Quaternions are **w x y z**, sensor to the
  IMUs' reference (earth) frame; accelerations are in the sensor frame, m/s^2, with gravity.
* ``s1_acting1_calib_imu_ref.txt`` / ``s1_acting1_calib_imu_bone.txt``: first line the number of
  sensors, then ``<name> qx qy qz qw`` per sensor: quaternions **x y z w** (note the order).
  ``ref`` rotates the IMU reference frame into the Vicon frame, ``bone`` relates the sensor to
  its bone: the bone's orientation in the Vicon frame is::

      q_vicon_from_bone = q_ref * q_sensor * conj(q_bone)

* ``gt_skel_gbl_pos.txt`` (in ``<subject>/<action>/`` or ``vicon/<action>/`` below the subject's
  folder): a header line of joint names, then one line per frame of ``x y z`` per joint in
  **inches**, Vicon frame (Y up).

All at 60 Hz; ``load_take`` resamples to 30 Hz (the model's rate) and maps the joints to
H36M-17. The Vicon skeleton has no head-top joint: H36M's head is extrapolated from the Neck
-> Head segment (``HEAD_EXTENSION``), so it is approximate. The standard split
(``SPLIT``): train on S1-S3 rom / walking 1, 3 / freestyle 1, 2 / acting 1, 2; test on S1-S5
walking2, freestyle3, acting3.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vimcan_core.errors import MotionFileError
from vimcan_core.retarget import RetargetedClip, resample
from vimcan_core.rotations import quat_conj, quat_mul, quat_normalize
from vimcan_core.skeleton import JOINT_NAMES

log = logging.getLogger(__name__)

INCH_M = 0.0254
TOTALCAPTURE_FPS = 60.0

#: TotalCapture sensor name of each of our six IMU sites (ImuSite order)
SENSOR_OF_SITE: tuple[str, ...] = ("L_LowArm", "R_LowArm", "L_LowLeg", "R_LowLeg", "Head", "Pelvis")

#: Vicon joint of each H36M joint (``None``: derived, see HEAD_EXTENSION)
VICON_OF_JOINT: dict[str, str | None] = {
    "pelvis": "Hips", "right_hip": "RightUpLeg", "right_knee": "RightLeg", "right_ankle": "RightFoot",
    "left_hip": "LeftUpLeg", "left_knee": "LeftLeg", "left_ankle": "LeftFoot", "spine": "Spine1",
    "thorax": "Neck", "neck": "Head", "head": None,
    "left_shoulder": "LeftArm", "left_elbow": "LeftForeArm", "left_wrist": "LeftHand",
    "right_shoulder": "RightArm", "right_elbow": "RightForeArm", "right_wrist": "RightHand",
}
#: H36M head = Head + HEAD_EXTENSION * (Head - Neck)
HEAD_EXTENSION = 0.6

TRAIN_ACTIONS = ("rom1", "rom2", "rom3", "walking1", "walking3", "freestyle1", "freestyle2", "acting1", "acting2")
TEST_ACTIONS = ("walking2", "freestyle3", "acting3")
SPLIT: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "train": (("s1", "s2", "s3"), TRAIN_ACTIONS),
    "test": (("s1", "s2", "s3", "s4", "s5"), TEST_ACTIONS),
}


def split_of(subject: str, action: str) -> str | None:
    """'train', 'test' or None (e.g. S4 rom1, not in the standard split)."""
    for name, (subjects, actions) in SPLIT.items():
        if subject.lower() in subjects and action.lower() in actions:
            return name
    return None


@dataclass(frozen=True)
class SensorRecording:
    names: tuple[str, ...]
    quats_ref_sensor: np.ndarray  # T x S x 4, wxyz, sensor to the IMU reference frame
    acc_sensor_mps2: np.ndarray  # T x S x 3, sensor frame


def read_sensors(path: str | Path) -> SensorRecording:
    """Parse a ``*_Xsens.sensors`` file."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError as exc:
        raise MotionFileError(f"{path}: cannot read ({exc})") from exc
    head = lines[0].split() if lines else []
    if len(head) != 2 or not all(h.isdigit() for h in head):
        raise MotionFileError(f"{path}:1: expected '<sensors> <frames>', found {lines[0][:40] if lines else ''!r}")
    n_s, n_f = int(head[0]), int(head[1])
    body = [l for l in lines[1:] if l.strip()]
    if len(body) < n_f * (n_s + 1):
        raise MotionFileError(
            f"{path}: header says {n_f} frames of {n_s} sensors ({n_f * (n_s + 1)} lines) but there are {len(body)} lines; "
            "the file is truncated"
        )
    names: list[str] = []
    q = np.empty((n_f, n_s, 4))
    a = np.full((n_f, n_s, 3), np.nan)
    k = 0
    for f in range(n_f):
        k += 1  # frame-number line
        for s in range(n_s):
            parts = body[k].split()
            k += 1
            if len(parts) < 5:
                raise MotionFileError(f"{path}: frame {f + 1} sensor {s}: expected '<name> qw qx qy qz ...', found {body[k - 1][:60]!r}")
            if f == 0:
                names.append(parts[0])
            elif parts[0] != names[s]:
                raise MotionFileError(f"{path}: frame {f + 1}: sensor {s} is {parts[0]!r}, expected {names[s]!r} (same order every frame)")
            vals = np.array(parts[1:], dtype=np.float64)
            q[f, s] = vals[:4]
            if len(vals) >= 7:
                a[f, s] = vals[4:7]
    return SensorRecording(tuple(names), quat_normalize(q), a)


def read_calibration(path: str | Path) -> dict[str, np.ndarray]:
    """Parse ``*_calib_imu_ref.txt`` / ``*_calib_imu_bone.txt``: name -> quaternion, converted
    from the file's x y z w to our w x y z."""
    path = Path(path)
    try:
        lines = [l for l in path.read_text(encoding="utf-8", errors="replace").splitlines() if l.strip()]
    except OSError as exc:
        raise MotionFileError(f"{path}: cannot read ({exc})") from exc
    try:
        n = int(lines[0].split()[0])
    except (IndexError, ValueError):
        raise MotionFileError(f"{path}:1: expected the number of sensors") from None
    out = {}
    for i, line in enumerate(lines[1 : n + 1], start=2):
        parts = line.split()
        if len(parts) != 5:
            raise MotionFileError(f"{path}:{i}: expected '<name> qx qy qz qw', found {line[:60]!r}")
        x, y, z, w = (float(v) for v in parts[1:])
        out[parts[0]] = quat_normalize(np.array([w, x, y, z]))
    if len(out) != n:
        raise MotionFileError(f"{path}: header says {n} sensors, found {len(out)}")
    return out


def read_gt_positions(path: str | Path) -> tuple[tuple[str, ...], np.ndarray]:
    """Parse ``gt_skel_gbl_pos.txt``: (joint names, T x J x 3 in metres)."""
    path = Path(path)
    try:
        lines = [l for l in path.read_text(encoding="utf-8", errors="replace").splitlines() if l.strip()]
    except OSError as exc:
        raise MotionFileError(f"{path}: cannot read ({exc})") from exc
    names = tuple(lines[0].split())
    rows = []
    for i, line in enumerate(lines[1:], start=2):
        parts = line.split()
        if len(parts) != 3 * len(names):
            raise MotionFileError(f"{path}:{i}: {len(parts)} values, expected {3 * len(names)} (x y z for {len(names)} joints)")
        rows.append(np.array(parts, dtype=np.float64))
    pos = np.stack(rows).reshape(len(rows), len(names), 3) * INCH_M
    if not np.all(np.isfinite(pos)):
        raise MotionFileError(f"{path}: non-finite positions")
    return names, pos


def h36m_from_vicon(names: tuple[str, ...], pos_m: np.ndarray) -> np.ndarray:
    """T x Jv x 3 Vicon joints -> T x 17 x 3 H36M joints."""
    idx = {n: i for i, n in enumerate(names)}
    missing = [v for v in VICON_OF_JOINT.values() if v and v not in idx]
    if missing:
        raise MotionFileError(f"TotalCapture positions lack joints {missing}; found {list(names)}")
    out = np.empty((pos_m.shape[0], 17, 3))
    for j, name in enumerate(JOINT_NAMES):
        v = VICON_OF_JOINT[name]
        if v is not None:
            out[:, j] = pos_m[:, idx[v]]
    head, neck = pos_m[:, idx["Head"]], pos_m[:, idx["Neck"]]
    out[:, JOINT_NAMES.index("head")] = head + HEAD_EXTENSION * (head - neck)
    return out


def bone_orientations(rec: SensorRecording, ref: dict[str, np.ndarray], bone: dict[str, np.ndarray]) -> np.ndarray:
    """T x 6 x 4 bone orientations (Vicon frame) at our six sites: q_ref * q_sensor * conj(q_bone)."""
    out = []
    for name in SENSOR_OF_SITE:
        if name not in rec.names or name not in ref or name not in bone:
            raise MotionFileError(f"TotalCapture sensor {name!r} missing (sensors: {list(rec.names)})")
        q = rec.quats_ref_sensor[:, rec.names.index(name)]
        out.append(quat_mul(quat_mul(ref[name], q), quat_conj(bone[name])))
    return quat_normalize(np.stack(out, axis=1))


@dataclass(frozen=True)
class TakeFiles:
    subject: str  # "s1"
    action: str  # "acting1"
    sensors: Path
    calib_ref: Path
    calib_bone: Path
    gt_positions: Path | None

    @property
    def split(self) -> str | None:
        return split_of(self.subject, self.action)


_SENSORS_RE = re.compile(r"^(s\d+)_([a-z]+\d+)_xsens\.sensors$", re.IGNORECASE)


def find_takes(root: str | Path) -> list[TakeFiles]:
    """Every take under ``root`` with its sensors and both calibration files (ground truth if found)."""
    root = Path(root)
    takes = []
    for sensors in sorted(root.rglob("*")):
        m = _SENSORS_RE.match(sensors.name)
        if not m:
            continue
        subj, action = m.group(1).lower(), m.group(2).lower()
        prefix = sensors.name[: -len("_Xsens.sensors")]
        ref, bone = sensors.with_name(prefix + "_calib_imu_ref.txt"), sensors.with_name(prefix + "_calib_imu_bone.txt")
        if not (ref.is_file() and bone.is_file()):
            log.warning("%s: calibration files missing next to it, skipped", sensors)
            continue
        gt = None
        for cand in root.rglob("gt_skel_gbl_pos.txt"):
            parts = [p.lower() for p in cand.parts]
            if action in parts[-2:] and any(p == subj or p.startswith(subj + "_") for p in parts):
                gt = cand
                break
        takes.append(TakeFiles(subj, action, sensors, ref, bone, gt))
    return takes


def load_take(take: TakeFiles, fps: float = 30.0) -> RetargetedClip:
    """A take as a ``RetargetedClip`` (H36M joints in metres, six bone orientations), at ``fps``."""
    if take.gt_positions is None:
        raise MotionFileError(f"{take.sensors}: no gt_skel_gbl_pos.txt found for {take.subject} {take.action}")
    rec = read_sensors(take.sensors)
    bones = bone_orientations(rec, read_calibration(take.calib_ref), read_calibration(take.calib_bone))
    names, pos = read_gt_positions(take.gt_positions)
    joints = h36m_from_vicon(names, pos)
    n = min(len(joints), len(bones))
    if abs(len(joints) - len(bones)) > 5:
        log.warning("%s %s: %d IMU frames, %d Vicon frames; using the first %d", take.subject, take.action, len(bones), len(joints), n)
    joints, bones = resample(joints[:n], bones[:n], TOTALCAPTURE_FPS, fps)
    return RetargetedClip(
        name=f"{take.subject}_{take.action}", fps=fps, joints_world_m=joints, bone_quats=bones,
        convention="totalcapture", source=str(take.sensors),
    )
