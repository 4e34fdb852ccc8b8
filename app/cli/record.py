"""`vimcan record`: record a take headless.

    vimcan record --demo --seconds 10 --out DIR [--name NAME] [--notes TEXT]

Records the simulated demo rig (six IMUs and a camera on a procedural performer, the
simulation's ground truth as the pose stage) into a new take folder under DIR and prints
where it is. Ctrl-C stops early and keeps the take. A full disk or a vanished folder stops
the recording with a message; what was written stays readable.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import time
from pathlib import Path

log = logging.getLogger(__name__)

#: frames the recorder's subscription may hold before the pipeline drops the oldest (~34 s at 30 Hz)
RECORDER_QUEUE_SIZE = 1024


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("record", help="record a take (CSV + BVH) headless",
                       description="Record a take headless into a new folder under --out.")
    p.add_argument("--demo", action="store_true", help="record the simulated demo rig (no hardware needed)")
    p.add_argument("--seconds", type=float, default=10.0, help="how long to record (default 10)")
    p.add_argument("--out", type=Path, default=Path("takes"), help="folder that receives the take folder (default ./takes)")
    p.add_argument("--name", default=None, help="take folder name (default take-YYYYmmdd-HHMMSS)")
    p.add_argument("--notes", default="", help="notes stored in take.json")
    p.add_argument("--seed", type=int, default=0, help="demo performer seed")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from sensors.export import calibration_to_dict
    from sensors.recording import RecorderState, TakeRecorder, imu_sites_of
    from vimcan_core.errors import VimcanError
    from vimcan_core.take import TakeMeta, new_take_folder

    if not args.demo:
        raise VimcanError("recording from real devices is not wired into the command line yet; use --demo, "
                          "or record real devices from the studio window")
    if not args.seconds > 0:
        raise VimcanError(f"--seconds must be positive, got {args.seconds}")
    from sensors.demo import DemoConfig, build_demo_pipeline

    pipeline = build_demo_pipeline(config=DemoConfig(seed=args.seed))
    devices = list(pipeline.devices())
    folder = new_take_folder(args.out, args.name)
    rig = getattr(pipeline, "demo", None)
    camera = getattr(rig, "camera_model", None)
    true_calibration = getattr(rig, "true_calibration", None)
    meta = TakeMeta(
        name=folder.name, notes=args.notes, model=pipeline.pose_source.name, backend="cpu",
        camera=None if camera is None else dataclasses.asdict(camera), calibration_profile="demo rig (exact)",
        calibration=None if true_calibration is None else calibration_to_dict(true_calibration()),
    )
    q = pipeline.subscribe(RECORDER_QUEUE_SIZE)
    recorder = TakeRecorder(folder, q, devices, meta=meta, sites=imu_sites_of(devices))
    recorder.start()
    pipeline.start()
    print(f"recording {args.seconds:g} s of the demo into {folder}", flush=True)
    t0 = time.monotonic()
    try:
        next_report = 1.0
        while time.monotonic() - t0 < args.seconds and recorder.state is RecorderState.RECORDING:
            time.sleep(0.05)
            if time.monotonic() - t0 >= next_report:
                s = recorder.stats()
                log.info("%.0f s: %d frames, %d raw rows", time.monotonic() - t0, s.frames, s.raw_rows)
                next_report += 1.0
    except KeyboardInterrupt:
        print("stopped by Ctrl-C; closing the take", flush=True)
    finally:
        pipeline.stop()
        final = recorder.stop()
    if recorder.error is not None:
        raise recorder.error
    print(f"take {folder}: {final.frames} frames, {final.duration_s:.1f} s, status {final.status.value}")
    if final.frames_missed:
        print(f"  {final.frames_missed} frames never reached the recorder (the machine was too busy)")
    for dev in final.devices:
        if dev.gaps or dev.lost:
            print(f"  {dev.device_id}: {dev.gaps} drop-outs, {dev.lost} samples lost (marked in raw.csv)")
    for name in ("take.json", "poses.csv", "inputs.csv", "raw.csv", "take.bvh"):
        print(f"  {folder / name}")
    return 0
