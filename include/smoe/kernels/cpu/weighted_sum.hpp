#pragma once
// out[i] = Σ_e c[e] · base[e · stride + i]: E arrays of the same layout summed with coefficients, in
// expert order, one FMA chain per element (SMEAR's weight merge, research.md §3). Blocks of kBlock
// floats keep the running sums in L1 while each expert's block streams past once, so the merge reads
// every expert's weights exactly once from memory.

#include <algorithm>
#include <cstdint>
#include <span>

#include "smoe/detail/xsimd.hpp"

namespace smoe::inline v0::kernels::cpu {

// n = end − begin must be a multiple of 16 (the widest batch): packed panels always are.
template <class Arch>
void weighted_sum(Arch, std::span<float const> c, float const* base, std::int64_t stride, std::int64_t begin, std::int64_t end,
                  float* out) {
    using batch = xsimd::batch<float, Arch>;
    constexpr std::int64_t kBlock = 1024, W = batch::size;
    for (std::int64_t b0 = begin; b0 < end; b0 += kBlock) {
        std::int64_t const b1 = std::min(end, b0 + kBlock);
        float* const o = out + (b0 - begin);
        batch const c0(c[0]);
        for (std::int64_t i = b0; i < b1; i += W) (c0 * batch::load_unaligned(base + i)).store_unaligned(o + (i - b0));
        for (std::size_t e = 1; e < c.size(); ++e) {
            batch const ce(c[e]);
            float const* const src = base + static_cast<std::int64_t>(e) * stride;
            for (std::int64_t i = b0; i < b1; i += W)
                xsimd::fma(ce, batch::load_unaligned(src + i), batch::load_unaligned(o + (i - b0))).store_unaligned(o + (i - b0));
        }
    }
}

}  // namespace smoe::inline v0::kernels::cpu
