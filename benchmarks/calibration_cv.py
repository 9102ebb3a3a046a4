"""Leave-one-source-out cross-validation of the calibrated performance model.

For every source (document) in the observations, refit the calibration from the priors on all
other sources and predict the held-out rows; print median and p90 absolute percentage error
overall, per vendor, per stack, per metric and per source; on the configurations that more
than one source measured, how well the sources agree with each other (the data's noise floor);
and where the held-out error lies (``moatmeter.perf.error_structure``, in the summary: between
or within documents, and whether the configuration could have predicted it).

    python3 benchmarks/calibration_cv.py [--observations FILE.csv ...] [--json] [--report cv.html]
        [--jobs N]
"""

from __future__ import annotations

import argparse
import json
import time
from collections import defaultdict

import numpy as np

from moatmeter.catalog.load import load_catalog
from moatmeter.perf.error_structure import table, variance_split
from moatmeter.perf.observations import bundled_observations, read_observations
from moatmeter.perf.validate import default_jobs, loso_cv, source_agreement


def _fmt(s: dict) -> str:
    if not s["n"]:
        return "n=0"
    return f"median {100 * s['median_ape']:5.1f} %  p90 {100 * s['p90_ape']:6.1f} %  n={s['n']}"


def _brief(s: dict) -> str:
    if not s["n"]:
        return "n=0"
    return (f"median {100 * s['median_ape']:5.1f} %  p90 {100 * s['p90_ape']:6.1f} %  "
            f"{s['beyond_35']:4d} of {s['n']} beyond 35 %")


def _print_structure(st: dict) -> None:
    print(f"where the held-out error lies: {variance_split(st)}")
    for label, f in table(st):
        print(f"  {label:<72} {_brief(f)}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--observations", nargs="*", default=None)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--report", default=None, help="also write the held-out rows as an HTML page")
    ap.add_argument("--jobs", type=int, default=None,
                    help="worker processes (default: the CPUs available, at most 8; same result)")
    args = ap.parse_args()
    cat = load_catalog()
    rows = []
    for f in args.observations or [bundled_observations()]:
        rows += read_observations(f)
    src = {r["id"]: r["source"] for r in rows}
    t0 = time.perf_counter()
    jobs = args.jobs or default_jobs()
    cv = loso_cv(cat, rows, details=args.report is not None, jobs=jobs)
    dt = time.perf_counter() - t0
    if args.report:
        from moatmeter.report.validation import write_validation_report

        write_validation_report(cv, args.report, "bundled observations (leave-one-source-out)")
    s = cv["summary"]
    if args.json:
        print(json.dumps(s, indent=1))
        return
    print(f"leave-one-source-out over {s['sources']} sources, {s['n']} rows modelled, "
          f"{len(s['skipped'])} skipped ({dt:.0f} s, {jobs} worker process"
          f"{'es' if jobs > 1 else ''})")
    print(f"overall            {_fmt(s)}")
    print(f"held-out values inside the predicted P10-P90 band: "
          f"{100 * s['p10_p90_band_coverage']:.0f} % (ideal 80 %); per metric: "
          + ", ".join(f"{k} {100 * v:.0f} %"
                      for k, v in s["p10_p90_band_coverage_by_metric"].items()))
    for k, v in s["p10_p90_band_coverage_by_coverage"].items():
        print(f"  inside the band, {k}: {100 * v:.0f} %")
    # the sources' agreement and the held-out model, on the same rows
    agree = source_agreement(rows)
    modelled = {r["id"]: r["ape"] for r in cv["rows"]}
    other = np.array([r["ape"] for r in agree["rows"] if r["id"] in modelled])
    held = np.array([modelled[r["id"]] for r in agree["rows"] if r["id"] in modelled])
    print(f"configurations measured by more than one source: "
          f"{agree['summary']['configurations']}, {len(held)} of their rows modelled; each "
          f"predicted by the other sources' figure: median {100 * np.median(other):.1f} %, p90 "
          f"{100 * np.percentile(other, 90):.1f} %; by the held-out model: median "
          f"{100 * np.median(held):.1f} %, p90 {100 * np.percentile(held, 90):.1f} %")
    _print_structure(s["error_structure"])
    for name in ("coverage", "vendor", "stack", "metric", "scenario"):
        print(f"per {name}:")
        for k, v in s["by"][name].items():
            print(f"  {k:<24} {_fmt(v)}")
    by_src: dict[str, list[float]] = defaultdict(list)
    bias: dict[str, list[float]] = defaultdict(list)
    for r in cv["rows"]:
        by_src[src[r["id"]]].append(r["ape"])
        bias[src[r["id"]]].append(float(np.log(r["predicted"] / r["measured"])))
    print("per source (median APE, median log bias pred/measured):")
    for k, v in sorted(by_src.items(), key=lambda kv: -np.median(kv[1])):
        print(f"  {100 * np.median(v):5.1f} %  bias {np.median(bias[k]):+.2f}  n={len(v):<3} "
              f"{k[:90]}")
    reasons: dict[str, int] = defaultdict(int)
    for sk in s["skipped"]:
        reasons[sk["reason"].split(":")[0]] += 1
    for k, v in reasons.items():
        print(f"skipped {v}: {k}")


if __name__ == "__main__":
    main()
