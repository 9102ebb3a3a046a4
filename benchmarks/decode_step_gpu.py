"""Check the step model's byte and FLOP accounting against a real decode step on this device.

Builds a dense catalog model (Llama-3.1-8B by default) with random bf16 weights, runs one decode
step of B sequences at context c (RMSNorm, QKV, SDPA over a KV cache, O, SwiGLU MLP, LM head:
the same work an engine does, in plain PyTorch kernels), captured as a CUDA graph and timed on
the device. Beside each time it prints what ``perf.step`` counts for that step:

- bytes: weights + B·c KV entries + activation traffic, and the bandwidth that implies
  (``bytes / measured``): above the datasheet would mean the model over-counts bytes;
- the roofline time at datasheet peaks (efficiency 1) and the share of it the step reaches;
- the calibrated prediction of ``perf.step.decode_step`` for ``--stack`` without its per-step
  engine overhead (a plain PyTorch step has no scheduler or sampler).

A serving engine fuses more than this script does (RMSNorm + residual, SwiGLU), so at large batch
its activation traffic is lower; at small batch both are a weight read.

    python benchmarks/decode_step_gpu.py --accelerator h100-sxm
    python benchmarks/decode_step_gpu.py --device cpu --layers 2 --batches 1,4 --context 128
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from moatmeter.bench.kernels.timing import graphed, time_fn
from moatmeter.catalog.load import load_catalog
from moatmeter.catalog.modelarch import ModelArch, arch_of
from moatmeter.errors import MoatError
from moatmeter.perf.deploy import resolve
from moatmeter.perf.step import decode_step


def build(arch: ModelArch, layers: int, dev: Any, dtype: Any) -> tuple[list[dict], Any]:
    import torch

    h, kvh, hd, inter = arch.hidden, arch.kv_heads, arch.head_dim, arch.intermediate

    def w(n: int, k: int) -> Any:
        return (torch.randn(n, k, device=dev, dtype=torch.float32) / math.sqrt(k)).to(dtype)

    blocks = [{"ln1": torch.ones(h, device=dev, dtype=dtype),
               "qkv": w((arch.heads + 2 * kvh) * hd, h), "o": w(h, arch.heads * hd),
               "ln2": torch.ones(h, device=dev, dtype=dtype),
               "gate_up": w(2 * inter, h), "down": w(h, inter)} for _ in range(layers)]
    head = w(arch.vocab, h)
    return blocks, head


def step_fn(arch: ModelArch, blocks: list[dict], head: Any, kv: list[tuple[Any, Any]],
            x: Any) -> Callable[[], Any]:
    import torch.nn.functional as F

    hq, kvh, hd = arch.heads, arch.kv_heads, arch.head_dim
    B = x.shape[0]

    def rms(t: Any, g: Any) -> Any:
        return F.rms_norm(t, (t.shape[-1],), g, 1e-5)

    def run() -> Any:
        hcur = x
        for blk, (k, v) in zip(blocks, kv, strict=True):
            a = rms(hcur, blk["ln1"]) @ blk["qkv"].t()
            q = a[:, : hq * hd].view(B, hq, 1, hd)
            att = F.scaled_dot_product_attention(q, k, v, enable_gqa=hq != kvh)
            hcur = hcur + att.reshape(B, hq * hd) @ blk["o"].t()
            gu = rms(hcur, blk["ln2"]) @ blk["gate_up"].t()
            g, u = gu.chunk(2, dim=-1)
            hcur = hcur + (F.silu(g) * u) @ blk["down"].t()
        return hcur @ head.t()

    return run


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="llama-3.1-8b", help="dense catalog model")
    ap.add_argument("--accelerator", default="h100-sxm", help="catalog entry of this device")
    ap.add_argument("--stack", default="vllm-cuda", help="stack whose calibration to compare")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--batches", default="1,8,32,64,128,256")
    ap.add_argument("--context", type=int, default=1024)
    ap.add_argument("--layers", type=int, help="fewer layers than the model (quick CPU checks)")
    args = ap.parse_args()
    import torch

    cat = load_catalog()
    try:
        entry = cat.model(args.model)
        arch = arch_of(entry)
        cat.accelerator(args.accelerator)
    except MoatError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if arch.n_experts or arch.kv_lora_rank:
        print("error: --model must be a dense GQA/MHA model", file=sys.stderr)
        return 2
    dev = torch.device(args.device)
    dtype = torch.bfloat16
    layers = args.layers or arch.layers
    batches = [int(b) for b in args.batches.split(",")]
    ctx = args.context
    torch.manual_seed(0)
    t0 = time.perf_counter()
    blocks, head = build(arch, layers, dev, dtype)
    print(f"{args.model}: {layers} layers, random bf16 weights built in "
          f"{time.perf_counter() - t0:.1f} s on {dev}")

    r = resolve(cat, accelerator=args.accelerator, stack=args.stack, model=args.model, tp=1, pp=1,
                weight_dtype="bf16", kv_dtype="bf16", context=ctx + 1)
    s = r.s
    s0 = s.with_eff(s.eff_c, s.eff_m, np.zeros(1))
    ideal = s.with_eff(np.ones(1), np.ones(1), np.zeros(1))
    print(f"{'B':>5} {'measured':>10} {'model bytes':>12} {'implied BW':>11} {'roof@peak':>10} "
          f"{'of roof':>8} {'calibrated':>11} {'calib/meas':>10}")
    for B in batches:
        kv = [(torch.randn(B, arch.kv_heads, ctx, arch.head_dim, device=dev, dtype=dtype),
               torch.randn(B, arch.kv_heads, ctx, arch.head_dim, device=dev, dtype=dtype))
              for _ in range(layers)]
        x = torch.randn(B, arch.hidden, device=dev, dtype=dtype)
        run = step_fn(arch, blocks, head, kv, x)
        with torch.inference_mode():
            run()  # allocations and kernel choice before capture
            # the same graph capture and event timing `bench device` uses (eager on a CPU)
            step = graphed(run, dev) or run
            meas = time_fn(step, dev, warmup=3, min_reps=20, max_reps=20, min_time_s=0.0,
                           max_time_s=60.0)
        b = np.array([float(B)])
        c = np.array([float(ctx)])
        if layers != arch.layers:  # the model's accounting is for the whole model
            print(f"{B:5d} {meas * 1e3:8.3f}ms  (truncated model: no comparison)")
        else:
            roof = decode_step(ideal, b, c)
            cal = decode_step(s0, b, c)
            nbytes = float(roof.bytes_per_device[0])
            print(f"{B:5d} {meas * 1e3:8.3f}ms {nbytes / 1e9:10.2f}GB "
                  f"{nbytes / meas / 1e9:8.0f}GB/s {roof.total[0] * 1e3:8.3f}ms "
                  f"{roof.total[0] / meas:8.2f} {cal.total[0] * 1e3:9.3f}ms "
                  f"{cal.total[0] / meas:10.2f}")
        del kv, x, run, step
        if dev.type == "cuda":
            torch.cuda.empty_cache()
    return 0


if __name__ == "__main__":
    sys.exit(main())
