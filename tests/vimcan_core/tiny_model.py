"""The tiny VIMCAN the training, evaluation and mirroring tests build (seconds to train on a CPU)."""

TINY = dict(embed_dim=16, fused_dim=16, expand=1, d_state=2, num_skeleton_layers=1, mlp_ratio=1.0, num_heads=2)
