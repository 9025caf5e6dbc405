"""What the checker takes and gives: budgets in, a verdict out (frozen dataclasses only).

THE digest rule
---------------
A job document is identified by ``document_digest``: ``"sha256:" + sha256(canonical).hex``
where ``canonical = json.dumps(json.loads(document), sort_keys=True, separators=(",", ":"))``
encoded as UTF-8 (``ensure_ascii`` left at its default, true). The controller sends the
document as a string (CreateJob ``document``); a device receives it as a JSON object
(``jobDocument``) and computes the same digest over
``json.dumps(job_document, sort_keys=True, separators=(",", ":"))``. Both sides reach the same
canonical text, so whitespace or key order in the string the controller sent does not matter.
A string that is not JSON (it could never reach a device as ``jobDocument``) is hashed as is.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

#: The invariant ids, in report order (also the JUnit test names). ``complete`` judges the
#: history itself (nothing lost, nothing stalled, nothing crashed): the others are only as
#: good as it is.
INVARIANTS = ("complete", "notice", "recover", "no-zombie", "valid-end", "consistent",
              "progress", "reuse", "service", "answered", "steady")


class Status(StrEnum):
    """The outcome of one invariant, and of a whole verdict.

    ``PASS``: cases were checked (at least the required number) and none broke the rule.
    ``FAIL``: a case broke it. ``INCONCLUSIVE``: no case broke it, but fewer cases were seen
    than the drill requires (a PASS over nothing is not a PASS). ``NO_CASES``: nothing to
    check and nothing required (the drill does not exercise it; e.g. ``reuse`` in a drill
    that reuses no jobId): shown as such, never counted as a pass of anything.
    A verdict is FAIL if any invariant is, else INCONCLUSIVE if any is, else PASS.
    """

    PASS = "PASS"
    FAIL = "FAIL"
    INCONCLUSIVE = "INCONCLUSIVE"
    NO_CASES = "NO-CASES"


def document_digest(document: str | Mapping[str, Any]) -> str:
    """The digest of a job document under THE digest rule (module docstring)."""
    if isinstance(document, str):
        try:
            obj: Any = json.loads(document)
        except ValueError:
            return "sha256:" + hashlib.sha256(document.encode("utf-8")).hexdigest()
    else:
        obj = document
    canonical = json.dumps(obj, sort_keys=True, separators=(",", ":"))
    return "sha256:" + hashlib.sha256(canonical.encode("utf-8")).hexdigest()


@dataclass(frozen=True, slots=True, kw_only=True)
class Budgets:
    """How long things may take, in seconds (drill configuration; all overridable).

    ``notice_seconds``: removal of an execution -> the device's ``lost_access``.
    ``recover_seconds``: ``lost_access`` -> the device reports a valid state.
    ``reply_timeout_seconds``: how long a device waits for a reply; also the grace given for
    messages already in flight when the service removed an execution.
    ``in_flight_seconds``: for external devices (judged from their traffic), how long after
    a rejection told a device its execution was gone an update of it may still be one the
    device sent before the rejection reached it.
    """

    notice_seconds: float = 5.0
    recover_seconds: float = 10.0
    reply_timeout_seconds: float = 10.0
    in_flight_seconds: float = 0.2

    def __post_init__(self) -> None:
        for name in ("notice_seconds", "recover_seconds", "reply_timeout_seconds",
                     "in_flight_seconds"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0")


@dataclass(frozen=True, slots=True, kw_only=True)
class Requirements:
    """How many cases a drill must produce for its verdict to count (drill configuration,
    recorded in the history's ``start`` marker so that ``fleet check`` applies the same).

    ``notice_fraction``: ``notice`` needs at least this fraction of the devices targeted by
    the drill's jobs (rounded up) as cases. ``notice_per_behaviour``: every behaviour present
    among the targeted devices needs at least this many ``notice`` cases of its own (a faulty
    behaviour never caught mid-step was never tested). Fewer is INCONCLUSIVE.
    """

    notice_fraction: float = 0.0
    notice_per_behaviour: int = 1

    def __post_init__(self) -> None:
        if not 0.0 <= self.notice_fraction <= 1.0:
            raise ValueError("notice_fraction must be within 0..1")
        if self.notice_per_behaviour < 0:
            raise ValueError("notice_per_behaviour must be >= 0")

    def to_json(self) -> dict[str, Any]:
        return {"noticeFraction": self.notice_fraction,
                "noticePerBehaviour": self.notice_per_behaviour}

    @classmethod
    def from_json(cls, value: object) -> Requirements:
        """From a ``start`` marker's ``requirements`` (defaults for what is missing)."""
        if not isinstance(value, Mapping):
            return cls()
        default = cls()
        fraction = value.get("noticeFraction")
        per = value.get("noticePerBehaviour")
        return cls(
            notice_fraction=float(fraction) if isinstance(fraction, int | float)
            and not isinstance(fraction, bool) else default.notice_fraction,
            notice_per_behaviour=per if isinstance(per, int) and not isinstance(per, bool)
            else default.notice_per_behaviour)


@dataclass(frozen=True, slots=True, kw_only=True)
class Violation:
    """One broken rule: which invariant, which device and job, when, and the ops that show it.

    ``evidence`` holds history operations as plain dicts (``time, process, type, f, value``),
    oldest first, so a report can print them and a reader can grep the history for them.
    """

    invariant: str
    thing_name: str | None
    job_id: str | None
    time: float | None
    message: str
    evidence: tuple[dict[str, Any], ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class InvariantResult:
    """The outcome of one invariant. ``checked`` counts the cases examined and
    ``cases_by_behaviour`` splits them by the behaviour of the device each case is about
    (devices of unknown behaviour under ``"unknown"``; cases about no device, such as the
    service's deletion limit, are in ``checked`` only), so that a pass over zero cases is
    visible as such; ``status`` says whether enough were seen (:class:`Status`);
    ``passed`` is true when no case broke the rule; ``notes`` says what could not be
    checked for lack of data, and why a result is INCONCLUSIVE."""

    name: str
    passed: bool
    violations: tuple[Violation, ...] = ()
    checked: int = 0
    notes: tuple[str, ...] = ()
    cases_by_behaviour: Mapping[str, int] = field(default_factory=dict)
    status: Status = Status.PASS
    #: the cases about each external device (judged from its traffic alone), so that each
    #: gets its own verdict rows
    cases_by_external: Mapping[str, int] = field(default_factory=dict)


@dataclass(frozen=True, slots=True, kw_only=True)
class Distribution:
    """A latency distribution in milliseconds (nearest-rank percentiles; None when empty)."""

    count: int = 0
    p50_ms: float | None = None
    p95_ms: float | None = None
    p99_ms: float | None = None
    max_ms: float | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Metrics:
    """Figures of the drill, computed from the same history as the verdict.

    ``detection_latency``: removal -> ``lost_access``. ``recovery_time``: ``lost_access`` ->
    first valid state (an external device: -> its next ``job_started``, when work was
    pending). ``round_trip``: device request -> its reply (same thing, operation and
    clientToken). ``executions_per_second``: accepted terminal device updates divided by
    ``duration_seconds`` (drill ``start`` to ``end`` markers, else first to last op).
    """

    #: every execution created, by what became of it (:func:`fleet.checker.metrics.account`)
    executions: Mapping[str, int] = field(default_factory=dict)
    #: the service's messages to the devices (:func:`fleet.checker.metrics.messages`)
    messages: Mapping[str, int] = field(default_factory=dict)
    #: each fault injected, and what it hit (:func:`fleet.checker.metrics.faults`)
    faults: list[dict[str, Any]] = field(default_factory=list)
    #: a soak's processes, first and last sample (:func:`fleet.checker.metrics.resources`)
    resources: Mapping[str, Mapping[str, int]] = field(default_factory=dict)
    detection_latency: Distribution = field(default_factory=Distribution)
    recovery_time: Distribution = field(default_factory=Distribution)
    round_trip: Distribution = field(default_factory=Distribution)
    duration_seconds: float = 0.0
    terminal_updates: int = 0
    executions_per_second: float = 0.0
    #: devices targeted by the drill's jobs, and how many of them were executing an
    #: execution when it was removed (the judged notice cases)
    targeted: int = 0
    mid_step: int = 0
    requests: int = 0
    replies: int = 0
    accepted: int = 0
    rejections_by_code: Mapping[str, int] = field(default_factory=dict)
    #: the AWS IoT Core broker semantics the drill's broker lacked (the ``start`` marker's
    #: ``brokerSemantics``: none with the devicesim_aws plugin); None if it does not say
    missing_semantics: tuple[str, ...] | None = None
    #: the secure profile: devices admitted by certificate over mutual TLS
    secure: bool = False
    #: the drill ran against a target (``aws``) instead of a local broker and service
    target: str | None = None
    #: devices judged from their traffic alone (external firmware), sorted
    external: list[str] = field(default_factory=list)


#: what the devicesim_aws broker plugin adds to Mosquitto (docs/broker.md)
AWS_SEMANTICS = ("Jobs replies reach their requester only", "per-thing authorization")


@dataclass(frozen=True, slots=True, kw_only=True)
class Verdict:
    results: list[InvariantResult]
    metrics: Metrics
    status: Status

    @property
    def passed(self) -> bool:
        return self.status is Status.PASS

    @property
    def inconclusive(self) -> list[str]:
        return [r.name for r in self.results if r.status is Status.INCONCLUSIVE]

    def result(self, name: str) -> InvariantResult:
        for r in self.results:
            if r.name == name:
                return r
        raise KeyError(name)

    @property
    def failed(self) -> list[str]:
        return [r.name for r in self.results if r.status is Status.FAIL]

    @property
    def external(self) -> list[str]:
        """The external devices judged (from their traffic alone)."""
        return self.metrics.external

    def rows_for(self, thing: str) -> list[DeviceRow]:
        """One external device's own verdict rows, one per invariant: FAIL if a violation
        names it, PASS if it had cases, else NO-CASES -- or INCONCLUSIVE where the grading
        said the device fell short (``notice``: a drill's external device never caught
        mid-step; not a simulated device judged as if external)."""
        rows = []
        short = f"INCONCLUSIVE for external device {thing}:"
        for r in self.results:
            mine = tuple(v for v in r.violations if v.thing_name == thing)
            cases = r.cases_by_external.get(thing, 0)
            status = Status.FAIL if mine else Status.PASS if cases else \
                Status.INCONCLUSIVE if any(n.startswith(short) for n in r.notes) \
                else Status.NO_CASES
            rows.append(DeviceRow(name=r.name, status=status, checked=cases, violations=mine,
                                  notes=tuple(n for n in r.notes
                                              if n.startswith(f"{thing} "))))
        return rows


@dataclass(frozen=True, slots=True, kw_only=True)
class DeviceRow:
    """One invariant as it stands for one external device."""

    name: str
    status: Status
    checked: int
    violations: tuple[Violation, ...] = ()
    #: what the invariant noted about this device (e.g. how it noticed, for ``notice``)
    notes: tuple[str, ...] = ()
