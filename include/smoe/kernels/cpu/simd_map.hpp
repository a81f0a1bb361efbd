#pragma once
// Element-wise maps whose tail goes through the same SIMD code as the body: equal inputs must give
// bit-equal outputs wherever they sit in the row (routing.md §0: exact logit ties stay ties), and a
// scalar tail with std::exp would round differently from xsimd::exp.

#include <algorithm>
#include <cstdint>

#include "smoe/detail/xsimd.hpp"

namespace smoe::inline v0::kernels::cpu {

// out[i] = op(in0[i], in1[i]) for i < n, with op taking and returning xsimd batches. `out` may alias
// an input.
template <class Arch, class Op>
void simd_map2(Arch, float const* in0, float const* in1, float* out, std::int64_t n, Op op) {
    using batch = xsimd::batch<float, Arch>;
    constexpr std::int64_t W = batch::size;
    std::int64_t i = 0;
    for (; i + W <= n; i += W) op(batch::load_unaligned(in0 + i), batch::load_unaligned(in1 + i)).store_unaligned(out + i);
    if (i < n) {
        alignas(64) float a[W] = {}, b[W] = {};
        std::copy(in0 + i, in0 + n, a);
        std::copy(in1 + i, in1 + n, b);
        op(batch::load_aligned(a), batch::load_aligned(b)).store_aligned(a);
        std::copy(a, a + (n - i), out + i);
    }
}

template <class Arch, class Op>
void simd_map(Arch arch, float const* in, float* out, std::int64_t n, Op op) {
    simd_map2(arch, in, in, out, n, [&](auto x, auto) { return op(x); });
}

}  // namespace smoe::inline v0::kernels::cpu
