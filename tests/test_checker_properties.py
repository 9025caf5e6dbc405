"""Properties of the checker: percentiles, and budgets honoured for any latency within them."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from fleet.checker import Budgets, check, document_digest
from fleet.checker.metrics import distribution, percentile
from tests.test_checker import THINGS, drill

samples = st.lists(st.floats(min_value=0, max_value=1e6, allow_nan=False), min_size=1,
                   max_size=200)


@given(samples, st.floats(min_value=0, max_value=100), st.floats(min_value=0, max_value=100))
def test_percentiles_are_monotone_and_observed(values: list[float], p: float, q: float) -> None:
    lo, hi = sorted((p, q))
    a, b = percentile(values, lo), percentile(values, hi)
    assert a is not None
    assert b is not None
    assert a <= b
    assert a in values
    assert b in values
    assert percentile(values, 100) == max(values)


@given(samples)
def test_distribution_is_ordered(values: list[float]) -> None:
    d = distribution(values)
    assert d.count == len(values)
    assert d.p50_ms is not None
    assert d.p95_ms is not None
    assert d.p99_ms is not None
    assert d.p50_ms <= d.p95_ms <= d.p99_ms <= (d.max_ms or 0.0)


def test_percentile_of_nothing_is_none() -> None:
    assert percentile([], 50) is None
    assert distribution([]).count == 0


latency = st.floats(min_value=0.0, max_value=4.9)
recovery = st.floats(min_value=0.06, max_value=9.9)


@settings(max_examples=40, deadline=None)
@given(st.fixed_dictionaries({t: latency for t in THINGS}),
       st.fixed_dictionaries({t: recovery for t in THINGS}))
def test_latencies_within_budget_always_pass(notice: dict[str, float],
                                             recover: dict[str, float]) -> None:
    verdict = check(drill(notice=notice, recovery=recover), Budgets())
    assert verdict.passed, [v.message for r in verdict.results for v in r.violations]
    assert verdict.metrics.detection_latency.count == 3
    assert verdict.metrics.detection_latency.max_ms is not None
    assert verdict.metrics.detection_latency.max_ms <= 4900.0 + 0.01  # float epoch times


@settings(max_examples=30, deadline=None)
@given(st.sampled_from(THINGS), st.floats(min_value=5.01, max_value=9.0))
def test_a_late_notice_always_fails_and_names_the_device(thing: str, late: float) -> None:
    verdict = check(drill(notice={thing: late}), Budgets())
    names = {v.thing_name for v in verdict.result("notice").violations}
    assert names == {thing}


@given(st.dictionaries(st.text(min_size=1, max_size=8),
                       st.one_of(st.integers(), st.text(max_size=8), st.booleans()),
                       max_size=6))
def test_digest_ignores_formatting(doc: dict[str, object]) -> None:
    import json

    pretty = json.dumps(doc, indent=3)
    assert document_digest(pretty) == document_digest(doc)
    assert document_digest(doc).startswith("sha256:")
