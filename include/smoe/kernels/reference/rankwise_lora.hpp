#pragma once
// Scalar oracle for SMoRA (routing.md §8, experts.md §10), in double:
//   route_rankwise_lora: g = sigmoid(z), c = g + lora_biases, S = top-k of c (ties to the lower rank),
//     w_i = k · c_i / Σ_(j∈S) c_j; rows by weight descending, ties to the lower rank.
//   rankwise_lora_forward: the DENSE form y = W0 x + b0 + (lora_alpha / k) · B · diag(w) · A · x with
//     w = 0 outside S (all r ranks are computed, unlike the fast sparse path).

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "smoe/core/error.hpp"
#include "smoe/core/routing.hpp"
#include "smoe/core/view.hpp"
#include "smoe/expert/rankwise_lora_forward.hpp"
#include "smoe/kernels/reference/dispatch.hpp"
#include "smoe/kernels/reference/topk.hpp"
#include "smoe/router/rankwise_lora.hpp"

namespace smoe::inline v0::reference {

inline RoutingData route_rankwise_lora(router::RankwiseLoRAConfig const& cfg, MatrixView<float const> z,
                                       std::span<float const> lora_biases = {}) {
    cfg.validate();
    std::int64_t const r = cfg.rank, k = cfg.top_k;
    smoe::detail::check_view(z, "logits", -1, r);
    std::int64_t const T = z.rows;
    smoe::detail::check_int32_extent(T, k);
    if (!lora_biases.empty() && static_cast<std::int64_t>(lora_biases.size()) != r)
        smoe::detail::fail("lora_biases", "length " + std::to_string(lora_biases.size()), "length rank = " + std::to_string(r));
    detail::check_finite(lora_biases, "lora_biases", "rank");
    detail::check_finite(z, "logits", "token", "expert");

    std::vector<std::int32_t> ids(static_cast<std::size_t>(T * k));
    std::vector<float> weights(static_cast<std::size_t>(T * k));
    std::vector<double> c(static_cast<std::size_t>(r));
    std::vector<std::int64_t> all(static_cast<std::size_t>(r));
    for (std::int64_t i = 0; i < r; ++i) all[i] = i;
    for (std::int64_t t = 0; t < T; ++t) {
        for (std::int64_t i = 0; i < r; ++i)
            c[i] = 1.0 / (1.0 + std::exp(-static_cast<double>(z(t, i)))) + (lora_biases.empty() ? 0.0 : double(lora_biases[i]));
        std::vector<std::int64_t> const S = detail::top_n(c, all, k);
        double sum = 0.0;
        for (auto i : S) sum += c[i];
        if (!(sum > 0.0))
            smoe::detail::fail(lora_biases.empty() ? "logits" : "lora_biases", "a selected score sum of " + smoe::detail::to_text(sum) + " at token " + std::to_string(t),
                               "a positive sum");
        std::vector<std::pair<float, std::int64_t>> row;
        for (auto i : S) row.emplace_back(static_cast<float>(double(k) * c[i] / sum), i);
        write_row_by_weight(std::move(row), t, k, ids, weights);
    }
    return from_token_major(T, k, r, std::move(ids), std::move(weights));
}

// y [T * out] in double, from x [T, in] and the routing (token-major rank ids and weights).
inline std::vector<double> rankwise_lora_forward(router::RankwiseLoRAConfig const& cfg, expert::RankwiseLoRAWeights const& w,
                                                 RoutingResult const& routing, MatrixView<float const> x) {
    cfg.validate();
    w.validate(cfg);
    std::int64_t const T = x.rows, r = cfg.rank, in = cfg.in_features, out = cfg.out_features;
    smoe::detail::check_view(x, "x", -1, in);
    if (routing.num_tokens != T) smoe::detail::fail("routing.num_tokens", routing.num_tokens, "x.rows = " + std::to_string(T));
    double const scale = double(cfg.lora_alpha) / double(cfg.top_k);
    std::vector<double> y(static_cast<std::size_t>(T * out), 0.0), gate(static_cast<std::size_t>(r)),
        ax(static_cast<std::size_t>(r));
    for (std::int64_t t = 0; t < T; ++t) {
        std::fill(gate.begin(), gate.end(), 0.0);
        for (std::int64_t j = 0; j < routing.k; ++j)
            if (routing.expert_ids(t, j) >= 0) gate[routing.expert_ids(t, j)] = routing.expert_weights(t, j);
        for (std::int64_t i = 0; i < r; ++i) {
            double s = 0.0;
            for (std::int64_t c = 0; c < in; ++c) s += double(w.lora_A(i, c)) * double(x(t, c));
            ax[i] = gate[i] * s;
        }
        for (std::int64_t o = 0; o < out; ++o) {
            double s = 0.0;
            for (std::int64_t i = 0; i < r; ++i) s += double(w.lora_B(o, i)) * ax[i];
            double base = 0.0;
            if (w.has_base())
                for (std::int64_t c = 0; c < in; ++c) base += double(w.base_weight(o, c)) * double(x(t, c));
            if (!w.base_bias.empty()) base += double(w.base_bias[o]);
            y[t * out + o] = base + scale * s;
        }
    }
    return y;
}

}  // namespace smoe::inline v0::reference
