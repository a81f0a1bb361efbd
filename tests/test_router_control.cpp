// Test-time router control (research.md §8): the worked example, a float64 oracle on random shapes,
// the record's errors, and that a neutral or empty record changes no bit. Also the router options of
// the Hugging Face families (families.md §2): TopK's group_score, norm_p, sqrtsoftplus and identity
// nulls against the same oracle, and router::SparseMixer (PhiMoE).

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include <catch2/catch.hpp>

#include "common/data.hpp"
#include "common/routing_checks.hpp"
#include "common/routing_checks.hpp"
#include "smoe/route.hpp"
#include "smoe/router/expert_choice.hpp"
#include "smoe/router/hash.hpp"
#include "smoe/router/null_expert.hpp"
#include "smoe/router/rankwise_lora.hpp"
#include "smoe/router/relu.hpp"
#include "smoe/router/sinkhorn.hpp"
#include "smoe/router/sparsemixer.hpp"
#include "smoe/router/top_p.hpp"
#include "smoe/router/topk.hpp"

using smoe::MatrixView;
using smoe::RouterControl;
using smoe::router::GroupScore;
using smoe::router::ScoreFunc;
using smoe::router::TopK;
using smoe::router::TopKConfig;
using smoe_test::check_row;
using smoe_test::check_views_agree;

namespace {

// routing.md §2's logits (E = 6, T = 3) and research.md §8's controls.
std::vector<float> const kLogits = {2.0f,  1.0f,  1.0f,  -1.0f, 0.5f,  -0.5f,  //
                                    -3.0f, -1.0f, -2.0f, -0.5f, -4.0f, -1.5f,  //
                                    0.3f,  -0.2f, 1.7f,  0.9f,  1.2f,  -2.0f};
std::vector<float> const kOffset = {0, 0, 0, 0, 1.5f, 0}, kBoost = {1, 1, 1, 1, 1, 3};
std::vector<std::uint8_t> const kMask = {0, 1, 1, 1, 1, 1};
std::vector<float> const kOverride = {0.1f, 0.1f, 0.1f, 0.4f, 0.2f, 0.1f};
std::vector<std::int32_t> const kOverrideTokens = {2};

struct Controlled {
    std::vector<std::byte> ws;
    smoe::RoutingResult r;
};

template <class Router>
Controlled route_controlled(Router const& router, std::vector<float> const& logits, RouterControl const& c,
                            std::vector<float> const& bias = {}) {
    Controlled out;
    auto const L = router.num_logits();
    auto const T = static_cast<std::int64_t>(logits.size()) / L;
    out.ws.resize(smoe::routing_workspace_size(router, T));
    out.r = smoe::route(router, MatrixView<float const>(logits.data(), T, L), bias, out.ws, c);
    return out;
}

template <class F>
std::string error_argument(F&& f) {
    try {
        f();
    } catch (smoe::invalid_argument const& e) {
        return e.argument();
    }
    return "no error";
}

// The float64 oracle of routing.md §2 with research.md §8's steps (and TopK's general options): one
// token's ids and weights in row order. `margin` gets the smallest gap between the k-th and the next
// candidate (groups and experts), so callers skip tokens whose selection is a near tie.
struct OracleRow {
    std::vector<int> ids;
    std::vector<double> w;
    double margin = std::numeric_limits<double>::infinity();
};

OracleRow oracle_topk(TopKConfig const& cfg, std::vector<float> const& logits, std::int64_t t,
                      std::vector<float> const& bias, RouterControl const& c) {
    std::int64_t const L = cfg.num_logits(), k = cfg.top_k;
    auto ok = [&](std::int64_t e) { return c.expert_mask.empty() || c.expert_mask[e]; };
    auto boost = [&](std::int64_t e) { return c.boost.empty() ? 1.0 : double(c.boost[e]); };
    bool const over = std::find(c.override_tokens.begin(), c.override_tokens.end(), t) != c.override_tokens.end();
    std::vector<double> x(L), s(L, 0.0), cs(L);
    for (std::int64_t e = 0; e < L; ++e)
        x[e] = double(logits[t * L + e]) + (c.logit_offset.empty() ? 0.0 : c.logit_offset[e]);
    OracleRow o;
    auto by_value = [](std::vector<double> const& v, std::vector<int> cand, std::int64_t n, double& margin) {
        std::stable_sort(cand.begin(), cand.end(), [&](int a, int b) { return v[a] > v[b]; });
        if (std::int64_t(cand.size()) > n) margin = std::min(margin, v[cand[n - 1]] - v[cand[n]]);
        cand.resize(std::min<std::size_t>(cand.size(), n));
        return cand;
    };
    std::vector<int> allowed;
    for (int e = 0; e < L; ++e)
        if (ok(e)) allowed.push_back(e);
    if (cfg.score_after_topk) {
        std::vector<double> v(L);
        std::vector<int> cand;
        for (int e : allowed) {
            if (over)
                v[e] = c.score_override[e] * boost(e), cand.push_back(e);
            else if (boost(e) > 0)
                v[e] = x[e] + std::log(boost(e)), cand.push_back(e);
        }
        o.ids = by_value(v, cand, k, o.margin);
        double z = 0;
        for (int e : o.ids) z += over ? v[e] : std::exp(v[e] - v[o.ids[0]]);
        for (int e : o.ids) o.w.push_back((over ? v[e] : std::exp(v[e] - v[o.ids[0]])) / z * cfg.routed_scaling_factor);
    } else {
        if (over) {
            double z = 0;
            for (int e : allowed) z += c.score_override[e];
            for (int e : allowed) s[e] = c.score_override[e] / z;
        } else if (cfg.score_func == ScoreFunc::softmax) {
            double m = -1e300, z = 0;
            for (int e : allowed) m = std::max(m, x[e]);
            for (int e : allowed) z += std::exp(x[e] - m);
            for (int e : allowed) s[e] = std::exp(x[e] - m) / z;
        } else {
            for (int e : allowed)
                s[e] = cfg.score_func == ScoreFunc::sigmoid ? 1 / (1 + std::exp(-x[e]))
                                                            : std::sqrt(std::log1p(std::exp(x[e])));
        }
        for (int e = 0; e < L; ++e) s[e] *= boost(e), cs[e] = s[e] + (bias.empty() ? 0.0 : bias[e]);
        std::vector<int> cand = allowed;
        if (cfg.n_group > 1) {
            std::int64_t const G = cfg.group_size();
            std::int64_t take = (cfg.group_score == GroupScore::top2_sum ||
                                 (cfg.group_score == GroupScore::max_or_top2 && !bias.empty()))
                                    ? 2
                                    : 1;
            if (cfg.group_score == GroupScore::topk_over_groups_sum) take = k / cfg.groups_kept();
            std::vector<double> gs(cfg.n_group);
            std::vector<int> groups(cfg.n_group);
            for (int g = 0; g < cfg.n_group; ++g) {
                std::vector<double> mem;
                for (int e = g * G; e < (g + 1) * G; ++e)
                    if (ok(e)) mem.push_back(cs[e]);
                std::sort(mem.rbegin(), mem.rend());
                gs[g] = mem.empty()
                            ? -INFINITY
                            : std::accumulate(mem.begin(), mem.begin() + std::min<std::size_t>(take, mem.size()), 0.0);
                groups[g] = g;
            }
            auto const kept = by_value(gs, groups, cfg.groups_kept(), o.margin);
            cand.clear();
            for (int e : allowed)
                if (std::find(kept.begin(), kept.end(), e / G) != kept.end()) cand.push_back(e);
        }
        o.ids = by_value(cs, cand, k, o.margin);
        double z = 0;
        for (int e : o.ids) z += std::pow(s[e], cfg.norm_p);
        z = std::pow(z, 1.0 / cfg.norm_p);
        for (int e : o.ids) o.w.push_back((cfg.norm_topk_prob ? s[e] / z : s[e]) * cfg.routed_scaling_factor);
    }
    std::vector<int> order(o.ids.size());
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(),
                     [&](int a, int b) { return o.w[a] > o.w[b] || (o.w[a] == o.w[b] && o.ids[a] < o.ids[b]); });
    OracleRow sorted = o;
    for (std::size_t j = 0; j < order.size(); ++j) sorted.ids[j] = o.ids[order[j]], sorted.w[j] = o.w[order[j]];
    return sorted;
}

// Random controls for L logits and T tokens: each field present with probability 1/2; the mask keeps
// at least `min_allowed` experts.
struct RandomControl {
    std::vector<float> offset, boost, over;
    std::vector<std::uint8_t> mask;
    std::vector<std::int32_t> tokens;
    RouterControl view() const { return {offset, boost, mask, over, tokens}; }
};

RandomControl random_control(std::mt19937_64& rng, std::int64_t L, std::int64_t T, std::int64_t min_allowed) {
    RandomControl c;
    std::uniform_real_distribution<double> u(0.0, 1.0);
    if (u(rng) < 0.5) c.offset = smoe_test::normal(rng, std::size_t(L), 1.0);
    if (u(rng) < 0.5) {
        c.boost.resize(std::size_t(L));
        for (auto& b : c.boost) b = float(u(rng) < 0.2 ? 1.0 : 0.25 + 2.0 * u(rng));
    }
    if (u(rng) < 0.5) {
        c.mask.assign(std::size_t(L), 1);
        std::vector<int> perm(static_cast<std::size_t>(L));
        std::iota(perm.begin(), perm.end(), 0);
        std::shuffle(perm.begin(), perm.end(), rng);
        auto const removed = std::uniform_int_distribution<std::int64_t>(0, L - min_allowed)(rng);
        for (std::int64_t i = 0; i < removed; ++i) c.mask[perm[i]] = 0;
    }
    bool const none_allowed = !c.mask.empty() && std::count(c.mask.begin(), c.mask.end(), 1) == 0;
    if (u(rng) < 0.5 && T > 0 && !none_allowed) {  // an override needs a positive sum over A
        c.over.resize(std::size_t(L));
        for (auto& v : c.over) v = float(0.05 + u(rng));
        for (std::int32_t t = 0; t < T; ++t)
            if (u(rng) < 0.3) c.tokens.push_back(t);
        if (c.tokens.empty()) c.over.clear();
    }
    return c;
}

// research.md §8: the topk_group groups with the fewest allowed experts hold at least k of them.
bool mask_leaves_k(TopKConfig const& cfg, RouterControl const& c) {
    std::int64_t const L = cfg.num_logits(), G = cfg.n_group > 1 ? cfg.group_size() : L;
    std::vector<std::int64_t> counts;
    for (std::int64_t g = 0; g < L / G; ++g) {
        counts.push_back(0);
        for (std::int64_t e = g * G; e < (g + 1) * G; ++e) counts.back() += c.expert_mask.empty() || c.expert_mask[e];
    }
    std::sort(counts.begin(), counts.end());
    return std::accumulate(counts.begin(), counts.begin() + (cfg.n_group > 1 ? cfg.groups_kept() : 1),
                           std::int64_t{0}) >= cfg.top_k;
}

void check_against_oracle(TopKConfig const& cfg, std::vector<float> const& logits, std::vector<float> const& bias,
                          RouterControl const& c) {
    if (!mask_leaves_k(cfg, c)) {
        CHECK(error_argument([&] { route_controlled(TopK(cfg), logits, c, bias); }) == "expert_mask");
        return;
    }
    auto const o = route_controlled(TopK(cfg), logits, c, bias);
    check_views_agree(o.r, {.no_padding = true, .sorted_rows = true});
    for (std::int64_t t = 0; t < o.r.num_tokens; ++t) {
        auto const want = oracle_topk(cfg, logits, t, bias, c);
        if (want.margin < 1e-5) continue;  // a near tie: either outcome passes (routing.md §0)
        INFO("token " << t);
        for (std::int64_t j = 0; j < cfg.top_k; ++j) {
            CHECK(o.r.expert_ids(t, j) == want.ids[j]);
            CHECK(o.r.expert_weights(t, j) == Approx(want.w[j]).epsilon(2e-6).margin(1e-30));
        }
    }
}

}  // namespace

TEST_CASE("router control reproduces research.md section 8's worked example on top-k config (a)",
          "[router][control][spec]") {
    TopK const router({.num_experts = 6, .top_k = 2, .norm_topk_prob = true});
    {  // offset: t0's experts 0 and 4 both have logit 2, equal weights, lower id first
        auto const o = route_controlled(router, kLogits, {.logit_offset = kOffset});
        check_row(o.r, 0, {0, 4}, {0.5, 0.5});
        check_row(o.r, 1, {3, 1}, {0.622459, 0.377541});
        check_row(o.r, 2, {4, 2}, {0.731059, 0.268941});
        check_views_agree(o.r);
    }
    {
        auto const o = route_controlled(router, kLogits, {.boost = kBoost});
        check_row(o.r, 0, {0, 1}, {0.731059, 0.268941});
        check_row(o.r, 1, {5, 3}, {0.524633, 0.475367});
        check_row(o.r, 2, {2, 4}, {0.622459, 0.377541});
    }
    {
        auto const o = route_controlled(router, kLogits, {.expert_mask = kMask});
        check_row(o.r, 0, {1, 2}, {0.5, 0.5});
        check_row(o.r, 1, {3, 1}, {0.622459, 0.377541});
        check_row(o.r, 2, {2, 4}, {0.622459, 0.377541});
        for (std::int64_t t = 0; t < 3; ++t) CHECK(o.r.load(0) == 0);
    }
    {
        auto const o =
            route_controlled(router, kLogits, {.score_override = kOverride, .override_tokens = kOverrideTokens});
        check_row(o.r, 0, {0, 1}, {0.731059, 0.268941});
        check_row(o.r, 1, {3, 1}, {0.622459, 0.377541});
        check_row(o.r, 2, {3, 4}, {0.666667, 0.333333});
    }
    {  // all four: the override ignores the offset; mask and boost still apply
        auto const o = route_controlled(router, kLogits, {kOffset, kBoost, kMask, kOverride, kOverrideTokens});
        check_row(o.r, 0, {4, 1}, {0.731059, 0.268941});
        check_row(o.r, 1, {5, 3}, {0.524633, 0.475367});
        check_row(o.r, 2, {3, 5}, {0.571429, 0.428571});
        check_views_agree(o.r, {.no_padding = true, .sorted_rows = true, .all_dispatched = true});
    }
}

TEST_CASE("router control on config (d) with a mask and on config (c) with a boost follows research.md section 8",
          "[router][control][spec]") {
    TopKConfig const d{.num_experts = 6,
                       .top_k = 2,
                       .score_func = ScoreFunc::sigmoid,
                       .norm_topk_prob = true,
                       .routed_scaling_factor = 2.5f,
                       .n_group = 3,
                       .topk_group = 2};
    std::vector<std::uint8_t> const mask = {0, 1, 1, 0, 1, 1};
    auto const o = route_controlled(TopK(d), kLogits, {.expert_mask = mask}, {0.0f, 0.0f, 0.1f, -0.1f, 0.0f, 0.3f});
    check_row(o.r, 0, {2, 5}, {1.64861, 0.851391});
    check_row(o.r, 1, {1, 5}, {1.48959, 1.01041});
    check_row(o.r, 2, {2, 4}, {1.30964, 1.19036});
    auto const c = route_controlled(TopK(TopKConfig::megatron(6, 2)), kLogits, {.boost = kBoost});
    check_row(c.r, 0, {0, 1}, {0.731059, 0.268941});
    check_row(c.r, 1, {5, 3}, {0.524633, 0.475367});  // ln 3 added to logit 5
    check_row(c.r, 2, {2, 4}, {0.622459, 0.377541});
}

TEST_CASE("an empty or neutral control record changes no bit of top-k routing", "[router][control]") {
    std::mt19937_64 rng(81);
    std::vector<TopKConfig> const cfgs = {
        {.num_experts = 16, .top_k = 4, .norm_topk_prob = true},
        {.num_experts = 16,
         .top_k = 3,
         .score_func = ScoreFunc::sigmoid,
         .norm_topk_prob = true,
         .routed_scaling_factor = 2.5f,
         .n_group = 4,
         .topk_group = 2},
        {.num_experts = 12, .top_k = 2, .routed_scaling_factor = 16.0f, .n_group = 3, .topk_group = 1},
        TopKConfig::megatron(9, 3)};
    for (auto const& cfg : cfgs) {
        std::int64_t const E = cfg.num_experts, T = 37;
        auto const logits = smoe_test::normal(rng, std::size_t(T * E), 2.0);
        auto const bias =
            cfg.score_func == ScoreFunc::sigmoid ? smoe_test::normal(rng, std::size_t(E), 0.1) : std::vector<float>{};
        TopK const router(cfg);
        auto const plain = smoe_test::route_router(xsimd::default_arch{}, router, logits, bias);
        std::vector<float> const zero(std::size_t(E), 0.0f), one(std::size_t(E), 1.0f);
        std::vector<std::uint8_t> const all(std::size_t(E), 1);
        // An empty record is the plain path; a neutral one (offset 0, boost 1, every expert allowed)
        // goes through the general row, which must select and weigh as the SIMD row does.
        for (RouterControl const& c : {RouterControl{}, RouterControl{.logit_offset = zero},
                                       RouterControl{.logit_offset = zero, .boost = one, .expert_mask = all}}) {
            auto const o = route_controlled(router, logits, c, bias);
            for (std::int64_t t = 0; t < T; ++t)
                for (std::int64_t j = 0; j < cfg.top_k; ++j) {
                    REQUIRE(o.r.expert_ids(t, j) == plain.r.expert_ids(t, j));
                    REQUIRE(o.r.expert_weights(t, j) == plain.r.expert_weights(t, j));
                }
        }
    }
}

TEST_CASE("top-k under random control matches the float64 oracle", "[router][control][oracle]") {
    std::mt19937_64 rng(82);
    for (int trial = 0; trial < 300; ++trial) {
        std::int64_t const n_group = std::vector<std::int64_t>{1, 1, 2, 4}[trial % 4];
        std::int64_t const G = std::uniform_int_distribution<std::int64_t>(n_group > 1 ? 2 : 1, 9)(rng),
                           E = n_group * G;
        std::int64_t const topk_group = n_group > 1 ? std::uniform_int_distribution<std::int64_t>(1, n_group)(rng) : 1;
        std::int64_t const k =
            std::uniform_int_distribution<std::int64_t>(1, std::min<std::int64_t>(topk_group * G, 6))(rng);
        std::int64_t const T = std::uniform_int_distribution<std::int64_t>(0, 9)(rng);
        TopKConfig cfg{.num_experts = E,
                       .top_k = k,
                       .norm_topk_prob = trial % 3 != 0,
                       .n_group = n_group,
                       .topk_group = topk_group};
        cfg.score_func = trial % 5 == 1 ? ScoreFunc::sigmoid : ScoreFunc::softmax;
        if (trial % 7 == 3 && n_group == 1) cfg = TopKConfig::megatron(E, k);
        if (trial % 6 == 2) cfg.routed_scaling_factor = 2.5f;
        INFO("trial " << trial << ": E " << E << ", k " << k << ", groups " << n_group << "/" << topk_group << ", T "
                      << T);
        auto const logits = smoe_test::normal(rng, std::size_t(T * E), 1.5);
        auto const bias = (trial % 2 && !cfg.score_after_topk && (n_group == 1 || G >= 2))
                              ? smoe_test::normal(rng, std::size_t(E), 0.2)
                              : std::vector<float>{};
        RandomControl rc = random_control(rng, E, T, k);  // with groups, an infeasible mask must be refused
        if (cfg.score_after_topk && !rc.boost.empty())
            for (auto& b : rc.boost) b = std::max(b, 0.25f);
        check_against_oracle(cfg, logits, bias, rc.view());
    }
}

TEST_CASE("a mask that leaves exactly k experts selects them, and fewer than k is an error",
          "[router][control][edge]") {
    TopK const router({.num_experts = 6, .top_k = 2, .norm_topk_prob = true});
    std::vector<std::uint8_t> const two = {0, 0, 0, 1, 0, 1}, one = {0, 0, 0, 1, 0, 0};
    auto const o = route_controlled(router, kLogits, {.expert_mask = two});
    check_row(o.r, 0, {5, 3}, {0.622459, 0.377541});  // logits -0.5, -1 over {3, 5}
    check_row(o.r, 1, {3, 5}, {0.731059, 0.268941});
    check_row(o.r, 2, {3, 5}, {0.947846, 0.0521536});
    CHECK(error_argument([&] { route_controlled(router, kLogits, {.expert_mask = one}); }) == "expert_mask");
    // Groups: the two groups with the fewest allowed experts hold 1 + 0 < k = 2.
    TopK const grouped({.num_experts = 6, .top_k = 2, .n_group = 3, .topk_group = 2});
    std::vector<std::uint8_t> const thin = {1, 0, 0, 0, 1, 1};
    CHECK(error_argument([&] { route_controlled(grouped, kLogits, {.expert_mask = thin}); }) == "expert_mask");
}

TEST_CASE("bad control fields raise invalid_argument naming the field", "[router][control][edge]") {
    TopK const router({.num_experts = 6, .top_k = 2});
    float const nan = std::numeric_limits<float>::quiet_NaN();
    std::vector<float> const nan_offset = {0, 0, nan, 0, 0, 0}, short_offset = {0, 0}, neg_boost = {1, 1, -1, 1, 1, 1};
    std::vector<float> const inf_boost = {1, 1, 1, INFINITY, 1, 1}, zero_over = {0, 0, 0, 0, 0, 0},
                             big = {3e38f, 0, 0, 0, 0, 0};
    std::vector<std::uint8_t> const bad_mask = {1, 1, 2, 1, 1, 1};
    std::vector<std::int32_t> const unsorted = {2, 1}, past_end = {3}, tok = {1};
    std::vector<float> const big_logits = {3e38f, 0, 0, 0, 0, 0};
    try {
        route_controlled(router, kLogits, {.logit_offset = nan_offset});
        FAIL("no error");
    } catch (smoe::invalid_argument const& e) {
        CHECK(e.argument() == "logit_offset");
        CHECK(e.value() == "nan at expert 2");
    }
    CHECK(error_argument([&] { route_controlled(router, kLogits, {.logit_offset = short_offset}); }) == "logit_offset");
    CHECK(error_argument([&] { route_controlled(router, big_logits, {.logit_offset = big}); }) == "logit_offset");
    CHECK(error_argument([&] { route_controlled(router, kLogits, {.boost = neg_boost}); }) == "boost");
    CHECK(error_argument([&] { route_controlled(router, kLogits, {.boost = inf_boost}); }) == "boost");
    CHECK(error_argument([&] { route_controlled(router, kLogits, {.expert_mask = bad_mask}); }) == "expert_mask");
    CHECK(error_argument([&] { route_controlled(router, kLogits, {.score_override = kOverride}); }) ==
          "override_tokens");
    CHECK(error_argument([&] { route_controlled(router, kLogits, {.override_tokens = tok}); }) == "score_override");
    CHECK(error_argument([&] {
              route_controlled(router, kLogits, {.score_override = zero_over, .override_tokens = tok});
          }) == "score_override");
    CHECK(error_argument([&] {
              route_controlled(router, kLogits, {.score_override = kOverride, .override_tokens = unsorted});
          }) == "override_tokens");
    CHECK(error_argument([&] {
              route_controlled(router, kLogits, {.score_override = kOverride, .override_tokens = past_end});
          }) == "override_tokens");
    // score_after_topk: a boost of 0 removes the expert, so it counts against k.
    std::vector<float> const zeros = {0, 0, 0, 0, 0, 1};
    CHECK(error_argument([&] { route_controlled(TopK(TopKConfig::megatron(6, 2)), kLogits, {.boost = zeros}); }) ==
          "boost");
}

TEST_CASE("top-k options group_score, norm_p and sqrtsoftplus give the float64 values",
          "[router][topk][options][spec]") {
    {  // routing.md §10.1: group 0 has the largest member, group 1 the larger top-2 sum
        std::vector<float> const x = {3.0f, -5.0f, 2.5f, 2.4f};
        TopKConfig cfg{.num_experts = 4, .top_k = 1, .n_group = 2, .topk_group = 1};
        auto const deepseek = route_controlled(TopK(cfg), x, {});
        check_row(deepseek.r, 0, {0}, {0.463891});
        cfg.group_score = GroupScore::top2_sum;
        check_row(route_controlled(TopK(cfg), x, {}).r, 0, {2}, {0.281364});
        cfg.group_score = GroupScore::topk_over_groups_sum;  // top_k / topk_group = 1: the maximum again
        check_row(route_controlled(TopK(cfg), x, {}).r, 0, {0}, {0.463891});
    }
    {  // DBRX p = 2 on routing.md §2's logits: w = s_S / ||s_S||_2
        TopKConfig const cfg{.num_experts = 6, .top_k = 2, .norm_topk_prob = true, .norm_eps = 0.0f, .norm_p = 2.0f};
        auto const o = route_controlled(TopK(cfg), kLogits, {});
        check_row(o.r, 0, {0, 1}, {0.938508, 0.345258});
        check_row(o.r, 1, {3, 1}, {0.85502, 0.518596});
        check_row(o.r, 2, {2, 4}, {0.85502, 0.518596});
    }
    {  // DeepSeek-V4: s = sqrt(softplus(x)), renormalised, times 1.5
        TopKConfig const cfg{.num_experts = 6,
                             .top_k = 2,
                             .score_func = ScoreFunc::sqrtsoftplus,
                             .norm_topk_prob = true,
                             .routed_scaling_factor = 1.5f};
        auto const o = route_controlled(TopK(cfg), kLogits, {});
        check_row(o.r, 0, {0, 1}, {0.839971, 0.660029});
        check_row(o.r, 1, {3, 1}, {0.82741, 0.67259});
        check_row(o.r, 2, {2, 4}, {0.795707, 0.704293});
        TopKConfig const one{.num_experts = 1, .top_k = 1, .score_func = ScoreFunc::sqrtsoftplus};
        check_row(route_controlled(TopK(one), {0.0f}, {}).r, 0, {0}, {0.832555});  // sqrt(ln 2)
    }
}

TEST_CASE("top-k options and identity experts match the float64 oracle on random shapes, with and without control",
          "[router][topk][options][oracle]") {
    std::mt19937_64 rng(83);
    for (int trial = 0; trial < 300; ++trial) {
        std::int64_t const n_group = trial % 3 == 0 ? 1 : std::vector<std::int64_t>{2, 3, 4}[trial % 3];
        std::int64_t const G = std::uniform_int_distribution<std::int64_t>(2, 8)(rng), E = n_group * G;
        std::int64_t const topk_group = std::uniform_int_distribution<std::int64_t>(1, n_group)(rng);
        std::int64_t const Z = n_group == 1 && trial % 2 ? std::uniform_int_distribution<std::int64_t>(1, 5)(rng) : 0;
        std::int64_t const k =
            std::uniform_int_distribution<std::int64_t>(topk_group, std::min<std::int64_t>(topk_group * G, 6))(rng);
        std::int64_t const T = std::uniform_int_distribution<std::int64_t>(1, 8)(rng);
        TopKConfig cfg{.num_experts = E,
                       .top_k = k,
                       .norm_topk_prob = trial % 4 != 0,
                       .n_group = n_group,
                       .topk_group = topk_group};
        cfg.score_func =
            std::vector<ScoreFunc>{ScoreFunc::softmax, ScoreFunc::sigmoid, ScoreFunc::sqrtsoftplus}[trial % 5 % 3];
        cfg.group_score = std::vector<GroupScore>{GroupScore::max_or_top2, GroupScore::top2_sum,
                                                  GroupScore::topk_over_groups_sum}[trial % 7 % 3];
        cfg.norm_p = std::vector<float>{1.0f, 2.0f, 0.5f, 3.0f}[trial % 4];
        cfg.num_null_experts = Z;
        cfg.routed_scaling_factor = Z ? 6.0f : 1.0f;
        INFO("trial " << trial << ": E " << E << " + " << Z << ", k " << k << ", groups " << n_group << "/"
                      << topk_group << " " << to_string(cfg.group_score) << ", " << to_string(cfg.score_func) << ", p "
                      << cfg.norm_p);
        auto const logits = smoe_test::normal(rng, std::size_t(T * (E + Z)), 1.5);
        auto const bias = trial % 2 ? smoe_test::normal(rng, std::size_t(E + Z), 0.2) : std::vector<float>{};
        check_against_oracle(cfg, logits, bias, {});
        RandomControl const rc = random_control(rng, E + Z, T, k);
        check_against_oracle(cfg, logits, bias, rc.view());
    }
}

TEST_CASE("top-k option values out of range raise invalid_argument naming the key", "[router][topk][options][edge]") {
    auto key = [](TopKConfig const& c) { return error_argument([&] { TopK r(c); }); };
    CHECK(key({.num_experts = 4, .top_k = 1, .norm_p = 0.0f}) == "norm_p");
    CHECK(key({.num_experts = 4, .top_k = 1, .norm_p = INFINITY}) == "norm_p");
    CHECK(key({.num_experts = 4, .top_k = 1, .n_group = 4, .group_score = GroupScore::top2_sum}) == "group_score");
    CHECK(key({.num_experts = 8,
               .top_k = 1,
               .n_group = 4,
               .topk_group = 2,
               .group_score = GroupScore::topk_over_groups_sum}) == "group_score");
    CHECK(key({.num_experts = 4, .top_k = 2, .n_group = 2, .num_null_experts = 2}) == "num_null_experts");
    CHECK(key({.num_experts = 4, .top_k = 2, .score_after_topk = true, .num_null_experts = 2}) == "num_null_experts");
    CHECK(key({.num_experts = 4, .top_k = 7, .num_null_experts = 2}) == "top_k");
    CHECK(key({.num_experts = 4, .top_k = 6, .num_null_experts = 2}) == "no error");
    CHECK(key({.num_experts = 4, .top_k = 1, .num_null_experts = -1}) == "num_null_experts");
    CHECK(error_argument([] {
              smoe::router::ExpertChoice r({.num_experts = 4, .capacity = 1, .score_func = ScoreFunc::sqrtsoftplus});
          }) == "score_func");
}

// ---- The other routers (research.md §8's table), each against a float64 oracle of its row. ----

namespace {

// What every oracle needs of a record, in double.
struct OracleControl {
    RouterControl const& c;
    bool ok(std::int64_t e) const { return c.expert_mask.empty() || c.expert_mask[e]; }
    double boost(std::int64_t e) const { return c.boost.empty() ? 1.0 : double(c.boost[e]); }
    double offset(std::int64_t e) const { return c.logit_offset.empty() ? 0.0 : double(c.logit_offset[e]); }
    bool over(std::int64_t t) const {
        return std::find(c.override_tokens.begin(), c.override_tokens.end(), t) != c.override_tokens.end();
    }
    // Steps 1-4: softmax over A of x + a (or sigmoid), or v / Σ_A v on override tokens; 0 off A.
    std::vector<double> scores(float const* x, std::int64_t L, std::int64_t t, bool softmax) const {
        std::vector<double> s(L, 0.0);
        double z = 0, m = -1e300;
        for (std::int64_t e = 0; e < L; ++e)
            if (ok(e)) m = std::max(m, x[e] + offset(e)), z += over(t) ? c.score_override[e] : 0.0;
        if (!over(t) && softmax) {
            for (std::int64_t e = 0; e < L; ++e)
                if (ok(e)) z += std::exp(x[e] + offset(e) - m);
        }
        for (std::int64_t e = 0; e < L; ++e) {
            if (!ok(e)) continue;
            if (over(t))
                s[e] = c.score_override[e] / z;
            else
                s[e] = softmax ? std::exp(x[e] + offset(e) - m) / z : 1 / (1 + std::exp(-(x[e] + offset(e))));
        }
        return s;
    }
};

// (value descending, id ascending); the gap between the n-th and the next value goes into margin.
std::vector<int> top_n(std::vector<double> const& v, std::vector<int> cand, std::size_t n, double& margin) {
    std::stable_sort(cand.begin(), cand.end(), [&](int a, int b) { return v[a] > v[b]; });
    if (cand.size() > n && n > 0) margin = std::min(margin, v[cand[n - 1]] - v[cand[n]]);
    cand.resize(std::min(cand.size(), n));
    return cand;
}

std::vector<int> allowed_ids(OracleControl const& o, std::int64_t L) {
    std::vector<int> a;
    for (int e = 0; e < L; ++e)
        if (o.ok(e)) a.push_back(e);
    return a;
}

// Row t of r holds exactly `ids` (in order) with weights `w` (float64 oracle), then padding (-1, weight 0).
void check_oracle_row(smoe::RoutingResult const& r, std::int64_t t, std::vector<int> const& ids,
                      std::vector<double> const& w) {
    smoe_test::check_padded_row(r, t, ids, w, 2e-6, 1e-30);
}

// Sorts (id, w) pairs into the token-major row order.
void row_order(std::vector<int>& ids, std::vector<double>& w) {
    std::vector<std::size_t> p(ids.size());
    std::iota(p.begin(), p.end(), 0);
    std::stable_sort(p.begin(), p.end(),
                     [&](std::size_t a, std::size_t b) { return w[a] > w[b] || (w[a] == w[b] && ids[a] < ids[b]); });
    std::vector<int> i2;
    std::vector<double> w2;
    for (auto q : p) i2.push_back(ids[q]), w2.push_back(w[q]);
    ids = i2, w = w2;
}

struct Shape {
    std::int64_t E, T;
};

Shape random_shape(std::mt19937_64& rng, std::int64_t min_e = 1) {
    return {std::uniform_int_distribution<std::int64_t>(min_e, 12)(rng),
            std::uniform_int_distribution<std::int64_t>(0, 9)(rng)};
}

// The same router on the same logits with and without a neutral record (offset 0, every expert
// allowed, boost 1 unless `boost` is false) gives the same bits.
template <class Router>
void check_neutral(Router const& router, std::vector<float> const& logits, bool boost = true) {
    auto const L = router.num_logits();
    std::vector<float> const zero(std::size_t(L), 0.0f), one(std::size_t(L), 1.0f);
    std::vector<std::uint8_t> const all(std::size_t(L), 1);
    RouterControl c{.logit_offset = zero, .expert_mask = all};
    if (boost) c.boost = one;
    auto const plain = smoe_test::route_router(xsimd::default_arch{}, router, logits);
    auto const o = route_controlled(router, logits, c);
    REQUIRE(o.r.k == plain.r.k);
    for (std::int64_t t = 0; t < o.r.num_tokens; ++t)
        for (std::int64_t j = 0; j < o.r.k; ++j) {
            REQUIRE(o.r.expert_ids(t, j) == plain.r.expert_ids(t, j));
            REQUIRE(o.r.expert_weights(t, j) == plain.r.expert_weights(t, j));
        }
}

}  // namespace

TEST_CASE("relu under control: w = b * relu(x + a) over the allowed experts, v * b on override tokens",
          "[router][control][relu]") {
    std::mt19937_64 rng(84);
    for (int trial = 0; trial < 200; ++trial) {
        auto const [E, T] = random_shape(rng);
        auto const logits = smoe_test::normal(rng, std::size_t(T * E), 1.0);
        RandomControl const rc = random_control(rng, E, T, 0);
        RouterControl const c = rc.view();
        smoe::router::ReLU const router({.num_experts = E});
        auto const o = route_controlled(router, logits, c);
        check_views_agree(o.r, {.sorted_rows = true});
        OracleControl const oc{c};
        for (std::int64_t t = 0; t < T; ++t) {
            std::vector<int> ids;
            std::vector<double> w;
            for (int e = 0; e < E; ++e) {
                double const v =
                    oc.ok(e) ? (oc.over(t) ? c.score_override[e] : std::max(logits[t * E + e] + oc.offset(e), 0.0)) *
                                   oc.boost(e)
                             : 0.0;
                if (v > 0) ids.push_back(e), w.push_back(v);
            }
            row_order(ids, w);
            check_oracle_row(o.r, t, ids, w);
        }
        if (trial < 20) check_neutral(router, logits);
    }
    // Every expert removed is valid for relu: nothing is selected.
    std::vector<std::uint8_t> const none(4, 0);
    auto const o = route_controlled(smoe::router::ReLU({.num_experts = 4}), {1, 2, 3, 4}, {.expert_mask = none});
    CHECK(o.r.k == 0);
    CHECK(o.r.nnz() == 0);
}

TEST_CASE("top_p under control scans the boosted, renormalised scores over the allowed experts",
          "[router][control][top_p]") {
    std::mt19937_64 rng(85);
    for (int trial = 0; trial < 300; ++trial) {
        auto const [E, T] = random_shape(rng);
        smoe::router::TopPConfig cfg{.num_experts = E,
                                     .top_p = float(std::uniform_real_distribution<double>(0.05, 1.0)(rng))};
        cfg.min_k = std::uniform_int_distribution<std::int64_t>(1, std::min<std::int64_t>(E, 3))(rng);
        cfg.max_k = std::uniform_int_distribution<std::int64_t>(cfg.min_k, E)(rng);
        auto const logits = smoe_test::normal(rng, std::size_t(T * E), 1.5);
        RandomControl const rc = random_control(rng, E, T, cfg.min_k);
        RouterControl const c = rc.view();
        INFO("trial " << trial << ": E " << E << ", p " << cfg.top_p << ", k " << cfg.min_k << ".."
                      << cfg.max_selected());
        smoe::router::TopP const router(cfg);
        auto const o = route_controlled(router, logits, c);
        check_views_agree(o.r, {.sorted_rows = true});
        OracleControl const oc{c};
        for (std::int64_t t = 0; t < T; ++t) {
            auto s = oc.scores(&logits[t * E], E, t, true);
            double z = 0;
            for (int e = 0; e < E; ++e) z += (s[e] *= oc.boost(e));
            for (auto& v : s) v /= z;
            double margin = 1;
            auto const order = top_n(s, allowed_ids(oc, E), std::size_t(E), margin);
            std::size_t n = order.size();
            double prefix = 0;
            bool near = false;
            for (std::size_t j = 0; j < order.size(); ++j) {
                prefix += s[order[j]];
                near |= std::fabs(prefix - cfg.top_p) < 1e-5;
                if (prefix > cfg.top_p) {
                    n = j + 1;
                    break;
                }
            }
            if (near || margin < 1e-6) continue;
            n = std::min(std::max<std::size_t>(n, std::size_t(cfg.min_k)), std::size_t(cfg.max_selected()));
            std::vector<int> ids(order.begin(), order.begin() + std::ptrdiff_t(std::min(n, order.size())));
            std::vector<double> w;
            for (int e : ids) w.push_back(s[e]);
            check_oracle_row(o.r, t, ids, w);
        }
        if (trial < 20) check_neutral(router, logits, false);  // a boost of 1 still renormalises (rounding)
    }
    std::vector<std::uint8_t> const one = {0, 0, 1, 0};
    CHECK(error_argument([&] {
              route_controlled(smoe::router::TopP({.num_experts = 4, .min_k = 2}), {1, 2, 3, 4}, {.expert_mask = one});
          }) == "expert_mask");
}

TEST_CASE("null_expert under control boosts s before the top-k and renormalises the true experts",
          "[router][control][null_expert]") {
    std::mt19937_64 rng(86);
    for (int trial = 0; trial < 200; ++trial) {
        std::int64_t const E = std::uniform_int_distribution<std::int64_t>(1, 8)(rng),
                           N = std::uniform_int_distribution<std::int64_t>(0, 6)(rng);
        std::int64_t const L = E + N,
                           k = std::uniform_int_distribution<std::int64_t>(1, std::min<std::int64_t>(L, 4))(rng);
        std::int64_t const T = std::uniform_int_distribution<std::int64_t>(0, 9)(rng);
        auto const logits = smoe_test::normal(rng, std::size_t(T * L), 1.5);
        RandomControl const rc = random_control(rng, L, T, k);
        RouterControl const c = rc.view();
        smoe::router::NullExpert const router({.num_experts = E, .num_null_experts = N, .top_k = k});
        auto const o = route_controlled(router, logits, c);
        check_views_agree(o.r, {.no_padding = true, .sorted_rows = true});
        OracleControl const oc{c};
        for (std::int64_t t = 0; t < T; ++t) {
            auto s = oc.scores(&logits[t * L], L, t, true);
            for (int e = 0; e < L; ++e) s[e] *= oc.boost(e);
            double margin = 1;
            auto ids = top_n(s, allowed_ids(oc, L), std::size_t(k), margin);
            if (margin < 1e-6) continue;
            double sigma = 0;
            for (int e : ids) sigma += e < E ? s[e] : 0.0;
            if (sigma == 0) sigma = 1;
            std::vector<double> w;
            for (int e : ids) w.push_back(e < E ? s[e] / sigma : s[e]);
            row_order(ids, w);
            check_oracle_row(o.r, t, ids, w);
        }
        if (trial < 20) check_neutral(router, logits);
    }
    // Every null removed: a top-k over the true experts, renormalised to 1.
    std::vector<std::uint8_t> const no_nulls = {1, 1, 1, 0, 0};
    auto const o = route_controlled(smoe::router::NullExpert({.num_experts = 3, .num_null_experts = 2, .top_k = 2}),
                                    {-1, -2, -1, 1, 1}, {.expert_mask = no_nulls});
    check_row(o.r, 0, {0, 2}, {0.5, 0.5});
    std::vector<std::uint8_t> const one = {0, 0, 0, 1, 0};
    CHECK(error_argument([&] {
              route_controlled(smoe::router::NullExpert({.num_experts = 3, .num_null_experts = 2, .top_k = 2}),
                               {0, 0, 0, 0, 0}, {.expert_mask = one});
          }) == "expert_mask");
}

TEST_CASE("expert_choice under control ranks by the unboosted scores over the allowed experts and boosts the weights",
          "[router][control][expert_choice]") {
    std::mt19937_64 rng(87);
    for (int trial = 0; trial < 200; ++trial) {
        auto const [E, T] = random_shape(rng);
        smoe::router::ExpertChoiceConfig cfg{.num_experts = E,
                                             .capacity_factor = std::uniform_real_distribution<double>(0.5, 3.0)(rng)};
        if (trial % 3 == 1) cfg.score_func = ScoreFunc::sigmoid;
        auto const logits = smoe_test::normal(rng, std::size_t(T * E), 1.5);
        RandomControl const rc = random_control(rng, E, T, 0);
        RouterControl const c = rc.view();
        smoe::router::ExpertChoice const router(cfg);
        auto const o = route_controlled(router, logits, c);
        check_views_agree(o.r, {.sorted_rows = true});
        OracleControl const oc{c};
        std::vector<std::vector<double>> s;
        for (std::int64_t t = 0; t < T; ++t)
            s.push_back(oc.scores(&logits[t * E], E, t, cfg.score_func == ScoreFunc::softmax));
        std::int64_t const C = std::min(router.capacity(T), T);
        std::vector<std::vector<int>> ids(static_cast<std::size_t>(T));
        std::vector<std::vector<double>> w(static_cast<std::size_t>(T));
        double margin = 1;
        for (int e = 0; e < E; ++e) {
            if (!oc.ok(e)) continue;
            std::vector<double> col;
            for (std::int64_t t = 0; t < T; ++t) col.push_back(s[t][e]);
            std::vector<int> tokens(static_cast<std::size_t>(T));
            std::iota(tokens.begin(), tokens.end(), 0);
            for (int t : top_n(col, tokens, std::size_t(C), margin))
                ids[t].push_back(e), w[t].push_back(s[t][e] * oc.boost(e));
        }
        if (margin < 1e-6) continue;
        for (std::int64_t t = 0; t < T; ++t) {
            row_order(ids[t], w[t]);
            check_oracle_row(o.r, t, ids[t], w[t]);
        }
        if (trial < 20) check_neutral(router, logits);
    }
}

TEST_CASE("rankwise_lora under control: g = sigmoid(z + a), g * b before the bias, removed ranks never selected",
          "[router][control][rankwise_lora]") {
    std::mt19937_64 rng(88);
    for (int trial = 0; trial < 200; ++trial) {
        std::int64_t const r = std::uniform_int_distribution<std::int64_t>(1, 12)(rng),
                           T = std::uniform_int_distribution<std::int64_t>(0, 9)(rng);
        std::int64_t const k = std::uniform_int_distribution<std::int64_t>(1, std::min<std::int64_t>(r, 4))(rng);
        auto const logits = smoe_test::normal(rng, std::size_t(T * r), 1.5);
        // Non-negative biases: a sum near 0 over S would amplify fp32 rounding beyond any fixed bound.
        auto bias = trial % 2 ? smoe_test::normal(rng, std::size_t(r), 0.1) : std::vector<float>{};
        for (auto& b : bias) b = std::fabs(b);
        RandomControl const rc = random_control(rng, r, T, k);
        RouterControl const c = rc.view();
        smoe::router::RankwiseLoRA const router(
            {.in_features = 3, .out_features = 2, .rank = r, .top_k = k, .lora_alpha = 1});
        auto const o = route_controlled(router, logits, c, bias);
        check_views_agree(o.r, {.no_padding = true, .sorted_rows = true, .all_dispatched = true});
        OracleControl const oc{c};
        for (std::int64_t t = 0; t < T; ++t) {
            auto g = oc.scores(&logits[t * r], r, t, false);
            for (int i = 0; i < r; ++i) g[i] = g[i] * oc.boost(i) + (bias.empty() ? 0.0 : bias[i]);
            double margin = 1;
            auto ids = top_n(g, allowed_ids(oc, r), std::size_t(k), margin);
            if (margin < 1e-6) continue;
            double sum = 0;
            for (int i : ids) sum += g[i];
            std::vector<double> w;
            for (int i : ids) w.push_back(double(k) * g[i] / sum);
            row_order(ids, w);
            check_oracle_row(o.r, t, ids, w);
        }
        if (trial < 20) check_neutral(router, logits);
    }
}

TEST_CASE("sinkhorn under control balances the allowed columns of x + a and weighs by the boosted activation",
          "[router][control][sinkhorn]") {
    std::mt19937_64 rng(89);
    for (int trial = 0; trial < 100; ++trial) {
        std::int64_t const E = std::uniform_int_distribution<std::int64_t>(2, 10)(rng),
                           T = std::uniform_int_distribution<std::int64_t>(0, 12)(rng);
        std::int64_t const k = std::uniform_int_distribution<std::int64_t>(1, std::min<std::int64_t>(E, 3))(rng);
        auto const logits = smoe_test::normal(rng, std::size_t(T * E), 1.0);
        RandomControl rc = random_control(rng, E, T, k);
        rc.over.clear(), rc.tokens.clear();  // override rows are checked on their own below
        RouterControl const c = rc.view();
        OracleControl const oc{c};
        INFO("trial " << trial << ": E " << E << ", T " << T << ", k " << k);
        smoe::router::Sinkhorn const router({.num_experts = E, .top_k = k, .max_iterations = trial % 4 ? 100 : 0});
        auto const o = route_controlled(router, logits, c);
        check_views_agree(o.r, {.no_padding = true, .sorted_rows = true, .all_dispatched = true});
        // Selection: the plain router on the allowed columns of x + a (a mask removes a column from K,
        // and a per-expert boost cancels in P). Weights: the activation of x + a over A, times b.
        auto const allowed = allowed_ids(oc, E);
        auto const A = static_cast<std::int64_t>(allowed.size());
        std::vector<float> xa;
        for (std::int64_t t = 0; t < T; ++t)
            for (int e : allowed) xa.push_back(float(logits[t * E + e] + oc.offset(e)));
        smoe::router::Sinkhorn const compact({.num_experts = A, .top_k = k, .max_iterations = trial % 4 ? 100 : 0});
        auto const want = smoe_test::route_router(xsimd::default_arch{}, compact, xa);
        bool const balanced = compact.last_report().balanced;
        for (std::int64_t t = 0; t < T; ++t) {
            auto const a = oc.scores(&logits[t * E], E, t, k > 1);
            std::vector<int> ids;
            std::vector<double> w;
            for (std::int64_t j = 0; j < k; ++j) ids.push_back(allowed[want.r.expert_ids(t, j)]);
            if (!balanced) {  // the boost selects too
                std::vector<double> ab(a);
                for (int e = 0; e < E; ++e) ab[e] *= oc.boost(e);
                double margin = 1;
                ids = top_n(ab, allowed, std::size_t(k), margin);
                if (margin < 1e-6) continue;
            }
            for (int e : ids) w.push_back(a[e] * oc.boost(e));
            row_order(ids, w);
            check_oracle_row(o.r, t, ids, w);
        }
        if (trial < 20) {  // a neutral record selects the same experts with weights within 1e-6
            std::vector<std::uint8_t> const all(std::size_t(E), 1);
            auto const plain = smoe_test::route_router(xsimd::default_arch{}, router, logits);
            auto const n = route_controlled(router, logits, {.expert_mask = all});
            smoe_test::check_matches_oracle(n.r, plain.r);
        }
    }
    // Override: top-k of v * b over A with those weights; the other tokens still balance.
    std::vector<float> const logits = {2, 1, 0, 1.8f, 0.2f, 1, 1.5f, 1.4f, -1, 1.2f, 0, 0.9f};  // routing.md §7
    std::vector<float> const v = {0.1f, 0.5f, 0.4f}, b = {1, 1, 2};
    std::vector<std::int32_t> const tok = {1};
    smoe::router::Sinkhorn const router({.num_experts = 3, .top_k = 1});
    auto const o = route_controlled(router, logits, {.boost = b, .score_override = v, .override_tokens = tok});
    check_row(o.r, 1, {2}, {0.8});
    check_row(o.r, 0, {0}, {0.880797});      // routing.md §7: t0 -> 0 with sigmoid(2)
    check_row(o.r, 3, {2}, {2 * 0.710949});  // t3 -> 2, the boost only weighs
    std::vector<std::uint8_t> const one = {0, 0, 1};
    CHECK(error_argument([&] {
              route_controlled(smoe::router::Sinkhorn({.num_experts = 3, .top_k = 2}), logits, {.expert_mask = one});
          }) == "expert_mask");
}

TEST_CASE("every router names a NaN offset and a mask of the wrong length", "[router][control][edge]") {
    float const nan = std::numeric_limits<float>::quiet_NaN();
    std::vector<float> const bad = {0, nan, 0, 0}, logits = {1, 2, 3, 4};
    std::vector<std::uint8_t> const short_mask = {1, 1};
    auto both = [&](auto const& router) {
        CHECK(error_argument([&] { route_controlled(router, logits, {.logit_offset = bad}); }) == "logit_offset");
        CHECK(error_argument([&] { route_controlled(router, logits, {.expert_mask = short_mask}); }) == "expert_mask");
    };
    both(TopK({.num_experts = 4, .top_k = 2}));
    both(smoe::router::ReLU({.num_experts = 4}));
    both(smoe::router::TopP({.num_experts = 4}));
    both(smoe::router::NullExpert({.num_experts = 2, .num_null_experts = 2, .top_k = 2}));
    both(smoe::router::ExpertChoice({.num_experts = 4, .capacity = 1}));
    both(smoe::router::Sinkhorn({.num_experts = 4, .top_k = 2}));
    both(smoe::router::RankwiseLoRA({.in_features = 1, .out_features = 1, .rank = 4, .top_k = 2, .lora_alpha = 1}));
}

// ---- router::SparseMixer (families.md §2.4); expected values from a float64 transcription of HF's
// `sparsemixer` (masks by (m - L) / max(|L|, m) > 2 eps, softmax over the rest). ----

TEST_CASE("sparsemixer picks two experts, each weighted over the logits within 2 eps of it",
          "[router][sparsemixer][spec]") {
    smoe::router::SparseMixer const router({.num_experts = 6});
    std::vector<float> const logits = {2.0f,  1.0f,   1.0f,    -1.0f,  0.5f,   -0.5f,  // M2 = {1, 2}: w2 = 0.5
                                       -3.0f, -1.0f,  -2.0f,   -0.5f,  -4.0f,  -1.5f,  // both alone: 1, 1
                                       1.0f,  0.99f,  0.5f,    0.985f, -1.0f,  0.2f,   // w2 > w1: row order [1, 0]
                                       0.0f,  0.0f,   -1.0f,   0.0f,   -2.0f,  -3.0f,  // 0/0 counts as kept
                                       -1.0f, -1.01f, -1.015f, -3.0f,  -1.03f, -5.0f};
    auto const o = route_controlled(router, logits, {});
    check_row(o.r, 0, {0, 1}, {1.0, 0.5});
    check_row(o.r, 1, {1, 3}, {1.0, 1.0});
    check_row(o.r, 2, {1, 0}, {0.50125, 0.336116});
    check_row(o.r, 3, {1, 0}, {0.5, 0.333333});
    check_row(o.r, 4, {0, 1}, {0.336116, 0.336111});
    check_views_agree(o.r, {.no_padding = true, .sorted_rows = true, .all_dispatched = true});
    // eps = 0 keeps only exact ties; a large eps keeps everything (a softmax over all E, then E - 1).
    auto const strict =
        route_controlled(smoe::router::SparseMixer({.num_experts = 6, .router_jitter_noise = 0.0f}), logits, {});
    check_row(strict.r, 2, {0, 1}, {1.0, 1.0});
    check_row(strict.r, 3, {1, 0}, {0.5, 0.333333});
    // Control: a mask removes expert 0 from the pick and from M1; an offset moves the logits.
    std::vector<std::uint8_t> const mask = {0, 1, 1, 1, 1, 1};
    auto const masked = route_controlled(router, logits, {.expert_mask = mask});
    check_row(masked.r, 2, {3, 1}, {1.0, 0.501250});  // e1 = 1 with M1 = {1, 3}, e2 = 3 alone
    std::vector<float> const boost(6, 1.0f);
    CHECK(error_argument([&] { route_controlled(router, logits, {.boost = boost}); }) == "boost");
    CHECK(error_argument([] { smoe::router::SparseMixer r({.num_experts = 1}); }) == "num_experts");
    CHECK(error_argument([] { smoe::router::SparseMixer r({.num_experts = 4, .router_jitter_noise = -1.0f}); }) ==
          "router_jitter_noise");
}

TEST_CASE("sparsemixer matches a float64 oracle on random shapes", "[router][sparsemixer][oracle]") {
    std::mt19937_64 rng(90);
    for (int trial = 0; trial < 200; ++trial) {
        std::int64_t const E = std::uniform_int_distribution<std::int64_t>(2, 16)(rng),
                           T = std::uniform_int_distribution<std::int64_t>(0, 8)(rng);
        float const eps = std::vector<float>{0.01f, 0.05f, 0.2f}[trial % 3];
        // Logits on a coarse grid so that near-max neighbours exist, scaled so both signs of m occur.
        auto const logits = smoe_test::normal(rng, std::size_t(T * E), 0.3, 1.0 / 64);
        auto const o =
            route_controlled(smoe::router::SparseMixer({.num_experts = E, .router_jitter_noise = eps}), logits, {});
        for (std::int64_t t = 0; t < T; ++t) {
            float const* x = &logits[t * E];
            bool near = false;
            auto pick = [&](int skip, double& w) {
                int best = -1;
                for (int e = 0; e < E; ++e)
                    if (e != skip && (best < 0 || x[e] > x[best])) best = e;
                double const m = x[best];
                double z = 0;
                for (int j = 0; j < E; ++j) {
                    if (j == skip) continue;
                    double const f = std::max(std::fabs(double(x[j])), m), r = f == 0 ? 0.0 : (m - x[j]) / f;
                    near |= std::fabs(r - 2.0 * eps) < 1e-5;
                    if (!(r > 2.0 * eps)) z += std::exp(x[j] - m);
                }
                w = 1 / z;
                return best;
            };
            std::vector<double> w(2);
            std::vector<int> ids = {pick(-1, w[0]), 0};
            ids[1] = pick(ids[0], w[1]);
            if (near) continue;
            row_order(ids, w);
            check_oracle_row(o.r, t, ids, w);
        }
    }
}

// ---- router::Hash (DeepSeek-V4's hash layers, families.md §2.2); values from float64 by hand. ----

TEST_CASE("hash routing selects the table row of each token id and weighs by the gate's scores",
          "[router][hash][spec]") {
    std::vector<std::int32_t> const table = {0, 1, 2, 3, 3, 0};  // vocab 3, k 2
    std::vector<float> const logits = {0.5f, -1.0f, 2.0f, 0.0f, 1.5f, 0.25f, -0.5f, 3.0f, -2.0f, 1.0f, 0.0f, 0.5f};
    std::vector<std::int32_t> const ids = {1, 2, 0};
    smoe::router::Hash const router(
        {.num_experts = 4, .top_k = 2, .vocab_size = 3, .tid2eid = table, .routed_scaling_factor = 1.5f});
    std::vector<std::byte> ws(smoe::routing_workspace_size(router, 3));
    MatrixView<float const> const lv(logits.data(), 3, 4);
    auto const r = smoe::route(router, lv, {}, ws, {}, smoe::TokenIds{ids});
    check_row(r, 0, {2, 3}, {0.954886, 0.545114});  // sqrt(softplus), renormalised over the row, x 1.5
    check_row(r, 1, {3, 0}, {0.858585, 0.641415});
    check_row(r, 2, {1, 0}, {1.144263, 0.355737});
    check_views_agree(r, {.no_padding = true, .sorted_rows = true, .all_dispatched = true});
    smoe::router::Hash const plain({.num_experts = 4,
                                    .top_k = 2,
                                    .vocab_size = 3,
                                    .tid2eid = table,
                                    .score_func = ScoreFunc::softmax,
                                    .norm_topk_prob = false});
    auto const p = smoe::route(plain, lv, {}, ws, {}, smoe::TokenIds{ids});
    check_row(p, 0, {2, 3}, {0.7101, 0.0961016});
    check_row(p, 2, {1, 0}, {0.494023, 0.024596});
    // A removed expert leaves its slot empty (padding at the end) and the rest renormalises to r.
    std::vector<std::uint8_t> const mask = {1, 1, 1, 0};
    auto const m = smoe::route(router, lv, {}, ws, {.expert_mask = mask}, smoe::TokenIds{ids});
    CHECK(m.expert_ids(0, 0) == 2);
    CHECK(m.expert_weights(0, 0) == Approx(1.5));
    CHECK(m.expert_ids(0, 1) == -1);
    CHECK(m.expert_weights(0, 1) == 0.0f);
    check_row(m, 2, {1, 0}, {1.144263, 0.355737});
    check_views_agree(m, {.sorted_rows = true});
    // Errors: no token ids, an id past the vocabulary, a bad table.
    CHECK(error_argument([&] { smoe::route(router, lv, {}, ws); }) == "token_ids");
    std::vector<std::int32_t> const past = {1, 3, 0};
    CHECK(error_argument([&] { smoe::route(router, lv, {}, ws, {}, smoe::TokenIds{past}); }) == "token_ids");
    std::vector<std::int32_t> const dup = {0, 0, 2, 3, 3, 0}, out_of_range = {0, 4, 2, 3, 3, 0};
    CHECK(error_argument([&] {
              smoe::router::Hash h({.num_experts = 4, .top_k = 2, .vocab_size = 3, .tid2eid = dup});
          }) == "tid2eid");
    CHECK(error_argument([&] {
              smoe::router::Hash h({.num_experts = 4, .top_k = 2, .vocab_size = 3, .tid2eid = out_of_range});
          }) == "tid2eid");
    CHECK(error_argument([&] {
              smoe::router::Hash h({.num_experts = 4, .top_k = 2, .vocab_size = 2, .tid2eid = table});
          }) == "tid2eid");
}
