#pragma once
// The epilogues of the SwiGLU experts (expert::SwiGLU, expert::QuantSwiGLU): what a finished tile of
// the packed kernels (gemm_packed, gemm_bf16_dot, gemm_quant) becomes. One definition, so every expert
// format turns the same accumulators into the same bits.

#include <algorithm>
#include <cmath>
#include <cstdint>

#include "smoe/detail/xsimd.hpp"

#include "smoe/core/view.hpp"
#include "smoe/kernels/cpu/gemm_packed.hpp"
#include "smoe/kernels/cpu/pack.hpp"
#include "smoe/macros.hpp"

namespace smoe::inline v0::expert::detail {

inline constexpr std::int64_t kP = kernels::cpu::kPanelCols;
inline constexpr std::int64_t kHalf = kP / 2;  // gate (or up) units per gate/up panel

// Store of a finished gate/up tile: h = silu(s1 · g) · (s3 · u), 8 units, into h's padded row.
struct GateUpStore {
    MatrixView<float> h;
    float const* scale;  // [panels * 16] or nullptr
#if SMOE_PACKED_AVX2
    SMOE_ALWAYS_INLINE void store(std::int64_t i, std::int64_t p, __m256 g, __m256 u) {
        using batch = xsimd::batch<float, xsimd::fma3<xsimd::avx2>>;
        if (scale) {
            g = _mm256_mul_ps(g, _mm256_loadu_ps(scale + p * kP));
            u = _mm256_mul_ps(u, _mm256_loadu_ps(scale + p * kP + kHalf));
        }
        batch const gv(g), uv(u);
        batch const hv = gv / (batch(1.0f) + xsimd::exp(-gv)) * uv;
        hv.store_unaligned(h.row(i) + p * kHalf);
    }
#endif
    // The kernels that hand over 16 floats (bf16 and int8 dot paths, the scalar tiles) get the same
    // vector SiLU where the build has AVX2: a scalar std::exp per unit cost a third of a dot-path expert.
    void store(std::int64_t i, std::int64_t p, float const* v) {
#if SMOE_PACKED_AVX2
        store(i, p, _mm256_loadu_ps(v), _mm256_loadu_ps(v + kHalf));
#else
        for (int c = 0; c < kHalf; ++c) {
            float g = v[c], u = v[c + kHalf];
            if (scale) g *= scale[p * kP + c], u *= scale[p * kP + kHalf + c];
            h(i, p * kHalf + c) = g / (1.0f + std::exp(-g)) * u;
        }
#endif
    }
};

// Store of a finished down tile: out = w · (s2 · acc), the columns below d only.
struct DownStore {
    MatrixView<float> out;
    float const* row_w;
    float const* scale;
#if SMOE_PACKED_AVX2
    SMOE_ALWAYS_INLINE void store(std::int64_t i, std::int64_t p, __m256 lo, __m256 hi) {
        if (scale) {
            lo = _mm256_mul_ps(lo, _mm256_loadu_ps(scale + p * kP));
            hi = _mm256_mul_ps(hi, _mm256_loadu_ps(scale + p * kP + kHalf));
        }
        __m256 const w = _mm256_set1_ps(row_w[i]);
        lo = _mm256_mul_ps(lo, w);
        hi = _mm256_mul_ps(hi, w);
        float* dst = out.row(i) + p * kP;
        if ((p + 1) * kP <= out.cols) {
            _mm256_storeu_ps(dst, lo);
            _mm256_storeu_ps(dst + kHalf, hi);
        } else {
            alignas(32) float t[kP];
            _mm256_store_ps(t, lo);
            _mm256_store_ps(t + kHalf, hi);
            std::copy(t, t + (out.cols - p * kP), dst);
        }
    }
#endif
    void store(std::int64_t i, std::int64_t p, float const* v) {
        std::int64_t const n = std::min(kP, out.cols - p * kP);
        for (std::int64_t c = 0; c < n; ++c) {
            float a = v[c];
            if (scale) a *= scale[p * kP + c];
            out(i, p * kP + c) = a * row_w[i];
        }
    }
};

}  // namespace smoe::inline v0::expert::detail
