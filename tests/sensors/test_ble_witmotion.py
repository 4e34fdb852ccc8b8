"""WitMotion BLE 5.0 driver end to end through bleak's real BleakClient with a fake radio backend."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest

from fake_ble import FakeBleakBackend, FakePeripheral, registered, wait_for
from sensors.device import DeviceConfig, DeviceState
from sensors.drivers.ble_base import BleConfig
from sensors.drivers.ble_witmotion import (
    BATTERY_VOLTAGE_REGISTER,
    NOTIFY_UUID,
    SERVICE_UUID,
    VERSION_REGISTER,
    WRITE_UUID,
    WitMotionBleConfig,
    WitMotionBleDevice,
    battery_percent,
)
from sensors.protocols.witmotion import (
    GRAVITY_MPS2,
    RATE_CODES,
    encode_ble_data,
    encode_ble_registers,
    euler_to_quat,
    parse_command,
)
from vimcan_core.errors import DeviceError
from vimcan_core.rotations import quat_angle, quat_conj, quat_rotate

FREE_ACC_MPS2 = np.array([0.5, -0.3, 0.2])  # what the fake sensor "feels" besides gravity (world frame)


def true_angles(k: int) -> np.ndarray:
    """roll, pitch, yaw (degrees) of the fake sensor's k-th packet: a slow tumble."""
    return np.array([30.0 * np.sin(0.05 * k), 20.0 * np.cos(0.03 * k), -170.0 + 1.5 * k % 340.0])


class FakeWitMotion(FakePeripheral):
    """A BWT901BLE5.0: service ffe5, notify ffe4, write ffe9, registers, streaming from subscription."""

    name = "WT901BLE68"
    gatt = {SERVICE_UUID: {NOTIFY_UUID: ["notify", "read"], WRITE_UUID: ["write-without-response", "write"]}}

    def __init__(self, address: str) -> None:
        super().__init__(address)
        self.registers = {0x03: RATE_CODES[10.0], BATTERY_VOLTAGE_REGISTER: 385, VERSION_REGISTER: 0x1234}
        self.unlocked = False
        self.saves = 0
        self.k = 0
        self.sent_angles: list[np.ndarray] = []
        self._task: asyncio.Task | None = None

    @property
    def rate_hz(self) -> float:
        return {c: r for r, c in RATE_CODES.items()}[self.registers[0x03]]

    def on_subscribe(self, uuid: str) -> None:
        self.unlocked = False
        self._task = self.create_task(self._stream())

    def on_link_lost(self) -> None:
        if self._task is not None:
            self._task.cancel()

    def on_write(self, uuid: str, data: bytes) -> None:
        assert uuid == WRITE_UUID
        reg, value = parse_command(data)
        if reg == 0x69:
            self.unlocked = value == 0xB588
        elif reg == 0x27:  # read: reply with eight registers from `value`
            values = tuple(self.registers.get(value + i, 0) for i in range(8))
            self.create_task(self._reply(encode_ble_registers(value, values)))
        elif reg == 0x00:
            self.saves += 1
        elif self.unlocked:
            self.registers[reg] = value

    async def _reply(self, packet: bytes) -> None:
        await asyncio.sleep(0.005)
        self.notify(NOTIFY_UUID, packet)

    def packet(self, k: int) -> bytes:
        angles = true_angles(k)
        q = euler_to_quat(angles)
        # an accelerometer measures specific force: free acceleration plus 1 g up, in the sensor frame
        acc_world_g = (FREE_ACC_MPS2 + [0.0, 0.0, GRAVITY_MPS2]) / GRAVITY_MPS2
        acc_sensor_g = quat_rotate(quat_conj(q), acc_world_g)
        return encode_ble_data(tuple(acc_sensor_g), (10.0, -20.0, 30.5), tuple(angles))

    async def _stream(self) -> None:
        while True:
            await asyncio.sleep(1.0 / self.rate_hz)
            k = self.k
            self.k += 1
            self.sent_angles.append(true_angles(k))
            data = self.packet(k)
            if k % 10 == 3:  # now and then two packets arrive in one notification
                self.k += 1
                self.sent_angles.append(true_angles(k + 1))
                data += self.packet(k + 1)
            if k == 20:  # and once, radio garbage before a packet
                data = b"\x13\x37\x00" + data
            self.notify(NOTIFY_UUID, data)


@pytest.fixture
def fake_wit():
    with registered(FakeWitMotion("E8:CB:ED:00:00:01")) as wit:
        yield wit


def test_battery_table() -> None:
    assert battery_percent(4.1) == 100.0
    assert battery_percent(3.79) == pytest.approx(50.0)
    assert battery_percent(3.85) == pytest.approx(60.0 + 15.0 * 3 / 5)
    assert battery_percent(3.0) == 0.0


def test_rates_the_ble_family_cannot_do_are_refused() -> None:
    with pytest.raises(DeviceError, match="50.0"):
        WitMotionBleConfig(rate_hz=30.0)


def test_streams_quaternions_reads_registers_and_reconnects(fake_wit: FakeWitMotion) -> None:
    states: list[DeviceState] = []
    dev = WitMotionBleDevice(
        fake_wit.address,
        WitMotionBleConfig(rate_hz=50.0),
        config=DeviceConfig(reconnect_initial_s=0.05, reconnect_max_s=0.2),
        ble_config=BleConfig(connect_timeout_s=3.0, housekeeping_interval_s=0.3),
        backend=FakeBleakBackend,
    )
    dev.add_state_listener(lambda _id, s: states.append(s))
    dev.start()
    try:
        wait_for(lambda: dev.buffer.total_pushed >= 60)
        assert dev.state == DeviceState.STREAMING
        # configured: unlock, then the 50 Hz rate code, not saved to flash; confirmed by reading it back
        cmds = [parse_command(d) for u, d in fake_wit.writes]
        assert cmds.index((0x69, 0xB588)) < cmds.index((0x03, RATE_CODES[50.0]))
        assert fake_wit.saves == 0
        assert fake_wit.rate_hz == 50.0 and dev.rate_hz == 50.0
        assert (0x27, 0x03) in cmds  # the read-back
        # battery from register 0x64 (3.85 V)
        st = dev.stats()
        assert dev.battery_voltage_v == pytest.approx(3.85)
        assert st.battery_pct == pytest.approx(battery_percent(3.85))

        samples = dev.buffer.snapshot()
        n = len(samples)
        # every packet arrives once and in order (two-packet notifications included)
        expected = np.array(fake_wit.sent_angles[:n])
        got_q = np.array([s.quat_wxyz for s in samples])
        err = quat_angle(got_q, euler_to_quat(expected))
        assert np.degrees(err.max()) < 0.02  # int16 angles: 0.0055 degree steps
        acc = np.array([s.acc_free_mps2 for s in samples])
        np.testing.assert_allclose(acc, np.broadcast_to(FREE_ACC_MPS2, acc.shape), atol=0.02)  # 16 g / 32768 steps
        np.testing.assert_allclose(samples[0].gyro_dps, (10.0, -20.0, 30.5), atol=0.07)
        assert all(s.device_time_s is None for s in samples)  # BLE 5.0 packets carry no clock
        assert st.corrupt == 1  # the garbage run before packet 20
        assert st.dropped == 0

        assert dev.read_registers(VERSION_REGISTER)[0] == 0x1234
        assert dev.set_rate(20.0) == 20.0 and fake_wit.rate_hz == 20.0

        # the sensor vanishes (out of range), comes back: reported, then streaming again
        fake_wit.available = False
        fake_wit.drop_link()
        wait_for(lambda: DeviceState.DISCONNECTED in states)
        assert "disconnected" in (dev.stats().last_error or "")
        time.sleep(0.2)
        fake_wit.available = True
        before = dev.buffer.total_pushed
        wait_for(lambda: dev.state == DeviceState.STREAMING and dev.buffer.total_pushed >= before + 10)
        assert fake_wit.connections == 2
        assert fake_wit.rate_hz == 50.0  # the configured rate is applied again
        assert dev.stats().reconnects >= 1
        last = dev.buffer.latest()
        k = len(fake_wit.sent_angles) - 1
        assert min(np.degrees(quat_angle(np.array(last.quat_wxyz), euler_to_quat(true_angles(j)))) for j in range(k - 3, k + 1)) < 0.02
    finally:
        dev.stop()
    assert dev.state == DeviceState.STOPPED
    assert not fake_wit.connected


def test_register_read_without_reply_times_out_with_a_hint(fake_wit: FakeWitMotion) -> None:
    dev = WitMotionBleDevice(fake_wit.address, ble_config=BleConfig(command_timeout_s=0.3), backend=FakeBleakBackend)
    dev.start()
    try:
        wait_for(lambda: dev.state == DeviceState.STREAMING)
        fake_wit.on_write = lambda uuid, data: None  # a firmware that ignores register reads
        with pytest.raises(DeviceError, match="register 0x2E"):
            dev.read_registers(VERSION_REGISTER)
        assert dev.state == DeviceState.STREAMING  # a failed command does not drop the connection
    finally:
        dev.stop()
