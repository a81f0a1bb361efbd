#pragma once
// Scalar oracle for dispatch: the expert-major CSR of routing.md §1 built from a token-major [T, K]
// selection. Written as the three plain loops of the definition so a reviewer can check it by eye;
// the fast counting-sort dispatch is tested against it.

#include <algorithm>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "smoe/core/error.hpp"
#include "smoe/core/routing.hpp"

namespace smoe::inline v0::reference {

// Takes ownership of the token-major rows as given (their order is the router's business) and adds
// the CSR. Ids of -1 are padding; ids >= E are null experts (routing.md §5): both stay in the
// token-major view and never enter the CSR.
inline RoutingData from_token_major(std::int64_t T, std::int64_t K, std::int64_t E, std::vector<std::int32_t> expert_ids,
                                    std::vector<float> expert_weights) {
    using smoe::detail::fail;
    if (E < 0) fail("num_experts", E, "E >= 0");
    if (K < 0) fail("k", K, "K >= 0");
    smoe::detail::check_int32_extent(T, K);
    auto const n = T * K;
    if (static_cast<std::int64_t>(expert_ids.size()) != n)
        fail("expert_ids", "length " + std::to_string(expert_ids.size()), "T * K = " + std::to_string(n));
    if (static_cast<std::int64_t>(expert_weights.size()) != n)
        fail("expert_weights", "length " + std::to_string(expert_weights.size()), "T * K = " + std::to_string(n));

    // "A pair appears at most once" (§1): a duplicate would be dispatched twice and counted twice as
    // load, so it is rejected here rather than silently summed.
    for (std::int64_t t = 0; t < T; ++t) {
        for (std::int64_t j = 0; j < K; ++j) {
            auto const id = expert_ids[t * K + j];
            if (id < -1)
                fail("expert_ids", std::to_string(id) + " (token " + std::to_string(t) + ", slot " + std::to_string(j) + ")",
                     "an expert id >= 0, or -1 for padding");
            if (id == -1) continue;
            for (std::int64_t i = 0; i < j; ++i)
                if (expert_ids[t * K + i] == id)
                    fail("expert_ids",
                         std::to_string(id) + " (token " + std::to_string(t) + ", slots " + std::to_string(i) + " and " +
                             std::to_string(j) + ")",
                         "each expert at most once per token");
        }
    }

    RoutingData r;
    r.num_tokens = T;
    r.num_experts = E;
    r.k = K;
    r.offsets.assign(static_cast<std::size_t>(E + 1), 0);
    // Visiting tokens in increasing order inside each expert is what makes token_ids strictly
    // increasing within a CSR row; no sort needed.
    for (std::int64_t e = 0; e < E; ++e) {
        for (std::int64_t t = 0; t < T; ++t) {
            for (std::int64_t j = 0; j < K; ++j) {
                auto const s = t * K + j;
                if (expert_ids[s] != e) continue;
                r.token_ids.push_back(static_cast<std::int32_t>(t));
                r.weights.push_back(expert_weights[s]);  // the same float: both views bit-identical
                r.slots.push_back(static_cast<std::int32_t>(s));
            }
        }
        r.offsets[e + 1] = static_cast<std::int32_t>(r.token_ids.size());
    }
    r.expert_ids = std::move(expert_ids);
    r.expert_weights = std::move(expert_weights);
    return r;
}

// One token-major row (routing.md §1): the (fp32 weight, id) pairs ordered by the stored weight
// descending, ties to the lower id, written to row t of ids / weights [T, K]. Columns past the pairs
// keep whatever padding the caller put there.
inline void write_row_by_weight(std::vector<std::pair<float, std::int64_t>> row, std::int64_t t, std::int64_t K,
                                std::vector<std::int32_t>& ids, std::vector<float>& weights) {
    std::sort(row.begin(), row.end(), [](auto const& a, auto const& b) {
        return a.first > b.first || (a.first == b.first && a.second < b.second);
    });
    for (std::size_t j = 0; j < row.size(); ++j) {
        ids[t * K + static_cast<std::int64_t>(j)] = static_cast<std::int32_t>(row[j].second);
        weights[t * K + static_cast<std::int64_t>(j)] = row[j].first;
    }
}

}  // namespace smoe::inline v0::reference
