"""The transformer baseline of the speed/memory comparison (the paper's GCN-Transformer role).

Same inputs, outputs, embeddings and grouped cross-attention fusion as VIMCAN, but every
STMamba layer is replaced by a MixSTE-style pair of transformer blocks: self-attention over the
17 joints of a frame, then **full self-attention over all T frames** of each joint. The
temporal attention is written out (``softmax(Q K^T / sqrt(d)) V``, the T x T score matrix
materialised, as in MixSTE / the GCN-Transformer), so its time and memory grow as T^2 where
VIMCAN's grow as T. Width and depth follow the given ``VimcanConfig`` (De, Dg, 1 + L_N layers).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vimcan_core.model.blocks import GroupedCrossAttention, InertialEmbedding, Mlp, VisualEmbedding
from vimcan_core.model.config import VimcanConfig
from vimcan_core.model.vimcan import _imu_membership, _init_linear, _part_groups, validate_inputs
from vimcan_core.skeleton import NUM_JOINTS


class FullSelfAttention(nn.Module):
    """Pre-norm transformer block over the L tokens of each sequence: Ns x L x C -> Ns x L x C."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, dropout: float = 0.0) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.norm1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, mlp_ratio, dropout)

    def forward(self, x: Tensor) -> Tensor:
        Ns, L, C = x.shape
        h = self.num_heads
        q, k, v = self.qkv(self.norm1(x)).view(Ns, L, 3, h, C // h).permute(2, 0, 3, 1, 4)  # 3 x Ns x h x L x Ch
        scores = q @ k.transpose(-1, -2) / math.sqrt(C // h)  # Ns x h x L x L (materialised)
        att = F.softmax(scores, dim=-1) @ v  # Ns x h x L x Ch
        x = x + self.proj(att.transpose(1, 2).reshape(Ns, L, C))
        return x + self.mlp(self.norm2(x))


class SpatioTemporalTransformer(nn.Module):
    """Spatial attention over the joints of each frame, then full temporal attention per joint.
    B x T x J x C -> B x T x J x C."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, dropout: float = 0.0) -> None:
        super().__init__()
        self.spatial = FullSelfAttention(dim, num_heads, mlp_ratio, dropout)
        self.temporal = FullSelfAttention(dim, num_heads, mlp_ratio, dropout)

    def forward(self, x: Tensor) -> Tensor:
        B, T, J, C = x.shape
        x = self.spatial(x.reshape(B * T, J, C)).view(B, T, J, C)
        xt = self.temporal(x.transpose(1, 2).reshape(B * J, T, C))  # (B J) x T x C
        return xt.view(B, J, T, C).transpose(1, 2)


class TransformerBaseline(nn.Module):
    """``model(keypoints, quats, imu_valid=None) -> B x T x 17 x 3``, as ``Vimcan``."""

    def __init__(self, config: VimcanConfig, head_dim: int = 32) -> None:
        super().__init__()
        self.config = config
        De, Dg = config.embed_dim, config.fused_dim
        heads_e, heads_g = max(1, De // head_dim), max(1, Dg // head_dim)
        membership = _imu_membership(config.groups)
        parts = _part_groups(config.groups)
        self.visual_embed = VisualEmbedding(De, NUM_JOINTS)
        self.visual_layer = SpatioTemporalTransformer(De, heads_e, config.mlp_ratio, config.dropout)
        self.inertial_embed = InertialEmbedding(De, membership)
        self.inertial_layer = SpatioTemporalTransformer(De, heads_e, config.mlp_ratio, config.dropout)
        query_groups = None
        if parts:
            query_groups = tuple(next(g for g, js in enumerate(parts) if j in js) for j in range(NUM_JOINTS))
        self.fusion = GroupedCrossAttention(De, config.num_heads, config.mlp_ratio, membership.shape[0],
                                            query_groups, config.group_prior, config.dropout)
        self.lift = nn.Linear(De, Dg)
        self.layers = nn.ModuleList(
            SpatioTemporalTransformer(Dg, heads_g, config.mlp_ratio, config.dropout)
            for _ in range(1 + config.num_skeleton_layers)
        )
        self.head_norm = nn.LayerNorm(Dg)
        self.head = nn.Linear(Dg, 3)
        self.apply(_init_linear)

    def forward(self, keypoints: Tensor, quats: Tensor, imu_valid: Tensor | None = None) -> Tensor:
        kp, quats, valid = validate_inputs(keypoints, quats, imu_valid)
        B, T, J, _ = kp.shape
        x = self.visual_layer(self.visual_embed(kp))  # B x T x 17 x De
        xi = self.inertial_layer(self.inertial_embed(quats, valid))  # B x T x G' x De
        C = x.shape[-1]
        x = self.fusion(x.reshape(B * T, J, C), xi.reshape(B * T, -1, C)).view(B, T, J, C)
        x = self.lift(x)  # B x T x 17 x Dg
        for layer in self.layers:
            x = layer(x)
        out = self.head(self.head_norm(x))  # B x T x 17 x 3
        return out - out[:, :, :1]
