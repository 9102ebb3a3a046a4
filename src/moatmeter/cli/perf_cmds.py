"""`moatmeter predict | validate | calibrate`: the performance model from the command line."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer
from rich import box
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
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


def register(app: typer.Typer) -> None:
    """Add predict, validate and calibrate to the root app."""
    app.command("predict")(predict_cmd)
    app.command("validate")(validate_cmd)
    app.command("calibrate")(calibrate_cmd)


def _ms(x: float) -> str:
    return "∞" if not math.isfinite(x) else f"{x * 1e3:,.1f} ms"


def predict_cmd(
    accelerator: Annotated[str, typer.Option("--accelerator", "-a", help="Accelerator id.")],
    stack: Annotated[str, typer.Option("--stack", "-s", help="Stack id (engine + backend).")],
    model: Annotated[str, typer.Option("--model", "-m", help="Model id.")],
    input_tokens: Annotated[int, typer.Option("--input", help="Prompt tokens per request.")],
    output_tokens: Annotated[int, typer.Option("--output", help="Generated tokens per request.")],
    count: Annotated[int, typer.Option("--count", "-n", help="Accelerators in total.")] = 1,
    tp: Annotated[int, typer.Option("--tp", help="Tensor-parallel degree per replica.")] = 1,
    pp: Annotated[int, typer.Option("--pp", help="Pipeline-parallel degree per replica.")] = 1,
    dtype: Annotated[str, typer.Option("--dtype", help="Weight precision: bf16, fp8, int4, "
                                                       "fp4, q4_k_m, …")] = "bf16",
    kv_dtype: Annotated[str | None, typer.Option("--kv-dtype", help="KV-cache precision "
                                                 "(default: 16-bit).")] = None,
    concurrency: Annotated[float | None, typer.Option("--concurrency", "-c", help="Requests "
                                                      "kept in flight (closed loop).")] = None,
    rate: Annotated[float | None, typer.Option("--rate", "-r", help="Poisson arrival rate, "
                                               "requests/s.")] = None,
    max_batch: Annotated[int | None, typer.Option("--max-batch", help="Engine limit on "
                                                  "concurrent sequences (default: the engine's "
                                                  "own, e.g. vLLM 256, or 1024 on devices of "
                                                  "70 GiB or more; SGLang 2048).")] = None,
    dp_attention: Annotated[bool, typer.Option("--dp-attention", help="Attention data-parallel "
                            "inside the TP group (SGLang --enable-dp-attention, TensorRT-LLM "
                            "enable_attention_dp): one KV-cache copy instead of a per-rank "
                            "replica (MLA), attention weights on every rank.")] = False,
    profile_tokens: Annotated[int | None, typer.Option(
        "--profile-tokens", help="Tokens of the engine's start-up profiling pass, whose "
        "activations it keeps out of the KV cache: vLLM V0 without chunked prefill profiles "
        "max(max_model_len, 2048). Default: a small chunk, as current engines do.")] = None,
    spec_tokens: Annotated[int, typer.Option(
        "--spec-tokens", help="Speculative decoding: tokens drafted per step (MTP layers, EAGLE "
        "or draft-model tokens; 0 = off).")] = 0,
    spec_accept: Annotated[float | None, typer.Option(
        "--spec-accept", help="Per-token probability that a drafted token is accepted, "
        "in [0, 1).")] = None,
    spec_accept_len: Annotated[float | None, typer.Option(
        "--spec-accept-len", help="Or the engine's measured mean acceptance length: tokens per "
        "step, 1 to spec-tokens + 1 (TensorRT-LLM and SGLang print it).")] = None,
    spec_draft_cost: Annotated[float | None, typer.Option(
        "--spec-draft-cost", help="Drafting one token as a fraction of a decode step. Default "
        "1/layers (one MTP block); a separate draft model: its parameters over the "
        "target's.")] = None,
    eager: Annotated[bool, typer.Option(
        "--enforce-eager", help="The engine runs without CUDA graphs (vLLM --enforce-eager, "
        "TensorRT-LLM's early PyTorch backend): decode steps pay the eager-execution "
        "overhead too.")] = False,
    recv_interval: Annotated[int, typer.Option(
        "--recv-interval", help="The scheduler takes in new requests every N decode steps while "
        "a batch runs (SGLang --scheduler-recv-interval; 1 = every step).")] = 1,
    batch_wait_iters: Annotated[int, typer.Option(
        "--batch-wait-iters", help="TensorRT-LLM delayed batching: a new prompt waits up to N "
        "engine steps (batch_wait_timeout_iters; 0 = off).")] = 0,
    batch_wait_tokens: Annotated[float | None, typer.Option(
        "--batch-wait-tokens", help="...or until this many prompt tokens have gathered "
        "(batch_wait_max_tokens_ratio x max_num_tokens; default: the step cap alone).")] = None,
    overlap: Annotated[bool | None, typer.Option(
        "--overlap-scheduler/--no-overlap-scheduler", help="The engine plans the next step while "
        "one runs (SGLang's overlap scheduler, TensorRT-LLM's PyTorch backend, vLLM "
        "--async-scheduling): under load a new prompt's first token comes two steps later; "
        "without it vLLM's per-sequence CPU work sits between GPU steps. "
        "Default: the engine's current default (on for those three).", show_default=False)] = None,
    calibration: CalibrationOpt = None,
    catalog: CatalogOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Predict what one deployment delivers: memory, TTFT, TPOT, tokens/s, bottleneck, band.

    With neither --concurrency nor --rate it predicts offline maximum throughput.
    Throughputs are for all --count devices (count / (tp·pp) data-parallel replicas).

    Example:  moatmeter predict --accelerator h100-sxm --count 8 --tp 8 --stack vllm-cuda
    --model llama-3.1-70b --dtype bf16 --input 1024 --output 256 --concurrency 32
    """
    from moatmeter.perf import predict_deployment
    from moatmeter.perf.calibrate import DECODE_SPREAD, LATENCY_SPREAD, PREFILL_WIDEN

    if input_tokens < 0:
        raise InputError(f"--input must be ≥ 0, got {input_tokens}", field="input")
    if output_tokens < 1:
        raise InputError(f"--output must be ≥ 1, got {output_tokens}", field="output")
    cat = get_catalog(catalog)
    p = predict_deployment(cat, accelerator=accelerator, count=count, tp=tp, pp=pp, stack=stack,
                           model=model, weight_dtype=dtype, kv_dtype=kv_dtype,
                           input_tokens=input_tokens, output_tokens=output_tokens,
                           concurrency=concurrency, rate=rate, max_batch=max_batch,
                           dp_attention=dp_attention, profile_tokens=profile_tokens,
                           spec_tokens=spec_tokens, spec_accept=spec_accept,
                           spec_accept_len=spec_accept_len, spec_draft_cost=spec_draft_cost,
                           eager=eager, recv_interval=recv_interval,
                           batch_wait_iters=batch_wait_iters, batch_wait_tokens=batch_wait_tokens,
                           overlap=overlap, calib=get_calibration(calibration))
    if json_out:
        print_json(p.to_dict())
        return
    head = (f"{p.model} on {p.devices}× {p.accelerator} (TP{p.tp} PP{p.pp}) with {p.stack}, "
            f"weights {p.weight_dtype} (math {p.compute_dtype or '-'}), KV {p.kv_dtype}; {p.load}")
    console.print(f"[bold]{head}[/]", highlight=False)
    m = p.memory
    console.print(f"memory per device: {m.device_gb:.1f} GiB, usable {m.usable_gb:.1f}, weights "
                  f"{m.weights_gb:.1f}, KV pool {m.kv_pool_gb:.1f} GiB; KV "
                  f"{m.kv_bytes_per_token / 1024:.0f} KiB/token → {m.max_sequences} sequences "
                  f"at {int(input_tokens + output_tokens)} tokens", highlight=False)
    if not p.feasible:
        console.print(f"[bold red]infeasible:[/] {p.reason}", highlight=False)
        return
    t = Table(box=box.SIMPLE_HEAD, pad_edge=False)
    for c in ("", "mean", "p95", "P10", "P90"):
        t.add_column(c, justify="right" if c else "left")
    t.add_row("TTFT", _ms(p.ttft_s), _ms(p.ttft_p95_s), _ms(p.ttft_band.p10), _ms(p.ttft_band.p90))
    t.add_row("TPOT", _ms(p.tpot_s), _ms(p.tpot_p95_s), _ms(p.tpot_band.p10), _ms(p.tpot_band.p90))
    b = p.output_tokens_per_s_band
    t.add_row("output tok/s", f"{p.output_tokens_per_s:,.0f}", "", f"{b.p10:,.0f}",
              f"{b.p90:,.0f}")
    # total tok/s and requests/s are fixed multiples of output tok/s: the same relative band
    lo, hi = ((b.p10 / p.output_tokens_per_s, b.p90 / p.output_tokens_per_s)
              if p.output_tokens_per_s > 0 else (0.0, 0.0))
    t.add_row("total tok/s", f"{p.total_tokens_per_s:,.0f}", "",
              f"{p.total_tokens_per_s * lo:,.0f}", f"{p.total_tokens_per_s * hi:,.0f}")
    t.add_row("requests/s", f"{p.requests_per_s:,.2f}", "", f"{p.requests_per_s * lo:,.2f}",
              f"{p.requests_per_s * hi:,.2f}")
    console.print(t)
    console.print(f"bottleneck: [bold]{p.bottleneck}[/]; saturation {p.saturation_rps:,.2f} req/s; "
                  f"efficiencies compute {p.eff_compute:.2f}, memory {p.eff_memory:.2f}, overhead "
                  f"{p.overhead_ms:.1f} ms/step; σ {p.sigma:.2f}, ×{DECODE_SPREAD:g} × (1 + "
                  f"{PREFILL_WIDEN:g} × the share of the request time before the first token, "
                  f"{p.prefill_share:.2f} here) for throughput, "
                  f"×{LATENCY_SPREAD['tpot']:g} for TPOT, ×{LATENCY_SPREAD['ttft']:g} for TTFT "
                  "(P10–P90 bands)",
                  highlight=False)
    console.print(f"calibration: {p.calibration_note}", highlight=False)
    for n in p.notes:
        console.print(f"note: {n}", highlight=False)


def _progress() -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), console=err_console, transient=True)


def _pct(x: Any) -> str:
    return "-" if x is None else f"{100 * x:.1f} %"


def validate_cmd(
    observations: Annotated[list[Path] | None, typer.Option(
        "--observations", "-o", help="Observation CSV(s) in the data/README.md format "
        "(default: the bundled set).")] = None,
    cv: Annotated[bool, typer.Option("--cv", help="Leave-one-source-out cross-validation: "
                                     "refit without each source, predict its rows.")] = False,
    calibration: CalibrationOpt = None,
    catalog: CatalogOpt = None,
    report: Annotated[Path | None, typer.Option(
        "--report", help="Also write a self-contained HTML page: predicted vs measured with "
        "bands, error distribution per vendor, breakdowns, worst rows.")] = None,
    jobs: Annotated[int | None, typer.Option(
        "--jobs", "-j", help="Worker processes for --cv, one fold each at a time "
        "(default: the CPUs available, at most 8); the result does not depend on it.")] = None,
    json_out: JsonOpt = False,
) -> None:
    """Predict every observation row and compare with the measured value (APE).

    Rows that cannot be modelled (unknown ids, unsupported metric or scenario) are skipped with
    a reason. --cv refits the calibration without each source in turn, so no row is predicted by
    a fit that saw it; the summary then breaks the error down per vendor, stack and metric.

    Example:  moatmeter validate --observations my_runs.csv --json

    Example:  moatmeter validate --cv --report cv.html
    """
    from moatmeter.perf.observations import bundled_observations, read_observations
    from moatmeter.perf.validate import default_jobs, loso_cv, validate_rows

    if jobs is not None and jobs < 1:
        raise InputError(f"--jobs must be ≥ 1, got {jobs}", field="jobs")
    cat = get_catalog(catalog)
    files = observations or [bundled_observations()]
    rows: list[dict[str, str]] = []
    for f in files:
        rows += read_observations(f)
    if cv:
        with _progress() as prog:
            task = prog.add_task("cross-validating (leave one source out)", total=None)
            res = loso_cv(cat, rows, progress=lambda k, n: prog.update(task, completed=k, total=n),
                          details=report is not None, jobs=jobs or default_jobs())
    else:
        res = validate_rows(cat, rows, get_calibration(calibration), details=report is not None)
    if report is not None:
        from moatmeter.report.validation import write_validation_report

        names = ", ".join(f.name for f in files)
        write_validation_report(res, report, f"{names}{' (leave-one-source-out)' if cv else ''}")
        res.pop("details")
        err_console.print(f"report: {report}", highlight=False)
    if json_out:
        print_json(res)
        return
    s = res["summary"]
    t = Table(box=box.SIMPLE_HEAD, pad_edge=False, title="observations")
    for c, j in (("id", "left"), ("predicted", "right"), ("measured", "right"), ("APE", "right")):
        t.add_column(c, justify=j)  # type: ignore[arg-type]
    for r in res["rows"]:
        t.add_row(r["id"], f"{r['predicted']:,.4g}", f"{r['measured']:,.4g}", _pct(r["ape"]))
    console.print(t)
    kind = "leave-one-source-out " if cv else ""
    console.print(f"{kind}median APE {_pct(s['median_ape'])}, p90 {_pct(s['p90_ape'])} over "
                  f"{s['n']} rows; {len(s['skipped'])} skipped", highlight=False)
    for name, groups in s.get("by", {}).items():
        if name in ("vendor", "stack"):
            parts = ", ".join(f"{g} {_pct(v['median_ape'])}/{_pct(v['p90_ape'])} (n={v['n']})"
                              for g, v in groups.items())
            console.print(f"per {name} (median/p90): {parts}", highlight=False)
    if "error_structure" in s:
        from moatmeter.perf.error_structure import variance_split

        st = s["error_structure"]
        console.print(f"held-out error: {variance_split(st)}; removing each source's own median "
                      f"error would leave p90 "
                      f"{_pct(st['oracle_offset']['per_document']['p90_ape'])}", highlight=False)
    for sk in s["skipped"]:
        console.print(f"skipped {sk['id']}: {sk['reason']}", highlight=False, style="dim")


def calibrate_cmd(
    observations: Annotated[list[Path] | None, typer.Option(
        "--observations", "-o", help="Extra observation CSV(s) to fit on, added to the "
        "bundled set.")] = None,
    from_store: Annotated[Path | None, typer.Option("--from-store", help="A moatmeter bench "
                          "SQLite store whose runs become observations.")] = None,
    no_bundled: Annotated[bool, typer.Option("--no-bundled", help="Fit only on the files "
                          "given, not on the bundled observations.")] = False,
    out: Annotated[Path | None, typer.Option("--out", help="Where to write the calibration "
                   "JSON (default: the bundled perf/calibration.json).")] = None,
    catalog: CatalogOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Refit stack × accelerator-family efficiencies to observations and write them.

    The fit is hierarchical (global, vendor line, family, engine, stack, pair, with offsets per
    model architecture class and weight format on each chip family, on each pair and everywhere),
    so pairs without data fall back to their nearest relatives with a wider uncertainty.
    `predict`, `validate` and `plan` read the bundled file unless told otherwise (--calibration).

    Example:  moatmeter calibrate --observations my_runs.csv --from-store runs.db --out cal.json
    """
    from moatmeter.perf.calibrate import bundled_path
    from moatmeter.perf.observations import bundled_observations, read_observations
    from moatmeter.perf.validate import calibrate_rows

    cat = get_catalog(catalog)
    rows: list[dict[str, str]] = []
    files = [] if no_bundled else [bundled_observations()]
    for f in files + list(observations or []):
        rows += read_observations(f)
    if from_store is not None:
        rows += _store_rows(from_store)
    if not rows:
        raise InputError("no observations to fit (give --observations or --from-store)")
    with _progress() as prog:
        prog.add_task(f"fitting {len(rows)} observations", total=None)
        fitted = calibrate_rows(cat, rows, meta={"n_rows": len(rows)})
    cal = fitted.calibration
    cal.meta["n_modelled"] = len(fitted.prepared.obs)
    dest = out or bundled_path()
    cal.save(dest)
    resid = np.abs(np.expm1(fitted.log_resid))
    summary = {"written": str(dest), "modelled": len(fitted.prepared.obs),
               "skipped": fitted.skipped, "in_sample_median_ape": float(np.median(resid)),
               "in_sample_p90_ape": float(np.percentile(resid, 90)), "pairs": cal.pair_table()}
    if json_out:
        print_json(summary)
        return
    t = Table(box=box.SIMPLE_HEAD, pad_edge=False,
              title="fitted efficiencies per stack|family (its most-measured model class and "
                    "weight format)")
    for c in ("pair", "class", "format", "eff compute", "eff memory", "overhead ms", "σ", "n"):
        t.add_column(c, justify="left" if c in ("pair", "class", "format") else "right")
    for k, v in summary["pairs"].items():
        t.add_row(k, v["arch"], v["dtype"], f"{v['eff_compute']:.3f}", f"{v['eff_memory']:.3f}",
                  f"{v['overhead_ms']:.2f}", f"{v['sigma']:.2f}", str(v["n"]))
    console.print(t)
    console.print(f"wrote {dest}: {summary['modelled']} rows modelled, {len(fitted.skipped)} "
                  f"skipped; in-sample median APE {_pct(summary['in_sample_median_ape'])}, p90 "
                  f"{_pct(summary['in_sample_p90_ape'])}", highlight=False)


def _store_rows(db: Path) -> list[dict[str, str]]:
    """Observation rows from a bench store (the bench part provides the reader)."""
    if not db.exists():
        raise InputError("store file not found", file=str(db))
    try:
        from moatmeter.bench.store import observations_from_store
    except ImportError:
        raise InputError("this installation cannot read bench stores "
                         "(moatmeter.bench.store.observations_from_store is missing)",
                         file=str(db)) from None
    from moatmeter.perf.observations import OPTIONAL, REQUIRED

    out = []
    for r in observations_from_store(str(db)):
        row = {k: "" if v is None else str(v) for k, v in r.items()}
        for c in REQUIRED + OPTIONAL:
            row.setdefault(c, "")
        out.append(row)
    return out
