"""``devicesim run`` keeps trying to reach its broker at start the way a device would
(bounded, with a printed backoff) and ends with one clear line, never a traceback."""

from __future__ import annotations

import asyncio
import os
import sys

import pytest

from fleet.broker import EmbeddedBroker, free_port

pytestmark = pytest.mark.broker

ENV = {**os.environ, "PYTHONUNBUFFERED": "1"}


async def test_an_unreachable_broker_ends_with_one_line_and_exit_1() -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "devicesim.cli", "run", "--broker", "mqtt://127.0.0.1:1",
        "--connect-timeout", "1.2", stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, env=ENV)
    async with asyncio.timeout(30):
        out, err = await proc.communicate()
    lines = err.decode().splitlines()
    assert proc.returncode == 1, lines
    assert "Traceback" not in err.decode()
    assert any("not reachable (Connection refused); retrying in 0.5 s" in line
               for line in lines), lines
    assert lines[-1].startswith("devicesim run: failure: broker 127.0.0.1:1 not reachable "
                                "after "), lines


async def test_the_fleet_connects_once_the_broker_comes_up() -> None:
    port = free_port()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "devicesim.cli", "run", "--broker", f"mqtt://127.0.0.1:{port}",
        "--count", "3", "--connect-timeout", "60", "--duration", "1",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=ENV)
    assert proc.stderr is not None
    assert proc.stdout is not None
    async with asyncio.timeout(30):
        line = (await proc.stderr.readline()).decode()
    assert "retrying in" in line, line
    with EmbeddedBroker(port=port):
        async with asyncio.timeout(60):
            out = (await proc.stdout.read()).decode()
            await proc.wait()
    assert proc.returncode == 0, out
    assert "3 devices connected" in out
