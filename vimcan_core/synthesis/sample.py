"""One model input/target sample from a piece of motion.

``synthesize(joints_world_m, bone_quats, fps, rng, ...)`` places a random webcam, projects
the joints into 2D detections, simulates and calibrates the IMUs, and expresses everything
the way the model takes it (see the model conventions in ``vimcan_core.model``):

* ``keypoints``: T x 17 x 3, normalised (x, y) + confidence;
* ``quats``: T x 6 x 4, wxyz, bone orientations in the camera frame
  (q_cam_from_bone = q_cam_from_world * q_world_from_bone);
* ``imu_valid``: T x 6 bool;
* ``target``: T x 17 x 3 root-relative joints in the camera frame, metres.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from vimcan_core.camera import PinholeCamera
from vimcan_core.rotations import quat_mul, quat_normalize
from vimcan_core.skeleton import NUM_IMUS
from vimcan_core.synthesis.augment import mirror, random_bone_factors, scale_bones
from vimcan_core.synthesis.imu import noisy_bone_quats
from vimcan_core.synthesis.noise import IMU_PRESETS, KEYPOINT_PRESETS, NoisePreset
from vimcan_core.synthesis.webcam import WebcamConfig, random_webcam, synthesize_keypoints


@dataclass(frozen=True)
class AugmentConfig:
    mirror_prob: float = 0.5  # probability of a left/right mirror
    bone_scale: tuple[float, float] = (0.85, 1.15)  # overall body-size factor
    bone_jitter: float = 0.05  # per-bone length variation (+-, left/right symmetric)
    imu_dropout_prob: float = 0.0  # probability that a sensor is missing for the whole sample


NO_AUGMENT = AugmentConfig(mirror_prob=0.0, bone_scale=(1.0, 1.0), bone_jitter=0.0)


@dataclass(frozen=True)
class Sample:
    keypoints: np.ndarray  # T x 17 x 3 (x_norm, y_norm, conf)
    quats: np.ndarray  # T x 6 x 4, camera from bone
    imu_valid: np.ndarray  # T x 6 bool
    target: np.ndarray  # T x 17 x 3, root-relative, camera frame, metres
    camera: PinholeCamera


def synthesize(
    joints_world_m: np.ndarray,
    bone_quats: np.ndarray,
    fps: float,
    rng: np.random.Generator,
    noise: NoisePreset = NoisePreset.CLEAN,
    augment: AugmentConfig = NO_AUGMENT,
    webcam: WebcamConfig = WebcamConfig(),
) -> Sample:
    """Model inputs and targets for T frames of world motion (T x 17 x 3, T x 6 x 4)."""
    joints, bones = joints_world_m, bone_quats
    if augment.mirror_prob > 0 and rng.random() < augment.mirror_prob:
        joints, bones = mirror(joints, bones)
    if augment.bone_scale != (1.0, 1.0) or augment.bone_jitter > 0:
        joints = scale_bones(joints, random_bone_factors(rng, augment.bone_scale, augment.bone_jitter))
    cam = random_webcam(rng, joints, webcam)
    kp = synthesize_keypoints(cam, joints, rng, KEYPOINT_PRESETS[noise])
    bones_meas = noisy_bone_quats(bones, joints, fps, rng, IMU_PRESETS[noise])
    q_cw = np.asarray(cam.quat_cam_from_world)
    quats = quat_normalize(quat_mul(q_cw, bones_meas))
    valid = np.ones((joints.shape[0], NUM_IMUS), dtype=bool)
    if augment.imu_dropout_prob > 0:
        valid &= ~(rng.random(NUM_IMUS) < augment.imu_dropout_prob)[None]
    joints_cam = cam.world_to_camera(joints)
    target = joints_cam - joints_cam[:, :1]
    return Sample(keypoints=kp, quats=quats, imu_valid=valid, target=target, camera=cam)
