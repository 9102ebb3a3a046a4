"""Where cross-validated error lies: between documents or within them, and whether it is learnable.

Leave-one-source-out cross-validation says how wrong the model is on a document it never saw;
this module says what kind of wrong. Three questions, each answered on the held-out predictions:

- **Between or within documents?** The variance of log(predicted / measured) splits into the
  spread of the documents' mean errors (a harness, a software build or a cluster that runs
  faster or slower than the rest) and the spread within each document (the model's shape across
  concurrency, lengths and metrics). Removing each group's own median error - an oracle no model
  has - bounds what a per-document correction could ever win.
- **Does more data help?** The error of rows whose accelerator x stack x model other documents
  also measured, by how many: if rows with several siblings miss as often as lone ones, the
  misses are disagreements between sources, not gaps in coverage.
- **Is the residual learnable?** A ridge regression of the residual on the configuration
  (one-hot metric, scenario, stack, accelerator, model, precision; log lengths, log
  concurrency, device count), fitted on the other documents' residuals and applied to the
  held-out one. If that makes the held-out error worse, the configuration does not carry what
  the model misses.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from moatmeter.perf.observations import TARGET_P90, summary

# What ``error_structure`` reads of each row: the document, then its configuration in catalog ids
CATEGORICAL = ("metric", "scenario", "stack", "accelerator", "model", "weight_dtype")
NUMERIC = ("input_len", "output_len", "concurrency", "devices")
RIDGE_LAMBDAS = (1.0, 10.0, 100.0)  # weak to strong shrinkage towards no correction


def _stats(r: np.ndarray) -> dict[str, Any]:
    a = np.abs(np.expm1(r))  # APE of a prediction whose log error is r
    return {**summary(a), "beyond_35": int((a > TARGET_P90).sum())}


def _demean(r: np.ndarray, keys: np.ndarray) -> np.ndarray:
    """``r`` less each group's median: what a perfect per-group correction leaves."""
    out = r.copy()
    for k in np.unique(keys):
        m = keys == k
        out[m] -= np.median(r[m])
    return out


def _design(rows: list[dict[str, Any]]) -> np.ndarray:
    cols = []
    for name in CATEGORICAL:
        v = np.array([str(r[name]) for r in rows])
        cols += [(v == u).astype(float) for u in np.unique(v)]
    for name in NUMERIC:
        x = np.log1p(np.nan_to_num(np.array([float(r[name]) for r in rows]), nan=0.0))
        cols.append((x - x.mean()) / (x.std() or 1.0))
    return np.column_stack(cols)


def _loso_ridge(z: np.ndarray, r: np.ndarray, docs: np.ndarray, lam: float) -> np.ndarray:
    """Each document's residual as a ridge fit on the other documents' residuals predicts it."""
    fitted = np.zeros(len(r))
    eye = lam * np.eye(z.shape[1])
    for d in np.unique(docs):
        te = docs == d
        if te.all():  # one document: nothing to learn from
            continue
        a, y = z[~te], r[~te]
        mu = y.mean()
        beta = np.linalg.solve(a.T @ a + eye, a.T @ (y - mu))
        fitted[te] = mu + z[te] @ beta
    return fitted


def error_structure(rows: list[dict[str, Any]], predicted: np.ndarray, measured: np.ndarray
                    ) -> dict[str, Any]:
    """Decompose held-out errors. ``rows``: per prediction, its ``source`` and the fields of
    ``CATEGORICAL`` and ``NUMERIC`` (catalog ids, so that two documents' spellings of one
    accelerator count as one)."""
    r = np.log(np.asarray(predicted, float) / np.asarray(measured, float))
    ok = np.isfinite(r)  # a row no fold could predict says nothing about where error lies
    r = r[ok]
    rows = [o for o, k in zip(rows, ok, strict=True) if k]
    docs = np.array([o["source"] for o in rows])
    metric = np.array([o["metric"] for o in rows])
    doc_mean = {d: r[docs == d].mean() for d in np.unique(docs)}
    between = np.array([doc_mean[d] for d in docs])
    out: dict[str, Any] = {
        "documents": len(doc_mean),
        "held_out": _stats(r),
        "log_error_variance": {"total": float(r.var()), "between_documents": float(between.var()),
                               "within_documents": float((r - between).var())},
        "oracle_offset": {
            "per_document": _stats(_demean(r, docs)),
            "per_document_metric": _stats(_demean(r, np.char.add(docs, "|" + metric))),
        },
    }
    # rows by how many other documents measured the same accelerator x stack x model
    trip = np.array(["|".join(str(o[k]) for k in ("accelerator", "stack", "model")) for o in rows])
    docs_of: dict[str, set[str]] = {}
    for t, d in zip(trip, docs, strict=True):
        docs_of.setdefault(t, set()).add(d)
    others = np.array([len(docs_of[t]) - 1 for t in trip])
    out["by_other_documents"] = {
        label: _stats(r[(others >= lo) & (others <= hi)])
        for label, lo, hi in (("0", 0, 0), ("1", 1, 1), ("2-3", 2, 3), ("4+", 4, 10**9))}
    z = _design(rows)
    out["loso_ridge_correction"] = {
        f"lambda_{lam:g}": _stats(r - _loso_ridge(z, r, docs, lam)) for lam in RIDGE_LAMBDAS}
    return out


def table(st: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """``error_structure``'s result as labelled lines, in reading order (for text and HTML)."""
    lines = [("held out, as predicted", st["held_out"]),
             ("oracle: each source's own median error removed",
              st["oracle_offset"]["per_document"]),
             ("oracle: each source's median error per metric removed",
              st["oracle_offset"]["per_document_metric"])]
    lines += [(f"residual learned from the other sources (ridge, {k.replace('_', ' ')})", f)
              for k, f in st["loso_ridge_correction"].items()]
    lines += [(f"rows whose accelerator x stack x model {k} other sources measured", f)
              for k, f in st["by_other_documents"].items()]
    return lines


def variance_split(st: dict[str, Any]) -> str:
    """One sentence: how much of the held-out log error lies between sources, how much within."""
    v = st["log_error_variance"]
    if st["documents"] < 2:
        return "one source only, so no split between sources"
    if not v["total"] > 0:
        return "no held-out error to split"
    return (f"{v['between_documents'] / v['total']:.0%} of the variance of log(predicted / "
            f"measured) lies between the sources' mean errors, "
            f"{v['within_documents'] / v['total']:.0%} within sources")
