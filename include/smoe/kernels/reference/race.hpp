#pragma once
// Scalar oracle for smoe::router::Race (research.md §4), straight from the definition: scores in
// double rounded once to fp32, then per race group every candidate (t, e) sorted by (score descending,
// token ascending, expert ascending) with a plain comparison sort, the first k · |g| kept with w = s.
// Rows by weight descending, ties to the lower id; K = the largest count; padding -1 / 0.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <tuple>
#include <utility>
#include <vector>

#include "smoe/core/error.hpp"
#include "smoe/core/routing.hpp"
#include "smoe/core/view.hpp"
#include "smoe/kernels/reference/dispatch.hpp"
#include "smoe/kernels/reference/topk.hpp"
#include "smoe/router/race.hpp"

namespace smoe::inline v0::reference {

inline RoutingData route_race(router::RaceConfig const& cfg, MatrixView<float const> logits) {
    cfg.validate();
    auto const E = cfg.num_experts;
    auto const T = detail::check_logits(logits, E, E);

    std::vector<float> const s = detail::rounded_scores(
        logits, cfg.score == router::RaceScore::identity  ? detail::RowScore::identity
                : cfg.score == router::RaceScore::sigmoid ? detail::RowScore::sigmoid
                                                          : detail::RowScore::softmax);

    std::vector<std::vector<std::pair<float, std::int64_t>>> rows(static_cast<std::size_t>(T));
    std::int64_t const g = cfg.race_group > 0 ? cfg.race_group : std::max<std::int64_t>(T, 1);
    for (std::int64_t t0 = 0; t0 < T; t0 += g) {
        std::int64_t const n = std::min(g, T - t0);
        std::vector<std::tuple<float, std::int64_t, std::int64_t>> cand;  // (score, token, expert)
        for (std::int64_t t = t0; t < t0 + n; ++t)
            for (std::int64_t e = 0; e < E; ++e) cand.emplace_back(s[static_cast<std::size_t>(t * E + e)], t, e);
        std::sort(cand.begin(), cand.end(), [](auto const& a, auto const& b) {
            if (std::get<0>(a) != std::get<0>(b)) return std::get<0>(a) > std::get<0>(b);  // +0 == -0
            if (std::get<1>(a) != std::get<1>(b)) return std::get<1>(a) < std::get<1>(b);
            return std::get<2>(a) < std::get<2>(b);
        });
        for (std::int64_t i = 0; i < cfg.top_k * n; ++i) {
            auto const [w, t, e] = cand[static_cast<std::size_t>(i)];
            rows[static_cast<std::size_t>(t)].emplace_back(w, e);
        }
    }

    std::int64_t K = 0;
    for (auto const& r : rows) K = std::max<std::int64_t>(K, static_cast<std::int64_t>(r.size()));
    std::vector<std::int32_t> ids(static_cast<std::size_t>(T * K), -1);
    std::vector<float> weights(static_cast<std::size_t>(T * K), 0.0f);
    for (std::int64_t t = 0; t < T; ++t) write_row_by_weight(std::move(rows[static_cast<std::size_t>(t)]), t, K, ids, weights);
    return from_token_major(T, K, E, std::move(ids), std::move(weights));
}

}  // namespace smoe::inline v0::reference
