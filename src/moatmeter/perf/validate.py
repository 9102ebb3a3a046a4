"""Drivers: fit a calibration to observation rows, validate, leave-one-source-out cross-validate.

Cross-validation holds out *every row of one source* (a whole vendor table or MLPerf submission),
refits from the priors on the remaining rows, and predicts the held-out rows: the calibration never
sees the rows it predicts, nor their siblings from the same document.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from multiprocessing import get_context
from typing import Any

import numpy as np

from moatmeter.catalog.load import Catalog
from moatmeter.perf.calibrate import (
    Calibration,
    build_design,
    calibration_from_fit,
    default_calibration,
    dtype_class,
    fit,
    metric_sigma,
    source_weights,
    trend_key,
)
from moatmeter.perf.error_structure import error_structure
from moatmeter.perf.observations import (
    OFFLINE_MAX_BATCH,
    OFFLINE_MAX_BATCH_DEFAULT,
    Prepared,
    ape,
    map_rows,
    predict_prepared,
    prepare,
    rows_keys,
    summary,
)


@dataclass
class Fitted:
    calibration: Calibration
    prepared: Prepared
    skipped: list[dict[str, str]]
    log_resid: np.ndarray


def _fit_prepared(p: Prepared, idx: np.ndarray | None = None, meta: dict[str, Any] | None = None
                  ) -> tuple[Calibration, np.ndarray]:
    keys_all = rows_keys(p)
    if idx is None:
        idx = np.arange(len(p.obs))
    keys = [keys_all[i] for i in idx]
    sub = _subset(p, idx)
    when = np.array([o.when for o in sub.obs], float)
    design = build_design(keys, when)
    logm = np.log(sub.measured)

    def predict_log(ec: np.ndarray, em: np.ndarray, ov: np.ndarray) -> np.ndarray:
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.log(predict_prepared(sub, ec, em, ov))

    theta, resid = fit(predict_log, logm, design,
                       weights=source_weights([o.source for o in sub.obs]))
    extra: dict[str, Any] = {}
    if np.isfinite(when).any():
        extra["newest"] = round(float(np.nanmax(when)), 3)
    spans: dict[str, list[float]] = {}
    for k, t in zip(keys, when, strict=True):
        tk = trend_key(k["arch"], k["engine"])
        if tk and np.isfinite(t):
            lo, hi = spans.get(tk, [t, t])
            spans[tk] = [round(float(min(lo, t)), 3), round(float(max(hi, t)), 3)]
    extra["trend_range"] = spans
    extra["max_users_seen"] = max_users_seen(sub.obs)
    cal = calibration_from_fit(theta, design, resid, keys, {**(meta or {}), **extra})
    return cal, resid


def max_users_seen(obs: list[Any]) -> dict[str, float]:
    """Per stack, the most concurrent requests per replica any fitted row ran (offline rows without
    a stated batch: the engine's offline cap). ``predict`` says when a deployment goes far beyond
    it: the step model then extrapolates that stack's batched decode from lighter loads."""
    out: dict[str, float] = {}
    for o in obs:
        conc = o.concurrency / o.replicas if math.isfinite(o.concurrency) else math.nan
        if o.scenario == "single_stream":
            users = 1.0
        elif o.scenario == "fixed_concurrency":
            users = conc
        elif o.scenario == "offline":
            users = conc if math.isfinite(conc) else float(
                OFFLINE_MAX_BATCH.get(o.engine.lower(), OFFLINE_MAX_BATCH_DEFAULT))
        else:  # prompt-processing and rate rows say nothing about batched decode
            continue
        if math.isfinite(users):
            out[o.stack] = max(out.get(o.stack, 0.0), round(float(users), 2))
    return dict(sorted(out.items()))


def _subset(p: Prepared, idx: np.ndarray) -> Prepared:
    if len(idx) == len(p.obs) and np.all(idx == np.arange(len(p.obs))):
        return p
    from dataclasses import fields, replace

    res = replace(p.res, s=p.res.s.take(idx), bcap=p.res.bcap[idx])
    arrays = {f.name: getattr(p, f.name)[idx] for f in fields(Prepared)
              if f.name not in ("obs", "res")}
    return Prepared(obs=[p.obs[i] for i in idx], res=res, **arrays)


def _with_calib(p: Prepared, cal: Calibration, sigma_out: np.ndarray | None = None
                ) -> np.ndarray:
    """Predictions with ``cal``'s efficiencies; ``sigma_out`` receives each row's band sigma (its
    pair's, with its metric's multiple and, for throughput, its prompt share's widening)."""
    effs = [cal.lookup(o.stack, o.engine, o.family, o.line, o.arch, o.when,
                       dtype_class(o.weight_dtype)) for o in p.obs]
    eff = np.array([(e.eff_compute, e.eff_memory, e.overhead_s) for e in effs], dtype=float)
    share = np.zeros(len(p.obs))
    pred = predict_prepared(p, eff[:, 0], eff[:, 1], eff[:, 2], share_out=share)
    if sigma_out is not None:
        sigma_out[:] = [metric_sigma(e.sigma, o.metric, float(sh))
                        for e, o, sh in zip(effs, p.obs, share, strict=True)]
    return pred


def calibrate_rows(cat: Catalog, rows: list[dict[str, str]], meta: dict[str, Any] | None = None
                   ) -> Fitted:
    obs, skipped = map_rows(cat, rows)
    p, sk2 = prepare(cat, obs, Calibration())
    cal, resid = _fit_prepared(p, meta=meta)
    return Fitted(cal, p, skipped + sk2, resid)


def validate_rows(cat: Catalog, rows: list[dict[str, str]], calib: Calibration | None = None,
                  details: bool = False) -> dict[str, Any]:
    """The DESIGN.md `validate` contract: per-row predicted/measured/ape, summary, skipped; the
    summary also says how many measured values fall inside the calibration's P10-P90 bands
    (how honest the bands are on data it was not fitted to: benchmarks/external_test.py).
    ``details`` adds a "details" list (each row's source, vendor, stack, metric and band) for the
    HTML report; it is not part of the contract."""
    obs, skipped = map_rows(cat, rows)
    calib = calib or default_calibration()
    if not obs:
        out = {"rows": [], "summary": {**summary(np.array([])), "skipped": skipped}}
        return {**out, "details": []} if details else out
    p, sk2 = prepare(cat, obs, calib)
    sigma = np.zeros(len(p.obs))
    pred = _with_calib(p, calib, sigma)
    band, by_metric = _coverage(p, pred, sigma)
    return _report(p, pred, skipped + sk2, {"p10_p90_band_coverage": band,
                                             "p10_p90_band_coverage_by_metric": by_metric},
                   sigma if details else None)


def _report(p: Prepared, pred: np.ndarray, skipped: list[dict[str, str]],
            extra: dict[str, Any] | None = None, sigma: np.ndarray | None = None
            ) -> dict[str, Any]:
    a = ape(pred, p.measured)
    rows = [{"id": o.id, "predicted": float(pred[i]), "measured": float(p.measured[i]),
             "ape": float(a[i])} for i, o in enumerate(p.obs)]
    out: dict[str, Any] = {"rows": rows, "summary": {**summary(a), "skipped": skipped}}
    out["summary"].update(extra or {})
    if sigma is not None:
        out["details"] = _details(p, pred, a, sigma)
    return out


def _details(p: Prepared, pred: np.ndarray, a: np.ndarray, sigma: np.ndarray
             ) -> list[dict[str, Any]]:
    """Each row with what a reader groups and filters by, and its predicted P10-P90 band."""
    out = []
    for i, (o, half) in enumerate(zip(p.obs, _half_widths(sigma), strict=True)):
        out.append({"id": o.id, "source": o.source, "vendor": o.vendor, "stack": o.stack,
                    "accelerator": o.accelerator, "model": o.model, "metric": o.metric,
                    "scenario": o.scenario, "predicted": float(pred[i]),
                    "measured": float(p.measured[i]), "ape": float(a[i]),
                    "p10": float(pred[i] * np.exp(-half)), "p90": float(pred[i] * np.exp(half))})
    return out


def _fold(p: Prepared, test: np.ndarray, train: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One held-out source: fit on ``train``, predict ``test`` (predictions, band sigmas)."""
    cal = _fit_prepared(p, train)[0] if len(train) else Calibration()
    sig = np.zeros(len(test))
    return _with_calib(_subset(p, test), cal, sig), sig


_WORKER_P: Prepared | None = None  # a worker process's copy of the prepared rows
_BLAS_THREADS = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")


def _worker_init(p: Prepared) -> None:
    global _WORKER_P
    _WORKER_P = p


def _worker_fold(test: np.ndarray, train: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    assert _WORKER_P is not None
    return _fold(_WORKER_P, test, train)


MAX_DEFAULT_JOBS = 8  # each worker holds its own numpy / scipy and a copy of the rows (~150 MB)


def default_jobs() -> int:
    """Worker processes for the cross-validation: the CPUs this process may use, at most
    ``MAX_DEFAULT_JOBS`` unless asked for more."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cpus = os.cpu_count() or 1
    return max(1, min(cpus, MAX_DEFAULT_JOBS))


def loso_cv(cat: Catalog, rows: list[dict[str, str]],
            progress: Callable[[int, int], None] | None = None, details: bool = False,
            jobs: int = 1) -> dict[str, Any]:
    """Leave-one-source-out predictions for every modelable row, with breakdowns (``details``:
    as in ``validate_rows``, with each row's held-out band). The folds are independent, so
    ``jobs`` > 1 fits them in that many worker processes; the result is the same."""
    obs, skipped = map_rows(cat, rows)
    p, sk2 = prepare(cat, obs, Calibration())
    sources = np.array([o.source for o in p.obs])
    uniq = list(dict.fromkeys(sources))
    pred = np.full(len(p.obs), np.nan)
    sigma = np.full(len(p.obs), np.nan)
    folds = [(np.flatnonzero(sources == src), np.flatnonzero(sources != src)) for src in uniq]
    jobs = max(1, min(jobs, len(folds)))
    if jobs == 1:
        for k, (test, train) in enumerate(folds):
            pred[test], sigma[test] = _fold(p, test, train)
            if progress:
                progress(k + 1, len(folds))
    else:
        # Spawned, not forked: the CLI's progress bar runs a thread, and forking a threaded
        # process can deadlock the child; each worker gets the prepared rows once, pickled.
        # One BLAS thread per worker: the workers already fill the CPUs (with BLAS's default
        # pool each, the bundled CV took 446 s on 2 cores instead of 384 s).
        saved = {k: os.environ.get(k) for k in _BLAS_THREADS}
        os.environ.update(dict.fromkeys(_BLAS_THREADS, "1"))
        try:
            with ProcessPoolExecutor(max_workers=jobs, mp_context=get_context("spawn"),
                                     initializer=_worker_init, initargs=(p,)) as pool:
                futs = {pool.submit(_worker_fold, test, train): test for test, train in folds}
                for k, fut in enumerate(as_completed(futs), start=1):
                    pred[futs[fut]], sigma[futs[fut]] = fut.result()
                    if progress:
                        progress(k, len(folds))
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
    a = ape(pred, p.measured)
    by = {}
    for name, key in (("vendor", lambda o: o.vendor), ("stack", lambda o: o.stack),
                      ("metric", lambda o: o.metric), ("scenario", lambda o: o.scenario)):
        groups: dict[str, list[int]] = {}
        for i, o in enumerate(p.obs):
            groups.setdefault(key(o), []).append(i)
        by[name] = {g: summary(a[ix]) for g, ix in sorted(groups.items())}
    # Was the row's (stack, family) pair - with its architecture class and weight format -
    # measured by some *other* source?
    row_keys = rows_keys(p)
    measured_by: dict[tuple[str, str], set[str]] = {}
    for o, keys in zip(p.obs, row_keys, strict=True):
        for lv in ("pair", "pair_arch", "pair_dtype"):
            measured_by.setdefault((lv, keys[lv]), set()).add(o.source)

    def other(i: int, lv: str) -> bool:
        return len(measured_by[(lv, row_keys[i][lv])] - {p.obs[i].source}) > 0

    known: dict[str, list[int]] = {
        "pair, architecture class and weight format measured by another source": [],
        "pair measured by another source, not this class or format": [],
        "pair only in the held-out source (fallback)": []}
    names = list(known)
    for i in range(len(p.obs)):
        k = (0 if other(i, "pair_arch") and other(i, "pair_dtype") else 1) if other(i, "pair") \
            else 2
        known[names[k]].append(i)
    by["coverage"] = {g: summary(a[ix]) for g, ix in known.items()}
    band_by_cov = {g: _coverage(_subset(p, np.array(ix, int)), pred[ix], sigma[ix])[0]
                   for g, ix in known.items() if ix}
    band, by_metric = _coverage(p, pred, sigma)
    out = _report(p, pred, skipped + sk2, {"cv": "leave-one-source-out",
                                           "sources": len(uniq), "by": by,
                                           "p10_p90_band_coverage": band,
                                           "p10_p90_band_coverage_by_metric": by_metric,
                                           "p10_p90_band_coverage_by_coverage": band_by_cov},
                  sigma if details else None)
    if len(p.obs):
        keys = [{"source": o.source, "metric": o.metric, "scenario": o.scenario, "stack": o.stack,
                 "accelerator": o.accelerator, "model": o.model, "weight_dtype": o.weight_dtype,
                 "input_len": o.input_len, "output_len": o.output_len,
                 "concurrency": o.concurrency, "devices": o.tp * o.pp * o.replicas}
                for o in p.obs]
        out["summary"]["error_structure"] = error_structure(keys, pred, p.measured)
    return out


# What makes two observation rows the same configuration for ``source_agreement``: everything
# but the software version, the document and the value (versions differ between sources, as they
# do between a held-out source and the calibration).
CONFIG_COLUMNS = ("accelerator", "count", "engine", "backend", "model", "weight_dtype", "kv_dtype",
                  "scenario", "concurrency", "input_len", "output_len", "metric")


def source_agreement(rows: list[dict[str, str]]) -> dict[str, Any]:
    """How well one source's figure predicts another's for the very same configuration.

    For every configuration that more than one source measured, each row is "predicted" by the
    geometric mean of the other sources' values. No model can be expected to predict a held-out
    source much better than the sources agree with each other, so this is the noise floor of the
    published data that cross-validation is measured against.
    """
    groups: dict[tuple[str, ...], list[dict[str, str]]] = {}
    for r in rows:
        groups.setdefault(tuple(r.get(k, "").strip() for k in CONFIG_COLUMNS), []).append(r)
    out: list[dict[str, Any]] = []
    n_groups = 0
    for members in groups.values():
        if len({m["source"] for m in members}) < 2:
            continue
        n_groups += 1
        for r in members:
            others = [float(m["value"]) for m in members if m["source"] != r["source"]]
            pred = float(np.exp(np.mean(np.log(others))))
            meas = float(r["value"])
            out.append({"id": r["id"], "predicted": pred, "measured": meas,
                        "ape": abs(pred / meas - 1.0)})
    a = np.array([r["ape"] for r in out])
    return {"rows": out, "summary": {**summary(a), "configurations": n_groups}}


def _half_widths(sigma: np.ndarray) -> np.ndarray:
    """Each row's P10-P90 half-width in log space from its band sigma (``_with_calib``): the one
    band definition that the coverage figures and the report's bars share."""
    return 1.2816 * np.asarray(sigma, float)


def _coverage(p: Prepared, pred: np.ndarray, sigma: np.ndarray
              ) -> tuple[float | None, dict[str, float]]:
    """How often the measured value falls inside the predicted P10-P90 band (ideal: 80 %),
    overall and per metric, each row with its own band (``_with_calib``)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        inside = np.abs(np.log(pred / p.measured)) <= _half_widths(sigma)
    ok = np.isfinite(pred)
    band = float(np.mean(inside[ok])) if ok.any() else None
    by_metric = {m: float(np.mean(inside[ok & (p.metric == m)]))
                 for m in sorted(set(p.metric[ok]))}
    return band, by_metric
