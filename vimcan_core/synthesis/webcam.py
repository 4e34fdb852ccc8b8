"""A virtual webcam: random placement as a user would set one up, and 2D keypoints.

Placement (``WebcamConfig``): 2 to 5 m from the performer (horizontally), 0.8 to 1.8 m above
the floor, anywhere around them, looking at a point 0.8 to 1.2 m above the floor over the
performer's mean pelvis position, 50 to 75 degrees of horizontal field of view, 1280 x 720
or 640 x 480 pixels.

Keypoints are returned as the model takes them: ``T x 17 x 3`` = (x, y) normalised with
``vimcan_core.camera.normalize_keypoints`` and a confidence in [0, 1].
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from vimcan_core.camera import PinholeCamera, normalize_keypoints
from vimcan_core.skeleton import ANKLE_ABOVE_FLOOR_M, MIRROR, NUM_JOINTS
from vimcan_core.synthesis.noise import KEYPOINT_JOINT_SCALE, KeypointNoise


@dataclass(frozen=True)
class WebcamConfig:
    distance_m: tuple[float, float] = (2.0, 5.0)  # horizontal distance to the performer
    height_m: tuple[float, float] = (0.8, 1.8)  # camera height above the floor
    target_height_m: tuple[float, float] = (0.8, 1.2)  # height of the point looked at
    hfov_deg: tuple[float, float] = (50.0, 75.0)  # horizontal field of view
    resolutions: tuple[tuple[int, int], ...] = ((1280, 720), (640, 480))  # (width, height) pixels
    azimuth_deg: tuple[float, float] = (-180.0, 180.0)  # direction of the camera seen from the performer


def random_webcam(
    rng: np.random.Generator,
    joints_world_m: np.ndarray,
    config: WebcamConfig = WebcamConfig(),
    min_inside: float = 0.95,
    max_tries: int = 8,
) -> PinholeCamera:
    """A webcam placed at random around the motion (T x 17 x 3 world joints); placements that
    see fewer than ``min_inside`` of the joint positions are redrawn (up to ``max_tries``)."""
    centre = joints_world_m[:, 0].mean(axis=0)  # 3
    floor = float(np.min(joints_world_m[..., 1])) - ANKLE_ABOVE_FLOOR_M
    cam = None
    for _ in range(max_tries):  # as a user would: move the camera until the performer is in view
        az = np.radians(rng.uniform(*config.azimuth_deg))
        dist = rng.uniform(*config.distance_m)
        pos = np.array([centre[0] + dist * np.sin(az), floor + rng.uniform(*config.height_m), centre[2] + dist * np.cos(az)])
        target = np.array([centre[0], floor + rng.uniform(*config.target_height_m), centre[2]])
        w, h = config.resolutions[int(rng.integers(len(config.resolutions)))]
        cam = PinholeCamera.looking_at(pos, target, width_px=w, height_px=h, hfov_deg=float(rng.uniform(*config.hfov_deg)))
        px = cam.project(joints_world_m)
        inside = (px[..., 0] >= 0) & (px[..., 0] < w) & (px[..., 1] >= 0) & (px[..., 1] < h)
        if np.mean(inside) >= min_inside:
            break
    assert cam is not None
    return cam


def project_keypoints_px(camera: PinholeCamera, joints_world_m: np.ndarray) -> np.ndarray:
    """T x 17 x 3 world joints -> T x 17 x 2 pixels (points behind the camera are put far outside)."""
    px = camera.project(joints_world_m)
    return np.nan_to_num(px, nan=-10.0 * camera.width_px)


def synthesize_keypoints(
    camera: PinholeCamera, joints_world_m: np.ndarray, rng: np.random.Generator, noise: KeypointNoise
) -> np.ndarray:
    """2D detections of the joints as the model takes them: T x 17 x 3 (x_norm, y_norm, conf)."""
    px = project_keypoints_px(camera, joints_world_m)  # T x J x 2
    n = px.shape[0]
    conf = np.ones((n, NUM_JOINTS))
    if noise != KeypointNoise():  # any noise at all
        height_px = np.median(px[..., 1].max(axis=1) - px[..., 1].min(axis=1))
        height_px = float(np.clip(height_px, 10.0, 4.0 * camera.height_px))
        scale = np.asarray(KEYPOINT_JOINT_SCALE)[None, :, None]
        low = rng.random((n, NUM_JOINTS)) < noise.low_conf_prob
        conf = np.where(low, rng.uniform(0.0, 0.5, size=(n, NUM_JOINTS)), rng.uniform(*noise.conf_range, size=(n, NUM_JOINTS)))
        mult = scale * np.where(low, 3.0, 1.0)[..., None]
        white = rng.normal(size=(n, NUM_JOINTS, 2)) * noise.white_frac * height_px
        drift = np.zeros((n, NUM_JOINTS, 2))
        if noise.drift_frac > 0:
            rho = noise.drift_rho
            e = rng.normal(size=(n, NUM_JOINTS, 2)) * noise.drift_frac * height_px * np.sqrt(1 - rho * rho)
            drift[0] = rng.normal(size=(NUM_JOINTS, 2)) * noise.drift_frac * height_px
            for t in range(1, n):
                drift[t] = rho * drift[t - 1] + e[t]
        px = px + mult * (white + drift)
        out = rng.random((n, NUM_JOINTS)) < noise.outlier_prob
        if np.any(out):
            ang = rng.uniform(0, 2 * np.pi, size=(n, NUM_JOINTS))
            mag = rng.uniform(*noise.outlier_frac, size=(n, NUM_JOINTS)) * height_px
            shift = np.stack((np.cos(ang), np.sin(ang)), axis=-1) * mag[..., None]
            px = np.where(out[..., None], px + shift, px)
            conf = np.where(out, rng.uniform(0.1, 0.5, size=(n, NUM_JOINTS)), conf)
        if noise.swap_prob > 0:
            starts = np.flatnonzero(rng.random(n) < noise.swap_prob)
            swapped = np.zeros(n, dtype=bool)
            for s in starts:
                swapped[s : s + int(rng.integers(noise.swap_frames[0], noise.swap_frames[1] + 1))] = True
            px = np.where(swapped[:, None, None], px[:, list(MIRROR)], px)
            conf = np.where(swapped[:, None], conf[:, list(MIRROR)], conf)
    inside = (px[..., 0] >= 0) & (px[..., 0] < camera.width_px) & (px[..., 1] >= 0) & (px[..., 1] < camera.height_px)
    conf = np.where(inside, conf, np.minimum(conf, 0.1))
    kp = np.clip(normalize_keypoints(px, camera.width_px, camera.height_px), -3.0, 3.0)
    return np.concatenate((kp, conf[..., None]), axis=-1)


