// router::NullExpert (AdaMoE: top-k over true and null experts, nulls cost nothing) against
// routing.md §5's worked example, the scalar oracle, its edge cases and the whole MoELayer.

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
#include "smoe/kernels/reference/null_expert.hpp"
#include "smoe/kernels/reference/reference.hpp"
#include "smoe/route.hpp"
#include "smoe/router/null_expert.hpp"
#include "smoe/router/topk.hpp"
#include "smoe/smoe.hpp"

using smoe::MatrixView;
using smoe::router::NullExpert;
using smoe::router::NullExpertConfig;
using Catch::Matchers::Contains;

namespace {

using smoe_test::route_router;
constexpr smoe_test::RouteWith<NullExpert> route_with{};
constexpr smoe_test::RouteDefault<NullExpert> route_default{};

smoe::RoutingData oracle(NullExpertConfig const& cfg, std::vector<float> const& logits) {
    auto const W = cfg.num_experts + cfg.num_null_experts;
    auto const T = static_cast<std::int64_t>(logits.size()) / W;
    return smoe::reference::route_null_expert(cfg, MatrixView<float const>(logits.data(), T, W));
}

// routing.md §5 worked example: E = 3, N = 2, k = 2, T = 3.
NullExpertConfig const kExampleConfig{.num_experts = 3, .num_null_experts = 2, .top_k = 2};
std::vector<float> const kExampleLogits = {2, 1, 0, -1, -1,  //
                                           1, -1, 0, 1.5f, 0,  //
                                           -1, -2, -1, 1, 1};

using smoe_test::check_matches_oracle;
using smoe_test::check_row;

// Both views agree on the true experts; null ids (>= E) are in the token-major view only. Fixed k: no
// padding, and rows are sorted by weight, ties to the lower id.
void check_views_agree(smoe::RoutingResult const& r) {
    smoe_test::check_views_agree(r, {.no_padding = true, .sorted_rows = true});
}

}  // namespace

static_assert(smoe::RouterPolicy<NullExpert>);

TEST_CASE("null experts reproduce the routing.md worked example", "[router][null_expert][spec]") {
    auto check = [](smoe::RoutingResult const& r) {
        check_row(r, 0, {0, 1}, {0.731059, 0.268941});  // σ = 0.853438
        check_row(r, 1, {0, 3}, {1.0, 0.468411});       // null 3 keeps its raw s
        check_row(r, 2, {3, 4}, {0.430949, 0.430949});  // nulls only
        CHECK(std::vector<std::int32_t>(r.offsets.begin(), r.offsets.end()) == std::vector<std::int32_t>{0, 2, 3, 3});
        CHECK(std::vector<std::int32_t>(r.token_ids.begin(), r.token_ids.end()) == std::vector<std::int32_t>{0, 1, 0});
        std::vector<double> const w = {0.731059, 1.0, 0.268941};
        REQUIRE(r.weights.size() == w.size());
        for (std::size_t i = 0; i < w.size(); ++i) CHECK(r.weights[i] == Approx(w[i]).epsilon(1e-5));
        check_views_agree(r);
    };
    smoe_test::for_each_arch([&](auto arch) {
        INFO("arch " << decltype(arch)::name());
        auto const o = route_with(arch, kExampleConfig, kExampleLogits);
        check(o.r);
    });
    check(oracle(kExampleConfig, kExampleLogits).view());
}

TEST_CASE("a true expert beats a null expert with an equal score", "[router][null_expert][ties]") {
    // E = 2, N = 2, every logit equal: ids 0 and 1 win, both true, σ = 0.5, weights 0.5 each.
    auto const o = route_default({.num_experts = 2, .num_null_experts = 2, .top_k = 2}, {0.5f, 0.5f, 0.5f, 0.5f});
    check_row(o.r, 0, {0, 1}, {0.5, 0.5});
    // E = 1, N = 1, k = 1, equal logits: the true expert wins and gets weight 1 (renormalised alone).
    auto const one = route_default({.num_experts = 1, .num_null_experts = 1, .top_k = 1}, {-3.0f, -3.0f});
    check_row(one.r, 0, {0}, {1.0});
    // Nulls tie among themselves: the lower null id first. s = e^2 / (e^2 + e^2 + 1) for each null.
    auto const nulls = route_default({.num_experts = 1, .num_null_experts = 2, .top_k = 2}, {0.0f, 2.0f, 2.0f});
    double const sn = std::exp(2.0) / (2 * std::exp(2.0) + 1.0);
    check_row(nulls.r, 0, {1, 2}, {sn, sn});
    CHECK(nulls.r.nnz() == 0);
}

TEST_CASE("null experts with N = 0 are top-k softmax with renormalisation and norm_eps 0", "[router][null_expert][topk]") {
    std::mt19937_64 rng(55);
    for (std::int64_t E : {1, 3, 8, 17, 64}) {
        for (std::int64_t k : {std::int64_t{1}, std::min<std::int64_t>(E, 2), E}) {
            std::int64_t const T = 37;
            auto const logits = smoe_test::normal(rng, static_cast<std::size_t>(T * E), 2.0, 1.0 / 64);
            smoe_test::for_each_arch([&](auto arch) {
                auto const a = route_with(arch, {.num_experts = E, .num_null_experts = 0, .top_k = k}, logits);
                auto const b = route_router(arch, smoe::router::TopK({.num_experts = E, .top_k = k, .norm_topk_prob = true, .norm_eps = 0.0f}), logits);
                REQUIRE(a.r.k == b.r.k);
                for (std::int64_t t = 0; t < T; ++t)
                    for (std::int64_t j = 0; j < k; ++j) {
                        REQUIRE(a.r.expert_ids(t, j) == b.r.expert_ids(t, j));
                        REQUIRE(a.r.expert_weights(t, j) == b.r.expert_weights(t, j));  // bit-identical
                    }
            });
            auto const ref = oracle({.num_experts = E, .num_null_experts = 0, .top_k = k}, logits);
            auto const ref_topk = smoe::reference::route_topk({.num_experts = E, .top_k = k, .norm_topk_prob = true, .norm_eps = 0.0f},
                                                              MatrixView<float const>(logits.data(), T, E));
            check_matches_oracle(ref.view(), ref_topk.view());
        }
    }
}

TEST_CASE("the adamoe_mixtral preset is E 8, N 16, k 4", "[router][null_expert][presets]") {
    auto const cfg = NullExpertConfig::adamoe_mixtral();
    CHECK(cfg.num_experts == 8);
    CHECK(cfg.num_null_experts == 16);
    CHECK(cfg.top_k == 4);
    NullExpert const router(cfg);
    CHECK(router.num_experts() == 8);
    CHECK(router.num_logits() == 24);
    CHECK(router.max_slots() == 4);
    std::mt19937_64 rng(8);
    auto const logits = smoe_test::normal(rng, 50 * 24, 1.0, 1.0 / 64);
    smoe_test::for_each_arch([&](auto arch) { check_matches_oracle(route_with(arch, cfg, logits).r, oracle(cfg, logits).view()); });
}

TEST_CASE("null experts handle T = 0, all-negative logits and underflowing true scores", "[router][null_expert][edge]") {
    auto const empty = route_default(kExampleConfig, {});
    CHECK(empty.r.num_tokens == 0);
    CHECK(empty.r.k == 2);
    CHECK(empty.r.nnz() == 0);
    for (auto off : empty.r.offsets) CHECK(off == 0);
    CHECK(oracle(kExampleConfig, {}).k == 2);

    // All negative: ordinary input. Order by logit: 3 (-7.25), 1 (-7.5), 6 (-7.75).
    std::vector<float> const neg = {-8.0f, -7.5f, -30.0f, -7.25f, -9.0f, -100.0f, -7.75f, -8.5f};
    NullExpertConfig const cfg{.num_experts = 4, .num_null_experts = 4, .top_k = 3};
    auto const o = route_default(cfg, neg);
    double z = 0;
    for (float x : neg) z += std::exp(double(x));
    double const s3 = std::exp(-7.25) / z, s1 = std::exp(-7.5) / z, s6 = std::exp(-7.75) / z;
    check_row(o.r, 0, {3, 1, 6}, {s3 / (s3 + s1), s1 / (s3 + s1), s6});
    check_matches_oracle(o.r, oracle(cfg, neg).view());

    // A selected true expert whose score underflows to 0 next to nulls: σ = 0 -> 1, weights stay finite.
    std::vector<float> const under = {-200.0f, 0.0f, 0.0f};  // E = 1, N = 2, k = 3
    NullExpertConfig const all{.num_experts = 1, .num_null_experts = 2, .top_k = 3};
    smoe_test::for_each_arch([&](auto arch) {
        auto const u = route_with(arch, all, under);
        check_row(u.r, 0, {1, 2, 0}, {0.5, 0.5, 0.0});
        for (std::int64_t j = 0; j < 3; ++j) CHECK(std::isfinite(u.r.expert_weights(0, j)));
    });
    check_row(oracle(all, under).view(), 0, {1, 2, 0}, {0.5, 0.5, 0.0});
}

TEST_CASE("null experts agree with the scalar oracle on random shapes", "[router][null_expert][random]") {
    std::mt19937_64 rng(20261125);
    std::vector<std::int64_t> const widths = {1, 2, 3, 5, 7, 8, 9, 16, 17, 31, 60, 64, 100, 128, 160, 256};
    std::int64_t checked = 0;
    for (int trial = 0; trial < 120; ++trial) {
        std::int64_t const E = widths[rng() % widths.size()];
        std::int64_t const N = rng() % 4 == 0 ? 0 : static_cast<std::int64_t>(rng() % (2 * E + 3));
        std::int64_t const T = trial % 16 == 0 ? (trial == 0 ? 4096 : 1 + static_cast<std::int64_t>(rng() % 1200)) : static_cast<std::int64_t>(rng() % 97);
        std::int64_t k = 1 + static_cast<std::int64_t>(rng() % std::min<std::int64_t>(E + N, 12));
        if (rng() % 6 == 0) k = E + N;
        NullExpertConfig const cfg{.num_experts = E, .num_null_experts = N, .top_k = k};
        double const sd = trial % 3 == 0 ? 0.25 : 3.0;
        auto const logits = smoe_test::normal(rng, static_cast<std::size_t>(T * (E + N)), sd, 1.0 / 64);
        INFO("trial " << trial << ": E " << E << ", N " << N << ", k " << k << ", T " << T);
        auto const ref = oracle(cfg, logits);
        smoe_test::for_each_arch([&](auto arch) {
            INFO("arch " << decltype(arch)::name());
            auto const o = route_with(arch, cfg, logits);
            check_matches_oracle(o.r, ref.view());
            check_views_agree(o.r);
        });
        checked += T;
    }
    CHECK(checked > 1000);
}

TEST_CASE("null experts reject bad configs and inputs with a named smoe::invalid_argument", "[router][null_expert][errors]") {
    CHECK_THROWS_WITH(NullExpert({.num_experts = 3, .num_null_experts = 2, .top_k = 6}), Contains("top_k") && Contains("6"));
    CHECK_THROWS_WITH(NullExpert({.num_experts = 3, .num_null_experts = 2, .top_k = 0}), Contains("top_k"));
    CHECK_THROWS_WITH(NullExpert({.num_experts = 3, .num_null_experts = -1, .top_k = 1}), Contains("num_null_experts") && Contains("-1"));
    CHECK_THROWS_WITH(NullExpert({.num_experts = 0, .num_null_experts = 2, .top_k = 1}), Contains("num_experts"));
    CHECK_THROWS_AS(NullExpert({.num_experts = 3, .num_null_experts = 2, .top_k = 6}), smoe::invalid_argument);
    CHECK_NOTHROW(NullExpert({.num_experts = 3, .num_null_experts = 2, .top_k = 5}));  // k = E + N

    NullExpert const router(kExampleConfig);
    // Logits of width E (the nulls' columns missing) are refused.
    std::vector<float> narrow(3 * 3, 0.0f);
    std::vector<std::byte> ws(smoe::routing_workspace_size(router, 3));
    CHECK_THROWS_WITH(smoe::route(router, MatrixView<float const>(narrow.data(), 3, 3), {}, ws), Contains("logits") && Contains("[3, 3]"));
    CHECK_THROWS_WITH(smoe::reference::route_null_expert(kExampleConfig, MatrixView<float const>(narrow.data(), 3, 3)), Contains("logits"));

    std::vector<float> logits = kExampleLogits;
    logits[7] = std::numeric_limits<float>::quiet_NaN();  // token 1, expert 2
    CHECK_THROWS_WITH(route_default(kExampleConfig, logits), Contains("logits") && Contains("nan") && Contains("token 1, expert 2"));
    CHECK_THROWS_WITH(oracle(kExampleConfig, logits), Contains("logits") && Contains("nan") && Contains("token 1, expert 2"));
    logits[7] = 0.0f;
    logits[14] = std::numeric_limits<float>::infinity();  // token 2, null expert 4
    CHECK_THROWS_WITH(route_default(kExampleConfig, logits), Contains("logits") && Contains("inf") && Contains("token 2, expert 4"));
    CHECK_THROWS_WITH(route_default(kExampleConfig, kExampleLogits, {0, 0, 0}), Contains("expert_bias"));
}

namespace {

using Layer = smoe_test::SwiGLULayer<NullExpert>;
using Model = smoe_test::LayerModel<NullExpert>;
using smoe_test::check_close;

}  // namespace

TEST_CASE("MoELayer with null experts gives a nulls-only token zero output", "[router][null_expert][layer][spec]") {
    // d = 5 and an identity gate [E + N = 5, 5]: the layer's logits are the worked example's exactly.
    std::int64_t const d = 5, f = 4, E = 3, T = 3;
    std::vector<float> gate(25, 0.0f);
    for (int i = 0; i < 5; ++i) gate[i * 5 + i] = 1.0f;
    std::mt19937_64 rng(61);
    auto const w1 = smoe_test::normal(rng, E * f * d, 0.3), w3 = smoe_test::normal(rng, E * f * d, 0.3),
               w2 = smoe_test::normal(rng, E * d * f, 0.3);
    smoe::expert::SwiGLUConfig const ecfg{d, f, E};
    auto const experts = smoe::expert::SwiGLUWeights<float>::dense(w1.data(), w3.data(), w2.data(), ecfg);
    Layer layer({.router = kExampleConfig, .expert = ecfg, .max_tokens = T}, {MatrixView<float const>(gate.data(), 5, d), {}, experts});
    std::vector<float> y(T * d, std::numeric_limits<float>::quiet_NaN());
    auto const r = layer.forward(MatrixView<float const>(kExampleLogits.data(), T, d), MatrixView<float>(y.data(), T, d));
    check_row(r, 0, {0, 1}, {0.731059, 0.268941});
    check_row(r, 1, {0, 3}, {1.0, 0.468411});
    check_row(r, 2, {3, 4}, {0.430949, 0.430949});
    for (std::int64_t i = 0; i < d; ++i) CHECK(y[2 * d + i] == 0.0f);  // t2 picked nulls only
    auto const ref = smoe::reference::combine_swiglu(oracle(kExampleConfig, kExampleLogits).view(), experts,
                                                     MatrixView<float const>(kExampleLogits.data(), T, d));
    check_close(y, ref, T, d, 2e-5);
}

TEST_CASE("MoELayer with null experts matches the oracle end to end", "[router][null_expert][layer]") {
    std::mt19937_64 rng(62);
    struct Shape {
        std::int64_t d, f, E, N, k, T;
    };
    std::vector<Shape> const shapes = {{16, 12, 8, 16, 4, 40}, {17, 9, 3, 2, 2, 65}, {24, 20, 5, 0, 2, 7},
                                       {9, 7, 2, 6, 3, 1},     {33, 40, 6, 3, 9, 30}};
    for (auto const& s : shapes) {
        INFO("d " << s.d << ", E " << s.E << ", N " << s.N << ", k " << s.k << ", T " << s.T);
        NullExpertConfig const cfg{.num_experts = s.E, .num_null_experts = s.N, .top_k = s.k};
        auto const m = Model::random(rng, s.d, s.f, s.E, s.E + s.N);
        Layer layer({.router = cfg, .expert = m.expert_cfg(), .max_tokens = s.T}, m.weights());
        auto const x = smoe_test::normal(rng, static_cast<std::size_t>(s.T * s.d), 1.0);
        std::vector<float> y(static_cast<std::size_t>(s.T * s.d), std::numeric_limits<float>::quiet_NaN());
        auto const r = layer.forward(MatrixView<float const>(x.data(), s.T, s.d), MatrixView<float>(y.data(), s.T, s.d));

        auto const want = oracle(cfg, smoe_test::gate_logits(m, x, s.T));
        check_matches_oracle(r, want.view());
        auto const ref = smoe::reference::combine_swiglu(want.view(), m.experts(), MatrixView<float const>(x.data(), s.T, s.d));
        check_close(y, ref, s.T, s.d, 2e-5);
    }
}
