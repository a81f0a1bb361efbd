// CPU kernels against plain double loops and the scalar oracle: the dot-form GEMM, SiLU·up, the
// finite check, the counting-sort dispatch and the slot-order combine, on every tested ISA.

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <vector>

#include <catch2/catch.hpp>

#include "common/data.hpp"
#include "smoe/kernels/cpu/activation.hpp"
#include "smoe/kernels/cpu/combine.hpp"
#include "smoe/kernels/cpu/dispatch.hpp"
#include "smoe/kernels/cpu/finite_check.hpp"
#include "smoe/kernels/cpu/gemm_nt.hpp"
#include "smoe/kernels/reference/dispatch.hpp"

using smoe::MatrixView;
namespace cpu = smoe::kernels::cpu;

TEST_CASE("gemm_nt matches a double-precision product on shapes that are not multiples of the SIMD width",
          "[kernels][gemm]") {
    std::mt19937_64 rng(11);
    std::vector<std::int64_t> const Ms = {0, 1, 2, 3, 4, 5, 7, 17, 64};
    std::vector<std::int64_t> const Ns = {1, 2, 3, 4, 5, 7, 9, 33};
    std::vector<std::int64_t> const Ks = {1, 3, 4, 7, 8, 9, 15, 16, 17, 31, 100, 257, 1031};
    smoe_test::for_each_arch([&](auto arch) {
        INFO("arch " << decltype(arch)::name());
        for (auto M : Ms)
            for (auto N : Ns)
                for (auto K : Ks) {
                    INFO("M " << M << ", N " << N << ", K " << K);
                    // Strided views: A and B are blocks of wider matrices, C a block of a wider output.
                    std::int64_t const lda = K + 3, ldb = K + 5, ldc = N + 2;
                    auto a = smoe_test::normal(rng, static_cast<std::size_t>(std::max<std::int64_t>(M, 1) * lda), 1.0);
                    auto b = smoe_test::normal(rng, static_cast<std::size_t>(N * ldb), 0.05);
                    auto scale = smoe_test::normal(rng, static_cast<std::size_t>(std::max<std::int64_t>(M, 1)), 1.0);
                    std::vector<float> c(static_cast<std::size_t>(std::max<std::int64_t>(M, 1) * ldc), -7.0f);
                    cpu::gemm_nt(arch, MatrixView<float const>(a.data(), M, K, lda), MatrixView<float const>(b.data(), N, K, ldb),
                                 MatrixView<float>(c.data(), M, N, ldc), std::span<float const>(scale.data(), static_cast<std::size_t>(M)));
                    for (std::int64_t m = 0; m < M; ++m) {
                        for (std::int64_t n = 0; n < N; ++n) {
                            double acc = 0, mag = 0;
                            for (std::int64_t k = 0; k < K; ++k) {
                                acc += double(a[m * lda + k]) * b[n * ldb + k];
                                mag += std::fabs(double(a[m * lda + k]) * b[n * ldb + k]);
                            }
                            // Summation error bound with at least 4 lanes: K/4 + log2(16) + 2 fp32
                            // roundings of at most 2^-24 relative each, on Σ|a·b| (the sum itself may cancel).
                            double const bound = (double(K) / 4 + 6) * 0x1p-24 * mag * std::fabs(scale[m]) + 1e-30;
                            CHECK(std::fabs(c[m * ldc + n] - scale[m] * acc) <= bound);
                        }
                        for (std::int64_t n = N; n < ldc; ++n) CHECK(c[m * ldc + n] == -7.0f);  // padding untouched
                    }
                }
    });
}

TEST_CASE("gemm_nt computes every row the same bits alone and inside any batch", "[kernels][gemm][determinism]") {
    std::mt19937_64 rng(12);
    std::int64_t const M = 23, N = 13, K = 203;
    auto a = smoe_test::normal(rng, M * K, 1.0);
    auto b = smoe_test::normal(rng, N * K, 0.05);
    smoe_test::for_each_arch([&](auto arch) {
        INFO("arch " << decltype(arch)::name());
        std::vector<float> all(M * N), one(N);
        cpu::gemm_nt(arch, MatrixView<float const>(a.data(), M, K), MatrixView<float const>(b.data(), N, K), MatrixView<float>(all.data(), M, N));
        for (std::int64_t m = 0; m < M; ++m) {
            cpu::gemm_nt(arch, MatrixView<float const>(a.data() + m * K, 1, K), MatrixView<float const>(b.data(), N, K),
                         MatrixView<float>(one.data(), 1, N));
            CHECK(std::memcmp(one.data(), all.data() + m * N, N * sizeof(float)) == 0);
        }
        // A batch that starts at another row puts each row in another register tile.
        std::vector<float> shifted((M - 2) * N);
        cpu::gemm_nt(arch, MatrixView<float const>(a.data() + 2 * K, M - 2, K), MatrixView<float const>(b.data(), N, K),
                     MatrixView<float>(shifted.data(), M - 2, N));
        CHECK(std::memcmp(shifted.data(), all.data() + 2 * N, (M - 2) * N * sizeof(float)) == 0);
    });
}

TEST_CASE("silu_mul follows experts.md including exp overflow at g = -90", "[kernels][activation]") {
    std::vector<float> g = {-0.5f, 0.75f, 2.25f, 90.0f, -90.0f, 0.0f, -1e-3f, 17.0f, -17.0f, 3.0f, 1.25f};
    std::vector<float> u = {0.5f, 0.75f, -0.75f, 1.0f, 1.0f, 5.0f, 1.0f, 2.0f, 2.0f, -1.0f, 2.25f};
    smoe_test::for_each_arch([&](auto arch) {
        std::vector<float> h(g.size());
        cpu::silu_mul(arch, g.data(), u.data(), h.data(), static_cast<std::int64_t>(g.size()));
        for (std::size_t i = 0; i < g.size(); ++i) {
            double const ref = double(g[i]) / (1.0 + std::exp(-double(g[i]))) * u[i];
            INFO("g " << g[i]);
            CHECK(std::isfinite(h[i]));
            CHECK(h[i] == Approx(ref).epsilon(1e-6).margin(1e-35));
        }
        CHECK(h[0] == Approx(-0.09438517).epsilon(1e-6));  // experts.md §3, expert 0
        CHECK(h[3] == 90.0f);
        CHECK(std::fabs(h[4]) < 1e-30f);
        // The same input gives the same bits in the SIMD body and in the tail.
        std::vector<float> gg(19, 0.3f), uu(19, 1.7f), hh(19);
        cpu::silu_mul(arch, gg.data(), uu.data(), hh.data(), 19);
        for (float v : hh) CHECK(v == hh[0]);
    });
}

TEST_CASE("check_finite names the first non-finite entry in the SIMD body and in the tail", "[kernels][finite]") {
    using Catch::Matchers::Contains;
    smoe_test::for_each_arch([&](auto arch) {
        for (std::int64_t cols : {1, 3, 4, 8, 13, 33}) {
            for (std::int64_t bad = 0; bad < cols; bad += 3) {
                std::vector<float> m(static_cast<std::size_t>(3 * cols), 1.0f);
                MatrixView<float const> v(m.data(), 3, cols);
                CHECK_NOTHROW(cpu::check_finite(arch, v, "logits"));
                m[static_cast<std::size_t>(2 * cols + bad)] = std::numeric_limits<float>::infinity();
                m[static_cast<std::size_t>(1 * cols + bad)] = std::numeric_limits<float>::quiet_NaN();
                std::string const where = "token 1, expert " + std::to_string(bad);
                CHECK_THROWS_WITH(cpu::check_finite(arch, v, "logits"), Contains("'logits'") && Contains("nan") && Contains(where));
            }
        }
    });
}

TEST_CASE("the counting-sort dispatch builds the same CSR as the oracle", "[kernels][dispatch]") {
    std::mt19937_64 rng(13);
    for (int trial = 0; trial < 200; ++trial) {
        std::int64_t const E = 1 + static_cast<std::int64_t>(rng() % 20), K = 1 + static_cast<std::int64_t>(rng() % 6),
                           T = static_cast<std::int64_t>(rng() % 50), nulls = static_cast<std::int64_t>(rng() % 3);
        std::vector<std::int32_t> ids(static_cast<std::size_t>(T * K));
        std::vector<float> w = smoe_test::normal(rng, ids.size(), 1.0);
        for (std::int64_t t = 0; t < T; ++t) {
            // Distinct ids per row from E true and `nulls` null experts; a random tail of -1 padding.
            std::vector<std::int32_t> pool(static_cast<std::size_t>(E + nulls));
            for (std::size_t i = 0; i < pool.size(); ++i) pool[i] = static_cast<std::int32_t>(i);
            std::shuffle(pool.begin(), pool.end(), rng);
            std::int64_t const used = std::min<std::int64_t>(K, E + nulls) - static_cast<std::int64_t>(rng() % 2);
            for (std::int64_t j = 0; j < K; ++j) ids[t * K + j] = j < used ? pool[j] : -1;
        }
        auto const ref = smoe::reference::from_token_major(T, K, E, ids, w);
        std::vector<std::int32_t> off(E + 1), tok(T * K), slots(T * K), slot_rows(T * K);
        std::vector<float> ww(T * K);
        std::int64_t null_slots = -1;
        auto const nnz = cpu::build_expert_major(MatrixView<std::int32_t const>(ids.data(), T, K), MatrixView<float const>(w.data(), T, K), E,
                                                 {off, tok, ww, slots, slot_rows}, &null_slots);
        CHECK(null_slots == std::count_if(ids.begin(), ids.end(), [&](std::int32_t id) { return id >= E; }));
        INFO("trial " << trial);
        REQUIRE(nnz == static_cast<std::int64_t>(ref.token_ids.size()));
        CHECK(off == ref.offsets);
        CHECK(std::vector<std::int32_t>(tok.begin(), tok.begin() + nnz) == ref.token_ids);
        CHECK(std::vector<float>(ww.begin(), ww.begin() + nnz) == ref.weights);
        CHECK(std::vector<std::int32_t>(slots.begin(), slots.begin() + nnz) == ref.slots);
        for (std::int64_t s = 0; s < T * K; ++s) {
            if (ids[s] < 0 || ids[s] >= E) {
                CHECK(slot_rows[s] == -1);
            } else {
                CHECK(slots[slot_rows[s]] == s);
            }
        }
    }
}

TEST_CASE("combine sums slots in slot order and never reads a skipped slot", "[kernels][combine]") {
    std::int64_t const d = 11, K = 3;
    // Rows of slot_out: 0 and 1 hold values, 2 holds NaN and is referenced by no slot.
    std::vector<float> out(3 * d);
    for (std::int64_t i = 0; i < d; ++i) {
        out[i] = 1.0f + float(i);
        out[d + i] = 0.5f;
        out[2 * d + i] = std::numeric_limits<float>::quiet_NaN();
    }
    // token 0: rows 1, 0 then a skipped slot; token 1: no dispatched slot; token 2: row 0 only.
    std::vector<std::int32_t> const slot_rows = {1, 0, -1, -1, -1, -1, -1, 0, -1};
    smoe_test::for_each_arch([&](auto arch) {
        std::vector<float> y(3 * d, 42.0f);
        cpu::combine_slots(arch, MatrixView<float const>(out.data(), 3, d), slot_rows, K, MatrixView<float>(y.data(), 3, d));
        for (std::int64_t i = 0; i < d; ++i) {
            CHECK(y[i] == 0.5f + (1.0f + float(i)));
            CHECK(y[d + i] == 0.0f);
            CHECK(y[2 * d + i] == 1.0f + float(i));
        }
    });
}
