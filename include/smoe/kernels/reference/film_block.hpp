#pragma once
// Scalar oracle for smoe::layer::FilmBlock (research.md §5.2), every step in double from the fp32
// inputs and weights: LayerNorm, basenet, router logits, top-k by the tie rule with softmax over the
// selected logits, the FiLM modules (or GELU(h) for column 0 of the released indexing), the adaptor.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <numeric>
#include <vector>

#include "smoe/core/view.hpp"
#include "smoe/layer/film_block.hpp"

namespace smoe::inline v0::reference {

struct FilmBlockResult {
    std::vector<double> y;                  // [T, d]
    std::vector<std::int32_t> expert_ids;   // [T, k], by weight descending
    std::vector<double> expert_weights;     // [T, k]
};

inline double gelu(double v) { return 0.5 * v * (1.0 + std::erf(v / std::sqrt(2.0))); }

inline FilmBlockResult film_block(layer::FilmBlockConfig const& cfg, layer::FilmBlockWeights const& w, MatrixView<float const> x) {
    std::int64_t const T = x.rows, d = cfg.hidden_size, E = cfg.num_experts, k = cfg.top_k;
    auto const lin = [](MatrixView<float const> W, std::span<float const> bias, std::vector<double> const& v) {
        std::vector<double> out(static_cast<std::size_t>(W.rows));
        for (std::int64_t o = 0; o < W.rows; ++o) {
            double acc = bias[static_cast<std::size_t>(o)];
            for (std::int64_t i = 0; i < W.cols; ++i) acc += double(W(o, i)) * v[static_cast<std::size_t>(i)];
            out[static_cast<std::size_t>(o)] = acc;
        }
        return out;
    };
    FilmBlockResult res;
    res.y.resize(static_cast<std::size_t>(T * d));
    for (std::int64_t t = 0; t < T; ++t) {
        std::vector<double> xv(x.row(t), x.row(t) + d), u(static_cast<std::size_t>(d));
        double mean = std::accumulate(xv.begin(), xv.end(), 0.0) / double(d), var = 0;
        for (double v : xv) var += (v - mean) * (v - mean);
        var /= double(d);
        for (std::int64_t i = 0; i < d; ++i)
            u[std::size_t(i)] = (xv[std::size_t(i)] - mean) / std::sqrt(var + double(cfg.layer_norm_eps)) * double(w.ln_weight[std::size_t(i)]) +
                                double(w.ln_bias[std::size_t(i)]);
        auto ga = lin(w.A, w.a, u), gb = lin(w.B, w.b, u);
        std::vector<double> h(static_cast<std::size_t>(d));
        for (std::int64_t i = 0; i < d; ++i) h[std::size_t(i)] = gelu(ga[std::size_t(i)]) * gb[std::size_t(i)];
        auto const l = lin(w.R, w.r, xv);
        std::vector<std::int64_t> order(static_cast<std::size_t>(E));
        std::iota(order.begin(), order.end(), 0);
        std::stable_sort(order.begin(), order.end(), [&](auto p, auto q) { return l[std::size_t(p)] > l[std::size_t(q)]; });
        double z = 0;
        for (std::int64_t j = 0; j < k; ++j) z += std::exp(l[std::size_t(order[std::size_t(j)])] - l[std::size_t(order[0])]);
        std::vector<double> m(static_cast<std::size_t>(d), 0.0);
        for (std::int64_t j = 0; j < k; ++j) {
            std::int64_t const e = order[std::size_t(j)];
            double const we = std::exp(l[std::size_t(e)] - l[std::size_t(order[0])]) / z;
            res.expert_ids.push_back(static_cast<std::int32_t>(e));
            res.expert_weights.push_back(we);
            std::int64_t const mod = cfg.expert0_gelu ? e - 1 : e;
            for (std::int64_t i = 0; i < d; ++i) {
                double g;
                if (mod < 0) {
                    g = gelu(h[std::size_t(i)]);
                } else {
                    double p = w.experts.p[std::size_t(mod * d + i)], q = w.experts.q[std::size_t(mod * d + i)];
                    for (std::int64_t c = 0; c < d; ++c) {
                        p += double(w.experts.P[std::size_t((mod * d + i) * d + c)]) * h[std::size_t(c)];
                        q += double(w.experts.Q[std::size_t((mod * d + i) * d + c)]) * h[std::size_t(c)];
                    }
                    g = p * h[std::size_t(i)] + q;
                }
                m[std::size_t(i)] += we * g;
            }
        }
        auto zz = lin(w.U1, w.c1, m);
        for (auto& v : zz) v = gelu(v);
        auto const y = lin(w.U2, w.c2, zz);
        std::copy(y.begin(), y.end(), res.y.begin() + t * d);
    }
    return res;
}

}  // namespace smoe::inline v0::reference
