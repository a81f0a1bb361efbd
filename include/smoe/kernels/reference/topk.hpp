#pragma once
// Scalar oracle for smoe::router::TopK (routing.md §2): every option, straight from the spec's
// numbered steps. Scores are computed in double from the fp32 logits, so equal logits give bit-equal
// scores and the tie rule (score descending, id ascending) decides; weights are rounded to fp32 once,
// at the end. Fast kernels are checked against this within the tolerances of routing.md §0.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <numeric>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "smoe/core/error.hpp"
#include "smoe/core/routing.hpp"
#include "smoe/core/view.hpp"
#include "smoe/kernels/reference/dispatch.hpp"
#include "smoe/router/topk_config.hpp"

namespace smoe::inline v0::reference {
namespace detail {

// routing.md §0: the first non-finite entry in (row, column) order, named with its position.
inline void check_finite(MatrixView<float const> m, char const* name, char const* row_word, char const* col_word) {
    for (std::int64_t r = 0; r < m.rows; ++r)
        for (std::int64_t c = 0; c < m.cols; ++c)
            if (!std::isfinite(m(r, c)))
                smoe::detail::fail(name,
                                   smoe::detail::to_text(m(r, c)) + " (" + row_word + " " + std::to_string(r) + ", " +
                                       col_word + " " + std::to_string(c) + ")",
                                   "finite values");
}

// The oracles' entry: logits [T, width], T · slots within int32 (routing.md §1), every logit finite.
// Returns T.
inline std::int64_t check_logits(MatrixView<float const> logits, std::int64_t width, std::int64_t slots) {
    smoe::detail::check_view(logits, "logits", -1, width);
    smoe::detail::check_int32_extent(logits.rows, slots);
    check_finite(logits, "logits", "token", "expert");
    return logits.rows;
}

inline void check_finite(std::span<float const> v, char const* name, char const* index_word) {
    for (std::size_t i = 0; i < v.size(); ++i)
        if (!std::isfinite(v[i]))
            smoe::detail::fail(name, smoe::detail::to_text(v[i]) + " (" + index_word + " " + std::to_string(i) + ")",
                               "finite values");
}

// The tie rule of routing.md §0 as an ordering: score descending, then the lower id. Used for groups
// and for experts alike. Scores are finite here, so this is a strict weak order.
inline std::vector<std::int64_t> top_n(std::vector<double> const& score, std::vector<std::int64_t> ids, std::int64_t n) {
    std::sort(ids.begin(), ids.end(), [&](std::int64_t a, std::int64_t b) {
        return score[a] > score[b] || (score[a] == score[b] && a < b);
    });
    ids.resize(static_cast<std::size_t>(n));
    return ids;
}

// s[t, e] = score(logits[t, e]) in double, rounded once to fp32: the score step of the oracles that rank
// scores across tokens (expert choice, race). softmax is over the token's row.
enum class RowScore { identity, sigmoid, softmax };
inline std::vector<float> rounded_scores(MatrixView<float const> logits, RowScore f) {
    std::int64_t const T = logits.rows, E = logits.cols;
    std::vector<float> s(static_cast<std::size_t>(T * E));
    for (std::int64_t t = 0; t < T; ++t) {
        double m = logits(t, 0), sum = 0.0;
        if (f == RowScore::softmax) {
            for (std::int64_t e = 1; e < E; ++e) m = std::max(m, static_cast<double>(logits(t, e)));
            for (std::int64_t e = 0; e < E; ++e) sum += std::exp(static_cast<double>(logits(t, e)) - m);
        }
        for (std::int64_t e = 0; e < E; ++e) {
            double const x = logits(t, e);
            double const v = f == RowScore::identity  ? x
                             : f == RowScore::sigmoid ? 1.0 / (1.0 + std::exp(-x))
                                                      : std::exp(x - m) / sum;
            s[static_cast<std::size_t>(t * E + e)] = static_cast<float>(v);
        }
    }
    return s;
}

inline std::vector<std::int64_t> iota_ids(std::int64_t n) {
    std::vector<std::int64_t> ids(static_cast<std::size_t>(n));
    std::iota(ids.begin(), ids.end(), std::int64_t{0});
    return ids;
}

// Step 3: the experts of the best `groups_kept` groups. Group score is the maximum selection score
// without a bias (DeepSeek-V2 group_limited_greedy) and the sum of the two largest with one
// (DeepSeek-V3 noaux_tc); routing.md §10.1 explains why not Megatron's top-(k/topk_group) sum.
inline std::vector<std::int64_t> eligible_experts(router::TopKConfig const& cfg, std::vector<double> const& c, bool biased) {
    auto const E = cfg.num_experts;
    if (cfg.n_group == 1) return iota_ids(E);
    auto const G = cfg.group_size();
    std::vector<double> group_score(static_cast<std::size_t>(cfg.n_group));
    for (std::int64_t g = 0; g < cfg.n_group; ++g) {
        std::vector<double> members(c.begin() + g * G, c.begin() + (g + 1) * G);
        std::sort(members.begin(), members.end(), [](double a, double b) { return a > b; });
        group_score[g] = biased ? members[0] + members[1] : members[0];
    }
    std::vector<std::int64_t> eligible;
    for (auto g : top_n(group_score, iota_ids(cfg.n_group), cfg.groups_kept()))
        for (std::int64_t e = g * G; e < (g + 1) * G; ++e) eligible.push_back(e);
    return eligible;
}

struct Selection {
    std::int64_t expert;
    double weight;
};

// Math A: softmax over the k selected logits only (Megatron's moe_router_pre_softmax = false).
inline std::vector<Selection> select_score_after_topk(router::TopKConfig const& cfg, std::vector<double> const& x) {
    auto const S = top_n(x, iota_ids(cfg.num_experts), cfg.top_k);
    double const m = x[S.front()];  // S is sorted by x, so its first element is max_S x
    double sum = 0.0;
    for (auto e : S) sum += std::exp(x[e] - m);
    std::vector<Selection> out;
    for (auto e : S) out.push_back({e, std::exp(x[e] - m) / sum});
    return out;
}

// Math B, steps 1-6.
inline std::vector<Selection> select_scored(router::TopKConfig const& cfg, std::vector<double> const& x,
                                            std::span<float const> bias) {
    auto const E = cfg.num_experts;
    std::vector<double> s(static_cast<std::size_t>(E));
    if (cfg.score_func == router::ScoreFunc::softmax) {
        double const m = *std::max_element(x.begin(), x.end());
        double sum = 0.0;
        for (std::int64_t e = 0; e < E; ++e) sum += std::exp(x[e] - m);
        for (std::int64_t e = 0; e < E; ++e) s[e] = std::exp(x[e] - m) / sum;
    } else {
        for (std::int64_t e = 0; e < E; ++e) s[e] = 1.0 / (1.0 + std::exp(-x[e]));
    }
    // The bias only selects (step 5): c is thrown away once S is known.
    std::vector<double> c = s;
    if (!bias.empty())
        for (std::int64_t e = 0; e < E; ++e) c[e] += static_cast<double>(bias[e]);

    auto const S = top_n(c, eligible_experts(cfg, c, !bias.empty()), cfg.top_k);
    std::vector<Selection> out;
    for (auto e : S) out.push_back({e, s[e]});
    if (cfg.norm_topk_prob) {
        double sum = 0.0;
        for (auto const& p : out) sum += p.weight;
        // With norm_eps = 0 and sigmoid scores that all underflow (logits below about -745 in double)
        // the quotient would be 0/0; §0 forbids NaN from finite input and §2 defines nothing here, so
        // the weights stay 0 (they already are).
        double const denom = sum + static_cast<double>(cfg.norm_eps);
        if (denom > 0.0)
            for (auto& p : out) p.weight /= denom;
    }
    return out;
}

}  // namespace detail

// Routes T tokens: logits [T, E] (fp32), optional expert_bias [E]. Returns both views of §1 with
// K = top_k, also for T = 0.
inline RoutingData route_topk(router::TopKConfig const& cfg, MatrixView<float const> logits,
                              std::span<float const> expert_bias = {}) {
    using smoe::detail::fail;
    cfg.validate();
    auto const E = cfg.num_experts, K = cfg.top_k;
    smoe::detail::check_view(logits, "logits", -1, E);
    auto const T = logits.rows;
    smoe::detail::check_int32_extent(T, K);

    bool const biased = !expert_bias.empty();
    if (biased && static_cast<std::int64_t>(expert_bias.size()) != E)
        fail("expert_bias", "length " + std::to_string(expert_bias.size()), "length num_experts = " + std::to_string(E));
    if (cfg.requires_expert_bias && !biased)
        fail("expert_bias", "none", "an expert_bias of length " + std::to_string(E) + " (the config requires one)");
    // validate() can only check these when the config itself asks for a bias; a bias passed to a
    // config that does not require one must meet the same conditions (routing.md §2 edge cases).
    if (biased && cfg.score_after_topk) fail("expert_bias", "given", "no expert_bias with score_after_topk");
    if (biased && cfg.n_group > 1 && cfg.group_size() < 2)
        fail("n_group", cfg.n_group, "groups of at least 2 experts when an expert_bias is used");

    detail::check_finite(logits, "logits", "token", "expert");
    detail::check_finite(expert_bias, "expert_bias", "expert");

    std::vector<std::int32_t> ids(static_cast<std::size_t>(T * K));
    std::vector<float> weights(static_cast<std::size_t>(T * K));
    std::vector<double> x(static_cast<std::size_t>(E));
    for (std::int64_t t = 0; t < T; ++t) {
        for (std::int64_t e = 0; e < E; ++e) x[e] = logits(t, e);
        auto sel = cfg.score_after_topk ? detail::select_score_after_topk(cfg, x) : detail::select_scored(cfg, x, expert_bias);

        // Step 7, then the single rounding. The row is ordered by the stored fp32 weight, so the
        // order a consumer sees agrees with the values it sees (two doubles that round to the same
        // float are a tie, and the lower id comes first).
        std::vector<std::pair<float, std::int64_t>> row;
        for (auto const& p : sel)
            row.emplace_back(static_cast<float>(p.weight * static_cast<double>(cfg.routed_scaling_factor)), p.expert);
        write_row_by_weight(std::move(row), t, K, ids, weights);
    }
    return from_token_major(T, K, E, std::move(ids), std::move(weights));
}

}  // namespace smoe::inline v0::reference
