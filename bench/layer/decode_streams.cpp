// decode_streams: is the 2-thread decode limit the layer's split or the memory system? One quantised layer's
// T-row forward three ways, cold (copies cycled), min over the forwards after one pass over the copies:
//   mode 3: one layer on one thread; mode 0: one layer on a pool of 2 (the layer splits each touched expert);
//   mode 1: two independent layers at once, one thread each (each thread streams whole experts), timed from
//           the first start to the last finish (bench_machine.hpp's concurrent_seconds);
// and mode 2: the DRAM read limit BM_layer's records are judged against (bench_machine.hpp's dram_gbps).
// GB/s counts the weight bytes of the touched experts. Not part of the CMake build; with a release build:
//   g++ -std=c++20 -O2 -march=native -Wno-maybe-uninitialized -Iinclude -Ibench -isystem /usr/include/eigen3
//       -o /tmp/decode_streams bench/layer/decode_streams.cpp
//       build/release/bench/CMakeFiles/smoe_bench.dir/bench_layer_quant.cpp.o
//       -lbenchmark -lpthread
//   /tmp/decode_streams olmoe 7 0 1 32 8   # shape, LayerFormat (7 int4d, 8 int8d, 9 fp8b, 10 mxfp4b), mode, T,
//                                          # forwards, copies
// This VM's 2-thread bandwidth flips between modes (README, issue 15): alternate the modes, several runs each.
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <vector>

#include "bench_data.hpp"
#include "bench_machine.hpp"
#include "layer/layer_set.hpp"

using namespace smoe_bench;

int main(int argc, char** argv) {
    char const* shape = argc > 1 ? argv[1] : "olmoe";
    int const fmt = argc > 2 ? std::atoi(argv[2]) : int(LayerFormat::int4d);
    int const mode = argc > 3 ? std::atoi(argv[3]) : 0;
    long const T = argc > 4 ? std::atol(argv[4]) : 1;
    int const iters = argc > 5 ? std::atoi(argv[5]) : 20;
    int const copies = argc > 6 ? std::atoi(argv[6]) : 8;
    if (mode == 2) {
        AlignedFloats const buf(kDramBytes / sizeof(float));
        std::printf("DRAM read limit: one thread %.1f GB/s, two threads %.1f GB/s\n", dram_gbps(buf, 1, 2),
                    dram_gbps(buf, 2, 2));
        return 0;
    }
    Shape const& s = smoe_bench::shape(shape);
    std::vector<float> x(T * s.d);
    fill(x.data(), x.size(), 0, kKeyX, kInputSd);
    smoe::MatrixView<float const> const xv(x.data(), T, s.d);
    int const nsets = mode == 1 ? 2 : 1;
    std::vector<std::unique_ptr<LayerSet>> sets;
    std::vector<std::unique_ptr<smoe::DefaultThreadPool>> pools;
    std::vector<std::vector<float>> y(2, std::vector<float>(T * s.d));
    for (int i = 0; i < nsets; ++i) {
        sets.push_back(make_quant_layer_set(s, LayerFormat(fmt), T));
        for (int c = 1; c < copies; ++c) sets.back()->add_copy();
        pools.push_back(std::make_unique<smoe::DefaultThreadPool>(mode == 0 ? 2 : 1));
        sets.back()->set_pool(pools.back().get());
    }
    std::vector<std::vector<std::byte>> ws(2, std::vector<std::byte>(sets[0]->workspace_bytes));
    double best = 1e9, bytes = 0, step_bytes[2] = {0, 0};
    for (int it = 0; it < iters; ++it) {
        auto const c = std::size_t(it % copies);
        double const sec = concurrent_seconds(nsets, [&](int t) {
            auto const i = std::size_t(t);
            auto const r = sets[i]->forward(c, xv, smoe::MatrixView<float>(y[i].data(), T, s.d), ws[i]);
            step_bytes[i] = double(distinct_experts(r)) * sets[i]->expert_bytes;
        });
        // Every copy once before timing (page faults); 0: the two forwards did not overlap.
        if (it >= copies && sec > 0 && sec < best) best = sec, bytes = step_bytes[0] + step_bytes[1];
    }
    char const* const how =
        mode == 0 ? "one layer, pool of 2" : mode == 1 ? "two 1-thread layers" : "one layer, 1 thread";
    std::printf("%s fmt %d %s T %ld: %.3f ms, %.1f GB/s\n", shape, fmt, how, T, best * 1e3, bytes / best / 1e9);
}
