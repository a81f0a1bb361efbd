#pragma once
// Scalar oracle for SMEAR (research.md §3), in double: per group the mean input, ℓ = W_r x̄ + b_r (or
// the given logits), p = softmax(ℓ), the merged matrices Σ_e p_e W_e from each expert's widened weights,
// and y_t = W̄2 (silu(W̄1 x_t) ⊙ W̄3 x_t) for the group's tokens.

#include <cmath>
#include <cstdint>
#include <span>
#include <vector>

#include "smoe/core/view.hpp"
#include "smoe/kernels/reference/swiglu.hpp"

namespace smoe::inline v0::reference {

struct SoftMergeTrace {
    std::vector<double> probs;           // [G * E]
    std::vector<std::vector<double>> w1, w3, w2;  // per group: W̄1, W̄3 [f * d], W̄2 [d * f]
    std::vector<double> y;               // [T * d]
};

// groups: B + 1 offsets (one group per sequence) or, empty, one group per token. gate [E, d] with an
// optional bias, or given logits [G, E] (gate empty).
template <class W>
SoftMergeTrace soft_merge(expert::SwiGLUWeights<W> const& w, MatrixView<float const> gate, std::span<float const> bias,
                          MatrixView<float const> given, std::vector<std::int64_t> groups, MatrixView<float const> x) {
    auto const cfg = detail::swiglu_config_of(w);
    std::int64_t const E = cfg.num_experts, d = cfg.hidden_size, f = cfg.intermediate_size, T = x.rows;
    if (groups.empty())
        for (std::int64_t t = 0; t <= T; ++t) groups.push_back(t);
    std::int64_t const G = static_cast<std::int64_t>(groups.size()) - 1;
    MatrixView<float const> s1, s3, s2;
    if constexpr (expert::SwiGLUWeights<W>::has_scales) s1 = w.s1, s3 = w.s3, s2 = w.s2;
    SoftMergeTrace tr;
    tr.probs.assign(static_cast<std::size_t>(G * E), 0.0);
    tr.y.assign(static_cast<std::size_t>(T * d), 0.0);
    for (std::int64_t g = 0; g < G; ++g) {
        std::int64_t const r0 = groups[g], r1 = groups[g + 1];
        std::vector<double> l(E), p(E), w1(f * d, 0.0), w3(f * d, 0.0), w2(d * f, 0.0);
        if (r0 == r1) {
            tr.w1.push_back(w1), tr.w3.push_back(w3), tr.w2.push_back(w2);
            continue;
        }
        if (gate.data != nullptr) {
            std::vector<double> mean(d, 0.0);
            for (std::int64_t t = r0; t < r1; ++t)
                for (std::int64_t j = 0; j < d; ++j) mean[j] += x(t, j) / double(r1 - r0);
            for (std::int64_t e = 0; e < E; ++e) {
                l[e] = bias.empty() ? 0.0 : bias[e];
                for (std::int64_t j = 0; j < d; ++j) l[e] += double(gate(e, j)) * mean[j];
            }
        } else {
            for (std::int64_t e = 0; e < E; ++e) l[e] = given(g, e);
        }
        double mx = l[0], s = 0.0;
        for (double v : l) mx = std::max(mx, v);
        for (std::int64_t e = 0; e < E; ++e) s += (p[e] = std::exp(l[e] - mx));
        for (std::int64_t e = 0; e < E; ++e) tr.probs[g * E + e] = p[e] /= s;
        for (std::int64_t e = 0; e < E; ++e)
            for (std::int64_t i = 0; i < f; ++i)
                for (std::int64_t j = 0; j < d; ++j) {
                    w1[i * d + j] += p[e] * detail::widened(w.w1[e], s1, e, i, j);
                    w3[i * d + j] += p[e] * detail::widened(w.w3[e], s3, e, i, j);
                    w2[j * f + i] += p[e] * detail::widened(w.w2[e], s2, e, j, i);
                }
        for (std::int64_t t = r0; t < r1; ++t) {
            std::vector<double> h(f);
            for (std::int64_t i = 0; i < f; ++i) {
                double a = 0.0, u = 0.0;
                for (std::int64_t j = 0; j < d; ++j) a += w1[i * d + j] * x(t, j), u += w3[i * d + j] * x(t, j);
                h[i] = a / (1.0 + std::exp(-a)) * u;
            }
            for (std::int64_t j = 0; j < d; ++j)
                for (std::int64_t i = 0; i < f; ++i) tr.y[t * d + j] += w2[j * f + i] * h[i];
        }
        tr.w1.push_back(w1), tr.w3.push_back(w3), tr.w2.push_back(w2);
    }
    return tr;
}

}  // namespace smoe::inline v0::reference
