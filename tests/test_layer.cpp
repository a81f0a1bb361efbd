// MoELayer<TopK, SwiGLU<float>, None> end to end against the scalar oracle and experts.md §3.

#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <vector>

#include <catch2/catch.hpp>

#include "common/data.hpp"
#include "common/layer_model.hpp"
#include "smoe/kernels/reference/reference.hpp"
#include "smoe/smoe.hpp"

using smoe::MatrixView;
using smoe::router::ScoreFunc;
using smoe::router::TopKConfig;
using Catch::Matchers::Contains;
using Layer = smoe_test::SwiGLULayer<smoe::router::TopK>;

namespace {

float const kNaN = std::numeric_limits<float>::quiet_NaN();

using Model = smoe_test::LayerModel<smoe::router::TopK>;
using smoe_test::check_close;

// The oracle on the layer's own fp32 logits (see smoe_test::gate_logits).
smoe::RoutingData oracle_routing(Model const& m, TopKConfig const& cfg, std::vector<float> const& x, std::int64_t T) {
    auto const logits = smoe_test::gate_logits(m, x, T);
    return smoe::reference::route_topk(cfg, MatrixView<float const>(logits.data(), T, m.E), m.bias);
}

void check_same_routing(smoe::RoutingResult const& got, smoe::RoutingResult const& want) {
    REQUIRE(got.k == want.k);
    REQUIRE(got.num_tokens == want.num_tokens);
    for (std::int64_t t = 0; t < got.num_tokens; ++t)
        for (std::int64_t j = 0; j < got.k; ++j) {
            INFO("token " << t << ", slot " << j);
            REQUIRE(got.expert_ids(t, j) == want.expert_ids(t, j));
            CHECK(got.expert_weights(t, j) == Approx(want.expert_weights(t, j)).epsilon(1e-6).margin(1e-30));
        }
}

}  // namespace

TEST_CASE("the layer reproduces the worked example of experts.md section 3", "[layer][spec]") {
    // d = 4, f = 3, four experts; experts 2 and 3 are never selected, so their weights are NaN: the
    // layer must not touch an expert that receives no token.
    Model m{4, 3, 4, 4, {}, {}, {}, {}, {}};
    // x[0] = 1 and every other gate column 0, so the logits are exactly [1, 0.5, -0.5, 0].
    m.gate = {1, 0, 0, 0, 0.5f, 0, 0, 0, -0.5f, 0, 0, 0, 0, 0, 0, 0};
    std::vector<float> const w1_0 = {.5f, .25f, -1, 0, -.5f, 0, 1, .25f, 0, -.25f, .5f, .5f};
    std::vector<float> const w3_0 = {1, 0, .5f, -.25f, .25f, .5f, 0, .5f, -1, .25f, 0, .25f};
    std::vector<float> const w2_0 = {1, -.5f, .25f, 0, .5f, -1, .5f, .25f, 0, -.25f, 1, .5f};
    std::vector<float> const w1_1 = {.25f, 0, .5f, .25f, 1, .5f, 0, -.5f, 0, 0, -.5f, 1};
    std::vector<float> const w3_1 = {.5f, -.5f, 0, .25f, 0, .25f, 1, 0, .25f, 0, 0, .5f};
    std::vector<float> const w2_1 = {.5f, 0, -.25f, .25f, 1, 0, 0, -.5f, .5f, 1, 0, .25f};
    auto stack = [](std::vector<float> const& a, std::vector<float> const& b) {
        std::vector<float> s = a;
        s.insert(s.end(), b.begin(), b.end());
        s.resize(4 * a.size(), kNaN);
        return s;
    };
    m.w1 = stack(w1_0, w1_1);
    m.w3 = stack(w3_0, w3_1);
    m.w2 = stack(w2_0, w2_1);
    Layer layer({.router = {.num_experts = 4, .top_k = 2, .norm_topk_prob = true}, .expert = m.expert_cfg(), .max_tokens = 4},
                m.weights());
    std::vector<float> const x = {1, -2, 0.5f, 3};
    std::vector<float> y(4);
    auto const r = layer.forward(MatrixView<float const>(x.data(), 1, 4), MatrixView<float>(y.data(), 1, 4));
    CHECK(r.expert_ids(0, 0) == 0);
    CHECK(r.expert_ids(0, 1) == 1);
    CHECK(r.expert_weights(0, 0) == Approx(0.62245933).epsilon(1e-6));
    CHECK(r.expert_weights(0, 1) == Approx(0.37754067).epsilon(1e-6));
    check_close(y, {-0.42946789, 1.27548730, 0.88394636, 1.02966654}, 1, 4, 2e-5);
    CHECK(r.load(2) == 0);
    CHECK(r.load(3) == 0);
}

TEST_CASE("the layer matches the oracle on random shapes and top-k configs", "[layer][random]") {
    std::mt19937_64 rng(31);
    struct Shape {
        std::int64_t d, f, E, k, T;
    };
    std::vector<Shape> const shapes = {{1, 1, 1, 1, 3},    {5, 3, 2, 2, 17},   {16, 16, 8, 2, 64},
                                       {17, 33, 8, 2, 65}, {37, 29, 6, 3, 100}, {64, 48, 16, 4, 130},
                                       {33, 71, 60, 4, 40}, {8, 9, 3, 3, 2},    {100, 17, 12, 1, 1}};
    for (auto const& s : shapes) {
        for (int variant = 0; variant < 3; ++variant) {
            INFO("d " << s.d << ", f " << s.f << ", E " << s.E << ", k " << s.k << ", T " << s.T << ", variant " << variant);
            Model m = Model::random(rng, s.d, s.f, s.E);
            TopKConfig cfg{.num_experts = s.E, .top_k = s.k, .norm_topk_prob = variant != 1};
            if (variant == 2 && s.E % 2 == 0 && s.E >= 4 && s.k <= s.E / 2) {  // DeepSeek-V3 style
                cfg.score_func = ScoreFunc::sigmoid;
                cfg.n_group = 2;
                cfg.topk_group = 1;
                cfg.routed_scaling_factor = 2.5f;
                m.bias = smoe_test::normal(rng, static_cast<std::size_t>(s.E), 0.1);
            }
            auto const x = smoe_test::normal(rng, static_cast<std::size_t>(s.T * s.d), 1.0);
            std::vector<float> y(static_cast<std::size_t>(s.T * s.d), kNaN);
            Layer layer({.router = cfg, .expert = m.expert_cfg(), .max_tokens = s.T}, m.weights());
            std::vector<std::byte> ws(layer.workspace_size());
            auto const r = layer.forward(MatrixView<float const>(x.data(), s.T, s.d), MatrixView<float>(y.data(), s.T, s.d), ws);
            auto const want = oracle_routing(m, cfg, x, s.T);
            check_same_routing(r, want.view());
            auto const ref = smoe::reference::combine_swiglu(want.view(), m.experts(), MatrixView<float const>(x.data(), s.T, s.d));
            check_close(y, ref, s.T, s.d, 2e-5);
        }
    }
}

TEST_CASE("the layer handles T = 0, T = 1 and k = E", "[layer][edge]") {
    std::mt19937_64 rng(32);
    Model m = Model::random(rng, 24, 20, 5);
    Layer layer({.router = {.num_experts = 5, .top_k = 5}, .expert = m.expert_cfg(), .max_tokens = 8}, m.weights());
    std::vector<float> x = smoe_test::normal(rng, 8 * 24, 1.0), y(8 * 24);
    auto const none = layer.forward(MatrixView<float const>(x.data(), 0, 24), MatrixView<float>(y.data(), 0, 24));
    CHECK(none.nnz() == 0);
    CHECK(none.k == 5);
    auto const one = layer.forward(MatrixView<float const>(x.data(), 1, 24), MatrixView<float>(y.data(), 1, 24));
    CHECK(one.nnz() == 5);  // k = E: every expert, each with this one token
    for (std::int64_t e = 0; e < 5; ++e) CHECK(one.load(e) == 1);
    auto const ref = smoe::reference::combine_swiglu(one, m.experts(), MatrixView<float const>(x.data(), 1, 24));
    check_close(std::vector<float>(y.begin(), y.begin() + 24), ref, 1, 24, 2e-5);
}

TEST_CASE("an expert that gets every token and experts that get none", "[layer][edge]") {
    std::mt19937_64 rng(33);
    std::int64_t const d = 12, f = 10, E = 6, T = 40;
    Model m = Model::random(rng, d, f, E);
    // x[:, 0] = 1 and gate row 4 puts +50 there: expert 4 wins every token. Experts 0 and 5 get a large
    // negative logit and NaN weights: with k = 2 they never win, and the layer must not touch them.
    auto x = smoe_test::normal(rng, T * d, 0.1);
    for (std::int64_t t = 0; t < T; ++t) x[t * d] = 1.0f;
    m.gate[4 * d] = 50.0f;
    m.gate[0 * d] = -50.0f;
    m.gate[5 * d] = -50.0f;
    for (std::int64_t e : {0, 5}) {
        std::fill(m.w1.begin() + e * f * d, m.w1.begin() + (e + 1) * f * d, kNaN);
        std::fill(m.w2.begin() + e * d * f, m.w2.begin() + (e + 1) * d * f, kNaN);
    }
    TopKConfig const cfg{.num_experts = E, .top_k = 2, .norm_topk_prob = true};
    Layer layer({.router = cfg, .expert = m.expert_cfg(), .max_tokens = T}, m.weights());
    std::vector<float> y(T * d);
    auto const r = layer.forward(MatrixView<float const>(x.data(), T, d), MatrixView<float>(y.data(), T, d));
    CHECK(r.load(4) == T);
    CHECK(r.load(0) == 0);
    CHECK(r.load(5) == 0);
    for (float v : y) REQUIRE(std::isfinite(v));
    auto const want = oracle_routing(m, cfg, x, T);
    check_same_routing(r, want.view());
    check_close(y, smoe::reference::combine_swiglu(want.view(), m.experts(), MatrixView<float const>(x.data(), T, d)), T, d, 2e-5);
}

TEST_CASE("precomputed routing runs dispatch, experts and combine only", "[layer][routed]") {
    std::mt19937_64 rng(34);
    std::int64_t const d = 19, f = 23, E = 7, T = 9, K = 3;
    Model m = Model::random(rng, d, f, E);
    Layer layer({.router = {.num_experts = E, .top_k = K}, .expert = m.expert_cfg(), .max_tokens = T}, m.weights());
    auto x = smoe_test::normal(rng, T * d, 1.0);
    // Rows in any order the host likes, with -1 for empty slots; token 4 has no expert at all.
    std::vector<std::int32_t> ids = {0, 6, 3, 2, -1, -1, 6, 5, 4, 1, 0, -1, -1, -1, -1, 3, 2, 1, 6, -1, 0, 5, 4, 3, 2, 1, 0};
    std::vector<float> w = smoe_test::normal(rng, T * K, 1.0);
    // A NaN in token 7's input stays in token 7.
    x[7 * d + 3] = kNaN;
    std::vector<float> y(T * d);
    std::vector<std::byte> ws(layer.workspace_size());
    auto const r = layer.forward_routed(MatrixView<float const>(x.data(), T, d), MatrixView<std::int32_t const>(ids.data(), T, K),
                                        MatrixView<float const>(w.data(), T, K), MatrixView<float>(y.data(), T, d), ws);
    CHECK(r.nnz() == 20);
    auto const ref_routing = smoe::reference::from_token_major(T, K, E, ids, w);
    auto const ref = smoe::reference::combine_swiglu(ref_routing.view(), m.experts(), MatrixView<float const>(x.data(), T, d));
    for (std::int64_t t = 0; t < T; ++t) {
        if (t == 7) continue;
        INFO("token " << t);
        std::vector<float> yt(y.begin() + t * d, y.begin() + (t + 1) * d);
        std::vector<double> rt(ref.begin() + t * d, ref.begin() + (t + 1) * d);
        check_close(yt, rt, 1, d, 2e-5);
    }
    for (std::int64_t i = 0; i < d; ++i) CHECK(y[4 * d + i] == 0.0f);

    using IdsView = MatrixView<std::int32_t const>;
    auto call = [&](std::vector<std::int32_t> const& bad_ids, std::vector<float> const& bad_w) {
        layer.forward_routed(MatrixView<float const>(x.data(), T, d), IdsView(bad_ids.data(), T, K),
                             MatrixView<float const>(bad_w.data(), T, K), MatrixView<float>(y.data(), T, d), ws);
    };
    auto bad = ids;
    bad[5] = 7;
    CHECK_THROWS_WITH(call(bad, w), Contains("expert_ids") && Contains("token 1, slot 2"));
    bad[5] = -2;
    CHECK_THROWS_WITH(call(bad, w), Contains("expert_ids"));
    bad[5] = 2;
    CHECK_THROWS_WITH(call(bad, w), Contains("expert_ids") && Contains("at most once"));
    auto bad_w = w;
    bad_w[0] = std::numeric_limits<float>::infinity();
    CHECK_THROWS_WITH(call(ids, bad_w), Contains("expert_weights") && Contains("token 0, slot 0"));
    std::vector<std::int32_t> wide(T * 4, -1);
    std::vector<float> wide_w(T * 4, 0.0f);
    CHECK_THROWS_WITH(layer.forward_routed(MatrixView<float const>(x.data(), T, d), IdsView(wide.data(), T, 4),
                                           MatrixView<float const>(wide_w.data(), T, 4), MatrixView<float>(y.data(), T, d), ws),
                      Contains("expert_ids.cols"));
}

TEST_CASE("results do not depend on the batch a token is in or on who owns the workspace", "[layer][determinism]") {
    std::mt19937_64 rng(35);
    std::int64_t const d = 40, f = 72, E = 8, T = 70;  // 70 tokens: more than one 64-row block per expert
    Model m = Model::random(rng, d, f, E);
    Layer layer({.router = {.num_experts = E, .top_k = 2}, .expert = m.expert_cfg(), .max_tokens = T}, m.weights());
    auto const x = smoe_test::normal(rng, T * d, 1.0);
    std::vector<float> all(T * d), one(d), owned(T * d);
    layer.forward(MatrixView<float const>(x.data(), T, d), MatrixView<float>(all.data(), T, d));
    for (std::int64_t t = 0; t < T; t += 7) {
        layer.forward(MatrixView<float const>(x.data() + t * d, 1, d), MatrixView<float>(one.data(), 1, d));
        CHECK(std::memcmp(one.data(), all.data() + t * d, d * sizeof(float)) == 0);
    }
    // A caller-owned workspace that starts at an odd address.
    std::vector<std::byte> raw(layer.workspace_size() + 1);
    layer.forward(MatrixView<float const>(x.data(), T, d), MatrixView<float>(owned.data(), T, d),
                  std::span<std::byte>(raw.data() + 1, layer.workspace_size()));
    CHECK(std::memcmp(owned.data(), all.data(), all.size() * sizeof(float)) == 0);
}

TEST_CASE("a fused gate_up tensor gives the same bits as separate w1 and w3", "[layer][weights]") {
    std::mt19937_64 rng(36);
    std::int64_t const d = 21, f = 13, E = 4, T = 11;
    Model m = Model::random(rng, d, f, E);
    std::vector<float> gate_up;
    for (std::int64_t e = 0; e < E; ++e) {
        gate_up.insert(gate_up.end(), m.w1.begin() + e * f * d, m.w1.begin() + (e + 1) * f * d);
        gate_up.insert(gate_up.end(), m.w3.begin() + e * f * d, m.w3.begin() + (e + 1) * f * d);
    }
    Layer::Weights fused = m.weights();
    fused.experts = smoe::expert::SwiGLUWeights<float>::fused(gate_up.data(), m.w2.data(), m.expert_cfg());
    Layer::Config const cfg{.router = {.num_experts = E, .top_k = 2}, .expert = m.expert_cfg(), .max_tokens = T};
    Layer a(cfg, m.weights()), b(cfg, fused);
    auto const x = smoe_test::normal(rng, T * d, 1.0);
    std::vector<float> ya(T * d), yb(T * d);
    a.forward(MatrixView<float const>(x.data(), T, d), MatrixView<float>(ya.data(), T, d));
    b.forward(MatrixView<float const>(x.data(), T, d), MatrixView<float>(yb.data(), T, d));
    CHECK(std::memcmp(ya.data(), yb.data(), ya.size() * sizeof(float)) == 0);
}

TEST_CASE("the layer rejects bad configs, weights and inputs with a named error", "[layer][errors]") {
    std::mt19937_64 rng(37);
    std::int64_t const d = 8, f = 6, E = 4;
    Model m = Model::random(rng, d, f, E);
    Layer::Config const cfg{.router = {.num_experts = E, .top_k = 2}, .expert = m.expert_cfg(), .max_tokens = 4};
    auto with = [&](auto change) {
        Layer::Config c = cfg;
        Layer::Weights w = m.weights();
        change(c, w);
        return Layer(c, w);
    };
    CHECK_THROWS_WITH(with([](auto& c, auto&) { c.router.top_k = 5; }), Contains("top_k") && Contains("5"));
    CHECK_THROWS_WITH(with([](auto& c, auto&) { c.router.num_experts = 5; }), Contains("num_experts"));
    CHECK_THROWS_WITH(with([&](auto&, auto& w) { w.gate = MatrixView<float const>(m.gate.data(), E, d - 1); }), Contains("'gate'"));
    CHECK_THROWS_WITH(with([&](auto&, auto& w) { w.experts.w2 = smoe::StackedView<float const>(m.w2.data(), E, f, d); }),
                      Contains("'w2'") && Contains("[4, 8, 6]"));
    CHECK_THROWS_WITH(with([&](auto& c, auto&) { c.expert.intermediate_size = 0; }), Contains("intermediate_size"));
    CHECK_THROWS_WITH(with([&](auto&, auto& w) { w.expert_bias = std::span<float const>(m.gate.data(), 3); }), Contains("expert_bias"));
    CHECK_THROWS_WITH(with([&](auto& c, auto&) { c.max_tokens = -1; }), Contains("max_tokens"));

    Layer layer(cfg, m.weights());
    std::vector<float> x = smoe_test::normal(rng, 8 * d, 1.0), y(8 * d);
    CHECK_THROWS_WITH(layer.forward(MatrixView<float const>(x.data(), 5, d), MatrixView<float>(y.data(), 5, d)),
                      Contains("x.rows") && Contains("max_tokens = 4"));
    CHECK_THROWS_WITH(layer.forward(MatrixView<float const>(x.data(), 2, d + 1), MatrixView<float>(y.data(), 2, d)), Contains("'x'"));
    CHECK_THROWS_WITH(layer.forward(MatrixView<float const>(x.data(), 2, d), MatrixView<float>(y.data(), 3, d)), Contains("'y'"));
    x[1 * d + 2] = kNaN;  // a NaN input makes a NaN logit: the error names it
    CHECK_THROWS_WITH(layer.forward(MatrixView<float const>(x.data(), 2, d), MatrixView<float>(y.data(), 2, d)),
                      Contains("logits") && Contains("token 1"));
    x[1 * d + 2] = 0.0f;
    std::vector<std::byte> small(layer.workspace_size() / 3);
    CHECK_THROWS_WITH(layer.forward(MatrixView<float const>(x.data(), 4, d), MatrixView<float>(y.data(), 4, d), small),
                      Contains("workspace"));
}

TEST_CASE(
    "forward under a RouterControl, with a gate bias and with identity experts routes as smoe::route on its logits",
    "[layer][control]") {
    std::mt19937_64 rng(35);
    std::int64_t const d = 19, f = 23, E = 7, Z = 2, T = 9, K = 3;
    auto const x = smoe_test::normal(rng, T * d, 1.0);
    MatrixView<float const> const xv(x.data(), T, d);
    // The layer's output, given its routing, is forward_routed's on the same ids and weights (identity
    // slots as -1) plus w · x for every identity slot: checked bit for bit.
    auto check_layer = [&](Layer& layer, Model const& m, std::vector<float> const& logits, smoe::RouterControl const& c,
                           smoe::MoEWeights<smoe::expert::SwiGLU<float>> const& w) {
        std::vector<float> y(T * d), y_routed(T * d);
        std::vector<std::byte> ws(layer.workspace_size()), rws(smoe::routing_workspace_size(layer.router(), T));
        auto const r = layer.forward(xv, MatrixView<float>(y.data(), T, d), ws, c);
        auto const want =
            smoe::route(layer.router(), MatrixView<float const>(logits.data(), T, m.W), w.expert_bias, rws, c);
        std::vector<std::int32_t> ids(T * K);
        std::vector<float> wt(T * K);
        for (std::int64_t t = 0; t < T; ++t)
            for (std::int64_t j = 0; j < K; ++j) {
                REQUIRE(r.expert_ids(t, j) == want.expert_ids(t, j));
                REQUIRE(r.expert_weights(t, j) == want.expert_weights(t, j));
                ids[t * K + j] = want.expert_ids(t, j) < E ? want.expert_ids(t, j) : -1;
                wt[t * K + j] = want.expert_weights(t, j);
            }
        std::vector<std::byte> ws2(layer.workspace_size());
        layer.forward_routed(xv, MatrixView<std::int32_t const>(ids.data(), T, K),
                             MatrixView<float const>(wt.data(), T, K), MatrixView<float>(y_routed.data(), T, d), ws2);
        for (std::int64_t t = 0; t < T; ++t)
            for (std::int64_t j = 0; j < K; ++j)
                if (want.expert_ids(t, j) >= E)
                    for (std::int64_t i = 0; i < d; ++i)
                        y_routed[t * d + i] += want.expert_weights(t, j) * x[t * d + i];
        for (std::size_t i = 0; i < y.size(); ++i) REQUIRE(y[i] == y_routed[i]);
    };
    {  // control: every field
        Model m = Model::random(rng, d, f, E);
        Layer layer({.router = {.num_experts = E, .top_k = K, .norm_topk_prob = true},
                     .expert = m.expert_cfg(),
                     .max_tokens = T},
                    m.weights());
        std::vector<float> const offset = smoe_test::normal(rng, E, 1.0), boost = {1, 2, 0.5f, 1, 3, 1, 1},
                                 over = {1, 2, 3, 4, 5, 6, 7};
        std::vector<std::uint8_t> const mask = {1, 1, 0, 1, 1, 0, 1};
        std::vector<std::int32_t> const tokens = {0, 4};
        check_layer(layer, m, smoe_test::gate_logits(m, x, T), {offset, boost, mask, over, tokens}, m.weights());
        check_layer(layer, m, smoe_test::gate_logits(m, x, T), {}, m.weights());
    }
    {  // gate bias (gpt-oss): logits = W x + b select and weigh
        Model m = Model::random(rng, d, f, E);
        auto const gb = smoe_test::normal(rng, E, 2.0);
        auto w = m.weights();
        w.gate_bias = gb;
        Layer layer({.router = {.num_experts = E, .top_k = K, .score_after_topk = true},
                     .expert = m.expert_cfg(),
                     .max_tokens = T},
                    w);
        auto logits = smoe_test::gate_logits(m, x, T);
        for (std::int64_t t = 0; t < T; ++t)
            for (std::int64_t e = 0; e < E; ++e) logits[t * E + e] += gb[e];
        check_layer(layer, m, logits, {}, w);
        std::vector<float> const short_bias(E - 1, 0.0f);
        w.gate_bias = short_bias;
        CHECK_THROWS_WITH(
            Layer({.router = {.num_experts = E, .top_k = K}, .expert = m.expert_cfg(), .max_tokens = T}, w),
            Contains("gate_bias"));
    }
    {  // identity experts (LongCat-Flash): Z extra logit columns whose selection adds w · x
        Model m = Model::random(rng, d, f, E, E + Z);
        for (std::int64_t i = 0; i < Z * d; ++i) m.gate[E * d + i] *= 3.0f;  // make the identity columns win often
        m.bias = smoe_test::normal(rng, E + Z, 0.05);
        TopKConfig const cfg{.num_experts = E, .top_k = K, .routed_scaling_factor = 6.0f, .num_null_experts = Z};
        Layer layer({.router = cfg, .expert = m.expert_cfg(), .max_tokens = T}, m.weights());
        std::vector<float> y(T * d);
        auto const r = layer.forward(xv, MatrixView<float>(y.data(), T, d));
        std::int64_t nulls = 0;
        for (std::int64_t t = 0; t < T; ++t)
            for (std::int64_t j = 0; j < K; ++j) nulls += r.expert_ids(t, j) >= E;
        CHECK(nulls > 0);
        CHECK(r.nnz() == T * K - nulls);
        check_layer(layer, m, smoe_test::gate_logits(m, x, T), {}, m.weights());
        // forward_routed takes identity ids as they are and adds w · x itself.
        std::vector<std::int32_t> ids;
        std::vector<float> wt, y2(T * d);
        for (std::int64_t t = 0; t < T; ++t)
            for (std::int64_t j = 0; j < K; ++j) ids.push_back(r.expert_ids(t, j)), wt.push_back(r.expert_weights(t, j));
        layer.forward_routed(xv, MatrixView<std::int32_t const>(ids.data(), T, K), MatrixView<float const>(wt.data(), T, K),
                             MatrixView<float>(y2.data(), T, d));
        for (std::size_t i = 0; i < y.size(); ++i) REQUIRE(y2[i] == y[i]);
        ids[0] = static_cast<std::int32_t>(E + Z);
        CHECK_THROWS_WITH(layer.forward_routed(xv, MatrixView<std::int32_t const>(ids.data(), T, K),
                                               MatrixView<float const>(wt.data(), T, K), MatrixView<float>(y2.data(), T, d)),
                          Contains("expert_ids"));
    }
}

TEST_CASE("token ids are an optional input of forward: hash routing needs them, top-k ignores them", "[layer][hash]") {
    std::mt19937_64 rng(36);
    std::int64_t const d = 11, f = 13, E = 5, T = 6, K = 2, V = 4;
    using HashModel = smoe_test::LayerModel<smoe::router::Hash>;
    HashModel m = HashModel::random(rng, d, f, E);
    std::vector<std::int32_t> const table = {0, 1, 2, 3, 4, 0, 3, 1}, tokens = {3, 0, 0, 2, 1, 3};
    smoe_test::SwiGLULayer<smoe::router::Hash> layer(
        {.router = {.num_experts = E, .top_k = K, .vocab_size = V, .tid2eid = table},
         .expert = m.expert_cfg(),
         .max_tokens = T},
        m.weights());
    auto const x = smoe_test::normal(rng, T * d, 1.0);
    MatrixView<float const> const xv(x.data(), T, d);
    std::vector<float> y(T * d), y_routed(T * d);
    auto const r = layer.forward(xv, MatrixView<float>(y.data(), T, d), {}, smoe::TokenIds{tokens});
    std::vector<std::int32_t> ids(T * K);
    std::vector<float> w(T * K);
    for (std::int64_t t = 0; t < T; ++t) {
        std::vector<std::int32_t> row(table.begin() + tokens[t] * K, table.begin() + (tokens[t] + 1) * K);
        for (std::int64_t j = 0; j < K; ++j) {
            CHECK(std::find(row.begin(), row.end(), r.expert_ids(t, j)) != row.end());
            ids[t * K + j] = r.expert_ids(t, j);
            w[t * K + j] = r.expert_weights(t, j);
        }
    }
    layer.forward_routed(xv, MatrixView<std::int32_t const>(ids.data(), T, K), MatrixView<float const>(w.data(), T, K),
                         MatrixView<float>(y_routed.data(), T, d));
    for (std::size_t i = 0; i < y.size(); ++i) REQUIRE(y[i] == y_routed[i]);
    CHECK_THROWS_WITH(layer.forward(xv, MatrixView<float>(y.data(), T, d)), Contains("token_ids"));

    Model tm = Model::random(rng, d, f, E);
    Layer topk({.router = {.num_experts = E, .top_k = K}, .expert = tm.expert_cfg(), .max_tokens = T}, tm.weights());
    topk.forward(xv, MatrixView<float>(y.data(), T, d));
    topk.forward(xv, MatrixView<float>(y_routed.data(), T, d), {}, smoe::TokenIds{tokens});
    for (std::size_t i = 0; i < y.size(); ++i) REQUIRE(y[i] == y_routed[i]);
}
