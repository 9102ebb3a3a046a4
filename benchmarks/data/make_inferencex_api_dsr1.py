"""Rebuild ``inferencex_api_dsr1.csv`` (observation rows) from ``inferencex_api_dsr1.tsv``.

The TSV is a transcription of every single-node, aggregated record (``disagg`` and
``is_multinode`` false) in a stored snapshot of InferenceX's public benchmarks API, kept as a
test fixture in SemiAnalysisAI/InferenceX-app (see ``SOURCE``); numbers are cut, not rounded, to
5 significant digits. This script keeps the records an engine in the catalog ran without
speculative decoding (SGLang, TensorRT-LLM; not AMD's ATOM, not MTP) and writes three rows per
record: output tok/s (total tok/s where the record has no output/input split), mean TTFT, mean
TPOT. What each row's notes infer (lengths, recipe flags) is marked INFERRED there.

    python3 benchmarks/data/make_inferencex_api_dsr1.py
"""

from __future__ import annotations

import csv
from pathlib import Path

from moatmeter.bench.observations import OBS_COLUMNS

HERE = Path(__file__).parent
SOURCE = ("GitHub SemiAnalysisAI/InferenceX-app "
          "packages/app/cypress/fixtures/api/benchmarks.json "
          "(commit 3a600f1d9ce155536d52e2f58f744f27a301aac9): a stored snapshot of InferenceX's "
          "public benchmarks API, one record per configuration point (latest run), "
          "DeepSeek-R1-0528 points measured between October 2025 and May 2026")
ACCELERATOR = {"b200": "NVIDIA B200 (HGX)", "b300": "NVIDIA B300 (HGX)",
               "h200": "NVIDIA H200 SXM 141GB", "mi300x": "AMD Instinct MI300X",
               "mi325x": "AMD Instinct MI325X", "mi355x": "AMD Instinct MI355X"}
MEAN_LEN = {"1024": 921.5, "8192": 7372.5}  # uniform in [int(0.8 L), L]
LENGTHS = ("lengths: InferenceX fixed-seq-len runs of this period use its benchmark_serving.py "
           "random dataset with RANDOM_RANGE_RATIO 0.8 (.github/workflows/benchmark-tmpl.yml, "
           "stored revision 00983c3e), lengths uniform in [int(0.8 L), L], so mean input/output = "
           "921.5 for 1024 and 7372.5 for 8192 (INFERRED, not in the record); ignore-eos fixed "
           "outputs assumed; num_prompts = 10 x concurrency")


def _recipe(r: dict[str, str], tp: int, conc: int) -> tuple[str, list[str]]:
    """KV dtype and the server flags of the InferenceX recipe for this record's configuration."""
    hw, prec, dpa = r["hardware"], r["precision"], r["dp_attention"] == "true"
    if r["framework"] == "trt":
        notes = ["trtllm-serve (PyTorch backend) per the InferenceX recipe benchmarks/dsr1_"
                 f"{prec}_{hw}_trt.sh (INFERRED for this run: the record carries no server flags)",
                 "enable_attention_dp: true (attention data parallel, the record's "
                 "decode_dp_attention)" if dpa else
                 "attention data parallel off (the record's decode_dp_attention false)",
                 "kv_cache_config dtype fp8 (recipe)"]
        if (hw, prec, r["isl"], r["osl"]) == ("b200", "fp8", "1024", "1024") and 64 <= conc < 256:
            mnt = max(8192, (conc + 1024 + 64 + 63) // 64 * 64)
            notes.append("the recipe (benchmarks/dsr1_fp8_b200_trt.sh, stored revision 0a919c5f) "
                         "enables delayed batching at 1k/1k and 64-255 users: "
                         "batch_wait_timeout_iters 40, batch_wait_max_tokens_ratio 0.8, "
                         f"max_num_tokens {mnt} (INFERRED for this run)")
        return "fp8", notes
    notes = ["dp attention off (the record's decode_dp_attention false)"]
    if (hw, prec) == ("b200", "fp4"):
        rin = 30 if conc >= 16 else 10
        notes.append("SGLang per benchmarks/dsr1_fp4_b200.sh (stored revision 1fc5d73c): "
                     f"--kv-cache-dtype fp8_e4m3, modelopt_fp4, --scheduler-recv-interval {rin} "
                     "(10, or 30 at 16+ users), --stream-interval 10 (INFERRED for this run: the "
                     "record carries no server flags)")
        return "fp8", notes
    if hw in ("b200", "b300") and prec == "fp8":
        rin = 30 if conc >= 16 and tp == 8 else 10
        notes.append(("B300 reuses the B200 FP8 recipe (benchmarks/single_node/dsr1_fp8_b300.sh); "
                      if hw == "b300" else "")
                     + "SGLang per benchmarks/dsr1_fp8_b200.sh (stored revision 1fc5d73c): "
                     f"--scheduler-recv-interval {rin} (10, or 30 at 16+ users with TP8), "
                     "--stream-interval 30, chunked prefill 32768; KV dtype not set (left empty) "
                     "(INFERRED for this run)")
    elif hw == "mi355x":
        notes.append(("FP4 = MXFP4 (AMD's DeepSeek-R1-0528 MXFP4 checkpoint); "
                      if prec == "fp4" else "")
                     + "SGLang ROCm (aiter attention); KV dtype not set (left empty)")
    else:
        notes.append("KV dtype engine default (left empty)")
    return "", notes


def rows_from_record(r: dict[str, str]) -> list[dict[str, object]]:
    hw, fw, prec = r["hardware"], r["framework"], r["precision"]
    tp, ep, conc = int(r["tp"]), int(r["ep"]), int(r["conc"])
    amd = hw.startswith("mi")
    img = r["image"]
    version = ""
    if img:
        tag = img.split(":")[1]
        version = (f"SGLang {tag.split('-')[0]} ({img})" if fw == "sglang"
                   else f"TensorRT-LLM {tag} ({img})")
    kv, recipe = _recipe(r, tp, conc)
    shape = f"{int(r['isl']) // 1024}k/{int(r['osl']) // 1024}k"
    head = f"{shape} (ISL/OSL nominal {r['isl']}/{r['osl']}), concurrency {conc}"
    rest = [f"TP={tp}, EP={ep}, {tp} GPUs (count={tp}; the record's per-GPU throughputs are per TP "
            "GPU: Little's law with its mean TTFT and TPOT gives 8.0-8.4 GPUs for every TP8 point "
            "and 4.0-4.2 for every TP4 point, while its num_decode_gpu field reads TP x EP for "
            "EP>1 points)",
            f"measured={r['date'][:7]} (record date {r['date']}, run "
            f"{r['run_id'].replace('/', ' attempt ')})",
            "image " + (img or "not recorded (engine version unknown)"),
            "no speculative decoding (spec_method none); aggregated single-node serving (disagg "
            "false, is_multinode false)", *recipe, LENGTHS]
    values = []
    if r["output_tput_per_gpu"] != "NA":
        values.append(("out", "output_tokens_per_s", float(r["output_tput_per_gpu"]) * tp,
                       f"value = {r['output_tput_per_gpu']} output tok/s/GPU x {tp} GPUs "
                       "(output_tput_per_gpu)"))
    else:
        values.append(("total", "total_tokens_per_s", float(r["tput_per_gpu"]) * tp,
                       f"value = {r['tput_per_gpu']} tok/s/GPU x {tp} GPUs (tput_per_gpu; the "
                       "record has no output/input split)"))
    values.append(("ttft", "ttft_ms", float(r["mean_ttft_s"]) * 1000,
                   f"value = mean_ttft {r['mean_ttft_s']} s in ms"))
    values.append(("tpot", "tpot_ms", float(r["mean_tpot_s"]) * 1000,
                   f"value = mean_tpot {r['mean_tpot_s']} s in ms"))
    base = (f"ixapi-dsr1-{hw}-{fw}-{prec}-{int(r['isl']) // 1024}k{int(r['osl']) // 1024}k-"
            f"tp{tp}ep{ep}{'-dpa' if r['dp_attention'] == 'true' else ''}-c{conc}")
    common = {"source": SOURCE, "accelerator": ACCELERATOR[hw], "count": tp,
              "engine": "SGLang" if fw == "sglang" else "TensorRT-LLM",
              "backend": "ROCm" if amd else "CUDA", "engine_version": version,
              "model": "deepseek-ai/DeepSeek-R1",
              "weight_dtype": ("mxfp4" if amd else "fp4") if prec == "fp4" else "fp8",
              "kv_dtype": kv, "scenario": "single_stream" if conc == 1 else "fixed_concurrency",
              "concurrency": conc, "input_len": MEAN_LEN[r["isl"]],
              "output_len": MEAN_LEN[r["osl"]]}
    return [{"id": f"{base}-{suffix}", **common, "metric": metric, "value": f"{value:.5g}",
             "notes": "; ".join([head, how, *rest])} for suffix, metric, value, how in values]


def read_records() -> list[dict[str, str]]:
    """Every transcribed record (the TSV), as strings."""
    with open(HERE / "inferencex_api_dsr1.tsv", newline="") as f:
        return list(csv.DictReader(f, delimiter="\t"))


def make_rows(records: list[dict[str, str]]) -> list[dict[str, object]]:
    """Observation rows of the records an engine in the catalog ran without speculation."""
    return [row for r in records
            if r["spec_method"] == "none" and r["framework"] in ("sglang", "trt")
            for row in rows_from_record(r)]


def main() -> None:
    records = read_records()
    rows = make_rows(records)
    with open(HERE / "inferencex_api_dsr1.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=OBS_COLUMNS, lineterminator="\n")
        w.writeheader()
        w.writerows(rows)
    print(f"{len(records)} records, {len(rows) // 3} kept, {len(rows)} rows")


if __name__ == "__main__":
    main()
