"""The performer's height: scaling the network's skeleton to the person's real size.

The network sees normalised 2D keypoints and bone orientations, neither of which tells a small
person near the camera from a tall one further away, so the size of its skeleton is a guess
(on the validation subjects the per-clip size is off by 2.5-3 %). A motion-capture user knows
the performer's height; given it, the predicted joints are scaled about the pelvis so that the
skeleton the BVH writer builds from them (``bvh.writer.estimate_rest_pose``: median bone
lengths, T-pose directions, ankles 8 cm above the floor) stands exactly that tall (validation
P1 drops by 1.5-2.5 mm: ``vimcan eval --known-height``). The live pose stage and the offline re-solve use
the same measure, so a take's live and re-solved BVH skeletons agree.

    scaled, factor = scale_to_height(joints_m, 1.78)          # a whole take (re-solve, eval)
    scaler = LiveHeightScaler(1.78); joints = scaler(joints)   # frame by frame (live)
"""

from __future__ import annotations

import math
from collections import deque

import numpy as np

from vimcan_core.bvh.writer import estimate_rest_pose, writable_frames
from vimcan_core.errors import VimcanError
from vimcan_core.skeleton import ANKLE_ABOVE_FLOOR_M

#: heights a performer may be given with, metres (a child to a very tall adult)
MIN_HEIGHT_M = 0.9
MAX_HEIGHT_M = 2.4
#: the live scaler measures the skeleton over this many recent frames (10 s at 30 Hz) ...
LIVE_WINDOW_FRAMES = 300
#: ... keeping one frame in this many of them (a measurement of 300 frames took ~6 ms, of 150 ~3 ms:
#: a pause in the pose thread) ...
LIVE_KEEP_EVERY = 2
#: ... once every this many frames (the factor changes by well under 1 % between updates)
LIVE_UPDATE_FRAMES = 30


def check_height_m(height_m: float, where: str = "performer height") -> float:
    """``height_m`` as a float, or a ``VimcanError`` naming ``where`` when it is not a human height."""
    try:
        h = float(height_m)
    except (TypeError, ValueError):
        raise VimcanError(f"{where}: expected a height in metres, got {height_m!r}") from None
    if not math.isfinite(h) or not MIN_HEIGHT_M <= h <= MAX_HEIGHT_M:
        raise VimcanError(
            f"{where}: {h:g} m is not a performer height (expected {MIN_HEIGHT_M:g} to {MAX_HEIGHT_M:g} m; "
            "give centimetres divided by 100)"
        )
    return h


def height_from_cm(height_cm: float, where: str = "--height-cm") -> float:
    """A height given in centimetres (a command-line option) -> metres, or a ``VimcanError`` in
    centimetres naming ``where``."""
    try:
        cm = float(height_cm)
    except (TypeError, ValueError):
        raise VimcanError(f"{where}: expected a height in centimetres, got {height_cm!r}") from None
    if not math.isfinite(cm) or not MIN_HEIGHT_M * 100 <= cm <= MAX_HEIGHT_M * 100:
        raise VimcanError(f"{where}: {cm:g} cm is not a performer height "
                          f"(expected {MIN_HEIGHT_M * 100:g} to {MAX_HEIGHT_M * 100:g} cm)")
    return cm / 100.0


def skeleton_height_m(joints_m: np.ndarray) -> float:
    """Floor-to-head height of the rigid skeleton a BVH of these joints gets (T x 17 x 3, metres;
    frames with NaN or collapsed bones are skipped). NaN when no frame is usable."""
    joints_m = np.asarray(joints_m, dtype=np.float64)
    ok = writable_frames(joints_m)
    if not np.any(ok):
        return float("nan")
    return estimate_rest_pose(joints_m[ok]).height()


def scale_about_root(joints_m: np.ndarray, factor: float) -> np.ndarray:
    """Joints (... x 17 x 3) scaled by ``factor`` about the root joint (index 0)."""
    joints_m = np.asarray(joints_m, dtype=np.float64)
    root = joints_m[..., :1, :]
    return root + (joints_m - root) * factor


def height_factor(height_m: float, measured_m: float) -> float:
    """The scale that turns a skeleton ``measured_m`` tall (``skeleton_height_m``) into one
    ``height_m`` tall: the body scales, the ankle's fixed height above the floor does not.
    1 when the measurement is unusable (NaN, or no taller than the ankle)."""
    body = measured_m - ANKLE_ABOVE_FLOOR_M
    if not math.isfinite(body) or body <= 0.1:
        return 1.0
    return (height_m - ANKLE_ABOVE_FLOOR_M) / body


def scale_to_height(joints_m: np.ndarray, height_m: float) -> tuple[np.ndarray, float]:
    """(joints scaled about the root so that ``skeleton_height_m`` of them is ``height_m``, the
    factor). The factor is 1 when no frame is usable."""
    factor = height_factor(check_height_m(height_m), skeleton_height_m(joints_m))
    return scale_about_root(joints_m, factor), factor


class LiveHeightScaler:
    """Frame-by-frame scaling to a known height: ``scaler(joints_17x3) -> scaled joints``.

    The skeleton is measured (``skeleton_height_m``) over every ``keep_every``-th of the last
    ``window`` unscaled frames, every ``update_every`` frames; the first frame is measured on its
    own, so the factor is never left at 1. Owned by one thread (the pose stage); ``reset`` at a new take."""

    def __init__(self, height_m: float, window: int = LIVE_WINDOW_FRAMES, update_every: int = LIVE_UPDATE_FRAMES,
                 keep_every: int = LIVE_KEEP_EVERY) -> None:
        self.height_m = check_height_m(height_m)
        self._keep_every = max(1, int(keep_every))
        self._frames: deque[np.ndarray] = deque(maxlen=max(1, int(window) // self._keep_every))
        self._update_every = max(1, int(update_every))
        self._since_update = 0
        self._count = 0
        self.factor = 1.0

    def reset(self) -> None:
        self._frames.clear()
        self._since_update = 0
        self._count = 0
        self.factor = 1.0

    def __call__(self, joints_m: np.ndarray) -> np.ndarray:
        """17 x 3 joints (any origin) -> the same scaled about the root by the current factor."""
        joints_m = np.asarray(joints_m, dtype=np.float64)
        if np.all(np.isfinite(joints_m)):
            first = self._count == 0
            if self._count % self._keep_every == 0:
                self._frames.append(joints_m - joints_m[:1])
            self._count += 1
            self._since_update += 1
            if first or self._since_update >= self._update_every:
                self._since_update = 0
                self.factor = height_factor(self.height_m, skeleton_height_m(np.stack(self._frames)))
        return scale_about_root(joints_m, self.factor)
