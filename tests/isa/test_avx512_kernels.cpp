// The AVX-512 packed tiles (kernels/cpu/gemm_packed_avx512.hpp). The kernels run in
// avx512_kernels.cpp, built with AVX-512 flags (xsimd::default_arch is avx512bw there); this file,
// with ordinary flags, holds the cases and the references; the runner (isa_main.cpp) skips the
// executable on a CPU without AVX-512BW.
//
//  * raw accumulators: the 512-bit tiles give the bits of the AVX2 tiles and of the scalar std::fma
//    chain for every format, every row count (full 8-row tiles and every leftover count), K and panel
//    range (rule 3: one FMA chain per column, in k order);
//  * SwiGLU<W> end to end: the AVX-512 arch gives the bits of the AVX2 arch (same epilogues) and stays
//    within experts.md §9's bound of the fp64 oracle.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <type_traits>
#include <vector>

#include <catch2/catch.hpp>

#include "common/data.hpp"
#include "isa/avx512_kernels.hpp"
#include "smoe/kernels/reference/swiglu.hpp"
#include "smoe/smoe.hpp"

bool smoe_isa_supported(char const** needs) {
    *needs = "AVX-512F/BW";
#if defined(__x86_64__) || defined(__i386__)
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw");
#else
    return false;
#endif
}

namespace {

using smoe::MatrixView;
namespace cpu = smoe::kernels::cpu;
using Avx2 = xsimd::fma3<xsimd::avx2>;
using Scalar = xsimd::sse2;  // no packed SIMD kernel: the std::fma path
static_assert(cpu::kPackedAvx2<Avx2>, "the reference tiles need an AVX2+FMA build (x86-64-v3)");

// Keeps every finished tile's raw sums: C[row, 16 p + c].
struct Capture {
    MatrixView<float> c;
#if SMOE_PACKED_AVX2
    void store(std::int64_t i, std::int64_t p, __m256 lo, __m256 hi) {
        _mm256_storeu_ps(c.row(i) + p * 16, lo);
        _mm256_storeu_ps(c.row(i) + p * 16 + 8, hi);
    }
#endif
    void store(std::int64_t i, std::int64_t p, float const* v) { std::memcpy(c.row(i) + p * 16, v, 16 * sizeof(float)); }
};

template <class W>
W weight_of(float v) {
    if constexpr (std::is_same_v<W, float>)
        return v;
    else if constexpr (std::is_same_v<W, smoe::bf16>)
        return smoe::to_bf16(v);
    else
        return static_cast<std::int8_t>(std::clamp(std::lround(v * 40.0f), -127L, 127L));
}

struct Avx512 {};  // the 512-bit tiles, in avx512_kernels.cpp

// C[M, 16 * panels] over rows [0, M) and panels [p0, p1) with Arch; NaN where no tile wrote.
template <class Arch, class W>
std::vector<float> gemm(std::vector<float> const& a, std::int64_t M, std::int64_t K, std::vector<W> const& panels, std::int64_t P,
                        std::int64_t p0, std::int64_t p1) {
    std::vector<float> c(std::size_t(M * P * 16), std::numeric_limits<float>::quiet_NaN());
    if constexpr (std::is_same_v<Arch, Avx512>) {
        smoe_isa::gemm_avx512(a.data(), M, K, panels.data(), P, p0, p1, c.data());
    } else {
        Capture epi{MatrixView<float>(c.data(), M, P * 16)};
        cpu::gemm_packed(Arch{}, MatrixView<float const>(a.data(), M, K), panels.data(), p0, p1, epi);
    }
    return c;
}

bool same_bits(std::vector<float> const& x, std::vector<float> const& y) {
    return x.size() == y.size() && std::memcmp(x.data(), y.data(), x.size() * sizeof(float)) == 0;
}

}  // namespace

// Fails when the AVX-512 object lacks the workaround a compiler needs (cmake/smoe_avx512_codegen.cmake).
TEST_CASE("constant vectors keep their values in the object built with AVX-512 flags", "[avx512][toolchain]") {
    CHECK(smoe_isa::wrong_constant_values_avx512() == 0);
}

TEMPLATE_TEST_CASE("AVX-512 packed tiles give the bits of the AVX2 and scalar tiles", "[avx512][packed][rule3]", float, smoe::bf16,
                   std::int8_t) {
    using W = TestType;
    REQUIRE(smoe_isa::avx512_tiles_selected());
    std::mt19937_64 rng(101);
    for (std::int64_t K : {1, 2, 7, 16, 33, 130}) {
        for (std::int64_t P : {1, 4, 7, 13}) {
            // Panels of random weights (the layout is irrelevant here: every kernel reads the same slots).
            auto const wf = smoe_test::normal(rng, std::size_t(P * K * 16), 0.5);
            std::vector<W> panels;
            for (float v : wf) panels.push_back(weight_of<W>(v));
            for (std::int64_t M : {1, 2, 3, 4, 5, 6, 7, 8, 9, 12, 15, 16, 17, 23, 40}) {
                auto const a = smoe_test::normal(rng, std::size_t(M * K), 1.0);
                INFO("K " << K << ", panels " << P << ", M " << M);
                auto const c512 = gemm<Avx512>(a, M, K, panels, P, 0, P);
                auto const c256 = gemm<Avx2>(a, M, K, panels, P, 0, P);
                auto const c1 = gemm<Scalar>(a, M, K, panels, P, 0, P);
                CHECK(same_bits(c512, c256));
                CHECK(same_bits(c512, c1));
                for (float v : c512) REQUIRE(std::isfinite(v));
                // A panel range that starts inside a 6-panel group writes only its own columns.
                if (P > 2) {
                    auto const part = gemm<Avx512>(a, M, K, panels, P, 1, P - 1);
                    for (std::int64_t i = 0; i < M; ++i)
                        for (std::int64_t col = 0; col < P * 16; ++col) {
                            float const v = part[std::size_t(i * P * 16 + col)];
                            if (col < 16 || col >= (P - 1) * 16)
                                REQUIRE(std::isnan(v));
                            else
                                REQUIRE(std::memcmp(&v, &c512[std::size_t(i * P * 16 + col)], sizeof v) == 0);
                        }
                }
            }
        }
    }
}

TEMPLATE_TEST_CASE("SwiGLU<W> on AVX-512 gives the AVX2 bits and meets the fp64 oracle", "[avx512][swiglu]", float, smoe::bf16,
                   std::int8_t) {
    using W = TestType;
    using smoe::expert::SwiGLU;
    using smoe::expert::SwiGLUWeights;
    std::mt19937_64 rng(103);
    struct Shape {
        std::int64_t d, f;
    };
    for (Shape s : {Shape{1, 1}, Shape{17, 9}, Shape{33, 40}, Shape{100, 70}}) {
        std::int64_t const d = s.d, f = s.f, E = 2;
        auto const w1f = smoe_test::normal(rng, std::size_t(E * f * d), 1.0 / std::sqrt(double(d)));
        auto const w3f = smoe_test::normal(rng, std::size_t(E * f * d), 1.0 / std::sqrt(double(d)));
        auto const w2f = smoe_test::normal(rng, std::size_t(E * d * f), 1.0 / std::sqrt(double(f)));
        smoe::expert::SwiGLUConfig const cfg{d, f, E, smoe::expert::Bf16Dot::off};  // the fp32 path on every CPU
        std::vector<W> w1, w3, w2;
        std::vector<float> s1, s3, s2;
        auto convert = [](std::vector<float> const& src, std::vector<W>& q, std::vector<float>& sc, std::int64_t rows, std::int64_t cols) {
            if constexpr (std::is_same_v<W, std::int8_t>) {
                auto r = smoe::quantize_int8_per_channel(MatrixView<float const>(src.data(), rows, cols));
                q = std::move(r.q);
                sc = std::move(r.s);
            } else {
                for (float v : src) q.push_back(weight_of<W>(v));
            }
        };
        convert(w1f, w1, s1, E * f, d);
        convert(w3f, w3, s3, E * f, d);
        convert(w2f, w2, s2, E * d, f);
        SwiGLUWeights<W> weights;
        if constexpr (std::is_same_v<W, std::int8_t>)
            weights = SwiGLUWeights<W>::dense(w1.data(), s1.data(), w3.data(), s3.data(), w2.data(), s2.data(), cfg);
        else
            weights = SwiGLUWeights<W>::dense(w1.data(), w3.data(), w2.data(), cfg);
        SwiGLU<W> const ex(cfg, weights);
        for (std::int64_t M : {1, 3, 8, 13, 70}) {
            auto const x = smoe_test::normal(rng, std::size_t(M * d), 1.0);
            auto const rw = smoe_test::normal(rng, std::size_t(M), 1.0);
            auto run = [&](auto arch) {
                std::vector<float> out(std::size_t(M * d), std::numeric_limits<float>::quiet_NaN());
                if constexpr (std::is_same_v<decltype(arch), Avx512>) {
                    smoe_isa::swiglu_avx512(ex, 1, x.data(), M, rw.data(), out.data());
                } else {
                    smoe::WorkspaceBuffer buf(ex.workspace_size(M));
                    smoe::Workspace ws = buf.workspace();
                    ex.run(arch, 1, MatrixView<float const>(x.data(), M, d), std::span<float const>(rw.data(), std::size_t(M)),
                           MatrixView<float>(out.data(), M, d), ws);
                }
                return out;
            };
            INFO("d " << d << ", f " << f << ", M " << M);
            auto const y = run(Avx512{});
            CHECK(same_bits(y, run(Avx2{})));
            for (std::int64_t r = 0; r < M; ++r) {
                auto const ref = smoe::reference::swiglu_expert(weights, 1, x.data() + r * d);
                double num = 0, den = 0;
                for (std::int64_t i = 0; i < d; ++i) {
                    double const want = double(rw[std::size_t(r)]) * ref[std::size_t(i)];
                    num = std::max(num, std::fabs(double(y[std::size_t(r * d + i)]) - want));
                    den = std::max(den, std::fabs(want));
                }
                CHECK(num <= 2e-5 * den + 1e-30);
            }
        }
    }
}
