"""The H36M 17-joint skeleton, the body-part groups and the six IMU sites.

This is the one place where the skeleton is defined. Everything else (model,
kinematics, BVH, drivers, views) refers to the names and index tables here.

Conventions (stated once, used everywhere; see also ``vimcan_core.rotations``):

* Joint order is the Human3.6M order used by VideoPose3D / MixSTE / VIMCAN.
* Units are metres.
* World frame: right-handed, **Y up**. In the rest pose (a T-pose) the performer
  faces **+Z** and their left side is at **+X** (the same axes as the CMU BVH
  files in ``../shared/data/cmu``).
* A joint's *bone orientation* is its global rotation relative to the T-pose:
  in the T-pose every bone orientation is the identity quaternion.
* Joint ``neck`` is H36M's "Neck/Nose" joint (the top of the neck, below the chin);
  ``head`` is the middle of the head at eye level. The training data (CMU, retargeted in
  ``vimcan_core.retarget``) and the MediaPipe mapping (``sensors.camera.mediapipe_pose``)
  both place these joints so; anything that produces keypoints must follow them.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

import numpy as np


class Joint(IntEnum):
    """Indices of the 17 H36M joints."""

    PELVIS = 0
    RIGHT_HIP = 1
    RIGHT_KNEE = 2
    RIGHT_ANKLE = 3
    LEFT_HIP = 4
    LEFT_KNEE = 5
    LEFT_ANKLE = 6
    SPINE = 7
    THORAX = 8
    NECK = 9
    HEAD = 10
    LEFT_SHOULDER = 11
    LEFT_ELBOW = 12
    LEFT_WRIST = 13
    RIGHT_SHOULDER = 14
    RIGHT_ELBOW = 15
    RIGHT_WRIST = 16


NUM_JOINTS = 17

#: snake_case joint names, used in CSV columns (``<joint>_x``) and files.
JOINT_NAMES: tuple[str, ...] = tuple(j.name.lower() for j in Joint)

#: parent index of each joint (-1 for the root); every parent precedes its children.
PARENTS: tuple[int, ...] = (-1, 0, 1, 2, 0, 4, 5, 0, 7, 8, 9, 8, 11, 12, 8, 14, 15)

#: (parent, child) pairs: the 16 bones.
BONES: tuple[tuple[int, int], ...] = tuple((p, c) for c, p in enumerate(PARENTS) if p >= 0)

LEFT_JOINTS: tuple[int, ...] = (4, 5, 6, 11, 12, 13)
RIGHT_JOINTS: tuple[int, ...] = (1, 2, 3, 14, 15, 16)
CENTER_JOINTS: tuple[int, ...] = (0, 7, 8, 9, 10)

#: index of each joint's mirror image (left <-> right), for augmentation and checks.
MIRROR: tuple[int, ...] = tuple(
    {**{l: r for l, r in zip(LEFT_JOINTS, RIGHT_JOINTS)}, **{r: l for l, r in zip(LEFT_JOINTS, RIGHT_JOINTS)}}.get(j, j)
    for j in range(NUM_JOINTS)
)

#: a mirror image reflects x -> -x (world or camera frame; the camera's principal point is the
#: image centre, so mirroring the image is this reflection of the camera frame): positions are
#: multiplied by MIRROR_POSITION_SIGN, wxyz quaternions by MIRROR_QUAT_SIGN (a rotation R
#: becomes M R M with M = diag(-1, 1, 1)), and left and right swap (MIRROR, IMU_MIRROR).
MIRROR_POSITION_SIGN: tuple[float, float, float] = (-1.0, 1.0, 1.0)
MIRROR_QUAT_SIGN: tuple[float, float, float, float] = (1.0, 1.0, -1.0, -1.0)

#: skeleton scan order for the visual Mamba: a depth-first walk from the pelvis,
#: every parent before its children (torso and head, then arms, then legs).
SKELETON_SCAN_ORDER: tuple[int, ...] = (0, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 4, 5, 6, 1, 2, 3)


class Part(IntEnum):
    """The G = 5 body-part groups of the paper (kinematic priors)."""

    TORSO = 0
    LEFT_ARM = 1
    RIGHT_ARM = 2
    LEFT_LEG = 3
    RIGHT_LEG = 4


#: joints of each of the 5 parts.
PART_JOINTS: tuple[tuple[int, ...], ...] = (
    (0, 7, 8, 9, 10),  # torso: pelvis, spine, thorax, neck, head
    (11, 12, 13),  # left arm
    (14, 15, 16),  # right arm
    (4, 5, 6),  # left leg
    (1, 2, 3),  # right leg
)

#: the G = 3 grouping of the ablation: torso, arms, legs (as unions of the 5 parts).
PARTS_3: tuple[tuple[int, ...], ...] = ((0,), (1, 2), (3, 4))


class ImuSite(IntEnum):
    """The six IMU sites, in the order of the model's inertial input (B x T x 6 x 4)."""

    LEFT_FOREARM = 0
    RIGHT_FOREARM = 1
    LEFT_LOWER_LEG = 2
    RIGHT_LOWER_LEG = 3
    HEAD = 4
    PELVIS = 5

    @classmethod
    def from_name(cls, name: str) -> "ImuSite | None":
        """The site a user's name means ("left_forearm", "Left forearm", "PELVIS"), or None."""
        return cls.__members__.get(name.strip().upper().replace(" ", "_"))


NUM_IMUS = 6
IMU_SITE_NAMES: tuple[str, ...] = tuple(s.name.lower() for s in ImuSite)

#: the joint whose bone orientation each IMU measures (the bone from this joint to its child).
IMU_JOINT: tuple[int, ...] = (
    Joint.LEFT_ELBOW,  # left forearm: elbow -> wrist
    Joint.RIGHT_ELBOW,
    Joint.LEFT_KNEE,  # left lower leg: knee -> ankle
    Joint.RIGHT_KNEE,
    Joint.NECK,  # head: neck -> head
    Joint.PELVIS,
)

#: the child joint of each IMU's bone (where the bone ends), e.g. to place the sensor mid-bone.
IMU_CHILD_JOINT: tuple[int, ...] = (
    Joint.LEFT_WRIST,
    Joint.RIGHT_WRIST,
    Joint.LEFT_ANKLE,
    Joint.RIGHT_ANKLE,
    Joint.HEAD,
    Joint.SPINE,
)

#: the body part each IMU belongs to.
IMU_PART: tuple[int, ...] = (Part.LEFT_ARM, Part.RIGHT_ARM, Part.LEFT_LEG, Part.RIGHT_LEG, Part.TORSO, Part.TORSO)

#: IMUs of each of the 5 parts (torso has two: head and pelvis).
PART_IMUS: tuple[tuple[int, ...], ...] = tuple(
    tuple(i for i in range(NUM_IMUS) if IMU_PART[i] == p) for p in range(len(PART_JOINTS))
)

#: the joint each IMU's site is mirrored onto (for left/right augmentation).
IMU_MIRROR: tuple[int, ...] = (1, 0, 3, 2, 4, 5)


#: the ankle joint's height above the floor when standing (the floor is not in the data: the
#: rest pose, the BVH skeleton, the synthetic webcam and the 3D view all place it this far down)
ANKLE_ABOVE_FLOOR_M = 0.08


@dataclass(frozen=True)
class RestPose:
    """Bone offsets of a T-pose: ``offsets_m[j]`` is joint j relative to its parent, in metres,
    in the world frame of the T-pose (Y up, facing +Z, left at +X). ``offsets_m[0]`` is the
    pelvis position above the floor."""

    offsets_m: np.ndarray  # J x 3

    def __post_init__(self) -> None:
        if self.offsets_m.shape != (NUM_JOINTS, 3):
            raise ValueError(f"RestPose offsets must be {NUM_JOINTS} x 3, got {self.offsets_m.shape}")

    def positions(self) -> np.ndarray:
        """Joint positions of the T-pose, J x 3, metres, world frame."""
        pos = np.zeros((NUM_JOINTS, 3))
        for j, p in enumerate(PARENTS):
            pos[j] = self.offsets_m[j] if p < 0 else pos[p] + self.offsets_m[j]
        return pos

    def bone_lengths(self) -> np.ndarray:
        """Length of each joint's offset from its parent, J (0 for the root), metres."""
        lengths = np.linalg.norm(self.offsets_m, axis=-1)
        lengths[0] = 0.0
        return lengths

    def height(self) -> float:
        """Floor to top of head, metres (ankles ``ANKLE_ABOVE_FLOOR_M`` above the floor)."""
        pos = self.positions()
        return float(pos[Joint.HEAD, 1] - min(pos[Joint.LEFT_ANKLE, 1], pos[Joint.RIGHT_ANKLE, 1]) + ANKLE_ABOVE_FLOOR_M)

    def scaled(self, factor: float) -> "RestPose":
        return RestPose(self.offsets_m * factor)


def default_rest_pose() -> RestPose:
    """An average adult (about 1.68 m) in a T-pose, ankles 8 cm above the floor."""
    o = np.zeros((NUM_JOINTS, 3))
    o[Joint.PELVIS] = (0.0, 0.97, 0.0)
    o[Joint.RIGHT_HIP] = (-0.10, -0.02, 0.0)
    o[Joint.RIGHT_KNEE] = (0.0, -0.43, 0.0)
    o[Joint.RIGHT_ANKLE] = (0.0, -0.44, 0.0)
    o[Joint.LEFT_HIP] = (0.10, -0.02, 0.0)
    o[Joint.LEFT_KNEE] = (0.0, -0.43, 0.0)
    o[Joint.LEFT_ANKLE] = (0.0, -0.44, 0.0)
    o[Joint.SPINE] = (0.0, 0.23, 0.0)
    o[Joint.THORAX] = (0.0, 0.25, 0.0)
    o[Joint.NECK] = (0.0, 0.11, 0.03)
    o[Joint.HEAD] = (0.0, 0.12, -0.03)
    o[Joint.LEFT_SHOULDER] = (0.16, -0.02, 0.0)
    o[Joint.LEFT_ELBOW] = (0.28, 0.0, 0.0)
    o[Joint.LEFT_WRIST] = (0.25, 0.0, 0.0)
    o[Joint.RIGHT_SHOULDER] = (-0.16, -0.02, 0.0)
    o[Joint.RIGHT_ELBOW] = (-0.28, 0.0, 0.0)
    o[Joint.RIGHT_WRIST] = (-0.25, 0.0, 0.0)
    return RestPose(o)


def children(joint: int) -> tuple[int, ...]:
    """Direct children of a joint."""
    return tuple(c for c, p in enumerate(PARENTS) if p == joint)
