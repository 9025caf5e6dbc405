"""Never orphan: SIGTERM or SIGINT to ``fleet drill`` stops everything it started (the
broker, the device worker processes), writes the history and a report of the run so far
marked interrupted, and exits 143 / 130."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.broker, pytest.mark.slow]


def descendants(pid: int) -> set[int]:
    """Every live process below ``pid`` (from /proc)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    out: set[int] = set()
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.add(child)
            todo.append(child)
    return out


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


@pytest.mark.parametrize(("sig", "status"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
async def test_a_signal_stops_everything_and_reports_the_run_so_far(
        sig: signal.Signals, status: int, tmp_path: Path) -> None:
    # a stuck fleet never settles: without the signal this drill would run to its timeout
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "fleet.cli", "drill", "--behaviour", "stuck", "--devices", "6",
        "--workers", "2", "--seed", "1", "--timeout", "100", "--report-dir", str(tmp_path),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert proc.stdout is not None
    seen = []
    async with asyncio.timeout(60):
        while True:  # the schedule is under way: broker, service and both workers are up
            line = (await proc.stdout.readline()).decode()
            assert line, "".join(seen)
            seen.append(line)
            if "step 1/" in line:
                break
    started = descendants(proc.pid)
    assert len(started) >= 3, started  # mosquitto + 2 device workers
    proc.send_signal(sig)
    async with asyncio.timeout(60):
        rest = (await proc.stdout.read()).decode()
        code = await proc.wait()
    output = "".join(seen) + rest
    assert code == status, output
    assert f"interrupted by {sig.name}" in output
    assert not [p for p in started if alive(p)], output
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["status"] == "FAIL"
    complete = next(r for r in report["results"] if r["name"] == "complete")
    assert any(f"interrupted ({sig.name})" in v["message"] for v in complete["violations"])
    assert (tmp_path / "history.jsonl").stat().st_size > 0
