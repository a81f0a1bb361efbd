// The research designs of issue 18 (research.md §4, §6, §7) against plain top-k at the same shapes
// (bench_data.hpp's olmoe and qwen2moe, T = 1 and 128, their k):
//
//   BM_research_route/<shape>/<policy>/T:…   routing on precomputed logits (stream 200, sd 1) through
//       smoe::route: topk (softmax, renormalised; the baseline), race (identity, whole call), race_g1
//       (race_group 1), topk_llep (top-k with balance::LeastLoaded, W = 4, the code's defaults) and
//       topk_none (top-k with balance::None: the baseline of llep)
//   BM_research_layer/<shape>/<format>/T:…    a whole MoELayer<TopK, QuantSwiGLU> forward, hot, one
//       thread: bf16 (the baseline), ternary (exact path), ternary_dot (int8 dot path), int4d (int4
//       g128 on the int8 dot path, for scale), film (expert::Film<QuantSwiGLU> on one bf16 FFN of the
//       shape with γ_e, β_e per expert: k hidden evaluations per token, one FFN's weights), film_merged
//       (layer::FilmMerged: the same experts, one FFN pass per token on Γ ⊙ h + B). Weights:
//       bench_data's streams, quantised at load one expert at a time.
//   BM_research_mofme/<block>/T:…   MoFME's own shape (d 384, E 16, k 4, fp32; its scripts use E 4-16,
//       k 2-4): film_block (layer::FilmBlock with the released indexing) against topk_ffn, a top-k
//       MoELayer<TopK, SwiGLU<float>> whose experts are d -> 4d -> d FFNs (the paper's comparison).
//
//   BM_research_llep/<shape>/<none|llep>/threads:2/T:…   a MoELayer<TopK, QuantSwiGLU (int4d)> forward_routed
//       on a DefaultThreadPool(2) with skewed routing: every token's k experts among experts 0-15, all
//       held by worker 0 of contiguous(E, 2), so the native loads are [k·T, 0]. none: balance::None, whose
//       threads split each expert by weight panels; llep: balance::LeastLoaded (W = 2, α 1.1, m 1), whose
//       plan gives each thread (expert, rows) items. CPU is the process's CPU time (both threads), Time
//       the wall time.
//
//   build/release/bench/smoe_bench --benchmark_filter=BM_research --benchmark_min_time=0.2

#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include <benchmark/benchmark.h>
#include <smoe/smoe.hpp>

#include "bench_data.hpp"
#include <memory>
#include <smoe/expert/film.hpp>
#include <smoe/layer/film_block.hpp>
#include <smoe/layer/film_merged.hpp>

namespace {

using smoe_bench::Shape;

enum Policy : int { kTopK, kRace, kRaceG1, kTopKNone, kTopKLlep };
char const* const kPolicyNames[] = {"topk", "race", "race_g1", "topk_none", "topk_llep"};

template <class Router, class... Balancer>
void route_loop(benchmark::State& state, Router const& router, smoe::MatrixView<float const> l, Balancer&... b) {
    std::vector<std::byte> ws(smoe::routing_workspace_size(router, b..., l.rows));
    for (auto _ : state) {
        smoe::RoutingResult r = smoe::route(router, b..., l, {}, ws);
        benchmark::DoNotOptimize(r);
        benchmark::ClobberMemory();
    }
}

void BM_research_route(benchmark::State& state, Shape s, Policy p) {
    std::int64_t const T = state.range(0);
    auto const logits = smoe_bench::stream(std::size_t(T * s.E), 200, 1.0);
    smoe::MatrixView<float const> const l(logits.get(), T, s.E);
    smoe::router::TopK const topk({.num_experts = s.E, .top_k = s.k, .norm_topk_prob = true});
    switch (p) {
        case kTopK: route_loop(state, topk, l); break;
        case kRace: route_loop(state, smoe::router::Race({.num_experts = s.E, .top_k = s.k}), l); break;
        case kRaceG1: route_loop(state, smoe::router::Race({.num_experts = s.E, .top_k = s.k, .race_group = 1}), l); break;
        case kTopKNone: {
            smoe::balance::None b;
            route_loop(state, topk, l, b);
            break;
        }
        case kTopKLlep: {
            smoe::balance::LeastLoaded b({.num_experts = s.E, .num_workers = 4});
            route_loop(state, topk, l, b);
            break;
        }
    }
    state.counters["time_per_token"] =
        benchmark::Counter(double(T) * double(state.iterations()), benchmark::Counter::kIsRate | benchmark::Counter::kInvert);
}

enum Fmt : int { kBf16, kTernary, kTernaryDot, kInt4Dot };
char const* const kFmtNames[] = {"bf16", "ternary", "ternary_dot", "int4d"};

template <class Balancer = smoe::balance::None>
using QLayerOf = smoe::MoELayer<smoe::router::TopK, smoe::expert::QuantSwiGLU, Balancer>;
using QLayer = QLayerOf<>;

// The layer of (shape, format) for up to 128 tokens, built once for both T (packing a layer takes seconds).
template <class Balancer = smoe::balance::None>
QLayerOf<Balancer>& layer_for(Shape const& s, Fmt fmt, typename Balancer::Config const& bc = {}) {
    using QLayer = QLayerOf<Balancer>;
    static std::unique_ptr<QLayer> layer;
    static std::string key;
    static std::unique_ptr<float[]> gate;
    std::string const want = std::string(s.name) + "/" + kFmtNames[fmt];
    if (layer && key == want) return *layer;
    layer.reset();
    std::int64_t const d = s.d, f = s.f, E = s.E;
    smoe::expert::SwiGLUConfig ec{d, f, E};
    if (fmt == kTernaryDot || fmt == kInt4Dot) ec.int8_dot = smoe::expert::Int8Dot::on;
    smoe::quant::Format const q = fmt == kBf16       ? smoe::quant::Format::bf16()
                                  : fmt == kInt4Dot ? smoe::quant::Format::int4(128)
                                                    : smoe::quant::Format::ternary();
    smoe::expert::QuantSwiGLUWeights w{std::vector<smoe::quant::Format>(std::size_t(E), q), std::vector<smoe::quant::Format>(std::size_t(E), q), {}};
    w.load = [&](std::int64_t e) {  // expert e's slices of the W1, W3, W2 streams, quantised at load
        auto const n = std::size_t(f * d);
        auto const w1 = smoe_bench::stream(n, smoe_bench::kKeyW1, smoe_bench::kWeightSd, std::uint64_t(e) * n);
        auto const w3 = smoe_bench::stream(n, smoe_bench::kKeyW3, smoe_bench::kWeightSd, std::uint64_t(e) * n);
        auto const w2 = smoe_bench::stream(n, smoe_bench::kKeyW2, smoe_bench::kWeightSd, std::uint64_t(e) * n);
        return smoe::expert::QuantExpertWeights{smoe::quant::quantize(smoe::MatrixView<float const>(w1.get(), f, d), q),
                                                smoe::quant::quantize(smoe::MatrixView<float const>(w3.get(), f, d), q),
                                                smoe::quant::quantize(smoe::MatrixView<float const>(w2.get(), d, f), q)};
    };
    gate = smoe_bench::stream(std::size_t(E * d), smoe_bench::kKeyRouter, smoe_bench::kWeightSd);
    layer = std::make_unique<QLayer>(typename QLayer::Config{.router = {.num_experts = E, .top_k = s.k, .norm_topk_prob = true}, .expert = ec,
                                                             .balance = bc, .max_tokens = 128},
                                     typename QLayer::Weights{smoe::MatrixView<float const>(gate.get(), E, d), {}, w});
    key = want;
    return *layer;
}

void BM_research_layer(benchmark::State& state, Shape s, Fmt fmt) {
    std::int64_t const T = state.range(0), d = s.d;
    QLayer& layer = layer_for(s, fmt);
    auto const x = smoe_bench::stream(std::size_t(T * d), smoe_bench::kKeyX, smoe_bench::kInputSd);
    std::vector<float> y(std::size_t(T * d));
    for (auto _ : state) {
        layer.forward(smoe::MatrixView<float const>(x.get(), T, d), smoe::MatrixView<float>(y.data(), T, d));
        benchmark::ClobberMemory();
    }
    state.counters["weight_MiB"] = double(layer.experts().packed_bytes()) / double(1 << 20);
    state.counters["GFLOP"] = benchmark::Counter(smoe_bench::flops(s, T) * 1e-9 * double(state.iterations()), benchmark::Counter::kIsRate);
}

void BM_research_llep(benchmark::State& state, Shape s, bool llep) {
    std::int64_t const T = state.range(0), d = s.d, k = s.k;
    smoe::DefaultThreadPool pool(2);
    auto run = [&](auto& layer) {
        layer.set_thread_pool(pool);
        auto const x = smoe_bench::stream(std::size_t(T * d), smoe_bench::kKeyX, smoe_bench::kInputSd);
        std::vector<float> y(std::size_t(T * d)), w(std::size_t(T * k), 1.0f / float(k));
        std::vector<std::int32_t> ids(std::size_t(T * k));
        for (std::int64_t t = 0; t < T; ++t)  // (t + 5j) mod 16: k <= 16 distinct experts of worker 0
            for (std::int64_t j = 0; j < k; ++j) ids[std::size_t(t * k + j)] = std::int32_t((t + 5 * j) % 16);
        for (auto _ : state) {
            layer.forward_routed(smoe::MatrixView<float const>(x.get(), T, d), smoe::MatrixView<std::int32_t const>(ids.data(), T, k),
                                 smoe::MatrixView<float const>(w.data(), T, k), smoe::MatrixView<float>(y.data(), T, d));
            benchmark::ClobberMemory();
        }
        layer.clear_thread_pool();
    };
    if (llep) {
        auto& layer = layer_for<smoe::balance::LeastLoaded>(s, kInt4Dot, {.num_experts = s.E, .num_workers = 2, .min_tokens_per_gemm = 1});
        run(layer);
        state.counters["planned_ratio"] = layer.balancer().llep_stats().planned_ratio;
    } else {
        run(layer_for(s, kInt4Dot));
    }
    state.counters["GFLOP"] = benchmark::Counter(smoe_bench::flops(s, T) * 1e-9 * double(state.iterations()), benchmark::Counter::kIsRate);
}

void BM_research_film(benchmark::State& state, Shape s, bool merged) {
    std::int64_t const T = state.range(0), d = s.d, f = s.f, E = s.E;
    using Inner = smoe::expert::QuantSwiGLU;
    using F = smoe::expert::Film<Inner>;
    smoe::expert::SwiGLUConfig const ic{d, f, 1};
    auto const q = smoe::quant::Format::bf16();
    auto const w1 = smoe_bench::stream(std::size_t(f * d), smoe_bench::kKeyW1, smoe_bench::kWeightSd),
               w3 = smoe_bench::stream(std::size_t(f * d), smoe_bench::kKeyW3, smoe_bench::kWeightSd),
               w2 = smoe_bench::stream(std::size_t(d * f), smoe_bench::kKeyW2, smoe_bench::kWeightSd);
    auto const gamma = smoe_bench::stream(std::size_t(E * f), 300, 1.0), beta = smoe_bench::stream(std::size_t(E * f), 301, 0.1);
    auto const gate = smoe_bench::stream(std::size_t(E * d), smoe_bench::kKeyRouter, smoe_bench::kWeightSd);
    auto const x = smoe_bench::stream(std::size_t(T * d), smoe_bench::kKeyX, smoe_bench::kInputSd);
    F::Weights const fw{Inner::Weights::quantized(w1.get(), w3.get(), w2.get(), ic, {q}, {q}), smoe::MatrixView<float const>(gamma.get(), E, f),
                        smoe::MatrixView<float const>(beta.get(), E, f)};
    smoe::router::TopKConfig const rc{.num_experts = E, .top_k = s.k, .norm_topk_prob = true};
    smoe::MatrixView<float const> const g(gate.get(), E, d);
    std::vector<float> y(std::size_t(T * d));
    auto loop = [&](auto& layer) {
        for (auto _ : state) {
            layer.forward(smoe::MatrixView<float const>(x.get(), T, d), smoe::MatrixView<float>(y.data(), T, d));
            benchmark::ClobberMemory();
        }
    };
    if (merged) {
        smoe::layer::FilmMerged<Inner> layer({.router = rc, .expert = {ic, E}, .max_tokens = T}, {g, fw});
        loop(layer);
    } else {
        smoe::MoELayer<smoe::router::TopK, F, smoe::balance::None> layer({.router = rc, .expert = {ic, E}, .max_tokens = T}, {g, {}, fw});
        loop(layer);
    }
    state.counters["GFLOP"] = benchmark::Counter(smoe_bench::flops(s, T) * 1e-9 * double(state.iterations()), benchmark::Counter::kIsRate);
}

void BM_research_mofme(benchmark::State& state, bool film) {
    std::int64_t const T = state.range(0), d = 384, a = 4 * d, E = 16, k = 4;
    auto st = [](std::size_t n, std::uint64_t key, double sd) { return smoe_bench::stream(n, key, sd); };
    auto const x = st(std::size_t(T * d), smoe_bench::kKeyX, 1.0);
    std::vector<float> y(std::size_t(T * d));
    auto const R = st(std::size_t(E * d), 1, 0.05);
    if (film) {
        auto const ln_w = st(std::size_t(d), 10, 0.1), ln_b = st(std::size_t(d), 11, 0.1), A = st(std::size_t(d * d), 12, 0.05),
                   av = st(std::size_t(d), 13, 0.1), B = st(std::size_t(d * d), 14, 0.05), bv = st(std::size_t(d), 15, 0.1), r = st(std::size_t(E), 16, 0.1),
                   U1 = st(std::size_t(a * d), 17, 0.05), c1 = st(std::size_t(a), 18, 0.1), U2 = st(std::size_t(d * a), 19, 0.05),
                   c2 = st(std::size_t(d), 20, 0.1), P = st(std::size_t(E * d * d), 21, 0.05), p = st(std::size_t(E * d), 22, 1.0),
                   Q = st(std::size_t(E * d * d), 23, 0.05), q = st(std::size_t(E * d), 24, 0.1);
        auto sp = [](std::unique_ptr<float[]> const& v, std::int64_t n) { return std::span<float const>(v.get(), std::size_t(n)); };
        smoe::layer::FilmBlock<> block({.hidden_size = d, .num_experts = E, .top_k = k, .max_tokens = T},
                                       {sp(ln_w, d), sp(ln_b, d), smoe::MatrixView<float const>(A.get(), d, d), smoe::MatrixView<float const>(B.get(), d, d),
                                        sp(av, d), sp(bv, d), smoe::MatrixView<float const>(R.get(), E, d), sp(r, E),
                                        smoe::MatrixView<float const>(U1.get(), a, d), sp(c1, a), smoe::MatrixView<float const>(U2.get(), d, a), sp(c2, d),
                                        {sp(P, E * d * d), sp(p, E * d), sp(Q, E * d * d), sp(q, E * d)}});
        for (auto _ : state) {
            block.forward(smoe::MatrixView<float const>(x.get(), T, d), smoe::MatrixView<float>(y.data(), T, d));
            benchmark::ClobberMemory();
        }
        return;
    }
    auto const w1 = st(std::size_t(E * a * d), 2, 0.05), w3 = st(std::size_t(E * a * d), 3, 0.05), w2 = st(std::size_t(E * d * a), 4, 0.05);
    smoe::expert::SwiGLUConfig const ec{d, a, E};
    smoe::MoELayer<smoe::router::TopK, smoe::expert::SwiGLU<float>, smoe::balance::None> layer(
        {.router = {.num_experts = E, .top_k = k, .score_after_topk = true}, .expert = ec, .max_tokens = T},
        {smoe::MatrixView<float const>(R.get(), E, d), {}, smoe::expert::SwiGLUWeights<float>::dense(w1.get(), w3.get(), w2.get(), ec)});
    for (auto _ : state) {
        layer.forward(smoe::MatrixView<float const>(x.get(), T, d), smoe::MatrixView<float>(y.data(), T, d));
        benchmark::ClobberMemory();
    }
}

[[maybe_unused]] bool const registered = [] {
    for (bool const film : {true, false})
        benchmark::RegisterBenchmark(film ? "BM_research_mofme/film_block" : "BM_research_mofme/topk_ffn", BM_research_mofme, film)
            ->ArgName("T")
            ->Arg(1)
            ->Arg(128)
            ->UseRealTime()
            ->Unit(benchmark::kMicrosecond);
    for (char const* name : {"olmoe", "qwen2moe"}) {
        Shape const s = smoe_bench::shape(name);
        for (int p = kTopK; p <= kTopKLlep; ++p)
            benchmark::RegisterBenchmark((std::string("BM_research_route/") + name + "/" + kPolicyNames[p]).c_str(), BM_research_route, s,
                                         Policy(p))
                ->ArgName("T")
                ->Arg(1)
                ->Arg(128)
                ->UseRealTime();
        for (int fm = kBf16; fm <= kInt4Dot; ++fm)
            benchmark::RegisterBenchmark((std::string("BM_research_layer/") + name + "/" + kFmtNames[fm]).c_str(), BM_research_layer, s, Fmt(fm))
                ->ArgName("T")
                ->Arg(1)
                ->Arg(128)
                ->UseRealTime()
                ->Unit(benchmark::kMillisecond);
        for (bool const llep : {false, true})
            benchmark::RegisterBenchmark((std::string("BM_research_llep/") + name + (llep ? "/llep" : "/none") + "/threads:2").c_str(),
                                         BM_research_llep, s, llep)
                ->ArgName("T")
                ->Arg(1)
                ->Arg(128)
                ->MeasureProcessCPUTime()
                ->UseRealTime()
                ->Unit(benchmark::kMillisecond);
        for (bool const merged : {false, true})
            benchmark::RegisterBenchmark((std::string("BM_research_layer/") + name + (merged ? "/film_merged" : "/film")).c_str(), BM_research_film, s,
                                         merged)
                ->ArgName("T")
                ->Arg(1)
                ->Arg(128)
                ->UseRealTime()
                ->Unit(benchmark::kMillisecond);
    }
    return true;
}();

}  // namespace
