"""Readers of /proc: resident memory and CPU time of a process (Linux only)."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

_TICKS = os.sysconf("SC_CLK_TCK")


def vm_rss_kb(pid: int | str = "self") -> int:
    """``VmRSS`` of a process in KiB (0 if the process is gone)."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except FileNotFoundError:
        return 0
    return 0


def cpu_seconds(pid: int | str = "self") -> float:
    """User + system CPU seconds a process used so far: this process to the nanosecond,
    another one at clock-tick resolution (10 ms: sample it over seconds, not moments)."""
    if pid == "self":
        return time.process_time()
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except FileNotFoundError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / _TICKS


@dataclass(frozen=True, slots=True)
class CpuSample:
    """CPU seconds of a process at a monotonic wall time."""

    cpu: float
    wall: float


def sample(pid: int | str, wall: float) -> CpuSample:
    return CpuSample(cpu_seconds(pid), wall)


def cpu_fraction(before: CpuSample, after: CpuSample) -> float:
    """Share of one core used between two samples."""
    wall = after.wall - before.wall
    return (after.cpu - before.cpu) / wall if wall > 0 else 0.0
