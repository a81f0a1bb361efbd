// router::Sinkhorn (fp32 SIMD balancing) against routing.md §7's worked example and the double oracle.

#include <algorithm>
#include <cmath>
#include <limits>
#include <random>
#include <set>
#include <string>
#include <vector>

#include <catch2/catch.hpp>

#include "common/approx.hpp"
#include "common/data.hpp"
#include "common/layer_model.hpp"
#include "common/routing_checks.hpp"
#include "smoe/kernels/reference/reference.hpp"
#include "smoe/kernels/reference/sinkhorn.hpp"
#include "smoe/route.hpp"
#include "smoe/router/sinkhorn.hpp"
#include "smoe/smoe.hpp"

using smoe::MatrixView;
using smoe::router::Sinkhorn;
using smoe::router::SinkhornConfig;
using smoe::router::SinkhornReport;

namespace {

// Routes through smoe::route with the given ISA; owns the workspace and the router (for its report).
struct Routed {
    Sinkhorn router;
    std::vector<std::byte> ws;
    smoe::RoutingResult r;
    SinkhornReport const& report() const { return router.last_report(); }
};

template <class Arch>
Routed route_with(Arch arch, SinkhornConfig const& cfg, std::vector<float> const& logits, std::vector<float> const& bias = {}) {
    Routed out{Sinkhorn(cfg), {}, {}};
    out.r = smoe_test::route_into(arch, out.router, logits, bias, out.ws);
    return out;
}

Routed route_default(SinkhornConfig const& cfg, std::vector<float> const& logits, std::vector<float> const& bias = {}) {
    return route_with(xsimd::default_arch{}, cfg, logits, bias);
}

// The fast router's scores (P, or a when balancing does not run) and report.
struct Scores {
    std::vector<float> p;
    SinkhornReport report;
};

template <class Arch>
Scores scores_with(Arch arch, SinkhornConfig const& cfg, std::vector<float> const& logits) {
    Sinkhorn const router(cfg);
    auto const E = cfg.num_experts, T = static_cast<std::int64_t>(logits.size()) / E;
    std::vector<std::byte> bytes(smoe::required_bytes(router.workspace_size(T)));
    smoe::Workspace ws(bytes);
    Scores s;
    s.p.resize(logits.size());
    s.report = router.balanced_scores(arch, MatrixView<float const>(logits.data(), T, E), MatrixView<float>(s.p.data(), T, E), ws);
    return s;
}

// routing.md §7 worked example: E = 3, T = 4.
std::vector<float> const kExampleLogits = {2.0f, 1.0f, 0.0f,   //
                                           1.8f, 0.2f, 1.0f,   //
                                           1.5f, 1.4f, -1.0f,  //
                                           1.2f, 0.0f, 0.9f};
std::vector<double> const kExampleP = {0.109823,  0.0934317, 0.0467418, 0.0868082, 0.040531,  0.122667,
                                       0.0746091, 0.15612,   0.0192601, 0.0620935, 0.0432504, 0.144664};

SinkhornConfig example_cfg(std::int64_t k, std::int64_t max_iterations = 100) {
    return {.num_experts = 3, .top_k = k, .tol = 1e-4, .max_iterations = max_iterations};
}

using smoe_test::check_row;

using smoe_test::check_all_close;

// Both views hold the same pairs with bit-identical weights, CSR token ids increase within an expert,
// and slots point back at the token-major entry; fixed k and no null experts, so nnz = T k.
void check_views_agree(smoe::RoutingResult const& r) { smoe_test::check_views_agree(r, {.all_dispatched = true}); }

// routing.md §0 agreement for Sinkhorn. The oracle balances in double and may stop one iteration
// apart from the fp32 router near tol (P then differs by about err, far more than 1e-5), so when the
// counts differ the oracle is rerun for exactly the router's count (tol = 0, max_iterations = n).
// Then, per token: the same selected set gives the same row (ids exact, weights within 1e-6); a
// different set is allowed only where the swapped experts' P (the oracle's) lie within 1e-5 relative.
// Every weight is the activation at its id, within 1e-6 of the oracle's.
struct Agreement {
    std::int64_t swapped_tokens = 0;
    bool same_iterations = true;
};

Agreement check_matches_oracle(smoe::RoutingResult const& fast, SinkhornReport const& fast_report, SinkhornConfig const& cfg,
                               std::vector<float> const& logits) {
    auto const E = cfg.num_experts, k = cfg.top_k, T = static_cast<std::int64_t>(logits.size()) / E;
    MatrixView<float const> const view(logits.data(), T, E);
    Agreement agreement;
    auto scores = smoe::reference::sinkhorn_scores(cfg, view);
    CHECK(fast_report.balanced == scores.report.balanced);
    SinkhornConfig used = cfg;
    if (fast_report.iterations != scores.report.iterations) {
        agreement.same_iterations = false;
        used.tol = 0.0;
        used.max_iterations = fast_report.iterations;
        scores = smoe::reference::sinkhorn_scores(used, view);
        REQUIRE(scores.report.iterations == fast_report.iterations);
    }
    auto const ref = smoe::reference::route_sinkhorn(used, view);
    REQUIRE(fast.num_tokens == T);
    REQUIRE(fast.k == k);
    for (std::int64_t t = 0; t < T; ++t) {
        INFO("token " << t);
        std::set<std::int32_t> got, want;
        for (std::int64_t j = 0; j < k; ++j) {
            std::int32_t const e = fast.expert_ids(t, j);
            REQUIRE(e >= 0);
            REQUIRE(e < E);
            got.insert(e);
            want.insert(ref.expert_ids[t * k + j]);
            INFO("slot " << j << ", expert " << e);
            CHECK(fast.expert_weights(t, j) == Approx(scores.activation[t * E + e]).epsilon(1e-6).margin(1e-30));
        }
        REQUIRE(got.size() == static_cast<std::size_t>(k));
        if (got == want) {
            for (std::int64_t j = 0; j < k; ++j) {
                INFO("slot " << j);
                CHECK(fast.expert_ids(t, j) == ref.expert_ids[t * k + j]);
                CHECK(fast.expert_weights(t, j) == Approx(ref.expert_weights[t * k + j]).epsilon(1e-6).margin(1e-30));
            }
            continue;
        }
        ++agreement.swapped_tokens;
        for (auto e : got) {
            if (want.count(e)) continue;
            for (auto f : want) {
                if (got.count(f)) continue;
                double const pe = scores.balanced[t * E + e], pf = scores.balanced[t * E + f];
                INFO("fast picked " << e << " (P " << pe << "), oracle picked " << f << " (P " << pf << ")");
                CHECK(std::fabs(pe - pf) <= 1e-5 * std::max(pe, pf) + 1e-30);
            }
        }
    }
    return agreement;
}

}  // namespace

TEST_CASE("sinkhorn reproduces the balanced scores of the routing.md worked example", "[router][sinkhorn][spec]") {
    smoe_test::for_each_arch([](auto arch) {
        INFO("arch " << decltype(arch)::name());
        for (std::int64_t k : {1, 2}) {  // the activation does not enter P
            auto const s = scores_with(arch, example_cfg(k), kExampleLogits);
            check_all_close(s.p, kExampleP, 1e-5);
            CHECK(s.report.balanced);
            CHECK(s.report.iterations == 6);
            CHECK(s.report.converged);
            CHECK(s.report.error == Approx(8.46e-5).epsilon(6e-4));  // printed to 3 digits
            for (std::int64_t e = 0; e < 3; ++e) {  // columns sum to 1/E
                double col = 0;
                for (std::int64_t t = 0; t < 4; ++t) col += s.p[t * 3 + e];
                CHECK(col == Approx(1.0 / 3.0).epsilon(1e-5));
            }
            for (std::int64_t t = 0; t < 4; ++t)  // rows to about 1/T (within err)
                CHECK(s.p[t * 3] + s.p[t * 3 + 1] + s.p[t * 3 + 2] == Approx(0.25).epsilon(1e-3));
        }
    });
    auto const ref = smoe::reference::sinkhorn_scores(example_cfg(1), MatrixView<float const>(kExampleLogits.data(), 4, 3));
    check_all_close(ref.balanced, kExampleP, 1e-5);
    CHECK(ref.report.iterations == 6);
    CHECK(ref.report.converged);
    CHECK(ref.report.error == Approx(8.46e-5).epsilon(6e-4));
}

TEST_CASE("sinkhorn routes the routing.md worked example with k = 1, k = 2 and no balancing", "[router][sinkhorn][spec]") {
    MatrixView<float const> const view(kExampleLogits.data(), 4, 3);
    std::vector<std::int32_t> const k1_offsets = {0, 1, 2, 4}, k1_tokens = {0, 2, 1, 3};
    std::vector<double> const k1_weights = {0.880797, 0.802184, 0.731059, 0.710949};
    auto check_k1 = [&](smoe::RoutingResult const& r) {
        check_row(r, 0, {0}, {0.880797});
        check_row(r, 1, {2}, {0.731059});
        check_row(r, 2, {1}, {0.802184});
        check_row(r, 3, {2}, {0.710949});
        CHECK(std::vector<std::int32_t>(r.offsets.begin(), r.offsets.end()) == k1_offsets);
        CHECK(std::vector<std::int32_t>(r.token_ids.begin(), r.token_ids.end()) == k1_tokens);
        check_all_close(r.weights, k1_weights, 1e-5);
    };
    auto check_k2 = [](smoe::RoutingResult const& r) {
        check_row(r, 0, {0, 1}, {0.665241, 0.244728});
        check_row(r, 1, {0, 2}, {0.605611, 0.272118});
        check_row(r, 2, {0, 1}, {0.503291, 0.455396});
        check_row(r, 3, {0, 2}, {0.489713, 0.362788});
    };
    auto check_unbalanced = [](smoe::RoutingResult const& r) {
        check_row(r, 0, {0}, {0.880797});
        check_row(r, 1, {0}, {0.858149});
        check_row(r, 2, {0}, {0.817575});
        check_row(r, 3, {0}, {0.768525});
        CHECK(r.load(0) == 4);
    };
    smoe_test::for_each_arch([&](auto arch) {
        INFO("arch " << decltype(arch)::name());
        auto const k1 = route_with(arch, example_cfg(1), kExampleLogits);
        check_k1(k1.r);
        check_views_agree(k1.r);
        CHECK(k1.report().iterations == 6);
        CHECK(k1.report().converged);
        auto const k2 = route_with(arch, example_cfg(2), kExampleLogits);
        check_k2(k2.r);
        check_views_agree(k2.r);
        auto const off = route_with(arch, example_cfg(1, 0), kExampleLogits);
        check_unbalanced(off.r);
        CHECK(off.report().iterations == 0);
        CHECK_FALSE(off.report().balanced);
        check_unbalanced(route_with(arch, SinkhornConfig::megatron_eval(3, 1), kExampleLogits).r);
    });
    check_k1(smoe::reference::route_sinkhorn(example_cfg(1), view).view());
    check_k2(smoe::reference::route_sinkhorn(example_cfg(2), view).view());
    check_unbalanced(smoe::reference::route_sinkhorn(example_cfg(1, 0), view).view());
}

TEST_CASE("sinkhorn agrees with the double oracle on random shapes", "[router][sinkhorn][random]") {
    std::mt19937_64 rng(20261124);
    std::vector<std::int64_t> const widths = {1, 2, 3, 5, 7, 8, 9, 16, 17, 31, 60, 64, 100, 128, 256};
    std::int64_t checked = 0, swapped = 0, trials = 0, differing_counts = 0;
    for (int trial = 0; trial < 90; ++trial) {
        std::int64_t const E = widths[rng() % widths.size()];
        std::int64_t const T = trial % 15 == 0 ? (trial == 0 ? 4096 : 500 + static_cast<std::int64_t>(rng() % 600)) : 2 + static_cast<std::int64_t>(rng() % 120);
        SinkhornConfig cfg{.num_experts = E, .top_k = 1 + static_cast<std::int64_t>(rng() % std::min<std::int64_t>(E, 8))};
        if (rng() % 6 == 0) cfg.top_k = E;
        double const tols[] = {1e-4, 1e-3, 1e-6};
        cfg.tol = tols[rng() % 3];
        if (rng() % 5 == 0) cfg.max_iterations = 1 + static_cast<std::int64_t>(rng() % 8);  // stopped by the cap
        // Logits on a 1/64 grid: exact ties (equal columns, equal activations) occur. sd = 4 reaches the
        // fp32 noise floor routing.md §7 measured for small T, where the oracle stops at another count.
        double const sds[] = {0.5, 1.0, 2.0, 4.0};
        double const sd = sds[rng() % 4];
        auto const logits = smoe_test::normal(rng, static_cast<std::size_t>(T * E), sd, 1.0 / 64);
        INFO("trial " << trial << ": E " << E << ", T " << T << ", k " << cfg.top_k << ", tol " << cfg.tol << ", cap "
                      << cfg.max_iterations << ", sd " << sd);
        smoe_test::for_each_arch([&](auto arch) {
            INFO("arch " << decltype(arch)::name());
            auto const o = route_with(arch, cfg, logits);
            auto const a = check_matches_oracle(o.r, o.report(), cfg, logits);
            check_views_agree(o.r);
            swapped += a.swapped_tokens;
            differing_counts += a.same_iterations ? 0 : 1;
            ++trials;
        });
        checked += T;
    }
    CHECK(checked > 5000);
    // Disagreements are rare near-ties, not a systematic difference.
    CHECK(swapped * 1000 <= checked);
    CHECK(differing_counts * 10 <= trials);
}

TEST_CASE("sinkhorn skips balancing for a single token and accepts T = 0", "[router][sinkhorn][edge]") {
    // One row balances to 1/E everywhere; smoe selects on the activation instead: expert 1, sigmoid(2).
    auto const one = route_default(example_cfg(1), {0.0f, 2.0f, 1.0f});
    check_row(one.r, 0, {1}, {1.0 / (1.0 + std::exp(-2.0))});
    CHECK_FALSE(one.report().balanced);
    CHECK(one.report().iterations == 0);
    auto const s = scores_with(xsimd::default_arch{}, example_cfg(2), {0.0f, 2.0f, 1.0f});
    double const z = 1.0 + std::exp(2.0) + std::exp(1.0);
    check_all_close(s.p, {1.0 / z, std::exp(2.0) / z, std::exp(1.0) / z}, 1e-6);

    auto const empty = route_default(example_cfg(2), {});
    CHECK(empty.r.num_tokens == 0);
    CHECK(empty.r.k == 2);
    CHECK(empty.r.nnz() == 0);
    for (auto off : empty.r.offsets) CHECK(off == 0);
    CHECK(empty.report().iterations == 0);
    auto const ref = smoe::reference::route_sinkhorn(example_cfg(2), MatrixView<float const>(nullptr, 0, 3));
    CHECK(ref.k == 2);
    CHECK(ref.offsets == std::vector<std::int32_t>(4, 0));
}

TEST_CASE("sinkhorn with tol = 0 runs to the cap and a small cap stops early", "[router][sinkhorn][edge]") {
    MatrixView<float const> const view(kExampleLogits.data(), 4, 3);
    for (std::int64_t cap : {20, 150}) {
        SinkhornConfig const cfg{.num_experts = 3, .top_k = 2, .tol = 0.0, .max_iterations = cap};
        auto const o = route_default(cfg, kExampleLogits);
        CHECK(o.report().iterations == cap);
        SinkhornReport ref_report;
        smoe::reference::route_sinkhorn(cfg, view, &ref_report);
        CHECK(ref_report.iterations == cap);
        // Past n = 6 the scores move by less than err: the k = 2 routing stays that of the example.
        check_row(o.r, 0, {0, 1}, {0.665241, 0.244728});
        check_row(o.r, 3, {0, 2}, {0.489713, 0.362788});
        auto const s = scores_with(xsimd::default_arch{}, cfg, kExampleLogits);
        check_all_close(s.p, smoe::reference::sinkhorn_scores(cfg, view).balanced, 1e-5);
    }
    // The example needs 6 iterations for tol 1e-4; a cap of 3 stops without converging, on the
    // oracle's 3-iteration P.
    auto const capped = example_cfg(1, 3);
    auto const s = scores_with(xsimd::default_arch{}, capped, kExampleLogits);
    CHECK(s.report.iterations == 3);
    CHECK_FALSE(s.report.converged);
    CHECK(s.report.error > 1e-4);
    auto const ref = smoe::reference::sinkhorn_scores(capped, view);
    CHECK(ref.report.iterations == 3);
    CHECK_FALSE(ref.report.converged);
    check_all_close(s.p, ref.balanced, 1e-5);
    auto const o = route_default(capped, kExampleLogits);
    check_matches_oracle(o.r, o.report(), capped, kExampleLogits);
}

TEST_CASE("sinkhorn shifts rows so logits above 88.7 and very negative rows stay exact", "[router][sinkhorn][edge]") {
    // exp(100) overflows fp32 (Megatron exponentiates raw logits); the row shift leaves P unchanged.
    for (float shift : {100.0f, 200.0f, -100.0f}) {
        INFO("shift " << shift);
        std::vector<float> logits = kExampleLogits;
        for (auto& x : logits) x += shift;
        smoe_test::for_each_arch([&](auto arch) {
            INFO("arch " << decltype(arch)::name());
            auto const s = scores_with(arch, example_cfg(2), logits);
            check_all_close(s.p, kExampleP, 1e-5);
            CHECK(s.report.iterations == 6);
            auto const k2 = route_with(arch, example_cfg(2), logits);  // softmax is shift-invariant too
            check_row(k2.r, 0, {0, 1}, {0.665241, 0.244728});
            check_row(k2.r, 1, {0, 2}, {0.605611, 0.272118});
            check_row(k2.r, 2, {0, 1}, {0.503291, 0.455396});
            check_row(k2.r, 3, {0, 2}, {0.489713, 0.362788});
            auto const k1 = route_with(arch, example_cfg(1), logits);  // the balanced choice of the example
            for (std::int64_t t = 0; t < 4; ++t) {
                CHECK(k1.r.expert_ids(t, 0) == std::vector<int>{0, 2, 1, 2}[t]);
                CHECK(std::isfinite(k1.r.expert_weights(t, 0)));
            }
        });
    }
}

TEST_CASE("sinkhorn breaks exact ties toward the lower expert id", "[router][sinkhorn][ties]") {
    // Every logit equal: K, d1 and P are uniform, so experts 0 and 1 win for every token.
    std::vector<float> const flat(5 * 7, 0.25f);
    smoe_test::for_each_arch([&](auto arch) {
        auto const o = route_with(arch, {.num_experts = 7, .top_k = 2}, flat);
        for (std::int64_t t = 0; t < 5; ++t) check_row(o.r, t, {0, 1}, {1.0 / 7, 1.0 / 7});
    });
    // Experts 1 and 3 have equal columns (so equal d1 and equal P in every row): 1 wins over 3.
    std::vector<float> const twin = {0.0f, 1.0f, -1.0f, 1.0f,  //
                                     0.5f, 0.5f, 2.0f, 0.5f,   //
                                     2.0f, 1.5f, 0.0f, 1.5f};
    smoe_test::for_each_arch([&](auto arch) {
        auto const o = route_with(arch, {.num_experts = 4, .top_k = 1}, twin);
        auto const ref = smoe::reference::route_sinkhorn({.num_experts = 4, .top_k = 1}, MatrixView<float const>(twin.data(), 3, 4));
        for (std::int64_t t = 0; t < 3; ++t) {
            CHECK(o.r.expert_ids(t, 0) != 3);
            CHECK(o.r.expert_ids(t, 0) == ref.expert_ids[t]);
        }
    });
}

TEST_CASE("sinkhorn routes all-negative logits like any other input", "[router][sinkhorn][edge]") {
    std::mt19937_64 rng(41);
    auto logits = smoe_test::normal(rng, 40 * 12, 1.0, 1.0 / 64);
    for (auto& x : logits) x -= 30.0f;
    SinkhornConfig const cfg{.num_experts = 12, .top_k = 3};
    auto const o = route_default(cfg, logits);
    CHECK(o.report().converged);
    check_matches_oracle(o.r, o.report(), cfg, logits);
}

TEST_CASE("sinkhorn reports the iterations of each call through the router and an out-parameter",
          "[router][sinkhorn][report]") {
    Sinkhorn const router(example_cfg(1));
    std::vector<std::byte> bytes(smoe::required_bytes(router.workspace_size(4)));
    std::vector<std::int32_t> ids(4);
    std::vector<float> w(4);
    smoe::TokenMajorOut const out{MatrixView<std::int32_t>(ids.data(), 4, 1), MatrixView<float>(w.data(), 4, 1)};
    SinkhornReport report;
    smoe::Workspace ws(bytes);
    router.route(xsimd::default_arch{}, MatrixView<float const>(kExampleLogits.data(), 4, 3), {}, out, ws, report);
    CHECK(report.iterations == 6);
    CHECK(report.converged);
    CHECK(router.last_iterations() == 0);  // the overload leaves the router untouched
    smoe::Workspace ws2(bytes);
    router.route(xsimd::default_arch{}, MatrixView<float const>(kExampleLogits.data(), 4, 3), {}, out, ws2);
    CHECK(router.last_iterations() == 6);
    CHECK(router.last_converged());
    CHECK(ids == std::vector<std::int32_t>{0, 2, 1, 2});

    // megatron_eval is the top-k of the activation: TopK with sigmoid (k = 1) or softmax (k > 1).
    std::mt19937_64 rng(43);
    auto const logits = smoe_test::normal(rng, 50 * 16, 1.5, 1.0 / 64);
    for (std::int64_t k : {1, 4}) {
        auto const cfg = SinkhornConfig::megatron_eval(16, k);
        CHECK(cfg.max_iterations == 0);
        auto const o = route_default(cfg, logits);
        smoe::router::TopKConfig const topk{
            .num_experts = 16, .top_k = k, .score_func = k == 1 ? smoe::router::ScoreFunc::sigmoid : smoe::router::ScoreFunc::softmax};
        auto const ref = smoe::reference::route_topk(topk, MatrixView<float const>(logits.data(), 50, 16));
        for (std::int64_t t = 0; t < 50; ++t)
            for (std::int64_t j = 0; j < k; ++j) {
                CHECK(o.r.expert_ids(t, j) == ref.expert_ids[t * k + j]);
                CHECK(o.r.expert_weights(t, j) == Approx(ref.expert_weights[t * k + j]).epsilon(1e-6));
            }
    }
}

TEST_CASE("sinkhorn rejects bad configs and inputs with a named smoe::invalid_argument", "[router][sinkhorn][errors]") {
    using Catch::Matchers::Contains;
    CHECK_THROWS_WITH(Sinkhorn({.num_experts = 0, .top_k = 1}), Contains("num_experts"));
    CHECK_THROWS_WITH(Sinkhorn({.num_experts = 4, .top_k = 5}), Contains("top_k") && Contains("5"));
    CHECK_THROWS_WITH(Sinkhorn({.num_experts = 4, .top_k = 0}), Contains("top_k"));
    CHECK_THROWS_WITH(Sinkhorn({.num_experts = 4, .top_k = 1, .tol = -1e-4}), Contains("tol"));
    CHECK_THROWS_WITH(Sinkhorn({.num_experts = 4, .top_k = 1, .tol = std::numeric_limits<double>::quiet_NaN()}), Contains("tol"));
    CHECK_THROWS_WITH(Sinkhorn({.num_experts = 4, .top_k = 1, .tol = std::numeric_limits<double>::infinity()}), Contains("tol"));
    CHECK_THROWS_WITH(Sinkhorn({.num_experts = 4, .top_k = 1, .max_iterations = -1}), Contains("max_iterations") && Contains("-1"));
    CHECK_THROWS_AS(Sinkhorn({.num_experts = 4, .top_k = 5}), smoe::invalid_argument);
    CHECK_NOTHROW(Sinkhorn({.num_experts = 4, .top_k = 4, .tol = 0.0, .max_iterations = 0}));

    std::vector<float> logits = {0.0f, 1.0f, 2.0f, 3.0f, 0.0f, 1.0f, 2.0f, 3.0f};
    SinkhornConfig const cfg{.num_experts = 4, .top_k = 2};
    logits[6] = std::numeric_limits<float>::quiet_NaN();
    CHECK_THROWS_WITH(route_default(cfg, logits), Contains("logits") && Contains("nan") && Contains("token 1, expert 2"));
    CHECK_THROWS_WITH(smoe::reference::route_sinkhorn(cfg, MatrixView<float const>(logits.data(), 2, 4)),
                      Contains("logits") && Contains("token 1, expert 2"));
    logits[6] = 2.0f;
    logits[1] = -std::numeric_limits<float>::infinity();
    CHECK_THROWS_WITH(route_default(cfg, logits), Contains("logits") && Contains("inf") && Contains("token 0, expert 1"));
    logits[1] = 1.0f;
    CHECK_THROWS_WITH(route_default(cfg, logits, {0.0f, 0.0f, 0.0f, 0.0f}), Contains("expert_bias"));

    // A workspace planned for fewer tokens than the call is refused, not overrun.
    Sinkhorn router(cfg);
    std::vector<std::byte> small(smoe::routing_workspace_size(router, 1));
    std::vector<float> const many(40 * 4, 0.5f);
    CHECK_THROWS_WITH(smoe::route(router, MatrixView<float const>(many.data(), 40, 4), {}, small), Contains("workspace"));
}

TEST_CASE("the layer with a sinkhorn router matches the oracle", "[router][sinkhorn][layer]") {
    using Layer = smoe_test::SwiGLULayer<Sinkhorn>;
    std::mt19937_64 rng(44);
    struct Shape {
        std::int64_t d, f, E, k, T;
    };
    std::vector<Shape> const shapes = {{16, 12, 8, 2, 64}, {17, 33, 6, 1, 33}, {33, 20, 60, 4, 100}, {8, 9, 3, 3, 2}, {12, 7, 5, 2, 1}};
    for (auto const& s : shapes) {
        INFO("d " << s.d << ", f " << s.f << ", E " << s.E << ", k " << s.k << ", T " << s.T);
        auto const m = smoe_test::LayerModel<Sinkhorn>::random(rng, s.d, s.f, s.E);
        auto const x = smoe_test::normal(rng, static_cast<std::size_t>(s.T * s.d), 1.0);
        SinkhornConfig const cfg{.num_experts = s.E, .top_k = s.k};
        Layer layer({.router = cfg, .expert = m.expert_cfg(), .max_tokens = s.T}, m.weights());
        std::vector<float> y(static_cast<std::size_t>(s.T * s.d));
        auto const r = layer.forward(MatrixView<float const>(x.data(), s.T, s.d), MatrixView<float>(y.data(), s.T, s.d));
        CHECK(layer.router().last_report().balanced == (s.T >= 2));

        // The oracle on the layer's own fp32 logits, for the layer's iteration count.
        auto const logits = smoe_test::gate_logits(m, x, s.T);
        auto const a = check_matches_oracle(r, layer.router().last_report(), cfg, logits);
        REQUIRE(a.swapped_tokens == 0);  // continuous logits: no near-ties here
        SinkhornConfig used = cfg;
        if (!a.same_iterations) used = {.num_experts = s.E, .top_k = s.k, .tol = 0.0, .max_iterations = layer.router().last_iterations()};
        auto const want = smoe::reference::route_sinkhorn(used, MatrixView<float const>(logits.data(), s.T, s.E));
        auto const ref = smoe::reference::combine_swiglu(want.view(), m.experts(), MatrixView<float const>(x.data(), s.T, s.d));
        smoe_test::check_close(y, ref, s.T, s.d, 2e-5);  // experts.md §9: max-abs error over max |ref| per token
    }
}
