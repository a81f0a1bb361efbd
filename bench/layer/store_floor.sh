#!/bin/sh
# BM_store (bench/bench_expert_store.cpp) on a model larger than memory: the mapped floor (llama.cpp's
# mmap, the OS paging the file) and the cached stores, inside a cgroup v1 memory controller whose limit
# is the cached store's budget plus the process's own memory. Run alone, the mapped store has all the
# free memory of the machine for the file's pages (the whole ~200 MB model after a few tokens) and is
# resident but for its page faults; here its page cache, like a buffered cached store's, gets what the
# cached store's slots get. Needs root and /sys/fs/cgroup/memory (cgroup v1).
#
#   bench/layer/store_floor.sh                          # mapped + cached LRU/LFU at 25 % with prefetch
#   BUDGET=10 FILTER='^BM_store/store:1/' bench/layer/store_floor.sh
#
# The limit: rss_anon_MB of a mapped run without a limit (the benchmark's own memory: its code, the
# routings, the threads; no expert bytes) + BUDGET % of expert_MB (every layer's expert bytes: the
# cached store's slots) + SLACK_MB (default 32: the kernel's own charges, page tables, and the process's
# own memory varying from run to run: 9.8-17.9 MB measured, and with 8 the kernel killed a run that
# needed more than its sample). Environment:
# BENCH (default build/bench-layer/bench/smoe_bench), BUDGET (default 25), FILTER (default the mapped
# cases and the cached ones at BUDGET % with prefetch), OUT (JSON file, default
# bench/layer/results/store_floor.json), REPS (--benchmark_repetitions, default 1).
set -eu
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
BENCH=${BENCH:-$ROOT/build/bench-layer/bench/smoe_bench}
BUDGET=${BUDGET:-25}
SLACK_MB=${SLACK_MB:-32}
FILTER=${FILTER:-"^BM_store/store:(1/budget:100|[23]/budget:$BUDGET/prefetch:1)/"}
OUT=${OUT:-$ROOT/bench/layer/results/store_floor.json}
CG=/sys/fs/cgroup/memory/smoe_store_floor_$$
mkdir "$CG"
trap 'rmdir "$CG"' EXIT
in_cgroup() { sh -c 'echo $$ > "$0/cgroup.procs"; exec "$@"' "$CG" "$@"; }

BASE=$(mktemp)
in_cgroup "$BENCH" --benchmark_filter='^BM_store/store:1/budget:100/prefetch:0/zipf:120/reuse:80/direct:0/warm:0/' \
    --benchmark_format=json >"$BASE" 2>/dev/null
LIMIT=$(python3 -c "
import json, sys
b = json.load(open(sys.argv[1]))['benchmarks'][0]
print(int((b['rss_anon_MB'] + b['expert_MB'] * $BUDGET / 100) * 1e6 + $SLACK_MB * 2**20))" "$BASE")
echo "== own memory $(python3 -c "import json,sys; b=json.load(open(sys.argv[1]))['benchmarks'][0]; print(round(b['rss_anon_MB'],1), 'MB, experts', round(b['expert_MB'],1), 'MB')" "$BASE"); limit $LIMIT bytes; load $(cut -d' ' -f1-3 /proc/loadavg)"
rm -f "$BASE"
echo "$LIMIT" >"$CG/memory.limit_in_bytes"
echo 0 >"$CG/memory.max_usage_in_bytes"
echo 0 >"$CG/memory.failcnt"
in_cgroup "$BENCH" --benchmark_filter="$FILTER" --benchmark_repetitions="${REPS:-1}" --benchmark_counters_tabular=true \
    --benchmark_out="$OUT" --benchmark_out_format=json
echo "== peak $(cat "$CG/memory.max_usage_in_bytes") bytes of $LIMIT, limit hit $(cat "$CG/memory.failcnt") times"
