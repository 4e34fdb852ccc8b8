"""T-pose calibration against a simulated rig built here from vimcan_core alone.

The rig: a performer (the default rest pose) standing at a random heading in the simulator's
world G, a level camera in front of them, and six IMUs strapped with random mountings, each
reporting in its own world frame (random heading, Y-up or Z-up). The calibration must find
every mounting and, through it, the bone orientations in the camera frame.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest

from vimcan_core.calibration import (
    Calibration,
    CalibrationConfig,
    HeadingMethod,
    ImuWorldUp,
    ResetPose,
    calibrate_tpose,
    heading_pose_local_quats,
    heading_reset,
    reset_pose_bone_quats,
)
from vimcan_core.camera import PinholeCamera
from vimcan_core.errors import CalibrationError, InputShapeError
from vimcan_core.kinematics import forward_kinematics
from vimcan_core.rotations import (
    IDENTITY_QUAT,
    quat_angle,
    quat_conj,
    quat_from_axis_angle,
    quat_from_rotvec,
    quat_mul,
    quat_normalize,
    quat_rotate,
    random_quat,
    yaw_quat,
)
from vimcan_core.skeleton import IMU_JOINT, NUM_IMUS, NUM_JOINTS, ImuSite, Joint, default_rest_pose
from vimcan_core.stillness import StillnessConfig, detect_stillness

G_MPS2 = 9.81
REST = default_rest_pose()
RATE_HZ = 60.0


@dataclass(frozen=True)
class Noise:
    orientation_deg: float = 0.0  # white noise per IMU sample (rotation angle std)
    keypoint_px: float = 0.0  # per keypoint and frame
    residual_deg: float = 0.0  # each held pose is off at every joint of the IMU chains (std per axis, local)
    limb_elevation_deg: float = 0.0  # T-pose arms and legs raised or lowered in the image plane (std, at shoulders and hips)
    acc_bias_mps2: float = 0.0


CLEAN = Noise()
REALISTIC = Noise(orientation_deg=2.0, keypoint_px=3.0, residual_deg=0.3, limb_elevation_deg=3.0, acc_bias_mps2=0.1)
JITTERED_JOINTS = (Joint.PELVIS, Joint.SPINE, Joint.THORAX, Joint.NECK, Joint.LEFT_SHOULDER, Joint.LEFT_ELBOW,
                   Joint.RIGHT_SHOULDER, Joint.RIGHT_ELBOW, Joint.LEFT_HIP, Joint.LEFT_KNEE, Joint.RIGHT_HIP, Joint.RIGHT_KNEE)
LIMB_ROOTS = (Joint.LEFT_SHOULDER, Joint.RIGHT_SHOULDER, Joint.LEFT_HIP, Joint.RIGHT_HIP)


class Rig:
    """Performer, camera and six IMUs in the simulator's world G (Y up)."""

    def __init__(self, seed: int, noise: Noise, z_up_worlds: bool = False) -> None:
        self.rng = np.random.default_rng(seed)
        self.noise = noise
        rng = self.rng
        self.facing_rad = rng.uniform(-0.6, 0.6)  # the performer's heading in G
        facing = yaw_quat(self.facing_rad)
        eye = quat_rotate(facing, [rng.uniform(-0.4, 0.4), rng.uniform(1.0, 1.6), rng.uniform(3.0, 4.0)])
        self.camera = PinholeCamera.looking_at(eye, [0.0, 0.95, 0.0])
        self.q_b_s = random_quat(rng, (NUM_IMUS,))  # mounting: sensor frame into bone frame
        up_conv = quat_from_axis_angle([1.0, 0.0, 0.0], -np.pi / 2) if z_up_worlds else IDENTITY_QUAT
        self.q_g_e = quat_mul(yaw_quat(rng.uniform(-np.pi, np.pi, NUM_IMUS)), up_conv)  # 6 x 4: IMU worlds into G
        self.acc_bias = rng.normal(0.0, noise.acc_bias_mps2 + 1e-12, (NUM_IMUS, 3))

    # ---------------------------------------------------------------- poses
    def local_pose(self, local: np.ndarray, jitter: bool, lift: bool = False) -> np.ndarray:
        """17 x 4 local rotations of a pose at the performer's heading, held as imperfectly as ``noise`` says."""
        local = local.copy()
        if jitter:
            for j in JITTERED_JOINTS:
                local[j] = quat_mul(local[j], quat_from_rotvec(self.rng.normal(0.0, np.radians(self.noise.residual_deg) + 1e-12, 3)))
            for j in LIMB_ROOTS if lift else ():
                lift = quat_from_axis_angle([0.0, 0.0, 1.0], np.radians(self.rng.normal(0.0, self.noise.limb_elevation_deg + 1e-12)))
                local[j] = quat_mul(lift, local[j])
        local[0] = quat_mul(yaw_quat(self.facing_rad), local[0])
        return quat_normalize(local)

    def tpose_local(self) -> np.ndarray:
        return self.local_pose(np.tile(IDENTITY_QUAT, (NUM_JOINTS, 1)), True, lift=True)

    def heading_pose_local(self) -> np.ndarray:
        return self.local_pose(heading_pose_local_quats(), True)

    def random_local(self) -> np.ndarray:
        return self.local_pose(quat_from_rotvec(self.rng.normal(0.0, 0.6, (NUM_JOINTS, 3))), False)

    # ------------------------------------------------------------ measuring
    def bones_g(self, local: np.ndarray) -> np.ndarray:
        """6 x 4: true bone orientations at the IMU sites, in G."""
        _, glob = forward_kinematics(local, np.zeros(3), REST)
        return glob[list(IMU_JOINT)]

    def imu_window(self, local: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """What the IMUs report while holding ``local`` for n samples:
        quats N x 6 x 4 (sensor-to-own-world), raw acc N x 6 x 3 (sensor frame), free acc N x 6 x 3."""
        q_g_s = quat_mul(self.bones_g(local), self.q_b_s)  # 6 x 4: q_G_S = q_G_B q_B_S
        q_e_s = quat_mul(quat_conj(self.q_g_e), q_g_s)
        jitter = quat_from_rotvec(self.rng.normal(0.0, np.radians(self.noise.orientation_deg) / np.sqrt(3), (n, NUM_IMUS, 3)))
        quats = quat_normalize(quat_mul(q_e_s[None], jitter))
        acc = quat_rotate(quat_conj(quat_mul(self.q_g_e, quats)), [0.0, G_MPS2, 0.0])  # specific force, sensor frame
        free = np.broadcast_to(self.acc_bias, (n, NUM_IMUS, 3)) + self.rng.normal(0.0, 0.02, (n, NUM_IMUS, 3))
        return quats, acc, free

    def keypoints(self, local: np.ndarray, n: int) -> np.ndarray:
        """N x 17 x 3 (pixels + confidence 1) of the pose, root at the origin."""
        pos, _ = forward_kinematics(local, np.array([0.0, REST.offsets_m[0, 1], 0.0]), REST)
        px = self.camera.project(pos)
        px = px[None] + self.rng.normal(0.0, self.noise.keypoint_px + 1e-12, (n, NUM_JOINTS, 2))
        return np.concatenate((px, np.ones((n, NUM_JOINTS, 1))), axis=-1)

    def calibrate(self, n: int = 90, **kwargs) -> Calibration:
        tpose = self.tpose_local()
        quats, acc, free = self.imu_window(tpose, n)
        heading_pose = self.heading_pose_local()
        heading, _, _ = self.imu_window(heading_pose, n)
        return calibrate_tpose(
            quats, self.keypoints(tpose, n), self.camera, heading_pose_quats=heading,
            heading_pose_keypoints_px=kwargs.pop("heading_keypoints", self.keypoints(heading_pose, n)), imu_acc_sensor_mps2=kwargs.pop("acc", acc), imu_acc_free_mps2=free, **kwargs,
        )


def mounting_errors_deg(rig: Rig, calib: Calibration) -> np.ndarray:
    return np.degrees(quat_angle(calib.q_bone_from_sensor, rig.q_b_s))


def camera_bone_errors_deg(rig: Rig, calib: Calibration, n_poses: int = 20) -> np.ndarray:
    """n_poses x 6: angle between calibrated and true bone orientations in the camera frame, random poses."""
    q_c_g = np.asarray(rig.camera.quat_cam_from_world)
    errs = []
    for _ in range(n_poses):
        local = rig.random_local()
        quats, _, _ = rig.imu_window(local, 1)
        truth = quat_mul(q_c_g, rig.bones_g(local))
        errs.append(np.degrees(quat_angle(calib.bone_quats_camera(quats[0]), truth)))
    return np.array(errs)


@pytest.mark.parametrize("seed", range(5))
def test_clean_rig_mountings_within_1_degree(seed: int) -> None:
    rig = Rig(seed, CLEAN)
    calib = rig.calibrate()
    err = mounting_errors_deg(rig, calib)
    assert err.max() < 1.0, f"mounting errors {np.round(err, 3)} deg"
    assert calib.camera_fit_error_px < 0.5
    assert all(q.ok for q in calib.quality), calib.quality
    assert camera_bone_errors_deg(rig, calib).max() < 1.0


@pytest.mark.parametrize("seed", range(5))
def test_realistic_rig_mountings_within_3_degrees(seed: int) -> None:
    rig = Rig(100 + seed, REALISTIC, z_up_worlds=bool(seed % 2))
    calib = rig.calibrate()
    err = mounting_errors_deg(rig, calib)
    assert err.max() < 3.0, f"mounting errors {np.round(err, 2)} deg"
    cam_err = camera_bone_errors_deg(rig, calib)
    assert np.median(cam_err) < 3.0, f"median camera-frame bone error {np.median(cam_err):.2f} deg"
    np.testing.assert_allclose(calib.acc_offset_mps2, rig.acc_bias, atol=0.02)


def test_world_frame_is_the_performers_tpose_frame() -> None:
    rig = Rig(7, CLEAN)
    calib = rig.calibrate()
    # W = G turned by the performer's heading: so q_W_C = yaw(-facing) * q_G_C
    q_g_c = quat_conj(np.asarray(rig.camera.quat_cam_from_world))
    expected = quat_mul(yaw_quat(-rig.facing_rad), q_g_c)
    assert np.degrees(quat_angle(calib.quat_world_from_camera, expected)) < 0.5
    # a bone of a random pose in W is the simulator's, turned the same way
    local = rig.random_local()
    quats, _, _ = rig.imu_window(local, 1)
    truth_w = quat_mul(yaw_quat(-rig.facing_rad), rig.bones_g(local))
    assert np.degrees(quat_angle(calib.bone_quats_world(quats[0]), truth_w)).max() < 1.0


def test_z_up_worlds_need_the_accelerometer_or_the_declared_axis() -> None:
    rig = Rig(3, CLEAN, z_up_worlds=True)
    # without the accelerometer, the declared up axis does it
    calib = rig.calibrate(acc=None, config=CalibrationConfig(imu_world_up=ImuWorldUp.Z))
    assert mounting_errors_deg(rig, calib).max() < 1.0
    # the wrong declared axis fails: the up axis really is used
    try:
        wrong = rig.calibrate(acc=None, config=CalibrationConfig(imu_world_up=ImuWorldUp.Y))
    except CalibrationError as exc:
        assert "moved too little" in str(exc)
    else:
        assert mounting_errors_deg(rig, wrong).max() > 20.0


def test_tpose_alone_cannot_find_headings_and_says_so() -> None:
    rig = Rig(4, CLEAN)
    tpose = rig.tpose_local()
    quats, acc, _ = rig.imu_window(tpose, 30)
    with pytest.raises(CalibrationError, match="heading pose"):
        calibrate_tpose(quats, rig.keypoints(tpose, 30), rig.camera, imu_acc_sensor_mps2=acc)


def test_sensor_forward_heading_is_exact_for_unyawed_mountings() -> None:
    rig = Rig(5, CLEAN)
    # mountings that only tilt (no yaw about the vertical in the T-pose) and one shared IMU world
    tilts = quat_from_rotvec(np.concatenate((rig.rng.normal(0, 0.5, (NUM_IMUS, 1)), np.zeros((NUM_IMUS, 1)), rig.rng.normal(0, 0.5, (NUM_IMUS, 1))), axis=1))
    rig.q_b_s = tilts
    tpose = rig.tpose_local()
    quats, acc, _ = rig.imu_window(tpose, 30)
    calib = calibrate_tpose(quats, rig.keypoints(tpose, 30), rig.camera, imu_acc_sensor_mps2=acc,
                            config=CalibrationConfig(heading=HeadingMethod.SENSOR_FORWARD))
    # the performer's heading in G is absorbed into W, so compare in the camera frame
    assert camera_bone_errors_deg(rig, calib).max() < 1.0


def test_heading_pose_with_too_little_motion_is_rejected() -> None:
    rig = Rig(6, CLEAN)
    tpose = rig.tpose_local()
    quats, acc, _ = rig.imu_window(tpose, 30)
    with pytest.raises(CalibrationError, match="moved too little"):
        calibrate_tpose(quats, rig.keypoints(tpose, 30), rig.camera, imu_acc_sensor_mps2=acc, heading_pose_quats=quats)


def test_missing_sensor_gives_nan_rows_and_zero_quality() -> None:
    rig = Rig(8, CLEAN)
    tpose = rig.tpose_local()
    quats, acc, _ = rig.imu_window(tpose, 30)
    heading, _, _ = rig.imu_window(rig.heading_pose_local(), 30)
    quats[:, ImuSite.HEAD] = np.nan
    acc[:, ImuSite.HEAD] = np.nan
    heading[:, ImuSite.HEAD] = np.nan
    calib = calibrate_tpose(quats, rig.keypoints(tpose, 30), rig.camera, imu_acc_sensor_mps2=acc, heading_pose_quats=heading)
    assert not calib.calibrated[ImuSite.HEAD] and calib.calibrated.sum() == 5
    assert calib.quality[ImuSite.HEAD].score == 0.0
    out = calib.bone_quats_camera(rig.imu_window(rig.random_local(), 1)[0][0])
    assert np.isnan(out[ImuSite.HEAD]).all() and np.isfinite(np.delete(out, ImuSite.HEAD, axis=0)).all()


def test_quality_flags_a_moving_sensor_and_a_bad_tpose() -> None:
    rig = Rig(9, CLEAN)
    tpose = rig.tpose_local()
    quats, acc, _ = rig.imu_window(tpose, 60)
    heading, _, _ = rig.imu_window(rig.heading_pose_local(), 60)
    # the left forearm sensor swings 30 degrees during the capture
    swing = quat_from_axis_angle([0.0, 0.0, 1.0], np.radians(np.linspace(0.0, 30.0, 60)))
    quats[:, ImuSite.LEFT_FOREARM] = quat_mul(quats[:, ImuSite.LEFT_FOREARM], swing)
    kp = rig.keypoints(tpose, 60)
    kp[:, 13, 1] += 60.0  # the left wrist is well below the elbow in the image
    calib = calibrate_tpose(quats, kp, rig.camera, imu_acc_sensor_mps2=acc, heading_pose_quats=heading)
    q = calib.quality
    assert "moved" in q[ImuSite.LEFT_FOREARM].note and q[ImuSite.LEFT_FOREARM].score < 0.1
    assert q[ImuSite.LEFT_FOREARM].tpose_error_deg > 10.0
    assert q[ImuSite.RIGHT_FOREARM].ok and q[ImuSite.RIGHT_FOREARM].score > 0.8


def test_identity_calibration_passes_world_bone_orientations_to_the_camera_frame() -> None:
    camera = PinholeCamera()
    calib = Calibration.identity(camera)
    q_w_b = random_quat(np.random.default_rng(0), (4, NUM_IMUS))
    cam = calib.bone_quats_camera(q_w_b)
    expected = quat_mul(np.asarray(camera.quat_cam_from_world), q_w_b)
    assert np.degrees(quat_angle(cam, expected)).max() < 1e-6
    assert np.degrees(quat_angle(calib.bone_quats_world(q_w_b), q_w_b)).max() < 1e-6
    with pytest.raises(InputShapeError, match="6 x 4"):
        calib.bone_quats_camera(np.zeros((5, 4)))


@pytest.mark.parametrize("pose", list(ResetPose))
def test_heading_reset_removes_per_sensor_drift(pose: ResetPose) -> None:
    rig = Rig(11, CLEAN)
    calib = rig.calibrate()
    # each IMU world drifts by its own yaw
    drift = np.radians(rig.rng.uniform(-40, 40, NUM_IMUS))
    rig.q_g_e = quat_mul(yaw_quat(drift), rig.q_g_e)
    assert camera_bone_errors_deg(rig, calib, 5).max() > 5.0
    # the performer stands in the reset pose, facing the camera as at calibration
    from vimcan_core.kinematics import local_from_global

    bones = np.tile(IDENTITY_QUAT, (NUM_JOINTS, 1))
    for site, q in zip(ImuSite, reset_pose_bone_quats(pose)):
        bones[IMU_JOINT[site]] = q
    local = rig.local_pose(local_from_global(bones), False)
    quats, _, _ = rig.imu_window(local, 10)
    fixed = heading_reset(calib, quats, pose)
    assert camera_bone_errors_deg(rig, fixed).max() < 1.0
    np.testing.assert_allclose(fixed.q_bone_from_sensor, calib.q_bone_from_sensor)


def test_detect_stillness() -> None:
    rng = np.random.default_rng(0)
    t = np.arange(60) / 60.0
    base = random_quat(rng, (NUM_IMUS,))
    q = np.broadcast_to(base, (60, NUM_IMUS, 4)).copy()
    q = quat_mul(q, quat_from_rotvec(rng.normal(0, np.radians(0.2), (60, NUM_IMUS, 3))))  # tremor
    q[:, 2] = quat_mul(q[:, 2], quat_from_axis_angle([1.0, 0, 0], np.linspace(0, np.radians(20), 60)))  # slow 20 deg/s turn
    q[24:36, 3] = quat_mul(q[24:36, 3], quat_from_axis_angle([0, 1.0, 0], np.radians(6)))  # a 0.2 s twitch of 6 deg
    q[:50, 4] = np.nan  # only 10 samples
    q[:, 5] = np.nan
    s = detect_stillness(q, t, StillnessConfig(max_rate_dps=15.0, max_spread_deg=4.0, min_samples=20))
    assert s.still.tolist() == [True, True, False, False, False, False]
    assert s.peak_rate_dps[:2].max() < 5.0 and s.spread_deg[:2].max() < 1.0
    assert 15.0 < s.peak_rate_dps[2] < 25.0 and s.spread_deg[2] > 8.0
    assert s.peak_rate_dps[3] > 20.0 and s.spread_deg[3] > 4.0
    assert s.valid_samples.tolist() == [60, 60, 60, 60, 10, 0]


def test_sloppy_tpose_is_corrected_by_what_the_camera_sees() -> None:
    """A performer whose T-pose is off (limbs 5 degrees up or down, 0.6 degrees at every joint): the
    limb deviations the camera sees are taken out; without that the mountings would be far off."""
    sloppy = Noise(orientation_deg=2.0, keypoint_px=3.0, residual_deg=0.6, limb_elevation_deg=5.0)
    with_camera, without = [], []
    for seed in range(4):
        rig = Rig(300 + seed, sloppy)
        with_camera.append(mounting_errors_deg(rig, rig.calibrate()))
        rig = Rig(300 + seed, sloppy)  # the same performer and rig, calibrated ignoring the camera's view of the limbs
        without.append(mounting_errors_deg(rig, rig.calibrate(config=CalibrationConfig(camera_corrected_sites=()))))
    with_camera, without = np.array(with_camera), np.array(without)
    assert with_camera.mean() < 2.5 and with_camera.max() < 5.0, np.round(with_camera, 2)
    limbs = slice(0, 4)
    assert without[:, limbs].mean() > 2.0 * with_camera[:, limbs].mean(), (np.round(with_camera, 1), np.round(without, 1))
