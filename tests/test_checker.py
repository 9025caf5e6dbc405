"""The checker on hand-written histories: a good drill passes every invariant, and for each
invariant a bad variant fails exactly that one, naming the device and the job.

:func:`drill` fabricates a plausible recorded drill (the shape the recorder, controller and
drill runner emit): three devices; ``rollout-1`` force-deleted while dev-0001 and dev-0002
install it; ``hotfix-1`` force-canceled on dev-0003 with ``app-7`` queued behind it;
``rollout-1`` then reused with a new document and run to success by everyone; a final state.
Keyword knobs turn it into a faulty drill (or a harder good one).
"""

from __future__ import annotations

import ast
import itertools
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest

from devicesim.wire.history import Op, OpType
from fleet.checker import (
    INVARIANTS,
    Budgets,
    Status,
    Verdict,
    check,
    document_digest,
    timeline,
)
from fleet.checker.report import figure_rows

T0 = 1_764_000_000.0
ACCOUNT_ARN = "arn:aws:iot:us-east-1:123456789012"
DOC1 = '{"operation": "install", "version": "2.0.0"}'
DOC2 = '{ "version": "2.0.1",\n  "operation": "install" }'  # spacing and order differ
DOC_HOTFIX = '{"operation":"install","version":"1.0.1"}'
DOC_APP = '{"operation":"config","key":"x"}'
THINGS = ("dev-0001", "dev-0002", "dev-0003")


def nvm(slot: str = "A", version: str = "1.0.0", *, complete: bool = True,
        verified: bool = True, journal: str | None = None, number: int | None = None,
        digest: str | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"activeSlot": slot, "activeVersion": version,
                           "activeComplete": complete, "activeVerified": verified}
    if journal is not None:
        out |= {"journalJobId": journal, "journalExecutionNumber": number,
                "journalDocumentDigest": digest}
    return out


@dataclass
class History:
    """Appends history operations; times are seconds after ``T0``."""

    ops: list[Op] = field(default_factory=list)
    tokens: Iterator[int] = field(default_factory=itertools.count)

    def add(self, t: float, process: str, type_: OpType, f: str, value: dict[str, Any]) -> Op:
        op = Op(time=T0 + t, process=process, type=type_, f=f, value=value)
        self.ops.append(op)
        return op

    def device(self, t: float, thing: str, kind: str, *, job: str | None = None,
               n: int | None = None, state: dict[str, Any] | None = None,
               **extra: Any) -> Op:
        value: dict[str, Any] = {"kind": kind, "thingName": thing, "timestamp": T0 + t}
        if job is not None:
            value |= {"jobId": job, "executionNumber": n}
        value |= {k: v for k, v in extra.items() if v is not None}
        if state is not None:
            value["nvm"] = state
        return self.add(t, thing, OpType.INFO, f"device:{kind}", value)

    def request(self, t: float, thing: str, f: str, job: str | None, payload: dict[str, Any],
                *, reply_after: float | None = 0.01, reply: dict[str, Any] | None = None,
                code: str | None = None, token: str | None = None) -> str:
        token = token or f"tok-{next(self.tokens)}"
        topic = {"StartNextPendingJobExecution": f"$aws/things/{thing}/jobs/start-next",
                 "UpdateJobExecution": f"$aws/things/{thing}/jobs/{job}/update",
                 "GetPendingJobExecutions": f"$aws/things/{thing}/jobs/get"}[f]
        self.add(t, thing, OpType.INVOKE, f, {"topic": topic, "jobId": job, "clientToken": token,
                                              "payload": {**payload, "clientToken": token}})
        if reply_after is not None:
            self.reply(t + reply_after, thing, f, job, token, reply or {}, code=code, topic=topic)
        return token

    def reply(self, t: float, thing: str, f: str, job: str | None, token: str,
              payload: dict[str, Any], *, code: str | None = None, topic: str = "") -> None:
        body = {**payload, "clientToken": token, "timestamp": int(T0 + t)}
        value: dict[str, Any] = {"topic": topic + ("/rejected" if code else "/accepted"),
                                 "jobId": job, "clientToken": token, "payload": body}
        if code:
            value["code"] = code
            body["code"] = code
        self.add(t, thing, OpType.FAIL if code else OpType.OK, f, value)

    def controller(self, t: float, f: str, request: dict[str, Any], *,
                   response: dict[str, Any] | None = None, took: float = 0.05) -> None:
        self.add(t, "controller", OpType.INVOKE, f, {"request": request})
        self.add(t + took, "controller", OpType.OK, f,
                 {"request": request, "response": response or {}})

    def notify_next(self, t: float, thing: str, execution: dict[str, Any] | None) -> None:
        payload: dict[str, Any] = {"timestamp": int(T0 + t)}
        if execution is not None:
            payload["execution"] = execution
        self.add(t, thing, OpType.INFO, "notify-next",
                 {"topic": f"$aws/things/{thing}/jobs/notify-next", "payload": payload})

    def notify(self, t: float, thing: str, jobs: dict[str, list[dict[str, Any]]]) -> None:
        self.add(t, thing, OpType.INFO, "notify",
                 {"topic": f"$aws/things/{thing}/jobs/notify",
                  "payload": {"timestamp": int(T0 + t), "jobs": jobs}})

    def job_event(self, t: float, job: str, operation: str) -> None:
        self.add(t, "service", OpType.INFO, "job-event", {
            "topic": f"$aws/events/job/{job}/{operation}", "jobId": job, "operation": operation,
            "payload": {"eventType": "JOB", "operation": operation, "jobId": job,
                        "status": operation.upper(), "timestamp": int(T0 + t)}})

    def execution_event(self, t: float, job: str, thing: str, operation: str,
                        n: int | None = None) -> None:
        payload: dict[str, Any] = {"eventType": "JOB_EXECUTION", "operation": operation,
                                   "jobId": job, "thingArn": f"{ACCOUNT_ARN}:thing/{thing}",
                                   "status": operation.upper(), "timestamp": int(T0 + t)}
        if n is not None:
            payload["executionNumber"] = n
        self.add(t, "service", OpType.INFO, "execution-event", {
            "topic": f"$aws/events/jobExecution/{job}/{operation}", "jobId": job,
            "operation": operation, "payload": payload})

    def drill(self, t: float, f: str, value: dict[str, Any] | None = None) -> None:
        self.add(t, "drill", OpType.INFO, f, value or {})


def execution(job: str, status: str, version: int, n: int = 1,
              document: str | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"jobId": job, "status": status, "versionNumber": version,
                           "executionNumber": n, "queuedAt": int(T0), "lastUpdatedAt": int(T0)}
    if document is not None:
        out["jobDocument"] = json.loads(document)
    return out


def create_job(h: History, t: float, job: str, document: str, things: Iterable[str]) -> None:
    h.controller(t, "CreateJob", {"jobId": job, "document": document,
                                  "targets": [f"{ACCOUNT_ARN}:thing/{x}" for x in things]},
                 response={"jobId": job, "jobArn": f"{ACCOUNT_ARN}:job/{job}"})


def start_job(h: History, t: float, thing: str, job: str, document: str,
              *, digest: str | None = None, n: int = 1) -> float:
    """start-next accepted, then job_started: returns the time after."""
    h.request(t, thing, "StartNextPendingJobExecution", None, {},
              reply={"execution": execution(job, "IN_PROGRESS", 2, n, document)})
    d = digest or document_digest(document)
    h.device(t + 0.02, thing, "job_started", job=job, n=n, versionNumber=2, documentDigest=d,
             state=nvm(journal=job, number=n, digest=d))
    return t + 0.03


def run_to_success(h: History, t: float, thing: str, job: str, document: str, *,
                   image: tuple[str, str] | None, digest: str | None = None,
                   versions: tuple[int, int] = (3, 4)) -> float:
    """A device runs an execution it already started to SUCCEEDED; returns the end time."""
    d = digest or document_digest(document)
    h.device(t, thing, "step", job=job, n=1, step="install", documentDigest=d,
             state=nvm(journal=job, number=1, digest=d))
    h.request(t + 0.1, thing, "UpdateJobExecution", job,
              {"status": "IN_PROGRESS", "expectedVersion": 2, "includeJobExecutionState": True},
              reply={"executionState": {"status": "IN_PROGRESS", "versionNumber": versions[0]}})
    slot, version = image or ("A", "1.0.0")
    if image is not None:
        h.device(t + 0.3, thing, "image_committed", job=job, n=1,
                 state=nvm(slot, version, journal=job, number=1, digest=d))
    h.request(t + 0.4, thing, "UpdateJobExecution", job,
              {"status": "SUCCEEDED", "expectedVersion": versions[0],
               "includeJobExecutionState": True},
              reply={"executionState": {"status": "SUCCEEDED", "versionNumber": versions[1]}})
    h.execution_event(t + 0.42, job, thing, "succeeded")
    h.notify_next(t + 0.43, thing, None)
    h.device(t + 0.45, thing, "job_finished", job=job, n=1, status="SUCCEEDED",
             state=nvm(slot, version))
    h.device(t + 0.46, thing, "idle", state=nvm(slot, version))
    return t + 0.5


def drill(*, notice: dict[str, float] | None = None, recovery: dict[str, float] | None = None,
          execution_events: bool = True, zombie: bool = False, early_update_accepted: bool = False,
          stray_step: bool = False, ends_executing_unknown: bool = False,
          ignores_queued_work: bool = False, old_digest: bool = False,
          too_many_deletions: bool = False, version_goes_down: bool = False,
          survivor: bool = False, lost_reply: bool = False, outage_retry: bool = False,
          duplicate_reply: bool = False, final_nvm: dict[str, dict[str, Any]] | None = None,
          reused_document: str = DOC2, ignores_reused_job: bool = False,
          powered_off: str | None = None) -> list[Op]:
    """A recorded drill; every knob off gives a history that passes every invariant.

    ``powered_off``: dev-0002 is powered off mid-install instead of noticing the deletion and
    boots (clean session) once ``rollout-1`` exists again, with its journal naming the old
    execution. ``"reference"``: a step it had under way goes out with the old document, the new
    execution rejects its update, it notices and then runs the new execution (a good drill).
    ``"confused"``: it takes the new execution for its journaled one and finishes the old
    document on it (the ``reuse-confused`` fault)."""
    notice = {"dev-0001": 0.2, "dev-0002": 0.3, "dev-0003": 0.15} | (notice or {})
    recovery = {"dev-0001": 0.5, "dev-0002": 0.6, "dev-0003": 0.4} | (recovery or {})
    h = History()
    h.drill(0.0, "start", {"seed": 1})
    for thing in THINGS:
        h.device(0.1, thing, "connected", state=nvm())

    # hotfix-1 on dev-0003, app-7 queued behind it.
    create_job(h, 0.5, "hotfix-1", DOC_HOTFIX, ["dev-0003"])
    h.notify_next(0.6, "dev-0003", execution("hotfix-1", "QUEUED", 1, document=DOC_HOTFIX))
    start_job(h, 0.7, "dev-0003", "hotfix-1", DOC_HOTFIX)
    h.device(1.0, "dev-0003", "step", job="hotfix-1", n=1, step="download",
             state=nvm(journal="hotfix-1", number=1, digest=document_digest(DOC_HOTFIX)))
    create_job(h, 1.3, "app-7", DOC_APP, ["dev-0003"])
    h.notify(1.4, "dev-0003", {"IN_PROGRESS": [execution("hotfix-1", "IN_PROGRESS", 2)],
                               "QUEUED": [execution("app-7", "QUEUED", 1)]})

    # rollout-1 on dev-0001 and dev-0002.
    d1 = document_digest(DOC1)
    create_job(h, 1.0, "rollout-1", DOC1, ["dev-0001", "dev-0002"])
    for thing in ("dev-0001", "dev-0002"):
        h.notify_next(1.1, thing, execution("rollout-1", "QUEUED", 1, document=DOC1))
        start_job(h, 1.2, thing, "rollout-1", DOC1)
        h.device(1.5, thing, "step", job="rollout-1", n=1, step="download",
                 state=nvm(journal="rollout-1", number=1, digest=d1))
        h.request(1.6, thing, "UpdateJobExecution", "rollout-1",
                  {"status": "IN_PROGRESS", "expectedVersion": 2, "includeJobExecutionState": True,
                   "statusDetails": {"step": "download"}},
                  reply={"executionState": {"status": "IN_PROGRESS", "versionNumber": 3}})
        h.device(2.0, thing, "step", job="rollout-1", n=1, step="install",
                 state=nvm(journal="rollout-1", number=1, digest=d1))
        if lost_reply and thing == "dev-0002":
            h.request(2.5, thing, "GetPendingJobExecutions", None, {}, reply_after=None)
    if powered_off:
        h.drill(2.5, "power-off", {"things": ["dev-0002"]})
        h.device(2.5, "dev-0002", "disconnected", reason="power-off",
                 state=nvm(journal="rollout-1", number=1, digest=d1))

    # Force-delete rollout-1 while both install it.
    h.controller(3.0, "DeleteJob", {"jobId": "rollout-1", "force": True})
    h.job_event(3.06, "rollout-1", "deletion_in_progress")
    if too_many_deletions:
        for i in range(10):
            h.job_event(3.07, f"old-{i}", "deletion_in_progress")
    recovered_at = {}
    for i, thing in enumerate(("dev-0001", "dev-0002")):
        removed = 3.1 + 0.02 * i
        if execution_events:
            h.execution_event(removed, "rollout-1", thing, "deleted")
        if powered_off and thing == "dev-0002":
            continue  # it hears nothing and says nothing until it boots again
        h.notify(removed + 0.001, thing, {})
        h.notify_next(removed + 0.002, thing, None)
        if early_update_accepted and thing == "dev-0001":
            h.request(removed + 0.05, thing, "UpdateJobExecution", "rollout-1",
                      {"status": "IN_PROGRESS", "expectedVersion": 3})
        lost = removed + notice[thing]
        h.device(lost, thing, "lost_access", job="rollout-1", n=1, reason="notify-next",
                 state=nvm(journal="rollout-1", number=1, digest=d1))
        if zombie and thing == "dev-0001":
            h.request(lost + 0.5, thing, "UpdateJobExecution", "rollout-1",
                      {"status": "FAILED", "expectedVersion": 3}, code="ResourceNotFound")
        h.device(lost + 0.05, thing, "rolled_back", job="rollout-1", n=1, state=nvm())
        recovered_at[thing] = lost + recovery[thing]
        h.device(recovered_at[thing], thing, "recovered", reason="notify-next", state=nvm())
    h.job_event(3.5, "rollout-1", "deleted")
    if too_many_deletions:
        for i in range(10):
            h.job_event(3.6, f"old-{i}", "deleted")
    if stray_step:
        h.device(3.12 + 12.0, "dev-0002", "step", job="rollout-1", n=1, step="verify",
                 state=nvm())

    # Force-cancel hotfix-1; notify-next names app-7, which dev-0003 then runs.
    h.controller(4.0, "CancelJob", {"jobId": "hotfix-1", "force": True})
    h.job_event(4.01, "hotfix-1", "cancellation_in_progress")
    if execution_events:
        h.execution_event(4.02, "hotfix-1", "dev-0003", "canceled")
    h.notify(4.021, "dev-0003", {"QUEUED": [execution("app-7", "QUEUED", 1)]})
    h.notify_next(4.022, "dev-0003", execution("app-7", "QUEUED", 1, document=DOC_APP))
    h.job_event(4.06, "hotfix-1", "canceled")
    lost = 4.02 + notice["dev-0003"]
    h.device(lost, "dev-0003", "lost_access", job="hotfix-1", n=1, reason="notify-next",
             state=nvm(journal="hotfix-1", number=1, digest=document_digest(DOC_HOTFIX)))
    h.device(lost + 0.05, "dev-0003", "rolled_back", job="hotfix-1", n=1, state=nvm())
    recovered_at["dev-0003"] = lost + recovery["dev-0003"]
    h.device(recovered_at["dev-0003"], "dev-0003", "recovered", state=nvm())
    t = recovered_at["dev-0003"] + 0.2
    if not ignores_queued_work:
        t = start_job(h, t, "dev-0003", "app-7", DOC_APP)
        t = run_to_success(h, t, "dev-0003", "app-7", DOC_APP, image=None)
    # Clean up the canceled job (a terminal job: no force needed).
    h.controller(t + 0.1, "DeleteJob", {"jobId": "hotfix-1"})
    h.job_event(t + 0.12, "hotfix-1", "deletion_in_progress")
    if execution_events:
        h.execution_event(t + 0.13, "hotfix-1", "dev-0003", "deleted")
    h.job_event(t + 0.14, "hotfix-1", "deleted")

    # rollout-1 again, with a new document: everyone runs it to success.
    # (late enough that the first phase is more than a reply timeout before the end)
    reuse_at = max([*recovered_at.values(), t + 0.2, 14.0, 16.0 if stray_step else 0.0]) + 1.0
    d2 = document_digest(reused_document)
    create_job(h, reuse_at, "rollout-1", reused_document, THINGS)
    end = reuse_at
    for i, thing in enumerate(THINGS):
        if ignores_queued_work and thing == "dev-0003":
            continue
        t = reuse_at + 0.1 + 0.05 * i
        if powered_off and thing == "dev-0002":
            t = boot_with_old_journal(h, t, thing, d1)
            if powered_off == "confused":
                end = max(end, finish_old_document(h, t, thing, d1, reused_document))
                continue
            t = drop_old_document(h, t, thing, d1)
        h.notify_next(t, thing, execution("rollout-1", "QUEUED", 1, document=reused_document))
        if ignores_reused_job and thing == "dev-0001":
            continue  # takes it for the execution it had before
        digest = d1 if old_digest and thing == "dev-0001" else d2
        t = start_job(h, t + 0.1, thing, "rollout-1", reused_document, digest=digest)
        if outage_retry and thing == "dev-0002":
            h.drill(t + 0.5, "broker-outage", {"start": T0 + t - 0.01, "end": T0 + t + 0.4})
            h.request(t, thing, "GetPendingJobExecutions", None, {}, reply_after=None)
            h.request(t + 0.6, thing, "GetPendingJobExecutions", None, {},
                      reply={"inProgressJobs": [], "queuedJobs": []})
            t += 0.7
        if duplicate_reply and thing == "dev-0002":
            token = h.request(t, thing, "GetPendingJobExecutions", None, {},
                              reply={"inProgressJobs": [], "queuedJobs": []})
            # a second, *different* reply to the same request (an identical one would be a
            # QoS 1 redelivery: one reply)
            h.reply(t + 0.02, thing, "GetPendingJobExecutions", None, token,
                    {"inProgressJobs": [], "queuedJobs": [
                        {"jobId": "app-7", "executionNumber": 1, "versionNumber": 1}]},
                    topic=f"$aws/things/{thing}/jobs/get")
        versions = (3, 2) if version_goes_down and thing == "dev-0002" else (3, 4)
        end = max(end, run_to_success(h, t + 0.1, thing, "rollout-1", reused_document,
                                      image=("B", "2.0.1"), digest=digest, versions=versions))
    if ends_executing_unknown:
        h.device(end + 0.1, "dev-0002", "job_started", job="hotfix-9", n=1, state=nvm("B", "2.0.1"))
    h.job_event(end + 0.2, "rollout-1", "completed")

    final: dict[str, Any] = {
        "devices": {x: nvm("B", "2.0.1") for x in THINGS},
        "executions": [{"thingName": x, "jobId": "rollout-1", "executionNumber": 1,
                        "status": "SUCCEEDED"} for x in THINGS]
        + [{"thingName": "dev-0003", "jobId": "app-7", "executionNumber": 1,
            "status": "SUCCEEDED"}]}
    if ignores_queued_work:
        final["devices"]["dev-0003"] = nvm()
        final["executions"][2]["status"] = "QUEUED"
        final["executions"][3]["status"] = "QUEUED"
    if ignores_reused_job:
        final["devices"]["dev-0001"] = nvm()
        final["executions"][0]["status"] = "QUEUED"
    if powered_off == "confused":
        final["devices"]["dev-0002"] = nvm("B", "2.0.0")  # the old document's image
    if survivor:
        final["executions"].append({"thingName": "dev-0003", "jobId": "hotfix-1",
                                    "executionNumber": 1, "status": "CANCELED"})
    final["devices"] |= final_nvm or {}
    h.drill(end + 1.0, "final-state", final)
    h.drill(end + 1.1, "end")
    return sorted(h.ops, key=lambda op: op.time)


def boot_with_old_journal(h: History, t: float, thing: str, digest: str) -> float:
    """Power-on after the jobId was created again: rebooted and connected (clean session),
    the journal still naming execution 1 of the old document."""
    h.drill(t, "power-on", {"things": [thing], "cleanSession": True})
    journal = nvm(journal="rollout-1", number=1, digest=digest)
    h.device(t + 0.01, thing, "rebooted", state=journal)
    h.device(t + 0.02, thing, "connected", reason="clean-session", state=journal)
    return t + 0.03


def drop_old_document(h: History, t: float, thing: str, digest: str) -> float:
    """A step still under way with the old document; the new execution rejects its update,
    the device notices, rolls back and recovers."""
    journal = nvm(journal="rollout-1", number=1, digest=digest)
    h.device(t, thing, "step", job="rollout-1", n=1, step="install", documentDigest=digest,
             state=journal)
    h.request(t + 0.01, thing, "UpdateJobExecution", "rollout-1",
              {"status": "IN_PROGRESS", "expectedVersion": 3, "includeJobExecutionState": True},
              code="VersionMismatch")
    h.device(t + 0.05, thing, "lost_access", job="rollout-1", n=1, reason="VersionMismatch",
             documentDigest=digest, state=journal)
    h.device(t + 0.06, thing, "rolled_back", job="rollout-1", n=1, documentDigest=digest,
             state=nvm())
    h.device(t + 0.07, thing, "recovered", state=nvm())
    return t + 0.1


def finish_old_document(h: History, t: float, thing: str, digest: str, document: str) -> float:
    """reuse-confused: offered the new execution, it takes it for its journaled one (same
    jobId, same execution number) and runs the old document on it to SUCCEEDED, every update
    accepted by the new execution. Returns the end time."""
    journal = nvm(journal="rollout-1", number=1, digest=digest)
    h.notify_next(t, thing, execution("rollout-1", "QUEUED", 1, document=document))
    h.device(t + 0.1, thing, "step", job="rollout-1", n=1, step="install", documentDigest=digest,
             state=journal)
    h.request(t + 0.11, thing, "UpdateJobExecution", "rollout-1",
              {"status": "IN_PROGRESS", "expectedVersion": 1, "includeJobExecutionState": True},
              reply={"executionState": {"status": "IN_PROGRESS", "versionNumber": 2}})
    h.device(t + 0.3, thing, "image_committed", job="rollout-1", n=1, documentDigest=digest,
             state=nvm("B", "2.0.0", journal="rollout-1", number=1, digest=digest))
    h.request(t + 0.31, thing, "UpdateJobExecution", "rollout-1",
              {"status": "SUCCEEDED", "expectedVersion": 2, "includeJobExecutionState": True},
              reply={"executionState": {"status": "SUCCEEDED", "versionNumber": 3}})
    h.execution_event(t + 0.33, "rollout-1", thing, "succeeded")
    h.notify_next(t + 0.34, thing, None)
    h.device(t + 0.35, thing, "job_finished", job="rollout-1", n=1, status="SUCCEEDED",
             documentDigest=digest, state=nvm("B", "2.0.0"))
    h.device(t + 0.36, thing, "idle", state=nvm("B", "2.0.0"))
    return t + 0.4


def failed(verdict: Verdict) -> set[str]:
    return set(verdict.failed)


def violation(verdict: Verdict, name: str) -> tuple[str | None, str | None, str]:
    v = verdict.result(name).violations[0]
    return v.thing_name, v.job_id, v.message


# --- the good drill ------------------------------------------------------------------------


def test_good_drill_passes_every_invariant() -> None:
    verdict = check(drill(), Budgets())
    assert verdict.passed, [v.message for r in verdict.results for v in r.violations]
    assert [r.name for r in verdict.results] == list(INVARIANTS)


def test_good_drill_examines_real_cases_not_vacuous_passes() -> None:
    verdict = check(drill(), Budgets())
    checked = {r.name: r.checked for r in verdict.results}
    assert checked["notice"] == 3  # dev-0001, dev-0002 (deleted), dev-0003 (canceled)
    assert checked["recover"] == 3
    assert checked["no-zombie"] >= 3
    assert checked["valid-end"] == 3
    assert checked["reuse"] >= 3
    assert checked.pop("steady") == 0  # not a soak: nothing sampled
    assert all(n > 0 for n in checked.values()), checked


def test_metrics_of_the_good_drill() -> None:
    m = check(drill(), Budgets()).metrics
    assert m.detection_latency.count == 3
    assert m.detection_latency.max_ms == pytest.approx(300.0)
    assert m.detection_latency.p50_ms == pytest.approx(200.0)
    assert m.recovery_time.count == 3
    assert m.terminal_updates == 4  # app-7 plus three times rollout-1
    assert m.executions_per_second > 0
    assert m.round_trip.count == m.requests
    assert m.round_trip.p50_ms == pytest.approx(10.0)
    assert m.requests == m.replies
    assert m.rejections_by_code == {}


def test_the_stored_good_history_passes() -> None:
    from devicesim.wire import history

    ops = history.read(Path(__file__).parent / "histories" / "good-drill.jsonl")
    assert check(ops, Budgets()).passed


# --- one bad drill per invariant -------------------------------------------------------------


def test_notice_fails_when_a_device_notices_too_late() -> None:
    verdict = check(drill(notice={"dev-0002": 7.0}), Budgets())
    assert failed(verdict) == {"notice"}
    thing, job, message = violation(verdict, "notice")
    assert (thing, job) == ("dev-0002", "rollout-1")
    assert "7.000s" in message


def test_notice_fails_for_a_force_cancel_too() -> None:
    verdict = check(drill(notice={"dev-0003": 6.0}), Budgets())
    assert failed(verdict) == {"notice"}
    assert violation(verdict, "notice")[:2] == ("dev-0003", "hotfix-1")


def test_notice_budget_is_a_parameter() -> None:
    assert check(drill(notice={"dev-0002": 7.0}), Budgets(notice_seconds=8.0)).passed


def test_notice_without_execution_events_falls_back_to_notify_next() -> None:
    assert check(drill(execution_events=False), Budgets()).passed
    verdict = check(drill(execution_events=False, notice={"dev-0001": 6.0}), Budgets())
    assert failed(verdict) == {"notice"}
    assert violation(verdict, "notice")[:2] == ("dev-0001", "rollout-1")


def test_recover_fails_when_a_device_recovers_too_late() -> None:
    verdict = check(drill(recovery={"dev-0001": 12.0}), Budgets())
    assert failed(verdict) == {"recover"}
    assert violation(verdict, "recover")[:2] == ("dev-0001", "rollout-1")


def test_recover_fails_when_the_recovered_state_is_half_written() -> None:
    ops = drill()
    ops = [_with_nvm(op, nvm("B", "2.0.0", complete=False))
           if op.f == "device:recovered" and op.process == "dev-0002" else op for op in ops]
    # (with the default budget, starting the reused job with a valid image would count as
    # recovered: that is "executing another existing execution")
    verdict = check(ops, Budgets(recover_seconds=5.0))
    assert failed(verdict) == {"recover"}
    thing, job, message = violation(verdict, "recover")
    assert (thing, job) == ("dev-0002", "rollout-1")
    assert "not complete" in message


def test_no_zombie_fails_when_a_device_updates_after_noticing() -> None:
    verdict = check(drill(zombie=True), Budgets())
    assert failed(verdict) == {"no-zombie"}
    thing, job, message = violation(verdict, "no-zombie")
    assert (thing, job) == ("dev-0001", "rollout-1")
    assert "FAILED" in message


def test_valid_end_fails_on_an_unverified_image() -> None:
    verdict = check(drill(final_nvm={"dev-0002": nvm("B", "2.0.1", verified=False)}), Budgets())
    assert failed(verdict) == {"valid-end"}
    thing, _, message = violation(verdict, "valid-end")
    assert thing == "dev-0002"
    assert "not verified" in message


def test_valid_end_fails_on_a_journal_naming_a_deleted_execution() -> None:
    bad = nvm("B", "2.0.1", journal="hotfix-1", number=1)
    verdict = check(drill(final_nvm={"dev-0003": bad}), Budgets())
    assert failed(verdict) == {"valid-end"}
    assert violation(verdict, "valid-end")[:2] == ("dev-0003", "hotfix-1")


def test_consistent_fails_on_a_step_long_after_removal() -> None:
    verdict = check(drill(stray_step=True), Budgets())
    assert failed(verdict) == {"consistent"}
    thing, job, message = violation(verdict, "consistent")
    assert (thing, job) == ("dev-0002", "rollout-1")
    assert "after the service deleted it" in message


def test_consistent_fails_when_a_device_ends_executing_what_the_service_lacks() -> None:
    verdict = check(drill(ends_executing_unknown=True), Budgets())
    assert failed(verdict) == {"consistent"}
    assert violation(verdict, "consistent")[:2] == ("dev-0002", "hotfix-9")


def test_progress_fails_when_queued_work_is_never_picked_up() -> None:
    verdict = check(drill(ignores_queued_work=True), Budgets())
    assert failed(verdict) == {"progress"}
    found = {(v.thing_name, v.job_id) for v in verdict.result("progress").violations}
    assert ("dev-0003", "app-7") in found  # never terminal
    assert ("dev-0003", "hotfix-1") in found  # lost access, never started pending work


def test_reuse_fails_when_the_old_document_is_applied() -> None:
    verdict = check(drill(old_digest=True), Budgets())
    # progress: the SUCCEEDED the old document earned does not count for the new execution
    assert failed(verdict) == {"reuse", "progress"}
    thing, job, message = violation(verdict, "reuse")
    assert (thing, job) == ("dev-0001", "rollout-1")
    assert "old document" in message
    assert {(v.thing_name, v.job_id) for v in verdict.result("progress").violations} == {
        ("dev-0001", "rollout-1")}


def test_reuse_fails_when_a_rebooted_device_resumes_the_old_document_on_the_new_job() -> None:
    # No job_started in the new incarnation: only its updates, which the new execution
    # accepted, show that it applied the old document to it.
    verdict = check(drill(powered_off="confused"), Budgets())
    # and notice: a confused device never learns it lost the old execution
    assert failed(verdict) == {"reuse", "progress", "notice"}
    [v] = verdict.result("reuse").violations
    assert (v.thing_name, v.job_id) == ("dev-0002", "rollout-1")
    assert "applied the old document" in v.message
    assert document_digest(DOC1) in v.message
    assert "committed image 2.0.0" in v.message
    assert "finished it SUCCEEDED" in v.message
    assert {e["f"] for e in v.evidence} >= {"CreateJob", "device:step", "UpdateJobExecution",
                                            "device:image_committed", "device:job_finished"}
    [p] = verdict.result("progress").violations
    assert (p.thing_name, p.job_id) == ("dev-0002", "rollout-1")
    assert "only by dev-0002 applying another document" in p.message


def test_reuse_passes_when_a_stale_step_is_rejected_and_the_device_notices() -> None:
    # A step of the old document goes out after the jobId was created again; the new
    # execution rejects its update (VersionMismatch), the device notices and then runs the
    # new execution: no fault.
    verdict = check(drill(powered_off="reference"), Budgets())
    assert verdict.passed, [v.message for r in verdict.results for v in r.violations]
    tl = timeline.build(drill(powered_off="reference"))
    assert [e.incarnation for e in tl.executions_of("dev-0002", "rollout-1")] == [1, 2]


def test_the_recorded_reuse_confused_history_fails_reuse() -> None:
    # A real jobid-reuse drill with reuse-confused devices: those powered off mid-step boot
    # after the jobId was created again and finish the old document (digest sha256:ab19...)
    # on the new execution (sha256:20ed...), which accepts their updates.
    from devicesim.wire import history

    ops = history.read(Path(__file__).parent / "histories" / "reuse-confused.jsonl")
    verdict = check(ops, Budgets())
    # and notice: a confused device never learns it lost the old execution
    assert failed(verdict) == {"reuse", "progress", "notice"}
    powered_off = set(next(op for op in ops if op.f == "power-off").value["things"])
    reuse = verdict.result("reuse")
    assert {(v.thing_name, v.job_id) for v in reuse.violations} == {
        (thing, "ota") for thing in powered_off}
    v = next(v for v in reuse.violations if v.thing_name == "dev-0002")
    assert "applied the old document (digest sha256:ab19" in v.message
    assert "expected sha256:20ed" in v.message
    assert "committed image 3.0.0" in v.message
    assert {(v.thing_name, v.job_id) for v in verdict.result("progress").violations} == {
        (thing, "ota") for thing in powered_off}


def test_reuse_fails_when_a_device_ignores_the_new_execution_as_a_duplicate() -> None:
    verdict = check(drill(ignores_reused_job=True), Budgets())
    # and notice: a confused device never learns it lost the old execution
    assert failed(verdict) == {"reuse", "progress"}  # progress: never terminal, unavoidably
    thing, job, message = violation(verdict, "reuse")
    assert (thing, job) == ("dev-0001", "rollout-1")
    assert "never started it" in message


def test_reuse_passes_when_the_document_differs_only_in_formatting() -> None:
    # DOC2 is sent with other spacing and key order than the device's canonical form.
    assert document_digest(DOC2) == document_digest({"operation": "install", "version": "2.0.1"})
    assert check(drill(reused_document=DOC2), Budgets()).passed


def test_service_fails_on_more_than_ten_deletions_at_once() -> None:
    verdict = check(drill(too_many_deletions=True), Budgets())
    assert failed(verdict) == {"service"}
    assert "11 jobs in DELETION_IN_PROGRESS" in violation(verdict, "service")[2]


def test_service_fails_when_it_accepts_an_update_after_removal() -> None:
    verdict = check(drill(early_update_accepted=True), Budgets())
    assert failed(verdict) == {"service"}
    thing, job, message = violation(verdict, "service")
    assert (thing, job) == ("dev-0001", "rollout-1")
    assert "accepted an update" in message


def test_service_fails_when_an_execution_survives_its_deleted_job() -> None:
    verdict = check(drill(survivor=True), Budgets())
    assert failed(verdict) == {"service"}
    assert violation(verdict, "service")[:2] == ("dev-0003", "hotfix-1")


def test_service_fails_when_a_version_number_goes_down() -> None:
    verdict = check(drill(version_goes_down=True), Budgets())
    assert failed(verdict) == {"service"}
    thing, job, message = violation(verdict, "service")
    assert (thing, job) == ("dev-0002", "rollout-1")
    assert "from 3 to 2" in message


def test_answered_fails_when_a_request_gets_no_reply() -> None:
    verdict = check(drill(lost_reply=True), Budgets())
    assert failed(verdict) == {"answered"}
    thing, _, message = violation(verdict, "answered")
    assert thing == "dev-0002"
    assert "GetPendingJobExecutions" in message


def test_answered_accepts_a_retry_after_a_broker_outage() -> None:
    assert check(drill(outage_retry=True), Budgets()).passed


def test_answered_fails_on_a_different_second_reply() -> None:
    verdict = check(drill(duplicate_reply=True), Budgets())
    assert failed(verdict) == {"answered"}
    assert "2 replies to 1 request" in violation(verdict, "answered")[2]


# --- power cuts -----------------------------------------------------------------------------

REMOVED_AT = 3.1  # power_cut_drill: the execution-event that deletes ota-1 on dev-0001


def power_cut_drill(*, off: float = 2.0, on: float | None = 23.0, lost: float | None = 24.0,
                    recovered: float | None = None, end: float = 30.0,
                    in_flight: float | None = None) -> list[Op]:
    """dev-0001 runs ``ota-1``; the drill cuts its power at ``off`` (an update it sent at
    ``in_flight``, by default just before, gets no reply), force-deletes ``ota-1`` at 3.0
    (removed at :data:`REMOVED_AT`) and powers it on at ``on`` (None: never; it then boots,
    ``rebooted`` and ``connected``, clean session). It records ``lost_access`` at ``lost``
    (None: never), rolls back and says ``recovered`` at ``recovered`` (default: 0.1 s after
    ``lost``). Whatever it would say while off is left out."""
    thing, job, d = "dev-0001", "ota-1", document_digest(DOC1)
    journal = nvm(journal=job, number=1, digest=d)
    h = History()
    h.drill(0.0, "start", {"seed": 1})
    h.device(0.1, thing, "connected", state=nvm())
    create_job(h, 0.5, job, DOC1, [thing])
    h.notify_next(0.6, thing, execution(job, "QUEUED", 1, document=DOC1))
    start_job(h, 0.7, thing, job, DOC1)
    h.device(1.0, thing, "step", job=job, n=1, step="install", documentDigest=d, state=journal)
    h.request(off - 0.05 if in_flight is None else in_flight, thing, "UpdateJobExecution", job,
              {"status": "IN_PROGRESS", "expectedVersion": 2}, reply_after=None)
    h.drill(off, "power-off", {"things": [thing]})
    h.controller(3.0, "DeleteJob", {"jobId": job, "force": True})
    h.job_event(3.05, job, "deletion_in_progress")
    h.execution_event(REMOVED_AT, job, thing, "deleted")
    h.notify(REMOVED_AT + 0.001, thing, {})  # the recorder hears them, the device may not
    h.notify_next(REMOVED_AT + 0.002, thing, None)
    h.job_event(3.5, job, "deleted")
    if on is not None:
        h.drill(on, "power-on", {"things": [thing], "cleanSession": True})
        state = journal if lost is None or lost > on else nvm()
        h.device(on + 0.01, thing, "rebooted", state=state)
        h.device(on + 0.02, thing, "connected", reason="clean-session", state=state)
        h.request(on + 0.03, thing, "GetPendingJobExecutions", None, {},
                  reply={"inProgressJobs": [], "queuedJobs": []})
    final_nvm = journal
    if lost is not None:
        h.device(lost, thing, "lost_access", job=job, n=1, reason="GetPendingJobExecutions",
                 state=journal)
        h.device(lost + 0.05, thing, "rolled_back", job=job, n=1, state=nvm())
        h.device(recovered or lost + 0.1, thing, "recovered", state=nvm())
        final_nvm = nvm()
    h.drill(end, "final-state", {"devices": {thing: final_nvm}, "executions": []})
    h.drill(end + 0.1, "end")
    back = T0 + (on if on is not None else float("inf"))
    silent = [op for op in h.ops  # a device without power says nothing (pushes still come)
              if not (op.process == thing and T0 + off <= op.time < back
                      and (op.f.startswith("device:") or op.type is OpType.INVOKE))]
    return sorted(silent, key=lambda op: op.time)


def _messages(verdict: Verdict) -> list[str]:
    return [v.message for r in verdict.results for v in r.violations]


def test_the_notice_clock_of_a_powered_off_device_starts_at_its_power_on() -> None:
    # Powered off while executing; ota-1 force-deleted; powered on 20 s after the delete
    # (longer than notice_seconds); it notices within 1 s of its power-on.
    ops = power_cut_drill(on=23.0, lost=24.0)
    verdict = check(ops, Budgets(notice_seconds=5.0))
    assert verdict.passed, _messages(verdict)
    assert verdict.result("notice").checked == 1
    assert verdict.metrics.detection_latency.max_ms == pytest.approx(1000.0)
    # Without the power markers the same device is 20.9 s late (and its lost request is
    # unanswered): the off period is what excuses it.
    unmarked = [op for op in ops if op.f not in ("power-off", "power-on")]
    assert failed(check(unmarked, Budgets(notice_seconds=5.0))) == {"notice", "answered"}


def test_a_powered_off_device_that_notices_too_long_after_its_power_on_fails_notice() -> None:
    verdict = check(power_cut_drill(on=23.0, lost=33.0), Budgets(notice_seconds=5.0))
    assert failed(verdict) == {"notice"}
    [v] = verdict.result("notice").violations
    assert (v.thing_name, v.job_id) == ("dev-0001", "ota-1")
    assert "recorded lost_access 10.000s after" in v.message
    assert v.time == pytest.approx(T0 + 23.0 + 5.0)


def test_a_power_cut_before_the_notice_deadline_restarts_the_clock_at_power_on() -> None:
    # Reachable at the removal (3.1) but powered off 1 s later, before it noticed: the budget
    # it had before the cut does not count.
    ops = power_cut_drill(off=4.1, on=20.0, lost=21.0)
    assert check(ops, Budgets()).passed, _messages(check(ops, Budgets()))
    assert failed(check(power_cut_drill(off=4.1, on=20.0, lost=26.0), Budgets())) == {"notice"}
    # A cut after the deadline changes nothing: it was late already.
    assert failed(check(power_cut_drill(off=9.0, on=20.0, lost=21.0), Budgets())) == {"notice"}


def test_a_device_never_powered_on_again_is_not_judged_and_the_notes_say_so() -> None:
    verdict = check(power_cut_drill(on=None, lost=None), Budgets())
    assert not verdict.failed, _messages(verdict)
    notice = verdict.result("notice")
    assert notice.checked == 0
    # its only device was never judged: nothing shows how it reacts, so no PASS
    assert verdict.status is Status.INCONCLUSIVE
    assert notice.status is Status.INCONCLUSIVE
    assert any("never powered on again" in n and "dev-0001" in n for n in notice.notes)
    # Its last word was a step of ota-1 and its journal names it: neither counts against it.
    assert any("powered off to the end" in n for n in verdict.result("consistent").notes)
    assert any("journal" in n for n in verdict.result("valid-end").notes)
    # The same history without the power-off marker fails on every count.
    unmarked = [op for op in power_cut_drill(on=None, lost=None) if op.f != "power-off"]
    assert failed(check(unmarked, Budgets())) >= {"notice", "consistent", "valid-end",
                                                  "answered"}


def test_a_request_cut_off_by_a_power_off_needs_no_reply() -> None:
    verdict = check(power_cut_drill(), Budgets())
    answered = verdict.result("answered")
    assert answered.passed
    assert any("power-off" in n for n in answered.notes)
    # A request more than a reply timeout before the power-off still needs its reply.
    verdict = check(power_cut_drill(in_flight=0.8), Budgets(reply_timeout_seconds=1.0))
    assert failed(verdict) == {"answered"}
    assert violation(verdict, "answered")[0] == "dev-0001"


def test_the_recover_clock_starts_again_at_power_on_after_a_cut_mid_recovery() -> None:
    # It noticed at 3.3, then lost its power before recovering; powered on at 30 and
    # recovered 0.5 s later (its update in flight at 3.0 was cut off).
    cut = {"off": 3.4, "lost": 3.3, "in_flight": 3.0}
    verdict = check(power_cut_drill(on=30.0, recovered=30.5, end=40.0, **cut), Budgets())
    assert verdict.passed, _messages(verdict)
    assert verdict.metrics.recovery_time.max_ms == pytest.approx(500.0)
    late = check(power_cut_drill(on=30.0, recovered=41.0, end=50.0, **cut), Budgets())
    assert failed(late) == {"recover"}
    assert "within 10.0s of its power-on" in violation(late, "recover")[2]
    # Never powered on again: not judged, and said so.
    never = check(power_cut_drill(on=None, end=40.0, **cut), Budgets())
    assert never.result("recover").passed
    assert any("never powered on again" in n and "dev-0001" in n
               for n in never.result("recover").notes)


def test_resuming_from_the_journal_right_after_power_on_is_no_zombie_nor_stale() -> None:
    # Powered on 20 s after the removal, it resumes ota-1 from its journal (a step, an update
    # the service rejects) before it learns the execution is gone: within the reply timeout
    # of its power-on, so neither a zombie update nor a stale step.
    h = History()
    d = document_digest(DOC1)
    h.device(23.05, "dev-0001", "step", job="ota-1", n=1, step="install", documentDigest=d,
             state=nvm(journal="ota-1", number=1, digest=d))
    h.request(23.06, "dev-0001", "UpdateJobExecution", "ota-1",
              {"status": "IN_PROGRESS", "expectedVersion": 3}, code="ResourceNotFound")
    h.device(23.08, "dev-0001", "lost_access", job="ota-1", n=1, reason="ResourceNotFound",
             state=nvm(journal="ota-1", number=1, digest=d))
    verdict = check(power_cut_drill(lost=None, end=26.0) + h.ops, Budgets())
    assert verdict.result("no-zombie").passed
    assert not [v for v in verdict.result("consistent").violations
                if "after the service deleted it" in v.message]
    assert verdict.result("notice").passed  # noticed on the rejection


def test_a_settled_drill_judges_a_device_that_never_noticed_before_its_deadline() -> None:
    # the same device, but it never records lost_access: the drill settled (it reached its
    # end markers), so nothing more was going to happen before the deadline (28 s)
    verdict = check(power_cut_drill(lost=None, end=26.0), Budgets())
    notice = verdict.result("notice")
    assert not notice.passed
    assert "before the drill ended, settled" in notice.violations[0].message
    unsettled = [op for op in power_cut_drill(lost=None, end=26.0) if op.f != "end"]
    assert check(unsettled, Budgets()).result("notice").passed  # not judged, not counted


def test_power_spells_pair_each_power_off_with_the_next_power_on_of_that_device() -> None:
    h = History()
    h.drill(1.0, "power-off", {"things": ["a", "b", 7]})
    h.drill(1.5, "power-off", {"things": ["a"]})  # already off: no new spell
    h.drill(2.0, "power-on", {"things": ["a", "c"], "cleanSession": False})
    h.drill(3.0, "power-off", {"things": ["a"]})
    tl = timeline.build(h.ops)
    assert tl.powered_off == {"a": [(T0 + 1.0, T0 + 2.0), (T0 + 3.0, float("inf"))],
                              "b": [(T0 + 1.0, float("inf"))]}
    assert tl.reachable_from("a", T0 + 1.2) == T0 + 2.0
    assert tl.reachable_from("a", T0 + 3.5) is None
    assert tl.reachable_from("c", T0 + 1.2) == T0 + 1.2
    assert tl.off_for_good("a") == T0 + 3.0
    assert tl.off_for_good("c") is None


# --- edges ----------------------------------------------------------------------------------


def _without(ops: list[Op], f: str, thing: str) -> list[Op]:
    return [op for op in ops if not (op.f == f and op.process == thing)]


def test_an_update_in_flight_at_removal_is_not_a_zombie() -> None:
    # dev-0001 never notices; its FAILED update 0.7s after removal is within the reply
    # timeout of the removal, so it may have been sent before the device could know.
    verdict = check(_without(drill(zombie=True), "device:lost_access", "dev-0001"), Budgets())
    assert failed(verdict) == {"notice"}
    assert violation(verdict, "notice")[:2] == ("dev-0001", "rollout-1")


def test_a_device_that_never_notices_and_keeps_updating_is_a_zombie() -> None:
    h = History()
    h.request(3.1 + 11.0, "dev-0001", "UpdateJobExecution", "rollout-1",
              {"status": "IN_PROGRESS"}, code="ResourceNotFound")
    ops = _without(drill(), "device:lost_access", "dev-0001") + h.ops
    verdict = check(ops, Budgets())
    assert failed(verdict) == {"notice", "no-zombie"}
    assert violation(verdict, "no-zombie")[:2] == ("dev-0001", "rollout-1")


def test_the_notice_clock_starts_when_a_disconnected_device_is_back() -> None:
    h = History()
    h.device(2.5, "dev-0002", "disconnected")
    h.device(3.12 + 6.0, "dev-0002", "connected", state=nvm())
    late = drill(notice={"dev-0002": 6.5}, recovery={"dev-0002": 0.6})
    assert failed(check(late, Budgets())) == {"notice"}
    assert check(late + h.ops, Budgets()).passed  # 0.5s after it reconnected


def test_the_notice_clock_starts_after_a_broker_outage() -> None:
    h = History()
    h.drill(9.0, "broker-outage", {"start": T0 + 3.0, "end": T0 + 8.0})
    late = drill(notice={"dev-0001": 7.0})
    assert check(late + h.ops, Budgets()).passed


def test_a_device_whose_final_update_was_accepted_before_the_sweep_need_not_notice() -> None:
    # The service accepted SUCCEEDED just before sweeping the execution; the device's own
    # job_finished event reaches the recorder after the execution-event.
    h = History()
    h.request(3.0, "dev-0002", "UpdateJobExecution", "rollout-1",
              {"status": "SUCCEEDED", "expectedVersion": 3}, reply_after=0.05)
    h.device(3.2, "dev-0002", "job_finished", job="rollout-1", n=1, status="SUCCEEDED",
             state=nvm())
    ops = [op for op in drill() if not (op.process == "dev-0002" and 3.1 < op.time - T0 < 4.0
                                        and op.f.startswith("device:"))]
    verdict = check(ops + h.ops, Budgets())
    assert verdict.result("notice").passed
    assert verdict.result("notice").checked == 2


def test_removals_take_the_execution_number_from_the_event_or_what_was_announced() -> None:
    ops = [replace(op, value={**op.value, "payload": {**op.value["payload"],
                                                      "executionNumber": 7}})
           if op.f == "execution-event" and op.value["jobId"] == "hotfix-1" else op
           for op in drill()]
    tl = timeline.build(ops)
    numbers = {(r.thing_name, r.job_id, r.source): r.execution_number for r in tl.removals}
    assert numbers[("dev-0001", "rollout-1", "execution-event")] == 1  # announced earlier
    assert numbers[("dev-0003", "hotfix-1", "execution-event")] == 7
    # Execution 7 is not the one dev-0003 ran, but the controller force-canceled the job:
    # the notify-next that followed stands in for the missing event.
    assert numbers[("dev-0003", "hotfix-1", "notify-next")] == 1


def test_a_redelivered_request_with_one_reply_is_answered() -> None:
    ops = drill()
    first = next(op for op in ops if op.type is OpType.INVOKE and op.process == "dev-0001")
    verdict = check([*ops, replace(first, time=first.time + 0.001)], Budgets())
    assert verdict.result("answered").passed


def test_sweep_events_recorded_after_the_jobid_was_created_again_stay_with_the_old_one() -> None:
    # The service may publish the sweep's events after the controller already saw the job
    # gone and created it again: they still belong to the deleted incarnation.
    ops = drill()
    recreate = [op for op in ops if op.f == "CreateJob" and op.type is OpType.INVOKE
                and op.value["request"]["jobId"] == "rollout-1"][1]
    late = [replace(op, time=recreate.time + 0.01)
            if op.value.get("jobId") == "rollout-1" and op.value.get("operation") == "deleted"
            else op for op in ops]
    verdict = check(late, Budgets())
    assert verdict.passed, [v.message for r in verdict.results for v in r.violations]
    tl = timeline.build(late)
    assert {r.incarnation for r in tl.removals if r.job_id == "rollout-1"} == {1}
    assert tl.deletion_completed("rollout-1") is None  # the current incarnation lives


def test_a_device_whose_last_events_are_unrecorded_but_succeeded_is_consistent() -> None:
    h = History()
    last = drill()[-1].time - T0
    h.device(last - 0.5, "dev-0002", "step", job="rollout-1", n=1, step="verify",
             state=nvm("B", "2.0.1"))
    assert check(drill() + h.ops, Budgets()).passed  # final-state: SUCCEEDED, set by it
    canceled = [replace(op, value={**op.value, "executions": [
        {**x, "status": "CANCELED"} if x["thingName"] == "dev-0002" else x
        for x in op.value["executions"]]}) if op.f == "final-state" else op for op in drill()]
    verdict = check(canceled + h.ops, Budgets())
    assert failed(verdict) == {"consistent"}
    assert "the service has it CANCELED" in violation(verdict, "consistent")[2]


def test_a_deadline_past_the_end_of_the_history_is_not_judged() -> None:
    ops = drill()
    cut = next(op.time for op in ops if op.f == "device:lost_access" and op.process == "dev-0001")
    early = [op for op in ops if op.time < cut]
    verdict = check(early, Budgets())
    assert verdict.result("notice").passed
    assert verdict.result("notice").notes


def test_an_empty_history_is_never_a_pass() -> None:
    verdict = check([], Budgets())
    assert verdict.status is Status.FAIL
    assert verdict.failed == ["complete"]
    assert "empty" in verdict.result("complete").violations[0].message
    assert verdict.result("notice").status is Status.INCONCLUSIVE
    assert all(r.status is Status.NO_CASES for r in verdict.results
               if r.name not in ("complete", "notice"))


def test_budgets_reject_negative_values() -> None:
    with pytest.raises(ValueError, match="notice_seconds"):
        Budgets(notice_seconds=-1)


def test_the_checker_imports_only_the_history_and_the_wire_contract() -> None:
    root = Path(__file__).parent.parent / "fleet" / "checker"
    for path in root.glob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            for name in names:
                assert name.split(".")[0] not in ("asyncio", "aiomqtt", "paho", "sqlite3"), \
                    f"{path.name} imports {name}"
                if name.startswith("fleet"):
                    assert name == "devicesim.wire.history" or name.startswith("fleet.checker"), \
                        f"{path.name} imports {name}"
                if name.startswith("devicesim"):
                    assert name.startswith("devicesim.wire"), f"{path.name} imports {name}"


def _with_nvm(op: Op, state: dict[str, Any]) -> Op:
    return replace(op, value={**op.value, "nvm": state})


def test_messages_account_for_what_the_service_published_and_the_devices_received() -> None:
    h = History()
    h.drill(0.0, "start", {"seed": 1})
    h.notify_next(1.0, "dev-0001", None)
    h.notify_next(1.1, "dev-0001", None)  # a duplicate copy counts too
    h.notify(1.0, "dev-0001", {})
    h.request(1.2, "dev-0001", "GetPendingJobExecutions", None, {})
    h.add(1.3, "dev-0002", OpType.INFO, "dropped:notify-next",
          {"topic": "$aws/things/dev-0002/jobs/notify-next", "payload": {}})
    held = h.ops[-2]  # the reply, held back by a fault
    held.value["heldSeconds"] = 0.2
    h.drill(2.0, "final-state", {"devices": {}, "executions": [], "received": {
        "notify-next": 2, "replies": 1}})
    m = check(h.ops, Budgets()).metrics
    assert m.messages == {"notify-next published": 2, "notify published": 1,
                          "replies published": 1, "dropped": 1, "held back": 1,
                          "notify-next received": 2, "notify received": 0,
                          "replies received": 1}
    line = dict(figure_rows(check(h.ops, Budgets())))["messages"]
    assert line == ("notify-next 2 published, 2 received; notify 1 published, 0 received; "
                    "replies 1 published, 1 received (1 dropped, 1 held back by faults)")


def test_each_fault_is_accounted_with_what_it_hit() -> None:
    h = History()
    h.drill(0.0, "start", {"seed": 1})
    h.drill(1.0, "notify-drop", {"things": ["dev-0001"]})
    h.add(1.5, "dev-0001", OpType.INFO, "dropped:notify-next",
          {"topic": "$aws/things/dev-0001/jobs/notify-next", "payload": {}})
    h.request(2.5, "dev-0002", "GetPendingJobExecutions", None, {})
    h.drill(3.0, "service-outage", {"start": T0 + 2.0, "end": T0 + 3.0, "kill": True})
    h.drill(3.5, "network-fault", {"kind": "cut", "things": ["dev-0001", "dev-0002"],
                                   "connections": 2})
    h.controller(4.0, "DeleteJob", {"jobId": "rollout-1", "force": True})
    h.execution_event(4.2, "rollout-1", "dev-0001", "deleted", 1)
    h.controller(5.0, "DeleteJob", {"jobId": "other", "force": False})  # not a fault
    assert check(h.ops, Budgets()).metrics.faults == [
        {"at": 1.0, "fault": "notify-drop", "devices": 1, "hit": "1 pushes dropped"},
        {"at": 3.0, "fault": "service-outage", "devices": 0,
         "hit": "down 1.0 s, 1 requests sent meanwhile"},
        {"at": 3.5, "fault": "network-fault cut", "devices": 2, "hit": "2 open connections"},
        {"at": 4.05, "fault": "DeleteJob --force rollout-1", "devices": 0,
         "hit": "1 executions taken away"}]


def soak_history(rss: Iterable[int], fds: Iterable[int]) -> list[Op]:
    h = History()
    h.drill(0.0, "start", {"seed": 1})
    for i, (r, f) in enumerate(zip(rss, fds, strict=True)):
        h.drill(1.0 + i, "resources", {"processes": {"broker": {"pid": 7, "rssKiB": r,
                                                                "fds": f}}})
    h.drill(100.0, "end", {})
    return h.ops


def steady_result(ops: list[Op]) -> Any:
    return next(r for r in check(ops, Budgets()).results if r.name == "steady")


def test_steady_passes_a_process_that_holds_flat() -> None:
    r = steady_result(soak_history([900_000] + [50_000 + i % 3 for i in range(16)], [40] * 17))
    assert r.status is Status.PASS  # the first sample (before any wave ran) does not count
    assert r.checked == 1
    assert any("broker: 49 -> 49 MiB resident" in n for n in r.notes)


def test_steady_fails_a_process_whose_memory_or_files_keep_growing() -> None:
    leak = steady_result(soak_history([50_000 + 20_000 * i for i in range(17)], [40] * 17))
    assert leak.status is Status.FAIL
    assert "broker kept growing: resident memory from" in leak.violations[0].message
    files = steady_result(soak_history([50_000] * 17, [40 + 5 * i for i in range(17)]))
    assert files.status is Status.FAIL
    assert "open files from" in files.violations[0].message


def test_steady_is_inconclusive_for_a_soak_too_short_and_absent_elsewhere() -> None:
    short = steady_result(soak_history([50_000] * 5, [40] * 5))
    assert short.status is Status.INCONCLUSIVE
    assert next(r for r in check(drill(), Budgets()).results
                if r.name == "steady").status is Status.NO_CASES


def test_a_partition_begins_when_the_proxy_was_asked() -> None:
    """The proxy cuts the connections before it answers the drill, which then writes the
    ``network-fault`` marker: a device may record its cut first. The spell begins at the
    marker's ``start``; a marker without one (older histories) begins at its own time."""
    h = History()
    h.drill(0.0, "start", {"seed": 1})
    h.drill(3.5, "network-fault", {"kind": "cut", "things": ["dev-0001"], "connections": 1,
                                   "start": T0 + 3.49})
    h.drill(3.6, "network-fault", {"kind": "blackhole", "things": ["dev-0002"],
                                   "connections": 1})
    h.drill(5.0, "network-heal", {"released": 0, "connections": 1})
    tl = timeline.build(h.ops)
    assert tl.partitioned["dev-0001"] == [(T0 + 3.49, T0 + 5.0)]
    assert tl.partitioned["dev-0002"] == [(T0 + 3.6, T0 + 5.0)]
