#pragma once
// The bf16 dot path of formats.md §6.2 for FP8 (e4m3) and MXFP4 experts (SwiGLUConfig::bf16_dot on
// or emulated, expert::QuantSwiGLU): e4m3 and E2M1 values are exact, normal bf16 numbers, so only the
// activations are rounded (to bf16, nearest even). The model, per output o:
//   for each factor block b (FP8: block_cols columns; MXFP4: 32), in order:
//     part = +0; part = dpbf16(part, x pair, w pair) over the block's k pairs in order (vdpbf16ps's
//     per-lane arithmetic, emulated_dpbf16); acc = fma(part, factor[o, b], acc)
// The factors multiply the fp32 partial sum of their block, never a bf16 weight. The native kernel
// (AVX512-BF16, runtime-detected) decodes the codes to bf16 with table look-ups (vpermt2w; FP8 by
// vpermt2b where the CPU has AVX512-VBMI), in registers for few rows and into an L1 buffer shared by up
// to 64 rows for more, and matches the emulation bit for bit.
//
// Panels (16 output units, quant_panel.hpp's factor tables and runs) hold the k pairs in groups of two:
// FP8 in 64 bytes, the code of k = 2j + h for slot s (word w = 2·slot + h of pair j) at byte
// 16·(w / 8) + 8·(j % 2) + w % 8 of group j / 2 (bf16q_fp8_byte), so that byte unpacks, which work per
// 128-bit lane, give each pair's 32 words in order; MXFP4 in 32 bytes, byte w = code of pair 2q in the
// low nibble, of pair 2q + 1 in the high one.

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <span>

#include "smoe/core/bf16.hpp"
#include "smoe/core/view.hpp"
#include "smoe/kernels/cpu/bf16_dot.hpp"
#include "smoe/kernels/cpu/tile_store.hpp"
#include "smoe/kernels/cpu/pack.hpp"
#include "smoe/kernels/cpu/prefetch_spread.hpp"
#include "smoe/kernels/cpu/quant_panel.hpp"
#include "smoe/macros.hpp"
#include "smoe/quant/element.hpp"

namespace smoe::inline v0::kernels::cpu {

// bf16 bits of an e4m3 byte's magnitude (its low 7 bits) and of an E2M1 code (sign included).
inline std::uint16_t e4m3_bf16_bits(std::uint8_t b) { return to_bf16(quant::e4m3_to_float(b)).bits; }
inline std::uint16_t e2m1_bf16_bits(std::uint8_t c) { return to_bf16(quant::e2m1_to_float(c)).bits; }

// Whether a format can take this path: FP8 with even factor blocks along k, or MXFP4.
inline bool bf16_dot_format(quant::Format const& f, std::int64_t K) {
    if (f.kind == quant::Kind::mxfp4) return true;
    return f.kind == quant::Kind::fp8 && (f.groups(K) == 1 || f.group_cols(K) % 2 == 0);
}

// The layout: quant_layout's factor tables and runs, with the codes in k-pair order.
inline QuantLayout bf16q_layout(quant::Format const& f, std::int64_t K) {
    QuantLayout L = quant_layout(f, K);
    std::int64_t const pairs = (K + 1) / 2, code = f.kind == quant::Kind::fp8 ? pairs * 32 : (pairs + 1) / 2 * 32;
    std::int64_t const tables = L.zero_off - L.scale_off;
    L.step_bytes = 0;  // not k-step addressed
    L.scale_off = (code + 63) / 64 * 64;
    L.zero_off = L.scale_off + tables;
    L.pstride = L.zero_off;
    return L;
}

// The byte of FP8 word w (2·slot + h) of pair j in a panel.
constexpr std::int64_t bf16q_fp8_byte(std::int64_t j, int w) { return j / 2 * 64 + 16 * (w / 8) + 8 * (j % 2) + w % 8; }

inline void pack_bf16q_panel(std::uint8_t* dst, QuantLayout const& L, QuantSlot const (&slot)[kPanelCols]) {
    std::memset(dst, 0, static_cast<std::size_t>(L.pstride));
    bool const fp8 = L.kind == quant::Kind::fp8;
    for (int s = 0; s < kPanelCols; ++s) {
        quant::Matrix const* m = slot[s].m;
        if (!m) continue;
        std::int64_t const o = slot[s].row;
        for (std::int64_t k = 0; k < L.K; ++k) {
            std::uint8_t const c = m->codes[static_cast<std::size_t>(o * L.K + k)];
            std::int64_t const j = k / 2, h = k % 2;
            if (fp8)
                dst[bf16q_fp8_byte(j, static_cast<int>(2 * s + h))] = c;
            else
                dst[(j / 2) * 32 + 2 * s + h] |= static_cast<std::uint8_t>(c << ((j % 2) * 4));
        }
        for (auto const& run : L.runs) {
            float const sc = m->scale_of(o, run.k0);
            std::memcpy(dst + L.scale_off + (run.table * kPanelCols + s) * 4, &sc, 4);
        }
    }
}

// Fewer than kBqDecodeRows rows (decode) take register tiles: each tile decodes the codes in registers,
// which costs little beside the weight stream. More rows take bf16q_chunk below. Activations are
// rounded to bf16 once per row tile or chunk into the scratch's activation buffer (rounding them
// again for every panel group was a fifth of the time). A chunk takes as many rows as hold all of K in
// its buffer, up to kBqRows: each decode then serves more dot products (FP8, olmoe T = 512, one thread:
// 24 -> 64 rows, 340 -> 308 ms of CPU time, MXFP4 343 -> 322).
// The buffers are the caller's scratch of bf16q_scratch_bytes(K) for matrices of up to K input columns,
// never the stack: MoELayer gives each of its threads one from its workspace (QuantSwiGLU::phase_scratch_bytes,
// sized to its widest matrix). The activation buffer holds kBqRows rows of all of K, up to kBqMaxXBytes
// (K = 4096; the scratch in all: 88 KiB for K = 64, 584 KiB for 2048, 1096 KiB from 4096 on): a wider
// matrix's chunk takes fewer rows, or walks k in spans. A caller without one (an empty span) runs on
// kBqStackXBytes of activations and ~40 KB in all on the stack, converting a span of k per panel group or
// falling back to the chunk's k spans: the same operations in the same order, so the same bits, slower
// from a few rows on.
// With the scratch, chunks of up to 128 rows (a down projection's 70 rows in one chunk rather than two that
// each decode every panel) and 128 k pairs decoded at a time (half the calls, and the loads and stores of
// their sums); the stack keeps 64 and 64 (~40 KB). olmoe MXFP4, M = 70, one thread: 69.8 -> 71.7 % of the
// vdpbf16ps peak; M = 100: 72.0 -> 75.9 %.
inline constexpr std::int64_t kBqDecodeRows = 8, kBqRows = 128, kBqSub = 128, kBqMaxXBytes = 1024 * 1024, kBqStackXBytes = 4 * 1024;
inline constexpr std::int64_t kBqStackRows = 64, kBqStackSub = 64, kPrefetchBqL1 = 1024;
inline constexpr std::size_t bf16q_w_bytes(std::int64_t sub) { return static_cast<std::size_t>(sub) * 3 * 32 * 2; }
inline constexpr std::size_t bf16q_sum_bytes(std::int64_t rows) { return static_cast<std::size_t>(rows) * 3 * kPanelCols * 4; }
// The activation buffer for matrices of up to K columns: kBqRows rows of K rounded to pairs, in bf16.
inline constexpr std::size_t bf16q_x_bytes(std::int64_t K) {
    std::int64_t const want = kBqRows * (std::max<std::int64_t>(K, 1) + 1) / 2 * 2 * 2;
    return static_cast<std::size_t>((std::min(want, kBqMaxXBytes) + 63) / 64 * 64);
}
inline constexpr std::size_t bf16q_scratch_bytes(std::int64_t K) {
    return bf16q_x_bytes(K) + bf16q_w_bytes(kBqSub) + 2 * bf16q_sum_bytes(kBqRows);
}

// Whether this CPU has AVX512-VBMI (vpermt2b: the native kernel's FP8 byte tables), asked once.
inline bool cpu_has_avx512_vbmi() {
#if SMOE_BF16_DOT_NATIVE
    static bool const has = [] {
        __builtin_cpu_init();
        return __builtin_cpu_supports("avx512vbmi") != 0;
    }();
    return has;
#else
    return false;
#endif
}

namespace detail {

// The bf16 weight pair of slot s at pair j.
inline void bf16q_weights(QuantLayout const& L, std::uint8_t const* panel, std::int64_t j, int s, bf16& lo, bf16& hi) {
    if (L.kind == quant::Kind::fp8) {
        lo.bits = e4m3_bf16_bits(panel[bf16q_fp8_byte(j, 2 * s)]);
        hi.bits = e4m3_bf16_bits(panel[bf16q_fp8_byte(j, 2 * s + 1)]);
    } else {
        int const sh = static_cast<int>(j % 2) * 4;
        lo.bits = e2m1_bf16_bits((panel[(j / 2) * 32 + 2 * s] >> sh) & 15);
        hi.bits = e2m1_bf16_bits((panel[(j / 2) * 32 + 2 * s + 1] >> sh) & 15);
    }
}

// The emulation: the model above, one row and one panel at a time.
template <class Epi>
void bf16q_rows_emulated(MatrixView<float const> A, QuantLayout const& L, std::uint8_t const* panel, std::int64_t p, Epi& epi) {
    for (std::int64_t i = 0; i < A.rows; ++i) {
        float const* x = A.row(i);
        float acc[kPanelCols] = {};
        for (auto const& run : L.runs) {
            float part[kPanelCols] = {};
            for (std::int64_t k = run.k0; k < run.k1; k += 2) {
                bf16 const xl = to_bf16(x[k]), xh = k + 1 < L.K ? to_bf16(x[k + 1]) : bf16{};
                for (int s = 0; s < kPanelCols; ++s) {
                    bf16 wl, wh;
                    bf16q_weights(L, panel, k / 2, s, wl, wh);
                    part[s] = emulated_dpbf16(part[s], xl, xh, wl, wh);
                }
            }
            for (int s = 0; s < kPanelCols; ++s) {
                float sc;
                std::memcpy(&sc, panel + L.scale_off + (run.table * kPanelCols + s) * 4, 4);
                acc[s] = std::fma(part[s], sc, acc[s]);
            }
        }
        epi.store(i, p, static_cast<float const*>(acc));
    }
}

#if SMOE_BF16_DOT_NATIVE
// The native kernel's decoders: MXFP4's nibbles, or FP8 by byte tables (vpermt2b, AVX512-VBMI) or by word
// tables (vpermt2w, any AVX512-BF16 CPU: Cooper Lake has no VBMI); the same bf16 either way.
enum class BqDec { mx, fp8_words, fp8_bytes };

// The look-up tables: e4m3 magnitudes 0..127 as bf16 bits (four vectors of 32; 0x7F, NaN, never
// occurs), the same as their high and low bytes (two vectors of 64 each), E2M1 codes 0..15 (sign
// included), twice.
struct BF16QTables {
    alignas(64) std::uint16_t e4m3[128];
    alignas(64) std::uint8_t e4m3_hi[128];
    alignas(64) std::uint8_t e4m3_lo[128];
    alignas(64) std::uint16_t e2m1[32];
};
inline BF16QTables const& bf16q_tables() {
    static BF16QTables const t = [] {
        BF16QTables r{};
        for (int c = 0; c < 128; ++c) {
            r.e4m3[c] = e4m3_bf16_bits(static_cast<std::uint8_t>(c == 0x7F ? 0 : c));
            r.e4m3_hi[c] = static_cast<std::uint8_t>(r.e4m3[c] >> 8);
            r.e4m3_lo[c] = static_cast<std::uint8_t>(r.e4m3[c] & 0xFF);
        }
        for (int c = 0; c < 32; ++c) r.e2m1[c] = e2m1_bf16_bits(static_cast<std::uint8_t>(c & 15));
        return r;
    }();
    return t;
}

// The tables of one decoder in registers: FP8 words a..d, FP8 bytes a, b (high) and c, d (low), MXFP4 a.
struct BF16QRegs {
    __m512i a, b, c, d;
};
template <BqDec D>
SMOE_TARGET_AVX512_BF16 SMOE_ALWAYS_INLINE BF16QRegs bf16q_regs() {
    BF16QTables const& T = bf16q_tables();
    if constexpr (D == BqDec::fp8_words)
        return {_mm512_load_si512(T.e4m3), _mm512_load_si512(T.e4m3 + 32), _mm512_load_si512(T.e4m3 + 64), _mm512_load_si512(T.e4m3 + 96)};
    else if constexpr (D == BqDec::fp8_bytes)
        return {_mm512_load_si512(T.e4m3_hi), _mm512_load_si512(T.e4m3_hi + 64), _mm512_load_si512(T.e4m3_lo), _mm512_load_si512(T.e4m3_lo + 64)};
    else
        return {_mm512_load_si512(T.e2m1), _mm512_setzero_si512(), _mm512_setzero_si512(), _mm512_setzero_si512()};
}

// 32 e4m3 codes, one per word, to bf16.
SMOE_TARGET_AVX512_BF16 SMOE_ALWAYS_INLINE __m512i bf16q_e4m3_words(__m512i v, BF16QRegs const& t) {
    __m512i const idx = _mm512_and_si512(v, _mm512_set1_epi16(0x7F));
    __m512i const lo = _mm512_permutex2var_epi16(t.a, idx, t.b), hi = _mm512_permutex2var_epi16(t.c, idx, t.d);
    __mmask32 const upper = _mm512_test_epi16_mask(v, _mm512_set1_epi16(0x40));
    __m512i const sign = _mm512_and_si512(_mm512_slli_epi16(v, 8), _mm512_set1_epi16(static_cast<short>(0x8000)));
    return _mm512_or_si512(_mm512_mask_blend_epi16(upper, lo, hi), sign);
}

// vpermt2b: byte i = (idx_i & 64 ? t1 : t0)[idx_i & 63]; bit 7 is ignored. Written in assembly since the
// intrinsic would need the avx512vbmi target on every function it is inlined into, which the word-table
// instances of the same templates must not have; only called where cpu_has_avx512_vbmi().
SMOE_TARGET_AVX512_BF16 SMOE_ALWAYS_INLINE __m512i bf16q_vpermt2b(__m512i t0, __m512i idx, __m512i t1) {
    __asm__("vpermt2b %2, %1, %0" : "+v"(t0) : "v"(idx), "v"(t1));
    return t0;
}

// Both pairs of the group at p decoded to 32 bf16 each (lanes 2·slot + h): lo = pair 2q, hi = pair 2q + 1.
// FP8 by bytes: the high bytes are the magnitude's table entry or'ed with the code's sign bit, the low
// bytes another table's; (low, high) byte unpacks interleave them into words, lane by lane, hence the
// panels' byte order. 5 operations for 64 weights against 2 x 9 by words. Measured as the prefetch above:
// FP8 olmoe T = 1 19.7 -> 23.3 GB/s, T = 8 16.3 -> 22.4, qwen2moe 20.3 -> 24.9, 19.7 -> 23.7.
template <BqDec D>
SMOE_TARGET_AVX512_BF16 SMOE_ALWAYS_INLINE void bf16q_decode2(std::uint8_t const* p, BF16QRegs const& t, __m512i& lo, __m512i& hi) {
    if constexpr (D == BqDec::mx) {
        // vpermw reads index bits 0-4 and the table holds the 16 codes twice, so neither nibble needs a
        // mask: bit 4 of the low one's index is the high nibble's, and the codes are at most 255. One
        // operation fewer per 64 weights (vpermt2w after a mask before): measured (BM_layer cold, threads:1,
        // faster of 2 alternated runs, load 2.4-3.9, DRAM 33-35 GB/s) olmoe T = 1 26.0 -> 28.0 GB/s, T = 8
        // 20.1 -> 21.8, qwen2moe 25.9 -> 28.6, 25.1 -> 27.3; the same weights hot ran 27 GB/s before:
        // MXFP4 decode tiles are bound by their operations, not by the DRAM stream.
        __m512i const v = _mm512_cvtepu8_epi16(_mm256_loadu_si256(reinterpret_cast<__m256i const*>(p)));
        lo = _mm512_permutexvar_epi16(v, t.a);
        hi = _mm512_permutexvar_epi16(_mm512_srli_epi16(v, 4), t.a);
    } else if constexpr (D == BqDec::fp8_words) {
        __m512i const v = _mm512_loadu_si512(p);
        lo = bf16q_e4m3_words(_mm512_unpacklo_epi8(v, _mm512_setzero_si512()), t);
        hi = bf16q_e4m3_words(_mm512_unpackhi_epi8(v, _mm512_setzero_si512()), t);
    } else {
        __m512i const v = _mm512_loadu_si512(p);
        __m512i const h = _mm512_ternarylogic_epi32(bf16q_vpermt2b(t.a, v, t.b), v, _mm512_set1_epi8(static_cast<char>(0x80)), 0xF8);
        __m512i const l = bf16q_vpermt2b(t.c, v, t.d);
        lo = _mm512_unpacklo_epi8(l, h);
        hi = _mm512_unpackhi_epi8(l, h);
    }
}
template <BqDec D>
inline constexpr std::int64_t kBqGroupBytes = D == BqDec::mx ? 32 : 64;

// One group of NP panels (g: panel 0's) against MR rows: pair 2q if A (activations xa, row i at
// xa + i·ldx), pair 2q + 1 if B (xb_), in that order per row. A run or K may begin or end inside a group:
// the pair outside takes no activations (beyond K they are another row's or none, and 0 · Inf is NaN).
template <BqDec D, int MR, int NP, bool A, bool B>
SMOE_TARGET_AVX512_BF16 SMOE_ALWAYS_INLINE void bf16q_group(__m512 (&part)[MR][NP], std::uint16_t const* xa, std::uint16_t const* xb_,
                                                            std::int64_t ldx, std::uint8_t const* g, std::int64_t pstride, BF16QRegs const& t,
                                                            bool l1) {
    __m512i w[NP], w2[NP];
#pragma GCC unroll 3
    for (int j = 0; j < NP; ++j) {
        std::uint8_t const* p = g + j * pstride;
        if (l1) _mm_prefetch(reinterpret_cast<char const*>(p) + kPrefetchBqL1, _MM_HINT_T0);
        bf16q_decode2<D>(p, t, w[j], w2[j]);
    }
#pragma GCC unroll 6
    for (int i = 0; i < MR; ++i) {
        std::uint32_t x;
        if constexpr (A) {
            std::memcpy(&x, xa + i * ldx, sizeof x);
            __m512bh const xv = (__m512bh)_mm512_set1_epi32(static_cast<int>(x));
#pragma GCC unroll 3
            for (int j = 0; j < NP; ++j) part[i][j] = _mm512_dpbf16_ps(part[i][j], xv, (__m512bh)w[j]);
        }
        if constexpr (B) {
            std::memcpy(&x, xb_ + i * ldx, sizeof x);
            __m512bh const xv = (__m512bh)_mm512_set1_epi32(static_cast<int>(x));
#pragma GCC unroll 3
            for (int j = 0; j < NP; ++j) part[i][j] = _mm512_dpbf16_ps(part[i][j], xv, (__m512bh)w2[j]);
        }
    }
}

// MR rows x NP panels over the factor blocks [r0, r1) of L.runs; the rows' bf16 activations are xb
// (row i at xb + i·ldx, k from kbase, an odd K padded with a zero). The block partial sums stay in
// registers, the running sums in out (MR · NP · 16 floats, accumulated): partial and running sums
// together (36 at 6 x 3) would not fit the 32 registers beside the look-up tables.
// While it runs, the pf_bytes at pf (the next tile's panels, or nullptr) are prefetched into L2, a slice
// per group, as int8_dot.hpp's dot_tile_vnni does, and each group's loads prefetch kPrefetchBqL1 bytes
// ahead in their panel into L1. With the first tile's panels prefetched while the activations are
// converted, measured (BM_layer cold, threads:1, GB/s of the faster of 2 alternated runs, load 2.2-2.6,
// DRAM 34-35 GB/s, Zen 4 VM; only the L1 prefetch before): MXFP4 olmoe T = 1 17.0 -> 26.3, T = 8 15.1 ->
// 20.6, qwen2moe 17.5 -> 26.7, 17.1 -> 25.7; FP8 (word tables) olmoe 17.3 -> 19.7, 14.5 -> 16.3, qwen2moe
// 18.0 -> 20.3, 17.4 -> 19.7.
template <BqDec D, int MR, int NP>
[[gnu::noinline]] SMOE_TARGET_AVX512_BF16 void bf16q_tile(std::uint16_t const* xb, std::int64_t ldx, std::int64_t kbase,
                                                         std::uint8_t const* b0, QuantLayout const& L, std::size_t r0, std::size_t r1,
                                                         float* out, std::uint8_t const* pf, std::int64_t pf_bytes) {
    BF16QRegs const t = bf16q_regs<D>();
    constexpr std::int64_t gb = kBqGroupBytes<D>;
    std::int64_t const steps = r0 < r1 ? (L.runs[r1 - 1].k1 - L.runs[r0].k0 + 3) / 4 : 1;
    PrefetchSpread next(pf, pf_bytes, steps);
    std::int64_t const ps = L.pstride;
    for (std::size_t r = r0; r < r1; ++r) {
        QuantRun const& run = L.runs[r];
        __m512 part[MR][NP];
#pragma GCC unroll 6
        for (int i = 0; i < MR; ++i)
#pragma GCC unroll 3
            for (int j = 0; j < NP; ++j) part[i][j] = _mm512_setzero_ps();
        // Pairs [j, je) by groups; FP8 blocks of 2 (mod 4) columns begin or end inside one. A prefetch per
        // 64-byte line.
        std::int64_t j = run.k0 / 2, je = (run.k1 + 1) / 2;
        auto const x = [&](std::int64_t jj) { return xb + (2 * jj - kbase); };  // pair jj's activations
        if (j % 2) {
            bf16q_group<D, MR, NP, false, true>(part, nullptr, x(j), ldx, b0 + j / 2 * gb, ps, t, true);
            ++j;
        }
        for (; j + 1 < je; j += 2) {
            bf16q_group<D, MR, NP, true, true>(part, x(j), x(j + 1), ldx, b0 + j / 2 * gb, ps, t, gb == 64 || j % 4 == 0);
            next.advance();
        }
        if (j < je) bf16q_group<D, MR, NP, true, false>(part, x(j), nullptr, ldx, b0 + j / 2 * gb, ps, t, true);
        for (int jp = 0; jp < NP; ++jp) {
            __m512 const s = _mm512_loadu_ps(b0 + jp * ps + L.scale_off + run.table * kPanelCols * 4);
            for (int i = 0; i < MR; ++i) {
                float* const o = out + (i * NP + jp) * kPanelCols;
                _mm512_storeu_ps(o, _mm512_fmadd_ps(part[i][jp], s, _mm512_loadu_ps(o)));
            }
        }
    }
}

// Rows [m, m + MR), panels [p0, p1), three at a time and the rest one by one; the activations in xb
// (xcap bf16, 64-byte aligned). Precondition: every factor block of L fits a row's share of xb
// (bf16q_fits; bf16q_native sends the others to bf16q_chunk).
inline bool bf16q_fits(QuantLayout const& L, std::int64_t xcap, int MR) {
    std::int64_t const cap = xcap / MR / 2 * 2;
    for (auto const& run : L.runs)
        if ((run.k1 - run.k0 + 1) / 2 * 2 > cap) return false;
    return true;
}
template <BqDec D, int MR, class Epi>
void bf16q_tile_rows(MatrixView<float const> A, std::int64_t m, QuantLayout const& L, std::uint8_t const* panels, std::int64_t p0,
                     std::int64_t p1, Epi& epi, std::uint16_t* xb, std::int64_t xcap) {
    alignas(64) float out[MR * 3 * kPanelCols];
    std::int64_t const cap = xcap / MR / 2 * 2;  // bf16 per row in xb
    std::size_t const runs = L.runs.size();
    // Rows' k in [k0, k1) into xb, row stride ldx (even, > k1 - k0 when that is odd).
    auto const convert = [&](std::int64_t k0, std::int64_t k1, std::int64_t ldx) {
        for (int i = 0; i < MR; ++i) Bf16DotNative::convert(A.row(m + i) + k0, k1 - k0, xb + i * ldx);
    };
    bool const whole = (L.K + 1) / 2 * 2 <= cap;
    auto const width = [&](std::int64_t p) { return p1 - p >= 3 ? 3 : 1; };
    if (whole) {
        // The first tile's panels have no tile before them to prefetch them: the conversion, which reads
        // no weights, does, a slice per 256 activations.
        std::int64_t const ldx = (L.K + 1) / 2 * 2, first = width(p0) * L.pstride;
        PrefetchSpread pf(panels + p0 * L.pstride, first, MR * ((L.K + 255) / 256));
        for (int i = 0; i < MR; ++i)
            for (std::int64_t k0 = 0; k0 < L.K; k0 += 256) {
                pf.advance();
                Bf16DotNative::convert(A.row(m + i) + k0, std::min<std::int64_t>(256, L.K - k0), xb + i * ldx + k0);
            }
    }
    for (std::int64_t p = p0; p < p1;) {
        int const np = width(p);
        std::fill(out, out + MR * np * kPanelCols, 0.0f);
        auto const tile = [&](std::int64_t ldx, std::int64_t kbase, std::size_t r0, std::size_t r1, std::uint8_t const* pf, std::int64_t pf_bytes) {
            if (np == 3)
                bf16q_tile<D, MR, 3>(xb, ldx, kbase, panels + p * L.pstride, L, r0, r1, out, pf, pf_bytes);
            else
                bf16q_tile<D, MR, 1>(xb, ldx, kbase, panels + p * L.pstride, L, r0, r1, out, pf, pf_bytes);
        };
        if (whole) {
            // The next panel group into L2 while this one runs.
            std::int64_t const q = p + np;
            tile((L.K + 1) / 2 * 2, 0, 0, runs, q < p1 ? panels + q * L.pstride : nullptr, q < p1 ? width(q) * L.pstride : 0);
        } else {
            for (std::size_t r0 = 0, r1; r0 < runs; r0 = r1) {  // one block always fits (bf16q_fits)
                std::int64_t const k0 = L.runs[r0].k0;
                for (r1 = r0 + 1; r1 < runs && (L.runs[r1].k1 - k0 + 1) / 2 * 2 <= cap; ++r1) {}
                std::int64_t const k1 = L.runs[r1 - 1].k1, ldx = (k1 - k0 + 1) / 2 * 2;
                convert(k0, k1, ldx);
                tile(ldx, k0, r0, r1, nullptr, 0);
            }
        }
        store_tile(epi, m, p, MR, np, static_cast<float const*>(out));
        p += np;
    }
}

// From kBqDecodeRows rows on, each panel's codes are decoded once per chunk of up to kBqRows rows,
// kBqSub k pairs at a time into a bf16 buffer (by the chunk's first 8-row tile as it runs), and the rows
// run over it as bf16_dot.hpp runs bf16 weights:
// decoding in registers for every 6-row tile cost as much as the dot products (FP8, 64 rows, one
// thread: 172 against 138 GFLOP/s). Partial sums of the open factor block (part) and running sums
// (acc) live in memory between sub-blocks: same operations, same order.

// The group of pair pj (pairs 2q, 2q + 1), those of its pairs in [j0, end), of NP panels (ps apart) decoded
// into w: pair j2 of panel j at w + ((j2 - j0) · NP + j) · 32. Returns the next group's first pair.
template <BqDec D, int NP>
SMOE_TARGET_AVX512_BF16 SMOE_ALWAYS_INLINE std::int64_t bf16q_decode_group(std::uint8_t const* b0, std::int64_t ps, std::int64_t pj,
                                                                           std::int64_t j0, std::int64_t end, std::uint16_t* w,
                                                                           BF16QRegs const& t) {
    constexpr std::int64_t gb = kBqGroupBytes<D>;
    std::int64_t const q = pj / 2 * 2;
    bool const a = q >= j0, b = q + 1 < end;
#pragma GCC unroll 3
    for (int j = 0; j < NP; ++j) {
        std::uint8_t const* p = b0 + j * ps + q / 2 * gb;
        if (gb == 64 || q % 4 == 0) _mm_prefetch(reinterpret_cast<char const*>(p) + kPrefetchBqL1, _MM_HINT_T0);
        __m512i lo, hi;
        bf16q_decode2<D>(p, t, lo, hi);
        if (a) _mm512_store_si512(w + ((q - j0) * NP + j) * 32, lo);
        if (b) _mm512_store_si512(w + ((q + 1 - j0) * NP + j) * 32, hi);
    }
    return q + 2;
}

// Pairs [j0, j0 + n) of NP panels decoded into w: pair j2 of panel j at w + ((j2 - j0) · NP + j) · 32.
template <BqDec D, int NP>
[[gnu::noinline]] SMOE_TARGET_AVX512_BF16 void bf16q_decode_sub(std::uint8_t const* b0, QuantLayout const& L, std::int64_t j0,
                                                               std::int64_t n, std::uint16_t* w) {
    BF16QRegs const t = bf16q_regs<D>();
    std::int64_t const ps = L.pstride;  // a local: the stores to w may alias L
    for (std::int64_t pj = j0; pj < j0 + n;) pj = bf16q_decode_group<D, NP>(b0, ps, pj, j0, j0 + n, w, t);
}

// MR rows x NP panels over the decoded pairs of k in [k, e) (w: pair (k - kw) / 2 onward, decoded from
// kw): part (MR · NP · 16 floats) accumulates the open factor block's dot products; at the end of each
// block (L.runs[r] onward) acc += part · factors and part restarts from zero. Row i's activation of k is
// x[i · ldx + k - kx]; row i of part and acc starts at i · NP · 16.
template <int MR, int NP, BqDec D = BqDec::mx, bool Dec = false>
[[gnu::noinline]] SMOE_TARGET_AVX512_BF16 void bf16q_dots(std::uint16_t const* x, std::int64_t ldx, std::int64_t kx, std::uint16_t* w, std::int64_t kw,
                                                         std::int64_t k, std::int64_t e, QuantLayout const& L, std::size_t r,
                                                         std::uint8_t const* b0, float* part, float* acc) {
    constexpr std::int64_t width = NP * kPanelCols;  // floats per row of part and acc: constant offsets, no address registers
    __m512 sum[MR][NP];
    // Dec (kw == k): the codes of pairs [k / 2, (e + 1) / 2) are decoded into w here, a group ahead of the
    // dots that read them, rather than by bf16q_decode_sub before the first row tile: that pass ran its code
    // loads (from DRAM) and shuffles with no dot products beside them (perf: 10-17 % of the layer at T =
    // 512); here they overlap the tile's vdpbf16ps. BM_layer hot, T = 512, one thread, min of 3 alternated
    // runs: qwen2moe (load 2.1-2.8) FP8 197.9 -> 183.2 ms, MXFP4 213.4 -> 202.7; deepseek-v2-lite (load
    // 0.2-1.0) FP8 285.0 -> 269.3, MXFP4 310.8 -> 299.9. Same decoded words, same dot products: same bits.
    // It made 427c4c6's L2 prefetch of the next sub-block's codes (in this loop, during the first tile)
    // redundant, which was dropped: qwen2moe with it FP8 185.8, MXFP4 203.0 ms; without 184.5, 204.5 (load
    // 1.2-1.3); before the fusion it paid (FP8 197.5 with, 209.2 without).
    [[maybe_unused]] BF16QRegs t{};
    // The next group's codes (panel 0) and place in w, the pairs left to decode, and how many pairs the
    // decoded ones are ahead of the dots. The loop below decodes a group as bf16q_decode_group does, on these
    // running pointers: calling it there (its addresses from the pair index, its checks for a group cut by
    // j0) cost qwen2moe T = 512, hot, one thread, 2 alternated runs, load 1.1-1.3: FP8 184.8-185.4 -> 187.4-192.0
    // ms, MXFP4 194.2-194.8 -> 202.1-204.6.
    [[maybe_unused]] std::uint8_t const* dc = nullptr;
    [[maybe_unused]] std::uint16_t* dw = nullptr;
    [[maybe_unused]] std::int64_t dleft = 0, ahead = 0;
    if constexpr (Dec) {
        t = bf16q_regs<D>();
        std::int64_t const j0 = kw / 2, dj = bf16q_decode_group<D, NP>(b0, L.pstride, j0, j0, (e + 1) / 2, w, t);
        dc = b0 + dj / 2 * kBqGroupBytes<D>;
        dw = w + (dj - j0) * NP * 32;
        dleft = (e + 1) / 2 - dj;
        ahead = dj - j0;
    }
    // Few enough sums (MR · NP <= 12: 12 partial + 12 running + 3 weights + 1 broadcast at 4 x 3) keep the
    // running sums in registers for the call too: a block's end is then MR · NP register FMAs, and acc is
    // loaded and stored once per call rather than once per block (MXFP4: every 16 pairs). Same FMAs in the
    // same order (the first block's from zero): same bits.
    constexpr bool racc = MR * NP <= 12;
    [[maybe_unused]] __m512 ar[racc ? MR : 1][racc ? NP : 1];
    if constexpr (racc)
        if (r > 0)
#pragma GCC unroll 8
            for (int i = 0; i < MR; ++i)
#pragma GCC unroll 3
                for (int j = 0; j < NP; ++j) ar[i][j] = _mm512_loadu_ps(acc + i * width + j * kPanelCols);
    std::size_t const r_in = r;
    bool const open = k != L.runs[r].k0;
    // part is read only where a call begins inside a block and written only where one ends inside it; acc is
    // read only after the first block wrote it: neither needs zeros beforehand. bf16q_chunk zeroed both for
    // every panel group: without it, one thread, d = 2048, f = 1024, M = 40 / 64 / 80, both variants in one
    // process: MXFP4 72.8-73.7 -> 74.7-75.9 % of the vdpbf16ps peak (cold weights), FP8 79.8 -> 81.9 %.
#pragma GCC unroll 8
    for (int i = 0; i < MR; ++i)
#pragma GCC unroll 3
        for (int j = 0; j < NP; ++j) sum[i][j] = open ? _mm512_loadu_ps(part + i * width + j * kPanelCols) : _mm512_setzero_ps();
    bool ended = false;  // the last block of this call completed
    while (k < e) {
        std::int64_t const stop = std::min(e, L.runs[r].k1), n = (stop - k + 1) / 2;
        std::uint16_t const* wk = w + (k - kw) / 2 * NP * 32;
        std::uint16_t const* xk = x + (k - kx);
        for (std::int64_t j2 = 0; j2 < n; ++j2, wk += NP * 32, xk += 2) {
            if constexpr (Dec) {
                if (dleft > 0 && ahead <= 2) {
                    constexpr std::int64_t gb = kBqGroupBytes<D>;
#pragma GCC unroll 3
                    for (int j = 0; j < NP; ++j) {
                        std::uint8_t const* p = dc + j * L.pstride;
                        if (gb == 64 || (dc - b0) % 64 == 0) _mm_prefetch(reinterpret_cast<char const*>(p) + kPrefetchBqL1, _MM_HINT_T0);
                        __m512i lo, hi;
                        bf16q_decode2<D>(p, t, lo, hi);
                        _mm512_store_si512(dw + j * 32, lo);
                        if (dleft > 1) _mm512_store_si512(dw + (NP + j) * 32, hi);
                    }
                    dc += gb;
                    dw += 2 * NP * 32;
                    dleft -= 2;
                    ahead += 2;
                }
                --ahead;
            }
            __m512i wv[NP];
#pragma GCC unroll 3
            for (int j = 0; j < NP; ++j) {
                wv[j] = _mm512_load_si512(wk + j * 32);
            }
#pragma GCC unroll 8
            for (int i = 0; i < MR; ++i) {
                std::uint32_t xv;
                std::memcpy(&xv, xk + i * ldx, sizeof xv);
                __m512bh const xb = (__m512bh)_mm512_set1_epi32(static_cast<int>(xv));
#pragma GCC unroll 3
                for (int j = 0; j < NP; ++j) sum[i][j] = _mm512_dpbf16_ps(sum[i][j], xb, (__m512bh)wv[j]);
            }
        }
        k += 2 * n;
        ended = k == L.runs[r].k1 || k >= L.K;
        if (ended) {  // the block is complete: its factors multiply its partial sums
            bool const first = r == 0;
#pragma GCC unroll 3
            for (int j = 0; j < NP; ++j) {
                __m512 const s = _mm512_loadu_ps(b0 + j * L.pstride + L.scale_off + L.runs[r].table * kPanelCols * 4);
#pragma GCC unroll 8
                for (int i = 0; i < MR; ++i) {
                    if constexpr (racc) {
                        ar[i][j] = _mm512_fmadd_ps(sum[i][j], s, first ? _mm512_setzero_ps() : ar[i][j]);
                    } else {
                        float* const a = acc + i * width + j * kPanelCols;
                        _mm512_storeu_ps(a, _mm512_fmadd_ps(sum[i][j], s, first ? _mm512_setzero_ps() : _mm512_loadu_ps(a)));
                    }
                    sum[i][j] = _mm512_setzero_ps();
                }
            }
            ++r;
        }
    }
    if constexpr (racc)
        if (r > r_in)
#pragma GCC unroll 8
            for (int i = 0; i < MR; ++i)
#pragma GCC unroll 3
                for (int j = 0; j < NP; ++j) _mm512_storeu_ps(acc + i * width + j * kPanelCols, ar[i][j]);
    if (!ended)  // the open block goes on in the next call
#pragma GCC unroll 8
        for (int i = 0; i < MR; ++i)
#pragma GCC unroll 3
            for (int j = 0; j < NP; ++j) _mm512_storeu_ps(part + i * width + j * kPanelCols, sum[i][j]);
}

// A chunk's buffers: activations (xcap bf16), decoded weights (sub k pairs: bf16q_w_bytes), partial and
// running sums (rows: bf16q_sum_bytes each); all 64-byte aligned.
struct BqBuffers {
    std::uint16_t* xb;
    std::int64_t xcap;
    std::uint16_t* w;
    std::int64_t sub;
    float *part, *acc;
    std::int64_t rows;
};

// Rows [m0, m0 + rows), rows <= buf.rows, x panels [p0, p1): three panels at a time, the rest one by one.
template <BqDec D, class Epi>
void bf16q_chunk(MatrixView<float const> A, std::int64_t m0, std::int64_t rows, QuantLayout const& L, std::uint8_t const* panels,
                 std::int64_t p0, std::int64_t p1, Epi& epi, BqBuffers const& buf) {
    std::uint16_t* const xb = buf.xb;
    std::uint16_t* const w = buf.w;
    float* const part = buf.part;
    float* const acc = buf.acc;
    std::int64_t const K = L.K, Kp = (K + 1) / 2 * 2;
    // Activations of all of K when the chunk's rows fit xb, else a span of k at a time per panel group.
    std::int64_t const cap = buf.xcap / rows / 2 * 2;
    bool const whole = Kp <= cap;
    std::int64_t const span = whole ? Kp : cap;
    auto const convert = [&](std::int64_t k0, std::int64_t k1) {
        for (std::int64_t i = 0; i < rows; ++i) Bf16DotNative::convert(A.row(m0 + i) + k0, k1 - k0, xb + i * span);
    };
    if (whole) convert(0, K);
    for (std::int64_t p = p0; p < p1;) {
        int const np = p1 - p >= 3 ? 3 : 1;
        std::uint8_t const* const b0 = panels + p * L.pstride;
        std::int64_t const width = np * kPanelCols;  // floats per row in part and acc
        if (K == 0) std::fill(acc, acc + rows * width, 0.0f);  // no block writes it
        std::size_t r = 0;  // the open factor block
        for (std::int64_t k0 = 0; k0 < K; k0 += span) {
            std::int64_t const k1 = std::min(K, k0 + span);
            if (!whole) convert(k0, k1);
            std::int64_t const kx = whole ? 0 : k0;  // row i's k at xb[i · span + k - kx]
            for (std::int64_t k = k0; k < k1;) {
                std::int64_t const e = std::min(k1, k + 2 * buf.sub);
                // The first 8-row tile decodes the sub-block as it goes (bf16q_dots' Dec); a chunk of fewer
                // rows decodes it beforehand.
                bool const fused = rows >= 8;
                if (!fused && np == 3) bf16q_decode_sub<D, 3>(b0, L, k / 2, (e - k + 1) / 2, w);
                if (!fused && np == 1) bf16q_decode_sub<D, 1>(b0, L, k / 2, (e - k + 1) / 2, w);
                std::int64_t m = 0;
                auto const dots = [&]<int R>() {
                    if (R == 8 && m == 0) {  // the fused tile: only with 8 rows or more
                        if (np == 3)
                            bf16q_dots<8, 3, D, true>(xb, span, kx, w, k, k, e, L, r, b0, part, acc);
                        else
                            bf16q_dots<8, 1, D, true>(xb, span, kx, w, k, k, e, L, r, b0, part, acc);
                    } else if (np == 3)
                        bf16q_dots<R, 3>(xb + m * span, span, kx, w, k, k, e, L, r, b0, part + m * width, acc + m * width);
                    else
                        bf16q_dots<R, 1>(xb + m * span, span, kx, w, k, k, e, L, r, b0, part + m * width, acc + m * width);
                    m += R;
                };
                // MXFP4 runs the rows after the fused tile in 4-row tiles whose running sums stay in registers
                // (above): its 16-pair blocks made the 8-row tiles' loads and stores of acc the largest cost
                // beside the dots. Standalone driver (gemm_bf16_dot_quant, qwen2moe-like 2816 x 2048 and 2048 x
                // 1408, thread CPU time, min of 15, 3 alternated runs, load 3.0-3.5): M = 64 183.2-184.3 ->
                // 192.8-195.1 GFLOP/s, M = 26..42 177.5-179.3 -> 185.5-187.1. FP8 (64-pair blocks) the same
                // either way (M = 64: 203.8-206.6 against 205.4-206.0): it keeps the 8-row tiles' weight reuse.
                while (rows - m >= 8 && (m == 0 || D != BqDec::mx)) dots.template operator()<8>();
                while (rows - m >= 4) dots.template operator()<4>();
                if (rows - m >= 2) dots.template operator()<2>();
                if (rows - m >= 1) dots.template operator()<1>();
                for (k = e; r < L.runs.size() && (L.runs[r].k1 <= k); ++r) {}
            }
        }
        store_tile(epi, m0, p, static_cast<int>(rows), np, static_cast<float const*>(acc), width);
        p += np;
    }
}

template <BqDec D, class Epi>
void bf16q_run(MatrixView<float const> A, QuantLayout const& L, std::uint8_t const* panels, std::int64_t p0, std::int64_t p1, Epi& epi,
               BqBuffers const& buf) {
    std::int64_t const M = A.rows;
    // Register tiles for few rows, unless a factor block is too long for their share of the activations
    // (FP8 per channel with a long K): the chunk walks k in spans whatever the blocks. Three rows (alone or
    // after four) take one 3-row pass rather than 2 + 1, each decoding every panel: measured (BM_layer
    // cold, threads:1, faster of 2 alternated runs, load 2.4-3.9) olmoe T = 8 FP8 22.2 -> 24.1 GB/s, MXFP4
    // 21.8 -> 23.3; qwen2moe T = 8 within noise (22.7 / 21.9, 26.5 / 27.3), T = 1 does not take it.
    if (M < kBqDecodeRows && bf16q_fits(L, buf.xcap, M >= 4 ? 4 : M == 3 ? 3 : M == 2 ? 2 : 1)) {
        std::int64_t m = 0;
        if (M - m >= 4) bf16q_tile_rows<D, 4>(A, m, L, panels, p0, p1, epi, buf.xb, buf.xcap), m += 4;
        if (M - m == 3) bf16q_tile_rows<D, 3>(A, m, L, panels, p0, p1, epi, buf.xb, buf.xcap), m += 3;
        if (M - m >= 2) bf16q_tile_rows<D, 2>(A, m, L, panels, p0, p1, epi, buf.xb, buf.xcap), m += 2;
        if (M - m >= 1) bf16q_tile_rows<D, 1>(A, m, L, panels, p0, p1, epi, buf.xb, buf.xcap);
        return;
    }
    // Chunks of up to buf.rows rows, fewer where that lets the rows hold all of K in the buffer (at least 8),
    // split evenly in multiples of the 8-row tile but the last: rows that fall to the narrower tiles cost
    // their chunk most (olmoe MXFP4, M = 70: 35 + 35 rows, 68.8 % of the vdpbf16ps peak; 40 + 30: 71.3 %).
    std::int64_t const fit = std::clamp<std::int64_t>(buf.xcap / ((L.K + 1) / 2 * 2), kBqDecodeRows, buf.rows);
    std::int64_t const chunks = (M + fit - 1) / fit, rows = std::min(fit, ((M + chunks - 1) / chunks + 7) / 8 * 8);
    for (std::int64_t m = 0; m < M; m += rows) bf16q_chunk<D>(A, m, std::min(rows, M - m), L, panels, p0, p1, epi, buf);
}

// Without the caller's scratch: the buffers on this frame, the activations' one small.
template <BqDec D, class Epi>
[[gnu::noinline]] void bf16q_run_on_stack(MatrixView<float const> A, QuantLayout const& L, std::uint8_t const* panels, std::int64_t p0,
                                          std::int64_t p1, Epi& epi) {
    alignas(64) std::uint16_t xb[kBqStackXBytes / 2];
    alignas(64) std::uint16_t w[bf16q_w_bytes(kBqStackSub) / 2];
    alignas(64) float part[bf16q_sum_bytes(kBqStackRows) / 4], acc[bf16q_sum_bytes(kBqStackRows) / 4];
    bf16q_run<D>(A, L, panels, p0, p1, epi, BqBuffers{xb, kBqStackXBytes / 2, w, kBqStackSub, part, acc, kBqStackRows});
}

template <BqDec D, class Epi>
void bf16q_native(MatrixView<float const> A, QuantLayout const& L, std::uint8_t const* panels, std::int64_t p0, std::int64_t p1, Epi& epi,
                  std::span<std::byte> scratch) {
    if (scratch.size() < bf16q_scratch_bytes(L.K) || reinterpret_cast<std::uintptr_t>(scratch.data()) % 64 != 0)
        return bf16q_run_on_stack<D>(A, L, panels, p0, p1, epi);
    // The sums and weights first, the activations take the rest (a scratch sized for a wider matrix than L).
    std::byte* const s = scratch.data();
    std::size_t const wb = bf16q_w_bytes(kBqSub), sb = bf16q_sum_bytes(kBqRows), xb = (scratch.size() - wb - 2 * sb) / 64 * 64;
    BqBuffers const buf{reinterpret_cast<std::uint16_t*>(s + wb + 2 * sb), static_cast<std::int64_t>(xb / 2), reinterpret_cast<std::uint16_t*>(s),
                        kBqSub, reinterpret_cast<float*>(s + wb), reinterpret_cast<float*>(s + wb + sb), kBqRows};
    bf16q_run<D>(A, L, panels, p0, p1, epi, buf);
}
#endif

}  // namespace detail

// How the native kernel decodes FP8: by byte tables where the CPU has AVX512-VBMI, else by word tables;
// words always by word tables (tests run that fallback on CPUs with VBMI). The same bits either way.
enum class Fp8Decode { bytes_if_vbmi, words };

// Rows [0, A.rows) x panels [p0, p1) of an FP8 or MXFP4 matrix packed by pack_bf16q_panel; A's first
// L.K columns are the input. Native needs cpu_has_avx512_bf16(); scratch (at least bf16q_scratch_bytes(L.K),
// 64-byte aligned, one per concurrent caller) holds its buffers, else they go on the stack (see kBqMaxXBytes).
template <class Epi>
void gemm_bf16_dot_quant(Bf16DotKernel kernel, MatrixView<float const> A, QuantLayout const& L, std::uint8_t const* panels,
                         std::int64_t p0, std::int64_t p1, Epi& epi, std::span<std::byte> scratch = {},
                         Fp8Decode decode = Fp8Decode::bytes_if_vbmi) {
    if (A.rows == 0 || p0 >= p1) return;
    MatrixView<float const> const X(A.data, A.rows, L.K, A.ld);
#if SMOE_BF16_DOT_NATIVE
    if (kernel == Bf16DotKernel::native) {
        if (L.kind != quant::Kind::fp8) return detail::bf16q_native<detail::BqDec::mx>(X, L, panels, p0, p1, epi, scratch);
        if (decode == Fp8Decode::bytes_if_vbmi && cpu_has_avx512_vbmi())
            return detail::bf16q_native<detail::BqDec::fp8_bytes>(X, L, panels, p0, p1, epi, scratch);
        return detail::bf16q_native<detail::BqDec::fp8_words>(X, L, panels, p0, p1, epi, scratch);
    }
#else
    (void)kernel;
    (void)scratch;
    (void)decode;
#endif
    for (std::int64_t p = p0; p < p1; ++p) detail::bf16q_rows_emulated(X, L, panels + p * L.pstride, p, epi);
}

}  // namespace smoe::inline v0::kernels::cpu
