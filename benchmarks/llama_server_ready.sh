# Sourced by the llama.cpp benchmark scripts: wait_ready PORT PID LOG returns once the llama-server
# started as PID answers /health on 127.0.0.1:PORT, and exits the script if it dies first or is not
# ready within 120 s (its output is in LOG).
wait_ready() {
  local port=$1 pid=$2 log=$3
  for _ in $(seq 120); do
    curl -sf "http://127.0.0.1:$port/health" >/dev/null 2>&1 && return 0
    kill -0 "$pid" 2>/dev/null || { echo "llama-server exited (see $log)" >&2; exit 1; }
    sleep 1
  done
  echo "llama-server not ready after 120 s (see $log)" >&2
  exit 1
}
