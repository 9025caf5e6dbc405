"""The jobs store: jobs and executions in SQLite, the AWS IoT Jobs rules, no network.

Every operation validates first, then mutates inside one SQLite transaction, then computes
what AWS would push because of it. Pushes (``notify``, ``notify-next``, jobs events) are
appended to an outbox of :class:`Publish` effects that the network shell drains *after* it
sent its reply (spec §5.2: ``update/accepted`` precedes the notifications it causes).

Notifications follow one rule, applied to every change (spec §5.2): for each affected thing
``notify`` goes out when the *set* of pending executions changed and ``notify-next`` when
the *head* of the pending list (what ``$next`` would return) changed.

Time comes from an injected ``now()``; randomness (sweep order, event ids) from an injected
``random.Random``. Durable: WAL journal, ``synchronous=NORMAL`` (a killed process loses no
committed transaction).
"""

from __future__ import annotations

import logging
import random
import re
import sqlite3
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from devicesim.wire import topics
from devicesim.wire.codec import dumps
from devicesim.wire.enums import JobExecutionStatus as X
from devicesim.wire.enums import JobStatus as J
from devicesim.wire.messages import (
    JobExecutionsChangedEvent,
    NextJobExecutionChangedEvent,
    validate_status_details,
)
from fleet.service import lifecycle, validation
from fleet.service import rollout as rollout_mod
from fleet.service.errors import (
    InvalidRequestException,
    InvalidStateTransitionException,
    LimitExceededException,
    ResourceAlreadyExistsException,
    ResourceNotFoundException,
    TerminalStateException,
    VersionConflictException,
)
from fleet.service.groups import ThingGroups, check_group_name
from fleet.service.records import Execution, Job
from fleet.service.settings import ServiceSettings, TerminalDescribe
from fleet.service.templates import JobTemplates

log = logging.getLogger(__name__)

_THING_ARN = re.compile(r"arn:aws[a-z-]*:iot:([a-z0-9-]*):(\d*):(thing|thinggroup)/(.+)")
_PENDING = (X.IN_PROGRESS.value, X.QUEUED.value)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    job_id TEXT PRIMARY KEY, status TEXT NOT NULL, document TEXT NOT NULL, description TEXT,
    target_selection TEXT NOT NULL, targets TEXT NOT NULL, created_at REAL NOT NULL,
    last_updated_at REAL NOT NULL, completed_at REAL, force_canceled INTEGER NOT NULL,
    reason_code TEXT, comment TEXT, in_progress_timeout_minutes INTEGER, namespace_id TEXT,
    seq INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS executions (
    job_id TEXT NOT NULL, thing_name TEXT NOT NULL, execution_number INTEGER NOT NULL,
    status TEXT NOT NULL, status_details TEXT NOT NULL, queued_at REAL NOT NULL,
    started_at REAL, last_updated_at REAL NOT NULL, version_number INTEGER NOT NULL,
    force_canceled INTEGER NOT NULL, step_deadline REAL, in_progress_deadline REAL,
    sweep_at REAL, seq INTEGER NOT NULL, deadline REAL, retry_attempt INTEGER NOT NULL
    DEFAULT 0, PRIMARY KEY (thing_name, job_id));
CREATE INDEX IF NOT EXISTS executions_by_job ON executions (job_id, seq);
CREATE INDEX IF NOT EXISTS executions_by_job_status ON executions (job_id, status);
CREATE INDEX IF NOT EXISTS executions_pending ON executions (thing_name, status, seq);
CREATE INDEX IF NOT EXISTS executions_sweep ON executions (sweep_at) WHERE sweep_at IS NOT NULL;
CREATE INDEX IF NOT EXISTS executions_deadline ON executions (deadline)
    WHERE deadline IS NOT NULL;
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS planned (
    job_id TEXT NOT NULL, thing_name TEXT NOT NULL, seq INTEGER NOT NULL,
    PRIMARY KEY (job_id, thing_name));
CREATE INDEX IF NOT EXISTS planned_by_job ON planned (job_id, seq);
CREATE TABLE IF NOT EXISTS rollouts (
    job_id TEXT PRIMARY KEY, next_at REAL, rate REAL NOT NULL,
    released INTEGER NOT NULL, mark_released INTEGER NOT NULL,
    mark_succeeded INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS schedules (
    job_id TEXT PRIMARY KEY, start REAL, end_at REAL, end_behavior TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS retries (
    job_id TEXT NOT NULL, thing_name TEXT NOT NULL, failure_type TEXT NOT NULL,
    count INTEGER NOT NULL, PRIMARY KEY (job_id, thing_name, failure_type));
"""
_EXECUTION_COLUMNS = ("job_id, thing_name, execution_number, status, status_details, queued_at,"
                      " started_at, last_updated_at, version_number, force_canceled,"
                      " step_deadline, in_progress_deadline, sweep_at, seq, retry_attempt")


@dataclass(frozen=True, slots=True)
class Publish:
    """An effect: publish ``payload`` on ``topic`` (QoS 1)."""

    topic: str
    payload: bytes


PendingKey = tuple[tuple[str, int], ...]


class JobsStore:
    """AWS IoT Jobs state and rules. Not thread-safe: one owner (the service's event loop)."""

    def __init__(self, path: Path | str, settings: ServiceSettings | None = None, *,
                 now: Callable[[], float], rng: random.Random | None = None) -> None:
        self.settings = settings or ServiceSettings()
        self._now = now
        self._rng = rng or random.Random(0)
        self._db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)
        if "configs" not in {r[1] for r in self._db.execute("PRAGMA table_info(jobs)")}:
            # a state file from before rollout, abort and retry configurations
            self._db.execute("ALTER TABLE jobs ADD COLUMN configs TEXT NOT NULL DEFAULT '{}'")
        if "retry_attempt" not in {r[1] for r in self._db.execute(
                "PRAGMA table_info(executions)")}:
            self._db.execute("ALTER TABLE executions ADD COLUMN retry_attempt INTEGER NOT NULL"
                             " DEFAULT 0")
        self._outbox: list[Publish] = []
        self._tx_effects: list[Publish] | None = None
        self._in_batch = False
        self._documents: dict[str, dict[str, Any]] = {}  # parsed, per existing job
        self._events = self._load_event_configurations()
        #: static thing groups, on this connection: a membership change and the
        #: executions it makes or removes commit together
        self.groups = ThingGroups(self._db, now=now)
        #: job templates, on this connection too
        self.templates = JobTemplates(self._db, now=now)
        self._configs: dict[str, dict[str, Any]] = {}  # parsed, per existing job
        #: jobs with an abort configuration whose executions finished since the last tick
        #: (all of them after a restart: one check each costs nothing)
        self._abort_checks: set[str] = {r[0] for r in self._db.execute(
            "SELECT job_id FROM jobs WHERE status = ? AND configs LIKE '%abortConfig%'",
            (J.IN_PROGRESS.value,))}

    def close(self) -> None:
        self._db.close()

    def now(self) -> float:
        """The store's clock (injected)."""
        return self._now()

    # -- effects -------------------------------------------------------------------------

    def drain(self) -> list[Publish]:
        """The pushes caused since the last drain, in order."""
        out, self._outbox = self._outbox, []
        return out

    def _emit(self, topic: str, payload: bytes) -> None:
        assert self._tx_effects is not None, "effects are emitted inside a transaction"
        self._tx_effects.append(Publish(topic, payload))

    @contextmanager
    def batch(self) -> Iterator[None]:
        """Group commit: the operations inside share one SQLite transaction (each still
        all-or-nothing, as a savepoint). Their effects are in the outbox only once the
        batch committed, so a shell that publishes after the batch never announces what a
        crash could still lose."""
        assert not self._in_batch, "batches do not nest"
        self._db.execute("BEGIN IMMEDIATE")
        self._in_batch, mark = True, len(self._outbox)
        try:
            yield
        except BaseException:
            self._db.execute("ROLLBACK")
            del self._outbox[mark:]
            raise
        finally:
            self._in_batch = False
        try:
            self._db.execute("COMMIT")
        except BaseException:
            # a failed COMMIT must not leave the connection inside the transaction (every
            # later batch would fail at BEGIN): nothing of the batch happened
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
            del self._outbox[mark:]
            raise

    @contextmanager
    def _tx(self, things: Iterable[str] = ()) -> Iterator[None]:
        """One all-or-nothing change touching the pending lists of ``things``.

        On success, notifications for every affected thing are computed from the pending
        lists before and after, and all effects join the outbox. On error nothing changes.
        """
        affected = sorted(set(things))
        begin, commit, rollback = (
            ("SAVEPOINT tx", "RELEASE tx", ("ROLLBACK TO tx", "RELEASE tx")) if self._in_batch
            else ("BEGIN IMMEDIATE", "COMMIT", ("ROLLBACK",)))
        self._tx_effects = []
        self._db.execute(begin)
        try:
            before = {thing: self._pending_key(thing) for thing in affected}
            yield
            for thing in affected:
                self._notify_if_changed(thing, before[thing])
        except BaseException:
            for statement in rollback:
                self._db.execute(statement)
            self._tx_effects = None
            raise
        self._db.execute(commit)
        self._outbox.extend(self._tx_effects)
        self._tx_effects = None

    def _notify_if_changed(self, thing: str, before: PendingKey) -> None:
        after = self._pending_key(thing)
        if after == before:
            return
        pending = self._pending(thing)
        now = self._now()
        if set(after) != set(before):
            jobs: dict[str, list[Any]] = {}
            for e in pending[: self.settings.max_pending_listed]:
                jobs.setdefault(e.status.value, []).append(e.summary())
            self._emit(topics.notify(thing),
                       dumps(JobExecutionsChangedEvent(jobs=jobs, timestamp=int(now))))
        if after[:1] != before[:1]:
            head = pending[0] if pending else None
            execution = None if head is None else head.data(now, self._document(head.job_id))
            self._emit(topics.notify_next(thing),
                       dumps(NextJobExecutionChangedEvent(execution=execution,
                                                          timestamp=int(now))))

    # -- reading -------------------------------------------------------------------------

    def _execution_from(self, row: sqlite3.Row) -> Execution:
        return Execution(
            job_id=row["job_id"], thing_name=row["thing_name"],
            execution_number=row["execution_number"], status=X(row["status"]),
            status_details=orjson.loads(row["status_details"]), queued_at=row["queued_at"],
            started_at=row["started_at"], last_updated_at=row["last_updated_at"],
            version_number=row["version_number"], force_canceled=bool(row["force_canceled"]),
            step_deadline=row["step_deadline"], in_progress_deadline=row["in_progress_deadline"],
            sweep_at=row["sweep_at"], seq=row["seq"], retry_attempt=row["retry_attempt"])

    def _job_from(self, row: sqlite3.Row) -> Job:
        return Job(
            job_id=row["job_id"], job_arn=self.job_arn(row["job_id"]), status=J(row["status"]),
            document=row["document"], description=row["description"],
            target_selection=row["target_selection"], targets=tuple(orjson.loads(row["targets"])),
            created_at=row["created_at"], last_updated_at=row["last_updated_at"],
            completed_at=row["completed_at"], force_canceled=bool(row["force_canceled"]),
            reason_code=row["reason_code"], comment=row["comment"],
            in_progress_timeout_minutes=row["in_progress_timeout_minutes"],
            namespace_id=row["namespace_id"], configs=orjson.loads(row["configs"]),
            # (a sqlite3.Row's "in" looks at its values, keys() at its names)
            planned=row["planned"] if "planned" in row.keys() else 0)  # noqa: SIM118

    def _pending(self, thing: str) -> list[Execution]:
        rows = self._db.execute(
            f"SELECT {_EXECUTION_COLUMNS} FROM executions WHERE thing_name = ? AND status IN"
            " (?, ?) ORDER BY status = 'QUEUED', seq", (thing, *_PENDING)).fetchall()
        return [self._execution_from(r) for r in rows]

    def _pending_key(self, thing: str) -> PendingKey:
        rows = self._db.execute(
            "SELECT job_id, execution_number FROM executions WHERE thing_name = ? AND status IN"
            " (?, ?) ORDER BY status = 'QUEUED', seq", (thing, *_PENDING)).fetchall()
        return tuple((r[0], r[1]) for r in rows)

    def _get_job(self, job_id: str) -> Job:
        row = self._db.execute("SELECT * FROM jobs WHERE job_id = ?", (job_id,)).fetchone()
        if row is None:
            raise ResourceNotFoundException(f"Job {job_id} not found")
        return self._job_from(row)

    def _find_execution(self, job_id: str, thing: str) -> Execution | None:
        row = self._db.execute(
            f"SELECT {_EXECUTION_COLUMNS} FROM executions WHERE thing_name = ? AND job_id = ?",
            (thing, job_id)).fetchone()
        return None if row is None else self._execution_from(row)

    def _get_execution(self, job_id: str, thing: str, execution_number: int | None) -> Execution:
        execution = self._find_execution(job_id, thing)
        if execution is None or (execution_number is not None
                                 and execution.execution_number != execution_number):
            raise ResourceNotFoundException(
                f"Job Execution {job_id} not found for thing {thing}")
        return execution

    def _document(self, job_id: str) -> dict[str, Any] | None:
        cached = self._documents.get(job_id)
        if cached is not None:
            return cached
        row = self._db.execute("SELECT document FROM jobs WHERE job_id = ?",
                               (job_id,)).fetchone()
        if row is None:
            return None
        document: dict[str, Any] = orjson.loads(row[0])
        self._documents[job_id] = document
        return document

    def _job_configs(self, job_id: str) -> dict[str, Any]:
        """The job's rollout and abort configurations, as given (cached)."""
        cached = self._configs.get(job_id)
        if cached is None:
            cached = orjson.loads(self._job_column(job_id, "configs"))
            self._configs[job_id] = cached
        return cached

    def _next_seq(self) -> int:
        row = self._db.execute("SELECT value FROM meta WHERE key = 'seq'").fetchone()
        seq = int(row[0]) + 1 if row else 1
        self._db.execute("INSERT OR REPLACE INTO meta VALUES ('seq', ?)", (str(seq),))
        return seq

    def arn(self, kind: str, name: str) -> str:
        """The ARN of a resource of this account and region (``job``, ``thinggroup``...)."""
        s = self.settings
        return f"arn:aws:iot:{s.region}:{s.account_id}:{kind}/{name}"

    def job_arn(self, job_id: str) -> str:
        return self.arn("job", job_id)

    def thing_arn(self, thing: str) -> str:
        return self.arn("thing", thing)

    # -- writing -------------------------------------------------------------------------

    def _update_execution(self, e: Execution) -> None:
        self._db.execute(
            "UPDATE executions SET status = ?, status_details = ?, started_at = ?,"
            " last_updated_at = ?, version_number = ?, force_canceled = ?, step_deadline = ?,"
            " in_progress_deadline = ?, deadline = ? WHERE thing_name = ? AND job_id = ?",
            (e.status.value, orjson.dumps(e.status_details).decode(), e.started_at,
             e.last_updated_at, e.version_number, int(e.force_canceled), e.step_deadline,
             e.in_progress_deadline,
             None if e.status.is_terminal else e.deadline, e.thing_name, e.job_id))

    def _write_execution(self, e: Execution) -> None:
        self._db.execute(
            f"INSERT OR REPLACE INTO executions ({_EXECUTION_COLUMNS}, deadline) VALUES"
            " (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (e.job_id, e.thing_name, e.execution_number, e.status.value,
             orjson.dumps(e.status_details).decode(), e.queued_at, e.started_at,
             e.last_updated_at, e.version_number, int(e.force_canceled), e.step_deadline,
             e.in_progress_deadline,
             e.sweep_at, e.seq, e.retry_attempt, None if e.status.is_terminal else e.deadline))

    def _change_execution(self, e: Execution, status: X, *, details: dict[str, str] | None,
                          step_timeout: int | None = None, force_canceled: bool = False,
                          job: Job | None = None) -> Execution:
        """The one place an execution's status changes; bumps versionNumber exactly once."""
        now = self._now()
        started_at, in_progress_deadline, step_deadline = (
            e.started_at, e.in_progress_deadline, e.step_deadline)
        if status is X.IN_PROGRESS and e.status is X.QUEUED:
            started_at = now
            minutes = (job.in_progress_timeout_minutes if job is not None
                       else self._job_column(e.job_id, "in_progress_timeout_minutes"))
            in_progress_deadline = None if minutes is None else now + minutes * 60
        if step_timeout is not None:
            step_deadline = None if step_timeout == -1 else now + step_timeout * 60
            if step_deadline is not None and in_progress_deadline is not None:
                step_deadline = min(step_deadline, in_progress_deadline)
        if status.is_terminal:
            step_deadline = in_progress_deadline = None
        new = Execution(
            job_id=e.job_id, thing_name=e.thing_name, execution_number=e.execution_number,
            status=status, status_details=e.status_details if details is None else details,
            queued_at=e.queued_at, started_at=started_at, last_updated_at=now,
            version_number=e.version_number + 1,
            force_canceled=e.force_canceled or force_canceled, step_deadline=step_deadline,
            in_progress_deadline=in_progress_deadline, sweep_at=e.sweep_at, seq=e.seq,
            retry_attempt=e.retry_attempt)
        self._update_execution(new)
        if status.is_terminal and status is not e.status:
            self._execution_event(new, status.value.lower())
            if status in (X.FAILED, X.TIMED_OUT) and "jobExecutionsRetryConfig" in \
                    self._job_configs(new.job_id):
                self._maybe_retry(new)
            self._maybe_complete(new.job_id)
            if "abortConfig" in self._job_configs(new.job_id):
                self._abort_checks.add(new.job_id)  # checked by the next tick
        return new

    def _maybe_retry(self, e: Execution) -> None:
        """A FAILED or TIMED_OUT execution the job's retry configuration still retries is
        queued again: a new execution (``executionNumber`` + 1, ``retryAttempt`` + 1) in
        place of the failed one, as long as the job is IN_PROGRESS."""
        row = self._db.execute("SELECT status, target_selection, targets FROM jobs WHERE"
                               " job_id = ?", (e.job_id,)).fetchone()
        if row is None or row[0] != J.IN_PROGRESS.value:
            return
        if row[1] == "CONTINUOUS" and not self._reaches(
                orjson.loads(row[2]), e.thing_name, self.groups.containing(e.thing_name)):
            return  # the thing left the job's groups: nothing to retry for it
        criteria = rollout_mod.parse_retry(self._job_configs(e.job_id)[
            "jobExecutionsRetryConfig"])
        done = dict(self._db.execute(
            "SELECT failure_type, count FROM retries WHERE job_id = ? AND thing_name = ?",
            (e.job_id, e.thing_name)).fetchall())
        criterion = rollout_mod.retry_due(criteria, e.status.value, done)
        if criterion is None:
            return
        self._db.execute("INSERT INTO retries VALUES (?, ?, ?, 1) ON CONFLICT DO UPDATE SET"
                         " count = count + 1", (e.job_id, e.thing_name, criterion))
        now = self._now()
        self._write_execution(Execution(
            job_id=e.job_id, thing_name=e.thing_name, execution_number=e.execution_number + 1,
            status=X.QUEUED, queued_at=now, last_updated_at=now, version_number=1,
            seq=self._next_seq(), retry_attempt=e.retry_attempt + 1))
        log.info("retry job_id=%s thing_name=%s attempt=%d", e.job_id, e.thing_name,
                 e.retry_attempt + 1)

    def _remove_execution(self, e: Execution, *, event: bool = True) -> None:
        self._db.execute("DELETE FROM executions WHERE thing_name = ? AND job_id = ?",
                         (e.thing_name, e.job_id))
        if event:
            self._execution_event(e, "deleted")

    def _set_job(self, job_id: str, **columns: Any) -> None:
        columns["last_updated_at"] = self._now()
        assignments = ", ".join(f"{c} = ?" for c in columns)
        self._db.execute(f"UPDATE jobs SET {assignments} WHERE job_id = ?",
                         (*columns.values(), job_id))

    def _job_column(self, job_id: str, column: str) -> Any:
        """One column of a job (hot paths: no decoding of the whole job and its targets)."""
        row = self._db.execute(f"SELECT {column} FROM jobs WHERE job_id = ?",
                               (job_id,)).fetchone()
        if row is None:
            raise ResourceNotFoundException(f"Job {job_id} not found")
        return row[0]

    def _maybe_complete(self, job_id: str) -> None:
        row = self._db.execute("SELECT status, target_selection FROM jobs WHERE job_id = ?",
                               (job_id,)).fetchone()
        if row is None or row[0] != J.IN_PROGRESS.value or row[1] != "SNAPSHOT":
            return
        if self._db.execute("SELECT 1 FROM executions WHERE job_id = ? AND status IN (?, ?)"
                            " UNION ALL SELECT 1 FROM planned WHERE job_id = ? LIMIT 1",
                            (job_id, *_PENDING, job_id)).fetchone():
            return  # executions pending, or targets not rolled out yet
        new = lifecycle.job_event(J.IN_PROGRESS, "complete", job_id=job_id, force=False,
                                  settings=self.settings)
        self._set_job(job_id, status=new.value, completed_at=self._now())
        self._job_event(job_id, "completed", extra={
            "completedAt": int(self._now()), "jobProcessDetails": _event_process_details(
                self._process_details(job_id))})

    # -- events ($aws/events/...) --------------------------------------------------------

    def _load_event_configurations(self) -> dict[str, bool]:
        row = self._db.execute("SELECT value FROM meta WHERE key = 'events'").fetchone()
        default = self.settings.job_events
        stored = orjson.loads(row[0]) if row else {}
        return {"JOB": stored.get("JOB", default),
                "JOB_EXECUTION": stored.get("JOB_EXECUTION", default)}

    def event_configurations(self) -> dict[str, bool]:
        return dict(self._events)

    def update_event_configurations(self, enabled: dict[str, bool]) -> None:
        config = dict(self._events)
        config.update({k: v for k, v in enabled.items() if k in config})
        self._db.execute("INSERT OR REPLACE INTO meta VALUES ('events', ?)",
                         (orjson.dumps(config).decode(),))
        self._events = config

    def _event_id(self) -> str:
        return str(uuid.UUID(int=self._rng.getrandbits(128), version=4))

    def _job_event(self, job_id: str, operation: str, extra: dict[str, Any] | None = None
                   ) -> None:
        if not self._events["JOB"]:
            return
        row = self._db.execute("SELECT * FROM jobs WHERE job_id = ?", (job_id,)).fetchone()
        job = self._job_from(row)
        payload: dict[str, Any] = {
            "eventType": "JOB", "eventId": self._event_id(), "timestamp": int(self._now()),
            "operation": operation, "jobId": job_id, "status": operation.upper(),
            "targetSelection": job.target_selection, "targets": list(job.targets),
            "createdAt": int(job.created_at * 1000), "lastUpdatedAt":
            int(job.last_updated_at * 1000)}
        if job.description:
            payload["description"] = job.description
        if job.comment and operation in ("deleted", "cancellation_in_progress",
                                         "deletion_in_progress"):
            payload["comment"] = job.comment
        payload.update(extra or {})
        self._emit(topics.job_event(job_id, operation), orjson.dumps(payload))

    def _execution_event(self, e: Execution, operation: str) -> None:
        if not self._events["JOB_EXECUTION"]:
            return
        payload = {"eventType": "JOB_EXECUTION", "eventId": self._event_id(),
                   "timestamp": int(self._now()), "operation": operation, "jobId": e.job_id,
                   "thingArn": self.thing_arn(e.thing_name),
                   "status": operation.upper() if operation == "deleted" else e.status.value,
                   "statusDetails": e.status_details,
                   "executionNumber": e.execution_number, "versionNumber": e.version_number}
        self._emit(topics.execution_event(e.job_id, operation), orjson.dumps(payload))

    # -- control plane: jobs -------------------------------------------------------------

    def create_job(self, job_id: str, *, targets: Sequence[str], document: str,
                   description: str | None = None, target_selection: str = "SNAPSHOT",
                   in_progress_timeout_minutes: int | None = None,
                   namespace_id: str | None = None,
                   rollout_config: dict[str, Any] | None = None,
                   abort_config: dict[str, Any] | None = None,
                   retry_config: dict[str, Any] | None = None,
                   template_arn: str | None = None,
                   document_parameters: dict[str, str] | None = None,
                   scheduling_config: dict[str, Any] | None = None) -> Job:
        """Create it; without a rollout configuration every target gets its QUEUED
        execution now, with one they are planned and released by :meth:`tick`."""
        validation.check_job_id(job_id)
        things = self._thing_names(targets)
        rollout = rollout_mod.parse_rollout(rollout_config)
        rollout_mod.parse_abort(abort_config)
        rollout_mod.parse_retry(retry_config)
        now = self._now()
        schedule = rollout_mod.parse_schedule(
            scheduling_config, now=now,
            minimum_minutes=self.settings.schedule_minimum_minutes)
        scheduled = schedule is not None and schedule.start is not None and schedule.start > now
        configs = {k: v for k, v in (("jobExecutionsRolloutConfig", rollout_config),
                                     ("abortConfig", abort_config),
                                     ("jobExecutionsRetryConfig", retry_config),
                                     ("jobTemplateArn", template_arn),
                                     ("documentParameters", document_parameters),
                                     ("schedulingConfig", scheduling_config))
                   if v is not None}
        validation.check_document(document)
        validation.check_text("description", description)
        if target_selection not in ("SNAPSHOT", "CONTINUOUS"):
            raise InvalidRequestException("targetSelection: must be SNAPSHOT or CONTINUOUS")
        validation.check_timeout(in_progress_timeout_minutes)
        with self._tx(things):
            if self._db.execute("SELECT 1 FROM jobs WHERE job_id = ?", (job_id,)).fetchone():
                raise ResourceAlreadyExistsException(f"Job {job_id} already exists")
            self._db.execute(
                "INSERT INTO jobs (job_id, status, document, description, target_selection,"
                " targets, created_at, last_updated_at, completed_at, force_canceled,"
                " reason_code, comment, in_progress_timeout_minutes, namespace_id, seq,"
                " configs) VALUES (?, ?, ?, ?, ?, ?, ?, ?, NULL, 0, NULL, NULL, ?, ?, ?, ?)",
                (job_id, (J.SCHEDULED if scheduled else J.IN_PROGRESS).value, document,
                 description, target_selection,
                 orjson.dumps(list(targets)).decode(), now, now, in_progress_timeout_minutes,
                 namespace_id, self._next_seq(), orjson.dumps(configs).decode()))
            self._configs[job_id] = configs
            if rollout is not None:
                self._db.execute("INSERT INTO rollouts VALUES (?, ?, ?, 0, 0, 0)",
                                 (job_id, None if scheduled else now, rollout.initial_rate))
            if schedule is not None:
                self._db.execute("INSERT INTO schedules VALUES (?, ?, ?, ?)",
                                 (job_id, schedule.start, schedule.end, schedule.end_behavior))
            for thing in things:
                self._plan_or_queue(job_id, thing, rollout is not None or scheduled)
            if not things:  # a snapshot of empty groups: nothing to wait for
                self._maybe_complete(job_id)
        log.info("create_job job_id=%s targets=%d", job_id, len(things))
        return self.describe_job(job_id)

    def _thing_names(self, targets: Sequence[str]) -> list[str]:
        """The things ``targets`` reach now: thing ARNs, and the members of thing-group
        ARNs (with the groups below them); only things and groups of this account and
        region, and groups that exist."""
        if not targets:
            raise InvalidRequestException("targets: at least one target is required")
        names: dict[str, None] = {}
        for kind, name in map(self._target, targets):
            if kind == "thing":
                names[name] = None
            else:
                names.update(dict.fromkeys(self.groups.members(name, recursive=True)))
        return list(names)

    def _target(self, target: str) -> tuple[str, str]:
        """(``thing`` or ``thinggroup``, name) of a target ARN."""
        m = _THING_ARN.fullmatch(target)
        if m is None:
            raise InvalidRequestException(
                f"targets: {target!r:.200} is not a thing or thing group ARN")
        region, account, kind, name = m.groups()
        if (region, account) != (self.settings.region, self.settings.account_id):
            raise InvalidRequestException(
                f"targets: {target!r:.200} is not in region {self.settings.region} of "
                f"account {self.settings.account_id}")
        if kind == "thinggroup":
            check_group_name(name, "targets")
            self.groups.describe(name)
        elif not topics.THING_NAME_RE.fullmatch(name):
            raise InvalidRequestException(
                f"targets: thing name {name!r:.200} must match [a-zA-Z0-9:_-]{{1,128}}")
        return kind, name

    def _reaches(self, targets: Sequence[str], thing: str, groups: set[str]) -> bool:
        """Whether a job with ``targets`` targets ``thing``, in ``groups`` (all the groups
        it is in, directly or below)."""
        for target in targets:
            m = _THING_ARN.fullmatch(target)
            if m is not None and m.group(4) in (groups if m.group(3) == "thinggroup"
                                                else (thing,)):
                return True
        return False

    # -- thing groups and continuous jobs ------------------------------------------------

    def add_thing_to_group(self, group: str, thing: str) -> None:
        with self._tx([thing]):
            if self.groups.add(group, thing):
                self._reconcile(thing)
        log.info("add_thing_to_thing_group group=%s thing_name=%s", group, thing)

    def remove_thing_from_group(self, group: str, thing: str) -> None:
        with self._tx([thing]):
            if self.groups.remove(group, thing):
                self._reconcile(thing)
        log.info("remove_thing_from_thing_group group=%s thing_name=%s", group, thing)

    def delete_thing_group(self, group: str, expected_version: int | None = None) -> None:
        members = (self.groups.members(group, recursive=False)
                   if self.groups.find(group) else [])
        with self._tx(members):
            for thing in self.groups.delete(group, expected_version):
                self._reconcile(thing)
        log.info("delete_thing_group group=%s members=%d", group, len(members))

    def update_groups_of(self, thing: str, add: Sequence[str], remove: Sequence[str]) -> None:
        """UpdateThingGroupsForThing: all of it or nothing."""
        with self._tx([thing]):
            changed = [self.groups.add(g, thing) for g in add] + \
                [self.groups.remove(g, thing) for g in remove]
            if any(changed):
                self._reconcile(thing)

    def thing_deleted(self, thing: str) -> None:
        """A thing left the registry: it leaves its groups too."""
        with self._tx([thing]):
            if self.groups.forget_thing(thing):
                self._reconcile(thing)

    def _reconcile(self, thing: str) -> None:
        """After ``thing``'s groups changed: each in-progress (or scheduled) CONTINUOUS job
        that now targets it and never ran on it queues (plans) an execution for it (one
        REMOVED earlier is queued again, with the next executionNumber); one that no longer
        targets it drops it from its plan and removes its QUEUED execution (REMOVED, as AWS
        does; one already IN_PROGRESS runs on)."""
        groups = self.groups.containing(thing)
        rows = self._db.execute(
            "SELECT job_id, targets FROM jobs WHERE target_selection = 'CONTINUOUS' AND "
            "status IN (?, ?) ORDER BY seq", (J.IN_PROGRESS.value, J.SCHEDULED.value)
        ).fetchall()
        for job_id, targets in rows:
            if self._reaches(orjson.loads(targets), thing, groups):
                self._target_again(job_id, thing)
                continue
            self._db.execute("DELETE FROM planned WHERE job_id = ? AND thing_name = ?",
                             (job_id, thing))
            e = self._find_execution(job_id, thing)
            if e is not None and e.status is X.QUEUED:
                self._change_execution(e, X.REMOVED, details=None)

    def _target_again(self, job_id: str, thing: str) -> None:
        """A continuous job reaches ``thing`` (again): it queues an execution unless it has
        one that was not REMOVED (a job runs once per thing)."""
        if self._rollout_stopped(job_id):
            return  # its schedule's end stopped the rollout: no new device gets it
        e = self._find_execution(job_id, thing)
        if e is None or e.status is X.REMOVED:
            paced = "jobExecutionsRolloutConfig" in self._job_configs(job_id) or \
                self._job_column(job_id, "status") == J.SCHEDULED.value
            self._plan_or_queue(job_id, thing, paced, self._next_number(job_id, thing))

    def _rollout_stopped(self, job_id: str) -> bool:
        return self._db.execute("SELECT 1 FROM schedules WHERE job_id = ? AND end_behavior ="
                                " 'STOPPED'", (job_id,)).fetchone() is not None

    def _plan_or_queue(self, job_id: str, thing: str, paced: bool,
                       execution_number: int = 1) -> None:
        """Queue ``thing``'s execution now, or (``paced``: a rollout configuration) plan it
        for the rollout to release (a re-queued thing's planned execution still gets the
        next number: its old one stays until then)."""
        if not paced:
            self._queue(job_id, thing, execution_number)
            return
        self._db.execute("INSERT OR IGNORE INTO planned VALUES (?, ?, ?)",
                         (job_id, thing, self._next_seq()))
        if self._job_column(job_id, "status") == J.IN_PROGRESS.value:  # not before its start
            self._db.execute("UPDATE rollouts SET next_at = ? WHERE job_id = ? AND next_at IS"
                             " NULL", (self._now(), job_id))

    def _next_number(self, job_id: str, thing: str) -> int:
        """The executionNumber a new execution of the job for ``thing`` gets (1, or the
        one after the execution it replaces: a re-join or a retry)."""
        old = self._find_execution(job_id, thing)
        return 1 if old is None else old.execution_number + 1

    def _queue(self, job_id: str, thing: str, execution_number: int = 1) -> None:
        now = self._now()
        self._write_execution(Execution(
            job_id=job_id, thing_name=thing, execution_number=execution_number,
            status=X.QUEUED, queued_at=now, last_updated_at=now, version_number=1,
            seq=self._next_seq()))

    def associate_targets(self, job_id: str, targets: Sequence[str],
                          comment: str | None = None) -> Job:
        """AssociateTargetsWithJob: more targets for an in-progress CONTINUOUS job; things
        they reach get an execution now (as when they join a targeted group). (AWS caps a job at 100
        targets; this emulator does not, as drills target thousands of things by ARN.)"""
        validation.check_text("comment", comment)
        job = self._get_job(job_id)
        if job.target_selection != "CONTINUOUS":
            raise InvalidRequestException(
                f"Job {job_id} is a SNAPSHOT job: only a CONTINUOUS job takes new targets")
        if job.status is not J.IN_PROGRESS:
            raise InvalidRequestException(f"Job {job_id} is {job.status}: only an "
                                          "IN_PROGRESS job takes new targets")
        added = [t for t in dict.fromkeys(targets) if t not in job.targets]
        things = self._thing_names(targets)
        with self._tx(things):
            self._set_job(job_id, targets=orjson.dumps([*job.targets, *added]).decode(),
                          **({} if comment is None else {"comment": comment}))
            for thing in things:
                self._target_again(job_id, thing)
        log.info("associate_targets_with_job job_id=%s targets=%d", job_id, len(added))
        return self._get_job(job_id)

    def describe_job(self, job_id: str) -> Job:
        job = self._get_job(job_id)
        planned = self._db.execute("SELECT count(*) FROM planned WHERE job_id = ?",
                                   (job_id,)).fetchone()[0]
        return Job(**{**_asdict(job), "process_details": self._process_details(job_id),
                      "planned": planned})

    def _process_details(self, job_id: str) -> dict[str, int]:
        rows = self._db.execute("SELECT status, count(*) FROM executions WHERE job_id = ?"
                                " GROUP BY status", (job_id,)).fetchall()
        return {r[0]: r[1] for r in rows}

    def get_job_document(self, job_id: str) -> str:
        return self._get_job(job_id).document

    def list_jobs(self, *, status: str | None = None, target_selection: str | None = None,
                  thing_group: str | None = None, max_results: int | None = None,
                  next_token: str | None = None) -> tuple[list[Job], str | None]:
        """Jobs in creation order; ``thing_group``: those targeting that group."""
        query, params = ("SELECT *, (SELECT count(*) FROM planned p WHERE p.job_id ="
                         " jobs.job_id) AS planned FROM jobs WHERE 1 = 1"), []
        if thing_group is not None:
            query += (" AND EXISTS (SELECT 1 FROM json_each(jobs.targets) WHERE"
                      " substr(value, instr(value, ':thinggroup/') + 12) = ?"
                      " AND instr(value, ':thinggroup/') > 0)")
            params.append(thing_group)
        if status is not None:
            query += " AND status = ?"
            params.append(validation.parse_enum(J, status, "status").value)
        if target_selection is not None:
            query += " AND target_selection = ?"
            params.append(target_selection)
        offset, limit = validation.page(max_results, next_token)
        rows = self._db.execute(query + " ORDER BY seq LIMIT ? OFFSET ?",
                                (*params, limit + 1, offset)).fetchall()
        jobs = [self._job_from(r) for r in rows[:limit]]
        return jobs, validation.next_token_for(offset, limit, len(rows))

    def cancel_job(self, job_id: str, *, force: bool = False, reason_code: str | None = None,
                   comment: str | None = None) -> Job:
        if reason_code is not None and not validation.REASON_CODE.fullmatch(reason_code):
            raise InvalidRequestException("reasonCode: must match [A-Z0-9_]{1,128}")
        validation.check_text("comment", comment)
        job = self._get_job(job_id)
        new = lifecycle.job_event(job.status, "cancel", job_id=job_id, force=force,
                                  settings=self.settings)
        executions = self._executions_of(job_id)
        with self._tx(e.thing_name for e in executions):
            self._set_job(job_id, status=new.value, force_canceled=int(force),
                          reason_code=reason_code, comment=comment)
            self._stop_rollout(job_id)
            self._job_event(job_id, "cancellation_in_progress")
            for e in executions:
                if (e.status, "cancel", force) in lifecycle.SERVICE_TRANSITIONS:
                    self._change_execution(e, X.CANCELED, details=None, force_canceled=force)
            self._job_event(job_id, "canceled")
        log.info("cancel_job job_id=%s force=%s", job_id, force)
        return self.describe_job(job_id)

    def delete_job(self, job_id: str, *, force: bool = False,
                   namespace_id: str | None = None) -> None:
        """Start deleting: DELETION_IN_PROGRESS now, executions swept by :meth:`tick`."""
        job = self._get_job(job_id)
        new = lifecycle.job_event(job.status, "delete", job_id=job_id, force=force,
                                  settings=self.settings)
        deleting = self._db.execute("SELECT count(*) FROM jobs WHERE status = ?",
                                    (J.DELETION_IN_PROGRESS.value,)).fetchone()[0]
        if deleting >= self.settings.max_concurrent_deletions:
            raise LimitExceededException(
                f"cannot delete job {job_id}: {deleting} jobs are already being deleted "
                f"(limit {self.settings.max_concurrent_deletions})")
        executions = self._executions_of(job_id)
        order = list(range(len(executions)))
        self._rng.shuffle(order)
        step, now = self.settings.deletion_seconds_per_execution, self._now()
        with self._tx():
            self._set_job(job_id, status=new.value)
            self._stop_rollout(job_id)
            for position, e in zip(order, executions, strict=True):
                self._db.execute(
                    "UPDATE executions SET sweep_at = ? WHERE thing_name = ? AND job_id = ?",
                    (now + (position + 1) * step, e.thing_name, job_id))
            self._job_event(job_id, "deletion_in_progress")
        log.info("delete_job job_id=%s force=%s executions=%d", job_id, force, len(executions))

    def update_job(self, job_id: str, *, description: str | None = None,
                   timeout_minutes: int | None = None,
                   configs: dict[str, dict[str, Any]] | None = None) -> None:
        """UpdateJob: a new description, in-progress timeout (for executions that start
        from now on) or rollout / abort / retry configuration (each replaces the old one; a
        rollout under way continues at the new configuration's initial rate)."""
        validation.check_text("description", description)
        validation.check_timeout(timeout_minutes)
        configs = configs or {}
        rollout = rollout_mod.parse_rollout(configs.get("jobExecutionsRolloutConfig"))
        rollout_mod.parse_abort(configs.get("abortConfig"))
        rollout_mod.parse_retry(configs.get("jobExecutionsRetryConfig"))
        job = self._get_job(job_id)
        if job.status is J.DELETION_IN_PROGRESS:
            raise InvalidRequestException(f"Job {job_id} is being deleted: it cannot be "
                                          "updated")
        columns: dict[str, Any] = {}
        if description is not None:
            columns["description"] = description
        if timeout_minutes is not None:
            columns["in_progress_timeout_minutes"] = timeout_minutes
        merged = {**job.configs, **configs}
        if configs:
            columns["configs"] = orjson.dumps(merged).decode()
        with self._tx():
            self._set_job(job_id, **columns)
            if rollout is not None:  # paced from now on, at its initial rate
                now, interval = self._now(), 60.0 / rollout.initial_rate
                succeeded = self._process_details(job_id).get(X.SUCCEEDED.value, 0)
                planned = self._db.execute("SELECT count(*) FROM planned WHERE job_id = ?",
                                           (job_id,)).fetchone()[0]
                first = now if planned and job.status is J.IN_PROGRESS else None
                self._db.execute(
                    "INSERT INTO rollouts VALUES (?, ?, ?, 0, 0, ?) ON CONFLICT (job_id) DO"
                    " UPDATE SET rate = excluded.rate, mark_released = released,"
                    " mark_succeeded = excluded.mark_succeeded,"
                    " next_at = min(next_at, ?)", (job_id, first, rollout.initial_rate,
                                                   succeeded, now + interval))
        self._configs[job_id] = merged
        if "abortConfig" in configs:
            self._abort_checks.add(job_id)
        log.info("update_job job_id=%s members=%s", job_id, ",".join(sorted(
            [*columns, *configs])))

    def _stop_rollout(self, job_id: str) -> None:
        """The job is canceled or deleted: targets not released yet never will be."""
        self._db.execute("DELETE FROM planned WHERE job_id = ?", (job_id,))
        self._db.execute("DELETE FROM rollouts WHERE job_id = ?", (job_id,))
        self._db.execute("DELETE FROM schedules WHERE job_id = ?", (job_id,))

    def _executions_of(self, job_id: str) -> list[Execution]:
        rows = self._db.execute(f"SELECT {_EXECUTION_COLUMNS} FROM executions WHERE job_id = ?"
                                " ORDER BY seq", (job_id,)).fetchall()
        return [self._execution_from(r) for r in rows]

    # -- control plane: executions -------------------------------------------------------

    def describe_job_execution(self, job_id: str, thing: str,
                               execution_number: int | None = None) -> Execution:
        return self._get_execution(job_id, thing, execution_number)

    def list_job_executions_for_job(self, job_id: str, *, status: str | None = None,
                                    max_results: int | None = None,
                                    next_token: str | None = None
                                    ) -> tuple[list[Execution], str | None]:
        self._get_job(job_id)
        return self._list_executions("job_id = ?", job_id, status, max_results, next_token)

    def list_job_executions_for_thing(self, thing: str, *, status: str | None = None,
                                      job_id: str | None = None,
                                      max_results: int | None = None,
                                      next_token: str | None = None
                                      ) -> tuple[list[Execution], str | None]:
        if job_id is not None:
            return self._list_executions("thing_name = ? AND job_id = ?", (thing, job_id),
                                         status, max_results, next_token)
        return self._list_executions("thing_name = ?", thing, status, max_results, next_token)

    def _list_executions(self, where: str, key: str | tuple[str, ...], status: str | None,
                         max_results: int | None, next_token: str | None
                         ) -> tuple[list[Execution], str | None]:
        params: list[Any] = list(key) if isinstance(key, tuple) else [key]
        if status is not None:
            where += " AND status = ?"
            params.append(validation.parse_enum(X, status, "status").value)
        offset, limit = validation.page(max_results, next_token)
        rows = self._db.execute(f"SELECT {_EXECUTION_COLUMNS} FROM executions WHERE {where}"
                                " ORDER BY seq LIMIT ? OFFSET ?",
                                (*params, limit + 1, offset)).fetchall()
        page = [self._execution_from(r) for r in rows[:limit]]
        return page, validation.next_token_for(offset, limit, len(rows))

    def pending_count(self) -> int:
        """How many executions are QUEUED or IN_PROGRESS, over all things."""
        row = self._db.execute("SELECT count(*) FROM executions WHERE status IN (?, ?)",
                               _PENDING).fetchone()
        return int(row[0])

    def status_counts(self) -> dict[str, int]:
        """How many executions are in each status (statuses with none are left out)."""
        rows = self._db.execute("SELECT status, count(*) FROM executions GROUP BY status")
        return {str(status): int(n) for status, n in rows.fetchall()}

    def all_executions(self) -> list[Execution]:
        rows = self._db.execute(f"SELECT {_EXECUTION_COLUMNS} FROM executions ORDER BY seq")
        return [self._execution_from(r) for r in rows.fetchall()]

    def cancel_job_execution(self, job_id: str, thing: str, *, force: bool = False,
                             expected_version: int | None = None,
                             status_details: dict[str, str] | None = None) -> None:
        try:
            validate_status_details(status_details, max_pairs=10)
        except ValueError as err:
            raise InvalidRequestException(str(err)) from None
        e = self._get_execution(job_id, thing, None)
        validation.check_version(expected_version, e.version_number)
        lifecycle.service_event(e.status, "cancel", force=force, job_id=job_id,
                                thing_name=thing)
        with self._tx([thing]):
            self._change_execution(e, X.CANCELED, details=status_details, force_canceled=force)
        log.info("cancel_job_execution job_id=%s thing_name=%s force=%s", job_id, thing, force)

    def delete_job_execution(self, job_id: str, thing: str, execution_number: int, *,
                             force: bool = False, namespace_id: str | None = None) -> None:
        e = self._get_execution(job_id, thing, execution_number)
        if not e.status.is_terminal and not force:
            raise InvalidStateTransitionException(
                f"cannot delete job execution {job_id} on {thing} in status {e.status}"
                " without force")
        with self._tx([thing]):
            self._remove_execution(e)
            self._maybe_complete(job_id)
        log.info("delete_job_execution job_id=%s thing_name=%s force=%s", job_id, thing, force)

    # -- data plane (what devices ask over MQTT) -----------------------------------------

    def get_pending(self, thing: str) -> tuple[list[Execution], list[Execution]]:
        """(in progress, queued), at most ``max_pending_listed`` in all."""
        pending = self._pending(thing)[: self.settings.max_pending_listed]
        return ([e for e in pending if e.status is X.IN_PROGRESS],
                [e for e in pending if e.status is X.QUEUED])

    def start_next(self, thing: str, *, status_details: dict[str, str] | None = None,
                   step_timeout: int | None = None) -> Execution | None:
        """The head of the pending list, moved to IN_PROGRESS if it was QUEUED."""
        validation.check_device_request(status_details, step_timeout)
        pending = self._pending(thing)
        if not pending:
            return None
        head = pending[0]
        if head.status is X.IN_PROGRESS:
            return head
        with self._tx([thing]):
            return self._change_execution(head, X.IN_PROGRESS, details=status_details,
                                          step_timeout=step_timeout)

    def describe(self, thing: str, job_id: str, execution_number: int | None = None
                 ) -> Execution | None:
        """DescribeJobExecution over MQTT; ``$next`` gives the head or None."""
        if job_id == topics.NEXT:
            pending = self._pending(thing)
            return pending[0] if pending else None
        e = self._get_execution(job_id, thing, execution_number)
        if (e.status.is_terminal
                and self.settings.terminal_describe is TerminalDescribe.TERMINAL_STATE_REACHED):
            raise TerminalStateException(f"job execution {job_id} is in terminal state "
                                         f"{e.status}")
        return e

    def update(self, thing: str, job_id: str, *, status: X,
               status_details: dict[str, str] | None = None,
               expected_version: int | None = None, execution_number: int | None = None,
               step_timeout: int | None = None) -> Execution:
        if job_id == topics.NEXT:
            raise InvalidRequestException("UpdateJobExecution does not accept $next")
        validation.check_device_request(status_details, step_timeout)
        e = self._get_execution(job_id, thing, execution_number)
        new_status = lifecycle.device_update(e.status, status, e.state(), self.settings,
                                             job_id=job_id)
        if expected_version is not None and expected_version != e.version_number:
            raise VersionConflictException(
                f"expectedVersion {expected_version} does not match {e.version_number}",
                execution_state=e.state())
        # a pending execution keeping its status keeps its place: nothing to notify
        with self._tx([] if new_status is e.status else [thing]):
            return self._change_execution(e, new_status, details=status_details,
                                          step_timeout=step_timeout)

    def document(self, job_id: str) -> dict[str, Any] | None:
        return self._document(job_id)

    # -- time: deletion sweep and timeouts -----------------------------------------------

    def wants_tick(self) -> bool:
        """Whether :meth:`tick` has work now that a data-plane batch may have caused (an
        abort configuration to check), so the shell need not wait for its next poll."""
        return bool(self._abort_checks)

    def next_due(self) -> float | None:
        """When :meth:`tick` next has work, or None."""
        if self._empty_deleting_jobs():
            return self._now()
        # the IS NOT NULL terms let SQLite use the partial indexes (no table scan)
        sweep = self._db.execute("SELECT min(sweep_at) FROM executions"
                                 " WHERE sweep_at IS NOT NULL").fetchone()[0]
        deadline = self._db.execute("SELECT min(deadline) FROM executions"
                                    " WHERE deadline IS NOT NULL").fetchone()[0]
        rollout = self._db.execute("SELECT min(next_at) FROM rollouts").fetchone()[0]
        start, end = self._db.execute(
            "SELECT min(CASE WHEN j.status = ? THEN s.start END), min(s.end_at) FROM schedules"
            " s JOIN jobs j USING (job_id)", (J.SCHEDULED.value,)).fetchone()
        if self._abort_checks:
            return self._now()
        due = [t for t in (sweep, deadline, rollout, start, end) if t is not None]
        return min(due) if due else None

    def _empty_deleting_jobs(self) -> list[str]:
        rows = self._db.execute(
            "SELECT job_id FROM jobs WHERE status = ? AND NOT EXISTS (SELECT 1 FROM executions"
            " e WHERE e.job_id = jobs.job_id)", (J.DELETION_IN_PROGRESS.value,)).fetchall()
        return [r[0] for r in rows]

    def tick(self, limit: int | None = None) -> bool:
        """Sweep executions of deleting jobs, finish deletions, time executions out.

        At most ``limit`` executions are swept per call (a shell keeps its loop responsive
        in a burst); returns True when more is due already.
        """
        now = self._now()
        rows = self._db.execute(
            f"SELECT {_EXECUTION_COLUMNS} FROM executions WHERE sweep_at IS NOT NULL AND"
            " sweep_at <= ? ORDER BY sweep_at LIMIT ?", (now, -1 if limit is None else limit + 1)
        ).fetchall()
        more = limit is not None and len(rows) > limit
        for row in rows[:limit]:
            e = self._execution_from(row)
            with self._tx([e.thing_name]):
                self._remove_execution(e, event=self.settings.execution_deleted_events)
        for job_id in [] if more else self._empty_deleting_jobs():
            with self._tx():
                self._job_event(job_id, "deleted")
                self._db.execute("DELETE FROM jobs WHERE job_id = ?", (job_id,))
                # a jobId used again starts afresh: no retries counted for it
                self._db.execute("DELETE FROM retries WHERE job_id = ?", (job_id,))
            self._documents.pop(job_id, None)
            self._configs.pop(job_id, None)
            log.info("delete_job done job_id=%s", job_id)
        self._follow_schedules(now)
        more = self._release(now, limit) or more
        for job_id in sorted(self._abort_checks):
            self._abort_checks.discard(job_id)
            self._maybe_abort(job_id)
        rows = self._db.execute(
            f"SELECT {_EXECUTION_COLUMNS} FROM executions WHERE deadline IS NOT NULL AND"
            " deadline <= ?",
            (now,)).fetchall()
        for row in rows:
            e = self._execution_from(row)
            with self._tx([e.thing_name]):
                self._change_execution(e, X.TIMED_OUT, details=None)
            log.info("timed_out job_id=%s thing_name=%s", e.job_id, e.thing_name)
        return more


    def _release(self, now: float, limit: int | None) -> bool:
        """Release the next planned target of each rollout that is due (at most ``limit``
        in all); True if more is due already."""
        due = self._db.execute("SELECT job_id, rate, released, mark_released, mark_succeeded"
                               " FROM rollouts WHERE next_at <= ? ORDER BY next_at",
                               (now,)).fetchall()
        for i, (job_id, rate, count, mark_released, mark_succeeded) in enumerate(due):
            if limit is not None and i >= limit:
                return True
            row = self._db.execute("SELECT thing_name FROM planned WHERE job_id = ? ORDER BY"
                                   " seq LIMIT 1", (job_id,)).fetchone()
            if row is None:  # nothing planned: idle until a thing is (continuous)
                with self._tx():
                    self._db.execute("UPDATE rollouts SET next_at = NULL WHERE job_id = ?",
                                     (job_id,))
                    self._maybe_complete(job_id)  # a snapshot with nothing left to release
                continue
            thing = row[0]
            with self._tx([thing]):
                self._db.execute("DELETE FROM planned WHERE job_id = ? AND thing_name = ?",
                                 (job_id, thing))
                self._queue(job_id, thing, self._next_number(job_id, thing))
            count += 1
            rollout = rollout_mod.parse_rollout(
                self._job_configs(job_id)["jobExecutionsRolloutConfig"])
            assert rollout is not None
            succeeded = self._process_details(job_id).get(X.SUCCEEDED.value, 0)
            faster = rollout.increased(rate, count - mark_released, succeeded - mark_succeeded)
            if faster is not None:
                rate, mark_released, mark_succeeded = faster, count, succeeded
                log.info("rollout job_id=%s rate_per_minute=%g", job_id, rate)
            # the rate is a maximum: the next release comes an interval after this one,
            # however late this tick was (no burst to catch up)
            self._db.execute("UPDATE rollouts SET next_at = ?, rate = ?, released = ?,"
                             " mark_released = ?, mark_succeeded = ? WHERE job_id = ?",
                             (now + 60.0 / rate, rate, count, mark_released, mark_succeeded,
                              job_id))
        return False

    def _follow_schedules(self, now: float) -> None:
        """Start the scheduled jobs whose startTime came (their targets released at once,
        or by their rollout) and apply the endBehavior of those whose endTime came."""
        for job_id, in self._db.execute(
                "SELECT job_id FROM schedules JOIN jobs USING (job_id) WHERE jobs.status = ?"
                " AND start <= ? ORDER BY start", (J.SCHEDULED.value, now)).fetchall():
            things = [r[0] for r in self._db.execute(
                "SELECT thing_name FROM planned WHERE job_id = ? ORDER BY seq", (job_id,))]
            paced = "jobExecutionsRolloutConfig" in self._job_configs(job_id)
            with self._tx([] if paced else things):
                self._set_job(job_id, status=lifecycle.job_event(
                    J.SCHEDULED, "start", job_id=job_id, force=False,
                    settings=self.settings).value)
                if paced:
                    self._db.execute("UPDATE rollouts SET next_at = ? WHERE job_id = ?",
                                     (now, job_id))
                else:
                    self._db.execute("DELETE FROM planned WHERE job_id = ?", (job_id,))
                    for thing in things:
                        self._queue(job_id, thing, self._next_number(job_id, thing))
                self._maybe_complete(job_id)  # a snapshot of empty groups has nothing to do
            log.info("scheduled job started job_id=%s targets=%d", job_id, len(things))
        for job_id, behavior in self._db.execute(
                "SELECT job_id, end_behavior FROM schedules WHERE end_at <= ? ORDER BY end_at",
                (now,)).fetchall():
            status = self._job_column(job_id, "status")
            if behavior == "STOP_ROLLOUT" or status not in (J.SCHEDULED.value,
                                                            J.IN_PROGRESS.value):
                with self._tx():
                    self._stop_rollout(job_id)
                    # remembered: things joining a continuous job's group get nothing now
                    self._db.execute("INSERT INTO schedules VALUES (?, NULL, NULL, 'STOPPED')",
                                     (job_id,))
                    self._maybe_complete(job_id)
            else:
                self.cancel_job(job_id, force=behavior == "FORCE_CANCEL",
                                reason_code="SCHEDULED_END",
                                comment=f"schedulingConfig endTime: {behavior}")
            log.info("scheduled job ended job_id=%s end_behavior=%s", job_id, behavior)

    def _maybe_abort(self, job_id: str) -> None:
        """Cancel the job if its abort configuration says so."""
        row = self._db.execute("SELECT status FROM jobs WHERE job_id = ?", (job_id,)).fetchone()
        if row is None or row[0] != J.IN_PROGRESS.value:
            return
        criteria = rollout_mod.parse_abort(self._job_configs(job_id).get("abortConfig"))
        met = rollout_mod.abort_due(criteria, self._process_details(job_id))
        if met is None:
            return
        self.cancel_job(job_id, force=self.settings.abort_force,
                        reason_code=self.settings.abort_reason_code,
                        comment=f"abortConfig met: {met.describe()}")
        log.info("abort job_id=%s criterion=%r", job_id, met.describe())


def _asdict(job: Job) -> dict[str, Any]:
    return {name: getattr(job, name) for name in Job.__dataclass_fields__}


def _event_process_details(counts: dict[str, int]) -> dict[str, int]:
    names = {"CANCELED": "numberOfCanceledThings", "REJECTED": "numberOfRejectedThings",
             "FAILED": "numberOfFailedThings", "REMOVED": "numberOfRemovedThings",
             "SUCCEEDED": "numberOfSucceededThings", "TIMED_OUT": "numberOfTimedOutThings"}
    return {name: counts.get(status, 0) for status, name in names.items()}
