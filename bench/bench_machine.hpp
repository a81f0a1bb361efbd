#pragma once
// This machine's limits, measured in the same process as the kernels they judge (perf.md: a roofline
// fraction is only meaningful against limits of the same machine and the same run), and the
// aggregate statistics every smoe benchmark reports.
//
// Repetitions: run with --benchmark_repetitions=5 --benchmark_report_aggregates_only=true. Google
// Benchmark applies one statistic to the time and to every counter alike, so a row named `_min` holds
// the minimum time and the minimum of each rate; read times from `_min` and rates (GB/s, GFLOP/s,
// roofline) from `_max`.

#include <algorithm>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <memory>
#include <vector>

#include <benchmark/benchmark.h>
#include <xsimd/xsimd.hpp>

namespace smoe_bench {

using fbatch = xsimd::batch<float>;

// Independent FMA chains: latency x FMA ports of them keep every port busy (Zen 3/4: 4 x 2 = 8,
// Intel: 4 x 2 = 8). 12 leaves margin and, with the two operands, fits the 16 registers up to AVX2;
// AVX-512 has 32.
inline constexpr int kFmaChains = fbatch::size >= 16 ? 24 : 12;

// Runs `iters` rounds of kFmaChains dependent-chain FMAs; returns the FLOPs done.
[[gnu::noinline]] inline double fma_burst(std::int64_t iters) {
    fbatch acc[kFmaChains];
    for (int i = 0; i < kFmaChains; ++i) acc[i] = fbatch(1.0f + 0.001f * float(i));
    // Opaque operands so the compiler cannot fold the chains; acc -> a*acc + b converges, so no
    // infinities or denormals slow the loop.
    fbatch a(0.999f), b(0.001f);
    benchmark::DoNotOptimize(a);
    benchmark::DoNotOptimize(b);
    for (std::int64_t it = 0; it < iters; ++it)
        for (int i = 0; i < kFmaChains; ++i) acc[i] = xsimd::fma(acc[i], a, b);
    fbatch s = acc[0];
    for (int i = 1; i < kFmaChains; ++i) s += acc[i];
    float r = xsimd::hadd(s);
    benchmark::DoNotOptimize(r);
    return double(iters) * kFmaChains * fbatch::size * 2.0;
}

// Sums n floats (n a multiple of 4 * 2 batches) as four concurrent streams, one per quarter of the
// buffer: a GEMV reads several weight rows at once, and on this kind of VM one sequential stream
// reaches ~10% less than four (measured 17 vs 19 GB/s). Two accumulators per stream so the adder
// latency never limits the loop.
[[gnu::noinline]] inline float read_sum(float const* p, std::size_t n) {
    constexpr std::size_t W = fbatch::size, S = 4;
    std::size_t const chunk = n / S;
    fbatch acc[2 * S];
    for (auto& v : acc) v = fbatch(0.0f);
    for (std::size_t i = 0; i < chunk; i += 2 * W)
        for (std::size_t s = 0; s < S; ++s) {
            acc[2 * s] += fbatch::load_aligned(p + s * chunk + i);
            acc[2 * s + 1] += fbatch::load_aligned(p + s * chunk + i + W);
        }
    for (std::size_t j = 1; j < 2 * S; ++j) acc[0] += acc[j];
    return xsimd::hadd(acc[0]);
}

// 512 MiB: 16x the L3 of any machine this runs on, modest next to the expert weights.
inline constexpr std::size_t kDramBytes = std::size_t{512} << 20;

struct AlignedFloats {
    float* p;
    std::size_t n;
    explicit AlignedFloats(std::size_t count)
        : p(static_cast<float*>(::operator new[](count * sizeof(float), std::align_val_t{64}))), n(count) {
        std::memset(p, 0, count * sizeof(float));  // fault every page in before anything is timed
    }
    ~AlignedFloats() { ::operator delete[](p, std::align_val_t{64}); }
    AlignedFloats(AlignedFloats const&) = delete;
    AlignedFloats& operator=(AlignedFloats const&) = delete;
};

struct Limits {
    double peak_gflops;  // fp32 FMA, one thread
    double dram_gbps;    // DRAM read, one thread
};

// Best of short trials (~0.6 s in all: this VM's bandwidth varied 16-21 GB/s between runs minutes
// apart), measured the first time a benchmark asks: the layer benchmarks need the limits whatever
// --benchmark_filter selects, and Google Benchmark gives no hook that runs before them.
inline Limits const& limits() {
    static Limits const l = [] {
        using clock = std::chrono::steady_clock;
        auto secs = [](clock::time_point t0) { return std::chrono::duration<double>(clock::now() - t0).count(); };
        Limits r{0, 0};
        for (int trial = 0; trial < 5; ++trial) {
            auto const t0 = clock::now();
            double const fl = fma_burst(std::int64_t{1} << 21);
            r.peak_gflops = std::max(r.peak_gflops, fl / secs(t0) * 1e-9);
        }
        {
            AlignedFloats buf(kDramBytes / sizeof(float));
            for (int trial = 0; trial < 16; ++trial) {
                auto const t0 = clock::now();
                float s = read_sum(buf.p, buf.n);
                double const t = secs(t0);
                benchmark::DoNotOptimize(s);
                r.dram_gbps = std::max(r.dram_gbps, double(kDramBytes) / t * 1e-9);
            }
        }
        std::fprintf(stderr, "smoe_bench limits (%s, 1 thread): fp32 FMA peak %.1f GFLOP/s, DRAM read %.1f GB/s\n",
                     xsimd::default_arch::name(), r.peak_gflops, r.dram_gbps);
        return r;
    }();
    return l;
}

// Adds the `min` and `max` aggregates (see the top of this file); for Benchmark::Apply.
inline void best_stats(benchmark::internal::Benchmark* b) {
    b->ComputeStatistics("min", [](std::vector<double> const& v) { return *std::min_element(v.begin(), v.end()); })
        ->ComputeStatistics("max", [](std::vector<double> const& v) { return *std::max_element(v.begin(), v.end()); });
}

}  // namespace smoe_bench
