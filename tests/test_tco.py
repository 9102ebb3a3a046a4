"""TCO arithmetic on a hand-computed case, Monte Carlo ordering and reproducibility."""

from __future__ import annotations

import numpy as np
import pytest

from moatmeter.tco import costs as C
from moatmeter.tco import lockin as L
from moatmeter.tco import montecarlo as MC
from moatmeter.tco.params import ESTIMATES, Param, ParamSet

BASE = {  # id: (value, low, high)
    "server_cost_overhead_ratio": (1.5, 1.3, 2.1),
    "cluster_interconnect_overhead_ratio": (1.1, 1.07, 1.32),
    "hidden_capex_uplift": (0.0, 0.0, 0.0),
    "h100_residual_value_year3": (0.30, 0.25, 0.35),
    "spares_inventory_fraction": (0.0, 0.0, 0.1),
    "dgx_h100_max_power": (10.2, 10.2, 10.2),
    "h100_tdp": (700.0, 700.0, 700.0),
    "server_avg_power_fraction_of_tdp": (0.75, 0.4, 0.9),
    "h200_idle_power": (70.0, 70.0, 124.0),
    "nvidia_ai_enterprise_subscription": (4500.0, 1125.0, 4500.0),
    "nvidia_ai_enterprise_cloud_hourly": (1.0, 1.0, 2.0),
    "hw_maintenance_support": (0.05, 0.05, 0.1),
    "staff_fte_per_gpu_servers": (75.0, 50.0, 100.0),
    "staff_small_deployment_fte": (0.5, 0.25, 0.5),
    "gpu_infra_engineer_base_salary": (156000.0, 156000.0, 240000.0),
    "cuda_to_hip_port_effort_hpc": (1.0, 0.02, 4.0),
    "reserved_discount_vs_ondemand": (0.375, 0.3, 0.6),
    "electricity": (0.10, 0.05, 0.2),
    "pue": (1.5, 1.2, 1.6),
    "colocation": (100.0, 80.0, 200.0),
    "cost_of_capital": (0.10, 0.07, 0.15),
    "rent_rate": (2.0, 1.5, 4.0),
    "api_in": (0.5, 0.13, 0.99),
    "api_out": (1.0, 0.38, 0.99 + 1.0),
}


def make_params() -> tuple[ParamSet, dict[str, int]]:
    ps = ParamSet()
    rows = {}
    for pid, (v, lo, hi) in BASE.items():
        rows[pid] = ps.add(Param(pid, v, lo, hi, "x", "test"))
    for p in ESTIMATES.values():
        rows[p.id] = ps.add(p)
    rows["zero"] = ps.const("zero", 0.0, "x", "t")
    rows["one"] = ps.const("one", 1.0, "x", "t")
    rows["price"] = ps.add(Param("price", 10_000.0, 8_000.0, 14_000.0, "USD/GPU", "test"))
    return ps, rows


def options(rows: dict[str, int], kinds=("own",), maturity="mature", vendor="nvidia",
            licence=False, mig: L.Migration | None = None) -> C.Options:
    n = len(kinds)
    mig = mig or L.Migration()
    ops, setup = L.maturity_params(maturity)
    liq = L.liquidity_param(vendor)

    def a(v, dt=float):
        return np.array([v] * n, dtype=dt)

    return C.Options(
        id=[f"o{i}" for i in range(n)], kind=np.array(kinds, dtype=object),
        gpus=a(8.0), nodes=a(1.0), tdp_w=a(700.0), price_row=a(rows["price"], int),
        liquidity_row=a(rows[liq] if liq else rows["one"], int), licence=a(licence, bool),
        rent_row=a(rows["rent_rate"], int), rent_reserved_discount=a(False, bool),
        rent_hours_per_year=a(8760.0), api_in_row=a(rows["api_in"], int),
        api_out_row=a(rows["api_out"], int),
        ops_row=a(rows[ops] if ops else rows["zero"], int),
        setup_row=a(rows[setup] if setup else rows["zero"], int),
        port_kernels=a(mig.port_kernels), revalidate_engines=a(mig.revalidate_engines),
        retrain_engineers=a(mig.retrain_engineers), validate=a(mig.validate),
        capacity_rps=a(10.0), sigma=a(0.2), perf_group=a(0, int))


def ctx(rows) -> C.Context:
    return C.Context(rows=rows, horizon_years=3.0, hours_per_day=24.0, avg_rps=5.0,
                     peak_rps=8.0, input_tokens=1000.0, output_tokens=200.0)


def base_out(opt, ps, rows):
    X = ps.base()[:, None]
    Z = np.zeros((1, 1))
    return {k: v[:, 0] for k, v in C.compute(opt, X, Z, ctx(rows)).items()}


def test_own_option_hand_computed():
    ps, rows = make_params()
    out = base_out(options(rows, licence=True), ps, rows)
    # Capital: 8 x $10k devices, x1.5 server, x1.1 network; 3-year CRF at 10 % = 0.402115;
    # resale after 3 years = 30 % of the $120k server, discounted by 1.1^-3.
    crf = 0.10 * 1.1**3 / (1.1**3 - 1)
    assert crf == pytest.approx(0.4021148, rel=1e-6)
    hw = 80_000 * 1.5 * 1.1  # 132 000
    resid = 120_000 * 0.30
    capex = (hw - resid / 1.1**3) * crf * 3
    assert capex == pytest.approx(126_609.0, rel=1e-4)  # (132000 - 27047.3) x 1.206345
    assert out["capex"][0] == pytest.approx(capex, rel=1e-9)
    # Power: 8 x 700 W x (10.2 kW / 5.6 kW) = 10.2 kW at full load; load fraction =
    # idle 0.1 + (0.75 - 0.1) x utilisation 0.5 = 0.425; x 8760 h x 3 y x PUE 1.5 x $0.10.
    kwh = 10.2 * 0.425 * 8760 * 3
    assert out["power"][0] == pytest.approx(kwh * 1.5 * 0.10, rel=1e-9)
    assert out["power"][0] == pytest.approx(17_089.1, rel=1e-4)
    # Colocation $100/kW-month on 10.2 kW for 36 months.
    assert out["facility"][0] == pytest.approx(100 * 10.2 * 36, rel=1e-9)
    assert out["maintenance"][0] == pytest.approx(0.05 * hw * 3, rel=1e-9)
    # One node: 0.5 FTE x $156k x 3 years; NVAIE $4500 x 8 GPUs x 3 years.
    assert out["staff"][0] == pytest.approx(0.5 * 156_000 * 3, rel=1e-9)
    assert out["licences"][0] == pytest.approx(4500 * 8 * 3, rel=1e-9)
    assert out["migration"][0] == 0 and out["liquidity"][0] == 0 and out["maturity_ops"][0] == 0
    total = capex + kwh * 0.15 + 36_720 + 0.05 * hw * 3 + 234_000 + 108_000
    assert out["total"][0] == pytest.approx(total, rel=1e-9)
    # Tokens: 5 req/s x 1200 tokens x 86400 s x 365 d x 3 y, all within SLO (capacity 10 >= 8).
    tokens = 5 * 1200 * 86400 * 365 * 3
    assert out["tokens"][0] == pytest.approx(tokens)
    assert out["usd_per_mtok"][0] == pytest.approx(total / tokens * 1e6, rel=1e-9)
    assert out["lockin"][0] == pytest.approx(108_000, rel=1e-9)


def test_lockin_channels_amd_leaving_cuda():
    ps, rows = make_params()
    inc = _stack("trtllm-cuda", "TensorRT-LLM", "CUDA")
    tgt = _stack("vllm-rocm", "vLLM", "ROCm")
    mig = L.migration(inc, tgt, kernels=10, engines=4, engineers=3)
    assert (mig.port_kernels, mig.revalidate_engines, mig.retrain_engineers, mig.validate) == (
        10, 4, 3, 1)
    out = base_out(options(rows, maturity="maturing", vendor="amd", mig=mig), ps, rows)
    weeks = 10 * 1.0 + 4 * 1.0 + 3 * 2.0 + 1 * 2.0  # kernels, engines, retraining, validation
    assert out["migration"][0] == pytest.approx(weeks * 156_000 / 52, rel=1e-9)
    staff = 0.5 * 156_000 * 3
    assert out["maturity_ops"][0] == pytest.approx(0.25 * staff + 1.0 * 156_000 / 12, rel=1e-9)
    resid_disc = 120_000 * 0.30 / 1.1**3
    crf3 = 0.10 * 1.1**3 / (1.1**3 - 1) * 3
    assert out["liquidity"][0] == pytest.approx(resid_disc * 0.25 * crf3, rel=1e-9)
    # Staying on CUDA but leaving TensorRT-LLM only rebuilds engines and validates.
    m2 = L.migration(inc, _stack("vllm-cuda", "vLLM", "CUDA"), kernels=10, engines=4,
                     engineers=3)
    assert (m2.port_kernels, m2.revalidate_engines, m2.retrain_engineers) == (0, 4, 0)
    assert not L.migration(inc, inc, kernels=10, engines=4, engineers=3).any


def test_rent_and_api_hand_computed():
    ps, rows = make_params()
    out = base_out(options(rows, kinds=("rent", "api")), ps, rows)
    assert out["rent"][0] == pytest.approx(2.0 * 8 * 8760 * 3, rel=1e-9)
    assert out["capex"][0] == 0 and out["power"][0] == 0
    req = 5 * 86400 * 365 * 3
    assert out["api"][1] == pytest.approx(req * (1000 * 0.5 + 200 * 1.0) / 1e6, rel=1e-9)
    assert out["staff"][1] == 0 and out["capex"][1] == 0


def test_shortfall_counts_only_tokens_served_within_slo():
    ps, rows = make_params()
    opt = options(rows)
    opt.capacity_rps[:] = 4.0  # peak is 8 req/s: half the peak demand is served within SLO
    out = base_out(opt, ps, rows)
    assert out["served_frac"][0] == pytest.approx(0.5)
    assert out["tokens"][0] == pytest.approx(0.5 * 5 * 1200 * 86400 * 365 * 3)


def test_montecarlo_percentiles_ordered_and_reproducible():
    ps, rows = make_params()
    opt = options(rows, kinds=("own", "rent", "api"), maturity="maturing", vendor="amd")
    a = MC.run(opt, ps, ctx(rows), samples=10_000, seed=7)
    b = MC.run(opt, ps, ctx(rows), samples=10_000, seed=7)
    c = MC.run(opt, ps, ctx(rows), samples=10_000, seed=8)
    for arr in (a.tco_pct, a.usd_per_mtok_pct, a.lockin_pct):
        assert np.all(arr[:, 0] <= arr[:, 1]) and np.all(arr[:, 1] <= arr[:, 2])
    assert np.all(a.tco_pct[:, 0] < a.tco_pct[:, 2])  # the inputs are uncertain
    np.testing.assert_array_equal(a.tco_pct, b.tco_pct)
    np.testing.assert_array_equal(a.usd_per_mtok_pct, b.usd_per_mtok_pct)
    assert not np.array_equal(a.tco_pct, c.tco_pct)
    # A different seed moves the median by well under 1 % at 10 000 samples.
    np.testing.assert_allclose(a.tco_pct[:, 1], c.tco_pct[:, 1], rtol=0.01)
    p = a.p_beats(0, 1)
    assert 0.0 <= p <= 1.0 and a.p_beats(1, 0) == pytest.approx(1 - p, abs=1e-12)
    _base, bars = MC.tornado(opt, ps, ctx(rows), 0)
    assert bars and bars == sorted(bars, key=lambda b: b.swing, reverse=True)
    names = {b.param for b in bars}
    assert "cost_of_capital" in names and any("realised performance" in n for n in names)


def test_triangular_sampling_stays_in_range():
    ps, _ = make_params()
    X = ps.sample(20_000, np.random.default_rng(1))
    for i, p in enumerate(ps.params):
        assert X[i].min() >= p.low - 1e-12 and X[i].max() <= p.high + 1e-12
        if p.uncertain:
            mean = (p.low + p.value + p.high) / 3
            assert X[i].mean() == pytest.approx(mean, rel=0.02, abs=1e-9)


def _stack(sid: str, engine: str, backend: str):
    from moatmeter.catalog.schema import Stack

    src = [{"ref": "test", "date": "2026"}]
    feats = {f: {"level": "yes", "sources": src} for f in (
        "continuous_batching", "paged_attention", "flash_attention", "chunked_prefill",
        "tensor_parallel", "pipeline_parallel", "speculative_decoding", "prefix_caching")}
    return Stack.model_validate({
        "id": sid, "sources": src, "name": sid, "engine": engine, "backend": backend,
        "vendors": ["nvidia"], "hardware": [{"families": ["Hopper"], "level": "official",
                                             "sources": src}],
        "weight_dtypes": ["bf16"], "kv_dtypes": ["bf16"], "precision_sources": src,
        "features": feats, "maturity": "mature"})


def test_crf_limits_and_monotonicity():
    assert C.crf(np.array([0.0]), 4)[0] == pytest.approx(0.25)
    assert C.crf(np.array([1e-6]), 4)[0] == pytest.approx(0.25, rel=1e-5)
    r = np.linspace(0.0, 0.3, 31)
    assert np.all(np.diff(C.crf(r, 5)) > 0)  # dearer money, dearer annuity
    assert C.residual_fraction(3) == pytest.approx(0.30)
    assert C.residual_fraction(0) == 1.0 and C.residual_fraction(10) == pytest.approx(0.10)


def test_costs_move_the_right_way_with_their_inputs():
    ps, rows = make_params()
    opt = options(rows, kinds=("own", "rent"), licence=True)
    base = ps.base()
    cols = 8
    X = np.repeat(base[:, None], cols, axis=1)
    X[rows["electricity"]] = np.linspace(0.05, 0.4, cols)
    Z = np.zeros((1, cols))
    out = C.compute(opt, X, Z, ctx(rows))
    assert np.all(np.diff(out["power"][0]) > 0) and np.all(out["power"][1] == 0)
    assert np.all(np.diff(out["total"][0]) > 0) and np.ptp(out["total"][1]) == 0
    # A worse software-gap draw never serves more tokens, and costs more per token.
    Zp = np.linspace(-3, 3, cols)[None, :]
    X1 = np.repeat(base[:, None], cols, axis=1)
    o2 = C.compute(opt, X1, Zp, ctx(rows))
    assert np.all(np.diff(o2["tokens"][0]) >= 0) and np.all(np.diff(o2["usd_per_mtok"][0]) <= 0)
    # Staffing grows with servers, at the small-fleet rate first, then per servers-per-FTE.
    fte = C.staff_fte(np.array([0, 1, 4, 5, 79]), 0.5, 75.0)
    np.testing.assert_allclose(fte, [0, 0.5, 2.0, 2.0 + 1 / 75, 2.0 + 75 / 75])
