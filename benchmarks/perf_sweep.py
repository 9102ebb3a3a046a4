"""Throughput of the vectorised performance model: deployments evaluated per second.

Builds every accelerator × stack (that supports it) × TP × PP × weight dtype × KV dtype × max
batch combination for one model and workload, then times ``evaluate_grid`` on it (feasibility,
memory, single stream, offline throughput and goodput under the SLO, all rows at once).

    python3 benchmarks/perf_sweep.py [--model llama-3.1-70b] [--input 1024] [--output 256]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from moatmeter.catalog.load import load_catalog
from moatmeter.perf import SLO, DeploymentGrid, Workload, evaluate_grid


def build_grid(cat, repeat: int = 1) -> DeploymentGrid:
    accs, stacks, tps, pps, wds, kds, mbs = [], [], [], [], [], [], []
    for a in cat.accelerators.values():
        for s in cat.stacks.values():
            if a.family not in s.families():
                continue
            for tp in (1, 2, 4, 8):
                for pp in (1, 2):
                    for wd in ("bf16", "fp8", "int8", "int4", "fp4"):
                        for kd in ("bf16", "fp8"):
                            for mb in (8, 32, 64, 128, 256, 512):
                                accs.append(a.id)
                                stacks.append(s.id)
                                tps.append(tp)
                                pps.append(pp)
                                wds.append(wd)
                                kds.append(kd)
                                mbs.append(mb)
    g = DeploymentGrid(accelerator=np.array(accs * repeat), stack=np.array(stacks * repeat),
                       tp=np.array(tps * repeat), pp=np.array(pps * repeat),
                       weight_dtype=np.array(wds * repeat), kv_dtype=np.array(kds * repeat),
                       max_batch=np.array(mbs * repeat))
    return g


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="llama-3.1-70b")
    ap.add_argument("--input", type=float, default=1024)
    ap.add_argument("--output", type=float, default=256)
    ap.add_argument("--repeat", type=int, default=1, help="tile the grid to time larger arrays")
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    cat = load_catalog()
    grid = build_grid(cat, args.repeat)
    wl = Workload(args.input, args.output)
    slo = SLO(ttft_p95_s=2.0, tpot_p95_s=0.1)
    evaluate_grid(cat, args.model, DeploymentGrid(**{k: v[:100] for k, v in grid.__dict__.items()}),
                  wl, slo)  # warm caches
    best = cpu = float("inf")
    for _ in range(args.runs):
        t0, c0 = time.perf_counter(), time.process_time()
        res = evaluate_grid(cat, args.model, grid, wl, slo)
        best = min(best, time.perf_counter() - t0)
        cpu = min(cpu, time.process_time() - c0)
    n = len(grid)
    feas = int(res.feasible.sum())
    print(f"model {args.model}, workload {args.input:g}/{args.output:g} tokens, "
          f"SLO p95 TTFT {slo.ttft_p95_s} s / TPOT {slo.tpot_p95_s} s")
    print(f"grid: {n} deployments ({feas} feasible) over {len(cat.accelerators)} accelerators, "
          f"{len(cat.stacks)} stacks, TP 1-8, PP 1-2, 5 weight x 2 KV dtypes, 6 batch caps")
    print(f"best of {args.runs}: {best:.3f} s wall -> {n / best:,.0f} deployments/s "
          f"({cpu:.3f} s CPU -> {n / cpu:,.0f} deployments per CPU-second)")
    top = np.argsort(-res.goodput_rps)[:5]
    for i in top:
        print(f"  {grid.accelerator[i]:>12} {grid.stack[i]:>14} TP{grid.tp[i]} PP{grid.pp[i]} "
              f"{grid.weight_dtype[i]}/{grid.kv_dtype[i]} batch {grid.max_batch[i]}: goodput "
              f"{res.goodput_rps[i]:.2f} req/s per replica, bottleneck {res.bottleneck[i]}")


if __name__ == "__main__":
    main()
