"""`vimcan train`: train VIMCAN on BVH motion with synthetic webcam and IMU signals.

    vimcan train --data ../shared/data/cmu --preset vimcan-t [--streaming] --out runs/vimcan-t

Defaults are the paper's recipe (AdamW, weight decay 0.01, lr 2e-4 x 0.99 per epoch, batch 16,
windows of 9, 18, ..., 81 frames). The run resumes from ``OUT/last.pt`` when it exists.
Launch with ``torchrun --nproc_per_node N $(which vimcan) train ...`` for data-parallel
training on N GPUs (each process draws its own windows; rank 0 validates and saves).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
import time
from pathlib import Path

log = logging.getLogger(__name__)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train VIMCAN on BVH motion with synthetic sensor signals")
    p.add_argument("--data", type=Path, required=True, help="BVH folder (the CMU layout with index.csv, or any folder)")
    p.add_argument("--val-data", type=Path, default=None, help="validation BVH folder (default: the 'val' split of --data)")
    p.add_argument("--preset", default="vimcan-t", help="model preset: vimcan-t or vimcan-b")
    p.add_argument("--streaming", action="store_true", help="train the causal (live) model")
    p.add_argument("--fusion", default=None, help="fusion ablation: cross-attention, cross-mamba, vision-self-attention, vision-only")
    p.add_argument(
        "--model-override", action="append", default=[], metavar="FIELD=VALUE",
        help="override a VimcanConfig field, e.g. --model-override fused_dim=64 (repeatable)",
    )
    p.add_argument("--out", type=Path, default=None, help="run folder (default runs/<preset>[-streaming])")
    p.add_argument("--epochs", type=int, default=100)
    p.add_argument("--steps-per-epoch", type=int, default=None, help="default: one pass over the training frames")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--lr-decay", type=float, default=0.99, help="learning-rate factor per epoch (a resumed run applies it from where it stopped: e.g. a faster decay for an annealing tail)")
    p.add_argument("--weight-decay", type=float, default=0.01)
    p.add_argument("--lengths", default="9,18,27,36,45,54,63,72,81", help="window lengths, comma-separated")
    p.add_argument("--realistic-prob", type=float, default=0.5, help="share of windows with realistic noise")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-steps", type=int, default=None)
    p.add_argument("--max-minutes", type=float, default=None, help="stop after this wall time (CPU budgets)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--device", default="auto", help="auto (CUDA when available, else the CPU), cpu, cuda, cuda:1")
    p.add_argument("--no-val-realistic", action="store_true", help="validate with clean signals only (saves time)")
    p.add_argument("--checkpoint-every", type=int, default=200, help="steps between resume checkpoints")
    p.add_argument("--no-resume", action="store_true", help="start afresh even if OUT/last.pt exists")
    p.add_argument("--no-progress", action="store_true", help="no progress line (logs only)")
    p.add_argument("--cache", type=Path, default=Path(".cache/clips"), help="retargeted-clip cache folder")
    p.set_defaults(func=run)


def _parse_override(items: list[str]) -> dict:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"vimcan train: --model-override expects FIELD=VALUE, got {item!r}")
        v: object = value
        for conv in (int, float):
            try:
                v = conv(value)
                break
            except ValueError:
                continue
        if value.lower() in ("true", "false"):
            v = value.lower() == "true"
        out[key.strip()] = v
    return out


def build_model_config(args: argparse.Namespace):
    from vimcan_core.model import FusionMode, preset

    overrides = _parse_override(args.model_override)
    if args.fusion:
        overrides["fusion"] = FusionMode(args.fusion)
    return preset(args.preset, streaming=args.streaming, **overrides)


def run(args: argparse.Namespace) -> int:
    import torch

    from vimcan_core.dataset import SamplerConfig, load_clips
    from vimcan_core.live import pick_device
    from vimcan_core.model import Vimcan
    from vimcan_core.training.trainer import Progress, TrainConfig, Trainer

    model_config = build_model_config(args)
    name = args.preset + ("-streaming" if args.streaming else "") + (f"-{args.fusion}" if args.fusion else "")
    out = args.out or Path("runs") / name
    out.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(out / "train.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.getLogger().addHandler(handler)

    lengths = tuple(int(x) for x in args.lengths.split(","))
    device = str(pick_device(args.device))
    log.info("training on %s", device)
    config = TrainConfig(
        out_dir=out, batch_size=args.batch_size, lr=args.lr, lr_decay=args.lr_decay, weight_decay=args.weight_decay,
        epochs=args.epochs, steps_per_epoch=args.steps_per_epoch, seed=args.seed,
        sampler=SamplerConfig(lengths=lengths, realistic_prob=args.realistic_prob),
        val_realistic=not args.no_val_realistic, checkpoint_every=args.checkpoint_every,
        max_steps=args.max_steps, max_minutes=args.max_minutes, num_threads=args.threads, device=device,
    )
    torch.manual_seed(args.seed)
    if args.threads:
        torch.set_num_threads(args.threads)
    train = load_clips(args.data, "train" if (args.data / "index.csv").is_file() else None, cache_dir=args.cache)
    if args.val_data is not None:
        val = load_clips(args.val_data, None, cache_dir=args.cache)
    elif (args.data / "index.csv").is_file():
        val = load_clips(args.data, "val", cache_dir=args.cache)
    else:
        log.warning("no validation data (pass --val-data); the best checkpoint is not selected")
        val = []
    model = Vimcan(model_config)
    n_params = sum(p.numel() for p in model.parameters())
    metadata = {
        "preset": args.preset,
        "streaming": args.streaming,
        "parameters": n_params,
        "command": "vimcan " + " ".join(sys.argv[1:]) if sys.argv and "train" in sys.argv else "vimcan train",
        "data": {"train": str(args.data), "train_clips": len(train), "train_minutes": round(sum(c.num_frames / c.fps for c in train) / 60, 2),
                 "val": str(args.val_data or args.data), "val_clips": len(val), "val_minutes": round(sum(c.num_frames / c.fps for c in val) / 60, 2)},
        "train_config": json.loads(json.dumps(dataclasses.asdict(config), default=str)),
    }
    trainer = Trainer(model, train, val, config, metadata)
    if not args.no_resume:
        trainer.resume()
    log.info(
        "training %s (%d parameters) on %d clips, %d steps per epoch, out %s",
        name, n_params, len(train), trainer.steps_per_epoch, out,
    )
    t_start = time.monotonic()

    def show(p: Progress) -> None:
        if args.no_progress:
            if p.step % 10 == 0:
                log.info("step %d epoch %d loss %.4f %.0f frames/s lr %.2e", p.step, p.epoch, p.loss, p.frames_per_s, p.lr)
            return
        bar_w = 20
        done = int(bar_w * p.step_in_epoch / max(p.steps_per_epoch, 1))
        sys.stderr.write(
            f"\repoch {p.epoch} [{'#' * done}{'.' * (bar_w - done)}] step {p.step} loss {p.loss:.4f} "
            f"{p.frames_per_s:.0f} frames/s lr {p.lr:.2e} {time.monotonic() - t_start:.0f}s "
        )
        sys.stderr.flush()

    state = trainer.fit(show)
    if trainer.rank != 0:
        return 0
    if not args.no_progress:
        sys.stderr.write("\n")
    print(
        f"done: {state.step} steps, {state.train_seconds / 60:.1f} min training, "
        f"{state.frames_seen / max(state.train_seconds, 1e-9):.0f} frames/s, best val P1 {state.best_p1_mm:.1f} mm "
        f"(epoch {state.best_epoch}); checkpoints in {out}"
    )
    return 0
