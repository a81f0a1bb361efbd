// expert::QuantSwiGLU, the exact path of formats.md §6.1, in every format: bit for bit the fp32 expert
// on the dequantised weights (act order: within 1e-5 of the fp64 oracle, its chain runs in group order),
// on every ISA the build has, for row counts that take every tile (in registers and decoded blocks),
// odd shapes (d not a multiple of 16, f not of 8, partial FP8 blocks); a mixed layer gives each
// expert's single-format bits (§4 rule 4), with and without threads.

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <string>
#include <tuple>
#include <vector>

#include <catch2/catch.hpp>

#include "common/data.hpp"
#include "smoe/smoe.hpp"

using smoe::MatrixView;
using smoe::expert::QuantExpertWeights;
using smoe::expert::QuantSwiGLU;
using smoe::expert::QuantSwiGLUWeights;
using smoe::expert::SwiGLU;
using smoe::expert::SwiGLUConfig;
using namespace smoe::quant;
using Catch::Matchers::Contains;

namespace {

// The ISAs: the build's best, SSE2 (the scalar kernel) and, where the build has AVX-512, AVX2 too.
#if XSIMD_WITH_AVX512F
using QuantArchs = xsimd::arch_list<xsimd::default_arch, xsimd::fma3<xsimd::avx2>, xsimd::sse2>;
#elif XSIMD_WITH_SSE2
using QuantArchs = smoe_test::TestArchs;
#else
using QuantArchs = xsimd::arch_list<xsimd::default_arch>;
#endif
template <class F>
void each_arch(F&& f) {
    smoe_test::for_each_arch(QuantArchs{}, f);
}

// A random matrix in canonical form: codes over their whole range, factors near 2^-6 (int4, int8),
// 2^-9 (FP8) or 2^-3 (MXFP4), so weights are O(0.1).
Matrix random_matrix(std::mt19937_64& rng, Format const& f, std::int64_t R, std::int64_t C) {
    Matrix m;
    m.format = f;
    m.rows = R;
    m.cols = C;
    std::uniform_int_distribution<int> byte(0, 255), nib(0, 15);
    std::uniform_real_distribution<float> u(0.5f, 1.0f);
    std::int64_t const G = f.groups(C);
    switch (f.kind) {
        case Kind::f32:
        case Kind::bf16:
            m.values = smoe_test::normal(rng, std::size_t(R * C), 0.1);
            if (f.kind == Kind::bf16)
                for (auto& v : m.values) v = smoe::to_float(smoe::to_bf16(v));
            break;
        case Kind::int8_channel:
            for (std::int64_t k = 0; k < R * C; ++k) m.codes.push_back(std::uint8_t(byte(rng)));
            for (std::int64_t o = 0; o < R; ++o) m.scales.push_back(u(rng) * 0x1p-9f);
            break;
        case Kind::int4:
            for (std::int64_t k = 0; k < R * C; ++k) m.codes.push_back(std::uint8_t(nib(rng)));
            for (std::int64_t k = 0; k < R * G; ++k) {
                m.scales.push_back(u(rng) * 0x1p-5f);
                m.zeros.push_back(f.symmetric ? 8 : std::uint8_t(nib(rng)));
            }
            if (f.act_order) {
                for (std::int64_t i = 0; i < C; ++i) m.gidx.push_back(std::int32_t(i % G));
                std::shuffle(m.gidx.begin(), m.gidx.end(), rng);
            }
            break;
        case Kind::fp8:
            for (std::int64_t k = 0; k < R * C; ++k) {
                int b = byte(rng);
                while ((b & 0x7F) == 0x7F || ((b >> 3) & 15) > 9) b = byte(rng);  // finite, |v| <= 8
                m.codes.push_back(std::uint8_t(b));
            }
            for (std::int64_t k = 0; k < f.scale_rows(R) * G; ++k) m.scales.push_back(u(rng) * 0x1p-5f);
            break;
        case Kind::mxfp4:
            for (std::int64_t k = 0; k < R * C; ++k) m.codes.push_back(std::uint8_t(nib(rng)));
            for (std::int64_t k = 0; k < R * G; ++k) m.scales.push_back(e8m0_to_float(std::uint8_t(121 + nib(rng) % 4)));
            break;
        case Kind::ternary:  // research.md §7: u = t + 1
            for (std::int64_t k = 0; k < R * C; ++k) m.codes.push_back(std::uint8_t(nib(rng) % 3));
            for (std::int64_t k = 0; k < f.scale_rows(R) * G; ++k) m.scales.push_back(u(rng) * 0x1p-3f);
            break;
    }
    m.validate("random");
    return m;
}

QuantExpertWeights random_expert(std::mt19937_64& rng, Format const& gu, Format const& dn, std::int64_t d, std::int64_t f) {
    Matrix gate = random_matrix(rng, gu, f, d);
    Matrix up = random_matrix(rng, gu, f, d);
    if (gu.act_order) up.gidx = gate.gidx;  // gate and up share their input's column order
    return {std::move(gate), std::move(up), random_matrix(rng, dn, d, f)};
}

template <class X, class Arch>
std::vector<float> run_rows(Arch arch, X const& ex, std::int64_t e, std::vector<float> const& x, std::int64_t M, std::int64_t row0 = 0) {
    std::int64_t const d = ex.hidden_size();
    std::vector<float> rw(static_cast<std::size_t>(M)), y(static_cast<std::size_t>(M * d), -1.0f);
    for (std::int64_t r = 0; r < M; ++r) rw[std::size_t(r)] = 0.25f + 0.125f * float((r + row0) % 5);
    smoe::WorkspaceBuffer buf(ex.workspace_size(M));
    smoe::Workspace ws = buf.workspace();
    ex.run(arch, e, MatrixView<float const>(x.data(), M, d), std::span<float const>(rw), MatrixView<float>(y.data(), M, d), ws);
    return y;
}

// Whether Int8Dot::avx_vnni runs here: AVX-VNNI, or its instruction in the EVEX encoding (AVX512-VNNI + VL).
bool has_ymm_vnni() {
    return smoe::kernels::cpu::cpu_has_avx_vnni() || (smoe::kernels::cpu::cpu_has_avx2_fma() && smoe::kernels::cpu::cpu_has_avx512_vnni());
}

// run_rows through the phase calls without kernel scratch (the bf16 dot kernels' stack buffers), in
// run()'s blocks of kRowBlock rows.
std::vector<float> run_rows_no_scratch(QuantSwiGLU const& ex, std::int64_t e, std::vector<float> const& x, std::int64_t M) {
    std::int64_t const d = ex.hidden_size();
    std::vector<float> rw(static_cast<std::size_t>(M)), y(static_cast<std::size_t>(M * d), -1.0f);
    for (std::int64_t r = 0; r < M; ++r) rw[std::size_t(r)] = 0.25f + 0.125f * float(r % 5);
    std::vector<float> h(static_cast<std::size_t>(QuantSwiGLU::kRowBlock * ex.hidden_stride()));
    for (std::int64_t r0 = 0; r0 < M; r0 += QuantSwiGLU::kRowBlock) {
        std::int64_t const mb = std::min(QuantSwiGLU::kRowBlock, M - r0);
        MatrixView<float> const hv(h.data(), mb, ex.hidden_stride());
        auto const w = std::span<float const>(rw).subspan(std::size_t(r0), std::size_t(mb));
        ex.run_gate_up(xsimd::default_arch{}, e, MatrixView<float const>(x.data() + r0 * d, mb, d), hv, 0, ex.gate_up_panels(), w);
        ex.run_down(xsimd::default_arch{}, e, MatrixView<float const>(hv), w, MatrixView<float>(y.data() + r0 * d, mb, d), 0, ex.down_panels());
    }
    return y;
}

// All M rows through one phase call each, as MoELayer's phased items call them (run() passes 64 rows at
// a time), with the kernel scratch, the panels in `parts` ranges: the bf16 dot kernels' chunks of up to
// 128 rows and their row split.
std::vector<float> run_phases_whole(QuantSwiGLU const& ex, std::int64_t e, std::vector<float> const& x, std::int64_t M, std::int64_t parts) {
    std::int64_t const d = ex.hidden_size();
    std::vector<float> rw(static_cast<std::size_t>(M)), y(static_cast<std::size_t>(M * d), -1.0f);
    for (std::int64_t r = 0; r < M; ++r) rw[std::size_t(r)] = 0.25f + 0.125f * float(r % 5);
    std::vector<float> h(static_cast<std::size_t>(M * ex.hidden_stride()));
    std::vector<std::byte> sbuf(ex.phase_scratch_bytes() + 64);
    std::size_t const skip = (64 - reinterpret_cast<std::uintptr_t>(sbuf.data()) % 64) % 64;
    std::span<std::byte> const sc(sbuf.data() + skip, ex.phase_scratch_bytes());
    MatrixView<float> const hv(h.data(), M, ex.hidden_stride());
    auto const ranges = [&](std::int64_t P, auto&& f) {
        for (std::int64_t i = 0; i < parts; ++i) f(P * i / parts, P * (i + 1) / parts);
    };
    ranges(ex.gate_up_panels(), [&](std::int64_t p0, std::int64_t p1) {
        ex.run_gate_up(xsimd::default_arch{}, e, MatrixView<float const>(x.data(), M, d), hv, p0, p1, rw, sc);
    });
    ranges(ex.down_panels(), [&](std::int64_t p0, std::int64_t p1) {
        ex.run_down(xsimd::default_arch{}, e, MatrixView<float const>(hv), rw, MatrixView<float>(y.data(), M, d), p0, p1, sc);
    });
    return y;
}

bool same_bits(std::vector<float> const& a, std::vector<float> const& b) {
    if (a.size() != b.size()) return false;
    for (std::size_t i = 0; i < a.size(); ++i)
        if (std::bit_cast<std::uint32_t>(a[i]) != std::bit_cast<std::uint32_t>(b[i])) return false;
    return true;
}

// One expert set on the int8 dot path's kernels: what Int8Dot::on picks, the portable scalar model, the
// AVX2 kernel and the AVX-VNNI one (each the portable one where this CPU cannot run it).
struct Int8DotKernels {
    QuantSwiGLU on, portable, avx2, vnni;
    static SwiGLUConfig config(std::int64_t d, std::int64_t f, std::int64_t E, smoe::expert::Int8Dot k) {
        SwiGLUConfig c{d, f, E};
        c.int8_dot = k;
        return c;
    }
    Int8DotKernels(std::int64_t d, std::int64_t f, std::vector<QuantExpertWeights> const& xs)
        : on(config(d, f, std::int64_t(xs.size()), smoe::expert::Int8Dot::on), QuantSwiGLUWeights::of(xs)),
          portable(config(d, f, std::int64_t(xs.size()), smoe::expert::Int8Dot::portable), QuantSwiGLUWeights::of(xs)),
          avx2(config(d, f, std::int64_t(xs.size()),
                      smoe::kernels::cpu::cpu_has_avx2_fma() ? smoe::expert::Int8Dot::avx2 : smoe::expert::Int8Dot::portable),
               QuantSwiGLUWeights::of(xs)),
          vnni(config(d, f, std::int64_t(xs.size()), has_ymm_vnni() ? smoe::expert::Int8Dot::avx_vnni : smoe::expert::Int8Dot::portable),
               QuantSwiGLUWeights::of(xs)) {}
    // Expert e's outputs for M rows by Int8Dot::on, checked bit for bit against the other three kernels.
    std::vector<float> rows(std::int64_t e, std::vector<float> const& x, std::int64_t M) const {
        auto const y = run_rows(xsimd::default_arch{}, on, e, x, M);
        auto const yp = run_rows(xsimd::default_arch{}, portable, e, x, M);
        CHECK(same_bits(y, yp));
        CHECK(same_bits(run_rows(xsimd::default_arch{}, avx2, e, x, M), yp));
        CHECK(same_bits(run_rows(xsimd::default_arch{}, vnni, e, x, M), yp));
        return y;
    }
};

// An expert's dequantised values, row-major, computed once per expert: the oracles below read each weight
// once per row of x, and Matrix::deq per read made them most of the ASan run's time.
struct DeqExpert {
    std::int64_t f, d;
    std::vector<double> gate, up, down;  // f x d, f x d, d x f
    explicit DeqExpert(QuantExpertWeights const& w)
        : f(w.gate.rows), d(w.gate.cols), gate(all(w.gate)), up(all(w.up)), down(all(w.down)) {}
    static std::vector<double> all(Matrix const& m) {
        std::vector<double> v(static_cast<std::size_t>(m.rows * m.cols));
        for (std::int64_t o = 0; o < m.rows; ++o)
            for (std::int64_t i = 0; i < m.cols; ++i) v[std::size_t(o * m.cols + i)] = double(m.deq(o, i));
        return v;
    }
};

// formats.md §6.1's oracle: fp64 on W_deq; the per-token error max |y - r| / max |r|.
double oracle_error(DeqExpert const& W, std::vector<float> const& x, std::vector<float> const& y, std::int64_t M) {
    std::int64_t const f = W.f, d = W.d;
    double worst = 0.0;
    for (std::int64_t r = 0; r < M; ++r) {
        double const rw = 0.25 + 0.125 * double(r % 5);
        std::vector<double> h(static_cast<std::size_t>(f));
        for (std::int64_t j = 0; j < f; ++j) {
            double g = 0, u = 0;
            for (std::int64_t i = 0; i < d; ++i) {
                g += W.gate[std::size_t(j * d + i)] * x[std::size_t(r * d + i)];
                u += W.up[std::size_t(j * d + i)] * x[std::size_t(r * d + i)];
            }
            h[std::size_t(j)] = g / (1.0 + std::exp(-g)) * u;
        }
        double err = 0, ref = 0;
        for (std::int64_t o = 0; o < d; ++o) {
            double acc = 0;
            for (std::int64_t j = 0; j < f; ++j) acc += W.down[std::size_t(o * f + j)] * h[std::size_t(j)];
            acc *= rw;
            err = std::max(err, std::fabs(acc - double(y[std::size_t(r * d + o)])));
            ref = std::max(ref, std::fabs(acc));
        }
        worst = std::max(worst, ref > 0 ? err / ref : err);
    }
    return worst;
}

// expert::SwiGLU<float> on the dequantised weights of the given experts.
struct DenseTwin {
    std::vector<float> w1, w3, w2;
    SwiGLU<float> ex;
    DenseTwin(std::vector<QuantExpertWeights> const& xs, std::int64_t d, std::int64_t f)
        : w1(cat(xs, &QuantExpertWeights::gate)), w3(cat(xs, &QuantExpertWeights::up)), w2(cat(xs, &QuantExpertWeights::down)),
          ex(SwiGLUConfig{d, f, std::int64_t(xs.size())},
             smoe::expert::SwiGLUWeights<float>::dense(w1.data(), w3.data(), w2.data(), SwiGLUConfig{d, f, std::int64_t(xs.size())})) {}
    static std::vector<float> cat(std::vector<QuantExpertWeights> const& xs, Matrix QuantExpertWeights::*m) {
        std::vector<float> out;
        for (auto const& x : xs) {
            auto const v = (x.*m).dequantize();
            out.insert(out.end(), v.begin(), v.end());
        }
        return out;
    }
};

struct Shape {
    std::int64_t d, f;
};

}  // namespace

TEST_CASE("every format gives the fp32 expert's bits on its dequantised weights, on every ISA", "[quant][expert]") {
    std::mt19937_64 rng(1501);
    struct Case {
        Format gu, dn;
        Shape shape;
    };
    std::vector<Case> const cases = {
        {Format::f32(), Format::f32(), {40, 24}},
        {Format::bf16(), Format::bf16(), {40, 20}},
        {Format::int8_channel(), Format::int8_channel(), {36, 20}},
        {Format::int4(32), Format::int4(32), {96, 64}},
        {Format::int4(8, false), Format::int4(4, false), {40, 20}},
        {Format::int4(0), Format::int4(0, false), {33, 19}},
        {Format::fp8_block(8, 16), Format::fp8_block(8, 16), {40, 20}},  // partial blocks both ways
        {Format::fp8_block(128, 128), Format::fp8_block(128, 128), {136, 144}},
        {Format::fp8_channel(), Format::fp8_tensor(), {40, 24}},
        {Format::mxfp4(), Format::mxfp4(), {64, 96}},
        {Format::int4(16), Format::mxfp4(), {48, 32}},  // down in another format than gate/up
        {Format::ternary(), Format::ternary(TernaryScale::channel), {40, 24}},  // research.md §7
        {Format::ternary(TernaryScale::group, 8), Format::ternary(TernaryScale::group, 12, TernaryPacking::b3), {40, 24}},
        {Format::ternary(TernaryScale::channel), Format::ternary(), {33, 19}},  // 2-bit steps: K and N off every multiple
    };
    for (auto const& c : cases) {
        std::int64_t const d = c.shape.d, f = c.shape.f, E = 2;
        std::vector<QuantExpertWeights> xs;
        for (std::int64_t e = 0; e < E; ++e) xs.push_back(random_expert(rng, c.gu, c.dn, d, f));
        QuantSwiGLU const q(SwiGLUConfig{d, f, E}, QuantSwiGLUWeights::of(xs));
        DenseTwin const twin(xs, d, f);
        DeqExpert const w1(xs[1]);
        INFO("format " << q.format_name(0) << ", d " << d << ", f " << f);
        CHECK(q.format_name(1) == q.format_name(0));
        for (std::int64_t M : {0, 1, 2, 3, 5, 8, 17, 40}) {
            auto const x = smoe_test::normal(rng, std::size_t(M * d), 1.0);
            each_arch([&](auto arch) {
                INFO("M " << M << ", arch " << arch.name());
                auto const y = run_rows(arch, q, 1, x, M);
                CHECK(same_bits(y, run_rows(arch, twin.ex, 1, x, M)));
                if (M > 0 && M <= 17) CHECK(oracle_error(w1, x, y, M) <= 1e-5);
            });
        }
    }
}

TEST_CASE("act order runs in group order, within 1e-5 of the oracle, and a row alone gives its batch bits", "[quant][expert]") {
    std::mt19937_64 rng(1502);
    std::int64_t const d = 64, f = 48, M = 21;
    std::vector<QuantExpertWeights> xs = {random_expert(rng, Format::int4(16, false, true), Format::int4(8, true, true), d, f)};
    QuantSwiGLU const q(SwiGLUConfig{d, f, 1}, QuantSwiGLUWeights::of(xs));
    CHECK(q.format_name(0) == "gate/up int4-g16-asym-actorder, down int4-g8-sym-actorder");
    auto const x = smoe_test::normal(rng, std::size_t(M * d), 1.0);
    DeqExpert const w0(xs[0]);
    std::vector<float> simd;
    each_arch([&](auto arch) {
        INFO("arch " << arch.name());
        auto const y = run_rows(arch, q, 0, x, M);
        CHECK(oracle_error(w0, x, y, M) <= 1e-5);
        // The SIMD ISAs share the chains and the epilogue's exp (the scalar path has std::exp, as SwiGLU's).
        if constexpr (!std::is_same_v<decltype(arch), xsimd::sse2>) {
            if (simd.empty()) simd = y;
            CHECK(same_bits(y, simd));
        }
        for (std::int64_t r : {0, 7, 20}) {
            std::vector<float> const xr(x.begin() + r * d, x.begin() + (r + 1) * d);
            CHECK(same_bits(run_rows(arch, q, 0, xr, 1, r), std::vector<float>(y.begin() + r * d, y.begin() + (r + 1) * d)));
        }
    });
}

TEST_CASE("a mixed-format layer gives each expert its single-format bits, with and without threads", "[quant][layer]") {
    using Layer = smoe::MoELayer<smoe::router::TopK, QuantSwiGLU, smoe::balance::None>;
    std::mt19937_64 rng(1503);
    std::int64_t const d = 64, f = 32, E = 5, T = 37;
    std::vector<Format> const fmts = {Format::int4(32), Format::int4(16, false, true), Format::fp8_block(16, 32), Format::mxfp4(),
                                      Format::bf16()};
    std::vector<QuantExpertWeights> xs;
    for (std::int64_t e = 0; e < E; ++e) xs.push_back(random_expert(rng, fmts[std::size_t(e)], fmts[std::size_t(e)], d, f));
    auto const gate = smoe_test::normal(rng, std::size_t(E * d), 0.5);
    auto const x = smoe_test::normal(rng, std::size_t(T * d), 1.0);
    SwiGLUConfig const c{d, f, E};
    Layer layer({.router = {.num_experts = E, .top_k = 2}, .expert = c, .max_tokens = T},
                {MatrixView<float const>(gate.data(), E, d), {}, QuantSwiGLUWeights::of(xs)});
    CHECK(layer.experts().format_name(2) == "fp8-e4m3-b16x32");
    std::vector<float> y1(std::size_t(T * d)), y2(y1.size());
    layer.forward(MatrixView<float const>(x.data(), T, d), MatrixView<float>(y1.data(), T, d));
    smoe::DefaultThreadPool pool(2);
    layer.set_thread_pool(pool);
    layer.forward(MatrixView<float const>(x.data(), T, d), MatrixView<float>(y2.data(), T, d));
    CHECK(same_bits(y1, y2));
    // Each expert alone, in a layer where every expert has its format: the same rows, the same bits.
    for (std::int64_t e = 0; e < E; ++e) {
        std::vector<QuantExpertWeights> same(std::size_t(E), xs[std::size_t(e)]);
        QuantSwiGLU const single(c, QuantSwiGLUWeights::of(same));
        auto const xe = smoe_test::normal(rng, std::size_t(9 * d), 1.0);
        CHECK(same_bits(run_rows(xsimd::default_arch{}, layer.experts(), e, xe, 9), run_rows(xsimd::default_arch{}, single, 3, xe, 9)));
    }
}

TEST_CASE("QuantSwiGLU refuses inconsistent experts with named errors", "[quant][expert][errors]") {
    std::mt19937_64 rng(1504);
    std::int64_t const d = 32, f = 16;
    SwiGLUConfig const c{d, f, 1};
    auto x = random_expert(rng, Format::int4(16), Format::int4(16), d, f);
    SECTION("gate and up in different formats") {
        x.up = random_matrix(rng, Format::fp8_channel(), f, d);
        std::vector<QuantExpertWeights> xs = {x};
        auto w = QuantSwiGLUWeights::of(xs);
        CHECK_THROWS_WITH(QuantSwiGLU(c, w), Contains("expert 0 gate and up formats' = int4-g16-sym, fp8-e4m3-channel") &&
                                                  Contains("one format for both"));
    }
    SECTION("a matrix whose format differs from the resolved one") {
        std::vector<QuantExpertWeights> xs = {x};
        auto w = QuantSwiGLUWeights::of(xs);
        w.down[0] = Format::int4(8);
        CHECK_THROWS_WITH(QuantSwiGLU(c, w), Contains("expert 0 down format' = int4-channel-sym") && Contains("int4-g8-sym (resolved before packing)"));
    }
    SECTION("act-order gate and up with different g_idx") {
        auto y = random_expert(rng, Format::int4(8, true, true), Format::int4(16), d, f);
        std::swap(y.up.gidx[0], y.up.gidx[std::size_t(d - 1)]);
        if (y.up.gidx == y.gate.gidx) std::swap(y.up.gidx[0], y.up.gidx[1]);
        std::vector<QuantExpertWeights> xs = {y};
        if (y.up.gidx != y.gate.gidx) CHECK_THROWS_WITH(QuantSwiGLU(c, QuantSwiGLUWeights::of(xs)), Contains("expert 0 gate and up g_idx"));
    }
    SECTION("wrong shapes and formats the matrix cannot have") {
        std::vector<QuantExpertWeights> xs = {x};
        CHECK_THROWS_WITH(QuantSwiGLU(SwiGLUConfig{d, 2 * f, 1}, QuantSwiGLUWeights::of(xs)), Contains("expert 0 gate shape' = [16, 32]"));
        auto w = QuantSwiGLUWeights::of(xs);
        w.gate_up[0] = Format::mxfp4();
        CHECK_THROWS_WITH(QuantSwiGLU(SwiGLUConfig{40, f, 1}, w), Contains("expert 0 gate_up.in_features' = 40"));
    }
}

TEST_CASE("quantise at load: the engine's expert -> format map, one expert at a time", "[quant][expert]") {
    std::mt19937_64 rng(1505);
    std::int64_t const d = 64, f = 32, E = 3;
    auto const w1 = smoe_test::normal(rng, std::size_t(E * f * d), 0.05), w3 = smoe_test::normal(rng, std::size_t(E * f * d), 0.05),
               w2 = smoe_test::normal(rng, std::size_t(E * d * f), 0.05);
    SwiGLUConfig const c{d, f, E};
    std::vector<Format> const gu = {Format::int4(32), Format::int8_channel(), Format::bf16()};
    std::vector<Format> const dn = {Format::int4(32), Format::int4(16), Format::f32()};
    int calls = 0;
    auto w = QuantSwiGLUWeights::quantized(w1.data(), w3.data(), w2.data(), c, gu, dn);
    auto const load = w.load;
    w.load = [&](std::int64_t e) {
        CHECK(e == calls++);  // in order, once each
        return load(e);
    };
    QuantSwiGLU const q(c, w);
    CHECK(calls == E);
    CHECK(q.format_name(1) == "gate/up int8-channel, down int4-g16-sym");
    // int4 g32 packs 4.5 bits per weight plus tables: well under bf16's 16.
    CHECK(q.weight_bytes(0) < 0.4 * q.weight_bytes(2));
    auto const x = smoe_test::normal(rng, std::size_t(4 * d), 1.0);
    for (std::int64_t e = 0; e < E; ++e) {
        QuantExpertWeights const qe = load(e);
        auto const y = run_rows(xsimd::default_arch{}, q, e, x, 4);
        CHECK(oracle_error(DeqExpert(qe), x, y, 4) <= 1e-5);
    }
}

namespace {

// formats.md §6.2's activation quantisation of one row (blocks of 32, in `order`), as x̂ = q · d_b.
std::vector<double> q8_dequant(std::vector<float> const& x, std::vector<std::int64_t> const& order) {
    std::size_t const K = order.size();
    std::vector<double> out(x.size());
    for (std::size_t b = 0; b < K; b += 32) {
        std::size_t const n = std::min<std::size_t>(32, K - b);
        float amax = 0;
        for (std::size_t i = 0; i < n; ++i) amax = std::max(amax, std::fabs(x[std::size_t(order[b + i])]));
        float const d = amax / 127.0f;
        for (std::size_t i = 0; i < n; ++i) {
            float const v = x[std::size_t(order[b + i])];
            out[std::size_t(order[b + i])] = d == 0 ? 0.0 : double(std::clamp(std::nearbyint(v / d), -127.0f, 127.0f)) * d;
        }
    }
    return out;
}
std::vector<std::int64_t> group_order(Matrix const& m) {  // act order: columns sorted by group, stably
    std::vector<std::int64_t> o(std::size_t(m.cols));
    for (std::int64_t i = 0; i < m.cols; ++i) o[std::size_t(i)] = i;
    if (m.format.act_order)
        std::stable_sort(o.begin(), o.end(), [&](auto a, auto b) { return m.gidx[std::size_t(a)] < m.gidx[std::size_t(b)]; });
    return o;
}

// §6.2 bound (c): an expert against fp64 with the same quantisation of x and h; returns the worst
// per-token error, and the worst against the exact oracle (bound (d)) in `exact`; W is w dequantised.
double int8_oracle_error(QuantExpertWeights const& w, DeqExpert const& W, std::vector<float> const& x, std::vector<float> const& y,
                         std::int64_t M, double& exact) {
    std::int64_t const f = W.f, d = W.d;
    double worst = 0;
    for (std::int64_t r = 0; r < M; ++r) {
        double const rw = 0.25 + 0.125 * double(r % 5);
        std::vector<float> const xr(x.begin() + r * d, x.begin() + (r + 1) * d);
        auto const xq = q8_dequant(xr, group_order(w.gate));
        std::vector<float> h(static_cast<std::size_t>(f));
        for (std::int64_t j = 0; j < f; ++j) {
            double g = 0, u = 0;
            for (std::int64_t i = 0; i < d; ++i)
                g += W.gate[std::size_t(j * d + i)] * xq[std::size_t(i)], u += W.up[std::size_t(j * d + i)] * xq[std::size_t(i)];
            h[std::size_t(j)] = float(g / (1.0 + std::exp(-g)) * u);
        }
        auto const hq = q8_dequant(h, group_order(w.down));
        double err = 0, ref = 0;
        for (std::int64_t o = 0; o < d; ++o) {
            double acc = 0;
            for (std::int64_t j = 0; j < f; ++j) acc += W.down[std::size_t(o * f + j)] * hq[std::size_t(j)];
            acc *= rw;
            err = std::max(err, std::fabs(acc - double(y[std::size_t(r * d + o)])));
            ref = std::max(ref, std::fabs(acc));
        }
        worst = std::max(worst, err / ref);
    }
    exact = oracle_error(W, x, y, M);
    return worst;
}

}  // namespace

TEST_CASE("the int8 dot path: the scalar model's bits on every kernel, within formats.md 6.2's bounds", "[quant][expert][int8_dot]") {
    std::mt19937_64 rng(1506);
    struct Case {
        Format gu, dn;
        Shape shape;
    };
    std::vector<Case> const cases = {
        {Format::int4(32), Format::int4(64), {128, 64}},
        {Format::int4(32, false), Format::int4(32, false, true), {96, 64}},
        {Format::int4(0), Format::int4(0, false), {40, 20}},  // K not a multiple of 32: a short last block
        {Format::int8_channel(), Format::int8_channel(), {72, 40}},
        {Format::ternary(), Format::ternary(TernaryScale::group, 32), {96, 64}},  // research.md §7.1: t for u - z
        {Format::ternary(TernaryScale::channel), Format::ternary(), {40, 20}},
        {Format::ternary(), Format::ternary(TernaryScale::channel), {33, 19}},  // short last blocks both ways
        {Format::mxfp4(), Format::mxfp4(), {128, 64}},  // u = 2 · E2M1 + 12 through the nibble table
        {Format::mxfp4(), Format::int4(32, false), {96, 64}},
        {Format::int4(64), Format::mxfp4(), {64, 96}},
    };
    double worst_exact = 0;
    if (!smoe::kernels::cpu::cpu_has_avx512_vnni())
        WARN("this CPU has no AVX512-VNNI: Int8Dot::on ran the AVX2 or portable kernel; the VNNI kernel is checked on a CPU that has it");
    if (!smoe::kernels::cpu::cpu_has_avx2_fma()) WARN("this CPU has no AVX2+FMA: the AVX2 int8 dot kernel was not run");
    if (!has_ymm_vnni()) WARN("this CPU has neither AVX-VNNI nor AVX512-VNNI: the AVX-VNNI int8 dot kernel was not run");
    for (auto const m : {smoe::expert::Int8Dot::off, smoe::expert::Int8Dot::on, smoe::expert::Int8Dot::avx2, smoe::expert::Int8Dot::avx_vnni,
                         smoe::expert::Int8Dot::portable})
        CHECK(smoe::expert::parse_int8_dot(to_string(m)) == m);
    CHECK(std::string(to_string(smoe::expert::Int8Dot::avx_vnni)) == "avx-vnni");
    for (auto const& c : cases) {
        std::int64_t const d = c.shape.d, f = c.shape.f;
        std::vector<QuantExpertWeights> xs = {random_expert(rng, c.gu, c.dn, d, f), random_expert(rng, c.gu, c.dn, d, f)};
        Int8DotKernels const k(d, f, xs);
        QuantSwiGLU const& qn = k.on;
        INFO("format " << qn.format_name(0) << ", kernels " << to_string(qn.int8_dot_kernel()) << ", " << to_string(k.avx2.int8_dot_kernel())
                       << " and " << to_string(k.vnni.int8_dot_kernel()));
        CHECK(qn.uses_int8_dot(0));
        DeqExpert const w1(xs[1]);
        for (std::int64_t M : {1, 2, 3, 5, 9, 21}) {
            auto x = smoe_test::normal(rng, std::size_t(M * d), 1.0);
            for (std::int64_t i = 0; i < d; i += 7) x[std::size_t(i)] *= 30.0f;  // outlier channels, as §6.2 measured
            auto const yn = k.rows(1, x, M);
            double exact = 0;
            CHECK(int8_oracle_error(xs[1], w1, x, yn, M, exact) <= 2e-3);
            CHECK(exact <= 5e-2);
            worst_exact = std::max(worst_exact, exact);
            for (std::int64_t r : {std::int64_t{0}, M - 1}) {  // a row alone gives its batch bits
                std::vector<float> const xr(x.begin() + r * d, x.begin() + (r + 1) * d);
                CHECK(same_bits(run_rows(xsimd::default_arch{}, qn, 1, xr, 1, r), std::vector<float>(yn.begin() + r * d, yn.begin() + (r + 1) * d)));
            }
        }
    }
    WARN("int8 dot path: worst per-token error against the exact oracle " << worst_exact << " (bound 5e-2)");
}

namespace {

// The int4 matrix with a ternary matrix's codes u = t + 1, zero point 1 and its scale on every row.
Matrix int4_twin(Matrix const& t) {
    Matrix m = t;
    m.format = t.format.groups(t.cols) > 1 ? Format::int4(t.format.group_cols(t.cols), false) : Format::int4(0, false);
    std::int64_t const G = t.format.groups(t.cols);
    m.scales.clear();
    for (std::int64_t o = 0; o < t.rows; ++o)
        for (std::int64_t g = 0; g < G; ++g) m.scales.push_back(t.scale_of(o, g * t.format.group_cols(t.cols)));
    m.zeros.assign(static_cast<std::size_t>(t.rows * G), 1);
    m.validate("twin");
    return m;
}

}  // namespace

TEST_CASE("ternary experts hold 2 bits per weight and give int4's bits on the same codes, on both paths", "[quant][expert][ternary]") {
    std::mt19937_64 rng(1518);
    for (auto const& [gu, dn, d, f] : std::vector<std::tuple<Format, Format, std::int64_t, std::int64_t>>{
             {Format::ternary(TernaryScale::channel), Format::ternary(), 33, 19},
             {Format::ternary(TernaryScale::group, 32), Format::ternary(TernaryScale::channel), 96, 45},
             {Format::ternary(), Format::ternary(TernaryScale::group, 64), 256, 128}}) {
        std::vector<QuantExpertWeights> xs = {random_expert(rng, gu, dn, d, f)}, twins;
        twins.push_back({int4_twin(xs[0].gate), int4_twin(xs[0].up), int4_twin(xs[0].down)});
        for (auto const dot : {smoe::expert::Int8Dot::off, smoe::expert::Int8Dot::on, smoe::expert::Int8Dot::avx2, smoe::expert::Int8Dot::avx_vnni,
                               smoe::expert::Int8Dot::portable}) {
            if (dot == smoe::expert::Int8Dot::avx2 && !smoe::kernels::cpu::cpu_has_avx2_fma()) continue;
            if (dot == smoe::expert::Int8Dot::avx_vnni && !has_ymm_vnni()) continue;
            SwiGLUConfig c{d, f, 1};
            c.int8_dot = dot;
            QuantSwiGLU const qt(c, QuantSwiGLUWeights::of(xs)), q4(c, QuantSwiGLUWeights::of(twins));
            INFO("format " << qt.format_name(0) << ", d " << d << ", f " << f << ", int8_dot " << int(dot));
            // Codes: 2 bits against 4; the factor and zero tables (8 bytes per group and row) are the same size.
            if (d == 256) CHECK(double(qt.packed_bytes()) < 0.6 * double(q4.packed_bytes()));
            for (std::int64_t M : {1, 2, 3, 7, 13, 21}) {
                auto const x = smoe_test::normal(rng, std::size_t(M * d), 1.0);
                if (dot == smoe::expert::Int8Dot::off) {
                    each_arch([&](auto arch) {
                        INFO("M " << M << ", arch " << arch.name());
                        CHECK(same_bits(run_rows(arch, qt, 0, x, M), run_rows(arch, q4, 0, x, M)));
                    });
                } else {
                    INFO("M " << M);
                    CHECK(same_bits(run_rows(xsimd::default_arch{}, qt, 0, x, M), run_rows(xsimd::default_arch{}, q4, 0, x, M)));
                }
            }
        }
    }
}

TEST_CASE("the int8 dot path: non-finite blocks, other formats in the layer, and groups it cannot take", "[quant][expert][int8_dot]") {
    std::mt19937_64 rng(1507);
    std::int64_t const d = 64, f = 32;
    SwiGLUConfig c{d, f, 3};
    c.int8_dot = smoe::expert::Int8Dot::on;
    std::vector<QuantExpertWeights> xs = {random_expert(rng, Format::int4(32), Format::int4(32), d, f),
                                          random_expert(rng, Format::fp8_block(16, 32), Format::fp8_block(16, 32), d, f),
                                          random_expert(rng, Format::mxfp4(), Format::int8_channel(), d, f)};
    QuantSwiGLU const q(c, QuantSwiGLUWeights::of(xs));
    CHECK(q.uses_int8_dot(0));
    CHECK_FALSE(q.uses_int8_dot(1));
    CHECK(q.dot_path(2).starts_with("int8 dot"));  // MXFP4 gate/up and int8 down
    {  // with both switches MXFP4 keeps the bf16 path
        SwiGLUConfig both = c;
        both.bf16_dot = smoe::expert::Bf16Dot::emulated;
        QuantSwiGLU const qb(both, QuantSwiGLUWeights::of(xs));
        CHECK(qb.dot_path(2) == "gate/up bf16 dot (emulated), down " + q.dot_path(0));
    }
    SwiGLUConfig exact = c;
    exact.int8_dot = smoe::expert::Int8Dot::off;
    QuantSwiGLU const qe(exact, QuantSwiGLUWeights::of(xs));
    auto x = smoe_test::normal(rng, std::size_t(3 * d), 1.0);
    CHECK(same_bits(run_rows(xsimd::default_arch{}, q, 1, x, 3), run_rows(xsimd::default_arch{}, qe, 1, x, 3)));  // FP8 keeps the exact path
    x[std::size_t(d + 40)] = std::numeric_limits<float>::infinity();  // row 1, block 1
    auto const y = run_rows(xsimd::default_arch{}, q, 0, x, 3);
    for (std::int64_t o = 0; o < d; ++o) {
        CHECK(std::isfinite(y[std::size_t(o)]));
        CHECK(std::isnan(y[std::size_t(d + o)]));
        CHECK(std::isfinite(y[std::size_t(2 * d + o)]));
    }
    std::vector<QuantExpertWeights> bad = {random_expert(rng, Format::int4(16), Format::int4(32), d, f)};
    SwiGLUConfig c1{d, f, 1};
    c1.int8_dot = smoe::expert::Int8Dot::on;
    CHECK_THROWS_WITH(QuantSwiGLU(c1, QuantSwiGLUWeights::of(bad)), Contains("expert 0 gate_up group' = 16") && Contains("a multiple of 32"));
}

TEST_CASE("the int8 dot path: MXFP4 at the ends of E8M0's range gives the scalar model's bits", "[quant][expert][int8_dot]") {
    // Factors 2^(e - 128) down to fp32 subnormals (e = 0: 2^-128) and up to 2^72: c = fl32(d_b · s)
    // rounds or underflows alike in every kernel. One exponent per row, so a down row's outputs come from
    // its own factor alone (h is O(1): gate/up rows near 2^-5, a few at e = 0 and 1).
    std::mt19937_64 rng(1509);
    std::int64_t const d = 96, f = 64;
    std::vector<QuantExpertWeights> xs = {random_expert(rng, Format::mxfp4(), Format::mxfp4(), d, f)};
    std::vector<std::uint8_t> const gu = {0, 1, 121, 122, 123, 124, 125, 121, 122, 123}, dn = {0, 1, 2, 3, 60, 127, 150, 200};
    for (Matrix* m : {&xs[0].gate, &xs[0].up, &xs[0].down}) {
        auto const& es = m == &xs[0].down ? dn : gu;
        std::int64_t const G = m->format.groups(m->cols);
        for (std::size_t i = 0; i < m->scales.size(); ++i) m->scales[i] = e8m0_to_float(es[(i / std::size_t(G)) % es.size()]);
    }
    Int8DotKernels const k(d, f, xs);
    CHECK(k.on.uses_int8_dot(0));
    for (std::int64_t M : {1, 4, 7}) {
        auto x = smoe_test::normal(rng, std::size_t(M * d), 1.0);
        for (std::int64_t r = 0; r < M; ++r)  // whole blocks of tiny d_b too
            for (std::int64_t i = 32 * (r % 3); i < 32 * (r % 3) + 32; ++i) x[std::size_t(r * d + i)] *= 1e-30f;
        INFO("M " << M);
        std::int64_t tiny = 0;
        for (float v : k.rows(0, x, M)) tiny += v != 0.0f && std::fabs(v) < 1e-30f;
        CHECK(tiny > 0);  // the e = 0 to 3 rows' outputs, near or below fp32's smallest normal
    }
}

TEST_CASE("the int8 dot path quantises rows too long for its stack buffer inside the tiles, with the same bits", "[quant][expert][int8_dot]") {
    std::mt19937_64 rng(1508);
    std::int64_t const d = 65568, f = 16, M = 5;  // 1.25 d bytes of quantised row > the 80 KiB buffer
    std::vector<QuantExpertWeights> xs = {random_expert(rng, Format::int4(32), Format::int4(0), d, f)};
    Int8DotKernels const k(d, f, xs);
    k.rows(0, smoe_test::normal(rng, std::size_t(M * d), 1.0), M);
}

namespace {

// formats.md §6.2's bf16 bound: fp64 with x and h rounded to bf16 as the path rounds them.
double bf16_oracle_error(DeqExpert const& W, std::vector<float> const& x, std::vector<float> const& y, std::int64_t M) {
    std::int64_t const f = W.f, d = W.d;
    auto const r16 = [](float v) { return double(smoe::to_float(smoe::to_bf16(v))); };
    double worst = 0;
    for (std::int64_t r = 0; r < M; ++r) {
        double const rw = 0.25 + 0.125 * double(r % 5);
        std::vector<double> xr(static_cast<std::size_t>(d));
        for (std::int64_t i = 0; i < d; ++i) xr[std::size_t(i)] = r16(x[std::size_t(r * d + i)]);
        std::vector<float> h(static_cast<std::size_t>(f));
        for (std::int64_t j = 0; j < f; ++j) {
            double g = 0, u = 0;
            for (std::int64_t i = 0; i < d; ++i)
                g += W.gate[std::size_t(j * d + i)] * xr[std::size_t(i)], u += W.up[std::size_t(j * d + i)] * xr[std::size_t(i)];
            h[std::size_t(j)] = float(g / (1.0 + std::exp(-g)) * u);
        }
        double err = 0, ref = 0;
        for (std::int64_t o = 0; o < d; ++o) {
            double acc = 0;
            for (std::int64_t j = 0; j < f; ++j) acc += W.down[std::size_t(o * f + j)] * r16(h[std::size_t(j)]);
            acc *= rw;
            err = std::max(err, std::fabs(acc - double(y[std::size_t(r * d + o)])));
            ref = std::max(ref, std::fabs(acc));
        }
        worst = std::max(worst, err / ref);
    }
    return worst;
}

}  // namespace

TEST_CASE("the bf16 dot path for FP8 and MXFP4: the emulation's bits natively, within the bf16 bounds", "[quant][expert][bf16_dot]") {
    std::mt19937_64 rng(1509);
    struct Case {
        Format gu, dn;
        Shape shape;
    };
    std::vector<Case> const cases = {
        {Format::fp8_block(128, 128), Format::fp8_block(128, 128), {200, 136}},  // partial blocks, K over 128
        {Format::fp8_block(16, 32), Format::fp8_channel(), {72, 40}},
        {Format::fp8_tensor(), Format::fp8_block(8, 8), {41, 24}},  // odd K: the last pair padded
        {Format::mxfp4(), Format::mxfp4(), {96, 64}},
        {Format::fp8_block(8, 6), Format::fp8_block(4, 10), {46, 30}},  // blocks and K of odd pair counts: groups split
        {Format::fp8_block(128, 128), Format::fp8_block(128, 128), {65600, 16}},  // 8 rows exceed the 1 MiB of activations: k in spans
        {Format::fp8_channel(), Format::fp8_channel(), {12416, 24}},  // one factor block longer than 4 rows' share of it
    };
    bool const native = smoe::kernels::cpu::cpu_has_avx512_bf16();
    if (!native) WARN("this CPU has no AVX512-BF16: only the emulation ran; the vdpbf16ps kernel is checked on a CPU that has it");
    double worst_exact = 0;
    for (auto const& c : cases) {
        std::int64_t const d = c.shape.d, f = c.shape.f;
        std::vector<QuantExpertWeights> xs = {random_expert(rng, c.gu, c.dn, d, f), random_expert(rng, c.gu, c.dn, d, f)};
        SwiGLUConfig em{d, f, 2}, on{d, f, 2};
        em.bf16_dot = smoe::expert::Bf16Dot::emulated;
        on.bf16_dot = native ? smoe::expert::Bf16Dot::on : smoe::expert::Bf16Dot::emulated;
        QuantSwiGLU const qe(em, QuantSwiGLUWeights::of(xs)), qn(on, QuantSwiGLUWeights::of(xs));
        INFO("format " << qe.format_name(0) << ", native " << native);
        CHECK(qe.uses_bf16_dot(1));
        DeqExpert const w1(xs[1]);
        // From 8 rows, codes decoded once per chunk: run() passes 64 rows at a time; a layer's item all of
        // an expert's rows, up to 128 a chunk with the scratch (150: 80 + 70 rows, in 1 or 3 panel ranges),
        // up to 64 on the stack, fewer where K is long.
        std::vector<std::int64_t> Ms = d > 4096 ? std::vector<std::int64_t>{1, 4, 8}
                                                : std::vector<std::int64_t>{1, 2, 3, 5, 7, 8, 13, 30, 70};
        if (d * f <= 96 * 64) Ms.push_back(150);
        for (std::int64_t M : Ms) {
            auto const x = smoe_test::normal(rng, std::size_t(M * d), 1.0);
            auto const ye = run_rows(xsimd::default_arch{}, qe, 1, x, M);
            CHECK(same_bits(run_rows(xsimd::default_arch{}, qn, 1, x, M), ye));
            CHECK(same_bits(run_rows_no_scratch(qn, 1, x, M), ye));  // the kernels' small stack buffers
            if (M == 13 || M >= 70 || (d > 4096 && M == 8)) {  // with the scratch (d = 65600: k in spans)
                CHECK(same_bits(run_phases_whole(qn, 1, x, M, 1), ye));
                CHECK(same_bits(run_phases_whole(qn, 1, x, M, 3), ye));
            }
            CHECK(bf16_oracle_error(w1, x, ye, M) <= 2e-3);
            double const exact = oracle_error(w1, x, ye, M);
            CHECK(exact <= 1.5e-2);
            worst_exact = std::max(worst_exact, exact);
            std::vector<float> const x0(x.begin(), x.begin() + d);
            std::vector<float> const y0(ye.begin(), ye.begin() + d);
            CHECK(same_bits(run_rows(xsimd::default_arch{}, qn, 1, x0, 1), y0));
            if (M > 1 && d <= 4096) {  // a lone last pair reads no activations beyond K (0 · Inf is NaN)
                std::vector<float> xi = x;
                std::fill(xi.begin() + d, xi.end(), std::numeric_limits<float>::infinity());
                auto const yi = run_rows(xsimd::default_arch{}, qn, 1, xi, M);
                CHECK(same_bits(std::vector<float>(yi.begin(), yi.begin() + d), y0));
            }
        }
    }
    WARN("bf16 dot path (FP8, MXFP4): worst per-token error against the exact oracle " << worst_exact << " (bound 1.5e-2)");
    // Odd FP8 blocks along k, and the other formats, keep the exact path; automatic is the exact path here.
    std::vector<QuantExpertWeights> xs = {random_expert(rng, Format::fp8_block(8, 7), Format::int4(8), 42, 16)};
    SwiGLUConfig em{42, 16, 1};
    em.bf16_dot = smoe::expert::Bf16Dot::emulated;
    CHECK_FALSE(QuantSwiGLU(em, QuantSwiGLUWeights::of(xs)).uses_bf16_dot(0));
    std::vector<QuantExpertWeights> ys = {random_expert(rng, Format::mxfp4(), Format::mxfp4(), 64, 32)};
    CHECK_FALSE(QuantSwiGLU(SwiGLUConfig{64, 32, 1}, QuantSwiGLUWeights::of(ys)).uses_bf16_dot(0));
}

TEST_CASE("the bf16 dot path's decoders (FP8 byte and word tables, MXFP4) give the emulation's bits", "[quant][expert][bf16_dot]") {
    namespace cpu = smoe::kernels::cpu;
    if (!cpu::cpu_has_avx512_bf16()) {
        WARN("this CPU has no AVX512-BF16: the native FP8 decoders are checked on a CPU that has it");
        return;
    }
    if (!cpu::cpu_has_avx512_vbmi()) WARN("this CPU has no AVX512-VBMI: only the word tables ran; the byte tables need a CPU with it");
    std::mt19937_64 rng(1511);
    struct Epi {
        std::vector<float>* y;
        std::int64_t P;
        void store(std::int64_t i, std::int64_t p, float const* v) const { std::copy(v, v + 16, y->begin() + (i * P + p) * 16); }
    };
    // Odd K, blocks of 3 and 5 pairs, a lone last pair; M from the register tiles to the chunks, whose first
    // 8-row tile decodes the codes as it goes (bf16q_dots' Dec), past kBqRows (two chunks). K over 2 · kBqSub
    // (several sub-blocks, one starting inside a block of 5 pairs); MXFP4 (K a multiple of 32: formats.md), whose
    // chunks run their rows past the first 8 in 4-row tiles that keep the running sums in registers over
    // several blocks and sub-blocks (64 rows: three panels at a time, then one).
    for (auto const& [fmt, R, Kb] : std::vector<std::tuple<Format, std::int64_t, std::int64_t>>{
             {Format::fp8_block(8, 6), 40, 46}, {Format::fp8_block(16, 10), 56, 50}, {Format::fp8_tensor(), 48, 41},
             {Format::fp8_block(128, 128), 64, 200}, {Format::fp8_block(16, 10), 48, 601}, {Format::mxfp4(), 48, 96},
             {Format::mxfp4(), 64, 608}}) {
        std::int64_t const K = Kb;  // clang 14 does not capture structured bindings in lambdas
        Matrix const m = random_matrix(rng, fmt, R, K);
        cpu::QuantLayout const L = cpu::bf16q_layout(fmt, K);
        std::int64_t const P = (R + 15) / 16;
        std::vector<std::uint8_t> panels(static_cast<std::size_t>(P * L.pstride));
        for (std::int64_t p = 0; p < P; ++p) {
            cpu::QuantSlot slot[16];
            for (std::int64_t s = 0; s < 16 && p * 16 + s < R; ++s) slot[s] = {&m, p * 16 + s};
            cpu::pack_bf16q_panel(panels.data() + p * L.pstride, L, slot);
        }
        std::vector<std::byte> sbuf(cpu::bf16q_scratch_bytes(K) + 64);
        std::size_t const skip = (64 - reinterpret_cast<std::uintptr_t>(sbuf.data()) % 64) % 64;
        std::span<std::byte> const sc(sbuf.data() + skip, cpu::bf16q_scratch_bytes(K));
        for (std::int64_t M : {1, 2, 3, 7, 8, 9, 21, 130}) {
            INFO("K " << K << ", M " << M);
            auto const x = smoe_test::normal(rng, std::size_t(M * K), 1.0);
            auto const run = [&](cpu::Bf16DotKernel k, std::span<std::byte> s, cpu::Fp8Decode dec) {
                std::vector<float> y(static_cast<std::size_t>(M * P * 16));
                Epi epi{&y, P};
                cpu::gemm_bf16_dot_quant(k, MatrixView<float const>(x.data(), M, K), L, panels.data(), 0, P, epi, s, dec);
                return y;
            };
            auto const ye = run(cpu::Bf16DotKernel::emulated, {}, cpu::Fp8Decode::words);
            CHECK(same_bits(run(cpu::Bf16DotKernel::native, sc, cpu::Fp8Decode::bytes_if_vbmi), ye));
            CHECK(same_bits(run(cpu::Bf16DotKernel::native, sc, cpu::Fp8Decode::words), ye));
            CHECK(same_bits(run(cpu::Bf16DotKernel::native, {}, cpu::Fp8Decode::words), ye));
        }
    }
}

TEST_CASE("quantised layers: T = 0, and one expert taking every token, on every path", "[quant][layer]") {
    using Layer = smoe::MoELayer<smoe::router::TopK, QuantSwiGLU, smoe::balance::None>;
    std::mt19937_64 rng(1510);
    std::int64_t const d = 64, f = 32, E = 3, T = 23;
    std::vector<Format> const fmts = {Format::int4(32), Format::fp8_block(16, 32), Format::mxfp4()};
    std::vector<QuantExpertWeights> xs;
    for (std::int64_t e = 0; e < E; ++e) xs.push_back(random_expert(rng, fmts[std::size_t(e)], fmts[std::size_t(e)], d, f));
    // Router rows: expert 1's logit is large for every (positive) token, so top-1 sends it all of them.
    std::vector<float> gate(std::size_t(E * d), 0.0f);
    for (std::int64_t i = 0; i < d; ++i) gate[std::size_t(d + i)] = 1.0f;
    auto x = smoe_test::normal(rng, std::size_t(T * d), 0.5);
    for (auto& v : x) v = std::fabs(v) + 0.01f;
    for (int path = 0; path < 3; ++path) {
        SwiGLUConfig c{d, f, E};
        if (path == 1) c.int8_dot = smoe::expert::Int8Dot::on;
        if (path == 2) c.bf16_dot = smoe::expert::Bf16Dot::emulated;
        INFO("path " << path);
        Layer layer({.router = {.num_experts = E, .top_k = 1}, .expert = c, .max_tokens = T},
                    {MatrixView<float const>(gate.data(), E, d), {}, QuantSwiGLUWeights::of(xs)});
        std::vector<float> y(std::size_t(T * d), -7.0f);
        layer.forward(MatrixView<float const>(x.data(), 0, d), MatrixView<float>(y.data(), 0, d));  // T = 0: nothing to do
        CHECK(y[0] == -7.0f);
        smoe::RoutingResult const r = layer.forward(MatrixView<float const>(x.data(), T, d), MatrixView<float>(y.data(), T, d));
        CHECK(r.load(1) == T);
        CHECK(r.load(0) == 0);
        // Expert 1 alone on all rows (weight 1: top-1 renormalised) gives the layer's rows.
        std::vector<float> ones(std::size_t(T), 1.0f), want(std::size_t(T * d));
        QuantSwiGLU const& ex = layer.experts();
        smoe::WorkspaceBuffer buf(ex.workspace_size(T));
        smoe::Workspace ws = buf.workspace();
        ex.run(xsimd::default_arch{}, 1, MatrixView<float const>(x.data(), T, d), std::span<float const>(ones), MatrixView<float>(want.data(), T, d), ws);
        for (std::size_t i = 0; i < want.size(); ++i) REQUIRE(std::fabs(y[i] - want[i]) <= 1e-6f * (1.0f + std::fabs(want[i])));
    }
    // The bf16 dot path in a layer on a pool: each phase item's kernel scratch is a slot of the layer's
    // workspace (one per hardware thread); with more threads than slots an item may find none and use
    // its kernel's stack buffers. Every pool gives the bits of the call without one.
    std::int64_t const fw = 256;  // 32 gate/up panels: several items per expert
    std::vector<QuantExpertWeights> ws_xs;
    for (std::int64_t e = 0; e < E; ++e) ws_xs.push_back(random_expert(rng, fmts[std::size_t(1 + e % 2)], fmts[std::size_t(1 + e % 2)], d, fw));
    SwiGLUConfig c{d, fw, E};
    c.bf16_dot = smoe::kernels::cpu::cpu_has_avx512_bf16() ? smoe::expert::Bf16Dot::on : smoe::expert::Bf16Dot::emulated;
    Layer layer({.router = {.num_experts = E, .top_k = 2}, .expert = c, .max_tokens = T},
                {MatrixView<float const>(gate.data(), E, d), {}, QuantSwiGLUWeights::of(ws_xs)});
    CHECK(layer.experts().phase_scratch_bytes() == smoe::kernels::cpu::bf16q_scratch_bytes(fw));  // down's K = f, the widest
    std::vector<float> y0(std::size_t(T * d)), y(std::size_t(T * d));
    layer.forward(MatrixView<float const>(x.data(), T, d), MatrixView<float>(y0.data(), T, d));
    for (std::int64_t threads : {2, 5}) {
        smoe::DefaultThreadPool pool(threads);
        layer.set_thread_pool(pool);
        for (int rep = 0; rep < 3; ++rep) {
            std::fill(y.begin(), y.end(), -1.0f);
            layer.forward(MatrixView<float const>(x.data(), T, d), MatrixView<float>(y.data(), T, d));
            CHECK(same_bits(y, y0));
        }
        layer.clear_thread_pool();
    }
}
