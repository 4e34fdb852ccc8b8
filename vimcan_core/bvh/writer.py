"""Writing H36M-17 BVH files from 3D joint positions (and IMU bone orientations).

The hierarchy is the skeleton of ``vimcan_core.skeleton`` with its snake_case joint names::

    pelvis (ROOT, 6 channels)
      right_hip > right_knee > End Site (right ankle)
      left_hip  > left_knee  > End Site (left ankle)
      spine > thorax > neck > End Site (head)
                     > left_shoulder  > left_elbow  > End Site (left wrist)
                     > right_shoulder > right_elbow > End Site (right wrist)

Twelve joints carry rotation channels; the ankles, wrists and head are End Sites. The
ROOT OFFSET is zero, so readers that add the root position to the OFFSET and readers that
replace it agree. Axes are the studio's world axes (Y up, the T-pose faces +Z, left at +X);
a zero rotation on every channel is the T-pose.

How rotations are found, per frame:

* **Swing from the bone directions.** A joint with one child (hips, knees, shoulders,
  elbows, spine, neck) turns its rest bone direction onto the recorded one.
* **Twist from the IMUs where there are IMUs.** At the forearms, lower legs, head and pelvis
  the calibrated bone orientation of the sensor (``PoseFrame.bone_quats_world``) gives the
  roll about the bone; the smallest extra rotation then puts the bone exactly on the
  recorded direction, so positions stay exact and the roll is the measured one.
* **A stable twist elsewhere.** Without a sensor, a bone takes the smallest rotation from
  its rest direction relative to its parent (no twist of its own), which is continuous
  except when the bone points exactly opposite to its rest direction; near there (and
  after an IMU drops out) the rotation is carried over from the previous frame instead
  (parallel transport), so it never flips. The spine's roll is halfway between pelvis and
  thorax.
* **Joints with several children** (pelvis: hips and spine; thorax: neck and shoulders)
  take a frame built from the primary child (spine, neck) and the left-right line (hips,
  shoulders). The OFFSETs of their children are measured in that frame (median over the
  take), so a rigid skeleton comes back exactly.

OFFSETs: bone lengths are the take's median lengths, directions those of the T-pose
(``RestPose``, the default adult unless given). Euler angles are unwrapped with a filter
that also picks, per frame, the equivalent angle triple closest to the previous frame, so
curves have no 360-degree (or 180-degree branch) jumps.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

import numpy as np

from vimcan_core.errors import InputShapeError
from vimcan_core.kinematics import forward_kinematics, local_from_global
from vimcan_core.rotations import (
    IDENTITY_QUAT,
    euler_to_matrix,
    matrix_to_euler,
    matrix_to_quat,
    quat_between,
    quat_conj,
    quat_mul,
    quat_normalize,
    quat_rotate,
    quat_slerp,
    quat_to_matrix,
)
from vimcan_core.skeleton import (
    ANKLE_ABOVE_FLOOR_M,
    IMU_JOINT,
    JOINT_NAMES,
    NUM_IMUS,
    NUM_JOINTS,
    PARENTS,
    Joint,
    RestPose,
    children,
    default_rest_pose,
)

log = logging.getLogger(__name__)


class RotationOrder(Enum):
    """Euler order of the rotation channels (``ZXY``: R = Rz Rx Ry, as most BVH files)."""

    ZXY = "ZXY"
    ZYX = "ZYX"
    XYZ = "XYZ"
    XZY = "XZY"
    YXZ = "YXZ"
    YZX = "YZX"

    @staticmethod
    def parse(text: str) -> "RotationOrder":
        try:
            return RotationOrder(text.upper())
        except ValueError:
            raise ValueError(f"rotation order must be one of {', '.join(o.value for o in RotationOrder)}, got {text!r}") from None


class LengthUnit(Enum):
    """Units of the OFFSETs and the root position."""

    METRES = "m"
    CENTIMETRES = "cm"

    @property
    def per_metre(self) -> float:
        return 1.0 if self is LengthUnit.METRES else 100.0

    @staticmethod
    def parse(text: str) -> "LengthUnit":
        t = text.lower()
        if t in ("m", "metre", "metres", "meter", "meters"):
            return LengthUnit.METRES
        if t in ("cm", "centimetre", "centimetres", "centimeter", "centimeters"):
            return LengthUnit.CENTIMETRES
        raise ValueError(f"units must be 'm' or 'cm', got {text!r}")


@dataclass(frozen=True)
class BvhWriterConfig:
    """How a BVH is written."""

    order: RotationOrder = RotationOrder.ZXY  # rotation channel order of every joint
    units: LengthUnit = LengthUnit.METRES  # offsets and root position
    imu_twist: bool = True  # roll of forearms, shins, head, pelvis from the IMUs where given
    decimals: int = 6  # digits after the point in the MOTION section
    singular_deg: float = 170.0  # beyond this swing angle, carry the rotation over from the last frame


#: joints that carry rotation channels (those with children), in hierarchy (= index) order
ROTATING_JOINTS: tuple[int, ...] = tuple(j for j in range(NUM_JOINTS) if children(j))
#: joints written as End Sites (no children): ankles, wrists, head
END_SITE_JOINTS: tuple[int, ...] = tuple(j for j in range(NUM_JOINTS) if not children(j))

#: joints with several children: (joint, primary child, left child, right child)
_FRAME_JOINTS: tuple[tuple[int, int, int, int], ...] = (
    (Joint.PELVIS, Joint.SPINE, Joint.LEFT_HIP, Joint.RIGHT_HIP),
    (Joint.THORAX, Joint.NECK, Joint.LEFT_SHOULDER, Joint.RIGHT_SHOULDER),
)
_FRAME_JOINT_IDS = tuple(f[0] for f in _FRAME_JOINTS)

#: IMU site index at each joint, or -1
_IMU_AT_JOINT: tuple[int, ...] = tuple(IMU_JOINT.index(j) if j in IMU_JOINT else -1 for j in range(NUM_JOINTS))


@dataclass(frozen=True)
class BvhClip:
    """What was (or will be) written: the rigid skeleton and its motion.

    ``offsets_m`` is a ``RestPose`` whose root offset is the fixed root position used when the
    take has no root trajectory; ``local_quats`` (T x J x 4, wxyz) and ``root_m`` (T x 3,
    world, metres) drive it with ``vimcan_core.kinematics.forward_kinematics``; ``euler_deg``
    (T x 12 x 3, in ``order``) are the channel values of the rotating joints.
    """

    rest: RestPose
    local_quats: np.ndarray  # T x J x 4
    root_m: np.ndarray  # T x 3
    euler_deg: np.ndarray  # T x len(ROTATING_JOINTS) x 3
    frame_time_s: float
    order: RotationOrder

    @property
    def num_frames(self) -> int:
        return int(self.local_quats.shape[0])

    def joints_world_m(self) -> np.ndarray:
        """T x J x 3 joint positions of the rigid skeleton, world frame, metres."""
        return forward_kinematics(self.local_quats, self.root_m, self.rest)[0]

    def joints_from_euler_m(self) -> np.ndarray:
        """T x J x 3 positions recomputed from the written Euler angles (checks the conversion)."""
        local = np.broadcast_to(IDENTITY_QUAT, self.local_quats.shape).copy()
        for k, j in enumerate(ROTATING_JOINTS):
            local[:, j] = matrix_to_quat(euler_to_matrix(np.radians(self.euler_deg[:, k]), self.order.value))
        return forward_kinematics(local, self.root_m, self.rest)[0]


# --------------------------------------------------------------------------------------
# small vector helpers (all broadcast over leading axes)


def _unit(v: np.ndarray) -> np.ndarray:
    n = np.linalg.norm(v, axis=-1, keepdims=True)
    return v / np.where(n > 1e-12, n, 1.0)


def _frame(primary: np.ndarray, lateral: np.ndarray) -> np.ndarray:
    """... x 3 x 3 rotation whose columns are (lateral, primary, lateral x primary), orthonormalised.

    y' = primary direction, x' = lateral with its primary component removed, z' = x' x y'."""
    y = _unit(primary)
    x = _unit(lateral - np.sum(lateral * y, axis=-1, keepdims=True) * y)
    z = np.cross(x, y)
    return np.stack((x, y, z), axis=-1)


#: a bone shorter than this has no direction: the frame cannot be written
MIN_BONE_M = 1e-4


def writable_frames(joints_m: np.ndarray) -> np.ndarray:
    """T bool: frames with finite joints and no zero-length bone (a BVH can be fitted to them).

    ``joints_m``: T x J x 3, metres."""
    joints_m = np.asarray(joints_m, dtype=np.float64)
    finite = np.all(np.isfinite(joints_m), axis=(1, 2))
    child = [c for c, p in enumerate(PARENTS) if p >= 0]
    lengths = np.linalg.norm(np.nan_to_num(joints_m[:, child] - joints_m[:, [PARENTS[c] for c in child]]), axis=-1)
    return finite & np.all(lengths > MIN_BONE_M, axis=-1)


def _check_joints(joints_m: np.ndarray, what: str = "joints_m") -> np.ndarray:
    joints_m = np.asarray(joints_m, dtype=np.float64)
    if joints_m.ndim != 3 or joints_m.shape[1:] != (NUM_JOINTS, 3):
        raise InputShapeError(f"{what} must be T x {NUM_JOINTS} x 3 (metres), got {joints_m.shape}")
    if joints_m.shape[0] == 0:
        raise InputShapeError(f"{what} has no frames: nothing to write")
    bad = ~writable_frames(joints_m)
    if np.any(bad):
        raise InputShapeError(
            f"{what}: frame {int(np.argmax(bad))} (and {int(bad.sum()) - 1} more) has NaN or infinite joints or a "
            f"bone shorter than {MIN_BONE_M * 1000:g} mm; drop those frames (``writable_frames``) before writing a BVH"
        )
    return joints_m


# --------------------------------------------------------------------------------------
# skeleton


def estimate_rest_pose(joints_m: np.ndarray, rest: RestPose | None = None) -> RestPose:
    """The rigid BVH skeleton of a take: median bone lengths, T-pose directions.

    Args:
        joints_m: T x J x 3 joint positions (any origin), metres.
        rest: T-pose giving the bone directions (default: ``default_rest_pose()``).

    Returns:
        A ``RestPose``: single-child bones along the T-pose direction with the take's median
        length; children of the pelvis and thorax measured in their parent's frame (median
        per axis); the root offset is the pelvis height above the floor (ankles 8 cm up).
    """
    joints_m = _check_joints(joints_m)
    rest = rest or default_rest_pose()
    ro = rest.offsets_m
    off = np.zeros((NUM_JOINTS, 3))
    for j, p in enumerate(PARENTS):
        if p < 0:
            continue
        length = float(np.median(np.linalg.norm(joints_m[:, j] - joints_m[:, p], axis=-1)))
        off[j] = _unit(ro[j]) * length
    for p, a, left, right in _FRAME_JOINTS:
        f0 = _frame(ro[a], ro[left] - ro[right])  # 3 x 3
        ft = _frame(joints_m[:, a] - joints_m[:, p], joints_m[:, left] - joints_m[:, right])  # T x 3 x 3
        for c in children(p):
            d_local = np.einsum("tba,tb->ta", ft, joints_m[:, c] - joints_m[:, p])  # T x 3, in the joint's frame
            off[c] = f0 @ np.median(d_local, axis=0)
    legs = [off[h] + off[k] + off[a] for h, k, a in ((1, 2, 3), (4, 5, 6))]
    off[Joint.PELVIS] = (0.0, ANKLE_ABOVE_FLOOR_M - min(float(v[1]) for v in legs), 0.0)
    return RestPose(off)


# --------------------------------------------------------------------------------------
# rotations


def solve_global_rotations(
    joints_m: np.ndarray,
    rest: RestPose,
    bone_quats_world: np.ndarray | None = None,
    imu_valid: np.ndarray | None = None,
    config: BvhWriterConfig = BvhWriterConfig(),
) -> np.ndarray:
    """Global rotation of every joint that has children, relative to the T-pose.

    Args:
        joints_m: T x J x 3 positions, world frame (root-relative or not), metres.
        rest: the BVH skeleton (``estimate_rest_pose``).
        bone_quats_world: T x 6 x 4 calibrated bone orientations at the IMU sites (wxyz,
            bone-to-world relative to the T-pose), NaN where missing; None for none.
        imu_valid: T x 6 bool; default: the rows of ``bone_quats_world`` that are finite.

    Returns:
        T x J x 4 global rotations (wxyz); End Site joints get their parent's rotation.
    """
    joints_m = _check_joints(joints_m)
    T = joints_m.shape[0]
    ro = rest.offsets_m
    glob = np.broadcast_to(IDENTITY_QUAT, (T, NUM_JOINTS, 4)).copy()
    use_imu = np.zeros((T, NUM_IMUS), dtype=bool)
    imu_q = np.broadcast_to(IDENTITY_QUAT, (T, NUM_IMUS, 4)).copy()
    if bone_quats_world is not None and config.imu_twist:
        bq = np.asarray(bone_quats_world, dtype=np.float64)
        if bq.shape != (T, NUM_IMUS, 4):
            raise InputShapeError(f"bone_quats_world must be {T} x {NUM_IMUS} x 4 (wxyz), got {bq.shape}")
        finite = np.all(np.isfinite(bq), axis=-1) & (np.linalg.norm(np.nan_to_num(bq), axis=-1) > 0.5)
        use_imu = finite if imu_valid is None else finite & np.asarray(imu_valid, dtype=bool).reshape(T, NUM_IMUS)
        imu_q[use_imu] = quat_normalize(bq[use_imu])
    cos_singular = np.cos(np.radians(config.singular_deg))

    # 1. joints with several children: a frame from the primary child and the left-right line
    for p, a, left, right in _FRAME_JOINTS:
        f0 = _frame(ro[a], ro[left] - ro[right])
        ft = _frame(joints_m[:, a] - joints_m[:, p], joints_m[:, left] - joints_m[:, right])
        glob[:, p] = matrix_to_quat(ft @ f0.T)
        s = _IMU_AT_JOINT[p]
        if s >= 0 and np.any(use_imu[:, s]):  # pelvis IMU: its roll about the spine, swing onto the spine
            m = use_imu[:, s]
            d = joints_m[m, a] - joints_m[m, p]
            g_imu = imu_q[m, s]
            glob[m, p] = quat_mul(quat_between(quat_rotate(g_imu, ro[a]), d), g_imu)

    # 2. joints with one child, parents first
    for j in ROTATING_JOINTS:
        if j in _FRAME_JOINT_IDS:
            continue
        (c,) = children(j)
        p = PARENTS[j]
        r = _unit(ro[c])  # rest bone direction
        d = joints_m[:, c] - joints_m[:, j]  # T x 3 recorded bone vector
        gp = glob[:, p]
        if j == Joint.SPINE:  # roll halfway between pelvis and thorax
            gref = quat_slerp(glob[:, Joint.PELVIS], glob[:, Joint.THORAX], 0.5)
            glob[:, j] = quat_mul(quat_between(quat_rotate(gref, r), d), gref)
            continue
        d_local = _unit(quat_rotate(quat_conj(gp), d))  # T x 3 in the parent's frame
        local = quat_between(np.broadcast_to(r, d_local.shape), d_local)  # smallest swing from rest
        carry = np.sum(d_local * r, axis=-1) < cos_singular  # near-opposite: swing ill-defined
        s = _IMU_AT_JOINT[j]
        imu_here = use_imu[:, s] if s >= 0 else np.zeros(T, dtype=bool)
        if np.any(imu_here):
            g_imu = imu_q[imu_here, s]
            g = quat_mul(quat_between(quat_rotate(g_imu, r), d[imu_here]), g_imu)
            local[imu_here] = quat_mul(quat_conj(gp[imu_here]), g)
            # after an IMU drops out, carry its last roll on instead of snapping to the swing
            after_valid = np.maximum.accumulate(imu_here) & ~imu_here
            carry |= after_valid
        carry &= ~imu_here
        carry[0] = False
        for t in np.flatnonzero(carry):
            prev = local[t - 1]
            local[t] = quat_mul(quat_between(quat_rotate(prev, r), d_local[t]), prev)
        glob[:, j] = quat_normalize(quat_mul(gp, local))

    for j in END_SITE_JOINTS:
        glob[:, j] = glob[:, PARENTS[j]]
    return glob


def euler_filter(angles_rad: np.ndarray, order: RotationOrder | str) -> np.ndarray:
    """Make a T x 3 Euler sequence continuous: no 2*pi jumps and no branch flips.

    Each rotation has two Tait-Bryan triples, (a, b, c) and (a + pi, pi - b, c + pi); per
    frame the one closest to the previous frame (after adding multiples of 2*pi to each
    angle) is kept. ``order`` is only checked (the identity holds for all six orders)."""
    RotationOrder.parse(order.value if isinstance(order, RotationOrder) else order)
    a = np.asarray(angles_rad, dtype=np.float64)
    if a.ndim != 2 or a.shape[1] != 3:
        raise InputShapeError(f"Euler angles must be T x 3, got {a.shape}")
    if a.shape[0] == 0:
        return a.copy()
    two_pi = 2.0 * math.pi
    rows = a.tolist()  # plain floats: this loop is sequential, and per-element numpy is slow
    out = [rows[0]]
    p0, p1, p2 = rows[0]
    for a0, a1, a2 in rows[1:]:
        best, best_dist = None, math.inf
        for c0, c1, c2 in ((a0, a1, a2), (a0 + math.pi, math.pi - a1, a2 + math.pi)):
            c0 += two_pi * round((p0 - c0) / two_pi)
            c1 += two_pi * round((p1 - c1) / two_pi)
            c2 += two_pi * round((p2 - c2) / two_pi)
            dist = (c0 - p0) ** 2 + (c1 - p1) ** 2 + (c2 - p2) ** 2
            if dist < best_dist:
                best, best_dist = (c0, c1, c2), dist
        p0, p1, p2 = best
        out.append(best)
    return np.array(out)


def build_clip(
    joints_m: np.ndarray,
    frame_time_s: float,
    root_m: np.ndarray | None = None,
    bone_quats_world: np.ndarray | None = None,
    imu_valid: np.ndarray | None = None,
    config: BvhWriterConfig = BvhWriterConfig(),
    rest: RestPose | None = None,
    skeleton: RestPose | None = None,
) -> BvhClip:
    """Fit the rigid BVH skeleton and its rotations to a take.

    Args:
        joints_m: T x J x 3 joint positions, world frame (Y up), metres; root-relative or not.
        frame_time_s: seconds between frames.
        root_m: T x 3 pelvis positions in the world (NaN rows unknown), or None: when no row
            is known the root stays fixed at the skeleton's standing height; unknown rows
            take the nearest known one.
        bone_quats_world, imu_valid: see ``solve_global_rotations``.
        rest: T-pose giving bone directions (default adult); ``skeleton``: use these
            offsets as they are instead of estimating them from the take.
    """
    joints_m = _check_joints(joints_m)
    if not (np.isfinite(frame_time_s) and frame_time_s > 0):
        raise InputShapeError(f"frame_time_s must be positive, got {frame_time_s}")
    T = joints_m.shape[0]
    skel = skeleton or estimate_rest_pose(joints_m, rest)
    rel = joints_m - joints_m[:, :1]
    glob = solve_global_rotations(rel, skel, bone_quats_world, imu_valid, config)
    local = quat_normalize(local_from_global(glob))
    root = _fill_root(root_m, T, skel)
    euler = np.empty((T, len(ROTATING_JOINTS), 3))
    for k, j in enumerate(ROTATING_JOINTS):
        e = matrix_to_euler(quat_to_matrix(local[:, j]), config.order.value)
        euler[:, k] = np.degrees(euler_filter(e, config.order))
    return BvhClip(rest=skel, local_quats=local, root_m=root, euler_deg=euler, frame_time_s=float(frame_time_s), order=config.order)


def _fill_root(root_m: np.ndarray | None, T: int, skel: RestPose) -> np.ndarray:
    fixed = np.asarray(skel.offsets_m[0], dtype=np.float64)
    if root_m is None:
        return np.broadcast_to(fixed, (T, 3)).copy()
    root = np.asarray(root_m, dtype=np.float64)
    if root.shape != (T, 3):
        raise InputShapeError(f"root_m must be {T} x 3 (metres, world), got {root.shape}")
    known = np.all(np.isfinite(root), axis=-1)
    if not np.any(known):
        return np.broadcast_to(fixed, (T, 3)).copy()
    idx = np.flatnonzero(known)
    # nearest known row for every unknown one
    pos = np.searchsorted(idx, np.arange(T))
    lo = idx[np.clip(pos - 1, 0, len(idx) - 1)]
    hi = idx[np.clip(pos, 0, len(idx) - 1)]
    nearest = np.where(np.abs(np.arange(T) - lo) <= np.abs(hi - np.arange(T)), lo, hi)
    return root[nearest]


# --------------------------------------------------------------------------------------
# text


def bvh_text(clip: BvhClip, units: LengthUnit = LengthUnit.METRES, decimals: int = 6) -> str:
    """The BVH file of a clip, as text (LF line endings)."""
    scale = units.per_metre
    order = clip.order.value
    rot_channels = " ".join(f"{a}rotation" for a in order)
    off = clip.rest.offsets_m * scale
    lines = ["HIERARCHY"]

    def fmt(v: np.ndarray) -> str:
        return " ".join(f"{x:.6f}" for x in v)

    def emit(j: int, depth: int) -> None:
        ind = "\t" * depth
        if PARENTS[j] < 0:
            lines.append(f"ROOT {JOINT_NAMES[j]}")
            lines.append("{")
            lines.append(f"\tOFFSET {fmt(np.zeros(3))}")
            lines.append(f"\tCHANNELS 6 Xposition Yposition Zposition {rot_channels}")
        else:
            lines.append(f"{ind}JOINT {JOINT_NAMES[j]}")
            lines.append(f"{ind}{{")
            lines.append(f"{ind}\tOFFSET {fmt(off[j])}")
            lines.append(f"{ind}\tCHANNELS 3 {rot_channels}")
        for c in children(j):
            if children(c):
                emit(c, depth + 1)
            else:
                lines.append(f"{ind}\tEnd Site")
                lines.append(f"{ind}\t{{")
                lines.append(f"{ind}\t\tOFFSET {fmt(off[c])}")
                lines.append(f"{ind}\t}}")
        lines.append(f"{ind}}}")

    emit(0, 0)
    lines.append("MOTION")
    lines.append(f"Frames: {clip.num_frames}")
    lines.append(f"Frame Time: {clip.frame_time_s:.8f}")
    values = np.concatenate((clip.root_m * scale, clip.euler_deg.reshape(clip.num_frames, -1)), axis=1)  # T x (3 + 36)
    f = f"%.{decimals}f"
    body = "\n".join(" ".join(f % x for x in row) for row in values)
    return "\n".join(lines) + "\n" + body + ("\n" if body else "")


def write_bvh(
    path: str | Path,
    joints_m: np.ndarray,
    frame_time_s: float,
    root_m: np.ndarray | None = None,
    bone_quats_world: np.ndarray | None = None,
    imu_valid: np.ndarray | None = None,
    config: BvhWriterConfig = BvhWriterConfig(),
    rest: RestPose | None = None,
) -> BvhClip:
    """Fit (``build_clip``) and write a BVH file; returns the clip that was written.

    The file is written to ``path.tmp`` first and renamed, so a crash never leaves half a
    BVH behind."""
    clip = build_clip(joints_m, frame_time_s, root_m, bone_quats_world, imu_valid, config, rest)
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(bvh_text(clip, config.units, config.decimals), encoding="utf-8")
    tmp.replace(path)
    log.info("wrote %s: %d frames, %s, %s", path, clip.num_frames, config.order.value, config.units.value)
    return clip
