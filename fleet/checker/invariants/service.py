"""The emulator itself: deletion limit, no update accepted after removal, nothing left
behind a deleted job, version numbers only grow (service)."""

from __future__ import annotations

from devicesim.wire.history import Op, OpType
from devicesim.wire.topics import Operation
from fleet.checker.cases import (
    label,
)
from fleet.checker.invariants._common import (
    quote,
    result,
)
from fleet.checker.model import Budgets, InvariantResult, Violation
from fleet.checker.timeline import (
    Timeline,
    as_int,
    decided_at,
)

#: AWS limit (spec §9): jobs in DELETION_IN_PROGRESS at once.
MAX_DELETIONS_IN_PROGRESS = 10


def service(tl: Timeline, b: Budgets) -> InvariantResult:
    """service: (1) job events never show more than 10 jobs between ``deletion_in_progress``
    and ``deleted`` at once; (2) no ``UpdateJobExecution`` is accepted (ok reply) after the
    service removed that execution (its removal event, or, with jobs events off, the
    ``notify-next`` that followed the controller's force call) -- an update the jobId's next
    incarnation accepted (created between request and reply) is a device's zombie, judged by
    no-zombie and reuse; (3) ``final-state`` lists no
    execution of a job whose deletion completed (its ``deleted`` job event, or the
    controller's DescribeJob answering ResourceNotFound after its DeleteJob) and that was not
    created again; (4) the ``versionNumber`` the service publishes for one execution (thing,
    job, incarnation, execution number) never decreases (a removal of it restarts the
    sequence). A message a drill's fault held back counts when the service decided it
    (:func:`~fleet.checker.timeline.decided_at`), not when it went out."""
    start = tl.markers.get("start")
    if start is not None and start.value.get("target"):
        # replies and pushes were recorded as devices received them, not in the order the
        # service sent them: what it accepted before or after a removal cannot be told
        return result(tl, "service", [], [], [
            f"not checked: it needs the emulator's own record of what it published, which "
            f"a drill against --target {start.value['target']} does not have"])
    violations: list[Violation] = []
    notes = []
    cases: list[str | None] = []
    deleting: dict[str, Op] = {}
    over = False
    for job_id, operation, op in tl.job_events:
        if operation == "deletion_in_progress":
            deleting[job_id] = op
            cases.append(None)
        elif operation == "deleted":
            deleting.pop(job_id, None)
        if len(deleting) > MAX_DELETIONS_IN_PROGRESS and not over:
            violations.append(Violation(
                invariant="service", thing_name=None, job_id=job_id, time=op.time,
                message=f"{len(deleting)} jobs in DELETION_IN_PROGRESS at once "
                        f"(limit {MAX_DELETIONS_IN_PROGRESS}): {', '.join(sorted(deleting))}",
                evidence=quote(*deleting.values())))
        over = len(deleting) > MAX_DELETIONS_IN_PROGRESS
    if not tl.job_events:
        notes.append("no job events: the deletion limit was not checked")
    for q in tl.requests:
        if q.f != Operation.UPDATE or q.job_id is None:
            continue
        for reply in q.replies:
            if reply.type is not OpType.OK:
                continue
            if tl.incarnation(q.job_id, reply.time) != q.incarnation:
                continue  # the jobId was created again meanwhile: the new execution took it
            cases.append(q.thing_name)
            number = as_int(q.payload.get("executionNumber"))
            if number is None:
                number = tl.known_execution_number(q.thing_name, q.job_id, q.time)
            gone = [r for r in tl.removals_of((q.thing_name, q.job_id, q.incarnation), number)
                    if r.time < decided_at(reply)]
            if gone:
                violations.append(Violation(
                    invariant="service", thing_name=q.thing_name, job_id=q.job_id,
                    time=reply.time,
                    message=f"the service accepted an update of {label(q.job_id, number)} "
                            f"from {q.thing_name} after it {gone[0].operation} it",
                    evidence=quote(gone[0].op, q.op, reply)))
    final = tl.final_state
    if final is not None:
        for x in final.executions:
            survivor = x.get("jobId")
            if not isinstance(survivor, str):
                continue
            cases.append(str(x.get("thingName")))
            deleted = tl.deletion_completed(survivor)
            if deleted is not None:
                violations.append(Violation(
                    invariant="service", thing_name=str(x.get("thingName")), job_id=survivor,
                    time=final.op.time,
                    message=f"execution {label(survivor, as_int(x.get('executionNumber')))} of "
                            f"{x.get('thingName')} survives the deletion of its job",
                    evidence=quote(deleted, final.op)))
    violations.extend(_version_violations(tl))
    cases.extend(v.thing_name for v in tl.versions)
    return result(tl, "service", violations, cases, notes)


def _version_violations(tl: Timeline) -> list[Violation]:
    last: dict[tuple[str, str, int, int | None, int], tuple[int, Op]] = {}
    out: list[Violation] = []
    flagged: set[tuple[str, str, int, int | None]] = set()
    for v in sorted(tl.versions, key=lambda v: decided_at(v.op)):  # in the service's order
        generation = sum(1 for r in tl.removals_of((v.thing_name, v.job_id, v.incarnation),
                                                   v.execution_number)
                         if r.time < decided_at(v.op))
        key = (v.thing_name, v.job_id, v.incarnation, v.execution_number, generation)
        previous = last.get(key)
        if previous is not None and v.version_number < previous[0] and key[:4] not in flagged:
            flagged.add(key[:4])
            out.append(Violation(
                invariant="service", thing_name=v.thing_name, job_id=v.job_id, time=v.op.time,
                message=f"versionNumber of {label(v.job_id, v.execution_number)} on "
                        f"{v.thing_name} went down from {previous[0]} to {v.version_number}",
                evidence=quote(previous[1], v.op)))
        if previous is None or v.version_number >= previous[0]:
            last[key] = (v.version_number, v.op)
    return out
