"""Cost parameters with ranges: catalog values, moatmeter's labelled estimates, scenario overrides.

Every input to the cost model is a ``Param`` (value, [low, high], source). Monte Carlo samples the
range; the tornado flips one at a time; the report lists every one with its source. A parameter
that is not in the catalog is never made up: moatmeter's own estimates live in ``ESTIMATES``,
each marked as an estimate with its range and reasoning.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from moatmeter.catalog.load import Catalog
from moatmeter.errors import CatalogError, InputError

RESEARCH = "shared/data/tco_research.md (2026)"


@dataclass(frozen=True)
class Param:
    id: str
    value: float
    low: float
    high: float
    unit: str
    source: str
    estimate: bool = False
    note: str = ""

    @property
    def uncertain(self) -> bool:
        return self.high > self.low


# moatmeter's own estimates: where no published figure exists, a labelled guess with a wide range.
ESTIMATES: dict[str, Param] = {p.id: p for p in [
    Param("liquidity_amd", 0.75, 0.5, 1.0, "fraction",
          "moatmeter estimate: resale value of AMD accelerators relative to NVIDIA at equal age; "
          "SemiAnalysis 'AMD vs NVIDIA Inference Benchmark' (2025-05: thin AMD rental market), "
          f"cliffcenter AMD inference economics (2026-05); {RESEARCH} §3.3", True),
    Param("liquidity_intel", 0.6, 0.3, 1.0, "fraction",
          "moatmeter estimate: resale relative to NVIDIA; Intel Falcon Shores cancellation "
          f"(2025-01-30) and Gaudi 3 sales miss signal roadmap risk; {RESEARCH} §3.3", True),
    Param("liquidity_other", 0.75, 0.5, 1.0, "fraction",
          f"moatmeter estimate: resale relative to NVIDIA for other vendors; {RESEARCH} §3.3",
          True),
    Param("maturity_ops_maturing", 0.25, 0.0, 0.5, "fraction",
          "moatmeter estimate: extra ops/debug staff for a 'maturing' stack; SemiAnalysis "
          f"ClusterMAX (2026-04) prices setup and debugging as cost lines; {RESEARCH} §3.4", True),
    Param("maturity_ops_early", 0.5, 0.1, 1.0, "fraction",
          "moatmeter estimate: extra ops/debug staff for an 'early' stack; SemiAnalysis "
          f"ClusterMAX (2026-04); {RESEARCH} §3.4", True),
    Param("maturity_setup_months_maturing", 1.0, 0.0, 3.0, "months",
          "moatmeter estimate: one-off engineer-months of bring-up for a 'maturing' stack; high "
          "end well below SemiAnalysis' 5 months of MI300X joint debugging (2024-12)", True),
    Param("maturity_setup_months_early", 3.0, 1.0, 5.0, "months",
          "moatmeter estimate: one-off engineer-months of bring-up for an 'early' stack; high = "
          "SemiAnalysis MI300X training bug-fix effort, 5 months (2024-12)", True),
    Param("engine_revalidation_weeks", 1.0, 0.2, 4.0, "weeks",
          "moatmeter estimate: engineer-weeks to rebuild and validate one TensorRT-LLM engine's "
          f"model on another engine (re-benchmarking, quant formats, tuning); {RESEARCH} §3.2",
          True),
    Param("team_retraining_weeks", 2.0, 0.5, 8.0, "weeks",
          "moatmeter estimate: engineer-weeks for each CUDA engineer to become productive on a "
          f"non-CUDA backend (HIP 'a few hours to a few weeks' per app); {RESEARCH} §3.2", True),
    Param("model_validation_weeks", 2.0, 1.0, 4.0, "weeks",
          "moatmeter estimate: engineer-weeks to validate accuracy and SLOs after any serving-"
          f"stack change; {RESEARCH} §3.2", True),
    Param("licence_price_multiplier", 1.0, 1.0, 2.0, "x",
          "licence-price scenario: NVIDIA AI Enterprise counts B300 dies, doubling licences "
          f"per package; {RESEARCH} §3.3", True),
]}

# Published residual value of an H100 by age (GPU Lease Rate Index midpoints, Y0..Y5), scaled by the
# sampled year-3 value so the curve moves with its uncertainty.
RESIDUAL_CURVE_YEARS = np.array([0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
RESIDUAL_CURVE = np.array([1.0, 0.625, 0.425, 0.30, 0.175, 0.125, 0.10])
RESIDUAL_SOURCE = ("GPU Lease Rate Index via v2-pseo-ai.pages.dev/residual/h100-depreciation-"
                   "calculator (2026-01-08): Y1 60-65%, Y2 40-45%, Y3 25-35%, Y4 15-20%, "
                   "Y5 10-15%; Y6 extrapolated")

# Purchase-price parameters per accelerator id (street prices with ranges) where the catalog's
# single price_usd has a sourced range.
PRICE_PARAMS = {
    "h100-sxm": "h100_gpu_street_price",
    "h200-sxm": "h200_gpu_street_price",
    "b200": "b200_gpu_street_price",
    "mi300x": "mi300x_gpu_sell_price_est",
}
PER_KIT = {"gaudi3": ("gaudi3_8chip_ubb_kit_list_price", 8.0)}
# Rental $/GPU-hour: (on-demand param, reserved param or None -> on-demand x (1 - discount)).
RENT_PARAMS = {
    "h100-sxm": ("h100_ondemand_neocloud", "h100_1yr_contract"),
    "h200-sxm": ("h200_ondemand", None),
    "b200": ("b200_ondemand", None),
    "mi300x": ("mi300x_ondemand", None),
}
# Hosted-API prices per model family: list of catalog parameter stems (…_in / …_out).
API_MODELS = {
    "llama-3.3-70b": ["api_llama33_70b_deepinfra", "api_llama33_70b_groq",
                      "api_llama33_70b_together", "api_llama3_70b_bedrock"],
}
API_MODELS["llama-3.1-70b"] = API_MODELS["llama-3.3-70b"]
API_MODELS["llama-3-70b"] = API_MODELS["llama-3.3-70b"]

REQUIRED = [
    "server_cost_overhead_ratio", "cluster_interconnect_overhead_ratio", "hidden_capex_uplift",
    "h100_residual_value_year3", "spares_inventory_fraction", "wacc_neocloud_debt_rate",
    "dgx_h100_max_power", "h100_tdp", "server_avg_power_fraction_of_tdp", "h200_idle_power",
    "pue_industry_average", "electricity_us_industrial_avg", "colocation_wholesale_na",
    "nvidia_ai_enterprise_subscription", "nvidia_ai_enterprise_cloud_hourly",
    "hw_maintenance_support", "staff_fte_per_gpu_servers", "staff_small_deployment_fte",
    "gpu_infra_engineer_base_salary", "cuda_to_hip_port_effort_hpc",
    "reserved_discount_vs_ondemand", "rack_units_per_8gpu_node", "rack_units_per_pcie_device",
]


def from_catalog(catalog: Catalog, pid: str) -> Param | None:
    c = catalog.costs.get(pid)
    if c is None:
        return None
    src = "; ".join(f"{s.ref} ({s.date})" for s in c.sources)
    low, high = (c.low, c.high) if c.high >= c.low else (c.value, c.value)
    return Param(pid, float(c.value), float(low), float(high), c.unit, src,
                 estimate=bool(c.estimate), note=c.notes)


def api_param(catalog: Catalog, stem: str, side: str) -> Param | None:
    """An API price from the catalog: ``stem_in``/``stem_out`` (or ``_input``/``_output``)."""
    for suffix in (f"_{side}", f"_{side}put"):
        p = from_catalog(catalog, stem + suffix)
        if p is not None:
            return p
    return None


class ParamSet:
    """The ordered list of parameters one plan uses; row i of every sample matrix is param i."""

    def __init__(self) -> None:
        self.params: list[Param] = []
        self.index: dict[str, int] = {}

    def add(self, p: Param) -> int:
        if p.id in self.index:
            return self.index[p.id]
        self.index[p.id] = len(self.params)
        self.params.append(p)
        return self.index[p.id]

    def const(self, pid: str, value: float, unit: str, source: str) -> int:
        return self.add(Param(pid, value, value, value, unit, source))

    def __getitem__(self, pid: str) -> Param:
        return self.params[self.index[pid]]

    def __contains__(self, pid: str) -> bool:
        return pid in self.index

    def __len__(self) -> int:
        return len(self.params)

    def override(self, pid: str, value: float, low: float, high: float, source: str) -> None:
        i = self.index[pid]
        self.params[i] = replace(self.params[i], value=value, low=low, high=high, source=source,
                                 estimate=False)

    def base(self) -> np.ndarray:
        return np.array([p.value for p in self.params], dtype=float)

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """(P, n) draws: triangular(low, value, high) per parameter, fixed where low == high."""
        lo = np.array([p.low for p in self.params])
        hi = np.array([p.high for p in self.params])
        mode = np.array([p.value for p in self.params])
        u = rng.random((len(self.params), n))
        width = np.where(hi > lo, hi - lo, 1.0)
        fc = ((mode - lo) / width)[:, None]
        left = lo[:, None] + np.sqrt(u * width[:, None] * (mode - lo)[:, None])
        right = hi[:, None] - np.sqrt((1.0 - u) * width[:, None] * (hi - mode)[:, None])
        out = np.where(u < fc, left, right)
        return np.where((hi > lo)[:, None], out, mode[:, None])


def require(catalog: Catalog, ps: ParamSet, pid: str) -> int:
    p = from_catalog(catalog, pid)
    if p is None:
        raise CatalogError(f"cost parameter '{pid}' is missing from the catalog (costs.yaml); "
                           "the cost model needs it")
    return ps.add(p)


def apply_overrides(ps: ParamSet, costs: dict[str, object], *, file: str,
                    catalog_ids: set[str] | None = None) -> None:
    """Scenario ``costs:`` entries replace a parameter's value and range."""
    for pid, v in costs.items():
        if pid not in ps and catalog_ids and pid in catalog_ids:
            raise InputError(f"cost parameter '{pid}' exists but no option of this plan uses it",
                             file=file, field=f"costs.{pid}")
        if pid not in ps:
            near = sorted(k for k in ps.index if pid.split("_")[0] in k)[:6]
            hint = f" (parameters this plan uses include: {', '.join(near)})" if near else ""
            raise InputError(f"unknown cost parameter '{pid}'{hint}", file=file,
                             field=f"costs.{pid}")
        val = getattr(v, "value", v)
        low = getattr(v, "low", v)
        high = getattr(v, "high", v)
        ps.override(pid, float(val), float(low), float(high), f"scenario file {file}")
