// The vdpbf16ps kernel of SwiGLU<bf16> (kernels/cpu/bf16_dot.hpp, Bf16DotNative) against its scalar
// emulation (tests/test_bf16_dot.cpp checks the emulation against the scalar model and the oracle),
// bit for bit: activation rounding, tile driver, every tile shape, and values that reach the DAZ/FTZ
// rules. Built with the project's usual flags: the kernel is compiled by target attribute. The runner
// (isa_main.cpp) skips the executable on a CPU without AVX512-BF16.

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <vector>

#include <catch2/catch.hpp>

#include "common/data.hpp"
#include "smoe/kernels/cpu/bf16_dot.hpp"
#include "smoe/smoe.hpp"

bool smoe_isa_supported(char const** needs) {
    *needs = "AVX512-BF16 (with AVX-512F/BW/VL)";
    return smoe::kernels::cpu::cpu_has_avx512_bf16();
}

using smoe::bf16;
using smoe::MatrixView;
namespace cpu = smoe::kernels::cpu;

namespace {

struct Capture {
    MatrixView<float> c;
    void store(std::int64_t i, std::int64_t p, float const* v) { std::memcpy(c.row(i) + p * 16, v, 16 * sizeof(float)); }
};

bool same_bits(std::vector<float> const& a, std::vector<float> const& b) {
    return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

std::vector<float> gemm(cpu::Bf16DotKernel kernel, std::vector<float> const& a, std::int64_t M, std::int64_t K,
                        std::vector<bf16> const& panels, std::int64_t P, std::int64_t p0, std::int64_t p1) {
    std::vector<float> c(std::size_t(M * P * 16), std::numeric_limits<float>::quiet_NaN());
    Capture epi{MatrixView<float>(c.data(), M, P * 16)};
    cpu::gemm_bf16_dot(xsimd::default_arch{}, kernel, MatrixView<float const>(a.data(), M, K), panels.data(), p0, p1, epi);
    return c;
}

std::vector<bf16> random_panels(std::mt19937_64& rng, std::int64_t P, std::int64_t K, double sd) {
    std::vector<bf16> panels;
    for (float v : smoe_test::normal(rng, std::size_t(P * cpu::kpair_panel_elems(K)), sd)) panels.push_back(smoe::to_bf16(v));
    return panels;  // padding lanes hold values too: both kernels must read them as given
}

}  // namespace

TEST_CASE("vdpbf16ps tiles give the emulation's bits for every shape", "[bf16dot][native][rule3]") {
    std::mt19937_64 rng(307);
    for (std::int64_t K : {1, 2, 3, 15, 16, 17, 255, 256, 257, 600, 2049}) {
        for (std::int64_t P : {1, 5, 7, 13}) {
            auto const panels = random_panels(rng, P, K, 0.5);
            for (std::int64_t M : {1, 2, 3, 4, 5, 6, 7, 8, 9, 11, 16, 21, 64}) {
                if (smoe_test::kSanitized && K >= 600 && M > 11) continue;  // half of the sweep's K x P x M
                auto const a = smoe_test::normal(rng, std::size_t(M * K), 1.0);
                INFO("K " << K << ", panels " << P << ", M " << M);
                auto const nat = gemm(cpu::Bf16DotKernel::native, a, M, K, panels, P, 0, P);
                CHECK(same_bits(nat, gemm(cpu::Bf16DotKernel::emulated, a, M, K, panels, P, 0, P)));
                if (P > 2)
                    CHECK(same_bits(gemm(cpu::Bf16DotKernel::native, a, M, K, panels, P, 1, P - 1),
                                    gemm(cpu::Bf16DotKernel::emulated, a, M, K, panels, P, 1, P - 1)));
            }
        }
    }
}

TEST_CASE("vdpbf16ps and the emulation agree on rounding ties, NaN, inf, denormal inputs and flushed results",
          "[bf16dot][native][emulation]") {
    // Activations: RNE ties, values near the bf16 overflow, denormals (kept by to_bf16, read as zero by
    // the dot), zeros of both signs; weights scaled so that sums reach the denormal range (FTZ).
    std::vector<float> const special = {1.0f + 0x1p-8f, 1.0f + 3 * 0x1p-8f, -1.0f - 0x1p-8f, 0x1.fffffep127f, 1e-39f, -1e-39f,
                                        0x1p-126f, 0x1.02p-126f, 0.0f, -0.0f, 3.0f, -0x1p-70f};
    std::mt19937_64 rng(311);
    // K >= 64: the conversion takes vcvtne2ps2bf16 for 32 lanes without a denormal or NaN; rows of
    // ordinary values (even rows) and rows of the special values (odd) test both sides of that test.
    for (std::int64_t K : {1, 7, 12, 33, 64, 97}) {
        std::int64_t const M = 9, P = 2;
        std::vector<float> a(std::size_t(M * K));
        std::uniform_int_distribution<std::size_t> pick(0, special.size() - 1);
        std::normal_distribution<float> normal;
        for (std::size_t i = 0; i < a.size(); ++i) a[i] = K >= 64 && (i / std::size_t(K)) % 2 == 0 ? normal(rng) : special[pick(rng)];
        std::vector<bf16> panels = random_panels(rng, P, K, 1.0);
        for (std::size_t i = 0; i < panels.size(); i += 3) panels[i] = smoe::to_bf16(0x1p-60f * smoe::to_float(panels[i]));
        INFO("K " << K);
        auto const nat = gemm(cpu::Bf16DotKernel::native, a, M, K, panels, P, 0, P);
        auto const emu = gemm(cpu::Bf16DotKernel::emulated, a, M, K, panels, P, 0, P);
        for (std::size_t i = 0; i < nat.size(); ++i) {
            INFO("element " << i << ": native " << nat[i] << ", emulated " << emu[i]);
            if (std::isnan(emu[i]))
                CHECK(std::isnan(nat[i]));  // NaN payloads are not compared (experts.md §9)
            else
                CHECK(std::memcmp(&nat[i], &emu[i], sizeof(float)) == 0);
        }
    }
}

TEST_CASE("SwiGLU<bf16> with Bf16Dot::on gives the bits of Bf16Dot::emulated", "[bf16dot][native][swiglu]") {
    using smoe::expert::Bf16Dot;
    std::mt19937_64 rng(313);
    struct Shape {
        std::int64_t d, f;
    };
    for (Shape s : {Shape{1, 1}, Shape{17, 9}, Shape{70, 23}, Shape{300, 270}}) {
        std::int64_t const d = s.d, f = s.f, E = 2;
        std::vector<bf16> w1, w3, w2;
        for (float v : smoe_test::normal(rng, std::size_t(E * f * d), 1.0 / std::sqrt(double(d)))) w1.push_back(smoe::to_bf16(v));
        for (float v : smoe_test::normal(rng, std::size_t(E * f * d), 1.0 / std::sqrt(double(d)))) w3.push_back(smoe::to_bf16(v));
        for (float v : smoe_test::normal(rng, std::size_t(E * d * f), 1.0 / std::sqrt(double(f)))) w2.push_back(smoe::to_bf16(v));
        smoe::expert::SwiGLUConfig on{d, f, E, Bf16Dot::on}, emu{d, f, E, Bf16Dot::emulated}, autom{d, f, E};
        using W = smoe::expert::SwiGLUWeights<bf16>;
        smoe::expert::SwiGLU<bf16> const a(on, W::dense(w1.data(), w3.data(), w2.data(), on));
        smoe::expert::SwiGLU<bf16> const b(emu, W::dense(w1.data(), w3.data(), w2.data(), emu));
        CHECK(smoe::expert::SwiGLU<bf16>(autom, W::dense(w1.data(), w3.data(), w2.data(), autom)).bf16_dot() == Bf16Dot::on);
        for (std::int64_t M : {1, 3, 8, 13, 70}) {
            auto const x = smoe_test::normal(rng, std::size_t(M * d), 1.0);
            auto const rw = smoe_test::normal(rng, std::size_t(M), 1.0);
            auto run = [&](smoe::expert::SwiGLU<bf16> const& ex) {
                std::vector<float> out(std::size_t(M * d), std::numeric_limits<float>::quiet_NaN());
                smoe::WorkspaceBuffer buf(ex.workspace_size(M));
                smoe::Workspace ws = buf.workspace();
                ex.run(xsimd::default_arch{}, 1, MatrixView<float const>(x.data(), M, d), std::span<float const>(rw.data(), std::size_t(M)),
                       MatrixView<float>(out.data(), M, d), ws);
                return out;
            };
            INFO("d " << d << ", f " << f << ", M " << M);
            CHECK(same_bits(run(a), run(b)));
        }
    }
}
