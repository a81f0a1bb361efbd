#pragma once
// The int8 dot path of formats.md §6.2 for int4, int8, ternary and MXFP4 weights (opt-in,
// SwiGLUConfig::int8_dot): activations quantised to int8 per block of 32 (llama.cpp's q8 idea), integer dot
// products per block, one fp32 chain over blocks. The scalar model, for every input row x of one matmul:
//   d_b = amax_b / 127, q_i = clamp(rint(x_i / d_b), -127, 127)   (fp32; d_b = 0 -> q = 0; a NaN/Inf
//                                                                    in the block makes d_b NaN)
//   S_ob = Σ_{i∈b} (u[o, i] - z[o, k(b)]) · q_i                     (exact int32)
//   y_o  = fma(float(S_ob), fl32(d_b · s[o, k(b)]), y_o), b = 0, 1, ... in order, from +0
// int8 weights enter as u = q_w + 128, z = 128. MXFP4 (E2M1 codes, one E8M0 scale per 32) enters as
// u = 2 v + 12 (0..24: 2 v is an integer for every E2M1 value v), z = 12 and s = 2^(e - 128), so (u - z) · s
// is W_deq exactly and the rest is int4's arithmetic: the panels keep the 4-bit codes, which the kernels
// map to u through a 16-byte table (vpshufb), as llama.cpp's MXFP4 x q8_0 dot does, and each factor as its
// E8M0 byte (s is exact in fp32 for every e, 2^-128 a subnormal). Every kernel computes exactly this, so
// the AVX512-VNNI kernel (vpdpbusd: unsigned weight bytes times signed activation bytes) and the portable
// one give the same bits, on every thread count and row split.
//
// Panels (16 output units): per block of 32 k, `bits` vectors of 16 dwords (64 · bits bytes); dword
// (v, o) holds 32 / bits pieces of 4 consecutive k of unit o, piece c in bits c·bits.. of each byte, so
// piece c of vector v is k = 4 (v · 32 / bits + c) + 0..3: int8 (bits 8) one piece, int4 and MXFP4 two
// (nibbles), ternary (bits 2, u = t + 1, research.md §7.1) four, at half of int4's bytes. Then per group
// one table of 16 fp32 factors (MXFP4: 16 E8M0 bytes, so 0.53 bytes a weight as int4 g128, not 0.625)
// and, where the zero points differ (asymmetric int4), one of 16 int32 zero points: a matrix with one
// zero point (DotLayout::zero) stores none, so no kernel streams bytes it never reads. A panel is padded
// to 64 bytes. Act order stores k in group order (as quant_panel.hpp) and quantises x in that order.
// Activations are quantised per tile, one block at a time, on the stack: the phased expert API has no
// workspace, and the cost is O(rows · K) against the tile's O(rows · K · panels) (as bf16_dot.hpp).

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#if defined(__x86_64__) || defined(_M_X64)
#include <cpuid.h>
#endif
#include <vector>

#include "smoe/detail/xsimd.hpp"

#include "smoe/core/view.hpp"
#include "smoe/kernels/cpu/pack.hpp"
#include "smoe/kernels/cpu/prefetch_spread.hpp"
#include "smoe/kernels/cpu/quant_panel.hpp"
#include "smoe/kernels/cpu/tile_store.hpp"
#include "smoe/macros.hpp"
#include "smoe/quant/matrix.hpp"

#if (defined(__x86_64__) || defined(_M_X64)) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#define SMOE_INT8_DOT_NATIVE 1
#define SMOE_TARGET_AVX512_VNNI __attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni")))
#define SMOE_TARGET_AVX2_FMA __attribute__((target("avx2,fma")))
#else
#define SMOE_INT8_DOT_NATIVE 0
#endif

namespace smoe::inline v0::kernels::cpu {

inline constexpr std::int64_t kQ8Block = 32;
// The AVX2 kernel's prefetch: bytes ahead in its panel, into L2. The VNNI kernel prefetches the next
// tile's panels instead (dot_tile_vnni).
inline constexpr std::int64_t kPrefetchDot = 8192;
// The VNNI kernel's second prefetch: bytes ahead of each load in its own panel, into L1 (the next tile's
// L2 prefetch has brought them near; this hides the L2 latency of the loads). See dot_tile_vnni.
inline constexpr std::int64_t kPrefetchDotL1 = 512;

// Whether this CPU runs vpdpbusd on zmm registers (AVX512-VNNI with F, BW and VL).
inline bool cpu_has_avx512_vnni() {
#if SMOE_INT8_DOT_NATIVE
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl") &&
           __builtin_cpu_supports("avx512vnni");
#else
    return false;
#endif
}

inline bool cpu_has_avx2_fma() {
#if SMOE_INT8_DOT_NATIVE
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#else
    return false;
#endif
}

// AVX-VNNI: vpdpbusd on ymm in the VEX encoding (AVX2 CPUs such as Alder Lake and later, Zen 5). CPUID leaf
// 7.1 EAX bit 4; clang 14's __builtin_cpu_supports does not know "avxvnni".
inline bool cpu_has_avx_vnni() {
#if SMOE_INT8_DOT_NATIVE
    unsigned a = 0, b = 0, c = 0, d = 0;
    return cpu_has_avx2_fma() && __get_cpuid_count(7, 1, &a, &b, &c, &d) && (a >> 4 & 1u);
#else
    return false;
#endif
}

// native: AVX512-VNNI vpdpbusd on zmm; avx_vnni: the AVX2 kernel with vpdpbusd on ymm in place of vpmaddubsw +
// vpmaddwd (VEX); avx_vnni_evex: the same kernel and instruction in its EVEX (AVX512-VNNI + VL) encoding, which
// is how a CPU without AVX-VNNI runs and tests that kernel; avx2: vpmaddubsw + vpmaddwd (any AVX2 CPU);
// portable: the scalar model.
enum class Int8DotKernel { native, avx_vnni, avx_vnni_evex, avx2, portable };
inline char const* to_string(Int8DotKernel k) {
    switch (k) {
        case Int8DotKernel::native: return "avx512-vnni";
        case Int8DotKernel::avx_vnni: return "avx-vnni";
        case Int8DotKernel::avx_vnni_evex: return "avx-vnni (evex)";
        case Int8DotKernel::avx2: return "avx2";
        default: return "portable";
    }
}

// MXFP4's code -> u table: u = 2 · E2M1 value + 12 (int4's codes are u themselves).
inline constexpr std::uint8_t kE2m1Nibbles[16] = {12, 13, 14, 15, 16, 18, 20, 24, 12, 11, 10, 9, 8, 6, 4, 0};
inline constexpr std::int32_t kE2m1Zero = 12;

struct DotLayout {
    quant::Kind kind = quant::Kind::int4;  // int4, int8_channel, ternary or mxfp4
    int bits = 4;                           // bits per code: 4, 8, 2
    std::int64_t K = 0, blocks = 0;         // blocks = ceil(K / 32)
    std::int64_t block_bytes = 0;           // 64 · bits: 128 (ternary), 256 (int4), 512 (int8)
    std::int64_t blocks_per_group = 0;      // k(b) = b / blocks_per_group
    std::int64_t tables = 0, scale_off = 0, zero_off = 0, pstride = 0;
    std::int32_t zero = -1;          // the zero point of every output (int8: 128, symmetric int4: 8), else -1
    std::vector<std::int32_t> perm;  // act order: input column of (sorted) step k

    bool zero_tables() const { return zero < 0; }
    // MXFP4: codes map to u through kE2m1Nibbles, and each factor is kept as its E8M0 byte, not as fp32.
    bool mx() const { return kind == quant::Kind::mxfp4; }
    std::int64_t factor_bytes() const { return mx() ? 1 : 4; }
    // Unit o's factor s for table t of the panel at `panel`.
    float factor(std::uint8_t const* panel, std::int64_t t, int o) const {
        if (mx()) return std::ldexp(1.0f, int(panel[scale_off + t * kPanelCols + o]) - 128);
        float sc;
        std::memcpy(&sc, panel + scale_off + (t * kPanelCols + o) * 4, 4);
        return sc;
    }
    // Unit o's zero point for table t of the panel at `panel`.
    std::int32_t zero_of(std::uint8_t const* panel, std::int64_t t, int o) const {
        if (!zero_tables()) return zero;
        std::int32_t z;
        std::memcpy(&z, panel + zero_off + (t * kPanelCols + o) * 4, 4);
        return z;
    }
};

// The layout of a matrix of K columns; `m` gives act order's gidx. Precondition (checked by the
// expert, naming g): int4's group is a multiple of 32 or the whole row.
// Ternary is formats.md §6.2 with t = u - 1 in place of u - z (research.md §7.1): int4's arithmetic on
// 2-bit codes.
inline DotLayout dot_layout(quant::Format const& f, std::int64_t K, quant::Matrix const* m = nullptr) {
    DotLayout L;
    L.kind = f.kind;
    L.bits = f.kind == quant::Kind::int8_channel ? 8 : f.kind == quant::Kind::ternary ? 2 : 4;
    L.K = K;
    L.blocks = (K + kQ8Block - 1) / kQ8Block;
    L.block_bytes = 64 * L.bits;
    L.tables = L.kind == quant::Kind::int8_channel ? 1 : f.groups(K);
    L.blocks_per_group = L.tables > 1 ? f.group_cols(K) / kQ8Block : std::max<std::int64_t>(L.blocks, 1);
    switch (f.kind) {  // matrix.hpp holds symmetric int4's zeros to 8
        case quant::Kind::int8_channel: L.zero = 128; break;
        case quant::Kind::ternary: L.zero = 1; break;
        case quant::Kind::mxfp4: L.zero = kE2m1Zero; break;
        default: L.zero = f.symmetric ? 8 : -1;
    }
    L.scale_off = L.blocks * L.block_bytes;
    L.zero_off = L.scale_off + L.tables * kPanelCols * L.factor_bytes();
    L.pstride = (L.zero_off + (L.zero_tables() ? L.tables * kPanelCols * 4 : 0) + 63) / 64 * 64;
    if (f.act_order && m) L.perm = quant_layout(f, K, m).perm;
    return L;
}

// Byte (v, o, r) and the shift of piece c for step r of block k: see DotLayout.
struct DotPos {
    std::int64_t byte;
    int shift;
};
inline DotPos dot_pos(int bits, std::int64_t r, int s) {
    int const pieces = 8 / bits;
    std::int64_t const g = r / 4;  // the 4-k group: piece g % pieces of vector g / pieces
    return {(g / pieces) * 64 + s * 4 + r % 4, static_cast<int>(g % pieces) * bits};
}

inline void pack_dot_panel(std::uint8_t* dst, DotLayout const& L, QuantSlot const (&slot)[kPanelCols]) {
    std::memset(dst, 0, static_cast<std::size_t>(L.pstride));
    bool const int8 = L.kind == quant::Kind::int8_channel;
    for (int s = 0; s < kPanelCols; ++s) {
        quant::Matrix const* m = slot[s].m;
        if (!m) continue;
        std::int64_t const o = slot[s].row;
        auto const col = [&](std::int64_t k) { return L.perm.empty() ? k : std::int64_t(L.perm[static_cast<std::size_t>(k)]); };
        for (std::int64_t k = 0; k < L.K; ++k) {
            std::uint8_t const c = m->codes[static_cast<std::size_t>(o * L.K + col(k))];
            std::int64_t const b = k / kQ8Block, r = k % kQ8Block;
            DotPos const at = dot_pos(L.bits, r, s);
            std::uint8_t* const p = dst + b * L.block_bytes + at.byte;
            *p = static_cast<std::uint8_t>(*p | ((int8 ? c ^ 0x80u : c) << at.shift));  // int8: u = q + 128
        }
        for (std::int64_t t = 0; t < L.tables; ++t) {
            std::int64_t const i = col(std::min(L.K - 1, t * L.blocks_per_group * kQ8Block));
            float const sc = m->scale_of(o, i);
            if (L.mx())  // u - z = 2 v, so the factor is half the scale 2^(e - 127): the byte e keeps 2^(e - 128)
                dst[L.scale_off + t * kPanelCols + s] = *quant::float_to_e8m0(sc);  // Matrix::validate: an E8M0 scale
            else
                std::memcpy(dst + L.scale_off + (t * kPanelCols + s) * 4, &sc, 4);
            if (!L.zero_tables()) continue;
            std::int32_t const z = m->zero_of(o, i);
            std::memcpy(dst + L.zero_off + (t * kPanelCols + s) * 4, &z, 4);
        }
    }
}

namespace detail {

// One block of one row, quantised: q (32 bytes, zero past n), d_b and Σ q.
struct Q8 {
    alignas(32) std::int8_t q[kQ8Block];
    float d;
    std::int32_t sum;
};

inline void quantize_q8(float const* x, std::int32_t const* perm, std::int64_t k0, std::int64_t n, Q8& out) {
    float v[kQ8Block];
    bool finite = true;
    float amax = 0.0f;
    for (std::int64_t i = 0; i < n; ++i) {
        v[i] = x[perm ? perm[k0 + i] : k0 + i];
        finite = finite && std::isfinite(v[i]);
        amax = std::max(amax, std::fabs(v[i]));
    }
    std::memset(out.q, 0, sizeof out.q);
    out.sum = 0;
    if (!finite) {
        out.d = std::numeric_limits<float>::quiet_NaN();
        return;
    }
    out.d = amax / 127.0f;
    if (out.d == 0.0f) return;
    for (std::int64_t i = 0; i < n; ++i) {
        float const r = std::clamp(std::nearbyint(v[i] / out.d), -127.0f, 127.0f);
        out.q[i] = static_cast<std::int8_t>(r);
        out.sum += out.q[i];
    }
}

// The portable kernel: the scalar model itself.
template <class Epi>
void dot_rows_portable(float const* a, std::int64_t lda, int rows, std::uint8_t const* panel, DotLayout const& L, std::int64_t p,
                       std::int64_t row0, Epi& epi) {
    std::int32_t const* perm = L.perm.empty() ? nullptr : L.perm.data();
    for (int i = 0; i < rows; ++i) {
        float acc[kPanelCols] = {};
        for (std::int64_t b = 0; b < L.blocks; ++b) {
            Q8 q;
            quantize_q8(a + i * lda, perm, b * kQ8Block, std::min(kQ8Block, L.K - b * kQ8Block), q);
            std::int64_t const t = b / L.blocks_per_group;
            std::uint8_t const* blk = panel + b * L.block_bytes;
            for (int s = 0; s < kPanelCols; ++s) {
                float const sc = L.factor(panel, t, s);
                std::int32_t const z = L.zero_of(panel, t, s);
                std::int32_t S = 0;
                for (int r = 0; r < kQ8Block; ++r) {
                    DotPos const at = dot_pos(L.bits, r, s);
                    std::int32_t u = (blk[at.byte] >> at.shift) & ((1 << L.bits) - 1);
                    if (L.mx()) u = kE2m1Nibbles[u];
                    S += (u - z) * q.q[r];
                }
                acc[s] = std::fma(static_cast<float>(S), q.d * sc, acc[s]);
            }
        }
        epi.store(row0 + i, p, acc);
    }
}

#if SMOE_INT8_DOT_NATIVE
// 32 activations of each of MR rows quantised with AVX-512: the scalar model's arithmetic lane-wise.
template <int MR>
SMOE_TARGET_AVX512_VNNI inline void quantize_q8_avx512(float const* a, std::int64_t lda, std::int32_t const* perm, std::int64_t k0,
                                                       std::int64_t n, Q8 (&q)[MR]) {
    for (int i = 0; i < MR; ++i) {
        float const* x = a + i * lda;
        __m512 v0, v1;
        if (perm || n < kQ8Block) {
            alignas(64) float t[kQ8Block] = {};
            for (std::int64_t j = 0; j < n; ++j) t[j] = x[perm ? perm[k0 + j] : k0 + j];
            v0 = _mm512_load_ps(t);
            v1 = _mm512_load_ps(t + 16);
        } else {
            v0 = _mm512_loadu_ps(x + k0);
            v1 = _mm512_loadu_ps(x + k0 + 16);
        }
        __m512i const absmask = _mm512_set1_epi32(0x7FFFFFFF);
        __m512i const b0 = _mm512_and_si512(_mm512_castps_si512(v0), absmask), b1 = _mm512_and_si512(_mm512_castps_si512(v1), absmask);
        // Non-finite: |x| bits >= 0x7F800000. Otherwise amax over the bits as integers (same order as floats).
        __mmask16 const bad = _mm512_cmpge_epu32_mask(b0, _mm512_set1_epi32(0x7F800000)) | _mm512_cmpge_epu32_mask(b1, _mm512_set1_epi32(0x7F800000));
        if (bad) {
            std::memset(q[i].q, 0, kQ8Block);
            q[i].d = std::numeric_limits<float>::quiet_NaN();
            q[i].sum = 0;
            continue;
        }
        std::uint32_t const amax_bits = static_cast<std::uint32_t>(_mm512_reduce_max_epu32(_mm512_max_epu32(b0, b1)));
        float amax;
        std::memcpy(&amax, &amax_bits, 4);
        float const d = amax / 127.0f;
        q[i].d = d;
        if (d == 0.0f) {
            std::memset(q[i].q, 0, kQ8Block);
            q[i].sum = 0;
            continue;
        }
        __m512 const dv = _mm512_set1_ps(d), lim = _mm512_set1_ps(127.0f);
        auto const quant = [&](__m512 v) {
            __m512 r = _mm512_roundscale_ps(_mm512_div_ps(v, dv), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
            r = _mm512_min_ps(_mm512_max_ps(r, _mm512_sub_ps(_mm512_setzero_ps(), lim)), lim);
            return _mm512_cvtps_epi32(r);
        };
        __m512i const i0 = quant(v0), i1 = quant(v1);
        _mm_store_si128(reinterpret_cast<__m128i*>(q[i].q), _mm512_cvtepi32_epi8(i0));
        _mm_store_si128(reinterpret_cast<__m128i*>(q[i].q + 16), _mm512_cvtepi32_epi8(i1));
        q[i].sum = _mm512_reduce_add_epi32(_mm512_add_epi32(i0, i1));
    }
}

// Rows already quantised (gemm_int8_dot quantises a chunk of rows once per call): row i's block b is
// q[i * qstride + 32 b ..], d[i * blocks + b], sum[i * blocks + b] (as float: exact, |sum| <= 4064).
struct Q8Rows {
    std::int8_t const* q;
    float const* d;
    float const* sum;
    std::int64_t qstride;
};

// MR rows x NP panels, every block of K; while it runs, the pf_bytes at pf (the next tile's panels, or
// nullptr) are prefetched into L2, an equal share per block, so they have arrived when that tile starts.
// Mx: MXFP4's panels, 4-bit codes through kE2m1Nibbles and E8M0 factor bytes; int4's codes are u themselves
// and skip the vpshufb per code vector (through the identity table, qwen2moe T = 512 took ~10 % more CPU
// time). Self: the tile quantises its rows itself, block by block (K too long for gemm_int8_dot's stack
// buffer; one row and one panel, since the quantiser's registers in the loop make the accumulators
// spill); either way the same bytes and factors.
// S = dot - z · Σq: with one zero point for the matrix (L.zero) the int32 sums start from -z · Σq, which
// saves an fp32 operation per output vector and block; otherwise it is formed in fp32, exact since both
// terms are integers below 2^24.
template <int Bits, bool Mx, int MR, int NP, bool Self = false>
[[gnu::noinline]] SMOE_TARGET_AVX512_VNNI void dot_tile_vnni(float const* a, std::int64_t lda, Q8Rows pre, std::uint8_t const* b0,
                                                             DotLayout const& L, float* out, std::uint8_t const* pf,
                                                             std::int64_t pf_bytes) {
    // Loop order: per block, per 4-k vector v, the NP panels' weights are decoded once and every row's
    // 4 activation bytes are broadcast from memory straight into vpdpbusd ({1to16}); the int32 sums of
    // all MR x NP outputs stay in registers across the block (measured: the earlier order, every row's 8
    // broadcasts held for the whole block, spilled).
    // The prefetch runs one tile ahead over the next panels as one range (factor tables included), not
    // a fixed distance ahead in each of the NP panels: that one ran off a panel's end into the panel
    // after it, which this tile had read already, and left the next tile's other panels to demand
    // misses. Measured (qwen2moe int4 g128 experts, T = 1, one thread, cold, the layer's items of 44 and
    // 32 panels, thread CPU time, Zen 4 VM): 22.3-23.5 GB/s with 8 KiB ahead per panel, 23.4-23.8 with
    // no software prefetch, 25.6-27.8 with this one (L1 instead of L2: 21.0); a plain read: 32-35. Four
    // rows: 15.0 -> 20.8 GB/s. The same kernel with the weights in the L3 streams 63 GB/s, so the decode
    // is bound by how well the DRAM stream overlaps the decode-and-dot work, not by that work itself.
    // Each load also prefetches kPrefetchDotL1 = 512 bytes ahead in its panel into L1. Measured (bench
    // BM_layer int4d cold, threads:1, min of 3 alternated runs each, load 2.4-3.5, Zen 4 VM, DRAM 33-35
    // GB/s): olmoe T = 1 1.144 -> 1.051 ms (24.7 -> 26.9 GB/s), T = 8 5.67 -> 5.50; qwen2moe T = 1
    // 0.782 -> 0.744 (24.9 -> 26.2), T = 8 5.42 -> 5.31; olmoe T = 128 unchanged (46.0 / 45.9 ms). In a
    // standalone copy of the 1 x 4 tile (int4, qwen2moe's items, thread CPU time): 26.3 -> 29-30 GB/s;
    // 256 ahead 29.2, 1024 29.5, 2048 28.4-29.1; without the next tile's L2 prefetch 20 (it is needed).
    // Tried there and dropped: the 4 panels of a tile interleaved per block into one stream (23.9 vs
    // 26.3 GB/s, 27.6 vs 30 with this prefetch; loads alone, no dot: 18 vs 21), 8 panels a tile (26.7),
    // 2 (25.7), the L2 prefetch two tiles ahead (29.4 vs 30), prefetchnta for it (14-16).
    constexpr int kVecs = Bits, kPieces = 8 / Bits;
    PrefetchSpread const next(pf, pf_bytes, L.blocks);
    std::int64_t const pf_vec = PrefetchSpread::slice_bytes(next.step, kVecs);
    __m512 acc[MR][NP];
    for (int i = 0; i < MR; ++i)
        for (int j = 0; j < NP; ++j) acc[i][j] = _mm512_setzero_ps();
    std::int32_t const* perm = L.perm.empty() ? nullptr : L.perm.data();
    __m512i const mask = _mm512_set1_epi8(static_cast<char>((1 << Bits) - 1));
    __m512i const nibbles = _mm512_broadcast_i32x4(_mm_loadu_si128(reinterpret_cast<__m128i const*>(kE2m1Nibbles)));
    std::int32_t const zc = std::max(L.zero, 0);
    for (std::int64_t b = 0; b < L.blocks; ++b) {
        alignas(64) Q8 local[MR];
        std::int32_t const* qrow[MR];
        float dq[MR], sq[MR];
        if constexpr (!Self) {
            for (int i = 0; i < MR; ++i) {
                qrow[i] = reinterpret_cast<std::int32_t const*>(pre.q + i * pre.qstride + b * kQ8Block);
                dq[i] = pre.d[i * L.blocks + b];
                sq[i] = pre.sum[i * L.blocks + b];
            }
        } else {
            quantize_q8_avx512<MR>(a, lda, perm, b * kQ8Block, std::min(kQ8Block, L.K - b * kQ8Block), local);
            for (int i = 0; i < MR; ++i) {
                qrow[i] = reinterpret_cast<std::int32_t const*>(local[i].q);
                dq[i] = local[i].d;
                sq[i] = static_cast<float>(local[i].sum);
            }
        }
        std::int64_t const t = b / L.blocks_per_group;
        __m512i dot[MR][NP];
#pragma GCC unroll 6
        for (int i = 0; i < MR; ++i) {
            __m512i const z0 = _mm512_set1_epi32(zc * -static_cast<std::int32_t>(sq[i]));
#pragma GCC unroll 4
            for (int j = 0; j < NP; ++j) dot[i][j] = z0;
        }
        // This block's share of the prefetch, a slice per 4-k vector between the loads (all at the top of
        // the block measured ~1 % slower: a burst of prefetches waits for miss buffers the loads need).
        PrefetchSpread block = next.slice(b, pf_vec);
        // Piece c of vector v: k = 4 (v · kPieces + c) + 0..3, against activation dword v · kPieces + c.
#pragma GCC unroll 8
        for (int v = 0; v < kVecs; ++v) {
            __m512i x[NP];
#pragma GCC unroll 4
            for (int j = 0; j < NP; ++j) {
                std::uint8_t const* const at = b0 + j * L.pstride + b * L.block_bytes + v * 64;
                x[j] = _mm512_loadu_si512(at);
                _mm_prefetch(reinterpret_cast<char const*>(at) + kPrefetchDotL1, _MM_HINT_T0);
            }
            block.advance();
#pragma GCC unroll 4
            for (int c = 0; c < kPieces; ++c) {
                __m512i u[NP];
#pragma GCC unroll 4
                for (int j = 0; j < NP; ++j) {
                    u[j] = Bits == 8 ? x[j] : _mm512_and_si512(c == 0 ? x[j] : _mm512_srli_epi16(x[j], c * Bits), mask);
                    if constexpr (Mx) u[j] = _mm512_shuffle_epi8(nibbles, u[j]);
                }
#pragma GCC unroll 6
                for (int i = 0; i < MR; ++i) {
                    __m512i const q4 = _mm512_set1_epi32(qrow[i][v * kPieces + c]);
#pragma GCC unroll 4
                    for (int j = 0; j < NP; ++j) dot[i][j] = _mm512_dpbusd_epi32(dot[i][j], u[j], q4);
                }
            }
        }
#pragma GCC unroll 4
        for (int j = 0; j < NP; ++j) {
            std::uint8_t const* pj = b0 + j * L.pstride;
            __m512 s;
            if constexpr (Mx) {  // 2^(e - 128) exactly, subnormals included (vscalefps: 1 · 2^(e - 128))
                std::uint8_t const* eb = pj + L.scale_off + t * kPanelCols;
                __m512i const e = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<__m128i const*>(eb)));
                s = _mm512_scalef_ps(_mm512_set1_ps(1.0f), _mm512_cvtepi32_ps(_mm512_sub_epi32(e, _mm512_set1_epi32(128))));
            } else {
                s = _mm512_loadu_ps(pj + L.scale_off + t * kPanelCols * 4);
            }
            if (L.zero_tables()) {
                __m512 const z = _mm512_cvtepi32_ps(_mm512_loadu_si512(pj + L.zero_off + t * kPanelCols * 4));
#pragma GCC unroll 6
                for (int i = 0; i < MR; ++i) {
                    __m512 const S = _mm512_fnmadd_ps(z, _mm512_set1_ps(sq[i]), _mm512_cvtepi32_ps(dot[i][j]));
                    acc[i][j] = _mm512_fmadd_ps(S, _mm512_mul_ps(_mm512_set1_ps(dq[i]), s), acc[i][j]);
                }
            } else {
#pragma GCC unroll 6
                for (int i = 0; i < MR; ++i)
                    acc[i][j] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot[i][j]), _mm512_mul_ps(_mm512_set1_ps(dq[i]), s), acc[i][j]);
            }
        }
    }
    for (int i = 0; i < MR; ++i)
        for (int j = 0; j < NP; ++j) _mm512_storeu_ps(out + (i * NP + j) * kPanelCols, acc[i][j]);
}
#endif

#if SMOE_INT8_DOT_NATIVE
// How the AVX2 tile forms a product of 4 weight bytes and 4 activation bytes into an int32 lane.
enum class YmmDot { maddubs, vex, evex };

// acc + vpdpbusd(u, q) on ymm. Inline assembly: an intrinsic's ISA must be an attribute of the function holding
// the loop, and a target("avxvnni") kernel could not share its body with the EVEX one (g++ and clang refuse to
// inline a target's intrinsics into a function without it). "x": ymm0-15, which both encodings reach; the
// AVX2 target lets clang take a 256-bit "x" operand in a translation unit built without AVX.
template <bool Vex>
[[gnu::always_inline]] SMOE_TARGET_AVX2_FMA inline __m256i dpbusd_ymm(__m256i acc, __m256i u, __m256i q) {
    if constexpr (Vex)
        asm("%{vex%} vpdpbusd %2, %1, %0" : "+x"(acc) : "x"(u), "x"(q));
    else
        asm("vpdpbusd %2, %1, %0" : "+x"(acc) : "x"(u), "x"(q));
    return acc;
}

// MR rows x one panel on AVX2: vpmaddubsw multiplies unsigned weight bytes by signed activation bytes
// into int16 pairs, vpmaddwd sums those into int32 lanes. int4 and ternary codes (<= 15) and MXFP4's u
// (<= 24) never saturate the int16 pairs (2 · 24 · 127); int8's u = q + 128 (<= 255) would, so its bytes go
// in as two nibble halves, S = Σ lo·q + 16 Σ hi·q. With AVX-VNNI (D vex or evex) one vpdpbusd does both steps
// in int32, int8 bytes whole.
// Lanes 0-7 and 8-15 of a panel vector are two ymm.
template <int Bits, bool Mx, int MR, YmmDot D>
[[gnu::noinline]] SMOE_TARGET_AVX2_FMA void dot_tile_avx2(float const* a, std::int64_t lda, Q8Rows pre, std::uint8_t const* pj,
                                                          DotLayout const& L, float* out) {
    __m256 acc[MR][2];
    for (int i = 0; i < MR; ++i) acc[i][0] = acc[i][1] = _mm256_setzero_ps();
    std::int32_t const* perm = L.perm.empty() ? nullptr : L.perm.data();
    constexpr int kVecs = Bits, kPieces = 8 / Bits;
    __m256i const nib = _mm256_set1_epi8(15), mask = _mm256_set1_epi8(static_cast<char>(Bits == 8 ? 15 : (1 << Bits) - 1)),
                  ones = _mm256_set1_epi16(1);
    __m256i const nibbles = _mm256_broadcastsi128_si256(_mm_loadu_si128(reinterpret_cast<__m128i const*>(kE2m1Nibbles)));
    for (std::int64_t b = 0; b < L.blocks; ++b) {
        std::int32_t qd[MR][8];
        float dq[MR], sq[MR];
        for (int i = 0; i < MR; ++i) {
            if (pre.q) {
                std::memcpy(qd[i], pre.q + i * pre.qstride + b * kQ8Block, sizeof qd[i]);
                dq[i] = pre.d[i * L.blocks + b];
                sq[i] = pre.sum[i * L.blocks + b];
            } else {
                Q8 q;
                quantize_q8(a + i * lda, perm, b * kQ8Block, std::min(kQ8Block, L.K - b * kQ8Block), q);
                std::memcpy(qd[i], q.q, sizeof qd[i]);
                dq[i] = q.d;
                sq[i] = static_cast<float>(q.sum);
            }
        }
        std::uint8_t const* blk = pj + b * L.block_bytes;
        for (int l = 0; l < kVecs; ++l) _mm_prefetch(reinterpret_cast<char const*>(blk) + kPrefetchDot + 64 * l, _MM_HINT_T1);
        __m256i dot[MR][2];
        for (int i = 0; i < MR; ++i) dot[i][0] = dot[i][1] = _mm256_setzero_si256();
        auto const madd = [&](__m256i u, std::int32_t q4) { return _mm256_madd_epi16(_mm256_maddubs_epi16(u, _mm256_set1_epi32(q4)), ones); };
        auto const dp = [&](__m256i acc, __m256i u, std::int32_t q4) {
            if constexpr (D == YmmDot::maddubs)
                return _mm256_add_epi32(acc, madd(u, q4));
            else
                return dpbusd_ymm<D == YmmDot::vex>(acc, u, _mm256_set1_epi32(q4));
        };
#pragma GCC unroll 8
        for (int v = 0; v < kVecs; ++v)
#pragma GCC unroll 2
            for (int h = 0; h < 2; ++h) {
                __m256i const x = _mm256_loadu_si256(reinterpret_cast<__m256i const*>(blk + v * 64 + h * 32));
                if constexpr (Bits == 8 && D != YmmDot::maddubs) {
#pragma GCC unroll 4
                    for (int i = 0; i < MR; ++i) dot[i][h] = dp(dot[i][h], x, qd[i][v]);
                } else if constexpr (Bits == 8) {  // k 4v..4v+3, u = lo + 16 hi
                    __m256i const lo = _mm256_and_si256(x, nib), hi = _mm256_and_si256(_mm256_srli_epi16(x, 4), nib);
#pragma GCC unroll 4
                    for (int i = 0; i < MR; ++i)
                        dot[i][h] = _mm256_add_epi32(dot[i][h], _mm256_add_epi32(madd(lo, qd[i][v]), _mm256_slli_epi32(madd(hi, qd[i][v]), 4)));
                } else {  // piece c: k = 4 (v · kPieces + c) + 0..3
#pragma GCC unroll 4
                    for (int c = 0; c < kPieces; ++c) {
                        __m256i u = _mm256_and_si256(c == 0 ? x : _mm256_srli_epi16(x, c * Bits), mask);
                        if constexpr (Mx) u = _mm256_shuffle_epi8(nibbles, u);
#pragma GCC unroll 4
                        for (int i = 0; i < MR; ++i) dot[i][h] = dp(dot[i][h], u, qd[i][v * kPieces + c]);
                    }
                }
            }
        std::int64_t const t = b / L.blocks_per_group;
        for (int h = 0; h < 2; ++h) {
            __m256 s;
            if constexpr (Mx) {  // 2^(e - 128): e << 23 is 2^(e - 127) for e >= 1, halved exactly; e = 0 is 2^-128
                std::uint8_t const* eb = pj + L.scale_off + t * kPanelCols + 8 * h;
                __m256i const e = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<__m128i const*>(eb)));
                __m256 const pow2 = _mm256_mul_ps(_mm256_castsi256_ps(_mm256_slli_epi32(e, 23)), _mm256_set1_ps(0.5f));
                s = _mm256_blendv_ps(pow2, _mm256_set1_ps(0x1p-128f), _mm256_castsi256_ps(_mm256_cmpeq_epi32(e, _mm256_setzero_si256())));
            } else {
                s = _mm256_loadu_ps(reinterpret_cast<float const*>(pj + L.scale_off) + t * kPanelCols + 8 * h);
            }
            std::uint8_t const* zt = pj + L.zero_off + (t * kPanelCols + 8 * h) * 4;
            __m256 const z = L.zero_tables() ? _mm256_cvtepi32_ps(_mm256_loadu_si256(reinterpret_cast<__m256i const*>(zt)))
                                             : _mm256_set1_ps(static_cast<float>(L.zero));
            for (int i = 0; i < MR; ++i) {
                __m256 const S = _mm256_fnmadd_ps(z, _mm256_set1_ps(sq[i]), _mm256_cvtepi32_ps(dot[i][h]));
                acc[i][h] = _mm256_fmadd_ps(S, _mm256_mul_ps(_mm256_set1_ps(dq[i]), s), acc[i][h]);
            }
        }
    }
    for (int i = 0; i < MR; ++i) {
        _mm256_storeu_ps(out + i * kPanelCols, acc[i][0]);
        _mm256_storeu_ps(out + i * kPanelCols + 8, acc[i][1]);
    }
}
#endif

#if SMOE_INT8_DOT_NATIVE

// The AVX2 tile of R rows for `kernel` (avx_vnni, avx_vnni_evex or avx2).
template <int Bits, bool Mx, int R>
void dot_tile_ymm(Int8DotKernel kernel, float const* a, std::int64_t lda, Q8Rows pre, std::uint8_t const* pj, DotLayout const& L,
                  float* out) {
    if (kernel == Int8DotKernel::avx_vnni) return dot_tile_avx2<Bits, Mx, R, YmmDot::vex>(a, lda, pre, pj, L, out);
    if (kernel == Int8DotKernel::avx_vnni_evex) return dot_tile_avx2<Bits, Mx, R, YmmDot::evex>(a, lda, pre, pj, L, out);
    dot_tile_avx2<Bits, Mx, R, YmmDot::maddubs>(a, lda, pre, pj, L, out);
}

// gemm_int8_dot on the AVX2 or VNNI kernels, for codes of Bits bits.
template <int Bits, bool Mx, class Epi>
void gemm_int8_dot_native(Int8DotKernel kernel, MatrixView<float const> A, DotLayout const& L, std::uint8_t const* panels,
                          std::int64_t p0, std::int64_t p1, Epi& epi) {
    bool const native = kernel == Int8DotKernel::native;
    std::int64_t const M = A.rows;
    std::int32_t const* perm = L.perm.empty() ? nullptr : L.perm.data();
    alignas(64) float out[12 * kPanelCols];  // the largest tile: 6 rows x 2 panels
    // Rows are quantised once per call, a chunk at a time, into this stack buffer; the panels of a
    // chunk are the outer loop, so each panel pair is read from memory once per chunk and its
    // row tiles find it in L1. A row that does not fit (K above ~65k) is quantised by its tile.
    constexpr std::int64_t kStackBytes = 80 * 1024, kChunk = 36;
    alignas(64) std::int8_t qbuf[kStackBytes];
    std::int64_t const qstride = L.blocks * kQ8Block, per_row = qstride + 8 * L.blocks;
    std::int64_t const MR = native ? 6 : 4;  // rows per tile: 6 x 2 panels fill the 32 zmm registers
    std::int64_t const fit = std::min(kChunk, kStackBytes / per_row), chunk = fit >= MR ? fit / MR * MR : fit;
    if (chunk < 1) {
        Q8Rows const none{nullptr, nullptr, nullptr, qstride};
        for (std::int64_t i = 0; i < M; ++i)
            for (std::int64_t p = p0; p < p1; ++p) {
                std::uint8_t const* pp = panels + p * L.pstride;
                if (!native)
                    dot_tile_ymm<Bits, Mx, 1>(kernel, A.row(i), A.ld, none, pp, L, out);
                else
                    dot_tile_vnni<Bits, Mx, 1, 1, true>(A.row(i), A.ld, none, pp, L, out, p + 1 < p1 ? pp + L.pstride : nullptr, L.pstride);
                epi.store(i, p, out);
            }
        return;
    }
    // The first tile's panels have no tile before them to prefetch them: the row quantisation, which
    // reads no weights, does, an equal share per block (the panels as wide as the loop below starts).
    // Measured (olmoe int4 g128, T = 1, one thread, cold, items as 2 threads cut them): 1.13 -> 1.10 ms
    // a layer with the tiles' spread prefetch; prefetched all at once before the quantisation: 1.14.
    std::int64_t const first = native ? (M <= 2 && p1 - p0 >= 4 ? 4 : std::min<std::int64_t>(2, p1 - p0)) * L.pstride : 0;
    PrefetchSpread first_pf(panels + p0 * L.pstride, first, std::min(chunk, M) * L.blocks);
    for (std::int64_t c0 = 0; c0 < M; c0 += chunk) {
        std::int64_t const cr = std::min(chunk, M - c0);
        auto* const dq = reinterpret_cast<float*>(qbuf + cr * qstride);
        for (std::int64_t i = 0; i < cr; ++i)
            for (std::int64_t b = 0; b < L.blocks; ++b) {
                if (c0 == 0) first_pf.advance();
                Q8 q[1];
                std::int64_t const n = std::min(kQ8Block, L.K - b * kQ8Block);
                if (native)
                    quantize_q8_avx512<1>(A.row(c0 + i), A.ld, perm, b * kQ8Block, n, q);
                else
                    quantize_q8(A.row(c0 + i), perm, b * kQ8Block, n, q[0]);
                std::memcpy(qbuf + i * qstride + b * kQ8Block, q[0].q, kQ8Block);
                dq[i * L.blocks + b] = q[0].d;
                dq[(cr + i) * L.blocks + b] = static_cast<float>(q[0].sum);
            }
        // Rows [m, m + R) of the chunk x panels [p, p + N).
        auto const tile = [&]<int R, int N>(std::int64_t m, std::int64_t p) {
            Q8Rows const pm{qbuf + m * qstride, dq + m * L.blocks, dq + (cr + m) * L.blocks, qstride};
            std::uint8_t const* pp = panels + p * L.pstride;
            if constexpr (N == 1 && R <= 4)
                if (!native) {
                    dot_tile_ymm<Bits, Mx, R>(kernel, nullptr, 0, pm, pp, L, out);
                    store_tile(epi, c0 + m, p, R, 1, out);
                    return;
                }
            // The first row tile of a panel group reads it from memory and prefetches the next group (as
            // wide as this one; the loop below may cut it into narrower tiles, each still in the range);
            // the other row tiles find the group in cache.
            std::uint8_t const* const pf = m == 0 && p + N < p1 ? pp + N * L.pstride : nullptr;
            dot_tile_vnni<Bits, Mx, R, N>(nullptr, 0, pm, pp, L, out, pf, std::min<std::int64_t>(N, p1 - p - N) * L.pstride);
            store_tile(epi, c0 + m, p, R, N, out);
        };
        auto const rows = [&]<int N>(std::int64_t p) {
            for (std::int64_t m = 0; m < cr; m += MR) {
                switch (std::min(MR, cr - m)) {
                    case 1: tile.template operator()<1, N>(m, p); break;
                    case 2: tile.template operator()<2, N>(m, p); break;
                    case 3: tile.template operator()<3, N>(m, p); break;
                    case 4: tile.template operator()<4, N>(m, p); break;
                    case 5: tile.template operator()<5, N>(m, p); break;
                    default: tile.template operator()<6, N>(m, p); break;
                }
            }
        };
        // AVX2: one panel per tile. VNNI: two; one or two rows four (registers to spare): four panels
        // are four streams from memory, and measured cold at 2 rows (one thread) two panels read 20
        // GB/s, four 32 (at 3-4 rows, two tiles of four panels lost to one of two).
        for (std::int64_t p = p0; p < p1;) {
            if (native && cr <= 2 && p1 - p >= 4) {
                if (cr == 1)
                    tile.template operator()<1, 4>(0, p);
                else
                    tile.template operator()<2, 4>(0, p);
                p += 4;
            } else if (native && p1 - p >= 2) {
                rows.template operator()<2>(p);
                p += 2;
            } else {
                rows.template operator()<1>(p++);
            }
        }
    }
}
#endif

}  // namespace detail

// Rows [0, A.rows) x panels [p0, p1) of a matrix in layout L (panel 0 at `panels`), by the chosen kernel.
template <class Epi>
void gemm_int8_dot(Int8DotKernel kernel, MatrixView<float const> A, DotLayout const& L, std::uint8_t const* panels, std::int64_t p0,
                   std::int64_t p1, Epi& epi) {
    std::int64_t const M = A.rows;
    if (M == 0 || p0 >= p1) return;
#if SMOE_INT8_DOT_NATIVE
    if (kernel != Int8DotKernel::portable) {
        switch (L.bits) {
            case 2: return detail::gemm_int8_dot_native<2, false>(kernel, A, L, panels, p0, p1, epi);
            case 4:
                if (L.mx()) return detail::gemm_int8_dot_native<4, true>(kernel, A, L, panels, p0, p1, epi);
                return detail::gemm_int8_dot_native<4, false>(kernel, A, L, panels, p0, p1, epi);
            default: return detail::gemm_int8_dot_native<8, false>(kernel, A, L, panels, p0, p1, epi);
        }
    }
#endif
    (void)kernel;
    for (std::int64_t p = p0; p < p1; ++p) detail::dot_rows_portable(A.data, A.ld, static_cast<int>(M), panels + p * L.pstride, L, p, 0, epi);
}

}  // namespace smoe::inline v0::kernels::cpu
