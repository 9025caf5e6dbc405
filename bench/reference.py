"""The C reference, measured in the same run as the Python figures.

- :func:`raw_routing`: ``mosquitto_sub -q 1 -t bench/raw/# -C N+1`` and
  ``mosquitto_pub -q 1 -l -t bench/raw/x`` fed N lines from a file -> messages/s. The
  subscriber is known to be subscribed when it printed a retained ``ready`` message (its
  +1), so no sleep guesses the moment.
- :func:`build_rr` / :func:`request_response`: ``bench/rr.c`` (libmosquitto), compiled when
  gcc and ``mosquitto.h`` (libmosquitto-dev) are there; optional, the bench falls back to
  the raw routing figure otherwise.

While a reference runs, the broker's CPU share is sampled over the measured window.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

from bench import procinfo
from bench.control import BenchError
from fleet.broker import BrokerAddress

log = logging.getLogger(__name__)

RR_SOURCE = Path(__file__).resolve().parent / "rr.c"
_READY_TIMEOUT = 10.0


def _tool(name: str) -> str:
    path = shutil.which(name, path="/usr/bin:/usr/local/bin:/bin")
    if path is None:
        raise BenchError(f"{name} not found: apt-get install mosquitto-clients")
    return path


async def _run(*args: str, limit: float = 10.0) -> None:
    proc = await asyncio.create_subprocess_exec(*args, stdin=asyncio.subprocess.DEVNULL,
                                                stdout=asyncio.subprocess.DEVNULL,
                                                stderr=asyncio.subprocess.PIPE)
    async with asyncio.timeout(limit):
        _, err = await proc.communicate()
    if proc.returncode != 0:
        raise BenchError(f"{args[0]} failed ({proc.returncode}): {err.decode()[-500:]}")


async def _stop(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()


async def raw_routing(address: BrokerAddress, *, messages: int, qos: int, payload_bytes: int,
                      limit: float, workdir: Path, broker_pid: int | None) -> dict[str, Any]:
    pub, sub = _tool("mosquitto_pub"), _tool("mosquitto_sub")
    host, port = address.host, str(address.port)
    ready_topic = f"bench/raw/ready-{qos}"
    await _run(pub, "-h", host, "-p", port, "-q", "1", "-r", "-t", ready_topic, "-m", "ready")
    lines = workdir / f"raw-input-{qos}.txt"
    filler = "x" * max(0, payload_bytes - 9)
    lines.write_text("".join(f"{i:08d} {filler}\n" for i in range(messages)))
    out_path = workdir / f"raw-sub-{qos}.out"
    with out_path.open("wb") as out:
        subscriber = await asyncio.create_subprocess_exec(
            sub, "-h", host, "-p", port, "-q", str(qos), "-t", "bench/raw/#",
            "-C", str(messages + 1), "-i", f"bench-raw-sub-{qos}",
            stdin=asyncio.subprocess.DEVNULL, stdout=out, stderr=asyncio.subprocess.DEVNULL)
    try:
        async with asyncio.timeout(_READY_TIMEOUT):
            while out_path.stat().st_size == 0:
                if subscriber.returncode is not None:
                    raise BenchError(f"mosquitto_sub exited with {subscriber.returncode}")
                await asyncio.sleep(0.005)
        with lines.open("rb") as feed:
            began = time.monotonic()
            broker0 = procinfo.sample(broker_pid, began) if broker_pid else None
            publisher = await asyncio.create_subprocess_exec(
                pub, "-h", host, "-p", port, "-q", str(qos), "-l", "-t", "bench/raw/x",
                "-i", f"bench-raw-pub-{qos}", stdin=feed, stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.DEVNULL)
            try:
                async with asyncio.timeout(limit):
                    await subscriber.wait()
            except TimeoutError:
                raise BenchError(f"raw routing: {messages} QoS {qos} messages not delivered "
                                 f"within {limit:.0f} s") from None
            finally:
                await _stop(publisher)
        ended = time.monotonic()
        broker1 = procinfo.sample(broker_pid, ended) if broker_pid else None
    finally:
        await _stop(subscriber)
        await _run(pub, "-h", host, "-p", port, "-q", "1", "-r", "-t", ready_topic, "-n")
    received = out_path.read_bytes().count(b"\n") - 1
    seconds = ended - began
    return {"qos": qos, "messages": messages, "received": received, "seconds": seconds,
            "payload_bytes": payload_bytes, "messages_per_second": received / seconds,
            "broker_cpu_fraction": procinfo.cpu_fraction(broker0, broker1)
            if broker0 and broker1 else None}


def build_rr(workdir: Path) -> tuple[Path | None, str]:
    """Compile ``rr.c``; (binary, "") or (None, why not)."""
    compiler = shutil.which("gcc") or shutil.which("cc")
    if compiler is None:
        return None, "no C compiler (gcc)"
    binary = workdir / "rr"
    proc = subprocess.run([compiler, "-O2", "-o", str(binary), str(RR_SOURCE), "-lmosquitto"],
                          capture_output=True, text=True, timeout=60, check=False)
    if proc.returncode != 0:
        missing = "mosquitto.h" in proc.stderr or "lmosquitto" in proc.stderr
        why = "libmosquitto-dev not installed" if missing else proc.stderr.strip()[-300:]
        return None, why
    return binary, ""


async def request_response(binary: Path, address: BrokerAddress, *, devices: int,
                           seconds: float, warmup: float, idle: float, light: float, qos: int,
                           payload_bytes: int, limit: float, broker_pid: int | None
                           ) -> dict[str, Any]:
    proc = await asyncio.create_subprocess_exec(
        str(binary), address.host, str(address.port), str(devices), str(seconds), str(qos),
        str(idle), str(light), str(warmup), str(payload_bytes),
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE)
    assert proc.stdout is not None
    assert proc.stderr is not None
    samples: dict[str, procinfo.CpuSample] = {}
    result: dict[str, Any] | None = None
    try:
        async with asyncio.timeout(limit):
            while line := await proc.stdout.readline():
                msg = json.loads(line)
                if "event" in msg:
                    if broker_pid:
                        samples[msg["event"]] = procinfo.sample(broker_pid, time.monotonic())
                else:
                    result = msg
            err = await proc.stderr.read()
            await proc.wait()
    except TimeoutError:
        raise BenchError(f"C request/response did not finish within {limit:.0f} s") from None
    finally:
        await _stop(proc)
    if proc.returncode != 0 or result is None:
        raise BenchError(f"C request/response failed ({proc.returncode}): "
                         f"{err.decode()[-500:]}")
    if "measure-start" in samples and "measure-end" in samples:
        result["broker_cpu_fraction"] = procinfo.cpu_fraction(samples["measure-start"],
                                                              samples["measure-end"])
    rss = (result["rss_after_kb"] - result["rss_before_kb"]) / max(1, devices)
    result["rss_kb_per_client"] = rss
    trips = result["round_trips"]
    result["cpu_us_per_round_trip"] = result["cpu_seconds"] / trips * 1e6 if trips else None
    return result
