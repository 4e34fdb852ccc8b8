"""`vimcan devices`: the serial ports and BLE IMUs this computer can see, and what they are."""

from __future__ import annotations

import argparse
import json
import sys


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "devices",
        help="list serial ports and BLE IMUs, with what they are recognised as",
        description="List serial ports (recognised by USB id; --probe listens for WitMotion frames or "
                    "line-protocol lines to tell for sure) and, with --ble, BLE IMUs in range.",
    )
    p.add_argument("--probe", action="store_true", help="listen on each sensor-like port to identify the protocol and baud")
    p.add_argument("--port", action="append", default=[], metavar="PATH",
                   help="also list (and with --probe, probe) this port, e.g. a /dev/serial/by-id link or a pty")
    p.add_argument("--baud", action="append", type=int, default=[], metavar="BAUD",
                   help="baud rate(s) to probe at (default: the likely ones for the chip)")
    p.add_argument("--listen", type=float, default=0.6, metavar="SECONDS", help="probe time per baud rate (default 0.6)")
    p.add_argument("--ble", action="store_true", help="scan for BLE IMUs (WitMotion BLE 5.0, Movella DOT)")
    p.add_argument("--ble-timeout", type=float, default=5.0, metavar="SECONDS", help="BLE scan time (default 5)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=run)


def _ble_row(item) -> dict:
    """A BLE scan result as a dict, whatever the scanner returns (dataclass, object or tuple)."""
    if isinstance(item, dict):
        return {str(k): v for k, v in item.items()}
    fields = ("address", "name", "kind", "recognised_as", "rssi", "rssi_dbm", "spec")
    row = {f: getattr(item, f) for f in fields if hasattr(item, f)}
    for k, v in list(row.items()):
        if hasattr(v, "value"):
            row[k] = v.value
    if "spec" not in row and row.get("kind") in ("witmotion-ble", "dot") and row.get("address"):
        row["spec"] = f"{row['kind']}:{row['address']}"
    return row or {"device": str(item)}


def run(args: argparse.Namespace) -> int:
    from sensors import discovery
    from vimcan_core.errors import DeviceError

    ports = discovery.list_serial_ports()
    known = {p.port for p in ports}
    ports += [discovery.explicit_port(path) for path in args.port if path not in known]
    if args.probe:
        ports = discovery.probe_ports(ports, listen_s=args.listen, bauds=args.baud or None)
    ble_rows: list[dict] = []
    ble_error = None
    if args.ble:
        try:
            ble_rows = [_ble_row(item) for item in discovery.scan_ble(args.ble_timeout)]
        except DeviceError as exc:
            ble_error = str(exc)

    if args.json:
        out = {
            "serial": [{
                "port": p.port, "stable_path": p.stable_path, "usb_id": p.usb_id or None, "chip": p.usb.chip if p.usb else None,
                "description": p.description, "serial_number": p.serial_number,
                "recognised_as": p.recognised_as, "spec": p.suggested_spec,
                "probe": None if p.probe is None else {
                    "detected": p.probe.detected.name.lower(), "baud": p.probe.baud, "packets": p.probe.packets,
                    "bytes": p.probe.bytes_heard, "detail": p.probe.detail},
            } for p in ports],
            "ble": ble_rows if args.ble else None,
            "ble_error": ble_error,
        }
        print(json.dumps(out, indent=2))
        return 0

    print("Serial ports:")
    if not ports:
        print("  none found (plug the sensor in; on Linux check `dmesg` and that you are in the 'dialout' group)")
    else:
        rows = [("PORT", "USB ID", "CHIP", "RECOGNISED AS", "TRY")]
        for p in ports:
            guess = p.recognised_as
            if p.probe is not None and p.probe.detected not in (discovery.Detected.WITMOTION, discovery.Detected.LINE):
                guess += f" [probe: {p.probe.detected.value}]"
            rows.append((p.port, p.usb_id or "-", p.usb.chip if p.usb else "-", guess,
                         f"vimcan monitor {p.suggested_spec}" if p.suggested_spec else "-"))
        widths = [max(len(r[i]) for r in rows) for i in range(4)]
        for r in rows:
            print("  " + "  ".join(c.ljust(w) for c, w in zip(r[:4], widths)) + "  " + r[4])
        for p in ports:
            if p.stable_path:
                print(f"  {p.port} is also {p.stable_path} (a name that stays the same when re-plugged)")
        if not args.probe:
            print("  (--probe listens to each port to identify WitMotion sensors and line-protocol boards)")
    print("BLE IMUs:")
    if not args.ble:
        print("  not scanned (add --ble)")
    elif ble_error:
        print(f"  {ble_error}")
    elif not ble_rows:
        print(f"  none found in {args.ble_timeout:g} s (switch the sensors on; a connected DOT does not advertise)")
    else:
        for row in ble_rows:
            print("  " + "  ".join(f"{k}={v}" for k, v in row.items() if v is not None))
    sys.stdout.flush()
    return 0
