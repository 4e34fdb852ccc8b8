"""Synthetic sensor signals: IMU mounting and calibration, noise presets (with their numbers),
the virtual webcam, keypoints and augmentation, checked on real CMU motion."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from vimcan_core.bvh.reader import read_bvh
from vimcan_core.camera import denormalize_keypoints
from vimcan_core.retarget import RetargetedClip, retarget
from vimcan_core.rotations import quat_angle, quat_conj, quat_mul, quat_rotate, quat_to_rotvec, random_quat
from vimcan_core.skeleton import IMU_CHILD_JOINT, IMU_JOINT, MIRROR, PARENTS, Joint
from vimcan_core.synthesis import IMU_PRESETS, KEYPOINT_PRESETS, NoisePreset, WebcamConfig, random_webcam, synthesize
from vimcan_core.synthesis.augment import mirror, random_bone_factors, rotate_yaw, scale_bones
from vimcan_core.synthesis.imu import calibrated_bone_quats, free_acceleration, simulate_imus, site_positions
from vimcan_core.synthesis.noise import ImuNoise, KeypointNoise
from vimcan_core.synthesis.sample import AugmentConfig
from vimcan_core.synthesis.webcam import synthesize_keypoints

IDENTITY = np.array([1.0, 0.0, 0.0, 0.0])
SOURCE_BONES = {0: ("lForeArm", "lHand"), 1: ("rForeArm", "rHand"), 2: ("lShin", "lFoot"), 3: ("rShin", "rFoot")}


@pytest.fixture(scope="module")
def cmu() -> tuple[RetargetedClip, dict[int, np.ndarray]]:
    """A real clip (02_05, 30 Hz) and the T-pose direction of each limb IMU's bone."""
    from tests.conftest import SHARED_DATA

    path = SHARED_DATA / "cmu" / "subjects" / "02" / "02_05.bvh.gz"
    if not path.is_file():
        pytest.skip(f"real data not found at {path}")
    m = read_bvh(path)
    rest = m.rest_positions()
    dirs = {}
    for site, (a, b) in SOURCE_BONES.items():
        d = rest[m.index(b)] - rest[m.index(a)]
        dirs[site] = d / np.linalg.norm(d)
    return retarget(m), dirs


def _bone_dirs(joints: np.ndarray, site: int) -> np.ndarray:
    d = joints[..., IMU_CHILD_JOINT[site], :] - joints[..., IMU_JOINT[site], :]
    return d / np.linalg.norm(d, axis=-1, keepdims=True)


# ---- IMUs ------------------------------------------------------------------------------


def test_clean_calibration_undoes_the_random_mounting_exactly(cmu) -> None:
    clip, _ = cmu
    rng = np.random.default_rng(1)
    sig = simulate_imus(clip.bone_quats, clip.joints_world_m, clip.fps, rng, IMU_PRESETS[NoisePreset.CLEAN])
    raw_err = np.degrees(quat_angle(sig.quats_world_sensor, clip.bone_quats))
    assert raw_err.mean() > 20.0  # the raw readings include the mounting rotation
    err = np.degrees(quat_angle(calibrated_bone_quats(sig), clip.bone_quats))
    assert err.max() < 1e-5


@pytest.mark.parametrize(
    "noise, lo, hi",
    [
        (ImuNoise(white_deg=2.0), 1.8, 2.2),  # RMS angle of the white noise
        (ImuNoise(mounting_residual_deg=3.0), 2.4, 3.6),  # RMS over sensors and clips
    ],
)
def test_orientation_noise_has_the_documented_size(noise: ImuNoise, lo: float, hi: float) -> None:
    rng = np.random.default_rng(2)
    bone = random_quat(rng, (50, 6))
    joints = rng.normal(size=(50, 17, 3))
    errs = []
    for _ in range(40):
        sig = simulate_imus(bone, joints, 30.0, rng, noise)
        errs.append(np.degrees(quat_angle(calibrated_bone_quats(sig), bone)))
    rms = float(np.sqrt(np.mean(np.square(errs))))
    assert lo < rms < hi, rms


def test_heading_drift_is_about_world_up_slow_and_at_most_5_degrees() -> None:
    rng = np.random.default_rng(3)
    bone = random_quat(rng, (600, 6))  # 20 s at 30 Hz
    noise = ImuNoise(heading_drift_max_deg=5.0)
    worst = 0.0
    for _ in range(20):
        est = calibrated_bone_quats(simulate_imus(bone, np.zeros((600, 17, 3)), 30.0, rng, noise))
        delta = quat_mul(est, quat_conj(bone))  # world-frame error rotation
        rv = quat_to_rotvec(delta)
        np.testing.assert_allclose(rv[..., [0, 2]], 0.0, atol=1e-9)  # only about +Y
        assert np.abs(np.diff(np.degrees(rv[..., 1]), axis=0)).max() < 0.2  # slow: < 0.2 deg per frame
        worst = max(worst, float(np.degrees(np.abs(rv[..., 1])).max()))
    assert 2.0 < worst <= 5.0


def test_timing_jitter_samples_between_neighbouring_frames() -> None:
    rng = np.random.default_rng(4)
    t = np.arange(300) / 30.0
    angle = 2.0 * t  # 2 rad/s about X
    bone = np.stack([np.cos(angle / 2), np.sin(angle / 2), 0 * t, 0 * t], -1)[:, None].repeat(6, 1)
    est = calibrated_bone_quats(simulate_imus(bone, np.zeros((300, 17, 3)), 30.0, rng, ImuNoise(timing_jitter_ms=8.0)))
    dt_s = np.angle(np.exp(1j * (2 * np.arctan2(est[..., 1], est[..., 0]) - angle[:, None])))[1:-1] / 2.0
    assert 0.006 < dt_s.std() < 0.010  # about 8 ms
    assert np.abs(dt_s).max() <= 1 / 30 + 1e-9


def test_realistic_imu_preset_errors() -> None:
    rng = np.random.default_rng(5)
    bone = np.broadcast_to(random_quat(rng, (1, 6)), (300, 6, 4))  # a still performer
    errs = [np.degrees(quat_angle(calibrated_bone_quats(simulate_imus(bone, np.zeros((300, 17, 3)), 30.0, rng, IMU_PRESETS[NoisePreset.REALISTIC])), bone)) for _ in range(10)]
    # still bones: white noise (2) + heading drift (<= 5) + residual mounting (3 deg RMS)
    assert 2.5 < float(np.mean(errs)) < 8.0


def test_free_acceleration_of_a_parabola_and_site_positions() -> None:
    t = np.arange(30)[:, None, None] / 30.0
    pos = np.concatenate([1.5 * t**2, 0 * t, -0.5 * 9.0 * t**2], axis=-1).repeat(6, 1)  # a = (3, 0, -9)
    np.testing.assert_allclose(free_acceleration(pos, 30.0), np.broadcast_to([3.0, 0.0, -9.0], pos.shape), atol=1e-9)
    joints = np.random.default_rng(0).normal(size=(4, 17, 3))
    np.testing.assert_allclose(site_positions(joints)[:, 0], 0.5 * (joints[:, Joint.LEFT_ELBOW] + joints[:, Joint.LEFT_WRIST]))


# ---- webcam and keypoints ----------------------------------------------------------------


def test_random_webcams_are_placed_as_documented(cmu) -> None:
    clip, _ = cmu
    rng = np.random.default_rng(6)
    cfg = WebcamConfig()
    floor = clip.joints_world_m[..., 1].min() - 0.08
    centre = clip.joints_world_m[:, 0].mean(axis=0)
    for _ in range(30):
        cam = random_webcam(rng, clip.joints_world_m, cfg)
        pos = np.asarray(cam.position_world_m)
        assert 2.0 - 1e-9 <= np.hypot(pos[0] - centre[0], pos[2] - centre[2]) <= 5.0 + 1e-9
        assert 0.8 - 1e-9 <= pos[1] - floor <= 1.8 + 1e-9
        assert (cam.width_px, cam.height_px) in cfg.resolutions
        hfov = np.degrees(2 * np.arctan(cam.width_px / 2 / cam.fx_px))
        assert 50.0 - 1e-6 <= hfov <= 75.0 + 1e-6


def test_clean_keypoints_are_the_normalised_projection(cmu) -> None:
    clip, _ = cmu
    rng = np.random.default_rng(7)
    cam = random_webcam(rng, clip.joints_world_m)
    kp = synthesize_keypoints(cam, clip.joints_world_m, rng, KEYPOINT_PRESETS[NoisePreset.CLEAN])
    px = denormalize_keypoints(kp[..., :2], cam.width_px, cam.height_px)
    np.testing.assert_allclose(px, cam.project(clip.joints_world_m), atol=1e-6)
    inside = (px[..., 0] >= 0) & (px[..., 0] < cam.width_px) & (px[..., 1] >= 0) & (px[..., 1] < cam.height_px)
    np.testing.assert_array_equal(kp[..., 2], np.where(inside, 1.0, 0.1))


def test_realistic_keypoint_noise_scales_with_the_person_and_has_outliers_and_swaps(cmu) -> None:
    clip, _ = cmu
    rng = np.random.default_rng(8)
    errs, outl, swapped, confs = [], [], [], []
    base = KEYPOINT_PRESETS[NoisePreset.REALISTIC]
    for _ in range(20):
        cam = random_webcam(rng, clip.joints_world_m)
        px_true = cam.project(clip.joints_world_m)
        height = np.median(px_true[..., 1].max(1) - px_true[..., 1].min(1))
        kp = synthesize_keypoints(cam, clip.joints_world_m, rng, replace(base, swap_prob=0.0))
        d = np.linalg.norm(denormalize_keypoints(kp[..., :2], cam.width_px, cam.height_px) - px_true, axis=-1) / height
        errs.append(np.median(d[:, [Joint.THORAX, Joint.NECK, Joint.HEAD]]))  # joints with noise scale 1
        outl.append(np.mean(d > 0.09))
        confs.append(kp[..., 2])
        sw = synthesize_keypoints(cam, clip.joints_world_m, rng, KeypointNoise(swap_prob=0.05))
        swapped.append(np.all(np.abs(sw[:, list(MIRROR), :2] - (np.clip((px_true / cam.width_px * 2 - [1, cam.height_px / cam.width_px]), -3, 3))) < 1e-9, axis=(1, 2)))
    # white 0.8 % + slow 1.0 % of the height per axis: median 2D error about 1.5 % of the height
    assert 0.009 < float(np.median(errs)) < 0.025
    assert 0.005 < float(np.mean(outl)) < 0.03  # about 1 % outliers
    c = np.concatenate(confs)
    assert c.min() >= 0.0 and c.max() <= 1.0 and 0.02 < np.mean(c < 0.5) < 0.1
    sw_frac = float(np.mean(np.concatenate(swapped)))
    assert 0.05 < sw_frac < 0.3  # 5 % of frames start a swap of 1-4 frames


# ---- augmentation ----------------------------------------------------------------------------


def test_mirror_is_an_involution_and_keeps_bones_consistent(cmu) -> None:
    clip, dirs = cmu
    j, q = clip.joints_world_m, clip.bone_quats
    j2, q2 = mirror(*mirror(j, q))
    np.testing.assert_allclose(j2, j)
    np.testing.assert_allclose(q2, q)
    jm, qm = mirror(j, q)
    flip = np.array([-1.0, 1.0, 1.0])
    np.testing.assert_allclose(jm[:, Joint.LEFT_WRIST], j[:, Joint.RIGHT_WRIST] * flip)
    # the mirrored right forearm IMU carries the mirrored left forearm's T-pose direction onto its bone
    np.testing.assert_allclose(quat_rotate(qm[:, 1], dirs[0] * flip), _bone_dirs(jm, 1), atol=1e-6)
    np.testing.assert_allclose(mirror(j[:1], np.broadcast_to(IDENTITY, (1, 6, 4)))[1], np.broadcast_to(IDENTITY, (1, 6, 4)))


def test_rotation_about_the_vertical_and_bone_scaling(cmu) -> None:
    clip, dirs = cmu
    j, q = clip.joints_world_m, clip.bone_quats
    jr, qr = rotate_yaw(j, q, 0.7)
    np.testing.assert_allclose(quat_rotate(qr[:, 2], dirs[2]), _bone_dirs(jr, 2), atol=1e-6)
    np.testing.assert_allclose(jr[..., 1], j[..., 1])
    f = random_bone_factors(np.random.default_rng(0))
    assert np.allclose(f, f[list(MIRROR)])
    js = scale_bones(j, f)
    np.testing.assert_allclose(js[:, 0], j[:, 0])
    for c, p in enumerate(PARENTS):
        if p >= 0:
            np.testing.assert_allclose(js[:, c] - js[:, p], f[c] * (j[:, c] - j[:, p]), atol=1e-12)


# ---- a whole sample ---------------------------------------------------------------------------


def test_clean_sample_is_consistent_in_the_camera_frame(cmu) -> None:
    clip, dirs = cmu
    rng = np.random.default_rng(9)
    s = synthesize(clip.joints_world_m, clip.bone_quats, clip.fps, rng, NoisePreset.CLEAN, AugmentConfig())
    assert s.keypoints.shape == (clip.num_frames, 17, 3) and s.quats.shape == (clip.num_frames, 6, 4)
    np.testing.assert_allclose(s.target[:, 0], 0.0)
    # IMU quats are camera-from-bone: they carry the T-pose directions onto the target's bones
    for site in range(4):
        np.testing.assert_allclose(quat_rotate(s.quats[:, site], dirs[site]), _bone_dirs(s.target, site), atol=1e-6)
    # the keypoints are the projection of the (augmented) camera-frame joints
    root_cam = s.camera.world_to_camera(clip.joints_world_m[:, :1])  # the pelvis is never moved by augmentation
    px = s.camera.project_camera(s.target + root_cam)
    np.testing.assert_allclose(denormalize_keypoints(s.keypoints[..., :2], s.camera.width_px, s.camera.height_px), px, atol=1e-6)


def test_synthesis_is_deterministic_for_a_seed(cmu) -> None:
    clip, _ = cmu
    a = synthesize(clip.joints_world_m, clip.bone_quats, 30.0, np.random.default_rng(3), NoisePreset.REALISTIC, AugmentConfig())
    b = synthesize(clip.joints_world_m, clip.bone_quats, 30.0, np.random.default_rng(3), NoisePreset.REALISTIC, AugmentConfig())
    c = synthesize(clip.joints_world_m, clip.bone_quats, 30.0, np.random.default_rng(4), NoisePreset.REALISTIC, AugmentConfig())
    np.testing.assert_array_equal(a.keypoints, b.keypoints)
    np.testing.assert_array_equal(a.quats, b.quats)
    assert not np.allclose(a.keypoints, c.keypoints)
