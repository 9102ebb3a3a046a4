"""Where ``step.MMVQ_EFF`` comes from, and how the step model meets the tables it was read off.

llama.cpp PR tables of ``llama-bench -p 512 -ub N`` on named GPUs (benchmarks/data/
llamacpp_small_batch.csv): a prompt of 512 tokens walked in steps of N tokens, so a step takes
N / (t/s) seconds. For each table this prints the cost of each token beyond the first in a step of
up to 8 (the mat-vec kernel's range) as a fraction of the GPU's fp32 rate, and every row's step
time next to the step model's (bundled calibration, mean context 256 tokens). The tables' "llama
8B" has Llama 3 / 3.1 8B's shapes (catalog llama-3.1-8b), their "llama 7B" Llama 2 7B's.

    python3 benchmarks/llamacpp_mmvq.py
"""

from __future__ import annotations

import csv
from collections import defaultdict
from pathlib import Path

import numpy as np

from moatmeter.catalog.load import load_catalog
from moatmeter.perf.deploy import resolve
from moatmeter.perf.step import MMVQ_EFF, MMVQ_MAX_TOKENS, decode_step

DATA = Path(__file__).parent / "data" / "llamacpp_small_batch.csv"
CONTEXT = 256.0  # mean causal context of a 512-token prompt


def main() -> None:
    cat = load_catalog()
    tables: dict[tuple[str, ...], list[tuple[float, float]]] = defaultdict(list)
    with DATA.open(newline="") as f:
        for r in csv.DictReader(f):
            key = (r["source"].split(" (")[0].split(" '")[0], r["date"], r["gpu"], r["model"],
                   r["quant"], r["column"])
            n = float(r["ubatch"])
            tables[key].append((n, n / float(r["tokens_per_s"])))
    print(f"MMVQ_EFF in the step model: {MMVQ_EFF}")
    ratios = []
    for (src, date, gpu, model, quant, col), pts in tables.items():
        pts.sort()
        n = np.array([p[0] for p in pts])
        t = np.array([p[1] for p in pts])
        # llama-bench does not sample: no per-slot host sampling
        s = resolve(cat, accelerator=gpu, stack="llamacpp-cuda", model=model, tp=1, pp=1,
                    weight_dtype=quant, kv_dtype="bf16", context=1024, host_sampling=False).s
        pred = decode_step(s, n, np.full(len(n), CONTEXT)).total
        fp32 = cat.accelerator(gpu).peak_tflops["fp32"] * 1e12
        print(f"\n{src}, {date}, {gpu}, {model} {quant}, column '{col}'")
        small = n <= MMVQ_MAX_TOKENS
        if small.sum() >= 2:
            lo, hi = np.argmin(n), np.flatnonzero(small)[np.argmax(n[small])]
            per_tok = (t[hi] - t[lo]) / (n[hi] - n[lo])
            rate = s.flops_tok[0] / per_tok
            print(f"  {per_tok * 1e3:.3f} ms per extra token from {n[lo]:.0f} to {n[hi]:.0f} "
                  f"= {rate / 1e12:.1f} TFLOP/s of {fp32 / 1e12:.1f} fp32: "
                  f"{rate / fp32:.2f} of the rate")
        for ni, ti, pi in zip(n, t, pred, strict=True):
            ratios.append(pi / ti)
            print(f"  ubatch {ni:3.0f}: measured {ti * 1e3:6.2f} ms per step, model "
                  f"{pi * 1e3:6.2f} ms ({pi / ti:.2f}x)")
    r = np.array(ratios)
    ape = np.abs(r - 1.0)
    print(f"\n{len(r)} steps: predicted / measured {r.min():.2f}-{r.max():.2f}x, "
          f"median APE {100 * np.median(ape):.1f} %, max {100 * ape.max():.1f} %")


if __name__ == "__main__":
    main()
