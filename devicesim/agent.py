"""The device's job agent: a pure state machine (no asyncio, no MQTT, no clock, no disk).

A thin network shell subscribes to ``topics.device_subscriptions(thing)``, feeds every
message, connection change, timer and simulated reboot into :meth:`Agent.handle` together
with the current time, and executes the returned actions **in order**: ``Publish`` (QoS 1),
``EmitEvent`` (publish the :class:`DeviceEvent` on ``devicesim/{thing}/events``),
``SaveNvm`` (persist before going on), ``SetTimer`` / ``CancelTimer``. Timer keys are
opaque and unique per arming (``"step:12"``); deliver ``TimerFired(key)`` once, at or after
``at``; a fired key that is no longer armed is ignored, so cancellation races are harmless.
Randomness (backoff jitter, the clientToken nonce) comes from the injected ``random.Random``.

States (``_TRANSITIONS`` and ``_REPLIES`` below are the tables)::

    booting     constructed or rebooted, not yet connected
      Connected: journal? -> recovering (describe it) : -> requesting (start-next)
    requesting  start-next in flight
      accepted with execution -> running (or finishing: REJECTED for a bad document)
      accepted without execution -> idle (or start-next again if a notify-next came)
    idle        nothing to do
      notify-next with execution -> requesting (start-next) | running (starts_from_notify_next)
      Connected, poll -> requesting
    running     executing a step; a progress update (or poll describe) may be in flight
      step elapsed -> next step | commit + finishing (SUCCEEDED) | roll back + finishing
      (FAILED at failAtStep); notify-next not naming it / ResourceNotFound /
      TerminalStateReached / InvalidStateTransition(terminal) -> lost access
      VersionMismatch / InvalidStateTransition(pending) -> resyncing
    resyncing   describe in flight after VersionMismatch; then resend with the new version
    finishing   final status update in flight; accepted -> job_finished -> requesting/idle
    recovering  describe of the journaled execution after a reboot: pending -> continue from
                the journaled step; gone/terminal/other document -> lost access
    stuck       (faulty behaviours only) frozen until the next reboot

Lost access (through whatever path) asks the behaviour (``on_lost_access``); the reference
reaction emits ``lost_access``, rolls back an uncommitted image (``rolled_back``), clears
the journal, emits ``recovered`` and asks for the next job (``start-next``).

Requests: one at a time. Each send carries a fresh clientToken ``"{n}:{nonce}:{thing}"``
(at most 64 characters); a reply is ours if its token is one we sent for the outstanding
request *and* it arrives on that request's reply topic; anything else is stale and ignored.
No reply within ``reply_timeout`` or a ``RequestThrottled`` / ``InternalError`` rejection:
resend with a new token after a jittered exponential backoff (``retry_base * 2**n`` capped
at ``retry_cap``). start-next retries forever; a request about an execution gives up after
``max_attempts`` failures and the device treats that as lost access (reason ``timeout`` or
the code): it cannot confirm it still owns the execution, so it returns to a known-good
image and asks again; start-next hands the same execution back if it still exists.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from devicesim.behaviours import Behaviour, LostAccessNotice, Reaction, Via
from devicesim.documents import DocumentError, Plan, document_digest, parse
from devicesim.nvm import Journal, Nvm, Phase
from devicesim.wire import codec, topics
from devicesim.wire.codec import WireError
from devicesim.wire.enums import JobExecutionStatus, RejectedErrorCode
from devicesim.wire.events import DeviceEvent, DeviceEventKind
from devicesim.wire.messages import (
    MAX_PAYLOAD_BYTES,
    DescribeJobExecutionRequest,
    DescribeJobExecutionResponse,
    GetPendingJobExecutionsResponse,
    JobExecutionData,
    JobExecutionsChangedEvent,
    Message,
    NextJobExecutionChangedEvent,
    RejectedError,
    StartNextJobExecutionResponse,
    StartNextPendingJobExecutionRequest,
    UpdateJobExecutionRequest,
    UpdateJobExecutionResponse,
)

Kind = DeviceEventKind
Status = JobExecutionStatus
Code = RejectedErrorCode

_MAX_TOKEN = 64
_MAX_TOKENS_KEPT = 16
_MAX_RESYNCS = 3
_ZOMBIE_UPDATES = 3
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


# --- configuration ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class AgentConfig:
    reply_timeout: float = 10.0
    retry_base: float = 1.0
    retry_cap: float = 30.0
    max_attempts: int | None = 5  # per request about an execution; None: unlimited


# --- events (what happens to the device) ------------------------------------------------


@dataclass(frozen=True, slots=True)
class Connected:
    session_present: bool = False


@dataclass(frozen=True, slots=True)
class Disconnected:
    pass


@dataclass(frozen=True, slots=True)
class MessageReceived:
    topic: str
    payload: bytes


@dataclass(frozen=True, slots=True)
class TimerFired:
    key: str


@dataclass(frozen=True, slots=True)
class Rebooted:
    nvm: Nvm | None = None  # what the disk held, if the shell lost unsaved state


Event = Connected | Disconnected | MessageReceived | TimerFired | Rebooted


# --- actions (what the shell must do) ---------------------------------------------------


@dataclass(frozen=True, slots=True)
class Publish:
    topic: str
    payload: bytes
    qos: int = 1


@dataclass(frozen=True, slots=True)
class EmitEvent:
    event: DeviceEvent


@dataclass(frozen=True, slots=True)
class SaveNvm:
    nvm: Nvm


@dataclass(frozen=True, slots=True)
class SetTimer:
    key: str
    at: float


@dataclass(frozen=True, slots=True)
class CancelTimer:
    key: str


Action = Publish | EmitEvent | SaveNvm | SetTimer | CancelTimer


# --- states and internal bookkeeping ----------------------------------------------------


class State(StrEnum):
    BOOTING = "booting"
    REQUESTING = "requesting"
    IDLE = "idle"
    RUNNING = "running"
    RESYNCING = "resyncing"
    FINISHING = "finishing"
    RECOVERING = "recovering"
    STUCK = "stuck"


class Purpose(StrEnum):
    START_NEXT = "start-next"
    PROGRESS = "progress"
    FINAL = "final"
    RESYNC = "resync"
    POLL = "poll"
    RESUME = "resume"


class TimerKind(StrEnum):
    STEP = "step"
    REPLY = "reply"
    RETRY = "retry"
    POLL = "poll"


class Input(StrEnum):
    NOTIFY_NEXT = "notify-next"
    STEP_ELAPSED = "step-elapsed"
    POLL_DUE = "poll-due"


_VIA = {Purpose.PROGRESS: Via.PROGRESS_UPDATE, Purpose.FINAL: Via.FINAL_UPDATE,
        Purpose.RESYNC: Via.RESYNC, Purpose.POLL: Via.POLL, Purpose.RESUME: Via.RESUME}
_ACCEPTED: dict[topics.Operation, type[Message]] = {
    topics.Operation.START_NEXT: StartNextJobExecutionResponse,
    topics.Operation.DESCRIBE: DescribeJobExecutionResponse,
    topics.Operation.UPDATE: UpdateJobExecutionResponse,
    topics.Operation.GET_PENDING: GetPendingJobExecutionsResponse,
}
Request = StartNextPendingJobExecutionRequest | DescribeJobExecutionRequest | \
    UpdateJobExecutionRequest


@dataclass(slots=True)
class _Pending:
    purpose: Purpose
    topic: str
    request: Request
    tokens: list[str] = field(default_factory=list)
    attempts: int = 0
    in_flight: bool = False


@dataclass(slots=True)
class _Work:
    job_id: str
    execution_number: int
    version_number: int | None
    document: dict[str, Any] | None
    digest: str | None
    plan: Plan | None = None
    step: int = 0
    step_done: bool = False  # the step's time is up; waiting for the request in flight
    final: Status | None = None
    resend: _Pending | None = None  # the update to resend after a resync
    resyncs: int = 0
    pace: float = 1.0  # this device's speed factor for the job's steps (document jitter)


@dataclass(frozen=True, slots=True)
class Outstanding:
    """Read-only view of the request in flight (for shells, tests and logs)."""

    purpose: Purpose
    topic: str
    client_token: str | None
    attempts: int
    in_flight: bool


@dataclass(frozen=True, slots=True)
class Current:
    job_id: str
    execution_number: int
    version_number: int | None
    document_digest: str | None
    step: str | None


@dataclass(slots=True)
class _Ghost:
    job_id: str
    execution_number: int
    step: str | None
    left: int


# --- the agent --------------------------------------------------------------------------


class Agent:
    def __init__(self, thing_name: str, behaviour: Behaviour, nvm: Nvm, rng: random.Random,
                 config: AgentConfig | None = None) -> None:
        self.thing_name = thing_name
        self._behaviour = behaviour
        self._config = behaviour.tune(config or AgentConfig())
        self._nvm = nvm
        self._rng = rng
        self._state = State.BOOTING
        self._connected = False
        self._now = 0.0
        self._out: list[Action] = []
        self._counter = 0
        self._nonce = self._new_nonce()
        self._timer_gen = 0
        self._armed: dict[TimerKind, tuple[str, float]] = {}
        self._pending: _Pending | None = None
        self._work: _Work | None = None
        self._hint: JobExecutionData | None = None
        self._recheck = False
        self._last_done: tuple[str, int, str | None] | None = None
        self._ghosts: dict[str, _Ghost] = {}

    # --- public view ---------------------------------------------------------------------

    @property
    def state(self) -> State:
        return self._state

    @property
    def nvm(self) -> Nvm:
        return self._nvm

    @property
    def config(self) -> AgentConfig:
        return self._config

    @property
    def connected(self) -> bool:
        return self._connected

    @property
    def current(self) -> Current | None:
        w = self._work
        if w is None:
            return None
        return Current(w.job_id, w.execution_number, w.version_number, w.digest,
                       self._step_name())

    @property
    def outstanding(self) -> Outstanding | None:
        p = self._pending
        if p is None:
            return None
        return Outstanding(p.purpose, p.topic, p.tokens[-1] if p.tokens else None, p.attempts,
                           p.in_flight)

    @property
    def timers(self) -> dict[TimerKind, tuple[str, float]]:
        """Armed timers: kind -> (key, at)."""
        return dict(self._armed)

    def handle(self, event: Event, now: float) -> list[Action]:
        self._now = now
        try:
            match event:
                case MessageReceived():
                    self._on_message(event.topic, event.payload)
                case TimerFired():
                    self._on_timer(event.key)
                case Connected():
                    self._on_connected(event.session_present)
                case Disconnected():
                    self._on_disconnected()
                case Rebooted():
                    self._on_rebooted(event.nvm)
        finally:
            # a handler that raised (a behaviour plugin's bug) leaves nothing half-queued
            # to leak out with the next event
            out, self._out = self._out, []
        return out

    # --- connection, reboot, timers --------------------------------------------------------

    def _on_connected(self, session_present: bool) -> None:
        self._connected = True
        self._emit(Kind.CONNECTED, job=False, nvm=True,
                   reason="session-present" if session_present else "clean-session")
        if self._state is State.STUCK:
            return
        if self._state is State.BOOTING:
            self._boot()
            return
        p = self._pending
        if p is not None:
            if not p.in_flight and TimerKind.RETRY not in self._armed:
                self._transmit()
        elif self._state is State.IDLE:
            self._ask_next()
        elif self._state is State.RUNNING and self._behaviour.aborts_on_notify_next:
            self._check_in()  # a notify-next may have been missed while offline

    def _on_disconnected(self) -> None:
        self._connected = False
        self._emit(Kind.DISCONNECTED, job=False)
        p = self._pending
        if p is not None and p.in_flight:
            p.in_flight = False  # resent with a new token on reconnect
            self._disarm(TimerKind.REPLY)

    def _on_rebooted(self, nvm: Nvm | None) -> None:
        if nvm is not None:
            self._nvm = nvm
        for kind in list(self._armed):
            self._disarm(kind)
        self._pending, self._work, self._hint = None, None, None
        self._recheck, self._ghosts = False, {}
        self._nonce = self._new_nonce()
        self._state = State.BOOTING
        self._emit(Kind.REBOOTED, job=False, nvm=True)
        if self._connected:
            self._boot()

    def _boot(self) -> None:
        if self._behaviour.poll_interval:
            self._arm(TimerKind.POLL, self._now + self._behaviour.poll_interval)
        j = self._nvm.journal
        if j is None:
            self._ask_next()
            return
        w = _Work(job_id=j.job_id, execution_number=j.execution_number,
                  version_number=j.version_number, document=j.document,
                  digest=j.document_digest, step=j.step_index)
        try:
            w.plan = parse(j.document)
        except DocumentError:
            w.plan = None
        self._work = w
        self._state = State.RECOVERING
        self._request(Purpose.RESUME, topics.describe(self.thing_name, j.job_id),
                      self._describe_request())

    def _on_timer(self, key: str) -> None:
        kind = next((k for k, (armed_key, _) in self._armed.items() if armed_key == key), None)
        if kind is None:
            return  # cancelled or replaced: stale
        del self._armed[kind]
        if self._state is State.STUCK:
            return
        if kind is TimerKind.REPLY:
            self._reply_timed_out()
        elif kind is TimerKind.RETRY:
            p = self._pending
            if p is not None and not p.in_flight:
                self._transmit()
        elif kind is TimerKind.STEP:
            self._dispatch(Input.STEP_ELAPSED, None)
        else:
            if self._behaviour.poll_interval:
                self._arm(TimerKind.POLL, self._now + self._behaviour.poll_interval)
            self._dispatch(Input.POLL_DUE, None)

    def _dispatch(self, what: Input, msg: NextJobExecutionChangedEvent | None) -> None:
        handler = _TRANSITIONS.get((self._state, what))
        if handler is not None:
            handler(self, msg)

    # --- messages ------------------------------------------------------------------------

    def _on_message(self, topic: str, payload: bytes) -> None:
        if len(payload) > MAX_PAYLOAD_BYTES:
            self._error(f"{topic:.200}: payload over {MAX_PAYLOAD_BYTES} bytes")
            return
        jt = topics.parse_jobs_topic(topic)
        if jt is None or jt.thing_name != self.thing_name or jt.kind is topics.Kind.INVALID:
            self._error(f"{topic:.200}: not a jobs topic of {self.thing_name}")
            return
        if jt.kind is topics.Kind.REQUEST:
            return  # a request (ours, echoed): not for the device
        try:
            obj = codec.loads_object(payload)
            msg: Message
            if jt.kind is topics.Kind.NOTIFY:
                JobExecutionsChangedEvent.from_dict(obj)  # validated; the agent uses notify-next
                return
            if jt.kind is topics.Kind.NOTIFY_NEXT:
                msg = NextJobExecutionChangedEvent.from_dict(obj)
            elif jt.kind is topics.Kind.ACCEPTED:
                assert jt.operation is not None
                msg = _ACCEPTED[jt.operation].from_dict(obj)
            else:
                msg = RejectedError.from_dict(obj)
            _check_execution(getattr(msg, "execution", None))
        except (WireError, RecursionError) as e:
            self._error(f"{topic:.200}: {e}")
            return
        if isinstance(msg, NextJobExecutionChangedEvent):
            if self._behaviour.subscribes_notify_next and self._state is not State.STUCK:
                self._dispatch(Input.NOTIFY_NEXT, msg)
            return
        token = getattr(msg, "client_token", None)
        if token is not None and token in self._ghosts:
            self._haunt(self._ghosts.pop(token))
            return
        p = self._pending
        if p is None or token is None or token not in p.tokens or jt.request_topic != p.topic:
            return  # not ours, or a late reply to a request already settled
        self._settle()
        accepted, rejected = _REPLIES[p.purpose]
        if isinstance(msg, RejectedError):
            rejected(self, p, msg)
        else:
            accepted(self, p, msg)

    # --- requests ------------------------------------------------------------------------

    def _request(self, purpose: Purpose, topic: str, request: Request) -> None:
        self._pending = _Pending(purpose, topic, request)
        self._transmit()

    def _transmit(self) -> None:
        p = self._pending
        assert p is not None
        if not self._connected:
            return  # sent on Connected
        token = self._token()
        p.tokens = [*p.tokens[-(_MAX_TOKENS_KEPT - 1):], token]
        p.in_flight = True
        request = _with_token(p.request, token)
        self._out.append(Publish(p.topic, request.to_json()))
        self._arm(TimerKind.REPLY, self._now + self._config.reply_timeout)

    def _settle(self) -> None:
        self._pending = None
        self._disarm(TimerKind.REPLY)
        self._disarm(TimerKind.RETRY)

    def _reply_timed_out(self) -> None:
        p = self._pending
        if p is None or not p.in_flight:
            return
        if p.purpose is Purpose.POLL:
            self._pending = None
            self._poll_done()
            return
        self._retry(p, "timeout")

    def _retry(self, p: _Pending, reason: str) -> None:
        """Resend ``p`` after a backoff, or give up once it failed ``max_attempts`` times."""
        self._pending = p
        p.in_flight = False
        p.attempts += 1
        limit = None if p.purpose is Purpose.START_NEXT else self._config.max_attempts
        if limit is not None and p.attempts >= limit:
            self._settle()
            self._lost(reason, _VIA[p.purpose], self._as_if_answered(p))
            return
        c = self._config
        delay = min(c.retry_cap, c.retry_base * 2 ** min(p.attempts - 1, 30))
        self._arm(TimerKind.RETRY, self._now + delay * (0.5 + 0.5 * self._rng.random()))

    def _as_if_answered(self, p: _Pending) -> Callable[[], None]:
        """What Reaction.IGNORE means for a request that was not answered normally."""
        if p.purpose is Purpose.RESYNC:
            w = self._require_work()
            resend = w.resend
            w.resend = None
            return lambda: self._update_done(resend) if resend else None
        if p.purpose is Purpose.RESUME:
            return self._continue_journaled
        if p.purpose is Purpose.POLL:
            return self._poll_done
        return lambda: self._update_done(p)

    def _ask_next(self) -> None:
        self._recheck = False
        self._state = State.REQUESTING
        self._request(Purpose.START_NEXT, topics.start_next(self.thing_name),
                      StartNextPendingJobExecutionRequest())

    def _describe_request(self) -> DescribeJobExecutionRequest:
        w = self._require_work()
        by_job_id = self._behaviour.identifies_work_by_job_id_only
        return DescribeJobExecutionRequest(
            execution_number=None if by_job_id else w.execution_number,
            include_job_document=True)

    def _update(self, status: Status, details: dict[str, str]) -> UpdateJobExecutionRequest:
        w = self._require_work()
        strict = self._behaviour.strict_updates
        by_job_id = self._behaviour.identifies_work_by_job_id_only
        return UpdateJobExecutionRequest(
            status=status, status_details=details,
            expected_version=w.version_number if strict else None,
            execution_number=w.execution_number if strict and not by_job_id else None,
            include_job_execution_state=True if strict else None)

    def _send_update(self, purpose: Purpose, status: Status, details: dict[str, str]) -> None:
        w = self._require_work()
        self._request(purpose, topics.update(self.thing_name, w.job_id),
                      self._update(status, details))

    def _check_in(self) -> None:
        w = self._require_work()
        self._request(Purpose.POLL, topics.describe(self.thing_name, w.job_id),
                      self._describe_request())

    # --- notify-next and timers per state (the _TRANSITIONS table) -------------------------

    def _idle_notify_next(self, msg: NextJobExecutionChangedEvent | None) -> None:
        ex = msg.execution if msg else None
        if ex is None or ex.status.is_terminal:
            return
        if not self._behaviour.starts_from_notify_next:
            self._ask_next()
        elif not self._is_duplicate(ex):
            self._begin(ex)

    def _requesting_notify_next(self, msg: NextJobExecutionChangedEvent | None) -> None:
        if msg is not None and msg.execution is not None:
            self._recheck = True  # start-next may have been answered before this was queued
            if self._behaviour.starts_from_notify_next:
                self._hint = msg.execution

    def _busy_notify_next(self, msg: NextJobExecutionChangedEvent | None) -> None:
        ex = msg.execution if msg else None
        w = self._require_work()
        if ex is not None and ex.status.is_pending and self._names_current(ex):
            if ex.execution_number != w.execution_number:
                self._adopt(ex)  # only a device identifying work by jobId alone gets here
            return
        if w.resend is not None and w.resend.purpose is Purpose.FINAL:
            self._finishing_notify_next(msg)  # resyncing a final update: as in finishing
            return
        if self._behaviour.starts_from_notify_next:
            self._hint = ex
        if self._behaviour.aborts_on_notify_next:
            self._lost("notify-next", Via.NOTIFY_NEXT, lambda: None)

    def _finishing_notify_next(self, msg: NextJobExecutionChangedEvent | None) -> None:
        # The final update's own effect (the head moves on) looks like lost access: wait for
        # its reply instead, which tells success from loss reliably.
        if self._behaviour.starts_from_notify_next and msg is not None:
            self._hint = msg.execution

    def _step_elapsed(self, _: NextJobExecutionChangedEvent | None) -> None:
        self._require_work().step_done = True
        if self._pending is None:
            self._finish_step()

    def _poll_idle(self, _: NextJobExecutionChangedEvent | None) -> None:
        if self._connected:
            self._ask_next()

    def _poll_running(self, _: NextJobExecutionChangedEvent | None) -> None:
        if self._pending is None and self._connected:
            self._check_in()

    # --- replies (the _REPLIES table) ------------------------------------------------------

    def _start_next_accepted(self, p: _Pending, msg: Message) -> None:
        assert isinstance(msg, StartNextJobExecutionResponse)
        ex = msg.execution
        if ex is not None and ex.status.is_pending:
            self._begin(ex)
        elif self._recheck:
            self._ask_next()
        else:
            self._go_idle()

    def _start_next_rejected(self, p: _Pending, msg: RejectedError) -> None:
        if msg.code.is_retryable:
            self._retry(p, msg.code.value)
            return
        self._error(f"start-next rejected: {msg.code}: {msg.message or ''}")
        self._go_idle()

    def _update_accepted(self, p: _Pending, msg: Message) -> None:
        assert isinstance(msg, UpdateJobExecutionResponse)
        w = self._require_work()
        w.resyncs = 0
        if msg.execution_state is not None:
            w.version_number = msg.execution_state.version_number
        elif w.version_number is not None:
            w.version_number += 1
        self._update_done(p)

    def _update_rejected(self, p: _Pending, msg: RejectedError) -> None:
        w = self._require_work()
        code, state = msg.code, msg.execution_state
        if code.is_retryable:
            self._retry(p, code.value)
            return
        if p.purpose is Purpose.FINAL and state is not None and state.status == w.final:
            self._finished()  # an earlier attempt of this very update was applied
            return
        terminal = state is not None and state.status.is_terminal
        if (code in (Code.RESOURCE_NOT_FOUND, Code.TERMINAL_STATE_REACHED)
                or (code is Code.INVALID_STATE_TRANSITION and (state is None or terminal))
                or (code is Code.VERSION_MISMATCH and terminal)):
            self._lost(code.value, _VIA[p.purpose], lambda: self._update_done(p))
        elif code in (Code.INVALID_STATE_TRANSITION, Code.VERSION_MISMATCH):
            self._resync(p)
        else:  # InvalidRequest / InvalidJson / InvalidTopic: this device's own fault
            self._error(f"{p.purpose} update rejected: {code}: {msg.message or ''}")
            self._update_done(p, gave_up=code.value)

    def _update_done(self, p: _Pending, gave_up: str | None = None) -> None:
        if p.purpose is Purpose.FINAL:
            self._finished(reason=f"gave up: {gave_up}" if gave_up else None,
                           ask_next=gave_up is None)
            return
        self._state = State.RUNNING
        if self._require_work().step_done:
            self._finish_step()

    def _resync(self, p: _Pending) -> None:
        w = self._require_work()
        w.resyncs += 1
        if w.resyncs > _MAX_RESYNCS:
            self._lost(Code.VERSION_MISMATCH.value, _VIA[p.purpose],
                       lambda: self._update_done(p))
            return
        w.resend = p
        self._state = State.RESYNCING
        self._request(Purpose.RESYNC, topics.describe(self.thing_name, w.job_id),
                      self._describe_request())

    def _resync_accepted(self, p: _Pending, msg: Message) -> None:
        assert isinstance(msg, DescribeJobExecutionResponse)
        ex, w = msg.execution, self._require_work()
        if (ex is not None and self._names_current(ex) and w.resend is not None
                and w.resend.purpose is Purpose.FINAL and ex.status == w.final):
            self._finished()  # an earlier attempt of the final update was applied
            return
        if ex is None or not ex.status.is_pending or not self._names_current(ex):
            self._lost("describe", Via.RESYNC, self._as_if_answered(p))
            return
        self._adopt(ex)
        resend, w.resend = w.resend, None
        assert resend is not None
        assert isinstance(resend.request, UpdateJobExecutionRequest)
        request = resend.request
        self._state = State.RUNNING if resend.purpose is Purpose.PROGRESS else State.FINISHING
        self._send_update(resend.purpose, request.status, request.status_details or {})

    def _describe_rejected(self, p: _Pending, msg: RejectedError) -> None:
        """RESYNC and RESUME: a describe we cannot get answered ends in lost access."""
        if msg.code.is_retryable:
            self._retry(p, msg.code.value)
            return
        self._lost(msg.code.value, _VIA[p.purpose], self._as_if_answered(p))

    def _poll_accepted(self, p: _Pending, msg: Message) -> None:
        assert isinstance(msg, DescribeJobExecutionResponse)
        ex = msg.execution
        if ex is not None and ex.status.is_pending and self._names_current(ex):
            self._adopt(ex)
            self._poll_done()
        else:
            self._lost("describe", Via.POLL, self._poll_done)

    def _poll_rejected(self, p: _Pending, msg: RejectedError) -> None:
        if msg.code in (Code.RESOURCE_NOT_FOUND, Code.TERMINAL_STATE_REACHED):
            self._lost(msg.code.value, Via.POLL, self._poll_done)
            return
        if not msg.code.is_retryable:
            self._error(f"describe rejected: {msg.code}: {msg.message or ''}")
        self._poll_done()  # the next poll asks again

    def _poll_done(self) -> None:
        w = self._work
        if self._state is State.RUNNING and w is not None and w.step_done:
            self._finish_step()

    def _resume_accepted(self, p: _Pending, msg: Message) -> None:
        assert isinstance(msg, DescribeJobExecutionResponse)
        ex, w, j = msg.execution, self._require_work(), self._nvm.journal
        assert j is not None
        same = ex is not None and self._names_current(ex)
        if ex is not None and same and ex.status.is_pending:
            self._adopt(ex)
            self._continue_journaled()
        elif ex is not None and same and (j.phase, ex.status) in (
                (Phase.DONE, Status.SUCCEEDED), (Phase.FAILED, Status.FAILED)):
            w.final = ex.status  # our final update was applied just before the reboot
            self._finished()
        else:
            self._lost("describe", Via.RESUME, self._continue_journaled)

    # --- executing a job -----------------------------------------------------------------

    def _begin(self, ex: JobExecutionData) -> None:
        doc = ex.job_document
        digest = document_digest(doc) if doc is not None else None
        w = _Work(job_id=ex.job_id, execution_number=ex.execution_number,
                  version_number=ex.version_number, document=doc, digest=digest)
        self._work = w
        self._emit(Kind.JOB_STARTED, status=ex.status.value)
        try:
            if doc is None:
                raise DocumentError("the execution carries no jobDocument")
            w.plan = plan = parse(doc)
        except DocumentError as e:
            self._finish(Status.REJECTED, _details(reason=e.reason))
            return
        assert digest is not None
        assert doc is not None
        first = plan.steps[0]
        target = self._nvm.inactive if plan.image_version else None
        journal = Journal(job_id=w.job_id, execution_number=w.execution_number,
                          document_digest=digest, document=doc, step_index=0,
                          step_name=first.name, target_slot=target,
                          version_number=w.version_number)
        if target is None:
            self._save(self._nvm.begin_job(journal))
        else:
            self._save(self._nvm.begin_download(journal))
        self._start_step(0)

    def _start_step(self, index: int) -> None:
        w = self._require_work()
        plan = w.plan
        assert plan is not None
        index = max(0, min(index, len(plan.steps) - 1))
        step = plan.steps[index]
        w.step, w.step_done = index, False
        nvm = self._nvm.set_step(index, step.name, w.version_number)
        if step.name == "download" and plan.image_version:
            nvm = nvm.write_partial(plan.image_version)
        self._save(nvm)
        self._state = State.RUNNING
        self._emit(Kind.STEP, step=step.name, status=Status.IN_PROGRESS.value)
        self._send_update(Purpose.PROGRESS, Status.IN_PROGRESS,
                          _details(step=step.name, progress=f"{index + 1}/{len(plan.steps)}"))
        if index == 0 and plan.jitter:
            w.pace = 1.0 + self._rng.uniform(-plan.jitter, plan.jitter)
        self._arm(TimerKind.STEP, self._now + step.seconds * w.pace)

    def _finish_step(self) -> None:
        w = self._require_work()
        plan = w.plan
        assert plan is not None
        w.step_done = False
        step = plan.steps[w.step]
        image = plan.image_version is not None
        if plan.fails(self.thing_name, step.name):
            nvm = self._nvm.rollback() if image else self._nvm
            self._save(nvm.mark_failed())
            if image:
                self._emit(Kind.ROLLED_BACK, step=step.name, reason="failAtStep", nvm=True)
            self._finish(Status.FAILED, _details(reason=f"injected failure at step {step.name}",
                                                 step=step.name))
            return
        effect = _STEP_END_EFFECTS.get(step.name)
        if effect is not None and image:
            self._save(effect(self._nvm))
        if w.step + 1 < len(plan.steps):
            self._start_step(w.step + 1)
            return
        self._save(self._nvm.commit())
        if image:
            self._emit(Kind.IMAGE_COMMITTED, step=step.name, nvm=True)
        self._finish(Status.SUCCEEDED, self._success_details())

    def _success_details(self) -> dict[str, str]:
        plan = self._require_work().plan
        assert plan is not None
        n = len(plan.steps)
        details = _details(step=plan.steps[-1].name, progress=f"{n}/{n}")
        if plan.image_version:
            details["version"] = plan.image_version
        return details

    def _continue_journaled(self) -> None:
        w, j = self._require_work(), self._nvm.journal
        assert j is not None
        if j.phase is Phase.RUNNING:
            if w.plan is None:  # an unreadable journal: nothing to continue
                self._drop(Reaction.RECOVER, "journal")
                return
            self._start_step(j.step_index)
        elif j.phase is Phase.DONE:
            self._finish(Status.SUCCEEDED, self._success_details() if w.plan else {})
        else:
            self._finish(Status.FAILED,
                         _details(reason=f"injected failure at step {j.step_name}",
                                  step=j.step_name or "unknown"))

    def _finish(self, status: Status, details: dict[str, str]) -> None:
        self._require_work().final = status
        self._state = State.FINISHING
        self._send_update(Purpose.FINAL, status, details)

    def _finished(self, reason: str | None = None, ask_next: bool = True) -> None:
        w = self._require_work()
        self._disarm(TimerKind.STEP)
        if self._nvm.journal is not None:
            self._save(self._nvm.clear_journal())
        self._emit(Kind.JOB_FINISHED, status=w.final.value if w.final else None, reason=reason,
                   nvm=True)
        self._last_done = (w.job_id, w.execution_number, w.digest)
        self._work = None
        if ask_next:
            self._after_job()
        else:
            self._go_idle()

    def _after_job(self) -> None:
        if self._behaviour.asks_next_when_done:
            self._ask_next()
        else:
            self._go_idle()

    def _go_idle(self) -> None:
        self._state = State.IDLE
        self._emit(Kind.IDLE, job=False, nvm=True)
        hint, self._hint = self._hint, None
        if (hint is not None and self._behaviour.starts_from_notify_next
                and hint.status.is_pending and not self._is_duplicate(hint)):
            self._begin(hint)

    # --- lost access ---------------------------------------------------------------------

    def _lost(self, reason: str, via: Via, as_if_answered: Callable[[], None]) -> None:
        w, j = self._require_work(), self._nvm.journal
        notice = LostAccessNotice(job_id=w.job_id, execution_number=w.execution_number,
                                  reason=reason, via=via, step=self._step_name(),
                                  committed=j is not None and j.phase is Phase.DONE)
        reaction = self._behaviour.on_lost_access(notice)
        if reaction is Reaction.IGNORE:
            as_if_answered()
        else:
            self._drop(reaction, reason)

    def _drop(self, reaction: Reaction, reason: str) -> None:
        w = self._require_work()
        step = self._step_name()
        self._pending = None
        for kind in (TimerKind.REPLY, TimerKind.RETRY, TimerKind.STEP):
            self._disarm(kind)
        if reaction is Reaction.STAY_STUCK:
            self._state = State.STUCK
            return
        self._emit(Kind.LOST_ACCESS, step=step, reason=reason)
        j = self._nvm.journal
        if j is not None and j.phase is Phase.RUNNING and j.target_slot is not None:
            if reaction is Reaction.NO_ROLLBACK:
                self._save(self._nvm.activate_unchecked())
            else:
                self._save(self._nvm.rollback())
                self._emit(Kind.ROLLED_BACK, step=step, reason=reason, nvm=True)
        if self._nvm.journal is not None:
            self._save(self._nvm.clear_journal())
        self._emit(Kind.RECOVERED, nvm=True)
        if reaction is Reaction.KEEP_UPDATING:
            self._haunt(_Ghost(w.job_id, w.execution_number, step, _ZOMBIE_UPDATES))
        self._work = None
        self._after_job()

    def _haunt(self, ghost: _Ghost) -> None:
        """(zombie) Send one more update for an execution already given up; its reply
        triggers the next one, ``_ZOMBIE_UPDATES`` in all."""
        if ghost.left <= 0 or not self._connected:
            return
        token = self._token()
        self._ghosts[token] = _Ghost(ghost.job_id, ghost.execution_number, ghost.step,
                                     ghost.left - 1)
        request = UpdateJobExecutionRequest(
            status=Status.IN_PROGRESS, client_token=token,
            status_details=_details(step=ghost.step or "unknown", progress="zombie"),
            execution_number=ghost.execution_number)
        self._out.append(Publish(topics.update(self.thing_name, ghost.job_id),
                                 request.to_json()))

    # --- identity ------------------------------------------------------------------------

    def _names_current(self, ex: JobExecutionData) -> bool:
        w = self._require_work()
        if ex.job_id != w.job_id:
            return False
        if self._behaviour.identifies_work_by_job_id_only:
            return True
        if ex.execution_number != w.execution_number:
            return False
        return ex.job_document is None or w.digest is None or \
            document_digest(ex.job_document) == w.digest

    def _adopt(self, ex: JobExecutionData) -> None:
        w = self._require_work()
        w.version_number = ex.version_number
        if ex.execution_number != w.execution_number:  # reuse-confused adopts the new one
            w.execution_number = ex.execution_number
            if self._nvm.journal is not None:
                self._save(self._nvm.note_execution(ex.execution_number, ex.version_number))

    def _is_duplicate(self, ex: JobExecutionData) -> bool:
        digest = document_digest(ex.job_document) if ex.job_document is not None else None
        key = (ex.job_id, ex.execution_number, digest)
        w = self._work
        return key == self._last_done or (
            w is not None and key == (w.job_id, w.execution_number, w.digest))

    # --- small helpers -------------------------------------------------------------------

    def _require_work(self) -> _Work:
        assert self._work is not None, f"no execution in state {self._state}"
        return self._work

    def _step_name(self) -> str | None:
        w = self._work
        if w is None:
            return None
        if w.plan is not None:
            return w.plan.steps[min(w.step, len(w.plan.steps) - 1)].name
        j = self._nvm.journal
        return j.step_name if j is not None else None

    def _save(self, nvm: Nvm) -> None:
        self._nvm = nvm
        self._out.append(SaveNvm(nvm))

    def _arm(self, kind: TimerKind, at: float) -> None:
        self._disarm(kind)
        self._timer_gen += 1
        key = f"{kind.value}:{self._timer_gen}"
        self._armed[kind] = (key, at)
        self._out.append(SetTimer(key, at))

    def _disarm(self, kind: TimerKind) -> None:
        armed = self._armed.pop(kind, None)
        if armed is not None:
            self._out.append(CancelTimer(armed[0]))

    def _token(self) -> str:
        self._counter += 1
        return f"{self._counter}:{self._nonce}:{self.thing_name}"[:_MAX_TOKEN]

    def _new_nonce(self) -> str:
        return f"{self._rng.getrandbits(32):08x}"

    def _emit(self, kind: DeviceEventKind, *, job: bool = True, step: str | None = None,
              status: str | None = None, reason: str | None = None, nvm: bool = False) -> None:
        w = self._work if job else None
        self._out.append(EmitEvent(DeviceEvent(
            kind=kind, thing_name=self.thing_name, timestamp=self._now,
            job_id=w.job_id if w else None,
            execution_number=w.execution_number if w else None,
            version_number=w.version_number if w else None,
            document_digest=w.digest if w else None,
            step=step, status=status, reason=reason,
            nvm=self._nvm.summary() if nvm else None)))

    def _error(self, reason: str) -> None:
        self._emit(Kind.ERROR, job=False, reason=_clean(reason, 500))


def _check_execution(ex: JobExecutionData | None) -> None:
    """A jobId the device would put in a topic must be a legal, unreserved one."""
    if ex is not None and (not topics.JOB_ID_RE.fullmatch(ex.job_id)
                           or ex.job_id in topics.RESERVED_JOB_IDS):
        raise WireError(Code.INVALID_REQUEST, f"execution.jobId: {ex.job_id!r:.80} is not usable")


def _with_token(request: Request, token: str) -> Request:
    if isinstance(request, UpdateJobExecutionRequest):
        return UpdateJobExecutionRequest(
            status=request.status, client_token=token, status_details=request.status_details,
            expected_version=request.expected_version,
            execution_number=request.execution_number,
            include_job_execution_state=request.include_job_execution_state)
    if isinstance(request, DescribeJobExecutionRequest):
        return DescribeJobExecutionRequest(client_token=token,
                                           execution_number=request.execution_number,
                                           include_job_document=request.include_job_document)
    return StartNextPendingJobExecutionRequest(client_token=token)


def _clean(text: str, limit: int = 1024) -> str:
    """A statusDetails-safe value: no control characters, 1..limit characters."""
    text = _CONTROL.sub(" ", text).strip()
    return text[:limit] or "unspecified"


def _details(**values: str) -> dict[str, str]:
    return {k: _clean(v) for k, v in values.items()}


_STEP_END_EFFECTS: dict[str, Callable[[Nvm], Nvm]] = {
    "install": Nvm.mark_complete,
    "verify": Nvm.verify,
}

_Handler = Callable[[Agent, NextJobExecutionChangedEvent | None], None]
_TRANSITIONS: dict[tuple[State, Input], _Handler] = {
    (State.IDLE, Input.NOTIFY_NEXT): Agent._idle_notify_next,
    (State.REQUESTING, Input.NOTIFY_NEXT): Agent._requesting_notify_next,
    (State.RECOVERING, Input.NOTIFY_NEXT): Agent._requesting_notify_next,
    (State.RUNNING, Input.NOTIFY_NEXT): Agent._busy_notify_next,
    (State.RESYNCING, Input.NOTIFY_NEXT): Agent._busy_notify_next,
    (State.FINISHING, Input.NOTIFY_NEXT): Agent._finishing_notify_next,
    (State.RUNNING, Input.STEP_ELAPSED): Agent._step_elapsed,
    (State.RESYNCING, Input.STEP_ELAPSED): Agent._step_elapsed,
    (State.IDLE, Input.POLL_DUE): Agent._poll_idle,
    (State.RUNNING, Input.POLL_DUE): Agent._poll_running,
}
"""(state, input) -> handler; anything not listed is ignored in that state."""

_Accepted = Callable[[Agent, _Pending, Message], None]
_Rejected = Callable[[Agent, _Pending, RejectedError], None]
_REPLIES: dict[Purpose, tuple[_Accepted, _Rejected]] = {
    Purpose.START_NEXT: (Agent._start_next_accepted, Agent._start_next_rejected),
    Purpose.PROGRESS: (Agent._update_accepted, Agent._update_rejected),
    Purpose.FINAL: (Agent._update_accepted, Agent._update_rejected),
    Purpose.RESYNC: (Agent._resync_accepted, Agent._describe_rejected),
    Purpose.POLL: (Agent._poll_accepted, Agent._poll_rejected),
    Purpose.RESUME: (Agent._resume_accepted, Agent._describe_rejected),
}
"""Purpose of the outstanding request -> (on accepted, on rejected)."""
