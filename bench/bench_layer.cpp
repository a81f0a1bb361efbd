// The whole MoE layer forward (router projection, routing, dispatch, experts, combine) at the
// shapes of perf.md, weights fp32 / bf16 / int8, 1 and 2 threads, on the baselines' data
// (bench_data.hpp), so the figures compare with shared/baselines' eigen_moe / torch_moe.py of the
// same run (bench/layer/run_all.sh runs all three and draws the charts).
//
//   BM_layer/<shape>/<f32|bf16|int8>/threads:<1|2>/T:<1|8|32|128|512>
//   BM_layer_quick/...   a 256 x 128 x 8 experts shape, seconds in all (CI; no assertion on time)
//
// Timing follows perf.md: one warm-up call, then at least 5 calls timed one by one; min_ms and
// median_ms are over those calls (Google Benchmark's manual time sees the same calls). Counters: min_ms, GB/s of expert weight bytes touched (distinct
// experts x the format's bytes, int8 scales included), GFLOP/s (T·k·6·d·f + T·2·d·E), roofline =
// max(FLOPs / peak, bytes / bandwidth) / t with the peak and bandwidth of the thread count measured in
// this process (bench/layer/limits.hpp; bf16 and int8 against the fp32 FMA peak: this CPU has no
// bf16 or int8 dot product), bw_frac2 = GB/s over the 2-thread bandwidth (the decode target),
// y_abs_sum and the route_hash label to check against the baselines.
//
//   smoe_bench --benchmark_filter='BM_layer/olmoe' --benchmark_out=olmoe.json --benchmark_out_format=json

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <functional>
#include <limits>
#include <memory>
#include <string>
#include <vector>

#include <benchmark/benchmark.h>
#include <smoe/smoe.hpp>

#include "bench_data.hpp"
#include "layer/limits.hpp"

namespace {

using smoe::MatrixView;
using smoe_bench::Shape;

constexpr std::int64_t kMaxTokens = 512;
constexpr Shape kQuickShape{"quick", 256, 128, 8, 2};

// One (shape, format) layer at a time: mixtral's fp32 experts alone are 5.6 GB. Benchmarks run in
// registration order, so each is built once; the source tensors are released once the experts have
// packed their copy.
struct Model {
    Shape const* shape = nullptr;
    std::string format;
    std::unique_ptr<float[]> x, wr;
    std::shared_ptr<void> layer;
    std::function<smoe::RoutingResult(MatrixView<float const>, MatrixView<float>)> forward;
    std::function<void(smoe::DefaultThreadPool*)> set_pool;
    double expert_bytes = 0;
};

template <class W>
std::unique_ptr<W[]> to_format(std::unique_ptr<float[]> src, std::size_t n, std::vector<float>& scales, std::int64_t rows,
                               std::int64_t cols) {
    if constexpr (std::is_same_v<W, float>) {
        return src;
    } else {
        std::unique_ptr<W[]> out(new W[n]);
        if constexpr (std::is_same_v<W, smoe::bf16>) {
            for (std::size_t i = 0; i < n; ++i) out[i] = smoe::to_bf16(src[i]);
        } else {
            scales.resize(std::size_t(rows));
            smoe::quantize_int8_per_channel(MatrixView<float const>(src.get(), rows, cols), MatrixView<std::int8_t>(out.get(), rows, cols),
                                            scales);
        }
        return out;
    }
}

template <class W>
void build(Model& m, Shape const& s) {
    using Layer = smoe::MoELayer<smoe::router::TopK, smoe::expert::SwiGLU<W>, smoe::balance::None>;
    using namespace smoe_bench;
    auto const d = std::size_t(s.d), f = std::size_t(s.f), E = std::size_t(s.E);
    std::vector<float> s1, s3, s2;
    auto w1 = to_format<W>(stream(E * f * d, kKeyW1, kWeightSd), E * f * d, s1, s.E * s.f, s.d);
    auto w3 = to_format<W>(stream(E * f * d, kKeyW3, kWeightSd), E * f * d, s3, s.E * s.f, s.d);
    auto w2 = to_format<W>(stream(E * d * f, kKeyW2, kWeightSd), E * d * f, s2, s.E * s.d, s.f);
    typename Layer::Config cfg;
    cfg.router = smoe::router::TopKConfig{.num_experts = s.E, .top_k = s.k, .norm_topk_prob = true};
    cfg.expert = {s.d, s.f, s.E};
    cfg.max_tokens = kMaxTokens;
    typename Layer::Weights w;
    w.gate = MatrixView<float const>(m.wr.get(), s.E, s.d);
    if constexpr (std::is_same_v<W, std::int8_t>)
        w.experts = smoe::expert::SwiGLUWeights<W>::dense(w1.get(), s1.data(), w3.get(), s3.data(), w2.get(), s2.data(), cfg.expert);
    else
        w.experts = smoe::expert::SwiGLUWeights<W>::dense(w1.get(), w3.get(), w2.get(), cfg.expert);
    auto layer = std::make_shared<Layer>(cfg, w);  // packs; w1, w3, w2 are released on return
    m.expert_bytes = layer->experts().weight_bytes(0);
    m.forward = [l = layer.get()](MatrixView<float const> x, MatrixView<float> y) { return l->forward(x, y); };
    m.set_pool = [l = layer.get()](smoe::DefaultThreadPool* p) {
        if (p) l->set_thread_pool(*p);
        else l->clear_thread_pool();
    };
    m.layer = layer;
}

Model& model(Shape const& s, std::string const& format) {
    static Model cur;
    if (cur.shape != &s || cur.format != format) {
        cur = Model{};  // free the previous layer before the next is built
        auto const t0 = std::chrono::steady_clock::now();
        using namespace smoe_bench;
        cur.shape = &s;
        cur.format = format;
        cur.x = stream(std::size_t(kMaxTokens * s.d), kKeyX, kInputSd);
        cur.wr = stream(std::size_t(s.E * s.d), kKeyRouter, kWeightSd);
        if (format == "f32") build<float>(cur, s);
        else if (format == "bf16") build<smoe::bf16>(cur, s);
        else build<std::int8_t>(cur, s);
        std::fprintf(stderr, "smoe_bench %s %s: data generated and packed in %.1f s\n", s.name, format.c_str(),
                     std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
    }
    return cur;
}

smoe::DefaultThreadPool& pool2() {
    static smoe::DefaultThreadPool p(2);
    return p;
}

void BM_layer(benchmark::State& state, Shape const* sp, std::string const& format, int threads) {
    Shape const& s = *sp;
    std::int64_t const T = state.range(0);
    smoe_bench::ThreadLimits const& lim = smoe_bench::thread_limits();  // before the weights take memory
    Model& m = model(s, format);
    m.set_pool(threads > 1 ? &pool2() : nullptr);
    std::vector<float> y(std::size_t(T * s.d));
    MatrixView<float const> const x(m.x.get(), T, s.d);
    MatrixView<float> const yv(y.data(), T, s.d);

    smoe::RoutingResult const r = m.forward(x, yv);  // warm-up; the routing is the same every call
    std::int64_t distinct = 0;
    for (std::int64_t e = 0; e < s.E; ++e) distinct += r.load(e) > 0;
    std::string const hash = smoe_bench::route_hash(r.expert_ids);
    double y_abs = 0;
    for (float v : y) y_abs += std::fabs(double(v));

    using clock = std::chrono::steady_clock;
    std::vector<double> times;
    auto timed_call = [&] {
        auto const t0 = clock::now();
        smoe::RoutingResult rr = m.forward(x, yv);
        benchmark::DoNotOptimize(rr);
        benchmark::ClobberMemory();
        times.push_back(std::chrono::duration<double>(clock::now() - t0).count());
        return times.back();
    };
    // perf.md: at least 5 timed calls after the warm-up, however long one call is; Google Benchmark's
    // loop then adds calls until its minimum time.
    for (int i = 0; i < 5; ++i) timed_call();
    for (auto _ : state) state.SetIterationTime(timed_call());
    std::sort(times.begin(), times.end());
    double const best = times.front(), median = times[times.size() / 2];

    double const bytes = double(distinct) * m.expert_bytes, fl = smoe_bench::flops(s, T);
    double const roof = std::max(fl / (lim.peak_gflops[threads] * 1e9), bytes / (lim.dram_gbps[threads] * 1e9));
    state.counters["min_ms"] = best * 1e3;
    state.counters["median_ms"] = median * 1e3;
    state.counters["calls"] = double(times.size());
    state.counters["GB/s"] = bytes / best * 1e-9;
    state.counters["GFLOP/s"] = fl / best * 1e-9;
    state.counters["roofline"] = roof / best;
    state.counters["bw_frac2"] = bytes / best * 1e-9 / lim.dram_gbps[2];
    state.counters["experts"] = double(distinct);
    state.counters["y_abs_sum"] = y_abs;
    state.counters["peak_gflops"] = lim.peak_gflops[threads];
    state.counters["dram_gbps"] = lim.dram_gbps[threads];
    state.SetLabel(hash);
}

// Registered in a loop: shape, then format, then threads, then T, so each layer is built once.
[[maybe_unused]] int const registered = [] {
    char const* formats[] = {"f32", "bf16", "int8"};
    auto add = [&](char const* family, Shape const* s, std::vector<std::int64_t> const& tokens, double min_time) {
        for (char const* fmt : formats)
            for (int threads : {1, 2}) {
                std::string const name = std::string(family) + "/" + s->name + "/" + fmt + "/threads:" + std::to_string(threads);
                auto* b = benchmark::RegisterBenchmark(name.c_str(), BM_layer, s, std::string(fmt), threads);
                b->ArgName("T");
                for (std::int64_t T : tokens) b->Arg(T);
                // 5 timed calls before Google Benchmark's loop (see BM_layer), then calls up to min_time.
                b->UseManualTime()->MinTime(min_time)->Unit(benchmark::kMillisecond);
                smoe_bench::best_stats(b);
            }
    };
    add("BM_layer_quick", &kQuickShape, {1, 32}, 0.01);
    for (Shape const& s : smoe_bench::kShapes) add("BM_layer", &s, {1, 8, 32, 128, 512}, 0.3);
    return 0;
}();

}  // namespace
