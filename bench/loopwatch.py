"""Event-loop stalls in a child process: how late a 10 ms heartbeat task wakes up.

A stall delays every message the process handles (a notice of lost access, say) by as much,
so the longest stalls and when they happened (epoch seconds, comparable with the
recorder's arrival times) explain latency tails.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

TICK = 0.01
STALL = 0.05  # a lag above this counts as a stall


class LoopWatch:
    def __init__(self) -> None:
        self._task: asyncio.Task[None] | None = None
        self.reset()

    def start(self) -> None:
        """Start (or restart) the heartbeat. It costs CPU in a process with many sockets
        and timers: run it only around the phase it explains, not during CPU figures."""
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run(), name="loop-watch")

    def reset(self) -> None:
        self.beats = 0
        self.stalls: list[tuple[float, float]] = []  # (epoch when it ended, lag seconds)
        self.longest = 0.0

    async def _run(self) -> None:
        while True:
            before = time.monotonic()
            await asyncio.sleep(TICK)
            lag = time.monotonic() - before - TICK
            self.beats += 1
            self.longest = max(self.longest, lag)
            if lag > STALL:
                self.stalls.append((time.time(), lag))

    def snapshot(self, top: int = 10) -> dict[str, Any]:
        worst = sorted(self.stalls, key=lambda s: s[1], reverse=True)[:top]
        return {"beats": self.beats, "longest_ms": round(self.longest * 1000, 1),
                "stalls_over_50ms": len(self.stalls),
                "worst": [[round(at, 3), round(lag * 1000, 1)] for at, lag in worst]}

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
