"""TakeRecorder: frames and raw samples on disk, flushing, dropped sensors, full disk,
vanished folder, and a killed writer recovered up to its last flush.

The only simulated layer is the hardware: ``SimImu`` is a ``Device`` whose ``_poll`` makes
samples (and can be "unplugged"); frames come as ``(SyncedFrame, PoseFrame)`` pairs computed
with forward kinematics, as the pose stage would send them.
"""

from __future__ import annotations

import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from sensors.device import Device, DeviceConfig, DeviceState
from sensors.recording import RecorderConfig, RecorderState, TakeRecorder
from sensors.samples import ImuSample, PoseFrame, SyncedFrame
from vimcan_core.bvh.reader import END_SITE_SUFFIX, read_bvh
from vimcan_core.errors import DeviceLost, TakeError
from vimcan_core.kinematics import forward_kinematics
from vimcan_core.rotations import quat_from_rotvec
from vimcan_core.skeleton import IMU_JOINT, JOINT_NAMES, PARENTS, default_rest_pose
from vimcan_core.take import RawKind, TakeStatus, read_meta, read_poses, read_raw, recover_take

ROOT = Path(__file__).resolve().parents[2]


class SimImu(Device):
    """A simulated IMU at ``rate_hz``: the hardware layer. ``unplugged`` makes it vanish."""

    def __init__(self, device_id: str, rate_hz: float = 100.0) -> None:
        super().__init__(device_id, DeviceConfig(reconnect_initial_s=0.05, reconnect_max_s=0.1, stall_after_s=0.3))
        self.rate_hz = rate_hz
        self.unplugged = threading.Event()
        self._seq = 0

    def _connect(self) -> None:
        if self.unplugged.is_set():
            raise DeviceLost(f"{self.device_id}: not found")

    def _poll(self):
        time.sleep(1.0 / self.rate_hz)
        if self.unplugged.is_set():
            raise DeviceLost(f"{self.device_id}: unplugged")
        self._seq += 1
        now = time.monotonic()
        a = 0.01 * self._seq
        return [ImuSample(self.device_id, now, self._seq / self.rate_hz, (np.cos(a), 0.0, np.sin(a), 0.0), (0.1, 0.2, 0.3), None, self._seq)]

    def _disconnect(self) -> None:
        pass


def make_frames(n: int, t0: float, missing: tuple[int, int, int] | None = None, seed: int = 0) -> list[tuple[SyncedFrame, PoseFrame]]:
    """n frames at 30 fps from t0: FK motion, all inputs present except ``missing`` (site, from, to)."""
    rng = np.random.default_rng(seed)
    t = np.arange(n) / 30.0
    rotvec = 0.5 * np.sin(2 * np.pi * rng.uniform(0.2, 0.6, (17, 3)) * t[:, None, None] + rng.uniform(0, 6, (17, 3)))
    root = np.stack((0.5 * np.sin(t), 0.95 + 0.02 * np.cos(3 * t), 0.2 * t), axis=-1)
    pos, glob = forward_kinematics(quat_from_rotvec(rotvec), root, default_rest_pose())
    out = []
    for i in range(n):
        present = np.ones(6, dtype=bool)
        if missing is not None and missing[1] <= i < missing[2]:
            present[missing[0]] = False
        quats = glob[i, list(IMU_JOINT)]
        sensor_q = np.where(present[:, None], quats, np.nan)
        kp = 300 + 100 * pos[i, :, :2]
        synced = SyncedFrame(i, t0 + t[i], kp, np.full(17, 0.9), (640, 480), sensor_q, np.zeros((6, 3)), present, t0 + t[i])
        pose = PoseFrame(i, t0 + t[i], pos[i] - pos[i, :1], root[i], "test motion", True, present, 1.0, t0 + t[i],
                         np.where(present[:, None], quats, np.nan))
        out.append((synced, pose))
    return out


def _joints_from_bvh(path: Path) -> np.ndarray:
    m = read_bvh(path)
    pos = m.global_positions()
    idx = [m.index(n) if n in m.names else m.index(JOINT_NAMES[PARENTS[j]] + END_SITE_SUFFIX) for j, n in enumerate(JOINT_NAMES)]
    return pos[:, idx]


def test_records_frames_and_raw_samples_then_writes_a_bvh(tmp_path: Path) -> None:
    imus = [SimImu("imu-a"), SimImu("imu-b")]
    for d in imus:
        d.start()
    q: queue.Queue = queue.Queue(maxsize=256)
    folder = tmp_path / "take"
    rec = TakeRecorder(folder, q, imus, sites={"imu-a": "left_forearm"})
    rec.start()
    frames = make_frames(90, rec.origin_s + 0.5)
    for f in frames:
        q.put(f, timeout=5)
    time.sleep(0.4)
    before_stop = {d.device_id: d.buffer.total_pushed for d in imus}
    meta = rec.stop()
    for d in imus:
        d.stop()
    assert rec.state is RecorderState.STOPPED and rec.error is None
    assert meta.status is TakeStatus.COMPLETE and meta.frames == 90 and meta.frames_missed == 0
    assert meta.duration_s == pytest.approx(89 / 30, abs=1e-6)
    assert read_meta(folder) == meta
    assert {d.device_id: d.site for d in meta.devices} == {"imu-a": "left_forearm", "imu-b": None}

    poses = read_poses(folder / "poses.csv")
    want = np.stack([p.joints_world_m for _, p in frames])
    np.testing.assert_allclose(poses.joints_m, want, atol=1e-8)
    np.testing.assert_allclose(poses.time_s, 0.5 + np.arange(90) / 30, atol=1e-6)
    np.testing.assert_array_equal(poses.frame_index, np.arange(90))

    raw = read_raw(folder / "raw.csv")
    for d in imus:
        rows = raw.rows(RawKind.IMU, d.device_id)
        n = int(rows.sum())
        assert 10 < n and n >= before_stop[d.device_id] - d.buffer.total_pushed + 10
        seq = raw.column("seq")[rows]
        assert np.all(np.diff(seq) == 1)  # every sample, in order, none lost
        np.testing.assert_allclose(raw.column("acc_y_mps2")[rows], 0.2)
        assert np.all(np.diff(raw.time_s[rows]) >= 0)

    world = np.stack([p.joints_world_m + p.root_world_m for _, p in frames])
    err_mm = 1000 * np.linalg.norm(_joints_from_bvh(folder / "take.bvh") - world, axis=-1)
    assert err_mm.max() < 1.0, err_mm.max()


def test_flushes_while_recording_so_another_reader_sees_every_frame(tmp_path: Path) -> None:
    q: queue.Queue = queue.Queue(maxsize=256)
    rec = TakeRecorder(tmp_path / "take", q, config=RecorderConfig(flush_interval_s=0.5))
    rec.start()
    for f in make_frames(45, rec.origin_s):
        q.put(f, timeout=5)
    deadline = time.monotonic() + 1.5  # flushed within a second (plus scheduling slack on a busy machine)
    seen = 0
    while time.monotonic() < deadline and seen < 45:
        time.sleep(0.1)
        seen = read_poses(tmp_path / "take" / "poses.csv").num_frames
    assert seen == 45
    assert read_meta(tmp_path / "take").status is TakeStatus.RECORDING
    rec.stop()


def test_unplugged_sensor_is_marked_not_filled(tmp_path: Path) -> None:
    imu = SimImu("imu-lost")
    imu.start()
    q: queue.Queue = queue.Queue(maxsize=256)
    rec = TakeRecorder(tmp_path / "take", q, [imu], config=RecorderConfig(raw_interval_s=0.02))
    rec.start()
    frames = make_frames(60, rec.origin_s, missing=(0, 20, 40))
    time.sleep(0.3)
    imu.unplugged.set()
    deadline = time.monotonic() + 3
    while imu.state not in (DeviceState.DISCONNECTED, DeviceState.RECONNECTING) and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.3)
    imu.unplugged.clear()
    while imu.state is not DeviceState.STREAMING and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.3)
    for f in frames:
        q.put(f, timeout=5)
    meta = rec.stop()
    imu.stop()
    poses = read_poses(tmp_path / "take" / "poses.csv")
    assert not poses.imu_present[20:40, 0].any() and poses.imu_present[:20, 0].all() and poses.imu_present[40:, 0].all()
    assert np.isnan(poses.bone_quats_world[20:40, 0]).all()
    assert np.isfinite(poses.bone_quats_world[20:40, 1:]).all()
    raw = read_raw(tmp_path / "take" / "raw.csv")
    events = list(raw.event[raw.rows(RawKind.STATE, "imu-lost")])
    # the device may report its first "streaming" after the recorder started listening; what matters
    # is that the loss is recorded and is followed by the return to streaming
    lost = [i for i, e in enumerate(events) if e in ("disconnected", "reconnecting")]
    assert lost and "streaming" not in events[lost[0]:lost[-1]] and events[-1] == "streaming", events
    (dev,) = meta.devices
    assert dev.gaps >= 1 and dev.reconnects >= 1
    # the samples before and after the gap are there, the gap is not filled
    t_imu = raw.time_s[raw.rows(RawKind.IMU, "imu-lost")]
    assert np.diff(t_imu).max() > 0.25


def _mount_tmpfs(path: Path, size: str) -> None:
    path.mkdir(parents=True, exist_ok=True)
    if sys.platform != "linux" or os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a small tmpfs needs root on Linux")
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()}")


def test_full_disk_stops_with_a_clear_error_and_leaves_a_readable_take(tmp_path: Path) -> None:
    disk = tmp_path / "small-disk"
    _mount_tmpfs(disk, "512k")
    try:
        errors: list[TakeError] = []
        q: queue.Queue = queue.Queue(maxsize=64)
        rec = TakeRecorder(disk / "take", q, config=RecorderConfig(flush_interval_s=0.05), on_error=errors.append)
        rec.start()
        frames = make_frames(3000, rec.origin_s)  # ~3 MB of CSV: cannot fit
        for f in frames:
            if rec.state is not RecorderState.RECORDING:
                break
            try:
                q.put(f, timeout=0.5)
            except queue.Full:
                pass
        assert rec.wait(10)
        assert rec.state is RecorderState.FAILED
        assert isinstance(rec.error, TakeError) and errors == [rec.error]
        assert "disk full" in str(rec.error) and str(disk / "take") in str(rec.error)
        poses = read_poses(disk / "take" / "poses.csv")  # readable as it is
        assert poses.num_frames > 100
        want = np.stack([p.joints_world_m for _, p in frames[: poses.num_frames]])
        np.testing.assert_allclose(poses.joints_m, want, atol=1e-8)  # every line kept is a true frame, in order
        # the user copies it off the full disk and recovers it there
        shutil.copytree(disk / "take", tmp_path / "copied")
        meta = recover_take(tmp_path / "copied")
        assert meta.frames == poses.num_frames and meta.status in (TakeStatus.RECOVERED, TakeStatus.FAILED)
        assert read_bvh(tmp_path / "copied" / "take.bvh").num_frames == poses.num_frames
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


def test_vanished_folder_stops_with_a_clear_error(tmp_path: Path) -> None:
    q: queue.Queue = queue.Queue(maxsize=256)
    rec = TakeRecorder(tmp_path / "take", q, config=RecorderConfig(flush_interval_s=0.05))
    rec.start()
    for f in make_frames(10, rec.origin_s):
        q.put(f)
    time.sleep(0.2)
    shutil.rmtree(tmp_path / "take")
    assert rec.wait(5)
    assert rec.state is RecorderState.FAILED
    assert "vanished" in str(rec.error) and str(tmp_path / "take") in str(rec.error)
    meta = rec.stop()
    assert meta.status is TakeStatus.FAILED


_CHILD = r"""
import sys, time, queue
sys.path.insert(0, {tests!r})
from test_recording import make_frames
from sensors.recording import TakeRecorder, RecorderConfig
q = queue.Queue(maxsize=256)
rec = TakeRecorder({folder!r}, q, config=RecorderConfig(flush_interval_s=0.5))
rec.start()
frames = make_frames(3000, rec.origin_s)
for i, f in enumerate(frames):
    q.put(f)
    print(i + 1, flush=True)
    time.sleep(1 / 30)
"""


def test_killed_writer_is_recovered_up_to_the_last_flush(tmp_path: Path) -> None:
    folder = tmp_path / "take"
    code = _CHILD.format(tests=str(Path(__file__).parent), folder=str(folder))
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    put = 0
    try:
        deadline = time.monotonic() + 30
        while put < 90 and time.monotonic() < deadline:  # about three seconds of recording
            line = proc.stdout.readline()
            if not line:
                break
            put = int(line)
        sent_at_kill = put
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    assert sent_at_kill >= 90
    assert read_meta(folder).status is TakeStatus.RECORDING  # what a crash leaves
    meta = recover_take(folder)
    assert meta.status is TakeStatus.RECOVERED
    # everything handed over up to a second (flush interval 0.5 s + slack) before the kill survived
    assert meta.frames >= sent_at_kill - 30, (meta.frames, sent_at_kill)
    poses = read_poses(folder / "poses.csv")
    np.testing.assert_array_equal(poses.frame_index, np.arange(meta.frames))
    assert read_bvh(folder / "take.bvh").num_frames == meta.frames


def test_samples_overwritten_before_the_recorder_read_them_are_counted_and_marked(tmp_path: Path) -> None:
    imu = SimImu("imu-fast", rate_hz=400.0)
    imu.config = DeviceConfig(buffer_capacity=4)
    imu.buffer = type(imu.buffer)(4)
    imu.start()
    q: queue.Queue = queue.Queue(maxsize=8)
    rec = TakeRecorder(tmp_path / "take", q, [imu], config=RecorderConfig(raw_interval_s=0.3))
    rec.start()
    time.sleep(1.0)
    meta = rec.stop()
    imu.stop()
    raw = read_raw(tmp_path / "take" / "raw.csv")
    lost_rows = raw.rows(RawKind.LOST, "imu-fast")
    (dev,) = meta.devices
    assert dev.lost > 0 and raw.lost[lost_rows].sum() == dev.lost
    seq = raw.column("seq")[raw.rows(RawKind.IMU, "imu-fast")]
    assert dev.samples == len(seq)
    assert np.diff(seq).max() > 1  # the gaps are visible in the sequence numbers, not filled
