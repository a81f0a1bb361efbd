// router::ExpertChoice (each expert takes its top-C tokens) against routing.md §3's worked example,
// the scalar oracle, its edge cases and the whole MoELayer.

#include <algorithm>
#include <cmath>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include <catch2/catch.hpp>

#include "common/data.hpp"
#include "common/layer_model.hpp"
#include "common/routing_checks.hpp"
#include "smoe/kernels/reference/expert_choice.hpp"
#include "smoe/kernels/reference/reference.hpp"
#include "smoe/route.hpp"
#include "smoe/router/expert_choice.hpp"
#include "smoe/smoe.hpp"

using smoe::MatrixView;
using smoe::router::ExpertChoice;
using smoe::router::ExpertChoiceConfig;
using smoe::router::ScoreFunc;
using Catch::Matchers::Contains;

namespace {

constexpr smoe_test::RouteWith<ExpertChoice> route_with{};
constexpr smoe_test::RouteDefault<ExpertChoice> route_default{};

smoe::RoutingData oracle(ExpertChoiceConfig const& cfg, std::vector<float> const& logits) {
    auto const T = static_cast<std::int64_t>(logits.size()) / cfg.num_experts;
    return smoe::reference::route_expert_choice(cfg, MatrixView<float const>(logits.data(), T, cfg.num_experts));
}

// routing.md §3 worked example: E = 3, T = 4, capacity_factor 1.5 (C = 2).
std::vector<float> const kExampleLogits = {2, 0, 0, 1, 1, -1, 1, 1, -1, -1, 2, 0.5f};
ExpertChoiceConfig const kExampleConfig{.num_experts = 3, .capacity_factor = 1.5};

void check_row(smoe::RoutingResult const& r, std::int64_t t, std::vector<int> const& ids, std::vector<double> const& w) {
    smoe_test::check_padded_row(r, t, ids, w);
}

// Rows sorted by weight, ties to the lower id; padding last.
void check_views_agree(smoe::RoutingResult const& r) { smoe_test::check_views_agree(r, {.sorted_rows = true}); }

void check_matches_oracle(smoe::RoutingResult const& fast, smoe::RoutingResult const& ref) {
    REQUIRE(fast.num_tokens == ref.num_tokens);
    REQUIRE(fast.k == ref.k);
    REQUIRE(fast.nnz() == ref.nnz());
    for (std::int64_t e = 0; e <= fast.num_experts; ++e) REQUIRE(fast.offsets[e] == ref.offsets[e]);
    for (std::int64_t i = 0; i < fast.nnz(); ++i) REQUIRE(fast.token_ids[i] == ref.token_ids[i]);
    for (std::int64_t t = 0; t < fast.num_tokens; ++t)
        for (std::int64_t j = 0; j < fast.k; ++j) {
            INFO("token " << t << ", slot " << j);
            REQUIRE(fast.expert_ids(t, j) == ref.expert_ids(t, j));
            CHECK(fast.expert_weights(t, j) == Approx(ref.expert_weights(t, j)).epsilon(1e-6).margin(1e-30));
        }
}

// Softmax of one row in double: the independent value for the dense cases.
std::vector<double> softmax(std::vector<double> const& x) {
    double const m = *std::max_element(x.begin(), x.end());
    double z = 0;
    for (double v : x) z += std::exp(v - m);
    std::vector<double> s;
    for (double v : x) s.push_back(std::exp(v - m) / z);
    return s;
}

}  // namespace

static_assert(smoe::router_bounds_load<ExpertChoice>(), "expert choice bounds every expert's load by C");
static_assert(smoe::RouterPolicy<ExpertChoice>);

TEST_CASE("expert choice reproduces the routing.md worked example", "[router][expert_choice][spec]") {
    auto check = [](smoe::RoutingResult const& r) {
        REQUIRE(r.k == 2);
        check_row(r, 0, {0, 2}, {0.786986, 0.106507});
        check_row(r, 1, {0, 1}, {0.468311, 0.468311});  // t1 beats its twin t2 for experts 0 and 1
        check_row(r, 2, {}, {});                         // dropped: no expert took it
        check_row(r, 3, {1, 2}, {0.785597, 0.17529});
        CHECK(std::vector<std::int32_t>(r.offsets.begin(), r.offsets.end()) == std::vector<std::int32_t>{0, 2, 4, 6});
        CHECK(std::vector<std::int32_t>(r.token_ids.begin(), r.token_ids.end()) == std::vector<std::int32_t>{0, 1, 1, 3, 0, 3});
        std::vector<double> const w = {0.786986, 0.468311, 0.468311, 0.785597, 0.106507, 0.17529};
        REQUIRE(r.weights.size() == w.size());
        for (std::size_t i = 0; i < w.size(); ++i) CHECK(r.weights[i] == Approx(w[i]).epsilon(1e-5));
        check_views_agree(r);
    };
    CHECK(ExpertChoice(kExampleConfig).capacity(4) == 2);
    CHECK(smoe::reference::expert_choice_capacity(kExampleConfig, 4) == 2);
    smoe_test::for_each_arch([&](auto arch) {
        INFO("arch " << decltype(arch)::name());
        check(route_with(arch, kExampleConfig, kExampleLogits).r);
    });
    auto const ref = oracle(kExampleConfig, kExampleLogits);
    check(ref.view());

    // The fixed-capacity view [E, C] = [3, 2]: CSR rows padded to C (here nothing to pad).
    auto const o = route_default(kExampleConfig, kExampleLogits);
    std::vector<std::int32_t> ids(6);
    std::vector<float> w(6);
    smoe::router::expert_choice_capacity_view(o.r, 2, ids, w);
    CHECK(ids == std::vector<std::int32_t>{0, 1, 1, 3, 0, 3});
    CHECK(w[3] == Approx(0.785597).epsilon(1e-5));
    // With a wider C every row is padded with -1 / 0.
    std::vector<std::int32_t> ids4(12);
    std::vector<float> w4(12);
    smoe::router::expert_choice_capacity_view(o.r, 4, ids4, w4);
    CHECK(ids4 == std::vector<std::int32_t>{0, 1, -1, -1, 1, 3, -1, -1, 0, 3, -1, -1});
    CHECK(w4[0] == Approx(0.786986).epsilon(1e-5));
    CHECK(w4[2] == 0.0f);
    CHECK(w4[11] == 0.0f);
}

TEST_CASE("expert choice decodes a single token densely with the full score row", "[router][expert_choice][spec]") {
    // routing.md §3: T = 1 with t3's logits, C = ceil(1/3 * 1.5) = 1, so all three experts take it.
    std::vector<float> const t3 = {-1, 2, 0.5f};
    CHECK(ExpertChoice(kExampleConfig).capacity(1) == 1);
    smoe_test::for_each_arch([&](auto arch) {
        INFO("arch " << decltype(arch)::name());
        auto const o = route_with(arch, kExampleConfig, t3);
        REQUIRE(o.r.k == 3);
        check_row(o.r, 0, {1, 2, 0}, {0.785597, 0.17529, 0.0391126});
        for (std::int64_t e = 0; e < 3; ++e) CHECK(o.r.load(e) == 1);
    });
    auto const ref = oracle(kExampleConfig, t3);
    check_row(ref.view(), 0, {1, 2, 0}, {0.785597, 0.17529, 0.0391126});
}

TEST_CASE("expert choice capacity is ceil((T / E) * factor) in double, in that order", "[router][expert_choice][capacity]") {
    // 150 / 3 = 50 exactly, and 50 * 1.1 rounds to 55.000000000000007 in double: 56, not 55.
    ExpertChoiceConfig const cfg{.num_experts = 3, .capacity_factor = 1.1};
    CHECK(ExpertChoice(cfg).capacity(150) == 56);
    CHECK(smoe::reference::expert_choice_capacity(cfg, 150) == 56);
    CHECK(ExpertChoice({.num_experts = 3, .capacity = 7}).capacity(150) == 7);
    CHECK(ExpertChoice({.num_experts = 8, .capacity_factor = 1.0}).capacity(3) == 1);   // no minimum
    CHECK(ExpertChoice({.num_experts = 8, .capacity_factor = 1.0}).capacity(0) == 0);
    // The factor is bounded (smoe::limits::kMaxCapacityFactor), so C stays far inside int64.
    CHECK(ExpertChoice({.num_experts = 2, .capacity_factor = 1024.0}).capacity(10) == 5120);
    CHECK_THROWS_AS(ExpertChoice({.num_experts = 2, .capacity_factor = 1e300}), smoe::invalid_argument);

    // The routing uses that C: every expert takes exactly 56 of 150 tokens.
    std::mt19937_64 rng(150);
    auto const logits = smoe_test::normal(rng, 150 * 3, 1.0, 1.0 / 64);
    smoe_test::for_each_arch([&](auto arch) {
        auto const o = route_with(arch, cfg, logits);
        for (std::int64_t e = 0; e < 3; ++e) CHECK(o.r.load(e) == 56);
        check_matches_oracle(o.r, oracle(cfg, logits).view());
    });
}

TEST_CASE("expert choice with T = 0 gives an empty result", "[router][expert_choice][edge]") {
    for (auto const& cfg : {ExpertChoiceConfig{.num_experts = 4, .capacity_factor = 2.0}, ExpertChoiceConfig{.num_experts = 4, .capacity = 3}}) {
        if (cfg.capacity_factor) CHECK(ExpertChoice(cfg).capacity(0) == 0);
        auto const o = route_default(cfg, {});
        CHECK(o.r.num_tokens == 0);
        CHECK(o.r.k == 0);
        CHECK(o.r.nnz() == 0);
        REQUIRE(o.r.offsets.size() == 5);
        for (auto off : o.r.offsets) CHECK(off == 0);
        auto const ref = oracle(cfg, {});
        CHECK(ref.k == 0);
        CHECK(ref.token_ids.empty());
        std::vector<std::int32_t> ids;
        std::vector<float> w;
        smoe::router::expert_choice_capacity_view(o.r, 0, ids, w);  // [4, 0]
    }
}

TEST_CASE("expert choice with capacity above T takes every token for every expert", "[router][expert_choice][edge]") {
    std::vector<float> const logits = {0.5f, -1.0f, 2.0f, 0.0f,  //
                                       3.0f, 3.0f, -2.0f, 1.0f,  //
                                       -0.25f, 0.75f, 0.75f, -4.0f};
    ExpertChoiceConfig const cfg{.num_experts = 4, .capacity = 10};
    smoe_test::for_each_arch([&](auto arch) {
        auto const o = route_with(arch, cfg, logits);
        REQUIRE(o.r.k == 4);
        for (std::int64_t e = 0; e < 4; ++e) CHECK(o.r.load(e) == 3);
        auto const s0 = softmax({0.5, -1.0, 2.0, 0.0}), s1 = softmax({3.0, 3.0, -2.0, 1.0}), s2 = softmax({-0.25, 0.75, 0.75, -4.0});
        check_row(o.r, 0, {2, 0, 3, 1}, {s0[2], s0[0], s0[3], s0[1]});
        check_row(o.r, 1, {0, 1, 3, 2}, {s1[0], s1[1], s1[3], s1[2]});  // experts 0 and 1 tie: 0 first
        check_row(o.r, 2, {1, 2, 0, 3}, {s2[1], s2[2], s2[0], s2[3]});
        check_views_agree(o.r);
        std::vector<std::int32_t> ids(4 * 10);
        std::vector<float> w(4 * 10);
        smoe::router::expert_choice_capacity_view(o.r, 10, ids, w);
        CHECK(ids[0] == 0);
        CHECK(ids[2] == 2);
        CHECK(ids[3] == -1);
        CHECK(ids[39] == -1);
    });
    check_matches_oracle(route_default(cfg, logits).r, oracle(cfg, logits).view());
}

TEST_CASE("expert choice breaks exact ties toward the lower token id", "[router][expert_choice][ties]") {
    // E = 1: every softmax score is exactly 1, so the expert takes the first C tokens.
    std::vector<float> const one_expert = {0.3f, -5.0f, 2.0f, 7.0f, 0.0f, 1.0f, 1.0f};
    auto const o = route_default({.num_experts = 1, .capacity = 3}, one_expert);
    CHECK(std::vector<std::int32_t>(o.r.token_ids.begin(), o.r.token_ids.end()) == std::vector<std::int32_t>{0, 1, 2});
    for (float w : o.r.weights) CHECK(w == 1.0f);
    CHECK(o.r.k == 1);
    check_row(o.r, 5, {}, {});
    // Sigmoid: equal logits in different tokens tie; +0 and -0 tie too.
    std::vector<float> const sig = {1.0f, 0.0f, 2.0f, -0.0f, 2.0f, 0.0f, 1.0f, 0.0f};  // [4, 2]
    smoe_test::for_each_arch([&](auto arch) {
        auto const s = route_with(arch, {.num_experts = 2, .capacity = 2, .score_func = ScoreFunc::sigmoid}, sig);
        // expert 0 scores by token: 1, 2, 2, 1 -> tokens 1 and 2; expert 1: 0, -0, 0, 0 -> tokens 0 and 1.
        CHECK(std::vector<std::int32_t>(s.r.token_ids.begin(), s.r.token_ids.end()) == std::vector<std::int32_t>{1, 2, 0, 1});
        CHECK(s.r.weights[0] == Approx(1.0 / (1.0 + std::exp(-2.0))).epsilon(1e-6));
        CHECK(s.r.weights[2] == 0.5f);
    });
}

TEST_CASE("expert choice routes all-negative logits like any other input", "[router][expert_choice][edge]") {
    std::vector<float> const logits = {-8.0f, -7.5f, -30.0f, -9.0f, -100.0f, -7.25f, -12.0f, -7.75f, -8.5f};  // [3, 3]
    for (auto score : {ScoreFunc::softmax, ScoreFunc::sigmoid}) {
        ExpertChoiceConfig const cfg{.num_experts = 3, .capacity = 1, .score_func = score};
        auto const o = route_default(cfg, logits);
        check_matches_oracle(o.r, oracle(cfg, logits).view());
        // Expert 1's column: sigmoid follows the logits (-7.5, -100, -7.75), so token 0 wins; softmax
        // gives t0 1 / (1 + e^-0.5 + e^-22.5) = 0.6225 and t2 1 / (1 + e^-4.25 + e^-0.75) = 0.6727, so t2.
        CHECK(o.r.token_ids[o.r.offsets[1]] == (score == ScoreFunc::sigmoid ? 0 : 2));
    }
}

TEST_CASE("expert choice agrees with the scalar oracle on random shapes", "[router][expert_choice][random]") {
    std::mt19937_64 rng(20261124);
    std::vector<std::int64_t> const widths = {1, 2, 3, 5, 7, 8, 9, 16, 17, 31, 60, 64, 100, 128, 160, 256};
    std::int64_t checked = 0;
    for (int trial = 0; trial < 60; ++trial) {
        std::int64_t const E = widths[rng() % widths.size()];
        std::int64_t T = trial % 10 == 0 ? (trial == 0 ? 4096 : 300 + static_cast<std::int64_t>(rng() % 800)) : static_cast<std::int64_t>(rng() % 97);
        if (E >= 128 && T > 400) T = 400;  // keeps the oracle's T·E·log T sort quick
        ExpertChoiceConfig cfg{.num_experts = E};
        if (rng() % 2)
            cfg.capacity = 1 + static_cast<std::int64_t>(rng() % (T + 3));
        else
            cfg.capacity_factor = std::vector<double>{0.5, 1.0, 1.1, 1.25, 2.0, 3.7}[rng() % 6];
        cfg.score_func = rng() % 3 == 0 ? ScoreFunc::sigmoid : ScoreFunc::softmax;
        double const sd = cfg.score_func == ScoreFunc::sigmoid ? 2.0 : (trial % 3 == 0 ? 0.25 : 2.0);
        auto logits = smoe_test::normal(rng, static_cast<std::size_t>(T * E), sd, 1.0 / 64);
        // Repeated tokens (the same logits in another batch position) give exact cross-token ties.
        for (std::int64_t t = 1; t < T; ++t)
            if (rng() % 4 == 0) {
                auto const src = static_cast<std::int64_t>(rng() % static_cast<std::uint64_t>(t));
                std::copy(logits.begin() + src * E, logits.begin() + (src + 1) * E, logits.begin() + t * E);
            }
        INFO("trial " << trial << ": E " << E << ", T " << T << ", C " << ExpertChoice(cfg).capacity(T) << ", "
                      << to_string(cfg.score_func));
        auto const ref = oracle(cfg, logits);
        smoe_test::for_each_arch([&](auto arch) {
            INFO("arch " << decltype(arch)::name());
            auto const o = route_with(arch, cfg, logits);
            check_matches_oracle(o.r, ref.view());
            check_views_agree(o.r);
            auto const c_eff = std::min(ExpertChoice(cfg).capacity(T), T);
            for (std::int64_t e = 0; e < E; ++e) REQUIRE(o.r.load(e) == c_eff);
        });
        checked += T;
    }
    CHECK(checked > 1000);
}

TEST_CASE("expert choice rejects bad configs and inputs with a named smoe::invalid_argument", "[router][expert_choice][errors]") {
    CHECK_THROWS_WITH(ExpertChoice({.num_experts = 0, .capacity = 1}), Contains("num_experts"));
    CHECK_THROWS_WITH(ExpertChoice({.num_experts = 4}), Contains("capacity") && Contains("neither"));
    CHECK_THROWS_WITH(ExpertChoice({.num_experts = 4, .capacity = 2, .capacity_factor = 1.0}), Contains("capacity") && Contains("both"));
    CHECK_THROWS_WITH(ExpertChoice({.num_experts = 4, .capacity = 0}), Contains("capacity") && Contains("0"));
    CHECK_THROWS_WITH(ExpertChoice({.num_experts = 4, .capacity = -3}), Contains("capacity") && Contains("-3"));
    CHECK_THROWS_WITH(ExpertChoice({.num_experts = 4, .capacity_factor = 0.0}), Contains("capacity_factor"));
    CHECK_THROWS_WITH(ExpertChoice({.num_experts = 4, .capacity_factor = -1.0}), Contains("capacity_factor"));
    CHECK_THROWS_WITH(ExpertChoice({.num_experts = 4, .capacity_factor = INFINITY}), Contains("capacity_factor"));
    CHECK_THROWS_WITH(ExpertChoice({.num_experts = 4, .capacity_factor = NAN}), Contains("capacity_factor"));
    CHECK_THROWS_AS(ExpertChoice({.num_experts = 4}), smoe::invalid_argument);

    ExpertChoiceConfig const cfg{.num_experts = 4, .capacity = 1};
    std::vector<float> logits = {0.0f, 1.0f, 2.0f, 3.0f, 0.0f, 1.0f, 2.0f, 3.0f};
    logits[6] = std::numeric_limits<float>::quiet_NaN();
    CHECK_THROWS_WITH(route_default(cfg, logits), Contains("logits") && Contains("nan") && Contains("token 1, expert 2"));
    CHECK_THROWS_WITH(oracle(cfg, logits), Contains("logits") && Contains("nan") && Contains("token 1, expert 2"));
    logits[6] = 2.0f;
    logits[1] = -std::numeric_limits<float>::infinity();
    CHECK_THROWS_WITH(route_default(cfg, logits), Contains("logits") && Contains("inf") && Contains("token 0, expert 1"));
    logits[1] = 1.0f;
    CHECK_THROWS_WITH(route_default(cfg, logits, {0, 0, 0, 0}), Contains("expert_bias"));

    // The capacity view needs [E, C] buffers and a C no smaller than any load.
    auto const o = route_default({.num_experts = 4, .capacity = 2}, logits);
    std::vector<std::int32_t> ids(4);
    std::vector<float> w(4);
    CHECK_THROWS_WITH(smoe::router::expert_choice_capacity_view(o.r, 1, ids, w), Contains("C") && Contains("load"));
    CHECK_THROWS_WITH(smoe::router::expert_choice_capacity_view(o.r, 2, ids, w), Contains("token_ids"));
}

namespace {

using Layer = smoe_test::SwiGLULayer<ExpertChoice>;
using Model = smoe_test::LayerModel<ExpertChoice>;

}  // namespace

TEST_CASE("MoELayer with expert choice matches the oracle end to end", "[router][expert_choice][layer]") {
    std::mt19937_64 rng(41);
    struct Shape {
        std::int64_t d, f, E, T;
        ExpertChoiceConfig cfg;
    };
    std::vector<Shape> const shapes = {
        {16, 12, 4, 33, {.num_experts = 4, .capacity_factor = 1.0}},
        {17, 9, 3, 150, {.num_experts = 3, .capacity_factor = 1.1}},
        {24, 20, 8, 1, {.num_experts = 8, .capacity_factor = 2.0}},  // decode: dense
        {9, 7, 5, 12, {.num_experts = 5, .capacity = 20, .score_func = ScoreFunc::sigmoid}},
        {33, 40, 16, 100, {.num_experts = 16, .capacity = 3}},  // most tokens dropped
    };
    for (auto const& s : shapes) {
        INFO("d " << s.d << ", f " << s.f << ", E " << s.E << ", T " << s.T);
        auto const m = Model::random(rng, s.d, s.f, s.E);
        Layer layer({.router = s.cfg, .expert = m.expert_cfg(), .max_tokens = s.T}, m.weights());
        auto const x = smoe_test::normal(rng, static_cast<std::size_t>(s.T * s.d), 1.0);
        std::vector<float> y(static_cast<std::size_t>(s.T * s.d), std::numeric_limits<float>::quiet_NaN());
        auto const r = layer.forward(MatrixView<float const>(x.data(), s.T, s.d), MatrixView<float>(y.data(), s.T, s.d));

        // The oracle on the layer's own fp32 logits.
        auto const want = oracle(s.cfg, smoe_test::gate_logits(m, x, s.T));
        check_matches_oracle(r, want.view());
        auto const ref = smoe::reference::combine_swiglu(want.view(), m.experts(), MatrixView<float const>(x.data(), s.T, s.d));
        smoe_test::check_close(y, ref, s.T, s.d, 2e-5);
        if (s.T == 1) CHECK(r.k == s.E);  // every expert took the single token
    }
}
