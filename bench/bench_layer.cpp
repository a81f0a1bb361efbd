// The whole MoE layer forward (router projection, routing, dispatch, experts, combine) at the
// shapes of perf.md, 1 and 2 threads, on the baselines' data (bench_data.hpp), so the figures compare
// with shared/baselines' eigen_moe / torch_moe.py of the same run (bench/layer/run_all.sh runs all
// three and draws the charts). Weights: expert::SwiGLU<W> in fp32 / bf16 / int8 per channel, and
// expert::QuantSwiGLU (one layer type for all of them) in int4 g128 symmetric (smoe's quantiser),
// fp8 e4m3 128 x 128 blocks and MXFP4 (layer/rtn_quant.hpp's round-to-nearest) and int8 per channel
// (int8q), each quantised from the same fp32 tensors at load (built in bench_layer_quant.cpp).
//
//   BM_layer/<shape>/<f32|bf16|int8|int4|fp8|mxfp4|int8q|int4d|int8d|fp8b|mxfp4b|mxfp4d>/<hot|cold>/threads:<1|2>/T:<1|8|32|128|512>
//   BM_layer_quick/...   a 256 x 128 x 8 experts shape, seconds in all (CI; no assertion on time)
//
// Two protocols:
//   hot   one layer, the same input, call after call (as the baselines measure): the experts a
//         decode step touches can stay in the last-level cache between calls, which a model never
//         sees. Kept for the side-by-side with the baselines.
//   cold  L copies of the layer, each with its own packed experts and router weights, run in turn
//         per step as a model's layers would; time per layer = step time / L. L is the least count
//         whose weights total 4x the LLC and whose other L - 1 layers touch 4x the LLC between two
//         calls of one layer at T = 1 (at least 2); the run skips it, saying so, where the copies do
//         not fit in MemAvailable.
//
// Timing follows perf.md: one warm-up call (step), then at least 5 calls (steps) timed one by one;
// min_ms and median_ms are over those (Google Benchmark's manual time sees the same). Counters: min_ms,
// GB/s of expert weight bytes touched (distinct experts x one expert's packed bytes, weight_bytes(0):
// int8 scales and the quantised formats' factor tables included), GFLOP/s (T·k·6·d·f + T·2·d·E),
// roofline = max(FLOPs / peak, bytes / bandwidth) / t with the peak of the weight format (its widest
// instruction: the label's peak=; QuantSwiGLU's formats the fp32 FMA peak, labelled "exact fp32
// path", layer/limits.hpp) and the bandwidth of the thread count, measured in this process
// (bench_machine.hpp; the bandwidth again right after each benchmark's timing, the better of the two
// counts), bw_frac2 = GB/s over the 2-thread bandwidth, bw_paired (cold only: the median over steps of
// each step's GB/s over a 2-thread read of as many bytes right after it, paired_read_gbps; the decode
// target), roofline_paired (cold, 2 threads: the median over steps of the roofline fraction with that
// read as the bandwidth), copies (L), y_abs_sum, and the label "<route_hash> peak=<instruction>" to check
// against the baselines. A roofline fraction above 1 is impossible: the benchmark sets
// protocol_error = 1 and says so on stderr (limits measured low, or weights cached between calls).
//
//   smoe_bench --benchmark_filter='BM_layer/olmoe/.*/cold' --benchmark_out=olmoe.json --benchmark_out_format=json

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <limits>
#include <map>
#include <memory>
#include <span>
#include <string>
#include <thread>
#include <vector>

#include <benchmark/benchmark.h>
#include <smoe/smoe.hpp>

#include "bench_data.hpp"
#include "layer/layer_set.hpp"
#include "layer/limits.hpp"

namespace {

using smoe::MatrixView;
using smoe_bench::LayerFormat;
using smoe_bench::LayerSet;
using smoe_bench::Shape;

constexpr Shape kQuickShape{"quick", 256, 128, 8, 2};

// Copies the cold protocol runs (see the top of this file).
int cold_copies(Shape const& s, LayerFormat f) {
    double const llc4 = 4 * smoe_bench::llc_bytes(), bpw = smoe_bench::info(f).bytes_per_weight;
    double const layer = smoe_bench::weight_bytes(s, s.E, bpw), t1 = smoe_bench::weight_bytes(s, s.k, bpw);
    return int(std::max({2.0, std::ceil(llc4 / layer), 1 + std::ceil(llc4 / t1)}));
}

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
            smoe::quantize_int8_per_channel(MatrixView<float const>(src.get(), rows, cols),
                                            MatrixView<std::int8_t>(out.get(), rows, cols), scales);
        }
        return out;
    }
}

// MoELayer owns its packed experts but is not copyable, so each copy is constructed (and packs)
// from the same source tensors; the router weights are copied too, so no copy shares weight memory.
template <class W>
struct LayerCopies final : LayerSet {
    using Layer = smoe::MoELayer<smoe::router::TopK, smoe::expert::SwiGLU<W>, smoe::balance::None>;
    Shape s;
    typename Layer::Config cfg;
    std::unique_ptr<float[]> router_src;
    std::unique_ptr<W[]> w1, w3, w2;
    std::vector<float> s1, s3, s2;
    std::vector<std::unique_ptr<float[]>> routers;
    std::vector<std::unique_ptr<Layer>> layers;

    LayerCopies(Shape const& shape, std::int64_t max_tokens) : s(shape) {
        using namespace smoe_bench;
        auto const d = std::size_t(s.d), f = std::size_t(s.f), E = std::size_t(s.E);
        router_src = stream(E * d, kKeyRouter, kWeightSd);
        w1 = to_format<W>(stream(E * f * d, kKeyW1, kWeightSd), E * f * d, s1, s.E * s.f, s.d);
        w3 = to_format<W>(stream(E * f * d, kKeyW3, kWeightSd), E * f * d, s3, s.E * s.f, s.d);
        w2 = to_format<W>(stream(E * d * f, kKeyW2, kWeightSd), E * d * f, s2, s.E * s.d, s.f);
        cfg.router = smoe::router::TopKConfig{.num_experts = s.E, .top_k = s.k, .norm_topk_prob = true};
        cfg.expert = {s.d, s.f, s.E};
        cfg.max_tokens = max_tokens;
        add_copy();
        expert_bytes = layers[0]->experts().weight_bytes(0);
        packed_bytes = double(layers[0]->experts().packed_bytes());
        workspace_bytes = layers[0]->workspace_size();
    }
    std::size_t size() const override { return layers.size(); }
    void add_copy() override {
        std::size_t const n = std::size_t(s.E * s.d);
        routers.emplace_back(new float[n]);
        std::memcpy(routers.back().get(), router_src.get(), n * sizeof(float));
        typename Layer::Weights w;
        w.gate = MatrixView<float const>(routers.back().get(), s.E, s.d);
        if constexpr (std::is_same_v<W, std::int8_t>)
            w.experts = smoe::expert::SwiGLUWeights<W>::dense(w1.get(), s1.data(), w3.get(), s3.data(), w2.get(), s2.data(),
                                                              cfg.expert);
        else
            w.experts = smoe::expert::SwiGLUWeights<W>::dense(w1.get(), w3.get(), w2.get(), cfg.expert);
        layers.push_back(std::make_unique<Layer>(cfg, w));  // packs its own copy of the experts
    }
    smoe::RoutingResult forward(std::size_t i, MatrixView<float const> x, MatrixView<float> y,
                                std::span<std::byte> ws) override {
        return layers[i]->forward(x, y, ws);
    }
    void set_pool(smoe::DefaultThreadPool* pool) override {
        for (auto& l : layers) {
            if (pool) l->set_thread_pool(*pool);
            else l->clear_thread_pool();
        }
    }
};

struct Model {
    Shape const* shape = nullptr;
    LayerFormat format{};
    std::unique_ptr<float[]> x;
    std::unique_ptr<LayerSet> set;
    std::vector<std::byte> ws;  // one workspace for every copy, as an engine shares one between its layers
};

Model& model(Shape const& s, LayerFormat f, std::int64_t max_tokens) {
    static Model cur;
    if (cur.shape != &s || cur.format != f) {
        cur = Model{};  // free the previous layers before the next are built
        auto const t0 = std::chrono::steady_clock::now();
        cur.shape = &s;
        cur.format = f;
        cur.x = smoe_bench::stream(std::size_t(max_tokens * s.d), smoe_bench::kKeyX, smoe_bench::kInputSd);
        if (f == LayerFormat::f32) cur.set = std::make_unique<LayerCopies<float>>(s, max_tokens);
        else if (f == LayerFormat::bf16) cur.set = std::make_unique<LayerCopies<smoe::bf16>>(s, max_tokens);
        else if (f == LayerFormat::int8) cur.set = std::make_unique<LayerCopies<std::int8_t>>(s, max_tokens);
        else cur.set = smoe_bench::make_quant_layer_set(s, f, max_tokens);
        cur.ws.resize(cur.set->workspace_bytes);
        std::fprintf(stderr, "smoe_bench %s %s: data generated, converted and packed in %.1f s (%.4g bytes per weight)\n",
                     s.name, smoe_bench::info(f).name,
                     std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(),
                     cur.set->expert_bytes / (3.0 * double(s.d) * double(s.f)));
    }
    return cur;
}

// Grows the set to `copies`; an empty string when done, else why not (the copies would not fit).
std::string grow(Model& m, std::size_t copies) {
    LayerSet& set = *m.set;
    if (set.size() >= copies) return {};
    double const need = double(copies - set.size()) * set.packed_bytes, avail = smoe_bench::mem_available_bytes();
    double const margin = 1.0 * (1 << 30);  // the OS, the pool and the workspace
    if (avail > 0 && need + margin > avail) {  // 0: no /proc/meminfo, nothing to go by
        char why[256];
        std::snprintf(why, sizeof why,
                      "cold protocol needs %zu copies of %.2f GB, %.1f GB more than the %.1f GB MemAvailable (less 1 GB) "
                      "allows: skipped", copies, set.packed_bytes * 1e-9, (need + margin - avail) * 1e-9, avail * 1e-9);
        return why;
    }
    auto const t0 = std::chrono::steady_clock::now();
    while (set.size() < copies) set.add_copy();
    std::fprintf(stderr, "smoe_bench %s %s: %zu copies (%.1f GB packed) for the cold protocol in %.1f s\n", m.shape->name,
                 smoe_bench::info(m.format).name, copies, double(copies) * set.packed_bytes * 1e-9,
                 std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
    return {};
}

// DRAM bandwidth moves while a run goes on (this VM: a 2-thread probe read 34 GB/s at a process's
// start and the cold olmoe f32 layer 36 a minute later; 48-83 within an hour on Zen 5), so each
// benchmark also measures it right after its own timing and is judged against the better of that
// and the start's figure. A buffer of 8x the LLC is enough here and takes ~0.1 s.
smoe_bench::AlignedFloats const& dram_buffer() {
    constexpr std::size_t kMiB = std::size_t{1} << 20;  // whole MiB: every stream split stays whole batches
    static smoe_bench::AlignedFloats const buf(std::size_t(std::max(256.0, 8 * smoe_bench::llc_bytes() / kMiB)) * kMiB / 4);
    return buf;
}
double dram_gbps_now(int threads) { return smoe_bench::dram_gbps(dram_buffer(), threads, 3); }

// The VM's bandwidth also flips between two modes for seconds to minutes at a time (two threads read
// ~35 GB/s in one and 58-68 in the other; one thread ~32 in both), so a limit measured before or after a
// record may come from the other mode than the record (quant_matrix_s9: the 2-thread probe read 58-66 while
// two 1-thread layers, each streaming whole experts, read 29-36 beside a plain 2-thread read of 35-38). A
// cold step is therefore paired with a 2-thread read of as many bytes (up to kPairedMaxBytes) right after
// it, 8 streams per thread, in reads of up to kPairedPieceBytes from the next part of dram_buffer() (a ring,
// so always cold): bw_paired is the median over steps of the step's weight-byte rate over its read's rate,
// the fraction of what a plain read got at that moment, both sustained over as many bytes (roofline_paired
// the same for the roofline fraction of a 2-thread record). As many bytes, not a fixed 64 MiB, so that both
// rates are sustained over the same span (mixtral: 0.7 GB a step). A plain read, not a bound: the steps
// out-read it at times (quant_matrix_s11, mixtral T = 1: up to 1.20x against 64 MiB reads, 1.11x against
// as many bytes), the kernels' software prefetches keeping more lines in flight than its 8 streams a thread.
inline constexpr std::size_t kPairedPieceBytes = std::size_t{64} << 20, kPairedMaxBytes = std::size_t{1} << 30;
double paired_read_gbps(double bytes) {
    constexpr int kThreads = 2, kStreams = 8;
    constexpr std::size_t unit = kThreads * kStreams * 2 * smoe_bench::fbatch::size;  // read_sum's whole batches
    smoe_bench::AlignedFloats const& buf = dram_buffer();
    static std::size_t next = 0;  // the float where the next read starts
    std::size_t const piece = std::min(buf.n, kPairedPieceBytes / sizeof(float)) / unit * unit;
    std::size_t left = std::clamp(std::size_t(bytes / sizeof(float)), unit, kPairedMaxBytes / sizeof(float)) / unit * unit;
    // Past the pool's spin (DefaultThreadPool::kSpinTime, 50 us): its worker, still polling for the next call,
    // would share a core with the read and slow it, flattering the step's fraction.
    std::this_thread::sleep_for(std::chrono::microseconds(200));
    double sec = 0, read = 0;
    while (left > 0) {
        std::size_t const n = std::min(left, piece);
        if (next + n > buf.n) next = 0;
        double const s = smoe_bench::read_seconds(buf.p + next, n, kThreads, kStreams);
        if (s > 0) sec += s, read += double(n * sizeof(float));  // a read whose threads did not overlap: not counted
        next += n;
        left -= n;
    }
    return sec > 0 ? read / sec * 1e-9 : 0;
}

smoe::DefaultThreadPool& pool2() {
    static smoe::DefaultThreadPool p(2);
    return p;
}

// Fractions above 1, said on stderr when the program ends: Google Benchmark calls a benchmark more
// than once while it sizes the loop, and only its last call is the reported run.
struct ProtocolErrors {
    std::map<std::string, double> last;  // case -> roofline fraction of its latest call
    ~ProtocolErrors() {
        for (auto const& [what, roof] : last)
            if (roof > 1.0)
                std::fprintf(stderr, "smoe_bench: PROTOCOL ERROR %s: roofline fraction %.2f > 1 (limits measured low, or "
                             "weights cached between calls); not a result\n", what.c_str(), roof);
    }
};
ProtocolErrors& protocol_errors() {
    static ProtocolErrors e;
    return e;
}

struct Case {
    Shape const* shape;
    LayerFormat format;
    bool cold;
    int threads;
    int copies;  // 1 hot, L cold
    std::int64_t max_tokens;
};

void BM_layer(benchmark::State& state, Case c) {
    Shape const& s = *c.shape;
    std::int64_t const T = state.range(0);
    smoe_bench::Limits const& lim = smoe_bench::limits();  // before the weights take memory
    Model& m = model(s, c.format, c.max_tokens);
    if (std::string const why = grow(m, std::size_t(c.copies)); !why.empty()) {
        std::fprintf(stderr, "smoe_bench %s %s: %s\n", s.name, smoe_bench::info(c.format).name, why.c_str());
        state.SkipWithError(why.c_str());
        return;
    }
    LayerSet& set = *m.set;
    set.set_pool(c.threads > 1 ? &pool2() : nullptr);
    std::vector<float> y(std::size_t(T * s.d));
    MatrixView<float const> const x(m.x.get(), T, s.d);
    MatrixView<float> const yv(y.data(), T, s.d);
    auto y_abs_sum = [&] {
        double a = 0;
        for (float v : y) a += std::fabs(double(v));
        return a;
    };

    // Warm-up step; every copy routes alike (same input, same weights), so copy 0's routing and output
    // stand for all, which the other copies' outputs must match.
    smoe::RoutingResult const r = set.forward(0, x, yv, m.ws);
    std::int64_t const distinct = smoe_bench::distinct_experts(r);
    std::string const hash = smoe_bench::route_hash(r.expert_ids);
    double const y_abs = y_abs_sum();
    for (int i = 1; i < c.copies; ++i) {
        set.forward(std::size_t(i), x, yv, m.ws);
        if (y_abs_sum() != y_abs) {
            state.SkipWithError("a copy of the layer computed another output than copy 0");
            return;
        }
    }

    using clock = std::chrono::steady_clock;
    double const bytes = double(distinct) * set.expert_bytes;
    std::vector<double> times, reads;  // per layer; cold: the GB/s of the step's paired read (0: none)
    auto timed_step = [&] {
        auto const t0 = clock::now();
        for (int i = 0; i < c.copies; ++i) {
            smoe::RoutingResult rr = set.forward(std::size_t(i), x, yv, m.ws);
            benchmark::DoNotOptimize(rr);
        }
        benchmark::ClobberMemory();
        double const t = std::chrono::duration<double>(clock::now() - t0).count() / c.copies;
        times.push_back(t);
        reads.push_back(c.cold ? paired_read_gbps(bytes * c.copies) : 0);
        return t;
    };
    // perf.md: at least 5 timed calls after the warm-up, however long one call is; Google Benchmark's
    // loop then adds steps until its minimum time.
    for (int i = 0; i < 5; ++i) timed_step();
    for (auto _ : state) state.SetIterationTime(timed_step());
    // Per paired step: its GB/s over its read's, and (2 threads) its roofline fraction with that read as the bandwidth.
    std::vector<double> bw_paired, roof_paired;
    double const fl = smoe_bench::flops(s, T);
    smoe_bench::Peak const& peak = lim.of(smoe_bench::info(c.format).peak);
    for (std::size_t i = 0; i < times.size(); ++i) {
        if (reads[i] <= 0) continue;
        bw_paired.push_back(bytes / times[i] * 1e-9 / reads[i]);
        if (c.threads == 2) roof_paired.push_back(std::max(fl / (peak.gops[2] * 1e9), bytes / (reads[i] * 1e9)) / times[i]);
    }
    auto const median_of = [](std::vector<double>& v) {
        std::nth_element(v.begin(), v.begin() + std::ptrdiff_t(v.size() / 2), v.end());
        return v[v.size() / 2];
    };
    std::sort(times.begin(), times.end());
    double const best = times.front(), median = times[times.size() / 2];

    double const dram = std::max(lim.dram_gbps[c.threads], dram_gbps_now(c.threads));
    double const roof = std::max(fl / (peak.gops[c.threads] * 1e9), bytes / (dram * 1e9)) / best;
    state.counters["min_ms"] = best * 1e3;
    state.counters["median_ms"] = median * 1e3;
    state.counters["calls"] = double(times.size());
    state.counters["copies"] = c.copies;
    state.counters["GB/s"] = bytes / best * 1e-9;
    state.counters["GFLOP/s"] = fl / best * 1e-9;
    state.counters["roofline"] = roof;
    state.counters["protocol_error"] = roof > 1.0;
    state.counters["bw_frac2"] = bytes / best * 1e-9 / std::max(lim.dram_gbps[2], c.threads == 2 ? dram : 0.0);
    if (!bw_paired.empty()) state.counters["bw_paired"] = median_of(bw_paired);
    if (!roof_paired.empty()) state.counters["roofline_paired"] = median_of(roof_paired);
    state.counters["experts"] = double(distinct);
    state.counters["y_abs_sum"] = y_abs;
    state.counters["peak_gflops"] = peak.gops[c.threads];
    state.counters["dram_gbps"] = dram;
    state.SetLabel(hash + " peak=" + peak.instruction + (smoe_bench::info(c.format).exact_fp32 ? ", exact fp32 path"
                                                         : smoe_bench::info(c.format).int8_dot ? ", int8 dot path"
                                                         : smoe_bench::info(c.format).bf16_dot ? ", bf16 dot path"
                                                                                               : ""));
    char what[160];
    std::snprintf(what, sizeof what, "%s %s %s threads:%d T:%lld", s.name, smoe_bench::info(c.format).name,
                  c.cold ? "cold" : "hot", c.threads, static_cast<long long>(T));
    protocol_errors().last[what] = roof;
}

// Registered in a loop: shape, then format, then protocol, then threads, then T, so each layer set is
// built once and grown once.
[[maybe_unused]] int const registered = [] {
    auto add = [&](char const* family, Shape const* s, std::vector<std::int64_t> const& tokens, double min_time) {
        for (LayerFormat f : smoe_bench::kLayerFormats) {
            if (smoe_bench::info(f).bf16_dot && !smoe::kernels::cpu::cpu_has_avx512_bf16()) continue;  // bf16_dot on needs it
            for (bool cold : {false, true})
                for (int threads : {1, 2}) {
                    Case const c{s, f, cold, threads, cold ? cold_copies(*s, f) : 1, tokens.back()};
                    std::string const name = std::string(family) + "/" + s->name + "/" +
                                             smoe_bench::info(f).name + (cold ? "/cold" : "/hot") +
                                             "/threads:" + std::to_string(threads);
                    auto* b = benchmark::RegisterBenchmark(name.c_str(), BM_layer, c);
                    b->ArgName("T");
                    for (std::int64_t T : tokens) b->Arg(T);
                    // 5 timed steps before Google Benchmark's loop (see BM_layer), then steps up to
                    // min_time of wall time (a step is `copies` calls, each reported).
                    b->UseManualTime()->MinTime(min_time / c.copies)->Unit(benchmark::kMillisecond);
                    smoe_bench::best_stats(b);
                }
        }
    };
    add("BM_layer_quick", &kQuickShape, {1, 32}, 0.01);
    for (Shape const& s : smoe_bench::kShapes) add("BM_layer", &s, {1, 8, 32, 128, 512}, 0.3);
    return 0;
}();

}  // namespace
