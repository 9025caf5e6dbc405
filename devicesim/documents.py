"""Job documents the reference devices understand, and the canonical document digest.

Two operations::

    {"operation": "firmware-update", "version": "2.0.0",
     "steps": [{"name": "download", "seconds": 0.2}, {"name": "install", "seconds": 0.2},
               {"name": "reboot", "seconds": 0.1}, {"name": "verify", "seconds": 0.1}],
     "failAtStep": "install"}
    {"operation": "sleep", "seconds": 1.0}

``steps`` is optional (the defaults above). When given it must name download, install,
reboot and verify, each once and in that order; a step's ``seconds`` is optional too.
``failAtStep`` (optional) injects a failure at the end of that step: the device rolls back
and reports FAILED; with ``failFraction`` (0 to 1, default 1) only that share of the fleet
fails (the devices a hash of thing name and version picks: the same ones on every run, as
a bad image fails the same hardware). ``jitter`` (optional, 0 <= jitter < 1, both
operations) spreads a fleet out: each device runs the job's steps at its own seeded pace,
between ``1 - jitter`` and ``1 + jitter`` times the given durations. ``sleep`` has one
step named ``sleep``; ``seconds`` defaults to 1.0.
:func:`stretched` multiplies a document's durations (a drill paces a bigger fleet with it).
Unknown keys are ignored. Anything else raises :class:`DocumentError`, whose ``reason`` the
agent reports as ``statusDetails.reason`` of a REJECTED update.

:func:`document_digest` is the canonical rule the checker shares:
``"sha256:" + sha256(json.dumps(doc, sort_keys=True, separators=(",", ":")))``.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import dataclass
from typing import Any

FIRMWARE_UPDATE = "firmware-update"
SLEEP = "sleep"
STEP_NAMES = ("download", "install", "reboot", "verify")
DEFAULT_STEP_SECONDS = {"download": 0.2, "install": 0.2, "reboot": 0.1, "verify": 0.1}
DEFAULT_SLEEP_SECONDS = 1.0
MAX_SECONDS = 86400.0
_VERSION = re.compile(r"[A-Za-z0-9._+-]{1,64}")


class DocumentError(ValueError):
    """A job document the device cannot execute; ``reason`` is one line for statusDetails."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Step:
    name: str
    seconds: float


@dataclass(frozen=True, slots=True, kw_only=True)
class FirmwareUpdate:
    version: str
    steps: tuple[Step, ...] = tuple(Step(n, DEFAULT_STEP_SECONDS[n]) for n in STEP_NAMES)
    fail_at_step: str | None = None
    fail_fraction: float = 1.0
    jitter: float = 0.0

    @property
    def image_version(self) -> str | None:
        return self.version

    def fails(self, thing: str, step: str) -> bool:
        """Whether ``thing`` fails at the end of ``step`` (``failAtStep``, ``failFraction``)."""
        if self.fail_at_step != step:
            return False
        digest = hashlib.sha256(f"{thing}:{self.version}".encode()).digest()
        return int.from_bytes(digest[:4], "big") < self.fail_fraction * 2 ** 32


@dataclass(frozen=True, slots=True, kw_only=True)
class Sleep:
    seconds: float = DEFAULT_SLEEP_SECONDS
    jitter: float = 0.0

    @property
    def steps(self) -> tuple[Step, ...]:
        return (Step(SLEEP, self.seconds),)

    @property
    def fail_at_step(self) -> str | None:
        return None

    def fails(self, thing: str, step: str) -> bool:
        return False

    @property
    def image_version(self) -> str | None:
        return None


Plan = FirmwareUpdate | Sleep


def document_digest(doc: Any) -> str:
    canonical = json.dumps(doc, sort_keys=True, separators=(",", ":"))
    return "sha256:" + hashlib.sha256(canonical.encode()).hexdigest()


def parse(doc: Any) -> Plan:
    """Turn a job document into a plan; :class:`DocumentError` if it cannot be executed."""
    if not isinstance(doc, dict):
        raise DocumentError("job document must be a JSON object")
    operation = doc.get("operation")
    if operation is None:
        raise DocumentError("operation is required")
    if not isinstance(operation, str):
        raise DocumentError("operation must be a string")
    if operation == FIRMWARE_UPDATE:
        return _firmware_update(doc)
    if operation == SLEEP:
        return Sleep(seconds=_seconds(doc.get("seconds", DEFAULT_SLEEP_SECONDS), "seconds"),
                     jitter=_jitter(doc))
    raise DocumentError(f"unknown operation {_show(operation)}")


def _firmware_update(doc: dict[str, Any]) -> FirmwareUpdate:
    version = doc.get("version")
    if not isinstance(version, str) or not _VERSION.fullmatch(version):
        raise DocumentError("version must be 1-64 characters of [A-Za-z0-9._+-]")
    raw_steps = doc.get("steps")
    if raw_steps is None:
        steps = FirmwareUpdate(version=version).steps
    else:
        if not isinstance(raw_steps, list):
            raise DocumentError("steps must be a list")
        steps = tuple(_step(s, i) for i, s in enumerate(raw_steps))
        if tuple(s.name for s in steps) != STEP_NAMES:
            raise DocumentError("steps must be download, install, reboot, verify in this order")
    fail_at = doc.get("failAtStep")
    if fail_at is not None and fail_at not in STEP_NAMES:
        raise DocumentError(f"failAtStep must be one of {', '.join(STEP_NAMES)}")
    fraction = doc.get("failFraction", 1.0)
    if isinstance(fraction, bool) or not isinstance(fraction, int | float) or not (
            0 <= fraction <= 1):
        raise DocumentError("failFraction must be a number from 0 to 1")
    return FirmwareUpdate(version=version, steps=steps, fail_at_step=fail_at,
                          fail_fraction=float(fraction), jitter=_jitter(doc))


def stretched(doc: Any, factor: float) -> Any:
    """``doc`` with every duration ``factor`` times as long (defaults written out); a
    document the devices cannot execute is returned as it is, to be rejected as it is."""
    try:
        plan = parse(doc)
    except DocumentError:
        return doc
    out = dict(doc)
    if isinstance(plan, Sleep):
        out["seconds"] = min(MAX_SECONDS, plan.seconds * factor)
    else:
        out["steps"] = [{"name": s.name, "seconds": min(MAX_SECONDS, s.seconds * factor)}
                        for s in plan.steps]
    return out


def _jitter(doc: dict[str, Any]) -> float:
    value = doc.get("jitter", 0.0)
    if (isinstance(value, bool) or not isinstance(value, int | float)
            or not 0 <= value < 1):
        raise DocumentError("jitter must be a number between 0 and 1 (exclusive)")
    return float(value)


def _step(raw: Any, index: int) -> Step:
    where = f"steps[{index}]"
    if not isinstance(raw, dict):
        raise DocumentError(f"{where} must be an object")
    name = raw.get("name")
    if not isinstance(name, str) or name not in STEP_NAMES:
        raise DocumentError(f"{where}.name must be one of {', '.join(STEP_NAMES)}")
    return Step(name, _seconds(raw.get("seconds", DEFAULT_STEP_SECONDS[name]), f"{where}.seconds"))


def _seconds(value: Any, where: str) -> float:
    if (isinstance(value, bool) or not isinstance(value, int | float)
            or not math.isfinite(value) or not 0 <= value <= MAX_SECONDS):
        raise DocumentError(f"{where} must be a number of seconds between 0 and {MAX_SECONDS:g}")
    return float(value)


def _show(value: str) -> str:
    text = repr(value)
    return text if len(text) <= 66 else text[:63] + "..."
