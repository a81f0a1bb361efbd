#pragma once
// h = silu(g) ⊙ u with silu(g) = g / (1 + exp(-g)) in fp32 (experts.md §3). For g below about -88,
// exp(-g) overflows to +inf and g / inf gives -0, the spec's value; no clamp is needed.

#include <cmath>
#include <cstdint>

#include <xsimd/xsimd.hpp>

namespace smoe::inline v0::kernels::cpu {

template <class Arch>
void silu_mul(Arch, float const* g, float const* u, float* h, std::int64_t n) {
    using batch = xsimd::batch<float, Arch>;
    constexpr std::int64_t W = batch::size;
    std::int64_t i = 0;
    batch const one(1.0f);
    for (; i + W <= n; i += W) {
        batch const gv = batch::load_unaligned(g + i);
        batch const uv = batch::load_unaligned(u + i);
        (gv / (one + xsimd::exp(-gv)) * uv).store_unaligned(h + i);
    }
    for (; i < n; ++i) h[i] = g[i] / (1.0f + std::exp(-g[i])) * u[i];
}

}  // namespace smoe::inline v0::kernels::cpu
