// research.md §4 (router::Race) and §6 (balance::LeastLoaded, LLEP): the worked examples as the spec
// gives them, the scalar oracle on random shapes, test-time control, the edge cases and the errors.

#include <algorithm>
#include <array>
#include <cmath>
#include <limits>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include <catch2/catch.hpp>

#include "common/data.hpp"
#include "common/formula.hpp"
#include "common/layer_model.hpp"
#include "common/routing_checks.hpp"
#include "smoe/balance/least_loaded.hpp"
#include "smoe/kernels/reference/moe.hpp"
#include "smoe/kernels/reference/race.hpp"
#include "smoe/route.hpp"
#include "smoe/router/race.hpp"
#include "smoe/smoe.hpp"

using smoe::MatrixView;
using smoe::balance::LeastLoaded;
using smoe::balance::LeastLoadedConfig;
using smoe::balance::LlepItem;
using smoe::router::Race;
using smoe::router::RaceConfig;
using smoe::router::RaceScore;
using Catch::Matchers::Contains;
using smoe_test::check_matches_oracle;
using smoe_test::check_padded_row;
using smoe_test::check_views_agree;

namespace {

constexpr smoe_test::RouteWith<Race> route_with{};
constexpr smoe_test::RouteDefault<Race> route_default{};

smoe::RoutingData oracle(RaceConfig const& cfg, std::vector<float> const& logits) {
    auto const T = static_cast<std::int64_t>(logits.size()) / cfg.num_experts;
    return smoe::reference::route_race(cfg, MatrixView<float const>(logits.data(), T, cfg.num_experts));
}

// research.md §4's worked example: E = 4, T = 3, k = 2.
std::vector<float> const kRaceLogits = {2.0f, -1.0f, 0.5f, 1.0f,  //
                                        1.5f, 1.5f,  0.5f, -2.0f,  //
                                        -0.5f, -1.0f, 0.5f, 0.0f};

void check_race_example(RaceConfig const& cfg, smoe::RoutingResult const& r) {
    INFO("score " << to_string(cfg.score) << ", race_group " << cfg.race_group << ", k " << cfg.top_k);
    check_views_agree(r, {.sorted_rows = true});
    CHECK(r.nnz() == cfg.top_k * 3);
    if (cfg.top_k == 1) {
        CHECK(r.k == 2);
        check_padded_row(r, 0, {0}, {2});
        check_padded_row(r, 1, {0, 1}, {1.5, 1.5});
        check_padded_row(r, 2, {}, {});
        return;
    }
    if (cfg.score == RaceScore::identity && cfg.race_group == 0) {
        CHECK(r.k == 3);
        check_padded_row(r, 0, {0, 3, 2}, {2, 1, 0.5});
        check_padded_row(r, 1, {0, 1, 2}, {1.5, 1.5, 0.5});
        check_padded_row(r, 2, {}, {});  // [-1, -1, -1]: the three-way tie at 0.5 goes to the lower tokens
        CHECK(std::vector<std::int32_t>(r.offsets.begin(), r.offsets.end()) == std::vector<std::int32_t>{0, 2, 3, 5, 6});
        CHECK(std::vector<std::int32_t>(r.token_ids.begin(), r.token_ids.end()) == std::vector<std::int32_t>{0, 1, 1, 0, 1, 0});
        CHECK(std::vector<float>(r.weights.begin(), r.weights.end()) == std::vector<float>{2, 1.5f, 1.5f, 0.5f, 0.5f, 1});
    } else if (cfg.score == RaceScore::identity) {  // race_group 1
        CHECK(r.k == 2);
        check_padded_row(r, 0, {0, 3}, {2, 1});
        check_padded_row(r, 1, {0, 1}, {1.5, 1.5});
        check_padded_row(r, 2, {2, 3}, {0.5, 0});
    } else if (cfg.score == RaceScore::sigmoid) {
        CHECK(r.k == 3);
        check_padded_row(r, 0, {0, 3, 2}, {0.880797, 0.731059, 0.622459});
        check_padded_row(r, 1, {0, 1, 2}, {0.817574, 0.817574, 0.622459});
        check_padded_row(r, 2, {}, {});
    } else {
        CHECK(r.k == 2);
        check_padded_row(r, 0, {0, 3}, {0.60946, 0.224208});
        check_padded_row(r, 1, {0, 1}, {0.417001, 0.417001});
        check_padded_row(r, 2, {2, 3}, {0.455054, 0.276004});
    }
}


}  // namespace

// ---------------------------------------------------------------------------------------------------------
// router::Race

TEST_CASE("race reproduces research.md's worked example in every row of its table", "[router][race][spec]") {
    std::vector<RaceConfig> const rows = {{.num_experts = 4, .top_k = 2},
                                          {.num_experts = 4, .top_k = 2, .race_group = 1},
                                          {.num_experts = 4, .top_k = 2, .score = RaceScore::sigmoid},
                                          {.num_experts = 4, .top_k = 2, .score = RaceScore::softmax},
                                          {.num_experts = 4, .top_k = 1}};
    for (auto const& cfg : rows) {
        check_race_example(cfg, oracle(cfg, kRaceLogits).view());
        smoe_test::for_each_arch([&](auto arch) {
            INFO("arch " << decltype(arch)::name());
            check_race_example(cfg, route_with(arch, cfg, kRaceLogits).r);
        });
    }
    SECTION("with softmax scores the whole-call race equals race_group 1 here") {
        auto const a = route_default({.num_experts = 4, .top_k = 2, .score = RaceScore::softmax}, kRaceLogits);
        auto const b = route_default({.num_experts = 4, .top_k = 2, .score = RaceScore::softmax, .race_group = 1}, kRaceLogits);
        check_matches_oracle(a.r, b.r);
    }
    SECTION("decoding t2 alone gives its top two with w = s") {
        std::vector<float> const t2(kRaceLogits.begin() + 8, kRaceLogits.end());
        auto const o = route_default({.num_experts = 4, .top_k = 2}, t2);
        CHECK(o.r.k == 2);
        check_padded_row(o.r, 0, {2, 3}, {0.5, 0.0});
    }
}

TEST_CASE("race agrees with the scalar oracle on random shapes, groups and score functions", "[router][race][random]") {
    std::mt19937_64 rng(20261205);
    std::vector<std::int64_t> const widths = {1, 2, 3, 5, 8, 9, 16, 17, 31, 60, 64, 100, 128};
    std::int64_t checked = 0;
    for (int trial = 0; trial < 90; ++trial) {
        std::int64_t const E = widths[rng() % widths.size()];
        std::int64_t const T = trial % 15 == 0 ? 200 + static_cast<std::int64_t>(rng() % 300) : static_cast<std::int64_t>(rng() % 70);
        RaceConfig cfg{.num_experts = E, .top_k = 1 + static_cast<std::int64_t>(rng() % E)};
        cfg.score = std::vector<RaceScore>{RaceScore::identity, RaceScore::sigmoid, RaceScore::softmax}[trial % 3];
        cfg.race_group = std::vector<std::int64_t>{0, 0, 1, 3, 7, 64}[rng() % 6];
        // Identity: a 1/64 grid (exact ties, zeros, negatives). Softmax and sigmoid: spread logits whose
        // fp32 scores are far apart or equal (repeated tokens), never within the kernels' 2e-6.
        double const sd = cfg.score == RaceScore::identity ? 1.0 : 2.0;
        auto logits = smoe_test::normal(rng, static_cast<std::size_t>(T * E), sd, cfg.score == RaceScore::identity ? 1.0 / 64 : 1.0 / 4);
        for (std::int64_t t = 1; t < T; ++t)
            if (rng() % 4 == 0) std::copy_n(logits.begin() + (t - 1) * E, E, logits.begin() + t * E);
        INFO("trial " << trial << ": E " << E << ", T " << T << ", k " << cfg.top_k << ", " << to_string(cfg.score) << ", group "
                      << cfg.race_group);
        auto const ref = oracle(cfg, logits);
        smoe_test::for_each_arch([&](auto arch) {
            INFO("arch " << decltype(arch)::name());
            auto const o = route_with(arch, cfg, logits);
            check_matches_oracle(o.r, ref.view());
            check_views_agree(o.r, {.sorted_rows = true});
            CHECK(o.r.nnz() == cfg.top_k * T);
        });
        checked += T;
    }
    CHECK(checked > 1000);
}

TEST_CASE("race keeps zero and negative identity weights, ties +0 with -0, and accepts T = 0", "[router][race][edge]") {
    // E = 3, k = 2, one token: every score is <= 0, two of them tie at zero.
    auto const o = route_default({.num_experts = 3, .top_k = 2}, {-0.0f, -1.0f, 0.0f});
    REQUIRE(o.r.k == 2);
    CHECK(o.r.expert_ids(0, 0) == 0);
    CHECK(o.r.expert_ids(0, 1) == 2);
    CHECK(o.r.expert_weights(0, 0) == 0.0f);
    CHECK(o.r.nnz() == 2);
    auto const neg = route_default({.num_experts = 3, .top_k = 3}, {-2.0f, -1.0f, -3.0f});
    check_padded_row(neg.r, 0, {1, 0, 2}, {-1, -2, -3});
    auto const empty = route_default({.num_experts = 4, .top_k = 2}, {});
    CHECK(empty.r.num_tokens == 0);
    CHECK(empty.r.k == 0);
    CHECK(empty.r.nnz() == 0);
    SECTION("a last partial group races with budget k times its size") {
        RaceConfig const cfg{.num_experts = 2, .top_k = 1, .race_group = 2};
        // Group {t0, t1} gives both places to t0's scores; the partial group {t2} gets one place.
        auto const r = route_default(cfg, {5.0f, 4.0f, 0.0f, 0.0f, 1.0f, 2.0f});
        check_padded_row(r.r, 0, {0, 1}, {5, 4});
        check_padded_row(r.r, 1, {}, {});
        check_padded_row(r.r, 2, {1}, {2});
    }
}

TEST_CASE("race under test-time control follows research.md section 8's race row", "[router][race][control]") {
    RaceConfig const cfg{.num_experts = 4, .top_k = 2};
    Race const router(cfg);
    std::vector<std::byte> ws(smoe::routing_workspace_size(router, 3));
    MatrixView<float const> const lv(kRaceLogits.data(), 3, 4);
    SECTION("an empty record routes as the plain call") {
        auto const a = route_default(cfg, kRaceLogits);
        std::vector<std::byte> ws2(ws.size());
        auto const b = smoe::route(router, lv, {}, ws2, smoe::RouterControl{});
        check_matches_oracle(b, a.r);
    }
    SECTION("a removed expert is no candidate; its places go to the next scores") {
        std::vector<std::uint8_t> const mask = {0, 1, 1, 1};
        auto const r = smoe::route(router, lv, {}, ws, smoe::RouterControl{.expert_mask = mask});
        // Candidates without expert 0: 1.5 (t1 e1), 1 (t0 e3), 0.5 x3, 0 (t2 e3): the six places go to
        // t1 e1, t0 e3, t0 e2, t1 e2, t2 e2, t2 e3.
        check_padded_row(r, 0, {3, 2}, {1, 0.5});
        check_padded_row(r, 1, {1, 2}, {1.5, 0.5});
        check_padded_row(r, 2, {2, 3}, {0.5, 0});
    }
    SECTION("offset on the logits, boost on the scores, override replacing a token's row") {
        std::vector<float> const a = {0, 0, 0, 2}, b = {1, 1, 4, 1}, v = {1, 1, 1, 1};
        std::vector<std::int32_t> const tok = {1};
        auto const r = smoe::route(router, lv, {}, ws,
                                   smoe::RouterControl{.logit_offset = a, .boost = b, .score_override = v, .override_tokens = tok});
        // t0: [2, -1, 2, 3]; t1: the override's 0.25 each, boosted to [0.25, 0.25, 1, 0.25]; t2: [-0.5, -1, 2, 2].
        check_padded_row(r, 0, {3, 0, 2}, {3, 2, 2});
        check_padded_row(r, 1, {2}, {1});
        check_padded_row(r, 2, {2, 3}, {2, 2});
    }
    SECTION("the record is validated: fewer than k allowed experts is an error naming top_k") {
        std::vector<std::uint8_t> const mask = {0, 0, 0, 1};
        CHECK_THROWS_WITH(smoe::route(router, lv, {}, ws, smoe::RouterControl{.expert_mask = mask}),
                          Contains("'expert_mask' = 1 allowed experts") && Contains("top_k = 2"));
    }
}

TEST_CASE("race rejects a bad config, non-finite logits and any bias with a named error", "[router][race][errors]") {
    CHECK_THROWS_WITH(Race({.num_experts = 4, .top_k = 0}), Contains("'top_k' = 0") && Contains("1 <= top_k <= num_experts (4)"));
    CHECK_THROWS_WITH(Race({.num_experts = 4, .top_k = 5}), Contains("'top_k' = 5"));
    CHECK_THROWS_WITH(Race({.num_experts = 4, .top_k = 2, .race_group = -1}), Contains("'race_group' = -1"));
    CHECK_THROWS_WITH(Race({.num_experts = 0, .top_k = 1}), Contains("'num_experts' = 0"));
    CHECK_THROWS_WITH(smoe::router::parse_race_score("tanh"), Contains("'score_func' = tanh"));
    std::vector<float> bad = kRaceLogits;
    bad[6] = std::numeric_limits<float>::quiet_NaN();
    CHECK_THROWS_WITH(route_default({.num_experts = 4, .top_k = 2}, bad), Contains("logits"));
    CHECK_THROWS_WITH(route_default({.num_experts = 4, .top_k = 2}, kRaceLogits, {0, 0, 0, 0}),
                      Contains("'expert_bias'") && Contains("race takes no selection bias"));
}

TEST_CASE("MoELayer with race routing matches the oracle end to end", "[router][race][layer]") {
    using Model = smoe_test::LayerModel<Race>;
    using Layer = smoe_test::SwiGLULayer<Race>;
    std::mt19937_64 rng(7);
    for (auto const& [d, f, E, T, k, group] : std::vector<std::array<std::int64_t, 6>>{
             {16, 24, 8, 33, 2, 0}, {17, 9, 5, 12, 3, 4}, {8, 8, 4, 1, 2, 0}, {8, 8, 4, 0, 1, 0}}) {
        INFO("d " << d << ", f " << f << ", E " << E << ", T " << T << ", k " << k << ", group " << group);
        Model m = Model::random(rng, d, f, E);
        auto const x = smoe_test::normal(rng, static_cast<std::size_t>(T * d), 1.0);
        std::vector<float> y(static_cast<std::size_t>(T * d));
        RaceConfig const rc{.num_experts = E, .top_k = k, .race_group = group};
        Layer layer({.router = rc, .expert = m.expert_cfg(), .max_tokens = std::max<std::int64_t>(T, 1)}, m.weights());
        auto const r = layer.forward(MatrixView<float const>(x.data(), T, d), MatrixView<float>(y.data(), T, d));
        auto const want = oracle(rc, smoe_test::gate_logits(m, x, T));
        check_matches_oracle(r, want.view());
        smoe_test::check_close(y, smoe::reference::combine_swiglu(want.view(), m.experts(), MatrixView<float const>(x.data(), T, d)), T,
                               d, 2e-5);
    }
}

TEST_CASE("a race layer sizes its per-row buffers for k rows per token and rejects routing past the budget",
          "[router][race][layer][errors]") {
    using Model = smoe_test::LayerModel<Race>;
    using Layer = smoe_test::SwiGLULayer<Race>;
    std::mt19937_64 rng(9);
    std::int64_t const d = 16, f = 24, E = 8, T = 32;
    Model const m = Model::random(rng, d, f, E);
    auto make = [&](std::int64_t k) { return Layer({.router = {.num_experts = E, .top_k = k}, .expert = m.expert_cfg(), .max_tokens = T}, m.weights()); };
    // Each of the (E - 1) · T more rows holds d outputs and a hidden row of at least f floats; a layer
    // sized by max_slots() = E would need the same bytes for any k.
    CHECK(make(E).workspace_size() - make(1).workspace_size() >= static_cast<std::size_t>((E - 1) * T * (d + f)) * sizeof(float));
    Layer layer = make(2);
    auto const x = smoe_test::normal(rng, static_cast<std::size_t>(T * d), 1.0);
    std::vector<float> y(x.size());
    std::vector<std::int32_t> ids(static_cast<std::size_t>(T * 3), -1);
    std::vector<float> w(ids.size(), 0.5f);
    for (std::int64_t t = 0; t < T; ++t)  // 2 experts per token, and a third for token 5: 2T + 1 > k · T
        for (std::int64_t j = 0; j < (t == 5 ? 3 : 2); ++j) ids[static_cast<std::size_t>(3 * t + j)] = static_cast<std::int32_t>((t + j) % E);
    auto run = [&] {
        layer.forward_routed(MatrixView<float const>(x.data(), T, d), MatrixView<std::int32_t const>(ids.data(), T, 3),
                             MatrixView<float const>(w.data(), T, 3), MatrixView<float>(y.data(), T, d));
    };
    CHECK_THROWS_WITH(run(), Contains("'expert_ids' = 65 routed slots") && Contains("budget of 64 for 32 tokens"));
    ids[3 * 6] = ids[3 * 6 + 1] = -1;  // 3 experts on token 5, none on token 6: within the budget, any spread runs
    CHECK_NOTHROW(run());
}

// ---------------------------------------------------------------------------------------------------------
// balance::LeastLoaded (LLEP)

namespace {

smoe::balance::LlepPlanner planner_for(std::vector<std::int64_t> const& c, LeastLoadedConfig cfg) {
    cfg.num_experts = static_cast<std::int64_t>(c.size());
    cfg.validate();
    smoe::balance::LlepPlanner p(cfg);
    p.run(c);
    return p;
}

std::vector<LlepItem> items_of(smoe::balance::LlepPlanner const& p) { return {p.items().begin(), p.items().end()}; }

}  // namespace

TEST_CASE("llep reproduces research.md's worked example B and balance.md section 5's plan", "[balance][llep][spec]") {
    std::vector<std::int64_t> const c = {40, 4, 4, 4, 30, 2, 2, 2};
    SECTION("the code's defaults: alpha 1.1, m 1024") {
        auto const p = planner_for(c, {.num_workers = 4});
        std::vector<LlepItem> const want = {{0, 0, 0, 20}, {0, 3, 20, 40}, {4, 2, 0, 22}, {4, 1, 22, 30}, {1, 0, 0, 4},
                                            {2, 1, 0, 4},  {3, 1, 0, 4},   {5, 2, 0, 2},  {6, 3, 0, 2},  {7, 3, 0, 2}};
        CHECK(items_of(p) == want);
        CHECK(p.stats().native_load == std::vector<std::int64_t>{44, 8, 32, 4});
        CHECK(p.stats().planned_load == std::vector<std::int64_t>{24, 16, 24, 24});
        CHECK(p.stats().native_ratio == Approx(2.0));
        CHECK(p.stats().planned_ratio == Approx(24.0 / 22.0));
        CHECK(p.stats().spilled_rows == 28);
        CHECK(p.stats().weight_copies == 2);
        CHECK(p.stats().plan_ran);
    }
    SECTION("alpha 1, m 1: expert 0 in three chunks, loads [22, 22, 22, 22]") {
        auto const p = planner_for(c, {.num_workers = 4, .max_tokens_factor = 1.0, .min_tokens_per_gemm = 1});
        auto const items = items_of(p);
        REQUIRE(items.size() >= 5);
        CHECK(std::vector<LlepItem>(items.begin(), items.begin() + 5) ==
              std::vector<LlepItem>{{0, 0, 0, 18}, {0, 3, 18, 36}, {0, 1, 36, 40}, {4, 2, 0, 20}, {4, 1, 20, 30}});
        CHECK(p.stats().planned_load == std::vector<std::int64_t>{22, 22, 22, 22});
        CHECK(p.stats().weight_copies == 3);
    }
    SECTION("the adaptive gate: ratio 2 below lambda keeps every row native") {
        auto const p = planner_for(c, {.num_workers = 4, .adaptive_ratio = 2.5});
        CHECK_FALSE(p.stats().plan_ran);
        CHECK(p.stats().planned_load == p.stats().native_load);
        CHECK(p.stats().spilled_rows == 0);
        CHECK(planner_for(c, {.num_workers = 4, .adaptive_ratio = 2.0}).stats().plan_ran);
    }
    SECTION("W = 1 is the identity; W > E helpers hold no expert") {
        auto const one = planner_for(c, {.num_workers = 1, .max_tokens_factor = 0.5, .min_tokens_per_gemm = 1});
        CHECK(one.stats().spilled_rows == 0);
        CHECK(one.stats().planned_load == std::vector<std::int64_t>{88});
        auto const wide = planner_for({10, 0}, {.num_workers = 4, .max_tokens_factor = 1.0, .min_tokens_per_gemm = 1});
        // contiguous(2, 4): experts on workers 1 and 3; cap 2, so expert 0 spreads over all four, and the
        // last 2 rows, with every worker at cap, go past cap to the least loaded helper (0, the lowest id).
        CHECK(wide.stats().planned_load == std::vector<std::int64_t>{4, 2, 2, 2});
    }
}

TEST_CASE("llep on worked example A: the plan, its statistics and an output bit-identical to None", "[balance][llep][spec][layer]") {
    // Softmax top-2 renormalised on the example's logits, through smoe::route with the balancer.
    std::vector<float> const logits = {2, 1, -1, 0, 1, 1.5f, 0, -1, 1, -0.5f, 0.5f, -2};
    smoe::router::TopK const router({.num_experts = 4, .top_k = 2, .norm_topk_prob = true});
    LeastLoaded llep({.num_experts = 4, .num_workers = 2, .max_tokens_factor = 1.0, .min_tokens_per_gemm = 1});
    std::vector<std::byte> ws(smoe::routing_workspace_size(router, llep, 3));
    auto const r = smoe::route(router, llep, MatrixView<float const>(logits.data(), 3, 4), {}, ws);
    check_padded_row(r, 0, {0, 1}, {0.731059, 0.268941});
    check_padded_row(r, 1, {1, 0}, {0.622459, 0.377541});
    check_padded_row(r, 2, {0, 2}, {0.622459, 0.377541});
    CHECK(std::vector<LlepItem>(llep.plan_items().begin(), llep.plan_items().end()) ==
          std::vector<LlepItem>{{0, 0, 0, 1}, {0, 1, 1, 3}, {1, 0, 0, 2}, {2, 1, 0, 1}});
    auto const& s = llep.llep_stats();
    CHECK(s.native_load == std::vector<std::int64_t>{5, 1});
    CHECK(s.planned_load == std::vector<std::int64_t>{3, 3});
    CHECK(s.native_ratio == Approx(1.66667).epsilon(1e-5));
    CHECK(s.planned_ratio == Approx(1.0));
    CHECK(s.spilled_rows == 2);
    CHECK(s.weight_copies == 1);
    CHECK(llep.stats().kept == std::vector<std::int64_t>{3, 2, 1, 0});
    SECTION("the code's defaults give the same plan (the spilled chunk finishes expert 0)") {
        auto const p = planner_for({3, 2, 1, 0}, {.num_workers = 2});
        CHECK(items_of(p) == std::vector<LlepItem>{{0, 0, 0, 1}, {0, 1, 1, 3}, {1, 0, 0, 2}, {2, 1, 0, 1}});
    }

    // Formula experts e = 0..3 (d 3, f 2) on x0, x1, x2: the spec's y, for None and for LLEP at W = 1, 2, 4.
    smoe_test::FormulaExperts const fx = smoe_test::formula_experts(4, 3, 2);
    std::vector<float> const gate(12, 0.0f);
    std::vector<double> const want = {0.00985237, -0.0287586, -0.0348869, -0.0859693, 0.0297334,
                                      0.0476003,  0.0505306,  -0.0196557, -0.0898419};
    auto run = [&](auto& layer) {
        std::vector<float> y(9);
        layer.forward_routed(MatrixView<float const>(smoe_test::kFormulaX.data(), 3, 3), r.expert_ids, r.expert_weights, MatrixView<float>(y.data(), 3, 3));
        return y;
    };
    smoe::MoELayer<smoe::router::TopK, smoe::expert::SwiGLU<float>, smoe::balance::None> plain(
        {.router = {.num_experts = 4, .top_k = 2}, .expert = fx.cfg(), .max_tokens = 3}, {MatrixView<float const>(gate.data(), 4, 3), {}, fx.weights()});
    auto const y_none = run(plain);
    for (std::size_t i = 0; i < 9; ++i) CHECK(y_none[i] == Approx(want[i]).epsilon(1e-5));
    for (std::int64_t W : {1, 2, 4}) {
        smoe::MoELayer<smoe::router::TopK, smoe::expert::SwiGLU<float>, LeastLoaded> balanced(
            {.router = {.num_experts = 4, .top_k = 2}, .expert = fx.cfg(), .balance = {.num_experts = 4, .num_workers = W}, .max_tokens = 3},
            {MatrixView<float const>(gate.data(), 4, 3), {}, fx.weights()});
        INFO("W " << W);
        CHECK(run(balanced) == y_none);
    }
}

TEST_CASE("llep plans cover every row exactly once and match None on random layers", "[balance][llep][random]") {
    std::mt19937_64 rng(11);
    for (int trial = 0; trial < 200; ++trial) {
        std::int64_t const E = 1 + static_cast<std::int64_t>(rng() % 40), W = 1 + static_cast<std::int64_t>(rng() % 9);
        std::vector<std::int64_t> c(static_cast<std::size_t>(E));
        for (auto& v : c) v = rng() % 3 == 0 ? 0 : static_cast<std::int64_t>(rng() % (trial % 2 ? 3000 : 40));
        LeastLoadedConfig cfg{.num_workers = W,
                              .max_tokens_factor = std::vector<double>{0.5, 1.0, 1.1, 1.5}[rng() % 4],
                              .min_tokens_per_gemm = std::vector<std::int64_t>{1, 16, 1024}[rng() % 3]};
        auto const p = planner_for(c, cfg);
        INFO("trial " << trial << ": E " << E << ", W " << W);
        std::vector<std::int64_t> covered(static_cast<std::size_t>(E), 0), load(static_cast<std::size_t>(W), 0);
        for (auto const& it : p.items()) {
            REQUIRE(it.row_begin < it.row_end);
            CHECK(it.row_begin == covered[static_cast<std::size_t>(it.expert)]);  // chunks in row order, no gap
            covered[static_cast<std::size_t>(it.expert)] = it.row_end;
            load[static_cast<std::size_t>(it.worker)] += it.row_end - it.row_begin;
        }
        CHECK(covered == c);
        CHECK(load == p.stats().planned_load);
        CHECK(p.items().size() <= smoe::balance::LlepPlanner::max_items(E, W));
    }
    // Through a layer on 2 threads: the same bits as None.
    using Model = smoe_test::LayerModel<smoe::router::TopK>;
    Model m = Model::random(rng, 24, 40, 8);
    std::int64_t const T = 70;
    auto const x = smoe_test::normal(rng, static_cast<std::size_t>(T * 24), 1.0);
    smoe::DefaultThreadPool pool(2);
    std::vector<float> y0(static_cast<std::size_t>(T * 24)), y1(y0.size());
    smoe::MoELayer<smoe::router::TopK, smoe::expert::SwiGLU<float>, smoe::balance::None> a(
        {.router = {.num_experts = 8, .top_k = 2}, .expert = m.expert_cfg(), .max_tokens = T}, m.weights());
    smoe::MoELayer<smoe::router::TopK, smoe::expert::SwiGLU<float>, LeastLoaded> b(
        {.router = {.num_experts = 8, .top_k = 2}, .expert = m.expert_cfg(), .balance = {.num_experts = 8, .num_workers = 3, .min_tokens_per_gemm = 1},
         .max_tokens = T},
        m.weights());
    b.set_thread_pool(pool);
    a.forward(MatrixView<float const>(x.data(), T, 24), MatrixView<float>(y0.data(), T, 24));
    b.forward(MatrixView<float const>(x.data(), T, 24), MatrixView<float>(y1.data(), T, 24));
    CHECK(y0 == y1);
    CHECK(a.stats().kept == b.stats().kept);
    std::int64_t rows = 0;
    for (auto const& it : b.balancer().plan_items()) rows += it.row_end - it.row_begin;
    CHECK(rows == T * 2);
}

namespace {

// One new thread per item: each planned worker's task on a thread of its own, so the test can see
// which tasks shared a thread (DefaultThreadPool lets any thread claim any task).
struct ThreadPerItemPool {
    std::int64_t threads;
    std::int64_t num_threads() const { return threads; }
    void parallel_for(std::int64_t n, smoe::TaskRef fn) const {
        std::vector<std::thread> ts;
        for (std::int64_t i = 0; i < n; ++i) ts.emplace_back([fn, i] { fn(i); });
        for (auto& t : ts) t.join();
    }
};

// An expert without the two phases (one run() per call, like a user's own expert type): SwiGLU<float>'s
// run only, so MoELayer takes its single-call path.
struct SingleCall {
    static constexpr bool is_compute_free = false;
    struct Config {};
    struct Weights {
        smoe::expert::SwiGLU<float> const* inner = nullptr;
    };
    SingleCall(Config const&, Weights const& w) : x(w.inner) {}
    std::int64_t num_experts() const { return x->num_experts(); }
    std::int64_t hidden_size() const { return x->hidden_size(); }
    std::size_t workspace_size(std::int64_t max_rows) const { return x->workspace_size(max_rows); }
    template <class Arch>
    void run(Arch arch, std::int64_t e, MatrixView<float const> in, std::span<float const> w, MatrixView<float> out,
             smoe::Workspace& ws) const {
        x->run(arch, e, in, w, out, ws);
    }
    smoe::expert::SwiGLU<float> const* x;
};
static_assert(!smoe::detail::PhasedExpert<SingleCall, xsimd::default_arch>);

}  // namespace

TEST_CASE("llep's plan decides which task computes which rows, with the bits of None", "[balance][llep][layer][threads]") {
    std::mt19937_64 rng(5);
    std::int64_t const d = 24, E = 6, T = 41;
    using Model = smoe_test::LayerModel<smoe::router::TopK>;
    Model const m = Model::random(rng, d, 40, E);
    auto const x = smoe_test::normal(rng, static_cast<std::size_t>(T * d), 1.0);
    // Skewed routing: every token on expert 0, and one of the others; weights of both slots random.
    std::vector<std::int32_t> ids(static_cast<std::size_t>(2 * T));
    std::vector<float> w(ids.size());
    for (std::int64_t t = 0; t < T; ++t) {
        ids[static_cast<std::size_t>(2 * t)] = static_cast<std::int32_t>(t % 3 == 0 ? 0 : 1 + t % (E - 1));
        ids[static_cast<std::size_t>(2 * t + 1)] = static_cast<std::int32_t>(t % 3 == 0 ? 1 + t % (E - 1) : 0);
        w[static_cast<std::size_t>(2 * t)] = 0.25f + 0.5f * static_cast<float>(rng() % 1000) / 1000.0f;
        w[static_cast<std::size_t>(2 * t + 1)] = 1.0f - w[static_cast<std::size_t>(2 * t)];
    }
    MatrixView<std::int32_t const> const idv(ids.data(), T, 2);
    MatrixView<float const> const wv(w.data(), T, 2), xv(x.data(), T, d);
    smoe::MoELayer<smoe::router::TopK, smoe::expert::SwiGLU<float>, smoe::balance::None> plain(
        {.router = {.num_experts = E, .top_k = 2}, .expert = m.expert_cfg(), .max_tokens = T}, m.weights());
    std::vector<float> y_none(static_cast<std::size_t>(T * d));
    plain.forward_routed(xv, idv, wv, MatrixView<float>(y_none.data(), T, d));
    auto check_runs = [](LeastLoaded const& bal) {
        auto const items = bal.plan_items();
        auto const runs = bal.executed();
        REQUIRE(runs.size() == items.size());
        for (std::size_t i = 0; i < items.size(); ++i) {
            INFO("item " << i << ": expert " << items[i].expert << ", worker " << items[i].worker);
            CHECK(runs[i].worker == items[i].worker);
            for (std::size_t j = 0; j < i; ++j)  // a task runs on one thread
                if (items[j].worker == items[i].worker) CHECK(runs[j].thread == runs[i].thread);
        }
    };
    // Two-phase experts (SwiGLU: both phases per item) and an expert with run() only (one call per item).
    smoe::expert::SwiGLU<float> const inner(m.expert_cfg(), m.experts());
    auto check_layer = [&](auto& layer, std::int64_t threads) {
        smoe::DefaultThreadPool pool(threads);
        layer.set_thread_pool(pool);
        std::vector<float> y(y_none.size());
        layer.forward_routed(xv, idv, wv, MatrixView<float>(y.data(), T, d));
        CHECK(y == y_none);
        check_runs(layer.balancer());
        if (threads > 1) {  // expert 0 is split, and the plan evens the tasks
            CHECK(layer.balancer().llep_stats().spilled_rows > 0);
            CHECK(layer.balancer().llep_stats().planned_ratio < layer.balancer().llep_stats().native_ratio);
        }

        ThreadPerItemPool own{threads};
        layer.set_thread_pool(own);
        std::fill(y.begin(), y.end(), 0.0f);
        layer.forward_routed(xv, idv, wv, MatrixView<float>(y.data(), T, d));
        CHECK(y == y_none);
        check_runs(layer.balancer());
        auto const items = layer.balancer().plan_items();
        auto const runs = layer.balancer().executed();
        for (std::size_t i = 0; i < items.size(); ++i)
            for (std::size_t j = 0; j < i; ++j)
                if (items[j].worker != items[i].worker) CHECK(runs[j].thread != runs[i].thread);
    };
    for (std::int64_t threads : {1, 2, 3}) {
        INFO(threads << " threads");
        LeastLoadedConfig const bc{.num_experts = E, .num_workers = threads, .max_tokens_factor = 1.0, .min_tokens_per_gemm = 1};
        smoe::MoELayer<smoe::router::TopK, smoe::expert::SwiGLU<float>, LeastLoaded> phased(
            {.router = {.num_experts = E, .top_k = 2}, .expert = m.expert_cfg(), .balance = bc, .max_tokens = T}, m.weights());
        check_layer(phased, threads);
        INFO("single-call expert");
        smoe::MoELayer<smoe::router::TopK, SingleCall, LeastLoaded> single(
            {.router = {.num_experts = E, .top_k = 2}, .balance = bc, .max_tokens = T},
            {.gate = MatrixView<float const>(m.gate.data(), E, d), .experts = {&inner}});
        check_layer(single, threads);
    }
}

TEST_CASE("llep's largest plans fit the items reserved at construction: run() does not allocate", "[balance][llep][edge]") {
    // Found by exhaustive search over loads 0..12 (E <= 5, W <= 4): W = 2 reaches 2E + 1 items, one more
    // than the E W that was once reserved, and E = 1 reaches W + 1 (three chunks of expert 0 at cap 1).
    struct Worst {
        std::vector<std::int64_t> c;
        std::int64_t W;
        double alpha;
        std::size_t items;
    };
    for (auto const& w : {Worst{{3, 2, 5, 3, 2}, 2, 1.0, 11}, Worst{{3}, 2, 0.5, 3}, Worst{{2, 10, 4}, 4, 0.8, 8}}) {
        auto const E = static_cast<std::int64_t>(w.c.size());
        INFO("E " << E << ", W " << w.W);
        LeastLoadedConfig cfg{.num_experts = E, .num_workers = w.W, .max_tokens_factor = w.alpha, .min_tokens_per_gemm = 1};
        smoe::balance::LlepPlanner p(cfg);
        auto const* const before = p.items().data();
        auto const reserved = smoe::balance::LlepPlanner::max_items(E, w.W);
        p.run(w.c);
        CHECK(p.items().size() == w.items);
        CHECK(p.items().size() <= reserved);
        CHECK(p.items().data() == before);  // no reallocation
        LeastLoaded bal(cfg);  // and the balancer's per-item record, sized by the same bound
        auto const* const runs = bal.executed().data();
        bal.replan(w.c);
        CHECK(bal.executed().size() == w.items);
        CHECK(bal.executed().data() == runs);
    }
    CHECK(smoe::balance::LlepPlanner::max_items(5, 2) == 12);   // 2E + W
    CHECK(smoe::balance::LlepPlanner::max_items(1, 2) == 3);    // E (W + 1)
    CHECK(smoe::balance::LlepPlanner::max_items(std::int64_t(1) << 20, 4096) == (std::size_t(1) << 21) + 4096);
}

TEST_CASE("llep statistics are all 0 for T = 0", "[balance][llep][edge]") {
    auto const p = planner_for({0, 0, 0}, {.num_workers = 2});
    CHECK(p.items().empty());
    CHECK(p.stats().native_load == std::vector<std::int64_t>{0, 0});
    CHECK(p.stats().planned_load == std::vector<std::int64_t>{0, 0});
    CHECK(p.stats().native_ratio == 0.0);
    CHECK(p.stats().planned_ratio == 0.0);
    CHECK_FALSE(p.stats().plan_ran);
}

TEST_CASE("llep rejects a bad config with a named error", "[balance][llep][errors]") {
    auto make = [](LeastLoadedConfig c) { return LeastLoaded(c); };
    CHECK_THROWS_WITH(make({.num_experts = 4, .num_workers = 0}), Contains("'llep_num_workers' = 0"));
    CHECK_THROWS_WITH(make({.num_experts = 4, .num_workers = 2, .max_tokens_factor = 0.0}), Contains("'llep_max_tokens_factor' = 0"));
    CHECK_THROWS_WITH(make({.num_experts = 4, .num_workers = 2, .max_tokens_factor = std::numeric_limits<double>::infinity()}),
                      Contains("'llep_max_tokens_factor' = inf"));
    CHECK_THROWS_WITH(make({.num_experts = 4, .num_workers = 2, .min_tokens_per_gemm = 0}), Contains("'llep_min_tokens_per_gemm' = 0"));
    CHECK_THROWS_WITH(make({.num_experts = 4, .num_workers = 2, .adaptive_ratio = -1.0}), Contains("'llep_adaptive_ratio' = -1"));
    CHECK_THROWS_WITH(make({.num_experts = 4, .num_workers = 2, .placement = smoe::dist::ExpertPlacement::contiguous(5, 2)}),
                      Contains("'placement' = 5 experts on 2 workers") && Contains("num_experts = 4 on llep_num_workers = 2"));
    CHECK_THROWS_WITH(make({.num_experts = 4, .num_workers = 2, .placement = smoe::dist::ExpertPlacement::contiguous(4, 3)}),
                      Contains("'placement' = 4 experts on 3 workers"));
}
