"""The event loop every devicesim process runs on: uvloop where it is installed.

uvloop carries 15–30 % more MQTT messages per core than asyncio's own loop on this workload
(``../shared/PERF.md``; ``make bench`` measures it). ``DEVICESIM_LOOP=asyncio`` picks the
standard loop instead (to rule the loop out when debugging).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


def loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's loop factory, or None for asyncio's default loop."""
    if os.environ.get("DEVICESIM_LOOP", "uvloop") == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:  # e.g. on Windows, where uvloop does not exist
        return None
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


def run_main(main: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run(main)`` on the loop :func:`loop_factory` picks."""
    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        return runner.run(main)
