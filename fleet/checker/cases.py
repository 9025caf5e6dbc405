"""Cases shared by the invariants and the metrics: which device executions were removed
while held (notice, detection latency) and how each device recovered (recover, recovery
time), plus what a valid NVM state is."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from fleet.checker.model import Budgets
from fleet.checker.timeline import (
    DeviceEventRecord,
    DeviceExecution,
    Removal,
    Timeline,
    as_int,
    compatible,
)

_RECOVERED_KINDS = ("recovered", "idle")


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
    start), or when the device was next reachable if an outage or its own disconnection
    covered that moment; a device never reachable again is not a case."""
    cases = []
    for e, r in removed_executions(tl, b):
        if _done_before(tl, e, r.time):
            continue
        since = tl.reachable_from(e.thing_name, max(r.time, e.started.time))
        if since is not None:
            cases.append(NoticeCase(e, r, since, since + b.notice_seconds))
    return cases


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
    window: tuple[DeviceEventRecord, ...]  # the device's events within the budget

    @property
    def time(self) -> float | None:
        return None if self.valid is None else self.valid.time - self.lost.time


def recovery_cases(tl: Timeline, b: Budgets) -> list[RecoveryCase]:
    """Every ``lost_access`` (the first per execution) and the first event within
    ``recover_seconds`` that shows the device recovered."""
    cases = []
    for e in tl.executions:
        lost = e.lost_access
        if lost is None:
            continue
        deadline = lost.time + b.recover_seconds
        window = tuple(ev for ev in tl.events_of(e.thing_name)
                       if lost.time <= ev.time <= deadline and ev is not lost)
        valid = next((ev for ev in window if _recovers(ev, e)), None)
        cases.append(RecoveryCase(e, lost, valid, window))
    return cases


def _recovers(ev: DeviceEventRecord, e: DeviceExecution) -> bool:
    """``recovered`` / ``idle``, or ``job_started`` of another execution, with valid NVM."""
    moved_on = ev.kind == "job_started" and (ev.job_id, ev.incarnation) != (e.job_id,
                                                                            e.incarnation)
    return (ev.kind in _RECOVERED_KINDS or moved_on) and \
        nvm_problem(ev.nvm, e.job_id, e.execution_number) is None
