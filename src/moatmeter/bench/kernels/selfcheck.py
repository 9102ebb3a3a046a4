"""Check the Triton kernels against PyTorch under the Triton interpreter (for devices without a
Triton backend, such as CPUs): ``python -m moatmeter.bench.kernels.selfcheck`` prints JSON.

The environment variable must be set before Triton is imported, hence a separate process.
"""

from __future__ import annotations

import os

os.environ["TRITON_INTERPRET"] = "1"

import json
import math

import torch

# Tolerances relative to the largest reference magnitude: inputs are rounded to the dtype, the
# kernel accumulates in fp32 and rounds the output once (the interpreter rounds toward zero).
REL_TOL = {torch.float16: 2e-3, torch.bfloat16: 1.6e-2, torch.float32: 1e-5}
DTYPE_NAMES = {torch.float16: "fp16", torch.bfloat16: "bf16", torch.float32: "fp32"}


def reference_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                        causal: bool) -> torch.Tensor:
    """fp32 attention with GQA and bottom-right causal alignment, written out step by step."""
    group = q.shape[1] // k.shape[1]
    kk = k.float().repeat_interleave(group, 1)
    vv = v.float().repeat_interleave(group, 1)
    s = q.float() @ kk.transpose(-1, -2) / math.sqrt(q.shape[-1])
    if causal:
        sq, skv = q.shape[2], k.shape[2]
        keep = torch.ones(sq, skv, dtype=torch.bool).tril(skv - sq)
        s = s.masked_fill(~keep, float("-inf"))
    return torch.softmax(s, -1) @ vv


GEMM_SHAPES = ((1, 48, 40), (24, 40, 56))
ATTN_SHAPES = ((1, 4, 2, 24, 24, 32, True), (2, 4, 1, 1, 40, 32, False))


def check(quick: bool = False) -> list[dict]:
    """Max error of each kernel vs PyTorch; ``quick``: bf16 and one shape each, fixed tiles."""
    from moatmeter.bench.kernels import attention, gemm
    from moatmeter.bench.kernels.autotune import Config

    gen = torch.Generator().manual_seed(0)
    out: list[dict] = []
    dtypes = (torch.bfloat16,) if quick else (torch.bfloat16, torch.float16)
    gemm_cfg = Config.of(BLOCK_M=16, BLOCK_N=32, BLOCK_K=32, GROUP_M=4) if quick else None
    attn_cfg = Config.of(BLOCK_M=16, BLOCK_N=16, SPLITS=2) if quick else None
    for dt in dtypes:
        for m, n, k in GEMM_SHAPES[1:] if quick else GEMM_SHAPES:
            x = torch.randn(m, k, generator=gen).to(dt)
            w = torch.randn(n, k, generator=gen).to(dt)
            ref = x.float() @ w.float().t()
            err = (gemm.matmul(x, w.t(), config=gemm_cfg).float() - ref).abs().max().item()
            tol = REL_TOL[dt] * ref.abs().max().item()
            out.append({"kernel": "triton_gemm", "dtype": DTYPE_NAMES[dt],
                        "shape": f"M={m} N={n} K={k}", "max_abs_err": err, "tol": tol,
                        "ok": err <= tol})
        for b, h, hkv, sq, skv, d, causal in ATTN_SHAPES[:1] if quick else ATTN_SHAPES:
            q = torch.randn(b, h, sq, d, generator=gen).to(dt)
            kt = torch.randn(b, hkv, skv, d, generator=gen).to(dt)
            vt = torch.randn(b, hkv, skv, d, generator=gen).to(dt)
            ref = reference_attention(q, kt, vt, causal)
            got = attention.flash_attention(q, kt, vt, causal=causal, config=attn_cfg)
            err = (got.float() - ref).abs().max().item()
            tol = REL_TOL[dt] * max(1.0, ref.abs().max().item())
            out.append({"kernel": "triton_flash_attention", "dtype": DTYPE_NAMES[dt],
                        "shape": f"B={b} H={h} Hkv={hkv} Sq={sq} Skv={skv} D={d}"
                                 + (" causal" if causal else ""),
                        "max_abs_err": err, "tol": tol, "ok": err <= tol})
    return out


if __name__ == "__main__":
    import sys

    print(json.dumps(check(quick="--quick" in sys.argv[1:])))
