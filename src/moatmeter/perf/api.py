"""Public entry points: ``evaluate_grid`` (planner, vectorised) and ``predict_deployment`` (one).

The uncertainty band P10–P90 is lognormal around the mean with the (stack, family) pair's
calibrated log-space sigma: throughput × exp(±1.2816·1.1σ·(1 + 0.5·share)), ``share`` the part of
the request time before its first token; latencies the other way round, with their metric's
multiple of σ (``calibrate.metric_sigma``: TPOT 1.0 σ, TTFT 3.2 σ).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np

from moatmeter.catalog.load import Catalog
from moatmeter.catalog.modelarch import arch_of
from moatmeter.catalog.schema import ModelEntry
from moatmeter.errors import InputError
from moatmeter.perf import memory as mem
from moatmeter.perf.calibrate import (
    Calibration,
    default_calibration,
    metric_sigma,
    prefill_share,
)
from moatmeter.perf.deploy import Resolved, resolve
from moatmeter.perf.serving import ServingPoint, closed_loop, goodput, open_loop, queue_wait
from moatmeter.perf.speculative import speculation
from moatmeter.perf.step import OVERLAP_LAG, StepTime
from moatmeter.perf.step import spec_tokens as spec_tokens_per_step
from moatmeter.perf.types import SLO, DeploymentGrid, GridResult, Workload

# A deployment running this many times more concurrent requests per replica than any calibration
# row of its stack gets a note: the fit never saw that stack batch so deep.
EXTRAPOLATED_USERS = 4.0

Z90 = 1.2816
BOTTLENECKS = np.array(["memory", "compute", "interconnect", "overhead"])


def _bottleneck(st: StepTime, kv_limited: np.ndarray) -> np.ndarray:
    parts = np.stack([st.memory, st.compute, st.comm, np.broadcast_to(st.overhead,
                                                                     st.memory.shape)])
    b = BOTTLENECKS[np.argmax(parts, axis=0)]
    return np.where(kv_limited, "kv_capacity", b)


def spec_supported(catalog: Catalog, stack: str) -> bool:
    """Whether a stack ships speculative decoding (catalog feature level "yes")."""
    return catalog.stack(stack).features["speculative_decoding"].level == "yes"


def evaluate_grid(catalog: Catalog, model_entry: ModelEntry | str, grid: DeploymentGrid,
                  workload: Workload, slo: SLO, calib: Calibration | None = None,
                  speculation: tuple[int, float, float | None] | None = None) -> GridResult:
    """Predict every candidate replica of ``grid`` for one model, workload and SLO (vectorised).

    ``speculation`` = (drafted tokens per step, per-token acceptance, draft cost or None): tried
    on the rows whose stack ships speculative decoding (``spec_supported``) and kept where it
    raises goodput - at a large, compute-bound batch verifying k + 1 tokens per sequence costs
    more than it yields, and engines turn it off there (vLLM's disable-by-batch-size).
    """
    plain = _evaluate_grid(catalog, model_entry, grid, workload, slo, calib, None)
    if speculation is None:
        return plain
    ok = {st: spec_supported(catalog, st) for st in set(grid.stack.tolist())}
    idx = np.flatnonzero([ok[st] for st in grid.stack.tolist()])
    if len(idx) == 0:
        return plain
    # only the rows whose stack ships it are evaluated again, with speculation
    sub = replace(grid, **{k: np.asarray(v)[idx] for k, v in vars(grid).items()
                           if v is not None})
    spec = _evaluate_grid(catalog, model_entry, sub, workload, slo, calib, speculation)
    win = spec.goodput_rps > plain.goodput_rps[idx]
    rows, n = idx[win], len(grid)
    for k, v in vars(plain).items():
        if isinstance(v, np.ndarray) and len(v) == n:
            w = getattr(spec, k)
            merged = v.astype(np.result_type(v.dtype, w.dtype))  # a str column may widen
            merged[rows] = w[win]
            setattr(plain, k, merged)
    plain.speculating[rows] = True
    return plain


def _evaluate_grid(catalog: Catalog, model_entry: ModelEntry | str, grid: DeploymentGrid,
                   workload: Workload, slo: SLO, calib: Calibration | None,
                   speculation: tuple[int, float, float | None] | None) -> GridResult:
    if isinstance(model_entry, str):
        model_entry = catalog.model(model_entry)
    _check_workload(workload.input_tokens, workload.output_tokens)
    inp = workload.input_tokens * (1.0 - min(max(workload.prefix_cache_hit, 0.0), 1.0))
    out = float(workload.output_tokens)
    ctx = workload.input_tokens + workload.output_tokens
    if len(grid) == 0:
        e = np.zeros(0)
        return GridResult(feasible=np.zeros(0, bool), reason=[], bottleneck=np.zeros(0, str),
                          max_sequences=e, goodput_rps=e, output_tokens_per_s=e, ttft_p95_s=e,
                          tpot_p95_s=e, single_ttft_s=e, single_tpot_s=e,
                          max_output_tokens_per_s=e, eff_sigma=e, eff_compute=e, eff_memory=e,
                          calibration_note=[], speculating=np.zeros(0, bool))
    r = resolve(catalog, accelerator=grid.accelerator, stack=grid.stack, model=model_entry,
                tp=grid.tp, pp=grid.pp, weight_dtype=grid.weight_dtype, kv_dtype=grid.kv_dtype,
                context=ctx, max_batch=grid.max_batch, calib=calib)
    n = len(grid)
    if speculation is not None:
        r.s = r.s.with_speculation(*speculation)
    f = r.feasible
    idx = np.flatnonzero(f)  # only feasible rows are worth the serving model
    s = r.s.take(idx)
    m = len(idx)
    inp_a = np.full(m, float(inp))
    out_a = np.full(m, out)
    bcap = r.bcap[idx]
    single = closed_loop(s, np.ones(m), inp_a, out_a)
    offline = closed_loop(s, bcap, inp_a, out_a)
    g = goodput(s, inp_a, out_a, bcap, slo.ttft_p95_s, slo.tpot_p95_s)
    kv_limited = (r.max_sequences[idx] < r.max_batch[idx]) & (g.point.concurrency >= 0.5 * bcap)
    bott = _bottleneck(g.point.step, kv_limited)

    def put(a: np.ndarray, fill: float | str = 0.0) -> np.ndarray:
        outa = np.full(n, fill, dtype=a.dtype if not isinstance(fill, str) else object)
        outa[idx] = a
        return outa

    return GridResult(
        feasible=f, reason=r.reason, bottleneck=put(bott, "").astype(str),
        max_sequences=np.where(f, r.max_sequences, 0.0), goodput_rps=put(g.rate_rps),
        output_tokens_per_s=put(g.rate_rps * out), ttft_p95_s=put(g.point.ttft_p95, np.inf),
        tpot_p95_s=put(g.point.tpot_p95, np.inf), single_ttft_s=put(single.ttft_mean, np.inf),
        single_tpot_s=put(single.tpot_mean, np.inf),
        max_output_tokens_per_s=put(offline.output_tps),
        # throughput's band widens with the prompt's share of the request time at goodput
        eff_sigma=np.asarray(metric_sigma(r.eff_sigma, "output", put(prefill_share(
            g.point.ttft_mean, g.point.tpot_mean, out_a)))),
        eff_compute=r.s.eff_c, eff_memory=r.s.eff_m, calibration_note=r.calib_note,
        speculating=np.full(n, speculation is not None))


def _check_workload(inp: float, out: float) -> None:
    if not (isinstance(inp, int | float) and math.isfinite(inp) and inp >= 0):
        raise InputError(f"input tokens must be ≥ 0, got {inp}", field="input_tokens")
    if not (isinstance(out, int | float) and math.isfinite(out) and out >= 1):
        raise InputError(f"output tokens must be ≥ 1, got {out}", field="output_tokens")


@dataclass
class MemoryBreakdown:
    device_gb: float  # per device, GiB
    usable_gb: float  # after the engine's reserve
    weights_gb: float  # per device
    kv_pool_gb: float  # per device
    kv_bytes_per_token: float  # over the replica (with TP replication)
    max_sequences: int  # at input + output context


@dataclass
class Band:
    p10: float
    p50: float
    p90: float


@dataclass
class Prediction:
    """What one replica delivers under a load (concurrency, rate or offline)."""

    accelerator: str
    stack: str
    model: str
    devices: int
    tp: int
    pp: int
    weight_dtype: str
    kv_dtype: str
    compute_dtype: str
    load: str  # "concurrency 8" | "rate 2.0 req/s" | "offline (max batch 256)"
    feasible: bool
    reason: str
    memory: MemoryBreakdown
    concurrency: float  # mean sequences in the system
    ttft_s: float
    ttft_p95_s: float
    tpot_s: float
    tpot_p95_s: float
    output_tokens_per_s: float
    total_tokens_per_s: float
    requests_per_s: float
    saturation_rps: float  # highest sustainable Poisson rate
    bottleneck: str
    eff_compute: float
    eff_memory: float
    overhead_ms: float
    sigma: float  # log-space, the pair's; each band's is calibrate.metric_sigma of it
    # share of the request time before the first token, TTFT / (TTFT + (O - 1) TPOT): it widens
    # the throughput band (prefill-heavy work is predicted less well)
    prefill_share: float
    output_tokens_per_s_band: Band
    tpot_band: Band
    ttft_band: Band
    calibration_note: str
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _band(x: float, sigma: float) -> Band:
    if not math.isfinite(x):
        return Band(x, x, x)
    return Band(x * math.exp(-Z90 * sigma), x, x * math.exp(Z90 * sigma))


def predict_deployment(catalog: Catalog, *, accelerator: str, count: int, tp: int, pp: int = 1,
                       stack: str, model: str, weight_dtype: str = "bf16",
                       kv_dtype: str | None = None, input_tokens: float, output_tokens: float,
                       concurrency: float | None = None, rate: float | None = None,
                       max_batch: int | None = None, calib: Calibration | None = None,
                       dp_attention: bool = False,
                       profile_tokens: int | None = None, spec_tokens: int = 0,
                       spec_accept: float | None = None, spec_accept_len: float | None = None,
                       spec_draft_cost: float | None = None,
                       eager: bool = False, recv_interval: int = 1,
                       batch_wait_iters: int = 0,
                       batch_wait_tokens: float | None = None,
                       overlap: bool | None = None) -> Prediction:
    """Predict one deployment (``count`` devices = ``count / (tp·pp)`` data-parallel replicas).

    ``dp_attention``: attention data-parallel inside the TP group (SGLang --enable-dp-attention,
    TensorRT-LLM enable_attention_dp): one KV copy, attention weights on every rank.

    ``profile_tokens``: tokens of the engine's start-up profiling pass, whose activations it keeps
    out of the KV cache (vLLM V0 without chunked prefill: max(max_model_len, 2048)); None for
    engines that profile a small chunk (the default of current engines).

    ``spec_tokens``: speculative decoding with that many drafted tokens per step (0 = off), each
    accepted with probability ``spec_accept``, or give the engine's measured mean acceptance
    length ``spec_accept_len`` (tokens per step, 1 … spec_tokens + 1) instead;
    ``spec_draft_cost``: drafting one token as a fraction of a decode step (default 1/layers, an
    MTP head; a separate draft model: its parameters over the target's).

    ``eager``: the engine runs without CUDA graphs (vLLM ``--enforce-eager``, often needed on
    consumer ROCm cards): decode steps pay the eager-execution overhead too.

    ``recv_interval``: the scheduler takes in new requests every this many decode steps while a
    batch runs (SGLang ``--scheduler-recv-interval``): a new request waits (N − 1) / 2 steps more.

    ``batch_wait_iters`` / ``batch_wait_tokens``: TensorRT-LLM's delayed batching
    (``batch_wait_timeout_iters``; ``batch_wait_max_tokens_ratio`` x ``max_num_tokens``): a new
    prompt waits up to that many steps, less once that many prompt tokens have gathered.

    ``overlap``: the engine schedules with overlap (SGLang's overlap scheduler, TensorRT-LLM's
    PyTorch backend, vLLM's async scheduling), so under load a new prompt's first token comes
    ``step.OVERLAP_LAG`` decode steps later; None = the engine's current default (on for those
    three).

    Throughputs are for all ``count`` devices; the load (concurrency or Poisson rate) is split
    evenly across replicas; with neither it is offline maximum throughput.
    """
    for name, v in (("count", count), ("tp", tp), ("pp", pp)):
        if not isinstance(v, int) or v < 1:
            raise InputError(f"{name} must be a positive integer, got {v}", field=name)
    if count % (tp * pp):
        raise InputError(f"count {count} is not a multiple of tp·pp = {tp * pp}", field="count")
    _check_workload(input_tokens, output_tokens)
    if concurrency is not None and rate is not None:
        raise InputError("give either a concurrency or a rate, not both")
    if concurrency is not None and not (concurrency >= 1):
        raise InputError(f"concurrency must be ≥ 1, got {concurrency}", field="concurrency")
    if rate is not None and not (rate > 0):
        raise InputError(f"rate must be > 0 req/s, got {rate}", field="rate")
    if max_batch is not None and (not isinstance(max_batch, int) or max_batch < 1):
        raise InputError(f"max batch must be a positive integer, got {max_batch}",
                         field="max-batch")
    if not isinstance(recv_interval, int) or recv_interval < 1:
        raise InputError(f"recv interval must be a positive integer, got {recv_interval}",
                         field="recv-interval")
    if not isinstance(batch_wait_iters, int) or batch_wait_iters < 0:
        raise InputError(f"batch wait must be ≥ 0 steps, got {batch_wait_iters}",
                         field="batch-wait-iters")
    if batch_wait_tokens is not None and not (batch_wait_tokens > 0):
        raise InputError(f"batch wait tokens must be > 0, got {batch_wait_tokens}",
                         field="batch-wait-tokens")
    if profile_tokens is not None and not (profile_tokens >= 1):
        raise InputError(f"profile tokens must be ≥ 1, got {profile_tokens}",
                         field="profile-tokens")
    accept = speculation(spec_tokens, spec_accept, spec_accept_len, spec_draft_cost)
    wd = mem.norm_dtype(weight_dtype)
    if mem.weight_bytes_per_param(wd) is None:
        raise InputError(f"unknown weight dtype '{weight_dtype}' (known: "
                         f"{', '.join(sorted(mem.WEIGHT_BYTES))})", field="dtype")
    st = catalog.stack(stack)
    default_kv = "fp16" if st.engine.lower() in ("llama.cpp", "ollama") else "bf16"
    kd = mem.norm_dtype(kv_dtype) if kv_dtype else default_kv
    pre_notes = []
    if mem.kv_bytes_per_elem(kd) is None:
        if mem.weight_bytes_per_param(kd) is None:
            known = ", ".join(sorted(mem.KV_BYTES))
            raise InputError(f"unknown KV dtype '{kv_dtype}' (known: {known})", field="kv-dtype")
        pre_notes.append(f"{kd} is a weight format, not a KV-cache type: KV kept at {default_kv}")
        kd = default_kv
    entry = catalog.model(model)
    catalog.accelerator(accelerator)
    arch = arch_of(entry)
    if arch.heads % tp or (arch.kv_heads % tp and tp % arch.kv_heads):
        raise InputError(f"TP {tp} does not divide the {arch.heads} attention heads "
                         f"({arch.kv_heads} KV heads) of {model}", field="tp")
    replicas = count // (tp * pp)
    ctx = input_tokens + output_tokens
    r = resolve(catalog, accelerator=np.array([accelerator]), stack=np.array([stack]),
                model=entry, tp=np.array([tp]), pp=np.array([pp]), weight_dtype=np.array([wd]),
                kv_dtype=np.array([kd]), context=np.array([ctx]),
                max_batch=None if max_batch is None else np.array([max_batch]), calib=calib,
                dp_attention=np.array([bool(dp_attention)]),
                profile_tokens=None if profile_tokens is None else np.array(
                    [float(profile_tokens)]), eager_decode=np.array([bool(eager)]),
                poll_steps=np.array([float(recv_interval)]),
                batch_wait=(np.array([float(batch_wait_iters)]), np.array(
                    [np.inf if batch_wait_tokens is None else float(batch_wait_tokens)])),
                overlap=None if overlap is None else np.array([bool(overlap)]))
    if spec_tokens:
        r.s = r.s.with_speculation(spec_tokens, accept, spec_draft_cost)
        per = float(np.ravel(spec_tokens_per_step(r.s))[0])
        draft = float(np.ravel(r.s.spec_draft)[0])
        pre_notes.append(f"speculative decoding: {spec_tokens} drafted tokens per step, "
                         f"acceptance {accept:.2f}, {per:.2f} tokens per step, drafting "
                         f"{draft:.3g} of a decode step per token (the draft's weights are "
                         "not counted in memory)")
    p = _prediction(r, accelerator, stack, model, count, tp, pp, wd, kd, input_tokens,
                    output_tokens, concurrency, rate, replicas)
    if profile_tokens is not None:
        held = float(r.extra["profile_held"][0])
        pre_notes.append(f"start-up profiling pass of {profile_tokens:,} tokens keeps "
                         f"{held / mem.GIB:.1f} GiB per device out of the KV cache")
    if recv_interval > 1:
        pre_notes.append(f"scheduler takes new requests every {recv_interval} decode steps: "
                         f"{(recv_interval - 1) / 2:g} steps more to the first token under load")
    if batch_wait_iters:
        until = ("" if batch_wait_tokens is None
                 else f" or until {batch_wait_tokens:,.0f} prompt tokens have gathered")
        pre_notes.append(f"delayed batching: a new prompt waits up to {batch_wait_iters} "
                         f"steps{until}")
    if r.s.overlap is not None and bool(r.s.overlap[0]):
        pre_notes.append(f"overlap scheduler: under load a new prompt's first token comes "
                         f"{OVERLAP_LAG:g} decode steps later (it misses the step planned "
                         "ahead, and tokens come out a step late)")
    if r.s.per_seq is not None and r.s.per_seq[0] > 0:
        pre_notes.append(f"no overlap scheduler: the engine's per-sequence CPU work "
                         f"({r.s.per_seq[0] * 1e6:.0f} us per running sequence) sits between "
                         "GPU steps")
    if eager:
        pre_notes.append("no CUDA graphs: every step, decode included, pays the eager-execution "
                         "overhead")
    if dp_attention and tp > 1:
        pre_notes.append("attention data-parallel across the TP group: one KV copy, attention "
                         "weights on every rank")
    seen = (calib or default_calibration()).meta.get("max_users_seen", {}).get(stack)
    users = p.concurrency / replicas
    if seen and p.feasible and users > EXTRAPOLATED_USERS * seen:
        pre_notes.append(f"no {stack} measurement in the calibration ran more than {seen:g} "
                         f"concurrent request(s) per replica (here {users:.0f}): its batched "
                         "decode is extrapolated from lighter loads")
    p.notes = pre_notes + p.notes
    return p


def _prediction(r: Resolved, acc: str, stack: str, model: str, count: int, tp: int, pp: int,
                wd: str, kd: str, inp: float, out: float, concurrency: float | None,
                rate: float | None, replicas: int) -> Prediction:
    s = r.s
    i1, o1 = np.array([float(inp)]), np.array([float(out)])
    sat = closed_loop(s, r.bcap, i1, o1)
    notes = [n for n in (r.dtype_note[0],) if n]
    if concurrency is not None:
        c = concurrency / replicas
        if c > r.bcap[0]:
            notes.append(f"concurrency per replica {c:g} exceeds the batch cap {r.bcap[0]:.0f}: "
                         "the rest queue")
        pt: ServingPoint = closed_loop(s, np.minimum([c], r.bcap), i1, o1)
        wait = queue_wait(np.array([c]), r.bcap, pt.rate_rps)
        pt.ttft_mean = pt.ttft_mean + wait
        pt.ttft_p95 = pt.ttft_p95 + wait
        load = f"concurrency {concurrency:g}"
    elif rate is not None:
        pt = open_loop(s, np.array([rate / replicas]), i1, o1, r.bcap)
        if rate / replicas >= sat.rate_rps[0]:
            notes.append(f"rate exceeds saturation ({sat.rate_rps[0] * replicas:.3g} req/s): "
                         "queues grow without bound")
        load = f"rate {rate:g} req/s"
    else:
        pt = sat
        load = f"offline (batch {r.bcap[0]:.0f} per replica)"
    kv_limited = (r.max_sequences < r.max_batch) & (pt.concurrency >= 0.5 * r.bcap)
    bott = str(_bottleneck(pt.step, kv_limited)[0])
    sigma = float(r.eff_sigma[0])
    otps = float(pt.output_tps[0]) * replicas
    rps = float(pt.rate_rps[0]) * replicas
    m = MemoryBreakdown(
        device_gb=float(r.device_bytes[0] / mem.GIB),
        usable_gb=float(r.usable_per_device[0] / mem.GIB),
        weights_gb=float(r.weights_per_device[0] / mem.GIB),
        kv_pool_gb=float(max(r.kv_pool[0], 0) / r.devices[0] / mem.GIB),
        kv_bytes_per_token=float(s.kv_tok[0]), max_sequences=int(r.max_sequences[0]))
    if r.feasible[0]:
        ttft, ttft95 = float(pt.ttft_mean[0]), float(pt.ttft_p95[0])
        tpot, tpot95 = float(pt.tpot_mean[0]), float(pt.tpot_p95[0])
    else:
        ttft = ttft95 = tpot = tpot95 = math.inf
        otps = rps = 0.0
        bott = ""
    share = float(prefill_share(ttft, tpot, o1[0]))
    return Prediction(
        accelerator=acc, stack=stack, model=model, devices=count, tp=tp, pp=pp, weight_dtype=wd,
        kv_dtype=kd, compute_dtype=str(r.compute_dtype[0]), load=load,
        feasible=bool(r.feasible[0]), reason=r.reason[0], memory=m,
        concurrency=float(pt.concurrency[0]) * replicas, ttft_s=ttft, ttft_p95_s=ttft95,
        tpot_s=tpot, tpot_p95_s=tpot95, output_tokens_per_s=otps,
        total_tokens_per_s=rps * (inp + out), requests_per_s=rps,
        saturation_rps=float(sat.rate_rps[0]) * replicas if r.feasible[0] else 0.0,
        bottleneck=bott, eff_compute=float(s.eff_c[0]), eff_memory=float(s.eff_m[0]),
        overhead_ms=float(s.k["ov"][0] * 1e3), sigma=sigma, prefill_share=share,
        output_tokens_per_s_band=_band(otps, float(metric_sigma(sigma, "output", share))),
        tpot_band=_band(tpot, float(metric_sigma(sigma, "tpot"))),
        ttft_band=_band(ttft, float(metric_sigma(sigma, "ttft"))),
        calibration_note=r.calib_note[0], notes=notes)


def single_stream_bound(catalog: Catalog, accelerator: str, model: str, weight_dtype: str,
                        tp: int = 1) -> float:
    """Upper bound on single-stream decode tokens/s: bandwidth / bytes read per token."""
    a = catalog.accelerator(accelerator)
    arch = arch_of(catalog.model(model))
    w = mem.model_weight_bytes(arch, weight_dtype)
    if arch.is_moe:
        w = w - arch.moe_layers * (arch.n_experts - arch.experts_per_token) * mem.expert_bytes(
            arch, weight_dtype)
    return a.memory_bw_gbs * 1e9 * tp / w


__all__ = ["Prediction", "evaluate_grid", "predict_deployment", "single_stream_bound"]
