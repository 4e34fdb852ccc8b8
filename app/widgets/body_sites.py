"""Two small painted widgets of the calibration wizard.

``BodySitesWidget``: a front view of the body with the six IMU sites as circles; a site shows
whether it has a sensor (its device id), whether it is the site being assigned, and glows while
its sensor moves. Clicking a site selects it.

``SkeletonSketch``: a stick figure from joint positions in the camera frame (x right, y down),
drawn orthographically; the wizard's check page shows the skeleton of the calibrated IMUs next to
the camera view.

Both are plain QPainter widgets updated with setters from the wizard's QTimer; no state of their
own beyond what they draw.
"""

from __future__ import annotations

import numpy as np
from PySide6 import QtCore, QtGui, QtWidgets

from app.views.palette import (
    BACKGROUND_RGB, CENTER_BONES, CENTER_RGB, LEFT_BONES, LEFT_RGB, OK_RGB, RIGHT_BONES, RIGHT_RGB, TEXT_RGB, WARN_RGB,
)
from vimcan_core.skeleton import IMU_SITE_NAMES, NUM_IMUS, ImuSite, default_rest_pose

#: where each site sits on the drawing, in the rest pose's front view (x: performer's right on the
#: viewer's left, as a camera facing the performer sees it), metres
_REST = default_rest_pose().positions()
SITE_RADIUS_PX = 13


def _rest_xy(joints: tuple[int, ...]) -> np.ndarray:
    return _REST[list(joints)].mean(axis=0)[:2]


class BodySitesWidget(QtWidgets.QWidget):
    """Front view of the body (arms out, as in the T-pose) with the six IMU sites.

    Signals:
        site_clicked(int): an ``ImuSite`` value.
    """

    site_clicked = QtCore.Signal(int)

    def __init__(self, parent: QtWidgets.QWidget | None = None) -> None:
        super().__init__(parent)
        self.setMinimumSize(260, 300)
        self._labels: list[str | None] = [None] * NUM_IMUS  # device shown at each site
        self._target: int | None = None  # the site being assigned
        self._moving: int | None = None  # the site whose sensor moves now
        from vimcan_core.skeleton import IMU_CHILD_JOINT, IMU_JOINT

        self._site_m = np.array([_rest_xy((IMU_JOINT[s], IMU_CHILD_JOINT[s])) for s in range(NUM_IMUS)])  # 6 x 2
        self._site_m[ImuSite.HEAD] = _REST[10, :2] + np.array([0.0, -0.02])

    # ----------------------------------------------------------------- setters
    def set_labels(self, labels: list[str | None]) -> None:
        """The device id shown at each site (None: no sensor assigned)."""
        self._labels = list(labels)
        self.update()

    def set_target(self, site: int | None) -> None:
        self._target = site
        self.update()

    def set_moving(self, site: int | None) -> None:
        if site != self._moving:
            self._moving = site
            self.update()

    @property
    def target(self) -> int | None:
        return self._target

    # ----------------------------------------------------------------- drawing
    def _to_px(self, xy_m: np.ndarray) -> QtCore.QPointF:
        """Rest-pose metres (viewer sees the performer's left on the right) -> widget pixels."""
        w, h = self.width(), self.height()
        scale = min(w / 2.0, h / 1.9) * 0.95
        x = w / 2 + xy_m[0] * scale
        y = h - 0.08 * scale - xy_m[1] * scale
        return QtCore.QPointF(x, y)

    def site_position_px(self, site: int) -> QtCore.QPointF:
        return self._to_px(self._site_m[site])

    def paintEvent(self, event: QtGui.QPaintEvent) -> None:  # noqa: N802 - Qt override
        from vimcan_core.skeleton import BONES

        p = QtGui.QPainter(self)
        p.setRenderHint(QtGui.QPainter.Antialiasing)
        p.fillRect(self.rect(), QtGui.QColor(*BACKGROUND_RGB))
        # the body: thick grey bones of the rest pose, the head as a circle
        pen = QtGui.QPen(QtGui.QColor(71, 85, 105), 14, QtCore.Qt.SolidLine, QtCore.Qt.RoundCap)
        p.setPen(pen)
        for a, b in BONES:
            p.drawLine(self._to_px(_REST[a, :2]), self._to_px(_REST[b, :2]))
        p.setBrush(QtGui.QColor(71, 85, 105))
        head = self._to_px(_REST[10, :2])
        p.drawEllipse(head, 16, 16)
        # the sites
        font = p.font()
        font.setPointSizeF(8.5)
        p.setFont(font)
        for s in range(NUM_IMUS):
            c = self.site_position_px(s)
            assigned = self._labels[s] is not None
            colour = QtGui.QColor(*OK_RGB) if assigned else QtGui.QColor(100, 116, 139)
            if s == self._moving:
                p.setPen(QtCore.Qt.NoPen)
                p.setBrush(QtGui.QColor(*WARN_RGB, 110))
                p.drawEllipse(c, SITE_RADIUS_PX + 9, SITE_RADIUS_PX + 9)
            p.setPen(QtGui.QPen(QtGui.QColor(*TEXT_RGB), 3 if s == self._target else 1))
            p.setBrush(colour)
            p.drawEllipse(c, SITE_RADIUS_PX, SITE_RADIUS_PX)
            p.setPen(QtGui.QColor(*TEXT_RGB))
            text = IMU_SITE_NAMES[s].replace("_", " ")
            if assigned:
                text += f"\n{self._labels[s]}"
            if s in (ImuSite.LEFT_LOWER_LEG, ImuSite.RIGHT_LOWER_LEG):
                # the legs are close together: their labels go on the outer side
                outer_right = self._site_m[s][0] > 0
                x0 = c.x() + SITE_RADIUS_PX + 4 if outer_right else c.x() - SITE_RADIUS_PX - 124
                align = QtCore.Qt.AlignLeft if outer_right else QtCore.Qt.AlignRight
                rect = QtCore.QRectF(x0, c.y() - 15, 120, 30)
                p.drawText(rect, align | QtCore.Qt.AlignVCenter, text)
            else:
                rect = QtCore.QRectF(c.x() - 60, c.y() + SITE_RADIUS_PX + 1, 120, 30)
                p.drawText(rect, QtCore.Qt.AlignHCenter | QtCore.Qt.AlignTop, text)
        p.end()

    def mousePressEvent(self, event: QtGui.QMouseEvent) -> None:  # noqa: N802 - Qt override
        pos = event.position()
        for s in range(NUM_IMUS):
            c = self.site_position_px(s)
            if (c.x() - pos.x()) ** 2 + (c.y() - pos.y()) ** 2 <= (SITE_RADIUS_PX + 4) ** 2:
                self.set_target(s)
                self.site_clicked.emit(s)
                return
        super().mousePressEvent(event)


class SkeletonSketch(QtWidgets.QWidget):
    """A stick figure: ``set_joints(joints_cam_m 17 x 3)`` (camera frame: x right, y down), or ``None``."""

    def __init__(self, title: str = "", parent: QtWidgets.QWidget | None = None) -> None:
        super().__init__(parent)
        self.setMinimumSize(240, 280)
        self._joints: np.ndarray | None = None
        self._title = title
        self._message = "waiting for the IMUs…"

    def set_joints(self, joints_cam_m: np.ndarray | None, message: str = "") -> None:
        self._joints = None if joints_cam_m is None else np.asarray(joints_cam_m, dtype=np.float64)
        self._message = message
        self.update()

    def paintEvent(self, event: QtGui.QPaintEvent) -> None:  # noqa: N802 - Qt override
        p = QtGui.QPainter(self)
        p.setRenderHint(QtGui.QPainter.Antialiasing)
        p.fillRect(self.rect(), QtGui.QColor(*BACKGROUND_RGB))
        p.setPen(QtGui.QColor(*TEXT_RGB))
        p.drawText(QtCore.QRectF(6, 4, self.width() - 12, 20), QtCore.Qt.AlignLeft, self._title)
        if self._joints is None or not np.all(np.isfinite(self._joints)):
            p.drawText(self.rect(), QtCore.Qt.AlignCenter, self._message or "no skeleton")
            p.end()
            return
        xy = self._joints[:, :2] - self._joints[0, :2]  # pelvis-centred, camera x right, y down
        scale = min(self.width(), self.height()) / 2.2
        centre = np.array([self.width() / 2, self.height() / 2 + 10])
        px = xy * scale + centre
        for bones, rgb in ((CENTER_BONES, CENTER_RGB), (LEFT_BONES, LEFT_RGB), (RIGHT_BONES, RIGHT_RGB)):
            p.setPen(QtGui.QPen(QtGui.QColor(*rgb), 4, QtCore.Qt.SolidLine, QtCore.Qt.RoundCap))
            for a, b in bones:
                p.drawLine(QtCore.QPointF(*px[a]), QtCore.QPointF(*px[b]))
        if self._message:
            p.setPen(QtGui.QColor(*TEXT_RGB))
            p.drawText(QtCore.QRectF(6, self.height() - 24, self.width() - 12, 20), QtCore.Qt.AlignLeft, self._message)
        p.end()
