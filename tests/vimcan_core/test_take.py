"""The take format: CSV rows and headers, reading back with numpy and pandas, torn lines, recovery."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from vimcan_core.bvh.reader import read_bvh
from vimcan_core.errors import TakeError
from vimcan_core.kinematics import forward_kinematics
from vimcan_core.rotations import quat_from_rotvec
from vimcan_core.skeleton import IMU_JOINT, JOINT_NAMES, default_rest_pose
from vimcan_core.take import (
    INPUT_COLUMNS,
    POSE_COLUMNS,
    RAW_COLUMNS,
    TakeMeta,
    TakePaths,
    TakeStatus,
    header_line,
    input_row,
    new_take_folder,
    pose_row,
    read_inputs,
    read_meta,
    read_poses,
    recover_take,
    write_meta,
)


def _poses(T: int = 90, seed: int = 0):
    rng = np.random.default_rng(seed)
    t = np.arange(T) / 30.0
    rotvec = 0.5 * np.sin(2 * np.pi * rng.uniform(0.2, 0.6, (17, 3)) * t[:, None, None] + rng.uniform(0, 6, (17, 3)))
    root = np.stack((0.5 * np.sin(t), 0.95 + 0.0 * t, 0.2 * t), axis=-1)
    pos, glob = forward_kinematics(quat_from_rotvec(rotvec), root, default_rest_pose())
    return t, pos - pos[:, :1], root, glob[:, list(IMU_JOINT)]


def _write_take(folder: Path, T: int = 90, missing_site: int | None = 2) -> tuple:
    t, rel, root, bq = _poses(T)
    present = np.ones((T, 6), dtype=bool)
    if missing_site is not None:
        present[30:45, missing_site] = False
    with open(folder / "poses.csv", "w") as f:
        f.write(header_line(POSE_COLUMNS))
        for i in range(T):
            f.write(pose_row(i, t[i], rel[i], root[i], i % 10 != 0, present[i], 0.9, bq[i]))
    with open(folder / "inputs.csv", "w") as f:
        f.write(header_line(INPUT_COLUMNS))
        for i in range(T):
            kp = None if i % 10 == 0 else np.full((17, 2), 100.0 + i)
            f.write(input_row(i, t[i], (640, 480), kp, None if kp is None else np.full(17, 0.8), bq[i], np.zeros((6, 3))))
    with open(folder / "raw.csv", "w") as f:
        f.write(header_line(RAW_COLUMNS))
    write_meta(folder, TakeMeta(name="t", frames=T))
    return t, rel, root, bq, present


def test_columns_use_the_skeleton_names_and_are_unique() -> None:
    assert POSE_COLUMNS[:4] == ("time_s", "pelvis_x", "pelvis_y", "pelvis_z")  # time, then the joints
    assert POSE_COLUMNS[52] == "frame_index"
    assert f"{JOINT_NAMES[16]}_z" in POSE_COLUMNS and "left_forearm_present" in POSE_COLUMNS
    assert "head_qw" in POSE_COLUMNS and "right_wrist_conf" in RAW_COLUMNS and "pelvis_sensor_qz" in INPUT_COLUMNS
    for cols in (POSE_COLUMNS, INPUT_COLUMNS, RAW_COLUMNS):
        assert len(set(cols)) == len(cols)


def test_poses_round_trip_and_load_with_numpy_and_pandas(tmp_path: Path) -> None:
    t, rel, root, bq, present = _write_take(tmp_path)
    table = read_poses(tmp_path / "poses.csv")
    assert table.num_frames == len(t)
    np.testing.assert_allclose(table.joints_m, rel, atol=1e-8)
    np.testing.assert_allclose(table.root_m, root, atol=1e-8)
    assert table.frame_time_s() == pytest.approx(1 / 30, rel=1e-6)
    np.testing.assert_array_equal(table.imu_present, present)
    # a missing sensor is NaN, never filled in
    assert np.isnan(table.bone_quats_world[35, 2]).all() and np.isfinite(table.bone_quats_world[35, 3]).all()
    np.testing.assert_allclose(table.bone_quats_world[0], bq[0], atol=1e-8)
    assert table.camera_present.sum() == len(t) - len(t) // 10
    # plain numpy and pandas, no extra code
    a = np.loadtxt(tmp_path / "poses.csv", delimiter=",", skiprows=1)
    assert a.shape == (len(t), len(POSE_COLUMNS))
    s = np.genfromtxt(tmp_path / "poses.csv", delimiter=",", names=True)
    np.testing.assert_allclose(s["left_wrist_y"], rel[:, 13, 1], atol=1e-8)
    pd = pytest.importorskip("pandas")
    df = pd.read_csv(tmp_path / "poses.csv")
    assert list(df.columns) == list(POSE_COLUMNS)
    np.testing.assert_allclose(df["head_z"].to_numpy(), rel[:, 10, 2], atol=1e-8)
    assert df["left_lower_leg_qw"].isna().sum() == 15
    inputs = read_inputs(tmp_path / "inputs.csv")
    assert np.isnan(inputs.keypoints_px[0]).all() and inputs.keypoints_px[1, 0, 0] == 101.0
    assert inputs.keypoint_confidence[1, 0] == pytest.approx(0.8)


def test_torn_last_line_is_skipped_and_recovery_cuts_it(tmp_path: Path) -> None:
    t, rel, *_ = _write_take(tmp_path, T=40)
    with open(tmp_path / "poses.csv", "a") as f:
        f.write("40,1.3333,0.0,0.1")  # a crash in the middle of a line
    assert read_poses(tmp_path / "poses.csv").num_frames == 40
    meta_path = tmp_path / "take.json"
    meta_path.write_text(meta_path.read_text()[:25])  # torn take.json too
    with pytest.raises(TakeError, match="take.json"):
        read_meta(tmp_path)
    meta = recover_take(tmp_path)
    assert meta.status is TakeStatus.RECOVERED and meta.frames == 40
    assert meta.duration_s == pytest.approx(t[-1] - t[0])
    assert (tmp_path / "poses.csv").read_text().endswith("\n")
    assert read_meta(tmp_path).frames == 40
    bvh = read_bvh(tmp_path / "take.bvh")
    assert bvh.num_frames == 40
    pos = bvh.global_positions()
    np.testing.assert_allclose(pos[:, 0], read_poses(tmp_path / "poses.csv").root_m, atol=1e-5)


def test_recovering_a_complete_take_keeps_it_complete(tmp_path: Path) -> None:
    _write_take(tmp_path, T=20)
    write_meta(tmp_path, TakeMeta(name="t", status=TakeStatus.COMPLETE, frames=20, duration_s=0.6333))
    meta = recover_take(tmp_path)
    assert meta.status is TakeStatus.COMPLETE and meta.frames == 20


def test_meta_round_trips_and_errors_name_the_file(tmp_path: Path) -> None:
    meta = TakeMeta(name="x", notes="first take", model="VIMCAN-T streaming", backend="cpu", frames=3)
    write_meta(tmp_path, meta)
    d = json.loads((tmp_path / "take.json").read_text())
    assert d["status"] == "recording" and d["software_version"] and d["schema"] == 1
    assert read_meta(tmp_path) == meta
    with pytest.raises(TakeError, match=str(tmp_path / "nothing")):
        read_meta(tmp_path / "nothing")
    (tmp_path / "poses.csv").write_text("time_s,a,b\n1,2,3\n")
    with pytest.raises(TakeError, match="poses.csv:1: unexpected header"):
        read_poses(tmp_path / "poses.csv")


def test_new_take_folders_never_collide(tmp_path: Path) -> None:
    a = new_take_folder(tmp_path, "take")
    b = new_take_folder(tmp_path, "take")
    assert a.name == "take" and b.name == "take-2" and a.is_dir() and b.is_dir()
    assert TakePaths(a).bvh == a / "take.bvh"
