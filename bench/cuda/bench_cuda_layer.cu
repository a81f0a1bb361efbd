// The CUDA layer (bf16) at the four shapes of shared/perf.md for T in {1, 8, 64, 512, 4096}: min and
// median time over timed calls (CUDA events, after warm-up), achieved HBM bandwidth on the weight
// bytes touched (distinct experts hit x 3·d·f x 2 B) and TFLOP/s (T·k·6·d·f + 2·T·d·E). One JSON
// record per line; bench/cuda/README.md has the commands and the PyTorch baseline.
//
//   smoe_cuda_bench [shapes=mixtral,olmoe,qwen2moe,dsv2-lite] [tokens=1,8,64,512,4096] [reps=20]
#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <sstream>
#include <string>
#include <vector>

#include "smoe/cuda.hpp"

namespace {

#define BENCH_CHECK(call)                                                                        \
    do {                                                                                         \
        cudaError_t const e_ = (call);                                                           \
        if (e_ != cudaSuccess) {                                                                 \
            std::fprintf(stderr, "%s failed: %s\n", #call, cudaGetErrorString(e_));              \
            std::exit(1);                                                                        \
        }                                                                                        \
    } while (0)

struct Shape {
    char const* name;
    std::int64_t d, f, E, k;
};
Shape const kShapes[] = {{"mixtral", 4096, 14336, 8, 2}, {"olmoe", 2048, 1024, 64, 8}, {"qwen2moe", 2048, 1408, 60, 4},
                         {"dsv2-lite", 2048, 1408, 64, 6}};

// Deterministic pseudo-normal-ish values (uniform, sd `scale`) without a host copy of the weights.
template <class T>
__global__ void fill_kernel(T* p, std::int64_t n, std::uint64_t seed, float scale) {
    for (std::int64_t i = blockIdx.x * std::int64_t{blockDim.x} + threadIdx.x; i < n; i += std::int64_t{gridDim.x} * blockDim.x) {
        std::uint64_t z = (static_cast<std::uint64_t>(i) + seed) * 0x9E3779B97F4A7C15ull;
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
        z ^= z >> 31;
        float const u = static_cast<float>(z >> 40) / 16777216.0f - 0.5f;  // [-0.5, 0.5)
        p[i] = smoe::kernels::cuda::from_float<T>(u * scale * 3.4641f);   // sd = scale
    }
}

template <class T>
T* device_fill(std::int64_t n, std::uint64_t seed, float scale) {
    T* p = nullptr;
    BENCH_CHECK(cudaMalloc(&p, static_cast<std::size_t>(n) * sizeof(T)));
    fill_kernel<T><<<1024, 256>>>(p, n, seed, scale);
    BENCH_CHECK(cudaGetLastError());
    return p;
}

std::vector<std::string> split(std::string const& s) {
    std::vector<std::string> out;
    std::stringstream ss(s);
    for (std::string item; std::getline(ss, item, ',');) out.push_back(item);
    return out;
}

}  // namespace

int main(int argc, char** argv) {
    std::vector<std::string> const shapes = split(argc > 1 ? argv[1] : "mixtral,olmoe,qwen2moe,dsv2-lite");
    std::vector<std::int64_t> tokens;
    for (auto const& t : split(argc > 2 ? argv[2] : "1,8,64,512,4096")) tokens.push_back(std::stoll(t));
    int const reps = argc > 3 ? std::atoi(argv[3]) : 20;
    std::int64_t const max_T = *std::max_element(tokens.begin(), tokens.end());

    int dev = 0, clock_khz = 0, bus_bits = 0;
    BENCH_CHECK(cudaGetDevice(&dev));
    cudaDeviceProp prop{};
    BENCH_CHECK(cudaGetDeviceProperties(&prop, dev));
    BENCH_CHECK(cudaDeviceGetAttribute(&clock_khz, cudaDevAttrMemoryClockRate, dev));
    BENCH_CHECK(cudaDeviceGetAttribute(&bus_bits, cudaDevAttrGlobalMemoryBusWidth, dev));
    double const peak_gbps = 2.0 * clock_khz * 1e3 * (bus_bits / 8.0) / 1e9;  // DDR: two transfers per clock
    std::printf("{\"device\": \"%s\", \"hbm_peak_gbps\": %.0f}\n", prop.name, peak_gbps);

    using W = __nv_bfloat16;
    using Layer = smoe::MoELayer<smoe::router::TopK, smoe::expert::SwiGLU<W>, smoe::balance::None, smoe::backend::Cuda<90>>;
    for (auto const& name : shapes) {
        Shape const* s = nullptr;
        for (auto const& c : kShapes)
            if (name == c.name) s = &c;
        if (!s) {
            std::fprintf(stderr, "unknown shape %s\n", name.c_str());
            return 2;
        }
        smoe::expert::SwiGLUConfig const ecfg{s->d, s->f, s->E};
        W* w1 = device_fill<W>(s->E * s->f * s->d, 1, 0.02f);
        W* w3 = device_fill<W>(s->E * s->f * s->d, 2, 0.02f);
        W* w2 = device_fill<W>(s->E * s->d * s->f, 3, 0.02f);
        float* gate = device_fill<float>(s->E * s->d, 4, 0.02f);
        W* x = device_fill<W>(max_T * s->d, 5, 1.0f);
        W* y = device_fill<W>(max_T * s->d, 6, 0.0f);
        smoe::router::TopKConfig const rcfg{.num_experts = s->E, .top_k = s->k, .norm_topk_prob = true};
        Layer layer({.router = rcfg, .expert = ecfg, .max_tokens = max_T},
                    {.gate = smoe::MatrixView<float const>(gate, s->E, s->d),
                     .experts = smoe::expert::SwiGLUWeights<W>::dense(w1, w3, w2, ecfg)});
        std::byte* ws = nullptr;
        BENCH_CHECK(cudaMalloc(&ws, layer.workspace_size()));
        std::span<std::byte> const wspan(ws, layer.workspace_size());
        cudaStream_t stream;
        BENCH_CHECK(cudaStreamCreate(&stream));
        cudaEvent_t start, stop;
        BENCH_CHECK(cudaEventCreate(&start));
        BENCH_CHECK(cudaEventCreate(&stop));

        for (std::int64_t T : tokens) {
            smoe::MatrixView<W const> const xv(x, T, s->d);
            smoe::MatrixView<W> const yv(y, T, s->d);
            smoe::cuda::DeviceRouting r;
            for (int i = 0; i < 3; ++i) r = layer.forward(xv, yv, wspan, stream);
            std::vector<float> ms;
            for (int i = 0; i < reps; ++i) {
                BENCH_CHECK(cudaEventRecord(start, stream));
                layer.forward(xv, yv, wspan, stream);
                BENCH_CHECK(cudaEventRecord(stop, stream));
                BENCH_CHECK(cudaEventSynchronize(stop));
                float t = 0;
                BENCH_CHECK(cudaEventElapsedTime(&t, start, stop));
                ms.push_back(t);
            }
            std::sort(ms.begin(), ms.end());
            std::vector<std::int32_t> offsets(static_cast<std::size_t>(s->E + 1));
            BENCH_CHECK(cudaMemcpy(offsets.data(), r.offsets, offsets.size() * 4, cudaMemcpyDeviceToHost));
            std::int64_t hit = 0;
            for (std::int64_t e = 0; e < s->E; ++e) hit += offsets[e + 1] > offsets[e];
            double const bytes = double(hit) * 3.0 * double(s->d) * double(s->f) * 2.0;
            double const flops = double(T) * s->k * 6.0 * s->d * s->f + 2.0 * T * s->d * s->E;
            double const t_min = ms.front() * 1e-3, t_med = ms[ms.size() / 2] * 1e-3;
            std::printf("{\"shape\": \"%s\", \"T\": %lld, \"dtype\": \"bf16\", \"min_ms\": %.4f, \"median_ms\": %.4f, "
                        "\"experts_hit\": %lld, \"gbps\": %.1f, \"hbm_fraction\": %.3f, \"tflops\": %.2f}\n",
                        s->name, static_cast<long long>(T), t_min * 1e3, t_med * 1e3, static_cast<long long>(hit),
                        bytes / t_min / 1e9, bytes / t_min / 1e9 / peak_gbps, flops / t_min / 1e12);
            std::fflush(stdout);
        }
        cudaEventDestroy(start);
        cudaEventDestroy(stop);
        cudaStreamDestroy(stream);
        for (void* p : {static_cast<void*>(w1), static_cast<void*>(w3), static_cast<void*>(w2), static_cast<void*>(gate),
                        static_cast<void*>(x), static_cast<void*>(y), static_cast<void*>(ws)})
            cudaFree(p);
    }
    return 0;
}
