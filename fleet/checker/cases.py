"""Cases shared by the invariants and the metrics: which device executions were removed
while held (notice, detection latency) and how each device recovered (recover, recovery
time), which updates applied another document to the new execution of a reused jobId
(reuse, progress), plus what a valid NVM state is.

Clocks and power cuts: a device's clock for a budget (:func:`clock_start`) starts once the
device is reachable (:meth:`Timeline.reachable_from`: after outages, its own
disconnected/rebooted spells and the drill's power cuts). A power cut that begins before the
budget is spent and before the device did what the budget was for restarts the clock at the
device's power-on: the device lost its RAM, so the time before the cut does not count, nor
does the time it was off. A device never powered on again is not judged from then on.
"""

from __future__ import annotations

import bisect
from collections.abc import Mapping
from dataclasses import dataclass
from math import inf
from typing import Any

from devicesim.wire.history import Op, OpType
from devicesim.wire.topics import Operation
from fleet.checker.model import Budgets
from fleet.checker.timeline import (
    CreatedJob,
    DeviceEventRecord,
    DeviceExecution,
    ExecKey,
    Removal,
    Request,
    TerminalFact,
    Timeline,
    as_int,
    compatible,
    is_terminal,
)

_RECOVERED_KINDS = ("recovered", "idle")
#: Device events that say the device is working on an execution's document (its last word
#: before an update tells which document the update carries out).
_WORKING_KINDS = ("job_started", "step", "image_committed")


def label(job_id: str, number: int | None) -> str:
    """``job#n`` (or just the jobId when the execution number is unknown)."""
    return f"{job_id}#{number}" if number is not None else job_id


def nvm_problem(nvm: Mapping[str, Any] | None, job_id: str | None = None,
                number: int | None = None) -> str | None:
    """Why an NVM summary is not a valid state (None if it is). With ``job_id``, a journal
    naming that execution also makes it invalid."""
    if nvm is None:
        return "no NVM summary reported"
    slot = f"active slot {nvm.get('activeSlot')} ({nvm.get('activeVersion')})"
    if nvm.get("activeComplete") is not True:
        return f"{slot} is not complete (half-written image active)"
    if nvm.get("activeVerified") is not True:
        return f"{slot} is not verified"
    if job_id is not None and nvm.get("journalJobId") == job_id and \
            compatible(as_int(nvm.get("journalExecutionNumber")), number):
        return f"journal still names the lost execution {label(job_id, number)}"
    return None


@dataclass(frozen=True, slots=True)
class NoticeCase:
    """A device execution held at its removal; ``deadline`` for ``lost_access``."""

    execution: DeviceExecution
    removal: Removal
    since: float  # when the clock starts (removal, late start, or reconnection)
    deadline: float

    @property
    def latency(self) -> float | None:
        lost = self.execution.lost_access
        return None if lost is None else max(0.0, lost.time - self.since)


def clock_start(tl: Timeline, thing: str, time: float, budget: float,
                done: float | None = None) -> float | None:
    """When the device's clock for a ``budget`` that begins at ``time`` starts: when it is next
    reachable, restarted at its power-on (and the next reachable moment) whenever the drill
    cut its power before the budget was spent and before ``done`` (when the device did what
    the budget was for, if it did). None if it is never reachable again, or never powered on
    again after such a cut."""
    since = tl.reachable_from(thing, time)
    while since is not None:
        cut = tl.power_cut(thing, since, since + budget)
        if cut is None or (done is not None and done <= cut[0]):
            return since
        since = tl.reachable_from(thing, cut[1]) if cut[1] != inf else None
    return None


def removed_executions(tl: Timeline, b: Budgets) -> list[tuple[DeviceExecution, Removal]]:
    """Every device execution that the service removed (first removal of each)."""
    pairs = []
    for e in tl.executions:
        r = tl.removal_for(e, b.reply_timeout_seconds)
        if r is not None:
            pairs.append((e, r))
    return pairs


def notice_cases(tl: Timeline, b: Budgets) -> list[NoticeCase]:
    """Executions held at removal. The clock starts at the removal (or the device's late
    start; or, if the device was then waiting for a reply an outage lost, when its reply
    window ends: :func:`deaf_until`), or when the device was next reachable if an outage,
    its own disconnection or a power cut covered that moment, and starts again at its
    power-on if its power was cut before it noticed and before the deadline
    (:func:`clock_start`); a device never reachable again is not a case
    (:func:`unjudged_notice_cases`)."""
    return [NoticeCase(e, r, since, since + b.notice_seconds)
            for e, r, since in _held_at_removal(tl, b) if since is not None]


def unjudged_notice_cases(tl: Timeline, b: Budgets) -> list[tuple[DeviceExecution, Removal]]:
    """Executions held at removal whose device was never reachable again (powered off, or
    disconnected, for the rest of the history) before it noticed."""
    return [(e, r) for e, r, since in _held_at_removal(tl, b) if since is None]


def _held_at_removal(tl: Timeline, b: Budgets) -> list[tuple[DeviceExecution, Removal,
                                                              float | None]]:
    out = []
    for e, r in removed_executions(tl, b):
        if _done_before(tl, e, r.time):
            continue
        lost = e.lost_access.time if e.lost_access is not None else None
        start = deaf_until(tl, e.thing_name, max(r.time, e.started.time),
                           b.reply_timeout_seconds)
        out.append((e, r, clock_start(tl, e.thing_name, start, b.notice_seconds, lost)))
    return out


def deaf_until(tl: Timeline, thing: str, time: float, timeout: float) -> float:
    """``time``, or later if the device was then waiting for a reply that an outage lost
    (a request of its, unanswered, whose reply window meets a broker or service outage or
    a network fault that cut it off): a device may take its reply timeout to find out that
    an answer is not coming, so the end of that window."""
    until = time
    for q in tl.requests_by_thing.get(thing, []):
        if q.time <= time < q.time + timeout and not q.replies and \
                tl.outage_between(thing, q.time, q.time + timeout):
            until = max(until, q.time + timeout)
    return until


def _done_before(tl: Timeline, e: DeviceExecution, time: float) -> bool:
    """Did the device finish ``e`` (its ``job_finished``, or the service accepting its
    terminal update) before ``time``?"""
    if e.finished is not None and e.finished.time < time:
        return True
    return any(f.by_device and f.time < time for f in tl.terminal_of(
        (e.thing_name, e.job_id, e.incarnation), e.execution_number))


@dataclass(frozen=True, slots=True)
class RecoveryCase:
    execution: DeviceExecution
    lost: DeviceEventRecord
    valid: DeviceEventRecord | None  # the first event showing a valid state, in budget
    #: the first event in budget by which the device says it moved on (``recovered``,
    #: ``idle``, ``job_started`` of another execution) if its NVM is not a valid state
    bad_claim: DeviceEventRecord | None
    window: tuple[DeviceEventRecord, ...]  # the device's events within the budget
    since: float  # when the clock starts (lost_access, or a later power-on)
    deadline: float  # inf: powered off before it recovered and never powered on again

    @property
    def time(self) -> float | None:
        return None if self.valid is None else max(0.0, self.valid.time - self.since)


def recovery_cases(tl: Timeline, b: Budgets) -> list[RecoveryCase]:
    """Every ``lost_access`` (the first per execution) and the first event within
    ``recover_seconds`` that shows the device recovered -- unless the first event by which it
    says it moved on shows an invalid state (``bad_claim``: it runs on, or went idle on, a
    half-written image, whatever repairs it later). If the drill cut the device's power
    before it recovered and before the deadline, the clock starts again at its power-on (it
    recovers locally: outages do not matter); never powered on again, the deadline is
    ``inf``."""
    cases = []
    for e in tl.executions:
        lost = e.lost_access
        if lost is None or e.thing_name in tl.external:
            continue
        events = [ev for ev in tl.events_of(e.thing_name) if ev.time >= lost.time
                  and ev is not lost]
        first = next((ev for ev in events if _recovers(ev, e)), None)
        since = lost.time
        while True:
            cut = tl.power_cut(e.thing_name, since, since + b.recover_seconds)
            if cut is None or (first is not None and first.time <= cut[0]):
                break
            since = cut[1]
            if since == inf:
                break
        deadline = since + b.recover_seconds
        window = tuple(ev for ev in events if ev.time <= deadline)
        claim = next((ev for ev in window if _claims(ev, e)), None)
        bad = claim if claim is not None and not _recovers(claim, e) else None
        valid = None if bad is not None else next((ev for ev in window if _recovers(ev, e)),
                                                  None)
        cases.append(RecoveryCase(e, lost, valid, bad, window, since, deadline))
    return cases


@dataclass(frozen=True, slots=True)
class WireRecoveryCase:
    """An external device lost ``execution`` while other work was pending for it: from the
    wire, it recovered if it started work again (``started``) by ``deadline``."""

    execution: DeviceExecution
    lost: DeviceEventRecord
    work: frozenset[tuple[str, int]]  # (jobId, incarnation) pending for it
    since: float  # lost_access, or when the pending work was created, if later
    deadline: float
    started: DeviceEventRecord | None

    @property
    def time(self) -> float | None:
        return None if self.started is None else max(0.0, self.started.time - self.since)


def wire_recovery_cases(tl: Timeline, b: Budgets) -> tuple[list[WireRecoveryCase], list[str]]:
    """``recover`` for external devices, whose flash the wire does not show: every
    ``lost_access`` (inferred) while work was pending for the device (:func:`pending_work`,
    less what the controller withdrew or the service removed), and its first
    ``job_started`` after it. The clock starts at the lost access, or when the first pending
    work was created if that is later, once the device is reachable (:func:`clock_start`).
    Returns the cases and the external devices that lost an execution with nothing pending
    (nothing to show a recovery by)."""
    cases, idle = [], []
    for e in tl.executions:
        lost = e.lost_access
        if lost is None or e.thing_name not in tl.external:
            continue
        work = {(job_id, n) for job_id, n in pending_work(tl, e, lost, tl.terminal)
                if not tl.removals_of((e.thing_name, job_id, n), None)
                and not tl.job_withdrawn(job_id, n, e.thing_name)}
        if not work:
            idle.append(e.thing_name)
            continue
        created = [c.time for c in tl.creates_by_thing.get(e.thing_name, [])
                   if (c.job_id, c.incarnation) in work]
        available = max(lost.time, min(created, default=lost.time))
        since = clock_start(tl, e.thing_name, available, b.recover_seconds)
        deadline = inf if since is None else since + b.recover_seconds
        started = next((ev for ev in tl.events_of(e.thing_name) if ev.kind == "job_started"
                        and lost.time <= ev.time <= deadline and ev is not e.started), None)
        cases.append(WireRecoveryCase(e, lost, frozenset(work),
                                      available if since is None else since, deadline, started))
    return cases, idle


def _claims(ev: DeviceEventRecord, e: DeviceExecution) -> bool:
    """``recovered`` / ``idle``, or ``job_started`` of another execution: the device says it
    has moved on from ``e``."""
    moved_on = ev.kind == "job_started" and (ev.job_id, ev.incarnation) != (e.job_id,
                                                                            e.incarnation)
    return ev.kind in _RECOVERED_KINDS or moved_on


def _recovers(ev: DeviceEventRecord, e: DeviceExecution) -> bool:
    """A claim (:func:`_claims`) with valid NVM."""
    return _claims(ev, e) and nvm_problem(ev.nvm, e.job_id, e.execution_number) is None


@dataclass(frozen=True, slots=True)
class StaleUpdate:
    """The service accepted a device's ``UpdateJobExecution`` for the new incarnation of a
    reused jobId while the device's last word about that jobId said it was working on
    another document (``digest``): the device applied that document to the new execution."""

    created: CreatedJob  # the CreateJob that reused the jobId
    request: Request
    reply: Op  # the ok reply: the new execution took the update
    work: DeviceEventRecord  # the device's last word about the jobId before the request
    digest: str  # the document the device was working on

    @property
    def thing_name(self) -> str:
        return self.request.thing_name

    @property
    def status(self) -> str:
        return str(self.request.payload.get("status"))

    @property
    def terminal(self) -> bool:
        return is_terminal(self.request.payload.get("status"))


def reused_updates(tl: Timeline) -> list[tuple[CreatedJob, Request, Op]]:
    """Every ``UpdateJobExecution`` the service accepted (its first ok reply) in an
    incarnation created by reusing a jobId, with that incarnation's CreateJob. A reused jobId
    was deleted completely first, so only the new incarnation's execution can take it."""
    reused = {(c.job_id, c.incarnation): c for c in tl.creates if c.reused}
    out = []
    for q in tl.requests:
        if q.f != Operation.UPDATE or q.job_id is None:
            continue
        c = reused.get((q.job_id, q.incarnation))
        reply = next((r for r in q.replies if r.type is OpType.OK), None)
        if c is not None and reply is not None:
            out.append((c, q, reply))
    return out


def stale_document_updates(tl: Timeline) -> list[StaleUpdate]:
    """Accepted updates of a reused jobId's new incarnation (:func:`reused_updates`) that the
    device sent while its last word about the jobId (its latest ``job_started``/``step``/
    ``image_committed`` for it, recorded no later than the request) named a document other
    than the one the reusing CreateJob carried (:func:`work_digest`). A device still busy
    with the old document when the jobId is created again is no fault as long as the new
    execution rejects its updates (VersionMismatch, ResourceNotFound) and it notices; once
    the new execution takes them, the old document is being applied to it. Not judged when
    either digest is unknown."""
    out = []
    words: dict[tuple[str, str], tuple[list[float], list[DeviceEventRecord]]] = {}
    for c, q, reply in reused_updates(tl):
        if c.digest is None:
            continue
        assert q.job_id is not None
        key = (q.thing_name, q.job_id)
        if key not in words:
            said = [ev for ev in tl.events_by_job.get(q.job_id, []) if ev.thing_name ==
                    q.thing_name]
            words[key] = ([ev.time for ev in said], said)
        times, said = words[key]
        i = bisect.bisect_right(times, q.time)
        work = said[i - 1] if i else None
        if work is None or work.kind not in _WORKING_KINDS:
            continue
        digest = work_digest(tl, work)
        if digest is not None and digest != c.digest:
            out.append(StaleUpdate(c, q, reply, work, digest))
    return out


def work_digest(tl: Timeline, ev: DeviceEventRecord) -> str | None:
    """The digest of the document a device event is about: its own ``documentDigest``, else
    the journal's in its NVM (when the journal names the job), else that of the
    ``job_started`` of the device execution the event belongs to."""
    if ev.document_digest is not None:
        return ev.document_digest
    nvm = ev.nvm or {}
    journal = nvm.get("journalDocumentDigest")
    if nvm.get("journalJobId") == ev.job_id and isinstance(journal, str) and journal:
        return journal
    if ev.job_id is None:
        return None
    for e in reversed(tl.executions_of(ev.thing_name, ev.job_id)):
        if any(x is ev for x in e.events):
            return work_digest(tl, e.started) if e.started is not ev else None
    return None


def pending_work(tl: Timeline, e: DeviceExecution, lost: DeviceEventRecord,
                 terminal: Mapping[ExecKey, list[TerminalFact]]) -> set[tuple[str, int]]:
    """Work pending for the device when it lost ``e``: executions created for it before and
    neither started, withdrawn nor finished, or the job the last ``notify-next`` before (or
    the first after) named."""
    work: set[tuple[str, int]] = set()
    mine = (e.job_id, e.incarnation)
    for c in tl.creates_by_thing.get(e.thing_name, []):
        if c.time > lost.time or (c.job_id, c.incarnation) == mine:
            continue
        started = any(o.incarnation == c.incarnation and o.started.time <= lost.time
                      for o in tl.executions_of(e.thing_name, c.job_id))
        if not started and not withdrawn(tl, e.thing_name, (c.job_id, c.incarnation),
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


def withdrawn(tl: Timeline, thing: str, work: tuple[str, int],
              terminal: Mapping[ExecKey, list[TerminalFact]]) -> bool:
    """Was this pending work removed, withdrawn by the controller or finished (at any time
    in the history)?"""
    job_id, incarnation = work
    key = (thing, job_id, incarnation)
    return bool(tl.removals_of(key, None)) or tl.job_withdrawn(job_id, incarnation, thing) or \
        bool(terminal.get(key))
