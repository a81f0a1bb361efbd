#pragma once
// out[i] = Σ_e c[e] · base[e · stride + i]: E arrays of the same layout summed with coefficients, in
// expert order, one FMA chain per element (SMEAR's weight merge, research.md §3). Blocks of kBlock
// floats keep the running sums in L1 while each expert's block streams past once, so the merge reads
// every expert's weights exactly once from memory.

#include <algorithm>
#include <cstdint>
#include <span>

#include "smoe/detail/xsimd.hpp"

#include "smoe/kernels/cpu/gemm_packed.hpp"

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

#if SMOE_PACKED_AVX2
// The same sum over weights stored in another format: load(e, i, lo, hi) widens elements i .. i + 15 of
// expert e to their exact fp32 values in column order (bf16 or int8 panels, scales applied). Every
// element is the chain c[0]·w_0, then fma(c[e], w_e, ·): the bits of a scalar widening loop.
template <class Arch, class Load>
void weighted_sum_widened(Arch, std::span<float const> c, std::int64_t begin, std::int64_t end, float* out, Load&& load) {
    static_assert(kPackedAvx2<Arch> || kPackedAvx512<Arch>, "kernels::cpu::weighted_sum_widened: AVX2 loads");
    constexpr std::int64_t kBlock = 1024;
    for (std::int64_t b0 = begin; b0 < end; b0 += kBlock) {
        std::int64_t const b1 = std::min(end, b0 + kBlock);
        for (std::size_t e = 0; e < c.size(); ++e) {
            __m256 const ce = _mm256_set1_ps(c[e]);
            for (std::int64_t i = b0; i < b1; i += kPanelCols) {
                __m256 lo, hi;
                load(static_cast<std::int64_t>(e), i, lo, hi);
                float* const o = out + (i - begin);
                if (e == 0) {
                    _mm256_storeu_ps(o, _mm256_mul_ps(ce, lo));
                    _mm256_storeu_ps(o + 8, _mm256_mul_ps(ce, hi));
                } else {
                    _mm256_storeu_ps(o, _mm256_fmadd_ps(ce, lo, _mm256_loadu_ps(o)));
                    _mm256_storeu_ps(o + 8, _mm256_fmadd_ps(ce, hi, _mm256_loadu_ps(o + 8)));
                }
            }
        }
    }
}

// Row k of a k-pair bf16 panel (bf16_dot.hpp: pairs of k per column) as 16 floats in column order.
SMOE_ALWAYS_INLINE void load_kpair_row_avx2(bf16 const* pair_row, std::int64_t k, __m256& lo, __m256& hi) {
    __m256i const a = _mm256_loadu_si256(reinterpret_cast<__m256i const*>(pair_row));       // columns 0-7, (k even, k odd)
    __m256i const b = _mm256_loadu_si256(reinterpret_cast<__m256i const*>(pair_row + 16));  // columns 8-15
    if (k % 2 == 0) {
        lo = _mm256_castsi256_ps(_mm256_slli_epi32(a, 16));
        hi = _mm256_castsi256_ps(_mm256_slli_epi32(b, 16));
    } else {
        __m256i const m = _mm256_set1_epi32(static_cast<int>(0xFFFF0000u));
        lo = _mm256_castsi256_ps(_mm256_and_si256(a, m));
        hi = _mm256_castsi256_ps(_mm256_and_si256(b, m));
    }
}
#endif

}  // namespace smoe::inline v0::kernels::cpu
