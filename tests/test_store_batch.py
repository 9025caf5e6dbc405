"""Group commit: operations inside ``JobsStore.batch()`` share one transaction, yet each one
stays all-or-nothing, and nothing of a batch survives if the batch itself fails."""

from __future__ import annotations

from pathlib import Path

import pytest

from devicesim.wire.enums import JobExecutionStatus as X
from fleet.service.errors import VersionConflictException
from fleet.service.store import JobsStore

ARN = "arn:aws:iot:us-east-1:123456789012:thing/"


def make(path: Path) -> JobsStore:
    store = JobsStore(path, now=lambda: 1_700_000_000.0)
    store.create_job("j", targets=[ARN + "a", ARN + "b"], document='{"operation": "sleep"}')
    store.start_next("a")
    store.start_next("b")
    store.drain()
    return store


def test_a_failing_operation_in_a_batch_leaves_the_others(tmp_path: Path) -> None:
    store = make(tmp_path / "s.db")
    with store.batch():
        store.update("a", "j", status=X.SUCCEEDED, expected_version=2)
        with pytest.raises(VersionConflictException):
            store.update("b", "j", status=X.SUCCEEDED, expected_version=99)
        store.update("b", "j", status=X.IN_PROGRESS, expected_version=2)
    store.close()
    reopened = JobsStore(tmp_path / "s.db", now=lambda: 1_700_000_000.0)
    a = reopened.describe_job_execution("j", "a")
    b = reopened.describe_job_execution("j", "b")
    assert (a.status, a.version_number) == (X.SUCCEEDED, 3)
    assert (b.status, b.version_number) == (X.IN_PROGRESS, 3)


def test_a_failed_batch_keeps_nothing_and_announces_nothing(tmp_path: Path) -> None:
    store = make(tmp_path / "s.db")
    def crash_mid_batch() -> None:
        with store.batch():
            store.update("a", "j", status=X.SUCCEEDED, expected_version=2)
            raise RuntimeError("the shell died mid-batch")

    with pytest.raises(RuntimeError):
        crash_mid_batch()
    assert store.drain() == []
    assert store.describe_job_execution("j", "a").status is X.IN_PROGRESS


def test_a_burst_is_swept_in_chunks(tmp_path: Path) -> None:
    clock = [1_700_000_000.0]
    store = JobsStore(tmp_path / "s.db", now=lambda: clock[0])
    things = [f"t{i}" for i in range(5)]
    store.create_job("big", targets=[ARN + t for t in things], document='{"operation": "x"}')
    store.delete_job("big", force=True)
    clock[0] += 60  # every execution is due
    assert store.tick(limit=2) is True
    assert len(store.list_job_executions_for_job("big")[0]) == 3
    assert store.tick(limit=2) is True
    assert store.tick(limit=2) is False  # the last one, and the job's deletion completes
    assert store.list_jobs()[0] == []
