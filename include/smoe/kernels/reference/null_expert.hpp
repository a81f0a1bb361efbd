#pragma once
// Scalar oracle for smoe::router::NullExpert (routing.md §5), from the spec's steps: softmax over all
// E + N columns in double, rounded to the fp32 score the spec's math runs on; top-k by (score
// descending, id ascending); σ over the selected true experts (σ = 0 → 1) summed in double; true
// weights s / σ, null weights raw s; rows ordered by the stored fp32 weight. The scores are rounded
// before σ because §5's guard is about fp32 underflow: a true expert whose fp32 score is 0 (logit far
// below the row maximum) must get weight 0, not the 1 that a double score of 1e-87 would give it. Null ids (>= E) stay in the token-major view; from_token_major keeps them out of
// the CSR.

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
#include "smoe/router/null_expert.hpp"

namespace smoe::inline v0::reference {

inline RoutingData route_null_expert(router::NullExpertConfig const& cfg, MatrixView<float const> logits) {
    cfg.validate();
    auto const E = cfg.num_experts, W = cfg.num_experts + cfg.num_null_experts, K = cfg.top_k;
    auto const T = detail::check_logits(logits, W, K);

    std::vector<std::int32_t> ids(static_cast<std::size_t>(T * K));
    std::vector<float> weights(static_cast<std::size_t>(T * K));
    std::vector<double> s(static_cast<std::size_t>(W));
    for (std::int64_t t = 0; t < T; ++t) {
        double m = logits(t, 0);
        for (std::int64_t e = 1; e < W; ++e) m = std::max(m, static_cast<double>(logits(t, e)));
        double sum = 0.0;
        for (std::int64_t e = 0; e < W; ++e) sum += std::exp(static_cast<double>(logits(t, e)) - m);
        for (std::int64_t e = 0; e < W; ++e)
            s[e] = static_cast<float>(std::exp(static_cast<double>(logits(t, e)) - m) / sum);

        auto const S = detail::top_n(s, detail::iota_ids(W), K);
        double sigma = 0.0;
        for (auto e : S)
            if (e < E) sigma += s[e];
        if (sigma == 0.0) sigma = 1.0;

        std::vector<std::pair<float, std::int64_t>> row;
        for (auto e : S) row.emplace_back(static_cast<float>(e < E ? s[e] / sigma : s[e]), e);
        write_row_by_weight(std::move(row), t, K, ids, weights);
    }
    return from_token_major(T, K, E, std::move(ids), std::move(weights));
}

}  // namespace smoe::inline v0::reference
