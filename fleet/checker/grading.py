"""Grading: whether an invariant saw enough cases for its result to count.

A rule that no case broke has passed only if it was tested: ``notice`` needs the drill's
:class:`~fleet.checker.model.Requirements` (a share of the targeted devices, and cases for
every behaviour among them and every external device the drill ran), and ``steady`` in a
soak (a history with ``resources`` samples) enough samples of some process; any other
invariant that saw no case at all is ``NO-CASES`` (the drill does not exercise it), which
never makes a verdict PASS on its own account.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

from fleet.checker.model import InvariantResult, Requirements, Status
from fleet.checker.timeline import EXTERNAL, Timeline


def grade(r: InvariantResult, tl: Timeline, needs: Requirements) -> InvariantResult:
    if r.violations:
        return dataclasses.replace(r, status=Status.FAIL)
    if r.name == "notice":
        short = notice_shortfalls(r, tl, needs)
        if short:
            return dataclasses.replace(r, status=Status.INCONCLUSIVE,
                                       notes=(*r.notes, *short))
    if r.name == "steady" and tl.resources and r.checked == 0:
        return dataclasses.replace(r, status=Status.INCONCLUSIVE, notes=(
            *r.notes, "INCONCLUSIVE: a soak too short to show whether any process keeps "
                      "growing (a longer --duration samples more)"))
    if r.checked == 0:
        return dataclasses.replace(r, status=Status.NO_CASES)
    return dataclasses.replace(r, status=Status.PASS)


def notice_shortfalls(r: InvariantResult, tl: Timeline, needs: Requirements) -> list[str]:
    """Why ``notice`` saw too few cases (empty: enough)."""
    targeted = tl.targeted
    out = []
    if not targeted:
        return ["INCONCLUSIVE: no job targeted any device, so no device could lose one"]
    needed = max(1, math.ceil(needs.notice_fraction * len(targeted)))
    if r.checked < needed:
        out.append(f"INCONCLUSIVE: {r.checked} notice cases, the drill needs {needed} "
                   f"({needs.notice_fraction:.0%} of {len(targeted)} targeted devices, at "
                   f"least 1): too few devices were mid-step when their execution was removed")
    if needs.notice_per_behaviour:
        present = sorted({tl.behaviour_of(t) for t in targeted})
        for behaviour in present:
            got = r.cases_by_behaviour.get(behaviour, 0)
            if got < needs.notice_per_behaviour:
                out.append(f"INCONCLUSIVE for {behaviour}: {got} notice cases among its "
                           f"devices (needs {needs.notice_per_behaviour}): nothing shows how "
                           f"{behaviour} devices react to losing an execution")
        # each external device is a device under test of its own (a board in a rack)
        for thing in sorted(t for t in tl.external & targeted
                            if tl.behaviour_of(t) == EXTERNAL):
            if r.cases_by_external.get(thing, 0) < needs.notice_per_behaviour:
                out.append(f"INCONCLUSIVE for external device {thing}: it was never caught "
                           f"mid-step when its execution was removed, so nothing shows how "
                           f"it reacts")
    return out


def overall(results: Sequence[InvariantResult]) -> Status:
    statuses = {r.status for r in results}
    if Status.FAIL in statuses:
        return Status.FAIL
    if Status.INCONCLUSIVE in statuses:
        return Status.INCONCLUSIVE
    return Status.PASS
