"""llama-server's per-slot sampling cost, measured: the same layers with two vocabularies.

``deploy.LLAMA_SERVER_SAMPLE_S_PER_VOCAB`` (3.9 ns per slot and vocabulary entry) was read off
llama.cpp issue #27050. On a lent H200 (benchmarks/results/h200-2026-11-28, gpu_session.sh and
llamacpp_slots.sh) Llama-3.1-8B Q4_0 ran twice, once with its 128,256-entry vocabulary and once
with Llama-2's 32,000 (random_gguf.py --vocab 32000): same layers, so a server step differs by
the LM head's weights (which llama-batched-bench, with no sampling, measures apart) and by what
the server does per slot and vocabulary entry. For each concurrency this prints both servers'
TPOT, both batched-bench steps, and the cost per slot and entry that the difference implies:

    ns = ((TPOT_128k - TPOT_32k) - (step_128k - step_32k)) / (slots * (128,256 - 32,000))

    python3 benchmarks/llamacpp_sampling.py [RUN_DIR]

RUN_DIR is a results folder laid out as benchmarks/gpu_session.sh writes it (default: the H200 run).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from moatmeter.perf.deploy import LLAMA_SERVER_SAMPLE_S_PER_VOCAB

DEFAULT_RUN = Path(__file__).parent / "results" / "h200-2026-11-28"
VOCABS = {"128k": 128_256, "32k": 32_000}
# (label, concurrency, report of the 128k-vocabulary server, of the 32k one)
SERVES = [
    ("np16 c1", 1, "serve-b/serve_np16_c1_nocache.json",
     "serve-b-vocab32k/serve_np16_c1_nocache.json"),
    ("np16 c16", 16, "serve-b/serve_np16_c16_nocache.json",
     "serve-b-vocab32k/serve_np16_c16_nocache.json"),
    *[(f"np32 c{c}", c, f"slots/slots-b/serve_np32_c{c}.json",
       f"slots/slots-b-vocab32k/serve_np32_c{c}.json") for c in (1, 4, 8, 32)],
]


def batched_steps(run: Path, sub: str) -> dict[int, float]:
    """llama-batched-bench decode step (s) per number of sequences."""
    out = {}
    for line in (run / sub / "batched_bench_q4_0.jsonl").open():
        r = json.loads(line)
        out[int(r["pl"])] = r["t_tg"] / r["tg"]
    return out


def tpot(run: Path, path: str) -> float:
    r = json.loads((run / path).read_text())
    if r["status"] != "complete":
        raise SystemExit(f"{path}: run not complete ({r['status']})")
    return r["tpot_ms"]["mean"] / 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run", nargs="?", type=Path, default=DEFAULT_RUN, help="results folder")
    run = ap.parse_args().run
    big, small = batched_steps(run, "kernels-b"), batched_steps(run, "kernels-b-vocab32k")
    dv = VOCABS["128k"] - VOCABS["32k"]
    print(f"deploy.LLAMA_SERVER_SAMPLE_S_PER_VOCAB: {LLAMA_SERVER_SAMPLE_S_PER_VOCAB * 1e9:.2f} ns "
          "per slot and vocabulary entry (llama.cpp issue #27050)")
    print(f"{'server':9s} {'TPOT 128k':>10s} {'TPOT 32k':>9s} {'step 128k':>10s} {'step 32k':>9s}"
          f" {'ns/slot/entry':>14s}")
    ns = []
    for label, c, p_big, p_small in SERVES:
        if not (run / p_big).exists():
            continue  # e.g. a session run with SLOT_USERS= (no 32-slot server)
        t_big, t_small = tpot(run, p_big), tpot(run, p_small)
        s_big, s_small = big[c], small[c]
        per = ((t_big - t_small) - (s_big - s_small)) / (c * dv)
        ns.append(per * 1e9)
        print(f"{label:9s} {t_big * 1e3:8.2f}ms {t_small * 1e3:7.2f}ms {s_big * 1e3:8.2f}ms"
              f" {s_small * 1e3:7.2f}ms {per * 1e9:14.2f}")
    a = np.array(ns)
    ratio = LLAMA_SERVER_SAMPLE_S_PER_VOCAB * 1e9 / np.median(a)
    print(f"implied: median {np.median(a):.2f} ns, range {a.min():.2f}-{a.max():.2f} ns over "
          f"{len(a)} server runs (1-32 slots); the constant is {ratio:.2f}x the median")


if __name__ == "__main__":
    main()
