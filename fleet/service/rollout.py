"""A job's rollout, abort, retry and scheduling configurations: parsing (the botocore
model's limits) and the rules, pure (the store keeps the state and applies them).

Rollout (``jobExecutionsRolloutConfig``): without it every target gets its QUEUED execution
at CreateJob. With it the targets are *planned* and released one at a time, evenly spaced
at the current rate (``60 / rate`` seconds apart; the first at once): ``maximumPerMinute``
alone is a constant rate; ``exponentialRate`` starts at ``baseRatePerMinute`` and
multiplies it by ``incrementFactor`` (up to ``maximumPerMinute`` when given) each time
``rateIncreaseCriteria`` is met again: ``numberOfNotifiedThings`` more things released, or
``numberOfSucceededThings`` more executions SUCCEEDED, since the last increase. AWS does not
document its batching; this even spacing is this emulator's choice (docs/control-plane.md).

Abort (``abortConfig``): after each execution reaches a terminal status, each criterion is
checked; the job is canceled (as CancelJob, with the reason code of the ``abort_reason_code``
setting) once, for one criterion, at least ``minNumberOfExecutedThings`` things were
notified (have an execution) and the executions of its ``failureType`` (``ALL``: FAILED,
REJECTED and TIMED_OUT) are at least ``thresholdPercentage`` % of them.

Retry (``jobExecutionsRetryConfig``): an execution that ends FAILED or TIMED_OUT is queued
again while its thing has retries left: the criterion for that failure type (else the
``ALL`` one) allows ``numberOfRetries`` per thing; an ``ALL`` criterion counts the retries of
both types. AWS does not say how a retry looks to the device; here it is a new QUEUED
execution with the next ``executionNumber`` and ``retryAttempt`` + 1, notified as any.

Scheduling (``schedulingConfig``): the job is SCHEDULED, its targets planned, until
``startTime``; then IN_PROGRESS and released (at once, or by its rollout). At ``endTime``
its ``endBehavior`` applies: ``STOP_ROLLOUT`` drops what was not released yet,
``CANCEL`` / ``FORCE_CANCEL`` cancel the job (with force). Times are UTC,
``YYYY-MM-DDTHH:MM`` as AWS writes them (seconds may follow, an emulator extension for
short drills); AWS wants the start at least 30 minutes ahead and the end 30 minutes after
the start: the ``schedule_minimum_minutes`` setting.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from fleet.service.errors import InvalidRequestException

FAILURE_TYPES: dict[str, tuple[str, ...]] = {
    "FAILED": ("FAILED",), "REJECTED": ("REJECTED",), "TIMED_OUT": ("TIMED_OUT",),
    "ALL": ("FAILED", "REJECTED", "TIMED_OUT"),
}
MAX_RATE = 1000


@dataclass(frozen=True, slots=True)
class Rollout:
    maximum_per_minute: int | None = None
    base_per_minute: int | None = None
    increment_factor: float = 1.0
    #: ("notified" | "succeeded", how many more since the last increase)
    criterion: tuple[str, int] | None = None

    @property
    def initial_rate(self) -> float:
        if self.base_per_minute is not None:
            return float(self.base_per_minute)
        assert self.maximum_per_minute is not None
        return float(self.maximum_per_minute)

    def increased(self, rate: float, notified: int, succeeded: int) -> float | None:
        """The next rate, if the increase criterion is met by the things ``notified`` and
        ``succeeded`` since the last increase (None: keep the rate)."""
        if self.criterion is None:
            return None
        kind, count = self.criterion
        if (notified if kind == "notified" else succeeded) < count:
            return None
        top = float(self.maximum_per_minute or MAX_RATE)
        return min(top, rate * self.increment_factor)


@dataclass(frozen=True, slots=True)
class AbortCriterion:
    failure_type: str
    threshold_percentage: float
    min_executed_things: int

    def met(self, counts: dict[str, int]) -> bool:
        """``counts``: the job's executions by status."""
        executed = sum(counts.values())
        failures = sum(counts.get(status, 0) for status in FAILURE_TYPES[self.failure_type])
        return executed >= self.min_executed_things and (
            failures * 100 >= self.threshold_percentage * executed)

    def describe(self) -> str:
        return (f"{self.failure_type} >= {self.threshold_percentage:g}% of at least "
                f"{self.min_executed_things} things")


def _object(value: Any, name: str, members: tuple[str, ...]) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise InvalidRequestException(f"{name}: must be a JSON object")
    for member in value:
        if member not in members:
            raise InvalidRequestException(f"{name}.{member:.100}: not a member")
    return value


def _integer(value: Any, name: str, low: int, high: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low or (
            high is not None and value > high):
        bounds = f">= {low}" if high is None else f"from {low} to {high}"
        raise InvalidRequestException(f"{name}: must be an integer {bounds}")
    return value


def parse_rollout(value: Any) -> Rollout | None:
    """``jobExecutionsRolloutConfig`` (None if absent)."""
    if value is None:
        return None
    name = "jobExecutionsRolloutConfig"
    config = _object(value, name, ("maximumPerMinute", "exponentialRate"))
    maximum = config.get("maximumPerMinute")
    if maximum is not None:
        maximum = _integer(maximum, f"{name}.maximumPerMinute", 1, MAX_RATE)
    exponential = config.get("exponentialRate")
    if exponential is None:
        if maximum is None:
            raise InvalidRequestException(f"{name}: give maximumPerMinute or exponentialRate")
        return Rollout(maximum_per_minute=maximum)
    ename = f"{name}.exponentialRate"
    rate = _object(exponential, ename, ("baseRatePerMinute", "incrementFactor",
                                        "rateIncreaseCriteria"))
    for member in ("baseRatePerMinute", "incrementFactor", "rateIncreaseCriteria"):
        if member not in rate:
            raise InvalidRequestException(f"{ename}.{member}: required")
    base = _integer(rate["baseRatePerMinute"], f"{ename}.baseRatePerMinute", 1, MAX_RATE)
    factor = rate["incrementFactor"]
    if isinstance(factor, bool) or not isinstance(factor, int | float) or not (
            1.1 <= factor <= 5):
        raise InvalidRequestException(f"{ename}.incrementFactor: must be from 1.1 to 5")
    criteria = _object(rate["rateIncreaseCriteria"], f"{ename}.rateIncreaseCriteria",
                       ("numberOfNotifiedThings", "numberOfSucceededThings"))
    if len(criteria) != 1:
        raise InvalidRequestException(f"{ename}.rateIncreaseCriteria: give exactly one of "
                                      "numberOfNotifiedThings, numberOfSucceededThings")
    (member, count), = criteria.items()
    count = _integer(count, f"{ename}.rateIncreaseCriteria.{member}", 1)
    if maximum is not None and maximum < base:
        raise InvalidRequestException(f"{name}.maximumPerMinute: must be at least "
                                      "baseRatePerMinute")
    return Rollout(maximum_per_minute=maximum, base_per_minute=base,
                   increment_factor=float(factor),
                   criterion=("notified" if member == "numberOfNotifiedThings"
                              else "succeeded", count))


def parse_abort(value: Any) -> tuple[AbortCriterion, ...]:
    """``abortConfig`` (empty if absent)."""
    if value is None:
        return ()
    name = "abortConfig"
    criteria = _object(value, name, ("criteriaList",)).get("criteriaList")
    if not isinstance(criteria, list) or not criteria:
        raise InvalidRequestException(f"{name}.criteriaList: a list of at least one criterion")
    parsed = []
    for i, item in enumerate(criteria):
        where = f"{name}.criteriaList[{i}]"
        c = _object(item, where, ("failureType", "action", "thresholdPercentage",
                                  "minNumberOfExecutedThings"))
        if c.get("failureType") not in FAILURE_TYPES:
            raise InvalidRequestException(f"{where}.failureType: one of "
                                          f"{', '.join(FAILURE_TYPES)}")
        if c.get("action") != "CANCEL":
            raise InvalidRequestException(f"{where}.action: must be CANCEL")
        threshold = c.get("thresholdPercentage")
        if isinstance(threshold, bool) or not isinstance(threshold, int | float) or not (
                0 <= threshold <= 100) or round(threshold, 2) != threshold:
            raise InvalidRequestException(f"{where}.thresholdPercentage: from 0 to 100, at "
                                          "most two decimals")
        parsed.append(AbortCriterion(
            c["failureType"], float(threshold),
            _integer(c.get("minNumberOfExecutedThings"),
                     f"{where}.minNumberOfExecutedThings", 1)))
    return tuple(parsed)


def abort_due(criteria: tuple[AbortCriterion, ...], counts: dict[str, int]
              ) -> AbortCriterion | None:
    """The first criterion ``counts`` (executions by status) meet, if any."""
    return next((c for c in criteria if c.met(counts)), None)


RETRY_TYPES = ("FAILED", "TIMED_OUT", "ALL")
MAX_RETRIES = 10


def parse_retry(value: Any) -> dict[str, int]:
    """``jobExecutionsRetryConfig``: failure type -> numberOfRetries (empty if absent)."""
    if value is None:
        return {}
    name = "jobExecutionsRetryConfig"
    criteria = _object(value, name, ("criteriaList",)).get("criteriaList")
    if not isinstance(criteria, list) or not 1 <= len(criteria) <= 2:
        raise InvalidRequestException(f"{name}.criteriaList: one or two criteria")
    parsed: dict[str, int] = {}
    for i, item in enumerate(criteria):
        where = f"{name}.criteriaList[{i}]"
        c = _object(item, where, ("failureType", "numberOfRetries"))
        kind = c.get("failureType")
        if kind not in RETRY_TYPES:
            raise InvalidRequestException(f"{where}.failureType: one of "
                                          f"{', '.join(RETRY_TYPES)}")
        if kind in parsed:
            raise InvalidRequestException(f"{where}.failureType: {kind} given twice")
        parsed[kind] = _integer(c.get("numberOfRetries"), f"{where}.numberOfRetries", 0,
                                MAX_RETRIES)
    if sum(parsed.values()) > MAX_RETRIES:
        raise InvalidRequestException(f"{name}: at most {MAX_RETRIES} retries in all")
    return parsed


def retry_due(criteria: dict[str, int], status: str, done: dict[str, int]) -> str | None:
    """The failure type to count a retry of an execution ended ``status`` under (None: no
    retry left); ``done``: the thing's retries so far, by the type they were counted
    under."""
    kind = status if status in criteria else "ALL" if "ALL" in criteria else None
    if kind is None:
        return None
    used = sum(done.values()) if kind == "ALL" else done.get(kind, 0)
    return kind if used < criteria[kind] else None


END_BEHAVIORS = ("STOP_ROLLOUT", "CANCEL", "FORCE_CANCEL")


@dataclass(frozen=True, slots=True)
class Schedule:
    start: float | None
    end: float | None
    end_behavior: str = "STOP_ROLLOUT"


def _time(value: Any, name: str) -> float:
    for fmt in ("%Y-%m-%dT%H:%M", "%Y-%m-%dT%H:%M:%S"):
        try:
            parsed = dt.datetime.strptime(str(value), fmt)
        except ValueError:
            continue
        return parsed.replace(tzinfo=dt.UTC).timestamp()
    raise InvalidRequestException(f"schedulingConfig.{name}: {value!r:.70} is not "
                                  "YYYY-MM-DDTHH:MM (UTC)")


def parse_schedule(value: Any, *, now: float, minimum_minutes: float) -> Schedule | None:
    """``schedulingConfig`` (None if absent); maintenance windows are refused by name."""
    if value is None:
        return None
    name = "schedulingConfig"
    config = _object(value, name, ("startTime", "endTime", "endBehavior",
                                   "maintenanceWindows"))
    if "maintenanceWindows" in config:
        raise InvalidRequestException(f"{name}.maintenanceWindows is not supported by this "
                                      "emulator")
    start = None if config.get("startTime") is None else _time(config["startTime"],
                                                                 "startTime")
    end = None if config.get("endTime") is None else _time(config["endTime"], "endTime")
    behavior = config.get("endBehavior", "STOP_ROLLOUT")
    if behavior not in END_BEHAVIORS:
        raise InvalidRequestException(f"{name}.endBehavior: one of {', '.join(END_BEHAVIORS)}")
    lead = minimum_minutes * 60
    if start is not None and start < now + lead:
        raise InvalidRequestException(f"{name}.startTime: at least {minimum_minutes:g} "
                                      "minutes from now")
    if end is not None and end < (now if start is None else start) + lead:
        raise InvalidRequestException(f"{name}.endTime: at least {minimum_minutes:g} "
                                      "minutes after the start")
    return Schedule(start, end, behavior)
