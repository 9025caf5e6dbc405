"""Child process: the jobs service (``fleet.service.shell.JobsService``, no HTTP) under
bench control.

``python -m bench.service --broker mqtt://HOST:PORT --state DB [--sweep-step S] [--seed N]``
then commands on stdin (see :mod:`bench.control`): ``create_job``, ``delete_job``,
``wait_counts``, ``wait_job``, ``wait_job_gone``, ``wait_quiet``, ``set_sweep_step``,
``stats``, ``pauses``. Waits poll the store every few milliseconds (cheap SQLite reads on
the service's own loop), so the service is never blocked by the bench.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import time
from pathlib import Path
from typing import Any

from bench import control, procinfo
from bench.pauses import Pauses
from devicesim.loop import run_main
from devicesim.wire import topics
from fleet.broker import BrokerAddress
from fleet.service.errors import ResourceNotFoundException
from fleet.service.settings import ServiceSettings
from fleet.service.shell import JobsService, ServiceConfig
from fleet.service.store import Publish

POLL = 0.02
_JOB_EVENTS = "$aws/events/job/"


class CountingService(JobsService):
    """The jobs service, counting every message its wildcard subscription delivers (the
    requests: "No Local" keeps its own replies and pushes from coming back) and noting when
    it publishes a job event (``$aws/events/job/{jobId}/{operation}``)."""

    received = 0
    published = 0

    def __init__(self, config: ServiceConfig) -> None:
        super().__init__(config)
        self.job_events: dict[str, float] = {}
        self.job_event_seen = asyncio.Event()

    def _on_message(self, topic: str, payload: bytes, requester: str | None) -> None:
        self.received += 1
        super()._on_message(topic, payload, requester)

    def _publish(self, effects: list[Publish], reply_to: dict[int, str] | None = None
                 ) -> None:
        super()._publish(effects, reply_to)
        self.published += len(effects)
        for effect in effects:
            if effect.topic.startswith(_JOB_EVENTS):
                self.job_events.setdefault(effect.topic, time.monotonic())
                self.job_event_seen.set()


class Commands:
    def __init__(self, service: CountingService) -> None:
        self.service = service
        self.store = service.store
        self.watch = Pauses()

    def handlers(self) -> dict[str, control.Handler]:
        return {"create_job": self.create_job, "delete_job": self.delete_job,
                "wait_counts": self.wait_counts, "wait_job": self.wait_job,
                "wait_job_gone": self.wait_job_gone, "wait_quiet": self.wait_quiet,
                "set_sweep_step": self.set_sweep_step, "stats": self.stats,
                "pauses": self.watch.report}

    async def create_job(self, job_id: str, things: list[str], document: dict[str, Any]
                         ) -> dict[str, Any]:
        began = time.monotonic()
        self.store.create_job(job_id, targets=[self.store.thing_arn(t) for t in things],
                              document=json.dumps(document))
        self.service.flush()
        return {"seconds": time.monotonic() - began, "started": began}

    async def delete_job(self, job_id: str, force: bool = True) -> dict[str, Any]:
        self.store.delete_job(job_id, force=force)
        self.service.flush()
        return {"at": time.time()}

    async def wait_counts(self, job_id: str, status: str, count: int, within: float
                          ) -> dict[str, Any]:
        """Until ``count`` executions of the job are in ``status``."""
        began = time.monotonic()
        async with asyncio.timeout(within):
            while True:
                details = self.store.describe_job(job_id).process_details
                if details.get(status, 0) >= count:
                    return {"seconds": time.monotonic() - began, "counts": details}
                await asyncio.sleep(POLL)

    async def wait_job(self, job_id: str, operation: str, within: float) -> dict[str, Any]:
        """Until the service published the job event ``operation`` (e.g. ``completed``);
        ``done`` is when (monotonic time)."""
        topic = topics.job_event(job_id, operation)
        async with asyncio.timeout(within):
            while topic not in self.service.job_events:
                self.service.job_event_seen.clear()
                await self.service.job_event_seen.wait()
        return {"done": self.service.job_events[topic],
                "counts": self.store.describe_job(job_id).process_details}

    async def wait_job_gone(self, job_id: str, within: float) -> dict[str, Any]:
        async with asyncio.timeout(within):
            while True:
                try:
                    self.store.describe_job(job_id)
                except ResourceNotFoundException:
                    return {"done": time.monotonic()}
                await asyncio.sleep(POLL)

    async def wait_quiet(self, quiet: float, within: float) -> dict[str, Any]:
        """Until no request arrived for ``quiet`` seconds."""
        async with asyncio.timeout(within):
            last, since = self.service.dataplane.handled, time.monotonic()
            while time.monotonic() - since < quiet:
                await asyncio.sleep(POLL)
                if self.service.dataplane.handled != last:
                    last, since = self.service.dataplane.handled, time.monotonic()
        return {"handled": last}

    async def set_sweep_step(self, seconds: float) -> dict[str, Any]:
        """Pace of the next DeleteJob's sweep (the store reads it at DeleteJob time)."""
        self.store.settings = dataclasses.replace(self.store.settings,
                                                  deletion_seconds_per_execution=seconds)
        return {}

    async def stats(self) -> dict[str, Any]:
        return {"cpu": procinfo.cpu_seconds(), "wall": time.monotonic(),
                "handled": self.service.dataplane.handled,
                "rejected": self.service.dataplane.rejected,
                "received": self.service.received, "published": self.service.published,
                "rss_kb": procinfo.vm_rss_kb()}


async def run(args: argparse.Namespace) -> None:
    broker = BrokerAddress.parse(args.broker).privileged()
    settings = ServiceSettings(deletion_seconds_per_execution=args.sweep_step)
    service = CountingService(ServiceConfig(broker=broker, state=Path(args.state),
                                            settings=settings, http=False, seed=args.seed))
    await service.start()
    commands = Commands(service)
    try:
        await control.serve(commands.handlers())
    finally:
        await commands.watch.loop.stop()
        await service.stop()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.service")
    parser.add_argument("--broker", required=True)
    parser.add_argument("--state", required=True)
    parser.add_argument("--sweep-step", type=float,
                        default=ServiceSettings().deletion_seconds_per_execution)
    parser.add_argument("--seed", type=int, default=1)
    control.child_logging()
    run_main(run(parser.parse_args()))


if __name__ == "__main__":
    main()
