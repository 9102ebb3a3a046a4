"""One self-contained HTML report of a plan: plotly.js inlined, no network, every text escaped.

Figures are plain plotly JSON (dicts), so building the report needs no plotting library beyond the
bundled plotly.min.js. Every string that came from a catalog or a scenario passes through
``html.escape`` before it reaches the page or a figure, and the JSON is made safe to sit inside a
<script> element.
"""

from __future__ import annotations

import json
import math
from html import escape
from importlib import resources
from pathlib import Path
from typing import Any

from moatmeter.errors import InputError
from moatmeter.fmt import money as _money
from moatmeter.tco.costs import ITEMS, LOCKIN_ITEMS

TOP = 15
# Nothing may load from the network: inline scripts and styles, data: images only.
CSP = ("default-src 'none'; script-src 'unsafe-inline' 'unsafe-eval'; style-src 'unsafe-inline'; "
       "img-src data:; font-src data:")
ITEM_LABEL = {
    "capex": "capital (net of resale)", "power": "power", "facility": "facility / colocation",
    "maintenance": "maintenance", "staff": "staff", "rent": "GPU rental", "api": "API tokens",
    "licences": "licences (lock-in)", "migration": "migration (lock-in)",
    "maturity_ops": "stack maturity ops (lock-in)", "liquidity": "resale liquidity (lock-in)",
}
COLORS = {
    "capex": "#4c78a8", "power": "#f58518", "facility": "#e4a00b", "maintenance": "#72b7b2",
    "staff": "#54a24b", "rent": "#9d755d", "api": "#bab0ac", "licences": "#b279a2",
    "migration": "#e45756", "maturity_ops": "#ff9da6", "liquidity": "#8c1c13",
}


def plotly_js() -> str:
    """The bundled plotly.min.js (plotly.offline.get_plotlyjs), read without importing plotly."""
    path = resources.files("plotly") / "package_data" / "plotly.min.js"
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, FileNotFoundError):
        from plotly.offline import get_plotlyjs

        return get_plotlyjs()


def _safe_json(obj: Any) -> str:
    """JSON that cannot close the <script> element it sits in."""
    s = json.dumps(obj, allow_nan=False, default=float)
    return s.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def _num(x: Any) -> Any:
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def _clean(obj: Any) -> Any:
    """NaN/inf become None: plotly and strict JSON both reject them."""
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_clean(v) for v in obj]
    return _num(obj)


def _e(x: Any) -> str:
    return escape(str(x), quote=True)


def _fmt(x: Any) -> str:
    if isinstance(x, float):
        return f"{x:.4g}"
    return "" if x is None else str(x)


def figures(d: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Plotly figure dicts from a plan's JSON form (the same data `--json` prints)."""
    opts = d["options"][:TOP]
    names = [_e(o["id"]) for o in opts]
    base_layout = {"margin": {"l": 60, "r": 20, "t": 40, "b": 40}, "height": 420,
                   "font": {"size": 11}, "legend": {"orientation": "h", "y": -0.25}}
    # Stacked breakdown (horizontal bars, best at top).
    stack_data = []
    for item in ITEMS:
        vals = [_num(o["breakdown"].get(item, 0.0)) for o in opts]
        if not any(v for v in vals if v):
            continue
        stack_data.append({"type": "bar", "orientation": "h", "name": _e(ITEM_LABEL[item]),
                           "y": names, "x": vals, "marker": {"color": COLORS[item]},
                           "hovertemplate": "%{y}<br>" + _e(ITEM_LABEL[item]) + ": $%{x:,.0f}"
                                            "<extra></extra>"})
    stacked = {"data": stack_data, "layout": {
        **base_layout, "barmode": "stack", "title": {"text": "Mean TCO breakdown over the horizon"},
        "yaxis": {"autorange": "reversed", "automargin": True}, "xaxis": {"title": {"text": "USD"}},
        "height": max(420, 28 * len(opts) + 160)}}
    # $/M tokens with P10-P90 error bars.
    p50 = [_num(o["usd_per_mtok_p50"]) for o in opts]
    err = {"type": "data", "symmetric": False,
           "array": [_num(o["usd_per_mtok_p90"] - o["usd_per_mtok_p50"]) for o in opts],
           "arrayminus": [_num(o["usd_per_mtok_p50"] - o["usd_per_mtok_p10"]) for o in opts]}
    kind_color = {"own": "#4c78a8", "rent": "#9d755d", "api": "#bab0ac"}
    permtok = {"data": [{"type": "bar", "x": names, "y": p50, "error_y": err,
                         "marker": {"color": [kind_color[o["kind"]] for o in opts]},
                         "hovertemplate": "%{x}<br>P50 $%{y:.3f} per M tokens<extra></extra>"}],
               "layout": {**base_layout, "title": {"text": "$ per million tokens: P50 with "
                                                            "P10-P90 bars"},
                          "yaxis": {"title": {"text": "USD / M tokens (input+output)"}},
                          "xaxis": {"automargin": True, "tickangle": -35}, "height": 520}}
    # Pareto: cost vs interactivity.
    pts = [o for o in d["options"] if o.get("interactivity_tok_s")]
    front = sorted((o for o in pts if o["pareto"]), key=lambda o: o["interactivity_tok_s"])
    pareto = {"data": [
        {"type": "scatter", "mode": "markers", "name": "options",
         "x": [o["interactivity_tok_s"] for o in pts], "y": [o["usd_per_mtok_p50"] for o in pts],
         "text": [_e(o["id"]) for o in pts], "marker": {"size": 9, "color": "#4c78a8"},
         "hovertemplate": "%{text}<br>%{x:.0f} tok/s/user, $%{y:.3f}/M<extra></extra>"},
        {"type": "scatter", "mode": "lines+markers", "name": "Pareto front",
         "x": [o["interactivity_tok_s"] for o in front],
         "y": [o["usd_per_mtok_p50"] for o in front], "text": [_e(o["id"]) for o in front],
         "marker": {"size": 11, "color": "#e45756"}, "line": {"color": "#e45756"},
         "hovertemplate": "%{text}<extra></extra>"}],
        "layout": {**base_layout, "title": {"text": "Cost vs interactivity (Pareto front)"},
                   "xaxis": {"title": {"text": "tokens/s per user at goodput (1 / TPOT p95)"}},
                   "yaxis": {"title": {"text": "P50 USD / M tokens"}, "type": "log"}}}
    figs = {"breakdown": stacked, "usd_per_mtok": permtok, "pareto": pareto}
    for key in ("tornado", "tornado_own"):
        if d.get(key):
            figs[key] = _tornado(d[key], base_layout)
    return figs


def _tornado(tor: dict[str, Any], base_layout: dict[str, Any]) -> dict[str, Any]:
    bars = list(reversed(tor.get("bars", [])))
    base = tor.get("base_usd_per_mtok", 0.0)
    labels = [_e(b["param"]) for b in bars]
    tornado = {"data": [
        {"type": "bar", "orientation": "h", "name": "input at low", "y": labels,
         "x": [b["usd_per_mtok_low"] - base for b in bars], "base": base,
         "marker": {"color": "#4c78a8"},
         "customdata": [_fmt(b["low_input"]) for b in bars],
         "hovertemplate": "%{y} = %{customdata}<extra>low</extra>"},
        {"type": "bar", "orientation": "h", "name": "input at high", "y": labels,
         "x": [b["usd_per_mtok_high"] - base for b in bars], "base": base,
         "marker": {"color": "#f58518"},
         "customdata": [_fmt(b["high_input"]) for b in bars],
         "hovertemplate": "%{y} = %{customdata}<extra>high</extra>"}],
        "layout": {**base_layout, "barmode": "overlay",
                   "title": {"text": "Sensitivity of " + _e(tor.get("option", "")) +
                             f" ($/M tokens; base case ${base:.3f}, one input at a time)"},
                   "xaxis": {"title": {"text": "USD / M tokens"}}, "yaxis": {"automargin": True},
                   "height": max(380, 30 * len(bars) + 140)}}
    return tornado


METHOD = """<h2>How the numbers are made</h2>
<ul>
<li><b>Sizing.</b> The performance model predicts each replica's goodput (the highest request
rate meeting p95 TTFT and TPOT); replicas = ceil(peak rate / goodput) plus any redundancy.</li>
<li><b>Capital.</b> (devices × (1 + spares) × server overhead × network overhead × (1 + hidden
extras) − resale value discounted to today) × capital recovery factor(cost of capital, horizon)
× horizon. Resale follows the published H100 residual curve, scaled by its year-3 value, times
the vendor's liquidity factor (the difference to NVIDIA is shown as a lock-in line).</li>
<li><b>Power.</b> Server draw = TDP × chip-to-server factor × (idle fraction + (loaded fraction −
idle fraction) × utilisation) × PUE × tariff; colocation is charged per kW of full-load draw.</li>
<li><b>People.</b> Staff scale with servers; less mature stacks add ops effort and a one-off
bring-up; leaving the incumbent stack costs engineer-weeks per custom kernel, TensorRT engine,
CUDA engineer retrained and a validation pass.</li>
<li><b>Rent and API.</b> Rented GPUs are billed per GPU-hour (reserved 24/7, on-demand during
active hours); APIs per million input and output tokens.</li>
<li><b>Uncertainty.</b> Every input with a range is drawn from a triangular distribution on
[low, high] with its value as mode; realised performance is drawn as lognormal(0, eff_sigma) per
(stack, accelerator family), shared by the options that use it. $/M tokens divides the TCO by the
tokens served within the SLO in each draw.</li>
</ul>
"""


def figure_scripts(figs: dict[str, dict[str, Any]]) -> str:
    """The page's scripts: an error collector (tests read it), plotly.js inlined, and one plot per
    figure into the element ``fig-<key>``; the body's ``data-plots`` says how many were drawn."""
    return ("""<div id="js-errors" style="display:none"></div>
<script>
window.__moatErrors = [];
window.addEventListener('error', function (e) {
  window.__moatErrors.push(String(e.message));
  var el = document.getElementById('js-errors');
  el.setAttribute('data-count', window.__moatErrors.length);
  el.textContent = window.__moatErrors.join('\\n');
});
</script>
<script>""" + plotly_js() + """</script>
<script>
(function () {
  var figs = """ + _safe_json(figs) + """;
  var cfg = {displaylogo: false, responsive: true, staticPlot: false};
  Object.keys(figs).forEach(function (k) {
    Plotly.newPlot('fig-' + k, figs[k].data, figs[k].layout, cfg);
  });
  document.body.setAttribute('data-plots', Object.keys(figs).length);
})();
</script>
""")


def _table(headers: list[str], rows: list[list[Any]], cls: str = "") -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    body = "\n".join("<tr>" + "".join(f"<td>{_e(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f'<table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def render(d: dict[str, Any]) -> str:
    figs = figures(d)
    opts = d["options"]
    ranking = _table(
        ["#", "option", "kind", "GPUs", "stack", "precision", "TP×PP×replicas", "TCO P50",
         "TCO P10–P90", "$/M tok P50", "$/M tok P10–P90", "lock-in premium", "served in SLO",
         "avg util.", "tok/s/user", "Pareto", "migration", "notes"],
        [[o["rank"], o["id"], o["kind"], o["count"] or "-", o["stack"] or "-",
          o["precision"] or "-",
          f"{o['tp']}×{o['pp']}×{o['replicas']}" if o["kind"] != "api" else "-",
          _money(o["tco_p50"]), f"{_money(o['tco_p10'])} – {_money(o['tco_p90'])}",
          f"${o['usd_per_mtok_p50']:.3f}",
          f"${o['usd_per_mtok_p10']:.3f} – ${o['usd_per_mtok_p90']:.3f}",
          _money(o["lockin_premium_usd"]), f"{o['served_within_slo']:.1%}",
          f"{o['avg_utilisation']:.0%}" if o.get("avg_utilisation") is not None else "-",
          f"{o['interactivity_tok_s']:.0f}" if o.get("interactivity_tok_s") else "-",
          "★" if o["pareto"] else "", o["migration"], o.get("note", "")] for o in opts],
        "ranking")
    comps = _table(["option A", "option B", "P(A cheaper per M tokens)", "note"],
                   [[c["a"], c["b"], f"{c['p_a_beats_b']:.2f}", c.get("note", "")]
                    for c in d.get("comparisons", [])])
    assum = _table(["parameter", "value", "low", "high", "unit", "estimate?", "source", "note"],
                   [[a["id"], _fmt(a["value"]), _fmt(a["low"]), _fmt(a["high"]), a["unit"],
                     "estimate" if a["estimate"] else "", a["source"], a.get("note", "")]
                    for a in d["assumptions"]], "assumptions")
    rejected = _table(["candidate", "why rejected"], [[r["id"], r["reason"]]
                                                      for r in d["rejected"]], "rejected")
    dem = d["demand"]
    summary = (f"Model <b>{_e(d['model'])}</b>; {dem['avg_rps']:.3g} requests/s on average "
               f"({dem['peak_rps']:.3g} at peak) for {dem['hours_per_day']:g} h/day, "
               f"{dem['input_tokens']:g} input + {dem['output_tokens']:g} output tokens; "
               f"horizon {d['horizon_years']:g} years; {d['samples']} Monte Carlo samples "
               f"(seed {d['seed']}). $/M tokens counts {_e(d['token_basis'])}.")
    best = opts[0] if opts else None
    headline = (f"<p class='headline'>Cheapest at P50: <b>{_e(best['id'])}</b> — "
                f"${best['usd_per_mtok_p50']:.3f} per M tokens "
                f"(P10–P90 ${best['usd_per_mtok_p10']:.3f}–${best['usd_per_mtok_p90']:.3f}), "
                f"TCO {_money(best['tco_p50'])}, lock-in premium "
                f"{_money(best['lockin_premium_usd'])}.</p>") if best else \
        "<p class='headline'>No option meets the SLOs and constraints.</p>"
    notes = "".join(f"<li>{_e(n)}</li>" for n in d.get("notes", []))
    lock_items = ", ".join(ITEM_LABEL[i] for i in LOCKIN_ITEMS)
    divs = "\n".join(f'<section><div id="fig-{k}" class="fig"></div></section>' for k in figs)
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="{CSP}">
<title>moatmeter plan — {_e(d['scenario'])}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 24px; color: #222; }}
h1 {{ font-size: 22px; }} h2 {{ font-size: 17px; margin-top: 28px; }}
table {{ border-collapse: collapse; font-size: 12px; margin: 8px 0; }}
th, td {{ border: 1px solid #ccc; padding: 3px 6px; text-align: left; vertical-align: top; }}
th {{ background: #f2f2f2; }} .headline {{ font-size: 15px; }}
table.assumptions td:nth-child(7) {{ max-width: 520px; }}
.fig {{ width: 100%; min-height: 380px; }}
</style></head>
<body>
<h1>moatmeter plan — {_e(d['scenario'])}</h1>
<p>{summary}</p>
{headline}
<p>Lock-in terms priced as their own line items: {_e(lock_items)}; realised performance per
stack is sampled from the performance model's uncertainty (eff_sigma).</p>
<ul>{notes}</ul>
<h2>Ranking (by P50 $/M tokens)</h2>
{ranking}
<h2>Figures</h2>
{divs}
{METHOD}
<h2>Probability that one option is cheaper than another</h2>
{comps}
<h2>Assumptions and sources</h2>
{assum}
<h2>Rejected candidates</h2>
{rejected}
{figure_scripts(figs)}
</body></html>
"""


def write_report(result: Any, path: str | Path) -> Path:
    """Write the report of a PlanResult (or its ``to_dict()``) to ``path``."""
    d = result.to_dict() if hasattr(result, "to_dict") else result
    d = _clean(json.loads(json.dumps(d, default=float)))
    p = Path(path)
    try:
        p.write_text(render(d), encoding="utf-8")
    except OSError as exc:
        raise InputError(f"cannot write report: {exc.strerror}", file=str(p)) from None
    return p
