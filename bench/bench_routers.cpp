// Every router on precomputed logits (issue 4's routing microbenchmarks): the SIMD router through
// smoe::route (scores, selection and the expert-major CSR) and the scalar oracle
// (smoe::reference::route_*) in the same binary, so the SIMD/scalar ratio is read off one run.
//
//   BM_router_simd/<Router>/T:…/E:…   T ∈ {1, 8, 128, 512, 4096}, E ∈ {8, 64, 256} (TopK also 128)
//   BM_router_ref/<Router>/T:…/E:…    the oracle, T ∈ {1, 512} only (it is slow by design)
//
// Routers: TopK (softmax, renormalised), TopP (top_p 0.4), ReLU, ExpertChoice (capacity_factor 1.0),
// NullExpert (N = E/2 null experts), Sinkhorn (default tol and max_iterations), RankwiseLoRA (E = rank); k = 2 for E = 8 and
// k = 8 otherwise where the router has a k. Logits are stream 200 with sd 1 (as bench_routing.cpp);
// for ReLU that makes about half of them positive.
//
// Counters: `tokens` and `GB` (logits read, T · num_logits · 4 bytes) are rates, shown as …/s;
// `time_per_token` is wall time per token (seconds, printed as e.g. 85ns). Targets: T = 1, E = 64, k = 8 under 1 µs a token; at
// T >= 512 SIMD >= 4x the oracle; logits read at >= 30 % of BM_machine_dram_read.
//   build/release/bench/smoe_bench --benchmark_filter='BM_router|BM_machine_dram' --benchmark_min_time=0.1

#include <cstdint>
#include <initializer_list>
#include <vector>

#include <benchmark/benchmark.h>
#include <smoe/kernels/reference/reference.hpp>
#include <smoe/smoe.hpp>

#include "bench_data.hpp"
#include "bench_machine.hpp"

namespace {

enum Key : std::uint64_t { kKeyLogits = 200 };

std::int64_t k_for(std::int64_t E) { return E == 8 ? 2 : 8; }

// One case per router: its config for E experts, the router, and the oracle on the same config.
struct TopKCase {
    using Router = smoe::router::TopK;
    static smoe::router::TopKConfig config(std::int64_t E) {
        return {.num_experts = E, .top_k = k_for(E), .norm_topk_prob = true};
    }
    static auto reference(Router::Config const& c, smoe::MatrixView<float const> l) { return smoe::reference::route_topk(c, l); }
};

struct TopPCase {
    using Router = smoe::router::TopP;
    static smoe::router::TopPConfig config(std::int64_t E) { return {.num_experts = E, .top_p = 0.4f}; }
    static auto reference(Router::Config const& c, smoe::MatrixView<float const> l) { return smoe::reference::route_top_p(c, l); }
};

struct ReLUCase {
    using Router = smoe::router::ReLU;
    static smoe::router::ReLUConfig config(std::int64_t E) { return {.num_experts = E}; }
    static auto reference(Router::Config const& c, smoe::MatrixView<float const> l) { return smoe::reference::route_relu(c, l); }
};

struct ExpertChoiceCase {
    using Router = smoe::router::ExpertChoice;
    static smoe::router::ExpertChoiceConfig config(std::int64_t E) { return {.num_experts = E, .capacity_factor = 1.0}; }
    static auto reference(Router::Config const& c, smoe::MatrixView<float const> l) {
        return smoe::reference::route_expert_choice(c, l);
    }
};

struct NullExpertCase {
    using Router = smoe::router::NullExpert;
    static smoe::router::NullExpertConfig config(std::int64_t E) {
        return {.num_experts = E, .num_null_experts = E / 2, .top_k = k_for(E)};
    }
    static auto reference(Router::Config const& c, smoe::MatrixView<float const> l) {
        return smoe::reference::route_null_expert(c, l);
    }
};

struct SinkhornCase {
    using Router = smoe::router::Sinkhorn;
    static smoe::router::SinkhornConfig config(std::int64_t E) { return {.num_experts = E, .top_k = k_for(E)}; }
    static auto reference(Router::Config const& c, smoe::MatrixView<float const> l) { return smoe::reference::route_sinkhorn(c, l); }
};

// SMoRA: E is the LoRA rank r (its "experts" are ranks); the logits are the rank logits z.
struct RankwiseLoRACase {
    using Router = smoe::router::RankwiseLoRA;
    static smoe::router::RankwiseLoRAConfig config(std::int64_t E) {
        return {.in_features = 1, .out_features = 1, .rank = E, .top_k = k_for(E), .lora_alpha = 16.0f};
    }
    static auto reference(Router::Config const& c, smoe::MatrixView<float const> l) {
        return smoe::reference::route_rankwise_lora(c, l);
    }
};

void finish(benchmark::State& state, std::int64_t T, std::int64_t num_logits) {
    double const n = double(state.iterations());
    state.counters["tokens"] = benchmark::Counter(double(T) * n, benchmark::Counter::kIsRate);
    // The inverted token rate: seconds per token (the console prints it with its SI prefix, e.g. 85ns).
    state.counters["time_per_token"] =
        benchmark::Counter(double(T) * n, benchmark::Counter::kIsRate | benchmark::Counter::kInvert);
    state.counters["GB"] = benchmark::Counter(double(T * num_logits) * 4e-9 * n, benchmark::Counter::kIsRate);
}

template <class Case>
void BM_router_simd(benchmark::State& state, Case) {
    std::int64_t const T = state.range(0), E = state.range(1);
    typename Case::Router const router(Case::config(E));
    std::int64_t const L = router.num_logits();
    auto const logits = smoe_bench::stream(std::size_t(T * L), kKeyLogits, 1.0);
    smoe::MatrixView<float const> const l(logits.get(), T, L);
    std::vector<std::byte> ws(smoe::routing_workspace_size(router, T));
    for (auto _ : state) {
        smoe::RoutingResult r = smoe::route(router, l, {}, ws);
        benchmark::DoNotOptimize(r);
        benchmark::ClobberMemory();
    }
    finish(state, T, L);
}

template <class Case>
void BM_router_ref(benchmark::State& state, Case) {
    std::int64_t const T = state.range(0), E = state.range(1);
    auto const cfg = Case::config(E);
    std::int64_t const L = typename Case::Router(cfg).num_logits();
    auto const logits = smoe_bench::stream(std::size_t(T * L), kKeyLogits, 1.0);
    smoe::MatrixView<float const> const l(logits.get(), T, L);
    for (auto _ : state) {
        auto r = Case::reference(cfg, l);
        benchmark::DoNotOptimize(r);
        benchmark::ClobberMemory();
    }
    finish(state, T, L);
}

void grid(benchmark::internal::Benchmark* b, std::initializer_list<std::int64_t> Ts, std::initializer_list<std::int64_t> Es) {
    b->ArgNames({"T", "E"});
    for (std::int64_t E : Es)
        for (std::int64_t T : Ts) b->Args({T, E});
    b->UseRealTime();
    smoe_bench::best_stats(b);
}

void simd_args(benchmark::internal::Benchmark* b) { grid(b, {1, 8, 128, 512, 4096}, {8, 64, 256}); }
void simd_args_topk(benchmark::internal::Benchmark* b) { grid(b, {1, 8, 128, 512, 4096}, {8, 64, 128, 256}); }
void ref_args(benchmark::internal::Benchmark* b) { grid(b, {1, 512}, {8, 64, 256}); }
void ref_args_topk(benchmark::internal::Benchmark* b) { grid(b, {1, 512}, {8, 64, 128, 256}); }

}  // namespace

BENCHMARK_CAPTURE(BM_router_simd, TopK, TopKCase{})->Apply(simd_args_topk);
BENCHMARK_CAPTURE(BM_router_ref, TopK, TopKCase{})->Apply(ref_args_topk);
BENCHMARK_CAPTURE(BM_router_simd, TopP, TopPCase{})->Apply(simd_args);
BENCHMARK_CAPTURE(BM_router_ref, TopP, TopPCase{})->Apply(ref_args);
BENCHMARK_CAPTURE(BM_router_simd, ReLU, ReLUCase{})->Apply(simd_args);
BENCHMARK_CAPTURE(BM_router_ref, ReLU, ReLUCase{})->Apply(ref_args);
BENCHMARK_CAPTURE(BM_router_simd, ExpertChoice, ExpertChoiceCase{})->Apply(simd_args);
BENCHMARK_CAPTURE(BM_router_ref, ExpertChoice, ExpertChoiceCase{})->Apply(ref_args);
BENCHMARK_CAPTURE(BM_router_simd, NullExpert, NullExpertCase{})->Apply(simd_args);
BENCHMARK_CAPTURE(BM_router_ref, NullExpert, NullExpertCase{})->Apply(ref_args);
BENCHMARK_CAPTURE(BM_router_simd, Sinkhorn, SinkhornCase{})->Apply(simd_args);
BENCHMARK_CAPTURE(BM_router_ref, Sinkhorn, SinkhornCase{})->Apply(ref_args);
BENCHMARK_CAPTURE(BM_router_simd, RankwiseLoRA, RankwiseLoRACase{})->Apply(simd_args);
BENCHMARK_CAPTURE(BM_router_ref, RankwiseLoRA, RankwiseLoRACase{})->Apply(ref_args);
