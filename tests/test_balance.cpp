// Balancers in the layer: balance::Capacity (balance.md §3), balance::LossFreeBias (§4) and the
// statistics every balancer records (§6), against the spec's worked examples and independent loops.

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <vector>

#include <catch2/catch.hpp>

#include "common/data.hpp"
#include "smoe/balance/capacity.hpp"
#include "smoe/balance/loss_free_bias.hpp"
#include "smoe/kernels/reference/reference.hpp"
#include "smoe/smoe.hpp"

using smoe::MatrixView;
using smoe::balance::Capacity;
using smoe::balance::DropPolicy;
using smoe::balance::LossFreeBias;
using smoe::router::TopKConfig;
using Catch::Matchers::Contains;

namespace {

template <class Balancer>
using LayerWith = smoe::MoELayer<smoe::router::TopK, smoe::expert::SwiGLU<float>, Balancer>;

// balance.md §3: T = 8, E = 4, k = 2, softmax, top-2, renormalised.
std::vector<float> const kLogits = {2, 1, 0, -1, 1.5f, 0, 1, -1, .5f, 2, 0, 0, 2.5f, 0, .5f, 0,
                                    1, 0, 0, 2,  0, .5f, 3, 0, 3, 0, 0, 1, 1.2f, 1, 0, 0};

// A layer whose gate is the identity (d = E = 4), so x = logits, with small random experts.
struct Model {
    std::int64_t d = 4, f = 5, E = 4;
    std::vector<float> gate, w1, w3, w2;
    explicit Model(std::uint64_t seed) {
        std::mt19937_64 rng(seed);
        gate.assign(16, 0.0f);
        for (int i = 0; i < 4; ++i) gate[i * 4 + i] = 1.0f;
        w1 = smoe_test::normal(rng, E * f * d, 0.5);
        w3 = smoe_test::normal(rng, E * f * d, 0.5);
        w2 = smoe_test::normal(rng, E * d * f, 0.5);
    }
    smoe::expert::SwiGLUConfig expert_cfg() const { return {d, f, E}; }
    smoe::expert::SwiGLUWeights<float> experts() const {
        return smoe::expert::SwiGLUWeights<float>::dense(w1.data(), w3.data(), w2.data(), expert_cfg());
    }
    template <class Balancer>
    LayerWith<Balancer> layer(typename Balancer::Config const& bal, std::int64_t max_tokens = 8) const {
        return LayerWith<Balancer>({.router = {.num_experts = 4, .top_k = 2, .norm_topk_prob = true},
                                    .expert = expert_cfg(), .balance = bal, .max_tokens = max_tokens},
                                   {.gate = MatrixView<float const>(gate.data(), 4, 4), .experts = experts()});
    }
};

std::vector<std::pair<int, int>> dropped_pairs(smoe::RoutingResult const& r) {
    std::vector<std::pair<int, int>> out;
    for (std::int64_t t = 0; t < r.num_tokens; ++t)
        for (std::int64_t j = 0; j < r.k; ++j)
            if (r.dropped[t * r.k + j]) out.emplace_back(int(t), r.expert_ids(t, j));
    return out;
}

// The oracle's output for the routing with the dropped slots removed (and weights as given).
std::vector<double> expected_output(Model const& m, smoe::RoutingResult const& r, std::vector<float> const& x,
                                    std::vector<float> weights) {
    std::vector<std::int32_t> ids(r.expert_ids.data, r.expert_ids.data + r.num_tokens * r.k);
    for (std::size_t s = 0; s < ids.size(); ++s)
        if (!r.dropped.empty() && r.dropped[s]) ids[s] = -1;
    auto const ref = smoe::reference::from_token_major(r.num_tokens, r.k, m.E, ids, weights);
    return smoe::reference::combine_swiglu(ref.view(), m.experts(), MatrixView<float const>(x.data(), r.num_tokens, m.d));
}

void check_close(std::vector<float> const& y, std::vector<double> const& ref, double bound) {
    REQUIRE(y.size() == ref.size());
    for (std::size_t i = 0; i < y.size(); ++i) CHECK(std::fabs(double(y[i]) - ref[i]) <= bound * (1.0 + std::fabs(ref[i])));
}

}  // namespace

TEST_CASE("capacity follows Megatron's rounding, then min_capacity and alignment", "[balance][capacity][spec]") {
    smoe::balance::CapacityConfig c{.capacity_factor = 1.25};
    CHECK(c.capacity(8, 2, 4) == 5);   // Megatron and DeepSpeed 5 (Tutel 4)
    CHECK(c.capacity(10, 2, 4) == 7);  // 6.25 rounds up
    CHECK(smoe::balance::CapacityConfig{.capacity_factor = 1.1}.capacity(150, 1, 3) == 56);  // double order, not 55
    CHECK(smoe::balance::CapacityConfig{.capacity_factor = 1.0}.capacity(0, 2, 4) == 0);
    CHECK(smoe::balance::CapacityConfig{.capacity_factor = 1.0, .min_capacity = 8}.capacity(8, 2, 4) == 8);
    CHECK(smoe::balance::CapacityConfig{.capacity_factor = 1.0, .capacity_alignment = 3}.capacity(8, 2, 4) == 6);
    CHECK_THROWS_WITH(Capacity({.capacity_factor = 0.0}), Contains("moe_expert_capacity_factor"));
    CHECK_THROWS_WITH(Capacity({.capacity_factor = -1.0}), Contains("moe_expert_capacity_factor"));
    CHECK_THROWS_WITH(Capacity({.capacity_factor = INFINITY}), Contains("moe_expert_capacity_factor"));
    CHECK_THROWS_WITH(Capacity({.capacity_factor = 1.0, .min_capacity = -1}), Contains("min_capacity"));
    CHECK_THROWS_WITH(Capacity({.capacity_factor = 1.0, .capacity_alignment = 0}), Contains("capacity_alignment"));
    CHECK(smoe::balance::parse_drop_policy("probs") == DropPolicy::probs);
    CHECK(smoe::balance::parse_drop_policy("position") == DropPolicy::position);
    CHECK(smoe::balance::parse_drop_policy("slot_priority") == DropPolicy::slot_priority);
    CHECK_THROWS_WITH(smoe::balance::parse_drop_policy("prob"), Contains("moe_token_drop_policy") && Contains("\"prob\""));
}

TEST_CASE("capacity drops the spec's pairs under each drop policy", "[balance][capacity][spec]") {
    Model const m(1);
    struct Case {
        DropPolicy policy;
        std::vector<std::pair<int, int>> dropped;
    };
    std::vector<Case> const cases = {{DropPolicy::probs, {{2, 0}, {4, 0}, {7, 0}}},
                                     {DropPolicy::position, {{4, 0}, {6, 0}, {7, 0}}},
                                     {DropPolicy::slot_priority, {{2, 0}, {4, 0}, {7, 0}}}};
    for (auto const& c : cases) {
        INFO("policy " << smoe::balance::to_string(c.policy));
        auto layer = m.layer<Capacity>({.capacity_factor = 1.0, .drop_policy = c.policy});
        std::vector<float> y(32, std::numeric_limits<float>::quiet_NaN());
        auto const r = layer.forward(MatrixView<float const>(kLogits.data(), 8, 4), MatrixView<float>(y.data(), 8, 4));
        CHECK(layer.balancer().last_capacity() == 4);
        CHECK(dropped_pairs(r) == c.dropped);
        for (std::int64_t e = 0; e < 4; ++e) CHECK(r.load(e) == std::vector<int>{4, 4, 3, 2}[e]);
        auto const& s = layer.stats();
        CHECK(s.routed == std::vector<std::int64_t>{7, 4, 3, 2});
        CHECK(s.kept == std::vector<std::int64_t>{4, 4, 3, 2});
        CHECK(s.dropped == std::vector<std::int64_t>{3, 0, 0, 0});
        CHECK(s.drop_rate() == Approx(3.0 / 16));
        // Kept slots keep their weights; dropped ones contribute nothing.
        std::vector<float> w(r.expert_weights.data, r.expert_weights.data + 16);
        check_close(y, expected_output(m, r, kLogits, w), 2e-5);
        if (c.policy == DropPolicy::probs) {
            CHECK(r.expert_ids(2, 0) == 1);
            CHECK(r.expert_weights(2, 0) == Approx(0.817574).epsilon(1e-5));
        }
    }
}

TEST_CASE("renormalize_after_drop reproduces DeepSpeed's gates", "[balance][capacity][spec]") {
    Model const m(2);
    auto layer = m.layer<Capacity>({.capacity_factor = 1.0, .renormalize_after_drop = true});
    std::vector<float> y(32);
    auto const r = layer.forward(MatrixView<float const>(kLogits.data(), 8, 4), MatrixView<float>(y.data(), 8, 4));
    CHECK(r.expert_ids(2, 0) == 1);
    CHECK(r.expert_weights(2, 0) == 1.0f);  // token 2 keeps expert 1 alone
    CHECK(r.expert_weights(0, 0) == Approx(0.731059).epsilon(1e-5));  // token 0 lost nothing
    std::vector<float> w(r.expert_weights.data, r.expert_weights.data + 16);
    check_close(y, expected_output(m, r, kLogits, w), 2e-5);
}

TEST_CASE("pad_to_capacity computes zero rows that are never scattered", "[balance][capacity][padding]") {
    Model const m(3);
    auto plain = m.layer<Capacity>({.capacity_factor = 1.0});
    auto padded = m.layer<Capacity>({.capacity_factor = 1.0, .pad_to_capacity = true});
    std::vector<float> y1(32), y2(32);
    auto const r1 = plain.forward(MatrixView<float const>(kLogits.data(), 8, 4), MatrixView<float>(y1.data(), 8, 4));
    auto const r2 = padded.forward(MatrixView<float const>(kLogits.data(), 8, 4), MatrixView<float>(y2.data(), 8, 4));
    CHECK(r1.padded_rows == 0);
    CHECK(r2.padded_rows == 4);
    // Rows are independent (experts.md rule 3), so padding changes no bit of the output.
    CHECK(std::memcmp(y1.data(), y2.data(), y1.size() * sizeof(float)) == 0);
    // A capacity above T pads every expert to more rows than there are tokens.
    auto wide = m.layer<Capacity>({.capacity_factor = 4.0, .pad_to_capacity = true});
    std::vector<float> y3(32);
    auto const r3 = wide.forward(MatrixView<float const>(kLogits.data(), 8, 4), MatrixView<float>(y3.data(), 8, 4));
    CHECK(r3.padded_rows == 16);
    CHECK(dropped_pairs(r3).empty());
}

TEST_CASE("a token whose every slot is dropped gets zero and its NaN goes nowhere", "[balance][capacity][edge]") {
    Model const m(4);
    auto layer = m.layer<Capacity>({.capacity_factor = 0.25, .drop_policy = DropPolicy::position});  // C = 1
    // Precomputed routing: every token picks experts 0 and 1; only token 0 keeps them.
    std::vector<std::int32_t> ids = {0, 1, 0, 1, 0, 1, 1, 0};
    std::vector<float> w = {0.6f, 0.4f, 0.7f, 0.3f, 0.5f, 0.5f, 0.9f, 0.1f};
    std::mt19937_64 rng(5);
    std::vector<float> x = smoe_test::normal(rng, 16, 1.0);
    x[2 * 4 + 1] = std::numeric_limits<float>::quiet_NaN();  // token 2: all slots dropped
    std::vector<float> y(16, -1.0f);
    std::vector<std::byte> ws(layer.workspace_size());
    auto const r = layer.forward_routed(MatrixView<float const>(x.data(), 4, 4), MatrixView<std::int32_t const>(ids.data(), 4, 2),
                                        MatrixView<float const>(w.data(), 4, 2), MatrixView<float>(y.data(), 4, 4), ws);
    CHECK(r.nnz() == 2);
    for (std::int64_t t = 1; t < 4; ++t)
        for (std::int64_t i = 0; i < 4; ++i) CHECK(y[t * 4 + i] == 0.0f);
    for (std::int64_t i = 0; i < 4; ++i) CHECK(std::isfinite(y[i]));
    CHECK(layer.stats().kept == std::vector<std::int64_t>{1, 1, 0, 0});
}

TEST_CASE("capacity matches an independent drop computation on random routings", "[balance][capacity][random]") {
    std::mt19937_64 rng(6);
    for (int trial = 0; trial < 40; ++trial) {
        std::int64_t const E = 2 + static_cast<std::int64_t>(rng() % 10), k = 1 + static_cast<std::int64_t>(rng() % std::min<std::int64_t>(E, 4)),
                           T = static_cast<std::int64_t>(rng() % 60), d = 3 + static_cast<std::int64_t>(rng() % 9), f = 2 + static_cast<std::int64_t>(rng() % 7);
        auto const policy = static_cast<DropPolicy>(rng() % 3);
        double const cf = 0.25 + double(rng() % 8) * 0.25;
        bool const renorm = rng() % 2;
        INFO("trial " << trial << ": E " << E << ", k " << k << ", T " << T << ", cf " << cf << ", " << smoe::balance::to_string(policy));
        auto gate = smoe_test::normal(rng, E * d, 1.0), w1 = smoe_test::normal(rng, E * f * d, 0.5),
             w3 = smoe_test::normal(rng, E * f * d, 0.5), w2 = smoe_test::normal(rng, E * d * f, 0.5);
        // A skewed gate so that some experts overflow.
        for (std::int64_t i = 0; i < d; ++i) gate[i] += 1.5f;
        auto const x = smoe_test::normal(rng, std::max<std::int64_t>(T, 1) * d, 1.0);
        smoe::expert::SwiGLUConfig const ec{d, f, E};
        auto const experts = smoe::expert::SwiGLUWeights<float>::dense(w1.data(), w3.data(), w2.data(), ec);
        LayerWith<Capacity> layer({.router = {.num_experts = E, .top_k = k}, .expert = ec,
                                   .balance = {.capacity_factor = cf, .drop_policy = policy, .renormalize_after_drop = renorm},
                                   .max_tokens = std::max<std::int64_t>(T, 1)},
                                  {.gate = MatrixView<float const>(gate.data(), E, d), .experts = experts});
        std::vector<float> y(static_cast<std::size_t>(std::max<std::int64_t>(T, 1) * d));
        auto const r = layer.forward(MatrixView<float const>(x.data(), T, d), MatrixView<float>(y.data(), T, d));

        // Independent: per expert, list (token, slot, weight) in token order, order by the policy,
        // keep the first C.
        std::int64_t const C = static_cast<std::int64_t>(std::ceil(double(T) * double(k) / double(E) * cf));
        std::vector<std::uint8_t> want_dropped(static_cast<std::size_t>(T * k), 0);
        for (std::int64_t e = 0; e < E; ++e) {
            struct Pair {
                std::int64_t t, j;
                float w;
            };
            std::vector<Pair> pairs;
            for (std::int64_t t = 0; t < T; ++t)
                for (std::int64_t j = 0; j < k; ++j)
                    if (r.expert_ids(t, j) == e) pairs.push_back({t, j, r.expert_weights(t, j)});
            auto const before = [&](Pair const& a, Pair const& b) {
                if (policy == DropPolicy::probs) return a.w > b.w || (a.w == b.w && a.t < b.t);
                if (policy == DropPolicy::slot_priority) return a.j < b.j || (a.j == b.j && a.t < b.t);
                return a.t < b.t;
            };
            if (!renorm) std::sort(pairs.begin(), pairs.end(), before);
            // (with renormalisation the kept weights changed afterwards; compare the set only)
            if (renorm) continue;
            for (std::size_t i = static_cast<std::size_t>(C); i < pairs.size(); ++i) want_dropped[pairs[i].t * k + pairs[i].j] = 1;
        }
        if (!renorm)
            CHECK(std::vector<std::uint8_t>(r.dropped.begin(), r.dropped.end()) == want_dropped);
        for (std::int64_t e = 0; e < E; ++e) CHECK(r.load(e) <= C);
        std::vector<float> w(r.expert_weights.data, r.expert_weights.data + T * k);
        std::vector<std::int32_t> ids(r.expert_ids.data, r.expert_ids.data + T * k);
        for (std::size_t s = 0; s < ids.size(); ++s)
            if (r.dropped[s]) ids[s] = -1;
        auto const ref = smoe::reference::combine_swiglu(smoe::reference::from_token_major(T, k, E, ids, w).view(), experts,
                                                         MatrixView<float const>(x.data(), T, d));
        y.resize(static_cast<std::size_t>(T * d));
        check_close(y, ref, 2e-5);
        std::int64_t kept = 0;
        for (auto v : layer.stats().kept) kept += v;
        CHECK(kept == r.nnz());
    }
}

TEST_CASE("loss-free bias follows the spec's update rule", "[balance][bias][spec]") {
    LossFreeBias b({.num_experts = 4});
    // c = [6, 1, 0, 1]: mean 2, so b = [-0.001, 0.001, 0.001, 0.001].
    Model const m(7);
    auto layer = m.layer<LossFreeBias>({.num_experts = 4});
    std::vector<std::int32_t> ids = {0, -1, 0, 1, 0, -1, 0, 3, 0, -1, 0, -1};  // 6 tokens, K = 2
    std::vector<float> w(12, 0.5f);
    std::vector<float> x(24, 0.1f), y(24);
    std::vector<std::byte> ws(layer.workspace_size());
    auto run = [&] {
        layer.forward_routed(MatrixView<float const>(x.data(), 6, 4), MatrixView<std::int32_t const>(ids.data(), 6, 2),
                             MatrixView<float const>(w.data(), 6, 2), MatrixView<float>(y.data(), 6, 4), ws);
    };
    run();
    CHECK(std::vector<std::int64_t>(layer.balancer().pending_counts().begin(), layer.balancer().pending_counts().end()) ==
          std::vector<std::int64_t>{6, 1, 0, 1});
    layer.balancer().update();
    std::vector<float> const expect = {-0.001f, 0.001f, 0.001f, 0.001f};
    CHECK(std::vector<float>(layer.balancer().bias().begin(), layer.balancer().bias().end()) == expect);
    for (auto c : layer.balancer().pending_counts()) CHECK(c == 0);
    // c = [3, 2, 2, 1]: signs [-1, 0, 0, +1] (sign(0) = 0).
    ids = {0, 1, 0, 2, 0, 1, 2, 3, -1, -1, -1, -1};
    run();
    layer.balancer().update();
    CHECK(layer.balancer().bias()[0] == -0.002f);
    CHECK(layer.balancer().bias()[1] == 0.001f);
    CHECK(layer.balancer().bias()[2] == 0.001f);
    CHECK(layer.balancer().bias()[3] == 0.002f);
}

TEST_CASE("a bias update flips a selection at the next forward and never enters the weights", "[balance][bias]") {
    Model m(8);
    auto layer = LayerWith<LossFreeBias>(
        {.router = {.num_experts = 4, .top_k = 1, .score_func = smoe::router::ScoreFunc::sigmoid}, .expert = m.expert_cfg(),
         .balance = {.num_experts = 4, .bias_update_rate = 0.05, .update_every_forward = true}, .max_tokens = 8},
        {.gate = MatrixView<float const>(m.gate.data(), 4, 4), .experts = m.experts()});
    // Every token prefers expert 0 slightly over expert 1.
    std::vector<float> x = {0.1f, 0.0f, -2.0f, -2.0f, 0.1f, 0.0f, -2.0f, -2.0f}, y(8);
    auto const r1 = layer.forward(MatrixView<float const>(x.data(), 2, 4), MatrixView<float>(y.data(), 2, 4));
    CHECK(r1.expert_ids(0, 0) == 0);
    // After one automatic update: b0 = -0.05 (overloaded), b1..b3 = +0.05; sigmoid(0.1) - 0.05 < sigmoid(0) + 0.05.
    CHECK(layer.balancer().bias()[0] == -0.05f);
    auto const r2 = layer.forward(MatrixView<float const>(x.data(), 2, 4), MatrixView<float>(y.data(), 2, 4));
    CHECK(r2.expert_ids(0, 0) == 1);
    CHECK(r2.expert_weights(0, 0) == Approx(0.5).epsilon(1e-6));  // sigmoid(0): the unbiased score
}

TEST_CASE("the bias can be saved, restored, seeded from the checkpoint and frozen", "[balance][bias]") {
    Model m(9);
    std::vector<float> const ckpt = {0.5f, -0.25f, 0.0f, 0.125f};
    auto layer = LayerWith<LossFreeBias>(
        {.router = {.num_experts = 4, .top_k = 2}, .expert = m.expert_cfg(), .balance = {.num_experts = 4, .bias_update_rate = 0.0}},
        {.gate = MatrixView<float const>(m.gate.data(), 4, 4), .expert_bias = ckpt, .experts = m.experts()});
    CHECK(std::vector<float>(layer.balancer().bias().begin(), layer.balancer().bias().end()) == ckpt);
    std::vector<float> y(32);
    layer.forward(MatrixView<float const>(kLogits.data(), 8, 4), MatrixView<float>(y.data(), 8, 4));
    layer.balancer().update();  // u = 0: frozen
    CHECK(std::vector<float>(layer.balancer().bias().begin(), layer.balancer().bias().end()) == ckpt);
    std::vector<float> const saved(layer.balancer().bias().begin(), layer.balancer().bias().end());
    layer.balancer().set_bias(std::vector<float>{0, 0, 0, 0});
    layer.balancer().set_bias(saved);
    CHECK(std::vector<float>(layer.balancer().bias().begin(), layer.balancer().bias().end()) == ckpt);
    CHECK_THROWS_WITH(layer.balancer().set_bias(std::vector<float>{0, 0, 0}), Contains("expert_bias") && Contains("length 3"));
    CHECK_THROWS_WITH(layer.balancer().set_bias(std::vector<float>{0, NAN, 0, 0}), Contains("expert_bias") && Contains("expert 1"));
    CHECK_THROWS_WITH(LossFreeBias({.num_experts = 4, .bias_update_rate = -1.0}), Contains("moe_router_bias_update_rate"));
    CHECK_THROWS_WITH(LossFreeBias({.num_experts = 4, .bias_update_rate = NAN}), Contains("moe_router_bias_update_rate"));
    CHECK_THROWS_WITH(m.layer<LossFreeBias>({.num_experts = 5}), Contains("balance.num_experts"));
}

TEST_CASE("statistics accumulate over calls, reset, and stay finite at T = 0", "[balance][stats]") {
    Model const m(10);
    auto layer = m.layer<smoe::balance::None>({});
    std::vector<float> y(32);
    layer.forward(MatrixView<float const>(kLogits.data(), 8, 4), MatrixView<float>(y.data(), 8, 4));
    auto const& s = layer.stats();
    CHECK(s.routed == std::vector<std::int64_t>{7, 4, 3, 2});
    CHECK(s.kept == s.routed);
    CHECK(s.max_over_mean(smoe::LoadKind::routed) == Approx(1.75));
    CHECK(s.max_violation() == Approx(0.75));
    CHECK(s.cv_squared() == Approx(0.21875));
    CHECK(s.drop_rate() == 0.0);
    CHECK(s.tokens == 8);
    CHECK(s.slots == 16);
    layer.forward(MatrixView<float const>(kLogits.data(), 2, 4), MatrixView<float>(y.data(), 2, 4));  // tokens 0, 1: (0,1) (0,2)
    CHECK(s.routed == std::vector<std::int64_t>{2, 1, 1, 0});
    CHECK(s.cumulative_kept == std::vector<std::uint64_t>{9, 5, 4, 2});
    CHECK(s.calls == 2);
    CHECK(s.cumulative_tokens == 10);
    CHECK(s.dead_experts() == 1);
    CHECK(s.dead_experts_cumulative() == 0);
    layer.balancer().reset_stats();
    CHECK(s.cumulative_kept == std::vector<std::uint64_t>{0, 0, 0, 0});
    CHECK(s.routed == std::vector<std::int64_t>{2, 1, 1, 0});  // the last call stays readable
    layer.forward(MatrixView<float const>(kLogits.data(), 0, 4), MatrixView<float>(y.data(), 0, 4));
    CHECK(s.max_over_mean() == 0.0);
    CHECK(s.cv_squared() == 0.0);
    CHECK(s.max_violation() == 0.0);
    CHECK(s.drop_rate() == 0.0);
    CHECK(s.dead_experts() == 4);
}

TEST_CASE("the losses are computed only when asked, from the layer's logits", "[balance][stats][losses]") {
    Model const m(11);
    auto plain = m.layer<smoe::balance::None>({});
    auto with = m.layer<smoe::balance::None>({.stats = {.aux_loss_coeff = 1.0, .z_loss_coeff = 1e-3}});
    std::vector<float> y(32);
    plain.forward(MatrixView<float const>(kLogits.data(), 8, 4), MatrixView<float>(y.data(), 8, 4));
    with.forward(MatrixView<float const>(kLogits.data(), 8, 4), MatrixView<float>(y.data(), 8, 4));
    CHECK_FALSE(plain.stats().aux_loss.has_value());
    CHECK_FALSE(plain.stats().z_loss.has_value());
    REQUIRE(with.stats().aux_loss.has_value());
    CHECK(*with.stats().aux_loss == Approx(1.21259196).epsilon(1e-6));  // balance.md §6, Megatron
    CHECK(*with.stats().z_loss == Approx(0.00685830).epsilon(1e-5));
    // The capacity balancer reports the same values: losses use the router's choice, before dropping.
    auto cap = m.layer<Capacity>({.capacity_factor = 1.0, .stats = {.aux_loss_coeff = 1e-2}});
    cap.forward(MatrixView<float const>(kLogits.data(), 8, 4), MatrixView<float>(y.data(), 8, 4));
    CHECK(*cap.stats().aux_loss == Approx(1.21259196e-2).epsilon(1e-6));
    CHECK_THROWS_WITH(m.layer<smoe::balance::None>({.stats = {.aux_loss_coeff = NAN}}), Contains("moe_aux_loss_coeff"));
}

TEST_CASE("routing with a balancer outside a layer drops and counts as the layer does", "[balance][route]") {
    smoe::router::TopK router({.num_experts = 4, .top_k = 2, .norm_topk_prob = true});
    Capacity cap({.capacity_factor = 1.0, .drop_policy = DropPolicy::position});
    std::vector<std::byte> ws(smoe::routing_workspace_size(router, cap, 8));
    auto const r = smoe::route(router, cap, MatrixView<float const>(kLogits.data(), 8, 4), {}, ws);
    CHECK(dropped_pairs(r) == std::vector<std::pair<int, int>>{{4, 0}, {6, 0}, {7, 0}});
    CHECK(r.nnz() == 13);
    CHECK(cap.stats().kept == std::vector<std::int64_t>{4, 4, 3, 2});
    // A loss-free bias balancer supplies the selection bias itself.
    LossFreeBias bias({.num_experts = 4});
    bias.set_bias(std::vector<float>{0.0f, 0.0f, 0.0f, 5.0f});
    std::vector<std::byte> ws2(smoe::routing_workspace_size(router, bias, 8));
    auto const rb = smoe::route(router, bias, MatrixView<float const>(kLogits.data(), 8, 4), {}, ws2);
    for (std::int64_t t = 0; t < 8; ++t) CHECK((rb.expert_ids(t, 0) == 3 || rb.expert_ids(t, 1) == 3));
    CHECK(bias.pending_counts()[3] == 8);
}
