"""``devicesim run``: a fleet of simulated devices against a broker running the Jobs API.

Usage errors are one line naming the bad option (exit 2). A one-line status is printed
while running (unless ``--quiet``) and a summary at the end; SIGINT / SIGTERM stop cleanly.

One fleet, however it is split: ``--start`` / ``--count`` (or ``--shard``) choose this
process's range of the ``--total`` things of the whole fleet, and ``--mix`` is assigned over
the whole fleet, so a thing gets the same behaviour in one process or in any split.
``--workers N`` runs the range as N child processes (each told ``--total``).

``--summary PATH``: at exit (also after SIGINT / SIGTERM) PATH is replaced atomically by::

    {"things": {"dev-0000": {"behaviour": "reference", "events": 7, "nvm": {...}}, ...},
     "failures": ["device dev-0003: RuntimeError: boom", ...]}

``events`` is the device's last event ``seq``; ``nvm`` its persisted NVM summary. With
``--workers`` each child writes ``PATH.w{i}`` and the parent merges those into PATH (and
removes them); a child that left no summary is a failure of the merged one.

Exit status: 0; 1 if any device (or worker) failed — each distinct failure is one line on
stderr at the end, ``devicesim run: failure: ...``; 2 for a usage error; 130 if interrupted
before the fleet ran.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
import time
import urllib.parse
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from devicesim import __version__
from devicesim.behaviours import resolve
from devicesim.engine import Fleet, FleetConfig, FleetStartError, describe, worker_ranges
from devicesim.loop import run_main
from devicesim.mqtt import MqttError
from devicesim.recording import HistoryPart, ProgressFeed
from devicesim.wire.history import Op


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
    start = min(i * per, total)  # an empty last shard starts at the end, not past it
    return start, max(0, min(per, total - start))


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
                     help="things in the whole fleet, of which this process runs a range; "
                     "--mix is assigned over all of them, --shard splits them (default: "
                     "--start + --count; with --shard, --count)")
    group = run.add_mutually_exclusive_group()
    group.add_argument("--behaviour", help="one behaviour for every device (default reference;"
                       " or package.module:Class)")
    group.add_argument("--mix", help="weights, e.g. reference=0.9,stuck=0.1")
    run.add_argument("--workers", type=int, default=1, help="processes to shard over")
    run.add_argument("--shard", help="i/n: run the i-th of n equal ranges of --total things")
    run.add_argument("--state-dir", type=Path, help="persist each device's NVM here")
    run.add_argument("--duration", type=float, help="stop after this many seconds")
    run.add_argument("--connect-timeout", type=float, default=30.0, metavar="S",
                     help="keep trying to reach the broker for this long at start, with a "
                          "printed backoff (default 30)")
    run.add_argument("--seed", type=int, default=1, help="seed of every device's randomness")
    run.add_argument("--summary", type=Path, metavar="PATH",
                     help="at exit, write per-device behaviour, event count and NVM, and the "
                     "failures, as JSON (atomically); with --workers each child writes "
                     "PATH.w{i} and this process merges them into PATH")
    run.add_argument("--history", type=Path, metavar="PATH",
                     help="record this process's part of a drill's history (JSON Lines): "
                          "every request, reply, push and device event of its devices")
    run.add_argument("--no-event-topic", action="store_true",
                     help="do not publish device events on devicesim/THING/events (a drill's "
                          "workers record them in --history and --worker-id batches instead)")
    run.add_argument("--worker-id", metavar="ID",
                     help="publish compact progress batches on devicesim/workers/ID/progress "
                          "for a drill's live view")
    run.add_argument("--quiet", action="store_true", help="no status line")
    run.add_argument("--log-level", default="WARNING",
                     help="DEBUG, INFO, WARNING (default), ERROR or CRITICAL")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        logging.basicConfig(level=args.log_level.upper(),
                            format="%(asctime)s %(levelname)s %(name)s %(message)s")
        config, workers = _config(args)
    except ValueError as e:
        print(f"devicesim run: {e}", file=sys.stderr)
        return 2
    if workers > 1:
        return _run_workers(args, config, workers)
    try:
        return run_main(_run(config, args))
    except KeyboardInterrupt:
        return 130


def _config(args: argparse.Namespace) -> tuple[FleetConfig, int]:
    host, port = parse_broker(args.broker)
    mix = parse_mix(args.mix) if args.mix else {args.behaviour or "reference": 1.0}
    for name in mix:
        resolve(name)  # a ValueError names an unknown behaviour now, not later
    if args.count < 1 or args.start < 0:
        raise ValueError("--count must be >= 1 and --start >= 0")
    if args.total is not None and args.total < 1:
        raise ValueError("--total must be >= 1")
    start, count, total = args.start, args.count, args.total
    if args.shard:
        total = args.total or args.count
        start, count = parse_shard(args.shard, total)
    if total is not None and total < start + count:
        raise ValueError(f"--total ({total}) must be at least --start + --count "
                         f"({start + count})")
    if args.workers < 1:
        raise ValueError("--workers must be >= 1")
    if args.connect_timeout < 0:
        raise ValueError("--connect-timeout must be >= 0")
    if args.workers > 1 and (args.history is not None or args.worker_id is not None):
        raise ValueError("--history and --worker-id: one process each (without --workers)")
    if args.history is not None and not args.history.parent.is_dir():
        raise ValueError(f"--history: no directory {str(args.history.parent)!r}")
    if args.summary is not None and not args.summary.parent.is_dir():
        raise ValueError(f"--summary: no directory {str(args.summary.parent)!r}")
    return FleetConfig(host=host, port=port, prefix=args.prefix, count=count, start=start,
                       total=total, mix=mix, seed=args.seed, state_dir=args.state_dir,
                       publish_events=not args.no_event_topic), args.workers


def _run_workers(args: argparse.Namespace, config: FleetConfig, workers: int) -> int:
    """Split this process's range over ``workers`` child processes (each told the whole
    fleet's size); SIGINT / SIGTERM are passed on to them; their summaries are merged."""
    import subprocess

    base = [sys.executable, "-m", "devicesim.cli", "run", "--broker", args.broker,
            "--prefix", config.prefix, "--seed", str(config.seed),
            "--total", str(config.fleet_size), "--log-level", args.log_level,
            "--connect-timeout", str(args.connect_timeout),
            "--mix", ",".join(f"{k}={v}" for k, v in config.mix.items())]
    if args.state_dir:
        base += ["--state-dir", str(args.state_dir)]
    if args.duration:
        base += ["--duration", str(args.duration)]
    if args.no_event_topic:
        base += ["--no-event-topic"]
    ranges = worker_ranges(config.start, config.count, workers)
    parts = [None if args.summary is None else Path(f"{args.summary}.w{w}")
             for w in range(len(ranges))]
    procs: list[subprocess.Popen[bytes]] = []

    def forward(signum: int, frame: object) -> None:
        for proc in procs:
            proc.send_signal(signum)

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        for w, ((start, count), part) in enumerate(zip(ranges, parts, strict=True)):
            extra = ["--quiet"] if w or args.quiet else []
            if part is not None:
                part.unlink(missing_ok=True)  # never merge what an earlier run left
                extra += ["--summary", str(part)]
            procs.append(subprocess.Popen([*base, "--start", str(start), "--count", str(count),
                                           *extra]))
        codes = [proc.wait() for proc in procs]
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    worst = max(code if code >= 0 else 128 - code for code in codes)  # -N: killed by N
    if args.summary is None:
        return worst
    read = [_read_summary(part) for part in parts if part is not None]
    summary = merge_summaries(read)
    # the workers printed their own failures; these are the parent's
    own = [_no_summary(i) for i, part in enumerate(read) if part is None]
    try:
        write_summary(args.summary, summary)
    except OSError as e:
        own.append(f"--summary: {describe(e)}")
    for part in parts:
        if part is not None:
            part.unlink(missing_ok=True)
    _print_failures(own)
    return max(worst, 1 if summary["failures"] or own else 0)


def merge_summaries(parts: Sequence[dict[str, Any] | None]) -> dict[str, Any]:
    """The workers' summaries (None: worker ``i`` left none) as one summary."""
    things: dict[str, Any] = {}
    failures: list[str] = []
    for i, part in enumerate(parts):
        if part is None:
            failures.append(_no_summary(i))
            continue
        things.update(part["things"])
        failures.extend(part["failures"])
    return {"things": dict(sorted(things.items())), "failures": failures}


def _no_summary(worker: int) -> str:
    return f"worker {worker}: exited without writing its summary"


def _read_summary(path: Path) -> dict[str, Any] | None:
    try:
        summary: dict[str, Any] = json.loads(path.read_text())
    except (FileNotFoundError, ValueError):  # ValueError: not JSON (not written by us)
        return None
    return summary


def write_summary(path: Path, summary: dict[str, Any]) -> None:
    """Replace ``path`` atomically: a reader sees the old file or the whole new one."""
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(json.dumps(summary, indent=1) + "\n")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _print_failures(failures: list[str]) -> None:
    """One line on stderr per distinct failure."""
    for line, n in Counter(failures).items():
        times = f" ({n} times)" if n > 1 else ""
        print(f"devicesim run: failure: {line}{times}", file=sys.stderr, flush=True)


async def reach_broker(host: str, port: int, patience: float, stop: asyncio.Event
                       ) -> str | None:
    """Try to open a TCP connection to the broker, as a device would, until it works (None)
    or ``patience`` seconds passed or ``stop`` is set (the last error). Each retry is printed
    to stderr with its delay: 0.5 s, doubling up to 5 s."""
    delay, deadline = 0.5, time.monotonic() + patience
    while True:
        try:
            async with asyncio.timeout(5.0):
                _, writer = await asyncio.open_connection(host, port)
        except (OSError, TimeoutError) as e:
            error = os.strerror(e.errno) if isinstance(e, OSError) and e.errno else \
                str(e) or type(e).__name__
        else:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
            return None
        left = deadline - time.monotonic()
        if left <= 0 or stop.is_set():
            return error
        wait = min(delay, left)
        print(f"devicesim run: broker {host}:{port} not reachable ({error}); retrying in "
              f"{wait:.1f} s", file=sys.stderr, flush=True)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(wait):
                await stop.wait()
        delay = min(delay * 2, 5.0)


async def _run(config: FleetConfig, args: argparse.Namespace) -> int:
    duration, quiet, summary_path = args.duration, args.quiet, args.summary
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    part = HistoryPart(args.history) if args.history is not None else None
    feed = ProgressFeed(args.worker_id, config.host, config.port) \
        if args.worker_id is not None else None

    def record(op: Op) -> None:
        if part is not None:
            part.record(op)
        if feed is not None:
            feed.record(op)

    fleet = Fleet(config, record=record if part is not None or feed is not None else None)
    began = time.monotonic()
    failures: list[str] = []
    unreachable = await reach_broker(config.host, config.port, args.connect_timeout, stop)
    if unreachable is not None:
        failures.append(f"broker {config.host}:{config.port} not reachable after "
                        f"{time.monotonic() - began:.1f} s: {unreachable}")
    else:
        try:
            if feed is not None:
                await feed.start()
            connect_seconds = await fleet.start()
        except (FleetStartError, MqttError, TimeoutError) as e:
            # start() stopped every device it connected
            failures.append(f"fleet start: {describe(e)}")
    if not failures:
        try:
            if not quiet:
                print(f"devicesim: {config.count} devices connected in {connect_seconds:.2f} s"
                      f" (pid {os.getpid()})", flush=True)
            await _wait(fleet, stop, duration, quiet, began)
        finally:
            await fleet.stop()
        if not quiet:
            events = sum(d.events for d in fleet.devices.values())
            states = " ".join(f"{k}={v}" for k, v in sorted(fleet.states().items()))
            print(f"\ndevicesim: ran {time.monotonic() - began:.1f} s; {len(fleet.devices)} "
                  f"devices; {events} device events; final states: {states}", flush=True)
    if feed is not None:
        await feed.close()
    summary = fleet.summary()
    if part is not None:
        part.close()
        summary["history"] = {"path": str(part.path), "ops": part.ops}
    if feed is not None:
        summary["unanswered"] = feed.unanswered
    failures = summary["failures"] = [*summary["failures"], *failures]
    if summary_path is not None:
        try:
            write_summary(summary_path, summary)
        except OSError as e:
            failures.append(f"--summary: {describe(e)}")
    _print_failures(failures)
    return 1 if failures else 0


async def _wait(fleet: Fleet, stop: asyncio.Event, duration: float | None, quiet: bool,
                began: float) -> None:
    """Until ``stop`` is set or ``duration`` has passed, updating the status line."""
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


if __name__ == "__main__":
    sys.exit(main())
