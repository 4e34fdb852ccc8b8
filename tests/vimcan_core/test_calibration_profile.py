"""Calibration profiles: JSON round trip, the last-profile pointer, and clear errors for bad files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from vimcan_core.calibration import Calibration, SensorQuality
from vimcan_core.calibration_profile import (
    CalibrationProfile,
    ProfileDevice,
    ProfileError,
    last_profile_path,
    list_profiles,
    load_last_profile,
    load_profile,
    profile_file_name,
    profiles_dir,
    remember_last_profile,
    save_profile,
)
from vimcan_core.camera import PinholeCamera
from vimcan_core.errors import CalibrationError
from vimcan_core.rotations import quat_angle, random_quat
from vimcan_core.skeleton import IMU_SITE_NAMES, NUM_IMUS, ImuSite

pytestmark = pytest.mark.usefixtures("config_dir")  # every test gets its own config folder (tests/conftest.py)


def make_profile(name: str = "Studio A, Alice", missing: ImuSite | None = None, seed: int = 0) -> CalibrationProfile:
    rng = np.random.default_rng(seed)
    q_bs = random_quat(rng, (NUM_IMUS,))
    q_ce = random_quat(rng, (NUM_IMUS,))
    acc = rng.normal(0, 0.1, (NUM_IMUS, 3))
    quality = [SensorQuality(float(rng.uniform(0.5, 1)), 0.3, 2.0, 80.0) for _ in range(NUM_IMUS)]
    ids: list[str | None] = [f"imu-{i}" for i in range(NUM_IMUS)]
    if missing is not None:
        q_bs[missing] = q_ce[missing] = np.nan
        acc[missing] = np.nan
        quality[missing] = SensorQuality(0.0, float("nan"), float("nan"), float("nan"), note="no sensor")
        ids[missing] = None
    calib = Calibration(q_bs, q_ce, acc, random_quat(rng), tuple(quality), camera_fit_error_px=0.7)
    devices = tuple(ProfileDevice(d, "imu", "SimulatedImu") for d in ids if d) + (ProfileDevice("cam-0", "camera", "SimulatedCamera"),)
    return CalibrationProfile(name=name, calibration=calib, site_devices=tuple(ids), devices=devices,
                              camera=PinholeCamera(fx_px=600.0), camera_device_id="cam-0")


def test_round_trip_keeps_every_number(config_dir: Path) -> None:
    profile = make_profile(missing=ImuSite.HEAD)
    path = save_profile(profile)
    assert path == profiles_dir() / "studio-a-alice.json" and path.parent.parent == config_dir
    loaded = load_profile(path)
    a, b = profile.calibration, loaded.calibration
    ok = a.calibrated
    assert ok.tolist() == b.calibrated.tolist() == [True, True, True, True, False, True]
    np.testing.assert_allclose(a.q_bone_from_sensor[ok], b.q_bone_from_sensor[ok], atol=1e-12)
    np.testing.assert_allclose(a.q_camera_from_imuworld[ok], b.q_camera_from_imuworld[ok], atol=1e-12)
    np.testing.assert_allclose(a.acc_offset_mps2[ok], b.acc_offset_mps2[ok], atol=1e-12)
    assert float(quat_angle(a.quat_world_from_camera, b.quat_world_from_camera)) < 1e-9
    assert [q.score for q in a.quality] == [q.score for q in b.quality]
    assert b.quality[ImuSite.HEAD].note == "no sensor"
    assert loaded.site_devices == profile.site_devices and loaded.assignment[ImuSite.PELVIS] == "imu-5"
    assert loaded.devices == profile.devices
    assert loaded.camera == profile.camera and loaded.camera_device_id == "cam-0"
    assert loaded.created_utc == profile.created_utc and loaded.name == "Studio A, Alice"
    data = json.loads(path.read_text())
    assert data["schema_version"] == 1 and data["calibration"]["sites"]["head"] is None
    assert data["created_utc"].endswith("Z")


def test_last_profile_is_the_last_saved_or_chosen() -> None:
    assert last_profile_path() is None and load_last_profile() is None
    first = save_profile(make_profile("First"))
    second = save_profile(make_profile("Second", seed=1))
    assert last_profile_path() == second.resolve()
    assert load_last_profile().name == "Second"
    remember_last_profile(first)
    assert load_last_profile().name == "First"
    first.unlink()  # the remembered file is gone: the newest one is offered
    assert last_profile_path() == second
    assert {p.name for p in list_profiles()} == {"second.json"}


def test_profile_names_become_safe_file_names() -> None:
    assert profile_file_name("  Studio A, Alice ") == "studio-a-alice.json"
    assert profile_file_name("../../etc/passwd") == "etc-passwd.json"
    assert profile_file_name("***") == "profile.json"
    with pytest.raises(CalibrationError, match="name"):
        save_profile(make_profile("   "))


def _corrupt(path: Path, edit) -> Path:
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))
    return path


@pytest.mark.parametrize("edit, field, words", [
    (lambda d: d.pop("schema"), "schema", "missing"),
    (lambda d: d.update(schema="something-else"), "schema", "not a calibration profile"),
    (lambda d: d.update(schema_version=99), "schema_version", "newer VIMCAN Studio"),
    (lambda d: d.update(created_utc="yesterday"), "created_utc", "UTC time"),
    (lambda d: d["calibration"]["sites"]["left_forearm"].update(q_bone_from_sensor=[1, 0, 0]), "calibration.sites.left_forearm.q_bone_from_sensor", "expected 4 numbers"),
    (lambda d: d["calibration"]["sites"]["pelvis"].update(q_camera_from_imuworld=[2, 0, 0, 0]), "calibration.sites.pelvis.q_camera_from_imuworld", "unit quaternion"),
    (lambda d: d["calibration"]["sites"]["head"]["quality"].update(score=1.5), "calibration.sites.head.quality.score", "from 0 to 1"),
    (lambda d: d["calibration"]["sites"].update(right_forearm=None), "calibration.sites.right_forearm", "no calibration"),
    (lambda d: d["assignment"].update(head="imu-0"), "assignment", "more than one site"),
    (lambda d: d["assignment"].update(head="ghost"), "assignment.head", "not in 'devices'"),
    (lambda d: d["assignment"].update(tail="imu-9"), "assignment", "unknown sites"),
    (lambda d: d["devices"][0].update(kind="toaster"), "devices[0].kind", "one of"),
    (lambda d: d["camera"].update(width_px="640"), "camera.width_px", "expected int"),
    (lambda d: d["calibration"].update(quat_world_from_camera=[1, 0, 0, "x"]), "calibration.quat_world_from_camera", "4 numbers"),
])
def test_bad_fields_are_rejected_with_file_and_field(edit, field: str, words: str) -> None:
    path = _corrupt(save_profile(make_profile()), edit)
    with pytest.raises(ProfileError) as info:
        load_profile(path)
    message = str(info.value)
    assert str(path) in message and f"'{field}'" in message and words in message, message
    assert "calibration wizard" in message
    assert info.value.field_path == field


def test_corrupt_or_missing_files(tmp_path: Path) -> None:
    path = save_profile(make_profile())
    path.write_text(path.read_text()[:200])  # cut off mid-way, as after a crash
    with pytest.raises(ProfileError, match=r"not valid JSON \(line \d+, column \d+"):
        load_profile(path)
    with pytest.raises(ProfileError, match="corrupt"):
        load_last_profile()
    with pytest.raises(ProfileError, match="no such file"):
        load_profile(tmp_path / "nope.json")
    (tmp_path / "list.json").write_text("[1, 2]")
    with pytest.raises(ProfileError, match="JSON object"):
        load_profile(tmp_path / "list.json")


def test_all_sites_written_in_order() -> None:
    data = make_profile().to_json_dict()
    assert list(data["assignment"]) == list(IMU_SITE_NAMES)
    assert list(data["calibration"]["sites"]) == list(IMU_SITE_NAMES)
