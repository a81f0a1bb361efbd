// decode_streams: is the 2-thread decode limit the layer's split or the memory system? One quantised layer's
// T-row forward four ways, cold (copies cycled), min over the forwards after one pass over the copies:
//   mode 3: one layer on one thread; mode 0: one layer on a pool of 2 (the layer splits each touched expert);
//   mode 1: two independent layers at once, one thread each (each thread streams whole experts);
//   mode 2: a plain 2-thread read of as many bytes (no kernel).
// GB/s counts the weight bytes of the touched experts. Not part of the CMake build; with a release build:
//   g++ -std=c++20 -O2 -march=native -Wno-maybe-uninitialized -Iinclude -Ibench -isystem /usr/include/eigen3
//       -o /tmp/decode_streams bench/layer/decode_streams.cpp
//       build/release/bench/CMakeFiles/smoe_bench.dir/bench_layer_quant.cpp.o
//       -lbenchmark -lpthread
//   /tmp/decode_streams olmoe 7 0 1 32 8   # shape, LayerFormat (7 int4d, 8 int8d, 9 fp8b, 10 mxfp4b), mode, T,
//                                          # forwards, copies
// This VM's 2-thread bandwidth flips between modes (README, issue 15): alternate the modes, several runs each.
#include <algorithm>
#include <atomic>
#include <barrier>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <thread>
#include <vector>
#include <immintrin.h>
#include "bench_data.hpp"
#include "layer/layer_set.hpp"
using namespace smoe_bench;
using Clock = std::chrono::steady_clock;
static double secs(Clock::time_point a) { return std::chrono::duration<double>(Clock::now() - a).count(); }

static double touched(smoe::RoutingResult const& r, double expert_bytes) {
    int n = 0;
    for (std::int64_t e = 0; e < r.num_experts; ++e) n += r.load(e) > 0;
    return n * expert_bytes;
}
static float sum_read(float const* p, std::size_t n) {
    __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    for (std::size_t i = 0; i + 64 <= n; i += 64) {
        a0 = _mm512_add_ps(a0, _mm512_load_ps(p + i)), a1 = _mm512_add_ps(a1, _mm512_load_ps(p + i + 16));
        a2 = _mm512_add_ps(a2, _mm512_load_ps(p + i + 32)), a3 = _mm512_add_ps(a3, _mm512_load_ps(p + i + 48));
    }
    return _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3)));
}

int main(int argc, char** argv) {
    char const* shape = argc > 1 ? argv[1] : "olmoe";
    int fmt = argc > 2 ? std::atoi(argv[2]) : int(LayerFormat::int4d);
    int mode = argc > 3 ? std::atoi(argv[3]) : 0;  // 0: pool of 2; 1: two 1-thread layers; 2: plain read; 3: one thread
    long T = argc > 4 ? std::atol(argv[4]) : 1;
    int iters = argc > 5 ? std::atoi(argv[5]) : 20;
    int copies = argc > 6 ? std::atoi(argv[6]) : 8;
    Shape const& s = smoe_bench::shape(shape);
    std::vector<float> x(T * s.d), y0(T * s.d), y1(T * s.d);
    fill(x.data(), x.size(), 0, kKeyX, kInputSd);
    smoe::MatrixView<float const> xv(x.data(), T, s.d);
    if (mode == 2) {  // plain read: two threads, each its own buffers, as many bytes as mode 1 touches
        auto set = make_quant_layer_set(s, LayerFormat(fmt), T);
        std::vector<std::byte> ws(set->workspace_bytes);
        auto const r = set->forward(0, xv, smoe::MatrixView<float>(y0.data(), T, s.d), ws);
        double const b = touched(r, set->expert_bytes);
        std::size_t const n = std::size_t(b / 4) / 64 * 64;
        std::vector<std::unique_ptr<float[], decltype(&std::free)>> bufs;
        for (int i = 0; i < 2 * copies; ++i) {
            std::size_t const bytes = (n * 4 + (2 << 20) - 1) / (2 << 20) * (2 << 20);
            bufs.emplace_back(static_cast<float*>(std::aligned_alloc(2 << 20, bytes)), &std::free);
            std::memset(bufs.back().get(), 1, n * 4);
        }
        std::barrier sync(2);
        std::vector<double> best(2, 1e9);
        std::atomic<float> sink{0};
        auto work = [&](int t) {
            for (int it = 0; it < iters; ++it) {
                sync.arrive_and_wait();
                auto const t0 = Clock::now();
                sink += sum_read(bufs[std::size_t((it % copies) * 2 + t)].get(), n);
                best[t] = std::min(best[t], secs(t0));
            }
        };
        std::thread th(work, 1);
        work(0);
        th.join();
        std::printf("plain read 2 threads: %.0f KB each, %.3f / %.3f ms, %.1f GB/s together\n", n * 4 / 1e3,
                    best[0] * 1e3, best[1] * 1e3, 2 * n * 4 / std::max(best[0], best[1]) / 1e9);
        return 0;
    }
    int const nsets = mode == 1 ? 2 : 1;
    std::vector<std::unique_ptr<LayerSet>> sets;
    for (int i = 0; i < nsets; ++i) {
        sets.push_back(make_quant_layer_set(s, LayerFormat(fmt), T));
        for (int c = 1; c < copies; ++c) sets.back()->add_copy();
    }
    std::vector<std::unique_ptr<smoe::DefaultThreadPool>> pools;
    for (int i = 0; i < nsets; ++i) {
        pools.push_back(std::make_unique<smoe::DefaultThreadPool>(mode == 0 ? 2 : 1));
        sets[std::size_t(i)]->set_pool(pools.back().get());
    }
    std::vector<std::vector<std::byte>> ws(2, std::vector<std::byte>(sets[0]->workspace_bytes));
    std::vector<double> best(2, 1e9), bytes(2, 0);
    std::barrier sync(nsets);
    auto work = [&](int t) {
        auto& y = t ? y1 : y0;
        for (int it = 0; it < iters; ++it) {
            sync.arrive_and_wait();
            auto const t0 = Clock::now();
            smoe::MatrixView<float> const yv(y.data(), T, s.d);
            auto const r = sets[std::size_t(t)]->forward(std::size_t(it % copies), xv, yv, ws[std::size_t(t)]);
            double const w = secs(t0);
            if (it >= copies) best[t] = std::min(best[t], w);  // every copy once first: page faults
            bytes[t] = touched(r, sets[std::size_t(t)]->expert_bytes);
        }
    };
    if (nsets == 2) {
        std::thread th(work, 1);
        work(0);
        th.join();
        std::printf("%s fmt %d two 1-thread layers T %ld: %.3f / %.3f ms, %.1f GB/s together\n", shape, fmt, T,
                    best[0] * 1e3, best[1] * 1e3,
                    (bytes[0] + bytes[1]) / std::max(best[0], best[1]) / 1e9);
    } else {
        work(0);
        std::printf("%s fmt %d one layer, %s T %ld: %.3f ms, %.1f GB/s\n", shape, fmt,
                    mode == 0 ? "pool of 2" : "1 thread", T, best[0] * 1e3, bytes[0] / best[0] / 1e9);
    }
}
