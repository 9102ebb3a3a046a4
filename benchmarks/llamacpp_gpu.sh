#!/usr/bin/env bash
# llama.cpp speed on this machine's GPU with a random-weight GGUF (no weights need to reach it):
# llama-bench with FlashAttention on and off, then `moatmeter bench serve` against
# llama-server with 16 slots (1 and 16 users) and with 1 slot (1 user). Prints each figure; the
# raw reports, the SQLite store and the servers' logs go to OUT_DIR.
#
#   benchmarks/llamacpp_gpu.sh BIN_DIR OUT_DIR [MODEL] [TYPE]
#
# BIN_DIR holds llama-bench and llama-server (and their shared libraries) of a CUDA/ROCm/... build;
# MODEL is a catalog model id (default llama-2-7b, the shape of llama.cpp's own scoreboards), TYPE
# q4_0 (default) or f16. Needs python3 with moatmeter importable and the gguf package.
# SERVER_EXTRA adds llama-server arguments to every server (e.g. "--cache-ram 0"), TAG suffixes
# the serve reports' names, and SKIP_BENCH=1 leaves out llama-bench.
set -euo pipefail
BIN=${1:?BIN_DIR}
OUT=${2:?OUT_DIR}
MODEL=${3:-llama-2-7b}
TYPE=${4:-q4_0}
PORT=${PORT:-8090}
mkdir -p "$OUT"
# shellcheck source=benchmarks/llama_server_ready.sh
. "$(dirname "$0")/llama_server_ready.sh"
export LD_LIBRARY_PATH="$BIN${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
GGUF=${GGUF:-/tmp/$MODEL-$TYPE.gguf}
[ -s "$GGUF" ] || python3 benchmarks/random_gguf.py --model "$MODEL" --type "$TYPE" --out "$GGUF"

[ -n "${SKIP_BENCH:-}" ] || "$BIN/llama-bench" -m "$GGUF" -ngl 99 -p 512,2048 -n 128 -r 3 -fa 1,0 \
  -o json >"$OUT/llama_bench.json"
[ -n "${SKIP_BENCH:-}" ] || python3 - "$OUT/llama_bench.json" <<'EOF'
import json, sys
for r in json.load(open(sys.argv[1])):
    kind = f"pp{r['n_prompt']}" if r["n_prompt"] else f"tg{r['n_gen']}"
    print(f"llama-bench fa={r['flash_attn']} {kind}: {r['avg_ts']:.1f} ± {r['stddev_ts']:.1f}"
          f" tok/s  ({r['gpu_info']}, {r['model_type']})")
EOF

serve() {  # serve NAME "SERVER ARGS" "BENCH ARGS"
  local name=$1${TAG:-} sargs="$2 ${SERVER_EXTRA:-}" bargs=$3
  echo "=== $name: $sargs" >>"$OUT/server.log"
  # shellcheck disable=SC2086
  "$BIN/llama-server" -m "$GGUF" -ngl 99 --host 127.0.0.1 --port "$PORT" -a l2 $sargs \
    >>"$OUT/server.log" 2>&1 &
  local pid=$!
  trap 'kill "$pid" 2>/dev/null || true' EXIT
  wait_ready "$PORT" "$pid" "$OUT/server.log"
  # shellcheck disable=SC2086
  python3 -m moatmeter bench serve --url "http://127.0.0.1:$PORT" --model l2 --input-tokens 512 \
    --output-tokens 128 --db "$OUT/serve.db" --json $bargs >"$OUT/serve_$name.json"
  kill "$pid"; wait "$pid" 2>/dev/null || true
  trap - EXIT
  python3 - "$OUT/serve_$name.json" "$name" <<'EOF'
import json, sys
r = json.load(open(sys.argv[1]))
print(f"bench serve {sys.argv[2]}: {r['status']}, {r['completed']}/{r['requested']} requests, "
      f"output {r['output_tokens_per_s']:.1f} tok/s, TTFT mean {r['ttft_ms']['mean']:.0f} ms "
      f"(p50 {r['ttft_ms']['p50']:.0f}, p90 {r['ttft_ms']['p90']:.0f}), "
      f"TPOT mean {r['tpot_ms']['mean']:.2f} ms, input {r['mean_input_tokens']:.0f} tokens")
EOF
}

serve np16_c1 "-np 16 -c 40960 -fa on" "--concurrency 1 -n 8 --warmup 2"
serve np16_c16 "-np 16 -c 40960 -fa on" "--concurrency 16 -n 64 --warmup 16"
serve np1_c1 "-np 1 -c 4096 -fa on" "--concurrency 1 -n 8 --warmup 2"
