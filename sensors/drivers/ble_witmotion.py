"""WitMotion BLE 5.0 IMUs (BWT901BLE5.0, WT901BLE5.0, WT9011DCL family) over bleak.

GATT (from WitMotion's own SDK, WITMOTION/WitBluetooth_BWT901BLE5_0 ``device_model.py``):
service ``0000ffe5-0000-1000-8000-00805f9a34fb`` with the notify characteristic ``...ffe4...``
(the sensor streams 20-byte ``0x55 0x61`` packets there as soon as it is subscribed, and
answers register reads with ``0x55 0x71`` packets) and the write characteristic ``...ffe9...``
(5-byte ``FF AA REG LOW HIGH`` commands). The byte protocol itself (parser, command bytes,
Euler -> quaternion, free acceleration) is ``sensors.protocols.witmotion``.

What the driver does on connect: subscribe, unlock, set the output rate (register 0x03),
optionally save, read the rate back to confirm it, and read the battery voltage (register 0x64,
in 1/100 V; WitMotion's voltage -> level table, interpolated). Every sample becomes an
``ImuSample`` with the quaternion from the angles (sensor to the sensor's own Z-up world), the
free acceleration in that world (m/s^2, gravity removed) and the angular rate (deg/s, sensor
frame). The packets carry no timestamp or counter, so ``device_time_s`` is None and lost
packets cannot be counted; bytes that do not form a packet are counted as corrupt.

Register reads (``read_registers``) go out on the write characteristic and their answer comes
back as a notification: the driver matches it by start register to the waiting request.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

import numpy as np
from bleak import BleakClient
from bleak.backends.client import BaseBleakClient
from bleak.backends.scanner import BaseBleakScanner

from sensors.device import DeviceConfig
from sensors.drivers.ble_base import BleConfig, BleDevice
from sensors.protocols.witmotion import (
    RATE_CODES,
    Register,
    WitBleData,
    WitMotionBleParser,
    WitRegisters,
    euler_to_quat,
    free_acceleration,
    rate_command,
    read_register_command,
    save_command,
    unlock_command,
)
from sensors.samples import ImuSample
from vimcan_core.errors import DeviceError

log = logging.getLogger(__name__)

SERVICE_UUID = "0000ffe5-0000-1000-8000-00805f9a34fb"
NOTIFY_UUID = "0000ffe4-0000-1000-8000-00805f9a34fb"
WRITE_UUID = "0000ffe9-0000-1000-8000-00805f9a34fb"

BATTERY_VOLTAGE_REGISTER = 0x64  # 1/100 V
VERSION_REGISTER = 0x2E
#: output rates of the BLE 5.0 family; 200 Hz uses a different code on BLE models than on serial ones, so it is left out
BLE_RATES_HZ = tuple(r for r in sorted(RATE_CODES) if r <= 100.0)
#: WitMotion's battery voltage (V) -> level (%) table for its single Li-ion cell (given by WitMotion support)
BATTERY_TABLE_V_PCT = (
    (3.40, 5.0), (3.50, 10.0), (3.68, 15.0), (3.70, 20.0), (3.73, 30.0), (3.77, 40.0),
    (3.79, 50.0), (3.82, 60.0), (3.87, 75.0), (3.93, 90.0), (3.97, 100.0),
)


def battery_percent(voltage_v: float) -> float:
    """Battery level (%) from the cell voltage, interpolated in WitMotion's table (0 below 3.3 V)."""
    volts = [3.30] + [v for v, _ in BATTERY_TABLE_V_PCT]
    pct = [0.0] + [p for _, p in BATTERY_TABLE_V_PCT]
    return float(np.interp(voltage_v, volts, pct))


@dataclass(frozen=True)
class WitMotionBleConfig:
    """What to configure on the sensor."""

    rate_hz: float = 50.0  # the BLE link carries 50 Hz reliably; 100 Hz works with a good adapter
    save: bool = False  # write the configuration to the sensor's flash (it then keeps it across power cycles)
    command_gap_s: float = 0.05  # pause between configuration writes (the firmware needs time to apply them)

    def __post_init__(self) -> None:
        if float(self.rate_hz) not in BLE_RATES_HZ:
            raise DeviceError(f"WitMotion BLE output rate must be one of {BLE_RATES_HZ} Hz, got {self.rate_hz}")


class WitMotionBleDevice(BleDevice):
    """A WitMotion BLE 5.0 IMU: angles -> quaternion, acceleration and angular rate."""

    def __init__(
        self,
        address: str,
        wit_config: WitMotionBleConfig | None = None,
        device_id: str | None = None,
        config: DeviceConfig | None = None,
        ble_config: BleConfig | None = None,
        backend: type[BaseBleakClient] | None = None,
        scanner_backend: type[BaseBleakScanner] | None = None,
    ) -> None:
        super().__init__(device_id or f"witmotion-ble:{address}", address, config, ble_config, backend, scanner_backend)
        self.wit_config = wit_config or WitMotionBleConfig()
        self._parser = WitMotionBleParser()
        self._skipped_seen = 0
        self._register_waiters: dict[int, asyncio.Future] = {}
        self.rate_hz: float | None = None  # as read back from the sensor
        self.battery_voltage_v: float | None = None

    # ------------------------------------------------------------- registers
    async def _read_registers(self, client: BleakClient, start: int) -> tuple[int, ...]:
        """Eight consecutive registers from ``start`` (signed int16), via a notification reply."""
        loop = asyncio.get_running_loop()
        waiter = self._register_waiters.get(start)
        if waiter is None or waiter.done():
            waiter = loop.create_future()
            self._register_waiters[start] = waiter
        await client.write_gatt_char(WRITE_UUID, read_register_command(start), response=False)
        try:
            return await asyncio.wait_for(asyncio.shield(waiter), self.ble_config.command_timeout_s)
        except asyncio.TimeoutError as exc:
            raise DeviceError(f"{self.device_id}: no reply to reading register 0x{start:02X}; is the sensor a BLE 5.0 model?") from exc
        finally:
            if self._register_waiters.get(start) is waiter and waiter.done():
                del self._register_waiters[start]

    async def _read_battery(self, client: BleakClient) -> float:
        raw = (await self._read_registers(client, BATTERY_VOLTAGE_REGISTER))[0]
        self.battery_voltage_v = (raw & 0xFFFF) / 100.0
        pct = battery_percent(self.battery_voltage_v)
        self._set_battery(pct)
        return pct

    async def _configure_rate(self, client: BleakClient, rate_hz: float, strict: bool = True) -> float:
        """Unlock, write the rate (and save), read it back. ``strict``: a sensor that keeps another
        rate is an error; otherwise (on connect) a warning, and streaming goes on at its rate."""
        for cmd in (unlock_command(), rate_command(rate_hz), *((save_command(),) if self.wit_config.save else ())):
            await client.write_gatt_char(WRITE_UUID, cmd, response=False)
            await asyncio.sleep(self.wit_config.command_gap_s)
        code = (await self._read_registers(client, Register.RATE))[0]
        rate = {c: r for r, c in RATE_CODES.items()}.get(code)
        if rate != float(rate_hz):
            msg = (f"{self.device_id}: asked for {rate_hz:g} Hz but the rate register reads 0x{code:02X}; "
                   "the sensor may have refused the unlock (power-cycle it and retry)")
            if strict:
                raise DeviceError(msg)
            log.warning("%s", msg)
        self.rate_hz = rate
        return rate if rate is not None else float("nan")

    def read_registers(self, start: int) -> tuple[int, ...]:
        """Read eight registers from ``start`` (from any thread, while connected)."""
        return self.call(lambda client: self._read_registers(client, start))

    def read_battery(self) -> float:
        """Battery level in percent (also in ``stats().battery_pct``); the voltage is in ``battery_voltage_v``."""
        return self.call(self._read_battery)

    def set_rate(self, rate_hz: float) -> float:
        """Change the output rate while streaming; returns the rate the sensor confirms."""
        if float(rate_hz) not in BLE_RATES_HZ:
            raise DeviceError(f"WitMotion BLE output rate must be one of {BLE_RATES_HZ} Hz, got {rate_hz}")
        return self.call(lambda client: self._configure_rate(client, rate_hz), timeout_s=5.0)

    # ------------------------------------------------------------ BleDevice
    async def _setup(self, client: BleakClient) -> None:
        self._parser = WitMotionBleParser()  # no half packet survives a reconnect
        self._skipped_seen = 0
        self._register_waiters.clear()
        if client.services.get_characteristic(NOTIFY_UUID) is None:
            raise DeviceError(f"{self.device_id}: {self.address} has no WitMotion notify characteristic {NOTIFY_UUID}; "
                              "is it a WitMotion BLE 5.0 sensor (older BLE 4 models use another protocol)?")
        await client.start_notify(NOTIFY_UUID, self._notification_handler)
        await self._configure_rate(client, self.wit_config.rate_hz, strict=False)
        try:
            await self._read_battery(client)
        except DeviceError as exc:
            log.warning("%s", exc)
        log.info("%s: streaming at %s Hz, battery %s", self.device_id, self.rate_hz,
                 "?" if self.battery_voltage_v is None else f"{self.battery_voltage_v:.2f} V")

    async def _housekeeping(self, client: BleakClient) -> None:
        await self._read_battery(client)

    def _on_notification(self, char_uuid: str, data: bytes, host_time_s: float) -> None:
        packets = self._parser.feed(data)
        skipped = self._parser.skipped_bytes
        if skipped > self._skipped_seen:
            self._count_corrupt()  # one run of bytes that did not form a packet
            self._skipped_seen = skipped
        for p in packets:
            if isinstance(p, WitBleData):
                q = euler_to_quat(np.asarray(p.roll_pitch_yaw_deg))
                acc = free_acceleration(q, np.asarray(p.acc_g))
                self._emit(ImuSample(
                    device_id=self.device_id,
                    host_time_s=host_time_s,
                    device_time_s=None,
                    quat_wxyz=tuple(float(v) for v in q),
                    acc_free_mps2=tuple(float(v) for v in acc),
                    gyro_dps=tuple(float(v) for v in p.gyro_dps),
                ))
            elif isinstance(p, WitRegisters):
                waiter = self._register_waiters.get(p.start_register)
                if waiter is not None and not waiter.done():
                    waiter.set_result(p.values)
