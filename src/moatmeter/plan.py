"""The planner: enumerate deployments, keep the SLO-feasible ones, price them, rank them.

``plan(scenario, catalog) -> PlanResult`` is the Python API behind ``moatmeter plan``. It
enumerates accelerator × stack × precision × TP/PP, asks the performance model for each replica's
goodput, sizes the data-parallel replica count for peak load, adds renting and hosted-API options
(unless the site is sovereign), runs the Monte Carlo TCO, and explains every rejection.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from moatmeter.catalog.load import Catalog
from moatmeter.catalog.schema import Accelerator, Stack
from moatmeter.errors import InputError
from moatmeter.perf.api import EXTRAPOLATED_USERS
from moatmeter.perf.calibrate import Calibration, default_calibration
from moatmeter.perf.types import SLO, DeploymentGrid, Workload
from moatmeter.scenario import DEFAULTS_DOC, MLPERF_SLO_SOURCE, Scenario, as_range, check_ids
from moatmeter.scenario import resolve_model as _resolve_model
from moatmeter.tco import costs as C
from moatmeter.tco import lockin as L
from moatmeter.tco import montecarlo as MC
from moatmeter.tco.params import (
    API_MODELS,
    ESTIMATES,
    PER_KIT,
    PRICE_PARAMS,
    RENT_PARAMS,
    REQUIRED,
    RESIDUAL_SOURCE,
    Param,
    ParamSet,
    api_param,
    apply_overrides,
    from_catalog,
    require,
)

TPS = (1, 2, 4, 8)
MAX_OWN_IN_MC = 30  # best own deployments carried into the Monte Carlo
Progress = Callable[[str], None]


@dataclass
class Option:
    id: str
    kind: str  # own | rent | api
    accelerator: str | None
    count: int  # devices in service (replicas x tp x pp), spares excluded
    stack: str | None
    precision: str | None = None
    tp: int = 0
    pp: int = 0
    replicas: int = 0
    vendor: str | None = None
    goodput_rps_per_replica: float = 0.0
    capacity_rps: float = 0.0
    # Fleet goodput at the short/long ends of the request-length range (None: lengths fixed).
    capacity_lo_rps: float | None = None
    capacity_hi_rps: float | None = None
    ttft_p95_s: float | None = None
    tpot_p95_s: float | None = None
    interactivity_tok_s: float | None = None  # tokens/s one user sees (1 / TPOT)
    eff_sigma: float = 0.0
    bottleneck: str = ""
    power_kw: float = 0.0  # IT draw at full load incl. server overhead
    rack_units: float = 0.0  # server height in rack units (U)
    price_source: str = ""
    migration: str = ""
    note: str = ""
    # filled by the Monte Carlo
    tco_p10: float = math.nan
    tco_p50: float = math.nan
    tco_p90: float = math.nan
    usd_per_mtok_p10: float = math.nan
    usd_per_mtok_p50: float = math.nan
    usd_per_mtok_p90: float = math.nan
    lockin_premium_usd: float = math.nan
    lockin_p10: float = math.nan
    lockin_p90: float = math.nan
    served_within_slo: float = math.nan
    # Time-average utilisation of the fleet (average demand / nominal capacity x active hours).
    avg_utilisation: float | None = None
    breakdown: dict[str, float] = field(default_factory=dict)
    pareto: bool = False
    rank: int = 0


@dataclass
class Rejection:
    id: str
    reason: str


@dataclass
class PlanResult:
    scenario: Scenario
    model: str
    options: list[Option]
    rejected: list[Rejection]
    assumptions: list[dict[str, Any]]
    tornado: dict[str, Any]
    comparisons: list[dict[str, Any]]
    demand: dict[str, float]
    samples: int
    seed: int
    notes: list[str] = field(default_factory=list)
    tornado_own: dict[str, Any] = field(default_factory=dict)  # best owned option, if not top

    def to_dict(self) -> dict[str, Any]:
        return {
            "scenario": self.scenario.name,
            "scenario_input": self.scenario.model_dump(mode="json"),
            "model": self.model,
            "currency": "USD",
            "token_basis": "input+output tokens served within SLO",
            "horizon_years": self.scenario.horizon_years,
            "samples": self.samples,
            "seed": self.seed,
            "demand": self.demand,
            "options": [asdict(o) for o in self.options],
            "rejected": [asdict(r) for r in self.rejected],
            "comparisons": self.comparisons,
            "tornado": self.tornado,
            "tornado_own": self.tornado_own,
            "assumptions": self.assumptions,
            "notes": self.notes,
        }


@dataclass
class _Cand:
    acc: Accelerator
    stack: Stack
    prec: str
    kv: str
    tp: int
    pp: int

    @property
    def id(self) -> str:
        return f"{self.acc.id}/{self.stack.id}/{self.prec}/tp{self.tp}pp{self.pp}"


def _enumerate(scn: Scenario, cat: Catalog, rej: list[Rejection]) -> list[_Cand]:
    c = scn.constraints
    vendors = {v.lower() for v in c.vendors} if c.vendors else None
    accs = [cat.accelerators[a] for a in c.accelerators] if c.accelerators else \
        list(cat.accelerators.values())
    stacks = [cat.stacks[s] for s in c.stacks] if c.stacks else list(cat.stacks.values())
    out: list[_Cand] = []
    for acc in accs:
        if vendors is not None and acc.vendor not in vendors:
            rej.append(Rejection(acc.id, f"vendor {acc.vendor} excluded by constraints.vendors"))
            continue
        usable = [s for s in stacks if acc.family in s.families()]
        if not usable:
            rej.append(Rejection(acc.id, f"no catalog stack runs on family {acc.family}"))
            continue
        for st in usable:
            for prec in c.precisions:
                if prec not in st.weight_dtypes:
                    rej.append(Rejection(f"{acc.id}/{st.id}/{prec}",
                                         f"stack {st.id} lacks {prec} weights "
                                         f"(supports {', '.join(st.weight_dtypes)})"))
                    continue
                kv = "fp8" if prec in ("fp8", "fp4") and "fp8" in st.kv_dtypes else (
                    "bf16" if "bf16" in st.kv_dtypes else st.kv_dtypes[0])
                max_tp = max(1, acc.max_scaleup_devices)
                for tp in TPS:
                    if tp > max_tp:
                        break
                    if tp > 1 and not st.has("tensor_parallel"):
                        rej.append(Rejection(f"{acc.id}/{st.id}/{prec}/tp{tp}pp1",
                                             f"stack {st.id} lacks tensor_parallel"))
                        continue
                    out.append(_Cand(acc, st, prec, kv, tp, 1))
                if st.has("pipeline_parallel") and st.has("tensor_parallel") and max_tp > 1:
                    out.append(_Cand(acc, st, prec, kv, max_tp if max_tp in TPS else 8, 2))
    return out


def _price(scn: Scenario, cat: Catalog, acc: Accelerator, ps: ParamSet,
           file: str) -> tuple[int, str] | None:
    if acc.id in scn.prices:
        r = as_range(scn.prices[acc.id])
        assert r is not None
        if r.value <= 0:
            raise InputError("price must be positive", file=file, field=f"prices.{acc.id}")
        p = Param(f"price_{acc.id}", r.value, r.low, r.high, "USD/GPU", f"scenario file {file}")
        return ps.add(p), p.source
    pid = PRICE_PARAMS.get(acc.id)
    if pid:
        p = from_catalog(cat, pid)
        if p is not None:
            return ps.add(p), p.source
    if acc.id in PER_KIT:
        kit_id, n = PER_KIT[acc.id]
        kit = from_catalog(cat, kit_id)
        if kit is not None:
            p = Param(f"price_{acc.id}", kit.value / n, kit.low / n, kit.high / n, "USD/GPU",
                      f"{kit.source}; divided by {n:g} devices per kit")
            return ps.add(p), p.source
    if acc.price_usd:
        src = f"catalog accelerator {acc.id}: {acc.price_note or 'price_usd'}"
        if acc.price_date:
            src += f" ({acc.price_date})"
        p = Param(f"price_{acc.id}", acc.price_usd, acc.price_usd, acc.price_usd, "USD/GPU", src,
                  note="no published range; held fixed")
        return ps.add(p), p.source
    return None


def _site_param(ps: ParamSet, cat: Catalog, name: str, given: Any, default_id: str, unit: str,
                file: str) -> int:
    r = as_range(given)
    if r is not None:
        return ps.add(Param(name, r.value, r.low, r.high, unit, f"scenario file {file}"))
    return require(cat, ps, default_id)


# How a plan's notes begin when a user's calibration file replaced the bundled one (the terminal
# output picks the note out by it).
CALIBRATION_FILE_NOTE = "performance from a calibration file given instead of the bundled one"


def resolve_model(scn: Scenario, cat: Catalog, file: str = "scenario"):
    return _resolve_model(scn, cat, file=file)


def plan(scn: Scenario, catalog: Catalog, *, samples: int = 10_000, seed: int = 0,
         file: str = "scenario", progress: Progress | None = None,
         calib: Calibration | None = None) -> PlanResult:
    """Rank SLO-feasible deployments, rentals and APIs by P50 $/M tokens (see module doc).

    ``calib``: a calibration refitted on the user's own runs (``moatmeter calibrate --out``)
    instead of the bundled one; it sets the efficiencies, the bands and the extrapolation notes.
    """
    from moatmeter.perf import evaluate_grid

    say = progress or (lambda _msg: None)
    if samples < 100:
        raise InputError("need at least 100 Monte Carlo samples", field="samples")
    model = resolve_model(scn, catalog, file)
    check_ids(scn, catalog, file=file)
    t = scn.traffic
    avg, peak = t.avg_rps, t.peak_rps
    rej: list[Rejection] = []
    notes: list[str] = []
    if calib is not None:
        n_rows = sum(calib.counts.get("pair", {}).values())
        fitted = calib.meta.get("fitted", "on an unknown date")
        notes.append(f"{CALIBRATION_FILE_NOTE} (fitted {fitted}, {n_rows} observation(s))")

    # Parameters: required catalog rows, site rows (scenario or cited default), estimates.
    ps = ParamSet()
    for pid in REQUIRED:
        require(catalog, ps, pid)
    rows = {pid: ps.index[pid] for pid in REQUIRED}
    s = scn.site
    rows["electricity"] = _site_param(ps, catalog, "site_electricity", s.electricity_usd_per_kwh,
                                      "electricity_us_industrial_avg", "USD/kWh", file)
    rows["pue"] = _site_param(ps, catalog, "site_pue", s.pue, "pue_industry_average", "ratio",
                              file)
    rows["colocation"] = _site_param(ps, catalog, "site_colocation",
                                     s.colocation_usd_per_kw_month, "colocation_wholesale_na",
                                     "USD/kW-month", file)
    rows["cost_of_capital"] = _site_param(ps, catalog, "site_cost_of_capital", s.cost_of_capital,
                                          "wacc_neocloud_debt_rate", "fraction/year", file)
    for p in ESTIMATES.values():
        rows[p.id] = ps.add(from_catalog(catalog, p.id) or p)
    zero = ps.const("zero", 0.0, "x", "structural zero")
    one = ps.const("one", 1.0, "x", "NVIDIA is the resale reference (1.0)")

    # Enumerate and evaluate replicas.
    say("enumerating deployments")
    cands = _enumerate(scn, catalog, rej)
    if not cands:
        notes.append("no candidate deployment survives the constraints; see rejected")
        return PlanResult(scn, model.id, [], rej, _assumptions(ps, scn), {}, [], _demand(scn),
                          samples, seed, notes)
    say(f"predicting {len(cands)} replica configurations")
    grid = DeploymentGrid(
        accelerator=np.array([c.acc.id for c in cands]),
        stack=np.array([c.stack.id for c in cands]),
        tp=np.array([c.tp for c in cands]), pp=np.array([c.pp for c in cands]),
        weight_dtype=np.array([c.prec for c in cands]), kv_dtype=np.array([c.kv for c in cands]))
    spec = _speculation(scn, catalog, grid, notes)
    res = evaluate_grid(catalog, model, grid,
                        Workload(t.in_tok, t.out_tok, t.prefix_cache_hit),
                        SLO(scn.slo.ttft_p95_s, scn.slo.tpot_p95_s), calib=calib,
                        speculation=spec)

    base = ps.base()
    c2s = base[rows["dgx_h100_max_power"]] * 1000.0 / (8.0 * base[rows["h100_tdp"]])
    inc = catalog.stacks.get(scn.incumbency.stack) if scn.incumbency.stack else None
    ib = scn.incumbency
    groups: dict[tuple[str, str], int] = {}
    own: list[Option] = []
    meta: list[dict[str, Any]] = []
    price_cache: dict[str, tuple[int, str] | None] = {}
    for i, c in enumerate(cands):
        if not bool(res.feasible[i]):
            rej.append(Rejection(c.id, res.reason[i] or "infeasible"))
            continue
        gp = float(res.goodput_rps[i])
        if not gp > 0:
            rej.append(Rejection(c.id, _slo_miss(scn, float(res.single_ttft_s[i]),
                                                 float(res.single_tpot_s[i]))))
            continue
        if c.acc.tdp_w is None:
            rej.append(Rejection(c.id, f"no TDP for {c.acc.id} in the catalog: power unknown"))
            continue
        if c.acc.id not in price_cache:
            price_cache[c.acc.id] = _price(scn, catalog, c.acc, ps, file)
        pr = price_cache[c.acc.id]
        if pr is None:
            rej.append(Rejection(c.id, f"no price for {c.acc.id}: add `prices: {{{c.acc.id}: "
                                       "USD}` to the scenario"))
            continue
        replicas = max(1, math.ceil(peak / gp - 1e-9)) + scn.constraints.redundancy_replicas
        count = replicas * c.tp * c.pp
        kw = count * c.acc.tdp_w * c2s / 1000.0
        if scn.constraints.max_gpus and count > scn.constraints.max_gpus:
            rej.append(Rejection(c.id, f"needs {count} devices > constraints.max_gpus "
                                       f"{scn.constraints.max_gpus}"))
            continue
        if scn.constraints.max_power_kw and kw > scn.constraints.max_power_kw:
            rej.append(Rejection(c.id, f"draws {kw:.1f} kW at full load > constraints.max_power_kw"
                                       f" {scn.constraints.max_power_kw:g}"))
            continue
        ru = rack_units(c.acc, count, base[rows["rack_units_per_8gpu_node"]],
                        base[rows["rack_units_per_pcie_device"]])
        if scn.constraints.max_rack_units and ru > scn.constraints.max_rack_units:
            rej.append(Rejection(c.id, f"needs {ru:g} rack units > constraints.max_rack_units "
                                       f"{scn.constraints.max_rack_units:g}"))
            continue
        key = (c.stack.id, c.acc.family)
        groups.setdefault(key, len(groups))
        mig = L.migration(inc, c.stack, kernels=ib.custom_cuda_kernels,
                          engines=ib.tensorrt_engines, engineers=ib.cuda_engineers)
        tpot = float(res.tpot_p95_s[i])
        o = Option(
            id=c.id, kind="own", accelerator=c.acc.id, count=count, stack=c.stack.id,
            precision=c.prec, tp=c.tp, pp=c.pp, replicas=replicas, vendor=c.acc.vendor,
            goodput_rps_per_replica=gp, capacity_rps=gp * replicas,
            ttft_p95_s=float(res.ttft_p95_s[i]), tpot_p95_s=tpot,
            interactivity_tok_s=(1.0 / tpot) if tpot > 0 else None,
            eff_sigma=float(np.nan_to_num(res.eff_sigma[i])), bottleneck=str(res.bottleneck[i]),
            power_kw=kw, rack_units=ru, price_source=pr[1], migration=mig.describe(),
            note="; ".join(x for x in (
                res.calibration_note[i] if i < len(res.calibration_note) else "",
                "speculative decoding on" if i < len(res.speculating) and res.speculating[i]
                else "", _extrapolated(c.stack.id, gp * (float(res.ttft_p95_s[i])
                                                          + t.out_tok * tpot), calib),
                _tight(peak, gp, replicas - scn.constraints.redundancy_replicas)) if x))
        own.append(o)
        meta.append({"price_row": pr[0], "group": groups[key], "mig": mig, "stack": c.stack,
                     "acc": c.acc, "kv": c.kv})

    def build(opts: list[Option], ms: list[dict[str, Any]]) -> C.Options:
        def arr(fn: Callable[[Option, dict[str, Any]], Any], dtype: Any = float) -> np.ndarray:
            return np.array([fn(o, m) for o, m in zip(opts, ms, strict=True)], dtype=dtype)

        def row(pid: str | None) -> int:
            return zero if pid is None else rows[pid]

        def liq(o: Option, m: dict[str, Any]) -> int:
            pid = L.liquidity_param(o.vendor or "nvidia")
            return one if pid is None else rows[pid]

        return C.Options(
            id=[o.id for o in opts], kind=np.array([o.kind for o in opts], dtype=object),
            gpus=arr(lambda o, m: o.count),
            nodes=arr(lambda o, m: math.ceil(o.count / _per_node(m.get("acc"))) if o.count else 0),
            tdp_w=arr(lambda o, m: (m["acc"].tdp_w or 0.0) if m.get("acc") else 0.0),
            price_row=arr(lambda o, m: m.get("price_row", zero), int),
            liquidity_row=arr(liq, int),
            licence=arr(lambda o, m: L.licence_applies(o.vendor or "", scn.licences
                                                       .nvidia_ai_enterprise) and o.kind != "api",
                        bool),
            rent_row=arr(lambda o, m: m.get("rent_row", zero), int),
            rent_reserved_discount=arr(lambda o, m: m.get("rent_discount", False), bool),
            rent_hours_per_year=arr(lambda o, m: m.get("rent_hours", 0.0)),
            api_in_row=arr(lambda o, m: m.get("api_in", zero), int),
            api_out_row=arr(lambda o, m: m.get("api_out", zero), int),
            ops_row=arr(lambda o, m: row(L.maturity_params(m["stack"].maturity)[0])
                        if m.get("stack") else zero, int),
            setup_row=arr(lambda o, m: row(L.maturity_params(m["stack"].maturity)[1])
                          if m.get("stack") else zero, int),
            port_kernels=arr(lambda o, m: m["mig"].port_kernels),
            revalidate_engines=arr(lambda o, m: m["mig"].revalidate_engines),
            retrain_engineers=arr(lambda o, m: m["mig"].retrain_engineers),
            validate=arr(lambda o, m: m["mig"].validate),
            capacity_rps=arr(lambda o, m: o.capacity_rps if o.kind != "api" else 0.0),
            sigma=arr(lambda o, m: o.eff_sigma),
            perf_group=arr(lambda o, m: m.get("group", 0), int),
            capacity_lo_rps=arr(lambda o, m: o.capacity_lo_rps or 0.0)
            if ctx.length_points else None,
            capacity_hi_rps=arr(lambda o, m: o.capacity_hi_rps or 0.0)
            if ctx.length_points else None,
        )

    horizon = scn.horizon_years
    ctx = C.Context(rows=rows, horizon_years=horizon, hours_per_day=t.hours_per_day,
                    avg_rps=avg, peak_rps=peak, input_tokens=t.in_tok,
                    output_tokens=t.out_tok)
    rin, rout = as_range(t.input_tokens), as_range(t.output_tokens)
    assert rin is not None and rout is not None
    rows["input_tokens"] = ps.add(Param("traffic_input_tokens", rin.value, rin.low, rin.high,
                                        "tokens", f"scenario {file}: traffic.input_tokens"))
    rows["output_tokens"] = ps.add(Param("traffic_output_tokens", rout.value, rout.low,
                                         rout.high, "tokens",
                                         f"scenario {file}: traffic.output_tokens"))
    if t.lengths_uncertain:
        ctx.length_points = (rin.low + rout.low, rin.value + rout.value, rin.high + rout.high)

    # Overrides now that every row exists (prices, rentals and API rows are added below, so an
    # override of those is applied again after they are added).
    say("pricing the base case")
    apply_overrides(ps, {k: v for k, v in scn.costs.items() if k in ps}, file=file)
    own_kept, meta_kept = _prune(own, meta, build, ps, ctx, groups, rej)

    if ctx.length_points and own_kept:
        say("predicting the length-range ends")
        _length_ends(catalog, model, scn, own_kept, meta_kept, rin, rout, calib)

    # Renting the best own configuration per rentable accelerator.
    rent: list[Option] = []
    rmeta: list[dict[str, Any]] = []
    best_per_acc: dict[str, int] = {}
    for j, o in enumerate(own_kept):
        best_per_acc.setdefault(o.accelerator or "", j)
    for acc_id, j in best_per_acc.items():
        if acc_id not in RENT_PARAMS:
            continue
        if s.sovereign:
            rej.append(Rejection(f"rent:{acc_id}", "sovereign site: cloud rental excluded"))
            continue
        od_id, res_id = RENT_PARAMS[acc_id]
        od = from_catalog(catalog, od_id)
        if od is None:
            continue
        o0, m0 = own_kept[j], meta_kept[j]
        od_row = ps.add(od)
        rows[od_id] = od_row
        res_p = from_catalog(catalog, res_id) if res_id else None
        for mode in ("on-demand", "reserved"):
            reserved = mode == "reserved"
            rrow = ps.add(res_p) if (reserved and res_p is not None) else od_row
            hours = 8760.0 if reserved else t.hours_per_day * 365.0
            src = (res_p.source if reserved and res_p is not None else od.source)
            o = Option(**{**asdict(o0), "id": f"rent-{mode}:{o0.id}", "kind": "rent",
                          "price_source": src, "breakdown": {},
                          "note": ("reserved 24/7" if reserved else
                                   f"on-demand {t.hours_per_day:g} h/day")
                          + ("" if res_p is not None or not reserved else
                             "; reserved = on-demand x (1 - reserved_discount_vs_ondemand)")
                          + (f"; {o0.note}" if o0.note else "")})
            rent.append(o)
            rmeta.append({**m0, "rent_row": rrow, "rent_hours": hours,
                          "rent_discount": reserved and res_p is None})

    # Hosted APIs.
    apis: list[Option] = []
    ameta: list[dict[str, Any]] = []
    api_mig = L.migration(inc, None, kernels=0, engines=0, engineers=0)
    if s.sovereign:
        rej.append(Rejection("api", "sovereign site: hosted APIs excluded"))
    else:
        for a in scn.api:
            pin, pout = as_range(a.input_usd_per_mtok), as_range(a.output_usd_per_mtok)
            assert pin is not None and pout is not None
            rin = ps.add(Param(f"api_{a.name}_in", pin.value, pin.low, pin.high, "USD/Mtok",
                               a.source))
            rout = ps.add(Param(f"api_{a.name}_out", pout.value, pout.low, pout.high, "USD/Mtok",
                                a.source))
            apis.append(Option(id=f"api:{a.name}", kind="api", accelerator=None, count=0,
                               stack=None, price_source=a.source,
                               migration=api_mig.describe()))
            ameta.append({"api_in": rin, "api_out": rout, "mig": api_mig})
        stems = API_MODELS.get(model.id, [])
        for stem in stems:
            pin_p, pout_p = api_param(catalog, stem, "in"), api_param(catalog, stem, "out")
            if pin_p is None or pout_p is None:
                continue
            name = stem.removeprefix("api_")
            apis.append(Option(id=f"api:{name}", kind="api", accelerator=None, count=0,
                               stack=None, price_source=pin_p.source,
                               migration=api_mig.describe()))
            ameta.append({"api_in": ps.add(pin_p), "api_out": ps.add(pout_p), "mig": api_mig})
        if not apis:
            rej.append(Rejection("api", f"no sourced hosted-API price for model {model.id} "
                                        "(add `api:` entries with a source to the scenario)"))

    apply_overrides(ps, scn.costs, file=file, catalog_ids=set(catalog.costs))
    opts_all = own_kept + rent + apis
    metas = meta_kept + rmeta + ameta
    if not opts_all:
        say("no feasible option")
        return PlanResult(scn, model.id, [], rej, _assumptions(ps, scn), {}, [],
                          _demand(scn), samples, seed, notes)
    say(f"Monte Carlo: {len(opts_all)} options x {samples} samples")
    opt_arr = build(opts_all, metas)
    n_groups = max(len(groups), 1)
    mc = MC.run(opt_arr, ps, ctx, samples=samples, seed=seed, n_groups=n_groups)
    for k, o in enumerate(opts_all):
        o.tco_p10, o.tco_p50, o.tco_p90 = (float(x) for x in mc.tco_pct[k])
        o.usd_per_mtok_p10, o.usd_per_mtok_p50, o.usd_per_mtok_p90 = (
            float(x) for x in mc.usd_per_mtok_pct[k])
        o.lockin_p10, o.lockin_premium_usd, o.lockin_p90 = (float(x) for x in mc.lockin_pct[k])
        o.breakdown = {item: float(mc.breakdown_mean[item][k]) for item in C.ITEMS}
        o.served_within_slo = float(mc.served_frac_mean[k])
        if o.kind != "api" and o.capacity_rps > 0:
            o.avg_utilisation = min(1.0, avg / o.capacity_rps) * t.hours_per_day / 24.0
    order = sorted(range(len(opts_all)), key=lambda k: opts_all[k].usd_per_mtok_p50)
    ranked = [opts_all[k] for k in order]
    for r_, o in enumerate(ranked, 1):
        o.rank = r_
    _mark_pareto(ranked)

    say("sensitivity (tornado)")
    top = order[0]
    base_usd, bars = MC.tornado(opt_arr, ps, ctx, top, n_groups=n_groups)
    tor = {"option": opts_all[top].id, "base_usd_per_mtok": base_usd,
           "bars": [{**asdict(b), "swing": b.swing} for b in bars]}
    best_own = next((k for k in order if opts_all[k].kind == "own"), None)
    tor_own: dict[str, Any] = {}
    if best_own is not None and best_own != top:  # buying is the question; show its drivers too
        b_usd, b_bars = MC.tornado(opt_arr, ps, ctx, best_own, n_groups=n_groups)
        tor_own = {"option": opts_all[best_own].id, "base_usd_per_mtok": b_usd,
                   "bars": [{**asdict(b), "swing": b.swing} for b in b_bars]}
    comps = []
    for k in order[1:6]:
        comps.append({"a": opts_all[top].id, "b": opts_all[k].id,
                      "p_a_beats_b": mc.p_beats(top, k)})
    best_by_kind = {}
    for k in order:
        best_by_kind.setdefault(opts_all[k].kind, k)
    for kind, k in best_by_kind.items():
        if k != top:
            comps.append({"a": opts_all[top].id, "b": opts_all[k].id,
                          "p_a_beats_b": mc.p_beats(top, k), "note": f"best {kind} option"})
    # The moat question: the best owned NVIDIA deployment against each other vendor's best.
    best_vendor: dict[str, int] = {}
    for k in order:
        if opts_all[k].kind == "own":
            best_vendor.setdefault(opts_all[k].vendor or "", k)
    nv = best_vendor.get("nvidia")
    for vendor, k in best_vendor.items():
        if nv is not None and vendor != "nvidia":
            comps.append({"a": opts_all[nv].id, "b": opts_all[k].id,
                          "p_a_beats_b": mc.p_beats(nv, k),
                          "note": f"best owned NVIDIA vs best owned {vendor.upper()} "
                                  f"(lock-in premium ${opts_all[nv].lockin_premium_usd:,.0f} vs "
                                  f"${opts_all[k].lockin_premium_usd:,.0f})"})
    merged: dict[tuple[str, str], dict[str, Any]] = {}
    for c in comps:  # one entry per pair; notes of repeated pairs are joined
        prev = merged.setdefault((c["a"], c["b"]), c)
        if prev is not c and c.get("note"):
            prev["note"] = "; ".join(x for x in (prev.get("note"), c["note"]) if x)
    comps = list(merged.values())
    if any(o.served_within_slo < 0.999 for o in ranked if o.kind != "api"):
        notes.append("served_within_slo < 1 means some Monte Carlo draws of realised "
                     "performance fall short of peak demand; those tokens are not counted.")
    return PlanResult(scn, model.id, ranked, rej, _assumptions(ps, scn), tor, comps,
                      _demand(scn), samples, seed, notes, tornado_own=tor_own)


# Replicas are sized from the point prediction's goodput, so an option whose serving replicas
# clear peak demand by less than this is one small refit (or a deployment a few per cent slower
# than predicted) away from needing another replica: its note says so.
TIGHT_HEADROOM = 0.05


def _tight(peak: float, gp: float, serving: int) -> str:
    """A note when the serving replicas' capacity clears peak demand by less than
    ``TIGHT_HEADROOM``, with the goodput shortfall that would take one more replica."""
    head = serving * gp / peak - 1.0 if peak > 0 else float("inf")
    if not 0.0 <= head < TIGHT_HEADROOM:
        return ""
    return (f"tight sizing: capacity {head:.1%} above peak demand, so {head / (1.0 + head):.1%} "
            "less goodput than predicted would need another replica")


def _extrapolated(stack: str, users: float, calib: Calibration | None = None) -> str:
    """A note when the option runs far more concurrent requests per replica (Little's law at
    goodput, p95 latencies: an upper estimate) than any calibration row of its stack."""
    seen = (calib or default_calibration()).meta.get("max_users_seen", {}).get(stack)
    if not seen or not users > EXTRAPOLATED_USERS * seen:
        return ""
    return (f"batched decode extrapolated: no {stack} row in the calibration ran more than "
            f"{seen:g} concurrent request(s) per replica (here about {users:.0f})")


def _speculation(scn: Scenario, cat: Catalog, grid: Any, notes: list[str]
                 ) -> tuple[int, float, float | None] | None:
    """The scenario's speculative decoding as (k, per-token acceptance, draft cost), noted."""
    sp = scn.speculative
    if sp is None:
        return None
    from moatmeter.perf.api import spec_supported
    from moatmeter.perf.speculative import speculation

    a = speculation(sp.tokens, sp.accept, sp.accept_len, sp.draft_cost)
    stacks = sorted(set(grid.stack.tolist()))
    on = [st for st in stacks if spec_supported(cat, st)]
    off = [st for st in stacks if st not in on]
    msg = (f"speculative decoding: {sp.tokens} drafted tokens per step at per-token acceptance "
           f"{a:.2f}, tried on {', '.join(on) or 'no candidate stack'} and kept where it raises "
           "goodput (options say 'speculative decoding on')")
    if off:
        msg += f"; not on {', '.join(off)} (the catalog does not list it as shipped there)"
    notes.append(msg)
    return sp.tokens, a, sp.draft_cost


def _length_ends(cat: Catalog, model: Any, scn: Scenario, opts: list[Option],
                 metas: list[dict[str, Any]], rin: Any, rout: Any,
                 calib: Calibration | None = None) -> None:
    """Goodput of each kept deployment at the short and long ends of the length ranges."""
    from moatmeter.perf import evaluate_grid

    grid = DeploymentGrid(
        accelerator=np.array([o.accelerator for o in opts]),
        stack=np.array([o.stack for o in opts]), tp=np.array([o.tp for o in opts]),
        pp=np.array([o.pp for o in opts]), weight_dtype=np.array([o.precision for o in opts]),
        kv_dtype=np.array([m["kv"] for m in metas]))
    slo = SLO(scn.slo.ttft_p95_s, scn.slo.tpot_p95_s)
    pc = scn.traffic.prefix_cache_hit
    spec = _speculation(scn, cat, grid, [])
    ends = []
    for li, lo_ in ((rin.low, rout.low), (rin.high, rout.high)):
        res = evaluate_grid(cat, model, grid, Workload(li, lo_, pc), slo, calib=calib,
                            speculation=spec)
        ends.append(np.where(res.feasible, res.goodput_rps, 0.0))
    for i, o in enumerate(opts):
        o.capacity_lo_rps = float(ends[0][i]) * o.replicas
        o.capacity_hi_rps = float(ends[1][i]) * o.replicas


def rack_units(acc: Accelerator, count: int, u_per_node: float, u_per_pcie: float) -> float:
    """Rack space: 8-way baseboard parts (SXM/OAM) come in 8-device servers; PCIe cards,
    workstations, Apple and CPU parts take a per-device share of a small server."""
    baseboard = (acc.form_factor == "datacenter" and acc.max_scaleup_devices >= 8
                 and not acc.scaleup_link.lower().startswith("none"))
    if baseboard:
        return math.ceil(count / 8) * u_per_node
    return count * u_per_pcie


def _per_node(acc: Accelerator | None) -> int:
    """Devices per server for staffing: 8-GPU HGX-style nodes, 4 in workstations/desktops."""
    if acc is None:
        return 8
    return 8 if acc.form_factor == "datacenter" else 4


def _prune(own: list[Option], meta: list[dict[str, Any]], build: Any, ps: ParamSet,
           ctx: C.Context, groups: dict, rej: list[Rejection]) -> tuple[list, list]:
    """Keep the cheapest parallelism per (accelerator, stack, precision), then the top N."""
    if not own:
        return [], []
    opt_arr = build(own, meta)
    X = ps.base()[:, None]
    Z = np.zeros((max(len(groups), 1), 1))
    usd = C.compute(opt_arr, X, Z, ctx)["usd_per_mtok"][:, 0]
    best: dict[tuple, int] = {}
    for i, o in enumerate(own):
        key = (o.accelerator, o.stack, o.precision)
        if key not in best or usd[i] < usd[best[key]]:
            best[key] = i
    keep = []
    for i, o in enumerate(own):
        b = best[(o.accelerator, o.stack, o.precision)]
        if b != i:
            rej.append(Rejection(o.id, f"dominated: {own[b].id} serves the same load for less "
                                       f"(${usd[b]:.3g} vs ${usd[i]:.3g} per M tokens, base case)"))
        else:
            keep.append(i)
    keep.sort(key=lambda i: usd[i])
    for i in keep[MAX_OWN_IN_MC:]:
        rej.append(Rejection(own[i].id, f"outside the best {MAX_OWN_IN_MC} owned deployments by "
                                        f"base-case $/M tokens (${usd[i]:.3g})"))
    keep = keep[:MAX_OWN_IN_MC]
    return [own[i] for i in keep], [meta[i] for i in keep]


def _mark_pareto(opts: list[Option]) -> None:
    """Pareto front of cost (P50 $/M tokens, lower is better) vs interactivity (higher)."""
    pts = [(o.usd_per_mtok_p50, o.interactivity_tok_s or 0.0) for o in opts]
    for i, o in enumerate(opts):
        if o.interactivity_tok_s is None:
            continue
        ci, ii = pts[i]
        o.pareto = not any(
            (cj <= ci and ij >= ii and (cj < ci or ij > ii))
            for j, (cj, ij) in enumerate(pts) if j != i and opts[j].interactivity_tok_s)


def _slo_miss(scn: Scenario, ttft: float, tpot: float) -> str:
    bits = []
    if ttft > scn.slo.ttft_p95_s:
        bits.append(f"misses TTFT: {ttft:.3g} s for one request alone > {scn.slo.ttft_p95_s:g} s")
    if tpot > scn.slo.tpot_p95_s:
        bits.append(f"misses TPOT: {tpot * 1000:.3g} ms alone > {scn.slo.tpot_p95_s * 1000:g} ms")
    return "; ".join(bits) or "meets the SLO only at zero load (goodput 0)"


def _demand(scn: Scenario) -> dict[str, float]:
    t = scn.traffic
    per_day = t.avg_rps * t.hours_per_day * 3600.0
    return {"avg_rps": t.avg_rps, "peak_rps": t.peak_rps, "requests_per_day": per_day,
            "tokens_per_day": per_day * (t.in_tok + t.out_tok),
            "input_tokens": t.in_tok, "output_tokens": t.out_tok,
            "hours_per_day": t.hours_per_day}


def _assumptions(ps: ParamSet, scn: Scenario) -> list[dict[str, Any]]:
    out = [{"id": p.id, "value": p.value, "low": p.low, "high": p.high, "unit": p.unit,
            "source": p.source, "estimate": p.estimate, "note": p.note}
           for p in ps.params if p.id not in ("zero", "one")]
    slo_src = MLPERF_SLO_SOURCE if "slo" not in scn.model_fields_set else "scenario file"
    out += [
        {"id": "slo", "value": f"TTFT p95 {scn.slo.ttft_p95_s:g} s, TPOT p95 "
                               f"{scn.slo.tpot_p95_s * 1000:g} ms", "low": None, "high": None,
         "unit": "", "source": slo_src, "estimate": False, "note": ""},
        {"id": "horizon_years", "value": scn.horizon_years, "low": None, "high": None,
         "unit": "years", "source": ("scenario file" if "horizon_years" in scn.model_fields_set
                                     else DEFAULTS_DOC["horizon_years"]),
         "estimate": False, "note": ""},
        {"id": "residual_value_curve", "value": "by age, scaled by h100_residual_value_year3",
         "low": None, "high": None, "unit": "fraction", "source": RESIDUAL_SOURCE,
         "estimate": False, "note": ""},
        {"id": "staffing", "value": "per-node FTE for the first 4 servers, then 1 FTE per "
                                    "staff_fte_per_gpu_servers", "low": None, "high": None,
         "unit": "", "source": "moatmeter modelling choice from the two cited staffing rates",
         "estimate": True, "note": "base salary only; fully loaded cost is higher. Rented "
                                   "fleets carry the same serving-ops staffing (no published "
                                   "split between hardware and serving operations)"},
        {"id": "chip_to_server_power", "value": "dgx_h100_max_power / (8 x h100_tdp)",
         "low": None, "high": None, "unit": "x", "source": "DGX H100 10.2 kW / 8 x 700 W",
         "estimate": False, "note": "applied to every accelerator's TDP"},
    ]
    return out
