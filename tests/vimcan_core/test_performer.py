"""The procedural performer: a pure, smooth, looping, physically plausible function of time."""

from __future__ import annotations

import numpy as np
import pytest

from vimcan_core.kinematics import forward_kinematics
from vimcan_core.performer import Motion, Performer, PerformerScript
from vimcan_core.rotations import quat_angle, quat_from_rotvec, quat_mul, quat_rotate
from vimcan_core.skeleton import IMU_JOINT, NUM_JOINTS, ImuSite, Joint, PARENTS, default_rest_pose

RATE_HZ = 120.0


@pytest.fixture(scope="module")
def performer() -> Performer:
    return Performer()


@pytest.fixture(scope="module")
def loop(performer: Performer):
    """One whole loop at 120 Hz."""
    t = np.arange(0.0, performer.duration_s, 1.0 / RATE_HZ)
    return t, performer.pose_at(t)


def test_pose_is_a_pure_function_of_time_and_vectorised(performer: Performer) -> None:
    t = np.array([0.3, 5.7, 13.1, 20.9])
    batch = performer.pose_at(t)
    for k, tk in enumerate(t):
        single = performer.pose_at(float(tk))
        np.testing.assert_allclose(single.joints_world_m, batch.joints_world_m[k], atol=1e-12)
        np.testing.assert_allclose(single.global_quats, batch.global_quats[k], atol=1e-12)
    again = Performer(seed=0).pose_at(t)
    np.testing.assert_array_equal(again.joints_world_m, batch.joints_world_m)
    other = Performer(seed=3).pose_at(t)
    assert np.abs(other.joints_world_m - batch.joints_world_m).max() > 1e-3  # the seed varies the motion


def test_fields_are_consistent_with_forward_kinematics(loop) -> None:
    t, pose = loop
    assert pose.local_quats.shape == (len(t), NUM_JOINTS, 4)
    assert pose.joints_world_m.shape == (len(t), NUM_JOINTS, 3)
    joints, glob = forward_kinematics(pose.local_quats, pose.root_world_m, default_rest_pose())
    np.testing.assert_allclose(joints, pose.joints_world_m, atol=1e-9)
    assert quat_angle(glob, pose.global_quats).max() < 1e-7
    np.testing.assert_allclose(pose.site_quats_world, pose.global_quats[:, IMU_JOINT], atol=0)
    # bone lengths never change
    rest = default_rest_pose()
    for j, p in enumerate(PARENTS):
        if p >= 0:
            length = np.linalg.norm(pose.joints_world_m[:, j] - pose.joints_world_m[:, p], axis=-1)
            np.testing.assert_allclose(length, np.linalg.norm(rest.offsets_m[j]), atol=1e-9)


def test_loops_with_its_duration(performer: Performer) -> None:
    t = np.array([0.0, 1.234, 9.87, 17.0, 24.5])
    a = performer.pose_at(t)
    b = performer.pose_at(t + performer.duration_s)
    np.testing.assert_allclose(a.joints_world_m, b.joints_world_m, atol=1e-9)
    assert quat_angle(a.global_quats, b.global_quats).max() < 1e-7
    assert 20.0 <= performer.duration_s <= 30.0


def test_motion_is_c1_smooth_including_the_loop_seam(performer: Performer) -> None:
    # velocities from finite differences at 120 Hz, across the seam as well
    t = np.arange(-1.0, performer.duration_s + 1.0, 1.0 / RATE_HZ)
    joints = performer.pose_at(t).joints_world_m
    vel = np.diff(joints, axis=0) * RATE_HZ  # m/s
    dv = np.abs(np.diff(vel, axis=0)).max()
    # a velocity jump would show as a single-step change; smooth motion changes by acc / rate
    assert np.abs(vel).max() < 6.0
    assert dv < 30.0 / RATE_HZ, f"velocity changes by {dv:.2f} m/s in one step"


def test_feet_stay_above_the_floor_and_the_squat_lowers_the_pelvis(loop) -> None:
    t, pose = loop
    ankles_y = pose.joints_world_m[:, (Joint.LEFT_ANKLE, Joint.RIGHT_ANKLE), 1]
    assert ankles_y.min() >= 0.05
    assert np.abs(ankles_y.min(axis=1) - 0.08).max() < 0.03  # one foot is always (nearly) on the floor
    root_y = pose.root_world_m[:, 1]
    standing = root_y[t < 2.0].mean()
    squat = root_y[(t > 20.5) & (t < 21.5)].min()
    assert standing - squat > 0.25, f"squat lowers the pelvis by only {standing - squat:.2f} m"
    # the head stays above the pelvis throughout
    assert np.all(pose.joints_world_m[:, Joint.HEAD, 1] > root_y + 0.4)


def test_walks_a_circle_and_turns_on_the_spot(loop) -> None:
    t, pose = loop
    xz = pose.root_world_m[:, (0, 2)]
    walk = (t >= 3.0) & (t <= 11.0)
    path = np.linalg.norm(np.diff(xz[walk], axis=0), axis=-1).sum()
    assert path > 4.5  # a circle of radius 0.8 m is 5 m long
    np.testing.assert_allclose(xz[t < 2.0], 0.0, atol=1e-9)  # standing at the mark before and after
    # the pelvis faces +Z at rest: track where its forward axis points
    fwd = quat_rotate(pose.global_quats[:, Joint.PELVIS], np.array([0.0, 0.0, 1.0]))
    heading = np.unwrap(np.arctan2(fwd[:, 0], fwd[:, 2]))
    turn = (t >= 22.4) & (t <= 25.1)
    assert abs(heading[turn][-1] - heading[turn][0] - 2.0 * np.pi) < 0.2
    spot = np.linalg.norm(xz[turn], axis=-1).max()
    assert spot < 0.05  # turns on the spot
    # the legs step while walking: the ankles alternate in front of each other
    lead = pose.joints_world_m[walk, Joint.LEFT_ANKLE] - pose.joints_world_m[walk, Joint.RIGHT_ANKLE]
    forward_of = np.sum(lead * fwd[walk], axis=-1)
    assert forward_of.max() > 0.2 and forward_of.min() < -0.2


def test_arm_raises_and_wave(loop) -> None:
    t, pose = loop
    head_y = pose.joints_world_m[:, Joint.HEAD, 1]
    for wrist in (Joint.LEFT_WRIST, Joint.RIGHT_WRIST):
        above = pose.joints_world_m[:, wrist, 1] > head_y
        assert above[(t > 12.9) & (t < 13.4)].all()  # lateral raise
        assert above[(t > 15.2) & (t < 15.6)].all()  # forward raise
        assert not above[t < 2.0].any()  # arms down at rest
    # the wave: right forearm points up and swings side to side, the left arm stays down
    wave = (t > 17.3) & (t < 18.7)
    fore = pose.joints_world_m[wave, Joint.RIGHT_WRIST] - pose.joints_world_m[wave, Joint.RIGHT_ELBOW]
    assert np.all(fore[:, 1] > 0.15)
    assert np.ptp(fore[:, 0]) > 0.15
    assert np.all(pose.joints_world_m[wave, Joint.LEFT_WRIST, 1] < pose.joints_world_m[wave, Joint.LEFT_SHOULDER, 1])


def test_acceleration_and_angular_velocity_match_the_motion(performer: Performer) -> None:
    t = np.array([4.1, 7.3, 13.0, 17.77, 21.0])
    h = 1.0 / 100.0
    pos = [performer.pose_at(t + d).site_positions_world_m for d in (-h, 0.0, h)]
    acc_coarse = (pos[2] - 2 * pos[1] + pos[0]) / h**2
    acc = performer.pose_at(t).site_acc_free_mps2
    assert acc.shape == (len(t), 6, 3)
    assert np.abs(acc).max() > 1.0  # the sites do accelerate
    np.testing.assert_allclose(acc, acc_coarse, atol=0.05 * np.abs(acc).max())
    # integrating the body angular velocity over a short step reproduces the next orientation
    dt = 1.0 / 200.0
    p0, p1 = performer.pose_at(t), performer.pose_at(t + dt)
    w_mid = 0.5 * (p0.site_gyro_rps + p1.site_gyro_rps)
    predicted = quat_mul(p0.site_quats_world, quat_from_rotvec(w_mid * dt))
    moved = quat_angle(p0.site_quats_world, p1.site_quats_world)
    err = quat_angle(predicted, p1.site_quats_world)
    assert moved.max() > 0.005
    assert err.max() < 0.02 * moved.max() + 1e-6


def test_held_poses() -> None:
    p = Performer(script=Motion.T_POSE)
    pose = p.pose_at(np.array([0.0, 3.0, 11.0]))
    assert quat_angle(pose.global_quats, np.array([1.0, 0, 0, 0])).max() < 1e-9
    rest = default_rest_pose().positions()
    np.testing.assert_allclose(pose.joints_world_m - pose.root_world_m[:, None], np.broadcast_to(rest - rest[0], (3, 17, 3)), atol=1e-9)
    np.testing.assert_allclose(pose.joints_world_m[:, Joint.LEFT_ANKLE, 1], 0.08, atol=1e-9)

    p.hold(Motion.STILL)
    still = p.pose_at(np.array([0.0, 5.0, 21.0]))
    np.testing.assert_allclose(still.joints_world_m[1:], still.joints_world_m[:1].repeat(2, 0), atol=1e-12)
    assert np.abs(still.site_acc_free_mps2).max() < 1e-6
    assert still.joints_world_m[0, Joint.LEFT_WRIST, 1] < 1.0  # arms down

    p.resume()
    assert p.script == PerformerScript(Motion.LOOP)
    np.testing.assert_allclose(p.pose_at(7.0).joints_world_m, Performer().pose_at(7.0).joints_world_m)


@pytest.mark.parametrize("site", list(ImuSite))
def test_move_one_site_keeps_the_other_sites_still(site: ImuSite) -> None:
    p = Performer(script=PerformerScript(Motion.MOVE_SITE, site))
    pose = p.pose_at(np.linspace(0.0, 3.0, 61))
    q = pose.site_quats_world  # T x 6 x 4
    swing = quat_angle(q, q[:1]).max(axis=0)  # 6, largest rotation away from the first instant
    assert swing[site] > np.radians(20.0)
    others = [s for s in ImuSite if s != site]
    assert swing[others].max() < 1e-9
    with pytest.raises(ValueError, match="site"):
        PerformerScript(Motion.MOVE_SITE)


def test_hold_any_pose_with_the_feet_on_the_floor() -> None:
    rng = np.random.default_rng(0)
    local = np.tile([1.0, 0.0, 0.0, 0.0], (NUM_JOINTS, 1))
    local[Joint.LEFT_KNEE] = quat_from_rotvec(np.array([0.8, 0.0, 0.0]))  # bend one knee
    local[Joint.RIGHT_ELBOW] = quat_from_rotvec(rng.normal(size=3))
    p = Performer()
    version = p.script_version
    p.hold_pose(local)
    assert p.script.motion == Motion.POSE and p.script_version == version + 1
    pose = p.pose_at(np.array([0.0, 2.0]))
    assert quat_angle(pose.local_quats, local).max() < 1e-7
    np.testing.assert_allclose(pose.joints_world_m[0], pose.joints_world_m[1])
    ankles = pose.joints_world_m[0, (Joint.LEFT_ANKLE, Joint.RIGHT_ANKLE), 1]
    assert ankles.min() == pytest.approx(0.08, abs=0.025) and ankles[0] > ankles[1] + 0.05
    with pytest.raises(ValueError, match="17 x 4"):
        PerformerScript(Motion.POSE, pose_local_wxyz=((1.0, 0.0, 0.0, 0.0),))


def test_a_transition_moves_smoothly_from_the_loop_into_the_held_pose() -> None:
    """``hold(..., at_s, transition_s)``: before ``at_s`` the old motion, after ``at_s + transition_s``
    the new one, in between C1 (no jump in the joints, bounded speed)."""
    p, loop, tpose = Performer(), Performer(), Performer(script=Motion.T_POSE)
    at_s, blend_s = 5.0, 0.5  # mid-walk: the pelvis is away from the origin and turned
    p.hold(Motion.T_POSE, at_s=at_s, transition_s=blend_s)
    assert p.script.motion == Motion.T_POSE and p.script.blend_from == PerformerScript(Motion.LOOP)
    before, after = np.linspace(4.0, at_s, 25), np.linspace(at_s + blend_s, 8.0, 25)
    np.testing.assert_allclose(p.pose_at(before).joints_world_m, loop.pose_at(before).joints_world_m, atol=1e-12)
    np.testing.assert_allclose(p.pose_at(after).joints_world_m, tpose.pose_at(after).joints_world_m, atol=1e-9)
    t = np.arange(at_s - 0.1, at_s + blend_s + 0.1, 1.0 / RATE_HZ)
    joints = p.pose_at(t).joints_world_m
    step_m = np.linalg.norm(np.diff(joints, axis=0), axis=-1).max()  # largest move of a joint in one 1/120 s step
    jump_m = np.linalg.norm(loop.pose_at(at_s).joints_world_m - tpose.pose_at(at_s).joints_world_m, axis=-1).max()
    assert jump_m > 0.5 and step_m < 0.08, (jump_m, step_m)  # without the transition it would jump jump_m
    speed = np.diff(joints, axis=0) * RATE_HZ
    assert np.abs(np.diff(speed, axis=0)).max() * RATE_HZ < 200.0  # no kink: accelerations stay bounded
    # a second switch during the first transition takes over from the blend, not from the loop
    p.hold(Motion.STILL, at_s=at_s + 0.2, transition_s=blend_s)
    assert p.script.blend_from.blend_from == PerformerScript(Motion.LOOP)
    np.testing.assert_allclose(p.pose_at(at_s + 0.1).joints_world_m, joints[np.argmin(np.abs(t - at_s - 0.1))], atol=1e-9)
    with pytest.raises(ValueError, match="transition_s"):
        p.hold(Motion.STILL, at_s=1.0, transition_s=-1.0)


def test_follow_does_what_the_calibration_wizard_asks() -> None:
    from vimcan_core.calibration import heading_pose_bone_quats
    from vimcan_core.performer import PerformerPrompt

    p = Performer()
    p.follow(PerformerPrompt.T_POSE)
    assert quat_angle(p.pose_at(1.0).global_quats, np.array([1.0, 0, 0, 0])).max() < 1e-9
    p.follow(PerformerPrompt.HEADING_POSE)
    held = p.pose_at(np.array([1.0, 4.0]))
    assert quat_angle(held.global_quats, heading_pose_bone_quats()[None]).max() < 1e-6  # the calibration's pose
    np.testing.assert_allclose(held.joints_world_m[0], held.joints_world_m[1])  # held still
    assert min(held.joints_world_m[0, (Joint.LEFT_ANKLE, Joint.RIGHT_ANKLE), 1]) == pytest.approx(0.08, abs=0.025)
    p.follow(PerformerPrompt.MOVE_SITE, ImuSite.HEAD)
    assert p.script == PerformerScript(Motion.MOVE_SITE, ImuSite.HEAD)
    p.follow(PerformerPrompt.MOVE_SITE)  # no site picked: stand still
    assert p.script.motion == Motion.STILL
    p.follow(PerformerPrompt.STAND)
    assert p.script.motion == Motion.STILL
    p.follow(PerformerPrompt.MOVE_FREELY)
    assert p.script == PerformerScript(Motion.LOOP)
