#pragma once
// The AVX512-BF16 path of SwiGLU<bf16>: C[M, panels] = A[M, K] · panelsᵀ with vdpbf16ps, which
// multiplies bf16 pairs exactly and adds them into fp32 lanes. The activations are rounded to bf16 on
// the way in (smoe::to_bf16, round to nearest even), so results differ from the fp32 path
// (gemm_packed.hpp) by that rounding; experts.md §9's bf16-output bound (5e-3) covers it.
//
// k-pair panels: per 16 output columns, element (k, c) at [(k / 2) · 32 + c · 2 + k % 2], so one
// 64-byte step of a panel is one zmm of 16 columns x 2 k. Odd K pads the last pair with zero (weight
// and activation). Columns are in natural order (no slot permutation: lanes never cross).
//
// Order (rule 3): every output column is one chain, started at +0, over the pairs j = 0, 1, ... in
// order, each pair adding the odd element first, then the even one, each add an fp32 FMA rounded to
// nearest even with denormal inputs read as zero and denormal results flushed to zero (Intel's
// pseudocode of VDPBF16PS). Nothing depends on the tile or the thread split, so a row alone and the
// same row inside any batch give the same bits.
//
// The dot step is a policy: Bf16DotNative runs vdpbf16ps in functions compiled for
// avx512f/bw/vl/bf16 by target attribute (header-only: no special flags; chosen at run time with
// cpu_has_avx512_bf16()), Bf16DotEmulated computes the same per-lane pseudocode with std::fma, so the
// packing and the tile driver run and are tested on any CPU, and the native kernel is checked against
// the emulation bit for bit where the instruction exists (tests/isa).
//
// Activations are converted per tile, 256 k at a time, into a stack buffer: the phased expert API
// (run_gate_up/run_down, which threads call on panel ranges) has no workspace, and the conversion is
// O(rows · K) against the tile's O(rows · K · panels) dot steps.

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>
#include <cstring>

#include "smoe/detail/xsimd.hpp"  // before <immintrin.h>: see there

#include "smoe/core/bf16.hpp"
#include "smoe/core/view.hpp"
#include "smoe/kernels/cpu/pack.hpp"
#include "smoe/kernels/cpu/tile_store.hpp"
#include "smoe/macros.hpp"

#if (defined(__x86_64__) || defined(_M_X64)) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#define SMOE_BF16_DOT_NATIVE 1
#define SMOE_TARGET_AVX512_BF16 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512bf16")))
#else
#define SMOE_BF16_DOT_NATIVE 0
#endif

namespace smoe::inline v0::kernels::cpu {

// Which dot step runs the k-pair kernels.
enum class Bf16DotKernel { native, emulated };

// Whether this CPU runs vdpbf16ps on zmm registers (AVX512-BF16 with F, BW, VL and DQ).
inline bool cpu_has_avx512_bf16() {
#if SMOE_BF16_DOT_NATIVE
    __builtin_cpu_init();  // needed if this runs before the constructors (an expert built at static initialisation)
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl") &&
           __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512bf16");
#else
    return false;
#endif
}

// Elements of one k-pair panel over K.
constexpr std::int64_t kpair_panel_elems(std::int64_t K) { return (K + 1) / 2 * 2 * kPanelCols; }

// Writes one k-pair panel: column c is the row row_of(c) (K consecutive bf16), zeros where it is nullptr.
template <class RowOf>
void pack_panel_kpairs(bf16* dst, std::int64_t K, RowOf row_of) {
    bf16 const* rows[kPanelCols];
    for (int c = 0; c < kPanelCols; ++c) rows[c] = row_of(c);
    std::int64_t const pairs = (K + 1) / 2;
    for (std::int64_t j = 0; j < pairs; ++j)
        for (int c = 0; c < kPanelCols; ++c)
            for (int h = 0; h < 2; ++h) {
                std::int64_t const k = 2 * j + h;
                dst[(j * kPanelCols + c) * 2 + h] = rows[c] && k < K ? rows[c][k] : bf16{};
            }
}

namespace detail {

// fp32 bits with a zero exponent (denormals, zeros) become the zero of their sign.
inline float flush_denormal(float v) {
    std::uint32_t b = std::bit_cast<std::uint32_t>(v);
    if ((b & 0x7F800000u) == 0) b &= 0x80000000u;
    return std::bit_cast<float>(b);
}

}  // namespace detail

// One lane of VDPBF16PS on one pair, as Intel's pseudocode defines it:
//   acc += x_hi · w_hi;  acc += x_lo · w_lo
// each an fp32 FMA (the bf16 product is exact), rounded to nearest even, denormal inputs (both
// factors and the accumulator) read as zero, a denormal result flushed to zero; MXCSR is not used.
inline float emulated_dpbf16(float acc, bf16 x_lo, bf16 x_hi, bf16 w_lo, bf16 w_hi) {
    using detail::flush_denormal;
    acc = flush_denormal(std::fma(flush_denormal(to_float(x_hi)), flush_denormal(to_float(w_hi)), flush_denormal(acc)));
    return flush_denormal(std::fma(flush_denormal(to_float(x_lo)), flush_denormal(to_float(w_lo)), acc));
}

namespace detail {

inline constexpr std::int64_t kDotBlock = 256;   // k converted at a time (even: pairs never straddle)
inline constexpr int kDotRows = 8, kDotPanels = 3, kDotGroup = 6;  // tile shapes as gemm_packed_avx512

// The k loop of one tile, MR rows x NP panels; out receives MR · NP · 16 floats, column order.
// Always inlined into the policy's tile(): the native one is compiled for AVX512-BF16 (a function
// without that target may inline into one with it, not the reverse) and flattens the policy's members
// into it; no out-of-line copy exists to be shared between objects built for different ISAs.
template <class Dot, int MR, int NP>
SMOE_ALWAYS_INLINE void kpair_loop(float const* a, std::int64_t lda, bf16 const* b, std::int64_t pstride, std::int64_t K, float* out) {
    typename Dot::acc acc[MR][NP];
#pragma GCC unroll 8
    for (int i = 0; i < MR; ++i)
#pragma GCC unroll 6
        for (int j = 0; j < NP; ++j) Dot::zero(acc[i][j]);
    alignas(64) std::uint16_t xb[MR][kDotBlock];
    for (std::int64_t k0 = 0; k0 < K; k0 += kDotBlock) {
        std::int64_t const kb = std::min(kDotBlock, K - k0), pairs = (kb + 1) / 2;
        for (int i = 0; i < MR; ++i) Dot::convert(a + i * lda + k0, kb, xb[i]);
        bf16 const* const bk = b + k0 * kPanelCols;  // pair k0 / 2 starts at (k0 / 2) · 32
        for (std::int64_t j2 = 0; j2 < pairs; ++j2) {
            typename Dot::wvec w[NP];
#pragma GCC unroll 6
            for (int j = 0; j < NP; ++j) {
                bf16 const* const p = bk + j * pstride + j2 * 2 * kPanelCols;
                __builtin_prefetch(reinterpret_cast<char const*>(p) + 1024);
                Dot::load(w[j], p);
            }
#pragma GCC unroll 8
            for (int i = 0; i < MR; ++i) {
                std::uint32_t x;
                std::memcpy(&x, &xb[i][2 * j2], sizeof x);
#pragma GCC unroll 6
                for (int j = 0; j < NP; ++j) Dot::dot(acc[i][j], x, w[j]);
            }
        }
    }
#pragma GCC unroll 8
    for (int i = 0; i < MR; ++i)
#pragma GCC unroll 6
        for (int j = 0; j < NP; ++j) Dot::store(acc[i][j], out + (i * NP + j) * kPanelCols);
}

// The scalar emulation: runs anywhere, slowly; the reference the native kernel must match bit for bit.
struct Bf16DotEmulated {
    struct acc {
        float v[kPanelCols];
    };
    struct wvec {
        bf16 const* p;
    };
    static void convert(float const* x, std::int64_t n, std::uint16_t* out) {
        for (std::int64_t i = 0; i < n; ++i) out[i] = to_bf16(x[i]).bits;
        if (n & 1) out[n] = 0;
    }
    static void zero(acc& a) { std::fill(a.v, a.v + kPanelCols, 0.0f); }
    static void load(wvec& w, bf16 const* p) { w.p = p; }
    static void dot(acc& a, std::uint32_t x, wvec const& w) {
        bf16 const lo{static_cast<std::uint16_t>(x & 0xFFFFu)}, hi{static_cast<std::uint16_t>(x >> 16)};
        for (int c = 0; c < kPanelCols; ++c) a.v[c] = emulated_dpbf16(a.v[c], lo, hi, w.p[2 * c], w.p[2 * c + 1]);
    }
    static void store(acc const& a, float* out) { std::copy(a.v, a.v + kPanelCols, out); }
    // One function for every tile shape, the shape at run time: kpair_loop's sums in kpair_loop's
    // order (each output's k pairs in turn), so the same bits. Unrolled per shape as the native tile
    // is, the scalar model was 220 KB of code in every unit with a bf16 expert, and never fast.
    template <int MR, int NP>
    static void tile(float const* a, std::int64_t lda, bf16 const* b, std::int64_t pstride, std::int64_t K, float* out) {
        tile_any(MR, NP, a, lda, b, pstride, K, out);
    }
    SMOE_NOIPA static void tile_any(int rows, int np, float const* a, std::int64_t lda, bf16 const* b, std::int64_t pstride,
                                       std::int64_t K, float* out) {
        std::uint16_t xb[kDotBlock];
        for (int i = 0; i < rows; ++i) {
            acc sum[kDotGroup];
            for (int j = 0; j < np; ++j) zero(sum[j]);
            for (std::int64_t k0 = 0; k0 < K; k0 += kDotBlock) {
                std::int64_t const kb = std::min(kDotBlock, K - k0), pairs = (kb + 1) / 2;
                convert(a + i * lda + k0, kb, xb);
                for (int j = 0; j < np; ++j)
                    for (std::int64_t j2 = 0; j2 < pairs; ++j2) {
                        std::uint32_t x;
                        std::memcpy(&x, &xb[2 * j2], sizeof x);
                        dot(sum[j], x, wvec{b + j * pstride + k0 * kPanelCols + j2 * 2 * kPanelCols});
                    }
            }
            for (int j = 0; j < np; ++j) store(sum[j], out + (i * np + j) * kPanelCols);
        }
    }
};

#if SMOE_BF16_DOT_NATIVE
// vdpbf16ps. Every member is compiled for AVX512-BF16 by attribute and only called after
// cpu_has_avx512_bf16(); tile() flattens kpair_loop and these members into one such function.
struct Bf16DotNative {
    using acc = __m512;
    using wvec = __m512i;
    // smoe::to_bf16 on 16 lanes: (b + 0x7FFF + ((b >> 16) & 1)) >> 16, NaN -> 0x7FC0. (vcvtne2ps2bf16
    // would read denormals as zero; this keeps to_bf16's rounding exactly.)
    SMOE_TARGET_AVX512_BF16 static __m256i round16(__m512i b) {
        __m512i const lsb = _mm512_and_si512(_mm512_srli_epi32(b, 16), _mm512_set1_epi32(1));
        __m512i r = _mm512_srli_epi32(_mm512_add_epi32(b, _mm512_add_epi32(lsb, _mm512_set1_epi32(0x7FFF))), 16);
        __mmask16 const nan = _mm512_cmpgt_epu32_mask(_mm512_and_si512(b, _mm512_set1_epi32(0x7FFFFFFF)), _mm512_set1_epi32(0x7F800000));
        r = _mm512_mask_mov_epi32(r, nan, _mm512_set1_epi32(0x7FC0));
        return _mm512_cvtepi32_epi16(r);
    }
    SMOE_TARGET_AVX512_BF16 static void convert(float const* x, std::int64_t n, std::uint16_t* out) {
        std::int64_t i = 0;
        // vcvtne2ps2bf16 rounds as to_bf16 except on fp32 denormals (read as zero) and NaN (payload kept):
        // 32 lanes without either take it; the others round16.
        for (; i + 32 <= n; i += 32) {
            __m512 const lo = _mm512_loadu_ps(x + i), hi = _mm512_loadu_ps(x + i + 16);
            if ((_mm512_fpclass_ps_mask(lo, 0xA1) | _mm512_fpclass_ps_mask(hi, 0xA1)) == 0) {
                _mm512_storeu_si512(out + i, (__m512i)_mm512_cvtne2ps_pbh(hi, lo));
            } else {
                _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + i), round16(_mm512_castps_si512(lo)));
                _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + i + 16), round16(_mm512_castps_si512(hi)));
            }
        }
        for (; i + 16 <= n; i += 16)
            _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + i), round16(_mm512_loadu_si512(x + i)));
        if (i < n) {
            __mmask16 const m = static_cast<__mmask16>((1u << (n - i)) - 1u);
            _mm256_mask_storeu_epi16(out + i, m, round16(_mm512_maskz_loadu_epi32(m, x + i)));
        }
        if (n & 1) out[n] = 0;
    }
    SMOE_TARGET_AVX512_BF16 static void zero(acc& a) { a = _mm512_setzero_ps(); }
    SMOE_TARGET_AVX512_BF16 static void load(wvec& w, bf16 const* p) {
        w = _mm512_loadu_si512(p);
        __asm__("" : "+v"(w));  // one load per panel vector, not one folded into every row's dot
    }
    SMOE_TARGET_AVX512_BF16 static void dot(acc& a, std::uint32_t x, wvec const& w) {
        a = _mm512_dpbf16_ps(a, (__m512bh)_mm512_set1_epi32(static_cast<int>(x)), (__m512bh)w);
    }
    SMOE_TARGET_AVX512_BF16 static void store(acc const& a, float* out) { _mm512_storeu_ps(out, a); }
    template <int MR, int NP>
    SMOE_TARGET_AVX512_BF16 __attribute__((noinline, flatten)) static void tile(float const* a, std::int64_t lda, bf16 const* b,
                                                                              std::int64_t pstride, std::int64_t K, float* out) {
        kpair_loop<Bf16DotNative, MR, NP>(a, lda, b, pstride, K, out);
    }
};
#endif

// The driver below takes the caller's xsimd Arch only to give each ISA's object its own copies (the
// arithmetic does not depend on it): see cmake/smoe_dispatch.cmake on objects built for several ISAs.
template <class Arch, class Dot, int MR, int NP, class Epi>
void kpair_tile(float const* a, std::int64_t lda, bf16 const* b, std::int64_t pstride, std::int64_t K, std::int64_t row0,
                std::int64_t panel0, Epi& epi) {
    alignas(64) float out[MR * NP * kPanelCols];
    Dot::template tile<MR, NP>(a, lda, b, pstride, K, out);
    store_tile(epi, row0, panel0, MR, NP, static_cast<float const*>(out));
}

template <class Arch, class Dot, int MR, int NPMax, class Epi>
void kpair_tile_np(int np, float const* a, std::int64_t lda, bf16 const* b, std::int64_t pstride, std::int64_t K,
                   std::int64_t row0, std::int64_t panel0, Epi& epi) {
    if constexpr (NPMax > 1)
        if (np < NPMax) return kpair_tile_np<Arch, Dot, MR, NPMax - 1>(np, a, lda, b, pstride, K, row0, panel0, epi);
    kpair_tile<Arch, Dot, MR, NPMax>(a, lda, b, pstride, K, row0, panel0, epi);
}

template <class Arch, class Dot, class Epi>
void kpair_rest(int r, int np, float const* a, std::int64_t lda, bf16 const* b, std::int64_t pstride, std::int64_t K,
                std::int64_t row0, std::int64_t panel0, Epi& epi) {
    switch (r) {
        case 1: return kpair_tile_np<Arch, Dot, 1, kDotGroup>(np, a, lda, b, pstride, K, row0, panel0, epi);
        case 2: return kpair_tile_np<Arch, Dot, 2, kDotGroup>(np, a, lda, b, pstride, K, row0, panel0, epi);
        case 3: return kpair_tile_np<Arch, Dot, 3, kDotGroup>(np, a, lda, b, pstride, K, row0, panel0, epi);
        case 4: return kpair_tile_np<Arch, Dot, 4, 3>(np, a, lda, b, pstride, K, row0, panel0, epi);
        case 5: return kpair_tile_np<Arch, Dot, 5, 3>(np, a, lda, b, pstride, K, row0, panel0, epi);
        case 6: return kpair_tile_np<Arch, Dot, 6, 3>(np, a, lda, b, pstride, K, row0, panel0, epi);
        default: return kpair_tile_np<Arch, Dot, 7, 3>(np, a, lda, b, pstride, K, row0, panel0, epi);
    }
}

// Tiles as gemm_packed_avx512: 8 rows x 3 panels; 1-3 leftover rows over up to 6 panels, 4-7 over 3.
template <class Arch, class Dot, class Epi>
void gemm_kpairs(MatrixView<float const> A, bf16 const* panels, std::int64_t p0, std::int64_t p1, Epi& epi) {
    std::int64_t const M = A.rows, K = A.cols, pstride = kpair_panel_elems(K);
    int const r = static_cast<int>(M % kDotRows);
    std::int64_t const full = M - r;
    int const rest_step = r <= 3 ? kDotGroup : kDotPanels;
    for (std::int64_t p = p0; p < p1; p += kDotGroup) {
        std::int64_t const pe = std::min<std::int64_t>(p + kDotGroup, p1);
        for (std::int64_t q = p; q < pe; q += kDotPanels) {
            int const np = static_cast<int>(std::min<std::int64_t>(kDotPanels, pe - q));
            for (std::int64_t m = 0; m < full; m += kDotRows)
                kpair_tile_np<Arch, Dot, kDotRows, kDotPanels>(np, A.row(m), A.ld, panels + q * pstride, pstride, K, m, q, epi);
        }
        if (r == 0) continue;
        for (std::int64_t q = p; q < pe; q += rest_step) {
            int const np = static_cast<int>(std::min<std::int64_t>(rest_step, pe - q));
            kpair_rest<Arch, Dot>(r, np, A.row(full), A.ld, panels + q * pstride, pstride, K, full, q, epi);
        }
    }
}

}  // namespace detail

// Runs rows [0, A.rows) x k-pair panels [p0, p1) and hands each finished (row, panel) to
// epi.store(row, panel, float const* v) with v[c] = column c. `panels` points at panel 0;
// consecutive panels are kpair_panel_elems(K) apart. Native needs cpu_has_avx512_bf16().
// Arch (an xsimd arch) changes no result; it only keeps each ISA's instantiations apart.
template <class Arch, class Epi>
void gemm_bf16_dot(Arch, Bf16DotKernel kernel, MatrixView<float const> A, bf16 const* panels, std::int64_t p0, std::int64_t p1,
                   Epi& epi) {
    if (A.rows == 0 || p0 >= p1) return;
#if SMOE_BF16_DOT_NATIVE
    if (kernel == Bf16DotKernel::native) return detail::gemm_kpairs<Arch, detail::Bf16DotNative>(A, panels, p0, p1, epi);
#else
    (void)kernel;
#endif
    detail::gemm_kpairs<Arch, detail::Bf16DotEmulated>(A, panels, p0, p1, epi);
}

}  // namespace smoe::inline v0::kernels::cpu
