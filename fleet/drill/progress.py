"""What the drill runner knows of the fleet's progress, built from recorded ops.

Pure: :meth:`Progress.observe` takes each op as the recorder appends it; the schedule's
``when`` conditions are answered from the counts. Nothing here judges correctness (that is
the checker's job): it only decides *when* the next step fires.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field

from devicesim.recording import Waiting
from devicesim.wire.history import Op, OpType
from devicesim.wire.topics import Operation
from fleet.checker.timeline import is_terminal
from fleet.drill.spec import When

_FINAL_OK = "SUCCEEDED"


@dataclass(slots=True)
class JobProgress:
    targets: int = 0
    started: set[str] = field(default_factory=set)
    succeeded: set[str] = field(default_factory=set)
    finished: set[str] = field(default_factory=set)
    steps: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))


class Progress:
    def __init__(self) -> None:
        self.jobs: dict[str, JobProgress] = {}
        self.last_kind: dict[str, str] = {}
        self.idle_things: set[str] = set()
        #: how many times each jobId's deletion completed ($aws/events/job/{id}/deleted)
        self.deletions: Counter[str] = Counter()
        #: the highest event ``seq`` seen per device: an older event arriving late (queued
        #: while the device was offline) does not change what the device is doing now
        self.last_seq: dict[str, int] = {}
        #: device requests (thing, operation, clientToken) still waiting for a reply
        self.unanswered = Waiting()
        #: replies the service decided and died holding (recorded as dropped), by request
        self.lost_replies: set[tuple[str, str, str]] = set()
        #: external devices (no events of their own: followed by their traffic), and those
        #: connected now (AWS lifecycle events)
        self.external: frozenset[str] = frozenset()
        self.connected: set[str] = set()
        self._asked: dict[tuple[str, str, str], Op] = {}  # their requests, by key

    def expect(self, job_id: str, targets: int) -> None:
        """A (new) job was created for ``targets`` things: start counting afresh."""
        self.jobs[job_id] = JobProgress(targets=targets)

    def expect_more(self, job_id: str, targets: int) -> None:
        """A continuous job reaches ``targets`` more things (they joined its group; fewer,
        negative, when they left it)."""
        job = self.jobs.get(job_id)
        if job is not None:
            job.targets += targets

    def observe(self, op: Op) -> None:
        if op.f == "job-event" and op.value.get("operation") == "deleted":
            self.deletions[str(op.value.get("jobId"))] += 1
        if op.process in self.external:
            self._external(op)
        if not op.f.startswith("device:"):
            self._track_request(op)
            return
        if op.f == "device:lost_access":  # what it still waited for about that job: given up
            self.unanswered.observe(op)
        kind = op.f[len("device:"):]
        seq = op.value.get("seq")
        newest = not isinstance(seq, int) or seq > self.last_seq.get(op.process, 0)
        if newest:
            if isinstance(seq, int):
                self.last_seq[op.process] = seq
            self.last_kind[op.process] = kind
            if kind == "idle":
                self.idle_things.add(op.process)
            else:
                self.idle_things.discard(op.process)
        job = self.jobs.get(str(op.value.get("jobId")))
        if job is None:
            return
        if kind == "job_started":
            job.started.add(op.process)
        elif kind == "step" and op.value.get("step"):
            job.steps[str(op.value["step"])].add(op.process)
        elif kind == "job_finished":
            job.finished.add(op.process)
            if op.value.get("status") == _FINAL_OK:
                job.succeeded.add(op.process)

    def _external(self, op: Op) -> None:
        """An external device's progress, from its traffic: connected or not (lifecycle
        events); it started a job when the service accepted its start-next offering the job
        or an update of it, finished it when a terminal update was accepted."""
        thing = op.process
        if op.f == "presence:connected":
            self.connected.add(thing)
        elif op.f == "presence:disconnected":
            self.connected.discard(thing)
        token = op.value.get("clientToken")
        if not isinstance(token, str):
            return
        key = (thing, op.f, token)
        if op.type is OpType.INVOKE:
            self._asked[key] = op
            return
        request = self._asked.pop(key, None)
        if op.type is not OpType.OK or request is None:
            return
        payload = op.value.get("payload") or {}
        if op.f == Operation.START_NEXT:
            execution = payload.get("execution") or {}
            job = self.jobs.get(str(execution.get("jobId")))
            if job is not None:
                job.started.add(thing)
        elif op.f == Operation.UPDATE:
            job = self.jobs.get(str(op.value.get("jobId")))
            asked = request.value.get("payload") or {}
            if job is None or not isinstance(asked, dict):
                return
            job.started.add(thing)
            step = (asked.get("statusDetails") or {}).get("step") \
                if isinstance(asked.get("statusDetails"), dict) else None
            if isinstance(step, str):
                job.steps[step].add(thing)
            if is_terminal(asked.get("status")):
                job.finished.add(thing)
                if asked.get("status") == _FINAL_OK:
                    job.succeeded.add(thing)

    def _track_request(self, op: Op) -> None:
        if op.process in ("controller", "drill", "service"):
            return
        token = op.value.get("clientToken")
        if op.f.startswith("dropped:") and isinstance(token, str):
            # a reply the service decided and died holding: documented, lost
            key = (op.process, op.f.removeprefix("dropped:"), token)
            self.lost_replies.add(key)
            self.unanswered.answer(key)
            return
        # (a request is recorded before its reply: by its device, or by the service as it
        # receives it; replies to devices in other processes find nothing here)
        self.unanswered.observe(op)

    def forget_jobs(self, job_ids: list[str]) -> None:
        """Jobs nothing will ask about again (a soak's past waves)."""
        for job_id in job_ids:
            self.jobs.pop(job_id, None)
            self.deletions.pop(job_id, None)

    def forget_requests(self, things: list[str]) -> None:
        """These devices lost their power: what they were waiting for went with their RAM."""
        self.unanswered.forget(things)

    def running(self, job_id: str) -> set[str]:
        """Things that started the job and have not finished it."""
        job = self.jobs.get(job_id)
        return set() if job is None else job.started - job.finished

    def reached(self, when: When, job_id: str | None, elapsed: float) -> bool:
        if when.at is not None and elapsed < when.at:
            return False
        job = self.jobs.get(job_id) if job_id is not None else None
        if job is None or job.targets == 0:
            return when.started is None and when.succeeded is None and when.step is None
        need = job.targets
        if when.started is not None and len(job.started) < when.started * need:
            return False
        if when.succeeded is not None and len(job.succeeded) < when.succeeded * need:
            return False
        return not (when.step is not None
                    and len(job.steps.get(when.step, ())) < when.fraction * need)

    def summary(self) -> dict[str, object]:
        """What the drill has seen so far, for a stall's diagnosis."""
        return {
            "idleDevices": len(self.idle_things),
            "devicesByLastEvent": dict(Counter(self.last_kind.values()).most_common()),
            "unansweredRequests": len(self.unanswered),
            **({"externalConnected": sorted(self.connected)} if self.external else {}),
            "jobs": {job_id: {"targets": j.targets, "started": len(j.started),
                              "succeeded": len(j.succeeded), "finished": len(j.finished)}
                     for job_id, j in self.jobs.items()},
        }

    def idle(self, things: list[str]) -> bool:
        """Every device's last event says it is idle (no work it knows of); an external
        device, which says nothing of itself, only has to be connected (whether it has
        work left is the service's to say)."""
        simulated = [t for t in things if t not in self.external]
        return len(self.idle_things) >= len(simulated) and \
            self.idle_things.issuperset(simulated) and self.connected.issuperset(
                t for t in things if t in self.external)
