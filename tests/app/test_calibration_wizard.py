"""The calibration wizard driven end to end with the simulated devices (pytest-qt, Xvfb).

The simulated performer (``Performer.hold``, ``hold_pose``) plays the user: it moves one sensor's
bone at a time when the wizard asks which sensor sits where, stands in the T-pose, fidgets once (the
capture must start again), takes the heading pose, then lowers its arms. The saved profile is checked against the simulation's
mounting rotations and site assignment. A screenshot of each page goes to the test's output folder.
"""

from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("pytestqt")
from PySide6 import QtWidgets  # noqa: E402

from app.calibration_wizard import (  # noqa: E402
    CalibrationWizard,
    CapturePage,
    CheckPage,
    Phase,
    WizardConfig,
    skeleton_from_sites,
)
from sensors.simulated import SimCameraConfig, SimImuConfig, SimulatedCamera, SimulatedImu  # noqa: E402
from vimcan_core.calibration import Calibration, HeadingMethod, heading_pose_local_quats  # noqa: E402
from vimcan_core.calibration_profile import (  # noqa: E402
    CalibrationProfile,
    load_last_profile,
    load_profile,
    save_profile,
)
from vimcan_core.camera import PinholeCamera  # noqa: E402
from vimcan_core.kinematics import forward_kinematics  # noqa: E402
from vimcan_core.performer import Motion, Performer, PerformerPrompt  # noqa: E402
from vimcan_core.rotations import quat_angle, quat_conj, quat_mul, random_quat  # noqa: E402
from vimcan_core.skeleton import IMU_JOINT, IMU_SITE_NAMES, NUM_IMUS, NUM_JOINTS, ImuSite, default_rest_pose  # noqa: E402

FAST = WizardConfig(poll_ms=30, countdown_s=0.6, capture_s=1.2, camera_ok_s=0.3, assign_hold_s=0.3)


class SimRig:
    """Six IMUs with random mountings and world headings, in a shuffled order, and a camera."""

    def __init__(self, seed: int, camera: PinholeCamera | None = None) -> None:
        rng = np.random.default_rng(seed)
        self.performer = Performer(script=Motion.STILL)
        self.camera = camera or PinholeCamera.looking_at([0.4, 1.3, 3.6], [0.0, 0.9, 0.0])
        order = rng.permutation(NUM_IMUS)
        self.imus: list[SimulatedImu] = []
        for k, site in enumerate(order):
            config = SimImuConfig(
                mount_quat_sensor_from_bone=tuple(random_quat(rng)), world_heading_deg=float(rng.uniform(-180, 180)),
                orientation_noise_deg=0.3, seed=seed * 10 + k,
            )
            self.imus.append(SimulatedImu(f"imu-{k}", self.performer, ImuSite(int(site)), config))
        self.cam = SimulatedCamera("cam-0", self.performer, self.camera, SimCameraConfig(pixel_noise_px=0.5, seed=seed))
        self.devices = [*self.imus, self.cam]

    def by_site(self, site: ImuSite) -> SimulatedImu:
        return next(d for d in self.imus if d.site == site)

    def q_bone_from_sensor(self, site: ImuSite) -> np.ndarray:
        return quat_conj(np.asarray(self.by_site(site).sim_config.mount_quat_sensor_from_bone))

    def start(self) -> None:
        for d in self.devices:
            d.start()

    def stop(self) -> None:
        for d in self.devices:
            d.stop()


def _shot(widget: QtWidgets.QWidget, output_dir: Path, name: str) -> Path:
    QtWidgets.QApplication.processEvents()
    path = output_dir / f"{name}.png"
    assert widget.grab().save(str(path)), f"could not save {path}"
    return path


def test_wizard_end_to_end_with_simulated_devices(qtbot, output_dir: Path, config_dir: Path) -> None:
    rig = SimRig(seed=3)
    rig.start()
    try:
        wizard = CalibrationWizard(rig.devices, rig.camera, config=FAST)
        qtbot.addWidget(wizard)
        wizard.show()

        # 1. devices: everything ticked by default (six IMUs, one camera)
        qtbot.waitUntil(lambda: wizard.currentPage().isComplete(), timeout=5000)
        qtbot.wait(300)
        _shot(wizard, output_dir, "1_devices")
        wizard.next()
        assert wizard.currentId() == wizard.PAGE_SITES

        # 2. sites: the performer moves one bone at a time; the wizard assigns the sensor that moved
        sites_page = wizard.currentPage()
        assert not sites_page.isComplete()
        for site in ImuSite:
            assert sites_page.body.target == site  # the wizard asks for the sites in order
            rig.performer.hold(Motion.MOVE_SITE, site)
            qtbot.waitUntil(lambda: wizard.site_devices[site] is rig.by_site(site), timeout=10000)
            if site == ImuSite.PELVIS:
                _shot(wizard, output_dir, "2_sites")  # the pelvis glows while it moves
            rig.performer.hold(Motion.STILL)
            qtbot.wait(int(1000 * FAST.move_window_s) + 100)
        assert sites_page.isComplete()
        wizard.next()

        # 3. camera: the whole body is in view
        rig.performer.hold(Motion.T_POSE)
        qtbot.waitUntil(lambda: wizard.currentPage().isComplete(), timeout=5000)
        assert "All 17 keypoints" in wizard.currentPage().hint.text()
        _shot(wizard, output_dir, "3_camera")
        wizard.next()

        # 4. T-pose: someone moves during the first capture, so it starts again by itself
        page = wizard.currentPage()
        assert isinstance(page, CapturePage)
        qtbot.waitUntil(lambda: page.phase == Phase.CAPTURE_TPOSE, timeout=5000)
        rig.performer.hold(Motion.MOVE_SITE, ImuSite.LEFT_FOREARM)
        qtbot.waitUntil(lambda: page.restarts >= 1, timeout=5000)
        assert page.phase == Phase.COUNTDOWN_TPOSE and "moved" in page.status.text()
        rig.performer.hold(Motion.T_POSE)
        qtbot.waitUntil(lambda: page.phase == Phase.COUNTDOWN_HEADING, timeout=15000)
        _shot(wizard, output_dir, "4a_tpose_captured")
        rig.performer.hold_pose(heading_pose_local_quats())
        qtbot.waitUntil(lambda: page.phase in (Phase.DONE, Phase.FAILED), timeout=30000)
        assert page.phase == Phase.DONE, page.status.text()
        _shot(wizard, output_dir, "4b_calibrated")
        wizard.next()

        # 5. check: arms down; the calibrated IMUs agree with the camera
        check = wizard.currentPage()
        assert isinstance(check, CheckPage)
        rig.performer.hold(Motion.STILL)
        qtbot.waitUntil(lambda: np.isfinite(check.live_agreement_deg[:4]).all(), timeout=5000)
        qtbot.wait(400)
        _shot(wizard, output_dir, "5_check")
        agreement = check.live_agreement_deg
        assert np.nanmax(agreement[:4]) < 8.0, f"IMU bones vs camera: {np.round(agreement, 1)} deg"
        wizard.next()

        # 6. save under a name
        save = wizard.currentPage()
        save.name.setText("Test rig, seed 3")
        assert save.height.text() == "unknown"  # no earlier profile: no height offered
        save.height.setValue(182)
        _shot(wizard, output_dir, "6_save")
        with qtbot.waitSignal(wizard.calibrated, timeout=5000) as signal:
            wizard.button(QtWidgets.QWizard.FinishButton).click()
    finally:
        rig.stop()

    path = wizard.profile_path
    assert signal.args[1] == path and path.parent == config_dir / "profiles" and path.name == "test-rig-seed-3.json"
    profile = load_profile(path)
    assert load_last_profile().name == "Test rig, seed 3"
    assert profile.performer_height_m == pytest.approx(1.82)
    for site in ImuSite:
        assert profile.site_devices[site] == rig.by_site(site).device_id
    truth = np.array([rig.q_bone_from_sensor(s) for s in ImuSite])
    err = np.degrees(quat_angle(profile.calibration.q_bone_from_sensor, truth))
    assert err.max() < 2.0, f"mounting errors {np.round(err, 2)} deg"

    # the bone orientations given to the model match the simulation's (camera frame)
    pose = rig.performer.pose_at(np.array([0.0, 4.0, 14.0, 20.0]), Motion.LOOP)
    q_imu = np.stack([rig.by_site(s).measured_quat(pose.site_quats_world[:, s]) for s in ImuSite], axis=1)  # T x 6 x 4
    expected = quat_mul(np.asarray(rig.camera.quat_cam_from_world), pose.site_quats_world)
    err_cam = np.degrees(quat_angle(profile.calibration.bone_quats_camera(q_imu), expected))
    (output_dir / "errors.json").write_text(json.dumps({
        "mounting_error_deg": dict(zip(IMU_SITE_NAMES, np.round(err, 3).tolist())),
        "camera_frame_bone_error_deg_max": round(float(err_cam.max()), 3),
        "capture_restarts": page.restarts, "live_agreement_deg": np.round(agreement, 2).tolist(),
    }, indent=2))
    assert err_cam.max() < 3.0, f"camera-frame bone errors {np.round(err_cam, 2)} deg"


def test_camera_page_says_which_keypoints_are_missing(qtbot, output_dir: Path, config_dir: Path) -> None:
    performer = Performer(script=Motion.T_POSE)
    close = PinholeCamera.looking_at([0.0, 1.4, 1.6], [0.0, 1.3, 0.0])  # the legs are below the picture
    cam = SimulatedCamera("close-cam", performer, close, SimCameraConfig())
    cam.start()
    try:
        wizard = CalibrationWizard([cam], close, config=FAST)
        qtbot.addWidget(wizard)
        page = wizard.pages[wizard.PAGE_CAMERA]
        page.resize(700, 560)
        page.initializePage()
        qtbot.waitUntil(lambda: wizard.feed.poll() or wizard.feed.latest_frame(cam) is not None, timeout=5000)
        page.tick(time.monotonic())
        text = page.hint.text()
        assert "Not in view" in text and "left ankle" in text and "step back" in text.lower(), text
        assert not page.isComplete()
        _shot(page, output_dir, "camera_feet_missing")
    finally:
        cam.stop()


def test_last_profile_is_offered_and_taken(qtbot, config_dir: Path) -> None:
    camera = PinholeCamera()
    calib = Calibration.identity(camera)
    save_profile(CalibrationProfile("Yesterday", calib, tuple(f"imu-{i}" for i in range(NUM_IMUS))))
    wizard = CalibrationWizard([], camera, config=FAST)
    qtbot.addWidget(wizard)
    wizard.show()
    page = wizard.currentPage()
    assert "yesterday" in page.last_label.text() and page.use_last_button.isVisible()
    assert not page.isComplete()  # no devices: the wizard cannot calibrate, but the profile can be taken
    with qtbot.waitSignal(wizard.calibrated, timeout=2000):
        page.use_last_button.click()
    assert wizard.result() == QtWidgets.QDialog.Accepted and wizard.profile_name == "Yesterday"
    np.testing.assert_allclose(wizard.calibration.q_camera_from_imuworld, calib.q_camera_from_imuworld)


def test_save_page_takes_the_performer_height(qtbot, config_dir: Path) -> None:
    """The last profile's height is offered (usually the same person); a height that is no
    person's is refused with the reason and nothing is saved; a good one is saved."""
    camera = PinholeCamera()
    save_profile(CalibrationProfile("Yesterday", Calibration.identity(camera), (None,) * NUM_IMUS,
                                    performer_height_m=1.74))
    wizard = CalibrationWizard([], camera, config=FAST)
    qtbot.addWidget(wizard)
    wizard.calibration = Calibration.identity(camera)  # as if the capture had just finished
    page = wizard.pages[wizard.PAGE_SAVE]
    page.initializePage()
    assert page.height.value() == 174 and page.height_m == pytest.approx(1.74)
    page.name.setText("Today")
    page.height.setValue(50)
    assert not page.validatePage()
    assert "Performer height: 50 cm is not a performer height (expected 90 to 240 cm)" in page.error.text()
    assert not (config_dir / "profiles" / "today.json").exists()
    page.height.setValue(0)  # "unknown"
    assert page.height.text() == "unknown" and page.height_m is None
    page.height.setValue(191)
    assert page.validatePage()
    assert load_profile(config_dir / "profiles" / "today.json").performer_height_m == pytest.approx(1.91)


def test_skeleton_sketch_of_a_tpose_is_the_rest_pose_seen_by_the_camera() -> None:
    camera = PinholeCamera()
    rest = default_rest_pose()
    q_cw = np.asarray(camera.quat_cam_from_world)
    bones = np.tile(q_cw, (NUM_IMUS, 1))  # every bone in its T-pose orientation, seen from the camera
    joints = skeleton_from_sites(bones, rest, q_cw)
    pos, _ = forward_kinematics(np.tile([1.0, 0, 0, 0], (NUM_JOINTS, 1)), np.zeros(3), rest)
    from vimcan_core.rotations import quat_rotate

    np.testing.assert_allclose(joints, quat_rotate(q_cw, pos - pos[0]), atol=1e-9)
    assert joints[IMU_JOINT[ImuSite.LEFT_FOREARM], 0] > 0  # the performer's left is on the image's right


def test_imu_world_up_comes_from_the_driver_or_the_default() -> None:
    from app.calibration_wizard import imu_world_up_of
    from vimcan_core.calibration import ImuWorldUp

    sim = SimulatedImu("imu-s", Performer(), ImuSite.HEAD)
    assert imu_world_up_of(sim, ImuWorldUp.Z) == ImuWorldUp.Y  # the simulator's IMU worlds are Y-up
    sim.imu_world_up = "z"  # a driver that declares its world
    assert imu_world_up_of(sim, ImuWorldUp.Y) == ImuWorldUp.Z
    cam = SimulatedCamera("cam", Performer(), PinholeCamera())
    assert imu_world_up_of(cam, ImuWorldUp.Z) == ImuWorldUp.Z  # nothing known: the default (AHRS worlds are Z-up)


def test_a_pipeline_gives_its_devices_and_site_mapping(qtbot, config_dir: Path) -> None:
    from sensors.pipeline import CapturePipeline

    class NoPose:
        name = "none"

        def estimate(self, frame):  # pragma: no cover - the pipeline is not started
            raise AssertionError

        def reset(self) -> None:
            pass

    rig = SimRig(seed=5)
    pipeline = CapturePipeline({d.site: d for d in rig.imus}, rig.cam, NoPose())
    wizard = CalibrationWizard(pipeline, rig.camera, config=FAST)
    qtbot.addWidget(wizard)
    assert [d.device_id for d in wizard.all_devices] == [d.device_id for d in pipeline.devices()]
    assert all(wizard.site_devices[s] is rig.by_site(s) for s in ImuSite)
    wizard.show()
    wizard.next()  # the devices are started on leaving the first page (the pipeline still owns them)
    try:
        assert wizard.currentId() == wizard.PAGE_SITES and wizard.currentPage().isComplete()
        assert all(d.running for d in rig.devices)
        wizard.reject()
        assert all(d.running for d in rig.devices)  # closing the wizard leaves the pipeline's devices alone
    finally:
        rig.stop()


def test_devices_the_wizard_started_are_stopped_when_it_closes(qtbot, config_dir: Path) -> None:
    rig = SimRig(seed=6)
    wizard = CalibrationWizard(rig.devices, rig.camera, config=FAST)
    qtbot.addWidget(wizard)
    wizard.show()
    try:
        wizard.next()
        assert all(d.running for d in rig.devices)
        wizard.reject()
        assert not any(d.running for d in rig.devices)
    finally:
        rig.stop()


def test_sensor_forward_method_skips_the_heading_pose(qtbot, config_dir: Path) -> None:
    """With ``HeadingMethod.SENSOR_FORWARD`` the T-pose alone calibrates: the wizard never asks for the
    heading pose, and sensors mounted without yaw (here: exactly along their bones) come out right."""
    from sensors.pipeline import CapturePipeline
    from sensors.recording import RawOnlyPoseSource

    rig = SimRig(seed=7)
    performer = rig.performer
    rig.imus = [SimulatedImu(f"imu-{int(s)}", performer, s, SimImuConfig(world_heading_deg=30.0 * int(s), seed=70 + int(s)))
                for s in ImuSite]
    rig.devices = [*rig.imus, rig.cam]
    config = replace(FAST, calibration=replace(FAST.calibration, heading=HeadingMethod.SENSOR_FORWARD))
    pipeline = CapturePipeline({d.site: d for d in rig.imus}, rig.cam, RawOnlyPoseSource())
    wizard = CalibrationWizard(pipeline, rig.camera, config=config)
    qtbot.addWidget(wizard)
    wizard.show()
    prompts: list = []
    wizard.prompted.connect(lambda prompt, site: prompts.append(prompt))
    try:
        wizard.next()  # devices -> sites (given by the pipeline)
        assert wizard.currentPage().isComplete()
        wizard.next()  # sites -> camera
        performer.hold(Motion.T_POSE)
        qtbot.waitUntil(lambda: wizard.currentPage().isComplete(), timeout=5000)
        wizard.next()
        page = wizard.currentPage()
        assert isinstance(page, CapturePage)
        phases: list[Phase] = []
        start = page._start
        page._start = lambda phase, message="": (phases.append(phase), start(phase, message))[1]
        qtbot.waitUntil(lambda: page.phase in (Phase.DONE, Phase.FAILED), timeout=30000)
        assert page.phase == Phase.DONE, page.status.text()
    finally:
        rig.stop()
    assert Phase.COUNTDOWN_HEADING not in phases and Phase.CAPTURE_HEADING not in phases, phases
    assert PerformerPrompt.HEADING_POSE not in prompts, prompts
    err = np.degrees(quat_angle(wizard.calibration.q_bone_from_sensor, np.tile([1.0, 0, 0, 0], (NUM_IMUS, 1))))
    assert err.max() < 2.0, f"mounting errors {np.round(err, 2)} deg"
