"""A ``Device`` for Bluetooth Low Energy sensors, on top of bleak.

Threading model: the device thread (``Device._run``) owns one asyncio event loop per
connection. ``_connect`` creates the loop and runs the connection coroutine on it;
``_poll`` runs the loop for up to ``poll_interval_s`` while notifications arrive, then
returns the samples they produced; ``_disconnect`` disconnects and closes the loop. So every
bleak call and every notification callback runs in the device thread, and nothing else
touches the client. Other threads (the GUI, the command line) reach the device through
``call(...)``, which schedules a coroutine on the loop and waits for its result.

Loss: bleak calls ``disconnected_callback`` when the peripheral goes away without us asking
(out of range, switched off). The next ``_poll`` raises ``DeviceLost`` and the base class
reports DISCONNECTED, backs off and reconnects.

Notifications are decoded by the subclass (``_on_notification``) into samples, queued in a
bounded deque (overflow is counted as dropped) and handed to the base class by ``_poll``.

Subclasses implement ``_setup(client)`` (configure the device, start notifications),
``_on_notification(uuid, data, host_time_s)`` and optionally ``_teardown(client)`` and
``_housekeeping(client)`` (called every ``housekeeping_interval_s``, e.g. to read the battery).

A device can be given by address or by its advertised name (``WT901BLE68``): a name is
looked up with a scan at each connect.

Testing: ``backend`` is passed straight to ``bleak.BleakClient(..., backend=...)``; a
subclass of ``bleak.backends.client.BaseBleakClient`` that serves the GATT table in memory
lets the tests run the real client end to end without a radio.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
import time
from abc import abstractmethod
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Sequence, TypeVar

from bleak import BleakClient
from bleak.backends.client import BaseBleakClient
from bleak.backends.device import BLEDevice
from bleak.backends.scanner import BaseBleakScanner
from bleak.exc import BleakError

from sensors.device import Device, DeviceConfig
from sensors.drivers.ble_scan import find_by_name, looks_like_address
from sensors.samples import Sample
from vimcan_core.errors import DeviceError, DeviceLost

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(frozen=True)
class BleConfig:
    """Settings of the BLE transport (the common device settings are in ``DeviceConfig``)."""

    connect_timeout_s: float = 15.0  # finding + connecting; BLE connects take 1-5 s in practice
    command_timeout_s: float = 3.0  # one GATT read/write
    poll_interval_s: float = 0.1  # how long one _poll runs the loop at most
    pending_capacity: int = 1024  # decoded samples waiting for _poll; overflow counts as dropped
    housekeeping_interval_s: float = 10.0  # battery reads and the like; 0 disables


class BleDevice(Device):
    """Base of the BLE drivers: an asyncio loop with a ``BleakClient`` inside the device thread."""

    def __init__(
        self,
        device_id: str,
        address: str,
        config: DeviceConfig | None = None,
        ble_config: BleConfig | None = None,
        backend: type[BaseBleakClient] | None = None,
        scanner_backend: type[BaseBleakScanner] | None = None,
    ) -> None:
        super().__init__(device_id, config)
        self.address = address  # a MAC address / macOS UUID, or an advertised name (found by a scan)
        self.ble_config = ble_config or BleConfig()
        self._backend = backend  # None: the platform's bleak backend; tests inject a fake
        self._scanner_backend = scanner_backend  # used only to find a device given by name
        self._loop: asyncio.AbstractEventLoop | None = None
        self._client: BleakClient | None = None
        self._pending: deque[Sample] = deque()
        self._wakeup: asyncio.Event | None = None
        self._lost_reason: str | None = None
        self._next_housekeeping = 0.0
        self._thread_ident: int | None = None

    # ------------------------------------------------------------ for subclasses
    @abstractmethod
    async def _setup(self, client: BleakClient) -> None:
        """Configure the connected device and start its notifications (device thread)."""

    @abstractmethod
    def _on_notification(self, char_uuid: str, data: bytes, host_time_s: float) -> None:
        """Decode one notification; call ``_emit`` for each sample it holds (device thread)."""

    async def _teardown(self, client: BleakClient) -> None:
        """Stop the device's measurement before disconnecting (best effort, optional)."""

    async def _housekeeping(self, client: BleakClient) -> None:
        """Periodic work while connected, e.g. reading the battery (optional)."""

    def _emit(self, sample: Sample) -> None:
        """Queue one decoded sample for the base class (call from the device thread)."""
        if len(self._pending) >= self.ble_config.pending_capacity:
            self._pending.popleft()
            self._count_dropped()
        self._pending.append(sample)
        if self._wakeup is not None:
            self._wakeup.set()

    @property
    def client(self) -> BleakClient | None:
        return self._client

    # ----------------------------------------------------------- other threads
    def call(self, make_coro: Callable[[BleakClient], Awaitable[T]], timeout_s: float | None = None) -> T:
        """Run ``make_coro(client)`` on the device's loop from another thread and return its result.

        Raises ``DeviceError`` when the device is not connected or the call times out."""
        loop, client = self._loop, self._client
        if loop is None or client is None or loop.is_closed():
            raise DeviceError(f"{self.device_id}: not connected (state {self.state.value}); start it and wait for STREAMING")
        if threading.get_ident() == self._thread_ident:
            raise DeviceError(f"{self.device_id}: call() is for other threads; inside the driver await the coroutine")
        if timeout_s is None:  # the inner GATT timeout fires first and says what failed; this is the backstop
            timeout_s = 2 * self.ble_config.command_timeout_s + self.ble_config.poll_interval_s
        coro = make_coro(client)
        try:
            future = asyncio.run_coroutine_threadsafe(coro, loop)
        except RuntimeError as exc:  # the loop closed in between: the link just went down
            coro.close()
            raise DeviceError(f"{self.device_id}: not connected (the link just went down); retry when it is STREAMING") from exc
        try:
            return future.result(timeout_s)
        except concurrent.futures.TimeoutError as exc:
            future.cancel()
            raise DeviceError(f"{self.device_id}: no answer within {timeout_s:.1f} s; is the sensor in range?") from exc
        except BleakError as exc:
            raise DeviceError(f"{self.device_id}: command failed: {exc}") from exc

    # --------------------------------------------------------- Device interface
    def _connect(self) -> None:
        self._thread_ident = threading.get_ident()
        self._lost_reason = None
        self._pending.clear()
        self._loop = asyncio.new_event_loop()
        try:
            self._loop.run_until_complete(asyncio.wait_for(self._open(), self.ble_config.connect_timeout_s))
        except asyncio.TimeoutError as exc:
            raise DeviceLost(
                f"{self.device_id}: could not connect to {self.address} within {self.ble_config.connect_timeout_s:.0f} s; "
                "check that the sensor is switched on, in range and not connected to another app (phone)"
            ) from exc
        except (BleakError, OSError) as exc:
            raise DeviceLost(f"{self.device_id}: could not connect to {self.address}: {exc}") from exc
        self._next_housekeeping = time.monotonic() + self.ble_config.housekeeping_interval_s

    async def _open(self) -> None:
        self._wakeup = asyncio.Event()
        target: str | BLEDevice = self.address
        if not looks_like_address(self.address):
            target = await find_by_name(self.address, self.ble_config.connect_timeout_s, self._scanner_backend)
        client = BleakClient(
            target,
            disconnected_callback=self._on_disconnected,
            timeout=self.ble_config.connect_timeout_s,
            backend=self._backend,
        )
        self._client = client
        await client.connect()
        log.info("%s: connected to %s", self.device_id, self.address)
        await self._setup(client)

    def _poll(self) -> Sequence[Sample]:
        loop = self._loop
        assert loop is not None, "_poll before _connect"
        if not self._pending and self._lost_reason is None:
            loop.run_until_complete(self._wait(self.ble_config.poll_interval_s))
        if self._lost_reason is not None and not self._pending:
            raise DeviceLost(f"{self.device_id}: {self._lost_reason}")
        if (
            self.ble_config.housekeeping_interval_s > 0
            and time.monotonic() >= self._next_housekeeping
            and self._client is not None
        ):
            self._next_housekeeping = time.monotonic() + self.ble_config.housekeeping_interval_s
            try:
                loop.run_until_complete(asyncio.wait_for(self._housekeeping(self._client), self.ble_config.command_timeout_s))
            except (BleakError, asyncio.TimeoutError) as exc:
                log.warning("%s: housekeeping failed: %s", self.device_id, exc)
        out = list(self._pending)
        self._pending.clear()
        return out

    async def _wait(self, timeout_s: float) -> None:
        assert self._wakeup is not None
        self._wakeup.clear()
        try:
            await asyncio.wait_for(self._wakeup.wait(), timeout_s)
        except asyncio.TimeoutError:
            pass

    def _disconnect(self) -> None:
        loop, client = self._loop, self._client
        self._client = None
        if loop is None:
            return
        try:
            if client is not None and client.is_connected:
                loop.run_until_complete(asyncio.wait_for(self._close(client), self.ble_config.command_timeout_s))
        except Exception as exc:  # the link may already be gone; never let this block a reconnect
            log.debug("%s: error while disconnecting: %s", self.device_id, exc)
        finally:
            self._cancel_tasks(loop)
            loop.close()
            self._loop = None
            self._wakeup = None

    async def _close(self, client: BleakClient) -> None:
        try:
            await self._teardown(client)
        except (BleakError, asyncio.TimeoutError) as exc:
            log.debug("%s: teardown failed: %s", self.device_id, exc)
        await client.disconnect()

    @staticmethod
    def _cancel_tasks(loop: asyncio.AbstractEventLoop) -> None:
        tasks = [t for t in asyncio.all_tasks(loop) if not t.done()]
        for t in tasks:
            t.cancel()
        if tasks:
            loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))

    # --------------------------------------------------------------- callbacks
    def _on_disconnected(self, client: BleakClient) -> None:
        """bleak: the peripheral disconnected without being asked to (runs on the loop)."""
        self._lost_reason = f"{self.address} disconnected (out of range, switched off or battery empty)"
        log.warning("%s: %s", self.device_id, self._lost_reason)
        if self._wakeup is not None:
            self._wakeup.set()

    def _notification_handler(self, sender: Any, data: bytearray) -> None:
        """The callback given to ``start_notify``: time-stamps and hands the bytes to the subclass."""
        host_time_s = time.monotonic()
        uuid = getattr(sender, "uuid", str(sender))
        try:
            self._on_notification(uuid, bytes(data), host_time_s)
        except Exception:  # a decoding bug must not kill the loop; count it and go on
            self._count_corrupt()
            log.exception("%s: could not decode a notification from %s", self.device_id, uuid)
