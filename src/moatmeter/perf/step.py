"""Prefill and decode step time, vectorised over arrays of deployments (one element per replica).

A step is a roofline over the bytes each device must move and the FLOPs it must do:

    t_stage = smooth_max(bytes / (bw · eff_m), flops / (peak · eff_c))

``smooth_max`` is the p-norm (p = 3) rather than a hard max: real kernels overlap memory
and compute imperfectly, so near the ridge point the time is higher than either term alone.

- Decode at batch B and mean context c reads the dense weights, the *distinct* routed experts the
  B tokens touch (E·(1 − (1 − k/E)^B) per MoE layer: each token picks k of E experts), and B·c KV
  entries; FLOPs are 2·P_active per token (LM head included) plus 4·layers·heads·head_dim·c for
  attention (MLA: over the absorbed latent when decoding, ``memory.attn_dim``; sliding-window
  layers: over at most the window).
- Every token also moves its activations through DRAM between kernels (``act_tok`` bytes over
  the replica, from ``deploy.ACT_RW_*``): negligible beside the weights at small batch, a real
  share of a step at thousands of tokens (a small MoE model at large batch, say).
- Attention FLOPs run at ``ATTN_EFF`` of the GEMMs' compute efficiency: fused attention kernels
  reach a lower fraction of peak than large dense GEMMs (FlashAttention-2, Dao 2023, reports
  50-73 % of A100 peak for its forward pass).
- Tensor parallelism splits bytes and FLOPs by TP and adds two all-reduces of B·hidden activations
  per layer (ring: 2(TP−1)/TP of the message over the unidirectional scale-up bandwidth, plus a
  per-collective latency; over PCIe only ``deploy.LINK_EFF_PCIE`` of the nominal figure).
- Pipeline parallelism splits layers across PP stages; the engine keeps PP micro-batches in flight,
  so a decode step of B sequences costs PP stage-steps of B/PP sequences each (no latency gain,
  more room for batch).
- The engine's per-step overhead (scheduling, sampling, kernel launches) is added once. The
  calibrated figure is for a 32-layer model; a share ``OVERHEAD_LAYER_SHARE`` of it (kernel
  launches, per-layer synchronisation) scales with the layer count, the rest (scheduler,
  sampler) would not — so 14 ms fitted on a 126-layer 405B model is not charged in full to an 8B.
  Cross-validation currently puts the whole of it per layer (share 1.0).
- Without an overlap scheduler, vLLM's per-sequence CPU work (scheduling, block tables, sampling
  metadata, output processing) sits between the GPU steps: ``PER_SEQ_CPU_S`` per running sequence
  is added to every decode step (``StepInputs.per_seq``); an overlap scheduler hides it.
- Prompt steps run eagerly in the Python-driven engines: CUDA graphs are captured for decode
  batches only, so a step that carries prompt tokens pays ``EAGER_PREFILL`` times the step
  overhead more (kernel launches and Python dispatch per operator of every layer). A
  mean-field step pays it in the share of steps that carry a prompt chunk; the step that
  carries a request's own prompt always does. Without CUDA graphs at all (``eager_decode``:
  vLLM ``--enforce-eager``, TensorRT-LLM's early PyTorch backend) decode steps pay
  ``EAGER_DECODE`` times the overhead more as well.
- llama.cpp's CUDA / HIP kernels for GGUF block-quantised weights (``StepInputs.mmvq_rate``):
  a step of 2-8 tokens runs a mat-vec kernel that dequantises the weights once per token, so
  each token beyond the first adds its GEMM FLOPs at ``MMVQ_EFF`` of the fp32 rate to the weight
  read; a step of more tokens (int8 tensor-core tiles) costs no less than one of 8.
- Speculative decoding (``StepInputs.with_speculation``): each decode step first drafts k tokens
  per sequence, each draft costing ``spec_draft`` of a plain decode step (an MTP head is one
  more transformer block: 1/layers; a separate draft model: its size over the target's), then
  verifies them in one target pass of k + 1 query tokens per sequence. The verify pass reads
  the weights and each sequence's KV once (the k + 1 queries share them) but does k + 1 times the
  FLOPs, touches the experts of B·(k + 1) tokens and moves k + 1 tokens' activations. With
  per-token acceptance a (drafts accepted independently until the first rejection, Leviathan et
  al. 2023) a step yields (1 − a^(k+1)) / (1 − a) tokens per sequence: a win while decode is
  memory- or overhead-bound, a loss once the batch makes it compute-bound.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

ACT_BYTES = 2.0  # activations exchanged by TP collectives travel in 16 bits
REF_LAYERS = 32.0
# Share of the per-step overhead that grows with the layer count (a global hyper-parameter,
# chosen by leave-one-source-out CV: see benchmarks/calibration_cv.py). First among 0, 0.5 and 1;
# re-chosen after the attention-efficiency and DP-attention changes among 0.25, 0.5, 0.75, 0.85
# and 1.0: median / p90 APE 18.8/53.1, 18.5/51.3, 17.9/51.2, 18.0/51.0, 18.2/50.7 %; re-chosen on
# the 374-row set with activation traffic: 0.75 -> 15.7/47.4, 1.0 -> 15.6/47.1 % (with
# SOURCE_POWER 0.4: 15.4/47.1 vs 15.3/46.9 %). All of it per layer: launches and synchronisation.
OVERHEAD_LAYER_SHARE = 1.0
# Attention's compute efficiency relative to the GEMMs' (estimate, range 0.5-0.9). A global
# hyper-parameter chosen by leave-one-source-out CV among 1.0, 0.7, 0.5, 0.35 and 0.25
# (median / p90 APE 18.8/54.1, 18.8/50.8, 18.7/50.5, 19.2/51.4, 19.6/52.6 %); 0.7, within
# noise of 0.5, is the one the published kernel figures support. Re-chosen on the 370-row set with
# activation traffic among 0.5, 0.6, 0.65 and 0.7 (14.7/46.2, 14.7/45.6, 14.9/44.3, 15.2/44.9 %):
# 0.65 is better than 0.7 on both figures and inside FlashAttention-2's published 50-73 %.
ATTN_EFF = 0.65
# Prompt tokens a continuous-batching step carries at most (chunked prefill): the default token
# budget of a step in vLLM V1 (max_num_batched_tokens), SGLang (chunked_prefill_size) and
# TensorRT-LLM (max_num_tokens) on datacenter GPUs (estimate; 2048-16384 with the engine version
# and GPU memory; vLLM V0 served with 2048). Leave-one-source-out CV on 496 rows: 2048 -> 14.9 /
# 43.9 % median / p90, 8192 -> 14.7 / 43.5 %.
CHUNK_TOKENS = 8192.0
# CUDA graphs are captured for decode batches only: a step that carries prompt tokens runs the
# model eagerly in the Python-driven engines (vLLM, SGLang, TGI, TensorRT-LLM's PyTorch backend)
# and pays a kernel launch and Python dispatch per operator of every layer. Such a step costs this
# multiple of the (graph-replayed) step overhead on top of it; engines that replay a prebuilt
# graph or engine for prompts too (llama.cpp, TensorRT engine builds, HPU graphs) pay nothing.
# InferenceX's gpt-oss-120b runs on 8x H100 (vLLM 0.15) put 1k-token TTFT at 31 ms where one
# graph-mode step is ~3 ms. A global hyper-parameter chosen by leave-one-source-out CV on the
# 605-row set (median / p90 APE, rows beyond 35 %): 0 -> 15.7 / 62.6 % (121), 7 -> 14.6 / 45.0 %
# (94), 10 -> 14.2 / 44.4 % (98), 20 -> 15.4 / 44.9 % (102).
EAGER_PREFILL = 10.0
# Without CUDA graphs at all (vLLM --enforce-eager, TensorRT-LLM's PyTorch backend before graphs
# were on by default) decode steps run eagerly too, at this multiple of the graph-replayed step
# overhead on top of it; prompt steps still pay EAGER_PREFILL in all. Smaller than EAGER_PREFILL:
# a decode step's kernels are fewer and shaped alike, and a prompt step also builds variable-length
# attention metadata. Chosen by leave-one-source-out CV on the 605-row set (median / p90 APE, rows
# beyond 35 %): none 14.4 / 42.6 % (89), 2 -> 14.4 / 42.0 % (86), 3 -> 14.5 / 41.8 % (84),
# 5 -> 14.5 / 42.4 % (87), 10 (= EAGER_PREFILL) -> 14.8 / 44.4 % (97).
EAGER_DECODE = 3.0
# Steps a new request waits, in a closed loop with a batch running, before its prompt enters a
# step. The client sends it when the previous request's last token arrives, by which time the
# engine is already running the next step: about one step (``SCHED_LAG``). An overlap scheduler
# (SGLang since 0.4, TensorRT-LLM's PyTorch backend since 0.19, vLLM's async scheduling) plans
# step k + 1 while step k runs, so the prompt misses one more step, and hands out step k's tokens
# only after launching step k + 1, so its first token comes one step later again: ``OVERLAP_LAG``
# = 2 more. A Poisson arrival lands mid-step: half a step less. Chosen by leave-one-source-out CV
# on the 642-row set (median / p90 APE, rows beyond 35 %): no lag 13.55 / 41.8 % (90); 1 step for
# every engine 13.5 / 41.7 (88), 2: 13.2 / 40.8 (87), 3: 13.0 / 40.3 (85), 5: 14.3 / 40.9 (92);
# SCHED_LAG / OVERLAP_LAG 1 / 1: 13.2 / 40.8 (87), 1 / 2: 13.1 / 40.0 (85), 1 / 3: 13.6 / 40.4
# (90), 0 / 2: 13.3 / 40.8 (90), 2 / 2: 13.6 / 40.4 (90).
SCHED_LAG = 1.0
OVERLAP_LAG = 2.0
# CPU time per running sequence per step that an engine without an overlap scheduler spends
# between GPU steps (vLLM: scheduling, block tables, sampling metadata and output processing in
# Python, per sequence), on the critical path; an overlap scheduler hides it behind the next step.
# Estimate (range 10-80 us): 128 sequences cost ~4 ms. AMD's vLLM 0.6 latency runs of
# Llama-3.1-70B FP8 on 8x MI300X slow from 9.3 ms per step at batch 1 to 22 ms at 128, where the
# model without this term put ~13 ms (AMD ROCm blog, observations.csv). A global hyper-parameter
# chosen by leave-one-source-out CV on the 825-row set (median / p90 APE, rows beyond 35 %): none
# 14.6 / 41.2 % (123); 30 us 14.2 / 41.1 % (120); 60 us 14.4 / 41.0 % (122); 30 us on V0 only 14.5 /
# 41.2 % (121); 30 us for vLLM, SGLang and TGI without overlap 14.3 / 43.1 % (131: TGI's static
# batches of 1,000-4,000 on Gaudi do not show it).
PER_SEQ_CPU_S = 30e-6
# llama.cpp's CUDA and HIP backends multiply GGUF block-quantised weights by a step of up to
# MMVQ_MAX_TOKENS tokens with mul_mat_vec_q, a vector-ALU kernel that dequantises and dots every
# weight block once per token column (llama.cpp PR #5351, 2024-02: "only enabling the new
# implementation for batch sizes <= 8"; MMVQ_MAX_BATCH_SIZE is still 8, and since PR #26079,
# 2026-07, some GPUs and quant types switch earlier); above it, MMQ's int8 tensor-core tiles, chosen
# there because they are faster. So a decode step of 2-8 sequences costs the weight read plus, per
# token beyond the first, the model's GEMM FLOPs at MMVQ_EFF of the device's fp32 (vector) rate, and
# a step of more tokens costs no less than that of 8. MMVQ_EFF from llama.cpp PR #15802 (2025-09,
# RTX 3090, Llama 8B Q4_0, pp512 at ubatch 1-8: 155.0 -> 570.7 t/s, 6.45 -> 14.02 ms per step, 1.08
# ms per extra token = 13.9 TFLOP/s of the card's 35.6 fp32: 0.39 on average; the first extra token
# costs less, 0.56 of the rate there and 0.6 in PR #5351's RTX 3090 Llama 2 7B Q4_0 run at ubatch
# 1-2, the last four more, 0.31; estimate, range 0.3-0.6). It also gives the floor RTX 4090 runs
# show from 9 tokens on (PR #15131, 2025-08, Llama 8B Q4_0, ubatch 10-16: 8.43-8.63 ms per step; the
# fitted model: 9.2-9.5 ms, with 0.53 ms of step overhead; benchmarks/llamacpp_mmvq.py prints both).
# Zero turns the term off. Without it the step model read the weights once for all 8 tokens: held
# out, moatmeter's own llama-batched-bench runs on an H100 at 8-32 sequences were predicted at
# 0.43-0.55x their step time; with it 0.78-1.11x (leave-one-source-out CV on 1,203 rows: 14.6 / 46.5
# % median / p90, 189 beyond 35 % -> 14.2 / 45.3 %, 184).
MMVQ_MAX_TOKENS = 8.0
MMVQ_EFF = 0.39


@dataclass
class StepInputs:
    """Per-replica arrays (all length N, float) the step model needs; built by ``perf.deploy``."""

    peak: np.ndarray  # FLOP/s per device at the compute dtype
    bw: np.ndarray  # memory bytes/s per device
    link_bw: np.ndarray  # scale-up bytes/s per device, one direction
    link_lat: np.ndarray  # seconds per collective
    tp: np.ndarray
    pp: np.ndarray
    eff_c: np.ndarray
    eff_m: np.ndarray
    overhead: np.ndarray  # seconds per engine step
    w_dense: np.ndarray  # bytes of all non-routed-expert weights (whole model)
    w_expert: np.ndarray  # bytes of one routed expert in one layer
    n_experts: np.ndarray
    topk: np.ndarray
    moe_layers: np.ndarray
    kv_tok: np.ndarray  # KV bytes per token over the replica (with TP replication)
    flops_tok: np.ndarray  # 2 · active params incl. LM head
    attn: np.ndarray  # decode attention FLOPs per (token, context token) / 4 (memory.attn_dim)
    hidden: np.ndarray
    layers: np.ndarray
    act_tok: np.ndarray  # activation bytes per token read and written in DRAM, over the replica
    attn_pre: np.ndarray | None = None  # the same for prompt tokens (MLA differs); None = attn
    # extra overhead of a step carrying prompt tokens, in multiples of the step overhead (eager
    # execution, EAGER_PREFILL); None or 0 where prompts run from a prebuilt graph too
    eager: np.ndarray | None = None
    # bool per row: no CUDA graphs at all (vLLM --enforce-eager, TensorRT-LLM's early PyTorch
    # backend): every step, decode included, pays the eager-execution overhead; None = graphs on
    eager_decode: np.ndarray | None = None
    # the scheduler looks for new requests every this many decode steps while a batch runs
    # (SGLang --scheduler-recv-interval); None or 1 = every step
    poll_steps: np.ndarray | None = None
    # TensorRT-LLM's delayed batching (batch_wait_timeout_iters W, batch_wait_max_tokens_ratio r):
    # a new prompt waits up to W steps until r x max_num_tokens prompt tokens have gathered;
    # None = off. batch_wait_tokens holds r x max_num_tokens.
    batch_wait_iters: np.ndarray | None = None
    batch_wait_tokens: np.ndarray | None = None
    # bool per row: an overlap (async) scheduler plans the next step while one runs and hands out
    # tokens a step late: OVERLAP_LAG more steps to a new prompt's first token; None = no
    overlap: np.ndarray | None = None
    # speculative decoding (None = off): drafted tokens per step, per-token acceptance, and the
    # cost of drafting one token as a fraction of a plain decode step
    spec_k: np.ndarray | None = None
    spec_accept: np.ndarray | None = None
    spec_draft: np.ndarray | None = None
    # CPU seconds per running sequence per step on the critical path (``PER_SEQ_CPU_S`` for an
    # engine that has it and runs without an overlap scheduler); None = none
    per_seq: np.ndarray | None = None
    # FLOP/s per device of llama.cpp's mat-vec path for GGUF block weights (the device's fp32
    # rate; ``MMVQ_EFF`` applies), 0 where it does not apply; None = nowhere
    mmvq_rate: np.ndarray | None = None
    _k: dict[str, Any] | None = field(default=None, init=False, repr=False, compare=False)
    _spec: tuple[np.ndarray, StepInputs] | None = field(default=None, init=False, repr=False,
                                                         compare=False)

    def __len__(self) -> int:
        return len(self.peak)

    def take(self, idx: np.ndarray) -> StepInputs:
        sub = replace(self, **{k: np.asarray(v)[idx] for k, v in self.__dict__.items()
                               if k not in ("_k", "_spec") and v is not None})
        if sub.spec_k is not None and not np.any(sub.spec_k > 0):
            sub = replace(sub, spec_k=None, spec_accept=None, spec_draft=None)
        return sub

    @property
    def speculating(self) -> tuple[np.ndarray, StepInputs]:
        """(indices, sub-inputs) of the rows that speculate, computed once (drafting cost)."""
        if self._spec is None:
            on = np.flatnonzero(self.spec_k > 0) if self.spec_k is not None else np.zeros(0, int)
            self._spec = (on, self.take(on))
        return self._spec

    @property
    def k(self) -> dict[str, Any]:
        """Per-row constants of the step formula, computed once (the hot loop reuses them)."""
        if self._k is None:
            devs = self.tp * self.pp
            tp1 = self.tp > 1
            stage_layers = self.layers / self.pp
            self._k = {
                "inv_bw": 1.0 / (self.bw * self.eff_m * devs),
                "inv_pk": 1.0 / (self.peak * self.eff_c * devs),
                "comm_a": np.where(tp1, stage_layers * 2.0 * self.link_lat, 0.0),
                "comm_b": np.where(tp1, stage_layers * 4.0 * (self.tp - 1.0) / self.tp
                                   * self.hidden * ACT_BYTES / self.link_bw, 0.0),
                "p2p": np.where(self.pp > 1, (self.pp - 1.0) * self.link_lat, 0.0),
                "attn4": 4.0 * self.attn / ATTN_EFF,
                "attn4p": 4.0 * (self.attn if self.attn_pre is None else self.attn_pre) / ATTN_EFF,
                "moe": bool(np.any(self.n_experts > 0)),
                "vinv": (None if self.mmvq_rate is None or MMVQ_EFF <= 0 else
                         np.where(self.mmvq_rate > 0, 1.0 / (np.maximum(self.mmvq_rate, 1.0)
                                                             * MMVQ_EFF * devs), 0.0)),
                "ov": self.overhead * (1.0 - OVERHEAD_LAYER_SHARE
                                       + OVERHEAD_LAYER_SHARE * self.layers / REF_LAYERS),
            }
            self._k["ov_eager"] = self._k["ov"] * (0.0 if self.eager is None else self.eager)
            if self.eager_decode is not None and np.any(self.eager_decode):
                ed = np.asarray(self.eager_decode, bool)
                base = self._k["ov"]
                self._k["ov"] = np.where(ed, base * (1.0 + EAGER_DECODE), base)
                self._k["ov_eager"] = np.where(ed, base * max(EAGER_PREFILL - EAGER_DECODE, 0.0),
                                               self._k["ov_eager"])
        return self._k

    def with_eff(self, eff_c: np.ndarray, eff_m: np.ndarray, overhead: np.ndarray) -> StepInputs:
        return replace(self, eff_c=eff_c, eff_m=eff_m, overhead=overhead)

    def with_speculation(self, k: Any, accept: Any, draft: Any = None) -> StepInputs:
        """Speculative decoding on: ``k`` drafted tokens per step (0 = off for that row), per-token
        acceptance ``accept`` in [0, 1), drafting cost per token ``draft`` (default 1/layers: one
        MTP block)."""
        n = len(self)
        k_ = np.broadcast_to(np.asarray(k, float), (n,)).copy()
        a_ = np.broadcast_to(np.asarray(accept, float), (n,)).copy()
        d_ = (1.0 / np.maximum(self.layers, 1.0) if draft is None
              else np.broadcast_to(np.asarray(draft, float), (n,)).copy())
        d_ = np.where(np.isfinite(d_), d_, 1.0 / np.maximum(self.layers, 1.0))
        if not np.any(k_ > 0):
            return replace(self, spec_k=None, spec_accept=None, spec_draft=None)
        return replace(self, spec_k=np.maximum(k_, 0.0), spec_accept=np.clip(a_, 0.0, 0.999999),
                       spec_draft=np.maximum(d_, 0.0))


def smooth_max(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """p-norm of (a, b) with p = 3 (times are far from under/overflow when cubed)."""
    return np.cbrt(a * a * a + b * b * b)


def experts_touched(n_experts: np.ndarray, topk: np.ndarray, tokens: np.ndarray) -> np.ndarray:
    """Expected distinct experts hit by ``tokens`` tokens choosing ``topk`` of ``n_experts``."""
    e = np.maximum(n_experts, 1.0)
    frac = np.clip(topk / e, 0.0, 1.0)
    hit = e * -np.expm1(np.maximum(tokens, 0.0) * np.log1p(-np.minimum(frac, 1 - 1e-12)))
    return np.where(n_experts > 0, np.minimum(hit, n_experts), 0.0)


def _weights_read(s: StepInputs, tokens: np.ndarray) -> np.ndarray:
    if not s.k["moe"]:
        return s.w_dense
    return s.w_dense + s.moe_layers * experts_touched(s.n_experts, s.topk, tokens) * s.w_expert


def _chunk_share(prefill: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(share of steps that carry a prompt chunk, chunk size) for ``prefill`` prompt tokens per
    step on average: prompts arrive in chunks of up to ``CHUNK_TOKENS`` tokens."""
    chunk = np.maximum(CHUNK_TOKENS, prefill)
    return np.clip(prefill / chunk, 0.0, 1.0), chunk


def _weights_read_mixed(s: StepInputs, decodes: np.ndarray, prefill: np.ndarray,
                        share: np.ndarray, chunk: np.ndarray) -> np.ndarray:
    """Weights read by a decode step carrying on average ``prefill`` prompt tokens.

    A share of the steps (``_chunk_share``) carries a chunk and touches the experts of decodes +
    chunk tokens, the others those of the decodes alone. Spreading the prompt tokens evenly over
    the steps instead would make every decode step of a MoE model touch many more experts than it
    does (E(b + x) > the mixture: E is concave).
    """
    if not s.k["moe"]:
        return s.w_dense
    e = ((1.0 - share) * experts_touched(s.n_experts, s.topk, decodes)
         + share * experts_touched(s.n_experts, s.topk, decodes + chunk))
    return s.w_dense + s.moe_layers * e * s.w_expert


def _comm(s: StepInputs, tokens: np.ndarray) -> np.ndarray:
    """All-reduce time per stage: 2 collectives per layer of the stage's layers."""
    tp = s.tp
    ring = 2.0 * (tp - 1.0) / tp * tokens * s.hidden * ACT_BYTES / s.link_bw
    return np.where(tp > 1, (s.layers / s.pp) * 2.0 * (s.link_lat + ring), 0.0)


@dataclass
class StepTime:
    total: np.ndarray
    memory: np.ndarray  # the memory-bound share of the stage time (for the bottleneck)
    compute: np.ndarray
    comm: np.ndarray
    overhead: np.ndarray
    bytes_per_device: np.ndarray  # per stage-step


def spec_tokens(s: StepInputs) -> np.ndarray | float:
    """Tokens a decode step yields per sequence: 1, or (1 − a^(k+1)) / (1 − a) when speculating."""
    if s.spec_k is None or s.spec_accept is None:
        return 1.0
    a = s.spec_accept
    return (1.0 - a ** (s.spec_k + 1.0)) / (1.0 - a)


def decode_step(s: StepInputs, batch: np.ndarray, context: np.ndarray,
                prefill_tokens: np.ndarray | float = 0.0, prefill_context: np.ndarray | float = 0.0,
                eager: np.ndarray | float | None = None) -> StepTime:
    """One continuous-batching step: ``batch`` decodes plus ``prefill_tokens`` prompt tokens.

    ``prefill_context`` is the mean causal context of those prefill tokens (about half the prompt).
    ``eager`` is the share of such steps that carry a prompt chunk (and so run eagerly); by default
    prefill_tokens / ``CHUNK_TOKENS``, 1 for the step that carries a given request's prompt.
    With speculative decoding on, the step drafts and verifies (see the module docstring) and
    yields ``spec_tokens(s)`` tokens per decoding sequence.
    """
    if s.spec_k is None:
        return _per_seq(s, batch, _step(s, batch, context, prefill_tokens, prefill_context, 1.0,
                                        eager))
    verify = _step(s, batch, context, prefill_tokens, prefill_context, 1.0 + s.spec_k, eager)
    # drafting: only on the rows that speculate, only for sequences that decode in this step
    on, sub = s.speculating
    n = len(s)
    b = np.broadcast_to(np.asarray(batch, float), (n,))[on]
    ctx = np.broadcast_to(np.asarray(context, float), (n,))[on]
    draft = np.zeros(n)
    draft[on] = (sub.spec_k * sub.spec_draft * np.minimum(b, 1.0)
                 * _step(sub, b, ctx, 0.0, 0.0, 1.0).total)
    return _per_seq(s, batch, replace(verify, total=verify.total + draft))


def _per_seq(s: StepInputs, batch: np.ndarray | float, st: StepTime) -> StepTime:
    """The step plus the CPU's per-sequence work, where it sits between the GPU steps."""
    if s.per_seq is None:
        return st
    cpu = s.per_seq * np.asarray(batch, float)
    return replace(st, total=st.total + cpu, overhead=st.overhead + cpu)


def _step(s: StepInputs, batch: np.ndarray | float, context: np.ndarray,
          prefill_tokens: np.ndarray | float, prefill_context: np.ndarray | float,
          queries: np.ndarray | float, eager: np.ndarray | float | None = None) -> StepTime:
    """A target pass with ``queries`` query tokens per decoding sequence (k + 1 when verifying)."""
    k = s.k
    pp = s.pp
    b = np.asarray(batch, float) / pp
    x = np.asarray(prefill_tokens, float) / pp
    bq = b * queries
    tokens = bq + x
    bctx = b * context
    # weights read once, KV read for the decodes and written for the prompt tokens
    share, chunk = _chunk_share(x)
    t_m = (_weights_read_mixed(s, bq, x, share, chunk) + (bctx + x) * s.kv_tok + tokens * s.act_tok
           ) * k["inv_bw"]
    t_c = (tokens * s.flops_tok + k["attn4"] * bctx * queries
           + k["attn4p"] * x * prefill_context) * k["inv_pk"]
    stage = smooth_max(t_m, t_c)
    if k["vinv"] is not None:
        # llama.cpp's mat-vec kernel: one more dequantise-and-dot pass per token (MMVQ_EFF),
        # vector-ALU work that the bottleneck label counts as compute
        cols = np.clip(np.minimum(tokens, MMVQ_MAX_TOKENS) - 1.0, 0.0, None)
        vec = cols * s.flops_tok * k["vinv"]
        stage = np.maximum(stage, t_m + vec)
        t_c = np.maximum(t_c, vec)
    comm = k["comm_a"] + k["comm_b"] * tokens
    ov = k["ov"] + k["ov_eager"] * (share if eager is None else eager)
    total = pp * (stage + comm) + k["p2p"] + ov
    return StepTime(total=total, memory=pp * t_m, compute=pp * t_c, comm=pp * comm + k["p2p"],
                    overhead=ov, bytes_per_device=t_m / k["inv_bw"] / (s.tp * pp))


def prefill_time(s: StepInputs, prompt: np.ndarray | float, n_prompts: np.ndarray | float = 1.0
                 ) -> StepTime:
    """Time to prefill ``n_prompts`` prompts of ``prompt`` tokens in one pass (no pipelining).

    The engine walks the pass in chunks of ``CHUNK_TOKENS`` tokens, one step each: the step
    overhead (and the eager-execution one) is paid per chunk."""
    L = np.maximum(np.asarray(prompt, float), 1.0)
    n = np.asarray(n_prompts, float)
    T = L * n
    devs = s.tp * s.pp
    bytes_dev = (_weights_read(s, T) + T * (s.kv_tok + s.act_tok)) / devs
    flops_dev = (T * s.flops_tok + 0.5 * s.k["attn4p"] * n * L * L) / devs
    t_m = bytes_dev / (s.bw * s.eff_m)
    t_c = flops_dev / (s.peak * s.eff_c)
    # A single pass walks the stages one after another: each stage holds 1/PP of the work.
    stage = s.pp * smooth_max(t_m, t_c)
    comm = _comm(s, T) * s.pp
    p2p = np.where(s.pp > 1, (s.pp - 1.0) * s.link_lat, 0.0)
    # the engine walks T tokens in chunks of CHUNK_TOKENS, one step (and its overhead) each
    ov = (s.k["ov"] + s.k["ov_eager"]) * np.maximum(np.ceil(T / CHUNK_TOKENS), 1.0)
    total = stage + comm + p2p + ov
    return StepTime(total=total, memory=s.pp * t_m, compute=s.pp * t_c, comm=comm + p2p,
                    overhead=ov,
                    bytes_per_device=bytes_dev)
