"""External test: predict a published data set the calibration never sees, and print the error.

The bundled observations are for calibration and its leave-one-source-out cross-validation. This
script instead predicts rows kept *outside* the calibration set with the bundled calibration, as a
user would: by default the 1,095 DeepSeek-R1 points of InferenceX's public benchmarks API snapshot
(``benchmarks/data/inferencex_api_dsr1.csv``; see docs/observations.md, "External test set").
It prints median and p90 absolute percentage error overall and per accelerator x stack x metric,
the median log bias of TTFT by concurrency, where the model is weakest, and how many measured
values fall inside the predicted P10-P90 bands.

    python3 benchmarks/external_test.py [--observations FILE.csv] [--json]
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

from moatmeter.catalog.load import load_catalog
from moatmeter.errors import MoatError
from moatmeter.perf.observations import read_observations
from moatmeter.perf.validate import validate_rows

DEFAULT = Path(__file__).parent / "data" / "inferencex_api_dsr1.csv"


def _stats(apes: list[float], logs: list[float]) -> str:
    a = np.asarray(apes)
    return (f"median {100 * np.median(a):5.1f} %  p90 {100 * np.percentile(a, 90):6.1f} %  "
            f"bias {np.median(logs):+.2f}  n={len(a)}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--observations", default=str(DEFAULT))
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    try:
        rows = read_observations(args.observations)
        out = validate_rows(load_catalog(), rows)
    except MoatError as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(err.exit_code) from None
    meta = {r["id"]: r for r in rows}
    s = out["summary"]
    if args.json:
        print(json.dumps(s, indent=1))
        return
    print(f"{args.observations}: {s['n']} rows predicted with the bundled calibration, "
          f"{len(s['skipped'])} skipped")
    groups: dict[str, tuple[list[float], list[float]]] = defaultdict(lambda: ([], []))
    ttft: dict[str, tuple[list[float], list[float]]] = defaultdict(lambda: ([], []))
    for r in out["rows"]:
        m = meta[r["id"]]
        lg = float(np.log(r["predicted"] / r["measured"]))
        for key in ("overall", f"{m['accelerator']} {m['engine']} {m['weight_dtype']} "
                               f"{m['metric']}"):
            groups[key][0].append(r["ape"])
            groups[key][1].append(lg)
        if m["metric"] == "ttft_ms":
            c = int(float(m["concurrency"] or 1))
            band = "1-8" if c <= 8 else "9-32" if c <= 32 else "33+"
            ttft[band][0].append(r["ape"])
            ttft[band][1].append(lg)
    print("(bias: median log(predicted / measured))")
    for k in sorted(groups, key=lambda k: (k != "overall", k)):
        print(f"  {k[:58]:<58} {_stats(*groups[k])}")
    print("TTFT by concurrency:")
    for k in ("1-8", "9-32", "33+"):
        if k in ttft:
            print(f"  {k:<6} {_stats(*ttft[k])}")
    print(f"measured values inside the predicted P10-P90 band: "
          f"{100 * s['p10_p90_band_coverage']:.0f} % (ideal 80 %); per metric: "
          + ", ".join(f"{k} {100 * v:.0f} %"
                      for k, v in s["p10_p90_band_coverage_by_metric"].items()))


if __name__ == "__main__":
    main()
