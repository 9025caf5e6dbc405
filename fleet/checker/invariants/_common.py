"""What every invariant shares: building a result (its cases counted per behaviour),
quoting evidence, starting a device's clock."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any

from devicesim.wire.history import Op
from fleet.checker.cases import clock_start
from fleet.checker.model import Budgets, InvariantResult, Violation
from fleet.checker.timeline import Timeline, evidence

#: How many ops a violation quotes at most.
MAX_EVIDENCE = 8
EXECUTING_KINDS = ("job_started", "step")
CLEARING_KINDS = ("job_finished", "lost_access", "rolled_back", "recovered", "idle")

Invariant = Callable[[Timeline, Budgets], InvariantResult]


def result(tl: Timeline, name: str, violations: list[Violation], cases: Iterable[str | None],
           notes: Iterable[str] = ()) -> InvariantResult:
    """An invariant's result; ``cases`` names the device each checked case is about (None for
    a case about no device), so the cases can be counted per behaviour."""
    subjects = list(cases)
    by_behaviour = Counter(tl.behaviour_of(thing) for thing in subjects if thing is not None)
    external = Counter(thing for thing in subjects if thing in tl.external) \
        if tl.external else Counter()
    return InvariantResult(name=name, passed=not violations, violations=tuple(violations),
                           checked=len(subjects), notes=tuple(dict.fromkeys(notes)),
                           cases_by_behaviour=dict(sorted(by_behaviour.items())),
                           cases_by_external=dict(sorted(external.items())))


def quote(*ops: Op | None) -> tuple[dict[str, Any], ...]:
    seen = sorted({id(op): op for op in ops if op is not None}.values(), key=lambda o: o.time)
    return tuple(evidence(op) for op in seen[:MAX_EVIDENCE])


def clock(tl: Timeline, thing: str, time: float, budget: float) -> float:
    """:func:`clock_start` for a device that has not done what the budget is for (``inf``:
    never reachable again)."""
    since = clock_start(tl, thing, time, budget)
    return float("inf") if since is None else since


def powered_off_for_good(tl: Timeline, things: Iterable[str]) -> str:
    return ", ".join(sorted({t for t in things if tl.off_for_good(t) is not None}))


def settled(tl: Timeline) -> bool:
    """Did the drill reach its end settled (its ``end`` and ``final-state`` markers, and no
    ``timeout``, ``stalled`` or ``interrupted`` one)? Then nothing more was going to happen:
    a deadline past the end of the history can be judged by what had happened."""
    return tl.final_state is not None and "end" in tl.markers and not any(
        m in tl.markers for m in ("timeout", "stalled", "interrupted"))
