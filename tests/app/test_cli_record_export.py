"""`vimcan record --demo` and `vimcan export`: a 20 s headless demo take, re-export in cm/ZYX,
BVH round trips, a recording killed part way and recovered, re-solving with a tiny model."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from app.cli import main
from vimcan_core.bvh.reader import END_SITE_SUFFIX, read_bvh
from vimcan_core.skeleton import JOINT_NAMES, PARENTS
from vimcan_core.take import POSE_COLUMNS, RAW_COLUMNS, TakeStatus, read_meta, read_poses, read_raw

ROOT = Path(__file__).resolve().parents[2]


def _bvh_joints(path: Path, scale: float = 1.0) -> np.ndarray:
    m = read_bvh(path)
    pos = m.global_positions() / scale
    idx = [m.index(n) if n in m.names else m.index(JOINT_NAMES[PARENTS[j]] + END_SITE_SUFFIX) for j, n in enumerate(JOINT_NAMES)]
    return pos[:, idx]


@pytest.fixture(scope="module")
def demo_take(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """20 s of the simulated demo, recorded headless through the command line."""
    out = tmp_path_factory.mktemp("takes")
    assert main(["record", "--demo", "--seconds", "20", "--out", str(out), "--name", "demo"]) == 0
    return out / "demo"


def test_record_demo_writes_a_complete_take(demo_take: Path, capsys: pytest.CaptureFixture) -> None:
    meta = read_meta(demo_take)
    assert meta.status is TakeStatus.COMPLETE
    assert 19.0 < meta.duration_s < 21.0
    assert meta.frames + meta.frames_missed >= 0.9 * 30 * meta.duration_s
    assert meta.camera is not None and meta.model == "simulation ground truth"
    assert {d.site for d in meta.devices if d.kind == "imu"} == {"left_forearm", "right_forearm", "left_lower_leg",
                                                                "right_lower_leg", "head", "pelvis"}
    # the CSVs load with plain numpy and pandas
    a = np.loadtxt(demo_take / "poses.csv", delimiter=",", skiprows=1)
    assert a.shape == (meta.frames, len(POSE_COLUMNS))
    np.testing.assert_allclose(a[:, 1:52].reshape(-1, 17, 3), read_poses(demo_take / "poses.csv").joints_m)  # time, then joints
    pd = pytest.importorskip("pandas")
    raw = pd.read_csv(demo_take / "raw.csv")
    assert list(raw.columns) == list(RAW_COLUMNS)
    imu = raw[raw["kind"] == "imu"]
    assert len(imu) > 6 * 40 * meta.duration_s  # six IMUs at about 60 Hz
    q = imu[["qw", "qx", "qy", "qz"]].to_numpy()
    np.testing.assert_allclose(np.linalg.norm(q, axis=1), 1.0, atol=1e-6)
    assert (raw["kind"] == "keypoints").sum() >= 0.9 * meta.frames
    g = np.genfromtxt(demo_take / "raw.csv", delimiter=",", names=True, dtype=None, encoding="utf-8")
    assert len(g) == len(raw) and set(np.unique(g["kind"])) >= {"imu", "keypoints", "state"}
    poses = read_poses(demo_take / "poses.csv")
    # frames are written in the order the pipeline hands them out; its first frames can come out of
    # time order (IMU-only ticks before the first camera frame), later ones never do
    late = np.flatnonzero(np.diff(poses.time_s) <= 0)
    assert len(late) <= 3 and (len(late) == 0 or poses.time_s[late.max()] < 1.0), poses.time_s[:5]
    np.testing.assert_allclose(poses.joints_m[:, 0], 0.0, atol=1e-9)  # root-relative
    height = poses.joints_m[:, 10, 1] - np.minimum(poses.joints_m[:, 3, 1], poses.joints_m[:, 6, 1])
    assert 1.2 < np.median(height) < 2.0  # a person, in metres, Y up


def test_take_bvh_round_trips_to_the_recorded_joints(demo_take: Path) -> None:
    poses = read_poses(demo_take / "poses.csv")
    world = poses.joints_m + poses.root_m[:, None, :]
    back = _bvh_joints(demo_take / "take.bvh")
    assert back.shape == world.shape
    err_mm = 1000 * np.linalg.norm(back - world, axis=-1)
    assert err_mm.max() < 1.0, err_mm.max()  # within 1 mm (a rigid skeleton: micrometres)
    step = np.abs(np.diff(read_bvh(demo_take / "take.bvh").values[:, 3:], axis=0))
    assert step.max() < 90.0  # no 360-degree (or 180-degree) jumps in any channel


def test_export_in_centimetres_and_zyx(demo_take: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["export", str(demo_take), "--bvh", "--csv", "--units", "cm", "--order", "zyx", "--out", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    assert str(tmp_path / "take.bvh") in printed and str(tmp_path / "joints_world_cm.csv") in printed
    m = read_bvh(tmp_path / "take.bvh")
    assert all(j.rotation_order == "ZYX" for j in m.joints if not j.is_end_site)
    poses = read_poses(demo_take / "poses.csv")
    world = poses.joints_m + poses.root_m[:, None, :]
    err_mm = 1000 * np.linalg.norm(_bvh_joints(tmp_path / "take.bvh", 100.0) - world, axis=-1)
    assert err_mm.max() < 1.0
    csv = np.loadtxt(tmp_path / "joints_world_cm.csv", delimiter=",", skiprows=1)
    np.testing.assert_allclose(csv[:, 1:52].reshape(-1, 17, 3) / 100.0, world, atol=1e-6)
    np.testing.assert_array_equal(csv[:, 52], poses.frame_index)


def test_export_of_a_missing_take_says_which(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["export", str(tmp_path / "nope"), "--bvh"]) == 1
    assert str(tmp_path / "nope") in capsys.readouterr().err
    assert main(["export", str(tmp_path), "--units", "furlongs"]) == 1
    assert "units must be 'm' or 'cm'" in capsys.readouterr().err


def test_killed_recording_is_recovered_with_export_recover(tmp_path: Path) -> None:
    cmd = [sys.executable, "-c", "import sys; from app.cli import main; sys.exit(main(sys.argv[1:]))",
           "record", "--demo", "--seconds", "120", "--out", str(tmp_path), "--name", "killed"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    poses = tmp_path / "killed" / "poses.csv"
    seen = 0
    try:
        assert "recording" in proc.stdout.readline()
        deadline = time.monotonic() + 60
        while seen < 90 and time.monotonic() < deadline:  # about 3 s of frames on disk
            time.sleep(0.2)
            seen = max(0, sum(1 for _ in open(poses)) - 1) if poses.exists() else 0
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    assert seen >= 90
    assert read_meta(tmp_path / "killed").status is TakeStatus.RECORDING
    assert not (tmp_path / "killed" / "take.bvh").exists()
    assert main(["export", "--recover", str(tmp_path / "killed")]) == 0
    meta = read_meta(tmp_path / "killed")
    assert meta.status is TakeStatus.RECOVERED and meta.frames >= seen  # nothing flushed was lost
    table = read_poses(tmp_path / "killed" / "poses.csv")
    assert table.num_frames == meta.frames
    raw = read_raw(tmp_path / "killed" / "raw.csv")
    assert raw.time_s.max() > table.time_s[-1] - 1.0  # raw samples up to the end were kept too
    back = _bvh_joints(tmp_path / "killed" / "take.bvh")
    err_mm = 1000 * np.linalg.norm(back - (table.joints_m + table.root_m[:, None, :]), axis=-1)
    assert err_mm.max() < 1.0


def test_resolve_with_a_tiny_bidirectional_model(demo_take: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """--resolve plumbing: the model inputs are the recorded ones, and the resolved poses are exactly
    the model's output turned into the world frame (a random tiny model: the shipped weights come later)."""
    torch = pytest.importorskip("torch")
    import shutil

    from sensors.export import ResolveConfig, build_model_inputs
    from vimcan_core.camera import normalize_keypoints
    from vimcan_core.model import Vimcan, preset
    from vimcan_core.model.checkpoint import load_checkpoint, save_checkpoint
    from vimcan_core.model.mirror import flip_averaged
    from vimcan_core.rotations import quat_angle, quat_mul, quat_rotate
    from vimcan_core.take import read_inputs

    take = tmp_path / "take"
    shutil.copytree(demo_take, take)
    for name in ("poses.csv", "inputs.csv"):  # the first 2 s keep the CPU time small
        lines = (take / name).read_text().splitlines(keepends=True)
        (take / name).write_text("".join(lines[:61]))
    live = read_poses(take / "poses.csv")
    meta = read_meta(take)

    # the inputs, written out here from the files: keypoints normalised, bone orientations into the camera frame
    cam = meta.camera
    q_cw = np.array(cam["quat_cam_from_world"])
    inputs = read_inputs(take / "inputs.csv")
    kp = normalize_keypoints(inputs.keypoints_px, cam["width_px"], cam["height_px"])
    conf = np.where(np.isfinite(kp).all(-1), inputs.keypoint_confidence, 0.0)
    kp = np.concatenate((np.nan_to_num(kp), conf[..., None]), axis=-1)
    valid = live.imu_present & np.isfinite(live.bone_quats_world).all(-1)
    quats = np.where(valid[..., None], quat_mul(q_cw, np.nan_to_num(live.bone_quats_world)), [1.0, 0, 0, 0])  # identity where missing
    as_live = build_model_inputs(take, ResolveConfig(repair_imus=False))
    np.testing.assert_allclose(as_live.keypoints, kp, atol=1e-9)
    np.testing.assert_array_equal(as_live.imu_valid, valid)
    assert np.degrees(quat_angle(as_live.quats_cam, quats)).max() < 1e-4
    # by default the IMUs are paired again from raw.csv with the take's calibration: same orientations
    repaired = build_model_inputs(take)
    assert repaired.repaired and meta.calibration is not None
    assert repaired.imu_valid.mean() > 0.95
    both = repaired.imu_valid & valid
    angle_deg = np.degrees(quat_angle(repaired.quats_cam[both], quats[both]))
    assert np.median(angle_deg) < 1.0 and np.percentile(angle_deg, 99) < 5.0, (np.median(angle_deg), angle_deg.max())

    torch.manual_seed(0)
    tiny = dict(embed_dim=16, fused_dim=16, num_skeleton_layers=1, num_heads=2)
    save_checkpoint(tmp_path / "stream.pt", Vimcan(preset("vimcan-t", streaming=True, **tiny)))
    assert main(["export", "--resolve", str(take), "--checkpoint", str(tmp_path / "stream.pt")]) == 1
    assert "bidirectional" in capsys.readouterr().err
    save_checkpoint(tmp_path / "bi.pt", Vimcan(preset("vimcan-t", streaming=False, **tiny)))
    assert main(["export", "--resolve", str(take), "--checkpoint", str(tmp_path / "bi.pt")]) == 0
    resolved = read_poses(take / "poses_resolved.csv")
    np.testing.assert_array_equal(resolved.frame_index, live.frame_index)
    model, _ = load_checkpoint(tmp_path / "bi.pt")
    args = (torch.tensor(repaired.keypoints[None], dtype=torch.float32),
            torch.tensor(repaired.quats_cam[None], dtype=torch.float32), torch.tensor(repaired.imu_valid[None]))
    with torch.no_grad():
        y_flip = flip_averaged(model, *args)[0].double().numpy()  # the default: averaged with the mirror image
        y = model(*args)[0].double().numpy()
    want = quat_rotate(repaired.q_world_from_camera, y_flip)
    np.testing.assert_allclose(resolved.joints_m, want - want[:, :1], atol=1e-4)
    assert main(["export", "--resolve", str(take), "--checkpoint", str(tmp_path / "bi.pt"), "--no-flip"]) == 0
    want = quat_rotate(repaired.q_world_from_camera, y)
    resolved = read_poses(take / "poses_resolved.csv")
    np.testing.assert_allclose(resolved.joints_m, want - want[:, :1], atol=1e-4)
    m = read_bvh(take / "take_resolved.bvh")
    assert m.num_frames == live.num_frames
    np.testing.assert_allclose(m.global_positions()[:, 0], live.root_m, atol=1e-5)  # the live root trajectory
    assert main(["export", str(take), "--resolved", "--csv"]) == 0
    csv = np.loadtxt(take / "joints_world_m_resolved.csv", delimiter=",", skiprows=1)
    np.testing.assert_allclose(csv[:, 1:52].reshape(-1, 17, 3), resolved.joints_m + live.root_m[:, None, :], atol=1e-6)


def test_record_imus_by_spec_keeps_everything_measured_and_no_guessed_poses(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    code = main(["record", "--imu", "left_forearm=sim:left_forearm", "--imu", "pelvis=sim:pelvis?rate=120",
                 "--seconds", "2", "--out", str(tmp_path), "--name", "imus"])
    assert code == 0
    assert "vimcan export --resolve" in capsys.readouterr().out
    take = tmp_path / "imus"
    meta = read_meta(take)
    assert meta.status is TakeStatus.COMPLETE and meta.frames > 30
    assert {(d.device_id, d.site) for d in meta.devices} == {("left_forearm", "left_forearm"), ("pelvis", "pelvis")}
    raw = read_raw(take / "raw.csv")
    from vimcan_core.take import RawKind, read_inputs

    n_arm = raw.rows(RawKind.IMU, "left_forearm").sum()
    n_pelvis = raw.rows(RawKind.IMU, "pelvis").sum()
    assert n_arm > 60 and n_pelvis > 1.3 * n_arm  # 60 Hz and 120 Hz
    poses = read_poses(take / "poses.csv")
    assert np.isnan(poses.joints_m).all() and (poses.confidence == 0).all()  # nothing solved, nothing guessed
    inputs = read_inputs(take / "inputs.csv")
    present = np.isfinite(inputs.sensor_quats).all(-1).mean(axis=0)
    assert present[0] > 0.9 and present[5] > 0.9 and present[1:5].max() == 0.0
    assert not (take / "take.bvh").exists()
    assert main(["record", "--imu", "elbow=sim", "--seconds", "1", "--out", str(tmp_path)]) == 1
    assert "SITE one of left_forearm" in capsys.readouterr().err
