"""The studio's settings, persisted between runs with ``QSettings``.

The values live in one frozen dataclass (``StudioSettings``); ``load_settings`` and
``save_settings`` convert to and from ``QSettings`` keys (``group/field``). Unknown or
malformed stored values fall back to the defaults with a warning, so a settings file from an
older version never stops the studio from starting.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path

from PySide6 import QtCore, QtWidgets

log = logging.getLogger(__name__)

ORGANISATION = "VIMCAN"
APPLICATION = "VIMCAN Studio"


class Units(Enum):
    """Length units for export and display."""

    METRES = "m"
    CENTIMETRES = "cm"


class PoseSourceChoice(Enum):
    """What drives the skeleton: the VIMCAN model when weights are present, or the simulation's truth."""

    AUTO = "auto"  # the model when its weights are found, else ground truth (demo)
    MODEL = "model"
    GROUND_TRUTH = "ground_truth"


@dataclass(frozen=True)
class BvhOptions:
    rotation_order: str = "ZXY"  # Euler order of the joint channels (``vimcan_core.bvh.writer.RotationOrder``)
    units: Units = Units.CENTIMETRES  # most BVH tools (Blender, MotionBuilder) expect centimetres
    imu_twist: bool = True  # forearm, shin, head and pelvis roll from the IMUs

    def writer_config(self):
        """The ``BvhWriterConfig`` these options stand for (an unknown order falls back to ZXY)."""
        from vimcan_core.bvh.writer import BvhWriterConfig, LengthUnit, RotationOrder

        try:
            order = RotationOrder(self.rotation_order.upper())
        except ValueError:
            log.warning("unknown BVH rotation order %r in the settings; using ZXY", self.rotation_order)
            order = RotationOrder.ZXY
        return BvhWriterConfig(order=order, units=LengthUnit(self.units.value), imu_twist=self.imu_twist)


@dataclass(frozen=True)
class StudioSettings:
    devices: tuple[str, ...] = ("sim",)  # device specs to connect at start (``vimcan devices`` lists them)
    sites: tuple[str, ...] = ()  # the IMU site of each entry of ``devices`` ("left_forearm"...); () = in site order
    camera: str = "sim"  # camera spec: "sim", a webcam index ("0"), a video file or a URL
    model_path: str = ""  # streaming checkpoint; empty = the shipped resources/models/vimcan-t-streaming.pt
    pose_source: PoseSourceChoice = PoseSourceChoice.AUTO
    units: Units = Units.METRES
    bvh: BvhOptions = field(default_factory=BvhOptions)
    last_profile: str = ""  # calibration profile name selected last time
    takes_dir: str = str(Path.home() / "VIMCAN" / "takes")  # where takes are recorded
    record_countdown_s: int = 0  # seconds of countdown before recording starts (0 = none)
    follow_performer: bool = False  # the 3D view keeps the performer centred


def _convert(value: object, default: object) -> object:
    """A stored QSettings value (often a string under INI) -> the type of ``default``."""
    if isinstance(default, Enum):
        return type(default)(value)
    if isinstance(default, bool):
        if isinstance(value, str):
            return value.strip().lower() in ("1", "true", "yes", "on")
        return bool(value)
    if isinstance(default, int):
        return int(value)
    if isinstance(default, tuple):
        if isinstance(value, str):
            return tuple(v for v in value.split(",") if v) if value else ()
        return tuple(str(v) for v in value)
    return str(value)


def _store(value: object) -> object:
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, tuple):
        return ",".join(value)
    return value


def _load_dataclass(cls: type, qs: QtCore.QSettings, group: str) -> object:
    defaults = cls()
    kwargs = {}
    for f in dataclasses.fields(cls):
        default = getattr(defaults, f.name)
        key = f"{group}/{f.name}" if group else f.name
        if dataclasses.is_dataclass(default):
            kwargs[f.name] = _load_dataclass(type(default), qs, key)
            continue
        if not qs.contains(key):
            continue
        try:
            kwargs[f.name] = _convert(qs.value(key), default)
        except (ValueError, TypeError) as exc:
            log.warning("settings %s: ignoring stored value %r (%s); using %r", key, qs.value(key), exc, default)
    return cls(**kwargs)


def _save_dataclass(obj: object, qs: QtCore.QSettings, group: str) -> None:
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        key = f"{group}/{f.name}" if group else f.name
        if dataclasses.is_dataclass(value):
            _save_dataclass(value, qs, key)
        else:
            qs.setValue(key, _store(value))


def open_qsettings(path: Path | None = None) -> QtCore.QSettings:
    """The user's settings (platform default location), or an INI file at ``path`` (tests, portable use)."""
    if path is not None:
        return QtCore.QSettings(str(path), QtCore.QSettings.Format.IniFormat)
    return QtCore.QSettings(ORGANISATION, APPLICATION)


def load_settings(qs: QtCore.QSettings | None = None) -> StudioSettings:
    return _load_dataclass(StudioSettings, qs or open_qsettings(), "studio")  # type: ignore[return-value]


def save_settings(settings: StudioSettings, qs: QtCore.QSettings | None = None) -> None:
    qs = qs or open_qsettings()
    _save_dataclass(settings, qs, "studio")
    qs.sync()


class SettingsDialog(QtWidgets.QDialog):
    """File > Preferences: edit the persisted settings; ``result_settings()`` after ``accept``.

    Changes of the model or pose source apply at the next start (the window says so)."""

    def __init__(self, settings: StudioSettings, parent: QtWidgets.QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle("Preferences")
        self._base = settings
        self.devices = QtWidgets.QLineEdit(", ".join(settings.devices))
        self.devices.setToolTip("IMU device specs, comma-separated (see `vimcan devices`); 'sim' for the demo")
        self.camera = QtWidgets.QLineEdit(settings.camera)
        self.camera.setToolTip("webcam index (0), video file or URL; 'sim' for the demo, empty for none")
        self.model_path = QtWidgets.QLineEdit(settings.model_path)
        self.model_path.setPlaceholderText("shipped: resources/models/vimcan-t-streaming.pt")
        self.pose_source = QtWidgets.QComboBox()
        for choice, text in ((PoseSourceChoice.AUTO, "Model when its weights are found, else ground truth"),
                             (PoseSourceChoice.MODEL, "Model only"),
                             (PoseSourceChoice.GROUND_TRUTH, "Simulation ground truth (demo)")):
            self.pose_source.addItem(text, choice)
        self.pose_source.setCurrentIndex(self.pose_source.findData(settings.pose_source))
        self.units = QtWidgets.QComboBox()
        for unit in Units:
            self.units.addItem(unit.value, unit)
        self.units.setCurrentIndex(self.units.findData(settings.units))
        self.bvh_order = QtWidgets.QComboBox()
        self.bvh_order.addItems(["ZXY", "ZYX", "XYZ", "XZY", "YXZ", "YZX"])
        self.bvh_order.setCurrentText(settings.bvh.rotation_order.upper())
        self.bvh_units = QtWidgets.QComboBox()
        for unit in Units:
            self.bvh_units.addItem(unit.value, unit)
        self.bvh_units.setCurrentIndex(self.bvh_units.findData(settings.bvh.units))
        self.bvh_twist = QtWidgets.QCheckBox("forearm, shin, head and pelvis roll from the IMUs")
        self.bvh_twist.setChecked(settings.bvh.imu_twist)
        self.takes_dir = QtWidgets.QLineEdit(settings.takes_dir)
        self.countdown = QtWidgets.QSpinBox()
        self.countdown.setRange(0, 10)
        self.countdown.setSuffix(" s")
        self.countdown.setValue(settings.record_countdown_s)

        form = QtWidgets.QFormLayout()
        form.addRow("IMU devices", self.devices)
        form.addRow("Camera", self.camera)
        form.addRow("Model weights", self.model_path)
        form.addRow("Pose source", self.pose_source)
        form.addRow("Units", self.units)
        form.addRow("BVH rotation order", self.bvh_order)
        form.addRow("BVH units", self.bvh_units)
        form.addRow("BVH twist", self.bvh_twist)
        form.addRow("Takes folder", self.takes_dir)
        form.addRow("Record countdown", self.countdown)
        note = QtWidgets.QLabel("Devices, camera, model and pose source apply at the next start.")
        note.setStyleSheet("color: #94a3b8;")
        buttons = QtWidgets.QDialogButtonBox(QtWidgets.QDialogButtonBox.StandardButton.Ok
                                             | QtWidgets.QDialogButtonBox.StandardButton.Cancel)
        buttons.accepted.connect(self.accept)
        buttons.rejected.connect(self.reject)
        layout = QtWidgets.QVBoxLayout(self)
        layout.addLayout(form)
        layout.addWidget(note)
        layout.addWidget(buttons)

    def result_settings(self) -> StudioSettings:
        """The settings as edited (unchanged fields kept)."""
        devices = tuple(d.strip() for d in self.devices.text().split(",") if d.strip())
        return dataclasses.replace(
            self._base,
            devices=devices or self._base.devices,
            sites=self._base.sites if (devices or self._base.devices) == self._base.devices else (),
            camera=self.camera.text().strip(),
            model_path=self.model_path.text().strip(),
            pose_source=self.pose_source.currentData(),
            units=self.units.currentData(),
            bvh=BvhOptions(rotation_order=self.bvh_order.currentText(), units=self.bvh_units.currentData(),
                           imu_twist=self.bvh_twist.isChecked()),
            takes_dir=self.takes_dir.text().strip() or self._base.takes_dir,
            record_countdown_s=int(self.countdown.value()),
        )
