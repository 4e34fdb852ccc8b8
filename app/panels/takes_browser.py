"""The takes browser: recorded takes with date, duration and status; playback in the 3D view with
play / pause and a scrubber; re-export (BVH) and offline re-solve.

Takes are folders in the take format of ``vimcan_core.take`` (take.json + poses.csv ...). Reading a
take's poses for playback is quick (a CSV of a few thousand rows); exporting and re-solving can
take seconds to minutes, so they run in a worker thread that reports ``finished`` / ``errored``
through signals, and the user sees the result in the panel and the log.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Callable

import numpy as np
from PySide6 import QtCore, QtWidgets

from app.views.skeleton_view import place_on_floor
from vimcan_core.errors import VimcanError

log = logging.getLogger(__name__)

COLUMNS = ("Take", "Date", "Duration", "Frames", "Status")


@dataclass(frozen=True)
class TakeSummary:
    folder: Path
    name: str
    created: datetime | None
    duration_s: float
    frames: int
    status: str


def scan_takes(folder: Path) -> list[TakeSummary]:
    """The takes under ``folder`` (sub-folders with a take.json), newest first; unreadable ones are logged."""
    from vimcan_core.take import TAKE_JSON, read_meta

    folder = Path(folder)
    if not folder.is_dir():
        return []
    takes = []
    for sub in sorted(p for p in folder.iterdir() if (p / TAKE_JSON).is_file()):
        try:
            meta = read_meta(sub)
        except (VimcanError, OSError, ValueError) as exc:
            log.warning("skipping take %s: %s", sub, exc)
            continue
        try:
            created = datetime.fromisoformat(meta.created_utc).astimezone()
        except ValueError:
            created = None
        takes.append(TakeSummary(sub, meta.name, created, float(meta.duration_s), int(meta.frames),
                                 getattr(meta.status, "value", str(meta.status))))
    takes.sort(key=lambda t: (t.created is not None, t.created.timestamp() if t.created else 0.0, t.name),
               reverse=True)  # newest first, undated last
    return takes


@dataclass(frozen=True)
class PlaybackClip:
    """A take's poses ready to draw: T x 17 x 3 absolute world joints and their times."""

    time_s: np.ndarray  # T, seconds from the first frame
    joints_world_m: np.ndarray  # T x 17 x 3

    @property
    def num_frames(self) -> int:
        return int(self.time_s.shape[0])

    @property
    def duration_s(self) -> float:
        return float(self.time_s[-1]) if self.num_frames else 0.0


def load_clip(folder: Path, resolved: bool = False) -> PlaybackClip:
    """poses.csv (or poses_resolved.csv) of a take -> a PlaybackClip; frames with NaN joints are skipped."""
    from vimcan_core.take import POSES_CSV, RESOLVED_POSES_CSV, read_poses

    table = read_poses(Path(folder) / (RESOLVED_POSES_CSV if resolved else POSES_CSV))
    ok = np.all(np.isfinite(table.joints_m), axis=(1, 2))
    joints = np.stack([place_on_floor(j, r) for j, r in zip(table.joints_m[ok], table.root_m[ok])]) \
        if ok.any() else np.zeros((0, 17, 3))
    t = table.time_s[ok]
    return PlaybackClip(t - t[0] if len(t) else t, joints)


class _JobSignals(QtCore.QObject):
    finished = QtCore.Signal(str, object)  # job name, result
    errored = QtCore.Signal(str, str)  # job name, message


class TakesBrowser(QtWidgets.QWidget):
    """Signals: ``pose(ndarray 17 x 3)`` during playback, ``playback_started()``, ``playback_stopped()``,
    ``job_finished(str, object)`` and ``job_failed(str, str)`` for re-export / re-solve."""

    pose = QtCore.Signal(object)
    playback_started = QtCore.Signal()
    playback_stopped = QtCore.Signal()
    job_finished = QtCore.Signal(str, object)
    job_failed = QtCore.Signal(str, str)

    def __init__(self, folder: Path, export_fn: Callable[[Path], object] | None = None,
                 resolve_fn: Callable[[Path], object] | None = None,
                 parent: QtWidgets.QWidget | None = None) -> None:
        super().__init__(parent)
        self.folder = Path(folder)
        self._export_fn = export_fn or default_export
        self._resolve_fn = resolve_fn or default_resolve
        self.takes: list[TakeSummary] = []
        self.clip: PlaybackClip | None = None
        self.current_name: str | None = None
        self.frame = 0
        self._jobs: dict[str, threading.Thread] = {}
        self._signals = _JobSignals()
        self._signals.finished.connect(self._on_job_finished)
        self._signals.errored.connect(self._on_job_failed)

        self.folder_label = QtWidgets.QLabel()
        refresh = QtWidgets.QPushButton("Refresh")
        refresh.clicked.connect(self.refresh)
        self.table = QtWidgets.QTableWidget(0, len(COLUMNS))
        self.table.setHorizontalHeaderLabels(COLUMNS)
        self.table.verticalHeader().setVisible(False)
        self.table.setSelectionBehavior(QtWidgets.QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QtWidgets.QAbstractItemView.SelectionMode.SingleSelection)
        self.table.setEditTriggers(QtWidgets.QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.horizontalHeader().setSectionResizeMode(QtWidgets.QHeaderView.ResizeMode.ResizeToContents)
        self.table.horizontalHeader().setStretchLastSection(True)
        self.table.doubleClicked.connect(lambda *_: self.play_selected())

        self.play_button = QtWidgets.QPushButton("▶ Play")
        self.play_button.clicked.connect(self.toggle_play)
        self.stop_button = QtWidgets.QPushButton("■ Live")
        self.stop_button.setToolTip("Stop playback and go back to the live view")
        self.stop_button.clicked.connect(self.stop_playback)
        self.scrubber = QtWidgets.QSlider(QtCore.Qt.Orientation.Horizontal)
        self.scrubber.setEnabled(False)
        self.scrubber.valueChanged.connect(self.seek)
        self.time_label = QtWidgets.QLabel("–")
        self.resolved_box = QtWidgets.QCheckBox("re-solved poses")
        self.resolved_box.setToolTip("Play poses_resolved.csv (after a re-solve) instead of the live poses")
        self.resolved_box.setEnabled(False)
        self.table.itemSelectionChanged.connect(self._on_selection)
        self.export_button = QtWidgets.QPushButton("Re-export BVH")
        self.export_button.clicked.connect(lambda: self.run_job("export"))
        self.resolve_button = QtWidgets.QPushButton("Re-solve (offline model)")
        self.resolve_button.setToolTip("Run the bidirectional VIMCAN on the recorded inputs: smoother, not causal")
        self.resolve_button.clicked.connect(lambda: self.run_job("resolve"))
        self.job_label = QtWidgets.QLabel("")
        self.job_label.setWordWrap(True)

        top = QtWidgets.QHBoxLayout()
        top.addWidget(self.folder_label, 1)
        top.addWidget(refresh)
        controls = QtWidgets.QHBoxLayout()
        controls.addWidget(self.play_button)
        controls.addWidget(self.stop_button)
        controls.addWidget(self.scrubber, 1)
        controls.addWidget(self.time_label)
        controls.addWidget(self.resolved_box)
        jobs = QtWidgets.QHBoxLayout()
        jobs.addWidget(self.export_button)
        jobs.addWidget(self.resolve_button)
        jobs.addWidget(self.job_label, 1)
        layout = QtWidgets.QVBoxLayout(self)
        layout.setContentsMargins(4, 4, 4, 4)
        layout.addLayout(top)
        layout.addWidget(self.table, 1)
        layout.addLayout(controls)
        layout.addLayout(jobs)

        self._timer = QtCore.QTimer(self)
        self._timer.timeout.connect(self._advance)
        self.set_folder(self.folder)

    # ------------------------------------------------------------------ listing
    def set_folder(self, folder: Path) -> None:
        self.folder = Path(folder)
        self.folder_label.setText(f"Takes in {self.folder}")
        self.refresh()

    def refresh(self) -> None:
        self.takes = scan_takes(self.folder)
        self.table.setRowCount(len(self.takes))
        for row, t in enumerate(self.takes):
            date = t.created.strftime("%Y-%m-%d %H:%M:%S") if t.created else "?"
            values = (t.name, date, f"{t.duration_s:.1f} s", str(t.frames), t.status)
            for col, text in enumerate(values):
                self.table.setItem(row, col, QtWidgets.QTableWidgetItem(text))
        self._on_selection()

    def select(self, folder: Path) -> bool:
        for row, t in enumerate(self.takes):
            if t.folder.resolve() == Path(folder).resolve():
                self.table.selectRow(row)
                self._on_selection()  # also when the row was already selected
                return True
        return False

    def selected(self) -> TakeSummary | None:
        rows = self.table.selectionModel().selectedRows()
        return self.takes[rows[0].row()] if rows else None

    def _on_selection(self) -> None:
        from vimcan_core.take import RESOLVED_POSES_CSV

        take = self.selected()
        has_resolved = take is not None and (take.folder / RESOLVED_POSES_CSV).is_file()
        self.resolved_box.setEnabled(has_resolved)
        if not has_resolved:
            self.resolved_box.setChecked(False)

    # ------------------------------------------------------------------ playback
    def play_selected(self) -> bool:
        take = self.selected()
        if take is None:
            return False
        resolved = self.resolved_box.isChecked() and self.resolved_box.isEnabled()
        try:
            clip = load_clip(take.folder, resolved=resolved)
        except (VimcanError, OSError, ValueError) as exc:
            log.error("cannot play %s: %s", take.folder, exc)
            return False
        if clip.num_frames == 0:
            log.warning("take %s has no complete pose to play", take.name)
            return False
        self.clip = clip
        self.current_name = take.name + (" (re-solved)" if resolved else "")
        self.scrubber.blockSignals(True)
        self.scrubber.setRange(0, clip.num_frames - 1)
        self.scrubber.setValue(0)
        self.scrubber.blockSignals(False)
        self.scrubber.setEnabled(True)
        dt = float(np.median(np.diff(clip.time_s))) if clip.num_frames > 1 else 1 / 30
        self._timer.setInterval(max(5, int(round(dt * 1000))))
        self.playback_started.emit()
        self.seek(0)
        self._timer.start()
        self.play_button.setText("❚❚ Pause")
        return True

    def toggle_play(self) -> None:
        if self.clip is None:
            self.play_selected()
        elif self._timer.isActive():
            self._timer.stop()
            self.play_button.setText("▶ Play")
        else:
            if self.frame >= self.clip.num_frames - 1:
                self.seek(0)
            self._timer.start()
            self.play_button.setText("❚❚ Pause")

    @property
    def playing(self) -> bool:
        return self._timer.isActive()

    def stop_playback(self) -> None:
        was = self.clip is not None
        self._timer.stop()
        self.clip = None
        self.current_name = None
        self.scrubber.setEnabled(False)
        self.play_button.setText("▶ Play")
        self.time_label.setText("–")
        if was:
            self.playback_stopped.emit()

    @QtCore.Slot(int)
    def seek(self, frame: int) -> None:
        if self.clip is None:
            return
        self.frame = int(np.clip(frame, 0, self.clip.num_frames - 1))
        if self.scrubber.value() != self.frame:
            self.scrubber.blockSignals(True)
            self.scrubber.setValue(self.frame)
            self.scrubber.blockSignals(False)
        self.time_label.setText(f"{self.clip.time_s[self.frame]:5.1f} / {self.clip.duration_s:.1f} s")
        self.pose.emit(self.clip.joints_world_m[self.frame])

    def _advance(self) -> None:
        if self.clip is None:
            self._timer.stop()
            return
        if self.frame >= self.clip.num_frames - 1:
            self._timer.stop()
            self.play_button.setText("▶ Play")
            return
        self.seek(self.frame + 1)

    # ------------------------------------------------------------------ jobs
    def run_job(self, kind: str) -> bool:
        """Start "export" or "resolve" on the selected take in a worker thread."""
        take = self.selected()
        if take is None:
            self.job_label.setText("select a take first")
            return False
        if kind in self._jobs and self._jobs[kind].is_alive():
            self.job_label.setText(f"{kind} already running")
            return False
        fn = self._export_fn if kind == "export" else self._resolve_fn
        signals = self._signals

        def work() -> None:
            try:
                result = fn(take.folder)
            except Exception as exc:  # reported to the user, with the take's name
                log.debug("%s of %s failed", kind, take.folder, exc_info=True)
                signals.errored.emit(kind, f"{take.name}: {exc}")
            else:
                signals.finished.emit(kind, result)

        thread = threading.Thread(target=work, name=f"take-{kind}", daemon=True)
        self._jobs[kind] = thread
        self.job_label.setText(f"{kind} of {take.name}…")
        thread.start()
        return True

    def _on_job_finished(self, kind: str, result: object) -> None:
        self.job_label.setText(f"{kind} done: {result}")
        log.info("%s done: %s", kind, result)
        self.refresh()
        self.job_finished.emit(kind, result)

    def _on_job_failed(self, kind: str, message: str) -> None:
        self.job_label.setText(f"{kind} failed: {message}")
        log.error("%s failed: %s", kind, message)
        self.job_failed.emit(kind, message)

    def wait_for_jobs(self, timeout_s: float = 60.0) -> None:
        """Join the worker threads (for the headless run and tests; signals still arrive via the event loop)."""
        for t in list(self._jobs.values()):
            t.join(timeout_s)


def default_export(folder: Path, bvh_config=None) -> Path:
    """Rewrite the take's BVH and world-position CSV from poses.csv (``sensors.export.export_take``)."""
    from sensors.export import ExportOptions, export_take

    options = ExportOptions() if bvh_config is None else ExportOptions(bvh_config=bvh_config)
    written = export_take(folder, options)
    return written[0]


def default_resolve(folder: Path) -> Path:
    """Re-solve a take offline with the bidirectional model (``sensors.export.resolve_take``)."""
    from app.live import limit_torch_threads
    from sensors.export import resolve_take

    limit_torch_threads()  # the live view keeps running while this works in the background
    return Path(resolve_take(folder))
