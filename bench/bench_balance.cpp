// The cost of the balancer step (statistics, capacity dropping, loss-free bias) on top of routing
// alone, at T ∈ {1, 128, 4096} and E ∈ {8, 64, 256} (issue target: under 5 % with statistics on).
// BM_balance/route_only is the baseline: scores, top-k and the CSR. Every other variant adds the
// balancer on the same logits; overhead = its time / route_only's time - 1.

#include <cstdint>
#include <memory>
#include <span>
#include <vector>

#include <benchmark/benchmark.h>
#include <smoe/smoe.hpp>

#include "bench_data.hpp"
#include "bench_machine.hpp"

namespace {

enum Key : std::uint64_t { kKeyLogits = 200 };

smoe::router::TopKConfig config_for(std::int64_t E) {
    return {.num_experts = E, .top_k = E == 8 ? 2 : 8, .norm_topk_prob = true};
}

struct Setup {
    smoe::router::TopK router;
    std::unique_ptr<float[]> logits;
    smoe::MatrixView<float const> view;
    Setup(std::int64_t T, std::int64_t E)
        : router(config_for(E)), logits(smoe_bench::stream(std::size_t(T * E), kKeyLogits, 1.0)), view(logits.get(), T, E) {}
};

void finish(benchmark::State& state, std::int64_t T) {
    state.counters["tokens"] = benchmark::Counter(double(T) * double(state.iterations()), benchmark::Counter::kIsRate);
}

void BM_route_only(benchmark::State& state) {
    std::int64_t const T = state.range(0), E = state.range(1);
    Setup s(T, E);
    std::vector<std::byte> ws(smoe::routing_workspace_size(s.router, T));
    for (auto _ : state) {
        auto r = smoe::route(s.router, s.view, {}, ws);
        benchmark::DoNotOptimize(r);
        benchmark::ClobberMemory();
    }
    finish(state, T);
}

template <class Balancer>
void run_balanced(benchmark::State& state, typename Balancer::Config const& cfg) {
    std::int64_t const T = state.range(0), E = state.range(1);
    Setup s(T, E);
    Balancer balancer(cfg);
    std::vector<std::byte> ws(smoe::routing_workspace_size(s.router, balancer, T));
    for (auto _ : state) {
        auto r = smoe::route(s.router, balancer, s.view, {}, ws);
        benchmark::DoNotOptimize(r);
        benchmark::ClobberMemory();
    }
    finish(state, T);
}

void BM_none_stats(benchmark::State& state) { run_balanced<smoe::balance::None>(state, {}); }
void BM_none_no_stats(benchmark::State& state) { run_balanced<smoe::balance::None>(state, {.stats = {.collect = false}}); }
void BM_none_stats_and_losses(benchmark::State& state) {
    run_balanced<smoe::balance::None>(state, {.stats = {.aux_loss_coeff = 1e-2, .z_loss_coeff = 1e-3}});
}
void BM_capacity_probs(benchmark::State& state) {
    run_balanced<smoe::balance::Capacity>(state, {.capacity_factor = 1.0});
}
void BM_capacity_position(benchmark::State& state) {
    run_balanced<smoe::balance::Capacity>(state, {.capacity_factor = 1.0, .drop_policy = smoe::balance::DropPolicy::position});
}
void BM_loss_free_bias(benchmark::State& state) {
    run_balanced<smoe::balance::LossFreeBias>(state, {.num_experts = state.range(1), .update_every_forward = true});
}

void balance_args(benchmark::internal::Benchmark* b) {
    b->ArgNames({"T", "E"});
    for (std::int64_t E : {8, 64, 256})
        for (std::int64_t T : {1, 128, 4096}) b->Args({T, E});
    b->UseRealTime();
    smoe_bench::best_stats(b);
}

}  // namespace

BENCHMARK(BM_route_only)->Apply(balance_args);
BENCHMARK(BM_none_no_stats)->Apply(balance_args);
BENCHMARK(BM_none_stats)->Apply(balance_args);
BENCHMARK(BM_none_stats_and_losses)->Apply(balance_args);
BENCHMARK(BM_capacity_probs)->Apply(balance_args);
BENCHMARK(BM_capacity_position)->Apply(balance_args);
BENCHMARK(BM_loss_free_bias)->Apply(balance_args);
