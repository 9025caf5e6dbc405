"""Is each device's state valid and in line with the service's, and did the work go on:
valid-end, consistent, progress."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from devicesim.wire.history import Op
from fleet.checker.cases import (
    label,
    nvm_problem,
    pending_work,
    stale_document_updates,
    withdrawn,
)
from fleet.checker.invariants._common import (
    CLEARING_KINDS,
    EXECUTING_KINDS,
    clock,
    quote,
    result,
)
from fleet.checker.model import Budgets, InvariantResult, Violation
from fleet.checker.timeline import (
    DEVICE_TERMINAL,
    DeviceEventRecord,
    ExecKey,
    Timeline,
    as_int,
    compatible,
    is_terminal,
)


def valid_end(tl: Timeline, b: Budgets) -> InvariantResult:
    """valid-end: each device's final NVM (the ``final-state`` marker's, else its last event
    carrying NVM) has a complete and verified active image, and its journal is empty or names
    an execution that still exists: listed in ``final-state.executions`` (without a final
    state: not deleted by the service), and, for a reused jobId, of its current incarnation
    (a journal whose document digest is an earlier incarnation's names a deleted execution
    that happens to share its jobId and execution number). The journal of a device powered
    off to the end is not judged (it never got the chance to clear it: notice judges whether
    it should have before its power-off); its image is. External devices (judged from their
    traffic) are not judged: the wire does not show their flash."""
    violations, notes = [], []
    final = tl.final_state
    if final is None:
        notes.append("no final-state marker: judged from each device's last event")
    things = sorted(set(tl.device_events) | set(final.devices if final else ()))
    cases: list[str | None] = []
    if tl.external:
        notes.append("external devices are not judged: their flash (image, journal) cannot "
                     "be seen from the wire (consistent judges what they end executing)")
    for thing in things:
        if thing in tl.external:
            continue
        nvm: Mapping[str, Any] | None = None
        source: Op | None = None
        if final is not None and thing in final.devices:
            nvm, source = final.devices[thing], final.op
        else:
            last = next((ev for ev in reversed(tl.events_of(thing)) if ev.nvm is not None), None)
            if last is not None:
                nvm, source = last.nvm, last.op
        if nvm is None:
            notes.append(f"{thing}: no NVM summary reported")
            continue
        cases.append(thing)
        problem = nvm_problem(nvm)
        journal = nvm.get("journalJobId")
        if problem is None and isinstance(journal, str) and journal and \
                tl.off_for_good(thing) is not None:
            notes.append(f"{thing}: powered off to the end, its journal ({journal}) is not "
                         f"judged")
        elif problem is None and isinstance(journal, str) and journal:
            number = as_int(nvm.get("journalExecutionNumber"))
            if final is not None:
                exists = any(compatible(as_int(x.get("executionNumber")), number)
                             for x in final.executions_of(thing, journal))
            else:
                key = (thing, journal, tl.current_incarnation(journal))
                exists = not any(r.operation == "deleted" for r in tl.removals_of(key, number))
            if exists and _earlier_incarnation(tl, journal, nvm.get("journalDocumentDigest")):
                problem = (f"journal names {label(journal, number)} of an earlier incarnation "
                           f"of the jobId (deleted; its document is not the current one's)")
            elif not exists:
                problem = f"journal names {label(journal, number)}, which no longer exists"
        if problem is not None:
            violations.append(Violation(
                invariant="valid-end", thing_name=thing,
                job_id=journal if isinstance(journal, str) else None,
                time=source.time if source else None,
                message=f"{thing} ends in an invalid state: {problem}", evidence=quote(source)))
    return result(tl, "valid-end", violations, cases, notes)


def _earlier_incarnation(tl: Timeline, job_id: str, digest: object) -> bool:
    """Does a journal's document digest name an incarnation of the jobId before the current
    one (the current CreateJob carried another document, an earlier one this)?"""
    if not isinstance(digest, str):
        return False
    creates = [c for c in tl.creates if c.job_id == job_id and c.digest is not None]
    if len(creates) < 2:
        return False
    current = max(creates, key=lambda c: c.incarnation)
    return digest != current.digest and any(c.digest == digest for c in creates
                                             if c.incarnation < current.incarnation)


def consistent(tl: Timeline, b: Budgets) -> InvariantResult:
    """consistent: (1) a device never reports ``job_started``/``step`` for an execution the
    service removed more than ``reply_timeout_seconds`` earlier (counted from when the device
    was next reachable, if it was offline or powered off at the removal, and from its
    power-on if the drill cut its power within that grace), unless it records
    ``lost_access`` for it within ``reply_timeout_seconds`` (a rebooted device may resume from
    its journal, then check); (2) a device whose last word is that it is executing an
    execution (``job_started``/``step`` with nothing after) ends with that execution existing,
    in the job's current incarnation and not terminal, per ``final-state`` (without one: not
    removed); a status only the device itself sets (SUCCEEDED/FAILED/REJECTED) means it
    finished and its last events did not reach the history, so it passes. A device powered
    off for good has no belief left (its NVM is judged by valid-end): (2) does not judge it."""
    violations, notes = [], []
    cases: list[str | None] = []
    timeout = b.reply_timeout_seconds
    flagged: set[ExecKey] = set()
    for thing, events in tl.device_events.items():
        for i, ev in enumerate(events):
            if ev.kind not in EXECUTING_KINDS or ev.job_id is None:
                continue
            cases.append(thing)
            key = (thing, ev.job_id, ev.incarnation)
            stale = [r for r in tl.removals_of(key, ev.execution_number)
                     if clock(tl, thing, r.time, timeout) < ev.time - timeout]
            if not stale or key in flagged:
                continue
            checked_later = any(
                later.kind == "lost_access" and later.job_id == ev.job_id
                and compatible(later.execution_number, ev.execution_number)
                for later in events[i + 1:] if later.time <= ev.time + timeout)
            if checked_later:
                continue
            flagged.add(key)
            violations.append(Violation(
                invariant="consistent", thing_name=thing, job_id=ev.job_id, time=ev.time,
                message=f"{thing} reported {ev.kind} for "
                        f"{label(ev.job_id, ev.execution_number)} {ev.time - stale[0].time:.3f}s "
                        f"after the service {stale[0].operation} it",
                evidence=quote(stale[0].op, ev.op)))
    final = tl.final_state
    if final is None:
        notes.append("no final-state marker: end state judged from removal events only")
    off_at_end: list[str] = []
    for thing, events in tl.device_events.items():
        executing = _executing_at_end(events)
        if executing is None or executing.job_id is None:
            continue
        if tl.off_for_good(thing) is not None:
            off_at_end.append(thing)
            continue
        cases.append(thing)
        job_id, number = executing.job_id, executing.execution_number
        problem = None
        if executing.incarnation != tl.current_incarnation(job_id):
            problem = "an earlier incarnation of the jobId (it was deleted and created again)"
        elif final is not None:
            live = [x for x in final.executions_of(thing, job_id)
                    if compatible(as_int(x.get("executionNumber")), number)]
            if not live:
                problem = "no such execution exists on the service"
            elif any(x.get("status") in DEVICE_TERMINAL for x in live):
                pass  # only the device sets these: it finished, its last events are unrecorded
            elif all(is_terminal(x.get("status")) for x in live):
                problem = f"the service has it {live[-1].get('status')}"
        elif tl.removals_of((thing, job_id, executing.incarnation), number):
            problem = "the service removed it"
        if problem is not None:
            violations.append(Violation(
                invariant="consistent", thing_name=thing, job_id=job_id, time=executing.time,
                message=f"{thing} ends executing {label(job_id, number)} but {problem}",
                evidence=quote(executing.op, final.op if final else None)))
    if off_at_end:
        notes.append(f"devices powered off to the end are not judged for what they were "
                     f"executing then: {', '.join(sorted(off_at_end))}")
    return result(tl, "consistent", violations, cases, notes)


def _executing_at_end(events: list[DeviceEventRecord]) -> DeviceEventRecord | None:
    for ev in reversed(events):
        if ev.kind in EXECUTING_KINDS:
            return ev
        if ev.kind in CLEARING_KINDS:
            return None
    return None


def progress(tl: Timeline, b: Budgets) -> InvariantResult:
    """progress: (1) every execution created by a successful ``CreateJob`` (its thing
    targets; for a thing group, a paced, scheduled or continuous job, the things the service
    offered it to) that the service did not remove and whose job
    (or execution) the controller did not delete or cancel reaches a terminal status: an
    accepted terminal ``UpdateJobExecution``, a terminal execution event, or a terminal status
    in ``final-state`` -- but not a terminal status the device set by applying another
    document to the new execution of a reused jobId
    (:func:`fleet.checker.cases.stale_document_updates`): that execution never ran its own
    document. (2) a device that lost access while other work was pending for it (a
    created execution not yet terminal or removed, or a ``notify-next`` naming another job)
    records a later ``job_started``, unless all that work was withdrawn. A history with a
    ``final-state`` marker has settled and is judged to its end; without one, jobs created in
    the last ``reply_timeout_seconds`` and devices that lost access in the last
    ``recover_seconds + reply_timeout_seconds`` are not judged."""
    violations, notes = [], []
    terminal = tl.terminal
    final = tl.final_state
    settled = tl.end if final is not None else tl.end - b.reply_timeout_seconds
    cases: list[str | None] = []
    stale = {(s.thing_name, s.created.job_id, s.created.incarnation): s
             for s in stale_document_updates(tl) if s.terminal}
    for c in tl.creates:
        if c.time > settled:
            notes.append("jobs created at the very end are not judged")
            continue
        for thing in c.targets:
            key = (thing, c.job_id, c.incarnation)
            if tl.removals_of(key, None) or tl.job_withdrawn(c.job_id, c.incarnation, thing):
                continue
            cases.append(thing)
            bogus = stale.get(key)
            if bogus is not None:
                violations.append(Violation(
                    invariant="progress", thing_name=thing, job_id=c.job_id,
                    time=bogus.reply.time,
                    message=f"{thing}'s execution of reused jobId {c.job_id} reached "
                            f"{bogus.status} only by {thing} applying another document to it "
                            f"(digest {bogus.digest}, expected {c.digest})",
                    evidence=quote(c.call.completion, bogus.request.op, bogus.reply)))
                continue
            if terminal.get(key):
                continue
            if final is not None and c.incarnation == tl.current_incarnation(c.job_id) and \
                    any(is_terminal(x.get("status")) for x in final.executions_of(thing, c.job_id)):
                continue
            last = next((ev for ev in reversed(tl.events_of(thing)) if ev.job_id == c.job_id
                         and ev.incarnation == c.incarnation), None)
            status = next((str(x.get("status")) for x in final.executions_of(thing, c.job_id)),
                          "absent") if final and c.incarnation == tl.current_incarnation(
                c.job_id) else "unknown"
            violations.append(Violation(
                invariant="progress", thing_name=thing, job_id=c.job_id, time=tl.end,
                message=f"{thing}'s execution of {c.job_id} never reached a terminal status "
                        f"(final status: {status}; device's last word: "
                        f"{last.kind if last else 'nothing'})",
                evidence=quote(c.call.completion, last.op if last else None,
                             final.op if final else None)))
    for e in tl.executions:
        lost = e.lost_access
        if lost is None:
            continue
        work = pending_work(tl, e, lost, terminal)
        if not work:
            continue
        if final is None and lost.time + b.recover_seconds + b.reply_timeout_seconds > tl.end:
            notes.append("devices that lost access at the very end are not judged")
            continue
        cases.append(e.thing_name)
        if any(ev.kind == "job_started" and ev.time > lost.time for ev in tl.events_of(
                e.thing_name)):
            continue
        still = [w for w in work if not withdrawn(tl, e.thing_name, w, terminal)]
        if not still:
            continue
        names = ", ".join(sorted({j for j, _ in still}))
        violations.append(Violation(
            invariant="progress", thing_name=e.thing_name, job_id=e.job_id, time=lost.time,
            message=f"{e.thing_name} lost {label(e.job_id, e.execution_number)} and never "
                    f"started pending work afterwards ({names})",
            evidence=quote(lost.op)))
    return result(tl, "progress", violations, cases, notes)
