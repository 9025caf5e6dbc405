"""The drill phase: ``fleet drill force-delete --devices N --workers 2`` as a user runs it, for
each size, with the CPU of every process it starts (the drill with its jobs service, each
device worker, the broker) sampled from /proc while it runs.

Each row: wall time, verdict, ``notice`` cases, the share of the targeted devices mid-step at
their removal, device events missing at the end (the drain marker), detection p99 and the
request round trip p99, and CPU seconds per process.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from bench import procinfo

SAMPLE_SECONDS = 0.5


def _children() -> dict[int, list[int]]:
    """ppid -> pids, from /proc."""
    out: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", encoding="ascii") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        out.setdefault(ppid, []).append(int(entry.name))
    return out


def _label(pid: int, root: int) -> str:
    if pid == root:
        return "drill"
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            argv = f.read().split(b"\0")
    except OSError:
        return "gone"
    text = b" ".join(argv).decode(errors="replace")
    if "mosquitto" in text:
        return "broker"
    if "devicesim.cli" in text and b"--shard" in argv:
        return f"worker-{argv[argv.index(b'--shard') + 1].decode().partition('/')[0]}"
    return "other"


def _tree(root: int) -> list[int]:
    kids, pids, todo = _children(), [], [root]
    while todo:
        pid = todo.pop()
        pids.append(pid)
        todo.extend(kids.get(pid, []))
    return pids


async def run_drill(devices: int, workers: int, seed: int, workdir: Path) -> dict[str, Any]:
    """One drill; CPU seconds per process are the last sample before it exited."""
    report_dir = workdir / f"drill-{devices}"
    log = (workdir / f"drill-{devices}.log").open("wb")
    began = time.monotonic()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "fleet.cli", "drill", "force-delete", "--devices", str(devices),
        "--workers", str(workers), "--seed", str(seed), "--report-dir", str(report_dir),
        stdin=asyncio.subprocess.DEVNULL, stdout=log, stderr=asyncio.subprocess.STDOUT)
    cpu: dict[str, float] = {}
    labels: dict[int, str] = {}
    try:
        while proc.returncode is None:
            for pid in _tree(proc.pid):
                label = labels.setdefault(pid, _label(pid, proc.pid))
                seconds = procinfo.cpu_seconds(pid)
                if seconds:
                    cpu[label] = max(cpu.get(label, 0.0), seconds)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(SAMPLE_SECONDS):
                    await proc.wait()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        log.close()
    wall = time.monotonic() - began
    report = json.loads((report_dir / "report.json").read_text())
    results = {r["name"]: r for r in report["results"]}
    m = report["metrics"]
    drain = _marker(report_dir / "history.jsonl", "drain")
    return {"devices": devices, "workers": workers, "exit": proc.returncode,
            "wall_seconds": wall, "status": report["status"],
            "notice_cases": results["notice"]["checked"],
            "mid_step_fraction": m["mid_step"] / m["targeted"] if m["targeted"] else 0.0,
            "events_missing": None if drain is None else drain["devicesMissingEvents"],
            "drain_complete": None if drain is None else drain["complete"],
            "detection_p99_ms": m["detection_latency"].get("p99_ms"),
            "round_trip_p99_ms": m["round_trip"].get("p99_ms"),
            "requests": m["requests"], "cpu_seconds": dict(sorted(cpu.items())),
            "log": str(log.name)}


def _marker(history: Path, f: str) -> dict[str, Any] | None:
    """The last ``drill`` marker ``f`` of a history (None if it has none)."""
    needle = f'"process":"drill","type":"info","f":"{f}"'
    found = None
    with history.open(encoding="utf-8") as lines:
        for line in lines:
            if needle in line:
                found = json.loads(line)["value"]
    return found
