"""`vimcan devices` and `vimcan monitor` end to end: the real CLI, real drivers, ptys as ports.

Only the hardware layer is replaced: the OS port listing (pyserial's ``comports``), the
sensors (a thread writing real frames into a pty) and the BLE radio (the scanner module).
"""

from __future__ import annotations

import csv
import json
import os
import sys
import threading
import tty
import types
from pathlib import Path

import numpy as np
import pytest

from app.cli import main
from sensors import discovery
from sensors.protocols import line as lp
from sensors.protocols import witmotion as wm
from vimcan_core.rotations import quat_angle


class Streamer:
    """A pty whose master end streams ``frame(k)`` every ``period_s`` from a thread."""

    def __init__(self, frame, period_s: float = 0.01) -> None:
        self.master, slave = os.openpty()
        tty.setraw(slave)
        self.path = os.ttyname(slave)
        os.close(slave)
        self.frame = frame
        self.period_s = period_s
        self.sent = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        k = 0
        while not self._stop.wait(self.period_s):
            try:
                os.write(self.master, self.frame(k))
            except OSError:
                return
            k += 1
            self.sent = k

    def __enter__(self) -> "Streamer":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(2)
        os.close(self.master)


def wit_frame(k: int) -> bytes:
    yaw = (k % 300) - 150.0
    return wm.encode_acc((0.0, 0.0, 1.0)) + wm.encode_gyro((0.0, 0.0, 5.0)) + wm.encode_angle((0.0, 0.0, yaw)) \
        + wm.encode_quat(tuple(wm.euler_to_quat([0.0, 0.0, yaw])))


def line_frame(k: int) -> bytes:
    q = (np.cos(k * 0.01), 0.0, 0.0, np.sin(k * 0.01))
    head = b"I,board,ESP32 + BNO085\n" if k == 0 else b""
    return head + lp.format_sample(lp.LineSample(0, k % 65536, k * 10_000, q, (0.0, 0.0, 0.1)))


def fake_comports():
    P = types.SimpleNamespace
    return [
        P(device="/dev/ttyUSB0", description="USB Serial", vid=0x1A86, pid=0x7523, serial_number=None),
        P(device="/dev/ttyACM0", description="USB JTAG/serial debug unit", vid=0x303A, pid=0x1001, serial_number="F4:12"),
        P(device="/dev/ttyUSB1", description="MTi USB converter", vid=0x2639, pid=0x0017, serial_number="0BXX"),
        P(device="/dev/ttyS0", description="n/a", vid=None, pid=None, serial_number=None),
    ]


def test_devices_recognises_ports_by_usb_id(monkeypatch, capsys) -> None:
    monkeypatch.setattr("serial.tools.list_ports.comports", fake_comports)
    assert main(["devices"]) == 0
    text = capsys.readouterr().out
    assert "/dev/ttyUSB0  1A86:7523  CH340" in text and "vimcan monitor witmotion:/dev/ttyUSB0@9600" in text
    assert "ESP32 board (S2/S3/C3/C6)" in text and "vimcan monitor line:/dev/ttyACM0@115200" in text
    assert "Xsens MTi or Awinda station" in text and "not scanned (add --ble)" in text
    assert main(["devices", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    by_port = {p["port"]: p for p in out["serial"]}
    assert by_port["/dev/ttyUSB0"]["chip"] == "CH340" and by_port["/dev/ttyS0"]["recognised_as"] == "unknown serial port"
    assert by_port["/dev/ttyUSB1"]["spec"] is None and out["ble"] is None


def test_devices_probe_identifies_witmotion_and_line_boards(monkeypatch, capsys) -> None:
    monkeypatch.setattr("serial.tools.list_ports.comports", lambda: [])
    with Streamer(wit_frame) as wit, Streamer(line_frame) as board:
        code = main(["devices", "--json", "--probe", "--port", wit.path, "--port", board.path,
                     "--baud", "115200", "--listen", "0.3"])
    assert code == 0
    out = {p["port"]: p for p in json.loads(capsys.readouterr().out)["serial"]}
    assert out[wit.path]["probe"]["detected"] == "witmotion" and out[wit.path]["probe"]["packets"] >= 12
    assert out[wit.path]["spec"] == f"witmotion:{wit.path}@115200"
    assert out[board.path]["probe"]["detected"] == "line"
    assert out[board.path]["spec"] == f"line:{board.path}@115200"


def test_detect_protocol_on_plain_bytes() -> None:
    assert discovery.detect_protocol(b"".join(wit_frame(k) for k in range(3)))[:2] == (discovery.Detected.WITMOTION, 12)
    assert discovery.detect_protocol(b"hello world\r\n" * 20)[0] == discovery.Detected.UNKNOWN_DATA
    assert discovery.detect_protocol(b"")[0] == discovery.Detected.SILENT
    kind, n, info = discovery.detect_protocol(b"".join(line_frame(k) for k in range(5)))
    assert (kind, n, info) == (discovery.Detected.LINE, 5, "board=ESP32 + BNO085")


def test_devices_ble_scan_results_and_failures(monkeypatch, capsys) -> None:
    monkeypatch.setattr("serial.tools.list_ports.comports", lambda: [])
    found = [types.SimpleNamespace(address="D4:22:CD:00:11:22", name="Movella DOT", kind="dot", rssi_dbm=-60)]
    scanner = types.ModuleType("sensors.drivers.ble_scan")
    scanner.scan_ble = lambda timeout_s: found if timeout_s == 2.0 else []
    monkeypatch.setitem(sys.modules, "sensors.drivers.ble_scan", scanner)
    assert main(["devices", "--ble", "--ble-timeout", "2"]) == 0
    assert ("address=D4:22:CD:00:11:22  name=Movella DOT  kind=dot  rssi_dbm=-60  spec=dot:D4:22:CD:00:11:22"
            in capsys.readouterr().out)

    def broken(timeout_s):
        raise OSError("org.bluez not found")

    scanner.scan_ble = broken
    assert main(["devices", "--ble"]) == 0  # the serial list still comes out
    text = capsys.readouterr().out
    assert "BLE scan failed: OSError: org.bluez not found; is Bluetooth on" in text


def test_monitor_replays_a_file_to_csv(shared_data: Path, tmp_path: Path, capsys) -> None:
    path = shared_data / "imu" / "movella_dot" / "LFemur_20210820_202113_831.csv"
    out = tmp_path / "out.csv"
    assert main(["monitor", f"file:{path}?speed=0", "--csv", str(out), "--interval", "0.2"]) == 0
    text = capsys.readouterr().out
    assert "done: 195 samples" in text and "dropped 157" in text and "195 rows written" in text
    rows = list(csv.DictReader(open(out)))
    assert len(rows) == 195 and rows[0]["seq"] == "1" and rows[-1]["seq"] == "352"
    assert float(rows[0]["quat_w"]) == pytest.approx(0.411829, abs=1e-5)  # the file's first row, normalised


def test_monitor_streams_a_serial_witmotion(tmp_path: Path, capsys) -> None:
    out = tmp_path / "wit.csv"
    with Streamer(wit_frame, period_s=0.01) as wit:
        code = main(["monitor", f"witmotion:{wit.path}@115200", "--seconds", "1.0", "--csv", str(out),
                     "--interval", "0.25"])
    assert code == 0
    text = capsys.readouterr().out
    status = [ln for ln in text.splitlines() if " Hz " in ln]
    assert len(status) >= 4 and "streaming" in status[-1] and "corrupt 0" in status[-1]
    rows = list(csv.DictReader(open(out)))
    assert 20 <= len(rows) <= 110  # 100 Hz for 1 s, minus start-up; generous for a loaded machine
    q = np.array([[float(r[c]) for c in ("quat_w", "quat_x", "quat_y", "quat_z")] for r in rows])
    yaw = np.degrees(2 * np.arctan2(q[:, 3], q[:, 0]))
    steps = np.round(np.diff(yaw))
    assert np.all((steps == 1) | (steps == -299))  # consecutive frames, none lost or invented
    assert np.allclose([float(rows[0][f"gyro_{a}_dps"]) for a in "xyz"], [0, 0, 5], atol=0.07)
    assert all(r["device_time_s"] == "" for r in rows)  # no 0x50 time frames: no device clock
    assert np.max(quat_angle(q, q / np.linalg.norm(q, axis=1, keepdims=True))) < 1e-6


def test_monitor_reports_a_missing_port(capsys) -> None:
    assert main(["monitor", "line:/dev/does-not-exist@115200", "--seconds", "0.6", "--interval", "0.25"]) == 1
    captured = capsys.readouterr()
    assert "no samples from line:/dev/does-not-exist" in captured.err and "cannot open serial port" in captured.err
    assert "last error: line:/dev/does-not-exist: cannot open serial port" in captured.out  # shown while it retries


def test_monitor_rejects_a_bad_spec(capsys) -> None:
    assert main(["monitor", "line:/dev/ttyACM0?speed=2"]) == 1
    assert "unknown option 'speed' for line" in capsys.readouterr().err


def test_by_id_links_are_suggested_because_they_survive_replugging(tmp_path: Path) -> None:
    with Streamer(wit_frame) as wit:
        by_id = tmp_path / "by-id"
        by_id.mkdir()
        (by_id / "usb-1a86_USB_Serial-if00-port0").symlink_to(wit.path)
        P = types.SimpleNamespace
        ports = discovery.list_serial_ports(
            lambda: [P(device=wit.path, description="USB Serial", vid=0x1A86, pid=0x7523, serial_number=None)], by_id)
        (info,) = discovery.probe_ports(ports, listen_s=0.3, bauds=[115200])
    assert info.stable_path == str(by_id / "usb-1a86_USB_Serial-if00-port0")
    assert info.suggested_spec == f"witmotion:{info.stable_path}@115200"
    assert info.recognised_as == "WitMotion IMU at 115200 baud"


def test_probe_leaves_a_port_in_use_alone() -> None:
    """A port held by a running device (exclusive lock, as the drivers take it) is reported in
    use, not read beside it; once released the same probe recognises the IMU."""
    import serial

    with Streamer(wit_frame) as wit:
        holder = serial.Serial(wit.path, 115200, timeout=0.05, exclusive=True)
        try:
            busy = discovery.probe_port(wit.path, bauds=[115200], listen_s=0.3)
        finally:
            holder.close()
        free = discovery.probe_port(wit.path, bauds=[115200], listen_s=0.3)
    assert busy.detected is discovery.Detected.UNAVAILABLE and "in use" in busy.detail
    assert free.detected is discovery.Detected.WITMOTION


def test_monitor_streams_the_simulated_imu(tmp_path: Path, capsys) -> None:
    out = tmp_path / "sim.csv"
    assert main(["monitor", "sim:left_forearm?rate=60", "--seconds", "0.8", "--csv", str(out), "--interval", "0.4"]) == 0
    rows = list(csv.DictReader(open(out)))
    assert len(rows) >= 20
    q = np.array([[float(r[c]) for c in ("quat_w", "quat_x", "quat_y", "quat_z")] for r in rows])
    assert np.allclose(np.linalg.norm(q, axis=1), 1.0, atol=1e-6)
    dt = np.diff([float(r["device_time_s"]) for r in rows])
    assert np.allclose(dt, 1 / 60, atol=1e-6)  # the simulated clock ticks at its rate; nothing dropped
    assert "sim:left_forearm" in capsys.readouterr().out
