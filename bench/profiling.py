"""Optional sampling profiles of the child processes with py-spy (``--profile``).

``py-spy record --nonblocking -f raw`` samples a process without pausing it; the collapsed
stacks are summarised as the functions with the most *own* samples (where the CPU goes)
and the project functions with the most *inclusive* samples (which code path costs it).
Idle time in the event loop's ``select`` is not sampled (py-spy skips idle threads).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import shutil
import signal
import sys
from collections import Counter
from pathlib import Path
from typing import Any

from bench.control import ROOT

log = logging.getLogger(__name__)

_FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")
_PROJECT = ("devicesim/", "fleet/", "bench/")


def py_spy() -> str | None:
    """The py-spy executable next to this interpreter, or on PATH."""
    local = Path(sys.executable).parent / "py-spy"
    return str(local) if local.exists() else shutil.which("py-spy")


class Sampler:
    """py-spy attached to one process from :meth:`start` until :meth:`stop`."""

    def __init__(self, name: str, pid: int, out_dir: Path, rate: int = 200) -> None:
        self.name, self.pid, self.rate = name, pid, rate
        self.path = out_dir / f"{name}.collapsed.txt"
        self._proc: asyncio.subprocess.Process | None = None

    async def start(self, max_seconds: float) -> None:
        exe = py_spy()
        if exe is None:
            return
        self._proc = await asyncio.create_subprocess_exec(
            exe, "record", "--nonblocking", "-p", str(self.pid), "-r", str(self.rate),
            "-d", str(max(1, int(max_seconds))), "-f", "raw", "-o", str(self.path),
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL)

    async def stop(self) -> dict[str, Any] | None:
        proc = self._proc
        if proc is None:
            return None
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGINT)  # py-spy writes what it sampled, then exits
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(15):
                await proc.wait()
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        if not self.path.exists():
            return None
        return summarise(self.path.read_text())


def _short(frame: str) -> str:
    """``func (/abs/path/file.py:12)`` -> ``pkg/file.py:func`` (the line is dropped)."""
    m = _FRAME.match(frame)
    if m is None:
        return frame
    file = m["file"]
    for marker in (f"{ROOT}/", "site-packages/", "/lib/python3.11/"):
        _, sep, tail = file.rpartition(marker)
        if sep:
            file = tail
            break
    return f"{file}:{m['func']}"


def summarise(collapsed: str, top: int = 15) -> dict[str, Any]:
    """Own and inclusive sample shares of a py-spy ``raw`` (collapsed stacks) file."""
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in collapsed.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [_short(f) for f in stack.split(";")]
        total += count
        own[frames[-1]] += count
        for name in set(frames):
            if name.startswith(_PROJECT):
                inclusive[name] += count
    if total == 0:
        return {"samples": 0, "own": [], "inclusive": []}
    return {"samples": total,
            "own": [[name, round(100 * n / total, 1)] for name, n in own.most_common(top)],
            "inclusive": [[name, round(100 * n / total, 1)]
                          for name, n in inclusive.most_common(top)]}
