"""`bench device` on this machine's CPU: real measurements, the store, and one-line errors."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest

from moatmeter.bench import device as D
from moatmeter.bench.device_store import device_observations, load_results
from moatmeter.catalog.load import load_catalog
from moatmeter.catalog.modelarch import arch_of
from moatmeter.errors import CatalogError, InputError

CPU_ID = "epyc-9654"  # any catalog CPU entry works; the measured CPU is compared against it

CPU = D.DeviceInfo(device="cpu", backend="cpu", name="AMD EPYC 9654 96-Core Processor",
                   vendor="amd", device_type="cpu", count=1, memory_bytes=64 << 30,
                   free_bytes=48 << 30, llc_bytes=32 << 20, units=2, arch="AVX2",
                   torch_version="2.13.0", runtime_version="oneDNN", driver_version="Linux",
                   vendor_library="oneDNN", triton="no", fp8=False)
H100 = replace(CPU, device="cuda:0", backend="cuda", name="NVIDIA H100 80GB HBM3",
               vendor="nvidia", device_type="gpu", memory_bytes=85 << 30, free_bytes=80 << 30,
               llc_bytes=50 << 20, fp8=True)


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "moatmeter", *args], capture_output=True,
                          text=True, timeout=300)


@pytest.fixture(scope="module")
def catalog():
    return load_catalog()


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Path]:
    db = tmp_path_factory.mktemp("dev") / "runs.db"
    # --device cpu: on a machine with a GPU, auto would measure the GPU against a CPU datasheet
    proc = cli("bench", "device", "--quick", "--json", "--accelerator", CPU_ID, "--device", "cpu",
               "--db", str(db))
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout), db


def test_quick_cpu_run_reports_real_efficiencies(quick_run: tuple[dict, Path]) -> None:
    rep, _ = quick_run
    assert rep["device"]["backend"] == "cpu" and rep["accelerator"] == CPU_ID
    assert rep["match"] == "user" and rep["quick"] is True
    assert rep["device"]["torch_version"].startswith("2.")
    gemms = [r for r in rep["results"] if r["suite"] == "gemm"]
    assert {r["phase"] for r in gemms} == {"decode", "prefill"}
    for r in gemms + [r for r in rep["results"] if r["suite"] in ("bandwidth", "attention")]:
        assert r["seconds"] > 0 and r["achieved"] > 0, r
        assert r["peak"] is not None and 0 < r["efficiency"] < 1.5, r
        assert r["efficiency"] == pytest.approx(r["achieved"] / r["peak"])
    # decode GEMMs at M=1 stream the weights: judged against bandwidth, prefill against compute
    assert all(r["bound"] == "memory" for r in gemms if r["phase"] == "decode" and "M=1 " in
               r["shape"] + " ")
    prefill = [r for r in gemms if r["phase"] == "prefill"]
    assert prefill and all(r["bound"] == "compute" and r["unit"] == "TFLOP/s" for r in prefill)
    assert prefill[0]["peak"] == load_catalog().accelerator(CPU_ID).peak_tflops["bf16"]
    bw = {r["op"]: r for r in rep["results"] if r["suite"] == "bandwidth"}
    assert set(bw) == {"copy", "triad"}
    llc = rep["device"]["llc_bytes"]
    assert all(f"{max(128, 8 * llc >> 20)} MiB" in r["shape"] for r in bw.values())
    # Triton cannot run on a CPU: its kernels are checked under the interpreter instead
    checks = [r for r in rep["results"] if r["suite"] == "triton_check"]
    assert checks and all(r["note"].endswith(": ok") for r in checks)
    assert rep["summary"]["bandwidth_eff"] == max(r["efficiency"] for r in bw.values())
    assert 0 < rep["summary"]["gemm_vendor_prefill_eff"] < 1.5


def test_quick_run_is_stored_and_feeds_calibration(quick_run: tuple[dict, Path]) -> None:
    rep, db = quick_run
    conn = sqlite3.connect(db)
    runs = conn.execute("SELECT run_id, accelerator, family, backend FROM device_runs").fetchall()
    n = conn.execute("SELECT COUNT(*) FROM device_results WHERE run_id = ?",
                     (rep["run_id"],)).fetchone()[0]
    conn.close()
    assert runs == [(rep["run_id"], CPU_ID, "Zen4", "cpu")]
    assert n == len(rep["results"])
    rows = load_results(db, rep["run_id"])
    assert [r["efficiency"] for r in rows] == [r["efficiency"] for r in rep["results"]]
    obs = device_observations(db)
    vendor = [o for o in obs if o["library"] == "vendor"]
    assert len(vendor) == 1 and vendor[0]["accelerator"] == CPU_ID
    assert vendor[0]["family"] == "Zen4" and vendor[0]["runs"] == [rep["run_id"]]
    assert vendor[0]["match"] == "user"  # named by the test, not recognised from the CPU name
    assert vendor[0]["device_names"] == [rep["device"]["name"]]
    assert 0 < vendor[0]["eff_compute"] < 1.5 and 0 < vendor[0]["eff_memory"] < 1.5
    assert vendor[0]["eff_memory"] == rep["summary"]["bandwidth_eff"]
    assert not [o for o in obs if o["library"] == "triton"]  # nothing timed with Triton on CPU


def test_bad_input_is_one_line_exit_2(tmp_path: Path) -> None:
    """Through the CLI, all at once (two of them pay a PyTorch import); more cases via the API."""
    junk = tmp_path / "notes.db"
    junk.write_text("not a database, just text " * 100)
    cases = {
        "unknown accelerator": (["--accelerator", "h999-xl"], "unknown accelerator id 'h999-xl'"),
        "absent device": (["--accelerator", CPU_ID, "--device", "cuda:99"],
                          "--device cuda:99: device not available"),
        "shape too big": (["--accelerator", CPU_ID, "--device", "cpu", "--gemm",
                           "200000x200000x200000"], "--gemm 200000x200000x200000 needs"),
        "store is a dir": (["--accelerator", CPU_ID, "--db", str(tmp_path)], "is a directory"),
        "store not sqlite": (["--accelerator", CPU_ID, "--db", str(junk)], "not a usable SQLite"),
    }
    base = [sys.executable, "-m", "moatmeter", "bench", "device", "--quick", "--json"]
    work = tmp_path / "cwd"  # the default store ./moatmeter.db must not appear anywhere
    work.mkdir()
    procs = {k: subprocess.Popen(base + args, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                 text=True, cwd=work) for k, (args, _) in cases.items()}
    for name, proc in procs.items():
        out, err = proc.communicate(timeout=300)
        lines = err.strip().splitlines()
        assert proc.returncode == 2, (name, err)
        assert len(lines) == 1 and "Traceback" not in err, (name, err)
        assert cases[name][1] in lines[0], (name, lines[0])
        assert out == "", name
    assert list(work.iterdir()) == []


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"accelerator": "h100-sxm"}, "is a gpu but the measured device cpu"),
    ({"accelerator": CPU_ID, "dtypes": "fp8"}, "fp8 GEMM needs an fp8-capable GPU"),
    ({"accelerator": CPU_ID, "device": "cuda:99"}, "device not available"),
    ({"accelerator": CPU_ID, "device": "tpu:0"}, "is not a device|unsupported device type"),
    ({"accelerator": CPU_ID, "seq_len": 0}, "--seq: must be a positive integer"),
    ({"accelerator": CPU_ID, "gemm": ["12x0x3"]}, "is not MxNxK"),
    ({"accelerator": CPU_ID, "decode_m": "1,-4"}, "--decode-m: values must be positive"),
    ({"accelerator": CPU_ID, "suites": ["gemm", "fft"]}, "--only: unknown suite 'fft'"),
    ({"accelerator": CPU_ID, "bw_mib": 10**9}, "--bw-mib 1000000000 needs three arrays"),
    ({"accelerator": CPU_ID, "seq_len": 10**7}, "attention prefill .* needs .* GiB"),
])
def test_bad_input_through_the_api(catalog, kwargs: dict, message: str) -> None:
    kwargs = {"device": "cpu", **kwargs}  # the same verdicts on machines with a GPU
    with pytest.raises(InputError, match=message):
        D.run_benchmark(catalog, quick=True, **kwargs)


def test_unknown_model_is_a_catalog_error(catalog) -> None:
    with pytest.raises(CatalogError, match="unknown model id 'gpt-9'"):
        D.run_benchmark(catalog, quick=True, accelerator=CPU_ID, model="gpt-9")


def test_no_match_names_compared_entries(catalog) -> None:
    info = replace(CPU, name="AMD EPYC 7B13 64-Core Processor")
    with pytest.raises(InputError, match=r"compared amd cpu entries: .*epyc-9654") as e:
        D.choose_accelerator(info, catalog, None)
    assert "--accelerator" in str(e.value)
    with pytest.raises(CatalogError, match="unknown accelerator id"):
        D.choose_accelerator(CPU, catalog, "nope")


def test_without_torch_names_the_extra() -> None:
    code = ("import sys; sys.modules['torch'] = None; sys.argv = ['moatmeter', 'bench', "
            f"'device', '--accelerator', '{CPU_ID}', '--no-store']; "
            "from moatmeter.cli import main; main()")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2
    assert "needs PyTorch" in proc.stderr and "'moatmeter[bench]'" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_planning_stays_free_of_torch() -> None:
    code = ("import sys, moatmeter, moatmeter.cli, moatmeter.bench.device, "
            "moatmeter.bench.device_store; print('torch' in sys.modules, 'triton' in sys.modules)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert proc.stdout.split() == ["False", "False"], proc.stderr


@pytest.mark.parametrize(("name", "memory_gb", "want"), [
    ("NVIDIA H100 80GB HBM3", 80, "h100-sxm"),
    ("NVIDIA H100 PCIe", 80, "h100-pcie"),
    ("AMD Instinct MI300X", 192, "mi300x"),
])
def test_match_gpu_names(catalog, name: str, memory_gb: int, want: str) -> None:
    vendor = "amd" if "AMD" in name else "nvidia"
    info = replace(H100, name=name, vendor=vendor, memory_bytes=memory_gb * 10**9)
    assert D.match_accelerator(info, catalog)[0] == want


def test_match_cpu_name(catalog) -> None:
    found, compared = D.match_accelerator(CPU, catalog)
    assert found == "epyc-9654" and "epyc-9755" in compared
    assert D.choose_accelerator(CPU, catalog, None)[1] == "auto"


def test_plan_uses_model_weight_shapes(catalog) -> None:
    arch = arch_of(catalog.model("llama-3.1-8b"))
    shapes = dict((n, (nn, k)) for n, nn, k in D.weight_shapes(arch))
    assert shapes["qkv_proj"] == (4096 + 2 * 8 * 128, 4096)
    assert shapes["gate_up_proj"] == (2 * 14336, 4096) and shapes["down_proj"] == (4096, 14336)
    full = D.build_plan(arch, H100, quick=False, dtypes=["bf16", "fp16", "fp8"])
    assert sorted({g.m for g in full.gemms if g.phase == "decode"}) == list(D.DECODE_M)
    assert sorted({g.m for g in full.gemms if g.phase == "prefill"}) == list(D.PREFILL_M)
    assert len(full.gemms) == 4 * (len(D.DECODE_M) + len(D.PREFILL_M))
    assert full.bw_bytes >= 8 * H100.llc_bytes and full.bw_bytes >= 512 << 20
    prefill = next(a for a in full.attns if a.phase == "prefill")
    assert (prefill.heads, prefill.kv_heads, prefill.head_dim) == (32, 8, 128)
    quick = D.build_plan(arch, CPU, quick=True, dtypes=["bf16"])
    assert len(quick.gemms) == 4 and quick.attns[0].q_len == 512


def test_fit_plan_errors_only_for_user_shapes(catalog) -> None:
    arch = arch_of(catalog.model("llama-3.1-8b"))
    small = replace(CPU, free_bytes=1 << 30)
    plan = D.build_plan(arch, small, quick=False, dtypes=["bf16"])
    fitted = D.fit_plan(plan, small)
    assert fitted.gemms and all(D.gemm_bytes_needed(g, "bf16") <= 0.8 * (1 << 30)
                                for g in fitted.gemms)
    assert any("skipped GEMM" in n for n in fitted.notes)
    assert 3 * fitted.bw_bytes <= 0.8 * (1 << 30)
    big = D.parse_gemm("65536x65536x65536")
    plan = D.build_plan(arch, small, quick=True, dtypes=["bf16"], custom=[big])
    with pytest.raises(InputError, match=r"--gemm 65536x65536x65536 needs 32\.0 GiB"):
        D.fit_plan(plan, small, user_gemms=[big])
    plan = D.build_plan(arch, small, quick=True, dtypes=["bf16"], bw_mib=4096)
    with pytest.raises(InputError, match="--bw-mib 4096 needs three arrays"):
        D.fit_plan(plan, small, user_bw=True)


def test_roofline_picks_the_binding_roof() -> None:
    # 2 GFLOP over 1 MB is compute-bound on 100 TFLOP/s + 1000 GB/s; achieved 50 TFLOP/s
    bound, ach, unit, peak, eff = D.roofline(2e9, 1e6, 2e9 / 50e12, 100.0, 1000.0)
    assert (bound, unit, peak) == ("compute", "TFLOP/s", 100.0)
    assert ach == pytest.approx(50.0) and eff == pytest.approx(0.5)
    bound, ach, unit, peak, eff = D.roofline(2e6, 1e9, 1e9 / 800e9, 100.0, 1000.0)
    assert (bound, unit) == ("memory", "GB/s") and eff == pytest.approx(0.8)
    assert D.roofline(2e9, 1e6, 1.0, None, None)[4] is None


def test_attention_flops_count_the_causal_triangle() -> None:
    full = D.AttnCase("decode", 1, 8, 8, 1, 100, 64)
    assert full.flops == 4 * 8 * 100 * 64
    tri = D.AttnCase("prefill", 1, 8, 8, 4, 4, 64)
    assert tri.flops == 4 * 8 * (4 + 3 + 2 + 1) * 64


def test_option_parsing() -> None:
    assert D.parse_ints("1,8,32", "--decode-m") == [1, 8, 32]
    for bad in ("1,x", "0", ""):
        with pytest.raises(InputError, match="--decode-m"):
            D.parse_ints(bad, "--decode-m")
    assert D.parse_dtypes(None, H100, quick=False) == ["bf16", "fp16", "fp8"]
    assert D.parse_dtypes(None, CPU, quick=True) == ["bf16"]
    with pytest.raises(InputError, match="unknown dtype 'int3'"):
        D.parse_dtypes("bf16,int3", CPU, quick=True)


def test_time_fn_warms_up_flushes_and_bounds_repetitions() -> None:
    import torch

    from moatmeter.bench.kernels.timing import time_fn

    calls: list[str] = []

    def work() -> None:
        calls.append("fn")
        time.sleep(0.01)

    t = time_fn(work, torch.device("cpu"), flush=lambda: calls.append("flush"),
                warm=lambda: calls.append("warm"), min_reps=3, max_reps=4, min_time_s=0.0)
    assert calls[0] == "warm" and calls[1:] == ["flush", "fn"] * 3
    assert 0.009 < t < 0.2
    calls.clear()
    time_fn(work, torch.device("cpu"), warmup=0, min_reps=1, max_reps=1000, min_time_s=10.0,
            max_time_s=0.05)  # a wall-time cap ends a slow measurement early
    assert 1 <= calls.count("fn") <= 10


def test_flusher_reads_the_buffer_and_graphs_are_cuda_only() -> None:
    """A flush must not dirty the cache (write-backs would slow the timed kernel) and must touch
    more than the last-level cache; graph capture is a CUDA/ROCm feature, eager elsewhere."""
    import torch

    from moatmeter.bench.kernels.timing import Flusher, graphed

    fl = Flusher(torch.device("cpu"), llc_bytes=48 << 20, floor=16 << 20)
    assert fl.buf.numel() * 4 == 96 << 20
    fl.buf[::4096] = 2.0
    before = fl.buf.clone()
    fl()
    assert torch.equal(fl.buf, before)  # read, not written
    assert fl.sink.item() == before.sum().item()
    assert graphed(lambda: None, torch.device("cpu")) is None


def test_progress_total_matches_steps(catalog) -> None:
    seen: list[tuple[str, int]] = []
    rep = D.run_benchmark(catalog, quick=True, accelerator=CPU_ID, device="cpu",
                          suites=["bandwidth"],
                          bw_mib=16, progress=lambda d, n: seen.append((d, n)))
    assert [d for d, _ in seen] == ["bandwidth copy", "bandwidth triad"]
    assert {n for _, n in seen} == {2}
    assert {r.op for r in rep.results} == {"copy", "triad"} and rep.db is None
    warned = any("partly measure the cache" in n for n in rep.notes)
    assert warned == (4 * rep.device.llc_bytes > (16 << 20))
