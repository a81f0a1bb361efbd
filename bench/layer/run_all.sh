#!/bin/sh
# Runs the smoe layer benchmark and both baselines (naive Eigen, PyTorch) in one session, one process
# at a time, and renders the charts: bench/layer/results/{smoe_*.json, eigen_*.jsonl, torch_*.jsonl,
# all.json, summary.md, roofline.png, speedup.png}.
#
#   bench/layer/run_all.sh                          # every shape (cold and hot); mixtral without f32, at T <= MIXTRAL_T_MAX
#   SHAPES="olmoe qwen2moe" bench/layer/run_all.sh  # a subset
#   QUICK=1 bench/layer/run_all.sh                  # the quick shape only, no baselines (seconds)
#
# BASELINES=0 runs smoe only (keeps the baselines' files already in OUT).
# GGML=path/to/ggml_moe (bench/baselines/build_ggml.sh builds it) adds llama.cpp's MoE graph on ggml, cold and hot
# (PROTOCOLS), 1 and 2 threads, for each type of GGML_TYPES (default "q4_0 q8_0 bf16"; also mxfp4; ggml repacks q4_0
# and mxfp4 as llama.cpp does), in the same session as smoe: ggml_<shape>_<type>_<protocol>_t<threads>.jsonl.
# STORE=0 skips the expert stores' benchmark (BM_store, bench/bench_expert_store.cpp: store.json, store.md, store.png);
# STORE_ONLY=1 runs it alone. Environment: TOKENS (default 1,8,32,128,512), BUILD (build dir, default build/bench-layer), OUT (results dir), SHAPES,
# FORMATS (default "f32 bf16 int8 int4 fp8 mxfp4 int4d int8d fp8b mxfp4b mxfp4d"; int8q, int8 per channel through
# QuantSwiGLU's exact path, is registered too; int4d/int8d/mxfp4d take the int8 dot path, fp8b/mxfp4b the bf16 dot
# path where the CPU has AVX512-BF16), MIXTRAL_T_MAX (default 32: a mixtral T = 512 call takes seconds), MIXTRAL_FORMATS (default
# "bf16 int8 int4 fp8 mxfp4 int4d": fp32 is 5.6 GB a copy, and the cold protocol needs two), PROTOCOLS (default "cold hot"), TORCH_T_MAX (default 128:
# PyTorch's CPU bf16 takes tens of seconds a call at T = 512; never mixtral), PYTHON
# (default /usr/bin/python3: Debian's torch and matplotlib). Check /proc/loadavg first: a second busy
# process makes the 2-thread figures meaningless (the script prints it before every step).
set -eu
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
BASE=$ROOT/../shared/baselines
BUILD=${BUILD:-$ROOT/build/bench-layer}
OUT=${OUT:-$ROOT/bench/layer/results}
SHAPES=${SHAPES:-"olmoe qwen2moe deepseek-v2-lite mixtral"}
MIXTRAL_T_MAX=${MIXTRAL_T_MAX:-32}
FORMATS=${FORMATS:-"f32 bf16 int8 int4 fp8 mxfp4 int4d int8d fp8b mxfp4b mxfp4d"}
MIXTRAL_FORMATS=${MIXTRAL_FORMATS:-"bf16 int8 int4 fp8 mxfp4 int4d"}
PROTOCOLS=${PROTOCOLS:-"cold hot"}
TORCH_T_MAX=${TORCH_T_MAX:-128}
TOKENS=${TOKENS:-1,8,32,128,512}
PYTHON=${PYTHON:-/usr/bin/python3}
mkdir -p "$OUT"

cmake -S "$ROOT" -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release -DSMOE_BUILD_TESTS=OFF -DSMOE_BUILD_EXAMPLES=OFF >/dev/null
cmake --build "$BUILD" --target smoe_bench -j2
BENCH=$BUILD/bench/smoe_bench

if [ "${STORE_ONLY:-0}" = 1 ] || { [ "${STORE:-1}" = 1 ] && [ "${QUICK:-0}" != 1 ]; }; then  # cold page cache per run; O_DIRECT where direct:1
    echo "== BM_store, load $(cut -d' ' -f1-3 /proc/loadavg)"
    "$BENCH" --benchmark_filter='^BM_store/' --benchmark_out="$OUT/store.json" --benchmark_out_format=json 2>&1 |
        grep -v '^BM_\|^---\|^Benchmark' || true
    if [ "${STORE_ONLY:-0}" = 1 ]; then
        "$PYTHON" "$ROOT/bench/layer/plot.py" "$OUT"
        exit 0
    fi
fi

if [ "${QUICK:-0}" = 1 ]; then
    "$BENCH" --benchmark_filter='^BM_layer_quick/' --benchmark_out="$OUT/smoe_quick.json" --benchmark_out_format=json
    exit 0
fi

[ "${BASELINES:-1}" = 0 ] ||
    g++ -std=c++20 -O3 -march=native -DNDEBUG -fopenmp -isystem /usr/include/eigen3 "$BASE/eigen_moe.cpp" -o "$BUILD/eigen_moe"

upto() { echo "$1" | tr , "\n" | awk -v m="$2" '$1 <= m' | paste -sd, -; }  # the tokens of list $1 up to $2
alt() { echo "$*" | tr -s ' ,' '||'; }                                        # "a b" -> "a|b", for a regex group
TORCH=$("$PYTHON" -c "import torch" 2>/dev/null && echo 1 || echo 0)
[ "$TORCH" = 1 ] || [ "${BASELINES:-1}" = 0 ] || echo "== no torch for $PYTHON (Debian: python3-torch): PyTorch baselines skipped"

for shape in $SHAPES; do
    tokens=$([ "$shape" = mixtral ] && upto "$TOKENS" "$MIXTRAL_T_MAX" || echo "$TOKENS")
    formats=$([ "$shape" = mixtral ] && alt $MIXTRAL_FORMATS || alt $FORMATS)
    echo "== $shape T=$tokens ($formats; $PROTOCOLS), load $(cut -d' ' -f1-3 /proc/loadavg)"
    "$BENCH" --benchmark_filter="^BM_layer/$shape/($formats)/($(alt $PROTOCOLS))/.*/T:($(alt "$tokens"))/" \
        --benchmark_out="$OUT/smoe_$shape.json" --benchmark_out_format=json 2>&1 | grep -v '^BM_\|^---\|^Benchmark' || true
    if [ -n "${GGML:-}" ]; then
        for threads in 1 2; do
            for type in ${GGML_TYPES:-q4_0 q8_0 bf16}; do
                for proto in $PROTOCOLS; do
                    echo "== ggml $shape $type $proto $threads thread(s), load $(cut -d' ' -f1-3 /proc/loadavg)"
                    "$GGML" "$shape" "$tokens" "$threads" 5 "$type" "$proto" 2>/dev/null \
                        >"$OUT/ggml_${shape}_${type}_${proto}_t$threads.jsonl"
                done
            done
        done
    fi
    [ "${BASELINES:-1}" = 0 ] && continue
    for threads in 1 2; do
        echo "== eigen $shape $threads thread(s), load $(cut -d' ' -f1-3 /proc/loadavg)"
        "$BUILD/eigen_moe" "$shape" "$tokens" "$threads" 5 >"$OUT/eigen_${shape}_t$threads.jsonl"
        if [ "$TORCH" = 0 ]; then  # files of another session would be judged against this one's limits
            rm -f "$OUT/torch_${shape}_"*"_t$threads.jsonl"
            continue
        fi
        [ "$shape" != mixtral ] || continue
        for dtype in f32 bf16; do
            echo "== torch $shape $dtype $threads thread(s), load $(cut -d' ' -f1-3 /proc/loadavg)"
            "$PYTHON" "$BASE/torch_moe.py" "$shape" --dtype "$dtype" --tokens "$(upto "$tokens" "$TORCH_T_MAX")" \
                --threads "$threads" --min-reps 5 >"$OUT/torch_${shape}_${dtype}_t$threads.jsonl"
        done
    done
done

"$PYTHON" "$ROOT/bench/layer/plot.py" "$OUT"
