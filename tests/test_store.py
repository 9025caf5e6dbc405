"""The jobs store, example by example: every operation, every error path, and the exact
pushes (notify, notify-next, jobs events) each change causes.

A virtual clock (a mutable float read through ``now()``) and a seeded ``random.Random`` make
every test deterministic; SQLite lives in ``tmp_path``. Pushes are read back by decoding the
drained :class:`Publish` effects with the wire dataclasses, as a device would.
"""

from __future__ import annotations

import json
import random
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from devicesim.wire import topics
from devicesim.wire.enums import JobExecutionStatus as X
from devicesim.wire.enums import JobStatus as J
from devicesim.wire.enums import RejectedErrorCode
from devicesim.wire.messages import (
    JobExecutionsChangedEvent,
    JobExecutionState,
    NextJobExecutionChangedEvent,
)
from fleet.service.errors import (
    InvalidRequestException,
    InvalidStateTransitionException,
    JobsError,
    LimitExceededException,
    ResourceAlreadyExistsException,
    ResourceNotFoundException,
    TerminalStateException,
    VersionConflictException,
)
from fleet.service.records import Job
from fleet.service.settings import ServiceSettings, TerminalDescribe, TerminalUpdateCode
from fleet.service.store import JobsStore, Publish

T0 = 1_700_000_000.0
DOC = {"operation": "install", "version": "2.0"}
SEED = 20240601


class Clock:
    """A virtual clock: the store reads it through ``now()``; tests move it."""

    def __init__(self, t: float = T0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds


def arn(thing: str) -> str:
    return f"arn:aws:iot:us-east-1:123456789012:thing/{thing}"


StoreFactory = Callable[..., JobsStore]


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "jobs.db"


@pytest.fixture
def make_store(db_path: Path, clock: Clock) -> Iterator[StoreFactory]:
    opened: list[JobsStore] = []

    def make(settings: ServiceSettings | None = None) -> JobsStore:
        store = JobsStore(db_path, settings, now=clock, rng=random.Random(SEED))
        opened.append(store)
        return store

    yield make
    for store in opened:
        store.close()


@pytest.fixture
def store(make_store: StoreFactory) -> JobsStore:
    return make_store()


def create(store: JobsStore, job_id: str, *things: str, doc: dict[str, Any] | None = None,
           keep_effects: bool = False, **kwargs: Any) -> Job:
    job = store.create_job(job_id, targets=[arn(t) for t in things],
                           document=json.dumps(DOC if doc is None else doc), **kwargs)
    if not keep_effects:
        store.drain()
    return job


# -- reading the effects back --------------------------------------------------------------


def seen_by(effects: list[Publish], thing: str) -> list[tuple[str, Any]]:
    """What ``thing`` is pushed: ("notify", {status: [jobId...]}) / ("notify-next", jobId)."""
    out: list[tuple[str, Any]] = []
    for effect in effects:
        if effect.topic == topics.notify(thing):
            changed = JobExecutionsChangedEvent.from_json(effect.payload)
            out.append(("notify", {status: [s.job_id for s in summaries]
                                   for status, summaries in changed.jobs.items()}))
        elif effect.topic == topics.notify_next(thing):
            nxt = NextJobExecutionChangedEvent.from_json(effect.payload)
            out.append(("notify-next", None if nxt.execution is None else nxt.execution.job_id))
    return out


def device_topics(effects: list[Publish]) -> list[str]:
    return [e.topic for e in effects if e.topic.startswith("$aws/things/")]


def event_topics(effects: list[Publish]) -> list[str]:
    return [e.topic for e in effects if e.topic.startswith("$aws/events/")]


def payload(effects: list[Publish], topic: str) -> dict[str, Any]:
    (match,) = [e for e in effects if e.topic == topic]
    obj: dict[str, Any] = json.loads(match.payload)
    return obj


def snapshot(store: JobsStore) -> tuple[list[Job], list[Any], dict[str, bool]]:
    jobs, _ = store.list_jobs()
    return jobs, store.all_executions(), store.event_configurations()


def assert_rejected(store: JobsStore, error: type[JobsError], call: Callable[[], Any]
                    ) -> JobsError:
    """``call`` raises exactly ``error``, and changes and publishes nothing."""
    store.drain()
    before = snapshot(store)
    with pytest.raises(JobsError) as info:
        call()
    assert type(info.value) is error, info.value
    assert snapshot(store) == before
    assert store.drain() == []
    return info.value


def status_of(store: JobsStore, job_id: str, thing: str) -> tuple[X, int]:
    e = store.describe_job_execution(job_id, thing)
    return e.status, e.version_number


# -- CreateJob / DescribeJob / ListJobs ------------------------------------------------------


def test_create_job(store: JobsStore, clock: Clock) -> None:
    job = create(store, "job-1", "t1", "t2", "t1", description="rollout",
                 in_progress_timeout_minutes=30)
    assert job.job_id == "job-1"
    assert job.job_arn == "arn:aws:iot:us-east-1:123456789012:job/job-1"
    assert job.status is J.IN_PROGRESS
    assert job.description == "rollout"
    assert job.created_at == job.last_updated_at == clock()
    assert job.completed_at is None
    assert job.process_details == {"QUEUED": 2}  # duplicate targets make one execution
    assert json.loads(store.get_job_document("job-1")) == DOC
    assert store.document("job-1") == DOC
    for thing in ("t1", "t2"):
        e = store.describe_job_execution("job-1", thing)
        assert (e.status, e.version_number, e.execution_number) == (X.QUEUED, 1, 1)
        assert e.queued_at == e.last_updated_at == clock()
        assert e.started_at is None
        assert e.status_details == {}
    assert store.describe_job("job-1") == job


def test_create_job_pushes_notify_and_notify_next_to_each_target(store: JobsStore,
                                                                 clock: Clock) -> None:
    create(store, "job-1", "t2", "t1", keep_effects=True)
    effects = store.drain()
    assert [e.topic for e in effects] == [
        topics.notify("t1"), topics.notify_next("t1"),
        topics.notify("t2"), topics.notify_next("t2")]
    ts = int(clock())
    summary = {"jobId": "job-1", "queuedAt": ts, "lastUpdatedAt": ts, "versionNumber": 1,
               "executionNumber": 1}
    assert payload(effects, topics.notify("t1")) == {"jobs": {"QUEUED": [summary]},
                                                     "timestamp": ts}
    pushed = payload(effects, topics.notify_next("t1"))
    assert pushed["timestamp"] == ts
    execution = pushed["execution"]
    assert execution.pop("thingName", "t1") == "t1"
    assert execution == {**summary, "jobDocument": DOC, "status": "QUEUED"}


@pytest.mark.parametrize(("job_id", "targets", "document", "kwargs"), [
    ("", [arn("t1")], "{}", {}),
    ("x" * 65, [arn("t1")], "{}", {}),
    ("has space", [arn("t1")], "{}", {}),
    ("get", [arn("t1")], "{}", {}),  # collides with a reserved topic level
    ("notify-next", [arn("t1")], "{}", {}),
    ("$next", [arn("t1")], "{}", {}),
    ("job", [], "{}", {}),
    ("job", ["t1"], "{}", {}),
    ("job", ["arn:aws:iot:us-east-1:123456789012:thinggroup/bad group"], "{}", {}),
    ("job", ["arn:aws:iot:us-east-1:123456789012:thing/bad name"], "{}", {}),
    ("job", ["arn:aws:iot:eu-west-1:123456789012:thing/t1"], "{}", {}),  # other region
    ("job", ["arn:aws:iot:us-east-1:999999999999:thing/t1"], "{}", {}),  # other account
    ("job", [arn("t1")], "not json", {}),
    ("job", [arn("t1")], "[1, 2]", {}),
    ("job", [arn("t1")], json.dumps({"pad": "x" * 32768}), {}),
    ("job", [arn("t1")], "{}", {"description": "d" * 2029}),
    ("job", [arn("t1")], "{}", {"description": ""}),
    ("job", [arn("t1")], "{}", {"description": "two\nlines"}),
    ("job", [arn("t1")], "{}", {"description": "zero\u200bwidth"}),
    ("job", [arn("t1")], "{}", {"target_selection": "SOMETIMES"}),
    ("job", [arn("t1")], "{}", {"in_progress_timeout_minutes": 0}),
    ("job", [arn("t1")], "{}", {"in_progress_timeout_minutes": 10081}),
])
def test_create_job_invalid_request(store: JobsStore, job_id: str, targets: list[str],
                                    document: str, kwargs: dict[str, Any]) -> None:
    error = assert_rejected(store, InvalidRequestException, lambda: store.create_job(
        job_id, targets=targets, document=document, **kwargs))
    assert error.http_status == 400
    assert error.mqtt_code is RejectedErrorCode.INVALID_REQUEST


def test_create_job_limits_are_inclusive(store: JobsStore) -> None:
    doc = json.dumps({"p": "x" * (32768 - 9)})
    assert len(doc) == 32768
    store.create_job("j" * 64, targets=[arn("t" * 128)], document=doc, description="d" * 2028,
                     in_progress_timeout_minutes=10080, target_selection="CONTINUOUS")
    assert store.describe_job("j" * 64).target_selection == "CONTINUOUS"


def test_create_job_that_exists(store: JobsStore) -> None:
    create(store, "job-1", "t1")
    error = assert_rejected(store, ResourceAlreadyExistsException,
                            lambda: create(store, "job-1", "t2"))
    assert error.http_status == 409


def test_describe_unknown_job(store: JobsStore) -> None:
    assert_rejected(store, ResourceNotFoundException, lambda: store.describe_job("nope"))
    assert_rejected(store, ResourceNotFoundException, lambda: store.get_job_document("nope"))
    assert_rejected(store, ResourceNotFoundException,
                    lambda: store.list_job_executions_for_job("nope"))


def test_list_jobs_filters_and_pages(store: JobsStore) -> None:
    for i in range(3):
        create(store, f"job-{i}", "t1")
    store.cancel_job("job-1")
    page, token = store.list_jobs(max_results=2)
    assert [j.job_id for j in page] == ["job-0", "job-1"]
    assert token is not None
    page, token = store.list_jobs(max_results=2, next_token=token)
    assert [j.job_id for j in page] == ["job-2"]
    assert token is None
    assert [j.job_id for j in store.list_jobs(status="CANCELED")[0]] == ["job-1"]
    assert [j.job_id for j in store.list_jobs(status="IN_PROGRESS")[0]] == ["job-0", "job-2"]
    assert store.list_jobs(target_selection="CONTINUOUS")[0] == []
    for bad in ({"status": "RUNNING"}, {"max_results": 0}, {"max_results": 251},
                {"next_token": "!!not-a-token"}):
        assert_rejected(store, InvalidRequestException,
                        lambda bad=bad: store.list_jobs(**bad))  # type: ignore[misc]


def test_describe_job_counts_executions_by_status(store: JobsStore) -> None:
    create(store, "job-1", "t1", "t2", "t3")
    store.start_next("t2")
    store.update("t3", "job-1", status=X.FAILED)
    assert store.describe_job("job-1").process_details == {
        "QUEUED": 1, "IN_PROGRESS": 1, "FAILED": 1}


def test_list_job_executions(store: JobsStore) -> None:
    create(store, "job-1", "t1", "t2")
    create(store, "job-2", "t1")
    store.update("t2", "job-1", status=X.SUCCEEDED)
    for_job, token = store.list_job_executions_for_job("job-1")
    assert [(e.thing_name, e.status) for e in for_job] == [("t1", X.QUEUED),
                                                           ("t2", X.SUCCEEDED)]
    assert token is None
    succeeded, _ = store.list_job_executions_for_job("job-1", status="SUCCEEDED")
    assert [e.thing_name for e in succeeded] == ["t2"]
    for_thing, _ = store.list_job_executions_for_thing("t1")
    assert [e.job_id for e in for_thing] == ["job-1", "job-2"]
    only, _ = store.list_job_executions_for_thing("t1", job_id="job-2")
    assert [e.job_id for e in only] == ["job-2"]
    first, token = store.list_job_executions_for_thing("t1", max_results=1)
    assert [e.job_id for e in first] == ["job-1"]
    rest, token = store.list_job_executions_for_thing("t1", max_results=1, next_token=token)
    assert ([e.job_id for e in rest], token) == (["job-2"], None)
    assert_rejected(store, InvalidRequestException,
                    lambda: store.list_job_executions_for_thing("t1", status="DONE"))


# -- data plane: GetPending / StartNext / Describe -----------------------------------------


def test_get_pending_orders_in_progress_first_then_by_creation(make_store: StoreFactory
                                                                ) -> None:
    store = make_store(ServiceSettings(max_pending_listed=2))
    assert store.get_pending("t1") == ([], [])
    for job_id in ("job-1", "job-2", "job-3"):
        create(store, job_id, "t1")
    store.update("t1", "job-3", status=X.IN_PROGRESS)
    store.drain()
    in_progress, queued = store.get_pending("t1")
    assert [e.job_id for e in in_progress] == ["job-3"]
    assert [e.job_id for e in queued] == ["job-1"]  # at most max_pending_listed in all
    create(store, "job-4", "t1", keep_effects=True)
    assert seen_by(store.drain(), "t1") == [
        ("notify", {"IN_PROGRESS": ["job-3"], "QUEUED": ["job-1"]})]


def test_start_next(store: JobsStore, clock: Clock) -> None:
    assert store.start_next("t1") is None
    create(store, "job-1", "t1")
    create(store, "job-2", "t1")
    clock.advance(5)
    started = store.start_next("t1", status_details={"step": "download"}, step_timeout=10)
    assert started is not None
    assert (started.job_id, started.status, started.version_number) == (
        "job-1", X.IN_PROGRESS, 2)
    assert started.started_at == started.last_updated_at == clock()
    assert started.status_details == {"step": "download"}
    assert started.seconds_before_timed_out(clock()) == 600
    # QUEUED -> IN_PROGRESS through start-next pushes nothing (spec §5.1)
    assert store.drain() == []
    # a second start-next returns the same execution unchanged
    clock.advance(5)
    again = store.start_next("t1", status_details={"step": "other"}, step_timeout=1)
    assert again == started
    assert store.drain() == []


@pytest.mark.parametrize(("kwargs", "reason"), [
    ({"step_timeout": 0}, "stepTimeoutInMinutes 0"),
    ({"step_timeout": 10081}, "stepTimeoutInMinutes 10081"),
    ({"status_details": {"bad key": "v"}}, "statusDetails key"),
    ({"status_details": {"k": "line\nbreak"}}, "statusDetails value"),
])
def test_start_next_validates_like_update(store: JobsStore, kwargs: dict[str, Any],
                                          reason: str) -> None:
    # not only the MQTT request dataclass: the store itself refuses (a 0-minute step timer
    # would time the execution out at the next tick)
    create(store, "job-1", "t1")
    assert_rejected(store, InvalidRequestException, lambda: store.start_next("t1", **kwargs))


def test_describe(make_store: StoreFactory) -> None:
    store = make_store()
    assert store.describe("t1", topics.NEXT) is None
    create(store, "job-1", "t1")
    create(store, "job-2", "t1")
    e = store.describe("t1", "job-2")
    assert e is not None
    assert (e.job_id, e.status) == ("job-2", X.QUEUED)
    head = store.describe("t1", "$next")
    assert head is not None
    assert head.job_id == "job-1"
    assert store.describe("t1", "job-2", execution_number=1) == e
    assert_rejected(store, ResourceNotFoundException,
                    lambda: store.describe("t1", "job-2", execution_number=2))
    assert_rejected(store, ResourceNotFoundException, lambda: store.describe("t1", "job-9"))
    assert_rejected(store, ResourceNotFoundException, lambda: store.describe("t2", "job-1"))
    store.update("t1", "job-1", status=X.SUCCEEDED)
    terminal = store.describe("t1", "job-1")  # default: accepted with its terminal status
    assert terminal is not None
    assert terminal.status is X.SUCCEEDED


def test_describe_terminal_when_configured_terminal_state_reached(make_store: StoreFactory
                                                                   ) -> None:
    store = make_store(ServiceSettings(terminal_describe=TerminalDescribe.TERMINAL_STATE_REACHED))
    create(store, "job-1", "t1")
    assert store.describe("t1", "job-1") is not None
    store.update("t1", "job-1", status=X.REJECTED)
    error = assert_rejected(store, TerminalStateException,
                            lambda: store.describe("t1", "job-1"))
    assert error.mqtt_code is RejectedErrorCode.TERMINAL_STATE_REACHED
    assert store.describe("t1", topics.NEXT) is None


# -- data plane: UpdateJobExecution ---------------------------------------------------------


@pytest.mark.parametrize("status", [X.IN_PROGRESS, X.SUCCEEDED, X.FAILED, X.REJECTED])
def test_device_may_update_a_queued_execution(store: JobsStore, status: X) -> None:
    create(store, "job-1", "t1")
    updated = store.update("t1", "job-1", status=status, status_details={"k": "v"})
    assert (updated.status, updated.version_number) == (status, 2)
    assert updated.status_details == {"k": "v"}
    assert status_of(store, "job-1", "t1") == (status, 2)


def test_update_in_progress_again_and_status_details(store: JobsStore, clock: Clock) -> None:
    create(store, "job-1", "t1")
    store.start_next("t1", status_details={"a": "1"})
    clock.advance(3)
    kept = store.update("t1", "job-1", status=X.IN_PROGRESS, expected_version=2)
    assert kept.status_details == {"a": "1"}  # absent keeps the stored map
    assert kept.version_number == 3
    assert kept.last_updated_at == clock()
    assert kept.started_at == T0  # started once
    replaced = store.update("t1", "job-1", status=X.IN_PROGRESS, status_details={"b": "2"})
    assert replaced.status_details == {"b": "2"}  # present replaces
    assert replaced.version_number == 4
    assert store.drain() == []  # no pending-set or head change
    done = store.update("t1", "job-1", status=X.SUCCEEDED, expected_version=4)
    assert (done.status, done.version_number) == (X.SUCCEEDED, 5)


@pytest.mark.parametrize("terminal", [X.SUCCEEDED, X.FAILED, X.REJECTED])
@pytest.mark.parametrize("requested", [X.IN_PROGRESS, X.SUCCEEDED, X.FAILED, X.REJECTED])
def test_update_of_terminal_execution_is_invalid_state_transition(
        store: JobsStore, terminal: X, requested: X) -> None:
    create(store, "job-1", "t1")
    store.start_next("t1")
    store.update("t1", "job-1", status=terminal, status_details={"why": "done"})
    store.drain()
    error = assert_rejected(store, InvalidStateTransitionException, lambda: store.update(
        "t1", "job-1", status=requested))
    assert error.http_status == 409
    assert error.mqtt_code is RejectedErrorCode.INVALID_STATE_TRANSITION
    assert error.execution_state == JobExecutionState(
        status=terminal, status_details={"why": "done"}, version_number=3)


def test_update_of_terminal_execution_when_configured_terminal_state_reached(
        make_store: StoreFactory) -> None:
    store = make_store(ServiceSettings(
        terminal_update_code=TerminalUpdateCode.TERMINAL_STATE_REACHED))
    create(store, "job-1", "t1")
    store.start_next("t1")
    store.cancel_job("job-1", force=True)
    store.drain()
    error = assert_rejected(store, TerminalStateException, lambda: store.update(
        "t1", "job-1", status=X.SUCCEEDED))
    assert error.mqtt_code is RejectedErrorCode.TERMINAL_STATE_REACHED
    assert error.execution_state is None


@pytest.mark.parametrize("service_only", [X.CANCELED, X.REMOVED, X.TIMED_OUT])
@pytest.mark.parametrize("start", [False, True])
def test_update_to_service_only_status_is_invalid_request(store: JobsStore, service_only: X,
                                                          start: bool) -> None:
    create(store, "job-1", "t1")
    if start:
        store.start_next("t1")
    error = assert_rejected(store, InvalidRequestException, lambda: store.update(
        "t1", "job-1", status=service_only))
    assert error.execution_state is None


@pytest.mark.parametrize("start", [False, True])
def test_update_to_queued_is_invalid_state_transition(store: JobsStore, start: bool) -> None:
    create(store, "job-1", "t1")
    if start:
        store.start_next("t1")
    status, version = status_of(store, "job-1", "t1")
    error = assert_rejected(store, InvalidStateTransitionException, lambda: store.update(
        "t1", "job-1", status=X.QUEUED))
    assert error.execution_state == JobExecutionState(status=status, version_number=version)


def test_update_with_wrong_expected_version_is_version_conflict(store: JobsStore) -> None:
    create(store, "job-1", "t1")
    store.start_next("t1", status_details={"step": "1"})
    for wrong in (1, 3, 0, -1):
        error = assert_rejected(store, VersionConflictException, lambda wrong=wrong: store.update(
            "t1", "job-1", status=X.SUCCEEDED, expected_version=wrong))
        assert error.mqtt_code is RejectedErrorCode.VERSION_MISMATCH
        assert error.http_status == 409
        assert error.execution_state == JobExecutionState(
            status=X.IN_PROGRESS, status_details={"step": "1"}, version_number=2)
    assert store.update("t1", "job-1", status=X.SUCCEEDED, expected_version=2).version_number == 3


def test_update_next_is_invalid_request(store: JobsStore) -> None:
    create(store, "job-1", "t1")
    assert_rejected(store, InvalidRequestException, lambda: store.update(
        "t1", topics.NEXT, status=X.IN_PROGRESS))


@pytest.mark.parametrize("kwargs", [
    {"status_details": {"bad key": "v"}},
    {"status_details": {"k": ""}},
    {"status_details": {"k": "a\nb"}},
    {"status_details": {"k": "v" * 1025}},
    {"step_timeout": 0},
    {"step_timeout": -2},
    {"step_timeout": 10081},
])
def test_update_with_bad_input_is_invalid_request(store: JobsStore, kwargs: dict[str, Any]
                                                  ) -> None:
    create(store, "job-1", "t1")
    assert_rejected(store, InvalidRequestException, lambda: store.update(
        "t1", "job-1", status=X.IN_PROGRESS, **kwargs))


def test_update_of_unknown_execution_is_resource_not_found(store: JobsStore) -> None:
    create(store, "job-1", "t1")
    error = assert_rejected(store, ResourceNotFoundException, lambda: store.update(
        "t1", "job-2", status=X.SUCCEEDED))
    assert error.mqtt_code is RejectedErrorCode.RESOURCE_NOT_FOUND
    assert error.http_status == 404
    assert_rejected(store, ResourceNotFoundException, lambda: store.update(
        "t2", "job-1", status=X.SUCCEEDED))
    assert_rejected(store, ResourceNotFoundException, lambda: store.update(
        "t1", "job-1", status=X.SUCCEEDED, execution_number=2))
    assert store.update("t1", "job-1", status=X.SUCCEEDED, execution_number=1)


def test_versions_only_grow(store: JobsStore, clock: Clock) -> None:
    create(store, "job-1", "t1")
    seen = [status_of(store, "job-1", "t1")[1]]
    store.start_next("t1")
    seen.append(status_of(store, "job-1", "t1")[1])
    for i in range(3):
        clock.advance(1)
        store.update("t1", "job-1", status=X.IN_PROGRESS, status_details={"i": str(i)})
        seen.append(status_of(store, "job-1", "t1")[1])
        with pytest.raises(VersionConflictException):
            store.update("t1", "job-1", status=X.IN_PROGRESS, expected_version=seen[-1] - 1)
        seen.append(status_of(store, "job-1", "t1")[1])
    store.cancel_job_execution("job-1", "t1", force=True)
    seen.append(status_of(store, "job-1", "t1")[1])
    assert seen == [1, 2, 3, 3, 4, 4, 5, 5, 6]


# -- notify / notify-next sequences -----------------------------------------------------------


def test_succeed_pushes_empty_notify_and_notify_next_and_completes_the_job(
        store: JobsStore, clock: Clock) -> None:
    create(store, "job-1", "t1")
    store.start_next("t1")
    assert store.drain() == []
    clock.advance(30)
    store.update("t1", "job-1", status=X.SUCCEEDED, status_details={"result": "ok"})
    effects = store.drain()
    ts = int(clock())
    assert seen_by(effects, "t1") == [("notify", {}), ("notify-next", None)]
    assert payload(effects, topics.notify("t1")) == {"jobs": {}, "timestamp": ts}
    assert payload(effects, topics.notify_next("t1")) == {"timestamp": ts}
    assert event_topics(effects) == ["$aws/events/jobExecution/job-1/succeeded",
                                     "$aws/events/job/job-1/completed"]
    execution_event = payload(effects, "$aws/events/jobExecution/job-1/succeeded")
    assert execution_event["eventType"] == "JOB_EXECUTION"
    assert execution_event["operation"] == "succeeded"
    assert execution_event["status"] == "SUCCEEDED"
    assert execution_event["jobId"] == "job-1"
    assert execution_event["thingArn"] == arn("t1")
    assert execution_event["statusDetails"] == {"result": "ok"}
    assert execution_event["timestamp"] == ts
    completed = payload(effects, "$aws/events/job/job-1/completed")
    assert completed["eventType"] == "JOB"
    assert (completed["operation"], completed["status"]) == ("completed", "COMPLETED")
    assert completed["completedAt"] == ts
    assert completed["jobProcessDetails"]["numberOfSucceededThings"] == 1
    assert completed["jobProcessDetails"]["numberOfFailedThings"] == 0
    job = store.describe_job("job-1")
    assert (job.status, job.completed_at) == (J.COMPLETED, clock())


def test_fail_with_another_job_queued_names_it_in_notify_next(store: JobsStore) -> None:
    create(store, "job-1", "t1")
    create(store, "job-2", "t1")
    store.start_next("t1")
    store.update("t1", "job-1", status=X.FAILED)
    effects = store.drain()
    assert seen_by(effects, "t1") == [("notify", {"QUEUED": ["job-2"]}),
                                      ("notify-next", "job-2")]
    pushed = payload(effects, topics.notify_next("t1"))["execution"]
    assert (pushed["status"], pushed["versionNumber"], pushed["jobDocument"]) == (
        "QUEUED", 1, DOC)
    assert event_topics(effects) == ["$aws/events/jobExecution/job-1/failed",
                                     "$aws/events/job/job-1/completed"]
    completed = payload(effects, "$aws/events/job/job-1/completed")
    assert completed["jobProcessDetails"]["numberOfFailedThings"] == 1


def test_second_job_behind_the_head_pushes_notify_only(store: JobsStore) -> None:
    create(store, "job-1", "t1")
    create(store, "job-2", "t1", keep_effects=True)
    assert seen_by(store.drain(), "t1") == [("notify", {"QUEUED": ["job-1", "job-2"]})]
    store.start_next("t1")
    create(store, "job-3", "t1", keep_effects=True)
    effects = store.drain()
    assert seen_by(effects, "t1") == [
        ("notify", {"IN_PROGRESS": ["job-1"], "QUEUED": ["job-2", "job-3"]})]
    assert device_topics(effects) == [topics.notify("t1")]


def test_non_head_execution_started_moves_ahead_and_pushes_notify_next_only(
        store: JobsStore) -> None:
    create(store, "job-1", "t1")
    create(store, "job-2", "t1")
    store.update("t1", "job-2", status=X.IN_PROGRESS)
    assert seen_by(store.drain(), "t1") == [("notify-next", "job-2")]
    assert store.get_pending("t1")[0][0].job_id == "job-2"
    # details of the head change: nothing pushed
    store.update("t1", "job-2", status=X.IN_PROGRESS, status_details={"p": "50"})
    assert store.drain() == []


def test_cancel_job_without_force(store: JobsStore, clock: Clock) -> None:
    create(store, "job-1", "t1", "t2")
    create(store, "job-2", "t2")
    store.start_next("t1")  # t1 runs job-1; t2 has it queued ahead of job-2
    clock.advance(10)
    job = store.cancel_job("job-1", reason_code="BAD_BUILD", comment="stop it")
    assert (job.status, job.force_canceled) == (J.CANCELED, False)
    assert (job.reason_code, job.comment) == ("BAD_BUILD", "stop it")
    effects = store.drain()
    assert seen_by(effects, "t1") == []  # IN_PROGRESS is left alone without force
    assert seen_by(effects, "t2") == [("notify", {"QUEUED": ["job-2"]}),
                                      ("notify-next", "job-2")]
    assert event_topics(effects) == ["$aws/events/job/job-1/cancellation_in_progress",
                                     "$aws/events/jobExecution/job-1/canceled",
                                     "$aws/events/job/job-1/canceled"]
    assert payload(effects, "$aws/events/job/job-1/cancellation_in_progress")["comment"] == (
        "stop it")
    canceled = store.describe_job_execution("job-1", "t2")
    assert (canceled.status, canceled.version_number, canceled.force_canceled) == (
        X.CANCELED, 2, False)
    # the device running it can still finish (spec §4 CancelJob, §7.2 point 5)
    assert status_of(store, "job-1", "t1") == (X.IN_PROGRESS, 2)
    store.update("t1", "job-1", status=X.SUCCEEDED)
    effects = store.drain()
    assert seen_by(effects, "t1") == [("notify", {}), ("notify-next", None)]
    assert event_topics(effects) == ["$aws/events/jobExecution/job-1/succeeded"]
    assert store.describe_job("job-1").status is J.CANCELED


def test_force_cancel_of_in_progress(store: JobsStore, clock: Clock) -> None:
    create(store, "job-1", "t1")
    store.start_next("t1")
    clock.advance(10)
    job = store.cancel_job("job-1", force=True)
    assert (job.status, job.force_canceled) == (J.CANCELED, True)
    effects = store.drain()
    ts = int(clock())
    assert seen_by(effects, "t1") == [("notify", {}), ("notify-next", None)]
    assert payload(effects, topics.notify_next("t1")) == {"timestamp": ts}
    assert event_topics(effects) == ["$aws/events/job/job-1/cancellation_in_progress",
                                     "$aws/events/jobExecution/job-1/canceled",
                                     "$aws/events/job/job-1/canceled"]
    e = store.describe_job_execution("job-1", "t1")  # the execution still exists
    assert (e.status, e.version_number, e.force_canceled) == (X.CANCELED, 3, True)
    error = assert_rejected(store, InvalidStateTransitionException, lambda: store.update(
        "t1", "job-1", status=X.SUCCEEDED))
    assert error.execution_state == JobExecutionState(status=X.CANCELED, version_number=3)


def test_force_cancel_names_the_next_job(store: JobsStore) -> None:
    create(store, "job-1", "t1")
    create(store, "job-2", "t1")
    store.start_next("t1")
    store.cancel_job("job-1", force=True)
    assert seen_by(store.drain(), "t1") == [("notify", {"QUEUED": ["job-2"]}),
                                            ("notify-next", "job-2")]


def test_cancel_job_errors(make_store: StoreFactory) -> None:
    store = make_store()
    assert_rejected(store, ResourceNotFoundException, lambda: store.cancel_job("nope"))
    create(store, "job-1", "t1")
    assert_rejected(store, InvalidRequestException,
                    lambda: store.cancel_job("job-1", reason_code="lower"))
    assert_rejected(store, InvalidRequestException,
                    lambda: store.cancel_job("job-1", comment="c" * 2029))
    assert_rejected(store, InvalidRequestException,
                    lambda: store.cancel_job("job-1", comment="bell\x07"))
    assert_rejected(store, InvalidRequestException,
                    lambda: store.cancel_job("job-1", reason_code="R" * 129))
    store.cancel_job("job-1")
    store.drain()
    # already terminal: cancel_in_progress_error (default InvalidRequest)
    assert_rejected(store, InvalidRequestException, lambda: store.cancel_job("job-1"))
    assert_rejected(store, InvalidRequestException, lambda: store.cancel_job("job-1", force=True))
    create(store, "job-2", "t1")
    store.update("t1", "job-2", status=X.SUCCEEDED)
    assert store.describe_job("job-2").status is J.COMPLETED
    store.drain()
    assert_rejected(store, InvalidRequestException, lambda: store.cancel_job("job-2"))


# -- CancelJobExecution / DeleteJobExecution --------------------------------------------------


def test_cancel_job_execution(store: JobsStore) -> None:
    create(store, "job-1", "t1", "t2")
    assert_rejected(store, ResourceNotFoundException,
                    lambda: store.cancel_job_execution("job-1", "t3"))
    assert_rejected(store, ResourceNotFoundException,
                    lambda: store.cancel_job_execution("job-9", "t1"))
    error = assert_rejected(store, VersionConflictException, lambda: store.cancel_job_execution(
        "job-1", "t1", expected_version=2))
    assert error.http_status == 409
    assert_rejected(store, InvalidRequestException, lambda: store.cancel_job_execution(
        "job-1", "t1", status_details={f"k{i}": "v" for i in range(11)}))
    store.cancel_job_execution("job-1", "t1", expected_version=1,
                               status_details={"by": "operator"})
    e = store.describe_job_execution("job-1", "t1")
    assert (e.status, e.version_number, e.status_details, e.force_canceled) == (
        X.CANCELED, 2, {"by": "operator"}, False)
    effects = store.drain()
    assert seen_by(effects, "t1") == [("notify", {}), ("notify-next", None)]
    assert event_topics(effects) == ["$aws/events/jobExecution/job-1/canceled"]
    # terminal: nothing more to cancel
    assert_rejected(store, InvalidStateTransitionException,
                    lambda: store.cancel_job_execution("job-1", "t1", force=True))
    # IN_PROGRESS needs force
    store.start_next("t2")
    assert_rejected(store, InvalidStateTransitionException,
                    lambda: store.cancel_job_execution("job-1", "t2"))
    store.cancel_job_execution("job-1", "t2", force=True)
    e = store.describe_job_execution("job-1", "t2")
    assert (e.status, e.version_number, e.force_canceled) == (X.CANCELED, 3, True)
    effects = store.drain()
    assert seen_by(effects, "t2") == [("notify", {}), ("notify-next", None)]
    # every execution terminal: the job is COMPLETED
    assert event_topics(effects) == ["$aws/events/jobExecution/job-1/canceled",
                                     "$aws/events/job/job-1/completed"]
    assert store.describe_job("job-1").status is J.COMPLETED


def test_delete_job_execution(store: JobsStore) -> None:
    create(store, "job-1", "t1", "t2")
    create(store, "job-2", "t2")
    assert_rejected(store, ResourceNotFoundException,
                    lambda: store.delete_job_execution("job-1", "t3", 1))
    assert_rejected(store, ResourceNotFoundException,
                    lambda: store.delete_job_execution("job-1", "t1", 2))
    error = assert_rejected(store, InvalidStateTransitionException,
                            lambda: store.delete_job_execution("job-1", "t1", 1))
    assert error.http_status == 409
    store.update("t1", "job-1", status=X.SUCCEEDED)
    store.drain()
    store.delete_job_execution("job-1", "t1", 1)  # terminal: no force needed
    effects = store.drain()
    assert device_topics(effects) == []  # it had already left the pending set
    assert event_topics(effects) == ["$aws/events/jobExecution/job-1/deleted"]
    assert_rejected(store, ResourceNotFoundException,
                    lambda: store.describe_job_execution("job-1", "t1"))
    # force-delete of the IN_PROGRESS head: the device is told, the next job is named
    store.start_next("t2")
    assert_rejected(store, InvalidStateTransitionException,
                    lambda: store.delete_job_execution("job-1", "t2", 1))
    store.delete_job_execution("job-1", "t2", 1, force=True)
    effects = store.drain()
    assert seen_by(effects, "t2") == [("notify", {"QUEUED": ["job-2"]}),
                                      ("notify-next", "job-2")]
    assert event_topics(effects) == ["$aws/events/jobExecution/job-1/deleted",
                                     "$aws/events/job/job-1/completed"]
    assert_rejected(store, ResourceNotFoundException, lambda: store.update(
        "t2", "job-1", status=X.SUCCEEDED))
    assert store.list_job_executions_for_job("job-1") == ([], None)


def test_force_delete_execution_of_the_only_job(store: JobsStore) -> None:
    create(store, "job-1", "t1")
    store.start_next("t1")
    store.delete_job_execution("job-1", "t1", 1, force=True)
    assert seen_by(store.drain(), "t1") == [("notify", {}), ("notify-next", None)]


# -- DeleteJob: the deletion window and the sweep --------------------------------------------


def test_delete_job_without_force(store: JobsStore) -> None:
    assert_rejected(store, ResourceNotFoundException, lambda: store.delete_job("nope"))
    create(store, "job-1", "t1")
    error = assert_rejected(store, InvalidStateTransitionException,
                            lambda: store.delete_job("job-1"))
    assert error.http_status == 409
    store.update("t1", "job-1", status=X.SUCCEEDED)  # COMPLETED: no force needed
    store.delete_job("job-1")
    assert store.describe_job("job-1").status is J.DELETION_IN_PROGRESS
    create(store, "job-2", "t1")
    store.cancel_job("job-2")  # CANCELED: no force needed
    store.delete_job("job-2")
    assert store.describe_job("job-2").status is J.DELETION_IN_PROGRESS


def test_force_delete_of_in_progress_job(store: JobsStore, clock: Clock) -> None:
    create(store, "job-1", "t1")
    store.start_next("t1", status_details={"step": "flash"})
    clock.advance(10)
    store.delete_job("job-1", force=True)
    effects = store.drain()
    assert device_topics(effects) == []  # nothing reaches the device before the sweep
    assert event_topics(effects) == ["$aws/events/job/job-1/deletion_in_progress"]
    assert payload(effects, "$aws/events/job/job-1/deletion_in_progress")["status"] == (
        "DELETION_IN_PROGRESS")
    assert store.describe_job("job-1").status is J.DELETION_IN_PROGRESS
    # until it is swept, the execution stays usable (spec §13)
    assert status_of(store, "job-1", "t1") == (X.IN_PROGRESS, 2)
    assert store.next_due() == pytest.approx(clock() + 0.01)
    clock.advance(1)
    store.tick()
    effects = store.drain()
    ts = int(clock())
    assert seen_by(effects, "t1") == [("notify", {}), ("notify-next", None)]
    assert payload(effects, topics.notify("t1")) == {"jobs": {}, "timestamp": ts}
    assert payload(effects, topics.notify_next("t1")) == {"timestamp": ts}  # no execution
    assert event_topics(effects) == ["$aws/events/jobExecution/job-1/deleted",
                                     "$aws/events/job/job-1/deleted"]
    assert payload(effects, "$aws/events/job/job-1/deleted")["status"] == "DELETED"
    deleted = payload(effects, "$aws/events/jobExecution/job-1/deleted")
    assert (deleted["status"], deleted["thingArn"]) == ("DELETED", arn("t1"))
    # gone: the device can neither read nor update it
    assert_rejected(store, ResourceNotFoundException, lambda: store.describe_job("job-1"))
    assert_rejected(store, ResourceNotFoundException, lambda: store.describe("t1", "job-1"))
    assert_rejected(store, ResourceNotFoundException, lambda: store.update(
        "t1", "job-1", status=X.SUCCEEDED))
    assert store.describe("t1", topics.NEXT) is None
    assert store.all_executions() == []
    assert store.next_due() is None


def test_force_delete_with_another_job_queued_names_it(store: JobsStore, clock: Clock) -> None:
    create(store, "job-1", "t1", "t2")
    create(store, "job-2", "t1")
    store.start_next("t1")
    store.delete_job("job-1", force=True)
    store.drain()
    clock.advance(1)
    store.tick()
    effects = store.drain()
    assert seen_by(effects, "t1") == [("notify", {"QUEUED": ["job-2"]}),
                                      ("notify-next", "job-2")]
    assert payload(effects, topics.notify_next("t1"))["execution"]["jobId"] == "job-2"
    assert seen_by(effects, "t2") == [("notify", {}), ("notify-next", None)]
    assert sorted(event_topics(effects)) == ["$aws/events/job/job-1/deleted",
                                             "$aws/events/jobExecution/job-1/deleted",
                                             "$aws/events/jobExecution/job-1/deleted"]
    assert [e.job_id for e in store.all_executions()] == ["job-2"]


def test_sweep_is_gradual_and_the_job_stays_until_the_last_execution(
        store: JobsStore, clock: Clock) -> None:
    things = [f"t{i}" for i in range(4)]
    create(store, "job-1", *things)
    store.delete_job("job-1", force=True)
    store.drain()
    swept: list[str] = []
    for _ in things:
        clock.advance(0.01)
        store.tick()
        effects = store.drain()
        now_gone = [t for t in things if seen_by(effects, t)]
        assert len(now_gone) == 1
        swept += now_gone
        for thing in things:  # swept ones are gone, the others still there
            present = [e.thing_name for e in store.all_executions()]
            assert (thing in present) == (thing not in swept)
        if len(swept) < len(things):
            assert store.describe_job("job-1").status is J.DELETION_IN_PROGRESS
            assert_rejected(store, ResourceAlreadyExistsException,
                            lambda: create(store, "job-1", "t9"))
    assert sorted(swept) == things
    assert_rejected(store, ResourceNotFoundException, lambda: store.describe_job("job-1"))


def test_sweep_order_comes_from_the_injected_rng(tmp_path: Path) -> None:
    def order(seed: int, name: str) -> list[str]:
        clock = Clock()
        store = JobsStore(tmp_path / name, now=clock, rng=random.Random(seed))
        try:
            create(store, "job-1", *[f"t{i}" for i in range(6)])
            store.delete_job("job-1", force=True)
            store.drain()
            gone: list[str] = []
            for _ in range(6):
                clock.advance(0.01)
                store.tick()
                gone += [e.topic.split("/")[2] for e in store.drain()
                         if e.topic.endswith("/notify")]
            return gone
        finally:
            store.close()

    assert order(7, "a.db") == order(7, "b.db")
    assert sorted(order(7, "c.db")) == [f"t{i}" for i in range(6)]


def test_update_during_the_deletion_window_succeeds_until_swept(store: JobsStore,
                                                                clock: Clock) -> None:
    create(store, "job-1", "t1")
    store.start_next("t1")
    store.delete_job("job-1", force=True)
    store.drain()
    done = store.update("t1", "job-1", status=X.SUCCEEDED)
    assert done.status is X.SUCCEEDED
    effects = store.drain()
    assert seen_by(effects, "t1") == [("notify", {}), ("notify-next", None)]
    # a deleting job never completes
    assert event_topics(effects) == ["$aws/events/jobExecution/job-1/succeeded"]
    assert store.describe_job("job-1").status is J.DELETION_IN_PROGRESS
    clock.advance(1)
    store.tick()
    effects = store.drain()
    assert seen_by(effects, "t1") == []  # it had already left the pending set
    assert_rejected(store, ResourceNotFoundException, lambda: store.describe_job("job-1"))


def test_delete_or_cancel_while_deleting_default_errors(store: JobsStore) -> None:
    create(store, "job-1", "t1")
    store.delete_job("job-1", force=True)
    store.drain()
    assert_rejected(store, InvalidStateTransitionException,
                    lambda: store.delete_job("job-1", force=True))
    assert_rejected(store, InvalidRequestException, lambda: store.cancel_job("job-1"))
    assert_rejected(store, InvalidRequestException,
                    lambda: store.cancel_job("job-1", force=True))


def test_delete_or_cancel_while_deleting_configured_errors(make_store: StoreFactory) -> None:
    store = make_store(ServiceSettings(delete_in_progress_error="InvalidRequestException",
                                       cancel_in_progress_error="LimitExceededException"))
    create(store, "job-1", "t1")
    store.delete_job("job-1", force=True)
    store.drain()
    assert_rejected(store, InvalidRequestException, lambda: store.delete_job("job-1"))
    assert_rejected(store, LimitExceededException, lambda: store.cancel_job("job-1"))


def test_settings_refuse_unknown_exception_names() -> None:
    with pytest.raises(ValueError, match="delete_in_progress_error"):
        ServiceSettings(delete_in_progress_error="Oops")
    with pytest.raises(ValueError, match="cancel_in_progress_error"):
        ServiceSettings.from_mapping({"cancel-in-progress-error": "Nope"})


def test_eleventh_concurrent_deletion_is_limit_exceeded(store: JobsStore, clock: Clock) -> None:
    for i in range(11):
        create(store, f"job-{i}", "t1", "t2")
    for i in range(10):
        store.delete_job(f"job-{i}", force=True)
    store.drain()
    assert len(store.list_jobs(status="DELETION_IN_PROGRESS")[0]) == 10
    error = assert_rejected(store, LimitExceededException,
                            lambda: store.delete_job("job-10", force=True))
    assert error.http_status == 410
    assert store.describe_job("job-10").status is J.IN_PROGRESS
    # the already-deleting ones still get their configured error, not LimitExceeded
    assert_rejected(store, InvalidStateTransitionException,
                    lambda: store.delete_job("job-0", force=True))
    clock.advance(1)
    store.tick()
    assert store.list_jobs(status="DELETION_IN_PROGRESS")[0] == []
    store.delete_job("job-10", force=True)
    assert store.describe_job("job-10").status is J.DELETION_IN_PROGRESS


def test_job_id_reuse_during_and_after_deletion(store: JobsStore, clock: Clock) -> None:
    create(store, "job-1", "t1")
    store.start_next("t1")
    store.update("t1", "job-1", status=X.IN_PROGRESS)
    store.delete_job("job-1", force=True)
    error = assert_rejected(store, ResourceAlreadyExistsException,
                            lambda: create(store, "job-1", "t1"))
    assert error.http_status == 409
    clock.advance(1)
    store.tick()
    store.drain()
    job = create(store, "job-1", "t1", doc={"operation": "again"}, keep_effects=True)
    assert job.status is J.IN_PROGRESS
    assert seen_by(store.drain(), "t1") == [("notify", {"QUEUED": ["job-1"]}),
                                            ("notify-next", "job-1")]
    e = store.describe_job_execution("job-1", "t1")
    assert (e.status, e.version_number, e.execution_number) == (X.QUEUED, 1, 1)
    assert store.document("job-1") == {"operation": "again"}


def test_delete_job_without_executions_finishes_at_the_next_tick(store: JobsStore) -> None:
    create(store, "job-1", "t1")
    store.update("t1", "job-1", status=X.SUCCEEDED)
    store.delete_job_execution("job-1", "t1", 1)
    store.delete_job("job-1")
    store.drain()
    assert store.next_due() is not None
    store.tick()
    assert event_topics(store.drain()) == ["$aws/events/job/job-1/deleted"]
    assert_rejected(store, ResourceNotFoundException, lambda: store.describe_job("job-1"))


def test_execution_deleted_events_can_be_switched_off(make_store: StoreFactory,
                                                      clock: Clock) -> None:
    store = make_store(ServiceSettings(execution_deleted_events=False))
    create(store, "job-1", "t1", "t2")
    store.delete_job("job-1", force=True)
    store.drain()
    clock.advance(1)
    store.tick()
    effects = store.drain()
    assert event_topics(effects) == ["$aws/events/job/job-1/deleted"]
    assert seen_by(effects, "t1") == [("notify", {}), ("notify-next", None)]


# -- timers -----------------------------------------------------------------------------------


def test_in_progress_timer_times_out_on_tick(store: JobsStore, clock: Clock) -> None:
    create(store, "job-1", "t1", in_progress_timeout_minutes=1)
    assert store.next_due() is None  # QUEUED executions have no timer
    store.start_next("t1")
    assert store.next_due() == T0 + 60
    assert store.describe("t1", "job-1").seconds_before_timed_out(clock()) == 60  # type: ignore[union-attr]
    clock.advance(59)
    store.tick()
    assert store.drain() == []
    assert status_of(store, "job-1", "t1") == (X.IN_PROGRESS, 2)
    clock.advance(1)
    store.tick()
    effects = store.drain()
    assert seen_by(effects, "t1") == [("notify", {}), ("notify-next", None)]
    assert event_topics(effects) == ["$aws/events/jobExecution/job-1/timed_out",
                                     "$aws/events/job/job-1/completed"]
    timed_out = payload(effects, "$aws/events/jobExecution/job-1/timed_out")
    assert (timed_out["operation"], timed_out["status"]) == ("timed_out", "TIMED_OUT")
    assert status_of(store, "job-1", "t1") == (X.TIMED_OUT, 3)
    assert store.describe("t1", "job-1").seconds_before_timed_out(clock()) is None  # type: ignore[union-attr]
    assert store.next_due() is None
    error = assert_rejected(store, InvalidStateTransitionException, lambda: store.update(
        "t1", "job-1", status=X.SUCCEEDED))
    assert error.execution_state == JobExecutionState(status=X.TIMED_OUT, version_number=3)


def test_step_timer_rearmed_by_update_then_times_out(store: JobsStore, clock: Clock) -> None:
    create(store, "job-1", "t1")
    create(store, "job-2", "t1")
    store.start_next("t1", step_timeout=2)
    assert store.next_due() == T0 + 120
    clock.advance(60)
    store.update("t1", "job-1", status=X.IN_PROGRESS, step_timeout=5)  # re-arm
    assert store.next_due() == T0 + 60 + 300
    clock.advance(299)
    store.tick()
    assert store.drain() == []
    clock.advance(1)
    store.tick()
    effects = store.drain()
    assert seen_by(effects, "t1") == [("notify", {"QUEUED": ["job-2"]}),
                                      ("notify-next", "job-2")]
    assert status_of(store, "job-1", "t1") == (X.TIMED_OUT, 4)


def test_step_timer_is_capped_by_the_in_progress_timer(store: JobsStore, clock: Clock) -> None:
    # the guide's example: in-progress 20 min from 12:00; step 7 at 12:05 -> 12:12;
    # step 5 at 12:10 -> 12:15; step 9 at 12:13 -> capped at 12:20
    create(store, "job-1", "t1", in_progress_timeout_minutes=20)
    store.start_next("t1")
    for at, step, due in ((5, 7, 12), (10, 5, 15), (13, 9, 20)):
        clock.t = T0 + at * 60
        store.update("t1", "job-1", status=X.IN_PROGRESS, step_timeout=step)
        assert store.next_due() == T0 + due * 60
        e = store.describe("t1", "job-1")
        assert e is not None
        assert e.seconds_before_timed_out(clock()) == (due - at) * 60
        assert e.data(clock(), None).approximate_seconds_before_timed_out == (due - at) * 60


def test_step_timer_minus_one_clears_it(store: JobsStore, clock: Clock) -> None:
    create(store, "job-1", "t1")
    store.start_next("t1", step_timeout=1)
    store.update("t1", "job-1", status=X.IN_PROGRESS, step_timeout=-1)
    assert store.next_due() is None
    clock.advance(3600)
    store.tick()
    assert store.drain() == []
    assert status_of(store, "job-1", "t1") == (X.IN_PROGRESS, 3)


def test_terminal_status_stops_the_timers(store: JobsStore, clock: Clock) -> None:
    create(store, "job-1", "t1", in_progress_timeout_minutes=1)
    store.start_next("t1", step_timeout=1)
    store.update("t1", "job-1", status=X.SUCCEEDED)
    store.drain()
    assert store.next_due() is None
    clock.advance(600)
    store.tick()
    assert store.drain() == []
    assert status_of(store, "job-1", "t1") == (X.SUCCEEDED, 3)


# -- job completion and events ---------------------------------------------------------------


def test_job_completes_when_every_execution_is_terminal(store: JobsStore, clock: Clock) -> None:
    create(store, "job-1", "t1", "t2", "t3")
    store.update("t1", "job-1", status=X.SUCCEEDED)
    store.update("t2", "job-1", status=X.REJECTED)
    assert store.describe_job("job-1").status is J.IN_PROGRESS
    store.drain()
    clock.advance(7)
    store.cancel_job_execution("job-1", "t3")
    effects = store.drain()
    job = store.describe_job("job-1")
    assert (job.status, job.completed_at) == (J.COMPLETED, clock())
    completed = payload(effects, "$aws/events/job/job-1/completed")
    assert completed["jobProcessDetails"] == {
        "numberOfCanceledThings": 1, "numberOfRejectedThings": 1, "numberOfFailedThings": 0,
        "numberOfRemovedThings": 0, "numberOfSucceededThings": 1, "numberOfTimedOutThings": 0}
    assert completed["targets"] == [arn("t1"), arn("t2"), arn("t3")]
    assert completed["jobId"] == "job-1"


def test_continuous_job_never_completes(store: JobsStore) -> None:
    create(store, "job-1", "t1", target_selection="CONTINUOUS")
    store.update("t1", "job-1", status=X.SUCCEEDED)
    assert store.describe_job("job-1").status is J.IN_PROGRESS
    assert "completed" not in " ".join(event_topics(store.drain()))


def test_event_configurations(make_store: StoreFactory, clock: Clock) -> None:
    store = make_store()
    assert store.event_configurations() == {"JOB": True, "JOB_EXECUTION": True}
    store.update_event_configurations({"JOB": False, "UNKNOWN": True})
    assert store.event_configurations() == {"JOB": False, "JOB_EXECUTION": True}
    create(store, "job-1", "t1")
    store.update("t1", "job-1", status=X.SUCCEEDED)
    assert event_topics(store.drain()) == ["$aws/events/jobExecution/job-1/succeeded"]
    store.update_event_configurations({"JOB_EXECUTION": False})
    create(store, "job-2", "t1")
    store.update("t1", "job-2", status=X.SUCCEEDED)
    effects = store.drain()
    assert event_topics(effects) == []
    assert seen_by(effects, "t1") == [("notify", {}), ("notify-next", None)]


def test_job_events_off_by_setting(make_store: StoreFactory) -> None:
    store = make_store(ServiceSettings(job_events=False))
    assert store.event_configurations() == {"JOB": False, "JOB_EXECUTION": False}
    create(store, "job-1", "t1")
    store.cancel_job("job-1")
    assert event_topics(store.drain()) == []


def test_event_ids_come_from_the_injected_rng(make_store: StoreFactory) -> None:
    store = make_store()
    create(store, "job-1", "t1")
    store.update("t1", "job-1", status=X.SUCCEEDED)
    ids = [json.loads(e.payload)["eventId"] for e in store.drain()
           if e.topic.startswith("$aws/events/")]
    expected_rng = random.Random(SEED)
    assert ids == [str(uuid.UUID(int=expected_rng.getrandbits(128), version=4))
                   for _ in ids]


# -- durability -------------------------------------------------------------------------------


def test_close_and_reopen_keeps_everything(db_path: Path, clock: Clock) -> None:
    store = JobsStore(db_path, now=clock, rng=random.Random(SEED))
    create(store, "job-1", "t1", "t2", in_progress_timeout_minutes=5)
    create(store, "job-2", "t1")
    create(store, "job-3", "t3")
    store.start_next("t1", status_details={"step": "a"}, step_timeout=2)
    store.update("t2", "job-1", status=X.FAILED, status_details={"why": "disk"})
    store.cancel_job("job-2", reason_code="OOPS", comment="wrong build")
    store.delete_job("job-3", force=True)
    store.update_event_configurations({"JOB": False})
    before = snapshot(store)
    described = {j.job_id: store.describe_job(j.job_id) for j in before[0]}
    due = store.next_due()
    store.drain()
    store.close()

    reopened = JobsStore(db_path, now=clock, rng=random.Random(SEED + 1))
    try:
        assert snapshot(reopened) == before
        assert {j.job_id: reopened.describe_job(j.job_id) for j in before[0]} == described
        assert reopened.next_due() == due
        assert reopened.drain() == []
        # the deletion and the timers carry on after the restart
        clock.advance(120)
        reopened.tick()
        effects = reopened.drain()
        assert seen_by(effects, "t3") == [("notify", {}), ("notify-next", None)]
        assert seen_by(effects, "t1") == [("notify", {}), ("notify-next", None)]
        assert status_of(reopened, "job-1", "t1") == (X.TIMED_OUT, 3)
        assert_rejected(reopened, ResourceNotFoundException,
                        lambda: reopened.describe_job("job-3"))
        # creation order survives: a new job queues behind the old ones
        create(reopened, "job-4", "t2")
        create(reopened, "job-5", "t1")
        assert [e.job_id for e in reopened.all_executions()][-2:] == ["job-4", "job-5"]
    finally:
        reopened.close()


def test_reopen_while_a_connection_is_still_open_sees_committed_state(
        db_path: Path, clock: Clock) -> None:
    # a killed process never closes its connection: what it committed must be visible
    first = JobsStore(db_path, now=clock, rng=random.Random(SEED))
    second: JobsStore | None = None
    try:
        create(first, "job-1", "t1")
        first.update("t1", "job-1", status=X.IN_PROGRESS)
        second = JobsStore(db_path, now=clock, rng=random.Random(SEED))
        assert status_of(second, "job-1", "t1") == (X.IN_PROGRESS, 2)
    finally:
        first.close()
        if second is not None:
            second.close()
