#pragma once
// This machine's limits, measured in the same process as the kernels they judge (perf.md: a roofline
// fraction is only meaningful against limits of the same machine and the same run), and the
// aggregate statistics every smoe benchmark reports.
//
// Each weight format has its own peak, from the widest instruction this CPU has for it, chosen at
// run time (the binary may be built for another CPU than it runs on):
//   f32   vfmadd231ps zmm (AVX-512F), else ymm (AVX2+FMA), else xmm mulps+addps (SSE2)
//   bf16  vdpbf16ps zmm (AVX512-BF16), else the f32 peak (the kernels widen bf16 to fp32 and FMA)
//   int8  vpdpbusd zmm (AVX512-VNNI), else ymm (AVX-VNNI), else the f32 peak
// counted as 2 FLOP per FMA lane, 4 FLOP per fp32 lane of vdpbf16ps (two bf16 products, two adds)
// and 8 OP per 32-bit lane of vpdpbusd (four u8 x s8 products, four adds). The instruction functions
// carry their ISA as a target attribute, so they compile with any x86-64 flags (g++ 12, clang 14)
// and are only called when the CPU has the ISA.
//
// Repetitions: run with --benchmark_repetitions=5 --benchmark_report_aggregates_only=true. Google
// Benchmark applies one statistic to the time and to every counter alike, so a row named `_min` holds
// the minimum time and the minimum of each rate; read times from `_min` and rates (GB/s, GFLOP/s,
// roofline) from `_max`.

#if !defined(__x86_64__)
#error "smoe_bench measures x86-64 instructions (bench_machine.hpp)"
#endif

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <thread>
#include <vector>

#include <benchmark/benchmark.h>
#include "smoe/detail/xsimd.hpp"  // not <xsimd/xsimd.hpp>, and before <immintrin.h>: see there
#include "smoe/kernels/cpu/pack.hpp"
#include "smoe/kernels/cpu/int8_dot.hpp"

#include <immintrin.h>

namespace smoe_bench {

// ---------------------------------------------------------------------------------------------
// Peak probes: one instruction on kChains independent accumulators. Chains >= latency x ports keep
// every port busy (FMA: 4 cycles x 2 ports = 8 on Zen 3-5 and Intel; the dot products are no
// slower); zmm probes use 24 of the 32 registers, ymm/xmm 12 of 16 (two more hold the operands).

struct FmaZmm {
    using V = __m512;
    static constexpr int kChains = 24;
    static constexpr double kOps = 16 * 2;
    static constexpr char const* kName = "vfmadd231ps zmm";
    static bool supported() { return __builtin_cpu_supports("avx512f"); }
    [[gnu::target("avx512f")]] static V step(V c, V a, V b) { return _mm512_fmadd_ps(c, a, b); }
};
struct FmaYmm {
    using V = __m256;
    static constexpr int kChains = 12;
    static constexpr double kOps = 8 * 2;
    static constexpr char const* kName = "vfmadd231ps ymm";
    static bool supported() { return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"); }
    [[gnu::target("avx2,fma")]] static V step(V c, V a, V b) { return _mm256_fmadd_ps(c, a, b); }
};
struct MulAddXmm {  // x86-64's baseline: no FMA, so a multiply and an add per lane
    using V = __m128;
    static constexpr int kChains = 12;
    static constexpr double kOps = 4 * 2;
    static constexpr char const* kName = "mulps+addps xmm";
    static bool supported() { return true; }
    static V step(V c, V a, V b) { return _mm_add_ps(_mm_mul_ps(c, a), b); }
};
struct Bf16DotZmm {
    using V = __m512;
    static constexpr int kChains = 24;
    static constexpr double kOps = 16 * 4;
    static constexpr char const* kName = "vdpbf16ps zmm";
    static bool supported() { return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bf16"); }
    [[gnu::target("avx512f,avx512bf16")]] static V step(V c, V a, V b) {
        return _mm512_dpbf16_ps(c, (__m512bh)a, (__m512bh)b);
    }
};
struct VnniZmm {
    using V = __m512;  // only a register here: the asm step reads it as bytes and dwords
    static constexpr int kChains = 24;
    static constexpr double kOps = 16 * 8;
    static constexpr char const* kName = "vpdpbusd zmm";
    static bool supported() { return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vnni"); }
    // Not _mm512_dpbusd_epi32: through it g++ 12 copied every chain to another register around each
    // instruction and spilled a third of the 24 chains to the stack inside the loop (measured here:
    // 265 GOP/s where the asm step reaches the port limit).
    [[gnu::target("avx512f,avx512vnni")]] static V step(V c, V a, V b) {
        asm("vpdpbusd %2, %1, %0" : "+v"(c) : "v"(a), "v"(b));
        return c;
    }
};
struct VnniYmm {
    using V = __m256i;
    static constexpr int kChains = 12;
    static constexpr double kOps = 8 * 8;
    static constexpr char const* kName = "vpdpbusd ymm (AVX-VNNI)";
    static bool supported() { return smoe::kernels::cpu::cpu_has_avx_vnni(); }  // the int8 dot path's own check
    [[gnu::target("avx2,avxvnni")]] static V step(V c, V a, V b) { return _mm256_dpbusd_avx_epi32(c, a, b); }
};

// The one loop every probe runs. A macro because the ISA has to be an attribute of the function
// that holds the loop: g++ refuses to inline a target("avx512f") step into a template compiled
// without it, and a step that is not inlined spills the chains.
#define SMOE_BENCH_PEAK_BURST(Op, Target)                                                          \
    [[gnu::noinline, gnu::target(Target)]] inline void burst(Op, std::int64_t iters) {             \
        Op::V acc[Op::kChains];                                                                    \
        for (auto& v : acc) v = Op::V{} + 1;                                                       \
        Op::V a = Op::V{} + 1, b = Op::V{} + 1;                                                    \
        asm volatile("" : "+v"(a), "+v"(b)); /* opaque: the chains cannot be folded */             \
        for (std::int64_t it = 0; it < iters; ++it) {                                              \
            _Pragma("GCC unroll 32") /* the chains live in registers only when unrolled */         \
            for (auto& v : acc) v = Op::step(v, a, b);                                             \
        }                                                                                          \
        for (int i = 1; i < Op::kChains; ++i) acc[0] = Op::step(acc[0], acc[i], b);                \
        asm volatile("" : : "v"(acc[0]));                                                          \
    }
SMOE_BENCH_PEAK_BURST(FmaZmm, "avx512f")
SMOE_BENCH_PEAK_BURST(FmaYmm, "avx2,fma")
SMOE_BENCH_PEAK_BURST(MulAddXmm, "sse2")
SMOE_BENCH_PEAK_BURST(Bf16DotZmm, "avx512f,avx512bf16")
SMOE_BENCH_PEAK_BURST(VnniZmm, "avx512f,avx512vnni")
SMOE_BENCH_PEAK_BURST(VnniYmm, "avx2,avxvnni")
#undef SMOE_BENCH_PEAK_BURST

// ---------------------------------------------------------------------------------------------
// DRAM read: sums n floats (n a multiple of S * 2 batches) as S concurrent streams, one per S-th of
// the buffer. The kernels read several weight panels at once and prefetch ahead, and one core's read
// rate grows with the streams in flight (Zen 4 VM, one thread: 22 GB/s with 4 streams, 25-27 with 8
// or 12), so the limit is the best of kDramStreams: a probe that reads slower than the kernels can
// would judge them above 1. Two accumulators per stream so the adder latency never limits the loop.
// Loads of the build's ISA: their width does not change what DRAM delivers.

using fbatch = xsimd::batch<float>;

template <std::size_t S>
[[gnu::noinline]] float read_sum(float const* p, std::size_t n) {
    constexpr std::size_t W = fbatch::size;
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
inline constexpr int kDramStreams[] = {4, 8, 16};

// 512 MiB: 16x the L3 of any machine this runs on, modest next to the expert weights.
inline constexpr std::size_t kDramBytes = std::size_t{512} << 20;

// Allocated as packed weights are (kernels/cpu/pack.hpp: huge pages from 2 MiB), so the read limit is
// measured on the pages the kernels stream.
struct AlignedFloats {
    smoe::kernels::cpu::AlignedArray<float> a;
    float* p;
    std::size_t n;
    explicit AlignedFloats(std::size_t count) : a(count), p(a.data()), n(count) {
        std::memset(p, 0, count * sizeof(float));  // fault every page in before anything is timed
    }
};

// ---------------------------------------------------------------------------------------------
// 1 or 2 threads, one skeleton. The threads meet at a spin barrier before anything is timed, so a
// thread still being created or woken on its core costs nothing; each then times its own share, and
// the rate counts from the first start to the last finish. A trial in which the shares did not
// overlap (one thread ran only after the other had finished, as when the scheduler keeps both on one
// core) would report one thread's rate as two threads': it returns 0 and the caller tries again.
inline constexpr int kMaxThreads = 2;

template <class Share>
double concurrent_seconds(int threads, Share share) {
    using clock = std::chrono::steady_clock;
    std::atomic<int> arrived{0};
    clock::time_point start[kMaxThreads], stop[kMaxThreads];
    auto run = [&](int t) {
        arrived.fetch_add(1);
        while (arrived.load() < threads) {}
        start[t] = clock::now();
        share(t);
        stop[t] = clock::now();
    };
    std::vector<std::thread> others;
    for (int t = 1; t < threads; ++t) others.emplace_back(run, t);
    run(0);
    for (auto& th : others) th.join();
    auto const first_start = *std::min_element(start, start + threads);
    auto const last_start = *std::max_element(start, start + threads);
    auto const first_stop = *std::min_element(stop, stop + threads), last_stop = *std::max_element(stop, stop + threads);
    if (threads > 1 && last_start >= first_stop) return 0;
    return std::chrono::duration<double>(last_stop - first_start).count();
}

// Best rate (units per second) of `trials` calls of trial(), each returning the seconds `threads`
// threads took for `units_per_thread` each; a call that returns 0 (not concurrent) is not counted,
// and is retried up to 4 x trials calls in all.
template <class Trial>
double best_rate(int threads, int trials, double units_per_thread, Trial trial) {
    double best = 0;
    for (int ok = 0, calls = 0; ok < trials && calls < 4 * trials; ++calls)
        if (double const t = trial(); t > 0) {
            best = std::max(best, threads * units_per_thread / t);
            ++ok;
        }
    return best;
}

// ~10 ms per burst on a 2.5 GHz zmm FMA core (less with fewer chains or narrower registers).
inline constexpr std::int64_t kBurstIters = std::int64_t{1} << 20;

template <class Op>
double burst_seconds(int threads) {
    return concurrent_seconds(threads, [](int) { burst(Op{}, kBurstIters); });
}

inline float read_sum_streams(float const* p, std::size_t n, int streams) {
    return streams <= 4 ? read_sum<4>(p, n) : streams <= 8 ? read_sum<8>(p, n) : read_sum<16>(p, n);
}

// n floats at p read by `threads` threads at once, each its share (n a multiple of threads x streams x 2
// batches): concurrent_seconds of the read.
inline double read_seconds(float const* p, std::size_t n, int threads, int streams) {
    std::size_t const share = n / std::size_t(threads);
    return concurrent_seconds(threads, [&](int t) {
        float s = read_sum_streams(p + std::size_t(t) * share, share, streams);
        benchmark::DoNotOptimize(s);
    });
}

// One continuous read of the whole buffer, each thread its share (BM_machine_dram_read's trial).
inline double dram_seconds(AlignedFloats const& buf, int threads, int streams) {
    return read_seconds(buf.p, buf.n, threads, streams);
}

// The limit itself is timed in short pieces, not as one continuous read: a shared VM pre-empts a
// vCPU for milliseconds at a time, and a read of hundreds of MB almost always contains such a gap, so
// under load the continuous figure measured the scheduler (14.7 GB/s one thread, against 35 quiet).
// A piece of 4 MiB per thread takes ~0.1-0.2 ms, mostly between two pre-emptions; a high percentile
// of the pieces' rates drops the pieces that caught one, while a single fast outlier (the maximum)
// does not set the limit. Measured (Zen 4 VM, 15 s of 2-thread pieces while two compilers ran): per
// half second p10 2-42, p50 10-58, p90 60-64, max 62-68 GB/s; over all 14786 pieces p10 5.6, p50
// 55.0, p90 62.2; one thread p50 31.3, p90 32.7), while the continuous probe read 24.6 GB/s for 2
// threads in the same minutes. Each piece is read concurrently by all threads: they meet at a spin barrier
// before it (not timed), its rate counts from the first start to the last finish, and a piece whose
// reads did not overlap is dropped (one thread alone would read faster than its share of two).
inline constexpr std::size_t kDramPieceBytes = std::size_t{4} << 20;  // per thread
inline constexpr double kDramPercentile = 0.95;

// Appends the rate (GB/s, all threads together) of every piece of one pass over buf (concurrent_seconds
// per piece: its barrier, its span from the first start to the last finish, 0 when the reads did not overlap).
inline void dram_piece_rates(AlignedFloats const& buf, int threads, int streams, std::vector<double>& gbps) {
    std::size_t const piece = kDramPieceBytes / sizeof(float), T = std::size_t(threads), pieces = buf.n / (piece * T);
    for (std::size_t i = 0; i < pieces; ++i) {
        double const sec = read_seconds(buf.p + i * T * piece, T * piece, threads, streams);
        if (sec > 0) gbps.push_back(double(T * kDramPieceBytes) / sec * 1e-9);
    }
}

// The best over every stream count of kDramStreams of the kDramPercentile-th piece rate of `trials`
// passes over buf; 0 when no piece ran its threads concurrently.
inline double dram_gbps(AlignedFloats const& buf, int threads, int trials) {
    double best = 0;
    std::vector<double> gbps;
    for (int streams : kDramStreams) {
        gbps.clear();
        for (int i = 0; i < trials; ++i) dram_piece_rates(buf, threads, streams, gbps);
        if (gbps.empty()) continue;
        auto const at = gbps.begin() + std::ptrdiff_t(double(gbps.size() - 1) * kDramPercentile);
        std::nth_element(gbps.begin(), at, gbps.end());
        best = std::max(best, *at);
    }
    return best;
}

// ---------------------------------------------------------------------------------------------
// The limits every layer benchmark is judged against, per weight format and thread count.

enum class Format : int { f32, bf16, int8 };
inline constexpr char const* kFormatNames[] = {"f32", "bf16", "int8"};

struct Peak {
    char const* instruction = "";
    double ops_per_burst = 0;                        // one thread's FLOPs (OPs for int8) per burst
    double (*burst_seconds)(int threads) = nullptr;  // one trial, as concurrent_seconds
    double gops[kMaxThreads + 1] = {};               // index = threads; GFLOP/s (GOP/s for int8)
};

struct Limits {
    Peak peak[3];                              // index = Format
    double dram_gbps[kMaxThreads + 1] = {};    // index = threads
    Peak const& of(Format f) const { return peak[int(f)]; }
};

// A th-thread peak under kPeakScaleFloor x th x one thread's is taken for a probe that shared its cores:
// measured again (widest_peak), and named in a warning if still under (limits).
inline constexpr double kPeakScaleFloor = 0.8;

// The widest instruction the CPU has among Ops, measured for 1 and 2 threads; `fallback` when none.
template <class... Ops>
Peak widest_peak(Peak const* fallback) {
    Peak p;
    auto try_op = [&]<class Op>(Op) {
        if (*p.instruction || !Op::supported()) return;
        p = {Op::kName, double(kBurstIters) * Op::kChains * Op::kOps, &burst_seconds<Op>};
        // A multi-thread peak far under th times one thread's is a probe that shared its cores (quant_matrix_s8:
        // mixtral's 2-thread peaks read the 1-thread figures, so three of its 2-thread records read
        // fractions above 1): measured again, up to 4 rounds, and the best kept.
        for (int th = 1; th <= kMaxThreads; ++th)
            for (int round = 0; round < 4 && (th == 1 ? round == 0 : p.gops[th] < kPeakScaleFloor * th * p.gops[1]);
                 ++round)
                p.gops[th] = std::max(p.gops[th], best_rate(th, 7, p.ops_per_burst, [&] { return p.burst_seconds(th); }) * 1e-9);
    };
    (try_op(Ops{}), ...);
    return *p.instruction || !fallback ? p : *fallback;
}

// Measured the first time a benchmark asks (about 3 s): the layer benchmarks need the limits whatever
// --benchmark_filter selects, and Google Benchmark gives no hook that runs before them. Peaks: best of
// short trials; DRAM: a high percentile of short pieces (dram_piece_rates). This kind of VM's bandwidth
// moved 16-21 GB/s (48-83 on Zen 5) between runs minutes apart.
inline Limits const& limits() {
    static Limits const l = [] {
        Limits r;
        __builtin_cpu_init();
        r.peak[int(Format::f32)] = widest_peak<FmaZmm, FmaYmm, MulAddXmm>(nullptr);
        r.peak[int(Format::bf16)] = widest_peak<Bf16DotZmm>(&r.peak[int(Format::f32)]);
        r.peak[int(Format::int8)] = widest_peak<VnniZmm, VnniYmm>(&r.peak[int(Format::f32)]);
        AlignedFloats buf(kDramBytes / sizeof(float));
        for (int th = 1; th <= kMaxThreads; ++th) r.dram_gbps[th] = dram_gbps(buf, th, 6);
        for (int f = 0; f < 3; ++f)
            std::fprintf(stderr, "smoe_bench limits: %-4s peak %7.1f / %7.1f G(FL)OP/s (1 / 2 threads) from %s\n",
                         kFormatNames[f], r.peak[f].gops[1], r.peak[f].gops[2], r.peak[f].instruction);
        std::fprintf(stderr, "smoe_bench limits: DRAM read %.1f / %.1f GB/s (1 / 2 threads); kernels built for %s\n",
                     r.dram_gbps[1], r.dram_gbps[2], xsimd::default_arch::name());
        for (int th = 1; th <= kMaxThreads; ++th)
            if (std::min({r.peak[0].gops[th], r.peak[1].gops[th], r.peak[2].gops[th], r.dram_gbps[th]}) == 0)
                std::fprintf(stderr, "smoe_bench limits: ERROR: a %d-thread limit never ran its threads concurrently (a "
                             "busy machine?); fractions against it are infinite\n", th);
        for (int f = 0; f < 3; ++f)
            for (int th = 2; th <= kMaxThreads; ++th)
                if (r.peak[f].gops[th] < kPeakScaleFloor * th * r.peak[f].gops[1])
                    std::fprintf(stderr, "smoe_bench limits: WARNING: %s peak on %d threads %.1f, under %.1f x %d x one thread's (a "
                                 "busy machine?): compute fractions of %d-thread records are overstated\n",
                                 kFormatNames[f], th, r.peak[f].gops[th], kPeakScaleFloor, th, th);
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
