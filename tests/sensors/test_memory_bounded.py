"""The live path keeps no per-frame Python objects: a guard against slow leaks in long sessions.

Six IMUs stream 60 Hz samples (with device timestamps, so the clock estimators work too) into
their bounded buffers while the synchroniser pairs a 30 Hz camera with them, as the pipeline
thread does. Once every buffer and window is full, thousands more frames must not grow the
Python heap (measured with ``tracemalloc``): a leak of a single small object per frame would
add far more than the bound.
"""

from __future__ import annotations

import gc
import tracemalloc

import numpy as np
from replay_imu import ReplayImu

from sensors.device import DeviceConfig
from sensors.samples import ImuSample, KeypointFrame
from sensors.sync import SyncConfig, Synchronizer
from vimcan_core.skeleton import ImuSite

IMU_HZ = 60.0
CAMERA_HZ = 30.0
BUFFER_CAPACITY = 256  # samples per device: full after about 4 s of stream



def stream(devices: dict[ImuSite, ReplayImu], sync: Synchronizer, first_frame: int, frames: int) -> None:
    """Frames ``first_frame``.. at 30 Hz, each preceded by the two 60 Hz samples of every IMU up to it."""
    kp_px = np.full((17, 2), 320.0)  # 17 x 2
    conf = np.ones(17)
    for k in range(first_frame, first_frame + frames):
        t_s = 1000.0 + k / CAMERA_HZ
        for site, dev in devices.items():
            samples = []
            for j in (2 * k - 1, 2 * k):
                t_sample_s = 1000.0 + j / IMU_HZ
                angle_rad = 0.01 * j + int(site)
                samples.append(ImuSample(device_id=dev.device_id, host_time_s=t_sample_s + 0.004,
                                         device_time_s=t_sample_s - 900.0 + int(site),
                                         quat_wxyz=(float(np.cos(angle_rad)), float(np.sin(angle_rad)), 0.0, 0.0),
                                         acc_free_mps2=(0.1, 0.2, 0.3), seq=j & 0xFFFF))
            dev._deliver(samples)
        frame = sync.synchronize(devices, KeypointFrame("cam", t_s, None, kp_px, conf, 640, 480))
        assert frame.imu_present.all(), f"frame {k}: IMUs missing {np.flatnonzero(~frame.imu_present)}"
        if k % 30 == 0:
            for dev in devices.values():
                dev.stats()  # trims the device's rate window, as the GUI's polling does


def test_synchroniser_and_device_buffers_do_not_grow_once_full() -> None:
    devices = {site: ReplayImu(f"imu{int(site)}", DeviceConfig(buffer_capacity=BUFFER_CAPACITY, latency_s=0.004))
               for site in ImuSite}
    sync = Synchronizer(SyncConfig(history=BUFFER_CAPACITY))
    warmup_frames = 3 * BUFFER_CAPACITY  # 1.5 x the buffer's length in IMU samples: everything is full
    measured_frames = 3000
    # trace from the start: samples made before tracing would leave the buffers untraced and
    # their replacements would read as growth
    tracemalloc.start()
    try:
        stream(devices, sync, 1, warmup_frames)
        gc.collect()
        before_b, _ = tracemalloc.get_traced_memory()
        stream(devices, sync, 1 + warmup_frames, measured_frames)
        gc.collect()
        after_b, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    growth_b = after_b - before_b
    # about 0.2 KB when nothing leaks; one float kept per frame (24 B + an 8 B list slot) would be 96 KB
    assert growth_b < 48 * 1024, f"the live path's heap grew by {growth_b / 1024:.1f} KB over {measured_frames} frames"
    assert all(len(d.buffer) == BUFFER_CAPACITY for d in devices.values())
    assert all(d.buffer.total_pushed == 2 * (warmup_frames + measured_frames) for d in devices.values())
