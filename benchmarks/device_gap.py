"""The stack gap on this machine: vendor library vs our Triton kernels vs the datasheet.

Runs the full `bench device` benchmark (every decode/prefill GEMM shape of the model, bandwidth,
attention, transfers) and prints the result table, then a side-by-side of vendor and Triton
efficiency per shape. Options narrow the run (a CPU without bf16 units needs minutes per
prefill GEMM at M=8192):

    python benchmarks/device_gap.py --accelerator h100-sxm
    python benchmarks/device_gap.py --accelerator epyc-9654 --prefill-m 512,1024 --dtype bf16
"""

from __future__ import annotations

import argparse
import sys
import time

from rich.console import Console
from rich.table import Table

from moatmeter.bench.device import Report, run_benchmark
from moatmeter.catalog.load import load_catalog
from moatmeter.cli.bench_device_cmds import _compact, _table
from moatmeter.errors import MoatError


def gap_table(report: Report) -> Table:
    """Vendor vs Triton per shape; on devices Triton cannot target the Triton column is empty."""
    t = Table(title="vendor library vs Triton (efficiency of the binding roof)",
              title_justify="left")
    for col in ("what", "dtype", "shape", "vendor", "vendor eff", "triton eff", "triton/vendor"):
        t.add_column(col, justify="left" if col in ("what", "dtype", "shape", "vendor")
                     else "right")
    pairs: dict[tuple[str, ...], dict[str, object]] = {}
    for r in report.results:
        if r.suite not in ("gemm", "attention") or r.seconds is None:
            continue
        key = (r.suite, r.op, r.phase, r.dtype, r.shape)
        pairs.setdefault(key, {})[r.library] = r
    for (suite, op, phase, dtype, shape), libs in pairs.items():
        v, tr = libs.get("vendor"), libs.get("triton")
        ve = getattr(v, "efficiency", None)
        te = getattr(tr, "efficiency", None)
        vs, ts = getattr(v, "seconds", None), getattr(tr, "seconds", None)
        ratio = f"{vs / ts:.2f}x" if vs and ts else "-"  # speed of Triton relative to vendor
        t.add_row(f"{suite} {op if op != suite else ''} {phase}".replace("  ", " "), dtype,
                  _compact(shape), getattr(v, "impl", "-"),
                  f"{100 * ve:.3g}%" if ve is not None else "-",
                  f"{100 * te:.3g}%" if te is not None else "-", ratio)
    return t


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--accelerator", help="catalog id of the device's datasheet")
    ap.add_argument("--device", help="torch device (default: auto)")
    ap.add_argument("--model", default="llama-3.1-8b")
    ap.add_argument("--dtype", help="comma-separated: bf16,fp16,fp32,fp8")
    ap.add_argument("--decode-m")
    ap.add_argument("--prefill-m")
    ap.add_argument("--only", help="gemm,attention,bandwidth,transfer")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--db", help="also store the run in this SQLite file")
    a = ap.parse_args(argv)
    console = Console(width=200)
    start = time.perf_counter()

    def progress(desc: str, total: int) -> None:
        print(f"[{time.perf_counter() - start:7.1f}s] {desc}", file=sys.stderr, flush=True)

    try:
        rep = run_benchmark(load_catalog(), device=a.device, accelerator=a.accelerator,
                            model=a.model, quick=a.quick, dtypes=a.dtype, decode_m=a.decode_m,
                            prefill_m=a.prefill_m,
                            suites=a.only.split(",") if a.only else None, db=a.db,
                            progress=progress)
    except MoatError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    console.print(_table(rep.to_dict()))
    console.print(gap_table(rep))
    for k, v in rep.summary.items():
        if v is not None:
            console.print(f"{k:32s} {100 * v:8.3g}%")
    for n in rep.notes:
        console.print(f"note: {n}", highlight=False)
    console.print(f"elapsed {rep.elapsed_s:.1f} s on {rep.device.name} ({rep.device.device})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
