"""`bench serve` against real local servers: scripted timings, injected faults, kill -9 + resume."""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from servers.launch import scripted
from typer.testing import CliRunner

from moatmeter.bench import store
from moatmeter.bench.serve import ServeSettings, _Body, _Events, run
from moatmeter.cli import app
from moatmeter.errors import InputError

CLI = [sys.executable, "-m", "moatmeter"]
RUNNER = CliRunner()


def inproc(*args: str) -> str:
    """In-process CLI call for the success paths (a subprocess costs seconds on a busy box)."""
    res = RUNNER.invoke(app, list(args))
    if res.exception is not None and not isinstance(res.exception, SystemExit):
        raise res.exception
    assert res.exit_code == 0, res.output
    return res.stdout


def cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=timeout)


def rows(db: Path, run_id: str) -> list[sqlite3.Row]:
    conn = store.connect(db)
    try:
        return conn.execute("SELECT * FROM serve_requests WHERE run_id=? ORDER BY idx",
                            (run_id,)).fetchall()
    finally:
        conn.close()


def test_scripted_timings_measured_within_5_percent(tmp_path: Path) -> None:
    # Scripted values large enough that a busy 2-core machine's wake-up delays (a few ms,
    # included in what any client measures) stay well inside 5 %.
    ttft, itl, n = 0.5, 0.05, 12
    with scripted("--ttft", str(ttft), "--itl", str(itl)) as url:
        res = run(ServeSettings(url=url, model="m", requests=16, concurrency=8, warmup=8,
                                output_tokens=n, input_tokens=32), tmp_path / "t.db")
    s = res.summary
    assert s["completed"] == 16 and s["errors"] == {}
    assert s["token_count_source"] == "usage" and s["mean_output_tokens"] == n
    assert s["ttft_ms"]["mean"] == pytest.approx(ttft * 1e3, rel=0.05)
    assert s["itl_ms"]["mean"] == pytest.approx(itl * 1e3, rel=0.05)
    assert s["tpot_ms"]["mean"] == pytest.approx(itl * 1e3, rel=0.05)
    assert s["e2e_ms"]["mean"] == pytest.approx((ttft + (n - 1) * itl) * 1e3, rel=0.05)
    assert s["concurrency_held"]["max"] == 8
    assert s["concurrency_held"]["mean"] > 7.0


def test_coalesced_events_get_distinct_timestamps(tmp_path: Path) -> None:
    """Four events per server write arrive in one read; each keeps its own parse timestamp."""
    with scripted("--ttft", "0.01", "--itl", "0.01", "--burst", "4") as url:
        res = run(ServeSettings(url=url, model="m", requests=4, concurrency=2, output_tokens=5),
                  tmp_path / "c.db")
    recs = store.load_requests(store.connect(tmp_path / "c.db"), res.run_id)
    for r in recs:
        assert r.ok and r.output_tokens == 20 and r.token_source == "usage"
        assert len(r.chunk_ns) == 20
        assert np.all(np.diff(r.chunk_ns) > 0)  # strictly increasing: no shared timestamps
        assert r.coalesced >= 15  # 3 of every 4 events arrived with another one
    assert res.summary["coalesced_event_fraction"] > 0.7


FAULT_KIND = {"ok": None, "http500": "http", "http503": "http", "disconnect": "disconnect",
              "stall": "timeout", "malformed": "malformed_event", "broken": "broken_stream",
              "badsse": "malformed_event"}


def test_fault_server_every_request_recorded_once_with_its_kind(tmp_path: Path) -> None:
    plan = ["ok", "http500", "disconnect", "stall", "malformed", "broken", "badsse", "http503"]
    db = tmp_path / "f.db"
    with scripted("--ttft", "0.01", "--itl", "0.005", "--stall", "20",
                  "--faults", ",".join(plan)) as url:
        out = json.loads(inproc(
            "bench", "serve", "--url", url, "--model", "m", "--requests", "24", "--concurrency",
            "6", "--output-tokens", "6", "--timeout", "1.0", "--db", str(db), "--json"))
    assert out["completed"] == 3
    expected: dict[str, int] = {}
    for i in range(24):
        k = FAULT_KIND[plan[i % len(plan)]]
        if k:
            expected[k] = expected.get(k, 0) + 1
    assert out["errors"] == expected
    assert out["http_statuses"] == {"500": 3, "503": 3}
    got = rows(db, out["run_id"])
    assert [r["idx"] for r in got] == list(range(24))
    for r in got:
        assert r["error_kind"] == FAULT_KIND[plan[r["idx"] % len(plan)]], dict(r)
        assert bool(r["ok"]) == (r["error_kind"] is None)
        if r["error_kind"] == "http":
            assert r["http_status"] in (500, 503)


def _wait_rows(db: Path, n: int, timeout: float = 30) -> str:
    t = time.time()
    while time.time() - t < timeout:
        if db.exists():
            try:
                conn = sqlite3.connect(db)
                got = conn.execute("SELECT run_id, COUNT(*) FROM serve_requests").fetchone()
                conn.close()
            except sqlite3.Error:
                got = None
            if got and got[1] >= n:
                return str(got[0])
        time.sleep(0.02)
    raise AssertionError(f"fewer than {n} rows after {timeout} s")


def test_kill9_then_resume_holds_exactly_the_requested_requests(tmp_path: Path) -> None:
    db = tmp_path / "k.db"
    with scripted("--ttft", "0.03", "--itl", "0.01", "--faults", "ok,ok,ok,http500") as url:
        proc = subprocess.Popen([*CLI, "bench", "serve", "--url", url, "--model", "m",
                                 "--requests", "60", "--concurrency", "4", "--output-tokens",
                                 "8", "--db", str(db)], stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        run_id = _wait_rows(db, 12)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        before = rows(db, run_id)
        assert 12 <= len(before) < 60
        out = json.loads(inproc("bench", "serve", "--resume", run_id, "--db", str(db), "--json"))
    after = rows(db, run_id)
    assert [r["idx"] for r in after] == list(range(60))  # none lost, none twice
    assert {r["session"] for r in after} == {0, 1}
    assert out["recorded"] == 60 and out["completed"] == 45 and out["errors"] == {"http": 15}
    assert out["status"] == "complete"
    kept = {r["idx"]: r["end_ns"] for r in before}
    assert all(r["end_ns"] == kept[r["idx"]] for r in after if r["idx"] in kept)


def test_ctrl_c_stops_cleanly_and_keeps_records(tmp_path: Path) -> None:
    db = tmp_path / "i.db"
    with scripted("--ttft", "0.03", "--itl", "0.01") as url:
        proc = subprocess.Popen([*CLI, "bench", "serve", "--url", url, "--model", "m",
                                 "--requests", "400", "--concurrency", "4", "--output-tokens",
                                 "8", "--db", str(db), "--json"], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        run_id = _wait_rows(db, 8)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=20)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and f"--resume {run_id}" in err
    summary = json.loads(out)
    assert summary["status"] == "interrupted"
    n = len(rows(db, run_id))
    assert summary["recorded"] == n and 8 <= n < 400


def test_unreachable_or_wrong_url_is_one_line_exit_2(tmp_path: Path) -> None:
    db = tmp_path / "u.db"
    p = cli("bench", "serve", "--url", "http://127.0.0.1:9", "--model", "m", "--db", str(db))
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert len(p.stderr.strip().splitlines()) == 1 and "cannot connect" in p.stderr
    with scripted() as url, pytest.raises(InputError, match="answered HTTP 404"):
        inproc("bench", "serve", "--url", url + "/nothing/here", "--model", "m", "--db", str(db))
    with pytest.raises(InputError, match="--url"):
        inproc("bench", "serve", "--url", "ftp://127.0.0.1/x", "--model", "m", "--db", str(db))
    assert json.loads(inproc("bench", "list", "--db", str(db), "--json")) == []  # no run rows


def test_rate_mode_sweep_chat_and_chunk_counting(tmp_path: Path) -> None:
    db = tmp_path / "r.db"
    with scripted("--ttft", "0.01", "--itl", "0.002", "--no-usage") as url:
        runs = json.loads(inproc(
            "bench", "serve", "--url", url, "--model", "m", "--endpoint", "chat", "--requests",
            "40", "--sweep-rates", "40,80", "--output-tokens", "5", "--db", str(db),
            "--json"))["runs"]
    assert [r["rate"] for r in runs] == [40.0, 80.0]
    for r in runs:
        assert r["completed"] == 40 and r["token_count_source"] == "chunks"
        assert r["mean_output_tokens"] == 5
    # Poisson arrivals: 40 requests at 40/s take about a second, at 80/s about half that.
    assert 0.4 < runs[0]["duration_s"] < 2.5 and runs[1]["duration_s"] < runs[0]["duration_s"]


def test_ollama_native_endpoint(tmp_path: Path) -> None:
    with scripted("--ttft", "0.01", "--itl", "0.002") as url:
        res = run(ServeSettings(url=url, model="llama3", endpoint="ollama", requests=6,
                                concurrency=3, output_tokens=7, input_tokens=10),
                  tmp_path / "o.db")
    s = res.summary
    assert s["completed"] == 6 and s["token_count_source"] == "usage"
    assert s["mean_output_tokens"] == 7 and s["mean_input_tokens"] == 10


def test_list_show_export_use_aiperf_names(tmp_path: Path) -> None:
    db = tmp_path / "e.db"
    with scripted("--ttft", "0.01", "--itl", "0.003", "--faults", "ok,ok,http503") as url:
        summary = json.loads(inproc(
            "bench", "serve", "--url", url, "--model", "m", "--requests", "9", "--concurrency",
            "3", "--output-tokens", "4", "--db", str(db), "--json", "--slo-ttft-ms", "1000",
            "--slo-tpot-ms", "1000"))
    rid = summary["run_id"]
    assert summary["goodput_rps"] == pytest.approx(summary["requests_per_s"])
    lst = json.loads(inproc("bench", "list", "--db", str(db), "--json"))
    assert lst[0]["run_id"] == rid and lst[0]["completed"] == 6 and lst[0]["errors"] == 3
    show = json.loads(inproc("bench", "show", rid, "--db", str(db), "--json"))
    assert show["ttft_ms"] == summary["ttft_ms"] and show["settings"]["requests"] == 9
    assert show["server_info"]["/v1/models"]["data"][0]["id"] == "scripted"
    ex = json.loads(inproc("bench", "export", rid, "--db", str(db)))["runs"][0]
    rec = ex["records"][0]
    for k in ("request_latency", "time_to_first_token", "inter_token_latency",
              "inter_chunk_latency", "output_sequence_length", "input_sequence_length",
              "request_start_ns", "request_end_ns", "error_type", "error_code"):
        assert k in rec
    assert ex["summary"]["request_count"]["avg"] == 6
    assert ex["summary"]["error_request_count"]["avg"] == 3
    ttfts = [r["time_to_first_token"] for r in ex["records"] if r["time_to_first_token"]]
    assert np.mean(ttfts) == pytest.approx(summary["ttft_ms"]["mean"])
    csv_out = inproc("bench", "export", rid, "--db", str(db), "--format", "csv")
    lines = csv_out.strip().splitlines()
    assert lines[0].startswith("run_id,request_index") and len(lines) == 10
    assert sum(",http,503," in ln for ln in lines) == 3
    p = cli("bench", "show", "nope", "--db", str(db))
    assert p.returncode == 2 and "no run 'nope'" in p.stderr
    with pytest.raises(InputError, match=r"missing\.db"):
        inproc("bench", "list", "--db", str(tmp_path / "missing.db"))
    with pytest.raises(InputError, match="no declared --accelerator"):
        inproc("bench", "compare", rid, "--db", str(db))
    with pytest.raises(InputError, match="--format"):
        inproc("bench", "export", rid, "--db", str(db), "--format", "xml")


def test_declared_run_becomes_observations(tmp_path: Path) -> None:
    db = tmp_path / "d.db"
    with scripted("--ttft", "0.02", "--itl", "0.005") as url:
        out = inproc("bench", "serve", "--url", url, "--model", "m", "--requests", "6",
                     "--concurrency", "2", "--output-tokens", "5", "--input-tokens", "20",
                     "--accelerator", "h100-sxm", "--count", "1", "--stack", "vllm-cuda",
                     "--dtype", "bf16", "--catalog-model", "llama-3.1-8b", "--db", str(db),
                     "--json")
        with pytest.raises(InputError, match="--accelerator"):
            inproc("bench", "serve", "--url", url, "--model", "m", "--accelerator", "nope-gpu",
                   "--db", str(db))
    rid = json.loads(out)["run_id"]
    obs = store.observations_from_store(db)
    assert {o["metric"] for o in obs} == {"output_tokens_per_s", "total_tokens_per_s",
                                         "requests_per_s", "ttft_ms", "tpot_ms"}
    o = {x["metric"]: x for x in obs}
    assert o["ttft_ms"]["accelerator"] == "NVIDIA H100 SXM5 80GB"
    assert o["ttft_ms"]["engine"] == "vLLM" and o["ttft_ms"]["backend"] == "CUDA"
    assert o["ttft_ms"]["model"] == "meta-llama/Llama-3.1-8B-Instruct"
    assert o["ttft_ms"]["scenario"] == "fixed_concurrency" and o["ttft_ms"]["concurrency"] == 2
    assert o["ttft_ms"]["output_len"] == 5 and o["ttft_ms"]["input_len"] == 20
    assert o["ttft_ms"]["value"] == pytest.approx(
        json.loads(out)["ttft_ms"]["mean"])
    assert rid in o["ttft_ms"]["source"]
    assert store.observations_from_store(db, [rid]) == obs
    cmp = json.loads(inproc("bench", "compare", rid, "--db", str(db), "--json"))
    got = {r["metric"]: r for r in cmp["rows"]}
    assert got["ttft_ms"]["measured"] == pytest.approx(o["ttft_ms"]["value"])
    assert got["tpot_ms"]["predicted"] > 0 and got["output_tokens_per_s"]["predicted"] > 0
    assert got["tpot_ms"]["predicted_over_measured"] == pytest.approx(
        got["tpot_ms"]["predicted"] / got["tpot_ms"]["measured"])


def test_dataset_prompts_and_bad_dataset(tmp_path: Path) -> None:
    data = [{"conversations": [{"from": "human", "value": "why is the sky blue"},
                               {"from": "gpt", "value": "because of Rayleigh scattering"}]}]
    f = tmp_path / "sharegpt.json"
    f.write_text(json.dumps(data))
    with scripted("--ttft", "0.005", "--itl", "0.001") as url:
        res = run(ServeSettings(url=url, model="m", requests=3, concurrency=1,
                                dataset=str(f)), tmp_path / "ds.db")
        assert res.summary["mean_output_tokens"] == 4  # the reference answer's length
        bad = tmp_path / "bad.json"
        bad.write_text("{not json")
        p = cli("bench", "serve", "--url", url, "--model", "m", "--dataset", str(bad),
                "--db", str(tmp_path / "ds.db"))
    assert p.returncode == 2 and "bad.json" in p.stderr and "Traceback" not in p.stderr


def test_stream_decoders_survive_any_split() -> None:
    """Chunked framing and SSE framing reassemble correctly however TCP splits the bytes."""
    events = [b'{"choices":[{"text":"a%d"}]}' % i for i in range(30)] + [b"[DONE]"]
    sse = b"".join(b"data: " + e + b"\n\n" for e in events)
    pieces = [sse[i:i + 7] for i in range(0, len(sse), 7)]
    wire = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in pieces) + b"0\r\n\r\n"
    rng = np.random.default_rng(1)
    for _ in range(50):
        cuts = sorted(rng.choice(np.arange(1, len(wire)), size=12, replace=False))
        body, parser, got = _Body(True, None), _Events(False), []
        for a, b in zip([0, *cuts], [*cuts, len(wire)], strict=True):
            got += parser.feed(body.feed(wire[a:b]))
        assert got == events and body.done


def test_help_has_example() -> None:
    for cmd in ("serve", "list", "show", "export", "compare"):
        assert "Example" in inproc("bench", cmd, "--help"), cmd


def test_no_traffic_to_any_other_host(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Proxies from the environment are ignored: every connection goes to the --url host."""
    import socket

    sentinel = socket.socket()
    sentinel.bind(("127.0.0.1", 0))
    sentinel.listen(16)
    sentinel.setblocking(False)
    proxy = f"http://127.0.0.1:{sentinel.getsockname()[1]}"
    for var in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy"):
        monkeypatch.setenv(var, proxy)
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    try:
        with scripted("--ttft", "0.005", "--itl", "0.001") as url:
            res = run(ServeSettings(url=url, model="m", requests=3, concurrency=1,
                                    output_tokens=3), tmp_path / "p.db")
        assert res.summary["completed"] == 3
        assert "/v1/models" in store.get_run(store.connect(tmp_path / "p.db"),
                                             res.run_id).server_info
        with pytest.raises(BlockingIOError):
            sentinel.accept()
    finally:
        sentinel.close()


def test_length_distributions_and_deterministic_prompts() -> None:
    from moatmeter.bench.prompts import LengthSpec, synthetic

    rng = np.random.default_rng(0)
    u = LengthSpec(100, "uniform", 20).sample(rng, 4000)
    assert u.min() >= 80 and u.max() <= 120 and abs(u.mean() - 100) < 1.5
    n = LengthSpec(200, "normal", 30).sample(rng, 4000)
    assert abs(n.mean() - 200) < 3 and abs(n.std() - 30) < 3
    assert (LengthSpec(5, "normal", 50).sample(rng, 1000) >= 1).all()  # never below one token
    a = synthetic(50, LengthSpec(64, "uniform", 16), LengthSpec(32, "normal", 8), seed=7)
    b = synthetic(50, LengthSpec(64, "uniform", 16), LengthSpec(32, "normal", 8), seed=7)
    assert a == b  # a resumed run regenerates exactly the same requests
    assert all(len(p.text.split()) == p.input_tokens for p in a)
    assert len({p.text for p in a}) == 50 and len({p.max_tokens for p in a}) > 5
    with pytest.raises(InputError, match="distribution"):
        LengthSpec(10, "zipf").sample(rng, 3)
    with pytest.raises(InputError, match="--input-dist"):
        ServeSettings(url="http://127.0.0.1:9", model="m", input_dist="zipf").validate()
    with pytest.raises(InputError, match="--output-spread"):
        ServeSettings(url="http://127.0.0.1:9", model="m", output_spread=-1).validate()
