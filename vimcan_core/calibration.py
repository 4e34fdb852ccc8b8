"""T-pose calibration: from what the IMUs and the camera measure to bone orientations in the camera frame.

Frames (rotation convention of ``vimcan_core.rotations``: ``q_ab`` takes frame b into frame a):

* ``S_i``: the frame of IMU i (its housing).
* ``E_i``: the world frame IMU i reports its orientation in (``q_E_S``, what the sensor sends).
  Each sensor has its own: it is gravity-aligned, but its heading is arbitrary (BLE sensors
  without a magnetometer start at any heading and drift apart), and its vertical axis may be
  Y or Z (or be given by the accelerometer).
* ``B_i``: the bone the IMU is strapped to; a bone orientation is its rotation relative to the
  T-pose (``vimcan_core.skeleton``), so ``q_W_B = identity`` in the T-pose.
* ``W``: the calibration's world frame: **Y up (against gravity); +Z is the direction the
  performer faced during the T-pose and +X their left**, i.e. the performer's level T-pose frame.
  (It is the skeleton's rest frame; it is not the simulator's world, which may differ by a yaw.)
* ``C``: the camera (OpenCV: x right, y down, z forward).

The chain (the paper's R_B^C = R_B^I R_I^S R_S^G R_G^C, written left to right as we apply it)::

    q_C_B(t) = q_C_E_i * q_E_S_i(t) * q_S_B_i        q_S_B_i = conj(q_bone_from_sensor[i])

What is solved, and from what:

* ``q_W_E_i = yaw(psi_i) * up_i``: ``up_i`` turns the IMU world's vertical (the mean specific
  force of a still accelerometer, or the declared up axis) onto +Y; the heading ``psi_i`` cannot
  be told apart from the mounting's own yaw with one still pose (any ``psi_i`` explains the
  T-pose with another mounting). It comes from a second still pose whose bone motion is known
  in the body frame (``heading pose``: arms down, knees bent, leaning forward, looking down):
  the forearms must end pointing down, the lower legs, pelvis and head must have turned about the
  performer's left-right axis (+X). Without that pose, ``HeadingMethod.SENSOR_FORWARD`` assumes
  each sensor was strapped with no yaw relative to its bone.
* ``q_S_B_i`` from the T-pose: ``q_B_S_i = q_W_B(T) ^-1 * q_W_E_i * q_E_S_i(T)`` with ``q_W_B(T) = 1``.
* ``q_C_W`` from the camera: the T-pose keypoints are matched to the rest pose (a perspective-n-point
  fit with the camera's intrinsics), so the heading of ``W`` is the body facing the camera.
* acceleration offsets: the mean free acceleration (IMU world frame, gravity removed) while still.

The quality of each sensor combines how still it was, how far its bone was from the T-pose as the
camera saw it, and how much its bone moved in the heading pose (a small motion gives a poor heading).
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from enum import Enum

import numpy as np

from vimcan_core.camera import PinholeCamera
from vimcan_core.errors import CalibrationError, InputShapeError
from vimcan_core.kinematics import local_from_global
from vimcan_core.rotations import (
    IDENTITY_QUAT,
    quat_angle,
    quat_between,
    quat_conj,
    quat_from_axis_angle,
    quat_mul,
    quat_normalize,
    quat_rotate,
    quat_to_matrix,
    quat_to_rotvec,
    matrix_to_quat,
    yaw_quat,
)
from vimcan_core.skeleton import (
    IMU_CHILD_JOINT,
    IMU_JOINT,
    IMU_SITE_NAMES,
    NUM_IMUS,
    NUM_JOINTS,
    ImuSite,
    Joint,
    RestPose,
    default_rest_pose,
)
from vimcan_core.stillness import StillnessConfig, detect_stillness, mean_quat

log = logging.getLogger(__name__)

UP_W = np.array([0.0, 1.0, 0.0])  # world up
LEFT_W = np.array([1.0, 0.0, 0.0])  # the performer's left at calibration
FORWARD_W = np.array([0.0, 0.0, 1.0])  # where the performer faced at calibration


class ImuWorldUp(Enum):
    """The vertical axis of the IMUs' own world frame, when no accelerometer data is given."""

    Y = "y"  # Y-up worlds (Unity-style drivers, the simulator)
    Z = "z"  # Z-up worlds (ENU / NWU: Movella DOT, x-io, most AHRS firmware)


class HeadingMethod(Enum):
    """How each IMU world's heading (about the vertical) is found."""

    HEADING_POSE = "heading_pose"  # from a second still pose (arms down, knees bent, lean, nod): any mounting
    SENSOR_FORWARD = "sensor_forward"  # assume no yaw between each sensor and its bone in the T-pose


class ResetPose(Enum):
    """The pose held for a heading reset."""

    T_POSE = "t_pose"  # arms out to the sides, palms down (the calibration pose)
    N_POSE = "n_pose"  # standing straight, arms down by the sides, palms towards the thighs


#: what the performer is asked to do for the heading pose (shown by the wizard).
HEADING_POSE_INSTRUCTIONS = (
    "Lower your arms to your sides, bend your knees, lean forward a little and look down; then hold still."
)


@dataclass(frozen=True)
class CalibrationConfig:
    """Settings of ``calibrate_tpose`` and ``heading_reset``."""

    imu_world_up: ImuWorldUp = ImuWorldUp.Y  # used when no raw accelerometer data is given
    heading: HeadingMethod = HeadingMethod.HEADING_POSE
    stillness: StillnessConfig = StillnessConfig()
    min_keypoint_confidence: float = 0.5  # keypoints below this are left out of the camera fit
    min_heading_motion_deg: float = 15.0  # less bone motion in the heading pose gives an unreliable heading
    good_motion_deg: float = 1.5  # orientation spread at which the stillness part of the score is exp(-1/2)
    good_tpose_error_deg: float = 10.0  # image angle off the T-pose at which that part of the score is exp(-1/2)
    max_reprojection_error_px: float = 40.0  # a worse camera fit means the pose was not a T-pose, or keypoints are wrong
    # sites whose visible deviation from the T-pose is taken from the camera: the long limb bones (on the
    # short head and pelvis bones keypoint noise would add more error than it removes)
    camera_corrected_sites: tuple[ImuSite, ...] = (
        ImuSite.LEFT_FOREARM, ImuSite.RIGHT_FOREARM, ImuSite.LEFT_LOWER_LEG, ImuSite.RIGHT_LOWER_LEG)
    # sites whose heading is sharpened by the camera's view of the heading pose (bones that bend forward)
    camera_heading_sites: tuple[ImuSite, ...] = (
        ImuSite.LEFT_LOWER_LEG, ImuSite.RIGHT_LOWER_LEG)
    rest: RestPose = field(default_factory=default_rest_pose)  # body proportions for the camera fit


@dataclass(frozen=True)
class SensorQuality:
    """How trustworthy one sensor's calibration is."""

    score: float  # in [0, 1]; 1 is perfect, below ~0.5 redo the calibration
    motion_deg: float  # largest angle from the mean orientation during the T-pose window
    tpose_error_deg: float  # image-plane angle between the bone seen by the camera and the T-pose bone
    heading_motion_deg: float  # how far the bone moved in the heading pose (NaN: not used)
    note: str = ""  # what is wrong, for the user ("moved during capture", ...)

    @property
    def ok(self) -> bool:
        return self.score >= 0.5 and not self.note

    @staticmethod
    def perfect() -> "SensorQuality":
        return SensorQuality(score=1.0, motion_deg=0.0, tpose_error_deg=0.0, heading_motion_deg=float("nan"))


def _frozen(a: np.ndarray, shape: tuple[int, ...], name: str) -> np.ndarray:
    a = np.array(a, dtype=np.float64)
    if a.shape != shape:
        raise InputShapeError(f"Calibration.{name} must be {' x '.join(map(str, shape))}, got {a.shape}")
    a.setflags(write=False)
    return a


@dataclass(frozen=True, eq=False)  # arrays inside: compare the fields with numpy, not ==
class Calibration:
    """The result of a calibration: everything needed to turn IMU quaternions into bone orientations.

    Per site (``ImuSite`` order; a row of NaN = no sensor at that site):

    * ``q_bone_from_sensor``: 6 x 4, wxyz, the mounting (sensor frame into bone frame).
    * ``q_camera_from_imuworld``: 6 x 4, each IMU's own world frame into the camera frame.
    * ``acc_offset_mps2``: 6 x 3, the free-acceleration bias in each IMU's world frame.

    ``quat_world_from_camera`` (4): camera frame into ``W`` (Y up, gravity-aligned; +Z the way the
    performer faced during the T-pose, +X their left; see the module docstring).
    """

    q_bone_from_sensor: np.ndarray  # 6 x 4
    q_camera_from_imuworld: np.ndarray  # 6 x 4
    acc_offset_mps2: np.ndarray  # 6 x 3
    quat_world_from_camera: np.ndarray  # 4
    quality: tuple[SensorQuality, ...]  # 6
    camera_fit_error_px: float = 0.0  # RMS reprojection error of the T-pose camera fit

    def __post_init__(self) -> None:
        object.__setattr__(self, "q_bone_from_sensor", _frozen(self.q_bone_from_sensor, (NUM_IMUS, 4), "q_bone_from_sensor"))
        object.__setattr__(self, "q_camera_from_imuworld", _frozen(self.q_camera_from_imuworld, (NUM_IMUS, 4), "q_camera_from_imuworld"))
        object.__setattr__(self, "acc_offset_mps2", _frozen(self.acc_offset_mps2, (NUM_IMUS, 3), "acc_offset_mps2"))
        object.__setattr__(self, "quat_world_from_camera", _frozen(self.quat_world_from_camera, (4,), "quat_world_from_camera"))
        if len(self.quality) != NUM_IMUS:
            raise InputShapeError(f"Calibration.quality must have {NUM_IMUS} entries, got {len(self.quality)}")
        object.__setattr__(self, "quality", tuple(self.quality))

    # ------------------------------------------------------------ constructors
    @staticmethod
    def identity(camera: PinholeCamera) -> "Calibration":
        """For IMUs that already report bone orientations in the camera's world frame (the demo's
        simulated sensors): no mounting rotation, every IMU world is the camera's world frame."""
        q_cw = quat_normalize(np.asarray(camera.quat_cam_from_world, dtype=np.float64))
        return Calibration(
            q_bone_from_sensor=np.tile(IDENTITY_QUAT, (NUM_IMUS, 1)),
            q_camera_from_imuworld=np.tile(q_cw, (NUM_IMUS, 1)),
            acc_offset_mps2=np.zeros((NUM_IMUS, 3)),
            quat_world_from_camera=quat_conj(q_cw),
            quality=tuple(SensorQuality.perfect() for _ in range(NUM_IMUS)),
        )

    # ------------------------------------------------------------------ frames
    @property
    def q_world_from_imuworld(self) -> np.ndarray:
        """6 x 4: each IMU's world frame into ``W``."""
        return quat_normalize(quat_mul(self.quat_world_from_camera, self.q_camera_from_imuworld))

    @property
    def calibrated(self) -> np.ndarray:
        """6 bool: which sites have a sensor calibration."""
        return np.all(np.isfinite(self.q_bone_from_sensor), axis=-1) & np.all(np.isfinite(self.q_camera_from_imuworld), axis=-1)

    def bone_quats_camera(self, imu_quat_wxyz: np.ndarray) -> np.ndarray:
        """Bone orientations in the camera frame (the model's inertial input).

        Args:
            imu_quat_wxyz: ... x 6 x 4, what each sensor reports (sensor-to-its-own-world), site order.
        Returns:
            ... x 6 x 4, ``q_cam_from_bone``; rows that are NaN in the input (or uncalibrated) stay NaN.
        """
        q = _check_imu_quats(imu_quat_wxyz, "bone_quats_camera")
        out = quat_mul(quat_mul(self.q_camera_from_imuworld, q), quat_conj(self.q_bone_from_sensor))
        return quat_normalize(out)

    def bone_quats_world(self, imu_quat_wxyz: np.ndarray) -> np.ndarray:
        """As ``bone_quats_camera`` but in ``W`` (Y up, performer's T-pose heading): ... x 6 x 4."""
        q = _check_imu_quats(imu_quat_wxyz, "bone_quats_world")
        out = quat_mul(quat_mul(self.q_world_from_imuworld, q), quat_conj(self.q_bone_from_sensor))
        return quat_normalize(out)

    def acc_free_world(self, acc_free_mps2: np.ndarray) -> np.ndarray:
        """Free accelerations (... x 6 x 3, each IMU's world frame) minus the offsets, in ``W``."""
        acc = np.asarray(acc_free_mps2, dtype=np.float64)
        if acc.shape[-2:] != (NUM_IMUS, 3):
            raise InputShapeError(f"acc_free_world: expected ... x {NUM_IMUS} x 3, got {acc.shape}")
        return quat_rotate(self.q_world_from_imuworld, acc - self.acc_offset_mps2)

    def with_world_headings(self, yaw_rad: np.ndarray) -> "Calibration":
        """The same calibration with each IMU world turned by ``yaw_rad[i]`` about ``W``'s vertical."""
        yaw = np.asarray(yaw_rad, dtype=np.float64).reshape(NUM_IMUS)
        q_wc = self.quat_world_from_camera
        q_c_e = quat_mul(quat_conj(q_wc), quat_mul(yaw_quat(np.nan_to_num(yaw)), quat_mul(q_wc, self.q_camera_from_imuworld)))
        return dataclasses.replace(self, q_camera_from_imuworld=quat_normalize(q_c_e))


def _check_imu_quats(q: np.ndarray, where: str) -> np.ndarray:
    q = np.asarray(q, dtype=np.float64)
    if q.shape[-2:] != (NUM_IMUS, 4):
        raise InputShapeError(f"{where}: IMU quaternions must be ... x {NUM_IMUS} x 4 (site order, wxyz), got {q.shape}")
    return q


# ---------------------------------------------------------------- known poses
def heading_pose_bone_quats(lean_deg: float = 25.0, knee_deg: float = 30.0, nod_deg: float = 20.0) -> np.ndarray:
    """Bone orientations (17 x 4, ``W``) of the heading pose: arms hanging down, knees bent by
    ``knee_deg`` (shins tilted forward), torso leaning forward by ``lean_deg``, head nodding a further
    ``nod_deg``. For simulators and tests; the calibration only relies on its qualitative shape."""
    g = np.tile(IDENTITY_QUAT, (NUM_JOINTS, 1))
    rx = lambda deg: quat_from_axis_angle(LEFT_W, np.radians(deg))  # noqa: E731 - tiny local helper
    rz = lambda deg: quat_from_axis_angle(FORWARD_W, np.radians(deg))  # noqa: E731
    for j in (Joint.PELVIS, Joint.SPINE, Joint.THORAX):
        g[j] = rx(lean_deg)
    g[Joint.NECK] = g[Joint.HEAD] = rx(lean_deg + nod_deg)
    for hip, knee, ankle in ((Joint.LEFT_HIP, Joint.LEFT_KNEE, Joint.LEFT_ANKLE), (Joint.RIGHT_HIP, Joint.RIGHT_KNEE, Joint.RIGHT_ANKLE)):
        g[hip] = rx(-knee_deg)  # thigh: knee forward
        g[knee] = rx(knee_deg)  # shin: knee forward of the ankle
        g[ankle] = IDENTITY_QUAT
    for joints, angle in (((Joint.LEFT_SHOULDER, Joint.LEFT_ELBOW, Joint.LEFT_WRIST), -90.0),
                          ((Joint.RIGHT_SHOULDER, Joint.RIGHT_ELBOW, Joint.RIGHT_WRIST), 90.0)):
        for j in joints:
            g[j] = rz(angle)
    return g


def heading_pose_local_quats(lean_deg: float = 25.0, knee_deg: float = 30.0, nod_deg: float = 20.0) -> np.ndarray:
    """The heading pose as local rotations (17 x 4) for ``forward_kinematics``."""
    return local_from_global(heading_pose_bone_quats(lean_deg, knee_deg, nod_deg))


def reset_pose_bone_quats(pose: ResetPose) -> np.ndarray:
    """Bone orientations (6 x 4, sites, ``W``) of a heading-reset pose."""
    q = np.tile(IDENTITY_QUAT, (NUM_IMUS, 1))
    if pose is ResetPose.N_POSE:
        q[ImuSite.LEFT_FOREARM] = quat_from_axis_angle(FORWARD_W, np.radians(-90.0))
        q[ImuSite.RIGHT_FOREARM] = quat_from_axis_angle(FORWARD_W, np.radians(90.0))
    return q


def _bone_directions_rest(rest: RestPose) -> np.ndarray:
    """6 x 3: unit direction of each IMU's bone in the T-pose (``W``)."""
    pos = rest.positions()
    d = pos[list(IMU_CHILD_JOINT)] - pos[list(IMU_JOINT)]
    return d / np.linalg.norm(d, axis=-1, keepdims=True)


# ----------------------------------------------------------------- the fits
def _up_alignment(
    q_e_s_tpose: np.ndarray, acc_sensor: np.ndarray | None, config: CalibrationConfig
) -> np.ndarray:
    """6 x 4: for each IMU world, the shortest rotation taking its vertical onto +Y."""
    if acc_sensor is not None:
        # a still accelerometer measures the specific force, +g along the world's up
        up_e = mean_finite(quat_rotate(q_e_s_tpose[None], acc_sensor), axis=0)  # 6 x 3
        norm = np.linalg.norm(up_e, axis=-1)
        bad = ~(norm > 5.0)
        if np.any(bad & np.all(np.isfinite(q_e_s_tpose), axis=-1)):
            sites = [IMU_SITE_NAMES[i] for i in np.flatnonzero(bad)]
            raise CalibrationError(
                f"accelerometer of {sites} reads {np.round(norm[bad], 2)} m/s^2 while still; expected about 9.8 "
                "(raw specific force in the sensor frame, gravity included). Pass the raw accelerometer or none."
            )
    else:
        axis = UP_W if config.imu_world_up is ImuWorldUp.Y else np.array([0.0, 0.0, 1.0])
        up_e = np.tile(axis, (NUM_IMUS, 1))
    return quat_between(np.nan_to_num(up_e, nan=1.0), np.broadcast_to(UP_W, up_e.shape))


def mean_finite(a: np.ndarray, axis: int) -> np.ndarray:
    """Mean ignoring NaN, NaN where all are NaN (without numpy's warning)."""
    a = np.asarray(a, dtype=np.float64)
    ok = np.isfinite(a)
    n = ok.sum(axis=axis)
    s = np.where(ok, a, 0.0).sum(axis=axis)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n > 0, s / np.maximum(n, 1), np.nan)


def _yaw_of(q: np.ndarray) -> np.ndarray:
    """Heading (rotation about +Y) of ... x 4 rotations: the twist of a swing-twist split, radians."""
    q = np.asarray(q, dtype=np.float64)
    return 2.0 * np.arctan2(q[..., 2], q[..., 0])


def _heading_from_direction(r_e: np.ndarray, d_tpose: np.ndarray, target: np.ndarray) -> tuple[float, float]:
    """Heading psi such that ``yaw(psi) r_e yaw(-psi)`` takes the T-pose bone direction closest to
    ``target``; returns (psi, residual angle in degrees). A 0.5 degree grid then golden-section."""

    def cost(psi: np.ndarray) -> np.ndarray:
        y = yaw_quat(psi)
        d = quat_rotate(y, quat_rotate(r_e, quat_rotate(quat_conj(y), d_tpose)))
        return np.arccos(np.clip(d @ target, -1.0, 1.0))

    psi = _minimize_1d(cost)
    return float(psi), float(np.degrees(cost(np.array(psi))))


def _heading_from_axis(r_e: np.ndarray, q_w_b_t: np.ndarray, axis_w: np.ndarray) -> tuple[float, float]:
    """Heading psi such that the bone's orientation in the second pose, ``yaw(psi) r_e yaw(-psi) q_w_b_t``,
    is a rotation about the horizontal ``axis_w`` (its horizontal part points along it); returns
    (psi, the size of that horizontal part in degrees). A 0.5 degree grid then golden-section."""
    target = np.arctan2(axis_w[2], axis_w[0])

    def cost(psi: np.ndarray) -> np.ndarray:
        y = yaw_quat(psi)
        rv = quat_to_rotvec(quat_mul(quat_mul(y, quat_mul(r_e, quat_conj(y))), q_w_b_t))
        return np.abs(np.angle(np.exp(1j * (np.arctan2(rv[..., 2], rv[..., 0]) - target))))

    psi = _minimize_1d(cost)
    y = yaw_quat(psi)
    rv = quat_to_rotvec(quat_mul(quat_mul(y, quat_mul(r_e, quat_conj(y))), q_w_b_t))
    return psi, float(np.degrees(np.hypot(rv[0], rv[2])))


def _minimize_1d(cost, centre: float = 0.0, half_range_deg: float = 180.0) -> float:
    """Minimum of a cost of one angle (vectorised over its argument) within ``centre +- half_range_deg``:
    a 0.5 degree grid, then a 0.005 degree grid around the best point, then a parabola through the
    three best points."""
    grid = centre + np.radians(np.arange(-half_range_deg, half_range_deg + 1e-9, 0.5))
    best = grid[int(np.argmin(cost(grid)))]
    fine = best + np.radians(np.linspace(-0.5, 0.5, 201))
    c = cost(fine)
    k = int(np.clip(np.argmin(c), 1, fine.size - 2))
    denom = c[k - 1] - 2.0 * c[k] + c[k + 1]
    step = fine[1] - fine[0]
    shift = 0.5 * (c[k - 1] - c[k + 1]) / denom if denom > 1e-15 else 0.0
    return float(fine[k] + np.clip(shift, -1.0, 1.0) * step)


@dataclass(frozen=True, eq=False)
class CameraFit:
    """The T-pose fitted to the camera image."""

    q_cam_from_world: np.ndarray  # 4, camera frame from W
    translation_m: np.ndarray  # 3, W's origin in the camera frame (scaled by the rest pose's size)
    rms_error_px: float  # over the joints kept (the outliers, a bone held off the T-pose, are left out)
    reprojected_px: np.ndarray  # 17 x 2
    model_points_m: np.ndarray  # 17 x 3, the rest pose in W, pelvis at the origin

    def bone_rotations_seen(
        self, keypoints_px: np.ndarray, confidence: np.ndarray, camera: PinholeCamera | np.ndarray, min_confidence: float
    ) -> np.ndarray:
        """6 x 4: how each IMU bone deviated from the T-pose, as far as the camera can tell (``W``).

        Each bone's child joint is moved along its camera ray to the depth the rest pose gives it;
        the rotation is the shortest one from the rest direction to the seen direction (a swing in
        the image plane; twist and motion along the line of sight are invisible and left at zero).
        Unseen bones get the identity.
        """
        k_inv = np.linalg.inv(_intrinsics(camera))
        rot = quat_to_matrix(self.q_cam_from_world)  # 3 x 3
        pts_cam = self.model_points_m @ rot.T + self.translation_m  # 17 x 3
        out = np.tile(IDENTITY_QUAT, (NUM_IMUS, 1))
        for i, (a, b) in enumerate(zip(IMU_JOINT, IMU_CHILD_JOINT)):
            if min(confidence[a], confidence[b]) < min_confidence or not np.all(np.isfinite(keypoints_px[[a, b]])):
                continue
            rays = np.concatenate((keypoints_px[[a, b]], np.ones((2, 1))), axis=1) @ k_inv.T  # 2 x 3, z = 1
            seen = rays * pts_cam[[a, b], 2:3]  # each at its rest depth
            d_seen_w = rot.T @ (seen[1] - seen[0])
            d_rest_w = self.model_points_m[b] - self.model_points_m[a]
            out[i] = quat_between(d_rest_w, d_seen_w)
        return out


def fit_camera_to_tpose(
    keypoints_px: np.ndarray, confidence: np.ndarray, camera: PinholeCamera | np.ndarray, config: CalibrationConfig = CalibrationConfig()
) -> CameraFit:
    """Where the camera looks at the performer from, from one (averaged) T-pose image.

    Args:
        keypoints_px: 17 x 2 pixels (H36M order), the T-pose.
        confidence: 17 in [0, 1].
        camera: intrinsics (a ``PinholeCamera``, whose own pose is ignored, or a 3 x 3 matrix K).
    Returns:
        the rotation ``q_C_W`` and translation of the rest pose that reproject best (least squares
        over confident joints; the solutions of a nearly planar body are all tried).
    """
    import cv2  # only needed here; keeps the module importable without OpenCV

    k_mat = _intrinsics(camera)
    ok = np.isfinite(keypoints_px).all(axis=-1) & (confidence >= config.min_keypoint_confidence)
    if ok.sum() < 6:
        missing = [n for n, good in zip(_JOINT_NAMES, ok) if not good]
        raise CalibrationError(
            f"camera fit needs at least 6 confident keypoints, got {int(ok.sum())} (missing: {missing}); "
            "step back so that the whole body is in view and well lit"
        )
    obj = config.rest.positions() - config.rest.positions()[Joint.PELVIS]  # 17 x 3, W, pelvis at origin
    img = np.ascontiguousarray(keypoints_px[ok], dtype=np.float64)
    objp = np.ascontiguousarray(obj[ok], dtype=np.float64)
    candidates = []
    for flags in (cv2.SOLVEPNP_SQPNP, cv2.SOLVEPNP_IPPE, cv2.SOLVEPNP_EPNP):
        try:
            n, rvecs, tvecs, _ = cv2.solvePnPGeneric(objp, img, k_mat, None, flags=flags)
        except cv2.error:
            continue
        candidates.extend(zip(rvecs, tvecs))
    best = None
    for rvec, tvec in candidates:
        rvec, tvec = cv2.solvePnPRefineLM(objp, img, k_mat, None, rvec.copy(), tvec.copy())
        if tvec[2, 0] <= 0:  # behind the camera
            continue
        proj, _ = cv2.projectPoints(objp, rvec, tvec, k_mat, None)
        err = float(np.sqrt(np.mean(np.sum((proj[:, 0] - img) ** 2, axis=-1))))
        if best is None or err < best[0]:
            best = (err, rvec, tvec)
    if best is None:
        raise CalibrationError("camera fit failed: no pose of the T-pose reprojects in front of the camera; check the camera intrinsics")
    _, rvec, tvec = best
    rvec, tvec, lifts = _refine_articulated(obj, keypoints_px, np.where(ok, confidence, 0.0), k_mat, rvec[:, 0], tvec[:, 0])
    model = _lift_limbs(obj, lifts)
    proj, _ = cv2.projectPoints(model, rvec, tvec, k_mat, None)
    proj = proj[:, 0]
    err = float(np.sqrt(np.mean(np.sum((proj[ok] - img) ** 2, axis=-1))))
    rvec = rvec.reshape(3, 1)
    tvec = tvec.reshape(3, 1)
    rot, _ = cv2.Rodrigues(rvec)
    return CameraFit(q_cam_from_world=matrix_to_quat(rot), translation_m=tvec[:, 0].copy(), rms_error_px=err, reprojected_px=proj,
                     model_points_m=obj)


#: limbs whose elevation in the image plane is fitted with the camera: (root joint, the joints it moves)
_LIMBS: tuple[tuple[int, tuple[int, ...]], ...] = (
    (Joint.LEFT_SHOULDER, (Joint.LEFT_ELBOW, Joint.LEFT_WRIST)),
    (Joint.RIGHT_SHOULDER, (Joint.RIGHT_ELBOW, Joint.RIGHT_WRIST)),
    (Joint.LEFT_HIP, (Joint.LEFT_KNEE, Joint.LEFT_ANKLE)),
    (Joint.RIGHT_HIP, (Joint.RIGHT_KNEE, Joint.RIGHT_ANKLE)),
)


def _lift_limbs(points_m: np.ndarray, lifts_rad: np.ndarray) -> np.ndarray:
    """The rest pose (17 x 3, ``W``) with each limb of ``_LIMBS`` turned about +Z (the line of sight
    of a performer facing the camera) at its root by ``lifts_rad`` (4)."""
    out = points_m.copy()
    for (root, moved), a in zip(_LIMBS, lifts_rad):
        c, s = np.cos(a), np.sin(a)
        rel = points_m[list(moved)] - points_m[root]
        out[list(moved)] = points_m[root] + np.stack((c * rel[:, 0] - s * rel[:, 1], s * rel[:, 0] + c * rel[:, 1], rel[:, 2]), -1)
    return out


def _refine_articulated(
    obj: np.ndarray, keypoints_px: np.ndarray, weight: np.ndarray, k_mat: np.ndarray, rvec: np.ndarray, tvec: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Camera pose (rvec 3, tvec 3) and the four limb elevations (4, radians) that reproject the
    T-pose best: a rigid fit would tilt the camera to explain an arm held a little high. Robust
    (soft L1) least squares over the confident keypoints."""
    import cv2
    from scipy.optimize import least_squares

    use = weight > 0
    sqrt_w = np.sqrt(weight[use])[:, None]
    target = keypoints_px[use]

    def residuals(x: np.ndarray) -> np.ndarray:
        proj, _ = cv2.projectPoints(_lift_limbs(obj, x[6:]), x[:3], x[3:6], k_mat, None)
        return ((proj[:, 0][use] - target) * sqrt_w).ravel()

    x0 = np.concatenate((rvec, tvec, np.zeros(len(_LIMBS))))
    sol = least_squares(residuals, x0, loss="soft_l1", f_scale=3.0, x_scale="jac")
    return sol.x[:3], sol.x[3:6], sol.x[6:]


_JOINT_NAMES = tuple(j.name.lower() for j in Joint)


def _intrinsics(camera: PinholeCamera | np.ndarray) -> np.ndarray:
    if isinstance(camera, PinholeCamera):
        return np.array([[camera.fx_px, 0.0, camera.cx_px], [0.0, camera.fy_px, camera.cy_px], [0.0, 0.0, 1.0]])
    k = np.asarray(camera, dtype=np.float64)
    if k.shape != (3, 3):
        raise InputShapeError(f"camera must be a PinholeCamera or a 3 x 3 intrinsic matrix, got shape {k.shape}")
    return k


def _tpose_image_errors(keypoints_px: np.ndarray, confidence: np.ndarray, reprojected_px: np.ndarray, min_conf: float) -> np.ndarray:
    """6: image angle (degrees) between each IMU bone as seen and as the fitted T-pose reprojects; NaN if unseen."""
    out = np.full(NUM_IMUS, np.nan)
    for i, (a, b) in enumerate(zip(IMU_JOINT, IMU_CHILD_JOINT)):
        if confidence[a] < min_conf or confidence[b] < min_conf:
            continue
        seen = keypoints_px[b] - keypoints_px[a]
        model = reprojected_px[b] - reprojected_px[a]
        if np.linalg.norm(seen) < 1e-6 or np.linalg.norm(model) < 1e-6:
            continue
        cos = seen @ model / (np.linalg.norm(seen) * np.linalg.norm(model))
        out[i] = np.degrees(np.arccos(np.clip(cos, -1.0, 1.0)))
    return out


def _split_keypoints(keypoints_px: np.ndarray, confidence: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    kp = np.asarray(keypoints_px, dtype=np.float64)
    if kp.ndim == 2:
        kp = kp[None]
    if kp.ndim != 3 or kp.shape[1] != NUM_JOINTS or kp.shape[2] not in (2, 3):
        raise InputShapeError(f"keypoints must be N x {NUM_JOINTS} x 2 (with confidence N x {NUM_JOINTS}) or N x {NUM_JOINTS} x 3, got {kp.shape}")
    if kp.shape[2] == 3:
        return kp[..., :2], kp[..., 2]
    if confidence is None:
        return kp, np.where(np.isfinite(kp).all(axis=-1), 1.0, 0.0)
    conf = np.asarray(confidence, dtype=np.float64).reshape(kp.shape[:2])
    return kp, conf


def calibrate_tpose(
    imu_quats: np.ndarray,
    keypoints_px: np.ndarray,
    camera: PinholeCamera | np.ndarray,
    *,
    keypoint_confidence: np.ndarray | None = None,
    heading_pose_quats: np.ndarray | None = None,
    heading_pose_keypoints_px: np.ndarray | None = None,
    heading_pose_keypoint_confidence: np.ndarray | None = None,
    imu_acc_sensor_mps2: np.ndarray | None = None,
    imu_acc_free_mps2: np.ndarray | None = None,
    imu_times_s: np.ndarray | None = None,
    config: CalibrationConfig = CalibrationConfig(),
) -> Calibration:
    """Calibrate every IMU from a still T-pose (and the heading pose) and the camera's view of it.

    Args:
        imu_quats: N x 6 x 4, wxyz, sensor-to-its-own-world, site order, the T-pose window (NaN = missing).
        keypoints_px: N' x 17 x 2 (with ``keypoint_confidence`` N' x 17) or N' x 17 x 3 (x, y, conf),
            pixels, the camera's view of the same T-pose.
        camera: the camera's intrinsics (``PinholeCamera``, whose pose is ignored, or K 3 x 3).
        heading_pose_quats: M x 6 x 4, the heading pose window (``HEADING_POSE_INSTRUCTIONS``);
            needed with ``HeadingMethod.HEADING_POSE``.
        heading_pose_keypoints_px: the camera's view of the heading pose (as ``keypoints_px``); optional,
            it sharpens the heading of the lower legs (the limb's sideways tilt is seen directly).
        imu_acc_sensor_mps2: N x 6 x 3, raw accelerometer (specific force, sensor frame): gives
            each IMU world's vertical; without it ``config.imu_world_up`` is used.
        imu_acc_free_mps2: N x 6 x 3, free acceleration (IMU world, gravity removed): its mean is the offset.
        imu_times_s: N, for the stillness check (default: 60 Hz).
        config: settings.

    Returns:
        a ``Calibration``; sites without any valid sample are NaN rows with a quality of 0.
    Raises:
        CalibrationError: no usable keypoints, the camera fit is poor, the heading pose is missing or too small.
    """
    q_t = _check_window(imu_quats, "imu_quats")
    n = q_t.shape[0]
    times = np.arange(n) / 60.0 if imu_times_s is None else np.asarray(imu_times_s, dtype=np.float64)
    present = np.any(np.all(np.isfinite(q_t), axis=-1), axis=0)  # 6
    still = detect_stillness(q_t, times, config.stillness)
    q_e_s_t = mean_quat(q_t)  # 6 x 4

    # the camera: where it looks from, and how far each bone was from the T-pose
    kp, conf = _split_keypoints(keypoints_px, keypoint_confidence)
    kp_mean, conf_mean = _mean_keypoints(kp, conf)
    fit = fit_camera_to_tpose(kp_mean, conf_mean, camera, config)
    if fit.rms_error_px > config.max_reprojection_error_px:
        raise CalibrationError(
            f"the T-pose does not match the camera image (reprojection error {fit.rms_error_px:.1f} px, at most "
            f"{config.max_reprojection_error_px:.0f} px): stand facing the camera with the arms straight out to the sides"
        )
    q_c_w = quat_normalize(fit.q_cam_from_world)
    tpose_err = _tpose_image_errors(kp_mean, conf_mean, fit.reprojected_px, config.min_keypoint_confidence)
    q_w_b_t = fit.bone_rotations_seen(kp_mean, conf_mean, camera, config.min_keypoint_confidence)  # 6 x 4
    keep = np.isin(np.arange(NUM_IMUS), [int(s) for s in config.camera_corrected_sites])
    q_w_b_t = np.where(keep[:, None], q_w_b_t, IDENTITY_QUAT)

    # vertical of each IMU world, then its heading
    acc_s = None if imu_acc_sensor_mps2 is None else _check_window(imu_acc_sensor_mps2, "imu_acc_sensor_mps2", 3)
    up = _up_alignment(q_e_s_t, acc_s, config)  # 6 x 4
    seen = None
    if heading_pose_keypoints_px is not None:
        kp2, conf2 = _split_keypoints(heading_pose_keypoints_px, heading_pose_keypoint_confidence)
        kp2_mean, conf2_mean = _mean_keypoints(kp2, conf2)
        seen = _HeadingPoseView(kp2_mean, conf2_mean, fit, _intrinsics(camera), config.min_keypoint_confidence)
    psi, heading_motion = _headings(q_e_s_t, up, heading_pose_quats, present, q_w_b_t, config, seen)
    q_w_e = quat_normalize(quat_mul(yaw_quat(psi), up))  # 6 x 4
    q_b_s = quat_normalize(quat_mul(quat_conj(q_w_b_t), quat_mul(q_w_e, q_e_s_t)))  # q_B_S = q_W_B(T)^-1 q_W_E q_E_S(T)
    q_c_e = quat_normalize(quat_mul(q_c_w, q_w_e))

    # acceleration offsets
    if imu_acc_free_mps2 is not None:
        acc_offset = np.nan_to_num(mean_finite(_check_window(imu_acc_free_mps2, "imu_acc_free_mps2", 3), axis=0))
    else:
        acc_offset = np.zeros((NUM_IMUS, 3))

    quality = _quality(present, still, tpose_err, heading_motion, config)
    nan_rows = ~present[:, None]
    calib = Calibration(
        q_bone_from_sensor=np.where(nan_rows, np.nan, q_b_s),
        q_camera_from_imuworld=np.where(nan_rows, np.nan, q_c_e),
        acc_offset_mps2=np.where(nan_rows, np.nan, acc_offset),
        quat_world_from_camera=quat_conj(q_c_w),
        quality=quality,
        camera_fit_error_px=fit.rms_error_px,
    )
    log.info(
        "calibrated %d sensors, camera fit %.2f px, scores %s",
        int(present.sum()), fit.rms_error_px, [round(q.score, 2) for q in quality],
    )
    return calib


def _check_window(a: np.ndarray, name: str, width: int = 4) -> np.ndarray:
    a = np.asarray(a, dtype=np.float64)
    if a.ndim == 2:
        a = a[None]
    if a.ndim != 3 or a.shape[1:] != (NUM_IMUS, width) or a.shape[0] < 1:
        raise InputShapeError(f"{name} must be N x {NUM_IMUS} x {width} (site order), got {a.shape}")
    return a


def _mean_keypoints(kp: np.ndarray, conf: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Confidence-weighted mean over frames: N x 17 x 2, N x 17 -> 17 x 2, 17 (mean confidence)."""
    w = np.where(np.isfinite(kp).all(axis=-1), np.clip(conf, 0.0, 1.0), 0.0)  # N x 17
    total = w.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(total[:, None] > 0, (np.nan_to_num(kp) * w[..., None]).sum(axis=0) / total[:, None], np.nan)
    return mean, w.mean(axis=0)


def _headings(
    q_e_s_t: np.ndarray,
    up: np.ndarray,
    heading_pose_quats: np.ndarray | None,
    present: np.ndarray,
    q_w_b_t: np.ndarray,
    config: CalibrationConfig,
    seen: "_HeadingPoseView | None" = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Heading of each IMU world (6, radians) and how far each bone moved in the heading pose (6, degrees)."""
    psi = np.zeros(NUM_IMUS)
    motion = np.full(NUM_IMUS, np.nan)
    if config.heading is HeadingMethod.SENSOR_FORWARD:
        # the T-pose bone is the identity, so the mounting is up-aligned sensor; take its yaw away
        psi = -_yaw_of(quat_mul(quat_conj(q_w_b_t), quat_mul(up, q_e_s_t)))
        return np.nan_to_num(psi), motion
    if heading_pose_quats is None:
        raise CalibrationError(
            "the heading of each IMU cannot be found from the T-pose alone (any heading fits it with another "
            "mounting): capture the heading pose too (" + HEADING_POSE_INSTRUCTIONS + ") or use HeadingMethod.SENSOR_FORWARD"
        )
    q2 = mean_quat(_check_window(heading_pose_quats, "heading_pose_quats"))  # 6 x 4
    d_rest = quat_rotate(q_w_b_t, _bone_directions_rest(config.rest))  # 6 x 3, the bones as held in the T-pose
    low = []
    for i in range(NUM_IMUS):
        if not present[i]:
            continue
        if not np.all(np.isfinite(q2[i])):
            raise CalibrationError(f"no samples from the {IMU_SITE_NAMES[i]} sensor during the heading pose; check its connection and repeat")
        # the bone's rotation from the T-pose to the heading pose, in the up-aligned IMU world
        r_e = quat_normalize(quat_mul(up[i], quat_mul(quat_mul(q2[i], quat_conj(q_e_s_t[i])), quat_conj(up[i]))))
        motion[i] = float(np.degrees(quat_angle(r_e, IDENTITY_QUAT)))
        if i in (ImuSite.LEFT_FOREARM, ImuSite.RIGHT_FOREARM):
            # the forearm ends pointing down; its own twist does not matter
            psi[i], _ = _heading_from_direction(r_e, d_rest[i], -UP_W)
            d_t = quat_rotate(quat_conj(yaw_quat(psi[i])), d_rest[i])  # the bone in the T-pose, IMU world
            motion[i] = float(np.degrees(np.arccos(np.clip(quat_rotate(r_e, d_t) @ d_t, -1.0, 1.0))))
        else:
            # shin, pelvis and head turn forward about the performer's left axis, from the T-pose as held
            psi[i], motion[i] = _heading_from_axis(r_e, q_w_b_t[i], LEFT_W)
            if seen is not None and i in config.camera_heading_sites:
                # both estimates err independently (the IMU's on unintended sideways motion, the camera's on
                # keypoint noise and its own fit): average them on the circle
                psi_cam = seen.refine_heading(i, psi[i], r_e, d_rest[i], config.rest)
                psi[i] = psi[i] + 0.5 * float(np.angle(np.exp(1j * (psi_cam - psi[i]))))
        if motion[i] < config.min_heading_motion_deg:
            low.append(f"{IMU_SITE_NAMES[i]} ({motion[i]:.0f} deg)")
    if low:
        raise CalibrationError(
            f"in the heading pose these bones moved too little to find their sensor's heading: {', '.join(low)}; "
            f"at least {config.min_heading_motion_deg:.0f} degrees is needed. " + HEADING_POSE_INSTRUCTIONS
        )
    return psi, motion


@dataclass(frozen=True, eq=False)
class _HeadingPoseView:
    """The camera's view of the heading pose, to sharpen the heading of the bones that bend forward.

    A heading error of ``delta`` tilts a bone that bent forward by ``theta`` sideways by about
    ``delta sin(theta)``: invisible to the IMU alone when the performer also moved the limb a
    little sideways, but the camera sees the sideways tilt directly."""

    keypoints_px: np.ndarray  # 17 x 2, averaged over the window
    confidence: np.ndarray  # 17
    fit: CameraFit
    k_mat: np.ndarray  # 3 x 3
    min_confidence: float
    search_deg: float = 40.0  # around the IMU-only heading (the camera cannot tell forward from backward)

    def refine_heading(self, site: int, psi0: float, r_e: np.ndarray, d_tpose_w: np.ndarray, rest: RestPose) -> float:
        a, b = IMU_JOINT[site], IMU_CHILD_JOINT[site]
        if min(self.confidence[a], self.confidence[b]) < self.min_confidence:
            return psi0
        rot = quat_to_matrix(self.fit.q_cam_from_world)
        depth = (rot @ self.fit.model_points_m[a] + self.fit.translation_m)[2]
        start_cam = np.linalg.inv(self.k_mat) @ np.array([*self.keypoints_px[a], 1.0]) * depth  # 3
        length = float(np.linalg.norm(self.fit.model_points_m[b] - self.fit.model_points_m[a]))
        seen_2d = self.keypoints_px[b] - self.keypoints_px[a]
        if np.linalg.norm(seen_2d) < 5.0:  # along the line of sight: no information
            return psi0
        seen_2d = seen_2d / np.linalg.norm(seen_2d)

        def cost(psi: np.ndarray) -> np.ndarray:
            y = yaw_quat(psi)  # ... x 4
            d_w = quat_rotate(y, quat_rotate(r_e, quat_rotate(quat_conj(y), d_tpose_w)))  # ... x 3
            end = start_cam + length * d_w @ rot.T
            uv = end @ self.k_mat.T
            pred = uv[..., :2] / uv[..., 2:3] - self.keypoints_px[a]
            pred = pred / np.linalg.norm(pred, axis=-1, keepdims=True)
            return np.arccos(np.clip(pred @ seen_2d, -1.0, 1.0))

        return _minimize_1d(cost, psi0, self.search_deg)


def _quality(
    present: np.ndarray, still, tpose_err: np.ndarray, heading_motion: np.ndarray, config: CalibrationConfig
) -> tuple[SensorQuality, ...]:
    out = []
    for i in range(NUM_IMUS):
        if not present[i]:
            out.append(SensorQuality(0.0, float("nan"), float("nan"), float("nan"), note="no sensor"))
            continue
        motion = float(still.spread_deg[i])
        err = float(tpose_err[i])
        score = np.exp(-0.5 * ((motion / config.good_motion_deg) ** 2 + (np.nan_to_num(err, nan=0.0) / config.good_tpose_error_deg) ** 2))
        hm = float(heading_motion[i])
        if np.isfinite(hm):
            score *= float(np.clip((hm - 0.5 * config.min_heading_motion_deg) / config.min_heading_motion_deg, 0.0, 1.0))
        notes = []
        if not still.still[i]:
            notes.append("moved during the capture")
        if not np.isfinite(err):
            notes.append("bone not seen by the camera")
        elif err > 2 * config.good_tpose_error_deg:
            notes.append(f"{err:.0f} deg off the T-pose")
        out.append(SensorQuality(float(score), motion, err, hm, note="; ".join(notes)))
    return tuple(out)


# -------------------------------------------------------------- heading reset
def heading_reset(
    calibration: Calibration,
    imu_quats: np.ndarray,
    pose: ResetPose = ResetPose.N_POSE,
    facing_yaw_rad: float = 0.0,
) -> Calibration:
    """Undo each IMU's heading drift while the performer holds a known pose.

    Args:
        calibration: the current calibration (the mountings are kept).
        imu_quats: 6 x 4 (or N x 6 x 4, averaged), what the sensors report now, sensor-to-their-world.
        pose: what the performer holds (default: standing straight, arms down, palms to the thighs).
        facing_yaw_rad: where the performer faces now, about ``W``'s vertical (0: as at calibration, the camera).
    Returns:
        the calibration with each IMU world's heading corrected so that every bone's heading is the
        pose's; tilts are untouched (gravity does not drift). NaN rows are left as they are.
    """
    q = _check_window(imu_quats, "imu_quats")
    q_now = mean_quat(q)  # 6 x 4
    measured = calibration.bone_quats_world(q_now)  # 6 x 4
    wanted = quat_mul(yaw_quat(facing_yaw_rad), reset_pose_bone_quats(pose))
    delta = quat_mul(wanted, quat_conj(measured))  # the correction, applied in W
    yaw = np.where(np.all(np.isfinite(delta), axis=-1), _yaw_of(quat_normalize(np.nan_to_num(delta))), 0.0)
    log.info("heading reset (%s): corrections %s deg", pose.value, np.round(np.degrees(yaw), 1))
    return calibration.with_world_headings(yaw)


__all__ = [
    "Calibration",
    "CalibrationConfig",
    "CameraFit",
    "HEADING_POSE_INSTRUCTIONS",
    "HeadingMethod",
    "ImuWorldUp",
    "ResetPose",
    "SensorQuality",
    "calibrate_tpose",
    "detect_stillness",
    "fit_camera_to_tpose",
    "heading_pose_bone_quats",
    "heading_pose_local_quats",
    "heading_reset",
    "reset_pose_bone_quats",
]
