"""`predict`, `validate`, `calibrate` through the real CLI (subprocess): contracts and bad input."""

from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from moatmeter.catalog.load import load_catalog
from moatmeter.perf.calibrate import Calibration
from moatmeter.perf.observations import bundled_observations, map_rows, read_observations
from moatmeter.perf.step import PER_SEQ_CPU_S


def run(*args: str) -> subprocess.CompletedProcess[str]:
    """The real executable, for exit codes and stderr as a user sees them."""
    return subprocess.run([sys.executable, "-m", "moatmeter", *args], capture_output=True,
                          text=True, timeout=120)


@pytest.fixture
def cli(capsys, monkeypatch):
    """The real entry point ``moatmeter.cli.main`` in-process (same code path, no startup cost)."""
    from moatmeter.cli import main

    def call(*args: str) -> subprocess.CompletedProcess[str]:
        monkeypatch.setattr(sys, "argv", ["moatmeter", *args])
        code = 0
        try:
            main()
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        cap = capsys.readouterr()
        return subprocess.CompletedProcess(args, code, cap.out, cap.err)

    return call


def one_line_error(p: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert p.returncode == 2, p.stderr
    assert "Traceback" not in p.stderr
    lines = [ln for ln in p.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, p.stderr
    for n in needles:
        assert n in lines[0], lines[0]


PREDICT = ["predict", "--accelerator", "h100-sxm", "--count", "8", "--tp", "8", "--stack",
           "vllm-cuda", "--model", "llama-3.1-70b", "--dtype", "bf16", "--input", "1024",
           "--output", "256"]


def test_predict_json_contract(cli):
    p = cli(*PREDICT, "--concurrency", "32", "--json")
    assert p.returncode == 0, p.stderr
    d = json.loads(p.stdout)
    assert d["feasible"] and d["devices"] == 8
    m = d["memory"]
    assert m["kv_bytes_per_token"] == 327680
    assert m["weights_gb"] == pytest.approx(141.1e9 / 8 / 2**30, rel=0.01)
    assert d["ttft_s"] > 0 and 0 < d["tpot_s"] <= d["tpot_p95_s"]
    assert d["output_tokens_per_s"] == pytest.approx(d["requests_per_s"] * 256, rel=1e-6)
    assert d["bottleneck"] in ("compute", "memory", "interconnect", "overhead", "kv_capacity")
    b = d["output_tokens_per_s_band"]
    assert b["p10"] < b["p50"] < b["p90"]
    assert d["calibration_note"]
    # P10-P90 bands: throughput's at 1.1 x the calibrated sigma x (1 + 0.5 x the share of the
    # request time before the first token), latencies' at TPOT 1.0x and TTFT 3.2x
    z90 = 1.2816
    share = d["ttft_s"] / (d["ttft_s"] + 255 * d["tpot_s"])
    assert 0.0 < share < 0.2 and d["prefill_share"] == pytest.approx(share)
    for band, spread in (("output_tokens_per_s_band", 1.1 * (1.0 + 0.5 * share)),
                         ("tpot_band", 1.0), ("ttft_band", 3.2)):
        lo, mid, hi = (d[band][k] for k in ("p10", "p50", "p90"))
        assert math.log(hi / mid) == pytest.approx(z90 * spread * d["sigma"], rel=1e-9)
        assert math.log(mid / lo) == pytest.approx(z90 * spread * d["sigma"], rel=1e-9)
    assert d["ttft_band"]["p50"] == d["ttft_s"] and d["tpot_band"]["p50"] == d["tpot_s"]


def test_predict_dp_attention_flag(cli):
    base = ["predict", "--accelerator", "h200-sxm", "--count", "8", "--tp", "8", "--stack",
            "sglang-cuda", "--model", "deepseek-r1", "--dtype", "fp8", "--input", "3200",
            "--output", "800", "--concurrency", "128", "--json"]
    off, on = (json.loads(cli(*base, *extra).stdout) for extra in ([], ["--dp-attention"]))
    # MLA's latent is replicated on all 8 ranks under plain TP; DP attention keeps one copy
    assert on["memory"]["kv_bytes_per_token"] * 8 == off["memory"]["kv_bytes_per_token"]
    assert on["memory"]["weights_gb"] > off["memory"]["weights_gb"]
    assert on["memory"]["max_sequences"] > 4 * off["memory"]["max_sequences"]
    assert any("data-parallel" in n for n in on["notes"])


def test_predict_enforce_eager_slows_decode_not_memory(cli):
    plain, eager = (json.loads(cli(*PREDICT, "--concurrency", "8", "--json", *extra).stdout)
                    for extra in ([], ["--enforce-eager"]))
    assert eager["memory"] == plain["memory"]
    assert eager["tpot_s"] > plain["tpot_s"]
    assert eager["output_tokens_per_s"] < plain["output_tokens_per_s"]
    assert any("no CUDA graphs" in n for n in eager["notes"])


def test_predict_recv_interval_delays_the_first_token(cli):
    plain, polled = (json.loads(cli(*PREDICT, "--concurrency", "32", "--json", *extra).stdout)
                     for extra in ([], ["--recv-interval", "30"]))
    assert polled["ttft_s"] > plain["ttft_s"]
    assert polled["tpot_s"] == pytest.approx(plain["tpot_s"])
    assert any("every 30 decode steps" in n for n in polled["notes"])
    one_line_error(cli(*PREDICT, "--recv-interval", "0"), "recv-interval", "positive integer")


def test_predict_overlap_scheduler_delays_the_first_token_under_load(cli):
    on, off = (json.loads(cli(*PREDICT, "--concurrency", "32", "--json", *extra).stdout)
               for extra in ([], ["--no-overlap-scheduler"]))
    assert on["ttft_s"] > off["ttft_s"]
    # without it, vLLM's per-sequence CPU work (PER_SEQ_CPU_S for each of <= 32 running
    # sequences) lengthens every step
    gap = off["tpot_s"] - on["tpot_s"]
    assert 0.0 < gap <= 32 * PER_SEQ_CPU_S * 1.0001
    assert any(n.startswith("overlap scheduler") for n in on["notes"])
    assert not any(n.startswith("overlap scheduler") for n in off["notes"])
    assert any("per-sequence CPU work" in n for n in off["notes"])
    assert not any("per-sequence CPU work" in n for n in on["notes"])
    alone = [json.loads(cli(*PREDICT, "--concurrency", "1", "--json", *extra).stdout)["ttft_s"]
             for extra in ([], ["--no-overlap-scheduler"])]
    assert alone[0] == pytest.approx(alone[1])


def test_predict_batch_wait_delays_the_first_token(cli):
    plain, held = (json.loads(cli(*PREDICT, "--concurrency", "32", "--json", *extra).stdout)
                   for extra in ([], ["--batch-wait-iters", "40", "--batch-wait-tokens", "6554"]))
    assert held["ttft_s"] > plain["ttft_s"]
    assert any("waits up to 40 steps" in n for n in held["notes"])
    one_line_error(cli(*PREDICT, "--batch-wait-iters", "-1"), "batch-wait-iters")


def test_predict_profile_tokens_shrink_the_kv_pool(cli):
    base = ["predict", "--accelerator", "h100-sxm", "--count", "8", "--tp", "8", "--stack",
            "vllm-cuda", "--model", "llama-3.1-405b", "--dtype", "fp8_mlp", "--input", "2048",
            "--output", "2048", "--concurrency", "64", "--json"]
    plain, prof = (json.loads(cli(*base, *extra).stdout)
                   for extra in ([], ["--profile-tokens", "91680"]))
    # 91,680 x 2 B x (2 x 16,384 + 3 x 53,248 / 8) = 9.0 GiB per H100 kept out of the KV cache
    assert plain["memory"]["kv_pool_gb"] - prof["memory"]["kv_pool_gb"] == pytest.approx(9.0,
                                                                                      abs=0.05)
    assert prof["memory"]["max_sequences"] < plain["memory"]["max_sequences"]
    assert prof["output_tokens_per_s"] < plain["output_tokens_per_s"]
    assert any("profiling pass of 91,680 tokens" in n for n in prof["notes"])
    one_line_error(cli(*base, "--profile-tokens", "0"), "profile tokens must be ≥ 1")


def test_predict_speculative_decoding(cli):
    base = ["predict", "--accelerator", "b200", "--count", "8", "--tp", "8", "--stack",
            "trtllm-cuda", "--model", "deepseek-r1", "--dtype", "fp4", "--input", "1024",
            "--output", "2048", "--concurrency", "1", "--json"]
    off = json.loads(cli(*base).stdout)
    on = json.loads(cli(*base, "--spec-tokens", "3", "--spec-accept-len", "2.82").stdout)
    assert on["tpot_s"] < 0.6 * off["tpot_s"]
    assert on["output_tokens_per_s"] > 1.6 * off["output_tokens_per_s"]
    assert on["ttft_s"] == pytest.approx(off["ttft_s"], rel=0.05)  # prefill is not speculated
    assert any("3 drafted tokens per step" in n and "2.82 tokens per step" in n
               for n in on["notes"])
    one_line_error(cli(*base, "--spec-tokens", "3"), "field 'spec-accept'", "--spec-accept-len")
    one_line_error(cli(*base, "--spec-tokens", "3", "--spec-accept", "1.5"), "[0, 1)")
    one_line_error(cli(*base, "--spec-tokens", "3", "--spec-accept-len", "5"),
                   "between 1 and spec tokens + 1 = 4")
    one_line_error(cli(*base, "--spec-accept", "0.5"), "need --spec-tokens ≥ 1")


def test_predict_text_and_rate(cli):
    p = cli(*PREDICT, "--rate", "2")
    assert p.returncode == 0, p.stderr
    assert "TTFT" in p.stdout and "bottleneck" in p.stdout and "memory per device" in p.stdout


def test_predict_infeasible_is_reported_not_an_error(cli):
    p = cli("predict", "-a", "rtx-4090", "-s", "vllm-cuda", "-m", "llama-3.1-70b", "--input",
            "100", "--output", "10", "--json")
    assert p.returncode == 0
    d = json.loads(p.stdout)
    assert not d["feasible"] and "weights do not fit" in d["reason"]


@pytest.mark.parametrize("args,needles", [
    (["--accelerator", "h999"], ["unknown accelerator id 'h999'"]),
    (["--stack", "nope-cuda"], ["unknown stack id"]),
    (["--model", "llama-9"], ["unknown model id"]),
    (["--tp", "3", "--count", "3"], ["TP 3 does not divide the 64 attention heads"]),
    (["--input", "-5"], ["--input must be ≥ 0"]),
    (["--dtype", "bf17"], ["unknown weight dtype 'bf17'"]),
    (["--max-batch", "0"], ["field 'max-batch'", "max batch must be a positive integer, got 0"]),
])
def test_predict_bad_input(cli, args, needles):
    base = dict(zip(PREDICT[1::2], PREDICT[2::2], strict=True))
    for k, v in zip(args[::2], args[1::2], strict=True):
        base[k] = v
    flat = [x for kv in base.items() for x in kv]
    one_line_error(cli("predict", *flat), *needles)


def test_bad_input_exit_code_from_the_executable():
    one_line_error(run(*PREDICT[:-2], "--output", "-3"), "--output must be ≥ 1")


def _sample_rows(n_sources: int = 2, per_source: int = 3,
                 metrics: tuple[str, ...] = ("output_tokens_per_s",)) -> list[dict[str, str]]:
    """A few real bundled rows from distinct sources that the model can map: per source,
    ``per_source`` rows of each of ``metrics``."""
    rows = read_observations(bundled_observations())
    cat = load_catalog()
    ok = {o.id for o in map_rows(cat, rows)[0]}
    by: dict[str, dict[str, list[dict[str, str]]]] = {}
    for r in rows:
        if r["id"] in ok and r["metric"] in metrics:
            by.setdefault(r["source"], {}).setdefault(r["metric"], []).append(r)
    srcs = [s for s, v in by.items()
            if all(len(v.get(m, [])) >= per_source for m in metrics)][:n_sources]
    return [r for s in srcs for m in metrics for r in by[s][m][:per_source]]


def _write(path: Path, rows: list[dict[str, str]], cols: list[str] | None = None) -> Path:
    cols = cols or list(rows[0])
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    return path


def test_validate_contract_and_skips(cli, tmp_path):
    rows = _sample_rows()
    bad_acc = dict(rows[0], id="x-unknown-acc", accelerator="Imaginary GPU 9000")
    bad_metric = dict(rows[0], id="x-bad-metric", metric="joules_per_token")
    f = _write(tmp_path / "obs.csv", [*rows, bad_acc, bad_metric])
    p = cli("validate", "--observations", str(f), "--json")
    assert p.returncode == 0, p.stderr
    d = json.loads(p.stdout)
    assert set(d) == {"rows", "summary"}
    assert {"n", "median_ape", "p90_ape", "skipped"} <= set(d["summary"])
    assert d["summary"]["n"] == len(rows) == len(d["rows"])
    for r in d["rows"]:
        assert set(r) == {"id", "predicted", "measured", "ape"}
        assert r["ape"] == pytest.approx(abs(r["predicted"] - r["measured"]) / r["measured"])
    reasons = {s["id"]: s["reason"] for s in d["summary"]["skipped"]}
    assert "unknown accelerator" in reasons["x-unknown-acc"]
    assert "unsupported metric" in reasons["x-bad-metric"]


def test_validate_models_speculative_rows(cli, tmp_path):
    rows = read_observations(bundled_observations())
    mtp = next(r for r in rows if r["id"] == "trtllm-blog1-dsr1-b200x8-bs1-mtp3-out")
    plain = next(r for r in rows if r["id"] == "trtllm-blog1-dsr1-b200x8-bs1-nomtp-out")
    bad = dict(mtp, id="x-spec-bad", notes=mtp["notes"].replace("accept_len=2.82",
                                                                "accept_len=7"))
    none = dict(mtp, id="x-spec-none", notes=mtp["notes"].replace("accept_len=2.82", ""))
    path = _write(tmp_path / "spec.csv", [plain, mtp, bad, none])
    p = cli("validate", "--observations", str(path), "--json")
    assert p.returncode == 0, p.stderr
    d = json.loads(p.stdout)
    pred = {r["id"]: r["predicted"] for r in d["rows"]}
    # same deployment and fit: 3 MTP drafts at 2.82 tokens per step more than double tok/s
    assert 2.0 < pred[mtp["id"]] / pred[plain["id"]] < 2.82
    skipped = {s["id"]: s["reason"] for s in d["summary"]["skipped"]}
    assert "acceptance length must be between 1 and spec tokens + 1" in skipped["x-spec-bad"]
    assert "--spec-accept" in skipped["x-spec-none"]


def test_validate_missing_column(cli, tmp_path):
    rows = _sample_rows(1, 1)
    cols = [c for c in rows[0] if c != "metric"]
    f = _write(tmp_path / "nometric.csv", rows, cols)
    one_line_error(run("validate", "--observations", str(f), "--json"), "nometric.csv",
                   "missing column 'metric'")
    one_line_error(cli("validate", "--observations", str(tmp_path / "absent.csv")),
                   "absent.csv", "not found")


def test_calibrate_then_validate_cv(cli, tmp_path):
    rows = _sample_rows(2, 3)
    f = _write(tmp_path / "obs.csv", rows)
    out = tmp_path / "cal.json"
    p = cli("calibrate", "--no-bundled", "--observations", str(f), "--out", str(out), "--json")
    assert p.returncode == 0, p.stderr
    d = json.loads(p.stdout)
    assert d["modelled"] == len(rows) and d["pairs"]
    cal = Calibration.load(out)
    assert sum(cal.counts["pair"].values()) == len(rows)
    # in-sample with the fitted file, then leave-one-source-out
    p2 = cli("validate", "--observations", str(f), "--calibration", str(out), "--json")
    assert p2.returncode == 0, p2.stderr
    ins = json.loads(p2.stdout)["summary"]
    p3 = cli("validate", "--observations", str(f), "--cv", "--json")
    assert p3.returncode == 0, p3.stderr
    cv = json.loads(p3.stdout)["summary"]
    assert cv["cv"] == "leave-one-source-out" and cv["sources"] == 2
    assert cv["n"] == len(rows) and "vendor" in cv["by"] and "stack" in cv["by"]
    assert ins["median_ape"] <= cv["median_ape"] + 1e-9  # held-out error is never better here
    st = cv["error_structure"]  # where that error lies, on the same held-out rows
    assert st["held_out"]["n"] == cv["n"]
    assert st["held_out"]["p90_ape"] == pytest.approx(cv["p90_ape"])
    v = st["log_error_variance"]
    assert v["between_documents"] + v["within_documents"] == pytest.approx(v["total"])
    assert sum(g["n"] for g in st["by_other_documents"].values()) == cv["n"]
    p4 = cli("validate", "--observations", str(f), "--cv")
    assert p4.returncode == 0, p4.stderr
    assert "of the variance of log(predicted / measured) lies between the sources' mean errors" \
        in p4.stdout


def test_predict_and_plan_read_a_calibration_file(cli, tmp_path, monkeypatch):
    """A refitted calibration (``calibrate --out``) reaches ``predict`` and ``plan``, by flag or
    by $MOATMETER_CALIBRATION: here one whose vllm-cuda offsets make that stack slower."""
    from moatmeter.perf.calibrate import bundled_path

    d = json.loads(bundled_path().read_text())
    c, m, o = d["offsets"]["stack"]["vllm-cuda"]
    d["offsets"]["stack"]["vllm-cuda"] = [c - 1.0, m - 1.0, o + 1.0]
    slow = tmp_path / "slow.json"
    slow.write_text(json.dumps(d))
    args = (*PREDICT, "--concurrency", "32", "--json")
    base = json.loads(cli(*args).stdout)
    p = cli(*args, "--calibration", str(slow))
    assert p.returncode == 0, p.stderr
    own = json.loads(p.stdout)
    assert own["eff_compute"] < base["eff_compute"] and own["eff_memory"] < base["eff_memory"]
    assert own["overhead_ms"] == pytest.approx(base["overhead_ms"] * math.e, rel=0.01)
    assert own["tpot_s"] > base["tpot_s"]
    monkeypatch.setenv("MOATMETER_CALIBRATION", str(slow))
    assert json.loads(cli(*args).stdout)["tpot_s"] == own["tpot_s"]
    monkeypatch.delenv("MOATMETER_CALIBRATION")

    scn = tmp_path / "s.yaml"
    scn.write_text(json.dumps({
        "name": "t", "model": "llama-3.1-8b",
        "traffic": {"requests_per_s": 2.0, "input_tokens": 1000, "output_tokens": 250},
        "slo": {"ttft_p95_s": 2.0, "tpot_p95_s": 0.1},
        "constraints": {"accelerators": ["h100-sxm"], "stacks": ["vllm-cuda", "sglang-cuda"],
                        "precisions": ["bf16"]}}))

    def goodputs(*extra: str) -> dict[str, float]:
        p = cli("plan", str(scn), "--json", "--samples", "200", "--sovereign", *extra)
        assert p.returncode == 0, p.stderr
        d = json.loads(p.stdout)
        given = [n for n in d["notes"] if "calibration file given" in n]
        assert len(given) == (1 if extra else 0), d["notes"]
        return {o["id"]: o["goodput_rps_per_replica"] for o in d["options"]}

    a, b = goodputs(), goodputs("--calibration", str(slow))
    vllm = [k for k in a if "vllm-cuda" in k]
    other = [k for k in a if "sglang-cuda" in k]
    assert vllm and other and set(a) == set(b)
    assert all(b[k] < a[k] for k in vllm)  # the file's slower vllm-cuda
    assert all(b[k] == a[k] for k in other)  # the rest as bundled
    txt = cli("plan", str(scn), "--samples", "200", "--sovereign", "--calibration", str(slow))
    assert txt.returncode == 0 and "note: performance from a calibration file given" in txt.stdout
    bad = cli("plan", str(scn), "--calibration", str(tmp_path / "none.json"))
    assert bad.returncode == 2 and "none.json: calibration file not found" in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1


def test_validate_cv_band_coverage_per_metric(cli, tmp_path):
    rows = _sample_rows(2, 2, ("output_tokens_per_s", "ttft_ms"))
    assert {r["metric"] for r in rows} == {"output_tokens_per_s", "ttft_ms"}
    f = _write(tmp_path / "obs.csv", rows)
    p = cli("validate", "--observations", str(f), "--cv", "--json")
    assert p.returncode == 0, p.stderr
    s = json.loads(p.stdout)["summary"]
    by = s["p10_p90_band_coverage_by_metric"]
    assert set(by) == {"output_tokens_per_s", "ttft_ms"}
    assert all(0.0 <= v <= 1.0 for v in by.values())
    n = {m: sum(r["metric"] == m for r in rows) for m in by}
    overall = sum(by[m] * n[m] for m in by) / len(rows)
    assert s["p10_p90_band_coverage"] == pytest.approx(overall)


def test_cv_in_worker_processes_gives_the_same_result(cli, tmp_path):
    """The folds are independent: fitted in two worker processes they give exactly what one
    process gives, row for row, and the CLI's --jobs reaches the same figures."""
    from moatmeter.perf.validate import MAX_DEFAULT_JOBS, default_jobs, loso_cv

    assert 1 <= default_jobs() <= MAX_DEFAULT_JOBS
    rows = _sample_rows(3, 2, ("output_tokens_per_s", "ttft_ms"))
    one = loso_cv(load_catalog(), rows, jobs=1, details=True)
    done: list[tuple[int, int]] = []
    env = dict(os.environ)
    two = loso_cv(load_catalog(), rows, jobs=2, details=True,
                  progress=lambda k, n: done.append((k, n)))
    assert dict(os.environ) == env  # the workers' one-BLAS-thread setting is not left behind
    assert [r["predicted"] for r in one["rows"]] == [r["predicted"] for r in two["rows"]]
    assert [(d["p10"], d["p90"]) for d in one["details"]] == [
        (d["p10"], d["p90"]) for d in two["details"]]
    assert one["summary"] == two["summary"] and one["summary"]["sources"] == 3
    assert done == [(1, 3), (2, 3), (3, 3)]  # progress counts folds as they finish
    p = cli("validate", "--observations", str(_write(tmp_path / "obs.csv", rows)), "--cv",
            "--jobs", "2", "--json")
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["summary"]["median_ape"] == pytest.approx(
        one["summary"]["median_ape"])
    one_line_error(cli("validate", "--cv", "--jobs", "0"), "--jobs", "≥ 1")


def test_validate_counts_rows_inside_each_metrics_band():
    from moatmeter.perf.calibrate import bundled_path, metric_sigma
    from moatmeter.perf.validate import validate_rows

    cat = load_catalog()
    rows = _sample_rows(2, 3, ("output_tokens_per_s", "ttft_ms"))
    res = validate_rows(cat, rows)
    err = {r["id"]: abs(math.log(r["predicted"] / r["measured"])) for r in res["rows"]}
    metric = {r["id"]: r["metric"] for r in rows}
    # a throughput row's band widens with its prompt's share of the request time: the share
    # from the same row's predicted TTFT and TPOT
    twins = [{**r, "id": f"{r['id']}|{m}", "metric": m} for r in rows
             if r["metric"] == "output_tokens_per_s" for m in ("ttft_ms", "tpot_ms")]
    lat = {r["id"]: r["predicted"] for r in validate_rows(cat, twins)["rows"]}
    share = {r["id"]: lat[f"{r['id']}|ttft_ms"] / (lat[f"{r['id']}|ttft_ms"] + (
        float(r["output_len"]) - 1.0) * lat[f"{r['id']}|tpot_ms"])
        for r in rows if r["metric"] == "output_tokens_per_s"}
    assert all(0.0 < v < 1.0 for v in share.values())
    for spread in (0.0, 0.3, 100.0):
        # every pair's spread set by hand: sigma = clip(spread x SIGMA_SCALE, 0.08, 1.5)
        cal = Calibration.load(bundled_path())
        for lv in cal.sigma:
            cal.sigma[lv] = {k: spread for k in cal.sigma[lv]}
        e = cal.lookup("vllm-cuda", "vllm", "Hopper", "nvidia/gpu/datacenter")
        cov = validate_rows(cat, rows, cal)["summary"]["p10_p90_band_coverage_by_metric"]
        for m in ("output_tokens_per_s", "ttft_ms"):
            ids = [i for i in err if metric[i] == m]
            inside = [err[i] <= 1.2816 * metric_sigma(e.sigma, m, share.get(i, 0.0))
                      for i in ids]
            assert cov[m] == pytest.approx(sum(inside) / len(ids))
        if spread == 100.0:  # sigma at its 1.5 cap: every row within 8.3x (470x for TTFT)
            assert cov == {"output_tokens_per_s": 1.0, "ttft_ms": 1.0}


def test_calibrate_store_errors(cli, tmp_path):
    one_line_error(cli("calibrate", "--from-store", str(tmp_path / "none.db"), "--out",
                       str(tmp_path / "c.json")), "none.db", "not found")


def _store_with_run(db: Path) -> None:
    """A real bench SQLite store holding one declared run of 12 streamed requests."""
    import numpy as np

    from moatmeter.bench import store

    conn = store.connect(db)
    store.create_run(conn, run_id="r1", url="http://127.0.0.1:9", endpoint="/v1/completions",
                     model="m", requested=12, settings={"concurrency": 2},
                     declared={"accelerator": "rtx-4090", "count": 1, "stack": "llamacpp-cuda",
                               "catalog_model": "llama-3.1-8b", "dtype": "q4_k_m", "tp": 1},
                     server_info={}, client_info={})
    t0 = 1_000_000_000
    for i in range(12):
        start = t0 + (i // 2) * 2_000_000_000
        first = start + 60_000_000
        chunks = first + np.arange(64, dtype=np.int64) * 12_000_000  # 12 ms per token
        store.insert_request(conn, "r1", store.RequestRecord(
            idx=i, ok=True, wall_start_ns=start, start_ns=start, first_token_ns=first,
            end_ns=int(chunks[-1]), input_tokens=256, output_tokens=64, token_source="usage",
            chunk_ns=chunks))
    store.set_status(conn, "r1", "done")
    conn.commit()
    conn.close()


def test_calibrate_from_a_real_store(cli, tmp_path):
    db = tmp_path / "runs.db"
    _store_with_run(db)
    out = tmp_path / "cal.json"
    p = cli("calibrate", "--no-bundled", "--from-store", str(db), "--out", str(out), "--json")
    assert p.returncode == 0, p.stderr
    d = json.loads(p.stdout)
    assert d["modelled"] >= 4 and "llamacpp-cuda|Ada" in d["pairs"]
    assert Calibration.load(out).counts["stack"]["llamacpp-cuda"] == d["modelled"]


def test_source_agreement_predicts_each_row_from_the_other_sources():
    from moatmeter.perf.validate import source_agreement

    base = _sample_rows(1, 1)[0]
    a = dict(base, id="a", source="doc A", value="100", engine_version="1.0")
    b = dict(base, id="b", source="doc B", value="125", engine_version="2.0")
    c = dict(base, id="c", source="doc C", value="80")
    a2 = dict(a, id="a2", value="400")  # a second row of doc A: not "another source" for a
    lone = dict(base, id="lone", source="doc B", value="50",
                concurrency=str(float(base["concurrency"] or 1) + 1))  # another configuration
    same_doc = [dict(base, id=f"s{i}", source="doc S", value=str(v), concurrency="999")
                for i, v in enumerate((10, 20))]
    res = source_agreement([a, b, c, a2, lone, *same_doc])
    got = {r["id"]: r for r in res["rows"]}
    assert set(got) == {"a", "b", "c", "a2"}  # one source alone says nothing about agreement
    assert res["summary"]["configurations"] == 1 and res["summary"]["n"] == 4
    assert got["a"]["predicted"] == pytest.approx(100.0)  # sqrt(125 x 80)
    assert got["b"]["predicted"] == pytest.approx((100 * 400 * 80) ** (1 / 3))  # geometric mean
    assert got["b"]["ape"] == pytest.approx(abs(got["b"]["predicted"] / 125 - 1))
    assert got["a2"]["predicted"] == got["a"]["predicted"]


def test_validate_report_beside_unchanged_json(cli, tmp_path):
    """--report writes the page and leaves the JSON contract as it was; the page's rows carry the
    held-out bands the summary's coverage counts."""
    rows = _sample_rows(2, 3)
    f = _write(tmp_path / "obs.csv", rows)
    page = tmp_path / "cv.html"
    p = cli("validate", "--observations", str(f), "--cv", "--json", "--report", str(page))
    assert p.returncode == 0, p.stderr
    d = json.loads(p.stdout)
    assert set(d) == {"rows", "summary"} and f"report: {page}" in p.stderr
    html = page.read_text(encoding="utf-8")
    assert "Leave-one-source-out cross-validation over 2 sources" in html
    assert f"{d['summary']['n']} rows: median APE <b>{d['summary']['median_ape']:.1%}</b>" in html
    st = d["summary"]["error_structure"]
    assert "<h2>Where the held-out error lies</h2>" in html
    assert (f"<td>held out, as predicted</td><td>{st['held_out']['n']}</td>"
            f"<td>{st['held_out']['median_ape']:.1%}</td><td>{st['held_out']['p90_ape']:.1%}</td>"
            ) in html
    from moatmeter.catalog.load import load_catalog
    from moatmeter.perf.validate import loso_cv

    det = loso_cv(load_catalog(), rows, details=True)["details"]
    assert [r["id"] for r in det] == [r["id"] for r in d["rows"]]
    inside = sum(r["p10"] <= r["measured"] <= r["p90"] for r in det) / len(det)
    assert inside == pytest.approx(d["summary"]["p10_p90_band_coverage"])
    for r in det:
        assert r["p10"] < r["predicted"] < r["p90"] and r["source"] and r["vendor"]
