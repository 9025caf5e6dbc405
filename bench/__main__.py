"""``python -m bench`` (``make bench ARGS="..."``): run the phases, print the table, write JSON.

Exit status 0 when every phase ran (missed targets are reported, not failures), 1 when a
phase could not run (its child logs are kept and named), 2 on a usage error.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import shutil
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from bench import report
from bench.control import BenchError
from bench.runner import PHASES, Bench, BenchConfig

QUICK = {"devices": 20, "rt_devices": 20, "seconds": 1.0, "warmup": 0.3, "idle_seconds": 0.5,
         "light_seconds": 0.3, "raw_messages": 5000, "drill_sizes": (40,)}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--devices", type=int, help="devices in the fleet and latency phases "
                   "(default 1000; --quick 20)")
    p.add_argument("--rt-devices", type=int, help="devices of the round-trip phase and the C "
                   "request/response reference (default min(--devices, 1000))")
    p.add_argument("--seconds", type=float, help="seconds per throughput window (default 5)")
    p.add_argument("--quick", action="store_true", help="tiny counts and ~1 s phases (tests)")
    p.add_argument("--out", type=Path, default=Path("reports/bench.json"),
                   help="where to write the JSON (default reports/bench.json)")
    p.add_argument("--seed", type=int, default=1, help="seed of the service and the devices")
    p.add_argument("--sweep-step", type=float, help="paced force-delete: seconds per swept "
                   "execution (default: the service's default setting)")
    p.add_argument("--phases", default=",".join(PHASES),
                   help=f"comma-separated subset of {','.join(PHASES)}")
    p.add_argument("--drill-sizes", help="comma-separated fleet sizes of the drill phase "
                   "(default 1000,5000,10000; --quick 40)")
    p.add_argument("--profile", type=Path, metavar="DIR",
                   help="sample the service, load generator and fleet with py-spy into DIR")
    p.add_argument("--keep", action="store_true", help="keep the work dir (broker and child "
                   "logs) even when everything worked")
    return p


def config_from(args: argparse.Namespace) -> BenchConfig:
    values: dict[str, object] = dict(QUICK) if args.quick else {}
    if args.devices is not None:
        values["devices"] = args.devices
    defaults = BenchConfig()
    devices = int(values.get("devices", defaults.devices))  # type: ignore[call-overload]
    if args.rt_devices is not None:
        values["rt_devices"] = args.rt_devices
    elif not args.quick:
        values["rt_devices"] = min(devices, 1000)
    if args.seconds is not None:
        values["seconds"] = args.seconds
    if not args.quick:
        seconds = float(values.get("seconds", defaults.seconds))  # type: ignore[arg-type]
        # < 65,535: Mosquitto gives every message queued for the subscriber a 16-bit id, and
        # mosquitto_pub -l runs ahead of mosquitto_sub, so a longer burst loses messages.
        values["raw_messages"] = max(5000, min(50_000, int(10_000 * seconds)))
    if args.sweep_step is not None:
        values["sweep_step"] = args.sweep_step
    if args.drill_sizes is not None:
        try:
            values["drill_sizes"] = tuple(int(n) for n in args.drill_sizes.split(",") if n)
        except ValueError:
            raise ValueError(f"--drill-sizes: expected sizes like 1000,5000, got "
                             f"{args.drill_sizes!r}") from None
    phases = tuple(p.strip() for p in args.phases.split(",") if p.strip())
    unknown = sorted(set(phases) - set(PHASES))
    if unknown:
        raise ValueError(f"--phases: unknown phase {unknown[0]!r} (one of {', '.join(PHASES)})")
    if devices < 1 or int(values.get("rt_devices", 1)) < 1:  # type: ignore[call-overload]
        raise ValueError("--devices and --rt-devices must be >= 1")
    return BenchConfig(**values, seed=args.seed, phases=phases,  # type: ignore[arg-type]
                       profile_dir=args.profile, quick=args.quick)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        config = config_from(args)
    except ValueError as e:
        print(f"python -m bench: {e}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    workdir = Path(tempfile.mkdtemp(prefix="devicesim-bench-"))
    print(f"bench: seed={config.seed} devices={config.devices} rt_devices={config.rt_devices} "
          f"seconds={config.seconds:g} warmup={config.warmup:g} idle={config.idle_seconds:g} "
          f"raw_messages={config.raw_messages} payload={config.payload_bytes} B "
          f"sweep_step={config.sweep_step:g} s hold={config.hold_seconds:g} s "
          f"phases={','.join(config.phases)} workdir={workdir}", flush=True)

    def status(text: str) -> None:
        print(f"bench: {text}", file=sys.stderr, flush=True)

    try:
        results = asyncio.run(Bench(config, workdir, status).run())
    except (BenchError, TimeoutError, OSError) as e:
        print(f"bench: failed: {type(e).__name__}: {e}\nbench: logs kept in {workdir}",
              file=sys.stderr)
        return 1
    figs = report.figures(results)
    print()
    print(report.table(figs))
    load = " / ".join(f"{results.params[k][0]:.2f}" for k in ("loadavg_at_start",
                                                                "loadavg_at_end"))
    print(f"\n{report.RATIO_DEFINITION}. 1-min load average at start / end: {load} "
          f"({results.params['cpus']} CPUs; other work on the machine lowers every figure).")
    source = results.params["source"]
    modified = f" + uncommitted changes to {', '.join(source['modified'])}" \
        if source["modified"] else ""
    print(f"Code measured: commit {source['commit']}{modified}.")
    for note in results.notes:
        print(f"note: {note}")
    if results.profiles:
        print("\nprofiles (py-spy, share of samples):")
        print(report.profiles_text(results))
    report.write(args.out, report.to_json(results, figs))
    print(f"\nbench: wrote {args.out}")
    if args.keep:
        print(f"bench: work dir kept: {workdir}")
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
