// SwiGLU<W> on packed panels, for W = float, bf16 and int8, against the fp64 oracle on the same
// widened weights (experts.md §9 bounds) and for the bit-for-bit promises of §1 rule 3: a row alone
// equals the same row inside any batch, and any split of the panels gives the same bits.

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include <catch2/catch.hpp>

#include "common/data.hpp"
#include "smoe/kernels/reference/swiglu.hpp"
#include "smoe/smoe.hpp"

using smoe::MatrixView;
using smoe::expert::SwiGLU;
using smoe::expert::SwiGLUConfig;
using smoe::expert::SwiGLUWeights;

namespace {

// Stacked weights of one format, made from fp32 values: bf16 by RNE, int8 by smoe's quantiser per
// expert matrix.
template <class W>
struct ExpertData {
    SwiGLUConfig cfg;
    std::vector<W> w1, w3, w2, gate_up;
    std::vector<float> s1, s3, s2, s_gate_up;

    ExpertData(SwiGLUConfig c, std::vector<float> const& f1, std::vector<float> const& f3, std::vector<float> const& f2) : cfg(c) {
        // These tests hold bf16 weights to the fp32 path (widened weights, fp32 FMA: the 2e-5 bound and
        // bit equality with fp32); the AVX512-BF16 path has its own (tests/test_bf16_dot.cpp).
        cfg.bf16_dot = smoe::expert::Bf16Dot::off;
        auto const E = c.num_experts, f = c.intermediate_size, d = c.hidden_size;
        convert(f1, w1, s1, E * f, d);
        convert(f3, w3, s3, E * f, d);
        convert(f2, w2, s2, E * d, f);
        for (std::int64_t e = 0; e < E; ++e) {
            gate_up.insert(gate_up.end(), w1.begin() + e * f * d, w1.begin() + (e + 1) * f * d);
            gate_up.insert(gate_up.end(), w3.begin() + e * f * d, w3.begin() + (e + 1) * f * d);
            if constexpr (std::is_same_v<W, std::int8_t>) {
                s_gate_up.insert(s_gate_up.end(), s1.begin() + e * f, s1.begin() + (e + 1) * f);
                s_gate_up.insert(s_gate_up.end(), s3.begin() + e * f, s3.begin() + (e + 1) * f);
            }
        }
    }
    static void convert(std::vector<float> const& src, std::vector<W>& q, std::vector<float>& s, std::int64_t rows, std::int64_t cols) {
        if constexpr (std::is_same_v<W, float>) {
            q = src;
        } else if constexpr (std::is_same_v<W, smoe::bf16>) {
            for (float v : src) q.push_back(smoe::to_bf16(v));
        } else {
            auto r = smoe::quantize_int8_per_channel(MatrixView<float const>(src.data(), rows, cols));
            q = std::move(r.q);
            s = std::move(r.s);
        }
    }
    SwiGLUWeights<W> dense() const {
        if constexpr (std::is_same_v<W, std::int8_t>)
            return SwiGLUWeights<W>::dense(w1.data(), s1.data(), w3.data(), s3.data(), w2.data(), s2.data(), cfg);
        else
            return SwiGLUWeights<W>::dense(w1.data(), w3.data(), w2.data(), cfg);
    }
    SwiGLUWeights<W> fused() const {
        if constexpr (std::is_same_v<W, std::int8_t>)
            return SwiGLUWeights<W>::fused(gate_up.data(), s_gate_up.data(), w2.data(), s2.data(), cfg);
        else
            return SwiGLUWeights<W>::fused(gate_up.data(), w2.data(), cfg);
    }
};

template <class W>
ExpertData<W> random_experts(std::mt19937_64& rng, std::int64_t d, std::int64_t f, std::int64_t E) {
    // sd 1/sqrt(in) keeps g, u and the output near 1, so the relative bound is meaningful.
    auto const a = smoe_test::normal(rng, std::size_t(E * f * d), 1.0 / std::sqrt(double(d)));
    auto const b = smoe_test::normal(rng, std::size_t(E * f * d), 1.0 / std::sqrt(double(d)));
    auto const c = smoe_test::normal(rng, std::size_t(E * d * f), 1.0 / std::sqrt(double(f)));
    return ExpertData<W>({d, f, E}, a, b, c);
}

template <class W, class Arch>
std::vector<float> run_rows(Arch arch, SwiGLU<W> const& ex, std::int64_t e, float const* x, std::int64_t M,
                            float const* row_w) {
    std::int64_t const d = ex.hidden_size();
    std::vector<float> out(std::size_t(M * d), std::numeric_limits<float>::quiet_NaN());
    smoe::WorkspaceBuffer buf(ex.workspace_size(M));
    smoe::Workspace ws = buf.workspace();
    ex.run(arch, e, MatrixView<float const>(x, M, d), std::span<float const>(row_w, std::size_t(M)),
           MatrixView<float>(out.data(), M, d), ws);
    return out;
}

// experts.md §9: per token, max_i |y_i - r_i| / max_i |r_i| against fp64 on the same widened weights.
template <class W>
void check_oracle(SwiGLUWeights<W> const& w, std::int64_t e, float const* x, float row_w, float const* y, double bound) {
    auto const r = smoe::reference::swiglu_expert(w, e, x);
    double num = 0, den = 0;
    for (std::size_t i = 0; i < r.size(); ++i) {
        num = std::max(num, std::fabs(double(y[i]) - double(row_w) * r[i]));
        den = std::max(den, std::fabs(double(row_w) * r[i]));
        REQUIRE(std::isfinite(y[i]));
    }
    CHECK(num <= bound * den + 1e-30);
}

bool same_bits(float const* a, float const* b, std::int64_t n) { return std::memcmp(a, b, std::size_t(n) * sizeof(float)) == 0; }

}  // namespace

TEMPLATE_TEST_CASE("SwiGLU<W> matches the fp64 oracle on random shapes and row counts", "[expert][swiglu][formats]", float,
                   smoe::bf16, std::int8_t) {
    using W = TestType;
    std::mt19937_64 rng(7);
    struct Shape {
        std::int64_t d, f;
    };
    for (Shape s : {Shape{1, 1}, Shape{5, 3}, Shape{16, 8}, Shape{17, 9}, Shape{33, 40}, Shape{70, 23}}) {
        auto const data = random_experts<W>(rng, s.d, s.f, 3);
        SwiGLU<W> const ex(data.cfg, data.dense());
        for (std::int64_t M : {0, 1, 2, 3, 4, 5, 6, 7, 17, 70}) {
            auto const x = smoe_test::normal(rng, std::size_t(M * s.d), 1.0);
            auto const rw = smoe_test::normal(rng, std::size_t(M), 1.0);
            smoe_test::for_each_arch([&](auto arch) {
                for (std::int64_t e : {0, 2}) {
                    INFO("d " << s.d << ", f " << s.f << ", M " << M << ", expert " << e << ", arch " << arch.name());
                    auto const y = run_rows(arch, ex, e, x.data(), M, rw.data());
                    for (std::int64_t r = 0; r < M; ++r)
                        check_oracle(data.dense(), e, x.data() + r * s.d, rw[std::size_t(r)], y.data() + r * s.d, 2e-5);
                }
            });
        }
    }
}

TEMPLATE_TEST_CASE("SwiGLU<W> gives a row the same bits alone and inside any batch", "[expert][swiglu][rule3]", float,
                   smoe::bf16, std::int8_t) {
    using W = TestType;
    std::mt19937_64 rng(11);
    auto const data = random_experts<W>(rng, 37, 29, 2);
    SwiGLU<W> const ex(data.cfg, data.dense());
    std::int64_t const d = 37, M = 75;  // > kRowBlock: two row blocks, full 6-row tiles and leftovers
    auto const x = smoe_test::normal(rng, std::size_t(M * d), 1.0);
    auto const rw = smoe_test::normal(rng, std::size_t(M), 1.0);
    smoe_test::for_each_arch([&](auto arch) {
        INFO("arch " << arch.name());
        auto const all = run_rows(arch, ex, 1, x.data(), M, rw.data());
        for (std::int64_t r = 0; r < M; ++r) {
            INFO("row " << r);
            auto const alone = run_rows(arch, ex, 1, x.data() + r * d, 1, rw.data() + r);
            CHECK(same_bits(alone.data(), all.data() + r * d, d));
        }
        // Every batch size from 2 to 13 starting at row 3: each takes a different mix of tiles.
        for (std::int64_t m = 2; m <= 13; ++m) {
            auto const part = run_rows(arch, ex, 1, x.data() + 3 * d, m, rw.data() + 3);
            INFO("batch of " << m);
            CHECK(same_bits(part.data(), all.data() + 3 * d, m * d));
        }
    });
}

TEMPLATE_TEST_CASE("SwiGLU<W> phases split over panels give the same bits as one call", "[expert][swiglu][rule3]", float,
                   smoe::bf16, std::int8_t) {
    using W = TestType;
    std::mt19937_64 rng(13);
    auto const data = random_experts<W>(rng, 50, 45, 1);
    SwiGLU<W> const ex(data.cfg, data.dense());
    std::int64_t const d = 50, M = 9, hs = ex.hidden_stride();
    REQUIRE(hs == 48);
    REQUIRE(ex.gate_up_panels() == 6);
    REQUIRE(ex.down_panels() == 4);
    auto const x = smoe_test::normal(rng, std::size_t(M * d), 1.0);
    auto const rw = smoe_test::normal(rng, std::size_t(M), 1.0);
    auto const arch = xsimd::default_arch{};
    auto const whole = run_rows(arch, ex, 0, x.data(), M, rw.data());
    std::vector<float> h(std::size_t(M * hs)), out(std::size_t(M * d));
    MatrixView<float const> const xv(x.data(), M, d);
    MatrixView<float> const hv(h.data(), M, hs), ov(out.data(), M, d);
    for (std::int64_t p : {5, 1, 0, 3, 2, 4}) ex.run_gate_up(arch, 0, xv, hv, p, p + 1);
    for (std::int64_t p : {3, 0, 2, 1}) ex.run_down(arch, 0, MatrixView<float const>(hv), rw, ov, p, p + 1);
    CHECK(same_bits(out.data(), whole.data(), M * d));
}

TEMPLATE_TEST_CASE("SwiGLU<W> with a fused gate_up view gives the bits of separate W1 and W3", "[expert][swiglu][fused]", float,
                   smoe::bf16, std::int8_t) {
    using W = TestType;
    std::mt19937_64 rng(17);
    auto const data = random_experts<W>(rng, 24, 19, 3);
    SwiGLU<W> const a(data.cfg, data.dense()), b(data.cfg, data.fused());
    std::int64_t const M = 8, d = 24;
    auto const x = smoe_test::normal(rng, std::size_t(M * d), 1.0);
    std::vector<float> const rw(std::size_t(M), 0.75f);
    for (std::int64_t e = 0; e < 3; ++e) {
        auto const ya = run_rows(xsimd::default_arch{}, a, e, x.data(), M, rw.data());
        auto const yb = run_rows(xsimd::default_arch{}, b, e, x.data(), M, rw.data());
        CHECK(same_bits(ya.data(), yb.data(), M * d));
    }
}

TEMPLATE_TEST_CASE("SwiGLU<W> reaches the silu limits at g = +-90 without inf or NaN", "[expert][swiglu][silu]", float,
                   smoe::bf16, std::int8_t) {
    using W = TestType;
    // d = 1, x = 1: g = W1 = [90, -90, 1], u = 1, out = W2 h with W2 = identity-like [3, 3].
    std::vector<float> const w1 = {90, -90, 1}, w3 = {1, 1, 1}, w2 = {1, 0, 0};
    ExpertData<W> const data({1, 3, 1}, w1, w3, w2);
    SwiGLU<W> const ex(data.cfg, data.dense());
    std::vector<float> const x = {1.0f}, rw = {1.0f};
    smoe_test::for_each_arch([&](auto arch) {
        INFO("arch " << arch.name());
        auto const y = run_rows(arch, ex, 0, x.data(), 1, rw.data());
        REQUIRE(std::isfinite(y[0]));
        check_oracle(data.dense(), 0, x.data(), 1.0f, y.data(), 2e-5);
    });
    // silu(-90) alone: only the second unit reaches the output.
    std::vector<float> const w2n = {0, 1, 0};
    ExpertData<W> const neg({1, 3, 1}, w1, w3, w2n);
    SwiGLU<W> const exn(neg.cfg, neg.dense());
    auto const yn = run_rows(xsimd::default_arch{}, exn, 0, x.data(), 1, rw.data());
    CHECK(yn[0] == 0.0f);
}

TEST_CASE("SwiGLU<bf16> and SwiGLU<int8> on values exact in the format give the bits of SwiGLU<float>", "[expert][swiglu][formats]") {
    // Weights that are multiples of 1/64 in [-1, 1]: exact in bf16; with a row amax of 127/64 also
    // exactly s · q for s = 1/64.
    std::mt19937_64 rng(19);
    std::int64_t const d = 21, f = 13, E = 2, M = 5;
    auto grid = [&](std::int64_t rows, std::int64_t cols) {
        auto v = smoe_test::normal(rng, std::size_t(rows * cols), 0.5, 1.0 / 64);
        for (std::int64_t r = 0; r < rows; ++r) {
            for (std::int64_t c = 0; c < cols; ++c) v[std::size_t(r * cols + c)] = std::clamp(v[std::size_t(r * cols + c)], -1.0f, 1.0f);
            v[std::size_t(r * cols)] = 127.0f / 64;  // amax 127/64 gives s = 1/64 exactly
        }
        return v;
    };
    auto const a = grid(E * f, d), b = grid(E * f, d), c = grid(E * d, f);
    ExpertData<float> const f32({d, f, E}, a, b, c);
    ExpertData<smoe::bf16> const b16({d, f, E}, a, b, c);
    ExpertData<std::int8_t> const i8({d, f, E}, a, b, c);
    REQUIRE(i8.s1[0] == 1.0f / 64);
    SwiGLU<float> const ef(f32.cfg, f32.dense());
    SwiGLU<smoe::bf16> const eb(b16.cfg, b16.dense());
    SwiGLU<std::int8_t> const ei(i8.cfg, i8.dense());
    auto const x = smoe_test::normal(rng, std::size_t(M * d), 1.0);
    std::vector<float> const rw(std::size_t(M), 0.5f);
    auto const arch = xsimd::default_arch{};
    auto const yf = run_rows(arch, ef, 1, x.data(), M, rw.data());
    CHECK(same_bits(run_rows(arch, eb, 1, x.data(), M, rw.data()).data(), yf.data(), M * d));
    // int8 factors s out of the sum: Σ q·x · s equals Σ (s·q)·x exactly because s is a power of two.
    CHECK(same_bits(run_rows(arch, ei, 1, x.data(), M, rw.data()).data(), yf.data(), M * d));
}

TEST_CASE("SwiGLU<W> reports the format's byte size and rejects bad scales", "[expert][swiglu][formats]") {
    std::mt19937_64 rng(23);
    auto const i8 = random_experts<std::int8_t>(rng, 8, 4, 2);
    SwiGLU<std::int8_t> const ei(i8.cfg, i8.dense());
    CHECK(ei.weight_bytes(0) == 3.0 * 8 * 4 + 4.0 * (2 * 4 + 8));
    CHECK(ei.flops_per_row() == 6.0 * 8 * 4);
    auto const b16 = random_experts<smoe::bf16>(rng, 8, 4, 2);
    CHECK(SwiGLU<smoe::bf16>(b16.cfg, b16.dense()).weight_bytes(1) == 3.0 * 8 * 4 * 2);
    auto bad = i8;
    bad.s2[3] = std::numeric_limits<float>::quiet_NaN();
    CHECK_THROWS_WITH((SwiGLU<std::int8_t>(bad.cfg, bad.dense())), Catch::Matchers::Contains("'s2' = nan at expert 0, channel 3"));
    auto w = i8.dense();
    w.s1 = MatrixView<float const>(i8.s1.data(), 2, 3);
    CHECK_THROWS_WITH((SwiGLU<std::int8_t>(i8.cfg, w)), Catch::Matchers::Contains("'s1' = [2, 3]"));
}

TEMPLATE_TEST_CASE("SwiGLU<W> over K longer than one widened block keeps the oracle and the row bits", "[expert][swiglu][rule3]",
                   float, smoe::bf16, std::int8_t) {
    // d = 520 and f = 264 cross the prefill path's 256-step blocks (int8 widens a panel block by block,
    // its 6-row tiles resuming their chains); 40 rows give it 6 full tiles, the leftovers and a row
    // alone take the other tiles.
    using W = TestType;
    std::mt19937_64 rng(41);
    std::int64_t const d = 520, f = 264, M = 40;
    auto const data = random_experts<W>(rng, d, f, 1);
    SwiGLU<W> const ex(data.cfg, data.dense());
    auto const x = smoe_test::normal(rng, std::size_t(M * d), 1.0);
    auto const rw = smoe_test::normal(rng, std::size_t(M), 1.0);
    auto const arch = xsimd::default_arch{};
    auto const all = run_rows(arch, ex, 0, x.data(), M, rw.data());
    for (std::int64_t r = 0; r < M; ++r) {
        INFO("row " << r);
        check_oracle(data.dense(), 0, x.data() + r * d, rw[std::size_t(r)], all.data() + r * d, 2e-5);
        if (r % 7 == 0) {
            auto const alone = run_rows(arch, ex, 0, x.data() + r * d, 1, rw.data() + r);
            CHECK(same_bits(alone.data(), all.data() + r * d, d));
        }
    }
}
