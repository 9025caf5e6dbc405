"""Running a drill: broker, jobs service, recorder, fleet, controller; then the checker.

The runner is the only place that wires the parts together. Everything a device or the
service does reaches the history through the broker (the recorder); the controller's calls
and the runner's own markers are recorded directly. After the schedule settled (or timed
out), the final state is recorded and the checker — a pure function of the history —
gives the verdict.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from devicesim.engine import Fleet, FleetConfig, assign_behaviours
from fleet import history
from fleet.broker import BrokerAddress, EmbeddedBroker, probe
from fleet.checker import Verdict, check
from fleet.drill.controller import Controller, ControllerError, iot_client
from fleet.drill.progress import Progress
from fleet.drill.recorder import Recorder
from fleet.drill.spec import Drill, Step
from fleet.history import Op, OpType
from fleet.service.shell import JobsService, ServiceConfig

log = logging.getLogger(__name__)

#: with devices in worker processes: how long the recorder must hear nothing before a
#: settled-looking fleet counts as settled
QUIET_SECONDS = 0.5


@dataclass(frozen=True, slots=True, kw_only=True)
class RunOptions:
    broker_url: str | None = None
    workers: int = 1
    report_dir: Path | None = None
    status: Callable[[str], None] | None = None


@dataclass(frozen=True, slots=True)
class DrillResult:
    verdict: Verdict
    history_path: Path
    ops: list[Op]
    timed_out: bool


class DrillTimeout(Exception):
    pass


class _Run:
    """One drill run's live parts."""

    def __init__(self, drill: Drill, options: RunOptions, workdir: Path) -> None:
        self.drill, self.options, self.workdir = drill, options, workdir
        self.rng = random.Random(drill.seed)
        self.progress = Progress()
        self.changed = asyncio.Event()
        self.started = time.time()
        self.broker: EmbeddedBroker | None = None
        self.address: BrokerAddress | None = None
        self.service: JobsService | None = None
        self.recorder: Recorder | None = None
        self.fleet: Fleet | None = None
        self.workers: list[asyncio.subprocess.Process] = []
        self.targets: dict[str, list[str]] = {}
        self.powered_off: list[str] = []
        self.things = FleetConfig(host="", port=0, prefix=drill.prefix,
                                  count=drill.devices).thing_names()

    # -- recording -----------------------------------------------------------------------

    def mark(self, f: str, **value: Any) -> None:
        assert self.recorder is not None
        self.recorder.record(Op(time=time.time(), process="drill", type=OpType.INFO, f=f,
                                value=value))

    def on_op(self, op: Op) -> None:
        self.progress.observe(op)
        self.changed.set()

    async def until(self, condition: Callable[[], bool], deadline: float | None = None
                    ) -> None:
        """Wait for ``condition`` to hold, re-checking on each recorded op (and once at
        ``deadline``, for time-based conditions). The drill's own timeout bounds it."""
        while not condition():
            self.changed.clear()
            now = time.time()
            delay = None if deadline is None or deadline <= now else deadline - now
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self.changed.wait()

    # -- lifecycle -----------------------------------------------------------------------

    async def start(self) -> None:
        drill, options = self.drill, self.options
        if options.broker_url:
            self.address = BrokerAddress.parse(options.broker_url)
            if await asyncio.to_thread(probe, self.address) != 0:
                raise ConnectionError(f"broker {self.address.url} refused the connection")
        else:
            self.broker = EmbeddedBroker(work_dir=self.workdir / "broker")
            self.address = await asyncio.to_thread(self.broker.start)
        self.service = JobsService(ServiceConfig(
            broker=self.address, state=self.workdir / "jobs.db", settings=drill.service,
            seed=drill.seed))
        await self.service.start()
        self.recorder = Recorder(self.address, listener=self.on_op)
        await self.recorder.start()
        mix = drill.mix or {drill.behaviour: 1.0}
        self.mark("start", drill=drill.name, seed=drill.seed, devices=drill.devices,
                  mix=mix, broker=self.address.url, endpoint=self.service.endpoint,
                  behaviours=assign_behaviours(self.things, mix, drill.seed))
        await self.start_fleet(mix)

    async def ready(self) -> None:
        """Until every device is connected and idle."""
        await self.until(lambda: self.progress.idle(self.things))
        self.mark("fleet-ready", seconds=round(time.time() - self.started, 3))

    @property
    def deadline(self) -> float:
        return self.started + self.drill.timeout

    async def start_fleet(self, mix: dict[str, float]) -> None:
        assert self.address is not None
        drill, workers = self.drill, max(1, self.options.workers)
        if workers == 1:
            self.fleet = Fleet(FleetConfig(host=self.address.host, port=self.address.port,
                                           prefix=drill.prefix, count=drill.devices, mix=mix,
                                           seed=drill.seed))
            await self.fleet.start()
            return
        mix_arg = ",".join(f"{k}={v}" for k, v in mix.items())
        per = -(-drill.devices // workers)
        for w in range(workers):
            start, count = w * per, min(per, drill.devices - w * per)
            if count <= 0:
                break
            self.workers.append(await asyncio.create_subprocess_exec(
                sys.executable, "-m", "devicesim.cli", "run", "--broker", self.address.url,
                "--prefix", drill.prefix, "--count", str(count), "--start", str(start),
                "--total", str(drill.devices), "--mix", mix_arg, "--seed", str(drill.seed),
                "--quiet", stdin=asyncio.subprocess.DEVNULL))

    async def stop(self) -> None:
        if self.fleet is not None:
            await self.fleet.stop()
        for proc in self.workers:
            with contextlib.suppress(ProcessLookupError):
                proc.terminate()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(10):
                    await proc.wait()
        if self.recorder is not None:
            await self.recorder.stop()
        if self.service is not None:
            await self.service.stop()
        if self.broker is not None:
            await asyncio.to_thread(self.broker.close)

    # -- the schedule ----------------------------------------------------------------------

    async def run_steps(self, controller: Controller) -> None:
        for index, step in enumerate(self.drill.steps):
            when = step.when
            at = None if when.at is None else self.started + when.at
            await self.until(lambda s=step: self.progress.reached(  # type: ignore[misc]
                s.when, s.job, time.time() - self.started), at)
            self.status(f"step {index + 1}/{len(self.drill.steps)}: {step.action} "
                        f"{step.job or ''}")
            await self.act(step, controller)

    def status(self, text: str) -> None:
        if self.options.status is not None:
            self.options.status(text)

    def sample(self, things: list[str], fraction: float) -> list[str]:
        n = round(len(things) * fraction)
        return sorted(self.rng.sample(things, n)) if n < len(things) else list(things)

    async def act(self, step: Step, controller: Controller) -> None:
        action, job = step.action, step.job
        if action == "create-job":
            assert job is not None
            assert step.document is not None
            targets = self.sample(self.things, step.targets)
            self.targets[job] = targets
            self.progress.expect(job, len(targets))
            extra: dict[str, Any] = {}
            if step.timeout_minutes is not None:
                extra["timeoutConfig"] = {"inProgressTimeoutInMinutes": step.timeout_minutes}
            await controller.create_job(job, targets, step.document, **extra)
        elif action in ("force-delete-job", "delete-job", "force-delete-jobs"):
            jobs = list(step.jobs) or ([job] if job is not None else [])
            before = {j: self.progress.deletions[j] for j in jobs}
            force = action != "delete-job"
            await asyncio.gather(*(controller.delete_job(j, force=force) for j in before))
            await self.deleted(controller, before)
        elif action in ("force-cancel-job", "cancel-job"):
            assert job is not None
            await controller.cancel_job(job, force=action == "force-cancel-job")
        elif action in ("force-cancel-executions", "force-delete-executions"):
            assert job is not None
            for thing in self.sample(self.targets.get(job, []), step.fraction):
                with contextlib.suppress(ControllerError):  # recorded; may be gone already
                    if action == "force-cancel-executions":
                        await controller.cancel_job_execution(job, thing)
                    else:
                        await controller.delete_job_execution(job, thing, 1)
        elif action in ("power-off", "power-on"):
            if self.fleet is None:
                raise ValueError(f"{action}: needs the devices in this process (--workers 1)")
            if action == "power-off":
                assert job is not None
                running = sorted(self.progress.running(job))
                self.powered_off = self.sample(running, step.fraction)
                await asyncio.gather(*(self.fleet.devices[t].power_off()
                                       for t in self.powered_off))
                self.mark("power-off", things=self.powered_off)
            else:
                things, self.powered_off = self.powered_off, []
                self.mark("power-on", things=things, cleanSession=step.clean_session)
                await asyncio.gather(*(self.fleet.devices[t].power_on(
                    clean_session=step.clean_session) for t in things))
        elif action == "restart-broker":
            await self.restart_broker(kill=step.kill)
        elif action == "settle":
            await self.until(self.settled)
            while self.fleet is None and not await self.quiet():
                await self.until(self.settled)

    async def deleted(self, controller: Controller, before: dict[str, int]) -> None:
        """Until each job's deletion completed: told by its ``deleted`` jobs event when
        events are on (no polling), else by DescribeJob answering ResourceNotFound."""
        if self.drill.service.job_events:
            await self.until(lambda: all(self.progress.deletions[j] > n
                                         for j, n in before.items()))
        else:
            await asyncio.gather(*(controller.wait_deleted(j, interval=0.2) for j in before))

    def settled(self) -> bool:
        """Every device idle, nothing pending, and the recorder caught up with what the
        devices published (its view lags behind them under load: without this, a device's
        last recorded ``idle`` may predate the work it is doing right now)."""
        assert self.service is not None
        return (self.progress.idle(self.things) and self.caught_up()
                and self.service.store.pending_count() == 0)

    async def quiet(self, seconds: float = QUIET_SECONDS) -> bool:
        """With devices in other processes the recorder cannot know what they published
        yet: the fleet counts as settled only if no device event arrives for ``seconds``
        and it still looks settled then."""
        assert self.recorder is not None
        seen = self.recorder.received
        self.changed.clear()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                while self.recorder.received == seen:
                    self.changed.clear()
                    await self.changed.wait()
        return self.recorder.received == seen and self.settled()

    def caught_up(self) -> bool:
        if self.fleet is None or self.recorder is None:
            return True
        return self.recorder.has_events(self.fleet.event_counts())

    async def restart_broker(self, *, kill: bool) -> None:
        if self.broker is None:
            raise ValueError("restart-broker: only possible on the embedded broker")
        if kill:
            # a crash loses what the broker did not save yet; let one full autosave happen
            # first (the second save line starts after the first finished), so the sessions
            # and subscriptions of the drill's own recorder and service survive the crash
            for _ in range(2):
                await asyncio.to_thread(self.broker.wait_for_autosave)
        start = time.time()
        await asyncio.to_thread(self.broker.kill if kill else self.broker.stop)
        await asyncio.to_thread(self.broker.restart)
        self.mark("broker-outage", start=start, end=time.time(), kill=kill)

    async def drain(self) -> None:
        """Until the recorder has every event the in-process devices published (MQTT keeps
        each publisher's order, so then it has seen everything they did)."""
        if self.fleet is None or self.recorder is None:
            return
        counts = self.fleet.event_counts()
        recorder = self.recorder
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(10):
                await self.until(lambda: recorder.has_events(counts))

    def final_state(self) -> None:
        assert self.service is not None
        store = self.service.store
        executions = [{"thingName": e.thing_name, "jobId": e.job_id,
                       "executionNumber": e.execution_number, "status": e.status.value,
                       "versionNumber": e.version_number} for e in store.all_executions()]
        jobs = [{"jobId": j.job_id, "status": j.status.value} for j in store.list_jobs()[0]]
        devices = {} if self.fleet is None else self.fleet.nvm_summaries()
        self.mark("final-state", executions=executions, jobs=jobs, devices=devices)


async def run(drill: Drill, options: RunOptions) -> DrillResult:
    """Run one drill; the history goes to ``options.report_dir`` (default: a temp dir)."""
    report_dir = options.report_dir or Path(tempfile.mkdtemp(prefix="devicesim-report-"))
    with tempfile.TemporaryDirectory(prefix="devicesim-drill-") as tmp:
        run_ = _Run(drill, options, Path(tmp))
        timed_out = False
        try:
            await run_.start()
            assert run_.service is not None
            assert run_.recorder is not None
            controller = Controller(iot_client(run_.service.endpoint), run_.recorder.record)
            try:
                async with asyncio.timeout_at(asyncio.get_running_loop().time()
                                              + max(0.0, run_.deadline - time.time())):
                    await run_.ready()
                    await run_.run_steps(controller)
            except TimeoutError:
                timed_out = True
                run_.mark("timeout", seconds=drill.timeout)
            await run_.drain()
            run_.final_state()
            run_.mark("end", seconds=round(time.time() - run_.started, 3))
        finally:
            if run_.recorder is not None:
                run_.mark("recorder-stats", **run_.recorder.stats())
            await run_.stop()
        assert run_.recorder is not None
        ops = sorted(run_.recorder.ops, key=lambda op: op.time)
        report_dir.mkdir(parents=True, exist_ok=True)
        history_path = report_dir / "history.jsonl"
        with history_path.open("w", encoding="utf-8") as out:
            history.write(ops, out)
        verdict = check(ops, drill.budgets)
        return DrillResult(verdict=verdict, history_path=history_path, ops=ops,
                           timed_out=timed_out)
