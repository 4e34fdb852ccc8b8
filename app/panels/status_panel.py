"""Inference status: what produces the pose (a prominent badge), on which backend, how fast, how
late, how many frames were dropped, and what the inputs are doing (camera lost, IMU missing).

The badge is amber when the pose is the simulation's ground truth (no model weights), green for
the VIMCAN model, red when the pose is frozen; the text says which, so colour is never the only cue.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

import numpy as np
from PySide6 import QtCore, QtWidgets

from app.views.palette import ERROR_RGB, OK_RGB, WARN_RGB, hex_rgb
from vimcan_core.skeleton import IMU_SITE_NAMES


class InputHealth(Enum):
    """How complete the inputs of the latest pose were."""

    ALL = "all inputs"  # camera and six IMUs
    DEGRADED = "degraded"  # camera lost or some IMUs missing: the pose goes on with lower confidence
    FROZEN = "frozen"  # nothing arrives: the pose is held and the reason shown
    WAITING = "waiting"  # no frame yet


@dataclass(frozen=True)
class InferenceStatus:
    """Everything the panel shows, gathered by the main window once per refresh."""

    source: str = "no pose source"  # PoseFrame.source, e.g. "simulation ground truth"
    is_model: bool = False  # True when a network produces the pose
    backend: str = "–"  # e.g. "cpu / fused C kernel" or "cuda / mamba_ssm"
    model: str = "–"  # e.g. "vimcan-t-streaming.pt (streaming, 246k parameters)"
    poses_per_s: float = 0.0
    latency_median_ms: float | None = None
    latency_p95_ms: float | None = None
    dropped_frames: int = 0  # frames the pipeline skipped because the pose stage was behind
    ui_skipped_frames: int = 0  # poses computed but never drawn (the window was busy): display only
    health: InputHealth = InputHealth.WAITING
    health_detail: str = ""  # e.g. "camera lost: running on IMUs (lower confidence)"
    confidence: float | None = None
    body_size: str = "–"  # e.g. "performer 1.78 m (network x 1.06)" or "the network's guess (no height given)"


#: below this mean keypoint confidence the camera sees nobody (frames still arrive)
MIN_PERSON_CONFIDENCE = 0.1


def input_health(pose, synced=None) -> tuple[InputHealth, str]:
    """What the latest inputs say, in the words shown to the user.

    ``pose``: the ``PoseFrame``; ``synced``: its ``SyncedFrame`` when known, to tell a lost camera
    from a camera that sees nobody (frames arrive, every keypoint confidence near 0)."""
    imu = np.asarray(pose.imu_present, dtype=bool)
    camera_frames = bool(pose.camera_present)
    person = camera_frames
    if camera_frames and synced is not None and synced.keypoint_confidence is not None:
        person = float(np.mean(synced.keypoint_confidence)) >= MIN_PERSON_CONFIDENCE
    if not person and not imu.any():
        return InputHealth.FROZEN, "all inputs lost: pose frozen (check the camera and the IMUs)"
    missing = [IMU_SITE_NAMES[i].replace("_", " ") for i in np.flatnonzero(~imu)]
    parts = []
    if not camera_frames:
        parts.append("camera lost: running on the IMUs (lower confidence)")
    elif not person:
        parts.append("nobody in view: running on the IMUs (lower confidence)")
    if missing:
        parts.append("IMU missing: " + ", ".join(missing))
    if parts:
        return InputHealth.DEGRADED, "; ".join(parts)
    return InputHealth.ALL, "camera and 6 IMUs"


def badge_colour(status: InferenceStatus) -> tuple[int, int, int]:
    if status.health == InputHealth.FROZEN:
        return ERROR_RGB
    return OK_RGB if status.is_model else WARN_RGB


#: lines kept for the Inputs line: the longest usual text (camera lost, five IMUs missing, the model's
#: own words, the confidence) wraps to three at the dock's default width
INPUTS_LINES = 3


class WrappingLabel(QtWidgets.QLabel):
    """A word-wrapped label that keeps the height of all its lines.

    Qt's layouts honour a wrapped label's height-for-width only up to a top-level window; inside a
    dock (the Inference panel) the dock hands out height from the label's one-line size hint, and a
    long text (five IMUs missing, plus the model's own words) was cut to one line. This label sets its
    minimum height to the height its text needs at its current width, whenever the text or the
    width changes, so the dock has to make room (taking it from the Devices table above).

    ``min_lines`` lines are always kept, so that a text that comes and goes (an IMU that drops out
    for a second) does not make the docks and the 3D view jump; only a longer text grows it."""

    def __init__(self, text: str = "", parent: QtWidgets.QWidget | None = None, min_lines: int = 1) -> None:
        super().__init__(text, parent)
        self.setWordWrap(True)
        self.min_lines = min_lines
        self._fit_height()

    def setText(self, text: str) -> None:  # noqa: N802 (Qt's name)
        if text != self.text():
            super().setText(text)
            self._fit_height()

    def resizeEvent(self, event) -> None:  # noqa: N802 (Qt's name)
        super().resizeEvent(event)
        if event.size().width() != event.oldSize().width():
            self._fit_height()

    def _fit_height(self) -> None:
        margins = self.contentsMargins()
        kept_px = self.min_lines * self.fontMetrics().lineSpacing() + margins.top() + margins.bottom()
        needed_px = max(kept_px, self.heightForWidth(max(1, self.width())))
        if needed_px != self.minimumHeight():
            self.setMinimumHeight(needed_px)


class StatusPanel(QtWidgets.QWidget):
    """A compact panel: the pose-source badge on top, then a small table of numbers."""

    def __init__(self, parent: QtWidgets.QWidget | None = None) -> None:
        super().__init__(parent)
        self.source_label = QtWidgets.QLabel("waiting for poses…")
        self.source_label.setObjectName("poseSourceLabel")
        self.source_label.setWordWrap(True)
        self._values: dict[str, QtWidgets.QLabel] = {}
        form = QtWidgets.QFormLayout()
        form.setHorizontalSpacing(14)
        top_left = QtCore.Qt.AlignmentFlag.AlignLeft | QtCore.Qt.AlignmentFlag.AlignTop  # each title level with its value
        for key, title in (("model", "Model"), ("backend", "Backend"), ("rate", "Poses / s"), ("latency", "Latency"),
                           ("dropped", "Dropped frames"), ("size", "Body size"), ("inputs", "Inputs")):
            label = WrappingLabel("–", min_lines=INPUTS_LINES if key == "inputs" else 1)
            label.setAlignment(top_left)
            self._values[key] = label
            title_label = QtWidgets.QLabel(title)
            title_label.setAlignment(top_left)
            form.addRow(title_label, label)
        layout = QtWidgets.QVBoxLayout(self)
        layout.setContentsMargins(6, 6, 6, 6)
        layout.addWidget(self.source_label)
        layout.addLayout(form)
        layout.addStretch(1)
        self.status = InferenceStatus()
        self.show_status(self.status)

    def show_status(self, status: InferenceStatus) -> None:
        self.status = status
        rgb = badge_colour(status)
        kind = "MODEL" if status.is_model else "GROUND TRUTH"
        text = f"Pose source: {status.source}"
        if status.health == InputHealth.FROZEN:
            text = f"FROZEN: {status.health_detail or 'no input'}"
        elif not status.is_model and status.source != "no pose source":
            text += f"  [{kind}: not the model]"
        self.source_label.setText(text)
        self.source_label.setStyleSheet(
            f"background: {hex_rgb(rgb)}; color: #11141a; font-weight: bold; padding: 4px 10px; border-radius: 4px;")
        v = self._values
        v["backend"].setText(status.backend)
        v["model"].setText(status.model)
        v["rate"].setText(f"{status.poses_per_s:.1f}")
        if status.latency_median_ms is None:
            v["latency"].setText("–")
        else:
            p95 = "" if status.latency_p95_ms is None else f" (p95 {status.latency_p95_ms:.0f} ms)"
            v["latency"].setText(f"{status.latency_median_ms:.0f} ms median{p95}")
        skipped = f"  (window skipped {status.ui_skipped_frames})" if status.ui_skipped_frames else ""
        v["dropped"].setText(f"{status.dropped_frames}{skipped}")
        v["dropped"].setStyleSheet(f"color: {hex_rgb(WARN_RGB)};" if status.dropped_frames else "")
        v["size"].setText(status.body_size)
        detail = status.health_detail or status.health.value
        if status.confidence is not None and status.health != InputHealth.WAITING:
            detail += f" · confidence {status.confidence:.2f}"
        v["inputs"].setText(detail)
        health_rgb = {InputHealth.ALL: OK_RGB, InputHealth.DEGRADED: WARN_RGB, InputHealth.FROZEN: ERROR_RGB}
        v["inputs"].setStyleSheet(f"color: {hex_rgb(health_rgb[status.health])};"
                                  if status.health in health_rgb else "")

    def summary(self) -> str:
        """One line for the status bar."""
        s = self.status
        lat = "–" if s.latency_median_ms is None else f"{s.latency_median_ms:.0f} ms"
        backend = "" if s.backend in s.source else f" | {s.backend}"
        return f"{s.source}{backend} | {s.poses_per_s:.1f} poses/s | latency {lat} | dropped {s.dropped_frames}"
