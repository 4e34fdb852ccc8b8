"""Record / stop with a take name, an optional countdown and a running timer.

The panel drives a ``Recorder`` (anything with ``start(take_name) -> Path``, ``stop() -> Path``
and ``recording``); the main window hands it the takes engineer's recorder bound to the live
pipeline. The countdown runs on a ``QTimer`` (the UI never sleeps).
"""

from __future__ import annotations

import logging
import re
import time
from datetime import datetime
from enum import Enum
from pathlib import Path
from typing import Protocol

from PySide6 import QtCore, QtWidgets

from app.views.palette import ERROR_RGB, hex_rgb

log = logging.getLogger(__name__)


class Recorder(Protocol):
    recording: bool

    def start(self, take_name: str) -> Path: ...

    def stop(self) -> Path: ...


class RecordState(Enum):
    IDLE = "idle"
    COUNTDOWN = "countdown"
    RECORDING = "recording"


def default_take_name(now: datetime | None = None) -> str:
    return (now or datetime.now()).strftime("take_%Y%m%d_%H%M%S")


def sanitize_take_name(name: str) -> str:
    """A take name usable as a folder name on every OS (letters, digits, ``-``, ``_``, ``.``)."""
    cleaned = re.sub(r"[^A-Za-z0-9_.-]+", "_", name.strip()).strip("._")
    return cleaned or default_take_name()


class RecordPanel(QtWidgets.QWidget):
    """Signals: ``started(Path)`` when a take begins, ``stopped(Path)`` when it is written."""

    started = QtCore.Signal(object)
    stopped = QtCore.Signal(object)

    def __init__(self, recorder: Recorder | None = None, parent: QtWidgets.QWidget | None = None) -> None:
        super().__init__(parent)
        self._recorder = recorder
        self.state = RecordState.IDLE
        self._t0 = 0.0
        self._countdown_left = 0
        self.last_take: Path | None = None

        self.name_edit = QtWidgets.QLineEdit(default_take_name())
        self.name_edit.setPlaceholderText("take name")
        self.countdown_spin = QtWidgets.QSpinBox()
        self.countdown_spin.setRange(0, 10)
        self.countdown_spin.setSuffix(" s countdown")
        self.record_button = QtWidgets.QPushButton("●  Record")
        self.record_button.setObjectName("recordButton")
        self.record_button.setCheckable(True)
        self.record_button.setToolTip("Start / stop recording (Ctrl+R)")
        self.record_button.clicked.connect(self.toggle)
        self.timer_label = QtWidgets.QLabel("00:00.0")
        self.timer_label.setStyleSheet("font-size: 20pt; font-family: monospace;")
        self.state_label = QtWidgets.QLabel("ready")

        row = QtWidgets.QHBoxLayout()
        row.addWidget(QtWidgets.QLabel("Take"))
        row.addWidget(self.name_edit, 1)
        row2 = QtWidgets.QHBoxLayout()
        row2.addWidget(self.record_button)
        row2.addWidget(self.countdown_spin)
        row2.addStretch(1)
        row2.addWidget(self.timer_label)
        layout = QtWidgets.QVBoxLayout(self)
        layout.setContentsMargins(6, 6, 6, 6)
        layout.addLayout(row)
        layout.addLayout(row2)
        layout.addWidget(self.state_label)

        self._tick = QtCore.QTimer(self)
        self._tick.setInterval(100)
        self._tick.timeout.connect(self._on_tick)
        self._countdown = QtCore.QTimer(self)
        self._countdown.setInterval(1000)
        self._countdown.timeout.connect(self._on_countdown)

    def set_recorder(self, recorder: Recorder | None) -> None:
        if self.state == RecordState.RECORDING:
            self.stop()
        self._recorder = recorder
        self.record_button.setEnabled(recorder is not None)

    @property
    def recorder(self) -> Recorder | None:
        return self._recorder

    @property
    def elapsed_s(self) -> float:
        return time.monotonic() - self._t0 if self.state == RecordState.RECORDING else 0.0

    # ------------------------------------------------------------------ actions
    @QtCore.Slot()
    def toggle(self) -> None:
        """Record when idle; stop (or cancel the countdown) otherwise (the Ctrl+R shortcut)."""
        if self.state == RecordState.IDLE:
            if self.countdown_spin.value() > 0:
                self._begin_countdown(self.countdown_spin.value())
            else:
                self.start()
        elif self.state == RecordState.COUNTDOWN:
            self._countdown.stop()
            self._set_idle("countdown cancelled")
        else:
            self.stop()

    def start(self) -> Path | None:
        """Start a take now (no countdown)."""
        if self._recorder is None:
            log.error("recording is not available: no recorder is attached to the pipeline")
            self._set_idle("no recorder")
            return None
        name = sanitize_take_name(self.name_edit.text())
        try:
            folder = self._recorder.start(name)
        except Exception as exc:  # a full disk or a bad folder: tell the user, stay usable
            log.error("could not start take %r: %s", name, exc)
            self._set_idle(f"error: {exc}")
            return None
        self.state = RecordState.RECORDING
        self._t0 = time.monotonic()
        self._tick.start()
        self.record_button.setChecked(True)
        self.record_button.setText("■  Stop")
        self.name_edit.setEnabled(False)
        self.state_label.setText(f"recording to {folder}")
        self.state_label.setStyleSheet(f"color: {hex_rgb(ERROR_RGB)};")
        log.info("recording take %s", folder)
        self.started.emit(Path(folder))
        return Path(folder)

    def stop(self) -> Path | None:
        if self.state != RecordState.RECORDING or self._recorder is None:
            return None
        elapsed = self.elapsed_s
        try:
            folder = Path(self._recorder.stop())
        except Exception as exc:
            log.error("could not finish the take: %s", exc)
            self._set_idle(f"error: {exc}")
            return None
        self.last_take = folder
        self._set_idle(f"saved {folder.name} ({elapsed:.1f} s)")
        self.name_edit.setText(default_take_name())
        log.info("take saved: %s (%.1f s)", folder, elapsed)
        self.stopped.emit(folder)
        return folder

    # ------------------------------------------------------------------ internals
    def _begin_countdown(self, seconds: int) -> None:
        self.state = RecordState.COUNTDOWN
        self._countdown_left = seconds
        self.record_button.setChecked(True)
        self.record_button.setText("✕  Cancel")
        self.timer_label.setText(f"-{seconds}")
        self.state_label.setText(f"recording in {seconds} s…")
        self._countdown.start()

    def _on_countdown(self) -> None:
        self._countdown_left -= 1
        if self._countdown_left > 0:
            self.timer_label.setText(f"-{self._countdown_left}")
            self.state_label.setText(f"recording in {self._countdown_left} s…")
            return
        self._countdown.stop()
        self.state = RecordState.IDLE
        self.start()

    def _on_tick(self) -> None:
        t = self.elapsed_s
        self.timer_label.setText(f"{int(t // 60):02d}:{t % 60:04.1f}")

    def _set_idle(self, message: str) -> None:
        self.state = RecordState.IDLE
        self._tick.stop()
        self.record_button.setChecked(False)
        self.record_button.setText("●  Record")
        self.name_edit.setEnabled(True)
        self.state_label.setText(message)
        self.state_label.setStyleSheet("")
