"""Our Triton GEMM and flash attention against PyTorch, under the Triton interpreter on the CPU.

TRITON_INTERPRET must be set before Triton is imported: ``@triton.jit`` decides at decoration
time. Shapes are small and ragged (not multiples of the tiles) so masks are exercised.
"""

from __future__ import annotations

import os

os.environ["TRITON_INTERPRET"] = "1"

import pytest
import torch
import torch.nn.functional as F

from moatmeter.bench.kernels import attention, gemm
from moatmeter.bench.kernels.autotune import Config
from moatmeter.bench.kernels.selfcheck import REL_TOL, check, reference_attention

DTYPES = [torch.bfloat16, torch.float16, torch.float32]


def test_kernels_are_interpreted() -> None:
    assert gemm.interpreting(), "moatmeter.bench.kernels was imported before TRITON_INTERPRET=1"


def _close(got: torch.Tensor, ref: torch.Tensor, dtype: torch.dtype) -> None:
    err = (got.float() - ref.float()).abs().max().item()
    tol = REL_TOL[dtype] * max(1.0, ref.abs().max().item())
    assert err <= tol, f"max |err| {err} > {tol} ({dtype})"


@pytest.mark.parametrize("dtype", DTYPES, ids=["bf16", "fp16", "fp32"])
@pytest.mark.parametrize(("m", "n", "k"), [(1, 40, 72), (19, 33, 50)])
def test_gemm_matches_torch(dtype: torch.dtype, m: int, n: int, k: int) -> None:
    g = torch.Generator().manual_seed(m * n + k)
    x = torch.randn(m, k, generator=g).to(dtype)
    w = torch.randn(n, k, generator=g).to(dtype)
    cfg = Config.of(BLOCK_M=16, BLOCK_N=32, BLOCK_K=32, GROUP_M=2)
    got = gemm.matmul(x, w.t(), config=cfg)  # W stored (out, in): strided B, as in a checkpoint
    assert got.dtype == dtype and got.shape == (m, n)
    _close(got, torch.matmul(x, w.t()), dtype)


def test_gemm_contiguous_b_and_out_buffer() -> None:
    a = torch.randn(17, 24).to(torch.float16)
    b = torch.randn(24, 20).to(torch.float16)
    out = torch.full((17, 20), float("nan"), dtype=torch.float16)
    res = gemm.matmul(a, b, out=out, config=Config.of(BLOCK_M=16, BLOCK_N=16, BLOCK_K=16,
                                                       GROUP_M=1))
    assert res.data_ptr() == out.data_ptr() and not torch.isnan(out).any()
    _close(out, a.float() @ b.float(), torch.float16)


def test_gemm_autotuner_times_every_config_and_caches() -> None:
    x = torch.randn(5, 40).to(torch.bfloat16)
    w = torch.randn(24, 40).to(torch.bfloat16)
    gemm.TUNER.cache.clear()
    got = gemm.linear(x, w)
    _close(got, x.float() @ w.float().t(), torch.bfloat16)
    key = (8, 24, 40, torch.bfloat16, "cpu")  # M bucketed to the next power of two
    assert key in gemm.TUNER.cache
    timed = gemm.TUNER.timings[key]
    assert len(timed) == len(gemm.gemm_configs({"M": 5, "interpret": True}))
    assert all(t > 0 for t in timed.values())
    assert str(gemm.TUNER.cache[key]) == min(timed, key=timed.get)


def test_gemm_rejects_mismatched_operands() -> None:
    with pytest.raises(ValueError, match="do not chain"):
        gemm.matmul(torch.zeros(4, 5), torch.zeros(6, 4))
    with pytest.raises(ValueError, match="dtypes differ"):
        gemm.matmul(torch.zeros(4, 5), torch.zeros(5, 4, dtype=torch.float16))


ATTN_CASES = [  # B, H, Hkv, Sq, Skv, D, causal, key splits
    (1, 4, 2, 21, 21, 32, True, 1),  # prefill, GQA, ragged length
    (2, 4, 1, 1, 37, 32, False, 3),  # decode, MQA, split-KV with a ragged last split
    (1, 2, 2, 5, 29, 24, True, 2),  # chunked prefill over a cache: bottom-right causal, D not 2^k
]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("case", ATTN_CASES, ids=["prefill", "decode", "chunk"])
def test_flash_attention_matches_reference(dtype: torch.dtype, case: tuple) -> None:
    b, h, hkv, sq, skv, d, causal, splits = case
    g = torch.Generator().manual_seed(sq * skv + d)
    q = torch.randn(b, h, sq, d, generator=g).to(dtype)
    k = torch.randn(b, hkv, skv, d, generator=g).to(dtype)
    v = torch.randn(b, hkv, skv, d, generator=g).to(dtype)
    got = attention.flash_attention(q, k, v, causal=causal,
                                    config=Config.of(BLOCK_M=16, BLOCK_N=16, SPLITS=splits))
    assert got.shape == q.shape and got.dtype == dtype
    _close(got, reference_attention(q, k, v, causal), dtype)
    if sq == skv or not causal:  # where SDPA's causal convention agrees with a KV cache's
        sdpa = F.scaled_dot_product_attention(q, k, v, is_causal=causal, enable_gqa=h != hkv)
        _close(got, sdpa, dtype)


def test_flash_attention_autotunes_splits() -> None:
    q = torch.randn(1, 4, 1, 16).to(torch.float16)
    k = torch.randn(1, 2, 40, 16).to(torch.float16)
    attention.TUNER.cache.clear()
    got = attention.flash_attention(q, k, k, causal=False)
    _close(got, reference_attention(q, k, k, False), torch.float16)
    (timed,) = attention.TUNER.timings.values()
    assert {"SPLITS=1" in c or "SPLITS=2" in c for c in timed} == {True}
    assert len(timed) == 2


def test_flash_attention_rejects_bad_shapes() -> None:
    q = torch.zeros(1, 3, 4, 16)
    with pytest.raises(ValueError, match="incompatible"):
        attention.flash_attention(q, torch.zeros(1, 2, 4, 16), torch.zeros(1, 2, 4, 16))
    with pytest.raises(ValueError, match="incompatible"):  # more queries than cached keys
        attention.flash_attention(torch.zeros(1, 2, 8, 16), torch.zeros(1, 2, 4, 16),
                                  torch.zeros(1, 2, 4, 16))


def test_selfcheck_reports_every_kernel_ok() -> None:
    rows = check(quick=True)
    assert {r["kernel"] for r in rows} == {"triton_gemm", "triton_flash_attention"}
    assert all(r["ok"] and r["max_abs_err"] <= r["tol"] for r in rows)
