"""MediaPipe Pose (BlazePose, 33 landmarks) mapped to the 17 Human3.6M joints the model takes.

We use MediaPipe 0.10.21's legacy ``mediapipe.solutions.pose.Pose`` with ``model_complexity=1``
(the "full" model, which ships inside the wheel, so it runs offline) in video (tracking) mode.
MediaPipe is imported when an estimator is built, never at module import.

The 33 -> 17 mapping (BlazePose index in brackets; the H36M joints are those of
``vimcan_core.skeleton.Joint``). Limb joints are BlazePose's own. The five centre joints are
built from midpoints so that they sit where the training data put them: the model learns from
CMU motion retargeted to H36M-17 (``vimcan_core.retarget``, Daz names: thorax = the ``neck``
joint at the base of the neck, neck = the ``head`` joint at the top of the neck, head = the
middle of the eyes). Measured on those skeletons, in units of the pelvis-to-thorax length
("torso"): the spine is 0.38 of the way up, the thorax 0.09 above the shoulder line, the neck
0.12 above the thorax.

=============  ==========================================================================
H36M joint     from BlazePose
=============  ==========================================================================
pelvis         midpoint of the hips [23, 24]
r/l hip        right hip [24] / left hip [23]
r/l knee       [26] / [25]
r/l ankle      [28] / [27]
thorax         midpoint of the shoulders [11, 12], moved up the torso by
               ``THORAX_ABOVE_SHOULDERS`` (0.09) times the pelvis-to-shoulders vector
spine          ``SPINE_FRACTION`` (0.38) of the way from pelvis to thorax
neck           (H36M "Neck/Nose", here the top of the neck) midpoint of the thorax and the
               middle of the ears [7, 8]; in a frontal view that lands about 0.12 torso above
               the thorax, as in the training data, and in profile it stays inside the neck
head           ``HeadPoint.EYES`` (default, as trained): the middle of the eyes [2, 5];
               ``HeadPoint.TOP_OF_HEAD`` (the H36M definition, for skeletons retargeted from
               a ``head_End``): from the middle of the ears go "up the face" (the direction
               from the middle of the mouth [9, 10] to the middle of the eyes) by
               ``HEAD_TOP_FACE_RATIO`` (1.9) times the mouth-to-eyes distance, which follows
               the head's own tilt in frontal and profile views alike
r/l shoulder   [12] / [11]
r/l elbow      [14] / [13]
r/l wrist      [16] / [15]
=============  ==========================================================================

Confidence: a joint's confidence is its landmark's ``visibility``; a built joint takes the
smallest visibility of the landmarks it is built from. When no person is found every joint
gets confidence 0 and sits at the image centre (normalised coordinates 0, 0).

Left and right are the performer's (as in H36M and BlazePose), not the image's.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

import cv2
import numpy as np

from vimcan_core.errors import DeviceError
from vimcan_core.skeleton import NUM_JOINTS, Joint

log = logging.getLogger(__name__)

NUM_LANDMARKS = 33

#: BlazePose landmark indices used below
NOSE, LEFT_EYE, RIGHT_EYE, LEFT_EAR, RIGHT_EAR, MOUTH_LEFT, MOUTH_RIGHT = 0, 2, 5, 7, 8, 9, 10
LEFT_SHOULDER, RIGHT_SHOULDER, LEFT_ELBOW, RIGHT_ELBOW, LEFT_WRIST, RIGHT_WRIST = 11, 12, 13, 14, 15, 16
LEFT_HIP, RIGHT_HIP, LEFT_KNEE, RIGHT_KNEE, LEFT_ANKLE, RIGHT_ANKLE = 23, 24, 25, 26, 27, 28

#: H36M joints copied straight from one BlazePose landmark
DIRECT: dict[int, int] = {
    Joint.RIGHT_HIP: RIGHT_HIP,
    Joint.RIGHT_KNEE: RIGHT_KNEE,
    Joint.RIGHT_ANKLE: RIGHT_ANKLE,
    Joint.LEFT_HIP: LEFT_HIP,
    Joint.LEFT_KNEE: LEFT_KNEE,
    Joint.LEFT_ANKLE: LEFT_ANKLE,
    Joint.LEFT_SHOULDER: LEFT_SHOULDER,
    Joint.LEFT_ELBOW: LEFT_ELBOW,
    Joint.LEFT_WRIST: LEFT_WRIST,
    Joint.RIGHT_SHOULDER: RIGHT_SHOULDER,
    Joint.RIGHT_ELBOW: RIGHT_ELBOW,
    Joint.RIGHT_WRIST: RIGHT_WRIST,
}

#: thorax above the shoulder line, as a fraction of the pelvis-to-shoulders vector (training skeletons: 0.09)
THORAX_ABOVE_SHOULDERS = 0.09
#: spine position from pelvis (0) to thorax (1) (training skeletons: 0.37-0.38)
SPINE_FRACTION = 0.38
#: ear-midpoint to top of head, in units of the mouth-to-eyes distance (adults: ~13 cm / ~7 cm)
HEAD_TOP_FACE_RATIO = 1.9


class HeadPoint(Enum):
    """Where the H36M ``head`` joint is put."""

    EYES = "eyes"  # the middle of the eyes: what the CMU (Daz) training skeletons use
    TOP_OF_HEAD = "top_of_head"  # the top of the skull, the Human3.6M definition


def landmarks_to_h36m(
    landmarks_px: np.ndarray, visibility: np.ndarray, head_point: HeadPoint = HeadPoint.EYES
) -> tuple[np.ndarray, np.ndarray]:
    """Map BlazePose landmarks to H36M joints (the table in the module docstring).

    landmarks_px: ... x 33 x 2 (pixels, or any 2D units); visibility: ... x 33 in [0, 1].
    Returns (... x 17 x 2 joints in the same units, ... x 17 confidences in [0, 1])."""
    lm = np.asarray(landmarks_px, dtype=np.float64)
    vis = np.clip(np.asarray(visibility, dtype=np.float64), 0.0, 1.0)
    if lm.shape[-2:] != (NUM_LANDMARKS, 2) or vis.shape != lm.shape[:-1]:
        raise DeviceError(f"expected ... x {NUM_LANDMARKS} x 2 landmarks and ... x {NUM_LANDMARKS} visibility, "
                          f"got {lm.shape} and {vis.shape}")
    out = np.empty(lm.shape[:-2] + (NUM_JOINTS, 2))
    conf = np.empty(lm.shape[:-2] + (NUM_JOINTS,))
    for joint, idx in DIRECT.items():
        out[..., joint, :] = lm[..., idx, :]
        conf[..., joint] = vis[..., idx]

    def mid(a: int, b: int) -> np.ndarray:
        return 0.5 * (lm[..., a, :] + lm[..., b, :])

    def vmin(*idx: int) -> np.ndarray:
        return np.min(np.stack([vis[..., i] for i in idx], axis=-1), axis=-1)

    pelvis = mid(LEFT_HIP, RIGHT_HIP)
    shoulders = mid(LEFT_SHOULDER, RIGHT_SHOULDER)
    thorax = shoulders + THORAX_ABOVE_SHOULDERS * (shoulders - pelvis)
    ears = mid(LEFT_EAR, RIGHT_EAR)
    eyes = mid(LEFT_EYE, RIGHT_EYE)
    out[..., Joint.PELVIS, :] = pelvis
    conf[..., Joint.PELVIS] = vmin(LEFT_HIP, RIGHT_HIP)
    out[..., Joint.THORAX, :] = thorax
    conf[..., Joint.THORAX] = vmin(LEFT_SHOULDER, RIGHT_SHOULDER, LEFT_HIP, RIGHT_HIP)
    out[..., Joint.SPINE, :] = pelvis + SPINE_FRACTION * (thorax - pelvis)
    conf[..., Joint.SPINE] = conf[..., Joint.THORAX]
    out[..., Joint.NECK, :] = 0.5 * (thorax + ears)
    conf[..., Joint.NECK] = np.minimum(conf[..., Joint.THORAX], vmin(LEFT_EAR, RIGHT_EAR))
    if head_point == HeadPoint.EYES:
        out[..., Joint.HEAD, :] = eyes
        conf[..., Joint.HEAD] = vmin(LEFT_EYE, RIGHT_EYE)
    else:
        face_up = eyes - mid(MOUTH_LEFT, MOUTH_RIGHT)
        out[..., Joint.HEAD, :] = ears + HEAD_TOP_FACE_RATIO * face_up
        conf[..., Joint.HEAD] = vmin(LEFT_EAR, RIGHT_EAR, LEFT_EYE, RIGHT_EYE, MOUTH_LEFT, MOUTH_RIGHT)
    return out, conf


@dataclass(frozen=True)
class PoseConfig:
    """MediaPipe Pose settings."""

    model_complexity: int = 1  # 1 = "full", inside the wheel (0 and 2 download a model at first use)
    static_image_mode: bool = False  # False: video mode, tracks the person from frame to frame
    min_detection_confidence: float = 0.5
    min_tracking_confidence: float = 0.5
    smooth_landmarks: bool = True  # MediaPipe's own temporal filter (video mode only)
    head_point: HeadPoint = HeadPoint.EYES  # where the H36M head joint goes (see the module docstring)


@dataclass(frozen=True)
class PoseResult:
    """The 17 H36M keypoints of one image."""

    keypoints_px: np.ndarray  # 17 x 2, pixels (x right, y down)
    confidence: np.ndarray  # 17, in [0, 1]; all 0 when nobody was found
    landmarks_px: np.ndarray | None  # 33 x 2, MediaPipe's own landmarks (None when nobody was found)
    landmark_visibility: np.ndarray | None  # 33

    @property
    def found(self) -> bool:
        return self.landmarks_px is not None


class MediaPipePoseEstimator:
    """One MediaPipe Pose graph; feed it the frames of one video in order (it tracks)."""

    def __init__(self, config: PoseConfig | None = None) -> None:
        self.config = config or PoseConfig()
        try:
            from mediapipe.python.solutions import pose as mp_pose
        except ImportError as exc:  # pragma: no cover - the dependency is pinned in pyproject
            raise DeviceError("mediapipe is not installed. To use the webcam keypoints, reinstall with "
                              "`.venv/bin/pip install mediapipe==0.10.21`") from exc
        c = self.config
        self._pose = mp_pose.Pose(
            static_image_mode=c.static_image_mode,
            model_complexity=c.model_complexity,
            smooth_landmarks=c.smooth_landmarks,
            enable_segmentation=False,
            min_detection_confidence=c.min_detection_confidence,
            min_tracking_confidence=c.min_tracking_confidence,
        )

    def process(self, image_bgr: np.ndarray) -> PoseResult:
        """image_bgr: H x W x 3 uint8 (OpenCV's order) -> the 17 keypoints in pixels."""
        if image_bgr.ndim != 3 or image_bgr.shape[2] != 3:
            raise DeviceError(f"expected an H x W x 3 BGR image, got shape {image_bgr.shape}")
        h, w = image_bgr.shape[:2]
        rgb = cv2.cvtColor(image_bgr, cv2.COLOR_BGR2RGB)
        rgb.flags.writeable = False
        result = self._pose.process(rgb)
        if result.pose_landmarks is None:
            return PoseResult(np.tile([w / 2.0, h / 2.0], (NUM_JOINTS, 1)), np.zeros(NUM_JOINTS), None, None)
        raw = np.array([(p.x, p.y, p.visibility) for p in result.pose_landmarks.landmark])  # 33 x 3
        lm_px = raw[:, :2] * np.array([w, h])
        kp, conf = landmarks_to_h36m(lm_px, raw[:, 2], self.config.head_point)
        return PoseResult(kp, conf, lm_px, raw[:, 2])

    def close(self) -> None:
        self._pose.close()

    def __enter__(self) -> "MediaPipePoseEstimator":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def mediapipe_ms_per_frame(video_path: str | Path, max_frames: int | None = None, config: PoseConfig | None = None) -> dict:
    """Time MediaPipe Pose (video mode) on every frame of a video, for the sensors benchmark.

    Returns ``{"frames", "found", "first_ms", "mean_ms", "median_ms", "p95_ms", "width_px",
    "height_px", "model_complexity"}``; the mean, median and p95 leave out the first frame
    (graph warm-up). Decoding the video is not counted."""
    cap = cv2.VideoCapture(str(video_path))
    if not cap.isOpened():
        raise DeviceError(f"could not open video {video_path}")
    times_ms: list[float] = []
    found = 0
    shape = (0, 0)
    with MediaPipePoseEstimator(config) as est:
        while max_frames is None or len(times_ms) < max_frames:
            ok, image = cap.read()
            if not ok:
                break
            shape = image.shape[:2]
            t0 = time.perf_counter()
            result = est.process(image)
            times_ms.append((time.perf_counter() - t0) * 1000.0)
            found += int(result.found)
    cap.release()
    if not times_ms:
        raise DeviceError(f"no frames could be read from {video_path}")
    steady = np.array(times_ms[1:] or times_ms)
    return {
        "frames": len(times_ms),
        "found": found,
        "first_ms": times_ms[0],
        "mean_ms": float(steady.mean()),
        "median_ms": float(np.median(steady)),
        "p95_ms": float(np.percentile(steady, 95)),
        "width_px": int(shape[1]),
        "height_px": int(shape[0]),
        "model_complexity": (config or PoseConfig()).model_complexity,
    }
