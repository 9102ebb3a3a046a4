"""End-to-end time of `moatmeter plan` on the README's scenario with 10 000 Monte Carlo samples.

Prints the median wall time of the CLI in a fresh process (imports, catalog load, performance
model, Monte Carlo, JSON output) and an in-process breakdown by phase. Goal: < 2 s on 2 cores.

    python3 benchmarks/plan_speed.py [--repeats 5] [--scenario examples/sovereign-bank-70b.yaml]
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def cli_time(scenario: Path, samples: int, report: Path | None = None) -> tuple[float, float]:
    """(wall, CPU) seconds of one CLI run; CPU time is robust to a machine shared with others."""
    cmd = [sys.executable, "-m", "moatmeter", "plan", str(scenario), "--json",
           "--samples", str(samples)]
    if report is not None:
        cmd += ["--report", str(report)]
    r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True)
    wall = time.perf_counter() - t0
    r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)


def phases(scenario: Path, samples: int) -> dict[str, float]:
    out: dict[str, float] = {}
    t0 = time.perf_counter()
    from moatmeter.catalog.load import load_catalog
    from moatmeter.plan import plan
    from moatmeter.scenario import load_scenario

    out["imports"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    cat = load_catalog()
    scn = load_scenario(scenario)
    out["catalog+scenario"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    result = plan(scn, cat, samples=samples)
    out["plan (perf grid + Monte Carlo + tornado)"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    from moatmeter.report.html import write_report

    with tempfile.TemporaryDirectory() as d:
        write_report(result, Path(d) / "r.html")
    out["HTML report"] = time.perf_counter() - t0
    out["options x samples"] = float(len(result.options) * samples)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scenario", type=Path, default=ROOT / "examples/sovereign-bank-70b.yaml")
    ap.add_argument("--samples", type=int, default=10_000)
    ap.add_argument("--repeats", type=int, default=5)
    a = ap.parse_args()
    cli_time(a.scenario, a.samples)  # warm the file cache
    runs = [cli_time(a.scenario, a.samples) for _ in range(a.repeats)]
    with tempfile.TemporaryDirectory() as d:
        rep = [cli_time(a.scenario, a.samples, Path(d) / "r.html") for _ in range(a.repeats)]
    load = os.getloadavg()[0]
    print(f"scenario: {a.scenario.name}, {a.samples} samples, {a.repeats} runs, "
          f"{os.cpu_count()} cores, load average {load:.1f}")
    for name, rs in (("moatmeter plan --json", runs), ("moatmeter plan --json --report", rep)):
        wall = [w for w, _ in rs]
        cpu = [c for _, c in rs]
        print(f"{name:32s} wall median {statistics.median(wall):.2f} s (min {min(wall):.2f}), "
              f"CPU median {statistics.median(cpu):.2f} s   goal < 2 s")
    for k, v in phases(a.scenario, a.samples).items():
        print(f"  {k:42s} {v:10.3f}" + ("" if k.startswith("options") else " s"))


if __name__ == "__main__":
    main()
