"""How exactly does `bench serve` measure TTFT and inter-token latency under heavy concurrency?

Starts the scripted-timing server (tests/servers/scripted.py) in its own process: token k of
every response is sent at  t_request + TTFT + k·ITL  on the server's monotonic clock. Then drives
it with `bench serve` at 256 concurrent streams and prints measured vs scripted means and the
relative errors. Goal: both within 1 %.

Two arrival patterns, both with 256 streams in flight:
* staggered: the first 256 requests arrive as a Poisson ramp over about one request duration
  (`--rate` capped by `--concurrency`), and each later one starts when a slot frees, so events
  of different streams interleave as with a real server;
* lockstep: all 256 start at the same instant, so 256 first tokens (and every later token) land
  within a millisecond: the worst case for a single-threaded client, whose serial handling of
  the burst shows up as extra TTFT (each event is stamped when parsed, see docs/bench-metrics.md).

Usage:  python benchmarks/serve_timing_accuracy.py [--concurrency 256] [--ttft 2.0] [--itl 0.05]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--concurrency", type=int, default=256)
    ap.add_argument("--rounds", type=int, default=3, help="measured requests per stream")
    ap.add_argument("--ttft", type=float, default=2.0, help="scripted TTFT, s")
    ap.add_argument("--itl", type=float, default=0.05, help="scripted inter-token gap, s")
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--goal", type=float, default=0.01)
    a = ap.parse_args()

    from moatmeter.bench.serve import ServeSettings, run

    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    ok = one(a, "staggered", ServeSettings, run)
    one(a, "lockstep", ServeSettings, run)  # the worst case, shown for information
    return 0 if ok else 1


def one(a: argparse.Namespace, pattern: str, settings_cls: type, run: object) -> bool:
    import httpx

    srv = subprocess.Popen([sys.executable, str(ROOT / "tests/servers/scripted.py"), "--ttft",
                            str(a.ttft), "--itl", str(a.itl)], stdout=subprocess.PIPE, text=True)
    dur = a.ttft + (a.tokens - 1) * a.itl
    # Arrivals twice as fast as slots free: 256 in flight within half a request duration.
    rate = 2 * a.concurrency / dur if pattern == "staggered" else None
    try:
        port = int(srv.stdout.readline().split()[1])  # type: ignore[union-attr]
        url = f"http://127.0.0.1:{port}"
        with tempfile.TemporaryDirectory() as d:
            c0 = os.times()
            t = time.perf_counter()
            res = run(settings_cls(url=url, model="scripted",  # type: ignore[operator]
                                   requests=a.concurrency * a.rounds, concurrency=a.concurrency,
                                   rate=rate, warmup=a.concurrency, output_tokens=a.tokens,
                                   input_tokens=64), Path(d) / "acc.db")
            wall = time.perf_counter() - t
            c1 = os.times()
        sent = httpx.get(url + "/stats", timeout=10).json()
    finally:
        srv.terminate()  # the server prints its CPU seconds on SIGTERM
        out, _ = srv.communicate(timeout=10)
    cpu_server = next((float(ln.split()[1]) for ln in out.splitlines() if ln.startswith("CPU")),
                      float("nan"))
    s = res.summary
    rows = [("TTFT", a.ttft * 1e3, s["ttft_ms"]["mean"], sent["sent_ttft_mean_s"] * 1e3),
            ("ITL (raw gaps)", a.itl * 1e3, s["itl_ms"]["mean"], sent["sent_gap_mean_s"] * 1e3),
            ("TPOT", a.itl * 1e3, s["tpot_ms"]["mean"], sent["sent_gap_mean_s"] * 1e3)]
    print(f"\n[{pattern}] {a.concurrency} concurrent streams, {s['completed']} requests "
          f"({sum(s['errors'].values())} errors), {a.tokens} tokens each, {wall:.1f} s wall; "
          f"concurrency held mean {s['concurrency_held']['mean']:.1f} max "
          f"{s['concurrency_held']['max']:.0f}; coalesced events "
          f"{100 * s['coalesced_event_fraction']:.1f} %; CPU s client "
          f"{c1.user + c1.system - c0.user - c0.system:.2f}, server {cpu_server:.2f}")
    ok = s["completed"] == a.concurrency * a.rounds
    print(f"{'metric':<16}{'scripted ms':>12}{'measured ms':>13}{'error':>9}"
          f"{'server sent ms':>16}{'vs sent':>9}")
    for name, want, got, did in rows:
        err = (got - want) / want
        ok &= abs(err) <= a.goal
        print(f"{name:<16}{want:>12.3f}{got:>13.3f}{100 * err:>8.2f}%{did:>16.3f}"
              f"{100 * (got - did) / did:>8.2f}%")
    print(f"p50/p99 TTFT {s['ttft_ms']['p50']:.2f}/{s['ttft_ms']['p99']:.2f} ms, "
          f"p50/p99 ITL {s['itl_ms']['p50']:.2f}/{s['itl_ms']['p99']:.2f} ms")
    print("'server sent': what the server really did on its own monotonic clock (it falls "
          "behind its script when the machine is oversubscribed); 'vs sent': the client's error.")
    print(f"goal: mean TTFT and ITL within {100 * a.goal:.0f} % of the script -> "
          f"{'MET' if ok else 'NOT MET'}")
    return ok



if __name__ == "__main__":
    sys.exit(main())
