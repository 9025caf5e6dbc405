"""A soak's processes hold steady: no process keeps growing its memory or open files
(steady)."""

from __future__ import annotations

from fleet.checker.invariants._common import quote, result
from fleet.checker.model import Budgets, InvariantResult, Violation
from fleet.checker.timeline import Timeline

#: samples a process needs before its trend is judged
MIN_SAMPLES = 8
#: how much a process may grow between the first and the last quarter of its samples
RSS_GROWTH = 0.25
RSS_SLACK_KIB = 32 * 1024
FDS_SLACK = 32


def steady(tl: Timeline, b: Budgets) -> InvariantResult:
    """steady: in a soak (the drill's ``resources`` markers), every process sampled at least
    8 times holds steady: the mean of the last quarter of its samples exceeds the mean of
    the first quarter (the very first sample, taken before any wave had run, aside) by at
    most a quarter plus 32 MiB of resident memory, and by at most 32 open files. Each
    process is a case; a drill that sampled nothing has none."""
    series: dict[str, list[tuple[int, int]]] = {}
    for op in tl.resources:
        processes = op.value.get("processes")
        if not isinstance(processes, dict):
            continue
        for name, used in processes.items():
            if isinstance(used, dict) and isinstance(used.get("rssKiB"), int) and \
                    isinstance(used.get("fds"), int):
                series.setdefault(str(name), []).append((used["rssKiB"], used["fds"]))
    violations: list[Violation] = []
    cases: list[str | None] = []
    notes: list[str] = []
    for name, samples in sorted(series.items()):
        samples = samples[1:]
        if len(samples) < MIN_SAMPLES:
            notes.append(f"{name}: {len(samples)} samples after the first, too few to judge "
                         f"(at least {MIN_SAMPLES})")
            continue
        cases.append(None)
        quarter = len(samples) // 4
        first, last = samples[:quarter], samples[-quarter:]
        rss0, rss1 = (sum(r for r, _ in part) / quarter for part in (first, last))
        fds0, fds1 = (sum(f for _, f in part) / quarter for part in (first, last))
        notes.append(f"{name}: {rss0 / 1024:.0f} -> {rss1 / 1024:.0f} MiB resident, "
                     f"{fds0:.0f} -> {fds1:.0f} open files ({len(samples)} samples)")
        grew = []
        if rss1 > rss0 * (1 + RSS_GROWTH) + RSS_SLACK_KIB:
            grew.append(f"resident memory from {rss0 / 1024:.0f} to {rss1 / 1024:.0f} MiB")
        if fds1 > fds0 + FDS_SLACK:
            grew.append(f"open files from {fds0:.0f} to {fds1:.0f}")
        if grew:
            violations.append(Violation(
                invariant="steady", thing_name=None, job_id=None, time=tl.resources[-1].time,
                message=f"{name} kept growing: {' and '.join(grew)} (first and last quarter "
                        f"of {len(samples)} samples)",
                evidence=quote(tl.resources[1], tl.resources[-1])))
    return result(tl, "steady", violations, cases, notes)
