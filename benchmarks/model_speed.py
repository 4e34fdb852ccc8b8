"""Speed and memory of VIMCAN against the transformer baseline; prints JSON and saves a plot.

    .venv/bin/python benchmarks/model_speed.py [--device cpu|cuda|all] [--quick] [--out DIR]

Measures, for vimcan-t, vimcan-b and the transformer baseline (vimcan-b's widths):
parameters, latency of one 81-frame window at batch 1, frames per second at batch 16 (T = 81),
peak memory of one forward pass at T = 81, 243, 1000, 4000 (batch 1; on the CPU the peak RSS
growth of a fresh process, on CUDA ``max_memory_allocated``), and the streaming per-frame
latency of vimcan-t (``StreamingPoseEstimator``). Also the selective scan backends, forward
plus backward, at L = 81 and 1000. Inference runs under ``torch.inference_mode``.

The issue's targets (on the 2-core CPU): chunked scan >= 10x the reference at L = 81 and 1000;
VIMCAN memory(4000) / memory(1000) <= 4.5 while the transformer grows quadratically and uses
>= 3x vimcan-b's memory at T = 1000; streaming vimcan-t <= 10 ms per frame. The JSON carries a
``checks`` section with each ratio and the machine's load average (timings on a shared machine
vary with its load). This is a benchmark, not a test: nothing here asserts.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

MODELS = ("vimcan-t", "vimcan-b", "transformer")
MEMORY_T = (81, 243, 1000, 4000)


def build(name: str, streaming: bool = False) -> torch.nn.Module:
    from vimcan_core.model import Vimcan, preset
    from vimcan_core.model.transformer_baseline import TransformerBaseline

    torch.manual_seed(0)
    if name == "transformer":
        return TransformerBaseline(preset("vimcan-b")).eval()
    return Vimcan(preset(name, streaming=streaming)).eval()


def inputs(B: int, T: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    kp = torch.rand(B, T, 17, 3, generator=g) * 2 - 1
    kp[..., 2] = 1.0
    q = torch.randn(B, T, 6, 4, generator=g)
    q = q / q.norm(dim=-1, keepdim=True)
    return kp.to(device), q.to(device)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, device: torch.device, repeats: int, warmup: int = 1) -> float:
    """Median seconds of ``fn()``."""
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def bench_scan(device: torch.device, quick: bool) -> dict:
    """Forward + backward of each scan backend, float32, Mamba-like A and delta."""
    from vimcan_core.model.scan import ScanBackend, resolve_backend, selective_scan
    from vimcan_core.model import scan_cpu

    backends = [ScanBackend.REFERENCE, ScanBackend.CHUNKED]
    if device.type == "cpu" and scan_cpu.load_kernel() is not None:
        backends.append(ScanBackend.CPU_KERNEL)
    if device.type == "cuda":
        try:
            resolve_backend(ScanBackend.CUDA, device)
            backends.append(ScanBackend.CUDA)
        except Exception:
            pass
    out = {}
    # "small": one sequence of 64 channels (per-step work tiny: the reference is dispatch-bound);
    # "model": a slice of vimcan-t's temporal scan (4 sequences x 256 channels)
    for (shape, b, d, n), L in [(s, L) for s in (("small", 1, 64, 16), ("model", 4, 256, 16)) for L in (81, 1000)]:
        g = torch.Generator().manual_seed(0)
        args = dict(
            u=torch.randn(b, d, L, generator=g), delta=torch.randn(b, d, L, generator=g) * 0.5 - 3.0,
            A=-torch.arange(1, n + 1.0).repeat(d, 1), B=torch.randn(b, n, L, generator=g), C=torch.randn(b, n, L, generator=g),
        )
        args = {k: v.to(device).requires_grad_() for k, v in args.items()}
        runs = {}
        for backend in backends:
            def run(backend=backend):
                y = selective_scan(args["u"], args["delta"], args["A"], args["B"], args["C"],
                                   delta_softplus=True, backend=backend)
                y.sum().backward()
            runs[backend] = run
            run()  # warm-up (and the C kernel's first-use build)
        # the backends take turns, so a change in the machine's load hits them alike;
        # the reference's long runs are repeated less
        rounds = 3 if quick else 7
        times: dict = {backend: [] for backend in backends}
        for i in range(rounds):
            for backend, run in runs.items():
                if backend is ScanBackend.REFERENCE and i >= (1 if (quick or L > 100) else 3):
                    continue
                _sync(device)
                t0 = time.perf_counter()
                run()
                _sync(device)
                times[backend].append(time.perf_counter() - t0)
        row = {backend.value: float(np.median(ts)) for backend, ts in times.items()}
        row["load_average"] = os.getloadavg()[0]
        ref = row[ScanBackend.REFERENCE.value]
        row["speedup_chunked_vs_reference"] = ref / row[ScanBackend.CHUNKED.value]
        for k in (ScanBackend.CPU_KERNEL.value, ScanBackend.CUDA.value):
            if k in row:
                row[f"speedup_{k}_vs_reference"] = ref / row[k]
        out[f"{shape} b={b} d={d} n={n} L={L}"] = row
    return out


def memory_probe(name: str, T: int, device_name: str) -> float:
    """Peak extra memory (MB) of one batch-1 forward at T frames, measured in this process."""
    device = torch.device(device_name)
    model = build(name).to(device)
    kp, q = inputs(1, T, device)
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        with torch.inference_mode():
            model(kp, q)
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - base) / 2**20
    rss_before = _status_kb("VmRSS")
    try:  # reset the peak-RSS mark (VmHWM) so the model's construction does not count
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass
    with torch.inference_mode():
        model(kp, q)
    peak = _status_kb("VmHWM") or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return max(0.0, (peak - rss_before) / 1024)


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def _attention_gb(T: int) -> float:
    """Memory of the transformer's T x T scores (and softmax) at batch 1, vimcan-b widths."""
    return 2 * 17 * (256 // 32) * T * T * 4 / 2**30


def bench_models(device: torch.device, quick: bool, max_attention_gb: float) -> dict:
    out = {}
    for name in MODELS:
        model = build(name).to(device)
        row: dict = {"parameters": sum(p.numel() for p in model.parameters())}
        kp1, q1 = inputs(1, 81, device)
        kp16, q16 = inputs(16, 81, device)
        with torch.inference_mode():
            row["latency_ms_batch1_T81"] = 1000 * timed(lambda: model(kp1, q1), device, 3 if quick else 5)
            t16 = timed(lambda: model(kp16, q16), device, 1 if quick else 3)
        row["fps_batch16_T81"] = 16 * 81 / t16
        mem = {}
        for T in MEMORY_T[:3] if quick else MEMORY_T:
            if name == "transformer" and _attention_gb(T) > max_attention_gb:
                mem[str(T)] = None
                row.setdefault("skipped", []).append(f"T={T}: attention alone needs ~{_attention_gb(T):.1f} GB")
                continue
            res = subprocess.run(
                [sys.executable, __file__, "--memory-probe", name, str(T), str(device)],
                capture_output=True, text=True, cwd=ROOT,
            )
            mem[str(T)] = float(res.stdout.strip().splitlines()[-1]) if res.returncode == 0 else None
            if res.returncode != 0:
                row.setdefault("errors", []).append(f"T={T}: {res.stderr.strip()[-300:]}")
        row["peak_memory_mb"] = mem
        out[name] = row
        del model
    return out


def bench_streaming(device: torch.device, steps: int) -> dict:
    """Per-frame latency of ``StreamingPoseEstimator.step`` at one torch thread (the live worker's
    setting): the full streaming vimcan-t (random weights) and the shipped streaming weights."""
    from vimcan_core.live import StreamingPoseEstimator

    shipped = ROOT / "resources" / "models" / "vimcan-t-streaming.pt"
    models = {"vimcan-t": build("vimcan-t", streaming=True)}
    if shipped.is_file():
        models["shipped vimcan-t-streaming.pt"] = shipped
    rng = np.random.default_rng(0)
    kp = rng.uniform(-1, 1, (17, 3)).astype(np.float32)
    kp[:, 2] = 1.0
    q = np.tile(np.array([1.0, 0.0, 0.0, 0.0], np.float32), (6, 1))
    valid = np.ones(6, bool)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    out: dict = {"torch_threads": 1}
    try:
        for name, model in models.items():
            est = StreamingPoseEstimator(model, device=device)
            for _ in range(10):
                est.step(kp, q, valid)
            times, cpu = [], []
            for _ in range(steps):
                t0, c0 = time.perf_counter(), time.thread_time()
                est.step(kp, q, valid)
                times.append(time.perf_counter() - t0)
                cpu.append(time.thread_time() - c0)
            out[name] = {"backend": est.backend, "median_ms_per_frame": 1000 * float(np.median(times)),
                         "p90_ms_per_frame": 1000 * float(np.percentile(times, 90)),
                         "median_cpu_ms_per_frame": 1000 * float(np.median(cpu)), "frames": steps}
    finally:
        torch.set_num_threads(threads)
    out["median_ms_per_frame"] = out["vimcan-t"]["median_ms_per_frame"]  # the figure
    return out


def checks(result: dict) -> dict:
    """The issue's targets from whichever sections the results hold (``--only`` into a fresh
    ``--out`` folder has some of them)."""
    c = {}
    for dev, r in result["devices"].items():
        d = {}
        for L, row in r.get("scan", {}).items():
            d[f"scan chunked/reference speedup, {L} (target >= 10)"] = row["speedup_chunked_vs_reference"]
            if "speedup_cpu-kernel_vs_reference" in row:
                d[f"scan cpu-kernel/reference speedup, {L}"] = row["speedup_cpu-kernel_vs_reference"]
        m = r.get("models", {})
        for name in ("vimcan-t", "vimcan-b"):
            mem = m.get(name, {}).get("peak_memory_mb", {})
            if mem.get("4000") and mem.get("1000"):
                d[f"{name} memory 4000/1000 (target <= 4.5)"] = mem["4000"] / mem["1000"]
        tm = m.get("transformer", {}).get("peak_memory_mb", {})
        bm = m.get("vimcan-b", {}).get("peak_memory_mb", {})
        if tm.get("1000") and bm.get("1000"):
            d["transformer/vimcan-b memory at T=1000 (target >= 3)"] = tm["1000"] / bm["1000"]
        if tm.get("1000") and tm.get("243"):
            d["transformer memory 1000/243 (quadratic: ~16.9, linear: ~4.1)"] = tm["1000"] / tm["243"]
        if "streaming" in r:
            d["streaming vimcan-t ms per frame (target <= 10)"] = r["streaming"]["median_ms_per_frame"]
        c[dev] = d
    return c


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for dev, r in result["devices"].items():
        for name, row in r.get("models", {}).items():
            pts = [(int(T), v) for T, v in row["peak_memory_mb"].items() if v]
            if pts:
                xs, ys = zip(*pts)
                ax.plot(xs, ys, marker="o", label=f"{name} ({dev})")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("frames T (batch 1)")
    ax.set_ylabel("peak forward memory (MB)")
    ax.set_title("Memory vs sequence length")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


#: the parts of the benchmark, in the order they run
SECTIONS = ("scan", "models", "streaming")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="all", choices=("cpu", "cuda", "all"))
    p.add_argument("--quick", action="store_true", help="fewer repeats, memory only up to T = 1000")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    p.add_argument("--max-attention-gb", type=float, default=4.0,
                   help="skip transformer memory points whose T x T attention would exceed this")
    p.add_argument("--streaming-frames", type=int, default=200)
    p.add_argument("--only", nargs="+", choices=SECTIONS, default=list(SECTIONS),
                   help="run only these parts; the others are kept from the previous results file")
    p.add_argument("--memory-probe", nargs=3, metavar=("MODEL", "T", "DEVICE"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.memory_probe:
        name, T, dev = args.memory_probe
        print(memory_probe(name, int(T), dev))
        return 0
    devices = [torch.device("cpu")] if args.device in ("cpu", "all") else []
    if args.device in ("cuda", "all") and torch.cuda.is_available():
        devices.append(torch.device("cuda"))
    result: dict = {
        "machine": {
            "cpu": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "load_average_at_start": os.getloadavg(),
        },
        "devices": {},
    }
    previous_path = args.out / "model_speed.json"
    previous = json.loads(previous_path.read_text()).get("devices", {}) if previous_path.is_file() else {}
    runners = {
        "scan": lambda device: bench_scan(device, args.quick),
        "models": lambda device: bench_models(device, args.quick, args.max_attention_gb),
        "streaming": lambda device: bench_streaming(device, args.streaming_frames),
    }
    for device in devices:
        row = dict(previous.get(device.type, {}))  # parts not run now keep their last figures
        for section in SECTIONS:
            if section in args.only:
                row[section] = runners[section](device)
        result["devices"][device.type] = row
    result["machine"]["sections_run_now"] = list(args.only)
    result["machine"]["load_average_at_end"] = os.getloadavg()
    result["checks"] = checks(result)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "model_speed.json").write_text(json.dumps(result, indent=2))
    plot(result, args.out / "model_speed_memory.png")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
