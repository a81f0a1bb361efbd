#pragma once
// Scalar oracle for Chain-of-Experts (research.md §1): C top-k passes over one SwiGLU expert set, each
// routing on the previous pass's output with its own gate; routed sums and the shared expert in
// double, the state between passes kept in fp32 (as the layer keeps it), logits rounded once to fp32
// before routing (routing.md §0).

#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "smoe/core/error.hpp"
#include "smoe/core/view.hpp"
#include "smoe/kernels/reference/moe.hpp"

namespace smoe::inline v0::reference {

struct ChainTrace {
    std::vector<double> y;                  // [T * d]: x⁽ᶜ⁾, or x⁽ᶜ⁾ − x⁽⁰⁾ with delta
    std::vector<std::vector<float>> state;  // x⁽ᵗ⁾ for t = 1..C, [T * d] each
    std::vector<RoutingData> routing;       // pass t's routing
};

// gates: the gate of each pass (the same view C times for a shared gate); shared: an ungated shared
// expert (num_experts 1) or nullptr.
inline ChainTrace chain_forward(router::TopKConfig const& cfg, std::span<MatrixView<float const> const> gates,
                                expert::SwiGLUWeights<float> const& w, expert::SwiGLUWeights<float> const* shared,
                                bool inner_residual, bool delta, MatrixView<float const> x) {
    if (gates.empty()) smoe::detail::fail("gates", "none", "one gate per pass");
    std::int64_t const T = x.rows, d = x.cols;
    ChainTrace tr;
    std::vector<float> cur(x.data == nullptr ? 0 : static_cast<std::size_t>(T * d));
    for (std::int64_t t = 0; t < T; ++t)
        for (std::int64_t c = 0; c < d; ++c) cur[t * d + c] = x(t, c);
    for (auto const& gate : gates) {
        MatrixView<float const> const in(cur.data(), T, d);
        auto const ld = router_logits(gate, in);
        std::vector<float> const logits(ld.begin(), ld.end());
        tr.routing.push_back(route_topk(cfg, MatrixView<float const>(logits.data(), T, cfg.num_experts)));
        auto next = combine_swiglu(tr.routing.back().view(), w, in);
        for (std::int64_t t = 0; t < T; ++t) {
            if (shared != nullptr) {
                auto const s = swiglu_expert(*shared, 0, in.row(t));
                for (std::int64_t c = 0; c < d; ++c) next[t * d + c] += s[c];
            }
            if (inner_residual)
                for (std::int64_t c = 0; c < d; ++c) next[t * d + c] += in(t, c);
        }
        cur.assign(next.begin(), next.end());
        tr.state.push_back(cur);
        tr.y = next;
    }
    if (delta)
        for (std::int64_t t = 0; t < T; ++t)
            for (std::int64_t c = 0; c < d; ++c) tr.y[t * d + c] -= x(t, c);
    return tr;
}

}  // namespace smoe::inline v0::reference
