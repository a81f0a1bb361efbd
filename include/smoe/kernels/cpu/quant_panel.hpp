#pragma once
// Panels of quantised expert matrices (formats.md §1-§4), packed once from quant::Matrix for the
// kernels of gemm_quant.hpp. As pack.hpp's panels, a panel is 16 output units ("slots") of W [N, K]
// over the whole K, stored so that one k step of 16 slots is one contiguous code vector:
//
//   bytes per k step: f32 64 (floats), bf16 32 (bf16), int8/fp8 16 (one byte per slot),
//                     int4/mxfp4 8 (byte j = slot j in the low nibble, slot j + 8 in the high one),
//                     ternary 4 (the little-endian dword's bits 2s..2s+1 = slot s)
//   then, for the scaled formats, one table of 16 fp32 factors per group ("table") and, for int4 and
//   ternary, one of 16 fp32 zero points; a panel is padded to 64 bytes.
//
// Runs map k steps to tables: steps [k0, k1) use table t (int4 groups, fp8 column blocks, MXFP4's
// 32-column blocks; one run for int8 and the dense formats). Act order (GPTQ desc_act) stores the steps
// in group order (a stable sort of the columns by gidx) and step k reads input column perm[k]: formats.md
// §1.1 allows the reordering; the weights are the same function.
//
// A slot with no unit (N not a multiple of 16) decodes to +0: code 0, factor 0, zero point 0.
// Ternary (research.md §7): 2 bits per weight in memory, codes u = t + 1, zero point 1 (0 for an empty
// slot), its scale (tensor, row or group) in the factor tables, so (u - z) · s is W_deq exactly, the
// expression and the bits of int4 with those codes: half of int4's code bytes per weight.

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <numeric>
#include <vector>

#include "smoe/core/bf16.hpp"
#include "smoe/kernels/cpu/pack.hpp"
#include "smoe/quant/matrix.hpp"

namespace smoe::inline v0::kernels::cpu {

struct QuantRun {
    std::int64_t k0, k1, table;
};

struct QuantLayout {
    quant::Kind kind = quant::Kind::f32;
    std::int64_t K = 0;           // dot length (columns of W)
    std::int64_t step_bytes = 0;  // code bytes per k step
    std::int64_t tables = 0;      // factor tables per panel (0: dense)
    std::int64_t scale_off = 0, zero_off = 0, pstride = 0;  // bytes from a panel's start; bytes per panel
    std::vector<QuantRun> runs;
    std::vector<std::int32_t> perm;  // act order: input column of step k; empty: column k

    bool has_perm() const { return !perm.empty(); }
};

inline std::int64_t quant_step_bytes(quant::Kind k) {
    switch (k) {
        case quant::Kind::f32: return 64;
        case quant::Kind::bf16: return 32;
        case quant::Kind::int8_channel:
        case quant::Kind::fp8: return 16;
        case quant::Kind::ternary: return 4;
        default: return 8;
    }
}

// Formats whose panels hold a table of zero points next to the factors.
constexpr bool has_zero_points(quant::Kind k) { return k == quant::Kind::int4 || k == quant::Kind::ternary; }

// The layout of a matrix of K columns in format f; act order takes its gidx from `m` (gate and up
// share a panel, so they must share gidx: the caller checks).
inline QuantLayout quant_layout(quant::Format const& f, std::int64_t K, quant::Matrix const* m = nullptr) {
    QuantLayout L;
    L.kind = f.kind;
    L.K = K;
    L.step_bytes = quant_step_bytes(L.kind);
    auto const round64 = [](std::int64_t b) { return (b + 63) / 64 * 64; };
    std::int64_t const code = round64(K * L.step_bytes);
    L.tables = f.scaled() ? (f.kind == quant::Kind::int8_channel ? 1 : f.groups(K)) : 0;
    L.scale_off = code;
    L.zero_off = code + L.tables * kPanelCols * 4;
    L.pstride = L.zero_off + (has_zero_points(L.kind) ? L.tables * kPanelCols * 4 : 0);
    if (K == 0) return L;
    if (L.tables <= 1) {
        L.runs.push_back({0, K, 0});
        return L;
    }
    std::int64_t const g = f.group_cols(K);
    for (std::int64_t t = 0; t < L.tables; ++t) L.runs.push_back({t * g, std::min(K, (t + 1) * g), t});
    if (f.kind == quant::Kind::int4 && f.act_order && m) {  // GPTQ's desc_act: int4 only
        L.perm.resize(static_cast<std::size_t>(K));
        std::iota(L.perm.begin(), L.perm.end(), 0);
        std::stable_sort(L.perm.begin(), L.perm.end(),
                         [&](std::int32_t a, std::int32_t b) { return m->gidx[static_cast<std::size_t>(a)] < m->gidx[static_cast<std::size_t>(b)]; });
    }
    return L;
}

// A slot's source: row `row` of matrix `m`, or nothing.
struct QuantSlot {
    quant::Matrix const* m = nullptr;
    std::int64_t row = 0;
};

// Writes one panel of L.pstride bytes at dst from the 16 slots.
inline void pack_quant_panel(std::uint8_t* dst, QuantLayout const& L, QuantSlot const (&slot)[kPanelCols]) {
    std::memset(dst, 0, static_cast<std::size_t>(L.pstride));
    std::int64_t const K = L.K;
    auto const col = [&](std::int64_t k) { return L.has_perm() ? L.perm[static_cast<std::size_t>(k)] : k; };
    for (int s = 0; s < kPanelCols; ++s) {
        quant::Matrix const* m = slot[s].m;
        if (!m) continue;
        std::int64_t const o = slot[s].row;
        for (std::int64_t k = 0; k < K; ++k) {
            std::int64_t const i = col(k);
            std::uint8_t* const step = dst + k * L.step_bytes;
            switch (L.kind) {
                case quant::Kind::f32: std::memcpy(step + 4 * s, &m->values[static_cast<std::size_t>(o * K + i)], 4); break;
                case quant::Kind::bf16: {
                    bf16 const b = to_bf16(m->values[static_cast<std::size_t>(o * K + i)]);
                    std::memcpy(step + 2 * s, &b, 2);
                    break;
                }
                case quant::Kind::int8_channel:
                case quant::Kind::fp8: step[s] = m->codes[static_cast<std::size_t>(o * K + i)]; break;
                case quant::Kind::ternary: step[s / 4] |= static_cast<std::uint8_t>(m->codes[static_cast<std::size_t>(o * K + i)] << (2 * (s % 4))); break;
                default: step[s % 8] |= static_cast<std::uint8_t>(m->codes[static_cast<std::size_t>(o * K + i)] << (s < 8 ? 0 : 4));
            }
        }
        for (auto const& run : L.runs) {
            if (L.tables == 0) break;
            std::int64_t const i = col(run.k0);  // every step of a run has the same factor
            float const sc = m->scale_of(o, i);
            std::memcpy(dst + L.scale_off + (run.table * kPanelCols + s) * 4, &sc, 4);
            if (has_zero_points(L.kind)) {
                auto const z = static_cast<float>(m->zero_of(o, i));
                std::memcpy(dst + L.zero_off + (run.table * kPanelCols + s) * 4, &z, 4);
            }
        }
    }
}

}  // namespace smoe::inline v0::kernels::cpu
