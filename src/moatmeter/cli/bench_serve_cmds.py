"""`moatmeter bench serve|list|show|export|compare`: measure servers, keep every record."""

from __future__ import annotations

import csv
import io
import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from moatmeter.bench import store
from moatmeter.bench.metrics import PEER_NAMES, aiperf_records, aiperf_summary
from moatmeter.bench.observations import compare
from moatmeter.bench.serve import ENDPOINTS, ServeSettings, run, run_summary
from moatmeter.bench.serve import Progress as ServeProgress
from moatmeter.cli.common import CatalogOpt, JsonOpt, console, err_console, get_catalog, print_json
from moatmeter.errors import InputError

DbOpt = Annotated[Path, typer.Option("--db", envvar="MOATMETER_DB",
                                     help="SQLite results store (created if missing).")]
DEFAULT_DB = Path("moatmeter.db")


def register(app: typer.Typer, bench_app: typer.Typer) -> None:
    """Add this module's commands to the root app and the `bench` group."""
    bench_app.command("serve")(serve_cmd)
    bench_app.command("list")(list_cmd)
    bench_app.command("show")(show_cmd)
    bench_app.command("export")(export_cmd)
    bench_app.command("compare")(compare_cmd)


def _parse_rates(text: str | None) -> list[float]:
    if not text:
        return []
    try:
        rates = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise InputError(f"--sweep-rates: '{text}' is not a comma-separated list of numbers") \
            from None
    if not rates or any(r <= 0 for r in rates):
        raise InputError(f"--sweep-rates: '{text}': every rate must be positive")
    return rates


def _declared(catalog_dir: Path | None, **kw: Any) -> dict[str, Any]:
    d = {k: v for k, v in kw.items() if v is not None}
    if not d:
        return {}
    cat = get_catalog(catalog_dir)
    for kind, key in (("accelerators", "accelerator"), ("stacks", "stack"),
                      ("models", "catalog_model")):
        if key in d:
            try:
                cat.get(kind, d[key])
            except Exception as exc:
                raise InputError(f"--{key.replace('_', '-')}: {exc}") from None
    if d.get("count") is not None and d["count"] < 1:
        raise InputError("--count: must be at least 1")
    return d


def _fmt(v: Any, nd: int = 1) -> str:
    return "—" if v is None else f"{v:,.{nd}f}"


def _print_summary(s: dict[str, Any]) -> None:
    t = Table(title=f"run {s['run_id']}  ({s['status']}; {s['completed']}/{s['requested']} ok)")
    t.add_column("metric")
    for c in ("mean", "p50", "p90", "p95", "p99"):
        t.add_column(c, justify="right")
    for k, label in (("ttft_ms", "TTFT ms"), ("itl_ms", "ITL ms (chunk gap)"),
                     ("tpot_ms", "TPOT ms"), ("e2e_ms", "E2E ms")):
        t.add_row(label, *(_fmt(s[k][c], 2) for c in ("mean", "p50", "p90", "p95", "p99")))
    console.print(t)
    ch = s["concurrency_held"]
    console.print(
        f"requests/s {_fmt(s['requests_per_s'], 2)} · output tokens/s "
        f"{_fmt(s['output_tokens_per_s'])} · total tokens/s {_fmt(s['total_tokens_per_s'])} · "
        f"concurrency held mean {_fmt(ch['mean'], 2)} max {ch['max']:.0f} · tokens counted from "
        f"{s['token_count_source'] or '—'}")
    if "goodput_rps" in s:
        console.print(f"goodput {_fmt(s['goodput_rps'], 2)} req/s "
                      f"({_fmt((s['slo']['fraction_met'] or 0) * 100)} % within SLO)")
    if s["errors"]:
        errs = ", ".join(f"{k}: {v}" for k, v in s["errors"].items())
        console.print(f"[red]errors[/] {errs}")


def serve_cmd(
    url: Annotated[str | None, typer.Option("--url", help="Server base URL "
                   "(http://HOST:PORT) or the full endpoint URL. Only this host is contacted.")]
    = None,
    model: Annotated[str | None, typer.Option("--model", help="Model name the server expects.")]
    = None,
    endpoint: Annotated[str, typer.Option(
        help=f"API: {', '.join(f'{k} ({v})' for k, v in ENDPOINTS.items())}.")] = "completions",
    requests: Annotated[int, typer.Option("--requests", "-n", help="Measured requests "
                        "(warm-up excluded).")] = 100,
    concurrency: Annotated[int | None, typer.Option(
        help="Requests kept in flight (fixed-concurrency mode); with --rate, a cap.")] = None,
    rate: Annotated[float | None, typer.Option(help="Poisson arrival rate, requests/s.")] = None,
    sweep_rates: Annotated[str | None, typer.Option(
        help="Comma-separated rates: one run per rate, e.g. 1,2,4,8.")] = None,
    input_tokens: Annotated[int, typer.Option(help="Mean prompt length (tokens).")] = 128,
    input_dist: Annotated[str, typer.Option(help="fixed, uniform or normal.")] = "fixed",
    input_spread: Annotated[float, typer.Option(
        help="Half-width (uniform) or standard deviation (normal) of the prompt length.")] = 0.0,
    output_tokens: Annotated[int | None, typer.Option(
        help="Mean output length (max_tokens); default 128, or the dataset's answers.")] = None,
    output_dist: Annotated[str, typer.Option(help="fixed, uniform or normal.")] = "fixed",
    output_spread: Annotated[float, typer.Option(help="Spread of the output length.")] = 0.0,
    dataset: Annotated[Path | None, typer.Option(
        help="Local ShareGPT-style JSON file of conversations to draw prompts from.")] = None,
    warmup: Annotated[int, typer.Option(help="Warm-up requests before measuring (not "
                      "recorded).")] = 0,
    timeout: Annotated[float, typer.Option(
        help="Seconds of silence from the server before a request counts as a timeout.")] = 60.0,
    seed: Annotated[int, typer.Option(help="Seed of prompts and arrivals.")] = 0,
    ignore_eos: Annotated[bool, typer.Option(
        "--ignore-eos/--no-ignore-eos", help="Ask the server to generate exactly max_tokens.")]
    = True,
    slo_ttft_ms: Annotated[float | None, typer.Option(help="TTFT SLO for goodput, ms.")] = None,
    slo_tpot_ms: Annotated[float | None, typer.Option(help="TPOT SLO for goodput, ms.")] = None,
    api_key_env: Annotated[str | None, typer.Option(
        help="Name of the environment variable holding the API key (never stored).")] = None,
    resume: Annotated[str | None, typer.Option(
        help="Continue an interrupted run (its stored settings are used).")] = None,
    accelerator: Annotated[str | None, typer.Option(
        help="Declare the hardware behind the server: catalog accelerator id.")] = None,
    count: Annotated[int | None, typer.Option(help="Declared number of accelerators.")] = None,
    tp: Annotated[int | None, typer.Option(help="Declared tensor parallelism.")] = None,
    pp: Annotated[int | None, typer.Option(help="Declared pipeline parallelism.")] = None,
    stack: Annotated[str | None, typer.Option(help="Declared catalog stack id.")] = None,
    dtype: Annotated[str | None, typer.Option(help="Declared weight dtype.")] = None,
    kv_dtype: Annotated[str | None, typer.Option(help="Declared KV-cache dtype.")] = None,
    catalog_model: Annotated[str | None, typer.Option(
        help="Catalog model id of the served model (for calibrate/compare).")] = None,
    db: DbOpt = DEFAULT_DB,
    json_out: JsonOpt = False,
    catalog: CatalogOpt = None,
) -> None:
    """Drive a streaming inference server and store every request in SQLite as it completes.

    Each request is committed when it ends, failures included (connect, disconnect, timeout,
    http, broken_stream, malformed_event); Ctrl-C stops cleanly and `--resume RUN` finishes the
    run without losing or repeating a request.

    Example:  moatmeter bench serve --url http://127.0.0.1:8000 --model m --concurrency 8
    --requests 200 --input-tokens 512 --output-tokens 128 --db runs.db --json
    """
    if resume:
        settings_list: list[ServeSettings | None] = [None]
    else:
        if not url or not model:
            raise InputError("--url and --model are required (or --resume RUN)")
        rates = _parse_rates(sweep_rates)
        if rates and rate is not None:
            raise InputError("--rate and --sweep-rates are exclusive")
        base = dict(url=url, model=model, endpoint=endpoint, requests=requests,
                    concurrency=concurrency, input_tokens=input_tokens, input_dist=input_dist,
                    input_spread=input_spread, output_tokens=output_tokens,
                    output_dist=output_dist, output_spread=output_spread,
                    dataset=str(dataset) if dataset else None, warmup=warmup, timeout_s=timeout,
                    seed=seed, ignore_eos=ignore_eos, slo_ttft_ms=slo_ttft_ms,
                    slo_tpot_ms=slo_tpot_ms, api_key_env=api_key_env)
        if concurrency is None and rate is None and not rates:
            base["concurrency"] = 1
        settings_list = [ServeSettings(**base, rate=r) for r in (rates or [rate])]
        for s in settings_list:
            assert s is not None
            s.validate()
    declared = {} if resume else _declared(
        catalog, accelerator=accelerator, count=count, tp=tp, pp=pp, stack=stack, dtype=dtype,
        kv_dtype=kv_dtype, catalog_model=catalog_model)
    results = []
    interrupted = False
    for s in settings_list:
        if s is None:  # resume: what is left of the stored run
            assert resume is not None
            conn = store.open_existing(db)
            try:
                total = store.get_run(conn, resume).requested - len(
                    store.done_indices(conn, resume))
            finally:
                conn.close()
        else:
            total = s.requests
        show = err_console.is_terminal
        with Progress(TextColumn("[bold]bench serve"), BarColumn(), MofNCompleteColumn(),
                      TextColumn("errors {task.fields[err]}"), TimeElapsedColumn(),
                      console=err_console, transient=True, disable=not show) as bar:
            task = bar.add_task("run", total=total, err=0)
            errs = 0

            def on_record(rec: Any, bar: Progress = bar, task: Any = task) -> None:
                nonlocal errs
                errs += 0 if rec.ok else 1
                bar.update(task, advance=1, err=errs)

            res = run(s if s else ServeSettings(url="http://x", model=""), db, declared=declared,
                      resume=resume, progress=ServeProgress(total, on_record),
                      handle_sigint=True)
        results.append(res)
        if res.interrupted:
            interrupted = True
            break
    if json_out:
        if len(results) == 1:
            print_json(results[0].summary)
        else:
            print_json({"runs": [r.summary for r in results]})
    else:
        for r in results:
            _print_summary(r.summary)
    if interrupted:
        err_console.print(f"interrupted: everything finished so far is stored; continue with "
                          f"`moatmeter bench serve --resume {results[-1].run_id} --db {db}`")
        raise typer.Exit(130)


def list_cmd(db: DbOpt = DEFAULT_DB, json_out: JsonOpt = False) -> None:
    """List the serve runs in a store.

    Example:  moatmeter bench list --db runs.db --json
    """
    conn = store.open_existing(db)
    try:
        runs = store.list_runs(conn)
    finally:
        conn.close()
    if json_out:
        print_json(runs)
        return
    t = Table(title=f"serve runs in {db}")
    for c in ("run_id", "created", "status", "model", "url", "mode", "ok", "errors"):
        t.add_column(c)
    for r in runs:
        mode = f"rate {r['rate']}" if r["rate"] else f"conc {r['concurrency']}"
        t.add_row(r["run_id"], r["created_at"], r["status"], r["model"], r["url"], mode,
                  f"{r['completed']}/{r['requested']}", str(r["errors"]))
    console.print(t)


RunArg = Annotated[str, typer.Argument(help="Run id (see `moatmeter bench list`).")]


def show_cmd(run_id: RunArg, db: DbOpt = DEFAULT_DB, json_out: JsonOpt = False) -> None:
    """Show one run's metrics (the same object `bench serve --json` prints), with settings.

    Example:  moatmeter bench show 20250101-120000-abc123 --db runs.db
    """
    conn = store.open_existing(db)
    try:
        s = run_summary(conn, run_id)
        row = store.get_run(conn, run_id)
    finally:
        conn.close()
    if json_out:
        print_json({**s, "settings": row.settings, "declared": row.declared,
                    "server_info": row.server_info, "client_info": row.client_info,
                    "peer_names": PEER_NAMES})
        return
    _print_summary(s)
    console.print(f"settings: {json.dumps(row.settings)}", highlight=False)
    if row.declared:
        console.print(f"declared: {json.dumps(row.declared)}", highlight=False)


def export_cmd(
    run_ids: Annotated[list[str] | None, typer.Argument(help="Run ids (default: all runs).")]
    = None,
    fmt: Annotated[str, typer.Option("--format", help="json or csv.")] = "json",
    output: Annotated[Path | None, typer.Option("--output", "-o", help="File (default: stdout).")]
    = None,
    db: DbOpt = DEFAULT_DB,
) -> None:
    """Export per-request records under aiperf's field names (CSV or JSON).

    JSON holds, per run, its settings, the per-request records and an aiperf-style summary;
    CSV holds one row per request with a run_id column.

    Example:  moatmeter bench export RUN --format csv -o run.csv --db runs.db
    """
    if fmt not in ("json", "csv"):
        raise InputError(f"--format: '{fmt}' must be json or csv")
    conn = store.open_existing(db)
    try:
        ids = store.resolve_run_ids(conn, run_ids)
        runs = []
        for rid in ids:
            row = store.get_run(conn, rid)
            recs = store.load_requests(conn, rid)
            runs.append({"run_id": rid, "url": row.url, "model": row.model,
                         "endpoint": row.endpoint, "status": row.status,
                         "settings": row.settings, "declared": row.declared,
                         "summary": aiperf_summary(recs), "records": aiperf_records(recs)})
    finally:
        conn.close()
    if fmt == "json":
        text = json.dumps({"runs": runs}, indent=1)
    else:
        buf = io.StringIO()
        fields = ["run_id", *(runs[0]["records"][0].keys() if runs and runs[0]["records"]
                              else [])]
        w = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
        w.writeheader()
        for r in runs:
            for rec in r["records"]:
                rec = dict(rec)
                if rec.get("inter_chunk_latency") is not None:
                    rec["inter_chunk_latency"] = json.dumps(rec["inter_chunk_latency"])
                w.writerow({"run_id": r["run_id"], **rec})
        text = buf.getvalue()
    if output:
        try:
            output.write_text(text)
        except OSError as exc:
            raise InputError(f"cannot write ({exc.strerror})", file=str(output)) from None
    else:
        sys.stdout.write(text if text.endswith("\n") else text + "\n")


def compare_cmd(run_id: RunArg, db: DbOpt = DEFAULT_DB, json_out: JsonOpt = False,
                catalog: CatalogOpt = None) -> None:
    """Measured figures of a run beside the performance model's prediction.

    The run must have been made with the hardware declared (--accelerator, --count, --stack,
    --catalog-model, and --dtype).

    Example:  moatmeter bench compare 20250101-120000-abc123 --db runs.db
    """
    conn = store.open_existing(db)
    try:
        res = compare(conn, run_id, catalog=get_catalog(catalog))
    finally:
        conn.close()
    if json_out:
        print_json(res)
        return
    t = Table(title=f"run {run_id}: measured vs predicted")
    for c in ("metric", "measured", "predicted", "predicted/measured"):
        t.add_column(c, justify="right" if c != "metric" else "left")
    for r in res["rows"]:
        t.add_row(r["metric"], _fmt(r["measured"], 2), _fmt(r["predicted"], 2),
                  _fmt(r["predicted_over_measured"], 3))
    console.print(t)
