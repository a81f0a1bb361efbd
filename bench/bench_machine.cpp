// This machine's limits as benchmarks of their own (the layer benchmarks take theirs from
// smoe_bench::limits(), a shorter calibration in the same process): each weight format's peak from
// the widest instruction the CPU has (the label names it) and the DRAM read bandwidth for each
// stream count the limit takes the best of, 1 and 2 threads started together (bench_machine.hpp).
// Counters GOP and GB are rates (GOP=…/s: GFLOP/s for f32 and bf16, GOP/s for int8); read the `_max`
// aggregate.
//
//   smoe_bench --benchmark_filter=BM_machine --benchmark_repetitions=5 --benchmark_report_aggregates_only=true

#include <string>

#include <benchmark/benchmark.h>

#include "bench_machine.hpp"

namespace {

using smoe_bench::Format;

// One concurrent trial per iteration. A trial whose threads did not overlap (the machine was busy)
// is retried, not counted: its time would be one thread's work.
template <class Trial>
void run_trials(benchmark::State& state, double units, char const* counter, Trial trial) {
    double done = 0;
    for (auto _ : state) {
        double t = 0;
        for (int attempt = 0; attempt < 10 && t <= 0; ++attempt) t = trial();
        if (t <= 0) {
            state.SkipWithError("10 trials in a row did not run their threads concurrently (a busy machine?)");
            break;
        }
        state.SetIterationTime(t);
        done += units;
    }
    state.counters[counter] = benchmark::Counter(done * 1e-9, benchmark::Counter::kIsRate);
}

void BM_machine_peak(benchmark::State& state, Format f) {
    int const threads = int(state.range(0));
    smoe_bench::Peak const& p = smoe_bench::limits().of(f);
    run_trials(state, threads * p.ops_per_burst, "GOP", [&] { return p.burst_seconds(threads); });
    state.SetLabel(p.instruction);
}

void BM_machine_dram_read(benchmark::State& state) {
    int const threads = int(state.range(0)), streams = int(state.range(1));
    smoe_bench::AlignedFloats buf(smoe_bench::kDramBytes / sizeof(float));
    run_trials(state, double(smoe_bench::kDramBytes), "GB", [&] { return smoe_bench::dram_seconds(buf, threads, streams); });
}

[[maybe_unused]] int const registered = [] {
    for (Format f : {Format::f32, Format::bf16, Format::int8}) {
        std::string const name = std::string("BM_machine_peak/") + smoe_bench::kFormatNames[int(f)];
        auto* b = benchmark::RegisterBenchmark(name.c_str(), BM_machine_peak, f)->ArgName("threads")->Arg(1)->Arg(2);
        smoe_bench::best_stats(b->UseManualTime()->Unit(benchmark::kMillisecond));
    }
    auto* b = benchmark::RegisterBenchmark("BM_machine_dram_read", BM_machine_dram_read)->ArgNames({"threads", "streams"});
    for (int threads : {1, 2})
        for (int streams : smoe_bench::kDramStreams) b->Args({threads, streams});
    smoe_bench::best_stats(b->UseManualTime()->Unit(benchmark::kMillisecond));
    return 0;
}();

}  // namespace
