"""Monte Carlo over every uncertain input, vectorised over options × samples.

Samples are shared across options (common random numbers): the same electricity price, cost of
capital and software-gap draw for a (stack, family) hit every option in a sample, so
P(A beats B) measures the options' difference, not sampling noise.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from moatmeter.tco.costs import ITEMS, Context, Options, compute
from moatmeter.tco.params import ParamSet

Z90 = 1.2815515655446004  # standard-normal P90


@dataclass
class MCResult:
    samples: int
    seed: int
    tco_pct: np.ndarray  # (O, 3) P10, P50, P90 USD over the horizon
    usd_per_mtok_pct: np.ndarray  # (O, 3)
    lockin_pct: np.ndarray  # (O, 3)
    breakdown_mean: dict[str, np.ndarray]  # item -> (O,) mean USD
    served_frac_mean: np.ndarray  # (O,)
    kw_full: np.ndarray  # (O,)
    usd_per_mtok: np.ndarray  # (O, S) kept for P(A beats B)

    def p_beats(self, a: int, b: int) -> float:
        """Probability option a has a lower $/M tokens than option b."""
        return float(np.mean(self.usd_per_mtok[a] < self.usd_per_mtok[b]))


def run(opt: Options, ps: ParamSet, ctx: Context, *, samples: int = 10_000, seed: int = 0,
        n_groups: int | None = None, chunk: int = 2500) -> MCResult:
    if samples < 1:
        raise ValueError("samples must be >= 1")
    rng = np.random.default_rng(seed)
    X = ps.sample(samples, rng)
    G = int(n_groups if n_groups is not None else (opt.perf_group.max() + 1 if len(opt) else 1))
    Z = rng.standard_normal((max(G, 1), samples))
    n_opt = len(opt)
    usd = np.empty((n_opt, samples))
    tco = np.empty((n_opt, samples))
    lock = np.empty((n_opt, samples))
    sums = {k: np.zeros(n_opt) for k in ITEMS}
    served = np.zeros(n_opt)
    kw = np.zeros(n_opt)
    for s0 in range(0, samples, chunk):  # chunks bound memory for large option sets
        sl = slice(s0, min(samples, s0 + chunk))
        out = compute(opt, X[:, sl], Z[:, sl], ctx)
        usd[:, sl] = out["usd_per_mtok"]
        tco[:, sl] = out["total"]
        lock[:, sl] = out["lockin"]
        for k in ITEMS:
            sums[k] += out[k].sum(axis=1)
        served += out["served_frac"].sum(axis=1)
        kw = out["kw_full"][:, 0]
    q = [10, 50, 90]
    return MCResult(
        samples=samples, seed=seed,
        tco_pct=np.percentile(tco, q, axis=1).T,
        usd_per_mtok_pct=np.percentile(usd, q, axis=1).T,
        lockin_pct=np.percentile(lock, q, axis=1).T,
        breakdown_mean={k: v / samples for k, v in sums.items()},
        served_frac_mean=served / samples, kw_full=kw, usd_per_mtok=usd)


@dataclass(frozen=True)
class TornadoBar:
    param: str
    low_input: float
    high_input: float
    usd_per_mtok_low: float  # output with the input at its low end
    usd_per_mtok_high: float
    source: str

    @property
    def swing(self) -> float:
        return abs(self.usd_per_mtok_high - self.usd_per_mtok_low)


def tornado(opt: Options, ps: ParamSet, ctx: Context, index: int, *, top: int = 12,
            n_groups: int | None = None) -> tuple[float, list[TornadoBar]]:
    """One-at-a-time sensitivity of option ``index``'s $/M tokens: each input at low and high."""
    sub = _take(opt, [index])
    base = ps.base()
    unc = [i for i, p in enumerate(ps.params) if p.uncertain]
    cols = 1 + 2 * len(unc) + 2
    X = np.repeat(base[:, None], cols, axis=1)
    for j, i in enumerate(unc):
        X[i, 1 + 2 * j] = ps.params[i].low
        X[i, 2 + 2 * j] = ps.params[i].high
    G = int(n_groups if n_groups is not None else opt.perf_group.max() + 1)
    Z = np.zeros((max(G, 1), cols))
    g = int(sub.perf_group[0])
    Z[g, -2], Z[g, -1] = -Z90, Z90
    y = compute(sub, X, Z, ctx)["usd_per_mtok"][0]
    bars = [TornadoBar(ps.params[i].id, ps.params[i].low, ps.params[i].high,
                       float(y[1 + 2 * j]), float(y[2 + 2 * j]), ps.params[i].source)
            for j, i in enumerate(unc)]
    sigma = float(sub.sigma[0])
    if sigma > 0:
        bars.append(TornadoBar("realised performance (software gap, P10-P90)",
                               float(np.exp(-Z90 * sigma)), float(np.exp(Z90 * sigma)),
                               float(y[-2]), float(y[-1]), "perf model eff_sigma"))
    bars = [b for b in bars if b.swing > 0]
    bars.sort(key=lambda b: b.swing, reverse=True)
    return float(y[0]), bars[:top]


def _take(opt: Options, idx: list[int]) -> Options:
    kw = {}
    for name in opt.__dataclass_fields__:
        v = getattr(opt, name)
        if v is None:
            kw[name] = None
        else:
            kw[name] = [v[i] for i in idx] if isinstance(v, list) else np.asarray(v)[idx]
    return Options(**kw)


def take(opt: Options, idx: list[int]) -> Options:
    return _take(opt, idx)
