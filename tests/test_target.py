"""AWS IoT Core as the target of a drill, tested offline: the emulator runs as an external
target (``fleet up --secure``, started separately, as AWS IoT Core would be), the things are
provisioned with ``fleet provision``, and ``fleet drill --target aws`` runs no broker or
service of its own -- its devices connect with their certificates, its controller calls the
given control plane -- and judges what its own processes observed, saying which check it
cannot make without the service's own view."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Any

import pytest

pytestmark = [pytest.mark.broker, pytest.mark.slow]

DEVICES = 60


async def command(*argv: str, env: dict[str, str], limit: float = 120
                  ) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "fleet.cli", *argv, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT, env=env)
    async with asyncio.timeout(limit):
        out, _ = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode()


@pytest.mark.timeout(240)
async def test_a_drill_against_the_emulator_as_an_external_target(tmp_path: Path) -> None:
    ready = tmp_path / "ready.json"
    env = {**os.environ, "DEVICESIM_READY_FILE": str(ready), "PYTHONUNBUFFERED": "1"}
    up = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "fleet.cli", "up", "--secure", "--state",
        str(tmp_path / "target" / "jobs.db"), "--ready-file", str(ready),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env)
    try:
        assert up.stdout is not None
        async with asyncio.timeout(30):
            await up.stdout.readline()  # printed once it serves
        info: dict[str, Any] = json.loads(ready.read_text())
        assert info["http"]["endpoint"].startswith("https://127.0.0.1:")
        devices = tmp_path / "devices"
        code, out = await command("provision", "--prefix", "dev-", "--count", str(DEVICES),
                                  "--cert-dir", str(devices), env=env)
        assert code == 0, out
        report = tmp_path / "report"
        print(f"drill force-delete seed=1 devices={DEVICES} target={info['mqtts']['url']}")
        code, out = await command(
            "drill", "force-delete", "--devices", str(DEVICES), "--target", "aws",
            "--mix", "reference=0.5,sdk=0.5",
            "--endpoint", info["mqtts"]["url"], "--control-endpoint", info["http"]["endpoint"],
            "--ca", info["certs"]["ca"], "--cert-dir", str(devices), "--report-dir",
            str(report), env={**{k: v for k, v in env.items() if k != "DEVICESIM_READY_FILE"},
                              # its control plane speaks HTTPS, by the local CA
                              "AWS_CA_BUNDLE": info["certs"]["ca"]})
        assert code == 0, out
        assert "broker              the target (aws): devices by certificate" in out
        assert "service: not checked: it needs the emulator's own record" in out
        verdict = json.loads((report / "report.json").read_text())
        results = {r["name"]: r for r in verdict["results"]}
        assert results["service"]["status"] == "NO-CASES"
        assert results["notice"]["status"] == "PASS"
        assert results["notice"]["checked"] >= 0.2 * DEVICES
        assert set(results["notice"]["cases_by_behaviour"]) == {"reference", "sdk"}
        ops = [json.loads(line) for line in (report / "history.jsonl").read_text().splitlines()]
        start = next(op for op in ops if op["f"] == "start")
        assert (start["value"]["target"], start["value"]["broker"]) == ("aws",
                                                                       info["mqtts"]["url"])
        # replies and pushes are the devices' record: no process of the drill ran a service
        assert not [op for op in ops if op["process"] == "service"]
        replies = [op for op in ops if op["type"] in ("ok", "fail")
                   and op["process"].startswith("dev-")]
        assert len(replies) == results["answered"]["checked"] > DEVICES
    finally:
        up.terminate()
        async with asyncio.timeout(20):
            await up.wait()


async def test_a_target_needs_its_certificates(tmp_path: Path) -> None:
    (tmp_path / "ca.crt").write_text("")
    (tmp_path / "devices").mkdir()
    code, out = await command(
        "drill", "--target", "aws", "--endpoint", "mqtts://127.0.0.1:1",
        "--control-endpoint", "http://127.0.0.1:1", "--ca", str(tmp_path / "ca.crt"),
        "--cert-dir", str(tmp_path / "devices"), "--report-dir", str(tmp_path / "r"),
        env=dict(os.environ), limit=60)
    assert code == 2, out
    assert out.strip().splitlines()[-1].startswith(
        "fleet drill: --target: no certificate for 100 things in"), out
