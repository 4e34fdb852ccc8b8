"""`vimcan record`: record a take headless.

    vimcan record --demo --seconds 10 --out DIR [--name NAME] [--notes TEXT]
    vimcan record --imu SITE=SPEC [--imu SITE=SPEC ...] [--profile PROFILE.json] [--height-cm CM] --seconds 10 --out DIR

``--demo`` records the simulated demo rig (six IMUs and a camera on a procedural performer,
the simulation's ground truth as the pose stage). ``--imu`` records real (or ``sim:``) IMUs
named by device specs (``sensors.spec``), one per site; without a model on the command line
the poses are left empty (NaN) and everything measured is kept in raw.csv and inputs.csv, so
``vimcan export --resolve TAKE`` can solve it later when ``--profile`` gave the calibration.
The performer's height (``--height-cm``, else the profile's) goes into take.json; the re-solve
scales the skeleton to it.

The take goes into a new folder under DIR. Ctrl-C stops early and keeps the take. A full disk
or a vanished folder stops the recording with a message; what was written stays readable.
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
    p.add_argument("--imu", action="append", default=[], metavar="SITE=SPEC",
                   help="an IMU at a site, e.g. left_forearm=witmotion:/dev/ttyUSB0@115200 (repeat per sensor)")
    p.add_argument("--profile", type=Path, default=None,
                   help="calibration profile (JSON from the calibration wizard), stored in take.json for --resolve")
    p.add_argument("--seconds", type=float, default=10.0, help="how long to record (default 10)")
    p.add_argument("--out", type=Path, default=Path("takes"), help="folder that receives the take folder (default ./takes)")
    p.add_argument("--name", default=None, help="take folder name (default take-YYYYmmdd-HHMMSS)")
    p.add_argument("--notes", default="", help="notes stored in take.json")
    p.add_argument("--height-cm", type=float, default=None,
                   help="the performer's height, stored in take.json; --resolve scales the skeleton to it "
                        "(default: the profile's)")
    p.add_argument("--seed", type=int, default=0, help="demo performer seed")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from sensors.export import calibration_to_dict
    from sensors.recording import RecorderConfig, RecorderState, TakeRecorder, imu_sites_of
    from vimcan_core.body_scale import height_from_cm
    from vimcan_core.errors import VimcanError
    from vimcan_core.take import TakeMeta, new_take_folder

    if args.demo == bool(args.imu):
        raise VimcanError("choose what to record: --demo, or one --imu SITE=SPEC per sensor "
                          "(e.g. --imu pelvis=witmotion:/dev/ttyUSB0@115200; `vimcan devices` lists them)")
    if not args.seconds > 0:
        raise VimcanError(f"--seconds must be positive, got {args.seconds}")
    height = None if args.height_cm is None else height_from_cm(args.height_cm)
    config = RecorderConfig()
    if args.demo:
        from sensors.demo import DemoConfig, build_demo_pipeline

        pipeline = build_demo_pipeline(config=DemoConfig(seed=args.seed))
        rig = getattr(pipeline, "demo", None)
        camera = getattr(rig, "camera_model", None)
        true_calibration = getattr(rig, "true_calibration", None)
        calibration = None if true_calibration is None else true_calibration()
        profile_name = "demo rig (exact)"
        sites = imu_sites_of(list(pipeline.devices()))
    else:
        pipeline, sites = _device_pipeline(args.imu)
        camera, calibration, profile_name = None, None, None
        if args.profile is not None:
            from vimcan_core.calibration_profile import load_profile

            profile = load_profile(args.profile)
            calibration, camera, profile_name = profile.calibration, profile.camera, profile.name
            height = height if height is not None else profile.performer_height_m
        config = RecorderConfig(write_bvh=False)  # no poses to write until --resolve
    devices = list(pipeline.devices())
    folder = new_take_folder(args.out, args.name)
    meta = TakeMeta(
        name=folder.name, notes=args.notes, model=pipeline.pose_source.name, backend="cpu",
        camera=None if camera is None else dataclasses.asdict(camera), calibration_profile=profile_name,
        calibration=None if calibration is None else calibration_to_dict(calibration),
        performer_height_m=height,
    )
    q = pipeline.subscribe(RECORDER_QUEUE_SIZE)
    recorder = TakeRecorder(folder, q, devices, meta=meta, config=config, sites=sites)
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
        if (folder / name).exists():
            print(f"  {folder / name}")
    if not args.demo:
        print(f"  poses not solved yet: run `vimcan export --resolve {folder}`")
    return 0


def _device_pipeline(imu_args: list[str]):
    """A capture pipeline on the IMUs named by ``SITE=SPEC`` arguments, without a pose model.

    Returns (pipeline, device id -> site name)."""
    from sensors.pipeline import CapturePipeline
    from sensors.recording import RawOnlyPoseSource
    from sensors.spec import create_device
    from vimcan_core.errors import VimcanError
    from vimcan_core.skeleton import IMU_SITE_NAMES, ImuSite

    imus = {}
    sites: dict[str, str] = {}
    for text in imu_args:
        site_name, sep, spec = text.partition("=")
        site_name = site_name.strip().lower()
        if not sep or site_name not in IMU_SITE_NAMES or not spec.strip():
            raise VimcanError(f"--imu {text!r}: expected SITE=SPEC with SITE one of {', '.join(IMU_SITE_NAMES)}, "
                              "e.g. --imu left_forearm=witmotion:/dev/ttyUSB0@115200")
        site = ImuSite[site_name.upper()]
        if site in imus:
            raise VimcanError(f"--imu {text!r}: site {site_name} is given twice")
        device = create_device(spec.strip(), device_id=site_name)
        imus[site] = device
        sites[device.device_id] = site_name
    return CapturePipeline(imus, None, RawOnlyPoseSource()), sites
