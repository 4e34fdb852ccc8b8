"""The synchroniser pairs each camera frame with the IMUs interpolated to the frame's instant.

The IMUs here replay a known motion through the real ``Device`` delivery path (clock-offset
estimator and buffer); only the hardware is replaced. The motion turns at a constant rate,
so slerp between two samples is exact and any error comes from the timing.
"""

from __future__ import annotations


import numpy as np
import pytest
from replay_imu import ReplayImu

from sensors.device import DeviceConfig
from sensors.samples import ImuSample, KeypointFrame
from sensors.sync import SyncConfig, Synchronizer, imu_arrays, pair_track, sample_times_offline, sync_offline
from vimcan_core.errors import InputShapeError
from vimcan_core.rotations import quat_angle, quat_from_rotvec, quat_mul
from vimcan_core.skeleton import ImuSite

OMEGA_RPS = 3.0  # rad/s
LATENCY_S = 0.004
T0 = 1000.0  # host clock at the start of the recording



def motion(site: int, t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Orientation (... x 4) turning at OMEGA about a per-site axis, and a linear acceleration (... x 3)."""
    axis = np.array([np.cos(site), 0.5, np.sin(site)])
    axis /= np.linalg.norm(axis)
    t = np.asarray(t, dtype=np.float64)
    start = quat_from_rotvec(np.array([0.3, -0.2, 0.1 * site]))
    q = quat_mul(quat_from_rotvec((OMEGA_RPS * (t - T0))[..., None] * axis), start)
    acc = np.stack((1.0 + 2.0 * (t - T0), -3.0 * (t - T0), 0.5 + 0 * t), axis=-1) + site
    return q, acc


def recording(site: int, rng: np.random.Generator, seconds: float = 4.0, drop_rate: float = 0.15,
              burst: tuple[float, float] | None = (2.0, 2.3), offset_s: float = 500.0, drift_ppm: float = 20.0):
    """60 Hz samples of one IMU: device timestamps with offset and drift, FIFO delivery with latency
    and exponential jitter, random drops and a burst of lost packets. Returns (samples, true instants)."""
    t_true = T0 + np.arange(int(seconds * 60)) / 60.0
    keep = rng.random(len(t_true)) >= drop_rate
    if burst is not None:
        keep &= ~((t_true >= T0 + burst[0]) & (t_true < T0 + burst[1]))
    q, acc = motion(site, t_true)
    arrival = t_true + LATENCY_S + rng.exponential(0.003, len(t_true))
    arrival = np.maximum.accumulate(arrival)  # the transport keeps packets in order
    samples = [
        ImuSample(device_id=f"imu{site}", host_time_s=float(arrival[k]),
                  device_time_s=float((t_true[k] - T0) * (1 + drift_ppm * 1e-6) + offset_s),
                  quat_wxyz=tuple(q[k]), acc_free_mps2=tuple(acc[k]), seq=k)
        for k in np.flatnonzero(keep)
    ]
    return samples, t_true[keep]


def make_devices(rng: np.random.Generator, **kw) -> tuple[dict[ImuSite, ReplayImu], dict[ImuSite, np.ndarray]]:
    devices, true_times = {}, {}
    for site in ImuSite:
        samples, t = recording(int(site), rng, offset_s=100.0 + 77.0 * int(site), **kw)
        dev = ReplayImu(f"imu{int(site)}", DeviceConfig(latency_s=LATENCY_S))
        dev._deliver(samples)
        devices[site], true_times[site] = dev, t
    return devices, true_times


def frame_at(t: float) -> KeypointFrame:
    kp = np.tile(np.array([[320.0, 240.0]]), (17, 1)) + t % 1.0
    return KeypointFrame("cam", t, None, kp, np.ones(17), 640, 480)


def test_frames_get_imus_slerped_to_their_timestamp_despite_jitter_drops_and_clock_offsets() -> None:
    rng = np.random.default_rng(0)
    devices, true_times = make_devices(rng)
    sync = Synchronizer(SyncConfig(max_staleness_s=0.1))
    frame_times = T0 + 0.2123 + np.arange(105) / 30.0  # 30 Hz, not aligned with the IMU samples
    frames = [sync.synchronize(devices, frame_at(t)) for t in frame_times]
    assert [f.frame_index for f in frames] == list(range(len(frames)))
    checked = 0
    naive_err = []
    for f, t in zip(frames, frame_times):
        assert f.time_s == t and f.camera_present and f.image_size_px == (640, 480)
        np.testing.assert_array_equal(f.keypoints_px, frame_at(t).keypoints_px)
        for site in ImuSite:
            gaps = np.abs(true_times[site] - t)
            before = true_times[site][true_times[site] <= t]
            after = true_times[site][true_times[site] > t]
            if abs(gaps.min() - 0.1) < 0.002:
                continue  # too close to the staleness limit to call
            expected_present = gaps.min() <= 0.1
            assert f.imu_present[site] == expected_present, (site, t - T0)
            if not expected_present:
                assert np.all(np.isnan(f.imu_quat_wxyz[site]))
                continue
            q_true, acc_true = motion(int(site), np.array(t))
            if len(before) and len(after) and t - before[-1] <= 0.1 and after[0] - t <= 0.1:
                # both neighbours are close: interpolated, exact up to the clock estimate
                assert quat_angle(f.imu_quat_wxyz[site], q_true) < 1e-3
                np.testing.assert_allclose(f.imu_acc_free_mps2[site], acc_true, atol=1e-3)
                checked += 1
                # the naive pairing (nearest sample by arrival time) is much worse
                samples = devices[site].buffer.snapshot()
                host = np.array([s.host_time_s for s in samples])
                nearest = samples[int(np.argmin(np.abs(host - t)))]
                naive_err.append(quat_angle(np.array(nearest.quat_wxyz), q_true))
            else:
                # only one side is close: that sample is held
                held = before[-1] if len(before) and t - before[-1] <= 0.1 else after[0]
                assert quat_angle(f.imu_quat_wxyz[site], motion(int(site), np.array(held))[0]) < 1e-3
        # the oldest input sample for latency: no later than the frame, no older than the staleness
        assert t - 0.1 - 0.05 <= f.sample_host_time_s <= t
    assert checked > 400
    assert np.median(naive_err) > 10 * 1e-3


def test_a_burst_of_lost_packets_marks_the_sensor_missing_only_beyond_the_staleness() -> None:
    rng = np.random.default_rng(1)
    samples, t_true = recording(0, rng, drop_rate=0.0, burst=(2.0, 2.4))
    dev = ReplayImu("imu0", DeviceConfig(latency_s=LATENCY_S))
    dev._deliver(samples)
    sync = Synchronizer(SyncConfig(max_staleness_s=0.1))
    imus = {ImuSite.LEFT_FOREARM: dev}
    present = {dt: sync.synchronize(imus, None, time_s=T0 + dt).imu_present[0] for dt in (1.95, 2.05, 2.15, 2.2, 2.25, 2.35, 2.45)}
    assert present == {1.95: True, 2.05: True, 2.15: False, 2.2: False, 2.25: False, 2.35: True, 2.45: True}
    # sites with no device are missing, with NaN rows
    f = sync.synchronize(imus, None, time_s=T0 + 1.0)
    assert f.imu_present.tolist() == [True, False, False, False, False, False]
    assert np.isnan(f.imu_quat_wxyz[1:]).all() and not f.camera_present


def test_offline_pairing_matches_the_live_synchroniser() -> None:
    rng = np.random.default_rng(2)
    devices, _ = make_devices(rng)
    sync = Synchronizer()
    frame_times = T0 + 0.25 + np.arange(100) / 30.0
    live = [sync.synchronize(devices, None, time_s=t) for t in frame_times]
    tracks = {}
    for site, dev in devices.items():
        host, device_t, quats, acc = imu_arrays(dev.buffer.snapshot())
        tracks[site] = (sample_times_offline(host, device_t, latency_s=LATENCY_S), quats, acc)
    quats, acc, present = sync_offline(frame_times, tracks)
    assert quats.shape == (100, 6, 4) and acc.shape == (100, 6, 3)
    np.testing.assert_array_equal(present, np.array([f.imu_present for f in live]))
    ok = present
    live_q = np.array([f.imu_quat_wxyz for f in live])
    assert quat_angle(quats[ok], live_q[ok]).max() < 1e-3
    truth = np.stack([motion(int(s), frame_times)[0] for s in ImuSite], axis=1)
    outside_burst = (frame_times < T0 + 1.95) | (frame_times > T0 + 2.35)  # held, not interpolated, in the burst
    ok = present & outside_burst[:, None]
    assert quat_angle(quats[ok], truth[ok]).max() < 1e-3


def test_pair_track_holds_the_nearest_sample_and_checks_its_input() -> None:
    times = np.array([0.0, 1 / 60, 2 / 60, 3 / 60])
    quats = quat_from_rotvec(np.outer(times, [0.0, OMEGA_RPS, 0.0]))
    acc = np.outer(times, [1.0, 0.0, 0.0])
    query = np.array([-0.05, -0.15, 0.025, 3 / 60 + 0.05, 3 / 60 + 0.15])
    p = pair_track(times, quats, acc, query, max_staleness_s=0.1)
    assert p.present.tolist() == [True, False, True, True, False]
    assert quat_angle(p.quat_wxyz[0], quats[0]) < 1e-12  # held first sample
    assert quat_angle(p.quat_wxyz[3], quats[3]) < 1e-12  # held last sample
    assert quat_angle(p.quat_wxyz[2], quat_from_rotvec(np.array([0.0, OMEGA_RPS * 0.025, 0.0]))) < 1e-12
    np.testing.assert_allclose(p.acc_free_mps2[2], [0.025, 0.0, 0.0], atol=1e-12)
    assert (p.before[2], p.after[2]) == (1, 2)
    with pytest.raises(InputShapeError, match="sorted"):
        pair_track(times[::-1], quats, acc, query)
    with pytest.raises(InputShapeError, match="x 4"):
        pair_track(times, quats[:, :3], acc, query)


def test_imus_ready_waits_for_a_sample_after_the_frame_but_not_for_dead_sensors() -> None:
    rng = np.random.default_rng(3)
    samples, t_true = recording(0, rng, drop_rate=0.0, burst=None, seconds=1.0)
    live, dead = ReplayImu("live", DeviceConfig(latency_s=LATENCY_S)), ReplayImu("dead", DeviceConfig(latency_s=LATENCY_S))
    dead._deliver(samples[:5])  # stopped streaming long ago
    live._deliver(samples[:30])
    sync = Synchronizer()
    imus = {ImuSite.HEAD: live, ImuSite.PELVIS: dead}
    t_frame = t_true[29] + 0.005  # after the newest live sample
    assert not sync.imus_ready(imus, t_frame)
    live._deliver(samples[30:31])
    assert sync.imus_ready(imus, t_frame)
    assert sync.synchronize(imus, None, time_s=t_frame).imu_present.tolist() == [False, False, False, False, True, False]


def test_a_device_clock_that_restarts_on_reconnect_falls_back_to_arrival_times() -> None:
    rng = np.random.default_rng(4)
    first, _ = recording(1, rng, drop_rate=0.0, burst=None, seconds=2.0, offset_s=800.0)
    dev = ReplayImu("imu1", DeviceConfig(latency_s=LATENCY_S))
    dev._deliver(first)
    # reconnected after 0.5 s: the device clock starts again from zero
    t_true = T0 + 2.5 + np.arange(60) / 60.0
    q, acc = motion(1, t_true)
    again = [ImuSample("imu1", float(t + LATENCY_S), float(t - T0 - 2.5), tuple(q[k]), tuple(acc[k]), seq=k)
             for k, t in enumerate(t_true)]
    dev._deliver(again)
    sync = Synchronizer()
    f = sync.synchronize({ImuSite.RIGHT_FOREARM: dev}, None, time_s=T0 + 3.0)
    assert f.imu_present[ImuSite.RIGHT_FOREARM]
    # placed by arrival (minus the known latency): exact here, as delivery had no jitter
    assert quat_angle(f.imu_quat_wxyz[ImuSite.RIGHT_FOREARM], motion(1, np.array(T0 + 3.0))[0]) < 1e-6


def grid_imu(placement_s: float, use_arrival: bool, n: int = 30) -> tuple[ReplayImu, np.ndarray]:
    """A 60 Hz IMU whose samples land ``placement_s`` after their true instants on the host
    clock (a constant transport delay; by device clock, or by arrival with a configured latency
    that is ``placement_s`` short). Returns (device with n samples delivered, true instants)."""
    t_true = T0 + np.arange(n + 1) / 60.0
    q, acc = motion(0, t_true)
    delay = LATENCY_S + max(placement_s, 0.0) if not use_arrival else LATENCY_S + placement_s
    samples = [ImuSample("grid", float(t + delay), float(t - T0 + 300.0) if not use_arrival else None,
                         tuple(q[k]), tuple(acc[k]), seq=k) for k, t in enumerate(t_true)]
    dev = ReplayImu("grid", DeviceConfig(latency_s=LATENCY_S))
    dev._deliver(samples[:n])
    dev.pending = samples[n:]  # the next sample, still in flight
    return dev, t_true


def test_a_frame_on_the_imu_grid_takes_its_own_sample_and_is_dated_from_its_capture() -> None:
    # the demo rig's case: frame k is captured at IMU sample k's instant; by the device clock the
    # sample lands 0.3 ms after the frame instant (the minimum filter's floor)
    dev, t_true = grid_imu(0.0003, use_arrival=False)
    imus = {ImuSite.LEFT_FOREARM: dev}
    t = float(t_true[29])
    snapped = Synchronizer().synchronize(imus, frame_at(t))
    q_true = motion(0, np.array(t))[0]
    assert quat_angle(snapped.imu_quat_wxyz[0], q_true) < 1e-9  # exactly the sample at the frame's instant
    np.testing.assert_allclose(snapped.imu_acc_free_mps2[0], motion(0, np.array(t))[1], atol=1e-9)
    assert snapped.sample_host_time_s == t  # no input older than the frame: latency counts from the capture
    # always interpolating mixes in the previous sample (weight under 2 %) and dates the pose from its arrival
    mixed = Synchronizer(SyncConfig(snap_s=0.0)).synchronize(imus, frame_at(t))
    assert 0 < quat_angle(mixed.imu_quat_wxyz[0], q_true) < 0.02 * OMEGA_RPS / 60
    assert mixed.sample_host_time_s == pytest.approx(t_true[28] + LATENCY_S + 0.0003, abs=1e-9)
    assert t - mixed.sample_host_time_s > 0.012


def test_a_sample_just_before_the_frame_needs_no_wait_for_the_next_one() -> None:
    # placed by arrival 0.4 ms before the frame instant (the transport beat the configured latency)
    dev, t_true = grid_imu(-0.0004, use_arrival=True)
    imus = {ImuSite.HEAD: dev}
    t = float(t_true[29])
    cfg = SyncConfig(use_device_clock=False)
    assert Synchronizer(cfg).imus_ready(imus, t)
    f = Synchronizer(cfg).synchronize(imus, frame_at(t))
    assert quat_angle(f.imu_quat_wxyz[ImuSite.HEAD], motion(0, np.array(t))[0]) < 1e-9
    # without snapping the frame waits for sample 30, 16.7 ms later
    strict = Synchronizer(SyncConfig(use_device_clock=False, snap_s=0.0))
    assert not strict.imus_ready(imus, t)
    dev._deliver(dev.pending)
    assert strict.imus_ready(imus, t)
    # a frame 2 ms after a sample is interpolated (samples sit 0.4 ms early on the host clock here)
    # and waits for the sample after it
    far = float(t_true[29]) + 0.002
    assert not Synchronizer(cfg).imus_ready({ImuSite.HEAD: grid_imu(-0.0004, use_arrival=True)[0]}, far)
    assert quat_angle(Synchronizer(cfg).synchronize(imus, frame_at(far)).imu_quat_wxyz[ImuSite.HEAD],
                      motion(0, np.array(far + 0.0004))[0]) < 1e-12


def test_pair_track_snaps_like_the_live_path_and_snap_s_is_checked() -> None:
    times = np.array([0.0, 1 / 60, 2 / 60, 3 / 60])
    quats = quat_from_rotvec(np.outer(times, [0.0, OMEGA_RPS, 0.0]))
    acc = np.outer(times, [1.0, 0.0, 0.0])
    query = np.array([1 / 60 - 0.0005, 1 / 60 + 0.0008, 1 / 60 + 0.005, 2 / 60 - 0.002])
    p = pair_track(times, quats, acc, query, max_staleness_s=0.1, snap_s=0.001)
    assert quat_angle(p.quat_wxyz[0], quats[1]) < 1e-12 and quat_angle(p.quat_wxyz[1], quats[1]) < 1e-12
    np.testing.assert_allclose(p.acc_free_mps2[:2], acc[[1, 1]], atol=1e-12)
    assert p.before.tolist()[:2] == [-1, 1] and p.after.tolist()[:2] == [1, -1]  # the one sample used
    for k in (2, 3):  # 5 ms and 2 ms away: interpolated
        assert quat_angle(p.quat_wxyz[k], quat_from_rotvec(np.array([0.0, OMEGA_RPS * query[k], 0.0]))) < 1e-12
    assert (p.before[2], p.after[2]) == (1, 2)
    exact = pair_track(times, quats, acc, query, max_staleness_s=0.1, snap_s=0.0)
    assert quat_angle(exact.quat_wxyz[0], quat_from_rotvec(np.array([0.0, OMEGA_RPS * query[0], 0.0]))) < 1e-12
    with pytest.raises(ValueError, match="snap_s"):
        SyncConfig(snap_s=-0.001)
    with pytest.raises(ValueError, match="snap_s"):
        SyncConfig(max_staleness_s=0.05, snap_s=0.05)
