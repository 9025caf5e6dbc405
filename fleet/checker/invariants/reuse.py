"""A jobId deleted and created again: no device applies the old document to the new
execution (reuse)."""

from __future__ import annotations

from collections import defaultdict

from fleet.checker.cases import (
    StaleUpdate,
    label,
    reused_updates,
    stale_document_updates,
    work_digest,
)
from fleet.checker.invariants._common import (
    EXECUTING_KINDS,
    quote,
    result,
)
from fleet.checker.model import Budgets, InvariantResult, Violation
from fleet.checker.timeline import (
    DeviceEventRecord,
    Timeline,
    as_int,
)


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
    cases: list[str | None] = [q.thing_name for _, q, _ in reused_updates(tl)]
    stale: dict[tuple[str, int], list[StaleUpdate]] = defaultdict(list)
    for s in stale_document_updates(tl):
        stale[(s.created.job_id, s.created.incarnation)].append(s)
    settled = tl.end if tl.final_state is not None else \
        tl.end - b.recover_seconds - b.reply_timeout_seconds
    digests: dict[str, list[tuple[int, str | None]]] = defaultdict(list)
    created = tl.jobs_created()
    for c in created:
        digests[c.job_id].append((c.incarnation, c.digest))
    for c in created:
        if not c.reused:
            continue
        if c.digest is None:
            notes.append(f"{c.job_id}: CreateJob carried no document; digest not checked")
        old = {d for inc, d in digests[c.job_id] if inc < c.incarnation and d}
        flagged: set[str] = set()
        for ev in tl.events_by_job.get(c.job_id, []):
            thing = ev.thing_name
            if ev.kind not in EXECUTING_KINDS or ev.incarnation != c.incarnation or \
                    thing in flagged:
                continue
            cases.append(thing)
            problem = _reuse_problem(tl, c.digest, old, ev)
            if problem is None:
                continue
            flagged.add(thing)
            violations.append(Violation(
                invariant="reuse", thing_name=thing, job_id=c.job_id, time=ev.time,
                message=f"{thing} {ev.kind} on reused jobId {c.job_id}: {problem}",
                evidence=quote(c.call.completion, ev.op)))
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
            cases.append(thing)
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
                evidence=quote(earlier[-1].started.op if earlier else None, c.call.completion,
                             offer)))
    return result(tl, "reuse", violations, cases, notes)


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
        evidence=quote(c.call.completion, s.work.op, s.request.op, s.reply,
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
