"""Configuration of the VIMCAN network: one frozen dataclass, two presets.

Conventions of the model's tensors (see ``vimcan_core.skeleton`` and ``vimcan_core.rotations``):

* ``keypoints``: B x T x 17 x 3, (x, y) normalised with ``camera.normalize_keypoints`` and a
  confidence in [0, 1] (or B x T x 17 x 2, confidence 1). Joint order H36M-17.
* ``quats``: B x T x 6 x 4, w x y z unit quaternions, bone-in-camera
  (``q_cam_from_bone = q_cam_from_world * q_world_from_bone``), IMU order ``ImuSite``.
* ``imu_valid``: B x T x 6 bool (False: the sensor is missing this frame), optional.
* output: B x T x 17 x 3 root-relative joints, camera frame, metres.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from enum import Enum
from typing import Any

from vimcan_core.errors import VimcanError


class FusionMode(Enum):
    """How the two modalities meet (the paper's fusion ablation)."""

    CROSS_ATTENTION = "cross-attention"  # the paper's model: grouped cross-attention per frame
    CROSS_MAMBA = "cross-mamba"  # pure-Mamba baseline: concatenate along joints and scan
    VISION_SELF_ATTENTION = "vision-self-attention"  # no IMU: self-attention over the joints instead
    VISION_ONLY = "vision-only"  # no IMU, no fusion block


@dataclass(frozen=True)
class VimcanConfig:
    """Every hyper-parameter of the network, each with a default and its reason."""

    embed_dim: int = 64  # De: width of the two modality branches (paper: 64)
    fused_dim: int = 256  # Dg: width after fusion (paper: 256 for VIMCAN-B)
    num_visual_layers: int = 1  # STMamba layers of the visual branch before fusion
    num_inertial_layers: int = 1  # part-aware STMamba layers of the inertial branch before fusion
    num_skeleton_layers: int = 5  # L_N: skeleton-aware STMamba layers after the part-aware one
    d_state: int = 16  # N: SSM state size per channel (Mamba default)
    d_conv: int = 4  # depthwise causal convolution width (Mamba default)
    expand: int = 2  # inner width = expand * width (Mamba default)
    mlp_ratio: float = 4.0  # hidden width of each block's MLP
    num_heads: int = 4  # heads of the fusion attention (head width De / heads = 16)
    groups: int = 5  # G: body-part groups of the inertial features (0 = none, 3 or 5)
    skeleton_order: bool = True  # scan joints parent-before-child (False: plain H36M index order)
    fusion: FusionMode = FusionMode.CROSS_ATTENTION  # fusion ablation
    group_prior: float = 2.0  # initial attention bias towards a joint's own body part
    streaming: bool = False  # causal model: temporal scans forward only, steppable frame by frame
    dt_min: float = 0.001  # Mamba dt initialisation: log-uniform in [dt_min, dt_max]
    dt_max: float = 0.1
    dt_init_floor: float = 1e-4
    dropout: float = 0.0  # dropout after each mixer and MLP (training regularisation)
    checkpointing: bool = False  # recompute each block in backward: much less memory, ~30% slower

    def __post_init__(self) -> None:
        if self.groups not in (0, 3, 5):
            raise VimcanError(f"VimcanConfig.groups must be 0, 3 or 5 (the paper's ablation), got {self.groups}")
        if not isinstance(self.fusion, FusionMode):
            raise VimcanError(f"VimcanConfig.fusion must be a FusionMode, got {self.fusion!r}")
        if self.embed_dim % self.num_heads:
            raise VimcanError(f"embed_dim {self.embed_dim} must be divisible by num_heads {self.num_heads}")
        for name in ("embed_dim", "fused_dim", "d_state", "d_conv", "expand"):
            if getattr(self, name) < 1:
                raise VimcanError(f"VimcanConfig.{name} must be >= 1, got {getattr(self, name)}")

    @property
    def uses_imu(self) -> bool:
        return self.fusion in (FusionMode.CROSS_ATTENTION, FusionMode.CROSS_MAMBA)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict (enums as their string values)."""
        d = dataclasses.asdict(self)
        d["fusion"] = self.fusion.value
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "VimcanConfig":
        """Inverse of ``to_dict``; unknown keys are an error (a checkpoint of another version)."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise VimcanError(f"unknown VimcanConfig fields {sorted(unknown)}")
        d = dict(d)
        if "fusion" in d:
            d["fusion"] = FusionMode(d["fusion"])
        return cls(**d)


#: the paper's two sizes, VIMCAN-B (De 64, Dg 256, ~12.3M parameters) and VIMCAN-T (~3.9M),
#: and a CPU-sized variant. Measured on the 2-core CPU, idle (``benchmarks/train_speed.py``):
#: one AdamW step at batch 16 of 45-frame windows takes ~7-8 s for vimcan-t at 2 threads
#: (peak RSS 5.6 GB; 8.3 GB at 81 frames; ``checkpointing=True`` trades ~30% speed for less).
PRESETS: dict[str, VimcanConfig] = {
    "vimcan-b": VimcanConfig(embed_dim=64, fused_dim=256),
    "vimcan-t": VimcanConfig(embed_dim=64, fused_dim=136),
    # not from the paper: the same architecture, narrow and shallow (~0.43M parameters), for
    # training within a session on a 2-core CPU, where vimcan-t needs tens of seconds per batch
    "vimcan-cpu": VimcanConfig(embed_dim=32, fused_dim=64, num_skeleton_layers=2, mlp_ratio=2.0),
}


def preset(name: str, **overrides: Any) -> VimcanConfig:
    """A preset config by name, with fields overridden: ``preset("vimcan-t", streaming=True)``."""
    if name not in PRESETS:
        raise VimcanError(f"unknown model preset {name!r}; choose one of {sorted(PRESETS)}")
    return dataclasses.replace(PRESETS[name], **overrides)
