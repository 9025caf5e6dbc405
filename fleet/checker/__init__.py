"""The checker: a pure function from a drill's history to a verdict.

``check(ops, budgets)`` builds a :class:`~fleet.checker.timeline.Timeline` once, runs every
invariant of DESIGN.md over it (:mod:`fleet.checker.invariants`, one function each) and
computes the drill's figures (:mod:`fleet.checker.metrics`). It imports nothing from
``fleet`` but the history format and nothing from ``devicesim`` but the wire contract: it
must never check the emulator against itself. Reports are rendered by
:mod:`fleet.checker.report`, the only module here that writes files.
"""

from __future__ import annotations

from collections.abc import Sequence

from fleet.checker import invariants, metrics, timeline
from fleet.checker.model import (
    INVARIANTS,
    Budgets,
    Distribution,
    InvariantResult,
    Metrics,
    Verdict,
    Violation,
    document_digest,
)
from fleet.history import Op

__all__ = ["INVARIANTS", "Budgets", "Distribution", "InvariantResult", "Metrics", "Verdict",
           "Violation", "check", "document_digest"]


def check(ops: Sequence[Op], budgets: Budgets | None = None) -> Verdict:
    """Judge a history: one result per invariant (in :data:`INVARIANTS` order) and metrics."""
    budgets = budgets or Budgets()
    tl = timeline.build(ops)
    results = [fn(tl, budgets) for _, fn in invariants.ALL]
    return Verdict(results=results, metrics=metrics.compute(tl, budgets),
                   passed=all(r.passed for r in results))
