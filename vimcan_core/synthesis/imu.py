"""Synthetic IMU signals at the six sites, and the T-pose calibration that undoes the mounting.

A sensor strapped to a bone reads (world from sensor, wxyz)::

    q_ws(t) = q_heading(t) * q_wb(t + dt) * q_bs * q_white(t)

with ``q_wb`` the bone orientation (identity in the T-pose), ``q_bs`` a random
sensor-to-bone mounting rotation, ``q_heading`` a slow heading error about world +Y,
``q_white`` per-sample noise and ``dt`` timing jitter. The T-pose calibration estimates the
mounting from a T-pose sample (bone = identity there) and removes it:

    q_bs_est = q_bs * q_resid        (q_resid: the residual mounting error of the preset)
    q_wb_est(t) = q_ws(t) * conj(q_bs_est)

With the ``clean`` preset ``q_wb_est == q_wb`` exactly. Free acceleration (world frame,
gravity removed, m/s^2) is the second finite difference of the site position, the middle
of the bone.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from vimcan_core.rotations import quat_conj, quat_from_rotvec, quat_mul, quat_normalize, quat_slerp, random_quat, yaw_quat
from vimcan_core.skeleton import IMU_CHILD_JOINT, IMU_JOINT, NUM_IMUS
from vimcan_core.synthesis.noise import ImuNoise


@dataclass(frozen=True)
class ImuSignals:
    """What the six simulated sensors report, T frames."""

    quats_world_sensor: np.ndarray  # T x 6 x 4, wxyz, sensor to world (raw, with the mounting rotation)
    acc_free_world_mps2: np.ndarray  # T x 6 x 3, world frame, gravity removed
    mounting_bone_sensor: np.ndarray  # 6 x 4, the true sensor-to-bone rotation
    calibration_bone_sensor: np.ndarray  # 6 x 4, the mounting as a T-pose calibration estimates it


def random_small_rotation(rng: np.random.Generator, shape: tuple[int, ...], rms_deg: float) -> np.ndarray:
    """shape x 4 rotations whose angle has the given RMS (isotropic Gaussian rotation vectors)."""
    if rms_deg <= 0:
        return np.broadcast_to(np.array([1.0, 0.0, 0.0, 0.0]), shape + (4,)).copy()
    rv = rng.normal(scale=np.radians(rms_deg) / np.sqrt(3.0), size=shape + (3,))
    return quat_from_rotvec(rv)


def sample_at(quats: np.ndarray, frac_index: np.ndarray) -> np.ndarray:
    """Slerp T x K x 4 orientations at fractional frame indices (T x K), clamped to the clip."""
    n = quats.shape[0]
    f = np.clip(frac_index, 0.0, n - 1.0)
    i0 = np.floor(f).astype(int)
    i1 = np.minimum(i0 + 1, n - 1)
    k = np.arange(quats.shape[1])[None, :]
    return quat_slerp(quats[i0, k], quats[i1, k], f - i0)


def site_positions(joints_world_m: np.ndarray) -> np.ndarray:
    """T x 17 x 3 -> T x 6 x 3: the middle of each IMU's bone."""
    return 0.5 * (joints_world_m[:, list(IMU_JOINT)] + joints_world_m[:, list(IMU_CHILD_JOINT)])


def free_acceleration(positions_m: np.ndarray, fps: float) -> np.ndarray:
    """T x K x 3 positions -> T x K x 3 accelerations (m/s^2), central second differences,
    the end values repeated."""
    acc = np.zeros_like(positions_m)
    if positions_m.shape[0] >= 3:
        acc[1:-1] = (positions_m[2:] - 2 * positions_m[1:-1] + positions_m[:-2]) * fps * fps
        acc[0], acc[-1] = acc[1], acc[-2]
    return acc


def heading_drift_rad(rng: np.random.Generator, num_frames: int, fps: float, noise: ImuNoise) -> np.ndarray:
    """T x 6 slow heading errors, |error| <= heading_drift_max_deg."""
    if noise.heading_drift_max_deg <= 0:
        return np.zeros((num_frames, NUM_IMUS))
    t = np.arange(num_frames)[:, None] / fps
    amp = rng.uniform(0.0, np.radians(noise.heading_drift_max_deg), size=(1, NUM_IMUS))
    f = rng.uniform(*noise.heading_drift_hz, size=(2, NUM_IMUS))
    ph = rng.uniform(0, 2 * np.pi, size=(2, NUM_IMUS))
    return amp * 0.5 * (np.sin(2 * np.pi * f[0] * t + ph[0]) + np.sin(2 * np.pi * f[1] * t + ph[1]))


def simulate_imus(
    bone_quats: np.ndarray, joints_world_m: np.ndarray, fps: float, rng: np.random.Generator, noise: ImuNoise
) -> ImuSignals:
    """Raw sensor readings for T x 6 x 4 bone orientations (world from bone) and T x 17 x 3 joints."""
    n = bone_quats.shape[0]
    if noise.timing_jitter_ms > 0 and n > 1:
        dt = np.clip(rng.normal(scale=noise.timing_jitter_ms * 1e-3 * fps, size=(n, NUM_IMUS)), -1.0, 1.0)
        q_wb = sample_at(bone_quats, np.arange(n)[:, None] + dt)
    else:
        q_wb = bone_quats
    mount = random_quat(rng, (NUM_IMUS,))
    heading = yaw_quat(heading_drift_rad(rng, n, fps, noise))  # T x 6 x 4
    white = random_small_rotation(rng, (n, NUM_IMUS), noise.white_deg)
    q_ws = quat_mul(heading, quat_mul(quat_mul(q_wb, mount), white))
    resid = random_small_rotation(rng, (NUM_IMUS,), noise.mounting_residual_deg)
    acc = free_acceleration(site_positions(joints_world_m), fps)
    if noise.acc_noise_mps2 > 0:
        acc = acc + rng.normal(scale=noise.acc_noise_mps2, size=acc.shape)
    return ImuSignals(
        quats_world_sensor=quat_normalize(q_ws), acc_free_world_mps2=acc, mounting_bone_sensor=mount,
        calibration_bone_sensor=quat_normalize(quat_mul(mount, resid)),
    )


def calibrated_bone_quats(signals: ImuSignals) -> np.ndarray:
    """Undo the (estimated) mounting: T x 6 x 4 bone orientations, world from bone."""
    return quat_normalize(quat_mul(signals.quats_world_sensor, quat_conj(signals.calibration_bone_sensor)[None]))


def noisy_bone_quats(
    bone_quats: np.ndarray, joints_world_m: np.ndarray, fps: float, rng: np.random.Generator, noise: ImuNoise
) -> np.ndarray:
    """Bone orientations as the studio would see them after calibration (T x 6 x 4)."""
    return calibrated_bone_quats(simulate_imus(bone_quats, joints_world_m, fps, rng, noise))
