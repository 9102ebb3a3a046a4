"""Our load generator vs aiperf against the same local server, in the same run.

Sustained requests/s at concurrency 1, 8 and 32, and whether each harness really holds the
requested concurrency (time-average of requests in flight, measured by the server itself for the
scripted server, and from each harness's own per-request timestamps otherwise). Goal: at least
1.5x aiperf's rate at concurrency 32, with concurrency held.

aiperf is NOT a project dependency: install it into a separate venv first, e.g.
    python3 -m venv /tmp/aiperf-venv && /tmp/aiperf-venv/bin/pip install aiperf
It is given a local word-level tokenizer (no network).

Servers: `--server scripted` (tests/servers/scripted.py, 20 ms TTFT and 2 ms per token: a
cheap server, so the harness's own cost shows) and/or `--server llama` (llama.cpp's
llama-server from scripts/deps/llama_server.sh with the tiny random-weight model the tests
generate).

"held" is the time-average number of requests in flight seen by the client (Little's law over
the harness's own per-request start/end times); the scripted server also reports how many it
was serving at once (lower when it is saturated and requests wait in its socket queue).

Usage:  python benchmarks/harness_overhead.py [--server scripted,llama] [--aiperf PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

# A word-level tokenizer whose vocabulary covers our prompt words and aiperf's own prompt corpus,
# so aiperf's synthetic prompts decode to real words (not "[UNK]" strings) of similar length.
TOKENIZER_SCRIPT = r"""
import sys
from pathlib import Path
import aiperf
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast
words = sys.argv[2].split()
corpus = Path(aiperf.__file__).parent / "dataset/generator/assets/shakespeare.txt"
if corpus.exists():
    pre = pre_tokenizers.Whitespace()
    words += [w for w, _ in pre.pre_tokenize_str(corpus.read_text(errors="replace"))]
vocab = {"[UNK]": 0, "<s>": 1, "</s>": 2}
for w in words:
    vocab.setdefault(w, len(vocab))
for i in range(10000):
    vocab.setdefault(str(i), len(vocab))
tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
tok.pre_tokenizer = pre_tokenizers.Whitespace()
PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", bos_token="<s>",
                        eos_token="</s>").save_pretrained(sys.argv[1])
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_scripted() -> tuple[subprocess.Popen[str], str]:
    # 20 ms to the first token, 2 ms per token: short enough that harness overhead dominates
    # at high concurrency, long enough that "requests in flight" means something.
    p = subprocess.Popen([sys.executable, str(ROOT / "tests/servers/scripted.py"), "--ttft",
                          "0.02", "--itl", "0.002"], stdout=subprocess.PIPE, text=True)
    port = int(p.stdout.readline().split()[1])  # type: ignore[union-attr]
    return p, f"http://127.0.0.1:{port}"


def start_llama(tmp: Path) -> tuple[subprocess.Popen[bytes], str]:
    from servers.tiny_gguf import write_tiny_llama
    from test_llamacpp_serve import find_llama_server

    from moatmeter.catalog.load import load_catalog

    model = write_tiny_llama(tmp / "tiny.gguf", load_catalog().model("tiny-llama-test").config)
    port = free_port()
    p = subprocess.Popen([str(find_llama_server()), "-m", str(model), "--host", "127.0.0.1",
                          "--port", str(port), "-c", "16384", "-np", "32", "-t", "1",
                          "--no-webui", "-a", "tiny"], stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    for _ in range(600):
        try:
            if httpx.get(url + "/health", timeout=1).status_code == 200:
                return p, url
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise RuntimeError("llama-server did not become healthy")


def server_stats(url: str, reset: bool = False) -> dict | None:
    try:
        if reset:
            httpx.post(url + "/stats/reset", timeout=5)
            return None
        r = httpx.get(url + "/stats", timeout=5)
        return r.json() if r.status_code == 200 else None
    except httpx.HTTPError:
        return None


def run_ours(url: str, c: int, n: int, isl: int, osl: int, tmp: Path) -> dict:
    db = tmp / f"ours-{c}.db"
    p = subprocess.run([sys.executable, "-m", "moatmeter", "bench", "serve", "--url", url,
                        "--model", "tiny", "--concurrency", str(c), "--requests", str(n),
                        "--warmup", str(c), "--input-tokens", str(isl), "--output-tokens",
                        str(osl), "--db", str(db), "--json"], capture_output=True, text=True,
                       check=True)
    s = json.loads(p.stdout)
    return {"rps": s["requests_per_s"], "ok": s["completed"],
            "held": s["concurrency_held"]["mean"], "isl": s["mean_input_tokens"]}


def run_aiperf(aiperf: str, tokenizer: Path, url: str, c: int, n: int, isl: int, osl: int,
               tmp: Path) -> dict:
    out = tmp / f"aiperf-{c}"
    cmd = [aiperf, "profile", "--model", "tiny", "--url", url, "--endpoint-type", "completions",
           "--streaming", "--concurrency", str(c), "--request-count", str(n),
           "--warmup-request-count", str(c), "--synthetic-input-tokens-mean", str(isl),
           "--synthetic-input-tokens-stddev", "0", "--output-tokens-mean", str(osl),
           "--output-tokens-stddev", "0", "--extra-inputs", "ignore_eos:true",
           "--tokenizer", str(tokenizer), "--artifact-dir", str(out), "--ui-type", "none",
           "--use-server-token-count"]
    env = {**os.environ, "AIPERF_TELEMETRY": "0", "HF_HUB_DISABLE_TELEMETRY": "1"}
    p = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if p.returncode != 0:
        raise RuntimeError(f"aiperf failed: {(p.stderr or p.stdout)[-1500:]}")
    summary = json.loads(next(out.rglob("profile_export_aiperf.json")).read_text())
    rps = summary["request_throughput"]["avg"]
    # Concurrency actually held, from aiperf's own per-request records (Little's law).
    starts, ends = [], []
    for ln in next(out.rglob("profile_export.jsonl")).read_text().splitlines():
        meta = json.loads(ln).get("metadata", {})
        if meta.get("benchmark_phase", "profiling") != "profiling":
            continue
        if "request_start_ns" in meta and "request_end_ns" in meta:
            starts.append(meta["request_start_ns"])
            ends.append(meta["request_end_ns"])
    held = (sum(e - s for s, e in zip(starts, ends, strict=True)) / (max(ends) - min(starts))
            if starts else float("nan"))
    ok = int(summary.get("request_count", {}).get("avg", len(starts)))
    isl = summary.get("input_sequence_length", {}).get("avg", float("nan"))
    return {"rps": rps, "ok": ok, "held": held, "isl": isl}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--server", default="scripted,llama")
    ap.add_argument("--aiperf", default="/tmp/aiperf-venv/bin/aiperf")
    ap.add_argument("--concurrency", default="1,8,32")
    ap.add_argument("--requests-per-stream", type=int, default=25)
    ap.add_argument("--min-requests", type=int, default=200)
    ap.add_argument("--input-tokens", type=int, default=128)
    ap.add_argument("--output-tokens", type=int, default=16)
    ap.add_argument("--aiperf-input-tokens", type=int, default=92,
                    help="aiperf's synthetic length in its (word-level) tokens; its Shakespeare "
                         "words take more model tokens than ours, 92 gives the server about the "
                         "same prompt length as our 128 (both printed, from the server's usage)")
    a = ap.parse_args()
    if not Path(a.aiperf).exists():
        sys.exit(f"aiperf not found at {a.aiperf} (see this script's docstring)")
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs; "
          f"{a.input_tokens} prompt / {a.output_tokens} output tokens, ignore_eos, streaming")
    overall_ok = True
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        tok = tmp / "tokenizer"
        from moatmeter.bench.prompts import _WORDS

        py = str(Path(a.aiperf).with_name("python"))
        subprocess.run([py, "-c", TOKENIZER_SCRIPT, str(tok), " ".join(_WORDS)], check=True)
        for server in a.server.split(","):
            proc, url = start_scripted() if server == "scripted" else start_llama(tmp)
            try:
                print(f"\nserver: {server} at {url}")
                print(f"{'conc':>5}{'aiperf req/s':>14}{'held':>7}{'ours req/s':>12}{'held':>7}"
                      f"{'ratio':>8}")
                for c in (int(x) for x in a.concurrency.split(",")):
                    n = max(a.min_requests, c * a.requests_per_stream)
                    res = {}
                    for name in ("aiperf", "ours"):
                        server_stats(url, reset=True)
                        if name == "aiperf":
                            r = run_aiperf(a.aiperf, tok, url, c, n, a.aiperf_input_tokens,
                                           a.output_tokens, tmp)
                        else:
                            r = run_ours(url, c, n, a.input_tokens, a.output_tokens, tmp)
                        st = server_stats(url)
                        if st:  # the scripted server's own count of requests in flight
                            r["held_server"] = st["mean_inflight"]
                        res[name] = r
                    ratio = res["ours"]["rps"] / res["aiperf"]["rps"]
                    held = {k: abs(r["held"] - c) <= max(0.15 * c, 0.2) for k, r in res.items()}
                    held_ok = held["ours"]
                    mark = "".join(f"  ({k}: concurrency NOT held)" for k, v in held.items()
                                   if not v)
                    srv = ""
                    if "held_server" in res["ours"]:
                        srv = (f"   server-side mean in flight: aiperf "
                               f"{res['aiperf']['held_server']:.1f}, ours "
                               f"{res['ours']['held_server']:.1f}")
                    isl = (f"   prompt tokens (server usage): aiperf {res['aiperf']['isl']:.0f}, "
                           f"ours {res['ours']['isl']:.0f}")
                    print(f"{c:>5}{res['aiperf']['rps']:>14.1f}{res['aiperf']['held']:>7.1f}"
                          f"{res['ours']['rps']:>12.1f}{res['ours']['held']:>7.1f}"
                          f"{ratio:>7.2f}x{mark}{srv}{isl if server == 'llama' else ''}")
                    if c == 32:
                        met = ratio >= 1.5 and held_ok
                        overall_ok &= met
                        print(f"      goal at 32: >= 1.5x aiperf with concurrency held -> "
                              f"{'MET' if met else 'NOT MET'}")
            finally:
                proc.terminate()
                proc.wait(timeout=10)
    return 0 if overall_ok else 1


if __name__ == "__main__":
    sys.exit(main())
