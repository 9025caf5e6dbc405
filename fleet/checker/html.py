"""``report.html``: one self-contained page per drill (no network, no external script, style
or font: charts are inline SVG drawn by matplotlib, text as paths).

The page carries the verdict table and the figures of the terminal summary and
``report.json`` (:mod:`fleet.checker.report`), the drill's settings, and the charts whose
data :mod:`fleet.checker.figures` computes: the devices' states over the drill with every
controller action and fault marked, the detection-latency and recovery-time distributions
(histogram and CDF, p50 / p95 / p99 marked), request round-trip percentiles and message and
execution rates over time, and a sequence diagram of each of the worst violating devices.
Every chart is a ``<figure class="chart" id="chart-...">``.
"""

from __future__ import annotations

import html
import io
import re
from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from fleet.checker import figures  # noqa: E402
from fleet.checker.model import Budgets, Status, Verdict  # noqa: E402
from fleet.checker.report import figure_rows, verdict_line  # noqa: E402
from fleet.checker.timeline import Timeline  # noqa: E402

plt.rcParams.update({"svg.fonttype": "path", "font.size": 9, "axes.spines.top": False,
                     "axes.spines.right": False, "svg.hashsalt": "devicesim"})

#: state colours, in :data:`figures.STATES` order
COLOURS = ("#c7d3e0", "#4e79a7", "#e15759", "#f28e2b", "#edc948", "#59a14f", "#b07aa1",
           "#9c9c9c")
STATUS_CLASS = {Status.PASS: "pass", Status.FAIL: "fail", Status.INCONCLUSIVE: "inconclusive",
                Status.NO_CASES: "nocases"}
#: at most this many violating devices get a sequence diagram
WORST = 5

CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;margin:24px auto;
max-width:1100px;color:#222;padding:0 16px}
h1{font-size:22px;margin:0 0 4px} h2{font-size:17px;margin:28px 0 8px;border-bottom:1px solid
#ddd;padding-bottom:4px} h3{font-size:15px;margin:18px 0 6px}
table{border-collapse:collapse;margin:8px 0} td,th{border:1px solid #ddd;padding:3px 8px;
text-align:left;vertical-align:top} th{background:#f5f5f5}
.pass{color:#1a7f37;font-weight:600} .fail{color:#cf222e;font-weight:600}
.inconclusive{color:#9a6700;font-weight:600} .nocases{color:#777}
.verdict{font-size:20px;margin:8px 0} figure{margin:12px 0} figcaption{color:#555;font-size:13px}
.chart svg{max-width:100%;height:auto} code{background:#f5f5f5;padding:0 3px}
.note{color:#555;font-size:13px} .small{font-size:12px}
"""


def render(tl: Timeline, verdict: Verdict, budgets: Budgets, *, title: str,
           history: str | None = None) -> str:
    """The page, as one string."""
    parts = [f"<!DOCTYPE html><html lang=en><head><meta charset=utf-8>"
             f"<meta name=viewport content='width=device-width,initial-scale=1'>"
             f"<title>{_e(title)}</title><style>{CSS}</style></head><body>",
             f"<h1>{_e(title)}</h1>",
             f"<p class='verdict'>Verdict: <span class='{STATUS_CLASS[verdict.status]}'>"
             f"{_e(verdict_line(verdict))}</span></p>"]
    if history:
        parts.append(f"<p class=note>History: <code>{_e(history)}</code> — re-check with "
                     f"<code>fleet check {_e(history)}</code></p>")
    parts += [_settings(tl, budgets), _verdict_table(verdict, budgets), _external(verdict),
              _figures(verdict), _charts(tl, verdict, budgets), "</body></html>\n"]
    return "".join(parts)


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _settings(tl: Timeline, b: Budgets) -> str:
    rows = [(k, v) for k, v in figures.settings(tl).items()]
    rows += [("budgets", f"notice {b.notice_seconds} s, recover {b.recover_seconds} s, reply "
                         f"timeout {b.reply_timeout_seconds} s, in flight "
                         f"{b.in_flight_seconds} s")]
    body = "".join(f"<tr><th>{_e(k)}</th><td>{_e(_plain(v))}</td></tr>" for k, v in rows)
    return f"<h2>Drill</h2><table id=settings>{body}</table>"


def _plain(value: object) -> str:
    if isinstance(value, dict):
        return ", ".join(f"{k}={v}" for k, v in value.items())
    if isinstance(value, list):
        return ", ".join(str(v) for v in value)
    return str(value)


def _budget(name: str, b: Budgets) -> str:
    """The budget an invariant judges by (none for most)."""
    return {"notice": f"{b.notice_seconds:g} s", "recover": f"{b.recover_seconds:g} s",
            "no-zombie": f"reply timeout {b.reply_timeout_seconds:g} s",
            "consistent": f"reply timeout {b.reply_timeout_seconds:g} s",
            "answered": f"reply timeout {b.reply_timeout_seconds:g} s"}.get(name, "")


def _verdict_table(verdict: Verdict, b: Budgets) -> str:
    head = ("<tr><th>invariant</th><th>result</th><th>cases</th><th>by behaviour</th>"
            "<th>budget</th><th>violations</th><th>worst case</th></tr>")
    rows = []
    for r in verdict.results:
        first = r.violations[0].message if r.violations else ""
        notes = "".join(f"<div class=note>{_e(n)}</div>" for n in r.notes
                        if r.status is not Status.PASS or n.startswith("INCONCLUSIVE"))
        by = " ".join(f"{k}={v}" for k, v in r.cases_by_behaviour.items())
        rows.append(f"<tr id='invariant-{_e(r.name)}'><td>{_e(r.name)}</td>"
                    f"<td class={STATUS_CLASS[r.status]}>{_e(r.status.value)}</td>"
                    f"<td>{r.checked}</td><td class=small>{_e(by)}</td>"
                    f"<td class=small>{_e(_budget(r.name, b))}</td><td>{len(r.violations)}</td>"
                    f"<td class=small>{_e(first)}{notes}</td></tr>")
    return f"<h2>Invariants</h2><table id=verdict>{head}{''.join(rows)}</table>"


def _external(verdict: Verdict) -> str:
    if not verdict.external:
        return ""
    names = [r.name for r in verdict.results if r.name != "complete"]
    head = "<tr><th>external device</th>" + "".join(f"<th>{_e(n)}</th>" for n in names) + \
        "</tr>"
    rows = []
    for thing in verdict.external:
        cells = {row.name: row for row in verdict.rows_for(thing)}
        rows.append(f"<tr><td>{_e(thing)}</td>" + "".join(
            f"<td class={STATUS_CLASS[cells[n].status]}>{_e(cells[n].status.value)}"
            f"{f' ({cells[n].checked})' if cells[n].checked else ''}</td>" for n in names)
            + "</tr>")
    return ("<h2>External devices</h2><p class=note>Judged from their traffic alone: image "
            "integrity cannot be seen from the wire.</p>"
            f"<table id=external>{head}{''.join(rows)}</table>")


def _figures(verdict: Verdict) -> str:
    body = "".join(f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>"
                   for k, v in figure_rows(verdict))
    return f"<h2>Figures</h2><table id=figures>{body}</table>"


def _svg(fig: Figure) -> str:
    buf = io.StringIO()
    fig.savefig(buf, format="svg", bbox_inches="tight", metadata={"Date": None})
    plt.close(fig)
    svg = buf.getvalue()
    svg = svg[svg.index("<svg"):]  # no XML prolog or DOCTYPE inside the page
    # nor matplotlib's RDF metadata block (namespace URIs, a link to matplotlib.org)
    return re.sub(r"<metadata>.*?</metadata>\s*", "", svg, count=1, flags=re.S)


def _chart(key: str, title: str, fig: Figure, caption: str) -> str:
    return (f"<figure class=chart id='chart-{_e(key)}'><h3>{_e(title)}</h3>{_svg(fig)}"
            f"<figcaption>{_e(caption)}</figcaption></figure>")


def _charts(tl: Timeline, verdict: Verdict, b: Budgets) -> str:
    out = ["<h2>Charts</h2>", _state_chart(tl)]
    for key, title, seconds, budget in (
            ("detection", "Detection latency", figures.detection_latencies(tl, b),
             b.notice_seconds),
            ("recovery", "Recovery time", figures.recovery_times(tl, b), b.recover_seconds)):
        out.append(_distribution_chart(key, title, figures.distribution(seconds), budget))
    out += [_round_trip_chart(tl), _rates_chart(tl), _sequences(tl, verdict)]
    return "".join(out)


def _state_chart(tl: Timeline) -> str:
    data = figures.state_timeline(tl)
    fig, ax = plt.subplots(figsize=(10, 3.6))
    ax.stackplot(data.times, *(data.counts[s] for s in figures.STATES),
                 labels=figures.STATES, colors=COLOURS, linewidth=0)
    top = max((sum(c[i] for c in data.counts.values()) for i in range(len(data.times))),
              default=1)
    for i, m in enumerate(figures.markers(tl)):
        colour = "#cf222e" if m.kind == "fault" else "#333333"
        ax.axvline(m.time, color=colour, linestyle="--" if m.kind == "action" else "-",
                   linewidth=0.9)
        ax.text(m.time, top * (0.97 - 0.09 * (i % 4)), " " + m.label, fontsize=7,
                color=colour, va="top")
    ax.set_xlabel("seconds since the drill started")
    ax.set_ylabel("devices")
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8, frameon=False)
    return _chart("states", "Device states over the drill", fig,
                  "Devices in each state (from their events; external devices from their "
                  "traffic), with the controller's actions (dashed) and the drill's faults "
                  "(red).")


def _distribution_chart(key: str, title: str, h: figures.Histogram, budget: float) -> str:
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.0))
    if h.n:
        widths = [b - a for a, b in zip(h.edges, h.edges[1:], strict=False)]
        left.bar(h.edges[:-1], h.counts, width=widths, align="edge", color="#4e79a7")
        right.step([v for v, _ in h.cdf], [f for _, f in h.cdf], where="post", color="#4e79a7")
        for name, value, colour in (("p50", h.p50, "#59a14f"), ("p95", h.p95, "#f28e2b"),
                                    ("p99", h.p99, "#e15759")):
            if value is None:
                continue
            for ax in (left, right):
                ax.axvline(value, color=colour, linestyle="--", linewidth=1)
            right.text(value, 0.05 + 0.12 * ("p50", "p95", "p99").index(name),
                       f" {name} {value:.1f} ms", color=colour, fontsize=8)
    else:
        for ax in (left, right):
            ax.text(0.5, 0.5, "no cases", ha="center", va="center", transform=ax.transAxes)
    left.set_xlabel("ms")
    left.set_ylabel("cases")
    right.set_xlabel("ms")
    right.set_ylabel("fraction of cases")
    right.set_ylim(0, 1.02)
    return _chart(key, title, fig, f"{h.n} cases: histogram (left) and CDF (right); budget "
                                   f"{budget * 1000:.0f} ms.")


def _series_chart(key: str, title: str, windows: Sequence[figures.Window],
                  names: Sequence[str], ylabel: str, caption: str) -> str:
    fig, ax = plt.subplots(figsize=(10, 2.8))
    xs = [w.time for w in windows]
    for name in names:
        ys = [w.values.get(name) for w in windows]
        ax.plot(xs, [y if y is not None else float("nan") for y in ys], label=name,
                marker=".", linewidth=1)
    ax.set_xlabel("seconds since the drill started")
    ax.set_ylabel(ylabel)
    ax.legend(loc="upper right", fontsize=8, frameon=False)
    return _chart(key, title, fig, caption)


def _round_trip_chart(tl: Timeline) -> str:
    return _series_chart("round-trip", "Request round trips over time",
                         figures.round_trips_over_time(tl), ("p50", "p95", "p99"), "ms",
                         "Percentiles of the round trips of the requests sent in each window.")


def _rates_chart(tl: Timeline) -> str:
    return _series_chart("rates", "Messages and executions per second",
                         figures.rates_over_time(tl), ("messages/s", "executions/s"), "per s",
                         "MQTT messages (requests, replies, pushes) and executions (accepted "
                         "terminal updates) per second, per window.")


def _sequences(tl: Timeline, verdict: Verdict) -> str:
    worst = figures.worst_devices(verdict, WORST)
    if not worst:
        return ("<h3>Violating devices</h3><p class=note>No device broke a rule: no trail to "
                "show.</p>")
    out = [f"<h3>Violating devices (the worst {len(worst)})</h3>"]
    for thing, violations in worst:
        arrows = figures.sequence(tl, thing, violations)
        listed = "".join(f"<li>{_e(v.invariant)}: {_e(v.message)}</li>" for v in violations[:5])
        out.append(f"<ul class=small>{listed}</ul>")
        out.append(_sequence_chart(thing, arrows))
    return "".join(out)


def _sequence_chart(thing: str, arrows: Sequence[figures.Arrow]) -> str:
    x = {name: i for i, name in enumerate(figures.LIFELINES)}
    height = max(2.0, 0.28 * len(arrows) + 0.8)
    fig, ax = plt.subplots(figsize=(10, height))
    ax.set_xlim(-0.6, len(x) - 0.4)
    ax.set_ylim(len(arrows) + 0.5, -0.8)
    ax.axis("off")
    for name, i in x.items():
        ax.axvline(i, color="#bbbbbb", linewidth=1)
        ax.text(i, -0.6, thing if name == "device" else name, ha="center", fontsize=9,
                fontweight="bold")
    for row, a in enumerate(arrows):
        colour = "#cf222e" if a.emphasis else "#333333"
        ax.text(-0.58, row + 0.1, f"{a.time:.3f}s", fontsize=7, color="#777777")
        if a.source == a.target:
            ax.plot(x[a.source], row, marker="o", markersize=3, color=colour)
            ax.text(x[a.source] + 0.04, row + 0.1, a.label, fontsize=7, color=colour)
            continue
        ax.annotate("", xy=(x[a.target], row), xytext=(x[a.source], row),
                    arrowprops={"arrowstyle": "->", "color": colour, "linewidth": 0.9})
        ax.text((x[a.source] + x[a.target]) / 2, row - 0.08, a.label, ha="center",
                fontsize=7, color=colour)
    return _chart(f"sequence-{thing}", f"Trail of {thing}", fig,
                  "Time runs down; red: the violations' evidence.")
