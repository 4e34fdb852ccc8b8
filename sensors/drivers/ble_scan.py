"""Finding BLE IMUs: a timed scan that says what each advertiser is (``vimcan devices``).

Recognition, from the advertisement (name and advertised service UUIDs):

* **WitMotion BLE 5.0** (``witmotion-ble``): names such as ``WT901BLE68``, ``BWT901BLE5.0``,
  ``WT9011DCL-BT50``, ``HWT901B-BLE`` (``WT``/``BWT``/``HWT`` + model number), or the service
  ``0000ffe5-0000-1000-8000-00805f9a34fb`` in the advertisement.
* **Movella DOT** (``dot``): the name ``Movella DOT`` or ``Xsens DOT`` (what DOTs advertise),
  or a service UUID of the DOT family ``1517xxxx-4947-11e9-8646-d663bd873d93``.

Everything else is listed as ``unknown`` (only with ``recognised_only=False``).

``backend`` is handed to ``bleak.BleakScanner(backend=...)``, so tests can feed
advertisements from a subclass of ``bleak.backends.scanner.BaseBleakScanner``.
"""

from __future__ import annotations

import asyncio
import logging
import re
import threading
from dataclasses import dataclass
from enum import Enum
from typing import Any

from bleak import BleakScanner
from bleak.backends.device import BLEDevice
from bleak.backends.scanner import BaseBleakScanner
from bleak.exc import BleakError

from vimcan_core.errors import DeviceError

log = logging.getLogger(__name__)

WITMOTION_SERVICE = "0000ffe5-0000-1000-8000-00805f9a34fb"
_WITMOTION_NAME = re.compile(r"^(B?WT|HWT)\d{2,5}", re.IGNORECASE)
_DOT_NAME = re.compile(r"^(movella|xsens)\s*dot", re.IGNORECASE)
_DOT_SERVICE = re.compile(r"^1517[0-9a-f]{4}-4947-11e9-8646-d663bd873d93$")
_ADDRESS = re.compile(r"^([0-9A-Fa-f]{2}[:-]){5}[0-9A-Fa-f]{2}$|^[0-9A-Fa-f]{8}-([0-9A-Fa-f]{4}-){3}[0-9A-Fa-f]{12}$")


class BleSensorKind(Enum):
    """What an advertiser was recognised as; the value is its device-spec kind."""

    WITMOTION = "witmotion-ble"
    MOVELLA_DOT = "dot"
    UNKNOWN = "unknown"


@dataclass(frozen=True)
class BleDeviceInfo:
    """One advertiser seen during a scan."""

    address: str  # MAC address (Linux, Windows) or CoreBluetooth UUID (macOS)
    name: str | None
    rssi_dbm: int | None
    kind: BleSensorKind
    service_uuids: tuple[str, ...] = ()

    @property
    def rssi(self) -> int | None:
        """``rssi_dbm`` under the name the ``vimcan devices`` table uses."""
        return self.rssi_dbm

    @property
    def spec(self) -> str | None:
        """The device spec that opens it (``dot:D4:22:...``), None when unrecognised."""
        return None if self.kind == BleSensorKind.UNKNOWN else f"{self.kind.value}:{self.address}"


def recognise(name: str | None, service_uuids: tuple[str, ...] | list[str] = ()) -> BleSensorKind:
    """What an advertisement with this name and these service UUIDs is."""
    uuids = [u.lower() for u in service_uuids]
    if name and _DOT_NAME.match(name.strip()) or any(_DOT_SERVICE.match(u) for u in uuids):
        return BleSensorKind.MOVELLA_DOT
    if name and _WITMOTION_NAME.match(name.strip()) or WITMOTION_SERVICE in uuids:
        return BleSensorKind.WITMOTION
    return BleSensorKind.UNKNOWN


def looks_like_address(text: str) -> bool:
    """A MAC address (``AA:BB:CC:DD:EE:FF``) or a macOS CoreBluetooth UUID, as opposed to a name."""
    return bool(_ADDRESS.match(text.strip()))


def _bluetooth_error(exc: Exception) -> DeviceError:
    return DeviceError(
        f"BLE scan failed: {exc}. Is Bluetooth switched on and is there an adapter? "
        "(Linux: `bluetoothctl power on`, the bluetooth service running and your user in the `bluetooth` group)"
    )


async def scan_ble_async(
    timeout_s: float = 5.0, backend: type[BaseBleakScanner] | None = None, recognised_only: bool = False
) -> list[BleDeviceInfo]:
    """Scan for ``timeout_s`` seconds; recognised sensors first, then by signal strength."""
    try:
        found = await BleakScanner.discover(timeout=timeout_s, return_adv=True, backend=backend)
    except (BleakError, OSError) as exc:
        raise _bluetooth_error(exc) from exc
    out = []
    for device, adv in found.values():
        name = adv.local_name or device.name
        uuids = tuple(u.lower() for u in adv.service_uuids)
        kind = recognise(name, uuids)
        if recognised_only and kind == BleSensorKind.UNKNOWN:
            continue
        out.append(BleDeviceInfo(device.address, name, adv.rssi, kind, uuids))
    out.sort(key=lambda d: (d.kind == BleSensorKind.UNKNOWN, -(d.rssi_dbm if d.rssi_dbm is not None else -999)))
    log.info("BLE scan: %d advertisers, %d recognised", len(out), sum(d.kind != BleSensorKind.UNKNOWN for d in out))
    return out


def scan_ble(
    timeout_s: float = 5.0, backend: type[BaseBleakScanner] | None = None, recognised_only: bool = False
) -> list[BleDeviceInfo]:
    """Blocking ``scan_ble_async`` for callers without an event loop (the CLI, the GUI's worker).

    Runs in a private thread with its own loop, so it also works when the caller's thread
    already runs one."""
    result: dict[str, Any] = {}

    def run() -> None:
        try:
            result["value"] = asyncio.run(scan_ble_async(timeout_s, backend, recognised_only))
        except BaseException as exc:  # handed back to the caller's thread
            result["error"] = exc

    t = threading.Thread(target=run, name="ble-scan", daemon=True)
    t.start()
    t.join(timeout_s + 30.0)
    if t.is_alive():
        raise DeviceError(f"BLE scan did not finish within {timeout_s + 30.0:.0f} s; is the Bluetooth stack responding?")
    if "error" in result:
        raise result["error"]
    return result["value"]


async def find_by_name(
    name: str, timeout_s: float = 10.0, backend: type[BaseBleakScanner] | None = None
) -> BLEDevice:
    """The advertiser whose name is ``name`` (case-insensitive), for specs that give a name."""
    wanted = name.strip().lower()
    try:
        device = await BleakScanner.find_device_by_filter(
            lambda d, adv: (adv.local_name or d.name or "").strip().lower() == wanted, timeout=timeout_s, backend=backend
        )
    except (BleakError, OSError) as exc:
        raise _bluetooth_error(exc) from exc
    if device is None:
        raise DeviceError(f"no BLE device named {name!r} advertised within {timeout_s:.0f} s; "
                          "is it switched on and not connected to another app? (`vimcan devices` lists what is seen)")
    return device
