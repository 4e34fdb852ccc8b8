"""The VIMCAN network: visual and inertial STMamba branches, grouped cross-attention fusion,
a part-aware STMamba and L_N skeleton-aware STMamba layers, and a linear regression head.

Read with the paper beside it:

1. Embedding (Sec. "Input embedding"): keypoints -> B x T x 17 x De; bone orientations ->
   B x T x 6 x De -> grouped by kinematic priors into G body-part tokens B x T x G x De.
2. Visual STMamba (skeleton-order spatial scan, then temporal scan) and inertial part-aware
   STMamba (four directions: forward/backward over parts and over time), both at De.
3. Fusion: grouped multi-head cross-attention per frame, visual queries, inertial keys/values,
   residual on the visual tokens only (or the ablations of ``FusionMode``).
4. Lift to Dg, one part-aware STMamba (each body part scanned on its own), L_N skeleton-aware
   STMamba layers, LayerNorm and a linear head to 3D; the root is subtracted.

Tensor conventions are those of ``vimcan_core.model.config``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from vimcan_core.errors import InputShapeError, VimcanError
from vimcan_core.model.blocks import (
    BiSTSSM,
    GroupedCrossAttention,
    InertialEmbedding,
    SSMState,
    STMamba,
    VisualEmbedding,
)
from vimcan_core.model.config import FusionMode, VimcanConfig
from vimcan_core.model.scan import ScanBackend
from vimcan_core.skeleton import (
    IMU_SITE_NAMES,
    JOINT_NAMES,
    NUM_IMUS,
    NUM_JOINTS,
    PART_IMUS,
    PART_JOINTS,
    PARTS_3,
    SKELETON_SCAN_ORDER,
)

log = logging.getLogger(__name__)

#: a valid quaternion's norm must be within this of 1
QUAT_NORM_TOLERANCE = 1e-2


@dataclass(frozen=True)
class VimcanState:
    """Streaming state of a causal VIMCAN: one conv + SSM state per temporal scan, in layer order."""

    layers: tuple[SSMState, ...]
    batch_size: int


def _part_groups(groups: int) -> tuple[tuple[int, ...], ...]:
    """Joints of each body-part group: G = 5 parts, G = 3 (torso, arms, legs), G = 0 none."""
    if groups == 5:
        return PART_JOINTS
    if groups == 3:
        return tuple(tuple(j for p in parts for j in PART_JOINTS[p]) for parts in PARTS_3)
    return ()


def _imu_membership(groups: int) -> Tensor:
    """G' x 6 0/1 matrix: which sensors make each inertial token (G = 0: one token per sensor)."""
    if groups == 0:
        return torch.eye(NUM_IMUS)
    part_sets = [(p,) for p in range(len(PART_JOINTS))] if groups == 5 else list(PARTS_3)
    m = torch.zeros(len(part_sets), NUM_IMUS)
    for g, ps in enumerate(part_sets):
        for p in ps:
            for s in PART_IMUS[p]:
                m[g, s] = 1.0
    return m


class Vimcan(nn.Module):
    """VIMCAN: ``model(keypoints, quats, imu_valid=None) -> B x T x 17 x 3`` (metres, root-relative,
    camera frame). Streaming configs also offer ``init_state`` / ``step``."""

    def __init__(self, config: VimcanConfig) -> None:
        super().__init__()
        self.config = config
        De, Dg, causal = config.embed_dim, config.fused_dim, config.streaming
        joint_order = (SKELETON_SCAN_ORDER if config.skeleton_order else tuple(range(NUM_JOINTS)),)
        parts = _part_groups(config.groups)
        part_order = parts if parts else joint_order

        # 1-2. visual branch: embedding and skeleton-order STMamba
        self.visual_embed = VisualEmbedding(De, NUM_JOINTS)
        self.visual_layers = nn.ModuleList(STMamba(De, config, joint_order, causal) for _ in range(config.num_visual_layers))

        # 1-2. inertial branch: part tokens and part-aware STMamba (4 directions)
        self.inertial_embed: InertialEmbedding | None = None
        self.inertial_layers = nn.ModuleList()
        membership = _imu_membership(config.groups)
        num_inertial = membership.shape[0]
        if config.uses_imu:
            self.inertial_embed = InertialEmbedding(De, membership)
            self.inertial_layers = nn.ModuleList(
                STMamba(De, config, (tuple(range(num_inertial)),), causal) for _ in range(config.num_inertial_layers)
            )

        # 3. fusion
        self.fusion: nn.Module | None = None
        self.imu_to_visual: nn.Linear | None = None
        if config.fusion is FusionMode.CROSS_ATTENTION:
            query_groups = None
            if parts:
                query_groups = tuple(next(g for g, js in enumerate(parts) if j in js) for j in range(NUM_JOINTS))
            self.fusion = GroupedCrossAttention(
                De, config.num_heads, config.mlp_ratio, num_inertial, query_groups, config.group_prior, config.dropout
            )
        elif config.fusion is FusionMode.CROSS_MAMBA:
            self.imu_to_visual = nn.Linear(De, De)
            self.fusion = BiSTSSM(De, config, bidirectional=True)
            self._fusion_order = list(joint_order[0])
        elif config.fusion is FusionMode.VISION_SELF_ATTENTION:
            self.fusion = GroupedCrossAttention(De, config.num_heads, config.mlp_ratio, NUM_JOINTS, None, 0.0, config.dropout)

        # 4. fused stage at Dg
        self.lift = nn.Linear(De, Dg)
        self.part_layer = STMamba(Dg, config, part_order, causal)
        self.skeleton_layers = nn.ModuleList(STMamba(Dg, config, joint_order, causal) for _ in range(config.num_skeleton_layers))
        self.head_norm = nn.LayerNorm(Dg)
        self.head = nn.Linear(Dg, 3)
        self.apply(_init_linear)

    # ----------------------------------------------------------------------------------------
    def stmamba_layers(self) -> list[STMamba]:
        """Every STMamba in the order the data flows (and the order of the streaming state)."""
        return [*self.visual_layers, *self.inertial_layers, self.part_layer, *self.skeleton_layers]

    def parameter_breakdown(self) -> dict[str, int]:
        """Parameters per component, in the order the data flows; the values sum to the total."""
        groups = {
            "visual embedding": [self.visual_embed],
            "visual STMamba": [self.visual_layers],
            "inertial embedding": [self.inertial_embed] if self.inertial_embed is not None else [],
            "inertial part-aware STMamba": [self.inertial_layers],
            f"fusion ({self.config.fusion.value})": [m for m in (self.imu_to_visual, self.fusion) if m is not None],
            "lift De -> Dg": [self.lift],
            "part-aware STMamba": [self.part_layer],
            f"skeleton-aware STMamba x {len(self.skeleton_layers)}": [self.skeleton_layers],
            "regression head": [self.head_norm, self.head],
        }
        return {name: sum(p.numel() for m in mods for p in m.parameters()) for name, mods in groups.items()}

    def set_scan_backend(self, backend: ScanBackend) -> None:
        """Run every selective scan with ``backend`` (default AUTO)."""
        for m in self.modules():
            if hasattr(m, "scan_backend"):
                m.scan_backend = backend

    def forward(self, keypoints: Tensor, quats: Tensor | None = None, imu_valid: Tensor | None = None) -> Tensor:
        """keypoints B x T x 17 x 3 (or x 2), quats B x T x 6 x 4, imu_valid B x T x 6 -> B x T x 17 x 3."""
        kp, quats, valid = validate_inputs(keypoints, quats, imu_valid, needs_imu=self.config.uses_imu)
        return self._run(kp, quats, valid, None)[0]

    def init_state(self, batch_size: int, device: torch.device | str | None = None) -> VimcanState:
        """Zero streaming state for ``batch_size`` sequences (streaming configs only)."""
        if not self.config.streaming:
            raise VimcanError("init_state/step need a streaming model: build it with preset(..., streaming=True)")
        p = next(self.parameters())
        device = torch.device(device) if device is not None else p.device
        return VimcanState(tuple(l.init_state(batch_size, device, p.dtype) for l in self.stmamba_layers()), batch_size)

    def step(self, keypoints: Tensor, quats: Tensor | None, imu_valid: Tensor | None,
             state: VimcanState) -> tuple[Tensor, VimcanState]:
        """One frame: keypoints B x 17 x 3, quats B x 6 x 4, imu_valid B x 6 -> B x 17 x 3, new state.

        Equals frame t of ``forward`` over the whole sequence (the model is causal)."""
        if not self.config.streaming:
            raise VimcanError("step needs a streaming model: build it with preset(..., streaming=True)")
        if keypoints.dim() != 3:
            raise InputShapeError(f"step: keypoints must be B x 17 x 3 (one frame), got {tuple(keypoints.shape)}")
        kp, q, valid = validate_inputs(
            keypoints[:, None], None if quats is None else quats[:, None],
            None if imu_valid is None else imu_valid[:, None], needs_imu=self.config.uses_imu,
        )
        if kp.shape[0] != state.batch_size:
            raise InputShapeError(f"step: batch {kp.shape[0]} does not match the state's batch {state.batch_size}")
        out, new_states = self._run(kp, q, valid, state.layers)
        return out[:, 0], VimcanState(tuple(new_states), state.batch_size)

    # ----------------------------------------------------------------------------------------
    def _apply_layer(self, layer: STMamba, x: Tensor, states: tuple[SSMState, ...] | None,
                     new_states: list[SSMState]) -> Tensor:
        if states is None:
            return layer(x)
        y, s = layer.step(x[:, 0], states[len(new_states)])
        new_states.append(s)
        return y[:, None]

    def _run(self, kp: Tensor, quats: Tensor | None, valid: Tensor | None,
             states: tuple[SSMState, ...] | None) -> tuple[Tensor, list[SSMState]]:
        B, T, J, _ = kp.shape
        new_states: list[SSMState] = []
        x = self.visual_embed(kp)  # B x T x 17 x De
        for layer in self.visual_layers:
            x = self._apply_layer(layer, x, states, new_states)
        if self.inertial_embed is not None:
            xi = self.inertial_embed(quats, valid)  # B x T x G' x De
            for layer in self.inertial_layers:
                xi = self._apply_layer(layer, xi, states, new_states)
        fusion = self.config.fusion
        C = x.shape[-1]
        if fusion is FusionMode.CROSS_ATTENTION:
            x = self.fusion(x.reshape(B * T, J, C), xi.reshape(B * T, -1, C)).view(B, T, J, C)
        elif fusion is FusionMode.CROSS_MAMBA:
            xv = x.reshape(B * T, J, C)[:, self._fusion_order]  # (B T) x 17 x De, scan order
            xm = self.imu_to_visual(xi).reshape(B * T, -1, C)  # (B T) x G' x De
            y = self.fusion(torch.cat((xv, xm), dim=1))[:, :J]  # (B T) x 17 x De
            x = torch.empty_like(y).index_copy_(1, torch.tensor(self._fusion_order, device=y.device), y).view(B, T, J, C)
        elif fusion is FusionMode.VISION_SELF_ATTENTION:
            x = self.fusion(x.reshape(B * T, J, C)).view(B, T, J, C)
        x = self.lift(x)  # B x T x 17 x Dg
        x = self._apply_layer(self.part_layer, x, states, new_states)
        for layer in self.skeleton_layers:
            x = self._apply_layer(layer, x, states, new_states)
        out = self.head(self.head_norm(x))  # B x T x 17 x 3
        return out - out[:, :, :1], new_states  # root-relative


def _init_linear(m: nn.Module) -> None:
    """Truncated-normal (0.02) Linear weights and zero biases, as ViT / PoseMamba."""
    if isinstance(m, nn.Linear):
        nn.init.trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)


def _where(mask: Tensor, names: tuple[str, ...], limit: int = 5) -> str:
    """Describe the first ``limit`` True entries of a B x T x K mask as (batch, frame, name)."""
    idx = mask.nonzero().tolist()
    shown = ", ".join(f"(batch {b}, frame {t}, {names[k]})" for b, t, k in idx[:limit])
    more = f" and {len(idx) - limit} more" if len(idx) > limit else ""
    return shown + more


def validate_inputs(keypoints: Tensor, quats: Tensor | None, imu_valid: Tensor | None,
                    needs_imu: bool = True) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """Check the model inputs; return keypoints B x T x 17 x 3 (confidence 1 added when absent),
    quats and imu_valid (all True when absent). Raises ``InputShapeError`` naming the expected
    shape or the offending frames, joints and sensors."""
    if not isinstance(keypoints, Tensor) or keypoints.dim() != 4 or keypoints.shape[2] != NUM_JOINTS \
            or keypoints.shape[3] not in (2, 3) or keypoints.shape[1] < 1:
        shape = tuple(keypoints.shape) if isinstance(keypoints, Tensor) else type(keypoints).__name__
        raise InputShapeError(
            f"keypoints must be a tensor B x T x {NUM_JOINTS} x 3 (x, y, confidence) or B x T x {NUM_JOINTS} x 2 "
            f"with T >= 1, got {shape}"
        )
    B, T = keypoints.shape[:2]
    if keypoints.shape[3] == 2:
        keypoints = torch.cat((keypoints, torch.ones_like(keypoints[..., :1])), dim=-1)
    conf = keypoints[..., 2]  # B x T x 17
    bad = torch.isnan(conf) | (torch.isnan(keypoints[..., :2]).any(-1) & (conf > 0))
    if bool(bad.any()):
        raise InputShapeError(
            f"keypoints contain NaN at {_where(bad, JOINT_NAMES)}; give missing joints confidence 0 instead"
        )
    if not needs_imu:
        return keypoints, None, None
    if not isinstance(quats, Tensor) or tuple(quats.shape) != (B, T, NUM_IMUS, 4):
        shape = tuple(quats.shape) if isinstance(quats, Tensor) else type(quats).__name__
        raise InputShapeError(f"quats must be a tensor B x T x {NUM_IMUS} x 4 = {B} x {T} x {NUM_IMUS} x 4 (w x y z), got {shape}")
    if imu_valid is None:
        imu_valid = torch.ones(B, T, NUM_IMUS, dtype=torch.bool, device=quats.device)
    elif not isinstance(imu_valid, Tensor) or tuple(imu_valid.shape) != (B, T, NUM_IMUS):
        shape = tuple(imu_valid.shape) if isinstance(imu_valid, Tensor) else type(imu_valid).__name__
        raise InputShapeError(f"imu_valid must be a bool tensor B x T x {NUM_IMUS} = {B} x {T} x {NUM_IMUS}, got {shape}")
    imu_valid = imu_valid.to(torch.bool)
    norm = quats.norm(dim=-1)  # B x T x 6
    bad = imu_valid & ~((norm - 1.0).abs() <= QUAT_NORM_TOLERANCE)  # NaN compares False: caught too
    if bool(bad.any()):
        raise InputShapeError(
            f"quats must be unit quaternions (|q| = 1 +- {QUAT_NORM_TOLERANCE}) where imu_valid is True; "
            f"NaN or non-unit at {_where(bad, IMU_SITE_NAMES)}; normalise them or mark the sensor invalid"
        )
    return keypoints, quats, imu_valid
