#!/usr/bin/env bash
# Everything one short lease of an NVIDIA GPU can measure for moatmeter, in one call, so that a
# failed step costs only its own minutes: the device microbenchmarks (`bench device --quick`), the
# decode step against perf.step (decode_step_gpu.py), then llama.cpp with random-weight GGUFs:
# llama-bench and llama-batched-bench (llamacpp_gpu_kernels.sh), and `bench serve` against
# llama-server without its prompt cache (llamacpp_gpu.sh), for Llama-2-7B and Llama-3.1-8B Q4_0,
# and Llama-3.1-8B again with Llama-2's 32,000-entry vocabulary; last, one 32-slot llama-server at
# 1, 4, 8 and 32 users for both Llama-3.1-8B files (llamacpp_slots.sh; SLOT_USERS= skips it). The
# vocabulary pairs separate what a server step costs per slot and vocabulary entry (llama-server
# samples on the CPU) from the layers (benchmarks/llamacpp_sampling.py reads them).
#
#   benchmarks/gpu_session.sh BIN_DIR OUT_DIR
#
# BIN_DIR holds llama-bench, llama-batched-bench and llama-server of a CUDA build (and their
# shared libraries); python3 must import moatmeter, torch and gguf. A step that fails is reported
# and the next one runs. Each step prints its figures and its duration. MODEL_A and MODEL_B replace
# the two catalog models and DECODE_STEP_ARGS the decode-step arguments (a dry run of this script
# on a CPU build: MODEL_A=MODEL_B=tiny-llama-test DECODE_STEP_ARGS="--device cpu --layers 2").
set -uo pipefail
BIN=${1:?BIN_DIR}
OUT=${2:?OUT_DIR}
HERE=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$OUT"
failed=0

step() {  # step NAME COMMAND... : run, time, report a failure and go on
  local name=$1 t=$SECONDS rc=0
  shift
  echo "=== $(date -u +%T) $name"
  "$@" || rc=$?
  [ "$rc" = 0 ] || { echo "!!! $name failed (rc $rc)"; failed=1; }
  echo "--- $name: $((SECONDS - t)) s"
}

step gpu nvidia-smi --query-gpu=name,memory.total,driver_version,power.limit,clocks.max.sm,clocks.max.mem \
  --format=csv
case "$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1)" in
  *H200*) ACC=h200-sxm ;;
  *) ACC=h100-sxm ;;
esac

# the random-weight files, written in the background while the GPU runs the PyTorch steps
A=${MODEL_A:-llama-2-7b} B=${MODEL_B:-llama-3.1-8b}
GA=/tmp/$A-q4_0.gguf GB=/tmp/$B-q4_0.gguf GBV=/tmp/$B-q4_0-v32k.gguf
write() {  # write MODEL OUT [--vocab N]: to a temporary name first, so no half-written file is read
  python3 "$HERE/random_gguf.py" --model "$1" --type q4_0 --out "$2.part" "${@:3}" && mv "$2.part" "$2"
}
[ -s "$GA" ] || write "$A" "$GA" &
[ -s "$GB" ] || [ "$GB" = "$GA" ] || write "$B" "$GB" &
[ -s "$GBV" ] || write "$B" "$GBV" --vocab 32000 &

step bench-device sh -c "python3 -m moatmeter bench device --quick --json --no-store -a $ACC \
  >'$OUT/device_quick.json'"
# shellcheck disable=SC2086
step decode-step python3 "$HERE/decode_step_gpu.py" --accelerator "$ACC" \
  ${DECODE_STEP_ARGS:---batches 1,8,32,64,128,256 --context 1024}
step gguf-files wait

export TYPES
TYPES=q4_0 step kernels-A "$HERE/llamacpp_gpu_kernels.sh" "$BIN" "$OUT/kernels-a" "$A"
TYPES= step kernels-B "$HERE/llamacpp_gpu_kernels.sh" "$BIN" "$OUT/kernels-b" "$B"
TYPES= GGUF=$GBV step kernels-B-vocab32k "$HERE/llamacpp_gpu_kernels.sh" "$BIN" \
  "$OUT/kernels-b-vocab32k" "$B"

export SKIP_BENCH=1 SERVER_EXTRA="--cache-ram 0" TAG=_nocache
step serve-A "$HERE/llamacpp_gpu.sh" "$BIN" "$OUT/serve-a" "$A" q4_0
step serve-B "$HERE/llamacpp_gpu.sh" "$BIN" "$OUT/serve-b" "$B" q4_0
GGUF=$GBV step serve-B-vocab32k "$HERE/llamacpp_gpu.sh" "$BIN" "$OUT/serve-b-vocab32k" \
  "$B" q4_0

USERS=${SLOT_USERS-1,4,8,32}
if [ -n "$USERS" ]; then
  step slots-B "$HERE/llamacpp_slots.sh" "$BIN" "$OUT/slots/slots-b" "$B" "$USERS"
  GGUF=$GBV step slots-B-vocab32k "$HERE/llamacpp_slots.sh" "$BIN" "$OUT/slots/slots-b-vocab32k" \
    "$B" "$USERS"
fi
exit $failed
