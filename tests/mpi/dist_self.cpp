// The sharded layer without MPI, built whether or not MPI is found: expert placement; one rank
// (SelfCommunicator) and several ranks as threads of this process (ThreadCommunicator), each equal to
// smoe::MoELayer bit for bit; statistics; argument checks, and a bad rank making every rank throw.

#include <cstring>
#include <exception>
#include <filesystem>
#include <functional>
#include <random>
#include <thread>
#include <vector>

#include <catch2/catch.hpp>
#include <unistd.h>

#include "common/formula.hpp"
#include "dist_model.hpp"
#include "thread_communicator.hpp"
#include "smoe/dist/layer.hpp"
#include "smoe/smoe.hpp"
#include "smoe/store/pack_experts.hpp"

using smoe::MatrixView;
using smoe::dist::ExpertPlacement;
using Catch::Matchers::Contains;

namespace {

using Model = smoe_test::LayerModel<smoe::router::TopK>;
using Single = smoe_test::SwiGLULayer<smoe::router::TopK>;
using Sharded = smoe::dist::MoELayer<smoe::router::TopK, smoe::expert::SwiGLU<float>, smoe::balance::None,
                                     smoe::dist::SelfCommunicator>;

using ThreadSharded = smoe::dist::MoELayer<smoe::router::TopK, smoe::expert::SwiGLU<float>, smoe::balance::None,
                                           smoe_test::ThreadCommunicator>;
using ThreadLlep = smoe::dist::MoELayer<smoe::router::TopK, smoe::expert::SwiGLU<float>, smoe::balance::LeastLoaded,
                                        smoe_test::ThreadCommunicator>;

// Runs f(comm) on P threads, one per rank; returns what each rank threw (null when nothing). Catch2's
// assertions are not thread-safe, so the checks happen after the join.
std::vector<std::exception_ptr> run_ranks(int P, std::function<void(smoe_test::ThreadCommunicator&)> const& f) {
    smoe_test::ThreadHub hub(P);
    std::vector<std::exception_ptr> errors(static_cast<std::size_t>(P));
    std::vector<std::thread> threads;
    for (int r = 0; r < P; ++r)
        threads.emplace_back([&, r] {
            smoe_test::ThreadCommunicator comm(hub, r);
            try {
                f(comm);
            } catch (...) {
                errors[static_cast<std::size_t>(r)] = std::current_exception();
            }
        });
    for (auto& t : threads) t.join();
    return errors;
}

std::string what(std::exception_ptr const& e) {
    try {
        if (e) std::rethrow_exception(e);
    } catch (std::exception const& x) {
        return x.what();
    }
    return "(nothing thrown)";
}

// Rank r's share of every batch through its layer: got[r][call] -> y rows.
template <class L>
void run_batches(L& layer, std::vector<smoe_test::SplitBatch> const& batches, int r, std::int64_t d,
                 std::vector<std::vector<std::vector<float>>>& got) {
    for (auto const& b : batches) {
        auto const x = b.of(r);
        std::vector<float> y(static_cast<std::size_t>(x.rows * d), -3.0f);
        layer.forward(x, MatrixView<float>(y.data(), x.rows, d));
        got[static_cast<std::size_t>(r)].push_back(std::move(y));
    }
}

// Every rank's rows of every call have the single-process layer's bits.
template <class S>
void check_against(S& single, std::vector<smoe_test::SplitBatch> const& batches, int P, std::int64_t d,
                   std::vector<std::vector<std::vector<float>>> const& got) {
    for (std::size_t i = 0; i < batches.size(); ++i) {
        auto const& b = batches[i];
        std::vector<float> want(static_cast<std::size_t>(b.total() * d));
        single.forward(b.all(), MatrixView<float>(want.data(), b.total(), d));
        for (int r = 0; r < P; ++r) {
            INFO("call " << i << ", rank " << r);
            CHECK(smoe_test::same_bits(want, b.first(r), got[static_cast<std::size_t>(r)][i], d));
        }
    }
}

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

TEST_CASE("a router bias (gpt-oss's logits = W x + b) keeps the sharded layer equal to smoe::MoELayer", "[dist][layer][gate_bias]") {
    std::mt19937_64 rng(12);
    auto const m = Model::random(rng, 19, 13, 6);
    auto const bias = smoe_test::normal(rng, 6, 2.0);  // large enough to change the selection
    smoe::router::TopKConfig const rc{.num_experts = 6, .top_k = 2, .score_after_topk = true};
    auto w = m.weights();
    w.gate_bias = bias;
    Single single({.router = rc, .expert = m.expert_cfg(), .max_tokens = 40}, w);
    Single unbiased({.router = rc, .expert = m.expert_cfg(), .max_tokens = 40}, m.weights());
    smoe::dist::SelfCommunicator comm;
    Sharded sharded(comm, ExpertPlacement::contiguous(6, 1), {.router = rc, .expert = m.expert_cfg(), .max_tokens = 40},
                    {.gate = MatrixView<float const>(m.gate.data(), 6, 19), .experts = m.experts(), .gate_bias = bias});
    auto const x = smoe_test::normal(rng, 40 * 19, 1.0);
    std::vector<float> want(x.size()), got(x.size(), -2.0f), plain(x.size());
    single.forward(MatrixView<float const>(x.data(), 40, 19), MatrixView<float>(want.data(), 40, 19));
    unbiased.forward(MatrixView<float const>(x.data(), 40, 19), MatrixView<float>(plain.data(), 40, 19));
    sharded.forward(MatrixView<float const>(x.data(), 40, 19), MatrixView<float>(got.data(), 40, 19));
    CHECK(smoe_test::same_bits(want, 0, got, 19));
    CHECK(want != plain);
    std::vector<float> const short_bias(5, 0.0f);
    CHECK_THROWS_WITH(Sharded(comm, ExpertPlacement::contiguous(6, 1), {.router = rc, .expert = m.expert_cfg()},
                              {.gate = MatrixView<float const>(m.gate.data(), 6, 19), .experts = m.experts(), .gate_bias = short_bias}),
                      Contains("gate_bias") && Contains("num_logits"));
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
    smoe::router::TopKConfig const identity{.num_experts = 4, .top_k = 1, .num_null_experts = 1};
    std::vector<float> const gate5(5 * 8, 0.0f);
    CHECK_THROWS_WITH(Sharded(comm, ExpertPlacement::contiguous(4, 1), {.router = identity, .expert = m.expert_cfg()},
                              {.gate = MatrixView<float const>(gate5.data(), 5, 8), .experts = m.experts()}),
                      Contains("router.num_null_experts"));
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

TEST_CASE("ranks as threads: the sharded layer equals smoe::MoELayer bit for bit", "[dist][layer][threads]") {
    constexpr int P = 3;
    constexpr std::int64_t d = 19, E = 8, Tm = 16;
    std::mt19937_64 rng(12);
    auto const m = Model::random(rng, d, 11, E);
    smoe::router::TopKConfig const rc{.num_experts = E, .top_k = 3, .norm_topk_prob = true};
    std::vector<std::vector<std::int64_t>> const patterns = {{5, 0, 7}, {0, 0, 0}, {0, 0, Tm}, {Tm, Tm, Tm}, {1, 1, 1}};
    // Contiguous blocks, and a table in which rank 1 owns no expert.
    for (auto const& pl : {ExpertPlacement::contiguous(E, P), ExpertPlacement::from_table({0, 2, 2, 0, 0, 2, 0, 2}, P)}) {
        std::vector<smoe_test::SplitBatch> batches;
        for (std::size_t i = 0; i < patterns.size(); ++i) batches.push_back(smoe_test::split_batch(700 + i, patterns[i], d));
        std::vector<std::vector<std::vector<float>>> got(P);  // [rank][call] -> y rows
        std::vector<std::vector<std::int64_t>> rank_load(P);  // [rank] -> the last call's rows per rank
        auto const errors = run_ranks(P, [&](smoe_test::ThreadCommunicator& comm) {
            int const r = comm.rank();
            auto const local = smoe_test::local_experts(m, pl, r);
            ThreadSharded layer(comm, pl, {.router = rc, .expert = local.cfg, .max_tokens = Tm},
                                {.gate = MatrixView<float const>(m.gate.data(), E, d), .experts = local.weights()});
            run_batches(layer, batches, r, d, got);
            rank_load[static_cast<std::size_t>(r)] = layer.global_stats().rank_load;
        });
        for (int r = 0; r < P; ++r) REQUIRE(what(errors[static_cast<std::size_t>(r)]) == "(nothing thrown)");
        Single single({.router = rc, .expert = m.expert_cfg(), .max_tokens = P * Tm}, m.weights());
        check_against(single, batches, P, d, got);
        // The last call, 1 token per rank with k = 3: 9 rows over the ranks' experts, the same view on every rank.
        std::int64_t rows = 0;
        for (auto v : rank_load[0]) rows += v;
        CHECK(rows == 9);
        CHECK(rank_load[1] == rank_load[0]);
        CHECK(rank_load[2] == rank_load[0]);
    }
}

TEST_CASE("ranks as threads: forward_routed (the host's routing) equals smoe::MoELayer's, bit for bit", "[dist][layer][threads][routed]") {
    // What HfShardedMoeLayer runs for PhiMoE's sparsemixer and DeepSeek-V4's hash layers: each rank's own
    // routing, which no gate gives here (an empty slot, a negative weight), exchanged like forward's.
    constexpr int P = 2;
    constexpr std::int64_t d = 19, E = 6, T = 9;
    std::mt19937_64 rng(13);
    auto const m = Model::random(rng, d, 11, E);
    smoe::router::TopKConfig const rc{.num_experts = E, .top_k = 2};
    std::vector<std::vector<float>> xs(P), ws(P), got(P);
    std::vector<std::vector<std::int32_t>> ids(P);
    for (int r = 0; r < P; ++r) {
        xs[r] = smoe_test::normal(rng, T * d, 1.0);
        for (std::int64_t t = 0; t < T; ++t) {
            auto const a = static_cast<std::int32_t>((t + r) % E);
            ids[r].push_back(a);
            ids[r].push_back(t == 3 ? -1 : static_cast<std::int32_t>((a + 1 + t % (E - 1)) % E));
            ws[r].push_back(0.75f);
            ws[r].push_back(t == 5 ? -0.5f : 0.25f);
        }
    }
    auto const pl = ExpertPlacement::contiguous(E, P);
    auto const errors = run_ranks(P, [&](smoe_test::ThreadCommunicator& comm) {
        auto const r = static_cast<std::size_t>(comm.rank());
        auto const local = smoe_test::local_experts(m, pl, comm.rank());
        ThreadSharded layer(comm, pl, {.router = rc, .expert = local.cfg, .max_tokens = T},
                            {.gate = MatrixView<float const>(m.gate.data(), E, d), .experts = local.weights()});
        got[r].assign(static_cast<std::size_t>(T * d), -1.0f);
        layer.forward_routed(MatrixView<float const>(xs[r].data(), T, d), MatrixView<std::int32_t const>(ids[r].data(), T, 2),
                             MatrixView<float const>(ws[r].data(), T, 2), MatrixView<float>(got[r].data(), T, d));
    });
    Single single({.router = rc, .expert = m.expert_cfg(), .max_tokens = T}, m.weights());
    for (std::size_t r = 0; r < P; ++r) {
        REQUIRE(what(errors[r]) == "(nothing thrown)");
        std::vector<float> want(static_cast<std::size_t>(T * d));
        single.forward_routed(MatrixView<float const>(xs[r].data(), T, d), MatrixView<std::int32_t const>(ids[r].data(), T, 2),
                              MatrixView<float const>(ws[r].data(), T, 2), MatrixView<float>(want.data(), T, d));
        CHECK(smoe_test::same_bits(want, 0, got[r], d));
    }
    smoe::dist::SelfCommunicator self;
    Sharded one(self, ExpertPlacement::contiguous(E, 1), {.router = rc, .expert = m.expert_cfg(), .max_tokens = T},
                {.gate = MatrixView<float const>(m.gate.data(), E, d), .experts = m.experts()});
    ids[0][1] = static_cast<std::int32_t>(E);
    CHECK_THROWS_WITH(one.forward_routed(MatrixView<float const>(xs[0].data(), T, d), MatrixView<std::int32_t const>(ids[0].data(), T, 2),
                                         MatrixView<float const>(ws[0].data(), T, 2), MatrixView<float>(got[0].data(), T, d)),
                      Contains("expert_ids' = 6 at token 0, slot 1") && Contains("[0, 6)"));
}

TEST_CASE("ranks as threads: one rank's bad input makes every rank throw", "[dist][layer][threads][errors]") {
    constexpr int P = 3;
    constexpr std::int64_t d = 8, E = 6;
    std::mt19937_64 rng(13);
    auto const m = Model::random(rng, d, 5, E);
    smoe::router::TopKConfig const rc{.num_experts = E, .top_k = 2};
    auto const pl = ExpertPlacement::contiguous(E, P);
    auto const b = smoe_test::split_batch(800, {4, 4, 4}, d);
    std::vector<int> completed(P, 0);
    auto const errors = run_ranks(P, [&](smoe_test::ThreadCommunicator& comm) {
        int const r = comm.rank();
        auto const local = smoe_test::local_experts(m, pl, r);
        ThreadSharded layer(comm, pl, {.router = rc, .expert = local.cfg, .max_tokens = 4},
                            {.gate = MatrixView<float const>(m.gate.data(), E, d), .experts = local.weights()});
        std::vector<float> y(5 * d);
        // Rank 1 passes 5 tokens, one more than max_tokens; then every rank runs a good call.
        auto const x = r == 1 ? MatrixView<float const>(b.x.data(), 5, d) : b.of(r);
        try {
            layer.forward(x, MatrixView<float>(y.data(), x.rows, d));
        } catch (smoe::invalid_argument const&) {
            layer.forward(b.of(r), MatrixView<float>(y.data(), 4, d));
            completed[static_cast<std::size_t>(r)] = 1;
            throw;
        }
    });
    CHECK_THAT(what(errors[1]), Contains("x.rows"));
    CHECK_THAT(what(errors[0]), Contains("'rank' = 1"));
    CHECK_THAT(what(errors[2]), Contains("'rank' = 1"));
    CHECK(completed == std::vector<int>{1, 1, 1});
}

TEST_CASE("ranks as threads: shared experts (replicated) keep the sharded layer equal to smoe::MoELayer", "[dist][layer][threads][shared]") {
    using Inner = smoe::expert::SwiGLU<float>;
    using Shared = smoe::expert::Shared<Inner, smoe::expert::shared_gate::Sigmoid>;
    using ShardedShared = smoe::dist::MoELayer<smoe::router::TopK, Shared, smoe::balance::None, smoe_test::ThreadCommunicator>;
    using SingleShared = smoe::MoELayer<smoe::router::TopK, Shared, smoe::balance::None>;
    constexpr int P = 2;
    constexpr std::int64_t d = 24, E = 6, Tm = 20, fs = 30;
    std::mt19937_64 rng(13);
    auto const m = Model::random(rng, d, 10, E);
    auto const s1 = smoe_test::normal(rng, fs * d, 0.3), s3 = smoe_test::normal(rng, fs * d, 0.3), s2 = smoe_test::normal(rng, d * fs, 0.3);
    auto const sg = smoe_test::normal(rng, d, 0.5);
    smoe::expert::SwiGLUConfig const scfg{d, fs, 1};
    auto const sw = smoe::expert::SwiGLUWeights<float>::dense(s1.data(), s3.data(), s2.data(), scfg);
    MatrixView<float const> const gate_view(sg.data(), 1, d);
    smoe::router::TopKConfig const rc{.num_experts = E, .top_k = 2};
    auto const pl = ExpertPlacement::contiguous(E, P);
    auto const b = smoe_test::split_batch(900, {7, 0}, d);
    auto const b2 = smoe_test::split_batch(901, {Tm, 3}, d);
    std::vector<std::vector<std::vector<float>>> got(P);
    auto const errors = run_ranks(P, [&](smoe_test::ThreadCommunicator& comm) {
        int const r = comm.rank();
        auto const local = smoe_test::local_experts(m, pl, r);
        ShardedShared layer(comm, pl, {.router = rc, .expert = {local.cfg, scfg}, .max_tokens = Tm},
                            {.gate = MatrixView<float const>(m.gate.data(), E, d), .experts = {local.weights(), sw, gate_view}});
        for (auto const* batch : {&b, &b2}) {
            auto const x = batch->of(r);
            std::vector<float> y(static_cast<std::size_t>(x.rows * d), -3.0f);
            layer.forward(x, MatrixView<float>(y.data(), x.rows, d));
            got[static_cast<std::size_t>(r)].push_back(std::move(y));
        }
    });
    for (int r = 0; r < P; ++r) REQUIRE(what(errors[static_cast<std::size_t>(r)]) == "(nothing thrown)");
    SingleShared single({.router = rc, .expert = {m.expert_cfg(), scfg}, .max_tokens = P * Tm}, {MatrixView<float const>(m.gate.data(), E, d), {}, {m.experts(), sw, gate_view}});
    std::size_t call = 0;
    for (auto const* batch : {&b, &b2}) {
        std::vector<float> want(static_cast<std::size_t>(batch->total() * d));
        single.forward(batch->all(), MatrixView<float>(want.data(), batch->total(), d));
        for (int r = 0; r < P; ++r) {
            INFO("call " << call << ", rank " << r);
            CHECK(smoe_test::same_bits(want, batch->first(r), got[static_cast<std::size_t>(r)][call], d));
        }
        ++call;
    }
    // A rank without routed experts cannot hold the replicated shared expert.
    auto const lonely = ExpertPlacement::from_table({0, 0, 0, 0, 0, 0}, P);
    auto const errs = run_ranks(P, [&](smoe_test::ThreadCommunicator& comm) {
        auto const local = smoe_test::local_experts(m, lonely, comm.rank());
        ShardedShared layer(comm, lonely, {.router = rc, .expert = {local.cfg, scfg}, .max_tokens = Tm},
                            {.gate = MatrixView<float const>(m.gate.data(), E, d), .experts = {local.weights(), sw, gate_view}});
    });
    CHECK_THAT(what(errs[1]), Contains("placement"));
}

TEST_CASE("ranks as threads: each rank caches its own experts of one packed file, bit for bit", "[dist][layer][threads][store]") {
    constexpr int P = 2;
    constexpr std::int64_t d = 19, E = 8, Tm = 16;
    std::mt19937_64 rng(13);
    auto const m = Model::random(rng, d, 11, E);
    smoe::router::TopKConfig const rc{.num_experts = E, .top_k = 3, .norm_topk_prob = true};
    Single single({.router = rc, .expert = m.expert_cfg(), .max_tokens = P * Tm}, m.weights());
    auto const path = std::filesystem::temp_directory_path() / ("smoe_dist_store_" + std::to_string(::getpid()) + ".smoe");
    {
        smoe::store::PackedWriter out(path);
        smoe::store::add_layer(out, 0, single.experts());
        out.finish();
    }
    auto const file = smoe::store::PackedFile::open(path);
    auto const pl = ExpertPlacement::from_table({1, 0, 1, 1, 0, 0, 1, 0}, P);
    std::vector<smoe_test::SplitBatch> batches;
    batches.push_back(smoe_test::split_batch(900, {Tm, 3}, d));
    batches.push_back(smoe_test::split_batch(901, {1, 1}, d));
    std::vector<std::vector<std::vector<float>>> got(P);
    std::vector<std::int64_t> misses(P), pairs(P);
    auto const errors = run_ranks(P, [&](smoe_test::ThreadCommunicator& comm) {
        int const r = comm.rank();
        smoe::expert::SwiGLUConfig cfg{d, 11, pl.num_local(r)};
        // One slot, the smallest budget: the rank runs its experts one at a time (dist::MoELayer's run()).
        cfg.store = {.residency = smoe::store::Residency::cached, .budget_bytes = (file->record(file->layer(0), 0).bytes + 4095) / 4096 * 4096};
        smoe::expert::SwiGLUWeights<float> w;
        w.packed = {file, 0, {}};
        for (std::int64_t l = 0; l < pl.num_local(r); ++l) w.packed.experts.push_back(pl.global_id(r, l));
        ThreadSharded layer(comm, pl, {.router = rc, .expert = cfg, .max_tokens = Tm},
                            {.gate = MatrixView<float const>(m.gate.data(), E, d), .experts = w});
        run_batches(layer, batches, r, d, got);
        misses[static_cast<std::size_t>(r)] = layer.experts().store().stats().misses;
        pairs[static_cast<std::size_t>(r)] = layer.experts().store().stats().routed_pairs;  // observe(): own tokens, own experts
    });
    for (int r = 0; r < P; ++r) REQUIRE(what(errors[static_cast<std::size_t>(r)]) == "(nothing thrown)");
    check_against(single, batches, P, d, got);
    CHECK(misses[0] > 0);
    CHECK(misses[1] > 0);
    // A store counts the pairs (own token, own expert): some of each rank's, never more than all pairs.
    CHECK(pairs[0] > 0);
    CHECK(pairs[1] > 0);
    CHECK(pairs[0] + pairs[1] <= (Tm + 3 + 1 + 1) * rc.top_k);
    std::filesystem::remove(path);
}

TEST_CASE("ranks as threads: LLEP spills an overloaded rank's rows to helper ranks with a copy of the expert, bits of None",
          "[dist][layer][threads][llep]") {
    // research.md §6 across ranks: skewed routing (every token of every rank on expert 0, held by rank 0),
    // the plan computed alike on every rank from the gathered loads, helpers receiving expert 0's record.
    constexpr std::int64_t d = 19, E = 6, T = 12;
    std::mt19937_64 rng(21);
    auto const m = Model::random(rng, d, 11, E);
    smoe::router::TopKConfig const rc{.num_experts = E, .top_k = 2};
    struct Case {
        int P;
        ExpertPlacement pl;
    };
    // Contiguous blocks on 2 and 3 ranks; a table in which rank 2 owns nothing and only helps.
    for (auto const& c : {Case{2, ExpertPlacement::contiguous(E, 2)}, Case{3, ExpertPlacement::contiguous(E, 3)},
                          Case{3, ExpertPlacement::from_table({0, 0, 1, 1, 0, 1}, 3)}}) {
        int const P = c.P;
        auto const& pl = c.pl;
        INFO(P << " ranks, rank 2 owns " << (P > 2 ? pl.num_local(2) : 0) << " experts");
        auto const Pu = static_cast<std::size_t>(P);
        std::vector<std::vector<float>> xs(Pu), ws(Pu), got(Pu), got_none(Pu), got_fwd(Pu), got_fwd_none(Pu);
        std::vector<std::vector<std::int32_t>> ids(Pu);
        std::vector<std::int64_t> Ts(Pu);
        for (std::size_t r = 0; r < Pu; ++r) {
            Ts[r] = T - 3 * static_cast<std::int64_t>(r);
            xs[r] = smoe_test::normal(rng, static_cast<std::size_t>(Ts[r] * d), 1.0);
            for (std::int64_t t = 0; t < Ts[r]; ++t) {
                ids[r].push_back(0);
                ids[r].push_back(static_cast<std::int32_t>(1 + (t + static_cast<std::int64_t>(r)) % (E - 1)));
                ws[r].push_back(0.625f + 0.01f * static_cast<float>(t));
                ws[r].push_back(0.375f - 0.01f * static_cast<float>(t));
            }
        }
        std::vector<std::vector<smoe::balance::LlepItem>> items(Pu);
        std::vector<std::vector<smoe::balance::LlepRun>> runs(Pu), runs_fwd(Pu);
        std::vector<smoe::balance::LlepStats> stats(Pu);
        std::vector<std::int64_t> copies(Pu), computed(Pu);
        auto const errors = run_ranks(P, [&](smoe_test::ThreadCommunicator& comm) {
            auto const r = static_cast<std::size_t>(comm.rank());
            auto const local = smoe_test::local_experts(m, pl, comm.rank());
            smoe_test::LocalExperts const shape{{}, {}, {}, {d, 11, 0}};  // a rank without experts gives d and f only
            auto const& lc = local.cfg.num_experts > 0 ? local.cfg : shape.cfg;
            MatrixView<float const> const gate(m.gate.data(), E, d);
            ThreadLlep llep(comm, pl,
                            {.router = rc, .expert = lc,
                             .balance = {.num_experts = E, .num_workers = P, .max_tokens_factor = 1.0, .min_tokens_per_gemm = 1},
                             .max_tokens = T},
                            {.gate = gate, .experts = local.weights()});
            ThreadSharded none(comm, pl, {.router = rc, .expert = local.cfg, .max_tokens = T}, {.gate = gate, .experts = local.weights()});
            auto const Tr = Ts[r];
            MatrixView<float const> const x(xs[r].data(), Tr, d);
            MatrixView<std::int32_t const> const idv(ids[r].data(), Tr, 2);
            MatrixView<float const> const wv(ws[r].data(), Tr, 2);
            for (auto* y : {&got[r], &got_none[r], &got_fwd[r], &got_fwd_none[r]}) y->assign(static_cast<std::size_t>(Tr * d), -1.0f);
            llep.forward_routed(x, idv, wv, MatrixView<float>(got[r].data(), Tr, d));
            none.forward_routed(x, idv, wv, MatrixView<float>(got_none[r].data(), Tr, d));
            auto const pi = llep.balancer().plan_items();
            items[r].assign(pi.begin(), pi.end());
            auto const ex = llep.balancer().executed();
            runs[r].assign(ex.begin(), ex.end());
            stats[r] = llep.balancer().llep_stats();
            copies[r] = llep.helper_records();
            computed[r] = llep.rows_computed();
            // The router's own routing (forward), whatever it spills.
            llep.forward(x, MatrixView<float>(got_fwd[r].data(), Tr, d));
            none.forward(x, MatrixView<float>(got_fwd_none[r].data(), Tr, d));
            auto const ex2 = llep.balancer().executed();
            runs_fwd[r].assign(ex2.begin(), ex2.end());
            for (std::size_t i = 0; i < runs_fwd[r].size(); ++i)  // keep only a mismatch, checked below
                if ((llep.balancer().plan_items()[i].worker == comm.rank()) != (runs_fwd[r][i].worker == comm.rank())) runs_fwd[r][i].worker = -7;
        });
        for (std::size_t r = 0; r < Pu; ++r) REQUIRE(what(errors[r]) == "(nothing thrown)");
        // The single-process layer on every rank's tokens in rank order.
        std::int64_t const total = std::accumulate(Ts.begin(), Ts.end(), std::int64_t{0});
        std::vector<float> xa, wa;
        std::vector<std::int32_t> ia;
        for (std::size_t r = 0; r < Pu; ++r) {
            xa.insert(xa.end(), xs[r].begin(), xs[r].end());
            wa.insert(wa.end(), ws[r].begin(), ws[r].end());
            ia.insert(ia.end(), ids[r].begin(), ids[r].end());
        }
        Single single({.router = rc, .expert = m.expert_cfg(), .max_tokens = total}, m.weights());
        std::vector<float> want(static_cast<std::size_t>(total * d)), want_fwd(want.size());
        single.forward_routed(MatrixView<float const>(xa.data(), total, d), MatrixView<std::int32_t const>(ia.data(), total, 2),
                              MatrixView<float const>(wa.data(), total, 2), MatrixView<float>(want.data(), total, d));
        single.forward(MatrixView<float const>(xa.data(), total, d), MatrixView<float>(want_fwd.data(), total, d));
        std::int64_t first = 0, rows = 0;
        for (std::size_t r = 0; r < Pu; ++r) {
            INFO("rank " << r);
            CHECK(got[r] == got_none[r]);
            CHECK(smoe_test::same_bits(want, first, got[r], d));
            CHECK(got_fwd[r] == got_fwd_none[r]);
            CHECK(smoe_test::same_bits(want_fwd, first, got_fwd[r], d));
            first += Ts[r];
            // One plan on every rank; each rank ran exactly its own items.
            CHECK(items[r] == items[0]);
            REQUIRE(runs[r].size() == items[r].size());
            std::int64_t mine = 0;
            for (std::size_t i = 0; i < items[r].size(); ++i) {
                INFO("item " << i << ": expert " << items[r][i].expert << " rows [" << items[r][i].row_begin << ", "
                             << items[r][i].row_end << ") on rank " << items[r][i].worker);
                CHECK(runs[r][i].worker == (items[r][i].worker == static_cast<std::int32_t>(r) ? static_cast<std::int32_t>(r) : -1));
                if (items[r][i].worker == static_cast<std::int32_t>(r)) mine += items[r][i].row_end - items[r][i].row_begin;
            }
            CHECK(computed[r] == mine);
            rows += mine;
            for (auto const& run : runs_fwd[r]) CHECK(run.worker != -7);
        }
        CHECK(rows == 2 * total);
        // Expert 0 has every token: its rank spills, and at least one helper computes with a copy.
        CHECK(stats[0].plan_ran);
        CHECK(stats[0].spilled_rows > 0);
        CHECK(stats[0].weight_copies > 0);
        CHECK(stats[0].planned_ratio < stats[0].native_ratio);
        bool helped = false;
        for (auto const& it : items[0]) helped = helped || (it.expert == 0 && it.worker != pl.rank_of(0));
        CHECK(helped);
        if (P == 3 && pl.num_local(2) == 0) {
            CHECK(copies[2] > 0);
            CHECK(computed[2] > 0);  // the rank that owns nothing computes copies' rows
        }
    }
}

TEST_CASE("ranks as threads: LLEP on research.md section 6's worked example A, the plan and y exactly", "[dist][layer][threads][llep][spec]") {
    // Rank 0 holds experts 0, 1 and tokens t0, t1; rank 1 holds experts 2, 3 and t2. Expert 0's global
    // segment (t0, t1, t2) is the spec's: rank 0 keeps t0, rank 1 computes t1 and t2 with a copy of expert 0.
    std::vector<float> const logits = {2, 1, -1, 0, 1, 1.5f, 0, -1, 1, -0.5f, 0.5f, -2};
    smoe::router::TopKConfig const rc{.num_experts = 4, .top_k = 2, .norm_topk_prob = true};
    smoe::router::TopK const router(rc);
    std::vector<std::byte> rws(smoe::routing_workspace_size(router, 3));
    auto const routed = smoe::route(router, MatrixView<float const>(logits.data(), 3, 4), {}, rws);
    std::vector<std::int32_t> ids;
    std::vector<float> wts;
    for (std::int64_t t = 0; t < 3; ++t)
        for (std::int64_t j = 0; j < 2; ++j) {
            ids.push_back(routed.expert_ids(t, j));
            wts.push_back(routed.expert_weights(t, j));
        }
    auto const pl = ExpertPlacement::contiguous(4, 2);
    std::vector<float> const gate(12, 0.0f);
    std::vector<std::vector<float>> y(2);
    std::vector<std::vector<smoe::balance::LlepItem>> items(2);
    std::vector<std::vector<smoe::balance::LlepRun>> runs(2);
    std::vector<smoe::balance::LlepStats> stats(2);
    auto const errors = run_ranks(2, [&](smoe_test::ThreadCommunicator& comm) {
        int const r = comm.rank();
        auto const u = static_cast<std::size_t>(r);
        auto const fx = smoe_test::formula_experts(2, 3, 2, 2 * r);  // experts 2r, 2r + 1
        ThreadLlep layer(comm, pl,
                         {.router = rc, .expert = fx.cfg(), .balance = {.num_experts = 4, .num_workers = 2, .max_tokens_factor = 1.0,
                                                                        .min_tokens_per_gemm = 1}, .max_tokens = 2},
                         {.gate = MatrixView<float const>(gate.data(), 4, 3), .experts = fx.weights()});
        std::int64_t const first = r == 0 ? 0 : 2, T = r == 0 ? 2 : 1;
        y[u].assign(static_cast<std::size_t>(T * 3), -1.0f);
        layer.forward_routed(MatrixView<float const>(smoe_test::kFormulaX.data() + first * 3, T, 3),
                             MatrixView<std::int32_t const>(ids.data() + first * 2, T, 2), MatrixView<float const>(wts.data() + first * 2, T, 2),
                             MatrixView<float>(y[u].data(), T, 3));
        items[u].assign(layer.balancer().plan_items().begin(), layer.balancer().plan_items().end());
        runs[u].assign(layer.balancer().executed().begin(), layer.balancer().executed().end());
        stats[u] = layer.balancer().llep_stats();
    });
    for (std::size_t r = 0; r < 2; ++r) REQUIRE(what(errors[r]) == "(nothing thrown)");
    std::vector<smoe::balance::LlepItem> const want_items{{0, 0, 0, 1}, {0, 1, 1, 3}, {1, 0, 0, 2}, {2, 1, 0, 1}};
    CHECK(items[0] == want_items);
    CHECK(items[1] == want_items);
    for (std::size_t i = 0; i < want_items.size(); ++i) {
        CHECK(runs[0][i].worker == (want_items[i].worker == 0 ? 0 : -1));
        CHECK(runs[1][i].worker == (want_items[i].worker == 1 ? 1 : -1));
    }
    CHECK(stats[0].native_load == std::vector<std::int64_t>{5, 1});
    CHECK(stats[0].planned_load == std::vector<std::int64_t>{3, 3});
    CHECK(stats[0].spilled_rows == 2);
    CHECK(stats[0].weight_copies == 1);
    std::vector<double> const want = {0.00985237, -0.0287586, -0.0348869, -0.0859693, 0.0297334,
                                      0.0476003,  0.0505306,  -0.0196557, -0.0898419};
    std::vector<float> got = y[0];
    got.insert(got.end(), y[1].begin(), y[1].end());
    REQUIRE(got.size() == want.size());
    for (std::size_t i = 0; i < want.size(); ++i) CHECK(got[i] == Approx(want[i]).epsilon(1e-5));
}

TEST_CASE("LLEP in the sharded layer rejects a worker count other than the ranks and a placement of its own", "[dist][layer][llep][errors]") {
    constexpr std::int64_t d = 8, E = 4;
    std::mt19937_64 rng(22);
    auto const m = Model::random(rng, d, 5, E);
    smoe::dist::SelfCommunicator self;
    using SelfLlep = smoe::dist::MoELayer<smoe::router::TopK, smoe::expert::SwiGLU<float>, smoe::balance::LeastLoaded,
                                          smoe::dist::SelfCommunicator>;
    auto make = [&](smoe::balance::LeastLoadedConfig bc) {
        SelfLlep l(self, ExpertPlacement::contiguous(E, 1), {.router = {.num_experts = E, .top_k = 2}, .expert = m.expert_cfg(), .balance = bc},
                   {.gate = MatrixView<float const>(m.gate.data(), E, d), .experts = m.experts()});
        return l.helper_records();
    };
    CHECK(make({.num_experts = E, .num_workers = 1}) == 0);  // one rank: nothing to copy
    CHECK_THROWS_WITH(make({.num_experts = E, .num_workers = 2}), Contains("balance.llep_num_workers' = 2: expected the communicator size 1"));
    // Two ranks: the balancer's own placement must be the layer's (the plan's native workers are its ranks).
    auto const pl = ExpertPlacement::contiguous(E, 2);
    auto const errors = run_ranks(2, [&](smoe_test::ThreadCommunicator& comm) {
        auto const local = smoe_test::local_experts(m, pl, comm.rank());
        ThreadLlep l(comm, pl,
                     {.router = {.num_experts = E, .top_k = 2}, .expert = local.cfg,
                      .balance = {.num_experts = E, .num_workers = 2, .placement = ExpertPlacement::from_table({1, 0, 1, 0}, 2)}},
                     {.gate = MatrixView<float const>(m.gate.data(), E, d), .experts = local.weights()});
    });
    for (auto const& e : errors) CHECK_THAT(what(e), Contains("balance.placement' = rank 1 for expert 0: expected the layer's placement (rank 0)"));
}
