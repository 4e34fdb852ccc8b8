"""The studio window: composes the views and panels around one capture pipeline.

Data flow: pipeline threads -> bounded subscription queue -> ``PipelineBridge`` (UI thread, QTimer)
-> ``_on_latest`` -> views. Panels refresh from a slower timer. The window holds no capture logic:
the pipeline (``sensors``) synchronises, infers and records; this file wires, labels and lays out.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, fields, replace
from enum import Enum
from pathlib import Path

import numpy as np
from PySide6 import QtCore, QtGui, QtWidgets

from app.panels.devices_panel import DevicesPanel
from app.panels.log_view import LogView
from app.panels.record_panel import RecordPanel
from app.panels.status_panel import InferenceStatus, InputHealth, StatusPanel, input_health
from app.panels.takes_browser import TakesBrowser, default_export
from app.qt_bridge import PipelineBridge
from app.settings import StudioSettings, save_settings
from app.views.imu_plots import ImuPlots
from app.views.keypoints_view import KeypointsView
from app.views.palette import ERROR_RGB, OK_RGB, WARN_RGB, apply_dark_theme, stacked, titled_box
from app.views.skeleton_view import SkeletonView, place_on_floor
from vimcan_core.errors import VimcanError

log = logging.getLogger(__name__)

SUBSCRIPTION_SIZE = 16  # frames the UI may lag behind (0.5 s) before the pipeline drops its oldest (never latency)
PANEL_REFRESH_MS = 250
PLOT_REFRESH_MS = 100
ICONS = Path(__file__).resolve().parents[1] / "resources" / "icons"
FROZEN_AFTER_S = 1.0  # no pose for this long -> the pose is frozen and the reason shown
#: why the demo refuses to add or remove devices (the devices panel's hint and its message after Add)
DEMO_RIG_FIXED = "the demo's simulated rig is fixed: start the studio with --live to add real devices"


def _same_camera(a, b) -> bool:
    """True when two ``PinholeCamera``s (or Nones) have equal intrinsics and pose."""
    if a is None or b is None:
        return a is b
    return all(np.array_equal(getattr(a, f.name), getattr(b, f.name)) for f in fields(a))


class ViewMode(Enum):
    LIVE = "live"
    PLAYBACK = "playback"


@dataclass(frozen=True)
class StudioOptions:
    demo: bool = True  # simulated performer and sensors
    subscription_size: int = SUBSCRIPTION_SIZE


class MainWindow(QtWidgets.QMainWindow):
    """The studio. ``pipeline`` is a started-or-not ``CapturePipeline``; in demo mode one is built."""

    def __init__(self, options: StudioOptions = StudioOptions(), settings: StudioSettings | None = None,
                 qsettings: QtCore.QSettings | None = None, pipeline=None,
                 parent: QtWidgets.QWidget | None = None) -> None:
        super().__init__(parent)
        qapp = QtWidgets.QApplication.instance()
        if qapp is not None and not qapp.styleSheet():
            apply_dark_theme(qapp)
        self.options = options
        self.settings = settings or StudioSettings()
        self._qsettings = qsettings
        self.mode = ViewMode.LIVE
        self.pipeline = pipeline if pipeline is not None else self._build_pipeline()
        self._last_pose = None
        self._last_synced = None
        self._last_pose_time = None
        self._started = False
        self._docks: dict[str, QtWidgets.QDockWidget] = {}
        self._model_text: tuple[object, str] = (None, "–")
        self.setWindowTitle("VIMCAN Studio" + (" — demo" if options.demo else ""))
        icon = ICONS / "vimcan.svg"
        if icon.exists():
            self.setWindowIcon(QtGui.QIcon(str(icon)))

        # ---- views
        self.skeleton_view = SkeletonView()
        self.skeleton_view.set_follow(self.settings.follow_performer)
        self.keypoints_view = KeypointsView()
        self.imu_plots = ImuPlots()
        right = QtWidgets.QSplitter(QtCore.Qt.Orientation.Vertical)
        right.addWidget(titled_box("Camera · 2D keypoints", self.keypoints_view))
        right.addWidget(titled_box("IMU orientations", self.imu_plots))
        right.setSizes([380, 420])
        centre = QtWidgets.QSplitter(QtCore.Qt.Orientation.Horizontal)
        centre.addWidget(titled_box("3D skeleton", self.skeleton_view))
        centre.addWidget(right)
        centre.setSizes([900, 480])
        self.setCentralWidget(centre)

        # ---- panels
        from app.live import discover_devices

        self.devices_panel = DevicesPanel(self._devices, discover=discover_devices, site_of=self._site_of)
        self.devices_panel.use_specs.connect(self._use_found_specs)
        self.devices_panel.add_requested.connect(self.add_device)
        self.devices_panel.remove_requested.connect(lambda devices: [self.remove_device(d) for d in devices])
        if options.demo:
            self.devices_panel.set_adding_enabled(False, DEMO_RIG_FIXED)
        self.status_panel = StatusPanel()
        self.record_panel = RecordPanel(self._make_recorder())
        self.record_panel.countdown_spin.setValue(self.settings.record_countdown_s)
        self.record_panel.stopped.connect(self._on_take_saved)
        self.takes_browser = TakesBrowser(
            Path(self.settings.takes_dir), export_fn=lambda folder: default_export(folder, self.settings.bvh.writer_config()))
        self.takes_browser.playback_started.connect(lambda: self._set_mode(ViewMode.PLAYBACK))
        self.takes_browser.playback_stopped.connect(lambda: self._set_mode(ViewMode.LIVE))
        self.takes_browser.pose.connect(self._on_playback_pose)
        self.log_view = LogView()
        self.log_view.install(logging.getLogger(), logging.INFO)
        self.calibration_label = QtWidgets.QLabel(self._calibration_text())
        self.calibration_label.setWordWrap(True)
        self.calibration_label.setContentsMargins(6, 0, 6, 6)

        self._dock("Devices", self.devices_panel, QtCore.Qt.DockWidgetArea.LeftDockWidgetArea)
        self._dock("Inference", stacked(self.status_panel, self.calibration_label),
                   QtCore.Qt.DockWidgetArea.LeftDockWidgetArea)
        self._dock("Record", self.record_panel, QtCore.Qt.DockWidgetArea.LeftDockWidgetArea)
        takes_dock = self._dock("Takes", self.takes_browser, QtCore.Qt.DockWidgetArea.BottomDockWidgetArea)
        log_dock = self._dock("Log", self.log_view, QtCore.Qt.DockWidgetArea.BottomDockWidgetArea)
        self.tabifyDockWidget(takes_dock, log_dock)
        takes_dock.raise_()
        self.resizeDocks([takes_dock], [170], QtCore.Qt.Orientation.Vertical)
        self.resizeDocks([self._docks["Devices"]], [640], QtCore.Qt.Orientation.Horizontal)
        self.resizeDocks([self._docks["Devices"], self._docks["Inference"], self._docks["Record"]], [280, 250, 150],
                         QtCore.Qt.Orientation.Vertical)

        self._build_actions()
        self.status_line = QtWidgets.QLabel("starting…")
        self.statusBar().addPermanentWidget(self.status_line, 1)

        # ---- data path
        self.bridge = PipelineBridge(None, parent=self)
        self.bridge.latest.connect(self._on_latest)
        self.bridge.frames.connect(self._on_frames)
        self._panel_timer = QtCore.QTimer(self)
        self._panel_timer.setInterval(PANEL_REFRESH_MS)
        self._panel_timer.timeout.connect(self._refresh_panels)
        self._plot_timer = QtCore.QTimer(self)
        self._plot_timer.setInterval(PLOT_REFRESH_MS)
        self._plot_timer.timeout.connect(self.imu_plots.refresh)
        self._update_view_camera()  # live: the profile loaded at start gives it

    # ------------------------------------------------------------------ construction helpers
    def _build_pipeline(self):
        from app.live import build_live_pipeline

        return build_live_pipeline(self.settings, demo=self.options.demo)

    def _make_recorder(self):
        from app.live import make_recorder

        return make_recorder(self.pipeline, Path(self.settings.takes_dir))

    def _dock(self, title: str, widget: QtWidgets.QWidget, area) -> QtWidgets.QDockWidget:
        dock = QtWidgets.QDockWidget(title, self)
        self._docks[title] = dock
        dock.setObjectName(f"dock_{title.lower()}")
        dock.setWidget(widget)
        dock.setFeatures(QtWidgets.QDockWidget.DockWidgetFeature.DockWidgetMovable
                         | QtWidgets.QDockWidget.DockWidgetFeature.DockWidgetFloatable)
        self.addDockWidget(area, dock)
        return dock

    def _build_actions(self) -> None:
        bar = self.addToolBar("Capture")
        bar.setObjectName("toolbar_capture")
        bar.setMovable(False)
        menu_file = self.menuBar().addMenu("&File")
        menu_capture = self.menuBar().addMenu("&Capture")
        menu_view = self.menuBar().addMenu("&View")

        self.action_record = QtGui.QAction("Record / Stop", self, shortcut=QtGui.QKeySequence("Ctrl+R"))
        self.action_record.triggered.connect(self.record_panel.toggle)
        self.action_heading = QtGui.QAction("Heading reset", self, shortcut=QtGui.QKeySequence("Ctrl+H"))
        self.action_heading.setToolTip("Stand straight, arms down, facing the camera, then press (Ctrl+H)")
        self.action_heading.triggered.connect(self.heading_reset)
        self.action_calibrate = QtGui.QAction("Calibrate…", self, shortcut=QtGui.QKeySequence("Ctrl+K"))
        self.action_calibrate.triggered.connect(lambda: self.open_calibration_wizard())
        self.action_connect_all = QtGui.QAction("Connect all", self)
        self.action_connect_all.triggered.connect(lambda: self.devices_panel.set_all_connected(True))
        self.action_follow = QtGui.QAction("Follow performer", self, checkable=True,
                                           shortcut=QtGui.QKeySequence("F"))
        self.action_follow.setChecked(self.settings.follow_performer)
        self.action_follow.toggled.connect(self._on_follow)
        self.action_reset_view = QtGui.QAction("Reset 3D view", self, shortcut=QtGui.QKeySequence("Ctrl+0"))
        self.action_reset_view.triggered.connect(self.skeleton_view.reset_view)
        self.action_open_takes = QtGui.QAction("Takes folder…", self)
        self.action_open_takes.triggered.connect(self._choose_takes_dir)
        self.action_preferences = QtGui.QAction("Preferences…", self, shortcut=QtGui.QKeySequence("Ctrl+,"))
        self.action_preferences.triggered.connect(self.edit_preferences)
        self.action_screenshot = QtGui.QAction("Save screenshot…", self)
        self.action_screenshot.triggered.connect(self._save_screenshot_dialog)
        self.action_quit = QtGui.QAction("Quit", self, shortcut=QtGui.QKeySequence.StandardKey.Quit)
        self.action_quit.triggered.connect(self.close)

        for action, icon in ((self.action_connect_all, "connect"), (self.action_calibrate, "calibrate"),
                             (self.action_heading, "heading_reset"), (self.action_record, "record"),
                             (self.action_follow, "follow")):
            path = ICONS / f"{icon}.svg"
            if path.exists():
                action.setIcon(QtGui.QIcon(str(path)))
        bar.setToolButtonStyle(QtCore.Qt.ToolButtonStyle.ToolButtonTextBesideIcon)
        for a in (self.action_connect_all, self.action_calibrate, self.action_heading, self.action_record):
            bar.addAction(a)
        bar.addSeparator()
        bar.addAction(self.action_follow)
        bar.addAction(self.action_reset_view)
        spacer = QtWidgets.QWidget()
        spacer.setSizePolicy(QtWidgets.QSizePolicy.Policy.Expanding, QtWidgets.QSizePolicy.Policy.Preferred)
        bar.addWidget(spacer)
        self.profile_box = QtWidgets.QComboBox()
        self.profile_box.setToolTip("Calibration profile")
        self.profile_box.setMinimumWidth(160)
        self._fill_profiles()
        self.profile_box.currentTextChanged.connect(self._on_profile)
        bar.addWidget(QtWidgets.QLabel("Profile "))
        bar.addWidget(self.profile_box)

        for a in (self.action_open_takes, self.action_preferences, self.action_screenshot, self.action_quit):
            menu_file.addAction(a)
        for a in (self.action_connect_all, self.action_calibrate, self.action_heading, self.action_record):
            menu_capture.addAction(a)
        for a in (self.action_follow, self.action_reset_view):
            menu_view.addAction(a)

    def _calibration_text(self) -> str:
        from app.live import current_calibration

        if current_calibration(self.pipeline) is None:
            if "ground truth" in str(getattr(self.pipeline.pose_source, "name", "")).lower():
                return "calibration: none (the simulation's ground truth needs none)"
            return "calibration: none: run the calibration wizard (Ctrl+K)"
        if self.options.demo:
            return "calibration: the demo rig's exact one (replace it with the wizard, Ctrl+K)"
        return f"calibration: {self.settings.last_profile or 'last saved profile'}"

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        """Start the pipeline and the UI timers (idempotent)."""
        if self._started:
            return
        self.bridge.set_subscription(self.pipeline.subscribe(self.options.subscription_size))
        self.pipeline.start()
        self.bridge.start()
        self._panel_timer.start()
        self._plot_timer.start()
        self._started = True
        log.info("studio started (%s)", "demo" if self.options.demo else "live devices")

    def shutdown(self) -> None:
        if self.record_panel.state.value != "idle":
            self.record_panel.stop()
        self.takes_browser.stop_playback()
        self.bridge.stop()
        self._panel_timer.stop()
        self._plot_timer.stop()
        if self._started:
            self.pipeline.stop()
            self._started = False
        self.log_view.uninstall()
        self._save_settings()

    def closeEvent(self, event: QtGui.QCloseEvent) -> None:
        self.shutdown()
        super().closeEvent(event)

    # ------------------------------------------------------------------ data
    def _devices(self):
        return list(self.pipeline.devices()) if self.pipeline is not None else []

    def _site_of(self, device):
        imus = getattr(self.pipeline, "imus", None) or {}
        return next((site for site, d in imus.items() if d is device), None)

    # ------------------------------------------------------------------ devices at run time
    def add_device(self, spec: str, site=None):
        """Connect the device ``spec`` names now (an IMU at ``site``, None: the next free one), as the
        devices panel's Add button does; remembered in the settings. Returns it, or None (the reason is
        shown in the panel and the log)."""
        from app.live import add_device, device_settings
        from sensors.device import DeviceKind

        if self.options.demo:
            self.devices_panel.show_message(DEMO_RIG_FIXED, error=True)
            return None
        if self.record_panel.state.value != "idle":
            self.devices_panel.show_message("stop the recording before changing the devices", error=True)
            return None
        try:
            device = add_device(self.pipeline, spec, site)
        except VimcanError as exc:
            log.error("could not add %s: %s", spec, exc)
            self.devices_panel.show_message(str(exc), error=True)
            return None
        where = "" if device.kind == DeviceKind.CAMERA else f" at the {self._site_text(self._site_of(device))} site"
        self.devices_panel.show_message(f"added {device.device_id}{where}")
        self.devices_panel.spec_edit.clear()
        self._devices_changed(device_settings(self.pipeline, self.settings))
        return device

    def remove_device(self, device) -> None:
        """Disconnect ``device`` and take it out of the studio (the panel's Remove button)."""
        from app.live import device_settings, remove_device

        if self.options.demo or self.record_panel.state.value != "idle":
            self.devices_panel.show_message("devices cannot be removed " + (
                "from the demo rig" if self.options.demo else "while recording"), error=True)
            return
        remove_device(self.pipeline, device)
        self.devices_panel.show_message(f"removed {device.device_id}")
        self._devices_changed(device_settings(self.pipeline, self.settings))

    def _use_found_specs(self, specs: list) -> None:
        """"Use found sensors": connect them now (live), or remember them for the next start (demo)."""
        if self.options.demo:
            self.apply_settings(replace(self.settings, devices=tuple(specs), sites=()))
            return
        for spec in specs:
            self.add_device(spec)

    def _devices_changed(self, settings: StudioSettings) -> None:
        self.settings = settings
        if self._qsettings is not None:
            save_settings(self.settings, self._qsettings)
        self.devices_panel.refresh()
        self._update_view_camera()

    @staticmethod
    def _site_text(site) -> str:
        from vimcan_core.skeleton import IMU_SITE_NAMES

        return "no" if site is None else IMU_SITE_NAMES[site].replace("_", " ")

    def _camera_model(self):
        """The camera's ``PinholeCamera``, or None. Demo: the rig's virtual camera. Live: the calibrated
        camera the pose stage holds (from the profile loaded at start or chosen in the toolbar, or from
        the wizard), else the camera device's default model (None until the camera has connected).
        A calibrated camera for another image size than the device delivers does not describe these
        frames: the device's model is used then."""
        from app.live import camera_model_of
        from vimcan_core.camera import PinholeCamera

        device_camera = camera_model_of(self.pipeline)
        if self.options.demo:
            return device_camera
        calibrated = getattr(self.pipeline.pose_source, "camera", None)
        if not isinstance(calibrated, PinholeCamera):
            return device_camera
        if device_camera is not None and (calibrated.width_px, calibrated.height_px) != (
                device_camera.width_px, device_camera.height_px):
            return device_camera
        return calibrated

    def _view_camera(self):
        """The camera the 3D view draws: ``_camera_model()``, turned (live) to the loaded calibration's
        camera-to-world rotation, since the skeleton is drawn in that calibration's world. Its position
        is the model's own (a profile stores no camera position)."""
        from app.live import current_calibration
        from vimcan_core.rotations import quat_conj

        camera = self._camera_model()
        if camera is None or self.options.demo:
            return camera  # the demo's camera is exact and its calibration is made from it
        calibration = current_calibration(self.pipeline)
        if calibration is None:
            return camera
        q_cam_from_world = quat_conj(np.asarray(calibration.quat_world_from_camera, dtype=np.float64))
        return replace(camera, quat_cam_from_world=tuple(float(x) for x in q_cam_from_world))

    def _update_view_camera(self) -> None:
        """Show ``_view_camera()`` in the 3D view when it changed (a profile, the wizard, a camera that
        connected and so has a model); called on those events and with the panels' refresh."""
        camera = self._view_camera()
        if not _same_camera(camera, self.skeleton_view.camera):
            self.skeleton_view.set_camera(camera)

    @QtCore.Slot(list)
    def _on_frames(self, frames: list) -> None:
        for synced, _pose in frames:
            self.imu_plots.append(synced.time_s, synced.imu_quat_wxyz, synced.imu_present)

    @QtCore.Slot(object, object)
    def _on_latest(self, synced, pose) -> None:
        self._last_pose, self._last_synced = pose, synced
        self._last_pose_time = time.monotonic()
        if self.mode == ViewMode.LIVE:
            health, detail = input_health(pose, synced)
            if health != InputHealth.FROZEN:  # frozen: the last drawn pose stays
                self.skeleton_view.set_pose(place_on_floor(pose.joints_world_m, pose.root_world_m),
                                            dimmed=health == InputHealth.DEGRADED and "IMUs (lower" in detail)
        self.keypoints_view.set_frame(synced.keypoints_px, synced.keypoint_confidence, synced.image_size_px,
                                      synced.image_bgr)

    @QtCore.Slot(object)
    def _on_playback_pose(self, joints_world_m: np.ndarray) -> None:
        if self.mode == ViewMode.PLAYBACK:
            self.skeleton_view.set_pose(joints_world_m)

    def _set_mode(self, mode: ViewMode) -> None:
        self.mode = mode
        if mode == ViewMode.PLAYBACK:
            self.skeleton_view.set_overlay_text("PLAYBACK: " + (self.takes_browser.current_name or ""), OK_RGB)
        else:
            self._update_overlay()

    def _refresh_panels(self) -> None:
        self.devices_panel.refresh()
        self._update_view_camera()
        status = self.inference_status()
        self.status_panel.show_status(status)
        self.status_line.setText(self.status_panel.summary())
        if self.mode == ViewMode.LIVE:
            self._update_overlay()
        recorder = self.record_panel.recorder
        error = getattr(recorder, "error", None) if recorder is not None else None
        if error and self.record_panel.state.value == "recording":  # the take stopped itself (disk full...)
            self.record_panel.stop()
            self.record_panel.state_label.setText(f"recording stopped: {error}")
            self.statusBar().showMessage(f"Recording stopped: {error}", 15000)

    def inference_status(self) -> InferenceStatus:
        """Gathers the numbers shown in the inference panel (bridge timing + pipeline counters)."""
        b = self.bridge.stats()
        pstats = self.pipeline.stats() if self.pipeline is not None else None
        dropped = int(pstats.frames_dropped) if pstats is not None else 0
        from app.live import backend_of, body_size_text, model_of

        backend = backend_of(self.pipeline)
        source = self.pipeline.pose_source
        if self._model_text[0] is not source:  # counting parameters once per pose source
            self._model_text = (source, model_of(self.pipeline, self.settings))
        model = self._model_text[1]
        body_size = body_size_text(source)
        pose = self._last_pose
        if pose is None:
            return InferenceStatus(backend=backend, model=model, dropped_frames=dropped, body_size=body_size)
        health, detail = input_health(pose, self._last_synced)
        source_says = getattr(self.pipeline.pose_source, "status_message", None)  # the model stage's own words
        if health != InputHealth.ALL and source_says:
            detail = f"{detail} ({source_says})" if health != InputHealth.FROZEN else source_says
        age = time.monotonic() - (self._last_pose_time or 0.0)
        if age > FROZEN_AFTER_S and self._started:
            health, detail = InputHealth.FROZEN, f"no pose for {age:.0f} s: pose frozen (are the devices connected?)"
        is_model = "ground truth" not in pose.source.lower()
        return InferenceStatus(
            body_size=body_size,
            source=pose.source, is_model=is_model, backend=backend, model=model, poses_per_s=b.poses_per_s,
            latency_median_ms=b.latency_median_ms, latency_p95_ms=b.latency_p95_ms, dropped_frames=dropped,
            ui_skipped_frames=b.gaps,
            health=health, health_detail=detail, confidence=float(pose.confidence),
        )

    def _update_overlay(self) -> None:
        s = self.status_panel.status
        if self._last_pose is None:
            self.skeleton_view.set_overlay_text("waiting for poses…", WARN_RGB)
        elif s.health == InputHealth.FROZEN:
            self.skeleton_view.set_overlay_text("FROZEN: " + s.health_detail, ERROR_RGB)
        else:
            prefix = "" if s.is_model else "NOT THE MODEL: "
            self.skeleton_view.set_overlay_text(f"{prefix}{s.source}", OK_RGB if s.is_model else WARN_RGB)

    # ------------------------------------------------------------------ actions
    def heading_reset(self) -> bool:
        """Correct the IMU headings with the performer standing still (``vimcan_core.calibration.heading_reset``)."""
        from app.live import apply_heading_reset

        ok, message = apply_heading_reset(self.pipeline, self._last_synced)
        (log.info if ok else log.warning)("heading reset: %s", message)
        self.statusBar().showMessage(f"Heading reset: {message}", 5000)
        return ok

    def open_calibration_wizard(self, config=None):
        """Open the calibration wizard (modeless) on the pipeline's devices; ``config``: a ``WizardConfig``."""
        try:
            from app.calibration_wizard import CalibrationWizard
        except ImportError as exc:
            log.error("the calibration wizard is not available: %s", exc)
            return None
        wizard = CalibrationWizard(self.pipeline, self._camera_model(), self, config=config)
        wizard.calibrated.connect(
            lambda calibration, path: self._on_calibrated(calibration, path, wizard.assignment, wizard.profile))
        rig = getattr(self.pipeline, "demo", None)
        if rig is not None and hasattr(rig, "follow_prompt"):  # the demo performer does what the wizard asks
            wizard.prompted.connect(rig.follow_prompt)
        wizard.show()  # modeless: the live view keeps running behind it
        self.wizard = wizard
        return wizard

    def _on_calibrated(self, calibration, profile_path, assignment=None, profile=None) -> None:
        from app.live import assign_sites, device_settings, set_calibration, set_performer_height

        if assignment and not self.options.demo and assign_sites(self.pipeline, assignment):
            self._devices_changed(device_settings(self.pipeline, self.settings))  # the wizard's sites from now on
        used = set_calibration(self.pipeline, calibration, self._camera_model())
        if profile is not None and (profile.performer_height_m is not None or not self.options.demo):
            set_performer_height(self.pipeline, profile.performer_height_m)  # the demo keeps its performer's own
        self._update_view_camera()
        name = Path(profile_path).stem if profile_path else "unsaved"
        self.calibration_label.setText(f"calibration: {name}" + ("" if used else " (not used by the ground truth)"))
        self._fill_profiles()
        if profile_path:
            self.profile_box.blockSignals(True)
            self.profile_box.setCurrentText(Path(profile_path).stem)
            self.profile_box.blockSignals(False)
            self.settings = replace(self.settings, last_profile=Path(profile_path).stem)
        recorder = self.record_panel.recorder
        if recorder is not None:
            recorder.profile_name = name if profile_path else None
        log.info("calibration applied: %s", name)

    def _fill_profiles(self) -> None:
        from app.live import list_profiles

        names = list_profiles()
        self.profile_box.blockSignals(True)
        self.profile_box.clear()
        self.profile_box.addItem("(none)")
        self.profile_box.addItems(names)
        if self.settings.last_profile in names:
            self.profile_box.setCurrentText(self.settings.last_profile)
        self.profile_box.blockSignals(False)

    def _on_profile(self, name: str) -> None:
        from app.live import load_profile_into

        name = "" if name == "(none)" else name
        self.settings = replace(self.settings, last_profile=name)
        if name:
            message = load_profile_into(self.pipeline, name)
            self.calibration_label.setText(f"calibration: {message}")
            recorder = self.record_panel.recorder
            if recorder is not None and hasattr(recorder, "profile_name"):
                recorder.profile_name = name
            self.devices_panel.refresh()  # the profile may strap the sensors to other sites
            self._update_view_camera()  # and its camera is the calibrated one

    def _on_follow(self, follow: bool) -> None:
        self.skeleton_view.set_follow(follow)
        self.settings = replace(self.settings, follow_performer=bool(follow))

    def _on_take_saved(self, folder: Path) -> None:
        self.takes_browser.refresh()
        self.takes_browser.select(folder)

    def set_takes_dir(self, folder: Path) -> None:
        folder = Path(folder)
        self.settings = replace(self.settings, takes_dir=str(folder))
        self.record_panel.set_recorder(self._make_recorder())
        self.takes_browser.set_folder(folder)

    def edit_preferences(self) -> QtWidgets.QDialog:
        """File > Preferences (modeless); accepted values are applied and saved at once."""
        from app.settings import SettingsDialog

        dialog = SettingsDialog(self.settings, self)
        dialog.accepted.connect(lambda: self.apply_settings(dialog.result_settings()))
        dialog.show()
        self.preferences_dialog = dialog
        return dialog

    def apply_settings(self, settings: StudioSettings) -> None:
        """Use new settings now where possible (takes folder, countdown, BVH options); save them."""
        restart = (settings.devices, settings.camera, settings.model_path, settings.pose_source) != (
            self.settings.devices, self.settings.camera, self.settings.model_path, self.settings.pose_source)
        takes_changed = settings.takes_dir != self.settings.takes_dir
        self.settings = settings
        self.record_panel.countdown_spin.setValue(settings.record_countdown_s)
        if takes_changed:
            self.set_takes_dir(Path(settings.takes_dir))
        if self._qsettings is not None:
            save_settings(self.settings, self._qsettings)
        if restart:
            self.statusBar().showMessage("Saved. Devices, camera and model change at the next start.", 8000)
            log.info("settings saved; devices, camera and model apply at the next start")

    def _choose_takes_dir(self) -> None:
        folder = QtWidgets.QFileDialog.getExistingDirectory(self, "Takes folder", self.settings.takes_dir)
        if folder:
            self.set_takes_dir(Path(folder))

    def save_screenshot(self, path: Path) -> Path:
        """The whole window as a PNG (the GL view included: Qt composites it into the grab)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        if not self.grab().save(str(path)):
            log.error("could not write the screenshot %s", path)
        return path

    def _save_screenshot_dialog(self) -> None:
        path, _ = QtWidgets.QFileDialog.getSaveFileName(self, "Save screenshot", "studio.png", "PNG (*.png)")
        if path:
            self.save_screenshot(Path(path))

    def _save_settings(self) -> None:
        self.settings = replace(self.settings, record_countdown_s=self.record_panel.countdown_spin.value())
        if self._qsettings is not None:
            save_settings(self.settings, self._qsettings)
