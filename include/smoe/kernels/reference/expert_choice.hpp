#pragma once
// Scalar oracle for smoe::router::ExpertChoice (routing.md §3), straight from the spec's steps: scores
// in double from the fp32 logits, rounded once to fp32; each expert sorts all T tokens by
// (fp32 score descending, token ascending) and keeps the first min(C, T). Selection compares the
// rounded fp32 scores because §0 defines ties on fp32 values: two tokens with the same logits (in any
// order) must tie, and double sums in different orders could split them by an ulp.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <numeric>
#include <utility>
#include <vector>

#include "smoe/core/error.hpp"
#include "smoe/core/routing.hpp"
#include "smoe/core/view.hpp"
#include "smoe/kernels/reference/dispatch.hpp"
#include "smoe/kernels/reference/topk.hpp"
#include "smoe/router/expert_choice.hpp"

namespace smoe::inline v0::reference {

// C of routing.md §3 step 2, written out again here rather than taken from the config, so the oracle
// checks the router's rounding instead of sharing it.
inline std::int64_t expert_choice_capacity(router::ExpertChoiceConfig const& cfg, std::int64_t T) {
    if (cfg.capacity) return *cfg.capacity;
    double const ratio = static_cast<double>(T) / static_cast<double>(cfg.num_experts);
    double const c = std::ceil(ratio * *cfg.capacity_factor);
    return c >= 9.2e18 ? INT64_MAX : static_cast<std::int64_t>(c);
}

inline RoutingData route_expert_choice(router::ExpertChoiceConfig const& cfg, MatrixView<float const> logits) {
    cfg.validate();
    auto const E = cfg.num_experts;
    auto const T = detail::check_logits(logits, E, E);

    // Step 1: s[t, e] in double, rounded once to fp32.
    std::vector<float> const s = detail::rounded_scores(
        logits, cfg.score_func == router::ScoreFunc::softmax ? detail::RowScore::softmax : detail::RowScore::sigmoid);

    // Steps 2-4: every expert sorts the tokens by the tie rule and keeps the first C_eff.
    std::int64_t const c_eff = std::min(expert_choice_capacity(cfg, T), T);
    std::vector<std::vector<std::pair<float, std::int64_t>>> rows(static_cast<std::size_t>(T));  // (w, expert) per token
    std::vector<std::int64_t> order(static_cast<std::size_t>(T));
    for (std::int64_t e = 0; e < E; ++e) {
        std::iota(order.begin(), order.end(), std::int64_t{0});
        std::sort(order.begin(), order.end(), [&](std::int64_t a, std::int64_t b) {
            float const sa = s[a * E + e], sb = s[b * E + e];
            return sa > sb || (sa == sb && a < b);
        });
        for (std::int64_t i = 0; i < c_eff; ++i)
            rows[order[i]].emplace_back(s[order[i] * E + e], static_cast<std::int32_t>(e));
    }

    // Step 5 and §1: K is the largest count; rows by weight descending, ties to the lower id; pad -1 / 0.
    std::int64_t K = 0;
    for (auto const& r : rows) K = std::max<std::int64_t>(K, static_cast<std::int64_t>(r.size()));
    std::vector<std::int32_t> ids(static_cast<std::size_t>(T * K), -1);
    std::vector<float> weights(static_cast<std::size_t>(T * K), 0.0f);
    for (std::int64_t t = 0; t < T; ++t) write_row_by_weight(std::move(rows[t]), t, K, ids, weights);
    return from_token_major(T, K, E, std::move(ids), std::move(weights));
}

}  // namespace smoe::inline v0::reference
