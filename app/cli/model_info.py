"""`vimcan model-info PRESET`: the network's size, per component.

    vimcan model-info vimcan-t [--streaming] [--fusion cross-mamba] [--groups 3]

Prints the configuration, the parameters of each component in the order the data flows, the
selective-scan backend this machine would use, and a last line ``total parameters: N``.
"""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("model-info", help="parameter count of a model preset, per component")
    p.add_argument("preset", help="vimcan-t, vimcan-b or vimcan-cpu")
    p.add_argument("--streaming", action="store_true", help="the causal (live) variant")
    p.add_argument("--fusion", default=None,
                   help="fusion ablation: cross-attention, cross-mamba, vision-self-attention, vision-only")
    p.add_argument("--groups", type=int, default=None, choices=(0, 3, 5), help="body-part groups G")
    p.add_argument("--fused-dim", type=int, default=None, help="override Dg")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from vimcan_core.model import FusionMode, Vimcan, preset
    from vimcan_core.model.scan import ScanBackend, resolve_backend
    from vimcan_core.errors import VimcanError

    overrides: dict = {"streaming": args.streaming}
    if args.fusion is not None:
        try:
            overrides["fusion"] = FusionMode(args.fusion)
        except ValueError:
            raise VimcanError(f"unknown fusion {args.fusion!r}; choose one of {[f.value for f in FusionMode]}") from None
    if args.groups is not None:
        overrides["groups"] = args.groups
    if args.fused_dim is not None:
        overrides["fused_dim"] = args.fused_dim
    config = preset(args.preset, **overrides)
    model = Vimcan(config)
    parts = model.parameter_breakdown()
    width = max(len(k) for k in parts)
    print(f"{args.preset}: De {config.embed_dim}, Dg {config.fused_dim}, G {config.groups}, L_N {config.num_skeleton_layers}, "
          f"N {config.d_state}, fusion {config.fusion.value}, {'streaming (causal)' if config.streaming else 'bidirectional'}")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    print(f"selective scan on {device.type}: {resolve_backend(ScanBackend.AUTO, device).value}")
    for name, n in parts.items():
        print(f"{name:<{width}}  {n:>12,d}")
    print(f"total parameters: {sum(parts.values())}")
    return 0
