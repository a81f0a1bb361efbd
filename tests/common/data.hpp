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

// True in the sanitizer build (CI's ASan + UBSan, -O0), where the widest sweeps take a smaller sample of
// their largest shapes: what that build looks for (out-of-bounds reads, UB) sits at the edges that the
// smaller shapes reach; the release build runs every shape.
#if defined(__SANITIZE_ADDRESS__)
inline constexpr bool kSanitized = true;
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
inline constexpr bool kSanitized = true;
#else
inline constexpr bool kSanitized = false;
#endif
#else
inline constexpr bool kSanitized = false;
#endif

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
