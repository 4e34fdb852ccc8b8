"""Training speed on this machine: frames per second of VIMCAN training steps. Prints JSON.

    .venv/bin/python benchmarks/train_speed.py [--configs cpu,vimcan-t] [--batch 16] [--length 45]
        [--steps 3] [--threads 1] [--streaming]

* ``synthesis``: training windows per second (retargeted CMU motion -> webcam keypoints and
  IMU quaternions, realistic noise, augmentation), ``vimcan_core.dataset.WindowSampler``.
* one entry per model config: seconds per optimizer step (forward, loss, backward, AdamW) of a
  batch x length window, the best of ``--steps`` after one warm-up, and frames per second
  (batch x length / seconds). ``cpu`` is the reduced config the shipped CPU weights were trained
  with (``CPU_OVERRIDES``); ``vimcan-t`` / ``vimcan-b`` are the paper's sizes.

Numbers depend on the load of the machine (this one is shared); the JSON records the load
average next to them.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

#: the reduced VIMCAN-T trained on the 2-core CPU (see resources/models/README.md)
CPU_OVERRIDES = dict(embed_dim=32, fused_dim=64, expand=1, d_state=8, num_skeleton_layers=2, mlp_ratio=2.0)


def bench_synthesis(n: int, length: int) -> dict:
    from vimcan_core.dataset import WindowSampler, load_clips

    data = ROOT.parent / "shared" / "data" / "cmu"
    if not data.is_dir():
        return {"skipped": f"no data at {data}"}
    clips = load_clips(data, "val")
    sampler = WindowSampler(clips)
    rng = np.random.default_rng(0)
    t0 = time.perf_counter()
    for _ in range(n):
        sampler.sample(rng, length)
    dt = time.perf_counter() - t0
    return {"windows_per_s": round(n / dt, 1), "frames_per_s": round(n * length / dt, 1), "length": length}


def bench_model(name: str, batch: int, length: int, steps: int, streaming: bool) -> dict:
    from vimcan_core.losses import vimcan_loss
    from vimcan_core.model import Vimcan, preset

    cfg = preset("vimcan-t", streaming=streaming, **CPU_OVERRIDES) if name == "cpu" else preset(name, streaming=streaming)
    torch.manual_seed(0)
    model = Vimcan(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.01)
    kp = torch.rand(batch, length, 17, 3)
    q = torch.nn.functional.normalize(torch.randn(batch, length, 6, 4), dim=-1)
    target = torch.randn(batch, length, 17, 3) * 0.2
    times = []
    for k in range(steps + 1):
        t0 = time.perf_counter()
        loss = vimcan_loss(model(kp, q), target)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if k:  # the first step warms up
            times.append(time.perf_counter() - t0)
    best = min(times)
    return {
        "parameters": sum(p.numel() for p in model.parameters()),
        "seconds_per_step": round(best, 3),
        "frames_per_s": round(batch * length / best, 1),
        "batch": batch, "length": length, "streaming": streaming,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--configs", default="cpu", help="comma-separated: cpu, vimcan-t, vimcan-b")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--length", type=int, default=45, help="window length (45 = mean of the paper's 9..81)")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--streaming", action="store_true")
    ap.add_argument("--synthesis-windows", type=int, default=64)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    out: dict = {
        "machine": {"cpus": os.cpu_count(), "threads": args.threads, "load_average": os.getloadavg(),
                    "python": platform.python_version(), "torch": torch.__version__},
        "synthesis": bench_synthesis(args.synthesis_windows, args.length),
    }
    for name in args.configs.split(","):
        out[name] = bench_model(name.strip(), args.batch, args.length, args.steps, args.streaming)
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
