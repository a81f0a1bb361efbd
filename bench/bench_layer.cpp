// The whole MoE layer forward (router projection, routing, dispatch, experts, combine), fp32, one
// thread, at the olmoe and qwen2moe shapes on the baselines' data (bench_data.hpp), so the figures
// compare with shared/baselines' eigen_moe / torch_moe.py of the same run.
//
// Timing follows perf.md: one warm-up call, then every call timed on its own and the minimum kept
// (Google Benchmark's manual time, so `_min` is the fastest repetition's mean; the counters min_ms,
// GB/s, GFLOP/s and roofline use that repetition's fastest single call). At exit a table of the
// minimum over all calls of all repetitions goes to stderr with each (shape, T)'s route_hash and
// y_abs_sum, the two figures to check against the baselines' JSON.
//
//   smoe_bench --benchmark_filter=BM_layer --benchmark_repetitions=5 --benchmark_report_aggregates_only=true

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <limits>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include <benchmark/benchmark.h>
#include <smoe/smoe.hpp>

#include "bench_data.hpp"
#include "bench_machine.hpp"

namespace {

using Layer = smoe::MoELayer<smoe::router::TopK, smoe::expert::SwiGLU<float>, smoe::balance::None>;
using smoe_bench::Shape;

constexpr std::int64_t kMaxTokens = 512;

struct ShapeData {
    Shape const* shape;
    std::unique_ptr<float[]> x, wr, w1, w3, w2;
};

// One shape's data at a time: qwen2moe's fp32 experts alone are 2 GB. Benchmarks run in registration
// order, so each shape is generated once.
ShapeData const& shape_data(Shape const& s) {
    static std::unique_ptr<ShapeData> cur;
    if (!cur || cur->shape != &s) {
        cur.reset();  // free the previous shape before the next is allocated
        using namespace smoe_bench;
        auto const d = std::size_t(s.d), f = std::size_t(s.f), E = std::size_t(s.E);
        auto const t0 = std::chrono::steady_clock::now();
        cur = std::make_unique<ShapeData>(ShapeData{&s, stream(kMaxTokens * d, kKeyX, kInputSd),
                                                    stream(E * d, kKeyRouter, kWeightSd),
                                                    stream(E * f * d, kKeyW1, kWeightSd),
                                                    stream(E * f * d, kKeyW3, kWeightSd),
                                                    stream(E * d * f, kKeyW2, kWeightSd)});
        std::fprintf(stderr, "smoe_bench %s: data generated in %.1f s\n", s.name,
                     std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
    }
    return *cur;
}

struct Best {
    double seconds = std::numeric_limits<double>::infinity();
    double bytes = 0, flops = 0, y_abs_sum = 0;
    std::int64_t distinct = 0;
    std::string route_hash;
};

// The minimum over every timed call, printed when the process exits.
struct Summary {
    std::map<std::pair<std::string, std::int64_t>, Best> rows;
    ~Summary() {
        if (rows.empty()) return;
        smoe_bench::Limits const& lim = smoe_bench::limits();
        std::fprintf(stderr,
                     "\nsmoe layer fp32, 1 thread, minimum over all calls (peak %.1f GFLOP/s, DRAM %.1f GB/s)\n"
                     "%-9s %4s %10s %8s %8s %9s %8s %17s %12s\n",
                     lim.peak_gflops, lim.dram_gbps, "shape", "T", "min_ms", "GB/s", "GFLOP/s", "roofline", "experts",
                     "route_hash", "y_abs_sum");
        for (auto const& [key, b] : rows) {
            double const roof = std::max(b.flops / (lim.peak_gflops * 1e9), b.bytes / (lim.dram_gbps * 1e9));
            std::fprintf(stderr, "%-9s %4lld %10.3f %8.1f %8.1f %9.3f %8lld %17s %12.6g\n", key.first.c_str(),
                         static_cast<long long>(key.second), b.seconds * 1e3, b.bytes / b.seconds * 1e-9,
                         b.flops / b.seconds * 1e-9, roof / b.seconds, static_cast<long long>(b.distinct),
                         b.route_hash.c_str(), b.y_abs_sum);
        }
    }
};

Summary& summary() {
    static Summary s;
    return s;
}

void BM_layer(benchmark::State& state, char const* shape_name) {
    Shape const& s = smoe_bench::shape(shape_name);
    std::int64_t const T = state.range(0);
    smoe_bench::Limits const lim = smoe_bench::limits();  // before the weights fill memory bandwidth's caches
    ShapeData const& D = shape_data(s);

    Layer::Config cfg;
    cfg.router = smoe::router::TopKConfig{.num_experts = s.E, .top_k = s.k, .norm_topk_prob = true};
    cfg.expert = {s.d, s.f, s.E};
    cfg.max_tokens = T;
    Layer::Weights w;
    w.gate = smoe::MatrixView<float const>(D.wr.get(), s.E, s.d);
    w.experts = smoe::expert::SwiGLUWeights<float>::dense(D.w1.get(), D.w3.get(), D.w2.get(), cfg.expert);
    Layer layer(cfg, w);
    std::vector<std::byte> ws(layer.workspace_size());
    std::vector<float> y(std::size_t(T * s.d));
    smoe::MatrixView<float const> const x(D.x.get(), T, s.d);
    smoe::MatrixView<float> const yv(y.data(), T, s.d);

    smoe::RoutingResult const r = layer.forward(x, yv, ws);  // warm-up; the routing is the same every call
    std::int64_t distinct = 0;
    for (std::int64_t e = 0; e < s.E; ++e) distinct += r.load(e) > 0;
    std::string const hash = smoe_bench::route_hash(r.expert_ids);
    double y_abs = 0;
    for (float v : y) y_abs += std::fabs(double(v));

    using clock = std::chrono::steady_clock;
    double best = std::numeric_limits<double>::infinity();
    for (auto _ : state) {
        auto const t0 = clock::now();
        smoe::RoutingResult rr = layer.forward(x, yv, ws);
        benchmark::DoNotOptimize(rr);
        benchmark::ClobberMemory();
        double const dt = std::chrono::duration<double>(clock::now() - t0).count();
        state.SetIterationTime(dt);
        best = std::min(best, dt);
    }

    double const bytes = smoe_bench::weight_bytes(s, distinct, 4.0), fl = smoe_bench::flops(s, T);
    double const roof = std::max(fl / (lim.peak_gflops * 1e9), bytes / (lim.dram_gbps * 1e9));
    state.counters["min_ms"] = best * 1e3;
    state.counters["tokens/s"] = double(T) / best;
    state.counters["GB/s"] = bytes / best * 1e-9;
    state.counters["GFLOP/s"] = fl / best * 1e-9;
    state.counters["roofline"] = roof / best;
    state.counters["experts"] = double(distinct);
    state.SetLabel(hash);

    Best& b = summary().rows[{s.name, T}];
    if (b.route_hash.empty())
        std::fprintf(stderr, "smoe_bench %s T=%lld: route_hash %s, %lld experts, y_abs_sum %.6g\n", s.name,
                     static_cast<long long>(T), hash.c_str(), static_cast<long long>(distinct), y_abs);
    if (best < b.seconds) b = {best, bytes, fl, y_abs, distinct, hash};
}

void layer_args(benchmark::internal::Benchmark* b) {
    b->ArgName("T");
    for (std::int64_t T : {1, 8, 32, 128, 512}) b->Arg(T);
    // >= 0.3 s of calls per repetition; a call over 0.3 s (T = 512) still gets one timed call after
    // the warm-up, so 5 repetitions give the 5 timed calls perf.md asks for.
    b->UseManualTime()->MinTime(0.3)->Unit(benchmark::kMillisecond);
    smoe_bench::best_stats(b);
}

}  // namespace

BENCHMARK_CAPTURE(BM_layer, olmoe, "olmoe")->Apply(layer_args);
BENCHMARK_CAPTURE(BM_layer, qwen2moe, "qwen2moe")->Apply(layer_args);
