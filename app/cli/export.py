"""`vimcan export`: re-export, recover and re-solve takes.

    vimcan export TAKE [--bvh] [--csv] [--units m|cm] [--order zxy|zyx|...] [--out DIR]
    vimcan export --recover TAKE          # a take interrupted by a crash or a kill
    vimcan export --resolve TAKE [--checkpoint PATH] [--device auto|cpu|cuda] [--height-cm CM]

Without --bvh/--csv/--recover/--resolve, both the BVH and the CSV are written.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from sensors.export import resolve_take  # noqa: F401  (the studio's takes browser looks it up here)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="re-export a take to BVH/CSV, recover or re-solve it",
                       description="Re-export a take (BVH, CSV), recover an interrupted one, or re-solve it offline.")
    p.add_argument("take", type=Path, help="the take folder (holds take.json, poses.csv, raw.csv)")
    p.add_argument("--bvh", action="store_true", help="write take.bvh")
    p.add_argument("--csv", action="store_true", help="write joints_world_<units>.csv (world joint positions)")
    p.add_argument("--units", default="m", help="BVH and CSV units: m (default) or cm")
    p.add_argument("--order", default="zxy", help="BVH rotation order: zxy (default), zyx, ...")
    p.add_argument("--out", type=Path, default=None, help="write the files here instead of the take folder")
    p.add_argument("--resolved", action="store_true", help="export the re-solved poses (poses_resolved.csv)")
    p.add_argument("--recover", action="store_true", help="recover a take interrupted by a crash or a kill")
    p.add_argument("--resolve", action="store_true",
                   help="re-run the bidirectional model over the whole take: poses_resolved.csv, take_resolved.bvh")
    p.add_argument("--checkpoint", type=Path, default=None, help="bidirectional weights for --resolve")
    p.add_argument("--device", default="auto", help="torch device for --resolve: auto (CUDA when available, else the CPU), cpu, cuda")
    p.add_argument("--height-cm", type=float, default=None,
                   help="--resolve: the performer's height; the skeleton is scaled to it and take.json keeps it for "
                        "later exports (default: the height in take.json, from the calibration profile; without one "
                        "the network's size is kept)")
    p.add_argument("--no-flip", action="store_true",
                   help="--resolve without averaging the mirrored prediction (half the compute, 0.5-1 mm less accurate)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from sensors.export import ExportOptions, PoseSet, ResolveConfig, export_take
    from vimcan_core.body_scale import height_from_cm
    from vimcan_core.bvh.writer import BvhWriterConfig, LengthUnit, RotationOrder
    from vimcan_core.errors import VimcanError
    from vimcan_core.take import recover_take

    try:
        bvh_config = BvhWriterConfig(order=RotationOrder.parse(args.order), units=LengthUnit.parse(args.units))
    except ValueError as exc:
        raise VimcanError(str(exc)) from None
    folder: Path = args.take
    poses = PoseSet.RESOLVED if args.resolved else PoseSet.LIVE
    wants_files = args.bvh or args.csv
    if args.recover:
        meta = recover_take(folder, write_bvh=False)
        print(f"recovered {folder}: {meta.frames} frames, {meta.duration_s:.1f} s (status {meta.status.value})")
        for path in export_take(folder, ExportOptions(bvh=True, csv=args.csv, bvh_config=bvh_config, out_dir=args.out)):
            print(f"wrote {path}")
    if args.resolve:
        weights = {} if args.checkpoint is None else {"checkpoint": args.checkpoint}  # else the shipped ones
        height = None if args.height_cm is None else height_from_cm(args.height_cm)
        config = ResolveConfig(device=args.device, flip=not args.no_flip, performer_height_m=height, **weights)
        out = resolve_take(folder, config=config, bvh_config=bvh_config)
        print(f"re-solved {folder}: wrote {out} and {out.with_name('take_resolved.bvh')}")
        poses = PoseSet.RESOLVED
    if not (args.recover or args.resolve) or (args.resolve and wants_files):
        both = not wants_files
        options = ExportOptions(bvh=args.bvh or both, csv=args.csv or both, bvh_config=bvh_config, poses=poses, out_dir=args.out)
        for path in export_take(folder, options):
            print(f"wrote {path}")
    return 0
