#pragma once
// One k step of a quantised panel (quant_panel.hpp) decoded to the 16 slots' fp32 weights W_deq,
// exactly (formats.md §0): the code widened exactly, minus the zero point (int4 and ternary, an exact
// small integer), times the factor, one rounding. Scalar, AVX2 (two ymm: slots 0-7, 8-15) and AVX-512 (one
// zmm) give the same bits, so the exact path's chains (gemm_quant.hpp) do not depend on the ISA.
//
// e4m3: the byte's exponent and mantissa moved to bit 20 of an fp32 read 2^-120 times the value (also
// for subnormal codes), so (bits · 2^120) · s is exact then rounded once. Needs subnormals (no DAZ).

#include <bit>
#include <cmath>
#include <cstdint>
#include <cstring>

#include "smoe/core/bf16.hpp"
#include "smoe/macros.hpp"
#include "smoe/quant/element.hpp"
#include "smoe/quant/format.hpp"

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#endif

namespace smoe::inline v0::kernels::cpu::qdetail {

using quant::Kind;

template <Kind K>
SMOE_ALWAYS_INLINE float decode_scalar(std::uint8_t const* step, int s, float scale, float zero) {
    if constexpr (K == Kind::f32) {
        float v;
        std::memcpy(&v, step + 4 * s, 4);
        return v;
    } else if constexpr (K == Kind::bf16) {
        bf16 v;
        std::memcpy(&v, step + 2 * s, 2);
        return to_float(v);
    } else if constexpr (K == Kind::int8_channel) {
        return static_cast<float>(static_cast<std::int8_t>(step[s])) * scale;
    } else if constexpr (K == Kind::fp8) {
        std::uint32_t const b = step[s];
        return std::bit_cast<float>(((b & 0x80u) << 24) | ((b & 0x7Fu) << 20)) * quant::kE4m3Rescale * scale;
    } else if constexpr (K == Kind::ternary) {
        return (static_cast<float>((step[s / 4] >> (2 * (s % 4))) & 3u) - zero) * scale;
    } else {
        unsigned const c = s < 8 ? step[s] & 15u : step[s - 8] >> 4;
        if constexpr (K == Kind::int4)
            return (static_cast<float>(c) - zero) * scale;
        else
            return quant::kE2m1Values[c] * scale;
    }
}

#if defined(__AVX2__) && defined(__FMA__)
// Eight E2M1 magnitudes; the sign (bit 3) goes to bit 31 separately.
SMOE_ALWAYS_INLINE __m256 e2m1_avx2(__m256i c) {
    __m256 const table = _mm256_setr_ps(0.0f, 0.5f, 1.0f, 1.5f, 2.0f, 3.0f, 4.0f, 6.0f);
    __m256 const mag = _mm256_permutevar8x32_ps(table, c);
    __m256i const sign = _mm256_and_si256(_mm256_slli_epi32(c, 28), _mm256_set1_epi32(int(0x80000000u)));
    return _mm256_or_ps(mag, _mm256_castsi256_ps(sign));
}
SMOE_ALWAYS_INLINE __m256 e4m3_avx2(__m256i b) {
    __m256i const bits = _mm256_or_si256(_mm256_and_si256(_mm256_slli_epi32(b, 24), _mm256_set1_epi32(int(0x80000000u))),
                                         _mm256_and_si256(_mm256_slli_epi32(b, 20), _mm256_set1_epi32(0x07F00000)));
    return _mm256_mul_ps(_mm256_castsi256_ps(bits), _mm256_set1_ps(quant::kE4m3Rescale));
}

// lo = slots 0-7, hi = slots 8-15; s, z point at the run's 16 factors and zero points.
template <Kind K>
SMOE_ALWAYS_INLINE void decode_avx2(std::uint8_t const* step, float const* s, float const* z, __m256& lo, __m256& hi) {
    if constexpr (K == Kind::f32) {
        lo = _mm256_loadu_ps(reinterpret_cast<float const*>(step));
        hi = _mm256_loadu_ps(reinterpret_cast<float const*>(step) + 8);
    } else if constexpr (K == Kind::bf16) {
        __m128i const a = _mm_loadu_si128(reinterpret_cast<__m128i const*>(step));
        __m128i const b = _mm_loadu_si128(reinterpret_cast<__m128i const*>(step + 16));
        lo = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(a), 16));
        hi = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(b), 16));
    } else if constexpr (K == Kind::int8_channel || K == Kind::fp8) {
        __m128i const v = _mm_loadu_si128(reinterpret_cast<__m128i const*>(step));
        if constexpr (K == Kind::int8_channel) {
            lo = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(v));
            hi = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_unpackhi_epi64(v, v)));
        } else {
            lo = e4m3_avx2(_mm256_cvtepu8_epi32(v));
            hi = e4m3_avx2(_mm256_cvtepu8_epi32(_mm_unpackhi_epi64(v, v)));
        }
        lo = _mm256_mul_ps(lo, _mm256_loadu_ps(s));
        hi = _mm256_mul_ps(hi, _mm256_loadu_ps(s + 8));
    } else if constexpr (K == Kind::ternary) {
        std::uint32_t dw;
        std::memcpy(&dw, step, 4);
        __m256i const v = _mm256_set1_epi32(static_cast<int>(dw)), three = _mm256_set1_epi32(3);
        __m256i const cl = _mm256_and_si256(_mm256_srlv_epi32(v, _mm256_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14)), three);
        __m256i const ch = _mm256_and_si256(_mm256_srlv_epi32(v, _mm256_setr_epi32(16, 18, 20, 22, 24, 26, 28, 30)), three);
        lo = _mm256_mul_ps(_mm256_sub_ps(_mm256_cvtepi32_ps(cl), _mm256_loadu_ps(z)), _mm256_loadu_ps(s));
        hi = _mm256_mul_ps(_mm256_sub_ps(_mm256_cvtepi32_ps(ch), _mm256_loadu_ps(z + 8)), _mm256_loadu_ps(s + 8));
    } else {
        __m128i const v = _mm_loadl_epi64(reinterpret_cast<__m128i const*>(step));
        __m128i const m = _mm_set1_epi8(15);
        __m256i const cl = _mm256_cvtepu8_epi32(_mm_and_si128(v, m));
        __m256i const ch = _mm256_cvtepu8_epi32(_mm_and_si128(_mm_srli_epi16(v, 4), m));
        if constexpr (K == Kind::int4) {
            lo = _mm256_sub_ps(_mm256_cvtepi32_ps(cl), _mm256_loadu_ps(z));
            hi = _mm256_sub_ps(_mm256_cvtepi32_ps(ch), _mm256_loadu_ps(z + 8));
        } else {
            lo = e2m1_avx2(cl);
            hi = e2m1_avx2(ch);
        }
        lo = _mm256_mul_ps(lo, _mm256_loadu_ps(s));
        hi = _mm256_mul_ps(hi, _mm256_loadu_ps(s + 8));
    }
}
#endif

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX2__) && defined(__FMA__)
#define SMOE_QUANT_AVX512 1
// s, z: the run's factors and zero points, already in registers.
template <Kind K>
SMOE_ALWAYS_INLINE __m512 decode_avx512(std::uint8_t const* step, __m512 s, __m512 z) {
    if constexpr (K == Kind::f32) {
        return _mm512_loadu_ps(step);
    } else if constexpr (K == Kind::bf16) {
        __m256i const v = _mm256_loadu_si256(reinterpret_cast<__m256i const*>(step));
        return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(v), 16));
    } else if constexpr (K == Kind::int8_channel) {
        __m128i const v = _mm_loadu_si128(reinterpret_cast<__m128i const*>(step));
        return _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(v)), s);
    } else if constexpr (K == Kind::fp8) {
        __m512i const b = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<__m128i const*>(step)));
        // (b << 24) & 0x80000000 | (b << 20) & 0x07F00000 in one ternary-logic op, mask ? x : y (0xCA).
        __m512i const bits = _mm512_ternarylogic_epi32(_mm512_set1_epi32(int(0x80000000u)), _mm512_slli_epi32(b, 24),
                                                       _mm512_and_si512(_mm512_slli_epi32(b, 20), _mm512_set1_epi32(0x07F00000)), 0xCA);
        return _mm512_mul_ps(_mm512_mul_ps(_mm512_castsi512_ps(bits), _mm512_set1_ps(quant::kE4m3Rescale)), s);
    } else if constexpr (K == Kind::ternary) {
        std::uint32_t dw;
        std::memcpy(&dw, step, 4);
        __m512i const shifts = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
        __m512i const c = _mm512_and_si512(_mm512_srlv_epi32(_mm512_set1_epi32(static_cast<int>(dw)), shifts), _mm512_set1_epi32(3));
        return _mm512_mul_ps(_mm512_sub_ps(_mm512_cvtepi32_ps(c), z), s);
    } else {
        __m128i const v = _mm_loadl_epi64(reinterpret_cast<__m128i const*>(step));
        __m128i const m = _mm_set1_epi8(15);
        __m512i const c = _mm512_cvtepu8_epi32(_mm_unpacklo_epi64(_mm_and_si128(v, m), _mm_and_si128(_mm_srli_epi16(v, 4), m)));
        if constexpr (K == Kind::int4) {
            return _mm512_mul_ps(_mm512_sub_ps(_mm512_cvtepi32_ps(c), z), s);
        } else {
            __m512 const table = _mm512_loadu_ps(quant::kE2m1Values);
            // vpermt2ps with the table twice: see slots_to_columns_avx512 for why not vpermps.
            return _mm512_mul_ps(_mm512_permutex2var_ps(table, c, table), s);
        }
    }
}
#else
#define SMOE_QUANT_AVX512 0
#endif

}  // namespace smoe::inline v0::kernels::cpu::qdetail
