"""The report page: the data behind each chart on hand-written histories (pure), and the page
of real drills opened in a real headless Chromium (no console error, no network request,
every chart there; screenshots kept in reports/test-artifacts/)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest

from devicesim.wire import history
from devicesim.wire.history import Op, OpType
from fleet.checker import analyse, figures, timeline
from fleet.checker.report import write_reports
from fleet.drill import spec
from fleet.drill.runner import RunOptions, run
from tests.browser import browser, chromium, visit

ROOT = Path(__file__).resolve().parent.parent
HISTORIES = Path(__file__).parent / "histories"
ARTIFACTS = ROOT / "reports" / "test-artifacts"
T0 = 1_000.0


def op(t: float, process: str, f: str, type_: OpType = OpType.INFO, **value: Any) -> Op:
    return Op(time=T0 + t, process=process, type=type_, f=f, value=value)


def event(t: float, thing: str, kind: str, **value: Any) -> Op:
    return op(t, thing, f"device:{kind}", thingName=thing, kind=kind, **value)


# --- the data behind the charts ------------------------------------------------------------


def test_state_timeline_counts_each_device_by_its_last_event() -> None:
    ops = [op(0, "drill", "start", behaviours={"a": "reference", "b": "reference",
                                                "c": "reference"}),
           event(1, "a", "job_started", jobId="j"), event(1, "b", "job_started", jobId="j"),
           event(2, "a", "lost_access", jobId="j"),
           event(2, "b", "job_finished", jobId="j", status="SUCCEEDED"),
           event(2.5, "a", "rolled_back", jobId="j"), event(3, "a", "recovered", jobId="j"),
           event(3.5, "a", "idle"),
           op(1.5, "drill", "power-off", things=["c"]), op(3.2, "drill", "power-on",
                                                            things=["c"]),
           op(4, "drill", "end")]
    data = figures.state_timeline(timeline.build(ops), samples=5)
    assert data.times == (0.0, 1.0, 2.0, 3.0, 4.0)
    at = {s: data.counts[s] for s in figures.STATES if any(data.counts[s])}
    assert at == {"idle": (3, 1, 0, 0, 2), "running": (0, 2, 0, 0, 0),
                  "lost access": (0, 0, 1, 0, 0), "recovering": (0, 0, 0, 1, 0),
                  "succeeded": (0, 0, 1, 1, 1), "offline": (0, 0, 1, 1, 0)}
    # every sample accounts for every device
    assert all(sum(c[i] for c in data.counts.values()) == 3 for i in range(5))


def test_distribution_bins_cdf_and_nearest_rank_percentiles() -> None:
    seconds = [i / 1000 for i in range(1, 101)]  # 1 .. 100 ms
    h = figures.distribution(seconds, bins=10)
    assert h.n == 100
    assert h.counts == (9, 10, 10, 10, 10, 10, 10, 10, 10, 11)
    assert h.edges[0] == 0.0
    assert h.edges[-1] == pytest.approx(100.0)
    assert (h.p50, h.p95, h.p99) == pytest.approx((50.0, 95.0, 99.0))
    assert h.cdf[0] == pytest.approx((1.0, 0.01))
    assert h.cdf[-1] == pytest.approx((100.0, 1.0))
    assert figures.distribution([]).n == 0


def request(t: float, thing: str, token: str, rtt: float, status: str | None = None,
            f: str = "UpdateJobExecution") -> list[Op]:
    payload = {"clientToken": token, **({"status": status} if status else {})}
    return [op(t, thing, f, OpType.INVOKE, jobId="j", clientToken=token, payload=payload),
            op(t + rtt, thing, f, OpType.OK, jobId="j", clientToken=token,
               payload={"clientToken": token})]


def test_round_trips_and_rates_per_window() -> None:
    ops = [op(0, "drill", "start"), op(10, "drill", "end")]
    ops += request(1, "a", "1", 0.010) + request(1.5, "a", "2", 0.030, "IN_PROGRESS")
    ops += request(7, "a", "3", 0.100, "SUCCEEDED")
    tl = timeline.build(ops)
    rt = figures.round_trips_over_time(tl, windows=2)
    assert [w.time for w in rt] == [2.5, 7.5]
    assert rt[0].values["p50"] == pytest.approx(10.0)
    assert rt[0].values["p99"] == pytest.approx(30.0)
    assert rt[1].values["p50"] == pytest.approx(100.0)
    rates = figures.rates_over_time(tl, windows=2)
    assert rates[0].values["messages/s"] == pytest.approx(4 / 5)
    assert rates[1].values["messages/s"] == pytest.approx(2 / 5)
    assert [w.values["executions/s"] for w in rates] == [0.0, pytest.approx(1 / 5)]


def test_markers_and_the_sequence_of_a_violating_device() -> None:
    ops = history.read(HISTORIES / "zombie-update-lands-on-reused-jobid.jsonl")
    tl, verdict = analyse(ops)
    labels = [m.label for m in figures.markers(tl)]
    assert "DeleteJob ota --force" in labels
    assert labels.count("CreateJob ota") == 2
    assert any(m.kind == "fault" and m.label.startswith("power-off") for m in
               figures.markers(tl))
    worst = figures.worst_devices(verdict)
    assert worst
    thing, violations = worst[0]
    assert all(v.thing_name == thing for v in violations)
    arrows = figures.sequence(tl, thing, violations)
    assert 0 < len(arrows) <= 40
    assert [a.time for a in arrows] == sorted(a.time for a in arrows)
    kinds = {(a.source, a.target) for a in arrows}
    assert ("device", "jobs service") in kinds
    assert ("jobs service", "device") in kinds
    assert ("controller", "jobs service") in kinds
    # the violation's evidence (its zombie updates) is emphasised
    assert any(a.emphasis and a.label.startswith("UpdateJobExecution") for a in arrows)


# --- the page in a real browser ------------------------------------------------------------

CHECK_PAGE = """JSON.stringify({
  charts: [...document.querySelectorAll('figure.chart')].map(f => ({
    id: f.id, svg: !!f.querySelector('svg'),
    width: f.querySelector('svg') ? f.querySelector('svg').getBoundingClientRect().width : 0})),
  verdict: document.querySelector('.verdict').textContent,
  invariants: document.querySelectorAll('#verdict tr').length - 1,
  text: document.body.innerText})"""


async def page_of(name: str, tmp_path: Path, **changes: Any) -> tuple[Any, Path]:
    drill = dataclasses.replace(spec.load(name), devices=12, **changes)
    print(f"drill {drill.name} seed={drill.seed} devices={drill.devices}")
    result = await run(drill, RunOptions(report_dir=tmp_path))
    assert result.timeline is not None
    paths = write_reports(result.verdict, tmp_path, result.history_path, result.timeline,
                          drill.budgets)
    page = tmp_path / "report.html"
    assert page in paths
    return result.verdict, page


@pytest.fixture(scope="module")
def chromium_binary() -> str:
    binary = chromium()
    if binary is None:
        pytest.skip("no chromium: make setup installs Debian's chromium")
    return binary


@pytest.mark.broker
@pytest.mark.slow
@pytest.mark.parametrize(("name", "changes", "shot"), [
    ("force-delete", {}, "report-pass.png"),
    ("force-delete", {"behaviour": "zombie", "mix": {}, "timeout": 15.0}, "report-fail.png"),
])
async def test_the_page_of_a_real_drill_in_a_browser(
        name: str, changes: dict[str, Any], shot: str, tmp_path: Path,
        chromium_binary: str) -> None:
    verdict, page = await page_of(name, tmp_path, **changes)
    html = page.read_text()
    assert "<script" not in html
    assert "<link" not in html
    async with browser(chromium_binary) as ws:
        seen = await visit(ws, page.as_uri(), CHECK_PAGE, ARTIFACTS / shot)
    print(f"screenshot: {ARTIFACTS / shot}")
    data = json.loads(seen.value)
    assert seen.errors == [], seen.console
    assert [u for u in seen.requests if not u.startswith("file://")] == [], seen.requests
    ids = {c["id"] for c in data["charts"]}
    assert {"chart-states", "chart-detection", "chart-recovery", "chart-round-trip",
            "chart-rates"} <= ids
    assert all(c["svg"] and c["width"] > 200 for c in data["charts"]), data["charts"]
    assert data["invariants"] == len(verdict.results)
    assert verdict.status.value in data["verdict"]
    if verdict.failed:
        worst = figures.worst_devices(verdict)
        assert worst
        for thing, violations in worst:
            assert f"chart-sequence-{thing}" in ids
            assert violations[0].message in data["text"]
    else:
        assert "No device broke a rule" in data["text"]
    assert (ARTIFACTS / shot).stat().st_size > 10_000


def test_fleet_report_draws_any_history(tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    from fleet.cli import main

    out = tmp_path / "page.html"
    assert main(["report", str(HISTORIES / "reuse-confused.jsonl"), "-o", str(out)]) == 0
    assert "verdict FAIL" in capsys.readouterr().out
    text = out.read_text()
    assert text.startswith("<!DOCTYPE html>")
    assert text.count("<figure class=chart") >= 6
    assert "http" not in text.replace("http://www.w3.org/", "")
