"""What a process holds: its resident memory and open files, read from ``/proc``.

A soak samples every process of the drill (the drill's own, the broker, the network proxy,
the device workers) into the history as ``resources`` markers; the checker's ``steady``
invariant judges whether any of them keeps growing.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

PROC = Path("/proc")


def usage(pid: int) -> dict[str, int] | None:
    """``{"pid", "rssKiB", "fds"}`` of a live process (None if it is gone or unreadable)."""
    try:
        status = (PROC / str(pid) / "status").read_text()
        fds = len(os.listdir(PROC / str(pid) / "fd"))
    except OSError:
        return None
    rss = next((int(line.split()[1]) for line in status.splitlines()
                if line.startswith("VmRSS:")), None)
    if rss is None:  # a zombie has no memory left to report
        return None
    return {"pid": pid, "rssKiB": rss, "fds": fds}


def sample(pids: Mapping[str, int]) -> dict[str, dict[str, int]]:
    """The usage of each named process that is still there."""
    out = {}
    for name, pid in pids.items():
        used = usage(pid)
        if used is not None:
            out[name] = used
    return out
