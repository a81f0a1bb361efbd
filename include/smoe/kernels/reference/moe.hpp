#pragma once
// Scalar oracle for a whole routed MoE forward: gate projection, top-k routing and the SwiGLU combine
// of experts.md §1, in double. The layer's fp32 result is compared with it.

#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "smoe/core/error.hpp"
#include "smoe/core/routing.hpp"
#include "smoe/core/view.hpp"
#include "smoe/expert/swiglu_config.hpp"
#include "smoe/kernels/reference/swiglu.hpp"
#include "smoe/kernels/reference/topk.hpp"
#include "smoe/router/topk_config.hpp"

namespace smoe::inline v0::reference {

// logits[t * E + e] = gate[e] · x[t], gate [E, d], x [T, d].
inline std::vector<double> router_logits(MatrixView<float const> gate, MatrixView<float const> x) {
    smoe::detail::check_view(gate, "gate", -1, -1);
    smoe::detail::check_view(x, "x", -1, gate.cols);
    auto const E = gate.rows, T = x.rows, d = x.cols;
    std::vector<double> logits(static_cast<std::size_t>(T * E));
    for (std::int64_t t = 0; t < T; ++t)
        for (std::int64_t e = 0; e < E; ++e) {
            double acc = 0.0;
            for (std::int64_t k = 0; k < d; ++k) acc += static_cast<double>(gate(e, k)) * x(t, k);
            logits[t * E + e] = acc;
        }
    return logits;
}

// y_t = Σ_j w_tj · f_{e_tj}(x_t), summed in slot order j = 0..K-1 (experts.md §1 rule 2) from the
// token-major view. Padding (-1) and null experts (ids >= E) contribute nothing, not 0 · f (rule 4);
// a token without entries gets 0. With weight_on_input (Llama 4) a slot is f_e(w · x) instead.
inline std::vector<double> combine_swiglu(RoutingResult const& r, expert::SwiGLUWeights<float> const& w,
                                          MatrixView<float const> x, expert::GluActivation const& act = {},
                                          bool weight_on_input = false) {
    auto const cfg = detail::swiglu_config_of(w);
    cfg.validate();
    w.validate(cfg);
    auto const d = cfg.hidden_size;
    if (r.num_experts != cfg.num_experts)
        smoe::detail::fail("weights", "E = " + std::to_string(cfg.num_experts),
                           "as many experts as the routing (" + std::to_string(r.num_experts) + ")");
    smoe::detail::check_view(x, "x", r.num_tokens, d);
    std::vector<double> y(static_cast<std::size_t>(r.num_tokens * d), 0.0);
    for (std::int64_t t = 0; t < r.num_tokens; ++t) {
        for (std::int64_t j = 0; j < r.k; ++j) {
            auto const e = r.expert_ids(t, j);
            if (e < 0 || e >= r.num_experts) continue;
            auto const wt = static_cast<double>(r.expert_weights(t, j));
            auto const fe = swiglu_expert(w, e, x.row(t), act, weight_on_input ? wt : 1.0);
            for (std::int64_t o = 0; o < d; ++o) y[t * d + o] += (weight_on_input ? 1.0 : wt) * fe[o];
        }
    }
    return y;
}

// The whole forward: logits in double, rounded once to fp32 because routers take fp32 logits
// (routing.md §0), routed, then combined. Returns y [T * d].
inline std::vector<double> moe_forward_topk(router::TopKConfig const& cfg, MatrixView<float const> gate,
                                            expert::SwiGLUWeights<float> const& w, MatrixView<float const> x,
                                            std::span<float const> bias = {}) {
    cfg.validate();
    smoe::detail::check_view(gate, "gate", cfg.num_experts, -1);
    auto const logits_d = router_logits(gate, x);
    std::vector<float> logits(logits_d.begin(), logits_d.end());
    auto const routing = route_topk(cfg, MatrixView<float const>(logits.data(), x.rows, cfg.num_experts), bias);
    return combine_swiglu(routing.view(), w, x);
}

}  // namespace smoe::inline v0::reference
