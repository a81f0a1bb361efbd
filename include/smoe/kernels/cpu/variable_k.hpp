#pragma once
// What the variable-k routers (routing.md §1: top_p, relu, expert_choice) share: the token-major row order as one
// integer key, and the padding of every row to the batch's K once all counts are known.

#include <algorithm>
#include <bit>
#include <cstdint>
#include <span>

#include "smoe/core/view.hpp"
#include "smoe/macros.hpp"

namespace smoe::inline v0::kernels::cpu {

// A key whose unsigned order is the token-major row order of routing.md §1 (weight descending, then
// the lower expert id) for weights w >= 0: the bit pattern of a non-negative float increases with its
// value (-0 is mapped to +0 so that the two tie), and the low half is the complemented id.
SMOE_ALWAYS_INLINE std::uint64_t weight_order_key(float w, std::int64_t id) {
    std::uint32_t const bits = w == 0.0f ? 0u : std::bit_cast<std::uint32_t>(w);
    return (static_cast<std::uint64_t>(bits) << 32) | static_cast<std::uint32_t>(~static_cast<std::uint32_t>(id));
}
SMOE_ALWAYS_INLINE std::int32_t weight_order_id(std::uint64_t key) {
    return static_cast<std::int32_t>(~static_cast<std::uint32_t>(key));
}
SMOE_ALWAYS_INLINE float weight_order_weight(std::uint64_t key) {
    return std::bit_cast<float>(static_cast<std::uint32_t>(key >> 32));
}

// Rows t of ids / w hold count[t] selections; fills columns [count[t], K) with -1 / 0.
inline void pad_rows(MatrixView<std::int32_t> ids, MatrixView<float> w, std::span<std::int32_t const> count, std::int64_t K) {
    for (std::int64_t t = 0; t < ids.rows; ++t) {
        std::fill(ids.row(t) + count[t], ids.row(t) + K, -1);
        std::fill(w.row(t) + count[t], w.row(t) + K, 0.0f);
    }
}

}  // namespace smoe::inline v0::kernels::cpu
