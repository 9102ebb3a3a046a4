"""Performance model: hand-computed physics, feasibility reasons and property tests."""

from __future__ import annotations

import math
import re
from dataclasses import replace

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from moatmeter.catalog.load import load_catalog
from moatmeter.catalog.modelarch import arch_of
from moatmeter.errors import MoatError
from moatmeter.perf import (
    SLO,
    Calibration,
    DeploymentGrid,
    Workload,
    default_calibration,
    evaluate_grid,
    predict_deployment,
    single_stream_bound,
)
from moatmeter.perf import memory as mem
from moatmeter.perf.calibrate import dtype_class
from moatmeter.perf.deploy import resolve
from moatmeter.perf.serving import closed_loop, goodput, open_loop
from moatmeter.perf.step import CHUNK_TOKENS as CHUNK
from moatmeter.perf.step import (
    EAGER_DECODE,
    EAGER_PREFILL,
    MMVQ_EFF,
    MMVQ_MAX_TOKENS,
    OVERLAP_LAG,
    SCHED_LAG,
    StepInputs,
    decode_step,
    experts_touched,
    prefill_time,
)

CAT = load_catalog()


# ------------------------------------------------------------------ physics, hand-computed


def test_llama31_70b_weight_and_kv_bytes():
    a = arch_of(CAT.model("llama-3.1-70b"))
    # 70.55e9 parameters x 2 bytes
    assert mem.model_weight_bytes(a, "bf16") == pytest.approx(141.1e9, rel=0.005)
    # 2 (K,V) x 80 layers x 8 KV heads x 128 head_dim x 2 bytes
    assert mem.kv_bytes_per_token(a, "bf16") == 327_680
    assert mem.kv_bytes_per_token(a, "fp8") == 163_840
    # int4 weights shrink the blocks but keep the 16-bit embeddings
    q = mem.model_weight_bytes(a, "int4")
    assert 0.25 * 141e9 < q < 0.35 * 141e9


def test_decode_upper_bound_on_h100():
    bound = single_stream_bound(CAT, "h100-sxm", "llama-3.1-70b", "bf16")
    assert bound == pytest.approx(3.35e12 / 1.411e11, rel=0.01)  # ≈ 23.7 tok/s per device
    # priors only (eff_m 0.7, 3 ms/step): the check must not drift with the fitted data
    p = predict_deployment(CAT, accelerator="h100-sxm", count=2, tp=2, stack="vllm-cuda",
                           model="llama-3.1-70b", weight_dtype="bf16", input_tokens=128,
                           output_tokens=256, concurrency=1, calib=Calibration())
    assert p.feasible
    decode_tps = 1.0 / p.tpot_s
    assert decode_tps <= 2 * bound  # two devices' bandwidth at most
    assert decode_tps > 0.4 * 2 * bound  # and not absurdly pessimistic


def test_weights_do_not_fit_single_h100():
    p = predict_deployment(CAT, accelerator="h100-sxm", count=1, tp=1, stack="vllm-cuda",
                           model="llama-3.1-70b", weight_dtype="bf16", input_tokens=1024,
                           output_tokens=256, concurrency=4)
    assert not p.feasible and p.reason.startswith("weights do not fit")
    assert p.memory.weights_gb == pytest.approx(141.1e9 / 2**30, rel=0.005)


def test_moe_expected_experts():
    e = experts_touched(np.array([8.0, 8.0, 256.0]), np.array([2.0, 2.0, 8.0]),
                        np.array([1.0, 1000.0, 1.0]))
    assert e[0] == pytest.approx(2.0)
    assert e[1] == pytest.approx(8.0)
    assert e[2] == pytest.approx(8.0)
    # 2 tokens picking 2 of 8: 8·(1 − (6/8)²) = 3.5 distinct experts
    two = experts_touched(np.array([8.0]), np.array([2.0]), np.array([2.0]))[0]
    assert two == pytest.approx(3.5, rel=1e-12)


def test_mla_kv_is_latent_and_replicated_under_tp():
    a = arch_of(CAT.model("deepseek-v3"))
    assert mem.kv_bytes_per_token(a, "bf16") == (512 + 64) * a.layers * 2
    r = resolve(CAT, accelerator="h200-sxm", stack="vllm-cuda", model="deepseek-v3",
                tp=np.array([8]), pp=1, weight_dtype="fp8", kv_dtype="bf16", context=4096)
    assert r.s.kv_tok[0] == 8 * (512 + 64) * a.layers * 2


def test_fp8_mlp_keeps_attention_and_end_layers_16_bit():
    a = arch_of(CAT.model("llama-3.1-405b"))
    mlp = (a.total_params - a.embedding_params - a.attention_params) * (a.layers - 2) / a.layers
    assert mem.model_weight_bytes(a, "fp8_mlp") == pytest.approx(2 * a.total_params - mlp)
    assert 480e9 < mem.model_weight_bytes(a, "fp8_mlp") < 495e9
    assert mem.model_weight_bytes(a, "fp8") < 0.85 * mem.model_weight_bytes(a, "fp8_mlp")
    r = resolve(CAT, accelerator="h100-sxm", stack="vllm-cuda", model="llama-3.1-405b",
                tp=np.array([8, 8]), pp=1, weight_dtype=np.array(["fp8", "fp8_mlp"]),
                kv_dtype="bf16", context=4096)
    assert r.feasible.all() and r.compute_dtype.tolist() == ["fp8", "fp8"]
    assert r.max_sequences[1] < 0.7 * r.max_sequences[0]


def test_dp_attention_keeps_one_kv_copy_and_every_rank_holds_attention_weights():
    a = arch_of(CAT.model("deepseek-v3"))
    kw = dict(accelerator="h200-sxm", stack="sglang-cuda", model="deepseek-v3", tp=np.array([8, 8]),
              pp=1, weight_dtype="fp8", kv_dtype="bf16", context=4096)
    r = resolve(CAT, **kw, dp_attention=np.array([False, True]))
    assert r.s.kv_tok[1] == (512 + 64) * a.layers * 2 == r.s.kv_tok[0] / 8
    # each of the 8 ranks keeps the whole attention block: 7 extra copies (fp8: 1 byte/param)
    assert r.weights_per_device[1] - r.weights_per_device[0] == pytest.approx(
        7 * a.attention_params / 8, rel=1e-9)
    assert r.max_sequences[1] > 4 * r.max_sequences[0]
    # fp8_mlp keeps attention 16-bit, so the replicated attention copies cost 2 bytes per param
    a405 = arch_of(CAT.model("llama-3.1-405b"))
    r2 = resolve(CAT, accelerator="h200-sxm", stack="sglang-cuda", model="llama-3.1-405b",
                 tp=np.array([8, 8]), pp=1, weight_dtype="fp8_mlp", kv_dtype="bf16",
                 context=4096, dp_attention=np.array([False, True]))
    assert r2.weights_per_device[1] - r2.weights_per_device[0] == pytest.approx(
        7 * 2 * a405.attention_params / 8, rel=1e-9)
    # the row's notes switch it on
    from moatmeter.perf.observations import map_rows
    row = {"id": "x", "source": "s", "accelerator": "NVIDIA H200 SXM 141GB", "count": "8",
           "engine": "SGLang", "backend": "CUDA", "engine_version": "0.4.3, --enable-dp-attention",
           "model": "deepseek-ai/DeepSeek-R1", "weight_dtype": "fp8", "kv_dtype": "",
           "scenario": "fixed_concurrency", "concurrency": "32", "input_len": "3200",
           "output_len": "800", "metric": "output_tokens_per_s", "value": "400", "notes": "TP8"}
    # ... unless the notes say the flag had no effect (SGLang without --dp)
    inactive = {**row, "id": "z", "notes": "TP8, DP attention inactive (no --dp)"}
    obs, _ = map_rows(CAT, [row, {**row, "id": "y", "engine_version": "0.4.3"}, inactive])
    assert [o.dp_attention for o in obs] == [True, False, False]


def _grid(**kw):
    n = max(len(v) for v in kw.values() if isinstance(v, list))
    full = {k: np.array(v if isinstance(v, list) else [v] * n) for k, v in kw.items()}
    return DeploymentGrid(**full)


def test_feasibility_reasons():
    g = _grid(accelerator=["mi300x", "h100-sxm", "a100-sxm-80gb", "rtx-4090", "h100-sxm",
                           "rtx-3090", "h100-sxm", "h100-sxm"],
              stack=["vllm-cuda", "llamacpp-cuda", "vllm-cuda", "llamacpp-vulkan", "vllm-cuda",
                     "vllm-cuda", "vllm-cuda", "vllm-cuda"],
              tp=[1, 1, 1, 2, 3, 4, 2, 8], pp=1,
              weight_dtype=["bf16", "fp8", "fp8", "int4", "bf16", "int4", "bf16", "fp4"],
              kv_dtype="bf16")
    r = evaluate_grid(CAT, "llama-3.1-8b", g, Workload(1024, 256), SLO(2.0, 0.1))
    assert "does not support CDNA3" in r.reason[0]
    assert "has no fp8 weights" in r.reason[1]
    assert r.feasible[2]  # A100 has no FP8 tensor cores: weight-only FP8, bf16 math
    assert "tensor parallelism" in r.reason[3]
    assert "does not divide the attention heads" in r.reason[4]
    assert "scale-up domain" in r.reason[5]
    assert r.feasible[6] and r.reason[6] == ""
    assert r.feasible[7]  # H100 has no fp4 peak: weight-only
    assert r.bottleneck[0] == "" and r.goodput_rps[0] == 0
    assert len(r.calibration_note) == len(g)


def test_weight_only_fp8_on_ampere_uses_bf16_math():
    r = resolve(CAT, accelerator="a100-sxm-80gb", stack="vllm-cuda", model="llama-3.1-8b",
                tp=1, pp=1, weight_dtype="fp8", kv_dtype="bf16", context=2048)
    assert r.compute_dtype[0] == "bf16" and "weight-only" in r.dtype_note[0]
    r2 = resolve(CAT, accelerator="h100-sxm", stack="vllm-cuda", model="llama-3.1-8b",
                 tp=1, pp=1, weight_dtype="fp8", kv_dtype="bf16", context=2048)
    assert r2.compute_dtype[0] == "fp8"


def test_vector_only_stack_family_uses_the_fp32_rate():
    """llama.cpp Vulkan has no XMX path on Arc A770: its prefill peak is the vector fp32 rate."""
    acc = CAT.accelerator("arc-a770")
    kw = dict(accelerator="arc-a770", model="llama-2-7b", tp=1, pp=1, weight_dtype="q4_0",
              kv_dtype="fp16", context=640)
    vk = resolve(CAT, stack="llamacpp-vulkan", **kw)
    sy = resolve(CAT, stack="llamacpp-sycl", **kw)
    assert vk.compute_dtype[0] == "fp32" and "no matrix-unit path" in vk.dtype_note[0]
    assert vk.s.peak[0] == pytest.approx(acc.peak_tflops["fp32"] * 1e12)
    assert sy.s.peak[0] == pytest.approx(acc.peak_tflops["fp16"] * 1e12)
    # same efficiencies: an 8x lower peak makes the compute-bound prefill ~8x slower
    s_vk = vk.s.with_eff(np.array([0.5]), np.array([0.8]), np.array([1e-3]))
    s_sy = sy.s.with_eff(np.array([0.5]), np.array([0.8]), np.array([1e-3]))
    t_vk = prefill_time(s_vk, 512.0).total[0]
    t_sy = prefill_time(s_sy, 512.0).total[0]
    assert 5.0 < t_vk / t_sy < 8.5


def test_fp16_accumulating_stack_gets_the_geforce_fp16_accumulate_rate():
    """llama.cpp multiplies F16 matrices with FP16 accumulation: on a GeForce card that runs at
    twice the FP32-accumulate rate the catalog lists as fp16; on an A100 the two are the same."""
    kw = dict(model="llama-2-7b", tp=1, pp=1, weight_dtype="q4_0", kv_dtype="fp16", context=640)
    g = CAT.accelerator("rtx-4090")
    lc = resolve(CAT, accelerator="rtx-4090", stack="llamacpp-cuda", **kw)
    vk = resolve(CAT, accelerator="rtx-4090", stack="llamacpp-vulkan", **kw)
    vl = resolve(CAT, accelerator="rtx-4090", stack="vllm-cuda", **{**kw, "weight_dtype": "bf16"})
    assert g.fp16_acc16_tflops == pytest.approx(2 * g.peak_tflops["fp16"], rel=1e-3)
    assert lc.s.peak[0] == pytest.approx(g.fp16_acc16_tflops * 1e12) == vk.s.peak[0]
    assert vl.s.peak[0] == pytest.approx(g.peak_tflops["bf16"] * 1e12)
    assert "FP16-accumulate rate" in lc.dtype_note[0] and "FP16" not in vl.dtype_note[0]
    a = resolve(CAT, accelerator="a100-sxm-80gb", stack="llamacpp-cuda", **kw)
    assert a.s.peak[0] == pytest.approx(CAT.accelerator("a100-sxm-80gb").peak_tflops["bf16"] * 1e12)


def test_goodput_meets_slo_and_below_saturation():
    g = _grid(accelerator=["h100-sxm", "h200-sxm", "mi300x", "l40s"],
              stack=["vllm-cuda", "trtllm-cuda", "vllm-rocm", "vllm-cuda"], tp=[1, 1, 1, 1],
              pp=1, weight_dtype=["bf16", "fp8", "bf16", "fp8"], kv_dtype="bf16")
    slo = SLO(ttft_p95_s=1.0, tpot_p95_s=0.05)
    r = evaluate_grid(CAT, "llama-3.1-8b", g, Workload(1024, 256), slo, calib=Calibration())
    assert r.feasible.all()
    assert (r.goodput_rps > 0).all()
    assert (r.ttft_p95_s <= slo.ttft_p95_s + 1e-9).all()
    assert (r.tpot_p95_s <= slo.tpot_p95_s + 1e-9).all()
    assert (r.output_tokens_per_s <= r.max_output_tokens_per_s * 1.0001).all()
    assert (r.eff_sigma > 0).all() and (r.eff_compute <= 1).all() and (r.eff_memory <= 1).all()
    # An SLO no single request meets gives zero goodput
    r0 = evaluate_grid(CAT, "llama-3.1-8b", g, Workload(1024, 256), SLO(1e-4, 1e-4))
    assert (r0.goodput_rps == 0).all()


def test_rate_prediction_and_overload():
    kw = dict(accelerator="h100-sxm", count=1, tp=1, stack="vllm-cuda", model="llama-3.1-8b",
              weight_dtype="bf16", input_tokens=512, output_tokens=128)
    low = predict_deployment(CAT, rate=0.5, **kw)
    assert low.requests_per_s == pytest.approx(0.5, rel=1e-3)
    assert low.ttft_p95_s >= low.ttft_s
    over = predict_deployment(CAT, rate=low.saturation_rps * 2, **kw)
    assert math.isinf(over.ttft_s) and any("saturation" in n for n in over.notes)


def test_fallback_note_and_wider_sigma():
    cal = Calibration()
    cal.counts = {lv: {} for lv in cal.counts}
    cal.counts["pair"]["vllm-cuda|Hopper"] = 10
    cal.counts["stack"]["vllm-cuda"] = 10
    cal.counts["family"]["Hopper"] = 10
    cal.sigma["pair"]["vllm-cuda|Hopper"] = 0.1
    cal.sigma["stack"]["vllm-cuda"] = 0.1
    cal.sigma["family"]["Hopper"] = 0.1
    seen = cal.lookup("vllm-cuda", "vLLM", "Hopper", "nvidia/gpu/datacenter")
    unseen = cal.lookup("vllm-cuda", "vLLM", "Blackwell", "nvidia/gpu/datacenter")
    assert "calibrated on 10" in seen.note
    assert unseen.note.startswith("fallback") and unseen.sigma > seen.sigma


def test_prefill_share_of_the_request_time():
    from moatmeter.perf.calibrate import prefill_share

    assert prefill_share(0.2, 0.01, 21) == pytest.approx(0.5)  # 0.2 s prompt, 20 x 10 ms decode
    assert prefill_share(0.5, float("nan"), 1) == 1.0  # prefill-only: all prompt
    assert prefill_share(float("inf"), 0.01, 100) == 0.0  # infeasible: no widening
    a = prefill_share(np.array([0.1, 1.0]), np.array([0.01, 0.01]), np.array([11.0, 11.0]))
    assert a == pytest.approx([0.5, 1.0 / 1.1])


def test_throughput_band_widens_with_the_prompts_share_of_the_request():
    """Prefill-heavy work is predicted less well (held-out CV): the same deployment's tokens/s
    band is wider for 32k-token prompts with 16-token answers than for chat, by 1 + 0.5 x share;
    TPOT's and TTFT's bands are fixed multiples of sigma."""
    from moatmeter.perf.calibrate import DECODE_SPREAD, LATENCY_SPREAD, PREFILL_WIDEN, prefill_share

    kw = dict(accelerator="h100-sxm", count=1, tp=1, stack="vllm-cuda", model="llama-3.1-8b",
              concurrency=1)
    chat = predict_deployment(CAT, input_tokens=128, output_tokens=1024, **kw)
    rag = predict_deployment(CAT, input_tokens=32000, output_tokens=16, **kw)
    assert chat.sigma == rag.sigma

    def half(band, x):
        return math.log(band.p90 / x) / 1.2816

    s_chat = prefill_share(chat.ttft_s, chat.tpot_s, 1024)
    s_rag = prefill_share(rag.ttft_s, rag.tpot_s, 16)
    assert s_chat < 0.05 and s_rag > 0.8
    assert (chat.prefill_share, rag.prefill_share) == (s_chat, s_rag)
    for p, sh in ((chat, s_chat), (rag, s_rag)):
        assert half(p.output_tokens_per_s_band, p.output_tokens_per_s) == pytest.approx(
            p.sigma * DECODE_SPREAD * (1.0 + PREFILL_WIDEN * sh))
        assert half(p.tpot_band, p.tpot_s) == pytest.approx(p.sigma * LATENCY_SPREAD["tpot"])
    assert half(rag.ttft_band, rag.ttft_s) == pytest.approx(rag.sigma * LATENCY_SPREAD["ttft"])
    # the planner's Monte Carlo draws realised goodput with the widened sigma too
    g = DeploymentGrid(accelerator=np.array(["h100-sxm"]), stack=np.array(["vllm-cuda"]),
                       tp=np.array([1]), pp=np.array([1]), weight_dtype=np.array(["bf16"]),
                       kv_dtype=np.array(["bf16"]))
    r_chat = evaluate_grid(CAT, "llama-3.1-8b", g, Workload(128, 1024), SLO(1.0, 0.1))
    r_rag = evaluate_grid(CAT, "llama-3.1-8b", g, Workload(32000, 16), SLO(10.0, 0.1))
    assert r_rag.eff_sigma[0] > 1.35 * r_chat.eff_sigma[0]
    assert r_chat.eff_sigma[0] < 1.05 * DECODE_SPREAD * chat.sigma


def test_weight_format_has_its_own_calibration_offset():
    """A pair's fp4 kernels may lag its 16-bit ones: the offset applies to that format only,
    the grid passes each row's format, and a format the pair never ran is named in the note."""
    cal = Calibration.from_json(default_calibration().to_json())
    fp4_key = f"vllm-cuda|Hopper|{dtype_class('mxfp4')}"
    cal.offsets["pair_dtype"][fp4_key] = [-1.5, -1.0, 0.5]
    cal.counts["pair_dtype"].pop("vllm-cuda|Hopper|fp8", None)
    args = ("vllm-cuda", "vLLM", "Hopper", "nvidia/gpu/datacenter")
    bf16, fp4 = cal.lookup(*args, dclass="bf16"), cal.lookup(*args, dclass=dtype_class("mxfp4"))
    fp8 = cal.lookup(*args, dclass="fp8")
    assert fp4.eff_compute < bf16.eff_compute and fp4.eff_memory < bf16.eff_memory
    assert fp4.overhead_s > bf16.overhead_s
    assert "none with fp8 weights" in fp8.note and "none with" not in bf16.note
    g = DeploymentGrid(accelerator=np.array(["h100-sxm"] * 2), stack=np.array(["vllm-cuda"] * 2),
                       tp=np.array([1, 1]), pp=np.array([1, 1]),
                       weight_dtype=np.array(["bf16", "mxfp4"]), kv_dtype=np.array(["bf16"] * 2))
    r = evaluate_grid(CAT, "llama-3.1-8b", g, Workload(512, 128), SLO(10.0, 1.0), cal)
    assert r.eff_compute[1] == pytest.approx(fp4.eff_compute)
    assert r.eff_compute[1] < r.eff_compute[0]
    assert r.eff_compute[0] == pytest.approx(bf16.eff_compute)
    assert dtype_class("mxfp4") != dtype_class("nvfp4") == "fp4"


def test_a_chip_family_has_an_offset_per_architecture_class_across_stacks():
    """What a chip does to MoE or MLA models is shared by every engine on it (the family_arch
    level): the offset moves that class on that family under any stack, and nothing else."""
    cal = Calibration.from_json(default_calibration().to_json())
    assert cal.counts["family_arch"]["Hopper|mla-moe"] > 0  # the bundled fit has the level
    line = "nvidia/gpu/datacenter"
    stacks = (("vllm-cuda", "vLLM"), ("sglang-cuda", "SGLang"), ("trtllm-cuda", "TensorRT-LLM"))

    def eff(c: Calibration, fam: str, arch: str) -> list:
        return [c.lookup(st, en, fam, line, arch=arch, dclass="fp8") for st, en in stacks]

    before = {(f, a): eff(cal, f, a) for f in ("Hopper", "Blackwell") for a in ("dense", "mla-moe")}
    off = cal.offsets["family_arch"]["Hopper|mla-moe"]
    cal.offsets["family_arch"]["Hopper|mla-moe"] = [off[0] - 1.0, off[1] - 0.5, off[2] + 0.5]
    after = {k: eff(cal, *k) for k in before}
    for b, a in zip(before[("Hopper", "mla-moe")], after[("Hopper", "mla-moe")], strict=True):
        assert a.eff_compute < b.eff_compute and a.eff_memory < b.eff_memory
        assert a.overhead_s == pytest.approx(b.overhead_s * math.exp(0.5))
    for k in (("Hopper", "dense"), ("Blackwell", "mla-moe"), ("Blackwell", "dense")):
        assert [e.eff_compute for e in after[k]] == [e.eff_compute for e in before[k]]


def test_a_weight_format_has_an_offset_on_every_chip_and_stack():
    """The "dtype" level: a format's kernels cost something everywhere, so its offset moves that
    format on every (stack, family) pair and leaves the other formats alone."""
    cal = Calibration.from_json(default_calibration().to_json())
    assert cal.counts["dtype"]["mxfp4"] > 0  # the bundled fit has the level
    pairs = (("vllm-cuda", "vLLM", "Hopper", "nvidia/gpu/datacenter"),
             ("sglang-rocm", "SGLang", "CDNA3", "amd/gpu/datacenter"),
             ("llamacpp-metal", "llama.cpp", "Apple-M2", "apple/soc/client"))

    def effs(c: Calibration, dclass: str) -> list:
        return [c.lookup(*p, arch="fine-moe", dclass=dclass) for p in pairs]

    before = {d: effs(cal, d) for d in ("mxfp4", "bf16", "fp8")}
    off = cal.offsets["dtype"]["mxfp4"]
    cal.offsets["dtype"]["mxfp4"] = [off[0] - 0.8, off[1] - 0.8, off[2] + 0.4]
    after = {d: effs(cal, d) for d in before}
    for b, a in zip(before["mxfp4"], after["mxfp4"], strict=True):
        assert a.eff_memory < b.eff_memory and a.eff_compute < b.eff_compute
        assert a.overhead_s == pytest.approx(b.overhead_s * math.exp(0.4))
    for d in ("bf16", "fp8"):
        assert [e.eff_memory for e in after[d]] == [e.eff_memory for e in before[d]]


def test_a_class_or_format_the_pair_never_ran_widens_the_band():
    """Held out, such rows miss twice as far as rows whose class and format the pair has data
    for (calibrate.NEW_CLASS_WIDEN): the band says so."""
    from moatmeter.perf.calibrate import NEW_CLASS_WIDEN

    cal = Calibration.from_json(default_calibration().to_json())
    cal.counts["pair_dtype"].pop("vllm-cuda|Hopper|fp8")
    cal.counts["pair_arch"].pop("vllm-cuda|Hopper|mla-moe")
    args = ("vllm-cuda", "vLLM", "Hopper", "nvidia/gpu/datacenter")
    known = cal.lookup(*args, arch="dense", dclass="bf16")
    fp8 = cal.lookup(*args, arch="dense", dclass="fp8")
    mla = cal.lookup(*args, arch="mla-moe", dclass="bf16")
    both = cal.lookup(*args, arch="mla-moe", dclass="fp8")
    assert "widened" not in known.note and known.sigma < 1.5 / NEW_CLASS_WIDEN
    assert fp8.sigma == pytest.approx(NEW_CLASS_WIDEN * known.sigma)
    assert mla.sigma == pytest.approx(NEW_CLASS_WIDEN * known.sigma)
    assert both.sigma == pytest.approx(NEW_CLASS_WIDEN * known.sigma)  # widened once, not twice
    assert ("none with fp8 weights: the pair's own efficiencies left out, its per-step overhead "
            "kept, uncertainty widened") in fp8.note
    assert "none with mla-moe models: the pair's own offsets left out" in mla.note
    assert "none with mla-moe models or fp8 weights" in both.note


def test_a_class_or_format_new_to_the_pair_leaves_out_the_pairs_own_offsets():
    """Held out, a pair's offsets learnt on other classes and formats predicted a new one worse
    than the levels above them (calibrate.NEW_TO_PAIR_DROPS): a format the pair never ran does not
    move with their efficiencies, one it ran does, and every other level still applies to both."""
    from moatmeter.perf.calibrate import NEW_TO_PAIR_DROPS

    assert set(NEW_TO_PAIR_DROPS) == {"pair", "pair_arch", "pair_dtype"}
    cal = Calibration.from_json(default_calibration().to_json())
    cal.counts["pair_dtype"].pop("vllm-cuda|Hopper|fp8")
    args = ("vllm-cuda", "vLLM", "Hopper", "nvidia/gpu/datacenter")
    before = {d: cal.lookup(*args, arch="dense", dclass=d) for d in ("bf16", "fp8")}
    moved = Calibration.from_json(cal.to_json())
    for lv, key in (("pair", "vllm-cuda|Hopper"), ("pair_arch", "vllm-cuda|Hopper|dense")):
        c, m, o = moved.offsets[lv][key]
        moved.offsets[lv][key] = [c - 1.0, m - 1.0, o + 1.0]
    after = {d: moved.lookup(*args, arch="dense", dclass=d) for d in before}
    assert after["bf16"].eff_compute < before["bf16"].eff_compute  # a format it ran: moves
    assert after["bf16"].overhead_s == pytest.approx(before["bf16"].overhead_s * math.e ** 2)
    assert after["fp8"].eff_compute == before["fp8"].eff_compute  # new to the pair: does not
    assert after["fp8"].eff_memory == before["fp8"].eff_memory
    # ... but the per-step overhead of the class the pair ran does (calibrate.NEW_FORMAT_KEEPS)
    assert after["fp8"].overhead_s == pytest.approx(before["fp8"].overhead_s * math.e ** 2)
    # a class new to the pair keeps none of them
    cal.counts["pair_arch"].pop("vllm-cuda|Hopper|mla-moe")
    moved.counts["pair_arch"].pop("vllm-cuda|Hopper|mla-moe")
    mla_before, mla_after = (c.lookup(*args, arch="mla-moe", dclass="bf16") for c in (cal, moved))
    assert mla_after.overhead_s == mla_before.overhead_s
    assert mla_after.eff_compute == mla_before.eff_compute
    # the stack's own level still reaches the format new to the pair
    c, m, o = moved.offsets["stack"]["vllm-cuda"]
    moved.offsets["stack"]["vllm-cuda"] = [c, m, o + 1.0]
    assert moved.lookup(*args, arch="dense", dclass="fp8").overhead_s == pytest.approx(
        after["fp8"].overhead_s * math.e)


def test_unknown_ids_raise_one_line_errors():
    with pytest.raises(MoatError, match="unknown accelerator id 'h900'"):
        predict_deployment(CAT, accelerator="h900", count=1, tp=1, stack="vllm-cuda",
                           model="llama-3.1-8b", input_tokens=1, output_tokens=1)
    with pytest.raises(MoatError, match="does not divide"):
        predict_deployment(CAT, accelerator="h100-sxm", count=3, tp=3, stack="vllm-cuda",
                           model="llama-3.1-8b", input_tokens=1, output_tokens=1)


# ------------------------------------------------------------------ property tests


def _inputs(n: int, bw: float, peak: float, params_b: float, tp: float = 1.0) -> StepInputs:
    one = np.ones(n)
    return StepInputs(peak=peak * one, bw=bw * one, link_bw=450e9 * one, link_lat=8e-6 * one,
                      tp=tp * one, pp=one, eff_c=0.5 * one, eff_m=0.8 * one,
                      overhead=2e-3 * one, w_dense=params_b * 2e9 * one, w_expert=0 * one,
                      n_experts=0 * one, topk=0 * one, moe_layers=0 * one,
                      kv_tok=131072.0 * one, flops_tok=2 * params_b * 1e9 * one,
                      attn=32 * 32 * 128.0 * one, hidden=4096.0 * one, layers=32.0 * one,
                      act_tok=2.0 * 32 * (8 * 4096 * tp + 3 * 14336 + 2 * 4096) * one,
                      eager=EAGER_PREFILL * one)  # a vLLM-like engine: prompt steps run eagerly


bws = st.floats(1e11, 1e13)
peaks = st.floats(1e13, 5e15)
params = st.floats(0.5, 200.0)
lens = st.floats(1.0, 32768.0)
batches = st.floats(1.0, 1024.0)


@settings(max_examples=60, deadline=None)
@given(bw=bws, factor=st.floats(1.0, 10.0), peak=peaks, p=params, b=batches, ctx=lens)
def test_more_bandwidth_never_slows_decode(bw, factor, peak, p, b, ctx):
    s = _inputs(2, bw, peak, p)
    s.bw = np.array([bw, bw * factor])
    t = decode_step(s, np.full(2, b), np.full(2, ctx)).total
    assert t[1] <= t[0] * (1 + 1e-12)


@settings(max_examples=60, deadline=None)
@given(bw=bws, peak=peaks, p=params, b=batches, inp=lens, out=st.floats(1.0, 4096.0))
def test_more_concurrency_never_below_single_stream(bw, peak, p, b, inp, out):
    s = _inputs(2, bw, peak, p)
    pt = closed_loop(s, np.array([1.0, b]), np.full(2, inp), np.full(2, out))
    assert pt.output_tps[1] >= pt.output_tps[0] * (1 - 1e-9)


@settings(max_examples=60, deadline=None)
@given(bw=bws, peak=peaks, p=params, l1=lens, grow=st.floats(1.0, 8.0), b=batches)
def test_ttft_grows_with_input_length(bw, peak, p, l1, grow, b):
    s = _inputs(2, bw, peak, p)
    inp = np.array([l1, l1 * grow])
    assert np.diff(prefill_time(s, inp).total)[0] >= 0
    pt = closed_loop(s, np.full(2, b), inp, np.full(2, 128.0))
    assert pt.ttft_mean[1] >= pt.ttft_mean[0] * (1 - 1e-12)


@settings(max_examples=60, deadline=None)
@given(bw=bws, peak=peaks, p=params, out=st.floats(1.0, 2048.0), tp=st.sampled_from([1, 2, 4]))
def test_single_stream_decode_below_bandwidth_bound(bw, peak, p, out, tp):
    s = _inputs(1, bw, peak, p, tp=tp)
    pt = closed_loop(s, np.ones(1), np.ones(1), np.full(1, out))
    bytes_per_token = s.w_dense[0]  # weights read once per token at least
    assert 1.0 / pt.tpot_mean[0] <= tp * bw / bytes_per_token * (1 + 1e-9)


ACCS = sorted(CAT.accelerators)
MODELS = sorted(CAT.models)


@settings(max_examples=60, deadline=None)
@given(acc=st.sampled_from(ACCS), model=st.sampled_from(MODELS),
       dt=st.sampled_from(["bf16", "fp8", "int4", "q4_k_m"]), tp=st.sampled_from([1, 2, 4, 8]))
def test_weights_exceeding_memory_are_infeasible(acc, model, dt, tp):
    a = CAT.accelerator(acc)
    stack = next(s.id for s in CAT.stacks.values() if a.family in s.families())
    r = resolve(CAT, accelerator=acc, stack=stack, model=model, tp=np.array([tp]), pp=1,
                weight_dtype=dt, kv_dtype="bf16", context=2048)
    w_dev = mem.model_weight_bytes(arch_of(CAT.model(model)), dt) / tp
    if w_dev > a.memory_gb * 2**30:
        assert not r.feasible[0]
    if r.feasible[0]:
        assert r.weights_per_device[0] <= a.memory_gb * 2**30
        assert r.max_sequences[0] >= 1


@settings(max_examples=30, deadline=None)
@given(bw=bws, peak=peaks, p=params, r1=st.floats(0.01, 0.9), r2=st.floats(0.01, 0.9))
def test_open_loop_latency_grows_with_rate(bw, peak, p, r1, r2):
    s = _inputs(1, bw, peak, p)
    inp, out, bcap = np.full(1, 512.0), np.full(1, 128.0), np.full(1, 64.0)
    sat = closed_loop(s, bcap, inp, out).rate_rps[0]
    lo, hi = sorted((r1, r2))
    a = open_loop(s, np.array([lo * sat]), inp, out, bcap)
    b = open_loop(s, np.array([hi * sat]), inp, out, bcap)
    assert b.ttft_p95[0] >= a.ttft_p95[0] * (1 - 1e-6)
    assert b.tpot_mean[0] >= a.tpot_mean[0] * (1 - 1e-6)
    g = goodput(s, inp, out, bcap, 10.0, 10.0)
    assert g.rate_rps[0] <= sat * (1 + 1e-9)


def test_partial_continuous_batching_caps_the_batch():
    r = resolve(CAT, accelerator="rtx-4090", stack=np.array(["ollama-cuda", "llamacpp-cuda"]),
                model="llama-3.1-8b", tp=1, pp=1, weight_dtype="q4_k_m", kv_dtype="fp16",
                context=1024, max_batch=256)
    assert r.feasible.all()
    assert r.bcap[0] == 4 and r.bcap[1] > 4


def test_dtype_spellings_and_weight_format_as_kv():
    # llama.cpp's f16 is fp16; a GGUF format is a weight dtype only
    r = resolve(CAT, accelerator="rtx-4090", stack="llamacpp-cuda", model="llama-3.1-8b",
                tp=1, pp=1, weight_dtype=np.array(["f16", "q4_k_m", "mxfp4"]), kv_dtype="fp16",
                context=1024)
    assert r.feasible.all(), r.reason
    # GGUF quantises the embeddings too: Q4_K_M of 8.03e9 params ≈ 4.87 GB
    assert r.weights_per_device[1] == pytest.approx(8.03e9 * 4.85 / 8, rel=0.01)
    p = predict_deployment(CAT, accelerator="rtx-4090", count=1, tp=1, stack="llamacpp-cuda",
                           model="llama-3.1-8b", weight_dtype="q4_k_m", kv_dtype="q4_k_m",
                           input_tokens=512, output_tokens=128, concurrency=1)
    assert p.kv_dtype == "fp16" and "weight format" in p.notes[0]


def test_empty_and_all_infeasible_grids():
    empty = DeploymentGrid(accelerator=np.array([], str), stack=np.array([], str),
                           tp=np.array([], int), pp=np.array([], int),
                           weight_dtype=np.array([], str), kv_dtype=np.array([], str))
    r = evaluate_grid(CAT, "llama-3.1-8b", empty, Workload(100, 10), SLO(1, 0.1))
    assert len(r.feasible) == 0 and r.reason == []
    r = evaluate_grid(CAT, "llama-3.1-70b", _grid(accelerator=["rtx-4090", "l4"],
                                                  stack="vllm-cuda", tp=[1, 1], pp=1,
                                                  weight_dtype="bf16", kv_dtype="bf16"),
                      Workload(100, 10), SLO(1, 0.1))
    assert not r.feasible.any() and (r.goodput_rps == 0).all()


def _one(acc: str, model: str, tp: int = 1, wd: str = "bf16"):
    return resolve(CAT, accelerator=np.array([acc]), stack=np.array(["vllm-cuda"]),
                   model=np.array([model]), tp=np.array([tp]), pp=np.array([1]),
                   weight_dtype=np.array([wd]), kv_dtype=np.array(["bf16"]),
                   context=np.array([2048.0]), calib=Calibration()).s


def test_speculative_decoding_tokens_per_step_and_when_it_pays():
    from moatmeter.perf.speculative import acceptance_from_length
    from moatmeter.perf.step import spec_tokens

    s = _one("h100-sxm", "llama-3.1-8b")
    assert spec_tokens(s) == 1.0 and s.with_speculation(0, 0.9).spec_k is None
    k4 = [s.with_speculation(4, a) for a in (0.0, 0.8, 0.999999)]
    per = [float(spec_tokens(x)[0]) for x in k4]
    assert per[0] == pytest.approx(1.0)  # nothing accepted: one token per step
    assert per[1] == pytest.approx((1 - 0.8**5) / 0.2)
    assert per[2] == pytest.approx(5.0, rel=1e-4)  # all accepted: k + 1 tokens per step
    # the engines' acceptance length maps back to the per-token probability
    a = acceptance_from_length(3, 2.82)
    assert (1 - a**4) / (1 - a) == pytest.approx(2.82, rel=1e-6)

    def tpot(x, b):
        return float(closed_loop(x, np.array([b]), np.array([1024.0]), np.array([256.0]))
                     .tpot_mean[0])

    # single stream is bandwidth-bound: verifying 5 tokens costs about one step, so a good
    # drafter cuts TPOT, a useless one only adds the drafting and verification
    assert tpot(k4[1], 1) < 0.5 * tpot(s, 1)
    assert tpot(k4[0], 1) > tpot(s, 1)
    # a large batch is compute-bound: 5 verified tokens per sequence cost ~5x the FLOPs for
    # ~1.9 accepted, so speculation at acceptance 0.5 loses there
    half = s.with_speculation(4, 0.5)
    assert tpot(half, 1) < tpot(s, 1)
    assert tpot(half, 256) > tpot(s, 256)
    # drafting cost defaults to one MTP block (1/layers) and is charged per drafted token
    assert float(k4[1].spec_draft[0]) == pytest.approx(1 / 32)
    heavy = s.with_speculation(4, 0.8, 0.5)
    assert tpot(heavy, 1) > tpot(k4[1], 1)


# ------------------------------------------------------------------ bursts, stated batch, layers


def test_harmonic_numbers():
    from moatmeter.perf.observations import harmonic

    exact = np.cumsum(1.0 / np.arange(1, 301))
    got = harmonic(np.arange(1, 301))
    assert np.allclose(got, exact, rtol=7e-3)
    assert np.allclose(got[2:], exact[2:], rtol=1e-4)


def test_burst_with_variable_outputs_is_slower_than_steady_concurrency():
    """N prompts at t=0 whose outputs vary: the longest request sets the duration."""
    from moatmeter.perf.observations import burst

    n = 4
    s = _inputs(n, 3.35e12, 1e15, 70.0, tp=1.0)
    b = np.array([1.0, 16.0, 64.0, 256.0])
    inp, out = np.full(n, 80.0), np.full(n, 58.0)
    rps_b, ttft_b, _ = burst(s, b, np.full(n, 256.0), inp, out, np.full(n, 150.0))
    steady = closed_loop(s, b, inp, out)
    # N = 1: a burst is one request: the single-stream figure (within the H_1 series error)
    assert rps_b[0] == pytest.approx(steady.rate_rps[0], rel=0.02)
    # N ≥ 16: the longest output hits the 150 cap, so the run lasts longer: ~150/58 times while
    # decode is weight-bound (N = 16), less once the full batch is compute-bound (N = 256)
    assert rps_b[1] < 0.6 * steady.rate_rps[1]
    assert np.all(rps_b[1:] < 0.8 * steady.rate_rps[1:])
    assert np.all(rps_b[1:] > 0.2 * steady.rate_rps[1:])
    # the cap bounds the duration: a cap equal to the mean output is steady-state-like
    rps_c, _, _ = burst(s, b, np.full(n, 256.0), inp, out, out)
    assert np.all(rps_c >= rps_b)
    # prompts prefill together: TTFT grows with N
    assert np.all(np.diff(ttft_b) > 0)


def _obs_row(**kw: str) -> dict[str, str]:
    """An observations.csv row (8x MI300X, vLLM, 405B bf16, 16 slots), fields overridden."""
    row = {"id": "r", "source": "test", "accelerator": "AMD Instinct MI300X", "count": "8",
           "engine": "vLLM", "backend": "ROCm", "engine_version": "", "kv_dtype": "",
           "model": "meta-llama/Llama-3.1-405B-Instruct", "weight_dtype": "bf16",
           "scenario": "fixed_concurrency", "concurrency": "16", "input_len": "80",
           "output_len": "58", "metric": "output_tokens_per_s", "value": "100", "notes": "TP8"}
    return {**row, **kw}


def test_burst_rows_are_parsed_and_predicted_as_bursts():
    from moatmeter.perf.validate import validate_rows

    base = _obs_row(id="b16")
    burst_row = {**base, "id": "b16-burst",
                 "notes": "TP8; burst: all 16 prompts sent at once; output cap max_tokens=150"}
    out = validate_rows(CAT, [base, burst_row])
    pred = {r["id"]: r["predicted"] for r in out["rows"]}
    assert pred["b16-burst"] < 0.6 * pred["b16"]


def test_finite_offline_run_is_one_lock_step_wave():
    """N fixed-length prompts submitted at once: prefill of all N, then O − 1 steps at batch N."""
    from moatmeter.perf.step import decode_step, prefill_time
    from moatmeter.perf.validate import validate_rows

    base = _obs_row(id="off16", weight_dtype="fp8", scenario="offline", input_len="32784",
                    output_len="2048", metric="total_tokens_per_s", value="600")
    fin = {**base, "id": "off16-once",
           "notes": "TP8; --num-prompts=16 fixed-length prompts submitted at once"}
    pred = {r["id"]: r["predicted"] for r in validate_rows(CAT, [base, fin])["rows"]}
    # long prompts: the wave's prefill no longer hides under memory-bound decode steps
    assert pred["off16-once"] < 0.95 * pred["off16"]
    # and the wave formula itself, on the step model directly
    from moatmeter.perf.observations import burst

    n = 3
    s = _inputs(n, 3.35e12, 1e15, 70.0, tp=1.0)
    b, inp, out = np.array([1.0, 8.0, 32.0]), np.full(n, 4096.0), np.full(n, 256.0)
    rps, _, _ = burst(s, b, np.full(n, 256.0), inp, out, out)
    wave = prefill_time(s, inp, b).total + (out - 1.0) * decode_step(s, b, inp + out / 2).total
    assert rps == pytest.approx(b / wave, rel=1e-6)


def test_fixed_length_run_beyond_the_cap_goes_in_waves():
    """7 fixed-length prompts, 3 slots: two full waves and a wave of one, not refills."""
    from moatmeter.perf.observations import burst
    from moatmeter.perf.step import decode_step, prefill_time

    s = _inputs(1, 3.35e12, 1e15, 70.0, tp=1.0)
    n, cap3 = np.array([7.0]), np.array([3.0])
    inp, out = np.array([4096.0]), np.array([256.0])

    def wave(b: float) -> float:
        bb = np.array([b])
        return float((prefill_time(s, inp, bb).total
                      + (out - 1.0) * decode_step(s, bb, inp + out / 2).total)[0])

    rps, _, _ = burst(s, n, cap3, inp, out, out)
    assert float(rps[0]) == pytest.approx(7.0 / (2 * wave(3.0) + wave(1.0)), rel=1e-6)
    # bandwidth-bound decode: the wave of one costs nearly a full wave, so this is slower than
    # refilling the slots at the steady 3-slot rate
    steady = closed_loop(s, cap3, inp, out).rate_rps
    assert float(rps[0]) < 0.9 * float(steady[0])
    # variable lengths (cap above the mean) keep the steady refills
    rv, _, _ = burst(s, n, cap3, inp, out, np.array([1024.0]))
    assert float(rv[0]) < float(steady[0])


def test_activation_traffic_per_token_by_hand():
    """Llama 3.1 8B: 32 layers x (8 hidden + 3 intermediate + 2 query-width tensors) x 2 bytes."""
    r = resolve(CAT, accelerator=np.array(["h100-sxm", "h100-sxm"]), stack="vllm-cuda",
                model="llama-3.1-8b", tp=np.array([1.0, 2.0]), pp=1.0, weight_dtype="bf16",
                kv_dtype="bf16", context=2048.0)
    per_tensor = 2.0 * 32
    tp1 = per_tensor * (8 * 4096 + 3 * 14336 + 2 * 4096)
    assert r.s.act_tok[0] == pytest.approx(tp1, rel=1e-3)  # ~5.4 MB per token
    # TP2: the hidden-size tensors are whole on both ranks, the rest is split between them
    assert r.s.act_tok[1] == pytest.approx(tp1 + per_tensor * 8 * 4096, rel=1e-3)
    # a lone decode hardly notices it; 4096 tokens in a step move ~22 GB, more than the weights
    one = r.s.take(np.array([0]))
    with_act = decode_step(one, np.array([1.0]), np.array([2048.0])).total
    without = decode_step(replace(one, act_tok=np.zeros(1)), np.array([1.0]),
                          np.array([2048.0])).total
    assert with_act == pytest.approx(without, rel=0.01)
    big = decode_step(one, np.array([4096.0]), np.array([2048.0])).bytes_per_device
    big0 = decode_step(replace(one, act_tok=np.zeros(1)), np.array([4096.0]),
                       np.array([2048.0])).bytes_per_device
    assert big - big0 == pytest.approx(4096 * r.s.act_tok[0], rel=1e-9)
    assert big - big0 > 16.06e9  # the bf16 weights


def test_lock_step_slots_wait_for_the_whole_wave_prefill():
    """B fixed-length slots that start and end together: TTFT is most of the wave's prefill,
    and a request's TPOT (from its own first token) carries the prompts prefilled after it."""
    from moatmeter.perf.observations import lockstep

    n = 3
    s = _inputs(n, 3.35e12, 1e15, 8.0, tp=1.0)
    b, inp, out = np.array([1.0, 8.0, 64.0]), np.full(n, 1868.0), np.full(n, 2048.0)
    rps, ttft, tpot = lockstep(s, b, inp, out)
    pf = prefill_time(s, inp, b).total
    dec = decode_step(s, b, inp + out / 2.0).total
    assert ttft == pytest.approx(pf * (b + 1.0) / (2.0 * b), rel=1e-9)
    # mean TTFT + (O - 1) TPOT = the wave's prefill + its O - 1 decode steps: the last token
    # of every slot comes at the end of the wave
    assert ttft + (out - 1.0) * tpot == pytest.approx(pf + (out - 1.0) * dec, rel=1e-9)
    assert tpot[0] == pytest.approx(dec[0], rel=1e-9) and np.all(tpot[1:] > dec[1:])
    # timed from the last prompt on (llama-batched-bench), TPOT is the bare decode step
    _, _, tpot_d = lockstep(s, b, inp, out, np.ones(n, dtype=bool))
    assert tpot_d == pytest.approx(dec, rel=1e-9)
    assert rps == pytest.approx(b / (pf + (out - 1.0) * dec), rel=1e-9)
    # one slot is a single stream; many slots wait far longer than one staggered prompt would
    steady = closed_loop(s, b, inp, out)
    assert ttft[0] == pytest.approx(pf[0], rel=1e-9)
    assert ttft[2] > 10.0 * steady.ttft_mean[2]
    # the same work is done either way: throughput stays within a few per cent of the mean field
    assert rps[1:] == pytest.approx(steady.rate_rps[1:], rel=0.1)


def test_lock_step_protocols_are_recognised_in_the_notes():
    from moatmeter.perf.validate import validate_rows

    base = _obs_row(id="g64", accelerator="Intel Gaudi 3", count="1", backend="HPU",
                    model="meta-llama/Llama-3.1-8B-Instruct", concurrency="64", input_len="1868",
                    output_len="2048", metric="ttft_ms", value="1800", notes="TP1")
    rows = [base] + [{**base, "id": f"g64-{k}", "notes": f"TP1; {note}"} for k, note in (
        ("ls", "all 64 slots run in lock-step waves"), ("sb", "static batch via gptSession"),
        ("lat", "vLLM benchmark_latency.py, one batch"))]
    pred = {r["id"]: r["predicted"] for r in validate_rows(CAT, rows)["rows"]}
    for k in ("ls", "sb", "lat"):
        assert pred[f"g64-{k}"] > 10.0 * pred["g64"]
    # TPOT of a lock-step wave: from each request's first token, unless the source times the
    # decode phase alone (llama-batched-bench; SGLang bench_one_batch's decode-step latency)
    tp = {**base, "id": "t", "metric": "tpot_ms", "value": "20",
          "notes": "TP1; all 64 slots run in lock-step waves"}
    rows = [tp] + [{**tp, "id": f"t-{k}", "notes": f"{tp['notes']}; {note}"} for k, note in (
        ("bb", "decode-only timing (t_tg)"), ("sg", "median decode-step latency at batch 64"))]
    pred = {r["id"]: r["predicted"] for r in validate_rows(CAT, rows)["rows"]}
    assert pred["t-bb"] == pytest.approx(pred["t-sg"], rel=1e-9)
    assert pred["t"] > 1.05 * pred["t-bb"]


def test_sglang_servers_run_more_than_vllms_256_sequences():
    """SGLang's request pool holds at least 2048 requests: its bursts are bound by the KV pool."""
    from moatmeter.perf.observations import map_rows, prepare

    base = _obs_row(id="v", accelerator="NVIDIA H200 SXM 141GB", count="4", backend="CUDA",
                    model="meta-llama/Llama-3.3-70B-Instruct", concurrency="3000",
                    input_len="508", output_len="515", value="4500",
                    notes="TP4; burst: all 3000 prompts sent at once; longest_output=1024")
    obs, skipped = map_rows(CAT, [{**base, "engine_version": "0.6.3"},
                                  {**base, "id": "s", "engine": "SGLang"}])
    assert not skipped
    p, _ = prepare(CAT, obs)
    bcap = dict(zip([o.id for o in p.obs], p.res.bcap, strict=True))
    assert bcap["v"] == 256
    assert 1000 < bcap["s"] <= 2048  # the 4x H200 KV pool holds ~1200 such sequences


def test_vllm_v1_defaults_to_1024_sequences_on_large_devices_but_not_on_a100s():
    """vLLM V1 raises max_num_seqs to 1024 on devices of 70 GiB or more, A100s excepted."""
    from moatmeter.perf.observations import map_rows, prepare

    base = _obs_row(id="v0", accelerator="NVIDIA H200 SXM 141GB", count="1", backend="CUDA",
                    model="meta-llama/Llama-3.1-8B-Instruct", concurrency="3000",
                    input_len="128", output_len="128", value="4500", engine_version="0.6.3",
                    notes="TP1; burst: all 3000 prompts sent at once; longest_output=128")
    rows = [base, {**base, "id": "v1", "engine_version": "0.10.1"},
            {**base, "id": "a100", "engine_version": "0.10.1",
             "accelerator": "NVIDIA A100 SXM 80GB"},
            {**base, "id": "rocm-v0", "engine_version": "0.9.2", "backend": "ROCm",
             "accelerator": "AMD Instinct MI300X"},
            {**base, "id": "rocm-v1", "engine_version": "0.11.0", "backend": "ROCm",
             "accelerator": "AMD Instinct MI300X"},
            {**base, "id": "l40s", "engine_version": "0.10.1", "accelerator": "NVIDIA L40S"}]
    obs, skipped = map_rows(CAT, rows)
    assert not skipped
    p, _ = prepare(CAT, obs)
    bcap = dict(zip([o.id for o in p.obs], p.res.bcap, strict=True))
    assert bcap == {"v0": 256, "v1": 1024, "a100": 256, "rocm-v0": 256, "rocm-v1": 1024,
                    "l40s": 256}


def test_stated_static_batch_is_not_capped_at_the_default():
    from moatmeter.perf.validate import validate_rows

    row = {"id": "g", "source": "test", "accelerator": "Intel Gaudi 3", "count": "1",
           "engine": "TGI", "backend": "HPU", "engine_version": "", "kv_dtype": "",
           "model": "meta-llama/Llama-3.1-8B-Instruct", "weight_dtype": "fp8",
           "scenario": "fixed_concurrency", "concurrency": "256", "input_len": "128",
           "output_len": "128", "metric": "output_tokens_per_s", "value": "100", "notes": ""}
    big = {**row, "id": "g1536", "concurrency": "1536"}
    pred = {r["id"]: r["predicted"] for r in validate_rows(CAT, [row, big])["rows"]}
    assert pred["g1536"] > 1.1 * pred["g"]  # capped at 256 both would be equal


def test_step_overhead_grows_with_layer_count():
    from dataclasses import replace

    from moatmeter.perf import step

    s32 = _inputs(1, 3.35e12, 1e15, 8.0)
    s126 = replace(s32, layers=np.array([126.0]))
    ov32 = decode_step(s32, np.array([1.0]), np.array([100.0])).overhead[0]
    ov126 = decode_step(s126, np.array([1.0]), np.array([100.0])).overhead[0]
    share = step.OVERHEAD_LAYER_SHARE
    assert ov32 == pytest.approx(2e-3)
    assert ov126 == pytest.approx(2e-3 * (1 - share + share * 126 / 32))


def test_row_excluded_in_its_notes_is_skipped_with_the_reason():
    from moatmeter.perf.validate import validate_rows

    row = {"id": "x", "source": "test", "accelerator": "NVIDIA H100 SXM5 80GB", "count": "1",
           "engine": "vLLM", "backend": "CUDA", "engine_version": "", "kv_dtype": "",
           "model": "meta-llama/Llama-3.1-8B-Instruct", "weight_dtype": "bf16",
           "scenario": "single_stream", "concurrency": "1", "input_len": "128",
           "output_len": "128", "metric": "output_tokens_per_s", "value": "100",
           "notes": "Excluded from calibration: checkpoint format unknown | read from table 2"}
    ok = {**row, "id": "y", "notes": "read from table 2"}
    out = validate_rows(CAT, [row, ok])
    assert [r["id"] for r in out["rows"]] == ["y"]
    assert out["summary"]["skipped"] == [
        {"id": "x", "reason": "excluded from calibration: checkpoint format unknown"}]


def test_prompt_steps_run_eagerly_only_in_python_driven_engines():
    """vLLM (and SGLang, TGI, TensorRT-LLM's PyTorch backend) replay CUDA graphs for decode only:
    a step carrying a prompt pays EAGER_PREFILL times the step overhead more. llama.cpp replays
    its graph for prompts too, and so do TensorRT engine builds (graph_prefill)."""
    assert EAGER_PREFILL > 0
    kw = dict(accelerator=["h100-sxm"] * 3, model="llama-3.1-8b", tp=1, pp=1,
              weight_dtype=["bf16", "q4_0", "bf16"], kv_dtype="bf16", context=2048)
    res = resolve(CAT, stack=["vllm-cuda", "llamacpp-cuda", "trtllm-cuda"],
                  graph_prefill=[False, False, True], host_sampling=False, **kw)
    s = res.s
    ov = s.k["ov"]
    pre = prefill_time(s, np.full(3, 1024.0))
    assert pre.overhead == pytest.approx(ov * np.array([1.0 + EAGER_PREFILL, 1.0, 1.0]))
    # a pure decode step carries no prompt: graph-replayed everywhere
    dec = decode_step(s, np.full(3, 8.0), np.full(3, 1024.0))
    assert dec.overhead == pytest.approx(ov)
    # a mean-field step carrying half a chunk of prompt tokens runs eagerly half of the time
    mix = decode_step(s, np.full(3, 8.0), np.full(3, 1024.0), CHUNK / 2, 512.0)
    assert mix.overhead[0] == pytest.approx(ov[0] * (1.0 + EAGER_PREFILL / 2))
    # so a vLLM request waits longer for its first token than the same work replayed as a graph
    g = resolve(CAT, stack="vllm-cuda", graph_prefill=True, **{**kw, "accelerator": "h100-sxm",
                                                                 "weight_dtype": "bf16"}).s
    e = resolve(CAT, stack="vllm-cuda", **{**kw, "accelerator": "h100-sxm",
                                           "weight_dtype": "bf16"}).s
    one = np.array([1.0])  # alone: no other request's steps in the way
    t_e = closed_loop(e, one, np.array([1024.0]), np.array([256.0])).ttft_mean[0]
    t_g = closed_loop(g, one, np.array([1024.0]), np.array([256.0])).ttft_mean[0]
    assert t_e - t_g == pytest.approx(EAGER_PREFILL * e.k["ov"][0], rel=1e-6)


def test_without_cuda_graphs_every_step_runs_eagerly():
    """vLLM --enforce-eager (and TensorRT-LLM's early PyTorch backend, whose CUDA graphs were off
    by default) replays no graph at all: decode steps pay the eager overhead that otherwise only
    prompt steps pay, and prompt steps pay it once, not twice."""
    kw = dict(accelerator="h100-sxm", model="llama-3.1-8b", tp=1, pp=1, weight_dtype="bf16",
              kv_dtype="bf16", context=2048, stack="vllm-cuda")
    g = resolve(CAT, **kw).s
    e = resolve(CAT, eager_decode=True, **kw).s
    b, ctx = np.array([8.0]), np.array([1024.0])
    assert decode_step(e, b, ctx).overhead == pytest.approx(
        decode_step(g, b, ctx).overhead * (1.0 + EAGER_DECODE))
    assert prefill_time(e, np.array([1024.0])).overhead == pytest.approx(
        prefill_time(g, np.array([1024.0])).overhead)
    assert decode_step(e, b, ctx).total[0] > decode_step(g, b, ctx).total[0]


def _row(**over: str) -> dict[str, str]:
    """One observation row (8B on one H100, vLLM, closed loop) with fields overridden."""
    return _obs_row(**{"id": "a", "source": "s", "accelerator": "NVIDIA H100 SXM5 80GB",
                       "count": "1", "backend": "CUDA", "model": "meta-llama/Llama-3.1-8B-Instruct",
                       "concurrency": "8", "input_len": "1024", "output_len": "256",
                       "value": "500", "notes": "", **over})


def test_notes_that_say_cuda_graphs_are_off_make_decode_eager():
    from moatmeter.perf.observations import map_rows

    rows = [_row(engine_version="0.6.3 --enforce-eager"), _row(id="b", engine_version="0.6.3"),
            _row(id="c", notes="CUDA graphs off (defaults)")]
    obs, _ = map_rows(CAT, rows)
    assert [o.eager_decode for o in obs] == [True, False, True]


def test_a_scheduler_that_polls_every_n_steps_delays_the_first_token_under_load():
    """SGLang's --scheduler-recv-interval N takes in new requests every N decode steps while a
    batch runs: a request waits (N - 1) / 2 steps more; alone (nothing decoding) it does not."""
    kw = dict(accelerator="h100-sxm", model="llama-3.1-8b", tp=1, pp=1, weight_dtype="bf16",
              kv_dtype="bf16", context=2048, stack="sglang-cuda")
    every = resolve(CAT, **kw).s
    ten = resolve(CAT, poll_steps=10.0, **kw).s
    inp, out = np.array([1024.0]), np.array([256.0])
    for b in (8.0, 64.0):
        p1 = closed_loop(every, np.array([b]), inp, out)
        p10 = closed_loop(ten, np.array([b]), inp, out)
        assert p10.ttft_mean[0] - p1.ttft_mean[0] == pytest.approx(4.5 * p1.step.total[0])
        assert p10.tpot_mean[0] == pytest.approx(p1.tpot_mean[0])
        assert p10.rate_rps[0] < p1.rate_rps[0]  # the wait is part of each request's life
    one = np.array([1.0])
    assert closed_loop(ten, one, inp, out).ttft_mean[0] == pytest.approx(
        closed_loop(every, one, inp, out).ttft_mean[0])


def test_a_new_request_waits_for_the_running_step_and_more_under_overlap():
    """In a closed loop the next request reaches an engine already running its next step: it
    waits SCHED_LAG steps, OVERLAP_LAG more under an overlap scheduler (step k + 1 is planned
    while step k runs). Alone it waits for nothing; a Poisson arrival lands mid-step."""
    from moatmeter.perf.serving import _decode, _ttft

    # SGLang: no per-sequence CPU cost in either mode, so only the lag differs
    kw = dict(accelerator="h100-sxm", model="llama-3.1-8b", tp=1, pp=1, weight_dtype="bf16",
              kv_dtype="bf16", context=2048, stack="sglang-cuda")
    plain = resolve(CAT, overlap=False, **kw).s
    ovl = resolve(CAT, overlap=True, **kw).s
    assert SCHED_LAG > 0 and OVERLAP_LAG > 0
    inp, out = np.array([1024.0]), np.array([256.0])
    for b in (np.array([8.0]), np.array([64.0])):
        p0, p1 = closed_loop(plain, b, inp, out), closed_loop(ovl, b, inp, out)
        step = _decode(plain, b, inp, out).total[0]
        assert p0.ttft_mean[0] == pytest.approx(_ttft(plain, b, inp, out)[0] + SCHED_LAG * step)
        assert p1.ttft_mean[0] - p0.ttft_mean[0] == pytest.approx(OVERLAP_LAG * step)
        assert p1.tpot_mean[0] == pytest.approx(p0.tpot_mean[0])
        assert p1.rate_rps[0] < p0.rate_rps[0]  # the slot idles while its prompt waits
    one = np.array([1.0])
    assert closed_loop(ovl, one, inp, out).ttft_mean[0] == pytest.approx(
        _ttft(plain, one, inp, out)[0])
    # a burst's refills wait in the engine's queue: no client round trip, only the step an
    # overlap scheduler planned before the slot freed
    b = np.array([64.0])
    step = _decode(plain, b, inp, out).total[0]
    assert closed_loop(plain, b, inp, out, queued=True).ttft_mean[0] == pytest.approx(
        _ttft(plain, b, inp, out)[0])
    assert closed_loop(ovl, b, inp, out, queued=True).ttft_mean[0] == pytest.approx(
        _ttft(plain, b, inp, out)[0] + step)
    rate, bcap = np.array([5.0]), np.array([256.0])
    q0, q1 = open_loop(plain, rate, inp, out, bcap), open_loop(ovl, rate, inp, out, bcap)
    assert q1.ttft_mean[0] - q0.ttft_mean[0] == pytest.approx(OVERLAP_LAG * q0.step.total[0],
                                                              rel=1e-3)
    # by default the engine's current release decides: vLLM, SGLang, TensorRT-LLM overlap
    assert resolve(CAT, **kw).s.overlap[0]
    assert not resolve(CAT, **{**kw, "stack": "tgi-cuda"}).s.overlap[0]


@pytest.mark.parametrize(("engine", "version", "notes", "when", "want"), [
    ("SGLang", "0.3.0, --disable-radix-cache", "", 2024.7, False),
    ("SGLang", "SGLang v0.5.12 (lmsysorg/sglang:v0.5.12-cu130)", "", 2026.3, True),
    ("SGLang", "v0.5.7, --disable-overlap-schedule", "", 2026.0, False),
    ("vLLM", "v0.5.4 (per benchmark_v0.md)", "", 2024.6, False),
    ("vLLM", "v0.10.2, --async-scheduling -tp 2", "", 2025.8, True),
    ("vLLM", "v0.11.0, vllm serve defaults", "", 2025.9, False),
    ("vLLM", "v0.11.0", "server flags: --async-scheduling --max-model-len 4096", 2025.9, True),
    ("vLLM", "vLLM v0.15.1 (vllm/vllm-openai:v0.15.1)", "", 2026.2, True),
    ("vLLM", "not stated", "", 2025.5, False),
    ("vLLM", "main built from source", "", 2026.4, True),
    ("TensorRT-LLM", "TensorRT-LLM 1.3.0rc14", "", 2026.3, True),
    ("TensorRT-LLM", "0.17.post1.dev, PyTorch backend", "", 2025.2, False),
    ("TGI", "3.0", "", 2025.5, False),
])
def test_the_overlap_scheduler_is_read_from_the_version(engine, version, notes, when, want):
    from moatmeter.perf.observations import overlap_scheduler

    assert overlap_scheduler(engine, version, notes, graph_prefill=False, eager_decode=False,
                             when=when) is want
    if engine == "TensorRT-LLM":  # a TensorRT engine build runs the older runtime: no overlap
        assert not overlap_scheduler(engine, version, notes, graph_prefill=True,
                                     eager_decode=False, when=when)


def test_delayed_batching_holds_new_prompts_until_the_window_closes():
    """TensorRT-LLM's batch_wait_timeout_iters W holds a new prompt up to W steps; gathering
    enough prompt tokens (ratio x max_num_tokens) ends the wait earlier. Alone, nothing waits."""
    kw = dict(accelerator="b200", model="llama-3.1-8b", tp=1, pp=1, weight_dtype="bf16",
              kv_dtype="bf16", context=2048, stack="trtllm-cuda")
    off = resolve(CAT, **kw).s
    cap = resolve(CAT, batch_wait=(40.0, np.inf), **kw).s
    early = resolve(CAT, batch_wait=(40.0, 0.8 * 8192), **kw).s
    inp, out = np.array([1024.0]), np.array([1024.0])
    b = np.array([64.0])
    p0, pc, pe = (closed_loop(s, b, inp, out) for s in (off, cap, early))
    lam = 64.0 / (1.0 + 1023.0)  # prompts per step: b over the steps a request lives
    m = lam * 40.0
    assert pc.ttft_mean[0] - p0.ttft_mean[0] == pytest.approx(
        40.0 * (1.0 + m / 2.0) / (1.0 + m) * p0.step.total[0])
    # 7 prompts of 1,024 tokens reach 0.8 x 8,192 before 40 steps pass only if they come fast:
    # here (2.5 per window) the cap binds, so both waits agree; at 512 users the tokens end it
    assert pe.ttft_mean[0] == pytest.approx(pc.ttft_mean[0])
    b512 = np.array([512.0])
    assert (closed_loop(early, b512, inp, out).ttft_mean[0]
            < closed_loop(cap, b512, inp, out).ttft_mean[0])
    one = np.array([1.0])
    assert closed_loop(cap, one, inp, out).ttft_mean[0] == pytest.approx(
        closed_loop(off, one, inp, out).ttft_mean[0])
    # Poisson arrivals are held the same way
    rate, bcap = np.array([2.0]), np.array([256.0])
    assert (open_loop(cap, rate, inp, out, bcap).ttft_mean[0]
            > open_loop(off, rate, inp, out, bcap).ttft_mean[0])


def test_delayed_batching_is_read_from_the_notes():
    from moatmeter.perf.observations import map_rows

    trt = dict(accelerator="NVIDIA B200 (HGX)", engine="TensorRT-LLM",
               engine_version="1.3 PyTorch backend", concurrency="64", output_len="1024",
               metric="ttft_ms")
    rows = [_row(notes="batch_wait_timeout_iters 40, batch_wait_max_tokens_ratio 0.8; "
                       "max_num_tokens 8192", **trt),
            _row(id="b", notes="batch_wait_timeout_iters 20", **trt), _row(id="c", **trt)]
    obs, _ = map_rows(CAT, rows)
    assert [(o.batch_wait_iters, o.batch_wait_tokens) for o in obs] == [
        (40.0, pytest.approx(6553.6)), (20.0, float("inf")), (0.0, 0.0)]


def test_the_recv_interval_is_read_from_the_notes():
    from moatmeter.perf.observations import map_rows

    sgl = dict(engine="SGLang", engine_version="0.5.12", metric="ttft_ms", value="50")
    obs, _ = map_rows(CAT, [_row(notes="server flags: --scheduler-recv-interval 30", **sgl),
                            _row(id="b", **sgl)])
    assert [o.poll_steps for o in obs] == [30.0, 1.0]


def test_vllm_multi_step_scheduling_is_read_as_a_polling_interval():
    """vLLM 0.6's --num-scheduler-steps N schedules once per N decode steps: a new prompt waits
    for the window to end, as under SGLang's receive interval."""
    from moatmeter.perf.observations import map_rows

    obs, _ = map_rows(CAT, [_row(engine="vLLM", engine_version="0.6.4 --num-scheduler-steps 20",
                                 metric="ttft_ms"),
                            _row(id="b", engine="vLLM", notes="num_scheduler_steps=8",
                                 metric="ttft_ms"),
                            _row(id="c", engine="vLLM", metric="ttft_ms")])
    assert [o.poll_steps for o in obs] == [20.0, 8.0, 1.0]


def test_queue_wait_is_littles_law_beyond_the_cap_and_zero_within():
    from moatmeter.perf.serving import queue_wait

    w = queue_wait(np.array([100.0, 256.0, 512.0]), np.array([256.0, 256.0, 256.0]),
                   np.array([10.0, 10.0, 8.0]))
    assert w.tolist() == [0.0, 0.0, 32.0]  # 256 waiting at 8 req/s


def test_a_stated_server_cap_holds_a_deeper_closed_loop_back():
    """A closed loop of 512 clients against a server that ran with vLLM's default cap (or an
    explicit --max-num-seqs 256) has only 256 requests running: the rest queue, so TTFT grows
    and TPOT is that of 256. Without a statement the row is taken as a server sized for its
    clients (static-batch tables)."""
    from moatmeter.perf.observations import map_rows
    from moatmeter.perf.validate import validate_rows

    kw = dict(engine="vLLM", engine_version="0.6.4", concurrency="512", input_len="256",
              output_len="256")
    rows = [_row(id=f"{tag}-{m}", metric=m, notes=notes, **kw)
            for tag, notes in (("default", "server without --max-num-seqs, i.e. vLLM default"),
                               ("explicit", "vllm serve --max-num-seqs 256"),
                               ("unstated", ""))
            for m in ("ttft_ms", "tpot_ms")]
    obs, _ = map_rows(CAT, rows)
    assert [(o.server_batch, o.batch_stated) for o in obs][::2] == [
        (256.0, True), (256.0, True), (256.0, False)]
    pred = {r["id"]: r["predicted"] for r in validate_rows(CAT, rows)["rows"]}
    for tag in ("default", "explicit"):
        assert pred[f"{tag}-ttft_ms"] > 2 * pred["unstated-ttft_ms"]
        assert pred[f"{tag}-tpot_ms"] < 0.8 * pred["unstated-tpot_ms"]


def test_a_closed_loop_run_starts_with_a_wave_of_prompts():
    """benchmark_serving starts its B slots at once: the first B prompts prefill together, which
    is B / N of the mean TTFT of an N-prompt run (InferenceX: N = 10 B) and nothing of a long
    run's. The mixture is linear in B / N."""
    from moatmeter.perf.validate import validate_rows

    base = {"source": "s", "accelerator": "NVIDIA H100 SXM5 80GB", "count": "1",
            "engine": "vLLM", "backend": "CUDA", "engine_version": "", "kv_dtype": "",
            "model": "meta-llama/Llama-3.1-8B-Instruct", "weight_dtype": "bf16",
            "scenario": "fixed_concurrency", "concurrency": "8", "input_len": "2048",
            "output_len": "256", "metric": "ttft_ms", "value": "100"}
    rows = [{**base, "id": "long", "source": "a", "notes": ""},
            {**base, "id": "one-wave", "source": "b", "notes": "num-prompts 8"},
            {**base, "id": "ten-waves", "source": "c", "notes": "num_prompts = 10 x concurrency"},
            {**base, "id": "n80", "source": "d", "notes": "vllm bench serve --num-prompts 80"},
            # argparse's prefix of --num-prompts, and evalscope's name for it
            {**base, "id": "prefix80", "source": "e",
             "notes": "benchmark_serving.py --num-prompt 80"},
            {**base, "id": "evalscope80", "source": "f",
             "notes": "evalscope perf --parallel 8 --number 80 --dataset custom"}]
    pred = {r["id"]: r["predicted"] for r in validate_rows(CAT, rows)["rows"]}
    assert pred["one-wave"] > 2.0 * pred["long"]
    assert pred["ten-waves"] - pred["long"] == pytest.approx(
        0.1 * (pred["one-wave"] - pred["long"]), rel=1e-6)
    assert pred["n80"] == pytest.approx(pred["ten-waves"], rel=1e-9)
    assert pred["prefix80"] == pytest.approx(pred["n80"], rel=1e-9)
    assert pred["evalscope80"] == pytest.approx(pred["n80"], rel=1e-9)


def test_a_prefill_pass_pays_one_step_overhead_per_chunk():
    from moatmeter.perf.step import CHUNK_TOKENS

    s = resolve(CAT, accelerator="h100-sxm", stack="vllm-cuda", model="llama-3.1-8b", tp=1, pp=1,
                weight_dtype="bf16", kv_dtype="bf16", context=4096).s
    one = s.k["ov"] + s.k["ov_eager"]
    assert prefill_time(s, 1024.0).overhead == pytest.approx(one)
    n = 3.5 * CHUNK_TOKENS / 1024.0  # 3.5 chunks' worth of 1024-token prompts: 4 steps
    assert prefill_time(s, 1024.0, n).overhead == pytest.approx(4.0 * one)


def test_sweep_point_slower_than_a_higher_concurrency_is_skipped_as_unsteady():
    """A TPOT that falls as concurrency rises is not steady state (warm-up, kernels compiled on
    first use): that point's rows are skipped, the rest of the sweep is modelled."""
    from moatmeter.perf.validate import validate_rows

    base = {"source": "sweep", "accelerator": "NVIDIA H100 SXM5 80GB", "count": "1",
            "engine": "vLLM", "backend": "CUDA", "engine_version": "", "kv_dtype": "",
            "model": "meta-llama/Llama-3.1-8B-Instruct", "weight_dtype": "bf16",
            "scenario": "fixed_concurrency", "input_len": "1024", "output_len": "1024",
            "notes": ""}

    def row(rid: str, c: int, metric: str, value: float, **kw: str) -> dict[str, str]:
        return {**base, "id": rid, "concurrency": str(c), "metric": metric, "value": str(value),
                **kw}

    rows = [row("c4-tpot", 4, "tpot_ms", 22.7), row("c4-out", 4, "output_tokens_per_s", 170),
            row("c8-tpot", 8, "tpot_ms", 12.8), row("c16-tpot", 16, "tpot_ms", 14.0),
            # another document's slower run does not make this sweep's point unsteady
            row("other-c32-tpot", 32, "tpot_ms", 5.0, source="other"),
            # within the 10 % noise margin: kept
            row("n-c8", 8, "tpot_ms", 10.5, input_len="512"),
            row("n-c16", 16, "tpot_ms", 10.0, input_len="512")]
    out = validate_rows(CAT, rows)
    skipped = {s["id"]: s["reason"] for s in out["summary"]["skipped"]}
    assert set(skipped) == {"c4-tpot", "c4-out"}
    assert skipped["c4-tpot"].startswith(
        "not steady state: TPOT at concurrency 4 (22.7 ms) is above the same sweep's at 8")
    assert {r["id"] for r in out["rows"]} == {"c8-tpot", "c16-tpot", "other-c32-tpot", "n-c8",
                                              "n-c16"}
    # per-user output rate: 170/4 = 42.5 tok/s below 8 users' 600/8 = 75 tok/s
    rows = [row("a", 4, "output_tokens_per_s", 170), row("b", 8, "output_tokens_per_s", 600)]
    reason = validate_rows(CAT, rows)["summary"]["skipped"][0]["reason"]
    assert "output tok/s per user at concurrency 4 (42.5) is below the same sweep's at 8 (75)" \
        in reason


def test_profiling_pass_activations_leave_less_kv_cache():
    """vLLM V0 without chunked prefill profiles max(max_model_len, 2048) tokens at start-up and
    keeps their activations out of the KV cache: a 91,680-token pass on a 405B model at TP8
    costs each device 91,680 x 2 B x (2 x 16,384 + 3 x 53,248 / 8) = 9.67 GB."""
    from moatmeter.perf import memory as mem
    from moatmeter.perf.deploy import resolve
    from moatmeter.perf.observations import map_rows, prepare
    from moatmeter.perf.validate import validate_rows

    per_dev = mem.profile_activation_bytes(np.array([16384.0]), np.array([53248.0]),
                                           np.array([8.0]), np.array([91680.0]))
    assert per_dev[0] == pytest.approx(91680 * 2 * (2 * 16384 + 3 * 53248 / 8))
    assert mem.profile_activation_bytes(np.array([4096.0]), np.array([14336.0]), np.array([1.0]),
                                        np.array([np.nan]))[0] == 0.0

    kw = dict(accelerator="h100-sxm", stack="vllm-cuda", model="llama-3.1-405b", tp=8, pp=1,
              weight_dtype="fp8", kv_dtype="bf16", context=4096)
    plain, profiled = resolve(CAT, **kw), resolve(CAT, **kw, profile_tokens=91680)
    assert plain.kv_pool[0] - profiled.kv_pool[0] == pytest.approx(8 * per_dev[0])
    assert profiled.bcap[0] < plain.bcap[0]

    base = _obs_row(id="h64", accelerator="NVIDIA H100 SXM5 80GB", backend="CUDA",
                    weight_dtype="fp8", scenario="offline", input_len="2048", output_len="2048",
                    concurrency="256", metric="total_tokens_per_s", value="1000",
                    notes="TP8; --num-prompts=256 fixed-length prompts submitted at once")
    prof = {**base, "id": "h64-prof", "notes": base["notes"] + "; max_num_batched_tokens=91680"}
    obs, _ = map_rows(CAT, [base, prof])
    assert np.isnan(obs[0].profile_tokens) and obs[1].profile_tokens == 91680
    p, _ = prepare(CAT, obs)
    assert p.res.bcap[1] < p.res.bcap[0] < 256  # both KV-bound: 101 and 64 sequences
    pred = {r["id"]: r["predicted"] for r in validate_rows(CAT, [base, prof])["rows"]}
    assert pred["h64-prof"] < 0.9 * pred["h64"]  # fewer sequences fit: lower throughput


def test_mla_decode_attends_over_the_absorbed_latent_and_prefill_per_head():
    a = arch_of(CAT.model("deepseek-r1"))
    # decode: q·k over kv_lora_rank + rope (576), p·v over the latent (512) → 2·576 + 2·512
    assert 4 * mem.attn_dim(a, "decode") == 2 * (512 + 64) + 2 * 512
    # prefill: q·k over nope + rope (192), p·v over v_head_dim (128)
    assert 4 * mem.attn_dim(a, "prefill") == 2 * (128 + 64) + 2 * 128
    llama = arch_of(CAT.model("llama-3.1-8b"))
    assert mem.attn_dim(llama, "decode") == mem.attn_dim(llama, "prefill") == 128
    r = resolve(CAT, accelerator="h200-sxm", stack="sglang-cuda", model="deepseek-r1",
                tp=np.array([8]), pp=1, weight_dtype="fp8", kv_dtype="bf16", context=4096)
    assert r.s.attn[0] == a.layers * a.heads * (2 * 512 + 64) / 2
    assert r.s.attn_pre[0] == a.layers * a.heads * (128 + 64 + 128) / 2


def test_sliding_window_layers_attend_over_at_most_the_window():
    a = arch_of(CAT.model("gpt-oss-20b"))
    assert a.sliding_layers > 0 and a.sliding_window > 0
    full = a.layers * a.heads * a.head_dim

    def attn(ctx: float) -> float:
        r = resolve(CAT, accelerator="b200", stack="trtllm-cuda", model="gpt-oss-20b",
                    tp=np.array([1]), pp=1, weight_dtype="mxfp4", kv_dtype="fp8", context=ctx)
        return float(r.s.attn[0])

    ctx = 32 * a.sliding_window
    want = full * (1 - a.sliding_layers / a.layers * (1 - a.sliding_window / ctx))
    assert attn(ctx) == pytest.approx(want)
    assert attn(a.sliding_window / 2) == pytest.approx(full)  # shorter than the window: all


def test_measurement_date_from_notes_token_or_source():
    from moatmeter.perf.observations import measured_when

    assert measured_when("blog (2025-03-18)", "") == pytest.approx(2025 + 2.5 / 12)
    assert measured_when("blog (2025-03-18)", "x; measured=2024-11 (estimate)") == \
        pytest.approx(2024 + 10.5 / 12)
    assert math.isnan(measured_when("an undated page", "no date here"))


def test_maturity_trend_is_clamped_to_its_dates_and_absent_for_dense():
    from moatmeter.perf.calibrate import TREND_REACH, TREND_REF

    cal = Calibration()
    cal.offsets["trend"] = {"sglang|mla-moe": [0.5, 0.0, 0.0]}
    cal.meta = {"newest": 2026.5, "trend_range": {"sglang|mla-moe": [2025.0, 2025.5]}}
    z = lambda arch, when=None: cal.z("sglang-cuda", "SGLang", "Hopper",  # noqa: E731
                                      "nvidia/gpu/datacenter", arch, when)
    base = cal.z("sglang-cuda", "SGLang", "Hopper", "nvidia/gpu/datacenter", "dense")
    assert z("mla-moe", TREND_REF)[0] == pytest.approx(base[0])
    assert z("mla-moe", 2025.5)[0] == pytest.approx(base[0] + 0.25)
    # the newest date (2026.5) is beyond the trend's reach: clamped at 2025.5 + TREND_REACH
    assert z("mla-moe")[0] == pytest.approx(base[0] + 0.5 * (0.5 + TREND_REACH))
    assert z("dense", 2030.0)[0] == pytest.approx(base[0])


def test_fitted_trends_never_lower_efficiency_with_time():
    import json

    from moatmeter.perf.calibrate import bundled_path

    trends = json.loads(bundled_path().read_text())["offsets"]["trend"]
    assert trends, "the bundled fit has maturity trends"
    for slope in trends.values():
        assert slope[0] >= 0 and slope[1] >= 0 and slope[2] <= 0
    # dense models: llama.cpp's per-step overhead falls with its releases, its kernels do not move
    dense = {k: v for k, v in trends.items() if k.endswith("|dense")}
    assert list(dense) == ["llama.cpp|dense"] and dense["llama.cpp|dense"][2] < -0.05
    assert abs(dense["llama.cpp|dense"][0]) < 1e-6 and abs(dense["llama.cpp|dense"][1]) < 1e-6


def test_planner_caps_running_requests_at_each_engines_own_default():
    """Without --max-batch a deployment gets its engine's default: vLLM V1's 1024 sequences on
    devices of 70 GiB or more (A100s excepted), 256 on smaller ones, SGLang's 2048."""
    acc = ["h100-sxm", "mi300x", "l40s", "a100-sxm-80gb", "h100-sxm"]
    stack = ["vllm-cuda", "vllm-rocm", "vllm-cuda", "vllm-cuda", "sglang-cuda"]
    kw = dict(accelerator=np.array(acc), stack=np.array(stack), model="llama-3.1-8b", tp=1, pp=1,
              weight_dtype="bf16", kv_dtype="bf16", context=1024)
    assert resolve(CAT, **kw).max_batch.tolist() == [1024, 1024, 256, 256, 2048]
    assert resolve(CAT, **kw, max_batch=64).max_batch.tolist() == [64] * 5


def test_per_sequence_cpu_work_only_without_an_overlap_scheduler():
    """vLLM without an overlap scheduler spends PER_SEQ_CPU_S per running sequence between GPU
    steps; with one (the planner's default for vLLM) that work hides behind the next step, and
    engines without the cost (SGLang, TensorRT-LLM) never pay it."""
    from moatmeter.perf.step import PER_SEQ_CPU_S, decode_step

    kw = dict(accelerator="h100-sxm", model="llama-3.1-8b", tp=1, pp=1, weight_dtype="bf16",
              kv_dtype="bf16", context=2048)
    plain = resolve(CAT, stack="vllm-cuda", overlap=False, **kw).s
    ovl = resolve(CAT, stack="vllm-cuda", overlap=True, **kw).s
    assert PER_SEQ_CPU_S > 0
    assert ovl.per_seq is None and resolve(CAT, stack="vllm-cuda", **kw).s.per_seq is None
    assert resolve(CAT, stack="sglang-cuda", overlap=False, **kw).s.per_seq is None
    ctx = np.array([1500.0])
    for b in (1.0, 16.0, 256.0):
        batch = np.array([b])
        gap = decode_step(plain, batch, ctx).total[0] - decode_step(ovl, batch, ctx).total[0]
        assert gap == pytest.approx(b * PER_SEQ_CPU_S)
        assert decode_step(plain, batch, ctx).overhead[0] == pytest.approx(
            decode_step(ovl, batch, ctx).overhead[0] + b * PER_SEQ_CPU_S)


def test_a_batch_far_beyond_the_stacks_calibration_rows_is_noted():
    """`max_users_seen` keeps, per stack, the deepest batch its rows ran (prompt-processing rows
    say nothing about batched decode); `predict` names a deployment that goes EXTRAPOLATED_USERS
    times beyond it, and only then."""
    from types import SimpleNamespace as O

    from moatmeter.perf.api import EXTRAPOLATED_USERS
    from moatmeter.perf.validate import max_users_seen

    rows = [O(stack="a", scenario="single_stream", concurrency=1.0, replicas=1.0, engine="x"),
            O(stack="a", scenario="prefill_only", concurrency=math.nan, replicas=1.0, engine="x"),
            O(stack="b", scenario="fixed_concurrency", concurrency=64.0, replicas=2.0, engine="x"),
            O(stack="b", scenario="offline", concurrency=math.nan, replicas=1.0,
              engine="TensorRT-LLM")]
    assert max_users_seen(rows) == {"a": 1.0, "b": 8192.0}
    cal = Calibration.from_json(default_calibration().to_json())
    cal.meta["max_users_seen"] = {"llamacpp-cuda": 2.0, "vllm-cuda": 2.0}
    kw = dict(accelerator="h100-sxm", count=1, tp=1, model="llama-3.1-8b", weight_dtype="bf16",
              input_tokens=512, output_tokens=128, calib=cal)

    def noted(stack: str, users: float) -> bool:
        p = predict_deployment(CAT, stack=stack, concurrency=users, **kw)
        return any("extrapolated from lighter loads" in n for n in p.notes)

    assert not noted("llamacpp-cuda", 2.0 * EXTRAPOLATED_USERS)
    assert noted("llamacpp-cuda", 2.0 * EXTRAPOLATED_USERS + 1)
    assert noted("vllm-cuda", 64)
    del cal.meta["max_users_seen"]["vllm-cuda"]  # a stack the file says nothing about: no note
    assert not noted("vllm-cuda", 64)


def test_llamacpp_quantised_decode_pays_a_matvec_pass_per_token_up_to_eight():
    """llama.cpp's CUDA / HIP backends multiply GGUF block weights by 2-8 token columns with
    mul_mat_vec_q, which dequantises every block once per column: each token beyond the first adds
    its GEMM FLOPs at MMVQ_EFF of the fp32 rate to the weight read, and a step of more tokens (MMQ
    tiles) costs no less than one of 8. 16-bit weights, other backends and engines, and a single
    stream are untouched."""
    assert MMVQ_EFF > 0 and MMVQ_MAX_TOKENS == 8
    stacks = ["llamacpp-cuda", "llamacpp-cuda", "llamacpp-vulkan", "vllm-cuda", "llamacpp-hip"]
    accs = ["h100-sxm"] * 4 + ["mi300x"]
    dts = ["q4_0", "bf16", "q4_0", "int4", "q4_k_m"]
    # host_sampling off: llama-server's per-slot CPU sampling has a test of its own
    s = resolve(CAT, accelerator=accs, stack=stacks, model="llama-3.1-8b", tp=1, pp=1,
                weight_dtype=dts, kv_dtype="bf16", context=2048, calib=Calibration(),
                host_sampling=False).s
    assert s.mmvq_rate is not None
    fp32 = [CAT.accelerator(a).peak_tflops["fp32"] * 1e12 for a in accs]
    assert s.mmvq_rate == pytest.approx([fp32[0], 0.0, 0.0, 0.0, fp32[4]])
    ctx = np.full(5, 1024.0)
    t = {b: decode_step(s, np.full(5, float(b)), ctx) for b in (1, 2, 8, 9, 16)}
    # by hand for the H100 row: the step's memory time plus 7 extra columns at MMVQ_EFF of its
    # 67 fp32 TFLOP/s, each column 2 FLOPs per GEMM weight: Llama 3.1 8B's 8.03 B parameters less
    # its 0.525 B input embedding (a lookup, not a GEMM)
    extra = 7 * s.flops_tok[0] / (fp32[0] * MMVQ_EFF)
    assert extra == pytest.approx(7 * 2 * (8.03e9 - 0.525e9) / (67e12 * MMVQ_EFF), rel=0.01)
    stage8 = t[8].total[0] - t[8].overhead[0]
    assert stage8 == pytest.approx(t[8].memory[0] + extra, rel=1e-9)
    assert t[8].compute[0] == pytest.approx(extra)  # the bottleneck label sees the vector work
    assert t[2].total[0] - t[1].total[0] > 0.9 * extra / 7  # one more column, ~one more pass
    assert t[16].total[0] >= t[9].total[0] >= t[8].total[0]  # MMQ is chosen only where faster
    # a single stream reads the weights once: no extra pass
    plain = replace(s, mmvq_rate=None)
    assert t[1].total == pytest.approx(decode_step(plain, np.ones(5), ctx).total)
    # 16-bit weights, Vulkan and vLLM keep the plain roofline at every batch
    for b in (2, 8, 16):
        ref = decode_step(plain, np.full(5, float(b)), ctx).total
        assert t[b].total[1:4] == pytest.approx(ref[1:4])
    # where the term applies, 8 sequences cost far more than the weight read alone
    assert t[8].total[0] > 1.5 * decode_step(plain, np.full(5, 8.0), ctx).total[0]


@pytest.mark.parametrize("acc", [a for a in CAT.accelerators
                                 if CAT.accelerator(a).family in (
                                     "Ampere", "Ada", "Hopper", "Blackwell", "Blackwell-consumer")])
def test_llamacpp_batched_quantised_decode_never_below_single_stream(acc):
    """The mat-vec pass per token must not make a batch of 2-64 slower than one sequence alone
    on any catalog GPU llama.cpp's CUDA backend runs (its fp32 rate against its bandwidth)."""
    p1 = predict_deployment(CAT, accelerator=acc, count=1, tp=1, stack="llamacpp-cuda",
                            model="llama-3.1-8b", weight_dtype="q4_0", input_tokens=512,
                            output_tokens=128, concurrency=1, calib=Calibration())
    assert p1.feasible, p1.reason
    for c in (2, 4, 8, 16, 64):
        p = predict_deployment(CAT, accelerator=acc, count=1, tp=1, stack="llamacpp-cuda",
                               model="llama-3.1-8b", weight_dtype="q4_0", input_tokens=512,
                               output_tokens=128, concurrency=c, calib=Calibration())
        assert p.output_tokens_per_s >= p1.output_tokens_per_s


def test_mmvq_eff_is_what_the_published_rtx_3090_table_gives():
    """MMVQ_EFF is read off llama.cpp PR #15802's RTX 3090 table (benchmarks/data/
    llamacpp_small_batch.csv): the cost of each token beyond the first in steps of 1-8 tokens of
    Llama 8B Q4_0, as a share of the card's fp32 rate. The constant must stay what that table
    says."""
    import csv
    from pathlib import Path

    path = Path(__file__).parents[1] / "benchmarks" / "data" / "llamacpp_small_batch.csv"
    with path.open(newline="") as f:
        rows = [r for r in csv.DictReader(f)
                if "#15802" in r["source"] and r["column"] == "master"]
    step_s = {int(r["ubatch"]): int(r["ubatch"]) / float(r["tokens_per_s"]) for r in rows}
    assert sorted(step_s) == list(range(1, 9))
    s = resolve(CAT, accelerator="rtx-3090", stack="llamacpp-cuda", model="llama-3.1-8b", tp=1,
                pp=1, weight_dtype="q4_0", kv_dtype="bf16", context=1024).s
    per_token = (step_s[8] - step_s[1]) / 7
    fp32 = CAT.accelerator("rtx-3090").peak_tflops["fp32"] * 1e12
    assert s.flops_tok[0] / per_token / fp32 == pytest.approx(MMVQ_EFF, abs=0.005)


def test_llama_server_samples_each_slot_on_the_cpu():
    """llama-server copies every slot's logits to the host and samples them one slot after
    another between decode steps: LLAMA_SERVER_SAMPLE_S_PER_VOCAB x the vocabulary per running
    sequence and step (llama.cpp issue #27050). llama-bench / llama-batched-bench rows
    (host_sampling False) and other engines do not pay it."""
    from moatmeter.perf.deploy import LLAMA_SERVER_SAMPLE_S_PER_VOCAB as per_vocab
    from moatmeter.perf.step import PER_SEQ_CPU_S

    assert 3e-9 <= per_vocab <= 6e-9
    kw = dict(accelerator="h100-sxm", tp=1, pp=1, kv_dtype="bf16", context=2048,
              calib=Calibration())
    s = resolve(CAT, stack=["llamacpp-cuda", "llamacpp-cuda", "llamacpp-cuda", "vllm-cuda"],
                model=["llama-3.1-8b", "llama-2-7b", "llama-3.1-8b", "llama-3.1-8b"],
                weight_dtype=["q4_0", "q4_0", "q4_0", "bf16"],
                host_sampling=[True, True, False, True], overlap=False, **kw).s
    # by hand: 128,256 and 32,000 logits per slot
    assert s.per_seq == pytest.approx([per_vocab * 128256, per_vocab * 32000, 0.0, PER_SEQ_CPU_S])
    assert s.per_seq[0] == pytest.approx(0.5e-3, rel=0.01)  # ~0.5 ms per slot and step
    ctx = np.full(4, 1024.0)
    d16 = decode_step(s, np.full(4, 16.0), ctx).total - decode_step(s, np.ones(4), ctx).total
    plain = decode_step(replace(s, per_seq=None), np.full(4, 16.0), ctx).total - decode_step(
        replace(s, per_seq=None), np.ones(4), ctx).total
    assert d16 - plain == pytest.approx(15 * s.per_seq)
    # a planner deployment is a server: on by default for llama.cpp
    dflt = resolve(CAT, stack="llamacpp-cuda", model="llama-3.1-8b", weight_dtype="q4_0",
                   **kw).s
    assert dflt.per_seq == pytest.approx([per_vocab * 128256])


def test_only_llama_server_rows_are_marked_as_sampling_on_the_host():
    from moatmeter.perf.observations import bundled_observations, map_rows, read_observations

    obs, _ = map_rows(CAT, read_observations(bundled_observations()))
    marked = {o.id for o in obs if o.host_sampling}
    # exactly moatmeter's own llama-server runs (H100, H200): `bench serve` against llama-server
    served = {o.id for o in obs if re.match(r"mm-h[12]00-lcpp-(serve|slots)-", o.id)}
    assert len(served) >= 48 and marked == served
    lcpp = [o for o in obs if o.engine.lower() == "llama.cpp"]
    assert any("batched" in o.id for o in lcpp)
    assert not any(o.host_sampling for o in lcpp if "batched" in o.id or "-fa-" in o.id
                   or "-cuda-" in o.id)
    # a user's own `moatmeter bench serve` rows: tests/test_llamacpp_serve.py, on a real server
