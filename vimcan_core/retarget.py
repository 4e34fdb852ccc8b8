"""Retargeting BVH motion onto the H36M-17 skeleton.

The H36M joints are taken from the source joints' *global positions* through a
name-mapping table (``vimcan_core/data/retarget_names.json``: Daz/Poser, CMU
MotionBuilder-friendly, Mixamo, CMU ASF names, 3ds Max Biped and Unity-Humanoid-style
names), which a user override file can extend or replace. The six IMU sites' bone
orientations are the mapped source joints' global rotations relative to the T-pose:

    q_world_from_bone(t) = R_global(t) @ R_global(T-pose)^-1

so every bone orientation is the identity in the T-pose (``vimcan_core.skeleton``). The
T-pose is the file's rest pose (all rotation channels zero) by default.

Units: the skeleton height (top of the head to the lowest ankle, in the rest pose) decides
between metres (0.3-3), centimetres (30-300) and millimetres (300-3000); pass
``RetargetConfig.unit_scale`` to override (e.g. 0.0254 for inches).

Frame rate: the motion is resampled to ``RetargetConfig.fps`` (30 Hz by default, the
webcam rate the model runs at): positions are interpolated linearly and rotations by
slerp, at times k / fps within the clip.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

import numpy as np

from vimcan_core.bvh.reader import BvhMotion, read_bvh
from vimcan_core.errors import MotionFileError
from vimcan_core.rotations import matrix_to_quat, quat_normalize, quat_slerp
from vimcan_core.skeleton import IMU_SITE_NAMES, JOINT_NAMES, Joint

log = logging.getLogger(__name__)

NAME_TABLE_PATH = Path(__file__).with_name("data") / "retarget_names.json"

#: default model frame rate (the webcam rate)
MODEL_FPS = 30.0


class TposeSource(Enum):
    """Which pose defines the identity bone orientation."""

    REST = "rest"  # all rotation channels zero (the OFFSETs); a T-pose in every convention of the table
    FIRST_FRAME = "first_frame"  # frame 0 (files whose first frame is a T-pose, e.g. CMU cgspeed)


@dataclass(frozen=True)
class RetargetConfig:
    fps: float = MODEL_FPS  # output frame rate, Hz (the webcam rate the model runs at)
    unit_scale: float | None = None  # file units to metres; None detects it from the skeleton height
    tpose: TposeSource = TposeSource.REST  # what the identity bone orientation is
    drop_tpose_frame: bool = True  # drop frame 0 when it is a T-pose added by a converter (CMU cgspeed)
    override: Path | None = None  # user JSON file with joint / imu names (same shape as a convention)


@dataclass(frozen=True)
class RetargetedClip:
    """Motion on the H36M-17 skeleton, world frame (Y up), metres."""

    name: str
    fps: float
    joints_world_m: np.ndarray  # T x 17 x 3
    bone_quats: np.ndarray  # T x 6 x 4, wxyz, world from bone, identity in the T-pose
    convention: str = ""
    source: str = ""

    @property
    def num_frames(self) -> int:
        return int(self.joints_world_m.shape[0])

    def save_npz(self, path: Path) -> None:
        np.savez(
            path, joints_world_m=self.joints_world_m.astype(np.float32), bone_quats=self.bone_quats.astype(np.float32),
            fps=self.fps, name=self.name, convention=self.convention, source=self.source,
        )

    @staticmethod
    def load_npz(path: Path) -> "RetargetedClip":
        with np.load(path) as z:
            return RetargetedClip(
                name=str(z["name"]), fps=float(z["fps"]), joints_world_m=z["joints_world_m"].astype(np.float64),
                bone_quats=z["bone_quats"].astype(np.float64), convention=str(z["convention"]), source=str(z["source"]),
            )


@dataclass(frozen=True)
class NameMapping:
    """Resolved mapping: for each H36M joint the source joint indices to average, and the
    source joint of each IMU site."""

    convention: str
    joint_sources: tuple[tuple[int, ...], ...]  # 17 tuples of source joint indices
    imu_sources: tuple[int, ...]  # 6 source joint indices
    unit_scale: float | None = None


def normalize_name(name: str) -> str:
    """Comparable form of a joint name: 'mixamorig:LeftArm' -> 'leftarm', 'Bip01 L Calf' -> 'lcalf',
    'UpperArm_L' -> 'upperarml'."""
    name = re.split(r"[:|]", name)[-1].lower()
    name = re.sub(r"[^a-z0-9]", "", name)
    return re.sub(r"^bip0*1", "", name) or name


def load_name_table(path: Path = NAME_TABLE_PATH) -> dict:
    with open(path, encoding="utf-8") as f:
        return json.load(f)["conventions"]


def _alternatives(spec: object) -> list[list[str]]:
    """A joint spec (list of alternatives; each a name or a list of names) -> list of name lists."""
    if isinstance(spec, str):
        return [[spec]]
    out = []
    for alt in spec:  # type: ignore[union-attr]
        out.append([alt] if isinstance(alt, str) else list(alt))
    return out


def _resolve(spec: object, lookup: dict[str, int]) -> tuple[int, ...] | None:
    for alt in _alternatives(spec):
        idx = [lookup.get(normalize_name(n)) for n in alt]
        if all(i is not None for i in idx):
            return tuple(idx)  # type: ignore[arg-type]
    return None


def resolve_mapping(motion: BvhMotion, override: Path | dict | None = None, table: dict | None = None) -> NameMapping:
    """Pick the naming convention that fits the file (and apply the user override).

    Raises ``MotionFileError`` listing the H36M joints that no convention could map and the
    file's joint names, with how to write an override file."""
    table = load_name_table() if table is None else table
    lookup = {normalize_name(n): i for i, n in enumerate(motion.names)}
    user: dict = {}
    if override is not None:
        if isinstance(override, dict):
            user = override
        else:
            try:
                user = json.loads(Path(override).read_text(encoding="utf-8"))
            except (OSError, json.JSONDecodeError) as exc:
                raise MotionFileError(f"{override}: cannot read the retarget override file ({exc})") from exc
    best: tuple[float, str] | None = None
    for conv_name, conv in table.items():
        merged_joints = {**conv["joints"], **user.get("joints", {})}
        n_found = sum(_resolve(merged_joints[j], lookup) is not None for j in JOINT_NAMES)
        n_sig = sum(normalize_name(s) in lookup for s in conv.get("signature", []))
        score = n_found + 0.5 * n_sig
        if best is None or score > best[0]:
            best = (score, conv_name)
    assert best is not None
    conv_name = best[1]
    conv = table[conv_name]
    joints_spec = {**conv["joints"], **user.get("joints", {})}
    imu_spec = {**conv["imu"], **user.get("imu", {})}
    sources, missing = [], []
    for j in JOINT_NAMES:
        r = _resolve(joints_spec[j], lookup)
        if r is None:
            missing.append(f"{j} (tried {joints_spec[j]})")
            r = ()
        sources.append(r)
    imus = []
    for s in IMU_SITE_NAMES:
        r = _resolve(imu_spec[s], lookup)
        if r is None or len(r) != 1:
            missing.append(f"IMU {s} (tried {imu_spec[s]})")
            imus.append(-1)
        else:
            imus.append(r[0])
    if missing:
        raise MotionFileError(
            f"{motion.path}: cannot map the skeleton to H36M-17 (closest naming convention: {conv_name}); "
            f"not found: {'; '.join(missing)}. The file's joints are: {', '.join(motion.names)}. "
            'Write an override JSON such as {"joints": {"left_elbow": "MyLeftElbow"}, "imu": {...}} and pass it '
            "with --names (see vimcan_core/data/retarget_names.json for the format)."
        )
    log.debug("%s: naming convention %s", motion.path, conv_name)
    return NameMapping(
        convention=conv_name if not user else f"{conv_name}+override",
        joint_sources=tuple(sources), imu_sources=tuple(imus), unit_scale=user.get("unit_scale"),
    )


def detect_unit_scale(height_units: float, path: str = "") -> float:
    """Metres per file unit from the skeleton height in file units."""
    if 0.3 <= height_units <= 3.0:
        return 1.0
    if 30.0 <= height_units <= 300.0:
        return 0.01
    if 300.0 < height_units <= 3000.0:
        return 0.001
    raise MotionFileError(
        f"{path}: skeleton height is {height_units:.3g} file units, which is not a human height in metres, "
        "centimetres or millimetres; pass the unit scale explicitly (e.g. unit_scale 0.0254 for inches)"
    )


def _h36m_positions(pos: np.ndarray, mapping: NameMapping) -> np.ndarray:
    """T x Jsrc x 3 -> T x 17 x 3 (averaging where the mapping lists several joints)."""
    return np.stack([pos[:, list(src)].mean(axis=1) for src in mapping.joint_sources], axis=1)


def is_tpose_frame(motion: BvhMotion, mapping: NameMapping, frame: int = 0, tol_deg: float = 20.0) -> bool:
    """True when ``frame`` has the arms horizontal and the legs vertical (a converter's T-pose)."""
    if motion.num_frames <= frame:
        return False
    p = _h36m_positions(motion.global_positions(slice(frame, frame + 1)), mapping)[0]

    def angle_to(v: np.ndarray, axis: np.ndarray) -> float:
        c = abs(float(np.dot(v, axis))) / (np.linalg.norm(v) + 1e-12)
        return float(np.degrees(np.arccos(np.clip(c, 0.0, 1.0))))

    up = np.array([0.0, 1.0, 0.0])
    arms = [p[Joint.LEFT_WRIST] - p[Joint.LEFT_SHOULDER], p[Joint.RIGHT_WRIST] - p[Joint.RIGHT_SHOULDER]]
    legs = [p[Joint.LEFT_ANKLE] - p[Joint.LEFT_HIP], p[Joint.RIGHT_ANKLE] - p[Joint.RIGHT_HIP]]
    arms_flat = all(angle_to(a, up) > 90.0 - tol_deg for a in arms)
    legs_down = all(angle_to(l, up) < tol_deg for l in legs)
    spread = float(np.linalg.norm(p[Joint.LEFT_WRIST] - p[Joint.RIGHT_WRIST]))
    shoulders = float(np.linalg.norm(p[Joint.LEFT_SHOULDER] - p[Joint.RIGHT_SHOULDER]))
    return arms_flat and legs_down and spread > 3.0 * shoulders


def resample(joints: np.ndarray, quats: np.ndarray, src_fps: float, dst_fps: float) -> tuple[np.ndarray, np.ndarray]:
    """Resample T x J x 3 positions (linear) and T x K x 4 rotations (slerp) from src_fps to dst_fps."""
    n = joints.shape[0]
    if n < 2 or abs(src_fps - dst_fps) <= 1e-3 * dst_fps:
        return joints, quats
    duration = (n - 1) / src_fps
    t_src = np.arange(int(np.floor(duration * dst_fps + 1e-3)) + 1) / dst_fps * src_fps  # fractional source frames
    i0 = np.clip(np.floor(t_src).astype(int), 0, n - 1)
    i1 = np.clip(i0 + 1, 0, n - 1)
    w = (t_src - i0)[:, None, None]
    out_j = joints[i0] * (1.0 - w) + joints[i1] * w
    out_q = quat_slerp(quats[i0], quats[i1], np.broadcast_to(w[..., 0], quats[i0].shape[:-1]))
    return out_j, out_q


def retarget(motion: BvhMotion, config: RetargetConfig = RetargetConfig(), mapping: NameMapping | None = None) -> RetargetedClip:
    """BVH motion -> H36M-17 joints (world, metres) and the six IMU bone orientations, at config.fps."""
    mapping = resolve_mapping(motion, config.override) if mapping is None else mapping
    if motion.num_frames == 0:
        raise MotionFileError(f"{motion.path}: the file has no frames")
    rest = _h36m_positions(motion.rest_positions()[None], mapping)[0]
    height = rest[Joint.HEAD, 1] - min(rest[Joint.LEFT_ANKLE, 1], rest[Joint.RIGHT_ANKLE, 1])
    scale = config.unit_scale or mapping.unit_scale or detect_unit_scale(float(height), motion.path)

    pos, rot = motion.forward_kinematics()
    imu_rot = rot[:, list(mapping.imu_sources)]  # T x 6 x 3 x 3
    if config.tpose is TposeSource.FIRST_FRAME:
        ref = imu_rot[0]
    else:
        ref = np.broadcast_to(np.eye(3), imu_rot.shape[1:])
    bone = matrix_to_quat(imu_rot @ np.swapaxes(ref, -1, -2))  # T x 6 x 4
    joints = _h36m_positions(pos, mapping) * scale  # T x 17 x 3
    joints, bone = resample(joints, bone, motion.fps, config.fps)
    if config.drop_tpose_frame and motion.num_frames > 1 and is_tpose_frame(motion, mapping):
        # drop the output frames before source frame 1 (keeps the time base of the file)
        first = int(np.ceil(config.fps / motion.fps - 1e-6)) if abs(motion.fps - config.fps) > 1e-3 * config.fps else 1
        joints, bone = joints[first:], bone[first:]
    name = Path(motion.path).name.split(".")[0]
    return RetargetedClip(
        name=name, fps=float(config.fps), joints_world_m=joints,
        bone_quats=quat_normalize(bone), convention=mapping.convention, source=motion.path,
    )


def retarget_file(path: str | Path, config: RetargetConfig = RetargetConfig()) -> RetargetedClip:
    """Read a BVH file and retarget it (see ``retarget``)."""
    return retarget(read_bvh(path), config)


