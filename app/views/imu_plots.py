"""Small live plots of the six IMUs: the four quaternion components of each site over the last seconds.

History is a preallocated double-length ring (each sample written twice, at ``i`` and
``i + N``), so the last N samples are always one contiguous slice and no array is allocated
per frame. ``append`` stores, ``refresh`` redraws (call it from the UI timer).
"""

from __future__ import annotations

import numpy as np
import pyqtgraph as pg
from PySide6 import QtWidgets

from app.views.palette import BACKGROUND_RGB, CENTER_RGB, COMPONENT_RGB, LEFT_RGB, RIGHT_RGB, hex_rgb
from vimcan_core.skeleton import IMU_SITE_NAMES, NUM_IMUS

HISTORY = 300  # samples kept per site (10 s at the 30 Hz frame rate)
_SITE_RGB = (LEFT_RGB, RIGHT_RGB, LEFT_RGB, RIGHT_RGB, CENTER_RGB, CENTER_RGB)


class ImuPlots(QtWidgets.QWidget):
    """A 3 x 2 grid of plots, one per IMU site (``ImuSite`` order)."""

    def __init__(self, history: int = HISTORY, parent: QtWidgets.QWidget | None = None) -> None:
        super().__init__(parent)
        self._n = int(history)
        self._t = np.zeros(2 * self._n)  # 2N, seconds
        self._q = np.full((2 * self._n, NUM_IMUS, 4), np.nan)  # 2N x 6 x 4, wxyz
        self._present = np.zeros(NUM_IMUS, dtype=bool)
        self._i = 0  # next write position in [0, N)
        self._count = 0
        self._dirty = False

        self.layout_widget = pg.GraphicsLayoutWidget()
        self.layout_widget.setBackground(pg.mkColor(*BACKGROUND_RGB))
        self._plots: list[pg.PlotItem] = []
        self._curves: list[list[pg.PlotDataItem]] = []
        for site in range(NUM_IMUS):
            plot = self.layout_widget.addPlot(row=site // 2, col=site % 2)
            plot.setTitle(self._title(site, True), size="8pt")
            plot.setYRange(-1.05, 1.05, padding=0)
            plot.setMouseEnabled(False, False)
            plot.hideButtons()
            plot.setMenuEnabled(False)
            # no axes: the range is fixed ([-1, 1], the last 10 s) and axes cost most of the repaint
            plot.hideAxis("bottom")
            plot.hideAxis("left")
            plot.addItem(pg.InfiniteLine(pos=0.0, angle=0, pen=pg.mkPen(71, 85, 105, 160)))
            curves = [plot.plot(pen=pg.mkPen(COMPONENT_RGB[c], width=1.5)) for c in range(4)]
            self._plots.append(plot)
            self._curves.append(curves)

        legend = QtWidgets.QLabel(
            "  ".join(f"<span style='color:{hex_rgb(rgb)}'>&#9632; {name}</span>"
                      for name, rgb in zip("wxyz", COMPONENT_RGB)) + "  (quaternion, sensor to world, range ±1, last 10 s)")
        legend.setStyleSheet("color: #94a3b8; font-size: 8pt;")
        layout = QtWidgets.QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.layout_widget)
        layout.addWidget(legend)

    @staticmethod
    def _title(site: int, present: bool) -> str:
        name = IMU_SITE_NAMES[site].replace("_", " ")
        if present:
            return f"<span style='color:{hex_rgb(_SITE_RGB[site])}'>{name}</span>"
        return f"<span style='color:#ef4444'>{name} (missing)</span>"

    def append(self, time_s: float, quats_wxyz: np.ndarray, present: np.ndarray) -> None:
        """One frame: time, 6 x 4 quaternions (NaN rows where missing), 6 bool present."""
        i, n = self._i, self._n
        q = np.array(quats_wxyz, dtype=np.float64)  # 6 x 4
        # q and -q are the same rotation: keep each curve continuous by staying on the previous sample's side
        prev = self._q[(i - 1) % n]
        flip = np.nansum(q * prev, axis=-1) < 0.0
        q[flip] *= -1.0
        self._t[i] = self._t[i + n] = time_s
        self._q[i] = self._q[i + n] = q
        present = np.asarray(present, dtype=bool)
        if not np.array_equal(present, self._present):
            for site in range(NUM_IMUS):
                if present[site] != self._present[site]:
                    self._plots[site].setTitle(self._title(site, bool(present[site])), size="8pt")
            self._present[:] = present
        self._i = (i + 1) % n
        self._count = min(self._count + 1, n)
        self._dirty = True

    def refresh(self) -> None:
        """Redraw with what was appended since the last refresh (cheap when nothing changed)."""
        if not self._dirty or self._count == 0:
            return
        start = self._i + self._n - self._count
        t = self._t[start : self._i + self._n]
        t = t - t[-1]  # seconds before now, <= 0
        q = self._q[start : self._i + self._n]
        for site in range(NUM_IMUS):
            for c in range(4):
                self._curves[site][c].setData(t, q[:, site, c], connect="finite")
        self._dirty = False

    def clear(self) -> None:
        self._count = 0
        self._i = 0
        self._q[:] = np.nan
        for curves in self._curves:
            for curve in curves:
                curve.setData([], [])

    @property
    def samples(self) -> int:
        return self._count
