"""Behaviours: poll, device-client, each faulty one showing its fault, and plugins."""

from __future__ import annotations

import pytest

from devicesim.agent import EmitEvent, Publish, Rebooted, State, TimerKind
from devicesim.behaviours import (
    BEHAVIOURS,
    FAULTY,
    Behaviour,
    LostAccessNotice,
    Reaction,
    load_behaviour,
    resolve,
)
from devicesim.documents import document_digest
from devicesim.nvm import is_valid
from devicesim.wire import topics
from devicesim.wire.enums import JobExecutionStatus as S
from tests.test_agent_harness import FW, FW3, SLEEP, THING, Harness, MiniJobs, msg

STEPS = ["download", "install", "reboot", "verify"]
SLOW_FW = {**FW, "steps": [{"name": n, "seconds": 10} for n in STEPS]}


def test_registry_lists_every_behaviour() -> None:
    assert set(BEHAVIOURS) == {"reference", "sdk", "http", "poll", "device-client",
                               "clean-session",
                               "stuck", "no-rollback", "zombie", "reuse-confused"}
    assert set(BEHAVIOURS) > FAULTY
    for name, cls in BEHAVIOURS.items():
        assert resolve(name).name == name
        assert issubclass(cls, Behaviour)


@pytest.mark.parametrize("name", ["reference", "poll", "device-client"])
def test_correct_behaviours_complete_normal_jobs(name: str) -> None:
    h = Harness(name)
    h.service.queue("job1", FW)
    h.connect()
    h.run(max_time=60)
    assert h.of_kind("job_finished")[0].status == "SUCCEEDED"
    assert h.agent.nvm.active_image.version == "2.0.0"
    assert h.agent.nvm.journal is None


# --- poll -------------------------------------------------------------------------------------


def test_poll_ignores_notify_next_and_notices_through_its_describe() -> None:
    h = Harness("poll")
    h.service.queue("job1", SLOW_FW)
    h.connect()
    h.run_to_step("install")
    h.deliver_one()
    deleted_at = h.now
    h.push(h.service.force_delete("job1"))
    h.deliver_one()  # the notify-next: ignored
    assert not h.of_kind("lost_access")
    h.run(until=lambda: bool(h.of_kind("lost_access")))
    lost = h.of_kind("lost_access")[0]
    assert lost.reason == "ResourceNotFound"
    assert lost.timestamp - deleted_at <= 1.0  # the next poll, not the end of the 10 s step
    assert h.requests()[-2][0] == topics.describe(THING, "job1")
    h.run(max_time=5)
    assert h.agent.state is State.IDLE
    assert is_valid(h.agent.nvm, {("job1", 1)})


def test_poll_picks_up_work_while_idle_without_notify_next() -> None:
    h = Harness("poll")
    h.connect()
    h.run(until=lambda: h.agent.state is State.IDLE)
    h.service.queue("job1", SLEEP)  # its notify-next is never delivered
    h.run(until=lambda: bool(h.of_kind("job_finished")), max_time=5)
    assert h.of_kind("job_finished")[0].status == "SUCCEEDED"


# --- device-client ----------------------------------------------------------------------------


def test_device_client_runs_a_deleted_job_to_completion_then_gives_up_validly() -> None:
    h = Harness("device-client")
    h.service.queue("job1", FW)
    h.connect()
    h.run_to_step("install")
    h.push(h.service.force_delete("job1"))  # notify-next without execution: only logged
    h.run(until=lambda: h.agent.state is State.IDLE)
    assert h.kinds().count("step") == 4  # kept going, ignoring rejected progress updates
    assert h.kinds()[-4:] == ["image_committed", "lost_access", "recovered", "idle"]
    assert h.of_kind("lost_access")[0].reason == "ResourceNotFound"
    assert h.updates("job1")[-1]["status"] == "SUCCEEDED"
    assert h.agent.nvm.active_image.version == "2.0.0"
    assert is_valid(h.agent.nvm, {("job1", 1)})
    # it does not ask for more work: it waits for the next notify-next
    assert h.requests()[-1][0] != topics.start_next(THING)


def test_device_client_starts_from_notify_next_without_version_fields() -> None:
    h = Harness("device-client")
    h.connect()
    h.run()
    mark = len(h.published)
    h.push(h.service.queue("job2", SLEEP))
    h.run(max_time=60)
    assert h.of_kind("job_finished")[0].job_id == "job2"
    reqs = h.requests(mark)
    assert all(t != topics.start_next(THING) for t, _ in reqs)
    for _, r in reqs:
        assert set(r) <= {"status", "statusDetails", "clientToken"}


def test_device_client_ignores_a_duplicate_notify_next_and_remembers_one_while_busy() -> None:
    h = Harness("device-client")
    h.connect()
    h.run()
    first = h.service.queue("job1", SLOW_FW)
    h.push(first)
    h.run_to_step("download")
    h.push(first)  # duplicate of the running job
    h.push(h.service.queue("job2", SLEEP))  # head unchanged: no notify-next...
    job2 = h.service.find("job2")
    assert job2 is not None
    # ...so announce it by hand, as if the head had moved
    h.push([msg(topics.notify_next(THING), {"timestamp": 1, "execution": job2.data()})])
    h.run(max_time=120)
    assert [e.job_id for e in h.of_kind("job_started")] == ["job1", "job2"]
    assert [e.status for e in h.of_kind("job_finished")] == ["SUCCEEDED", "SUCCEEDED"]


def test_device_client_timings_follow_the_device_client() -> None:
    h = Harness("device-client")
    assert h.agent.config.reply_timeout == 10.0
    assert h.agent.config.retry_cap == 640.0
    assert h.agent.config.max_attempts is None
    h.service.fail_next["RequestThrottled"] = 12
    h.service.queue("job1", SLEEP)
    h.connect()
    h.run(max_time=10_000)
    delays = h.delays(TimerKind.RETRY)
    assert max(delays) <= 640.0
    assert max(delays) > 320.0
    assert h.of_kind("job_finished")[0].status == "SUCCEEDED"


# --- faulty behaviours: each fault shows ------------------------------------------------------


@pytest.mark.parametrize("step", STEPS)
def test_stuck_never_notices_and_never_goes_idle(step: str) -> None:
    h = Harness("stuck")
    h.service.queue("job1", FW)
    h.connect()
    h.run_to_step(step)
    h.deliver_one()
    mark = len(h.published)
    h.push(h.service.force_delete("job1"))
    h.run()
    assert h.agent.state is State.STUCK
    assert not h.of_kind("lost_access")
    assert h.kinds()[-1] == "step"
    assert h.published[mark:] == []
    assert not is_valid(h.agent.nvm, {("job1", 1)})  # the journal names a gone execution
    h.push(h.service.queue("job2", SLEEP))
    h.run()
    assert h.agent.state is State.STUCK


def test_stuck_ignoring_a_rejection_stays_stuck_after_reboot() -> None:
    h = Harness("stuck", service=MiniJobs(send_notify_next=False))
    h.service.queue("job1", FW)
    h.connect()
    h.run_to_step("install")
    h.service.force_delete("job1")
    h.run()
    assert h.agent.state is State.STUCK
    h.feed(Rebooted())
    h.run()
    assert h.agent.state is State.STUCK
    assert not h.of_kind("lost_access")


@pytest.mark.parametrize(("step", "complete", "verified"), [
    ("download", False, False), ("install", False, False), ("reboot", True, False),
    ("verify", True, False)])
def test_no_rollback_leaves_the_half_written_image_active(
        step: str, complete: bool, verified: bool) -> None:
    h = Harness("no-rollback")
    h.service.queue("job1", FW)
    h.connect()
    h.run_to_step(step)
    h.deliver_one()
    h.push(h.service.force_delete("job1"))
    h.run()
    assert h.of_kind("lost_access")[0].reason == "notify-next"
    assert not h.of_kind("rolled_back")
    recovered = h.of_kind("recovered")[0].nvm
    assert recovered is not None
    assert (recovered.active_slot, recovered.active_complete, recovered.active_verified) == (
        "B", complete, verified)
    assert h.agent.state is State.IDLE
    assert not is_valid(h.agent.nvm, set())


def test_zombie_keeps_updating_the_lost_execution() -> None:
    h = Harness("zombie")
    h.service.queue("job1", FW)
    h.connect()
    h.run_to_step("install")
    h.deliver_one()
    h.push(h.service.force_delete("job1"))
    h.run()
    noticed = next(i for i, a in enumerate(h.actions)
                   if isinstance(a, EmitEvent) and a.event.kind == "lost_access")
    after = [a for a in h.actions[noticed:]
             if isinstance(a, Publish) and a.topic == topics.update(THING, "job1")]
    assert len(after) == 3  # status updates for the execution it knows it lost
    assert h.agent.state is State.IDLE
    assert is_valid(h.agent.nvm, {("job1", 1)})  # it did recover its image


def test_reuse_confused_continues_the_old_document_after_reboot() -> None:
    h = Harness("reuse-confused")
    h.service.queue("job1", FW)
    h.connect()
    h.run_to_step("install")
    h.inbox.clear()
    h.service.force_delete("job1")
    h.service.queue("job1", FW3, execution_number=2)  # the jobId is reused
    h.feed(Rebooted())
    h.run()
    assert not h.of_kind("lost_access")
    finished = h.of_kind("job_finished")[0]
    # the new execution (2) was driven by the OLD document
    assert (finished.job_id, finished.execution_number) == ("job1", 2)
    assert finished.document_digest == document_digest(FW)
    assert h.service.find("job1", 2).status is S.SUCCEEDED  # type: ignore[union-attr]
    assert h.agent.nvm.active_image.version == "2.0.0"  # not 3.0.0


def test_reference_does_not_confuse_a_reused_job_id_after_reboot() -> None:
    h = Harness("reference")
    h.service.queue("job1", FW)
    h.connect()
    h.run_to_step("install")
    h.inbox.clear()
    h.service.force_delete("job1")
    h.service.queue("job1", FW3, execution_number=2)
    h.feed(Rebooted())
    h.run()
    assert h.of_kind("lost_access")[0].reason == "ResourceNotFound"
    finished = h.of_kind("job_finished")[0]
    assert (finished.execution_number, finished.document_digest) == (2, document_digest(FW3))
    assert h.agent.nvm.active_image.version == "3.0.0"


def test_reuse_confused_adopts_a_reused_job_id_announced_by_notify_next() -> None:
    h = Harness("reuse-confused", service=MiniJobs(send_notify_next=False))
    h.service.queue("job1", FW)
    h.connect()
    h.run_to_step("install")
    h.service.force_delete("job1")
    h.service.send_notify_next = True
    h.push(h.service.queue("job1", FW3, execution_number=2))
    h.run()
    assert not h.of_kind("lost_access")
    finished = h.of_kind("job_finished")[0]
    assert finished.execution_number == 2
    assert finished.document_digest == document_digest(FW)


# --- plugins ---------------------------------------------------------------------------------


class Oblivious(Behaviour):
    """A plugin that ignores every loss (IGNORE = carry on as if answered)."""

    name = "oblivious"

    def on_lost_access(self, notice: LostAccessNotice) -> Reaction:
        self.seen = [*getattr(self, "seen", []), notice]
        return Reaction.IGNORE


class NeedsArgs(Behaviour):
    def __init__(self, x: int) -> None:
        self.x = x


def test_plugin_is_loaded_by_module_and_class() -> None:
    cls = load_behaviour("tests.test_agent_behaviours:Oblivious")
    assert cls is Oblivious
    assert isinstance(resolve("tests.test_agent_behaviours:Oblivious"), Oblivious)


def test_plugin_hooks_are_consulted() -> None:
    behaviour = Oblivious()
    h = Harness(behaviour)
    h.service.queue("job1", FW)
    h.connect()
    h.run_to_step("install")
    h.deliver_one()
    h.push(h.service.force_delete("job1"))
    h.run()
    assert [(n.via.value, n.reason) for n in behaviour.seen] == [
        ("notify-next", "notify-next"), ("progress-update", "ResourceNotFound"),
        ("progress-update", "ResourceNotFound"), ("final-update", "ResourceNotFound")]
    assert behaviour.seen[-1].committed
    assert h.of_kind("job_finished")[0].status == "SUCCEEDED"


@pytest.mark.parametrize(("spec", "message"), [
    ("nocolon", "expected 'package.module:Class'"),
    (":Cls", "expected 'package.module:Class'"),
    ("no_such_module_xyz:Cls", "cannot import 'no_such_module_xyz'"),
    ("devicesim.behaviours:Nope", "has no 'Nope'"),
    ("devicesim.behaviours:Reaction", "not a subclass"),
    ("devicesim.behaviours:BEHAVIOURS", "not a subclass"),
])
def test_load_behaviour_errors_are_one_line(spec: str, message: str) -> None:
    with pytest.raises(ValueError, match=message) as info:
        load_behaviour(spec)
    assert "\n" not in str(info.value)


def test_resolve_errors() -> None:
    with pytest.raises(ValueError, match="unknown"):
        resolve("bogus")
    with pytest.raises(ValueError, match="without arguments"):
        resolve("tests.test_agent_behaviours:NeedsArgs")
