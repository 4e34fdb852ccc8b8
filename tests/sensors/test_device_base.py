"""The Device base class: states, statistics, reconnection and the clock-offset estimate."""

from __future__ import annotations

import time

from sensors.clock import ClockOffsetEstimator
from sensors.device import Device, DeviceConfig, DeviceState
from sensors.samples import ImuSample
from vimcan_core.errors import DeviceLost


class _ScriptedImu(Device):
    """Delivers samples at 100 Hz; its clock restarts from 0 at each (re)connection."""

    def __init__(self, lose_after: int) -> None:
        super().__init__("scripted", DeviceConfig(reconnect_initial_s=0.01))
        self.lose_after = lose_after
        self.connects = 0
        self.connect_times: list[float] = []
        self._n = 0

    def _connect(self) -> None:
        self.connects += 1
        self._n = 0
        self._t0 = time.monotonic()
        self.connect_times.append(self._t0)

    def _poll(self):
        time.sleep(0.01)
        self._n += 1
        if self.connects == 1 and self._n > self.lose_after:
            raise DeviceLost("scripted unplug")
        now = time.monotonic()
        return [ImuSample(self.device_id, now, now - self._t0, (1.0, 0.0, 0.0, 0.0), seq=self._n)]

    def _disconnect(self) -> None:
        pass


def test_clock_offset_tracks_the_minimum_and_resets() -> None:
    est = ClockOffsetEstimator(window=4)
    for host, delay in [(10.0, 0.03), (10.1, 0.01), (10.2, 0.02)]:
        est.update(host, host - 5.0 - delay)
    assert abs(est.offset_s - 5.01) < 1e-9
    est.reset()
    assert est.offset_s is None and est.to_host(1.0) is None


def test_reconnect_restarts_the_clock_estimate_and_counts() -> None:
    dev = _ScriptedImu(lose_after=10)
    seen = []
    dev.add_state_listener(lambda _id, state: seen.append(state))
    dev.start()
    try:
        deadline = time.monotonic() + 5
        while (dev.connects < 2 or dev.stats().samples < 20) and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        dev.stop()
    stats = dev.stats()
    assert stats.reconnects == 1 and dev.connects == 2
    assert DeviceState.DISCONNECTED in seen and DeviceState.RECONNECTING in seen
    assert seen[-1] == DeviceState.STOPPED and not dev.running
    # host - device is the connection instant: after the reconnect the estimate follows the new clock
    # instead of keeping the first connection's smaller minimum
    first, second = dev.connect_times
    assert second - first > 0.05
    assert abs(stats.clock_offset_s - second) < 1e-6
    assert stats.last_error == "scripted unplug"
