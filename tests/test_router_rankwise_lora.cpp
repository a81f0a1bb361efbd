// router::RankwiseLoRA and expert::LoraRank (SMoRA) against routing.md §8's worked example, the scalar
// oracle, the spec's edge cases, the standalone rankwise_lora_forward (any in/out, base layer) and
// MoELayer (in == out).

#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <span>
#include <vector>

#include <catch2/catch.hpp>

#include "common/approx.hpp"
#include "common/data.hpp"
#include "common/layer_model.hpp"
#include "common/routing_checks.hpp"
#include "smoe/expert/lora_rank.hpp"
#include "smoe/expert/rankwise_lora_forward.hpp"
#include "smoe/kernels/reference/rankwise_lora.hpp"
#include "smoe/route.hpp"
#include "smoe/router/rankwise_lora.hpp"
#include "smoe/smoe.hpp"

using smoe::MatrixView;
using smoe::expert::LoraRank;
using smoe::expert::RankwiseLoRAWeights;
using smoe::router::RankwiseLoRA;
using smoe::router::RankwiseLoRAConfig;
using Catch::Matchers::Contains;

namespace {

float const kNaN = std::numeric_limits<float>::quiet_NaN();
float const kInf = std::numeric_limits<float>::infinity();

constexpr smoe_test::RouteWith<RankwiseLoRA> route_with{};

// Biases >= 0 keep every c >= g > 0. A negative bias can make c and its sum cancel to near 0; then the
// 0.5-ulp rounding of the fp32 sigmoid is amplified past routing.md's 1e-6 (measured 1.3e-6 for
// c = -0.0138), which no fp32 score can avoid. SMoRA's trained biases move by 1e-5 per step.
std::vector<float> positive_bias(std::mt19937_64& rng, std::int64_t r) {
    auto b = smoe_test::normal(rng, static_cast<std::size_t>(r), 0.1, 1.0 / 256);
    for (auto& v : b) v = std::fabs(v);
    return b;
}

// An adapter's tensors, owned.
struct Adapter {
    RankwiseLoRAConfig cfg;
    std::vector<float> router, bias, A, B, W0, b0;

    RankwiseLoRAWeights weights() const {
        auto const r = cfg.rank, in = cfg.in_features, out = cfg.out_features;
        RankwiseLoRAWeights w{{router.data(), r, in}, bias, {A.data(), r, in}, {B.data(), out, r}, {}, b0};
        if (!W0.empty()) w.base_weight = MatrixView<float const>(W0.data(), out, in);
        return w;
    }

    static Adapter random(std::mt19937_64& rng, RankwiseLoRAConfig const& cfg, bool with_bias, bool with_base) {
        auto const r = static_cast<std::size_t>(cfg.rank), in = static_cast<std::size_t>(cfg.in_features),
                   out = static_cast<std::size_t>(cfg.out_features);
        Adapter a{cfg, smoe_test::normal(rng, r * in, 1.0 / std::sqrt(double(in))), {}, smoe_test::normal(rng, r * in, 0.5),
                  smoe_test::normal(rng, out * r, 0.5), {}, {}};
        if (with_bias) a.bias = positive_bias(rng, cfg.rank);
        if (with_base) {
            a.W0 = smoe_test::normal(rng, out * in, 0.3);
            a.b0 = smoe_test::normal(rng, out, 0.3);
        }
        return a;
    }
};

// routing.md §8: in = 3, out = 2, r = 4, k = 2, lora_alpha = 4, no base layer.
Adapter worked_example(std::vector<float> bias = {}) {
    return {{.in_features = 3, .out_features = 2, .rank = 4, .top_k = 2, .lora_alpha = 4.0f},
            {1, 0, 0, 0, 1, 0, 0, 0, 1, 1, 1, 1},
            std::move(bias),
            {1, 0, 0, 0, 1, 0, 0, 0, 1, 0.5f, 0.5f, 0.5f},
            {1, 0, 1, -1, 0, 1, 1, 1},
            {},
            {}};
}
std::vector<float> const kExampleX = {1, 0, -1, 0.5f, 2, 0};
std::vector<float> const kExampleZ = {1, 0, -1, 0, 0.5f, 2, 0, 2.5f};

// z = x · lora_routerᵀ on the given ISA (what rankwise_lora_forward computes).
template <class Arch>
std::vector<float> rank_logits(Arch arch, Adapter const& a, std::vector<float> const& x, std::int64_t T) {
    std::vector<float> z(static_cast<std::size_t>(T * a.cfg.rank));
    smoe::kernels::cpu::gemm_nt(arch, MatrixView<float const>(x.data(), T, a.cfg.in_features),
                                MatrixView<float const>(a.router.data(), a.cfg.rank, a.cfg.in_features),
                                MatrixView<float>(z.data(), T, a.cfg.rank));
    return z;
}

struct Forward {
    std::vector<std::byte> ws;
    std::vector<float> y;
    smoe::RoutingResult r;
};

template <class Arch>
Forward forward(Arch arch, Adapter const& a, std::vector<float> const& x) {
    auto const T = static_cast<std::int64_t>(x.size()) / a.cfg.in_features;
    RankwiseLoRA const router(a.cfg);
    Forward f;
    f.ws.resize(smoe::expert::rankwise_lora_workspace_size(router, T));
    f.y.assign(static_cast<std::size_t>(T * a.cfg.out_features), kNaN);
    f.r = smoe::expert::rankwise_lora_forward(arch, router, a.weights(), MatrixView<float const>(x.data(), T, a.cfg.in_features),
                                              MatrixView<float>(f.y.data(), T, a.cfg.out_features), f.ws);
    return f;
}

void check_example_routing(smoe::RoutingResult const& r) {
    smoe_test::check_row(r, 0, {0, 1}, {1.18769, 0.812309});
    smoe_test::check_row(r, 1, {3, 1}, {1.02401, 0.975985});
    smoe_test::check_equal(r.offsets, std::vector<std::int32_t>{0, 1, 3, 3, 4});
    smoe_test::check_equal(r.token_ids, std::vector<std::int32_t>{0, 0, 1, 1});
    smoe_test::check_all_close(r.weights, {1.18769, 0.812309, 0.975985, 1.02401}, 1e-5);
    smoe_test::check_views_agree(r, {.no_padding = true, .sorted_rows = true, .all_dispatched = true});
}

}  // namespace

TEST_CASE("rank-wise LoRA routing reproduces the worked example of routing.md section 8", "[router][rankwise_lora][spec]") {
    Adapter const a = worked_example();
    smoe_test::for_each_arch([&](auto arch) {
        CHECK(rank_logits(arch, a, kExampleX, 2) == kExampleZ);
        auto const got = route_with(arch, a.cfg, kExampleZ);
        check_example_routing(got.r);
    });
    auto const ref = smoe::reference::route_rankwise_lora(a.cfg, MatrixView<float const>(kExampleZ.data(), 2, 4));
    check_example_routing(ref.view());
}

TEST_CASE("rank-wise LoRA forward reproduces the worked example outputs", "[router][rankwise_lora][spec]") {
    Adapter const a = worked_example();
    smoe_test::for_each_arch([&](auto arch) {
        auto const f = forward(arch, a, kExampleX);
        check_example_routing(f.r);
        smoe_test::check_all_close(f.y, {2.37538, 0, -2.56004, 6.46398}, 1e-5, 1e-6);
    });
    auto const routing = smoe::reference::route_rankwise_lora(a.cfg, MatrixView<float const>(kExampleZ.data(), 2, 4));
    auto const y = smoe::reference::rankwise_lora_forward(a.cfg, a.weights(), routing.view(), MatrixView<float const>(kExampleX.data(), 2, 3));
    smoe_test::check_all_close(y, {2.37538, 0, -2.56004, 6.46398}, 1e-5, 1e-6);
}

TEST_CASE("lora_biases enter the rank weights as in the worked example", "[router][rankwise_lora][spec]") {
    Adapter const a = worked_example({0, 0, 0, -0.5f});
    auto check = [](smoe::RoutingResult const& r) {
        smoe_test::check_row(r, 0, {0, 1}, {1.18769, 0.812309});
        smoe_test::check_row(r, 1, {1, 0}, {1.17185, 0.828148});
        smoe_test::check_equal(r.offsets, std::vector<std::int32_t>{0, 2, 4, 4, 4});
        smoe_test::check_equal(r.token_ids, std::vector<std::int32_t>{0, 1, 0, 1});
    };
    smoe_test::for_each_arch([&](auto arch) {
        auto const f = forward(arch, a, kExampleX);
        check(f.r);
        smoe_test::check_all_close(std::vector<float>(f.y.begin() + 2, f.y.end()), {0.828148, 4.68741}, 1e-5);
    });
    auto const routing = smoe::reference::route_rankwise_lora(a.cfg, MatrixView<float const>(kExampleZ.data(), 2, 4), a.bias);
    check(routing.view());
    auto const y = smoe::reference::rankwise_lora_forward(a.cfg, a.weights(), routing.view(), MatrixView<float const>(kExampleX.data(), 2, 3));
    smoe_test::check_all_close(std::vector<double>(y.begin() + 2, y.end()), {0.828148, 4.68741}, 1e-5);
}

TEST_CASE("rank-wise LoRA routing matches the scalar oracle on random shapes", "[router][rankwise_lora][oracle]") {
    std::mt19937_64 rng(81);
    struct Shape {
        std::int64_t T, r, k;
    };
    for (Shape s : {Shape{1, 1, 1}, Shape{7, 5, 3}, Shape{33, 16, 4}, Shape{129, 37, 8}, Shape{1000, 64, 8}, Shape{4096, 256, 8}, Shape{300, 256, 16},
                    Shape{50, 13, 13}}) {
        for (bool with_bias : {false, true}) {
            INFO("T " << s.T << ", r " << s.r << ", k " << s.k << ", bias " << with_bias);
            RankwiseLoRAConfig const cfg{.in_features = 1, .out_features = 1, .rank = s.r, .top_k = s.k, .lora_alpha = 8.0f};
            // Grid-quantised: exact ties are common, near-ties are not.
            auto const z = smoe_test::normal(rng, static_cast<std::size_t>(s.T * s.r), 1.5, 1.0 / 64);
            auto const bias = with_bias ? positive_bias(rng, s.r) : std::vector<float>{};
            auto const ref = smoe::reference::route_rankwise_lora(cfg, MatrixView<float const>(z.data(), s.T, s.r), bias);
            smoe_test::for_each_arch([&](auto arch) {
                auto const got = route_with(arch, cfg, z, bias);
                smoe_test::check_views_agree(got.r, {.no_padding = true, .sorted_rows = true, .all_dispatched = true});
                smoe_test::check_matches_oracle(got.r, ref.view());
            });
        }
    }
}

TEST_CASE("rank-wise LoRA forward matches the dense oracle for any in and out, with and without a base layer",
          "[router][rankwise_lora][oracle][forward]") {
    std::mt19937_64 rng(82);
    struct Shape {
        std::int64_t T, in, out, r, k;
    };
    for (Shape s : {Shape{1, 3, 2, 4, 2}, Shape{17, 19, 7, 8, 3}, Shape{64, 40, 72, 16, 4}, Shape{200, 33, 33, 64, 8},
                    Shape{5, 9, 11, 6, 6}}) {
        for (bool with_base : {false, true}) {
            INFO("T " << s.T << ", in " << s.in << ", out " << s.out << ", r " << s.r << ", k " << s.k << ", base " << with_base);
            RankwiseLoRAConfig const cfg{.in_features = s.in, .out_features = s.out, .rank = s.r, .top_k = s.k, .lora_alpha = 16.0f};
            Adapter const a = Adapter::random(rng, cfg, true, with_base);
            auto const x = smoe_test::normal(rng, static_cast<std::size_t>(s.T * s.in), 1.0);
            smoe_test::for_each_arch([&](auto arch) {
                auto const f = forward(arch, a, x);
                auto const z = rank_logits(arch, a, x, s.T);
                auto const routing = smoe::reference::route_rankwise_lora(cfg, MatrixView<float const>(z.data(), s.T, s.r), a.bias);
                smoe_test::check_matches_oracle(f.r, routing.view());
                auto const y = smoe::reference::rankwise_lora_forward(cfg, a.weights(), routing.view(), MatrixView<float const>(x.data(), s.T, s.in));
                smoe_test::check_close(f.y, y, s.T, s.out, 2e-5);
            });
        }
    }
}

TEST_CASE("a base layer adds W0 x + b0 and nothing else", "[router][rankwise_lora][forward]") {
    std::mt19937_64 rng(83);
    RankwiseLoRAConfig const cfg{.in_features = 10, .out_features = 6, .rank = 8, .top_k = 3, .lora_alpha = 2.0f};
    Adapter with = Adapter::random(rng, cfg, false, true);
    Adapter without = with;
    without.W0.clear();
    without.b0.clear();
    std::int64_t const T = 9;
    auto const x = smoe_test::normal(rng, static_cast<std::size_t>(T * cfg.in_features), 1.0);
    auto const fw = forward(xsimd::default_arch{}, with, x), fo = forward(xsimd::default_arch{}, without, x);
    smoe_test::check_matches_oracle(fw.r, fo.r);
    std::vector<double> base(static_cast<std::size_t>(T * cfg.out_features));
    for (std::int64_t t = 0; t < T; ++t)
        for (std::int64_t o = 0; o < cfg.out_features; ++o) {
            double s = with.b0[o];
            for (std::int64_t c = 0; c < cfg.in_features; ++c) s += double(with.W0[o * cfg.in_features + c]) * x[t * cfg.in_features + c];
            base[t * cfg.out_features + o] = s + fo.y[t * cfg.out_features + o];
        }
    smoe_test::check_close(fw.y, base, T, cfg.out_features, 2e-5);
}

TEST_CASE("MoELayer with RankwiseLoRA and LoraRank matches the oracle when in equals out", "[router][rankwise_lora][layer]") {
    using Layer = smoe::MoELayer<RankwiseLoRA, LoraRank<float>, smoe::balance::None>;
    std::mt19937_64 rng(84);
    struct Shape {
        std::int64_t T, d, r, k;
    };
    for (Shape s : {Shape{0, 8, 4, 2}, Shape{1, 5, 3, 3}, Shape{37, 24, 16, 4}, Shape{150, 33, 64, 8}}) {
        for (bool with_bias : {false, true}) {
            INFO("T " << s.T << ", d " << s.d << ", r " << s.r << ", k " << s.k << ", bias " << with_bias);
            RankwiseLoRAConfig const cfg{.in_features = s.d, .out_features = s.d, .rank = s.r, .top_k = s.k, .lora_alpha = 16.0f};
            Adapter const a = Adapter::random(rng, cfg, with_bias, false);
            Layer layer({.router = cfg, .expert = cfg, .max_tokens = std::max<std::int64_t>(s.T, 1)},
                        {.gate = MatrixView<float const>(a.router.data(), s.r, s.d),
                         .expert_bias = a.bias,
                         .experts = {MatrixView<float const>(a.A.data(), s.r, s.d), MatrixView<float const>(a.B.data(), s.d, s.r)}});
            auto const x = smoe_test::normal(rng, static_cast<std::size_t>(s.T * s.d), 1.0);
            std::vector<float> y(static_cast<std::size_t>(s.T * s.d), kNaN);
            auto const r = layer.forward(MatrixView<float const>(x.data(), s.T, s.d), MatrixView<float>(y.data(), s.T, s.d));
            CHECK(r.k == s.k);
            auto const z = rank_logits(xsimd::default_arch{}, a, x, s.T);
            auto const want = smoe::reference::route_rankwise_lora(cfg, MatrixView<float const>(z.data(), s.T, s.r), a.bias);
            smoe_test::check_matches_oracle(r, want.view());
            auto const ref = smoe::reference::rankwise_lora_forward(cfg, a.weights(), want.view(), MatrixView<float const>(x.data(), s.T, s.d));
            smoe_test::check_close(y, ref, s.T, s.d, 2e-5);
        }
    }
}

TEST_CASE("rank-wise LoRA handles T = 0 and k = r", "[router][rankwise_lora][edge]") {
    RankwiseLoRAConfig const cfg{.in_features = 3, .out_features = 2, .rank = 4, .top_k = 4, .lora_alpha = 1.0f};
    smoe_test::for_each_arch([&](auto arch) {
        auto const none = route_with(arch, cfg, {});
        CHECK(none.r.num_tokens == 0);
        CHECK(none.r.k == 4);
        CHECK(none.r.nnz() == 0);
        smoe_test::check_equal(none.r.offsets, std::vector<std::int32_t>{0, 0, 0, 0, 0});
        // k = r: every rank, weights k · g_i / Σ g (z = 0, 0, 0, 0 gives 1 each).
        auto const all = route_with(arch, cfg, {0, 0, 0, 0});
        smoe_test::check_row(all.r, 0, {0, 1, 2, 3}, {1, 1, 1, 1});
        Adapter a = worked_example();
        a.cfg.top_k = 4;
        auto const f = forward(arch, a, std::vector<float>{});
        CHECK(f.r.num_tokens == 0);
        CHECK(f.y.empty());
    });
    auto const ref = smoe::reference::route_rankwise_lora(cfg, MatrixView<float const>(nullptr, 0, 4));
    CHECK(ref.k == 4);
    CHECK(ref.token_ids.empty());
}

TEST_CASE("rank-wise LoRA breaks exact ties toward the lower rank", "[router][rankwise_lora][edge]") {
    // Worked example t0: ranks 1 and 3 both have z = 0; one slot is left after rank 0, rank 1 wins.
    // A second row where all four tie: k = 2 takes ranks 0 and 1 with weight 1 each.
    RankwiseLoRAConfig const cfg{.in_features = 1, .out_features = 1, .rank = 4, .top_k = 2, .lora_alpha = 1.0f};
    std::vector<float> const z = {1, 0, -1, 0, 0.25f, 0.25f, 0.25f, 0.25f};
    auto check = [](smoe::RoutingResult const& r) {
        smoe_test::check_row(r, 0, {0, 1}, {1.18769, 0.812309});
        smoe_test::check_row(r, 1, {0, 1}, {1, 1});
    };
    smoe_test::for_each_arch([&](auto arch) { check(route_with(arch, cfg, z).r); });
    check(smoe::reference::route_rankwise_lora(cfg, MatrixView<float const>(z.data(), 2, 4)).view());
}

TEST_CASE("rank-wise LoRA rejects non-finite logits and biases, naming token and rank", "[router][rankwise_lora][edge]") {
    RankwiseLoRAConfig const cfg{.in_features = 1, .out_features = 1, .rank = 4, .top_k = 2, .lora_alpha = 1.0f};
    std::vector<float> z = {0, 1, 2, 3, 0, 1, 2, 3};
    for (float bad : {kNaN, kInf, -kInf}) {
        z[6] = bad;
        smoe_test::for_each_arch([&](auto arch) {
            CHECK_THROWS_WITH(route_with(arch, cfg, z), Contains("logits") && Contains("token 1") && Contains("expert 2"));
            CHECK_THROWS_WITH(route_with(arch, cfg, {0, 1, 2, 3}, {0, 0, bad, 0}), Contains("lora_biases") && Contains("rank 2"));
        });
        CHECK_THROWS_WITH(smoe::reference::route_rankwise_lora(cfg, MatrixView<float const>(z.data(), 2, 4)),
                          Contains("logits") && Contains("token 1") && Contains("expert 2"));
        std::vector<float> const bias = {0, 0, bad, 0};
        CHECK_THROWS_WITH(smoe::reference::route_rankwise_lora(cfg, MatrixView<float const>(z.data(), 1, 4), bias),
                          Contains("lora_biases") && Contains("rank 2"));
    }
    CHECK_THROWS_WITH(route_with(xsimd::default_arch{}, cfg, {0, 1, 2, 3}, {0, 0, 0}), Contains("lora_biases") && Contains("length 3"));
}

TEST_CASE("a token whose selected scores do not sum to a positive value is an error naming it", "[router][rankwise_lora][edge]") {
    RankwiseLoRAConfig const cfg{.in_features = 1, .out_features = 1, .rank = 3, .top_k = 2, .lora_alpha = 1.0f};
    // Token 1: g = sigmoid(-8) ≈ 3.4e-4 for every rank, and a bias of -0.5 makes every c negative.
    std::vector<float> const z = {8, 8, 8, -8, -8, -8};
    std::vector<float> const bias = {-0.5f, -0.5f, -0.5f};
    smoe_test::for_each_arch([&](auto arch) {
        CHECK_THROWS_WITH(route_with(arch, cfg, z, bias), Contains("lora_biases") && Contains("token 1"));
        // Sum exactly 0: c = 0.5 - 0.5 for z = 0.
        CHECK_THROWS_WITH(route_with(arch, cfg, {0, 0, 0}, bias), Contains("token 0"));
    });
    CHECK_THROWS_WITH(smoe::reference::route_rankwise_lora(cfg, MatrixView<float const>(z.data(), 2, 3), bias), Contains("token 1"));
}

TEST_CASE("rank-wise LoRA config errors name the key", "[router][rankwise_lora][config]") {
    RankwiseLoRAConfig const ok{.in_features = 3, .out_features = 2, .rank = 4, .top_k = 2, .lora_alpha = 4.0f};
    auto with = [&](auto change) {
        RankwiseLoRAConfig c = ok;
        change(c);
        return c;
    };
    CHECK_THROWS_WITH(RankwiseLoRA(with([](auto& c) { c.in_features = 0; })), Contains("in_features") && Contains("0"));
    CHECK_THROWS_WITH(RankwiseLoRA(with([](auto& c) { c.out_features = -2; })), Contains("out_features") && Contains("-2"));
    CHECK_THROWS_WITH(RankwiseLoRA(with([](auto& c) { c.rank = 0; })), Contains("rank") && Contains("0"));
    CHECK_THROWS_WITH(RankwiseLoRA(with([](auto& c) { c.top_k = 0; })), Contains("top_k") && Contains("0"));
    CHECK_THROWS_WITH(RankwiseLoRA(with([](auto& c) { c.top_k = 5; })), Contains("top_k") && Contains("5"));
    CHECK_THROWS_WITH(RankwiseLoRA(with([](auto& c) { c.lora_alpha = kNaN; })), Contains("lora_alpha"));
    CHECK_THROWS_WITH(RankwiseLoRA(with([](auto& c) { c.lora_alpha = kInf; })), Contains("lora_alpha"));
    CHECK_NOTHROW(RankwiseLoRA(with([](auto& c) { c.lora_alpha = -3.0f; })));

    // LoraRank lives inside MoELayer, which keeps the hidden width: in != out is refused there.
    std::vector<float> A(12), B(8);
    CHECK_THROWS_WITH(LoraRank<float>(ok, {MatrixView<float const>(A.data(), 4, 3), MatrixView<float const>(B.data(), 2, 4)}),
                      Contains("out_features") && Contains("rankwise_lora_forward"));
    auto square = with([](auto& c) { c.out_features = 3; });
    CHECK_THROWS_WITH(LoraRank<float>(square, {MatrixView<float const>(A.data(), 4, 3), MatrixView<float const>(B.data(), 2, 4)}),
                      Contains("lora_B.weight"));
    // The standalone forward checks the adapter's tensor shapes.
    Adapter a = worked_example();
    a.b0 = {1, 2, 3};
    std::vector<float> y(4);
    std::vector<std::byte> ws(smoe::expert::rankwise_lora_workspace_size(RankwiseLoRA(a.cfg), 2));
    CHECK_THROWS_WITH(smoe::expert::rankwise_lora_forward(xsimd::default_arch{}, RankwiseLoRA(a.cfg), a.weights(),
                                                          MatrixView<float const>(kExampleX.data(), 2, 3), MatrixView<float>(y.data(), 2, 2), ws),
                      Contains("base_layer.bias") && Contains("length 3"));
}
