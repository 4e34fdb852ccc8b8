"""The 2D view: the camera preview image (when there is one) with the 17 keypoints drawn on it.

Pixel coordinates as ``vimcan_core.camera``: origin top-left, x right, y down (the view's Y
axis is inverted to match). Keypoints below ``MIN_CONFIDENCE`` are not connected.
"""

from __future__ import annotations

import numpy as np
import pyqtgraph as pg
from PySide6 import QtCore, QtGui, QtWidgets

from app.views.palette import (
    BACKGROUND_RGB, CENTER_BONES, CENTER_RGB, LEFT_BONES, LEFT_RGB, RIGHT_BONES, RIGHT_RGB, WARN_RGB,
)
from vimcan_core.skeleton import NUM_JOINTS

MIN_CONFIDENCE = 0.3  # below this a keypoint is drawn faint and its bones are hidden
LINE_WIDTH_PX = 3


class KeypointsView(QtWidgets.QWidget):
    """``set_frame(keypoints_px, confidence, size, image_bgr)``; ``set_missing(reason)`` when the camera is lost."""

    def __init__(self, parent: QtWidgets.QWidget | None = None) -> None:
        super().__init__(parent)
        self.plot = pg.PlotWidget(background=pg.mkColor(*BACKGROUND_RGB))
        self.plot.setMenuEnabled(False)
        self.plot.hideButtons()
        for name in ("left", "bottom"):
            self.plot.getPlotItem().hideAxis(name)
        vb = self.plot.getViewBox()
        vb.invertY(True)
        vb.setAspectLocked(True)
        vb.setMouseEnabled(False, False)
        self._size_px = (640, 480)

        self._image = pg.ImageItem(axisOrder="row-major")
        self._image.setVisible(False)
        self.plot.addItem(self._image)
        self._border = pg.PlotCurveItem(pen=pg.mkPen((71, 85, 105), width=1))
        self.plot.addItem(self._border)

        self._bones = {"left": LEFT_BONES, "right": RIGHT_BONES, "center": CENTER_BONES}
        self._bone_index = {s: np.array(b, dtype=np.intp).reshape(-1) for s, b in self._bones.items()}
        self._xy = {s: np.zeros((2, 2 * len(b))) for s, b in self._bones.items()}  # 2 x 2N per side
        self._connect = {s: np.zeros(2 * len(b), dtype=bool) for s, b in self._bones.items()}  # 2N per side
        colours = {"left": LEFT_RGB, "right": RIGHT_RGB, "center": CENTER_RGB}
        self._curves = {}
        for side in ("center", "left", "right"):
            curve = pg.PlotCurveItem(pen=pg.mkPen(colours[side], width=LINE_WIDTH_PX), antialias=True)
            self.plot.addItem(curve)
            self._curves[side] = curve
        self._brushes_on = [pg.mkBrush(250, 250, 250, 230)] * NUM_JOINTS
        self._scatter = pg.ScatterPlotItem(size=7, pen=pg.mkPen(17, 20, 26), brush=self._brushes_on[0])
        self.plot.addItem(self._scatter)
        self._faint = pg.mkBrush(250, 250, 250, 60)

        self._message = pg.TextItem("", color=WARN_RGB, anchor=(0.5, 0.5))
        self.plot.addItem(self._message)
        self._message.setVisible(False)

        layout = QtWidgets.QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.plot)
        self._set_image_size((640, 480))
        self.shown_keypoints_px: np.ndarray | None = None  # 17 x 2, the keypoints drawn now (image pixels)
        self.shown_confidence: np.ndarray | None = None  # 17
        self.shown_image_bgr: np.ndarray | None = None  # H x W x 3, the preview image drawn now

    def set_frame(
        self,
        keypoints_px: np.ndarray | None,  # 17 x 2, pixels
        confidence: np.ndarray | None,  # 17, in [0, 1]
        image_size_px: tuple[int, int] | None,  # (width, height)
        image_bgr: np.ndarray | None = None,  # H x W x 3 uint8
    ) -> None:
        if image_size_px is not None and tuple(image_size_px) != self._size_px:
            self._set_image_size(tuple(image_size_px))
        if image_bgr is not None:
            # uint8 RGB without levels takes pyqtgraph's direct path (no per-pixel rescale)
            self._image.setImage(np.ascontiguousarray(image_bgr[..., ::-1]), autoLevels=False)
            self._image.setRect(QtCore.QRectF(0, 0, self._size_px[0], self._size_px[1]))
            self._image.setVisible(True)
        else:
            self._image.setVisible(False)
        self.shown_image_bgr = image_bgr
        if keypoints_px is None:
            self.set_missing("camera lost: no keypoints")
            return
        self._message.setVisible(False)
        kp = np.asarray(keypoints_px, dtype=np.float64)
        conf = np.ones(NUM_JOINTS) if confidence is None else np.asarray(confidence, dtype=np.float64)
        self.shown_keypoints_px, self.shown_confidence = kp.copy(), conf.copy()
        seen = np.isfinite(kp).all(axis=1) & (conf >= MIN_CONFIDENCE)  # 17
        for side, curve in self._curves.items():
            idx = self._bone_index[side]
            xy = self._xy[side]
            xy[0] = kp[idx, 0]
            xy[1] = kp[idx, 1]
            ok = seen[idx[0::2]] & seen[idx[1::2]]  # per bone
            con = self._connect[side]
            con[0::2] = ok
            con[1::2] = False
            curve.setData(np.nan_to_num(xy[0]), np.nan_to_num(xy[1]), connect=con)
        if not seen.any():
            self._message.setText("nobody in view")
            self._message.setPos(self._size_px[0] / 2, self._size_px[1] / 2)
            self._message.setVisible(True)
        brushes = [self._brushes_on[0] if s else self._faint for s in seen]
        pts = np.where((np.isfinite(kp).all(axis=1) & (conf > 0))[:, None], kp, -1e4)  # confidence 0: not drawn
        self._scatter.setData(pos=pts, brush=brushes)

    def set_missing(self, reason: str) -> None:
        """Hide the keypoints and say why in the middle of the view."""
        self.shown_keypoints_px = self.shown_confidence = None
        for curve in self._curves.values():
            curve.setData([], [])
        self._scatter.setData([], [])
        self._message.setText(reason)
        self._message.setPos(self._size_px[0] / 2, self._size_px[1] / 2)
        self._message.setVisible(True)

    def set_overlay_visible(self, visible: bool) -> None:
        """Show or hide the keypoints and bones drawn over the image (the image stays)."""
        for item in (*self._curves.values(), self._scatter):
            item.setVisible(visible)

    def image_to_widget_px(self, points_px: np.ndarray) -> np.ndarray:
        """Image pixels (N x 2, x right, y down) -> pixels of this widget (N x 2), as in ``grab_rgb``."""
        vb = self.plot.getViewBox()
        out = np.empty((len(points_px), 2))
        for i, (x, y) in enumerate(np.asarray(points_px, dtype=np.float64)):
            in_view = self.plot.mapFromScene(vb.mapViewToScene(QtCore.QPointF(float(x), float(y))))
            p = self.plot.viewport().mapTo(self, in_view)
            out[i] = (p.x(), p.y())
        return out

    def grab_rgb(self) -> np.ndarray:
        """The widget as drawn now: H x W x 3 uint8 RGB."""
        image = self.grab().toImage().convertToFormat(QtGui.QImage.Format.Format_RGB888)
        h, w, stride = image.height(), image.width(), image.bytesPerLine()
        buf = np.frombuffer(image.constBits(), dtype=np.uint8, count=h * stride).reshape(h, stride)
        return buf[:, : 3 * w].reshape(h, w, 3).copy()

    def _set_image_size(self, size_px: tuple[int, int]) -> None:
        self._size_px = (int(size_px[0]), int(size_px[1]))
        w, h = self._size_px
        self._border.setData([0, w, w, 0, 0], [0, 0, h, h, 0])
        self.plot.getViewBox().setRange(xRange=(0, w), yRange=(0, h), padding=0.02)


__all__ = ["KeypointsView", "MIN_CONFIDENCE"]
