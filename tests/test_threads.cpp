// Threads (experts.md §1 rules 2 and 3): the layer gives the same bits with no pool, the default pool
// of 2 or 3 threads and an engine's own pool, for every weight format, including when one expert takes
// every token; the default pool runs every item exactly once.

#include <atomic>
#include <cstdint>
#include <cstring>
#include <random>
#include <vector>

#include <catch2/catch.hpp>

#include "common/bf16_paths.hpp"
#include "common/data.hpp"
#include "smoe/kernels/reference/reference.hpp"
#include "smoe/smoe.hpp"

using smoe::MatrixView;

namespace {

// An engine's pool that hands items out backwards on the calling thread: a different order and split
// from the default pool's, through the same concept.
struct ReversePool {
    int calls = 0;
    void parallel_for(std::int64_t n, smoe::TaskRef fn) {
        ++calls;
        for (std::int64_t i = n - 1; i >= 0; --i) fn(i);
    }
};
static_assert(smoe::ThreadPool<ReversePool>);

template <class W>
struct Model {
    std::int64_t d, f, E;
    std::vector<float> gate, x;
    std::vector<W> w1, w3, w2;
    std::vector<float> s1, s3, s2;

    smoe::expert::Bf16Dot dot;  // bf16 only: the fp32 path (off) or the AVX512-BF16 arithmetic (emulated)

    Model(std::mt19937_64& rng, std::int64_t d_, std::int64_t f_, std::int64_t E_, std::int64_t T,
          smoe::expert::Bf16Dot dot_ = smoe::expert::Bf16Dot::off)
        : d(d_), f(f_), E(E_), dot(dot_) {
        gate = smoe_test::normal(rng, std::size_t(E * d), 0.5);
        x = smoe_test::normal(rng, std::size_t(T * d), 1.0);
        make(rng, E * f, d, w1, s1);
        make(rng, E * f, d, w3, s3);
        make(rng, E * d, f, w2, s2);
    }
    static void make(std::mt19937_64& rng, std::int64_t rows, std::int64_t cols, std::vector<W>& q, std::vector<float>& s) {
        auto const v = smoe_test::normal(rng, std::size_t(rows * cols), 1.0 / std::sqrt(double(cols)));
        if constexpr (std::is_same_v<W, float>) {
            q = v;
        } else if constexpr (std::is_same_v<W, smoe::bf16>) {
            for (float a : v) q.push_back(smoe::to_bf16(a));
        } else {
            auto r = smoe::quantize_int8_per_channel(MatrixView<float const>(v.data(), rows, cols));
            q = std::move(r.q);
            s = std::move(r.s);
        }
    }
    // The layer's config and the weights' name the same path (common/bf16_paths.hpp).
    smoe::expert::SwiGLUConfig config() const { return {d, f, E, dot}; }
    smoe::expert::SwiGLUWeights<W> experts() const {
        smoe::expert::SwiGLUConfig const c = config();
        if constexpr (std::is_same_v<W, std::int8_t>)
            return smoe::expert::SwiGLUWeights<W>::dense(w1.data(), s1.data(), w3.data(), s3.data(), w2.data(), s2.data(), c);
        else
            return smoe::expert::SwiGLUWeights<W>::dense(w1.data(), w3.data(), w2.data(), c);
    }
};

template <class W>
using Layer = smoe::MoELayer<smoe::router::TopK, smoe::expert::SwiGLU<W>, smoe::balance::None>;

}  // namespace

TEMPLATE_TEST_CASE("the layer gives the same bits on 1, 2 and 3 threads and on an engine's pool", "[threads][layer][rule3]",
                   float, smoe::bf16, std::int8_t) {
    using W = TestType;
    for (smoe::expert::Bf16Dot const dot : smoe_test::dot_paths<W>()) {
        INFO("bf16_dot " << to_string(dot));
        std::mt19937_64 rng(29);
        std::int64_t const d = 45, f = 70, E = 6, T = 37, k = 2;
        Model<W> const m(rng, d, f, E, T, dot);
        typename Layer<W>::Config cfg{.router = {.num_experts = E, .top_k = k}, .expert = m.config(), .max_tokens = T};
        Layer<W> layer(cfg, {MatrixView<float const>(m.gate.data(), E, d), {}, m.experts()});
        smoe::DefaultThreadPool two(2), three(3);
        ReversePool reverse;
        for (std::int64_t n : {std::int64_t{1}, std::int64_t{2}, std::int64_t{8}, T}) {
            INFO("T = " << n);
            MatrixView<float const> const x(m.x.data(), n, d);
            std::vector<float> y1(std::size_t(n * d)), y(std::size_t(n * d));
            layer.clear_thread_pool();
            layer.forward(x, MatrixView<float>(y1.data(), n, d));
            for (int which = 0; which < 3; ++which) {
                INFO("pool " << which);
                if (which == 0) layer.set_thread_pool(two);
                if (which == 1) layer.set_thread_pool(three);
                if (which == 2) layer.set_thread_pool(reverse);
                std::fill(y.begin(), y.end(), -1.0f);
                layer.forward(x, MatrixView<float>(y.data(), n, d));
                CHECK(std::memcmp(y.data(), y1.data(), y.size() * sizeof(float)) == 0);
            }
            // And each token alone gives its bits inside the batch (rule 3, through the layer).
            layer.set_thread_pool(two);
            for (std::int64_t t = 0; t < n; t += 5) {
                std::vector<float> yt(static_cast<std::size_t>(d));
                layer.forward(MatrixView<float const>(m.x.data() + t * d, 1, d), MatrixView<float>(yt.data(), 1, d));
                CHECK(std::memcmp(yt.data(), y1.data() + t * d, std::size_t(d) * sizeof(float)) == 0);
            }
        }
        CHECK(reverse.calls > 0);
    }
}

TEMPLATE_TEST_CASE("an expert with every token and experts with none: threads agree and match the oracle", "[threads][layer]",
                   float, smoe::bf16, std::int8_t) {
    using W = TestType;
    for (smoe::expert::Bf16Dot const dot : smoe_test::dot_paths<W>()) {
        INFO("bf16_dot " << to_string(dot));
        std::mt19937_64 rng(31);
        std::int64_t const d = 40, f = 33, E = 4, T = 23, K = 2;
        Model<W> const m(rng, d, f, E, T, dot);
        typename Layer<W>::Config cfg{.router = {.num_experts = E, .top_k = K}, .expert = m.config(), .max_tokens = T};
        Layer<W> layer(cfg, {MatrixView<float const>(m.gate.data(), E, d), {}, m.experts()});
        // Every token goes to expert 2 (weight 0.75) and, for even tokens, to expert 0 (0.25); expert 1
        // and 3 get nothing.
        std::vector<std::int32_t> ids(std::size_t(T * K));
        std::vector<float> wts(std::size_t(T * K));
        for (std::int64_t t = 0; t < T; ++t) {
            ids[std::size_t(t * K)] = 2, wts[std::size_t(t * K)] = 0.75f;
            ids[std::size_t(t * K + 1)] = t % 2 ? -1 : 0, wts[std::size_t(t * K + 1)] = 0.25f;
        }
        MatrixView<float const> const x(m.x.data(), T, d);
        MatrixView<std::int32_t const> const idv(ids.data(), T, K);
        MatrixView<float const> const wv(wts.data(), T, K);
        std::vector<float> y1(std::size_t(T * d)), y2(std::size_t(T * d));
        layer.forward_routed(x, idv, wv, MatrixView<float>(y1.data(), T, d));
        smoe::DefaultThreadPool pool(2);
        layer.set_thread_pool(pool);
        layer.forward_routed(x, idv, wv, MatrixView<float>(y2.data(), T, d));
        CHECK(std::memcmp(y1.data(), y2.data(), y1.size() * sizeof(float)) == 0);
        auto const ex = m.experts();
        for (std::int64_t t = 0; t < T; ++t) {
            auto const a = smoe::reference::swiglu_expert(ex, 2, m.x.data() + t * d);
            auto const b = smoe::reference::swiglu_expert(ex, 0, m.x.data() + t * d);
            double err = 0, mag = 0;
            for (std::int64_t i = 0; i < d; ++i) {
                double const r = 0.75 * a[std::size_t(i)] + (t % 2 ? 0.0 : 0.25 * b[std::size_t(i)]);
                err = std::max(err, std::fabs(double(y2[std::size_t(t * d + i)]) - r));
                mag = std::max(mag, std::fabs(r));
            }
            INFO("token " << t);
            // The fp32 path: its FMA chains. The dot path rounds x and h to bf16 first (test_bf16_dot.cpp's
            // oracle bound, measured 3e-3 .. 9e-3 per token).
            CHECK(err <= (dot == smoe::expert::Bf16Dot::off ? 2e-5 : 1.5e-2) * mag);
        }
        REQUIRE(layer.experts().bf16_dot() == dot);
    }
}

TEST_CASE("the default pool runs every item exactly once, call after call", "[threads][pool]") {
    smoe::DefaultThreadPool pool(2);
    CHECK(pool.num_threads() == 2);
    std::vector<std::atomic<int>> hits(1000);
    for (int call = 0; call < 200; ++call) {
        std::int64_t const n = call % 7 == 0 ? 0 : call * 5;
        pool.parallel_for(n, [&](std::int64_t i) { hits[std::size_t(i)].fetch_add(1, std::memory_order_relaxed); });
        for (std::int64_t i = 0; i < 1000; ++i) {
            int const want = i < n ? 1 : 0;
            if (hits[std::size_t(i)].load() != want) FAIL("call " << call << ", item " << i << ": " << hits[std::size_t(i)].load() << " runs");
            hits[std::size_t(i)].store(0);
        }
    }
    smoe::DefaultThreadPool one(1);
    std::int64_t sum = 0;
    one.parallel_for(10, [&](std::int64_t i) { sum += i; });
    CHECK(sum == 45);
    CHECK_THROWS_WITH(smoe::DefaultThreadPool(0), Catch::Matchers::Contains("'num_threads' = 0"));
    CHECK_THROWS_WITH(smoe::DefaultThreadPool(smoe::limits::kMaxThreads + 1),
                      Catch::Matchers::Contains("'num_threads' = 4097") && Catch::Matchers::Contains("kMaxThreads"));
}
