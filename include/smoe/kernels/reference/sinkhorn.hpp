#pragma once
// Scalar oracle for smoe::router::Sinkhorn (routing.md §7), straight from the spec's numbered steps in
// double: the activation, the Sinkhorn iteration on the row-shifted kernel, the top-k of P by the tie
// rule, weights from the activation rounded to fp32 once. The fast router balances in fp32, so the
// two may stop one iteration apart near tol; tests compare selections on P with the 1e-5 tolerance
// of routing.md §0 and may rerun this oracle with the fast router's iteration count
// (tol = 0, max_iterations = n).

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
#include "smoe/router/sinkhorn.hpp"

namespace smoe::inline v0::reference {

// The oracle's scores for one batch: a and P as [T * E] row-major, and the iteration report.
struct SinkhornScores {
    std::vector<double> activation;  // a
    std::vector<double> balanced;    // P (= a when balancing does not run)
    router::SinkhornReport report;
};

inline SinkhornScores sinkhorn_scores(router::SinkhornConfig const& cfg, MatrixView<float const> logits) {
    cfg.validate();
    auto const E = cfg.num_experts;
    smoe::detail::check_view(logits, "logits", -1, E);
    auto const T = logits.rows;
    detail::check_finite(logits, "logits", "token", "expert");

    SinkhornScores out;
    auto const n = static_cast<std::size_t>(T * E);
    out.activation.resize(n);
    std::vector<double> kernel(n);  // K[t, e] = exp(x_te - m_t)
    for (std::int64_t t = 0; t < T; ++t) {
        double m = logits(t, 0);
        for (std::int64_t e = 1; e < E; ++e) m = std::max(m, static_cast<double>(logits(t, e)));
        double z = 0.0;
        for (std::int64_t e = 0; e < E; ++e) z += kernel[t * E + e] = std::exp(static_cast<double>(logits(t, e)) - m);
        for (std::int64_t e = 0; e < E; ++e)
            out.activation[t * E + e] = cfg.top_k == 1 ? 1.0 / (1.0 + std::exp(-static_cast<double>(logits(t, e))))
                                                       : kernel[t * E + e] / z;
    }
    if (T < 2 || cfg.max_iterations == 0) {
        out.balanced = out.activation;
        return out;
    }

    double const eps = 1e-8;
    std::vector<double> d0(static_cast<std::size_t>(T), 1.0), d1(static_cast<std::size_t>(E), 1.0);
    auto& r = out.report;
    r.balanced = true;
    for (;;) {
        for (std::int64_t t = 0; t < T; ++t) {
            double s = 0.0;
            for (std::int64_t e = 0; e < E; ++e) s += d1[e] * kernel[t * E + e];
            d0[t] = (1.0 / static_cast<double>(T)) / (s + eps);
        }
        double err = 0.0;
        for (std::int64_t e = 0; e < E; ++e) {
            double s = 0.0;
            for (std::int64_t t = 0; t < T; ++t) s += d0[t] * kernel[t * E + e];
            double const next = (1.0 / static_cast<double>(E)) / (s + eps);
            err += std::fabs(next - d1[e]);
            d1[e] = next;
        }
        r.error = err / static_cast<double>(E);
        ++r.iterations;
        // routing.md §7: "until err <= tol or n = max_iterations", and "tol = 0 runs to the cap": the
        // fast router's fp32 iteration often reaches an exact fixed point (err = 0), so tol = 0 keeps
        // iterating to the cap and reports converged if err ends at 0 (as router::Sinkhorn does).
        r.converged = r.error <= cfg.tol;
        if ((r.converged && cfg.tol > 0.0) || r.iterations >= cfg.max_iterations) break;
    }
    out.balanced.resize(n);
    for (std::int64_t t = 0; t < T; ++t)
        for (std::int64_t e = 0; e < E; ++e) out.balanced[t * E + e] = d1[e] * kernel[t * E + e] * d0[t];
    return out;
}

// Routes T tokens: logits [T, E] (fp32). Returns both views of §1 with K = top_k, also for T = 0;
// `report`, when given, receives the iteration report.
inline RoutingData route_sinkhorn(router::SinkhornConfig const& cfg, MatrixView<float const> logits,
                                  router::SinkhornReport* report = nullptr) {
    auto const scores = sinkhorn_scores(cfg, logits);
    if (report) *report = scores.report;
    auto const E = cfg.num_experts, K = cfg.top_k, T = logits.rows;
    smoe::detail::check_int32_extent(T, K);

    std::vector<std::int32_t> ids(static_cast<std::size_t>(T * K));
    std::vector<float> weights(static_cast<std::size_t>(T * K));
    for (std::int64_t t = 0; t < T; ++t) {
        std::vector<double> const p(scores.balanced.begin() + t * E, scores.balanced.begin() + (t + 1) * E);
        // Step 3 by the tie rule; step 4: the weight is the activation, rounded to fp32 once, and the
        // row is ordered by that stored weight (ties to the lower id), as in route_topk.
        std::vector<std::pair<float, std::int64_t>> row;
        for (auto e : detail::top_n(p, detail::iota_ids(E), K))
            row.emplace_back(static_cast<float>(scores.activation[t * E + e]), e);
        write_row_by_weight(std::move(row), t, K, ids, weights);
    }
    return from_token_major(T, K, E, std::move(ids), std::move(weights));
}

}  // namespace smoe::inline v0::reference
