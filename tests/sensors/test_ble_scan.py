"""BLE scan through bleak's real BleakScanner with a fake scanner backend: recognition and order."""

from __future__ import annotations


import pytest

from fake_ble import ADVERTISERS, PERIPHERALS, FakeBleakBackend, FakeBleakScanner
from sensors.device import DeviceState
from sensors.drivers.ble_base import BleConfig
from sensors.drivers.ble_scan import (
    WITMOTION_SERVICE,
    BleSensorKind,
    looks_like_address,
    recognise,
    scan_ble,
)
from sensors.drivers.movella_dot import MEASUREMENT_SERVICE
from vimcan_core.errors import DeviceError

HEARD = [
    ("D4:22:CD:00:00:01", "Movella DOT", [], -70),
    ("D4:22:CD:00:00:02", "Xsens DOT", [MEASUREMENT_SERVICE], -50),
    ("E8:CB:ED:00:00:01", "WT901BLE68", [], -60),
    ("E8:CB:ED:00:00:02", None, [WITMOTION_SERVICE], -80),  # no name in this advertisement, but the service
    ("11:22:33:44:55:66", "Someone's headphones", ["0000110b-0000-1000-8000-00805f9b34fb"], -40),
    ("77:88:99:AA:BB:CC", "WTF speaker", [], -30),  # starts like WitMotion but has no model number
]


@pytest.fixture
def radio():
    ADVERTISERS[:] = HEARD
    yield
    ADVERTISERS.clear()


def test_recognise_names_and_services() -> None:
    assert recognise("WT901BLE67") == BleSensorKind.WITMOTION
    assert recognise("BWT901BLE5.0") == BleSensorKind.WITMOTION
    assert recognise("WT9011DCL-BT50") == BleSensorKind.WITMOTION
    assert recognise("movella dot") == BleSensorKind.MOVELLA_DOT
    assert recognise(None, ["15172000-4947-11E9-8646-D663BD873D93"]) == BleSensorKind.MOVELLA_DOT
    assert recognise(None, [WITMOTION_SERVICE.upper()]) == BleSensorKind.WITMOTION
    assert recognise("Keyboard K380") == BleSensorKind.UNKNOWN
    assert recognise(None) == BleSensorKind.UNKNOWN
    assert looks_like_address("d4:22:cd:00:11:22") and looks_like_address("8E3A1F7C-1D2B-4C5E-9F00-112233445566")
    assert not looks_like_address("WT901BLE68")


def test_scan_lists_recognised_sensors_first(radio) -> None:
    found = scan_ble(0.3, backend=FakeBleakScanner)
    assert len(found) == len(HEARD)  # each advertiser once, although it advertised twice
    kinds = {d.address: d.kind for d in found}
    assert kinds["D4:22:CD:00:00:01"] == kinds["D4:22:CD:00:00:02"] == BleSensorKind.MOVELLA_DOT
    assert kinds["E8:CB:ED:00:00:01"] == kinds["E8:CB:ED:00:00:02"] == BleSensorKind.WITMOTION
    assert kinds["11:22:33:44:55:66"] == kinds["77:88:99:AA:BB:CC"] == BleSensorKind.UNKNOWN
    # recognised first, each group by signal strength
    assert [d.address for d in found[:4]] == ["D4:22:CD:00:00:02", "E8:CB:ED:00:00:01", "D4:22:CD:00:00:01", "E8:CB:ED:00:00:02"]
    assert found[0].spec == "dot:D4:22:CD:00:00:02" and found[1].spec == "witmotion-ble:E8:CB:ED:00:00:01"
    assert found[-1].spec is None
    only = scan_ble(0.3, backend=FakeBleakScanner, recognised_only=True)
    assert [d.address for d in only] == [d.address for d in found[:4]]


def test_scan_without_bluetooth_says_how_to_fix() -> None:
    class NoAdapter(FakeBleakScanner):
        async def start(self) -> None:
            from bleak.exc import BleakError

            raise BleakError("No Bluetooth adapters found.")

    with pytest.raises(DeviceError, match="bluetoothctl power on"):
        scan_ble(0.1, backend=NoAdapter)


def test_a_device_given_by_name_is_found_by_scanning(radio) -> None:
    from test_movella_dot import FakeDot, wait_for

    from sensors.drivers.movella_dot import MovellaDotDevice

    dot = FakeDot("D4:22:CD:00:00:02")
    PERIPHERALS[dot.address] = dot
    dev = MovellaDotDevice("Xsens DOT", backend=FakeBleakBackend, scanner_backend=FakeBleakScanner,
                           ble_config=BleConfig(connect_timeout_s=3.0))
    dev.start()
    try:
        wait_for(lambda: dev.buffer.total_pushed >= 3)
        assert dev.state == DeviceState.STREAMING
        assert dot.connections == 1
    finally:
        dev.stop()
        PERIPHERALS.pop(dot.address, None)
