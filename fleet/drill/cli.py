"""``fleet drill`` and ``fleet check``: run a drill (the main job) or re-check a history.

Exit status: 0 PASS (every invariant holds, over enough cases, on a complete history),
1 FAIL (a violation, or a history that is incomplete: timed out, stalled, lost events, a
component failed), 2 usage or environment error, 3 INCONCLUSIVE (nothing broke, but too
few cases were seen for the verdict to count); 130 / 143 interrupted by SIGINT / SIGTERM
(after stopping everything it started and writing the history and reports so far).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import signal
import sys
import time
from pathlib import Path
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from devicesim.live import LiveView
from devicesim.loop import run_main
from devicesim.wire import history
from devicesim.wire.joining import check_session
from fleet import api
from fleet.broker import BrokerAddress, BrokerError, find_mosquitto
from fleet.checker import Budgets, Status, analyse
from fleet.checker.report import terminal, verdict_line, write_html, write_reports
from fleet.drill import spec
from fleet.drill.controller import iot_client
from fleet.drill.runner import Interrupt, RunOptions, Target

DEFAULT_DRILL = "force-delete"
EXIT = {Status.PASS: 0, Status.FAIL: 1, Status.INCONCLUSIVE: 3}


def register(sub: Any) -> None:
    p = sub.add_parser("drill", help="run a drill: rollouts and faults over a fleet, checked",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("drill", nargs="?", default=DEFAULT_DRILL,
                   help=f"built-in drill name or a TOML file (default: {DEFAULT_DRILL})")
    p.add_argument("--list", action="store_true", help="list the built-in drills and exit")
    p.add_argument("--devices", type=int, help="override the drill's fleet size")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--behaviour", help="one behaviour for every device")
    group.add_argument("--mix", help="behaviour weights, e.g. reference=0.9,stuck=0.1")
    p.add_argument("--seed", type=int, help="override the drill's seed")
    p.add_argument("--timeout", type=float,
                   help="seconds for the schedule to settle (default: the drill's, scaled "
                        "up with --devices)")
    p.add_argument("--duration", metavar="D",
                   help="a soak: run the drill's steps in waves for this long (90s, 30m, 2h; "
                        "Ctrl-C ends it after the wave under way)")
    p.add_argument("--stall-seconds", type=float,
                   help="stop the drill when nothing happens for this long (default: the "
                        "drill's, 10)")
    p.add_argument("--broker", metavar="URL",
                   help="use this broker (mqtt://HOST:PORT) instead of the embedded one")
    p.add_argument("--workers", type=int, default=1,
                   help="device processes to start here, joining over the broker (default 1: "
                        "the devices run in the drill's own process)")
    p.add_argument("--shards", type=int, default=0,
                   help="wait for this many device processes started elsewhere: devicesim run "
                        "--broker URL --join SESSION --shard i/N (needs --broker reachable "
                        "by them)")
    p.add_argument("--session", help="the name --shards workers join by (default: the "
                   "drill's name)")
    p.add_argument("--join-timeout", type=float, default=300.0, metavar="S",
                   help="with --shards: how long to wait for every shard to join (default "
                        "300); the drill's clock starts once they have")
    e = p.add_argument_group("external devices (real firmware devicesim does not run)")
    e.add_argument("--external", metavar="THING[,THING...]",
                   help="things whose devices you run yourself (a board, a Linux port of your "
                        "firmware): every job targets them, the drill says how each connects "
                        "and waits for them, and they are judged from their traffic alone "
                        "(with --devices 0: no simulated devices)")
    e.add_argument("--ready-file", type=Path, metavar="PATH",
                   help="with external devices: JSON of how each connects (host, port, client "
                        "id, certificates), written once the drill waits for them")
    e.add_argument("--external-timeout", type=float, metavar="S",
                   help="how long to wait for the external devices to connect (default: the "
                        "drill's, 300); the drill's clock starts once they have")
    p.add_argument("--secure", action="store_true",
                   help="the secure profile: the drill's things are provisioned (certificates, "
                        "policy) and its devices connect with mutual TLS; anonymous clients "
                        "are refused (embedded broker; devices here or in --workers)")
    t = p.add_argument_group("against AWS IoT Core (or any AWS-compatible endpoint)")
    t.add_argument("--target", choices=["aws"],
                   help="run no local broker or service: devices connect to --endpoint with "
                        "their certificates (fleet provision --aws), the controller calls "
                        "the AWS control plane")
    t.add_argument("--endpoint", metavar="URL",
                   help="the MQTT data endpoint, mqtts://HOST:PORT (default: DescribeEndpoint "
                        "iot:Data-ATS, port 8883)")
    t.add_argument("--control-endpoint", metavar="URL",
                   help="the control plane's URL (default: AWS's, for --region)")
    t.add_argument("--region", help="AWS region (default: the configured one)")
    t.add_argument("--ca", type=Path, metavar="FILE",
                   help="the CA of the endpoint's certificate (AWS: AmazonRootCA1.pem)")
    t.add_argument("--cert-dir", type=Path, metavar="DIR",
                   help="each thing's <thing>.crt / <thing>.key (fleet provision)")
    p.add_argument("--quiet", action="store_true",
                   help="no live progress (the schedule's steps and the verdict are still "
                        "printed)")
    p.add_argument("--metrics-port", type=int, metavar="PORT",
                   help="serve Prometheus metrics on 127.0.0.1:PORT/metrics while the drill "
                        "runs (0: a free port, printed): requests and replies by API and "
                        "code, round trips, executions by status, lost-access detections, "
                        "devices connected, faults fired (docs/metrics.md)")
    p.add_argument("--report-dir", type=Path,
                   help="where history.jsonl, report.json and junit.xml go "
                        "(default: reports/<drill name>)")
    p.set_defaults(run=run_drill)

    c = sub.add_parser("check", help="re-run the checker on a recorded history")
    c.add_argument("history", type=Path, help="history.jsonl of a drill")
    c.add_argument("--notice-seconds", type=float, default=Budgets().notice_seconds)
    c.add_argument("--recover-seconds", type=float, default=Budgets().recover_seconds)
    c.add_argument("--reply-timeout-seconds", type=float,
                   default=Budgets().reply_timeout_seconds)
    c.add_argument("--in-flight-seconds", type=float, default=Budgets().in_flight_seconds,
                   help="external devices: how long after a rejection told a device its "
                        "execution was gone an update may still have been in flight")
    c.add_argument("--external", metavar="THING[,THING...]|all",
                   help="judge these devices from their traffic alone, as if they were "
                        "external (all: every device of the drill); devices the history "
                        "names as external always are")
    c.add_argument("--report-dir", type=Path,
                   help="also write report.json, junit.xml and report.html")
    c.set_defaults(run=run_check)

    r = sub.add_parser("report", help="draw the report page (report.html) of a recorded "
                       "history")
    r.add_argument("history", type=Path, help="history.jsonl of a drill")
    r.add_argument("-o", "--output", type=Path,
                   help="the page to write (default: report.html beside the history)")
    r.set_defaults(run=run_report)


#: api.drill_spec's parameters that are options of this command
_OPTIONS = {"devices", "behaviour", "mix", "seed", "timeout", "duration", "stall_seconds",
            "external", "external_timeout"}


def list_drills() -> str:
    rows = [(name, spec.load(name).description) for name in spec.builtin_names()]
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"{name.ljust(width)}  {text}" for name, text in rows)


def _drill_from(args: argparse.Namespace) -> spec.Drill:
    """The drill and its changes, through :func:`fleet.api.drill_spec` (its one-line
    errors name the option), then the checks of this command's own options."""
    from devicesim.cli import parse_mix

    try:
        drill = api.drill_spec(
            args.drill, devices=args.devices, behaviour=args.behaviour or None,
            mix=parse_mix(args.mix) if args.mix else None, seed=args.seed,
            timeout=args.timeout, duration=args.duration, stall_seconds=args.stall_seconds,
            external=None if args.external is None else args.external.split(","),
            external_timeout=args.external_timeout,
            import_behaviours=not args.shards)  # shards import their own
    except spec.DrillError:
        raise
    except ValueError as e:  # "devices: ..." -> "--devices: ..."
        name, sep, rest = str(e).partition(": ")
        if sep and name.replace(" ", "_") in _OPTIONS:
            raise ValueError(f"--{name.replace(' ', '-').replace('_', '-')}: {rest}") from None
        raise
    external = drill.external
    if args.ready_file is not None and not external.things:
        raise ValueError("--ready-file: goes with external devices (--external)")
    if args.workers < 1:
        raise ValueError("--workers: must be at least 1")
    devices = drill.devices
    if args.shards:
        if args.workers > 1:
            raise ValueError("--shards and --workers: choose one")
        if not 1 <= args.shards <= devices:
            raise ValueError(f"--shards: must be between 1 and the fleet's {devices} devices")
        if args.join_timeout <= 0:
            raise ValueError("--join-timeout: must be positive")
    elif args.workers > max(1, devices):
        raise ValueError(f"--workers: at most the fleet's {devices} devices")
    if external.things and (args.broker or args.shards or args.target):
        raise ValueError("--external: the drill's embedded broker (not --broker, --shards or "
                         "--target): its plugin tells the drill when they connect")
    if args.session is not None:
        check_session(args.session)
    if args.broker is not None and args.broker.startswith("mqtts://"):
        raise ValueError("--broker: mqtt://HOST:PORT (a TLS endpoint with devices' "
                         "certificates is --target aws --endpoint mqtts://...)")
    if args.target is not None:
        if args.broker or args.secure or args.shards or args.workers > 1:
            raise ValueError("--target: no --broker, --secure, --shards or --workers (the "
                             "target is the broker; the devices run in the drill's process)")
        if args.ca is None or args.cert_dir is None:
            raise ValueError("--target: needs --ca and --cert-dir")
        for option, path in (("--ca", args.ca), ("--cert-dir", args.cert_dir)):
            if not path.exists():
                raise ValueError(f"{option}: no such file or directory {str(path)!r}")
        if args.endpoint is not None and not args.endpoint.startswith("mqtts://"):
            raise ValueError("--endpoint: expected mqtts://HOST:PORT")
    elif any(v is not None for v in (args.endpoint, args.control_endpoint, args.region,
                                     args.ca, args.cert_dir)):
        raise ValueError("--endpoint, --control-endpoint, --region, --ca and --cert-dir go "
                         "with --target")
    if args.secure and (args.broker or args.shards):
        raise ValueError("--secure: the embedded broker, with devices here or in --workers "
                         "(not --broker or --shards)")
    return drill


def _target(args: argparse.Namespace) -> Target | None:
    """The drill's target; its data endpoint from DescribeEndpoint unless given."""
    if args.target is None:
        return None
    endpoint = args.endpoint
    if endpoint is None:
        try:
            client = iot_client(args.control_endpoint, region=args.region or (
                "us-east-1" if args.control_endpoint else None))
            address = client.describe_endpoint(endpointType="iot:Data-ATS")["endpointAddress"]
        except (BotoCoreError, ClientError) as e:
            raise ValueError(f"--target: DescribeEndpoint: {e}") from None
        endpoint = f"mqtts://{address}:8883"
    return Target(endpoint=BrokerAddress.parse(endpoint), ca=args.ca, cert_dir=args.cert_dir,
                  control_endpoint=args.control_endpoint, region=args.region)


def run_drill(args: argparse.Namespace) -> int:
    if args.list:
        print(list_drills())
        return 0
    drill = _drill_from(args)
    if not args.broker and args.target is None:
        try:
            find_mosquitto()
        except BrokerError as e:
            print(f"fleet drill: {e}", file=sys.stderr)
            return 2
    report_dir = args.report_dir or Path("reports") / drill.name
    mix = drill.mix or {drill.behaviour: 1.0}
    print(f"drill {drill.name}: {drill.devices} devices "
          f"({', '.join(f'{k}={v:g}' for k, v in mix.items())})"
          + (f" and {len(drill.external.things)} external ({', '.join(drill.external.things)})"
             if drill.external.things else "") + f", seed {drill.seed}"
          + (f"; durations x{drill.pace:g} (paced for {drill.paced_for} devices)"
             if drill.pace > 1 else ""), flush=True)
    began = time.monotonic()
    view = LiveView(f"drill {drill.name}", quiet=args.quiet)

    def status(text: str) -> None:
        view.say(f"  {time.monotonic() - began:6.1f}s  {text}")

    interrupt = Interrupt()
    try:
        with view:
            outcome = run_main(_run_interruptible(drill, RunOptions(
                broker_url=args.broker, workers=args.workers, shards=args.shards,
                session=args.session, join_seconds=args.join_timeout, secure=args.secure,
                target=_target(args), report_dir=report_dir, ready_file=args.ready_file,
                metrics_port=args.metrics_port, live=view.update,
                status=status, interrupt=interrupt)))
    except asyncio.CancelledError:  # a second signal: cleanup cut short, nothing written
        reason = interrupt.reason or "SIGINT"
        print(f"drill: interrupted twice by {reason}: stopped without a history or report",
              file=sys.stderr)
        return 128 + signal.Signals[reason].value
    print()
    print(terminal(outcome.verdict))
    if outcome.timed_out:
        print("drill: the schedule did not settle before the drill's timeout (a big fleet "
              "needs a longer --timeout, or --workers to use every core)")
    print(f"\nverdict: {verdict_line(outcome.verdict)} "
          f"({time.monotonic() - began:.1f} s)  reports: {outcome.history_path}, "
          f"{', '.join(str(p) for p in outcome.report_paths)}")
    print(f"re-check: fleet check {outcome.history_path}")
    if outcome.interrupted is not None:
        print(f"drill: interrupted by {outcome.interrupted}: everything it started was "
              "stopped; the history and reports above are of the run so far")
        return 128 + signal.Signals[outcome.interrupted].value
    return EXIT[outcome.verdict.status]


async def _run_interruptible(drill: spec.Drill, options: RunOptions) -> api.DrillOutcome:
    """Run the drill; the first SIGINT or SIGTERM stops it in order (schedule cancelled,
    a short drain, history and reports of the run so far, every process it started
    stopped), a second one cancels the cleanup's waits too (the broker and the device
    workers are still stopped)."""
    loop = asyncio.get_running_loop()
    interrupt = options.interrupt or Interrupt()
    main = asyncio.current_task()
    assert main is not None

    def on_signal(sig: signal.Signals) -> None:
        if interrupt.reason is None:
            print(f"\ndrill: {sig.name}: stopping (again to hurry)", flush=True)
            interrupt.set(sig.name)
        else:
            main.cancel()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal, sig)
    try:
        return await api.run_drill_async(drill, workers=options.workers,
                                         options=dataclasses.replace(options,
                                                                     interrupt=interrupt))
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


def run_check(args: argparse.Namespace) -> int:
    ops = history.read(args.history)
    budgets = Budgets(notice_seconds=args.notice_seconds, recover_seconds=args.recover_seconds,
                      reply_timeout_seconds=args.reply_timeout_seconds,
                      in_flight_seconds=args.in_flight_seconds)
    external: list[str] = []
    if args.external is not None:
        start = next((op for op in ops if op.process == "drill" and op.f == "start"), None)
        devices = sorted(start.value.get("behaviours") or {}) if start is not None else []
        external = devices if args.external == "all" else \
            [t.strip() for t in args.external.split(",") if t.strip()]
        unknown = sorted(set(external) - set(devices)) if devices else []
        if not external or unknown:
            raise ValueError(f"--external: {unknown[0] if unknown else 'nothing'}: not a "
                             f"device of this drill")
    timeline, verdict = analyse(ops, budgets, external=external)
    print(terminal(verdict))
    if args.report_dir:
        write_reports(verdict, args.report_dir, args.history, timeline, budgets)
    print(f"\nverdict: {verdict_line(verdict)}")
    return EXIT[verdict.status]


def run_report(args: argparse.Namespace) -> int:
    """``fleet report``: the page of any recorded history, judged as ``fleet check`` does."""
    ops = history.read(args.history)
    budgets = Budgets()
    timeline, verdict = analyse(ops, budgets)
    out = args.output or args.history.with_name("report.html")
    write_html(verdict, timeline, budgets, out, args.history)
    print(f"{out} ({out.stat().st_size // 1024} KiB): verdict {verdict_line(verdict)}; open "
          f"it in a browser (it needs no network)")
    return 0

