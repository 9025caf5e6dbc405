"""Verdict renderers: terminal table, JSON, JUnit XML; :func:`write_reports` is the only
function of the checker that touches the file system."""

from __future__ import annotations

import dataclasses
import json
import re
import xml.etree.ElementTree as ET
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from fleet.checker.metrics import MESSAGE_KINDS
from fleet.checker.model import (
    Budgets,
    Distribution,
    InvariantResult,
    Status,
    Verdict,
    Violation,
)
from fleet.checker.timeline import Timeline

#: How many violations a JUnit failure or the terminal lists per invariant.
MAX_LISTED = 50
#: Beyond this many external devices, the terminal shows only those with a FAIL or
#: INCONCLUSIVE row.
MAX_EXTERNAL_ROWS = 20


def _when(t: float | None) -> str:
    if t is None:
        return "-"
    return datetime.fromtimestamp(t, UTC).isoformat(timespec="milliseconds").replace(
        "+00:00", "Z")


def _dist(d: Distribution) -> str:
    if not d.count:
        return "n=0"
    return (f"n={d.count} p50={d.p50_ms:.1f}ms p95={d.p95_ms:.1f}ms p99={d.p99_ms:.1f}ms "
            f"max={d.max_ms:.1f}ms")


def _by_behaviour(r: InvariantResult) -> str:
    return " ".join(f"{k}={v}" for k, v in r.cases_by_behaviour.items())


def verdict_line(verdict: Verdict) -> str:
    """``PASS``, ``FAIL (a, b)`` or ``INCONCLUSIVE (notice)``."""
    if verdict.status is Status.FAIL:
        return "FAIL (" + ", ".join(verdict.failed) + ")"
    if verdict.status is Status.INCONCLUSIVE:
        return "INCONCLUSIVE (" + ", ".join(verdict.inconclusive) + ")"
    return "PASS"


def terminal(verdict: Verdict) -> str:
    """A plain-text verdict: one row per invariant (its status, the cases it checked, per
    behaviour), its first violations or why it is inconclusive, then metrics."""
    rows = [("invariant", "result", "checked", "by behaviour", "violations", "first: thing",
             "job", "time")]
    for r in verdict.results:
        first = r.violations[0] if r.violations else None
        rows.append((r.name, r.status.value, str(r.checked), _by_behaviour(r),
                     str(len(r.violations)),
                     (first.thing_name or "-") if first else "", (first.job_id or "-") if first
                     else "", _when(first.time) if first else ""))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
             for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    for r in verdict.results:
        for v in r.violations[:3]:
            lines.append(f"  {r.name}: {v.message}")
        if len(r.violations) > 3:
            lines.append(f"  {r.name}: ... and {len(r.violations) - 3} more")
        if r.status is Status.INCONCLUSIVE:
            lines.extend(f"  {r.name}: {n}" for n in r.notes if n.startswith("INCONCLUSIVE"))
        lines.extend(f"  {r.name}: {n}" for n in r.notes if n.startswith("not checked"))
    lines += _external_table(verdict)
    lines.append("")
    lines += [(label.ljust(19) if label != "mid-step at removal" else label) + " " + value
              for label, value in figure_rows(verdict)]
    lines += ["", "VERDICT: " + verdict_line(verdict)]
    return "\n".join(lines) + "\n"


def figure_rows(verdict: Verdict) -> list[tuple[str, str]]:
    """The drill's figures as (label, text): the terminal summary and the report page both
    show these."""
    m = verdict.metrics
    codes = ", ".join(f"{k}={v}" for k, v in m.rejections_by_code.items()) or "none"
    rows = [
        ("mid-step at removal", f"{m.mid_step} of {m.targeted} targeted devices"
                                f" ({m.mid_step / m.targeted:.0%})" if m.targeted else
                                "0 (no device targeted)"),
        ("detection latency", _dist(m.detection_latency)),
        ("recovery time", _dist(m.recovery_time)),
        ("request round trip", _dist(m.round_trip)),
        ("executions/s", f"{m.executions_per_second:.2f} ({m.terminal_updates} terminal "
                         f"updates in {m.duration_seconds:.1f}s)"),
        ("executions", f"{sum(m.executions.values())} created: " + ", ".join(
            f"{k} {v}" for k, v in m.executions.items() if v or k == "unaccounted")),
        ("requests", f"{m.requests}, replies {m.replies} (accepted {m.accepted}), "
                     f"rejections: {codes}"),
    ]
    if m.messages:
        rows.append(("messages", _messages(m.messages)))
    rows.extend((f"resources {name}", f"{r['rssKiB'] / 1024:.0f} -> {r['lastRssKiB'] / 1024:.0f}"
                 f" MiB resident, {r['fds']} -> {r['lastFds']} open files "
                 f"({r['samples']} samples)") for name, r in m.resources.items())
    rows.extend(_fault_rows(m.faults))
    if m.target is not None:
        rows.append(("broker", f"the target ({m.target}): devices by certificate over mutual "
                               "TLS; the service's own view is not ours (see notes)"))
    elif m.missing_semantics is not None:
        rows.append(("broker", broker_line(m.missing_semantics) +
                     ("; devices by certificate over mutual TLS" if m.secure else "")))
    return rows


#: Faults listed one by one up to this many; beyond (a soak), by kind.
FAULT_ROWS = 12


def _fault_rows(faults: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """One row per fault and what it hit; a soak's many, by kind (its waves' jobs alike)."""
    if len(faults) <= FAULT_ROWS:
        return [(f"fault at {f['at']:.1f}s", f"{f['fault']}" + (
            f", {f['devices']} devices" if f["devices"] else "") + (
            f": {f['hit']}" if f["hit"] else "")) for f in faults]
    kinds: dict[str, list[dict[str, Any]]] = {}
    for f in faults:
        kinds.setdefault(re.sub(r"-w\d+$", "", f["fault"]), []).append(f)
    return [(f"faults: {kind}", f"x{len(fs)}, from {fs[0]['at']:.1f}s to {fs[-1]['at']:.1f}s"
             f" (last: {fs[-1]['hit'] or 'fired'})") for kind, fs in kinds.items()]


def _messages(m: Mapping[str, int]) -> str:
    """The service's messages to the simulated devices: published against received."""
    parts = []
    for kind in MESSAGE_KINDS:
        published, received = m.get(f"{kind} published", 0), m.get(f"{kind} received")
        if published or received:
            parts.append(f"{kind} {published} published" +
                         ("" if received is None else f", {received} received"))
    extra = [f"{m[k]} {k}" for k in ("dropped", "held back") if m.get(k)]
    return "; ".join(parts) + (f" ({', '.join(extra)} by faults)" if extra else "")


def _external_table(verdict: Verdict) -> list[str]:
    """Each external device's own rows: one line per device, one column per invariant
    (its status and cases), then its violations."""
    if not verdict.external:
        return []
    names = [r.name for r in verdict.results if r.name != "complete"]
    rows = [("external device", *names)]
    details: list[str] = []
    hidden = 0
    for thing in verdict.external:
        cells = {row.name: row for row in verdict.rows_for(thing)}
        if len(verdict.external) > MAX_EXTERNAL_ROWS and not any(
                row.status in (Status.FAIL, Status.INCONCLUSIVE) for row in cells.values()):
            hidden += 1
            continue
        rows.append((thing, *(f"{cells[n].status.value}({cells[n].checked})"
                              if cells[n].checked else cells[n].status.value for n in names)))
        for row in cells.values():
            details.extend(f"  {row.name}: {n}" for n in row.notes)
            details.extend(f"  {thing} {row.name}: {v.message}" for v in row.violations[:3])
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    table = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
             for row in rows]
    table.insert(1, "  ".join("-" * w for w in widths))
    if hidden:
        table.append(f"... and {hidden} more external devices with no FAIL or INCONCLUSIVE row "
                     f"(report.json and junit.xml have every row)")
    return ["", "judged from their traffic alone (image integrity cannot be seen from the "
                "wire; docs/external-devices.md):", *table, *details]


def broker_line(missing: tuple[str, ...]) -> str:
    if not missing:
        return "AWS IoT Core semantics (devicesim_aws plugin)"
    return ("plain Mosquitto, without AWS IoT Core's " + " and ".join(missing) +
            " (make setup builds the devicesim_aws plugin)")


def to_json(verdict: Verdict) -> dict[str, Any]:
    """The verdict as JSON-ready data (times as epoch seconds)."""
    return {
        "status": verdict.status.value,
        "passed": verdict.passed,
        "failed": verdict.failed,
        "inconclusive": verdict.inconclusive,
        "results": [dataclasses.asdict(r) for r in verdict.results],
        "metrics": dataclasses.asdict(verdict.metrics),
        "external": {thing: [{"name": row.name, "status": row.status.value,
                              "checked": row.checked, "notes": list(row.notes),
                              "violations": [dataclasses.asdict(v) for v in row.violations]}
                             for row in verdict.rows_for(thing)]
                     for thing in verdict.external},
    }


def _failure_text(r: InvariantResult) -> str:
    parts = []
    for v in r.violations[:MAX_LISTED]:
        parts.append(_violation_text(v))
    if len(r.violations) > MAX_LISTED:
        parts.append(f"... and {len(r.violations) - MAX_LISTED} more violations")
    return "\n\n".join(parts)


def _violation_text(v: Violation) -> str:
    head = (f"thing={v.thing_name or '-'} job_id={v.job_id or '-'} time={_when(v.time)}\n"
            f"{v.message}")
    events = [f"  {e.get('time')} {e.get('process')} {e.get('type')} {e.get('f')} "
              f"{json.dumps(e.get('value'), separators=(',', ':'))[:400]}"
              for e in v.evidence]
    return "\n".join([head, *events])


def junit_xml(verdict: Verdict, suite_name: str) -> str:
    """JUnit XML: one testcase per invariant; a failure lists the devices and the events; an
    INCONCLUSIVE invariant is an ``error`` (it could not be judged: CI must not read it as a
    pass); one with no cases (and none required) is ``skipped``. Then one testsuite per
    external device, with its own rows (:meth:`Verdict.rows_for`)."""
    failures = sum(r.status is Status.FAIL for r in verdict.results)
    errors = sum(r.status is Status.INCONCLUSIVE for r in verdict.results)
    skipped = sum(r.status is Status.NO_CASES for r in verdict.results)
    suites = ET.Element("testsuites", name=suite_name, tests=str(len(verdict.results)),
                        failures=str(failures), errors=str(errors), skipped=str(skipped))
    suite = ET.SubElement(suites, "testsuite", name=suite_name,
                          tests=str(len(verdict.results)), failures=str(failures),
                          errors=str(errors), skipped=str(skipped),
                          time=f"{verdict.metrics.duration_seconds:.3f}")
    for r in verdict.results:
        case = ET.SubElement(suite, "testcase", classname=suite_name, name=r.name)
        if r.status is Status.INCONCLUSIVE:
            why = [n for n in r.notes if n.startswith("INCONCLUSIVE")]
            error = ET.SubElement(case, "error", type="Inconclusive",
                                  message=why[0] if why else "too few cases")
            error.text = "\n".join(why)
        elif r.status is Status.NO_CASES:
            ET.SubElement(case, "skipped", message="no cases: the drill does not exercise it")
        if r.status is Status.FAIL:
            things = sorted({v.thing_name for v in r.violations if v.thing_name})
            message = f"{len(r.violations)} violation(s)"
            if things:
                message += ": " + ", ".join(things[:20]) + (" ..." if len(things) > 20 else "")
            failure = ET.SubElement(case, "failure", message=message, type="InvariantViolation")
            failure.text = _failure_text(r)
        out = ET.SubElement(case, "system-out")
        out.text = "\n".join([f"checked={r.checked} {_by_behaviour(r)}".rstrip(), *r.notes])
    for thing in verdict.external:
        rows = verdict.rows_for(thing)
        name = f"external device {thing}"
        device = ET.SubElement(suites, "testsuite", name=name, tests=str(len(rows)),
                               failures=str(sum(r.status is Status.FAIL for r in rows)),
                               errors=str(sum(r.status is Status.INCONCLUSIVE for r in rows)),
                               skipped=str(sum(r.status is Status.NO_CASES for r in rows)))
        for row in rows:
            case = ET.SubElement(device, "testcase", classname=name, name=row.name)
            if row.status is Status.FAIL:
                failure = ET.SubElement(case, "failure", type="InvariantViolation",
                                        message=f"{len(row.violations)} violation(s)")
                failure.text = "\n\n".join(_violation_text(v) for v in row.violations)
            elif row.status is Status.INCONCLUSIVE:
                ET.SubElement(case, "error", type="Inconclusive",
                              message=f"INCONCLUSIVE: {thing} was never caught mid-step: "
                                      f"nothing shows how it reacts to losing an execution")
            elif row.status is Status.NO_CASES:
                ET.SubElement(case, "skipped", message="no cases for this device")
            ET.SubElement(case, "system-out").text = "\n".join([f"checked={row.checked}",
                                                                 *row.notes])
    suites.set("tests", str(sum(int(s.get("tests", "0")) for s in suites)))
    for key in ("failures", "errors", "skipped"):
        suites.set(key, str(sum(int(s.get(key, "0")) for s in suites)))
    ET.indent(suites)
    return ET.tostring(suites, encoding="unicode", xml_declaration=True) + "\n"


def write_reports(verdict: Verdict, report_dir: Path, history_path: Path,
                  timeline: Timeline | None = None, budgets: Budgets | None = None
                  ) -> list[Path]:
    """Write ``report.json`` and ``junit.xml`` into ``report_dir`` -- and, given the
    timeline the verdict was judged on, ``report.html`` (:mod:`fleet.checker.html`); return
    their paths."""
    report_dir.mkdir(parents=True, exist_ok=True)
    data = {"history": str(history_path), **to_json(verdict)}
    json_path = report_dir / "report.json"
    json_path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    xml_path = report_dir / "junit.xml"
    xml_path.write_text(junit_xml(verdict, suite_name=f"drill {history_path.stem}"),
                        encoding="utf-8")
    paths = [json_path, xml_path]
    if timeline is not None:
        paths.append(write_html(verdict, timeline, budgets or Budgets(),
                                report_dir / "report.html", history_path))
    return paths


def write_html(verdict: Verdict, timeline: Timeline, budgets: Budgets, path: Path,
               history_path: Path) -> Path:
    """Write the report page (matplotlib is imported only here, when a page is drawn)."""
    from fleet.checker import html

    start = timeline.markers.get("start")
    name = start.value.get("drill") if start is not None else None
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(html.render(timeline, verdict, budgets, title=f"devicesim drill "
                                f"{name or history_path.stem}", history=str(history_path)),
                    encoding="utf-8")
    return path
