"""Hypothesis: whatever arrives, in whatever order, the agent never raises, never stalls,
and a correct behaviour's NVM is valid whenever it is idle.

A stateful machine drives one agent against the MiniJobs service while the rules inject the
drill's faults (force-delete, force-cancel, jobId reuse, lost messages and requests,
throttling, reboots, broker outages) plus forged replies to the outstanding request and
garbage. After settling (faults off, reconnect, run), a reference device has no work left.
"""

from __future__ import annotations

import json
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import Phase as HPhase
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    rule,
)

from devicesim.agent import (
    Connected,
    Disconnected,
    MessageReceived,
    Rebooted,
    State,
    TimerFired,
    TimerKind,
)
from devicesim.nvm import Phase, is_valid
from devicesim.wire import topics
from devicesim.wire.enums import JobExecutionStatus, RejectedErrorCode
from tests.test_agent_harness import FW, FW3, SLEEP, THING, Harness, msg

JOBS = st.sampled_from(["job1", "job2", "job3"])
DOCS = st.sampled_from([
    FW, FW3, SLEEP, {**FW, "failAtStep": "verify"}, {**FW3, "failAtStep": "download"},
    {"operation": "nope"}, {"operation": "sleep", "seconds": 0},
])
STATUSES = st.sampled_from(list(JobExecutionStatus))
CODES = st.sampled_from(list(RejectedErrorCode))
WAITING = (State.REQUESTING, State.FINISHING, State.RESYNCING, State.RECOVERING)


@st.composite
def executions(draw: st.DrawFn) -> dict[str, Any]:
    body: dict[str, Any] = {"jobId": draw(JOBS), "status": draw(STATUSES),
                            "versionNumber": draw(st.integers(1, 12)),
                            "executionNumber": draw(st.integers(1, 3))}
    if draw(st.booleans()):
        body["jobDocument"] = draw(DOCS)
    return body


@st.composite
def forged_bodies(draw: st.DrawFn) -> tuple[bool, dict[str, Any]]:
    """(rejected?, body) for a reply to whatever request is outstanding."""
    state = {"status": draw(STATUSES), "versionNumber": draw(st.integers(1, 12))}
    if draw(st.booleans()):
        body: dict[str, Any] = {"code": draw(CODES)}
        if draw(st.booleans()):
            body["executionState"] = state
        return True, body
    body = {}
    if draw(st.booleans()):
        body["execution"] = draw(executions())
    if draw(st.booleans()):
        body["executionState"] = state
    return False, body


GARBAGE_TOPICS = st.sampled_from([
    topics.notify_next(THING), topics.notify(THING),
    topics.accepted(topics.start_next(THING)), topics.rejected(topics.start_next(THING)),
    topics.accepted(topics.update(THING, "job1")), topics.rejected(topics.describe(THING, "job2")),
    "$aws/things/other/jobs/notify-next", "$aws/things/dev-1/jobs/x/y/z", "unrelated",
])
GARBAGE_PAYLOADS = st.one_of(
    st.binary(max_size=40),
    st.builds(lambda o: json.dumps(o).encode(), st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(max_size=8),
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
            st.sampled_from(["execution", "clientToken", "timestamp", "code", "jobId",
                             "status", "executionState", "versionNumber"]),
            inner, max_size=4),
        max_leaves=10)),
)


class AgentMachine(RuleBasedStateMachine):
    behaviour = "reference"

    def __init__(self) -> None:
        super().__init__()
        self.h = Harness(self.behaviour)
        self.gone: set[tuple[str, int]] = set()

    @initialize(jobs=st.lists(st.tuples(JOBS, DOCS), max_size=3))
    def start(self, jobs: list[tuple[str, dict[str, Any]]]) -> None:
        for job_id, doc in jobs:
            self.h.service.queue(job_id, doc)
        self.h.connect()

    # --- ordinary traffic -----------------------------------------------------------------

    @rule()
    def deliver(self) -> None:
        self.h.deliver_one()

    @rule(data=st.data())
    def fire_a_timer(self, data: st.DataObject) -> None:
        if self.h.timers:
            key = data.draw(st.sampled_from(sorted(self.h.timers)))
            self.h.now = max(self.h.now, self.h.timers.pop(key))
            self.h.feed(TimerFired(key))

    @rule(steps=st.integers(1, 30))
    def run_a_while(self, steps: int) -> None:
        for _ in range(steps):
            if not (self.h.deliver_one() or self.h.fire_next_timer()):
                break

    # --- the drill's faults -------------------------------------------------------------------

    @rule(job_id=JOBS, doc=DOCS, reuse_number=st.booleans())
    def queue(self, job_id: str, doc: dict[str, Any], reuse_number: bool) -> None:
        """Create a job (as AWS: only once no execution of that jobId is left); after a
        deletion the jobId is reused, and the execution number may start again at 1."""
        if self.h.service.find(job_id) is None:
            number = 1 if reuse_number else None
            self.h.push(self.h.service.queue(job_id, doc, execution_number=number))

    @rule(job_id=JOBS, cancel=st.booleans())
    def force_remove(self, job_id: str, cancel: bool) -> None:
        for e in self.h.service.executions:
            if e.job_id == job_id:
                self.gone.add((e.job_id, e.execution_number))
        remove = self.h.service.force_cancel if cancel else self.h.service.force_delete
        self.h.push(remove(job_id))

    @rule()
    def lose_a_message(self) -> None:
        if self.h.inbox:
            self.h.inbox.popleft()

    @rule(code=st.sampled_from(["RequestThrottled", "InternalError"]), n=st.integers(1, 4))
    def throttle(self, code: str, n: int) -> None:
        self.h.service.fail_next[code] = n

    @rule(from_disk=st.booleans())
    def reboot(self, from_disk: bool) -> None:
        on_disk = self.h.saved[-1] if from_disk and self.h.saved else None
        self.h.feed(Rebooted(nvm=on_disk))

    @rule()
    def disconnect(self) -> None:
        self.h.feed(Disconnected())

    @rule(session_present=st.booleans())
    def connect(self, session_present: bool) -> None:
        self.h.feed(Connected(session_present=session_present))

    # --- hostile input ------------------------------------------------------------------------

    @rule(forged=forged_bodies())
    def forged_reply(self, forged: tuple[bool, dict[str, Any]]) -> None:
        out = self.h.agent.outstanding
        if out is None or out.client_token is None:
            return
        rejected, body = forged
        topic = topics.rejected(out.topic) if rejected else topics.accepted(out.topic)
        self.h.feed(msg(topic, {**body, "timestamp": 1, "clientToken": out.client_token}))

    @rule(execution=st.none() | executions())
    def forged_notify_next(self, execution: dict[str, Any] | None) -> None:
        body: dict[str, Any] = {"timestamp": 1}
        if execution is not None:
            body["execution"] = execution
        self.h.feed(msg(topics.notify_next(THING), body))

    @rule(topic=GARBAGE_TOPICS, payload=GARBAGE_PAYLOADS)
    def garbage(self, topic: str, payload: bytes) -> None:
        self.h.feed(MessageReceived(topic, payload))

    # --- invariants ---------------------------------------------------------------------------

    @invariant()
    def valid_whenever_idle(self) -> None:
        nvm = self.h.agent.nvm
        if self.h.agent.state is State.IDLE:
            assert nvm.journal is None
            assert is_valid(nvm, self.gone)

    @invariant()
    def never_boots_a_bad_image(self) -> None:
        assert self.h.agent.nvm.active_image.good

    @invariant()
    def never_stalls(self) -> None:
        agent = self.h.agent
        out, timers = agent.outstanding, agent.timers
        if agent.state in WAITING:
            assert out is not None, agent.state
        if agent.state is State.RUNNING:
            assert out is not None or TimerKind.STEP in timers
        if out is not None and agent.connected:
            assert (TimerKind.REPLY in timers) == out.in_flight
            assert out.in_flight or TimerKind.RETRY in timers

    @invariant()
    def journal_matches_the_work(self) -> None:
        agent, j = self.h.agent, self.h.agent.nvm.journal
        if agent.state in (State.RUNNING, State.RESYNCING, State.FINISHING) and j is not None:
            assert agent.current is not None
            assert agent.current.job_id == j.job_id
        if agent.state is State.RUNNING and j is not None:
            assert j.phase is Phase.RUNNING

    def teardown(self) -> None:
        self.settle()

    def settle(self) -> None:
        """Faults off, reconnect, run: the device must end idle, valid, with nothing left."""
        h = self.h
        h.service.fail_next.clear()
        h.feed(Disconnected())
        h.feed(Connected())
        h.run(until=lambda: h.agent.state is State.IDLE and not h.inbox and not [
            e for e in h.service.executions if e.status.is_pending], max_time=100_000,
            max_steps=3000)  # "until": a polling device is never quiet
        assert h.agent.state is State.IDLE, h.agent.state
        assert is_valid(h.agent.nvm, self.gone)
        assert not [e for e in h.service.executions if e.status.is_pending]


class PollMachine(AgentMachine):
    behaviour = "poll"


class DeviceClientMachine(AgentMachine):
    behaviour = "device-client"

    @invariant()
    def never_boots_a_bad_image(self) -> None:  # it may keep a committed image of a lost job
        assert self.h.agent.nvm.active_image.good

    def settle(self) -> None:  # it waits for notify-next: only validity is promised
        h = self.h
        h.service.fail_next.clear()
        h.feed(Disconnected())
        h.feed(Connected())
        h.run(max_time=100_000)
        if h.agent.state is State.IDLE:
            assert is_valid(h.agent.nvm, self.gone)


# No "explain" phase: on Python 3.11 it traces every line and makes shrinking crawl.
_SETTINGS = settings(max_examples=200, stateful_step_count=40, deadline=None,
                     suppress_health_check=[HealthCheck.too_slow],
                     phases=[HPhase.explicit, HPhase.reuse, HPhase.generate, HPhase.shrink])
TestReference = AgentMachine.TestCase
TestReference.settings = _SETTINGS
TestPoll = PollMachine.TestCase
TestPoll.settings = settings(_SETTINGS, max_examples=100)
TestDeviceClient = DeviceClientMachine.TestCase
TestDeviceClient.settings = settings(_SETTINGS, max_examples=100)
