"""Compile our Triton kernels ahead of time for GPU targets, with no GPU present.

``python -m moatmeter.bench.kernels.aot`` builds the GEMM, flash-attention and split-KV combine
kernels for NVIDIA sm_90 (to a cubin through ptxas) and AMD gfx942 (to an hsaco) and prints, per
kernel and target, whether it compiled and how much shared memory it needs. It is how CI checks
the device code paths that the interpreter cannot: layouts, tensor-core dots, pipelining.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from typing import Any

if os.environ.get("TRITON_INTERPRET", "0") == "1":
    raise SystemExit("unset TRITON_INTERPRET: interpreted kernels cannot be compiled")

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from moatmeter.bench.kernels import attention, gemm

TARGETS = {"sm_90": GPUTarget("cuda", 90, 32), "gfx942": GPUTarget("hip", "gfx942", 64)}
FP32_PTRS = {"pacc_ptr", "pml_ptr"}
FLOAT_ARGS = {"qk_scale"}


@dataclass(frozen=True)
class Build:
    kernel: str
    target: str
    dtype: str
    config: str
    ok: bool
    shared_bytes: int
    artifacts: list[str]
    error: str = ""


def _signature(fn: Any, dtype: str, consts: dict[str, Any]) -> dict[str, str]:
    sig = {}
    for p in fn.params:
        if p.name in consts:
            sig[p.name] = "constexpr"
        elif p.name.endswith("_ptr"):
            sig[p.name] = "*fp32" if p.name in FP32_PTRS else f"*{dtype}"
        elif p.name in FLOAT_ARGS:
            sig[p.name] = "fp32"
        else:
            sig[p.name] = "i32"
    return sig


def build(fn: Any, name: str, target: str, dtype: str, consts: dict[str, Any], num_warps: int,
          num_stages: int) -> Build:
    src = ASTSource(fn=fn, signature=_signature(fn, dtype, consts), constexprs=consts)
    cfg = ",".join(f"{k}={v}" for k, v in consts.items()) + f",w={num_warps},s={num_stages}"
    try:
        k = triton.compile(src, target=TARGETS[target],
                           options={"num_warps": num_warps, "num_stages": num_stages})
    except Exception as exc:
        return Build(name, target, dtype, cfg, False, 0, [],
                     f"{type(exc).__name__}: {str(exc).strip().splitlines()[-1][:200]}")
    return Build(name, target, dtype, cfg, True, int(getattr(k.metadata, "shared", 0)),
                 sorted(k.asm.keys()))


def build_all(targets: tuple[str, ...] = ("sm_90", "gfx942"), quick: bool = False) -> list[Build]:
    """The configurations bench device tries first on a GPU: a prefill and a decode GEMM tile,
    causal prefill attention, split-KV decode attention and its combine. ``quick``: every kernel
    on the first target, the decode GEMM alone on the others (CI time)."""
    out = []
    pre = gemm.gemm_configs({"M": 4096, "interpret": False})[1]
    dec = gemm.gemm_configs({"M": 1, "interpret": False})[0]
    head = {"GROUP": 4, "HEAD_DIM": 128, "BLOCK_D": 128, "UPCAST": False}
    a_pre = attention.attention_configs({"rows": 4096, "BLOCK_D": 128, "interpret": False})[0]
    a_dec = attention.attention_configs({"rows": 4, "BLOCK_D": 128, "interpret": False})[2]
    for i, t in enumerate(targets):
        full = not quick or i == 0
        for cfg in (pre, dec) if full else (dec,):
            out.append(build(gemm._gemm_kernel, "gemm", t, "bf16",
                             {**cfg.kwargs(), "UPCAST": False}, cfg.num_warps, cfg.num_stages))
        if not full:
            continue
        for cfg, causal in ((a_pre, True), (a_dec, False)):
            out.append(build(attention._attn_fwd, "flash_attention", t, "bf16",
                             {**head, **cfg.kwargs(), "CAUSAL": causal}, cfg.num_warps,
                             cfg.num_stages))
        out.append(build(attention._combine, "attention_combine", t, "bf16",
                         {"GROUP": 4, "HEAD_DIM": 128, "BLOCK_D": 128, "BLOCK_M": 16,
                          "SPLITS": a_dec.kwargs()["SPLITS"]}, 4, 1))
    return out


if __name__ == "__main__":
    targets = tuple(a for a in sys.argv[1:] if a in TARGETS) or ("sm_90", "gfx942")
    print(json.dumps([b.__dict__ for b in build_all(targets, quick="--quick" in sys.argv)]))
