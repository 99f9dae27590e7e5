"""Human-readable outputs of one incident-lab run: timeline charts and a Markdown report.

A run directory ``DIR`` holds ``summary.json`` (the scored metrics of all repetitions),
optionally ``provenance.json`` (machine, kernel, commit, dates, seed) and one
subdirectory per repetition, ``rep-01``, ``rep-02``, ..., each with:

* ``requests.jsonl``: one :class:`~llm_slo.lab.loadgen.RequestResult` per client request;
* ``faults.json``: a list of :class:`FaultWindow` (the injected episodes);
* ``phases.json``: a list of :class:`Phase` (baseline, fault, recovery);
* ``attributions.jsonl``: one :class:`~llm_slo.incident.IncidentAttribution` per line.

:func:`timeline_svg`, :func:`report_markdown` and :func:`results_table` are pure;
:func:`write_run_report` reads those files and writes ``timeline-rep-NN.svg``,
``timeline.svg`` and ``report.md`` next to them. The SVG is written by hand so that the
lab needs no plotting library and the output is byte-for-byte reproducible.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, TypeVar
from urllib.parse import quote
from xml.sax.saxutils import escape

import msgspec

from llm_slo.incident import FAULT_DOMAINS, IncidentAttribution
from llm_slo.lab.loadgen import RequestResult, read_jsonl

_T = TypeVar("_T")

NA = "n/a"
NO_JUDGMENT = "—"


class FaultWindow(msgspec.Struct, frozen=True, kw_only=True):
    """One injected fault episode (Unix seconds), as the lab runner writes it."""

    name: str
    domain: str
    start: float
    end: float
    params: dict[str, Any] = {}


class Phase(msgspec.Struct, frozen=True, kw_only=True):
    """One phase of a repetition (``baseline``, ``fault``, ``recovery``), Unix seconds."""

    name: str
    start: float
    end: float


# --------------------------------------------------------------------------- timeline

# Layout of the chart, in px. The top panel is TTFT, the bottom one the error rate; the
# legend may wrap onto more rows, which makes the chart taller than the nominal 420 px.
_W = 900
_LEFT, _RIGHT = 64, 16
_TOP_Y0, _TOP_Y1 = 50, 230
_BOT_Y0, _BOT_Y1 = 262, 342
_MARKER_Y = _TOP_Y1 - 9  # attribution markers sit in a lane along the TTFT panel's floor
_LEGEND_Y, _LEGEND_ROW = 396, 16
_CHAR_W = 6.2  # rough width of one 11 px sans-serif character, for legend wrapping

_P50_COLOUR, _P95_COLOUR = "#1f4e79", "#6fa8dc"
_ERROR_COLOUR = "#c0392b"
_BAND_COLOUR = "#f6c85f"
_ABSTAIN_COLOUR = "#9e9e9e"
# Indexed by position in FAULT_DOMAINS, so a domain has the same colour in every chart.
_PALETTE = ("#2a9d8f", "#e76f51", "#6a4c93", "#d62f8c", "#4caf50", "#c99a00", "#8d5524",
            "#1e88e5", "#b71c1c", "#00acc1")

_XML_INVALID = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f]")


def _esc(text: str) -> str:
    """Text made safe for XML content and double-quoted attributes. Control characters
    are dropped because no escape makes them legal in XML 1.0."""
    return escape(_XML_INVALID.sub("", text), {'"': "&quot;"})


def _unix_seconds(rfc3339: str) -> float:
    """An RFC 3339 timestamp as Unix seconds; a timestamp without offset is UTC."""
    dt = datetime.fromisoformat(rfc3339)
    return (dt if dt.tzinfo else dt.replace(tzinfo=UTC)).timestamp()


def _nearest_rank(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of a non-empty sorted sequence: always an observed value,
    which keeps a bucket of a few requests honest (no interpolated latencies)."""
    return sorted_values[max(1, math.ceil(q / 100 * len(sorted_values))) - 1]


def _nice_step(span: float, ticks: int = 8) -> float:
    """A 1/2/5 x 10^k step giving at most about ``ticks`` ticks over ``span``."""
    raw = span / ticks
    mag = 10.0 ** math.floor(math.log10(raw))
    return next(m * mag for m in (1, 2, 5, 10) if m * mag >= raw)


def _domain_colour(domain: str) -> str:
    return _PALETTE[FAULT_DOMAINS.index(domain) % len(_PALETTE)]


def _abstained(a: IncidentAttribution) -> bool:
    return a.abstain or a.predicted_fault_domain == "unknown"


class _Scale(msgspec.Struct, frozen=True):
    """Data to pixel mapping: x in seconds from the origin, TTFT in log10(ms)."""

    x_min: float
    x_max: float
    log_lo: int
    log_hi: int

    def x(self, t: float) -> float:
        return _LEFT + (t - self.x_min) / (self.x_max - self.x_min) * (_W - _LEFT - _RIGHT)

    def ttft(self, ms: float) -> float:
        # Values below the lowest decade (only possible for 0 ms) sit on the floor.
        lg = math.log10(max(ms, 10.0 ** self.log_lo))
        return _TOP_Y1 - (lg - self.log_lo) / (self.log_hi - self.log_lo) * (_TOP_Y1 - _TOP_Y0)

    @staticmethod
    def error(rate: float) -> float:
        return _BOT_Y1 - rate * (_BOT_Y1 - _BOT_Y0)


def _polyline_segments(points: dict[int, float], scale: _Scale, colour: str,
                       label: str, dash: str = "") -> list[str]:
    """One polyline per run of consecutive seconds with a value: a second without any
    TTFT (nothing succeeded) is a gap in the line, not an interpolation across it."""
    runs: list[list[int]] = []
    for sec in sorted(points):
        if runs and runs[-1][-1] == sec - 1:
            runs[-1].append(sec)
        else:
            runs.append([sec])
    dash_attr = f' stroke-dasharray="{dash}"' if dash else ""
    out = []
    for run in runs:
        xy = [(scale.x(s + 0.5), scale.ttft(points[s])) for s in run]
        if len(xy) == 1:  # a lone point draws nothing as a polyline
            out.append(f'<circle class="{label}" cx="{xy[0][0]:.1f}" cy="{xy[0][1]:.1f}" '
                       f'r="1.8" fill="{colour}"/>')
        else:
            pts = " ".join(f"{x:.1f},{y:.1f}" for x, y in xy)
            out.append(f'<polyline class="{label}" points="{pts}" fill="none" '
                       f'stroke="{colour}" stroke-width="1.5"{dash_attr}/>')
    return out


def _legend(items: list[tuple[str, str, str]]) -> tuple[list[str], int]:
    """Legend entries (kind, label, colour), wrapped onto rows; returns the SVG and the
    number of rows used."""
    out: list[str] = []
    x, row = float(_LEFT), 0
    for kind, label, colour in items:
        width = 22 + len(label) * _CHAR_W + 14
        if x + width > _W - _RIGHT and x > _LEFT:
            x, row = float(_LEFT), row + 1
        y = _LEGEND_Y + row * _LEGEND_ROW
        if kind == "line":
            out.append(f'<line x1="{x:.1f}" y1="{y - 4}" x2="{x + 16:.1f}" y2="{y - 4}" '
                       f'stroke="{colour}" stroke-width="2"/>')
        elif kind == "band":
            out.append(f'<rect x="{x:.1f}" y="{y - 9}" width="16" height="10" '
                       f'fill="{colour}" fill-opacity="0.35"/>')
        elif kind == "bar":
            out.append(f'<rect x="{x + 4:.1f}" y="{y - 9}" width="8" height="10" '
                       f'fill="{colour}"/>')
        else:
            out.append(f'<circle cx="{x + 8:.1f}" cy="{y - 4}" r="4.5" fill="{colour}"/>')
        out.append(f'<text x="{x + 22:.1f}" y="{y}">{_esc(label)}</text>')
        x += width
    return out, row + 1


def timeline_svg(requests: Sequence[RequestResult], faults: Sequence[FaultWindow],
                 phases: Sequence[Phase], attributions: Sequence[IncidentAttribution], *,
                 title: str) -> str:
    """A self-contained SVG timeline of one repetition.

    x is seconds since the first phase start (since the earliest event without phases).
    Top panel: p50 and p95 TTFT of the requests started in each 1-second bucket, log
    scale; bottom panel: the share of those requests with an error. Fault episodes are
    shaded bands labelled with the fault name, phase boundaries dashed lines, and each
    attribution a marker coloured by its domain (abstentions grey).
    """
    attr_times = [_unix_seconds(a.timestamp) for a in attributions]
    if phases:
        t0 = min(p.start for p in phases)
        x_title = "seconds since first phase start"
    else:
        t0 = min([r.start_unix_nano / 1e9 for r in requests]
                 + [f.start for f in faults] + attr_times, default=0.0)
        x_title = "seconds since first event"
    starts = [r.start_unix_nano / 1e9 - t0 for r in requests]
    offsets = [*starts, *(math.floor(s) + 1 for s in starts),
               *(t - t0 for f in faults for t in (f.start, f.end)),
               *(t - t0 for p in phases for t in (p.start, p.end)),
               *(t - t0 for t in attr_times)]
    x_min = math.floor(min([0.0, *offsets]))
    x_max = max(math.ceil(max(offsets, default=0.0)), x_min + 1)

    by_second: dict[int, list[RequestResult]] = {}
    for r, s in zip(requests, starts, strict=True):
        by_second.setdefault(math.floor(s), []).append(r)
    ttfts = {sec: sorted(r.ttft_ms for r in rs if r.ttft_ms is not None)
             for sec, rs in by_second.items()}
    ttfts = {sec: v for sec, v in ttfts.items() if v}
    error_rate = {sec: sum(bool(r.error) for r in rs) / len(rs) for sec, rs in by_second.items()}

    positive = [v for vs in ttfts.values() for v in vs if v > 0]
    if positive:
        log_lo = math.floor(math.log10(min(positive)))
        log_hi = max(math.ceil(math.log10(max(positive))), log_lo + 1)
    else:  # no TTFT at all: still draw a labelled axis over a plausible range
        log_lo, log_hi = 0, 3
    sc = _Scale(x_min=float(x_min), x_max=float(x_max), log_lo=log_lo, log_hi=log_hi)

    legend_items: list[tuple[str, str, str]] = [
        ("line", "TTFT p50", _P50_COLOUR), ("line", "TTFT p95", _P95_COLOUR),
        ("bar", "error rate", _ERROR_COLOUR)]
    if faults:
        legend_items.append(("band", "fault window", _BAND_COLOUR))
    named = {a.predicted_fault_domain for a in attributions if not _abstained(a)}
    legend_items += [("marker", d, _domain_colour(d)) for d in FAULT_DOMAINS if d in named]
    if any(_abstained(a) for a in attributions):
        legend_items.append(("marker", "abstained", _ABSTAIN_COLOUR))
    legend, rows = _legend(legend_items)
    height = _LEGEND_Y + rows * _LEGEND_ROW + 8
    plot_w = _W - _LEFT - _RIGHT

    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{_W}" height="{height}" '
           f'viewBox="0 0 {_W} {height}" font-family="sans-serif" font-size="11">',
           f"<title>{_esc(title)}</title>",
           f'<rect width="{_W}" height="{height}" fill="white"/>',
           f'<text x="{_W / 2}" y="20" text-anchor="middle" font-size="14" '
           f'font-weight="bold">{_esc(title)}</text>']

    # Bands first, so that lines and markers are drawn over them.
    for i, f in enumerate(faults):
        x0, x1 = sc.x(f.start - t0), sc.x(f.end - t0)
        params = ", ".join(f"{k}={v}" for k, v in sorted(f.params.items()))
        tip = f"{f.name} ({f.domain}) {f.start - t0:.1f}-{f.end - t0:.1f} s {params}".rstrip()
        out += [f'<g class="fault" data-name="{_esc(f.name)}"><title>{_esc(tip)}</title>',
                f'<rect x="{x0:.1f}" y="{_TOP_Y0}" width="{max(x1 - x0, 1.0):.1f}" '
                f'height="{_BOT_Y1 - _TOP_Y0}" fill="{_BAND_COLOUR}" fill-opacity="0.35"/>',
                # Staggered so that labels of overlapping faults do not cover each other.
                f'<text x="{x0 + 3:.1f}" y="{_TOP_Y0 + 12 + 12 * (i % 3)}" fill="#7a5200">'
                f"{_esc(f.name)}</text></g>"]

    # Panel frames and y axes.
    out += [f'<rect x="{_LEFT}" y="{_TOP_Y0}" width="{plot_w}" height="{_TOP_Y1 - _TOP_Y0}" '
            'fill="none" stroke="#999"/>',
            f'<rect x="{_LEFT}" y="{_BOT_Y0}" width="{plot_w}" height="{_BOT_Y1 - _BOT_Y0}" '
            'fill="none" stroke="#999"/>']
    decade_step = max(1, math.ceil((log_hi - log_lo) / 5))
    for k in range(log_lo, log_hi + 1, decade_step):
        y = sc.ttft(10.0 ** k)
        out += [f'<line x1="{_LEFT}" y1="{y:.1f}" x2="{_W - _RIGHT}" y2="{y:.1f}" '
                'stroke="#e5e5e5"/>',
                f'<text x="{_LEFT - 4}" y="{y + 4:.1f}" text-anchor="end">{10.0 ** k:g}</text>']
    for rate in (0.0, 0.5, 1.0):
        y = sc.error(rate)
        out += [f'<line x1="{_LEFT}" y1="{y:.1f}" x2="{_W - _RIGHT}" y2="{y:.1f}" '
                'stroke="#e5e5e5"/>',
                f'<text x="{_LEFT - 4}" y="{y + 4:.1f}" text-anchor="end">{rate:.0%}</text>']
    for y_mid, label in (((_TOP_Y0 + _TOP_Y1) / 2, "TTFT, ms (log scale)"),
                         ((_BOT_Y0 + _BOT_Y1) / 2, "error rate")):
        out.append(f'<text x="14" y="{y_mid}" text-anchor="middle" '
                   f'transform="rotate(-90 14 {y_mid})">{label}</text>')

    # x axis.
    step = _nice_step(x_max - x_min)
    tick = math.ceil(x_min / step) * step
    while tick <= x_max + 1e-9:
        x = sc.x(tick)
        out += [f'<line x1="{x:.1f}" y1="{_BOT_Y1}" x2="{x:.1f}" y2="{_BOT_Y1 + 4}" '
                'stroke="#999"/>',
                f'<text x="{x:.1f}" y="{_BOT_Y1 + 16}" text-anchor="middle">{tick:g}</text>']
        tick += step
    out.append(f'<text x="{_LEFT + plot_w / 2}" y="{_BOT_Y1 + 32}" text-anchor="middle">'
               f"{x_title}</text>")

    # Phase boundaries: every start and end, once each (adjacent phases share one).
    for t in sorted({round(t - t0, 3) for p in phases for t in (p.start, p.end)}):
        x = sc.x(t)
        out.append(f'<line class="phase-boundary" x1="{x:.1f}" y1="{_TOP_Y0 - 12}" '
                   f'x2="{x:.1f}" y2="{_BOT_Y1}" stroke="#555" stroke-width="0.8" '
                   'stroke-dasharray="4 3"/>')
    for p in phases:
        out.append(f'<text x="{sc.x(p.start - t0) + 3:.1f}" y="{_TOP_Y0 - 4}" fill="#555" '
                   f'font-size="10">{_esc(p.name)}</text>')

    # Data.
    for sec, rate in sorted(error_rate.items()):
        if rate > 0:
            x0, x1 = sc.x(sec), sc.x(sec + 1)
            out.append(f'<rect class="error-rate" x="{x0:.1f}" y="{sc.error(rate):.1f}" '
                       f'width="{max(x1 - x0 - 0.5, 0.5):.1f}" '
                       f'height="{rate * (_BOT_Y1 - _BOT_Y0):.1f}" fill="{_ERROR_COLOUR}"/>')
    out += _polyline_segments({s: _nearest_rank(v, 95) for s, v in ttfts.items()}, sc,
                              _P95_COLOUR, "ttft-p95")
    out += _polyline_segments({s: _nearest_rank(v, 50) for s, v in ttfts.items()}, sc,
                              _P50_COLOUR, "ttft-p50")
    if not ttfts:
        out.append(f'<text x="{_LEFT + plot_w / 2}" y="{(_TOP_Y0 + _TOP_Y1) / 2}" '
                   'text-anchor="middle" fill="#999">no TTFT data</text>')
    if not requests:
        out.append(f'<text x="{_LEFT + plot_w / 2}" y="{(_BOT_Y0 + _BOT_Y1) / 2}" '
                   'text-anchor="middle" fill="#999">no requests</text>')

    for a, t in zip(attributions, attr_times, strict=True):
        abstained = _abstained(a)
        colour = _ABSTAIN_COLOUR if abstained else _domain_colour(a.predicted_fault_domain)
        tip = (f"{t - t0:.1f} s {a.predicted_fault_domain}"
               f"{' (abstained)' if abstained else ''} confidence {a.confidence:.2f} "
               f"sli {a.slo_impact.sli}")
        out.append(f'<circle class="attribution" data-domain="{_esc(a.predicted_fault_domain)}" '
                   f'cx="{sc.x(t - t0):.1f}" cy="{_MARKER_Y}" r="4.5" fill="{colour}" '
                   f'stroke="white" stroke-width="1"><title>{_esc(tip)}</title></circle>')

    out += legend
    out.append("</svg>")
    return "\n".join(out) + "\n"


# ---------------------------------------------------------------------------- tables

_Comparison = Literal["ge", "le"]


class _Metric(msgspec.Struct, frozen=True, kw_only=True):
    """A headline metric: where it is in summary.json, how to print it, its target."""

    label: str
    path: tuple[str, ...]
    decimals: int
    unit: str = ""
    op: _Comparison | None = None
    target: float | None = None


class _Row(msgspec.Struct, frozen=True):
    metric: str
    value: str
    target: str
    met: str  # "met", "not met" or NO_JUDGMENT


# The incident lab's targets. Bounds are inclusive: a macro-F1 of exactly 0.95 meets it.
_HEADLINE = (
    _Metric(label="macro-F1", path=("macro_f1",), decimals=3, op="ge", target=0.95),
    _Metric(label="FPR (baseline/recovery)", path=("fpr",), decimals=3, op="le", target=0.01),
    _Metric(label="FPR in baseline", path=("fpr_by_phase", "baseline", "fpr"), decimals=3,
            op="le", target=0.01),
    _Metric(label="detection delay median", path=("detection_delay_s", "median"), decimals=2,
            unit="s", op="le", target=1.0),
    _Metric(label="detection delay p95", path=("detection_delay_s", "p95"), decimals=2,
            unit="s"),
    _Metric(label="SLO first broken (client) median", path=("slo_break_s", "median"),
            decimals=2, unit="s"),
    _Metric(label="detection after the SLO broke median",
            path=("detection_after_break_s", "median"), decimals=2, unit="s"),
    _Metric(label="span joins precision (rag's truth)", path=("correlation", "precision"),
            decimals=3, op="ge", target=0.95),
    _Metric(label="span joins recall (rag's truth)", path=("correlation", "recall"),
            decimals=3, op="ge", target=0.90),
    _Metric(label="event -> pod precision", path=("identity", "precision"), decimals=3),
    _Metric(label="event -> pod recall", path=("identity", "recall"), decimals=3),
    _Metric(label="agent CPU, process", path=("overhead", "cpu_pct"), decimals=2, unit="%"),
    _Metric(label="agent CPU, its BPF programs", path=("overhead", "bpf_cpu_pct"), decimals=2,
            unit="%"),
    _Metric(label="agent CPU, process + BPF", path=("overhead", "cpu_pct_with_bpf"),
            decimals=2, unit="%", op="le", target=1.0),
    _Metric(label="agent RSS at end of load", path=("overhead", "rss_mb"), decimals=1,
            unit="MiB"),
    _Metric(label="agent peak RSS", path=("overhead", "rss_peak_mb"), decimals=1, unit="MiB",
            op="le", target=80.0),
    _Metric(label="BPF time per program run", path=("overhead", "bpf_ns_per_run"),
            decimals=0, unit="ns"),
    _Metric(label="p99 TTFT increase with agent", path=("latency_overhead_pct",),
            decimals=2, unit="%", op="le", target=2.0),
    _Metric(label="p99 request latency increase with agent",
            path=("request_latency_overhead_pct",), decimals=2, unit="%", op="le",
            target=2.0),
)


_CI95_ROWS = (("macro_f1", "macro-F1"), ("fpr", "FPR"),
              ("detection_delay_median_s", "detection delay median, s"),
              ("agent_cpu_pct", "agent CPU, process, %"),
              ("agent_cpu_pct_with_bpf", "agent CPU, process + BPF, %"),
              ("agent_rss_peak_mb", "agent peak RSS, MiB"))


def _number(value: object) -> float | None:
    """A finite number, or None for null, missing, non-numeric or NaN/inf values."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def _lookup(summary: dict[str, Any], path: tuple[str, ...]) -> float | None:
    node: object = summary
    for key in path:
        if not isinstance(node, dict):
            return None
        node = node.get(key)
    return _number(node)


def _with_unit(text: str, unit: str) -> str:
    return f"{text} {unit}" if unit else text


def _headline_rows(summary: dict[str, Any]) -> list[_Row]:
    rows = []
    for m in _HEADLINE:
        v = _lookup(summary, m.path)
        value = NA if v is None else _with_unit(f"{v:.{m.decimals}f}", m.unit)
        if m.op is None or m.target is None:
            rows.append(_Row(m.label, value, NO_JUDGMENT, NO_JUDGMENT))
            continue
        sign = "≥" if m.op == "ge" else "≤"
        target = _with_unit(f"{sign} {m.target:g}", m.unit)
        if v is None:
            met = NO_JUDGMENT
        else:
            ok = v >= m.target if m.op == "ge" else v <= m.target
            met = "met" if ok else "not met"
        rows.append(_Row(m.label, value, target, met))
    return rows


def results_table(summary: dict[str, Any]) -> str:
    """The headline metrics as a plain-text table for a terminal: metric, value, target,
    met?."""
    cells = [("metric", "value", "target", "met?")]
    cells += [(r.metric, r.value, r.target, r.met) for r in _headline_rows(summary)]
    widths = [max(len(row[i]) for row in cells) for i in range(4)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
             for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines) + "\n"


def _md_cell(text: str) -> str:
    """A Markdown table cell: a bare ``|`` would end the cell."""
    return text.replace("|", "\\|")


def _md_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |",
            "|" + "|".join("---" for _ in header) + "|",
            *("| " + " | ".join(_md_cell(c) for c in row) + " |" for row in rows)]


def _inline_code(text: str) -> str:
    """``text`` as inline code, with a fence longer than any backtick run inside it."""
    fence = "`" * (max((len(run) for run in re.findall("`+", text)), default=0) + 1)
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def _text(value: object) -> str | None:
    """A provenance value as text; None for null, missing or empty."""
    return None if value is None or value == "" else str(value)


def _rate_cell(value: object, decimals: int = 3) -> str:
    v = _number(value)
    return NA if v is None else f"{v:.{decimals}f}"


def report_markdown(summary: dict[str, Any], *, command: str, provenance: dict[str, Any],
                    chart_files: list[str]) -> str:
    """The Markdown report of a run: scenario, command, provenance, headline results
    against their targets, per-class scores and the charts (the first one embedded,
    all linked; paths relative to the report)."""
    scenario = _text(summary.get("scenario")) or NA
    out = [f"# Incident lab report: {scenario}", "", "Command:", ""]
    fence = "`" * max(3, max((len(r) for r in re.findall("`+", command)), default=0) + 1)
    out += [f"{fence}sh", command, fence, ""]

    machine = [_text(provenance.get("hostname")), _text(provenance.get("cpu_model"))]
    cpus = _text(provenance.get("cpus"))
    machine.append(f"{cpus} CPUs" if cpus else None)
    code = {k: _text(provenance.get(k)) for k in ("kernel", "commit")}
    params = summary.get("params")
    facts = [
        ("Machine", ", ".join(p for p in machine if p) or NA),
        ("Kernel", _inline_code(code["kernel"]) if code["kernel"] else NA),
        ("Commit", _inline_code(code["commit"]) if code["commit"] else NA),
        ("Python", _text(provenance.get("python")) or NA),
        ("Started", _text(provenance.get("started")) or NA),
        ("Finished", _text(provenance.get("finished")) or NA),
        ("Seed", _text(provenance.get("seed")) or NA),
        ("Repetitions", _text(summary.get("reps")) or NA),
        *([("Scored again", f"{_text(r.get('at')) or NA} at commit "
            f"{_inline_code(_text(r.get('commit')) or '?')}: {_text(r.get('what')) or NA}")]
          if isinstance(r := provenance.get("rescored"), dict) else []),
        ("Parameters", NA if params is None
         else _inline_code(json.dumps(params, sort_keys=True, default=str))),
    ]
    out += [f"- **{name}:** {value}" for name, value in facts]

    out += ["", "## Results", ""]
    out += _md_table(("metric", "value", "target", "met?"),
                     [(r.metric, r.value, r.target, r.met) for r in _headline_rows(summary)])

    out += ["", "## Over the repetitions", ""]
    spread = summary.get("ci95")
    rows = []
    for key, label in _CI95_ROWS:
        ci = spread.get(key) if isinstance(spread, dict) else None
        ci = ci if isinstance(ci, dict) else {}
        mean, lo, hi = (_number(ci.get(k)) for k in ("mean", "lo", "hi"))
        if mean is not None:
            rows.append((label, f"{mean:.3f}", NA if lo is None or hi is None
                         else f"{lo:.3f} – {hi:.3f}"))
    if rows:
        out += ["Mean over repetitions and its 95 % interval (Student's t over the "
                "per-repetition values; rates kept within 0..1).", ""]
        out += _md_table(("metric", "mean", "95 % interval"), rows)
    else:
        out.append(NA)

    out += ["", "## Per-class scores", ""]
    per_class = summary.get("per_class")
    if isinstance(per_class, dict) and per_class:
        rows = []
        for domain, scores in sorted(per_class.items()):
            s = scores if isinstance(scores, dict) else {}
            support = _number(s.get("support"))
            rows.append((domain, _rate_cell(s.get("precision")), _rate_cell(s.get("recall")),
                         _rate_cell(s.get("f1")), NA if support is None else f"{support:.0f}"))
        out += _md_table(("domain", "precision", "recall", "F1", "support"), rows)
    else:
        out.append(NA)

    out += ["", "## Abstentions", ""]
    counts = summary.get("abstentions")
    sides = [counts.get(k) if isinstance(counts, dict) else None
             for k in ("about_a_fault", "calm")]
    fault, calm = (side if isinstance(side, dict) else {} for side in sides)
    if fault or calm:
        out += ["Attributions where the agent said `unknown`, by its reason: about an "
                "injected fault (each costs that fault's recall) or in calm.", ""]
        out += _md_table(("reason", "about a fault", "calm"),
                         [(_inline_code(str(k)), str(fault.get(k, 0)), str(calm.get(k, 0)))
                          for k in sorted({*fault, *calm})])
    else:
        out.append("None (or not counted: runs scored before 2026-12-03 did not count them).")

    out += ["", "## Charts", ""]
    if chart_files:
        out += [f"![timeline of {chart_files[0]}]({quote(chart_files[0])})", ""]
        out += [f"- [{name}]({quote(name)})" for name in chart_files]
    else:
        out.append("No charts.")
    return "\n".join(out) + "\n"


# ----------------------------------------------------------------------------- files


def _read_bytes(path: Path) -> bytes:
    """The file's content; empty when it does not exist (a repetition cut short)."""
    return path.read_bytes() if path.exists() else b""


def _read_list(path: Path, item: type[_T]) -> list[_T]:
    data = _read_bytes(path)
    return msgspec.json.decode(data, type=list[item]) if data.strip() else []


def _read_attributions(path: Path) -> list[IncidentAttribution]:
    dec = msgspec.json.Decoder(IncidentAttribution)
    return [dec.decode(line) for line in _read_bytes(path).splitlines() if line.strip()]


def _rep_dirs(run_dir: Path) -> list[Path]:
    """``rep-NN`` subdirectories in numeric order (``rep-100`` after ``rep-99``)."""
    reps = [p for p in run_dir.glob("rep-*") if p.is_dir() and p.name[4:].isdigit()]
    return sorted(reps, key=lambda p: int(p.name[4:]))


def write_run_report(run_dir: Path, *, command: str,
                     rep_dirs: list[Path] | None = None) -> list[Path]:
    """Write ``timeline-rep-NN.svg`` per repetition, ``timeline.svg`` (the first
    repetition's, the headline chart) and ``report.md`` into ``run_dir``; return the
    paths written. ``summary.json`` is required; ``provenance.json`` and the files of a
    repetition may be missing and then count as empty. The repetitions are
    ``run_dir``'s ``rep-NN`` unless ``rep_dirs`` names them elsewhere."""
    summary = json.loads((run_dir / "summary.json").read_text())
    prov_path = run_dir / "provenance.json"
    provenance = json.loads(prov_path.read_text()) if prov_path.exists() else {}
    scenario = _text(summary.get("scenario")) or "incident lab"
    written: list[Path] = []
    for rep in _rep_dirs(run_dir) if rep_dirs is None else rep_dirs:
        req_path = rep / "requests.jsonl"
        svg = timeline_svg(
            read_jsonl(req_path) if req_path.exists() else [],
            _read_list(rep / "faults.json", FaultWindow),
            _read_list(rep / "phases.json", Phase),
            _read_attributions(rep / "attributions.jsonl"),
            title=f"{scenario}: {rep.name}")
        path = run_dir / f"timeline-{rep.name}.svg"
        path.write_text(svg, encoding="utf-8")
        written.append(path)
    charts = [p.name for p in written]
    if written:
        headline = run_dir / "timeline.svg"
        headline.write_bytes(written[0].read_bytes())
        written.append(headline)
    report = run_dir / "report.md"
    report.write_text(report_markdown(summary, command=command, provenance=provenance,
                                      chart_files=charts), encoding="utf-8")
    written.append(report)
    return written
