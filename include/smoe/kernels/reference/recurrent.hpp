#pragma once
// Scalar oracle for an RMoE layer (research.md §2): u = P x, the GRU (or rnn) cell of torch.nn.GRUCell
// in double, ℓ = Q h rounded once to fp32, top-k routing, and the SwiGLU combine on x.

#include <cmath>
#include <cstdint>
#include <vector>

#include "smoe/gate/recurrent.hpp"
#include "smoe/kernels/reference/moe.hpp"

namespace smoe::inline v0::reference {

struct RecurrentTrace {
    std::vector<double> u, h, logits;  // [T * p], [T * p], [T * E]
    RoutingData routing;
    std::vector<double> y;             // [T * d]
};

// h_prev: [T * p] of the previous MoE layer, or empty for the zero state.
inline RecurrentTrace recurrent_layer(router::TopKConfig const& cfg, gate::RecurrentCellConfig const& cell,
                                      gate::RecurrentCellWeights const& w, MatrixView<float const> P, MatrixView<float const> Q,
                                      expert::SwiGLUWeights<float> const& experts, MatrixView<float const> x,
                                      std::vector<double> const& h_prev) {
    std::int64_t const T = x.rows, d = x.cols, p = cell.hidden_size, E = Q.rows;
    RecurrentTrace tr{std::vector<double>(T * p), std::vector<double>(T * p), std::vector<double>(T * E), {}, {}};
    auto mv = [&](MatrixView<float const> m, double const* v, std::int64_t i) {
        double a = 0.0;
        for (std::int64_t j = 0; j < m.cols; ++j) a += double(m(i, j)) * v[j];
        return a;
    };
    auto sig = [](double v) { return 1.0 / (1.0 + std::exp(-v)); };
    std::vector<double> xd(d), h0(p, 0.0);
    for (std::int64_t t = 0; t < T; ++t) {
        for (std::int64_t j = 0; j < d; ++j) xd[j] = x(t, j);
        double* u = tr.u.data() + t * p;
        for (std::int64_t i = 0; i < p; ++i) u[i] = mv(P, xd.data(), i);
        double const* h = h_prev.empty() ? h0.data() : h_prev.data() + t * p;
        for (std::int64_t i = 0; i < p; ++i) {
            double const hn = mv(w.weight_hn, h, i) + w.bias_hn[i];
            double const in = mv(w.weight_in, u, i) + w.bias_in[i];
            if (cell.cell == gate::CellKind::rnn) {
                tr.h[t * p + i] = std::tanh(in + hn);
                continue;
            }
            double const r = sig(mv(w.weight_ir, u, i) + w.bias_ir[i] + mv(w.weight_hr, h, i) + w.bias_hr[i]);
            double const z = sig(mv(w.weight_iz, u, i) + w.bias_iz[i] + mv(w.weight_hz, h, i) + w.bias_hz[i]);
            double const n = std::tanh(in + r * hn);
            tr.h[t * p + i] = (1.0 - z) * n + z * h[i];
        }
        for (std::int64_t e = 0; e < E; ++e) tr.logits[t * E + e] = mv(Q, tr.h.data() + t * p, e);
    }
    std::vector<float> const lf(tr.logits.begin(), tr.logits.end());
    tr.routing = route_topk(cfg, MatrixView<float const>(lf.data(), T, E));
    tr.y = combine_swiglu(tr.routing.view(), experts, x);
    return tr;
}

}  // namespace smoe::inline v0::reference
