"""Device specs: one string names a device, ``create_device`` builds its driver.

Grammar::

    KIND[:ADDRESS][@BAUD][?KEY=VALUE&KEY=VALUE...]

=================  ===============================  =========================================
kind               address                          options
=================  ===============================  =========================================
``witmotion``      serial port (``/dev/ttyUSB0``,   ``rate`` Hz, ``quat=1`` (enable 0x59),
                   ``COM3``), ``@BAUD`` (9600)      ``time=1`` (enable 0x50), ``save=1``,
                                                    ``baud`` (switch the sensor to it, saved)
``line``           serial port, ``@BAUD`` (115200)  ``sensor``: the IMU id on a multi-IMU board;
                                                    devices of one board share its port
``witmotion-ble``  BLE address or name              ``rate`` Hz, ``save=1``
``dot``            BLE address                      ``rate`` Hz, ``heading_reset=1``
``sim``            an IMU site (``pelvis``...)      ``rate``, ``seed``, ``drop``, ``jitter``,
                   or nothing (pelvis)              ``noise`` (deg)
``file``           a recording (any format of       ``speed`` (1 = real time, 0 = as fast as
                   ``sensors.files``)               possible), ``loop=1``
=================  ===============================  =========================================

Examples: ``witmotion:/dev/ttyUSB0@115200?rate=100&quat=1``, ``line:/dev/ttyACM0@115200``,
``dot:D4:22:CD:00:11:22``, ``sim:left_forearm?drop=0.01``, ``file:take/LFemur.csv?speed=4``.

A bare path to an existing recording is read as ``file:PATH``.

Factories live in ``DEVICE_FACTORIES`` (kind -> function). The BLE and simulated drivers are
imported lazily, so listing or parsing specs never needs bleak or the performer model, and a
missing driver gives a message that says what to install. Other modules may add kinds with
``register_kind``.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from sensors.device import Device, DeviceConfig
from vimcan_core.errors import DeviceError

SERIAL_KINDS = ("witmotion", "line")
DEFAULT_BAUD = {"witmotion": 9600, "line": 115200}  # WT901 family factory setting; the example sketch's rate


@dataclass(frozen=True)
class DeviceSpec:
    """A parsed spec. ``options`` keeps the ``?key=value`` pairs in order, as text."""

    kind: str
    address: str
    baud: int | None = None
    options: tuple[tuple[str, str], ...] = ()
    text: str = ""

    def option(self, key: str, default: str | None = None) -> str | None:
        for k, v in self.options:
            if k == key:
                return v
        return default

    def float_option(self, key: str, default: float) -> float:
        value = self.option(key)
        if value is None:
            return default
        try:
            return float(value)
        except ValueError:
            raise DeviceError(f"device spec {self.text!r}: option {key}={value!r} must be a number") from None

    def int_option(self, key: str, default: int | None) -> int | None:
        value = self.option(key)
        if value is None:
            return default
        try:
            return int(value)
        except ValueError:
            raise DeviceError(f"device spec {self.text!r}: option {key}={value!r} must be an integer") from None

    def flag(self, key: str) -> bool:
        value = self.option(key)
        if value is None:
            return False
        if value.lower() in ("1", "true", "yes", "on", ""):
            return True
        if value.lower() in ("0", "false", "no", "off"):
            return False
        raise DeviceError(f"device spec {self.text!r}: option {key}={value!r} must be 1 or 0")

    def check_options(self, allowed: tuple[str, ...]) -> None:
        unknown = [k for k, _ in self.options if k not in allowed]
        if unknown:
            raise DeviceError(f"device spec {self.text!r}: unknown option {unknown[0]!r} for {self.kind}; "
                              f"options are {', '.join(allowed) or 'none'}")


Factory = Callable[[DeviceSpec, "str | None", "DeviceConfig | None"], Device]


@dataclass(frozen=True)
class KindInfo:
    factory: Factory
    summary: str  # one line for help texts
    options: tuple[str, ...]


DEVICE_FACTORIES: dict[str, KindInfo] = {}


def register_kind(kind: str, factory: Factory, summary: str, options: tuple[str, ...] = ()) -> None:
    """Add (or replace) a device kind."""
    DEVICE_FACTORIES[kind] = KindInfo(factory, summary, options)


def parse_spec(text: str) -> DeviceSpec:
    """Split a spec string (see the module docstring); raises ``DeviceError`` with the fix."""
    raw = text.strip()
    if not raw:
        raise DeviceError("empty device spec; examples: witmotion:/dev/ttyUSB0@115200, line:COM4, dot:ADDRESS, sim")
    kind, _, rest = raw.partition(":")
    kind = kind.strip().lower()
    if kind not in DEVICE_FACTORIES and "file" in DEVICE_FACTORIES and Path(raw).exists():
        kind, rest = "file", raw  # a bare path to a recording
    if kind not in DEVICE_FACTORIES:
        raise DeviceError(f"device spec {raw!r}: unknown kind {kind!r}; kinds are {', '.join(DEVICE_FACTORIES)}")
    options: list[tuple[str, str]] = []
    if "?" in rest:
        rest, _, query = rest.rpartition("?")
        for part in filter(None, query.split("&")):
            key, _, value = part.partition("=")
            options.append((key.strip().lower(), value.strip()))
    baud = None
    if kind in SERIAL_KINDS:
        head, sep, tail = rest.rpartition("@")
        if sep:
            if not tail.isdigit():
                raise DeviceError(f"device spec {raw!r}: baud rate {tail!r} after '@' must be a number (e.g. @115200)")
            rest, baud = head, int(tail)
        else:
            baud = DEFAULT_BAUD[kind]
        if not rest:
            raise DeviceError(f"device spec {raw!r}: {kind} needs a serial port, e.g. {kind}:/dev/ttyUSB0 or {kind}:COM3; "
                              "`vimcan devices` lists the ports")
    elif kind in ("witmotion-ble", "dot", "file") and not rest:
        what = "a recording's path" if kind == "file" else "a BLE address (`vimcan devices --ble` lists them)"
        raise DeviceError(f"device spec {raw!r}: {kind} needs {what}")
    spec = DeviceSpec(kind=kind, address=rest, baud=baud, options=tuple(options), text=raw)
    spec.check_options(DEVICE_FACTORIES[kind].options)
    return spec


def create_device(spec: str | DeviceSpec, device_id: str | None = None, config: DeviceConfig | None = None) -> Device:
    """Build the (not yet started) driver a spec names."""
    if isinstance(spec, str):
        spec = parse_spec(spec)
    return DEVICE_FACTORIES[spec.kind].factory(spec, device_id, config)


def _import(module: str, name: str, what: str, fix: str) -> type:
    try:
        return getattr(importlib.import_module(module), name)
    except ImportError as exc:
        raise DeviceError(f"{what} is not available ({module}.{name}: {exc}); {fix}") from exc
    except AttributeError as exc:
        raise DeviceError(f"{what} is not available: {module} has no {name}; {fix}") from exc


# ------------------------------------------------------------------ the built-in kinds
def _witmotion(spec: DeviceSpec, device_id: str | None, config: DeviceConfig | None) -> Device:
    from sensors.drivers.witmotion_serial import WitMotionSerialDevice, WitMotionSetup

    rate = spec.option("rate")
    setup = WitMotionSetup(rate_hz=None if rate is None else spec.float_option("rate", 0.0),
                           enable_quaternion=spec.flag("quat"), enable_time=spec.flag("time"), save=spec.flag("save"),
                           baud=spec.int_option("baud", None))
    if setup.baud is not None:
        from sensors.protocols.witmotion import baud_command

        baud_command(setup.baud)
    if setup.rate_hz is not None:
        from sensors.protocols.witmotion import rate_command

        rate_command(setup.rate_hz)  # validates now, not in the device thread
    return WitMotionSerialDevice(spec.address, spec.baud or DEFAULT_BAUD["witmotion"], device_id=device_id,
                                 setup=setup, config=config)


def _line(spec: DeviceSpec, device_id: str | None, config: DeviceConfig | None) -> Device:
    from sensors.drivers.line_serial import LineBoardImu, LineSerialDevice

    baud = spec.baud or DEFAULT_BAUD["line"]
    sensor = spec.int_option("sensor", None)
    if sensor is None:  # the board's only (or first) IMU, port owned by this device
        return LineSerialDevice(spec.address, baud, device_id=device_id, config=config)
    return LineBoardImu(spec.address, baud, sensor=sensor, device_id=device_id, config=config)


_BLE_FIX = "install the BLE support with `pip install bleak` (it is in the project's dependencies)"


def _witmotion_ble(spec: DeviceSpec, device_id: str | None, config: DeviceConfig | None) -> Device:
    cls = _import("sensors.drivers.ble_witmotion", "WitMotionBleDevice", "the WitMotion BLE driver", _BLE_FIX)
    cfg_cls = _import("sensors.drivers.ble_witmotion", "WitMotionBleConfig", "the WitMotion BLE driver", _BLE_FIX)
    kwargs = {}
    if spec.option("rate") is not None:
        kwargs["rate_hz"] = spec.float_option("rate", 50.0)
    if spec.flag("save"):
        kwargs["save"] = True
    return cls(spec.address, wit_config=cfg_cls(**kwargs), device_id=device_id, config=config)


def _dot(spec: DeviceSpec, device_id: str | None, config: DeviceConfig | None) -> Device:
    cls = _import("sensors.drivers.movella_dot", "MovellaDotDevice", "the Movella DOT driver", _BLE_FIX)
    cfg_cls = _import("sensors.drivers.movella_dot", "MovellaDotConfig", "the Movella DOT driver", _BLE_FIX)
    kwargs = {}
    if spec.option("rate") is not None:
        kwargs["output_rate_hz"] = spec.int_option("rate", 60)
    if spec.flag("heading_reset"):
        kwargs["heading_reset_on_connect"] = True
    return cls(spec.address, dot_config=cfg_cls(**kwargs), device_id=device_id, config=config)


def _sim(spec: DeviceSpec, device_id: str | None, config: DeviceConfig | None) -> Device:
    fix = "the simulated devices live in sensors/simulated.py"
    cls = _import("sensors.simulated", "SimulatedImu", "the simulated IMU", fix)
    cfg_cls = _import("sensors.simulated", "SimImuConfig", "the simulated IMU", fix)
    performer_cls = _import("vimcan_core.performer", "Performer", "the simulated performer", fix)
    from vimcan_core.skeleton import ImuSite

    site_name = (spec.address or "pelvis").strip().lower()
    site = ImuSite.from_name(site_name)
    if site is None:
        raise DeviceError(f"device spec {spec.text!r}: unknown IMU site {site_name!r}; sites are "
                          f"{', '.join(s.name.lower() for s in ImuSite)}")
    seed = spec.int_option("seed", 0) or 0
    kwargs = dict(rate_hz=spec.float_option("rate", 60.0), drop_rate=spec.float_option("drop", 0.0),
                  jitter_s=spec.float_option("jitter", 0.0), orientation_noise_deg=spec.float_option("noise", 0.0),
                  seed=seed)
    if config is not None:
        kwargs["device"] = config
    try:
        sim_config = cfg_cls(**kwargs)
    except ValueError as exc:
        raise DeviceError(f"device spec {spec.text!r}: {exc}") from exc
    return cls(device_id or f"sim:{site_name}", performer_cls(seed=seed), site, sim_config)


def _file(spec: DeviceSpec, device_id: str | None, config: DeviceConfig | None) -> Device:
    from sensors.files.replay import FileReplayDevice

    speed = spec.float_option("speed", 1.0)
    if speed < 0:
        raise DeviceError(f"device spec {spec.text!r}: speed must be >= 0 (0 = as fast as possible)")
    return FileReplayDevice(spec.address, speed=speed, loop=spec.flag("loop"), device_id=device_id, config=config)


def _camera(spec: DeviceSpec, device_id: str | None, config: DeviceConfig | None) -> Device:
    fix = "the webcam driver lives in sensors/camera/ and needs opencv-contrib-python and mediapipe"
    cls = _import("sensors.camera.camera_device", "CameraDevice", "the webcam", fix)
    cfg_cls = _import("sensors.camera.webcam", "WebcamConfig", "the webcam", fix)
    mode_cls = _import("sensors.camera.webcam", "PlaybackMode", "the webcam", fix)
    width, height = spec.int_option("width", 640), spec.int_option("height", 480)
    kwargs = dict(source=spec.address or 0, width_px=width, height_px=height, fps=spec.float_option("fps", 30.0),
                  loop=spec.flag("loop"), hfov_deg=spec.float_option("hfov", 60.0))
    if spec.flag("fast"):
        kwargs["playback"] = mode_cls.FAST
    try:
        webcam = cfg_cls(**kwargs)
    except Exception as exc:
        raise DeviceError(f"device spec {spec.text!r}: {exc}") from exc
    return cls(webcam=webcam, device_id=device_id, config=config)


register_kind("witmotion", _witmotion, "WitMotion serial IMU (WT901, HWT905...)", ("rate", "quat", "time", "save", "baud"))
register_kind("witmotion-ble", _witmotion_ble, "WitMotion BLE 5.0 IMU (BWT901BLE...)", ("rate", "save"))
register_kind("dot", _dot, "Movella DOT over BLE", ("rate", "heading_reset"))
register_kind("line", _line, "DIY board speaking the VIMCAN line protocol", ("sensor",))
register_kind("sim", _sim, "simulated IMU on the procedural performer", ("rate", "seed", "drop", "jitter", "noise"))
register_kind("camera", _camera, "webcam, video file or stream with MediaPipe keypoints (camera:0, camera:clip.mp4)",
              ("width", "height", "fps", "loop", "fast", "hfov"))
register_kind("file", _file, "replay of a recorded file (DOT CSV, x-IMU3, MT Manager, monitor CSV)", ("speed", "loop"))
