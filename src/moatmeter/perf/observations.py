"""Observation rows (data/README.md format) → deployments the model can predict, vectorised.

How a published row becomes a deployment:
- accelerator by catalog ``name`` (as in accelerators.csv) or id; stack by (engine, backend)
  (llama.cpp's HIP build is backend ROCm); model by Hugging Face id or catalog id.
- Parallelism: "TP=N" / "TPn" / "PP=N" in the notes wins. Otherwise llama.cpp-class engines split
  layers (PP = count); latency scenarios use TP = count; throughput scenarios (offline, server)
  use the smallest power-of-two TP that leaves ≥ 40 % of memory for the KV cache, replicated
  data-parallel over the rest of the devices (how MLPerf and vendor tables are run).
- ``server`` rows are goodput under the latency limits the notes state ("TTFT p99 <= 2 s and
  TPOT p99 <= 200 ms", MLPerf's llama2-70b server limits, are the default); the model's p95 stands
  in for p99. A server row whose notes state "rate R req/s" (`bench serve --rate`) is predicted
  at that Poisson rate instead.
- Bursts: a row whose notes say "burst" and give an output cap ("max_tokens=150") or the run's
  longest output ("longest_output=780") sent all its N prompts at t = 0 with variable output
  lengths, and its throughput is total output over the time until the *last* request finishes.
  That is not steady concurrency N: the prompts prefill together, then the batch drains while
  the longest request decides the duration. With output lengths taken as exponential with the
  row's mean, the longest of N is mean · H_N (harmonic number), at most the cap / longest.
  An ``offline`` row with a stated concurrency whose notes say its prompts were submitted "at
  once" (benchmark_throughput-style: N fixed-length prompts, elapsed time to the last) is the
  same kind of finite run with every output as long as the longest: one lock-step wave
  (prefill of all N, then O − 1 decode steps at batch N) when N fits the batch cap, ⌊N / cap⌋
  full waves and a partial one otherwise (requests of one wave end together, so slots free
  together) — not an endless steady state at batch N.
- Server defaults the row does not state follow its engine version (``server_max_batch``): a
  burst served by vLLM holds at most 256 running requests under V0 (and on devices under 70 GiB),
  1024 under V1 on larger devices; SGLang's request pool holds 2048. Attention data parallel is
  read from the flags unless the notes say "DP attention inactive" (SGLang without ``--dp``).
- Lock-step waves: a ``fixed_concurrency`` row whose B slots start together and end together —
  a static batch (TensorRT-LLM gptSession, "static batch"), one ``benchmark_latency`` batch, or a
  fixed-length closed loop whose notes say "lock-step" (every output equally long, all slots
  launched at once) — is a sequence of waves: the wave's B prompts prefill one after another
  (first tokens spread evenly over that prefill, so the mean TTFT is (B + 1)/2B of it), then
  O − 1 decode steps at batch B with no prompt in between. The mean-field closed loop (requests
  staggered, prompts mixed into decode steps) would put TTFT at one prompt's prefill instead:
  the Gaudi 3 tutorial run at 64 slots measures 1.8 s mean TTFT with P90 1.77x the mean, an even
  spread over a 3.6 s wave prefill, where one prompt takes ~60 ms.
- Start-up profiling: a row whose notes state ``max_num_batched_tokens=N`` ran an engine that
  sized its KV cache after a profiling pass of N tokens (vLLM V0 without chunked prefill:
  N = max(max_model_len, 2048)); the pass's activations are kept out of the KV pool
  (``memory.profile_activation_bytes``). With ``--max-model-len 91680`` a 405B model on 8x H100
  keeps room for 27 sequences of 4096 tokens instead of 64, which is where the dstack H100
  throughput stops growing with the batch.
- A missing KV dtype means the engine default: 16-bit (fp16 for llama.cpp-class engines).
- TensorRT-LLM rows that do not name its PyTorch backend ran TensorRT engine builds, which replay
  prompt steps from the built engine: no eager-prefill overhead (``step.EAGER_PREFILL``).
Rows that cannot be modelled are skipped with a reason, never guessed; so are rows whose notes
say "excluded from calibration: <reason>" (the source leaves their configuration undetermined),
and the points of a concurrency sweep that are slower per request than a higher-concurrency point
of the same sweep (not steady state: warm-up, kernels compiled on first use).
"""

from __future__ import annotations

import csv
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from moatmeter.catalog.load import Catalog
from moatmeter.catalog.modelarch import arch_of
from moatmeter.errors import InputError
from moatmeter.perf import memory as mem
from moatmeter.perf.calibrate import (
    Calibration,
    arch_class,
    dtype_class,
    level_keys,
    prefill_share,
    product_line,
)
from moatmeter.perf.deploy import (
    DEFAULT_MAX_BATCH,
    OVERLAP_SINCE,
    SERVER_MAX_BATCH,
    VLLM_LARGE_DEVICE_BATCH,
    Resolved,
    resolve,
    vllm_large_device,
)
from moatmeter.perf.serving import closed_loop, goodput, open_loop, queue_wait
from moatmeter.perf.speculative import speculation
from moatmeter.perf.step import decode_step, prefill_time, spec_tokens

REQUIRED = ("id", "source", "accelerator", "count", "engine", "backend", "model", "weight_dtype",
            "scenario", "input_len", "output_len", "metric", "value")
OPTIONAL = ("engine_version", "kv_dtype", "concurrency", "notes")
SCENARIOS = ("offline", "server", "single_stream", "fixed_concurrency", "prefill_only")
METRICS = ("output_tokens_per_s", "total_tokens_per_s", "requests_per_s", "ttft_ms", "tpot_ms",
           "prompt_tokens_per_s")
LAYER_SPLIT_ENGINES = ("llama.cpp", "ollama")
BACKEND_ALIASES = {"rocm": {"rocm", "hip"}, "hip": {"rocm", "hip"}}
DEFAULT_SERVER_SLO = (2.0, 0.2)
# A row whose meaning its source leaves undetermined is kept in the file, with the reason, but not
# modelled: notes "excluded from calibration: <reason>" (up to the next ';' or '|').
EXCLUDED = re.compile(r"excluded from calibration:\s*([^;|]+)", re.IGNORECASE)
# Offline (max-throughput) runs are tuned to hold as many sequences as the KV cache allows;
# this caps that batch where the row states no concurrency. TensorRT-LLM's perf-overview runs
# declare CUDA-graph batch sizes up to 8192; for other engines 1024 is an estimate.
OFFLINE_MAX_BATCH = {"tensorrt-llm": 8192.0}
OFFLINE_MAX_BATCH_DEFAULT = 1024.0
# a llama.cpp row served by llama-server (which samples each slot on the CPU,
# ``deploy.LLAMA_SERVER_SAMPLE_S_PER_VOCAB``), unless the notes name a bench tool that does not;
# `moatmeter bench serve` rows measure an OpenAI-compatible server, for llama.cpp llama-server
LLAMA_SERVER = re.compile(r"llama-server|moatmeter bench serve", re.IGNORECASE)
LLAMA_BENCH = re.compile(r"llama-bench|batched-bench", re.IGNORECASE)
# vLLM V1 is the default engine from 0.8 on CUDA and from 0.10 on ROCm (for a row that names no
# version: from the date); V0 keeps 256 sequences, as does V1 on small devices and Gaudi's plugin.
VLLM_V1_SINCE = {"cuda": ((0, 8), 2025.25), "rocm": ((0, 10), 2025.6)}


def server_max_batch(engine: str, backend: str, version: str, when: float, acc: Any) -> float:
    """The default cap on running requests of the server a row ran without stating one
    (``deploy.default_max_batch`` as of the row's engine version)."""
    e = engine.lower()
    if e in SERVER_MAX_BATCH:
        return SERVER_MAX_BATCH[e]
    since = VLLM_V1_SINCE.get(backend.lower()) if e == "vllm" else None
    if since is None:
        return float(DEFAULT_MAX_BATCH)
    mv = VERSION.search(version)
    ver = (int(mv.group(1)), int(mv.group(2))) if mv else None
    v1 = ver >= since[0] if ver else not when < since[1]
    large = vllm_large_device(acc, a100_excepted=ver is None or ver >= (0, 9))
    return VLLM_LARGE_DEVICE_BATCH if v1 and large else float(DEFAULT_MAX_BATCH)


def read_observations(path: str | Path) -> list[dict[str, str]]:
    """Rows of an observation CSV; a missing column is a one-line error naming file and column."""
    p = Path(path)
    try:
        with p.open(newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            cols = reader.fieldnames or []
            for c in REQUIRED:
                if c not in cols:
                    raise InputError(f"missing column '{c}'", file=str(p))
            rows = [dict(r) for r in reader]
    except FileNotFoundError:
        raise InputError("observations file not found", file=str(p)) from None
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise InputError(f"cannot read observations: {exc}", file=str(p)) from None
    for r in rows:
        for c in OPTIONAL:
            r.setdefault(c, "")
        for k in list(r):
            r[k] = (r[k] or "").strip() if isinstance(r[k], str) else ""
    return rows


def bundled_observations() -> Path:
    from moatmeter.catalog.load import bundled_dir

    return bundled_dir() / "observations.csv"


@dataclass
class Obs:
    id: str
    source: str
    accelerator: str
    stack: str
    model: str
    weight_dtype: str
    kv_dtype: str
    tp: int
    pp: int
    replicas: float
    scenario: str
    concurrency: float  # whole system, NaN if absent
    input_len: float
    output_len: float
    metric: str
    value: float
    vendor: str
    family: str
    engine: str
    ttft_slo: float
    tpot_slo: float
    arch: str = "dense"
    line: str = ""
    rate: float = float("nan")  # server rows measured at a stated Poisson rate (req/s)
    burst_cap: float = float("nan")  # output cap of a burst row (all prompts at t = 0)
    dp_attention: bool = False  # attention data-parallel across the TP group (DEP, dp-attention)
    lockstep: bool = False  # fixed-length closed loop whose slots start and end together
    decode_only: bool = False  # TPOT timed over the decode phase alone (after every prompt)
    profile_tokens: float = float("nan")  # tokens of the engine's start-up profiling pass
    graph_prefill: bool = False  # prompts run from a prebuilt engine too (TensorRT-LLM engines)
    eager_decode: bool = False  # no CUDA graphs at all (--enforce-eager, "CUDA graphs off")
    host_sampling: bool = False  # llama-server samples each slot on the CPU (llama.cpp served)
    poll_steps: float = 1.0  # SGLang --scheduler-recv-interval: new requests taken every N steps
    batch_wait_iters: float = 0.0  # TensorRT-LLM batch_wait_timeout_iters (0 = off)
    batch_wait_tokens: float = 0.0  # batch_wait_max_tokens_ratio x max_num_tokens
    overlap: bool = False  # an overlap (async) scheduler (step.OVERLAP_LAG)
    n_prompts: float = float("nan")  # prompts a closed-loop run sends in all (NaN: many)
    when: float = float("nan")  # measurement date as a decimal year (NaN: unknown)
    spec_k: float = 0.0  # speculative decoding: drafted tokens per step (0 = off)
    spec_accept: float = 0.0  # per-token acceptance probability
    server_batch: float = float(DEFAULT_MAX_BATCH)  # the server's default cap on running requests
    batch_stated: bool = False  # the notes state the server's cap (or that it ran with the default)


# B slots that start and end together: a stated lock-step run, a static batch (TensorRT-LLM
# gptSession), one vLLM benchmark_latency batch
LOCKSTEP = re.compile(r"\block-step\b|\bstatic batch\b|benchmark_latency"
                      r"|end-to-end time of one batch")
# a lock-step run whose TPOT clock starts once every prompt is in: llama-batched-bench's t_tg,
# SGLang bench_one_batch's decode-step latency
DECODE_ONLY = re.compile(r"\bdecode-only timing\b|\bdecode-step latency\b")
# the engine's start-up profiling pass, when the notes state it (vLLM V0 without chunked prefill
# profiles max(max_model_len, 2048) tokens and keeps their activations out of the KV cache)
PROFILE_TOKENS = re.compile(r"\bmax_num_batched_tokens\s*=\s*(\d+)")
# The prompts a closed-loop run sends in all (benchmark_serving --num-prompts): "num-prompts 40",
# or InferenceX's "num_prompts = 10 x concurrency"; argparse takes the prefix "--num-prompt 100"
# for it, and evalscope calls it "--number 1000" (its slots are "--parallel").
NUM_PROMPTS_X = re.compile(r"\bnum[_-]prompts\s*=?\s*(\d+)\s*x\s*concurrency", re.IGNORECASE)
NUM_PROMPTS = re.compile(r"\bnum[_-]prompts?\s*=?\s*(\d+)\b(?!\s*x)|--number[ =](\d+)\b",
                         re.IGNORECASE)
# when the measurement was made: a "measured=YYYY-MM" token in the notes, else the first date in
# the source (documents name their date there)
MEASURED = re.compile(r"\bmeasured\s*=\s*(20\d\d)-(0[1-9]|1[0-2])\b")
SOURCE_DATE = re.compile(r"\b(20[12]\d)-(0[1-9]|1[0-2])\b")


def _batch_wait_notes(text: str) -> dict[str, float]:
    """TensorRT-LLM's delayed batching from the notes: the wait cap in steps and the prompt
    tokens that end it early (ratio x max_num_tokens; with no ratio the cap alone binds)."""
    mi = BATCH_WAIT_ITERS.search(text)
    if not mi:
        return {}
    mr, mt = BATCH_WAIT_RATIO.search(text), MAX_NUM_TOKENS.search(text)
    tokens = float(mr.group(1)) * float(mt.group(1)) if mr and mt else float("inf")
    return {"batch_wait_iters": float(mi.group(1)), "batch_wait_tokens": tokens}


# vLLM's --async-scheduling (or async_scheduling: true), stated in the version or the notes
ASYNC_SCHEDULING = re.compile(r"async[-_]scheduling(?!\s*[:=]?\s*(?:false|off|0)\b)", re.IGNORECASE)
DISABLE_OVERLAP = re.compile(r"disable[-_]overlap", re.IGNORECASE)
VERSION = re.compile(r"(?<![\w.])v?(\d+)\.(\d+)")


def overlap_scheduler(engine: str, version: str, notes: str, graph_prefill: bool,
                      eager_decode: bool, when: float = float("nan")) -> bool:
    """Whether a row's engine ran an overlap (async) scheduler (``step.OVERLAP_LAG``): from the
    version ``deploy.OVERLAP_SINCE`` gives, or for a row that names none from that date (``when``,
    decimal year; unknown: the current default); vLLM also with ``--async-scheduling``. Off where
    the text says it was disabled, and for TensorRT-LLM's engine runtime or without CUDA graphs."""
    text = f"{version} {notes}"
    since = OVERLAP_SINCE.get(engine.lower())
    if since is None or DISABLE_OVERLAP.search(text):
        return False
    if engine.lower() == "tensorrt-llm" and (graph_prefill or eager_decode):
        return False
    if engine.lower() == "vllm" and ASYNC_SCHEDULING.search(text):
        return True
    mv = VERSION.search(version)
    if mv:
        return (int(mv.group(1)), int(mv.group(2))) >= since[0]
    return not when < since[1]


def measured_when(source: str, notes: str) -> float:
    """Decimal year of the measurement (mid-month), NaN when neither notes nor source date it."""
    m = MEASURED.search(notes) or SOURCE_DATE.search(source)
    return int(m.group(1)) + (int(m.group(2)) - 0.5) / 12.0 if m else float("nan")


# attention data parallel across the TP group: TensorRT-LLM "DEP4" / enable_attention_dp, SGLang
# --enable-dp-attention
DP_ATTENTION = re.compile(r"\bDEP\d|enable[-_]dp[-_]attention|enable_attention_dp")
# ... unless the notes say the flag did nothing: SGLang drops --enable-dp-attention when no --dp
# is given (server_args._handle_data_parallelism: dp_size 1 turns it off)
DP_ATTENTION_INACTIVE = re.compile(r"\bDP attention inactive\b", re.IGNORECASE)
# no CUDA graphs at all, decode included: vLLM --enforce-eager, or notes that say "CUDA graphs off"
NO_CUDA_GRAPHS = re.compile(r"--enforce[-_]eager|\benforce_eager\b|\bCUDA graphs off\b",
                            re.IGNORECASE)
# SGLang's --scheduler-recv-interval N: while a batch decodes, new requests are taken every N steps;
# vLLM's multi-step scheduling (--num-scheduler-steps N, v0.6-v0.7) schedules once per N decode
# steps, so a new prompt likewise waits for the window to end
RECV_INTERVAL = re.compile(r"scheduler[-_]recv[-_]interval\s*=?\s*(\d+)"
                           r"|num[-_]scheduler[-_]steps\s*=?\s*(\d+)")
# the server's cap on running requests where the notes state it (vLLM --max-num-seqs, SGLang
# --max-running-requests), or state that the server ran without one (the engine's default)
MAX_SEQS = re.compile(r"--max[-_]num[-_]seqs[ =](\d+)|--max[-_]running[-_]requests[ =](\d+)")
DEFAULT_SEQS = re.compile(r"without --max[-_]num[-_]seqs|without --max[-_]running[-_]requests")
# TensorRT-LLM's delayed batching as the notes state it: "batch_wait_timeout_iters 40",
# "batch_wait_max_tokens_ratio 0.8" and the engine's "max_num_tokens 8192"
BATCH_WAIT_ITERS = re.compile(r"batch_wait_timeout_iters\s*=?\s*(\d+)")
BATCH_WAIT_RATIO = re.compile(r"batch_wait_max_tokens_ratio\s*=?\s*([\d.]+)")
MAX_NUM_TOKENS = re.compile(r"max_num_tokens\s*=?\s*(\d+)")
# speculative decoding as the notes state it: "spec_tokens=3" drafted tokens per step with either
# "accept_len=2.82" (mean tokens per step, as engines print it) or "accept=0.77" (per token)
SPEC_TOKENS = re.compile(r"\bspec_tokens\s*=\s*(\d+)")
SPEC_ACCEPT_LEN = re.compile(r"\baccept_len\s*=\s*([\d.]+)")
SPEC_ACCEPT = re.compile(r"\baccept\s*=\s*([\d.]+)")


def _num(v: str) -> float | None:
    try:
        x = float(v)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


# A sweep over concurrency on one configuration is steady-state only if a request's decode gets
# no faster as more requests share the step: TPOT non-decreasing, per-user output rate
# non-increasing. A lower-concurrency point slower than a higher one (beyond this margin for run
# noise) measured something else - warm-up, JIT compilation of kernels on first use - and all its
# rows are skipped. InferenceX's first SGLang R1 run on 8x H200 (1k/1k, 4 users) has TPOT 22.7 ms
# where the same sweep's 8 users get 12.8 ms.
UNSTEADY_MARGIN = 1.1
SWEEP_SCENARIOS = ("fixed_concurrency", "single_stream")
SWEEP_KEY = ("source", "accelerator", "count", "engine", "backend", "engine_version", "model",
             "weight_dtype", "kv_dtype", "input_len", "output_len")


def _unsteady_reason(a: float, pa: dict[str, tuple[float, str]], b: float,
                     pb: dict[str, tuple[float, str]]) -> str:
    """Why sweep point ``a`` is slower per request than point ``b`` > ``a``; '' if it is not."""
    if "tpot_ms" in pa and "tpot_ms" in pb:
        ta, tb = pa["tpot_ms"][0], pb["tpot_ms"][0]
        if ta > UNSTEADY_MARGIN * tb:
            return (f"TPOT at concurrency {a:g} ({ta:g} ms) is above the same sweep's at {b:g} "
                    f"({tb:g} ms)")
    if "output_tokens_per_s" in pa and "output_tokens_per_s" in pb:
        ua, ub = pa["output_tokens_per_s"][0] / a, pb["output_tokens_per_s"][0] / b
        if ub > UNSTEADY_MARGIN * ua:
            return (f"output tok/s per user at concurrency {a:g} ({ua:.3g}) is below the same "
                    f"sweep's at {b:g} ({ub:.3g})")
    return ""


def unsteady_rows(rows: list[dict[str, str]]) -> dict[str, str]:
    """Ids of sweep points that break concurrency monotonicity → the reason they are skipped."""
    Point = dict[str, tuple[float, str]]
    sweeps: dict[tuple[str, ...], dict[float, Point]] = {}
    for n, r in enumerate(rows, start=1):
        if r.get("scenario", "").lower() not in SWEEP_SCENARIOS:
            continue
        c, v = _num(r.get("concurrency", "")), _num(r.get("value", ""))
        if not c or not v or v <= 0:
            continue
        ms = SPEC_TOKENS.search(r.get("notes", ""))
        key = (*(r.get(k, "").lower() for k in SWEEP_KEY), ms.group(1) if ms else "")
        point = sweeps.setdefault(key, {}).setdefault(c, {})
        point[r.get("metric", "").lower()] = (v, r.get("id") or f"row {n}")  # as map_rows names it
    out: dict[str, str] = {}
    for points in sweeps.values():
        cs = sorted(points)
        for i, a in enumerate(cs):
            later = (_unsteady_reason(a, points[a], b, points[b]) for b in cs[i + 1:])
            why = next((w for w in later if w), "")
            if why:
                for _, rid in points[a].values():
                    out[rid] = f"not steady state: {why} (warm-up or first-use compilation)"
    return out


def _slo(notes: str) -> tuple[float, float]:
    out = list(DEFAULT_SERVER_SLO)
    for i, name in enumerate(("TTFT", "TPOT")):
        m = re.search(name + r"\s*p\d+\s*<=?\s*([\d.]+)\s*(ms|s)\b", notes)
        if m:
            out[i] = float(m.group(1)) * (1e-3 if m.group(2) == "ms" else 1.0)
    return out[0], out[1]


class _Index:
    def __init__(self, cat: Catalog) -> None:
        self.cat = cat
        self.acc = {a.name.lower(): a.id for a in cat.accelerators.values()}
        self.acc.update({a.id.lower(): a.id for a in cat.accelerators.values()})
        self.model = {m.hf_id.lower(): m.id for m in cat.models.values()}
        self.model.update({m.id.lower(): m.id for m in cat.models.values()})
        self.stack: dict[tuple[str, str], str] = {}
        for s in cat.stacks.values():
            b = s.backend.lower()
            for alias in BACKEND_ALIASES.get(b, {b}):
                self.stack.setdefault((s.engine.lower(), alias), s.id)


def _choose_parallel(cat: Catalog, row: dict[str, str], acc_id: str, model_id: str, count: int,
                     engine: str, wdt: str, scenario: str) -> tuple[int, int] | str:
    notes = row.get("notes", "")
    # "TP8", "TP=8", "tp=8" — but not llama-bench's "pp512" (prompt processing)
    mt = re.search(r"\b(?:TP\s*=?\s*|tp=)(\d+)", notes)
    mp = re.search(r"\b(?:PP\s*=?\s*|pp=)(\d+)", notes)
    if mt or mp:
        tp = int(mt.group(1)) if mt else 1
        pp = int(mp.group(1)) if mp else 1
        if tp * pp > count or count % (tp * pp):
            return f"notes give TP={tp} PP={pp}, which does not fit count {count}"
        return tp, pp
    if engine.lower() in LAYER_SPLIT_ENGINES:
        return 1, count
    if scenario in ("single_stream", "fixed_concurrency", "prefill_only"):
        return count, 1
    arch = arch_of(cat.model(model_id))
    acc = cat.accelerator(acc_id)
    usable = float(mem.usable_bytes(np.array([acc.memory_gb]))[0])
    w = mem.model_weight_bytes(arch, wdt)
    tp = 1
    while tp < count and (w / tp > 0.6 * usable or arch.heads % tp or count % tp):
        tp *= 2
    return min(tp, count), 1


def _n_prompts(notes: str, conc: float | None) -> float:
    if (mx := NUM_PROMPTS_X.search(notes)) and conc:
        return float(mx.group(1)) * conc
    if mn := NUM_PROMPTS.search(notes):
        return float(mn.group(1) or mn.group(2))
    return float("nan")


def map_rows(cat: Catalog, rows: list[dict[str, str]]) -> tuple[list[Obs], list[dict[str, str]]]:
    """Rows → (modelable observations, skipped [{id, reason}])."""
    ix = _Index(cat)
    out: list[Obs] = []
    skipped: list[dict[str, str]] = []
    seen: set[str] = set()
    unsteady = unsteady_rows(rows)

    def skip(rid: str, reason: str) -> None:
        skipped.append({"id": rid, "reason": reason})

    for n, r in enumerate(rows, start=1):
        rid = r.get("id") or f"row {n}"
        if rid in seen:
            skip(rid, "duplicate id")
            continue
        seen.add(rid)
        mx = EXCLUDED.search(r.get("notes", ""))
        if mx:
            skip(rid, f"excluded from calibration: {mx.group(1).strip()}")
            continue
        if rid in unsteady:
            skip(rid, unsteady[rid])
            continue
        acc_id = ix.acc.get(r["accelerator"].lower())
        if not acc_id:
            skip(rid, f"unknown accelerator '{r['accelerator']}'")
            continue
        model_id = ix.model.get(r["model"].lower())
        if not model_id:
            skip(rid, f"unknown model '{r['model']}'")
            continue
        backend = r["backend"].lower()
        stack_id = ix.stack.get((r["engine"].lower(), backend))
        if not stack_id:
            skip(rid, f"no stack for engine '{r['engine']}' on backend '{r['backend']}'")
            continue
        scen = r["scenario"].lower()
        if scen not in SCENARIOS:
            skip(rid, f"unsupported scenario '{r['scenario']}'")
            continue
        metric = r["metric"].lower()
        if metric not in METRICS:
            skip(rid, f"unsupported metric '{r['metric']}'")
            continue
        value = _num(r["value"])
        if value is None or value <= 0:
            skip(rid, "value is missing or not a positive number")
            continue
        count = _num(r["count"])
        if count is None or count < 1 or count != int(count):
            skip(rid, "count is not a positive integer")
            continue
        inp, outl = _num(r["input_len"]), _num(r["output_len"])
        if inp is None or inp < 0:
            skip(rid, "input_len is empty or negative: the prompt length is needed")
            continue
        if outl is None or outl < 0 or (outl == 0 and scen != "prefill_only"):
            skip(rid, "output_len is empty or not positive")
            continue
        wdt = mem.norm_dtype(r["weight_dtype"])
        if mem.weight_bytes_per_param(wdt) is None:
            skip(rid, f"unknown weight dtype '{r['weight_dtype']}'")
            continue
        engine = r["engine"]
        kvd = mem.norm_dtype(r.get("kv_dtype") or "")
        if not kvd:
            kvd = "fp16" if engine.lower() in LAYER_SPLIT_ENGINES else "bf16"
        if mem.kv_bytes_per_elem(kvd) is None:
            skip(rid, f"unknown KV dtype '{r.get('kv_dtype')}'")
            continue
        conc = _num(r.get("concurrency", ""))
        if scen == "fixed_concurrency" and not conc:
            skip(rid, "fixed_concurrency row without a concurrency")
            continue
        par = _choose_parallel(cat, r, acc_id, model_id, int(count), engine, wdt, scen)
        if isinstance(par, str):
            skip(rid, par)
            continue
        tp, pp = par
        acc = cat.accelerator(acc_id)
        notes = r.get("notes", "")
        spec_k, spec_a = 0.0, 0.0
        if mk := SPEC_TOKENS.search(notes):
            spec_k = float(mk.group(1))
            ml, ma = SPEC_ACCEPT_LEN.search(notes), SPEC_ACCEPT.search(notes)
            try:
                spec_a = speculation(int(spec_k), float(ma.group(1)) if ma else None,
                                     float(ml.group(1)) if ml else None, None)
            except (InputError, ValueError) as e:
                skip(rid, f"speculative decoding in the notes: {e}")
                continue
        ttft_slo, tpot_slo = _slo(notes)
        version = r.get("engine_version", "")
        eager_dec = bool(NO_CUDA_GRAPHS.search(f"{version} {notes}"))
        graph_pre = engine.lower() == "tensorrt-llm" and not re.search(
            "pytorch", f"{version} {notes}", re.IGNORECASE)
        when = measured_when(r["source"], notes)
        mr = re.search(r"\brate\s*=?\s*([\d.]+)\s*req/s", notes)
        rate = float(mr.group(1)) if mr and scen == "server" else float("nan")
        mb = re.search(r"\b(?:max_tokens|longest_output)\s*=\s*(\d+)", notes)
        burst = (float(mb.group(1)) if mb and re.search(r"\bburst\b", notes)
                 and scen in ("fixed_concurrency", "single_stream") else float("nan"))
        if (scen == "offline" and conc and math.isnan(burst)
                and re.search(r"\bat once\b", notes)):
            burst = float(outl)  # a finite run of fixed-length prompts: a burst, longest = O
        out.append(Obs(id=rid, source=r["source"], accelerator=acc_id, stack=stack_id,
                       model=model_id, weight_dtype=wdt, kv_dtype=kvd, tp=tp, pp=pp,
                       replicas=count / (tp * pp), scenario=scen,
                       concurrency=conc if conc else float("nan"), input_len=inp,
                       output_len=outl, metric=metric, value=value, vendor=acc.vendor,
                       family=acc.family, engine=cat.stack(stack_id).engine,
                       ttft_slo=ttft_slo, tpot_slo=tpot_slo,
                       arch=arch_class(arch_of(cat.model(model_id))), line=product_line(acc),
                       rate=rate, burst_cap=burst,
                       lockstep=(scen == "fixed_concurrency" and bool(conc) and conc > 1
                                 and math.isnan(burst)
                                 and bool(LOCKSTEP.search(notes))),
                       decode_only=bool(DECODE_ONLY.search(notes)),
                       dp_attention=bool(DP_ATTENTION.search(
                           f"{r.get('engine_version', '')} {r.get('notes', '')}"))
                       and not DP_ATTENTION_INACTIVE.search(notes),
                       profile_tokens=float(mp.group(1)) if (
                           mp := PROFILE_TOKENS.search(notes)) else float("nan"),
                       when=when,
                       spec_k=spec_k, spec_accept=spec_a,
                       n_prompts=_n_prompts(notes, conc),
                       poll_steps=float(mr_.group(1) or mr_.group(2)) if (
                           mr_ := RECV_INTERVAL.search(f"{version} {notes}")) else 1.0,
                       **_batch_wait_notes(f"{r.get('engine_version', '')} {notes}"),
                       eager_decode=eager_dec, graph_prefill=graph_pre,
                       host_sampling=(engine.lower() == "llama.cpp"
                                      and bool(LLAMA_SERVER.search(notes))
                                      and not LLAMA_BENCH.search(notes)),
                       overlap=overlap_scheduler(engine, version, notes, graph_pre, eager_dec,
                                                 when),
                       server_batch=float(cap.group(1) or cap.group(2)) if (
                           cap := MAX_SEQS.search(f"{version} {notes}"))
                       else server_max_batch(engine, r["backend"], version, when, acc),
                       batch_stated=bool(cap or DEFAULT_SEQS.search(notes))))
    return out, skipped


@dataclass
class Prepared:
    obs: list[Obs]
    res: Resolved
    inp: np.ndarray
    out: np.ndarray
    rep: np.ndarray
    conc: np.ndarray  # per replica, NaN if absent
    scen: np.ndarray
    metric: np.ndarray
    measured: np.ndarray
    ttft_slo: np.ndarray
    tpot_slo: np.ndarray
    rate: np.ndarray  # per replica, NaN unless a server row states its rate
    burst_cap: np.ndarray  # output cap of burst rows, NaN otherwise
    lockstep: np.ndarray  # bool: closed-loop rows run as synchronised waves
    decode_only: np.ndarray  # bool: TPOT timed after the wave's prompts (no prefill share)
    n_prompts: np.ndarray  # prompts a closed-loop run sends in all, NaN if not stated


def prepare(cat: Catalog, obs: list[Obs], calib: Calibration | None = None
            ) -> tuple[Prepared, list[dict[str, str]]]:
    """Resolve observations once; infeasible ones are returned as skipped with the reason."""
    if not obs:
        raise InputError("no observation rows can be modelled")
    col = {k: np.array([getattr(o, k) for o in obs]) for k in (
        "accelerator", "stack", "model", "tp", "pp", "weight_dtype", "kv_dtype", "input_len",
        "output_len", "replicas", "concurrency")}
    ctx = col["input_len"] + col["output_len"]
    scen = np.array([o.scenario for o in obs])
    off = np.array([OFFLINE_MAX_BATCH.get(o.engine.lower(), OFFLINE_MAX_BATCH_DEFAULT)
                    for o in obs])
    # A row that states its batch (static-batch tables: Gaudi, TensorRT-LLM gptSession) ran an
    # engine configured for that batch, so the default max_num_seqs does not cap it; bursts are
    # served by a default-configured server and keep the default cap.
    burst_row = ~np.isnan(np.array([o.burst_cap for o in obs], dtype=float))
    stated = np.nan_to_num(col["concurrency"].astype(float) / col["replicas"].astype(float))
    srv = np.array([o.server_batch for o in obs])
    told = np.array([o.batch_stated for o in obs], dtype=bool)
    mb = np.where(told, srv,
                  np.where(scen == "offline", off,
                           np.where((scen == "fixed_concurrency") & ~burst_row,
                                    np.maximum(srv, stated), srv)))
    res = resolve(cat, accelerator=col["accelerator"], stack=col["stack"], model=col["model"],
                  tp=col["tp"], pp=col["pp"], weight_dtype=col["weight_dtype"],
                  kv_dtype=col["kv_dtype"], context=ctx, max_batch=mb, calib=calib,
                  dp_attention=np.array([o.dp_attention for o in obs], dtype=bool),
                  profile_tokens=np.array([o.profile_tokens for o in obs], dtype=float),
                  graph_prefill=np.array([o.graph_prefill for o in obs], dtype=bool),
                  eager_decode=np.array([o.eager_decode for o in obs], dtype=bool),
                  poll_steps=np.array([o.poll_steps for o in obs], dtype=float),
                  batch_wait=(np.array([o.batch_wait_iters for o in obs], dtype=float),
                              np.array([o.batch_wait_tokens for o in obs], dtype=float)),
                  overlap=np.array([o.overlap for o in obs], dtype=bool),
                  host_sampling=np.array([o.host_sampling for o in obs], dtype=bool))
    res.s = res.s.with_speculation(np.array([o.spec_k for o in obs], dtype=float),
                                   np.array([o.spec_accept for o in obs], dtype=float))
    keep = np.flatnonzero(res.feasible)
    skipped = [{"id": obs[i].id, "reason": f"infeasible as mapped: {res.reason[i]}"}
               for i in np.flatnonzero(~res.feasible)]
    if len(keep) == 0:
        raise InputError("no observation rows can be modelled")
    if len(keep) < len(obs):
        obs = [obs[i] for i in keep]
        return prepare(cat, obs, calib)[0], skipped
    p = Prepared(obs=obs, res=res, inp=col["input_len"].astype(float),
                 out=col["output_len"].astype(float), rep=col["replicas"].astype(float),
                 conc=col["concurrency"].astype(float) / col["replicas"].astype(float),
                 scen=np.array([o.scenario for o in obs]), metric=np.array([o.metric for o in obs]),
                 measured=np.array([o.value for o in obs]),
                 ttft_slo=np.array([o.ttft_slo for o in obs]),
                 tpot_slo=np.array([o.tpot_slo for o in obs]),
                 rate=np.array([o.rate for o in obs]) / col["replicas"].astype(float),
                 burst_cap=np.array([o.burst_cap for o in obs], dtype=float),
                 lockstep=np.array([o.lockstep for o in obs], dtype=bool),
                 decode_only=np.array([o.decode_only for o in obs], dtype=bool),
                 n_prompts=np.array([o.n_prompts for o in obs], dtype=float) / col["replicas"])
    return p, skipped


def predict_prepared(p: Prepared, eff_c: np.ndarray | None = None, eff_m: np.ndarray | None = None,
                     overhead: np.ndarray | None = None, share_out: np.ndarray | None = None
                     ) -> np.ndarray:
    """Predicted value of each row's metric (whole system), with given or resolved efficiencies;
    ``share_out`` receives each row's share of the request time before its first token
    (``prefill_share``), which widens its band."""
    s = p.res.s
    if eff_c is not None:
        s = s.with_eff(eff_c, eff_m, overhead)  # type: ignore[arg-type]
    n = len(p.obs)
    pred = np.full(n, np.nan)
    bcap = p.res.bcap
    conc = np.where(np.isnan(p.conc), np.nan, np.maximum(p.conc, 1.0))
    rps = np.zeros(n)
    ttft = np.zeros(n)
    tpot = np.zeros(n)
    # closed-loop scenarios
    cl = np.isin(p.scen, ("offline", "single_stream", "fixed_concurrency"))
    if cl.any():
        i = np.flatnonzero(cl)
        b = np.where(p.scen[i] == "single_stream", 1.0,
                     np.where(np.isnan(conc[i]), bcap[i], np.minimum(conc[i], bcap[i])))
        pt = closed_loop(s.take(i), b, p.inp[i], p.out[i])
        rps[i], ttft[i], tpot[i] = pt.rate_rps, pt.ttft_mean, pt.tpot_mean
    bu = cl & ~np.isnan(p.burst_cap) & (np.nan_to_num(conc, nan=1.0) > 1.0)
    if bu.any():
        i = np.flatnonzero(bu)
        rps[i], ttft[i], tpot[i] = burst(s.take(i), conc[i], bcap[i], p.inp[i], p.out[i],
                                         p.burst_cap[i], p.decode_only[i])
    # A closed-loop client starts its B slots at once: the first B prompts arrive together and
    # prefill as one wave (first tokens spread over it), the later ones find the steady mix. With
    # N prompts in all (InferenceX sends 10 B) that first wave is B / N of the mean TTFT.
    g0 = (cl & (p.scen == "fixed_concurrency") & ~p.lockstep & ~bu & (p.n_prompts > 0)
          & (np.nan_to_num(conc, nan=1.0) > 1.0))
    if g0.any():
        i = np.flatnonzero(g0)
        b = np.minimum(conc[i], bcap[i])
        share = np.clip(b / p.n_prompts[i], 0.0, 1.0)
        wave = wave_ttft(prefill_time(s.take(i), p.inp[i], b).total, b)
        ttft[i] = share * wave + (1.0 - share) * ttft[i]
    # more clients than the server runs at once (its cap or its KV pool) wait in its queue, as
    # `predict` charges it
    qd = (cl & (p.scen == "fixed_concurrency") & ~p.lockstep & ~bu
          & (np.nan_to_num(conc, nan=1.0) > bcap))
    if qd.any():
        i = np.flatnonzero(qd)
        ttft[i] = ttft[i] + queue_wait(conc[i], bcap[i], rps[i])
    ls = cl & p.lockstep & ~bu
    if ls.any():
        i = np.flatnonzero(ls)
        rps[i], ttft[i], tpot[i] = lockstep(s.take(i), np.minimum(conc[i], bcap[i]), p.inp[i],
                                            p.out[i], p.decode_only[i])
    sv = (p.scen == "server") & np.isnan(p.rate)
    if sv.any():
        i = np.flatnonzero(sv)
        g = goodput(s.take(i), p.inp[i], p.out[i], bcap[i], p.ttft_slo[i], p.tpot_slo[i])
        rps[i], ttft[i], tpot[i] = g.rate_rps, g.point.ttft_mean, g.point.tpot_mean
    sr = (p.scen == "server") & ~np.isnan(p.rate)
    if sr.any():
        i = np.flatnonzero(sr)
        op = open_loop(s.take(i), p.rate[i], p.inp[i], p.out[i], bcap[i])
        rps[i], ttft[i], tpot[i] = op.rate_rps, op.ttft_mean, op.tpot_mean
    pf = p.scen == "prefill_only"
    if pf.any():
        i = np.flatnonzero(pf)
        c = np.where(np.isnan(conc[i]), 1.0, conc[i])
        t = prefill_time(s.take(i), p.inp[i], c).total
        rps[i], ttft[i], tpot[i] = c / t, t, np.nan
    if share_out is not None:
        share_out[:] = np.where(pf, 1.0, prefill_share(ttft, tpot, p.out))
    rep = p.rep
    outs = rps * p.out * rep
    m = p.metric
    pred = np.select(
        [m == "output_tokens_per_s", m == "total_tokens_per_s", m == "requests_per_s",
         m == "prompt_tokens_per_s", m == "ttft_ms", m == "tpot_ms"],
        [outs, rps * (p.inp + p.out) * rep, rps * rep, rps * p.inp * rep, ttft * 1e3,
         tpot * 1e3], default=np.nan)
    return pred


def harmonic(n: np.ndarray) -> np.ndarray:
    """H_n = 1 + 1/2 + … + 1/n (asymptotic series; within 0.7 % at n = 1, 1e-4 from n = 3)."""
    n = np.maximum(np.asarray(n, float), 1.0)
    return np.log(n) + 0.5772156649 + 0.5 / n - 1.0 / (12.0 * n * n)


def burst(s: Any, n: np.ndarray, bcap: np.ndarray, inp: np.ndarray, out: np.ndarray,
          cap: np.ndarray, decode_only: np.ndarray | None = None
          ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(requests/s, mean TTFT, mean TPOT) of N prompts sent at once, lengths ~ exp(mean), capped.

    At most ``bcap`` sequences run at once. While more than a batch is waiting, continuous
    batching refills freed slots, so those requests go at the steady closed-loop rate; the last
    batch prefills and then drains until its longest request ends (mean · H_batch, at most the
    cap), the mean decode batch falling to batch · mean / longest. With fixed lengths (cap = O)
    nothing frees a slot early: the run is ⌊N / batch⌋ full waves and one partial wave, each a
    prefill of its prompts and O − 1 decode steps. In a wave, a request's TPOT runs from its own
    first token, so it also carries the prompts prefilled after it: (wave − 1) / 2·wave of the
    wave's prefill on average, over its O − 1 later tokens (none where ``decode_only`` rows start
    the clock after the last prompt, as llama-batched-bench does).
    """
    wave = np.minimum(n, bcap)
    longest = np.clip(out * harmonic(wave), out, np.maximum(cap, out))
    pf = prefill_time(s, inp, wave).total
    mean_batch = np.maximum(wave * np.maximum(out - 1.0, 0.0) / np.maximum(longest - 1.0, 1.0),
                            1.0)
    step = decode_step(s, mean_batch, inp + out / 2.0).total
    per = spec_tokens(s)
    # Fixed lengths (cap = O): a batch's requests all end in the same step, so the slots free
    # together and the run goes in waves of ``wave`` prompts, the last one partial - a wave of
    # one prompt takes nearly as long as a full one when decode is bandwidth-bound.
    fixed = cap <= out
    full = np.floor(n / wave)
    rem = n - full * wave
    span = full * (pf + np.maximum(longest - 1.0, 0.0) / per * step)
    if np.any(rem > 0):
        r1 = np.maximum(rem, 1.0)
        t_rem = (prefill_time(s, inp, r1).total
                 + np.maximum(out - 1.0, 0.0) / per * decode_step(s, r1, inp + out / 2.0).total)
        span = span + np.where(fixed & (rem > 0), t_rem, 0.0)
    if not np.all(fixed):
        # variable lengths: continuous batching refills freed slots at the steady rate
        steady = closed_loop(s, wave, inp, out, queued=True).rate_rps
        refill = (n - wave) / steady + pf + np.maximum(longest - 1.0, 0.0) / per * step
        span = np.where(fixed, span, refill)
    wait = np.where(fixed, pf * (wave - 1.0) / (2.0 * wave) / np.maximum(out - 1.0, 1.0), 0.0)
    if decode_only is not None:
        wait = np.where(decode_only, 0.0, wait)
    return n / span, pf, step / per + wait


def lockstep(s: Any, b: np.ndarray, inp: np.ndarray, out: np.ndarray,
             decode_only: np.ndarray | None = None
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(requests/s, mean TTFT, mean TPOT) of B fixed-length slots that start and end together.

    Each wave prefills its B prompts one after another (first tokens spread evenly over the
    wave's prefill, so the mean waits (B + 1) / 2B of it), then decodes O − 1 steps at batch B
    with no prompt in between; TPOT as in ``burst``.
    """
    b = np.maximum(b, 1.0)
    # one wave: every output as long as the longest
    rps, pf, tpot = burst(s, b, b, inp, out, out, decode_only)
    return rps, wave_ttft(pf, b), tpot


def wave_ttft(prefill: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Mean TTFT of B prompts prefilled as one wave: first tokens spread evenly over it."""
    return prefill * (b + 1.0) / (2.0 * b)


def rows_keys(p: Prepared) -> list[dict[str, str]]:
    return [level_keys(o.line, o.family, o.engine, o.stack, o.arch, dtype_class(o.weight_dtype))
            for o in p.obs]


def ape(pred: np.ndarray, measured: np.ndarray) -> np.ndarray:
    return np.abs(pred - measured) / measured


# The accuracy targets held-out predictions are judged against (median and p90 APE).
TARGET_MEDIAN, TARGET_P90 = 0.15, 0.35


def summary(apes: np.ndarray) -> dict[str, Any]:
    a = apes[np.isfinite(apes)]
    if len(a) == 0:
        return {"n": 0, "median_ape": None, "p90_ape": None}
    return {"n": len(a), "median_ape": float(np.median(a)), "p90_ape": float(np.percentile(a, 90))}
