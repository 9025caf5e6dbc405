"""Did each device notice it lost an execution, recover, and stop updating it: notice,
recover, no-zombie."""

from __future__ import annotations

from devicesim.wire.topics import Operation
from fleet.checker.cases import (
    label,
    notice_cases,
    nvm_problem,
    recovery_cases,
    removed_executions,
    unjudged_notice_cases,
    wire_recovery_cases,
)
from fleet.checker.invariants._common import (
    MAX_EVIDENCE,
    clock,
    powered_off_for_good,
    quote,
    result,
    settled,
)
from fleet.checker.model import Budgets, InvariantResult, Violation
from fleet.checker.timeline import (
    DeviceExecution,
    Removal,
    Timeline,
    as_int,
    compatible,
)
from fleet.checker.traffic import moved_on_at, told_at


def notice(tl: Timeline, b: Budgets) -> InvariantResult:
    """notice: for every execution a device held when the service removed or canceled it,
    the device records ``device:lost_access`` for that job (and execution number, when both
    say) no later than ``notice_seconds`` after the removal -- or after its own start, if it
    started the execution after the removal, or after it was next reachable, if a drill
    outage marker, a power cut (``power-off`` .. ``power-on``) or its own
    ``disconnected``/``rebooted`` event covers that moment; if the drill cut its power before
    it noticed and before the deadline, the clock starts again at its power-on. A device
    that finished first (``job_finished``, or the service accepting its terminal update,
    before the removal) is exempt; a device never reachable again (never powered on again)
    and a deadline past the end of an unsettled history are not judged, and not counted as
    cases; in a settled history (the drill reached its end with no timeout, stall or
    interrupt: every device idle) a device that has not noticed by the end never will, and
    fails. An external device's ``lost_access`` is inferred from its traffic
    (:mod:`fleet.checker.traffic`: the first sign of moving on after its last update).
    Detection latency = ``lost_access`` time - that start of the clock (at least 0)."""
    violations, notes = [], []
    cases = notice_cases(tl, b)
    unjudged = {e.thing_name for e, _ in unjudged_notice_cases(tl, b)}
    off = powered_off_for_good(tl, unjudged)
    if off:
        notes.append(f"devices never powered on again are not judged for notice after their "
                     f"power-off: {off}")
    others = ", ".join(sorted(t for t in unjudged if tl.off_for_good(t) is None))
    if others:
        notes.append(f"devices never reachable again after a removal are not judged: {others}")
    judged: list[str | None] = []
    for c in cases:
        e, lost = c.execution, c.execution.lost_access
        if lost is None and c.deadline > tl.end and not settled(tl):
            notes.append("some notice deadlines fall after the end of the history: those "
                         "cases are not judged (nor counted)")
            continue
        judged.append(e.thing_name)
        external = e.thing_name in tl.external
        if external and lost is not None:  # how it noticed, as far as the wire shows
            v = lost.op.value
            notes.append(f"{e.thing_name} moved on from {label(e.job_id, e.execution_number)} "
                         f"{(lost.time - c.since) * 1000:.0f} ms after it was "
                         f"{c.removal.operation}: {v.get('inferred')} (told by "
                         f"{v.get('toldBy')})")
        if lost is not None and lost.time <= c.deadline:
            continue
        what = ((("never moved on from it (it went on updating it, or fell silent without "
                  "being told)") if external else "never recorded lost_access")
                + (" before the drill ended, settled" if c.deadline > tl.end else "")) \
            if lost is None else \
            f"{'moved on from it' if external else 'recorded lost_access'} " \
            f"{lost.time - c.since:.3f}s after"
        violations.append(Violation(
            invariant="notice", thing_name=e.thing_name, job_id=e.job_id, time=c.deadline,
            message=f"{e.thing_name} was executing {label(e.job_id, e.execution_number)} when "
                    f"it was {c.removal.operation} and {what} (budget {b.notice_seconds}s)",
            evidence=quote(e.started.op, c.removal.op, lost.op if lost else None)))
    return result(tl, "notice", violations, judged, notes)


def recover(tl: Timeline, b: Budgets) -> InvariantResult:
    """recover: within ``recover_seconds`` after ``lost_access`` the device records
    ``device:recovered`` or ``device:idle`` (or ``job_started`` of another execution) whose
    NVM shows a valid state: active image complete and verified, and no journal naming the
    lost execution; and the first event by which it says it moved on (``recovered``,
    ``idle``, ``job_started`` of another execution) must be that valid state: a device that
    moves on on a half-written image fails, whatever repairs it later. If the drill cut its
    power before it recovered and before the deadline, the clock starts again at its
    power-on; a device never powered on again is not judged. A deadline past the end of a
    history that has a ``final-state`` (the drill settled) is judged by the device's final
    NVM; without one it is not judged (neither counts as a case).

    External devices (judged from their traffic) show no NVM: image integrity cannot be seen
    from the wire. Their form: a device that lost an execution while other work was pending
    for it starts work again (an inferred ``job_started``) within ``recover_seconds`` of the
    lost access, or of the pending work's creation if later
    (:func:`~fleet.checker.cases.wire_recovery_cases`); with nothing pending there is nothing
    to show, and it is not a case."""
    violations: list[Violation] = []
    notes: list[str] = []
    judged: list[str | None] = []
    _recover_from_wire(tl, b, violations, notes, judged)
    cases = recovery_cases(tl, b)
    off = powered_off_for_good(tl, (c.execution.thing_name for c in cases
                                     if c.valid is None and c.deadline == float("inf")))
    if off:
        notes.append(f"devices never powered on again are not judged for recover after their "
                     f"power-off: {off}")
    final = tl.final_state
    for c in cases:
        e = c.execution
        if c.bad_claim is not None:
            judged.append(e.thing_name)
            claim = c.bad_claim
            violations.append(Violation(
                invariant="recover", thing_name=e.thing_name, job_id=e.job_id,
                time=claim.time,
                message=f"{e.thing_name} moved on ({claim.kind}) after losing "
                        f"{label(e.job_id, e.execution_number)} in an invalid state: "
                        f"{nvm_problem(claim.nvm, e.job_id, e.execution_number)}",
                evidence=quote(c.lost.op, claim.op)))
            continue
        if c.valid is None and c.deadline == float("inf"):
            continue
        if c.valid is None and c.deadline > tl.end:
            end_nvm = final.devices.get(e.thing_name) if final is not None else None
            if end_nvm is None:
                notes.append("some recovery deadlines fall after the end of the history: "
                             "those cases are not judged (nor counted)")
                continue
            # the drill settled before the deadline: what the device ended with is final
            judged.append(e.thing_name)
            problem = nvm_problem(end_nvm, e.job_id, e.execution_number)
            if problem is not None:
                violations.append(Violation(
                    invariant="recover", thing_name=e.thing_name, job_id=e.job_id,
                    time=final.op.time if final is not None else None,
                    message=f"{e.thing_name} ended the drill, before its recovery deadline, "
                            f"in an invalid state after losing "
                            f"{label(e.job_id, e.execution_number)}: {problem}",
                    evidence=quote(c.lost.op, final.op if final is not None else None)))
            continue
        judged.append(e.thing_name)
        if c.valid is not None:
            continue
        last = c.window[-1] if c.window else None
        why = nvm_problem(last.nvm, e.job_id, e.execution_number) if last else None
        state = f"its last state: {last.kind}, {why or 'valid'}" if last else "it reported nothing"
        after = f"of losing {label(e.job_id, e.execution_number)}" if c.since == c.lost.time \
            else f"of its power-on after losing {label(e.job_id, e.execution_number)}"
        violations.append(Violation(
            invariant="recover", thing_name=e.thing_name, job_id=e.job_id,
            time=c.deadline,
            message=f"{e.thing_name} did not reach a valid state within {b.recover_seconds}s "
                    f"{after} ({state})",
            evidence=quote(c.lost.op, *(ev.op for ev in c.window[-(MAX_EVIDENCE - 1):]))))
    return result(tl, "recover", violations, judged, notes)


def _recover_from_wire(tl: Timeline, b: Budgets, violations: list[Violation],
                       notes: list[str], judged: list[str | None]) -> None:
    cases, idle = wire_recovery_cases(tl, b)
    if tl.external:
        notes.append("external devices: image integrity cannot be seen from the wire; judged "
                     "by whether they started pending work again in budget")
    if idle:
        notes.append(f"external devices that lost an execution with no other work pending "
                     f"are not judged for recover: {', '.join(sorted(set(idle)))}")
    for c in cases:
        e = c.execution
        if c.started is None and c.deadline > tl.end and not settled(tl):
            notes.append("some recovery deadlines fall after the end of the history: those "
                         "cases are not judged (nor counted)")
            continue
        if c.deadline == float("inf"):
            continue
        judged.append(e.thing_name)
        if c.started is not None:
            continue
        names = ", ".join(sorted({j for j, _ in c.work}))
        violations.append(Violation(
            invariant="recover", thing_name=e.thing_name, job_id=e.job_id, time=c.deadline,
            message=f"{e.thing_name} did not start pending work ({names}) within "
                    f"{b.recover_seconds}s of losing {label(e.job_id, e.execution_number)}",
            evidence=quote(e.started.op, c.lost.op)))


def _zombie_cutoff(tl: Timeline, b: Budgets, e: DeviceExecution, r: Removal) -> tuple[float, str]:
    """After when an update of ``e`` is a zombie, and what that moment is."""
    if e.lost_access is not None and e.thing_name not in tl.external:
        return e.lost_access.time, "lost_access"
    cutoff = clock(tl, e.thing_name, r.time, b.reply_timeout_seconds) + b.reply_timeout_seconds
    why = "removal + reply timeout"
    if e.thing_name in tl.external:
        told = told_at(tl, e.thing_name, e.job_id, r.time)
        if told is not None and told.time + b.in_flight_seconds < cutoff:
            cutoff = told.time + b.in_flight_seconds
            why = f"a rejection ({told.value.get('code')}) told it so"
        moved = moved_on_at(tl, e.thing_name, e.job_id, r.time)
        if moved is not None and moved.time < cutoff:
            cutoff = moved.time
            why = f"it moved on ({moved.f}{' of ' + moved.job_id if moved.job_id else ''})"
    return cutoff, why


def _restarted(tl: Timeline, e: DeviceExecution, o: DeviceExecution) -> bool:
    """Is ``o`` a new execution of ``e``'s jobId the device started? For an external
    device, whose starts are inferred (an update after moving on is one), only one of a
    later incarnation whose document the device had been given (an update of the new
    execution carrying on with the old document is the old execution's zombie)."""
    if e.thing_name not in tl.external:
        return True
    if o.incarnation <= e.incarnation:
        return False
    created = next((c for c in tl.creates if c.job_id == o.job_id
                    and c.incarnation == o.incarnation), None)
    given = o.started.document_digest
    return created is None or created.digest is None or given is None or given == created.digest


def no_zombie(tl: Timeline, b: Budgets) -> InvariantResult:
    """no-zombie: after a device's ``lost_access`` for a removed execution (or, if it never
    noticed, after the removal -- or its next reachable moment, :meth:`Timeline.reachable_from`,
    or its power-on if the drill cut its power within the grace, :func:`clock_start` -- plus
    ``reply_timeout_seconds``) the device publishes no
    ``UpdateJobExecution`` for that jobId, until it starts a new execution of the jobId; an
    update whose payload names a different ``executionNumber`` is not for that execution.

    External devices (judged from their traffic): from whichever comes first after the
    removal -- the first rejection, with ResourceNotFound, InvalidStateTransition or
    TerminalStateReached, of one of its requests about the job, plus ``in_flight_seconds``
    (an update sent before the rejection arrived); the device's own first request that went
    on to other work (a start-next, an update of another job: MQTT keeps its messages in
    order, so no grace); removal + reply timeout. A ``notify-next`` does not count: nothing
    on the wire shows the device subscribed to it, and AWS does not promise its delivery."""
    violations = []
    pairs = removed_executions(tl, b)
    for e, r in pairs:
        cutoff, after = _zombie_cutoff(tl, b, e, r)
        horizon = min((o.started.time for o in tl.executions_of(e.thing_name, e.job_id)
                       if o is not e and o.started.time > cutoff and _restarted(tl, e, o)),
                      default=float("inf"))
        zombies = [q for q in tl.requests_by_thing.get(e.thing_name, [])
                   if q.f == Operation.UPDATE and q.job_id == e.job_id
                   and cutoff < q.time < horizon
                   and compatible(as_int(q.payload.get("executionNumber")), e.execution_number)]
        if not zombies:
            continue
        violations.append(Violation(
            invariant="no-zombie", thing_name=e.thing_name, job_id=e.job_id, time=zombies[0].time,
            message=f"{e.thing_name} sent {len(zombies)} UpdateJobExecution for "
                    f"{label(e.job_id, e.execution_number)} after {after} "
                    f"(first: status {zombies[0].payload.get('status')})",
            evidence=quote(r.op, e.lost_access.op if e.lost_access else None,
                         *(q.op for q in zombies))))
    return result(tl, "no-zombie", violations, (e.thing_name for e, _ in pairs))
