// The research compositions of research.md §1-§3: Chain-of-Experts (layer::Chain), RMoE's recurrent
// router (gate::Recurrent, layer::Recurrent) and SMEAR (layer::SoftMerge). Each on the spec's worked
// example as printed there, on random shapes against its scalar oracle (kernels/reference/), on the
// spec's edge cases and errors, and, for the designs that span layers or passes, run as an engine runs
// them. One expert type (SwiGLU<float>, with a shared expert where the spec has one) keeps the compile short.

#include <array>
#include <cmath>
#include <random>
#include <string>
#include <vector>

#include <catch2/catch.hpp>

#include "common/approx.hpp"
#include "common/data.hpp"
#include "smoe/expert/shared.hpp"
#include "smoe/kernels/reference/chain.hpp"
#include "smoe/layer/chain.hpp"
#include "smoe/smoe.hpp"

using smoe::MatrixView;
using Swi = smoe::expert::SwiGLU<float>;
using SwiShared = smoe::expert::Shared<Swi>;

namespace {

// research.md §0: F(v) = ((v mod 5) − 2) / 4 and the formula SwiGLU experts built from it.
double formula(std::int64_t v) { return double(v % 5 - 2) / 4.0; }

struct Experts {
    std::int64_t E, d, f;
    std::vector<float> w1, w3, w2;
    smoe::expert::SwiGLUConfig cfg() const { return {.hidden_size = d, .intermediate_size = f, .num_experts = E}; }
    smoe::expert::SwiGLUWeights<float> weights() const { return smoe::expert::SwiGLUWeights<float>::dense(w1.data(), w3.data(), w2.data(), cfg()); }
};

// Experts first_id .. first_id + E − 1 of the formula.
Experts formula_experts(std::int64_t E, std::int64_t d, std::int64_t f, std::int64_t first_id = 0) {
    Experts x{E, d, f, std::vector<float>(E * f * d), std::vector<float>(E * f * d), std::vector<float>(E * d * f)};
    for (std::int64_t k = 0; k < E; ++k) {
        std::int64_t const e = first_id + k;
        for (std::int64_t i = 0; i < f; ++i)
            for (std::int64_t j = 0; j < d; ++j) {
                x.w1[(k * f + i) * d + j] = float(formula(e + 2 * i + 3 * j));
                x.w3[(k * f + i) * d + j] = float(formula(2 * e + i + 2 * j));
                x.w2[(k * d + j) * f + i] = float(formula(3 * e + i + j));
            }
    }
    return x;
}

// sd 1/sqrt(d) and 1/sqrt(f): outputs of the size of the inputs, so passes and layers stacked with a
// residual keep logits in a range where softmax weights do not underflow to exact ties.
Experts random_experts(std::mt19937_64& rng, std::int64_t E, std::int64_t d, std::int64_t f) {
    double const sd = 1.0 / std::sqrt(double(d)), sf = 1.0 / std::sqrt(double(f));
    return {E, d, f, smoe_test::normal(rng, E * f * d, sd), smoe_test::normal(rng, E * f * d, sd), smoe_test::normal(rng, E * d * f, sf)};
}

std::vector<float> const kX{1.0f, -0.5f, 0.25f, -1.0f, 0.5f, 2.0f, 0.5f, 1.0f, -1.0f};  // x0, x1, x2 of research.md §0

MatrixView<float const> rows(std::vector<float> const& v, std::int64_t T, std::int64_t d) { return {v.data(), T, d}; }

// Max over rows of max|a − b| / max|b| (absolute where the row is zero).
void check_rows(std::vector<float> const& got, std::vector<double> const& want, std::int64_t d, double tol) {
    REQUIRE(got.size() == want.size());
    for (std::size_t r = 0; r * d < want.size(); ++r) {
        double err = 0, mag = 0;
        for (std::int64_t c = 0; c < d; ++c) {
            err = std::max(err, std::fabs(double(got[r * d + c]) - want[r * d + c]));
            mag = std::max(mag, std::fabs(want[r * d + c]));
        }
        INFO("row " << r);
        CHECK((mag > 0 ? err / mag : err) <= tol);
    }
}

std::vector<std::int32_t> ids_of(smoe::RoutingResult const& r) {
    std::vector<std::int32_t> v;
    for (std::int64_t t = 0; t < r.num_tokens; ++t)
        for (std::int64_t j = 0; j < r.k; ++j) v.push_back(r.expert_ids(t, j));
    return v;
}

}  // namespace

// ---------------------------------------------------------------------------------------------------
// §1 Chain-of-Experts

namespace {

using ChainLayer = smoe::layer::Chain<smoe::router::TopK, SwiShared, smoe::balance::None>;

// G_t[e][j] = ((3e + 2j + 5(t − 1)) mod 7 − 3) / 4 for t = 1, 2.
std::vector<float> chain_gate(std::int64_t t) {
    std::vector<float> g(4 * 3);
    for (std::int64_t e = 0; e < 4; ++e)
        for (std::int64_t j = 0; j < 3; ++j) g[e * 3 + j] = float(double((3 * e + 2 * j + 5 * (t - 1)) % 7 - 3) / 4.0);
    return g;
}

struct ChainExample {
    Experts routed = formula_experts(4, 3, 2), shared = formula_experts(1, 3, 2, 4);
    std::vector<float> g1 = chain_gate(1), g2 = chain_gate(2);
    std::array<MatrixView<float const>, 2> gates{MatrixView<float const>(g1.data(), 4, 3), MatrixView<float const>(g2.data(), 4, 3)};

    ChainLayer make(std::int64_t C, bool independent, smoe::layer::ChainOutput out = smoe::layer::ChainOutput::state,
                    bool residual = true) const {
        std::span<MatrixView<float const> const> g(gates.data(), independent ? std::size_t(C) : 1);
        return ChainLayer({.router = {.num_experts = 4, .top_k = 2},
                           .expert = {.routed = routed.cfg(), .shared = shared.cfg()},
                           .num_iterations = C,
                           .independent_gates = independent,
                           .inner_residual = residual,
                           .output = out,
                           .max_tokens = 8},
                          {.gates = g, .experts = {.routed = routed.weights(), .shared = shared.weights()}});
    }
};

}  // namespace

TEST_CASE("chain-of-experts reproduces research.md's worked example", "[research][chain]") {
    ChainExample ex;
    std::vector<float> y(6);
    std::array<smoe::RoutingResult, 2> r;
    auto chain = ex.make(2, true);
    chain.forward(rows(kX, 2, 3), MatrixView<float>(y.data(), 2, 3), r);
    smoe_test::check_all_close(y, {0.91457, -0.601943, 0.447606, -1.2329, 0.693573, 2.30977}, 1e-5);
    smoe_test::check_equal(ids_of(r[0]), std::vector<std::int32_t>{2, 3, 3, 0});
    smoe_test::check_equal(ids_of(r[1]), std::vector<std::int32_t>{0, 1, 1, 3});
    smoe_test::check_all_close(std::vector<float>{r[0].expert_weights(0, 0), r[0].expert_weights(0, 1), r[0].expert_weights(1, 0),
                                                  r[0].expert_weights(1, 1)},
                               {0.570739, 0.174065, 0.635841, 0.30035}, 1e-5);
    smoe_test::check_all_close(std::vector<float>{r[1].expert_weights(0, 0), r[1].expert_weights(0, 1), r[1].expert_weights(1, 0),
                                                  r[1].expert_weights(1, 1)},
                               {0.510842, 0.177759, 0.557677, 0.372068}, 1e-5);
    // Statistics per pass; their sum over passes is each expert's number of evaluations.
    smoe_test::check_equal(chain.stats(0).routed, std::vector<std::int64_t>{1, 0, 1, 2});
    smoe_test::check_equal(chain.stats(1).routed, std::vector<std::int64_t>{1, 2, 0, 1});

    auto delta = ex.make(2, true, smoe::layer::ChainOutput::delta);
    delta.forward(rows(kX, 2, 3), MatrixView<float>(y.data(), 2, 3));
    smoe_test::check_all_close(y, {-0.0854297, -0.101943, 0.197606, -0.232897, 0.193573, 0.309773}, 1e-5, 1e-7);

    auto shared_gate = ex.make(2, false);
    shared_gate.forward(rows(kX, 2, 3), MatrixView<float>(y.data(), 2, 3), r);
    smoe_test::check_all_close(y, {0.850081, -0.575641, 0.494084, -1.20428, 0.679985, 2.26562}, 1e-5);
    smoe_test::check_equal(ids_of(r[1]), std::vector<std::int32_t>{2, 3, 3, 0});

    auto one = ex.make(1, true);  // C = 1: the x⁽¹⁾ column, y = x + MoE(x)
    one.forward(rows(kX, 2, 3), MatrixView<float>(y.data(), 2, 3));
    smoe_test::check_all_close(y, {0.930052, -0.538585, 0.371143, -1.0937, 0.590803, 2.12171}, 1e-5);
}

TEST_CASE("chain-of-experts matches the oracle on random shapes, passes and thread counts", "[research][chain]") {
    smoe::DefaultThreadPool pool(2);
    for (int trial = 0; trial < 6; ++trial) {
        std::mt19937_64 rng(100 + trial);
        std::int64_t const E = 3 + trial * 2, d = 5 + 7 * trial, f = 3 + 5 * trial, T = trial == 0 ? 1 : 9 + 13 * trial;
        std::int64_t const k = 1 + trial % 3, C = 1 + (trial + 1) % 3;
        bool const independent = trial % 2 == 0, residual = trial != 3, delta = trial % 3 == 1;
        INFO("trial " << trial << ": E " << E << " d " << d << " f " << f << " T " << T << " k " << k << " C " << C);
        auto const routed = random_experts(rng, E, d, f), shared = random_experts(rng, 1, d, 2 * f);
        std::vector<std::vector<float>> g;
        std::vector<MatrixView<float const>> gv;
        for (std::int64_t t = 0; t < C; ++t) g.push_back(smoe_test::normal(rng, E * d, 0.5));
        for (auto const& v : g) gv.emplace_back(v.data(), E, d);
        auto const x = smoe_test::normal(rng, T * d, 1.0);
        smoe::router::TopKConfig const rc{.num_experts = E, .top_k = k};
        ChainLayer chain({.router = rc, .expert = {.routed = routed.cfg(), .shared = shared.cfg()}, .num_iterations = C,
                          .independent_gates = independent, .inner_residual = residual,
                          .output = delta ? smoe::layer::ChainOutput::delta : smoe::layer::ChainOutput::state, .max_tokens = T},
                         {.gates = std::span<MatrixView<float const> const>(gv.data(), independent ? gv.size() : 1),
                          .experts = {.routed = routed.weights(), .shared = shared.weights()}});
        if (trial % 2 == 1) chain.set_thread_pool(pool);
        std::vector<MatrixView<float const>> per_pass(std::size_t(C), gv[0]);
        if (independent) per_pass = gv;
        auto const sw = shared.weights();
        auto const want = smoe::reference::chain_forward(rc, per_pass, routed.weights(), &sw, residual, delta, rows(x, T, d));
        std::vector<float> y(T * d);
        std::vector<smoe::RoutingResult> r(static_cast<std::size_t>(C));
        chain.forward(rows(x, T, d), MatrixView<float>(y.data(), T, d), r);
        for (std::int64_t t = 0; t < C; ++t) {
            INFO("pass " << t);
            smoe_test::check_equal(ids_of(r[t]), want.routing[t].expert_ids);
        }
        check_rows(y, want.y, d, 2e-5);
        // In place (y aliases x) gives the same values.
        auto xy = x;
        chain.forward(rows(xy, T, d), MatrixView<float>(xy.data(), T, d));
        CHECK(xy == y);
    }
}

TEST_CASE("chain-of-experts runs as a stack of decoder layers in an engine would, one chain per layer", "[research][chain]") {
    // Three decoder layers h ← h + Chain_l(h) (a host residual over the state output), prefill of 7
    // tokens and a decode of one: each chain calls its experts C times per token and each decode
    // token gives the bits of its prefill row (row independence).
    std::mt19937_64 rng(7);
    std::int64_t const E = 6, d = 16, f = 8, T = 7;
    std::vector<Experts> experts;
    std::vector<std::vector<float>> gates;
    std::vector<std::array<MatrixView<float const>, 2>> gv;
    for (int l = 0; l < 3; ++l) {
        experts.push_back(random_experts(rng, E, d, f));
        gates.push_back(smoe_test::normal(rng, E * d, 0.5));
        gates.push_back(smoe_test::normal(rng, E * d, 0.5));
    }
    auto const shared = random_experts(rng, 1, d, f);
    std::vector<ChainLayer> layers;
    layers.reserve(3);
    for (int l = 0; l < 3; ++l) {
        gv.push_back({MatrixView<float const>(gates[2 * l].data(), E, d), MatrixView<float const>(gates[2 * l + 1].data(), E, d)});
        layers.emplace_back(ChainLayer::Config{.router = {.num_experts = E, .top_k = 2}, .expert = {.routed = experts[l].cfg(), .shared = shared.cfg()},
                                               .max_tokens = T},
                            ChainLayer::Weights{.gates = gv[l], .experts = {.routed = experts[l].weights(), .shared = shared.weights()}});
    }
    auto run = [&](std::vector<float> h, std::int64_t rows_n) {
        std::vector<float> o(h.size());
        for (auto& layer : layers) {
            layer.forward(rows(h, rows_n, d), MatrixView<float>(o.data(), rows_n, d));
            for (std::size_t i = 0; i < h.size(); ++i) h[i] += o[i];
        }
        return h;
    };
    auto const x = smoe_test::normal(rng, T * d, 1.0);
    auto const prefill = run(x, T);
    // The oracle, layer by layer.
    std::vector<double> want(x.begin(), x.end());
    auto const sw = shared.weights();
    for (int l = 0; l < 3; ++l) {
        std::vector<float> const h(want.begin(), want.end());
        auto const o = smoe::reference::chain_forward({.num_experts = E, .top_k = 2}, gv[l], experts[l].weights(), &sw, true, false, rows(h, T, d));
        for (std::size_t i = 0; i < want.size(); ++i) want[i] = double(h[i]) + o.y[i];
    }
    check_rows(prefill, want, d, 5e-5);
    std::int64_t evaluations = 0;
    for (auto const& layer : layers)
        for (std::int64_t t = 0; t < 2; ++t)
            for (auto n : layer.stats(t).routed) evaluations += n;
    CHECK(evaluations == 3 * 2 * 2 * T);  // layers × passes × k × tokens
    std::vector<float> const last(x.end() - d, x.end());
    auto const decode = run(last, 1);
    CHECK(std::vector<float>(prefill.end() - d, prefill.end()) == decode);
}

TEST_CASE("chain-of-experts rejects bad configurations and reports the pass of a bad logit", "[research][chain][errors]") {
    ChainExample ex;
    auto message = [](auto&& f) {
        try {
            f();
        } catch (smoe::invalid_argument const& e) {
            return std::string(e.what());
        }
        return std::string("no error");
    };
    CHECK_THAT(message([&] { ex.make(0, true); }), Catch::Contains("num_iterations") && Catch::Contains("= 0"));
    CHECK_THAT(message([&] {
                   ChainLayer({.router = {.num_experts = 4, .top_k = 2}, .expert = {.routed = ex.routed.cfg(), .shared = ex.shared.cfg()},
                               .num_iterations = 3},
                              {.gates = ex.gates, .experts = {.routed = ex.routed.weights(), .shared = ex.shared.weights()}});
               }),
               Catch::Contains("'gates' = 2 gate tensors") && Catch::Contains("3 (one per iteration"));
    CHECK_THAT(message([&] {
                   std::span<MatrixView<float const> const> g(ex.gates.data(), 2);
                   ChainLayer({.router = {.num_experts = 4, .top_k = 2}, .expert = {.routed = ex.routed.cfg(), .shared = ex.shared.cfg()},
                               .independent_gates = false},
                              {.gates = g, .experts = {.routed = ex.routed.weights(), .shared = ex.shared.weights()}});
               }),
               Catch::Contains("1 (independent_gates is false)"));
    CHECK_THAT(message([&] {
                   std::array<MatrixView<float const>, 2> g{ex.gates[0], MatrixView<float const>(ex.g2.data(), 4, 2)};
                   ChainLayer({.router = {.num_experts = 4, .top_k = 2}, .expert = {.routed = ex.routed.cfg(), .shared = ex.shared.cfg()}},
                              {.gates = g, .experts = {.routed = ex.routed.weights(), .shared = ex.shared.weights()}});
               }),
               Catch::Contains("'gates[1]'"));
    CHECK_THAT(message([&] {
                   ChainLayer({.router = {.num_experts = 4, .top_k = 5}, .expert = {.routed = ex.routed.cfg(), .shared = ex.shared.cfg()}},
                              {.gates = ex.gates, .experts = {.routed = ex.routed.weights(), .shared = ex.shared.weights()}});
               }),
               Catch::Contains("top_k"));
    // T = 0 is an empty result.
    auto chain = ex.make(2, true);
    std::vector<float> y(6);
    chain.forward(MatrixView<float const>(kX.data(), 0, 3), MatrixView<float>(y.data(), 0, 3));
    // A huge input overflows the second pass's logits to inf: the error names the pass.
    std::vector<float> big{3e38f, -3e38f, 3e38f};
    CHECK_THAT(message([&] { chain.forward(rows(big, 1, 3), MatrixView<float>(y.data(), 1, 3)); }),
               Catch::Contains("logits") && Catch::Contains("chain iteration"));
}
