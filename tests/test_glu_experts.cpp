// The SwiGLU experts' other forms (expert/swiglu_config.hpp): the clamped activation of GPT-OSS and
// DeepSeek-V4 (experts.md §5, families.md §2.1-§2.2) with biases and the interleaved gate/up layout, the
// routing weight on the input (Llama 4, families.md §2.3), and the shared expert's scale (Cohere2-MoE's
// average). Each against the double oracle (kernels/reference/swiglu.hpp) on experts.md §3's worked
// example, whose values under each form are written out below (computed in double), and on random shapes;
// the non-gated relu² experts of Nemotron-H (GluActivation::relu2) on a hand example and random shapes.

#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include <catch2/catch.hpp>

#include "common/data.hpp"
#include "smoe/expert/quant_swiglu.hpp"
#include "smoe/expert/shared.hpp"
#include "smoe/kernels/reference/reference.hpp"
#include "smoe/smoe.hpp"

using Catch::Matchers::Contains;
using smoe::MatrixView;
using smoe::expert::GluActivation;
using smoe::expert::GluBiases;
using smoe::expert::SwiGLUConfig;
using Weights = smoe::expert::SwiGLUWeights<float>;
using Layer = smoe::MoELayer<smoe::router::TopK, smoe::expert::SwiGLU<float>, smoe::balance::None>;
using SharedLayer = smoe::MoELayer<smoe::router::TopK, smoe::expert::Shared<smoe::expert::SwiGLU<float>>, smoe::balance::None>;

namespace {

// experts.md §3: d 4, f 3, experts 0 and 1 as written there; experts 2 and 3 are zero (never selected).
struct Example {
    std::int64_t d = 4, f = 3, E = 4;
    std::vector<float> x = {1, -2, 0.5f, 3};
    std::vector<float> w1, w3, w2, b1, b3, b2, gate;
    Example() {
        w1 = {.5f, .25f, -1, 0, -.5f, 0, 1, .25f, 0, -.25f, .5f, .5f, .25f, 0, .5f, .25f, 1, .5f, 0, -.5f, 0, 0, -.5f, 1};
        w3 = {1, 0, .5f, -.25f, .25f, .5f, 0, .5f, -1, .25f, 0, .25f, .5f, -.5f, 0, .25f, 0, .25f, 1, 0, .25f, 0, 0, .5f};
        w2 = {1, -.5f, .25f, 0, .5f, -1, .5f, .25f, 0, -.25f, 1, .5f, .5f, 0, -.25f, .25f, 1, 0, 0, -.5f, .5f, 1, 0, .25f};
        w1.resize(E * f * d), w3.resize(E * f * d), w2.resize(E * d * f);
        // Biases chosen here (binary fractions, exact in fp32 and bf16).
        b1 = {.25f, 0, -.5f, 0, .5f, 0};
        b3 = {-.25f, 0, .5f, .5f, 0, -1};
        b2 = {.125f, 0, -.125f, .25f, 0, .375f, 0, -.25f};
        b1.resize(E * f), b3.resize(E * f), b2.resize(E * d);
        // gate · x gives the spec's logits [1, 0.5, -0.5, 0] (x[0] = 1).
        gate = {1, 0, 0, 0, .5f, 0, 0, 0, -.5f, 0, 0, 0, 0, 0, 0, 0};
    }
    SwiGLUConfig cfg(GluActivation a = {}, bool on_input = false) const {
        return {.hidden_size = d, .intermediate_size = f, .num_experts = E, .activation = a, .weight_on_input = on_input};
    }
    Weights weights(bool biased) const {
        auto w = Weights::dense(w1.data(), w3.data(), w2.data(), cfg());
        if (biased) w.bias = {MatrixView<float const>(b1.data(), E, f), MatrixView<float const>(b3.data(), E, f), MatrixView<float const>(b2.data(), E, d)};
        return w;
    }
};

std::vector<float> forward(Layer& layer, std::vector<float> const& x, std::int64_t T, std::int64_t d) {
    std::vector<float> y(static_cast<std::size_t>(T * d), -7.0f);
    layer.forward(MatrixView<float const>(x.data(), T, d), MatrixView<float>(y.data(), T, d));
    return y;
}

template <class X>
std::vector<float> run_rows(X const& ex, std::int64_t e, std::vector<float> const& x, std::vector<float> const& rw, std::int64_t M) {
    std::int64_t const d = ex.hidden_size();
    std::vector<std::byte> ws(ex.workspace_size(M) + 64);
    smoe::Workspace w(ws);
    std::vector<float> out(static_cast<std::size_t>(M * d), -7.0f);
    ex.run(xsimd::default_arch{}, e, MatrixView<float const>(x.data(), M, d), rw, MatrixView<float>(out.data(), M, d), w);
    return out;
}

bool same_bits(std::vector<float> const& a, std::vector<float> const& b) {
    return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

void check_values(std::vector<float> const& y, std::vector<double> const& want, double tol) {
    REQUIRE(y.size() == want.size());
    for (std::size_t i = 0; i < y.size(); ++i) {
        INFO("element " << i);
        CHECK(std::fabs(double(y[i]) - want[i]) <= tol);
    }
}

}  // namespace

TEST_CASE("the clamped forms give experts.md section 3's example as computed in double", "[expert][glu][example]") {
    Example const ex;
    auto const W = ex.weights(true);
    // GluActivation's header example: expert 0 under gpt_oss(1.702, 1), no biases.
    auto const t = smoe::reference::swiglu_expert_trace(ex.weights(false), 0, ex.x.data(), GluActivation::gpt_oss(1.702f, 1.0f));
    CHECK(t.h[0] == Approx(-0.22441735).epsilon(1e-7));
    CHECK(t.h[1] == Approx(1.02618260).epsilon(1e-7));
    CHECK(t.h[2] == Approx(0.21144894).epsilon(1e-7));
    CHECK(t.out[3] == Approx(1.18801141).epsilon(1e-7));

    struct Form {
        char const* name;
        GluActivation act;
        bool biased, on_input;
        std::vector<double> e1_h, y;  // expert 1's h, and y with the spec's routing (experts 0, 1; w 0.62245933, 0.37754067)
    };
    Form const forms[] = {
        // GPT-OSS: alpha 1.702, limit 1.5 (binds on g and u of both experts), +1 on up, biases.
        {"gpt_oss", GluActivation::gpt_oss(1.702f, 1.5f), true, false, {2.79233575, -0.15420423, 2.43540885},
         {0.14122109, 0.01660308, 0.53228694, 2.32813680}},
        // DeepSeek-V4: silu with limit 1 (swiglu_limit; 10 in the files, 1 binds here).
        {"deepseek_v4", GluActivation::limited(1.0f), false, false, {0.73105858, -0.0, 0.73105858},
         {-0.19397408, 0.52919333, 0.16807749, 0.42685095}},
        // Llama 4: plain silu on w · x.
        {"llama4", GluActivation{}, false, true, {0.24688093, -0.0, 0.50658742}, {-0.24227707, 0.65324667, 0.26630503, 0.25544872}},
    };
    for (auto const& form : forms) {
        INFO(form.name);
        double const w1 = 0.37754066879814546;
        auto const tr = smoe::reference::swiglu_expert_trace(ex.weights(form.biased), 1, ex.x.data(), form.act, form.on_input ? w1 : 1.0);
        for (int i = 0; i < 3; ++i) CHECK(tr.h[static_cast<std::size_t>(i)] == Approx(form.e1_h[static_cast<std::size_t>(i)]).margin(1e-8));
        Layer layer({.router = smoe::router::TopKConfig{.num_experts = ex.E, .top_k = 2, .norm_topk_prob = true}, .expert = ex.cfg(form.act, form.on_input), .max_tokens = 4},
                    {MatrixView<float const>(ex.gate.data(), ex.E, ex.d), {}, ex.weights(form.biased)});
        auto const y = forward(layer, ex.x, 1, ex.d);
        check_values(y, form.y, 2e-6);
    }
    (void)W;
}

TEST_CASE("clamped, biased and input-weighted experts match the oracle on random shapes", "[expert][glu][oracle]") {
    std::mt19937_64 rng(61);
    struct Form {
        GluActivation act;
        bool biased, on_input;
    };
    // Nemotron-H's non-gated relu² too (no W1, no b1; 16 up units per panel: f 7, 16 and 33 fill a part of one
    // panel, exactly one, two and one unit).
    Form const forms[] = {{GluActivation::gpt_oss(), true, false},
                          {GluActivation::gpt_oss(1.702f, 0.75f), true, false},
                          {GluActivation::limited(0.5f), false, false},
                          {GluActivation{}, false, true},
                          {GluActivation{2.0f, 1.25f, -0.5f}, true, true},
                          {GluActivation::relu_squared(), false, false},
                          {GluActivation::relu_squared(), true, false},
                          {GluActivation::relu_squared(), false, true}};
    for (auto [d, f, E] : {std::tuple<std::int64_t, std::int64_t, std::int64_t>{13, 7, 3}, {40, 33, 2}, {70, 9, 4}, {24, 16, 2}}) {
        auto const w1 = smoe_test::normal(rng, std::size_t(E * f * d), 0.3), w3 = smoe_test::normal(rng, std::size_t(E * f * d), 0.3);
        auto const w2 = smoe_test::normal(rng, std::size_t(E * d * f), 0.3);
        auto const b1 = smoe_test::normal(rng, std::size_t(E * f), 0.5), b3 = smoe_test::normal(rng, std::size_t(E * f), 0.5);
        auto const b2 = smoe_test::normal(rng, std::size_t(E * d), 0.5);
        for (auto const& form : forms) {
            SwiGLUConfig const cfg{.hidden_size = d, .intermediate_size = f, .num_experts = E, .activation = form.act, .weight_on_input = form.on_input};
            bool const gated = form.act.gated();
            auto w = Weights::dense(gated ? w1.data() : nullptr, w3.data(), w2.data(), cfg);
            if (form.biased)
                w.bias = {gated ? MatrixView<float const>(b1.data(), E, f) : MatrixView<float const>{}, MatrixView<float const>(b3.data(), E, f),
                          MatrixView<float const>(b2.data(), E, d)};
            smoe::expert::SwiGLU<float> const ex(cfg, w);
            CHECK(ex.flops_per_row() == (gated ? 6.0 : 4.0) * double(d) * double(f));
            for (std::int64_t M : {0, 1, 2, 17}) {
                INFO("d " << d << ", f " << f << ", M " << M << ", alpha " << form.act.alpha << ", limit " << form.act.limit
                          << ", relu2 " << form.act.relu2 << ", biased " << form.biased << ", on input " << form.on_input);
                auto const x = smoe_test::normal(rng, std::size_t(M * d), 1.5);
                auto rw = smoe_test::normal(rng, std::size_t(M), 0.5);
                for (auto& v : rw) v = std::fabs(v) + 0.05f;
                for (std::int64_t e = 0; e < E; ++e) {
                    auto const out = run_rows(ex, e, x, rw, M);
                    for (std::int64_t r = 0; r < M; ++r) {
                        double const wr = rw[std::size_t(r)];
                        auto const ref = smoe::reference::swiglu_expert(w, e, x.data() + r * d, form.act, form.on_input ? wr : 1.0);
                        double err = 0, mag = 0;
                        for (std::int64_t i = 0; i < d; ++i) {
                            double const want = form.on_input ? ref[std::size_t(i)] : wr * ref[std::size_t(i)];
                            err = std::max(err, std::fabs(out[std::size_t(r * d + i)] - want));
                            mag = std::max(mag, std::fabs(want));
                        }
                        CHECK(err <= 2e-5 * std::max(mag, 1e-3));
                    }
                    // A row alone gives its bits inside the batch (rule 3).
                    if (M > 1) {
                        std::vector<float> const x1(x.begin() + d, x.begin() + 2 * d), w1r{rw[1]};
                        auto const alone = run_rows(ex, e, x1, w1r, 1);
                        CHECK(std::memcmp(alone.data(), out.data() + d, std::size_t(d) * sizeof(float)) == 0);
                    }
                }
            }
        }
    }
}

TEST_CASE("bf16 and quantised experts take the same activation, biases and input weight", "[expert][glu][formats]") {
    std::mt19937_64 rng(62);
    std::int64_t const d = 37, f = 21, E = 2, M = 9;
    auto const w1 = smoe_test::normal(rng, std::size_t(E * f * d), 0.3), w3 = smoe_test::normal(rng, std::size_t(E * f * d), 0.3);
    auto const w2 = smoe_test::normal(rng, std::size_t(E * d * f), 0.3);
    auto const b1 = smoe_test::normal(rng, std::size_t(E * f), 0.5), b3 = smoe_test::normal(rng, std::size_t(E * f), 0.5);
    auto const b2 = smoe_test::normal(rng, std::size_t(E * d), 0.5);
    GluBiases const bias{MatrixView<float const>(b1.data(), E, f), MatrixView<float const>(b3.data(), E, f), MatrixView<float const>(b2.data(), E, d)};
    auto const x = smoe_test::normal(rng, std::size_t(M * d), 1.5);
    std::vector<float> const rw(std::size_t(M), 0.625f);
    std::vector<smoe::bf16> h1(w1.size()), h3(w3.size()), h2(w2.size());
    std::vector<float> r1(w1.size()), r3(w3.size()), r2(w2.size());  // the bf16 values widened
    for (std::size_t i = 0; i < w1.size(); ++i) h1[i] = smoe::to_bf16(w1[i]), r1[i] = smoe::to_float(h1[i]);
    for (std::size_t i = 0; i < w3.size(); ++i) h3[i] = smoe::to_bf16(w3[i]), r3[i] = smoe::to_float(h3[i]);
    for (std::size_t i = 0; i < w2.size(); ++i) h2[i] = smoe::to_bf16(w2[i]), r2[i] = smoe::to_float(h2[i]);
    for (bool on_input : {false, true}) {
        INFO("weight on input " << on_input);
        SwiGLUConfig cfg{.hidden_size = d, .intermediate_size = f, .num_experts = E, .activation = GluActivation::gpt_oss(), .weight_on_input = on_input};
        auto wf = Weights::dense(r1.data(), r3.data(), r2.data(), cfg);
        wf.bias = bias;
        smoe::expert::SwiGLU<float> const exact(cfg, wf);
        // bf16 weights on the fp32 path: the bits of SwiGLU<float> on the widened values.
        cfg.bf16_dot = smoe::expert::Bf16Dot::off;
        auto wb = smoe::expert::SwiGLUWeights<smoe::bf16>::dense(h1.data(), h3.data(), h2.data(), cfg);
        wb.bias = bias;
        smoe::expert::SwiGLU<smoe::bf16> const b16(cfg, wb);
        // The bf16 dot path (emulated: any CPU) rounds x and h to bf16: within experts.md §9's bf16 bound.
        cfg.bf16_dot = smoe::expert::Bf16Dot::emulated;
        smoe::expert::SwiGLU<smoe::bf16> const dot(cfg, wb);
        // QuantSwiGLU's exact path gives SwiGLU<float>'s bits on its (here bf16) weights.
        cfg.bf16_dot = smoe::expert::Bf16Dot::off;
        auto wq = smoe::expert::QuantSwiGLUWeights::quantized(r1.data(), r3.data(), r2.data(), cfg, {E, smoe::quant::Format::bf16()},
                                                              {E, smoe::quant::Format::bf16()});
        wq.bias = bias;
        smoe::expert::QuantSwiGLU const q(cfg, wq);
        for (std::int64_t e = 0; e < E; ++e) {
            auto const ref = run_rows(exact, e, x, rw, M);
            CHECK(same_bits(run_rows(b16, e, x, rw, M), ref));
            CHECK(same_bits(run_rows(q, e, x, rw, M), ref));
            auto const y = run_rows(dot, e, x, rw, M);
            for (std::int64_t r = 0; r < M; ++r) {
                double err = 0, mag = 0;
                for (std::int64_t i = 0; i < d; ++i) {
                    err = std::max(err, std::fabs(double(y[std::size_t(r * d + i)]) - ref[std::size_t(r * d + i)]));
                    mag = std::max(mag, std::fabs(double(ref[std::size_t(r * d + i)])));
                }
                CHECK(err <= 3e-2 * mag);
            }
        }
    }
}

TEST_CASE("zero biases with the default activation give the plain values and the interleaved view gives the fused bits",
          "[expert][glu][plain]") {
    std::mt19937_64 rng(63);
    std::int64_t const d = 29, f = 19, E = 2, M = 11;
    auto const w1 = smoe_test::normal(rng, std::size_t(E * f * d), 0.3), w3 = smoe_test::normal(rng, std::size_t(E * f * d), 0.3);
    auto const w2 = smoe_test::normal(rng, std::size_t(E * d * f), 0.3);
    std::vector<float> const zf(std::size_t(E * f), 0.0f), zd(std::size_t(E * d), 0.0f);
    auto const x = smoe_test::normal(rng, std::size_t(M * d), 1.0);
    std::vector<float> const rw(std::size_t(M), 0.5f);
    SwiGLUConfig const cfg{d, f, E};
    auto wz = Weights::dense(w1.data(), w3.data(), w2.data(), cfg);
    smoe::expert::SwiGLU<float> const plain(cfg, wz);
    wz.bias = {MatrixView<float const>(zf.data(), E, f), MatrixView<float const>(zf.data(), E, f), MatrixView<float const>(zd.data(), E, d)};
    smoe::expert::SwiGLU<float> const general(cfg, wz);
    // Interleaved rows: 2j gate j, 2j + 1 up j (GPT-OSS's gate_up_proj transposed to [out, in]).
    std::vector<float> gu(std::size_t(E * 2 * f * d));
    for (std::int64_t e = 0; e < E; ++e)
        for (std::int64_t j = 0; j < f; ++j)
            for (std::int64_t i = 0; i < d; ++i) {
                gu[std::size_t(((e * 2 * f) + 2 * j) * d + i)] = w1[std::size_t((e * f + j) * d + i)];
                gu[std::size_t(((e * 2 * f) + 2 * j + 1) * d + i)] = w3[std::size_t((e * f + j) * d + i)];
            }
    smoe::expert::SwiGLU<float> const inter(cfg, Weights::interleaved(gu.data(), w2.data(), cfg));
    for (std::int64_t e = 0; e < E; ++e) {
        auto const a = run_rows(plain, e, x, rw, M), b = run_rows(general, e, x, rw, M);
        CHECK(a == b);  // equal values (a zero's sign may differ: g + 0)
        CHECK(same_bits(run_rows(inter, e, x, rw, M), a));
    }
}

TEST_CASE("clamped experts: exp overflow, NaN rows and dropped slots stay where they are", "[expert][glu][edge]") {
    std::int64_t const d = 16, f = 8, E = 1, M = 3;
    std::vector<float> w1(std::size_t(f * d), 0.0f), w3(std::size_t(f * d), 0.0f), w2(std::size_t(d * f), 0.0f);
    for (std::int64_t j = 0; j < f; ++j) w1[std::size_t(j * d)] = 1.0f, w3[std::size_t(j * d + 1)] = 1.0f, w2[std::size_t(j * f + j)] = 1.0f;
    // No clamp (limit +inf): g = ±90 · alpha overflows exp; -90 gives -0 · ..., +90 gives g · (u + 1).
    SwiGLUConfig const cfg{.hidden_size = d, .intermediate_size = f, .num_experts = E, .activation = {1.702f, std::numeric_limits<float>::infinity(), 1.0f}};
    smoe::expert::SwiGLU<float> const ex(cfg, Weights::dense(w1.data(), w3.data(), w2.data(), cfg));
    std::vector<float> x(std::size_t(M * d), 0.0f);
    x[0] = -90.0f, x[1] = 2.0f;
    x[std::size_t(d)] = 90.0f, x[std::size_t(d + 1)] = 2.0f;
    x[std::size_t(2 * d)] = std::numeric_limits<float>::quiet_NaN();
    std::vector<float> const rw{1.0f, 1.0f, 1.0f};
    auto const y = run_rows(ex, 0, x, rw, M);
    for (std::int64_t j = 0; j < f; ++j) {
        CHECK(y[std::size_t(j)] == 0.0f);
        CHECK(y[std::size_t(d + j)] == 270.0f);
        CHECK(std::isnan(y[std::size_t(2 * d + j)]));  // the NaN stays NaN through the clamps, in its row only
    }
    // Clamped: limit 7 bounds +90 to 7 · σ(1.702 · 7) · (2 + 1).
    SwiGLUConfig const c7{.hidden_size = d, .intermediate_size = f, .num_experts = E, .activation = GluActivation::gpt_oss()};
    smoe::expert::SwiGLU<float> const e7(c7, Weights::dense(w1.data(), w3.data(), w2.data(), c7));
    auto const y7 = run_rows(e7, 0, x, rw, M);
    CHECK(y7[std::size_t(d)] == Approx(7.0 / (1.0 + std::exp(-1.702 * 7.0)) * 3.0).epsilon(1e-6));
    CHECK(std::isnan(y7[std::size_t(2 * d)]));
}

TEST_CASE("the input-weighted layer and the shared average run through forward, on one and two threads", "[expert][glu][layer]") {
    std::mt19937_64 rng(64);
    std::int64_t const d = 45, f = 23, E = 6, k = 2, T = 70;
    auto const gate = smoe_test::normal(rng, std::size_t(E * d), 0.5);
    auto const w1 = smoe_test::normal(rng, std::size_t(E * f * d), 0.3), w3 = smoe_test::normal(rng, std::size_t(E * f * d), 0.3);
    auto const w2 = smoe_test::normal(rng, std::size_t(E * d * f), 0.3);
    auto const x = smoe_test::normal(rng, std::size_t(T * d), 1.0);
    // Llama 4's router: top-k of the logits, w = σ(L_S), no renorm: sigmoid scores (monotone) without renorm.
    smoe::router::TopKConfig const rc{.num_experts = E, .top_k = k, .score_func = smoe::router::ScoreFunc::sigmoid};
    SwiGLUConfig const cfg{.hidden_size = d, .intermediate_size = f, .num_experts = E, .weight_on_input = true};
    auto const w = Weights::dense(w1.data(), w3.data(), w2.data(), cfg);
    Layer layer({.router = rc, .expert = cfg, .max_tokens = T}, {MatrixView<float const>(gate.data(), E, d), {}, w});
    std::vector<float> y(std::size_t(T * d));
    auto const r = layer.forward(MatrixView<float const>(x.data(), T, d), MatrixView<float>(y.data(), T, d));
    auto const ref = smoe::reference::combine_swiglu(r, w, MatrixView<float const>(x.data(), T, d), {}, true);
    for (std::int64_t t = 0; t < T; ++t) {
        double err = 0, mag = 0;
        for (std::int64_t i = 0; i < d; ++i) {
            err = std::max(err, std::fabs(y[std::size_t(t * d + i)] - ref[std::size_t(t * d + i)]));
            mag = std::max(mag, std::fabs(ref[std::size_t(t * d + i)]));
        }
        CHECK(err <= 2e-5 * mag);
    }
    smoe::DefaultThreadPool two(2);
    layer.set_thread_pool(two);
    std::vector<float> y2(std::size_t(T * d));
    layer.forward(MatrixView<float const>(x.data(), T, d), MatrixView<float>(y2.data(), T, d));
    CHECK(same_bits(y, y2));

    // Cohere2-MoE's average: routed weights × 0.5 (routed_scaling_factor) and shared × 0.5 (shared_scale).
    std::int64_t const fs = 17;
    auto const s1 = smoe_test::normal(rng, std::size_t(fs * d), 0.3), s3 = smoe_test::normal(rng, std::size_t(fs * d), 0.3);
    auto const s2 = smoe_test::normal(rng, std::size_t(d * fs), 0.3);
    SwiGLUConfig const sc{d, fs, 1}, rcfg{d, f, E};
    auto const rw = Weights::dense(w1.data(), w3.data(), w2.data(), rcfg), sw = Weights::dense(s1.data(), s3.data(), s2.data(), sc);
    smoe::router::TopKConfig const avg{.num_experts = E, .top_k = k, .score_after_topk = true, .routed_scaling_factor = 0.5f};
    SharedLayer sl({.router = avg, .expert = {rcfg, sc, 0.5f}, .max_tokens = T}, {MatrixView<float const>(gate.data(), E, d), {}, {rw, sw, {}}});
    std::vector<float> ys(std::size_t(T * d));
    auto const rs = sl.forward(MatrixView<float const>(x.data(), T, d), MatrixView<float>(ys.data(), T, d));
    auto sref = smoe::reference::combine_swiglu(rs, rw, MatrixView<float const>(x.data(), T, d));
    for (std::int64_t t = 0; t < T; ++t) {
        auto const fsh = smoe::reference::swiglu_expert(sw, 0, x.data() + t * d);
        double err = 0, mag = 0;
        for (std::int64_t i = 0; i < d; ++i) {
            double const want = sref[std::size_t(t * d + i)] + 0.5 * fsh[std::size_t(i)];
            err = std::max(err, std::fabs(ys[std::size_t(t * d + i)] - want));
            mag = std::max(mag, std::fabs(want));
        }
        CHECK(err <= 2e-5 * mag);
    }
}

TEST_CASE("bad activation parameters, biases and shared settings are named", "[expert][glu][errors]") {
    Example const ex;
    auto make = [&](GluActivation a) { smoe::expert::SwiGLU<float> e(ex.cfg(a), ex.weights(false)); };
    CHECK_THROWS_WITH(make({std::numeric_limits<float>::quiet_NaN(), 7.0f, 1.0f}), Contains("activation.alpha") && Contains("finite number > 0"));
    CHECK_THROWS_WITH(make({1.702f, 0.0f, 1.0f}), Contains("activation.limit") && Contains("> 0"));
    CHECK_THROWS_WITH(make({1.702f, 7.0f, std::numeric_limits<float>::infinity()}), Contains("activation.up_offset"));
    auto w = ex.weights(true);
    w.bias.b2 = MatrixView<float const>(ex.b2.data(), ex.E, ex.d - 1);
    CHECK_THROWS_WITH(smoe::expert::SwiGLU<float>(ex.cfg(), w), Contains("bias.b2") && Contains("[4, 4]"));
    std::vector<float> bad(ex.b1);
    bad[5] = std::numeric_limits<float>::infinity();
    w = ex.weights(true);
    w.bias.b1 = MatrixView<float const>(bad.data(), ex.E, ex.f);
    CHECK_THROWS_WITH(smoe::expert::SwiGLU<float>(ex.cfg(), w), Contains("bias.b1") && Contains("expert 1, unit 2") && Contains("finite"));
    using S = smoe::expert::Shared<smoe::expert::SwiGLU<float>>;
    SwiGLUConfig const one{.hidden_size = 4, .intermediate_size = 3, .num_experts = 1, .weight_on_input = true};
    auto const sw = Weights::dense(ex.w1.data(), ex.w3.data(), ex.w2.data(), one);
    CHECK_THROWS_WITH(S({ex.cfg(), one}, {ex.weights(false), sw, {}}), Contains("shared.weight_on_input"));
    CHECK_THROWS_WITH(S({ex.cfg(), {4, 3, 1}, std::numeric_limits<float>::infinity()}, {ex.weights(false), sw, {}}), Contains("shared_scale"));
}

TEST_CASE("non-gated relu² experts (Nemotron-H): the header's example by hand, bf16 weights and what they refuse", "[expert][glu][relu2]") {
    GluActivation const relu2 = GluActivation::relu_squared();
    // GluActivation's header example by hand: d 1, x = 1, up rows (-1, 0.5, 3) -> h = (0, 0.25, 9); a down row
    // (1, 10, 100) gives 0 + 2.5 + 900 = 902.5, times the routing weight 0.5: 451.25 (all exact in fp32).
    {
        std::vector<float> const up = {-1, 0.5f, 3}, down = {1, 10, 100}, x = {1}, rw = {0.5f};
        SwiGLUConfig const cfg{.hidden_size = 1, .intermediate_size = 3, .num_experts = 1, .activation = relu2};
        auto const w = Weights::dense(nullptr, up.data(), down.data(), cfg);
        auto const t = smoe::reference::swiglu_expert_trace(w, 0, x.data(), relu2);
        CHECK(t.h == std::vector<double>{0, 0.25, 9});
        CHECK(run_rows(smoe::expert::SwiGLU<float>(cfg, w), 0, x, rw, 1) == std::vector<float>{451.25f});
    }
    // bf16 weights: the fp32 path gives SwiGLU<float>'s bits on the widened values; the bf16 dot path (emulated)
    // rounds x and h to bf16, within experts.md §9's bf16 bound (random shapes: the oracle test above).
    std::mt19937_64 rng(64);
    std::int64_t const d = 40, f = 33, E = 2, M = 9;
    auto const w3 = smoe_test::normal(rng, std::size_t(E * f * d), 0.3), w2 = smoe_test::normal(rng, std::size_t(E * d * f), 0.3);
    std::vector<smoe::bf16> h3(w3.size()), h2(w2.size());
    std::vector<float> r3(w3.size()), r2(w2.size());  // the bf16 values widened
    for (std::size_t i = 0; i < w3.size(); ++i) h3[i] = smoe::to_bf16(w3[i]), r3[i] = smoe::to_float(h3[i]);
    for (std::size_t i = 0; i < w2.size(); ++i) h2[i] = smoe::to_bf16(w2[i]), r2[i] = smoe::to_float(h2[i]);
    SwiGLUConfig c16{.hidden_size = d, .intermediate_size = f, .num_experts = E, .bf16_dot = smoe::expert::Bf16Dot::off, .activation = relu2};
    smoe::expert::SwiGLU<float> const widened(c16, Weights::dense(nullptr, r3.data(), r2.data(), c16));
    smoe::expert::SwiGLU<smoe::bf16> const b16(c16, smoe::expert::SwiGLUWeights<smoe::bf16>::dense(nullptr, h3.data(), h2.data(), c16));
    c16.bf16_dot = smoe::expert::Bf16Dot::emulated;
    smoe::expert::SwiGLU<smoe::bf16> const dot(c16, smoe::expert::SwiGLUWeights<smoe::bf16>::dense(nullptr, h3.data(), h2.data(), c16));
    auto const x = smoe_test::normal(rng, std::size_t(M * d), 1.5);
    std::vector<float> const rw(M, 0.625f);
    for (std::int64_t e = 0; e < E; ++e) {
        auto const ref = run_rows(widened, e, x, rw, M);
        CHECK(same_bits(run_rows(b16, e, x, rw, M), ref));
        auto const y = run_rows(dot, e, x, rw, M);
        double err = 0, mag = 0;
        for (std::size_t i = 0; i < y.size(); ++i) err = std::max(err, std::fabs(double(y[i]) - ref[i])), mag = std::max(mag, std::fabs(double(ref[i])));
        CHECK(err <= 3e-2 * mag);
        CHECK(mag > 0.1);
    }
    // What a non-gated expert refuses, by name.
    std::vector<float> const w(64, 0.25f);
    SwiGLUConfig const cfg{.hidden_size = 4, .intermediate_size = 3, .num_experts = 1, .activation = relu2};
    CHECK_THROWS_WITH(smoe::expert::SwiGLU<float>(cfg, Weights::dense(w.data(), w.data(), w.data(), cfg)), Contains("w1") && Contains("non-gated"));
    auto wb = Weights::dense(nullptr, w.data(), w.data(), cfg);
    wb.bias.b1 = MatrixView<float const>(w.data(), 1, 3);
    CHECK_THROWS_WITH(smoe::expert::SwiGLU<float>(cfg, wb), Contains("bias.b1") && Contains("non-gated"));
    GluActivation clamped = relu2;
    clamped.limit = 7.0f;
    SwiGLUConfig const bad{.hidden_size = 4, .intermediate_size = 3, .num_experts = 1, .activation = clamped};
    CHECK_THROWS_WITH(smoe::expert::SwiGLU<float>(bad, Weights::dense(nullptr, w.data(), w.data(), bad)), Contains("activation.relu2"));
    auto wq = smoe::expert::QuantSwiGLUWeights::quantized(w.data(), w.data(), w.data(), cfg, {1, smoe::quant::Format::bf16()},
                                                          {1, smoe::quant::Format::bf16()});
    CHECK_THROWS_WITH(smoe::expert::QuantSwiGLU(cfg, wq), Contains("activation.relu2") && Contains("QuantSwiGLU"));
}
