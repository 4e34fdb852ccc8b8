"""`vimcan monitor SPEC`: stream one device in the terminal, with its live rate, state and
error counts, and optionally write every sample to CSV. The first thing to run when a
sensor misbehaves."""

from __future__ import annotations

import argparse
import sys
import time


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "monitor",
        help="stream one device: live rate, state, errors; samples to CSV",
        description="Stream one device and print its state, sample rate, dropped and corrupt packets and the "
                    "latest orientation. SPEC examples: witmotion:/dev/ttyUSB0@115200, witmotion-ble:ADDRESS, "
                    "dot:ADDRESS, line:/dev/ttyACM0@115200, sim, file:PATH?speed=4 (see sensors/spec.py).",
    )
    p.add_argument("spec", metavar="SPEC", help="the device, KIND:ADDRESS[@BAUD][?OPTIONS]")
    p.add_argument("--seconds", type=float, default=None, metavar="N",
                   help="stop after N seconds (default: until Ctrl-C, or the end of a file)")
    p.add_argument("--csv", default=None, metavar="OUT",
                   help="write the samples (host time, device time, quaternion w x y z, acceleration, gyro) here")
    p.add_argument("--interval", type=float, default=1.0, metavar="S", help="seconds between status lines (default 1)")
    p.set_defaults(func=run)


def _status_line(elapsed_s: float, stats, latest) -> str:
    age = "-" if stats.last_sample_age_s is None else f"{stats.last_sample_age_s * 1000:.0f} ms"
    q = "-"
    if latest is not None and hasattr(latest, "quat_wxyz"):
        q = "[" + " ".join(f"{v:+.3f}" for v in latest.quat_wxyz) + "]"
    battery = "" if stats.battery_pct is None else f"  battery {stats.battery_pct:.0f}%"
    offset = "" if stats.clock_offset_s is None else f"  clock offset {stats.clock_offset_s:+.4f} s"
    problem = ""
    if stats.last_error and stats.state.value in ("connecting", "disconnected", "reconnecting"):
        problem = f"\n          last error: {stats.last_error}"
    return (f"{elapsed_s:7.1f} s  {stats.state.value:<12s} {stats.rate_hz:7.1f} Hz  samples {stats.samples:7d}  "
            f"dropped {stats.dropped}  corrupt {stats.corrupt}  reconnects {stats.reconnects}  age {age}  q {q}"
            f"{offset}{battery}{problem}")


def run(args: argparse.Namespace) -> int:
    from sensors.files import MonitorCsvWriter
    from sensors.samples import ImuSample
    from sensors.spec import create_device

    device = create_device(args.spec)
    csv_file = open(args.csv, "w", encoding="utf-8", newline="") if args.csv else None
    writer = MonitorCsvWriter(csv_file) if csv_file else None
    finished = getattr(device, "finished", None)  # replayed files end
    cursor = 0
    lost = 0
    start = time.monotonic()
    next_status = start + args.interval
    print(f"monitoring {device.device_id} ({args.spec}); Ctrl-C to stop", flush=True)
    device.start()
    try:
        while True:
            now = time.monotonic()
            items, cursor, missed = device.buffer.read_since(cursor)
            lost += missed
            if writer is not None:
                writer.write(s for s in items if isinstance(s, ImuSample))
            done_file = finished is not None and finished.is_set() and cursor == device.buffer.total_pushed
            timed_out = args.seconds is not None and now - start >= args.seconds
            if now >= next_status or done_file or timed_out:
                print(_status_line(now - start, device.stats(), device.buffer.latest()), flush=True)
                next_status += args.interval
            if done_file or timed_out:
                break
            time.sleep(0.05)
    except KeyboardInterrupt:
        pass
    finally:
        device.stop()
        items, cursor, missed = device.buffer.read_since(cursor)
        lost += missed
        if writer is not None:
            writer.write(s for s in items if isinstance(s, ImuSample))
            csv_file.close()
    stats = device.stats()
    print(f"done: {stats.samples} samples in {time.monotonic() - start:.1f} s, dropped {stats.dropped}, "
          f"corrupt {stats.corrupt}, reconnects {stats.reconnects}"
          + (f", {writer.rows} rows written to {args.csv}" if writer else ""))
    if lost:
        print(f"warning: {lost} samples were overwritten in the buffer before they could be written", file=sys.stderr)
    if stats.samples == 0:
        hint = f" (last error: {stats.last_error})" if stats.last_error else ""
        print(f"vimcan monitor: no samples from {device.device_id}{hint}; check the port, the baud rate and that "
              "the sensor is on (`vimcan devices --probe`)", file=sys.stderr)
        return 1
    return 0
