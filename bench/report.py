"""Figures: value, the reference measured in the same run, their ratio, the PERF.md target.

``ratio`` is always ``value / reference``. For throughput, higher is better (the target is
a minimum ratio); for times, memory and CPU, lower is better. ``meets`` is computed only
where PERF.md gives a target the figure can be checked against: a ratio target, memory, or
a latency/connect budget (those are absolute times on a noisy machine: read them with the
C reference of the same run next to them).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bench.runner import Results

RATIO_DEFINITION = "ratio = value / reference; both measured in this run"


@dataclass(frozen=True, slots=True, kw_only=True)
class Figure:
    key: str
    label: str
    value: float
    unit: str
    reference: float | None = None
    reference_label: str = ""
    ratio: float | None = None
    target: str = ""
    meets: bool | None = None


def _fig(key: str, label: str, value: float | None, unit: str, *,
         reference: float | None = None, reference_label: str = "", target: str = "",
         min_ratio: float | None = None, max_value: float | None = None) -> Figure | None:
    if value is None:
        return None
    ratio = value / reference if reference else None
    meets = None
    if min_ratio is not None and ratio is not None:
        meets = ratio >= min_ratio
    elif max_value is not None:
        meets = value <= max_value
    return Figure(key=key, label=label, value=value, unit=unit, reference=reference,
                  reference_label=reference_label, ratio=ratio, target=target, meets=meets)


def detection_budget_ms(devices: int) -> float:
    """PERF.md: p99 ≤ 20 ms at 1,000 devices, ≤ 100 ms at 10,000 (linear in between)."""
    if devices <= 1000:
        return 20.0
    if devices >= 10000:
        return 100.0
    return 20.0 + (devices - 1000) / 9000 * 80.0


def figures(r: Results) -> list[Figure]:
    c, ref = r.config, r.reference
    out: list[Figure | None] = []
    raw = ref.get("raw_qos1", {}).get("messages_per_second")
    rr = ref.get("rr_qos1")
    rr_fleet = ref.get("rr_fleet") or rr
    if rr:
        rt_ref, rt_label = rr["round_trips_per_second"], f"C req/resp ({c.rt_devices} dev)"
    else:
        rt_ref, rt_label = (raw / 2 if raw else None), "C raw routing / 2"
    out.append(_fig("c_raw_qos1_msgs_per_s", "C raw routing QoS 1 (pub -l -> sub)", raw,
                    "msg/s", target="PERF: 22-24k on a quiet machine"))
    if rr:
        out.append(_fig("c_rr_qos1_rt_per_s",
                        f"C request/response QoS 1, {c.rt_devices} dev + 1 service",
                        rr["round_trips_per_second"], "rt/s",
                        reference=raw / 2 if raw else None, reference_label="C raw / 2",
                        target="PERF: ~18.8k on a quiet machine"))
    jobs = r.jobs
    for kind, name in (("update", "UpdateJobExecution"), ("describe", "DescribeJobExecution")):
        if kind not in jobs:
            continue
        j = jobs[kind]
        out.append(_fig(f"jobs_{kind}_rt_per_s", f"jobs {name} round trips/s "
                        f"({c.rt_devices} dev)", j["round_trips_per_second"], "rt/s",
                        reference=rt_ref, reference_label=rt_label,
                        target=">= 1/3 of C (PERF >= 6,000/s); stretch >= 1/2", min_ratio=1 / 3))
        if rr and raw:
            out.append(_fig(f"jobs_{kind}_rt_vs_raw", "  same, vs raw routing / 2",
                            j["round_trips_per_second"], "rt/s", reference=raw / 2,
                            reference_label="C raw / 2", target=">= 1/3", min_ratio=1 / 3))
    if "update" in jobs:
        j = jobs["update"]
        for p in ("p50", "p99"):
            out.append(_fig(f"jobs_update_{p}_ms", f"  update latency {p}, closed loop",
                            j[f"{p}_ms"], "ms", reference=rr[f"{p}_ms"] if rr else None,
                            reference_label="C req/resp, same load"))
        light = jobs.get("light_update", {})
        out.append(_fig("jobs_update_light_p50_ms", "  update latency p50, one device",
                        light.get("p50_ms"), "ms",
                        reference=rr["light_p50_ms"] if rr else None,
                        reference_label="C one device", target="PERF floor 0.7-1.4 ms"))
        out.append(_fig("jobs_service_cpu_us_per_request", "  service CPU per update",
                        j["service_cpu_us_per_request"], "us",
                        reference=rr["cpu_us_per_round_trip"] if rr else None,
                        reference_label="C, both sides",
                        target="<= 167 us (one core at 6,000/s)", max_value=1e6 / 6000))
        out.append(_fig("jobs_loadgen_cpu_us_per_rt", "  load generator CPU per update",
                        j["cpu_seconds"] / j["round_trips"] * 1e6 if j["round_trips"]
                        else None, "us"))
        out.append(_fig("jobs_broker_cpu_us_per_rt", "  broker CPU per update",
                        j["broker_cpu_us_per_round_trip"], "us",
                        reference=_broker_us_per_rt(rr), reference_label="C req/resp",
                        target="PERF: ~52 us per QoS 1 round trip"))
    fl = r.fleet
    if "start" in fl:
        n = c.devices
        out.append(_fig("fleet_connect_subscribe_s", f"fleet connect + subscribe ({n} dev)",
                        fl["start"]["connect_seconds"], "s",
                        reference=rr_fleet["connect_seconds"] if rr_fleet else None,
                        reference_label=f"C clients ({n})",
                        target=f"<= 5 s at 10k (~{5 * n / 10000:.2g} s at {n})",
                        max_value=5 * n / 10000 if n >= 1000 else None))
        out.append(_fig("fleet_rss_kb_per_device", "fleet memory per device (VmRSS)",
                        fl["start"]["rss_kb_per_device"], "KB",
                        reference=rr_fleet["rss_kb_per_client"] if rr_fleet else None,
                        reference_label="C client", target="<= 20 KB", max_value=20.0))
        idle = fl["idle"]
        out.append(_fig("fleet_idle_cpu_pct", f"fleet idle CPU ({c.idle_seconds:g} s)",
                        idle["fleet_cpu_fraction"] * 100, "% core",
                        reference=(rr_fleet["idle_cpu_fraction"] * 100) if rr_fleet else None,
                        reference_label="C clients idle", target="PERF paho: 2.5 % at 10k"))
    if "execution" in fl:
        e = fl["execution"]
        per = e["requests_per_execution"]
        out.append(_fig("fleet_executions_per_s", f"executions/s, one job to {c.devices}",
                        e["executions_per_second"], "exec/s",
                        reference=rt_ref / per if rt_ref and per else None,
                        reference_label=f"{rt_label} / {per:.1f} rt per exec",
                        target=">= 1/3 of C-derived", min_ratio=1 / 3))
        out.append(_fig("fleet_service_cpu_us_per_exec", "  service CPU per execution",
                        e["service_cpu_us_per_execution"], "us"))
        out.append(_fig("fleet_devices_cpu_us_per_exec", "  device engine CPU per execution",
                        e["fleet_cpu_us_per_execution"], "us"))
    budget = detection_budget_ms(c.devices)
    for variant, text in (("paced", f"{c.sweep_step:g} s/exec"), ("burst", "all at once")):
        lat = r.latency.get(variant)
        if lat is None:
            continue
        d = lat["detection"]
        for p in ("p50", "p95", "p99", "max"):
            is_p99 = p == "p99"
            ref_key = "light_p50_ms" if p == "p50" else "light_p99_ms"
            out.append(_fig(f"detect_{variant}_{p}_ms",
                            f"force-delete detection {p} ({variant}, {text})"
                            if p == "p50" else f"  detection {p}", d[f"{p}_ms"], "ms",
                            reference=rr[ref_key] if rr else None,
                            reference_label=f"C 1-device rt {ref_key[6:9]}",
                            target=f"p99 <= {budget:g} ms at {c.devices}" if is_p99 else "",
                            max_value=budget if is_p99 else None))
    for d in r.drills:
        n = d["devices"]
        missing = d["events_missing"]
        out.append(_fig(f"drill_{n}_wall_s",
                        f"force-delete drill, {n} devices, {d['workers']} workers: "
                        f"{d['status']}, {missing} devices missing events", d["wall_seconds"],
                        "s", target="<= 120 s at 10,000" if n == 10000 else "",
                        max_value=120.0 if n == 10000 else None))
        out.append(_fig(f"drill_{n}_notice_cases", "  notice cases", d["notice_cases"],
                        "cases", reference=n / 5, reference_label="20% of the devices",
                        target=">= the reference", min_ratio=1.0))
        out.append(_fig(f"drill_{n}_mid_step_pct", "  mid-step at removal",
                        100 * d["mid_step_fraction"], "%"))
        out.append(_fig(f"drill_{n}_detect_p99_ms", "  detection p99",
                        d["detection_p99_ms"], "ms"))
        out.append(_fig(f"drill_{n}_round_trip_p99_ms", "  request round trip p99",
                        d["round_trip_p99_ms"], "ms"))
        for process, seconds in d["cpu_seconds"].items():
            out.append(_fig(f"drill_{n}_cpu_{process}_s", f"  CPU of {process}", seconds, "s"))
    return [f for f in out if f is not None]


def _broker_us_per_rt(rr: dict[str, Any] | None) -> float | None:
    if not rr or rr.get("broker_cpu_fraction") is None or not rr["round_trips"]:
        return None
    return float(rr["broker_cpu_fraction"] * rr["seconds"] / rr["round_trips"] * 1e6)


def _num(x: float | None) -> str:
    if x is None:
        return "-"
    if abs(x) >= 1000:
        return f"{x:,.0f}"
    if abs(x) >= 10:
        return f"{x:.1f}"
    return f"{x:.3g}"


def table(figs: list[Figure]) -> str:
    rows = [("figure", "value", "unit", "reference (same run)", "ratio", "target", "ok")]
    for f in figs:
        ref = f"{_num(f.reference)} {f.reference_label}" if f.reference is not None else "-"
        ok = {True: "yes", False: "NO", None: ""}[f.meets]
        rows.append((f.label, _num(f.value), f.unit, ref,
                     f"{f.ratio:.3g}" if f.ratio is not None else "-", f.target, ok))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = []
    for index, row in enumerate(rows):
        cells = [row[0].ljust(widths[0]), row[1].rjust(widths[1]), row[2].ljust(widths[2]),
                 row[3].ljust(widths[3]), row[4].rjust(widths[4]), row[5].ljust(widths[5]),
                 row[6]]
        lines.append("  ".join(cells).rstrip())
        if index == 0:
            lines.append("-" * len(lines[0]))
    return "\n".join(lines)


def to_json(r: Results, figs: list[Figure]) -> dict[str, Any]:
    return {"ratio_definition": RATIO_DEFINITION, "params": r.params, "notes": r.notes,
            "figures": [asdict(f) for f in figs], "reference": r.reference, "jobs": r.jobs,
            "fleet": r.fleet, "latency": r.latency, "drills": r.drills,
            "profiles": r.profiles}


def write(path: Path, document: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=2, default=str) + "\n")


def profiles_text(r: Results, top: int = 10) -> str:
    lines = []
    for name, prof in r.profiles.items():
        lines.append(f"{name}: {prof['samples']} samples")
        lines.append("  own time:      " + "; ".join(f"{n} {p}%" for n, p in prof["own"][:top]))
        lines.append("  project incl.: " + "; ".join(f"{n} {p}%"
                                                      for n, p in prof["inclusive"][:top]))
    return "\n".join(lines)
