#pragma once
// The selection step of router::ExpertChoice (routing.md §3): every expert keeps its top-C tokens by
// one column of the score matrix, and the kept pairs are written token-major. A column's order is
// (score descending, token ascending); packing both into one 64-bit key makes that order a plain
// integer order, so std::nth_element finds the top C in O(T) per expert with no comparator branches.

#include <algorithm>
#include <bit>
#include <cstdint>
#include <functional>
#include <span>

#include "smoe/core/view.hpp"
#include "smoe/kernels/cpu/softmax_topk.hpp"
#include "smoe/kernels/cpu/variable_k.hpp"

namespace smoe::inline v0::kernels::cpu {

// Expert choice picks tokens for an expert by (score descending, token ascending): the same order as
// weight_order_key with the token id in the id's place.

// Sorts one token-major row by (weight descending, id ascending), for any finite weights (race's may be
// negative). Insertion sort for short rows (the common case, and the one sort_by_weight is tuned for),
// std::sort on keys for dense rows.
inline void sort_row_by_weight(std::int32_t* ids, float* w, std::int64_t n, std::span<std::uint64_t> scratch) {
    if (n <= 32) {
        sort_by_weight(ids, w, n);
        return;
    }
    for (std::int64_t j = 0; j < n; ++j) scratch[j] = score_order_key(w[j], ids[j]);
    std::sort(scratch.begin(), scratch.begin() + n, std::greater<>{});
    for (std::int64_t j = 0; j < n; ++j) {
        ids[j] = weight_order_id(scratch[j]);
        w[j] = score_order_weight(scratch[j]);
    }
}

// score [T, E] (row-major, >= 0); every expert takes its top c_eff <= T tokens. Writes each token's
// pairs into its row of ids / w (>= E columns), sorted by weight, pads to the returned K (the largest
// count of any token) with -1 / 0. keys: [max(T, E)] scratch; count: [T] scratch.
inline std::int64_t expert_choice_select(MatrixView<float const> score, std::int64_t c_eff, MatrixView<std::int32_t> ids,
                                         MatrixView<float> w, std::span<std::uint64_t> keys, std::span<std::int32_t> count) {
    std::int64_t const T = score.rows, E = score.cols;
    std::fill(count.begin(), count.begin() + T, 0);
    auto take = [&](std::int64_t t, std::int64_t e) {
        std::int32_t& n = count[t];
        ids(t, n) = static_cast<std::int32_t>(e);
        w(t, n) = score(t, e);
        ++n;
    };
    for (std::int64_t e = 0; e < E && c_eff > 0; ++e) {
        if (c_eff >= T) {  // C >= T: the expert takes every token (every T = 1 call; routing.md §3)
            for (std::int64_t t = 0; t < T; ++t) take(t, e);
            continue;
        }
        for (std::int64_t t = 0; t < T; ++t) keys[t] = weight_order_key(score(t, e), t);
        std::nth_element(keys.begin(), keys.begin() + (c_eff - 1), keys.begin() + T, std::greater<>{});
        for (std::int64_t i = 0; i < c_eff; ++i) take(weight_order_id(keys[i]), e);
    }
    std::int64_t K = 0;
    for (std::int64_t t = 0; t < T; ++t) K = std::max<std::int64_t>(K, count[t]);
    for (std::int64_t t = 0; t < T; ++t) sort_row_by_weight(ids.row(t), w.row(t), count[t], keys);
    pad_rows(ids, w, count, K);
    return K;
}

}  // namespace smoe::inline v0::kernels::cpu
