"""Pinhole camera model and the keypoint normalisation the model expects.

Camera frame (OpenCV): x right, y down, z forward (the optical axis), metres. Pixel
coordinates: origin at the top-left corner of the image, x right, y down.

Model input normalisation (as VideoPose3D): ``u_norm = 2 u / W - 1``,
``v_norm = 2 v / W - H / W``: the image width maps to [-1, 1] and the aspect ratio is kept.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from vimcan_core.rotations import quat_rotate, quat_conj, matrix_to_quat


@dataclass(frozen=True)
class PinholeCamera:
    """Intrinsics and pose of a camera.

    ``quat_cam_from_world`` (wxyz) rotates world vectors into the camera frame;
    ``position_world_m`` is the camera centre in the world frame (Y up).
    """

    width_px: int = 640
    height_px: int = 480
    fx_px: float = 554.3  # 60 degree horizontal field of view at 640 px
    fy_px: float = 554.3
    cx_px: float = 320.0
    cy_px: float = 240.0
    quat_cam_from_world: tuple[float, float, float, float] = (0.0, 1.0, 0.0, 0.0)  # looking along -Z
    position_world_m: tuple[float, float, float] = (0.0, 1.2, 3.5)

    @staticmethod
    def looking_at(
        position_world_m: np.ndarray,
        target_world_m: np.ndarray,
        width_px: int = 640,
        height_px: int = 480,
        hfov_deg: float = 60.0,
    ) -> "PinholeCamera":
        """A level camera (no roll) at ``position_world_m`` looking at ``target_world_m``."""
        pos = np.asarray(position_world_m, dtype=np.float64)
        fwd = np.asarray(target_world_m, dtype=np.float64) - pos
        fwd /= np.linalg.norm(fwd)
        right = np.cross(fwd, [0.0, 1.0, 0.0])  # world up is +Y; camera x = forward x up
        right /= np.linalg.norm(right)
        down = np.cross(fwd, right)
        rot_cam_from_world = np.stack((right, down, fwd))  # rows: camera axes in world coords
        f = 0.5 * width_px / np.tan(np.radians(hfov_deg) / 2)
        q = matrix_to_quat(rot_cam_from_world)
        return PinholeCamera(
            width_px=width_px, height_px=height_px, fx_px=float(f), fy_px=float(f),
            cx_px=width_px / 2, cy_px=height_px / 2,
            quat_cam_from_world=tuple(float(x) for x in q), position_world_m=tuple(float(x) for x in pos),
        )

    def world_to_camera(self, points_world_m: np.ndarray) -> np.ndarray:
        """... x 3 world points -> ... x 3 camera-frame points (metres)."""
        rel = np.asarray(points_world_m, dtype=np.float64) - np.asarray(self.position_world_m)
        return quat_rotate(np.asarray(self.quat_cam_from_world), rel)

    def camera_to_world(self, points_cam_m: np.ndarray) -> np.ndarray:
        """... x 3 camera-frame points -> ... x 3 world points."""
        return quat_rotate(quat_conj(np.asarray(self.quat_cam_from_world)), points_cam_m) + np.asarray(self.position_world_m)

    def project(self, points_world_m: np.ndarray) -> np.ndarray:
        """... x 3 world points -> ... x 2 pixel coordinates."""
        return self.project_camera(self.world_to_camera(points_world_m))

    def project_camera(self, points_cam_m: np.ndarray) -> np.ndarray:
        """... x 3 camera-frame points -> ... x 2 pixels (points behind the camera give NaN)."""
        p = np.asarray(points_cam_m, dtype=np.float64)
        z = np.where(p[..., 2] > 1e-6, p[..., 2], np.nan)
        u = self.fx_px * p[..., 0] / z + self.cx_px
        v = self.fy_px * p[..., 1] / z + self.cy_px
        return np.stack((u, v), axis=-1)


def normalize_keypoints(keypoints_px: np.ndarray, width_px: int, height_px: int) -> np.ndarray:
    """... x 2 pixels -> ... x 2 normalised screen coordinates (width to [-1, 1])."""
    kp = np.asarray(keypoints_px, dtype=np.float64)
    return kp / width_px * 2.0 - np.array([1.0, height_px / width_px])


def denormalize_keypoints(keypoints_norm: np.ndarray, width_px: int, height_px: int) -> np.ndarray:
    """Inverse of ``normalize_keypoints``."""
    kp = np.asarray(keypoints_norm, dtype=np.float64)
    return (kp + np.array([1.0, height_px / width_px])) * width_px / 2.0
