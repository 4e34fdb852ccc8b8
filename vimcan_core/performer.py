"""A procedural performer: the demo's motion, as a pure function of time.

``Performer.pose_at(t_s)`` returns the whole skeleton at any time (a float or an array
of times): local and global bone orientations, joint positions and the pelvis position,
in the conventions of ``vimcan_core.skeleton`` (metres, world Y up, the T-pose faces +Z
with the left side at +X, a bone orientation is its global rotation relative to the
T-pose; quaternions are wxyz, see ``vimcan_core.rotations``).

The motion is a loop of ``LOOP_DURATION_S`` seconds, built from smooth (C1) envelopes,
with no data files::

    0.0 -  2.0  stand, facing the camera (+Z)
    2.0 -  3.0  turn a quarter to the left (to face +X)
    3.0 - 11.0  walk a circle of radius 0.8 m (speeding up and slowing down)
   11.0 - 12.0  turn back to face the camera
   12.0 - 16.5  raise both arms sideways, then forwards
   16.5 - 19.5  wave with the right hand
   19.5 - 22.5  squat (the pelvis drops, the feet stay on the floor)
   22.5 - 25.0  turn a full circle on the spot, stepping
   25.0 - 26.0  stand

The pelvis height is chosen at every instant so that the lower ankle stays at its T-pose
height above the floor (a smooth minimum over both ankles), so the feet never go through
the floor and the pelvis drops in the squat.

For the calibration wizard and tests the performer can be told to hold a pose instead of
the loop (``Motion.T_POSE``, ``Motion.STILL``, any given pose with ``hold_pose``) or to stand
still and move one IMU site (``Motion.MOVE_SITE``), either at construction (``script=``) or at
run time (``hold()``, ``hold_pose()``, ``resume()``). Given the performer time of the switch
(``at_s``) and a ``transition_s``, the new motion takes over smoothly (C1) from the old one: the
joints turn and the pelvis moves there instead of jumping.

``follow(PerformerPrompt...)`` does what the calibration wizard asks a person to do (stand, T-pose,
the heading pose of ``vimcan_core.calibration``, move one sensor, move freely): the demo performer
follows the wizard's prompts through it. The prompts are plain enums, so the wizard (Qt) and the
simulator (no Qt) share them without Qt leaving ``app``.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, replace
from enum import Enum

import numpy as np

from vimcan_core.rotations import (
    matrix_to_quat, quat_conj, quat_from_axis_angle, quat_mul, quat_normalize, quat_to_matrix, quat_to_rotvec, yaw_quat,
)
from vimcan_core.skeleton import IMU_CHILD_JOINT, IMU_JOINT, NUM_JOINTS, PARENTS, ImuSite, Joint, RestPose, default_rest_pose

LOOP_DURATION_S = 26.0
CIRCLE_RADIUS_M = 0.8
STRIDE_M = 1.25  # one full gait cycle (two steps)
ACC_STEP_S = 1.0 / 240.0  # finite-difference step for accelerations and angular velocities
ANKLE_SOFTMIN_M = 0.03  # smoothness of the "lower ankle on the floor" rule (the stance foot sinks <= 2 cm)

_X = np.array([1.0, 0.0, 0.0])
_Y = np.array([0.0, 1.0, 0.0])
_Z = np.array([0.0, 0.0, 1.0])


class Motion(Enum):
    """What the performer does."""

    LOOP = "loop"  # the demo loop (walk, arms, wave, squat, turn)
    T_POSE = "t_pose"  # stand motionless in the T-pose (every bone orientation = identity)
    STILL = "still"  # stand motionless, arms down
    MOVE_SITE = "move_site"  # stand still and move only the bone of one IMU site
    POSE = "pose"  # stand motionless in a given pose (local joint rotations), e.g. a calibration pose


class PerformerPrompt(Enum):
    """What the calibration wizard asks the performer to do (``Performer.follow`` does it)."""

    STAND = "stand"  # stand still, arms down, facing the camera (devices and camera pages)
    MOVE_SITE = "move_site"  # keep still but move the sensor on one site (which sensor sits where)
    T_POSE = "t_pose"  # arms straight out to the sides, facing the camera, still
    HEADING_POSE = "heading_pose"  # arms down, knees bent, lean forward, look down (``HEADING_POSE_INSTRUCTIONS``)
    MOVE_FREELY = "move_freely"  # the check page and after the wizard: move about (the demo loop)


@dataclass(frozen=True)
class PerformerScript:
    """A motion and, for ``Motion.MOVE_SITE``, which site moves; optionally the motion it takes over
    from during ``blend_s`` seconds of performer time from ``blend_start_s`` (a smooth transition)."""

    motion: Motion = Motion.LOOP
    site: ImuSite | None = None
    pose_local_wxyz: tuple[tuple[float, float, float, float], ...] | None = None  # 17 rotations, for Motion.POSE
    blend_from: "PerformerScript | None" = None  # the previous motion (None: no transition)
    blend_start_s: float = 0.0  # performer time at which the transition starts, seconds
    blend_s: float = 0.0  # length of the transition, seconds (0: the new motion at once)

    def __post_init__(self) -> None:
        if self.motion == Motion.MOVE_SITE and self.site is None:
            raise ValueError("PerformerScript(Motion.MOVE_SITE) needs site=ImuSite.<which one moves>")
        if self.motion == Motion.POSE:
            q = np.asarray(self.pose_local_wxyz, dtype=np.float64)
            if q.shape != (NUM_JOINTS, 4) or not np.all(np.isfinite(q)):
                raise ValueError(f"PerformerScript(Motion.POSE) needs pose_local_wxyz: {NUM_JOINTS} x 4 finite, got {q.shape}")
        if self.blend_s < 0 or not np.isfinite(self.blend_s):
            raise ValueError(f"PerformerScript.blend_s must be a duration >= 0 seconds, got {self.blend_s}")

    def without_transition(self) -> "PerformerScript":
        """The same motion with no transition into it."""
        return self if self.blend_from is None else replace(self, blend_from=None, blend_start_s=0.0, blend_s=0.0)

    def in_transition_at(self, t_s: float) -> bool:
        """True while the transition into this motion is still under way at performer time ``t_s``."""
        return self.blend_from is not None and t_s < self.blend_start_s + self.blend_s


@dataclass(frozen=True)
class PerformerPose:
    """The performer at one or more instants (leading axes ``...`` = the shape of ``t_s``)."""

    t_s: np.ndarray  # ..., performer time in seconds
    local_quats: np.ndarray  # ... x 17 x 4, wxyz, rotation of each joint relative to its parent (T-pose = identity)
    global_quats: np.ndarray  # ... x 17 x 4, wxyz, bone orientations: bone-to-world relative to the T-pose
    joints_world_m: np.ndarray  # ... x 17 x 3, world frame (Y up), metres
    root_world_m: np.ndarray  # ... x 3, pelvis position (= joints_world_m[..., 0, :])
    site_acc_free_mps2: np.ndarray  # ... x 6 x 3, world-frame acceleration of each IMU site (mid-bone), no gravity
    site_gyro_rps: np.ndarray  # ... x 6 x 3, angular velocity of each IMU site's bone, in the bone frame, rad/s

    @property
    def site_quats_world(self) -> np.ndarray:
        """... x 6 x 4, bone orientation (bone-to-world) at the six IMU sites, in ``ImuSite`` order."""
        return self.global_quats[..., IMU_JOINT, :]

    @property
    def site_positions_world_m(self) -> np.ndarray:
        """... x 6 x 3, the middle of each IMU site's bone, where the sensor sits."""
        return site_positions(self.joints_world_m)

    @property
    def joints_root_relative_m(self) -> np.ndarray:
        """... x 17 x 3, joints minus the pelvis."""
        return self.joints_world_m - self.joints_world_m[..., :1, :]


def site_positions(joints_world_m: np.ndarray) -> np.ndarray:
    """... x 17 x 3 joints -> ... x 6 x 3 mid-bone positions of the IMU sites."""
    return 0.5 * (joints_world_m[..., IMU_JOINT, :] + joints_world_m[..., IMU_CHILD_JOINT, :])


def _forward_kinematics_fast(local_quats: np.ndarray, root_m: np.ndarray, rest: RestPose) -> tuple[np.ndarray, np.ndarray]:
    """``vimcan_core.kinematics.forward_kinematics`` with rotation matrices (fewer, larger numpy
    calls: the simulator evaluates this continuously). ... x 17 x 4, ... x 3 ->
    (joints ... x 17 x 3, global quats ... x 17 x 4). A test checks it against the reference."""
    rot = quat_to_matrix(local_quats)  # ... x 17 x 3 x 3
    glob = np.empty_like(rot)
    pos = np.empty(local_quats.shape[:-1] + (3,))
    for j, p in enumerate(PARENTS):
        if p < 0:
            glob[..., j, :, :] = rot[..., j, :, :]
            pos[..., j, :] = root_m
        else:
            glob[..., j, :, :] = glob[..., p, :, :] @ rot[..., j, :, :]
            pos[..., j, :] = pos[..., p, :] + glob[..., p, :, :] @ rest.offsets_m[j]
    return pos, matrix_to_quat(glob)


# ------------------------------------------------------------------ envelopes

def _smoothstep(x: np.ndarray) -> np.ndarray:
    """0 below 0, 1 above 1, C1 in between (3x^2 - 2x^3)."""
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3.0 - 2.0 * x)


def _smoothstep_rate(x: np.ndarray) -> np.ndarray:
    """How fast ``_smoothstep`` moves, in [0, 1]: (4x(1-x))^2, C1 at the ends."""
    inside = (x > 0.0) & (x < 1.0)
    return np.where(inside, (4.0 * x * (1.0 - x)) ** 2, 0.0)


def _bump(t: np.ndarray, t0: float, t1: float) -> np.ndarray:
    """(1 - cos) bump: 0 outside [t0, t1], rises to 1 in the middle, C-infinity at the ends."""
    u = (t - t0) / (t1 - t0)
    inside = (u > 0.0) & (u < 1.0)
    return np.where(inside, 0.5 - 0.5 * np.cos(2.0 * np.pi * u), 0.0)


def _plateau(t: np.ndarray, t0: float, t1: float, ramp: float) -> np.ndarray:
    """0 outside [t0, t1], 1 inside after a C1 ramp of ``ramp`` seconds at each end."""
    return _smoothstep((t - t0) / ramp) * (1.0 - _smoothstep((t - (t1 - ramp)) / ramp))


def _loop_hz(hz: float) -> float:
    """The nearest frequency with a whole number of periods in the loop (keeps the loop C1)."""
    return max(1, round(hz * LOOP_DURATION_S)) / LOOP_DURATION_S


def _rot(axis: np.ndarray, angle: np.ndarray) -> np.ndarray:
    """Rotations about one fixed axis: angle ... -> ... x 4."""
    angle = np.asarray(angle, dtype=np.float64)
    return quat_from_axis_angle(np.broadcast_to(axis, angle.shape + (3,)), angle)


def _chain(*quats: np.ndarray) -> np.ndarray:
    """q1 * q2 * ... (the last one is applied first, in the bone's own frame)."""
    out = quats[0]
    for q in quats[1:]:
        out = quat_mul(out, q)
    return out


# ------------------------------------------------------------------ the performer

class Performer:
    """The demo performer. ``pose_at`` is a pure function of time (given the current script).

    Args:
        rest: the skeleton's T-pose (bone lengths).
        seed: small per-performer variations of amplitudes and phases.
        script: what to do (the loop by default); ``hold()`` changes it at run time.
    """

    def __init__(self, rest: RestPose | None = None, seed: int = 0, script: PerformerScript | Motion = Motion.LOOP) -> None:
        self.rest = rest if rest is not None else default_rest_pose()
        self.seed = seed
        rng = np.random.default_rng(seed)
        self._gain = 1.0 + 0.08 * rng.uniform(-1.0, 1.0, size=8)  # amplitude variations
        self._phase = rng.uniform(0.0, 2.0 * np.pi, size=8)  # idle-motion phases
        self._script_lock = threading.Lock()
        self._script = self._as_script(script)
        self._script_version = 0
        rest_pos = self.rest.positions()
        self._ankle_height_m = float(min(rest_pos[Joint.LEFT_ANKLE, 1], rest_pos[Joint.RIGHT_ANKLE, 1]))

    # -------------------------------------------------------------- script control
    @staticmethod
    def _as_script(script: PerformerScript | Motion) -> PerformerScript:
        return script if isinstance(script, PerformerScript) else PerformerScript(script)

    @property
    def script(self) -> PerformerScript:
        with self._script_lock:
            return self._script

    def hold(self, motion: Motion, site: ImuSite | None = None, at_s: float | None = None,
             transition_s: float = 0.0) -> None:
        """Switch to another motion now (thread-safe): ``hold(Motion.T_POSE)``,
        ``hold(Motion.STILL)``, ``hold(Motion.MOVE_SITE, ImuSite.LEFT_FOREARM)``. With ``at_s`` (the
        performer time now, seconds) and ``transition_s`` > 0 it takes over smoothly from the old motion."""
        self._switch(PerformerScript(motion, site), at_s, transition_s)

    @property
    def script_version(self) -> int:
        """Incremented by every ``hold()``/``resume()``: caches of poses key on it."""
        with self._script_lock:
            return self._script_version

    def hold_pose(self, local_quats: np.ndarray, at_s: float | None = None, transition_s: float = 0.0) -> None:
        """Stand still in a given pose: local joint rotations (17 x 4, wxyz, relative to the
        T-pose; the pelvis's is its rotation facing +Z). The feet are put on the floor.
        ``at_s`` and ``transition_s`` as for ``hold``."""
        q = quat_normalize(np.asarray(local_quats, dtype=np.float64))
        script = PerformerScript(Motion.POSE, pose_local_wxyz=tuple(tuple(float(x) for x in row) for row in q))
        self._switch(script, at_s, transition_s)

    def resume(self, at_s: float | None = None, transition_s: float = 0.0) -> None:
        """Back to the demo loop."""
        self.hold(Motion.LOOP, at_s=at_s, transition_s=transition_s)

    def follow(self, prompt: PerformerPrompt, site: ImuSite | None = None, at_s: float | None = None,
               transition_s: float = 0.0) -> None:
        """Do what the calibration wizard asks (``PerformerPrompt``); ``site`` for ``MOVE_SITE``
        (None there: stand still). ``at_s`` and ``transition_s`` as for ``hold``."""
        prompt = PerformerPrompt(prompt)
        if prompt == PerformerPrompt.HEADING_POSE:
            from vimcan_core.calibration import heading_pose_local_quats  # the pose the calibration expects

            self.hold_pose(heading_pose_local_quats(), at_s, transition_s)
            return
        motion = {PerformerPrompt.STAND: Motion.STILL, PerformerPrompt.T_POSE: Motion.T_POSE,
                  PerformerPrompt.MOVE_FREELY: Motion.LOOP, PerformerPrompt.MOVE_SITE: Motion.MOVE_SITE}[prompt]
        if motion == Motion.MOVE_SITE and site is None:
            motion = Motion.STILL
        self.hold(motion, ImuSite(site) if motion == Motion.MOVE_SITE else None, at_s, transition_s)

    def _switch(self, script: PerformerScript, at_s: float | None, transition_s: float) -> None:
        if transition_s < 0 or not np.isfinite(transition_s):
            raise ValueError(f"transition_s must be a duration >= 0 seconds, got {transition_s}")
        with self._script_lock:
            if at_s is not None and transition_s > 0:
                old = self._script
                if not old.in_transition_at(at_s):
                    old = old.without_transition()  # a finished transition: keep the chain short
                elif old.blend_from is not None and old.blend_from.in_transition_at(at_s):
                    old = replace(old, blend_from=old.blend_from.without_transition())  # at most two deep
                script = replace(script, blend_from=old, blend_start_s=float(at_s), blend_s=float(transition_s))
            self._script = script
            self._script_version += 1

    @property
    def duration_s(self) -> float:
        """Length of the loop; ``pose_at`` is periodic with this period."""
        return LOOP_DURATION_S

    @property
    def ankle_height_m(self) -> float:
        """Height of an ankle standing on the floor (the T-pose's)."""
        return self._ankle_height_m

    # -------------------------------------------------------------- evaluation
    def script_state(self) -> tuple[PerformerScript, int]:
        """The current script and its version, read together."""
        with self._script_lock:
            return self._script, self._script_version

    def pose_at(self, t_s: float | np.ndarray, script: PerformerScript | Motion | None = None) -> PerformerPose:
        """The performer at time(s) ``t_s`` (seconds, any shape ``...``), doing ``script``
        (default: the current one)."""
        t = np.asarray(t_s, dtype=np.float64)
        script = self.script if script is None else self._as_script(script)
        # evaluate t - h, t, t + h in one batch for the finite differences
        h = ACC_STEP_S
        stacked = np.stack((t - h, t, t + h), axis=0)  # 3 x ...
        local, root_xz, yaw = self._local_pose(stacked, script)
        local[..., 0, :] = quat_mul(yaw_quat(yaw), local[..., 0, :])
        root = np.zeros(stacked.shape + (3,))
        root[..., 0] = root_xz[..., 0]
        root[..., 2] = root_xz[..., 1]
        joints, glob = _forward_kinematics_fast(local, root, self.rest)
        # put the lower ankle on the floor (smooth minimum over both ankles)
        ankles_y = joints[..., (Joint.LEFT_ANKLE, Joint.RIGHT_ANKLE), 1]  # 3 x ... x 2
        k = ANKLE_SOFTMIN_M
        lowest = ankles_y.min(axis=-1)
        # log-sum-exp smooth minimum, shifted so that two level ankles stand exactly at rest height
        softmin = lowest - k * np.log(0.5 * np.sum(np.exp(-(ankles_y - lowest[..., None]) / k), axis=-1))
        lift = self._ankle_height_m - softmin  # 3 x ...
        joints[..., 1] += lift[..., None]
        sites = site_positions(joints)  # 3 x ... x 6 x 3
        acc = (sites[2] - 2.0 * sites[1] + sites[0]) / (h * h)
        site_q = glob[..., IMU_JOINT, :]  # 3 x ... x 6 x 4
        # body angular velocity: q(t)^-1 * q(t + h) = exp(w h / 2 in the bone frame), central difference
        dq = quat_mul(quat_conj(site_q[0]), site_q[2])
        gyro = quat_to_rotvec(dq) / (2.0 * h)
        return PerformerPose(
            t_s=t,
            local_quats=quat_normalize(local[1]),
            global_quats=quat_normalize(glob[1]),
            joints_world_m=joints[1],
            root_world_m=joints[1][..., 0, :].copy(),
            site_acc_free_mps2=acc,
            site_gyro_rps=gyro,
        )

    # -------------------------------------------------------------- the motion itself
    def _local_pose(self, t: np.ndarray, script: PerformerScript) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Local joint rotations (... x 17 x 4, pelvis without heading), pelvis xz (... x 2)
        and heading (..., radians about +Y) at times t (...)."""
        if script.blend_from is not None:
            return self._blended_pose(t, script)
        if script.motion == Motion.T_POSE:
            local = np.zeros(t.shape + (NUM_JOINTS, 4))
            local[..., 0] = 1.0
            return local, np.zeros(t.shape + (2,)), np.zeros(t.shape)
        if script.motion == Motion.LOOP:
            return self._loop_pose(np.mod(t, LOOP_DURATION_S))
        if script.motion == Motion.POSE:
            local = np.broadcast_to(np.asarray(script.pose_local_wxyz), t.shape + (NUM_JOINTS, 4)).copy()
            return local, np.zeros(t.shape + (2,)), np.zeros(t.shape)
        # STILL / MOVE_SITE: the standing pose at a fixed instant, plus one moving bone
        still_t = np.zeros(t.shape)
        local, _, _ = self._loop_pose(still_t, idle=False)
        if script.motion == Motion.MOVE_SITE:
            local = self._move_site(local, t, ImuSite(script.site))
        return local, np.zeros(t.shape + (2,)), np.zeros(t.shape)

    def _blended_pose(self, t: np.ndarray, script: PerformerScript) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The transition from ``script.blend_from`` into ``script``: joint rotations interpolated
        (normalised lerp on the near hemisphere), pelvis position and heading (the short way round)
        with a C1 weight that goes from 0 at ``blend_start_s`` to 1 ``blend_s`` later."""
        target = script.without_transition()
        w = _smoothstep((t - script.blend_start_s) / max(script.blend_s, 1e-9))  # ...
        local1, root1, yaw1 = self._local_pose(t, target)
        if np.all(w >= 1.0):
            return local1, root1, yaw1
        local0, root0, yaw0 = self._local_pose(t, script.blend_from)
        same_side = np.sum(local0 * local1, axis=-1, keepdims=True) >= 0.0  # ... x 17 x 1
        local = quat_normalize((1.0 - w[..., None, None]) * local0 + w[..., None, None] * np.where(same_side, local1, -local1))
        root = root0 + w[..., None] * (root1 - root0)
        turn = np.mod(yaw1 - yaw0 + np.pi, 2.0 * np.pi) - np.pi  # (-pi, pi]: the short way round
        return local, root, yaw0 + w * turn

    def _move_site(self, local: np.ndarray, t: np.ndarray, site: ImuSite) -> np.ndarray:
        """Add a clear back-and-forth rotation of the site's bone only (other bones keep still)."""
        wave = np.sin(2.0 * np.pi * 0.7 * t)
        j = IMU_JOINT[site]
        if site in (ImuSite.LEFT_FOREARM, ImuSite.RIGHT_FOREARM):
            sign = -1.0 if site == ImuSite.LEFT_FOREARM else 1.0
            extra = _rot(_Y, sign * (0.6 + 0.6 * wave))  # elbow flexion
        elif site in (ImuSite.LEFT_LOWER_LEG, ImuSite.RIGHT_LOWER_LEG):
            extra = _rot(_X, 0.5 + 0.5 * wave)  # knee flexion (the ankle lifts; the other foot stands)
        elif site == ImuSite.HEAD:
            extra = _rot(_Y, 0.6 * wave)  # shake the head
        else:
            # pelvis: twist the pelvis and counter-rotate its children so nothing else turns
            twist = _rot(_Y, 0.4 * wave)
            local = local.copy()
            local[..., j, :] = quat_mul(local[..., j, :], twist)
            for child in (Joint.RIGHT_HIP, Joint.LEFT_HIP, Joint.SPINE):
                local[..., child, :] = quat_mul(quat_conj(twist), local[..., child, :])
            return local
        local = local.copy()
        local[..., j, :] = quat_mul(local[..., j, :], extra)
        return local

    def _loop_pose(self, t: np.ndarray, idle: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        g, ph = self._gain, self._phase
        # ---- heading and path
        turn1 = _smoothstep((t - 2.0) / 1.0)
        walk_u = np.clip((t - 3.0) / 8.0, 0.0, 1.0)
        walk_s = walk_u - np.sin(2.0 * np.pi * walk_u) / (2.0 * np.pi)  # 0 -> 1, zero speed at both ends
        walk_speed = 0.5 - 0.5 * np.cos(2.0 * np.pi * walk_u)  # in [0, 1], 1 at mid-walk
        phi = 2.0 * np.pi * walk_s  # angle travelled on the circle
        turn2 = _smoothstep((t - 11.0) / 1.0)
        turn3_u = (t - 22.5) / 2.5
        turn3 = _smoothstep(turn3_u)
        yaw = 0.5 * np.pi * turn1 + phi - 0.5 * np.pi * turn2 + 2.0 * np.pi * turn3
        root_xz = np.stack((CIRCLE_RADIUS_M * np.sin(phi), CIRCLE_RADIUS_M * (np.cos(phi) - 1.0)), axis=-1)
        # stepping on the spot while turning
        step_amp = np.maximum(np.maximum(_smoothstep_rate(t - 2.0), _smoothstep_rate(t - 11.0)), _smoothstep_rate(turn3_u))
        step_phase = 2.0 * np.pi * 1.6 * t
        # ---- gait while walking
        gait = 2.0 * np.pi * CIRCLE_RADIUS_M * phi / STRIDE_M  # gait phase from the distance walked
        w = walk_speed * g[0]
        hip_l = 0.42 * w * np.sin(gait)
        hip_r = -0.42 * w * np.sin(gait)
        knee_l = 0.9 * w * ((1.0 + np.cos(gait - 0.3)) / 2.0) ** 3 + 0.1 * w
        knee_r = 0.9 * w * ((1.0 - np.cos(gait - 0.3)) / 2.0) ** 3 + 0.1 * w
        march_l = step_amp * ((1.0 + np.cos(step_phase)) / 2.0) ** 2
        march_r = step_amp * ((1.0 - np.cos(step_phase)) / 2.0) ** 2
        hip_l = hip_l + 0.35 * march_l
        hip_r = hip_r + 0.35 * march_r
        knee_l = knee_l + 0.75 * march_l
        knee_r = knee_r + 0.75 * march_r
        arm_swing_l = -0.35 * w * np.sin(gait)  # arms swing opposite to the legs
        arm_swing_r = 0.35 * w * np.sin(gait)
        pelvis_yaw = 0.08 * w * np.sin(gait)
        # ---- squat: thigh and shank angles that keep the ankle under the hip
        squat = _bump(t, 19.5, 22.5) * g[1]
        thigh_len = float(np.linalg.norm(self.rest.offsets_m[Joint.LEFT_KNEE]))
        shank_len = float(np.linalg.norm(self.rest.offsets_m[Joint.LEFT_ANKLE]))
        thigh_fwd = 1.15 * squat  # thigh angle from vertical, forwards
        shank_fwd = np.arcsin(np.clip(thigh_len * np.sin(thigh_fwd) / shank_len, -1.0, 1.0))
        lean = 0.45 * squat  # pelvis pitches forwards
        hip_l = hip_l + thigh_fwd + lean
        hip_r = hip_r + thigh_fwd + lean
        knee_l = knee_l + thigh_fwd + shank_fwd
        knee_r = knee_r + thigh_fwd + shank_fwd
        # ---- arms: down by the sides, raises, wave, forwards in the squat
        down = np.radians(75.0)
        lateral = _bump(t, 12.0, 14.25) * g[2]  # 0 -> 1 -> 0
        forward = _bump(t, 14.25, 16.5) * g[2]
        abduct = down - lateral * np.radians(160.0)  # from 75 deg down to 85 deg above horizontal
        flex = forward * np.radians(165.0) + 1.35 * squat
        wave_on = _plateau(t, 16.5, 19.5, 0.7)
        wave = wave_on * np.sin(2.0 * np.pi * 2.0 * (t - 16.5))
        abduct_r = abduct * (1.0 - wave_on) + wave_on * np.radians(-5.0)
        elbow = 0.25 + 0.05 * np.sin(2.0 * np.pi * _loop_hz(0.3) * t + ph[0]) * idle
        elbow_r = elbow * (1.0 - wave_on) + wave_on * (0.5 * np.pi + 0.45 * wave)
        # ---- torso and head
        breath = 0.02 * np.sin(2.0 * np.pi * _loop_hz(0.27) * t + ph[1]) * idle
        look_yaw = 0.18 * g[3] * np.sin(2.0 * np.pi * _loop_hz(0.11) * t + ph[2]) * idle
        look_pitch = 0.08 * np.sin(2.0 * np.pi * _loop_hz(0.17) * t + ph[3]) * idle
        sway = 0.03 * np.sin(2.0 * np.pi * _loop_hz(0.2) * t + ph[4]) * idle

        local = np.zeros(t.shape + (NUM_JOINTS, 4))
        local[..., 0] = 1.0
        local[..., Joint.PELVIS, :] = _chain(_rot(_Y, pelvis_yaw), _rot(_X, lean), _rot(_Z, sway))
        # hip flexion swings the thigh forwards (-X rotation), knee flexion bends the shank back (+X)
        local[..., Joint.LEFT_HIP, :] = _chain(_rot(_Z, -sway), _rot(_X, -hip_l))
        local[..., Joint.RIGHT_HIP, :] = _chain(_rot(_Z, -sway), _rot(_X, -hip_r))
        local[..., Joint.LEFT_KNEE, :] = _rot(_X, knee_l)
        local[..., Joint.RIGHT_KNEE, :] = _rot(_X, knee_r)
        local[..., Joint.SPINE, :] = _chain(_rot(_Y, -pelvis_yaw), _rot(_X, breath + 0.1 * squat))
        local[..., Joint.THORAX, :] = _rot(_X, -breath)
        local[..., Joint.NECK, :] = _chain(_rot(_Y, look_yaw), _rot(_X, look_pitch - 0.55 * squat))
        # left arm points +X in the T-pose: abduction down is -Z, flexion forwards is -X, elbow flexion is -Y
        local[..., Joint.LEFT_SHOULDER, :] = _chain(_rot(_X, -(flex + arm_swing_l)), _rot(_Z, -abduct))
        local[..., Joint.LEFT_ELBOW, :] = _rot(_Y, -elbow)
        # right arm points -X: the mirror image; for the wave the upper arm twists so the forearm points up
        local[..., Joint.RIGHT_SHOULDER, :] = _chain(
            _rot(_X, -(flex * (1.0 - wave_on) + arm_swing_r)), _rot(_Z, abduct_r), _rot(_X, -0.5 * np.pi * wave_on)
        )
        local[..., Joint.RIGHT_ELBOW, :] = _rot(_Y, elbow_r)
        return local, root_xz, yaw

