"""Live pipeline benchmark (issue #8): the demo rig with the streaming VIMCAN as the pose stage.

    .venv/bin/python benchmarks/live_pipeline.py                       # about a minute
    .venv/bin/python benchmarks/live_pipeline.py --seconds 600         # the 10-minute memory soak
    .venv/bin/python benchmarks/live_pipeline.py --seconds 600 --realtime-source ground-truth \
        --skip unthrottled mediapipe baseline                          # soak of the pipeline alone
    .venv/bin/python benchmarks/live_pipeline.py --device cuda --out gpu.json
    .venv/bin/python benchmarks/live_pipeline.py --seconds 30 --skip baseline unthrottled mediapipe
                                                                       # the latency figures alone

Measures, and prints as JSON (also written to ``--out``):

* ``realtime``: the demo (six 60 Hz IMUs and a 30 Hz camera, simulated, through the real
  devices, buffers and synchroniser) with the model as pose source for ``--seconds``: poses
  per second, camera frames dropped because the pose stage was behind, end-to-end latency
  (oldest input sample's host time to the pose reaching a subscriber, i.e. available to the
  view: median and 95th percentile), and the process's resident memory sampled every second
  (start, end, peak, the value at each minute, and the slope of a line fitted over the second
  half: the device buffers take about 70 s to fill, 4096 samples at 60 Hz). Beside it, to see
  where the latency goes: the latency from the camera frame's capture instant, how much older
  than the capture the oldest input was, and the pipeline's per-stage medians
  (``sensors.pipeline.STAGES``; the first includes the camera's own delivery delay).
* ``baseline_ground_truth``: the same demo with the simulation's ground truth as the pose
  stage: what the devices, synchroniser and fan-out cost by themselves.
* ``unthrottled``: the pose stage alone (input conversion, one model step, output transform)
  on recorded demo frames, as fast as it goes: poses per second and ms per pose; and the
  accuracy of the model on those frames against the performer's ground truth (MPJPE and
  P-MPJPE, root-relative, mm).
* ``mediapipe``: a real video file as the camera (MediaPipe keypoints, looped, played at
  ``--video-speed`` times its own rate: the 5 fps test clip at 6x arrives like a 30 fps webcam)
  with the simulated IMUs and the model: poses per second, drops and latency.

Without shipped weights (``resources/models/vimcan-t-streaming.pt``) a randomly initialised
vimcan-t is timed (same architecture and cost) and the JSON says so.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import queue
import sys
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sensors.demo import DemoConfig, build_demo_pipeline  # noqa: E402
from sensors.model_source import ModelPoseSource, TorchStepEstimator  # noqa: E402
from sensors.pipeline import CapturePipeline  # noqa: E402

log = logging.getLogger("benchmarks.live_pipeline")

SHIPPED_WEIGHTS = ROOT / "resources" / "models" / "vimcan-t-streaming.pt"
DEFAULT_VIDEO = ROOT.parent / "shared" / "data" / "video" / "pose_squats.mp4"


def rss_mb() -> float:
    """Resident memory of this process, MB (Linux)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def make_estimator(weights: Path, device: str):
    """(estimator, what it is): ``vimcan_core.live.StreamingPoseEstimator`` on the shipped weights,
    or on a randomly initialised vimcan-t (same architecture and cost) when there are none."""
    import torch

    from vimcan_core.model import Vimcan, preset

    try:
        from vimcan_core.live import StreamingPoseEstimator as Estimator
    except ImportError:  # the built-in minimal estimator
        Estimator = TorchStepEstimator
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if weights.is_file():
        return Estimator(weights, device=device), f"trained weights {weights.name}"
    torch.manual_seed(0)
    model = Vimcan(preset("vimcan-t", streaming=True))
    return Estimator(model, device=device), f"random weights (no trained weights at {weights})"


class LatencyLog:
    """Per-pose latencies in a preallocated, pre-touched array, so the benchmark's own bookkeeping
    does not show up in the resident-memory slope it reports (a Python list of tuples grew by
    about 0.2 MB/min at 30 poses/s).

    One writer (the collector thread) appends; ``clear`` and ``values`` are called by the main
    thread. Poses beyond ``capacity`` are counted in ``overflow`` and not kept."""

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"latency log capacity must be at least 1, got {capacity}")
        self._s = np.full((capacity, 2), np.nan)  # P x 2: from the oldest input, from the frame instant; s
        self._n = 0
        self.overflow = 0
        self._lock = threading.Lock()

    def append(self, from_oldest_s: float, from_frame_s: float) -> None:
        with self._lock:
            if self._n < len(self._s):
                self._s[self._n] = from_oldest_s, from_frame_s
                self._n += 1
            else:
                self.overflow += 1

    def clear(self) -> None:
        with self._lock:
            self._n = 0
            self.overflow = 0

    def values(self) -> np.ndarray:
        """P x 2 copy of what was logged since the last ``clear``, seconds."""
        with self._lock:
            return self._s[:self._n].copy()


def _collect(q: queue.Queue, stop: threading.Event, latencies: LatencyLog) -> None:
    """(now - oldest input's host time, now - frame instant) per pose, seconds."""
    while not stop.is_set():
        try:
            synced, _pose = q.get(timeout=0.1)
        except queue.Empty:
            continue
        now = time.monotonic()
        latencies.append(now - synced.sample_host_time_s, now - synced.time_s)


def run_live(pipeline: CapturePipeline, seconds: float, warmup_s: float = 3.0) -> dict:
    """Run a pipeline for warm-up + ``seconds``; measure after the warm-up."""
    q = pipeline.subscribe(maxsize=1024)
    # room for 200 poses/s over the whole run (camera frames and IMU-only instants), allocated
    # and touched before the first memory sample: about 1 MB for the 10-minute soak
    latencies = LatencyLog(int((seconds + warmup_s + 5.0) * 200))
    stop = threading.Event()
    collector = threading.Thread(target=_collect, args=(q, stop, latencies), name="bench-collector", daemon=True)
    pipeline.start()
    collector.start()
    try:
        time.sleep(warmup_s)
        s0 = pipeline.stats()
        latencies.clear()
        memory = []
        t0 = time.monotonic()
        while time.monotonic() - t0 < seconds:
            time.sleep(1.0)
            memory.append((time.monotonic() - t0, rss_mb()))
        elapsed = time.monotonic() - t0
        s1 = pipeline.stats()
    finally:
        stop.set()
        pipeline.stop()
        collector.join(2.0)
    lat_ms, capture_ms = (latencies.values() * 1e3).T  # P each: from the oldest input, from the frame instant
    t_mem, mb = (np.array(x) for x in zip(*memory)) if memory else (np.zeros(1), np.zeros(1))
    # the second half: a fit from 10 s counted the buffers filling up (4096 IMU samples, ~70 s) as growth
    late = t_mem >= 0.5 * seconds
    slope = float(np.polyfit(t_mem[late], mb[late], 1)[0] * 60.0) if late.sum() >= 3 else None
    frames = s1.frames_in - s0.frames_in
    return {
        "seconds": round(elapsed, 2),
        "pose_source": s1.pose_source,
        "poses": s1.poses - s0.poses,
        "poses_per_s": round((s1.poses - s0.poses) / elapsed, 2),
        "camera_frames": frames,
        "frames_dropped": s1.frames_dropped - s0.frames_dropped,
        "imu_only_frames": s1.imu_only_frames - s0.imu_only_frames,
        "source_errors": s1.source_errors - s0.source_errors,
        "latency_ms_median": round(float(np.median(lat_ms)), 2) if len(lat_ms) else None,
        "latency_ms_p95": round(float(np.percentile(lat_ms, 95)), 2) if len(lat_ms) else None,
        "latency_from_capture_ms_median": round(float(np.median(capture_ms)), 2) if len(lat_ms) else None,
        "latency_from_capture_ms_p95": round(float(np.percentile(capture_ms, 95)), 2) if len(lat_ms) else None,
        "oldest_input_before_capture_ms_median": round(float(np.median(lat_ms - capture_ms)), 2) if len(lat_ms) else None,
        "latency_poses_not_logged": latencies.overflow,
        "stage_ms_median": {k: round(v, 2) for k, v in s1.stage_ms_median.items()},
        "memory_mb_start": round(float(mb[0]), 1),
        "memory_mb_end": round(float(mb[-1]), 1),
        "memory_mb_peak": round(float(mb.max()), 1),
        "memory_mb_per_min": None if slope is None else round(slope, 3),
        # the curve, to tell a leak (keeps climbing) from allocator growth that levels off
        "memory_mb_each_min": [round(float(m), 1) for m in mb[np.searchsorted(t_mem, np.arange(0.0, t_mem[-1] + 1e-9, 60.0))]],
        "device_rates_hz": {k: round(v.rate_hz, 1) for k, v in s1.devices.items()},
        "device_dropped": {k: v.dropped for k, v in s1.devices.items()},
    }


def run_unthrottled(source: ModelPoseSource, n_frames: int, seed: int, record_frames: int = 300) -> dict:
    """Record demo frames with the ground truth, then push them through the model stage flat out."""
    recorder = build_demo_pipeline(config=DemoConfig(seed=seed))
    q = recorder.subscribe(maxsize=4096)
    recorder.start()
    try:
        deadline = time.monotonic() + 60.0
        while q.qsize() < record_frames and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        recorder.stop()
    frames, truth = [], []
    while not q.empty():
        synced, pose = q.get_nowait()
        frames.append(synced)
        truth.append(pose.joints_world_m)
    if not frames:
        return {"error": "no frames recorded"}
    source.set_calibration(recorder.demo.true_calibration(), camera=recorder.demo.camera_model)
    # accuracy on the demo: one pass over the recorded frames, in order, from a fresh state
    source.reset()
    predicted = np.array([source.estimate(f).joints_world_m for f in frames])
    truth_arr = np.array(truth)
    from vimcan_core.metrics import mpjpe_mm, p_mpjpe_mm

    skip = min(10, len(frames) // 3)  # the first frames warm the streaming state up
    accuracy = {"frames": len(frames) - skip,
                "mpjpe_mm": round(mpjpe_mm(predicted[skip:], truth_arr[skip:]), 1),
                "p_mpjpe_mm": round(p_mpjpe_mm(predicted[skip:], truth_arr[skip:]), 1)}
    source.reset()
    for f in frames[:10]:  # warm-up
        source.estimate(f)
    t0, c0 = time.perf_counter(), time.process_time()
    for k in range(n_frames):
        source.estimate(frames[k % len(frames)])
    elapsed, cpu = time.perf_counter() - t0, time.process_time() - c0
    # CPU time per pose hardly depends on what else the machine runs: 1000 / it is the rate an idle core would give
    return {"poses": n_frames, "poses_per_s": round(n_frames / elapsed, 2), "ms_per_pose": round(1e3 * elapsed / n_frames, 3),
            "cpu_ms_per_pose": round(1e3 * cpu / n_frames, 3), "poses_per_cpu_s": round(n_frames / cpu, 1),
            "demo_accuracy_vs_ground_truth": accuracy}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, default=30.0, help="length of the realtime run (600 for the memory soak)")
    p.add_argument("--unthrottled-frames", type=int, default=300)
    p.add_argument("--record-frames", type=int, default=300, help="demo frames recorded for the unthrottled and accuracy runs")
    p.add_argument("--weights", type=Path, default=SHIPPED_WEIGHTS)
    p.add_argument("--device", default="auto", help="cpu, cuda or auto")
    p.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: leave torch's default)")
    p.add_argument("--video", type=Path, default=DEFAULT_VIDEO, help="video file for the MediaPipe run ('' to skip)")
    p.add_argument("--video-seconds", type=float, default=20.0)
    p.add_argument("--baseline-seconds", type=float, default=10.0, help="the same demo with the ground truth as pose stage")
    p.add_argument("--realtime-source", choices=["model", "ground-truth"], default="model",
                   help="pose stage of the realtime run (ground-truth: a cheap soak of the pipeline itself)")
    p.add_argument("--video-speed", type=float, default=6.0,
                   help="playback speed of the video (6: the 5 fps test clip arrives at 30 fps, a webcam's rate)")
    p.add_argument("--skip", nargs="*", default=[], choices=["baseline", "realtime", "unthrottled", "mediapipe"])
    p.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    estimator, weights_note = make_estimator(args.weights, args.device)
    result: dict = {
        "benchmark": "live_pipeline",
        "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {
            "platform": platform.platform(), "python": platform.python_version(), "cpus": os.cpu_count(),
            "load_average_1min": round(os.getloadavg()[0], 2), "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(),
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        },
        "model": {"estimator": getattr(estimator, "description", type(estimator).__name__),
                  "backend": str(getattr(estimator, "backend", "")), "weights": weights_note},
    }
    source = ModelPoseSource(estimator)
    if "baseline" not in args.skip:  # the pipeline's own cost: simulated devices, sync, fan-out
        result["baseline_ground_truth"] = run_live(build_demo_pipeline(), args.baseline_seconds)
    if "unthrottled" not in args.skip:
        result["unthrottled"] = run_unthrottled(source, args.unthrottled_frames, seed=1, record_frames=args.record_frames)
    if "realtime" not in args.skip:
        source.calibration = None  # the demo sets its own
        pipeline = build_demo_pipeline(pose_source=source if args.realtime_source == "model" else None)
        result["realtime"] = run_live(pipeline, args.seconds)
        result["realtime"]["keeps_up_at_camera_rate"] = (
            result["realtime"]["frames_dropped"] == 0 and result["realtime"]["poses"] >= 0.95 * result["realtime"]["camera_frames"])
    if "mediapipe" not in args.skip and str(args.video) and args.video.is_file():
        from sensors.camera.camera_device import CameraDevice
        from sensors.camera.webcam import PlaybackMode, WebcamConfig

        rig = build_demo_pipeline().demo
        camera = CameraDevice(WebcamConfig(source=str(args.video), playback=PlaybackMode.REALTIME, loop=True,
                                           speed=args.video_speed),
                              device_id="video")
        source.set_calibration(rig.true_calibration(), camera=None)
        pipeline = CapturePipeline(dict(rig.imus), camera, source)
        result["mediapipe"] = {"video": args.video.name, "video_speed": args.video_speed,
                               **run_live(pipeline, args.video_seconds, warmup_s=5.0)}
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
