"""`vimcan eval`: P1 / P2 of a VIMCAN checkpoint on every BVH clip of a folder.

    vimcan eval --bvh DIR [--checkpoint PATH] [--noise clean|realistic] [--seed N] [--json OUT]

Each clip is retargeted to H36M-17 (any naming convention of the table, or --names), a
webcam and the sensor signals are synthesised with the given noise preset, deterministically
for the seed, and the model's root-relative camera-frame joints are compared with the truth.
Without --checkpoint the shipped weights (resources/models/) are used. With --fusion PATH
(repeatable) several checkpoints, e.g. the fusion ablation's, are compared on the same
signals and ranked. A bidirectional model's prediction is averaged with the mirrored
prediction of the mirrored inputs, as the offline re-solve runs it (``--flip``; a streaming
model is not, as the live studio runs it). ``--known-height`` scales each clip's prediction to
the performer's true height, as the studio does when the profile holds it (``vimcan_core.body_scale``).
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

log = logging.getLogger(__name__)

MODELS_DIR = Path(__file__).resolve().parents[2] / "resources" / "models"
SHIPPED = {False: MODELS_DIR / "vimcan-t.pt", True: MODELS_DIR / "vimcan-t-streaming.pt"}


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="P1 / P2 of a checkpoint on a folder of BVH clips")
    p.add_argument("--bvh", type=Path, required=True, help="BVH file or folder (recursive; the CMU layout with index.csv too)")
    p.add_argument("--split", default=None, help="only this split of an index.csv folder (e.g. val)")
    p.add_argument("--checkpoint", type=Path, default=None, help="default: the shipped vimcan-t weights")
    p.add_argument("--streaming", action="store_true", help="without --checkpoint: the shipped streaming model")
    p.add_argument("--noise", default="clean", choices=("clean", "realistic"), help="synthetic signal preset")
    p.add_argument("--seed", type=int, default=0, help="seed of the webcams and the noise")
    p.add_argument("--window", type=int, default=81, help="window of the bidirectional model, frames")
    p.add_argument("--flip", default="auto", choices=("auto", "on", "off"),
                   help="average with the mirrored prediction of the mirrored inputs; auto: on for a "
                        "bidirectional model (as the offline re-solve does), off for a streaming one (as live)")
    p.add_argument("--known-height", action="store_true",
                   help="scale each clip's prediction to the true skeleton's height (a performer height typed into the studio)")
    p.add_argument("--json", type=Path, default=None, help="write the results here")
    p.add_argument("--names", type=Path, default=None, help="joint-name override JSON for unusual skeletons")
    p.add_argument("--fusion", type=Path, action="append", default=[], metavar="CHECKPOINT",
                   help="compare several checkpoints (e.g. the fusion ablation), repeatable")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--device", default="auto", help="auto (CUDA when available, else the CPU), cpu, cuda")
    p.add_argument("--cache", type=Path, default=Path(".cache/clips"), help="retargeted-clip cache folder")
    p.set_defaults(func=run)


def evaluate_checkpoint(path: Path, eval_clips: list, window: int, device: str, flip: str = "auto",
                        known_height: bool = False):
    """(EvalResult, config, metadata, whether the prediction was flip-averaged)."""
    from vimcan_core.model.checkpoint import load_checkpoint
    from vimcan_core.training.evaluate import evaluate

    model, meta = load_checkpoint(path, device=device)
    streaming = bool(model.config.streaming)
    flipped = flip == "on" or (flip == "auto" and not streaming)
    result = evaluate(model, eval_clips, None if streaming else window, device, flipped, known_height)
    return result, model.config, meta, flipped


def run(args: argparse.Namespace) -> int:
    import torch

    from vimcan_core.dataset import load_clips, make_eval_clips
    from vimcan_core.errors import CheckpointError
    from vimcan_core.retarget import RetargetConfig
    from vimcan_core.synthesis.noise import parse_preset
    from vimcan_core.live import pick_device
    from vimcan_core.training.evaluate import format_table

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    device = str(pick_device(args.device))
    noise = parse_preset(args.noise)
    clips = load_clips(args.bvh, args.split, RetargetConfig(override=args.names), cache_dir=args.cache)
    eval_clips = make_eval_clips(clips, noise, args.seed)
    checkpoints = list(args.fusion) or [args.checkpoint or SHIPPED[args.streaming]]
    for c in checkpoints:
        if not c.is_file():
            raise CheckpointError(f"{c}: no such checkpoint; train one with `vimcan train` or pass --checkpoint")
    report: dict = {"bvh": str(args.bvh), "split": args.split, "noise": noise.value, "seed": args.seed, "models": []}
    for path in checkpoints:
        result, config, _meta, flipped = evaluate_checkpoint(path, eval_clips, args.window, device, args.flip,
                                                             args.known_height)
        title = (f"{path} ({config.fusion.value}, {'streaming' if config.streaming else 'bidirectional'}, noise {noise.value}, "
                 f"seed {args.seed}{', flip-averaged' if flipped else ''}{', known height' if args.known_height else ''})")
        print(format_table(result, title))
        print()
        report["models"].append({"checkpoint": str(path), "fusion": config.fusion.value, "streaming": config.streaming,
                                 "flip_averaged": flipped, "known_height": args.known_height, **result.to_dict()})
    if len(report["models"]) > 1:
        ranked = sorted(report["models"], key=lambda m: m["p1_mm"])
        print("ranking by P1: " + " < ".join(f"{m['fusion']} ({m['p1_mm']:.1f} mm)" for m in ranked))
        report["ranking"] = [m["fusion"] for m in ranked]
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report if len(report["models"]) > 1 else {**report, **report["models"][0]}, indent=1))
        print(f"wrote {args.json}")
    return 0
