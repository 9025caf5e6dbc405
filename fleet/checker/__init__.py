"""The checker: a pure function from a drill's history to a verdict.

``check(ops, budgets)`` builds a :class:`~fleet.checker.timeline.Timeline` once, runs every
invariant of DESIGN.md over it (:mod:`fleet.checker.invariants`, one function each), grades
each result against the drill's case requirements (:mod:`fleet.checker.grading`: a pass
over too few cases is INCONCLUSIVE) and computes the drill's figures
(:mod:`fleet.checker.metrics`); :func:`analyse` gives the timeline too (the report page
draws from it). It imports nothing from ``fleet`` but the history format and
nothing from ``devicesim`` but the wire contract: it must never check the emulator against
itself. Reports are rendered by :mod:`fleet.checker.report`, the only module here that
writes files.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from devicesim.wire.history import Op, bulk
from fleet.checker import grading, invariants, metrics, timeline, traffic
from fleet.checker.model import (
    INVARIANTS,
    Budgets,
    Distribution,
    InvariantResult,
    Metrics,
    Requirements,
    Status,
    Verdict,
    Violation,
    document_digest,
)

__all__ = ["INVARIANTS", "Budgets", "Distribution", "InvariantResult", "Metrics",
           "Requirements", "Status", "Verdict", "Violation", "analyse", "check",
           "document_digest"]


def check(ops: Sequence[Op], budgets: Budgets | None = None,
          requirements: Requirements | None = None, external: Iterable[str] = ()) -> Verdict:
    """:func:`analyse`'s verdict."""
    return analyse(ops, budgets, requirements, external)[1]


def analyse(ops: Sequence[Op], budgets: Budgets | None = None,
            requirements: Requirements | None = None,
            external: Iterable[str] = ()) -> tuple[timeline.Timeline, Verdict]:
    """Judge a history: one graded result per invariant (in :data:`INVARIANTS` order) and
    metrics. ``requirements`` default to those the history's ``start`` marker records.
    External devices -- those the ``start`` marker names, and ``external`` -- are judged
    from their traffic alone (:mod:`fleet.checker.traffic`): any device events of theirs
    in the history are set aside and inferred instead."""
    budgets = budgets or Budgets()
    with bulk():
        named = timeline.external_things(ops) | frozenset(external)
        if named:
            ops = traffic.strip(ops, named)
            ops = ops + traffic.infer(timeline.build(ops, named), named)
        tl = timeline.build(ops, named)
        needs = requirements or tl.requirements
        results = [grading.grade(fn(tl, budgets), tl, needs) for _, fn in invariants.ALL]
        return tl, Verdict(results=results, metrics=metrics.compute(tl, budgets),
                           status=grading.overall(results))
