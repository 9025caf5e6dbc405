"""The data behind the drill report's charts, from the same timeline as the verdict (pure).

Each function returns plain data a renderer draws (:mod:`fleet.checker.html`); nothing here
draws. Aggregates, never one line per device: the page must stay usable at 10,000 devices.

- :func:`state_timeline`: how many devices were in each state, sampled at evenly spaced
  moments (a device's state is set by its last event at or before the moment, see
  :data:`STATE_OF`; one that finished a job stays ``succeeded`` / ``failed`` while idle,
  until it starts or loses another; a power cut makes it ``offline`` until its power-on);
- :func:`markers`: the controller's actions and the drill's faults, for the same time axis;
- :func:`distribution`: a histogram, the CDF and p50 / p95 / p99 of a set of durations;
- :func:`round_trips_over_time` and :func:`rates_over_time`: request round-trip percentiles
  and messages/s and executions/s per time window;
- :func:`sequence`: one device's trail around its violations, as sequence-diagram arrows
  between the device, the jobs service and the controller.
"""

from __future__ import annotations

import math
from bisect import bisect_right
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from devicesim.wire.history import FAULT_MARKERS, FORCE_APIS, Op, OpType
from devicesim.wire.topics import Operation
from fleet.checker.cases import notice_cases, recovery_cases, wire_recovery_cases
from fleet.checker.metrics import percentile
from fleet.checker.model import Budgets, Verdict, Violation
from fleet.checker.timeline import Timeline, is_terminal

#: The device states of the timeline, bottom to top of the stack.
STATES = ("idle", "running", "lost access", "rolled back", "recovering", "succeeded",
          "failed", "offline")
#: Which state a device event puts the device in (events not named leave it as it was;
#: ``job_finished`` depends on its status).
STATE_OF = {"idle": "idle", "connected": "idle", "job_started": "running", "step": "running",
            "image_committed": "running", "lost_access": "lost access",
            "rolled_back": "rolled back", "recovered": "recovering",
            "disconnected": "offline", "rebooted": "offline"}
#: Controller APIs drawn on the timeline.
ACTIONS = ("CreateJob", *FORCE_APIS)
#: Drill markers drawn on the timeline: the faults, and how the run went.
DRAWN_MARKERS = (*FAULT_MARKERS, "notify-heal", "message-heal", "network-heal", "timeout",
                 "stalled", "interrupted", "failure")
#: Who takes part in a sequence diagram, left to right.
LIFELINES = ("device", "jobs service", "controller")


@dataclass(frozen=True, slots=True)
class StateTimeline:
    """``counts[state][i]``: devices in ``state`` at ``times[i]`` (seconds from the start)."""

    times: tuple[float, ...]
    counts: dict[str, tuple[int, ...]]


@dataclass(frozen=True, slots=True)
class Marker:
    time: float  # seconds from the start
    kind: str  # "action" or "fault"
    label: str


@dataclass(frozen=True, slots=True)
class Histogram:
    """Durations in ms: ``edges`` (len(counts) + 1), ``counts``, the CDF as sorted values and
    cumulative fractions, and the nearest-rank percentiles."""

    edges: tuple[float, ...] = ()
    counts: tuple[int, ...] = ()
    cdf: tuple[tuple[float, float], ...] = ()
    p50: float | None = None
    p95: float | None = None
    p99: float | None = None

    @property
    def n(self) -> int:
        return sum(self.counts)


@dataclass(frozen=True, slots=True)
class Window:
    """One time window (seconds from the start, its middle) and its figures."""

    time: float
    values: dict[str, float | None] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Arrow:
    """One step of a sequence diagram: ``source`` -> ``target`` (the same for a note)."""

    time: float  # seconds from the start
    source: str
    target: str
    label: str
    emphasis: bool = False  # part of a violation's evidence


def start_time(tl: Timeline) -> float:
    start = tl.markers.get("start")
    return start.time if start is not None else tl.start


def end_time(tl: Timeline) -> float:
    end = tl.markers.get("end")
    return end.time if end is not None else tl.end


def state_timeline(tl: Timeline, samples: int = 200) -> StateTimeline:
    """Devices per state at ``samples`` evenly spaced moments from the drill's start to its
    end (every device the drill names, idle until its first event)."""
    t0, t1 = start_time(tl), end_time(tl)
    span = max(t1 - t0, 1e-9)
    times = [t0 + span * i / max(samples - 1, 1) for i in range(samples)]
    things = set(tl.behaviours) | set(tl.device_events)
    changes: list[tuple[float, str, str]] = []  # time, thing, state
    for thing, events in tl.device_events.items():
        outcome = None  # a device that finished a job stays "succeeded" / "failed" while idle
        for ev in events:
            state = STATE_OF.get(ev.kind)
            if ev.kind == "job_finished":
                status = ev.op.value.get("status")
                state = outcome = "succeeded" if status == "SUCCEEDED" else "failed"
            elif state in ("running", "lost access"):
                outcome = None
            elif state == "idle" and outcome is not None:
                state = outcome
            if state is not None:
                changes.append((ev.time, thing, state))
    for thing, spells in tl.powered_off.items():
        for off, on in spells:
            changes.append((off, thing, "offline"))
            if on != math.inf:
                changes.append((on, thing, "idle"))
    changes.sort(key=lambda c: c[0])
    current = dict.fromkeys(things, "idle")
    tally = Counter(current.values())
    counts: dict[str, list[int]] = {s: [] for s in STATES}
    i = 0
    for t in times:
        while i < len(changes) and changes[i][0] <= t:
            _, thing, state = changes[i]
            before = current.get(thing)
            if before is not None:
                tally[before] -= 1
            current[thing] = state
            tally[state] += 1
            i += 1
        for s in STATES:
            counts[s].append(tally[s])
    return StateTimeline(tuple(t - t0 for t in times),
                         {s: tuple(v) for s, v in counts.items()})


def markers(tl: Timeline) -> list[Marker]:
    """The controller's successful actions and the drill's faults, oldest first."""
    t0 = start_time(tl)
    out = []
    for c in tl.calls:
        if c.f in ACTIONS and c.ok:
            force = " --force" if c.force else ""
            out.append(Marker(c.time - t0, "action", f"{c.f} {c.job_id or ''}{force}".strip()))
    for op in tl.ops:
        if op.process == "drill" and op.f in DRAWN_MARKERS:
            things = op.value.get("things")
            label = op.f + (f" ({len(things)} devices)" if isinstance(things, list) else "")
            out.append(Marker(op.time - t0, "fault", label))
    return sorted(out, key=lambda m: m.time)


def distribution(seconds: Iterable[float], bins: int = 30) -> Histogram:
    """Durations in seconds -> a histogram in ms (linear bins from 0 to the largest), its CDF
    and nearest-rank percentiles (:func:`fleet.checker.metrics.percentile`)."""
    ms = sorted(s * 1000.0 for s in seconds)
    if not ms:
        return Histogram()
    top = ms[-1] if ms[-1] > 0 else 1.0
    edges = [top * i / bins for i in range(bins + 1)]
    counts = [0] * bins
    for v in ms:
        counts[min(bins - 1, int(v / top * bins))] += 1
    n = len(ms)
    cdf = tuple((v, (i + 1) / n) for i, v in enumerate(ms))
    return Histogram(tuple(edges), tuple(counts), cdf, percentile(ms, 50), percentile(ms, 95),
                     percentile(ms, 99))


def detection_latencies(tl: Timeline, b: Budgets) -> list[float]:
    return [c.latency for c in notice_cases(tl, b) if c.latency is not None]


def recovery_times(tl: Timeline, b: Budgets) -> list[float]:
    return [t for t in (*(c.time for c in recovery_cases(tl, b)),
                        *(c.time for c in wire_recovery_cases(tl, b)[0])) if t is not None]


def _windows(tl: Timeline, count: int) -> tuple[float, float, list[float]]:
    t0, t1 = start_time(tl), end_time(tl)
    width = max(t1 - t0, 1e-9) / count
    return t0, width, [t0 + width * i for i in range(1, count + 1)]


def round_trips_over_time(tl: Timeline, windows: int = 40) -> list[Window]:
    """p50 / p95 / p99 (ms) of the round trips of the requests sent in each window."""
    t0, width, bounds = _windows(tl, windows)
    per: list[list[float]] = [[] for _ in bounds]
    for q in tl.requests:
        if q.replies:
            i = min(len(bounds) - 1, max(0, bisect_right(bounds, q.time)))
            per[i].append(max(0.0, q.replies[0].time - q.time) * 1000.0)
    return [Window(t0 + width * (i + 0.5) - t0, {
        "p50": percentile(v, 50), "p95": percentile(v, 95), "p99": percentile(v, 99)})
        for i, v in enumerate(per)]


def rates_over_time(tl: Timeline, windows: int = 40) -> list[Window]:
    """Per window: MQTT messages/s (device requests, the service's replies and pushes) and
    executions/s (accepted terminal device updates, as the verdict's executions/s)."""
    t0, width, bounds = _windows(tl, windows)
    messages = [0] * len(bounds)
    executions = [0] * len(bounds)

    def slot(t: float) -> int:
        return min(len(bounds) - 1, max(0, bisect_right(bounds, t)))

    for op in tl.ops:
        if op.process in ("drill", "controller", "service") or op.f.startswith(
                ("device:", "presence:")):
            continue
        messages[slot(op.time)] += 1
    for q in tl.requests:
        if q.f == Operation.UPDATE and is_terminal(q.payload.get("status")):
            ok = next((r for r in q.replies if r.type is OpType.OK), None)
            if ok is not None:
                executions[slot(ok.time)] += 1
    return [Window(width * (i + 0.5), {"messages/s": messages[i] / width,
                                       "executions/s": executions[i] / width})
            for i in range(len(bounds))]


def worst_devices(verdict: Verdict, limit: int = 5) -> list[tuple[str, list[Violation]]]:
    """The devices with the most violations (then the earliest), at most ``limit``."""
    by: dict[str, list[Violation]] = {}
    for r in verdict.results:
        for v in r.violations:
            if v.thing_name:
                by.setdefault(v.thing_name, []).append(v)
    ranked = sorted(by.items(), key=lambda kv: (-len(kv[1]), min(
        (v.time for v in kv[1] if v.time is not None), default=math.inf), kv[0]))
    return ranked[:limit]


def sequence(tl: Timeline, thing: str, violations: Sequence[Violation],
             limit: int = 40) -> list[Arrow]:
    """The device's trail as sequence-diagram arrows: its requests (device -> service), the
    service's replies and pushes to it (service -> device), the controller's calls on its
    jobs (controller -> service), removals of its executions and its own events (notes).
    At most ``limit`` arrows, centred on the first violation; the violations' evidence is
    emphasised."""
    t0 = start_time(tl)
    evidence = {(e.get("time"), e.get("process"), e.get("f")) for v in violations
                for e in v.evidence}
    jobs = {v.job_id for v in violations if v.job_id} | {
        ev.job_id for ev in tl.events_of(thing) if ev.job_id}
    ops: list[Op] = [op for op in tl.ops if op.process == thing]
    ops += [c.invoke for c in tl.calls if c.invoke is not None and c.job_id in jobs
            and c.f in ACTIONS]
    ops += [x.op for x in tl.execution_events if x.thing_name == thing]
    ops.sort(key=lambda op: op.time)
    arrows = [_arrow(op, thing, t0, (op.time, op.process, op.f) in evidence) for op in ops]
    if len(arrows) <= limit:
        return arrows
    first = min((v.time for v in violations if v.time is not None), default=arrows[0].time + t0)
    centre = bisect_right([a.time for a in arrows], first - t0)
    lo = max(0, min(centre - limit // 2, len(arrows) - limit))
    return arrows[lo:lo + limit]


def _arrow(op: Op, thing: str, t0: float, emphasis: bool) -> Arrow:
    v = op.value
    t = op.time - t0
    if op.process.startswith("controller"):
        request = _dict(v.get("request"))
        force = " --force" if request.get("force") else ""
        return Arrow(t, "controller", "jobs service",
                     f"{op.f} {request.get('jobId', '')}{force}", emphasis)
    if op.f == "execution-event":
        return Arrow(t, "jobs service", "jobs service",
                     f"execution {v.get('operation')} ({v.get('jobId')})", emphasis)
    if op.f.startswith("device:") or op.f.startswith("presence:"):
        detail = v.get("jobId") or ""
        return Arrow(t, "device", "device", f"{op.f.split(':', 1)[1]} {detail}".strip(), emphasis)
    payload = _dict(v.get("payload"))
    if op.type is OpType.INVOKE:
        status = payload.get("status")
        return Arrow(t, "device", "jobs service",
                     f"{op.f} {v.get('jobId') or ''}{' ' + status if status else ''}".rstrip(),
                     emphasis)
    if op.type in (OpType.OK, OpType.FAIL):
        what = "accepted" if op.type is OpType.OK else f"rejected {v.get('code') or ''}"
        return Arrow(t, "jobs service", "device", f"{op.f} {what}".rstrip(), emphasis)
    execution = _dict(payload.get("execution"))
    return Arrow(t, "jobs service", "device",
                 f"{op.f} {execution.get('jobId') or '(nothing pending)'}", emphasis)


def _dict(value: object) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def settings(tl: Timeline) -> dict[str, object]:
    """The drill's settings as its ``start`` marker records them (for the report's head)."""
    start = tl.markers.get("start")
    if start is None:
        return {}
    keep = ("drill", "seed", "devices", "mix", "external", "workers", "shards", "pace",
            "brokerSemantics", "secure", "target", "requirements")
    return {k: start.value[k] for k in keep if k in start.value}
