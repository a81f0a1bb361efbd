#pragma once
// Combine: y_t = Σ_j slot_out[row(t, j)] in slot order j = 0..K-1 (experts.md §1 rule 2), where each
// expert already multiplied its rows by their weights. A slot that was not dispatched (padding, null
// or dropped) is skipped, never added as 0 · x, so a NaN in another row cannot leak in (rule 4).
// Tokens without a dispatched slot get 0.

#include <cstdint>
#include <cstring>
#include <span>

#include "smoe/detail/xsimd.hpp"

#include "smoe/core/view.hpp"

namespace smoe::inline v0::kernels::cpu {

template <class Arch>
void combine_slots(Arch, MatrixView<float const> slot_out, std::span<std::int32_t const> slot_rows, std::int64_t K,
                   MatrixView<float> y) {
    using batch = xsimd::batch<float, Arch>;
    constexpr std::int64_t W = batch::size;
    std::int64_t const d = y.cols;
    for (std::int64_t t = 0; t < y.rows; ++t) {
        float* yt = y.row(t);
        bool first = true;
        for (std::int64_t j = 0; j < K; ++j) {
            std::int32_t const row = slot_rows[t * K + j];
            if (row < 0) continue;
            float const* src = slot_out.row(row);
            if (first) {
                std::memcpy(yt, src, static_cast<std::size_t>(d) * sizeof(float));
                first = false;
                continue;
            }
            std::int64_t i = 0;
            for (; i + W <= d; i += W) (batch::load_unaligned(yt + i) + batch::load_unaligned(src + i)).store_unaligned(yt + i);
            for (; i < d; ++i) yt[i] += src[i];
        }
        if (first) std::memset(yt, 0, static_cast<std::size_t>(d) * sizeof(float));
    }
}

}  // namespace smoe::inline v0::kernels::cpu
