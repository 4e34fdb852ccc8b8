"""Export a trained checkpoint as shipped weights: float16 ``.pt`` plus a JSON of how it was
trained and how it scores.

    python -m vimcan_core.training.ship RUN_DIR DEST.pt [--eval-json clean.json ...]

``RUN_DIR`` is a ``vimcan train`` output folder (``best.pt``, ``history.jsonl``, ``last.pt``).
The JSON next to ``DEST.pt`` (same name, ``.json``) holds the model config, the training
metadata of the checkpoint (data, command, recipe), the steps, epochs, wall time and
throughput from the run's history, and the ``vimcan eval`` results passed with --eval-json.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch


def ship(run_dir: Path, dest: Path, eval_jsons: list[Path] = (), notes: str = "") -> dict:
    from vimcan_core.model.checkpoint import load_checkpoint, save_checkpoint

    model, meta = load_checkpoint(run_dir / "best.pt")
    history = [json.loads(l) for l in (run_dir / "history.jsonl").read_text().splitlines() if l.strip()]
    last = torch.load(run_dir / "last.pt", map_location="cpu", weights_only=False)["state"] if (run_dir / "last.pt").is_file() else {}
    info = {
        "file": dest.name,
        "model_config": model.config.to_dict(),
        "parameters": sum(p.numel() for p in model.parameters()),
        "best_epoch": meta.get("epoch"),
        "best_step": meta.get("step"),
        "validation_during_training": meta.get("validation"),
        "training": {
            "command": meta.get("command"),
            "data": meta.get("data"),
            "recipe": meta.get("train_config"),
            "steps_total": last.get("step"),
            "epochs_total": len(history),
            "train_wall_minutes": round(last.get("train_seconds", 0.0) / 60, 1),
            "frames_seen": last.get("frames_seen"),
            "frames_per_s": round(last.get("frames_seen", 0) / max(last.get("train_seconds", 1e-9), 1e-9), 1),
            "history": history,
        },
        "evaluation": [json.loads(Path(p).read_text()) for p in eval_jsons],
        "notes": notes,
    }
    save_checkpoint(dest, model, {"shipped": info["training"]["command"], "best_epoch": info["best_epoch"],
                                  "validation": info["validation_during_training"]}, half=True)
    dest.with_suffix(".json").write_text(json.dumps(info, indent=1))
    return info


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="export a vimcan train run as shipped weights + JSON")
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("dest", type=Path)
    ap.add_argument("--eval-json", type=Path, action="append", default=[])
    ap.add_argument("--notes", default="")
    args = ap.parse_args(argv)
    info = ship(args.run_dir, args.dest, args.eval_json, args.notes)
    print(json.dumps({k: info[k] for k in ("file", "parameters", "best_epoch")}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
