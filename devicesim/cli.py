"""``devicesim run``: a fleet of simulated devices against a broker running the Jobs API.

Usage errors are one line naming the bad option (exit 2). A one-line status is printed
while running (unless ``--quiet``) and a summary at the end; SIGINT / SIGTERM stop cleanly.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import sys
import time
import urllib.parse
from collections.abc import Sequence
from pathlib import Path

from devicesim import __version__
from devicesim.behaviours import resolve
from devicesim.engine import Fleet, FleetConfig


def parse_mix(text: str) -> dict[str, float]:
    """``reference=0.9,stuck=0.1`` -> weights (a ValueError names the bad entry)."""
    mix: dict[str, float] = {}
    for part in text.split(","):
        name, sep, weight = part.strip().partition("=")
        if not sep or not name:
            raise ValueError(f"--mix: {part!r} is not NAME=WEIGHT")
        try:
            mix[name] = float(weight)
        except ValueError:
            raise ValueError(f"--mix: weight of {name!r} is not a number: {weight!r}") from None
        if mix[name] < 0:
            raise ValueError(f"--mix: weight of {name!r} is negative")
    return mix


def parse_shard(text: str, total: int) -> tuple[int, int]:
    """``i/n`` -> (start, count) of the i-th of n equal ranges (0-based i)."""
    index, sep, parts = text.partition("/")
    try:
        i, n = int(index), int(parts)
    except ValueError:
        raise ValueError(f"--shard: expected i/n, got {text!r}") from None
    if not sep or n < 1 or not 0 <= i < n:
        raise ValueError(f"--shard: expected 0 <= i < n, got {text!r}")
    per = -(-total // n)
    return i * per, max(0, min(per, total - i * per))


def parse_broker(url: str) -> tuple[str, int]:
    parsed = urllib.parse.urlsplit(url)
    if parsed.scheme != "mqtt" or not parsed.hostname or not parsed.port:
        raise ValueError(f"--broker: expected mqtt://HOST:PORT, got {url!r}")
    return parsed.hostname, parsed.port


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="devicesim", description=__doc__)
    parser.add_argument("--version", action="version", version=f"devicesim {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    run = sub.add_parser("run", help="run simulated devices")
    run.add_argument("--broker", required=True, metavar="URL", help="mqtt://HOST:PORT")
    run.add_argument("--prefix", default="dev-", help="thing name prefix (default dev-)")
    run.add_argument("--count", type=int, default=1, help="devices in this process")
    run.add_argument("--start", type=int, default=0, help="index of the first thing")
    run.add_argument("--total", type=int, default=None,
                     help="things in the whole fleet, for --shard and --mix (default: count)")
    group = run.add_mutually_exclusive_group()
    group.add_argument("--behaviour", help="one behaviour for every device (default reference;"
                       " or package.module:Class)")
    group.add_argument("--mix", help="weights, e.g. reference=0.9,stuck=0.1")
    run.add_argument("--workers", type=int, default=1, help="processes to shard over")
    run.add_argument("--shard", help="i/n: run the i-th of n equal ranges of --total things")
    run.add_argument("--state-dir", type=Path, help="persist each device's NVM here")
    run.add_argument("--duration", type=float, help="stop after this many seconds")
    run.add_argument("--seed", type=int, default=1, help="seed of every device's randomness")
    run.add_argument("--quiet", action="store_true", help="no status line")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        config, workers = _config(args)
    except ValueError as e:
        print(f"devicesim run: {e}", file=sys.stderr)
        return 2
    if workers > 1:
        return _run_workers(args, config, workers)
    try:
        return asyncio.run(_run(config, args.duration, args.quiet))
    except KeyboardInterrupt:
        return 130


def _config(args: argparse.Namespace) -> tuple[FleetConfig, int]:
    host, port = parse_broker(args.broker)
    mix = parse_mix(args.mix) if args.mix else {args.behaviour or "reference": 1.0}
    for name in mix:
        resolve(name)  # a ValueError names an unknown behaviour now, not later
    if args.count < 1 or args.start < 0:
        raise ValueError("--count must be >= 1 and --start >= 0")
    start, count = args.start, args.count
    if args.shard:
        start, count = parse_shard(args.shard, args.total or args.count)
    if args.workers < 1:
        raise ValueError("--workers must be >= 1")
    return FleetConfig(host=host, port=port, prefix=args.prefix, count=count, start=start,
                       mix=mix, seed=args.seed, state_dir=args.state_dir), args.workers


def _run_workers(args: argparse.Namespace, config: FleetConfig, workers: int) -> int:
    """Split this process's range over ``workers`` child processes."""
    import subprocess

    per = -(-config.count // workers)
    procs = []
    base = [sys.executable, "-m", "devicesim.cli", "run", "--broker", args.broker,
            "--prefix", config.prefix, "--seed", str(config.seed),
            "--mix", ",".join(f"{k}={v}" for k, v in config.mix.items())]
    if args.state_dir:
        base += ["--state-dir", str(args.state_dir)]
    if args.duration:
        base += ["--duration", str(args.duration)]
    for w in range(workers):
        start, count = config.start + w * per, min(per, config.count - w * per)
        if count > 0:
            procs.append(subprocess.Popen([*base, "--start", str(start), "--count", str(count),
                                           *(["--quiet"] if w or args.quiet else [])]))
    try:
        return max(p.wait() for p in procs)
    except KeyboardInterrupt:
        for p in procs:
            p.send_signal(signal.SIGINT)
        return max(p.wait() for p in procs)


async def _run(config: FleetConfig, duration: float | None, quiet: bool) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    fleet = Fleet(config)
    began = time.monotonic()
    try:
        connect_seconds = await fleet.start()
        if not quiet:
            print(f"devicesim: {config.count} devices connected in {connect_seconds:.2f} s "
                  f"(pid {os.getpid()})", flush=True)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(duration):
                while not stop.is_set():
                    if not quiet:
                        states = " ".join(f"{k}={v}" for k, v in sorted(fleet.states().items()))
                        print(f"\r{time.monotonic() - began:7.1f}s {states}\033[K", end="",
                              flush=True)
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(1.0):
                            await stop.wait()
    finally:
        await fleet.stop()
    if not quiet:
        events = sum(d.events for d in fleet.devices.values())
        states = " ".join(f"{k}={v}" for k, v in sorted(fleet.states().items()))
        print(f"\ndevicesim: ran {time.monotonic() - began:.1f} s; {len(fleet.devices)} "
              f"devices; {events} device events; final states: {states}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
