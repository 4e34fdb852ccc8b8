"""Simulated devices: what they report is the performer, through the device model."""

from __future__ import annotations

import time

import cv2
import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from polling import wait_until
from sensors.device import DeviceConfig, DeviceState
from sensors.samples import ImuSample, KeypointFrame
from sensors.simulated import SimCameraConfig, SimClock, SimImuConfig, SimulatedCamera, SimulatedImu
from vimcan_core.camera import PinholeCamera
from vimcan_core.errors import DeviceError
from vimcan_core.performer import Motion, Performer
from vimcan_core.rotations import quat_angle
from vimcan_core.skeleton import ImuSite

FAST_RECONNECT = DeviceConfig(reconnect_initial_s=0.05, reconnect_max_s=0.2)


def _run(devices, seconds: float) -> None:
    for d in devices:
        d.start()
    try:
        time.sleep(seconds)
    finally:
        for d in devices:
            d.stop()


def _samples(device) -> list:
    return device.buffer.snapshot()


def _xyzw(q_wxyz: np.ndarray) -> np.ndarray:
    return np.asarray(q_wxyz)[..., [1, 2, 3, 0]]


def test_imu_quaternions_equal_the_bone_orientations_at_the_six_sites() -> None:
    performer = Performer(seed=1)
    clock = SimClock(performer, performer_start_s=6.0)  # mid-walk: everything moves
    imus = {
        site: SimulatedImu(f"imu-{site.name}", performer, site,
                           SimImuConfig(clock_offset_s=100.0 * int(site), drift_ppm=40.0 - 15.0 * int(site),
                                        jitter_s=0.003, seed=int(site)), clock=clock)
        for site in ImuSite
    }
    _run(imus.values(), 0.6)
    for site, imu in imus.items():
        samples = _samples(imu)
        assert len(samples) >= 25, f"{site.name}: only {len(samples)} samples in 0.6 s at 60 Hz"
        cfg = imu.sim_config
        dev = np.array([s.device_time_s for s in samples])
        # invert the device clock to find each sample's true instant, then ask the performer
        t_true = (dev - cfg.clock_offset_s) / (1.0 + cfg.drift_ppm * 1e-6) + clock.origin_host_s
        truth = performer.pose_at(clock.performer_time(t_true)).site_quats_world[:, site]
        measured = np.array([s.quat_wxyz for s in samples])
        assert quat_angle(measured, truth).max() < 1e-6
        assert quat_angle(measured[0], measured[-1]) > 0.05  # the bone did move
        # delivered after the measurement, by at least the transport latency
        host = np.array([s.host_time_s for s in samples])
        assert np.all(host >= t_true + cfg.latency_s - 1e-9)
        # 60 Hz on the device clock, scaled by the drift
        np.testing.assert_allclose(np.diff(dev), (1.0 + cfg.drift_ppm * 1e-6) / 60.0, rtol=1e-9)
        assert np.all(np.diff([s.seq for s in samples]) == 1)


def test_mounting_and_heading_follow_the_documented_convention() -> None:
    performer = Performer()
    clock = SimClock(performer, performer_start_s=13.0)
    mount = Rotation.from_euler("xyz", [20.0, -35.0, 70.0], degrees=True)  # q_sensor_from_bone
    heading_deg = 63.0
    cfg = SimImuConfig(mount_quat_sensor_from_bone=tuple(np.roll(mount.as_quat(), 1)), world_heading_deg=heading_deg)
    imu = SimulatedImu("imu", performer, ImuSite.RIGHT_FOREARM, cfg, clock=clock)
    _run([imu], 0.3)
    samples = _samples(imu)
    assert samples
    t_true = np.array([s.device_time_s for s in samples]) + clock.origin_host_s
    pose = performer.pose_at(clock.performer_time(t_true))
    # independent composition with scipy (scalar-last quaternions)
    bone = Rotation.from_quat(_xyzw(pose.site_quats_world[:, ImuSite.RIGHT_FOREARM]))
    world_from_imuworld = Rotation.from_euler("y", heading_deg, degrees=True)
    expected = world_from_imuworld.inv() * bone * mount.inv()
    measured = Rotation.from_quat(_xyzw(np.array([s.quat_wxyz for s in samples])))
    assert np.max((expected.inv() * measured).magnitude()) < 1e-6
    # free acceleration is expressed in the IMU's own world frame
    acc_world = pose.site_acc_free_mps2[:, ImuSite.RIGHT_FOREARM]
    np.testing.assert_allclose([s.acc_free_mps2 for s in samples], world_from_imuworld.inv().apply(acc_world), atol=1e-9)


def test_keypoints_equal_an_independent_projection_of_the_joints() -> None:
    performer = Performer()
    clock = SimClock(performer, performer_start_s=3.5)
    camera = PinholeCamera.looking_at(np.array([0.4, 1.3, 3.2]), np.array([0.0, 1.0, -0.3]))
    cam = SimulatedCamera("cam", performer, camera, SimCameraConfig(render_preview=True), clock=clock)
    _run([cam], 0.5)
    frames = [f for f in _samples(cam) if isinstance(f, KeypointFrame)]
    assert len(frames) >= 8
    rot = Rotation.from_quat(_xyzw(np.array(camera.quat_cam_from_world))).as_matrix()
    rvec, _ = cv2.Rodrigues(rot)
    tvec = -rot @ np.array(camera.position_world_m)
    k = np.array([[camera.fx_px, 0, camera.cx_px], [0, camera.fy_px, camera.cy_px], [0, 0, 1.0]])
    for f in frames:
        joints = performer.pose_at(clock.performer_time(f.host_time_s)).joints_world_m
        expected, _ = cv2.projectPoints(joints.reshape(-1, 1, 3), rvec, tvec, k, None)
        np.testing.assert_allclose(f.keypoints_px, expected.reshape(-1, 2), atol=1e-6)
        np.testing.assert_array_equal(f.confidence, 1.0)
        assert (f.width_px, f.height_px) == (640, 480)
        # the preview is dark except where the skeleton is drawn
        img = f.image_bgr
        assert img.shape == (480, 640, 3)
        u, v = np.round(f.keypoints_px[0]).astype(int)
        assert img[v, u].max() > 200 and np.median(img) < 40
    # capture instants are on the 30 Hz grid
    np.testing.assert_allclose(np.diff([f.host_time_s for f in frames]), 1.0 / 30.0, atol=1e-9)


def test_joints_outside_the_image_have_zero_confidence() -> None:
    performer = Performer(script=Motion.T_POSE)
    camera = PinholeCamera.looking_at(np.array([0.0, 1.2, 1.0]), np.array([0.0, 1.2, 0.0]), hfov_deg=40.0)
    cam = SimulatedCamera("close", performer, camera)
    kp, conf = cam.keypoints(performer.pose_at(0.0).joints_world_m)
    inside = (kp[:, 0] >= 0) & (kp[:, 0] < 640) & (kp[:, 1] >= 0) & (kp[:, 1] < 480)
    assert 0 < conf.sum() < 17
    np.testing.assert_array_equal(conf, inside.astype(float))


def test_pixel_noise_has_the_configured_spread() -> None:
    performer = Performer(script=Motion.STILL)
    clock = SimClock(performer)
    camera = PinholeCamera()
    cam = SimulatedCamera("noisy", performer, camera, SimCameraConfig(pixel_noise_px=2.0, render_preview=False, seed=4),
                          clock=clock)
    _run([cam], 0.7)
    frames = _samples(cam)
    clean, _ = cam.keypoints(performer.pose_at(0.0).joints_world_m)
    err = np.array([f.keypoints_px for f in frames]) - clean
    assert 1.5 < err.std() < 2.5
    assert all(f.image_bgr is None for f in frames)


def test_dropped_packets_leave_sequence_gaps_and_are_counted() -> None:
    performer = Performer()
    imu = SimulatedImu("lossy", performer, ImuSite.HEAD, SimImuConfig(drop_rate=0.3, seed=7))
    _run([imu], 1.0)
    samples = _samples(imu)
    seq = np.array([s.seq for s in samples])
    gaps = int(np.sum(np.diff(seq) - 1))
    dropped = imu.stats().dropped
    assert gaps > 5
    # drops after the last delivered packet are counted but cannot show as a gap yet
    assert gaps <= dropped <= gaps + 8
    assert dropped + len(samples) == imu.sent
    assert 0.15 < dropped / imu.sent < 0.45


def test_jitter_delays_delivery() -> None:
    performer = Performer()
    clock = SimClock(performer)
    imu = SimulatedImu("jittery", performer, ImuSite.PELVIS, SimImuConfig(latency_s=0.005, jitter_s=0.006, seed=2),
                       clock=clock)
    _run([imu], 0.8)
    samples = _samples(imu)
    delay = np.array([s.host_time_s - (s.device_time_s + clock.origin_host_s) for s in samples])
    assert delay.min() >= 0.005
    assert delay.mean() > 0.008  # the exponential jitter adds ~6 ms on average
    # the clock-offset estimate (minimum filter) finds the offset plus the smallest delay
    assert abs(imu.stats().clock_offset_s - clock.origin_host_s - delay.min()) < 1e-9


def test_unplugged_imu_reports_loss_and_reconnects_while_others_stream() -> None:
    performer = Performer()
    clock = SimClock(performer)
    cfg = SimImuConfig(device=FAST_RECONNECT)
    lost = SimulatedImu("unplugged", performer, ImuSite.LEFT_LOWER_LEG, cfg, clock=clock)
    other = SimulatedImu("steady", performer, ImuSite.RIGHT_LOWER_LEG, cfg, clock=clock)
    states: list[DeviceState] = []
    lost.add_state_listener(lambda _id, s: states.append(s))
    lost.start()
    other.start()
    try:
        assert wait_until(lambda: len(lost.buffer) > 5 and len(other.buffer) > 5)
        lost.simulate_unplug(0.5)
        assert wait_until(lambda: lost.state in (DeviceState.DISCONNECTED, DeviceState.RECONNECTING), 1.0)
        count_lost, count_other = lost.buffer.total_pushed, other.buffer.total_pushed
        time.sleep(0.3)
        assert lost.buffer.total_pushed == count_lost  # nothing while unplugged
        assert other.buffer.total_pushed >= count_other + 12  # the other one kept streaming (~18 samples)
        assert "unplug" in (lost.stats().last_error or "")
        assert wait_until(lambda: lost.state == DeviceState.STREAMING and lost.buffer.total_pushed > count_lost + 5, 3.0)
    finally:
        lost.stop()
        other.stop()
    assert lost.stats().reconnects >= 1
    assert other.stats().reconnects == 0
    assert DeviceState.DISCONNECTED in states and states.index(DeviceState.DISCONNECTED) < len(states) - 1
    # a gap of at least the unplug time in the delivered samples
    host = np.array([s.host_time_s for s in lost.buffer.snapshot()])
    assert np.diff(host).max() >= 0.45


def test_hold_switches_what_the_imus_report() -> None:
    performer = Performer()
    imu = SimulatedImu("wizard", performer, ImuSite.LEFT_FOREARM)
    imu.start()
    try:
        assert wait_until(lambda: len(imu.buffer) > 3)
        performer.hold(Motion.T_POSE)
        n = imu.buffer.total_pushed
        assert wait_until(lambda: imu.buffer.total_pushed > n + 5)
        latest: ImuSample = imu.buffer.latest()
        assert quat_angle(np.array(latest.quat_wxyz), np.array([1.0, 0, 0, 0])) < 1e-9
        performer.hold(Motion.MOVE_SITE, ImuSite.LEFT_FOREARM)
        n = imu.buffer.total_pushed
        assert wait_until(lambda: imu.buffer.total_pushed > n + 30)
        recent = np.array([s.quat_wxyz for s in imu.buffer.snapshot()[-30:]])
        assert quat_angle(recent, recent[:1]).max() > 0.2  # the forearm moves
    finally:
        imu.stop()


def test_rates_must_fit_the_simulation_grid() -> None:
    with pytest.raises(DeviceError, match="must divide"):
        SimulatedImu("odd", Performer(), ImuSite.HEAD, SimImuConfig(rate_hz=50.0))
    with pytest.raises(ValueError, match="drop_rate"):
        SimImuConfig(drop_rate=1.5)


def test_the_demo_rig_follows_the_wizard_prompts_with_a_transition() -> None:
    """``DemoRig.follow_prompt``: the simulated IMUs report the prompted pose once the transition is
    over (through their mountings and world headings), and something in between during it."""
    from sensors.demo import DemoConfig, build_demo_rig
    from vimcan_core.calibration import heading_pose_bone_quats
    from vimcan_core.performer import PerformerPrompt
    from vimcan_core.skeleton import IMU_JOINT

    rig = build_demo_rig(DemoConfig(random_mount_deg=40.0, random_heading_deg=90.0, prompt_transition_s=0.3))
    imu = rig.imus[ImuSite.RIGHT_FOREARM]
    imu.start()
    try:
        assert wait_until(lambda: len(imu.buffer) > 3)
        rig.follow_prompt(PerformerPrompt.HEADING_POSE)
        switched = time.monotonic()
        assert wait_until(lambda: imu.buffer.latest().host_time_s > switched + 0.5, timeout_s=5.0)
        expected = imu.measured_quat(heading_pose_bone_quats()[IMU_JOINT[ImuSite.RIGHT_FOREARM]])
        samples = [s for s in imu.buffer.snapshot() if s.host_time_s > switched - 0.05]
        q = np.array([s.quat_wxyz for s in samples])
        err = quat_angle(q, expected)
        assert err[-1] < 1e-6  # holding the heading pose
        assert err[0] > 0.3  # it started from the loop (arms not yet down and still)
        steps = quat_angle(q[1:], q[:-1])
        assert steps.max() < 0.25  # moved there over the transition, not in one jump (60 Hz samples)
    finally:
        imu.stop()
    assert rig.performer.script.motion == Motion.POSE
