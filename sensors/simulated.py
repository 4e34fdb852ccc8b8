"""Simulated IMUs and camera driven by the procedural performer.

They are real ``sensors.device.Device`` drivers: each runs its own thread, goes through the
same buffers, states, statistics and reconnection as a hardware driver, and looks to the
synchroniser like a real device (own clock, transport delay, jitter, lost packets).

Time. A ``SimClock`` maps the host's monotonic clock to performer time, so every device
driven by one performer shows the same instant. Samples are taken on a fixed grid of host
instants (``SimClock.TICK_HZ`` divided by the device rate): sample k of a 60 Hz IMU is
measured at ``origin + k / 60`` (as hardware-synchronised IMUs do). The performer is
evaluated once per grid instant for all devices (in batches, cached), so six IMUs and a
camera cost one batched evaluation every ``CHUNK_TICKS`` ticks.

IMU model (conventions of ``vimcan_core.rotations``: wxyz, ``q_ab`` rotates b into a)::

    q_measured = q_imuworld_from_world * q_world_from_bone * q_bone_from_sensor * q_noise

* ``mount_quat_sensor_from_bone`` (config) is ``q_sensor_from_bone``: how the sensor sits
  on the bone (it rotates bone-frame vectors into the sensor frame);
  ``q_bone_from_sensor`` is its inverse.
* ``world_heading_deg`` (config) is the yaw of the IMU's own world frame about the
  vertical: ``q_world_from_imuworld = yaw(world_heading_deg)``. Magnetometer-based IMUs
  agree on "up" but each has its own heading.
* With the defaults (identity mounting, heading 0, no noise) the measured quaternion is
  exactly the performer's bone orientation at the sensor's site.
* ``acc_free_mps2`` is the site's (mid-bone) acceleration without gravity, in the IMU's
  world frame; ``gyro_dps`` the angular velocity in the sensor frame.
* Device time: ``device_time = (t_true - origin) * (1 + drift_ppm 1e-6) + clock_offset_s``.
  The host receives a sample at ``t_true + latency_s + jitter`` (the delivery delay is
  exponential with mean ``jitter_s``); ``host_time_s`` is the real ``time.monotonic()``
  at delivery. Dropped packets leave a gap in ``seq`` and are counted.

Camera model: a ``PinholeCamera`` looking at the performer; keypoints are the projection
of the 3D joints (confidence 1, 0 for joints behind the camera or outside the image),
with optional Gaussian pixel noise. ``host_time_s`` is the capture instant; the frame is
delivered ``latency_s`` later. An optional preview image (dark, keypoints drawn) is
rendered with OpenCV.
"""

from __future__ import annotations

import logging
import math
import threading
import time
import weakref
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from sensors.device import Device, DeviceConfig, DeviceKind
from sensors.samples import ImuSample, KeypointFrame
from vimcan_core.camera import PinholeCamera
from vimcan_core.errors import DeviceError, DeviceLost
from vimcan_core.calibration import ImuWorldUp
from vimcan_core.performer import Performer, PerformerPose
from vimcan_core.rotations import quat_conj, quat_from_rotvec, quat_mul, quat_normalize, quat_rotate, yaw_quat
from vimcan_core.skeleton import BONES, LEFT_JOINTS, NUM_JOINTS, RIGHT_JOINTS, ImuSite

log = logging.getLogger(__name__)

IDENTITY_WXYZ = (1.0, 0.0, 0.0, 0.0)


# ------------------------------------------------------------------ the shared clock

@dataclass(frozen=True)
class _Chunk:
    """Performer quantities at CHUNK_TICKS consecutive grid instants."""

    site_quats_world: np.ndarray  # C x 6 x 4, bone-to-world
    site_acc_free_mps2: np.ndarray  # C x 6 x 3, world
    site_gyro_rps: np.ndarray  # C x 6 x 3, bone frame
    joints_world_m: np.ndarray  # C x 17 x 3


class SimClock:
    """Host monotonic time <-> performer time, and a cache of the performer on a fixed grid.

    ``performer_time(h) = h - origin_host_s + performer_start_s``. Grid instant k (at
    ``TICK_HZ``) is host time ``origin_host_s + k / TICK_HZ``. Thread-safe.
    """

    TICK_HZ = 120
    CHUNK_TICKS = 60  # one batched evaluation every 0.5 s of grid time
    _CACHE_CHUNKS = 16
    _shared: "weakref.WeakKeyDictionary[Performer, SimClock]" = weakref.WeakKeyDictionary()  # for_performer()
    _shared_lock = threading.Lock()

    def __init__(self, performer: Performer, origin_host_s: float | None = None, performer_start_s: float = 0.0) -> None:
        self.performer = performer
        self.origin_host_s = time.monotonic() if origin_host_s is None else float(origin_host_s)
        self.performer_start_s = float(performer_start_s)
        self._lock = threading.Lock()
        self._cache: OrderedDict[tuple[int, int], _Chunk] = OrderedDict()

    @classmethod
    def for_performer(cls, performer: Performer) -> "SimClock":
        """The clock shared by every device built on ``performer`` without an explicit clock."""
        with cls._shared_lock:
            clock = cls._shared.get(performer)
            if clock is None:
                clock = cls(performer)
                cls._shared[performer] = clock
            return clock

    def performer_time(self, host_time_s: float | np.ndarray) -> float | np.ndarray:
        return host_time_s - self.origin_host_s + self.performer_start_s

    def host_time(self, performer_time_s: float) -> float:
        return performer_time_s - self.performer_start_s + self.origin_host_s

    def tick_host_time(self, tick: int) -> float:
        """Host time of grid instant ``tick``."""
        return self.origin_host_s + tick / self.TICK_HZ

    def tick_of(self, host_time_s: float) -> int | None:
        """The grid instant at ``host_time_s`` (to within a microsecond), else None."""
        k = round((host_time_s - self.origin_host_s) * self.TICK_HZ)
        return k if abs(self.tick_host_time(k) - host_time_s) < 1e-6 else None

    def _chunk(self, index: int) -> _Chunk:
        script, version = self.performer.script_state()
        key = (index, version)
        with self._lock:
            chunk = self._cache.get(key)
            if chunk is not None:
                self._cache.move_to_end(key)
                return chunk
            ticks = index * self.CHUNK_TICKS + np.arange(self.CHUNK_TICKS)
            pose = self.performer.pose_at(ticks / self.TICK_HZ + self.performer_start_s, script=script)
            chunk = _Chunk(pose.site_quats_world, pose.site_acc_free_mps2, pose.site_gyro_rps, pose.joints_world_m)
            self._cache[key] = chunk
            while len(self._cache) > self._CACHE_CHUNKS:
                self._cache.popitem(last=False)
            return chunk

    def chunk_for_tick(self, tick: int) -> tuple[_Chunk, int]:
        """The cached batch holding grid instant ``tick`` and the instant's row in it.
        A new object whenever the batch is recomputed (e.g. after ``Performer.hold``)."""
        return self._chunk(tick // self.CHUNK_TICKS), tick % self.CHUNK_TICKS

    def sites_at_tick(self, tick: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(site quats 6 x 4 bone-to-world, free acc 6 x 3 world, gyro 6 x 3 rad/s bone frame) at a grid instant."""
        chunk, i = self.chunk_for_tick(tick)
        return chunk.site_quats_world[i], chunk.site_acc_free_mps2[i], chunk.site_gyro_rps[i]

    def joints_at_tick(self, tick: int) -> np.ndarray:
        """17 x 3 joint positions (world, metres) at a grid instant."""
        chunk, i = self.chunk_for_tick(tick)
        return chunk.joints_world_m[i]

    def pose_at_host(self, host_time_s: float) -> PerformerPose:
        """The performer at a host instant (evaluated directly, not cached)."""
        return self.performer.pose_at(self.performer_time(host_time_s))


def _ticks_per_sample(rate_hz: float, device_id: str) -> int:
    step = SimClock.TICK_HZ / rate_hz
    if rate_hz <= 0 or abs(step - round(step)) > 1e-9:
        raise DeviceError(
            f"{device_id}: simulated rate {rate_hz} Hz must divide {SimClock.TICK_HZ} Hz "
            f"(for example 30, 60 or 120); set rate_hz in the device's config"
        )
    return int(round(step))


# ------------------------------------------------------------------ common device behaviour

class _SimDevice(Device):
    """Sample scheduling on the grid, delivery delay and jitter, drops and unplugging."""

    MAX_CATCH_UP = 60  # samples delivered in one poll when the thread was held up; older ones are skipped

    def __init__(self, device_id: str, clock: SimClock, rate_hz: float, latency_s: float, jitter_s: float,
                 drop_rate: float, seed: int, config: DeviceConfig) -> None:
        super().__init__(device_id, config)
        self.sim_clock = clock
        self._ticks_per_sample = _ticks_per_sample(rate_hz, device_id)
        self._latency_s = latency_s
        self._jitter_s = jitter_s
        self._drop_rate = drop_rate
        self._rng = np.random.default_rng(seed)
        self._unplug_lock = threading.Lock()
        self._unplugged_until = -math.inf
        self._next_sample = 0  # index of the next sample on this device's grid (tick = index * step)
        self._next_delay_s = 0.0
        self.sent = 0  # samples the device produced (delivered + dropped), for tests

    def simulate_unplug(self, seconds: float) -> None:
        """Pretend the device is unplugged for ``seconds``: it stops delivering and raises
        ``DeviceLost``; the base class then reconnects with back-off once it is back."""
        with self._unplug_lock:
            self._unplugged_until = time.monotonic() + seconds

    def _unplugged_for(self) -> float:
        with self._unplug_lock:
            return self._unplugged_until - time.monotonic()

    def _connect(self) -> None:
        left = self._unplugged_for()
        if left > 0:
            raise DeviceLost(f"{self.device_id}: not found (simulated unplug, back in {left:.1f} s)")
        now = time.monotonic()
        step = self._ticks_per_sample / SimClock.TICK_HZ
        self._next_sample = math.ceil((now - self.sim_clock.origin_host_s) / step)
        self._draw_delay()
        self._on_connect()

    def _on_connect(self) -> None:
        """Hook for subclasses (called from the device thread after a successful connect)."""

    def _disconnect(self) -> None:
        pass

    def _draw_delay(self) -> None:
        jitter = self._rng.exponential(self._jitter_s) if self._jitter_s > 0 else 0.0
        self._next_delay_s = self._latency_s + jitter

    def _poll(self) -> Sequence:
        left = self._unplugged_for()
        if left > 0:
            raise DeviceLost(f"{self.device_id}: unplugged (simulated, {left:.1f} s)")
        tick = self._next_sample * self._ticks_per_sample
        due = self.sim_clock.tick_host_time(tick) + self._next_delay_s
        wait = due - time.monotonic()
        if wait > 0:
            self._stop.wait(min(wait, 0.1))
            if time.monotonic() < due:
                return []
        out = []
        now = time.monotonic()
        step_s = self._ticks_per_sample / SimClock.TICK_HZ
        behind = int((now - self.sim_clock.tick_host_time(self._next_sample * self._ticks_per_sample)) / step_s)
        if behind > self.MAX_CATCH_UP:
            # the host held this thread up for a long time (suspend, debugger): like a real
            # device's overflowing FIFO, the oldest samples are gone; skip them uncounted
            log.warning("%s: %d samples behind, skipping ahead", self.device_id, behind)
            self._next_sample += behind - self.MAX_CATCH_UP
        # everything that is due by now (several when this thread was held up)
        while len(out) < self.MAX_CATCH_UP:
            tick = self._next_sample * self._ticks_per_sample
            if self.sim_clock.tick_host_time(tick) + self._next_delay_s > now:
                break
            self.sent += 1
            if self._drop_rate > 0 and self._rng.random() < self._drop_rate:
                self._count_dropped()
            else:
                out.append(self._make_sample(tick, self._next_sample, now))
            self._next_sample += 1
            self._draw_delay()
        return out

    def _make_sample(self, tick: int, index: int, host_time_s: float):
        raise NotImplementedError


# ------------------------------------------------------------------ IMU

@dataclass(frozen=True)
class SimImuConfig:
    """A simulated IMU's behaviour (see the module docstring for the model)."""

    rate_hz: float = 60.0  # must divide SimClock.TICK_HZ
    clock_offset_s: float = 0.0  # device clock reading at the sim clock's origin
    drift_ppm: float = 0.0  # device clock runs fast by this many parts per million
    latency_s: float = 0.004  # transport delay from measurement to host
    jitter_s: float = 0.0  # mean of the extra, exponential, delivery delay
    drop_rate: float = 0.0  # probability that a packet is lost
    orientation_noise_deg: float = 0.0  # std of white noise on each rotation axis
    acc_noise_mps2: float = 0.0  # std of white noise on each acceleration axis
    mount_quat_sensor_from_bone: tuple[float, float, float, float] = IDENTITY_WXYZ
    world_heading_deg: float = 0.0  # yaw of the IMU's own world frame relative to the performer's world
    battery_pct: float = 90.0  # reported battery level
    seed: int = 0
    device: DeviceConfig = field(default_factory=DeviceConfig)

    def __post_init__(self) -> None:
        if not 0.0 <= self.drop_rate < 1.0:
            raise ValueError(f"drop_rate must be in [0, 1), got {self.drop_rate}")
        if len(self.mount_quat_sensor_from_bone) != 4:
            raise ValueError(f"mount_quat_sensor_from_bone must be wxyz, got {self.mount_quat_sensor_from_bone}")

    @property
    def quat_imuworld_from_world(self) -> np.ndarray:
        """4, the inverse of the IMU world frame's heading."""
        return quat_conj(yaw_quat(np.radians(self.world_heading_deg)))


class SimulatedImu(_SimDevice):
    """One IMU on one bone of the performer, streaming ``ImuSample`` at ``config.rate_hz``."""

    kind = DeviceKind.IMU
    imu_world_up = ImuWorldUp.Y  # the simulator's IMU worlds are the performer's Y-up world (turned by a heading)

    def __init__(self, device_id: str, performer: Performer, site: ImuSite, config: SimImuConfig | None = None,
                 clock: SimClock | None = None) -> None:
        config = config or SimImuConfig()
        clock = clock or SimClock.for_performer(performer)
        super().__init__(device_id, clock, config.rate_hz, config.latency_s, config.jitter_s, config.drop_rate,
                         config.seed, config.device)
        self.performer = performer
        self.site = ImuSite(site)
        self.sim_config = config
        self._q_iw = config.quat_imuworld_from_world
        self._q_sb = quat_normalize(np.asarray(config.mount_quat_sensor_from_bone, dtype=np.float64))
        self._q_bs = quat_conj(self._q_sb)
        self._measured_src: _Chunk | None = None  # the batch self._measured was computed from
        self._measured: tuple[np.ndarray, np.ndarray, np.ndarray] = ()

    def device_time(self, host_time_s: float) -> float:
        """This device's clock reading at a host instant."""
        c = self.sim_config
        return (host_time_s - self.sim_clock.origin_host_s) * (1.0 + c.drift_ppm * 1e-6) + c.clock_offset_s

    def measured_quat(self, quat_world_from_bone: np.ndarray) -> np.ndarray:
        """The noiseless quaternion this IMU reports for a bone orientation (... x 4)."""
        return quat_normalize(quat_mul(quat_mul(self._q_iw, quat_world_from_bone), self._q_bs))

    def _on_connect(self) -> None:
        self._set_battery(self.sim_config.battery_pct)

    def _measure_chunk(self, chunk: _Chunk) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """What this IMU reports at every instant of a batch, noise included (vectorised):
        (C x 4 quats, C x 3 free acc in the IMU world, C x 3 gyro in deg/s, sensor frame)."""
        c = self.sim_config
        q_wb = chunk.site_quats_world[:, self.site]  # C x 4
        q = self.measured_quat(q_wb)
        if c.orientation_noise_deg > 0:
            noise = quat_from_rotvec(self._rng.normal(0.0, np.radians(c.orientation_noise_deg), q.shape[:-1] + (3,)))
            q = quat_normalize(quat_mul(q, noise))
        acc = quat_rotate(self._q_iw, chunk.site_acc_free_mps2[:, self.site])
        if c.acc_noise_mps2 > 0:
            acc = acc + self._rng.normal(0.0, c.acc_noise_mps2, acc.shape)
        gyro_dps = np.degrees(quat_rotate(self._q_sb, chunk.site_gyro_rps[:, self.site]))
        return q, acc, gyro_dps

    def _make_sample(self, tick: int, index: int, host_time_s: float) -> ImuSample:
        chunk, i = self.sim_clock.chunk_for_tick(tick)
        if chunk is not self._measured_src:
            self._measured = self._measure_chunk(chunk)
            self._measured_src = chunk
        q, a, w = (x[i].tolist() for x in self._measured)
        t_true = self.sim_clock.tick_host_time(tick)
        return ImuSample(
            device_id=self.device_id,
            host_time_s=host_time_s,
            device_time_s=self.device_time(t_true),
            quat_wxyz=tuple(q),
            acc_free_mps2=tuple(a),
            gyro_dps=tuple(w),
            seq=index & 0xFFFF,
        )


# ------------------------------------------------------------------ camera

@dataclass(frozen=True)
class SimCameraConfig:
    """A simulated keypoint camera."""

    rate_hz: float = 30.0  # must divide SimClock.TICK_HZ
    latency_s: float = 0.02  # capture to delivery (host_time_s stays the capture instant)
    jitter_s: float = 0.0  # mean extra exponential delivery delay
    drop_rate: float = 0.0  # probability that a frame is lost
    pixel_noise_px: float = 0.0  # std of Gaussian noise added to the keypoints
    render_preview: bool = True  # draw a dark preview image with the keypoints
    seed: int = 0
    device: DeviceConfig = field(default_factory=lambda: DeviceConfig(buffer_capacity=64))


#: colours (BGR) of the preview's bones: left side, right side, centre
_PREVIEW_COLOURS = {"left": (80, 200, 255), "right": (255, 160, 80), "centre": (200, 200, 200)}


def render_keypoints(keypoints_px: np.ndarray, confidence: np.ndarray, width_px: int, height_px: int) -> np.ndarray:
    """A dark H x W x 3 (BGR, uint8) image with the skeleton's keypoints and bones drawn."""
    import cv2

    img = np.full((height_px, width_px, 3), 24, dtype=np.uint8)
    pts = np.nan_to_num(keypoints_px).round().astype(np.int32)
    for p, c in BONES:
        if confidence[p] > 0 and confidence[c] > 0:
            side = "left" if c in LEFT_JOINTS else "right" if c in RIGHT_JOINTS else "centre"
            cv2.line(img, tuple(pts[p]), tuple(pts[c]), _PREVIEW_COLOURS[side], 2, cv2.LINE_8)
    for j in range(NUM_JOINTS):
        if confidence[j] > 0:
            cv2.circle(img, tuple(pts[j]), 3, (255, 255, 255), -1, cv2.LINE_8)
    return img


class SimulatedCamera(_SimDevice):
    """A virtual pinhole camera streaming ``KeypointFrame`` of the performer at ``config.rate_hz``."""

    kind = DeviceKind.CAMERA

    def __init__(self, device_id: str, performer: Performer, camera: PinholeCamera, config: SimCameraConfig | None = None,
                 clock: SimClock | None = None) -> None:
        config = config or SimCameraConfig()
        clock = clock or SimClock.for_performer(performer)
        super().__init__(device_id, clock, config.rate_hz, config.latency_s, config.jitter_s, config.drop_rate,
                         config.seed, config.device)
        self.performer = performer
        self.camera = camera
        self.sim_config = config
        self._projected_src: _Chunk | None = None
        self._projected: tuple[np.ndarray, np.ndarray] = ()
        self._out_of_view_until = -math.inf

    def simulate_out_of_view(self, seconds: float) -> None:
        """The person leaves the picture for ``seconds``: frames keep coming, with every
        keypoint's confidence 0 (as a keypoint detector reports an empty frame)."""
        with self._unplug_lock:
            self._out_of_view_until = time.monotonic() + seconds

    def keypoints(self, joints_world_m: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Noiseless projection: ... x 17 x 3 world joints -> (... x 17 x 2 pixels, ... x 17 confidence)."""
        cam = self.camera
        kp = cam.project(joints_world_m)  # ... x 17 x 2, NaN behind the camera
        inside = np.isfinite(kp).all(axis=-1) & (kp[..., 0] >= 0) & (kp[..., 0] < cam.width_px) \
            & (kp[..., 1] >= 0) & (kp[..., 1] < cam.height_px)
        return np.nan_to_num(kp), inside.astype(np.float64)

    def _make_sample(self, tick: int, index: int, host_time_s: float) -> KeypointFrame:
        c = self.sim_config
        chunk, i = self.sim_clock.chunk_for_tick(tick)
        if chunk is not self._projected_src:
            self._projected = self.keypoints(chunk.joints_world_m)  # C x 17 x 2, C x 17
            self._projected_src = chunk
        kp, conf = self._projected[0][i], self._projected[1][i]
        with self._unplug_lock:
            out_of_view = time.monotonic() < self._out_of_view_until
        if out_of_view:
            kp, conf = np.zeros_like(kp), np.zeros_like(conf)
        if c.pixel_noise_px > 0:
            kp = kp + self._rng.normal(0.0, c.pixel_noise_px, kp.shape)
        image = render_keypoints(kp, conf, self.camera.width_px, self.camera.height_px) if c.render_preview else None
        return KeypointFrame(
            device_id=self.device_id,
            host_time_s=self.sim_clock.tick_host_time(tick),  # the capture instant
            device_time_s=None,
            keypoints_px=kp,
            confidence=conf,
            width_px=self.camera.width_px,
            height_px=self.camera.height_px,
            image_bgr=image,
        )
