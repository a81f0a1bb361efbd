#pragma once
// The routing result (spec routing.md §1): one set of (token, expert, weight) selections seen two ways,
// expert-major CSR (what dispatch consumes) and token-major [T, K] (what combine and the host consume).

#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "smoe/core/error.hpp"
#include "smoe/core/view.hpp"

namespace smoe::inline v0 {

// Read-only view of one routing; the buffers belong to a workspace or to a RoutingData.
struct RoutingResult {
    std::int64_t num_tokens = 0;   // T
    std::int64_t num_experts = 0;  // E: CSR rows (true experts only)
    std::int64_t k = 0;            // K: slots per token in the token-major view

    std::span<std::int32_t const> offsets;    // [E+1], offsets[0] = 0, offsets[E] = nnz
    std::span<std::int32_t const> token_ids;  // [nnz], strictly increasing within one expert
    std::span<float const> weights;           // [nnz]
    // [nnz]: the token-major slot t*K + j of each CSR row, so combine can sum in slot order
    // (experts.md §1 rule 2) without searching.
    std::span<std::int32_t const> slots;

    MatrixView<std::int32_t const> expert_ids;  // [T, K], weight descending, ties to the lower id; pad -1
    MatrixView<float const> expert_weights;     // [T, K], pad 0

    // [T*K] 1 where a capacity balancer dropped the slot (it is in neither the CSR nor the output);
    // empty when the balancer never drops.
    std::span<std::uint8_t const> dropped;
    // > 0 when the balancer pads: every expert's segment was computed with exactly this many rows
    // (the CSR still lists the real rows only).
    std::int64_t padded_rows = 0;

    std::int64_t nnz() const { return offsets.empty() ? 0 : offsets.back(); }
    std::int32_t load(std::int64_t e) const { return offsets[e + 1] - offsets[e]; }
};

// Where a router writes its token-major selections: [T, Kmax] buffers. A fixed-k router fills K = k
// columns; a variable-k router pads each row with -1 / 0 and returns the batch's K.
struct TokenMajorOut {
    MatrixView<std::int32_t> expert_ids;
    MatrixView<float> expert_weights;
};

// Owning storage for one routing: what the scalar oracle returns and what tests compare. Plain vectors.
struct RoutingData {
    std::int64_t num_tokens = 0, num_experts = 0, k = 0;
    std::vector<std::int32_t> offsets, token_ids, slots;
    std::vector<float> weights;
    std::vector<std::int32_t> expert_ids;  // [T * K]
    std::vector<float> expert_weights;     // [T * K]

    RoutingResult view() const {
        RoutingResult r;
        r.num_tokens = num_tokens;
        r.num_experts = num_experts;
        r.k = k;
        r.offsets = offsets;
        r.token_ids = token_ids;
        r.weights = weights;
        r.slots = slots;
        r.expert_ids = MatrixView<std::int32_t const>(expert_ids.data(), num_tokens, k);
        r.expert_weights = MatrixView<float const>(expert_weights.data(), num_tokens, k);
        return r;
    }
};

namespace detail {

// nnz and T*K index int32 arrays (routing.md §1).
inline void check_int32_extent(std::int64_t tokens, std::int64_t k) {
    if (tokens < 0) fail("num_tokens", tokens, "a count >= 0");
    if (k > 0 && tokens > INT32_MAX / k)
        fail("num_tokens", tokens,
             "num_tokens * K <= 2^31 - 1 so that routing indices fit int32 (K = " + std::to_string(k) + ")");
}

}  // namespace detail
}  // namespace smoe::inline v0
