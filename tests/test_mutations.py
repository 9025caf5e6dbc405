"""Mutations of real, recorded drill histories: the checker's verdict on each.

Two good histories recorded from real drills (10 reference devices each, default budgets)
are stored in tests/histories/ so that these tests are fast and deterministic::

    fleet drill force-delete --devices 10 --seed 4 --report-dir out/fd
    cp out/fd/history.jsonl tests/histories/force-delete-10.jsonl
    fleet drill broker-restart --devices 10 --seed 4 --report-dir out/br
    cp out/br/history.jsonl tests/histories/broker-restart-10.jsonl

(Recorded again, they differ in their times and tokens, not in what is checked here: every
choice below is made by a seeded ``random.Random`` among the operations that qualify.) Both
PASS; each mutation then changes what the recorder saw -- an event lost, delivered twice,
late or out of order, a reply lost or contradicted, the file cut short -- and the test asserts
the verdict. docs/fault-matrix.md has the table.

Two more stored histories are real drills of the fault matrix (tests/test_fault_matrix.py,
16 devices, seed 4, budgets 2/3/3 s, recorded by the broker-side recorder of the time) on
which the checker once raised a false alarm (since fixed); they are kept at the end of this
file as regression tests.
"""

from __future__ import annotations

import bisect
import dataclasses
import functools
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from devicesim.wire.history import Op, OpType, read
from fleet.checker import Budgets, Status, Verdict, check

HISTORIES = Path(__file__).parent / "histories"
RECORDED = ("force-delete-10", "broker-restart-10")
SEED = 20261130
#: the stored histories were recorded with the drills' default budgets
BUDGETS = Budgets()


@functools.cache
def recorded(name: str) -> tuple[Op, ...]:
    return tuple(read(HISTORIES / f"{name}.jsonl"))


def judge(ops: list[Op], budgets: Budgets = BUDGETS) -> Verdict:
    return check(ops, budgets)


def summary(v: Verdict) -> list[tuple[str, str, int, dict[str, int], list[str]]]:
    """Every invariant's status, cases and first violations (for assertion messages)."""
    return [(r.name, r.status.value, r.checked, dict(r.cases_by_behaviour),
             [x.message for x in r.violations[:2]]) for r in v.results]


def cases(v: Verdict) -> list[tuple[str, Status, int, dict[str, int]]]:
    return [(r.name, r.status, r.checked, dict(r.cases_by_behaviour)) for r in v.results]


# --- picking and moving operations ----------------------------------------------------------


def is_event(op: Op) -> bool:
    return op.f.startswith("device:")


def is_reply(op: Op) -> bool:
    return op.type in (OpType.OK, OpType.FAIL) and op.process.startswith("dev-")


def seq(op: Op) -> int:
    value = op.value["seq"]
    assert isinstance(value, int)
    return value


def followed(ops: list[Op]) -> list[int]:
    """Indices of device events that are not their device's last."""
    last = {op.process: i for i, op in enumerate(ops) if is_event(op)}
    return [i for i, op in enumerate(ops) if is_event(op) and last[op.process] != i]


def insert(ops: list[Op], op: Op) -> list[Op]:
    """``op`` added where its time puts it (after the operations of the same time)."""
    out = list(ops)
    out.insert(bisect.bisect_right([o.time for o in ops], op.time), op)
    return out


def unrecorded(ops: list[Op], index: int) -> list[Op]:
    """The history as if the device had never emitted event ``index``: its later events
    numbered one less and its count in ``final-state.eventCounts`` too (no gap)."""
    gone = ops[index]
    out: list[Op] = []
    for i, op in enumerate(ops):
        if i == index:
            continue
        if is_event(op) and op.process == gone.process and seq(op) > seq(gone):
            op = dataclasses.replace(op, value={**op.value, "seq": seq(op) - 1})
        elif op.f == "final-state":
            counts = dict(op.value["eventCounts"])
            counts[gone.process] -= 1
            op = dataclasses.replace(op, value={**op.value, "eventCounts": counts})
        out.append(op)
    return out


def outage_free(ops: list[Op], reply: Op) -> bool:
    """No broker outage meets the reply window of the request ``reply`` answers (a request
    there may be lost, or redelivered, with the broker: answered excuses some of that)."""
    request = next(o for o in ops if o.type is OpType.INVOKE and o.process == reply.process
                   and o.value.get("clientToken") == reply.value.get("clientToken"))
    return not any(o.f == "broker-outage" and o.value["start"] <= request.time
                   + BUDGETS.reply_timeout_seconds and request.time <= o.value["end"]
                   for o in ops)


# --- mutations ------------------------------------------------------------------------------

#: A mutation: the mutated history, and a text the failing invariant's violation must show
#: (None: no such text).
Mutated = tuple[list[Op], str | None]


def drop_event(ops: list[Op], rng: random.Random) -> Mutated:
    i = rng.choice(followed(ops))
    return ops[:i] + ops[i + 1:], f"{ops[i].process} (1)"


def drop_tail(ops: list[Op], rng: random.Random) -> Mutated:
    thing = rng.choice(sorted({op.process for op in ops if is_event(op)}))
    tail = [i for i, op in enumerate(ops) if is_event(op) and op.process == thing][-2:]
    return [op for i, op in enumerate(ops) if i not in tail], f"{thing} (2)"


def drop_tail_without_counts(ops: list[Op], rng: random.Random) -> Mutated:
    cut, _ = drop_tail(ops, rng)
    return [dataclasses.replace(op, value={k: v for k, v in op.value.items()
                                           if k != "eventCounts"})
            if op.f == "final-state" else op for op in cut], None


def duplicate_event(ops: list[Op], rng: random.Random) -> Mutated:
    op = ops[rng.choice(followed(ops))]
    return insert(ops, dataclasses.replace(op, time=op.time + 0.5)), None


def duplicate_reply(ops: list[Op], rng: random.Random) -> Mutated:
    op = rng.choice([op for op in ops if is_reply(op)])
    return insert(ops, dataclasses.replace(op, time=op.time + 0.5)), None


def reorder_events(ops: list[Op], rng: random.Random) -> Mutated:
    """A device event and the device's next one reach the recorder the other way round."""
    i = rng.choice(followed(ops))
    j = next(j for j in range(i + 1, len(ops)) if is_event(ops[j])
             and ops[j].process == ops[i].process)
    out = list(ops)
    out[i], out[j] = (dataclasses.replace(ops[j], time=ops[i].time),
                      dataclasses.replace(ops[i], time=ops[j].time))
    return out, None


def reorder_disconnected(ops: list[Op], rng: random.Random) -> Mutated:
    """A device's ``disconnected`` (queued while it was offline) arrives just after the
    ``connected`` that follows it."""
    i = rng.choice([i for i, op in enumerate(ops) if op.f == "device:disconnected"])
    j = next(j for j in range(i + 1, len(ops)) if ops[j].f == "device:connected"
             and ops[j].process == ops[i].process)
    late = dataclasses.replace(ops[i], time=ops[j].time + 0.001)
    return insert(ops[:i] + ops[i + 1:], late), None


def delay_event(ops: list[Op], rng: random.Random) -> Mutated:
    i = rng.choice(followed(ops))
    late = dataclasses.replace(ops[i], time=ops[i].time + 1.5)
    return insert(ops[:i] + ops[i + 1:], late), None


def drop_reply(ops: list[Op], rng: random.Random) -> Mutated:
    i = rng.choice([i for i, op in enumerate(ops) if is_reply(op) and outage_free(ops, op)])
    return ops[:i] + ops[i + 1:], f"(clientToken {ops[i].value['clientToken']}) got no reply"


def second_different_reply(ops: list[Op], rng: random.Random) -> Mutated:
    op = rng.choice([op for op in ops if is_reply(op) and op.type is OpType.OK
                     and outage_free(ops, op)])
    payload = {**op.value["payload"], "timestamp": op.value["payload"]["timestamp"] + 1}
    other = dataclasses.replace(op, time=op.time + 0.05, value={**op.value, "payload": payload})
    return insert(ops, other), f"(clientToken {op.value['clientToken']}) got 2 replies"


def truncate(fraction: float) -> Callable[[list[Op], random.Random], Mutated]:
    def cut(ops: list[Op], rng: random.Random) -> Mutated:
        return ops[:int(len(ops) * fraction)], "no end marker"
    return cut


def without_end(ops: list[Op], rng: random.Random) -> Mutated:
    return [op for op in ops if op.f != "end"], "no end marker"


def empty(ops: list[Op], rng: random.Random) -> Mutated:
    return [], "the history is empty"


def drop_lost_access(ops: list[Op], rng: random.Random) -> Mutated:
    i = rng.choice([i for i, op in enumerate(ops) if op.f == "device:lost_access"])
    return ops[:i] + ops[i + 1:], f"{ops[i].process} (1)"


def never_lost_access(ops: list[Op], rng: random.Random) -> Mutated:
    i = rng.choice([i for i, op in enumerate(ops) if op.f == "device:lost_access"])
    return unrecorded(ops, i), f"{ops[i].process} was executing"


def drop_disconnected(ops: list[Op], rng: random.Random) -> Mutated:
    i = rng.choice([i for i, op in enumerate(ops) if op.f == "device:disconnected"])
    return ops[:i] + ops[i + 1:], f"{ops[i].process} (1)"


def never_disconnected(ops: list[Op], rng: random.Random) -> Mutated:
    i = rng.choice([i for i, op in enumerate(ops) if op.f == "device:disconnected"])
    return unrecorded(ops, i), None


# --- expectations ---------------------------------------------------------------------------

Expect = Callable[[Verdict, Verdict, str | None], None]


def fails(*invariants: str, only: bool = False) -> Expect:
    """FAIL, with these invariants among the failed (``only``: exactly these), and the
    first of them naming what the mutation changed."""
    def expect(v: Verdict, base: Verdict, shows: str | None) -> None:
        assert v.status is Status.FAIL, summary(v)
        assert set(invariants) <= set(v.failed), summary(v)
        if only:
            assert set(v.failed) == set(invariants), summary(v)
        if shows is not None:
            messages = [x.message for x in v.result(invariants[0]).violations]
            assert any(shows in m for m in messages), (shows, messages)
    return expect


def same_verdict(note: str | None = None) -> Expect:
    """The verdict of the good history: every invariant's status and cases unchanged (and
    the ``complete`` note that says what was counted once)."""
    def expect(v: Verdict, base: Verdict, shows: str | None) -> None:
        assert base.status is Status.PASS
        assert cases(v) == cases(base), summary(v)
        if note is not None:
            assert any(note in n for n in v.result("complete").notes), v.result("complete")
    return expect


def complete_blind(v: Verdict, base: Verdict, shows: str | None) -> None:
    """Without the devices' own counts, events lost at the end of a sequence cannot be
    seen: ``complete`` passes and says so."""
    assert "complete" not in v.failed, summary(v)
    assert any("events lost at the end" in n for n in v.result("complete").notes)


@dataclass(frozen=True, slots=True)
class Mutation:
    name: str
    mutate: Callable[[list[Op], random.Random], Mutated]
    expect: Expect
    histories: tuple[str, ...] = RECORDED
    #: why the checker does not give the expected verdict yet (a strict xfail)
    gap: str | None = None


MUTATIONS = [
    Mutation("drop-event", drop_event, fails("complete")),
    Mutation("drop-tail", drop_tail, fails("complete")),
    Mutation("drop-tail-without-counts", drop_tail_without_counts, complete_blind),
    Mutation("duplicate-event", duplicate_event,
             same_verdict("device events were delivered more than once")),
    Mutation("duplicate-reply", duplicate_reply,
             same_verdict("replies were delivered more than once")),
    Mutation("reorder-events", reorder_events, same_verdict()),
    Mutation("reorder-disconnected", reorder_disconnected, same_verdict(),
             histories=("broker-restart-10",)),
    Mutation("delay-event", delay_event, same_verdict()),
    Mutation("drop-reply", drop_reply, fails("answered")),
    Mutation("second-different-reply", second_different_reply, fails("answered")),
    *(Mutation(f"truncate-{int(f * 100)}", truncate(f), fails("complete"))
      for f in (0.25, 0.5, 0.9, 0.99)),
    Mutation("without-end", without_end, fails("complete", only=True)),
    Mutation("empty", empty, fails("complete")),
    Mutation("drop-lost-access", drop_lost_access, fails("complete")),
    Mutation("never-lost-access", never_lost_access, fails("notice", only=True)),
    Mutation("drop-disconnected", drop_disconnected, fails("complete", only=True),
             histories=("broker-restart-10",)),
    Mutation("never-disconnected", never_disconnected, same_verdict(),
             histories=("broker-restart-10",)),
]


def params() -> list[Any]:
    out: list[Any] = []
    for m in MUTATIONS:
        marks = [pytest.mark.xfail(strict=True, reason=m.gap)] if m.gap else []
        out.extend(pytest.param(m, h, marks=marks, id=f"{m.name}-{h}") for h in m.histories)
    return out


@pytest.mark.parametrize("name", RECORDED)
def test_recorded_history_passes_with_cases(name: str) -> None:
    verdict = judge(list(recorded(name)))
    assert verdict.status is Status.PASS, summary(verdict)
    notice = verdict.result("notice")
    assert notice.checked > 0
    assert dict(notice.cases_by_behaviour) == {"reference": notice.checked}
    assert verdict.result("complete").notes == ()


@pytest.mark.parametrize(("mutation", "name"), params())
def test_mutation(mutation: Mutation, name: str) -> None:
    print(f"mutation {mutation.name} of {name}: seed={SEED}")
    ops = list(recorded(name))
    mutated, shows = mutation.mutate(ops, random.Random(SEED))
    print(f"{len(ops)} -> {len(mutated)} operations; the verdict must show: {shows}")
    mutation.expect(judge(mutated), judge(ops), shows)


# --- false alarms the fault matrix found, on stored real histories --------------------------


def test_a_zombie_update_taken_by_the_reused_jobid_is_no_service_fault() -> None:
    # jobid-reuse, mix reference=0.75 zombie=0.25, 16 devices, seed 4: dev-0008 sends a
    # zombie update of ota#1 at +1.047 s, CreateJob ota is invoked at +1.060 s, the update
    # is accepted at +1.108 s
    ops = read(HISTORIES / "zombie-update-lands-on-reused-jobid.jsonl")
    verdict = judge(ops, Budgets(notice_seconds=2, recover_seconds=3, reply_timeout_seconds=3))
    assert "no-zombie" in verdict.failed, summary(verdict)
    assert "service" not in verdict.failed, summary(verdict)


def test_a_request_redelivered_by_a_crashed_broker_may_be_answered_twice() -> None:
    # broker-restart, no-rollback, 16 devices, seed 4; valid-end (and recover) rightly fail
    ops = read(HISTORIES / "request-redelivered-after-broker-crash.jsonl")
    verdict = judge(ops, Budgets(notice_seconds=2, recover_seconds=3, reply_timeout_seconds=3))
    assert "valid-end" in verdict.failed, summary(verdict)
    assert "answered" not in verdict.failed, summary(verdict)
