"""Time synchronisation: pair each camera frame with the six IMUs at the frame's instant.

Every sample is placed on the host's monotonic clock before pairing:

* an IMU sample with a device timestamp: ``device_time + clock_offset - latency``, where
  ``clock_offset`` is the device's running estimate of ``host - device`` (the minimum
  filter of ``sensors.clock``: true offset plus the smallest transport delay) and
  ``latency`` is the device's configured extra delay (``DeviceConfig.latency_s``);
* without a device timestamp: ``host_time - latency`` (also when the device-clock instant
  would be after the sample's arrival or more than a second before it: the clock restarted);
* a camera frame: ``host_time - latency`` of the camera (the capture instant).

At a frame time t, each IMU's orientation is the slerp between the last sample at or
before t and the first after it, when both are within ``max_staleness_s`` of t; the
nearer one alone when only one is (the newest sample is held while the next is in
flight); otherwise the IMU is missing for that frame (NaN rows, ``imu_present`` False).
Free accelerations are interpolated linearly with the same weights.

A sample within ``snap_s`` of t is used alone (the nearer, when two are). The placement
of a sample on the host clock is itself only good to a fraction of a millisecond (the
minimum filter's floor, the clock drift inside its window), so a slerp step shorter than
that adds no accuracy; what it would add is a second, older input. That matters for
latency: a camera whose frames fall on the IMU sample grid (the demo rig, hardware-
triggered rigs) puts its frame instant a hair before the sample measured at that instant,
and interpolating would then mix in the previous sample (weight < 1 %) and wait for,
or date the pose from, an input one IMU period older than the frame. The cost is an
orientation error of at most ``angular speed x snap_s``: 0.57 deg at 10 rad/s with the
default 1 ms (``SyncConfig.snap_s = 0`` turns snapping off).

The same pairing runs offline on arrays (``pair_track`` / ``sync_offline``), to re-solve
a recorded take from its raw samples.
"""

from __future__ import annotations

import itertools
import logging
import weakref
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np

from sensors.device import Device
from sensors.samples import ImuSample, KeypointFrame, SyncedFrame
from vimcan_core.errors import InputShapeError
from vimcan_core.rotations import quat_slerp
from vimcan_core.skeleton import NUM_IMUS, ImuSite

log = logging.getLogger(__name__)


MAX_CLOCK_AHEAD_S = 0.002  # a device-timestamped instant may be this much after its arrival (estimate noise)
MAX_CLOCK_BEHIND_S = 1.0  # ... and at most this much before it
DEFAULT_SNAP_S = 0.001  # a frame instant this close to a sample takes that sample alone (see the module docstring)


@dataclass(frozen=True)
class SyncConfig:
    """How IMU samples are paired with frames."""

    max_staleness_s: float = 0.1  # a sensor with no sample this close to the frame time is missing
    use_device_clock: bool = True  # place samples by their device timestamps (clock-offset corrected)
    history: int = 256  # samples kept per IMU for interpolation (about 4 s at 60 Hz)
    snap_s: float = DEFAULT_SNAP_S  # a sample this close to the frame instant is used alone (0: always interpolate)

    def __post_init__(self) -> None:
        if not 0.0 <= self.snap_s < self.max_staleness_s:
            raise ValueError(f"SyncConfig.snap_s must be in [0, max_staleness_s = {self.max_staleness_s} s), "
                             f"got {self.snap_s} s")


@dataclass(frozen=True)
class TrackPairing:
    """One IMU's samples paired with F query times."""

    quat_wxyz: np.ndarray  # F x 4, NaN where missing
    acc_free_mps2: np.ndarray  # F x 3, NaN where missing or not measured
    present: np.ndarray  # F bool
    before: np.ndarray  # F int, index of the sample at or before the time used (-1: none)
    after: np.ndarray  # F int, index of the sample after the time used (-1: none)


def pair_track(
    sample_times_s: np.ndarray,
    quat_wxyz: np.ndarray,
    acc_free_mps2: np.ndarray | None,
    query_times_s: np.ndarray,
    max_staleness_s: float = 0.1,
    snap_s: float = DEFAULT_SNAP_S,
) -> TrackPairing:
    """Interpolate one IMU's samples at the query times (see the module docstring).

    Args:
        sample_times_s: N, sorted, the samples' instants on the host clock.
        quat_wxyz: N x 4 orientations.
        acc_free_mps2: N x 3 or None.
        query_times_s: F frame instants.
        max_staleness_s: how far a usable sample may be from a query time.
        snap_s: a sample this close to a query time is used alone.
    """
    times = np.asarray(sample_times_s, dtype=np.float64)
    quats = np.asarray(quat_wxyz, dtype=np.float64)
    query = np.atleast_1d(np.asarray(query_times_s, dtype=np.float64))
    n, f = len(times), len(query)
    if quats.shape != (n, 4):
        raise InputShapeError(f"pair_track: quat_wxyz must be {n} x 4 (one per sample time), got {quats.shape}")
    if acc_free_mps2 is not None and np.shape(acc_free_mps2) != (n, 3):
        raise InputShapeError(f"pair_track: acc_free_mps2 must be {n} x 3, got {np.shape(acc_free_mps2)}")
    out_q = np.full((f, 4), np.nan)
    out_a = np.full((f, 3), np.nan)
    before = np.full(f, -1)
    after = np.full(f, -1)
    if n == 0 or f == 0:
        return TrackPairing(out_q, out_a, np.zeros(f, bool), before, after)
    if np.any(np.diff(times) < 0):
        raise InputShapeError("pair_track: sample_times_s must be sorted (oldest first)")
    i = np.searchsorted(times, query, side="right")  # F, first sample after each query
    ib = np.clip(i - 1, 0, n - 1)
    ia = np.clip(i, 0, n - 1)
    gap_b = np.where(i > 0, query - times[ib], np.inf)
    gap_a = np.where(i < n, times[ia] - query, np.inf)
    snap_b = (gap_b <= snap_s) & (gap_b <= gap_a)  # the sample at or just before is the query's own
    snap_a = (gap_a <= snap_s) & ~snap_b  # ... or the one just after
    ok_b = (gap_b <= max_staleness_s) & ~snap_a
    ok_a = (gap_a <= max_staleness_s) & ~snap_b
    both = ok_b & ok_a
    span = np.where(both, times[ia] - times[ib], 1.0)
    u = np.where(both & (span > 0), gap_b / np.where(span > 0, span, 1.0), 0.0)  # 0 at 'before', 1 at 'after'
    u = np.where(~ok_b & ok_a, 1.0, u)  # only the next sample is used: hold it
    present = ok_b | ok_a
    lo = np.where(ok_b, ib, ia)  # F, the pair to interpolate between (the same index twice when held)
    hi = np.where(ok_a, ia, ib)
    if np.any(present):
        sel = np.flatnonzero(present)
        out_q[sel] = quat_slerp(quats[lo[sel]], quats[hi[sel]], u[sel])
        if acc_free_mps2 is not None:
            acc = np.asarray(acc_free_mps2, dtype=np.float64)
            out_a[sel] = (1.0 - u[sel, None]) * acc[lo[sel]] + u[sel, None] * acc[hi[sel]]
    before = np.where(ok_b, ib, -1)
    after = np.where(ok_a & (u > 0), ia, -1)
    return TrackPairing(out_q, out_a, present, before, after)


def sample_times_offline(
    host_times_s: np.ndarray, device_times_s: np.ndarray | None, latency_s: float = 0.0, window: int = 256
) -> np.ndarray:
    """Host-clock instants of recorded samples (N), as the live synchroniser places them:
    device time plus a sliding-minimum estimate of ``host - device`` (centred window of
    ``window`` samples), minus the known latency; host time minus latency without device times."""
    host = np.asarray(host_times_s, dtype=np.float64)
    if device_times_s is None:
        return host - latency_s
    dev = np.asarray(device_times_s, dtype=np.float64)
    if dev.shape != host.shape:
        raise InputShapeError(f"sample_times_offline: {dev.shape} device times for {host.shape} host times")
    if np.any(~np.isfinite(dev)):
        return host - latency_s
    from scipy.ndimage import minimum_filter1d

    offset = minimum_filter1d(host - dev, size=max(1, min(window, len(host))), mode="nearest")
    return dev + offset - latency_s


def sync_offline(
    frame_times_s: np.ndarray,
    tracks: Mapping[ImuSite, tuple[np.ndarray, np.ndarray, np.ndarray | None]],
    max_staleness_s: float = 0.1,
    snap_s: float = DEFAULT_SNAP_S,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pair recorded IMU tracks with frame times.

    Args:
        frame_times_s: F frame instants (host clock).
        tracks: per site, (sample times N, sorted; quats N x 4; acc N x 3 or None).
            Use ``sample_times_offline`` to turn raw timestamps into sample times.
        max_staleness_s, snap_s: as in ``pair_track``.

    Returns:
        (quats F x 6 x 4 NaN where missing, acc F x 6 x 3, present F x 6 bool), in ``ImuSite`` order.
    """
    frame_times_s = np.atleast_1d(np.asarray(frame_times_s, dtype=np.float64))
    f = len(frame_times_s)
    quats = np.full((f, NUM_IMUS, 4), np.nan)
    acc = np.full((f, NUM_IMUS, 3), np.nan)
    present = np.zeros((f, NUM_IMUS), bool)
    for site, (times, q, a) in tracks.items():
        p = pair_track(times, q, a, frame_times_s, max_staleness_s, snap_s)
        s = int(ImuSite(site))
        quats[:, s], acc[:, s], present[:, s] = p.quat_wxyz, p.acc_free_mps2, p.present
    return quats, acc, present


class _Track:
    """The recent samples of one IMU as arrays (filled incrementally from its buffer)."""

    def __init__(self, capacity: int, device: Device) -> None:
        self.owner = weakref.ref(device)
        self.capacity = capacity
        self.cursor = 0
        self.count = 0
        self.host = np.empty(2 * capacity)
        self.device = np.empty(2 * capacity)  # NaN when the sample had no device time
        self.quat = np.empty((2 * capacity, 4))
        self.acc = np.empty((2 * capacity, 3))

    def pull(self, device: Device) -> None:
        if device.buffer.total_pushed == self.cursor:  # nothing new (cheap check, no copy)
            return
        samples, self.cursor, _lost = device.buffer.read_since(self.cursor)
        imu = [s for s in samples if isinstance(s, ImuSample)]
        if len(imu) > self.capacity:
            imu = imu[-self.capacity:]
        if not imu:
            return
        if self.count + len(imu) > 2 * self.capacity:  # keep the newest `capacity` rows, then append
            keep = self.capacity - len(imu)
            for arr in (self.host, self.device, self.quat, self.acc):
                arr[:keep] = arr[self.count - keep:self.count]
            self.count = keep
        k, m = self.count, len(imu)
        self.host[k:k + m] = [s.host_time_s for s in imu]
        self.device[k:k + m] = [np.nan if s.device_time_s is None else s.device_time_s for s in imu]
        self.quat[k:k + m] = [s.quat_wxyz for s in imu]
        self.acc[k:k + m] = [(np.nan,) * 3 if s.acc_free_mps2 is None else s.acc_free_mps2 for s in imu]
        self.count += m

    def times(self, device: Device, use_device_clock: bool, start: int = 0) -> np.ndarray:
        """Instants on the host clock (see the module docstring) of samples ``start:``."""
        host = self.host[start:self.count]
        dev = self.device[start:self.count]
        offset = device.clock.offset_s
        latency = device.config.latency_s
        if use_device_clock and offset is not None:
            t = dev + offset
            # a sample cannot arrive before it was measured, nor (here) a second after: such a
            # timestamp means the estimate does not fit this sample (a device clock that restarted
            # on reconnect, before the estimator's window forgot the old clock); use its arrival
            bad = ~np.isfinite(t) | (t > host + MAX_CLOCK_AHEAD_S) | (t < host - MAX_CLOCK_BEHIND_S)
            t = np.where(bad, host, t)
        else:
            t = host.copy()
        return t - latency

    def window(self, device: Device, use_device_clock: bool, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """The newest ``size`` samples, sorted by instant: (times, quats x 4, acc x 3, host times)."""
        start = max(0, self.count - size)
        times = self.times(device, use_device_clock, start)
        quats, acc, host = self.quat[start:self.count], self.acc[start:self.count], self.host[start:self.count]
        if np.any(times[1:] < times[:-1]):  # e.g. a device clock that restarted on reconnect
            order = np.argsort(times, kind="stable")
            times, quats, acc, host = times[order], quats[order], acc[order], host[order]
        return times, quats, acc, host


def _pair_one(times: np.ndarray, t: float, stale_s: float, snap_s: float = DEFAULT_SNAP_S) -> tuple[int, int, float] | None:
    """``pair_track`` for one query time (the live path): the indices of the two samples to
    interpolate between and the weight of the second (the same index twice when held), or None."""
    n = len(times)
    i = int(np.searchsorted(times, t, side="right"))
    gap_b = t - times[i - 1] if i > 0 else np.inf
    gap_a = times[i] - t if i < n else np.inf
    if gap_b <= snap_s and gap_b <= gap_a:  # the frame's own sample: no slerp with an older one
        return i - 1, i - 1, 0.0
    if gap_a <= snap_s:
        return i, i, 0.0
    ok_b = gap_b <= stale_s
    ok_a = gap_a <= stale_s
    if ok_b and ok_a:
        span = times[i] - times[i - 1]
        u = float((t - times[i - 1]) / span) if span > 0 else 0.0
        return (i - 1, i, u) if u > 0.0 else (i - 1, i - 1, 0.0)
    if ok_b:
        return i - 1, i - 1, 0.0
    if ok_a:
        return i, i, 0.0
    return None


class Synchronizer:
    """Builds a ``SyncedFrame`` for each camera frame (or IMU-only instant) from the IMU buffers.

    Not thread-safe: one pipeline thread owns it.
    """

    def __init__(self, config: SyncConfig | None = None) -> None:
        self.config = config or SyncConfig()
        self._tracks: dict[int, _Track] = {}
        self._frame_counter = itertools.count()

    def reset(self) -> None:
        """Forget all history and restart frame numbering."""
        self._tracks.clear()
        self._frame_counter = itertools.count()

    def _track(self, device: Device) -> _Track:
        track = self._tracks.get(id(device))
        if track is not None and track.owner() is not device:  # an id reused by a new object
            track = None
        if track is None:
            if len(self._tracks) > 64:  # devices come and go (reconnects in the GUI): forget old ones
                self._tracks.clear()
            track = self._tracks[id(device)] = _Track(self.config.history, device)
        track.pull(device)
        return track

    def imus_ready(self, imus: Mapping[ImuSite, Device], time_s: float) -> bool:
        """True when every live IMU (one with a sample within the staleness limit) has a
        sample after ``time_s`` (or within ``snap_s`` before it, which is used alone), so
        the frame can be interpolated rather than held."""
        cfg = self.config
        for device in imus.values():
            track = self._track(device)
            if track.count == 0:
                continue
            newest = float(track.times(device, cfg.use_device_clock, track.count - 1)[0])
            if time_s - cfg.max_staleness_s <= newest < time_s - cfg.snap_s:
                return False
        return True

    def synchronize(
        self,
        imus: Mapping[ImuSite, Device],
        frame: KeypointFrame | None,
        time_s: float | None = None,
        camera_latency_s: float = 0.0,
    ) -> SyncedFrame:
        """The IMUs at the frame's instant (``frame.host_time_s - camera_latency_s``), or at
        ``time_s`` when there is no frame (IMU-only ticks)."""
        if frame is None and time_s is None:
            raise ValueError("synchronize needs a camera frame or an explicit time_s")
        t = frame.host_time_s - camera_latency_s if time_s is None else float(time_s)
        quats = np.full((NUM_IMUS, 4), np.nan)
        acc = np.full((NUM_IMUS, 3), np.nan)
        present = np.zeros(NUM_IMUS, bool)
        oldest = frame.host_time_s if frame is not None else t
        # the frame time is recent: a window of about a second of samples is plenty
        window = max(8, int(self.config.max_staleness_s * 600) + 4)
        q_a = np.empty((NUM_IMUS, 4))  # 6 x 4, the pair each sensor is interpolated between
        q_b = np.empty((NUM_IMUS, 4))
        weights = np.zeros(NUM_IMUS)  # 6, weight of q_b
        for site, device in imus.items():
            track = self._track(device)
            if track.count == 0:
                continue
            times, q, a, host = track.window(device, self.config.use_device_clock, window)
            if len(times) < track.count and t < times[0]:
                # an older instant (re-solving, tests): search the whole history
                times, q, a, host = track.window(device, self.config.use_device_clock, track.count)
            paired = _pair_one(times, t, self.config.max_staleness_s, self.config.snap_s)
            if paired is None:
                continue
            ib, ia, u = paired
            s = int(ImuSite(site))
            q_a[s], q_b[s], weights[s] = q[ib], q[ia], u
            acc[s] = a[ib] if ia == ib else (1.0 - u) * a[ib] + u * a[ia]
            present[s] = True
            oldest = min(oldest, float(host[ib]), float(host[ia]))
        if present.any():  # one vectorised slerp for all sensors
            quats[present] = quat_slerp(q_a[present], q_b[present], weights[present])
        return SyncedFrame(
            frame_index=next(self._frame_counter),
            time_s=t,
            keypoints_px=None if frame is None else frame.keypoints_px,
            keypoint_confidence=None if frame is None else frame.confidence,
            image_size_px=None if frame is None else (frame.width_px, frame.height_px),
            imu_quat_wxyz=quats,
            imu_acc_free_mps2=acc,
            imu_present=present,
            sample_host_time_s=oldest,
            image_bgr=None if frame is None else frame.image_bgr,
        )


def imu_arrays(samples: Sequence[ImuSample]) -> tuple[np.ndarray, np.ndarray | None, np.ndarray, np.ndarray | None]:
    """Raw samples -> (host times N, device times N or None, quats N x 4, acc N x 3 or None)."""
    host = np.array([s.host_time_s for s in samples], dtype=np.float64)
    dev = None if any(s.device_time_s is None for s in samples) else np.array([s.device_time_s for s in samples])
    quats = np.array([s.quat_wxyz for s in samples], dtype=np.float64).reshape(-1, 4)
    acc = None if any(s.acc_free_mps2 is None for s in samples) else np.array([s.acc_free_mps2 for s in samples]).reshape(-1, 3)
    return host, dev, quats, acc
