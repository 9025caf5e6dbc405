"""Smoke test of ``python -m bench --quick``: every phase runs and reports every figure.

Timings belong in benchmarks, not in tests: this asserts that each figure was measured
(present and positive), never how fast anything was.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bench.profiling import summarise
from bench.report import detection_budget_ms

ROOT = Path(__file__).resolve().parent.parent

EXPECTED = {
    "c_raw_qos1_msgs_per_s", "jobs_update_rt_per_s", "jobs_describe_rt_per_s",
    "jobs_update_p50_ms", "jobs_update_p99_ms", "jobs_update_light_p50_ms",
    "jobs_service_cpu_us_per_request", "jobs_loadgen_cpu_us_per_rt",
    "jobs_broker_cpu_us_per_rt", "fleet_connect_subscribe_s", "fleet_rss_kb_per_device",
    "fleet_idle_cpu_pct", "fleet_executions_per_s", "fleet_service_cpu_us_per_exec",
    "fleet_devices_cpu_us_per_exec",
    *(f"detect_{v}_{p}_ms" for v in ("paced", "burst") for p in ("p50", "p95", "p99", "max")),
    *(f"drill_40_{k}" for k in ("wall_s", "notice_cases", "mid_step_pct", "detect_p99_ms",
                                "round_trip_p99_ms", "cpu_drill_s", "cpu_worker-0_s",
                                "cpu_worker-1_s", "cpu_broker_s")),
}


@pytest.mark.slow
@pytest.mark.broker
def test_quick_bench_reports_every_figure(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    proc = subprocess.run([sys.executable, "-m", "bench", "--quick", "--out", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=90, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    doc = json.loads(out.read_text())
    figures = {f["key"]: f for f in doc["figures"]}
    assert set(figures) >= EXPECTED, sorted(EXPECTED - set(figures))
    for key, f in figures.items():
        assert f["value"] > 0, key
        if f["reference"] is not None:
            assert f["reference"] >= 0, key
        if f["ratio"] is not None:
            assert f["ratio"] > 0, key
    assert doc["params"]["seed"] == 1
    for variant in ("paced", "burst"):
        lat = doc["latency"][variant]
        assert lat["lost_access"] == lat["devices"] == lat["deleted_events"]
    assert doc["fleet"]["execution"]["counts"] == {"SUCCEEDED": doc["params"]["devices"]}
    assert doc["jobs"]["update"]["rejected"] == 0
    (drill,) = doc["drills"]
    assert (drill["exit"], drill["status"], drill["events_missing"]) == (0, "PASS", 0), drill
    assert "figure" in proc.stdout  # the table header


def test_detection_budget_follows_perf_targets() -> None:
    assert detection_budget_ms(100) == 20.0
    assert detection_budget_ms(1000) == 20.0
    assert detection_budget_ms(10_000) == 100.0
    assert detection_budget_ms(5500) == pytest.approx(60.0)


def test_profile_summary_counts_own_and_inclusive_samples() -> None:
    root = str(ROOT)
    collapsed = "\n".join([
        f"main ({root}/fleet/service/shell.py:10);handle ({root}/fleet/service/dataplane.py:20);"
        f"dumps (/usr/lib/python3.11/json/__init__.py:231) 3",
        f"main ({root}/fleet/service/shell.py:10);handle ({root}/fleet/service/dataplane.py:22) 1",
    ])
    summary = summarise(collapsed)
    assert summary["samples"] == 4
    assert summary["own"][0] == ["json/__init__.py:dumps", 75.0]
    assert ["fleet/service/dataplane.py:handle", 100.0] in summary["inclusive"]
