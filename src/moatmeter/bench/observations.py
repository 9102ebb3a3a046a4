"""Measured serve runs → observation rows (data/README.md format) and measured-vs-predicted.

The hardware and stack are what the user declared at `bench serve` time: a load generator sees
only an HTTP endpoint and cannot know what is behind it, so undeclared runs are not attributed.
"""

from __future__ import annotations

import sqlite3
from typing import Any

from moatmeter.bench import store
from moatmeter.bench.metrics import summarize

OBS_COLUMNS = ("id", "source", "accelerator", "count", "engine", "backend", "engine_version",
               "model", "weight_dtype", "kv_dtype", "scenario", "concurrency", "input_len",
               "output_len", "metric", "value", "notes")
METRICS = ("output_tokens_per_s", "total_tokens_per_s", "requests_per_s", "ttft_ms", "tpot_ms")
REQUIRED = ("accelerator", "count", "stack", "catalog_model")


def _catalog(catalog: Any) -> Any:
    if catalog is None:
        from moatmeter.catalog.load import load_catalog

        catalog = load_catalog()
    return catalog


def _engine_version(info: dict[str, Any]) -> str:
    props = info.get("/props")
    if isinstance(props, dict) and props.get("build_info"):
        return str(props["build_info"])
    ver = info.get("/version")
    if isinstance(ver, dict) and ver.get("version"):
        return str(ver["version"])
    ver = info.get("/api/version")
    if isinstance(ver, dict) and ver.get("version"):
        return str(ver["version"])
    return ""


def run_observations(conn: sqlite3.Connection, run_id: str,
                     catalog: Any = None) -> list[dict[str, Any]]:
    """One row per metric for a declared, measured run; [] when hardware was not declared."""
    row = store.get_run(conn, run_id)
    d = row.declared
    if any(not d.get(k) for k in REQUIRED):
        return []
    cat = _catalog(catalog)
    acc = cat.accelerator(d["accelerator"])
    stk = cat.stack(d["stack"])
    mdl = cat.model(d["catalog_model"])
    recs = store.load_requests(conn, run_id)
    s = row.settings
    m = summarize(recs)
    if not m["completed"]:
        return []
    scenario = "server" if s.get("rate") else "fixed_concurrency"
    conc = s.get("concurrency") or round(m["concurrency_held"]["mean"], 2)
    values = {"output_tokens_per_s": m["output_tokens_per_s"],
              "total_tokens_per_s": m["total_tokens_per_s"],
              "requests_per_s": m["requests_per_s"],
              "ttft_ms": m["ttft_ms"]["mean"], "tpot_ms": m["tpot_ms"]["mean"]}
    n_sent = m["completed"] + sum(m["errors"].values())
    note = (f"measured by moatmeter bench serve ({m['completed']} requests, "
            f"{sum(m['errors'].values())} errors); latencies are means; token counts from "
            f"{m['token_count_source']}; declared tp={d.get('tp', 1)} pp={d.get('pp', 1)}"
            f"{'; rate ' + str(s['rate']) + ' req/s' if s.get('rate') else ''}"
            # the closed loop starts its workers together: the model's first-wave TTFT
            f"{'' if s.get('rate') else '; num-prompts ' + str(n_sent)}")
    rows = []
    for metric in METRICS:
        v = values[metric]
        if v is None:
            continue
        rows.append({
            "id": f"bench-{run_id}-{metric}",
            "source": f"moatmeter bench serve run {run_id} against {row.url}, "
                      f"{row.created_at[:10]}",
            "accelerator": acc.name, "count": int(d["count"]), "engine": stk.engine,
            "backend": "ROCm" if stk.backend == "HIP" else stk.backend,
            "engine_version": _engine_version(row.server_info),
            "model": mdl.hf_id, "weight_dtype": d.get("dtype") or "",
            "kv_dtype": d.get("kv_dtype") or "", "scenario": scenario, "concurrency": conc,
            "input_len": round(m["mean_input_tokens"], 1),
            "output_len": round(m["mean_output_tokens"], 1),
            "metric": metric, "value": float(v), "notes": note,
        })
    return rows


def compare(conn: sqlite3.Connection, run_id: str, catalog: Any = None) -> dict[str, Any]:
    """Measured figures of a run beside the perf model's prediction for the declared deployment."""
    from moatmeter.errors import InputError

    row = store.get_run(conn, run_id)
    d = row.declared
    missing = [k for k in REQUIRED if not d.get(k)]
    if missing:
        flags = ", ".join("--" + k.replace("_", "-") for k in missing)
        raise InputError(f"run '{run_id}' has no declared {flags}: re-run `bench serve` with "
                         "the hardware and stack behind the server so it can be predicted")
    try:
        from moatmeter.perf import predict_deployment
    except ImportError:
        raise InputError("the performance model (moatmeter.perf.predict_deployment) is not "
                         "available in this installation") from None
    cat = _catalog(catalog)
    m = summarize(store.load_requests(conn, run_id))
    if not m["completed"]:
        raise InputError(f"run '{run_id}' has no successful requests to compare")
    s = row.settings
    pred = predict_deployment(
        cat, accelerator=d["accelerator"], count=int(d["count"]), tp=int(d.get("tp") or 1),
        pp=int(d.get("pp") or 1), stack=d["stack"], model=d["catalog_model"],
        weight_dtype=d.get("dtype") or "bf16", kv_dtype=d.get("kv_dtype") or d.get("dtype")
        or "bf16", input_tokens=m["mean_input_tokens"], output_tokens=m["mean_output_tokens"],
        concurrency=None if s.get("rate") else s.get("concurrency"), rate=s.get("rate"))
    measured = {"ttft_ms": m["ttft_ms"]["mean"], "tpot_ms": m["tpot_ms"]["mean"],
                "output_tokens_per_s": m["output_tokens_per_s"],
                "requests_per_s": m["requests_per_s"]}
    predicted = _prediction_figures(pred)
    rows = []
    for k, mv in measured.items():
        pv = predicted.get(k)
        ratio = pv / mv if (pv is not None and mv) else None
        rows.append({"metric": k, "measured": mv, "predicted": pv, "predicted_over_measured":
                     ratio, "ape": abs(ratio - 1) if ratio is not None else None})
    extra = {k: getattr(pred, k) for k in ("feasible", "reason", "bottleneck", "load",
                                           "calibration_note") if hasattr(pred, k)}
    return {"run_id": run_id, "declared": d, "rows": rows, "prediction": {**predicted, **extra}}


def _prediction_figures(pred: Any) -> dict[str, float | None]:
    """Read ttft/tpot/throughput from the perf result whatever its units (s or ms) are named."""
    def get(*names: str) -> float | None:
        for n in names:
            v = getattr(pred, n, None) if not isinstance(pred, dict) else pred.get(n)
            if v is not None:
                try:
                    return float(v)
                except (TypeError, ValueError):
                    continue
        return None

    ttft_ms = get("ttft_ms")
    if ttft_ms is None and (v := get("ttft_s")) is not None:
        ttft_ms = v * 1e3
    tpot_ms = get("tpot_ms")
    if tpot_ms is None and (v := get("tpot_s")) is not None:
        tpot_ms = v * 1e3
    return {"ttft_ms": ttft_ms, "tpot_ms": tpot_ms,
            "output_tokens_per_s": get("output_tokens_per_s", "tokens_per_s"),
            "requests_per_s": get("requests_per_s", "rps")}
