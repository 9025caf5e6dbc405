"""The simulated non-volatile memory of a device: A/B image slots and a job journal.

Everything here is an immutable value with pure transitions; only :func:`load` and
:func:`save` touch the disk (atomically: tmp file + ``os.replace``).

The life of a firmware update, as the job agent drives it::

    begin_download   journal the execution; erase the inactive (target) slot
    write_partial    the target slot holds part of the new image (complete=False)
    mark_complete    the whole image is written
    verify           its signature/self-test passed (verified=True)
    commit           boot from the target slot from now on; journal phase DONE
    clear_journal    the final status was reported (or access was lost)

and when it goes wrong::

    rollback         active goes back to the last good image, the target slot is invalid
    activate_unchecked   (faulty devices only) boot the target slot as it is

"Valid" (DESIGN.md, invariant *valid-end*): the active image is complete and verified (so no
half-written image is active) and the journal names no execution that no longer exists.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, replace
from enum import StrEnum
from pathlib import Path
from typing import Any, Literal, TypeVar, cast

from devicesim.wire.events import NvmSummary

T = TypeVar("T")
SlotName = Literal["A", "B"]
SLOT_NAMES: tuple[SlotName, SlotName] = ("A", "B")
FACTORY_VERSION = "1.0.0"


class NvmError(ValueError):
    """An illegal NVM transition or an unreadable NVM file; the message names the field."""


class Phase(StrEnum):
    RUNNING = "running"  # executing steps; an image may be half-written
    DONE = "done"  # work finished (image committed); final SUCCEEDED not yet accepted
    FAILED = "failed"  # image rolled back after a failure; final FAILED not yet accepted


@dataclass(frozen=True, slots=True, kw_only=True)
class Slot:
    version: str | None = None  # None: erased
    complete: bool = False
    verified: bool = False

    @property
    def good(self) -> bool:
        return self.version is not None and self.complete and self.verified


@dataclass(frozen=True, slots=True, kw_only=True)
class Journal:
    """The execution a device is working on, persisted so a reboot can resume it."""

    job_id: str
    execution_number: int
    document_digest: str
    document: dict[str, Any]  # kept so a resumed job applies exactly what it started
    phase: Phase = Phase.RUNNING
    step_index: int = 0
    step_name: str | None = None
    target_slot: SlotName | None = None  # None: the job writes no image (e.g. sleep)
    version_number: int | None = None


def other(slot: SlotName) -> SlotName:
    return "B" if slot == "A" else "A"


@dataclass(frozen=True, slots=True, kw_only=True)
class Nvm:
    active: SlotName = "A"
    a: Slot = Slot(version=FACTORY_VERSION, complete=True, verified=True)
    b: Slot = Slot()
    journal: Journal | None = None

    @classmethod
    def factory(cls, version: str = FACTORY_VERSION) -> Nvm:
        """A device fresh from the factory: ``version`` in slot A, slot B erased."""
        return cls(a=Slot(version=version, complete=True, verified=True))

    # --- reading --------------------------------------------------------------------------

    def slot(self, name: SlotName) -> Slot:
        return self.a if name == "A" else self.b

    @property
    def active_image(self) -> Slot:
        return self.slot(self.active)

    @property
    def inactive(self) -> SlotName:
        return other(self.active)

    def summary(self) -> NvmSummary:
        image, j = self.active_image, self.journal
        return NvmSummary(
            active_slot=self.active, active_version=image.version or "",
            active_complete=image.complete, active_verified=image.verified,
            journal_job_id=j.job_id if j else None,
            journal_execution_number=j.execution_number if j else None,
            journal_document_digest=j.document_digest if j else None,
        )

    # --- transitions (each validates before it builds the new value) ---------------------

    def begin_download(self, journal: Journal) -> Nvm:
        """Journal a firmware update and erase its target slot (never the active one)."""
        if self.journal is not None:
            raise NvmError(f"journal: already holds {self.journal.job_id}")
        if journal.target_slot is None or journal.target_slot == self.active:
            raise NvmError("journal.target_slot: must be the inactive slot")
        return self._with_slot(journal.target_slot, Slot())._journaled(journal)

    def begin_job(self, journal: Journal) -> Nvm:
        """Journal a job that writes no image."""
        if self.journal is not None:
            raise NvmError(f"journal: already holds {self.journal.job_id}")
        if journal.target_slot is not None:
            raise NvmError("journal.target_slot: an image job must use begin_download")
        return self._journaled(journal)

    def set_step(self, index: int, name: str, version_number: int | None) -> Nvm:
        j = self._require_journal()
        return self._journaled(replace(j, step_index=index, step_name=name,
                                       version_number=version_number))

    def note_execution(self, execution_number: int, version_number: int | None) -> Nvm:
        """The journaled work now belongs to this execution (a device that identifies work
        by jobId alone adopts a reused jobId's new execution this way)."""
        j = self._require_journal()
        return self._journaled(replace(j, execution_number=execution_number,
                                       version_number=version_number))

    def write_partial(self, version: str) -> Nvm:
        target = self._require_target()
        return self._with_slot(target, Slot(version=version))

    def mark_complete(self) -> Nvm:
        target = self._require_target()
        slot = self.slot(target)
        if slot.version is None:
            raise NvmError(f"slot {target}: nothing written")
        return self._with_slot(target, replace(slot, complete=True))

    def verify(self) -> Nvm:
        target = self._require_target()
        slot = self.slot(target)
        if not slot.complete:
            raise NvmError(f"slot {target}: cannot verify an incomplete image")
        return self._with_slot(target, replace(slot, verified=True))

    def commit(self) -> Nvm:
        """Switch the active slot to the verified target image; journal phase DONE.

        For a job without an image only the phase changes.
        """
        j = self._require_journal()
        if j.target_slot is None:
            return self._journaled(replace(j, phase=Phase.DONE))
        if not self.slot(j.target_slot).good:
            raise NvmError(f"slot {j.target_slot}: only a verified image can be committed")
        return replace(self, active=j.target_slot, journal=replace(j, phase=Phase.DONE))

    def mark_failed(self) -> Nvm:
        return self._journaled(replace(self._require_journal(), phase=Phase.FAILED))

    def rollback(self) -> Nvm:
        """Active goes back to the last good image; the update slot is marked invalid.

        The update slot is the journal's target (the inactive slot without a journal). If no
        good image is left the active slot stays as it is: the device is then not valid,
        which is for the checker to see, not for this function to hide.
        """
        target = self.journal.target_slot if self.journal else None
        if target is None:
            target = self.inactive
        slot = self.slot(target)
        nvm = self._with_slot(target, replace(slot, complete=False, verified=False))
        if nvm.slot(other(target)).good:
            nvm = replace(nvm, active=other(target))
        return nvm

    def activate_unchecked(self) -> Nvm:
        """Boot the update slot as it is, half-written or unverified. Only a faulty device
        without a rollback path does this."""
        return replace(self, active=self._require_target())

    def clear_journal(self) -> Nvm:
        return replace(self, journal=None)

    # --- helpers ---------------------------------------------------------------------------

    def _journaled(self, journal: Journal) -> Nvm:
        return replace(self, journal=journal)

    def _with_slot(self, name: SlotName, slot: Slot) -> Nvm:
        return replace(self, a=slot) if name == "A" else replace(self, b=slot)

    def _require_journal(self) -> Journal:
        if self.journal is None:
            raise NvmError("journal: no job in progress")
        return self.journal

    def _require_target(self) -> SlotName:
        target = self._require_journal().target_slot
        if target is None:
            raise NvmError("journal.target_slot: this job writes no image")
        return target


def is_valid(nvm: Nvm, gone: set[tuple[str, int]] | frozenset[tuple[str, int]]) -> bool:
    """DESIGN.md *valid-end*: the active image is complete and verified, and the journal
    names no execution in ``gone`` (``(job_id, execution_number)`` pairs that no longer
    exist)."""
    if not nvm.active_image.good:
        return False
    j = nvm.journal
    return j is None or (j.job_id, j.execution_number) not in gone


# --- JSON -----------------------------------------------------------------------------------


def to_dict(nvm: Nvm) -> dict[str, Any]:
    j = nvm.journal
    return {
        "active": nvm.active,
        "slots": {name: _slot_dict(nvm.slot(name)) for name in SLOT_NAMES},
        "journal": None if j is None else {
            "jobId": j.job_id, "executionNumber": j.execution_number,
            "documentDigest": j.document_digest, "document": j.document,
            "phase": j.phase.value, "stepIndex": j.step_index, "stepName": j.step_name,
            "targetSlot": j.target_slot, "versionNumber": j.version_number,
        },
    }


def from_dict(obj: Any) -> Nvm:
    """Inverse of :func:`to_dict`; raises :class:`NvmError` naming the bad field."""
    root = _obj(obj, "nvm")
    slots = _obj(root.get("slots"), "slots")
    raw_journal = root.get("journal")
    journal = None
    if raw_journal is not None:
        jo = _obj(raw_journal, "journal")
        try:
            phase = Phase(str(jo.get("phase")))
        except ValueError:
            raise NvmError("journal.phase: expected running|done|failed") from None
        target = jo.get("targetSlot")
        if target is not None:
            target = _slot_name(target, "journal.targetSlot")
        journal = Journal(
            job_id=_typed(jo.get("jobId"), str, "journal.jobId"),
            execution_number=_typed(jo.get("executionNumber"), int, "journal.executionNumber"),
            document_digest=_typed(jo.get("documentDigest"), str, "journal.documentDigest"),
            document=_obj(jo.get("document"), "journal.document"),
            phase=phase,
            step_index=_typed(jo.get("stepIndex", 0), int, "journal.stepIndex"),
            step_name=_optional(jo.get("stepName"), str, "journal.stepName"),
            target_slot=target,
            version_number=_optional(jo.get("versionNumber"), int, "journal.versionNumber"),
        )
    return Nvm(
        active=_slot_name(root.get("active"), "active"),
        a=_slot_from(slots.get("A"), "slots.A"),
        b=_slot_from(slots.get("B"), "slots.B"),
        journal=journal,
    )


def dumps(nvm: Nvm) -> str:
    return json.dumps(to_dict(nvm), sort_keys=True, indent=1)


def loads(text: str | bytes) -> Nvm:
    try:
        obj = json.loads(text)
    except ValueError as e:
        raise NvmError(f"nvm: not valid JSON: {e}") from None
    return from_dict(obj)


def load(path: Path) -> Nvm:
    """Read a device's NVM file (FileNotFoundError if it has none yet)."""
    return loads(Path(path).read_bytes())


def save(path: Path, nvm: Nvm) -> None:
    """Write atomically: a crash leaves either the old or the new file, never half of one."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", encoding="utf-8") as f:
        f.write(dumps(nvm))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _slot_dict(slot: Slot) -> dict[str, Any]:
    return {"version": slot.version, "complete": slot.complete, "verified": slot.verified}


def _slot_from(obj: Any, where: str) -> Slot:
    o = _obj(obj, where)
    return Slot(version=_optional(o.get("version"), str, f"{where}.version"),
                complete=_typed(o.get("complete"), bool, f"{where}.complete"),
                verified=_typed(o.get("verified"), bool, f"{where}.verified"))


def _obj(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise NvmError(f"{where}: expected an object")
    return value


def _slot_name(value: Any, where: str) -> SlotName:
    if value not in SLOT_NAMES:
        raise NvmError(f"{where}: expected 'A' or 'B'")
    return cast(SlotName, value)


def _typed(value: Any, kind: type[T], where: str) -> T:
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise NvmError(f"{where}: expected {kind.__name__}")
    return value


def _optional(value: Any, kind: type[T], where: str) -> T | None:
    return None if value is None else _typed(value, kind, where)
