"""End to end against a real engine: llama.cpp's native llama-server on 127.0.0.1 serving the
catalog's tiny-llama-test, written by the test itself as a random-weight GGUF.

The binary comes from scripts/deps/llama_server.sh (run by `make test`) or $MOATMETER_LLAMA_SERVER.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from servers.tiny_gguf import write_tiny_llama

from moatmeter.bench import store
from moatmeter.catalog.load import load_catalog


def find_llama_server() -> Path:
    env = os.environ.get("MOATMETER_LLAMA_SERVER")
    if env:
        return Path(env)
    cache = Path(os.environ.get("MOATMETER_CACHE", Path.home() / ".cache" / "moatmeter"))
    found = sorted(cache.glob("llama-server-*/bin/llama-server"))
    if not found:
        pytest.fail("llama-server is not built: run `bash scripts/deps/llama_server.sh` "
                    "(make test does) or set MOATMETER_LLAMA_SERVER")
    return found[-1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def llama_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    model = write_tiny_llama(tmp_path_factory.mktemp("gguf") / "tiny-llama-test.gguf",
                             load_catalog().model("tiny-llama-test").config)
    yield from serve(model, tmp_path_factory.mktemp("log") / "llama-server.log")


def serve(model: Path, log: Path) -> Iterator[str]:
    """Run llama-server on ``model`` until the generator is closed; yields its base URL."""
    binary = find_llama_server()
    port = free_port()
    with log.open("w") as fh:
        proc = subprocess.Popen(
            [str(binary), "-m", str(model), "--host", "127.0.0.1", "--port", str(port),
             "-c", "2048", "-np", "4", "-t", "2", "--no-warmup", "--no-webui",
             "-a", "tiny-llama-test"], stdout=fh, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 60
        while True:
            if proc.poll() is not None:
                pytest.fail(f"llama-server exited: {log.read_text()[-2000:]}")
            try:
                if httpx.get(url + "/health", timeout=1.0).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.time() > deadline:
                pytest.fail(f"llama-server not healthy after 60 s: {log.read_text()[-2000:]}")
            time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()


def test_bench_serve_against_llama_server(llama_url: str, tmp_path: Path) -> None:
    db = tmp_path / "llama.db"
    p = subprocess.run(
        [sys.executable, "-m", "moatmeter", "bench", "serve", "--url", llama_url, "--model",
         "tiny-llama-test", "--requests", "12", "--concurrency", "4", "--input-tokens", "32",
         "--output-tokens", "16", "--warmup", "2", "--db", str(db), "--json",
         "--accelerator", "xeon-6980p", "--count", "1", "--stack", "llamacpp-cpu",
         "--dtype", "fp16", "--catalog-model", "tiny-llama-test"],
        capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    s = json.loads(p.stdout)
    assert s["completed"] == 12 and s["errors"] == {}
    # ignore_eos + max_tokens: exactly 16 tokens each, counted by the server (usage).
    assert s["token_count_source"] == "usage" and s["mean_output_tokens"] == 16
    assert s["mean_input_tokens"] > 16  # prompt tokens as the server's tokenizer counted them
    assert s["ttft_ms"]["mean"] > 0 and s["tpot_ms"]["mean"] > 0
    assert s["output_tokens_per_s"] > 0 and s["concurrency_held"]["max"] == 4

    conn = store.connect(db)
    recs = store.load_requests(conn, s["run_id"])
    run = store.get_run(conn, s["run_id"])
    conn.close()
    assert [r.idx for r in recs] == list(range(12))
    for r in recs:
        assert r.ok and r.output_tokens == 16 and r.token_source == "usage"
        assert r.first_token_ns is not None and r.start_ns < r.first_token_ns <= r.end_ns
        # Streamed chunks are not tokens: random weights emit tokens that decode to nothing
        # (partial UTF-8 bytes), which chunk-counting harnesses would get wrong.
        assert 1 <= len(r.chunk_ns) <= 16
    props = run.server_info.get("/props", {})
    assert "build_info" in props or "model_path" in props, run.server_info.keys()

    obs = store.observations_from_store(db, [s["run_id"]])
    by = {o["metric"]: o for o in obs}
    assert by["output_tokens_per_s"]["engine"] == "llama.cpp"
    assert by["output_tokens_per_s"]["backend"] == "CPU"
    assert by["output_tokens_per_s"]["output_len"] == 16
    assert by["output_tokens_per_s"]["value"] == pytest.approx(s["output_tokens_per_s"])
    # the exported rows of a llama-server run are served rows: the perf model charges them
    # llama-server's per-slot sampling on the CPU (deploy.LLAMA_SERVER_SAMPLE_S_PER_VOCAB)
    from moatmeter.catalog.load import load_catalog
    from moatmeter.perf.observations import map_rows

    mapped, skipped = map_rows(load_catalog(), [{k: str(v) for k, v in o.items()} for o in obs])
    assert not skipped and mapped and all(m.host_sampling for m in mapped)


def test_llama_server_chat_endpoint_and_wrong_model_path(llama_url: str, tmp_path: Path) -> None:
    from moatmeter.bench.serve import ServeSettings, run

    res = run(ServeSettings(url=llama_url, model="tiny-llama-test", endpoint="chat",
                            requests=4, concurrency=2, output_tokens=8, input_tokens=16),
              tmp_path / "chat.db")
    assert res.summary["completed"] == 4, res.summary["errors"]
    assert res.summary["mean_output_tokens"] == 8
    p = subprocess.run([sys.executable, "-m", "moatmeter", "bench", "serve", "--url",
                        llama_url + "/v2/nothing", "--model", "m", "--db", str(tmp_path / "x.db")],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 2 and len(p.stderr.strip().splitlines()) == 1


def test_random_gguf_vocab_override_resizes_only_the_embedding_and_output(tmp_path: Path) -> None:
    """--vocab isolates what the vocabulary costs: same layers, other embedding/output rows."""
    import gguf

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "random_gguf.py"
    shapes = {}
    for vocab in (None, 1536):
        out = tmp_path / f"v{vocab}.gguf"
        extra = [] if vocab is None else ["--vocab", str(vocab)]
        proc = subprocess.run([sys.executable, str(script), "--model", "tiny-llama-test", "--out",
                               str(out), *extra], capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr
        shapes[vocab] = {t.name: tuple(t.shape) for t in gguf.GGUFReader(out).tensors}
    assert shapes[1536]["output.weight"][1] == 1536 != shapes[None]["output.weight"][1]
    assert shapes[1536]["token_embd.weight"][1] == 1536
    same = [k for k in shapes[None] if k not in ("output.weight", "token_embd.weight")]
    assert same and all(shapes[1536][k] == shapes[None][k] for k in same)
    small = subprocess.run([sys.executable, str(script), "--model", "tiny-llama-test", "--vocab",
                            "100", "--out", str(tmp_path / "x.gguf")], capture_output=True,
                           text=True, timeout=120)
    assert small.returncode == 2 and "too small" in small.stderr.strip()


@pytest.mark.parametrize("qtype", ["q4_0", "q8_0"])
def test_random_gguf_script_writes_a_model_llama_server_runs(tmp_path: Path, qtype: str) -> None:
    """benchmarks/random_gguf.py (used to time llama.cpp where no weights can be fetched):
    a Q4_0 or Q8_0 file llama-server loads, whose vocabulary makes each prompt word one token."""
    from moatmeter.bench.prompts import _WORDS

    model = tmp_path / f"tiny-{qtype}.gguf"
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "random_gguf.py"
    proc = subprocess.run([sys.executable, str(script), "--model", "tiny-llama-test", "--type",
                           qtype, "--out", str(model)], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    import gguf

    kinds = {t.name: t.tensor_type.name for t in gguf.GGUFReader(model).tensors}
    assert kinds["blk.0.attn_q.weight"] == qtype.upper() and kinds["output.weight"] == qtype.upper()
    bad = subprocess.run([sys.executable, str(script), "--model", "mixtral-8x7b", "--out",
                          str(tmp_path / "x.gguf")], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "only dense models" in bad.stderr
    gen = serve(model, tmp_path / "server.log")
    url = next(gen)
    try:
        words = " " + " ".join(_WORDS[:40])
        toks = httpx.post(url + "/tokenize", json={"content": words}, timeout=10).json()["tokens"]
        assert 40 <= len(toks) <= 42  # one token per word (plus at most a leading space piece)
        out = httpx.post(url + "/completion", json={"prompt": words, "n_predict": 6,
                                                    "ignore_eos": True}, timeout=30).json()
        assert out["tokens_predicted"] == 6
    finally:
        gen.close()
