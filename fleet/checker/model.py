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
from typing import Any

#: The invariant ids, in report order (also the JUnit test names).
INVARIANTS = ("notice", "recover", "no-zombie", "valid-end", "consistent", "progress", "reuse",
              "service", "answered")


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
    """

    notice_seconds: float = 5.0
    recover_seconds: float = 10.0
    reply_timeout_seconds: float = 10.0

    def __post_init__(self) -> None:
        for name in ("notice_seconds", "recover_seconds", "reply_timeout_seconds"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0")


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
    """The outcome of one invariant. ``checked`` counts the cases examined, so that a pass
    over zero cases (nothing was force-deleted, say) is visible as such; ``notes`` says what
    could not be checked for lack of data."""

    name: str
    passed: bool
    violations: tuple[Violation, ...] = ()
    checked: int = 0
    notes: tuple[str, ...] = ()


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
    first valid state. ``round_trip``: device request -> its reply (same thing, operation and
    clientToken). ``executions_per_second``: accepted terminal device updates divided by
    ``duration_seconds`` (drill ``start`` to ``end`` markers, else first to last op).
    """

    detection_latency: Distribution = field(default_factory=Distribution)
    recovery_time: Distribution = field(default_factory=Distribution)
    round_trip: Distribution = field(default_factory=Distribution)
    duration_seconds: float = 0.0
    terminal_updates: int = 0
    executions_per_second: float = 0.0
    requests: int = 0
    replies: int = 0
    accepted: int = 0
    rejections_by_code: Mapping[str, int] = field(default_factory=dict)


@dataclass(frozen=True, slots=True, kw_only=True)
class Verdict:
    results: list[InvariantResult]
    metrics: Metrics
    passed: bool

    def result(self, name: str) -> InvariantResult:
        for r in self.results:
            if r.name == name:
                return r
        raise KeyError(name)

    @property
    def failed(self) -> list[str]:
        return [r.name for r in self.results if not r.passed]
