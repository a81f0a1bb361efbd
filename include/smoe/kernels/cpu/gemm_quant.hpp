#pragma once
// C[M, panels] = A[M, K] · panelsᵀ over quantised panels (quant_panel.hpp), the exact path of
// formats.md §6.1: every weight is decoded to its fp32 W_deq (quant_decode.hpp) and each output is
// one fp32 FMA chain over the panel's k steps in order, started at +0. With no act order that is
// k = 0..K-1, the chain of gemm_packed over the dequantised matrix, so an expert in any format gives
// the bits of the fp32 expert on W_deq (and a mixed layer the bits of single-format ones, §4 rule 4),
// whatever the ISA, tile, row count or thread split. Act order runs the chain in group order.
//
// Two ways through a panel:
//   * in registers (few rows: decode, T = 1..8 per expert): each k step of up to NP panels is decoded
//     once and feeds MR <= 4 rows; the factor and zero point of a run sit in registers (AVX-512) or
//     are memory operands (AVX2);
//   * decoded blocks (many rows): kQBlock steps of a group of panels are decoded into an fp32 buffer
//     on the stack, and gemm_packed's fp32 tiles (8 x 3 on AVX-512, 6 x 1 on AVX2) run on it, their
//     chains continued across blocks. The decode then costs once per kQRows rows.
// Epilogues are gemm_packed's: epi.store(row, panel, lo, hi) with two ymm (AVX2 and AVX-512),
// epi.store(row, panel, float[16]) on the scalar path.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <type_traits>

#include "smoe/detail/xsimd.hpp"

#include "smoe/core/view.hpp"
#include "smoe/kernels/cpu/gemm_packed.hpp"
#include "smoe/kernels/cpu/quant_decode.hpp"
#include "smoe/kernels/cpu/quant_panel.hpp"
#include "smoe/kernels/cpu/tile_store.hpp"
#include "smoe/macros.hpp"

namespace smoe::inline v0::kernels::cpu {

inline constexpr std::int64_t kQBlock = 128;  // k steps per decoded block
inline constexpr std::int64_t kQRows = 96;    // rows that share one decoded block
inline constexpr std::int64_t kQMinRows = 16; // rows from which the decoded-block path pays

namespace qdetail {

// Where a panel's parts are, for the kernels.
struct PanelRef {
    std::uint8_t const* base;  // panel 0
    QuantLayout const* L;
    std::uint8_t const* panel(std::int64_t p) const { return base + p * L->pstride; }
    float const* scales(std::int64_t p, std::int64_t t) const {
        return reinterpret_cast<float const*>(panel(p) + L->scale_off) + t * kPanelCols;
    }
    float const* zeros(std::int64_t p, std::int64_t t) const {
        return reinterpret_cast<float const*>(panel(p) + L->zero_off) + t * kPanelCols;
    }
};

template <Kind KD, class Epi>
void quant_rows_scalar(float const* a, std::int64_t lda, int rows, PanelRef P, std::int64_t p, std::int64_t row0, Epi& epi) {
    QuantLayout const& L = *P.L;
    for (int i = 0; i < rows; ++i) {
        float acc[kPanelCols] = {};
        float const* ai = a + i * lda;
        for (auto const& run : L.runs) {
            float const* s = L.tables ? P.scales(p, run.table) : nullptr;
            float const* z = has_zero_points(KD) ? P.zeros(p, run.table) : nullptr;
            for (std::int64_t k = run.k0; k < run.k1; ++k) {
                float const x = ai[L.has_perm() ? L.perm[static_cast<std::size_t>(k)] : k];
                std::uint8_t const* step = P.panel(p) + k * L.step_bytes;
                for (int c = 0; c < kPanelCols; ++c)
                    acc[c] = std::fma(x, decode_scalar<KD>(step, c, s ? s[c] : 1.0f, z ? z[c] : 0.0f), acc[c]);
            }
        }
        epi.store(row0 + i, p, acc);
    }
}

#if SMOE_PACKED_AVX2
// MR rows x NP panels in registers, two ymm per panel.
template <Kind KD, int MR, int NP, bool Perm>
[[gnu::noinline]] void quant_loop_avx2(float const* a, std::int64_t lda, PanelRef P, std::int64_t p0, __m256* out) {
    QuantLayout const& L = *P.L;
    __m256 acc[MR][NP][2];
#pragma GCC unroll 4
    for (int i = 0; i < MR; ++i)
#pragma GCC unroll 4
        for (int j = 0; j < NP; ++j) acc[i][j][0] = acc[i][j][1] = _mm256_setzero_ps();
    std::int32_t const* perm = L.perm.data();
    for (auto const& run : L.runs) {
        float const* s[NP];
        float const* z[NP];
#pragma GCC unroll 4
        for (int j = 0; j < NP; ++j) {
            s[j] = L.tables ? P.scales(p0 + j, run.table) : nullptr;
            z[j] = has_zero_points(KD) ? P.zeros(p0 + j, run.table) : nullptr;
        }
        for (std::int64_t k = run.k0; k < run.k1; ++k) {
            std::int64_t const col = Perm ? perm[k] : k;
#pragma GCC unroll 4
            for (int j = 0; j < NP; ++j) {
                std::uint8_t const* step = P.panel(p0 + j) + k * L.step_bytes;
                _mm_prefetch(reinterpret_cast<char const*>(step) + kPrefetchBytes, _MM_HINT_T0);
                __m256 lo, hi;
                decode_avx2<KD>(step, s[j], z[j], lo, hi);
                __asm__("" : "+x"(lo), "+x"(hi));
#pragma GCC unroll 4
                for (int i = 0; i < MR; ++i) {
                    __m256 const av = _mm256_broadcast_ss(a + i * lda + col);
                    acc[i][j][0] = _mm256_fmadd_ps(av, lo, acc[i][j][0]);
                    acc[i][j][1] = _mm256_fmadd_ps(av, hi, acc[i][j][1]);
                }
            }
        }
    }
#pragma GCC unroll 4
    for (int i = 0; i < MR; ++i)
#pragma GCC unroll 4
        for (int j = 0; j < NP; ++j) {
            out[(i * NP + j) * 2] = acc[i][j][0];
            out[(i * NP + j) * 2 + 1] = acc[i][j][1];
        }
}

template <Kind KD, int MR, int NP, bool Perm, class Epi>
SMOE_ALWAYS_INLINE void quant_tile_avx2(float const* a, std::int64_t lda, PanelRef P, std::int64_t p0, std::int64_t row0, Epi& epi) {
    __m256 out[MR * NP * 2];
    quant_loop_avx2<KD, MR, NP, Perm>(a, lda, P, p0, out);
    store_tile(epi, row0, p0, MR, NP, static_cast<__m256 const*>(out));
}

// Rows [0, M) of panels [p0, p1) in registers: 1 row x 3 panels, 2 x 2, 3 x 1, 4 x 1.
template <Kind KD, bool Perm, class Epi>
void quant_rows_avx2(float const* a, std::int64_t lda, std::int64_t M, PanelRef P, std::int64_t p0, std::int64_t p1, std::int64_t row0,
                     Epi& epi) {
    for (std::int64_t m = 0; m < M; m += 4) {
        int const r = static_cast<int>(std::min<std::int64_t>(4, M - m));
        float const* am = a + m * lda;
        for (std::int64_t p = p0; p < p1;) {
            std::int64_t const left = p1 - p;
            if (r == 1 && left >= 3) {
                quant_tile_avx2<KD, 1, 3, Perm>(am, lda, P, p, row0 + m, epi);
                p += 3;
            } else if (r <= 2 && left >= 2) {
                if (r == 1)
                    quant_tile_avx2<KD, 1, 2, Perm>(am, lda, P, p, row0 + m, epi);
                else
                    quant_tile_avx2<KD, 2, 2, Perm>(am, lda, P, p, row0 + m, epi);
                p += 2;
            } else {
                switch (r) {
                    case 1: quant_tile_avx2<KD, 1, 1, Perm>(am, lda, P, p, row0 + m, epi); break;
                    case 2: quant_tile_avx2<KD, 2, 1, Perm>(am, lda, P, p, row0 + m, epi); break;
                    case 3: quant_tile_avx2<KD, 3, 1, Perm>(am, lda, P, p, row0 + m, epi); break;
                    default: quant_tile_avx2<KD, 4, 1, Perm>(am, lda, P, p, row0 + m, epi); break;
                }
                p += 1;
            }
        }
    }
}

// Steps [k0, k0 + kb) of panel p decoded into wide[kb][16] (fp32, column order).
template <Kind KD>
void decode_block_avx2(PanelRef P, std::int64_t p, std::int64_t k0, std::int64_t kb, float* wide) {
    QuantLayout const& L = *P.L;
    for (auto const& run : L.runs) {
        std::int64_t const b = std::max(run.k0, k0), e = std::min(run.k1, k0 + kb);
        float const* s = L.tables ? P.scales(p, run.table) : nullptr;
        float const* z = has_zero_points(KD) ? P.zeros(p, run.table) : nullptr;
        for (std::int64_t k = b; k < e; ++k) {
            __m256 lo, hi;
            decode_avx2<KD>(P.panel(p) + k * L.step_bytes, s, z, lo, hi);
            _mm256_store_ps(wide + (k - k0) * kPanelCols, lo);
            _mm256_store_ps(wide + (k - k0) * kPanelCols + 8, hi);
        }
    }
}

// The full 6-row tiles of rows [0, full) over panel p, from decoded blocks.
template <Kind KD, class Epi>
void quant_blocks_avx2(MatrixView<float const> A, std::int64_t full, PanelRef P, std::int64_t p, Epi& epi) {
    auto const decode = [&](std::int64_t k0, std::int64_t kb, float* wide) { decode_block_avx2<KD>(P, p, k0, kb, wide); };
    detail::widened_tiles_avx2<kQBlock, kQRows>(A, P.L->K, full, p, decode, epi);
}
#endif

#if SMOE_QUANT_AVX512 && SMOE_PACKED_AVX512
template <Kind KD, int MR, int NP, bool Perm>
[[gnu::noinline]] void quant_loop_avx512(float const* a, std::int64_t lda, PanelRef P, std::int64_t p0, __m512* out) {
    static_assert(MR * NP + 3 * NP + 1 <= 32, "the tile must fit the 32 zmm registers");
    QuantLayout const& L = *P.L;
    __m512 acc[MR][NP];
#pragma GCC unroll 4
    for (int i = 0; i < MR; ++i)
#pragma GCC unroll 4
        for (int j = 0; j < NP; ++j) acc[i][j] = _mm512_setzero_ps();
    std::int32_t const* perm = L.perm.data();
    for (auto const& run : L.runs) {
        __m512 s[NP], z[NP];
#pragma GCC unroll 4
        for (int j = 0; j < NP; ++j) {
            s[j] = L.tables ? _mm512_loadu_ps(P.scales(p0 + j, run.table)) : _mm512_setzero_ps();
            z[j] = has_zero_points(KD) ? _mm512_loadu_ps(P.zeros(p0 + j, run.table)) : _mm512_setzero_ps();
        }
        for (std::int64_t k = run.k0; k < run.k1; ++k) {
            std::int64_t const col = Perm ? perm[k] : k;
            __m512 w[NP];
#pragma GCC unroll 4
            for (int j = 0; j < NP; ++j) {
                std::uint8_t const* step = P.panel(p0 + j) + k * L.step_bytes;
                _mm_prefetch(reinterpret_cast<char const*>(step) + kPrefetch512Bytes, _MM_HINT_T0);
                w[j] = decode_avx512<KD>(step, s[j], z[j]);
            }
#pragma GCC unroll 4
            for (int i = 0; i < MR; ++i) {
                __m512 const av = _mm512_set1_ps(a[i * lda + col]);
#pragma GCC unroll 4
                for (int j = 0; j < NP; ++j) acc[i][j] = _mm512_fmadd_ps(av, w[j], acc[i][j]);
            }
        }
    }
#pragma GCC unroll 4
    for (int i = 0; i < MR; ++i)
#pragma GCC unroll 4
        for (int j = 0; j < NP; ++j) out[i * NP + j] = acc[i][j];
}

template <Kind KD, int MR, int NP, bool Perm, class Epi>
SMOE_ALWAYS_INLINE void quant_tile_avx512(float const* a, std::int64_t lda, PanelRef P, std::int64_t p0, std::int64_t row0, Epi& epi) {
    __m512 out[MR * NP];
    quant_loop_avx512<KD, MR, NP, Perm>(a, lda, P, p0, out);
    store_tile(epi, row0, p0, MR, NP, static_cast<__m512 const*>(out));
}

template <Kind KD, int MR, int NPMax, bool Perm, class Epi>
void quant_tile_np_avx512(int np, float const* a, std::int64_t lda, PanelRef P, std::int64_t p0, std::int64_t row0, Epi& epi) {
    if constexpr (NPMax > 1)
        if (np < NPMax) return quant_tile_np_avx512<KD, MR, NPMax - 1, Perm>(np, a, lda, P, p0, row0, epi);
    quant_tile_avx512<KD, MR, NPMax, Perm>(a, lda, P, p0, row0, epi);
}

// Rows [0, M) of panels [p0, p1) in registers: up to 3 rows x 4 panels, 4 rows x 3 panels.
template <Kind KD, bool Perm, class Epi>
void quant_rows_avx512(float const* a, std::int64_t lda, std::int64_t M, PanelRef P, std::int64_t p0, std::int64_t p1, std::int64_t row0,
                       Epi& epi) {
    for (std::int64_t m = 0; m < M; m += 4) {
        int const r = static_cast<int>(std::min<std::int64_t>(4, M - m));
        int const step = r == 4 ? 3 : 4;
        float const* am = a + m * lda;
        for (std::int64_t p = p0; p < p1; p += step) {
            int const np = static_cast<int>(std::min<std::int64_t>(step, p1 - p));
            switch (r) {
                case 1: quant_tile_np_avx512<KD, 1, 4, Perm>(np, am, lda, P, p, row0 + m, epi); break;
                case 2: quant_tile_np_avx512<KD, 2, 4, Perm>(np, am, lda, P, p, row0 + m, epi); break;
                case 3: quant_tile_np_avx512<KD, 3, 4, Perm>(np, am, lda, P, p, row0 + m, epi); break;
                default: quant_tile_np_avx512<KD, 4, 3, Perm>(np, am, lda, P, p, row0 + m, epi); break;
            }
        }
    }
}

// The full 8-row tiles of rows [0, full) over panels [p, p + np), np <= 3, from decoded blocks.
template <Kind KD, class Epi>
void quant_blocks_avx512(MatrixView<float const> A, std::int64_t full, PanelRef P, std::int64_t p, int np, Epi& epi) {
    constexpr int MR = kPacked512Rows, NP = kPacked512Panels;
    QuantLayout const& L = *P.L;
    alignas(64) float wide[NP][kQBlock * kPanelCols];
    __m512 acc[kQRows / MR][MR * NP];
    for (std::int64_t m0 = 0; m0 < full; m0 += kQRows) {
        std::int64_t const tiles = std::min(kQRows, full - m0) / MR;
        for (std::int64_t k0 = 0; k0 < L.K; k0 += kQBlock) {
            std::int64_t const kb = std::min(kQBlock, L.K - k0);
            for (int j = 0; j < np; ++j)
                for (auto const& run : L.runs) {
                    std::int64_t const b = std::max(run.k0, k0), e = std::min(run.k1, k0 + kb);
                    if (b >= e) continue;
                    __m512 const s = L.tables ? _mm512_loadu_ps(P.scales(p + j, run.table)) : _mm512_setzero_ps();
                    __m512 const z = has_zero_points(KD) ? _mm512_loadu_ps(P.zeros(p + j, run.table)) : _mm512_setzero_ps();
                    for (std::int64_t k = b; k < e; ++k)
                        _mm512_store_ps(wide[j] + (k - k0) * kPanelCols, decode_avx512<KD>(P.panel(p + j) + k * L.step_bytes, s, z));
                }
            std::int64_t const ws = kQBlock * kPanelCols;
            for (std::int64_t t = 0; t < tiles; ++t) {
                float const* a = A.row(m0 + t * MR) + k0;
                auto run_tile = [&]<int N>() {
                    if (k0 == 0)
                        detail::packed_loop_avx512<float, MR, N, false>(a, A.ld, wide[0], ws, kb, acc[t]);
                    else
                        detail::packed_loop_avx512<float, MR, N, true>(a, A.ld, wide[0], ws, kb, acc[t]);
                };
                if (np == 3)
                    run_tile.template operator()<3>();
                else if (np == 2)
                    run_tile.template operator()<2>();
                else
                    run_tile.template operator()<1>();
            }
        }
        for (std::int64_t t = 0; t < tiles; ++t) store_tile(epi, m0 + t * MR, p, MR, np, static_cast<__m512 const*>(acc[t]));
    }
}
#endif

template <class Arch, Kind KD, class Epi>
void gemm_quant_kind(MatrixView<float const> A, PanelRef P, std::int64_t p0, std::int64_t p1, Epi& epi) {
    std::int64_t const M = A.rows;
    // Act order is GPTQ's, int4 only (quant_layout): the other kinds never instantiate the Perm tiles.
    constexpr bool kMayPerm = KD == Kind::int4;
    [[maybe_unused]] bool const perm = kMayPerm && P.L->has_perm();  // unused where only the scalar path exists
    if constexpr (kPackedAvx512<Arch>) {
#if SMOE_QUANT_AVX512 && SMOE_PACKED_AVX512
        std::int64_t full = 0;
        if (!perm && M >= kQMinRows) {
            full = M - M % kPacked512Rows;
            for (std::int64_t p = p0; p < p1; p += kPacked512Panels)
                quant_blocks_avx512<KD>(A, full, P, p, static_cast<int>(std::min<std::int64_t>(kPacked512Panels, p1 - p)), epi);
        }
        if constexpr (kMayPerm)
            if (perm) return quant_rows_avx512<KD, true>(A.row(full), A.ld, M - full, P, p0, p1, full, epi);
        quant_rows_avx512<KD, false>(A.row(full), A.ld, M - full, P, p0, p1, full, epi);
        return;
#endif
    }
    if constexpr (kPackedAvx2<Arch> || kPackedAvx512<Arch>) {
#if SMOE_PACKED_AVX2
        std::int64_t full = 0;
        if (!perm && M >= kQMinRows) {
            full = M - M % kPackedMR;
            for (std::int64_t p = p0; p < p1; ++p) quant_blocks_avx2<KD>(A, full, P, p, epi);
        }
        if constexpr (kMayPerm)
            if (perm) return quant_rows_avx2<KD, true>(A.row(full), A.ld, M - full, P, p0, p1, full, epi);
        quant_rows_avx2<KD, false>(A.row(full), A.ld, M - full, P, p0, p1, full, epi);
        return;
#endif
    }
    for (std::int64_t p = p0; p < p1; ++p) quant_rows_scalar<KD>(A.data, A.ld, static_cast<int>(M), P, p, 0, epi);
}

}  // namespace qdetail

// Rows [0, A.rows) x panels [p0, p1) of a matrix in layout L whose panel 0 is at `panels`; A's first
// L.K columns are the input (A may be wider: padded h rows). One branch on the format per call.
template <class Arch, class Epi>
void gemm_quant(Arch, MatrixView<float const> A, QuantLayout const& L, std::uint8_t const* panels, std::int64_t p0, std::int64_t p1,
                Epi& epi) {
    if (A.rows == 0 || p0 >= p1) return;
    qdetail::PanelRef const P{panels, &L};
    switch (L.kind) {
        case quant::Kind::f32: return qdetail::gemm_quant_kind<Arch, quant::Kind::f32>(A, P, p0, p1, epi);
        case quant::Kind::bf16: return qdetail::gemm_quant_kind<Arch, quant::Kind::bf16>(A, P, p0, p1, epi);
        case quant::Kind::int8_channel: return qdetail::gemm_quant_kind<Arch, quant::Kind::int8_channel>(A, P, p0, p1, epi);
        case quant::Kind::int4: return qdetail::gemm_quant_kind<Arch, quant::Kind::int4>(A, P, p0, p1, epi);
        case quant::Kind::ternary: return qdetail::gemm_quant_kind<Arch, quant::Kind::ternary>(A, P, p0, p1, epi);
        case quant::Kind::fp8: return qdetail::gemm_quant_kind<Arch, quant::Kind::fp8>(A, P, p0, p1, epi);
        default: return qdetail::gemm_quant_kind<Arch, quant::Kind::mxfp4>(A, P, p0, p1, epi);
    }
}

}  // namespace smoe::inline v0::kernels::cpu
