#pragma once
// Scalar oracle for the SwiGLU expert (experts.md §3), accumulating in double on the weights widened
// exactly as the format defines (fp32 as is, bf16 bits << 16, int8 s[o] · q[o, i] formed in double).
// The fast kernels of every format are compared with it; the intermediates are exposed so tests can
// check each line of the spec's worked example, not only the output. The clamped activation, the biases
// and the weight on the input (expert/swiglu_config.hpp; experts.md §5, families.md §2.1-§2.3) are
// computed as written there, in double: g = s·(W1 x) + b1, g' = min(g, λ), u' = clamp(u, −λ, λ),
// a = g' / (1 + exp(−α g')), h = a · (u' + c), out = W2 h + b2; non-gated (relu2): a = relu(u), h = a², no g.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>
#include <type_traits>
#include <vector>

#include "smoe/core/error.hpp"
#include "smoe/core/format.hpp"
#include "smoe/core/view.hpp"
#include "smoe/expert/swiglu_config.hpp"

namespace smoe::inline v0::reference {

struct SwiGLUTrace {
    std::vector<double> g;    // W1 x   [f]
    std::vector<double> u;    // W3 x   [f]
    std::vector<double> a;    // silu(g), or g'·σ(α g') clamped [f]
    std::vector<double> h;    // a ⊙ u, or a ⊙ (u' + c)  [f]
    std::vector<double> out;  // W2 h   [d]
};

namespace detail {

// Shapes come from the weights themselves; validate() then checks that the three views agree.
template <class W>
expert::SwiGLUConfig swiglu_config_of(expert::SwiGLUWeights<W> const& w) {
    return {.hidden_size = w.w3.cols, .intermediate_size = w.w3.rows, .num_experts = w.w3.count};
}

// Element (o, i) of one expert's matrix, widened to double; `scales` is that matrix's [E, out] scales.
template <class W>
double widened(MatrixView<W const> m, MatrixView<float const> scales, std::int64_t e, std::int64_t o, std::int64_t i) {
    if constexpr (std::is_same_v<W, std::int8_t>)
        return static_cast<double>(scales(e, o)) * static_cast<double>(m(o, i));
    else
        return static_cast<double>(FormatTraits<W>::widen(m(o, i)));
}

}  // namespace detail

// f_e(in_scale · x) with every intermediate; x points at d = hidden_size floats. in_scale is the routing
// weight of an expert that takes it on the input (SwiGLUConfig::weight_on_input), else 1.
template <class W>
SwiGLUTrace swiglu_expert_trace(expert::SwiGLUWeights<W> const& w, std::int64_t e, float const* x,
                                expert::GluActivation const& act = {}, double in_scale = 1.0) {
    auto cfg = detail::swiglu_config_of(w);
    cfg.activation = act;
    cfg.validate();
    w.validate(cfg);
    if (e < 0 || e >= cfg.num_experts)
        smoe::detail::fail("expert", e, "an expert id in [0, " + std::to_string(cfg.num_experts) + ")");
    if (x == nullptr) smoe::detail::fail("x", "a null pointer", "hidden_size floats");

    auto const d = cfg.hidden_size, f = cfg.intermediate_size;
    bool const gated = act.gated();
    auto const W1 = gated ? w.w1[e] : MatrixView<W const>{}, W3 = w.w3[e], W2 = w.w2[e];
    MatrixView<float const> s1, s3, s2;
    if constexpr (expert::SwiGLUWeights<W>::has_scales) s1 = w.s1, s3 = w.s3, s2 = w.s2;
    SwiGLUTrace tr{std::vector<double>(f), std::vector<double>(f), std::vector<double>(f), std::vector<double>(f),
                   std::vector<double>(d)};
    for (std::int64_t i = 0; i < f; ++i) {
        for (std::int64_t k = 0; k < d; ++k) {
            if (gated) tr.g[i] += detail::widened(W1, s1, e, i, k) * (in_scale * x[k]);
            tr.u[i] += detail::widened(W3, s3, e, i, k) * (in_scale * x[k]);
        }
        if (w.bias.b1.data) tr.g[i] += w.bias.b1(e, i);
        if (w.bias.b3.data) tr.u[i] += w.bias.b3(e, i);
        if (!gated) {  // non-gated relu² (GluActivation::relu2): a = relu(u), h = a²
            tr.a[i] = std::isnan(tr.u[i]) ? tr.u[i] : std::max(tr.u[i], 0.0);
            tr.h[i] = tr.a[i] * tr.a[i];
            continue;
        }
        double const lim = act.limit;
        double const g = std::isnan(tr.g[i]) ? tr.g[i] : std::min(tr.g[i], lim);
        double const u = std::isnan(tr.u[i]) ? tr.u[i] : std::max(-lim, std::min(tr.u[i], lim));
        // g / (1 + exp(-α g)) as the spec writes it: for very negative g, exp overflows to inf and the
        // result is -0, the same limit the fp32 kernels reach (experts.md §3).
        tr.a[i] = g / (1.0 + std::exp(-static_cast<double>(act.alpha) * g));
        tr.h[i] = tr.a[i] * (u + act.up_offset);
    }
    for (std::int64_t o = 0; o < d; ++o) {
        for (std::int64_t i = 0; i < f; ++i) tr.out[o] += detail::widened(W2, s2, e, o, i) * tr.h[i];
        if (w.bias.b2.data) tr.out[o] += w.bias.b2(e, o);
    }
    return tr;
}

template <class W>
std::vector<double> swiglu_expert(expert::SwiGLUWeights<W> const& w, std::int64_t e, float const* x, expert::GluActivation const& act = {},
                                  double in_scale = 1.0) {
    return swiglu_expert_trace(w, e, x, act, in_scale).out;
}

}  // namespace smoe::inline v0::reference
