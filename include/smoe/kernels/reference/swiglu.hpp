#pragma once
// Scalar oracle for the SwiGLU expert (experts.md §3) on fp32 weights, accumulating in double. The
// fast fp32 kernels are compared with it; the intermediates are exposed so tests can check each line
// of the spec's worked example, not only the output.

#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "smoe/core/error.hpp"
#include "smoe/expert/swiglu_config.hpp"

namespace smoe::inline v0::reference {

struct SwiGLUTrace {
    std::vector<double> g;    // W1 x   [f]
    std::vector<double> u;    // W3 x   [f]
    std::vector<double> a;    // silu(g) [f]
    std::vector<double> h;    // a ⊙ u  [f]
    std::vector<double> out;  // W2 h   [d]
};

namespace detail {

// Shapes come from the weights themselves; validate() then checks that the three views agree.
inline expert::SwiGLUConfig swiglu_config_of(expert::SwiGLUWeights<float> const& w) {
    return {.hidden_size = w.w1.cols, .intermediate_size = w.w1.rows, .num_experts = w.w1.count};
}

}  // namespace detail

// f_e(x) with every intermediate; x points at d = hidden_size floats.
inline SwiGLUTrace swiglu_expert_trace(expert::SwiGLUWeights<float> const& w, std::int64_t e, float const* x) {
    auto const cfg = detail::swiglu_config_of(w);
    cfg.validate();
    w.validate(cfg);
    if (e < 0 || e >= cfg.num_experts)
        smoe::detail::fail("expert", e, "an expert id in [0, " + std::to_string(cfg.num_experts) + ")");
    if (x == nullptr) smoe::detail::fail("x", "a null pointer", "hidden_size floats");

    auto const d = cfg.hidden_size, f = cfg.intermediate_size;
    auto const W1 = w.w1[e], W3 = w.w3[e], W2 = w.w2[e];
    SwiGLUTrace tr{std::vector<double>(f), std::vector<double>(f), std::vector<double>(f), std::vector<double>(f),
                   std::vector<double>(d)};
    for (std::int64_t i = 0; i < f; ++i) {
        for (std::int64_t k = 0; k < d; ++k) {
            tr.g[i] += static_cast<double>(W1(i, k)) * x[k];
            tr.u[i] += static_cast<double>(W3(i, k)) * x[k];
        }
        // g / (1 + exp(-g)) as the spec writes it: for very negative g, exp overflows to inf and the
        // result is -0, the same limit the fp32 kernels reach (experts.md §3).
        tr.a[i] = tr.g[i] / (1.0 + std::exp(-tr.g[i]));
        tr.h[i] = tr.a[i] * tr.u[i];
    }
    for (std::int64_t o = 0; o < d; ++o)
        for (std::int64_t i = 0; i < f; ++i) tr.out[o] += static_cast<double>(W2(o, i)) * tr.h[i];
    return tr;
}

inline std::vector<double> swiglu_expert(expert::SwiGLUWeights<float> const& w, std::int64_t e, float const* x) {
    return swiglu_expert_trace(w, e, x).out;
}

}  // namespace smoe::inline v0::reference
