"""Wrapping device counters: packet sequence numbers and clocks that roll over.

Pure bookkeeping shared by the drivers and the file readers: a sequence tracker that turns
gaps into a dropped-packet count, and an unwrapper that turns a wrapping clock (uint32
microseconds, uint16 packet counters) into a monotonic number.
"""

from __future__ import annotations

import numpy as np


class SequenceTracker:
    """Counts packets lost between consecutive sequence numbers modulo ``modulo``.

    A step of 1 is normal; a step of ``k`` in (1, modulo/2) means ``k - 1`` packets were
    dropped; a step of 0 is a duplicate; a larger step (backwards) is treated as a restart
    of the device and resynchronises without counting."""

    def __init__(self, modulo: int = 1 << 16) -> None:
        self.modulo = modulo
        self._last: int | None = None
        self.dropped = 0
        self.duplicates = 0
        self.restarts = 0

    def update(self, seq: int) -> int:
        """Feed one sequence number; returns how many packets were lost just before it."""
        seq %= self.modulo
        last, self._last = self._last, seq
        if last is None:
            return 0
        step = (seq - last) % self.modulo
        if step == 1:
            return 0
        if step == 0:
            self.duplicates += 1
            return 0
        if step < self.modulo // 2:
            self.dropped += step - 1
            return step - 1
        self.restarts += 1
        return 0

    def reset(self) -> None:
        self._last = None


class Unwrapper:
    """Turns a counter that wraps at ``modulo`` into a monotonic integer."""

    def __init__(self, modulo: int = 1 << 32) -> None:
        self.modulo = modulo
        self._last: int | None = None
        self._offset = 0

    def update(self, value: int) -> int:
        value %= self.modulo
        if self._last is not None and value < self._last and self._last - value > self.modulo // 2:
            self._offset += self.modulo
        self._last = value
        return value + self._offset

    def reset(self) -> None:
        self._last = None
        self._offset = 0


def unwrap_counter(values: np.ndarray, modulo: int) -> np.ndarray:
    """N integers that wrap at ``modulo`` -> N monotonic int64 (a wrap is a drop of more than half)."""
    v = np.asarray(values, dtype=np.int64) % modulo
    if v.size < 2:
        return v
    steps = np.diff(v)
    wraps = np.concatenate(([0], np.cumsum(steps < -(modulo // 2))))
    return v + wraps * modulo


def count_gaps(counter: np.ndarray) -> int:
    """Missing values in an unwrapped, increasing packet counter (N -> number dropped)."""
    c = np.asarray(counter, dtype=np.int64)
    if c.size < 2:
        return 0
    steps = np.diff(c)
    return int(np.sum(np.where(steps > 1, steps - 1, 0)))
