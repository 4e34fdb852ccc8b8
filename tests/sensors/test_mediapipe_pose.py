"""Real MediaPipe Pose on the real people in ../shared/data/video, mapped to the 17 H36M joints."""

from __future__ import annotations

import json
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from sensors.camera.camera_device import CAMERA_BUFFER_FRAMES, CameraDevice
from sensors.camera.mediapipe_pose import (
    HEAD_TOP_FACE_RATIO,
    SPINE_FRACTION,
    THORAX_ABOVE_SHOULDERS,
    HeadPoint,
    MediaPipePoseEstimator,
    PoseConfig,
    landmarks_to_h36m,
    mediapipe_ms_per_frame,
)
from sensors.camera.webcam import PlaybackMode, WebcamConfig
from sensors.device import DeviceConfig, DeviceKind, DeviceState
from sensors.samples import KeypointFrame
from vimcan_core.errors import DeviceError
from vimcan_core.skeleton import NUM_JOINTS, Joint as J

FRAMES = 65


@pytest.fixture(scope="module")
def video_dir(shared_data: Path) -> Path:
    d = shared_data / "video"
    if not d.is_dir():
        pytest.skip(f"real test videos not found at {d}")
    return d


@pytest.fixture(scope="module")
def squats(video_dir: Path) -> dict:
    """MediaPipe (video mode, complexity 1) on every frame of pose_squats.mp4, once for the module."""
    cap = cv2.VideoCapture(str(video_dir / "pose_squats.mp4"))
    results = []
    with MediaPipePoseEstimator() as est:
        while True:
            ok, image = cap.read()
            if not ok:
                break
            results.append(est.process(image))
    cap.release()
    ref = np.array(json.loads((video_dir / "pose_squats.full.json").read_text()))  # 65 x 33 x 3: x px, y px, z
    return {
        "kp": np.array([r.keypoints_px for r in results]),  # T x 17 x 2
        "conf": np.array([r.confidence for r in results]),  # T x 17
        "landmarks": np.array([r.landmarks_px for r in results]),  # T x 33 x 2
        "ref": ref,
    }


def test_mapping_builds_the_centre_joints_from_midpoints() -> None:
    rng = np.random.default_rng(0)
    lm = rng.uniform(0, 500, size=(4, 33, 2))
    vis = rng.uniform(0.2, 1.0, size=(4, 33))
    kp, conf = landmarks_to_h36m(lm, vis)
    assert kp.shape == (4, NUM_JOINTS, 2) and conf.shape == (4, NUM_JOINTS)
    np.testing.assert_allclose(kp[:, J.LEFT_KNEE], lm[:, 25])
    np.testing.assert_allclose(kp[:, J.RIGHT_WRIST], lm[:, 16])
    pelvis = 0.5 * (lm[:, 23] + lm[:, 24])
    shoulders = 0.5 * (lm[:, 11] + lm[:, 12])
    thorax = shoulders + THORAX_ABOVE_SHOULDERS * (shoulders - pelvis)
    np.testing.assert_allclose(kp[:, J.PELVIS], pelvis)
    np.testing.assert_allclose(kp[:, J.THORAX], thorax)
    np.testing.assert_allclose(kp[:, J.SPINE], pelvis + SPINE_FRACTION * (thorax - pelvis))
    np.testing.assert_allclose(kp[:, J.NECK], 0.5 * (thorax + 0.5 * (lm[:, 7] + lm[:, 8])))
    np.testing.assert_allclose(kp[:, J.HEAD], 0.5 * (lm[:, 2] + lm[:, 5]))
    top, _ = landmarks_to_h36m(lm, vis, HeadPoint.TOP_OF_HEAD)
    face_up = 0.5 * (lm[:, 2] + lm[:, 5]) - 0.5 * (lm[:, 9] + lm[:, 10])
    np.testing.assert_allclose(top[:, J.HEAD], 0.5 * (lm[:, 7] + lm[:, 8]) + HEAD_TOP_FACE_RATIO * face_up)
    # a built joint is only as sure as the least visible landmark it uses
    np.testing.assert_allclose(conf[:, J.PELVIS], np.minimum(vis[:, 23], vis[:, 24]))
    np.testing.assert_allclose(conf[:, J.LEFT_ELBOW], vis[:, 13])
    with pytest.raises(DeviceError, match="33"):
        landmarks_to_h36m(np.zeros((17, 2)), np.zeros(17))


def test_still_image_all_joints_with_plausible_geometry(video_dir: Path) -> None:
    image = cv2.imread(str(video_dir / "pose.jpg"))  # 1000 x 667, a man side-on in "warrior II"
    with MediaPipePoseEstimator(PoseConfig(static_image_mode=True)) as est:
        r = est.process(image)
    assert r.found
    assert np.all(r.confidence > 0.9)
    kp = r.keypoints_px
    y = kp[:, 1]
    assert np.all((kp >= 0) & (kp < [1000, 667]))
    for ankle, knee, hip in ((J.LEFT_ANKLE, J.LEFT_KNEE, J.LEFT_HIP), (J.RIGHT_ANKLE, J.RIGHT_KNEE, J.RIGHT_HIP)):
        assert y[ankle] > y[knee] > y[hip]  # feet below knees below hips (image y points down)
    assert y[J.HEAD] < y[J.NECK] < y[J.THORAX] < y[J.SPINE] < y[J.PELVIS]
    # arms stretched out level, to either side of the thorax
    assert abs(y[J.LEFT_WRIST] - y[J.THORAX]) < 40 and abs(y[J.RIGHT_WRIST] - y[J.THORAX]) < 40
    assert (kp[J.LEFT_WRIST, 0] - kp[J.THORAX, 0]) * (kp[J.RIGHT_WRIST, 0] - kp[J.THORAX, 0]) < 0
    # the reference landmarks of MediaPipe's pose_test.py for this image (left wrist, right ankle), 15 px tolerance
    assert np.linalg.norm(kp[J.LEFT_WRIST] - [695, 315]) < 15
    assert np.linalg.norm(kp[J.RIGHT_ANKLE] - [351, 607]) < 15


def test_video_every_frame_has_all_joints_and_matches_the_reference(squats: dict) -> None:
    kp, conf, ref = squats["kp"], squats["conf"], squats["ref"]
    assert kp.shape == (FRAMES, NUM_JOINTS, 2)
    assert np.all(conf > 0.5)
    # the same mapping applied to the published reference landmarks (BlazePose full, video mode)
    ref_kp, _ = landmarks_to_h36m(ref[..., :2], np.ones(ref.shape[:2]))
    err = np.linalg.norm(kp - ref_kp, axis=-1)  # T x 17 px, in a 720 x 1280 video
    assert np.median(err) < 5.0
    assert np.percentile(err, 99) < 15.0
    assert err.max() < 28.0  # the tolerance of the tfjs BlazePose test on this clip


def test_video_geometry_left_right_and_stable_bones(squats: dict) -> None:
    kp = squats["kp"]
    x, y = kp[..., 0], kp[..., 1]
    for ankle, knee, hip in ((J.LEFT_ANKLE, J.LEFT_KNEE, J.LEFT_HIP), (J.RIGHT_ANKLE, J.RIGHT_KNEE, J.RIGHT_HIP)):
        assert np.all(y[:, ankle] > y[:, knee]) and np.all(y[:, knee] > y[:, hip])
    assert np.all(y[:, J.HEAD] < y[:, J.NECK]) and np.all(y[:, J.NECK] < y[:, J.THORAX])
    assert np.all(y[:, J.THORAX] < y[:, J.PELVIS])
    # she faces the camera, so her left side is on the image's right, in every frame
    for left, right in ((J.LEFT_HIP, J.RIGHT_HIP), (J.LEFT_SHOULDER, J.RIGHT_SHOULDER), (J.LEFT_ANKLE, J.RIGHT_ANKLE)):
        assert np.all(x[:, left] > x[:, right])

    def cv(a: int, b: int) -> float:
        length = np.linalg.norm(kp[:, a] - kp[:, b], axis=-1)
        return float(length.std() / length.mean())

    # lengths that stay in the image plane during a frontal squat stay put
    # (thighs and forearms foreshorten as they turn towards the camera, so they are not checked)
    assert cv(J.LEFT_KNEE, J.LEFT_ANKLE) < 0.08 and cv(J.RIGHT_KNEE, J.RIGHT_ANKLE) < 0.08
    assert cv(J.LEFT_HIP, J.RIGHT_HIP) < 0.05
    assert cv(J.LEFT_SHOULDER, J.RIGHT_SHOULDER) < 0.10
    assert cv(J.PELVIS, J.THORAX) < 0.10
    assert cv(J.NECK, J.HEAD) < 0.10
    # three squats: the pelvis goes down through mid-height three times
    py = y[:, J.PELVIS]
    mid = 0.5 * (py.min() + py.max())
    assert int(np.sum((py[1:] > mid) & (py[:-1] <= mid))) == 3


def test_camera_device_delivers_keypoint_frames_in_order(video_dir: Path, squats: dict) -> None:
    dev = CameraDevice(
        WebcamConfig(source=str(video_dir / "pose_squats.mp4"), width_px=None, height_px=None, playback=PlaybackMode.FAST),
        config=DeviceConfig(buffer_capacity=128),
        keep_images=False,
    )
    assert dev.kind == DeviceKind.CAMERA
    assert CameraDevice(WebcamConfig()).config.buffer_capacity == CAMERA_BUFFER_FRAMES  # images are big: a short default
    dev.start()
    try:
        deadline = time.monotonic() + 60
        while not dev.finished.is_set() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert dev.finished.is_set()
        st = dev.stats()
    finally:
        dev.stop()
    frames: list[KeypointFrame] = dev.buffer.snapshot()
    assert len(frames) == FRAMES and st.samples == FRAMES and st.dropped == 0  # FAST playback skips nothing
    assert (frames[0].width_px, frames[0].height_px) == (720, 1280)
    cam = dev.camera_model  # default intrinsics for the studio until calibration
    assert (cam.width_px, cam.height_px, cam.cx_px, cam.cy_px) == (720, 1280, 360.0, 640.0)
    assert cam.fx_px == pytest.approx(360.0 / np.tan(np.radians(30.0)))
    t = np.array([f.device_time_s for f in frames])
    assert np.allclose(t, np.arange(FRAMES) / 5.0, atol=1e-3)
    # the device runs the same graph on the same frames as the direct estimator
    kp = np.array([f.keypoints_px for f in frames])
    assert np.median(np.linalg.norm(kp - squats["kp"], axis=-1)) < 1.0
    assert dev.state == DeviceState.STOPPED


def test_camera_device_drops_stale_frames_when_mediapipe_is_slower(video_dir: Path) -> None:
    # played 50x faster (250 fps, 4 ms a frame): MediaPipe (~17 ms a frame) cannot keep up
    dev = CameraDevice(
        WebcamConfig(source=str(video_dir / "pose_squats.mp4"), width_px=360, height_px=640,
                     playback=PlaybackMode.REALTIME, speed=50.0),
        keep_images=False,
    )
    dev.start()
    try:
        deadline = time.monotonic() + 60
        while not dev.finished.is_set() and time.monotonic() < deadline:
            time.sleep(0.05)
        st = dev.stats()
    finally:
        dev.stop()
    frames = dev.buffer.snapshot()
    t = [f.device_time_s for f in frames]
    assert t == sorted(t) and len(set(t)) == len(t)  # in order, none twice
    assert st.dropped > 0
    assert len(frames) + st.dropped == FRAMES  # each frame processed or counted as dropped
    assert np.all(np.array([f.confidence for f in frames]) > 0.3)


def test_mediapipe_ms_per_frame(video_dir: Path) -> None:
    r = mediapipe_ms_per_frame(video_dir / "pose_squats.mp4", max_frames=8)
    assert r["frames"] == 8 and r["found"] == 8
    assert (r["width_px"], r["height_px"]) == (720, 1280)
    assert 0 < r["median_ms"] <= r["p95_ms"]
    assert r["model_complexity"] == 1
