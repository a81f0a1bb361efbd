// forward() allocates nothing (experts.md §1 rule 5, STYLE habit 4), with and without a thread pool,
// for every weight format. This file replaces the global operator new to count calls, so it is its
// own executable.

#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <new>
#include <random>
#include <vector>

#include <catch2/catch.hpp>

#include "common/bf16_paths.hpp"
#include "common/data.hpp"
#include "smoe/smoe.hpp"

#include "common/counting_new.hpp"

using smoe::MatrixView;

TEMPLATE_TEST_CASE("forward allocates nothing, with or without a thread pool", "[layer][alloc]", float, smoe::bf16, std::int8_t) {
    using W = TestType;
    using Layer = smoe::MoELayer<smoe::router::TopK, smoe::expert::SwiGLU<W>, smoe::balance::None>;
    std::mt19937_64 rng(37);
    std::int64_t const d = 32, f = 24, E = 5, T = 19;
    auto const gate = smoe_test::normal(rng, std::size_t(E * d), 0.5);
    auto const x = smoe_test::normal(rng, std::size_t(T * d), 1.0);
    std::vector<W> w(std::size_t(E * f * d), W{});
    std::vector<float> s(std::size_t(E * std::max(f, d)), 0.01f);
    for (std::size_t i = 0; i < w.size(); ++i) {
        if constexpr (std::is_same_v<W, smoe::bf16>) w[i] = smoe::to_bf16(float(i % 7) * 0.01f);
        else w[i] = static_cast<W>(int(i % 7) - 3);
    }
    for (smoe::expert::Bf16Dot const dot : smoe_test::dot_paths<W>()) {  // bf16: both paths, any CPU
        INFO("bf16_dot " << to_string(dot));
        smoe::expert::SwiGLUConfig const c{d, f, E, dot};
        smoe::expert::SwiGLUWeights<W> experts;
        if constexpr (std::is_same_v<W, std::int8_t>)
            experts = smoe::expert::SwiGLUWeights<W>::dense(w.data(), s.data(), w.data(), s.data(), w.data(), s.data(), c);
        else
            experts = smoe::expert::SwiGLUWeights<W>::dense(w.data(), w.data(), w.data(), c);
        Layer layer({.router = {.num_experts = E, .top_k = 2}, .expert = c, .max_tokens = T},
                    {MatrixView<float const>(gate.data(), E, d), {}, experts});
        std::vector<float> y(std::size_t(T * d));
        smoe::DefaultThreadPool pool(2);
        {
            long const before = g_news.load();
            void* volatile probe = ::operator new(16);  // the counter sees allocations (a direct call is never elided)
            ::operator delete(probe);
            REQUIRE(g_news.load() - before == 1);
        }
        for (int with_pool = 0; with_pool < 2; ++with_pool) {
            if (with_pool) layer.set_thread_pool(pool);
            for (std::int64_t n : {std::int64_t{1}, std::int64_t{7}, T}) {
                MatrixView<float const> const xv(x.data(), n, d);
                MatrixView<float> const yv(y.data(), n, d);
                layer.forward(xv, yv);  // warm-up: the pool's threads are running, nothing is lazily built
                long const before = g_news.load();
                layer.forward(xv, yv);
                layer.forward(xv, yv);
                long const after = g_news.load();
                INFO("pool " << with_pool << ", T = " << n);
                CHECK(after - before == 0);
            }
        }
    }
}

TEST_CASE("forward allocates nothing with quantised experts, mixed formats, a shared expert and the int8 dot path", "[layer][alloc][quant]") {
    using smoe::quant::Format;
    using Q = smoe::expert::QuantSwiGLU;
    using Layer = smoe::MoELayer<smoe::router::TopK, smoe::expert::Shared<Q, smoe::expert::shared_gate::Sigmoid>, smoe::balance::None>;
    std::mt19937_64 rng(38);
    std::int64_t const d = 64, f = 32, E = 4, T = 19;
    auto const gate = smoe_test::normal(rng, std::size_t(E * d), 0.5), sgate = smoe_test::normal(rng, std::size_t(d), 0.5);
    auto const x = smoe_test::normal(rng, std::size_t(T * d), 1.0);
    auto const w1 = smoe_test::normal(rng, std::size_t(E * f * d), 0.05), w3 = smoe_test::normal(rng, std::size_t(E * f * d), 0.05),
               w2 = smoe_test::normal(rng, std::size_t(E * d * f), 0.05);
    for (smoe::expert::Int8Dot const dot : {smoe::expert::Int8Dot::off, smoe::expert::Int8Dot::on}) {
        INFO("int8_dot " << to_string(dot));
        smoe::expert::SwiGLUConfig c{d, f, E}, cs{d, f, 1};
        c.int8_dot = cs.int8_dot = dot;
        std::vector<Format> const gu = {Format::int4(32), Format::int8_channel(), Format::bf16(), Format::int4(64)};
        std::vector<Format> const dn = {Format::int4(32), Format::int8_channel(), Format::bf16(), Format::int4(0)};
        auto const routed = smoe::expert::QuantSwiGLUWeights::quantized(w1.data(), w3.data(), w2.data(), c, gu, dn);
        auto const shared = smoe::expert::QuantSwiGLUWeights::quantized(w1.data(), w3.data(), w2.data(), cs, {Format::bf16()}, {Format::int8_channel()});
        Layer layer({.router = {.num_experts = E, .top_k = 2}, .expert = {c, cs}, .max_tokens = T},
                    {MatrixView<float const>(gate.data(), E, d), {}, {routed, shared, MatrixView<float const>(sgate.data(), 1, d)}});
        std::vector<float> y(std::size_t(T * d));
        smoe::DefaultThreadPool pool(2);
        for (int with_pool = 0; with_pool < 2; ++with_pool) {
            if (with_pool) layer.set_thread_pool(pool);
            for (std::int64_t n : {std::int64_t{1}, std::int64_t{7}, T}) {
                MatrixView<float const> const xv(x.data(), n, d);
                MatrixView<float> const yv(y.data(), n, d);
                layer.forward(xv, yv);
                long const before = g_news.load();
                layer.forward(xv, yv);
                long const after = g_news.load();
                INFO("pool " << with_pool << ", T = " << n);
                CHECK(after - before == 0);
                for (float v : y) REQUIRE(std::isfinite(v));
            }
        }
    }
}

TEST_CASE("forward under a RouterControl allocates nothing", "[layer][alloc][control]") {
    using Layer = smoe::MoELayer<smoe::router::TopK, smoe::expert::SwiGLU<float>, smoe::balance::None>;
    std::mt19937_64 rng(39);
    std::int64_t const d = 32, f = 24, E = 6, T = 19;
    auto const gate = smoe_test::normal(rng, std::size_t(E * d), 0.5),
               w = smoe_test::normal(rng, std::size_t(E * f * d), 0.1);
    auto const x = smoe_test::normal(rng, std::size_t(T * d), 1.0);
    smoe::expert::SwiGLUConfig const c{d, f, E};
    auto const experts = smoe::expert::SwiGLUWeights<float>::dense(w.data(), w.data(), w.data(), c);
    Layer layer({.router = {.num_experts = E, .top_k = 2, .n_group = 3, .topk_group = 2}, .expert = c, .max_tokens = T},
                {MatrixView<float const>(gate.data(), E, d), {}, experts});
    std::vector<float> const offset = {0, 0.5f, 0, 0, 1, 0}, boost = {1, 1, 2, 1, 1, 0.5f}, over = {1, 1, 1, 1, 1, 1};
    std::vector<std::uint8_t> const mask = {1, 0, 1, 1, 1, 1};
    std::vector<std::int32_t> const tokens = {0, 5};
    smoe::RouterControl const control{offset, boost, mask, over, tokens};
    std::vector<float> y(std::size_t(T * d));
    MatrixView<float const> const xv(x.data(), T, d);
    MatrixView<float> const yv(y.data(), T, d);
    layer.forward(xv, yv, control);
    long const before = g_news.load();
    layer.forward(xv, yv, control);
    CHECK(g_news.load() - before == 0);
}
