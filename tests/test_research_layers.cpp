// The research compositions of research.md §1-§3: Chain-of-Experts (layer::Chain), RMoE's recurrent
// router (gate::Recurrent, layer::Recurrent) and SMEAR (layer::SoftMerge). Each on the spec's worked
// example as printed there, on random shapes against its scalar oracle (kernels/reference/), on the
// spec's edge cases and errors, and, for the designs that span layers or passes, run as an engine runs
// them. One expert type (SwiGLU<float>, with a shared expert where the spec has one) keeps the compile short.

#include <array>
#include <functional>
#include <limits>
#include <memory>
#include <cmath>
#include <random>
#include <string>
#include <vector>

#include <catch2/catch.hpp>

#include "common/approx.hpp"
#include "common/counting_new.hpp"
#include "common/data.hpp"
#include "common/formula.hpp"
#include "smoe/expert/shared.hpp"
#include "smoe/kernels/reference/chain.hpp"
#include "smoe/kernels/reference/recurrent.hpp"
#include "smoe/layer/chain.hpp"
#include "smoe/layer/recurrent.hpp"
#include "smoe/layer/soft_merge.hpp"
#include "smoe/kernels/reference/soft_merge.hpp"
#include "smoe/smoe.hpp"

using smoe::MatrixView;
using Swi = smoe::expert::SwiGLU<float>;
using SwiShared = smoe::expert::Shared<Swi>;

namespace {

using Experts = smoe_test::FormulaExperts;  // research.md §0's formula experts, or random ones
using smoe_test::formula_experts;

// sd 1/sqrt(d) and 1/sqrt(f): outputs of the size of the inputs, so passes and layers stacked with a
// residual keep logits in a range where softmax weights do not underflow to exact ties.
Experts random_experts(std::mt19937_64& rng, std::int64_t E, std::int64_t d, std::int64_t f) {
    double const sd = 1.0 / std::sqrt(double(d)), sf = 1.0 / std::sqrt(double(f));
    return {E, d, f, smoe_test::normal(rng, E * f * d, sd), smoe_test::normal(rng, E * f * d, sd), smoe_test::normal(rng, E * d * f, sf)};
}

std::vector<float> const& kX = smoe_test::kFormulaX;  // x0, x1, x2 of research.md §0

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
    // The passes keep no workspace of their own (the chain carves theirs): called alone, a pass asks for one.
    CHECK_THAT(message([&] { chain.pass(0).forward(rows(kX, 1, 3), MatrixView<float>(y.data(), 1, 3)); }),
               Catch::Contains("'workspace' = none (own_workspace is false)"));
}

// ---------------------------------------------------------------------------------------------------
// §2 RMoE: layerwise recurrent router

namespace {

using RecurrentLayer = smoe::layer::Recurrent<smoe::router::TopK, Swi, smoe::balance::None>;
std::string error_of(auto&& f) {
    try {
        f();
    } catch (smoe::invalid_argument const& e) {
        return e.what();
    }
    return "no error";
}

// Owning storage for a cell's weights: six [p, p] matrices and six [p] biases, in the code's order
// ir, hr, iz, hz, in, hn.
struct CellData {
    std::int64_t p;
    std::array<std::vector<float>, 6> w, b;
    smoe::gate::RecurrentCellWeights view(smoe::gate::CellKind kind = smoe::gate::CellKind::gru) const {
        auto m = [&](int i) { return MatrixView<float const>(w[i].data(), p, p); };
        auto v = [&](int i) { return std::span<float const>(b[i]); };
        if (kind == smoe::gate::CellKind::rnn) return {.weight_in = m(4), .weight_hn = m(5), .bias_in = v(4), .bias_hn = v(5)};
        return {m(0), m(1), m(2), m(3), m(4), m(5), v(0), v(1), v(2), v(3), v(4), v(5)};
    }
};

CellData spec_cell() {
    return {2,
            {std::vector<float>{-0.75f, 0, -0.25f, 0.5f}, {-0.5f, 0.25f, 0, 0.75f}, {-0.25f, 0.5f, 0.25f, -0.75f}, {0, 0.75f, 0.5f, -0.5f},
             {0.25f, -0.75f, 0.75f, -0.25f}, {0.5f, -0.5f, -0.75f, 0}},
            {std::vector<float>{-0.25f, 0.125f}, {-0.125f, 0.25f}, {0, -0.25f}, {0.125f, -0.125f}, {0.25f, 0}, {-0.25f, 0.125f}}};
}

CellData random_cell(std::mt19937_64& rng, std::int64_t p) {
    CellData c{p, {}, {}};
    for (int i = 0; i < 6; ++i) c.w[i] = smoe_test::normal(rng, p * p, 1.0 / std::sqrt(double(p))), c.b[i] = smoe_test::normal(rng, p, 0.3);
    return c;
}

}  // namespace

TEST_CASE("the recurrent router reproduces research.md's worked example, state included", "[research][rmoe]") {
    auto const cd = spec_cell();
    smoe::gate::RecurrentCell const cell({.hidden_size = 2}, cd.view());
    std::vector<float> const P0{-1, 0, 1, -0.5f, 0.5f, -1}, Q0{-1, -0.5f, 0.5f, 1, -0.5f, 0, 1, -1};
    std::vector<float> const P1{-0.5f, 0.5f, -1, 0, 1, -0.5f}, Q1{0, 0.5f, -1, -0.5f, 0.5f, 1, -0.5f, 0};
    std::vector<float> const x_l1{-0.5f, 0.5f, 0.5f, 0.25f, -0.75f, 0.5f};
    auto const ex = formula_experts(4, 3, 2);
    smoe::router::TopKConfig const rc{.num_experts = 4, .top_k = 2, .norm_topk_prob = true};
    RecurrentLayer l0({.router = rc, .expert = ex.cfg(), .max_tokens = 4}, cell,
                      {.gate = {rows(P0, 2, 3), MatrixView<float const>(Q0.data(), 4, 2)}, .experts = ex.weights()});
    RecurrentLayer l1({.router = rc, .expert = ex.cfg(), .max_tokens = 4, .layer_index = 1}, cell,
                      {.gate = {rows(P1, 2, 3), MatrixView<float const>(Q1.data(), 4, 2)}, .experts = ex.weights()});
    smoe::gate::RouterState state(4, cell);
    state.reset(2);
    std::vector<float> y(6);
    auto hrow = [&] {
        auto const h = std::as_const(state).h();
        return std::vector<float>{h(0, 0), h(0, 1), h(1, 0), h(1, 1)};
    };
    auto wrow = [](smoe::RoutingResult const& r) {
        return std::vector<float>{r.expert_weights(0, 0), r.expert_weights(0, 1), r.expert_weights(1, 0), r.expert_weights(1, 1)};
    };
    auto const r0 = l0.forward(rows(kX, 2, 3), MatrixView<float>(y.data(), 2, 3), state);
    smoe_test::check_all_close(hrow(), {0.321915, -0.11018, 0.744628, 0.209724}, 1e-5);
    smoe_test::check_equal(ids_of(r0), std::vector<std::int32_t>{3, 1, 1, 3});
    smoe_test::check_all_close(wrow(r0), {0.594191, 0.405809, 0.511781, 0.488219}, 1e-5);
    auto const want0 = smoe::reference::combine_swiglu(smoe::reference::from_token_major(2, 2, 4, {3, 1, 1, 3}, wrow(r0)).view(),
                                                       ex.weights(), rows(kX, 2, 3));
    check_rows(y, want0, 3, 1e-5);

    auto const r1 = l1.forward(rows(x_l1, 2, 3), MatrixView<float>(y.data(), 2, 3), state);
    smoe_test::check_all_close(hrow(), {0.197374, -0.122915, 0.693389, -0.130175}, 1e-5);
    smoe_test::check_equal(ids_of(r1), std::vector<std::int32_t>{2, 0, 2, 0});
    smoe_test::check_all_close(wrow(r1), {0.509306, 0.490694, 0.56994, 0.43006}, 1e-5);

    // The logits themselves, from the gate alone (layer 0's, from the zero state).
    std::vector<std::byte> ws(l0.gate().workspace_size(2) + 64);
    std::vector<float> logits(8);
    smoe::Workspace w(ws);
    state.reset(2);
    l0.gate().logits(xsimd::default_arch{}, rows(kX, 2, 3), state, MatrixView<float>(logits.data(), 2, 4), w);
    smoe_test::check_all_close(logits, {-0.266825, 0.0507776, -0.160958, 0.432095, -0.84949, 0.582038, -0.372314, 0.534904}, 1e-5);
    smoe::Workspace w1(ws);
    l1.gate().logits(xsimd::default_arch{}, rows(x_l1, 2, 3), state, MatrixView<float>(logits.data(), 2, 4), w1);
    smoe_test::check_all_close(logits, {-0.0614574, -0.135916, -0.024228, -0.0986868, -0.0650874, -0.628302, 0.21652, -0.346694}, 1e-5);

    // The state matters: token 0 at layer 1 from a zero state selects [1, 3], not [2, 0].
    state.reset(1);
    auto const rz = l1.forward(rows(x_l1, 1, 3), MatrixView<float>(y.data(), 1, 3), state);
    smoe_test::check_equal(ids_of(rz), std::vector<std::int32_t>{1, 3});
    auto const hz = std::as_const(state).h();
    smoe_test::check_all_close(std::vector<float>{hz(0, 0), hz(0, 1)}, {-0.0172122, 0.00975053}, 1e-5);
}

TEST_CASE("recurrent router layers run as an engine runs them, against the oracle", "[research][rmoe]") {
    // L MoE layers with a dense layer between (it leaves the state alone), the state reset once per
    // forward pass; prefill, then each token decoded alone gives its prefill row's bits.
    smoe::DefaultThreadPool pool(2);
    for (int trial = 0; trial < 4; ++trial) {
        std::mt19937_64 rng(300 + trial);
        std::int64_t const E = 4 + 3 * trial, d = 8 + 9 * trial, f = 5 + 4 * trial, p = 3 + 11 * trial, T = 5 + 17 * trial, L = 3;
        auto const kind = trial == 2 ? smoe::gate::CellKind::rnn : smoe::gate::CellKind::gru;
        INFO("trial " << trial << ": E " << E << " d " << d << " f " << f << " p " << p << " T " << T);
        auto const cd = random_cell(rng, p);
        smoe::gate::RecurrentCell const cell({.hidden_size = p, .cell = kind}, cd.view(kind));
        smoe::router::TopKConfig const rc{.num_experts = E, .top_k = 1 + trial % 3, .norm_topk_prob = true};
        std::vector<Experts> experts;
        std::vector<std::vector<float>> P, Q;
        std::vector<RecurrentLayer> layers;
        layers.reserve(L);
        for (std::int64_t l = 0; l < L; ++l) {
            experts.push_back(random_experts(rng, E, d, f));
            P.push_back(smoe_test::normal(rng, p * d, 1.0 / std::sqrt(double(d))));
            Q.push_back(smoe_test::normal(rng, E * p, 1.0));
        }
        for (std::int64_t l = 0; l < L; ++l)
            layers.emplace_back(RecurrentLayer::Config{.router = rc, .expert = experts[l].cfg(), .max_tokens = T, .layer_index = l}, cell,
                                RecurrentLayer::Weights{.gate = {rows(P[l], p, d), rows(Q[l], E, p)}, .experts = experts[l].weights()});
        if (trial % 2 == 1)
            for (auto& l : layers) l.set_thread_pool(pool);
        smoe::gate::RouterState state(T, cell);
        auto run = [&](std::vector<float> h, std::int64_t n, std::vector<std::vector<smoe::RoutingResult>>* routes) {
            state.reset(n);
            std::vector<float> o(h.size());
            for (std::int64_t l = 0; l < L; ++l) {
                auto const r = layers[l].forward(rows(h, n, d), MatrixView<float>(o.data(), n, d), state);
                if (routes) routes->push_back({r});
                for (std::size_t i = 0; i < h.size(); ++i) h[i] += o[i];
                for (auto& v : h) v = std::tanh(v);  // the "dense layer" between MoE layers
            }
            return h;
        };
        auto const x = smoe_test::normal(rng, T * d, 1.0);
        // The oracle, layer by layer, carrying its own double state.
        std::vector<float> hx = x;
        std::vector<double> hs;
        std::vector<std::vector<std::int32_t>> want_ids;
        for (std::int64_t l = 0; l < L; ++l) {
            auto const tr = smoe::reference::recurrent_layer(rc, cell.config(), cd.view(kind), rows(P[l], p, d), rows(Q[l], E, p),
                                                             experts[l].weights(), rows(hx, T, d), hs);
            hs = tr.h;
            want_ids.push_back(tr.routing.expert_ids);
            for (std::size_t i = 0; i < hx.size(); ++i) hx[i] = float(std::tanh(double(hx[i]) + tr.y[i]));
        }
        std::vector<std::vector<smoe::RoutingResult>> routes;
        auto const got = run(x, T, &routes);
        for (std::int64_t l = 0; l < L; ++l) {
            INFO("layer " << l);
            // Each layer's routing views live in its workspace, so they are still readable here.
            smoe_test::check_equal(ids_of(routes[l][0]), want_ids[l]);
        }
        auto const sh = std::as_const(state).h();
        for (std::int64_t t = 0; t < T; ++t)
            for (std::int64_t i = 0; i < p; ++i) CHECK(double(sh(t, i)) == Approx(hs[t * p + i]).margin(2e-5));
        check_rows(got, std::vector<double>(hx.begin(), hx.end()), d, 2e-5);
        for (std::int64_t t = 0; t < T; t += 7) {
            std::vector<float> const tok(x.begin() + t * d, x.begin() + (t + 1) * d);
            CHECK(run(tok, 1, nullptr) == std::vector<float>(got.begin() + t * d, got.begin() + (t + 1) * d));
        }
    }
}

TEST_CASE("the recurrent router rejects a wrong state, bad weights and non-finite values", "[research][rmoe][errors]") {
    auto const cd = spec_cell();
    smoe::gate::RecurrentCell const cell({.hidden_size = 2}, cd.view());
    std::vector<float> const P0{-1, 0, 1, -0.5f, 0.5f, -1}, Q0{-1, -0.5f, 0.5f, 1, -0.5f, 0, 1, -1};
    auto const ex = formula_experts(4, 3, 2);
    smoe::router::TopKConfig const rc{.num_experts = 4, .top_k = 2, .norm_topk_prob = true};
    RecurrentLayer layer({.router = rc, .expert = ex.cfg(), .max_tokens = 4, .layer_index = 5}, cell,
                         {.gate = {rows(P0, 2, 3), MatrixView<float const>(Q0.data(), 4, 2)}, .experts = ex.weights()});
    std::vector<float> y(12);
    smoe::gate::RouterState state(4, cell);
    state.reset(3);
    CHECK_THAT(error_of([&] { layer.forward(rows(kX, 2, 3), MatrixView<float>(y.data(), 2, 3), state); }),
               Catch::Contains("'state (recurrent router, MoE layer 5)' = [3, 2]") && Catch::Contains("[2, 2]"));
    auto const other_cd = random_cell(*std::make_unique<std::mt19937_64>(1), 3);
    smoe::gate::RecurrentCell const other({.hidden_size = 3}, other_cd.view());
    smoe::gate::RouterState wide(4, other);
    wide.reset(2);
    CHECK_THAT(error_of([&] { layer.forward(rows(kX, 2, 3), MatrixView<float>(y.data(), 2, 3), wide); }), Catch::Contains("'state"));
    state.reset(2);
    state.h()(1, 1) = std::numeric_limits<float>::quiet_NaN();
    CHECK_THAT(error_of([&] { layer.forward(rows(kX, 2, 3), MatrixView<float>(y.data(), 2, 3), state); }),
               Catch::Contains("'state") && Catch::Contains("nan at token 1, unit 1"));
    // A huge input overflows ℓ: the router's logit error, with the layer.
    std::vector<float> const big{3e38f, -3e38f, 3e38f};
    std::vector<float> const Pbig{1e30f, 1e30f, 1e30f, 1e30f, 1e30f, 1e30f};
    std::vector<float> const Qbig{1e38f, 1e38f, -1e38f, 1e38f, 1e38f, 1e38f, 1e38f, -1e38f};
    RecurrentLayer huge({.router = rc, .expert = ex.cfg(), .max_tokens = 4, .layer_index = 2}, cell,
                        {.gate = {rows(Pbig, 2, 3), MatrixView<float const>(Qbig.data(), 4, 2)}, .experts = ex.weights()});
    state.reset(1);
    CHECK_THAT(error_of([&] { huge.forward(rows(big, 1, 3), MatrixView<float>(y.data(), 1, 3), state); }),
               Catch::Contains("logits") && Catch::Contains("MoE layer 2"));
    // Shapes and cells.
    CHECK_THAT(error_of([&] {
                   RecurrentLayer({.router = rc, .expert = ex.cfg()}, cell, {.gate = {rows(P0, 3, 2), MatrixView<float const>(Q0.data(), 4, 2)},
                                                                             .experts = ex.weights()});
               }),
               Catch::Contains("'weight1' = [3, 2]"));
    CHECK_THAT(error_of([&] {
                   RecurrentLayer({.router = rc, .expert = ex.cfg()}, cell, {.gate = {rows(P0, 2, 3), MatrixView<float const>(Q0.data(), 2, 4)},
                                                                             .experts = ex.weights()});
               }),
               Catch::Contains("'weight2' = [2, 4]"));
    CHECK_THAT(error_of([&] { smoe::gate::RecurrentCell({.hidden_size = 2, .cell = smoe::gate::CellKind::rnn}, cd.view()); }),
               Catch::Contains("'weight_ir'") && Catch::Contains("no such weight in an rnn cell"));
    CHECK_THAT(error_of([&] { smoe::gate::RecurrentCell({.hidden_size = 0}, cd.view()); }), Catch::Contains("rnn_hidden_size"));
    auto bad = spec_cell();
    bad.b[3][1] = std::numeric_limits<float>::infinity();
    CHECK_THAT(error_of([&] { smoe::gate::RecurrentCell({.hidden_size = 2}, bad.view()); }), Catch::Contains("'bias_hz' = inf at unit 1"));
    // A MoELayer without a gate takes host logits only; its plain forward says so.
    smoe::MoELayer<smoe::router::TopK, Swi, smoe::balance::None> gateless({.router = rc, .expert = ex.cfg(), .max_tokens = 4},
                                                                         {.experts = ex.weights()});
    CHECK_THAT(error_of([&] { gateless.forward(rows(kX, 2, 3), MatrixView<float>(y.data(), 2, 3)); }),
               Catch::Contains("'gate' = an empty view") && Catch::Contains("forward_logits"));
    // T = 0 is valid.
    state.reset(0);
    auto const r = layer.forward(MatrixView<float const>(kX.data(), 0, 3), MatrixView<float>(y.data(), 0, 3), state);
    CHECK(r.num_tokens == 0);
}

// ---------------------------------------------------------------------------------------------------
// §3 SMEAR: soft merging of experts

namespace {

using Smear = smoe::layer::SoftMerge<Swi>;
using smoe::layer::MergeRouting;
using smoe::layer::MergeScope;

std::vector<float> const kSmearGate{-1, -0.5f, 0, 0, 0.5f, 1, 1, -1, -0.5f};

// Element (o, i) of the merged gate (up: + 8 columns) or down matrix in the fp32 panel layout.
float merged_gate_up(std::vector<float> const& m, std::int64_t d, std::int64_t unit, std::int64_t j, bool up) {
    return m[(unit / 8) * d * 16 + j * 16 + unit % 8 + (up ? 8 : 0)];
}
float merged_down(std::vector<float> const& m, std::int64_t d, std::int64_t f, std::int64_t o, std::int64_t i) {
    std::int64_t const gu = (f + 7) / 8 * d * 16, fs = (f + 7) / 8 * 8;
    return m[gu + (o / 16) * fs * 16 + i * 16 + o % 16];
}

// Runs SoftMerge<SwiGLU<W>> on random shapes against the oracle: both scopes, both router inputs,
// empty sequences, a bias, with and without a pool.
template <class W>
void check_smear_random(std::function<smoe::expert::SwiGLUWeights<W>(Experts const&, std::vector<std::vector<float>>&,
                                                                     std::vector<std::vector<W>>&)> convert,
                        smoe::expert::Bf16Dot dot = smoe::expert::Bf16Dot::off) {
    smoe::DefaultThreadPool pool(2);
    for (int trial = 0; trial < 4; ++trial) {
        std::mt19937_64 rng(500 + trial);
        std::int64_t const E = 1 + 3 * trial, d = 7 + 13 * trial, f = 3 + 9 * trial, T = 1 + 19 * trial;
        auto const scope = trial % 2 == 0 ? MergeScope::sequence : MergeScope::token;
        auto const input = trial == 2 || trial == 3 ? MergeRouting::given : MergeRouting::mean;
        INFO("trial " << trial << ": E " << E << " d " << d << " f " << f << " T " << T);
        auto const ex = random_experts(rng, E, d, f);
        std::vector<std::vector<float>> scales;
        std::vector<std::vector<W>> store;
        auto const weights = convert(ex, scales, store);
        auto const gate = smoe_test::normal(rng, E * d, 1.0), bias = smoe_test::normal(rng, E, 0.5);
        auto const x = smoe_test::normal(rng, T * d, 1.0);
        std::vector<std::int32_t> offsets;
        std::vector<std::int64_t> groups;
        if (scope == MergeScope::sequence) {
            offsets = {0, 0, std::int32_t(T / 3), std::int32_t(T / 3), std::int32_t(T)};  // empty sequences included
            groups.assign(offsets.begin(), offsets.end());
        }
        std::int64_t const G = scope == MergeScope::sequence ? std::int64_t(offsets.size()) - 1 : T;
        auto const given = smoe_test::normal(rng, G * E, 2.0);
        auto cfg = ex.cfg();
        cfg.bf16_dot = dot;
        typename smoe::layer::SoftMerge<smoe::expert::SwiGLU<W>>::Weights w{.experts = weights};
        if (input == MergeRouting::mean) w.gate = rows(gate, E, d), w.gate_bias = std::span<float const>(bias);
        smoe::layer::SoftMerge<smoe::expert::SwiGLU<W>> layer({.expert = cfg, .scope = scope, .router_input = input, .max_tokens = T}, w);
        if (trial % 2 == 1) layer.set_thread_pool(pool);
        auto const want = smoe::reference::soft_merge(weights, input == MergeRouting::mean ? rows(gate, E, d) : MatrixView<float const>{},
                                                      input == MergeRouting::mean ? std::span<float const>(bias) : std::span<float const>{},
                                                      rows(given, G, E), groups, rows(x, T, d));
        std::vector<float> y(T * d), probs(G * E);
        layer.forward(rows(x, T, d), MatrixView<float>(y.data(), T, d),
                      {.sequence_offsets = offsets, .logits = input == MergeRouting::given ? rows(given, G, E) : MatrixView<float const>{},
                       .probs = MatrixView<float>(probs.data(), G, E)});
        smoe_test::check_all_close(probs, want.probs, 1e-5, 1e-7);
        check_rows(y, want.y, d, 3e-5);
    }
}

}  // namespace

TEST_CASE("SMEAR reproduces research.md's worked example in both scopes", "[research][smear]") {
    auto const ex = formula_experts(3, 3, 2);
    Smear seq({.expert = ex.cfg(), .max_tokens = 3}, {.gate = rows(kSmearGate, 3, 3), .experts = ex.weights()});
    std::vector<float> y(9), p(3);
    std::array<std::int32_t, 2> const one_sequence{0, 3};
    seq.forward(rows(kX, 3, 3), MatrixView<float>(y.data(), 3, 3), {.sequence_offsets = one_sequence, .probs = MatrixView<float>(p.data(), 1, 3)});
    smoe_test::check_all_close(p, {0.224209, 0.560733, 0.215059}, 1e-5);
    smoe_test::check_all_close(y, {0.00470493, -0.00143, -0.00326023, -0.00188841, 0.00907599, -0.00828881, 0.00735344, -0.00525065, -0.0016913},
                               1e-5);
    // Not the output mixture Σ_e p_e f_e(x): the spec's second column, from the oracle's experts.
    std::vector<double> mix(9, 0.0);
    for (std::int64_t t = 0; t < 3; ++t)
        for (std::int64_t e = 0; e < 3; ++e) {
            auto const fe = smoe::reference::swiglu_expert(ex.weights(), e, kX.data() + 3 * t);
            for (int c = 0; c < 3; ++c) mix[3 * t + c] += double(p[e]) * fe[c];
        }
    smoe_test::check_all_close(mix, {0.0406155, -0.0364062, -0.0457026, -0.073273, 0.00760253, 0.000344254, 0.0632885, 0.00919199, -0.104464}, 1e-4);
    // The merged matrices themselves, read from the merged panels.
    std::vector<float> merged(static_cast<std::size_t>(seq.merged_floats()));
    seq.merge(p, merged);
    std::vector<float> w1, w3, w2;
    for (int i = 0; i < 2; ++i)
        for (int j = 0; j < 3; ++j) w1.push_back(merged_gate_up(merged, 3, i, j, false)), w3.push_back(merged_gate_up(merged, 3, i, j, true));
    for (int o = 0; o < 3; ++o)
        for (int i = 0; i < 2; ++i) w2.push_back(merged_down(merged, 3, 2, o, i));
    smoe_test::check_all_close(w1, {-0.252288, 0.228889, -0.00228752, 0.247712, -0.252288, 0.228889}, 1e-5);
    smoe_test::check_all_close(w3, {-0.00457504, 0.226602, 0.0256859, -0.0233984, -0.224314, -0.00457504}, 1e-5);
    smoe_test::check_all_close(w2, {-0.0256859, 0.224314, 0.224314, -0.226602, -0.226602, 0.0233984}, 1e-5);

    Smear tok({.expert = ex.cfg(), .scope = MergeScope::token, .max_tokens = 3}, {.gate = rows(kSmearGate, 3, 3), .experts = ex.weights()});
    std::vector<float> pt(9);
    tok.forward(rows(kX, 3, 3), MatrixView<float>(y.data(), 3, 3), {.probs = MatrixView<float>(pt.data(), 3, 3)});
    smoe_test::check_all_close(pt, {0.087033, 0.184249, 0.728718, 0.181144, 0.811832, 0.00702372, 0.186324, 0.307196, 0.50648}, 1e-5);
    smoe_test::check_all_close(y, {-0.00660576, -0.00360471, -0.0164485, -0.0609174, 0.076848, 0.0197241, -0.00149814, 0.000625771, -0.00217475},
                               1e-5);

    // A one-hot p reproduces that expert: expert 1 on x0.
    std::vector<float> const onehot{0, 1, 0};
    seq.merge(onehot, merged);
    std::vector<std::byte> ws(seq.workspace_size());
    seq.run_merged(merged, rows(kX, 1, 3), MatrixView<float>(y.data(), 1, 3), ws);
    smoe_test::check_all_close(std::vector<float>(y.begin(), y.begin() + 3), {0.0925551, -0.0483121, -0.0683991}, 1e-5);
    // E = 1 is that expert, whatever the gate.
    auto const single = formula_experts(1, 3, 2, 1);
    Smear one({.expert = single.cfg(), .scope = MergeScope::token, .max_tokens = 3}, {.gate = rows(kSmearGate, 1, 3), .experts = single.weights()});
    one.forward(rows(kX, 1, 3), MatrixView<float>(y.data(), 1, 3));
    smoe_test::check_all_close(std::vector<float>(y.begin(), y.begin() + 3), {0.0925551, -0.0483121, -0.0683991}, 1e-5);
}

TEST_CASE("SMEAR matches the oracle on random shapes, scopes and router inputs", "[research][smear]") {
    check_smear_random<float>([](Experts const& ex, auto&, auto&) { return ex.weights(); });
}

TEST_CASE("SMEAR merges bf16 (both panel layouts) and int8 experts from their exact fp32 values", "[research][smear]") {
    auto to_bf16 = [](Experts const& ex, std::vector<std::vector<float>>&, std::vector<std::vector<smoe::bf16>>& st) {
        for (auto const* v : {&ex.w1, &ex.w3, &ex.w2}) {
            st.emplace_back();
            for (float a : *v) st.back().push_back(smoe::to_bf16(a));
        }
        return smoe::expert::SwiGLUWeights<smoe::bf16>::dense(st[0].data(), st[1].data(), st[2].data(), ex.cfg());
    };
    check_smear_random<smoe::bf16>(to_bf16, smoe::expert::Bf16Dot::off);
    check_smear_random<smoe::bf16>(to_bf16, smoe::expert::Bf16Dot::emulated);  // k-pair panels
    check_smear_random<std::int8_t>([](Experts const& ex, std::vector<std::vector<float>>& sc, std::vector<std::vector<std::int8_t>>& st) {
        auto q = [&](std::vector<float> const& v, std::int64_t r, std::int64_t c) {
            auto out = smoe::quantize_int8_per_channel(MatrixView<float const>(v.data(), r, c));
            st.push_back(out.q), sc.push_back(out.s);
        };
        q(ex.w1, ex.E * ex.f, ex.d), q(ex.w3, ex.E * ex.f, ex.d), q(ex.w2, ex.E * ex.d, ex.f);
        return smoe::expert::SwiGLUWeights<std::int8_t>::dense(st[0].data(), sc[0].data(), st[1].data(), sc[1].data(), st[2].data(),
                                                                 sc[2].data(), ex.cfg());
    });
}

TEST_CASE("SMEAR rejects bad offsets, logits and gates", "[research][smear][errors]") {
    auto const ex = formula_experts(3, 3, 2);
    Smear seq({.expert = ex.cfg(), .max_tokens = 3}, {.gate = rows(kSmearGate, 3, 3), .experts = ex.weights()});
    std::vector<float> y(9);
    auto run = [&](Smear& l, smoe::layer::MergeInput const& in, std::int64_t T = 3) {
        return error_of([&] { l.forward(rows(kX, T, 3), MatrixView<float>(y.data(), T, 3), in); });
    };
    std::array<std::int32_t, 3> off{1, 2, 3};
    CHECK_THAT(run(seq, {.sequence_offsets = off}), Catch::Contains("'sequence_offsets[0]' = 1"));
    off = {0, 2, 1};
    CHECK_THAT(run(seq, {.sequence_offsets = off}), Catch::Contains("'sequence_offsets[2]' = 1") && Catch::Contains("non-decreasing"));
    off = {0, 1, 2};
    CHECK_THAT(run(seq, {.sequence_offsets = off}), Catch::Contains("'sequence_offsets[2]' = 2") && Catch::Contains("T = 3"));
    CHECK_THAT(run(seq, {}), Catch::Contains("'sequence_offsets' = none"));
    off = {0, 1, 3};
    std::vector<float> const l(6, 0.5f);
    CHECK_THAT(run(seq, {.sequence_offsets = off, .logits = rows(l, 2, 3)}), Catch::Contains("'logits' = given"));
    Smear given({.expert = ex.cfg(), .scope = MergeScope::token, .router_input = MergeRouting::given, .max_tokens = 3}, {.experts = ex.weights()});
    CHECK_THAT(run(given, {.logits = rows(l, 2, 3)}), Catch::Contains("'logits' = [2, 3]") && Catch::Contains("[3, 3]"));
    std::vector<float> bad(9, 0.0f);
    bad[7] = std::numeric_limits<float>::infinity();
    CHECK_THAT(run(given, {.logits = rows(bad, 3, 3)}), Catch::Contains("'logits' = inf at group 2, expert 1"));
    CHECK_THAT(run(given, {.sequence_offsets = off, .logits = rows(bad, 3, 3)}), Catch::Contains("'sequence_offsets' = given"));
    CHECK_THAT(error_of([&] { Smear({.expert = ex.cfg()}, {.experts = ex.weights()}); }), Catch::Contains("'gate' = none"));
    CHECK_THAT(error_of([&] { Smear({.expert = ex.cfg()}, {.gate = rows(kSmearGate, 3, 2), .experts = ex.weights()}); }),
               Catch::Contains("'gate' = [3, 2]"));
    CHECK_THAT(error_of([&] { Smear({.expert = ex.cfg(), .router_input = MergeRouting::given}, {.gate = rows(kSmearGate, 3, 3), .experts = ex.weights()}); }),
               Catch::Contains("'gate' = given"));
    auto clamped = ex.cfg();  // the merged expert runs plain silu(g) · u: another form is refused, not merged wrongly
    clamped.activation = smoe::expert::GluActivation::limited(1.0f);
    CHECK_THAT(error_of([&] { Smear({.expert = clamped}, {.gate = rows(kSmearGate, 3, 3), .experts = ex.weights()}); }),
               Catch::Contains("'expert.activation'") && Catch::Contains("plain SwiGLU experts to merge"));
    // T = 0 and an empty batch are valid.
    std::array<std::int32_t, 1> const none{0};
    seq.forward(rows(kX, 0, 3), MatrixView<float>(y.data(), 0, 3), {.sequence_offsets = none});
}

// ---------------------------------------------------------------------------------------------------

TEST_CASE("the research layers' forward allocates nothing after the first call", "[research][alloc]") {
    std::mt19937_64 rng(9);
    std::int64_t const E = 5, d = 24, f = 12, T = 11, p = 6;
    auto const ex = random_experts(rng, E, d, f), shared = random_experts(rng, 1, d, f);
    auto const g1 = smoe_test::normal(rng, E * d, 0.5), g2 = smoe_test::normal(rng, E * d, 0.5);
    std::array<MatrixView<float const>, 2> const gates{rows(g1, E, d), rows(g2, E, d)};
    ChainLayer chain({.router = {.num_experts = E, .top_k = 2}, .expert = {.routed = ex.cfg(), .shared = shared.cfg()}, .max_tokens = T},
                     {.gates = gates, .experts = {.routed = ex.weights(), .shared = shared.weights()}});
    auto const cd = random_cell(rng, p);
    smoe::gate::RecurrentCell const cell({.hidden_size = p}, cd.view());
    auto const P = smoe_test::normal(rng, p * d, 0.3), Q = smoe_test::normal(rng, E * p, 1.0);
    RecurrentLayer rmoe({.router = {.num_experts = E, .top_k = 2, .norm_topk_prob = true}, .expert = ex.cfg(), .max_tokens = T}, cell,
                        {.gate = {rows(P, p, d), rows(Q, E, p)}, .experts = ex.weights()});
    smoe::gate::RouterState state(T, cell);
    Smear smear({.expert = ex.cfg(), .max_tokens = T}, {.gate = rows(g1, E, d), .experts = ex.weights()});
    Smear per_token({.expert = ex.cfg(), .scope = MergeScope::token, .max_tokens = T}, {.gate = rows(g1, E, d), .experts = ex.weights()});
    auto const x = smoe_test::normal(rng, T * d, 1.0);
    std::vector<float> y(T * d);
    std::array<smoe::RoutingResult, 2> r;
    std::array<std::int32_t, 3> const offsets{0, 4, std::int32_t(T)};
    auto news = [&](auto&& f) {
        long const before = g_news.load();
        f();
        return g_news.load() - before;
    };
    // The first call sizes the balancers' statistics (MoELayer's warm-up, as in test_forward_alloc).
    chain.forward(rows(x, T, d), MatrixView<float>(y.data(), T, d), r);
    state.reset(T);
    rmoe.forward(rows(x, T, d), MatrixView<float>(y.data(), T, d), state);
    CHECK(news([&] { chain.forward(rows(x, T, d), MatrixView<float>(y.data(), T, d), r); }) == 0);
    CHECK(news([&] {
              state.reset(T);
              rmoe.forward(rows(x, T, d), MatrixView<float>(y.data(), T, d), state);
              rmoe.forward(rows(x, T, d), MatrixView<float>(y.data(), T, d), state);
          }) == 0);
    CHECK(news([&] { smear.forward(rows(x, T, d), MatrixView<float>(y.data(), T, d), {.sequence_offsets = offsets}); }) == 0);
    CHECK(news([&] { per_token.forward(rows(x, T, d), MatrixView<float>(y.data(), T, d)); }) == 0);
}
