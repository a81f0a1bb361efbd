// The sharded layer's code path on one rank (SelfCommunicator, no MPI): expert placement, equality
// with smoe::MoELayer, statistics, and argument checks. Built whether or not MPI is found.

#include <cstring>
#include <random>
#include <vector>

#include <catch2/catch.hpp>

#include "dist_model.hpp"
#include "smoe/dist/layer.hpp"
#include "smoe/smoe.hpp"

using smoe::MatrixView;
using smoe::dist::ExpertPlacement;
using Catch::Matchers::Contains;

namespace {

using Model = smoe_test::LayerModel<smoe::router::TopK>;
using Single = smoe_test::SwiGLULayer<smoe::router::TopK>;
using Sharded = smoe::dist::MoELayer<smoe::router::TopK, smoe::expert::SwiGLU<float>, smoe::balance::None,
                                     smoe::dist::SelfCommunicator>;

std::vector<std::int32_t> ranks_of(ExpertPlacement const& p) {
    std::vector<std::int32_t> v;
    for (std::int64_t e = 0; e < p.num_experts(); ++e) v.push_back(p.rank_of(e));
    return v;
}

}  // namespace

TEST_CASE("contiguous placement gives rank p the experts [p E / P, (p + 1) E / P)", "[dist][placement]") {
    auto const p = ExpertPlacement::contiguous(8, 3);
    CHECK(ranks_of(p) == std::vector<std::int32_t>{0, 0, 1, 1, 1, 2, 2, 2});
    CHECK(p.num_local(0) == 2);
    CHECK(p.num_local(1) == 3);
    CHECK(p.max_local() == 3);
    CHECK(p.global_id(1, 0) == 2);
    CHECK(p.global_id(2, 2) == 7);
    CHECK(p.local_of(4) == 2);
    // More ranks than experts: some ranks own nothing.
    auto const q = ExpertPlacement::contiguous(2, 4);
    CHECK(ranks_of(q) == std::vector<std::int32_t>{1, 3});
    CHECK(q.num_local(0) == 0);
    CHECK(q.num_local(2) == 0);
}

TEST_CASE("a placement table orders each rank's experts by global id", "[dist][placement]") {
    auto const p = ExpertPlacement::from_table({1, 0, 1, 0, 1}, 3);
    CHECK(p.num_local(0) == 2);
    CHECK(p.num_local(1) == 3);
    CHECK(p.num_local(2) == 0);
    CHECK(p.global_id(0, 0) == 1);
    CHECK(p.global_id(0, 1) == 3);
    CHECK(p.global_id(1, 2) == 4);
    CHECK(p.local_of(2) == 1);
    CHECK_THROWS_WITH(ExpertPlacement::from_table({0, 2}, 2), Contains("rank_of") && Contains("2 at expert 1"));
    CHECK_THROWS_WITH(ExpertPlacement::contiguous(4, 0), Contains("num_ranks"));
    CHECK_THROWS_WITH(ExpertPlacement::contiguous(0, 2), Contains("num_experts"));
}

TEST_CASE("on one rank the sharded layer equals smoe::MoELayer bit for bit", "[dist][layer]") {
    std::mt19937_64 rng(11);
    auto const m = Model::random(rng, 19, 13, 6);
    smoe::router::TopKConfig const rc{.num_experts = 6, .top_k = 2, .norm_topk_prob = true};
    Single single({.router = rc, .expert = m.expert_cfg(), .max_tokens = 40}, m.weights());
    smoe::dist::SelfCommunicator comm;
    auto const pl = ExpertPlacement::contiguous(6, 1);
    Sharded sharded(comm, pl, {.router = rc, .expert = m.expert_cfg(), .max_tokens = 40},
                    {.gate = MatrixView<float const>(m.gate.data(), 6, 19), .experts = m.experts()});
    for (std::int64_t T : {0, 1, 7, 40}) {
        INFO("T = " << T);
        auto const x = smoe_test::normal(rng, static_cast<std::size_t>(T * 19), 1.0);
        std::vector<float> want(x.size(), -1.0f), got(x.size(), -2.0f);
        single.forward(MatrixView<float const>(x.data(), T, 19), MatrixView<float>(want.data(), T, 19));
        auto const r = sharded.forward(MatrixView<float const>(x.data(), T, 19), MatrixView<float>(got.data(), T, 19));
        CHECK(r.num_tokens == T);
        CHECK(smoe_test::same_bits(want, 0, got, 19));
        CHECK(sharded.rows_computed() == 2 * T);
        CHECK(sharded.rows_sent_remote() == 0);
        CHECK(sharded.stats().kept == single.stats().kept);
        auto const g = sharded.global_stats();
        CHECK(g.global.kept == single.stats().kept);
        CHECK(g.rank_load == std::vector<std::int64_t>{2 * T});
        CHECK(g.rank_imbalance() == (T > 0 ? 1.0 : 0.0));
    }
}

TEST_CASE("the sharded layer rejects inconsistent construction arguments", "[dist][layer][errors]") {
    std::mt19937_64 rng(5);
    auto const m = Model::random(rng, 8, 4, 4);
    smoe::router::TopKConfig const rc{.num_experts = 4, .top_k = 1};
    smoe::dist::SelfCommunicator comm;
    Sharded::Weights const w{.gate = MatrixView<float const>(m.gate.data(), 4, 8), .experts = m.experts()};
    CHECK_THROWS_WITH(Sharded(comm, ExpertPlacement::contiguous(4, 2), {.router = rc, .expert = m.expert_cfg()}, w),
                      Contains("placement.num_ranks") && Contains("communicator size 1"));
    CHECK_THROWS_WITH(Sharded(comm, ExpertPlacement::contiguous(5, 1), {.router = rc, .expert = m.expert_cfg()}, w),
                      Contains("placement.num_experts"));
    auto const three = smoe_test::local_experts(m, ExpertPlacement::from_table({0, 0, 0, 0}, 1), 0);
    smoe::expert::SwiGLUConfig const cfg3{8, 4, 3};
    CHECK_THROWS_WITH(Sharded(comm, ExpertPlacement::contiguous(4, 1), {.router = rc, .expert = cfg3},
                              {.gate = w.gate, .experts = smoe::expert::SwiGLUWeights<float>::dense(three.w1.data(), three.w3.data(), three.w2.data(), cfg3)}),
                      Contains("expert.num_experts") && Contains("(4 on rank 0)"));
    CHECK_THROWS_WITH(Sharded(comm, ExpertPlacement::contiguous(4, 1), {.router = rc, .expert = m.expert_cfg()},
                              {.gate = MatrixView<float const>(m.gate.data(), 3, 8), .experts = m.experts()}),
                      Contains("gate"));
    CHECK_THROWS_WITH(Sharded(comm, ExpertPlacement::contiguous(4, 1), {.router = rc, .expert = m.expert_cfg(), .max_tokens = -1}, w),
                      Contains("max_tokens"));
}

TEST_CASE("the sharded layer rejects bad input and stays usable", "[dist][layer][errors]") {
    std::mt19937_64 rng(6);
    auto const m = Model::random(rng, 8, 4, 4);
    smoe::router::TopKConfig const rc{.num_experts = 4, .top_k = 2};
    smoe::dist::SelfCommunicator comm;
    Sharded layer(comm, ExpertPlacement::contiguous(4, 1), {.router = rc, .expert = m.expert_cfg(), .max_tokens = 4},
                  {.gate = MatrixView<float const>(m.gate.data(), 4, 8), .experts = m.experts()});
    std::vector<float> x(5 * 9, 0.5f), y(5 * 9);
    CHECK_THROWS_WITH(layer.forward(MatrixView<float const>(x.data(), 2, 9), MatrixView<float>(y.data(), 2, 9)), Contains("'x'"));
    CHECK_THROWS_WITH(layer.forward(MatrixView<float const>(x.data(), 5, 8), MatrixView<float>(y.data(), 5, 8)), Contains("x.rows"));
    std::vector<std::byte> small(64);
    CHECK_THROWS_WITH(layer.forward(MatrixView<float const>(x.data(), 2, 8), MatrixView<float>(y.data(), 2, 8), small),
                      Contains("workspace"));
    x[3] = std::numeric_limits<float>::quiet_NaN();
    CHECK_THROWS_WITH(layer.forward(MatrixView<float const>(x.data(), 2, 8), MatrixView<float>(y.data(), 2, 8)), Contains("logits"));
    x[3] = 0.5f;
    CHECK_NOTHROW(layer.forward(MatrixView<float const>(x.data(), 2, 8), MatrixView<float>(y.data(), 2, 8)));
}
