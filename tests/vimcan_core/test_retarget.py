"""Retargeting to H36M-17: the CMU data, every naming convention of the table, the override
file, unit detection and resampling."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from vimcan_core.bvh.reader import END_SITE_SUFFIX, parse_bvh, read_bvh
from vimcan_core.errors import MotionFileError
from vimcan_core.retarget import (
    RetargetConfig,
    TposeSource,
    load_name_table,
    normalize_name,
    resolve_mapping,
    retarget,
    retarget_file,
)
from vimcan_core.rotations import euler_to_matrix, matrix_to_euler, quat_angle, quat_rotate
from vimcan_core.skeleton import IMU_CHILD_JOINT, IMU_JOINT, JOINT_NAMES, PARENTS, Joint, default_rest_pose


def test_names_are_compared_after_normalisation() -> None:
    assert normalize_name("mixamorig:LeftForeArm") == "leftforearm"
    assert normalize_name("Bip01 L Calf") == "lcalf"
    assert normalize_name("Bip001 R UpperArm") == "rupperarm"
    assert normalize_name("UpperArm_L") == "upperarml"
    assert normalize_name("Armature|lShldr") == "lshldr"


def test_cmu_clip_in_metres_without_the_tpose_frame(shared_data: Path) -> None:
    path = shared_data / "cmu" / "subjects" / "02" / "02_01.bvh.gz"
    clip = retarget_file(path)
    m = read_bvh(path)
    assert clip.convention == "daz" and clip.fps == 30.0
    assert clip.num_frames == m.num_frames - 1  # frame 0 (the converter's T-pose) dropped
    j = clip.joints_world_m
    # 153 cm figure: head top about 1.5 m above the ankles, pelvis 0.8-1.0 m above the floor
    height = j[:, Joint.HEAD, 1] - j[:, [Joint.LEFT_ANKLE, Joint.RIGHT_ANKLE], 1].min(axis=1)
    assert 1.3 < np.median(height) < 1.6
    thigh = np.linalg.norm(j[:, Joint.LEFT_KNEE] - j[:, Joint.LEFT_HIP], axis=-1)
    assert np.ptp(thigh) < 1e-6 and 0.3 < thigh[0] < 0.5  # rigid bones, metres
    # H36M positions are the mapped source joints' positions / 100
    pos = m.global_positions(slice(1, None)) / 100.0
    np.testing.assert_allclose(j[:, Joint.LEFT_ELBOW], pos[:, m.index("lForeArm")], atol=1e-9)
    eyes = 0.5 * (pos[:, m.index("leftEye" + END_SITE_SUFFIX)] + pos[:, m.index("rightEye" + END_SITE_SUFFIX)])
    np.testing.assert_allclose(j[:, Joint.HEAD], eyes, atol=1e-9)


def test_bone_orientations_carry_the_tpose_bones_onto_the_current_ones(shared_data: Path) -> None:
    """q_world_from_bone applied to a bone's T-pose direction gives its current direction."""
    path = shared_data / "cmu" / "subjects" / "06" / "06_01.bvh.gz"
    clip = retarget_file(path)
    m = read_bvh(path)
    rest = m.rest_positions()
    pairs = {0: ("lForeArm", "lHand"), 1: ("rForeArm", "rHand"), 2: ("lShin", "lFoot"), 3: ("rShin", "rFoot")}
    for site, (a, b) in pairs.items():
        d_rest = rest[m.index(b)] - rest[m.index(a)]
        j = clip.joints_world_m
        d_now = j[:, IMU_CHILD_JOINT[site]] - j[:, IMU_JOINT[site]]
        pred = quat_rotate(clip.bone_quats[:, site], d_rest / np.linalg.norm(d_rest))
        np.testing.assert_allclose(pred, d_now / np.linalg.norm(d_now, axis=-1, keepdims=True), atol=1e-6)


def test_first_frame_tpose_reference_makes_frame_zero_the_identity(shared_data: Path) -> None:
    m = read_bvh(shared_data / "cmu" / "plain" / "09_03.bvh")
    clip = retarget(m, RetargetConfig(tpose=TposeSource.FIRST_FRAME, drop_tpose_frame=False))
    np.testing.assert_allclose(np.abs(clip.bone_quats[0, :, 0]), 1.0, atol=1e-9)
    rest_clip = retarget(m, RetargetConfig(drop_tpose_frame=False))
    # the converter's T-pose has residual rotations of a few degrees only
    assert np.degrees(quat_angle(rest_clip.bone_quats[0], np.array([1.0, 0, 0, 0]))).max() < 35


def test_resampling_120_to_30_hz_equals_the_decimated_file(shared_data: Path) -> None:
    a = retarget_file(shared_data / "cmu" / "plain" / "02_03.bvh")
    b = retarget_file(shared_data / "cmu" / "subjects" / "02" / "02_03.bvh.gz")
    assert a.num_frames == b.num_frames
    np.testing.assert_allclose(a.joints_world_m, b.joints_world_m, atol=1e-5)
    assert np.degrees(quat_angle(a.bone_quats, b.bone_quats)).max() < 1e-3


# ---- synthetic files in each naming convention ----------------------------------------


def _first_name(spec) -> str:
    alt = spec[0]
    return alt if isinstance(alt, str) else alt[0]


def _write_skeleton(names: list[str], scale: float, fps: float, frames: int, seed: int = 0) -> tuple[str, np.ndarray]:
    """A BVH text with the H36M hierarchy and the given joint names (a name '<parent>_End' on a
    leaf becomes an End Site), random ZXY rotations; returns (text, T x 17 x 3 expected metres)."""
    rest = default_rest_pose().offsets_m
    rng = np.random.default_rng(seed)
    children = {j: [c for c, p in enumerate(PARENTS) if p == j] for j in range(17)}
    lines = ["HIERARCHY"]
    order: list[int] = []

    def emit(j: int, depth: int) -> None:
        pad = "  " * depth
        off = " ".join(f"{v * scale:.6f}" for v in rest[j])
        if PARENTS[j] >= 0 and not children[j] and names[j] == names[PARENTS[j]] + "_End":
            lines.extend([f"{pad}End Site", f"{pad}{{", f"{pad}  OFFSET {off}", f"{pad}}}"])
            return
        kw = "ROOT" if PARENTS[j] < 0 else "JOINT"
        lines.extend([f"{pad}{kw} {names[j]}", f"{pad}{{", f"{pad}  OFFSET {off}"])
        if PARENTS[j] < 0:
            lines.append(f"{pad}  CHANNELS 6 Xposition Yposition Zposition Zrotation Xrotation Yrotation")
        else:
            lines.append(f"{pad}  CHANNELS 3 Zrotation Xrotation Yrotation")
        order.append(j)
        for c in children[j]:
            emit(c, depth + 1)
        lines.append(f"{pad}}}")

    emit(0, 0)
    n_ch = 6 + 3 * (len(order) - 1)
    t = np.arange(frames) / fps
    values = np.zeros((frames, n_ch))
    values[:, 0] = 0.5 * t * scale  # root walks along +X at 0.5 m/s
    values[:, 1] = rest[0, 1] * scale
    values[:, 3:] = rng.uniform(-30, 30, size=(1, n_ch - 3)) * np.sin(2 * np.pi * 0.7 * t)[:, None]
    lines += ["MOTION", f"Frames: {frames}", f"Frame Time: {1 / fps:.8f}"]
    lines += [" ".join(f"{v:.6f}" for v in row) for row in values]
    text = "\n".join(lines) + "\n"
    pos = parse_bvh(text).global_positions() / scale
    return text, pos


CONVENTION_NAMES = {
    "cmu_motionbuilder": lambda n: n,
    "mixamo": lambda n: "mixamorig:" + n,
    "asf": lambda n: n,
    "biped": lambda n: "Bip01 " + n,
    "unity_humanoid": lambda n: n,
}


@pytest.mark.parametrize("convention", sorted(CONVENTION_NAMES))
def test_each_naming_convention_is_detected_and_mapped(convention: str) -> None:
    conv = load_name_table()[convention]
    names = [CONVENTION_NAMES[convention](_first_name(conv["joints"][j])) for j in JOINT_NAMES]
    text, _ = _write_skeleton(names, scale=100.0, fps=30.0, frames=20)
    m = parse_bvh(text, f"{convention}.bvh")
    clip = retarget(m, RetargetConfig(drop_tpose_frame=False))
    assert clip.convention == convention
    pos = m.global_positions() / 100.0
    for j, name in enumerate(names):
        np.testing.assert_allclose(clip.joints_world_m[:, j], pos[:, m.index(name)], atol=1e-9, err_msg=JOINT_NAMES[j])
    # IMU bone orientation = the named joint's global rotation (rest pose = identity)
    site_joint = m.index(CONVENTION_NAMES[convention](conv["imu"]["left_forearm"] if isinstance(conv["imu"]["left_forearm"], str) else conv["imu"]["left_forearm"][0]))
    np.testing.assert_allclose(np.abs(np.sum(clip.bone_quats[:, 0] * m.global_rotations()[:, site_joint], -1)), 1.0, atol=1e-9)


@pytest.mark.parametrize("scale, expected", [(1.0, 1.0), (100.0, 0.01), (1000.0, 0.001)])
def test_units_are_detected_from_the_skeleton_height(scale: float, expected: float) -> None:
    conv = load_name_table()["unity_humanoid"]
    names = [_first_name(conv["joints"][j]) for j in JOINT_NAMES]
    text, pos_m = _write_skeleton(names, scale=scale, fps=30.0, frames=10)
    clip = retarget(parse_bvh(text), RetargetConfig(drop_tpose_frame=False))
    np.testing.assert_allclose(clip.joints_world_m, pos_m, atol=1e-5)
    with pytest.raises(MotionFileError, match="unit scale"):
        text_in, _ = _write_skeleton(names, scale=10.0, fps=30.0, frames=2)
        retarget(parse_bvh(text_in), RetargetConfig(drop_tpose_frame=False))


def test_24_fps_is_resampled_to_30_hz() -> None:
    conv = load_name_table()["cmu_motionbuilder"]
    names = [_first_name(conv["joints"][j]) for j in JOINT_NAMES]
    text, pos_m = _write_skeleton(names, scale=100.0, fps=24.0, frames=49)  # 2 s
    clip = retarget(parse_bvh(text), RetargetConfig(drop_tpose_frame=False))
    assert clip.fps == 30.0 and clip.num_frames == 61
    # the root moves linearly: exact at every 30 Hz time
    np.testing.assert_allclose(clip.joints_world_m[:, 0, 0], 0.5 * np.arange(61) / 30.0, atol=1e-6)
    # frames on the common 1/6 s grid are the source frames
    np.testing.assert_allclose(clip.joints_world_m[::5], pos_m[::4], atol=1e-6)


def test_override_file_maps_unknown_names_and_errors_list_the_joints(tmp_path: Path) -> None:
    conv = load_name_table()["unity_humanoid"]
    names = [_first_name(conv["joints"][j]) for j in JOINT_NAMES]
    names[Joint.LEFT_ELBOW] = "ElbowThingLeft"
    text, _ = _write_skeleton(names, scale=100.0, fps=30.0, frames=5)
    m = parse_bvh(text, "odd.bvh")
    with pytest.raises(MotionFileError) as info:
        resolve_mapping(m)
    msg = str(info.value)
    assert "odd.bvh" in msg and "left_elbow" in msg and "ElbowThingLeft" in msg and "override" in msg
    override = tmp_path / "names.json"
    override.write_text(json.dumps({"joints": {"left_elbow": "ElbowThingLeft"}, "imu": {"left_forearm": "ElbowThingLeft"}}))
    clip = retarget(m, RetargetConfig(override=override, drop_tpose_frame=False))
    assert clip.convention == "unity_humanoid+override"
    np.testing.assert_allclose(clip.joints_world_m[:, Joint.LEFT_ELBOW], m.global_positions()[:, m.index("ElbowThingLeft")] / 100, atol=1e-9)


def test_euler_helpers_used_by_the_reader_round_trip() -> None:
    a = np.radians([[10.0, -20.0, 30.0], [170.0, 5.0, -60.0]])
    np.testing.assert_allclose(matrix_to_euler(euler_to_matrix(a, "ZXY"), "ZXY"), a, atol=1e-9)
