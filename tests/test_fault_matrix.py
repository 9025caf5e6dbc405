"""The fault matrix: every built-in drill against every faulty behaviour, as the whole fleet
(``pure``) and as a quarter of the drill's own fleet (``mixed``), plus every built-in drill
with its own correct fleet (``reference``). A faulty cell must FAIL on the invariant that
catches its fault, with the faulty devices caught mid-step (their own ``notice`` cases), and
nothing outside the fault's known consequences may fail; where a drill does not exercise a
fault at all, the cell says so and must not fail. docs/fault-matrix.md holds the table of
every cell's expectation and why.

All cells run once, concurrently, in one event loop (each drill starts its own Mosquitto),
in a module-scoped fixture; one test per cell then judges its outcome. Small fleets, one
seed (printed) and low checker budgets keep the whole matrix under a minute on 2 cores (the
budgets bound how long a stalled faulty fleet runs on: ``stall_seconds`` is never less than
the largest budget + 1 s). ``DEVICESIM_FULL_MATRIX=1`` runs the fuller matrix: 100 devices,
the drills' own budgets and timeouts, seeds 4, 5 and 6 (``DEVICESIM_MATRIX_SEEDS=1,2``
picks others in either mode).

Checker gaps the matrix found (and the checker then closed) stay as tests of their own at the
end; the false alarms it found (since fixed) are regression tests in tests/test_mutations.py.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from fleet.checker import Budgets, InvariantResult, Status, Verdict
from fleet.drill import spec
from fleet.drill.runner import RunOptions, run

FULL = os.environ.get("DEVICESIM_FULL_MATRIX") == "1"
SEEDS = tuple(int(s) for s in os.environ.get(
    "DEVICESIM_MATRIX_SEEDS", "4,5,6" if FULL else "4").split(","))
DEVICES = 100 if FULL else 16
#: drills run at once; each has its own broker, all devices share this process's event loop
CONCURRENCY = 2 if FULL else 6
#: low budgets stop a stalled faulty fleet after 4 s instead of 11 s (CI mode only)
FAULT_BUDGETS = None if FULL else Budgets(notice_seconds=2.0, recover_seconds=3.0,
                                          reply_timeout_seconds=3.0)
#: a faulty fleet that keeps recording (poll devices poll) never stalls: it ends at this
FAULT_TIMEOUT = None if FULL else 20.0
#: the faulty share of a mixed fleet
FAULT_SHARE = 0.25

pytestmark = [pytest.mark.broker, pytest.mark.slow,
              pytest.mark.timeout(4 * 3600 if FULL else 600)]

#: every built-in drill but the soak (waves of the faults the others have, for as long as
#: it is told: tests/test_drills.py runs it)
DRILLS = tuple(n for n in spec.builtin_names() if spec.load(n).duration is None)
FAULTS = ("stuck", "no-rollback", "zombie", "reuse-confused")

#: The invariant that catches each fault (docs/drills.md, "The invariants").
CATCHES = {"stuck": "notice", "no-rollback": "valid-end", "zombie": "no-zombie",
           "reuse-confused": "reuse"}
#: What else a fault may fail, and why (anything outside is a checker or emulator bug):
#: a stuck device never goes idle, so the drill stalls (``complete``, also required), it
#: ends claiming an execution the service removed (``consistent``) with its journal naming
#: it (``valid-end``, unless the execution was canceled and so still exists), the follow-up
#: queued behind it never runs (``progress``) and in jobid-reuse it never starts the reused
#: jobId offered to it (``reuse``); a reuse-confused device's reused execution reaches
#: SUCCEEDED only by applying the old document (``progress``) and, when it takes the new
#: execution for the one it was running, it never records losing that one (``notice``); a
#: no-rollback device fails ``recover`` too (required below). Where the service dies holding
#: a reply (storm), a stuck device never asks again, nor records losing the execution the
#: reply was about (``answered``).
ALSO = {"stuck": {"complete", "consistent", "valid-end", "progress", "reuse", "answered"},
        "no-rollback": set(), "zombie": set(), "reuse-confused": {"progress", "notice"}}
#: What a fault must fail besides: a stalled drill (stuck) is incomplete; a no-rollback
#: device says ``recovered``/``idle`` on the half-written image it booted.
REQUIRED_ALSO = {"stuck": {"complete"}, "no-rollback": {"recover"}}

#: Cells whose drill does not exercise the fault: nothing may fail (the invariant that would
#: catch it has nothing to catch), the faulty devices must still be caught mid-step.
NOT_EXERCISED = {
    ("deletion-limit", "no-rollback"):
        "its jobs are `sleep` documents: no image is written, so there is nothing to roll back",
    **{(drill, "reuse-confused"): "it reuses no jobId: `reuse` has no case (NO-CASES), and "
       "otherwise a reuse-confused device behaves as the reference" for drill in DRILLS
       if drill != "jobid-reuse"},
}
#: Cells where another invariant catches the fault: in jobid-reuse the reused jobId's new
#: firmware overwrites the half-written image a no-rollback device booted, so its end is
#: valid; ``recover`` catches it, by the ``recovered`` event it sent on that image. The same
#: in ota-cancel, whose last update (ota-3) overwrites it.
CATCHES_IN = {("jobid-reuse", "no-rollback"): "recover", ("ota-cancel", "no-rollback"): "recover"}


@dataclass(frozen=True, slots=True)
class Cell:
    drill: str
    behaviour: str  # "reference" (the drill's own fleet) or a faulty behaviour
    fleet: str  # "reference", "pure" (the fault alone) or "mixed" (a quarter faulty)
    seed: int

    def __str__(self) -> str:
        return f"{self.drill}-{self.behaviour}-{self.fleet}-seed{self.seed}"


@dataclass(frozen=True, slots=True)
class Outcome:
    verdict: Verdict | None
    history: Path | None
    seconds: float
    error: BaseException | None = None

    @property
    def failed(self) -> set[str]:
        """The invariants that failed."""
        assert self.verdict is not None
        return set(self.verdict.failed)

    @property
    def status(self) -> Status:
        assert self.verdict is not None
        return self.verdict.status

    def result(self, name: str) -> InvariantResult:
        assert self.verdict is not None
        return self.verdict.result(name)

    def explain(self) -> str:
        """Every invariant's status and first violations, and the history to re-check."""
        if self.verdict is None:
            return f"the run raised {self.error!r}"
        lines = [f"verdict {self.verdict.status} ({self.seconds:.1f} s); "
                 f"re-check: fleet check {self.history}"]
        for r in self.verdict.results:
            lines.append(f"  {r.name}: {r.status} checked={r.checked} "
                         f"by behaviour={dict(r.cases_by_behaviour)}")
            lines.extend(f"    {v.message}" for v in r.violations[:2])
            lines.extend(f"    note: {n}" for n in r.notes[:2])
        return "\n".join(lines)


#: in CI mode, the drills whose reuse-confused cells run: the one that exercises it, and one
#: control (elsewhere a reuse-confused device is the reference device: those cells would
#: only repeat the reference row; the full matrix runs them all)
REUSE_CONFUSED_IN_CI = ("jobid-reuse", "force-delete")


def cells() -> Iterator[Cell]:
    for seed in SEEDS:
        for drill in DRILLS:
            yield Cell(drill, "reference", "reference", seed)
            for fault in FAULTS:
                if fault == "reuse-confused" and not FULL and \
                        drill not in REUSE_CONFUSED_IN_CI:
                    continue
                yield Cell(drill, fault, "pure", seed)
                yield Cell(drill, fault, "mixed", seed)


def own_fleet(drill: spec.Drill) -> dict[str, float]:
    return dict(drill.mix) if drill.mix else {drill.behaviour: 1.0}


def drill_of(cell: Cell) -> spec.Drill:
    base = spec.load(cell.drill)
    changes: dict[str, Any] = {"devices": DEVICES, "seed": cell.seed}
    if cell.fleet == "reference":
        return dataclasses.replace(base, **changes)
    if cell.fleet == "pure":
        changes |= {"behaviour": cell.behaviour, "mix": {}}
    else:
        own = own_fleet(base)
        total = sum(own.values())
        mix = {name: (1 - FAULT_SHARE) * weight / total for name, weight in own.items()}
        changes |= {"behaviour": cell.behaviour, "mix": {**mix, cell.behaviour: FAULT_SHARE}}
    if FAULT_BUDGETS is not None:
        b = FAULT_BUDGETS
        changes |= {"budgets": b, "stall_seconds": 1.0 + max(
            b.notice_seconds, b.recover_seconds, b.reply_timeout_seconds)}
    if FAULT_TIMEOUT is not None:
        changes["timeout"] = FAULT_TIMEOUT
    return dataclasses.replace(base, **changes)


async def run_cell(cell: Cell, gate: asyncio.Semaphore, root: Path) -> Outcome:
    async with gate:
        began = time.monotonic()
        drill = drill_of(cell)
        try:
            result = await run(drill, RunOptions(report_dir=root / str(cell)))
        except Exception as e:  # noqa: BLE001 - reported by the cell's own test
            return Outcome(None, None, time.monotonic() - began, error=e)
        return Outcome(result.verdict, result.history_path, time.monotonic() - began)


async def run_matrix(todo: list[Cell], root: Path) -> dict[Cell, Outcome]:
    # every run's broker start/stop, autosave wait and boto3 call goes through to_thread:
    # the default pool (cores + 4 threads) would make concurrent drills wait for each other
    loop = asyncio.get_running_loop()
    loop.set_default_executor(concurrent.futures.ThreadPoolExecutor(max_workers=64))
    gate = asyncio.Semaphore(CONCURRENCY)
    # the longest cells (stalled stuck fleets) first, so that they do not end the run alone
    order = sorted(todo, key=lambda c: c.behaviour != "stuck")
    outcomes = await asyncio.gather(*(run_cell(c, gate, root) for c in order))
    return dict(zip(order, outcomes, strict=True))


def table(outcomes: dict[Cell, Outcome], seed: int) -> str:
    """The matrix as a markdown table: verdict and failed invariants per cell."""
    head = ["drill", "reference", *(f"{f} {k}" for f in FAULTS for k in ("pure", "mixed"))]
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for drill in DRILLS:
        row = [drill]
        for behaviour, fleet in [("reference", "reference"),
                                 *((f, k) for f in FAULTS for k in ("pure", "mixed"))]:
            o = outcomes.get(Cell(drill, behaviour, fleet, seed))
            if o is None:
                row.append("(full matrix only)")
                continue
            if o.verdict is None:
                row.append("ERROR")
                continue
            failed = f" ({', '.join(sorted(o.failed))})" if o.failed else ""
            row.append(f"{o.status}{failed}")
        rows.append("| " + " | ".join(row) + " |")
    return "\n".join(rows)


@pytest.fixture(scope="module")
def matrix(tmp_path_factory: pytest.TempPathFactory) -> dict[Cell, Outcome]:
    todo = list(cells())
    print(f"fault matrix: seeds={SEEDS} devices={DEVICES} cells={len(todo)} "
          f"concurrency={CONCURRENCY} fault budgets={FAULT_BUDGETS} full={FULL}")
    began = time.monotonic()
    outcomes = asyncio.run(run_matrix(todo, tmp_path_factory.mktemp("matrix")))
    print(f"fault matrix: {len(todo)} drills in {time.monotonic() - began:.1f} s wall")
    for seed in SEEDS:
        print(f"seed {seed}:\n{table(outcomes, seed)}")
    return outcomes


def caught(outcome: Outcome, behaviour: str) -> int:
    """How many of ``behaviour``'s devices were caught holding a removed execution."""
    return outcome.result("notice").cases_by_behaviour.get(behaviour, 0)


@pytest.mark.parametrize("cell", [pytest.param(c, id=str(c)) for c in cells()])
def test_cell(cell: Cell, matrix: dict[Cell, Outcome]) -> None:
    outcome = matrix[cell]
    print(f"{cell}: seed={cell.seed} devices={DEVICES}\n{outcome.explain()}")
    assert outcome.verdict is not None, outcome.explain()
    if cell.fleet == "reference":
        expect_pass(cell, outcome)
    elif (cell.drill, cell.behaviour) in NOT_EXERCISED:
        expect_not_exercised(cell, outcome)
    else:
        expect_caught(cell, outcome)


def expect_pass(cell: Cell, outcome: Outcome) -> None:
    """A correct fleet passes, with every behaviour in it caught mid-step."""
    assert outcome.verdict is not None
    assert outcome.status is Status.PASS, outcome.explain()
    assert outcome.result("notice").checked > 0, outcome.explain()
    for behaviour in own_fleet(spec.load(cell.drill)):
        assert caught(outcome, behaviour) > 0, (behaviour, outcome.explain())


def expect_caught(cell: Cell, outcome: Outcome) -> None:
    """The faulty devices were caught mid-step and the fault's invariant failed; whatever
    else failed is one of the fault's known consequences."""
    assert outcome.verdict is not None
    fault = cell.behaviour
    assert caught(outcome, fault) > 0, outcome.explain()
    assert outcome.status is Status.FAIL, outcome.explain()
    catches = CATCHES_IN.get((cell.drill, fault), CATCHES[fault])
    required = {catches, *REQUIRED_ALSO.get(fault, set())}
    assert required <= outcome.failed, outcome.explain()
    assert outcome.failed <= required | {CATCHES[fault]} | ALSO[fault], outcome.explain()


def expect_not_exercised(cell: Cell, outcome: Outcome) -> None:
    """The drill never gives the fault a chance to show: the faulty devices were caught
    mid-step and behaved; nothing fails. PASS, or INCONCLUSIVE only because some behaviour
    of the fleet had no notice case (a 16-device `mixed` drill with five behaviours)."""
    assert outcome.verdict is not None
    fault = cell.behaviour
    print(f"{fault} is not exercised by {cell.drill}: {NOT_EXERCISED[(cell.drill, fault)]}")
    assert caught(outcome, fault) > 0, outcome.explain()
    assert outcome.failed == set(), outcome.explain()
    if fault == "reuse-confused":
        assert outcome.result("reuse").status is Status.NO_CASES, outcome.explain()
    if outcome.status is not Status.PASS:
        assert outcome.status is Status.INCONCLUSIVE, outcome.explain()
        assert outcome.verdict.inconclusive == ["notice"], outcome.explain()
        assert any(n.startswith("INCONCLUSIVE for ") for n in outcome.result("notice").notes)


# --- checker gaps the matrix found, closed since ------------------------------------------


def test_recover_judges_devices_settled_on_a_half_written_image(
        matrix: dict[Cell, Outcome]) -> None:
    """force-delete ends a moment after its last device went idle, long before
    ``recover_seconds`` after the last ``lost_access``: the no-rollback devices, idle on a
    half-written image, are judged all the same (they were not, at first)."""
    outcome = matrix[Cell("force-delete", "no-rollback", "pure", SEEDS[0])]
    print(outcome.explain())
    assert caught(outcome, "no-rollback") > 0, outcome.explain()
    assert "recover" in outcome.failed, outcome.explain()


def test_valid_end_tells_a_journal_of_a_deleted_incarnation(
        matrix: dict[Cell, Outcome]) -> None:
    """A stuck device's journal names ota#1 of the deleted incarnation; the reused jobId has
    an ota#1 too, of another document (valid-end took one for the other, at first)."""
    outcome = matrix[Cell("jobid-reuse", "stuck", "pure", SEEDS[0])]
    print(outcome.explain())
    assert "valid-end" in outcome.failed, outcome.explain()
