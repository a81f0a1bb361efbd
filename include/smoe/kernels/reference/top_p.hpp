#pragma once
// Scalar oracle for smoe::router::TopP (routing.md §4), straight from the spec's numbered steps. The
// probabilities are computed in double from the fp32 logits and rounded to fp32 once; the spec defines
// the order and the prefix rule on those fp32 probabilities, so both are evaluated exactly as written
// (order by the fp32 s, ties to the lower id; prefix sums accumulated in fp32; strictly greater than p).
// A fast kernel whose fp32 sums land within rounding of p may decide the other way (routing.md §0).

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <utility>
#include <vector>

#include "smoe/core/error.hpp"
#include "smoe/core/routing.hpp"
#include "smoe/core/view.hpp"
#include "smoe/kernels/reference/dispatch.hpp"
#include "smoe/kernels/reference/topk.hpp"
#include "smoe/router/top_p.hpp"

namespace smoe::inline v0::reference {

// Routes T tokens: logits [T, E] (fp32). K = the largest count in the batch (0 for T = 0), shorter rows
// padded with -1 / 0.
inline RoutingData route_top_p(router::TopPConfig const& cfg, MatrixView<float const> logits) {
    cfg.validate();
    auto const E = cfg.num_experts;
    auto const T = detail::check_logits(logits, E, cfg.max_selected());

    std::vector<std::vector<std::pair<std::int32_t, float>>> rows(static_cast<std::size_t>(T));
    std::int64_t K = 0;
    for (std::int64_t t = 0; t < T; ++t) {
        // 1. s = softmax(x), in double, rounded once.
        double m = logits(t, 0);
        for (std::int64_t e = 1; e < E; ++e) m = std::max(m, double(logits(t, e)));
        double z = 0.0;
        for (std::int64_t e = 0; e < E; ++e) z += std::exp(double(logits(t, e)) - m);
        std::vector<float> s(static_cast<std::size_t>(E));
        for (std::int64_t e = 0; e < E; ++e) s[e] = static_cast<float>(std::exp(double(logits(t, e)) - m) / z);
        // 2. Order by s descending, ties to the lower id.
        std::vector<std::int32_t> order(static_cast<std::size_t>(E));
        for (std::int64_t e = 0; e < E; ++e) order[e] = static_cast<std::int32_t>(e);
        std::stable_sort(order.begin(), order.end(), [&](std::int32_t a, std::int32_t b) { return s[a] > s[b]; });
        // 3-4. The first fp32 prefix sum strictly above p; none (or p = 1) means all E.
        std::int64_t n = E;
        if (cfg.top_p < 1.0f) {
            float c = 0.0f;
            for (std::int64_t j = 0; j < E; ++j) {
                c = c + s[order[j]];
                if (c > cfg.top_p) {
                    n = j + 1;
                    break;
                }
            }
        }
        // 5. The clamps.
        n = std::min(std::max(n, cfg.min_k), cfg.max_selected());
        // 6. The first n, weighted by s (the order is already the row order).
        for (std::int64_t j = 0; j < n; ++j) rows[t].emplace_back(order[j], s[order[j]]);
        K = std::max(K, n);
    }

    std::vector<std::int32_t> ids(static_cast<std::size_t>(T * K), -1);
    std::vector<float> weights(static_cast<std::size_t>(T * K), 0.0f);
    for (std::int64_t t = 0; t < T; ++t)
        for (std::size_t j = 0; j < rows[t].size(); ++j) {
            ids[t * K + j] = rows[t][j].first;
            weights[t * K + j] = rows[t][j].second;
        }
    return from_token_major(T, K, E, std::move(ids), std::move(weights));
}

}  // namespace smoe::inline v0::reference
