#!/bin/sh
# Builds bench/baselines/ggml_moe (llama.cpp's MoE graph on ggml) against a ggml source tree, for
# bench/layer/run_all.sh's GGML baseline. Nothing here is part of smoe's build or CI.
#
#   bench/baselines/build_ggml.sh GGML_SRC [BUILD]      # BUILD defaults to build/ggml
#
# GGML_SRC is a ggml tree: ggml's own repository, or llama.cpp's ggml/ folder. One way to get the one
# llama.cpp vendors (PyPI's llama-cpp-python source package; ggml 0.25.3 in 0.3.36):
#   pip download --no-deps --no-binary :all: llama-cpp-python==0.3.36 -d /tmp/lcp
#   tar xzf /tmp/lcp/llama_cpp_python-0.3.36.tar.gz -C /tmp/lcp
#   bench/baselines/build_ggml.sh /tmp/lcp/llama_cpp_python-0.3.36/vendor/llama.cpp/ggml
# ggml is built as llama.cpp builds it for this CPU (GGML_NATIVE, OpenMP thread pool, static).
set -eu
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
SRC=$(cd "$1" && pwd)
BUILD=${2:-$ROOT/build/ggml}
[ -f "$SRC/ggml.pc.in" ] || : >"$SRC/ggml.pc.in"   # the PyPI source package leaves it out; ggml's CMake wants it
cmake -S "$SRC" -B "$BUILD/lib" -G Ninja -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON -DGGML_OPENMP=ON \
    -DBUILD_SHARED_LIBS=OFF -DGGML_BUILD_TESTS=OFF -DGGML_BUILD_EXAMPLES=OFF >/dev/null
cmake --build "$BUILD/lib" -j2
g++ -std=c++20 -O3 -march=native -DNDEBUG -fopenmp -I"$ROOT/../shared/baselines" -I"$SRC/include" \
    "$ROOT/bench/baselines/ggml_moe.cpp" "$BUILD/lib/src/libggml.a" "$BUILD/lib/src/libggml-cpu.a" \
    "$BUILD/lib/src/libggml-base.a" -o "$BUILD/ggml_moe"
echo "$BUILD/ggml_moe"
