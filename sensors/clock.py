"""Estimating the offset between a device's clock and the host's monotonic clock.

Transport delay only ever adds to the host receive time, so the smallest observed
``host - device`` over a sliding window is the best estimate of the true offset plus the
minimum latency (the classic minimum filter of NTP-style sync). A slow drift between the
clocks is followed because the window slides. Device clocks that wrap (uint32 counters)
are unwrapped by the driver before they reach here.
"""

from __future__ import annotations

from collections import deque


class ClockOffsetEstimator:
    """Minimum-filter estimate of ``host_time - device_time`` over the last ``window`` samples."""

    def __init__(self, window: int = 256) -> None:
        self._diffs: deque[float] = deque(maxlen=window)
        self._minimum: float | None = None

    def reset(self) -> None:
        """Forget every observation (a device whose clock restarted, e.g. after a reconnect)."""
        self._diffs.clear()
        self._minimum = None

    def update(self, host_time_s: float, device_time_s: float) -> float:
        """Add one observation and return the current offset estimate (seconds)."""
        d = host_time_s - device_time_s
        if self._diffs.maxlen and len(self._diffs) == self._diffs.maxlen and self._diffs[0] == self._minimum:
            self._diffs.append(d)
            self._minimum = min(self._diffs)
        else:
            self._diffs.append(d)
            self._minimum = d if self._minimum is None else min(self._minimum, d)
        return self._minimum

    @property
    def offset_s(self) -> float | None:
        return self._minimum

    def to_host(self, device_time_s: float) -> float | None:
        """A device timestamp on the host clock, or None before the first observation."""
        return None if self._minimum is None else device_time_s + self._minimum
