"""What the drill runner knows of the fleet's progress, built from recorded ops.

Pure: :meth:`Progress.observe` takes each op as the recorder appends it; the schedule's
``when`` conditions are answered from the counts. Nothing here judges correctness (that is
the checker's job): it only decides *when* the next step fires.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field

from devicesim.wire.history import Op, OpType
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
        self.unanswered: set[tuple[str, str, str]] = set()
        self._answered: set[tuple[str, str, str]] = set()

    def expect(self, job_id: str, targets: int) -> None:
        """A (new) job was created for ``targets`` things: start counting afresh."""
        self.jobs[job_id] = JobProgress(targets=targets)

    def observe(self, op: Op) -> None:
        if op.f == "job-event" and op.value.get("operation") == "deleted":
            self.deletions[str(op.value.get("jobId"))] += 1
        if not op.f.startswith("device:"):
            self._track_request(op)
            return
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

    def _track_request(self, op: Op) -> None:
        token = op.value.get("clientToken")
        if not isinstance(token, str) or op.process in ("controller", "drill", "service"):
            return
        key = (op.process, op.f, token)
        if op.type is OpType.INVOKE:
            if key not in self._answered:
                self.unanswered.add(key)
        elif op.type in (OpType.OK, OpType.FAIL):
            self.unanswered.discard(key)
            self._answered.add(key)

    def forget_requests(self, things: list[str]) -> None:
        """These devices lost their power: what they were waiting for went with their RAM."""
        lost = set(things)
        self.unanswered = {k for k in self.unanswered if k[0] not in lost}

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
            "jobs": {job_id: {"targets": j.targets, "started": len(j.started),
                              "succeeded": len(j.succeeded), "finished": len(j.finished)}
                     for job_id, j in self.jobs.items()},
        }

    def idle(self, things: list[str]) -> bool:
        """Every device's last event says it is idle (no work it knows of)."""
        return len(self.idle_things) >= len(things) and self.idle_things.issuperset(things)
