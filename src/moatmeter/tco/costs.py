"""TCO line items, vectorised over options × Monte Carlo samples.

``compute`` is the whole cost model in one pure function: options are a struct of arrays (length O),
parameters a (P, S) matrix of samples (row = parameter, column = sample). Every line item comes back
as an (O, S) array of USD over the horizon, so the same code serves the base case (S = 1), the
Monte Carlo run (S = 10 000) and the tornado (one column per flipped parameter).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from moatmeter.tco.params import RESIDUAL_CURVE, RESIDUAL_CURVE_YEARS

HOURS_PER_YEAR = 8760.0
# Line items in the order the report stacks them; the last five are the lock-in terms.
OWNERSHIP_ITEMS = ["capex", "power", "facility", "maintenance", "staff", "rent", "api"]
LOCKIN_ITEMS = ["licences", "migration", "maturity_ops", "liquidity"]
ITEMS = OWNERSHIP_ITEMS + LOCKIN_ITEMS


@dataclass
class Options:
    """Candidate options as a struct of arrays; rows index the parameter matrix."""

    id: list[str]
    kind: np.ndarray  # "own" | "rent" | "api"
    gpus: np.ndarray  # serving devices (replicas x tp x pp); 0 for api
    nodes: np.ndarray  # servers, for staffing
    tdp_w: np.ndarray
    price_row: np.ndarray  # purchase price per device
    liquidity_row: np.ndarray  # resale value relative to NVIDIA (1 for NVIDIA)
    licence: np.ndarray  # bool: per-GPU enterprise licence applies
    rent_row: np.ndarray  # $/GPU-hour
    rent_reserved_discount: np.ndarray  # bool: apply reserved discount to the on-demand rate
    rent_hours_per_year: np.ndarray
    api_in_row: np.ndarray
    api_out_row: np.ndarray
    ops_row: np.ndarray  # extra ops/debug fraction for stack maturity
    setup_row: np.ndarray  # one-off bring-up engineer-months for stack maturity
    port_kernels: np.ndarray  # custom CUDA kernels to port (leaving CUDA)
    revalidate_engines: np.ndarray  # TensorRT engines to rebuild elsewhere (leaving TRT-LLM)
    retrain_engineers: np.ndarray  # CUDA engineers to retrain (leaving CUDA)
    validate: np.ndarray  # 1 when the serving stack changes
    capacity_rps: np.ndarray  # goodput of the whole fleet at the nominal efficiency
    sigma: np.ndarray  # log-space sd of realised performance
    perf_group: np.ndarray  # int: options sharing (stack, family) share one draw
    # Fleet goodput at the short and long ends of the request-length range (None: = capacity).
    capacity_lo_rps: np.ndarray | None = None
    capacity_hi_rps: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.id)


@dataclass
class Context:
    """Scenario-level numbers and the parameter rows shared by all options."""

    rows: dict[str, int]
    horizon_years: float
    hours_per_day: float
    avg_rps: float
    peak_rps: float
    input_tokens: float
    output_tokens: float
    extra: dict[str, float] = field(default_factory=dict)
    # Total request length (in+out) at the low end, centre and high end of the length ranges;
    # None when lengths are fixed. Capacity is interpolated on the sampled length between the
    # performance model's evaluations at these three points.
    length_points: tuple[float, float, float] | None = None


def crf(r: np.ndarray, n: float) -> np.ndarray:
    """Capital recovery factor: the annuity that repays 1 over n years at rate r."""
    r = np.asarray(r, dtype=float)
    safe = np.where(r > 1e-9, r, 1.0)
    g = (1.0 + safe) ** n
    return np.where(r > 1e-9, safe * g / (g - 1.0), 1.0 / n)


def residual_fraction(years: float) -> float:
    return float(np.interp(years, RESIDUAL_CURVE_YEARS, RESIDUAL_CURVE))


def staff_fte(nodes: np.ndarray, small_rate: np.ndarray, servers_per_fte: np.ndarray,
              small_nodes: float = 4.0) -> np.ndarray:
    """Small fleets pay the per-node rate; beyond ``small_nodes`` servers, one FTE per N servers."""
    n = np.asarray(nodes, dtype=float)
    first = np.minimum(n, small_nodes) * small_rate
    rest = np.maximum(n - small_nodes, 0.0) / servers_per_fte
    return np.where(n > 0, first + rest, 0.0)


def _capacity(opt: Options, ctx: Context, length: Any) -> np.ndarray:
    """Fleet goodput (O, S): piecewise-linear in request length between the three evaluations."""
    mid = opt.capacity_rps[:, None]
    if ctx.length_points is None or opt.capacity_lo_rps is None or opt.capacity_hi_rps is None:
        return mid
    lo_x, mid_x, hi_x = ctx.length_points
    n = np.clip(np.asarray(length, dtype=float), lo_x, hi_x)
    a = np.where(n < mid_x, (mid_x - n) / max(mid_x - lo_x, 1e-12), 0.0)  # weight of low end
    c = np.where(n > mid_x, (n - mid_x) / max(hi_x - mid_x, 1e-12), 0.0)  # weight of high end
    return (opt.capacity_lo_rps[:, None] * a + opt.capacity_hi_rps[:, None] * c
            + mid * (1.0 - a - c))


def compute(opt: Options, X: np.ndarray, z: np.ndarray, ctx: Context) -> dict[str, np.ndarray]:
    """All line items (O, S) in USD over the horizon, plus ``tokens`` served within SLO."""
    R = ctx.rows

    def g(name: str) -> np.ndarray:  # scenario-level parameter, broadcast over options
        return X[R[name]][None, :]

    H = ctx.horizon_years
    own = (opt.kind == "own")[:, None]
    rent = (opt.kind == "rent")[:, None]
    api = (opt.kind == "api")[:, None]
    hosted = own | rent
    gpus = opt.gpus[:, None].astype(float)

    # Request lengths: sampled when the scenario gives ranges, else the fixed means.
    l_in = X[R["input_tokens"]][None, :] if "input_tokens" in R else ctx.input_tokens
    l_out = X[R["output_tokens"]][None, :] if "output_tokens" in R else ctx.output_tokens
    # Realised performance: lognormal(0, sigma) on the fleet's goodput (the software gap).
    f = np.exp(opt.sigma[:, None] * z[opt.perf_group])
    cap = _capacity(opt, ctx, l_in + l_out) * f
    day_frac = ctx.hours_per_day / 24.0
    served_frac = np.where(hosted, np.minimum(1.0, cap / max(ctx.peak_rps, 1e-12)), 1.0)
    util_active = np.where(hosted, np.minimum(1.0, ctx.avg_rps / np.maximum(cap, 1e-12)), 0.0)
    requests = ctx.avg_rps * ctx.hours_per_day * 3600.0 * 365.0 * H
    demand_tokens = requests * (l_in + l_out)
    tokens = demand_tokens * served_frac

    # Capital: devices + spares, server, network, hidden extras; recovered at the cost of capital
    # net of the resale value at the end of the horizon.
    r = g("cost_of_capital")
    price = X[opt.price_row]
    dev_cost = price * gpus * (1.0 + g("spares_inventory_fraction"))
    server_cost = dev_cost * g("server_cost_overhead_ratio")
    hw = server_cost * g("cluster_interconnect_overhead_ratio") * (1.0 + g("hidden_capex_uplift"))
    resid_frac = residual_fraction(H) * g("h100_residual_value_year3") / 0.30
    resid_nv = server_cost * resid_frac
    disc = (1.0 + r) ** (-H)
    annuity = crf(r, H) * H
    capex = np.where(own, (hw - resid_nv * disc) * annuity, 0.0)
    liquidity = np.where(own, resid_nv * (1.0 - X[opt.liquidity_row]) * disc * annuity, 0.0)
    maintenance = np.where(own, g("hw_maintenance_support") * hw * H, 0.0)

    # Power: server draw at a load-dependent fraction of TDP (idle floor to loaded fraction).
    chip_to_server = g("dgx_h100_max_power") * 1000.0 / (8.0 * g("h100_tdp"))
    kw_full = gpus * opt.tdp_w[:, None] / 1000.0 * chip_to_server
    idle = g("h200_idle_power") / g("h100_tdp")
    load = idle + (g("server_avg_power_fraction_of_tdp") - idle) * util_active * day_frac
    kwh = kw_full * load * HOURS_PER_YEAR * H
    power = np.where(own, kwh * g("pue") * g("electricity"), 0.0)
    facility = np.where(own, g("colocation") * kw_full * 12.0 * H, 0.0)

    # Licences: per-GPU enterprise software, subscription when owned, hourly when rented.
    mult = g("licence_price_multiplier")
    lic = opt.licence[:, None]
    rent_hours = opt.rent_hours_per_year[:, None]
    licences = np.where(lic & own, g("nvidia_ai_enterprise_subscription") * mult * gpus * H, 0.0)
    licences = licences + np.where(
        lic & rent, g("nvidia_ai_enterprise_cloud_hourly") * mult * gpus * rent_hours * H, 0.0)

    # People: staff scales with servers; immature stacks add ops effort and one-off bring-up.
    salary = g("gpu_infra_engineer_base_salary")
    fte = staff_fte(opt.nodes[:, None], g("staff_small_deployment_fte"),
                    g("staff_fte_per_gpu_servers"), ctx.extra.get("staff_small_nodes", 4.0))
    staff = np.where(hosted, fte * salary * H, 0.0)
    maturity_ops = np.where(hosted, staff * X[opt.ops_row] + X[opt.setup_row] * salary / 12.0,
                            0.0)
    weeks = (opt.port_kernels[:, None] * g("cuda_to_hip_port_effort_hpc")
             + opt.revalidate_engines[:, None] * g("engine_revalidation_weeks")
             + opt.retrain_engineers[:, None] * g("team_retraining_weeks")
             + opt.validate[:, None] * g("model_validation_weeks"))
    migration = weeks * salary / 52.0

    rate = X[opt.rent_row] * np.where(opt.rent_reserved_discount[:, None],
                                      1.0 - g("reserved_discount_vs_ondemand"), 1.0)
    rent_cost = np.where(rent, rate * gpus * rent_hours * H, 0.0)

    api_cost = np.where(api, requests / 1e6 * (l_in * X[opt.api_in_row]
                                               + l_out * X[opt.api_out_row]), 0.0)

    out = {
        "capex": capex, "power": power, "facility": facility, "maintenance": maintenance,
        "staff": staff, "rent": rent_cost, "api": api_cost, "licences": licences,
        "migration": migration, "maturity_ops": maturity_ops, "liquidity": liquidity,
    }
    shape = (len(opt), X.shape[1])
    out = {k: np.broadcast_to(v, shape) for k, v in out.items()}
    total = sum(out[k] for k in ITEMS)
    out["total"] = total
    out["lockin"] = sum(out[k] for k in LOCKIN_ITEMS)
    out["tokens"] = np.broadcast_to(tokens, shape)
    out["usd_per_mtok"] = total / np.maximum(out["tokens"], 1.0) * 1e6
    out["kw_full"] = np.broadcast_to(kw_full, shape)
    out["served_frac"] = np.broadcast_to(served_frac, shape)
    return out
