#pragma once
// Routing a router through smoe::route on a chosen ISA, and the checks every router's tests share:
// one token-major row, the two views of a RoutingResult agreeing, and agreement with a scalar oracle.

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <vector>

#include <catch2/catch.hpp>
#include "smoe/detail/xsimd.hpp"  // not <xsimd/xsimd.hpp>: see there

#include "smoe/route.hpp"

namespace smoe_test {

// A routing result together with the workspace it points into, so the result stays valid.
struct Routed {
    std::vector<std::byte> ws;
    smoe::RoutingResult r;
};

// Routes `logits` ([T, router.num_logits()], T from the length) through smoe::route<Arch>, sizing `ws`
// for T first; the result points into `ws`.
template <class Arch, class Router>
smoe::RoutingResult route_into(Arch, Router const& router, std::vector<float> const& logits, std::vector<float> const& bias,
                               std::vector<std::byte>& ws) {
    auto const W = router.num_logits();
    auto const T = static_cast<std::int64_t>(logits.size()) / W;
    ws.resize(smoe::routing_workspace_size(router, T));
    return smoe::route<Arch>(router, smoe::MatrixView<float const>(logits.data(), T, W), bias, ws);
}

template <class Arch, class Router>
Routed route_router(Arch arch, Router const& router, std::vector<float> const& logits, std::vector<float> const& bias = {}) {
    Routed out;
    out.r = route_into(arch, router, logits, bias, out.ws);
    return out;
}

// route_with(arch, cfg, logits[, bias]) and route_default(cfg, logits[, bias]) for one router type:
// a test file declares `constexpr smoe_test::RouteWith<TopK> route_with{};` and so on. The config
// parameter is not deduced, so designated initialisers work at the call site.
template <class Router>
struct RouteWith {
    template <class Arch>
    Routed operator()(Arch arch, typename Router::Config const& cfg, std::vector<float> const& logits,
                      std::vector<float> const& bias = {}) const {
        return route_router(arch, Router(cfg), logits, bias);
    }
};

template <class Router>
struct RouteDefault {
    Routed operator()(typename Router::Config const& cfg, std::vector<float> const& logits,
                      std::vector<float> const& bias = {}) const {
        return route_router(xsimd::default_arch{}, Router(cfg), logits, bias);
    }
};

// Fixed-k row: K is exactly ids.size(), slot j holds ids[j] with weight w[j] (1e-5 relative: the spec
// prints 6 digits).
inline void check_row(smoe::RoutingResult const& r, std::int64_t t, std::vector<int> ids, std::vector<double> w) {
    INFO("token " << t);
    REQUIRE(r.k == static_cast<std::int64_t>(ids.size()));
    for (std::size_t j = 0; j < ids.size(); ++j) {
        CHECK(r.expert_ids(t, static_cast<std::int64_t>(j)) == ids[j]);
        CHECK(r.expert_weights(t, static_cast<std::int64_t>(j)) == Approx(w[j]).epsilon(1e-5));
    }
}

// Variable-k row: row t holds `ids` with weights `w` (1e-5 relative), then -1 / 0 up to K.
inline void check_padded_row(smoe::RoutingResult const& r, std::int64_t t, std::vector<int> const& ids,
                             std::vector<double> const& w, double epsilon = 1e-5, double margin = 0.0) {
    INFO("token " << t);
    REQUIRE(r.k >= static_cast<std::int64_t>(ids.size()));
    for (std::int64_t j = 0; j < r.k; ++j) {
        INFO("slot " << j);
        if (j < static_cast<std::int64_t>(ids.size())) {
            CHECK(r.expert_ids(t, j) == ids[j]);
            CHECK(r.expert_weights(t, j) == Approx(w[j]).epsilon(epsilon).margin(margin));
        } else {
            CHECK(r.expert_ids(t, j) == -1);
            CHECK(r.expert_weights(t, j) == 0.0f);
        }
    }
}

// What check_views_agree also checks, beyond what holds for every router.
struct ViewRules {
    bool no_padding = false;     // every token-major id is >= 0 (fixed k)
    bool sorted_rows = false;    // each row by weight descending, ties to the lower id, padding last
    bool all_dispatched = false;  // nnz == T * k (fixed k, no null experts)
};

// Both views hold the same pairs with bit-identical weights, CSR token ids increase within an expert,
// and slots point back at the token-major entry. Ids >= E (null experts) are in the token-major view only.
inline void check_views_agree(smoe::RoutingResult const& r, ViewRules rules = {}) {
    REQUIRE(r.offsets.size() == static_cast<std::size_t>(r.num_experts + 1));
    CHECK(r.offsets[0] == 0);
    if (rules.all_dispatched) REQUIRE(r.nnz() == r.num_tokens * r.k);
    std::int64_t dispatched = 0;
    for (std::int64_t t = 0; t < r.num_tokens; ++t)
        for (std::int64_t j = 0; j < r.k; ++j) {
            if (rules.no_padding) REQUIRE(r.expert_ids(t, j) >= 0);
            if (rules.sorted_rows && j > 0 && r.expert_ids(t, j) >= 0) {
                REQUIRE(r.expert_ids(t, j - 1) >= 0);
                CHECK((r.expert_weights(t, j - 1) > r.expert_weights(t, j) ||
                       (r.expert_weights(t, j - 1) == r.expert_weights(t, j) && r.expert_ids(t, j - 1) < r.expert_ids(t, j))));
            }
            if (r.expert_ids(t, j) >= 0 && r.expert_ids(t, j) < r.num_experts) ++dispatched;
        }
    REQUIRE(r.nnz() == dispatched);
    for (std::int64_t e = 0; e < r.num_experts; ++e) {
        REQUIRE(r.offsets[e] <= r.offsets[e + 1]);
        for (std::int32_t row = r.offsets[e]; row < r.offsets[e + 1]; ++row) {
            if (row > r.offsets[e]) CHECK(r.token_ids[row] > r.token_ids[row - 1]);
            std::int64_t const t = r.slots[row] / r.k, j = r.slots[row] % r.k;
            CHECK(t == r.token_ids[row]);
            CHECK(r.expert_ids(t, j) == e);
            CHECK(r.expert_weights(t, j) == r.weights[row]);
        }
    }
}

// Exact ids, K and CSR; weights within 1e-6 relative (routing.md §0, "Agreement").
inline void check_matches_oracle(smoe::RoutingResult const& fast, smoe::RoutingResult const& ref) {
    REQUIRE(fast.num_tokens == ref.num_tokens);
    REQUIRE(fast.k == ref.k);
    for (std::int64_t t = 0; t < fast.num_tokens; ++t)
        for (std::int64_t j = 0; j < fast.k; ++j) {
            double const want = ref.expert_weights(t, j), got = fast.expert_weights(t, j);
            INFO("token " << t << ", slot " << j << ", relative error " << std::fabs(got - want) / std::fabs(want));
            REQUIRE(fast.expert_ids(t, j) == ref.expert_ids(t, j));
            CHECK(fast.expert_weights(t, j) == Approx(ref.expert_weights(t, j)).epsilon(1e-6).margin(1e-30));
        }
    REQUIRE(fast.nnz() == ref.nnz());
    for (std::int64_t e = 0; e <= fast.num_experts; ++e) CHECK(fast.offsets[e] == ref.offsets[e]);
    for (std::int64_t i = 0; i < fast.nnz(); ++i) CHECK(fast.token_ids[i] == ref.token_ids[i]);
}

}  // namespace smoe_test
