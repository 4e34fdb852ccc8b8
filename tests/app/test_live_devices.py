"""Devices at run time (``app.live``, no Qt): adding by spec at a site, removing, re-assigning sites,
and what the settings remember, on a running capture pipeline with simulated IMUs."""

from __future__ import annotations

import pytest
from polling import wait_until

from app.live import add_device, assign_sites, device_settings, remove_device, spec_of
from app.settings import StudioSettings
from sensors.device import DeviceState
from sensors.pipeline import CapturePipeline
from sensors.recording import RawOnlyPoseSource
from vimcan_core.errors import DeviceError
from vimcan_core.skeleton import ImuSite


@pytest.fixture
def pipeline():
    p = CapturePipeline({}, None, RawOnlyPoseSource())
    p.start()
    yield p
    p.stop()


def test_add_imus_at_sites_while_the_pipeline_runs(pipeline) -> None:
    head = add_device(pipeline, "sim:head", ImuSite.HEAD)
    first = add_device(pipeline, "sim:left_forearm")  # no site chosen: the first free one
    assert pipeline.imus == {ImuSite.HEAD: head, ImuSite.LEFT_FOREARM: first}
    assert spec_of(head) == "sim:head"
    assert wait_until(lambda: head.state == DeviceState.STREAMING and first.state == DeviceState.STREAMING)
    # the pipeline pairs the new IMUs: frames show them present
    q = pipeline.subscribe(4)
    assert wait_until(lambda: not q.empty() and q.get_nowait()[0].imu_present[[ImuSite.HEAD, ImuSite.LEFT_FOREARM]].all())
    with pytest.raises(DeviceError, match="head site has sim:head already"):
        add_device(pipeline, "sim:right_forearm", ImuSite.HEAD)
    with pytest.raises(DeviceError, match="connected already"):
        add_device(pipeline, "sim:head", ImuSite.PELVIS)
    for site in (ImuSite.RIGHT_FOREARM, ImuSite.LEFT_LOWER_LEG, ImuSite.RIGHT_LOWER_LEG, ImuSite.PELVIS):
        add_device(pipeline, f"sim:{site.name.lower()}", site)
    with pytest.raises(DeviceError, match="all six sites have a sensor"):
        add_device(pipeline, "witmotion:/dev/ttyUSB7")
    assert len(pipeline.imus) == 6


def test_remove_and_reassign_and_remember(pipeline) -> None:
    a = add_device(pipeline, "sim:left_forearm", ImuSite.LEFT_FOREARM)
    b = add_device(pipeline, "sim:right_forearm", ImuSite.RIGHT_FOREARM)
    c = add_device(pipeline, "sim:head", ImuSite.HEAD)
    settings = device_settings(pipeline, StudioSettings(camera="sim"))
    assert settings.devices == ("sim:left_forearm", "sim:right_forearm", "sim:head")
    assert settings.sites == ("left_forearm", "right_forearm", "head") and settings.camera == ""

    # the wizard found the forearms the other way round; the head is not in its assignment and keeps its site
    assert assign_sites(pipeline, {ImuSite.LEFT_FOREARM: b, ImuSite.RIGHT_FOREARM: a})
    assert pipeline.imus == {ImuSite.LEFT_FOREARM: b, ImuSite.RIGHT_FOREARM: a, ImuSite.HEAD: c}
    assert not assign_sites(pipeline, {ImuSite.LEFT_FOREARM: b, ImuSite.RIGHT_FOREARM: a, ImuSite.HEAD: c})
    # a sensor the wizard put on the head's site pushes the head off (it has no site left)
    assert assign_sites(pipeline, {ImuSite.HEAD: a, ImuSite.LEFT_FOREARM: b})
    assert pipeline.imus == {ImuSite.HEAD: a, ImuSite.LEFT_FOREARM: b}

    remove_device(pipeline, b)
    assert pipeline.imus == {ImuSite.HEAD: a} and not b.running and a.running
    assert device_settings(pipeline, settings).devices == ("sim:left_forearm",)
    c.stop()


def test_the_camera_joins_and_leaves_a_running_pipeline(pipeline, shared_data) -> None:
    """A camera (a video through MediaPipe) joins a running pipeline and leaves it without a
    restart: the IMUs stream on, never stopped or reconnected, and the poses go on from them."""
    pytest.importorskip("mediapipe")
    video = shared_data / "video" / "pose_squats.mp4"
    imu = add_device(pipeline, "sim:head", ImuSite.HEAD)
    camera = add_device(pipeline, f"camera:{video}?loop=1&width=180&height=320")
    assert pipeline.camera is camera and camera.running
    assert wait_until(lambda: pipeline.stats().frames_in >= 3, timeout_s=20.0), "the pipeline reads the new camera"
    with pytest.raises(DeviceError, match="has a camera already"):
        add_device(pipeline, "camera:1")  # a second webcam
    imu_thread, imu_stats = imu._thread, imu.stats()
    remove_device(pipeline, camera)
    assert pipeline.camera is None and pipeline.running and not camera.running
    poses = pipeline.stats().poses
    assert wait_until(lambda: pipeline.stats().poses > poses + 3), "poses go on from the IMUs alone"
    assert imu.running and imu._thread is imu_thread, "the IMU was stopped and started again"
    assert imu.stats().reconnects == imu_stats.reconnects and imu.state == DeviceState.STREAMING
    assert imu.stats().samples > imu_stats.samples
