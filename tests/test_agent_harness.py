"""Test support for the agent tests: a tiny in-memory jobs service and a virtual-clock driver.

``MiniJobs`` is a deliberately small stand-in for the jobs service (spec §5, §7, §13
defaults), enough to answer a single device; it is not ``fleet`` and shares nothing with it.
``Harness`` runs an :class:`~devicesim.agent.Agent` against it as a discrete-event simulation:
published requests go to the service, its replies and pushes queue in an inbox, timers fire
in time order. Nothing sleeps.
"""

from __future__ import annotations

import json
import random
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from devicesim.agent import (
    Action,
    Agent,
    AgentConfig,
    CancelTimer,
    Connected,
    EmitEvent,
    Event,
    MessageReceived,
    Publish,
    SaveNvm,
    SetTimer,
    TimerFired,
    TimerKind,
)
from devicesim.behaviours import Behaviour, resolve
from devicesim.nvm import Nvm
from devicesim.wire import topics
from devicesim.wire.enums import JobExecutionStatus as S
from devicesim.wire.events import DeviceEvent
from devicesim.wire.messages import JobExecutionData, JobExecutionState

THING = "dev-1"
FW = {"operation": "firmware-update", "version": "2.0.0"}
FW3 = {"operation": "firmware-update", "version": "3.0.0"}
SLEEP = {"operation": "sleep", "seconds": 1.0}


@dataclass
class Exe:
    job_id: str
    execution_number: int
    document: dict[str, Any]
    status: S = S.QUEUED
    version: int = 1
    queued_at: int = 0
    details: dict[str, str] | None = None

    def data(self, with_document: bool = True) -> dict[str, Any]:
        return JobExecutionData(
            job_id=self.job_id, job_document=self.document if with_document else None,
            status=self.status, status_details=self.details, queued_at=self.queued_at,
            last_updated_at=self.queued_at, version_number=self.version,
            execution_number=self.execution_number).to_dict()

    def state(self) -> dict[str, Any]:
        return JobExecutionState(status=self.status, status_details=self.details,
                                 version_number=self.version).to_dict()


def msg(topic: str, obj: dict[str, Any]) -> MessageReceived:
    return MessageReceived(topic, json.dumps(obj).encode())


@dataclass
class MiniJobs:
    thing: str = THING
    terminal_update_code: str = "InvalidStateTransition"
    terminal_describe: str = "accepted"  # or "TerminalStateReached"
    send_notify_next: bool = True
    executions: list[Exe] = field(default_factory=list)
    requests: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    #: code -> how many more requests to reject with it (RequestThrottled, InternalError)
    fail_next: dict[str, int] = field(default_factory=dict)
    numbers: dict[str, int] = field(default_factory=dict)  # highest executionNumber per job
    clock: int = 1_700_000_000

    # --- control-plane side ---------------------------------------------------------------

    def queue(self, job_id: str, document: dict[str, Any],
              execution_number: int | None = None) -> list[MessageReceived]:
        before = self._head()
        number = execution_number or self.numbers.get(job_id, 0) + 1
        self.numbers[job_id] = max(number, self.numbers.get(job_id, 0))
        self.executions.append(Exe(job_id, number, document, queued_at=self._tick()))
        return self._notify(before)

    def force_delete(self, job_id: str) -> list[MessageReceived]:
        before = self._head()
        self.executions = [e for e in self.executions if e.job_id != job_id]
        return self._notify(before, force=True)

    def force_cancel(self, job_id: str) -> list[MessageReceived]:
        before = self._head()
        for e in self.executions:
            if e.job_id == job_id and e.status.is_pending:
                e.status, e.version = S.CANCELED, e.version + 1
        return self._notify(before, force=True)

    def find(self, job_id: str, number: int | None = None) -> Exe | None:
        matches = [e for e in self.executions if e.job_id == job_id
                   and (number is None or e.execution_number == number)]
        return matches[-1] if matches else None

    # --- data plane -----------------------------------------------------------------------

    def handle(self, topic: str, payload: bytes) -> list[MessageReceived]:
        jt = topics.parse_jobs_topic(topic)
        assert jt is not None
        assert jt.kind is topics.Kind.REQUEST
        req = json.loads(payload) if payload else {}
        self.requests.append((topic, req))
        token = req.get("clientToken")
        for code, left in list(self.fail_next.items()):
            if left > 0:
                self.fail_next[code] = left - 1
                return [self._rejected(topic, token, code)]
        before = self._head()
        if jt.operation is topics.Operation.START_NEXT:
            head = self._head()
            reply: dict[str, Any] = {}
            if head is not None:
                if head.status is S.QUEUED:
                    head.status, head.version = S.IN_PROGRESS, head.version + 1
                reply["execution"] = head.data()
            return [self._accepted(topic, token, reply)]
        assert jt.job_id is not None
        exe = self.find(jt.job_id, req.get("executionNumber"))
        if exe is None:
            return [self._rejected(topic, token, "ResourceNotFound")]
        if jt.operation is topics.Operation.DESCRIBE:
            if exe.status.is_terminal and self.terminal_describe != "accepted":
                return [self._rejected(topic, token, self.terminal_describe)]
            return [self._accepted(topic, token, {
                "execution": exe.data(req.get("includeJobDocument", True))})]
        # update
        if exe.status.is_terminal:
            extra = {"executionState": exe.state()} \
                if self.terminal_update_code == "InvalidStateTransition" else {}
            return [self._rejected(topic, token, self.terminal_update_code, extra)]
        expected = req.get("expectedVersion")
        if expected is not None and int(expected) != exe.version:
            return [self._rejected(topic, token, "VersionMismatch",
                                   {"executionState": exe.state()})]
        exe.status, exe.version = S(req["status"]), exe.version + 1
        if "statusDetails" in req:
            exe.details = req["statusDetails"]
        body = {"executionState": exe.state()} if req.get("includeJobExecutionState") else {}
        return [self._accepted(topic, token, body), *self._notify(before)]

    # --- helpers ----------------------------------------------------------------------------

    def _pending(self) -> list[Exe]:
        pending = [e for e in self.executions if e.status.is_pending]
        return sorted(pending, key=lambda e: (e.status is not S.IN_PROGRESS, e.queued_at))

    def _head(self) -> Exe | None:
        pending = self._pending()
        return pending[0] if pending else None

    def _notify(self, before: Exe | None, force: bool = False) -> list[MessageReceived]:
        head = self._head()
        if not self.send_notify_next or (head is before and not force):
            return []
        body: dict[str, Any] = {"timestamp": self._tick()}
        if head is not None:
            body["execution"] = head.data()
        return [msg(topics.notify_next(self.thing), body)]

    def _accepted(self, topic: str, token: str | None, body: dict[str, Any]) -> MessageReceived:
        body = {**body, "timestamp": self._tick()}
        if token is not None:
            body["clientToken"] = token
        return msg(topics.accepted(topic), body)

    def _rejected(self, topic: str, token: str | None, code: str,
                  extra: dict[str, Any] | None = None) -> MessageReceived:
        body = {"code": code, "message": code, "timestamp": self._tick(), **(extra or {})}
        if token is not None:
            body["clientToken"] = token
        return msg(topics.rejected(topic), body)

    def _tick(self) -> int:
        self.clock += 1
        return self.clock


class Harness:
    """An agent, a MiniJobs service and a virtual clock."""

    def __init__(self, behaviour: Behaviour | str = "reference", *, nvm: Nvm | None = None,
                 seed: int = 0, config: AgentConfig | None = None,
                 service: MiniJobs | None = None) -> None:
        self.service = service or MiniJobs()
        if isinstance(behaviour, str):
            behaviour = resolve(behaviour)
        self.agent = Agent(THING, behaviour, nvm or Nvm.factory(), random.Random(seed), config)
        self.now = 1000.0
        self.inbox: deque[MessageReceived] = deque()
        self.timers: dict[str, float] = {}
        self.published: list[Publish] = []
        self.events: list[DeviceEvent] = []
        self.saved: list[Nvm] = []
        self.actions: list[Action] = []
        self.timer_log: list[tuple[str, float, float]] = []  # (key, set at, due at)
        #: return False to lose a request before the service sees it
        self.deliver_request: Callable[[Publish], bool] = lambda p: True
        #: return False to lose a message before the device sees it
        self.deliver_message: Callable[[MessageReceived], bool] = lambda m: True

    # --- driving --------------------------------------------------------------------------

    def feed(self, event: Event) -> list[Action]:
        actions = self.agent.handle(event, self.now)
        self.actions.extend(actions)
        for action in actions:
            match action:
                case Publish():
                    self.published.append(action)
                    if action.topic.startswith("$aws/") and self.deliver_request(action):
                        self.inbox.extend(self.service.handle(action.topic, action.payload))
                case SetTimer():
                    self.timers[action.key] = action.at
                    self.timer_log.append((action.key, self.now, action.at))
                case CancelTimer():
                    self.timers.pop(action.key, None)
                case EmitEvent():
                    self.events.append(action.event)
                case SaveNvm():
                    self.saved.append(action.nvm)
        return actions

    def connect(self) -> list[Action]:
        return self.feed(Connected(session_present=False))

    def push(self, messages: list[MessageReceived]) -> None:
        self.inbox.extend(messages)

    def deliver_one(self) -> bool:
        while self.inbox:
            m = self.inbox.popleft()
            if self.deliver_message(m):
                self.feed(m)
                return True
        return False

    def fire(self, kind: TimerKind) -> None:
        key, at = self.agent.timers[kind]
        self.now = max(self.now, at)
        self.timers.pop(key, None)
        self.feed(TimerFired(key))

    def fire_next_timer(self) -> bool:
        if not self.timers:
            return False
        key, at = min(self.timers.items(), key=lambda kv: kv[1])
        self.now = max(self.now, at)
        del self.timers[key]
        self.feed(TimerFired(key))
        return True

    def run(self, until: Callable[[], bool] | None = None, *, max_time: float = 3600.0,
            max_steps: int = 10_000) -> None:
        """Deliver messages, then fire timers in time order, until ``until()`` or quiet."""
        deadline = self.now + max_time
        for _ in range(max_steps):
            if until is not None and until():
                return
            if self.deliver_one():
                continue
            if not self.timers or min(self.timers.values()) > deadline:
                return
            self.fire_next_timer()
        raise AssertionError("harness: too many steps")

    def run_to_step(self, step: str) -> None:
        self.run(until=lambda: bool(self.events) and self.events[-1].kind == "step"
                 and self.events[-1].step == step)
        assert self.events[-1].step == step, self.kinds()

    # --- looking ------------------------------------------------------------------------

    def delays(self, kind: TimerKind) -> list[float]:
        return [at - set_at for key, set_at, at in self.timer_log
                if key.startswith(kind.value + ":")]

    def kinds(self, since: int = 0) -> list[str]:
        return [e.kind.value for e in self.events[since:]]

    def of_kind(self, kind: str) -> list[DeviceEvent]:
        return [e for e in self.events if e.kind == kind]

    def requests(self, since: int = 0) -> list[tuple[str, dict[str, Any]]]:
        return [(p.topic, json.loads(p.payload)) for p in self.published[since:]
                if p.topic.startswith("$aws/")]

    def updates(self, job_id: str, since: int = 0) -> list[dict[str, Any]]:
        topic = topics.update(THING, job_id)
        return [r for t, r in self.requests(since) if t == topic]


def reply_to(publish: Publish, body: dict[str, Any], *, rejected: bool = False,
             token: str | None = "same") -> MessageReceived:
    """A hand-made reply to ``publish`` (token "same" echoes the request's clientToken)."""
    req = json.loads(publish.payload)
    body = {"timestamp": 1, **body}
    if token == "same":
        body["clientToken"] = req.get("clientToken")
    elif token is not None:
        body["clientToken"] = token
    topic = topics.rejected(publish.topic) if rejected else topics.accepted(publish.topic)
    return msg(topic, body)
