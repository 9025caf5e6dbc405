"""Rollout pacing (``jobExecutionsRolloutConfig``) and automatic abort (``abortConfig``):
the rules on a store with an injected clock, the configurations through boto3, and a real
service releasing a paced rollout by its own timer."""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path
from typing import Any

import pytest

from devicesim.wire import topics
from devicesim.wire.enums import JobExecutionStatus as X
from fleet.broker import BrokerAddress
from fleet.drill.controller import iot_client
from fleet.service.controlplane import shapes
from fleet.service.errors import InvalidRequestException
from fleet.service.rollout import (
    AbortCriterion,
    parse_abort,
    parse_retry,
    parse_rollout,
    retry_due,
)
from fleet.service.settings import ServiceSettings
from fleet.service.shell import JobsService, ServiceConfig
from fleet.service.store import JobsStore
from fleet.service.templates import JobTemplate
from tests.jobs_client import jobs_client
from tests.test_controlplane import DOC, T0, Clock, arn, running

THINGS = [f"t{i}" for i in range(10)]


def make(tmp_path: Path, **settings: Any) -> tuple[JobsStore, Clock]:
    clock = Clock()
    return JobsStore(tmp_path / "jobs.sqlite", ServiceSettings(**settings), now=clock), clock


def released(store: JobsStore, job_id: str) -> dict[str, float]:
    """thing -> when its execution was queued."""
    return {e.thing_name: e.queued_at - T0 for e in store.all_executions()
            if e.job_id == job_id}


def test_a_constant_rate_releases_one_target_every_60_over_rate_seconds(tmp_path: Path
                                                                        ) -> None:
    store, clock = make(tmp_path)
    store.create_job("paced", targets=[arn(t) for t in THINGS[:5]], document=DOC,
                     rollout_config={"maximumPerMinute": 60})
    job = store.describe_job("paced")
    assert (job.process_details, job.planned) == ({}, 5)  # nothing queued before the tick
    assert store.next_due() == T0
    store.tick()
    assert released(store, "paced") == {"t0": 0.0}
    assert [p.topic for p in store.drain()].count(topics.notify_next("t0")) == 1
    clock.advance(0.5)
    store.tick()
    assert len(released(store, "paced")) == 1
    assert store.next_due() == T0 + 1.0
    clock.advance(0.5)
    store.tick()
    assert released(store, "paced") == {"t0": 0.0, "t1": 1.0}
    clock.advance(10)  # the service was busy: the rate is a maximum, no burst to catch up
    store.tick()
    assert released(store, "paced") == {"t0": 0.0, "t1": 1.0, "t2": 11.0}
    for _ in range(2):
        clock.advance(1)
        store.tick()
    assert len(released(store, "paced")) == 5
    assert store.describe_job("paced").planned == 0
    clock.advance(1)
    store.tick()  # finds nothing planned: idle
    assert store.next_due() is None


def test_an_exponential_rate_grows_by_its_factor_up_to_the_maximum(tmp_path: Path) -> None:
    store, clock = make(tmp_path)
    store.create_job("exp", targets=[arn(t) for t in THINGS], document=DOC, rollout_config={
        "maximumPerMinute": 8, "exponentialRate": {
            "baseRatePerMinute": 2, "incrementFactor": 2.0,
            "rateIncreaseCriteria": {"numberOfNotifiedThings": 2}}})
    for _ in range(300):
        store.tick()
        clock.advance(0.5)
    times = sorted(released(store, "exp").values())
    gaps = [round(b - a, 1) for a, b in zip(times, times[1:], strict=False)]
    # 2/min for two things (30 s), 4/min for the next two (15 s), then 8/min (7.5 s) to the
    # end: the maximum caps it (ticks every 0.5 s round the 7.5 s gaps)
    assert gaps[:3] == [30.0, 15.0, 15.0]
    assert all(7.5 <= g <= 8.0 for g in gaps[3:]), gaps
    assert len(times) == 10


def test_succeeded_things_can_drive_the_rate(tmp_path: Path) -> None:
    store, clock = make(tmp_path)
    store.create_job("exp", targets=[arn(t) for t in THINGS[:4]], document=DOC,
                     rollout_config={"exponentialRate": {
                         "baseRatePerMinute": 1, "incrementFactor": 5,
                         "rateIncreaseCriteria": {"numberOfSucceededThings": 1}}})
    store.tick()
    assert set(released(store, "exp")) == {"t0"}
    store.update("t0", "exp", status=X.SUCCEEDED)
    clock.advance(60)
    store.tick()  # t1 at the old rate; then the rate grows to 5/min (one success)
    clock.advance(12)
    store.tick()
    assert set(released(store, "exp")) == {"t0", "t1", "t2"}


def test_a_paced_job_completes_only_once_every_target_is_released(tmp_path: Path) -> None:
    store, clock = make(tmp_path)
    store.create_job("paced", targets=[arn("a"), arn("b")], document=DOC,
                     rollout_config={"maximumPerMinute": 1})
    store.tick()
    store.update("a", "paced", status=X.SUCCEEDED)
    assert store.describe_job("paced").status.value == "IN_PROGRESS"  # b still planned
    clock.advance(60)
    store.tick()
    store.update("b", "paced", status=X.SUCCEEDED)
    assert store.describe_job("paced").status.value == "COMPLETED"


def test_canceling_or_deleting_a_paced_job_drops_what_was_not_released(tmp_path: Path
                                                                       ) -> None:
    store, clock = make(tmp_path)
    store.create_job("paced", targets=[arn(t) for t in THINGS], document=DOC,
                     rollout_config={"maximumPerMinute": 1})
    store.tick()
    store.cancel_job("paced")
    clock.advance(3600)
    store.tick()
    assert released(store, "paced") == {"t0": 0.0}
    assert store.describe_job("paced").planned == 0


def test_a_continuous_paced_job_releases_a_joining_thing_at_its_pace(tmp_path: Path) -> None:
    store, clock = make(tmp_path)
    store.groups.create("fleet")
    store.add_thing_to_group("fleet", "a")
    store.create_job("cont", targets=["arn:aws:iot:us-east-1:123456789012:thinggroup/fleet"],
                     document=DOC, target_selection="CONTINUOUS",
                     rollout_config={"maximumPerMinute": 2})
    store.tick()
    clock.advance(30)
    store.tick()  # nothing planned: idle
    assert store.next_due() is None
    clock.advance(70)
    store.add_thing_to_group("fleet", "b")
    store.add_thing_to_group("fleet", "c")
    assert set(released(store, "cont")) == {"a"}  # planned, not queued at once
    store.tick()
    clock.advance(30)
    store.tick()
    assert released(store, "cont") == {"a": 0.0, "b": 100.0, "c": 130.0}


def abort(failure_type: str = "FAILED", threshold: float = 30.0, executed: int = 5
          ) -> dict[str, Any]:
    return {"criteriaList": [{"failureType": failure_type, "action": "CANCEL",
                              "thresholdPercentage": threshold,
                              "minNumberOfExecutedThings": executed}]}


@pytest.mark.parametrize("force", [False, True])
def test_a_job_aborts_once_its_failures_reach_the_threshold(tmp_path: Path, force: bool
                                                            ) -> None:
    store, _ = make(tmp_path, abort_force=force)
    store.create_job("ota", targets=[arn(t) for t in THINGS], document=DOC,
                     abort_config=abort())
    for thing in THINGS[:4]:
        store.start_next(thing)
    store.update("t0", "ota", status=X.FAILED)
    store.update("t1", "ota", status=X.FAILED)
    store.tick()
    assert store.describe_job("ota").status.value == "IN_PROGRESS"  # 2 of 10: 20 %
    store.update("t2", "ota", status=X.FAILED)
    assert store.wants_tick()
    store.drain()
    store.tick()
    job = store.describe_job("ota")
    assert (job.status.value, job.reason_code, job.force_canceled) == (
        "CANCELED", "ABORT_CRITERIA_MET", force)
    assert job.comment == "abortConfig met: FAILED >= 30% of at least 5 things"
    statuses = {e.thing_name: e.status.value for e in store.all_executions()}
    assert statuses["t3"] == ("CANCELED" if force else "IN_PROGRESS")
    assert statuses["t9"] == "CANCELED"
    pushed = [p.topic for p in store.drain()]
    assert topics.notify_next("t9") in pushed
    assert topics.job_event("ota", "canceled") in pushed


def test_an_abort_waits_for_its_minimum_of_executed_things(tmp_path: Path) -> None:
    store, _ = make(tmp_path)
    store.create_job("ota", targets=[arn(t) for t in THINGS[:3]], document=DOC,
                     abort_config=abort("ALL", 50.0, executed=4))
    store.update("t0", "ota", status=X.REJECTED)
    store.update("t1", "ota", status=X.FAILED)
    store.tick()  # 2 of 3 failed, but only 3 things were notified
    assert store.describe_job("ota").status.value == "IN_PROGRESS"


def test_abort_criteria_by_failure_type() -> None:
    counts = {"FAILED": 1, "REJECTED": 1, "TIMED_OUT": 1, "SUCCEEDED": 7}
    assert AbortCriterion("ALL", 30.0, 10).met(counts)
    assert not AbortCriterion("FAILED", 10.01, 10).met(counts)
    assert AbortCriterion("TIMED_OUT", 10.0, 10).met(counts)
    assert not AbortCriterion("REJECTED", 10.0, 11).met(counts)


@pytest.mark.parametrize(("config", "message"), [
    ({}, "give maximumPerMinute or exponentialRate"),
    ({"maximumPerMinute": 0}, "maximumPerMinute: must be an integer from 1 to 1000"),
    ({"exponentialRate": {"baseRatePerMinute": 5, "incrementFactor": 1.0,
                          "rateIncreaseCriteria": {"numberOfNotifiedThings": 1}}},
     "incrementFactor: must be from 1.1 to 5"),
    ({"exponentialRate": {"baseRatePerMinute": 5, "incrementFactor": 2,
                          "rateIncreaseCriteria": {}}}, "give exactly one of"),
    ({"maximumPerMinute": 2, "exponentialRate": {
        "baseRatePerMinute": 5, "incrementFactor": 2,
        "rateIncreaseCriteria": {"numberOfNotifiedThings": 1}}}, "at least baseRatePerMinute"),
])
def test_rollout_configurations_aws_refuses(config: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidRequestException, match=message):
        parse_rollout(config)


@pytest.mark.parametrize(("criterion", "message"), [
    ({"failureType": "LOST", "action": "CANCEL", "thresholdPercentage": 1,
      "minNumberOfExecutedThings": 1}, "failureType: one of"),
    ({"failureType": "ALL", "action": "PAUSE", "thresholdPercentage": 1,
      "minNumberOfExecutedThings": 1}, "action: must be CANCEL"),
    ({"failureType": "ALL", "action": "CANCEL", "thresholdPercentage": 10.999,
      "minNumberOfExecutedThings": 1}, "at most two decimals"),
    ({"failureType": "ALL", "action": "CANCEL", "thresholdPercentage": 10,
      "minNumberOfExecutedThings": 0}, "minNumberOfExecutedThings"),
])
def test_abort_configurations_aws_refuses(criterion: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidRequestException, match=message):
        parse_abort({"criteriaList": [criterion]})


@pytest.mark.broker
async def test_a_real_service_paces_a_rollout_and_aborts_by_itself(
        broker_address: BrokerAddress, tmp_path: Path) -> None:
    """boto3 creates a paced job with an abort configuration on a running service; devices
    on MQTT are told of their executions at the rate (the service's own timer releases
    them), three of six fail theirs, and the service cancels the job at once: the devices
    still QUEUED are told they have nothing next."""
    service = JobsService(ServiceConfig(broker=broker_address, state=tmp_path / "jobs.db"))
    await service.start()
    things = [f"paced-{i}" for i in range(6)]
    try:
        async with contextlib.AsyncExitStack() as stack:
            devices = [await stack.enter_async_context(
                jobs_client(broker_address.host, broker_address.port, t)) for t in things]
            iot = iot_client(service.endpoint)
            await asyncio.to_thread(
                iot.create_job, jobId="paced", targets=[arn(t) for t in things], document=DOC,
                jobExecutionsRolloutConfig={"maximumPerMinute": 300},  # one every 0.2 s
                abortConfig=abort("FAILED", 50.0, executed=4))
            described = (await asyncio.to_thread(iot.describe_job, jobId="paced"))["job"]
            assert described["jobExecutionsRolloutConfig"] == {"maximumPerMinute": 300}
            assert described["abortConfig"]["criteriaList"][0]["failureType"] == "FAILED"
            told = []
            for device in devices:
                pushed = await device.next_notify_next(within=5.0)
                assert pushed["execution"]["jobId"] == "paced"
                told.append(time.monotonic())
            assert all(b - a >= 0.15 for a, b in zip(told, told[1:], strict=False)), told
            for device in devices[:3]:
                assert (await device.start_next()).kind == "accepted"
                assert (await device.update("paced", status="FAILED")).kind == "accepted"
            for device in devices[3:]:  # canceled while QUEUED: nothing next
                while "execution" in (pushed := await device.next_notify_next(within=3.0)):
                    pass
                assert pushed.get("execution") is None
            job = (await asyncio.to_thread(iot.describe_job, jobId="paced"))["job"]
            assert (job["status"], job["reasonCode"]) == ("CANCELED", "ABORT_CRITERIA_MET")
            assert job["isConcurrent"] is False
            assert job["jobProcessDetails"]["numberOfCanceledThings"] == 3
    finally:
        await service.stop()


def test_a_failed_execution_is_retried_while_retries_are_left(tmp_path: Path) -> None:
    store, _ = make(tmp_path)
    store.create_job("ota", targets=[arn("a")], document=DOC, retry_config={
        "criteriaList": [{"failureType": "FAILED", "numberOfRetries": 2}]})
    for attempt in range(3):
        started = store.start_next("a")
        assert started is not None
        assert (started.execution_number, started.retry_attempt) == (attempt + 1, attempt)
        store.drain()
        store.update("a", "ota", status=X.FAILED)
        pushed = store.drain()
        if attempt < 2:  # queued again: told so
            e = store.describe_job_execution("ota", "a")
            assert (e.status, e.execution_number) == (X.QUEUED, attempt + 2)
            assert topics.notify_next("a") in [p.topic for p in pushed]
            assert store.describe_job("ota").status.value == "IN_PROGRESS"
    e = store.describe_job_execution("ota", "a")
    assert (e.status, e.retry_attempt) == (X.FAILED, 2)
    assert store.describe_job("ota").status.value == "COMPLETED"


def test_timed_out_executions_retry_under_their_own_or_the_all_criterion(tmp_path: Path
                                                                         ) -> None:
    store, clock = make(tmp_path)
    store.create_job("ota", targets=[arn("a")], document=DOC, retry_config={
        "criteriaList": [{"failureType": "FAILED", "numberOfRetries": 1},
                         {"failureType": "ALL", "numberOfRetries": 1}]})
    store.start_next("a", step_timeout=1)
    clock.advance(61)
    store.tick()  # TIMED_OUT: counted under ALL
    assert store.describe_job_execution("ota", "a").retry_attempt == 1
    store.start_next("a", step_timeout=1)
    clock.advance(61)
    store.tick()  # ALL spent: it stays TIMED_OUT
    e = store.describe_job_execution("ota", "a")
    assert (e.status, e.retry_attempt) == (X.TIMED_OUT, 1)


def test_retry_rules() -> None:
    both = parse_retry({"criteriaList": [{"failureType": "FAILED", "numberOfRetries": 2},
                                         {"failureType": "ALL", "numberOfRetries": 3}]})
    assert retry_due(both, "FAILED", {"FAILED": 1}) == "FAILED"
    assert retry_due(both, "FAILED", {"FAILED": 2}) is None
    assert retry_due(both, "TIMED_OUT", {"FAILED": 2}) == "ALL"
    assert retry_due(both, "TIMED_OUT", {"FAILED": 2, "ALL": 1}) is None
    assert retry_due({"FAILED": 1}, "TIMED_OUT", {}) is None
    for bad, message in (
            ({"criteriaList": []}, "one or two criteria"),
            ({"criteriaList": [{"failureType": "REJECTED", "numberOfRetries": 1}]},
             "failureType: one of FAILED, TIMED_OUT, ALL"),
            ({"criteriaList": [{"failureType": "ALL", "numberOfRetries": 11}]},
             "numberOfRetries: must be an integer from 0 to 10"),
            ({"criteriaList": [{"failureType": "FAILED", "numberOfRetries": 6},
                               {"failureType": "ALL", "numberOfRetries": 6}]},
             "at most 10 retries in all")):
        with pytest.raises(InvalidRequestException, match=message):
            parse_retry(bad)


async def test_boto3_sees_the_configurations_and_the_retry_attempts(tmp_path: Path) -> None:
    async with running(tmp_path) as env:
        retry = {"criteriaList": [{"failureType": "FAILED", "numberOfRetries": 1}]}
        await env.call("create_job", jobId="ota", targets=[arn("a")], document=DOC,
                       jobExecutionsRetryConfig=retry,
                       jobExecutionsRolloutConfig={"maximumPerMinute": 100})
        env.store.tick()
        env.store.start_next("a")
        env.store.update("a", "ota", status=X.FAILED)
        job = (await env.call("describe_job", jobId="ota"))["job"]
        assert job["jobExecutionsRetryConfig"] == retry
        summaries = (await env.call("list_job_executions_for_thing", thingName="a"))[
            "executionSummaries"]
        assert [(s["jobExecutionSummary"]["executionNumber"],
                 s["jobExecutionSummary"]["retryAttempt"],
                 s["jobExecutionSummary"]["status"]) for s in summaries] == [(2, 1, "QUEUED")]
        code, status, message = await env.error(
            "create_job", jobId="bad", targets=[arn("a")], document=DOC,
            jobExecutionsRetryConfig={"criteriaList": [
                {"failureType": "FAILED", "numberOfRetries": 1},
                {"failureType": "FAILED", "numberOfRetries": 2}]})
        assert (code, status) == ("InvalidRequestException", 400)
        assert message == ("jobExecutionsRetryConfig.criteriaList[1].failureType: FAILED "
                           "given twice")


def at(seconds: float) -> str:
    """T0 + seconds as a schedulingConfig time (with seconds: the emulator's extension)."""
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(T0 + seconds))


@pytest.mark.parametrize(("behavior", "status", "a_after"), [
    ("STOP_ROLLOUT", "IN_PROGRESS", "IN_PROGRESS"),
    ("CANCEL", "CANCELED", "IN_PROGRESS"),
    ("FORCE_CANCEL", "CANCELED", "CANCELED"),
])
def test_a_scheduled_job_starts_at_its_start_and_ends_by_its_end_behavior(
        tmp_path: Path, behavior: str, status: str, a_after: str) -> None:
    store, clock = make(tmp_path, schedule_minimum_minutes=0)
    store.create_job("night", targets=[arn(t) for t in THINGS[:3]], document=DOC,
                     rollout_config={"maximumPerMinute": 60}, scheduling_config={
                         "startTime": at(100), "endTime": at(101), "endBehavior": behavior})
    assert store.describe_job("night").status.value == "SCHEDULED"
    assert store.next_due() == int(T0) + 100  # (times are whole seconds)
    store.tick()
    assert released(store, "night") == {}  # nothing before the start
    clock.advance(100)
    store.tick()
    assert store.describe_job("night").status.value == "IN_PROGRESS"
    assert set(released(store, "night")) == {"t0"}
    store.start_next("t0")
    clock.advance(1)
    store.tick()  # the end: t1 may have been released, t2 never is
    job = store.describe_job("night")
    assert (job.status.value, job.planned) == (status, 0)
    assert store.describe_job_execution("night", "t0").status.value == a_after
    clock.advance(60)
    store.tick()
    assert "t2" not in released(store, "night")


def test_an_unpaced_scheduled_job_releases_everything_at_its_start(tmp_path: Path) -> None:
    store, clock = make(tmp_path, schedule_minimum_minutes=0)
    store.groups.create("fleet")
    store.add_thing_to_group("fleet", "a")
    store.create_job("night", targets=["arn:aws:iot:us-east-1:123456789012:thinggroup/fleet"],
                     document=DOC, target_selection="CONTINUOUS",
                     scheduling_config={"startTime": at(60)})
    store.add_thing_to_group("fleet", "b")  # joins before the start: planned too
    assert released(store, "night") == {}
    clock.advance(60)
    store.tick()
    assert set(released(store, "night")) == {"a", "b"}
    store.cancel_job("night")
    assert store.next_due() is None


def test_schedules_aws_refuses(tmp_path: Path) -> None:
    store, _ = make(tmp_path)  # AWS's minimum: 30 minutes
    with pytest.raises(InvalidRequestException, match="startTime: at least 30 minutes"):
        store.create_job("j", targets=[arn("a")], document=DOC,
                         scheduling_config={"startTime": at(60)})
    with pytest.raises(InvalidRequestException, match="endTime: at least 30 minutes after"):
        store.create_job("j", targets=[arn("a")], document=DOC, scheduling_config={
            "startTime": at(3600), "endTime": at(3660)})
    with pytest.raises(InvalidRequestException, match="is not YYYY-MM-DDTHH:MM"):
        store.create_job("j", targets=[arn("a")], document=DOC,
                         scheduling_config={"startTime": "tomorrow"})
    with pytest.raises(InvalidRequestException, match="maintenanceWindows is not supported"):
        store.create_job("j", targets=[arn("a")], document=DOC, scheduling_config={
            "startTime": at(3600), "maintenanceWindows": []})
    store.create_job("j", targets=[arn("a")], document=DOC, scheduling_config={
        "startTime": time.strftime("%Y-%m-%dT%H:%M", time.gmtime(T0 + 3600))})
    assert store.describe_job("j").status.value == "SCHEDULED"


async def test_boto3_schedules_a_job(tmp_path: Path) -> None:
    async with running(tmp_path, schedule_minimum_minutes=0) as env:
        schedule = {"startTime": at(120), "endTime": at(180), "endBehavior": "CANCEL"}
        await env.call("create_job", jobId="night", targets=[arn("a")], document=DOC,
                       schedulingConfig=schedule)
        job = (await env.call("describe_job", jobId="night"))["job"]
        assert (job["status"], job["schedulingConfig"]) == ("SCHEDULED", schedule)
        assert [j["jobId"] for j in (await env.call("list_jobs", status="SCHEDULED"))[
            "jobs"]] == ["night"]
        env.sweep(120)
        assert await env.status("night") == "IN_PROGRESS"
        env.sweep(60)
        assert await env.status("night") == "CANCELED"


GROUP_ARN = "arn:aws:iot:us-east-1:123456789012:thinggroup/{}"


def test_update_job_paces_a_job_that_was_not(tmp_path: Path) -> None:
    store, clock = make(tmp_path)
    store.groups.create("fleet")
    store.create_job("cont", targets=[GROUP_ARN.format("fleet")], document=DOC,
                     target_selection="CONTINUOUS")
    store.update_job("cont", configs={"jobExecutionsRolloutConfig": {"maximumPerMinute": 60}})
    store.add_thing_to_group("fleet", "a")
    store.add_thing_to_group("fleet", "b")
    assert store.describe_job("cont").planned == 2  # planned, not queued at once
    store.tick()
    clock.advance(1)
    store.tick()
    assert set(released(store, "cont")) == {"a", "b"}


def test_a_stopped_rollout_gives_no_later_joiner_the_job(tmp_path: Path) -> None:
    store, clock = make(tmp_path, schedule_minimum_minutes=0)
    store.groups.create("fleet")
    for paced in (False, True):
        job = f"stop-{paced}"
        store.create_job(job, targets=[GROUP_ARN.format("fleet")], document=DOC,
                         target_selection="CONTINUOUS",
                         rollout_config={"maximumPerMinute": 60} if paced else None,
                         scheduling_config={"endTime": at(clock.t - T0 + 1)})
    clock.advance(1)
    store.tick()
    store.add_thing_to_group("fleet", "late")
    for paced in (False, True):
        assert released(store, f"stop-{paced}") == {}
        job = store.describe_job(f"stop-{paced}")
        assert (job.status.value, job.planned) == ("IN_PROGRESS", 0)


def test_a_scheduled_paced_snapshot_of_an_empty_group_completes(tmp_path: Path) -> None:
    store, clock = make(tmp_path, schedule_minimum_minutes=0)
    store.groups.create("empty")
    store.create_job("nothing", targets=[GROUP_ARN.format("empty")], document=DOC,
                     rollout_config={"maximumPerMinute": 60},
                     scheduling_config={"startTime": at(10)})
    clock.advance(10)
    store.tick()
    store.tick()
    assert store.describe_job("nothing").status.value == "COMPLETED"


def test_a_thing_that_left_a_continuous_job_is_not_retried(tmp_path: Path) -> None:
    store, _ = make(tmp_path)
    store.groups.create("fleet")
    store.add_thing_to_group("fleet", "a")
    store.create_job("cont", targets=[GROUP_ARN.format("fleet")], document=DOC,
                     target_selection="CONTINUOUS", retry_config={
                         "criteriaList": [{"failureType": "ALL", "numberOfRetries": 3}]})
    store.start_next("a")
    store.remove_thing_from_group("fleet", "a")  # IN_PROGRESS: runs on
    store.update("a", "cont", status=X.FAILED)
    assert store.describe_job_execution("cont", "a").status is X.FAILED


def test_a_scheduled_job_is_not_concurrent_before_its_start(tmp_path: Path) -> None:
    store, _ = make(tmp_path, schedule_minimum_minutes=0)
    store.create_job("later", targets=[arn("a")], document=DOC,
                     scheduling_config={"startTime": at(60)})
    job = store.describe_job("later")
    assert (job.status.value, job.planned) == ("SCHEDULED", 1)
    assert shapes.job_object(job)["isConcurrent"] is False


def test_a_template_timeout_is_checked_when_the_template_is_made(tmp_path: Path) -> None:
    store, _ = make(tmp_path)
    with pytest.raises(InvalidRequestException, match="inProgressTimeoutInMinutes"):
        store.templates.create(JobTemplate("t", DOC, "d", {}, 0))


def test_a_reused_job_id_counts_its_retries_afresh(tmp_path: Path) -> None:
    store, clock = make(tmp_path)
    retry = {"criteriaList": [{"failureType": "FAILED", "numberOfRetries": 1}]}
    for _ in range(2):
        store.create_job("ota", targets=[arn("a")], document=DOC, retry_config=retry)
        store.start_next("a")
        store.update("a", "ota", status=X.FAILED)
        e = store.describe_job_execution("ota", "a")
        assert (e.status, e.retry_attempt) == (X.QUEUED, 1)  # retried, every incarnation
        store.delete_job("ota", force=True)
        clock.advance(60)
        store.tick()
        store.tick()
