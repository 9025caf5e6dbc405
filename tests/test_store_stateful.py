"""The jobs store against a tiny model, driven by Hypothesis (STYLE.md: stateful testing).

Rules are the control-plane and data-plane calls plus the chaos actions (advance the virtual
clock and tick, close and reopen the SQLite file). After every rule the real store must
equal the model: same jobs (status, reasonCode, targets still planned), same executions
with the same status, versionNumber, executionNumber and retryAttempt, same thing groups and
members, the same error raised exactly when the model predicts one, and the same pushes:
``notify`` iff a thing's pending set (of jobId and executionNumber: a retry is new) changed,
``notify-next`` iff its head changed and naming the model's head, and the same jobs events.

Jobs target things and two static thing groups (``g1`` a child of ``g0``), as SNAPSHOT or
CONTINUOUS jobs (docs/control-plane.md, "Things and thing groups"), some paced by a
rollout, some with an abort configuration, some with a retry configuration ("Rollouts,
automatic aborts, retries and schedules").

Deterministic: ``derandomize=True`` and a fixed seed for the store's own ``random.Random``.
A few job ids and things keep collisions (jobId reuse, shared things) frequent. Deletions
are swept in 0.01 s per execution and the clock moves by 0 s or whole seconds, so a sweep
is either not started or finished at each tick (the partial sweep is covered in
test_store.py); rollouts release one target per 1 s or 30 s, so a release is due at a tick
or not, never in between.
"""

from __future__ import annotations

import json
import random
import shutil
import tempfile
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from devicesim.wire import topics
from devicesim.wire.enums import JobExecutionStatus as X
from devicesim.wire.enums import JobStatus as J
from devicesim.wire.messages import JobExecutionsChangedEvent, NextJobExecutionChangedEvent
from fleet.service.errors import (
    BY_NAME,
    InvalidRequestException,
    InvalidStateTransitionException,
    JobsError,
    LimitExceededException,
    ResourceAlreadyExistsException,
    ResourceNotFoundException,
    TerminalStateException,
    VersionConflictException,
)
from fleet.service.settings import ServiceSettings, TerminalUpdateCode
from fleet.service.store import JobsStore, Publish

#: A pass takes ~15 s a machine; a failure is shrunk for up to Hypothesis' 5 minutes, which
#: the default 120 s timeout would cut short (no reproducer printed).
pytestmark = pytest.mark.timeout(600)

SEED = 1234
T0 = 1_700_000_000.0
THINGS = ("t0", "t1")
#: The static thing groups and their parents: g1 is below g0.
GROUPS: dict[str, str | None] = {"g0": None, "g1": "g0"}
JOB_IDS = ("j0", "j1", "j2", "j3", "j4", "j5")
DOC = json.dumps({"operation": "noop"})
SERVICE_ONLY = (X.CANCELED, X.REMOVED, X.TIMED_OUT)
#: abortConfig failureType -> the execution statuses it counts (docs/control-plane.md)
FAILURES = {"FAILED": (X.FAILED,), "ALL": (X.FAILED, X.REJECTED, X.TIMED_OUT)}

Error = type[JobsError] | None


def arn(target: str) -> str:
    """The ARN of a thing or (``g...``) of a thing group."""
    kind = "thinggroup" if target in GROUPS else "thing"
    return f"arn:aws:iot:us-east-1:123456789012:{kind}/{target}"


@dataclass(frozen=True)
class Abort:
    """One abortConfig criterion (action CANCEL)."""

    failure_type: str
    threshold_percentage: int
    min_executed_things: int

    def config(self) -> dict[str, Any]:
        return {"criteriaList": [{
            "failureType": self.failure_type, "action": "CANCEL",
            "thresholdPercentage": self.threshold_percentage,
            "minNumberOfExecutedThings": self.min_executed_things}]}


@dataclass(frozen=True)
class Retry:
    """A jobExecutionsRetryConfig: failure type (FAILED, TIMED_OUT or ALL) -> retries."""

    criteria: tuple[tuple[str, int], ...]

    def config(self) -> dict[str, Any]:
        return {"criteriaList": [{"failureType": kind, "numberOfRetries": n}
                                 for kind, n in self.criteria]}


@dataclass(frozen=True)
class JobSpec:
    """What CreateJob is asked for."""

    on: tuple[str, ...]  # things and groups (``targets`` is reserved by Hypothesis' rules)
    timeout: int | None = None
    continuous: bool = False
    #: jobExecutionsRolloutConfig.maximumPerMinute: 60 (one a second) or 2 (one in 30 s)
    rate: int | None = None
    abort: Abort | None = None
    retry: Retry | None = None

    def create(self, store: JobsStore, job_id: str) -> Any:
        return store.create_job(
            job_id, targets=[arn(t) for t in self.on], document=DOC,
            in_progress_timeout_minutes=self.timeout,
            target_selection="CONTINUOUS" if self.continuous else "SNAPSHOT",
            rollout_config=None if self.rate is None else {"maximumPerMinute": self.rate},
            abort_config=None if self.abort is None else self.abort.config(),
            retry_config=None if self.retry is None else self.retry.config())


# -- the model --------------------------------------------------------------------------------


@dataclass
class MExecution:
    job_id: str
    thing: str
    status: X
    version: int
    seq: int
    number: int = 1
    retry_attempt: int = 0
    in_progress_deadline: float | None = None
    step_deadline: float | None = None

    @property
    def deadline(self) -> float | None:
        due = [d for d in (self.step_deadline, self.in_progress_deadline) if d is not None]
        return min(due) if due else None


@dataclass
class MRollout:
    """A paced job's targets not released yet, and when the next release is due."""

    rate: int
    next_at: float | None
    planned: dict[str, int] = field(default_factory=dict)  # thing -> seq


@dataclass
class MJob:
    status: J
    timeout_minutes: int | None
    seq: int
    continuous: bool = False
    targets: tuple[str, ...] = ()
    rollout: MRollout | None = None  # dropped by a cancel or delete
    abort: Abort | None = None
    #: failure type -> numberOfRetries (empty: no retry configuration)
    retry: dict[str, int] = field(default_factory=dict)
    #: thing -> its retries so far, by the failure type each was counted under
    retried: dict[str, Counter[str]] = field(default_factory=dict)
    reason_code: str | None = None
    deletion_started: float | None = None
    spec: JobSpec | None = None  # as created

    @property
    def planned(self) -> int:
        return 0 if self.rollout is None else len(self.rollout.planned)


@dataclass
class Model:
    """What AWS IoT Jobs should hold, in a few dicts; every rule of spec §2-§6, §13, and of
    docs/control-plane.md on thing groups, rollouts, aborts and retries."""

    settings: ServiceSettings
    now: float = T0
    jobs: dict[str, MJob] = field(default_factory=dict)
    executions: dict[tuple[str, str], MExecution] = field(default_factory=dict)
    #: group -> parent, for the groups that exist
    groups: dict[str, str | None] = field(default_factory=dict)
    members: dict[str, set[str]] = field(default_factory=dict)
    #: jobs with an abort configuration to check at the next tick
    abort_checks: set[str] = field(default_factory=set)
    events: list[str] = field(default_factory=list)
    #: things whose pending list changed at some point during the current operation
    touched: set[str] = field(default_factory=set)
    seq: int = 0

    def pending(self, thing: str) -> list[MExecution]:
        mine = [e for e in self.executions.values()
                if e.thing == thing and e.status in (X.IN_PROGRESS, X.QUEUED)]
        return sorted(mine, key=lambda e: (e.status is X.QUEUED, e.seq))

    def of_job(self, job_id: str) -> list[MExecution]:
        return sorted((e for e in self.executions.values() if e.job_id == job_id),
                      key=lambda e: e.seq)

    def deleting(self) -> int:
        return sum(job.status is J.DELETION_IN_PROGRESS for job in self.jobs.values())

    def _next_seq(self) -> int:
        self.seq += 1
        return self.seq

    # -- groups: who a target reaches

    def _below(self, group: str) -> list[str]:
        """``group`` and every group under it."""
        return [g for g in self.groups if g == group or group in self._ancestors(g)]

    def _ancestors(self, group: str) -> list[str]:
        chain, parent = [], self.groups.get(group)
        while parent is not None:
            chain.append(parent)
            parent = self.groups.get(parent)
        return chain

    def _containing(self, thing: str) -> set[str]:
        direct = {g for g, things in self.members.items() if thing in things}
        return direct | {a for g in direct for a in self._ancestors(g)}

    def _reaches(self, on: tuple[str, ...], thing: str) -> bool:
        containing = self._containing(thing)
        return any(t == thing or t in containing for t in on)

    def _reached(self, on: tuple[str, ...]) -> list[str]:
        """The things ``on`` reaches now, in the order they get their executions."""
        things: dict[str, None] = {}
        for target in on:
            if target in GROUPS:
                things.update(dict.fromkeys(sorted(
                    {t for g in self._below(target) for t in self.members[g]})))
            else:
                things[target] = None
        return list(things)

    def _missing_group(self, on: tuple[str, ...]) -> bool:
        return any(t in GROUPS and t not in self.groups for t in on)

    # -- changes

    def _job_event(self, job_id: str, operation: str) -> None:
        self.events.append(topics.job_event(job_id, operation))

    def _execution_event(self, e: MExecution, operation: str) -> None:
        self.events.append(topics.execution_event(e.job_id, operation))

    def _maybe_complete(self, job_id: str) -> None:
        """A SNAPSHOT job completes once nothing is pending and nothing planned; a
        CONTINUOUS job never completes by itself."""
        job = self.jobs[job_id]
        if job.status is J.IN_PROGRESS and not job.continuous and not job.planned and not any(
                e.status in (X.QUEUED, X.IN_PROGRESS) for e in self.of_job(job_id)):
            job.status = J.COMPLETED
            self._job_event(job_id, "completed")

    def _change(self, e: MExecution, status: X, step_timeout: int | None = None) -> None:
        if status is X.IN_PROGRESS and e.status is X.QUEUED:
            minutes = self.jobs[e.job_id].timeout_minutes
            e.in_progress_deadline = None if minutes is None else self.now + minutes * 60
        if step_timeout is not None:
            e.step_deadline = None if step_timeout == -1 else self.now + step_timeout * 60
            if e.step_deadline is not None and e.in_progress_deadline is not None:
                e.step_deadline = min(e.step_deadline, e.in_progress_deadline)
        if status.is_terminal:
            e.step_deadline = e.in_progress_deadline = None
        old, e.status, e.version = e.status, status, e.version + 1
        if status is not old:
            self.touched.add(e.thing)
        if status.is_terminal and status is not old:
            self._execution_event(e, status.value.lower())
            if status in (X.FAILED, X.TIMED_OUT):
                self._maybe_retry(e)
            self._maybe_complete(e.job_id)
            if self.jobs[e.job_id].abort is not None:
                self.abort_checks.add(e.job_id)

    def _maybe_retry(self, e: MExecution) -> None:
        """A FAILED or TIMED_OUT execution of an IN_PROGRESS job (a CONTINUOUS one still
        reaching the thing) is queued again while the thing has retries left: those of the
        criterion of its failure type, else of ALL (which counts the retries of both)."""
        job = self.jobs[e.job_id]
        if not job.retry or job.status is not J.IN_PROGRESS:
            return
        if job.continuous and not self._reaches(job.targets, e.thing):
            return
        kind = e.status.value
        if kind not in job.retry:
            if "ALL" not in job.retry:
                return
            kind = "ALL"
        done = job.retried.setdefault(e.thing, Counter())
        if (done.total() if kind == "ALL" else done[kind]) >= job.retry[kind]:
            return
        done[kind] += 1
        self.touched.add(e.thing)
        self.executions[(e.job_id, e.thing)] = MExecution(
            e.job_id, e.thing, X.QUEUED, 1, self._next_seq(), e.number + 1,
            retry_attempt=e.retry_attempt + 1)

    def _remove(self, e: MExecution, event: bool = True) -> None:
        del self.executions[(e.job_id, e.thing)]
        if not e.status.is_terminal:
            self.touched.add(e.thing)
        if event:
            self._execution_event(e, "deleted")

    def _queue(self, job_id: str, thing: str, number: int) -> None:
        """A QUEUED execution (replacing a REMOVED one)."""
        self.touched.add(thing)
        self.executions[(job_id, thing)] = MExecution(
            job_id, thing, X.QUEUED, 1, self._next_seq(), number)

    def _plan_or_queue(self, job_id: str, thing: str, number: int) -> None:
        """Queue now, or plan it for the rollout to release (once)."""
        rollout = self.jobs[job_id].rollout
        if rollout is None:
            self._queue(job_id, thing, number)
            return
        rollout.planned.setdefault(thing, self._next_seq())
        if rollout.next_at is None:
            rollout.next_at = self.now

    def _target_again(self, job_id: str, thing: str) -> None:
        """A continuous job reaches ``thing``: a job runs once per thing, unless its
        execution was REMOVED (then again, with the next executionNumber)."""
        e = self.executions.get((job_id, thing))
        if e is None or e.status is X.REMOVED:
            self._plan_or_queue(job_id, thing, 1 if e is None else e.number + 1)

    def _reconcile(self, thing: str) -> None:
        """``thing``'s groups changed: each IN_PROGRESS CONTINUOUS job reaching it targets
        it (again); one that no longer does drops it from its plan and removes its QUEUED
        execution (REMOVED; one IN_PROGRESS runs on)."""
        for job_id, job in sorted(self.jobs.items(), key=lambda item: item[1].seq):
            if not job.continuous or job.status is not J.IN_PROGRESS:
                continue
            if self._reaches(job.targets, thing):
                self._target_again(job_id, thing)
                continue
            if job.rollout is not None:  # not targeted any more: never released
                job.rollout.planned.pop(thing, None)
            e = self.executions.get((job_id, thing))
            if e is not None and e.status is X.QUEUED:
                self._change(e, X.REMOVED)

    def _cancel(self, job_id: str, force: bool, reason_code: str | None) -> None:
        job = self.jobs[job_id]
        job.status, job.reason_code, job.rollout = J.CANCELED, reason_code, None
        self._job_event(job_id, "cancellation_in_progress")
        for e in self.of_job(job_id):
            if e.status is X.QUEUED or (e.status is X.IN_PROGRESS and force):
                self._change(e, X.CANCELED)
        self._job_event(job_id, "canceled")

    def _abort_met(self, job_id: str) -> bool:
        """At least min things have an execution, and those of the failure type are at
        least threshold % of them."""
        criterion = self.jobs[job_id].abort
        assert criterion is not None
        statuses = [e.status for e in self.of_job(job_id)]
        failures = sum(s in FAILURES[criterion.failure_type] for s in statuses)
        return (len(statuses) >= criterion.min_executed_things
                and failures * 100 >= criterion.threshold_percentage * len(statuses))

    # -- operations: each returns the error AWS (per the spec and settings) gives, or None

    def create_job(self, job_id: str, spec: JobSpec) -> Error:
        if self._missing_group(spec.on):
            return ResourceNotFoundException
        if job_id in self.jobs:
            return ResourceAlreadyExistsException
        self.jobs[job_id] = MJob(
            J.IN_PROGRESS, spec.timeout, self._next_seq(), continuous=spec.continuous,
            targets=spec.on, abort=spec.abort,
            retry={} if spec.retry is None else dict(spec.retry.criteria), spec=spec,
            rollout=None if spec.rate is None else MRollout(spec.rate, next_at=self.now))
        things = self._reached(spec.on)
        for thing in things:
            self._plan_or_queue(job_id, thing, 1)
        if not things:  # a snapshot of empty groups
            self._maybe_complete(job_id)
        return None

    def associate_targets(self, job_id: str, on: tuple[str, ...]) -> Error:
        job = self.jobs.get(job_id)
        if job is None:
            return ResourceNotFoundException
        if not job.continuous or job.status is not J.IN_PROGRESS:
            return InvalidRequestException
        if self._missing_group(on):
            return ResourceNotFoundException
        job.targets = (*job.targets, *(t for t in dict.fromkeys(on) if t not in job.targets))
        for thing in self._reached(on):
            self._target_again(job_id, thing)
        return None

    def create_group(self, group: str) -> Error:
        parent = GROUPS[group]
        if group in self.groups:
            return None  # the same group again: returned as it is
        if parent is not None and parent not in self.groups:
            return ResourceNotFoundException
        self.groups[group], self.members[group] = parent, set()
        return None

    def add_to_group(self, group: str, thing: str) -> Error:
        if group not in self.groups:
            return ResourceNotFoundException
        if thing not in self.members[group]:
            self.members[group].add(thing)
            self._reconcile(thing)
        return None

    def remove_from_group(self, group: str, thing: str) -> Error:
        if group not in self.groups:
            return ResourceNotFoundException
        if thing in self.members[group]:
            self.members[group].discard(thing)
            self._reconcile(thing)
        return None

    def delete_group(self, group: str) -> Error:
        if group not in self.groups:
            return None
        if group in self.groups.values():
            return InvalidRequestException  # it has a child group
        del self.groups[group]
        for thing in sorted(self.members.pop(group)):
            self._reconcile(thing)
        return None

    def start_next(self, thing: str, step_timeout: int | None) -> MExecution | None:
        pending = self.pending(thing)
        if not pending:
            return None
        head = pending[0]
        if head.status is X.QUEUED:
            self._change(head, X.IN_PROGRESS, step_timeout)
        return head

    def update(self, thing: str, job_id: str, status: X, expected: int | None,
               step_timeout: int | None) -> Error:
        if job_id == topics.NEXT:
            return InvalidRequestException
        e = self.executions.get((job_id, thing))
        if e is None:
            return ResourceNotFoundException
        if status in SERVICE_ONLY:
            return InvalidRequestException
        if e.status.is_terminal:
            if self.settings.terminal_update_code is TerminalUpdateCode.TERMINAL_STATE_REACHED:
                return TerminalStateException
            return InvalidStateTransitionException
        if status is X.QUEUED:
            return InvalidStateTransitionException
        if expected is not None and expected != e.version:
            return VersionConflictException
        self._change(e, status, step_timeout)
        return None

    def cancel_job(self, job_id: str, force: bool) -> Error:
        job = self.jobs.get(job_id)
        if job is None:
            return ResourceNotFoundException
        if job.status is not J.IN_PROGRESS:  # deleting, or already terminal
            return BY_NAME[self.settings.cancel_in_progress_error]
        self._cancel(job_id, force, reason_code=None)
        return None

    def cancel_job_execution(self, job_id: str, thing: str, force: bool,
                             expected: int | None) -> Error:
        e = self.executions.get((job_id, thing))
        if e is None:
            return ResourceNotFoundException
        if expected is not None and expected != e.version:
            return VersionConflictException
        if not (e.status is X.QUEUED or (e.status is X.IN_PROGRESS and force)):
            return InvalidStateTransitionException
        self._change(e, X.CANCELED)
        return None

    def delete_job_execution(self, job_id: str, thing: str, number: int, force: bool) -> Error:
        e = self.executions.get((job_id, thing))
        if e is None or number != e.number:
            return ResourceNotFoundException
        if not e.status.is_terminal and not force:
            return InvalidStateTransitionException
        self._remove(e)
        self._maybe_complete(job_id)
        return None

    def delete_job(self, job_id: str, force: bool) -> Error:
        job = self.jobs.get(job_id)
        if job is None:
            return ResourceNotFoundException
        if job.status is J.DELETION_IN_PROGRESS:
            return BY_NAME[self.settings.delete_in_progress_error]
        if not job.status.is_terminal and not force:
            return InvalidStateTransitionException
        if self.deleting() >= self.settings.max_concurrent_deletions:
            return LimitExceededException
        job.status, job.rollout = J.DELETION_IN_PROGRESS, None
        job.deletion_started = self.now
        self._job_event(job_id, "deletion_in_progress")
        return None

    def reopened(self) -> None:
        """A restarted store checks every IN_PROGRESS job with an abort configuration at
        its first tick (store.py: it does not know which had executions finish)."""
        self.abort_checks = {job_id for job_id, job in self.jobs.items()
                             if job.status is J.IN_PROGRESS and job.abort is not None}

    def tick(self) -> None:
        for job_id, job in self.jobs.items():
            # the clock moves by 0 s or >= 1 s: a sweep is either not started or finished
            if job.deletion_started is not None and self.now - job.deletion_started >= 0.5:
                for e in self.of_job(job_id):
                    self._remove(e, event=self.settings.execution_deleted_events)
        for job_id in [j for j, job in self.jobs.items()
                       if job.status is J.DELETION_IN_PROGRESS and not self.of_job(j)]:
            del self.jobs[job_id]
            self._job_event(job_id, "deleted")
        self._release()
        for job_id in sorted(self.abort_checks):
            self.abort_checks.discard(job_id)
            checked = self.jobs.get(job_id)
            if checked is not None and checked.status is J.IN_PROGRESS and self._abort_met(
                    job_id):
                self._cancel(job_id, self.settings.abort_force,
                             self.settings.abort_reason_code)
        for e in sorted(self.executions.values(), key=lambda e: e.seq):
            deadline = e.deadline
            if e.status is X.IN_PROGRESS and deadline is not None and deadline <= self.now:
                self._change(e, X.TIMED_OUT)

    def _release(self) -> None:
        """Each due rollout releases its first planned target (a QUEUED execution; one
        REMOVED before is queued with the next executionNumber); the next is due 60 / rate
        s after this tick. One with nothing planned idles until a thing is planned."""
        due = sorted((r.next_at, job.seq, job_id) for job_id, job in self.jobs.items()
                     if (r := job.rollout) is not None and r.next_at is not None
                     and r.next_at <= self.now)
        for _, _, job_id in due:  # (ties in order of creation)
            rollout = self.jobs[job_id].rollout
            assert rollout is not None
            if not rollout.planned:
                rollout.next_at = None
                continue
            thing = min(rollout.planned, key=rollout.planned.__getitem__)
            del rollout.planned[thing]
            old = self.executions.get((job_id, thing))
            self._queue(job_id, thing, 1 if old is None else old.number + 1)
            rollout.next_at = self.now + 60 / rollout.rate


# -- reading pushes back ----------------------------------------------------------------------


def pushes_to(effects: list[Publish], thing: str) -> tuple[list[dict[str, list[str]]],
                                                           list[str | None]]:
    """(notify payloads as {status: [jobId]}, notify-next heads) pushed to ``thing``."""
    notifies: list[dict[str, list[str]]] = []
    heads: list[str | None] = []
    for effect in effects:
        if effect.topic == topics.notify(thing):
            changed = JobExecutionsChangedEvent.from_json(effect.payload)
            notifies.append({s: [x.job_id or "" for x in summaries]
                             for s, summaries in changed.jobs.items()})
        elif effect.topic == topics.notify_next(thing):
            nxt = NextJobExecutionChangedEvent.from_json(effect.payload)
            heads.append(None if nxt.execution is None else nxt.execution.job_id)
    return notifies, heads


def listed(pending: list[MExecution], limit: int) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for e in pending[:limit]:
        out.setdefault(e.status.value, []).append(e.job_id)
    return out


# -- the machine ------------------------------------------------------------------------------

job_ids = st.sampled_from(JOB_IDS)
things = st.sampled_from(THINGS)
thing_groups = st.sampled_from(sorted(GROUPS))
#: Things and groups, as job targets.
on = st.lists(st.sampled_from((*THINGS, *GROUPS)), min_size=1, max_size=2).map(tuple)
#: SNAPSHOT or CONTINUOUS; half of them paced, one target released a second or one in 30 s;
#: most with an abort criterion: FAILED >= 50 % of at least 1 thing, or all failures >= 40 %
#: of at least 2; most with a retry configuration: 1 retry of FAILED, 2 of ALL, or 2 of
#: FAILED and 1 of ALL (which counts the FAILED ones: a TIMED_OUT after a FAILED retry is
#: not retried).
job_specs = st.builds(
    JobSpec, on=on, timeout=st.sampled_from([None, None, 1, 2]),
    continuous=st.booleans(),
    rate=st.sampled_from([None, None, 60, 2]),
    abort=st.sampled_from([None, Abort("FAILED", 50, 1), Abort("ALL", 40, 2)]),
    retry=st.sampled_from([None, Retry((("FAILED", 1),)), Retry((("ALL", 2),)),
                           Retry((("FAILED", 2), ("ALL", 1)))]))
deltas = st.sampled_from([None, None, 0, 0, -1, 1])
#: Mostly what devices send, sometimes what they must not.
device_statuses = st.sampled_from([
    X.IN_PROGRESS, X.IN_PROGRESS, X.IN_PROGRESS, X.SUCCEEDED, X.SUCCEEDED, X.FAILED,
    X.REJECTED, X.QUEUED, X.CANCELED, X.REMOVED, X.TIMED_OUT])
#: Most calls aim at something that exists (else ResourceNotFound would dominate): see
#: ``_execution_key`` and ``_job_id``.
aims = st.integers(0, 9)
step_timeouts = st.sampled_from([None, None, -1, 1, 3])


class JobsStoreMachine(RuleBasedStateMachine):
    service_settings = ServiceSettings(max_concurrent_deletions=2)

    def __init__(self) -> None:
        super().__init__()
        self.dir = Path(tempfile.mkdtemp(prefix="jobs-stateful-"))
        self.path = self.dir / "jobs.db"
        self.model = Model(self.service_settings)
        self.store = self._open()
        #: (job_id, thing, seq) -> last (status, version) the store showed
        self.observed: dict[tuple[str, str, int], tuple[X, int]] = {}
        #: each thing's pending (jobId, executionNumber)s (model) before the current operation
        self.before: dict[str, list[tuple[str, int]]] = {}

    def _open(self) -> JobsStore:
        return JobsStore(self.path, self.service_settings, now=lambda: self.model.now,
                         rng=random.Random(SEED))

    def teardown(self) -> None:
        self.store.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    # -- running one operation on both sides ------------------------------------------------

    def _run(self, expected: Error, call: Callable[[], Any], *, exact: bool = True) -> Any:
        """Call the store; it must fail exactly when (and as) the model said; compare pushes.

        The model operation has already run; ``self.before`` holds each thing's pending
        list from before it.
        """
        raised: JobsError | None = None
        try:
            result = call()
        except JobsError as e:
            raised = result = e
        if expected is None:
            assert raised is None, f"store raised {raised!r}, model expected success"
        else:
            assert raised is not None, f"store succeeded, model expected {expected.__name__}"
            assert type(raised) is expected, f"store raised {raised!r}, model: {expected}"
        self._check_pushes(self.store.drain(), exact=exact)
        return result

    def _begin(self) -> None:
        self.before = {t: [(e.job_id, e.number) for e in self.model.pending(t)]
                       for t in THINGS}
        self.model.events = []
        self.model.touched = set()

    def _check_pushes(self, effects: list[Publish], *, exact: bool) -> None:
        """``exact``: one change (one transaction); else a tick, a transaction per
        release, sweep, abort or timeout: a thing's pending list may change and change
        back (released, then canceled by an abort), each change pushed."""
        limit = self.service_settings.max_pending_listed
        for thing in THINGS:
            before = self.before[thing]
            pending = self.model.pending(thing)
            after = [(e.job_id, e.number) for e in pending]  # (a retry: the next number)
            notifies, heads = pushes_to(effects, thing)
            back_again = not exact and thing in self.model.touched
            if set(after) != set(before):
                assert notifies, f"{thing}: pending set changed {before} -> {after}, no notify"
                assert notifies[-1] == listed(pending, limit), thing
                if exact:
                    assert len(notifies) == 1, thing
            elif back_again and notifies:
                assert notifies[-1] == listed(pending, limit), thing
            else:
                assert notifies == [], f"{thing}: notify without a pending-set change"
            if after[:1] != before[:1]:
                assert heads, f"{thing}: head changed {before[:1]} -> {after[:1]}, no notify-next"
                assert heads[-1] == (after[0][0] if after else None), (thing, heads, after)
                if exact:
                    assert len(heads) == 1, thing
            elif back_again and heads:
                assert heads[-1] == (after[0][0] if after else None), (thing, heads, after)
            else:
                assert heads == [], f"{thing}: notify-next {heads} but the head stayed {after[:1]}"
        actual_events = [e.topic for e in effects if e.topic.startswith("$aws/events/")]
        assert Counter(actual_events) == Counter(self.model.events)

    def _execution_key(self, job_id: str, thing: str, data: st.DataObject) -> tuple[str, str]:
        """Mostly an existing execution; sometimes the drawn (maybe missing) one."""
        keys = sorted(self.model.executions)
        if keys and data.draw(aims, label="aim") < 8:
            return data.draw(st.sampled_from(keys), label="execution")
        return job_id, thing

    def _job_id(self, job_id: str, data: st.DataObject) -> str:
        ids = sorted(self.model.jobs)
        if ids and data.draw(aims, label="aim") < 8:
            return data.draw(st.sampled_from(ids), label="job")
        return job_id

    def _create_job(self, job_id: str, spec: JobSpec) -> None:
        self._begin()
        expected = self.model.create_job(job_id, spec)
        self._run(expected, lambda: spec.create(self.store, job_id))

    # -- rules ------------------------------------------------------------------------------

    @initialize(joined=st.lists(st.tuples(thing_groups, things), min_size=1, max_size=4),
                first=st.lists(job_specs, min_size=1, max_size=3))
    def first_groups_and_jobs(self, joined: list[tuple[str, str]],
                              first: list[JobSpec]) -> None:
        """Start with the two groups, a few members, and a few jobs on shared things and
        groups (heads and queues to reorder)."""
        for group in GROUPS:
            self._begin()
            expected = self.model.create_group(group)
            self._run(expected, partial(self.store.groups.create, group, parent=GROUPS[group]))
        for group, thing in joined:
            self._begin()
            expected = self.model.add_to_group(group, thing)
            self._run(expected, partial(self.store.add_thing_to_group, group, thing))
        for job_id, spec in zip(JOB_IDS, first, strict=False):
            self._create_job(job_id, spec)

    @rule(job_id=job_ids, spec=job_specs, data=st.data())
    def create_job(self, job_id: str, spec: JobSpec, data: st.DataObject) -> None:
        free = [j for j in JOB_IDS if j not in self.model.jobs]
        if free and data.draw(aims, label="aim") < 8:  # mostly a new job, sometimes one in use
            job_id = data.draw(st.sampled_from(free), label="free job_id")
        self._create_job(job_id, spec)

    @rule(job_id=job_ids, more=on, data=st.data())
    def associate_targets(self, job_id: str, more: tuple[str, ...],
                          data: st.DataObject) -> None:
        continuous = sorted(j for j, job in self.model.jobs.items() if job.continuous)
        if continuous and data.draw(aims, label="aim") < 8:
            job_id = data.draw(st.sampled_from(continuous), label="continuous job")
        self._begin()
        expected = self.model.associate_targets(job_id, more)
        self._run(expected, lambda: self.store.associate_targets(
            job_id, [arn(t) for t in more]))

    @rule(group=thing_groups, thing=things)
    def add_thing_to_group(self, group: str, thing: str) -> None:
        self._begin()
        expected = self.model.add_to_group(group, thing)
        self._run(expected, lambda: self.store.add_thing_to_group(group, thing))

    @rule(group=thing_groups, thing=things, data=st.data())
    def remove_thing_from_group(self, group: str, thing: str, data: st.DataObject) -> None:
        joined = sorted((g, t) for g, members in self.model.members.items() for t in members)
        if joined and data.draw(aims, label="aim") < 8:
            group, thing = data.draw(st.sampled_from(joined), label="member")
        self._begin()
        expected = self.model.remove_from_group(group, thing)
        self._run(expected, lambda: self.store.remove_thing_from_group(group, thing))

    @rule(group=thing_groups)
    def delete_thing_group(self, group: str) -> None:
        self._begin()
        expected = self.model.delete_group(group)
        self._run(expected, lambda: self.store.delete_thing_group(group))

    @rule(group=thing_groups)
    def create_thing_group(self, group: str) -> None:
        """(Again: the same group is returned as it is; a deleted one comes back empty.)"""
        self._begin()
        expected = self.model.create_group(group)
        self._run(expected, lambda: self.store.groups.create(group, parent=GROUPS[group]))

    @rule(thing=things, step_timeout=step_timeouts,
          details=st.sampled_from([None, {"step": "download"}]))
    def start_next(self, thing: str, step_timeout: int | None,
                   details: dict[str, str] | None) -> None:
        self._begin()
        head = self.model.start_next(thing, step_timeout)
        got = self._run(None, lambda: self.store.start_next(
            thing, status_details=details, step_timeout=step_timeout))
        if head is None:
            assert got is None
        else:
            assert (got.job_id, got.status, got.version_number) == (
                head.job_id, head.status, head.version)

    @rule(thing=things, job_id=st.sampled_from((*JOB_IDS, topics.NEXT)),
          status=device_statuses, delta=deltas, step_timeout=step_timeouts,
          details=st.sampled_from([None, {"progress": "50"}]), data=st.data())
    def update(self, thing: str, job_id: str, status: X, delta: int | None,
               step_timeout: int | None, details: dict[str, str] | None,
               data: st.DataObject) -> None:
        if job_id != topics.NEXT:
            job_id, thing = self._execution_key(job_id, thing, data)
        self._begin()
        e = self.model.executions.get((job_id, thing))
        expected_version = None if delta is None else (e.version if e else 1) + delta
        before = None if e is None else (e.status, e.version)
        expected = self.model.update(thing, job_id, status, expected_version, step_timeout)
        got = self._run(expected, lambda: self.store.update(
            thing, job_id, status=status, status_details=details,
            expected_version=expected_version, step_timeout=step_timeout))
        if expected is None:
            assert (got.status, got.version_number) == (e.status, e.version)  # type: ignore[union-attr]
        elif expected in (InvalidStateTransitionException, VersionConflictException):
            # the rejection carries the current state (spec §5.3)
            assert before is not None
            assert got.execution_state is not None
            assert (got.execution_state.status, got.execution_state.version_number) == before
        else:
            assert got.execution_state is None

    @rule(data=st.data(), status=st.sampled_from([X.IN_PROGRESS, X.IN_PROGRESS, X.SUCCEEDED,
                                                  X.FAILED, X.REJECTED]),
          current_version=st.booleans(), step_timeout=step_timeouts)
    def device_reports(self, data: st.DataObject, status: X, current_version: bool,
                       step_timeout: int | None) -> None:
        """A well-behaved device reporting on one of its pending executions."""
        pending = sorted(key for key, e in self.model.executions.items()
                         if e.status in (X.QUEUED, X.IN_PROGRESS))
        if not pending:
            return
        job_id, thing = data.draw(st.sampled_from(pending), label="pending execution")
        version = self.model.executions[(job_id, thing)].version if current_version else None
        self._begin()
        expected = self.model.update(thing, job_id, status, version, step_timeout)
        self._run(expected, lambda: self.store.update(
            thing, job_id, status=status, expected_version=version, step_timeout=step_timeout))

    @rule(data=st.data(), status=st.sampled_from([X.FAILED, X.FAILED, X.REJECTED]),
          shell_ticks=st.booleans())
    def device_fails_an_aborting_job(self, data: st.DataObject, status: X,
                                     shell_ticks: bool) -> None:
        """A device failing one of its executions of a job with an abort configuration;
        then, maybe, the service's shell ticks at once, as it does when the store
        ``wants_tick()`` (the tick may cancel the job)."""
        pending = sorted(key for key, e in self.model.executions.items()
                         if e.status in (X.QUEUED, X.IN_PROGRESS)
                         and self.model.jobs[e.job_id].abort is not None)
        if not pending:
            return
        job_id, thing = data.draw(st.sampled_from(pending), label="pending execution")
        self._begin()
        expected = self.model.update(thing, job_id, status, None, None)
        self._run(expected, lambda: self.store.update(thing, job_id, status=status))
        assert self.store.wants_tick() == (expected is None)
        if shell_ticks:
            self.advance_clock_and_tick(0)

    @rule(data=st.data(), ending=st.sampled_from([X.FAILED, X.TIMED_OUT]),
          first=st.sampled_from([None, None, "cancel", "leave"]))
    def device_fails_a_retrying_job(self, data: st.DataObject, ending: X,
                                    first: str | None) -> None:
        """A device working on one of its executions of a job with a retry configuration:
        it starts it (if QUEUED; with a 1-minute step timer to time out), then reports it
        FAILED, or stays silent until the tick a minute later times it out. Meanwhile,
        maybe, the job is canceled without force, or the thing leaves its groups: the
        execution runs on, and is not retried then. Half the time it is a retry already,
        so that things run out of retries."""
        pending = sorted(key for key, e in self.model.executions.items()
                         if e.status in (X.QUEUED, X.IN_PROGRESS)
                         and self.model.jobs[e.job_id].retry)
        retries = [key for key in pending if self.model.executions[key].retry_attempt]
        if retries and data.draw(aims, label="aim") < 5:
            pending = retries
        if not pending:
            return
        job_id, thing = data.draw(st.sampled_from(pending), label="pending execution")
        timer = 1 if ending is X.TIMED_OUT else None
        if timer is not None or self.model.executions[(job_id, thing)].status is X.QUEUED:
            self._begin()
            expected = self.model.update(thing, job_id, X.IN_PROGRESS, None, timer)
            self._run(expected, lambda: self.store.update(
                thing, job_id, status=X.IN_PROGRESS, step_timeout=timer))
        if first == "cancel":
            self._begin()
            expected = self.model.cancel_job(job_id, False)
            self._run(expected, partial(self.store.cancel_job, job_id))
        elif first == "leave":
            for group in sorted(g for g, members in self.model.members.items()
                                if thing in members):
                self._begin()
                expected = self.model.remove_from_group(group, thing)
                self._run(expected, partial(self.store.remove_thing_from_group, group, thing))
        if ending is X.TIMED_OUT:
            self.advance_clock_and_tick(60)
            return
        self._begin()
        expected = self.model.update(thing, job_id, X.FAILED, None, None)
        self._run(expected, lambda: self.store.update(thing, job_id, status=X.FAILED))

    @rule(data=st.data(), step_timeout=step_timeouts)
    def device_starts_a_queued_job(self, data: st.DataObject, step_timeout: int | None) -> None:
        """A device starting a job by its jobId (from notify), not necessarily the head."""
        queued = sorted(key for key, e in self.model.executions.items() if e.status is X.QUEUED)
        if not queued:
            return
        job_id, thing = data.draw(st.sampled_from(queued), label="queued execution")
        self._begin()
        expected = self.model.update(thing, job_id, X.IN_PROGRESS, None, step_timeout)
        self._run(expected, lambda: self.store.update(
            thing, job_id, status=X.IN_PROGRESS, step_timeout=step_timeout))

    @rule(thing=things, job_id=st.sampled_from((*JOB_IDS, topics.NEXT)), data=st.data())
    def describe(self, thing: str, job_id: str, data: st.DataObject) -> None:
        if job_id != topics.NEXT:
            job_id, thing = self._execution_key(job_id, thing, data)
        self._begin()
        if job_id == topics.NEXT:
            pending = self.model.pending(thing)
            want, expected = (pending[0] if pending else None), None
        else:
            want = self.model.executions.get((job_id, thing))
            expected = ResourceNotFoundException if want is None else None
        got = self._run(expected, lambda: self.store.describe(thing, job_id))
        if expected is None:
            if want is None:
                assert got is None
            else:
                assert (got.job_id, got.status, got.version_number) == (
                    want.job_id, want.status, want.version)

    @rule(thing=things)
    def get_pending(self, thing: str) -> None:
        self._begin()
        in_progress, queued = self._run(None, lambda: self.store.get_pending(thing))
        pending = self.model.pending(thing)[: self.service_settings.max_pending_listed]
        assert [e.job_id for e in in_progress] == [
            e.job_id for e in pending if e.status is X.IN_PROGRESS]
        assert [e.job_id for e in queued] == [e.job_id for e in pending if e.status is X.QUEUED]

    @rule(job_id=job_ids, force=st.booleans(), data=st.data())
    def cancel_job(self, job_id: str, force: bool, data: st.DataObject) -> None:
        job_id = self._job_id(job_id, data)
        self._begin()
        expected = self.model.cancel_job(job_id, force)
        self._run(expected, lambda: self.store.cancel_job(job_id, force=force))

    @rule(job_id=job_ids, thing=things, force=st.booleans(), delta=deltas, data=st.data())
    def cancel_job_execution(self, job_id: str, thing: str, force: bool,
                             delta: int | None, data: st.DataObject) -> None:
        job_id, thing = self._execution_key(job_id, thing, data)
        self._begin()
        e = self.model.executions.get((job_id, thing))
        expected_version = None if delta is None else (e.version if e else 1) + delta
        expected = self.model.cancel_job_execution(job_id, thing, force, expected_version)
        self._run(expected, lambda: self.store.cancel_job_execution(
            job_id, thing, force=force, expected_version=expected_version))

    @rule(job_id=job_ids, thing=things, off_by=st.sampled_from([0, 0, 1]),
          force=st.booleans(), data=st.data())
    def delete_job_execution(self, job_id: str, thing: str, off_by: int, force: bool,
                             data: st.DataObject) -> None:
        """Mostly the execution's own executionNumber, sometimes the next one."""
        job_id, thing = self._execution_key(job_id, thing, data)
        e = self.model.executions.get((job_id, thing))
        number = (1 if e is None else e.number) + off_by
        self._begin()
        expected = self.model.delete_job_execution(job_id, thing, number, force)
        self._run(expected, lambda: self.store.delete_job_execution(
            job_id, thing, number, force=force))

    @rule(job_id=job_ids, force=st.booleans(), data=st.data())
    def delete_job(self, job_id: str, force: bool, data: st.DataObject) -> None:
        job_id = self._job_id(job_id, data)
        self._begin()
        expected = self.model.delete_job(job_id, force)
        self._run(expected, lambda: self.store.delete_job(job_id, force=force))

    @rule(data=st.data())
    def rerun_a_job(self, data: st.DataObject) -> None:
        """An operator running a job again under its jobId: DeleteJob with force, the tick
        a second later finishes the deletion, and CreateJob as before: a new job, whose
        things' retries start over. Mostly a job that retried."""
        retried = sorted(j for j, job in self.model.jobs.items() if job.retried)
        job_id = (data.draw(st.sampled_from(retried), label="retried job")
                  if retried and data.draw(aims, label="aim") < 8
                  else self._job_id(JOB_IDS[0], data))
        job = self.model.jobs.get(job_id)  # (missing: DeleteJob fails, CreateJob makes it)
        spec = JobSpec(("t0",)) if job is None or job.spec is None else job.spec
        self._begin()
        expected = self.model.delete_job(job_id, True)
        self._run(expected, partial(self.store.delete_job, job_id, force=True))
        self.advance_clock_and_tick(1)
        self._create_job(job_id, spec)

    @rule(force=st.sampled_from([True, True, False]))
    def delete_every_job(self, force: bool) -> None:
        """The drill's nemesis: DeleteJob on every job at once (hits LimitExceeded)."""
        for job_id in sorted(self.model.jobs):
            self._begin()
            expected = self.model.delete_job(job_id, force)
            self._run(expected, partial(self.store.delete_job, job_id, force=force))

    @rule(seconds=st.sampled_from([0, 1, 30, 60, 90, 200, 200]))
    def advance_clock_and_tick(self, seconds: int) -> None:
        self._begin()
        self.model.now += seconds
        self.model.tick()
        self._run(None, self.store.tick, exact=False)

    @rule()
    def close_and_reopen(self) -> None:
        assert self.store.drain() == []
        self.store.close()
        self.store = self._open()
        self.model.reopened()

    # -- invariants -------------------------------------------------------------------------

    @invariant()
    def store_equals_model(self) -> None:
        jobs, _ = self.store.list_jobs()
        assert {j.job_id: (j.status, j.reason_code, j.planned) for j in jobs} == {
            job_id: (job.status, job.reason_code, job.planned)
            for job_id, job in self.model.jobs.items()}
        executions = self.store.all_executions()
        assert {(e.job_id, e.thing_name): (e.status, e.version_number, e.execution_number,
                                           e.retry_attempt) for e in executions} == {
            key: (e.status, e.version, e.number, e.retry_attempt)
            for key, e in self.model.executions.items()}
        for e in executions:
            m = self.model.executions[(e.job_id, e.thing_name)]
            assert e.deadline == m.deadline, (e, m)
        found = {g: self.store.groups.find(g) for g in GROUPS}
        assert {g: group.parent for g, group in found.items() if group is not None} == (
            self.model.groups)
        assert {g: set(self.store.groups.members(g, recursive=False))
                for g in self.model.groups} == self.model.members

    @invariant()
    def terminal_stays_terminal_and_versions_only_grow(self) -> None:
        for e in self.store.all_executions():
            key = (e.job_id, e.thing_name, e.seq)  # (a REMOVED one queued again: a new seq)
            previous = self.observed.get(key)
            if previous is not None:
                status, version = previous
                assert e.version_number >= version, (key, previous, e)
                if status.is_terminal:
                    assert e.status is status, (key, previous, e)
            self.observed[key] = (e.status, e.version_number)

    @invariant()
    def an_abort_check_is_due_when_an_execution_of_an_aborting_job_ended(self) -> None:
        assert self.store.wants_tick() == bool(self.model.abort_checks)

    @invariant()
    def no_execution_outlives_its_job(self) -> None:
        jobs = {j.job_id for j in self.store.list_jobs()[0]}
        assert {e.job_id for e in self.store.all_executions()} <= jobs

    @invariant()
    def deletions_stay_under_the_limit(self) -> None:
        deleting, _ = self.store.list_jobs(status=J.DELETION_IN_PROGRESS.value)
        assert len(deleting) <= self.service_settings.max_concurrent_deletions <= 10


class AlternativeSettingsMachine(JobsStoreMachine):
    """The same rules with every §13 switch flipped the other way (and an abort cancels
    IN_PROGRESS executions too, with another reason code)."""

    service_settings = ServiceSettings(
        max_concurrent_deletions=1,
        terminal_update_code=TerminalUpdateCode.TERMINAL_STATE_REACHED,
        delete_in_progress_error="InvalidRequestException",
        cancel_in_progress_error="InvalidStateTransitionException",
        execution_deleted_events=False,
        max_pending_listed=2,
        abort_force=True,
        abort_reason_code="TOO_MANY_FAILURES",
    )


MACHINE_SETTINGS = settings(max_examples=120, stateful_step_count=40, deadline=None,
                            derandomize=True, database=None,
                            suppress_health_check=[HealthCheck.too_slow])

TestJobsStore = JobsStoreMachine.TestCase
TestJobsStore.settings = MACHINE_SETTINGS
TestJobsStoreAlternativeSettings = AlternativeSettingsMachine.TestCase
TestJobsStoreAlternativeSettings.settings = MACHINE_SETTINGS
