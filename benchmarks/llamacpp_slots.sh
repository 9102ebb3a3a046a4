#!/usr/bin/env bash
# One llama-server with many slots (no prompt cache), driven by `moatmeter bench serve` at several
# concurrencies in turn: how its decode step grows with the slots in use. Random-weight GGUF as in
# llamacpp_gpu.sh; prints each run's figures, writes the reports, the SQLite store and the
# server's log to OUT_DIR.
#
#   benchmarks/llamacpp_slots.sh BIN_DIR OUT_DIR [MODEL] [USERS]
#
# MODEL: catalog model id (default llama-3.1-8b); USERS: comma-separated concurrencies (default
# 1,4,8,32; the server gets as many slots as the largest). GGUF names another file than
# /tmp/MODEL-q4_0.gguf (e.g. one written with random_gguf.py --vocab).
set -euo pipefail
BIN=${1:?BIN_DIR}
OUT=${2:?OUT_DIR}
MODEL=${3:-llama-3.1-8b}
USERS=${4:-1,4,8,32}
PORT=${PORT:-8091}
mkdir -p "$OUT"
# shellcheck source=benchmarks/llama_server_ready.sh
. "$(dirname "$0")/llama_server_ready.sh"
export LD_LIBRARY_PATH="$BIN${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
GGUF=${GGUF:-/tmp/$MODEL-q4_0.gguf}
[ -s "$GGUF" ] || python3 "$(dirname "$0")/random_gguf.py" --model "$MODEL" --type q4_0 --out "$GGUF"
SLOTS=$(tr ',' '\n' <<<"$USERS" | sort -n | tail -1)
"$BIN/llama-server" -m "$GGUF" -ngl 99 --host 127.0.0.1 --port "$PORT" -a m -fa on --cache-ram 0 \
  -np "$SLOTS" -c $((SLOTS * 768)) >"$OUT/server.log" 2>&1 &
pid=$!
trap 'kill "$pid" 2>/dev/null || true' EXIT
wait_ready "$PORT" "$pid" "$OUT/server.log"
for c in ${USERS//,/ }; do
  python3 -m moatmeter bench serve --url "http://127.0.0.1:$PORT" --model m --input-tokens 512 \
    --output-tokens 128 --db "$OUT/serve.db" --json --concurrency "$c" -n $((c < 4 ? 8 : 4 * c)) \
    --warmup "$c" >"$OUT/serve_np${SLOTS}_c$c.json"
  python3 - "$OUT/serve_np${SLOTS}_c$c.json" "np${SLOTS} c$c" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
print(f"bench serve {sys.argv[2]}: {r['status']}, {r['completed']}/{r['requested']} requests, "
      f"output {r['output_tokens_per_s']:.1f} tok/s, TTFT mean {r['ttft_ms']['mean']:.0f} ms, "
      f"TPOT mean {r['tpot_ms']['mean']:.2f} ms, input {r['mean_input_tokens']:.0f} tokens")
PY
done
