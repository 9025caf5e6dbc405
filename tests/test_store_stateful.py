"""The jobs store against a tiny model, driven by Hypothesis (STYLE.md: stateful testing).

Rules are the control-plane and data-plane calls plus the chaos actions (advance the virtual
clock and tick, close and reopen the SQLite file). After every rule the real store must
equal the model: same jobs, same executions with the same status and versionNumber, the
same error raised exactly when the model predicts one, and the same pushes: ``notify`` iff
a thing's pending set changed, ``notify-next`` iff its head changed and naming the model's
head, and the same jobs events.

Deterministic: ``derandomize=True`` and a fixed seed for the store's own ``random.Random``.
A few job ids and things keep collisions (jobId reuse, shared things) frequent. Deletions
are swept in 0.01 s per execution and the clock moves by 0 s or whole seconds, so a sweep
is either not started or finished at each tick (the partial sweep is covered in
test_store.py).
"""

from __future__ import annotations

import json
import random
import shutil
import tempfile
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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

SEED = 1234
T0 = 1_700_000_000.0
THINGS = ("t0", "t1")
JOB_IDS = ("j0", "j1", "j2", "j3", "j4", "j5")
DOC = json.dumps({"operation": "noop"})
SERVICE_ONLY = (X.CANCELED, X.REMOVED, X.TIMED_OUT)

Error = type[JobsError] | None


def arn(thing: str) -> str:
    return f"arn:aws:iot:us-east-1:123456789012:thing/{thing}"


# -- the model --------------------------------------------------------------------------------


@dataclass
class MExecution:
    job_id: str
    thing: str
    incarnation: int
    status: X
    version: int
    seq: int
    in_progress_deadline: float | None = None
    step_deadline: float | None = None

    @property
    def deadline(self) -> float | None:
        due = [d for d in (self.step_deadline, self.in_progress_deadline) if d is not None]
        return min(due) if due else None


@dataclass
class MJob:
    status: J
    timeout_minutes: int | None
    incarnation: int
    deletion_started: float | None = None


@dataclass
class Model:
    """What AWS IoT Jobs should hold, in a few dicts; every rule of spec §2-§6, §13."""

    settings: ServiceSettings
    now: float = T0
    jobs: dict[str, MJob] = field(default_factory=dict)
    executions: dict[tuple[str, str], MExecution] = field(default_factory=dict)
    events: list[str] = field(default_factory=list)
    seq: int = 0
    incarnations: int = 0

    def pending(self, thing: str) -> list[MExecution]:
        mine = [e for e in self.executions.values()
                if e.thing == thing and e.status in (X.IN_PROGRESS, X.QUEUED)]
        return sorted(mine, key=lambda e: (e.status is X.QUEUED, e.seq))

    def of_job(self, job_id: str) -> list[MExecution]:
        return sorted((e for e in self.executions.values() if e.job_id == job_id),
                      key=lambda e: e.seq)

    def deleting(self) -> int:
        return sum(job.status is J.DELETION_IN_PROGRESS for job in self.jobs.values())

    def _job_event(self, job_id: str, operation: str) -> None:
        self.events.append(topics.job_event(job_id, operation))

    def _execution_event(self, e: MExecution, operation: str) -> None:
        self.events.append(topics.execution_event(e.job_id, operation))

    def _maybe_complete(self, job_id: str) -> None:
        job = self.jobs[job_id]
        if job.status is J.IN_PROGRESS and not any(
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
        if status.is_terminal and status is not old:
            self._execution_event(e, status.value.lower())
            self._maybe_complete(e.job_id)

    def _remove(self, e: MExecution, event: bool = True) -> None:
        del self.executions[(e.job_id, e.thing)]
        if event:
            self._execution_event(e, "deleted")

    # -- operations: each returns the error AWS (per the spec and settings) gives, or None

    def create_job(self, job_id: str, things: list[str], timeout: int | None) -> Error:
        if job_id in self.jobs:
            return ResourceAlreadyExistsException
        self.seq += 1
        self.incarnations += 1
        self.jobs[job_id] = MJob(J.IN_PROGRESS, timeout, self.incarnations)
        for thing in dict.fromkeys(things):
            self.seq += 1
            self.executions[(job_id, thing)] = MExecution(
                job_id, thing, self.incarnations, X.QUEUED, 1, self.seq)
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
        job.status = J.CANCELED
        self._job_event(job_id, "cancellation_in_progress")
        for e in self.of_job(job_id):
            if e.status is X.QUEUED or (e.status is X.IN_PROGRESS and force):
                self._change(e, X.CANCELED)
        self._job_event(job_id, "canceled")
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
        if e is None or number != 1:
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
        job.status = J.DELETION_IN_PROGRESS
        job.deletion_started = self.now
        self._job_event(job_id, "deletion_in_progress")
        return None

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
        for e in sorted(self.executions.values(), key=lambda e: e.seq):
            deadline = e.deadline
            if e.status is X.IN_PROGRESS and deadline is not None and deadline <= self.now:
                self._change(e, X.TIMED_OUT)


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
        #: (job_id, thing, incarnation) -> last (status, version) the store showed
        self.observed: dict[tuple[str, str, int], tuple[X, int]] = {}
        #: each thing's pending jobIds (model) before the current operation
        self.before: dict[str, list[str]] = {}

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
        self.before = {t: [e.job_id for e in self.model.pending(t)] for t in THINGS}
        self.model.events = []

    def _check_pushes(self, effects: list[Publish], *, exact: bool) -> None:
        limit = self.service_settings.max_pending_listed
        for thing in THINGS:
            before = self.before[thing]
            pending = self.model.pending(thing)
            after = [e.job_id for e in pending]
            notifies, heads = pushes_to(effects, thing)
            if set(after) != set(before):
                assert notifies, f"{thing}: pending set changed {before} -> {after}, no notify"
                assert notifies[-1] == listed(pending, limit), thing
                if exact:
                    assert len(notifies) == 1, thing
            else:
                assert notifies == [], f"{thing}: notify without a pending-set change"
            if after[:1] != before[:1]:
                assert heads, f"{thing}: head changed {before[:1]} -> {after[:1]}, no notify-next"
                assert heads[-1] == (after[0] if after else None), (thing, heads, after)
                if exact:
                    assert len(heads) == 1, thing
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

    # -- rules ------------------------------------------------------------------------------

    # (``targets`` is reserved by Hypothesis' rule decorators, hence ``on``)
    @initialize(first=st.lists(st.tuples(st.lists(things, min_size=1, max_size=2),
                                          st.sampled_from([None, 1, 2])),
                                min_size=1, max_size=3))
    def first_jobs(self, first: list[tuple[list[str], int | None]]) -> None:
        """Start with a few jobs queued on shared things (heads and queues to reorder)."""
        for job_id, (on, timeout) in zip(JOB_IDS, first, strict=False):
            self._begin()
            expected = self.model.create_job(job_id, on, timeout)
            self._run(expected, lambda job_id=job_id, on=on, timeout=timeout:
                      self.store.create_job(job_id, targets=[arn(t) for t in on],
                                            document=DOC, in_progress_timeout_minutes=timeout))

    @rule(job_id=job_ids, on=st.lists(things, min_size=1, max_size=2),
          timeout=st.sampled_from([None, None, 1, 2]), data=st.data())
    def create_job(self, job_id: str, on: list[str], timeout: int | None,
                   data: st.DataObject) -> None:
        free = [j for j in JOB_IDS if j not in self.model.jobs]
        if free and data.draw(aims, label="aim") < 8:  # mostly a new job, sometimes one in use
            job_id = data.draw(st.sampled_from(free), label="free job_id")
        self._begin()
        expected = self.model.create_job(job_id, on, timeout)
        self._run(expected, lambda: self.store.create_job(
            job_id, targets=[arn(t) for t in on], document=DOC,
            in_progress_timeout_minutes=timeout))

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

    @rule(job_id=job_ids, thing=things, number=st.sampled_from([1, 1, 2]),
          force=st.booleans(), data=st.data())
    def delete_job_execution(self, job_id: str, thing: str, number: int, force: bool,
                             data: st.DataObject) -> None:
        job_id, thing = self._execution_key(job_id, thing, data)
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

    @rule(force=st.sampled_from([True, True, False]))
    def delete_every_job(self, force: bool) -> None:
        """The drill's nemesis: DeleteJob on every job at once (hits LimitExceeded)."""
        for job_id in sorted(self.model.jobs):
            self._begin()
            expected = self.model.delete_job(job_id, force)
            self._run(expected, lambda job_id=job_id: self.store.delete_job(job_id, force=force))

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

    # -- invariants -------------------------------------------------------------------------

    @invariant()
    def store_equals_model(self) -> None:
        jobs, _ = self.store.list_jobs()
        assert {j.job_id: j.status for j in jobs} == {
            job_id: job.status for job_id, job in self.model.jobs.items()}
        executions = self.store.all_executions()
        assert {(e.job_id, e.thing_name): (e.status, e.version_number) for e in executions} == {
            key: (e.status, e.version) for key, e in self.model.executions.items()}
        for e in executions:
            m = self.model.executions[(e.job_id, e.thing_name)]
            assert e.deadline == m.deadline, (e, m)

    @invariant()
    def terminal_stays_terminal_and_versions_only_grow(self) -> None:
        for e in self.store.all_executions():
            key = (e.job_id, e.thing_name, self.model.jobs[e.job_id].incarnation)
            previous = self.observed.get(key)
            if previous is not None:
                status, version = previous
                assert e.version_number >= version, (key, previous, e)
                if status.is_terminal:
                    assert e.status is status, (key, previous, e)
            self.observed[key] = (e.status, e.version_number)

    @invariant()
    def no_execution_outlives_its_job(self) -> None:
        jobs = {j.job_id for j in self.store.list_jobs()[0]}
        assert {e.job_id for e in self.store.all_executions()} <= jobs

    @invariant()
    def deletions_stay_under_the_limit(self) -> None:
        deleting, _ = self.store.list_jobs(status=J.DELETION_IN_PROGRESS.value)
        assert len(deleting) <= self.service_settings.max_concurrent_deletions <= 10


class AlternativeSettingsMachine(JobsStoreMachine):
    """The same rules with every §13 switch flipped the other way."""

    service_settings = ServiceSettings(
        max_concurrent_deletions=1,
        terminal_update_code=TerminalUpdateCode.TERMINAL_STATE_REACHED,
        delete_in_progress_error="InvalidRequestException",
        cancel_in_progress_error="InvalidStateTransitionException",
        execution_deleted_events=False,
        max_pending_listed=2,
    )


MACHINE_SETTINGS = settings(max_examples=60, stateful_step_count=30, deadline=None,
                            derandomize=True, database=None,
                            suppress_health_check=[HealthCheck.too_slow])

TestJobsStore = JobsStoreMachine.TestCase
TestJobsStore.settings = MACHINE_SETTINGS
TestJobsStoreAlternativeSettings = AlternativeSettingsMachine.TestCase
TestJobsStoreAlternativeSettings.settings = MACHINE_SETTINGS
