#pragma once
// Deterministic test data: seeded normal values, optionally snapped to a grid so that equal values
// (exact ties) are common while distinct values stay far apart (no near-ties that rounding could flip).

#include <cmath>
#include <cstdint>
#include <random>
#include <type_traits>
#include <vector>

#include "smoe/detail/xsimd.hpp"  // not <xsimd/xsimd.hpp>: see there

namespace smoe_test {

inline std::vector<float> normal(std::mt19937_64& rng, std::size_t n, double sd, double grid = 0.0) {
    std::normal_distribution<double> dist(0.0, sd);
    std::vector<float> v(n);
    for (auto& x : v) {
        double const r = dist(rng);
        x = static_cast<float>(grid > 0.0 ? std::round(r / grid) * grid : r);
    }
    return v;
}

// The ISAs each SIMD kernel is checked on: the build's best (8 or 16 lanes) and, on x86, SSE2 (4 lanes,
// another tail length and no FMA). Each extra ISA costs compile time, so the list stays short.
#if XSIMD_WITH_SSE2
using TestArchs = std::conditional_t<std::is_same_v<xsimd::default_arch, xsimd::sse2>, xsimd::arch_list<xsimd::sse2>,
                                     xsimd::arch_list<xsimd::default_arch, xsimd::sse2>>;
#else
using TestArchs = xsimd::arch_list<xsimd::default_arch>;
#endif

// Calls f(Arch{}) for every Arch in the list.
template <class F, class... A>
void for_each_arch(xsimd::arch_list<A...>, F&& f) {
    (f(A{}), ...);
}
template <class F>
void for_each_arch(F&& f) {
    for_each_arch(TestArchs{}, f);
}

}  // namespace smoe_test
