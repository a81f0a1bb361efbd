#pragma once
// The machine's limits for 1 and 2 threads, measured in the same process as the layer benchmarks
// (perf.md: a roofline fraction is only meaningful against limits of the same machine and run):
// fp32 FMA peak and DRAM read bandwidth. Two threads run the one-thread probes of bench_machine.hpp
// side by side, on disjoint halves of the buffer, timed from the common start to the last finish.
// This machine has no bf16 or int8 dot-product instructions, so bf16 and int8 weights are judged
// against the fp32 FMA peak (perf.md counts fp16 the same way).

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <thread>

#include "bench_machine.hpp"

namespace smoe_bench {

struct ThreadLimits {
    double peak_gflops[3] = {0, 0, 0};  // index = threads
    double dram_gbps[3] = {0, 0, 0};
};

inline ThreadLimits const& thread_limits() {
    static ThreadLimits const l = [] {
        using clock = std::chrono::steady_clock;
        auto secs = [](clock::time_point t0) { return std::chrono::duration<double>(clock::now() - t0).count(); };
        ThreadLimits r;
        Limits const& one = limits();
        r.peak_gflops[1] = one.peak_gflops;
        r.dram_gbps[1] = one.dram_gbps;
        AlignedFloats buf(kDramBytes / sizeof(float));
        std::size_t const half = buf.n / 2;
        for (int trial = 0; trial < 8; ++trial) {
            std::atomic<int> go{0};
            double fl = 0;
            auto const t0 = clock::now();
            std::thread other([&] {
                while (go.load() == 0) {}
                fma_burst(std::int64_t{1} << 21);
            });
            go.store(1);
            fl = 2 * fma_burst(std::int64_t{1} << 21);
            other.join();
            r.peak_gflops[2] = std::max(r.peak_gflops[2], fl / secs(t0) * 1e-9);
        }
        for (int trial = 0; trial < 12; ++trial) {
            std::atomic<int> go{0};
            float s0 = 0, s1 = 0;
            auto const t0 = clock::now();
            std::thread other([&] {
                while (go.load() == 0) {}
                s1 = read_sum(buf.p + half, half);
            });
            go.store(1);
            s0 = read_sum(buf.p, half);
            other.join();
            double const t = secs(t0);
            benchmark::DoNotOptimize(s0);
            benchmark::DoNotOptimize(s1);
            r.dram_gbps[2] = std::max(r.dram_gbps[2], double(kDramBytes) / t * 1e-9);
        }
        std::fprintf(stderr, "smoe_bench limits, 2 threads: fp32 FMA peak %.1f GFLOP/s, DRAM read %.1f GB/s\n",
                     r.peak_gflops[2], r.dram_gbps[2]);
        return r;
    }();
    return l;
}

}  // namespace smoe_bench
