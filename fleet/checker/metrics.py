"""Figures of a drill, from the same timeline as the verdict.

Percentiles use the nearest-rank method, implemented once in :func:`percentile`: the
p-th percentile of n sorted values is the value at rank ``ceil(p / 100 * n)`` (at least 1),
so it is always one of the observed values.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any

from devicesim.wire.history import Op, OpType, fault
from devicesim.wire.topics import Operation
from fleet.checker.cases import notice_cases, recovery_cases, wire_recovery_cases
from fleet.checker.model import AWS_SEMANTICS, Budgets, Distribution, Metrics
from fleet.checker.timeline import Timeline, is_terminal


def percentile(values: Sequence[float], p: float) -> float | None:
    """Nearest-rank percentile of ``values`` (any order); None when empty."""
    if not 0 <= p <= 100:
        raise ValueError(f"percentile must be within 0..100, got {p}")
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[rank - 1]


def distribution(seconds: Iterable[float]) -> Distribution:
    """Durations in seconds -> a distribution in milliseconds."""
    ms = sorted(s * 1000.0 for s in seconds)
    if not ms:
        return Distribution()
    return Distribution(count=len(ms), p50_ms=percentile(ms, 50), p95_ms=percentile(ms, 95),
                        p99_ms=percentile(ms, 99), max_ms=ms[-1])


def compute(tl: Timeline, budgets: Budgets) -> Metrics:
    held = notice_cases(tl, budgets)
    detection = [c.latency for c in held]
    recovery = [c.time for c in recovery_cases(tl, budgets)] + \
        [c.time for c in wire_recovery_cases(tl, budgets)[0]]
    round_trips = []
    terminal_updates = 0
    replies = accepted = 0
    rejections: Counter[str] = Counter()
    for q in tl.requests:
        if q.replies:
            round_trips.append(max(0.0, q.replies[0].time - q.time))
        if q.f == Operation.UPDATE and is_terminal(q.payload.get("status")) and \
                any(r.type is OpType.OK for r in q.replies):
            terminal_updates += 1
    for q in tl.requests:
        for reply in q.replies:
            replies += 1
            accepted += reply.type is OpType.OK
            if reply.type is OpType.FAIL:
                rejections[_code(reply.value)] += 1
    for reply in tl.orphan_replies:
        replies += 1
        accepted += reply.type is OpType.OK
        if reply.type is OpType.FAIL:
            rejections[_code(reply.value)] += 1
    semantics = tl.markers["start"].value.get("brokerSemantics") if "start" in tl.markers \
        else None
    start = tl.markers["start"].time if "start" in tl.markers else tl.start
    end = tl.markers["end"].time if "end" in tl.markers else tl.end
    duration = max(0.0, end - start)
    return Metrics(
        executions=account(tl),
        messages=messages(tl),
        faults=faults(tl),
        resources=resources(tl),
        detection_latency=distribution(x for x in detection if x is not None),
        recovery_time=distribution(x for x in recovery if x is not None),
        round_trip=distribution(round_trips),
        duration_seconds=duration,
        terminal_updates=terminal_updates,
        executions_per_second=terminal_updates / duration if duration > 0 else 0.0,
        targeted=len(tl.targeted),
        mid_step=len({c.execution.thing_name for c in held}),
        requests=len(tl.requests), replies=replies, accepted=accepted,
        rejections_by_code=dict(sorted(rejections.items())),
        missing_semantics=None if semantics is None else
        () if semantics == "aws" else AWS_SEMANTICS,
        secure=bool(tl.markers["start"].value.get("secure")) if "start" in tl.markers
        else False,
        target=tl.markers["start"].value.get("target") if "start" in tl.markers else None,
        external=sorted(tl.external))


#: The kinds of message the service sends a device, in report order.
MESSAGE_KINDS = ("notify-next", "notify", "replies")


def messages(tl: Timeline) -> dict[str, int]:
    """What the service published to the simulated devices, per kind (``notify-next``,
    ``notify``, ``replies``; each copy: a duplicate counts twice), what a drill's fault
    dropped (``dropped``) or held back (``held back``), and what the devices say they
    received (``<kind> received``, from the ``final-state`` marker's ``received``: absent
    from older histories). Received may fall short of published where nobody listens (the
    built-in behaviours subscribe to ``notify-next``, not ``notify``) or a device lost what
    it was sent (offline without its session, a power cut), and exceed it by QoS 1
    redeliveries. Against a target the history holds what the devices received, so
    ``published`` is that."""
    counts: Counter[str] = Counter()
    for op in tl.ops:
        if op.process in tl.external or op.process in ("drill", "service") or \
                op.process.startswith("controller") or op.f.startswith("device:"):
            continue
        if op.f in ("notify", "notify-next"):
            counts[f"{op.f} published"] += 1
        elif op.f.startswith("dropped:"):
            counts["dropped"] += 1
            continue
        elif op.type in (OpType.OK, OpType.FAIL):
            counts["replies published"] += 1
        else:
            continue
        counts["held back"] += "heldSeconds" in op.value
    received = tl.final_state.op.value.get("received") if tl.final_state is not None \
        else None
    if isinstance(received, dict):
        for kind in MESSAGE_KINDS:
            counts[f"{kind} received"] = int(received.get(kind, 0))
    return {k: v for k, v in counts.items() if v or k.endswith("received")}


def resources(tl: Timeline) -> dict[str, dict[str, int]]:
    """A soak's processes: each one's resident memory (KiB) and open files at its first
    sample after the start (the very first is taken before any wave ran) and its last."""
    first: dict[str, dict[str, int]] = {}
    last: dict[str, dict[str, int]] = {}
    for index, op in enumerate(tl.resources):
        processes = op.value.get("processes")
        for name, used in processes.items() if isinstance(processes, dict) else ():
            if not isinstance(used, dict):
                continue
            if index > 0 or len(tl.resources) == 1:
                first.setdefault(name, used)
            last[name] = used
    return {name: {"rssKiB": int(first[name].get("rssKiB", 0)),
                   "fds": int(first[name].get("fds", 0)),
                   "lastRssKiB": int(used.get("rssKiB", 0)), "lastFds": int(used.get("fds", 0)),
                   "samples": sum(1 for op in tl.resources
                                  if name in (op.value.get("processes") or {}))}
            for name, used in last.items() if name in first}


def faults(tl: Timeline) -> list[dict[str, Any]]:
    """Each fault the drill injected (:func:`~devicesim.wire.history.fault`, a heal aside),
    when (seconds after the start), how many devices it named, and what it hit: the
    connections a network fault hit, the pushes a drop dropped, the messages a message
    fault held back, the requests devices sent during an outage, the executions a forced
    removal took away."""
    start = tl.markers["start"].time if "start" in tl.markers else tl.start
    sent: dict[str, list[Op]] = {}  # what the service published (or dropped), per thing
    for op in tl.ops:
        if op.f in ("notify", "notify-next") or op.f.startswith("dropped:") or (
                op.type in (OpType.OK, OpType.FAIL) and op.process not in ("drill", "service")
                and not op.process.startswith("controller")):
            sent.setdefault(op.process, []).append(op)
    completions = {id(c.completion): c for c in tl.calls if c.completion is not None}
    out = []
    for op in tl.ops:
        kind = fault(op)
        if kind is None or kind.startswith("dropped:") or op.type is OpType.INVOKE:
            continue
        things = op.value.get("things")
        named = {t for t in things if isinstance(t, str)} if isinstance(things, list) else set()
        later = [o for t in named for o in sent.get(t, ()) if o.time >= op.time]
        call = completions.get(id(op))
        out.append({"at": round(op.time - start, 3), "fault": _fault_name(op, kind),
                    "devices": len(named),
                    "hit": _hit(tl, op, later, call.time if call is not None else op.time)})
    return out


def _fault_name(op: Op, kind: str) -> str:
    if op.f in ("network-fault", "message-fault"):
        return f"{op.f} {op.value.get('kind')}"
    if op.process.startswith("controller"):
        request = op.value.get("request")
        job = request.get("jobId") if isinstance(request, dict) else None
        return f"{kind} {job}" if job else kind
    return kind


def _hit(tl: Timeline, op: Op, later: list[Op], since: float) -> str:
    """``later``: what the service published to the fault's devices from then on;
    ``since``: when a controller call was invoked."""
    v = op.value
    if op.f in ("broker-outage", "service-outage"):
        begin, end = float(v.get("start", op.time)), float(v.get("end", op.time))
        sent = sum(1 for q in tl.requests if begin <= q.time < end)
        return f"down {end - begin:.1f} s, {sent} requests sent meanwhile"
    if op.f == "network-fault":
        return f"{v.get('connections', 0)} open connections"
    if op.f == "notify-drop":
        return f"{sum(1 for o in later if o.f.startswith('dropped:'))} pushes dropped"
    if op.f == "message-fault" and v.get("kind") == "duplicate":
        copies = Counter((o.process, o.f, o.type, repr(o.value)) for o in later
                         if not o.f.startswith("dropped:"))
        return f"{sum(n - 1 for n in copies.values())} extra copies published"
    if op.f == "message-fault":
        return f"{sum(1 for o in later if 'heldSeconds' in o.value)} messages held back"
    if op.process.startswith("controller"):
        request = v.get("request")
        job = request.get("jobId") if isinstance(request, dict) else None
        thing = request.get("thingName") if isinstance(request, dict) else None
        gone = sum(1 for r in tl.removals if r.job_id == job and r.time >= since and
                   (thing is None or r.thing_name == thing))
        return f"{gone} executions taken away"
    return ""


def _code(value: dict[str, object]) -> str:
    payload = value.get("payload")
    code = value.get("code") or (payload.get("code") if isinstance(payload, dict) else None)
    return str(code) if code else "unknown"


#: How executions are accounted for, in report order.
ACCOUNTS = ("succeeded", "failed", "rejected", "canceled", "deleted", "removed", "timed out",
            "pending", "unaccounted")


def account(tl: Timeline) -> dict[str, int]:
    """Every execution a successful CreateJob created (thing targets; for a thing group, a
    paced, scheduled or continuous job, the things the service offered it to), by what
    became of it: finished by its device (an accepted terminal update or
    execution event), taken away by the service (removal events), ended by the service
    (timed out), still pending in the final state, or -- none of these -- unaccounted (the
    ``progress`` invariant fails those that were not withdrawn)."""
    counts = dict.fromkeys(ACCOUNTS, 0)
    final = tl.final_state
    for c in tl.creates:
        for thing in dict.fromkeys(c.targets):
            key = (thing, c.job_id, c.incarnation)
            by_device = next((f for f in tl.terminal_of(key) if f.by_device), None)
            removal = next(iter(tl.removals_of(key, None)), None)
            by_service = next((f for f in tl.terminal_of(key) if not f.by_device), None)
            if by_device is not None:
                counts[by_device.status.lower()] += 1
            elif removal is not None:
                counts[removal.operation] += 1
            elif by_service is not None:
                counts["timed out" if by_service.status == "TIMED_OUT" else
                       by_service.status.lower()] += 1
            elif final is not None and c.incarnation == tl.current_incarnation(c.job_id) and \
                    (statuses := [str(x.get("status")) for x in final.executions_of(
                        thing, c.job_id)]):
                status = statuses[-1]
                counts["pending" if status in ("QUEUED", "IN_PROGRESS") else
                       "timed out" if status == "TIMED_OUT" else status.lower()
                       if status.lower() in counts else "unaccounted"] += 1
            else:
                counts["unaccounted"] += 1
    return counts

