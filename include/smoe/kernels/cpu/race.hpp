#pragma once
// The selection step of router::Race (research.md §4): one race group's n × E candidates compete for
// k · n places in the order (score descending, token ascending, expert ascending). Packing the score's
// order bits and the complemented candidate index t · E + e into one 64-bit key makes that order a
// plain integer order, so std::nth_element finds the winners in O(n · E) with no comparator branches
// (the index fits 32 bits: the router checks T · E < 2^31).

#include <algorithm>
#include <cstdint>
#include <functional>
#include <span>

#include "smoe/core/view.hpp"
#include "smoe/kernels/cpu/expert_choice.hpp"
#include "smoe/kernels/cpu/variable_k.hpp"

namespace smoe::inline v0::kernels::cpu {

// score [T, E] (finite); tokens [t0, t0 + n) race for `budget` places among the experts `allowed`
// (empty: all). Appends each winner (e, score) to its token's row of ids / w; count [T] holds the
// rows' lengths (zero them before the first group). keys: [n · E] scratch.
inline void race_group_select(MatrixView<float const> score, std::int64_t t0, std::int64_t n, std::int64_t budget,
                              std::span<std::uint8_t const> allowed, MatrixView<std::int32_t> ids, MatrixView<float> w,
                              std::span<std::uint64_t> keys, std::span<std::int32_t> count) {
    std::int64_t const E = score.cols;
    std::int64_t m = 0;
    for (std::int64_t t = 0; t < n; ++t) {
        float const* s = score.row(t0 + t);
        if (allowed.empty()) {
            for (std::int64_t e = 0; e < E; ++e) keys[m++] = score_order_key(s[e], t * E + e);
        } else {
            for (std::int64_t e = 0; e < E; ++e)
                if (allowed[static_cast<std::size_t>(e)]) keys[m++] = score_order_key(s[e], t * E + e);
        }
    }
    std::int64_t const take = std::min(budget, m);
    if (take <= 0) return;
    if (take < m) std::nth_element(keys.begin(), keys.begin() + (take - 1), keys.begin() + m, std::greater<>{});
    for (std::int64_t i = 0; i < take; ++i) {
        std::int64_t const idx = weight_order_id(keys[i]);
        std::int64_t const t = t0 + idx / E, e = idx % E;
        std::int32_t& c = count[t];
        ids(t, c) = static_cast<std::int32_t>(e);
        w(t, c) = score(t, e);
        ++c;
    }
}

// Every group of `group` consecutive tokens (0: all T) races with budget k · (its size); then each
// row is sorted by weight (ties to the lower id) and padded to the returned K, the largest count.
inline std::int64_t race_select(MatrixView<float const> score, std::int64_t k, std::int64_t group,
                                std::span<std::uint8_t const> allowed, MatrixView<std::int32_t> ids, MatrixView<float> w,
                                std::span<std::uint64_t> keys, std::span<std::int32_t> count) {
    std::int64_t const T = score.rows;
    std::int64_t const g = group > 0 ? group : std::max<std::int64_t>(T, 1);
    std::fill(count.begin(), count.begin() + T, 0);
    for (std::int64_t t0 = 0; t0 < T; t0 += g) {
        std::int64_t const n = std::min(g, T - t0);
        race_group_select(score, t0, n, k * n, allowed, ids, w, keys, count);
    }
    std::int64_t K = 0;
    for (std::int64_t t = 0; t < T; ++t) {
        K = std::max<std::int64_t>(K, count[t]);
        sort_row_by_weight(ids.row(t), w.row(t), count[t], keys);
    }
    pad_rows(ids, w, count, K);
    return K;
}

}  // namespace smoe::inline v0::kernels::cpu
