"""Colours and the dark theme shared by every view and panel.

Left and right sides of the body always have the same colours, in the 3D view, the 2D view and
the IMU plots, so that a user learns them once (left = sky blue, right = orange).
"""

from __future__ import annotations

from vimcan_core.skeleton import BONES, CENTER_JOINTS, LEFT_JOINTS, RIGHT_JOINTS

# RGB 0-255; chosen far apart in hue so that tests (and eyes) can tell them apart on the dark background.
LEFT_RGB: tuple[int, int, int] = (56, 189, 248)
RIGHT_RGB: tuple[int, int, int] = (249, 115, 22)
CENTER_RGB: tuple[int, int, int] = (226, 232, 240)
JOINT_RGB: tuple[int, int, int] = (250, 250, 250)
FRUSTUM_RGB: tuple[int, int, int] = (234, 179, 8)
GRID_RGBA: tuple[int, int, int, int] = (100, 116, 139, 90)
BACKGROUND_RGB: tuple[int, int, int] = (17, 20, 26)
PANEL_RGB: tuple[int, int, int] = (30, 34, 42)
TEXT_RGB: tuple[int, int, int] = (226, 232, 240)
ACCENT_RGB: tuple[int, int, int] = (56, 189, 248)
WARN_RGB: tuple[int, int, int] = (245, 158, 11)
ERROR_RGB: tuple[int, int, int] = (239, 68, 68)
OK_RGB: tuple[int, int, int] = (34, 197, 94)

#: one colour per quaternion component (w, x, y, z) in the IMU plots
COMPONENT_RGB: tuple[tuple[int, int, int], ...] = ((226, 232, 240), (239, 68, 68), (34, 197, 94), (59, 130, 246))


def side_of_bone(parent: int, child: int) -> str:
    """'left', 'right' or 'center' for a (parent, child) bone, by its child joint."""
    if child in LEFT_JOINTS:
        return "left"
    if child in RIGHT_JOINTS:
        return "right"
    assert child in CENTER_JOINTS or parent in CENTER_JOINTS
    return "center"


#: the 16 bones split by side, each a tuple of (parent, child) pairs
LEFT_BONES: tuple[tuple[int, int], ...] = tuple(b for b in BONES if side_of_bone(*b) == "left")
RIGHT_BONES: tuple[tuple[int, int], ...] = tuple(b for b in BONES if side_of_bone(*b) == "right")
CENTER_BONES: tuple[tuple[int, int], ...] = tuple(b for b in BONES if side_of_bone(*b) == "center")


def rgbf(rgb: tuple[int, ...], alpha: float = 1.0) -> tuple[float, float, float, float]:
    """0-255 RGB -> 0-1 RGBA floats (for pyqtgraph.opengl items)."""
    return (rgb[0] / 255.0, rgb[1] / 255.0, rgb[2] / 255.0, alpha)


def hex_rgb(rgb: tuple[int, ...]) -> str:
    return "#{:02x}{:02x}{:02x}".format(*rgb[:3])


STYLE_SHEET = f"""
QWidget {{ background-color: {hex_rgb(PANEL_RGB)}; color: {hex_rgb(TEXT_RGB)}; font-size: 10pt; }}
QMainWindow, QDockWidget {{ background-color: {hex_rgb(BACKGROUND_RGB)}; }}
QDockWidget::title {{ background: #262b35; padding: 4px 8px; font-weight: bold; }}
QGroupBox {{ border: 1px solid #3a4150; border-radius: 6px; margin-top: 14px; padding-top: 6px; }}
QGroupBox::title {{ subcontrol-origin: margin; left: 8px; padding: 0 4px; color: #94a3b8; }}
QPushButton {{ background: #334155; border: 1px solid #475569; border-radius: 5px; padding: 5px 12px; }}
QPushButton:hover {{ background: #3f4f66; }}
QPushButton:pressed {{ background: #1e293b; }}
QPushButton:disabled {{ color: #64748b; background: #262b35; }}
QPushButton#recordButton {{ background: #b91c1c; border-color: #ef4444; font-weight: bold; }}
QPushButton#recordButton:checked {{ background: #7f1d1d; }}
QLineEdit, QSpinBox, QComboBox, QPlainTextEdit, QTableWidget, QListWidget {{
    background: #11141a; border: 1px solid #3a4150; border-radius: 4px; selection-background-color: #0e7490; }}
QHeaderView::section {{ background: #262b35; color: #94a3b8; border: none; padding: 4px; }}
QTableWidget {{ gridline-color: #2a303b; }}
QSlider::groove:horizontal {{ height: 6px; background: #334155; border-radius: 3px; }}
QSlider::handle:horizontal {{ background: {hex_rgb(ACCENT_RGB)}; width: 14px; margin: -5px 0; border-radius: 7px; }}
QStatusBar {{ background: #11141a; color: #94a3b8; }}
QMenuBar {{ background: #11141a; }}
QMenuBar::item:selected, QMenu::item:selected {{ background: #334155; }}
QToolBar {{ background: #11141a; border: none; spacing: 6px; padding: 3px; }}
QLabel#poseSourceLabel {{ font-weight: bold; padding: 3px 10px; border-radius: 4px; }}
QTabWidget::pane {{ border: 1px solid #3a4150; }}
QTabBar::tab {{ background: #262b35; padding: 5px 12px; }}
QTabBar::tab:selected {{ background: #334155; }}
"""


def apply_dark_theme(app) -> None:  # app: QApplication (kept untyped: no Qt import at module level here)
    """Fusion style, a dark palette and the studio style sheet."""
    from PySide6 import QtGui

    app.setStyle("Fusion")
    pal = QtGui.QPalette()
    roles = {
        QtGui.QPalette.ColorRole.Window: PANEL_RGB,
        QtGui.QPalette.ColorRole.WindowText: TEXT_RGB,
        QtGui.QPalette.ColorRole.Base: (17, 20, 26),
        QtGui.QPalette.ColorRole.AlternateBase: (38, 43, 53),
        QtGui.QPalette.ColorRole.Text: TEXT_RGB,
        QtGui.QPalette.ColorRole.Button: (51, 65, 85),
        QtGui.QPalette.ColorRole.ButtonText: TEXT_RGB,
        QtGui.QPalette.ColorRole.Highlight: (14, 116, 144),
        QtGui.QPalette.ColorRole.HighlightedText: (255, 255, 255),
        QtGui.QPalette.ColorRole.ToolTipBase: PANEL_RGB,
        QtGui.QPalette.ColorRole.ToolTipText: TEXT_RGB,
    }
    for role, rgb in roles.items():
        pal.setColor(role, QtGui.QColor(*rgb))
    app.setPalette(pal)
    app.setStyleSheet(STYLE_SHEET)


def titled_box(title: str, widget):  # -> QWidget (Qt imported inside: this module is imported without Qt too)
    """``widget`` under a small upper-case caption."""
    from PySide6 import QtWidgets

    box = QtWidgets.QWidget()
    label = QtWidgets.QLabel(title.upper())
    label.setStyleSheet("color: #94a3b8; font-size: 8pt; font-weight: bold; letter-spacing: 1px; padding: 2px 4px;")
    layout = QtWidgets.QVBoxLayout(box)
    layout.setContentsMargins(2, 2, 2, 2)
    layout.setSpacing(2)
    layout.addWidget(label)
    layout.addWidget(widget, 1)
    return box


def stacked(*widgets):  # -> QWidget
    """The widgets one above the other, without margins."""
    from PySide6 import QtWidgets

    box = QtWidgets.QWidget()
    layout = QtWidgets.QVBoxLayout(box)
    layout.setContentsMargins(0, 0, 0, 0)
    for w in widgets:
        layout.addWidget(w)
    return box
