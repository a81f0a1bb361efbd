#pragma once
// Benchmark inputs shared with the baselines in shared/baselines (moe_common.h): the same shapes, the
// same deterministic data and the same route fingerprint, so smoe and the baselines route every token
// to the same experts and `route_hash` proves it. perf.md's byte and FLOP formulas live here too, so
// every benchmark reports GB/s and GFLOP/s the same way.
//
// Element i of stream `key` (sd = standard deviation, uniform on [-sqrt(3) sd, sqrt(3) sd)):
//   h = mix64(key * 0xD1B54A32D192ED03 + i * 0x9E3779B97F4A7C15)   (mod 2^64, splitmix64 finaliser)
//   v = (float(h >> 40) * 2^-24 - 0.5f) * float(2 sqrt(3) sd)
// Tensors are row-major, torch layout: X [T, d] key 100 sd 1 (the first T rows of one stream),
// Wr [E, d] key 1, W1 [E, f, d] key 2, W3 [E, f, d] key 3, W2 [E, d, f] key 4, all sd 0.02.

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <memory>
#include <stdexcept>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include <smoe/core/view.hpp>

namespace smoe_bench {

struct Shape {
    char const* name;
    std::int64_t d, f, E, k;
};

inline constexpr Shape kShapes[] = {
    {"mixtral", 4096, 14336, 8, 2},
    {"olmoe", 2048, 1024, 64, 8},
    {"qwen2moe", 2048, 1408, 60, 4},
    {"deepseek-v2-lite", 2048, 1408, 64, 6},
};

inline Shape const& shape(std::string_view name) {
    for (Shape const& s : kShapes)
        if (name == s.name) return s;
    throw std::invalid_argument("smoe_bench: unknown shape " + std::string(name));
}

enum Key : std::uint64_t { kKeyRouter = 1, kKeyW1 = 2, kKeyW3 = 3, kKeyW2 = 4, kKeyX = 100 };
inline constexpr double kWeightSd = 0.02, kInputSd = 1.0;

inline std::uint64_t mix64(std::uint64_t z) {
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

// out[j] = element (first + j) of stream `key`. float(h >> 40) * 2^-24 is exact, so whether the
// compiler contracts the "- 0.5f" into an FMA cannot change a bit: the values equal moe::fill's.
inline void fill(float* out, std::size_t n, std::uint64_t first, std::uint64_t key, double sd) {
    float const scale = static_cast<float>(2.0 * std::sqrt(3.0) * sd);
    std::uint64_t const base = key * 0xD1B54A32D192ED03ull;
    auto part = [=](std::size_t lo, std::size_t hi) {
        for (std::size_t j = lo; j < hi; ++j) {
            std::uint64_t const h = mix64(base + (first + j) * 0x9E3779B97F4A7C15ull);
            out[j] = (static_cast<float>(h >> 40) * 0x1p-24f - 0.5f) * scale;
        }
    };
    // Gigabytes of expert weights take seconds on one core; the fill is not timed, so use both.
    if (n < (std::size_t{1} << 22)) return part(0, n);
    unsigned const nt = std::max(1u, std::thread::hardware_concurrency());
    std::vector<std::thread> pool;
    for (unsigned i = 1; i < nt; ++i) pool.emplace_back(part, n * i / nt, n * (i + 1) / nt);
    part(0, n / nt);
    for (std::thread& t : pool) t.join();
}

// Uninitialised storage (a vector would zero gigabytes first), filled from one stream.
inline std::unique_ptr<float[]> stream(std::size_t n, std::uint64_t key, double sd, std::uint64_t first = 0) {
    std::unique_ptr<float[]> p(new float[n]);
    fill(p.get(), n, first, key, sd);
    return p;
}

// FNV-1a over each token's expert ids sorted ascending: independent of slot order, equal to the
// baselines' route_hash for the same routing.
inline std::string route_hash(smoe::MatrixView<std::int32_t const> ids) {
    std::uint64_t h = 0xcbf29ce484222325ull;
    std::vector<std::int32_t> row(static_cast<std::size_t>(ids.cols));
    for (std::int64_t t = 0; t < ids.rows; ++t) {
        std::copy(ids.row(t), ids.row(t) + ids.cols, row.begin());
        std::sort(row.begin(), row.end());
        for (std::int32_t id : row) {
            h ^= static_cast<std::uint64_t>(static_cast<std::uint32_t>(id));
            h *= 0x100000001b3ull;
        }
    }
    char b[20];
    std::snprintf(b, sizeof b, "%016llx", static_cast<unsigned long long>(h));
    return b;
}

// perf.md: expert-weight bytes of the distinct experts hit (router weights and activations left out).
inline double weight_bytes(Shape const& s, std::int64_t distinct_experts, double bytes_per_weight) {
    return double(distinct_experts) * 3.0 * double(s.d) * double(s.f) * bytes_per_weight;
}

// perf.md: three d x f products per (token, expert) pair plus the router projection.
inline double flops(Shape const& s, std::int64_t T) {
    return double(T) * (double(s.k) * 6.0 * double(s.d) * double(s.f) + 2.0 * double(s.d) * double(s.E));
}

}  // namespace smoe_bench
