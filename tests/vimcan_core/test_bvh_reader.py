"""BVH reader: real CMU files, an independent parser (bvhio), hand-computed kinematics, and
the errors of malformed files."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest

from vimcan_core.bvh.reader import parse_bvh, read_bvh
from vimcan_core.errors import MotionFileError

SIMPLE = """HIERARCHY
ROOT Hips
{
  OFFSET 0 0 0
  CHANNELS 6 Xposition Yposition Zposition Xrotation Yrotation Zrotation
  JOINT Arm
  {
    OFFSET 1 0 0
    CHANNELS 3 Zrotation Xrotation Yrotation
    JOINT Hand
    {
      OFFSET 2 0 0
      CHANNELS 6 Xposition Yposition Zposition Zrotation Yrotation Xrotation
      End Site
      {
        OFFSET 0 1 0
      }
    }
  }
}
MOTION
Frames: 2
Frame Time: 0.041666667
0 0 0 0 0 0 0 0 0 2 0 0 0 0 0
10 20 30 0 0 90 0 0 0 0 3 0 0 0 0
"""


def test_cmu_plain_file_hierarchy_channels_and_rate(shared_data: Path) -> None:
    m = read_bvh(shared_data / "cmu" / "plain" / "09_03.bvh")
    assert m.num_frames == 129 and m.values.shape == (129, 132)
    assert m.fps == pytest.approx(120.0, rel=1e-5)
    assert len(m.joints) == 43 + 14 and sum(j.is_end_site for j in m.joints) == 14
    assert m.joints[0].name == "hip" and m.joints[0].rotation_order == "ZYX"
    assert {j.rotation_order for j in m.joints[1:] if not j.is_end_site} == {"ZXY"}
    assert m.joints[m.index("leftEye_End")].parent == m.index("leftEye")
    # the rest pose is a T-pose in centimetres: hands along +-X at shoulder height
    rest = m.rest_positions()
    lh, rh = rest[m.index("lHand")], rest[m.index("rHand")]
    assert lh[0] == pytest.approx(62.22258) and rh[0] == pytest.approx(-62.22258)
    assert abs(lh[1] - rest[m.index("lShldr")][1]) < 2.0


def test_gz_file_holds_every_fourth_frame_of_the_plain_file(shared_data: Path) -> None:
    plain = read_bvh(shared_data / "cmu" / "plain" / "08_10.bvh")
    gz = read_bvh(shared_data / "cmu" / "subjects" / "08" / "08_10.bvh.gz")
    assert gz.fps == pytest.approx(30.0, rel=1e-5)
    np.testing.assert_array_equal(gz.values, plain.values[::4])
    np.testing.assert_allclose(gz.global_positions()[:5], plain.global_positions(slice(0, 20, 4)))


def test_forward_kinematics_matches_bvhio(shared_data: Path) -> None:
    """bvhio parses the file itself and converts each joint's Euler angles to quaternions."""
    bvhio = pytest.importorskip("bvhio")
    pytest.importorskip("glm")
    path = shared_data / "cmu" / "plain" / "02_03.bvh"
    m = read_bvh(path)
    container = bvhio.readAsBvh(str(path))
    frames = [0, 1, 50, 120]
    ours = m.global_positions(np.array(frames))
    index = {n: i for i, n in enumerate(m.names)}
    err = []

    def walk(joint, k: int, frame: int, parent_rot, parent_pos, is_root: bool) -> None:
        key = joint.Keyframes[frame]
        pos = key.Position if is_root else parent_pos + parent_rot * joint.Offset
        rot = parent_rot * key.Rotation
        err.append(np.abs(np.array(pos) - ours[k, index[joint.Name]]).max())
        if joint.EndSite is not None and not joint.Children:
            err.append(np.abs(np.array(pos + rot * joint.EndSite) - ours[k, index[joint.Name + "_End"]]).max())
        for c in joint.Children:
            walk(c, k, frame, rot, pos, False)

    import glm

    for k, f in enumerate(frames):
        walk(container.Root, k, f, glm.quat(), glm.vec3(0), True)
    assert len(err) == len(m.joints) * len(frames)
    assert max(err) < 1e-3  # cm; bvhio computes in float32


def test_hand_computed_kinematics_any_order_and_position_channels() -> None:
    m = parse_bvh(SIMPLE, "simple.bvh")
    assert [j.rotation_order for j in m.joints] == ["XYZ", "ZXY", "ZYX", ""]
    assert m.fps == pytest.approx(24.0)
    pos = m.global_positions()
    # frame 0: the Hand's position channels (2, 0, 0) replace its OFFSET; nothing rotated
    np.testing.assert_allclose(pos[0], [[0, 0, 0], [1, 0, 0], [3, 0, 0], [3, 1, 0]], atol=1e-12)
    # frame 1: root at (10, 20, 30) turned +90 deg about Z (x -> y); Hand translated by (0, 3, 0)
    np.testing.assert_allclose(
        pos[1], [[10, 20, 30], [10, 21, 30], [7, 21, 30], [6, 21, 30]], atol=1e-9
    )
    rot = m.global_rotations()
    np.testing.assert_allclose(rot[1, 0], [np.sqrt(0.5), 0, 0, np.sqrt(0.5)], atol=1e-12)


def test_crlf_tabs_exponents_and_gzip(tmp_path: Path) -> None:
    text = SIMPLE.replace("\n", "\r\n").replace("Frames: 2", "Frames:\t2").replace(" 90 ", " 9.0e1 ")
    path = tmp_path / "take.bvh.gz"
    with gzip.open(path, "wt", newline="") as f:
        f.write(text)
    m = read_bvh(path)
    np.testing.assert_allclose(m.global_positions(), parse_bvh(SIMPLE).global_positions())


@pytest.mark.parametrize(
    "edit, line, words",
    [
        (lambda s: s.replace("    JOINT Hand\n    {", "    JOINT Hand\n"), 12, "expected '{'"),
        (lambda s: s.replace("0 0 0 0 0 0 0 0 0 2 0 0 0 0 0", "0 0 0 0 0 0 0 0 0 2 0 0 0 0"), 24, "14 values, expected 15"),
        (lambda s: s.replace("10 20 30 0 0 90", "10 20 nan 0 0 90"), 25, "Hips Zposition"),
        (lambda s: s.replace("Frames: 2", "Frames: 3"), 25, "truncated"),
        (lambda s: s.replace("Frames: 2", "Frames: 1"), 25, "more motion lines"),
        (lambda s: s.replace("Xrotation Yrotation Zrotation", "Xrotation Yrotation Wrotation"), 5, "unknown channel"),
        (lambda s: s.replace("OFFSET 1 0 0", "OFFSET 1 0"), 9, "expected a number for OFFSET of 'Arm'"),
        (lambda s: s.replace("HIERARCHY", "HIERARCH"), 1, "HIERARCHY"),
    ],
)
def test_malformed_files_name_the_file_line_and_problem(edit, line: int, words: str) -> None:
    with pytest.raises(MotionFileError) as info:
        parse_bvh(edit(SIMPLE), "bad.bvh")
    msg = str(info.value)
    assert f"bad.bvh:{line}:" in msg and words in msg, msg


def test_missing_file_is_a_motion_file_error(tmp_path: Path) -> None:
    with pytest.raises(MotionFileError, match="no such BVH file"):
        read_bvh(tmp_path / "nope.bvh")
