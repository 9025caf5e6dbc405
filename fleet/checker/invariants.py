"""The invariants of DESIGN.md, one function each: ``(Timeline, Budgets) -> InvariantResult``.

Each docstring states the rule exactly as checked. Shared vocabulary:

- *removal*: the service deleted, force-canceled or removed an execution (a
  :class:`~fleet.checker.timeline.Removal`, timed when the recorder saw the event).
- *held*: a device held an execution at its removal when it recorded ``job_started`` for it
  no later than ``reply_timeout`` after the removal and no ``job_finished`` before it.
- *valid state* (NVM): ``activeComplete`` and ``activeVerified`` are true and the journal does
  not name the lost execution.
- *reachable* (:meth:`~fleet.checker.timeline.Timeline.reachable_from`): not inside a broker
  or service outage, a spell the device began with ``disconnected``/``rebooted`` and ended with
  ``connected``, or a power cut (from the drill's ``power-off`` marker naming the device to
  the next ``power-on`` naming it, or to the end of the history). Clocks start when the device
  is reachable, and a power cut before the budget is spent restarts them at the power-on
  (:func:`fleet.checker.cases.clock_start`): a device without power has lost its RAM and
  cannot act, so the time it was off never counts against it.

The checker is sound rather than paranoid: where the history cannot show a rule was broken
(a deadline beyond the end of the history, a fact the recorder did not see) it passes the
case and says so in ``notes``.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from devicesim.wire.topics import Operation
from fleet.checker.cases import (
    StaleUpdate,
    clock_start,
    label,
    notice_cases,
    nvm_problem,
    recovery_cases,
    removed_executions,
    reused_updates,
    stale_document_updates,
    unjudged_notice_cases,
    work_digest,
)
from fleet.checker.model import Budgets, InvariantResult, Violation
from fleet.checker.timeline import (
    DEVICE_TERMINAL,
    DeviceEventRecord,
    DeviceExecution,
    ExecKey,
    Request,
    TerminalFact,
    Timeline,
    as_int,
    compatible,
    evidence,
    is_terminal,
)
from fleet.history import Op, OpType

#: AWS limit (spec §9): jobs in DELETION_IN_PROGRESS at once.
MAX_DELETIONS_IN_PROGRESS = 10
#: How many ops a violation quotes at most.
MAX_EVIDENCE = 8
_EXECUTING_KINDS = ("job_started", "step")
_CLEARING_KINDS = ("job_finished", "lost_access", "rolled_back", "recovered", "idle")

Invariant = Callable[[Timeline, Budgets], InvariantResult]


def _result(name: str, violations: list[Violation], checked: int,
            notes: Iterable[str] = ()) -> InvariantResult:
    return InvariantResult(name=name, passed=not violations, violations=tuple(violations),
                           checked=checked, notes=tuple(dict.fromkeys(notes)))


def _ev(*ops: Op | None) -> tuple[dict[str, Any], ...]:
    seen = sorted({id(op): op for op in ops if op is not None}.values(), key=lambda o: o.time)
    return tuple(evidence(op) for op in seen[:MAX_EVIDENCE])


def _clock(tl: Timeline, thing: str, time: float, budget: float) -> float:
    """:func:`clock_start` for a device that has not done what the budget is for (``inf``:
    never reachable again)."""
    since = clock_start(tl, thing, time, budget)
    return float("inf") if since is None else since


def _powered_off_for_good(tl: Timeline, things: Iterable[str]) -> str:
    return ", ".join(sorted({t for t in things if tl.off_for_good(t) is not None}))


# --- the invariants -----------------------------------------------------------------------


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
    and a deadline past the end of the history are not judged.
    Detection latency = ``lost_access`` time - that start of the clock (at least 0)."""
    violations, notes = [], []
    cases = notice_cases(tl, b)
    unjudged = {e.thing_name for e, _ in unjudged_notice_cases(tl, b)}
    off = _powered_off_for_good(tl, unjudged)
    if off:
        notes.append(f"devices never powered on again are not judged for notice after their "
                     f"power-off: {off}")
    others = ", ".join(sorted(t for t in unjudged if tl.off_for_good(t) is None))
    if others:
        notes.append(f"devices never reachable again after a removal are not judged: {others}")
    for c in cases:
        e, lost = c.execution, c.execution.lost_access
        if lost is not None and lost.time <= c.deadline:
            continue
        if lost is None and c.deadline > tl.end:
            notes.append("some notice deadlines fall after the end of the history")
            continue
        what = "never recorded lost_access" if lost is None else \
            f"recorded lost_access {lost.time - c.since:.3f}s after"
        violations.append(Violation(
            invariant="notice", thing_name=e.thing_name, job_id=e.job_id, time=c.deadline,
            message=f"{e.thing_name} was executing {label(e.job_id, e.execution_number)} when "
                    f"it was {c.removal.operation} and {what} (budget {b.notice_seconds}s)",
            evidence=_ev(e.started.op, c.removal.op, lost.op if lost else None)))
    return _result("notice", violations, len(cases), notes)


def recover(tl: Timeline, b: Budgets) -> InvariantResult:
    """recover: within ``recover_seconds`` after ``lost_access`` the device records
    ``device:recovered`` or ``device:idle`` (or ``job_started`` of another execution) whose
    NVM shows a valid state: active image complete and verified, and no journal naming the
    lost execution. If the drill cut its power before it recovered and before the deadline,
    the clock starts again at its power-on; a device never powered on again is not judged,
    nor is a deadline past the end of the history."""
    violations, notes = [], []
    cases = recovery_cases(tl, b)
    off = _powered_off_for_good(tl, (c.execution.thing_name for c in cases
                                     if c.valid is None and c.deadline == float("inf")))
    if off:
        notes.append(f"devices never powered on again are not judged for recover after their "
                     f"power-off: {off}")
    for c in cases:
        if c.valid is not None or c.deadline == float("inf"):
            continue
        if c.deadline > tl.end:
            notes.append("some recovery deadlines fall after the end of the history")
            continue
        e = c.execution
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
            evidence=_ev(c.lost.op, *(ev.op for ev in c.window[-(MAX_EVIDENCE - 1):]))))
    return _result("recover", violations, len(cases), notes)


def no_zombie(tl: Timeline, b: Budgets) -> InvariantResult:
    """no-zombie: after a device's ``lost_access`` for a removed execution (or, if it never
    noticed, after the removal -- or its next reachable moment, :meth:`Timeline.reachable_from`,
    or its power-on if the drill cut its power within the grace, :func:`clock_start` -- plus
    ``reply_timeout_seconds``) the device publishes no
    ``UpdateJobExecution`` for that jobId, until it starts a new execution of the jobId; an
    update whose payload names a different ``executionNumber`` is not for that execution."""
    violations = []
    pairs = removed_executions(tl, b)
    for e, r in pairs:
        cutoff = e.lost_access.time if e.lost_access else \
            _clock(tl, e.thing_name, r.time, b.reply_timeout_seconds) + b.reply_timeout_seconds
        horizon = min((o.started.time for o in tl.executions_of(e.thing_name, e.job_id)
                       if o is not e and o.started.time > cutoff), default=float("inf"))
        zombies = [q for q in tl.requests_by_thing.get(e.thing_name, [])
                   if q.f == Operation.UPDATE and q.job_id == e.job_id
                   and cutoff < q.time < horizon
                   and compatible(as_int(q.payload.get("executionNumber")), e.execution_number)]
        if not zombies:
            continue
        after = "lost_access" if e.lost_access else "removal + reply timeout"
        violations.append(Violation(
            invariant="no-zombie", thing_name=e.thing_name, job_id=e.job_id, time=zombies[0].time,
            message=f"{e.thing_name} sent {len(zombies)} UpdateJobExecution for "
                    f"{label(e.job_id, e.execution_number)} after {after} "
                    f"(first: status {zombies[0].payload.get('status')})",
            evidence=_ev(r.op, e.lost_access.op if e.lost_access else None,
                         *(q.op for q in zombies))))
    return _result("no-zombie", violations, len(pairs))


def valid_end(tl: Timeline, b: Budgets) -> InvariantResult:
    """valid-end: each device's final NVM (the ``final-state`` marker's, else its last event
    carrying NVM) has a complete and verified active image, and its journal is empty or names
    an execution that still exists: listed in ``final-state.executions`` (without a final
    state: not deleted by the service). The journal of a device powered off to the end is not
    judged (it never got the chance to clear it: notice judges whether it should have before
    its power-off); its image is."""
    violations, notes = [], []
    final = tl.final_state
    if final is None:
        notes.append("no final-state marker: judged from each device's last event")
    things = sorted(set(tl.device_events) | set(final.devices if final else ()))
    checked = 0
    for thing in things:
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
        checked += 1
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
            if not exists:
                problem = f"journal names {label(journal, number)}, which no longer exists"
        if problem is not None:
            violations.append(Violation(
                invariant="valid-end", thing_name=thing,
                job_id=journal if isinstance(journal, str) else None,
                time=source.time if source else None,
                message=f"{thing} ends in an invalid state: {problem}", evidence=_ev(source)))
    return _result("valid-end", violations, checked, notes)


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
    checked = 0
    timeout = b.reply_timeout_seconds
    flagged: set[ExecKey] = set()
    for thing, events in tl.device_events.items():
        for i, ev in enumerate(events):
            if ev.kind not in _EXECUTING_KINDS or ev.job_id is None:
                continue
            checked += 1
            key = (thing, ev.job_id, ev.incarnation)
            stale = [r for r in tl.removals_of(key, ev.execution_number)
                     if _clock(tl, thing, r.time, timeout) < ev.time - timeout]
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
                evidence=_ev(stale[0].op, ev.op)))
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
        checked += 1
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
                evidence=_ev(executing.op, final.op if final else None)))
    if off_at_end:
        notes.append(f"devices powered off to the end are not judged for what they were "
                     f"executing then: {', '.join(sorted(off_at_end))}")
    return _result("consistent", violations, checked, notes)


def _executing_at_end(events: list[DeviceEventRecord]) -> DeviceEventRecord | None:
    for ev in reversed(events):
        if ev.kind in _EXECUTING_KINDS:
            return ev
        if ev.kind in _CLEARING_KINDS:
            return None
    return None


def progress(tl: Timeline, b: Budgets) -> InvariantResult:
    """progress: (1) every execution created by a successful ``CreateJob`` (its thing
    targets; thing groups cannot be resolved) that the service did not remove and whose job
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
    checked = 0
    stale = {(s.thing_name, s.created.job_id, s.created.incarnation): s
             for s in stale_document_updates(tl) if s.terminal}
    for c in tl.creates:
        if len(c.targets) < len(c.call.request.get("targets") or []):
            notes.append(f"{c.job_id}: thing-group targets cannot be resolved; not judged")
        if c.time > settled:
            notes.append("jobs created at the very end are not judged")
            continue
        for thing in c.targets:
            key = (thing, c.job_id, c.incarnation)
            if tl.removals_of(key, None) or tl.job_withdrawn(c.job_id, c.incarnation, thing):
                continue
            checked += 1
            bogus = stale.get(key)
            if bogus is not None:
                violations.append(Violation(
                    invariant="progress", thing_name=thing, job_id=c.job_id,
                    time=bogus.reply.time,
                    message=f"{thing}'s execution of reused jobId {c.job_id} reached "
                            f"{bogus.status} only by {thing} applying another document to it "
                            f"(digest {bogus.digest}, expected {c.digest})",
                    evidence=_ev(c.call.completion, bogus.request.op, bogus.reply)))
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
                evidence=_ev(c.call.completion, last.op if last else None,
                             final.op if final else None)))
    for e in tl.executions:
        lost = e.lost_access
        if lost is None:
            continue
        work = _pending_work(tl, e, lost, terminal)
        if not work:
            continue
        if final is None and lost.time + b.recover_seconds + b.reply_timeout_seconds > tl.end:
            notes.append("devices that lost access at the very end are not judged")
            continue
        checked += 1
        if any(ev.kind == "job_started" and ev.time > lost.time for ev in tl.events_of(
                e.thing_name)):
            continue
        still = [w for w in work if not _withdrawn(tl, e.thing_name, w, terminal)]
        if not still:
            continue
        names = ", ".join(sorted({j for j, _ in still}))
        violations.append(Violation(
            invariant="progress", thing_name=e.thing_name, job_id=e.job_id, time=lost.time,
            message=f"{e.thing_name} lost {label(e.job_id, e.execution_number)} and never "
                    f"started pending work afterwards ({names})",
            evidence=_ev(lost.op)))
    return _result("progress", violations, checked, notes)


def _pending_work(tl: Timeline, e: DeviceExecution, lost: DeviceEventRecord,
                  terminal: Mapping[ExecKey, list[TerminalFact]]) -> set[tuple[str, int]]:
    work: set[tuple[str, int]] = set()
    mine = (e.job_id, e.incarnation)
    for c in tl.creates_by_thing.get(e.thing_name, []):
        if c.time > lost.time or (c.job_id, c.incarnation) == mine:
            continue
        started = any(o.incarnation == c.incarnation and o.started.time <= lost.time
                      for o in tl.executions_of(e.thing_name, c.job_id))
        if not started and not _withdrawn(tl, e.thing_name, (c.job_id, c.incarnation),
                                          terminal):
            work.add((c.job_id, c.incarnation))
    pushes = [p for p in tl.notify_next.get(e.thing_name, []) if p.time <= lost.time]
    later = [p for p in tl.notify_next.get(e.thing_name, []) if p.time > lost.time]
    for push in pushes[-1:] + later[:1]:
        head = push.value.get("payload", {}).get("execution") or {}
        job_id = head.get("jobId") if isinstance(head, dict) else None
        if isinstance(job_id, str) and (job_id, tl.incarnation(job_id, push.time)) != mine:
            work.add((job_id, tl.incarnation(job_id, push.time)))
    return work


def _withdrawn(tl: Timeline, thing: str, work: tuple[str, int],
               terminal: Mapping[ExecKey, list[TerminalFact]]) -> bool:
    """Was this pending work removed, withdrawn by the controller or finished (at any time
    in the history)?"""
    job_id, incarnation = work
    key = (thing, job_id, incarnation)
    return bool(tl.removals_of(key, None)) or tl.job_withdrawn(job_id, incarnation, thing) or \
        bool(terminal.get(key))


def reuse(tl: Timeline, b: Budgets) -> InvariantResult:
    """reuse: for a jobId created again after its deletion, (1) every ``job_started``/``step``
    a device reports for it in the new incarnation carries the new document's digest (THE
    digest rule, :func:`fleet.checker.model.document_digest`) and an execution number the
    service announced for that thing in the new incarnation (when it announced any); (2) no
    ``UpdateJobExecution`` of the new incarnation is accepted while the device's last word
    about the jobId (``job_started``/``step``/``image_committed``) names another document
    (:func:`fleet.checker.cases.stale_document_updates`): a device that resumes the old
    document after the jobId was created again -- after a reboot, say -- applies it to the new
    execution (a stale update the new execution rejects is no fault; the device must notice);
    (3) a device the service offered the new execution to (notify, notify-next or a reply
    naming it) starts it, unless it was removed, withdrawn or made terminal otherwise -- a
    device that takes it for the execution it already had (same jobId, same execution number)
    ignores it. Without a ``final-state`` marker, offers in the last ``recover_seconds +
    reply_timeout_seconds`` are not judged."""
    violations, notes = [], []
    checked = len(reused_updates(tl))
    stale: dict[tuple[str, int], list[StaleUpdate]] = defaultdict(list)
    for s in stale_document_updates(tl):
        stale[(s.created.job_id, s.created.incarnation)].append(s)
    settled = tl.end if tl.final_state is not None else \
        tl.end - b.recover_seconds - b.reply_timeout_seconds
    digests: dict[str, list[tuple[int, str | None]]] = defaultdict(list)
    for c in tl.creates:
        digests[c.job_id].append((c.incarnation, c.digest))
    for c in tl.creates:
        if not c.reused:
            continue
        if c.digest is None:
            notes.append(f"{c.job_id}: CreateJob carried no document; digest not checked")
        old = {d for inc, d in digests[c.job_id] if inc < c.incarnation and d}
        flagged: set[str] = set()
        for ev in tl.events_by_job.get(c.job_id, []):
            thing = ev.thing_name
            if ev.kind not in _EXECUTING_KINDS or ev.incarnation != c.incarnation or \
                    thing in flagged:
                continue
            checked += 1
            problem = _reuse_problem(tl, c.digest, old, ev)
            if problem is None:
                continue
            flagged.add(thing)
            violations.append(Violation(
                invariant="reuse", thing_name=thing, job_id=c.job_id, time=ev.time,
                message=f"{thing} {ev.kind} on reused jobId {c.job_id}: {problem}",
                evidence=_ev(c.call.completion, ev.op)))
        for s in stale[(c.job_id, c.incarnation)]:
            if s.thing_name in flagged:
                continue
            flagged.add(s.thing_name)
            violations.append(_stale_violation(tl, s, old))
        for thing in c.targets:
            key = (thing, c.job_id, c.incarnation)
            offer = tl.first_offer.get(key)
            if offer is None or offer.time > settled or thing in flagged:
                continue
            checked += 1
            if any(e.incarnation == c.incarnation for e in tl.executions_of(thing, c.job_id)):
                continue
            if tl.removals_of(key, None) or tl.terminal.get(key) or \
                    tl.job_withdrawn(c.job_id, c.incarnation, thing):
                continue
            earlier = [e for e in tl.executions_of(thing, c.job_id)
                       if e.incarnation < c.incarnation]
            violations.append(Violation(
                invariant="reuse", thing_name=thing, job_id=c.job_id, time=offer.time,
                message=f"{thing} was offered the new execution of reused jobId {c.job_id} "
                        f"and never started it" + (
                            " (it had run an earlier one: taken for a duplicate?)"
                            if earlier else ""),
                evidence=_ev(earlier[-1].started.op if earlier else None, c.call.completion,
                             offer)))
    return _result("reuse", violations, checked, notes)


def _stale_violation(tl: Timeline, s: StaleUpdate, old: set[str]) -> Violation:
    c, thing, job_id = s.created, s.thing_name, s.created.job_id
    what = "the old document" if s.digest in old else "a document that is not the new one"
    # What it went on to do with that document in the new incarnation.
    later = [ev for ev in tl.events_by_job.get(job_id, [])
             if ev.thing_name == thing and ev.time > s.request.time
             and ev.kind in ("image_committed", "job_finished")
             and work_digest(tl, ev) == s.digest]
    did = [f"finished it {ev.op.value.get('status')}" if ev.kind == "job_finished" else
           f"committed image {(ev.nvm or {}).get('activeVersion', '(version unknown)')}"
           for ev in later]
    number = as_int(s.request.payload.get("executionNumber"))
    if number is None:
        number = tl.known_execution_number(thing, job_id, s.request.time, c.incarnation)
    return Violation(
        invariant="reuse", thing_name=thing, job_id=job_id, time=s.reply.time,
        message=f"{thing} applied {what} (digest {s.digest}, expected {c.digest}) to the new "
                f"execution {label(job_id, number)} of reused jobId {job_id}: its last word "
                f"was {s.work.kind} with that document and the service accepted its "
                f"UpdateJobExecution ({s.status})"
                + (f"; it then {' and '.join(did)}" if did else ""),
        evidence=_ev(c.call.completion, s.work.op, s.request.op, s.reply,
                     *(ev.op for ev in later)))


def _reuse_problem(tl: Timeline, digest: str | None, old: set[str],
                   ev: DeviceEventRecord) -> str | None:
    assert ev.job_id is not None
    if digest is not None and ev.document_digest is not None and ev.document_digest != digest:
        what = "the old document" if ev.document_digest in old else \
            "a document that is not the new one"
        return f"applied {what} (digest {ev.document_digest}, expected {digest})"
    announced = tl.service_execution_numbers((ev.thing_name, ev.job_id, ev.incarnation))
    if announced and ev.execution_number is not None and ev.execution_number not in announced:
        return (f"used execution number {ev.execution_number}, which the service never "
                f"announced for it (announced: {sorted(announced)})")
    return None


def service(tl: Timeline, b: Budgets) -> InvariantResult:
    """service: (1) job events never show more than 10 jobs between ``deletion_in_progress``
    and ``deleted`` at once; (2) no ``UpdateJobExecution`` is accepted (ok reply) after the
    removal event of that execution; (3) ``final-state`` lists no execution of a job whose
    deletion completed (and was not created again); (4) the ``versionNumber`` the service
    publishes for one execution (thing, job, incarnation, execution number) never decreases
    (a removal of it restarts the sequence)."""
    violations: list[Violation] = []
    notes = []
    checked = 0
    deleting: dict[str, Op] = {}
    over = False
    for job_id, operation, op in tl.job_events:
        if operation == "deletion_in_progress":
            deleting[job_id] = op
            checked += 1
        elif operation == "deleted":
            deleting.pop(job_id, None)
        if len(deleting) > MAX_DELETIONS_IN_PROGRESS and not over:
            violations.append(Violation(
                invariant="service", thing_name=None, job_id=job_id, time=op.time,
                message=f"{len(deleting)} jobs in DELETION_IN_PROGRESS at once "
                        f"(limit {MAX_DELETIONS_IN_PROGRESS}): {', '.join(sorted(deleting))}",
                evidence=_ev(*deleting.values())))
        over = len(deleting) > MAX_DELETIONS_IN_PROGRESS
    if not tl.job_events:
        notes.append("no job events: the deletion limit was not checked")
    for q in tl.requests:
        if q.f != Operation.UPDATE or q.job_id is None:
            continue
        for reply in q.replies:
            if reply.type is not OpType.OK:
                continue
            checked += 1
            number = as_int(q.payload.get("executionNumber"))
            if number is None:
                number = tl.known_execution_number(q.thing_name, q.job_id, q.time)
            gone = [r for r in tl.removals_of((q.thing_name, q.job_id, q.incarnation), number)
                    if r.time < reply.time and r.source == "execution-event"]
            if gone:
                violations.append(Violation(
                    invariant="service", thing_name=q.thing_name, job_id=q.job_id,
                    time=reply.time,
                    message=f"the service accepted an update of {label(q.job_id, number)} "
                            f"from {q.thing_name} after it {gone[0].operation} it",
                    evidence=_ev(gone[0].op, q.op, reply)))
    final = tl.final_state
    if final is not None:
        for x in final.executions:
            survivor = x.get("jobId")
            if not isinstance(survivor, str):
                continue
            checked += 1
            deleted = tl.deletion_completed(survivor)
            if deleted is not None:
                violations.append(Violation(
                    invariant="service", thing_name=str(x.get("thingName")), job_id=survivor,
                    time=final.op.time,
                    message=f"execution {label(survivor, as_int(x.get('executionNumber')))} of "
                            f"{x.get('thingName')} survives the deletion of its job",
                    evidence=_ev(deleted, final.op)))
    violations.extend(_version_violations(tl))
    checked += len(tl.versions)
    return _result("service", violations, checked, notes)


def _version_violations(tl: Timeline) -> list[Violation]:
    last: dict[tuple[str, str, int, int | None, int], tuple[int, Op]] = {}
    out: list[Violation] = []
    flagged: set[tuple[str, str, int, int | None]] = set()
    for v in tl.versions:
        generation = sum(1 for r in tl.removals_of((v.thing_name, v.job_id, v.incarnation),
                                                   v.execution_number) if r.time < v.op.time)
        key = (v.thing_name, v.job_id, v.incarnation, v.execution_number, generation)
        previous = last.get(key)
        if previous is not None and v.version_number < previous[0] and key[:4] not in flagged:
            flagged.add(key[:4])
            out.append(Violation(
                invariant="service", thing_name=v.thing_name, job_id=v.job_id, time=v.op.time,
                message=f"versionNumber of {label(v.job_id, v.execution_number)} on "
                        f"{v.thing_name} went down from {previous[0]} to {v.version_number}",
                evidence=_ev(previous[1], v.op)))
        if previous is None or v.version_number >= previous[0]:
            last[key] = (v.version_number, v.op)
    return out


def answered(tl: Timeline, b: Budgets) -> InvariantResult:
    """answered: every device request carrying a clientToken gets a reply (ok or fail, same
    thing, operation and clientToken), and no more replies than it was sent (invokes sharing
    a token count as one request sent that many times). A request whose
    reply window (``reply_timeout_seconds``) meets a ``broker-outage`` or ``service-outage``
    marker may instead be retried: a later request of the same thing, operation and jobId,
    with a new token, that was answered. A request whose device the drill powered off within
    its reply window needs no reply (the device lost its RAM, the request with it). Requests
    in the last ``reply_timeout_seconds`` of the history are not judged."""
    violations, notes = [], []
    checked = 0
    timeout = b.reply_timeout_seconds
    groups: dict[tuple[str, str, str], list[Request]] = defaultdict(list)
    untracked = cut_off = 0
    for q in tl.requests:
        if q.client_token is None:
            untracked += 1
        else:
            groups[(q.thing_name, q.f, q.client_token)].append(q)
    for same in groups.values():
        replies = [o for q in same for o in q.replies]
        if len(replies) > len(same):
            violations.append(_answer_violation(
                same[0], f"got {len(replies)} replies to {len(same)} request(s)",
                [o for q in same for o in (q.op, *q.replies)]))
        for q in same:
            if not replies and q.time > tl.end - timeout:
                continue  # its reply may still be on the way
            checked += 1
            # Invokes sharing a token are one request sent again (a QoS 1 redelivery).
            if replies or (_covered(tl, q, timeout) and _retried(tl, q)):
                continue
            if tl.power_cut(q.thing_name, q.time, q.time + timeout) is not None:
                cut_off += 1
                continue
            outage = " (an outage covers it but it was not retried)" \
                if _covered(tl, q, timeout) else ""
            violations.append(_answer_violation(q, "got no reply" + outage, [q.op]))
    if untracked:
        notes.append(f"{untracked} requests without clientToken could not be matched")
    if cut_off:
        notes.append(f"{cut_off} requests without a reply were cut off by their device's "
                     f"power-off")
    if tl.orphan_replies:
        notes.append(f"{len(tl.orphan_replies)} replies matched no request")
    violations.sort(key=lambda v: v.time or 0.0)
    return _result("answered", violations, checked, notes)


def _answer_violation(q: Request, what: str, ops: list[Op]) -> Violation:
    return Violation(
        invariant="answered", thing_name=q.thing_name, job_id=q.job_id, time=q.time,
        message=f"{q.thing_name} {q.f} (clientToken {q.client_token}) {what}", evidence=_ev(*ops))


def _covered(tl: Timeline, q: Request, timeout: float) -> bool:
    return any(start <= q.time + timeout and q.time <= end for start, end, _ in tl.outages)


def _retried(tl: Timeline, q: Request) -> bool:
    return any(r.time > q.time and r.f == q.f and r.job_id == q.job_id and r.replies
               and r.client_token != q.client_token
               for r in tl.requests_by_thing.get(q.thing_name, []))


#: Every invariant, in report order.
ALL: tuple[tuple[str, Invariant], ...] = (
    ("notice", notice), ("recover", recover), ("no-zombie", no_zombie),
    ("valid-end", valid_end), ("consistent", consistent), ("progress", progress),
    ("reuse", reuse), ("service", service), ("answered", answered),
)
