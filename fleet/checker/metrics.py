"""Figures of a drill, from the same timeline as the verdict.

Percentiles use the nearest-rank method, implemented once in :func:`percentile`: the
p-th percentile of n sorted values is the value at rank ``ceil(p / 100 * n)`` (at least 1),
so it is always one of the observed values.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Sequence

from devicesim.wire.history import OpType
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


def _code(value: dict[str, object]) -> str:
    payload = value.get("payload")
    code = value.get("code") or (payload.get("code") if isinstance(payload, dict) else None)
    return str(code) if code else "unknown"


#: How executions are accounted for, in report order.
ACCOUNTS = ("succeeded", "failed", "rejected", "canceled", "deleted", "removed", "timed out",
            "pending", "unaccounted")


def account(tl: Timeline) -> dict[str, int]:
    """Every execution a successful CreateJob created (thing targets; thing groups cannot be
    resolved), by what became of it: finished by its device (an accepted terminal update or
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

