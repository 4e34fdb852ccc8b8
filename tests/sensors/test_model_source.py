"""The live model pose stage on a real (tiny, randomly initialised) streaming VIMCAN."""

from __future__ import annotations

import dataclasses
import queue
import time
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from sensors.demo import DemoConfig, build_demo_pipeline  # noqa: E402
from sensors.model_source import ModelPoseSource, ModelSourceConfig, SourceStatus, solve_root_translation  # noqa: E402
from sensors.samples import SyncedFrame  # noqa: E402
from sensors.simulated import SimCameraConfig  # noqa: E402
from vimcan_core.camera import normalize_keypoints  # noqa: E402
from vimcan_core.model import Vimcan, preset  # noqa: E402
from vimcan_core.performer import Performer  # noqa: E402
from vimcan_core.rotations import quat_angle, quat_mul, quat_rotate  # noqa: E402
from vimcan_core.skeleton import NUM_IMUS, ImuSite, default_rest_pose  # noqa: E402

TINY = dict(streaming=True, embed_dim=16, fused_dim=32, num_skeleton_layers=1)


class TinyEstimator:
    """A streaming estimator over a real, small, randomly initialised VIMCAN (one frame per step)."""

    description = "VIMCAN tiny (random weights), cpu"
    backend = "cpu"

    def __init__(self, seed: int = 0) -> None:
        torch.manual_seed(seed)
        self.model = Vimcan(preset("vimcan-t", **TINY)).eval()
        self.state = self.model.init_state(1)
        self.steps = 0

    def reset(self) -> None:
        self.state = self.model.init_state(1)

    @torch.inference_mode()
    def step(self, keypoints: np.ndarray, quats: np.ndarray, imu_valid: np.ndarray) -> np.ndarray:
        self.steps += 1
        out, self.state = self.model.step(
            torch.as_tensor(keypoints, dtype=torch.float32)[None], torch.as_tensor(quats, dtype=torch.float32)[None],
            torch.as_tensor(imu_valid)[None], self.state)
        return out[0].double().numpy()


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def rig():
    """A demo rig whose sensors are mounted askew with their own headings."""
    return build_demo_pipeline(config=DemoConfig(random_mount_deg=50.0, random_heading_deg=120.0, seed=3)).demo


def synced_at(rig, t_perf: float, camera: bool = True, imus: np.ndarray | None = None, index: int = 0) -> SyncedFrame:
    """A SyncedFrame built directly from the performer (what the synchroniser would deliver)."""
    pose = rig.performer.pose_at(t_perf)
    present = np.ones(NUM_IMUS, bool) if imus is None else imus
    quats = np.stack([rig.imus[s].measured_quat(pose.site_quats_world[s]) for s in ImuSite])
    quats[~present] = np.nan
    kp, conf = rig.camera.keypoints(pose.joints_world_m)
    return SyncedFrame(
        frame_index=index, time_s=t_perf, keypoints_px=kp if camera else None, keypoint_confidence=conf if camera else None,
        image_size_px=(640, 480) if camera else None, imu_quat_wxyz=quats, imu_acc_free_mps2=np.zeros((6, 3)),
        imu_present=present, sample_host_time_s=t_perf,
    )


def make_source(rig, **config) -> ModelPoseSource:
    return ModelPoseSource(TinyEstimator(), rig.true_calibration(), rig.camera_model, ModelSourceConfig(**config))


def test_model_inputs_are_normalised_keypoints_and_calibrated_bones_in_the_camera_frame(rig) -> None:
    src = make_source(rig)
    frame = synced_at(rig, 13.0)
    kp, quats, valid, bones_world = src.model_inputs(frame)
    np.testing.assert_allclose(kp[:, :2], normalize_keypoints(frame.keypoints_px, 640, 480))
    np.testing.assert_array_equal(kp[:, 2], 1.0)
    pose = rig.performer.pose_at(13.0)
    q_cw = np.array(rig.camera_model.quat_cam_from_world)
    assert valid.all()
    # the sensors are askew, yet the model gets q_cam_from_bone = q_cam_from_world * q_world_from_bone
    assert quat_angle(frame.imu_quat_wxyz, pose.site_quats_world).min() > np.radians(5)
    assert quat_angle(quats, quat_mul(q_cw, pose.site_quats_world)).max() < 1e-6
    assert quat_angle(bones_world, pose.site_quats_world).max() < 1e-6


def test_output_is_the_model_output_turned_into_the_world_frame(rig) -> None:
    src = make_source(rig)
    twin = TinyEstimator()  # same seed: the same network, stepped by hand
    src.reset()
    for k, t in enumerate((4.0, 4.0333, 4.0667)):
        frame = synced_at(rig, t, index=k)
        pose = src.estimate(frame)
        kp, quats, valid, _ = src.model_inputs(frame)
        joints_cam = twin.step(kp, quats, valid)
        q_wc = np.asarray(rig.true_calibration().quat_world_from_camera)
        np.testing.assert_allclose(pose.joints_world_m, quat_rotate(q_wc, joints_cam - joints_cam[:1]), atol=1e-9)
        assert pose.source == TinyEstimator.description and pose.confidence == pytest.approx(1.0)
        assert pose.camera_present and pose.imu_present.all() and src.status == SourceStatus.OK
        # (the pelvis position solved from random weights' joints is arbitrary: see test_root_translation...)
    assert src.backend == "cpu"


def test_pelvis_and_joints_share_the_calibrations_camera_rotation(rig) -> None:
    """With a camera that carries only its lens (a loaded profile) the pelvis is turned into the
    world by the calibration's rotation, as the joints are, not by the camera's default pose."""
    lens_only = dataclasses.replace(rig.camera_model, quat_cam_from_world=(1.0, 0.0, 0.0, 0.0))
    cal = rig.true_calibration()
    true_cam = rig.camera_model
    joints_cam = true_cam.world_to_camera(rig.performer.pose_at(9.0).joints_world_m)  # 17 x 3

    class Exact:  # a network that gets the pose exactly right (root-relative, camera frame)
        description, backend = "exact", "cpu"

        def reset(self) -> None:
            pass

        def step(self, keypoints, quats, imu_valid) -> np.ndarray:
            return joints_cam - joints_cam[:1]

    pose = ModelPoseSource(Exact(), cal, lens_only).estimate(synced_at(rig, 9.0))
    np.testing.assert_allclose(pose.root_world_m, rig.performer.pose_at(9.0).joints_world_m[0], atol=0.02)
    np.testing.assert_allclose(pose.joints_world_m + pose.root_world_m, rig.performer.pose_at(9.0).joints_world_m, atol=0.02)


def test_missing_inputs_degrade_as_a_user_expects(rig) -> None:
    src = make_source(rig, reset_after_s=0.5)
    src.reset()
    src.estimate(synced_at(rig, 5.0, index=0))
    # one IMU lost: keep going, flag it
    missing = np.ones(NUM_IMUS, bool)
    missing[ImuSite.LEFT_FOREARM] = False
    partial = src.estimate(synced_at(rig, 5.033, imus=missing, index=1))
    assert src.status == SourceStatus.PARTIAL and "left forearm" in src.status_message
    assert partial.imu_present.tolist() == missing.tolist() and partial.confidence == pytest.approx(0.5 + 0.5 * 5 / 6)
    # camera lost: keep going on the IMUs, lower confidence, the pelvis stays where it was last seen
    steps = src.estimator.steps
    imu_only = src.estimate(synced_at(rig, 5.067, camera=False, index=2))
    assert src.estimator.steps == steps + 1
    assert src.status == SourceStatus.IMU_ONLY and not imu_only.camera_present
    assert imu_only.confidence == pytest.approx(0.5)
    assert np.abs(imu_only.joints_world_m - partial.joints_world_m).max() > 0  # still moving
    # the same when frames arrive but the person is out of view (no keypoint seen)
    empty = dataclasses.replace(synced_at(rig, 5.08, index=2), keypoint_confidence=np.zeros(17))
    imu_only = src.estimate(empty)
    assert not imu_only.camera_present and src.status == SourceStatus.IMU_ONLY
    steps += 1
    # everything lost: freeze, confidence 0, say why, do not step the model
    nothing = np.zeros(NUM_IMUS, bool)
    frozen = src.estimate(synced_at(rig, 5.1, camera=False, imus=nothing, index=3))
    assert src.estimator.steps == steps + 1
    assert src.status == SourceStatus.FROZEN and "frozen" in src.status_message
    np.testing.assert_array_equal(frozen.joints_world_m, imu_only.joints_world_m)
    assert frozen.confidence == 0.0 and not frozen.imu_present.any()
    assert (frozen.root_world_m is None) == (imu_only.root_world_m is None)
    if frozen.root_world_m is not None:
        np.testing.assert_array_equal(frozen.root_world_m, imu_only.root_world_m)
    # frozen for longer than reset_after_s: the temporal state starts afresh when inputs return
    src.estimate(synced_at(rig, 5.8, camera=False, imus=nothing, index=4))
    back = src.estimate(synced_at(rig, 6.0, index=5))
    fresh = TinyEstimator()
    kp, quats, valid, _ = src.model_inputs(synced_at(rig, 6.0))
    first = fresh.step(kp, quats, valid)
    q_wc = np.asarray(rig.true_calibration().quat_world_from_camera)
    np.testing.assert_allclose(back.joints_world_m, quat_rotate(q_wc, first - first[:1]), atol=1e-9)
    assert src.status == SourceStatus.OK


def test_without_calibration_the_imus_are_not_used(rig) -> None:
    src = ModelPoseSource(TinyEstimator())
    pose = src.estimate(synced_at(rig, 2.0))
    assert src.status == SourceStatus.CAMERA_ONLY and "not calibrated" in src.status_message
    assert not pose.imu_present.any() and pose.root_world_m is None  # no camera model: no pelvis position
    assert src.estimate(synced_at(rig, 2.1, camera=False)).confidence == 0.0  # nothing usable: frozen


def test_root_translation_reprojects_the_joints() -> None:
    performer = Performer()
    rig = build_demo_pipeline(config=DemoConfig(camera=SimCameraConfig(render_preview=False))).demo
    cam = rig.camera_model
    for t in (1.0, 7.5, 21.0):
        joints = performer.pose_at(t).joints_world_m
        joints_cam = cam.world_to_camera(joints)
        kp = cam.project(joints)
        t_cam = solve_root_translation(joints_cam - joints_cam[:1], kp, np.ones(17), cam)
        np.testing.assert_allclose(t_cam, joints_cam[0], atol=1e-9)
        # with 2 px of keypoint noise the pelvis is still found within a few centimetres
        noisy = kp + np.random.default_rng(0).normal(0.0, 2.0, kp.shape)
        t_noisy = solve_root_translation(joints_cam - joints_cam[:1], noisy, np.ones(17), cam)
        assert np.linalg.norm(t_noisy - joints_cam[0]) < 0.1
    assert solve_root_translation(joints_cam - joints_cam[:1], kp, np.r_[np.ones(3), np.zeros(14)], cam) is None


def test_model_name_says_which_network_and_where() -> None:
    live = pytest.importorskip("vimcan_core.live")
    torch.manual_seed(0)
    src = ModelPoseSource(live.StreamingPoseEstimator(Vimcan(preset("vimcan-t", streaming=True)), device="cpu"))
    assert src.name.startswith("VIMCAN-T streaming, cpu") and src.backend.startswith("cpu")


def test_runs_live_in_the_demo_pipeline_and_swaps_with_the_ground_truth() -> None:
    try:
        from vimcan_core.live import StreamingPoseEstimator
    except ImportError:  # before the live module: the same network stepped by the test's estimator
        source = ModelPoseSource(TinyEstimator())
    else:
        torch.manual_seed(0)
        source = ModelPoseSource(StreamingPoseEstimator(Vimcan(preset("vimcan-t", **TINY)), device="cpu"))
    config = DemoConfig(camera=SimCameraConfig(render_preview=False))
    pipeline = build_demo_pipeline(pose_source=source, config=config)
    assert source.calibration is not None and source.camera is pipeline.demo.camera_model  # given by the demo
    q = pipeline.subscribe(maxsize=500)
    pipeline.start()
    try:
        deadline = time.monotonic() + 20.0
        while pipeline.stats().poses < 8 and time.monotonic() < deadline:
            time.sleep(0.05)
        pipeline.set_pose_source(pipeline.demo.ground_truth)
        deadline = time.monotonic() + 10.0
        while pipeline.latest()[1].source != pipeline.demo.ground_truth.name and time.monotonic() < deadline:
            time.sleep(0.05)
        stats = pipeline.stats()
    finally:
        pipeline.stop()
    items = []
    while True:
        try:
            items.append(q.get_nowait())
        except queue.Empty:
            break
    model_poses = [p for _, p in items if p.source == source.name]
    assert len(model_poses) >= 8 and stats.source_errors == 0
    assert all(p.confidence == pytest.approx(1.0) and p.imu_present.all() for p in model_poses[1:])
    assert all(np.isfinite(p.joints_world_m).all() for p in model_poses)
    assert items[-1][1].source == pipeline.demo.ground_truth.name
    # the frame index keeps counting across the swap: a view needs no reset
    idx = [s.frame_index for s, _ in items]
    assert idx == sorted(idx)
    assert dataclasses.is_dataclass(stats)


def test_from_checkpoint_loads_streaming_weights(rig, tmp_path) -> None:
    from vimcan_core.errors import VimcanError
    from vimcan_core.model.checkpoint import save_checkpoint

    reference = TinyEstimator(seed=7)
    path = save_checkpoint(tmp_path / "tiny-streaming.pt", reference.model)
    src = ModelPoseSource.from_checkpoint(path, calibration=rig.true_calibration(), camera=rig.camera_model, device="cpu")
    assert "cpu" in src.backend
    frame = synced_at(rig, 9.0)
    pose = src.estimate(frame)
    kp, quats, valid, _ = src.model_inputs(frame)
    expected = reference.step(kp, quats, valid)
    q_wc = np.asarray(rig.true_calibration().quat_world_from_camera)
    np.testing.assert_allclose(pose.joints_world_m, quat_rotate(q_wc, expected - expected[:1]), atol=1e-5)
    # offline (non-streaming) weights cannot run live
    torch.manual_seed(0)
    offline = save_checkpoint(tmp_path / "offline.pt", Vimcan(preset("vimcan-t", **{**TINY, "streaming": False})))
    with pytest.raises(VimcanError, match="stream"):
        ModelPoseSource.from_checkpoint(offline, device="cpu")


def test_the_cpu_model_runs_on_one_torch_thread(rig) -> None:
    torch.set_num_threads(2)
    make_source(rig)
    assert torch.get_num_threads() == 1
    torch.set_num_threads(2)
    ModelPoseSource(TinyEstimator(), config=ModelSourceConfig(cpu_threads=None))
    assert torch.get_num_threads() == 2


SHIPPED = Path(__file__).resolve().parents[2] / "resources" / "models" / "vimcan-t-streaming.pt"


@pytest.mark.skipif(not SHIPPED.is_file(), reason="no shipped streaming weights")
def test_shipped_weights_follow_the_demo_performer(rig) -> None:
    """The real network, through askew sensors and their calibration, tracks the walking performer
    much better than any fixed pose could (its skeleton's proportions are the training data's,
    not the performer's, so the error does not go to zero)."""
    from vimcan_core.metrics import mpjpe_mm

    src = ModelPoseSource.from_checkpoint(SHIPPED, calibration=rig.true_calibration(), camera=rig.camera_model, device="cpu")
    times = 4.0 + np.arange(120) / 30.0  # walking the circle, at the camera rate
    poses = [src.estimate(synced_at(rig, t, index=k)) for k, t in enumerate(times)]
    truth = rig.performer.pose_at(times).joints_root_relative_m[10:]
    predicted = np.array([p.joints_world_m for p in poses])[10:]
    err = mpjpe_mm(predicted, truth)
    standing = rig.performer.pose_at(0.0).joints_root_relative_m  # the best fixed guess: standing still
    baseline = mpjpe_mm(np.broadcast_to(standing, truth.shape), truth)
    assert err < 130.0 and err < 0.75 * baseline, f"MPJPE {err:.0f} mm (standing-still baseline {baseline:.0f} mm)"
    assert src.status == SourceStatus.OK
