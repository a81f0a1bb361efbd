// The scalar oracle against the worked examples of routing.md §1, §2, §5, §6 and experts.md §3.
// Every expected value is copied from the spec (or derived by hand from its tables), never from a run.

#include <cmath>
#include <cstdint>
#include <limits>
#include <string>
#include <vector>

#include <catch2/catch.hpp>

#include "common/approx.hpp"
#include "smoe/kernels/reference/reference.hpp"

namespace {

using smoe::MatrixView;
using smoe::RoutingData;
using smoe::router::ScoreFunc;
using smoe::router::TopKConfig;
using smoe_test::check_all_close;
using smoe_test::check_equal;

// routing.md §2 worked example: E = 6, T = 3, k = 2.
std::vector<float> const kLogits = {
    2.0f,  1.0f,  1.0f,  -1.0f, 0.5f,  -0.5f,  // t0: experts 1 and 2 tie
    -3.0f, -1.0f, -2.0f, -0.5f, -4.0f, -1.5f,  // t1: all negative (vLLM PR #37605)
    0.3f,  -0.2f, 1.7f,  0.9f,  1.2f,  -2.0f,  // t2
};
MatrixView<float const> example_logits() { return {kLogits.data(), 3, 6}; }

TopKConfig example_config() { return {.num_experts = 6, .top_k = 2}; }

// Each row's ids exactly and weights to the 1e-5 relative of routing.md §0.
void check_rows(RoutingData const& r, std::vector<std::int32_t> const& ids, std::vector<double> const& weights) {
    REQUIRE(r.num_tokens == 3);
    REQUIRE(r.k == 2);
    check_equal(r.expert_ids, ids);
    check_all_close(r.expert_weights, weights, 1e-5);
}

template <class F>
smoe::invalid_argument thrown_by(F&& f) {
    try {
        f();
    } catch (smoe::invalid_argument const& e) {
        return e;
    }
    FAIL("expected smoe::invalid_argument");
    throw;  // unreachable: FAIL throws
}

}  // namespace

TEST_CASE("reference top-k reproduces routing.md worked example (a)", "[reference][topk]") {
    auto cfg = example_config();
    cfg.norm_topk_prob = true;
    auto const r = smoe::reference::route_topk(cfg, example_logits());
    check_rows(r, {0, 1, 3, 1, 2, 4}, {0.731059, 0.268941, 0.622459, 0.377541, 0.622459, 0.377541});
}

TEST_CASE("reference top-k builds the CSR of routing.md worked example (a)", "[reference][topk][dispatch]") {
    auto cfg = example_config();
    cfg.norm_topk_prob = true;
    auto const r = smoe::reference::route_topk(cfg, example_logits());
    REQUIRE(r.num_experts == 6);
    check_equal(r.offsets, std::vector<std::int32_t>{0, 1, 3, 4, 5, 6, 6});
    check_equal(r.token_ids, std::vector<std::int32_t>{0, 0, 1, 2, 1, 2});
    check_all_close(r.weights, {0.731059, 0.268941, 0.377541, 0.622459, 0.622459, 0.377541}, 1e-5);
    // By hand from the token-major rows t0 [0, 1], t1 [3, 1], t2 [2, 4] (slot = t * 2 + j):
    // expert 0 <- slot 0; expert 1 <- slots 1, 3; expert 2 <- 4; expert 3 <- 2; expert 4 <- 5.
    check_equal(r.slots, std::vector<std::int32_t>{0, 1, 3, 4, 2, 5});
    // Both views hold bit-identical weights (§1).
    for (std::size_t i = 0; i < r.slots.size(); ++i) CHECK(r.weights[i] == r.expert_weights[r.slots[i]]);
}

TEST_CASE("reference top-k breaks the tie of t0 toward the lower expert id", "[reference][topk]") {
    // t0's logits for experts 1 and 2 are both 1.0: equal scores, so expert 1 wins.
    for (bool norm : {false, true}) {
        auto cfg = example_config();
        cfg.norm_topk_prob = norm;
        auto const r = smoe::reference::route_topk(cfg, example_logits());
        CHECK(r.expert_ids[0] == 0);
        CHECK(r.expert_ids[1] == 1);
    }
}

TEST_CASE("reference top-k reproduces routing.md worked example (b) without renormalisation", "[reference][topk]") {
    auto const r = smoe::reference::route_topk(example_config(), example_logits());
    check_rows(r, {0, 1, 3, 1, 2, 4}, {0.478295, 0.175955, 0.432934, 0.262588, 0.403755, 0.24489});
}

TEST_CASE("reference top-k with score_after_topk reproduces worked example (c) equal to (a)", "[reference][topk]") {
    auto c = example_config();
    c.score_after_topk = true;
    auto a = example_config();
    a.norm_topk_prob = true;
    auto const rc = smoe::reference::route_topk(c, example_logits());
    auto const ra = smoe::reference::route_topk(a, example_logits());
    check_rows(rc, {0, 1, 3, 1, 2, 4}, {0.731059, 0.268941, 0.622459, 0.377541, 0.622459, 0.377541});
    check_equal(rc.expert_ids, ra.expert_ids);
    std::vector<double> wa(ra.expert_weights.begin(), ra.expert_weights.end());
    check_all_close(rc.expert_weights, wa, 1e-6);  // "equal up to rounding" (§2 A), §0's weight tolerance
}

TEST_CASE("reference top-k reproduces worked example (d) with sigmoid, groups, bias and scaling", "[reference][topk]") {
    auto cfg = example_config();
    cfg.score_func = ScoreFunc::sigmoid;
    cfg.n_group = 3;
    cfg.topk_group = 2;
    cfg.norm_topk_prob = true;
    cfg.routed_scaling_factor = 2.5f;
    std::vector<float> const bias = {0.0f, 0.0f, 0.1f, -0.1f, 0.0f, 0.3f};
    auto const r = smoe::reference::route_topk(cfg, example_logits(), bias);
    check_rows(r, {0, 1, 3, 5, 2, 4}, {1.36612, 1.13388, 1.68555, 0.814449, 1.30964, 1.19036});

    // The spec's explanation: group 1 (experts 2, 3) loses for t0, so expert 2 (c = 0.831059, second
    // best overall) is not eligible; group 0 (experts 0, 1) loses for t1, excluding expert 1.
    for (int j = 0; j < 2; ++j) {
        CHECK(r.expert_ids[0 * 2 + j] != 2);
        CHECK(r.expert_ids[1 * 2 + j] != 1);
    }
    // Without groups the same selection scores c pick t0's [0, 2]: the group limit is what excluded 2.
    auto flat = cfg;
    flat.n_group = 1;
    flat.topk_group = 0;
    auto const rf = smoe::reference::route_topk(flat, example_logits(), bias);
    CHECK(rf.expert_ids[0] == 0);
    CHECK(rf.expert_ids[1] == 2);
}

TEST_CASE("reference top-k reproduces worked example (e) with group-limited softmax and scale 16", "[reference][topk]") {
    auto cfg = example_config();
    cfg.n_group = 3;
    cfg.topk_group = 1;
    cfg.routed_scaling_factor = 16.0f;
    auto const r = smoe::reference::route_topk(cfg, example_logits());
    check_rows(r, {0, 1, 3, 2, 2, 3}, {7.65272, 2.81528, 6.92694, 1.54561, 6.46008, 2.9027});
}

TEST_CASE("reference top-k breaks group ties toward the lower group id", "[reference][topk]") {
    // Four equal logits in two groups of two: both groups score the same, group 0 is kept, and
    // inside it experts 0 and 1 tie and come in id order with equal weights.
    std::vector<float> const logits(4, 0.25f);
    TopKConfig const cfg{.num_experts = 4, .top_k = 2, .n_group = 2, .topk_group = 1};
    auto const r = smoe::reference::route_topk(cfg, {logits.data(), 1, 4});
    check_equal(r.expert_ids, std::vector<std::int32_t>{0, 1});
    CHECK(r.expert_weights[0] == r.expert_weights[1]);
    CHECK(r.expert_weights[0] == Approx(0.25).epsilon(1e-6));
}

TEST_CASE("reference top-k with k equal to E selects every expert ordered by weight", "[reference][topk]") {
    TopKConfig const cfg{.num_experts = 6, .top_k = 6};
    auto const r = smoe::reference::route_topk(cfg, example_logits());
    // The softmax column of the worked example, sorted by value (ties by id).
    check_equal(r.expert_ids, std::vector<std::int32_t>{0, 1, 2, 4, 5, 3,  //
                                                        3, 1, 5, 2, 0, 4,  //
                                                        2, 4, 3, 0, 1, 5});
    check_all_close(r.expert_weights,
                    {0.478295, 0.175955, 0.175955, 0.106722, 0.0392608, 0.0238129,    //
                     0.432934, 0.262588, 0.159267, 0.0966006, 0.0355374, 0.0130735,   //
                     0.403755, 0.24489, 0.181419, 0.0995648, 0.0603891, 0.00998225},  //
                    1e-5);
    CHECK(r.view().nnz() == 18);
}

TEST_CASE("reference top-k with k of 1 gives the exact weights routing.md promises", "[reference][topk]") {
    // Renormalising one weight gives 1 (norm_eps 1e-20 vanishes in fp32); top-k-then-softmax with
    // k = 1 gives exactly the scaling factor (§2 A).
    TopKConfig const norm{.num_experts = 6, .top_k = 1, .norm_topk_prob = true};
    auto const rn = smoe::reference::route_topk(norm, example_logits());
    check_equal(rn.expert_ids, std::vector<std::int32_t>{0, 3, 2});
    check_equal(rn.expert_weights, std::vector<float>{1.0f, 1.0f, 1.0f});

    auto after = TopKConfig::megatron(6, 1);
    after.routed_scaling_factor = 2.5f;
    auto const ra = smoe::reference::route_topk(after, example_logits());
    check_equal(ra.expert_ids, std::vector<std::int32_t>{0, 3, 2});
    check_equal(ra.expert_weights, std::vector<float>{2.5f, 2.5f, 2.5f});
}

TEST_CASE("reference top-k accepts zero tokens", "[reference][topk][edge]") {
    auto const r = smoe::reference::route_topk(example_config(), MatrixView<float const>{nullptr, 0, 6});
    CHECK(r.num_tokens == 0);
    CHECK(r.k == 2);
    CHECK(r.view().nnz() == 0);
    check_equal(r.offsets, std::vector<std::int32_t>(7, 0));
    CHECK(r.token_ids.empty());
    CHECK(r.expert_ids.empty());
    CHECK(r.view().expert_ids.rows == 0);
    CHECK(r.view().expert_ids.cols == 2);
}

TEST_CASE("reference top-k rejects k greater than E naming top_k", "[reference][topk][edge]") {
    TopKConfig const cfg{.num_experts = 6, .top_k = 7};
    auto const e = thrown_by([&] { smoe::reference::route_topk(cfg, example_logits()); });
    CHECK(e.argument() == "top_k");
    CHECK_THAT(e.what(), Catch::Contains("top_k"));
}

TEST_CASE("reference top-k rejects a NaN logit naming the first offending token and expert", "[reference][topk][edge]") {
    auto logits = kLogits;
    float const nan = std::numeric_limits<float>::quiet_NaN();
    float const inf = std::numeric_limits<float>::infinity();
    logits[1 * 6 + 2] = nan;
    logits[1 * 6 + 4] = inf;  // later in the same token
    logits[2 * 6 + 0] = nan;  // later token
    auto const e = thrown_by([&] { smoe::reference::route_topk(example_config(), {logits.data(), 3, 6}); });
    CHECK(e.argument() == "logits");
    CHECK_THAT(e.what(), Catch::Contains("logits") && Catch::Contains("token 1, expert 2") && Catch::Contains("nan"));
}

TEST_CASE("reference top-k rejects an infinite logit naming the token and expert", "[reference][topk][edge]") {
    float const inf = std::numeric_limits<float>::infinity();
    for (float bad : {inf, -inf}) {
        auto logits = kLogits;
        logits[0 * 6 + 5] = bad;
        auto const e = thrown_by([&] { smoe::reference::route_topk(example_config(), {logits.data(), 3, 6}); });
        CHECK(e.argument() == "logits");
        CHECK_THAT(e.what(), Catch::Contains("token 0, expert 5") && Catch::Contains("inf"));
    }
}

TEST_CASE("reference top-k rejects a malformed expert bias", "[reference][topk][edge]") {
    auto const cfg = example_config();
    SECTION("a bias of the wrong length") {
        std::vector<float> const bias(5, 0.0f);
        auto const e = thrown_by([&] { smoe::reference::route_topk(cfg, example_logits(), bias); });
        CHECK(e.argument() == "expert_bias");
    }
    SECTION("a non-finite bias entry") {
        std::vector<float> bias(6, 0.0f);
        bias[3] = std::numeric_limits<float>::quiet_NaN();
        auto const e = thrown_by([&] { smoe::reference::route_topk(cfg, example_logits(), bias); });
        CHECK(e.argument() == "expert_bias");
        CHECK_THAT(e.what(), Catch::Contains("expert 3"));
    }
    SECTION("a bias with groups of one expert") {
        auto grouped = cfg;
        grouped.n_group = 6;
        std::vector<float> const bias(6, 0.0f);
        auto const e = thrown_by([&] { smoe::reference::route_topk(grouped, example_logits(), bias); });
        CHECK(e.argument() == "n_group");
    }
}

TEST_CASE("reference top-k with the deepseek_v3 preset requires an expert bias", "[reference][topk][edge]") {
    auto const cfg = TopKConfig::deepseek_v3();
    std::vector<float> const logits(256, 0.0f);
    auto const e = thrown_by([&] { smoe::reference::route_topk(cfg, {logits.data(), 1, 256}); });
    CHECK(e.argument() == "expert_bias");
}

TEST_CASE("reference top-k rejects E not divisible by n_group", "[reference][topk][edge]") {
    auto cfg = example_config();
    cfg.n_group = 4;
    auto const e = thrown_by([&] { smoe::reference::route_topk(cfg, example_logits()); });
    CHECK(e.argument() == "n_group");
}

TEST_CASE("reference top-k rejects logits whose width is not E", "[reference][topk][edge]") {
    TopKConfig const cfg{.num_experts = 5, .top_k = 2};
    auto const e = thrown_by([&] { smoe::reference::route_topk(cfg, example_logits()); });
    CHECK(e.argument() == "logits");
}

TEST_CASE("reference dispatch keeps null experts out of the CSR as in routing.md section 5", "[reference][dispatch]") {
    // routing.md §5 worked example: E = 3 true experts, nulls 3 and 4, k = 2.
    auto const r = smoe::reference::from_token_major(3, 2, 3, {0, 1, 0, 3, 3, 4},
                                                     {0.731059f, 0.268941f, 1.0f, 0.468411f, 0.430949f, 0.430949f});
    check_equal(r.offsets, std::vector<std::int32_t>{0, 2, 3, 3});
    check_equal(r.token_ids, std::vector<std::int32_t>{0, 1, 0});
    check_all_close(r.weights, {0.731059, 1, 0.268941}, 1e-6);
    check_equal(r.slots, std::vector<std::int32_t>{0, 2, 1});
    check_equal(r.expert_ids, std::vector<std::int32_t>{0, 1, 0, 3, 3, 4});  // token-major view untouched
}

TEST_CASE("reference dispatch skips padding as in routing.md section 6", "[reference][dispatch]") {
    // routing.md §6 worked example: K = 3, t0 padded once, t1 empty.
    auto const r = smoe::reference::from_token_major(3, 3, 4, {0, 3, -1, -1, -1, -1, 2, 0, 1},
                                                     {1.5f, 0.25f, 0.0f, 0.0f, 0.0f, 0.0f, 2.0f, 0.5f, 0.5f});
    check_equal(r.offsets, std::vector<std::int32_t>{0, 2, 3, 4, 5});
    check_equal(r.token_ids, std::vector<std::int32_t>{0, 2, 2, 2, 0});
    check_all_close(r.weights, {1.5, 0.5, 0.5, 2, 0.25}, 0.0);
    check_equal(r.slots, std::vector<std::int32_t>{0, 7, 8, 6, 1});
}

TEST_CASE("reference dispatch rejects malformed token-major rows", "[reference][dispatch][edge]") {
    SECTION("the same expert twice in one row") {
        auto const e = thrown_by([] { smoe::reference::from_token_major(2, 2, 4, {0, 1, 2, 2}, {0.5f, 0.5f, 0.5f, 0.5f}); });
        CHECK(e.argument() == "expert_ids");
        CHECK_THAT(e.what(), Catch::Contains("token 1"));
    }
    SECTION("an id below -1") {
        auto const e = thrown_by([] { smoe::reference::from_token_major(1, 2, 4, {0, -2}, {0.5f, 0.5f}); });
        CHECK(e.argument() == "expert_ids");
    }
    SECTION("a length other than T times K") {
        auto const e = thrown_by([] { smoe::reference::from_token_major(2, 2, 4, {0, 1, 2}, {0.5f, 0.5f, 0.5f}); });
        CHECK(e.argument() == "expert_ids");
    }
    SECTION("padding may repeat") {
        CHECK_NOTHROW(smoe::reference::from_token_major(1, 3, 4, {1, -1, -1}, {1.0f, 0.0f, 0.0f}));
    }
}

namespace {

// experts.md §3 worked example: d = 4, f = 3, four experts of which 0 and 1 are given (2 and 3 are
// never selected and left zero).
struct SwiGLUExample {
    static constexpr std::int64_t d = 4, f = 3, E = 4;
    std::vector<float> w1 = std::vector<float>(E * f * d, 0.0f);
    std::vector<float> w3 = std::vector<float>(E * f * d, 0.0f);
    std::vector<float> w2 = std::vector<float>(E * d * f, 0.0f);
    std::vector<float> x = {1.0f, -2.0f, 0.5f, 3.0f};

    SwiGLUExample() {
        auto put = [](std::vector<float>& dst, std::int64_t at, std::vector<float> const& src) {
            for (std::size_t i = 0; i < src.size(); ++i) dst[at + i] = src[i];
        };
        put(w1, 0, {.5f, .25f, -1, 0, -.5f, 0, 1, .25f, 0, -.25f, .5f, .5f});
        put(w3, 0, {1, 0, .5f, -.25f, .25f, .5f, 0, .5f, -1, .25f, 0, .25f});
        put(w2, 0, {1, -.5f, .25f, 0, .5f, -1, .5f, .25f, 0, -.25f, 1, .5f});
        put(w1, f * d, {.25f, 0, .5f, .25f, 1, .5f, 0, -.5f, 0, 0, -.5f, 1});
        put(w3, f * d, {.5f, -.5f, 0, .25f, 0, .25f, 1, 0, .25f, 0, 0, .5f});
        put(w2, d * f, {.5f, 0, -.25f, .25f, 1, 0, 0, -.5f, .5f, 1, 0, .25f});
    }
    smoe::expert::SwiGLUWeights<float> weights() const {
        return smoe::expert::SwiGLUWeights<float>::dense(w1.data(), w3.data(), w2.data(),
                                                         {.hidden_size = d, .intermediate_size = f, .num_experts = E});
    }
};

std::vector<double> const kExampleY = {-0.42946792, 1.27548728, 0.88394640, 1.02966663};

}  // namespace

TEST_CASE("reference SwiGLU reproduces each line of experts.md worked example", "[reference][swiglu]") {
    SwiGLUExample const ex;
    auto const t0 = smoe::reference::swiglu_expert_trace(ex.weights(), 0, ex.x.data());
    check_all_close(t0.g, {-0.5, 0.75, 2.25}, 0.0);  // exact in binary
    check_all_close(t0.u, {0.5, 0.75, -0.75}, 0.0);
    check_all_close(t0.a, {-0.18877033, 0.50938402, 2.03546370}, 1e-7);
    check_all_close(t0.h, {-0.09438517, 0.38203802, -1.52659778}, 1e-7);
    check_all_close(t0.out, {-0.66705362, 1.71761679, 0.04831692, -0.35766458}, 1e-7);

    auto const t1 = smoe::reference::swiglu_expert_trace(ex.weights(), 1, ex.x.data());
    check_all_close(t1.g, {1.25, -1.5, 2.75}, 0.0);
    check_all_close(t1.u, {2.25, 0, 1.75}, 0.0);
    check_all_close(t1.a, {0.97162483, -0.27363829, 2.58476171}, 1e-7);
    check_all_close(t1.h, {2.18615586, -0.0, 4.52333300}, 1e-7);
    CHECK(std::signbit(t1.h[1]));  // silu(-1.5) * 0 is -0, as the spec prints it
    check_all_close(t1.out, {-0.03775532, 0.54653896, 2.26166650, 3.31698911}, 1e-7);

    CHECK(smoe::reference::swiglu_expert(ex.weights(), 1, ex.x.data()) == t1.out);
}

TEST_CASE("reference MoE combines experts.md worked example in fp64", "[reference][moe]") {
    SwiGLUExample const ex;
    std::vector<float> const logits = {1.0f, 0.5f, -0.5f, 0.0f};
    auto cfg = TopKConfig::mixtral();
    cfg.num_experts = 4;
    auto const r = smoe::reference::route_topk(cfg, {logits.data(), 1, 4});
    check_equal(r.expert_ids, std::vector<std::int32_t>{0, 1});
    check_all_close(r.expert_weights, {0.62245933, 0.37754067}, 1e-7);

    auto const y = smoe::reference::combine_swiglu(r.view(), ex.weights(), {ex.x.data(), 1, 4});
    check_all_close(y, kExampleY, 1e-7);
}

TEST_CASE("reference MoE forward runs gate, routing and combine end to end", "[reference][moe]") {
    SwiGLUExample const ex;
    // Rows of the gate pick out x[0] = 1 scaled so that the logits are exactly [1, 0.5, -0.5, 0].
    std::vector<float> const gate = {1, 0, 0, 0, .5f, 0, 0, 0, -.5f, 0, 0, 0, 0, 0, 0, 0};
    auto const logits = smoe::reference::router_logits({gate.data(), 4, 4}, {ex.x.data(), 1, 4});
    check_all_close(logits, {1.0, 0.5, -0.5, 0.0}, 0.0);

    auto cfg = TopKConfig::mixtral();
    cfg.num_experts = 4;
    auto const y = smoe::reference::moe_forward_topk(cfg, {gate.data(), 4, 4}, ex.weights(), {ex.x.data(), 1, 4});
    check_all_close(y, kExampleY, 1e-7);
}

TEST_CASE("reference MoE gives zero output to a token whose slots are all padding or null", "[reference][moe]") {
    SwiGLUExample const ex;
    std::vector<float> const x2 = {1.0f, -2.0f, 0.5f, 3.0f, 1.0f, -2.0f, 0.5f, 3.0f};
    // t0 uses only a null expert (id 4 >= E) and padding; t1 uses expert 0 with weight 1.
    auto const r = smoe::reference::from_token_major(2, 2, 4, {4, -1, 0, -1}, {0.5f, 0.0f, 1.0f, 0.0f});
    auto const y = smoe::reference::combine_swiglu(r.view(), ex.weights(), {x2.data(), 2, 4});
    check_all_close(y, {0, 0, 0, 0, -0.66705362, 1.71761679, 0.04831692, -0.35766458}, 1e-7);
}
