"""Recorded-file readers on the real recordings in ../shared/data/imu (facts from its README),
and the replaying device."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from sensors.device import DeviceConfig, DeviceState
from sensors.files import (
    MonitorCsvWriter, OrientationSource, RecordingFormat, open_recording, read_dot_csv, read_monitor_csv,
    read_mt_manager_txt, read_ximu3_folder,
)
from sensors.files.replay import FileReplayDevice
from vimcan_core.errors import MotionFileError
from vimcan_core.rotations import quat_angle, quat_rotate


@pytest.fixture
def imu_dir(shared_data: Path) -> Path:
    return shared_data / "imu"


def gravity_in_world(rec) -> np.ndarray:
    """Median of the sensor-frame specific force rotated into the world: +g up for a Z-up frame."""
    ok = np.all(np.isfinite(rec.acc_mps2), axis=1) & (np.linalg.norm(rec.acc_mps2, axis=1) > 0)
    return np.median(quat_rotate(rec.quat_wxyz[ok], rec.acc_mps2[ok]), axis=0)


# ------------------------------------------------------------------ Movella DOT
def test_dot_app_export_with_ble_packet_loss(imu_dir: Path) -> None:
    rec = read_dot_csv(imu_dir / "movella_dot" / "LFemur_20210820_202113_831.csv")
    assert rec.format == RecordingFormat.DOT_APP_CSV and rec.device_id == "dot:zdt"
    assert len(rec) == 195
    assert (rec.packet_counter[0], rec.packet_counter[-1]) == (1, 352)
    assert rec.dropped == 352 - 195 and np.diff(rec.packet_counter).max() == 5
    assert rec.rate_hz == 60.0 and rec.measured_rate_hz == pytest.approx(60.0, abs=0.01)
    steps_us = np.round(np.diff(rec.time_s) / np.diff(rec.packet_counter) * 1e6)
    assert np.all(np.abs(steps_us - 16667) <= 1)
    assert np.all(np.abs(rec.quat_norm_recorded - 1) < 5e-6)  # README: 1 +- 4e-6 (rounded; max 4.1e-6)
    assert rec.orientation_source == OrientationSource.QUATERNION
    assert rec.metadata["Measurement Mode"] == "Sensor fusion Mode - Extended(Quaternion)"
    assert rec.acc_free_mps2.shape == (195, 3) and np.all(np.isfinite(rec.acc_free_mps2))


def test_dot_app_export_without_gaps(imu_dir: Path) -> None:
    rec = open_recording(imu_dir / "movella_dot" / "RTibia_20210820_202113_825.csv")
    assert len(rec) == 382 and rec.dropped == 0 and rec.device_id == "dot:yxt"
    # both sensors of the synced session share the device clock: their recordings overlap in time
    femur = open_recording(imu_dir / "movella_dot" / "LFemur_20210820_202113_831.csv")
    overlap = min(rec.time_s[-1], femur.time_s[-1]) - max(rec.time_s[0], femur.time_s[0])
    assert overlap > 5.0


def test_dot_euler_only_offline_export(imu_dir: Path) -> None:
    rec = open_recording(imu_dir / "movella_dot" / "bei_D4CA6EF17860_20210830_170505.csv")
    assert len(rec) == 1953 and rec.packet_counter[0] == 0 and rec.dropped == 0
    assert rec.orientation_source == OrientationSource.EULER and rec.quat_norm_recorded is None
    assert rec.measured_rate_hz == pytest.approx(120.0, abs=0.05)
    assert np.all(np.isin(np.round(np.diff(rec.time_s) * 1e6), [8333, 8334]))
    assert np.all(rec.acc_mps2[0] == 0) and np.all(np.isnan(rec.acc_free_mps2[0]))  # first row: nothing measured
    # the Euler angles (Z-Y-X) rotate the measured specific force onto ENU up: the convention is right
    assert gravity_in_world(rec) == pytest.approx([0, 0, 9.64], abs=0.05)


# ------------------------------------------------------------------ x-IMU3
def test_ximu3_lower_body_folders(imu_dir: Path) -> None:
    leg = read_ximu3_folder(imu_dir / "x_imu3" / "Right Upper Leg 64F61C2E (UDP)")
    pelvis = open_recording(imu_dir / "x_imu3" / "pelvis 64F0EDBF (UDP)" / "Quaternion.csv")
    assert (len(leg), len(pelvis)) == (902, 900)
    assert leg.metadata["serial"] == "64F61C2E" and pelvis.metadata["name"] == "Pelvis"
    for rec in (leg, pelvis):
        assert rec.format == RecordingFormat.XIMU3_FOLDER
        assert rec.duration_s == pytest.approx(18.6, abs=0.1)
        assert rec.measured_rate_hz == pytest.approx(49.9, abs=0.15)
        assert np.all((rec.quat_norm_recorded > 1.00011) & (rec.quat_norm_recorded < 1.00013))
        assert np.allclose(np.linalg.norm(rec.quat_wxyz, axis=1), 1.0, atol=1e-12)
        assert np.isfinite(rec.gyro_dps).all(axis=1).mean() > 0.99
        assert np.linalg.norm(gravity_in_world(rec) - [0, 0, 9.81]) < 0.1
    # the same session: the two device clocks cover the same ~18.6 s
    assert abs(leg.time_s[0] - pelvis.time_s[0]) < 0.05


def test_ximu3_folder_that_switched_ahrs_outputs(imu_dir: Path) -> None:
    folder = imu_dir / "x_imu3" / "x-IMU3 673B204B (UDP)"
    rec = read_ximu3_folder(folder)
    assert rec.orientation_source == OrientationSource.MIXED
    assert rec.metadata["outputs"].split(",") == ["Quaternion", "RotationMatrix", "EulerAngles",
                                                  "LinearAcceleration", "EarthAcceleration"]
    assert sum(1 for _ in open(folder / "Quaternion.csv")) - 1 == 103
    assert len(rec) > 103 * 3  # the five ~1 s windows are merged
    # the sensor was static: quaternion, matrix and Euler windows must agree (same conventions)
    assert np.degrees(quat_angle(rec.quat_wxyz, rec.quat_wxyz[0])).max() < 0.5
    free = rec.acc_free_mps2[np.all(np.isfinite(rec.acc_free_mps2), axis=1)]
    assert len(free) >= 50 + 90 and np.abs(free).max() < 0.1  # static: no free acceleration


# ------------------------------------------------------------------ Xsens MT Manager
@pytest.mark.parametrize("name, rows, first, rate, source", [
    ("S02-Trial-Walk-1-000_00B40B91.txt", 2503, 27626, 100.0, OrientationSource.QUATERNION),
    ("S01-Trial-Static-1-000_00B40C55.txt", 366, 19741, 100.0, OrientationSource.QUATERNION),
    ("MT46_01-000_00B42D4D.txt", 5, 4097, 100.0, OrientationSource.QUATERNION),
    ("MT2022_ACC_GYRO_ROT_EULER_TAB_00B42D4F.txt", 5, 51400, None, OrientationSource.EULER),
    ("MT_01200454_000-000_00B40DE4.txt", 4, 3027, None, OrientationSource.ROTATION_MATRIX),
    ("MT_012005D6_009-001_00B421E6.txt", 2432, 472, 100.0, OrientationSource.ROTATION_MATRIX),
])
def test_mt_manager_exports(imu_dir: Path, name: str, rows: int, first: int, rate, source) -> None:
    rec = read_mt_manager_txt(imu_dir / "xsens_mt_manager" / name)
    assert len(rec) == rows and rec.packet_counter[0] == first
    assert rec.packet_counter[-1] == first + rows - 1 and rec.dropped == 0
    assert rec.rate_hz == rate and rec.orientation_source == source
    assert rec.metadata["rate_source"] == ("header" if rate else "assumed")
    assert np.allclose(np.diff(rec.time_s), 0.01)
    if rec.quat_norm_recorded is not None:
        assert np.all(np.abs(rec.quat_norm_recorded - 1) <= 1e-6 + 1e-9)
    if source != OrientationSource.ROTATION_MATRIX or rows > 10:
        # quaternion, column-major matrix or Z-Y-X Euler: the specific force points up in ENU
        g = gravity_in_world(rec)
        assert abs(g[2] - 9.85) < 0.2 and np.hypot(g[0], g[1]) < 0.2


def test_mt_manager_headers_and_separators(imu_dir: Path) -> None:
    new = open_recording(imu_dir / "xsens_mt_manager" / "MT2022_ACC_GYRO_ROT_EULER_TAB_00B42D4F.txt")
    assert new.device_id == "xsens:00B42D4F" and new.metadata["ProductCode"] == "MTW2-3A7G6"
    assert new.world_frame == "ENU" and new.gyro_dps[0] == pytest.approx(np.degrees([0.001960, -0.000371, 0.005926]))
    old_comma = open_recording(imu_dir / "xsens_mt_manager" / "S01-Trial-Static-1-000_00B40C55.txt")
    assert old_comma.metadata["Firmware Version"] == "4.3.4" and old_comma.device_id == "xsens:00B40C55"
    # quaternion (-0.780989, 0.092751, 0.202562, 0.583456) is stored in the w >= 0 hemisphere
    assert old_comma.quat_wxyz[0] == pytest.approx([0.780989, -0.092751, -0.202562, -0.583456], abs=1e-6)


def test_unrecognised_and_malformed_files_name_the_file_and_line(tmp_path: Path) -> None:
    junk = tmp_path / "junk.csv"
    junk.write_text("a,b,c\n1,2,3\n")
    with pytest.raises(MotionFileError, match="junk.csv:1: unrecognised"):
        open_recording(junk)
    bad = tmp_path / "bad.txt"
    bad.write_text("// Update Rate: 100.0Hz\nPacketCounter\tQuat_q0\tQuat_q1\tQuat_q2\tQuat_q3\n1\t1\t0\t0\t0\n2\t1\tx\t0\t0\n")
    with pytest.raises(MotionFileError, match=r"bad.txt:4: column 3 is 'x'"):
        open_recording(bad)


# ------------------------------------------------------------------ monitor CSV and replay
def test_monitor_csv_round_trip(imu_dir: Path, tmp_path: Path) -> None:
    rec = open_recording(imu_dir / "movella_dot" / "LFemur_20210820_202113_831.csv")
    out = tmp_path / "monitor.csv"
    with open(out, "w") as f:
        w = MonitorCsvWriter(f)
        w.write(rec.sample(i, 100.0 + i * 0.01) for i in range(len(rec)))
    back = read_monitor_csv(out)
    assert len(back) == 195 and back.dropped == rec.dropped
    assert np.allclose(back.time_s, rec.time_s, atol=1e-6)
    assert np.max(quat_angle(back.quat_wxyz, rec.quat_wxyz)) < 1e-6
    assert np.allclose(back.acc_free_mps2, rec.acc_free_mps2, atol=1e-5)


def test_replay_device_delivers_the_recording_at_speed(imu_dir: Path) -> None:
    rec = open_recording(imu_dir / "movella_dot" / "LFemur_20210820_202113_831.csv")  # 5.85 s, 157 lost
    dev = FileReplayDevice(rec, speed=20.0, config=DeviceConfig(stall_after_s=1.0))
    dev.start()
    try:
        assert dev.finished.wait(5.0)
        stats = dev.stats()
    finally:
        dev.stop()
    assert stats.samples == 195 and stats.dropped == 157 and stats.corrupt == 0
    got = dev.buffer.snapshot()
    assert [s.seq for s in got] == rec.packet_counter.tolist()
    assert np.allclose([s.quat_wxyz for s in got], rec.quat_wxyz)
    host = np.array([s.host_time_s for s in got])
    dev_t = np.array([s.device_time_s for s in got])
    # host times follow the device clock, 20 times faster
    assert np.allclose(np.diff(host) * 20.0, np.diff(dev_t), atol=1e-9)
    assert stats.clock_offset_s is not None


def test_replay_loops_with_increasing_time(imu_dir: Path) -> None:
    rec = open_recording(imu_dir / "xsens_mt_manager" / "MT46_01-000_00B42D4D.txt")  # 5 samples
    dev = FileReplayDevice(rec, speed=0, loop=True)
    dev.start()
    try:
        deadline = time.monotonic() + 5
        while dev.stats().samples < 23 and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        dev.stop()
    t = np.array([s.device_time_s for s in dev.buffer.snapshot()])
    assert len(t) >= 23 and np.all(np.diff(t) > 0)
    assert np.allclose(np.diff(t), 0.01)  # one period between the last sample and the next loop's first
    assert dev.state == DeviceState.STOPPED and not dev.finished.is_set()


def test_dot_sdk_log_one_line_header_100us_ticks_and_clock_wrap(tmp_path: Path) -> None:
    # the PC SDK logger's layout (README section 1): whole header on one line, no PacketCounter,
    # SampleTimeFine in 100 us ticks; this clock wraps through 2**32 during the file
    path = tmp_path / "sdk.csv"
    ticks = (2**32 - 500 + np.arange(0, 12) * 167) % 2**32  # 60 Hz = 166.7 ticks of 100 us
    ticks = np.delete(ticks, [5, 6])  # two samples lost on the link
    q = np.tile([0.0, 0.0, 0.0, 1.0], (len(ticks), 1))  # 180 deg about Z, written with w = 0
    lines = ["DeviceTag: D4:22:CD:00:11:22,FirmwareVersion: 2.3.0,SyncStatus: Unsynced,OutputRate: 60Hz",
             "SampleTimeFine,Quat_W,Quat_X,Quat_Y,Quat_Z,FreeAcc_X,FreeAcc_Y,FreeAcc_Z"]
    lines += [f"{t},{w},{x},{y},{z},0.1,0.2,0.3" for t, (w, x, y, z) in zip(ticks, q)]
    path.write_text("\n".join(lines) + "\n")
    rec = open_recording(path)
    assert rec.format == RecordingFormat.DOT_SDK_CSV and rec.device_id == "dot:D4:22:CD:00:11:22"
    assert rec.metadata["sample_time_unit_s"] == "0.0001" and rec.rate_hz == 60.0
    assert len(rec) == 10 and np.all(np.diff(rec.time_s) > 0)
    assert rec.dropped == 2 and rec.measured_rate_hz == pytest.approx(60.0, rel=0.01)
    assert rec.acc_free_mps2[0] == pytest.approx([0.1, 0.2, 0.3])


def test_replay_group_keeps_a_synced_session_aligned(imu_dir: Path) -> None:
    from sensors.files.replay import replay_group

    recs = [open_recording(imu_dir / "movella_dot" / n)
            for n in ("LFemur_20210820_202113_831.csv", "RTibia_20210820_202113_825.csv")]
    devices = replay_group(recs, speed=20.0)
    origin = min(r.time_s[0] for r in recs)
    for d in devices:
        d.start()
    try:
        for d in devices:
            assert d.finished.wait(5.0)
    finally:
        for d in devices:
            d.stop()
    starts = []
    for d in devices:
        got = d.buffer.snapshot()
        host = np.array([s.host_time_s for s in got])
        dev_t = np.array([s.device_time_s for s in got])
        starts.append(host - (dev_t - origin) / 20.0)  # the host instant of the shared origin, per sample
    assert np.ptp(np.concatenate(starts)) < 1e-6  # one clock: same device time -> same host time
    assert [d.stats().samples for d in devices] == [195, 382]
