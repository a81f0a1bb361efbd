#pragma once
// The AVX-512 tiles of gemm_packed (gemm_packed.hpp), over the same panels (pack.hpp): one k step of a
// panel, 16 columns, is one zmm register. Each output column is still one fp32 FMA chain over
// k = 0..K-1 in order, started at +0, with the weight widened exactly first, so every tile below
// gives the bits of the AVX2 and scalar kernels (experts.md §1 rule 3): only the lanes are wider.
//
// Compiled when the translation unit is built for AVX-512 (__AVX512F__, e.g. -march=native on an
// AVX-512 machine) and selected for xsimd archs derived from xsimd::avx512f (kPackedAvx512).
//
// Tiles (32 zmm registers; rows x panels accumulators + one weight vector per panel + a broadcast):
//   * full row tiles: 8 rows x up to 3 panels = 24 accumulators; 3 weight loads and 8 broadcasts per
//     24 FMAs;
//   * the r = M mod 8 leftover rows (decode: an expert with 1-7 rows has nothing else): 1-3 rows take
//     up to 6 panels at once (a lone row keeps 6 FMA chains and 6 weight streams in flight), 4-7 rows
//     take 3 panels per tile (12-21 accumulators).
// Panels go in groups of 6; the full row tiles of a group run back to back over its first 3 panels,
// then the next 3, then the leftover rows, so a group's panels are read from memory about once
// per call and reused from L2.
//
// bf16 panels hold their columns in slot order {0-3, 8-11, 4-7, 12-15} (pack.hpp). A 16-lane widen
// (zero-extend, shift) keeps that order, so the lanes of a tile's accumulators are slots; one permute
// per finished tile (not per k) puts them back in column order. Lanes are independent chains, so the
// permute changes no bits.
//
// int8 widens in registers (sign-extend, convert); the per-channel scale stays in the epilogue, as on
// the AVX2 path. The epilogues keep their AVX2 signature: each finished zmm goes to
// epi.store(row, panel, lo, hi) as its two ymm halves (columns 0-7, 8-15).
//
// Not measured: this file was written and compile-checked on a machine without AVX-512; the tile
// shapes follow the AVX2 kernel's measurements scaled to twice the registers.

#include <algorithm>
#include <cstdint>
#include <type_traits>

#include "smoe/detail/xsimd.hpp"

#include "smoe/core/bf16.hpp"
#include "smoe/core/view.hpp"
#include "smoe/kernels/cpu/pack.hpp"
#include "smoe/kernels/cpu/tile_store.hpp"
#include "smoe/macros.hpp"

#if defined(__AVX512F__) && defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#define SMOE_PACKED_AVX512 1
#else
#define SMOE_PACKED_AVX512 0
#endif

namespace smoe::inline v0::kernels::cpu {

// True when the build has AVX-512F and Arch is an AVX-512 xsimd arch: gemm_packed runs the 512-bit tiles.
template <class Arch>
inline constexpr bool kPackedAvx512 = SMOE_PACKED_AVX512 && std::is_base_of_v<xsimd::avx512f, Arch>;

inline constexpr int kPacked512Rows = 8;     // rows of a full tile
inline constexpr int kPacked512Panels = 3;   // panels of a full tile
inline constexpr int kPacked512Group = 6;    // panels visited together
inline constexpr std::int64_t kPrefetch512Bytes = 1024;  // as the AVX2 kernel's kPrefetchBytes

#if SMOE_PACKED_AVX512
namespace detail {

template <class W>
SMOE_ALWAYS_INLINE __m512 load_panel_avx512(W const* p) {
    if constexpr (std::is_same_v<W, float>) {
        return _mm512_loadu_ps(p);
    } else if constexpr (std::is_same_v<W, bf16>) {
        __m256i const v = _mm256_loadu_si256(reinterpret_cast<__m256i const*>(p));
        return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(v), 16));  // lanes in slot order
    } else {
        static_assert(std::is_same_v<W, std::int8_t>);
        return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<__m128i const*>(p))));
    }
}

// Lane s of a tile holds column kPanelSlotColumn<W>[s]; the bf16 slot order is its own inverse, so the
// same table is the permute index that brings column c to lane c. The two-source permute with v twice:
// g++ 12.2's _mm512_permutexvar_ps passes _mm512_undefined_ps() as its pass-through, which reads an
// uninitialised register (-Wuninitialized at every tile); vpermt2ps takes both sources from us.
template <class W>
SMOE_ALWAYS_INLINE __m512 slots_to_columns_avx512(__m512 v) {
    if constexpr (std::is_same_v<W, bf16>) {
        __m512i const idx = _mm512_setr_epi32(0, 1, 2, 3, 8, 9, 10, 11, 4, 5, 6, 7, 12, 13, 14, 15);
        return _mm512_permutex2var_ps(v, idx, v);
    } else {
        return v;
    }
}

// MR rows x NP panels over the whole K; b points at the first panel, pstride elements between panels.
// Not inlined into the driver, for the reason given at packed_loop_avx2 (accumulators stay in registers).
// Continue: the chains resume from the values a previous k block stored in out (gemm_quant.hpp's
// decoded blocks), bit for bit the chain run without the break.
template <class W, int MR, int NP, bool Continue = false>
[[gnu::noinline]] void packed_loop_avx512(float const* a, std::int64_t lda, W const* b, std::int64_t pstride,
                                          std::int64_t K, __m512* out) {
    static_assert(MR * NP + NP + 1 <= 32, "the tile must fit the 32 zmm registers");
    __m512 acc[MR][NP];
    float const* ar[MR];
#pragma GCC unroll 8
    for (int i = 0; i < MR; ++i) ar[i] = a + i * lda;
#pragma GCC unroll 8
    for (int i = 0; i < MR; ++i)
#pragma GCC unroll 6
        for (int j = 0; j < NP; ++j) acc[i][j] = Continue ? out[i * NP + j] : _mm512_setzero_ps();
    for (std::int64_t k = 0; k < K; ++k) {
        __m512 w[NP];
#pragma GCC unroll 6
        for (int j = 0; j < NP; ++j) {
            W const* const bk = b + j * pstride + k * kPanelCols;
            _mm_prefetch(reinterpret_cast<char const*>(bk) + kPrefetch512Bytes, _MM_HINT_T0);
            w[j] = load_panel_avx512(bk);
            // One load per panel vector, not one folded into every row's FMA (see packed_loop_avx2).
            __asm__("" : "+v"(w[j]));
        }
#pragma GCC unroll 8
        for (int i = 0; i < MR; ++i) {
            __m512 const av = _mm512_set1_ps(ar[i][k]);
#pragma GCC unroll 6
            for (int j = 0; j < NP; ++j) acc[i][j] = _mm512_fmadd_ps(av, w[j], acc[i][j]);
        }
    }
#pragma GCC unroll 8
    for (int i = 0; i < MR; ++i)
#pragma GCC unroll 6
        for (int j = 0; j < NP; ++j) out[i * NP + j] = slots_to_columns_avx512<W>(acc[i][j]);
}

template <class W, int MR, int NP, class Epi>
SMOE_ALWAYS_INLINE void packed_tile_avx512(float const* a, std::int64_t lda, W const* b, std::int64_t pstride,
                                           std::int64_t K, std::int64_t row0, std::int64_t panel0, Epi& epi) {
    __m512 out[MR * NP];
    packed_loop_avx512<W, MR, NP>(a, lda, b, pstride, K, out);
    store_tile(epi, row0, panel0, MR, NP, static_cast<__m512 const*>(out));
}

// A tile of MR rows over np (1..NPMax) panels.
template <class W, int MR, int NPMax, class Epi>
void packed_tile_np_avx512(int np, float const* a, std::int64_t lda, W const* b, std::int64_t pstride, std::int64_t K,
                           std::int64_t row0, std::int64_t panel0, Epi& epi) {
    if constexpr (NPMax > 1)
        if (np < NPMax) return packed_tile_np_avx512<W, MR, NPMax - 1>(np, a, lda, b, pstride, K, row0, panel0, epi);
    packed_tile_avx512<W, MR, NPMax>(a, lda, b, pstride, K, row0, panel0, epi);
}

// The r leftover rows (1..7) over np panels: np <= kPacked512Group for r <= 3, np <= 3 otherwise.
template <class W, class Epi>
void packed_rest_avx512(int r, int np, float const* a, std::int64_t lda, W const* b, std::int64_t pstride,
                        std::int64_t K, std::int64_t row0, std::int64_t panel0, Epi& epi) {
    switch (r) {
        case 1: return packed_tile_np_avx512<W, 1, kPacked512Group>(np, a, lda, b, pstride, K, row0, panel0, epi);
        case 2: return packed_tile_np_avx512<W, 2, kPacked512Group>(np, a, lda, b, pstride, K, row0, panel0, epi);
        case 3: return packed_tile_np_avx512<W, 3, kPacked512Group>(np, a, lda, b, pstride, K, row0, panel0, epi);
        case 4: return packed_tile_np_avx512<W, 4, 3>(np, a, lda, b, pstride, K, row0, panel0, epi);
        case 5: return packed_tile_np_avx512<W, 5, 3>(np, a, lda, b, pstride, K, row0, panel0, epi);
        case 6: return packed_tile_np_avx512<W, 6, 3>(np, a, lda, b, pstride, K, row0, panel0, epi);
        default: return packed_tile_np_avx512<W, 7, 3>(np, a, lda, b, pstride, K, row0, panel0, epi);
    }
}

// gemm_packed's AVX-512 body: rows [0, A.rows) x panels [p0, p1), consecutive panels K * 16 apart.
template <class W, class Epi>
void gemm_packed_avx512(MatrixView<float const> A, W const* panels, std::int64_t p0, std::int64_t p1, Epi& epi) {
    std::int64_t const M = A.rows, K = A.cols, pstride = K * kPanelCols;
    int const r = static_cast<int>(M % kPacked512Rows);
    std::int64_t const full = M - r;
    int const rest_step = r <= 3 ? kPacked512Group : kPacked512Panels;
    for (std::int64_t p = p0; p < p1; p += kPacked512Group) {
        std::int64_t const pe = std::min<std::int64_t>(p + kPacked512Group, p1);
        for (std::int64_t q = p; q < pe; q += kPacked512Panels) {
            int const np = static_cast<int>(std::min<std::int64_t>(kPacked512Panels, pe - q));
            for (std::int64_t m = 0; m < full; m += kPacked512Rows)
                packed_tile_np_avx512<W, kPacked512Rows, kPacked512Panels>(np, A.row(m), A.ld, panels + q * pstride, pstride,
                                                                           K, m, q, epi);
        }
        if (r == 0) continue;
        for (std::int64_t q = p; q < pe; q += rest_step) {
            int const np = static_cast<int>(std::min<std::int64_t>(rest_step, pe - q));
            packed_rest_avx512(r, np, A.row(full), A.ld, panels + q * pstride, pstride, K, full, q, epi);
        }
    }
}

}  // namespace detail
#endif

}  // namespace smoe::inline v0::kernels::cpu
