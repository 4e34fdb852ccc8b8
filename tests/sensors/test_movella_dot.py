"""Movella DOT driver end to end through bleak's real BleakClient with a fake radio backend."""

from __future__ import annotations

import asyncio
import struct
import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fake_ble import FakeBleakBackend, FakePeripheral, registered, wait_for
from sensors.device import DeviceConfig, DeviceState
from sensors.drivers.ble_base import BleConfig
from sensors.drivers.movella_dot import (
    BATTERY_CHAR,
    BATTERY_SERVICE,
    CONFIG_SERVICE,
    DEVICE_CONTROL_CHAR,
    DEVICE_INFO_CHAR,
    LONG_PAYLOAD_CHAR,
    MEASUREMENT_CONTROL_CHAR,
    MEASUREMENT_SERVICE,
    MEDIUM_PAYLOAD_CHAR,
    MESSAGE_SERVICE,
    ORIENTATION_RESET_CHAR,
    SHORT_PAYLOAD_CHAR,
    DotPayload,
    DotPayloadMode,
    HeadingStatus,
    MovellaDotConfig,
    MovellaDotDevice,
    decode_payload,
    dot_uuid,
    encode_payload,
    measurement_command,
    output_rate_command,
    output_rate_from_control,
)
from vimcan_core.errors import DeviceError
from vimcan_core.rotations import quat_angle, quat_from_axis_angle

WRAP = 1 << 32
AXIS = np.array([1.0, 2.0, 3.0]) / np.sqrt(14.0)


def true_quat(k: int) -> np.ndarray:
    """The orientation the fake DOT reports in its k-th packet: a steady turn about AXIS."""
    return quat_from_axis_angle(AXIS, 0.02 * k)


def true_acc(k: int) -> tuple[float, float, float]:
    return (0.01 * k, -0.5, 9.0 - 0.001 * k)


class FakeDot(FakePeripheral):
    """A Movella DOT: its GATT table, output rate, measurement control, battery and heading reset."""

    name = "Movella DOT"
    gatt = {
        CONFIG_SERVICE: {DEVICE_INFO_CHAR: ["read"], DEVICE_CONTROL_CHAR: ["read", "write"]},
        MEASUREMENT_SERVICE: {
            MEASUREMENT_CONTROL_CHAR: ["read", "write"],
            LONG_PAYLOAD_CHAR: ["notify"],
            MEDIUM_PAYLOAD_CHAR: ["notify"],
            SHORT_PAYLOAD_CHAR: ["notify"],
            ORIENTATION_RESET_CHAR: ["read", "write"],
        },
        BATTERY_SERVICE: {BATTERY_CHAR: ["read", "notify"]},
        MESSAGE_SERVICE: {dot_uuid(0x7001): ["write"], dot_uuid(0x7002): ["read"], dot_uuid(0x7003): ["notify"]},
    }

    def __init__(self, address: str, skip: set[int] = frozenset(), corrupt: set[int] = frozenset()) -> None:
        super().__init__(address)
        self.rate_hz = 4  # a DOT remembers its last rate; the driver must set its own
        self.mode: DotPayloadMode | None = None
        self.skip = set(skip)  # packet counters never sent (lost on the air)
        self.corrupt = set(corrupt)  # packet counters sent truncated
        self.k = 0  # packet counter, continues across reconnects
        self.ts_us = WRAP - 20 * 16_667  # starts just before the 32-bit clock wraps
        self.sent: dict[int, int] = {}  # unwrapped timestamp (us) -> packet counter
        self.heading_resets = 0
        self.heading = 7  # heading status: default
        self.accept_rate = True  # False: an old firmware that ignores output rate writes
        self._task: asyncio.Task | None = None

    def on_read(self, uuid: str) -> bytes:
        if uuid == DEVICE_CONTROL_CHAR:
            record = bytearray(32)
            struct.pack_into("<H", record, 24, self.rate_hz)
            return bytes(record)
        if uuid == BATTERY_CHAR:
            return bytes((87, 1))
        if uuid == DEVICE_INFO_CHAR:
            return bytes(24)
        if uuid == ORIENTATION_RESET_CHAR:
            return bytes((self.heading, 0))
        return super().on_read(uuid)

    def on_write(self, uuid: str, data: bytes) -> None:
        if uuid == DEVICE_CONTROL_CHAR and data[0] & 0x10:
            rate = struct.unpack_from("<H", data, 24)[0]
            if rate in (1, 4, 10, 12, 15, 20, 30, 60) and self.accept_rate:
                self.rate_hz = rate
        elif uuid == MEASUREMENT_CONTROL_CHAR:
            assert data[0] == 1
            if data[1] == 1:
                self.mode = DotPayloadMode(data[2])
                self._task = self.create_task(self._stream())
            elif self._task is not None:
                self._task.cancel()
        elif uuid == ORIENTATION_RESET_CHAR:
            self.heading = struct.unpack("<H", data)[0]
            self.heading_resets += self.heading == 1

    def on_link_lost(self) -> None:
        if self._task is not None:
            self._task.cancel()

    async def _stream(self) -> None:
        while True:
            await asyncio.sleep(1.0 / self.rate_hz)
            k = self.k
            self.k += 1
            self.ts_us += int(round(1e6 / self.rate_hz))
            if k in self.skip:
                continue
            self.sent[self.ts_us] = k
            payload = encode_payload(self.mode, DotPayload(self.ts_us % WRAP, tuple(true_quat(k)), true_acc(k)))
            if k in self.corrupt:
                payload = payload[:10]
            char = MEDIUM_PAYLOAD_CHAR if self.mode != DotPayloadMode.ORIENTATION_QUATERNION else SHORT_PAYLOAD_CHAR
            self.notify(char, payload)


@pytest.fixture
def fake_dot():
    with registered(FakeDot("D4:22:CD:00:00:01", skip={30, 31, 32}, corrupt={45})) as dot:
        yield dot


def test_payload_codec_round_trip() -> None:
    for mode in DotPayloadMode:
        p = DotPayload(123456, (0.5, 0.5, -0.5, 0.5), (1.0, 2.0, 3.0) if mode in (2, 3) else None,
                       (4.0, 5.0, 6.0) if mode == DotPayloadMode.CUSTOM_MODE_3 else None)
        data = encode_payload(mode, p)
        assert len(data) == (20 if mode == DotPayloadMode.ORIENTATION_QUATERNION else 40)
        assert decode_payload(mode, data) == p
    with pytest.raises(ValueError, match="36 bytes"):
        decode_payload(DotPayloadMode.EXTENDED_QUATERNION, bytes(20))
    assert measurement_command(DotPayloadMode.EXTENDED_QUATERNION, True) == b"\x01\x01\x02"
    assert output_rate_from_control(output_rate_command(30)) == 30
    assert output_rate_command(30)[0] == 0x10


def test_config_rejects_rates_the_dot_cannot_stream() -> None:
    with pytest.raises(DeviceError, match="60"):
        MovellaDotConfig(output_rate_hz=100)


def test_streams_quaternions_counts_losses_and_reconnects(fake_dot: FakeDot) -> None:
    states: list[DeviceState] = []
    dev = MovellaDotDevice(
        fake_dot.address,
        MovellaDotConfig(payload_mode=DotPayloadMode.COMPLETE_QUATERNION, output_rate_hz=60),
        config=DeviceConfig(reconnect_initial_s=0.05, reconnect_max_s=0.2),
        ble_config=BleConfig(connect_timeout_s=2.0, housekeeping_interval_s=0.3),
        backend=FakeBleakBackend,
    )
    dev.add_state_listener(lambda _id, s: states.append(s))
    dev.start()
    try:
        wait_for(lambda: dev.buffer.total_pushed >= 70)
        assert dev.state == DeviceState.STREAMING
        assert fake_dot.rate_hz == 60 and dev.output_rate_hz == 60
        assert (MEASUREMENT_CONTROL_CHAR, b"\x01\x01\x03") in fake_dot.writes

        samples = dev.buffer.snapshot()
        for s in samples:
            k = fake_dot.sent[int(round(s.device_time_s * 1e6))]
            assert quat_angle(np.array(s.quat_wxyz), true_quat(k)) < 1e-5
            assert np.allclose(s.acc_free_mps2, true_acc(k), atol=1e-5)
            assert s.gyro_dps is None
        # the device clock wrapped past 2**32 us during the first second and was unwrapped
        t = np.array([s.device_time_s for s in samples])
        assert t[-1] * 1e6 > WRAP
        dt = np.diff(t)
        assert np.all(dt > 0)
        assert np.median(dt) == pytest.approx(1 / 60, abs=2e-6)
        # packets 30-32 were lost on the air, 45 arrived truncated
        st = dev.stats()
        assert st.dropped == 3
        assert st.corrupt == 1
        assert st.battery_pct == 87.0 and dev.charging is True
        assert st.clock_offset_s is not None
        assert st.rate_hz > 0

        assert dev.heading_status() == HeadingStatus.DEFAULT
        dev.heading_reset()
        assert fake_dot.heading_resets == 1
        assert dev.heading_status() == HeadingStatus.HEADING_RESET
        dev.revert_heading()
        assert dev.heading_status() == HeadingStatus.DEFAULT

        assert dev.set_output_rate(30) == 30
        n = dev.buffer.total_pushed
        wait_for(lambda: dev.buffer.total_pushed >= n + 10)
        t = np.array([s.device_time_s for s in dev.buffer.snapshot()[-8:]])
        assert np.allclose(np.diff(t), 1 / 30, atol=2e-6)
        assert dev.stats().dropped == 3  # changing the rate is not a loss

        # the sensor vanishes: reported, retried while it is away, then streaming again
        fake_dot.available = False
        fake_dot.drop_link()
        wait_for(lambda: DeviceState.DISCONNECTED in states)
        assert "disconnected" in (dev.stats().last_error or "")
        time.sleep(0.3)  # a few failed reconnect attempts
        assert dev.state in (DeviceState.DISCONNECTED, DeviceState.RECONNECTING)
        fake_dot.available = True
        n = dev.buffer.total_pushed
        wait_for(lambda: dev.state == DeviceState.STREAMING and dev.buffer.total_pushed >= n + 10)
        assert fake_dot.connections == 2
        assert dev.stats().reconnects >= 2  # at least one attempt failed while it was away
        assert fake_dot.writes.count((MEASUREMENT_CONTROL_CHAR, b"\x01\x01\x03")) == 2
        assert fake_dot.rate_hz == 60  # the configured rate is set again on reconnect
        after = dev.buffer.snapshot()[-5:]
        for s in after:  # the device clock stays unwrapped across the reconnect
            assert quat_angle(np.array(s.quat_wxyz), true_quat(fake_dot.sent[int(round(s.device_time_s * 1e6))])) < 1e-5
    finally:
        dev.stop()
    assert dev.state == DeviceState.STOPPED
    assert not dev.running
    assert not fake_dot.connected  # stop() disconnected cleanly
    assert fake_dot.writes[-1] == (MEASUREMENT_CONTROL_CHAR, b"\x01\x00\x03")  # and stopped the measurement
    assert states[:2] == [DeviceState.CONNECTING, DeviceState.STREAMING]
    assert DeviceState.RECONNECTING in states


def test_missing_sensor_is_reported_and_retried() -> None:
    dev = MovellaDotDevice(
        "D4:22:CD:00:00:99",
        config=DeviceConfig(reconnect_initial_s=0.05, reconnect_max_s=0.1),
        ble_config=BleConfig(connect_timeout_s=1.0),
        backend=FakeBleakBackend,
    )
    dev.start()
    try:
        wait_for(lambda: dev.stats().reconnects >= 2)
        st = dev.stats()
        assert st.samples == 0
        assert "D4:22:CD:00:00:99" in (st.last_error or "")
        with pytest.raises(DeviceError, match="not connected"):
            dev.heading_reset()
    finally:
        dev.stop()


def test_extended_quaternion_mode_over_the_medium_characteristic(fake_dot: FakeDot) -> None:
    fake_dot.skip.clear()
    fake_dot.corrupt.clear()
    dev = MovellaDotDevice(
        fake_dot.address, MovellaDotConfig(payload_mode=DotPayloadMode.EXTENDED_QUATERNION, output_rate_hz=30),
        backend=FakeBleakBackend,
    )
    dev.start()
    try:
        wait_for(lambda: dev.buffer.total_pushed >= 5)
    finally:
        dev.stop()
    assert fake_dot.mode == DotPayloadMode.EXTENDED_QUATERNION
    s = dev.buffer.snapshot()[-1]
    assert s.acc_free_mps2 is not None
    assert np.linalg.norm(s.quat_wxyz) == pytest.approx(1.0)
    assert dev.stats().dropped == 0 and dev.stats().corrupt == 0


def test_a_sensor_that_keeps_its_own_rate_still_streams(fake_dot: FakeDot, caplog: pytest.LogCaptureFixture) -> None:
    fake_dot.skip.clear()
    fake_dot.corrupt.clear()
    fake_dot.rate_hz = 30
    fake_dot.accept_rate = False
    dev = MovellaDotDevice(fake_dot.address, MovellaDotConfig(output_rate_hz=60), backend=FakeBleakBackend)
    dev.start()
    try:
        wait_for(lambda: dev.buffer.total_pushed >= 8)
        assert dev.output_rate_hz == 30  # what the sensor reported, used for loss counting
        assert dev.stats().dropped == 0
        assert "asked for 60 Hz, the sensor reports 30 Hz" in caplog.text
        with pytest.raises(DeviceError, match="asked for 20 Hz"):
            dev.set_output_rate(20)  # asked for explicitly: refusing is an error
    finally:
        dev.stop()


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=80))
def test_random_notifications_never_raise_and_are_counted(data: bytes) -> None:
    dev = MovellaDotDevice("D4:22:CD:00:00:42", MovellaDotConfig(payload_mode=DotPayloadMode.COMPLETE_QUATERNION))
    dev._on_notification(MEDIUM_PAYLOAD_CHAR, data, 0.0)
    emitted = len(dev._pending)
    st_ = dev.stats()
    assert emitted + st_.corrupt == 1  # each notification is one sample or one corrupt packet
    if emitted:  # only a unit quaternion with finite values gets through, normalised
        assert np.linalg.norm(dev._pending[0].quat_wxyz) == pytest.approx(1.0)
        assert np.all(np.isfinite(dev._pending[0].acc_free_mps2))


def test_a_unit_quaternion_with_a_broken_acceleration_is_corrupt() -> None:
    dev = MovellaDotDevice("D4:22:CD:00:00:42")
    good = encode_payload(DotPayloadMode.COMPLETE_QUATERNION, DotPayload(1000, (1.0, 0.0, 0.0, 0.0), (0.0, 0.0, 0.1)))
    dev._on_notification(MEDIUM_PAYLOAD_CHAR, good, 0.0)
    bad = good[:20] + struct.pack("<3f", float("nan"), 0.0, 0.0) + good[32:]
    dev._on_notification(MEDIUM_PAYLOAD_CHAR, bad, 0.0)
    assert len(dev._pending) == 1 and dev.stats().corrupt == 1
