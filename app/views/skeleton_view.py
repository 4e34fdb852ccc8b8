"""The live 3D skeleton: floor grid, bones coloured by side, joints, the camera frustum.

World frame (``vimcan_core.skeleton``): Y up, metres. pyqtgraph's GL scene is Z up, so every
point goes through ``world_to_gl``: (x, y, z)_world -> (x, -z, y)_gl, a proper rotation (the
performer's left stays on +X, their facing direction +Z becomes -Y). Items are built once and
updated with ``setData`` on arrays preallocated here.
"""

from __future__ import annotations

import logging

import numpy as np
import pyqtgraph.opengl as gl
from PySide6 import QtCore, QtGui, QtWidgets

from app.views.palette import (
    BACKGROUND_RGB, CENTER_BONES, CENTER_RGB, FRUSTUM_RGB, GRID_RGBA, JOINT_RGB, LEFT_BONES, LEFT_RGB,
    RIGHT_BONES, RIGHT_RGB, rgbf,
)
from vimcan_core.camera import PinholeCamera
from vimcan_core.skeleton import ANKLE_ABOVE_FLOOR_M, NUM_JOINTS, Joint

log = logging.getLogger(__name__)

#: world (Y up) -> GL scene (Z up), applied as ``points @ WORLD_TO_GL.T``
WORLD_TO_GL = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, -1.0], [0.0, 1.0, 0.0]])

BONE_WIDTH_PX = 5.0
JOINT_SIZE_PX = 9.0
FRUSTUM_DEPTH_M = 0.5  # how far the drawn frustum reaches in front of the camera
FOLLOW_SMOOTHING = 0.15
VIEW_CENTRE_GL = (0.0, -0.8, 0.9)  # between the performer and the camera, at chest height
VIEW_DISTANCE_M = 5.2
VIEW_ELEVATION_DEG = 16.0
VIEW_AZIMUTH_DEG = -32.0  # from the performer's front-left (GL -Y is the facing direction)  # fraction of the distance to the performer the view centre moves per update


def place_on_floor(joints_rel_m: np.ndarray, root_world_m: np.ndarray | None) -> np.ndarray:
    """Root-relative J x 3 joints -> absolute world joints for drawing; without a (finite) root,
    the lower ankle is put ``ANKLE_ABOVE_FLOOR_M`` above the floor under the origin."""
    joints = np.asarray(joints_rel_m, dtype=np.float64)
    if root_world_m is not None and np.all(np.isfinite(root_world_m)):
        return joints + np.asarray(root_world_m, dtype=np.float64)
    lift = ANKLE_ABOVE_FLOOR_M - min(joints[Joint.LEFT_ANKLE, 1], joints[Joint.RIGHT_ANKLE, 1])
    return joints + np.array([0.0, lift, 0.0])


def world_to_gl(points_world_m: np.ndarray) -> np.ndarray:
    """... x 3 world points (Y up) -> ... x 3 GL scene points (Z up)."""
    return np.asarray(points_world_m, dtype=np.float64) @ WORLD_TO_GL.T


def camera_frustum_world(camera: PinholeCamera, depth_m: float = FRUSTUM_DEPTH_M) -> np.ndarray:
    """The frustum's 8 edges as 16 x 3 world points (pairs): apex to 4 corners, then the far rectangle."""
    w, h = camera.width_px, camera.height_px
    corners_px = np.array([[0.0, 0.0], [w, 0.0], [w, h], [0.0, h]])
    corners_cam = np.column_stack((
        (corners_px[:, 0] - camera.cx_px) / camera.fx_px * depth_m,
        (corners_px[:, 1] - camera.cy_px) / camera.fy_px * depth_m,
        np.full(4, depth_m),
    ))  # 4 x 3, camera frame
    corners_world = camera.camera_to_world(corners_cam)  # 4 x 3
    apex = np.asarray(camera.position_world_m, dtype=np.float64)
    segments = []
    for i in range(4):
        segments += [apex, corners_world[i]]
    for i in range(4):
        segments += [corners_world[i], corners_world[(i + 1) % 4]]
    return np.array(segments)  # 16 x 3


class SkeletonGLWidget(gl.GLViewWidget):
    """The GL widget (mouse: left-drag orbits, wheel zooms, middle-drag pans) with projection helpers."""

    def project_gl(self, points_gl: np.ndarray) -> np.ndarray:
        """N x 3 GL scene points -> N x 2 framebuffer pixels (x right, y down), as the last paint drew them."""
        w, h = self.deviceWidth(), self.deviceHeight()
        proj = self.projectionMatrix((0, 0, w, h), (0, 0, w, h))
        mvp = np.array((proj * self.viewMatrix()).data(), dtype=np.float64).reshape(4, 4).T  # column-major -> row-major
        pts = np.asarray(points_gl, dtype=np.float64)
        clip = np.column_stack((pts, np.ones(len(pts)))) @ mvp.T  # N x 4
        ndc = clip[:, :3] / clip[:, 3:4]
        return np.column_stack(((ndc[:, 0] + 1.0) * 0.5 * w, (1.0 - ndc[:, 1]) * 0.5 * h))


class SkeletonView(QtWidgets.QWidget):
    """The 3D view: ``set_pose`` with world joints, ``set_camera`` for the frustum."""

    def __init__(self, parent: QtWidgets.QWidget | None = None) -> None:
        super().__init__(parent)
        self.gl_widget = SkeletonGLWidget(self)
        self.gl_widget.setBackgroundColor(QtGui.QColor(*BACKGROUND_RGB))
        self.reset_view()
        self.gl_widget.setMinimumSize(320, 240)
        self._follow = False
        self._has_pose = False
        self._dimmed = False

        self._grid = gl.GLGridItem()
        self._grid.setSize(10, 10)
        self._grid.setSpacing(0.5, 0.5)
        self._grid.setColor(GRID_RGBA)
        self.gl_widget.addItem(self._grid)

        # one line item per side, positions preallocated: 2 points per bone
        self._side_bones = {"left": LEFT_BONES, "right": RIGHT_BONES, "center": CENTER_BONES}
        self._side_pos = {side: np.zeros((2 * len(b), 3)) for side, b in self._side_bones.items()}  # 2N x 3, GL
        self._side_index = {
            side: np.array(bones, dtype=np.intp).reshape(-1) for side, bones in self._side_bones.items()
        }
        colours = {"left": LEFT_RGB, "right": RIGHT_RGB, "center": CENTER_RGB}
        self._side_rgb = colours
        self._lines: dict[str, gl.GLLinePlotItem] = {}
        for side in ("center", "left", "right"):
            item = gl.GLLinePlotItem(pos=self._side_pos[side], color=rgbf(colours[side]), width=BONE_WIDTH_PX,
                                     mode="lines", antialias=False, glOptions="opaque")
            item.setVisible(False)
            self.gl_widget.addItem(item)
            self._lines[side] = item
        self._joints_gl = np.zeros((NUM_JOINTS, 3))  # J x 3, GL scene
        self._joint_colours = np.tile(np.array(rgbf(JOINT_RGB)), (NUM_JOINTS, 1))  # J x 4
        self._joints = gl.GLScatterPlotItem(pos=self._joints_gl, color=self._joint_colours, size=JOINT_SIZE_PX,
                                            pxMode=True)
        self._joints.setGLOptions("translucent")
        self._joints.setVisible(False)
        self.gl_widget.addItem(self._joints)

        self._camera: PinholeCamera | None = None  # the camera whose frustum is drawn
        self._frustum_pos = np.zeros((16, 3))  # 16 x 3, GL
        self._frustum = gl.GLLinePlotItem(pos=self._frustum_pos, color=rgbf(FRUSTUM_RGB, 0.9), width=2.0,
                                          mode="lines", antialias=True, glOptions="translucent")
        self._frustum.setVisible(False)
        self.gl_widget.addItem(self._frustum)

        self._overlay = QtWidgets.QLabel(self)
        self._overlay.setStyleSheet("background: rgba(17,20,26,170); color: #e2e8f0; padding: 4px 8px;"
                                    " border-radius: 4px; font-weight: bold;")
        self._overlay.setAttribute(QtCore.Qt.WidgetAttribute.WA_TransparentForMouseEvents)
        self._overlay.hide()

        layout = QtWidgets.QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.gl_widget)

    # ----------------------------------------------------------------- updates
    def set_pose(self, joints_world_m: np.ndarray | None, dimmed: bool = False) -> None:
        """Show a pose: 17 x 3 joints in the world frame (Y up, metres, absolute); None hides it.

        ``dimmed`` draws the bones translucent (a pose of lower confidence, e.g. IMUs alone)."""
        if joints_world_m is None or not np.all(np.isfinite(joints_world_m)):
            self.clear_pose()
            return
        joints = np.asarray(joints_world_m, dtype=np.float64)
        if joints.shape != (NUM_JOINTS, 3):
            raise ValueError(f"SkeletonView.set_pose: expected {NUM_JOINTS} x 3 joints, got {joints.shape}")
        self._joints_gl[:] = world_to_gl(joints)
        restyle = dimmed != self._dimmed or not self._has_pose
        self._dimmed = dimmed
        alpha = 0.45 if dimmed else 1.0
        for side, item in self._lines.items():
            self._side_pos[side][:] = self._joints_gl[self._side_index[side]]
            if restyle:
                item.setGLOptions("translucent" if dimmed else "opaque")
                item.setData(pos=self._side_pos[side], color=rgbf(self._side_rgb[side], alpha))
                item.setVisible(True)
            else:
                item.setData(pos=self._side_pos[side])
        self._joints.setData(pos=self._joints_gl)
        self._joints.setVisible(True)
        self._has_pose = True
        if self._follow:
            self._move_centre_towards(self._joints_gl[Joint.PELVIS])
        self.gl_widget.update()

    def clear_pose(self) -> None:
        for item in self._lines.values():
            item.setVisible(False)
        self._joints.setVisible(False)
        self._has_pose = False
        self.gl_widget.update()

    def set_camera(self, camera: PinholeCamera | None) -> None:
        """Draw the camera's frustum (None hides it)."""
        self._camera = camera
        if camera is None:
            self._frustum.setVisible(False)
            return
        self._frustum_pos[:] = world_to_gl(camera_frustum_world(camera))
        self._frustum.setData(pos=self._frustum_pos)
        self._frustum.setVisible(True)

    @property
    def camera(self) -> PinholeCamera | None:
        """The camera whose frustum is drawn (None: none is)."""
        return self._camera

    def set_follow(self, follow: bool) -> None:
        """Keep the performer's pelvis at the centre of the view (orbit and zoom still work)."""
        self._follow = bool(follow)
        if self._follow and self._has_pose:
            self._move_centre_towards(self._joints_gl[Joint.PELVIS], smoothing=1.0)

    @property
    def follow(self) -> bool:
        return self._follow

    def set_overlay_text(self, text: str | None, rgb: tuple[int, int, int] | None = None) -> None:
        """A label in the top-left corner (the pose source); not part of the GL framebuffer."""
        if not text:
            self._overlay.hide()
            return
        colour = "#e2e8f0" if rgb is None else "#{:02x}{:02x}{:02x}".format(*rgb)
        self._overlay.setStyleSheet(f"background: rgba(17,20,26,190); color: {colour}; padding: 4px 8px;"
                                    " border-radius: 4px; font-weight: bold;")
        self._overlay.setText(text)
        self._overlay.adjustSize()
        self._overlay.move(10, 10)
        self._overlay.show()
        self._overlay.raise_()

    def reset_view(self) -> None:
        """The default three-quarter view: the performer's front and the camera both in sight."""
        self.gl_widget.setCameraPosition(pos=QtGui.QVector3D(*VIEW_CENTRE_GL), distance=VIEW_DISTANCE_M,
                                         elevation=VIEW_ELEVATION_DEG, azimuth=VIEW_AZIMUTH_DEG)

    # ----------------------------------------------------------------- for tests and screenshots
    def grab_rgb(self) -> np.ndarray:
        """Render and read back the GL framebuffer: H x W x 3 uint8 RGB."""
        image = self.gl_widget.grabFramebuffer().convertToFormat(QtGui.QImage.Format.Format_RGB888)
        h, w, stride = image.height(), image.width(), image.bytesPerLine()
        buf = np.frombuffer(image.constBits(), dtype=np.uint8, count=h * stride).reshape(h, stride)
        return buf[:, : 3 * w].reshape(h, w, 3).copy()

    def project_world(self, points_world_m: np.ndarray) -> np.ndarray:
        """N x 3 world points -> N x 2 framebuffer pixels under the current view."""
        return self.gl_widget.project_gl(world_to_gl(points_world_m))

    @property
    def shown_joints_world_m(self) -> np.ndarray | None:
        """The joints currently drawn (J x 3, world), None when the skeleton is hidden."""
        return (self._joints_gl @ WORLD_TO_GL).copy() if self._has_pose else None

    # ----------------------------------------------------------------- internals
    def _move_centre_towards(self, target_gl: np.ndarray, smoothing: float = FOLLOW_SMOOTHING) -> None:
        centre = self.gl_widget.opts["center"]
        cur = np.array([centre.x(), centre.y(), centre.z()])
        goal = np.array([target_gl[0], target_gl[1], cur[2]])  # keep the height: follow on the floor plane
        new = cur + smoothing * (goal - cur)
        self.gl_widget.opts["center"] = QtGui.QVector3D(*new)
