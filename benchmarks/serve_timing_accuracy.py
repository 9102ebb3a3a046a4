"""How exactly does `bench serve` measure TTFT and inter-token latency under heavy concurrency?

Starts the scripted-timing server (tests/servers/scripted.py) in its own process: token k of
every response is sent at  t_request + TTFT + k·ITL  on the server's monotonic clock. Then drives
it with `bench serve` at 256 concurrent streams and prints measured vs scripted means and the
relative errors. Goal: both within 1 %.

Usage:  python benchmarks/serve_timing_accuracy.py [--concurrency 256] [--ttft 1.0] [--itl 0.05]
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
    ap.add_argument("--rounds", type=int, default=2, help="measured requests per stream")
    ap.add_argument("--ttft", type=float, default=1.0, help="scripted TTFT, s")
    ap.add_argument("--itl", type=float, default=0.05, help="scripted inter-token gap, s")
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--goal", type=float, default=0.01)
    a = ap.parse_args()

    from moatmeter.bench.serve import ServeSettings, run

    srv = subprocess.Popen([sys.executable, str(ROOT / "tests/servers/scripted.py"), "--ttft",
                            str(a.ttft), "--itl", str(a.itl)], stdout=subprocess.PIPE, text=True)
    try:
        port = int(srv.stdout.readline().split()[1])  # type: ignore[union-attr]
        with tempfile.TemporaryDirectory() as d:
            t = time.perf_counter()
            res = run(ServeSettings(url=f"http://127.0.0.1:{port}", model="scripted",
                                    requests=a.concurrency * a.rounds,
                                    concurrency=a.concurrency, warmup=a.concurrency,
                                    output_tokens=a.tokens, input_tokens=64),
                      Path(d) / "acc.db")
            wall = time.perf_counter() - t
        cpu_client = os.times().user + os.times().system
        import httpx

        url = f"http://127.0.0.1:{port}"
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
    print(f"bench serve vs scripted server: {a.concurrency} concurrent streams, "
          f"{s['completed']} requests ({sum(s['errors'].values())} errors), {a.tokens} tokens "
          f"each, {wall:.1f} s wall; concurrency held mean {s['concurrency_held']['mean']:.1f} "
          f"max {s['concurrency_held']['max']:.0f}; coalesced events "
          f"{100 * s['coalesced_event_fraction']:.1f} %")
    print(f"CPU seconds: client {cpu_client:.2f} (incl. start-up), server {cpu_server:.2f}")
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
    print("'server sent' is what the server really did on its own monotonic clock (it falls "
          "behind its script when the machine is oversubscribed); 'vs sent' is the client's own "
          "error.")
    print(f"goal: mean TTFT and ITL within {100 * a.goal:.0f} % -> {'MET' if ok else 'NOT MET'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
