// router::TopK (SIMD score-and-select) against routing.md §2's worked example and the scalar oracle.

#include <algorithm>
#include <cmath>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include <catch2/catch.hpp>

#include "common/data.hpp"
#include "common/routing_checks.hpp"
#include "smoe/kernels/reference/reference.hpp"
#include "smoe/route.hpp"
#include "smoe/router/topk.hpp"

using smoe::MatrixView;
using smoe::router::ScoreFunc;
using smoe::router::TopK;
using smoe::router::TopKConfig;

namespace {

constexpr smoe_test::RouteWith<TopK> route_with{};
constexpr smoe_test::RouteDefault<TopK> route_default{};

// The routing.md §2 worked example: E = 6, T = 3, k = 2.
std::vector<float> const kExampleLogits = {2.0f,  1.0f,  1.0f,  -1.0f, 0.5f, -0.5f,  //
                                           -3.0f, -1.0f, -2.0f, -0.5f, -4.0f, -1.5f,  //
                                           0.3f,  -0.2f, 1.7f,  0.9f,  1.2f, -2.0f};

using smoe_test::check_matches_oracle;
using smoe_test::check_row;
using smoe_test::check_views_agree;

std::vector<std::int64_t> divisors(std::int64_t n) {
    std::vector<std::int64_t> d;
    for (std::int64_t i = 1; i <= n; ++i)
        if (n % i == 0) d.push_back(i);
    return d;
}

}  // namespace

TEST_CASE("top-k reproduces the routing.md worked example for configs (a) to (e)", "[router][topk][spec]") {
    smoe_test::for_each_arch([](auto arch) {
        INFO("arch " << decltype(arch)::name());
        {  // (a) softmax, norm_topk_prob; t0 ties experts 1 and 2 and expert 1 wins
            auto const o = route_with(arch, {.num_experts = 6, .top_k = 2, .norm_topk_prob = true}, kExampleLogits);
            check_row(o.r, 0, {0, 1}, {0.731059, 0.268941});
            check_row(o.r, 1, {3, 1}, {0.622459, 0.377541});
            check_row(o.r, 2, {2, 4}, {0.622459, 0.377541});
            std::vector<std::int32_t> const offsets = {0, 1, 3, 4, 5, 6, 6}, tokens = {0, 0, 1, 2, 1, 2};
            std::vector<double> const weights = {0.731059, 0.268941, 0.377541, 0.622459, 0.622459, 0.377541};
            CHECK(std::vector<std::int32_t>(o.r.offsets.begin(), o.r.offsets.end()) == offsets);
            CHECK(std::vector<std::int32_t>(o.r.token_ids.begin(), o.r.token_ids.end()) == tokens);
            for (std::size_t i = 0; i < weights.size(); ++i) CHECK(o.r.weights[i] == Approx(weights[i]).epsilon(1e-5));
            check_views_agree(o.r);
        }
        {  // (b) softmax without renormalisation
            auto const o = route_with(arch, {.num_experts = 6, .top_k = 2}, kExampleLogits);
            check_row(o.r, 0, {0, 1}, {0.478295, 0.175955});
            check_row(o.r, 1, {3, 1}, {0.432934, 0.262588});
            check_row(o.r, 2, {2, 4}, {0.403755, 0.24489});
        }
        {  // (c) score_after_topk equals (a)
            auto const o = route_with(arch, TopKConfig::megatron(6, 2), kExampleLogits);
            check_row(o.r, 0, {0, 1}, {0.731059, 0.268941});
            check_row(o.r, 1, {3, 1}, {0.622459, 0.377541});
            check_row(o.r, 2, {2, 4}, {0.622459, 0.377541});
        }
        {  // (d) sigmoid, groups with a bias (top-2 sum), renormalised, scaled; the bias only selects
            TopKConfig const cfg{.num_experts = 6, .top_k = 2, .score_func = ScoreFunc::sigmoid, .norm_topk_prob = true,
                                 .routed_scaling_factor = 2.5f, .n_group = 3, .topk_group = 2};
            auto const o = route_with(arch, cfg, kExampleLogits, {0.0f, 0.0f, 0.1f, -0.1f, 0.0f, 0.3f});
            check_row(o.r, 0, {0, 1}, {1.36612, 1.13388});  // expert 2 (c = 0.831) is in a dropped group
            check_row(o.r, 1, {3, 5}, {1.68555, 0.814449});  // expert 1 excluded, 5 brought in by the bias
            check_row(o.r, 2, {2, 4}, {1.30964, 1.19036});
            check_views_agree(o.r);
        }
        {  // (e) softmax, groups by maximum, scale 16
            TopKConfig const cfg{.num_experts = 6, .top_k = 2, .routed_scaling_factor = 16.0f, .n_group = 3, .topk_group = 1};
            auto const o = route_with(arch, cfg, kExampleLogits);
            check_row(o.r, 0, {0, 1}, {7.65272, 2.81528});
            check_row(o.r, 1, {3, 2}, {6.92694, 1.54561});
            check_row(o.r, 2, {2, 3}, {6.46008, 2.9027});
        }
    });
}

TEST_CASE("top-k agrees with the scalar oracle on random shapes and configs", "[router][topk][random]") {
    std::mt19937_64 rng(20261123);
    std::vector<std::int64_t> const widths = {1, 2, 3, 5, 7, 8, 9, 16, 17, 31, 60, 64, 100, 128, 160, 256};
    std::int64_t checked = 0;
    for (int trial = 0; trial < 160; ++trial) {
        std::int64_t const E = widths[rng() % widths.size()];
        std::int64_t const T = trial % 16 == 0 ? (trial == 0 ? 4096 : 1 + static_cast<std::int64_t>(rng() % 1500)) : static_cast<std::int64_t>(rng() % 97);
        TopKConfig cfg;
        cfg.num_experts = E;
        int const kind = static_cast<int>(rng() % 4);
        auto const divs = divisors(E);
        cfg.n_group = kind >= 2 ? divs[rng() % divs.size()] : 1;
        cfg.topk_group = cfg.n_group > 1 ? 1 + static_cast<std::int64_t>(rng() % cfg.n_group) : 0;
        bool const biased = kind == 3 && E / cfg.n_group >= 2;
        std::int64_t const eligible = cfg.groups_kept() * cfg.group_size();
        cfg.top_k = 1 + static_cast<std::int64_t>(rng() % std::min<std::int64_t>(eligible, 12));
        if (rng() % 5 == 0) cfg.top_k = eligible;  // k equal to every eligible expert
        cfg.score_func = rng() % 2 ? ScoreFunc::softmax : ScoreFunc::sigmoid;
        cfg.norm_topk_prob = rng() % 2;
        cfg.routed_scaling_factor = rng() % 3 == 0 ? 2.5f : 1.0f;
        if (kind == 0 && rng() % 3 == 0) cfg = TopKConfig::megatron(E, cfg.top_k);
        // Logits on a 1/64 grid: exact ties are frequent (the tie rule decides them), while distinct
        // values are too far apart for fp32 rounding to reorder them. Sigmoid stays where it is not flat.
        double const sd = cfg.score_func == ScoreFunc::sigmoid ? 2.0 : (trial % 3 == 0 ? 0.25 : 3.0);
        auto logits = smoe_test::normal(rng, static_cast<std::size_t>(T * E), sd, 1.0 / 64);
        if (cfg.score_func == ScoreFunc::sigmoid)
            for (auto& x : logits) x = std::clamp(x, -6.0f, 6.0f);
        std::vector<float> bias;
        if (biased) bias = smoe_test::normal(rng, static_cast<std::size_t>(E), 0.05, 1.0 / 1024);
        INFO("trial " << trial << ": E " << E << ", T " << T << ", k " << cfg.top_k << ", groups " << cfg.n_group << "/"
                      << cfg.groups_kept() << ", " << to_string(cfg.score_func) << ", bias " << biased);
        auto const ref = smoe::reference::route_topk(cfg, MatrixView<float const>(logits.data(), T, E), bias);
        smoe_test::for_each_arch([&](auto arch) {
            INFO("arch " << decltype(arch)::name());
            auto const o = route_with(arch, cfg, logits, bias);
            check_matches_oracle(o.r, ref.view());
            check_views_agree(o.r);
        });
        checked += T;
    }
    CHECK(checked > 1000);
}

TEST_CASE("top-k breaks exact ties toward the lower expert id", "[router][topk][ties]") {
    std::vector<float> const logits(2 * 9, 0.5f);  // every score equal
    auto const o = route_default({.num_experts = 9, .top_k = 4, .norm_topk_prob = true}, logits);
    for (std::int64_t t = 0; t < 2; ++t) check_row(o.r, t, {0, 1, 2, 3}, {0.25, 0.25, 0.25, 0.25});
    // +0 and -0 are equal scores: the lower id wins.
    auto const z = route_default({.num_experts = 3, .top_k = 1, .score_after_topk = true}, {-0.0f, 0.0f, -1.0f});
    CHECK(z.r.expert_ids(0, 0) == 0);
}

TEST_CASE("top-k with k equal to E selects every expert ordered by weight", "[router][topk][edge]") {
    std::vector<float> const logits = {0.1f, 3.0f, -2.0f, 3.0f, 0.5f};
    auto const o = route_default({.num_experts = 5, .top_k = 5}, logits);
    double z = 0;
    for (float x : logits) z += std::exp(double(x));
    check_row(o.r, 0, {1, 3, 4, 0, 2},
              {std::exp(3.0) / z, std::exp(3.0) / z, std::exp(0.5) / z, std::exp(0.1) / z, std::exp(-2.0) / z});
    CHECK(o.r.nnz() == 5);
}

TEST_CASE("top-k routes all-negative logits like any other input", "[router][topk][edge]") {
    // vLLM PR #37605: a fused kernel once mis-selected on all-negative rows.
    std::vector<float> const logits = {-8.0f, -7.5f, -30.0f, -7.25f, -9.0f, -100.0f, -7.75f, -8.5f};
    for (auto score : {ScoreFunc::softmax, ScoreFunc::sigmoid}) {
        auto const o = route_default({.num_experts = 8, .top_k = 3, .score_func = score}, logits);
        CHECK(o.r.expert_ids(0, 0) == 3);
        CHECK(o.r.expert_ids(0, 1) == 1);
        CHECK(o.r.expert_ids(0, 2) == 6);
    }
}

TEST_CASE("top-k accepts T = 0 and T = 1", "[router][topk][edge]") {
    auto const empty = route_default(TopKConfig::mixtral(), {});
    CHECK(empty.r.num_tokens == 0);
    CHECK(empty.r.k == 2);
    CHECK(empty.r.nnz() == 0);
    for (auto off : empty.r.offsets) CHECK(off == 0);
    auto const one = route_default(TopKConfig::mixtral(), {0, 0, 0, 0, 0, 0, 1.0f, 0});
    check_row(one.r, 0, {6, 0}, {std::exp(1.0) / (std::exp(1.0) + 1.0), 1.0 / (std::exp(1.0) + 1.0)});
    CHECK(one.r.load(6) == 1);
    CHECK(one.r.load(0) == 1);
}

TEST_CASE("a selection bias changes which experts are picked but never their weights", "[router][topk][bias]") {
    std::vector<float> const logits = {1.0f, 0.0f, -1.0f, -2.0f};
    TopKConfig const cfg{.num_experts = 4, .top_k = 1, .score_func = ScoreFunc::sigmoid};
    auto const plain = route_default(cfg, logits);
    auto const biased = route_default(cfg, logits, {0.0f, 0.0f, 0.0f, 1.0f});
    CHECK(plain.r.expert_ids(0, 0) == 0);
    CHECK(biased.r.expert_ids(0, 0) == 3);
    CHECK(biased.r.expert_weights(0, 0) == Approx(1.0 / (1.0 + std::exp(2.0))).epsilon(1e-6));
}

TEST_CASE("top-k rejects bad configs and inputs with a named smoe::invalid_argument", "[router][topk][errors]") {
    using Catch::Matchers::Contains;
    CHECK_THROWS_WITH(TopK({.num_experts = 4, .top_k = 5}), Contains("top_k") && Contains("5"));
    CHECK_THROWS_WITH(TopK({.num_experts = 4, .top_k = 0}), Contains("top_k"));
    CHECK_THROWS_WITH(TopK({.num_experts = 0, .top_k = 1}), Contains("num_experts"));
    CHECK_THROWS_WITH(TopK({.num_experts = 6, .top_k = 2, .n_group = 4}), Contains("n_group"));
    CHECK_THROWS_WITH(TopK({.num_experts = 6, .top_k = 3, .n_group = 3, .topk_group = 1}), Contains("top_k"));
    CHECK_THROWS_WITH(TopK({.num_experts = 6, .top_k = 2, .n_group = 3, .topk_group = 4}), Contains("topk_group"));
    CHECK_THROWS_WITH(TopK({.num_experts = 6, .top_k = 2, .score_func = ScoreFunc::sigmoid, .score_after_topk = true}),
                      Contains("score_after_topk"));
    CHECK_THROWS_WITH(TopK({.num_experts = 6, .top_k = 2, .routed_scaling_factor = INFINITY}), Contains("routed_scaling_factor"));
    CHECK_THROWS_WITH(TopK({.num_experts = 6, .top_k = 2, .norm_eps = -1.0f}), Contains("norm_eps"));
    CHECK_THROWS_AS(TopK({.num_experts = 4, .top_k = 5}), smoe::invalid_argument);

    std::vector<float> logits = {0.0f, 1.0f, 2.0f, 3.0f, 0.0f, 1.0f, 2.0f, 3.0f};
    TopKConfig const cfg{.num_experts = 4, .top_k = 2};
    logits[6] = std::numeric_limits<float>::quiet_NaN();
    CHECK_THROWS_WITH(route_default(cfg, logits), Contains("logits") && Contains("nan") && Contains("token 1, expert 2"));
    logits[6] = 2.0f;
    logits[1] = -std::numeric_limits<float>::infinity();
    CHECK_THROWS_WITH(route_default(cfg, logits), Contains("logits") && Contains("inf") && Contains("token 0, expert 1"));
    logits[1] = 1.0f;
    CHECK_THROWS_WITH(route_default(cfg, logits, {0.0f, 0.0f, 0.0f}), Contains("expert_bias") && Contains("length 3"));
    CHECK_THROWS_WITH(route_default(cfg, logits, {0.0f, NAN, 0.0f, 0.0f}), Contains("expert_bias") && Contains("expert 1"));
    CHECK_THROWS_WITH(route_default(TopKConfig::megatron(4, 2), logits, {0.0f, 0.0f, 0.0f, 0.0f}), Contains("expert_bias"));
    std::vector<float> v3(256, 0.0f);
    CHECK_THROWS_WITH(route_default(TopKConfig::deepseek_v3(), v3), Contains("expert_bias"));

    // A workspace planned for fewer tokens than the call is refused, not overrun.
    TopK router(cfg);
    std::vector<std::byte> small(smoe::routing_workspace_size(router, 1) / 2);
    CHECK_THROWS_WITH(smoe::route(router, MatrixView<float const>(logits.data(), 2, 4), {}, small), Contains("workspace"));
}

TEST_CASE("top-k presets carry the values of routing.md and route like the oracle", "[router][topk][presets]") {
    struct Row {
        TopKConfig cfg;
        std::int64_t E, k;
        ScoreFunc score;
        bool norm;
        std::int64_t groups, kept;
        float scale;
    };
    std::vector<Row> const rows = {
        {TopKConfig::mixtral(), 8, 2, ScoreFunc::softmax, true, 1, 1, 1.0f},
        {TopKConfig::olmoe(), 64, 8, ScoreFunc::softmax, false, 1, 1, 1.0f},
        {TopKConfig::qwen2_moe(), 60, 4, ScoreFunc::softmax, false, 1, 1, 1.0f},
        {TopKConfig::deepseek_v2(), 160, 6, ScoreFunc::softmax, false, 8, 3, 16.0f},
        {TopKConfig::deepseek_v2_lite(), 64, 6, ScoreFunc::softmax, false, 1, 1, 1.0f},
        {TopKConfig::deepseek_v3(), 256, 8, ScoreFunc::sigmoid, true, 8, 4, 2.5f},
    };
    std::mt19937_64 rng(7);
    for (auto const& row : rows) {
        INFO("E " << row.E);
        CHECK(row.cfg.num_experts == row.E);
        CHECK(row.cfg.top_k == row.k);
        CHECK(row.cfg.score_func == row.score);
        CHECK(row.cfg.norm_topk_prob == row.norm);
        CHECK(row.cfg.n_group == row.groups);
        CHECK(row.cfg.groups_kept() == row.kept);
        CHECK(row.cfg.routed_scaling_factor == row.scale);
        auto const logits = smoe_test::normal(rng, static_cast<std::size_t>(33 * row.E), 1.5, 1.0 / 64);
        std::vector<float> bias;
        if (row.cfg.requires_expert_bias) bias = smoe_test::normal(rng, static_cast<std::size_t>(row.E), 0.05, 1.0 / 1024);
        auto const o = route_default(row.cfg, logits, bias);
        auto const ref = smoe::reference::route_topk(row.cfg, MatrixView<float const>(logits.data(), 33, row.E), bias);
        check_matches_oracle(o.r, ref.view());
    }
    CHECK(TopKConfig::megatron(32, 4).score_after_topk);
}
