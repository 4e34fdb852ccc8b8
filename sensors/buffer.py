"""A bounded, thread-safe buffer of samples: one producer (a device thread), many readers.

It keeps the newest ``capacity`` samples (older ones are discarded and counted), so a
slow consumer never makes memory grow. Readers either take the history around a time
(for interpolation) or drain what arrived since their last read (for recording).
"""

from __future__ import annotations

import bisect
import threading
from collections import deque
from typing import Generic, TypeVar

T = TypeVar("T")


class SampleBuffer(Generic[T]):
    """Ring buffer of samples ordered by arrival; each sample must have ``host_time_s``."""

    def __init__(self, capacity: int = 2048) -> None:
        if capacity < 2:
            raise ValueError(f"buffer capacity must be at least 2, got {capacity}")
        self._items: deque[T] = deque(maxlen=capacity)
        self._lock = threading.Lock()
        self._total = 0  # samples ever pushed: a reader's cursor counts in these

    def push(self, item: T) -> None:
        with self._lock:
            self._items.append(item)
            self._total += 1

    @property
    def total_pushed(self) -> int:
        with self._lock:
            return self._total

    def latest(self) -> T | None:
        with self._lock:
            return self._items[-1] if self._items else None

    def snapshot(self) -> list[T]:
        """All samples currently held, oldest first."""
        with self._lock:
            return list(self._items)

    def read_since(self, cursor: int) -> tuple[list[T], int, int]:
        """Samples pushed after ``cursor`` (a count from an earlier call, 0 at first).

        Returns (samples, new_cursor, lost) where ``lost`` counts samples that were
        overwritten before this reader got to them."""
        with self._lock:
            held = len(self._items)
            first_held = self._total - held
            lost = max(0, first_held - cursor)
            start = max(cursor, first_held) - first_held
            items = list(self._items)[start:]
            return items, self._total, lost

    def around(self, time_s: float, key: str = "host_time_s") -> tuple[T | None, T | None]:
        """The last sample at or before ``time_s`` and the first after it (by ``key``)."""
        with self._lock:
            items = list(self._items)
        times = [getattr(s, key) for s in items]
        i = bisect.bisect_right(times, time_s)
        before = items[i - 1] if i > 0 else None
        after = items[i] if i < len(items) else None
        return before, after

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)
