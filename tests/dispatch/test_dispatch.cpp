// Runtime ISA dispatch: this file has plain x86-64 flags; the layers come from layers_isa.cpp compiled
// for avx512bw, fma3<avx2> and sse2. The dispatched layer picks the best ISA this CPU supports, each
// ISA the CPU supports gives the oracle's answer, the sse2 one the same bits as MoELayer compiled here
// (plain x86-64 is sse2), and a named ISA this CPU lacks or that is not in the list is an error.

#include <cmath>
#include <cstdint>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include <catch2/catch.hpp>

#include "common/data.hpp"
#include "dispatch/codegen_probe.hpp"
#include "smoe/dispatch.hpp"
#include "smoe/kernels/reference/moe.hpp"
#include "smoe/smoe.hpp"

using smoe::MatrixView;

namespace {

template <class W>
using Dispatched = smoe::DispatchedLayer<smoe::router::TopK, smoe::expert::SwiGLU<W>, smoe::balance::None>;

// Sizes off every vector width and panel (16) so each ISA's edge code runs.
constexpr std::int64_t d = 37, f = 53, E = 7, k = 2, Tmax = 41;

template <class W>
struct Model {
    std::vector<float> gate, x, w1f, w3f, w2f;  // w*f: the weights as fp32 (bf16 values widened exactly)
    std::vector<W> w1, w3, w2;

    explicit Model(std::mt19937_64& rng) {
        gate = smoe_test::normal(rng, std::size_t(E * d), 0.5);
        x = smoe_test::normal(rng, std::size_t(Tmax * d), 1.0);
        make(rng, E * f * d, w1, w1f);
        make(rng, E * f * d, w3, w3f);
        make(rng, E * d * f, w2, w2f);
    }
    static void make(std::mt19937_64& rng, std::int64_t n, std::vector<W>& q, std::vector<float>& wide) {
        for (float v : smoe_test::normal(rng, std::size_t(n), 0.3)) {
            if constexpr (std::is_same_v<W, smoe::bf16>) {
                q.push_back(smoe::to_bf16(v));
                wide.push_back(smoe::to_float(q.back()));
            } else {
                q.push_back(v);
                wide.push_back(v);
            }
        }
    }
    smoe::MoEConfig<smoe::router::TopK, smoe::expert::SwiGLU<W>, smoe::balance::None> config() const {
        return {.router = {.num_experts = E, .top_k = k}, .expert = {d, f, E, smoe::expert::Bf16Dot::off}, .max_tokens = Tmax};
    }
    smoe::MoEWeights<smoe::expert::SwiGLU<W>> weights() const {
        return {MatrixView<float const>(gate.data(), E, d), {},
                smoe::expert::SwiGLUWeights<W>::dense(w1.data(), w3.data(), w2.data(), {d, f, E})};
    }
    std::vector<double> oracle(std::int64_t T) const {
        auto const w = smoe::expert::SwiGLUWeights<float>::dense(w1f.data(), w3f.data(), w2f.data(), {d, f, E});
        return smoe::reference::moe_forward_topk({.num_experts = E, .top_k = k}, MatrixView<float const>(gate.data(), E, d), w,
                                                 MatrixView<float const>(x.data(), T, d));
    }
};

// experts.md §9 metric per token against the double oracle.
double worst_token_error(std::vector<float> const& y, std::vector<double> const& ref, std::int64_t T) {
    double worst = 0;
    for (std::int64_t t = 0; t < T; ++t) {
        double err = 0, mag = 0;
        for (std::int64_t i = 0; i < d; ++i) {
            err = std::max(err, std::fabs(double(y[std::size_t(t * d + i)]) - ref[std::size_t(t * d + i)]));
            mag = std::max(mag, std::fabs(ref[std::size_t(t * d + i)]));
        }
        worst = std::max(worst, mag > 0 ? err / mag : err);
    }
    return worst;
}

bool same_bits(std::vector<float> const& a, std::vector<float> const& b) {
    return a.size() == b.size() && (a.empty() || std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0);
}

std::vector<std::string> isa_names() {
    std::vector<std::string> names;
    smoe::dispatch_archs::for_each([&](auto arch) { names.emplace_back(decltype(arch)::name()); });
    return names;
}

}  // namespace

TEST_CASE("the dispatched layer runs the best listed ISA this CPU supports", "[dispatch]") {
    std::mt19937_64 rng(3);
    Model<float> const m(rng);
    Dispatched<float> layer(m.config(), m.weights());
    std::string expected;
    for (auto const& name : isa_names())
        if (expected.empty() && smoe::isa_supported(name)) expected = name;
    INFO("xsimd best version " << xsimd::available_architectures().best);
    CHECK(std::string(layer.isa()) == expected);
    // This test's own flags are plain x86-64, so the best ISA is never this file's default.
    CHECK(smoe::isa_supported("sse2"));
    CHECK_FALSE(smoe::isa_supported("neon"));
}

// Fails on an AVX-512 CPU when smoe_dispatch_sources gives the avx512bw object no workaround for a compiler
// that miscompiles constant vectors there (cmake/smoe_avx512_codegen.cmake: Debian 12's g++ 12.2).
TEST_CASE("constant vectors keep their values in every ISA object this CPU runs", "[dispatch][toolchain]") {
    int ran = 0;
    smoe::dispatch_archs::for_each([&](auto arch) {
        using Arch = decltype(arch);
        if (!smoe::isa_supported(Arch::name())) return;
        INFO("ISA object " << Arch::name());
        CHECK(smoe_test::wrong_constants_in<Arch>() == 0);
        ++ran;
    });
    CHECK(ran >= 1);
}

TEMPLATE_TEST_CASE("every ISA the CPU supports matches the oracle, and sse2 gives the bits of MoELayer built here", "[dispatch]", float, smoe::bf16) {
    using W = TestType;
    std::mt19937_64 rng(5);
    Model<W> const m(rng);
    smoe::MoELayer<smoe::router::TopK, smoe::expert::SwiGLU<W>, smoe::balance::None> here(m.config(), m.weights());
    STATIC_REQUIRE(std::is_same_v<xsimd::default_arch, xsimd::sse2>);  // this file is the baseline
    int ran = 0;
    for (auto const& name : isa_names()) {
        if (!smoe::isa_supported(name)) continue;
        INFO("isa " << name);
        ++ran;
        Dispatched<W> layer(m.config(), m.weights(), {.isa = name});
        CHECK(std::string(layer.isa()) == name);
        CHECK(layer.hidden_size() == d);
        CHECK(layer.num_experts() == E);
        for (std::int64_t T : {std::int64_t{0}, std::int64_t{1}, std::int64_t{7}, Tmax}) {
            INFO("T = " << T);
            MatrixView<float const> const x(m.x.data(), T, d);
            std::vector<float> y(std::size_t(T * d), -1.0f), yp(std::size_t(T * d), -2.0f), yh(std::size_t(T * d), -3.0f);
            auto const r = layer.forward(x, MatrixView<float>(y.data(), T, d));
            CHECK(r.num_tokens == T);
            CHECK(worst_token_error(y, m.oracle(T), T) <= 2e-5);
            // A thread pool changes no bit (experts.md §1 rule 3), through the type-erased layer too.
            smoe::DefaultThreadPool pool(2);
            layer.set_thread_pool(pool);
            layer.forward(x, MatrixView<float>(yp.data(), T, d));
            layer.clear_thread_pool();
            CHECK(same_bits(y, yp));
            if (name == "sse2") {
                here.forward(x, MatrixView<float>(yh.data(), T, d));
                CHECK(same_bits(y, yh));
            }
        }
        // The caller's workspace form and the statistics reach the ISA's layer.
        std::vector<std::byte> ws(layer.workspace_size());
        std::vector<float> y(std::size_t(3 * d));
        layer.forward(MatrixView<float const>(m.x.data(), 3, d), MatrixView<float>(y.data(), 3, d), ws);
        std::int64_t kept = 0;
        for (std::int64_t e = 0; e < E; ++e) kept += layer.stats().kept[std::size_t(e)];
        CHECK(layer.stats().tokens == 3);
        CHECK(kept == 3 * k);
    }
    CHECK(ran >= 2);  // sse2 everywhere, plus at least fma3+avx2 on any machine these tests run on
}

TEST_CASE("forward_routed goes through the dispatched layer", "[dispatch]") {
    std::mt19937_64 rng(7);
    Model<float> const m(rng);
    Dispatched<float> layer(m.config(), m.weights());
    std::int64_t const T = 5;
    std::vector<std::int32_t> ids{0, 3, 6, -1, 2, 4, 1, 0, 5, 6};
    std::vector<float> wts{0.5f, 0.5f, 1.0f, 0.0f, 0.25f, 0.75f, 0.6f, 0.4f, 0.9f, 0.1f};
    std::vector<float> y(std::size_t(T * d));
    layer.forward_routed(MatrixView<float const>(m.x.data(), T, d), MatrixView<std::int32_t const>(ids.data(), T, 2),
                         MatrixView<float const>(wts.data(), T, 2), MatrixView<float>(y.data(), T, d));
    auto const w = smoe::expert::SwiGLUWeights<float>::dense(m.w1f.data(), m.w3f.data(), m.w2f.data(), {d, f, E});
    auto const routing = smoe::reference::from_token_major(T, 2, E, ids, wts);
    auto const ref = smoe::reference::combine_swiglu(routing.view(), w, MatrixView<float const>(m.x.data(), T, d));
    CHECK(worst_token_error(y, ref, T) <= 2e-5);
}

TEST_CASE("dispatch errors: an ISA not listed, one this CPU lacks, and bad layer arguments", "[dispatch][errors]") {
    std::mt19937_64 rng(9);
    Model<float> const m(rng);
    CHECK_THROWS_WITH(Dispatched<float>(m.config(), m.weights(), {.isa = "avx9"}),
                      Catch::Contains("isa") && Catch::Contains("avx9") && Catch::Contains("fma3+avx2"));
    for (auto const& name : isa_names())
        if (!smoe::isa_supported(name))
            CHECK_THROWS_WITH(Dispatched<float>(m.config(), m.weights(), {.isa = name}),
                              Catch::Contains("isa") && Catch::Contains(name) && Catch::Contains("CPU"));
    // The ISA's constructor throws through the dispatch (xsimd::dispatch itself is noexcept).
    auto cfg = m.config();
    cfg.max_tokens = -1;
    CHECK_THROWS_AS(Dispatched<float>(cfg, m.weights()), smoe::invalid_argument);
    Dispatched<float> layer(m.config(), m.weights());
    std::vector<float> y(std::size_t(2 * d));
    CHECK_THROWS_WITH(layer.forward(MatrixView<float const>(m.x.data(), 2, d - 1), MatrixView<float>(y.data(), 2, d)),
                      Catch::Contains("x"));
}

TEST_CASE("router control goes through the dispatched layer", "[dispatch][control]") {
    std::mt19937_64 rng(8);
    Model<float> const m(rng);
    Dispatched<float> layer(m.config(), m.weights());
    std::int64_t const T = 5;
    std::vector<std::uint8_t> mask(std::size_t(E), 1);
    mask[0] = mask[3] = 0;
    std::vector<float> y(std::size_t(T * d)), y2(std::size_t(T * d));
    std::vector<std::byte> ws(layer.workspace_size());
    MatrixView<float const> const x(m.x.data(), T, d);
    auto const r = layer.forward(x, MatrixView<float>(y.data(), T, d), ws, {.expert_mask = mask});
    CHECK(r.load(0) == 0);
    CHECK(r.load(3) == 0);
    std::vector<std::int32_t> ids;
    std::vector<float> wts;
    for (std::int64_t t = 0; t < T; ++t)
        for (std::int64_t j = 0; j < r.k; ++j) ids.push_back(r.expert_ids(t, j)), wts.push_back(r.expert_weights(t, j));
    layer.forward_routed(x, MatrixView<std::int32_t const>(ids.data(), T, r.k),
                         MatrixView<float const>(wts.data(), T, r.k), MatrixView<float>(y2.data(), T, d));
    CHECK(y == y2);
}
