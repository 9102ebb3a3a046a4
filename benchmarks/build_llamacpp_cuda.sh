#!/usr/bin/env bash
# Build llama.cpp's CUDA binaries (llama-bench, llama-batched-bench, llama-server) on a machine
# WITHOUT a GPU, to carry to a lent one as a small archive: a lease's minutes are too few to
# compile the FlashAttention kernels there (about 40 minutes on 2 cores here, for one architecture).
#
#   benchmarks/build_llamacpp_cuda.sh LLAMA_CPP_SRC ARCHIVE.tgz [CUDA_ARCH]
#
# Needs CUDA 13's compiler and runtime in CUDA_HOME (default /usr/local/cuda) and the cuBLAS headers
# and libraries of the `nvidia-cublas` wheel (found through the `nvidia` Python package). CUDA_ARCH defaults to 90 (H100, H200). With no GPU driver
# here, the driver library is an empty stand-in and the executables may leave its symbols
# unresolved: run them with the real driver preloaded (LD_PRELOAD=libcuda.so.1) and cuBLAS on
# LD_LIBRARY_PATH. The archive holds bin/ with the three programs and llama.cpp's own shared
# libraries, not CUDA's.
set -euo pipefail
SRC=${1:?LLAMA_CPP_SRC}
ARCHIVE=$(realpath -m "${2:?ARCHIVE.tgz}")
ARCH=${3:-90}
WORK=${WORK:-/tmp/llamacpp-cuda-build}
NV=$(python3 -c "import nvidia, os; print([p for p in nvidia.__path__ if os.path.isdir(p + '/cu13')][0])")/cu13
CUDA=${CUDA_HOME:-/usr/local/cuda}
[ -x "$CUDA/bin/nvcc" ] || { echo "no nvcc in $CUDA/bin (set CUDA_HOME)" >&2; exit 1; }
shopt -s nullglob

# one toolkit tree: the compiler's, plus cuBLAS from the wheel, plus the driver stand-in
R=$WORK/cudaroot
rm -rf "$R"
mkdir -p "$R/include" "$R/lib64/stubs"
ln -s "$CUDA/bin" "$R/bin"
ln -s "$CUDA/nvvm" "$R/nvvm"
[ -d "$CUDA/targets" ] && ln -s "$CUDA/targets" "$R/targets"
for f in "$CUDA"/include/* "$NV"/include/*; do ln -sf "$f" "$R/include/"; done
for f in "$CUDA"/lib64/* "$NV"/lib/*; do ln -sf "$f" "$R/lib64/"; done
ln -sf "$NV/lib/libcublas.so.13" "$R/lib64/libcublas.so"
ln -sf "$NV/lib/libcublasLt.so.13" "$R/lib64/libcublasLt.so"
echo 'void moatmeter_driver_stand_in(void) {}' >"$WORK/stub.c"
gcc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$R/lib64/stubs/libcuda.so" "$WORK/stub.c"
cp "$R/lib64/stubs/libcuda.so" "$R/lib64/libcuda.so"

export PATH=$R/bin:$PATH CUDA_PATH=$R CUDAToolkit_ROOT=$R
cmake -S "$SRC" -B "$WORK/build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DGGML_CUDA=ON \
  -DCMAKE_CUDA_ARCHITECTURES="$ARCH" -DCMAKE_CUDA_COMPILER="$R/bin/nvcc" -DCUDAToolkit_ROOT="$R" \
  -DLLAMA_CURL=OFF -DGGML_NATIVE=OFF -DLLAMA_BUILD_TESTS=OFF \
  -DCMAKE_EXE_LINKER_FLAGS="-Wl,--allow-shlib-undefined" -DCMAKE_SHARED_LINKER_FLAGS="-L$R/lib64"
nice -n 15 cmake --build "$WORK/build" --target llama-bench llama-batched-bench llama-server \
  -j "${JOBS:-$(nproc)}"

rm -rf "$WORK/pack"
mkdir -p "$WORK/pack/bin"
cp -a "$WORK/build/bin/"{llama-bench,llama-batched-bench,llama-server} "$WORK/build/bin/"lib*.so* \
  "$WORK/pack/bin/"
tar czf "$ARCHIVE" -C "$WORK/pack" bin
echo "$ARCHIVE: $(du -h "$ARCHIVE" | cut -f1)"
