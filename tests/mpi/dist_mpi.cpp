// The sharded layer over MPI, run by ctest under `mpirun -np 2` and `-np 4`: bit-identical to the
// single-process layer for top-k, top-p, ReLU, null experts (the whole batch), expert choice and a
// capacity balancer (each rank's batch), with T = 0 on some ranks, an expert that gets every token, ranks whose experts get nothing
// or that own no expert; and a rank with bad input makes every rank throw (no rank hangs: ctest's
// TIMEOUT would fail the run).
//
// Every rank runs the same test cases in the same order. An assertion that could differ between
// ranks is agreed first (everyone()), so a failure fails on every rank instead of leaving the others
// waiting in the next collective.

#include <cmath>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include <catch2/catch.hpp>

#include "dist_model.hpp"
#include "smoe/dist/layer.hpp"
#include "smoe/dist/mpi_communicator.hpp"  // <mpi.h>
#include "smoe/smoe.hpp"

using smoe::MatrixView;
using smoe::dist::ExpertPlacement;
using smoe::dist::MpiCommunicator;
using Catch::Matchers::Contains;

namespace {

// Catch2's prebuilt main runs the tests; MPI is started before it and stopped after it.
struct MpiSession {
    MpiSession() { MPI_Init(nullptr, nullptr); }
    ~MpiSession() { MPI_Finalize(); }
    MpiSession(MpiSession const&) = delete;
    MpiSession& operator=(MpiSession const&) = delete;
} const mpi_session;

constexpr std::int64_t kD = 21, kF = 10, kMaxTokens = 24;  // d = 21: SIMD tails in every GEMM

template <class Router, class Balancer = smoe::balance::None>
using Sharded = smoe::dist::MoELayer<Router, smoe::expert::SwiGLU<float>, Balancer, MpiCommunicator>;
template <class Router, class Balancer>
using Single = smoe::MoELayer<Router, smoe::expert::SwiGLU<float>, Balancer>;
template <class Router>
using Model = smoe_test::LayerModel<Router>;

bool everyone(MpiCommunicator& comm, bool ok) {
    std::int64_t v = ok ? 1 : 0;
    comm.allreduce_min(std::span<std::int64_t>(&v, 1));
    return v == 1;
}

// Tokens per rank for each call: mixed with zeros, all on one rank, none at all, one each, full.
std::vector<std::vector<std::int64_t>> token_patterns(int P) {
    std::vector<std::vector<std::int64_t>> out(5, std::vector<std::int64_t>(static_cast<std::size_t>(P), 0));
    for (int r = 0; r < P; ++r) {
        auto const i = static_cast<std::size_t>(r);
        out[0][i] = r % 2 == 1 ? 0 : 3 + 5 * r;
        out[1][i] = r == P - 1 ? kMaxTokens : 0;
        out[3][i] = 1;
        out[4][i] = kMaxTokens;
    }
    return out;
}

template <class Router, class Balancer = smoe::balance::None>
Sharded<Router, Balancer> make_sharded(MpiCommunicator& comm, Model<Router> const& m, typename Router::Config const& rc,
                                       ExpertPlacement const& pl, smoe_test::LocalExperts const& local,
                                       typename Balancer::Config const& bc = {}) {
    return Sharded<Router, Balancer>(comm, pl, {.router = rc, .expert = local.cfg, .balance = bc, .max_tokens = kMaxTokens},
                           {.gate = MatrixView<float const>(m.gate.data(), m.W, m.d), .expert_bias = m.bias, .experts = local.weights()});
}

// Every pattern: the sharded forward of this rank's tokens against the single-process layer, on the
// whole batch or (per_rank_batch) on this rank's tokens alone; the summed statistics too.
template <class Router, class Balancer = smoe::balance::None>
void check_bitwise(MpiCommunicator& comm, Model<Router> const& m, typename Router::Config const& rc,
                   ExpertPlacement const& pl, bool per_rank_batch, std::uint64_t seed, typename Balancer::Config const& bc = {}) {
    int const rank = comm.rank(), P = comm.size();
    auto const local = smoe_test::local_experts(m, pl, rank);
    Single<Router, Balancer> single({.router = rc, .expert = m.expert_cfg(), .balance = bc, .max_tokens = P * kMaxTokens},
                                    {.gate = MatrixView<float const>(m.gate.data(), m.W, m.d), .expert_bias = m.bias, .experts = m.experts()});
    auto sharded = make_sharded<Router, Balancer>(comm, m, rc, pl, local, bc);
    for (auto const& pattern : token_patterns(P)) {
        auto const batch = smoe_test::split_batch(seed++, pattern, kD);
        std::int64_t const T = pattern[static_cast<std::size_t>(rank)];
        auto const xs = per_rank_batch ? batch.of(rank) : batch.all();
        std::vector<float> want(static_cast<std::size_t>(xs.rows * kD), -1.0f), got(static_cast<std::size_t>(T * kD), -2.0f);
        single.forward(xs, MatrixView<float>(want.data(), xs.rows, kD));
        auto const r = sharded.forward(batch.of(rank), MatrixView<float>(got.data(), T, kD));
        bool const ok = r.num_tokens == T && smoe_test::same_bits(want, per_rank_batch ? 0 : batch.first(rank), got, kD);
        INFO("rank " << rank << " of " << P << ", T = " << T << ", total " << batch.total());
        CHECK(ok);
        REQUIRE(everyone(comm, ok));
        // Rows computed here are the rows every rank routed to this rank's experts.
        auto const g = sharded.global_stats();
        bool const rows_ok = g.rank_load[static_cast<std::size_t>(rank)] == sharded.rows_computed();
        CHECK(rows_ok);
        REQUIRE(everyone(comm, rows_ok));
        if (!per_rank_batch) {
            bool const kept_ok = g.global.kept == single.stats().kept && g.global.tokens == batch.total();
            CHECK(kept_ok);
            REQUIRE(everyone(comm, kept_ok));
        }
    }
}

}  // namespace

TEST_CASE("sharded top-k equals the single-process layer bit for bit", "[dist][mpi][topk]") {
    MpiCommunicator comm;
    std::mt19937_64 rng(101);
    auto const m = Model<smoe::router::TopK>::random(rng, kD, kF, 8);
    smoe::router::TopKConfig const rc{.num_experts = 8, .top_k = 2, .norm_topk_prob = true};
    check_bitwise(comm, m, rc, ExpertPlacement::contiguous(8, comm.size()), false, 1000);
}

TEST_CASE("sharded top-k with a placement table in which the last rank owns no expert", "[dist][mpi][topk]") {
    MpiCommunicator comm;
    int const P = comm.size();
    std::mt19937_64 rng(102);
    auto const m = Model<smoe::router::TopK>::random(rng, kD, kF, 6);
    std::vector<std::int32_t> table;
    for (std::int32_t e = 0; e < 6; ++e) table.push_back(P == 1 ? 0 : (5 * e + 1) % (P - 1));
    smoe::router::TopKConfig const rc{.num_experts = 6, .top_k = 3};
    check_bitwise(comm, m, rc, ExpertPlacement::from_table(table, P), false, 2000);
}

// 8 experts, top-2, whose selection bias puts experts 0 and 1 first for every token (it shifts selection, not weights).
static Model<smoe::router::TopK> two_hot_experts(std::uint64_t seed) {
    std::mt19937_64 rng(seed);
    auto m = Model<smoe::router::TopK>::random(rng, kD, kF, 8);
    m.bias.assign(8, 0.0f);
    m.bias[0] = m.bias[1] = 100.0f;
    return m;
}

TEST_CASE("an expert that gets every token, and ranks whose experts get nothing", "[dist][mpi][topk][stats]") {
    MpiCommunicator comm;
    int const rank = comm.rank(), P = comm.size();
    auto m = two_hot_experts(103);
    smoe::router::TopKConfig const rc{.num_experts = 8, .top_k = 2};
    auto const pl = ExpertPlacement::contiguous(8, P);
    check_bitwise(comm, m, rc, pl, false, 3000);

    auto const local = smoe_test::local_experts(m, pl, rank);
    auto sharded = make_sharded(comm, m, rc, pl, local);
    auto const batch = smoe_test::split_batch(3100, token_patterns(P)[0], kD);
    std::int64_t const T = batch.tokens[static_cast<std::size_t>(rank)], total = batch.total();
    std::vector<float> y(static_cast<std::size_t>(T * kD));
    sharded.forward(batch.of(rank), MatrixView<float>(y.data(), T, kD));
    auto const g = sharded.global_stats();
    // Experts 0 and 1 live on rank 0: it computes 2 rows per token, every other rank none.
    std::vector<std::int64_t> want_kept(8, 0), want_rank_load(static_cast<std::size_t>(P), 0);
    want_kept[0] = want_kept[1] = total;
    want_rank_load[0] = 2 * total;
    bool const ok = g.global.kept == want_kept && g.rank_load == want_rank_load &&
                    sharded.rows_computed() == (rank == 0 ? 2 * total : 0) && g.rank_imbalance() == double(P) &&
                    sharded.rows_sent_remote() == (rank == 0 ? 0 : 2 * T) && sharded.stats().kept[0] == T;
    CHECK(ok);
    REQUIRE(everyone(comm, ok));
}

TEST_CASE("LLEP: rank 0's overload spills to the other ranks with copies of its experts, bits of None", "[dist][mpi][llep]") {
    MpiCommunicator comm;
    int const rank = comm.rank(), P = comm.size();
    auto m = two_hot_experts(104);  // experts 0 and 1, both on rank 0, take every token
    smoe::router::TopKConfig const rc{.num_experts = 8, .top_k = 2};
    auto const pl = ExpertPlacement::contiguous(8, P);
    auto const local = smoe_test::local_experts(m, pl, rank);
    smoe::balance::LeastLoadedConfig const bc{.num_experts = 8, .num_workers = P, .max_tokens_factor = 1.0, .min_tokens_per_gemm = 1};
    auto llep = make_sharded<smoe::router::TopK, smoe::balance::LeastLoaded>(comm, m, rc, pl, local, bc);
    auto none = make_sharded(comm, m, rc, pl, local);
    Single<smoe::router::TopK, smoe::balance::None> single(
        {.router = rc, .expert = m.expert_cfg(), .max_tokens = P * kMaxTokens},
        {.gate = MatrixView<float const>(m.gate.data(), m.W, m.d), .expert_bias = m.bias, .experts = m.experts()});
    std::uint64_t seed = 4000;
    for (auto const& pattern : token_patterns(P)) {
        auto const batch = smoe_test::split_batch(seed++, pattern, kD);
        std::int64_t const T = pattern[static_cast<std::size_t>(rank)];
        std::vector<float> want(static_cast<std::size_t>(batch.total() * kD)), got(static_cast<std::size_t>(T * kD), -2.0f),
            got_none(got.size(), -3.0f);
        single.forward(batch.all(), MatrixView<float>(want.data(), batch.total(), kD));
        llep.forward(batch.of(rank), MatrixView<float>(got.data(), T, kD));
        none.forward(batch.of(rank), MatrixView<float>(got_none.data(), T, kD));
        // The plan every rank computed, and who ran each item: exactly the items planned on this rank.
        auto const items = llep.balancer().plan_items();
        auto const runs = llep.balancer().executed();
        bool ran_ok = runs.size() == items.size();
        std::int64_t mine = 0;
        std::vector<std::int64_t> plan_words;
        for (std::size_t i = 0; ran_ok && i < items.size(); ++i) {
            bool const planned_here = items[i].worker == rank;
            ran_ok = runs[i].worker == (planned_here ? rank : -1);
            if (planned_here) mine += items[i].row_end - items[i].row_begin;
            plan_words.insert(plan_words.end(), {items[i].expert, items[i].worker, items[i].row_begin, items[i].row_end});
        }
        // Every rank holds the same plan: the element-wise min and max over ranks agree.
        std::vector<std::int64_t> lo = plan_words, hi = plan_words;
        std::int64_t n[2] = {static_cast<std::int64_t>(plan_words.size()), -static_cast<std::int64_t>(plan_words.size())};
        comm.allreduce_min(std::span<std::int64_t>(n, 2));
        bool same_plan = n[0] == -n[1];
        if (same_plan) {
            for (auto& v : hi) v = -v;
            comm.allreduce_min(std::span<std::int64_t>(lo));
            comm.allreduce_min(std::span<std::int64_t>(hi));
            for (std::size_t i = 0; i < lo.size(); ++i) same_plan = same_plan && lo[i] == -hi[i];
        }
        auto const& st = llep.balancer().llep_stats();
        bool const full = batch.total() == P * kMaxTokens;
        bool const ok = got == got_none && smoe_test::same_bits(want, batch.first(rank), got, kD) && ran_ok && same_plan &&
                        llep.rows_computed() == mine && (!full || P == 1 || (st.spilled_rows > 0 && st.weight_copies > 0 && st.planned_ratio < st.native_ratio));
        INFO("rank " << rank << " of " << P << ", T = " << T << ", total " << batch.total() << ": bits " << (got == got_none) << ", runs "
                     << ran_ok << ", same plan " << same_plan << ", spilled " << st.spilled_rows << ", copies " << st.weight_copies);
        CHECK(ok);
        REQUIRE(everyone(comm, ok));
    }
}

TEST_CASE("sharded expert choice equals the single-process layer on each rank's own tokens", "[dist][mpi][expert_choice]") {
    MpiCommunicator comm;
    std::mt19937_64 rng(104);
    auto const m = Model<smoe::router::ExpertChoice>::random(rng, kD, kF, 8);
    smoe::router::ExpertChoiceConfig const rc{.num_experts = 8, .capacity_factor = 2.0};
    check_bitwise(comm, m, rc, ExpertPlacement::contiguous(8, comm.size()), true, 4000);
}

TEST_CASE("a capacity balancer drops per rank: equal to the single-process layer on each rank's own tokens", "[dist][mpi][capacity]") {
    MpiCommunicator comm;
    std::mt19937_64 rng(108);
    auto const m = Model<smoe::router::TopK>::random(rng, kD, kF, 8);
    smoe::router::TopKConfig const rc{.num_experts = 8, .top_k = 2};
    // Capacity ceil(T k / E) drops slots at most calls; padding and renormalisation change nothing here
    // but the computed segments and the kept weights, which both layers share.
    smoe::balance::CapacityConfig const bc{.capacity_factor = 1.0, .pad_to_capacity = true, .renormalize_after_drop = true};
    auto const pl = ExpertPlacement::contiguous(8, comm.size());
    check_bitwise<smoe::router::TopK, smoe::balance::Capacity>(comm, m, rc, pl, true, 8000, bc);
    // The case is not vacuous: with every rank full, slots are dropped.
    auto sharded = make_sharded<smoe::router::TopK, smoe::balance::Capacity>(comm, m, rc, pl, smoe_test::local_experts(m, pl, comm.rank()), bc);
    auto const batch = smoe_test::split_batch(8100, token_patterns(comm.size())[4], kD);
    std::vector<float> y(static_cast<std::size_t>(kMaxTokens * kD));
    sharded.forward(batch.of(comm.rank()), MatrixView<float>(y.data(), kMaxTokens, kD));
    auto const g = sharded.global_stats();
    CHECK(g.global.drop_rate() > 0.0);
}

TEST_CASE("sharded variable-k routers (top-p, ReLU) equal the single-process layer bit for bit", "[dist][mpi][top_p][relu]") {
    MpiCommunicator comm;
    std::mt19937_64 rng(105);
    auto const mp = Model<smoe::router::TopP>::random(rng, kD, kF, 8);
    check_bitwise(comm, mp, smoe::router::TopPConfig{.num_experts = 8, .top_p = 0.6f}, ExpertPlacement::contiguous(8, comm.size()), false, 5000);
    auto const mr = Model<smoe::router::ReLU>::random(rng, kD, kF, 8);
    check_bitwise(comm, mr, smoe::router::ReLUConfig{.num_experts = 8}, ExpertPlacement::contiguous(8, comm.size()), false, 6000);
}

TEST_CASE("sharded null-expert routing (compute-free slots never travel) equals the single-process layer", "[dist][mpi][null_expert]") {
    MpiCommunicator comm;
    std::mt19937_64 rng(109);
    auto const m = Model<smoe::router::NullExpert>::random(rng, kD, kF, 6, 9);  // 6 experts, 3 null logits
    check_bitwise(comm, m, smoe::router::NullExpertConfig{.num_experts = 6, .num_null_experts = 3, .top_k = 3},
                  ExpertPlacement::contiguous(6, comm.size()), false, 9000);
}

TEST_CASE("a rank with bad input makes every rank throw, and the layer stays usable", "[dist][mpi][errors]") {
    MpiCommunicator comm;
    int const rank = comm.rank(), P = comm.size();
    std::mt19937_64 rng(106);
    auto const m = Model<smoe::router::TopK>::random(rng, kD, kF, 8);
    smoe::router::TopKConfig const rc{.num_experts = 8, .top_k = 2};
    auto const pl = ExpertPlacement::contiguous(8, P);
    auto const local = smoe_test::local_experts(m, pl, rank);
    auto sharded = make_sharded(comm, m, rc, pl, local);
    auto batch = smoe_test::split_batch(7000, std::vector<std::int64_t>(static_cast<std::size_t>(P), 5), kD);
    std::vector<float> y(5 * (kD + 1));

    int const bad = P - 1;
    auto const expect = [&](bool i_am_bad, char const* mine) {
        return Contains(i_am_bad ? std::string(mine) : "'rank' = " + std::to_string(bad));
    };
    // Wrong x shape on the last rank.
    if (rank == bad)
        CHECK_THROWS_WITH(sharded.forward(MatrixView<float const>(batch.x.data(), 5, kD + 1), MatrixView<float>(y.data(), 5, kD + 1)),
                          expect(true, "'x'"));
    else
        CHECK_THROWS_WITH(sharded.forward(batch.of(rank), MatrixView<float>(y.data(), 5, kD)), expect(false, ""));
    // More tokens than max_tokens on the last rank.
    std::vector<float> big(static_cast<std::size_t>((kMaxTokens + 1) * kD), 0.25f), ybig(big.size());
    auto const x_of = [&](int r) {
        return r == bad ? MatrixView<float const>(big.data(), kMaxTokens + 1, kD) : batch.of(r);
    };
    CHECK_THROWS_WITH(sharded.forward(x_of(rank), MatrixView<float>(ybig.data(), x_of(rank).rows, kD)), expect(rank == bad, "x.rows"));
    // A NaN token on the last rank: its router rejects the logits.
    if (rank == bad) batch.x[static_cast<std::size_t>(batch.first(rank) * kD + 2)] = std::numeric_limits<float>::quiet_NaN();
    CHECK_THROWS_WITH(sharded.forward(batch.of(rank), MatrixView<float>(y.data(), 5, kD)), expect(rank == bad, "logits"));
    // Good input again on every rank: the exchange is in step and the result exact.
    if (rank == bad) batch.x[static_cast<std::size_t>(batch.first(rank) * kD + 2)] = 0.5f;
    smoe_test::SwiGLULayer<smoe::router::TopK> single({.router = rc, .expert = m.expert_cfg(), .max_tokens = P * 5}, m.weights());
    std::vector<float> want(static_cast<std::size_t>(P * 5 * kD)), got(5 * kD);
    single.forward(batch.all(), MatrixView<float>(want.data(), P * 5, kD));
    sharded.forward(batch.of(rank), MatrixView<float>(got.data(), 5, kD));
    bool const ok = smoe_test::same_bits(want, batch.first(rank), got, kD);
    CHECK(ok);
    REQUIRE(everyone(comm, ok));
}

TEST_CASE("construction fails on every rank when one rank's arguments are wrong", "[dist][mpi][errors]") {
    MpiCommunicator comm;
    int const rank = comm.rank(), P = comm.size();
    std::mt19937_64 rng(107);
    auto const m = Model<smoe::router::TopK>::random(rng, kD, kF, 8);
    smoe::router::TopKConfig const rc{.num_experts = 8, .top_k = 2};
    auto const pl = ExpertPlacement::contiguous(8, P);
    auto const local = smoe_test::local_experts(m, pl, rank);
    using Layer = Sharded<smoe::router::TopK>;
    Layer::Weights const w{.gate = MatrixView<float const>(m.gate.data(), 8, kD), .experts = local.weights()};
    int const bad = P - 1;
    // The last rank claims one expert fewer than the placement gives it.
    auto cfg = local.cfg;
    if (rank == bad) cfg.num_experts -= 1;
    CHECK_THROWS_WITH(Layer(comm, pl, {.router = rc, .expert = cfg, .max_tokens = kMaxTokens}, w),
                      Contains(rank == bad ? std::string("expert.num_experts") : "'rank' = " + std::to_string(bad)));
    // Ranks that disagree on max_tokens: every rank names it.
    if (P > 1)
        CHECK_THROWS_WITH(Layer(comm, pl, {.router = rc, .expert = local.cfg, .max_tokens = rank == bad ? 7 : kMaxTokens}, w),
                          Contains("max_tokens") && Contains("the same value on every rank"));
    REQUIRE(everyone(comm, true));
}
