"""BVH writer: round trips through our reader and an independent PyPI parser, IMU twist,
continuity of the angles, units and orders, real CMU motion."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest

from vimcan_core.bvh.reader import END_SITE_SUFFIX, read_bvh
from vimcan_core.bvh.writer import (
    ROTATING_JOINTS,
    BvhWriterConfig,
    LengthUnit,
    RotationOrder,
    build_clip,
    estimate_rest_pose,
    euler_filter,
    writable_frames,
    write_bvh,
)
from vimcan_core.errors import InputShapeError
from vimcan_core.kinematics import forward_kinematics
from vimcan_core.rotations import (
    euler_to_matrix,
    matrix_to_euler,
    quat_angle,
    quat_from_axis_angle,
    quat_from_rotvec,
    quat_mul,
    quat_rotate,
    quat_to_matrix,
)
from vimcan_core.skeleton import IMU_JOINT, JOINT_NAMES, PARENTS, ImuSite, Joint, default_rest_pose

FPS = 30.0


def _motion(T: int = 240, seed: int = 0, spin_rad_s: float = 1.5):
    """Rigid FK motion: smooth random local rotations, a spinning pelvis, a moving root.

    Returns (joints_world T x J x 3, root T x 3, global quats T x J x 4, rest)."""
    rng = np.random.default_rng(seed)
    rest = default_rest_pose().scaled(1.07)
    t = np.arange(T) / FPS
    freq = rng.uniform(0.2, 0.7, size=(17, 3))
    phase = rng.uniform(0, 2 * np.pi, size=(17, 3))
    rotvec = 0.6 * np.sin(2 * np.pi * freq * t[:, None, None] + phase)  # T x J x 3
    rotvec[:, 0, 1] = spin_rad_s * t  # several turns about the vertical
    local = quat_from_rotvec(rotvec)
    root = np.stack((np.sin(t), 0.95 + 0.05 * np.cos(t), 0.3 * t), axis=-1)
    pos, glob = forward_kinematics(local, root, rest)
    return pos, root, glob, rest


def _reader_positions(path: Path, scale: float = 1.0) -> np.ndarray:
    """T x 17 x 3 H36M joints from our BVH reader (End Sites are ankles, wrists, head)."""
    m = read_bvh(path)
    pos = m.global_positions() / scale
    idx = [m.index(n) if n in m.names else m.index(JOINT_NAMES[PARENTS[j]] + END_SITE_SUFFIX) for j, n in enumerate(JOINT_NAMES)]
    return pos[:, idx]


def _bvhio_positions(path: Path, scale: float = 1.0) -> np.ndarray:
    """Same, from bvhio's parser and its own Euler-to-quaternion conversion (FK done here)."""
    bvhio = pytest.importorskip("bvhio")
    glm = pytest.importorskip("glm")
    container = bvhio.readAsBvh(str(path))
    T = container.FrameCount
    out = np.zeros((T, 17, 3))
    name_to_index = {n: j for j, n in enumerate(JOINT_NAMES)}

    def walk(joint, frame: int, parent_rot, parent_pos, is_root: bool) -> None:
        key = joint.Keyframes[frame]
        pos = key.Position if is_root else parent_pos + parent_rot * key.Position
        rot = parent_rot * key.Rotation
        out[frame, name_to_index[joint.Name]] = np.array(pos)
        if not joint.Children and joint.EndSite is not None:
            leaf = [c for c in range(17) if PARENTS[c] == name_to_index[joint.Name]][0]
            out[frame, leaf] = np.array(pos + rot * joint.EndSite)
        for child in joint.Children:
            walk(child, frame, rot, pos, False)

    for f in range(T):
        walk(container.Root, f, glm.quat(), glm.vec3(0.0), True)
    return out / scale


def test_rigid_motion_round_trips_through_our_reader_within_a_micrometre(tmp_path: Path) -> None:
    pos, root, glob, _ = _motion()
    path = tmp_path / "take.bvh"
    clip = write_bvh(path, pos - pos[:, :1], 1 / FPS, root_m=root, bone_quats_world=glob[:, list(IMU_JOINT)])
    assert np.abs(clip.joints_world_m() - pos).max() < 1e-9
    back = _reader_positions(path)
    err_mm = 1000 * np.linalg.norm(back - pos, axis=-1)
    assert err_mm.max() < 0.01, err_mm.max()
    m = read_bvh(path)
    assert m.num_frames == len(pos) and abs(m.fps - FPS) < 1e-4
    assert m.joints[0].name == "pelvis" and m.joints[0].offset == (0.0, 0.0, 0.0)
    assert sum(1 for j in m.joints if j.is_end_site) == 5  # ankles, wrists, head


def test_independent_parser_bvhio_gives_the_same_positions(tmp_path: Path) -> None:
    pos, root, glob, _ = _motion(T=60, seed=3)
    path = tmp_path / "take.bvh"
    write_bvh(path, pos - pos[:, :1], 1 / FPS, root_m=root, bone_quats_world=glob[:, list(IMU_JOINT)])
    err_mm = 1000 * np.linalg.norm(_bvhio_positions(path) - pos, axis=-1)
    assert err_mm.max() < 0.05, err_mm.max()  # bvhio computes in float32


@pytest.mark.parametrize("order, units", [(RotationOrder.ZYX, LengthUnit.CENTIMETRES), (RotationOrder.ZXY, LengthUnit.CENTIMETRES), (RotationOrder.ZYX, LengthUnit.METRES)])
def test_orders_and_units(tmp_path: Path, order: RotationOrder, units: LengthUnit) -> None:
    pos, root, glob, _ = _motion(T=90, seed=1)
    path = tmp_path / "take.bvh"
    cfg = BvhWriterConfig(order=order, units=units)
    write_bvh(path, pos - pos[:, :1], 1 / FPS, root_m=root, config=cfg)
    m = read_bvh(path)
    assert all(j.rotation_order == order.value for j in m.joints if not j.is_end_site)
    scale = units.per_metre
    thigh = np.linalg.norm(m.offsets[m.index("right_knee")])
    assert thigh == pytest.approx(0.43 * 1.07 * scale, rel=1e-5)
    assert np.abs(_reader_positions(path, scale) - pos).max() < 1e-5
    assert np.abs(_bvhio_positions(path, scale) - pos).max() < 5e-5


def test_imu_twist_is_the_measured_roll_and_changes_the_written_angles() -> None:
    pos, root, glob, _ = _motion(T=60, seed=2)
    bone = glob[:, list(IMU_JOINT)].copy()
    clip = build_clip(pos, 1 / FPS, root, bone_quats_world=bone)
    glob_bvh = forward_kinematics(clip.local_quats, clip.root_m, clip.rest)[1]
    for site, j in enumerate(IMU_JOINT):
        err_deg = np.degrees(quat_angle(glob_bvh[:, j], bone[:, site]))
        assert err_deg.max() < 1e-3, (ImuSite(site).name, err_deg.max())
    # roll the left forearm sensor 40 degrees about its bone: same positions, forearm rolled by 40
    axis = quat_rotate(bone[:, ImuSite.LEFT_FOREARM], clip.rest.offsets_m[Joint.LEFT_WRIST])
    rolled = bone.copy()
    rolled[:, ImuSite.LEFT_FOREARM] = quat_mul(quat_from_axis_angle(axis, np.full(len(axis), np.radians(40.0))), bone[:, ImuSite.LEFT_FOREARM])
    clip2 = build_clip(pos, 1 / FPS, root, bone_quats_world=rolled)
    assert np.abs(clip2.joints_world_m() - pos).max() < 1e-9
    g2 = forward_kinematics(clip2.local_quats, clip2.root_m, clip2.rest)[1]
    roll = np.degrees(quat_angle(g2[:, Joint.LEFT_ELBOW], glob_bvh[:, Joint.LEFT_ELBOW]))
    np.testing.assert_allclose(roll, 40.0, atol=1e-3)
    # without IMUs the roll is a guess, different from the measured one
    clip3 = build_clip(pos, 1 / FPS, root)
    g3 = forward_kinematics(clip3.local_quats, clip3.root_m, clip3.rest)[1]
    assert np.degrees(quat_angle(g3[:, Joint.LEFT_ELBOW], bone[:, ImuSite.LEFT_FOREARM])).max() > 5.0
    assert np.abs(clip3.joints_world_m() - pos).max() < 1e-9


def test_angles_have_no_jumps_while_spinning_for_many_turns() -> None:
    pos, root, _, _ = _motion(T=600, seed=4, spin_rad_s=4.0)  # 20 s, more than 12 turns
    clip = build_clip(pos, 1 / FPS, root)
    step = np.abs(np.diff(clip.euler_deg, axis=0))
    assert step.max() < 30.0, step.max()
    root_angles = clip.euler_deg[:, 0]
    assert np.ptp(root_angles, axis=0).max() > 2 * 360  # unwrapped: the spin accumulates
    assert np.abs(clip.joints_from_euler_m() - pos).max() < 1e-9


def test_euler_filter_removes_wraps_and_branch_flips() -> None:
    t = np.linspace(0, 4 * np.pi, 400)
    true = np.stack((t, 0.3 * np.sin(t), -1.5 * t), axis=-1)  # T x 3 radians, continuous
    for order in ("ZXY", "ZYX"):
        wrapped = matrix_to_euler(euler_to_matrix(true, order), order)
        assert np.abs(np.diff(wrapped, axis=0)).max() > 3.0  # raw decomposition wraps
        fixed = euler_filter(wrapped, order)
        np.testing.assert_allclose(fixed - fixed[0] + true[0], true, atol=1e-9)
    # middle angle through 90 degrees: the decomposition switches branch, the filter does not
    mid = np.stack((0.2 * t, np.linspace(0.5, 2.5, 400), 0.1 * t), axis=-1)
    raw = matrix_to_euler(euler_to_matrix(mid, "ZXY"), "ZXY")
    fixed = euler_filter(raw, "ZXY")
    assert np.abs(np.diff(raw, axis=0)).max() > 2.0
    assert np.abs(np.diff(fixed, axis=0)).max() < 0.05
    np.testing.assert_allclose(euler_to_matrix(fixed, "ZXY"), euler_to_matrix(mid, "ZXY"), atol=1e-9)


def test_bone_swinging_through_its_opposite_direction_does_not_flip() -> None:
    """The left upper arm sweeps over the head to point along -X (opposite its rest +X)."""
    T = 200
    rest = default_rest_pose()
    local = np.broadcast_to([1.0, 0, 0, 0], (T, 17, 4)).copy()
    angle = np.linspace(0, np.radians(200), T)  # past 180: through the singular direction
    local[:, Joint.LEFT_SHOULDER] = quat_from_axis_angle(np.broadcast_to([0, 0, 1.0], (T, 3)), angle)
    pos, _ = forward_kinematics(local, np.zeros((T, 3)), rest)
    clip = build_clip(pos, 1 / FPS, root_m=np.zeros((T, 3)), skeleton=rest)
    assert np.abs(clip.joints_world_m() - pos).max() < 1e-9
    k = ROTATING_JOINTS.index(Joint.LEFT_SHOULDER)
    assert np.abs(np.diff(clip.euler_deg[:, k], axis=0)).max() < 5.0
    g = forward_kinematics(clip.local_quats, clip.root_m, clip.rest)[1][:, Joint.LEFT_SHOULDER]
    steps = np.degrees(quat_angle(g[1:], g[:-1]))
    assert steps.max() < 2.0  # the real step is 1 degree per frame: no twist flip anywhere


def test_skeleton_uses_median_bone_lengths_of_a_noisy_take() -> None:
    pos, root, _, rest = _motion(T=300, seed=5)
    rng = np.random.default_rng(0)
    noisy = pos + rng.normal(scale=0.005, size=pos.shape)
    skel = estimate_rest_pose(noisy)
    np.testing.assert_allclose(skel.bone_lengths()[1:], rest.bone_lengths()[1:], atol=0.004)
    clip = build_clip(noisy, 1 / FPS, root)
    err_mm = 1000 * np.linalg.norm(clip.joints_world_m() - pos, axis=-1)
    assert np.median(err_mm) < 15.0  # a rigid fit to 5 mm noise stays near the truth


def test_unknown_root_is_fixed_at_standing_height_and_gaps_hold_the_nearest() -> None:
    pos, root, _, _ = _motion(T=30, seed=6)
    clip = build_clip(pos - pos[:, :1], 1 / FPS)
    assert np.ptp(clip.root_m, axis=0).max() == 0.0
    assert 0.8 < clip.root_m[0, 1] < 1.2  # hips about a metre above the floor
    gappy = root.copy()
    gappy[10:14] = np.nan
    clip = build_clip(pos, 1 / FPS, gappy)
    np.testing.assert_array_equal(clip.root_m[11], root[9])
    np.testing.assert_array_equal(clip.root_m[13], root[14])


def test_bad_input_is_refused_with_the_frame() -> None:
    pos, root, _, _ = _motion(T=10)
    pos[7, 3] = np.nan
    with pytest.raises(InputShapeError, match="frame 7"):
        build_clip(pos, 1 / FPS, root)
    with pytest.raises(InputShapeError, match="T x 17 x 3"):
        build_clip(pos[:, :16], 1 / FPS)
    collapsed = pos.copy()
    collapsed[4] = collapsed[4, :1]  # every joint at the pelvis (a pose stage that output zeros)
    with pytest.raises(InputShapeError, match="frame 4 .* bone shorter"):
        build_clip(collapsed, 1 / FPS, root)
    np.testing.assert_array_equal(writable_frames(collapsed), (np.arange(10) != 4) & (np.arange(10) != 7))  # 7 has a NaN


def test_real_cmu_motion_writes_and_reads_back(shared_data: Path, tmp_path: Path) -> None:
    """H36M joints from a real CMU walk: the rigid fit stays within millimetres of them."""
    m = read_bvh(shared_data / "cmu" / "subjects" / "02" / "02_01.bvh.gz")
    cm = m.global_positions(slice(10, None)) / 100.0  # 30 fps, metres, past the T-pose and its blend
    eyes = 0.5 * (cm[:, m.index("leftEye_End")] + cm[:, m.index("rightEye_End")])
    names = ("hip", "rThigh", "rShin", "rFoot", "lThigh", "lShin", "lFoot", "abdomen", "neck", "head",
             None, "lShldr", "lForeArm", "lHand", "rShldr", "rForeArm", "rHand")
    h36m = np.stack([eyes if n is None else cm[:, m.index(n)] for n in names], axis=1)  # T x 17 x 3
    path = tmp_path / "cmu.bvh"
    clip = write_bvh(path, h36m - h36m[:, :1], 1 / FPS, root_m=h36m[:, 0])
    back = _reader_positions(path)
    err_mm = 1000 * np.linalg.norm(back - h36m, axis=-1)
    limbs = [Joint.LEFT_WRIST, Joint.RIGHT_WRIST, Joint.LEFT_ANKLE, Joint.RIGHT_ANKLE, Joint.HEAD]
    assert np.median(err_mm) < 1.0, np.median(err_mm)
    assert err_mm.max() < 10.0, err_mm.max()  # the collars move the shoulders: not rigid on the thorax
    assert err_mm[:, limbs].max() < 10.0, err_mm[:, limbs].max()
    assert np.abs(np.diff(clip.euler_deg, axis=0)).max() < 30.0
