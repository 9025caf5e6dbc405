"""NVM: A/B slots, the journal, validity, JSON and atomic save/load."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from devicesim import nvm as nvm_mod
from devicesim.nvm import Journal, Nvm, NvmError, Phase, Slot, is_valid
from devicesim.wire.events import NvmSummary

DOC = {"operation": "firmware-update", "version": "2.0.0"}


def journal(target: str | None = "B", **kw: object) -> Journal:
    fields: dict[str, object] = {"job_id": "job1", "execution_number": 1,
                                 "document_digest": "sha256:ab", "document": DOC,
                                 "step_name": "download", "target_slot": target,
                                 "version_number": 2}
    fields.update(kw)
    return Journal(**fields)  # type: ignore[arg-type]


def updated(to: str = "download") -> Nvm:
    """Walk a factory device through an update up to (and including) ``to``."""
    nvm = Nvm.factory().begin_download(journal())
    stages: list[tuple[str, Callable[[Nvm], Nvm]]] = [
        ("download", lambda n: n.write_partial("2.0.0")), ("install", Nvm.mark_complete),
        ("verify", Nvm.verify), ("commit", Nvm.commit)]
    for name, apply in stages:
        nvm = apply(nvm)
        if name == to:
            break
    return nvm


def test_factory_device_is_valid() -> None:
    nvm = Nvm.factory("1.2.3")
    assert nvm.active == "A"
    assert nvm.active_image == Slot(version="1.2.3", complete=True, verified=True)
    assert nvm.b == Slot()
    assert is_valid(nvm, set())


def test_full_update_switches_the_active_slot_only_at_commit() -> None:
    for stage in ("download", "install", "verify"):
        nvm = updated(stage)
        assert nvm.active == "A"
        assert is_valid(nvm, set())
        assert not is_valid(nvm, {("job1", 1)})  # the journal names a gone execution
    nvm = updated("commit")
    assert nvm.active == "B"
    assert nvm.active_image == Slot(version="2.0.0", complete=True, verified=True)
    assert nvm.journal is not None
    assert nvm.journal.phase is Phase.DONE
    assert is_valid(nvm.clear_journal(), {("job1", 1)})


def test_begin_download_erases_the_target_and_refuses_the_active_slot() -> None:
    nvm = Nvm.factory()
    assert nvm.begin_download(journal()).b == Slot()
    with pytest.raises(NvmError, match="inactive"):
        nvm.begin_download(journal(target="A"))
    with pytest.raises(NvmError, match="already holds job1"):
        nvm.begin_download(journal()).begin_download(journal())
    with pytest.raises(NvmError, match="begin_download"):
        nvm.begin_job(journal())


def test_transitions_validate_before_changing_anything() -> None:
    nvm = Nvm.factory()
    with pytest.raises(NvmError, match="no job in progress"):
        nvm.write_partial("2")
    started = nvm.begin_download(journal())
    with pytest.raises(NvmError, match="nothing written"):
        started.mark_complete()
    with pytest.raises(NvmError, match="incomplete"):
        started.write_partial("2").verify()
    with pytest.raises(NvmError, match="only a verified image"):
        started.write_partial("2").mark_complete().commit()
    sleeping = nvm.begin_job(journal(target=None))
    with pytest.raises(NvmError, match="writes no image"):
        sleeping.write_partial("2")
    assert sleeping.commit().journal.phase is Phase.DONE  # type: ignore[union-attr]


@pytest.mark.parametrize("stage", ["download", "install", "verify"])
def test_rollback_keeps_the_good_image_and_invalidates_the_target(stage: str) -> None:
    nvm = updated(stage).rollback()
    assert nvm.active == "A"
    assert nvm.active_image.good
    assert not nvm.b.complete
    assert not nvm.b.verified
    assert is_valid(nvm.clear_journal(), {("job1", 1)})


def test_rollback_after_a_bad_activation_returns_to_the_good_slot() -> None:
    broken = updated("download").activate_unchecked()
    assert broken.active == "B"
    assert not is_valid(broken, set())
    repaired = broken.rollback()
    assert repaired.active == "A"
    assert is_valid(repaired, set())


def test_rollback_without_any_good_image_leaves_the_device_invalid() -> None:
    nvm = Nvm(active="A", a=Slot(version="1", complete=True), b=Slot())
    assert not is_valid(nvm.rollback(), set())


def test_note_execution_and_set_step_update_the_journal() -> None:
    nvm = updated("download").set_step(2, "reboot", 5).note_execution(7, 9)
    j = nvm.journal
    assert j is not None
    assert (j.step_index, j.step_name, j.execution_number, j.version_number) == (2, "reboot", 7, 9)


def test_summary_is_the_wire_shape() -> None:
    summary = updated("install").summary()
    assert summary == NvmSummary(active_slot="A", active_version="1.0.0", active_complete=True,
                                 active_verified=True, journal_job_id="job1",
                                 journal_execution_number=1,
                                 journal_document_digest="sha256:ab")
    assert Nvm(active="B").summary().active_version == ""


slots = st.builds(Slot, version=st.none() | st.text(max_size=5), complete=st.booleans(),
                  verified=st.booleans())
journals = st.builds(
    Journal, job_id=st.text(min_size=1, max_size=8), execution_number=st.integers(1, 10**12),
    document_digest=st.text(max_size=10),
    document=st.dictionaries(st.text(max_size=5), st.integers() | st.text(max_size=5)),
    phase=st.sampled_from(list(Phase)), step_index=st.integers(0, 5),
    step_name=st.none() | st.text(max_size=8), target_slot=st.sampled_from([None, "A", "B"]),
    version_number=st.none() | st.integers(0, 1000))
nvms = st.builds(Nvm, active=st.sampled_from(["A", "B"]), a=slots, b=slots,
                 journal=st.none() | journals)


@given(nvms)
def test_json_round_trip(nvm: Nvm) -> None:
    assert nvm_mod.loads(nvm_mod.dumps(nvm)) == nvm


def test_save_and_load_are_atomic(tmp_path: Path) -> None:
    path = tmp_path / "dev-1.nvm.json"
    with pytest.raises(FileNotFoundError):
        nvm_mod.load(path)
    first, second = Nvm.factory(), updated("install")
    nvm_mod.save(path, first)
    nvm_mod.save(path, second)
    assert nvm_mod.load(path) == second
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dev-1.nvm.json"]  # no tmp left


@pytest.mark.parametrize(("mutate", "message"), [
    (lambda o: o.update(active="C"), "active: expected 'A' or 'B'"),
    (lambda o: o.pop("slots"), "slots: expected an object"),
    (lambda o: o["slots"]["A"].update(complete="yes"), "slots.A.complete: expected bool"),
    (lambda o: o["slots"]["B"].update(version=3), "slots.B.version: expected str"),
    (lambda o: o["journal"].update(phase="later"), "journal.phase"),
    (lambda o: o["journal"].update(executionNumber=True), "journal.executionNumber"),
    (lambda o: o["journal"].update(targetSlot="Z"), "journal.targetSlot"),
    (lambda o: o["journal"].update(document=[]), "journal.document"),
])
def test_bad_files_name_the_field(mutate: object, message: str) -> None:
    obj = nvm_mod.to_dict(updated("install"))
    mutate(obj)  # type: ignore[operator]
    with pytest.raises(NvmError, match=message):
        nvm_mod.from_dict(obj)


def test_not_json() -> None:
    with pytest.raises(NvmError, match="not valid JSON"):
        nvm_mod.loads("{")
    with pytest.raises(NvmError, match="nvm: expected an object"):
        nvm_mod.loads(json.dumps([1]))
