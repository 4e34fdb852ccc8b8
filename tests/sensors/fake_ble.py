"""A bleak backend without a radio, for end-to-end tests of the BLE drivers.

``FakeBleakBackend`` subclasses bleak's ``BaseBleakClient`` and is injected with
``BleakClient(..., backend=FakeBleakBackend)``: the driver runs bleak's real client (UUID
resolution, the notification wrapper, the disconnect callback) and only the lowest layer, the
radio, is simulated. The peripheral at each address is a ``FakePeripheral`` registered in
``PERIPHERALS``; a subclass serves the device's GATT table, answers reads and writes and
streams notifications from a task on the driver's event loop.

``FakeBleakScanner`` does the same for ``BleakScanner(..., backend=...)``: it advertises the
entries of ``ADVERTISERS``.

Faults a test can inject from its own thread: ``drop_link()`` (the peripheral vanishes: bleak
reports an unsolicited disconnect) and ``available = False`` (connects fail until it is back).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Callable, TypeVar

from bleak.backends.characteristic import BleakGATTCharacteristic
from bleak.backends.client import BaseBleakClient
from bleak.backends.scanner import AdvertisementData, BaseBleakScanner
from bleak.backends.service import BleakGATTService, BleakGATTServiceCollection
from bleak.exc import BleakError

#: address -> peripheral; tests register theirs and remove them when done
PERIPHERALS: dict[str, "FakePeripheral"] = {}

P = TypeVar("P", bound="FakePeripheral")


@contextmanager
def registered(peripheral: P) -> Iterator[P]:
    """Serve ``peripheral`` at its address in ``PERIPHERALS`` for the duration of the block."""
    PERIPHERALS[peripheral.address] = peripheral
    try:
        yield peripheral
    finally:
        PERIPHERALS.pop(peripheral.address, None)


def wait_for(predicate: Callable[[], bool], timeout_s: float = 10.0) -> None:
    """Poll ``predicate`` until it holds; ``AssertionError`` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached within the time limit")
        time.sleep(0.01)


class FakePeripheral:
    """A simulated BLE peripheral. Subclasses fill ``gatt`` and override the ``on_*`` hooks."""

    #: service uuid -> {characteristic uuid: properties}
    gatt: dict[str, dict[str, list[str]]] = {}
    name = "fake"

    def __init__(self, address: str) -> None:
        self.address = address
        self.available = True
        self.connections = 0  # successful connects
        self.writes: list[tuple[str, bytes]] = []  # every write, in order
        self._lock = threading.Lock()
        self._backend: FakeBleakBackend | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.subscribed: set[str] = set()

    # ----------------------------------------------------------- device hooks
    def on_connect(self) -> None: ...

    def on_read(self, uuid: str) -> bytes:
        raise BleakError(f"characteristic {uuid} is not readable")

    def on_write(self, uuid: str, data: bytes) -> None: ...

    def on_subscribe(self, uuid: str) -> None: ...

    def on_link_lost(self) -> None: ...

    # --------------------------------------------------------------- helpers
    @property
    def connected(self) -> bool:
        return self._backend is not None and self._backend.is_connected

    def notify(self, uuid: str, data: bytes) -> None:
        """Send a notification (call on the backend's loop)."""
        if self._backend is not None and uuid in self.subscribed:
            self._backend.deliver(uuid, data)

    def create_task(self, coro) -> asyncio.Task:
        assert self._loop is not None
        return self._loop.create_task(coro)

    def drop_link(self) -> None:
        """Simulate the link dying (thread-safe): bleak reports an unsolicited disconnect."""
        with self._lock:
            backend, loop = self._backend, self._loop
        if backend is not None and loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(backend.lose_link)

    def _attach(self, backend: "FakeBleakBackend", loop: asyncio.AbstractEventLoop) -> None:
        with self._lock:
            self._backend, self._loop = backend, loop
            self.subscribed = set()
            self.connections += 1

    def _detach(self) -> None:
        with self._lock:
            self._backend = None
            self.subscribed = set()
        self.on_link_lost()


class FakeBleakBackend(BaseBleakClient):
    """bleak's abstract client, served from a ``FakePeripheral`` instead of the OS stack."""

    def __init__(self, address_or_ble_device: Any, **kwargs: Any) -> None:
        super().__init__(address_or_ble_device, **kwargs)
        self._peripheral: FakePeripheral | None = None
        self._callbacks: dict[str, Callable[[bytearray], None]] = {}
        self._connected = False

    # ------------------------------------------------------------ connection
    @property
    def name(self) -> str:
        return self._peripheral.name if self._peripheral else self.address

    @property
    def mtu_size(self) -> int:
        return 247

    @property
    def is_connected(self) -> bool:
        return self._connected

    async def connect(self, pair: bool, **kwargs: Any) -> None:
        await asyncio.sleep(0.01)  # a radio never answers at once
        peripheral = PERIPHERALS.get(self.address)
        if peripheral is None or not peripheral.available:
            raise BleakError(f"Device with address {self.address} was not found.")
        self.services = self._build_services(peripheral)
        self._peripheral = peripheral
        self._connected = True
        peripheral._attach(self, asyncio.get_running_loop())
        peripheral.on_connect()

    async def disconnect(self) -> None:
        if self._connected:
            self._connected = False
            self._callbacks.clear()
            if self._peripheral is not None:
                self._peripheral._detach()

    def lose_link(self) -> None:
        """The peripheral went away: what the OS stack reports as an unsolicited disconnect."""
        if not self._connected:
            return
        self._connected = False
        self._callbacks.clear()
        if self._peripheral is not None:
            self._peripheral._detach()
        if self._disconnected_callback is not None:
            self._disconnected_callback()

    async def pair(self, *args: Any, **kwargs: Any) -> None:
        return None

    async def unpair(self) -> None:
        return None

    # ------------------------------------------------------------------- I/O
    def _check(self) -> FakePeripheral:
        if not self._connected or self._peripheral is None:
            raise BleakError("Not connected")
        return self._peripheral

    async def read_gatt_char(self, characteristic: BleakGATTCharacteristic, **kwargs: Any) -> bytearray:
        peripheral = self._check()
        await asyncio.sleep(0)
        return bytearray(peripheral.on_read(characteristic.uuid))

    async def write_gatt_char(self, characteristic: BleakGATTCharacteristic, data: Any, response: bool) -> None:
        peripheral = self._check()
        await asyncio.sleep(0)
        peripheral.writes.append((characteristic.uuid, bytes(data)))
        peripheral.on_write(characteristic.uuid, bytes(data))

    async def read_gatt_descriptor(self, descriptor: Any, **kwargs: Any) -> bytearray:
        raise BleakError("no descriptors in the fake")

    async def write_gatt_descriptor(self, descriptor: Any, data: Any) -> None:
        raise BleakError("no descriptors in the fake")

    async def start_notify(self, characteristic: BleakGATTCharacteristic, callback: Callable, **kwargs: Any) -> None:
        peripheral = self._check()
        if "notify" not in characteristic.properties:
            raise BleakError(f"{characteristic.uuid} does not notify")
        self._callbacks[characteristic.uuid] = callback
        peripheral.subscribed.add(characteristic.uuid)
        peripheral.on_subscribe(characteristic.uuid)

    async def stop_notify(self, characteristic: BleakGATTCharacteristic) -> None:
        self._callbacks.pop(characteristic.uuid, None)
        if self._peripheral is not None:
            self._peripheral.subscribed.discard(characteristic.uuid)

    def deliver(self, uuid: str, data: bytes) -> None:
        callback = self._callbacks.get(uuid)
        if callback is not None:
            callback(bytearray(data))

    # ------------------------------------------------------------- GATT table
    @staticmethod
    def _build_services(peripheral: FakePeripheral) -> BleakGATTServiceCollection:
        collection = BleakGATTServiceCollection()
        handle = 1
        for service_uuid, chars in peripheral.gatt.items():
            service = BleakGATTService(None, handle, service_uuid)
            collection.add_service(service)
            handle += 1
            for char_uuid, props in chars.items():
                collection.add_characteristic(
                    BleakGATTCharacteristic(None, handle, char_uuid, list(props), lambda: 244, service)
                )
                handle += 2
        return collection


# --------------------------------------------------------------------- scanning
#: what the fake radio hears: (address, advertised name, service uuids, rssi dBm)
ADVERTISERS: list[tuple[str, str | None, list[str], int]] = []


class FakeBleakScanner(BaseBleakScanner):
    """bleak's abstract scanner fed from ``ADVERTISERS`` (each advertises twice, as real ones repeat)."""

    def __init__(self, detection_callback: Any, service_uuids: Any, scanning_mode: str = "active", **kwargs: Any) -> None:
        super().__init__(detection_callback, service_uuids)
        self._task: asyncio.Task | None = None

    async def start(self) -> None:
        self.seen_devices = {}
        self._task = asyncio.get_running_loop().create_task(self._advertise())

    async def _advertise(self) -> None:
        for _ in range(2):
            for address, name, uuids, rssi in list(ADVERTISERS):
                await asyncio.sleep(0.005)
                if not self.is_allowed_uuid(uuids):
                    continue
                adv = AdvertisementData(name, {}, {}, list(uuids), None, rssi, ())
                device = self.create_or_update_device(address, address, name, None, adv)
                self.call_detection_callbacks(device, adv)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
