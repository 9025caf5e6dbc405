"""Pauses of Python's cyclic garbage collector in a child process.

A full (generation 2) collection walks every tracked object: with thousands of devices in
one process it stops the event loop for a while, which shows up as latency tails. The
watcher times every collection through ``gc.callbacks``; ``snapshot()`` gives counts and
pause totals per generation since the last ``reset()``.
"""

from __future__ import annotations

import gc
import time
from typing import Any


class GcWatch:
    def __init__(self) -> None:
        self._started: float | None = None
        self.reset()
        gc.callbacks.append(self._callback)

    def reset(self) -> None:
        self.count = [0, 0, 0]
        self.total = [0.0, 0.0, 0.0]
        self.longest = [0.0, 0.0, 0.0]

    def _callback(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
            return
        if self._started is None:
            return
        pause = time.perf_counter() - self._started
        self._started = None
        generation = int(info.get("generation", 0))
        self.count[generation] += 1
        self.total[generation] += pause
        self.longest[generation] = max(self.longest[generation], pause)

    def snapshot(self) -> dict[str, Any]:
        return {f"gen{g}": {"collections": self.count[g],
                            "total_ms": round(self.total[g] * 1000, 2),
                            "longest_ms": round(self.longest[g] * 1000, 2)}
                for g in range(3)} | {"tracked_objects": len(gc.get_objects())}
