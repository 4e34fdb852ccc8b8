"""Device specs: parsing, errors that say how to fix them, and the drivers they build."""

from __future__ import annotations

from pathlib import Path

import pytest

from sensors.device import DeviceConfig
from sensors.drivers.line_serial import LineBoardImu, LineSerialDevice
from sensors.drivers.witmotion_serial import WitMotionSerialDevice
from sensors.files.replay import FileReplayDevice
from sensors.spec import DEVICE_FACTORIES, DeviceSpec, create_device, parse_spec, register_kind
from vimcan_core.errors import DeviceError


@pytest.mark.parametrize("text, kind, address, baud, options", [
    ("witmotion:/dev/ttyUSB0@115200", "witmotion", "/dev/ttyUSB0", 115200, ()),
    ("witmotion:/dev/ttyUSB0", "witmotion", "/dev/ttyUSB0", 9600, ()),
    ("WitMotion:COM3@921600?rate=200&quat=1", "witmotion", "COM3", 921600, (("rate", "200"), ("quat", "1"))),
    ("line:/dev/ttyACM0@115200?sensor=2", "line", "/dev/ttyACM0", 115200, (("sensor", "2"),)),
    ("witmotion-ble:E8:4C:11:22:33:44", "witmotion-ble", "E8:4C:11:22:33:44", None, ()),
    ("dot:D4:22:CD:00:11:22?rate=30", "dot", "D4:22:CD:00:11:22", None, (("rate", "30"),)),
    ("sim", "sim", "", None, ()),
    ("sim:left_forearm?drop=0.1", "sim", "left_forearm", None, (("drop", "0.1"),)),
    ("file:C:\\takes\\a@b.csv?speed=0", "file", "C:\\takes\\a@b.csv", None, (("speed", "0"),)),
])
def test_parse(text: str, kind: str, address: str, baud, options) -> None:
    spec = parse_spec(text)
    assert (spec.kind, spec.address, spec.baud, spec.options) == (kind, address, baud, options)


@pytest.mark.parametrize("text, message", [
    ("", "empty device spec"),
    ("gopro:1", "unknown kind 'gopro'; kinds are witmotion, witmotion-ble, dot, line, sim, camera, file"),
    ("witmotion:", "needs a serial port"),
    ("witmotion:/dev/ttyUSB0@fast", "must be a number"),
    ("line:/dev/ttyACM0?rate=100", "unknown option 'rate' for line; options are sensor"),
    ("dot:", "needs a BLE address"),
    ("witmotion:/dev/ttyUSB0?quat=maybe", "must be 1 or 0"),
])
def test_parse_errors(text: str, message: str) -> None:
    with pytest.raises(DeviceError, match=message.replace("(", r"\(")):
        create_device(text)


def test_serial_specs_build_configured_drivers() -> None:
    cfg = DeviceConfig(stall_after_s=0.7)
    wit = create_device("witmotion:/dev/ttyUSB9@115200?rate=100&quat=1&time=1", device_id="pelvis", config=cfg)
    assert isinstance(wit, WitMotionSerialDevice) and wit.device_id == "pelvis" and wit.config is cfg
    assert (wit.settings.port, wit.settings.baud) == ("/dev/ttyUSB9", 115200)
    assert (wit.setup.rate_hz, wit.setup.enable_quaternion, wit.setup.enable_time, wit.setup.save) == (100.0, True, True, False)
    with pytest.raises(DeviceError, match="choose one of"):
        create_device("witmotion:/dev/ttyUSB9?rate=123")
    line = create_device("line:/dev/ttyACM1")
    assert isinstance(line, LineSerialDevice) and line.requested_sensor is None and line.settings.baud == 115200
    imu3 = create_device("line:/dev/ttyACM1@230400?sensor=3")
    assert isinstance(imu3, LineBoardImu) and (imu3.sensor, imu3.baud) == (3, 230400)
    assert imu3.device_id == "line:/dev/ttyACM1#3"


def test_file_specs_and_bare_paths(shared_data: Path) -> None:
    path = shared_data / "imu" / "movella_dot" / "RTibia_20210820_202113_825.csv"
    dev = create_device(f"file:{path}?speed=4&loop=1")
    assert isinstance(dev, FileReplayDevice) and dev.speed == 4.0 and dev.loop and len(dev.recording) == 382
    bare = create_device(str(path))
    assert isinstance(bare, FileReplayDevice) and bare.speed == 1.0 and not bare.loop


def test_ble_and_sim_kinds_are_imported_lazily() -> None:
    dot = create_device("dot:D4:22:CD:00:11:22?rate=30")
    assert type(dot).__name__ == "MovellaDotDevice" and dot.dot_config.output_rate_hz == 30
    wit = create_device("witmotion-ble:E8:4C:11:22:33:44?rate=100")
    assert type(wit).__name__ == "WitMotionBleDevice" and wit.wit_config.rate_hz == 100.0
    sim = create_device("sim:left_forearm?rate=60&drop=0.05", config=DeviceConfig(stall_after_s=2.0))
    assert type(sim).__name__ == "SimulatedImu" and sim.device_id == "sim:left_forearm"
    assert sim.sim_config.drop_rate == 0.05 and sim.config.stall_after_s == 2.0
    with pytest.raises(DeviceError, match="unknown IMU site 'elbow'; sites are left_forearm"):
        create_device("sim:elbow")


def test_registry_accepts_new_kinds_and_reports_missing_drivers() -> None:
    from sensors.spec import _import

    with pytest.raises(DeviceError, match="not available .*No module named 'sensors.drivers.nope'.*pip install x"):
        _import("sensors.drivers.nope", "Thing", "the nope driver", "pip install x")
    seen: list[DeviceSpec] = []

    def factory(spec, device_id, config):
        seen.append(spec)
        return create_device("line:/dev/null")

    register_kind("test-kind", factory, "a test kind", ("x",))
    try:
        create_device("test-kind:abc?x=1")
        assert seen[0] == DeviceSpec("test-kind", "abc", None, (("x", "1"),), "test-kind:abc?x=1")
    finally:
        del DEVICE_FACTORIES["test-kind"]
