"""The reference job agent: happy paths, every way of noticing lost access, retries, resync,
reboots and malformed input. Pure: a virtual clock and an in-memory service (harness)."""

from __future__ import annotations

import json

import pytest

from devicesim.agent import (
    Agent,
    AgentConfig,
    Connected,
    Disconnected,
    MessageReceived,
    Publish,
    Purpose,
    Rebooted,
    State,
    TimerFired,
    TimerKind,
)
from devicesim.behaviours import Reference
from devicesim.documents import document_digest
from devicesim.nvm import Nvm, Phase, is_valid
from devicesim.wire import topics
from devicesim.wire.enums import JobExecutionStatus as S
from tests.test_agent_harness import FW, FW3, SLEEP, THING, Harness, MiniJobs, msg, reply_to

STEPS = ["download", "install", "reboot", "verify"]


def assert_valid_idle(h: Harness) -> None:
    assert h.agent.state is State.IDLE
    assert h.agent.nvm.journal is None
    assert is_valid(h.agent.nvm, set())


# --- happy paths ---------------------------------------------------------------------------


def test_firmware_update_runs_every_step_and_commits() -> None:
    h = Harness()
    h.service.queue("job1", FW)
    h.connect()
    h.run()
    assert h.kinds() == ["connected", "job_started", "step", "step", "step", "step",
                         "image_committed", "job_finished", "idle"]
    assert [e.step for e in h.of_kind("step")] == STEPS
    finished = h.of_kind("job_finished")[0]
    assert finished.status == "SUCCEEDED"
    assert finished.document_digest == document_digest(FW)
    assert h.agent.nvm.active == "B"
    assert h.agent.nvm.active_image.version == "2.0.0"
    assert_valid_idle(h)
    assert h.service.find("job1").status is S.SUCCEEDED  # type: ignore[union-attr]


def test_updates_carry_step_progress_expected_version_and_fresh_tokens() -> None:
    h = Harness()
    h.service.queue("job1", FW)
    h.connect()
    h.run()
    updates = h.updates("job1")
    assert [u["statusDetails"] for u in updates[:4]] == [
        {"step": s, "progress": f"{i + 1}/4"} for i, s in enumerate(STEPS)]
    assert [u["expectedVersion"] for u in updates] == [2, 3, 4, 5, 6]
    assert all(u["includeJobExecutionState"] and u["executionNumber"] == 1 for u in updates)
    assert updates[-1]["status"] == "SUCCEEDED"
    tokens = [r["clientToken"] for _, r in h.requests()]
    assert len(set(tokens)) == len(tokens)
    assert all(len(t) <= 64 for t in tokens)


def test_step_durations_come_from_the_document() -> None:
    doc = {**FW, "steps": [{"name": "download", "seconds": 5}, {"name": "install", "seconds": 1},
                           {"name": "reboot"}, {"name": "verify", "seconds": 0}]}
    h = Harness()
    h.service.queue("job1", doc)
    h.connect()
    h.run()
    started = {e.step: e.timestamp for e in h.of_kind("step")}
    assert started["install"] - started["download"] == pytest.approx(5)
    assert started["reboot"] - started["install"] == pytest.approx(1)
    assert started["verify"] - started["reboot"] == pytest.approx(0.1)


def test_sleep_job_writes_no_image() -> None:
    h = Harness()
    h.service.queue("nap", SLEEP)
    h.connect()
    h.run()
    assert h.kinds() == ["connected", "job_started", "step", "job_finished", "idle"]
    assert h.agent.nvm.active == "A"
    assert_valid_idle(h)


@pytest.mark.parametrize(("doc", "reason"), [
    ({"operation": "reformat-disk"}, "unknown operation 'reformat-disk'"),
    ({"operation": "firmware-update"}, "version must be"),
    ({"hello": 1}, "operation is required"),
])
def test_unusable_document_is_rejected_with_reason(doc: dict[str, object], reason: str) -> None:
    h = Harness()
    h.service.queue("bad", doc)
    h.service.queue("good", SLEEP)
    h.connect()
    h.run()
    rejected = h.updates("bad")[-1]
    assert rejected["status"] == "REJECTED"
    assert reason in rejected["statusDetails"]["reason"]
    assert h.of_kind("job_finished")[0].status == "REJECTED"
    assert h.service.find("good").status is S.SUCCEEDED  # type: ignore[union-attr]
    assert h.saved == [] or h.saved[0].journal is None or h.saved[0].journal.job_id == "good"
    assert_valid_idle(h)


def test_fail_at_step_rolls_back_and_reports_failed() -> None:
    h = Harness()
    h.service.queue("job1", {**FW, "failAtStep": "install"})
    h.connect()
    h.run()
    assert h.kinds()[-4:] == ["step", "rolled_back", "job_finished", "idle"]
    failed = h.updates("job1")[-1]
    assert failed["status"] == "FAILED"
    assert failed["statusDetails"] == {"reason": "injected failure at step install",
                                       "step": "install"}
    assert h.agent.nvm.active == "A"
    assert not h.agent.nvm.b.complete
    assert_valid_idle(h)


def test_queued_jobs_run_one_after_another() -> None:
    h = Harness()
    h.service.queue("job1", FW)
    h.service.queue("job2", FW3)
    h.connect()
    h.run()
    assert [e.job_id for e in h.of_kind("job_finished")] == ["job1", "job2"]
    assert h.agent.nvm.active == "A"  # B for 2.0.0, then A for 3.0.0
    assert h.agent.nvm.active_image.version == "3.0.0"


def test_idle_device_starts_next_on_notify_next() -> None:
    h = Harness()
    h.connect()
    h.run()
    assert h.agent.state is State.IDLE
    h.push(h.service.queue("job1", FW))
    h.run()
    assert h.of_kind("job_finished")[0].status == "SUCCEEDED"


def test_notify_next_while_start_next_is_in_flight_asks_again() -> None:
    h = Harness()
    h.connect()  # start-next sent, reply queued (nothing pending)
    early_reply = h.inbox.popleft()
    h.feed(h.service.queue("job1", SLEEP)[0])  # notify-next overtakes the reply
    h.feed(early_reply)
    assert h.agent.state is State.REQUESTING
    h.run()
    assert h.of_kind("job_finished")[0].job_id == "job1"


# --- lost access: each step, each path -----------------------------------------------------


@pytest.mark.parametrize("step", STEPS)
def test_force_delete_at_each_step_noticed_via_notify_next(step: str) -> None:
    h = Harness()
    h.service.queue("job1", FW)
    h.connect()
    h.run_to_step(step)
    mark = len(h.events)
    h.push(h.service.force_delete("job1"))
    h.run()
    assert h.kinds(mark) == ["lost_access", "rolled_back", "recovered", "idle"]
    lost = h.events[mark]
    assert (lost.job_id, lost.execution_number, lost.step, lost.reason) == (
        "job1", 1, step, "notify-next")
    recovered = h.of_kind("recovered")[0]
    assert recovered.nvm is not None
    assert recovered.nvm.active_slot == "A"
    assert recovered.nvm.active_complete
    assert recovered.nvm.active_verified
    assert recovered.nvm.journal_job_id is None
    assert_valid_idle(h)
    assert is_valid(h.agent.nvm, {("job1", 1)})


@pytest.mark.parametrize("step", STEPS)
def test_force_delete_noticed_via_rejected_update(step: str) -> None:
    h = Harness(service=MiniJobs(send_notify_next=False))
    h.service.queue("job1", FW)
    h.connect()
    h.run_to_step(step)
    h.service.force_delete("job1")
    h.run()
    lost = h.of_kind("lost_access")[0]
    assert lost.reason == "ResourceNotFound"
    if step == "verify":  # verify's own update was accepted: commit, then SUCCEEDED rejected
        assert not h.of_kind("rolled_back")
        assert h.agent.nvm.active_image.version == "2.0.0"
    else:  # the next step's update is rejected, before anything was committed
        assert h.of_kind("rolled_back")
        assert h.agent.nvm.active_image.version == "1.0.0"
    assert_valid_idle(h)


def test_force_delete_with_other_work_pending_moves_on_to_it() -> None:
    h = Harness()
    h.service.queue("job1", FW)
    h.service.queue("job2", FW3)
    h.connect()
    h.run_to_step("install")
    h.push(h.service.force_delete("job1"))  # notify-next names job2
    h.run()
    assert h.of_kind("lost_access")[0].reason == "notify-next"
    assert [(e.job_id, e.status) for e in h.of_kind("job_finished")] == [("job2", "SUCCEEDED")]
    assert h.agent.nvm.active_image.version == "3.0.0"
    assert_valid_idle(h)


def test_force_cancel_noticed_via_invalid_state_transition() -> None:
    h = Harness(service=MiniJobs(send_notify_next=False))
    h.service.queue("job1", FW)
    h.connect()
    h.run_to_step("reboot")
    h.service.force_cancel("job1")
    h.run()
    assert h.of_kind("lost_access")[0].reason == "InvalidStateTransition"
    assert h.service.find("job1").status is S.CANCELED  # type: ignore[union-attr]
    assert_valid_idle(h)


def test_force_cancel_noticed_via_terminal_state_reached() -> None:
    h = Harness(service=MiniJobs(send_notify_next=False,
                                 terminal_update_code="TerminalStateReached"))
    h.service.queue("job1", FW)
    h.connect()
    h.run_to_step("download")
    h.service.force_cancel("job1")
    h.run()
    assert h.of_kind("lost_access")[0].reason == "TerminalStateReached"
    assert_valid_idle(h)


def test_notify_next_naming_the_same_execution_is_not_lost_access() -> None:
    h = Harness()
    exe_msgs = h.service.queue("job1", FW)
    h.connect()
    h.run_to_step("install")
    h.push(exe_msgs)  # a late duplicate notify-next naming job1 exec 1
    h.run()
    assert not h.of_kind("lost_access")
    assert h.of_kind("job_finished")[0].status == "SUCCEEDED"


def test_notify_next_naming_a_reused_job_id_with_another_document_is_lost_access() -> None:
    h = Harness(service=MiniJobs(send_notify_next=False))
    h.service.queue("job1", FW)
    h.connect()
    h.run_to_step("install")
    h.service.force_delete("job1")
    h.service.send_notify_next = True
    h.push(h.service.queue("job1", FW3, execution_number=1))  # same jobId and number
    h.run()
    assert h.of_kind("lost_access")[0].reason == "notify-next"
    finished = h.of_kind("job_finished")
    assert [(e.job_id, e.document_digest) for e in finished] == [("job1", document_digest(FW3))]
    assert h.agent.nvm.active_image.version == "3.0.0"


def test_lost_access_after_commit_keeps_the_new_image() -> None:
    h = Harness()
    h.service.queue("job1", FW)
    h.connect()
    h.run(until=lambda: h.agent.state is State.FINISHING)
    assert h.agent.nvm.active == "B"
    h.inbox.clear()  # the final update was not delivered yet...
    h.service.force_delete("job1")
    # ...and reaches the service after the deletion
    final = h.published[-1]
    h.push(h.service.handle(final.topic, final.payload))
    h.run()
    assert h.kinds()[-3:] == ["lost_access", "recovered", "idle"]
    assert h.of_kind("lost_access")[0].reason == "ResourceNotFound"
    assert not h.of_kind("rolled_back")
    assert h.agent.nvm.active_image.version == "2.0.0"
    assert_valid_idle(h)


def test_notify_next_during_final_update_waits_for_the_reply() -> None:
    h = Harness()
    h.service.queue("job1", FW)
    h.connect()
    h.run(until=lambda: h.agent.state is State.FINISHING)
    reply = h.inbox.popleft()
    h.feed(msg(topics.notify_next(THING), {"timestamp": 1}))  # overtakes the accepted
    assert h.agent.state is State.FINISHING
    h.feed(reply)
    assert not h.of_kind("lost_access")
    assert h.of_kind("job_finished")[0].status == "SUCCEEDED"


def test_repeated_final_update_after_lost_reply_counts_as_success() -> None:
    h = Harness()
    h.service.queue("job1", FW)
    h.connect()
    h.run(until=lambda: h.agent.state is State.FINISHING)
    h.inbox.clear()  # the SUCCEEDED was applied but its accepted was lost
    h.run()
    assert not h.of_kind("lost_access")
    assert h.of_kind("job_finished")[0].status == "SUCCEEDED"
    assert_valid_idle(h)


def test_lost_access_while_rejecting_a_document() -> None:
    h = Harness()
    h.service.queue("bad", {"operation": "nope"})
    h.connect()
    h.run(until=lambda: h.agent.state is State.FINISHING)
    h.inbox.clear()
    h.service.force_delete("bad")
    final = h.published[-1]
    h.push(h.service.handle(final.topic, final.payload))
    h.run()
    assert h.kinds()[-3:] == ["lost_access", "recovered", "idle"]
    assert_valid_idle(h)


# --- retries, timeouts, resync --------------------------------------------------------------


def test_throttled_update_is_retried_with_growing_bounded_backoff() -> None:
    config = AgentConfig(retry_base=1.0, retry_cap=4.0, max_attempts=10)
    h = Harness(config=config)
    h.service.queue("job1", SLEEP)
    h.connect()
    h.deliver_one()  # start-next accepted; the first update goes out...
    h.inbox.clear()  # ...and is answered RequestThrottled below instead
    h.service.fail_next["RequestThrottled"] = 6
    h.fire(TimerKind.REPLY)
    h.run()
    delays = h.delays(TimerKind.RETRY)
    assert len(delays) == 7  # the lost reply, then six throttles
    nominal = [min(4.0, 2.0 ** n) for n in range(7)]
    assert all(0.5 * c <= d <= c for d, c in zip(delays, nominal, strict=True))  # jittered
    assert max(delays) <= config.retry_cap
    assert h.of_kind("job_finished")[0].status == "SUCCEEDED"
    assert not h.of_kind("lost_access")


def test_retries_are_bounded_then_lost_access() -> None:
    h = Harness(config=AgentConfig(max_attempts=3))
    h.service.queue("job1", FW)
    h.connect()
    h.run_to_step("install")
    h.inbox.clear()
    mark = len(h.published)
    h.service.fail_next["InternalError"] = 100
    h.fire(TimerKind.REPLY)
    h.run(until=lambda: bool(h.of_kind("lost_access")))
    assert h.of_kind("lost_access")[0].reason == "InternalError"
    assert len(h.updates("job1", since=mark)) == 2  # 3 attempts: the first + 2 resends
    assert h.agent.nvm.active == "A"
    assert h.agent.nvm.journal is None
    assert h.agent.state is State.REQUESTING


def test_start_next_retries_without_limit() -> None:
    h = Harness(config=AgentConfig(max_attempts=2, retry_cap=2.0))
    h.service.fail_next["RequestThrottled"] = 20
    h.service.queue("job1", SLEEP)
    h.connect()
    h.run()
    starts = [t for t, _ in h.requests() if t.endswith("start-next")]
    assert len(starts) >= 21
    assert h.of_kind("job_finished")[0].status == "SUCCEEDED"


def test_unanswered_request_is_resent_with_a_new_token_and_late_reply_ignored() -> None:
    h = Harness()
    h.service.queue("job1", FW)
    h.connect()
    h.run_to_step("download")
    late = h.inbox.popleft()  # the accepted for the download update is delayed
    first = h.agent.outstanding
    assert first is not None
    h.fire(TimerKind.REPLY)
    h.fire(TimerKind.RETRY)
    second = h.agent.outstanding
    assert second is not None
    assert second.client_token != first.client_token
    assert second.attempts == 1
    h.run()
    h.feed(late)  # long after: ignored, nothing changes
    assert not h.of_kind("error")
    assert h.of_kind("job_finished")[0].status == "SUCCEEDED"
    assert not h.of_kind("lost_access")


def test_unanswered_requests_give_up_as_lost_access_timeout() -> None:
    h = Harness(config=AgentConfig(max_attempts=3, reply_timeout=2.0))
    h.service.queue("job1", FW)
    h.connect()
    h.run_to_step("reboot")
    h.inbox.clear()
    h.deliver_request = lambda p: not p.topic.endswith("/update")  # updates vanish
    h.run(until=lambda: bool(h.of_kind("lost_access")))
    assert h.of_kind("lost_access")[0].reason == "timeout"
    assert h.of_kind("rolled_back")
    # start-next hands the still-existing execution back: the device starts it afresh
    h.deliver_request = lambda p: True
    h.run()
    assert h.of_kind("job_finished")[-1].status == "SUCCEEDED"


def test_version_mismatch_resyncs_with_describe_then_continues() -> None:
    h = Harness()
    h.service.queue("job1", FW)
    h.connect()
    h.run_to_step("install")
    h.inbox.clear()  # install's update was applied, its reply lost
    exe = h.service.find("job1")
    assert exe is not None
    exe.version += 5  # and something else moved the version on
    h.fire(TimerKind.REPLY)
    h.fire(TimerKind.RETRY)  # resend -> VersionMismatch
    assert h.deliver_one()
    assert h.agent.state is State.RESYNCING
    assert h.requests()[-1][0] == topics.describe(THING, "job1")
    h.run()
    assert not h.of_kind("lost_access")
    assert h.of_kind("job_finished")[0].status == "SUCCEEDED"
    assert h.service.find("job1").status is S.SUCCEEDED  # type: ignore[union-attr]


def test_version_mismatch_then_describe_shows_gone_is_lost_access() -> None:
    h = Harness(service=MiniJobs(send_notify_next=False))
    h.service.queue("job1", FW)
    h.connect()
    h.run_to_step("verify")
    pub = h.published[-1]
    h.inbox.clear()
    h.feed(reply_to(pub, {"code": "VersionMismatch",
                          "executionState": {"status": "IN_PROGRESS", "versionNumber": 9}},
                    rejected=True))
    h.service.force_delete("job1")
    h.run()
    assert h.of_kind("lost_access")[0].reason == "ResourceNotFound"
    assert_valid_idle(h)


def test_disconnect_mid_request_resends_on_reconnect() -> None:
    h = Harness()
    h.service.queue("job1", FW)
    h.connect()
    h.run_to_step("download")
    h.inbox.clear()
    before = h.agent.outstanding
    h.feed(Disconnected())
    assert TimerKind.REPLY not in h.agent.timers
    h.now += 30
    h.feed(Connected(session_present=True))
    after = h.agent.outstanding
    assert before is not None
    assert after is not None
    assert after.client_token != before.client_token
    h.run()
    assert h.of_kind("job_finished")[0].status == "SUCCEEDED"


def test_steps_continue_offline_and_reports_wait_for_the_connection() -> None:
    h = Harness()
    h.service.queue("job1", FW)
    h.connect()
    h.run_to_step("download")
    h.deliver_one()
    h.feed(Disconnected())
    h.fire(TimerKind.STEP)  # download done offline: install starts, its update waits
    assert h.agent.current is not None
    assert h.agent.current.step == "install"
    outstanding = h.agent.outstanding
    assert outstanding is not None
    assert not outstanding.in_flight
    h.feed(Connected())
    h.run()
    assert h.of_kind("job_finished")[0].status == "SUCCEEDED"


def test_reconnect_while_running_checks_the_execution() -> None:
    h = Harness()
    h.service.queue("job1", SLEEP)
    h.connect()
    h.run_to_step("sleep")
    h.deliver_one()
    h.feed(Disconnected())
    h.service.force_delete("job1")  # notify-next lost while offline
    h.feed(Connected(session_present=False))
    assert h.requests()[-1][0] == topics.describe(THING, "job1")
    h.run()
    assert h.of_kind("lost_access")[0].reason == "ResourceNotFound"


# --- reboot ---------------------------------------------------------------------------------


@pytest.mark.parametrize("step", STEPS)
def test_reboot_mid_step_resumes_from_the_journaled_step(step: str) -> None:
    h = Harness()
    h.service.queue("job1", FW)
    h.connect()
    h.run_to_step(step)
    h.deliver_one()
    mark = len(h.events)
    h.feed(Rebooted())
    assert h.agent.state is State.RECOVERING
    # every timer of the old life was cancelled; only the resume describe's reply timer is left
    assert list(h.timers) == [h.agent.timers[TimerKind.REPLY][0]]
    h.run()
    kinds = h.kinds(mark)
    assert kinds[0] == "rebooted"
    rebooted = h.events[mark].nvm
    assert rebooted is not None
    assert rebooted.journal_job_id == "job1"
    resumed = [e.step for e in h.events[mark:] if e.kind == "step"]
    assert resumed == STEPS[STEPS.index(step):]
    assert not h.of_kind("lost_access")
    assert h.of_kind("job_finished")[0].status == "SUCCEEDED"
    assert_valid_idle(h)


@pytest.mark.parametrize("step", STEPS)
def test_reboot_with_deleted_execution_rolls_back(step: str) -> None:
    h = Harness()
    h.service.queue("job1", FW)
    h.connect()
    h.run_to_step(step)
    h.inbox.clear()
    h.service.force_delete("job1")
    h.feed(Rebooted())
    h.run()
    lost = h.of_kind("lost_access")[0]
    assert lost.reason == "ResourceNotFound"
    assert lost.step == step
    assert h.of_kind("rolled_back")
    assert_valid_idle(h)


def test_reboot_with_canceled_execution_rolls_back_via_describe() -> None:
    h = Harness()
    h.service.queue("job1", FW)
    h.connect()
    h.run_to_step("install")
    h.inbox.clear()
    h.service.force_cancel("job1")
    h.feed(Rebooted())
    h.run()
    assert h.of_kind("lost_access")[0].reason == "describe"
    assert_valid_idle(h)


def test_reboot_with_terminal_state_reached_describe_rolls_back() -> None:
    h = Harness(service=MiniJobs(terminal_describe="TerminalStateReached"))
    h.service.queue("job1", FW)
    h.connect()
    h.run_to_step("install")
    h.inbox.clear()
    h.service.force_cancel("job1")
    h.feed(Rebooted())
    h.run()
    assert h.of_kind("lost_access")[0].reason == "TerminalStateReached"
    assert_valid_idle(h)


def test_reboot_after_commit_resends_the_final_status() -> None:
    h = Harness()
    h.service.queue("job1", FW)
    h.connect()
    h.run(until=lambda: h.agent.state is State.FINISHING)
    h.inbox.clear()
    h.service.find("job1").status = S.IN_PROGRESS  # type: ignore[union-attr]
    h.service.find("job1").version -= 1  # type: ignore[union-attr]  # the update was lost
    h.feed(Rebooted())
    assert h.agent.nvm.journal is not None
    assert h.agent.nvm.journal.phase is Phase.DONE
    h.run()
    assert h.updates("job1")[-1]["status"] == "SUCCEEDED"
    assert h.of_kind("job_finished")[0].status == "SUCCEEDED"
    assert_valid_idle(h)


def test_reboot_after_final_status_was_applied_just_finishes() -> None:
    h = Harness()
    h.service.queue("job1", FW)
    h.connect()
    h.run(until=lambda: h.agent.state is State.FINISHING)
    h.inbox.clear()  # SUCCEEDED applied, reply lost, then a reboot
    n_updates = len(h.updates("job1"))
    h.feed(Rebooted())
    h.run()
    assert len(h.updates("job1")) == n_updates
    assert h.of_kind("job_finished")[0].status == "SUCCEEDED"
    assert not h.of_kind("lost_access")


def test_device_constructed_with_a_journal_recovers_on_first_connect() -> None:
    h = Harness()
    h.service.queue("job1", FW)
    h.connect()
    h.run_to_step("reboot")
    nvm = h.agent.nvm
    h2 = Harness(nvm=nvm, service=h.service)  # the process restarted from disk
    h2.service.force_delete("job1")
    h2.connect()
    h2.run()
    assert h2.kinds()[:4] == ["connected", "lost_access", "rolled_back", "recovered"]
    assert_valid_idle(h2)


def test_reboot_can_restore_an_older_nvm_from_disk() -> None:
    h = Harness()
    h.service.queue("job1", FW)
    h.connect()
    h.run_to_step("install")
    on_disk = h.saved[0]  # only the first save made it
    h.inbox.clear()
    h.feed(Rebooted(nvm=on_disk))
    assert h.agent.nvm == on_disk
    h.run()
    assert h.of_kind("job_finished")[0].status == "SUCCEEDED"


# --- malformed input never raises -----------------------------------------------------------

GARBAGE = [
    (topics.notify_next(THING), b"not json"),
    (topics.notify_next(THING), b"\xff\xfe"),
    (topics.notify_next(THING), b"[1,2]"),
    (topics.notify_next(THING), b'{"execution": 5, "timestamp": 1}'),
    (topics.notify_next(THING), b'{"execution": {"jobId": "a/b", "status": "QUEUED", '
                                b'"versionNumber": 1, "executionNumber": 1}, "timestamp": 1}'),
    (topics.notify_next(THING), b'{"execution": {"jobId": "x", "status": "WHAT", '
                                b'"versionNumber": 1, "executionNumber": 1}, "timestamp": 1}'),
    (topics.notify(THING), b'{"jobs": 3, "timestamp": 1}'),
    (topics.accepted(topics.start_next(THING)), b'{"execution": []}'),
    (topics.rejected(topics.update(THING, "job1")), b'{"code": "Nope", "timestamp": 1}'),
    (topics.rejected(topics.update(THING, "job1")), b'{"timestamp": 1}'),
    ("$aws/things/other-thing/jobs/notify-next", b'{"timestamp": 1}'),
    ("$aws/things/dev-1/jobs/foo/bar/baz", b"{}"),
    ("some/random/topic", b"{}"),
    (topics.notify_next(THING), b"[" * 100_000),
    (topics.notify_next(THING), b"{" + b" " * (130 * 1024) + b"}"),
]


@pytest.mark.parametrize(("topic", "payload"), GARBAGE)
@pytest.mark.parametrize("at", ["idle", "running", "finishing"])
def test_malformed_messages_record_an_error_and_change_nothing(
        topic: str, payload: bytes, at: str) -> None:
    h = Harness()
    h.service.queue("job1", FW)
    h.connect()
    if at == "running":
        h.run_to_step("install")
    else:
        h.run(until=lambda: h.agent.state is State(at))
    state, nvm, outstanding = h.agent.state, h.agent.nvm, h.agent.outstanding
    actions = h.feed(MessageReceived(topic, payload))
    assert h.events[-1].kind == "error"
    assert len(actions) == 1
    assert (h.agent.state, h.agent.nvm, h.agent.outstanding) == (state, nvm, outstanding)
    h.run()
    assert h.of_kind("job_finished")[0].status == "SUCCEEDED"


def test_replies_that_are_not_ours_are_ignored_silently() -> None:
    h = Harness()
    h.service.queue("job1", FW)
    h.connect()
    h.run_to_step("install")
    pub = h.published[-1]
    for stray in [
        reply_to(pub, {}, token="someone-else"),
        reply_to(pub, {}, token=None),
        reply_to(pub, {"code": "ResourceNotFound"}, rejected=True, token="1:dead:dev-1"),
        # our token, but on another request's reply topic
        msg(topics.accepted(topics.describe(THING, "job1")),
            {"timestamp": 1, "clientToken": json.loads(pub.payload)["clientToken"]}),
        msg(topics.accepted(topics.get_pending(THING)), {"timestamp": 1, "inProgressJobs": [],
                                                        "queuedJobs": []}),
        msg(topics.start_next(THING), {"clientToken": "x"}),  # a request echoed back
    ]:
        assert h.feed(stray) == []
    h.run()
    assert h.of_kind("job_finished")[0].status == "SUCCEEDED"


def test_invalid_request_rejection_is_an_error_not_lost_access() -> None:
    h = Harness()
    h.service.queue("job1", FW)
    h.connect()
    h.run_to_step("install")
    pub = h.published[-1]
    h.inbox.clear()
    h.feed(reply_to(pub, {"code": "InvalidRequest", "message": "bad\nthing"}, rejected=True))
    assert h.events[-1].kind == "error"
    assert "\n" not in (h.events[-1].reason or "")
    h.run()
    assert not h.of_kind("lost_access")
    assert h.of_kind("job_finished")[0].status == "SUCCEEDED"


def test_stale_timer_keys_are_ignored() -> None:
    h = Harness()
    h.service.queue("job1", FW)
    h.connect()
    h.run_to_step("download")
    assert h.feed(TimerFired("step:0")) == []
    assert h.feed(TimerFired("nonsense")) == []


def test_agent_is_deterministic_for_a_seed() -> None:
    def trace(seed: int) -> list[bytes]:
        h = Harness(seed=seed, service=MiniJobs())
        h.service.fail_next["RequestThrottled"] = 3
        h.service.queue("job1", FW)
        h.connect()
        h.run()
        return [p.payload for p in h.published]

    assert trace(7) == trace(7)
    assert trace(7) != trace(8)


def test_public_view() -> None:
    agent = Agent(THING, Reference(), Nvm.factory(), __import__("random").Random(1))
    assert agent.state is State.BOOTING
    assert agent.current is None
    assert agent.outstanding is None
    actions = agent.handle(Connected(), 5.0)
    assert isinstance(actions[-2], Publish)
    out = agent.outstanding
    assert out is not None
    assert out.purpose is Purpose.START_NEXT
    assert agent.timers[TimerKind.REPLY][1] == 15.0


def test_final_update_applied_then_version_mismatch_counts_as_success() -> None:
    """A service that checks expectedVersion before terminality answers the resend of an
    already-applied SUCCEEDED with VersionMismatch carrying SUCCEEDED: that is success."""
    h = Harness()
    h.service.queue("job1", FW)
    h.connect()
    h.run(until=lambda: h.agent.state is State.FINISHING)
    final = h.published[-1]
    h.inbox.clear()
    h.feed(reply_to(final, {"code": "VersionMismatch", "executionState": {
        "status": "SUCCEEDED", "versionNumber": 7}}, rejected=True))
    assert h.of_kind("job_finished")[0].status == "SUCCEEDED"
    assert not h.of_kind("lost_access")


def test_resync_of_a_final_update_that_was_applied_counts_as_success() -> None:
    h = Harness()
    h.service.queue("job1", FW)
    h.connect()
    h.run(until=lambda: h.agent.state is State.FINISHING)
    final = h.published[-1]
    h.inbox.clear()  # applied by the service; its accepted lost
    h.feed(reply_to(final, {"code": "VersionMismatch"}, rejected=True))  # no executionState
    assert h.agent.state is State.RESYNCING
    h.feed(msg(topics.notify_next(THING), {"timestamp": 1}))  # the head moved on: no alarm
    assert h.agent.state is State.RESYNCING
    h.run()
    assert h.of_kind("job_finished")[0].status == "SUCCEEDED"
    assert not h.of_kind("lost_access")
