"""A self-contained HTML page of a `validate` run: how far the model is from each measurement.

The error summary in the terminal is two numbers; the page shows where they come from: every row's
predicted / measured ratio per stack, predicted against measured with the P10-P90 band, the error
distribution per vendor against the 15 % / 35 % targets, the breakdowns and the worst rows with
their sources. Same rules as the plan report: plotly.js inlined, nothing fetched, text escaped.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from moatmeter.errors import InputError
from moatmeter.perf.error_structure import table, variance_split
from moatmeter.perf.observations import TARGET_MEDIAN, TARGET_P90
from moatmeter.report.html import CSP, _clean, _e, _table, figure_scripts

VENDOR_COLORS = {"nvidia": "#76b900", "amd": "#ed1c24", "intel": "#0071c5", "apple": "#555555"}
WORST = 30
LATENCY = ("ttft_ms", "tpot_ms")


def _color(vendor: str) -> str:
    return VENDOR_COLORS.get(vendor, "#9467bd")


def _hover(d: dict[str, Any]) -> str:
    return (f"{_e(d['id'])}<br>{_e(d['stack'])} · {_e(d['accelerator'])} · {_e(d['model'])}"
            f"<br>{_e(d['metric'])} ({_e(d['scenario'])})<br>predicted {d['predicted']:.4g}, "
            f"measured {d['measured']:.4g} (APE {d['ape']:.0%})<br>{_e(d['source'][:90])}")


def _by_vendor(details: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for d in details:
        if np.isfinite(d["predicted"]):
            out.setdefault(d["vendor"], []).append(d)
    return dict(sorted(out.items()))


def figures(details: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Plotly figures as plain dicts: ratio strip per stack, predicted vs measured (throughput and
    latency), and the cumulative APE per vendor."""
    groups = _by_vendor(details)
    base = {"margin": {"l": 70, "r": 20, "t": 50, "b": 110}, "hovermode": "closest",
            "legend": {"orientation": "h", "y": -0.25}}
    stacks = sorted({d["stack"] for d in details})
    ratio_data: list[dict[str, Any]] = [
        {"type": "scatter", "mode": "markers", "name": v,
         "x": [d["stack"] for d in rows], "y": [d["predicted"] / d["measured"] for d in rows],
         "text": [_hover(d) for d in rows], "hoverinfo": "text",
         "marker": {"color": _color(v), "size": 6, "opacity": 0.7}}
        for v, rows in groups.items()]
    band = [(1 + TARGET_P90, "dash"), (1 - TARGET_P90, "dash"), (1 + TARGET_MEDIAN, "dot"),
            (1 - TARGET_MEDIAN, "dot"), (1.0, "solid")]
    shapes = [{"type": "line", "xref": "paper", "x0": 0, "x1": 1, "y0": y, "y1": y,
               "line": {"color": "#888", "width": 1, "dash": dash}} for y, dash in band]
    figs: dict[str, dict[str, Any]] = {"ratio": {"data": ratio_data, "layout": {
        **base,
        "title": {"text": "predicted / measured per row, by stack (dashed: ±35 %, dotted: ±15 %)"},
        "xaxis": {"categoryorder": "array", "categoryarray": stacks, "tickangle": -40},
        "yaxis": {"type": "log", "title": {"text": "predicted / measured"}}, "shapes": shapes}}}
    for key, title, unit, pick in (
            ("throughput", "throughput: predicted vs measured (bars: predicted P10-P90)",
             "per second", lambda m: m not in LATENCY),
            ("latency", "latency (TTFT, TPOT): predicted vs measured (bars: predicted P10-P90)",
             "ms", lambda m: m in LATENCY)):
        data = []
        lo, hi = np.inf, 0.0
        for v, rows in groups.items():
            rows = [d for d in rows if pick(d["metric"])]
            if not rows:
                continue
            meas = [d["measured"] for d in rows]
            pred = [d["predicted"] for d in rows]
            lo = min(lo, *meas, *pred)
            hi = max(hi, *meas, *pred)
            data.append({
                "type": "scatter", "mode": "markers", "name": v, "x": meas, "y": pred,
                "text": [_hover(d) for d in rows], "hoverinfo": "text",
                "marker": {"color": _color(v), "size": 6, "opacity": 0.7},
                "error_y": {"type": "data", "symmetric": False, "thickness": 1, "width": 0,
                            "color": _color(v),
                            "array": [d["p90"] - d["predicted"] for d in rows],
                            "arrayminus": [d["predicted"] - d["p10"] for d in rows]}})
        if not data:
            continue
        data.append({"type": "scatter", "mode": "lines", "name": "predicted = measured",
                     "x": [lo, hi], "y": [lo, hi], "hoverinfo": "skip",
                     "line": {"color": "#888", "width": 1}})
        figs[key] = {"data": data, "layout": {
            **base, "title": {"text": title},
            "xaxis": {"type": "log", "title": {"text": f"measured ({unit})"}},
            "yaxis": {"type": "log", "title": {"text": f"predicted ({unit})"}}}}
    cdf = []
    for v, rows in {"all": [d for r in groups.values() for d in r], **groups}.items():
        a = np.sort([d["ape"] * 100 for d in rows])
        cdf.append({"type": "scatter", "mode": "lines", "name": f"{v} (n={len(a)})",
                    "x": a.tolist(), "y": (np.arange(1, len(a) + 1) / len(a)).tolist(),
                    "line": {"color": "#222" if v == "all" else _color(v),
                             "width": 3 if v == "all" else 1.5, "shape": "hv"}})
    targets = [{"type": "line", "xref": "x", "yref": "paper", "x0": x, "x1": x, "y0": 0, "y1": 1,
                "line": {"color": "#888", "width": 1, "dash": "dash"}}
               for x in (TARGET_MEDIAN * 100, TARGET_P90 * 100)]
    targets += [{"type": "line", "xref": "paper", "yref": "y", "x0": 0, "x1": 1, "y0": y, "y1": y,
                 "line": {"color": "#bbb", "width": 1, "dash": "dot"}} for y in (0.5, 0.9)]
    figs["cdf"] = {"data": cdf, "layout": {
        **base, "title": {"text": "share of rows within an APE (targets: median 15 %, p90 35 %)"},
        "xaxis": {"title": {"text": "APE (%)"}, "range": [0, 100]},
        "yaxis": {"title": {"text": "share of rows"}, "range": [0, 1]}, "shapes": targets}}
    return figs


def _group_rows(details: list[dict[str, Any]], key: str) -> list[list[Any]]:
    groups: dict[str, list[dict[str, Any]]] = {}
    for d in details:
        if np.isfinite(d["ape"]):
            groups.setdefault(str(d[key]), []).append(d)
    out = []
    for g, rows in sorted(groups.items()):
        a = np.array([d["ape"] for d in rows])
        inside = np.mean([d["p10"] <= d["measured"] <= d["p90"] for d in rows])
        out.append([g, len(rows), f"{np.median(a):.1%}", f"{np.percentile(a, 90):.1%}",
                    f"{np.mean(a > TARGET_P90):.0%}", f"{inside:.0%}"])
    return out


def _structure(st: dict[str, Any] | None) -> str:
    """The cross-validation's error split (``perf.error_structure``) as a section, if present."""
    if not st:
        return ""

    def pct(x: float | None) -> str:
        return "-" if x is None else f"{x:.1%}"

    rows = [[label, f["n"], pct(f["median_ape"]), pct(f["p90_ape"]), f["beyond_35"]]
            for label, f in table(st)]
    text = (f"{variance_split(st)}. The oracles know what no held-out model can (each source's "
            "own offset); the ridge rows show whether the configuration a row records could have "
            "predicted its error.")
    return ("<h2>Where the held-out error lies</h2>\n"
            f"<p>{_e(text[0].upper() + text[1:])}</p>\n"
            + _table(["", "rows", "median APE", "p90 APE", "rows > 35 %"], rows, "by"))


def render(result: dict[str, Any], title: str) -> str:
    """The page for a `validate_rows` / `loso_cv` result made with ``details=True``."""
    details = result.get("details")
    if details is None:
        raise ValueError("the result carries no per-row details (details=True)")
    s = result["summary"]
    figs = figures(details)
    heads = ["", "rows", "median APE", "p90 APE", "share > 35 %", "inside P10-P90"]
    breakdowns = "\n".join(f"<h3>per {_e(k)}</h3>" + _table([k, *heads[1:]],
                                                             _group_rows(details, k), "by")
                           for k in ("vendor", "stack", "metric", "scenario", "source"))
    worst = sorted((d for d in details if np.isfinite(d["ape"])), key=lambda d: -d["ape"])[:WORST]
    worst_t = _table(["id", "stack", "accelerator", "model", "metric", "predicted", "measured",
                      "P10-P90", "APE", "source"],
                     [[d["id"], d["stack"], d["accelerator"], d["model"], d["metric"],
                       f"{d['predicted']:.4g}", f"{d['measured']:.4g}",
                       f"{d['p10']:.4g}-{d['p90']:.4g}", f"{d['ape']:.0%}", d["source"]]
                      for d in worst], "worst")
    skipped = _table(["id", "why skipped"], [[k["id"], k["reason"]] for k in s["skipped"]],
                     "skipped")
    band = s.get("p10_p90_band_coverage")
    cv = s.get("cv")
    how = (f"Leave-one-source-out cross-validation over {s.get('sources')} sources: every row is "
           "predicted by a calibration refitted without its whole source document."
           if cv else "Every row is predicted by the calibration given (the bundled one unless "
           "--calibration). Rows that calibration was fitted to (the bundled observations are) "
           "get in-sample errors; --cv gives held-out ones.")
    med, p90 = s["median_ape"], s["p90_ape"]
    headline = ("<p class='headline'>No row could be modelled.</p>" if not s["n"] else
                f"<p class='headline'>{s['n']} rows: median APE <b>{med:.1%}</b>, p90 "
                f"<b>{p90:.1%}</b> (targets {TARGET_MEDIAN:.0%} / {TARGET_P90:.0%}); "
                + (f"{band:.0%} of measured values inside the predicted P10-P90 band (ideal 80 %); "
                   if band is not None else "")
                + f"{len(s['skipped'])} rows skipped.</p>")
    divs = "\n".join(f'<section><div id="fig-{k}" class="fig"></div></section>' for k in figs)
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="{CSP}">
<title>moatmeter validate — {_e(title)}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 24px; color: #222; }}
h1 {{ font-size: 22px; }} h2 {{ font-size: 17px; margin-top: 28px; }} h3 {{ font-size: 14px; }}
table {{ border-collapse: collapse; font-size: 12px; margin: 8px 0; }}
th, td {{ border: 1px solid #ccc; padding: 3px 6px; text-align: left; vertical-align: top; }}
th {{ background: #f2f2f2; }} .headline {{ font-size: 15px; }}
table.worst td:last-child, table.by td:first-child {{ max-width: 560px; }}
.fig {{ width: 100%; min-height: 460px; }}
</style></head>
<body>
<h1>moatmeter validate — {_e(title)}</h1>
<p>{_e(how)} APE = |predicted − measured| / measured.</p>
{headline}
<h2>Figures</h2>
{divs}
{_structure(s.get("error_structure"))}
<h2>Breakdowns</h2>
{breakdowns}
<h2>The {len(worst)} largest errors</h2>
{worst_t}
<h2>Skipped rows</h2>
{skipped}
{figure_scripts(figs)}
</body></html>
"""


def write_validation_report(result: dict[str, Any], path: str | Path, title: str) -> Path:
    """Write the page of a `validate` result (made with ``details=True``) to ``path``."""
    d = _clean(json.loads(json.dumps(result, default=float)))
    d["details"] = [r for r in d["details"] if r["predicted"] is not None]
    p = Path(path)
    try:
        p.write_text(render(d, title), encoding="utf-8")
    except OSError as exc:
        raise InputError(f"cannot write report: {exc.strerror}", file=str(p)) from None
    return p
