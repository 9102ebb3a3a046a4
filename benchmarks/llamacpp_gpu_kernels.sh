#!/usr/bin/env bash
# llama.cpp's kernels on this machine's GPU, without a server: llama-bench prompt and generation
# speed for each weight type (F16 goes through cuBLAS/hipBLAS GEMMs, the block formats through
# llama.cpp's own quantised matmuls), then llama-batched-bench's decode speed at 1 to 32
# sequences decoded together. Random-weight GGUFs (benchmarks/random_gguf.py); prints each figure
# and writes the raw JSON/JSONL reports to OUT_DIR.
#
#   benchmarks/llamacpp_gpu_kernels.sh BIN_DIR OUT_DIR [MODEL]
#
# BIN_DIR holds llama-bench and llama-batched-bench (and their shared libraries). TYPES lists the
# weight types for llama-bench (default "f16 q8_0 q4_0"; TYPES= for none), BB_TYPE the one for
# batched decoding (default q4_0). FlashAttention is on: -fa 1 for llama-bench, and
# llama-batched-bench's default (auto) turns it on for CUDA GPUs. GGUF names the batched-decode
# file instead of /tmp/MODEL-TYPE.gguf (a variant, e.g. written with random_gguf.py --vocab).
set -euo pipefail
BIN=${1:?BIN_DIR}
OUT=${2:?OUT_DIR}
MODEL=${3:-llama-2-7b}
TYPES=${TYPES-f16 q8_0 q4_0}  # set but empty (TYPES=) skips llama-bench
BB_TYPE=${BB_TYPE:-q4_0}
mkdir -p "$OUT"
export LD_LIBRARY_PATH="$BIN${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"

gguf() {  # gguf TYPE -> path of the random-weight file (written once)
  local f=/tmp/$MODEL-$1.gguf
  [ -s "$f" ] || python3 benchmarks/random_gguf.py --model "$MODEL" --type "$1" --out "$f" >&2
  echo "$f"
}

for T in $TYPES; do
  "$BIN/llama-bench" -m "$(gguf "$T")" -ngl 99 -p 512,2048 -n 128 -r 3 -fa 1 -o json \
    >"$OUT/llama_bench_$T.json"
  python3 - "$OUT/llama_bench_$T.json" <<'EOF'
import json, sys
for r in json.load(open(sys.argv[1])):
    kind = f"pp{r['n_prompt']}" if r["n_prompt"] else f"tg{r['n_gen']}"
    print(f"llama-bench {r['model_type']} {kind}: {r['avg_ts']:.1f} ± {r['stddev_ts']:.1f} tok/s"
          f"  ({r['gpu_info']}, build {r['build_commit']})")
EOF
done

# 512-token prompts, 128 tokens each, B sequences at once (prompts not shared): decode speed
"$BIN/llama-batched-bench" -m "${GGUF:-$(gguf "$BB_TYPE")}" -ngl 99 -c 20992 -b 2048 -ub 512 \
  -npp 512 -ntg 128 -npl 1,2,4,8,16,32 --output-format jsonl 2>"$OUT/batched_bench.log" \
  | grep '^{' >"$OUT/batched_bench_$BB_TYPE.jsonl"
python3 - "$OUT/batched_bench_$BB_TYPE.jsonl" "$BB_TYPE" <<'EOF'
import json, sys
for line in open(sys.argv[1]):
    r = json.loads(line)
    step = 1000 * r["t_tg"] / r["tg"]
    print(f"batched-bench {sys.argv[2]} B={r['pl']:2d}: prompt {r['speed_pp']:8.1f} tok/s, "
          f"decode {r['speed_tg']:7.1f} tok/s ({step:.2f} ms per step)")
EOF
