// This machine's limits as benchmarks of their own (the layer benchmarks take theirs from
// smoe_bench::limits(), a shorter calibration in the same process): fp32 FMA peak and DRAM read
// bandwidth, one thread. Counters GFLOP and GB are rates (shown as GFLOP=…/s); read the `_max` aggregate.

#include <cstdint>

#include <benchmark/benchmark.h>

#include "bench_machine.hpp"

namespace {

void BM_machine_fma_peak(benchmark::State& state) {
    constexpr std::int64_t kIters = std::int64_t{1} << 20;  // ~2-4 ms per iteration
    double flops = 0;
    for (auto _ : state) flops += smoe_bench::fma_burst(kIters);
    state.counters["GFLOP"] = benchmark::Counter(flops * 1e-9, benchmark::Counter::kIsRate);
    state.SetLabel(xsimd::default_arch::name());
}

void BM_machine_dram_read(benchmark::State& state) {
    smoe_bench::AlignedFloats buf(smoe_bench::kDramBytes / sizeof(float));
    for (auto _ : state) {
        float s = smoe_bench::read_sum(buf.p, buf.n);
        benchmark::DoNotOptimize(s);
    }
    state.counters["GB"] = benchmark::Counter(double(smoe_bench::kDramBytes) * 1e-9 * double(state.iterations()),
                                                benchmark::Counter::kIsRate);
}

}  // namespace

BENCHMARK(BM_machine_fma_peak)->UseRealTime()->Unit(benchmark::kMillisecond)->Apply(smoe_bench::best_stats);
BENCHMARK(BM_machine_dram_read)->UseRealTime()->Unit(benchmark::kMillisecond)->Apply(smoe_bench::best_stats);
