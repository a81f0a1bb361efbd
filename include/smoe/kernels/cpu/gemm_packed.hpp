#pragma once
// C[M, panels] = A[M, K] · panelsᵀ over weight panels packed by pack.hpp, in the outer-product form:
// each output column is one fp32 FMA chain over k = 0..K-1, started at +0, in that order, with the
// weight widened exactly to fp32 first. The order depends on nothing but K, so every kernel shape
// below (a row alone, six rows, four panels at once), every split of rows or panels over threads
// and the scalar fallback with std::fma give the same bits (experts.md §1 rule 3).
//
// Tiles (AVX2, 16 ymm registers; a panel is two vectors of 8 columns):
//   * full row tiles: 6 rows x 1 panel = 12 accumulators, 2 weight loads + 6 broadcasts per 12 FMAs;
//   * the remaining r = M mod 6 rows (decode: an expert with 1-5 rows has nothing else) take tiles
//     of up to 6/G rows x G panels, G = 4, 3, 2, 3, 2 for r = 1..5: a lone row keeps 8 FMA chains
//     and 4 weight streams in flight instead of 2 chains latency bound at 4 cycles per k.
//   Measured (olmoe expert d 2048, f 1024, fp32, one thread, CPU time on a shared 2-vCPU VM): rows
//   1, 2, 3 stream 16.7-18.9, 17.2, 15.9 GB/s; 4 rows as one 4 x 1 tile 10.2 GB/s, as 2 + 2 x 3 panels
//   12.7; 6 rows (one 6 x 1 tile) 9-12 GB/s; 64 rows 70-75 GFLOP/s (92 of a 98 GFLOP/s peak when
//   the panels are in cache). So the multi-panel "decode" tiles serve every leftover count below 6,
//   and the weak spot is 6-12 rows per expert (one weight stream per tile), the middle T range.
// Panels are visited in groups of G; within a group the panel's row tiles run back to back, so each
// panel is read from memory once per call and stays in L2 (16 x K weights) while the tiles reuse it.
//
// The epilogue receives each finished (row, panel) tile: as two ymm vectors (columns 0-7, 8-15) on
// AVX2, as 16 floats on the scalar path.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <type_traits>

#include "smoe/detail/xsimd.hpp"

#include "smoe/core/bf16.hpp"
#include "smoe/core/view.hpp"
#include "smoe/kernels/cpu/pack.hpp"
#include "smoe/kernels/cpu/gemm_packed_avx512.hpp"
#include "smoe/kernels/cpu/tile_store.hpp"
#include "smoe/macros.hpp"

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#define SMOE_PACKED_AVX2 1
#else
#define SMOE_PACKED_AVX2 0
#endif

namespace smoe::inline v0::kernels::cpu {

// Which packed kernel an xsimd Arch runs: the 512-bit one (gemm_packed_avx512.hpp) for AVX-512 archs
// in an AVX-512 build, the AVX2+FMA one for fma3<avx2> (and AVX-512 archs named in a build without
// AVX-512), the scalar one otherwise.
template <class Arch>
inline constexpr bool kPackedAvx2 =
    SMOE_PACKED_AVX2 && !kPackedAvx512<Arch> &&
    (std::is_base_of_v<xsimd::fma3<xsimd::avx2>, Arch> || std::is_base_of_v<xsimd::avx512f, Arch>);

inline constexpr int kPackedMR = 6;
// How far ahead in one panel the kernels prefetch, in bytes of stored weights.
// (1, 2, 4 and 8 KiB measured the same within this VM's noise.)
inline constexpr std::int64_t kPrefetchBytes = 1024;

// Panels processed together by the r = M mod 6 leftover rows (see the top of this file).
// 4 and 5 leftover rows go as 2 + 2 rows x 3 panels and 3 + 2 rows x 2 panels: the second pass reads
// the group from L2, and the first keeps 2-3 weight streams in flight where a 4- or 5-row tile on one
// panel would have one.
constexpr int packed_group(int r) { return r == 1 ? 4 : r == 2 || r == 4 ? 3 : 2; }
// Rows one leftover tile takes over g panels (12 accumulators at most).
constexpr int packed_rows_for(std::int64_t g) { return g >= 4 ? 1 : g == 3 ? 2 : g == 2 ? 3 : 5; }

namespace detail {

template <class W>
SMOE_ALWAYS_INLINE float widen_scalar(W w) {
    if constexpr (std::is_same_v<W, bf16>)
        return to_float(w);
    else
        return static_cast<float>(w);
}

// Scalar path: the same chain per column with std::fma.
template <class W, class Epi>
void packed_tile_scalar(float const* a, std::int64_t lda, W const* b, std::int64_t K, std::int64_t row0, int rows,
                        std::int64_t panel, Epi& epi) {
    for (int i = 0; i < rows; ++i) {
        float acc[kPanelCols] = {};
        float const* ai = a + i * lda;
        for (std::int64_t k = 0; k < K; ++k)
            for (int s = 0; s < kPanelCols; ++s)
                acc[kPanelSlotColumn<W>[s]] = std::fma(ai[k], widen_scalar(b[k * kPanelCols + s]), acc[kPanelSlotColumn<W>[s]]);
        epi.store(row0 + i, panel, acc);
    }
}

#if SMOE_PACKED_AVX2
template <class W>
SMOE_ALWAYS_INLINE void load_panel_avx2(W const* p, __m256& lo, __m256& hi) {
    if constexpr (std::is_same_v<W, float>) {
        lo = _mm256_loadu_ps(p);
        hi = _mm256_loadu_ps(p + 8);
    } else if constexpr (std::is_same_v<W, bf16>) {
        __m256i const v = _mm256_loadu_si256(reinterpret_cast<__m256i const*>(p));
        __m256i const z = _mm256_setzero_si256();
        lo = _mm256_castsi256_ps(_mm256_unpacklo_epi16(z, v));  // slots 0-3, 8-11 = columns 0-7
        hi = _mm256_castsi256_ps(_mm256_unpackhi_epi16(z, v));  // slots 4-7, 12-15 = columns 8-15
    } else {
        static_assert(std::is_same_v<W, std::int8_t>);
        __m128i const v = _mm_loadu_si128(reinterpret_cast<__m128i const*>(p));
        lo = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(v));
        hi = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_unpackhi_epi64(v, v)));
    }
}

// MR rows x NP panels; b points at the first panel, pstride elements between panels. The k loop is a
// function of its own (not inlined into the driver): inlined, GCC ran out of registers with the
// driver's live values around it and kept the accumulators on the stack (measured 2x slower).
template <class W, int MR, int NP, bool Continue = false>
[[gnu::noinline]] void packed_loop_avx2(float const* a, std::int64_t lda, W const* b, std::int64_t pstride, std::int64_t K,
                                        __m256* out) {
    // The pragmas unroll the tile loops before GCC decides where acc lives.
    __m256 acc[MR][NP][2];
    float const* ar[MR];
#pragma GCC unroll 8
    for (int i = 0; i < MR; ++i) ar[i] = a + i * lda;
    // Continue: the chains resume from the fp32 values a previous k block stored in out, which is
    // bit for bit the chain run without the break.
#pragma GCC unroll 8
    for (int i = 0; i < MR; ++i)
#pragma GCC unroll 4
        for (int j = 0; j < NP; ++j) {
            if constexpr (Continue) {
                acc[i][j][0] = out[(i * NP + j) * 2];
                acc[i][j][1] = out[(i * NP + j) * 2 + 1];
            } else {
                acc[i][j][0] = acc[i][j][1] = _mm256_setzero_ps();
            }
        }
    for (std::int64_t k = 0; k < K; ++k) {
#pragma GCC unroll 4
        for (int j = 0; j < NP; ++j) {
            __m256 lo, hi;
            W const* const bk = b + j * pstride + k * kPanelCols;
            // A stream per panel, 1 KiB ahead: one stream on the hardware prefetcher alone ran at a
            // third of the DRAM bandwidth (a lone row, one panel at a time).
            _mm_prefetch(reinterpret_cast<char const*>(bk) + kPrefetchBytes, _MM_HINT_T0);
            load_panel_avx2(bk, lo, hi);
            // Keep the panel vectors in registers: GCC otherwise folds the load into every row's FMA,
            // MR loads per vector instead of one, and the load ports become the bottleneck.
            __asm__("" : "+x"(lo), "+x"(hi));
#pragma GCC unroll 8
            for (int i = 0; i < MR; ++i) {
                __m256 const av = _mm256_broadcast_ss(ar[i] + k);
                acc[i][j][0] = _mm256_fmadd_ps(av, lo, acc[i][j][0]);
                acc[i][j][1] = _mm256_fmadd_ps(av, hi, acc[i][j][1]);
            }
        }
    }
#pragma GCC unroll 8
    for (int i = 0; i < MR; ++i)
#pragma GCC unroll 4
        for (int j = 0; j < NP; ++j) {
            out[(i * NP + j) * 2] = acc[i][j][0];
            out[(i * NP + j) * 2 + 1] = acc[i][j][1];
        }
}

template <class W, int MR, int NP, class Epi>
SMOE_ALWAYS_INLINE void packed_tile_avx2(float const* a, std::int64_t lda, W const* b, std::int64_t pstride,
                                         std::int64_t K, std::int64_t row0, std::int64_t panel0, Epi& epi) {
    __m256 out[MR * NP * 2];
    packed_loop_avx2<W, MR, NP>(a, lda, b, pstride, K, out);
    store_tile(epi, row0, panel0, MR, NP, static_cast<__m256 const*>(out));
}

template <class W, int NP, class Epi>
void packed_rest_avx2(int r, float const* a, std::int64_t lda, W const* b, std::int64_t pstride, std::int64_t K,
                      std::int64_t row0, std::int64_t panel0, Epi& epi) {
    switch (r) {
        case 1: return packed_tile_avx2<W, 1, NP>(a, lda, b, pstride, K, row0, panel0, epi);
        case 2: return packed_tile_avx2<W, 2, (NP < 3 ? NP : 3)>(a, lda, b, pstride, K, row0, panel0, epi);
        case 3: return packed_tile_avx2<W, 3, (NP < 2 ? NP : 2)>(a, lda, b, pstride, K, row0, panel0, epi);
        case 4: return packed_tile_avx2<W, 4, 1>(a, lda, b, pstride, K, row0, panel0, epi);
        default: return packed_tile_avx2<W, 5, 1>(a, lda, b, pstride, K, row0, panel0, epi);
    }
}

// Prefill path for int8: the full 6-row tiles of one panel, over rows [0, full). Widening int8 in
// registers costs 2 instructions per 8 weights in every tile; here a block of kWidenSteps k steps is
// widened once into an fp32 buffer (16 KiB, on the stack) and the tiles of up to kWidenRows rows run
// the fp32 kernel on it, their accumulators parked in a 6 KiB stack buffer between blocks.
// Measured (olmoe expert, one thread, CPU time, 3 runs on the shared VM, GFLOP/s): int8 at 32 rows
// 69/57/66 widened vs 66/62/61 in registers, at 64 rows 76/69/74 vs 51/62/63; at 6-12 rows the copy
// loses (48-61 vs 54-66), hence kWidenMinRows. bf16 widens with one unpack per vector and lost
// every time (64 rows: 68-78 vs 67-94), so it stays in registers.
inline constexpr std::int64_t kWidenSteps = 256, kWidenRows = 96, kWidenMinRows = 24;

// The full 6-row tiles of rows [0, full) over panel q, K steps, Steps at a time decoded to fp32 by
// decode(k0, kb, wide) (kb steps of 16 floats) and shared by up to Rows rows. Also the quantised
// formats' decoded-block path (gemm_quant.hpp).
template <std::int64_t Steps, std::int64_t Rows, class Decode, class Epi>
void widened_tiles_avx2(MatrixView<float const> A, std::int64_t K, std::int64_t full, std::int64_t q, Decode&& decode, Epi& epi) {
    alignas(64) float wide[Steps * kPanelCols];
    __m256 acc[Rows / kPackedMR][kPackedMR * 2];
    for (std::int64_t m0 = 0; m0 < full; m0 += Rows) {
        std::int64_t const tiles = std::min(Rows, full - m0) / kPackedMR;
        for (std::int64_t k0 = 0; k0 < K; k0 += Steps) {
            std::int64_t const kb = std::min(Steps, K - k0);
            decode(k0, kb, wide);
            for (std::int64_t t = 0; t < tiles; ++t) {
                float const* a = A.row(m0 + t * kPackedMR) + k0;
                if (k0 == 0)
                    packed_loop_avx2<float, kPackedMR, 1, false>(a, A.ld, wide, 0, kb, acc[t]);
                else
                    packed_loop_avx2<float, kPackedMR, 1, true>(a, A.ld, wide, 0, kb, acc[t]);
            }
        }
        for (std::int64_t t = 0; t < tiles; ++t) store_tile(epi, m0 + t * kPackedMR, q, kPackedMR, 1, static_cast<__m256 const*>(acc[t]));
    }
}

template <class W, class Epi>
void packed_panel_widened_avx2(MatrixView<float const> A, std::int64_t full, W const* panel, std::int64_t q, Epi& epi) {
    auto const widen = [panel](std::int64_t k0, std::int64_t kb, float* wide) {
        for (std::int64_t k = 0; k < kb; ++k) {
            __m256 lo, hi;
            load_panel_avx2(panel + (k0 + k) * kPanelCols, lo, hi);
            _mm256_store_ps(wide + k * kPanelCols, lo);
            _mm256_store_ps(wide + k * kPanelCols + 8, hi);
        }
    };
    widened_tiles_avx2<kWidenSteps, kWidenRows>(A, A.cols, full, q, widen, epi);
}
#endif

}  // namespace detail

// Runs the tiles of rows [0, A.rows) x panels [p0, p1) and hands each finished tile to epi.
// `panels` points at panel 0 of the matrix; consecutive panels are K * kPanelCols elements apart.
template <class Arch, class W, class Epi>
void gemm_packed(Arch, MatrixView<float const> A, W const* panels, std::int64_t p0, std::int64_t p1, Epi& epi) {
    std::int64_t const M = A.rows, K = A.cols, pstride = K * kPanelCols;
    if (M == 0 || p0 >= p1) return;
    if constexpr (kPackedAvx512<Arch>) {
#if SMOE_PACKED_AVX512
        detail::gemm_packed_avx512(A, panels, p0, p1, epi);
        return;
#endif
    }
    int const r = static_cast<int>(M % kPackedMR);
    [[maybe_unused]] std::int64_t const full = M - r;  // unused where only the scalar path is compiled
    if constexpr (kPackedAvx2<Arch>) {
#if SMOE_PACKED_AVX2
        int const G = packed_group(r);
        for (std::int64_t p = p0; p < p1; p += G) {
            std::int64_t const g = std::min<std::int64_t>(G, p1 - p);
            for (std::int64_t q = p; q < p + g; ++q) {
                if constexpr (std::is_same_v<W, std::int8_t>)
                    if (full >= detail::kWidenMinRows) {
                        detail::packed_panel_widened_avx2(A, full, panels + q * pstride, q, epi);
                        continue;
                    }
                for (std::int64_t m = 0; m < full; m += kPackedMR)
                    detail::packed_tile_avx2<W, kPackedMR, 1>(A.row(m), A.ld, panels + q * pstride, pstride, K, m, q, epi);
            }
            if (r == 0) continue;
            W const* bp = panels + p * pstride;
            int const step = packed_rows_for(g);
            for (int i0 = 0; i0 < r; i0 += step) {
                int const rr = std::min(step, r - i0);
                float const* ar = A.row(full + i0);
                if (g == 4)
                    detail::packed_rest_avx2<W, 4>(rr, ar, A.ld, bp, pstride, K, full + i0, p, epi);
                else if (g == 3)
                    detail::packed_rest_avx2<W, 3>(rr, ar, A.ld, bp, pstride, K, full + i0, p, epi);
                else if (g == 2)
                    detail::packed_rest_avx2<W, 2>(rr, ar, A.ld, bp, pstride, K, full + i0, p, epi);
                else
                    detail::packed_rest_avx2<W, 1>(rr, ar, A.ld, bp, pstride, K, full + i0, p, epi);
            }
        }
#endif
    } else {
        for (std::int64_t p = p0; p < p1; ++p)
            detail::packed_tile_scalar(A.data, A.ld, panels + p * pstride, K, 0, static_cast<int>(M), p, epi);
    }
}

}  // namespace smoe::inline v0::kernels::cpu
