"""The guided T-pose calibration: a QWizard from the devices to a saved calibration profile.

Pages (``CalibrationWizard.PAGE_*``):

1. Devices: tick the IMUs and the camera to use (the devices the caller passed: the pipeline's,
   discovered or simulated); the last saved profile can be taken as it is.
2. Sites: a picture of the body with the six sites; pick a site, move the sensor strapped there,
   and the wizard assigns the sensor that moved (it highlights a moving sensor's site all along).
3. Camera: the live preview; the page completes once all 17 keypoints are confident, and says which
   ones are not.
4. T-pose: a countdown, then a capture while the performer holds still, with progress per sensor;
   then the same for the heading pose (``vimcan_core.calibration.HEADING_POSE_INSTRUCTIONS``). A phase
   starts again by itself when someone moved. The calibration is computed in a worker thread.
5. Check: the live skeleton of the calibrated IMUs next to the camera view, with the quality of
   each sensor and how well each bone agrees with the camera right now.
6. Save: a named profile (``vimcan_core.calibration_profile``) with the performer's height, when given
   (the skeleton is scaled to it: ``vimcan_core.body_scale``).

Nothing blocks the Qt thread: one ``QTimer`` reads the devices' buffers (``read_since``, never
waiting) and drives the current page; countdowns are deadlines checked by that timer; the
computation runs in a ``ThreadPoolExecutor`` whose future the timer polls.

The result: ``calibration``, ``profile_path``, ``profile_name`` and ``assignment`` attributes, and
the ``calibrated(Calibration, Path | None)`` signal.

What the performer is asked to do at each step goes out as ``prompted(PerformerPrompt, ImuSite | None)``
(``vimcan_core.performer``): stand, move the sensor on a site, T-pose, heading pose, move freely. The
studio connects it to the demo performer (``sensors.demo.DemoRig.follow_prompt``), which then
follows the instructions as a person would; the prompt is a plain enum, so no Qt reaches ``sensors``.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from enum import Enum
from pathlib import Path
from typing import Sequence

import numpy as np
from PySide6 import QtCore, QtWidgets

from app.views.keypoints_view import KeypointsView
from app.views.palette import ERROR_RGB, OK_RGB, WARN_RGB, hex_rgb
from app.widgets.body_sites import BodySitesWidget, SkeletonSketch
from sensors.device import Device, DeviceKind, DeviceState
from sensors.samples import ImuSample, KeypointFrame
from vimcan_core.body_scale import MAX_HEIGHT_M, height_from_cm
from vimcan_core.calibration import (
    HEADING_POSE_INSTRUCTIONS,
    HeadingMethod,
    Calibration,
    CalibrationConfig,
    ImuWorldUp,
    calibrate_tpose,
)
from vimcan_core.calibration_profile import (
    CalibrationProfile,
    ProfileDevice,
    last_profile_path,
    load_profile,
    profile_file_name,
    profiles_dir,
    remember_last_profile,
    save_profile,
)
from vimcan_core.camera import PinholeCamera
from vimcan_core.errors import CalibrationError, VimcanError
from vimcan_core.performer import PerformerPrompt
from vimcan_core.rotations import quat_angle, quat_conj, quat_rotate
from vimcan_core.skeleton import (
    IMU_CHILD_JOINT,
    IMU_JOINT,
    IMU_SITE_NAMES,
    JOINT_NAMES,
    NUM_IMUS,
    NUM_JOINTS,
    PARENTS,
    ImuSite,
    RestPose,
)
from vimcan_core.stillness import detect_stillness

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class WizardConfig:
    """Timings and thresholds of the wizard."""

    poll_ms: int = 50  # the timer that reads the devices and drives the pages
    history_s: float = 8.0  # samples kept per device
    countdown_s: float = 3.0  # before each capture
    capture_s: float = 2.0  # each still capture (T-pose, heading pose)
    min_restart_window_s: float = 0.4  # a capture shorter than this is not yet judged for motion
    max_attempts: int = 5  # failed computations repeated automatically before asking the user
    moving_deg: float = 15.0  # a sensor that turned more than this in ``move_window_s`` is moving
    still_deg: float = 5.0  # ... and the others must have turned less than this
    move_window_s: float = 0.6
    assign_hold_s: float = 0.4  # the same single sensor must keep moving this long to be assigned
    min_keypoint_confidence: float = 0.5
    camera_ok_s: float = 0.5  # all keypoints confident for this long completes the camera page
    imu_world_up: ImuWorldUp = ImuWorldUp.Z  # for drivers that do not say (hardware AHRS worlds are Z-up)
    calibration: CalibrationConfig = field(default_factory=CalibrationConfig)


class Phase(Enum):
    """Where the T-pose page is."""

    COUNTDOWN_TPOSE = "countdown_tpose"
    CAPTURE_TPOSE = "capture_tpose"
    COUNTDOWN_HEADING = "countdown_heading"
    CAPTURE_HEADING = "capture_heading"
    COMPUTING = "computing"
    DONE = "done"
    FAILED = "failed"


def imu_world_up_of(device: Device, default: ImuWorldUp) -> ImuWorldUp:
    """The vertical of an IMU's own world frame: the driver's ``imu_world_up`` attribute when it has one;
    the simulator's IMU worlds are Y-up (``sensors.simulated``); else ``default``."""
    declared = getattr(device, "imu_world_up", None)
    if declared is not None:
        return ImuWorldUp(declared.value if isinstance(declared, Enum) else str(declared).lower())
    sim = getattr(device, "sim_config", None)
    if sim is not None and hasattr(sim, "world_heading_deg"):
        return ImuWorldUp.Y
    return default


# ------------------------------------------------------------------ reading the devices (no Qt)
class DeviceFeed:
    """Recent samples of each device, read from their buffers without waiting (call ``poll`` often)."""

    def __init__(self, devices: Sequence[Device], history_s: float) -> None:
        self.devices = list(devices)
        self.history_s = history_s
        self._cursors = {id(d): d.buffer.total_pushed for d in self.devices}
        self._imu: dict[int, deque] = {id(d): deque() for d in self.devices}  # (host_time_s, quat 4, acc 3)
        self._frames: dict[int, deque] = {id(d): deque() for d in self.devices}  # KeypointFrame

    def poll(self) -> None:
        now = time.monotonic()
        for d in self.devices:
            samples, self._cursors[id(d)], _lost = d.buffer.read_since(self._cursors[id(d)])
            imu, frames = self._imu[id(d)], self._frames[id(d)]
            for s in samples:
                if isinstance(s, ImuSample):
                    acc = s.acc_free_mps2 if s.acc_free_mps2 is not None else (np.nan, np.nan, np.nan)
                    imu.append((s.host_time_s, np.asarray(s.quat_wxyz, dtype=np.float64), np.asarray(acc, dtype=np.float64)))
                elif isinstance(s, KeypointFrame):
                    frames.append(s)
            for q in (imu, frames):
                while q and (q[0][0] if isinstance(q[0], tuple) else q[0].host_time_s) < now - self.history_s:
                    q.popleft()

    def motion_deg(self, device: Device, window_s: float) -> float:
        """Largest angle of the last ``window_s`` of samples from the newest one (0 without samples)."""
        samples = self._imu[id(device)]
        if not samples:
            return 0.0
        t_end = samples[-1][0]
        quats = np.array([q for t, q, _ in samples if t >= t_end - window_s])
        return float(np.degrees(np.max(quat_angle(quats, quats[-1]))))

    def latest_quat(self, device: Device) -> np.ndarray | None:
        samples = self._imu[id(device)]
        return samples[-1][1] if samples else None

    def latest_frame(self, device: Device | None) -> KeypointFrame | None:
        if device is None:
            return None
        frames = self._frames[id(device)]
        return frames[-1] if frames else None

    def frames_between(self, device: Device | None, t0: float, t1: float) -> list[KeypointFrame]:
        if device is None:
            return []
        return [f for f in self._frames[id(device)] if t0 <= f.host_time_s <= t1]

    def imu_window(self, site_devices: Sequence[Device | None], t0: float, t1: float, rate_hz: float = 30.0
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The sites' samples between host times t0 and t1 on a common grid (the newest sample at or before
        each instant): times N, quats N x 6 x 4, free acc N x 6 x 3 (NaN where a site has no sample)."""
        times = np.arange(t0, t1 + 1e-9, 1.0 / rate_hz)
        quats = np.full((times.size, NUM_IMUS, 4), np.nan)
        acc = np.full((times.size, NUM_IMUS, 3), np.nan)
        for site, d in enumerate(site_devices):
            if d is None:
                continue
            samples = [s for s in self._imu[id(d)] if t0 - 0.2 <= s[0] <= t1]
            if not samples:
                continue
            st = np.array([s[0] for s in samples])
            k = np.searchsorted(st, times, side="right") - 1
            ok = k >= 0
            quats[ok, site] = np.array([s[1] for s in samples])[k[ok]]
            acc[ok, site] = np.array([s[2] for s in samples])[k[ok]]
        return times, quats, acc


def skeleton_from_sites(bone_quats_cam: np.ndarray, rest: RestPose, fallback_quat: np.ndarray) -> np.ndarray:
    """A stick figure from the six site bone orientations (6 x 4, camera frame): 17 x 3, camera frame,
    pelvis at 0. Bones without a sensor take the nearest measured one's orientation (upper arm = forearm,
    thigh = lower leg, spine = pelvis), sites without a sensor ``fallback_quat`` (4, e.g. the T-pose seen
    from the camera): a sketch to check the calibration, not a pose estimate."""
    owner = (ImuSite.PELVIS, ImuSite.RIGHT_LOWER_LEG, ImuSite.RIGHT_LOWER_LEG, ImuSite.RIGHT_LOWER_LEG,
             ImuSite.LEFT_LOWER_LEG, ImuSite.LEFT_LOWER_LEG, ImuSite.LEFT_LOWER_LEG, ImuSite.PELVIS, ImuSite.PELVIS,
             ImuSite.HEAD, ImuSite.HEAD, ImuSite.LEFT_FOREARM, ImuSite.LEFT_FOREARM, ImuSite.LEFT_FOREARM,
             ImuSite.RIGHT_FOREARM, ImuSite.RIGHT_FOREARM, ImuSite.RIGHT_FOREARM)  # per joint (H36M order)
    q = np.where(np.isfinite(bone_quats_cam).all(axis=-1, keepdims=True), bone_quats_cam, fallback_quat)  # 6 x 4
    glob = q[list(owner)]  # 17 x 4: each joint's bone orientation
    pos = np.zeros((NUM_JOINTS, 3))
    for j, p in enumerate(PARENTS):
        if p >= 0:  # forward kinematics: the parent's orientation carries the child's rest offset
            pos[j] = pos[p] + quat_rotate(glob[p], rest.offsets_m[j])
    return pos


# ------------------------------------------------------------------ pages
class _Page(QtWidgets.QWizardPage):
    """A page driven by the wizard's timer (``tick``)."""

    def __init__(self, wizard: "CalibrationWizard", title: str, subtitle: str) -> None:
        super().__init__()
        self.w = wizard
        self.setTitle(title)
        self.setSubTitle(subtitle)

    def tick(self, now: float) -> None:
        """Called from the wizard's timer while this page is shown."""


class DevicesPage(_Page):
    def __init__(self, wizard: "CalibrationWizard") -> None:
        super().__init__(wizard, "1. Devices", "Tick the IMUs and the camera to calibrate.")
        self.list = QtWidgets.QListWidget()
        self.last_label = QtWidgets.QLabel()
        self.last_label.setWordWrap(True)
        self.use_last_button = QtWidgets.QPushButton("Use this profile")
        self.use_last_button.clicked.connect(self.w.use_last_profile)
        layout = QtWidgets.QVBoxLayout(self)
        layout.addWidget(self.list)
        row = QtWidgets.QHBoxLayout()
        row.addWidget(self.last_label, 1)
        row.addWidget(self.use_last_button)
        layout.addLayout(row)
        self.list.itemChanged.connect(lambda *_: self.completeChanged.emit())

    def initializePage(self) -> None:  # noqa: N802 - Qt override
        self.list.blockSignals(True)
        self.list.clear()
        for d in self.w.all_devices:
            item = QtWidgets.QListWidgetItem(self._text(d))
            item.setFlags(item.flags() | QtCore.Qt.ItemIsUserCheckable)
            item.setCheckState(QtCore.Qt.Checked)
            item.setData(QtCore.Qt.UserRole, id(d))
            self.list.addItem(item)
        self.list.blockSignals(False)
        path = last_profile_path()
        self.use_last_button.setVisible(path is not None)
        self.last_label.setText("No saved profile yet." if path is None else f"Last profile: {path.stem} ({path})")
        self.w.prompt(PerformerPrompt.STAND)
        self.completeChanged.emit()

    @staticmethod
    def _text(d: Device) -> str:
        stats = d.stats()
        rate = f", {stats.rate_hz:.0f} Hz" if stats.rate_hz else ""
        return f"{d.device_id}  ·  {d.kind.value}  ·  {type(d).__name__}  ·  {stats.state.value}{rate}"

    def tick(self, now: float) -> None:
        for i in range(self.list.count()):
            item = self.list.item(i)
            d = self.w.device_by_key(item.data(QtCore.Qt.UserRole))
            text = self._text(d)
            if item.text() != text:
                item.setText(text)

    def checked(self) -> list[Device]:
        out = []
        for i in range(self.list.count()):
            item = self.list.item(i)
            if item.checkState() == QtCore.Qt.Checked:
                out.append(self.w.device_by_key(item.data(QtCore.Qt.UserRole)))
        return out

    def set_checked(self, device_ids: set[str]) -> None:
        for i in range(self.list.count()):
            item = self.list.item(i)
            d = self.w.device_by_key(item.data(QtCore.Qt.UserRole))
            item.setCheckState(QtCore.Qt.Checked if d.device_id in device_ids else QtCore.Qt.Unchecked)

    def isComplete(self) -> bool:  # noqa: N802 - Qt override
        chosen = self.checked()
        return any(d.kind == DeviceKind.IMU for d in chosen) and sum(d.kind == DeviceKind.CAMERA for d in chosen) == 1

    def validatePage(self) -> bool:  # noqa: N802 - Qt override
        self.w.select_devices(self.checked())
        return True


class SitesPage(_Page):
    def __init__(self, wizard: "CalibrationWizard") -> None:
        super().__init__(wizard, "2. Sites", "Click a site (or take the highlighted one), then move the sensor strapped there.")
        self.body = BodySitesWidget()
        self.body.site_clicked.connect(self._on_site_clicked)
        self.hint = QtWidgets.QLabel()
        self.hint.setWordWrap(True)
        self.table = QtWidgets.QTableWidget(0, 3)
        self.table.setHorizontalHeaderLabels(("Sensor", "Site", "Moving"))
        self.table.verticalHeader().setVisible(False)
        self.table.horizontalHeader().setStretchLastSection(True)
        self.clear_button = QtWidgets.QPushButton("Assign again from the start")
        self.clear_button.clicked.connect(self.clear)
        right = QtWidgets.QVBoxLayout()
        right.addWidget(self.hint)
        right.addWidget(self.table, 1)
        right.addWidget(self.clear_button)
        layout = QtWidgets.QHBoxLayout(self)
        layout.addWidget(self.body, 1)
        layout.addLayout(right, 1)
        self._moving_since: tuple[int, float] | None = None  # (device key, since)
        self._just_assigned: int | None = None  # ignored until it has stopped moving
        self._combos: list[QtWidgets.QComboBox] = []

    def initializePage(self) -> None:  # noqa: N802 - Qt override
        imus = self.w.selected_imus
        self.table.setRowCount(len(imus))
        self._combos = []
        for row, d in enumerate(imus):
            self.table.setItem(row, 0, QtWidgets.QTableWidgetItem(d.device_id))
            combo = QtWidgets.QComboBox()
            combo.addItem("(none)")
            combo.addItems([n.replace("_", " ") for n in IMU_SITE_NAMES])
            combo.currentIndexChanged.connect(lambda index, dev=d: self._on_combo(dev, index))
            self.table.setCellWidget(row, 1, combo)
            self.table.setItem(row, 2, QtWidgets.QTableWidgetItem(""))
            self._combos.append(combo)
        self._refresh()
        self._next_target()

    def clear(self) -> None:
        self.w.site_devices = [None] * NUM_IMUS
        self._refresh()
        self._next_target()

    def _on_site_clicked(self, site: int) -> None:
        self.body.set_target(site)
        self._update_hint()

    def _on_combo(self, device: Device, index: int) -> None:
        self.w.assign(device, None if index == 0 else ImuSite(index - 1))
        self._refresh()

    def _next_target(self) -> None:
        free = [s for s in range(NUM_IMUS) if self.w.site_devices[s] is None]
        unassigned = [d for d in self.w.selected_imus if d not in self.w.site_devices]
        self.body.set_target(free[0] if free and unassigned else None)
        self._update_hint()

    def _update_hint(self) -> None:
        t = self.body.target
        self.w.prompt(PerformerPrompt.MOVE_SITE if t is not None else PerformerPrompt.STAND,
                      None if t is None else ImuSite(t))
        if t is None:
            self.hint.setText("Every sensor has a site. Move a sensor to see its site light up, or go on.")
        else:
            self.hint.setText(f"Move the sensor on the <b>{IMU_SITE_NAMES[t].replace('_', ' ')}</b> "
                              "(the others keep still) until it is picked up.")

    def _refresh(self) -> None:
        labels = [d.device_id if d is not None else None for d in self.w.site_devices]
        self.body.set_labels(labels)
        for row, d in enumerate(self.w.selected_imus):
            combo = self._combos[row]
            site = self.w.site_devices.index(d) if d in self.w.site_devices else None
            combo.blockSignals(True)
            combo.setCurrentIndex(0 if site is None else site + 1)
            combo.blockSignals(False)
        self.completeChanged.emit()

    def tick(self, now: float) -> None:
        cfg = self.w.config
        imus = self.w.selected_imus
        motion = np.array([self.w.feed.motion_deg(d, cfg.move_window_s) for d in imus])
        for row, m in enumerate(motion):
            self.table.item(row, 2).setText("moving" if m > cfg.moving_deg else "")
        moving = np.flatnonzero(motion > cfg.moving_deg)
        others_still = motion.size > 0 and np.sum(motion >= cfg.still_deg) <= 1
        if self._just_assigned is not None and not any(
                id(d) == self._just_assigned and m >= cfg.still_deg for d, m in zip(imus, motion)):
            self._just_assigned = None  # it stopped: it may be assigned again
        if moving.size != 1 or not others_still:
            self._moving_since = None
            self.body.set_moving(None)
            return
        d = imus[int(moving[0])]
        site = self.w.site_devices.index(d) if d in self.w.site_devices else None
        self.body.set_moving(site)
        if self._just_assigned is not None:
            if self._just_assigned != id(d):
                self._just_assigned = None
            return
        if self._moving_since is None or self._moving_since[0] != id(d):
            self._moving_since = (id(d), now)
            return
        target = self.body.target
        if target is not None and now - self._moving_since[1] >= cfg.assign_hold_s and site != target:
            log.info("site %s <- %s (it moved)", IMU_SITE_NAMES[target], d.device_id)
            self.w.assign(d, ImuSite(target))
            self._moving_since = None
            self._just_assigned = id(d)
            self._refresh()
            self._next_target()
            self.body.set_moving(target)

    def isComplete(self) -> bool:  # noqa: N802 - Qt override
        return all(d in self.w.site_devices for d in self.w.selected_imus) and any(self.w.site_devices)


class CameraPage(_Page):
    def __init__(self, wizard: "CalibrationWizard") -> None:
        super().__init__(wizard, "3. Camera", "Stand where you will perform: the whole body must be in view.")
        self.view = KeypointsView()
        self.hint = QtWidgets.QLabel()
        self.hint.setWordWrap(True)
        layout = QtWidgets.QVBoxLayout(self)
        layout.addWidget(self.view, 1)
        layout.addWidget(self.hint)
        self._ok_since: float | None = None
        self._complete = False

    def initializePage(self) -> None:  # noqa: N802 - Qt override
        self._ok_since = None
        self._set_complete(False)
        self.hint.setText("Waiting for the camera…")
        self.w.prompt(PerformerPrompt.STAND)

    def _set_complete(self, done: bool) -> None:
        if done != self._complete:
            self._complete = done
            self.completeChanged.emit()

    def tick(self, now: float) -> None:
        frame = self.w.feed.latest_frame(self.w.camera_device)
        if frame is None or now - frame.host_time_s > 1.0:
            self.view.set_missing("no camera frames")
            self.hint.setText(f"<span style='color:{hex_rgb(ERROR_RGB)}'>No frames from the camera: is it connected?</span>")
            self._ok_since = None
            self._set_complete(False)
            return
        self.view.set_frame(frame.keypoints_px, frame.confidence, (frame.width_px, frame.height_px), frame.image_bgr)
        missing = [JOINT_NAMES[j].replace("_", " ") for j in range(NUM_JOINTS)
                   if not frame.confidence[j] >= self.w.config.min_keypoint_confidence]
        if missing:
            self._ok_since = None
            feet = any("ankle" in m for m in missing)
            advice = "step back so that your feet are in the picture" if feet else "face the camera, with more light"
            self.hint.setText(f"<span style='color:{hex_rgb(WARN_RGB)}'>Not in view: {', '.join(missing)}. "
                              f"{advice.capitalize()}.</span>")
            self._set_complete(False)
            return
        self._ok_since = now if self._ok_since is None else self._ok_since
        ok = now - self._ok_since >= self.w.config.camera_ok_s
        self.hint.setText(f"<span style='color:{hex_rgb(OK_RGB)}'>All 17 keypoints are in view.</span>"
                          + ("" if ok else " Hold on…"))
        self._set_complete(ok)

    def isComplete(self) -> bool:  # noqa: N802 - Qt override
        return self._complete


class CapturePage(_Page):
    """T-pose and heading-pose captures, then the computation."""

    TPOSE_TEXT = "Stand in a T-pose facing the camera: arms straight out to the sides, palms down, feet together."

    def __init__(self, wizard: "CalibrationWizard") -> None:
        super().__init__(wizard, "4. T-pose", "Hold each pose still until the bars are full.")
        self.instruction = QtWidgets.QLabel()
        self.instruction.setWordWrap(True)
        self.countdown = QtWidgets.QLabel()
        font = self.countdown.font()
        font.setPointSize(28)
        font.setBold(True)
        self.countdown.setFont(font)
        self.countdown.setAlignment(QtCore.Qt.AlignCenter)
        self.status = QtWidgets.QLabel()
        self.status.setWordWrap(True)
        grid = QtWidgets.QGridLayout()
        self.bars: list[QtWidgets.QProgressBar] = []
        for s in range(NUM_IMUS):
            bar = QtWidgets.QProgressBar()
            bar.setRange(0, 100)
            grid.addWidget(QtWidgets.QLabel(IMU_SITE_NAMES[s].replace("_", " ")), s, 0)
            grid.addWidget(bar, s, 1)
            self.bars.append(bar)
        self.retry_button = QtWidgets.QPushButton("Start again")
        self.retry_button.clicked.connect(self.restart)
        layout = QtWidgets.QVBoxLayout(self)
        layout.addWidget(self.instruction)
        layout.addWidget(self.countdown)
        layout.addLayout(grid)
        layout.addWidget(self.status)
        layout.addWidget(self.retry_button)
        self.phase = Phase.COUNTDOWN_TPOSE
        self.restarts = 0  # captures started again because someone moved
        self.attempts = 0  # computations tried
        self._deadline = 0.0
        self._capture_start = 0.0
        self._windows: dict[str, tuple] = {}
        self._future: Future | None = None

    def initializePage(self) -> None:  # noqa: N802 - Qt override
        self.restart()

    def restart(self) -> None:
        self.attempts = 0
        self.w.calibration = None
        self._start(Phase.COUNTDOWN_TPOSE)

    def _start(self, phase: Phase, message: str = "") -> None:
        self.phase = phase
        now = time.monotonic()
        if phase in (Phase.COUNTDOWN_TPOSE, Phase.COUNTDOWN_HEADING):
            self._deadline = now + self.w.config.countdown_s
            self.instruction.setText(self.TPOSE_TEXT if phase == Phase.COUNTDOWN_TPOSE else HEADING_POSE_INSTRUCTIONS)
            self.w.prompt(PerformerPrompt.T_POSE if phase == Phase.COUNTDOWN_TPOSE else PerformerPrompt.HEADING_POSE)
            for bar in self.bars:
                bar.setValue(0)
        elif phase in (Phase.CAPTURE_TPOSE, Phase.CAPTURE_HEADING):
            self._capture_start = now
        elif phase in (Phase.DONE, Phase.FAILED):
            self.w.prompt(PerformerPrompt.STAND)
        self.status.setText(message)
        self.retry_button.setVisible(phase in (Phase.DONE, Phase.FAILED))
        self.completeChanged.emit()

    def tick(self, now: float) -> None:
        cfg = self.w.config
        if self.phase in (Phase.COUNTDOWN_TPOSE, Phase.COUNTDOWN_HEADING):
            left = self._deadline - now
            self.countdown.setText(f"{max(left, 0.0):.0f}" if left > 0.5 else "Hold still")
            if left <= 0:
                self._start(Phase.CAPTURE_TPOSE if self.phase == Phase.COUNTDOWN_TPOSE else Phase.CAPTURE_HEADING)
        elif self.phase in (Phase.CAPTURE_TPOSE, Phase.CAPTURE_HEADING):
            self._capture_tick(now, cfg)
        elif self.phase == Phase.COMPUTING:
            self._computing_tick()

    def _capture_tick(self, now: float, cfg: WizardConfig) -> None:
        elapsed = now - self._capture_start
        self.countdown.setText("Hold still")
        times, quats, acc = self.w.feed.imu_window(self.w.site_devices, self._capture_start, now)
        used = [s for s in range(NUM_IMUS) if self.w.site_devices[s] is not None]
        if elapsed >= cfg.min_restart_window_s and times.size >= 2:
            still = detect_stillness(quats, times, cfg.calibration.stillness)
            moved = [IMU_SITE_NAMES[s].replace("_", " ") for s in used
                     if still.valid_samples[s] >= 2 and not still.still[s]]
            if moved:
                self.restarts += 1
                again = Phase.COUNTDOWN_TPOSE if self.phase == Phase.CAPTURE_TPOSE else Phase.COUNTDOWN_HEADING
                log.info("capture restarted: %s moved", moved)
                self._start(again, f"<span style='color:{hex_rgb(WARN_RGB)}'>Someone moved ({', '.join(moved)}): "
                                   "starting again.</span>")
                return
        fraction = min(elapsed / cfg.capture_s, 1.0)
        for s in used:
            self.bars[s].setValue(int(100 * fraction))
        if elapsed < cfg.capture_s:
            return
        frames = self.w.feed.frames_between(self.w.camera_device, self._capture_start, now)
        window = (quats, acc, times, frames)
        if self.phase == Phase.CAPTURE_TPOSE:
            self._windows["tpose"] = window
            self._windows.pop("heading", None)
            if cfg.calibration.heading is HeadingMethod.SENSOR_FORWARD:
                self._compute()  # this method takes each sensor's heading from the T-pose alone
            else:
                self._start(Phase.COUNTDOWN_HEADING)
        else:
            self._windows["heading"] = window
            self._compute()

    def _compute(self) -> None:
        self.attempts += 1
        q_t, acc_t, times_t, frames_t = self._windows["tpose"]
        q_h, _, _, frames_h = self._windows.get("heading", (None, None, None, []))
        if not frames_t:
            self._failed("no camera frames arrived during the T-pose; check the camera")
            return
        kp = np.stack([f.keypoints_px for f in frames_t])
        conf = np.stack([f.confidence for f in frames_t])
        kp_h = np.stack([f.keypoints_px for f in frames_h]) if frames_h else None
        conf_h = np.stack([f.confidence for f in frames_h]) if frames_h else None
        camera = self.w.camera_for(frames_t[-1])
        try:
            config = replace(self.w.config.calibration, imu_world_up=self.w.imu_world_up())
        except VimcanError as exc:
            self._failed(str(exc))
            return
        self._start(Phase.COMPUTING, "Computing the calibration…")
        self.countdown.setText("…")
        self._future = self.w.executor.submit(
            calibrate_tpose, q_t, np.concatenate((kp, conf[..., None]), axis=-1), camera,
            heading_pose_quats=q_h, heading_pose_keypoints_px=kp_h, heading_pose_keypoint_confidence=conf_h,
            imu_acc_free_mps2=acc_t, imu_times_s=times_t, config=config,
        )

    def _computing_tick(self) -> None:
        if self._future is None or not self._future.done():
            return
        future, self._future = self._future, None
        try:
            calibration = future.result()
        except VimcanError as exc:
            log.warning("calibration failed: %s", exc)
            if self.attempts < self.w.config.max_attempts:
                self._start(Phase.COUNTDOWN_TPOSE, f"<span style='color:{hex_rgb(WARN_RGB)}'>{exc} Starting again.</span>")
            else:
                self._failed(str(exc))
            return
        except Exception as exc:  # a bug must reach the user, not vanish in the worker
            log.exception("calibration crashed")
            self._failed(f"{type(exc).__name__}: {exc}")
            return
        self.w.calibration = calibration
        self.countdown.setText("Done")
        bad = [IMU_SITE_NAMES[s] for s in range(NUM_IMUS) if self.w.site_devices[s] is not None and not calibration.quality[s].ok]
        colour = WARN_RGB if bad else OK_RGB
        text = f"Calibrated. Check the sensors: {', '.join(bad)}." if bad else "Calibrated: every sensor looks good."
        self._start(Phase.DONE, f"<span style='color:{hex_rgb(colour)}'>{text}</span>")

    def _failed(self, message: str) -> None:
        self.countdown.setText("Not calibrated")
        self._start(Phase.FAILED, f"<span style='color:{hex_rgb(ERROR_RGB)}'>{message}</span>")

    def isComplete(self) -> bool:  # noqa: N802 - Qt override
        return self.phase == Phase.DONE and self.w.calibration is not None


class CheckPage(_Page):
    def __init__(self, wizard: "CalibrationWizard") -> None:
        super().__init__(wizard, "5. Check", "Lower your arms and move a little: the IMU skeleton should follow you.")
        self.view = KeypointsView()
        self.sketch = SkeletonSketch("calibrated IMUs")
        self.table = QtWidgets.QTableWidget(NUM_IMUS, 5)
        self.table.setHorizontalHeaderLabels(("Site", "Score", "Live agreement", "Details", "Note"))
        self.table.verticalHeader().setVisible(False)
        self.table.horizontalHeader().setStretchLastSection(True)
        self.table.setEditTriggers(QtWidgets.QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.horizontalHeader().setSectionResizeMode(QtWidgets.QHeaderView.ResizeMode.ResizeToContents)
        self.table.verticalHeader().setSectionResizeMode(QtWidgets.QHeaderView.ResizeMode.ResizeToContents)
        views = QtWidgets.QHBoxLayout()
        views.addWidget(self.view, 1)
        views.addWidget(self.sketch, 1)
        layout = QtWidgets.QVBoxLayout(self)
        layout.addLayout(views, 2)
        layout.addWidget(self.table, 1)
        self.live_agreement_deg = np.full(NUM_IMUS, np.nan)

    def initializePage(self) -> None:  # noqa: N802 - Qt override
        self.w.prompt(PerformerPrompt.MOVE_FREELY)
        c = self.w.calibration
        for s in range(NUM_IMUS):
            q = c.quality[s]
            used = self.w.site_devices[s] is not None
            cells = (IMU_SITE_NAMES[s].replace("_", " "), f"{q.score:.2f}" if used else "–", "",
                     f"still to {q.motion_deg:.1f}°, {q.tpose_error_deg:.1f}° off the T-pose, turned {q.heading_motion_deg:.0f}°"
                     if used else "", q.note if used else "no sensor")
            for col, text in enumerate(cells):
                self.table.setItem(s, col, QtWidgets.QTableWidgetItem(text))

    def tick(self, now: float) -> None:
        c = self.w.calibration
        frame = self.w.feed.latest_frame(self.w.camera_device)
        if frame is not None:
            self.view.set_frame(frame.keypoints_px, frame.confidence, (frame.width_px, frame.height_px), frame.image_bgr)
        quats = np.full((NUM_IMUS, 4), np.nan)
        for s, d in enumerate(self.w.site_devices):
            if d is not None:
                q = self.w.feed.latest_quat(d)
                if q is not None:
                    quats[s] = q
        bones = c.bone_quats_camera(quats)  # 6 x 4
        if not np.isfinite(bones).any():
            self.sketch.set_joints(None, "no IMU samples")
            return
        fallback = quat_conj(c.quat_world_from_camera)  # q_C_W: a bone in its T-pose orientation
        self.sketch.set_joints(skeleton_from_sites(bones, self.w.config.calibration.rest, fallback))
        if frame is not None:
            self.live_agreement_deg = bone_image_agreement_deg(bones, frame, self.w.config.calibration.rest,
                                                               self.w.config.min_keypoint_confidence)
            for s in range(NUM_IMUS):
                a = self.live_agreement_deg[s]
                self.table.item(s, 2).setText("–" if not np.isfinite(a) else f"{a:.0f}°")


def bone_image_agreement_deg(bone_quats_cam: np.ndarray, frame: KeypointFrame, rest: RestPose, min_conf: float) -> np.ndarray:
    """6: angle in the image between each IMU bone (rest direction turned by its camera-frame orientation)
    and the same bone as the camera sees it; NaN when unseen or pointing at the camera."""
    pos = rest.positions()
    out = np.full(NUM_IMUS, np.nan)
    for s, (a, b) in enumerate(zip(IMU_JOINT, IMU_CHILD_JOINT)):
        if not np.isfinite(bone_quats_cam[s]).all() or min(frame.confidence[a], frame.confidence[b]) < min_conf:
            continue
        d_cam = quat_rotate(bone_quats_cam[s], pos[b] - pos[a])
        seen = frame.keypoints_px[b] - frame.keypoints_px[a]
        if np.linalg.norm(d_cam[:2]) < 0.3 * np.linalg.norm(d_cam) or np.linalg.norm(seen) < 5.0:
            continue
        cos = d_cam[:2] @ seen / (np.linalg.norm(d_cam[:2]) * np.linalg.norm(seen))
        out[s] = float(np.degrees(np.arccos(np.clip(cos, -1.0, 1.0))))
    return out


class SavePage(_Page):
    def __init__(self, wizard: "CalibrationWizard") -> None:
        super().__init__(wizard, "6. Save", "Name this calibration; the studio offers the last one at start.")
        self.name = QtWidgets.QLineEdit()
        self.height = QtWidgets.QSpinBox()  # centimetres; the minimum (0) reads "unknown"
        self.height.setRange(0, int(round(MAX_HEIGHT_M * 100)))
        self.height.setSpecialValueText("unknown")
        self.height.setSuffix(" cm")
        self.height.setToolTip("The performer's height: the skeleton and the BVH are scaled to it. Unknown: the "
                               "network guesses the size from the camera and the sensors (a few percent off).")
        self.path_label = QtWidgets.QLabel()
        self.path_label.setWordWrap(True)
        self.error = QtWidgets.QLabel()
        self.error.setWordWrap(True)
        form = QtWidgets.QFormLayout(self)
        form.addRow("Profile name", self.name)
        form.addRow("Performer height", self.height)
        form.addRow("File", self.path_label)
        form.addRow(self.error)
        self.name.textChanged.connect(self._on_name)

    def initializePage(self) -> None:  # noqa: N802 - Qt override
        if not self.name.text():
            self.name.setText(time.strftime("Calibration %Y-%m-%d %H.%M"))
        if self.height.value() == 0 and self.w.last_performer_height_m is not None:  # usually the same person
            self.height.setValue(int(round(self.w.last_performer_height_m * 100)))
        self._on_name(self.name.text())

    def _on_name(self, text: str) -> None:
        self.path_label.setText(str(profiles_dir() / profile_file_name(text)))
        self.error.clear()
        self.completeChanged.emit()

    def isComplete(self) -> bool:  # noqa: N802 - Qt override
        return bool(self.name.text().strip()) and self.w.calibration is not None

    @property
    def height_m(self) -> float | None:
        """The height typed in, metres; None when unknown. Raises ``VimcanError`` (in centimetres)
        for a height that is no person's."""
        return None if self.height.value() == 0 else height_from_cm(self.height.value(), "Performer height")

    def validatePage(self) -> bool:  # noqa: N802 - Qt override
        try:
            self.w.save(self.name.text().strip(), self.height_m)
        except (VimcanError, OSError) as exc:
            self.error.setText(f"<span style='color:{hex_rgb(ERROR_RGB)}'>Not saved: {exc}</span>")
            return False
        return True


# ------------------------------------------------------------------ the wizard
class CalibrationWizard(QtWidgets.QWizard):
    """The calibration wizard.

    Args:
        pipeline_or_devices: a ``sensors.pipeline.CapturePipeline`` (its devices and site mapping are
            used) or a sequence of ``Device`` (IMUs and one camera).
        camera_model: the camera's intrinsics (``PinholeCamera``); None: a 60 degree lens is assumed.
        parent: the main window.
        config: timings and thresholds.

    Signals:
        calibrated(object, object): the ``Calibration`` and the saved profile's ``Path`` (None if
            the last profile was taken as it was... then its path).
        prompted(object, object): what the performer is asked to do now, a ``PerformerPrompt``, and
            the ``ImuSite`` for ``PerformerPrompt.MOVE_SITE`` (else None); ``MOVE_FREELY`` when the
            wizard closes. Emitted when the request changes.
    """

    PAGE_DEVICES, PAGE_SITES, PAGE_CAMERA, PAGE_CAPTURE, PAGE_CHECK, PAGE_SAVE = range(6)
    calibrated = QtCore.Signal(object, object)
    prompted = QtCore.Signal(object, object)

    def __init__(self, pipeline_or_devices, camera_model: PinholeCamera | None, parent: QtWidgets.QWidget | None = None,
                 config: WizardConfig | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle("Calibration")
        self.setWizardStyle(QtWidgets.QWizard.ClassicStyle)
        self.setOption(QtWidgets.QWizard.NoBackButtonOnStartPage, True)
        self.resize(900, 640)
        self.config = config or WizardConfig()
        self.pipeline = None if isinstance(pipeline_or_devices, (list, tuple)) else pipeline_or_devices
        devices = list(pipeline_or_devices) if self.pipeline is None else list(self.pipeline.devices())
        self.all_devices: list[Device] = devices
        self.camera_model = camera_model
        self.selected_imus: list[Device] = [d for d in devices if d.kind == DeviceKind.IMU]
        self.camera_device: Device | None = next((d for d in devices if d.kind == DeviceKind.CAMERA), None)
        self.site_devices: list[Device | None] = [None] * NUM_IMUS
        pipeline_imus = getattr(self.pipeline, "imus", None) or {}
        for site, d in pipeline_imus.items():
            self.site_devices[int(site)] = d
        self.calibration: Calibration | None = None
        self.profile: CalibrationProfile | None = None
        self.profile_path: Path | None = None
        self.current_prompt: tuple[PerformerPrompt, ImuSite | None] | None = None
        self._started: list[Device] = []
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="calibration")
        self.feed = DeviceFeed(devices, self.config.history_s)

        self.pages: dict[int, _Page] = {
            self.PAGE_DEVICES: DevicesPage(self), self.PAGE_SITES: SitesPage(self), self.PAGE_CAMERA: CameraPage(self),
            self.PAGE_CAPTURE: CapturePage(self), self.PAGE_CHECK: CheckPage(self), self.PAGE_SAVE: SavePage(self),
        }
        for page_id, page in self.pages.items():
            self.setPage(page_id, page)
        self.timer = QtCore.QTimer(self)
        self.timer.setInterval(self.config.poll_ms)
        self.timer.timeout.connect(self._tick)
        self.timer.start()
        self.finished.connect(self._cleanup)

    # ---------------------------------------------------------------- results
    @property
    def profile_name(self) -> str | None:
        return None if self.profile is None else self.profile.name

    @property
    def assignment(self) -> dict[ImuSite, Device]:
        return {ImuSite(s): d for s, d in enumerate(self.site_devices) if d is not None}

    # ---------------------------------------------------------------- used by the pages
    def prompt(self, prompt: PerformerPrompt, site: ImuSite | None = None) -> None:
        """Ask the performer for ``prompt`` (emits ``prompted`` when it differs from the current request)."""
        request = (PerformerPrompt(prompt), None if site is None else ImuSite(site))
        if request != self.current_prompt:
            self.current_prompt = request
            log.debug("performer prompt: %s %s", request[0].value, "" if site is None else request[1].name.lower())
            self.prompted.emit(*request)

    def device_by_key(self, key: int) -> Device:
        return next(d for d in self.all_devices if id(d) == key)

    def select_devices(self, chosen: Sequence[Device]) -> None:
        """Use these devices; start the ones that are not running (they stay with their owner)."""
        self.selected_imus = [d for d in chosen if d.kind == DeviceKind.IMU]
        self.camera_device = next((d for d in chosen if d.kind == DeviceKind.CAMERA), None)
        self.site_devices = [d if d in self.selected_imus else None for d in self.site_devices]
        for d in chosen:
            if not d.running and d.state != DeviceState.STREAMING:
                d.start()
                self._started.append(d)

    def assign(self, device: Device, site: ImuSite | None) -> None:
        """Strap ``device`` to ``site`` (None: to no site); a device has at most one site."""
        self.site_devices = [None if d is device else d for d in self.site_devices]
        if site is not None:
            self.site_devices[int(site)] = device

    def imu_world_up(self) -> ImuWorldUp:
        ups = {imu_world_up_of(d, self.config.imu_world_up) for d in self.site_devices if d is not None}
        if len(ups) > 1:
            raise CalibrationError(f"the IMUs report in worlds with different vertical axes ({sorted(u.value for u in ups)}); "
                                   "calibrate sensors of one kind at a time")
        return ups.pop() if ups else self.config.imu_world_up

    def camera_for(self, frame: KeypointFrame) -> PinholeCamera:
        if self.camera_model is not None:
            return self.camera_model
        f = 0.5 * frame.width_px / np.tan(np.radians(30.0))
        return PinholeCamera(width_px=frame.width_px, height_px=frame.height_px, fx_px=f, fy_px=f,
                             cx_px=frame.width_px / 2, cy_px=frame.height_px / 2)

    @property
    def last_performer_height_m(self) -> float | None:
        """The height in the last saved profile (None when there is none or it has no height)."""
        try:
            path = last_profile_path()
            return None if path is None else load_profile(path).performer_height_m
        except VimcanError:
            return None

    def save(self, name: str, performer_height_m: float | None = None) -> Path:
        """Save the calibration as profile ``name`` (with the performer's height, metres, when
        known), hand it to the pipeline, and emit ``calibrated``."""
        if self.calibration is None:
            raise CalibrationError("nothing to save: the calibration has not been computed")
        used = [d for d in self.site_devices if d is not None]
        devices = [ProfileDevice(d.device_id, "imu", type(d).__name__) for d in used]
        if self.camera_device is not None:
            devices.append(ProfileDevice(self.camera_device.device_id, "camera", type(self.camera_device).__name__))
        profile = CalibrationProfile(
            name=name, calibration=self.calibration,
            site_devices=tuple(d.device_id if d is not None else None for d in self.site_devices),
            devices=tuple(devices), camera=self.camera_model,
            camera_device_id=None if self.camera_device is None else self.camera_device.device_id,
            performer_height_m=performer_height_m,
        )
        self.profile_path = save_profile(profile)
        self.profile = profile
        self._apply()
        return self.profile_path

    def use_last_profile(self) -> None:
        """Take the last saved profile as it is and close the wizard."""
        path = last_profile_path()
        if path is None:
            return
        try:
            profile = load_profile(path)
        except VimcanError as exc:
            self.pages[self.PAGE_DEVICES].last_label.setText(f"<span style='color:{hex_rgb(ERROR_RGB)}'>{exc}</span>")
            return
        remember_last_profile(path)
        self.profile, self.profile_path, self.calibration = profile, path, profile.calibration
        by_id = {d.device_id: d for d in self.all_devices}
        self.site_devices = [by_id.get(i) if i is not None else None for i in profile.site_devices]
        self._apply()
        self.accept()

    def _apply(self) -> None:
        setter = getattr(self.pipeline, "set_calibration", None)
        if callable(setter):
            setter(self.calibration)
        self.calibrated.emit(self.calibration, self.profile_path)

    # ---------------------------------------------------------------- timer and cleanup
    def _tick(self) -> None:
        try:
            self.feed.poll()
            page = self.currentPage()
            if isinstance(page, _Page):
                page.tick(time.monotonic())
        except Exception:  # keep the timer alive; the log shows what went wrong
            log.exception("calibration wizard update failed")

    def _cleanup(self, *_: object) -> None:
        self.prompt(PerformerPrompt.MOVE_FREELY)
        self.timer.stop()
        self.executor.shutdown(wait=False, cancel_futures=True)
        if self.pipeline is None:
            for d in self._started:
                d.stop()
        self._started.clear()
