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
import tempfile
import time
import urllib.parse
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from devicesim import __version__
from devicesim.behaviours import resolve
from devicesim.engine import Fleet, FleetConfig, FleetStartError, describe, worker_ranges
from devicesim.joining import DrillLink
from devicesim.live import LiveView
from devicesim.loop import run_main
from devicesim.metrics import LiveMetrics
from devicesim.mqtt import SECRET_ENV, MqttError
from devicesim.recording import HistoryPart, ProgressFeed
from devicesim.wire.history import Op
from devicesim.wire.joining import JoinError, check_session, shard_range


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


def parse_shard(text: str) -> tuple[int, int]:
    """``i/n`` -> (i, n) (0-based i)."""
    index, sep, parts = text.partition("/")
    try:
        i, n = int(index), int(parts)
    except ValueError:
        raise ValueError(f"--shard: expected i/n, got {text!r}") from None
    if not sep or n < 1 or not 0 <= i < n:
        raise ValueError(f"--shard: expected 0 <= i < n, got {text!r}")
    return i, n


def parse_broker(url: str, *, tls: bool = True) -> tuple[str, int]:
    """``mqtt://HOST:PORT`` (or, if ``tls``, ``mqtts://``) -> (host, port)."""
    parsed = urllib.parse.urlsplit(url)
    schemes = ("mqtt", "mqtts") if tls else ("mqtt",)
    if parsed.scheme not in schemes or not parsed.hostname or not parsed.port:
        raise ValueError(f"--broker: expected {' or '.join(f'{s}://HOST:PORT' for s in schemes)}"
                         f", got {url!r}")
    return parsed.hostname, parsed.port


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="devicesim", description=__doc__)
    parser.add_argument("--version", action="version", version=f"devicesim {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    run = sub.add_parser("run", help="run simulated devices")
    run.add_argument("--broker", required=True, metavar="URL",
                     help="mqtt://HOST:PORT, or mqtts://HOST:PORT for mutual TLS (with --ca "
                          "and --cert-dir)")
    run.add_argument("--ca", type=Path, metavar="FILE",
                     help="with mqtts://: the CA that signed the broker's certificate")
    run.add_argument("--cert-dir", type=Path, metavar="DIR",
                     help="with mqtts://: each thing's <thing>.crt and <thing>.key (fleet "
                          "provision writes them)")
    run.add_argument("--prefix", help="thing name prefix (default dev-)")
    run.add_argument("--count", type=int, help="devices in this process (default 1)")
    run.add_argument("--start", type=int, help="index of the first thing (default 0)")
    run.add_argument("--total", type=int, default=None,
                     help="things in the whole fleet, of which this process runs a range; "
                     "--mix is assigned over all of them, --shard splits them (default: "
                     "--start + --count; with --shard, --count)")
    group = run.add_mutually_exclusive_group()
    group.add_argument("--behaviour", help="one behaviour for every device (default reference;"
                       " or package.module:Class)")
    group.add_argument("--mix", help="weights, e.g. reference=0.9,stuck=0.1")
    run.add_argument("--workers", type=int, help="processes to shard over (default 1)")
    run.add_argument("--shard", help="i/n: run the i-th of n equal ranges of --total things "
                     "(with --join: of the drill's fleet)")
    run.add_argument("--join", metavar="SESSION",
                     help="run shard --shard i/n of the fleet of the drill started with "
                          "--session SESSION (or --workers) on this broker: the drill sends "
                          "the fleet's shape and collects this shard's history")
    run.add_argument("--join-timeout", type=float, default=600.0, metavar="S",
                     help="with --join: wait this long for the drill's invitation "
                          "(default 600)")
    run.add_argument("--jobs-data", metavar="URL",
                     help="the jobs data plane over HTTPS (http://HOST:PORT: the "
                          "`jobs_data` endpoint of `fleet up`'s ready file), where `http` "
                          "devices send their requests")
    run.add_argument("--state-dir", type=Path, help="persist each device's NVM here")
    run.add_argument("--duration", type=float, help="stop after this many seconds")
    run.add_argument("--connect-timeout", type=float, default=30.0, metavar="S",
                     help="keep trying to reach the broker for this long at start, with a "
                          "printed backoff (default 30)")
    run.add_argument("--seed", type=int, help="seed of every device's randomness (default 1)")
    run.add_argument("--summary", type=Path, metavar="PATH",
                     help="at exit, write per-device behaviour, event count and NVM, and the "
                     "failures, as JSON (atomically); with --workers each child writes "
                     "PATH.w{i} and this process merges them into PATH")
    run.add_argument("--history", type=Path, metavar="PATH",
                     help="record this process's part of a drill's history (JSON Lines): "
                          "every request, reply, push and device event of its devices")
    run.add_argument("--no-event-topic", action="store_true",
                     help="do not publish device events on devicesim/THING/events (the "
                          "devices of a drill record them in its history instead)")
    run.add_argument("--no-reply-subscriptions", action="store_true",
                     help="subscribe to notify-next only: on AWS IoT Core, or a broker running "
                          "the devicesim_aws plugin, replies reach their requester unasked "
                          "(default: subscribe to the reply topics, as a plain broker needs)")
    run.add_argument("--quiet", action="store_true", help="no status line")
    run.add_argument("--metrics-port", type=int, metavar="PORT",
                     help="serve Prometheus metrics on 127.0.0.1:PORT/metrics (0: a free port, "
                          "printed): requests, replies by code, round trips, devices by state "
                          "and connected, lost-access detections (docs/metrics.md); one "
                          "process (without --workers)")
    run.add_argument("--log-level", default="WARNING",
                     help="DEBUG, INFO, WARNING (default), ERROR or CRITICAL")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        logging.basicConfig(level=args.log_level.upper(),
                            format="%(asctime)s %(levelname)s %(name)s %(message)s")
        if args.join is not None:
            shard = _join_options(args)
        else:
            config, workers = _config(args)
    except ValueError as e:
        print(f"devicesim run: {e}", file=sys.stderr)
        return 2
    try:
        if args.join is not None:
            return run_main(_run_joined(args, *shard))
        if workers > 1:
            return _run_workers(args, config, workers)
        return run_main(_run(config, args))
    except KeyboardInterrupt:
        return 130


#: what the drill's invitation decides for a worker that joins it
_FLEET_SHAPE = ("prefix", "count", "start", "total", "behaviour", "mix", "seed", "workers",
                "history", "ca", "cert_dir", "jobs_data")


def _join_options(args: argparse.Namespace) -> tuple[str, int, int]:
    """(host, shard, shards) of ``--join``: the fleet's shape is the drill's, not ours."""
    parse_broker(args.broker, tls=False)
    check_session(args.join)
    given = [f"--{name}" for name in _FLEET_SHAPE if getattr(args, name) is not None]
    given += [flag for flag, on in (("--no-event-topic", args.no_event_topic),
                                    ("--no-reply-subscriptions", args.no_reply_subscriptions))
              if on]
    if given:
        raise ValueError(f"--join: the drill chooses the fleet; drop {', '.join(given)}")
    if args.shard is None:
        raise ValueError("--join needs --shard i/n (n: the drill's --workers or --shards)")
    if args.join_timeout <= 0:
        raise ValueError("--join-timeout must be > 0")
    _check_paths(args)
    return (args.join, *parse_shard(args.shard))


def _config(args: argparse.Namespace) -> tuple[FleetConfig, int]:
    host, port = parse_broker(args.broker)
    tls = args.broker.startswith("mqtts://")
    if tls and args.ca is None:
        raise ValueError("--broker mqtts://...: needs --ca (and --cert-dir)")
    if not tls and (args.ca is not None or args.cert_dir is not None):
        raise ValueError("--ca and --cert-dir: only with --broker mqtts://...")
    for option, path in (("--ca", args.ca), ("--cert-dir", args.cert_dir)):
        if path is not None and not path.exists():
            raise ValueError(f"{option}: no such file or directory {str(path)!r}")
    mix = parse_mix(args.mix) if args.mix else {args.behaviour or "reference": 1.0}
    for name in mix:
        resolve(name)  # a ValueError names an unknown behaviour now, not later
    count = 1 if args.count is None else args.count
    start = 0 if args.start is None else args.start
    workers = 1 if args.workers is None else args.workers
    if count < 1 or start < 0:
        raise ValueError("--count must be >= 1 and --start >= 0")
    total = args.total
    if total is not None and total < 1:
        raise ValueError("--total must be >= 1")
    if args.shard:
        total = total or count
        i, n = parse_shard(args.shard)
        start, count = shard_range(i, n, total)
        if count == 0:
            raise ValueError(f"--shard {args.shard}: no things left for this shard of "
                             f"{total}")
    if total is not None and total < start + count:
        raise ValueError(f"--total ({total}) must be at least --start + --count "
                         f"({start + count})")
    if workers < 1:
        raise ValueError("--workers must be >= 1")
    if workers > 1 and args.history is not None:
        raise ValueError("--history: one process (without --workers)")
    if workers > 1 and args.metrics_port is not None:
        raise ValueError("--metrics-port: one process (without --workers)")
    _check_paths(args)
    return FleetConfig(host=host, port=port, prefix="dev-" if args.prefix is None else
                       args.prefix, count=count, start=start, total=total, mix=mix,
                       seed=1 if args.seed is None else args.seed, state_dir=args.state_dir,
                       publish_events=not args.no_event_topic,
                       subscribe_replies=not args.no_reply_subscriptions,
                       tls_ca=args.ca, cert_dir=args.cert_dir, jobs_data=args.jobs_data), workers


def _check_paths(args: argparse.Namespace) -> None:
    if args.connect_timeout < 0:
        raise ValueError("--connect-timeout must be >= 0")
    if args.history is not None and not args.history.parent.is_dir():
        raise ValueError(f"--history: no directory {str(args.history.parent)!r}")
    if args.summary is not None and not args.summary.parent.is_dir():
        raise ValueError(f"--summary: no directory {str(args.summary.parent)!r}")


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
    if args.no_reply_subscriptions:
        base += ["--no-reply-subscriptions"]
    if args.ca is not None:
        base += ["--ca", str(args.ca)]
    if args.cert_dir is not None:
        base += ["--cert-dir", str(args.cert_dir)]
    if args.jobs_data is not None:
        base += ["--jobs-data", args.jobs_data]
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
    stop = _stop_on_signals()
    part = HistoryPart(args.history) if args.history is not None else None
    metrics = LiveMetrics() if args.metrics_port is not None else None
    fleet = Fleet(config, record=_recorders(part.record if part is not None else None,
                                            metrics))
    failures = await _run_fleet(fleet, args, stop, stop, metrics)
    summary = fleet.summary()
    if part is not None:
        part.close()
        summary["history"] = {"path": str(part.path), "ops": part.ops}
    return _finish(summary, failures, args.summary)


async def _run_joined(args: argparse.Namespace, session: str, shard: int, shards: int) -> int:
    """``--join``: take the drill's invitation, run this shard of its fleet until the drill
    says stop (or a signal), then send the history part and wait for the drill to confirm
    it (30 s; 5 s after a signal)."""
    stop = _stop_on_signals()
    host, port = parse_broker(args.broker)
    began = time.monotonic()
    unreachable = await reach_broker(host, port, args.connect_timeout, stop)
    if unreachable is not None:
        return _finish(None, [f"broker {host}:{port} not reachable after "
                              f"{time.monotonic() - began:.1f} s: {unreachable}"], args.summary)
    link = DrillLink(host, port, session, shard, shards,
                     secret=os.environ.get(SECRET_ENV) or None)
    try:
        if not args.quiet:
            print(f"devicesim: shard {shard}/{shards} waiting for drill {session!r} on "
                  f"{args.broker}", flush=True)
        try:
            async with asyncio.timeout(args.join_timeout):
                invitation = await _first(link.join(), stop)
        except TimeoutError:
            return _finish(None, [f"no invitation from drill {session!r} within "
                                  f"{args.join_timeout:g} s"], args.summary)
        except JoinError as e:
            return _finish(None, [f"join {session!r}: {e}"], args.summary)
        except MqttError as e:
            return _finish(None, [f"join {session!r}: {describe(e)}"], args.summary)
        if invitation is None:
            return 130
        start, count = shard_range(shard, shards, invitation.total)
        tls = invitation.tls or {}
        if tls:  # the secure profile: devices connect with mutual TLS
            host, port = parse_broker(tls["url"])
        elif invitation.devices:  # through the drill's network proxy
            host, port = parse_broker(invitation.devices)
        config = FleetConfig(host=host, port=port, prefix=invitation.prefix, count=count,
                             start=start, total=invitation.total, mix=invitation.mix,
                             seed=invitation.seed, state_dir=args.state_dir,
                             publish_events=invitation.publish_events,
                             subscribe_replies=invitation.subscribe_replies,
                             tls_ca=Path(tls["tls_ca"]) if tls else None,
                             cert_dir=Path(tls["cert_dir"]) if tls else None,
                             jobs_data=invitation.jobs_data)
        with tempfile.TemporaryDirectory(prefix="devicesim-shard-") as tmp:
            part = HistoryPart(Path(tmp) / "history.jsonl")
            feed = ProgressFeed(str(shard), link.progress, run=invitation.run)

            metrics = LiveMetrics() if args.metrics_port is not None else None

            def record(op: Op) -> None:
                part.record(op)
                feed.record(op)
                if metrics is not None:
                    metrics.observe(op)

            fleet = Fleet(config, record=record)

            async def power(action: str, things: list[str], clean_session: bool) -> None:
                mine = [t for t in things if t in fleet.devices]
                if action == "off":
                    await asyncio.gather(*(fleet.devices[t].power_off() for t in mine))
                    feed.forget(mine)
                else:
                    await asyncio.gather(*(fleet.devices[t].power_on(
                        clean_session=clean_session) for t in mine))

            link.on_power = power
            feed.start()
            until = asyncio.Event()
            ended = asyncio.ensure_future(_either(stop, link.stopped, until))
            try:
                failures = await _run_fleet(fleet, args, stop, until, metrics)
            finally:
                ended.cancel()
            await feed.close()
            part.close()
            summary = {**fleet.summary(), "unanswered": feed.unanswered,
                       "unansweredRequests": feed.waiting()}
            with part.path.open("rb") as lines:
                delivered = await link.send_part(iter(lines), summary,
                                                 5.0 if stop.is_set() else 30.0)
        if not delivered:
            failures.append(f"drill {session!r} did not confirm this shard's history part")
        return _finish(summary, failures, args.summary)
    finally:
        await link.close()


def _stop_on_signals() -> asyncio.Event:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    return stop


async def _either(a: asyncio.Event, b: asyncio.Event, into: asyncio.Event) -> None:
    """Set ``into`` once ``a`` or ``b`` is set."""
    waits = [asyncio.ensure_future(a.wait()), asyncio.ensure_future(b.wait())]
    try:
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        into.set()
    finally:
        for w in waits:
            w.cancel()


async def _first(coro: Any, stop: asyncio.Event) -> Any:
    """``coro``'s result; None if ``stop`` is set first."""
    task = asyncio.ensure_future(coro)
    stopped = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait([task, stopped], return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopped.cancel()
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    return task.result() if not task.cancelled() else None


def _recorders(record: Callable[[Op], None] | None, metrics: LiveMetrics | None
               ) -> Callable[[Op], None] | None:
    """The fleet's ``record``: the history part's, and the live metrics'."""
    if metrics is None:
        return record
    if record is None:
        return metrics.observe

    def both(op: Op) -> None:
        record(op)
        metrics.observe(op)

    return both


async def _run_fleet(fleet: Fleet, args: argparse.Namespace, stop: asyncio.Event,
                     until: asyncio.Event, metrics: LiveMetrics | None = None) -> list[str]:
    """Reach the broker, start the fleet, run it until ``until`` is set (or ``--duration``),
    stop it; the failures, one line each. With ``metrics``, serve them meanwhile."""
    config, quiet = fleet.config, args.quiet
    began = time.monotonic()
    unreachable = await reach_broker(config.host, config.port, args.connect_timeout, stop)
    if unreachable is not None:
        return [f"broker {config.host}:{config.port} not reachable after "
                f"{time.monotonic() - began:.1f} s: {unreachable}"]
    try:
        connect_seconds = await fleet.start()
    except (FleetStartError, MqttError, TimeoutError) as e:
        return [f"fleet start: {describe(e)}"]  # start() stopped every device it connected
    try:
        if not quiet:
            print(f"devicesim: {config.count} devices connected in {connect_seconds:.2f} s"
                  f" (pid {os.getpid()})", flush=True)
        if metrics is not None:
            metrics.set_device_states(fleet.states())
            port = metrics.serve(args.metrics_port)
            print(f"devicesim: metrics http://127.0.0.1:{port}/metrics", flush=True)
        with LiveView(f"devicesim: {config.count} devices", quiet=quiet) as view:
            await _wait(fleet, until, args.duration, view, began, metrics)
    finally:
        if metrics is not None:
            metrics.close()
        await fleet.stop()
    if not quiet:
        events = sum(d.events for d in fleet.devices.values())
        states = " ".join(f"{k}={v}" for k, v in sorted(fleet.states().items()))
        print(f"devicesim: ran {time.monotonic() - began:.1f} s; {len(fleet.devices)} "
              f"devices; {events} device events; final states: {states}", flush=True)
    return []


def _finish(summary: dict[str, Any] | None, failures: list[str], path: Path | None) -> int:
    """Write the summary (if asked for), print the failures; the exit status."""
    if summary is not None:
        failures = summary["failures"] = [*summary["failures"], *failures]
        if path is not None:
            try:
                write_summary(path, summary)
            except OSError as e:
                failures.append(f"--summary: {describe(e)}")
    _print_failures(failures)
    return 1 if failures else 0


async def _wait(fleet: Fleet, stop: asyncio.Event, duration: float | None, view: LiveView,
                began: float, metrics: LiveMetrics | None = None) -> None:
    """Until ``stop`` is set or ``duration`` has passed, updating the live view (and the
    devices-by-state gauge) every second."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(duration):
            while not stop.is_set():
                states = fleet.states()
                if metrics is not None:
                    metrics.set_device_states(states)
                view.update({"elapsed": f"{time.monotonic() - began:.0f} s",
                             "devices": " ".join(f"{k} {v}" for k, v in sorted(states.items())),
                             "events": str(sum(d.events for d in fleet.devices.values()))})
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(1.0):
                        await stop.wait()


if __name__ == "__main__":
    sys.exit(main())
