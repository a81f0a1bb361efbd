#pragma once
// h = silu(g) ⊙ u with silu(g) = g / (1 + exp(-g)) in fp32 (experts.md §3). For g below about -88,
// exp(-g) overflows to +inf and g / inf gives -0, the spec's value; no clamp is needed.

#include <cstdint>

#include "smoe/detail/xsimd.hpp"

#include "smoe/kernels/cpu/simd_map.hpp"

namespace smoe::inline v0::kernels::cpu {

template <class Arch>
void silu_mul(Arch arch, float const* g, float const* u, float* h, std::int64_t n) {
    using batch = xsimd::batch<float, Arch>;
    batch const one(1.0f);
    simd_map2(arch, g, u, h, n, [&](batch gv, batch uv) { return gv / (one + xsimd::exp(-gv)) * uv; });
}

}  // namespace smoe::inline v0::kernels::cpu
