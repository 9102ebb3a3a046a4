"""`moatmeter plan`: SLO-feasible deployments ranked by TCO with lock-in priced in."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from moatmeter.cli.common import (
    CalibrationOpt,
    CatalogOpt,
    JsonOpt,
    console,
    err_console,
    get_calibration,
    get_catalog,
    print_json,
)
from moatmeter.errors import InputError
from moatmeter.fmt import money as _money

HELP = """Rank SLO-feasible deployments (buy, rent, hosted API) by P50 $/M tokens, with TCO
P10-P90 from Monte Carlo and the lock-in premium as its own column.

SCENARIO is a YAML file (see examples/); flags override its fields, and omitted keys take cited
defaults.

Example:  moatmeter plan examples/sovereign-bank-70b.yaml --report report.html

Example:  moatmeter plan --model llama-3.1-8b --requests-per-s 20 --input-tokens 500
--output-tokens 200 --ttft 1 --tpot 0.05 --json
"""


def _per_m(x: float) -> str:
    return "-" if x != x else (f"${x:,.3f}" if x < 10 else f"${x:,.2f}")


def render_table(result, top: int = 15) -> Table:
    scn = result.scenario
    t = Table(title=f"{scn.name}: {result.model}, {result.demand['avg_rps']:.3g} req/s avg "
                    f"(peak {result.demand['peak_rps']:.3g}), {scn.horizon_years:g} years, "
                    f"{result.samples} samples",
              title_justify="left")
    for col, just in [("#", "right"), ("option", "left"), ("kind", "left"), ("GPUs", "right"),
                      ("kW", "right"), ("TCO P50", "right"), ("TCO P10-P90", "right"),
                      ("$/M tok P50", "right"), ("$/M P10-P90", "right"),
                      ("lock-in premium", "right"), ("tok/s/user", "right"), ("Pareto", "center")]:
        t.add_column(col, justify=just)  # type: ignore[arg-type]
    for o in result.options[:top]:
        t.add_row(
            str(o.rank), o.id, o.kind, str(o.count) if o.count else "-",
            f"{o.power_kw:.1f}" if o.kind == "own" else "-",
            _money(o.tco_p50), f"{_money(o.tco_p10)}-{_money(o.tco_p90)}",
            _per_m(o.usd_per_mtok_p50),
            f"{_per_m(o.usd_per_mtok_p10)}-{_per_m(o.usd_per_mtok_p90)}",
            _money(o.lockin_premium_usd),
            f"{o.interactivity_tok_s:.0f}" if o.interactivity_tok_s else "-",
            "*" if o.pareto else "")
    return t


def register(app: typer.Typer) -> None:
    """Add `plan` to the root app."""

    @app.command("plan", help=HELP)
    def plan_cmd(
        scenario: Annotated[Path | None, typer.Argument(
            help="Scenario YAML file (model, traffic, slo, horizon_years, site, constraints, "
                 "incumbency, speculative).", show_default=False)] = None,
        model: Annotated[str | None, typer.Option(help="Model id or config.json path.")] = None,
        requests_per_s: Annotated[float | None, typer.Option(
            help="Average request rate during active hours.")] = None,
        tokens_per_day: Annotated[float | None, typer.Option(
            help="Input+output tokens per day (instead of --requests-per-s).")] = None,
        input_tokens: Annotated[float | None, typer.Option(help="Mean prompt tokens.")] = None,
        output_tokens: Annotated[float | None, typer.Option(help="Mean output tokens.")] = None,
        peak_to_average: Annotated[float | None, typer.Option(help="Peak / average rate.")] = None,
        hours_per_day: Annotated[float | None, typer.Option(help="Active hours per day.")] = None,
        ttft: Annotated[float | None, typer.Option(help="SLO: p95 time to first token, s.")] = None,
        tpot: Annotated[float | None, typer.Option(help="SLO: p95 time per output token, s.")
                        ] = None,
        horizon_years: Annotated[float | None, typer.Option(help="Years of service.")] = None,
        sovereign: Annotated[bool | None, typer.Option(
            "--sovereign/--no-sovereign", help="Air-gapped: no rental or API options.",
            show_default=False)] = None,
        electricity: Annotated[float | None, typer.Option(help="USD per kWh.")] = None,
        pue: Annotated[float | None, typer.Option(help="Power usage effectiveness.")] = None,
        colocation: Annotated[float | None, typer.Option(
            help="Colocation USD per kW-month (0: own data centre).")] = None,
        cost_of_capital: Annotated[float | None, typer.Option(help="Annual rate, e.g. 0.08.")
                                   ] = None,
        vendors: Annotated[str | None, typer.Option(
            help="Allowed vendors, comma-separated (nvidia,amd,intel).")] = None,
        max_power_kw: Annotated[float | None, typer.Option(help="Power cap, kW.")] = None,
        max_rack_units: Annotated[float | None, typer.Option(
            help="Rack-space cap in U (servers only; a 42U rack = 42).")] = None,
        incumbent_stack: Annotated[str | None, typer.Option(
            help="Stack in production today, e.g. trtllm-cuda.")] = None,
        samples: Annotated[int, typer.Option(help="Monte Carlo samples.")] = 10_000,
        seed: Annotated[int, typer.Option(help="Random seed (same seed, same numbers).")] = 0,
        top: Annotated[int, typer.Option(help="Rows in the terminal table.")] = 15,
        report: Annotated[Path | None, typer.Option(
            help="Write a self-contained HTML report here.")] = None,
        json_out: JsonOpt = False,
        calibration: CalibrationOpt = None,
        catalog: CatalogOpt = None,
    ) -> None:
        from moatmeter.plan import CALIBRATION_FILE_NOTE, plan

        overrides = {
            "model": model, "traffic.requests_per_s": requests_per_s,
            "traffic.tokens_per_day": tokens_per_day, "traffic.input_tokens": input_tokens,
            "traffic.output_tokens": output_tokens, "traffic.peak_to_average": peak_to_average,
            "traffic.hours_per_day": hours_per_day, "slo.ttft_p95_s": ttft,
            "slo.tpot_p95_s": tpot, "horizon_years": horizon_years, "site.sovereign": sovereign,
            "site.electricity_usd_per_kwh": electricity, "site.pue": pue,
            "site.colocation_usd_per_kw_month": colocation,
            "site.cost_of_capital": cost_of_capital,
            "constraints.vendors": [v.strip() for v in vendors.split(",") if v.strip()]
            if vendors else None,
            "constraints.max_power_kw": max_power_kw,
            "constraints.max_rack_units": max_rack_units, "incumbency.stack": incumbent_stack,
        }
        # A rate flag replaces the file's rate of the other kind.
        if requests_per_s is not None or tokens_per_day is not None:
            overrides["traffic.requests_per_s" if tokens_per_day is not None
                      else "traffic.tokens_per_day"] = _DROP
        if samples < 100:
            raise InputError("--samples must be at least 100")
        file = str(scenario) if scenario else "command line"
        scn = _load(scenario, overrides)
        cat = get_catalog(catalog)
        calib = get_calibration(calibration)
        t0 = time.perf_counter()
        with err_console.status("planning…") as status:
            result = plan(scn, cat, samples=samples, seed=seed, file=file,
                          progress=lambda msg: status.update(msg), calib=calib)
        elapsed = time.perf_counter() - t0
        if report is not None:
            from moatmeter.report.html import write_report

            write_report(result, report)
        if json_out:
            d = result.to_dict()
            d["elapsed_s"] = elapsed
            if report is not None:
                d["report"] = str(report)
            print_json(d)
            return
        out = console if console.is_terminal else Console(width=180)
        out.print(render_table(result, top))
        if not result.options:
            out.print("[bold red]No option meets the SLOs and constraints.[/] First reasons:")
            for r in result.rejected[:8]:
                out.print(f"  {r.id}: {r.reason}", highlight=False, markup=False)
        rej = result.rejected
        out.print(f"{len(result.options)} options ranked, {len(rej)} rejected "
                  f"(see --json or the report for every reason) in {elapsed:.1f} s.")
        shown = [c for i, c in enumerate(result.comparisons)
                 if i < 2 or "NVIDIA" in c.get("note", "")]
        for c in shown:
            note = f"  [{c['note']}]" if c.get("note") else ""
            out.print(f"P({c['a']} cheaper than {c['b']}) = {c['p_a_beats_b']:.2f}{note}",
                      highlight=False, markup=False)
        for n in result.notes:
            if n.startswith(("speculative decoding", CALIBRATION_FILE_NOTE)):
                out.print(f"note: {n}", highlight=False, markup=False)
        if report is not None:
            out.print(f"report: {report}")

    _ = plan_cmd


class _Drop:
    """Marker: remove this key from the file's mapping."""


_DROP = _Drop()


def _load(path: Path | None, overrides: dict):
    from moatmeter.scenario import nest, read_scenario_file, scenario_from_dict

    raw = read_scenario_file(path) if path is not None else {}
    file = str(path) if path is not None else "command line"
    drops = [k for k, v in overrides.items() if v is _DROP]
    for k in drops:
        sec, key = k.split(".")
        if isinstance(raw.get(sec), dict):
            raw[sec] = {kk: vv for kk, vv in raw[sec].items() if kk != key}
    from moatmeter.scenario import merge

    raw = merge(raw, nest({k: v for k, v in overrides.items() if v is not _DROP}))
    return scenario_from_dict(raw, file=file)
