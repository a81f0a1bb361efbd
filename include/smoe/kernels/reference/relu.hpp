#pragma once
// Scalar oracle for smoe::router::ReLU (routing.md §6): w = max(x, 0) for the experts with x > 0
// (strictly), rows ordered by weight descending with ties to the lower id, K = the batch's largest
// count (0 when nothing is selected), shorter rows padded with -1 / 0.

#include <algorithm>
#include <cstdint>
#include <utility>
#include <vector>

#include "smoe/core/error.hpp"
#include "smoe/core/routing.hpp"
#include "smoe/core/view.hpp"
#include "smoe/kernels/reference/dispatch.hpp"
#include "smoe/kernels/reference/topk.hpp"
#include "smoe/router/relu.hpp"

namespace smoe::inline v0::reference {

inline RoutingData route_relu(router::ReLUConfig const& cfg, MatrixView<float const> logits) {
    cfg.validate();
    auto const E = cfg.num_experts;
    auto const T = detail::check_logits(logits, E, E);

    std::vector<std::vector<std::pair<float, std::int64_t>>> rows(static_cast<std::size_t>(T));
    std::int64_t K = 0;
    for (std::int64_t t = 0; t < T; ++t) {
        for (std::int64_t e = 0; e < E; ++e) {
            double const x = logits(t, e);
            if (x > 0.0) rows[t].emplace_back(static_cast<float>(std::max(x, 0.0)), e);
        }
        K = std::max(K, static_cast<std::int64_t>(rows[t].size()));
    }

    std::vector<std::int32_t> ids(static_cast<std::size_t>(T * K), -1);
    std::vector<float> weights(static_cast<std::size_t>(T * K), 0.0f);
    for (std::int64_t t = 0; t < T; ++t) write_row_by_weight(std::move(rows[t]), t, K, ids, weights);
    return from_token_major(T, K, E, std::move(ids), std::move(weights));
}

}  // namespace smoe::inline v0::reference
