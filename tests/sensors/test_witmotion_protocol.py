"""WitMotion byte protocol: frames, resynchronisation, checksums, BLE packets, commands, Euler."""

from __future__ import annotations

import struct

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from sensors.protocols import witmotion as wm
from vimcan_core.rotations import euler_to_matrix, matrix_to_quat, quat_rotate


def test_frame_layout_matches_the_published_example() -> None:
    # angle frame for roll 10 deg: raw = 10/180*32768 = 1820 = 0x071C
    frame = wm.encode_angle((10.0, 0.0, 0.0))
    assert frame[:4] == bytes((0x55, 0x53, 0x1C, 0x07))
    assert len(frame) == 11
    assert frame[10] == sum(frame[:10]) & 0xFF
    # the magnetic-field example of the BLE manual: 55 71 3A 00 68 01 69 00 7A 00 ...
    reply = bytes.fromhex("55713A00680169007A00000000000000000000 00".replace(" ", ""))
    (pkt,) = wm.WitMotionBleParser().feed(reply)
    assert pkt == wm.WitRegisters(0x3A, (360, 105, 122, 0, 0, 0, 0, 0))


def test_decodes_every_frame_type_with_units() -> None:
    stream = (wm.encode_time(3600.25) + wm.encode_acc((0.5, -1.0, 1.0), temp_celsius=31.5)
              + wm.encode_gyro((100.0, -250.0, 1999.0)) + wm.encode_angle((-45.0, 30.0, 179.0), version=0x1234)
              + wm.encode_frame(0x54, struct.pack("<4h", 100, -200, 300, 2500)) + wm.encode_quat((0.5, 0.5, -0.5, 0.5))
              + wm.encode_frame(0x56, bytes(8)))
    p = wm.WitMotionSerialParser()
    t, acc, gyro, ang, mag, quat, other = p.feed(stream)
    assert t.device_time_s == pytest.approx(3600.25)
    assert acc.acc_g == pytest.approx((0.5, -1.0, 1.0), abs=16 / 32768)
    assert acc.temp_celsius == pytest.approx(31.5)
    assert gyro.gyro_dps == pytest.approx((100.0, -250.0, 1999.0), abs=2000 / 32768)
    assert ang.roll_pitch_yaw_deg == pytest.approx((-45.0, 30.0, 179.0), abs=180 / 32768)
    assert ang.version == 0x1234
    assert mag == wm.WitMag(100, -200, 300, 25.0) and mag.mag_raw == (100, -200, 300)
    assert isinstance(mag.mag_raw[0], int) and isinstance(ang.version, int)
    assert quat.quat_wxyz == pytest.approx((0.5, 0.5, -0.5, 0.5), abs=1 / 32768)
    assert other.packet_type == 0x56
    assert (p.frames, p.corrupt, p.skipped_bytes) == (7, 0, 0)


def test_resynchronises_after_garbage_and_counts_bad_checksums() -> None:
    good = [wm.encode_angle((float(i), 0.0, 0.0)) for i in range(6)]
    bad = bytearray(wm.encode_angle((99.0, 0.0, 0.0)))
    bad[10] ^= 0x01  # wrong SUM
    stream = b"\x00\x55\x12garbage\x55" + good[0] + good[1] + bytes(bad) + good[2] + b"\x55\x51\x01" + good[3] + good[4] + good[5]
    p = wm.WitMotionSerialParser()
    rolls = [pk.roll_pitch_yaw_deg[0] for pk in p.feed(stream)]
    assert rolls == pytest.approx([0, 1, 2, 3, 4, 5], abs=0.01)
    # the bad-SUM frame and the truncated 0x55 0x51 head (a known type with a bad SUM) are corrupt
    assert p.corrupt == 2
    assert p.frames == 6


def test_frames_split_across_reads_in_every_way() -> None:
    stream = b"".join(wm.encode_quat((1.0, 0.0, 0.0, 0.0)) + wm.encode_acc((0, 0, 1)) for _ in range(5))
    for chunk in (1, 2, 3, 7, 10, 11, 12, 13):
        p = wm.WitMotionSerialParser()
        out = []
        for i in range(0, len(stream), chunk):
            out += p.feed(stream[i:i + chunk])
        assert len(out) == 10 and p.corrupt == 0, chunk
        assert [type(o) for o in out[:2]] == [wm.WitQuat, wm.WitAcc]


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=400), st.integers(1, 64))
def test_random_bytes_never_raise(data: bytes, chunk: int) -> None:
    p = wm.WitMotionSerialParser()
    for i in range(0, len(data), chunk):
        p.feed(data[i:i + chunk])
    b = wm.WitMotionBleParser()
    for i in range(0, len(data), chunk):
        b.feed(data[i:i + chunk])


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.binary(max_size=30), st.floats(-179, 179), st.floats(-89, 89)), min_size=1, max_size=20),
       st.integers(1, 40))
def test_valid_frames_hidden_in_random_bytes_are_all_recovered(items, chunk: int) -> None:
    # garbage without 0x55 cannot start a frame, so every embedded frame must come back, in order
    stream = b""
    expected = []
    for garbage, roll, pitch in items:
        stream += garbage.replace(b"\x55", b"\x00") + wm.encode_angle((roll, pitch, 0.0))
        expected.append((roll, pitch))
    p = wm.WitMotionSerialParser()
    out = []
    for i in range(0, len(stream), chunk):
        out += p.feed(stream[i:i + chunk])
    got = [(o.roll_pitch_yaw_deg[0], o.roll_pitch_yaw_deg[1]) for o in out]
    assert len(got) == len(expected)
    assert np.allclose(got, expected, atol=0.006)
    assert p.corrupt == 0


def test_ble_data_packets_and_register_replies() -> None:
    pkt = wm.encode_ble_data((0.0, 0.0, 1.0), (10.0, -20.0, 30.0), (5.0, -6.0, 170.0))
    assert len(pkt) == 20 and pkt[:2] == b"\x55\x61"
    quat_reply = wm.encode_ble_registers(0x51, (16384, 16384, -16384, 16384))
    parser = wm.WitMotionBleParser()
    # two packets in one notification, the third split over two notifications
    out = parser.feed(pkt + quat_reply + pkt[:7]) + parser.feed(pkt[7:])
    assert [type(o) for o in out] == [wm.WitBleData, wm.WitRegisters, wm.WitBleData]
    data = out[0]
    assert data.acc_g == pytest.approx((0, 0, 1), abs=1e-3)
    assert data.gyro_dps == pytest.approx((10, -20, 30), abs=0.07)
    assert data.roll_pitch_yaw_deg == pytest.approx((5, -6, 170), abs=0.006)
    assert out[1].quat_wxyz() == pytest.approx((0.5, 0.5, -0.5, 0.5))
    assert wm.read_register_command(0x51) == bytes.fromhex("FFAA275100")


def test_configuration_commands() -> None:
    assert wm.unlock_command() == bytes.fromhex("FFAA6988B5")
    assert wm.save_command() == bytes.fromhex("FFAA000000")
    assert wm.rate_command(100) == bytes.fromhex("FFAA030900")
    assert wm.rate_command(200) == bytes.fromhex("FFAA030B00")
    assert wm.baud_command(115200) == bytes.fromhex("FFAA040600")
    content = wm.Content.ACC | wm.Content.GYRO | wm.Content.ANGLE | wm.Content.QUATERNION
    assert wm.content_command(content) == bytes.fromhex("FFAA020E02")
    cmds = wm.configure_commands(rate_hz=50, content=content)
    assert [wm.parse_command(c) for c in cmds] == [(0x69, 0xB588), (0x02, 0x020E), (0x03, 0x08), (0x00, 0)]
    with pytest.raises(wm.DeviceError, match="choose one of"):
        wm.rate_command(123)


def test_euler_convention_is_zyx_and_matches_the_rotation_helpers() -> None:
    rng = np.random.default_rng(3)
    rpy = np.column_stack((rng.uniform(-180, 180, 200), rng.uniform(-89, 89, 200), rng.uniform(-180, 180, 200)))
    q = wm.euler_to_quat(rpy)
    m = euler_to_matrix(np.radians(rpy[:, ::-1]), "ZYX")  # Rz(yaw) Ry(pitch) Rx(roll)
    assert np.allclose(q, matrix_to_quat(m), atol=1e-12)
    # pure yaw of +90 deg turns the sensor's X axis onto world +Y (Z up, counter-clockwise)
    assert quat_rotate(wm.euler_to_quat([0, 0, 90]), [1, 0, 0]) == pytest.approx([0, 1, 0], abs=1e-12)
    # pure roll of +90 deg turns sensor Y onto world Z
    assert quat_rotate(wm.euler_to_quat([90, 0, 0]), [0, 1, 0]) == pytest.approx([0, 0, 1], abs=1e-12)


def test_free_acceleration_removes_gravity() -> None:
    q = wm.euler_to_quat([30.0, -20.0, 75.0])
    gravity_in_sensor = quat_rotate(q * [1, -1, -1, -1], [0, 0, 1.0])  # what a still sensor measures, in g
    assert wm.free_acceleration(q, gravity_in_sensor) == pytest.approx([0, 0, 0], abs=1e-9)


def test_scalar_math_matches_the_array_reference() -> None:
    from sensors.protocols import scalar_math as sm
    from vimcan_core.rotations import quat_normalize

    rng = np.random.default_rng(11)
    for _ in range(200):
        raw = rng.normal(size=4)
        q = sm.normalise(tuple(raw))
        assert np.allclose(q, quat_normalize(raw), atol=1e-12)
        v = rng.normal(size=3)
        assert np.allclose(sm.rotate(q, tuple(v)), quat_rotate(np.array(q), v), atol=1e-12)
        rpy = rng.uniform(-180, 180, size=3)
        assert np.allclose(sm.euler_zyx_deg_to_quat(*rpy), wm.euler_to_quat(rpy), atol=1e-12)
    assert sm.normalise((0.0, 0.0, 0.0, 0.0)) is None and sm.normalise((float("nan"), 0, 0, 1)) is None


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.binary(max_size=25), st.floats(-179, 179)), min_size=1, max_size=15), st.integers(1, 30))
def test_ble_packets_hidden_in_random_bytes_are_all_recovered(items, chunk: int) -> None:
    stream, expected = b"", []
    for garbage, yaw in items:
        stream += garbage.replace(b"\x55", b"\x00") + wm.encode_ble_data((0, 0, 1), (0, 0, 0), (0.0, 0.0, yaw))
        expected.append(yaw)
    p = wm.WitMotionBleParser()
    out = []
    for i in range(0, len(stream), chunk):
        out += p.feed(stream[i:i + chunk])
    assert np.allclose([o.roll_pitch_yaw_deg[2] for o in out], expected, atol=0.006)
    assert p.packets == len(items)
