"""Every device request got exactly one reply (answered)."""

from __future__ import annotations

from collections import defaultdict

from devicesim.wire.history import Op
from fleet.checker.invariants._common import (
    quote,
    result,
)
from fleet.checker.model import Budgets, InvariantResult, Violation
from fleet.checker.timeline import (
    Request,
    Timeline,
)


def answered(tl: Timeline, b: Budgets) -> InvariantResult:
    """answered: every device request carrying a clientToken gets a reply (ok or fail, same
    thing, operation and clientToken), and no more replies than it was sent (invokes sharing
    a token count as one request sent that many times). A request whose reply window
    (``reply_timeout_seconds``) meets a ``broker-outage`` or ``service-outage`` marker, or a
    network fault that cut or black-holed its device, may instead be retried: a later
    request of the same thing, operation and jobId,
    with a new token, that was answered; or abandoned: its device then recorded
    ``lost_access`` for that job (the reply, lost in the outage, would have told it nothing
    it needs); and it may get more replies than it was sent (a
    broker killed and restored from its last save delivers the request again). A request
    whose device the drill powered off within
    its reply window needs no reply (the device lost its RAM, the request with it). The whole
    history is judged, to its end: a drill waits for the replies to its last requests before
    it ends (its ``drain``), and a reply the history lacks is a reply missing.
    """
    violations, notes = [], []
    cases: list[str | None] = []
    timeout = b.reply_timeout_seconds
    groups: dict[tuple[str, str, str], list[Request]] = defaultdict(list)
    untracked = cut_off = redelivered = 0
    for q in tl.requests:
        if q.client_token is None:
            untracked += 1
        else:
            groups[(q.thing_name, q.f, q.client_token)].append(q)
    for same in groups.values():
        replies = [o for q in same for o in q.replies]
        if len(replies) > len(same) and _covered(tl, same[0], timeout):
            redelivered += 1  # a crashed broker restored the request and delivered it again
        elif len(replies) > len(same):
            violations.append(_answer_violation(
                same[0], f"got {len(replies)} replies to {len(same)} request(s)",
                [o for q in same for o in (q.op, *q.replies)]))
        for q in same:
            cases.append(q.thing_name)
            # Invokes sharing a token are one request sent again (a QoS 1 redelivery).
            if replies or (_covered(tl, q, timeout) and (_retried(tl, q) or
                                                         _abandoned(tl, q))):
                continue
            if tl.power_cut(q.thing_name, q.time, q.time + timeout) is not None:
                cut_off += 1
                continue
            outage = " (an outage covers it but it was not retried)" \
                if _covered(tl, q, timeout) else ""
            violations.append(_answer_violation(q, "got no reply" + outage, [q.op]))
    if untracked:
        notes.append(f"{untracked} requests without clientToken could not be matched")
    if redelivered:
        notes.append(f"{redelivered} requests got more replies than they were sent within a "
                     f"broker outage (a broker restored from its last save delivers them "
                     f"again: at least once)")
    if cut_off:
        notes.append(f"{cut_off} requests without a reply were cut off by their device's "
                     f"power-off")
    if tl.orphan_replies:
        notes.append(f"{len(tl.orphan_replies)} replies matched no request")
    violations.sort(key=lambda v: v.time or 0.0)
    return result(tl, "answered", violations, cases, notes)


def _answer_violation(q: Request, what: str, ops: list[Op]) -> Violation:
    return Violation(
        invariant="answered", thing_name=q.thing_name, job_id=q.job_id, time=q.time,
        message=f"{q.thing_name} {q.f} (clientToken {q.client_token}) {what}", evidence=quote(*ops))


def _covered(tl: Timeline, q: Request, timeout: float) -> bool:
    return tl.outage_between(q.thing_name, q.time, q.time + timeout)


def _abandoned(tl: Timeline, q: Request) -> bool:
    """The device then lost access to the job the request was about: it need not ask
    again (its reply, lost in an outage, would have told it nothing it needs)."""
    return q.job_id is not None and any(
        e.kind == "lost_access" and e.job_id == q.job_id and e.time > q.time
        for e in tl.events_of(q.thing_name))


def _retried(tl: Timeline, q: Request) -> bool:
    return any(r.time > q.time and r.f == q.f and r.job_id == q.job_id and r.replies
               and r.client_token != q.client_token
               for r in tl.requests_by_thing.get(q.thing_name, []))
