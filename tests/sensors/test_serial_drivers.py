"""Serial drivers end to end through pty pairs: a fake device thread writes real frames.

The driver opens a symlink (as udev's /dev/serial/by-id/... links); "unplugging" removes
the link and closes the pty master, "plugging back" creates a new pty and points the link
at it. Only the hardware is faked: the driver, pyserial, the parser and the Device thread
are the real ones.
"""

from __future__ import annotations

import os
import random
import select
import threading
import time
import tty
from pathlib import Path
from typing import Callable

import numpy as np
import pytest

from sensors.device import DeviceConfig, DeviceState
from sensors.drivers.line_serial import LineSerialDevice
from sensors.drivers.witmotion_serial import WitMotionSerialDevice, WitMotionSetup
from sensors.protocols import line as lp
from sensors.protocols import witmotion as wm
from vimcan_core.rotations import quat_angle, quat_rotate

FAST = DeviceConfig(stall_after_s=0.3, reconnect_initial_s=0.05, reconnect_max_s=0.2)


def wait_until(cond: Callable[[], bool], timeout_s: float = 5.0, what: str = "condition") -> None:
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        if cond():
            return
        time.sleep(0.01)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


class FakePort:
    """A pty pair behind a symlink: the master end is the device, the link is the port path."""

    def __init__(self, link: Path) -> None:
        self.link = link
        self.master: int | None = None
        self.received = bytearray()  # what the driver wrote to the device
        self.rng = random.Random(7)

    def plug(self) -> None:
        master, slave = os.openpty()
        tty.setraw(slave)  # no line discipline: bytes pass unchanged before pyserial configures it
        slave_path = os.ttyname(slave)
        os.close(slave)
        self.master = master
        if self.link.is_symlink():
            self.link.unlink()
        self.link.symlink_to(slave_path)

    def unplug(self) -> None:
        self.link.unlink()
        os.close(self.master)
        self.master = None

    def write(self, data: bytes, split: bool = True) -> None:
        """Write in random small pieces (split reads on the other side)."""
        i = 0
        while i < len(data):
            n = self.rng.randint(1, 23) if split else len(data)
            os.write(self.master, data[i:i + n])
            i += n
        self.drain()

    def drain(self) -> None:
        while self.master is not None and select.select([self.master], [], [], 0)[0]:
            try:
                chunk = os.read(self.master, 4096)
            except OSError:
                return
            if not chunk:
                return
            self.received += chunk


# --------------------------------------------------------------------- WitMotion
def _yaw_of(k: int) -> float:
    return ((k * 7) % 340) - 170.0  # a distinct orientation per burst


def witmotion_burst(k: int, bad_quat: bool = False) -> bytes:
    q = wm.euler_to_quat([10.0, -5.0, _yaw_of(k)])
    quat = bytearray(wm.encode_quat(tuple(q)))
    if bad_quat:
        quat[10] ^= 0x5A
    still_acc_g = quat_rotate(q * [1, -1, -1, -1], [0.0, 0.0, 1.0])  # gravity seen in the tilted sensor's frame
    return (wm.encode_time(1000.0 + 0.01 * k) + wm.encode_acc(tuple(still_acc_g)) + wm.encode_gyro((1.0, 2.0, 3.0))
            + wm.encode_angle((10.0, -5.0, _yaw_of(k))) + bytes(quat))


def _burst_index(sample) -> int:
    return int(round((sample.device_time_s - 1000.0) / 0.01))


def test_witmotion_serial_end_to_end_with_faults_and_reconnection(tmp_path: Path) -> None:
    port = FakePort(tmp_path / "ttyWIT")
    port.plug()
    setup = WitMotionSetup(rate_hz=100, enable_quaternion=True, enable_time=True)
    dev = WitMotionSerialDevice(str(port.link), 115200, device_id="wit", setup=setup, config=FAST)
    phase = {"name": "start"}
    go_unplug = threading.Event()
    go_replug = threading.Event()
    done = threading.Event()
    reopened = threading.Event()  # the driver reopened the port after the unplug
    bad_bursts = {15, 30, 45}

    def device_script() -> None:
        # phase 1: 60 bursts with garbage, split writes and three bad checksums
        for k in range(60):
            garbage = bytes(port.rng.randrange(256) for _ in range(port.rng.randint(0, 9))).replace(b"\x55", b"\x00")
            port.write(garbage + witmotion_burst(k, bad_quat=k in bad_bursts))
            time.sleep(0.004)
        phase["name"] = "paused"
        go_unplug.wait(10)  # pause: nothing is written until the test saw STALLED
        port.unplug()
        phase["name"] = "unplugged"
        go_replug.wait(10)
        port.plug()
        reopened.wait(10)  # pyserial flushes its input on open: a device talking earlier is not heard
        for k in range(100, 160):
            port.write(witmotion_burst(k))
            time.sleep(0.004)
        done.set()

    fake = threading.Thread(target=device_script, daemon=True)
    dev.add_state_listener(lambda _id, state: state == DeviceState.STREAMING and phase["name"] == "unplugged" and reopened.set())
    dev.start()
    try:
        # the driver configures the sensor on connect: unlock, output content, rate (no save)
        wait_until(lambda: dev.state == DeviceState.STREAMING , 3, "connection")
        fake.start()
        wait_until(lambda: (port.drain() or True) and len(port.received) >= 15, 3, "configuration commands")
        content = wm.Content.ACC | wm.Content.GYRO | wm.Content.ANGLE | wm.Content.QUATERNION | wm.Content.TIME
        assert bytes(port.received) == wm.unlock_command() + wm.content_command(content) + wm.rate_command(100)

        wait_until(lambda: phase["name"] == "paused" and dev.stats().samples >= 57, 10, "the first 57 samples")
        wait_until(lambda: dev.state == DeviceState.STALLED, 3, "STALLED during the pause")
        first = dev.buffer.snapshot()
        stats = dev.stats()
        assert stats.corrupt == 3 and stats.samples == 57
        got = [_burst_index(s) for s in first]
        assert got == [k for k in range(60) if k not in bad_bursts]
        for s in first:
            expected = wm.euler_to_quat([10.0, -5.0, _yaw_of(_burst_index(s))])
            assert quat_angle(np.asarray(s.quat_wxyz), expected) < np.radians(0.05)
            assert s.gyro_dps == pytest.approx((1.0, 2.0, 3.0), abs=0.07)
            assert np.linalg.norm(s.acc_free_mps2) < 0.02  # a still sensor: gravity removed, nothing left
        assert stats.clock_offset_s is not None
        assert stats.last_sample_age_s >= FAST.stall_after_s

        go_unplug.set()
        wait_until(lambda: dev.stats().reconnects >= 1, 5, "the loss to be noticed")
        assert dev.state in (DeviceState.DISCONNECTED, DeviceState.RECONNECTING, DeviceState.CONNECTING)
        assert "unplugged" in (dev.stats().last_error or "") or "cannot open" in (dev.stats().last_error or "")
        go_replug.set()
        wait_until(done.is_set, 10, "the second phase to be written")
        wait_until(lambda: dev.stats().samples >= 117, 5, "samples after reconnection")
        assert reopened.is_set()
        assert dev.state == DeviceState.STREAMING
        second = [_burst_index(s) for s in dev.buffer.snapshot()[57:]]
        assert second == list(range(100, 160))
        assert dev.stats().rate_hz > 50 and dev.stats().corrupt == 3
    finally:
        go_unplug.set()
        go_replug.set()
        dev.stop()
        fake.join(5)
    assert dev.state == DeviceState.STOPPED


def test_witmotion_without_quaternion_output_uses_angles(tmp_path: Path) -> None:
    port = FakePort(tmp_path / "ttyW2")
    port.plug()
    dev = WitMotionSerialDevice(str(port.link), device_id="w2", config=FAST)
    dev.start()
    try:
        wait_until(lambda: dev.state == DeviceState.STREAMING, 3, "connection")
        for yaw in (-90.0, -45.0, 0.0, 45.0, 90.0):  # two bursts are used to learn that no quaternion comes
            port.write(wm.encode_acc((0.0, 0.0, 1.0)) + wm.encode_gyro((0, 0, 0)) + wm.encode_angle((0.0, 0.0, yaw)))
        wait_until(lambda: dev.stats().samples == 3, 3, "three samples")
        xs = [quat_rotate(np.asarray(s.quat_wxyz), [1.0, 0, 0]) for s in dev.buffer.snapshot()]
        assert np.allclose(xs, [[1, 0, 0], [np.sqrt(0.5), np.sqrt(0.5), 0], [0, 1, 0]], atol=1e-3)
        assert all(s.device_time_s is None for s in dev.buffer.snapshot())  # no 0x50 frames: no device time
        assert port.received == b""  # nothing to configure: nothing written
    finally:
        dev.stop()
        port.unplug()


# --------------------------------------------------------------------- line protocol
def test_line_device_end_to_end_with_gaps_bad_lines_and_reconnection(tmp_path: Path) -> None:
    port = FakePort(tmp_path / "ttyACM")
    port.plug()
    dev = LineSerialDevice(str(port.link), 115200, sensor=1, device_id="esp", config=FAST)
    skipped = {20, 21, 22, 50}  # sequence numbers never sent: 4 dropped
    states: list[DeviceState] = []
    dev.add_state_listener(lambda _id, state: states.append(state))
    dev.start()
    try:
        wait_until(lambda: dev.state == DeviceState.STREAMING, 3, "connection")
        port.write(b"# ESP32 booting\nI,board,ESP32-S3 + BNO085\n")
        q = np.array([np.cos(0.25), 0.0, np.sin(0.25), 0.0])  # 0.5 rad about Y
        t0 = 2**32 - 300_000  # the board clock wraps during the test
        for seq in range(80):
            if seq in skipped:
                continue
            line = lp.format_sample(lp.LineSample(1, seq, (t0 + seq * 10_000) % 2**32, tuple(q), (1.0, 0.0, 0.0)))
            other = lp.format_sample(lp.LineSample(2, seq, seq, (1.0, 0.0, 0.0, 0.0), None))
            junk = b"Q,1,oops\n" if seq % 25 == 3 else b""
            port.write(line + other + junk)
            time.sleep(0.002)
        wait_until(lambda: dev.stats().samples == 76, 5, "76 samples")
        stats = dev.stats()
        assert (stats.dropped, stats.corrupt) == (4, 4)
        samples = dev.buffer.snapshot()
        assert [s.seq for s in samples] == [s for s in range(80) if s not in skipped]
        times = np.array([s.device_time_s for s in samples])
        assert np.allclose(np.diff(times), 0.01 * np.diff([s.seq for s in samples]), atol=1e-9)  # unwrapped
        # acceleration along sensor X, rotated 0.5 rad about Y into the world frame
        assert samples[0].acc_free_mps2 == pytest.approx(quat_rotate(q, [1.0, 0, 0]).tolist(), abs=1e-4)
        assert dev.info["board"] == "ESP32-S3 + BNO085"
        assert dev.other_sensor_lines == 76
        wait_until(lambda: dev.state == DeviceState.STALLED, 3, "STALLED")

        port.unplug()
        wait_until(lambda: dev.stats().reconnects >= 1, 5, "the loss")
        assert states[:3] == [DeviceState.CONNECTING, DeviceState.STREAMING, DeviceState.DISCONNECTED]
        port.plug()
        wait_until(lambda: states[-1] == DeviceState.STREAMING, 5, "reconnection")
        assert DeviceState.RECONNECTING in states
        for seq in range(1000, 1010):
            port.write(lp.format_sample(lp.LineSample(1, seq, seq * 10_000, (1.0, 0.0, 0.0, 0.0), None)))
        wait_until(lambda: dev.stats().samples == 86, 5, "samples after reconnection")
        assert dev.stats().dropped == 4  # the jump in seq across the reconnection is not a loss
    finally:
        dev.stop()


def test_witmotion_baud_change_is_sent_saved_and_followed(tmp_path: Path) -> None:
    from sensors.spec import create_device

    port = FakePort(tmp_path / "ttyW3")
    port.plug()
    dev = create_device(f"witmotion:{port.link}@9600?baud=115200&rate=200", device_id="w3", config=FAST)
    dev.start()
    try:
        wait_until(lambda: (port.drain() or True) and len(port.received) >= 20, 3, "four commands")
        assert bytes(port.received) == (wm.unlock_command() + wm.rate_command(200) + wm.baud_command(115200)
                                        + wm.save_command())
        wait_until(lambda: dev.settings.baud == 115200, 3, "the port to follow")
        for k in range(5):
            port.write(witmotion_burst(k))
        wait_until(lambda: dev.stats().samples == 5, 3, "samples at the new baud")
    finally:
        dev.stop()
        port.unplug()


def test_three_imus_of_one_board_share_its_port_and_reconnect_together(tmp_path: Path) -> None:
    from sensors.drivers.line_serial import LineBoard, LineBoardImu
    from sensors.spec import create_device

    port = FakePort(tmp_path / "ttyBOARD")
    port.plug()
    imus = [create_device(f"line:{port.link}@115200?sensor={k}", config=FAST) for k in range(3)]
    assert all(isinstance(d, LineBoardImu) for d in imus)
    for d in imus:
        d.start()
    try:
        wait_until(lambda: all(d.state == DeviceState.STREAMING for d in imus), 5, "three IMUs connected")
        assert len({id(d.board) for d in imus}) == 1  # one board object, one reader thread, one open port
        lost = {0: {7}, 1: set(), 2: {3, 4}}
        port.write(b"I,board,ESP32 + 3 x BNO085\n")
        for seq in range(20):
            for k in range(3):
                if seq not in lost[k]:
                    q = (np.cos(0.1 * k), np.sin(0.1 * k), 0.0, 0.0)
                    port.write(lp.format_sample(lp.LineSample(k, seq, 1000 * seq + k, q, None)))
            if seq == 10:
                port.write(b"Q,1,garbled\n")
            time.sleep(0.002)
        wait_until(lambda: [d.stats().samples for d in imus] == [19, 20, 18], 5, "every IMU's samples")
        for k, d in enumerate(imus):
            st = d.stats()
            assert (st.dropped, st.corrupt) == (len(lost[k]), 1)
            got = d.buffer.snapshot()
            assert [s.seq for s in got] == [s for s in range(20) if s not in lost[k]]
            assert all(s.device_id == f"line:{port.link}#{k}" for s in got)
            assert np.allclose(got[0].quat_wxyz, (np.cos(0.1 * k), np.sin(0.1 * k), 0, 0), atol=2e-5)  # 5 decimals
        assert imus[0].info["board"] == "ESP32 + 3 x BNO085"

        port.unplug()
        wait_until(lambda: all(d.stats().reconnects >= 1 for d in imus), 5, "all three to notice the loss")
        port.plug()
        wait_until(lambda: imus[0].board.connected, 5, "the board to reopen")
        wait_until(lambda: all(d.state == DeviceState.STREAMING for d in imus), 5, "all three to reconnect")
        for k in range(3):
            port.write(lp.format_sample(lp.LineSample(k, 100, 0, (1.0, 0.0, 0.0, 0.0), None)))
        wait_until(lambda: [d.stats().samples for d in imus] == [20, 21, 19], 5, "samples after reconnection")
        board = imus[0].board
    finally:
        for d in imus:
            d.stop()
    assert not board.reader.running and not LineBoard._boards  # the last IMU closed the port


# --------------------------------------------------------------------- one reader per port
def test_first_open_streams_without_a_reconnect_and_a_second_opener_is_refused(tmp_path: Path) -> None:
    """A sensor that talks from power-on: the pty is written before and while the driver opens it
    (as the studio's fake WitMotion rig does); the first open streams every burst, with no drop and
    no reconnect. A second opener of the same port (another driver, a terminal program) is refused
    with a message naming the port: two readers of one tty each take some of the bytes, and the one
    that loses a race sees "readiness to read but returned no data", a drop and a reconnect."""
    port = FakePort(tmp_path / "ttyWIT")
    port.plug()
    assert port.master is not None
    os.set_blocking(port.master, False)
    written = {"bursts": 0}
    stop = threading.Event()

    def sensor() -> None:  # one burst every 4 ms, from before the driver opens the port
        k = 0
        while not stop.is_set():
            try:
                os.read(port.master, 4096)  # the driver's set-up commands
            except BlockingIOError:
                pass
            except OSError:  # EIO: nobody has the port open yet; the burst is lost on the cable
                stop.wait(0.004)
                continue
            try:
                os.write(port.master, witmotion_burst(k))
            except BlockingIOError:  # the reader fell behind: a full pty drops the burst
                stop.wait(0.004)
                continue
            k += 1
            written["bursts"] = k
            stop.wait(0.004)

    fake = threading.Thread(target=sensor, daemon=True)
    fake.start()
    time.sleep(0.05)
    setup = WitMotionSetup(enable_quaternion=True, enable_time=True)
    dev = WitMotionSerialDevice(str(port.link), 115200, device_id="wit", setup=setup, config=FAST)
    intruder = WitMotionSerialDevice(str(port.link), 115200, device_id="intruder", config=FAST)
    dev.start()
    try:
        wait_until(lambda: dev.stats().samples >= 40, 5, "the first 40 samples")
        intruder.start()
        wait_until(lambda: intruder.stats().reconnects >= 2, 5, "the second opener to be refused twice")
        error = intruder.stats().last_error or ""
        assert "in use" in error and str(port.link) in error, error
        assert intruder.stats().samples == 0 and intruder.state != DeviceState.STREAMING
        before = dev.stats().samples
        wait_until(lambda: dev.stats().samples >= before + 60, 5, "60 more samples beside the refused opener")
        stats = dev.stats()
        assert stats.reconnects == 0 and stats.last_error is None, stats.last_error
        got = [_burst_index(s) for s in dev.buffer.snapshot()]
        assert got == list(range(got[0], got[0] + len(got))), "every burst from the first one heard, none taken"
    finally:
        intruder.stop()
        dev.stop()
        stop.set()
        fake.join(2)
        port.unplug()
