"""Flash attention forward in Triton (our own kernel): online softmax, causal, GQA, split-KV.

Rows of a program are (query position, query head of one KV group) pairs, so in decode the query
heads that share a KV head fill the tile together and each K/V block is read once per group.
Causal masking is aligned bottom-right (query i sees keys up to i + kv_len - q_len), which is
what a KV cache means; for q_len == kv_len it is the usual lower triangle.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import triton
import triton.language as tl

from moatmeter.bench.kernels.autotune import Autotuner, Config
from moatmeter.bench.kernels.gemm import interpreting, upcast_for_interpreter

LOG2E = 1.4426950408889634


@triton.jit
def _attn_fwd(q_ptr, k_ptr, v_ptr, o_ptr, pacc_ptr, pml_ptr,
              s_qb, s_qh, s_qs, s_qd, s_kb, s_kh, s_ks, s_kd,
              s_vb, s_vh, s_vs, s_vd, s_ob, s_oh, s_os, s_od,
              HKV, SQ, SKV, ROWS_PAD, qk_scale,
              GROUP: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
              BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, SPLITS: tl.constexpr,
              CAUSAL: tl.constexpr, UPCAST: tl.constexpr):
    pid_r = tl.program_id(0)
    pid_bh = tl.program_id(1)
    pid_s = tl.program_id(2)
    b = pid_bh // HKV
    hkv = pid_bh % HKV
    rows = pid_r * BLOCK_M + tl.arange(0, BLOCK_M)
    q_pos = rows // GROUP
    head = hkv * GROUP + rows % GROUP
    row_ok = q_pos < SQ
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < HEAD_DIM

    q = tl.load(q_ptr + b * s_qb + head[:, None] * s_qh + q_pos[:, None] * s_qs
                + offs_d[None, :] * s_qd, mask=row_ok[:, None] & d_ok[None, :], other=0.0)
    if UPCAST:
        q = q.to(tl.float32)
    k_base = k_ptr + b * s_kb + hkv * s_kh
    v_base = v_ptr + b * s_vb + hkv * s_vh

    shift = SKV - SQ
    hi = SKV
    if CAUSAL:
        hi = tl.minimum(SKV, tl.max(q_pos) + shift + 1)
    # Split-KV: each split owns a contiguous, BLOCK_N-aligned range of keys.
    chunk = tl.cdiv(tl.cdiv(SKV, SPLITS), BLOCK_N) * BLOCK_N
    lo = pid_s * chunk
    hi = tl.minimum(hi, lo + chunk)

    # A finite floor keeps rows that see no key in this split free of inf - inf = NaN.
    m_i = tl.full((BLOCK_M,), -1.0e30, dtype=tl.float32)
    l_i = tl.zeros((BLOCK_M,), dtype=tl.float32)
    acc = tl.zeros((BLOCK_M, BLOCK_D), dtype=tl.float32)
    for start in range(lo, hi, BLOCK_N):
        keys = start + tl.arange(0, BLOCK_N)
        k_ok = keys < SKV
        kv_mask = k_ok[:, None] & d_ok[None, :]
        k = tl.load(k_base + keys[:, None] * s_ks + offs_d[None, :] * s_kd, mask=kv_mask,
                    other=0.0)
        if UPCAST:
            k = k.to(tl.float32)
        s = tl.dot(q, tl.trans(k)) * qk_scale  # scores in log2 units
        ok = k_ok[None, :]
        if CAUSAL:
            ok = ok & (keys[None, :] <= q_pos[:, None] + shift)
        s = tl.where(ok, s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        v = tl.load(v_base + keys[:, None] * s_vs + offs_d[None, :] * s_vd, mask=kv_mask,
                    other=0.0)
        if UPCAST:
            v = v.to(tl.float32)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
        m_i = m_new

    if SPLITS == 1:
        out = acc / tl.where(l_i == 0.0, 1.0, l_i)[:, None]
        tl.store(o_ptr + b * s_ob + head[:, None] * s_oh + q_pos[:, None] * s_os
                 + offs_d[None, :] * s_od, out.to(o_ptr.dtype.element_ty),
                 mask=row_ok[:, None] & d_ok[None, :])
    else:
        # Partial (unnormalised acc, running max, running sum) per split; _combine merges them.
        base = (pid_s * tl.num_programs(1) + pid_bh) * ROWS_PAD + rows
        tl.store(pacc_ptr + base[:, None] * BLOCK_D + offs_d[None, :], acc)
        tl.store(pml_ptr + base * 2, m_i)
        tl.store(pml_ptr + base * 2 + 1, l_i)


@triton.jit
def _combine(o_ptr, pacc_ptr, pml_ptr, s_ob, s_oh, s_os, s_od, HKV, SQ, ROWS_PAD,
             GROUP: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
             BLOCK_M: tl.constexpr, SPLITS: tl.constexpr):
    pid_r = tl.program_id(0)
    pid_bh = tl.program_id(1)
    n_bh = tl.num_programs(1)
    b = pid_bh // HKV
    hkv = pid_bh % HKV
    rows = pid_r * BLOCK_M + tl.arange(0, BLOCK_M)
    q_pos = rows // GROUP
    head = hkv * GROUP + rows % GROUP
    offs_d = tl.arange(0, BLOCK_D)
    m_max = tl.full((BLOCK_M,), -1.0e30, dtype=tl.float32)
    for s in range(SPLITS):
        m_max = tl.maximum(m_max, tl.load(pml_ptr + ((s * n_bh + pid_bh) * ROWS_PAD + rows) * 2))
    acc = tl.zeros((BLOCK_M, BLOCK_D), dtype=tl.float32)
    l_tot = tl.zeros((BLOCK_M,), dtype=tl.float32)
    for s in range(SPLITS):
        base = (s * n_bh + pid_bh) * ROWS_PAD + rows
        w = tl.exp2(tl.load(pml_ptr + base * 2) - m_max)
        l_tot += w * tl.load(pml_ptr + base * 2 + 1)
        acc += w[:, None] * tl.load(pacc_ptr + base[:, None] * BLOCK_D + offs_d[None, :])
    out = acc / tl.where(l_tot == 0.0, 1.0, l_tot)[:, None]
    mask = (q_pos < SQ)[:, None] & (offs_d < HEAD_DIM)[None, :]
    tl.store(o_ptr + b * s_ob + head[:, None] * s_oh + q_pos[:, None] * s_os
             + offs_d[None, :] * s_od, out.to(o_ptr.dtype.element_ty), mask=mask)


def attention_configs(problem: dict[str, Any]) -> Sequence[Config]:
    """Tile and split candidates; splitting the keys only pays when rows are few (decode)."""
    if problem["interpret"]:
        return [Config.of(BLOCK_M=16, BLOCK_N=16, SPLITS=1),
                Config.of(BLOCK_M=16, BLOCK_N=16, SPLITS=2)]
    d = problem["BLOCK_D"]
    if problem["rows"] <= 64:  # decode: one tile of rows per KV head, parallelise over keys
        return [Config.of(4, 2, BLOCK_M=16, BLOCK_N=64, SPLITS=s) for s in (1, 4, 8, 16, 32)]
    big_n = 64 if d <= 128 else 32
    return [Config.of(4, 3, BLOCK_M=64, BLOCK_N=big_n, SPLITS=1),
            Config.of(8, 3, BLOCK_M=128, BLOCK_N=big_n, SPLITS=1),
            Config.of(4, 2, BLOCK_M=128, BLOCK_N=32, SPLITS=1),
            Config.of(8, 2, BLOCK_M=128, BLOCK_N=64, SPLITS=1)]


TUNER = Autotuner(attention_configs)


def _launch(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, o: torch.Tensor, causal: bool,
            scale: float, cfg: Config) -> None:
    B, H, SQ, D = q.shape
    HKV, SKV = k.shape[1], k.shape[2]
    group = H // HKV
    meta = cfg.kwargs()
    bm, splits = meta["BLOCK_M"], meta["SPLITS"]
    block_d = max(16, triton.next_power_of_2(D))
    rows = SQ * group
    row_tiles = triton.cdiv(rows, bm)
    rows_pad = row_tiles * bm
    if splits > 1:
        pacc = torch.empty((splits, B * HKV, rows_pad, block_d), dtype=torch.float32,
                           device=q.device)
        pml = torch.empty((splits, B * HKV, rows_pad, 2), dtype=torch.float32, device=q.device)
    else:
        pacc = pml = o  # unused by the kernel when SPLITS == 1
    grid = (row_tiles, B * HKV, splits)
    _attn_fwd[grid](q, k, v, o, pacc, pml, *q.stride(), *k.stride(), *v.stride(), *o.stride(),
                    HKV, SQ, SKV, rows_pad, scale * LOG2E, GROUP=group, HEAD_DIM=D,
                    BLOCK_D=block_d, CAUSAL=causal, UPCAST=upcast_for_interpreter(q.dtype),
                    num_warps=cfg.num_warps, num_stages=cfg.num_stages, **meta)
    if splits > 1:
        _combine[(row_tiles, B * HKV)](o, pacc, pml, *o.stride(), HKV, SQ, rows_pad,
                                       GROUP=group, HEAD_DIM=D, BLOCK_D=block_d, BLOCK_M=bm,
                                       SPLITS=splits)


def flash_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool = True,
                    scale: float | None = None, config: Config | None = None) -> torch.Tensor:
    """Softmax(q kᵀ · scale) v for q (B, H, Sq, D) and k, v (B, Hkv, Skv, D), H % Hkv == 0."""
    if q.ndim != 4 or k.shape != v.shape or k.ndim != 4:
        raise ValueError("expected q (B, H, Sq, D) and k, v (B, Hkv, Skv, D)")
    B, H, SQ, D = q.shape
    if k.shape[0] != B or k.shape[3] != D or H % k.shape[1] != 0 or k.shape[2] < SQ:
        raise ValueError(f"incompatible shapes q {tuple(q.shape)}, k/v {tuple(k.shape)}")
    scale = 1.0 / math.sqrt(D) if scale is None else scale
    o = torch.empty_like(q)
    if config is None:
        group = H // k.shape[1]
        block_d = max(16, triton.next_power_of_2(D))
        key = (SQ * group, k.shape[2], B, k.shape[1], D, causal, q.dtype, str(q.device))
        problem = {"rows": SQ * group, "BLOCK_D": block_d, "interpret": interpreting()}
        config = TUNER.choose(key, problem, lambda c: _launch(q, k, v, o, causal, scale, c),
                              q.device)
    _launch(q, k, v, o, causal, scale, config)
    return o
