"""Tiled GEMM in Triton (our own kernel): C = A @ B with fp32 accumulation and grouped tile order.

LLM layers compute ``x @ W.T`` with W stored (out_features, in_features); pass ``W.t()`` as B and
the kernel follows its strides, the same access pattern cuBLAS gets from ``torch.matmul``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import triton
import triton.language as tl

from moatmeter.bench.kernels.autotune import Autotuner, Config


def _interpret_flag() -> bool:
    knobs = getattr(triton, "knobs", None)
    if knobs is not None and hasattr(knobs, "runtime"):
        return bool(knobs.runtime.interpret)
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


# ``@triton.jit`` decides at decoration time whether a kernel is interpreted, so the flag is read
# once, when this module is imported, and not again.
INTERPRETED = _interpret_flag()


def _index_scalar_args() -> None:
    """Let loops like ``range(0, K, BLOCK_K)`` run under Triton 3.6's interpreter.

    That interpreter holds a scalar kernel argument as a one-element 1-D NumPy array and indexes
    it with ``int()``, which current NumPy refuses ("only 0-dimensional arrays can be converted");
    later Triton releases take the element first. Triton 3.6 is the one PyTorch 2.11 pins, so the
    same fix is applied here, to the interpreter only and only where it is missing.
    """
    from triton.runtime import interpreter

    original = getattr(interpreter, "_patch_lang_tensor", None)
    if original is None or getattr(original, "moatmeter_fixed", False):
        return

    def patch_tensor(tensor: Any, scope: Any) -> None:
        original(tensor, scope)
        scope.set_attr(tensor, "__index__",
                       lambda self: int(np.asarray(self.handle.data).reshape(-1)[0]))

    patch_tensor.moatmeter_fixed = True  # type: ignore[attr-defined]
    interpreter._patch_lang_tensor = patch_tensor


if INTERPRETED:
    _index_scalar_args()


def interpreting() -> bool:
    """True if this module's kernels run under ``TRITON_INTERPRET=1`` (NumPy on the host)."""
    return INTERPRETED


def upcast_for_interpreter(dtype: torch.dtype) -> bool:
    """The interpreter keeps bf16 as raw uint16 and its ``tl.dot`` multiplies the bit patterns
    (triton-lang/triton#11584; the debugging guide says to cast bf16 to fp32). On a device the
    kernel keeps native bf16 operands for the tensor cores; only the interpreter upcasts."""
    return interpreting() and dtype == torch.bfloat16


@triton.jit
def _gemm_kernel(a_ptr, b_ptr, c_ptr, M, N, K,
                 s_am, s_ak, s_bk, s_bn, s_cm, s_cn,
                 BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                 GROUP_M: tl.constexpr, UPCAST: tl.constexpr):
    pid = tl.program_id(0)
    tiles_m = tl.cdiv(M, BLOCK_M)
    tiles_n = tl.cdiv(N, BLOCK_N)
    # Grouped order: GROUP_M consecutive row tiles walk the column tiles together, so the B
    # columns they load are still in L2 when the next row tile of the group asks for them.
    per_group = GROUP_M * tiles_n
    first_m = (pid // per_group) * GROUP_M
    rows = tl.minimum(tiles_m - first_m, GROUP_M)
    pid_m = first_m + (pid % per_group) % rows
    pid_n = (pid % per_group) // rows

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    m_ok = offs_m < M
    n_ok = offs_n < N
    a_ptrs = a_ptr + offs_m[:, None] * s_am + offs_k[None, :] * s_ak
    b_ptrs = b_ptr + offs_k[:, None] * s_bk + offs_n[None, :] * s_bn
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        k_ok = (k0 + offs_k) < K
        a = tl.load(a_ptrs, mask=m_ok[:, None] & k_ok[None, :], other=0.0)
        b = tl.load(b_ptrs, mask=k_ok[:, None] & n_ok[None, :], other=0.0)
        if UPCAST:
            a = a.to(tl.float32)
            b = b.to(tl.float32)
        acc = tl.dot(a, b, acc)
        a_ptrs += BLOCK_K * s_ak
        b_ptrs += BLOCK_K * s_bk
    c_ptrs = c_ptr + offs_m[:, None] * s_cm + offs_n[None, :] * s_cn
    tl.store(c_ptrs, acc.to(c_ptr.dtype.element_ty), mask=m_ok[:, None] & n_ok[None, :])


def gemm_configs(problem: dict[str, Any]) -> Sequence[Config]:
    """Candidate tilings: skinny tiles for decode (M small), large ones for prefill."""
    if problem["interpret"]:  # every config is real work in NumPy: keep the tiles small
        return [Config.of(BLOCK_M=16, BLOCK_N=16, BLOCK_K=16, GROUP_M=1),
                Config.of(BLOCK_M=16, BLOCK_N=32, BLOCK_K=32, GROUP_M=4)]
    if problem["M"] <= 64:
        return [Config.of(4, 4, BLOCK_M=16, BLOCK_N=64, BLOCK_K=128, GROUP_M=1),
                Config.of(4, 4, BLOCK_M=16, BLOCK_N=128, BLOCK_K=128, GROUP_M=1),
                Config.of(4, 3, BLOCK_M=32, BLOCK_N=64, BLOCK_K=256, GROUP_M=1),
                Config.of(8, 3, BLOCK_M=64, BLOCK_N=128, BLOCK_K=128, GROUP_M=8)]
    return [Config.of(8, 3, BLOCK_M=128, BLOCK_N=256, BLOCK_K=64, GROUP_M=8),
            Config.of(4, 4, BLOCK_M=128, BLOCK_N=128, BLOCK_K=64, GROUP_M=8),
            Config.of(8, 3, BLOCK_M=256, BLOCK_N=128, BLOCK_K=64, GROUP_M=8),
            Config.of(4, 4, BLOCK_M=64, BLOCK_N=256, BLOCK_K=32, GROUP_M=8),
            Config.of(4, 5, BLOCK_M=128, BLOCK_N=64, BLOCK_K=32, GROUP_M=8)]


TUNER = Autotuner(gemm_configs)


def _launch(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor, cfg: Config) -> None:
    M, K = a.shape
    N = b.shape[1]
    meta = cfg.kwargs()
    grid = (triton.cdiv(M, meta["BLOCK_M"]) * triton.cdiv(N, meta["BLOCK_N"]),)
    _gemm_kernel[grid](a, b, c, M, N, K, a.stride(0), a.stride(1), b.stride(0), b.stride(1),
                       c.stride(0), c.stride(1), UPCAST=upcast_for_interpreter(a.dtype),
                       num_warps=cfg.num_warps, num_stages=cfg.num_stages, **meta)


def matmul(a: torch.Tensor, b: torch.Tensor, *, out: torch.Tensor | None = None,
           config: Config | None = None) -> torch.Tensor:
    """``a @ b`` for 2-D fp16/bf16/fp32 tensors; autotuned per (M bucket, N, K, dtype, device)."""
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[0]:
        raise ValueError(f"matmul shapes do not chain: {tuple(a.shape)} @ {tuple(b.shape)}")
    if a.dtype != b.dtype:
        raise ValueError(f"matmul dtypes differ: {a.dtype} and {b.dtype}")
    M, N = a.shape[0], b.shape[1]
    c = out if out is not None else torch.empty((M, N), dtype=a.dtype, device=a.device)
    if config is None:
        bucket = 1 << max(0, (M - 1).bit_length())
        key = (min(bucket, 4096), N, a.shape[1], a.dtype, str(a.device))
        problem = {"M": M, "N": N, "K": a.shape[1], "interpret": interpreting()}
        config = TUNER.choose(key, problem, lambda cfg: _launch(a, b, c, cfg), a.device)
    _launch(a, b, c, config)
    return c


def linear(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """``x @ w.T`` with w stored (out_features, in_features), as in every LLM checkpoint."""
    return matmul(x, w.t())
