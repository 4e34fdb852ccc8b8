"""The studio window end to end, in demo mode, through the real pipeline (pytest-qt under Xvfb).

Only the hardware is simulated (the demo's simulated IMUs and camera, which run their own
threads through the real buffers and synchroniser); the window, pipeline, recorder, take files
and playback are the real ones. Screenshots of the main states are saved under the test output.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("pytestqt")

from app.panels.status_panel import InputHealth  # noqa: E402
from app.settings import PoseSourceChoice  # noqa: E402
from app.views.palette import LEFT_BONES, LEFT_RGB, RIGHT_BONES, RIGHT_RGB  # noqa: E402
from sensors.device import DeviceState  # noqa: E402
from vimcan_core.skeleton import NUM_IMUS  # noqa: E402

#: window tests check the UI at the camera rate with the simulation's truth; the model has its own test
GT = PoseSourceChoice.GROUND_TRUTH

ROOT = Path(__file__).resolve().parents[2]
COLOUR_TOL = 10


def colour_mask(img: np.ndarray, rgb) -> np.ndarray:
    return np.all(np.abs(img.astype(np.int32) - np.array(rgb)) <= COLOUR_TOL, axis=-1)


def distance_to_segments(points: np.ndarray, seg_a: np.ndarray, seg_b: np.ndarray) -> np.ndarray:
    d = seg_b - seg_a
    t = np.einsum("nsk,sk->ns", points[:, None, :] - seg_a[None], d) / np.maximum((d * d).sum(-1), 1e-9)
    nearest = seg_a[None] + np.clip(t, 0.0, 1.0)[..., None] * d[None]
    return np.linalg.norm(points[:, None, :] - nearest, axis=-1).min(axis=1)


@pytest.fixture
def studio(qtbot, tmp_path):
    from app.main_window import MainWindow, StudioOptions
    from app.settings import StudioSettings, open_qsettings

    settings = StudioSettings(takes_dir=str(tmp_path / "takes"), pose_source=GT)
    window = MainWindow(StudioOptions(demo=True), settings, open_qsettings(tmp_path / "studio.ini"))
    qtbot.addWidget(window)
    window.resize(1400, 880)
    window.show()
    qtbot.waitExposed(window)
    window.start()
    yield window
    window.close()


def grab_with_joints(window):
    """The GL framebuffer and the joints drawn in it, read together in the UI thread."""
    img = window.skeleton_view.grab_rgb()
    return img, window.skeleton_view.shown_joints_world_m


def check_skeleton_pixels(window, img, joints) -> None:
    px = window.skeleton_view.project_world(joints)  # 17 x 2
    for rgb, bones in ((LEFT_RGB, LEFT_BONES), (RIGHT_RGB, RIGHT_BONES)):
        ys, xs = np.nonzero(colour_mask(img, rgb))
        assert len(xs) > 80, f"only {len(xs)} pixels of the colour {rgb}: is the skeleton drawn?"
        pts = np.column_stack((xs, ys)).astype(float)
        dist = distance_to_segments(pts, px[[b[0] for b in bones]], px[[b[1] for b in bones]])
        assert np.percentile(dist, 98) < 4.0, f"{rgb}: pixels are not on the projected bones"


def test_demo_runs_and_the_3d_view_shows_the_moving_skeleton(qtbot, studio, output_dir):
    qtbot.waitUntil(lambda: studio.bridge.stats().frames >= 60, timeout=30000)
    img1, joints1 = grab_with_joints(studio)
    assert joints1 is not None
    check_skeleton_pixels(studio, img1, joints1)
    studio.save_screenshot(output_dir / "studio_demo.png")
    studio.skeleton_view.gl_widget.grabFramebuffer().save(str(output_dir / "gl_framebuffer.png"))
    frames = studio.bridge.stats().frames
    qtbot.waitUntil(lambda: studio.bridge.stats().frames >= frames + 15, timeout=10000)
    img2, joints2 = grab_with_joints(studio)
    check_skeleton_pixels(studio, img2, joints2)
    assert np.abs(joints2 - joints1).max() > 0.02, "the performer should have moved"
    changed = np.any(img1 != img2, axis=-1)
    assert changed.sum() > 200, "the 3D view's pixels must change with the pose"

    # the pose source is labelled, and ground truth is never passed off as the model
    st = studio.inference_status()
    source = studio.pipeline.pose_source.name
    assert st.source == source and source in studio.status_panel.source_label.text()
    if "ground truth" in source:
        assert not st.is_model and "not the model" in studio.status_panel.source_label.text()
    assert st.health == InputHealth.ALL and st.poses_per_s > 10.0
    assert st.latency_median_ms is not None and 0.0 < st.latency_median_ms < 1000.0

    # one row per device, all streaming at their rates
    rows = studio.devices_panel.row_texts()
    assert len(rows) == NUM_IMUS + 1
    for name, kind, state, rate, *_ in rows:
        assert state == "streaming", (name, state)
        hz = float(rate.split()[0])
        assert (40.0 < hz < 80.0) if kind == "imu" else (20.0 < hz < 40.0), (name, rate)
    # the IMU plots got the frames (quaternions are unit length)
    x, y = studio.imu_plots._curves[0][0].getData()
    assert len(y) >= 30
    q = studio.imu_plots._q[studio.imu_plots._i - 1]
    np.testing.assert_allclose(np.linalg.norm(q, axis=-1), 1.0, atol=1e-6)


def test_capture_workflow_record_browse_play_reexport(qtbot, studio, output_dir):
    window = studio
    qtbot.waitUntil(lambda: window.bridge.stats().frames >= 30, timeout=30000)
    window.save_screenshot(output_dir / "1_live.png")

    # disconnect every device: the pose freezes and the window says why
    window.devices_panel.disconnect_all_button.click()
    assert all(d.stats().state == DeviceState.STOPPED for d in window.pipeline.devices())
    qtbot.waitUntil(lambda: window.inference_status().health == InputHealth.FROZEN, timeout=5000)
    window._refresh_panels()
    assert "FROZEN" in window.status_panel.source_label.text()
    window.save_screenshot(output_dir / "2_disconnected.png")

    # connect them again from the panel: streaming resumes
    window.devices_panel.connect_all_button.click()
    qtbot.waitUntil(lambda: all(r[2] == "streaming" for r in window.devices_panel.row_texts())
                    and window.inference_status().health == InputHealth.ALL, timeout=10000)

    # the camera drops out (performer out of view): the pose goes on from the IMUs, flagged
    window.pipeline.demo.camera.simulate_unplug(2.0)
    qtbot.waitUntil(lambda: window.inference_status().health == InputHealth.DEGRADED, timeout=5000)
    st = window.inference_status()
    assert "camera lost" in st.health_detail
    frames = window.bridge.stats().frames
    qtbot.waitUntil(lambda: window.bridge.stats().frames > frames + 10, timeout=5000)  # still producing poses
    window._refresh_panels()
    assert "camera lost" in window.keypoints_view._message.textItem.toPlainText()
    window.save_screenshot(output_dir / "3_camera_lost.png")
    qtbot.waitUntil(lambda: window.inference_status().health == InputHealth.ALL, timeout=10000)

    # the performer walks out of the picture: frames keep coming, with nobody in them
    window.pipeline.demo.camera.simulate_out_of_view(1.5)
    qtbot.waitUntil(lambda: "nobody in view" in window.inference_status().health_detail, timeout=5000)
    assert window.skeleton_view._dimmed  # drawn translucent: lower confidence
    window.save_screenshot(output_dir / "3b_nobody_in_view.png")
    qtbot.waitUntil(lambda: window.inference_status().health == InputHealth.ALL, timeout=10000)

    # record 10 s with the keyboard shortcut (Ctrl+R), with a 1 s countdown
    window.record_panel.countdown_spin.setValue(1)
    window.record_panel.name_edit.setText("workflow take")
    window.activateWindow()
    window.action_record.trigger()  # what Ctrl+R does (the shortcut is checked below)
    assert window.action_record.shortcut().toString() == "Ctrl+R"
    assert window.record_panel.state.value == "countdown"
    qtbot.waitUntil(lambda: window.record_panel.state.value == "recording", timeout=3000)
    t0 = time.monotonic()
    qtbot.waitUntil(lambda: window.record_panel.elapsed_s >= 10.0, timeout=20000)
    window.save_screenshot(output_dir / "4_recording.png")
    with qtbot.waitSignal(window.record_panel.stopped, timeout=30000) as saved:
        window.action_record.trigger()
    recorded_s = time.monotonic() - t0
    folder = Path(saved.args[0])
    assert folder.name == "workflow_take" and folder.parent == Path(window.settings.takes_dir)

    # the take is listed, selected, with its duration and frame count
    take = window.takes_browser.selected()
    assert take is not None and take.folder == folder
    assert take.status == "complete"
    assert 9.5 <= take.duration_s <= recorded_s + 0.5  # at least the 10 s asked for, at most the wall time
    # 30 Hz less what a loaded machine drops (the pipeline counts and shows those)
    assert 0.5 * 30 * take.duration_s < take.frames <= 30 * take.duration_s + 2
    assert (folder / "take.bvh").is_file()

    # play it back in the 3D view: the drawn joints are the take's
    from app.main_window import ViewMode
    from vimcan_core.take import read_poses

    table = read_poses(folder / "poses.csv")
    assert table.num_frames == take.frames
    assert window.takes_browser.play_selected()
    assert window.mode == ViewMode.PLAYBACK
    window.takes_browser.toggle_play()  # pause, then scrub
    window.takes_browser.scrubber.setValue(150)
    expected = table.joints_m[150] + table.root_m[150]
    qtbot.wait(100)  # live frames keep arriving; they must not replace the playback pose
    np.testing.assert_allclose(window.skeleton_view.shown_joints_world_m, expected, atol=1e-6)
    img, joints = grab_with_joints(window)
    check_skeleton_pixels(window, img, joints)
    window.save_screenshot(output_dir / "5_playback.png")
    window.takes_browser.scrubber.setValue(20)
    img20, _ = grab_with_joints(window)
    assert np.any(img != img20, axis=-1).sum() > 100
    window.takes_browser.stop_playback()
    assert window.mode == ViewMode.LIVE

    # re-export the BVH from the browser
    (folder / "take.bvh").unlink()
    with qtbot.waitSignal(window.takes_browser.job_finished, timeout=60000):
        assert window.takes_browser.run_job("export")
    text = (folder / "take.bvh").read_text()
    assert text.startswith("HIERARCHY") and f"Frames: {int(np.all(np.isfinite(table.joints_m), axis=(1, 2)).sum())}" in text
    window.save_screenshot(output_dir / "6_reexported.png")

    # offline re-solve with the shipped bidirectional weights, then play the re-solved poses
    from sensors.export import DEFAULT_CHECKPOINT

    if DEFAULT_CHECKPOINT.is_file():
        with qtbot.waitSignal(window.takes_browser.job_finished, timeout=120000) as blocker:
            assert window.takes_browser.run_job("resolve")
        assert blocker.args[0] == "resolve"
        resolved = read_poses(folder / "poses_resolved.csv")
        assert resolved.num_frames == table.num_frames and (folder / "take_resolved.bvh").is_file()
        window.takes_browser.select(folder)
        assert window.takes_browser.resolved_box.isEnabled()
        window.takes_browser.resolved_box.setChecked(True)
        assert window.takes_browser.play_selected()
        window.takes_browser.toggle_play()
        window.takes_browser.scrubber.setValue(100)
        from app.views.skeleton_view import place_on_floor

        np.testing.assert_allclose(window.skeleton_view.shown_joints_world_m,
                                   place_on_floor(resolved.joints_m[100], resolved.root_m[100]), atol=1e-6)
        window.save_screenshot(output_dir / "7_resolved_playback.png")
        window.takes_browser.stop_playback()

    # a take whose folder vanishes while recording (drive unplugged): the window stops and says why
    import shutil

    window.record_panel.countdown_spin.setValue(0)
    window.record_panel.name_edit.setText("doomed")
    doomed = window.record_panel.start()
    assert doomed is not None and window.record_panel.state.value == "recording"
    shutil.rmtree(doomed)
    qtbot.waitUntil(lambda: window.record_panel.state.value == "idle", timeout=10000)
    assert "recording stopped" in window.record_panel.state_label.text()
    qtbot.waitUntil(lambda: any("recording stopped" in line for line in window.log_view.lines()), timeout=5000)


def test_studio_command_line(capsys):
    from app.studio import main

    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0 and "vimcan-studio" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    assert "--headless" in out and "--demo" in out and "--seconds" in out and "--live" in out

    # --live: real devices only; the simulated defaults are dropped, real ones keep their sites
    from app.settings import StudioSettings
    from app.studio import live_settings

    assert live_settings(StudioSettings()) == StudioSettings(devices=(), camera="")
    mixed = StudioSettings(devices=("sim", "witmotion:/dev/ttyUSB0", "line:COM4"), sites=("head", "pelvis", "left_forearm"),
                           camera="camera:0")
    live = live_settings(mixed)
    assert live.devices == ("witmotion:/dev/ttyUSB0", "line:COM4") and live.sites == ("pelvis", "left_forearm")
    assert live.camera == "camera:0"


def test_headless_demo_without_a_display_saves_a_screenshot_and_a_take(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY")}
    ini = tmp_path / "studio.ini"  # the simulation's truth: this checks the headless run, not the model
    ini.write_text("[studio]\npose_source=ground_truth\n")
    proc = subprocess.run([sys.executable, "-m", "app.studio", "--seconds", "4", "--out", str(tmp_path),
                           "--settings", str(ini)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "no display" in proc.stdout.lower()
    shot = tmp_path / "studio.png"
    assert f"screenshot: {shot}" in proc.stdout
    takes = [p for p in (tmp_path / "takes").iterdir() if (p / "take.json").is_file()]
    assert len(takes) == 1 and f"take:       {takes[0]}" in proc.stdout
    from PySide6 import QtGui

    image = QtGui.QImage(str(shot)).convertToFormat(QtGui.QImage.Format.Format_RGB888)
    assert image.width() >= 1000
    h, w, stride = image.height(), image.width(), image.bytesPerLine()
    arr = np.frombuffer(image.constBits(), np.uint8, count=h * stride).reshape(h, stride)[:, : 3 * w].reshape(h, w, 3)
    assert colour_mask(arr, LEFT_RGB).sum() > 80 and colour_mask(arr, RIGHT_RGB).sum() > 80
    from vimcan_core.take import read_meta

    meta = read_meta(takes[0])
    assert meta.frames > 45 and meta.status.value == "complete"


def test_calibration_wizard_from_the_window(qtbot, tmp_path, output_dir, monkeypatch):
    """Ctrl+K opens the wizard on the pipeline's own devices. The demo performer follows the wizard's
    prompts as a user would (stands, moves the sensor of each site it is asked for, T-pose, then the
    heading pose, then moves freely again) while the test only clicks the wizard's buttons; its sensors sit on their bones with random mountings and report in
    random world headings, so the heading pose is needed. The recovered mountings are the rig's true
    ones within ``MOUNTING_TOL_DEG``, and the saved profile is offered in the toolbar."""
    from app.calibration_wizard import CapturePage, CheckPage, Phase, WizardConfig
    from app.main_window import MainWindow, StudioOptions
    from app.settings import StudioSettings, open_qsettings
    from sensors.demo import DemoConfig, build_demo_pipeline
    from vimcan_core.calibration import CalibrationConfig, HeadingMethod
    from vimcan_core.calibration_profile import ENV_CONFIG_DIR
    from vimcan_core.performer import Motion
    from vimcan_core.rotations import quat_angle, quat_conj, quat_mul

    MOUNTING_TOL_DEG = 3.0
    monkeypatch.setenv(ENV_CONFIG_DIR, str(tmp_path / "config"))
    pipeline = build_demo_pipeline(config=DemoConfig(seed=5, random_mount_deg=60.0, random_heading_deg=150.0))
    rig = pipeline.demo
    assert not rig.is_identity_calibration
    settings = StudioSettings(takes_dir=str(tmp_path / "takes"), pose_source=GT)
    studio = MainWindow(StudioOptions(demo=True), settings, open_qsettings(tmp_path / "studio.ini"), pipeline=pipeline)
    qtbot.addWidget(studio)
    studio.resize(1400, 880)
    studio.show()
    studio.start()
    assert studio.action_calibrate.shortcut().toString() == "Ctrl+K"
    fast = WizardConfig(poll_ms=30, countdown_s=0.8, capture_s=1.2, camera_ok_s=0.3, assign_hold_s=0.3,
                        calibration=CalibrationConfig(heading=HeadingMethod.HEADING_POSE))
    qtbot.waitUntil(lambda: studio.bridge.stats().frames >= 10, timeout=30000)
    assert rig.performer.script.motion == Motion.LOOP
    wizard = studio.open_calibration_wizard(fast)
    qtbot.addWidget(wizard)
    qtbot.waitUntil(lambda: wizard.currentPage().isComplete(), timeout=5000)  # devices: all 7 ticked
    assert len(wizard.all_devices) == NUM_IMUS + 1
    assert rig.performer.script.motion == Motion.STILL  # asked to stand
    wizard.next()
    sites = wizard.currentPage()
    assert sites.isComplete()  # sites: known from the pipeline
    # assigned again from the start: the wizard asks for one site after the other, the performer moves
    # the bone it names, and the wizard finds the sensor that moved
    sites.clear_button.click()
    assert not sites.isComplete() and rig.performer.script.motion == Motion.MOVE_SITE
    qtbot.waitUntil(sites.isComplete, timeout=40000)
    assert wizard.assignment == dict(rig.imus)
    assert rig.performer.script.motion == Motion.STILL  # every sensor placed: stand still
    wizard.next()
    qtbot.waitUntil(lambda: wizard.currentPage().isComplete(), timeout=10000)  # camera: all keypoints seen
    wizard.next()
    page = wizard.currentPage()
    assert isinstance(page, CapturePage)
    assert rig.performer.script.motion == Motion.T_POSE  # the countdown asks for the T-pose
    qtbot.waitUntil(lambda: page.phase == Phase.CAPTURE_HEADING, timeout=20000)
    assert rig.performer.script.motion == Motion.POSE  # ... then for the heading pose
    qtbot.wait(300)
    studio.save_screenshot(output_dir / "wizard_heading_pose_over_studio.png")
    wizard.grab().save(str(output_dir / "wizard_heading_pose.png"))
    qtbot.waitUntil(lambda: page.phase in (Phase.DONE, Phase.FAILED), timeout=30000)
    assert page.phase == Phase.DONE, page.status.text()
    assert page.restarts == 0, "the performer held each pose still"
    wizard.next()
    assert isinstance(wizard.currentPage(), CheckPage)
    assert rig.performer.script.motion == Motion.LOOP  # "move a little": the demo loop again
    wizard.next()
    wizard.currentPage().name.setText("Demo rig")
    with qtbot.waitSignal(wizard.calibrated, timeout=5000):
        wizard.button(wizard.WizardButton.FinishButton).click()

    truth = rig.true_calibration()
    err = np.degrees(quat_angle(wizard.calibration.q_bone_from_sensor, truth.q_bone_from_sensor))
    (output_dir / "mounting_errors_deg.txt").write_text(" ".join(f"{e:.2f}" for e in err) + "\n")
    assert err.max() < MOUNTING_TOL_DEG, f"mounting errors {np.round(err, 2)} deg"
    # the whole chain (IMU world -> camera, mounting) gives the true bone orientations in the camera frame
    q_imu = np.array([rig.imus[s].measured_quat(rig.performer.pose_at(3.7, Motion.LOOP).site_quats_world[s])
                      for s in sorted(rig.imus)])
    bones_err = np.degrees(quat_angle(wizard.calibration.bone_quats_camera(q_imu),
                                      quat_mul(quat_conj(truth.quat_world_from_camera),
                                               rig.performer.pose_at(3.7, Motion.LOOP).site_quats_world)))
    assert bones_err.max() < MOUNTING_TOL_DEG + 1.0, f"camera-frame bone errors {np.round(bones_err, 2)} deg"
    assert studio.profile_box.currentText() == wizard.profile_path.stem
    assert wizard.profile_path.stem in studio.calibration_label.text()
    assert studio.settings.last_profile == wizard.profile_path.stem
    studio.close()


def test_studio_runs_the_streaming_model_when_weights_are_given(qtbot, tmp_path, output_dir):
    """The shipped streaming weights (or, before they exist, a random vimcan-t streaming checkpoint:
    the wiring, not the accuracy) drive the window: labelled as the model, which model and backend
    shown, poses flowing, drops counted, the skeleton drawn."""
    torch = pytest.importorskip("torch")
    from app.live import SHIPPED_WEIGHTS
    from app.main_window import MainWindow, StudioOptions
    from app.settings import StudioSettings, open_qsettings
    from sensors.model_source import ModelPoseSource

    ckpt = SHIPPED_WEIGHTS
    if not ckpt.is_file():
        from vimcan_core.model import Vimcan, preset
        from vimcan_core.model.checkpoint import save_checkpoint

        torch.manual_seed(0)
        ckpt = save_checkpoint(tmp_path / "vimcan-t-streaming.pt", Vimcan(preset("vimcan-t", streaming=True)))
    settings = StudioSettings(takes_dir=str(tmp_path / "takes"), model_path=str(ckpt),
                              pose_source=PoseSourceChoice.MODEL)
    window = MainWindow(StudioOptions(demo=True), settings, open_qsettings(tmp_path / "studio.ini"))
    qtbot.addWidget(window)
    window.resize(1400, 880)
    window.show()
    assert isinstance(window.pipeline.pose_source, ModelPoseSource)
    # the demo gives the model its performer's height, as a user types it into the wizard
    assert window.pipeline.pose_source.performer_height_m == pytest.approx(window.pipeline.demo.performer_height_m)
    window.start()
    qtbot.waitUntil(lambda: window.bridge.stats().frames >= 10, timeout=30000)
    window._refresh_panels()
    st = window.inference_status()
    assert st.is_model and st.source == window.pipeline.pose_source.name
    assert st.backend.startswith(("cpu", "cuda"))
    assert st.model.startswith(ckpt.name) and "streaming" in st.model and "parameters" in st.model
    assert "not the model" not in window.status_panel.source_label.text()
    assert st.dropped_frames == window.pipeline.stats().frames_dropped
    height = window.pipeline.demo.performer_height_m
    assert st.body_size.startswith(f"performer {height:.2f} m (network x ")  # the scale in use, shown
    assert window.status_panel._values["size"].text() == st.body_size
    img, joints = grab_with_joints(window)
    assert joints is not None and np.all(np.isfinite(joints))
    if ckpt == SHIPPED_WEIGHTS:  # trained weights: a body, drawn where its joints project
        check_skeleton_pixels(window, img, joints)
    window.save_screenshot(output_dir / "studio_model.png")
    window.close()


def test_headless_live_runs_the_real_devices_not_the_demo(tmp_path, shared_data):
    """``--live --headless`` (a rig without a screen) captures from the given devices: a recorded Movella DOT
    file replayed as a live IMU and the real squat video through MediaPipe, with the shipped model."""
    dot = next((shared_data / "imu" / "movella_dot").glob("*.csv"))
    video = shared_data / "video" / "pose_squats.mp4"
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY")}
    proc = subprocess.run([sys.executable, "-m", "app.studio", "--live", "--headless", "--seconds", "5",
                           "--out", str(tmp_path), "--settings", str(tmp_path / "studio.ini"),
                           "--device", f"file:{dot}", "--camera", str(video)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "ran live capture" in proc.stdout and "demo" not in proc.stdout
    from vimcan_core.take import read_meta

    takes = [p for p in (tmp_path / "takes").iterdir() if (p / "take.json").is_file()]
    assert len(takes) == 1
    meta = read_meta(takes[0])
    kinds = {d.kind: d for d in meta.devices}
    assert set(kinds) == {"imu", "camera"} and not any(d.device_id.startswith("sim") for d in meta.devices)
    assert kinds["imu"].samples > 20 and kinds["camera"].samples > 0
    assert meta.frames > 10 and meta.model is not None and "VIMCAN" in meta.model
