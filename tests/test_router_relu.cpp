// router::ReLU (ReMoE) against routing.md §6's worked example, the scalar oracle, the spec's edge
// cases, and inside MoELayer.

#include <algorithm>
#include <cmath>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include <catch2/catch.hpp>

#include "common/data.hpp"
#include "common/layer_model.hpp"
#include "common/routing_checks.hpp"
#include "smoe/kernels/reference/moe.hpp"
#include "smoe/kernels/reference/relu.hpp"
#include "smoe/route.hpp"
#include "smoe/router/relu.hpp"
#include "smoe/smoe.hpp"

using smoe::MatrixView;
using smoe::router::ReLU;
using smoe::router::ReLUConfig;
using Catch::Matchers::Contains;

namespace {

float const kNaN = std::numeric_limits<float>::quiet_NaN();
float const kInf = std::numeric_limits<float>::infinity();

template <class Arch>
smoe_test::Routed route_with(Arch arch, std::int64_t E, std::vector<float> const& logits) {
    return smoe_test::route_router(arch, ReLU({.num_experts = E}), logits);
}

smoe_test::Routed route_default(std::int64_t E, std::vector<float> const& logits) { return route_with(xsimd::default_arch{}, E, logits); }

smoe::RoutingData oracle(std::int64_t E, std::vector<float> const& logits) {
    return smoe::reference::route_relu({.num_experts = E},
                                       MatrixView<float const>(logits.data(), static_cast<std::int64_t>(logits.size()) / E, E));
}

// Row t holds `ids` with weights `w`, then -1 / 0 up to K. The weights are the logits themselves, so
// they are compared exactly.
void check_row(smoe::RoutingResult const& r, std::int64_t t, std::vector<int> ids, std::vector<float> w, bool padded = true) {
    INFO("token " << t);
    REQUIRE(r.k >= static_cast<std::int64_t>(ids.size()));
    for (std::int64_t j = 0; j < (padded ? r.k : static_cast<std::int64_t>(ids.size())); ++j) {
        INFO("slot " << j);
        if (j < static_cast<std::int64_t>(ids.size())) {
            CHECK(r.expert_ids(t, j) == ids[j]);
            CHECK(r.expert_weights(t, j) == w[j]);
        } else {
            CHECK(r.expert_ids(t, j) == -1);
            CHECK(r.expert_weights(t, j) == 0.0f);
        }
    }
}

using smoe_test::check_matches_oracle;
using smoe_test::check_views_agree;

// The routing.md §6 worked example: E = 4, T = 3.
std::vector<float> const kExampleLogits = {1.5f,  -0.5f, 0.0f,  0.25f,  //
                                           -1.0f, -2.0f, -0.1f, -3.0f,  //
                                           0.5f,  0.5f,  2.0f,  -1.0f};

void check_example(smoe::RoutingResult const& r) {
    CHECK(r.k == 3);
    check_row(r, 0, {0, 3}, {1.5f, 0.25f});  // 0.0 is not selected; one -1 of padding
    check_row(r, 1, {}, {});                 // all -1
    check_row(r, 2, {2, 0, 1}, {2.0f, 0.5f, 0.5f});  // 0 before 1 by the tie rule
    std::vector<std::int32_t> const offsets = {0, 2, 3, 4, 5}, tokens = {0, 2, 2, 2, 0};
    std::vector<float> const weights = {1.5f, 0.5f, 0.5f, 2.0f, 0.25f};
    CHECK(std::vector<std::int32_t>(r.offsets.begin(), r.offsets.end()) == offsets);
    CHECK(std::vector<std::int32_t>(r.token_ids.begin(), r.token_ids.end()) == tokens);
    CHECK(std::vector<float>(r.weights.begin(), r.weights.end()) == weights);
    check_views_agree(r);
}

}  // namespace

TEST_CASE("relu reproduces the routing.md worked example with its K and padding", "[router][relu][spec]") {
    SECTION("the scalar oracle") { check_example(oracle(4, kExampleLogits).view()); }
    SECTION("the SIMD router on every ISA") {
        smoe_test::for_each_arch([&](auto arch) {
            INFO("arch " << decltype(arch)::name());
            check_example(route_with(arch, 4, kExampleLogits).r);
        });
    }
}

TEST_CASE("relu agrees with the scalar oracle on random shapes", "[router][relu][random]") {
    std::mt19937_64 rng(20261125);
    std::vector<std::int64_t> const widths = {1, 2, 3, 5, 7, 8, 9, 16, 17, 31, 60, 64, 100, 128, 160, 256};
    std::int64_t checked = 0;
    for (int trial = 0; trial < 120; ++trial) {
        std::int64_t const E = widths[rng() % widths.size()];
        std::int64_t const T = trial % 20 == 0 ? (trial == 0 ? 4096 : 500 + static_cast<std::int64_t>(rng() % 500)) : static_cast<std::int64_t>(rng() % 97);
        // Logits on a 1/64 grid (exact ties and exact zeros are frequent), shifted from dense to very
        // sparse rows the way ReMoE's L1 penalty shifts them; some -0 among the zeros.
        double const shift = std::vector<double>{0.0, -0.5, -1.5, -3.0}[trial % 4];
        auto logits = smoe_test::normal(rng, static_cast<std::size_t>(T * E), trial % 2 ? 1.0 : 0.05, 1.0 / 64);
        for (auto& x : logits) {
            x = static_cast<float>(x + shift * (trial % 2 ? 1.0 : 0.05));
            if (x == 0.0f && rng() % 2) x = -0.0f;
        }
        INFO("trial " << trial << ": E " << E << ", T " << T << ", shift " << shift);
        auto const ref = oracle(E, logits);
        smoe_test::for_each_arch([&](auto arch) {
            INFO("arch " << decltype(arch)::name());
            auto const o = route_with(arch, E, logits);
            check_matches_oracle(o.r, ref.view());
            check_views_agree(o.r);
        });
        checked += T;
    }
    CHECK(checked > 1000);
}

TEST_CASE("relu selects strictly positive logits only: +0 and -0 are not selected", "[router][relu][edge]") {
    float const tiny = std::numeric_limits<float>::denorm_min();
    std::vector<float> const logits = {0.0f, -0.0f, tiny, -tiny, 0.0f, 3.0f, -0.0f, 0.0f, 0.0f};
    smoe_test::for_each_arch([&](auto arch) {
        auto const o = route_with(arch, 9, logits);
        CHECK(o.r.k == 2);
        check_row(o.r, 0, {5, 2}, {3.0f, tiny});
    });
    check_row(oracle(9, logits).view(), 0, {5, 2}, {3.0f, tiny});
}

TEST_CASE("relu with all rows empty gives K = 0 and nnz = 0", "[router][relu][edge]") {
    std::vector<float> logits(5 * 17);
    for (std::size_t i = 0; i < logits.size(); ++i) logits[i] = i % 3 == 0 ? 0.0f : (i % 3 == 1 ? -0.0f : -1.0f - float(i));
    smoe_test::for_each_arch([&](auto arch) {
        auto const o = route_with(arch, 17, logits);
        CHECK(o.r.num_tokens == 5);
        CHECK(o.r.k == 0);
        CHECK(o.r.nnz() == 0);
        for (auto off : o.r.offsets) CHECK(off == 0);
    });
    auto const ref = oracle(17, logits);
    CHECK(ref.k == 0);
    CHECK(ref.token_ids.empty());
}

TEST_CASE("relu accepts T = 0 with K = 0 and an empty CSR", "[router][relu][edge]") {
    auto const fast = route_default(6, {});
    auto const ref = oracle(6, {});
    for (auto const& r : {fast.r, ref.view()}) {
        CHECK(r.num_tokens == 0);
        CHECK(r.k == 0);
        CHECK(r.nnz() == 0);
        REQUIRE(r.offsets.size() == 7);
        for (auto off : r.offsets) CHECK(off == 0);
    }
}

TEST_CASE("relu orders exact ties in positive values by the lower expert id", "[router][relu][ties]") {
    // 17 equal values (a SIMD body and a tail) and a dense row of E = 256 with every value positive.
    std::vector<float> const equal(17, 0.75f);
    std::vector<int> ids(17);
    for (int e = 0; e < 17; ++e) ids[e] = e;
    check_row(route_default(17, equal).r, 0, ids, std::vector<float>(17, 0.75f));
    std::vector<float> dense(256);
    for (int e = 0; e < 256; ++e) dense[e] = 1.0f + float((e * 37) % 64) / 8.0f;  // values repeat four times
    auto const o = route_default(256, dense);
    CHECK(o.r.k == 256);
    for (std::int64_t j = 1; j < 256; ++j) {
        float const a = o.r.expert_weights(0, j - 1), b = o.r.expert_weights(0, j);
        REQUIRE((a > b || (a == b && o.r.expert_ids(0, j - 1) < o.r.expert_ids(0, j))));
    }
    // The largest value, 1 + 63/8, is where 37 e = 63 (mod 64): e = 63 · 45 mod 64 = 19 (45 = 37^-1 mod 64),
    // then every 64 experts; equal weights in id order.
    check_row(o.r, 0, {19, 83, 147, 211}, {8.875f, 8.875f, 8.875f, 8.875f}, false);
}

TEST_CASE("relu rejects a bad config, non-finite logits and any bias with a named error", "[router][relu][errors]") {
    CHECK_THROWS_WITH(ReLU({.num_experts = 0}), Contains("num_experts") && Contains("0"));
    CHECK_THROWS_WITH(ReLU({.num_experts = -3}), Contains("num_experts") && Contains("-3"));
    for (float bad : {kNaN, kInf, -kInf}) {
        std::vector<float> logits(3 * 9, 0.25f);
        logits[2 * 9 + 1] = bad;
        logits[1 * 9 + 8] = bad;  // the first offending entry: token 1, expert 8 (in the SIMD tail)
        smoe_test::for_each_arch([&](auto arch) {
            CHECK_THROWS_WITH(route_with(arch, 9, logits), Contains("logits") && Contains("token 1") && Contains("expert 8"));
        });
        CHECK_THROWS_WITH(oracle(9, logits), Contains("logits") && Contains("token 1") && Contains("expert 8"));
    }
    ReLU router({.num_experts = 4});
    std::vector<float> const logits(4, 1.0f), bias(4, 0.0f);
    std::vector<std::byte> ws(smoe::routing_workspace_size(router, 1));
    CHECK_THROWS_WITH(smoe::route(router, MatrixView<float const>(logits.data(), 1, 4), bias, ws), Contains("expert_bias"));
}

namespace {

using Layer = smoe_test::SwiGLULayer<ReLU>;
using Model = smoe_test::LayerModel<ReLU>;
using smoe_test::check_close;

}  // namespace

TEST_CASE("MoELayer with relu routing matches the oracle end to end", "[router][relu][layer]") {
    std::mt19937_64 rng(42);
    struct Shape {
        std::int64_t d, f, E, T;
        float gate_shift;  // added to gate column 0; x[:, 0] = 1 makes it a logit shift (sparser rows)
    };
    std::vector<Shape> const shapes = {{5, 3, 1, 7, 0.0f},     {16, 16, 8, 64, 0.0f},  {17, 33, 8, 65, -1.0f},
                                       {37, 29, 6, 100, -2.0f}, {33, 71, 60, 40, -1.5f}, {8, 9, 3, 2, 0.0f},
                                       {24, 20, 5, 1, 0.0f},    {24, 20, 5, 0, 0.0f},   {12, 10, 6, 9, -100.0f}};
    for (auto const& s : shapes) {
        INFO("d " << s.d << ", f " << s.f << ", E " << s.E << ", T " << s.T << ", shift " << s.gate_shift);
        Model m = Model::random(rng, s.d, s.f, s.E);
        auto x = smoe_test::normal(rng, static_cast<std::size_t>(s.T * s.d), 1.0);
        for (std::int64_t t = 0; t < s.T; ++t) x[t * s.d] = 1.0f;
        for (std::int64_t e = 0; e < s.E; ++e) m.gate[e * s.d] += s.gate_shift;
        std::vector<float> y(static_cast<std::size_t>(s.T * s.d), kNaN);
        Layer layer({.router = {.num_experts = s.E}, .expert = m.expert_cfg(), .max_tokens = std::max<std::int64_t>(s.T, 1)},
                    m.weights());
        std::vector<std::byte> ws(layer.workspace_size());
        auto const r = layer.forward(MatrixView<float const>(x.data(), s.T, s.d), MatrixView<float>(y.data(), s.T, s.d), ws);
        // The oracle routes the layer's own fp32 logits (the gate GEMM is tested on its own).
        auto const want = oracle(s.E, smoe_test::gate_logits(m, x, s.T));
        check_matches_oracle(r, want.view());
        if (s.gate_shift == -100.0f) {  // every logit negative: K = 0 and zero output
            CHECK(r.k == 0);
            for (float v : y) CHECK(v == 0.0f);
        }
        check_close(y, smoe::reference::combine_swiglu(want.view(), m.experts(), MatrixView<float const>(x.data(), s.T, s.d)),
                    s.T, s.d, 2e-5);
    }
}
