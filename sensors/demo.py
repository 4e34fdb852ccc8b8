"""The demo rig: a procedural performer, six simulated IMUs and a simulated camera,
wired into a real ``CapturePipeline``.

    pipeline = build_demo_pipeline()
    q = pipeline.subscribe()
    pipeline.start()
    synced, pose = q.get(timeout=1.0)
    pipeline.stop()

``pipeline.demo`` (a ``DemoRig``) gives the views and the calibration what they need: the
performer and its clock, the camera model, the devices, and the true sensor mounting and
heading (identity unless configured otherwise). ``DemoRig.follow_prompt`` makes the performer do
what the calibration wizard asks (stand, T-pose, heading pose, move one sensor, move freely),
moving into each pose over ``DemoConfig.prompt_transition_s``; the wizard calls it through a
plain callback, so nothing here knows about Qt.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

import numpy as np

from sensors.device import Device
from sensors.pipeline import CapturePipeline, PipelineConfig, PoseSource
from sensors.samples import PoseFrame, SyncedFrame
from sensors.simulated import SimCameraConfig, SimClock, SimImuConfig, SimulatedCamera, SimulatedImu
from vimcan_core.camera import PinholeCamera
from vimcan_core.performer import Motion, Performer, PerformerPrompt
from vimcan_core.rotations import quat_conj, quat_from_axis_angle, quat_mul, quat_normalize, yaw_quat
from vimcan_core.skeleton import IMU_JOINT, NUM_IMUS, ImuSite

if TYPE_CHECKING:
    from vimcan_core.calibration import Calibration

log = logging.getLogger(__name__)

GROUND_TRUTH_NAME = "simulation ground truth"


@dataclass(frozen=True)
class DemoConfig:
    """The demo rig. The defaults give realistic but exact-on-average sensors."""

    seed: int = 0
    performer_motion: Motion = Motion.LOOP
    imu: SimImuConfig = field(default_factory=lambda: SimImuConfig(latency_s=0.004, jitter_s=0.002, drop_rate=0.002))
    random_device_clocks: bool = True  # each IMU gets its own clock offset (0-1000 s) and drift (+-30 ppm)
    random_mount_deg: float = 0.0  # each IMU sits on its bone rotated by a random angle up to this (0: identity)
    random_heading_deg: float = 0.0  # each IMU's world frame has a random heading up to +- this (0: the performer's)
    camera: SimCameraConfig = field(default_factory=SimCameraConfig)
    camera_position_m: tuple[float, float, float] = (0.0, 1.2, 3.5)  # in front of the performer, at chest height
    camera_target_m: tuple[float, float, float] = (0.0, 1.2, 0.0)  # level: looks horizontally
    camera_hfov_deg: float = 60.0
    image_size_px: tuple[int, int] = (640, 480)
    prompt_transition_s: float = 0.5  # how long the performer takes to move into a prompted pose
    pipeline: PipelineConfig = field(default_factory=PipelineConfig)


@dataclass
class DemoRig:
    """Everything the demo is made of (the views and the calibration wizard read it)."""

    performer: Performer
    clock: SimClock
    camera_model: PinholeCamera
    imus: dict[ImuSite, SimulatedImu]
    camera: SimulatedCamera
    ground_truth: "GroundTruthPoseSource"
    prompt_transition_s: float = 0.5  # seconds to move into a prompted pose (``follow_prompt``)

    @property
    def devices(self) -> list[Device]:
        return [self.imus[s] for s in sorted(self.imus)] + [self.camera]

    def follow_prompt(self, prompt: PerformerPrompt, site: ImuSite | None = None) -> None:
        """Do what the calibration wizard asks now (``Performer.follow``), moving into the pose over
        ``prompt_transition_s`` seconds; ``site`` for ``PerformerPrompt.MOVE_SITE``. Thread-safe."""
        prompt = PerformerPrompt(prompt)
        now_s = float(self.clock.performer_time(time.monotonic()))
        self.performer.follow(prompt, site, at_s=now_s, transition_s=self.prompt_transition_s)
        log.info("demo performer: %s%s", prompt.value.replace("_", " "),
                 f" ({ImuSite(site).name.lower()})" if site is not None and prompt == PerformerPrompt.MOVE_SITE else "")

    @property
    def mount_quats_sensor_from_bone(self) -> np.ndarray:
        """6 x 4 (wxyz, ``ImuSite`` order): how each simulated sensor sits on its bone."""
        return np.array([self.imus[s].sim_config.mount_quat_sensor_from_bone for s in ImuSite], dtype=np.float64)

    @property
    def world_headings_deg(self) -> np.ndarray:
        """6: the yaw of each simulated IMU's own world frame relative to the performer's world."""
        return np.array([self.imus[s].sim_config.world_heading_deg for s in ImuSite], dtype=np.float64)

    @property
    def performer_height_m(self) -> float:
        """The simulated performer's height (what its user would type into the wizard)."""
        return self.performer.rest.height()

    def true_calibration(self) -> "Calibration":
        """The exact ``vimcan_core.calibration.Calibration`` of this rig (what a perfect
        calibration would find): the sensors' mounting and headings, and the camera's pose.
        With the default rig it equals ``Calibration.identity(camera_model)``."""
        from vimcan_core.calibration import Calibration, SensorQuality

        q_cw = quat_normalize(np.asarray(self.camera_model.quat_cam_from_world, dtype=np.float64))
        q_w_e = yaw_quat(np.radians(self.world_headings_deg))  # 6 x 4, IMU world -> performer world
        return Calibration(
            q_bone_from_sensor=quat_conj(self.mount_quats_sensor_from_bone),
            q_camera_from_imuworld=quat_normalize(quat_mul(q_cw, q_w_e)),
            acc_offset_mps2=np.zeros((NUM_IMUS, 3)),
            quat_world_from_camera=quat_conj(q_cw),
            quality=tuple(SensorQuality.perfect() for _ in range(NUM_IMUS)),
        )

    @property
    def is_identity_calibration(self) -> bool:
        """True when the IMUs report the bone orientations directly (identity mounting, no heading offset)."""
        q = self.mount_quats_sensor_from_bone
        return bool(np.allclose(np.abs(q[:, 0]), 1.0) and np.allclose(self.world_headings_deg, 0.0))


class GroundTruthPoseSource:
    """The pose stage of the demo before the model: the performer's own joints at the frame time."""

    name = GROUND_TRUTH_NAME

    def __init__(self, clock: SimClock) -> None:
        self.clock = clock

    def reset(self) -> None:
        pass

    def estimate(self, frame: SyncedFrame) -> PoseFrame:
        tick = self.clock.tick_of(frame.time_s)
        if tick is not None:  # camera frames fall on the grid: reuse the devices' cached batch
            chunk, i = self.clock.chunk_for_tick(tick)
            joints, site_quats = chunk.joints_world_m[i], chunk.site_quats_world[i]
        else:
            pose = self.clock.pose_at_host(frame.time_s)
            joints, site_quats = pose.joints_world_m, pose.global_quats[IMU_JOINT, :]
        root = joints[0].copy()
        return PoseFrame(
            frame_index=frame.frame_index,
            time_s=frame.time_s,
            joints_world_m=joints - root,
            root_world_m=root,
            source=self.name,
            camera_present=frame.camera_present,
            imu_present=frame.imu_present.copy(),
            confidence=1.0,
            sample_host_time_s=frame.sample_host_time_s,
            bone_quats_world=np.array(site_quats, dtype=np.float64),
        )


def demo_camera(config: DemoConfig = DemoConfig()) -> PinholeCamera:
    """The demo's virtual camera model."""
    w, h = config.image_size_px
    return PinholeCamera.looking_at(np.array(config.camera_position_m), np.array(config.camera_target_m),
                                    width_px=w, height_px=h, hfov_deg=config.camera_hfov_deg)


def build_demo_rig(config: DemoConfig = DemoConfig()) -> DemoRig:
    """The performer, its clock and the seven simulated devices (not started)."""
    performer = Performer(seed=config.seed, script=config.performer_motion)
    clock = SimClock(performer)
    rng = np.random.default_rng(config.seed)
    imus: dict[ImuSite, SimulatedImu] = {}
    for site in ImuSite:
        cfg = replace(config.imu, seed=config.seed * 100 + int(site),
                      battery_pct=float(np.round(rng.uniform(55.0, 100.0))),
                      device=replace(config.imu.device, latency_s=config.imu.latency_s))
        if config.random_device_clocks:
            cfg = replace(cfg, clock_offset_s=float(rng.uniform(0.0, 1000.0)), drift_ppm=float(rng.uniform(-30.0, 30.0)))
        if config.random_mount_deg > 0:
            axis = rng.normal(size=3)
            angle = np.radians(rng.uniform(0.3, 1.0) * config.random_mount_deg)
            cfg = replace(cfg, mount_quat_sensor_from_bone=tuple(float(x) for x in quat_from_axis_angle(axis, angle)))
        if config.random_heading_deg > 0:
            cfg = replace(cfg, world_heading_deg=float(rng.uniform(-1.0, 1.0) * config.random_heading_deg))
        imus[site] = SimulatedImu(f"sim-imu-{site.name.lower()}", performer, site, cfg, clock=clock)
    camera_model = demo_camera(config)
    cam_cfg = replace(config.camera, seed=config.seed * 100 + 99, device=replace(config.camera.device, latency_s=0.0))
    camera = SimulatedCamera("sim-camera", performer, camera_model, cam_cfg, clock=clock)
    return DemoRig(performer, clock, camera_model, imus, camera, GroundTruthPoseSource(clock),
                   prompt_transition_s=config.prompt_transition_s)


def build_demo_pipeline(pose_source: PoseSource | None = None, config: DemoConfig = DemoConfig()) -> CapturePipeline:
    """A ready-to-start pipeline on the demo rig; ``pipeline.demo`` is the ``DemoRig``.
    The pose source defaults to the simulation's ground truth; a pose source without a
    calibration (``ModelPoseSource``) is given the rig's true one and its camera model."""
    rig = build_demo_rig(config)
    source = pose_source or rig.ground_truth
    if hasattr(source, "set_calibration") and getattr(source, "calibration", None) is None:
        source.set_calibration(rig.true_calibration(), camera=rig.camera_model)  # the model pose source
    pipeline = CapturePipeline(dict(rig.imus), rig.camera, source, config.pipeline)
    pipeline.demo = rig
    log.info("demo pipeline: %d simulated IMUs and a %dx%d camera, pose source %r",
             NUM_IMUS, rig.camera_model.width_px, rig.camera_model.height_px, pipeline.pose_source.name)
    return pipeline
