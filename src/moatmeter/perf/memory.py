"""Memory model: weight bytes, KV-cache bytes per token, the KV pool and how many sequences fit.

Why these numbers:
- HBM/GDDR capacities that vendors call "80 GB" are binary (80 GiB = 85.9e9 bytes), so device
  memory is ``memory_gb * 2**30``.
- Engines do not hand all of it to the model: vLLM's default ``gpu_memory_utilization`` is 0.90
  (vLLM engine arguments documentation), and activations, CUDA graphs and the allocator take a
  further slice. We reserve ``RESERVE_FRACTION`` of memory plus ``RESERVE_FIXED_BYTES`` per device
  (an estimate; real engines range roughly 6–15 % plus 0.5–2 GiB).
- Quantised formats carry scales: GPTQ/AWQ int4 with group size 128 store an fp16 scale (and a
  packed zero point) per 128 weights (~4.25 bits/weight); llama.cpp's block formats are defined by
  their block structs in ggml (``block_q4_0``: 32 weights in 18 bytes = 4.5 bits; ``block_q8_0``:
  34 bytes per 32; ``Q4_K_M`` averages ~4.85 bits, ``Q5_K_M`` ~5.7, ``Q6_K`` 6.56). OCP MXFP4 has an
  8-bit scale per 32 values (4.25 bits); NVFP4 an fp8 scale per 16 (4.5 bits).
- Quantised checkpoints keep the embedding and LM head in 16 bits (AWQ/GPTQ/FP8 checkpoints in
  vLLM and TensorRT-LLM do), so only the transformer-block weights shrink; GGUF block formats
  quantise them too.
- ``fp8_mlp`` is Meta's FBGEMM FP8 recipe for Llama 3.1 (meta-llama/Llama-3.1-405B-FP8): FP8 in the
  feed-forward layers only, "we do not perform quantization in the self-attention layers of the
  model" and not in the first and last Transformer layers (The Llama 3 Herd of Models,
  arXiv:2407.21783, 2024-07-31, section 6.2), so attention, those two layers and the embeddings stay
  16-bit; the FP8 FFN GEMMs carry most of the FLOPs, so its compute class is fp8.
- KV bytes per token = 2 · layers · kv_heads · head_dim · bytes (MLA: latent rank + rope dims, one
  copy). Under tensor parallelism each rank needs at least one KV head, so when TP exceeds the KV
  heads the cache is replicated (factor ``tp / kv_heads``); MLA's latent is replicated on every
  rank.
"""

from __future__ import annotations

import numpy as np

from moatmeter.catalog.modelarch import ModelArch

GIB = float(2**30)
RESERVE_FRACTION = 0.08  # estimate: activations, graphs, fragmentation (range 0.06-0.15)
RESERVE_FIXED_BYTES = 1.0 * GIB  # estimate: runtime context, workspace (range 0.5-2 GiB)
# Live activations per token of a profiling pass, in hidden- and intermediate-size tensors
# (estimate: residual + one buffer; gate/up + activated product; ranges 1-3 and 2-4).
PROFILE_ACT_HIDDEN = 2.0
PROFILE_ACT_INTER = 3.0
ACT_PEAK_BYTES = 2.0

# Bytes per weight including quantisation scales (see module docstring for the sources).
WEIGHT_BYTES: dict[str, float] = {
    "fp32": 4.0, "tf32": 4.0, "bf16": 2.0, "fp16": 2.0, "f16": 2.0,
    "fp8": 1.0, "fp8_mlp": 1.0, "int8": 1.0, "q8_0": 34 / 32,
    "fp6": 0.75, "q6_k": 6.5625 / 8, "q5_k_m": 5.7 / 8, "q5_0": 22 / 32, "q5_k_s": 5.5 / 8,
    "int4": 4.25 / 8, "fp4": 4.25 / 8, "mxfp4": 4.25 / 8, "nvfp4": 4.5 / 8,
    "q4_0": 18 / 32, "q4_k_m": 4.85 / 8, "q4_k_s": 4.58 / 8, "q3_k_m": 3.9 / 8,
}
KV_BYTES: dict[str, float] = {"fp32": 4.0, "bf16": 2.0, "fp16": 2.0, "f16": 2.0, "fp8": 1.0,
                              "int8": 1.0, "q8_0": 34 / 32, "q4_0": 18 / 32, "int4": 0.5}
# Which compute class a weight format belongs to: the peak it can use when the device has it.
DTYPE_CLASS: dict[str, str] = {
    "fp32": "fp32", "tf32": "fp32", "bf16": "bf16", "fp16": "bf16", "f16": "bf16",
    "fp8": "fp8", "fp8_mlp": "fp8", "int8": "int8", "fp6": "fp6", "fp4": "fp4", "mxfp4": "fp4",
    "nvfp4": "fp4",
    # weight-only: dequantised on the fly, math at 16 bits (llama.cpp's block formats included)
    "int4": "wo", "q8_0": "wo", "q4_0": "wo", "q4_k_m": "wo", "q4_k_s": "wo", "q5_0": "wo",
    "q5_k_m": "wo", "q5_k_s": "wo", "q6_k": "wo", "q3_k_m": "wo",
}


def is_gguf_block(dtype: str) -> bool:
    """A GGUF block-quantised format (q4_0, q4_k_m, iq4_xs, …), as llama.cpp's kernels see it."""
    d = norm_dtype(dtype)
    return d.startswith("iq") or (d.startswith("q") and "_" in d)


ALIASES = {"f16": "fp16", "f32": "fp32", "float16": "fp16", "bfloat16": "bf16", "float32": "fp32",
           "e4m3": "fp8", "fp8_e4m3": "fp8", "w4a16": "int4", "w8a8": "int8"}


def norm_dtype(d: str) -> str:
    """Canonical spelling: lower case, '-' → '_', llama.cpp's f16/f32 → fp16/fp32."""
    x = str(d).strip().lower().replace("-", "_")
    return ALIASES.get(x, x)


def weight_bytes_per_param(dtype: str) -> float | None:
    return WEIGHT_BYTES.get(norm_dtype(dtype))


def kv_bytes_per_elem(dtype: str) -> float | None:
    return KV_BYTES.get(norm_dtype(dtype))


def model_weight_bytes(arch: ModelArch, dtype: str) -> float:
    """Total weight bytes; embeddings and LM head stay 16-bit when the rest is quantised."""
    b = weight_bytes_per_param(dtype)
    if b is None:
        raise KeyError(dtype)
    d = norm_dtype(dtype)
    # GGUF files quantise the embeddings too (Q4_K_M keeps them at 4-6 bits); others keep 16-bit
    emb_b = b if d.startswith("q") or b >= 2.0 else 2.0
    if d == "fp8_mlp":  # FP8 FFN in all but the first and last layers; the rest 16-bit
        mlp = ((arch.total_params - arch.embedding_params - arch.attention_params)
               * max(arch.layers - 2, 0) / max(arch.layers, 1))
        return (arch.total_params - mlp) * 2.0 + mlp * b
    return (arch.total_params - arch.embedding_params) * b + arch.embedding_params * emb_b


def attention_bytes(arch: ModelArch, dtype: str) -> float:
    """Bytes of all attention blocks (``fp8_mlp`` keeps them 16-bit)."""
    b = 2.0 if norm_dtype(dtype) == "fp8_mlp" else weight_bytes_per_param(dtype) or 2.0
    return arch.attention_params * b


def expert_bytes(arch: ModelArch, dtype: str) -> float:
    """Bytes of one routed expert in one layer (0 for dense models)."""
    b = weight_bytes_per_param(dtype) or 2.0
    return arch.params_per_expert * b


def kv_bytes_per_token(arch: ModelArch, kv_dtype: str, context: float | None = None) -> float:
    """KV bytes per token summed over layers, unreplicated (see ``kv_replication``)."""
    b = kv_bytes_per_elem(kv_dtype)
    if b is None:
        raise KeyError(kv_dtype)
    return arch.kv_elems_per_token(context) * b


def attn_dim(arch: ModelArch, phase: str) -> float:
    """Attention FLOPs per head per (query token, context token), divided by 4.

    Standard attention does q·k and p·v over ``head_dim`` each: 4·head_dim. MLA decodes with the
    up-projections absorbed (DeepSeek-V2, arXiv:2405.04434, sec. 2.1.3), so q·k runs over the
    latent plus the rope key (kv_lora_rank + qk_rope_head_dim) and p·v over the latent: about
    2.8x the FLOPs of its prefill, which decompresses the latent and attends per head over
    qk_nope + qk_rope keys and v_head_dim values.
    """
    if not arch.is_mla:
        return float(arch.head_dim)
    if phase == "decode":
        return (2.0 * arch.kv_lora_rank + arch.qk_rope_head_dim) / 2.0
    return (arch.qk_nope_head_dim + arch.qk_rope_head_dim + arch.v_head_dim) / 2.0


def kv_replication(arch: ModelArch, tp: np.ndarray) -> np.ndarray:
    """How many copies of each KV head the TP group stores in total, per token (≥ 1)."""
    tp = np.asarray(tp, dtype=float)
    if arch.is_mla:
        return tp
    return np.maximum(1.0, tp / max(arch.kv_heads, 1))


def active_intermediate(arch: ModelArch) -> float:
    """MLP width one token passes through: dense intermediate, or its routed + shared experts'."""
    return float(arch.intermediate or arch.moe_intermediate * (arch.experts_per_token
                                                               + arch.n_shared_experts))


def profile_activation_bytes(hidden: np.ndarray, intermediate: np.ndarray, tp: np.ndarray,
                             tokens: np.ndarray) -> np.ndarray:
    """Per-device activation memory an engine sets aside after profiling a ``tokens``-token pass.

    vLLM V0 sizes its KV cache from the peak memory of one start-up forward pass of
    ``max_num_batched_tokens`` tokens, which without chunked prefill is max(max_model_len, 2048):
    a 91,680-token context leaves a 405B model on 8x H100 a fraction of the KV cache a 4k one
    would. At the MLP's peak the pass holds, in 16 bits, the residual stream and one more
    hidden-size buffer whole on every rank and the gate/up output plus the activated product,
    split by TP: ``PROFILE_ACT_HIDDEN`` x hidden + ``PROFILE_ACT_INTER`` x intermediate / TP per
    token. NaN tokens (the engine's usual setting) reserve nothing beyond ``RESERVE_FRACTION``.
    """
    per_token = ACT_PEAK_BYTES * (PROFILE_ACT_HIDDEN * np.asarray(hidden, float)
                                  + PROFILE_ACT_INTER * np.asarray(intermediate, float)
                                  / np.maximum(np.asarray(tp, float), 1.0))
    return np.nan_to_num(np.asarray(tokens, float), nan=0.0) * per_token


def usable_bytes(memory_gb: np.ndarray, fraction: np.ndarray | float = RESERVE_FRACTION,
                 fixed: np.ndarray | float = RESERVE_FIXED_BYTES) -> np.ndarray:
    """Per-device bytes the engine can use for weights + KV after its reserve."""
    mem = np.asarray(memory_gb, dtype=float) * GIB
    return mem * (1.0 - np.asarray(fraction)) - fixed


def kv_pool(memory_gb: np.ndarray, weights_per_device: np.ndarray, devices: np.ndarray
            ) -> np.ndarray:
    """Bytes left for the KV cache over the whole replica (negative: weights do not fit)."""
    return (usable_bytes(memory_gb) - weights_per_device) * np.asarray(devices, dtype=float)


def max_sequences(pool_bytes: np.ndarray, kv_tok_bytes: np.ndarray, context: float | np.ndarray
                  ) -> np.ndarray:
    """Concurrent sequences whose full context fits the KV pool (a paged cache wastes < 4 %)."""
    per_seq = np.asarray(kv_tok_bytes, dtype=float) * np.maximum(np.asarray(context, float), 1.0)
    return np.floor(np.maximum(pool_bytes, 0.0) / np.maximum(per_seq, 1e-9))
