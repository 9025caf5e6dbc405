"""The bench phases. Each phase gets a fresh embedded Mosquitto (the project's config), runs
its CPU-heavy parts in separate processes (service / load generator / fleet) so both cores
work as in a real deployment, and bounds every wait by a timeout."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import platform
import subprocess
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bench import procinfo, reference
from bench.control import BenchError, Child
from bench.drills import run_drill
from bench.profiling import Sampler, py_spy
from bench.recorder import DetectionRecorder, distribution
from fleet.broker import EmbeddedBroker
from fleet.service.settings import ServiceSettings

log = logging.getLogger(__name__)

PHASES = ("reference", "jobs", "fleet", "latency", "drills")
SLEEP0 = {"operation": "sleep", "seconds": 0}
WIDTH = 5


@dataclass(frozen=True, slots=True, kw_only=True)
class BenchConfig:
    devices: int = 1000  # fleet and latency phases
    rt_devices: int = 1000  # jobs round-trip phase and the C request/response reference
    seconds: float = 5.0  # per throughput window
    warmup: float = 1.0
    idle_seconds: float = 2.0
    light_seconds: float = 1.0
    raw_messages: int = 100_000
    payload_bytes: int = 100
    seed: int = 1
    sweep_step: float = ServiceSettings().deletion_seconds_per_execution
    phases: tuple[str, ...] = PHASES
    #: fleet sizes of the drill phase (``fleet drill force-delete --workers 2``)
    drill_sizes: tuple[int, ...] = (1000, 5000, 10000)
    profile_dir: Path | None = None
    quick: bool = False

    @property
    def hold_seconds(self) -> float:
        """The long step of the force-deleted job: longer than the paced sweep, so no
        device finishes before its execution is swept."""
        return max(30.0, self.devices * self.sweep_step * 1.5 + 30.0)


@dataclass(slots=True)
class Results:
    config: BenchConfig
    params: dict[str, Any] = field(default_factory=dict)
    reference: dict[str, Any] = field(default_factory=dict)
    jobs: dict[str, Any] = field(default_factory=dict)
    fleet: dict[str, Any] = field(default_factory=dict)
    latency: dict[str, Any] = field(default_factory=dict)
    drills: list[dict[str, Any]] = field(default_factory=list)
    profiles: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


Status = Callable[[str], None]


def thing_names(prefix: str, count: int) -> list[str]:
    return [f"{prefix}{i:0{WIDTH}d}" for i in range(count)]


@contextlib.asynccontextmanager
async def embedded_broker(workdir: Path, name: str, *, plugin: bool | None = None
                          ) -> AsyncIterator[EmbeddedBroker]:
    """``plugin``: as :class:`EmbeddedBroker` (the product's default: when built); the C
    reference runs on plain Mosquitto (``False``), the yardstick of what the broker alone
    does."""
    broker = EmbeddedBroker(work_dir=workdir / name, plugin=plugin)
    await asyncio.to_thread(broker.start)
    try:
        yield broker
    finally:
        await asyncio.to_thread(broker.stop)


def _mosquitto_version() -> str:
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run(["/usr/sbin/mosquitto", "-h"], capture_output=True, text=True,
                             timeout=5, check=False).stdout
        return out.splitlines()[0] if out else "unknown"
    return "unknown"


def _source_state() -> dict[str, Any]:
    """Which code was measured: the commit and the tracked files changed on top of it."""
    root = Path(__file__).resolve().parent.parent
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root,
                                capture_output=True, text=True, timeout=5, check=False)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=root, capture_output=True, text=True, timeout=5,
                               check=False)
        return {"commit": commit.stdout.strip() or None,
                "modified": [line[3:] for line in dirty.stdout.splitlines()]}
    return {"commit": None, "modified": []}


class Bench:
    def __init__(self, config: BenchConfig, workdir: Path, status: Status) -> None:
        self.config = config
        self.workdir = workdir
        self.status = status
        self.results = Results(config)
        self.rr_binary: Path | None = None
        self._children: list[Child] = []
        self._samplers: list[Sampler] = []

    async def run(self) -> Results:
        c, r = self.config, self.results
        r.params = {**{k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(c).items()},
                    "hold_seconds": c.hold_seconds, "python": platform.python_version(),
                    "mosquitto": _mosquitto_version(), "cpus": os.cpu_count(),
                    "loadavg_at_start": os.getloadavg(), "started": time.time(),
                    "source": _source_state()}
        if c.profile_dir is not None and py_spy() is None:
            r.notes.append("--profile: py-spy not found (pip install py-spy); no profiles")
        if "reference" in c.phases:
            await self.reference_phase()
        if "jobs" in c.phases:
            await self.jobs_phase()
        if "fleet" in c.phases or "latency" in c.phases:
            await self.fleet_phases()
        if "drills" in c.phases:
            for devices in c.drill_sizes:
                self.status(f"drill: force-delete, {devices} devices, 2 workers")
                r.drills.append(await run_drill(devices, 2, c.seed, self.workdir))
        r.params["loadavg_at_end"] = os.getloadavg()
        r.params["seconds_total"] = time.time() - r.params["started"]
        return r

    # -- helpers ---------------------------------------------------------------------------

    async def spawn(self, name: str, module: str, args: list[str],
                    on_event: Callable[[str, dict[str, Any]], None] | None = None,
                    secret: str | None = None) -> Child:
        child = await Child.spawn(name, module, args, log_dir=self.workdir, on_event=on_event,
                                  secret=secret)
        self._children.append(child)
        return child

    async def close_children(self) -> None:
        for child in reversed(self._children):
            await child.close()
        self._children.clear()

    async def profile_start(self, name: str, pid: int, max_seconds: float) -> None:
        if self.config.profile_dir is None or py_spy() is None:
            return
        self.config.profile_dir.mkdir(parents=True, exist_ok=True)
        sampler = Sampler(name, pid, self.config.profile_dir)
        await sampler.start(max_seconds)
        self._samplers.append(sampler)

    async def profile_stop(self) -> None:
        for sampler in self._samplers:
            summary = await sampler.stop()
            if summary is not None:
                self.results.profiles[sampler.name] = summary
        self._samplers.clear()

    # -- 1. the C reference ----------------------------------------------------------------

    async def reference_phase(self) -> None:
        c, ref = self.config, self.results.reference
        async with embedded_broker(self.workdir, "broker-reference", plugin=False) as broker:
            self.status(f"reference: C raw QoS 1 routing, {c.raw_messages} messages")
            ref["raw_qos1"] = await reference.raw_routing(
                broker.address, messages=c.raw_messages, qos=1, payload_bytes=c.payload_bytes,
                limit=max(30.0, c.raw_messages / 1000), workdir=self.workdir,
                broker_pid=broker.pid)
            binary, why = await asyncio.to_thread(reference.build_rr, self.workdir)
            if binary is None:
                ref["rr_unavailable"] = why
                self.results.notes.append(f"C request/response reference skipped: {why}; "
                                          "ratios use raw routing msgs/s ÷ 2")
                return
            self.rr_binary = binary
            self.status(f"reference: C request/response QoS 1, {c.rt_devices} devices")
            ref["rr_qos1"] = await self._rr(broker, c.rt_devices, c.seconds)
            if c.devices != c.rt_devices and {"fleet", "latency"} & set(c.phases):
                self.status(f"reference: C connect/memory/idle, {c.devices} devices")
                ref["rr_fleet"] = await self._rr(broker, c.devices, min(1.0, c.seconds))

    async def _rr(self, broker: EmbeddedBroker, devices: int, seconds: float
                  ) -> dict[str, Any]:
        c = self.config
        assert self.rr_binary is not None
        return await reference.request_response(
            self.rr_binary, broker.address, devices=devices, seconds=seconds,
            warmup=c.warmup, idle=c.idle_seconds, light=c.light_seconds, qos=1,
            payload_bytes=c.payload_bytes, broker_pid=broker.pid,
            limit=seconds + c.warmup + c.idle_seconds + c.light_seconds + 60 + devices / 200)

    # -- 2. jobs round trips through the emulator ------------------------------------------

    async def jobs_phase(self) -> None:
        c, out = self.config, self.results.jobs
        async with embedded_broker(self.workdir, "broker-jobs") as broker:
            try:
                service = await self.spawn("jobs-service", "bench.service", [
                    "--broker", broker.address.url, "--state", str(self.workdir / "jobs.db"),
                    "--seed", str(c.seed)], secret=broker.address.secret)
                window: dict[str, Any] = {}

                def on_event(event: str, _: dict[str, Any]) -> None:
                    window[event] = (procinfo.sample(broker.pid or 0, time.monotonic()),
                                     asyncio.get_running_loop().create_task(
                                         service.call("stats")))

                loadgen = await self.spawn("loadgen", "bench.loadgen",
                                           ["--broker", broker.address.url], on_event)
                things = thing_names("rt-", c.rt_devices)
                await service.call("create_job", job_id="bench-rt", things=things,
                                   document=SLEEP0)
                self.status(f"jobs: connecting {c.rt_devices} load-generator devices")
                out["connect"] = await loadgen.call("connect", prefix="rt-",
                                                    count=c.rt_devices, width=WIDTH,
                                                    limit=60 + c.rt_devices / 50)
                out["start_next"] = await loadgen.call("start_next", limit=60)
                out["light_update"] = await loadgen.call(
                    "light", kind="update", seconds=c.light_seconds,
                    limit=c.light_seconds + 60)
                for kind in ("update", "describe"):
                    self.status(f"jobs: {kind} closed loop, {c.rt_devices} devices, "
                                f"{c.seconds:g} s")
                    if kind == "update":
                        await self.profile_start("jobs-service", service.pid, c.seconds + 30)
                        await self.profile_start("loadgen", loadgen.pid, c.seconds + 30)
                    window.clear()
                    result = await loadgen.call("run", kind=kind, seconds=c.seconds,
                                                warmup=c.warmup,
                                                limit=c.seconds + c.warmup + 60)
                    await self.profile_stop()
                    out[kind] = result | await self._window(window, result["round_trips"])
            finally:
                await self.close_children()

    async def _window(self, window: dict[str, Any], round_trips: int) -> dict[str, Any]:
        """The service's and the broker's share over the load generator's window."""
        if "measure-start" not in window or "measure-end" not in window:
            raise BenchError("the load generator reported no measurement window")
        (b0, s0_task), (b1, s1_task) = window["measure-start"], window["measure-end"]
        s0, s1 = await s0_task, await s1_task
        handled = s1["handled"] - s0["handled"]
        wall = s1["wall"] - s0["wall"]
        broker_cpu = b1.cpu - b0.cpu
        return {
            "service_cpu_fraction": (s1["cpu"] - s0["cpu"]) / wall if wall > 0 else None,
            "service_cpu_us_per_request": (s1["cpu"] - s0["cpu"]) / handled * 1e6
            if handled else None,
            "service_messages_received_per_request": (s1["received"] - s0["received"])
            / handled if handled else None,
            "service_rejected": s1["rejected"] - s0["rejected"],
            "broker_cpu_fraction": procinfo.cpu_fraction(b0, b1),
            "broker_cpu_us_per_round_trip": broker_cpu / round_trips * 1e6
            if round_trips else None,
        }

    # -- 3 + 4. the fleet, then force-delete detection --------------------------------------

    async def fleet_phases(self) -> None:
        c = self.config
        things = thing_names("dev-", c.devices)
        async with embedded_broker(self.workdir, "broker-fleet") as broker:
            recorder = DetectionRecorder(broker.address)
            try:
                service = await self.spawn("fleet-service", "bench.service", [
                    "--broker", broker.address.url, "--state", str(self.workdir / "fleet.db"),
                    "--seed", str(c.seed), "--sweep-step", str(c.sweep_step)],
                    secret=broker.address.secret)
                await service.call("stats")  # answered once the service is subscribed
                fleet = await self.spawn("fleet", "bench.fleetproc", [
                    "--broker", broker.address.url, "--prefix", "dev-", "--count",
                    str(c.devices), "--width", str(WIDTH), "--seed", str(c.seed)])
                self.status(f"fleet: connecting {c.devices} devices")
                out = self.results.fleet
                await self.profile_start("fleet-connect", fleet.pid, 120 + c.devices / 20)
                out["start"] = await fleet.wait("start", within=120 + c.devices / 20)
                await self.profile_stop()
                out["idle"] = await self._idle(broker, fleet, service)
                if "fleet" in c.phases:
                    self.status(f"fleet: one job to {c.devices} devices (sleep 0)")
                    out["execution"] = await self._executions(fleet, service, things)
                if "latency" in c.phases:
                    await recorder.start()
                    for variant, step in (("paced", c.sweep_step), ("burst", 0.0)):
                        self.status(f"latency: force-delete ({variant}, {step:g} s per "
                                    f"execution) at {c.devices} devices")
                        self.results.latency[variant] = await self._detection(
                            recorder, fleet, service, things, variant, step)
            finally:
                await recorder.stop()
                await self.close_children()

    async def _idle(self, broker: EmbeddedBroker, fleet: Child, service: Child
                    ) -> dict[str, Any]:
        c = self.config
        s0 = await service.call("stats")
        b0 = procinfo.sample(broker.pid or 0, time.monotonic())
        result = await fleet.call("idle_cpu", seconds=c.idle_seconds,
                                  limit=c.idle_seconds + 30)
        b1 = procinfo.sample(broker.pid or 0, time.monotonic())
        s1 = await service.call("stats")
        return {"fleet_cpu_fraction": result["cpu_fraction"], "seconds": result["seconds"],
                "service_cpu_fraction": (s1["cpu"] - s0["cpu"]) / (s1["wall"] - s0["wall"]),
                "broker_cpu_fraction": procinfo.cpu_fraction(b0, b1)}

    async def _executions(self, fleet: Child, service: Child, things: list[str]
                          ) -> dict[str, Any]:
        n = len(things)
        await fleet.call("pauses", reset=True)
        await service.call("pauses", reset=True)
        f0, s0 = await fleet.call("cpu"), await service.call("stats")
        await self.profile_start("fleet-service", service.pid, 120)
        await self.profile_start("fleet-devices", fleet.pid, 120)
        created = await service.call("create_job", job_id="bench-exec", things=things,
                                     document=SLEEP0, limit=60 + n / 100)
        done = await service.wait("wait_job", job_id="bench-exec", operation="completed",
                                  within=120 + n / 20)
        await self.profile_stop()
        f1, s1 = await fleet.call("cpu"), await service.call("stats")
        seconds = done["done"] - created["started"]
        handled = s1["handled"] - s0["handled"]
        idle = await fleet.wait("wait_states", state="idle", count=n, within=60)
        pauses = {"devices": await fleet.call("pauses"), "service": await service.call("pauses")}
        return {"executions": n, "seconds": seconds, "executions_per_second": n / seconds,
                "create_job_seconds": created["seconds"], "counts": done["counts"],
                "requests_per_execution": handled / n,
                "service_messages_received_per_request": (s1["received"] - s0["received"])
                / handled if handled else None,
                "service_published_per_execution": (s1["published"] - s0["published"]) / n,
                "service_cpu_us_per_execution": (s1["cpu"] - s0["cpu"]) / n * 1e6,
                "fleet_cpu_us_per_execution": (f1["cpu"] - f0["cpu"]) / n * 1e6,
                "fleet_idle_again_seconds": idle["seconds"], "pauses": pauses}

    async def _detection(self, recorder: DetectionRecorder, fleet: Child, service: Child,
                         things: list[str], variant: str, step: float) -> dict[str, Any]:
        c, n = self.config, len(things)
        job_id = f"bench-delete-{variant}"
        await service.call("set_sweep_step", seconds=step)
        detection = recorder.expect(job_id, n)
        await service.call("create_job", job_id=job_id, things=things,
                           document={"operation": "sleep", "seconds": c.hold_seconds},
                           limit=60 + n / 100)
        started = await service.wait("wait_counts", job_id=job_id, status="IN_PROGRESS",
                                     count=n, within=60 + n / 50)
        await service.wait("wait_quiet", quiet=0.3, within=60)
        await fleet.call("pauses", reset=True, watch=True)
        await service.call("pauses", reset=True, watch=True)
        await self.profile_start(f"delete-{variant}-service", service.pid, n * step + 60)
        await self.profile_start(f"delete-{variant}-devices", fleet.pid, n * step + 60)
        deleted = await service.call("delete_job", job_id=job_id, force=True)
        try:
            async with asyncio.timeout(n * step + 30 + n / 200):
                await detection.done.wait()
        except TimeoutError:
            raise BenchError(f"force-delete {variant}: {len(detection.lost)} of {n} devices "
                             f"noticed ({len(detection.deleted)} deleted events seen)") from None
        finally:
            await self.profile_stop()
        sweep_end = max(detection.deleted.values(), default=deleted["at"])
        pauses = {"devices": await fleet.call("pauses"), "service": await service.call("pauses")}
        await service.wait("wait_job_gone", job_id=job_id, within=60 + n * step)
        await fleet.wait("wait_states", state="idle", count=n, within=60)
        arrival, device_clock = detection.latencies()
        return {"job_id": job_id, "sweep_step": step, "devices": n,
                "all_in_progress_seconds": started["seconds"],
                "sweep_seconds": sweep_end - deleted["at"],
                "deleted_events": len(detection.deleted), "lost_access": len(detection.lost),
                "detection": distribution(arrival),
                "detection_device_clock": distribution(device_clock),
                "slowest": detection.slowest(deleted["at"]),
                "worst_ms_by_second": detection.by_second(deleted["at"]),
                "pauses": _relative(pauses, deleted["at"])}


def _relative(pauses: dict[str, Any], since: float) -> dict[str, Any]:
    """Stall times as seconds after ``since`` (the force-delete), like ``slowest``."""
    for side in pauses.values():
        loop = side["loop"]
        loop["worst"] = [[round(at - since, 3), lag] for at, lag in loop["worst"]]
    return pauses
