"""The views, panels, bridge and settings of the studio, each on its own (pytest-qt under Xvfb).

The 3D view is checked on its pixels: the OpenGL framebuffer is read back, the left and right
bone colours are counted and located against the joints projected by the view's own camera
matrices, and the pixels must follow a change of pose.
"""

from __future__ import annotations

import logging
import queue
import threading
import time

import numpy as np
import pytest

pytest.importorskip("pytestqt")

from app.settings import PoseSourceChoice  # noqa: E402
from app.views.palette import FRUSTUM_RGB, LEFT_BONES, LEFT_RGB, RIGHT_BONES, RIGHT_RGB  # noqa: E402
from vimcan_core.camera import PinholeCamera  # noqa: E402
from vimcan_core.kinematics import forward_kinematics  # noqa: E402
from vimcan_core.rotations import quat_from_axis_angle  # noqa: E402
from vimcan_core.skeleton import NUM_IMUS, NUM_JOINTS, Joint, default_rest_pose  # noqa: E402

#: window tests check the UI at the camera rate with the simulation's truth; the model has its own test
GT = PoseSourceChoice.GROUND_TRUTH

COLOUR_TOL = 10  # per channel, 0-255


def colour_mask(img: np.ndarray, rgb: tuple[int, int, int]) -> np.ndarray:
    return np.all(np.abs(img.astype(np.int32) - np.array(rgb)) <= COLOUR_TOL, axis=-1)


def distance_to_segments(points: np.ndarray, seg_a: np.ndarray, seg_b: np.ndarray) -> np.ndarray:
    """N x 2 points, S x 2 segment ends -> N distances to the nearest segment (pixels)."""
    d = seg_b - seg_a  # S x 2
    t = np.einsum("nsk,sk->ns", points[:, None, :] - seg_a[None], d) / np.maximum((d * d).sum(-1), 1e-9)
    t = np.clip(t, 0.0, 1.0)
    nearest = seg_a[None] + t[..., None] * d[None]  # N x S x 2
    return np.linalg.norm(points[:, None, :] - nearest, axis=-1).min(axis=1)


def pose_with_left_arm(angle_deg: float) -> np.ndarray:
    """The T-pose with the left arm rotated about the body's forward axis (positive = up), J x 3 world."""
    rest = default_rest_pose()
    local = np.tile([1.0, 0.0, 0.0, 0.0], (NUM_JOINTS, 1))
    local[Joint.LEFT_SHOULDER] = quat_from_axis_angle(np.array([0.0, 0.0, 1.0]), np.radians(angle_deg))
    joints, _ = forward_kinematics(local, rest.offsets_m[0], rest)
    return joints


def independent_projection(view, points_world_m: np.ndarray) -> np.ndarray:
    """Pixels of world points under the GL view's camera, from its orbit parameters alone (look-at and
    a perspective with a horizontal field of view), not from pyqtgraph's matrices nor the view's helper."""
    o = view.gl_widget.opts
    w, h = view.gl_widget.deviceWidth(), view.gl_widget.deviceHeight()
    gl = np.column_stack((points_world_m[:, 0], -points_world_m[:, 2], points_world_m[:, 1]))  # Y up -> Z up
    c = np.array([o["center"].x(), o["center"].y(), o["center"].z()])
    el, az = np.radians(o["elevation"]), np.radians(o["azimuth"])
    eye = c + o["distance"] * np.array([np.cos(el) * np.cos(az), np.cos(el) * np.sin(az), np.sin(el)])
    fwd = (c - eye) / np.linalg.norm(c - eye)
    right = np.cross(fwd, [0.0, 0.0, 1.0])
    right /= np.linalg.norm(right)
    up = np.cross(right, fwd)
    rel = gl - eye
    x, y, z = rel @ right, rel @ up, rel @ fwd
    f = (w / 2) / np.tan(np.radians(o["fov"]) / 2)
    return np.column_stack((w / 2 + f * x / z, h / 2 - f * y / z))


@pytest.fixture
def skeleton_view(qtbot):
    from app.views.skeleton_view import SkeletonView

    view = SkeletonView()
    qtbot.addWidget(view)
    view.resize(640, 480)
    view.show()
    qtbot.waitExposed(view)
    return view


def render(qtbot, view) -> np.ndarray:
    qtbot.wait(30)
    return view.grab_rgb()


def test_skeleton_pixels_are_on_the_projected_bones(qtbot, skeleton_view, output_dir):
    joints = pose_with_left_arm(0.0)
    skeleton_view.set_pose(joints)
    img = render(qtbot, skeleton_view)
    px = independent_projection(skeleton_view, joints)  # J x 2
    np.testing.assert_allclose(skeleton_view.project_world(joints), px, atol=0.5)
    assert img.shape[:2] == (480, 640)
    for rgb, bones, other in ((LEFT_RGB, LEFT_BONES, RIGHT_BONES), (RIGHT_RGB, RIGHT_BONES, LEFT_BONES)):
        mask = colour_mask(img, rgb)
        ys, xs = np.nonzero(mask)
        assert len(xs) > 300, f"only {len(xs)} pixels of colour {rgb}"
        pts = np.column_stack((xs, ys)).astype(float)
        a = px[[b[0] for b in bones]]
        b = px[[b[1] for b in bones]]
        dist = distance_to_segments(pts, a, b)
        assert np.percentile(dist, 99) < 4.0, f"{rgb} pixels away from their bones: {np.percentile(dist, 99):.1f} px"
        # and every bone of that side is drawn: sample its middle
        for (pa, pb) in zip(a, b):
            mid = np.round((pa + pb) / 2).astype(int)
            window = mask[mid[1] - 3: mid[1] + 4, mid[0] - 3: mid[0] + 4]
            assert window.any(), f"no {rgb} pixel at bone middle {mid}"
        # no pixel of this colour along the other side's bones (sides are not swapped)
        oa, ob = px[[b[0] for b in other]], px[[b[1] for b in other]]
        lengths = np.linalg.norm(ob - oa, axis=1)
        assert np.mean(distance_to_segments(pts, oa, ob) < 2.0) < 0.1 or lengths.min() < 5
    # seen from the front the performer's left (+X) is on the right of the picture
    assert np.nonzero(colour_mask(img, LEFT_RGB))[1].mean() > np.nonzero(colour_mask(img, RIGHT_RGB))[1].mean()
    skeleton_view.gl_widget.grabFramebuffer().save(str(output_dir / "skeleton_tpose.png"))


def test_skeleton_pixels_follow_the_pose(qtbot, skeleton_view, output_dir):
    down = pose_with_left_arm(-75.0)
    up = pose_with_left_arm(60.0)
    skeleton_view.set_pose(down)
    img_down = render(qtbot, skeleton_view)
    skeleton_view.set_pose(up)
    img_up = render(qtbot, skeleton_view)
    skeleton_view.gl_widget.grabFramebuffer().save(str(output_dir / "skeleton_arm_up.png"))
    left_down, left_up = colour_mask(img_down, LEFT_RGB), colour_mask(img_up, LEFT_RGB)
    wrist_down = skeleton_view.project_world(down)[Joint.LEFT_WRIST]
    wrist_up = skeleton_view.project_world(up)[Joint.LEFT_WRIST]
    assert wrist_up[1] < wrist_down[1] - 50, "the raised wrist must project higher on screen"
    # the left-coloured pixels moved up with the arm; the right side did not move
    assert np.nonzero(left_up)[0].mean() < np.nonzero(left_down)[0].mean() - 10
    assert np.array_equal(colour_mask(img_down, RIGHT_RGB), colour_mask(img_up, RIGHT_RGB))
    changed = np.any(img_down != img_up, axis=-1).sum()
    assert changed > 500
    # near the old forearm there is no left colour any more, near the new one there is
    def near(mask, p, r=4):
        x, y = np.round(p).astype(int)
        return mask[y - r: y + r + 1, x - r: x + r + 1].any()
    elbow_down = skeleton_view.project_world(down)[Joint.LEFT_ELBOW]
    mid_down = (elbow_down + wrist_down) / 2
    elbow_up = skeleton_view.project_world(up)[Joint.LEFT_ELBOW]
    mid_up = (elbow_up + wrist_up) / 2
    assert near(left_down, mid_down) and not near(left_up, mid_down)
    assert near(left_up, mid_up) and not near(left_down, mid_up)


def test_clearing_the_pose_removes_the_skeleton(qtbot, skeleton_view):
    skeleton_view.set_pose(pose_with_left_arm(0.0))
    assert colour_mask(render(qtbot, skeleton_view), LEFT_RGB).sum() > 300
    skeleton_view.set_pose(None)
    img = render(qtbot, skeleton_view)
    assert colour_mask(img, LEFT_RGB).sum() == 0 and colour_mask(img, RIGHT_RGB).sum() == 0
    assert skeleton_view.shown_joints_world_m is None


def test_camera_frustum_is_drawn_towards_the_camera(qtbot, skeleton_view):
    from app.views.skeleton_view import camera_frustum_world

    camera = PinholeCamera.looking_at(np.array([1.5, 1.3, 3.0]), np.array([0.0, 1.0, 0.0]))
    segs = camera_frustum_world(camera, depth_m=0.5)
    assert segs.shape == (16, 3)
    np.testing.assert_allclose(segs[0], camera.position_world_m)
    # the far corners are 0.5 m in front of the camera and project onto the image corners
    corners_cam = camera.world_to_camera(segs[1:8:2])
    np.testing.assert_allclose(corners_cam[:, 2], 0.5, atol=1e-9)
    np.testing.assert_allclose(camera.project(segs[1:8:2]), [[0, 0], [640, 0], [640, 480], [0, 480]], atol=1e-6)
    skeleton_view.gl_widget.setCameraPosition(distance=8.0)
    before = render(qtbot, skeleton_view)
    skeleton_view.set_camera(camera)
    after = render(qtbot, skeleton_view)
    apex = skeleton_view.project_world(np.array([camera.position_world_m]))[0]
    x, y = np.round(apex).astype(int)
    assert not np.array_equal(before, after)
    frustum_like = np.abs(after[y - 4: y + 5, x - 4: x + 5].astype(int) - FRUSTUM_RGB).sum(-1).min()
    assert frustum_like < 120, "the frustum's apex should be drawn at the camera's position"


def test_follow_moves_the_view_centre_to_the_performer(qtbot, skeleton_view):
    joints = pose_with_left_arm(0.0) + np.array([2.0, 0.0, -1.0])  # performer walked away
    skeleton_view.set_follow(True)
    for _ in range(60):
        skeleton_view.set_pose(joints)
    c = skeleton_view.gl_widget.opts["center"]
    # GL is Z up: world x -> x, world z -> -y
    assert c.x() == pytest.approx(2.0, abs=0.01) and c.y() == pytest.approx(1.0, abs=0.01)
    px = skeleton_view.project_world(joints[:1])[0]
    assert abs(px[0] - 320) < 5  # pelvis in the horizontal middle of the view


def test_keypoints_view_draws_sides_and_reports_missing_camera(qtbot, output_dir):
    from app.views.keypoints_view import KeypointsView

    view = KeypointsView()
    qtbot.addWidget(view)
    view.resize(480, 360)
    view.show()
    qtbot.waitExposed(view)
    camera = PinholeCamera.looking_at(np.array([0.0, 1.2, 3.5]), np.array([0.0, 1.0, 0.0]))
    kp = camera.project(pose_with_left_arm(0.0))  # 17 x 2
    conf = np.ones(NUM_JOINTS)
    conf[Joint.RIGHT_WRIST] = 0.0  # unseen: its bone is not drawn
    view.set_frame(kp, conf, (640, 480))
    qtbot.wait(30)
    img = view.plot.grab().toImage()
    arr = _qimage_rgb(img)
    left, right = colour_mask(arr, LEFT_RGB), colour_mask(arr, RIGHT_RGB)
    assert left.sum() > 100 and right.sum() > 100
    # the camera looks at the performer's front: their left appears on the right of the image
    assert np.nonzero(left)[1].mean() > np.nonzero(right)[1].mean()
    img.save(str(output_dir / "keypoints.png"))
    # the right forearm (elbow -> unseen wrist) is not connected
    connect = view._connect["right"]
    bones = view._bones["right"]
    forearm = bones.index((Joint.RIGHT_ELBOW, Joint.RIGHT_WRIST))
    assert not connect[2 * forearm] and connect[2 * bones.index((Joint.RIGHT_SHOULDER, Joint.RIGHT_ELBOW))]
    view.set_frame(None, None, (640, 480))
    assert view._message.isVisible() and "camera lost" in view._message.textItem.toPlainText()


def _qimage_rgb(image) -> np.ndarray:
    from PySide6 import QtGui

    image = image.convertToFormat(QtGui.QImage.Format.Format_RGB888)
    h, w, stride = image.height(), image.width(), image.bytesPerLine()
    buf = np.frombuffer(image.constBits(), dtype=np.uint8, count=h * stride).reshape(h, stride)
    return buf[:, : 3 * w].reshape(h, w, 3).copy()


def test_imu_plots_keep_the_last_samples_in_order(qtbot):
    from app.views.imu_plots import ImuPlots

    plots = ImuPlots(history=50)
    qtbot.addWidget(plots)
    present = np.ones(NUM_IMUS, dtype=bool)
    for i in range(80):
        q = np.zeros((NUM_IMUS, 4))
        q[:, 0] = i  # w carries the sample number
        plots.append(i / 30.0, q, present)
    plots.refresh()
    x, y = plots._curves[0][0].getData()
    np.testing.assert_array_equal(y, np.arange(30, 80))
    np.testing.assert_allclose(x, (np.arange(30, 80) - 79) / 30.0)
    present[3] = False
    plots.append(80 / 30.0, np.full((NUM_IMUS, 4), np.nan), present)
    assert "missing" in plots._plots[3].titleLabel.text


def test_log_view_receives_records_from_worker_threads(qtbot):
    from app.panels.log_view import LogView

    view = LogView()
    qtbot.addWidget(view)
    logger = logging.getLogger("vimcan.test.logview")
    view.install(logger, logging.INFO)
    try:
        t = threading.Thread(target=lambda: logger.error("imu left_forearm lost: port /dev/ttyUSB0 gone"))
        t.start()
        t.join()
        qtbot.waitUntil(lambda: any("ttyUSB0" in line for line in view.lines()), timeout=2000)
        assert view.counts[logging.ERROR] == 1
        view.level_box.setCurrentIndex(0)  # errors only
        logger.info("routine message")
        qtbot.wait(20)
        assert not any("routine" in line for line in view.lines())
    finally:
        view.uninstall()


def test_settings_round_trip_and_bad_values_fall_back(tmp_path):
    from app.settings import BvhOptions, PoseSourceChoice, StudioSettings, Units, load_settings, open_qsettings, save_settings

    path = tmp_path / "studio.ini"
    s = StudioSettings(devices=("witmotion:/dev/ttyUSB0@115200", "sim"), camera="0", units=Units.CENTIMETRES,
                       bvh=BvhOptions(rotation_order="XYZ", units=Units.METRES, imu_twist=False), last_profile="alice",
                       record_countdown_s=3, follow_performer=True, pose_source=PoseSourceChoice.GROUND_TRUTH)
    save_settings(s, open_qsettings(path))
    assert load_settings(open_qsettings(path)) == s  # a fresh QSettings reads the file back
    qs = open_qsettings(path)
    qs.setValue("studio/units", "furlongs")
    qs.setValue("studio/record_countdown_s", "soon")
    qs.sync()
    loaded = load_settings(open_qsettings(path))
    assert loaded.units == StudioSettings().units and loaded.record_countdown_s == 0
    assert loaded.last_profile == "alice"
    cfg = s.bvh.writer_config()
    assert cfg.order.value == "XYZ" and cfg.units.value == "m" and not cfg.imu_twist


def test_bridge_drains_without_blocking_and_counts_gaps(qtbot):
    from app.qt_bridge import PipelineBridge
    from sensors.samples import PoseFrame, SyncedFrame

    q: queue.Queue = queue.Queue(maxsize=8)
    bridge = PipelineBridge(q)
    got: list = []
    bridge.latest.connect(lambda s, p: got.append(p.frame_index))
    assert bridge.drain() == 0  # empty queue: returns at once
    now = time.monotonic()
    for idx in (0, 1, 2, 5, 6):  # 3 and 4 were dropped upstream
        synced = SyncedFrame(idx, now, None, None, None, np.full((6, 4), np.nan), np.full((6, 3), np.nan),
                             np.zeros(6, bool), now - 0.02)
        pose = PoseFrame(idx, now, np.zeros((17, 3)), None, "test", False, np.zeros(6, bool),
                         sample_host_time_s=now - 0.02)
        q.put((synced, pose))
    assert bridge.drain() == 5
    assert got == [6]  # only the newest goes to the views
    st = bridge.stats()
    assert st.frames == 5 and st.gaps == 2
    assert 20.0 <= st.latency_median_ms < 1000.0


def _write_take(parent, name: str, seconds: float, created_utc: str):
    """A take folder in the real format, written with vimcan_core.take's own writers from the performer."""
    from vimcan_core.performer import Performer
    from vimcan_core.take import POSE_COLUMNS, POSES_CSV, TakeMeta, TakeStatus, header_line, new_take_folder, pose_row, write_meta

    folder = new_take_folder(parent, name)
    t = np.arange(0.0, seconds, 1 / 30)
    pose = Performer().pose_at(t)
    with open(folder / POSES_CSV, "w", encoding="utf-8") as f:
        f.write(header_line(POSE_COLUMNS))
        for i in range(len(t)):
            f.write(pose_row(i, t[i], pose.joints_root_relative_m[i], pose.root_world_m[i], True,
                             np.ones(NUM_IMUS, bool), 1.0, pose.site_quats_world[i]))
    write_meta(folder, TakeMeta(name=name, created_utc=created_utc, status=TakeStatus.COMPLETE,
                                duration_s=float(t[-1]), frames=len(t)))
    return folder, pose.joints_world_m


def test_takes_browser_lists_plays_scrubs_and_reexports(qtbot, tmp_path):
    from app.panels.takes_browser import TakesBrowser

    old, _ = _write_take(tmp_path, "warmup", 1.0, "2026-01-01T10:00:00+00:00")
    new, joints = _write_take(tmp_path, "walk", 3.0, "2026-01-02T10:00:00+00:00")
    (tmp_path / "not_a_take").mkdir()
    browser = TakesBrowser(tmp_path)
    qtbot.addWidget(browser)
    assert [t.name for t in browser.takes] == ["walk", "warmup"]  # newest first, non-takes ignored
    assert browser.table.item(0, 2).text() == f"{(len(joints) - 1) / 30:.1f} s"
    assert browser.table.item(0, 3).text() == str(len(joints))
    assert browser.table.item(0, 1).text().startswith("2026-01-02")

    shown: list = []
    browser.pose.connect(shown.append)
    assert browser.select(new)
    with qtbot.waitSignal(browser.playback_started, timeout=1000):
        assert browser.play_selected()
    np.testing.assert_allclose(shown[0], joints[0], atol=1e-6)  # world joints, root added back
    qtbot.waitUntil(lambda: len(shown) >= 5, timeout=2000)
    browser.toggle_play()  # pause
    assert not browser.playing
    n = len(shown)
    qtbot.wait(100)
    assert len(shown) == n  # paused: no more poses
    browser.scrubber.setValue(60)  # the user drags the scrubber to 2 s
    np.testing.assert_allclose(shown[-1], joints[60], atol=1e-6)
    assert browser.time_label.text().strip().startswith("2.0")
    with qtbot.waitSignal(browser.playback_stopped, timeout=1000):
        browser.stop_playback()

    # a re-solved take plays its resolved poses when asked (here: the live poses shifted by 10 cm)
    assert not browser.resolved_box.isEnabled()
    text = (new / "poses.csv").read_text().splitlines()
    header, rows = text[0], text[1:]
    hip_x = header.split(",").index("right_hip_x")
    shifted = []
    for row in rows:
        cells = row.split(",")
        cells[hip_x] = repr(float(cells[hip_x]) + 0.1)
        shifted.append(",".join(cells))
    (new / "poses_resolved.csv").write_text("\n".join([header, *shifted]) + "\n")
    browser.refresh()
    browser.select(new)
    assert browser.resolved_box.isEnabled()
    browser.resolved_box.setChecked(True)
    assert browser.play_selected() and "re-solved" in browser.current_name
    browser.toggle_play()
    browser.scrubber.setValue(60)
    expected = joints[60].copy()
    expected[Joint.RIGHT_HIP, 0] += 0.1
    np.testing.assert_allclose(shown[-1], expected, atol=1e-6)
    browser.stop_playback()

    (new / "take.bvh").unlink(missing_ok=True)
    with qtbot.waitSignal(browser.job_finished, timeout=30000) as blocker:
        assert browser.run_job("export")
    assert blocker.args[0] == "export" and (new / "take.bvh").stat().st_size > 1000
    assert "HIERARCHY" in (new / "take.bvh").read_text()[:100]


def test_takes_browser_reports_a_failed_job(qtbot, tmp_path):
    from app.panels.takes_browser import TakesBrowser

    folder, _ = _write_take(tmp_path, "broken", 1.0, "2026-01-01T10:00:00+00:00")
    (folder / "poses.csv").write_text("frame_index,time_s\n")  # damaged after recording
    browser = TakesBrowser(tmp_path)
    qtbot.addWidget(browser)
    browser.select(folder)
    assert not browser.play_selected()  # refused, logged, no crash
    with qtbot.waitSignal(browser.job_failed, timeout=30000) as blocker:
        browser.run_job("export")
    assert "broken" in blocker.args[1]
    assert "failed" in browser.job_label.text()


# ----------------------------------------------------------------- window actions without a running pipeline
def test_settings_persist_between_runs(qtbot, tmp_path):
    from app.main_window import MainWindow, StudioOptions
    from app.settings import StudioSettings, load_settings, open_qsettings

    ini = tmp_path / "studio.ini"
    first = MainWindow(StudioOptions(), StudioSettings(takes_dir=str(tmp_path), pose_source=GT), open_qsettings(ini))
    qtbot.addWidget(first)
    first.action_follow.setChecked(True)
    first.record_panel.countdown_spin.setValue(3)
    first.close()
    loaded = load_settings(open_qsettings(ini))
    assert loaded.follow_performer and loaded.record_countdown_s == 3 and loaded.takes_dir == str(tmp_path)
    second = MainWindow(StudioOptions(), loaded, open_qsettings(ini))
    qtbot.addWidget(second)
    assert second.action_follow.isChecked() and second.skeleton_view.follow
    assert second.record_panel.countdown_spin.value() == 3
    second.close()


def test_heading_reset_button_corrects_the_pose_stage_calibration(qtbot, tmp_path):
    """Ctrl+H: the IMU worlds drifted in heading; the performer stands in the N-pose; the button
    (``vimcan_core.calibration.heading_reset``) brings the model stage's bones back to that pose."""
    from app.main_window import MainWindow, StudioOptions
    from app.settings import StudioSettings, open_qsettings
    from sensors.model_source import ModelPoseSource
    from sensors.samples import SyncedFrame
    from vimcan_core.calibration import ResetPose, reset_pose_bone_quats
    from vimcan_core.rotations import quat_angle

    window = MainWindow(StudioOptions(), StudioSettings(takes_dir=str(tmp_path), pose_source=GT), open_qsettings(tmp_path / "s.ini"))
    qtbot.addWidget(window)
    assert window.action_heading.shortcut().toString() == "Ctrl+H"
    window.action_heading.trigger()  # nothing received yet: refused, nothing changes
    assert "no IMU data" in window.statusBar().currentMessage()

    truth = window.pipeline.demo.true_calibration()
    drifted = truth.with_world_headings(np.radians([25.0, -40.0, 10.0, 60.0, -15.0, 30.0]))
    source = ModelPoseSource(estimator=None, calibration=drifted)  # never stepped: the pipeline is not started
    window.pipeline.set_pose_source(source)
    n_pose = reset_pose_bone_quats(ResetPose.N_POSE)  # 6 x 4: what the demo's identity-mounted IMUs report
    window._last_synced = SyncedFrame(0, 0.0, None, None, None, n_pose, np.full((NUM_IMUS, 3), np.nan),
                                      np.ones(NUM_IMUS, bool), 0.0)
    before = np.degrees(quat_angle(source.calibration.bone_quats_world(n_pose), n_pose))
    window.action_heading.trigger()
    after = np.degrees(quat_angle(source.calibration.bone_quats_world(n_pose), n_pose))
    assert before.min() > 9.0 and after.max() < 0.5, (before, after)
    assert "aligned" in window.statusBar().currentMessage()
    window.close()


def test_hardware_mode_without_weights_says_what_is_missing(tmp_path, monkeypatch):
    """Real devices need the network (there is no ground truth): the studio refuses with the fix."""
    from app.live import build_hardware_pipeline, uses_hardware
    from app.settings import StudioSettings
    from vimcan_core.calibration_profile import ENV_CONFIG_DIR
    from vimcan_core.errors import VimcanError

    monkeypatch.setenv(ENV_CONFIG_DIR, str(tmp_path / "config"))
    assert not uses_hardware(StudioSettings())
    settings = StudioSettings(devices=tuple(f"sim:{s}" for s in ("left_forearm", "right_forearm")), camera="",
                              model_path=str(tmp_path / "missing.pt"))
    with pytest.raises(VimcanError, match="missing.pt") as exc:
        build_hardware_pipeline(settings)
    assert "--demo" in str(exc.value)
    assert uses_hardware(StudioSettings(devices=("witmotion:/dev/ttyUSB0@115200",)))


def test_preferences_dialog_edits_and_persists_settings(qtbot, tmp_path):
    from app.main_window import MainWindow, StudioOptions
    from app.settings import PoseSourceChoice, StudioSettings, Units, load_settings, open_qsettings

    ini = tmp_path / "studio.ini"
    window = MainWindow(StudioOptions(), StudioSettings(takes_dir=str(tmp_path / "a"), pose_source=GT), open_qsettings(ini))
    qtbot.addWidget(window)
    dialog = window.edit_preferences()
    dialog.bvh_order.setCurrentText("ZYX")
    dialog.bvh_units.setCurrentIndex(dialog.bvh_units.findData(Units.METRES))
    dialog.takes_dir.setText(str(tmp_path / "b"))
    dialog.countdown.setValue(5)
    dialog.pose_source.setCurrentIndex(dialog.pose_source.findData(PoseSourceChoice.GROUND_TRUTH))
    dialog.devices.setText("witmotion:/dev/ttyUSB0@115200, dot:D4:22:CD:00:11:22")
    dialog.accept()
    s = load_settings(open_qsettings(ini))  # saved at once, not only at exit
    assert s.bvh.rotation_order == "ZYX" and s.bvh.units == Units.METRES
    assert s.devices == ("witmotion:/dev/ttyUSB0@115200", "dot:D4:22:CD:00:11:22")
    assert s.pose_source == PoseSourceChoice.GROUND_TRUTH and s.record_countdown_s == 5
    assert window.takes_browser.folder == tmp_path / "b" and window.record_panel.countdown_spin.value() == 5
    assert "next start" in window.statusBar().currentMessage()
    cfg = window.settings.bvh.writer_config()
    assert cfg.order.value == "ZYX" and cfg.units.value == "m"
    window.close()


def test_input_health_names_what_is_missing():
    from app.panels.status_panel import InputHealth, input_health
    from sensors.samples import PoseFrame

    def pose(camera: bool, imus) -> PoseFrame:
        present = np.zeros(NUM_IMUS, bool)
        present[list(imus)] = True
        return PoseFrame(0, 0.0, np.zeros((17, 3)), None, "VIMCAN-T streaming", camera, present)

    assert input_health(pose(True, range(6)))[0] == InputHealth.ALL
    health, text = input_health(pose(True, [0, 1, 2, 3, 5]))
    assert health == InputHealth.DEGRADED and text == "IMU missing: head"
    health, text = input_health(pose(False, range(6)))
    assert health == InputHealth.DEGRADED and "camera lost" in text and "IMU" in text
    health, text = input_health(pose(False, []))
    assert health == InputHealth.FROZEN and "frozen" in text
    # frames arrive but nobody is in them (every keypoint confidence 0): not the same as a lost camera
    from sensors.samples import SyncedFrame

    empty = SyncedFrame(0, 0.0, np.zeros((17, 2)), np.zeros(17), (640, 480), np.zeros((6, 4)), np.zeros((6, 3)),
                        np.ones(6, bool), 0.0)
    health, text = input_health(pose(True, range(6)), empty)
    assert health == InputHealth.DEGRADED and text.startswith("nobody in view")
    health, text = input_health(pose(True, []), empty)
    assert health == InputHealth.FROZEN


def test_low_confidence_pose_is_drawn_translucent(qtbot, skeleton_view):
    joints = pose_with_left_arm(0.0)
    skeleton_view.set_pose(joints, dimmed=True)  # e.g. the camera is lost: IMUs alone
    img = render(qtbot, skeleton_view)
    assert colour_mask(img, LEFT_RGB).sum() == 0  # blended with the background, not the full colour
    wrist_mid = skeleton_view.project_world(joints)[[Joint.LEFT_ELBOW, Joint.LEFT_WRIST]].mean(axis=0)
    x, y = np.round(wrist_mid).astype(int)
    patch = img[y - 2: y + 3, x - 2: x + 3].reshape(-1, 3).astype(int)
    blend = np.array(LEFT_RGB) * 0.45 + np.array((17, 20, 26)) * 0.55  # alpha 0.45 over the background
    assert np.abs(patch - blend).sum(axis=1).min() < 15
    skeleton_view.set_pose(joints, dimmed=False)
    assert colour_mask(render(qtbot, skeleton_view), LEFT_RGB).sum() > 300


def test_keyboard_shortcuts_reach_the_window_actions(qtbot, tmp_path):
    """Real key events: Ctrl+R starts the countdown and cancels it, F toggles follow-the-performer."""
    from PySide6 import QtCore

    from app.main_window import MainWindow, StudioOptions
    from app.settings import StudioSettings, open_qsettings

    window = MainWindow(StudioOptions(), StudioSettings(takes_dir=str(tmp_path), pose_source=GT), open_qsettings(tmp_path / "s.ini"))
    qtbot.addWidget(window)
    with qtbot.waitActive(window):
        window.show()
        window.activateWindow()
    window.skeleton_view.gl_widget.setFocus()
    window.record_panel.countdown_spin.setValue(3)
    qtbot.keyClick(window.skeleton_view.gl_widget, QtCore.Qt.Key.Key_R, QtCore.Qt.KeyboardModifier.ControlModifier)
    assert window.record_panel.state.value == "countdown"
    assert window.record_panel.timer_label.text() == "-3"
    qtbot.keyClick(window.skeleton_view.gl_widget, QtCore.Qt.Key.Key_R, QtCore.Qt.KeyboardModifier.ControlModifier)
    assert window.record_panel.state.value == "idle" and "cancelled" in window.record_panel.state_label.text()
    assert not window.skeleton_view.follow
    qtbot.keyClick(window.skeleton_view.gl_widget, QtCore.Qt.Key.Key_F)
    assert window.skeleton_view.follow and window.action_follow.isChecked()
    window.close()


def test_discovery_runs_in_a_worker_and_found_sensors_are_kept_for_the_next_start(qtbot, tmp_path):
    """The search blocks for seconds, so it runs off the UI thread; what it finds can be used."""
    from app.main_window import MainWindow, StudioOptions
    from app.settings import StudioSettings, load_settings, open_qsettings

    ini = tmp_path / "s.ini"
    window = MainWindow(StudioOptions(), StudioSettings(takes_dir=str(tmp_path), pose_source=GT), open_qsettings(ini))
    qtbot.addWidget(window)
    release = threading.Event()
    ui_thread = threading.get_ident()
    seen_thread: list[int] = []

    def search():  # stands in for the serial/BLE scan (the lowest layer: hardware)
        seen_thread.append(threading.get_ident())
        release.wait(5.0)
        return [("/dev/ttyUSB0: WitMotion IMU at 115200 baud", "witmotion:/dev/ttyUSB0@115200"),
                ("/dev/ttyS0: unknown serial port", None)]

    window.devices_panel._discover = search
    window.devices_panel.discover_button.setEnabled(True)
    window.devices_panel.discover_button.click()
    assert not window.devices_panel.discover_button.isEnabled()  # the UI returned at once, search running
    assert "searching" in window.devices_panel.found_label.text()
    release.set()
    qtbot.waitUntil(lambda: not window.devices_panel.use_button.isHidden(), timeout=5000)  # window not shown
    assert seen_thread and seen_thread[0] != ui_thread
    assert "witmotion:/dev/ttyUSB0@115200" in window.devices_panel.found_label.text()
    window.devices_panel.use_button.click()
    assert load_settings(open_qsettings(ini)).devices == ("witmotion:/dev/ttyUSB0@115200",)
    window.close()


def test_inputs_line_with_several_missing_imus_is_not_clipped(qtbot, tmp_path):
    """The Inference dock of a window of the headless run's size: with five IMUs missing (and the
    model's own words appended) the Inputs line wraps over several lines and the label gets the
    height of all of them (a dock does not ask its contents for height-for-width: the label must).
    Room for them is kept from the start, so the docks and the 3D view do not jump when it wraps."""
    from app.main_window import MainWindow, StudioOptions
    from app.panels.status_panel import InferenceStatus, InputHealth
    from app.settings import StudioSettings, open_qsettings

    window = MainWindow(StudioOptions(), StudioSettings(takes_dir=str(tmp_path), pose_source=GT),
                        open_qsettings(tmp_path / "s.ini"))  # not started: no timer overwrites the status
    qtbot.addWidget(window)
    window.resize(1500, 920)
    window.show()
    qtbot.waitExposed(window)
    window.status_panel.show_status(InferenceStatus(source="VIMCAN-T streaming", is_model=True, health=InputHealth.ALL,
                                                    health_detail="camera and 6 IMUs", confidence=0.9))
    qtbot.wait(100)
    view_size = window.skeleton_view.size()
    detail = ("IMU missing: left forearm, right forearm, left lower leg, right lower leg, head "
              "(not calibrated: running on the camera alone)")
    window.status_panel.show_status(InferenceStatus(source="VIMCAN-T streaming", is_model=True, health=InputHealth.DEGRADED,
                                                    health_detail=detail, confidence=0.45))
    label = window.status_panel._values["inputs"]

    def shown_px() -> tuple[int, int]:
        """(height of the label left visible by its dock and neighbours, height its text needs)."""
        return label.visibleRegion().boundingRect().height(), label.heightForWidth(label.width())

    try:
        qtbot.waitUntil(lambda: shown_px()[0] >= shown_px()[1], timeout=3000)
    except qtbot.TimeoutError:
        pass  # reported with the numbers below
    visible_px, needed_px = shown_px()
    assert needed_px >= 2 * label.fontMetrics().lineSpacing(), "the text should need more than one line here"
    assert visible_px >= needed_px, f"the Inputs line shows {visible_px} px of the {needed_px} px its text needs"
    assert label.text().startswith(detail) and "0.45" in label.text()
    assert window.skeleton_view.size() == view_size, "the 3D view changed size when the Inputs line wrapped"
    # a one-line text sits level with its title, not in the middle of the room kept for three lines
    window.status_panel.show_status(InferenceStatus(source="VIMCAN-T streaming", is_model=True, health=InputHealth.ALL,
                                                    health_detail="camera and 6 IMUs", confidence=0.9))
    qtbot.wait(100)
    title = window.status_panel.layout().itemAt(1).layout().labelForField(label)
    panel = window.status_panel.grab().toImage()
    text_top = {}
    for name, widget in (("title", title), ("value", label)):
        box = widget.geometry().translated(widget.parentWidget().mapTo(window.status_panel, widget.pos()) - widget.pos())
        bg = panel.pixelColor(box.right() - 1, box.bottom() - 1)
        rows = [y for y in range(box.top(), box.bottom()) if any(
            abs(panel.pixelColor(x, y).lightness() - bg.lightness()) > 60 for x in range(box.left(), min(box.right(), box.left() + 120)))]
        text_top[name] = rows[0] if rows else None
    assert None not in text_top.values() and abs(text_top["value"] - text_top["title"]) <= 3, text_top
    window.close()


def test_the_demo_refuses_new_devices_with_one_message(qtbot, tmp_path):
    """The demo's rig is fixed: the devices panel's hint and the message after an add (from the panel
    or through the window) are the same words, saying how to use real devices."""
    from app.main_window import DEMO_RIG_FIXED, MainWindow, StudioOptions
    from app.settings import StudioSettings, open_qsettings

    window = MainWindow(StudioOptions(demo=True), StudioSettings(takes_dir=str(tmp_path), pose_source=GT),
                        open_qsettings(tmp_path / "s.ini"))
    qtbot.addWidget(window)
    panel = window.devices_panel
    devices = list(window.pipeline.devices())
    assert "--live" in DEMO_RIG_FIXED and "real devices" in DEMO_RIG_FIXED
    assert not panel.add_button.isEnabled() and panel.spec_edit.placeholderText() == DEMO_RIG_FIXED
    assert window.add_device("sim:head") is None
    assert DEMO_RIG_FIXED in panel.message_label.text()
    panel.message_label.clear()
    panel.request_add("witmotion:/dev/ttyUSB0")  # what the Add button sends
    assert DEMO_RIG_FIXED in panel.message_label.text()
    assert list(window.pipeline.devices()) == devices
    window.close()


def test_live_3d_view_draws_the_camera_of_the_calibration_profile(qtbot, tmp_path, monkeypatch, output_dir):
    """Live (not the demo), no camera device yet: the 3D view's camera frustum is the calibrated camera
    of the profile the studio started with, then of the profile chosen in the toolbar: the profile's
    intrinsics, turned as its calibration says (the camera looks down at the performer)."""
    from app.main_window import MainWindow, StudioOptions
    from app.settings import StudioSettings, open_qsettings
    from app.views.skeleton_view import camera_frustum_world, world_to_gl
    from sensors.model_source import ModelPoseSource
    from sensors.pipeline import CapturePipeline
    from vimcan_core.calibration import Calibration
    from vimcan_core.calibration_profile import ENV_CONFIG_DIR, CalibrationProfile, load_profile, save_profile
    from vimcan_core.rotations import quat_angle, quat_conj

    monkeypatch.setenv(ENV_CONFIG_DIR, str(tmp_path / "config"))

    def make_profile(name: str, posed: PinholeCamera):
        """A profile whose calibration was made with ``posed`` (the file keeps its intrinsics only)."""
        path = save_profile(CalibrationProfile(name=name, calibration=Calibration.identity(posed),
                                               site_devices=(None,) * NUM_IMUS, camera=posed))
        return path.stem, posed

    start_name, start_posed = make_profile("studio A", PinholeCamera.looking_at(
        np.array([0.0, 2.2, 3.0]), np.array([0.0, 0.6, 0.0]), width_px=1280, height_px=720, hfov_deg=70.0))
    other_name, other_posed = make_profile("studio B", PinholeCamera.looking_at(
        np.array([0.0, 1.0, 3.0]), np.array([0.0, 1.4, 0.0]), width_px=640, height_px=480, hfov_deg=50.0))
    start = load_profile(next((tmp_path / "config" / "profiles").glob(f"{start_name}.json")))
    # what build_hardware_pipeline does with the last profile: its calibration and camera go to the model stage
    source = ModelPoseSource(estimator=None, calibration=start.calibration, camera=start.camera)
    pipeline = CapturePipeline({}, None, source)
    window = MainWindow(StudioOptions(demo=False), StudioSettings(takes_dir=str(tmp_path), last_profile=start_name),
                        open_qsettings(tmp_path / "s.ini"), pipeline=pipeline)
    qtbot.addWidget(window)
    window.resize(1400, 880)
    window.show()
    qtbot.waitExposed(window)
    view = window.skeleton_view
    view.gl_widget.setCameraPosition(distance=9.0)

    def check_drawn(posed: PinholeCamera) -> np.ndarray:
        camera = view.camera
        assert camera is not None and view._frustum.visible(), "no camera frustum in the 3D view"
        intrinsics = ("width_px", "height_px", "fx_px", "fy_px", "cx_px", "cy_px")
        assert [getattr(camera, k) for k in intrinsics] == pytest.approx([getattr(posed, k) for k in intrinsics])
        turn_deg = np.degrees(quat_angle(np.asarray(camera.quat_cam_from_world), np.asarray(posed.quat_cam_from_world)))
        assert turn_deg < 0.01, f"the frustum is turned {turn_deg:.2f} deg away from the calibrated camera"
        np.testing.assert_allclose(view._frustum_pos, world_to_gl(camera_frustum_world(camera)), atol=1e-9)
        # its pixels: frustum-coloured pixels lie along the drawn edges
        qtbot.wait(50)
        img = view.grab_rgb()
        segs = camera_frustum_world(camera)
        px = view.project_world(segs)
        ys, xs = np.nonzero(colour_mask(img, FRUSTUM_RGB) | (np.abs(img.astype(int) - FRUSTUM_RGB).sum(-1) < 90))
        assert len(xs) > 40, f"only {len(xs)} frustum-coloured pixels"
        dist = distance_to_segments(np.column_stack((xs, ys)).astype(float), px[0::2], px[1::2])
        assert np.percentile(dist, 90) < 3.0, "frustum pixels away from the calibrated camera's edges"
        return img

    check_drawn(start_posed)  # the profile loaded at start
    assert not np.allclose(start_posed.quat_cam_from_world, PinholeCamera().quat_cam_from_world, atol=0.05)
    window._fill_profiles()
    window.profile_box.setCurrentText(other_name)  # the toolbar
    assert window.profile_box.currentText() == other_name and "studio B" in window.calibration_label.text()
    stage_turn = quat_angle(quat_conj(source.calibration.quat_world_from_camera), np.asarray(other_posed.quat_cam_from_world))
    assert np.degrees(stage_turn) < 0.01, "the toolbar's profile should reach the model stage"
    img = check_drawn(other_posed)
    from PySide6 import QtGui

    QtGui.QImage(img.data, img.shape[1], img.shape[0], 3 * img.shape[1], QtGui.QImage.Format.Format_RGB888).save(
        str(output_dir / "profile_camera.png"))
    # a webcam that delivers another image size than the profile's: its own model, still turned as calibrated
    webcam = PinholeCamera(width_px=320, height_px=240, fx_px=300.0, fy_px=300.0, cx_px=160.0, cy_px=120.0)
    monkeypatch.setattr("app.live.camera_model_of", lambda _pipeline: webcam)
    window._update_view_camera()
    assert (view.camera.width_px, view.camera.fx_px) == (320, 300.0)
    assert np.degrees(quat_angle(np.asarray(view.camera.quat_cam_from_world), np.asarray(other_posed.quat_cam_from_world))) < 0.01
    window.close()
