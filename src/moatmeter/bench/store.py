"""SQLite results store for `bench serve`: one run row, one row per request committed as it ends.

Why SQLite in WAL mode: a run killed with SIGKILL keeps every committed row, readers (``bench
list``) never block the writer, and ``--resume`` can tell exactly which requests are done from
the ``(run_id, idx)`` primary key, so a request is never lost or recorded twice.

``connect(path)`` is the stable entry point other parts (``bench device``) use for their tables.
"""

from __future__ import annotations

import json
import sqlite3
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from moatmeter.errors import InputError

SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS serve_runs (
    run_id       TEXT PRIMARY KEY,
    created_at   TEXT NOT NULL,              -- UTC ISO-8601
    url          TEXT NOT NULL,
    endpoint     TEXT NOT NULL,              -- completions | chat | ollama
    model        TEXT NOT NULL,
    requested    INTEGER NOT NULL,           -- measured requests asked for (warm-up excluded)
    settings     TEXT NOT NULL,              -- JSON: every option needed to resume the run
    declared     TEXT NOT NULL DEFAULT '{}', -- JSON: hardware/stack the user declared
    server_info  TEXT NOT NULL DEFAULT '{}', -- JSON: what the server exposes about itself
    client_info  TEXT NOT NULL DEFAULT '{}', -- JSON: client machine and software
    status       TEXT NOT NULL,              -- running | interrupted | complete
    updated_at   TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS serve_requests (
    run_id         TEXT NOT NULL REFERENCES serve_runs(run_id),
    idx            INTEGER NOT NULL,         -- 0..requested-1, stable across --resume
    session        INTEGER NOT NULL,         -- 0 for the first launch, +1 per --resume
    ok             INTEGER NOT NULL,
    error_kind     TEXT,                     -- see serve.ERROR_KINDS
    error_detail   TEXT,
    http_status    INTEGER,
    wall_start_ns  INTEGER NOT NULL,         -- time.time_ns() at send (for humans and exports)
    start_ns       INTEGER NOT NULL,         -- perf_counter_ns() at send (one session)
    first_token_ns INTEGER,                  -- perf_counter_ns() of the first content event
    end_ns         INTEGER NOT NULL,
    input_tokens   INTEGER,
    output_tokens  INTEGER,
    token_source   TEXT,                     -- usage | chunks
    n_chunks       INTEGER NOT NULL DEFAULT 0,
    coalesced      INTEGER NOT NULL DEFAULT 0, -- content events that arrived in a read with others
    chunk_ns       BLOB,                     -- int64 offsets (ns) of content events from start_ns
    PRIMARY KEY (run_id, idx)
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


def connect(path: str | Path) -> sqlite3.Connection:
    """Open (creating if needed) a moatmeter store in WAL mode with the serve tables present."""
    p = Path(path)
    if p.exists() and p.is_dir():
        raise InputError("is a directory, not a SQLite file", file=str(p))
    if not p.parent.exists():
        raise InputError(f"directory {p.parent} does not exist", file=str(p))
    try:
        conn = sqlite3.connect(str(p), timeout=30.0, isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("PRAGMA foreign_keys=ON")
        conn.executescript(_SCHEMA)
        conn.execute(
            "INSERT OR IGNORE INTO meta(key, value) VALUES ('serve_schema', ?)",
            (str(SCHEMA_VERSION),),
        )
    except sqlite3.DatabaseError as exc:
        raise InputError(f"not a usable SQLite database ({exc})", file=str(p)) from None
    conn.row_factory = sqlite3.Row
    return conn


def _now_iso() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def new_run_id() -> str:
    return time.strftime("%Y%m%d-%H%M%S", time.gmtime()) + "-" + uuid.uuid4().hex[:6]


@dataclass
class RequestRecord:
    """One finished request (success or failure), as the load generator hands it to the store."""

    idx: int
    ok: bool
    wall_start_ns: int
    start_ns: int
    end_ns: int
    first_token_ns: int | None = None
    error_kind: str | None = None
    error_detail: str | None = None
    http_status: int | None = None
    input_tokens: int | None = None
    output_tokens: int | None = None
    token_source: str | None = None
    chunk_ns: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    coalesced: int = 0
    session: int = 0


@dataclass
class RunRow:
    run_id: str
    created_at: str
    url: str
    endpoint: str
    model: str
    requested: int
    settings: dict[str, Any]
    declared: dict[str, Any]
    server_info: dict[str, Any]
    client_info: dict[str, Any]
    status: str
    updated_at: str


def create_run(conn: sqlite3.Connection, *, run_id: str, url: str, endpoint: str, model: str,
               requested: int, settings: dict[str, Any], declared: dict[str, Any],
               server_info: dict[str, Any], client_info: dict[str, Any]) -> None:
    now = _now_iso()
    try:
        conn.execute(
            "INSERT INTO serve_runs(run_id, created_at, url, endpoint, model, requested, settings,"
            " declared, server_info, client_info, status, updated_at)"
            " VALUES (?,?,?,?,?,?,?,?,?,?, 'running', ?)",
            (run_id, now, url, endpoint, model, requested, json.dumps(settings),
             json.dumps(declared), json.dumps(server_info), json.dumps(client_info), now),
        )
    except sqlite3.IntegrityError:
        raise InputError(f"run '{run_id}' already exists in the store") from None


def set_status(conn: sqlite3.Connection, run_id: str, status: str) -> None:
    conn.execute("UPDATE serve_runs SET status=?, updated_at=? WHERE run_id=?",
                 (status, _now_iso(), run_id))


def update_server_info(conn: sqlite3.Connection, run_id: str, info: dict[str, Any]) -> None:
    conn.execute("UPDATE serve_runs SET server_info=?, updated_at=? WHERE run_id=?",
                 (json.dumps(info), _now_iso(), run_id))


INSERT_REQUEST = (
    "INSERT OR IGNORE INTO serve_requests(run_id, idx, session, ok, error_kind, error_detail,"
    " http_status, wall_start_ns, start_ns, first_token_ns, end_ns, input_tokens,"
    " output_tokens, token_source, n_chunks, coalesced, chunk_ns)"
    " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)"
)


def request_row(run_id: str, r: RequestRecord) -> tuple[Any, ...]:
    """The INSERT_REQUEST parameters of one record."""
    return (run_id, r.idx, r.session, int(r.ok), r.error_kind, r.error_detail, r.http_status,
            r.wall_start_ns, r.start_ns, r.first_token_ns, r.end_ns, r.input_tokens,
            r.output_tokens, r.token_source, len(r.chunk_ns), r.coalesced,
            np.asarray(r.chunk_ns, dtype="<i8").tobytes())


def insert_request(conn: sqlite3.Connection, run_id: str, r: RequestRecord) -> bool:
    """Commit one finished request; False when (run, idx) was already stored (never duplicated)."""
    cur = conn.execute(INSERT_REQUEST, request_row(run_id, r))
    return cur.rowcount == 1


def _run_from_row(row: sqlite3.Row) -> RunRow:
    d = dict(row)
    for k in ("settings", "declared", "server_info", "client_info"):
        d[k] = json.loads(d[k] or "{}")
    return RunRow(**d)


def get_run(conn: sqlite3.Connection, run_id: str) -> RunRow:
    row = conn.execute("SELECT * FROM serve_runs WHERE run_id=?", (run_id,)).fetchone()
    if row is None:
        known = [r[0] for r in conn.execute(
            "SELECT run_id FROM serve_runs ORDER BY created_at DESC LIMIT 3")]
        hint = f" (latest: {', '.join(known)})" if known else " (the store has no serve runs)"
        raise InputError(f"no run '{run_id}' in the store{hint}")
    return _run_from_row(row)


def list_runs(conn: sqlite3.Connection) -> list[dict[str, Any]]:
    rows = conn.execute(
        "SELECT r.*, COUNT(q.idx) AS recorded, COALESCE(SUM(q.ok), 0) AS completed"
        " FROM serve_runs r LEFT JOIN serve_requests q ON q.run_id = r.run_id"
        " GROUP BY r.run_id ORDER BY r.created_at, r.run_id"
    ).fetchall()
    out = []
    for row in rows:
        d = dict(row)
        settings = json.loads(d["settings"])
        out.append({
            "run_id": d["run_id"], "created_at": d["created_at"], "url": d["url"],
            "endpoint": d["endpoint"], "model": d["model"], "status": d["status"],
            "requested": d["requested"], "recorded": d["recorded"],
            "completed": d["completed"], "errors": d["recorded"] - d["completed"],
            "concurrency": settings.get("concurrency"), "rate": settings.get("rate"),
        })
    return out


def done_indices(conn: sqlite3.Connection, run_id: str) -> set[int]:
    return {r[0] for r in conn.execute("SELECT idx FROM serve_requests WHERE run_id=?", (run_id,))}


def next_session(conn: sqlite3.Connection, run_id: str) -> int:
    row = conn.execute("SELECT MAX(session) FROM serve_requests WHERE run_id=?",
                       (run_id,)).fetchone()
    return 0 if row[0] is None else int(row[0]) + 1


def load_requests(conn: sqlite3.Connection, run_id: str) -> list[RequestRecord]:
    rows = conn.execute("SELECT * FROM serve_requests WHERE run_id=? ORDER BY idx", (run_id,))
    out = []
    for row in rows:
        d = dict(row)
        blob = d.pop("chunk_ns")
        d.pop("run_id")
        d.pop("n_chunks")
        d["ok"] = bool(d["ok"])
        d["chunk_ns"] = np.frombuffer(blob or b"", dtype="<i8").astype(np.int64)
        out.append(RequestRecord(**d))
    return out


def open_existing(path: str | Path) -> sqlite3.Connection:
    """Open a store that must already exist (list/show/export must not create empty files)."""
    if not Path(path).is_file():
        raise InputError("no such store (run `moatmeter bench serve --db FILE` first)",
                         file=str(path))
    return connect(path)


def resolve_run_ids(conn: sqlite3.Connection, run_ids: Sequence[str] | None) -> list[str]:
    if run_ids:
        for rid in run_ids:
            get_run(conn, rid)
        return list(run_ids)
    return [r["run_id"] for r in list_runs(conn)]


def observations_from_store(db_path: str | Path, run_ids: Iterable[str] | None = None,
                            catalog: Any = None) -> list[dict[str, Any]]:
    """Measured runs → rows in the observation format of data/README.md (for `calibrate`).

    Only runs whose hardware and stack were declared at `bench serve` time
    (``--accelerator --count --stack``) become observations; a run without a declaration
    cannot be attributed to a device and is left out rather than guessed.
    """
    from moatmeter.bench.observations import run_observations

    conn = open_existing(db_path)
    try:
        rows: list[dict[str, Any]] = []
        for rid in resolve_run_ids(conn, list(run_ids) if run_ids else None):
            rows.extend(run_observations(conn, rid, catalog=catalog))
        return rows
    finally:
        conn.close()
