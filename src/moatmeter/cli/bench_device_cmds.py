"""`moatmeter bench device`: vendor library vs our Triton kernels vs the datasheet, measured."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from moatmeter.cli.common import CatalogOpt, JsonOpt, console, err_console, get_catalog, print_json

DEFAULT_DB = Path("moatmeter.db")  # the same store `bench serve` writes


def register(app: typer.Typer, bench_app: typer.Typer) -> None:
    """Add this module's commands to the root app and the `bench` group."""
    bench_app.command("device")(device_cmd)


def _fmt(v: float | None, digits: int = 3) -> str:
    if v is None:
        return "-"
    if v == 0 or abs(v) >= 100:
        return f"{v:,.0f}"
    return f"{v:.{digits}g}"


def _compact(shape: str) -> str:
    """'M=1 N=4096 K=4096' -> '1x4096x4096'; attention -> 'BxH/HkvxSq/SkvxD'."""
    v = dict(re.findall(r"(\w+)=(\d+)", shape))
    if {"M", "N", "K"} <= v.keys():
        return f"{v['M']}x{v['N']}x{v['K']}"
    if {"B", "H", "Hkv", "Sq", "Skv", "D"} <= v.keys():
        return f"{v['B']}x{v['H']}/{v['Hkv']}x{v['Sq']}/{v['Skv']}x{v['D']}"
    return shape.split(" (")[0]


def _short_impl(impl: str) -> str:
    """'torch.matmul (cuBLAS)' -> 'cuBLAS': the library is what the reader compares."""
    if "(" in impl and impl.endswith(")"):
        return impl[impl.index("(") + 1:-1]
    return impl


def _table(rep: dict[str, Any]) -> Table:
    d = rep["device"]
    title = (f"{d['name']} ({d['device']}, {d['runtime_version']}, torch {d['torch_version']}) "
             f"vs datasheet of {rep['accelerator_name']} [{rep['accelerator']}, {rep['match']}]")
    t = Table(title=title, title_justify="left", caption="shape: GEMM MxNxK, attention "
              "BxH/HkvxSq/SkvxD. eff: achieved / datasheet peak of the binding roof (C compute, "
              "M memory, L link)", caption_justify="left")
    for col, just in (("what", "left"), ("impl", "left"), ("dtype", "left"),
                      ("shape", "left"),
                      ("ms", "right"), ("TFLOP/s", "right"), ("GB/s", "right"),
                      ("peak", "right"), ("eff", "right")):
        t.add_column(col, justify=just)  # type: ignore[arg-type]
    suite = None
    for r in rep["results"]:
        if suite is not None and r["suite"] != suite:
            t.add_section()
        suite = r["suite"]
        if r["suite"] == "triton_check":
            t.add_row(r["op"].replace("triton_", ""), "interpreter", r["dtype"],
                      _compact(r["shape"]), "", "", "",
                      "", r["note"].rsplit(": ", 1)[-1])
            continue
        eff = "-"
        if r["efficiency"] is not None:
            eff = f"{100 * r['efficiency']:.2g}% {r['bound'][:1].upper()}"
        peak = "-"
        if r["peak"] is not None:
            peak = f"{_fmt(r['peak'])}{'T' if r['unit'] == 'TFLOP/s' else 'G'}"
        ms = _fmt(r["seconds"] * 1e3) if r["seconds"] is not None else "-"
        what = " ".join(x for x in (r["op"], r["phase"]) if x)
        t.add_row(what, _short_impl(r["impl"]), r["dtype"], _compact(r["shape"]), ms,
                  _fmt(r["tflops"]),
                  _fmt(r["gbs"]), peak, eff)
    return t


def device_cmd(
    accelerator: Annotated[str | None, typer.Option(
        "--accelerator", "-a",
        help="Catalog accelerator whose datasheet peaks to compare against (auto-matched from "
             "the device name when omitted; CPUs usually need it).")] = None,
    device: Annotated[str | None, typer.Option(
        "--device", help="torch device: auto (default), cpu, cuda, cuda:1, xpu, mps.")] = None,
    model: Annotated[str, typer.Option(
        "--model", "-m", help="Catalog model whose weight shapes the GEMMs and attention use.")
    ] = "llama-3.1-8b",
    quick: Annotated[bool, typer.Option(
        "--quick", help="A few shapes, bf16 only, short timing: about 30 s even on a CPU.")
    ] = False,
    dtype: Annotated[str | None, typer.Option(
        "--dtype", help="GEMM/attention dtypes, comma-separated: bf16,fp16,fp32,fp8 "
                        "(default bf16,fp16 + fp8 where the device has it).")] = None,
    decode_m: Annotated[str | None, typer.Option(
        "--decode-m", help="Decode GEMM rows (batch), e.g. 1,8,32,64,128,256.")] = None,
    prefill_m: Annotated[str | None, typer.Option(
        "--prefill-m", help="Prefill GEMM rows (tokens), e.g. 512,1024,2048,4096,8192.")] = None,
    gemm: Annotated[list[str] | None, typer.Option(
        "--gemm", help="Extra GEMM shape MxNxK (repeatable), e.g. --gemm 1x4096x4096.")] = None,
    seq: Annotated[int | None, typer.Option(
        "--seq", help="Prefill attention sequence length.")] = None,
    kv_len: Annotated[int | None, typer.Option(
        "--kv-len", help="Decode attention KV-cache length.")] = None,
    decode_batch: Annotated[int | None, typer.Option(
        "--decode-batch", help="Decode attention batch size.")] = None,
    bw_mib: Annotated[int | None, typer.Option(
        "--bw-mib", help="Copy/triad array size in MiB (default: 8x the last-level cache, "
                         "at least 512 MiB; 128 MiB with --quick).")] = None,
    only: Annotated[str | None, typer.Option(
        "--only", help="Comma-separated suites: gemm,attention,bandwidth,transfer.")] = None,
    db: Annotated[Path | None, typer.Option(
        "--db", envvar="MOATMETER_DB",
        help="SQLite results store shared with `bench serve` (default moatmeter.db).")] = None,
    no_store: Annotated[bool, typer.Option("--no-store", help="Do not write to the store.")
    ] = False,
    catalog: CatalogOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Measure how much of the datasheet this device's vendor libraries deliver, and how much a
    portable Triton kernel delivers on the same device.

    GEMMs at a catalog model's weight shapes (decode M=1..256, prefill M=512..8192) through
    torch.matmul (cuBLAS / hipBLASLt / oneDNN) and through this project's autotuned Triton GEMM;
    copy/triad bandwidth beyond the last-level cache; SDPA vs Triton flash attention;
    host<->device and peer copies. Each result: achieved, datasheet peak, efficiency against the
    roof that binds (memory for decode, compute for prefill). On CPUs and Apple GPUs Triton
    cannot run natively; its kernels are then checked for correctness under the interpreter.

    Example:  moatmeter bench device --quick --accelerator epyc-9654 --json
    """
    from moatmeter.bench.device import run_benchmark

    cat = get_catalog(catalog)
    suites = [s.strip() for s in only.split(",") if s.strip()] if only else None
    with Progress(TextColumn("[bold]bench device"), BarColumn(), MofNCompleteColumn(),
                  TextColumn("{task.description}"), TimeElapsedColumn(), console=err_console,
                  transient=True, disable=not err_console.is_terminal) as bar:
        task = bar.add_task("detecting device", total=None)

        def on_step(desc: str, total: int) -> None:
            bar.update(task, description=desc, total=total, advance=1)

        report = run_benchmark(
            cat, device=device, accelerator=accelerator, model=model, quick=quick, dtypes=dtype,
            decode_m=decode_m, prefill_m=prefill_m, gemm=gemm or (), seq_len=seq, kv_len=kv_len,
            decode_batch=decode_batch, bw_mib=bw_mib, suites=suites,
            db=None if no_store else (db or DEFAULT_DB), progress=on_step)
    rep = report.to_dict()
    if json_out:
        print_json(rep)
        return
    console.print(_table(rep))
    s = rep["summary"]
    parts = [f"{k.replace('_eff', '')} {100 * v:.2g}%" for k, v in s.items() if v is not None]
    console.print("median efficiency: " + ", ".join(parts))
    for n in rep["notes"]:
        console.print(f"note: {n}", highlight=False)
    if rep["db"]:
        console.print(f"stored run {rep['run_id']} in {rep['db']}")
