"""What stalls a child process: garbage-collector pauses and event-loop stalls together,
reported through the control pipe's ``pauses`` command (the service and the fleet alike)."""

from __future__ import annotations

from typing import Any

from bench.gcwatch import GcWatch
from bench.loopwatch import LoopWatch


class Pauses:
    def __init__(self) -> None:
        self.gc = GcWatch()
        self.loop = LoopWatch()

    async def report(self, reset: bool = False, watch: bool = False) -> dict[str, Any]:
        """Collector pauses and event-loop stalls since the last reset. ``reset``: start
        counting afresh, with the loop heartbeat running if ``watch``; otherwise stop the
        heartbeat."""
        snapshot = {"gc": self.gc.snapshot(), "loop": self.loop.snapshot()}
        if reset:
            self.gc.reset()
            self.loop.reset()
        if reset and watch:
            self.loop.start()
        else:
            await self.loop.stop()
        return snapshot
