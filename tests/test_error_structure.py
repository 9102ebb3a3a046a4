"""The decomposition of cross-validated error: between documents, within them, learnable or not."""

import numpy as np
import pytest

from moatmeter.perf.error_structure import error_structure, variance_split


def _row(doc: str, metric: str = "output_tokens_per_s", acc: str = "h100-sxm",
         model: str = "llama-3.1-8b", conc: float = 8.0) -> dict[str, object]:
    return {"source": doc, "metric": metric, "scenario": "fixed_concurrency",
            "stack": "vllm-cuda", "accelerator": acc, "model": model, "weight_dtype": "bf16",
            "input_len": 1024.0, "output_len": 256.0, "concurrency": conc, "devices": 1.0}


def _run(rows, log_err):
    measured = np.full(len(rows), 100.0)
    return error_structure(rows, measured * np.exp(np.asarray(log_err)), measured)


def test_pure_document_offsets_are_all_between_documents():
    offsets = {"doc A": 0.5, "doc B": -0.5, "doc C": 0.1}
    rows = [_row(d, conc=2.0 ** i) for d in offsets for i in range(4)]
    err = [offsets[r["source"]] for r in rows]
    s = _run(rows, err)
    assert s["documents"] == 3 and "between the sources' mean errors" in variance_split(s)
    v = s["log_error_variance"]
    assert v["within_documents"] == pytest.approx(0.0, abs=1e-12)
    assert v["between_documents"] == pytest.approx(v["total"])
    assert s["held_out"]["beyond_35"] == 8  # doc A (+0.5) and doc B (-0.5) miss by > 35 %
    assert s["oracle_offset"]["per_document"]["p90_ape"] == pytest.approx(0.0, abs=1e-12)


def test_metric_offsets_within_a_document_need_the_document_metric_oracle():
    rows, err = [], []
    for k, doc in enumerate(("doc A", "doc B", "doc C", "doc D")):
        for j, metric in enumerate(("output_tokens_per_s", "ttft_ms")):
            for c in (1, 4, 16):
                rows.append(_row(doc, metric, conc=c))
                err.append((0.6 if j else -0.6) * (1 if k % 2 else -1))
    s = _run(rows, err)
    assert s["oracle_offset"]["per_document"]["beyond_35"] == len(rows)  # median 0, all +-0.6
    assert s["oracle_offset"]["per_document_metric"]["p90_ape"] == pytest.approx(0.0, abs=1e-12)


def test_a_residual_the_configuration_carries_is_learned_held_out():
    """TTFT predicted 0.6 too low in every document: the held-out ridge learns it from the rest."""
    rows, err = [], []
    rng = np.random.default_rng(0)
    for k in range(8):
        for metric in ("output_tokens_per_s", "ttft_ms"):
            for c in (1, 4, 16):
                rows.append(_row(f"doc {k}", metric, conc=c))
                err.append((-0.6 if metric == "ttft_ms" else 0.0) + rng.normal(0, 0.02))
    s = _run(rows, err)
    assert s["held_out"]["beyond_35"] == len(rows) // 2 and s["held_out"]["p90_ape"] > 0.4
    fits = s["loso_ridge_correction"]
    assert fits["lambda_1"]["beyond_35"] == 0 and fits["lambda_1"]["p90_ape"] < 0.1
    # heavier shrinkage learns less of it, but every strength helps a residual this plain
    assert all(f["p90_ape"] < s["held_out"]["p90_ape"] for f in fits.values())


def test_rows_are_counted_by_the_other_documents_that_measured_their_configuration():
    rows = [_row("doc A"), _row("doc B"), _row("doc C"), _row("doc C"),
            _row("doc A", acc="mi300x"), _row("doc B", model="llama-3.1-70b"),
            _row("doc D", model="llama-3.1-70b")]
    s = _run(rows, [0.0] * len(rows))
    by = s["by_other_documents"]
    assert by["0"]["n"] == 1 and by["1"]["n"] == 2 and by["2-3"]["n"] == 4 and by["4+"]["n"] == 0


def test_a_row_no_fold_could_predict_is_left_out():
    rows = [_row("doc A"), _row("doc B"), _row("doc C")]
    measured = np.full(3, 100.0)
    s = error_structure(rows, np.array([110.0, np.nan, 90.0]), measured)
    # doc B is gone from the sibling count too: A and C have one other document each
    assert s["held_out"]["n"] == 2 and s["by_other_documents"]["1"]["n"] == 2
    assert all(np.isfinite(v) for v in s["log_error_variance"].values())


def test_one_source_has_no_between_source_split():
    rows = [_row("doc A", conc=c) for c in (1, 4, 16)]
    s = _run(rows, [0.1, -0.2, 0.3])
    assert s["documents"] == 1 and variance_split(s).startswith("one source only")
