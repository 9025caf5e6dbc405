"""Drill files: TOML, validated into frozen dataclasses with one-line errors naming the field.

A drill is a fleet, a service configuration, budgets and a schedule of steps run in order;
each step waits for its ``when`` condition, then acts through the controller (boto3) or on
the broker. See docs/drills.md ("Drill files") for the full format; in short::

    name = "force-delete"
    description = "..."
    devices = 100
    behaviour = "reference"            # or: [mix] reference = 0.9, stuck = 0.1
    seed = 1
    timeout = 45                       # seconds for the whole schedule to settle
    paced_for = 1000                   # durations are for this many devices (default: devices)
    stall_seconds = 10                 # stop when nothing at all happens for this long

    [budgets]                          # checker budgets (seconds)
    notice_seconds = 5.0

    [checks]                           # cases the verdict needs (fewer: INCONCLUSIVE)
    notice_fraction = 0.2              # of the targeted devices (default 0.2)
    notice_per_behaviour = 1           # for every behaviour among them (default 1)

    [service]                          # jobs service settings (fleet up flags)
    deletion_seconds_per_execution = 0.01

    [external]                         # devices devicesim does not run (real firmware)
    things = ["board-1", "board-2"]    # targeted by every job, judged from their traffic
    connect_seconds = 300              # how long to wait for them to connect

    [[steps]]
    action = "create-job"
    job = "rollout-1"
    targets = 1.0                      # fraction of the fleet
    document = { operation = "firmware-update", version = "2.0.0" }

    [[steps]]
    action = "force-delete-job"
    job = "rollout-1"
    when = { succeeded = 0.5 }         # once half of its executions succeeded
"""

from __future__ import annotations

import json
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from devicesim.wire.topics import THING_NAME_RE
from fleet.checker import Budgets, Requirements
from fleet.service.errors import InvalidRequestException
from fleet.service.faults import MESSAGES
from fleet.service.groups import GROUP_NAME
from fleet.service.rollout import parse_abort, parse_retry, parse_rollout
from fleet.service.settings import ServiceSettings

ACTIONS = {
    "create-job": "create a job (document, targets) targeting a fraction of the fleet, or "
                  "(group) a thing group; with target_selection, rollout, abort, retry",
    "create-group": "register a fraction of the fleet as things and put them in a new "
                    "static thing group (parent: below that group)",
    "add-to-group": "register a fraction of the fleet outside the group and add them to it "
                    "(a continuous job on the group reaches them)",
    "remove-from-group": "take a fraction of the group's members out of it",
    "force-delete-job": "DeleteJob --force, then wait until the deletion completed (wait = "
                        "false: go on at once)",
    "delete-job": "DeleteJob without force (the job must be terminal)",
    "force-cancel-job": "CancelJob --force",
    "cancel-job": "CancelJob without force",
    "force-cancel-executions": "CancelJobExecution --force on a fraction of the job's things",
    "force-delete-executions": "DeleteJobExecution --force on a fraction of the job's things",
    "force-delete-jobs": "DeleteJob --force on several jobs at once (deletion limit drill)",
    "restart-broker": "stop the broker (SIGTERM, or SIGKILL with kill = true) and restart it",
    "restart-service": "kill the jobs service (as SIGKILL would: no DISCONNECT, its memory "
                       "lost) and start it again from its state file after `seconds`",
    "power-off": "cut the power of a fraction of the devices running the job (NVM kept)",
    "power-on": "boot the powered-off devices (clean_session = true: without their MQTT"
                " session, so they missed what was queued for them)",
    "drop-notify": "the service stops publishing notify / notify-next to a fraction of the "
                   "job's targets (AWS does not promise their delivery); each dropped push "
                   "is recorded",
    "heal-notify": "the service publishes every message as usual again (as heal-messages)",
    "duplicate-messages": "the service publishes the `messages` (pushes, replies or all) to "
                          "a fraction of the job's targets twice",
    "delay-messages": "the service publishes them `seconds` late",
    "reorder-messages": "the service publishes each of them after a random delay of up to "
                        "`seconds` (so they may overtake each other)",
    "heal-messages": "end every message fault (drop-notify's too)",
    "network-cut": "reset the connections of a fraction of the job's targets (of the fleet, "
                   "without job) at the network proxy and refuse their reconnects",
    "network-blackhole": "the same devices' connections stay open but nothing moves either "
                         "way (what was held flows on the heal)",
    "network-delay": "delay everything to and from those devices by `seconds`",
    "network-throttle": "at most `rate` bytes per second each way for those devices",
    "network-heal": "end every network fault",
    "settle": "wait until every device is idle and no execution is pending",
}
#: the message actions, and the service's fault each one injects (None: the heal)
MESSAGE_ACTIONS = {"drop-notify": "drop", "duplicate-messages": "duplicate",
                   "delay-messages": "delay", "reorder-messages": "reorder",
                   "heal-messages": None, "heal-notify": None}
#: the network actions, and the proxy's fault each one injects (None: the heal)
NETWORK_ACTIONS = {"network-cut": "cut", "network-blackhole": "blackhole",
                   "network-delay": "delay", "network-throttle": "throttle",
                   "network-heal": None}
CONDITIONS = {
    "at": "seconds after the drill started",
    "started": "fraction of the job's targets that started it",
    "succeeded": "fraction of the job's targets that reported SUCCEEDED",
    "step": "name of a step; with fraction: that many targets reached it",
    "fraction": "with step: the fraction (default 0.5)",
}


class DrillError(ValueError):
    """An invalid drill file; the message names the file and the field."""


@dataclass(frozen=True, slots=True, kw_only=True)
class When:
    at: float | None = None
    started: float | None = None
    succeeded: float | None = None
    step: str | None = None
    fraction: float = 0.5


@dataclass(frozen=True, slots=True, kw_only=True)
class Step:
    action: str
    job: str | None = None
    jobs: tuple[str, ...] = ()
    targets: float = 1.0
    document: dict[str, Any] | None = None
    fraction: float = 1.0
    kill: bool = False
    clean_session: bool = False
    #: force-delete-job, delete-job, force-delete-jobs: wait until the deletion completed
    wait: bool = True
    #: network-delay, delay- and reorder-messages: the delay; network-throttle: the rate
    #: (bytes per second)
    seconds: float = 0.0
    #: the message actions: which messages (pushes, replies, all)
    messages: str = "pushes"
    rate: float = 0.0
    timeout_minutes: int | None = None
    #: the groups: create-job targets it (not a fraction of the fleet); the group actions
    #: act on it
    group: str | None = None
    #: create-group: the group it goes below
    parent: str | None = None
    #: create-job: SNAPSHOT or CONTINUOUS, and the job configurations as CreateJob takes
    #: them (jobExecutionsRolloutConfig, abortConfig, jobExecutionsRetryConfig)
    target_selection: str = "SNAPSHOT"
    rollout: dict[str, Any] | None = None
    abort: dict[str, Any] | None = None
    retry: dict[str, Any] | None = None
    when: When = field(default_factory=When)


DEFAULT_DEVICES = 100
#: how long a drill waits for its external devices to connect, by default
CONNECT_SECONDS = 300.0


@dataclass(frozen=True, slots=True, kw_only=True)
class External:
    """Devices devicesim does not run -- real firmware, a board, any MQTT client -- that
    take part in the drill as things: every job targets them, and they are judged from
    their protocol traffic alone (:mod:`fleet.checker.traffic`)."""

    things: tuple[str, ...] = ()
    #: how long the drill waits for every one of them to connect (its clock starts after)
    connect_seconds: float = CONNECT_SECONDS


@dataclass(frozen=True, slots=True, kw_only=True)
class Drill:
    name: str
    description: str = ""
    devices: int = DEFAULT_DEVICES
    behaviour: str = "reference"
    mix: dict[str, float] = field(default_factory=dict)
    seed: int = 1
    prefix: str = "dev-"
    timeout: float = 60.0
    #: the fleet size the schedule's durations are written for (a drill file: its
    #: ``devices`` unless it says otherwise); see :attr:`pace`
    paced_for: int | None = None
    #: a drill in which nothing is recorded for this long (while it waits for the fleet, not
    #: for a time) stops and says what it was waiting for
    stall_seconds: float = 10.0
    #: a soak: run the steps in waves until this many seconds passed (None: once); each
    #: wave's jobs are named ``<job>-w<n>``, its ``at`` times count from the wave's start,
    #: and ``timeout`` bounds the last wave
    duration: float | None = None
    budgets: Budgets = field(default_factory=Budgets)
    #: what the verdict needs to count; a drill's default asks that a fifth of the targeted
    #: devices be caught mid-step (built-in drills reach about half)
    checks: Requirements = field(default_factory=lambda: Requirements(notice_fraction=0.2))
    service: ServiceSettings = field(default_factory=ServiceSettings)
    external: External = field(default_factory=External)
    steps: tuple[Step, ...] = ()

    @property
    def network(self) -> bool:
        """Whether the schedule injects network faults (its devices then connect through
        the network proxy, :mod:`fleet.drill.proxy`)."""
        return any(s.action in NETWORK_ACTIONS for s in self.steps)

    @property
    def pace(self) -> float:
        """How many times longer every duration of the schedule runs (job documents' steps,
        ``at`` times, the timeout): ``devices / paced_for`` for a fleet bigger than the one
        the drill was paced for, else 1. The devices then send their requests over a
        proportionally longer time: the service sees the request rate the drill was written
        for, and the same share of the fleet is mid-step at a removal, whatever the size."""
        return max(1.0, self.devices / (self.paced_for or self.devices or 1))


def parse_duration(text: str) -> float:
    """``90``, ``90s``, ``30m``, ``2h`` (or ``1h30m``) -> seconds; ValueError otherwise."""
    match = re.fullmatch(r"\s*(?:(\d+(?:\.\d+)?)h)?\s*(?:(\d+(?:\.\d+)?)m)?\s*"
                         r"(?:(\d+(?:\.\d+)?)s?)?\s*", text)
    if not text.strip() or match is None or not any(match.groups()):
        raise ValueError(f"{text!r} is not a duration (e.g. 90s, 30m, 2h, 1h30m)")
    h, m, sec = (float(g) if g else 0.0 for g in match.groups())
    seconds = h * 3600 + m * 60 + sec
    if seconds <= 0:
        raise ValueError(f"{text!r}: expected a positive duration")
    return seconds


def check_external(things: tuple[str, ...]) -> tuple[str, ...]:
    """External thing names, each a valid thing name (and MQTT client id) and given once."""
    for thing in things:
        if not THING_NAME_RE.fullmatch(thing):
            raise ValueError(f"{thing!r} is not a thing name (1-128 of a-z A-Z 0-9 : _ -)")
    repeated = sorted({t for t in things if things.count(t) > 1})
    if repeated:
        raise ValueError(f"{repeated[0]} is named twice")
    return things


def builtin_names() -> list[str]:
    folder = resources.files("fleet.drill") / "builtin"
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".toml"))


def load(name_or_path: str) -> Drill:
    """A built-in drill by name, or a TOML file by path."""
    if name_or_path in builtin_names():
        text = (resources.files("fleet.drill") / "builtin" / f"{name_or_path}.toml").read_text()
        return parse(text, source=name_or_path)
    path = Path(name_or_path)
    if not path.is_file():
        raise DrillError(f"{name_or_path}: no such drill file or built-in drill "
                         f"(built-ins: {', '.join(builtin_names())})")
    return parse(path.read_text(), source=str(path))


def parse(text: str, *, source: str = "<drill>") -> Drill:
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise DrillError(f"{source}: not valid TOML: {e}") from None
    return _Parser(source).drill(raw)


def from_mapping(raw: Mapping[str, Any], *, source: str = "<drill>") -> Drill:
    """A drill from what a drill file holds, as a dict (a drill built in code), validated
    as a file is."""
    return _Parser(source).drill(dict(raw))


class _Parser:
    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, where: str, message: str) -> DrillError:
        return DrillError(f"{self.source}: {where}: {message}")

    def pick(self, table: dict[str, Any], where: str, known: set[str]) -> None:
        unknown = sorted(set(table) - known)
        if unknown:
            raise self.fail(f"{where}{unknown[0]}",
                            f"unknown field (expected one of {', '.join(sorted(known))})")

    def typed(self, value: Any, kind: type | tuple[type, ...], where: str) -> Any:
        if kind in (float, (int, float)) and isinstance(value, int) and not isinstance(value, bool):
            return float(value)
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            name = kind.__name__ if isinstance(kind, type) else "number"
            raise self.fail(where, f"expected {name}, got {value!r:.60}")
        return value

    def fraction(self, value: Any, where: str) -> float:
        number = float(self.typed(value, float, where))
        if not 0.0 <= number <= 1.0:
            raise self.fail(where, f"expected a fraction between 0 and 1, got {number}")
        return number

    def drill(self, raw: dict[str, Any]) -> Drill:
        self.pick(raw, "", {"name", "description", "devices", "behaviour", "mix", "seed",
                            "prefix", "timeout", "paced_for", "stall_seconds", "budgets",
                            "checks", "service", "external", "steps", "duration"})
        kwargs: dict[str, Any] = {"name": self.typed(raw.get("name", self.source), str, "name")}
        for key, kind in (("description", str), ("behaviour", str), ("prefix", str),
                          ("devices", int), ("seed", int), ("timeout", float),
                          ("paced_for", int), ("stall_seconds", float),
                          ("duration", float)):
            if key in raw:
                kwargs[key] = self.typed(raw[key], kind, key)
        if "external" in raw:
            kwargs["external"] = self.external(raw["external"])
        if kwargs.get("devices", 1) < (0 if "external" in kwargs and
                                       kwargs["external"].things else 1):
            raise self.fail("devices", "expected at least 1 (0 only with external devices)")
        if kwargs.get("paced_for", 1) < 1:
            raise self.fail("paced_for", "expected at least 1")
        kwargs.setdefault("paced_for", kwargs.get("devices", DEFAULT_DEVICES))
        if kwargs.get("duration", 1.0) <= 0:
            raise self.fail("duration", "expected a positive number of seconds")
        if kwargs.get("stall_seconds", 1.0) <= 0:
            raise self.fail("stall_seconds", "expected a positive number of seconds")
        if "mix" in raw:
            mix = self.typed(raw["mix"], dict, "mix")
            kwargs["mix"] = {k: float(self.typed(v, float, f"mix.{k}")) for k, v in mix.items()}
        if "budgets" in raw:
            budgets = self.typed(raw["budgets"], dict, "budgets")
            self.pick(budgets, "budgets.", set(Budgets.__dataclass_fields__))
            kwargs["budgets"] = Budgets(**{k: self.typed(v, float, f"budgets.{k}")
                                           for k, v in budgets.items()})
        if "checks" in raw:
            checks = self.typed(raw["checks"], dict, "checks")
            self.pick(checks, "checks.", {"notice_fraction", "notice_per_behaviour"})
            values: dict[str, Any] = {"notice_fraction": 0.2}
            if "notice_fraction" in checks:
                values["notice_fraction"] = self.fraction(checks["notice_fraction"],
                                                          "checks.notice_fraction")
            if "notice_per_behaviour" in checks:
                per = self.typed(checks["notice_per_behaviour"], int,
                                 "checks.notice_per_behaviour")
                if per < 0:
                    raise self.fail("checks.notice_per_behaviour", "expected at least 0")
                values["notice_per_behaviour"] = per
            kwargs["checks"] = Requirements(**values)
        if "service" in raw:
            try:
                kwargs["service"] = ServiceSettings.from_mapping(
                    self.typed(raw["service"], dict, "service"))
            except ValueError as e:
                raise self.fail("service", str(e)) from None
        steps = self.typed(raw.get("steps", []), list, "steps")
        kwargs["steps"] = tuple(self.step(s, f"steps[{i}]") for i, s in enumerate(steps))
        return Drill(**kwargs)

    def external(self, raw: Any) -> External:
        raw = self.typed(raw, dict, "external")
        self.pick(raw, "external.", {"things", "connect_seconds"})
        things = tuple(self.typed(t, str, "external.things")
                       for t in self.typed(raw.get("things", []), list, "external.things"))
        try:
            things = check_external(things)
        except ValueError as e:
            raise self.fail("external.things", str(e)) from None
        seconds = self.typed(raw.get("connect_seconds", CONNECT_SECONDS), float,
                             "external.connect_seconds")
        if seconds <= 0:
            raise self.fail("external.connect_seconds", "expected a positive number of seconds")
        return External(things=things, connect_seconds=seconds)

    def step(self, raw: Any, where: str) -> Step:
        raw = self.typed(raw, dict, where)
        self.pick(raw, f"{where}.", set(Step.__dataclass_fields__))
        action = self.typed(raw.get("action"), str, f"{where}.action")
        if action not in ACTIONS:
            raise self.fail(f"{where}.action", f"unknown action {action!r} (one of "
                                               f"{', '.join(ACTIONS)})")
        kwargs: dict[str, Any] = {"action": action}
        if "job" in raw:
            kwargs["job"] = self.typed(raw["job"], str, f"{where}.job")
        if "jobs" in raw:
            kwargs["jobs"] = tuple(self.typed(j, str, f"{where}.jobs")
                                   for j in self.typed(raw["jobs"], list, f"{where}.jobs"))
        for key in ("targets", "fraction"):
            if key in raw:
                kwargs[key] = self.fraction(raw[key], f"{where}.{key}")
        for key in ("kill", "clean_session", "wait"):
            if key in raw:
                kwargs[key] = self.typed(raw[key], bool, f"{where}.{key}")
        for key in ("seconds", "rate"):
            if key in raw:
                kwargs[key] = self.typed(raw[key], float, f"{where}.{key}")
                if kwargs[key] <= 0:
                    raise self.fail(f"{where}.{key}", "expected a positive number")
        if "messages" in raw:
            kwargs["messages"] = self.typed(raw["messages"], str, f"{where}.messages")
            if kwargs["messages"] not in MESSAGES:
                raise self.fail(f"{where}.messages", f"expected one of {', '.join(MESSAGES)}")
        for action_, key in (("network-delay", "seconds"), ("network-throttle", "rate"),
                             ("delay-messages", "seconds"), ("reorder-messages", "seconds")):
            if action == action_ and key not in kwargs:
                raise self.fail(f"{where}.{key}", f"required by action {action}")
        if "timeout_minutes" in raw:
            kwargs["timeout_minutes"] = self.typed(raw["timeout_minutes"], int,
                                                   f"{where}.timeout_minutes")
        for key in ("group", "parent", "target_selection"):
            if key in raw:
                kwargs[key] = self.typed(raw[key], str, f"{where}.{key}")
        for key in ("group", "parent"):
            if key in kwargs and not GROUP_NAME.fullmatch(kwargs[key]):
                raise self.fail(f"{where}.{key}", "expected 1-128 characters of "
                                                  "[a-zA-Z0-9:_-]")
        if kwargs.get("target_selection", "SNAPSHOT") not in ("SNAPSHOT", "CONTINUOUS"):
            raise self.fail(f"{where}.target_selection", "expected SNAPSHOT or CONTINUOUS")
        for key, check in (("rollout", parse_rollout), ("abort", parse_abort),
                           ("retry", parse_retry)):
            if key in raw:
                kwargs[key] = self.typed(raw[key], dict, f"{where}.{key}")
                try:
                    check(kwargs[key])
                except InvalidRequestException as e:
                    raise self.fail(f"{where}.{key}", e.message) from None
        if action in ("create-group", "add-to-group", "remove-from-group") and \
                "group" not in kwargs:
            raise self.fail(f"{where}.group", f"required by action {action}")
        if "group" in kwargs and "targets" in raw:
            raise self.fail(f"{where}.targets", "a job on a group targets the group's "
                                                "members: give group or targets, not both")
        if "document" in raw:
            document = self.typed(raw["document"], dict, f"{where}.document")
            if len(json.dumps(document)) > 32768:
                raise self.fail(f"{where}.document", "larger than 32 KB")
            kwargs["document"] = document
        needs_job = action not in ("restart-broker", "restart-service", "settle",
                                   "force-delete-jobs", "power-on", "heal-notify",
                                   "heal-messages", "create-group", "add-to-group",
                                   "remove-from-group", *NETWORK_ACTIONS)
        if needs_job and "job" not in kwargs:
            raise self.fail(f"{where}.job", f"required by action {action}")
        if action == "create-job" and "document" not in kwargs:
            raise self.fail(f"{where}.document", "required by action create-job")
        if action == "force-delete-jobs" and not kwargs.get("jobs"):
            raise self.fail(f"{where}.jobs", "required by action force-delete-jobs")
        if "when" in raw:
            kwargs["when"] = when = self.when(raw["when"], f"{where}.when")
            watches_job = (when.started, when.succeeded, when.step) != (None, None, None)
            if watches_job and "job" not in kwargs:
                raise self.fail(f"{where}.job", "required: the job that `when` watches")
        return Step(**kwargs)

    def when(self, raw: Any, where: str) -> When:
        raw = self.typed(raw, dict, where)
        self.pick(raw, f"{where}.", set(CONDITIONS))
        kwargs: dict[str, Any] = {}
        if "at" in raw:
            kwargs["at"] = self.typed(raw["at"], float, f"{where}.at")
        for key in ("started", "succeeded", "fraction"):
            if key in raw:
                kwargs[key] = self.fraction(raw[key], f"{where}.{key}")
        if "step" in raw:
            kwargs["step"] = self.typed(raw["step"], str, f"{where}.step")
        return When(**kwargs)
