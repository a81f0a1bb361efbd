#pragma once
// A MoELayer's tensors for the end-to-end layer tests, the layer's own gate logits for the oracle, and
// experts.md §9's per-token error metric.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <random>
#include <vector>

#include <catch2/catch.hpp>
#include "smoe/detail/xsimd.hpp"  // not <xsimd/xsimd.hpp>: see there

#include "common/data.hpp"
#include "smoe/kernels/cpu/gemm_nt.hpp"
#include "smoe/smoe.hpp"

namespace smoe_test {

template <class Router>
using SwiGLULayer = smoe::MoELayer<Router, smoe::expert::SwiGLU<float>, smoe::balance::None>;

// A layer's tensors, owned: a gate of W rows (W = E unless the router has extra logits, e.g. null
// experts), dense SwiGLU experts, and an optional expert bias.
template <class Router>
struct LayerModel {
    std::int64_t d, f, E, W;
    std::vector<float> gate, w1, w3, w2, bias;
    smoe::expert::SwiGLUConfig expert_cfg() const { return {d, f, E}; }
    smoe::expert::SwiGLUWeights<float> experts() const {
        return smoe::expert::SwiGLUWeights<float>::dense(w1.data(), w3.data(), w2.data(), expert_cfg());
    }
    typename SwiGLULayer<Router>::Weights weights() const {
        return {smoe::MatrixView<float const>(gate.data(), W, d), bias, experts()};
    }

    // Draws gate (sd 0.5), then w1, w3, w2 (sd 0.3), in that order.
    static LayerModel random(std::mt19937_64& rng, std::int64_t d, std::int64_t f, std::int64_t E, std::int64_t W = -1) {
        if (W < 0) W = E;
        LayerModel m{d, f, E, W, {}, {}, {}, {}, {}};
        m.gate = normal(rng, static_cast<std::size_t>(W * d), 0.5);
        m.w1 = normal(rng, static_cast<std::size_t>(E * f * d), 0.3);
        m.w3 = normal(rng, static_cast<std::size_t>(E * f * d), 0.3);
        m.w2 = normal(rng, static_cast<std::size_t>(E * d * f), 0.3);
        return m;
    }
};

// The layer's own fp32 logits x · gate^T ([T, W]), for the oracle to route: the gate GEMM is tested on
// its own in test_kernels_cpu, so a near-tie its rounding could flip cannot make a comparison flaky.
template <class Router>
std::vector<float> gate_logits(LayerModel<Router> const& m, std::vector<float> const& x, std::int64_t T) {
    std::vector<float> logits(static_cast<std::size_t>(T * m.W));
    smoe::kernels::cpu::gemm_nt(xsimd::default_arch{}, smoe::MatrixView<float const>(x.data(), T, m.d),
                                smoe::MatrixView<float const>(m.gate.data(), m.W, m.d),
                                smoe::MatrixView<float>(logits.data(), T, m.W));
    return logits;
}

// experts.md §9 metric per token: max_i |y_i - r_i| / max_i |r_i| (max-abs where the reference is 0).
inline void check_close(std::vector<float> const& y, std::vector<double> const& ref, std::int64_t T, std::int64_t d, double bound) {
    REQUIRE(y.size() == ref.size());
    for (std::int64_t t = 0; t < T; ++t) {
        double err = 0, mag = 0;
        for (std::int64_t i = 0; i < d; ++i) {
            err = std::max(err, std::fabs(double(y[t * d + i]) - ref[t * d + i]));
            mag = std::max(mag, std::fabs(ref[t * d + i]));
        }
        INFO("token " << t << ", max |ref| " << mag);
        CHECK((mag > 0 ? err / mag : err) <= bound);
    }
}

}  // namespace smoe_test
