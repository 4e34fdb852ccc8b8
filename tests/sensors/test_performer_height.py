"""The performer's height in the live pose stage (ModelPoseSource.set_performer_height) and in the
offline re-solve (ResolveConfig.performer_height_m, take.json, ``vimcan export --resolve --height-cm``).

The live tests use a stand-in for the network that returns the demo performer's true joints at a
wrong, wobbling size (as a network that cannot tell a small person near the camera from a tall one
further away does); the re-solve tests run the shipped bidirectional weights on a 3 s demo take."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from app.cli import main  # noqa: E402
from sensors.demo import DemoConfig, DemoRig, build_demo_pipeline  # noqa: E402
from sensors.export import DEFAULT_CHECKPOINT, ExportOptions, ResolveConfig, export_take, resolve_take  # noqa: E402
from sensors.model_source import ModelPoseSource  # noqa: E402
from sensors.samples import PoseFrame, SyncedFrame  # noqa: E402
from sensors.simulated import SimCameraConfig  # noqa: E402
from vimcan_core.body_scale import skeleton_height_m  # noqa: E402
from vimcan_core.bvh.reader import END_SITE_SUFFIX, read_bvh  # noqa: E402
from vimcan_core.errors import VimcanError  # noqa: E402
from vimcan_core.rotations import quat_rotate  # noqa: E402
from vimcan_core.skeleton import ANKLE_ABOVE_FLOOR_M, JOINT_NAMES, NUM_IMUS, PARENTS, ImuSite, Joint  # noqa: E402
from vimcan_core.take import read_meta, read_poses, write_meta  # noqa: E402

CHILDREN = [c for c, p in enumerate(PARENTS) if p >= 0]
BONE_PARENTS = [PARENTS[c] for c in CHILDREN]
NETWORK_SIZE = 0.9  # the stand-in network sees the performer 10 % too small
WOBBLE = 0.02  # and its size guess changes by this much (std) from frame to frame
FRAMES = 120  # 4 s at 30 Hz
SETTLED = 60  # frames after which the live measure has enough of them to be within a centimetre


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def rig() -> DemoRig:
    return build_demo_pipeline(config=DemoConfig(camera=SimCameraConfig(render_preview=False))).demo


def synced_at(rig: DemoRig, t_s: float, index: int) -> SyncedFrame:
    """What the synchroniser delivers at performer time ``t_s``: exact keypoints and IMU quaternions."""
    pose = rig.performer.pose_at(t_s)
    quats = np.stack([rig.imus[s].measured_quat(pose.site_quats_world[s]) for s in ImuSite])
    kp, conf = rig.camera.keypoints(pose.joints_world_m)
    return SyncedFrame(
        frame_index=index, time_s=t_s, keypoints_px=kp, keypoint_confidence=conf, image_size_px=(640, 480),
        imu_quat_wxyz=quats, imu_acc_free_mps2=np.zeros((NUM_IMUS, 3)), imu_present=np.ones(NUM_IMUS, bool),
        sample_host_time_s=t_s,
    )


class WrongSizeNetwork:
    """Returns the true root-relative camera-frame joints of frame k at its k-th step, scaled by
    ``size * (1 + wobble_k)`` about the root: right shape, wrong size (a fake for the network)."""

    description, backend = "wrong-size stand-in", "cpu"

    def __init__(self, joints_cam_m: np.ndarray, size: float = NETWORK_SIZE, seed: int = 0) -> None:
        self.truth = joints_cam_m - joints_cam_m[:, :1]  # T x 17 x 3
        self.size = size
        self.wobble = np.random.default_rng(seed).normal(0.0, WOBBLE, len(joints_cam_m))
        self.k = 0
        self.outputs: list[np.ndarray] = []

    def reset(self) -> None:
        pass

    def step(self, keypoints: np.ndarray, quats: np.ndarray, imu_valid: np.ndarray) -> np.ndarray:
        out = self.truth[self.k] * self.size * (1.0 + self.wobble[self.k])  # 17 x 3
        self.k += 1
        self.outputs.append(out)
        return out


@pytest.fixture(scope="module")
def walk(rig: DemoRig) -> tuple[list[SyncedFrame], np.ndarray]:
    """FRAMES frames of the performer walking (t = 4 s on) and the true world joints (T x 17 x 3)."""
    times = 4.0 + np.arange(FRAMES) / 30.0
    return [synced_at(rig, t, k) for k, t in enumerate(times)], rig.performer.pose_at(times).joints_world_m


def run_live(rig: DemoRig, walk, height_m: float | None) -> tuple[list[PoseFrame], WrongSizeNetwork]:
    frames, truth_world = walk
    network = WrongSizeNetwork(rig.camera_model.world_to_camera(truth_world))
    source = ModelPoseSource(network, rig.true_calibration(), rig.camera_model)
    source.set_performer_height(height_m)
    return [source.estimate(f) for f in frames], network


def bones(joints_m: np.ndarray) -> np.ndarray:
    """... x 17 x 3 joints -> ... x 16 x 3 bone vectors (child minus parent)."""
    return joints_m[..., CHILDREN, :] - joints_m[..., BONE_PARENTS, :]


def distance_to_camera_m(rig: DemoRig, points_world_m: np.ndarray) -> np.ndarray:
    return np.linalg.norm(points_world_m - np.asarray(rig.camera_model.position_world_m), axis=-1)


def test_live_pose_is_scaled_to_the_performers_height(rig: DemoRig, walk) -> None:
    _, truth = walk
    true_height = skeleton_height_m(truth)
    assert true_height == pytest.approx(1.68, abs=0.05)  # the demo performer
    plain, network = run_live(rig, walk, None)
    scaled, _ = run_live(rig, walk, true_height)
    # without a height the network's pose is used as it is: 10 % small
    q_wc = np.asarray(rig.true_calibration().quat_world_from_camera)
    joints_plain = np.array([p.joints_world_m for p in plain])  # T x 17 x 3, root-relative
    np.testing.assert_allclose(joints_plain, quat_rotate(q_wc, np.array(network.outputs)), atol=1e-12)
    small = ANKLE_ABOVE_FLOOR_M + NETWORK_SIZE * (true_height - ANKLE_ABOVE_FLOOR_M)
    assert skeleton_height_m(joints_plain) == pytest.approx(small, abs=0.01)
    # with it, the measured height settles on the performer's
    joints_scaled = np.array([p.joints_world_m for p in scaled])
    for start in range(SETTLED, FRAMES, 30):
        assert skeleton_height_m(joints_scaled[start : start + 30]) == pytest.approx(true_height, abs=0.01), start
    np.testing.assert_allclose(joints_scaled[:, 0], 0.0, atol=1e-12)  # still root-relative
    # and the pelvis solved from the keypoints lands on the true one instead of 10 % nearer the camera:
    # with exact keypoints, a skeleton s times the true size is placed s times as far from the camera
    true_depth = distance_to_camera_m(rig, truth[:, 0])  # T, metres
    size, depth_error = {}, {}
    for name, poses, joints in (("plain", plain, joints_plain), ("scaled", scaled, joints_scaled)):
        size[name] = np.median(np.linalg.norm(bones(joints), axis=-1) / np.linalg.norm(bones(truth), axis=-1), axis=1)  # T
        depth = distance_to_camera_m(rig, np.array([p.root_world_m for p in poses]))  # T
        np.testing.assert_allclose(depth / true_depth, size[name], rtol=1e-6)
        depth_error[name] = depth[SETTLED:] - true_depth[SETTLED:]
    assert np.median(size["scaled"][SETTLED:]) == pytest.approx(1.0, abs=0.005)  # (each frame is off by its wobble)
    assert np.median(size["scaled"][:SETTLED]) == pytest.approx(1.0, abs=0.01)  # scaled from the first frames on
    assert np.median(depth_error["plain"]) < -0.3  # 10 % of 3.5-5 m nearer
    assert abs(np.median(depth_error["scaled"])) < 0.03


def test_a_taller_skeleton_is_placed_further_from_the_camera(rig: DemoRig, walk) -> None:
    """The keypoints are fixed: the taller the skeleton, the further away it must stand to cover them."""
    depth = {}
    for height in (1.5, 1.7, 1.9):
        poses, _ = run_live(rig, walk, height)
        depth[height] = distance_to_camera_m(rig, np.array([p.root_world_m for p in poses]))
    assert np.all(depth[1.5] < depth[1.7]) and np.all(depth[1.7] < depth[1.9])
    # same pose, same keypoints: the distance grows as the body does (the factor of the body above the ankles)
    ratio = depth[1.9][SETTLED:] / depth[1.5][SETTLED:]
    np.testing.assert_allclose(ratio, (1.9 - ANKLE_ABOVE_FLOOR_M) / (1.5 - ANKLE_ABOVE_FLOOR_M), rtol=0.02)


def test_setting_clearing_and_resetting_the_height(rig: DemoRig, walk) -> None:
    frames, truth = walk
    network = WrongSizeNetwork(rig.camera_model.world_to_camera(truth))
    source = ModelPoseSource(network, rig.true_calibration(), rig.camera_model)
    assert source.performer_height_m is None
    source.set_performer_height(1.75)
    assert source.performer_height_m == 1.75
    with pytest.raises(VimcanError, match="178 m"):
        source.set_performer_height(178)  # centimetres given as metres
    assert source.performer_height_m == 1.75  # the bad value changed nothing
    for f in frames[:31]:
        source.estimate(f)
    # a new take: the performer steps in at another size; after reset() the first frame is measured alone
    source.reset()
    network.size = 1.2
    first = source.estimate(frames[31]).joints_world_m
    assert skeleton_height_m(first[None]) == pytest.approx(1.75, abs=0.001)
    # without reset() the old window's factor is still in use (until the next update, with old frames in the window)
    stale = ModelPoseSource(WrongSizeNetwork(rig.camera_model.world_to_camera(truth)), rig.true_calibration(), rig.camera_model)
    stale.set_performer_height(1.75)
    for f in frames[:31]:
        stale.estimate(f)
    stale.estimator.size = 1.2
    assert skeleton_height_m(stale.estimate(frames[31]).joints_world_m[None]) > 1.75 + 0.2
    # cleared: the network's size again
    source.set_performer_height(None)
    assert source.performer_height_m is None
    pose = source.estimate(frames[32])
    q_wc = np.asarray(rig.true_calibration().quat_world_from_camera)
    np.testing.assert_allclose(pose.joints_world_m, quat_rotate(q_wc, network.outputs[-1]), atol=1e-12)


# --------------------------------------------------------------------------------------
# the offline re-solve


needs_weights = pytest.mark.skipif(not DEFAULT_CHECKPOINT.is_file(), reason="no shipped bidirectional weights")
RECORDED_HEIGHT_M = 1.83  # `vimcan record --height-cm 183`


@pytest.fixture(scope="module")
def demo_take(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """3 s of the simulated demo, recorded headless through the command line with a height."""
    out = tmp_path_factory.mktemp("takes")
    assert main(["record", "--demo", "--seconds", "3", "--out", str(out), "--name", "demo", "--height-cm", "183"]) == 0
    return out / "demo"


@pytest.fixture
def take(demo_take: Path, tmp_path: Path) -> Path:
    """A copy of the demo take that a test may re-solve and edit, without a height in take.json."""
    folder = Path(shutil.copytree(demo_take, tmp_path / "take"))
    write_meta(folder, dataclasses.replace(read_meta(folder), performer_height_m=None))
    return folder


def resolved_height_m(take: Path) -> float:
    return skeleton_height_m(read_poses(take / "poses_resolved.csv").joints_m)


def bvh_tpose_height_m(path: Path) -> float:
    """Floor to head of the BVH's T-pose (its OFFSETs): head minus the lower ankle plus the ankle's 8 cm."""
    motion = read_bvh(path)
    rest = motion.rest_positions()  # J x 3, file units (metres)

    def y(joint: Joint) -> float:
        name = JOINT_NAMES[joint]
        if name not in motion.names:  # ankles, wrists and the head are End Sites of their parents
            name = JOINT_NAMES[PARENTS[joint]] + END_SITE_SUFFIX
        return float(rest[motion.index(name), 1])

    return y(Joint.HEAD) - min(y(Joint.LEFT_ANKLE), y(Joint.RIGHT_ANKLE)) + ANKLE_ABOVE_FLOOR_M


def world_csv_height_m(path: Path) -> float:
    """The skeleton height of the joints in a joints_world_m.csv (time_s, 17 x 3 joints, frame_index)."""
    table = np.loadtxt(path, delimiter=",", skiprows=1)
    return skeleton_height_m(table[:, 1:52].reshape(-1, 17, 3))


def test_record_height_cm_goes_into_take_json_and_the_takes_bvh(demo_take: Path) -> None:
    """The demo's pose stage is the simulation's ground truth (the performer's own 1.68 m); the
    take's BVH stands at the height recorded with it."""
    assert read_meta(demo_take).performer_height_m == RECORDED_HEIGHT_M
    assert skeleton_height_m(read_poses(demo_take / "poses.csv").joints_m) == pytest.approx(1.68, abs=0.01)
    assert bvh_tpose_height_m(demo_take / "take.bvh") == pytest.approx(RECORDED_HEIGHT_M, abs=0.015)


def test_exports_of_the_live_poses_stand_at_take_jsons_height(take: Path) -> None:
    export_take(take, ExportOptions(bvh=True, csv=True, out_dir=take / "plain"))
    assert bvh_tpose_height_m(take / "plain" / "take.bvh") == pytest.approx(1.68, abs=0.015)  # no height: as recorded
    assert world_csv_height_m(take / "plain" / "joints_world_m.csv") == pytest.approx(1.68, abs=0.01)
    write_meta(take, dataclasses.replace(read_meta(take), performer_height_m=1.55))
    export_take(take, ExportOptions(bvh=True, csv=True, out_dir=take / "tall"))
    assert bvh_tpose_height_m(take / "tall" / "take.bvh") == pytest.approx(1.55, abs=0.015)
    assert world_csv_height_m(take / "tall" / "joints_world_m.csv") == pytest.approx(1.55, abs=0.01)


@needs_weights
def test_resolve_scales_the_skeleton_to_the_given_height(take: Path) -> None:
    resolve_take(take, config=ResolveConfig(device="cpu"))
    plain = read_poses(take / "poses_resolved.csv")
    network_height = skeleton_height_m(plain.joints_m)
    assert 1.3 < network_height < 1.8 and abs(network_height - 1.9) > 0.1  # a person, not already 1.9 m tall
    assert read_meta(take).performer_height_m is None

    resolve_take(take, config=ResolveConfig(device="cpu", performer_height_m=1.9))
    scaled = read_poses(take / "poses_resolved.csv")
    assert skeleton_height_m(scaled.joints_m) == pytest.approx(1.9, abs=0.01)
    # scaled about the pelvis: same bone directions, same (live) root trajectory
    b0, b1 = bones(plain.joints_m), bones(scaled.joints_m)
    cos = np.sum(b0 * b1, axis=-1) / (np.linalg.norm(b0, axis=-1) * np.linalg.norm(b1, axis=-1))
    assert np.degrees(np.arccos(np.clip(cos, -1.0, 1.0))).max() < 1e-3
    factor = (1.9 - ANKLE_ABOVE_FLOOR_M) / (network_height - ANKLE_ABOVE_FLOOR_M)
    np.testing.assert_allclose(np.linalg.norm(b1, axis=-1), factor * np.linalg.norm(b0, axis=-1), rtol=1e-5)
    np.testing.assert_allclose(scaled.root_m, read_poses(take / "poses.csv").root_m, atol=1e-9)
    # the BVH's rigid skeleton stands 1.9 m tall, and take.json keeps the height for later exports
    assert bvh_tpose_height_m(take / "take_resolved.bvh") == pytest.approx(1.9, abs=0.015)
    assert read_meta(take).performer_height_m == 1.9


@needs_weights
def test_resolve_takes_the_height_from_take_json_unless_given(take: Path) -> None:
    write_meta(take, dataclasses.replace(read_meta(take), performer_height_m=1.5))
    resolve_take(take, config=ResolveConfig(device="cpu"))
    assert resolved_height_m(take) == pytest.approx(1.5, abs=0.01)
    assert bvh_tpose_height_m(take / "take_resolved.bvh") == pytest.approx(1.5, abs=0.015)
    resolve_take(take, config=ResolveConfig(device="cpu", performer_height_m=1.9))  # the config wins ...
    assert resolved_height_m(take) == pytest.approx(1.9, abs=0.01)
    resolve_take(take, config=ResolveConfig(device="cpu"))  # ... and is the take's height from then on
    assert resolved_height_m(take) == pytest.approx(1.9, abs=0.01)


@needs_weights
def test_export_resolve_height_cm(take: Path, capsys: pytest.CaptureFixture) -> None:
    for bad in ("20", "1.78", "nan"):  # a child's doll, metres given as centimetres, nothing
        assert main(["export", "--resolve", str(take), "--height-cm", bad]) == 1
        err = capsys.readouterr().err
        assert "--height-cm" in err and "90 to 240 cm" in err, err
    assert not (take / "poses_resolved.csv").exists()  # refused before anything was run or written
    assert read_meta(take).performer_height_m is None
    assert main(["export", "--resolve", str(take), "--height-cm", "190", "--device", "cpu"]) == 0
    assert "re-solved" in capsys.readouterr().out
    assert resolved_height_m(take) == pytest.approx(1.9, abs=0.01)
    assert bvh_tpose_height_m(take / "take_resolved.bvh") == pytest.approx(1.9, abs=0.015)
