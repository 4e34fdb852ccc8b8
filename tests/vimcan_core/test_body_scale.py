"""The performer's height (vimcan_core.body_scale): the skeleton measure, scaling a take and a live
stream to a known height, and the height kept in calibration profiles and take.json.

Heights are floor-to-head heights of the rigid BVH skeleton (``estimate_rest_pose``: median bone
lengths, T-pose directions, ankles ``ANKLE_ABOVE_FLOOR_M`` above the floor), in metres."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from vimcan_core.body_scale import (
    LIVE_KEEP_EVERY,
    LIVE_UPDATE_FRAMES,
    LIVE_WINDOW_FRAMES,
    MAX_HEIGHT_M,
    MIN_HEIGHT_M,
    LiveHeightScaler,
    check_height_m,
    height_factor,
    scale_about_root,
    scale_to_height,
    skeleton_height_m,
)
from vimcan_core.bvh.reader import read_bvh
from vimcan_core.calibration import Calibration, SensorQuality
from vimcan_core.calibration_profile import CalibrationProfile, ProfileError, load_profile, save_profile
from vimcan_core.errors import CalibrationError, VimcanError
from vimcan_core.retarget import RetargetedClip, detect_unit_scale, resolve_mapping, retarget
from vimcan_core.rotations import quat_rotate, random_quat
from vimcan_core.skeleton import ANKLE_ABOVE_FLOOR_M, NUM_IMUS, PARENTS, Joint, default_rest_pose
from vimcan_core.take import TakeMeta, read_meta, write_meta

CHILDREN = [c for c, p in enumerate(PARENTS) if p >= 0]
BONE_PARENTS = [PARENTS[c] for c in CHILDREN]
#: the CMU clips used here: a walk (30 Hz, subject 02) and a run (120 Hz source, subject 09)
WALK = Path("cmu") / "subjects" / "02" / "02_01.bvh.gz"
RUN = Path("cmu") / "plain" / "09_03.bvh"
JUMPS = Path("cmu") / "subjects" / "01" / "01_01.bvh.gz"  # 687 frames: longer than the live window


def bones(joints_m: np.ndarray) -> np.ndarray:
    """... x 17 x 3 joints -> ... x 16 x 3 bone vectors (child minus parent)."""
    return joints_m[..., CHILDREN, :] - joints_m[..., BONE_PARENTS, :]


def angle_between_rad(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Angle between vectors along the last axis, accurate near zero (atan2 of |a x b| and a . b)."""
    return np.arctan2(np.linalg.norm(np.cross(a, b), axis=-1), np.sum(a * b, axis=-1))


def rest_positions_m(scale: float = 1.0) -> np.ndarray:
    """17 x 3 T-pose joints of ``default_rest_pose().scaled(scale)`` (pelvis at its height above the floor)."""
    return default_rest_pose().scaled(scale).positions()


@pytest.fixture(scope="module")
def jumps(shared_data: Path) -> RetargetedClip:
    """CMU 01_01 (forward jumps, turning around), 687 frames at 30 Hz, retargeted to the 17 joints."""
    return retarget(read_bvh(shared_data / JUMPS))


# --------------------------------------------------------------------------------------
# measuring a skeleton


@pytest.mark.parametrize("scale", [0.85, 1.0, 1.2])
def test_a_rest_pose_held_still_measures_the_rest_poses_height(scale: float) -> None:
    rng = np.random.default_rng(1)
    rest = default_rest_pose().scaled(scale)
    joints = np.tile(rest.positions(), (60, 1, 1)) + rng.normal(0.0, 0.002, (60, 17, 3))  # 60 x 17 x 3, 2 mm noise
    assert skeleton_height_m(joints) == pytest.approx(rest.height(), abs=0.005)
    if scale == 1.0:
        assert default_rest_pose().height() == pytest.approx(1.68, abs=0.05)  # an adult: the test measures something


def test_the_measure_ignores_where_the_skeleton_is_and_which_way_it_faces() -> None:
    """The re-solve measures joints in the camera frame, the live stage too: any rigid motion of the
    whole take gives the same height."""
    rng = np.random.default_rng(2)
    joints = np.tile(rest_positions_m(), (20, 1, 1)) + rng.normal(0.0, 0.003, (20, 17, 3))
    q = random_quat(rng)
    moved = quat_rotate(q, joints) + np.array([0.4, -1.3, 3.2])
    assert skeleton_height_m(moved) == pytest.approx(skeleton_height_m(joints), abs=1e-9)


def _rest_skeleton_joints(path: Path) -> np.ndarray:
    """1 x 17 x 3: the clip's own rest pose (its OFFSETs, all rotations zero) on the 17 joints, metres."""
    motion = read_bvh(path)
    mapping = resolve_mapping(motion)
    rest = motion.rest_positions()  # J x 3, file units
    joints = np.stack([rest[list(src)].mean(axis=0) for src in mapping.joint_sources])  # 17 x 3
    height_units = joints[Joint.HEAD, 1] - min(joints[Joint.LEFT_ANKLE, 1], joints[Joint.RIGHT_ANKLE, 1])
    return joints[None] * detect_unit_scale(float(height_units))


@pytest.mark.parametrize("clip", [WALK, RUN])
def test_real_motion_measures_its_rest_skeletons_height(shared_data: Path, clip: Path) -> None:
    """Walking or running, the measure is the height of the standing skeleton: the naive per-frame
    head-above-ankle height sags by many centimetres, the measure does not."""
    joints = retarget(read_bvh(shared_data / clip)).joints_world_m  # T x 17 x 3
    rest_m = skeleton_height_m(_rest_skeleton_joints(shared_data / clip))
    assert 1.4 < rest_m < 1.9
    assert skeleton_height_m(joints) == pytest.approx(rest_m, abs=0.01)
    naive = joints[:, Joint.HEAD, 1] - joints[:, [Joint.LEFT_ANKLE, Joint.RIGHT_ANKLE], 1].min(axis=1) + ANKLE_ABOVE_FLOOR_M
    assert rest_m - np.median(naive) > 0.04  # the measure is not the naive one


def test_frames_that_cannot_be_measured_are_skipped() -> None:
    joints = np.tile(rest_positions_m(1.1), (10, 1, 1))
    expected = skeleton_height_m(joints)
    joints[2] = np.nan
    joints[5, Joint.LEFT_WRIST] = np.nan
    joints[7, Joint.LEFT_KNEE] = joints[7, Joint.LEFT_HIP]  # a collapsed bone
    assert skeleton_height_m(joints) == pytest.approx(expected, abs=1e-12)
    assert math.isnan(skeleton_height_m(np.full((4, 17, 3), np.nan)))
    assert math.isnan(skeleton_height_m(np.zeros((4, 17, 3))))  # every bone collapsed


# --------------------------------------------------------------------------------------
# checking a height


@pytest.mark.parametrize("bad, shown", [(0.0, "0 m"), (float("nan"), "nan m"), (178.0, "178 m"), (-1.7, "-1.7 m"),
                                        (float("inf"), "inf m"), (0.89, "0.89 m"), (2.41, "2.41 m")])
def test_check_height_rejects_what_is_not_a_persons_height_in_metres(bad: float, shown: str) -> None:
    with pytest.raises(VimcanError) as info:
        check_height_m(bad, "take.json performer_height_m")
    message = str(info.value)
    assert message.startswith("take.json performer_height_m: ") and shown in message, message
    assert f"{MIN_HEIGHT_M:g} to {MAX_HEIGHT_M:g} m" in message and "0.9 to 2.4 m" in message, message


def test_check_height_accepts_the_range_and_numbers_given_as_text() -> None:
    assert check_height_m(MIN_HEIGHT_M) == 0.9 and check_height_m(MAX_HEIGHT_M) == 2.4
    assert check_height_m(np.float32(1.75)) == pytest.approx(1.75, abs=1e-6)
    assert isinstance(check_height_m(np.float64(1.78)), float)
    with pytest.raises(VimcanError, match=r"performer height: expected a height in metres, got 'tall'"):
        check_height_m("tall")
    with pytest.raises(VimcanError, match="expected a height in metres, got None"):
        check_height_m(None)


def test_height_factor_scales_the_body_above_the_ankles() -> None:
    """The 8 cm under the ankles is not part of the body: 1.54 m of body becomes 1.82 m."""
    assert height_factor(1.9, 1.62) == pytest.approx((1.9 - 0.08) / (1.62 - 0.08), rel=1e-12)
    assert height_factor(1.7, 1.7) == 1.0
    assert height_factor(1.7, float("nan")) == 1.0
    assert height_factor(1.7, ANKLE_ABOVE_FLOOR_M + 0.1) == 1.0  # no body to speak of: unusable
    assert height_factor(1.7, float("inf")) == 1.0


# --------------------------------------------------------------------------------------
# scaling a whole take


@pytest.mark.parametrize("height_m", [1.55, 1.78, 2.05])
def test_scale_to_height_on_real_motion(jumps: RetargetedClip, height_m: float) -> None:
    joints = jumps.joints_world_m  # T x 17 x 3, the root moves about the room
    before = joints.copy()
    scaled, factor = scale_to_height(joints, height_m)
    np.testing.assert_array_equal(joints, before)  # the input is left alone
    assert skeleton_height_m(scaled) == pytest.approx(height_m, abs=0.001)
    assert factor == pytest.approx(height_factor(height_m, skeleton_height_m(joints)), rel=1e-12)
    assert abs(factor - 1.0) > 0.02  # the clip is not already that tall
    np.testing.assert_array_equal(scaled[:, 0], joints[:, 0])  # the root does not move
    b0, b1 = bones(joints), bones(scaled)
    assert angle_between_rad(b0, b1).max() < 1e-9  # bone directions unchanged
    np.testing.assert_allclose(np.linalg.norm(b1, axis=-1), factor * np.linalg.norm(b0, axis=-1), rtol=1e-12)


def test_scale_to_height_keeps_unusable_frames_and_measures_the_rest(jumps: RetargetedClip) -> None:
    joints = jumps.joints_world_m[:120].copy()
    joints[10:20] = np.nan
    scaled, factor = scale_to_height(joints, 1.9)
    assert np.isnan(scaled[10:20]).all() and np.isfinite(scaled[20:]).all()
    assert skeleton_height_m(scaled) == pytest.approx(1.9, abs=0.001)


def test_scale_to_height_of_nothing_measurable_is_factor_one() -> None:
    scaled, factor = scale_to_height(np.full((5, 17, 3), np.nan), 1.8)
    assert factor == 1.0 and np.isnan(scaled).all() and scaled.shape == (5, 17, 3)
    collapsed = np.ones((3, 17, 3))
    scaled, factor = scale_to_height(collapsed, 1.8)
    assert factor == 1.0
    np.testing.assert_array_equal(scaled, collapsed)
    with pytest.raises(VimcanError, match="178 m"):
        scale_to_height(np.tile(rest_positions_m(), (3, 1, 1)), 178.0)  # centimetres given as metres


def test_scale_about_root_takes_any_leading_axes() -> None:
    rng = np.random.default_rng(3)
    joints = rng.normal(0.0, 0.5, (2, 4, 17, 3))  # B x T x 17 x 3
    out = scale_about_root(joints, 1.5)
    np.testing.assert_allclose(out - out[..., :1, :], 1.5 * (joints - joints[..., :1, :]), atol=1e-12)
    np.testing.assert_array_equal(out[..., 0, :], joints[..., 0, :])
    np.testing.assert_allclose(scale_about_root(joints, 1.0), joints, atol=1e-15)


# --------------------------------------------------------------------------------------
# scaling a live stream


def _wobbling(joints_m: np.ndarray, seed: int = 0, spread: float = 0.03) -> np.ndarray:
    """The clip with a size that changes from frame to frame (std ``spread``), as a network's guess does."""
    scale = 1.0 + np.random.default_rng(seed).normal(0.0, spread, joints_m.shape[0])
    return scale_about_root(joints_m, scale[:, None, None])


def test_live_scaler_reaches_the_height_after_the_first_window(jumps: RetargetedClip) -> None:
    assert jumps.num_frames > LIVE_WINDOW_FRAMES + 100
    frames = _wobbling(jumps.joints_world_m)
    scaler = LiveHeightScaler(1.85)
    out = np.empty_like(frames)
    factors = np.empty(len(frames))
    for k, f in enumerate(frames):
        out[k] = scaler(f)
        factors[k] = scaler.factor
    window = LIVE_WINDOW_FRAMES
    assert skeleton_height_m(out[window:]) == pytest.approx(1.85, abs=0.01)
    assert skeleton_height_m(frames) < 1.7  # the clip itself is not that tall
    # the first frame is measured on its own (one frame of a wobbling size: off by the wobble)
    assert factors[0] == pytest.approx(height_factor(1.85, skeleton_height_m(frames[:1])), rel=1e-12)
    # then the factor changes only every LIVE_UPDATE_FRAMES frames
    changes = np.flatnonzero(np.diff(factors) != 0) + 1
    assert set(changes) <= set(range(LIVE_UPDATE_FRAMES, len(frames), LIVE_UPDATE_FRAMES))
    assert len(changes) > len(frames) // LIVE_UPDATE_FRAMES // 2
    np.testing.assert_array_equal(out[:, 0], frames[:, 0])  # the root stays where it is


def test_live_scaler_reset_starts_measuring_again(jumps: RetargetedClip) -> None:
    scaler = LiveHeightScaler(1.7)
    small = scale_about_root(jumps.joints_world_m[:61], 0.8)  # measured at frames 0, 30, 60
    for f in small:
        scaler(f)
    kept = small[::LIVE_KEEP_EVERY]  # every second frame is kept for the measurement
    assert scaler.factor == pytest.approx(height_factor(1.7, skeleton_height_m(kept)), rel=1e-9)
    assert scaler.factor > 1.15
    scaler.reset()
    assert scaler.factor == 1.0
    large = scale_about_root(jumps.joints_world_m[60:80], 1.1)
    first = scaler(large[0])  # measured alone: the 0.8 frames are forgotten
    assert skeleton_height_m(first[None]) == pytest.approx(1.7, abs=0.001)


def test_live_scaler_passes_nan_frames_through(jumps: RetargetedClip) -> None:
    scaler = LiveHeightScaler(1.9)
    frames = jumps.joints_world_m[:90]
    out = []
    for k, f in enumerate(frames):
        if k % 7 == 3:
            f = np.full((17, 3), np.nan)  # the network had nothing
        elif k % 7 == 5:
            f = f.copy()
            f[Joint.RIGHT_WRIST] = np.nan  # one joint lost
        factor_before = scaler.factor
        o = scaler(f)
        if not np.isfinite(f).all():
            assert scaler.factor == factor_before  # not measured
            assert np.isnan(o).sum() == np.isnan(f).sum()  # NaN where the input had NaN, nowhere else
        out.append(o)
    out = np.array(out)
    ok = np.isfinite(out).all(axis=(1, 2))
    assert ok.sum() == 90 - 13 - 13 and np.isfinite(scaler.factor)
    assert skeleton_height_m(out[ok]) == pytest.approx(1.9, abs=0.01)
    # a frame with a NaN wrist is still scaled (by the current factor) where it is finite
    k = 12
    np.testing.assert_allclose(out[k, Joint.PELVIS], frames[k, Joint.PELVIS], atol=1e-12)
    assert np.isnan(out[k, Joint.RIGHT_WRIST]).all()


def test_live_scaler_rejects_a_bad_height() -> None:
    with pytest.raises(VimcanError, match="178 m"):
        LiveHeightScaler(178.0)


# --------------------------------------------------------------------------------------
# where the height is kept: calibration profiles and take.json


def _profile(height_m: float | None = None, name: str = "Studio B, Bob") -> CalibrationProfile:
    rng = np.random.default_rng(4)
    quality = tuple(SensorQuality(0.9, 0.3, 2.0, 80.0) for _ in range(NUM_IMUS))
    calib = Calibration(random_quat(rng, (NUM_IMUS,)), random_quat(rng, (NUM_IMUS,)), np.zeros((NUM_IMUS, 3)),
                        random_quat(rng), quality)
    ids = tuple(f"imu-{i}" for i in range(NUM_IMUS))
    return CalibrationProfile(name=name, calibration=calib, site_devices=ids, performer_height_m=height_m)


def _edit(path: Path, **values: object) -> Path:
    data = json.loads(path.read_text())
    for key, value in values.items():
        if value is ...:
            data.pop(key)
        else:
            data[key] = value
    path.write_text(json.dumps(data))
    return path


def test_profile_keeps_the_performers_height(config_dir: Path) -> None:
    path = save_profile(_profile(1.78))
    assert path.parent.parent == config_dir
    assert json.loads(path.read_text())["performer_height_m"] == 1.78
    assert load_profile(path).performer_height_m == 1.78
    unknown = save_profile(_profile(None, name="Nobody"))
    assert json.loads(unknown.read_text())["performer_height_m"] is None
    assert load_profile(unknown).performer_height_m is None


def test_profile_of_an_earlier_version_has_no_height(config_dir: Path) -> None:
    path = _edit(save_profile(_profile(1.78)), performer_height_m=...)
    assert "performer_height_m" not in json.loads(path.read_text())
    loaded = load_profile(path)
    assert loaded.performer_height_m is None and loaded.name == "Studio B, Bob"


@pytest.mark.parametrize("value, words", [(178, "178 m is not a performer height"), (0.5, "0.9 to 2.4 m"),
                                          ("tall", "expected int or float, got str"), (True, "expected int or float")])
def test_profile_with_a_bad_height_names_the_field(config_dir: Path, value: object, words: str) -> None:
    path = _edit(save_profile(_profile(1.78)), performer_height_m=value)
    with pytest.raises(ProfileError) as info:
        load_profile(path)
    message = str(info.value)
    assert info.value.field_path == "performer_height_m"
    assert f"{path}: field 'performer_height_m'" in message and words in message, message


@pytest.mark.parametrize("value", [5.0, 0.0, float("nan"), 178])
def test_profile_refuses_a_bad_height_when_built(value: float) -> None:
    with pytest.raises(CalibrationError, match=r"CalibrationProfile\.performer_height_m: .* not a performer height"):
        _profile(value)


def test_profile_height_is_stored_as_a_float() -> None:
    profile = _profile(np.float64(1.8))  # type: ignore[arg-type]
    assert type(profile.performer_height_m) is float and profile.to_json_dict()["performer_height_m"] == 1.8


def test_take_json_keeps_the_height(tmp_path: Path) -> None:
    write_meta(tmp_path, TakeMeta(name="t", performer_height_m=1.82))
    assert json.loads((tmp_path / "take.json").read_text())["performer_height_m"] == 1.82
    assert read_meta(tmp_path).performer_height_m == 1.82
    old = json.loads((tmp_path / "take.json").read_text())
    del old["performer_height_m"]  # a take recorded before the field existed
    (tmp_path / "take.json").write_text(json.dumps(old))
    assert read_meta(tmp_path).performer_height_m is None


@pytest.mark.parametrize("value", [178, "tall"])
def test_take_json_with_a_bad_height_names_the_file_and_field(tmp_path: Path, value: object) -> None:
    write_meta(tmp_path, TakeMeta(name="t"))
    data = json.loads((tmp_path / "take.json").read_text())
    data["performer_height_m"] = value  # edited by hand
    (tmp_path / "take.json").write_text(json.dumps(data))
    with pytest.raises(VimcanError) as info:
        meta = read_meta(tmp_path)
        scale_to_height(np.tile(rest_positions_m(), (3, 1, 1)), meta.performer_height_m)  # what a take's BVH export does
    message = str(info.value)
    assert "take.json" in message and "performer_height_m" in message, message
