// router::TopP (SIMD softmax, heap-ordered prefix rule) against routing.md §4's worked example, the
// scalar oracle, the spec's edge cases, and inside MoELayer.

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdlib>
#include <limits>
#include <random>
#include <set>
#include <string>
#include <vector>

#include <catch2/catch.hpp>

#include "common/data.hpp"
#include "common/layer_model.hpp"
#include "common/routing_checks.hpp"
#include "smoe/kernels/reference/moe.hpp"
#include "smoe/kernels/reference/top_p.hpp"
#include "smoe/route.hpp"
#include "smoe/router/top_p.hpp"
#include "smoe/smoe.hpp"

using smoe::MatrixView;
using smoe::router::TopP;
using smoe::router::TopPConfig;
using Catch::Matchers::Contains;

namespace {

float const kNaN = std::numeric_limits<float>::quiet_NaN();
float const kInf = std::numeric_limits<float>::infinity();

constexpr smoe_test::RouteWith<TopP> route_with{};
constexpr smoe_test::RouteDefault<TopP> route_default{};

smoe::RoutingData oracle(TopPConfig const& cfg, std::vector<float> const& logits) {
    return smoe::reference::route_top_p(
        cfg, MatrixView<float const>(logits.data(), static_cast<std::int64_t>(logits.size()) / cfg.num_experts, cfg.num_experts));
}

// Row t holds `ids` with weights `w` (1e-5 relative: the spec prints 6 digits), then -1 / 0 up to K.
void check_row(smoe::RoutingResult const& r, std::int64_t t, std::vector<int> const& ids, std::vector<double> const& w) {
    smoe_test::check_padded_row(r, t, ids, w);
}
using smoe_test::check_views_agree;

std::int64_t clamp_count(TopPConfig const& cfg, std::int64_t n) { return std::min(std::max(n, cfg.min_k), cfg.max_selected()); }

// The counts routing.md §0 allows for one row, given the row's fp32 probabilities in the rule's order:
// the spec's decision, and the other decision wherever a prefix sum lies within 4 ulps of p (the fast
// kernel's probabilities differ from the correctly rounded ones by an ulp or so).
std::set<std::int64_t> allowed_counts(TopPConfig const& cfg, float const* w, std::int64_t E) {
    std::set<std::int64_t> out;
    if (cfg.top_p >= 1.0f) return {clamp_count(cfg, E)};
    auto near_p = [&](float c) {
        return std::llabs(std::int64_t{std::bit_cast<std::int32_t>(c)} - std::bit_cast<std::int32_t>(cfg.top_p)) <= 4;
    };
    float c = 0.0f;
    for (std::int64_t j = 0; j < E; ++j) {
        c += w[j];
        if (c > cfg.top_p || near_p(c)) out.insert(clamp_count(cfg, j + 1));  // may stop here
        if (c > cfg.top_p && !near_p(c)) return out;                         // must stop here
    }
    out.insert(clamp_count(cfg, E));  // every prefix may stay at or below p
    return out;
}

// Fast result against the oracle (routing.md §0): each row's count is one the rule allows, its experts
// are the oracle's first ones in the oracle's order, weights within 1e-6 relative, padding -1 / 0, and
// K the largest count. Returns the number of rows where more than one count was allowed.
std::int64_t check_matches_oracle(TopPConfig const& cfg, smoe::RoutingResult const& fast, std::vector<float> const& logits) {
    std::int64_t const E = cfg.num_experts;
    auto const ref = oracle(cfg, logits);
    TopPConfig every = cfg;  // the oracle's whole order: every expert, in the rule's order
    every.min_k = E;
    every.max_k = E;
    auto const all = oracle(every, logits);
    REQUIRE(fast.num_tokens == ref.num_tokens);
    std::int64_t ambiguous = 0, K = 0;
    bool same_counts = true;
    for (std::int64_t t = 0; t < fast.num_tokens; ++t) {
        INFO("token " << t);
        std::int64_t n = 0;
        while (n < fast.k && fast.expert_ids(t, n) >= 0) ++n;
        for (std::int64_t j = n; j < fast.k; ++j) {
            CHECK(fast.expert_ids(t, j) == -1);
            CHECK(fast.expert_weights(t, j) == 0.0f);
        }
        K = std::max(K, n);
        auto const allowed = allowed_counts(cfg, all.expert_weights.data() + t * E, E);
        std::int64_t n_ref = 0;
        while (n_ref < ref.k && ref.expert_ids[t * ref.k + n_ref] >= 0) ++n_ref;
        REQUIRE(allowed.count(n_ref) == 1);  // the helper agrees with the oracle
        INFO("count " << n << ", oracle count " << n_ref);
        REQUIRE(allowed.count(n) == 1);
        if (allowed.size() > 1) ++ambiguous;
        same_counts = same_counts && n == n_ref;
        for (std::int64_t j = 0; j < n; ++j) {
            INFO("slot " << j);
            REQUIRE(fast.expert_ids(t, j) == all.expert_ids[t * E + j]);
            CHECK(fast.expert_weights(t, j) == Approx(all.expert_weights[t * E + j]).epsilon(1e-6).margin(1e-30));
        }
    }
    CHECK(fast.k == K);
    if (same_counts) {
        CHECK(fast.k == ref.k);
        REQUIRE(fast.nnz() == static_cast<std::int64_t>(ref.token_ids.size()));
        for (std::int64_t e = 0; e <= E; ++e) CHECK(fast.offsets[e] == ref.offsets[e]);
    }
    return ambiguous;
}

// The routing.md §4 worked example: E = 4, T = 3, p = 0.4.
std::vector<float> const kExampleLogits = {3.0f, 0.0f, 0.0f, 0.0f,  //
                                           0.2f, 0.5f, -1.0f, 0.1f,  //
                                           0.0f, 0.0f, 0.0f, 0.0f};

void check_example(smoe::RoutingResult const& r) {
    CHECK(r.k == 2);
    check_row(r, 0, {0}, {0.870049});
    check_row(r, 1, {1, 0}, {0.379612, 0.281224});
    check_row(r, 2, {0, 1}, {0.25, 0.25});
    std::vector<std::int32_t> const offsets = {0, 3, 5, 5, 5}, tokens = {0, 1, 2, 1, 2};
    std::vector<double> const weights = {0.870049, 0.281224, 0.25, 0.379612, 0.25};
    CHECK(std::vector<std::int32_t>(r.offsets.begin(), r.offsets.end()) == offsets);
    CHECK(std::vector<std::int32_t>(r.token_ids.begin(), r.token_ids.end()) == tokens);
    REQUIRE(r.weights.size() == weights.size());
    for (std::size_t i = 0; i < weights.size(); ++i) CHECK(r.weights[i] == Approx(weights[i]).epsilon(1e-5));
    check_views_agree(r);
}

void check_example_max_k_1(smoe::RoutingResult const& r) {
    CHECK(r.k == 1);
    check_row(r, 0, {0}, {0.870049});
    check_row(r, 1, {1}, {0.379612});
    check_row(r, 2, {0}, {0.25});
}

void check_example_min_k_2(smoe::RoutingResult const& r) {
    CHECK(r.k == 2);
    check_row(r, 0, {0, 1}, {0.870049, 0.0433172});  // experts 1, 2, 3 tie; 1 wins
    check_row(r, 1, {1, 0}, {0.379612, 0.281224});
    check_row(r, 2, {0, 1}, {0.25, 0.25});
}

}  // namespace

TEST_CASE("top-p reproduces the routing.md worked example with its K and padding", "[router][top_p][spec]") {
    TopPConfig const base{.num_experts = 4, .top_p = 0.4f};
    TopPConfig const max1{.num_experts = 4, .top_p = 0.4f, .max_k = 1};
    TopPConfig const min2{.num_experts = 4, .top_p = 0.4f, .min_k = 2};
    CHECK(TopPConfig{.num_experts = 4}.top_p == 0.4f);  // the spec's default
    SECTION("the scalar oracle") {
        check_example(oracle(base, kExampleLogits).view());
        check_example_max_k_1(oracle(max1, kExampleLogits).view());
        check_example_min_k_2(oracle(min2, kExampleLogits).view());
    }
    SECTION("the SIMD router on every ISA") {
        smoe_test::for_each_arch([&](auto arch) {
            INFO("arch " << decltype(arch)::name());
            check_example(route_with(arch, base, kExampleLogits).r);
            check_example_max_k_1(route_with(arch, max1, kExampleLogits).r);
            check_example_min_k_2(route_with(arch, min2, kExampleLogits).r);
        });
    }
}

TEST_CASE("top-p agrees with the scalar oracle on random shapes and configs", "[router][top_p][random]") {
    std::mt19937_64 rng(20261124);
    std::vector<std::int64_t> const widths = {1, 2, 3, 5, 7, 8, 9, 16, 17, 31, 60, 64, 100, 128, 160, 256};
    std::vector<float> const ps = {1e-6f, 0.05f, 0.4f, 0.5f, 0.7f, 0.9f, 0.99f, 1.0f};
    std::int64_t checked = 0, ambiguous = 0;
    for (int trial = 0; trial < 120; ++trial) {
        std::int64_t const E = widths[rng() % widths.size()];
        std::int64_t const T = trial % 20 == 0 ? (trial == 0 ? 4096 : 500 + static_cast<std::int64_t>(rng() % 500)) : static_cast<std::int64_t>(rng() % 97);
        TopPConfig cfg{.num_experts = E};
        cfg.top_p = trial % 4 == 3 ? std::uniform_real_distribution<float>(0.01f, 1.0f)(rng) : ps[rng() % ps.size()];
        if (rng() % 3 == 0) cfg.max_k = 1 + static_cast<std::int64_t>(rng() % E);
        if (rng() % 3 == 0) cfg.min_k = 1 + static_cast<std::int64_t>(rng() % cfg.max_selected());
        // Logits on a 1/64 grid: exact ties are frequent (the tie rule decides them) and distinct
        // probabilities differ by at least 1.5%, so fp32 rounding never reorders them.
        double const sd = trial % 3 == 0 ? 0.25 : (trial % 3 == 1 ? 1.0 : 3.0);
        auto const logits = smoe_test::normal(rng, static_cast<std::size_t>(T * E), sd, 1.0 / 64);
        INFO("trial " << trial << ": E " << E << ", T " << T << ", p " << cfg.top_p << ", min_k " << cfg.min_k << ", max_k "
                      << cfg.max_selected());
        smoe_test::for_each_arch([&](auto arch) {
            INFO("arch " << decltype(arch)::name());
            auto const o = route_with(arch, cfg, logits);
            ambiguous += check_matches_oracle(cfg, o.r, logits);
            check_views_agree(o.r);
        });
        checked += T;
    }
    CHECK(checked > 1000);
    CHECK(ambiguous * 100 < checked);  // decisions within rounding of p stay rare
}

TEST_CASE("a top-p prefix sum equal to p does not stop the scan", "[router][top_p][edge]") {
    // Uniform rows: the probabilities 1/4 and 1/8 and all their prefix sums are exact in fp32.
    std::vector<float> const four(4, 0.0f), eight(8, 1.5f);
    struct Case {
        std::vector<float> const* logits;
        std::int64_t E;
        float p;
        std::int64_t n;
    };
    for (auto const& c : {Case{&four, 4, 0.25f, 2}, Case{&four, 4, 0.5f, 3}, Case{&four, 4, 0.75f, 4}, Case{&four, 4, 0.74f, 3},
                          Case{&eight, 8, 0.5f, 5}, Case{&eight, 8, 0.125f, 2}, Case{&eight, 8, 0.875f, 8}}) {
        INFO("E " << c.E << ", p " << c.p);
        TopPConfig const cfg{.num_experts = c.E, .top_p = c.p};
        std::vector<int> ids;
        std::vector<double> w;
        for (std::int64_t j = 0; j < c.n; ++j) {
            ids.push_back(static_cast<int>(j));  // uniform rows select by the tie rule
            w.push_back(1.0 / double(c.E));
        }
        smoe_test::for_each_arch([&](auto arch) {
            auto const o = route_with(arch, cfg, *c.logits);
            CHECK(o.r.k == c.n);
            check_row(o.r, 0, ids, w);
        });
        auto const ref = oracle(cfg, *c.logits);
        CHECK(ref.k == c.n);
        check_row(ref.view(), 0, ids, w);
    }
}

TEST_CASE("top-p with p = 1 selects every expert ordered by weight, then max_k", "[router][top_p][edge]") {
    std::mt19937_64 rng(7);
    std::int64_t const E = 256, T = 40;
    auto const logits = smoe_test::normal(rng, static_cast<std::size_t>(T * E), 2.0, 1.0 / 64);
    auto const all = route_default({.num_experts = E, .top_p = 1.0f}, logits);
    CHECK(all.r.k == E);
    CHECK(all.r.nnz() == T * E);
    for (std::int64_t t = 0; t < T; ++t)
        for (std::int64_t j = 1; j < E; ++j) {
            float const a = all.r.expert_weights(t, j - 1), b = all.r.expert_weights(t, j);
            REQUIRE((a > b || (a == b && all.r.expert_ids(t, j - 1) < all.r.expert_ids(t, j))));
        }
    auto const five = route_default({.num_experts = E, .top_p = 1.0f, .max_k = 5}, logits);
    CHECK(five.r.k == 5);
    CHECK(five.r.nnz() == T * 5);
    for (std::int64_t t = 0; t < T; ++t)
        for (std::int64_t j = 0; j < 5; ++j) CHECK(five.r.expert_ids(t, j) == all.r.expert_ids(t, j));
    // E = 3, uniform: exactly the three experts in id order.
    check_row(route_default({.num_experts = 3, .top_p = 1.0f}, {0.5f, 0.5f, 0.5f}).r, 0, {0, 1, 2}, {1 / 3.0, 1 / 3.0, 1 / 3.0});
}

TEST_CASE("top-p with p close to 0 selects exactly one expert", "[router][top_p][edge]") {
    float const tiny = std::numeric_limits<float>::denorm_min();
    std::vector<float> const logits = {0.0f, 0.0f, 0.0f, 0.0f, 0.0f, -2.0f, 1.0f, 1.0f, 0.5f, 0.0f};
    auto const o = route_default({.num_experts = 5, .top_p = tiny}, logits);
    CHECK(o.r.k == 1);
    CHECK(o.r.expert_ids(0, 0) == 0);  // uniform: the tie rule
    CHECK(o.r.expert_ids(1, 0) == 1);  // experts 1 and 2 tie at the top; 1 wins
    double const z = std::exp(-2.0) + 2 * std::exp(1.0) + std::exp(0.5) + 1.0;
    CHECK(o.r.expert_weights(1, 0) == Approx(std::exp(1.0) / z).epsilon(1e-6));
    CHECK(o.r.nnz() == 2);
}

TEST_CASE("top-p routes all-negative logits like any other input", "[router][top_p][edge]") {
    std::vector<float> const logits = {-8.0f, -7.5f, -30.0f, -7.25f, -9.0f, -100.0f, -7.75f, -8.5f};
    double z = 0;
    for (float x : logits) z += std::exp(double(x) + 7.25);
    auto s = [&](int e) { return std::exp(double(logits[e]) + 7.25) / z; };
    // s = 0.3386, 0.2637, 0.2054, 0.1246, ...: 0.3386 <= 0.5 < 0.6023.
    auto const o = route_default({.num_experts = 8, .top_p = 0.5f}, logits);
    check_row(o.r, 0, {3, 1}, {s(3), s(1)});
    check_row(oracle({.num_experts = 8, .top_p = 0.5f}, logits).view(), 0, {3, 1}, {s(3), s(1)});
}

TEST_CASE("top-p accepts T = 0 with K = 0 and an empty CSR", "[router][top_p][edge]") {
    auto const fast = route_default({.num_experts = 6}, {});
    auto const ref = oracle({.num_experts = 6}, {});
    for (auto const& r : {fast.r, ref.view()}) {
        CHECK(r.num_tokens == 0);
        CHECK(r.k == 0);
        CHECK(r.nnz() == 0);
        REQUIRE(r.offsets.size() == 7);
        for (auto off : r.offsets) CHECK(off == 0);
    }
}

TEST_CASE("top-p rejects bad configs naming the key", "[router][top_p][errors]") {
    CHECK_THROWS_WITH(TopP({.num_experts = 0}), Contains("num_experts"));
    CHECK_THROWS_WITH(TopP({.num_experts = 4, .top_p = 0.0f}), Contains("top_p") && Contains("0"));
    CHECK_THROWS_WITH(TopP({.num_experts = 4, .top_p = -0.5f}), Contains("top_p") && Contains("-0.5"));
    CHECK_THROWS_WITH(TopP({.num_experts = 4, .top_p = std::nextafter(1.0f, 2.0f)}), Contains("top_p"));
    CHECK_THROWS_WITH(TopP({.num_experts = 4, .top_p = kNaN}), Contains("top_p") && Contains("nan"));
    CHECK_THROWS_WITH(TopP({.num_experts = 4, .top_p = kInf}), Contains("top_p") && Contains("inf"));
    CHECK_THROWS_WITH(TopP({.num_experts = 4, .max_k = 0}), Contains("max_k"));
    CHECK_THROWS_WITH(TopP({.num_experts = 4, .max_k = 5}), Contains("max_k") && Contains("5"));
    CHECK_THROWS_WITH(TopP({.num_experts = 4, .min_k = 0}), Contains("min_k"));
    CHECK_THROWS_WITH(TopP({.num_experts = 4, .max_k = 2, .min_k = 3}), Contains("min_k") && Contains("3"));
    CHECK_THROWS_WITH(TopP({.num_experts = 4, .min_k = 5}), Contains("min_k"));
    CHECK_THROWS_WITH(TopP({.num_experts = 4, .score_func = smoe::router::ScoreFunc::sigmoid}),
                      Contains("score_func") && Contains("sigmoid"));
    CHECK_THROWS_AS(smoe::reference::route_top_p({.num_experts = 4, .top_p = 2.0f}, {}), smoe::invalid_argument);
    CHECK_NOTHROW(TopP({.num_experts = 4, .top_p = 1.0f, .max_k = 4, .min_k = 4}));
    CHECK_NOTHROW(TopP({.num_experts = 1, .top_p = std::numeric_limits<float>::denorm_min()}));
}

TEST_CASE("top-p rejects non-finite logits naming token and expert, and any bias", "[router][top_p][errors]") {
    TopPConfig const cfg{.num_experts = 5};
    for (float bad : {kNaN, kInf, -kInf}) {
        std::vector<float> logits(3 * 5, 0.25f);
        logits[2 * 5 + 4] = bad;
        logits[1 * 5 + 3] = bad;  // the first offending entry: token 1, expert 3
        smoe_test::for_each_arch([&](auto arch) {
            CHECK_THROWS_WITH(route_with(arch, cfg, logits), Contains("logits") && Contains("token 1") && Contains("expert 3"));
        });
        CHECK_THROWS_WITH(oracle(cfg, logits), Contains("logits") && Contains("token 1") && Contains("expert 3"));
    }
    TopP router(cfg);
    std::vector<float> const logits(5, 0.0f), bias(5, 0.0f);
    std::vector<std::byte> ws(smoe::routing_workspace_size(router, 1));
    CHECK_THROWS_WITH(smoe::route(router, MatrixView<float const>(logits.data(), 1, 5), bias, ws), Contains("expert_bias"));
}

namespace {

using Layer = smoe_test::SwiGLULayer<TopP>;
using Model = smoe_test::LayerModel<TopP>;
using smoe_test::check_close;

}  // namespace

TEST_CASE("MoELayer with top-p routing matches the oracle end to end", "[router][top_p][layer]") {
    std::mt19937_64 rng(41);
    struct Shape {
        std::int64_t d, f, E, T;
        TopPConfig cfg;
    };
    std::vector<Shape> const shapes = {{5, 3, 1, 7, {.num_experts = 1}},
                                       {16, 16, 8, 64, {.num_experts = 8, .top_p = 0.4f}},
                                       {17, 33, 8, 65, {.num_experts = 8, .top_p = 0.7f, .max_k = 3}},
                                       {37, 29, 6, 100, {.num_experts = 6, .top_p = 0.9f, .min_k = 2}},
                                       {33, 71, 60, 40, {.num_experts = 60, .top_p = 0.5f}},
                                       {8, 9, 3, 2, {.num_experts = 3, .top_p = 1.0f}},
                                       {24, 20, 5, 1, {.num_experts = 5, .top_p = 0.3f}},
                                       {24, 20, 5, 0, {.num_experts = 5}}};
    for (auto const& s : shapes) {
        INFO("d " << s.d << ", f " << s.f << ", E " << s.E << ", T " << s.T << ", p " << s.cfg.top_p);
        Model m = Model::random(rng, s.d, s.f, s.E);
        auto const x = smoe_test::normal(rng, static_cast<std::size_t>(s.T * s.d), 1.0);
        std::vector<float> y(static_cast<std::size_t>(s.T * s.d), kNaN);
        Layer layer({.router = s.cfg, .expert = m.expert_cfg(), .max_tokens = std::max<std::int64_t>(s.T, 1)}, m.weights());
        std::vector<std::byte> ws(layer.workspace_size());
        auto const r = layer.forward(MatrixView<float const>(x.data(), s.T, s.d), MatrixView<float>(y.data(), s.T, s.d), ws);
        // The oracle routes the layer's own fp32 logits (the gate GEMM is tested on its own).
        auto const logits = smoe_test::gate_logits(m, x, s.T);
        auto const want = oracle(s.cfg, logits);
        bool const exact = check_matches_oracle(s.cfg, r, logits) == 0;
        // Where a decision was within rounding of p, the layer's own (checked) routing is the reference.
        auto const ref = smoe::reference::combine_swiglu(exact ? want.view() : r, m.experts(),
                                                         MatrixView<float const>(x.data(), s.T, s.d));
        check_close(y, ref, s.T, s.d, 2e-5);
    }
}
