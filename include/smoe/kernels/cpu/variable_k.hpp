#pragma once
// What the variable-k routers (routing.md §1: top_p, relu, expert_choice, race) share: the token-major row order as one
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

// The same order for any finite w, negative ones too (router::Race's identity scores): the sign bit is
// flipped on non-negative values and every bit on negative ones, so the unsigned order of the result
// is the float order (-0 maps to +0's bits so that the two tie).
SMOE_ALWAYS_INLINE std::uint32_t score_order_bits(float w) {
    std::uint32_t const u = w == 0.0f ? 0u : std::bit_cast<std::uint32_t>(w);
    return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}
SMOE_ALWAYS_INLINE std::uint64_t score_order_key(float w, std::int64_t id) {
    return (static_cast<std::uint64_t>(score_order_bits(w)) << 32) | static_cast<std::uint32_t>(~static_cast<std::uint32_t>(id));
}
SMOE_ALWAYS_INLINE float score_order_weight(std::uint64_t key) {
    auto const k = static_cast<std::uint32_t>(key >> 32);
    return std::bit_cast<float>((k & 0x80000000u) ? (k & 0x7FFFFFFFu) : ~k);
}

// Rows t of ids / w hold count[t] selections; fills columns [count[t], K) with -1 / 0.
inline void pad_rows(MatrixView<std::int32_t> ids, MatrixView<float> w, std::span<std::int32_t const> count, std::int64_t K) {
    for (std::int64_t t = 0; t < ids.rows; ++t) {
        std::fill(ids.row(t) + count[t], ids.row(t) + K, -1);
        std::fill(w.row(t) + count[t], w.row(t) + K, 0.0f);
    }
}

}  // namespace smoe::inline v0::kernels::cpu
