"""Serving metrics from stored request records; exact definitions live in docs/bench-metrics.md.

Names follow vLLM's `bench serve` where harnesses disagree: ITL is the raw gap between
consecutive content events, TPOT is (E2E − TTFT)/(n − 1) per request. ``PEER_NAMES`` maps each of
our figures to the name the other harnesses use for the same quantity.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from moatmeter.bench.store import RequestRecord

PCTS = (50, 90, 95, 99)
NS_PER_MS = 1e6

# Our figure → the same quantity in each peer harness (None: the peer has no equivalent).
PEER_NAMES: dict[str, dict[str, str | None]] = {
    "ttft_ms": {"aiperf": "time_to_first_token", "vllm": "ttft_ms",
                "guidellm": "time_to_first_token_ms", "llmperf": "ttft_s"},
    "itl_ms": {"aiperf": "inter_chunk_latency", "vllm": "itl_ms", "guidellm": None,
               "llmperf": None},
    "tpot_ms": {"aiperf": "inter_token_latency", "vllm": "tpot_ms",
                "guidellm": "inter_token_latency_ms", "llmperf": None},
    "e2e_ms": {"aiperf": "request_latency", "vllm": "e2el_ms",
               "guidellm": "request_latency", "llmperf": "end_to_end_latency_s"},
    "output_tokens_per_s": {"aiperf": "output_token_throughput",
                            "vllm": "output_throughput",
                            "guidellm": "output_tokens_per_second",
                            "llmperf": "request_output_throughput_token_per_s"},
    "total_tokens_per_s": {"aiperf": "total_token_throughput", "vllm": "total_token_throughput",
                           "guidellm": "tokens_per_second", "llmperf": None},
    "requests_per_s": {"aiperf": "request_throughput", "vllm": "request_throughput",
                       "guidellm": "requests_per_second", "llmperf": None},
    "goodput_rps": {"aiperf": "goodput", "vllm": "request_goodput", "guidellm": None,
                    "llmperf": None},
}


def stats(values: np.ndarray | Sequence[float]) -> dict[str, float | None]:
    """mean and p50/p90/p95/p99 (linear interpolation, as numpy and vLLM); None when empty."""
    a = np.asarray(values, dtype=np.float64)
    if a.size == 0:
        return {"mean": None, **{f"p{p}": None for p in PCTS}}
    qs = np.percentile(a, PCTS)
    return {"mean": float(a.mean()), **{f"p{p}": float(q) for p, q in zip(PCTS, qs, strict=True)}}


def full_stats(values: np.ndarray) -> dict[str, float | int | None]:
    """The wider set aiperf exports (min/max/std/count and more percentiles)."""
    a = np.asarray(values, dtype=np.float64)
    if a.size == 0:
        return {"count": 0}
    ps = (1, 5, 10, 25, 50, 75, 90, 95, 99)
    return {"avg": float(a.mean()), "min": float(a.min()), "max": float(a.max()),
            "std": float(a.std(ddof=1)) if a.size > 1 else 0.0, "count": int(a.size),
            **{f"p{p}": float(q) for p, q in zip(ps, np.percentile(a, ps), strict=True)}}


@dataclass
class PerRequest:
    """Struct of arrays over the successful requests of a run (ms unless named otherwise)."""

    idx: np.ndarray
    ttft_ms: np.ndarray
    e2e_ms: np.ndarray
    tpot_ms: np.ndarray  # NaN where fewer than 2 output tokens
    output_tokens: np.ndarray
    input_tokens: np.ndarray
    itl_ms: np.ndarray  # all raw gaps of all requests, concatenated


def per_request(records: Sequence[RequestRecord]) -> PerRequest:
    ok = [r for r in records if r.ok]
    idx = np.array([r.idx for r in ok], dtype=np.int64)
    start = np.array([r.start_ns for r in ok], dtype=np.float64)
    end = np.array([r.end_ns for r in ok], dtype=np.float64)
    first = np.array([r.first_token_ns if r.first_token_ns is not None else np.nan for r in ok],
                     dtype=np.float64)
    n_out = np.array([r.output_tokens or 0 for r in ok], dtype=np.float64)
    n_in = np.array([r.input_tokens or 0 for r in ok], dtype=np.float64)
    ttft = (first - start) / NS_PER_MS
    e2e = (end - start) / NS_PER_MS
    with np.errstate(invalid="ignore", divide="ignore"):
        tpot = np.where(n_out > 1, (e2e - ttft) / (n_out - 1), np.nan)
    gaps = [np.diff(r.chunk_ns) for r in ok if len(r.chunk_ns) > 1]
    itl = (np.concatenate(gaps) / NS_PER_MS) if gaps else np.zeros(0)
    return PerRequest(idx, ttft, e2e, tpot, n_out, n_in, itl)


def _duration_s(records: Sequence[RequestRecord]) -> float:
    """Wall time the run was sending: per session (perf clocks differ), first start → last end."""
    by: dict[int, list[RequestRecord]] = {}
    for r in records:
        by.setdefault(r.session, []).append(r)
    total = 0.0
    for rs in by.values():
        total += (max(r.end_ns for r in rs) - min(r.start_ns for r in rs)) / 1e9
    return total


def concurrency_held(records: Sequence[RequestRecord]) -> dict[str, float]:
    """Mean in-flight requests (Little's law: Σ latency / wall time) and the maximum seen."""
    if not records:
        return {"mean": 0.0, "max": 0.0}
    dur = _duration_s(records)
    busy = sum((r.end_ns - r.start_ns) for r in records) / 1e9
    mx = 0
    by: dict[int, list[RequestRecord]] = {}
    for r in records:
        by.setdefault(r.session, []).append(r)
    for rs in by.values():
        t = np.array([r.start_ns for r in rs] + [r.end_ns for r in rs], dtype=np.int64)
        d = np.array([1] * len(rs) + [-1] * len(rs), dtype=np.int64)
        order = np.lexsort((d, t))  # ends before starts at equal times
        mx = max(mx, int(np.cumsum(d[order]).max()))
    return {"mean": busy / dur if dur > 0 else 0.0, "max": float(mx)}


def summarize(records: Sequence[RequestRecord], *, slo_ttft_ms: float | None = None,
              slo_tpot_ms: float | None = None) -> dict[str, Any]:
    """The `bench serve --json` object's metric part (run_id is added by the caller)."""
    pr = per_request(records)
    errors = Counter(r.error_kind or "unknown" for r in records if not r.ok)
    http = Counter(str(r.http_status) for r in records if not r.ok and r.http_status)
    dur = _duration_s(records)
    completed = len(pr.idx)
    sources = {r.token_source for r in records if r.ok and r.token_source}
    source = sources.pop() if len(sources) == 1 else ("mixed" if sources else None)
    out_tok = float(pr.output_tokens.sum())
    in_tok = float(pr.input_tokens.sum())
    n_chunks = sum(len(r.chunk_ns) for r in records if r.ok)
    coalesced = sum(r.coalesced for r in records if r.ok)
    res: dict[str, Any] = {
        "completed": completed,
        "recorded": len(records),
        "errors": dict(sorted(errors.items())),
        "http_statuses": dict(sorted(http.items())),
        "ttft_ms": stats(pr.ttft_ms[np.isfinite(pr.ttft_ms)]),
        "itl_ms": stats(pr.itl_ms),
        "tpot_ms": stats(pr.tpot_ms[np.isfinite(pr.tpot_ms)]),
        "e2e_ms": stats(pr.e2e_ms),
        "output_tokens_per_s": out_tok / dur if dur > 0 else None,
        "total_tokens_per_s": (out_tok + in_tok) / dur if dur > 0 else None,
        "requests_per_s": completed / dur if dur > 0 else None,
        "duration_s": dur,
        "mean_input_tokens": in_tok / completed if completed else None,
        "mean_output_tokens": out_tok / completed if completed else None,
        "token_count_source": source,
        "coalesced_event_fraction": coalesced / n_chunks if n_chunks else 0.0,
        "concurrency_held": concurrency_held(records),
    }
    if slo_ttft_ms is not None or slo_tpot_ms is not None:
        good = np.ones(completed, dtype=bool)
        if slo_ttft_ms is not None:
            good &= np.nan_to_num(pr.ttft_ms, nan=np.inf) <= slo_ttft_ms
        if slo_tpot_ms is not None:
            good &= np.nan_to_num(pr.tpot_ms, nan=0.0) <= slo_tpot_ms
        res["goodput_rps"] = float(good.sum()) / dur if dur > 0 else None
        res["slo"] = {"ttft_ms": slo_ttft_ms, "tpot_ms": slo_tpot_ms,
                      "fraction_met": float(good.mean()) if completed else None}
    return res


def aiperf_records(records: Sequence[RequestRecord]) -> list[dict[str, Any]]:
    """Per-request rows under aiperf's field names (profile_export.jsonl) where one exists."""
    rows = []
    for r in records:
        row: dict[str, Any] = {
            "request_index": r.idx,
            "session": r.session,
            "request_start_ns": r.wall_start_ns,
            "request_end_ns": r.wall_start_ns + (r.end_ns - r.start_ns),
            "request_latency": (r.end_ns - r.start_ns) / NS_PER_MS,
            "time_to_first_token": None,
            "time_to_second_token": None,
            "inter_token_latency": None,
            "inter_chunk_latency": None,
            "input_sequence_length": r.input_tokens,
            "output_sequence_length": r.output_tokens,
            "output_token_throughput_per_user": None,
            "token_count_source": r.token_source,
            "coalesced_events": r.coalesced,
            "error_type": r.error_kind,
            "error_code": r.http_status,
            "error_message": r.error_detail,
        }
        if r.ok and r.first_token_ns is not None:
            ttft = (r.first_token_ns - r.start_ns) / NS_PER_MS
            row["time_to_first_token"] = ttft
            gaps = np.diff(r.chunk_ns) / NS_PER_MS
            row["inter_chunk_latency"] = [round(float(g), 6) for g in gaps]
            if len(gaps):
                row["time_to_second_token"] = float(gaps[0])
            n = r.output_tokens or 0
            if n > 1:
                tpot = (row["request_latency"] - ttft) / (n - 1)
                row["inter_token_latency"] = tpot
                row["output_token_throughput_per_user"] = 1000.0 / tpot if tpot > 0 else None
        rows.append(row)
    return rows


def aiperf_summary(records: Sequence[RequestRecord]) -> dict[str, Any]:
    """Aggregate figures keyed by aiperf's metric tags (profile_export_aiperf.json style)."""
    pr = per_request(records)
    s = summarize(records)
    return {
        "time_to_first_token": {"unit": "ms", **full_stats(pr.ttft_ms[np.isfinite(pr.ttft_ms)])},
        "inter_token_latency": {"unit": "ms", **full_stats(pr.tpot_ms[np.isfinite(pr.tpot_ms)])},
        "inter_chunk_latency": {"unit": "ms", **full_stats(pr.itl_ms)},
        "request_latency": {"unit": "ms", **full_stats(pr.e2e_ms)},
        "output_sequence_length": {"unit": "tokens", **full_stats(pr.output_tokens)},
        "input_sequence_length": {"unit": "tokens", **full_stats(pr.input_tokens)},
        "request_throughput": {"unit": "requests/sec", "avg": s["requests_per_s"]},
        "output_token_throughput": {"unit": "tokens/sec", "avg": s["output_tokens_per_s"]},
        "total_token_throughput": {"unit": "tokens/sec", "avg": s["total_tokens_per_s"]},
        "request_count": {"unit": "requests", "avg": s["completed"]},
        "error_request_count": {"unit": "requests", "avg": s["recorded"] - s["completed"]},
    }
