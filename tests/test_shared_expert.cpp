// expert::Shared<SwiGLU<float>, Gate> inside MoELayer against the scalar oracle (experts.md §6):
// routed sum first, then g(x) · f_sh(x), with g = 1 (DeepSeek) or σ(w_g · x) (Qwen2-MoE).

#include <cmath>
#include <random>
#include <vector>

#include <catch2/catch.hpp>

#include "common/data.hpp"
#include "common/layer_model.hpp"
#include "smoe/expert/shared.hpp"
#include "smoe/kernels/reference/reference.hpp"
#include "smoe/smoe.hpp"

using smoe::MatrixView;
using smoe::router::TopKConfig;
using Catch::Matchers::Contains;
using SwiGLU = smoe::expert::SwiGLU<float>;
using Model = smoe_test::LayerModel<smoe::router::TopK>;

namespace {

template <class Gate>
using SharedLayer = smoe::MoELayer<smoe::router::TopK, smoe::expert::Shared<SwiGLU, Gate>, smoe::balance::None>;

struct SharedModel {
    std::int64_t fs;
    std::vector<float> w1, w3, w2, gate;
    smoe::expert::SwiGLUConfig cfg(std::int64_t d) const { return {d, fs, 1}; }
    smoe::expert::SwiGLUWeights<float> weights(std::int64_t d) const {
        return smoe::expert::SwiGLUWeights<float>::dense(w1.data(), w3.data(), w2.data(), cfg(d));
    }
};

SharedModel random_shared(std::mt19937_64& rng, std::int64_t d, std::int64_t fs) {
    SharedModel s{fs, {}, {}, {}, {}};
    s.w1 = smoe_test::normal(rng, static_cast<std::size_t>(fs * d), 0.3);
    s.w3 = smoe_test::normal(rng, static_cast<std::size_t>(fs * d), 0.3);
    s.w2 = smoe_test::normal(rng, static_cast<std::size_t>(d * fs), 0.3);
    s.gate = smoe_test::normal(rng, static_cast<std::size_t>(d), 0.5);
    return s;
}

// Oracle: routed combine in double, then + g · f_sh in double.
template <bool gated>
std::vector<double> oracle(Model const& m, SharedModel const& s, TopKConfig const& cfg, std::vector<float> const& x, std::int64_t T) {
    auto const logits = smoe_test::gate_logits(m, x, T);
    auto const routing = smoe::reference::route_topk(cfg, MatrixView<float const>(logits.data(), T, m.E), {});
    auto y = smoe::reference::combine_swiglu(routing.view(), m.experts(), MatrixView<float const>(x.data(), T, m.d));
    auto const sw = s.weights(m.d);
    for (std::int64_t t = 0; t < T; ++t) {
        double g = 1.0;
        if (gated) {
            double z = 0;
            for (std::int64_t i = 0; i < m.d; ++i) z += double(s.gate[i]) * x[t * m.d + i];
            g = 1.0 / (1.0 + std::exp(-z));
        }
        auto const f = smoe::reference::swiglu_expert(sw, 0, x.data() + t * m.d);
        for (std::int64_t i = 0; i < m.d; ++i) y[t * m.d + i] += g * f[i];
    }
    return y;
}

template <class Gate>
void check_random(std::uint64_t seed) {
    constexpr bool gated = std::is_same_v<Gate, smoe::expert::shared_gate::Sigmoid>;
    std::mt19937_64 rng(seed);
    for (auto [d, f, fs, E, k] : {std::tuple{13, 7, 11, 6, 2}, {40, 24, 48, 8, 3}, {72, 33, 70, 5, 5}}) {
        Model const m = Model::random(rng, d, f, E);
        SharedModel const s = random_shared(rng, d, fs);
        TopKConfig const rc{.num_experts = E, .top_k = k, .norm_topk_prob = true};
        typename SharedLayer<Gate>::Config cfg{.router = rc, .expert = {m.expert_cfg(), s.cfg(d)}, .max_tokens = 130};
        typename SharedLayer<Gate>::Weights w{MatrixView<float const>(m.gate.data(), E, d), {},
                                              {m.experts(), s.weights(d), gated ? MatrixView<float const>(s.gate.data(), 1, d) : MatrixView<float const>{}}};
        SharedLayer<Gate> layer(cfg, w);
        for (std::int64_t T : {0, 1, 7, 130}) {
            INFO("d " << d << ", f " << f << ", fs " << fs << ", E " << E << ", k " << k << ", T " << T);
            auto const x = smoe_test::normal(rng, static_cast<std::size_t>(T * d), 1.0);
            std::vector<float> y(static_cast<std::size_t>(T * d), -7.0f);
            layer.forward(MatrixView<float const>(x.data(), T, d), MatrixView<float>(y.data(), T, d));
            smoe_test::check_close(y, oracle<gated>(m, s, rc, x, T), T, d, 2e-5);
        }
    }
}

}  // namespace

TEST_CASE("an ungated shared expert adds f_sh(x) after the routed sum (DeepSeek)", "[shared]") {
    check_random<smoe::expert::shared_gate::None>(11);
}

TEST_CASE("a sigmoid-gated shared expert adds sigmoid(w_g x) f_sh(x) (Qwen2-MoE)", "[shared]") {
    check_random<smoe::expert::shared_gate::Sigmoid>(12);
}

TEST_CASE("a token's output with a shared expert does not depend on the batch it is in", "[shared]") {
    std::mt19937_64 rng(13);
    std::int64_t const d = 24, E = 4;
    Model const m = Model::random(rng, d, 10, E);
    SharedModel const s = random_shared(rng, d, 20);
    using L = SharedLayer<smoe::expert::shared_gate::Sigmoid>;
    L layer({.router = {.num_experts = E, .top_k = 2}, .expert = {m.expert_cfg(), s.cfg(d)}, .max_tokens = 100},
            {MatrixView<float const>(m.gate.data(), E, d), {}, {m.experts(), s.weights(d), MatrixView<float const>(s.gate.data(), 1, d)}});
    auto const x = smoe_test::normal(rng, static_cast<std::size_t>(100 * d), 1.0);
    std::vector<float> all(100 * d), one(d);
    layer.forward(MatrixView<float const>(x.data(), 100, d), MatrixView<float>(all.data(), 100, d));
    for (std::int64_t t : {0, 63, 64, 99}) {
        layer.forward(MatrixView<float const>(x.data() + t * d, 1, d), MatrixView<float>(one.data(), 1, d));
        CHECK(std::equal(one.begin(), one.end(), all.begin() + t * d));
    }
}

TEST_CASE("Shared rejects a shared expert that is not one expert, a wrong gate, and a gate without Sigmoid", "[shared][errors]") {
    std::mt19937_64 rng(14);
    std::int64_t const d = 8, E = 4;
    Model const m = Model::random(rng, d, 6, E);
    SharedModel const s = random_shared(rng, d, 5);
    using Gated = smoe::expert::Shared<SwiGLU, smoe::expert::shared_gate::Sigmoid>;
    using Plain = smoe::expert::Shared<SwiGLU, smoe::expert::shared_gate::None>;
    // Two "shared experts" as a stacked [2, f, d]: must be given as one of width 2f.
    auto const two = smoe::expert::SwiGLUWeights<float>::dense(m.w1.data(), m.w3.data(), m.w2.data(), {d, 6, 2});
    CHECK_THROWS_WITH(Plain({m.expert_cfg(), {d, 6, 2}}, {m.experts(), two, {}}), Contains("shared.num_experts") && Contains("1"));
    CHECK_THROWS_WITH(Gated({m.expert_cfg(), s.cfg(d)}, {m.experts(), s.weights(d), MatrixView<float const>(s.gate.data(), 1, d - 1)}),
                      Contains("shared_expert_gate"));
    CHECK_THROWS_WITH(Gated({m.expert_cfg(), s.cfg(d)}, {m.experts(), s.weights(d), {}}), Contains("shared_expert_gate"));
    CHECK_THROWS_WITH(Plain({m.expert_cfg(), s.cfg(d)}, {m.experts(), s.weights(d), MatrixView<float const>(s.gate.data(), 1, d)}),
                      Contains("shared_gate::Sigmoid"));
    std::vector<float> w1(5 * 9), w2(9 * 5);
    auto const wrong_d = smoe::expert::SwiGLUWeights<float>::dense(w1.data(), w1.data(), w2.data(), {9, 5, 1});
    CHECK_THROWS_WITH(Plain({m.expert_cfg(), {9, 5, 1}}, {m.experts(), wrong_d, {}}), Contains("shared.hidden_size"));
}

TEST_CASE("a layer with a shared expert gives the same bits with and without a thread pool", "[shared][threads]") {
    std::mt19937_64 rng(15);
    std::int64_t const d = 72, E = 8, T = 150;
    Model const m = Model::random(rng, d, 40, E);
    SharedModel const s = random_shared(rng, d, 56);
    using L = SharedLayer<smoe::expert::shared_gate::Sigmoid>;
    L::Config const cfg{.router = {.num_experts = E, .top_k = 2}, .expert = {m.expert_cfg(), s.cfg(d)}, .max_tokens = T};
    L::Weights const w{MatrixView<float const>(m.gate.data(), E, d), {}, {m.experts(), s.weights(d), MatrixView<float const>(s.gate.data(), 1, d)}};
    L serial(cfg, w), threaded(cfg, w);
    smoe::DefaultThreadPool pool(2);
    threaded.set_thread_pool(pool);
    auto const x = smoe_test::normal(rng, static_cast<std::size_t>(T * d), 1.0);
    std::vector<float> y1(T * d), y2(T * d);
    serial.forward(MatrixView<float const>(x.data(), T, d), MatrixView<float>(y1.data(), T, d));
    threaded.forward(MatrixView<float const>(x.data(), T, d), MatrixView<float>(y2.data(), T, d));
    CHECK(y1 == y2);
    CHECK(serial.experts().packed_bytes() > 0);
}
