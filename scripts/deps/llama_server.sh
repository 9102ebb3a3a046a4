#!/usr/bin/env bash
# Build llama.cpp's native `llama-server` (CPU only, no curl) from the source bundled in the
# llama-cpp-python sdist, for the end-to-end serving tests. Idempotent: skips when already built.
# Installs OUTSIDE the repo: ${MOATMETER_CACHE:-$HOME/.cache/moatmeter}/llama-server-<version>/
# Tests find it there, or via $MOATMETER_LLAMA_SERVER.
set -euo pipefail

VERSION="${LLAMA_CPP_PYTHON_VERSION:-0.3.36}"
CACHE="${MOATMETER_CACHE:-$HOME/.cache/moatmeter}"
DEST="$CACHE/llama-server-$VERSION"
BIN="$DEST/bin/llama-server"
JOBS="${LLAMA_BUILD_JOBS:-2}"

if [[ -x "$BIN" ]] && "$BIN" --version >/dev/null 2>&1; then
  echo "llama-server $VERSION already built: $BIN"
  exit 0
fi

if ! command -v cmake >/dev/null || ! command -v c++ >/dev/null; then
  if command -v apt-get >/dev/null; then
    SUDO=""
    if [ "$(id -u)" != "0" ] && command -v sudo >/dev/null 2>&1; then SUDO="sudo"; fi
    export DEBIAN_FRONTEND=noninteractive
    $SUDO apt-get update -q
    $SUDO apt-get install -y -q --no-install-recommends cmake g++ make ninja-build
  fi
fi
command -v cmake >/dev/null || { echo "llama_server.sh: cmake is required" >&2; exit 1; }
command -v c++ >/dev/null || { echo "llama_server.sh: a C++ compiler is required" >&2; exit 1; }

WORK="$CACHE/build-llama-server-$VERSION"
mkdir -p "$WORK" "$DEST/bin"
SDIST=""
for cand in "${LLAMA_SDIST_DIR:-/tmp/llsdist}/llama_cpp_python-$VERSION.tar.gz" "$WORK/llama_cpp_python-$VERSION.tar.gz"; do
  [[ -f "$cand" ]] && { SDIST="$cand"; break; }
done
if [[ -z "$SDIST" ]]; then
  echo "downloading llama-cpp-python==$VERSION sdist from PyPI"
  python3 -m pip download -q --no-deps --no-binary :all: -d "$WORK" "llama-cpp-python==$VERSION"
  SDIST="$WORK/llama_cpp_python-$VERSION.tar.gz"
fi

SRC="$WORK/src"
if [[ ! -f "$SRC/vendor/llama.cpp/CMakeLists.txt" ]]; then
  rm -rf "$SRC" && mkdir -p "$SRC"
  tar -xzf "$SDIST" -C "$SRC" --strip-components=1
fi

GEN=()
command -v ninja >/dev/null && GEN=(-G Ninja)
cmake -S "$SRC/vendor/llama.cpp" -B "$WORK/build" "${GEN[@]}" \
  -DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=OFF \
  -DLLAMA_CURL=OFF -DGGML_NATIVE=OFF -DGGML_OPENMP=OFF \
  -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=ON -DLLAMA_BUILD_TOOLS=ON \
  >"$WORK/cmake.log" 2>&1 || { tail -30 "$WORK/cmake.log" >&2; exit 1; }
nice -n 10 cmake --build "$WORK/build" --target llama-server -j "$JOBS" >"$WORK/build.log" 2>&1 \
  || { tail -40 "$WORK/build.log" >&2; exit 1; }
cp "$WORK/build/bin/llama-server" "$BIN.tmp" && mv "$BIN.tmp" "$BIN"
"$BIN" --version
echo "built $BIN"
