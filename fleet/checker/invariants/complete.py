"""The history itself: whole, settled, and from a run in which nothing crashed (complete).

Every other invariant is only as good as the history it reads: a check that passes on a
history missing the moment it was about is no pass. ``fleet drill`` and ``fleet check``
judge this the same way, from the markers the drill runner writes (:mod:`devicesim.wire.history`).
"""

from __future__ import annotations

from devicesim.wire.history import Op
from fleet.checker.invariants._common import quote, result
from fleet.checker.model import Budgets, InvariantResult, Violation
from fleet.checker.timeline import Timeline

#: Devices named in one violation's message at most.
MAX_NAMED = 20


def complete(tl: Timeline, b: Budgets) -> InvariantResult:
    """complete: (1) the history is not empty and holds the drill's ``start`` and ``end``
    markers (without ``end`` it was cut short: the run was interrupted, or the file
    truncated); (2) there is no ``timeout`` marker (the schedule did not settle in time)
    and no ``stalled`` marker (nothing happened for the drill's ``stall_seconds``);
    (3) no ``failure`` marker (a component of the run -- the MQTT pump, a device, the
    service, the recorder -- failed); (4) the drill's ``drain`` marker, if any, says it got
    every reply and device event it waited for; (5) every device's events were recorded
    without a gap: each ``seq`` from 1 to the count the device itself reported in
    ``final-state.eventCounts`` (so events lost at the end of a sequence count too; without
    counts, to the highest ``seq`` recorded, and a note says the end could not be checked),
    and the recorder's own ``recorder-stats`` report no missing event (external devices,
    judged from their traffic, have no events of their own to count). One case for the
    history, one per device with numbered events."""
    violations: list[Violation] = []
    notes: list[str] = []
    cases: list[str | None] = [None]

    def broken(message: str, *ops: Op | None, thing: str | None = None) -> None:
        when = next((op.time for op in ops if op is not None), None)
        violations.append(Violation(invariant="complete", thing_name=thing, job_id=None,
                                    time=when, message=message, evidence=quote(*ops)))

    if not tl.ops:
        broken("the history is empty: nothing was recorded, so nothing was checked")
        return result(tl, "complete", violations, cases, notes)
    start, end = tl.markers.get("start"), tl.markers.get("end")
    if start is None:
        broken("no drill start marker: the history lost its beginning, or is not a drill's")
    if end is None:
        broken("no end marker: the history is cut short (the run was interrupted or the "
               "file truncated)", tl.ops[-1])
    elif end.value.get("interrupted"):
        stop = tl.markers.get("interrupted")
        broken(f"the run was interrupted ({end.value.get('interrupted')})"
               f"{_waiting(stop) if stop is not None else ''}", stop, end)
    stalled = tl.markers.get("stalled")
    if stalled is not None:
        what = stalled.value.get("reason") or \
            f"nothing happened for {stalled.value.get('seconds')} s"
        broken(f"the drill stalled: {what}{_waiting(stalled)}; it had seen "
               f"{stalled.value.get('seen')}", stalled)
    timeout = tl.markers.get("timeout")
    if timeout is not None:
        broken(f"the schedule did not settle before the drill's timeout "
               f"({timeout.value.get('seconds')} s){_waiting(timeout)}", timeout)
    for failure in tl.failures:
        broken(f"{failure.value.get('where', 'a component')} failed: "
               f"{failure.value.get('error', '(no error recorded)')}", failure)
    drain = tl.markers.get("drain")
    if drain is not None and drain.value.get("complete") is False:
        broken(f"after waiting {drain.value.get('seconds')} s the recorder still missed "
               f"{_missing(drain)}", drain)
    gaps = _sequence_gaps(tl, notes, cases)
    if gaps is not None:
        broken(gaps, tl.final_state.op if tl.final_state is not None else None)
    stats = tl.markers.get("recorder-stats")
    missing = stats.value.get("missingDeviceEvents", 0) if stats is not None else 0
    if missing and not any("device events" in v.message for v in violations):
        broken(f"the recorder counted {missing} missing device events", stats)
    if tl.duplicate_device_events:
        notes.append(f"{tl.duplicate_device_events} device events were delivered more than "
                     f"once (QoS 1) and counted once")
    if tl.duplicate_replies:
        notes.append(f"{tl.duplicate_replies} replies were delivered more than once (QoS 1) "
                     f"and counted once")
    return result(tl, "complete", violations, cases, notes)


def _sequence_gaps(tl: Timeline, notes: list[str], cases: list[str | None]) -> str | None:
    """What is missing from the devices' event sequences (None: nothing); adds a case per
    device with numbered events."""
    final = tl.final_state
    counts = final.op.value.get("eventCounts") if final is not None else None
    reported = {str(k): v for k, v in counts.items() if isinstance(v, int)} \
        if isinstance(counts, dict) else {}
    if tl.seqs and not reported:
        notes.append("no per-device event counts in final-state: events lost at the end of a "
                     "device's sequence cannot be seen")
    lost: dict[str, int] = {}
    for thing in sorted(set(tl.seqs) | set(reported)):
        if thing in tl.external:  # judged from its traffic: its own events set aside
            continue
        seen = tl.seqs.get(thing, set())
        expected = max(reported.get(thing, 0), max(seen, default=0))
        cases.append(thing)
        gap = expected - len({s for s in seen if 1 <= s <= expected})
        if gap:
            lost[thing] = gap
    if not lost:
        return None
    named = ", ".join(f"{t} ({n})" for t, n in list(lost.items())[:MAX_NAMED])
    more = f" and {len(lost) - MAX_NAMED} more devices" if len(lost) > MAX_NAMED else ""
    return (f"{sum(lost.values())} device events were never recorded, from {len(lost)} "
            f"devices: {named}{more}")


def _waiting(op: Op) -> str:
    waiting = op.value.get("waitingFor")
    return f"; it was waiting for {waiting}" if waiting else ""


def _missing(op: Op) -> str:
    parts = []
    replies = op.value.get("unanswered")
    devices = op.value.get("devicesMissingEvents")
    if replies:
        parts.append(f"{replies} replies")
    if devices:
        parts.append(f"the events of {devices} devices")
    return " and ".join(parts) or "something it waited for"
