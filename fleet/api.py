"""devicesim's Python API: the emulated AWS IoT Jobs service, a device fleet and a drill, from
your own code and tests (docs/python-api.md). ``fleet drill`` and the pytest plugin
(:mod:`fleet.pytest_plugin`) are users of it; it starts the service as ``fleet up`` does
(:mod:`fleet.service.local`) and devices as ``devicesim run`` does (:mod:`devicesim.engine`).

Each entry point comes in two forms. The plain one is for synchronous code (a pytest test,
a script): it runs on its own event loop in a background thread, so it also works under a
running loop. The ``_async`` one runs on the caller's loop::

    with jobs_service() as service:                     # Mosquitto + the jobs service
        with device_fleet(service, 10, behaviour="reference") as devices:
            service.iot.create_job(jobId="j1", targets=devices.arns, document="{}")
            devices.wait_for("job_finished", job_id="j1")

    outcome = run_drill("force-delete", devices=24, behaviour=MyDevice)
    assert outcome.passed, outcome.explain()

    async with jobs_service_async() as service: ...
    async with device_fleet_async(service, 10) as devices: ...
    outcome = await run_drill_async("force-delete")

Errors: a bad argument (an unknown behaviour or drill, a bad size) is a ``ValueError`` with a
one-line message (:class:`~fleet.drill.spec.DrillError` and
:class:`~fleet.broker.BrokerError` are ones); a drill that runs but does not pass is not an
error: its :class:`DrillOutcome` says why (:meth:`DrillOutcome.check` raises
:class:`DrillFailed`, an ``AssertionError``, for code that wants one).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import logging
import re
import secrets
import sys
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator, Mapping, Sequence
from functools import cached_property
from pathlib import Path
from typing import Any, TypeVar

from devicesim.agent import AgentConfig
from devicesim.behaviours import Behaviour, behaviour_name, resolve
from devicesim.engine import Fleet, FleetConfig, describe
from devicesim.loop import loop_factory
from devicesim.wire.events import DeviceEvent, DeviceEventKind
from devicesim.wire.history import Op, read
from fleet.broker import BrokerAddress, BrokerError
from fleet.checker import InvariantResult, Metrics, Status, Verdict, Violation
from fleet.checker.report import verdict_line, write_reports
from fleet.drill import spec
from fleet.drill.controller import iot_client
from fleet.drill.runner import Interrupt, RunOptions, run
from fleet.drill.spec import Drill, DrillError
from fleet.service.local import serving
from fleet.service.settings import ServiceSettings

__all__ = [
    "Behaviour", "BrokerError", "DeviceFleet", "Drill", "DrillError", "DrillFailed",
    "DrillOutcome", "InvariantResult", "Metrics", "Service", "ServiceSettings", "Status",
    "Verdict", "Violation", "builtin_drills", "device_fleet", "device_fleet_async",
    "drill_spec", "jobs_service", "jobs_service_async", "run_drill", "run_drill_async",
]

log = logging.getLogger(__name__)
T = TypeVar("T")
#: the device events' kinds (docs/history.md)
KINDS = frozenset(k.value for k in DeviceEventKind)
BehaviourSpec = str | type[Behaviour]
#: behaviour weights, each a name or a class (``{"reference": 0.9, MyDevice: 0.1}``)
MixSpec = Mapping[Any, float]
DrillSpec = str | Path | Mapping[str, Any] | Drill

# ---------------------------------------------------------------------------------------------
# the jobs service
# ---------------------------------------------------------------------------------------------


class Service:
    """A running broker and jobs service (:func:`jobs_service`).

    ``broker_url`` is where devices connect (``mqtt://127.0.0.1:PORT``); ``broker`` the
    address of the service's own privileged connection (with its secret, for tools that
    watch every thing); ``endpoint`` the control plane (boto3's ``iot``, the AWS CLI's
    ``--endpoint-url``) and ``jobs_data_endpoint`` the HTTPS data plane (``iot-jobs-data``).
    :attr:`iot` and :attr:`jobs_data` are boto3 clients bound to them."""

    def __init__(self, *, broker: BrokerAddress, devices: BrokerAddress, endpoint: str,
                 jobs_data_endpoint: str, state: Path, settings: ServiceSettings,
                 failures: list[str] | None = None) -> None:
        self.broker = broker
        self.broker_url = devices.url
        self.endpoint = endpoint
        self.jobs_data_endpoint = jobs_data_endpoint
        self.state = state
        self.region = settings.region
        self.account_id = settings.account_id
        #: one line per failure the service survived (a raising handler, a failed timer
        #: iteration, ...), ``"{where}: {Type}: {message}"``; each is also logged at ERROR
        self.failures = [] if failures is None else failures

    def __repr__(self) -> str:
        return (f"Service(broker_url={self.broker_url!r}, endpoint={self.endpoint!r}, "
                f"jobs_data_endpoint={self.jobs_data_endpoint!r})")

    def client(self, service_name: str = "iot") -> Any:
        """A new boto3 client of ``iot`` (the control plane) or ``iot-jobs-data``."""
        if service_name not in ("iot", "iot-jobs-data"):
            raise ValueError(f"client {service_name!r}: 'iot' or 'iot-jobs-data'")
        endpoint = self.endpoint if service_name == "iot" else self.jobs_data_endpoint
        return iot_client(endpoint, self.region, service_name=service_name)

    @cached_property
    def iot(self) -> Any:
        """A boto3 ``iot`` client of the control plane."""
        return self.client("iot")

    @cached_property
    def jobs_data(self) -> Any:
        """A boto3 ``iot-jobs-data`` client of the HTTPS data plane."""
        return self.client("iot-jobs-data")

    def thing_arn(self, thing: str) -> str:
        return _thing_arn(self.region, self.account_id, thing)

    def thing_arns(self, things: Sequence[str]) -> list[str]:
        return [self.thing_arn(t) for t in things]


@contextlib.asynccontextmanager
async def jobs_service_async(*, broker: str | BrokerAddress | None = None,
                             state: Path | None = None,
                             settings: ServiceSettings | Mapping[str, Any] | None = None,
                             seed: int = 0) -> AsyncIterator[Service]:
    """Start a broker and the jobs service on this loop; stop both on the way out.

    ``broker``: a Mosquitto you run (``mqtt://HOST:PORT`` or a ``BrokerAddress``); default:
    an embedded one on a free loopback port. ``state``: the service's SQLite file (default:
    in a temporary directory, removed after). ``settings``: :class:`ServiceSettings`, or a
    mapping of its fields (the ``fleet up`` flags without ``--``, e.g.
    ``{"terminal_update_code": "InvalidStateTransition"}``)."""
    if isinstance(settings, Mapping):
        settings = ServiceSettings.from_mapping(dict(settings))
    settings = settings or ServiceSettings()
    # a broker given by URL: the privileged identity's secret from $DEVICESIM_BROKER_SECRET
    address = BrokerAddress.parse(broker).privileged() if isinstance(broker, str) else broker
    with contextlib.ExitStack() as stack:
        if state is None:
            state = Path(stack.enter_context(tempfile.TemporaryDirectory(
                prefix="devicesim-service-"))) / "jobs.db"
        survived: list[str] = []

        def failed(where: str, error: BaseException) -> None:
            log.error("jobs service: component failed where=%r error=%r", where, error)
            survived.append(f"{where}: {describe(error)}")

        # a client id of its own and a clean session: services on one broker one after
        # another (one per test on the session's) leave nothing on it for the next
        async with serving(state=state, broker=address, settings=settings, seed=seed,
                           on_failure=failed, session=secrets.token_hex(4)) as up:
            assert up.service.endpoint is not None
            assert up.service.jobs_data_endpoint is not None
            service = Service(broker=up.broker, devices=up.devices,
                              endpoint=up.service.endpoint,
                              jobs_data_endpoint=up.service.jobs_data_endpoint, state=state,
                              settings=settings, failures=survived)
            yield service


@contextlib.contextmanager
def jobs_service(*, broker: str | BrokerAddress | None = None, state: Path | None = None,
                 settings: ServiceSettings | Mapping[str, Any] | None = None,
                 seed: int = 0) -> Iterator[Service]:
    """:func:`jobs_service_async`, on its own loop in a background thread."""
    with _Background("devicesim-service") as loop, loop.enter(jobs_service_async(
            broker=broker, state=state, settings=settings, seed=seed)) as service:
        yield service


# ---------------------------------------------------------------------------------------------
# a device fleet
# ---------------------------------------------------------------------------------------------


class DeviceFleet:
    """A running fleet (:func:`device_fleet`): ``things`` (names), ``arns`` (to target them
    in CreateJob), ``behaviours`` (thing -> behaviour name). What the devices do and see is
    recorded as history ops (:attr:`ops`); their device events (``job_started``,
    ``lost_access``, ``recovered``, ...: docs/history.md) can be listed and awaited."""

    def __init__(self, fleet: Fleet, region: str, account_id: str) -> None:
        self._fleet = fleet
        self.things = fleet.config.thing_names()
        self.arns = [_thing_arn(region, account_id, t) for t in self.things]
        self.behaviours = dict(fleet.assignment)
        self._ops: list[Op] = []
        self._events: dict[str, list[DeviceEvent]] = {}  # by kind
        self._changed = threading.Condition()
        #: the events wait_for_async waits on, each with its loop (maybe not the fleet's)
        self._wakers: set[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = set()
        #: runs a reader of the devices' state where they run (the sync form: on their loop)
        self._on_loop: Callable[[Callable[[], Any]], Any] = lambda read: read()

    def __repr__(self) -> str:
        return f"DeviceFleet({len(self.things)} devices, {self.things[0]}..)"

    def _record(self, op: Op) -> None:  # the fleet's record hook, on its loop
        with self._changed:
            self._ops.append(op)
            if not op.f.startswith("device:"):
                return  # waiters wait for device events only
            self._events.setdefault(op.f[len("device:"):], []).append(
                DeviceEvent.from_dict(op.value))
            self._changed.notify_all()
            wakers = list(self._wakers)
        for loop, waker in wakers:
            with contextlib.suppress(RuntimeError):  # its loop closed meanwhile
                loop.call_soon_threadsafe(waker.set)

    @property
    def ops(self) -> list[Op]:
        """What the devices did and saw so far (requests, replies, pushes, device events)."""
        with self._changed:
            return list(self._ops)

    def events(self, kind: str | None = None, *, thing: str | None = None,
               job_id: str | None = None) -> list[DeviceEvent]:
        """The devices' events so far, oldest first; only ``kind`` (e.g. ``lost_access``),
        of ``thing``, about ``job_id``, when given."""
        with self._changed:
            kinds = [kind] if kind is not None else list(self._events)
            found = [e for k in kinds for e in self._events.get(k, ())
                     if (thing is None or e.thing_name == thing)
                     and (job_id is None or e.job_id == job_id)]
        if kind is None:  # several kinds: in the order they happened
            found.sort(key=lambda e: (e.timestamp, e.seq or 0))
        return found

    def _firsts(self, kind: str, job_id: str | None) -> Callable[[], dict[str, DeviceEvent]]:
        """Each device's first ``kind`` event (about ``job_id``) so far, for a waiter:
        each call (under the lock) reads only the events recorded since the last."""
        seen: dict[str, DeviceEvent] = {}
        read = 0

        def update() -> dict[str, DeviceEvent]:
            nonlocal read
            events = self._events.get(kind, [])
            for event in events[read:]:
                if job_id is None or event.job_id == job_id:
                    seen.setdefault(event.thing_name, event)
            read = len(events)
            return seen

        return update

    def _waited(self, things: Sequence[str] | None, kind: str) -> list[str]:
        if kind not in KINDS:
            raise ValueError(f"wait_for: {kind!r} is not a device event (one of "
                             f"{', '.join(sorted(KINDS))})")
        waited = list(self.things if things is None else things)
        unknown = sorted(set(waited) - set(self.things))
        if unknown:
            raise ValueError(f"wait_for: {unknown[0]} is not a device of this fleet")
        return waited

    def wait_for(self, kind: str, *, things: Sequence[str] | None = None,
                 job_id: str | None = None, timeout: float = 30.0) -> list[DeviceEvent]:
        """Block until each of ``things`` (default: every device) has had a ``kind`` event
        (about ``job_id``, when given) since the fleet started; return the first such event
        of each, in the order of ``things``. TimeoutError names the devices still waited
        for."""
        waited, firsts = self._waited(things, kind), self._firsts(kind, job_id)
        with self._changed:
            if not self._changed.wait_for(lambda: firsts().keys() >= set(waited), timeout):
                missing = sorted(set(waited) - firsts().keys())
                raise TimeoutError(
                    f"wait_for {kind!r}{f' of job {job_id!r}' if job_id else ''}: "
                    f"{len(missing)} of {len(waited)} devices had none after {timeout:g} s "
                    f"({', '.join(missing[:5])}{', ...' if len(missing) > 5 else ''})")
            seen = firsts()
        return [seen[t] for t in waited]

    async def wait_for_async(self, kind: str, *, things: Sequence[str] | None = None,
                             job_id: str | None = None) -> list[DeviceEvent]:
        """:meth:`wait_for` without blocking the caller's loop; bound it with
        ``asyncio.timeout``."""
        waited, firsts = self._waited(things, kind), self._firsts(kind, job_id)
        waker = (asyncio.get_running_loop(), asyncio.Event())
        with self._changed:
            self._wakers.add(waker)
        try:
            while True:
                with self._changed:
                    seen = firsts()
                    if seen.keys() >= set(waited):
                        return [seen[t] for t in waited]
                    waker[1].clear()
                await waker[1].wait()
        finally:
            with self._changed:
                self._wakers.discard(waker)

    def states(self) -> dict[str, int]:
        """How many devices are in each agent state (``idle``, ``running``, ...)."""
        return dict(self._on_loop(self._fleet.states))

    def summary(self) -> dict[str, Any]:
        """Per device its behaviour, event count and persisted NVM; the failures survived
        (``devicesim run --summary``'s JSON)."""
        summary: dict[str, Any] = self._on_loop(self._fleet.summary)
        return summary

    @property
    def failures(self) -> list[str]:
        """One line per failure a device survived (a behaviour that raised, ...)."""
        return list(self._fleet.failures)


@contextlib.asynccontextmanager
async def device_fleet_async(target: Service | str | BrokerAddress, count: int = 1, *,
                             behaviour: BehaviourSpec = "reference",
                             mix: MixSpec | None = None,
                             prefix: str = "dev-", seed: int = 1,
                             state_dir: Path | None = None, agent: AgentConfig | None = None,
                             jobs_data: str | None = None) -> AsyncIterator[DeviceFleet]:
    """Connect ``count`` simulated devices (``{prefix}0000``, ...) to ``target`` -- a
    :class:`Service`, or a broker (``mqtt://HOST:PORT``) whose jobs service you run -- on
    this loop; disconnect them on the way out.

    ``behaviour``: a built-in name, ``package.module:Class``, or a
    :class:`~devicesim.behaviours.Behaviour` subclass (defined at the top level of an
    importable module); ``mix``: weights of several (instead of ``behaviour``). ``seed``
    picks which device gets which; ``state_dir`` keeps each device's NVM in a file;
    ``agent`` the agent's timeouts and retries; ``jobs_data``: the HTTPS data plane for
    ``http`` devices (default: the service's)."""
    if count < 1:
        raise ValueError(f"device_fleet: count must be at least 1, got {count}")
    weights = _mix(behaviour, mix)
    region, account = "us-east-1", "123456789012"
    if isinstance(target, Service):
        address = BrokerAddress.parse(target.broker_url)
        region, account = target.region, target.account_id
        jobs_data = jobs_data or target.jobs_data_endpoint
    else:
        address = BrokerAddress.parse(target) if isinstance(target, str) else target
    config = FleetConfig(host=address.host, port=address.port, prefix=prefix, count=count,
                         mix=weights, seed=seed, state_dir=state_dir,
                         agent=agent or AgentConfig(), jobs_data=jobs_data)
    handle: DeviceFleet | None = None

    def record(op: Op) -> None:
        if handle is not None:
            handle._record(op)

    fleet = Fleet(config, record=record)
    handle = DeviceFleet(fleet, region, account)
    await fleet.start()  # a failure stops what it connected and raises FleetStartError
    try:
        yield handle
    finally:
        await fleet.stop()


@contextlib.contextmanager
def device_fleet(target: Service | str | BrokerAddress, count: int = 1, *,
                 behaviour: BehaviourSpec = "reference",
                 mix: MixSpec | None = None, prefix: str = "dev-",
                 seed: int = 1, state_dir: Path | None = None, agent: AgentConfig | None = None,
                 jobs_data: str | None = None) -> Iterator[DeviceFleet]:
    """:func:`device_fleet_async`, on its own loop in a background thread."""
    with _Background("devicesim-fleet") as loop, loop.enter(device_fleet_async(
            target, count, behaviour=behaviour, mix=mix, prefix=prefix, seed=seed,
            state_dir=state_dir, agent=agent, jobs_data=jobs_data)) as fleet:
        fleet._on_loop = loop.run
        yield fleet


def _mix(behaviour: BehaviourSpec, mix: Mapping[Any, float] | None,
         imported: bool = True) -> dict[str, float]:
    """Behaviour weights by name, each imported now unless not ``imported`` (a one-line
    ValueError names one that does not)."""
    weights = {behaviour_name(k): float(v) for k, v in mix.items()} if mix else \
        {behaviour_name(behaviour): 1.0}
    for name, weight in weights.items():
        if weight < 0:
            raise ValueError(f"mix: {name}: a weight cannot be negative")
        if imported or ":" not in name:
            resolve(name)
    if sum(weights.values()) <= 0:
        raise ValueError("mix: weights must add up to more than 0")
    return weights


# ---------------------------------------------------------------------------------------------
# drills
# ---------------------------------------------------------------------------------------------


def builtin_drills() -> list[str]:
    """The built-in drills' names (``fleet drill --list`` describes them)."""
    return spec.builtin_names()


def drill_spec(drill: DrillSpec, *, devices: int | None = None,
               behaviour: BehaviourSpec | None = None,
               mix: MixSpec | None = None, seed: int | None = None,
               timeout: float | None = None, duration: float | str | None = None,
               stall_seconds: float | None = None, external: Sequence[str] | None = None,
               external_timeout: float | None = None, import_behaviours: bool = True
               ) -> Drill:
    """A drill -- a built-in name, a drill file (``str`` or ``Path``), the file's content as
    a mapping (a drill built in code, validated as a file is) or a :class:`Drill` -- with
    these changes. ``devices`` also stretches the drill's timeout for a fleet bigger than the
    one it is paced for, unless ``timeout`` is given; ``duration`` (seconds, or ``"30m"``)
    makes it a soak; ``external``: things whose devices you run yourself. Each behaviour is
    imported now (a one-line error names one that does not), unless ``import_behaviours``
    is false (the devices run elsewhere: shards on other hosts)."""
    if isinstance(drill, Drill):
        base = drill
    elif isinstance(drill, Mapping):
        base = spec.from_mapping(drill, source=str(drill.get("name", "<drill>")))
    else:
        base = spec.load(str(drill))
    changes: dict[str, Any] = {}
    ext = base.external
    if external is not None:
        things = tuple(t.strip() for t in external if t.strip())
        if not things:
            raise ValueError("external: name at least one thing")
        try:
            ext = dataclasses.replace(ext, things=spec.check_external(things))
        except ValueError as e:
            raise ValueError(f"external: {e}") from None
    if external_timeout is not None:
        if external_timeout <= 0:
            raise ValueError("external timeout: must be positive")
        ext = dataclasses.replace(ext, connect_seconds=external_timeout)
    changes["external"] = ext
    if devices is not None:
        if devices < (0 if ext.things else 1):
            raise ValueError("devices: must be at least 1 (0 only with external devices)")
        changes["devices"] = devices
    if behaviour is not None and mix:
        raise ValueError("behaviour and mix: choose one")
    if behaviour is not None:
        changes.update(behaviour=next(iter(_mix(behaviour, None, import_behaviours))), mix={})
    if mix:
        changes["mix"] = _mix("reference", mix, import_behaviours)
    else:  # the drill's own, checked now
        _mix(changes.get("behaviour", base.behaviour), dict(base.mix) or None,
             import_behaviours)
    if seed is not None:
        changes["seed"] = seed
    if timeout is not None:
        if timeout <= 0:
            raise ValueError("timeout: must be positive")
        changes["timeout"] = timeout
    elif devices is not None:
        # the timeout stretches with every other duration of a drill paced for a bigger fleet
        changes["timeout"] = base.timeout * dataclasses.replace(base, devices=devices).pace
    if duration is not None:
        try:
            seconds = spec.parse_duration(duration) if isinstance(duration, str) else \
                float(duration)
        except ValueError as e:
            raise ValueError(f"duration: {e}") from None
        if seconds <= 0:
            raise ValueError("duration: must be positive")
        changes["duration"] = seconds
    if stall_seconds is not None:
        if stall_seconds <= 0:
            raise ValueError("stall seconds: must be positive")
        changes["stall_seconds"] = stall_seconds
    return dataclasses.replace(base, **changes)


class DrillFailed(AssertionError):
    """A drill that did not pass (:meth:`DrillOutcome.check`); its message is
    :meth:`DrillOutcome.explain`."""

    def __init__(self, outcome: DrillOutcome) -> None:
        super().__init__(outcome.explain())
        self.outcome = outcome


@dataclasses.dataclass(frozen=True, slots=True, repr=False)
class DrillOutcome:
    """What a drill gave: the :class:`Verdict` (each invariant's status, cases and
    violations, and the metrics) and where its history and reports are.

    ``passed`` is true only for a PASS: every invariant held over enough cases on a complete
    history (an INCONCLUSIVE drill did not pass)."""

    drill: Drill
    verdict: Verdict
    report_dir: Path
    history_path: Path
    #: ``report.json``, ``junit.xml`` and (unless turned off) ``report.html``
    report_paths: tuple[Path, ...]
    seconds: float
    #: the schedule did not settle before the drill's timeout (the verdict is FAIL)
    timed_out: bool = False
    #: the signal's name, when the drill was interrupted
    interrupted: str | None = None

    @property
    def name(self) -> str:
        return self.drill.name

    @property
    def status(self) -> Status:
        return self.verdict.status

    @property
    def passed(self) -> bool:
        return self.verdict.status is Status.PASS

    @property
    def failed(self) -> list[str]:
        """The invariants that failed."""
        return self.verdict.failed

    @property
    def inconclusive(self) -> list[str]:
        """The invariants that saw too few cases."""
        return self.verdict.inconclusive

    @property
    def invariants(self) -> dict[str, InvariantResult]:
        """Each invariant's result by name: ``status``, ``checked`` (cases), ``violations``,
        ``cases_by_behaviour``, ``notes``."""
        return {r.name: r for r in self.verdict.results}

    @property
    def violations(self) -> list[Violation]:
        return [v for r in self.verdict.results for v in r.violations]

    @property
    def failing_devices(self) -> list[str]:
        """The devices some violation is about, sorted."""
        return sorted({v.thing_name for v in self.violations if v.thing_name})

    @property
    def metrics(self) -> Metrics:
        return self.verdict.metrics

    @property
    def report_html(self) -> Path | None:
        return next((p for p in self.report_paths if p.suffix == ".html"), None)

    def history(self) -> list[Op]:
        """The drill's history (read back from :attr:`history_path`)."""
        return read(self.history_path)

    def explain(self, *, violations: int = 3) -> str:
        """Several lines: the verdict, each invariant that failed or was inconclusive with its
        cases, the devices its violations are about and its first ``violations``
        violations, and where the reports are."""
        d = self.drill
        lines = [f"drill {d.name} ({d.devices} devices, seed {d.seed}): "
                 f"{verdict_line(self.verdict)} in {self.seconds:.1f} s"]
        if self.timed_out:
            lines.append("  the schedule did not settle before the drill's timeout")
        if self.interrupted:
            lines.append(f"  interrupted by {self.interrupted}")
        for r in self.verdict.results:
            if r.status is Status.FAIL:
                things = sorted({v.thing_name for v in r.violations if v.thing_name})
                shown = ", ".join(things[:8]) + (f", ... ({len(things)})" if len(things) > 8
                                                 else "")
                lines.append(f"  {r.name}: FAIL, {len(r.violations)} violation(s) in "
                             f"{r.checked} cases" + (f"; devices {shown}" if things else ""))
                for v in r.violations[:violations]:
                    lines.append(f"    {v.thing_name or '-'} {v.job_id or '-'}: {v.message}")
            elif r.status is Status.INCONCLUSIVE:
                note = next((n for n in r.notes if n.startswith("INCONCLUSIVE")), "")
                lines.append(f"  {r.name}: INCONCLUSIVE, {r.checked} cases. {note}".rstrip())
        shown_report = self.report_html or self.report_dir
        lines.append(f"  report: {shown_report}  (history: {self.history_path}; re-check: "
                     f"fleet check {self.history_path})")
        return "\n".join(lines)

    def check(self) -> DrillOutcome:
        """Raise :class:`DrillFailed` unless the drill passed; return it otherwise."""
        if not self.passed:
            raise DrillFailed(self)
        return self

    def __repr__(self) -> str:  # short: pytest shows it in ``assert outcome.passed``
        devices = self.failing_devices
        who = f" devices {','.join(devices[:3])}{',...' if len(devices) > 3 else ''}" \
            if devices else ""
        return (f"<DrillOutcome {self.name} {verdict_line(self.verdict)}{who} "
                f"report {self.report_html or self.report_dir}>")


async def run_drill_async(drill: DrillSpec, *, devices: int | None = None,
                          behaviour: BehaviourSpec | None = None,
                          mix: MixSpec | None = None,
                          seed: int | None = None,
                          timeout: float | None = None,  # noqa: ASYNC109 (the drill's)
                          duration: float | str | None = None, workers: int = 1,
                          broker: str | None = None, report_dir: Path | None = None,
                          html: bool = True, status: Callable[[str], None] | None = None,
                          options: RunOptions | None = None) -> DrillOutcome:
    """Run a drill (:func:`drill_spec` says what ``drill`` and the changes may be) on this
    loop and judge it; write its history and reports into ``report_dir`` (default: a new
    temporary directory, kept). ``workers``: device processes (1: the devices run in this
    process); ``broker``: a Mosquitto you run instead of the embedded one; ``status`` hears
    the schedule's steps; ``html``: draw ``report.html`` too. ``options`` gives the
    runner's every option (:class:`~fleet.drill.runner.RunOptions`: ``fleet drill``'s)."""
    options = options or RunOptions()
    plan = drill_spec(drill, devices=devices, behaviour=behaviour, mix=mix, seed=seed,
                      timeout=timeout, duration=duration,
                      import_behaviours=not options.shards)  # shards import their own
    if workers < 1 or workers > max(1, plan.devices):
        raise ValueError(f"workers: between 1 and the fleet's {plan.devices} devices")
    options = dataclasses.replace(options, workers=workers)
    if broker is not None:
        options = dataclasses.replace(options, broker_url=broker)
    if status is not None:
        options = dataclasses.replace(options, status=status)
    out = report_dir or options.report_dir or Path(tempfile.mkdtemp(
        prefix=f"devicesim-{_slug(plan.name)}-"))
    began = time.monotonic()
    result = await run(plan, dataclasses.replace(options, report_dir=out))
    paths = await asyncio.to_thread(
        write_reports, result.verdict, out, result.history_path,
        result.timeline if html else None, plan.budgets)
    return DrillOutcome(drill=plan, verdict=result.verdict, report_dir=out,
                        history_path=result.history_path, report_paths=tuple(paths),
                        seconds=time.monotonic() - began, timed_out=result.timed_out,
                        interrupted=result.interrupted)


def run_drill(drill: DrillSpec, *, devices: int | None = None,
              behaviour: BehaviourSpec | None = None,
              mix: MixSpec | None = None, seed: int | None = None,
              timeout: float | None = None, duration: float | str | None = None,
              workers: int = 1, broker: str | None = None, report_dir: Path | None = None,
              html: bool = True, status: Callable[[str], None] | None = None) -> DrillOutcome:
    """:func:`run_drill_async`, on its own loop in a background thread. Ctrl-C stops the
    drill in order (everything it started is stopped, the history so far is judged) and
    then raises KeyboardInterrupt; a second Ctrl-C hurries the stopping."""
    plan = drill_spec(drill, devices=devices, behaviour=behaviour, mix=mix, seed=seed,
                      timeout=timeout, duration=duration)  # bad arguments fail here, at once
    interrupt = Interrupt()
    with _Background(f"devicesim-drill-{_slug(plan.name)}") as loop:
        future = loop.submit(run_drill_async(
            plan, workers=workers, broker=broker, report_dir=report_dir, html=html,
            status=status, options=RunOptions(interrupt=interrupt)))
        try:
            return future.result()
        except KeyboardInterrupt:
            loop.call_soon(interrupt.set, "SIGINT")
            with contextlib.suppress(Exception):
                future.result()  # the drill stops in order
            raise


def _thing_arn(region: str, account_id: str, thing: str) -> str:
    return f"arn:aws:iot:{region}:{account_id}:thing/{thing}"


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]+", "_", text).strip("_")[:60] or "drill"


# ---------------------------------------------------------------------------------------------
# the background loop behind the synchronous entry points
# ---------------------------------------------------------------------------------------------

class _Background:
    """An event loop (uvloop where installed) in a thread of its own, for synchronous
    callers; on the way out it waits for what it runs. (A daemon thread: a process that
    exits with a service still open does not wait for it; its broker is stopped then,
    :mod:`fleet.service.local`.)"""

    def __init__(self, name: str) -> None:
        self._name = name
        self._loop = (loop_factory() or asyncio.new_event_loop)()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._exits: list[Callable[[], None]] = []

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_forever()

    def __enter__(self) -> _Background:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def submit(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        return asyncio.run_coroutine_threadsafe(coro, self._loop)

    def call(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run ``coro`` on the loop and wait for it."""
        return self.submit(coro).result()

    def run(self, fn: Callable[[], T]) -> T:
        """``fn()`` called on the loop (what it reads is the loop's), its result here; once
        the loop is closed, here."""
        async def call() -> T:
            return fn()

        if self._loop.is_closed():
            return fn()
        return self.call(call())

    def call_soon(self, fn: Callable[..., Any], *args: Any) -> None:
        self._loop.call_soon_threadsafe(fn, *args)

    @contextlib.contextmanager
    def enter(self, manager: contextlib.AbstractAsyncContextManager[T]) -> Iterator[T]:
        """Enter an async context manager on the loop; exit it there when the block ends."""
        value = self.call(manager.__aenter__())

        def leave() -> None:
            self.call(manager.__aexit__(None, None, None))

        self._exits.append(leave)
        try:
            yield value
        except BaseException as e:
            if sys.is_finalizing():  # a service left open, collected at exit: its thread
                raise  # cannot run any more (the broker was stopped at exit, local.py)
            if leave in self._exits:  # else close() left it already
                self._exits.remove(leave)
                if not self.call(manager.__aexit__(type(e), e, e.__traceback__)):
                    raise
            else:
                raise
        else:
            if leave in self._exits:
                self._exits.remove(leave)
                leave()

    def close(self) -> None:
        if self._loop.is_closed() or sys.is_finalizing():
            return
        while self._exits:  # left open: exit them now
            self._exits.pop()()
        if self._thread.is_alive():
            self.call(self._shutdown())
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join()
        self._loop.close()

    async def _shutdown(self) -> None:
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self._loop.shutdown_asyncgens()
        await self._loop.shutdown_default_executor()

