"""Resolve catalog ids into per-replica arrays for the step model, with feasibility and reasons.

Everything is computed once per *unique* accelerator / stack / model / dtype combination and then
gathered with index arrays, so resolving 100 000 candidates costs a handful of NumPy passes.

Compute precision: fp8 / int8 / fp6 / fp4 weights use the device's peak of that type (W8A8-style
kernels); where the device has no such peak the weights are dequantised on the fly and the math
runs at 16 bits (weight-only quantisation, as vLLM's Marlin kernels do on Ampere). int4 and the
llama.cpp block formats are always weight-only. A device with neither peak is infeasible.

Scale-up links: vendors quote NVLink / Infinity Fabric / Gaudi RoCE bandwidth as the bidirectional
total per device, so one direction is half of ``scaleup_gbs``. Per-collective latency is an
estimate: ~8 µs for a switched/mesh scale-up fabric (NCCL all-reduce of small messages over NVLink
measures in the 5–15 µs range) and ~25 µs where the only path is PCIe through the host
(range 15–50 µs).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from moatmeter.catalog.load import Catalog
from moatmeter.catalog.modelarch import ModelArch, arch_of
from moatmeter.catalog.schema import Accelerator, ModelEntry, Stack
from moatmeter.perf import memory as mem
from moatmeter.perf.calibrate import (
    Calibration,
    arch_class,
    default_calibration,
    dtype_class,
    product_line,
)
from moatmeter.perf.step import EAGER_PREFILL, PER_SEQ_CPU_S, StepInputs

FAST_LINK_GBS = 200.0  # above this the scale-up fabric is a dedicated link, not PCIe
LAT_FAST = 8e-6
LAT_PCIE = 25e-6
# Fraction of the nominal one-direction PCIe bandwidth a tensor-parallel all-reduce achieves
# (NCCL through PCIe switches or the CPU root complex, no NVLink; estimate, range 0.3-0.75).
# A global hyper-parameter chosen by leave-one-source-out CV (benchmarks/calibration_cv.py) among
# 1.0, 0.75, 0.6, 0.45 and 0.3: 19.3/61.7, 19.3/60.7, 19.2/59.3, 19.0/55.7 and 19.0/56.3 %
# median/p90. Dedicated links (NVLink, Infinity Fabric, Gaudi RoCE) keep their nominal figure:
# 0.8 on them did not help (19.1/56.0 %).
LINK_EFF_PCIE = 0.45
PCIE_FALLBACK_GBS = 64.0  # PCIe Gen4 x16 bidirectional where a device states no scale-up figure
# Activation reads and writes per layer and token between fused kernels, counted in tensors of
# the hidden size (norm in and out, residual, attention output, MLP in and out), of the MLP's
# active intermediate size (gate/up out, activation, down in) and of the query width (estimates;
# an unfused pipeline moves about twice as much: 16 / 6 / 4). Chosen by leave-one-source-out CV
# among 4/1.5/1, 8/3/2 and 16/6/4 (median / p90 APE 15.9 / 47.9, 15.7 / 47.4, 15.6 / 49.1 %;
# none: 16.0 / 47.7 %).
ACT_RW_HIDDEN = 8.0
ACT_RW_INTER = 3.0
ACT_RW_ATTN = 2.0
ACT_BYTES_PER_ELEM = 2.0  # 16-bit activations
DEFAULT_MAX_BATCH = 256  # vLLM's default max_num_seqs (V0; V1 on devices under 70 GiB)
# A default-configured server's cap on running requests, where it differs from DEFAULT_MAX_BATCH:
# SGLang sizes its request pool as max_total_tokens / context_len · 512 clamped to [2048, 4096]
# (model_runner.py), so the KV pool, not a request count, binds first; vLLM V1 raises
# max_num_seqs to 1024 on devices with at least 70 GiB ("For GPUs like H100 and MI300x, use larger
# default values", vllm/engine/arg_utils.py, the V1 batch defaults), A100s excepted since 0.9
# (vLLM PR #17885: larger budgets cost A100 throughput).
SERVER_MAX_BATCH = {"sglang": 2048.0}
VLLM_LARGE_DEVICE_GIB = 70.0
VLLM_LARGE_DEVICE_BATCH = 1024.0
# Memory an engine keeps for itself (fraction of device memory, fixed GiB). vLLM and its kin
# pre-allocate to gpu_memory_utilization = 0.9 by default (vLLM engine arguments docs); llama.cpp
# and Ollama allocate weights + KV + compute buffers of a few hundred MiB (estimates).
# TensorRT-LLM's benchmarks give the KV cache 0.90-0.95 of the memory left after the weights
# (kv_cache_free_gpu_mem_fraction, TensorRT-LLM perf-overview.md, 2025).
# Engines that run prompt steps eagerly (CUDA graphs for decode only) on these backends; see
# ``step.EAGER_PREFILL``. llama.cpp, Ollama and OpenVINO replay compiled graphs; on Gaudi both
# engines replay HPU graphs per prompt bucket; CPU and XPU backends run every step alike.
EAGER_ENGINES = ("vllm", "sglang", "tgi", "tensorrt-llm")
EAGER_BACKENDS = ("cuda", "rocm")
# Engines that schedule with overlap by default (``step.OVERLAP_LAG``), from which version and,
# for a source that names none, from which date (decimal year): SGLang's overlap scheduler (0.4,
# 2024-12), TensorRT-LLM's PyTorch backend (0.19, 2025-05; its TensorRT engine runtime does not
# overlap), vLLM's async scheduling (about 0.13, vLLM PR #27614, 2025-12). Their current releases
# all do, so a deployment the planner evaluates overlaps on these engines.
OVERLAP_SINCE: dict[str, tuple[tuple[int, int], float]] = {
    "sglang": ((0, 4), 2025.0), "tensorrt-llm": ((0, 19), 2025.4), "vllm": ((0, 13), 2026.0)}
OVERLAP_ENGINES = tuple(OVERLAP_SINCE)
# engines whose per-sequence CPU work sits between GPU steps unless an overlap scheduler hides it
# (``step.PER_SEQ_CPU_S``): vLLM's Python scheduler and output processing. TGI's Gaudi runs at
# static batches of 1,000-4,000 show no such cost, SGLang overlaps since 0.4.
PER_SEQ_ENGINES = ("vllm",)
# llama-server samples every slot's next token on the CPU from the full logits row it copies back
# from the device, one slot after another, between decode steps: seconds per slot and per
# vocabulary entry. llama.cpp issue #27050 (2026-08-14, one RTX 5090, 32 slots): TPOT 41.2 ms with
# CPU sampling against 25.4 ms with backend sampling (-bs, off by default), with 16.2 MB of logits
# copied per step (about 128k entries per slot at fp32): 15.8 ms / 32 slots / ~128k = 3.9 ns
# (estimate, range 3-6 ns: the host CPU is not stated). Zero turns it off. moatmeter's own H100
# server runs imply about 4.7 ns (Llama-2, 32,000 entries) and 5.5 ns (Llama-3.1, 128,256) per
# slot and entry (docs/bench-h100.md), not used here: held out, its 16-user llama-server rows go
# from 1.42-1.87x output to 1.14-1.23x (leave-one-source-out CV on 1,203 rows: 14.2 / 45.3 %
# median / p90, 184 beyond 35 % -> 14.2 / 44.5 %, 182). Measured directly on a lent H200 by
# serving the same layers with a 128,256- and a 32,000-entry vocabulary at 1-32 users: 3.4 ns
# (2.8-3.6 over six pairs, linear in slots; benchmarks/llamacpp_sampling.py, docs/bench-h200.md).
LLAMA_SERVER_SAMPLE_S_PER_VOCAB = 3.9e-9
# llama.cpp backends whose decode of GGUF block weights runs mul_mat_vec_q up to 8 tokens
# (``step.MMVQ_EFF``): CUDA, and HIP, which compiles the same kernels for AMD GPUs.
MMVQ_BACKENDS = ("cuda", "rocm")
ENGINE_RESERVE = {"llama.cpp": (0.02, 0.5), "ollama": (0.02, 0.5), "tensorrt-llm": (0.05, 1.0)}
# Concurrent sequences a stack can batch when continuous batching is only partial: Ollama's
# OLLAMA_NUM_PARALLEL defaults to 4 (or 1) slots (Ollama FAQ); without it, one at a time.
PARTIAL_BATCH_CAP = 4.0
_16BIT = ("bf16", "fp16", "fp32")


def vllm_large_device(acc: Accelerator, a100_excepted: bool = True) -> bool:
    """Whether vLLM V1 gives ``acc`` its larger batch defaults (A100s only before 0.9)."""
    return (acc.memory_gb * 1e9 / 2**30 >= VLLM_LARGE_DEVICE_GIB
            and not (a100_excepted and "A100" in acc.name))


def default_max_batch(stack: Stack, acc: Accelerator) -> float:
    """The current release's default cap on running requests of ``stack`` on ``acc``."""
    e = stack.engine.lower()
    if e in SERVER_MAX_BATCH:
        return SERVER_MAX_BATCH[e]
    if e == "vllm" and stack.backend.lower() in ("cuda", "rocm") and vllm_large_device(acc):
        return VLLM_LARGE_DEVICE_BATCH
    return float(DEFAULT_MAX_BATCH)


def _peak_for(acc: Accelerator, dtype: str) -> tuple[float, str, str]:
    """(FLOP/s, compute dtype used, note) for weights in ``dtype`` on ``acc``; 0 when none."""
    cls = mem.DTYPE_CLASS.get(mem.norm_dtype(dtype), "bf16")
    peaks = acc.peak_tflops
    if mem.norm_dtype(dtype) == "mxfp4":
        # MXFP4 checkpoints (gpt-oss) quantise the MoE weights only: TensorRT-LLM multiplies them
        # against MXFP8 activations on B200/GB200 and BF16 ones on H200 ("Deployment Guide for
        # GPT-OSS on TensorRT-LLM", MoE backend support matrix, nvidia.github.io, 2025), so the
        # math runs at fp8 where the device also has fp4 tensor cores, else at 16 bits.
        if "fp4" in peaks and "fp8" in peaks:
            return peaks["fp8"] * 1e12, "fp8", "mxfp4 weights x fp8 activations (W4A8)"
        cls = "wo"
    if cls in ("fp8", "int8", "fp6", "fp4") and cls in peaks:
        return peaks[cls] * 1e12, cls, ""
    if cls == "fp32" and "fp32" in peaks:
        return peaks["fp32"] * 1e12, "fp32", ""
    for d in _16BIT:
        if d in peaks:
            note = "" if cls in ("bf16", "fp32", "wo") else f"no {cls} peak: weight-only, {d} math"
            return peaks[d] * 1e12, d, note
    return 0.0, "", ""


def _stack_has_dtype(stack: Stack, dtype: str, kind: str) -> bool:
    """Whether the stack lists the precision, as a dtype or (weights) as a quantisation format."""
    listed = {mem.norm_dtype(d) for d in (stack.weight_dtypes if kind == "weight"
                                          else stack.kv_dtypes)}
    d = mem.norm_dtype(dtype)
    if d in listed:
        return True
    if d in ("bf16", "fp16", "f16") and listed & {"bf16", "fp16", "f16"} and kind == "kv":
        return True  # same bytes; engines pick the 16-bit type the device has
    if kind != "weight":
        return False
    formats = {mem.norm_dtype(q) for q in stack.quant_formats}
    if d in formats:
        return True
    if d == "fp8_mlp" and "fp8" in listed:
        return True  # FP8 FFN, 16-bit attention: runs wherever FP8 weights do
    if mem.DTYPE_CLASS.get(d) == "fp4" and "fp4" in listed:
        return True  # MXFP4 / NVFP4 where the stack lists 4-bit floats generically
    return mem.is_gguf_block(d) and "gguf" in formats


@dataclass
class Resolved:
    """Per-replica arrays ready for the serving model."""

    s: StepInputs
    feasible: np.ndarray
    reason: list[str]
    devices: np.ndarray
    weights_per_device: np.ndarray  # bytes
    device_bytes: np.ndarray  # memory per device
    usable_per_device: np.ndarray  # bytes
    kv_pool: np.ndarray  # bytes over the replica
    max_sequences: np.ndarray
    max_batch: np.ndarray
    bcap: np.ndarray  # min(max_batch, max_sequences), ≥ 1
    eff_sigma: np.ndarray
    calib_note: list[str]
    compute_dtype: np.ndarray
    dtype_note: list[str]
    extra: dict[str, Any] = field(default_factory=dict)


def _inv(values: Any, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Factorise a string array: (unique values, index of each row), O(n) with a dict."""
    arr = np.asarray(values)
    if arr.ndim == 0 or arr.size == 1:
        return np.array([str(arr.reshape(-1)[0])]), np.zeros(n, dtype=np.intp)
    seen: dict[str, int] = {}
    inv = np.fromiter((seen.setdefault(str(x), len(seen)) for x in arr.tolist()), dtype=np.intp,
                      count=arr.size)
    return np.array(list(seen)), inv


def _uniq(key: np.ndarray, space: int) -> tuple[np.ndarray, np.ndarray]:
    """np.unique(key, return_inverse=True) for small non-negative int keys, in O(n)."""
    present = np.zeros(space, dtype=bool)
    present[key] = True
    u = np.flatnonzero(present)
    where = np.zeros(space, dtype=np.intp)
    where[u] = np.arange(len(u))
    return u, where[key]


def resolve(catalog: Catalog, *, accelerator: Any, stack: Any, model: Any, tp: Any, pp: Any,
            weight_dtype: Any, kv_dtype: Any, context: Any, max_batch: Any = None,
            calib: Calibration | None = None, dp_attention: Any = False,
            profile_tokens: Any = None, graph_prefill: Any = False,
            eager_decode: Any = False, poll_steps: Any = 1.0,
            batch_wait: Any = None, overlap: Any = None, host_sampling: Any = None) -> Resolved:
    """Arrays (or scalars, broadcast) of ids and settings → ``Resolved``.

    ``dp_attention`` (bool per row): attention runs data-parallel across the TP group (SGLang
    ``--enable-dp-attention``, TensorRT-LLM ``enable_attention_dp``): every device holds the
    attention weights and the KV cache of its own sequences only, while the MLP / experts stay
    sharded. The KV cache is then not replicated (MLA's latent otherwise is, on every rank), and
    each device reads the full attention weights every step.

    ``profile_tokens`` (per row, NaN = the engine's usual setting): the tokens of the start-up
    profiling pass whose activations the engine keeps out of the KV cache (vLLM V0 without
    chunked prefill: max(max_model_len, 2048)); see ``memory.profile_activation_bytes``.

    ``graph_prefill`` (bool per row): the runtime replays a prebuilt engine for prompt steps too
    (TensorRT-LLM's TensorRT engine builds, the default before its PyTorch backend), so a prompt
    step pays no eager-execution overhead (``step.EAGER_PREFILL``).

    ``eager_decode`` (bool per row): no CUDA graphs at all (vLLM ``--enforce-eager``, the
    TensorRT-LLM PyTorch backend before graphs were on by default), so decode steps pay the
    eager-execution overhead too.

    ``poll_steps`` (per row): the scheduler takes in new requests every this many decode steps
    while a batch runs (SGLang ``--scheduler-recv-interval``; 1 = every step).

    ``batch_wait`` (None, or a pair of per-row arrays): TensorRT-LLM's delayed batching, the
    steps a new prompt may wait (``batch_wait_timeout_iters``) and the prompt tokens that end the
    wait early (``batch_wait_max_tokens_ratio`` x ``max_num_tokens``); 0 steps = off.

    ``overlap`` (bool per row, None = the engine's current default, ``OVERLAP_ENGINES``): an
    overlap (async) scheduler plans step k + 1 while step k runs and hands out step k's tokens
    after launching it, so under load a new prompt's first token comes ``step.OVERLAP_LAG``
    steps later.

    ``host_sampling`` (bool per row, None = every llama.cpp row): llama-server samples each
    slot's token on the CPU between decode steps (``LLAMA_SERVER_SAMPLE_S_PER_VOCAB`` x the
    vocabulary, per running sequence and step); llama-bench and llama-batched-bench do not sample.

    ``model`` holds catalog model ids (or one ``ModelEntry``). Unknown ids raise ``CatalogError``.
    """
    calib = calib or default_calibration()
    n = max(np.size(a) for a in (accelerator, stack, tp, pp, weight_dtype, kv_dtype, context))
    if isinstance(model, ModelEntry):
        model_entries = {model.id: model}
        model = model.id
    else:
        model_entries = {}
    n = max(n, np.size(model))
    tp = np.broadcast_to(np.asarray(tp, float), (n,)).copy()
    pp = np.broadcast_to(np.asarray(pp, float), (n,)).copy()
    ctx = np.broadcast_to(np.asarray(context, float), (n,))

    acc_u, acc_i = _inv(accelerator, n)
    st_u, st_i = _inv(stack, n)
    mo_u, mo_i = _inv(model, n)
    wd_u, wd_i = _inv(weight_dtype, n)
    kd_u, kd_i = _inv(kv_dtype, n)
    accs = [catalog.accelerator(a) for a in acc_u]
    stacks = [catalog.stack(s) for s in st_u]
    models = [model_entries.get(m) or catalog.model(m) for m in mo_u]
    arches: list[ModelArch] = [arch_of(m) for m in models]
    if max_batch is None:  # each engine's current default
        mb = np.array([[default_max_batch(s, a) for s in stacks] for a in accs])[acc_i, st_i]
    else:
        mb = np.broadcast_to(np.asarray(max_batch, float), (n,)).copy()

    # --- per accelerator
    bw = np.array([a.memory_bw_gbs * 1e9 for a in accs])[acc_i]
    mem_gb = np.array([a.memory_gb for a in accs])[acc_i]
    sc = np.array([a.scaleup_gbs or PCIE_FALLBACK_GBS for a in accs])
    link_bw = (sc / 2.0 * 1e9 * np.where(sc > FAST_LINK_GBS, 1.0, LINK_EFF_PCIE))[acc_i]
    link_lat = np.where(sc > FAST_LINK_GBS, LAT_FAST, LAT_PCIE)[acc_i]
    max_scale = np.array([a.max_scaleup_devices for a in accs])[acc_i]

    # --- per model
    def mcol(f: Any) -> np.ndarray:
        return np.array([float(f(a)) for a in arches])[mo_i]

    hidden = mcol(lambda a: a.hidden)
    layers = mcol(lambda a: a.layers)
    heads = mcol(lambda a: a.heads)
    kv_heads = mcol(lambda a: a.kv_heads)
    attn = mcol(lambda a: a.layers * a.heads * mem.attn_dim(a, "decode"))
    attn_pre = mcol(lambda a: a.layers * a.heads * mem.attn_dim(a, "prefill"))
    flops_tok = mcol(lambda a: 2.0 * (a.active_params - a.embedding_params + a.vocab * a.hidden))
    n_exp = mcol(lambda a: a.n_experts)
    topk = mcol(lambda a: a.experts_per_token)
    moe_layers = mcol(lambda a: a.moe_layers)

    # --- per (model, weight dtype) and (model, kv dtype)
    reasons = np.full(n, "", dtype=object)
    wkey_u, wkey_i = _uniq(mo_i * len(wd_u) + wd_i, len(mo_u) * len(wd_u))
    w_tot = np.zeros(len(wkey_u))
    w_exp = np.zeros(len(wkey_u))
    w_att = np.zeros(len(wkey_u))  # what attention data parallelism keeps on every device
    bad_w = np.zeros(len(wkey_u), bool)
    for j, k in enumerate(wkey_u):
        a, d = arches[k // len(wd_u)], wd_u[k % len(wd_u)]
        if mem.weight_bytes_per_param(d) is None:
            bad_w[j] = True
            continue
        w_tot[j] = mem.model_weight_bytes(a, d)
        w_exp[j] = mem.expert_bytes(a, d)
        w_att[j] = mem.attention_bytes(a, d)
    w_total = w_tot[wkey_i]
    w_expert = w_exp[wkey_i]
    w_dense = w_total - moe_layers * n_exp * w_expert
    reasons[bad_w[wkey_i]] = "unknown weight dtype"

    kkey_u, kkey_i = _uniq(mo_i * len(kd_u) + kd_i, len(mo_u) * len(kd_u))
    kv_full = np.zeros(len(kkey_u))
    bad_k = np.zeros(len(kkey_u), bool)
    for j, k in enumerate(kkey_u):
        a, d = arches[k // len(kd_u)], kd_u[k % len(kd_u)]
        if mem.kv_bytes_per_elem(d) is None:
            bad_k[j] = True
            continue
        kv_full[j] = mem.kv_bytes_per_token(a, d)
    # sliding-window layers keep and attend over at most their window of the context: their
    # share of the KV cache and of the attention FLOPs scales by min(1, window / context)
    win = mcol(lambda a: a.sliding_window if a.sliding_layers > 0 else 0.0)
    window_scale = np.ones(n)
    if np.any(win > 0):
        slid = mcol(lambda a: a.sliding_layers / a.layers)
        frac = np.where(win > 0, np.minimum(1.0, win / np.maximum(ctx, 1.0)), 1.0)
        window_scale = 1.0 - slid + slid * frac
    kv_tok = kv_full[kkey_i] * window_scale
    attn, attn_pre = attn * window_scale, attn_pre * window_scale
    reasons[(reasons == "") & bad_k[kkey_i]] = "unknown KV-cache dtype"
    is_mla = mcol(lambda a: a.is_mla) > 0
    repl = np.where(is_mla, tp, np.maximum(1.0, tp / np.maximum(kv_heads, 1.0)))
    dpa = np.broadcast_to(np.asarray(dp_attention, bool), (n,)) & (tp > 1)
    repl = np.where(dpa, 1.0, repl)
    kv_tok = kv_tok * repl
    w_attn_extra = np.where(dpa, w_att[wkey_i] * (tp - 1.0), 0.0)

    # --- per (accelerator, stack, weight dtype, kv dtype): support and compute peak
    S, W, K = len(st_u), len(wd_u), len(kd_u)
    ckey = ((acc_i * S + st_i) * W + wd_i) * K + kd_i
    ck_u, ck_i = _uniq(ckey, len(acc_u) * S * W * K)
    has_dt: dict[tuple[int, str, str], bool] = {}

    def stack_has(si: int, d: str, kind: str) -> bool:
        if (si, d, kind) not in has_dt:
            has_dt[(si, d, kind)] = _stack_has_dtype(stacks[si], d, kind)
        return has_dt[(si, d, kind)]

    fams = [s.families() for s in stacks]
    peak_u = np.zeros(len(ck_u))
    cdt_u = np.empty(len(ck_u), dtype=object)
    why_u = np.empty(len(ck_u), dtype=object)
    note_u = np.empty(len(ck_u), dtype=object)
    mmvq_u = np.zeros(len(ck_u))
    for j, k in enumerate(ck_u):
        kd = k % K
        wd = (k // K) % W
        si = (k // (K * W)) % S
        ai = k // (K * W * S)
        a, s = accs[ai], stacks[si]
        peak, cdt, note = _peak_for(a, wd_u[wd])
        if s.vector_only_on(a.family) and "fp32" in a.peak_tflops:
            peak, cdt = a.peak_tflops["fp32"] * 1e12, "fp32"
            note = f"no matrix-unit path for {s.id} on {a.family}: vector fp32 rate"
        elif (cdt in ("bf16", "fp16") and a.fp16_acc16_tflops
              and s.fp16_accumulate_on(a.family)):
            peak = a.fp16_acc16_tflops * 1e12
            note = "; ".join(x for x in (note, f"{s.id} accumulates 16-bit GEMMs in FP16: "
                                            f"{a.id}'s FP16-accumulate rate") if x)
        peak_u[j], cdt_u[j], note_u[j], why_u[j] = peak, cdt, note, ""
        if (s.engine.lower() == "llama.cpp" and s.backend.lower() in MMVQ_BACKENDS
                and mem.is_gguf_block(wd_u[wd])):
            mmvq_u[j] = a.peak_tflops.get("fp32", 0.0) * 1e12
        if a.family not in fams[si]:
            why_u[j] = f"stack {s.id} does not support {a.family} ({a.id})"
        elif not stack_has(si, wd_u[wd], "weight"):
            why_u[j] = f"stack {s.id} has no {wd_u[wd]} weights"
        elif not stack_has(si, kd_u[kd], "kv"):
            why_u[j] = f"stack {s.id} has no {kd_u[kd]} KV cache"
        elif peak <= 0:
            why_u[j] = f"{a.id} has no {wd_u[wd]} or 16-bit peak"
    peak = peak_u[ck_i]
    mmvq = mmvq_u[ck_i]
    why = why_u[ck_i]
    m = (reasons == "") & (why != "")
    reasons[m] = why[m]

    ovl_u = np.array([s.engine.lower() in OVERLAP_ENGINES for s in stacks], dtype=bool)
    pseq_u = np.array([PER_SEQ_CPU_S if s.engine.lower() in PER_SEQ_ENGINES else 0.0
                       for s in stacks])
    eager_u = np.array([EAGER_PREFILL if s.engine.lower() in EAGER_ENGINES
                        and s.backend.lower() in EAGER_BACKENDS else 0.0 for s in stacks])

    # --- per stack: parallelism features
    has_tp = np.array([s.has("tensor_parallel") for s in stacks])[st_i]
    has_pp = np.array([s.has("pipeline_parallel") for s in stacks])[st_i]
    m = (reasons == "") & (tp > 1) & ~has_tp
    reasons[m] = "stack has no tensor parallelism (TP > 1)"
    m = (reasons == "") & (pp > 1) & ~has_pp
    reasons[m] = "stack has no pipeline parallelism (PP > 1)"
    m = (reasons == "") & (tp > max_scale)
    reasons[m] = "TP exceeds the accelerator's scale-up domain (max_scaleup_devices)"
    m = (reasons == "") & ((np.mod(heads, tp) != 0) | ((np.mod(kv_heads, tp) != 0)
                                                        & (np.mod(tp, kv_heads) != 0)))
    reasons[m] = "TP does not divide the attention heads"
    m = (reasons == "") & ((tp < 1) | (pp < 1))
    reasons[m] = "TP and PP must be ≥ 1"

    # --- memory
    devices = tp * pp
    w_dev = (w_total + w_attn_extra) / devices
    res_u = np.array([ENGINE_RESERVE.get(s.engine.lower(), (mem.RESERVE_FRACTION,
                                                             mem.RESERVE_FIXED_BYTES / mem.GIB))
                      for s in stacks])
    usable = mem.usable_bytes(mem_gb, res_u[st_i, 0], res_u[st_i, 1] * mem.GIB)
    profile_held = np.zeros(n)
    if profile_tokens is not None:
        profile_held = mem.profile_activation_bytes(
            hidden, mcol(mem.active_intermediate), tp,
            np.broadcast_to(np.asarray(profile_tokens, float), (n,)))
        usable = usable - profile_held
    pool = (usable - w_dev) * devices
    max_seq = mem.max_sequences(pool, kv_tok, ctx)
    idx = np.flatnonzero((reasons == "") & (w_dev > usable))
    for i in idx:
        reasons[i] = (f"weights do not fit: {w_dev[i] / mem.GIB:.1f} GiB per device > "
                      f"{max(usable[i], 0) / mem.GIB:.1f} GiB usable")
    m = (reasons == "") & (max_seq < 1)
    reasons[m] = "KV cache cannot hold one sequence at this context"
    feasible = reasons == ""
    level = [s.features["continuous_batching"].level for s in stacks]  # type: ignore[index]
    cap_u = np.array([np.inf if lv in ("yes", "experimental") else
                      PARTIAL_BATCH_CAP if lv == "partial" else 1.0 for lv in level])
    bcap = np.maximum(np.minimum(np.minimum(mb, max_seq), cap_u[st_i]), 1.0)

    # --- efficiencies per (stack, family)
    A, M = len(acc_u), len(mo_u)
    pkey_u, pkey_i = _uniq(((st_i * A + acc_i) * M + mo_i) * W + wd_i, S * A * M * W)
    eff = np.zeros((len(pkey_u), 4))
    pnote = []
    seen: dict[tuple[str, ...], Any] = {}  # accelerators of one family share their efficiencies
    for j, k in enumerate(pkey_u):
        s = stacks[k // (A * M * W)]
        acc = accs[(k // (M * W)) % A]
        look = (s.id, s.engine, acc.family, product_line(acc), arch_class(arches[(k // W) % M]),
                dtype_class(wd_u[k % W]))
        if look not in seen:
            seen[look] = calib.lookup(*look[:5], dclass=look[5])
        e = seen[look]
        eff[j] = (e.eff_compute, e.eff_memory, e.overhead_s, e.sigma)
        pnote.append(e.note)
    eff_r = eff[pkey_i]
    calib_note = [pnote[j] for j in pkey_i]
    cdt = cdt_u[ck_i]
    dnote = note_u[ck_i]

    # activation traffic per token: hidden-size tensors are whole on every TP rank, the MLP's
    # intermediate and the attention heads are split across the ranks
    mlp_per_layer = mcol(lambda a: max(a.active_compute_params - a.attention_params
                                       - a.vocab * a.hidden, 0.0) / max(a.layers, 1))
    inter_act = mlp_per_layer / (3.0 * np.maximum(hidden, 1.0))  # gate, up and down matrices
    q_width = mcol(lambda a: a.heads * a.head_dim)
    act_tok = ACT_BYTES_PER_ELEM * layers * (ACT_RW_HIDDEN * hidden * tp + ACT_RW_INTER * inter_act
                                             + ACT_RW_ATTN * q_width)
    ovl_row = (ovl_u[st_i] if overlap is None
               else np.broadcast_to(np.asarray(overlap, bool), (n,)).copy())
    # an overlap scheduler hides the per-sequence CPU work; None keeps the planner's grid free of it
    per_seq = np.where(ovl_row, 0.0, pseq_u[st_i])
    if LLAMA_SERVER_SAMPLE_S_PER_VOCAB > 0:
        lcpp = np.array([s.engine.lower() == "llama.cpp" for s in stacks])[st_i]
        if host_sampling is not None:
            lcpp = lcpp & np.broadcast_to(np.asarray(host_sampling, bool), (n,))
        per_seq = per_seq + np.where(lcpp, LLAMA_SERVER_SAMPLE_S_PER_VOCAB
                                     * mcol(lambda a: a.vocab), 0.0)
    s = StepInputs(peak=np.maximum(peak, 1.0), bw=bw, link_bw=link_bw, link_lat=link_lat,
                   tp=tp, pp=pp, eff_c=eff_r[:, 0], eff_m=eff_r[:, 1], overhead=eff_r[:, 2],
                   w_dense=w_dense + w_attn_extra, w_expert=w_expert, n_experts=n_exp, topk=topk,
                   moe_layers=moe_layers, kv_tok=kv_tok, flops_tok=flops_tok, attn=attn,
                   attn_pre=attn_pre,
                   hidden=hidden, layers=layers, act_tok=act_tok,
                   eager=np.where(np.broadcast_to(np.asarray(graph_prefill, bool), (n,)), 0.0,
                                  eager_u[st_i]),
                   eager_decode=np.broadcast_to(np.asarray(eager_decode, bool), (n,)).copy(),
                   poll_steps=np.maximum(np.broadcast_to(np.asarray(poll_steps, float), (n,)), 1.0),
                   batch_wait_iters=None if batch_wait is None else np.broadcast_to(
                       np.asarray(batch_wait[0], float), (n,)).copy(),
                   batch_wait_tokens=None if batch_wait is None else np.broadcast_to(
                       np.asarray(batch_wait[1], float), (n,)).copy(),
                   overlap=ovl_row,
                   per_seq=per_seq if np.any(per_seq) else None,
                   mmvq_rate=mmvq if np.any(mmvq > 0) else None)
    return Resolved(s=s, feasible=feasible, reason=list(reasons), devices=devices,
                    weights_per_device=w_dev, device_bytes=mem_gb * mem.GIB,
                    usable_per_device=usable, kv_pool=pool,
                    max_sequences=max_seq, max_batch=mb, bcap=bcap, eff_sigma=eff_r[:, 3],
                    calib_note=calib_note, compute_dtype=cdt, dtype_note=list(dnote),
                    extra={"pair_index": pkey_i, "profile_held": profile_held})
