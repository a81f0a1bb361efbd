// Routing alone (scores -> top-k -> renormalise, and the expert-major CSR the layer dispatches from)
// on precomputed logits: the per-token cost that decode pays on top of the expert weights.
// Logits are stream 200 with sd 1 (about the spread of X·Wrᵀ for d = 2048 and the baselines' data);
// DeepSeek-V3's selection bias is stream 201 with sd 0.1.
// Counters `tokens` and `GB` (logits read) are rates, shown as …/s.

#include <cstdint>
#include <span>
#include <vector>

#include <benchmark/benchmark.h>
#include <smoe/smoe.hpp>

#include "bench_data.hpp"
#include "bench_machine.hpp"

namespace {

enum Key : std::uint64_t { kKeyLogits = 200, kKeyBias = 201 };

void BM_route(benchmark::State& state, smoe::router::TopKConfig cfg) {
    std::int64_t const T = state.range(0), E = cfg.num_experts;
    auto const logits = smoe_bench::stream(std::size_t(T * E), kKeyLogits, 1.0);
    auto const bias = smoe_bench::stream(std::size_t(E), kKeyBias, 0.1);
    std::span<float const> const b = cfg.requires_expert_bias ? std::span<float const>(bias.get(), std::size_t(E))
                                                              : std::span<float const>{};
    smoe::router::TopK const router(cfg);
    std::vector<std::byte> ws(smoe::routing_workspace_size(router, T));
    smoe::MatrixView<float const> const l(logits.get(), T, E);
    for (auto _ : state) {
        smoe::RoutingResult r = smoe::route(router, l, b, ws);
        benchmark::DoNotOptimize(r);
        benchmark::ClobberMemory();
    }
    double const n = double(state.iterations());
    state.counters["tokens"] = benchmark::Counter(double(T) * n, benchmark::Counter::kIsRate);
    state.counters["GB"] = benchmark::Counter(double(T * E) * 4e-9 * n, benchmark::Counter::kIsRate);
}

void route_args(benchmark::internal::Benchmark* b) {
    b->ArgName("T")->Arg(1)->Arg(128)->Arg(4096)->UseRealTime();
    smoe_bench::best_stats(b);
}

smoe::router::TopKConfig softmax_renorm(std::int64_t E, std::int64_t k) {
    return {.num_experts = E, .top_k = k, .norm_topk_prob = true};
}

}  // namespace

BENCHMARK_CAPTURE(BM_route, E8_k2, softmax_renorm(8, 2))->Apply(route_args);
BENCHMARK_CAPTURE(BM_route, E64_k8, softmax_renorm(64, 8))->Apply(route_args);
BENCHMARK_CAPTURE(BM_route, E256_k8_deepseek_v3, smoe::router::TopKConfig::deepseek_v3())->Apply(route_args);
