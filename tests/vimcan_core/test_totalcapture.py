"""TotalCapture loader, on a small take that the test writes in the dataset's own formats."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from vimcan_core.errors import MotionFileError
from vimcan_core.rotations import quat_angle, quat_conj, quat_mul, random_quat
from vimcan_core.skeleton import Joint
from vimcan_core.totalcapture import (
    HEAD_EXTENSION,
    INCH_M,
    SENSOR_OF_SITE,
    find_takes,
    load_take,
    read_calibration,
    read_gt_positions,
    read_sensors,
    split_of,
)

SENSORS = ("Head", "Sternum", "Pelvis", "L_UpArm", "R_UpArm", "L_LowArm", "R_LowArm", "L_UpLeg", "R_UpLeg", "L_LowLeg", "R_LowLeg", "L_Foot", "R_Foot")
VICON = ("Hips", "Spine", "Spine1", "Spine2", "Spine3", "Neck", "Head", "RightShoulder", "RightArm", "RightForeArm", "RightHand",
         "LeftShoulder", "LeftArm", "LeftForeArm", "LeftHand", "RightUpLeg", "RightLeg", "RightFoot", "LeftUpLeg", "LeftLeg", "LeftFoot")


def _write_take(root: Path, subject: str, action: str, frames: int, seed: int) -> dict:
    """Ground truth (bones, positions) and the files as TotalCapture stores them."""
    rng = np.random.default_rng(seed)
    t = np.arange(frames) / 60.0
    # smooth bone orientations: a random start rotating about a random axis
    axis = rng.normal(size=(len(SENSORS), 3))
    axis /= np.linalg.norm(axis, axis=-1, keepdims=True)
    ang = np.broadcast_to(1.5 * t[:, None], (frames, len(SENSORS)))
    spin = np.concatenate([np.cos(ang / 2)[..., None], np.sin(ang / 2)[..., None] * axis], -1)  # T x S x 4
    bones = quat_mul(spin, random_quat(rng, (len(SENSORS),)))
    ref = random_quat(rng, (len(SENSORS),))
    bone_cal = random_quat(rng, (len(SENSORS),))
    sensor = quat_mul(quat_mul(quat_conj(ref), bones), bone_cal)  # q_ref * q_sensor * conj(q_bone) = bone
    acc = rng.normal(size=(frames, len(SENSORS), 3))
    imu = root / subject.upper() / "imu"
    imu.mkdir(parents=True, exist_ok=True)
    lines = [f"{len(SENSORS)}\t{frames}"]
    for f in range(frames):
        lines.append(str(f + 1))
        for s, name in enumerate(SENSORS):
            vals = list(sensor[f, s]) + list(acc[f, s]) + [0.0] * 6
            lines.append(name + "\t" + "\t".join(f"{v:.9f}" for v in vals))
    (imu / f"{subject}_{action}_Xsens.sensors").write_text("\n".join(lines) + "\n")
    for kind, q in (("ref", ref), ("bone", bone_cal)):
        rows = [str(len(SENSORS))] + [f"{n} {q[s, 1]:.9f} {q[s, 2]:.9f} {q[s, 3]:.9f} {q[s, 0]:.9f}" for s, n in enumerate(SENSORS)]
        (imu / f"{subject}_{action}_calib_imu_{kind}.txt").write_text("\n".join(rows) + "\n")
    pos_in = rng.normal(scale=20.0, size=(1, len(VICON), 3)) + np.array([0.0, 0.5, 0.0]) * t[:, None, None] * 39.37
    vicon = root / subject.upper() / "vicon" / action
    vicon.mkdir(parents=True, exist_ok=True)
    rows = ["\t".join(VICON)] + ["\t".join(f"{v:.6f}" for v in row.ravel()) for row in pos_in]
    (vicon / "gt_skel_gbl_pos.txt").write_text("\n".join(rows) + "\n")
    return {"bones": bones, "pos_m": pos_in * INCH_M, "acc": acc}


def test_files_are_parsed_with_their_quaternion_orders_and_units(tmp_path: Path) -> None:
    truth = _write_take(tmp_path, "s1", "acting1", frames=12, seed=0)
    rec = read_sensors(tmp_path / "S1" / "imu" / "s1_acting1_Xsens.sensors")
    assert rec.names == SENSORS and rec.quats_ref_sensor.shape == (12, 13, 4)
    np.testing.assert_allclose(rec.acc_sensor_mps2, truth["acc"], atol=1e-8)
    ref = read_calibration(tmp_path / "S1" / "imu" / "s1_acting1_calib_imu_ref.txt")
    assert set(ref) == set(SENSORS) and all(q[0] >= 0 for q in ref.values())  # w first after reading
    names, pos = read_gt_positions(tmp_path / "S1" / "vicon" / "acting1" / "gt_skel_gbl_pos.txt")
    assert names == VICON
    np.testing.assert_allclose(pos, truth["pos_m"], atol=1e-6)  # inches -> metres


def test_a_take_gives_the_bone_orientations_and_h36m_joints_at_30_hz(tmp_path: Path) -> None:
    truth = _write_take(tmp_path, "s2", "walking2", frames=61, seed=1)
    takes = find_takes(tmp_path)
    assert len(takes) == 1 and takes[0].split == "test" and takes[0].gt_positions is not None
    clip = load_take(takes[0])
    assert clip.fps == 30.0 and clip.num_frames == 31  # 1 s at 60 Hz -> 30 Hz
    for site, name in enumerate(SENSOR_OF_SITE):
        err = np.degrees(quat_angle(clip.bone_quats[:, site], truth["bones"][::2, SENSORS.index(name)]))
        assert err.max() < 1e-4, name
    v = {n: i for i, n in enumerate(VICON)}
    p = truth["pos_m"][::2]
    np.testing.assert_allclose(clip.joints_world_m[:, Joint.LEFT_ELBOW], p[:, v["LeftForeArm"]], atol=1e-6)
    np.testing.assert_allclose(clip.joints_world_m[:, Joint.RIGHT_KNEE], p[:, v["RightLeg"]], atol=1e-6)
    head = p[:, v["Head"]] + HEAD_EXTENSION * (p[:, v["Head"]] - p[:, v["Neck"]])
    np.testing.assert_allclose(clip.joints_world_m[:, Joint.HEAD], head, atol=1e-6)


def test_standard_split() -> None:
    assert split_of("s1", "acting1") == "train" and split_of("S3", "rom2") == "train"
    assert split_of("s5", "freestyle3") == "test" and split_of("s1", "walking2") == "test"
    assert split_of("s4", "acting1") is None


def test_truncated_sensor_file_names_the_file(tmp_path: Path) -> None:
    _write_take(tmp_path, "s1", "rom1", frames=5, seed=2)
    path = tmp_path / "S1" / "imu" / "s1_rom1_Xsens.sensors"
    path.write_text("\n".join(path.read_text().splitlines()[:-3]))
    with pytest.raises(MotionFileError, match=r"s1_rom1_Xsens\.sensors.*truncated"):
        read_sensors(path)
