"""Device-benchmark tables in the shared moatmeter SQLite store, and what calibration reads back.

The store file and its connection (WAL, one-line errors) belong to ``bench serve``
(:func:`moatmeter.bench.store.connect`); this module adds a run table and a result table.
"""

from __future__ import annotations

import json
import sqlite3
import statistics
import time
import uuid
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from moatmeter.bench.store import connect
from moatmeter.errors import InputError

if TYPE_CHECKING:
    from moatmeter.bench.device import Report

_SCHEMA = """
CREATE TABLE IF NOT EXISTS device_runs (
    run_id          TEXT PRIMARY KEY,
    created_at      TEXT NOT NULL,      -- UTC ISO-8601, start of the run
    elapsed_s       REAL NOT NULL,
    device          TEXT NOT NULL,      -- torch device string
    backend         TEXT NOT NULL,      -- cuda | rocm | xpu | mps | cpu
    device_name     TEXT NOT NULL,
    accelerator     TEXT NOT NULL,      -- catalog id the peaks came from
    family          TEXT NOT NULL,
    match           TEXT NOT NULL,      -- user | auto
    model           TEXT NOT NULL,      -- catalog model whose weight shapes were used
    quick           INTEGER NOT NULL,
    torch_version   TEXT NOT NULL,
    runtime_version TEXT NOT NULL,
    driver_version  TEXT NOT NULL,
    info            TEXT NOT NULL,      -- JSON: the full DeviceInfo
    summary         TEXT NOT NULL,      -- JSON: median efficiencies
    notes           TEXT NOT NULL       -- JSON list
);
CREATE TABLE IF NOT EXISTS device_results (
    run_id      TEXT NOT NULL REFERENCES device_runs(run_id),
    idx         INTEGER NOT NULL,
    suite       TEXT NOT NULL,          -- gemm|attention|bandwidth|transfer|p2p|triton_check
    impl        TEXT NOT NULL,
    library     TEXT NOT NULL,          -- vendor | triton
    op          TEXT NOT NULL,
    dtype       TEXT NOT NULL,
    phase       TEXT NOT NULL,
    shape       TEXT NOT NULL,
    seconds     REAL,
    tflops      REAL,
    gbs         REAL,
    bound       TEXT NOT NULL,
    achieved    REAL,
    unit        TEXT NOT NULL,
    peak        REAL,
    efficiency  REAL,
    note        TEXT NOT NULL,
    PRIMARY KEY (run_id, idx)
);
"""

_RESULT_COLS = ("suite", "impl", "library", "op", "dtype", "phase", "shape", "seconds", "tflops",
                "gbs", "bound", "achieved", "unit", "peak", "efficiency", "note")


def new_run_id() -> str:
    return "dev-" + time.strftime("%Y%m%d-%H%M%S", time.gmtime()) + "-" + uuid.uuid4().hex[:6]


def open_store(path: str | Path) -> sqlite3.Connection:
    conn = connect(path)
    try:
        conn.executescript(_SCHEMA)
    except sqlite3.DatabaseError as exc:
        conn.close()
        raise InputError(f"cannot create the device tables ({exc})", file=str(path)) from None
    return conn


def check_store(path: str | Path) -> None:
    """Fail early on a store that cannot be written, without creating a file for a run that may
    still fail before it measures anything."""
    p = Path(path)
    if p.exists():
        open_store(p).close()
    elif not p.parent.is_dir():
        raise InputError(f"directory {p.parent} does not exist", file=str(p))


def save_report(path: str | Path, report: Report) -> str:
    """One run row and one row per result, in a single transaction."""
    conn = open_store(path)
    info = report.device
    try:
        with conn:
            conn.execute("BEGIN")
            conn.execute(
                "INSERT INTO device_runs VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (report.run_id, report.started_at, report.elapsed_s, info.device, info.backend,
                 info.name, report.accelerator, report.family, report.match, report.model,
                 int(report.quick), info.torch_version, info.runtime_version,
                 info.driver_version, json.dumps(asdict(info)), json.dumps(report.summary),
                 json.dumps(report.notes)))
            conn.executemany(
                f"INSERT INTO device_results VALUES (?,?,{','.join('?' * len(_RESULT_COLS))})",
                [(report.run_id, i, *(getattr(r, c) for c in _RESULT_COLS))
                 for i, r in enumerate(report.results)])
    finally:
        conn.close()
    return report.run_id


def load_results(path: str | Path, run_id: str | None = None) -> list[dict[str, Any]]:
    """Result rows joined with their run (all runs, or one)."""
    p = Path(path)
    if not p.is_file():
        raise InputError("no such store file", file=str(p))
    conn = open_store(p)
    try:
        sql = ("SELECT r.*, u.accelerator, u.family, u.backend, u.device_name, u.created_at, "
               "u.quick, u.match FROM device_results r JOIN device_runs u USING (run_id)")
        args: tuple[Any, ...] = ()
        if run_id is not None:
            sql += " WHERE run_id = ?"
            args = (run_id,)
        return [dict(row) for row in conn.execute(sql + " ORDER BY run_id, idx", args)]
    finally:
        conn.close()


def device_observations(db_path: str | Path) -> list[dict[str, Any]]:
    """Measured efficiencies per (accelerator, library) for ``calibrate``.

    One dict per catalog accelerator and library (``vendor`` = torch.matmul/SDPA on the vendor's
    libraries, ``triton`` = this project's kernels), over every stored run of it:
    ``accelerator``, ``family``, ``backend``, ``library``, ``eff_compute`` (median efficiency of
    compute-bound GEMMs, i.e. prefill), ``eff_memory`` (best copy/triad bandwidth / datasheet),
    ``eff_memory_gemm`` (median of memory-bound decode GEMMs: weight streaming), ``n_compute``,
    ``n_memory``, ``runs`` (run ids), ``last_run_at``, ``device_names`` (as PyTorch reported
    them) and ``match``: ``auto`` when every run identified the device as that accelerator from
    its name, ``user`` when a run was compared against an entry the user named (e.g. a CPU VM
    held against a full-socket datasheet), which calibration may want to weigh down or skip.
    Missing figures are None.
    """
    rows = load_results(db_path)
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in rows:
        if r["suite"] in ("gemm", "bandwidth") and r["efficiency"] is not None:
            lib = r["library"]
            groups.setdefault((r["accelerator"], lib), []).append(r)
            if r["suite"] == "bandwidth":  # stream bandwidth is the device's, whoever computes
                groups.setdefault((r["accelerator"], "triton"), [])
    out = []
    for (acc, lib), rs in sorted(groups.items()):
        bw_rows = [r for r in rows if r["accelerator"] == acc and r["suite"] == "bandwidth"
                   and r["efficiency"] is not None]
        comp = [r["efficiency"] for r in rs if r["suite"] == "gemm" and r["bound"] == "compute"]
        mem_g = [r["efficiency"] for r in rs if r["suite"] == "gemm" and r["bound"] == "memory"]
        if not comp and not mem_g and lib == "triton":
            continue
        every = rs + bw_rows
        out.append({
            "accelerator": acc,
            "family": every[0]["family"],
            "backend": every[0]["backend"],
            "library": lib,
            "eff_compute": statistics.median(comp) if comp else None,
            "eff_memory": max(r["efficiency"] for r in bw_rows) if bw_rows else None,
            "eff_memory_gemm": statistics.median(mem_g) if mem_g else None,
            "n_compute": len(comp),
            "n_memory": len(bw_rows) + len(mem_g),
            "runs": sorted({r["run_id"] for r in every}),
            "last_run_at": max(r["created_at"] for r in every),
            "device_names": sorted({r["device_name"] for r in every}),
            "match": "auto" if all(r["match"] == "auto" for r in every) else "user",
        })
    return out
