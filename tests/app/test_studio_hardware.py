"""The studio window on real drivers (not ``--demo``), driven as a user would (pytest-qt under Xvfb).

Only the hardware is faked, below the drivers: six WitMotion IMUs are pty serial ports (as the USB
adapters appear under /dev) that a thread writes real 0x55 frames to, carrying the orientations of
the demo performer's bones in a Z-up sensor world; the camera is a real video of a person
(``pose_squats.mp4``) through the real camera device and MediaPipe. The window, its devices panel,
the pipeline, the shipped streaming weights, the recorder and the take files are the real ones.
Screenshots of the main states go to the test's output folder.
"""

from __future__ import annotations

import csv
import json
import os
import threading
import time
import tty
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("pytestqt")
pytest.importorskip("mediapipe")

from app.panels.status_panel import InputHealth  # noqa: E402
from app.settings import PoseSourceChoice  # noqa: E402
from app.views.palette import CENTER_BONES, LEFT_BONES, RIGHT_BONES  # noqa: E402
from sensors.protocols import witmotion as wm  # noqa: E402
from vimcan_core.body_scale import skeleton_height_m  # noqa: E402
from vimcan_core.bvh.reader import read_bvh  # noqa: E402
from vimcan_core.performer import Performer  # noqa: E402
from vimcan_core.rotations import quat_conj, quat_from_axis_angle, quat_mul, quat_rotate  # noqa: E402
from vimcan_core.skeleton import ANKLE_ABOVE_FLOOR_M, IMU_JOINT, IMU_SITE_NAMES, NUM_IMUS, ImuSite  # noqa: E402

#: the sensors' own world is Z up (as WitMotion's): the performer's Y-up world turned +90 deg about X
Q_ENU_FROM_WORLD = quat_from_axis_angle(np.array([1.0, 0.0, 0.0]), np.pi / 2)
IMU_RATE_HZ = 60.0
#: the clip is portrait 720 x 1280 at 5 fps; half size keeps its shape and MediaPipe quick
CAMERA_SIZE_PX = (360, 640)
PERFORMER_HEIGHT_M = 1.85  # in the calibration profile: the live skeleton is scaled to it


def camera_spec(video: Path) -> str:
    return f"camera:{video}?loop=1&width={CAMERA_SIZE_PX[0]}&height={CAMERA_SIZE_PX[1]}"


@pytest.fixture
def video(shared_data: Path) -> Path:
    path = shared_data / "video" / "pose_squats.mp4"
    if not path.is_file():
        pytest.skip(f"{path} not found")
    return path


@pytest.fixture
def weights() -> Path:
    from app.live import SHIPPED_WEIGHTS

    if not SHIPPED_WEIGHTS.is_file():
        pytest.skip(f"the shipped streaming weights are not at {SHIPPED_WEIGHTS}")
    pytest.importorskip("torch")
    return SHIPPED_WEIGHTS


class FakeWitMotionRig:
    """Six WitMotion sensors on pty ports behind /dev-like symlinks, strapped to the demo performer's
    bones without any mounting rotation. One thread writes an acceleration and a quaternion frame to
    every port ``IMU_RATE_HZ`` times a second and reads what the drivers send (their set-up commands)."""

    def __init__(self, folder: Path) -> None:
        self.performer = Performer(seed=1)
        self.links: dict[ImuSite, Path] = {}
        self._masters: dict[ImuSite, int] = {}
        for site in ImuSite:
            master, slave = os.openpty()
            tty.setraw(slave)  # bytes pass unchanged before pyserial configures the port
            link = folder / f"ttyWIT-{site.name.lower()}"
            link.symlink_to(os.ttyname(slave))
            os.close(slave)
            os.set_blocking(master, False)
            self.links[site], self._masters[site] = link, master
        self.bursts = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="fake-witmotion", daemon=True)

    def spec(self, site: ImuSite) -> str:
        return f"witmotion:{self.links[site]}@115200?quat=1"

    def device_id(self, site: ImuSite) -> str:
        return f"witmotion:{self.links[site]}"

    def __enter__(self) -> "FakeWitMotionRig":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(2.0)
        for master in self._masters.values():
            os.close(master)

    def _run(self) -> None:
        t0 = time.monotonic()
        period = 1.0 / IMU_RATE_HZ
        next_t = t0
        while not self._stop.is_set():
            pose = self.performer.pose_at(time.monotonic() - t0)
            q_enu = quat_mul(Q_ENU_FROM_WORLD, pose.global_quats[list(IMU_JOINT)])  # 6 x 4, sensor = bone
            for site, master in self._masters.items():
                try:
                    os.read(master, 4096)  # the driver's set-up commands (read so that the pty never fills)
                except BlockingIOError:
                    pass  # the port is open and the driver said nothing
                except OSError:  # EIO: nobody has the port open; a sensor's bytes would be lost on the cable
                    continue
                q = q_enu[site]
                gravity_g = quat_rotate(quat_conj(q), np.array([0.0, 0.0, 1.0]))  # what a still accelerometer reads
                os.write(master, wm.encode_acc(tuple(gravity_g)) + wm.encode_quat(tuple(q)))
            self.bursts += 1
            next_t += period
            self._stop.wait(max(0.0, next_t - time.monotonic()))

    def calibration(self, camera):
        """The exact calibration of these sensors for ``camera`` (a ``PinholeCamera`` looking at the
        performer): no mounting rotation, a Z-up sensor world."""
        from vimcan_core.calibration import Calibration, SensorQuality

        q_cw = np.asarray(camera.quat_cam_from_world, dtype=np.float64)
        return Calibration(
            q_bone_from_sensor=np.tile([1.0, 0.0, 0.0, 0.0], (NUM_IMUS, 1)),
            q_camera_from_imuworld=np.tile(quat_mul(q_cw, quat_conj(Q_ENU_FROM_WORLD)), (NUM_IMUS, 1)),
            acc_offset_mps2=np.zeros((NUM_IMUS, 3)),
            quat_world_from_camera=quat_conj(q_cw),
            quality=tuple(SensorQuality.perfect() for _ in range(NUM_IMUS)),
        )


def live_window(qtbot, tmp_path: Path, **settings_fields):
    """The studio NOT in demo mode, with the shipped weights, as ``vimcan-studio --live`` opens it."""
    from app.main_window import MainWindow, StudioOptions
    from app.settings import StudioSettings, open_qsettings

    settings = StudioSettings(takes_dir=str(tmp_path / "takes"), pose_source=PoseSourceChoice.MODEL, **settings_fields)
    window = MainWindow(StudioOptions(demo=False), settings, open_qsettings(tmp_path / "studio.ini"))
    qtbot.addWidget(window)
    window.resize(1400, 900)
    window.show()
    qtbot.waitExposed(window)
    window.start()
    return window


def distance_to_segments(points: np.ndarray, seg_a: np.ndarray, seg_b: np.ndarray) -> np.ndarray:
    d = seg_b - seg_a
    t = np.einsum("nsk,sk->ns", points[:, None, :] - seg_a[None], d) / np.maximum((d * d).sum(-1), 1e-9)
    nearest = seg_a[None] + np.clip(t, 0.0, 1.0)[..., None] * d[None]
    return np.linalg.norm(points[:, None, :] - nearest, axis=-1).min(axis=1)


def check_preview(view, output_dir: Path, name: str) -> dict:
    """The camera preview shows the video frame with MediaPipe's keypoints drawn where they belong."""
    from app.views.keypoints_view import MIN_CONFIDENCE

    kp, conf, image = view.shown_keypoints_px, view.shown_confidence, view.shown_image_bgr
    assert kp is not None and image is not None, "no frame shown in the preview"
    with_overlay = view.grab_rgb()
    view.set_overlay_visible(False)
    image_only = view.grab_rgb()
    view.set_overlay_visible(True)
    from PySide6 import QtGui

    QtGui.QImage(with_overlay.data, with_overlay.shape[1], with_overlay.shape[0], 3 * with_overlay.shape[1],
                 QtGui.QImage.Format.Format_RGB888).save(str(output_dir / f"{name}.png"))
    h, w = image.shape[:2]
    # the image: a grid of frame pixels lands, with their colours, where the view maps them
    gx, gy = np.meshgrid(np.linspace(0.1, 0.9, 9) * w, np.linspace(0.1, 0.9, 9) * h)
    grid = np.column_stack((gx.ravel(), gy.ravel()))
    at = np.round(view.image_to_widget_px(grid)).astype(int)
    shown = image_only[at[:, 1], at[:, 0]].astype(float)  # RGB
    frame = image[grid[:, 1].astype(int), grid[:, 0].astype(int), ::-1].astype(float)
    colour_err = np.median(np.abs(shown - frame))
    assert image_only.std() > 20.0, "the preview is blank"
    assert colour_err < 25.0, f"the preview does not show the frame (median colour difference {colour_err:.0f})"
    # the overlay: every pixel it changed lies on a bone or a keypoint, and every confident bone is drawn
    seen = conf >= MIN_CONFIDENCE
    assert seen.sum() >= 12, f"MediaPipe saw only {seen.sum()} keypoints of the person"
    kp_w = view.image_to_widget_px(kp)
    bones = [b for b in (*CENTER_BONES, *LEFT_BONES, *RIGHT_BONES) if seen[b[0]] and seen[b[1]]]
    changed = np.argwhere(np.any(with_overlay != image_only, axis=-1))[:, ::-1].astype(float)  # x, y
    assert len(changed) > 150, f"only {len(changed)} pixels of keypoint overlay"
    a, b = kp_w[[i for i, _ in bones]], kp_w[[j for _, j in bones]]
    points = kp_w[(conf > 0) & np.isfinite(kp).all(axis=1)]  # faint ones are drawn too
    dist = np.minimum(distance_to_segments(changed, a, b), np.linalg.norm(changed[:, None] - points[None], axis=-1).min(1))
    assert np.percentile(dist, 98) < 6.0, "overlay pixels away from the keypoints"
    for j in np.flatnonzero(seen):  # each keypoint has overlay pixels on it
        near = np.linalg.norm(changed - kp_w[j], axis=-1).min()
        assert near < 4.0, f"keypoint {j} at {np.round(kp_w[j])} is not drawn ({near:.1f} px away)"
    return {"overlay_pixels": int(len(changed)), "keypoints_seen": int(seen.sum()),
            "preview_colour_error": float(colour_err)}


def test_camera_preview_shows_the_video_with_mediapipe_keypoints(qtbot, tmp_path, output_dir, video, weights):
    """A camera with real images (a video file through the camera device and MediaPipe) in the window's
    camera preview: the frame drawn, the 2D keypoints and bones on top where MediaPipe found them."""
    window = live_window(qtbot, tmp_path, devices=(), camera=camera_spec(video))
    view = window.keypoints_view
    qtbot.waitUntil(lambda: view.shown_image_bgr is not None and view.shown_keypoints_px is not None
                    and (view.shown_confidence >= 0.5).sum() >= 12, timeout=30000)
    assert view.shown_image_bgr.shape[:2] == (CAMERA_SIZE_PX[1], CAMERA_SIZE_PX[0])
    first = check_preview(view, output_dir, "preview_1")
    frame1 = view.shown_image_bgr
    qtbot.waitUntil(lambda: view.shown_image_bgr is not frame1 and view.shown_keypoints_px is not None, timeout=10000)
    second = check_preview(view, output_dir, "preview_2")  # the next frame is drawn too (it is a video)
    window.save_screenshot(output_dir / "studio_camera_only.png")
    (output_dir / "preview.json").write_text(json.dumps({"first": first, "second": second}, indent=2))
    window.close()


def test_real_drivers_from_no_devices_to_recording(qtbot, tmp_path, output_dir, video, weights, monkeypatch):
    """What a user does with real hardware: start with no devices; in the devices panel add the camera
    and the six IMUs by their specs, each at its body site; take the calibration profile of these
    sensors from the toolbar; watch the live model; record a take; find its files complete."""
    from sensors.device import DeviceKind
    from vimcan_core.calibration_profile import ENV_CONFIG_DIR, CalibrationProfile, ProfileDevice, save_profile
    from vimcan_core.camera import PinholeCamera
    from vimcan_core.take import read_meta, read_poses

    monkeypatch.setenv(ENV_CONFIG_DIR, str(tmp_path / "config"))
    with FakeWitMotionRig(tmp_path) as rig:
        window = live_window(qtbot, tmp_path, devices=(), camera="")
        panel = window.devices_panel
        assert "demo" not in window.windowTitle() and panel.add_button.isEnabled()
        assert panel.row_texts() == [] and window.pipeline.camera is None
        window.save_screenshot(output_dir / "1_no_devices.png")

        # the camera: its spec in the panel, Add
        panel.spec_edit.setText(camera_spec(video))
        panel.add_button.click()
        assert "added camera:" in panel.message_label.text(), panel.message_label.text()
        assert window.pipeline.camera is not None and window.pipeline.camera.kind == DeviceKind.CAMERA

        # the IMUs, in the order they come out of the box, each at the site it is strapped to
        order = [ImuSite.LEFT_FOREARM, ImuSite.PELVIS, ImuSite.HEAD, ImuSite.RIGHT_LOWER_LEG,
                 ImuSite.RIGHT_FOREARM, ImuSite.LEFT_LOWER_LEG]
        for site in order:
            panel.spec_edit.setText(rig.spec(site))
            panel.site_box.setCurrentIndex(panel.site_box.findData(site))
            panel.add_button.click()
            assert f"at the {IMU_SITE_NAMES[site].replace('_', ' ')} site" in panel.message_label.text(), \
                panel.message_label.text()
        assert {s: d.device_id for s, d in window.pipeline.imus.items()} == {s: rig.device_id(s) for s in ImuSite}
        # mistakes are explained, and change nothing
        panel.spec_edit.setText(rig.spec(ImuSite.HEAD))
        panel.add_button.click()
        assert "connected already" in panel.message_label.text()
        panel.spec_edit.setText("witmotion")
        panel.add_button.click()
        assert "needs a serial port" in panel.message_label.text()
        assert len(window.pipeline.devices()) == NUM_IMUS + 1

        def imus_at_rate() -> bool:  # 60 Hz through the pty (a driver that reconnected once settles)
            rows = [r for r in panel.row_texts() if r[1] == "imu"]
            return len(rows) == NUM_IMUS and all(r[2] == "streaming" and 30.0 < float(r[3].split()[0]) < 90.0
                                                 for r in rows)
        qtbot.waitUntil(imus_at_rate, timeout=30000)
        qtbot.waitUntil(lambda: panel.row_texts()[-1][2] == "streaming", timeout=30000)  # the camera
        rows = {r[0]: r for r in panel.row_texts()}
        for site in ImuSite:
            row = rows[rig.device_id(site)]
            assert row[1] == "imu" and row[-1] == IMU_SITE_NAMES[site].replace("_", " ")
        # remembered for the next start: the specs at their sites, and the camera
        assert window.settings.devices == tuple(rig.spec(s) for s in ImuSite)
        assert window.settings.sites == tuple(s.name.lower() for s in ImuSite)
        assert window.settings.camera == camera_spec(video)

        # the calibration: these sensors' profile (from an earlier session), picked in the toolbar
        camera = window.pipeline.camera.camera_model
        assert camera is not None and (camera.width_px, camera.height_px) == CAMERA_SIZE_PX
        posed = PinholeCamera.looking_at(np.array([0.0, 1.0, 3.5]), np.array([0.0, 1.0, 0.0]),
                                         width_px=camera.width_px, height_px=camera.height_px, hfov_deg=60.0)
        profile_path = save_profile(CalibrationProfile(
            name="WitMotion rig", calibration=rig.calibration(posed),
            site_devices=tuple(rig.device_id(s) for s in ImuSite),
            devices=tuple(ProfileDevice(rig.device_id(s), "imu", "WitMotionSerialDevice") for s in ImuSite),
            camera=posed, camera_device_id=window.pipeline.camera.device_id, performer_height_m=PERFORMER_HEIGHT_M))
        window._fill_profiles()
        window.profile_box.setCurrentText(profile_path.stem)  # the toolbar lists profiles by file name
        assert window.profile_box.currentText() == profile_path.stem
        assert "WitMotion rig" in window.calibration_label.text()
        assert window.pipeline.pose_source.performer_height_m == PERFORMER_HEIGHT_M  # the profile's height

        # live inference with the shipped weights: the model runs on the camera and all six IMUs
        def healthy() -> bool:
            st = window.inference_status()
            return st.is_model and st.health == InputHealth.ALL and st.poses_per_s > 0
        qtbot.waitUntil(healthy, timeout=30000)
        st = window.inference_status()
        assert st.source == window.pipeline.pose_source.name and st.model.startswith(weights.name)
        assert window.pipeline.pose_source.status_message == "camera and all six IMUs"
        img1 = window.skeleton_view.grab_rgb()
        joints1 = window.skeleton_view.shown_joints_world_m
        frames = window.bridge.stats().frames
        qtbot.waitUntil(lambda: window.bridge.stats().frames >= frames + 5, timeout=15000)
        img2 = window.skeleton_view.grab_rgb()
        joints2 = window.skeleton_view.shown_joints_world_m
        assert joints1 is not None and np.all(np.isfinite(joints2))
        assert np.abs(joints2 - joints1).max() > 0.005, "the pose should follow the moving inputs"
        assert np.any(img1 != img2, axis=-1).sum() > 100, "the 3D view's pixels must change with the pose"
        window._refresh_panels()
        window.save_screenshot(output_dir / "2_live_model.png")

        # record a short take
        window.record_panel.countdown_spin.setValue(0)
        window.record_panel.name_edit.setText("real drivers")
        folder = window.record_panel.start()
        assert folder is not None and window.record_panel.state.value == "recording"
        qtbot.waitUntil(lambda: window.record_panel.elapsed_s >= 3.0, timeout=20000)
        window.save_screenshot(output_dir / "3_recording.png")
        with qtbot.waitSignal(window.record_panel.stopped, timeout=30000):
            window.record_panel.stop()
        settings = window.settings

        # a sensor taken off: select its row, Remove; the model goes on with the five others
        head_row = next(i for i, r in enumerate(panel.row_texts()) if r[0] == rig.device_id(ImuSite.HEAD))
        panel.table.selectRow(head_row)
        panel.remove_button.click()
        assert ImuSite.HEAD not in window.pipeline.imus and len(panel.row_texts()) == NUM_IMUS
        assert rig.spec(ImuSite.HEAD) not in window.settings.devices and "head" not in window.settings.sites
        qtbot.waitUntil(lambda: "IMU missing: head" in window.pipeline.pose_source.status_message, timeout=10000)
        # the camera unplugged for good: removed, the IMUs keep streaming
        panel.table.clearSelection()
        panel.table.selectRow(len(panel.row_texts()) - 1)
        panel.remove_button.click()
        assert window.pipeline.camera is None and window.settings.camera == ""
        qtbot.waitUntil(lambda: len(panel.row_texts()) == NUM_IMUS - 1
                        and all(r[2] == "streaming" for r in panel.row_texts()), timeout=10000)
        window.save_screenshot(output_dir / "4_removed_head_and_camera.png")
        window.close()
        bursts = rig.bursts

    # the take's files
    meta = read_meta(folder)
    assert meta.status.value == "complete" and meta.duration_s >= 2.5 and meta.frames >= 5
    assert meta.model == st.source and meta.calibration_profile == profile_path.stem and meta.calibration is not None
    assert meta.performer_height_m == PERFORMER_HEIGHT_M
    recorded = {d.device_id: d for d in meta.devices}
    for site in ImuSite:
        assert recorded[rig.device_id(site)].site == site.name.lower()
    poses = read_poses(folder / "poses.csv")
    assert poses.num_frames == meta.frames and np.isfinite(poses.joints_m).all()
    # the live skeleton was scaled to the performer by a running estimate over the last 10 s (which
    # need not match these 3 s of squats: 2-10 % off here), and the take's BVH skeleton, read back,
    # stands exactly that tall in its T-pose
    assert skeleton_height_m(poses.joints_m) == pytest.approx(PERFORMER_HEIGHT_M, rel=0.15)
    rest = read_bvh(folder / "take.bvh").rest_positions()  # the T-pose's joints and end sites
    standing = rest[:, 1].max() - rest[:, 1].min() + ANKLE_ABOVE_FLOOR_M  # head end site to the ankles' end sites
    assert standing == pytest.approx(PERFORMER_HEIGHT_M, abs=0.005)
    with open(folder / "raw.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    per_device = {}
    for row in rows:
        per_device[row["device_id"]] = per_device.get(row["device_id"], 0) + 1
    for site in ImuSite:  # every IMU's samples, at about its rate
        assert per_device.get(rig.device_id(site), 0) >= 0.5 * IMU_RATE_HZ * meta.duration_s, per_device
    assert (folder / "take.bvh").is_file() and bursts > 0

    # the next start opens the same devices at the same sites (not started here)
    from app.live import build_hardware_pipeline

    again = build_hardware_pipeline(settings)
    assert {s: d.device_id for s, d in again.imus.items()} == {s: rig.device_id(s) for s in ImuSite}
    assert again.camera is not None and again.camera.kind == DeviceKind.CAMERA
    assert again.pose_source.performer_height_m == PERFORMER_HEIGHT_M
    (output_dir / "take.json").write_text((folder / "take.json").read_text())
