// research.md §7 (ternary experts, MoTE: quant::Format::ternary): the worked example as the spec gives it
// (absmean scales, codes, the 2b, b3 and HF BitNet bytes, y), the packings on every code, the §7.5 errors,
// and a MoTE-style layer quantised at load. The kernels' bits on random ternary experts are checked with
// the other formats in test_quant_expert.cpp.

#include <algorithm>
#include <array>
#include <bit>
#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <set>
#include <string>
#include <vector>

#include <catch2/catch.hpp>

#include "common/data.hpp"
#include "common/formula.hpp"
#include "smoe/expert/film.hpp"
#include "smoe/expert/film_linear.hpp"
#include "smoe/kernels/reference/film_block.hpp"
#include "smoe/layer/film_block.hpp"
#include "smoe/layer/film_merged.hpp"
#include "smoe/io/quant_tensors.hpp"
#include "smoe/io/tensor_map.hpp"
#include "smoe/quant/ternary.hpp"
#include "smoe/smoe.hpp"

using smoe::MatrixView;
using namespace smoe::quant;
using Catch::Matchers::Contains;

namespace {

// research.md §7.6: W [4, 5] and x.
std::vector<float> const kW = {0.30f, -0.05f, 0.12f, -0.40f, 0.00f,  0.02f, 0.25f, -0.18f, 0.09f, -0.33f,
                               -0.11f, 0.07f, 0.50f, -0.26f, 0.14f, 0.21f, -0.29f, 0.03f,  0.08f, -0.06f};
std::vector<float> const kXt = {1, -2, 0.5f, 3, -1};

std::vector<int> ternary_of(Matrix const& m) {
    std::vector<int> t;
    for (auto u : m.codes) t.push_back(int(u) - 1);
    return t;
}

std::vector<double> apply(Matrix const& m, std::vector<float> const& x) {
    std::vector<double> y(static_cast<std::size_t>(m.rows), 0.0);
    for (std::int64_t o = 0; o < m.rows; ++o)
        for (std::int64_t i = 0; i < m.cols; ++i) y[std::size_t(o)] += double(m.deq(o, i)) * x[std::size_t(i)];
    return y;
}

Source const kSrc{"model.safetensors", "model.layers.0.mlp.experts.3.down_proj"};

}  // namespace

TEST_CASE("ternary reproduces research.md section 7.6: absmean scale, codes, y, and the 2b, b3 and HF bytes", "[quant][ternary][spec]") {
    MatrixView<float const> const W(kW.data(), 4, 5);
    std::vector<int> const t = {1, 0, 1, -1, 0, 0, 1, -1, 1, -1, -1, 0, 1, -1, 1, 1, -1, 0, 0, 0};
    SECTION("scale tensor") {
        Matrix const m = quantize(W, Format::ternary());
        REQUIRE(m.scales.size() == 1);
        CHECK(std::bit_cast<std::uint32_t>(m.scales[0]) == 0x3E32B021u);
        CHECK(ternary_of(m) == t);
        auto const y = apply(m, kXt);
        std::vector<double> const want = {-0.26175, 0.26175, -0.78525, 0.5235};
        for (std::size_t o = 0; o < 4; ++o) CHECK(y[o] == Approx(want[o]).epsilon(1e-6));
        CHECK(name(m.format, 5) == "ternary-2b-tensor");

        CHECK(pack_ternary(m) == std::vector<std::uint8_t>{0x26, 0x55, 0x89, 0x54, 0x24, 0x56, 0x52, 0x55});
        Matrix b3 = m;
        b3.format.packing = TernaryPacking::b3;
        CHECK(pack_ternary(b3) == std::vector<std::uint8_t>{0xDC, 0x95, 0x32, 0xB9});
        CHECK(name(b3.format, 5) == "ternary-b3-tensor");

        // Both packings read back to the same matrix, bit for bit.
        for (Matrix const* p : {&m, static_cast<Matrix const*>(&b3)}) {
            auto const bytes = pack_ternary(*p);
            Matrix const back = unpack_ternary(kSrc, bytes, 4, ternary_row_bytes(p->format.packing, 5), p->scales, p->format, 4, 5);
            CHECK(back.codes == p->codes);
            CHECK(back.scales == p->scales);
        }
        // HF BitNet: all four rows in one packed row; autobitlinear multiplies by weight_scale.
        std::vector<std::uint8_t> const hf = {0x86, 0x19, 0x62, 0x48, 0x61};
        Matrix const h = unpack_bitnet(kSrc, hf, 1, 5, m.scales[0], false, 4, 5);
        CHECK(h.codes == m.codes);
        CHECK(h.scales == m.scales);
        // bitlinear (the default) divides: s = fl32(1 / weight_scale), one rounding.
        Matrix const hb = unpack_bitnet(kSrc, hf, 1, 5, 3.0f, true, 4, 5);
        CHECK(hb.scales == std::vector<float>{1.0f / 3.0f});
        CHECK(hb.deq(0, 0) == 1.0f / 3.0f);
    }
    SECTION("scale channel") {
        Matrix const m = quantize(W, Format::ternary(TernaryScale::channel));
        std::vector<std::uint32_t> bits;
        for (float s : m.scales) bits.push_back(std::bit_cast<std::uint32_t>(s));
        CHECK(bits == std::vector<std::uint32_t>{0x3E322D0Fu, 0x3E322D0Fu, 0x3E5D2F1Au, 0x3E09374Cu});
        std::vector<int> tc = t;
        tc[18] = 1;  // row 3: 0.08 / 0.134 = 0.597 rounds to 1
        CHECK(ternary_of(m) == tc);
        auto const y = apply(m, kXt);
        std::vector<double> const want = {-0.261, 0.261, -0.972, 0.804};
        for (std::size_t o = 0; o < 4; ++o) CHECK(y[o] == Approx(want[o]).epsilon(1e-6));
        CHECK(name(m.format, 5) == "ternary-2b-channel");
    }
    SECTION("scale group, and a zero unit keeps s = 1e-5") {
        std::vector<float> w(8 * 64, 0.0f);
        for (std::size_t i = 64; i < w.size(); ++i) w[i] = 0.01f * float(int(i % 7) - 3);
        Matrix const m = quantize(MatrixView<float const>(w.data(), 8, 64), Format::ternary(TernaryScale::group, 32));
        CHECK(name(m.format, 64) == "ternary-2b-g32");
        REQUIRE(m.scales.size() == 16);
        CHECK(m.scales[0] == 1e-5f);  // row 0 is all zeros
        CHECK(m.codes[0] == 1);
        for (std::int64_t o = 1; o < 8; ++o)
            for (std::int64_t g = 0; g < 2; ++g) {
                double sum = 0;
                for (std::int64_t i = 32 * g; i < 32 * g + 32; ++i) sum += std::fabs(double(w[std::size_t(o * 64 + i)]));
                CHECK(m.scales[std::size_t(o * 2 + g)] == static_cast<float>(sum / 32.0));
            }
    }
}

TEST_CASE("the b3 byte code round-trips all 243 values and rejects exactly the 13 non-codes", "[quant][ternary]") {
    for (unsigned N = 0; N < 243; ++N) {
        std::uint8_t u[5];
        for (int n = 4, v = int(N); n >= 0; --n, v /= 3) u[n] = std::uint8_t(v % 3);
        std::uint8_t const q = ternary_b3_encode(u);
        CHECK(q == (256 * N + 242) / 243);
        std::uint8_t back[5];
        ternary_b3_decode(q, back);
        CHECK(std::vector<std::uint8_t>(back, back + 5) == std::vector<std::uint8_t>(u, u + 5));
    }
    std::vector<unsigned> bad;
    for (unsigned b = 0; b < 256; ++b) {
        std::uint8_t u[5];
        ternary_b3_decode(std::uint8_t(b), u);
        if (ternary_b3_encode(u) != b) bad.push_back(b);
    }
    CHECK(bad == std::vector<unsigned>{0x01, 0x14, 0x28, 0x3C, 0x4F, 0x63, 0x77, 0x8A, 0x9E, 0xB2, 0xC5, 0xD9, 0xED});
    // Random matrices through both packings, odd column counts (pad fields) included.
    std::mt19937_64 rng(7);
    for (std::int64_t C : {1, 3, 4, 5, 6, 9, 10, 33}) {
        std::vector<float> w = smoe_test::normal(rng, std::size_t(3 * C), 1.0);
        for (auto p : {TernaryPacking::p2b, TernaryPacking::b3}) {
            Matrix const m = quantize(MatrixView<float const>(w.data(), 3, C), Format::ternary(TernaryScale::channel, 0, p));
            auto const bytes = pack_ternary(m);
            CHECK(std::int64_t(bytes.size()) == 3 * ternary_row_bytes(p, C));
            CHECK(unpack_ternary(kSrc, bytes, 3, ternary_row_bytes(p, C), m.scales, m.format, 3, C).codes == m.codes);
        }
    }
}

TEST_CASE("ternary files: every row of research.md section 7.5's error table, with its message", "[quant][ternary][errors]") {
    Matrix const m = quantize(MatrixView<float const>(kW.data(), 4, 5), Format::ternary());
    auto bytes = pack_ternary(m);
    std::string const P = "'model.layers.0.mlp.experts.3.down_proj.";
    SECTION("2-bit code 3") {
        bytes[2] = static_cast<std::uint8_t>(bytes[2] | 0x30);  // row 1, byte 0, field 2
        CHECK_THROWS_WITH(unpack_ternary(kSrc, bytes, 4, 2, m.scales, m.format, 4, 5),
                          Contains("model.safetensors: tensor " + P + "weight_ternary' element [1, 0] field 2' = 3: expected 0..2 (t + 1)"));
        auto pad = pack_ternary(m);
        pad[1] = 0xFF;  // row 0's last byte: fields 1..3 are past C = 5 and ignored, field 0 is column 4
        CHECK_THROWS_WITH(unpack_ternary(kSrc, pad, 4, 2, m.scales, m.format, 4, 5), Contains("element [0, 1] field 0' = 3"));
        pad[1] = 0xFD;  // field 0 = 1 (t = 0), the pad fields 3: read without complaint
        CHECK(unpack_ternary(kSrc, pad, 4, 2, m.scales, m.format, 4, 5).codes[4] == 1);
    }
    SECTION("base-3 byte") {
        Format f = m.format;
        f.packing = TernaryPacking::b3;
        std::vector<std::uint8_t> b3 = {0xDC, 0x95, 0x14, 0xB9};
        CHECK_THROWS_WITH(unpack_ternary(kSrc, b3, 4, 1, m.scales, f, 4, 5),
                          Contains("tensor " + P + "weight_ternary' element [2, 0]' = 0x14: expected a base-3 code byte (not one of the 13 non-codes)"));
    }
    SECTION("scale") {
        for (float bad : {0.0f, -1.0f, std::numeric_limits<float>::quiet_NaN()}) {
            std::vector<float> s = {bad};
            CHECK_THROWS_WITH(unpack_ternary(kSrc, bytes, 4, 2, s, m.format, 4, 5),
                              Contains("tensor " + P + "weight_scale' element [0, 0]'") && Contains("expected a finite scale > 0"));
        }
        CHECK_THROWS_WITH(unpack_bitnet(kSrc, std::vector<std::uint8_t>(5, 0x55), 1, 5, 0.0f, true, 4, 5),
                          Contains("weight_scale' element [0]' = 0: expected a finite scale > 0"));
    }
    SECTION("shape") {
        CHECK_THROWS_WITH(unpack_ternary(kSrc, std::vector<std::uint8_t>(12, 0x55), 4, 3, m.scales, m.format, 4, 5),
                          Contains("tensor " + P + "weight_ternary' shape' = [4, 3]: expected [R, ceil(C/4)] = [4, 2] (2b) or [R, ceil(C/5)] = [4, 1] (b3)"));
        CHECK_THROWS_WITH(unpack_ternary(kSrc, bytes, 4, 2, std::vector<float>{1, 1}, m.format, 4, 5),
                          Contains("weight_scale' shape'") && Contains("[1]"));
    }
    SECTION("group size") {
        CHECK_THROWS_WITH(unpack_ternary(kSrc, bytes, 4, 2, m.scales, Format::ternary(TernaryScale::group, 6), 4, 5),
                          Contains("key 'quantization_config.group_size'' = 6: expected a divisor of in_features 5"));
        CHECK_THROWS_WITH(Format::ternary(TernaryScale::group, 3).check("expert 0 down", 4, 5), Contains("'expert 0 down.group' = 3"));
    }
    SECTION("HF BitNet rows") {
        CHECK_THROWS_WITH(unpack_bitnet(kSrc, std::vector<std::uint8_t>(10, 0x55), 2, 5, 1.0f, true, 6, 5),
                          Contains("tensor " + P + "weight' shape' = [2, 5] with out_features 6: expected [out_features / 4, in_features] and "
                                                   "out_features % 4 = 0"));
        std::vector<std::uint8_t> hf = {0x86, 0x19, 0xE2, 0x48, 0x61};  // column 2, row 3: u = 3
        CHECK_THROWS_WITH(unpack_bitnet(kSrc, hf, 1, 5, 1.0f, true, 4, 5), Contains("weight' element [0, 2] field 3' = 3"));
    }
    SECTION("canonical codes past 2") {
        Matrix bad = m;
        bad.codes[7] = 3;
        CHECK_THROWS_WITH(bad.validate("expert 1 gate"), Contains("'expert 1 gate.codes element [1, 2]' = 3: expected a ternary code 0..2 (t + 1)"));
    }
}

namespace {

using nlohmann::json;
using smoe::io::Dtype;

// One ternary matrix under module P through the checkpoint loader (quant_config + quant_tensors).
Matrix load_one(smoe::io::TensorMap const& m, json const& qc, std::string const& P, std::int64_t R, std::int64_t C) {
    auto const q = smoe::io::parse_quant_config(qc, "config.json");
    return smoe::io::read_matrix(smoe::io::plan_matrix(m, &q, P, {R}, {C}, "ckpt", "config.json"));
}

}  // namespace

TEST_CASE("ternary checkpoints: smoe-ternary and HF BitNet files through the loader, with research.md section 7.5's errors", "[quant][ternary][io]") {
    std::string const P = "model.layers.0.mlp.experts.3.down_proj";
    MatrixView<float const> const W(kW.data(), 4, 5);
    SECTION("smoe-native, every packing and scale unit") {
        for (auto const& [fmt, cfg] : std::vector<std::pair<Format, json>>{
                 {Format::ternary(), {{"quant_method", "smoe-ternary"}, {"packing", "2b"}, {"scale", "tensor"}}},
                 {Format::ternary(TernaryScale::channel, 0, TernaryPacking::b3), {{"quant_method", "smoe-ternary"}, {"packing", "b3"}, {"scale", "channel"}}}}) {
            Matrix const m = quantize(W, fmt);
            auto const bytes = pack_ternary(m);
            smoe::io::TensorMap map;
            map.add_values(P + ".weight_ternary", Dtype::U8, {4, ternary_row_bytes(fmt.packing, 5)}, std::span<std::uint8_t const>(bytes));
            std::vector<std::int64_t> sshape = fmt.ternary_tensor() ? std::vector<std::int64_t>{1} : std::vector<std::int64_t>{4, 1};
            map.add_values(P + ".weight_scale", Dtype::F32, sshape, std::span<float const>(m.scales));
            Matrix const got = load_one(map, cfg, P, 4, 5);
            CHECK(name(got.format, 5) == name(fmt, 5));
            CHECK(got.codes == m.codes);
            CHECK(got.scales == m.scales);
        }
        std::vector<float> w(4 * 64);
        for (std::size_t i = 0; i < w.size(); ++i) w[i] = 0.01f * float(int(i * 7 % 11) - 5);
        Matrix const m = quantize(MatrixView<float const>(w.data(), 4, 64), Format::ternary(TernaryScale::group, 32));
        auto const bytes = pack_ternary(m);
        smoe::io::TensorMap map;
        map.add_values(P + ".weight_ternary", Dtype::U8, {4, 16}, std::span<std::uint8_t const>(bytes));
        map.add_values(P + ".weight_scale", Dtype::F32, {4, 2}, std::span<float const>(m.scales));
        json const cfg = {{"quant_method", "smoe-ternary"}, {"scale", "group"}, {"group_size", 32}};
        Matrix const got = load_one(map, cfg, P, 4, 64);
        CHECK(name(got.format, 64) == "ternary-2b-g32");
        CHECK(got.codes == m.codes);
        json bad = cfg;
        bad["group_size"] = 6;
        CHECK_THROWS_WITH(load_one(map, bad, P, 4, 64),
                          Contains("config.json: key 'quantization_config.group_size'' = 6: expected a divisor of in_features 64"));
    }
    SECTION("HF BitNet: bitlinear divides, autobitlinear multiplies") {
        std::vector<std::uint8_t> const hf = {0x86, 0x19, 0x62, 0x48, 0x61};
        std::vector<float> const ws = {4.0f};
        smoe::io::TensorMap map;
        map.add_values(P + ".weight", Dtype::U8, {1, 5}, std::span<std::uint8_t const>(hf));
        map.add_values(P + ".weight_scale", Dtype::F32, {1}, std::span<float const>(ws));
        Matrix const div = load_one(map, {{"quant_method", "bitnet"}}, P, 4, 5);
        Matrix const mul = load_one(map, {{"quant_method", "bitnet"}, {"linear_class", "autobitlinear"}}, P, 4, 5);
        Matrix const ref = quantize(W, Format::ternary());
        CHECK(div.codes == ref.codes);
        CHECK(div.scales == std::vector<float>{0.25f});
        CHECK(mul.scales == std::vector<float>{4.0f});
        CHECK_THROWS_WITH(load_one(map, {{"quant_method", "bitnet"}}, P, 8, 5),
                          Contains("tensor '" + P + ".weight' shape' = [1, 5] with out_features 8: expected [out_features / 4, in_features]"));
        CHECK_THROWS_WITH(load_one(map, {{"quant_method", "bitnet"}, {"linear_class", "bit"}}, P, 4, 5),
                          Contains("key 'quantization_config.linear_class'' = bit: expected \"bitlinear\" or \"autobitlinear\""));
    }
    SECTION("file errors: shape, dtype, scale, a 2-bit code 3, a base-3 non-code, a missing scale") {
        Matrix const m = quantize(W, Format::ternary());
        auto bytes = pack_ternary(m);
        json const cfg = {{"quant_method", "smoe-ternary"}};
        auto with = [&](std::vector<std::uint8_t> const& b, std::vector<std::int64_t> shape, std::vector<float> const& sc, bool scale = true) {
            smoe::io::TensorMap map;
            map.add_values(P + ".weight_ternary", Dtype::U8, std::move(shape), std::span<std::uint8_t const>(b));
            if (scale) map.add_values(P + ".weight_scale", Dtype::F32, {static_cast<std::int64_t>(sc.size())}, std::span<float const>(sc));
            return map;
        };
        CHECK_THROWS_WITH(load_one(with(std::vector<std::uint8_t>(12, 0x55), {4, 3}, m.scales), cfg, P, 4, 5),
                          Contains("tensor '" + P + ".weight_ternary' shape' = [4, 3]: expected [4, 2] = [R, ceil(C/4)] (2b)"));
        CHECK_THROWS_WITH(load_one(with(bytes, {4, 2}, {-1.0f}), cfg, P, 4, 5),
                          Contains(".weight_scale' element [0, 0]' = -1: expected a finite scale > 0"));
        CHECK_THROWS_WITH(load_one(with(bytes, {4, 2}, m.scales, false), cfg, P, 4, 5), Contains(".weight_scale'' = missing"));
        bytes[2] = static_cast<std::uint8_t>(bytes[2] | 0x30);
        CHECK_THROWS_WITH(load_one(with(bytes, {4, 2}, m.scales), cfg, P, 4, 5), Contains(".weight_ternary' element [1, 0] field 2' = 3"));
        std::vector<std::uint8_t> const b3 = {0xDC, 0x95, 0x14, 0xB9};
        CHECK_THROWS_WITH(load_one(with(b3, {4, 1}, m.scales), {{"quant_method", "smoe-ternary"}, {"packing", "b3"}}, P, 4, 5),
                          Contains(".weight_ternary' element [2, 0]' = 0x14: expected a base-3 code byte"));
        CHECK_THROWS_WITH(load_one(with(bytes, {4, 2}, m.scales), {{"quant_method", "smoe-ternary"}, {"packing", "3b"}}, P, 4, 5),
                          Contains("key 'quantization_config.packing'' = 3b"));
    }
}

TEST_CASE("a MoTE layer: ternary routed experts quantised at load next to bf16 ones, the fp32 layer's bits on W_deq", "[quant][ternary][layer]") {
    std::mt19937_64 rng(18);
    std::int64_t const d = 48, f = 40, E = 4, T = 21;
    auto const w1 = smoe_test::normal(rng, std::size_t(E * f * d), 0.1), w3 = smoe_test::normal(rng, std::size_t(E * f * d), 0.1),
               w2 = smoe_test::normal(rng, std::size_t(E * d * f), 0.1), gate = smoe_test::normal(rng, std::size_t(E * d), 0.5),
               x = smoe_test::normal(rng, std::size_t(T * d), 1.0);
    std::vector<Format> gu = {Format::ternary(), Format::ternary(TernaryScale::group, 16), Format::bf16(), Format::ternary(TernaryScale::channel)};
    std::vector<Format> dn = {Format::ternary(), Format::ternary(TernaryScale::group, 8, TernaryPacking::b3), Format::bf16(), Format::ternary()};
    smoe::expert::SwiGLUConfig const ec{d, f, E};
    auto const qw = smoe::expert::QuantSwiGLUWeights::quantized(w1.data(), w3.data(), w2.data(), ec, gu, dn);
    using QLayer = smoe::MoELayer<smoe::router::TopK, smoe::expert::QuantSwiGLU, smoe::balance::None>;
    QLayer q({.router = {.num_experts = E, .top_k = 2}, .expert = ec, .max_tokens = T}, {MatrixView<float const>(gate.data(), E, d), {}, qw});
    CHECK(q.experts().format_name(0) == "ternary-2b-tensor");
    CHECK(q.experts().format_name(1) == "gate/up ternary-2b-g16, down ternary-b3-g8");
    CHECK(q.experts().format_name(3) == "gate/up ternary-2b-channel, down ternary-2b-tensor");
    // The dense twin: every expert's W_deq in fp32.
    std::vector<float> d1, d3, d2;
    for (std::int64_t e = 0; e < E; ++e) {
        auto const ex = qw.load(e);
        for (auto const* p : {&ex.gate, &ex.up, &ex.down}) {
            auto const v = p->dequantize();
            auto& dst = p == &ex.gate ? d1 : p == &ex.up ? d3 : d2;
            dst.insert(dst.end(), v.begin(), v.end());
        }
    }
    using FLayer = smoe::MoELayer<smoe::router::TopK, smoe::expert::SwiGLU<float>, smoe::balance::None>;
    FLayer fl({.router = {.num_experts = E, .top_k = 2}, .expert = ec, .max_tokens = T},
              {MatrixView<float const>(gate.data(), E, d), {}, smoe::expert::SwiGLUWeights<float>::dense(d1.data(), d3.data(), d2.data(), ec)});
    std::vector<float> yq(std::size_t(T * d)), yf(yq.size());
    smoe::DefaultThreadPool pool(2);
    q.set_thread_pool(pool);
    q.forward(MatrixView<float const>(x.data(), T, d), MatrixView<float>(yq.data(), T, d));
    fl.forward(MatrixView<float const>(x.data(), T, d), MatrixView<float>(yf.data(), T, d));
    CHECK(yq == yf);
}

// ---------------------------------------------------------------------------------------------------------
// expert::Film (research.md §5.1)

namespace {

using FilmExpert = smoe::expert::Film<smoe::expert::SwiGLU<float>>;
using FilmLayer = smoe::MoELayer<smoe::router::TopK, FilmExpert, smoe::balance::None>;

// fp64: Σ_slots w · W2 (γ_e ⊙ h + β_e) per token, on the routing r.
std::vector<double> film_oracle(smoe::RoutingResult const& r, std::vector<float> const& w1, std::vector<float> const& w3, std::vector<float> const& w2,
                                std::vector<float> const& g, std::vector<float> const& b, std::vector<float> const& x, std::int64_t d, std::int64_t f) {
    std::vector<double> y(std::size_t(r.num_tokens * d), 0.0);
    for (std::int64_t t = 0; t < r.num_tokens; ++t) {
        std::vector<double> h(static_cast<std::size_t>(f));
        for (std::int64_t i = 0; i < f; ++i) {
            double a = 0, u = 0;
            for (std::int64_t j = 0; j < d; ++j) {
                a += double(w1[std::size_t(i * d + j)]) * x[std::size_t(t * d + j)];
                u += double(w3[std::size_t(i * d + j)]) * x[std::size_t(t * d + j)];
            }
            h[std::size_t(i)] = a / (1 + std::exp(-a)) * u;
        }
        for (std::int64_t s = 0; s < r.k; ++s) {
            std::int64_t const e = r.expert_ids(t, s);
            if (e < 0) continue;
            for (std::int64_t o = 0; o < d; ++o) {
                double acc = 0;
                for (std::int64_t i = 0; i < f; ++i)
                    acc += double(w2[std::size_t(o * f + i)]) * (double(g[std::size_t(e * f + i)]) * h[std::size_t(i)] + double(b[std::size_t(e * f + i)]));
                y[std::size_t(t * d + o)] += double(r.expert_weights(t, s)) * acc;
            }
        }
    }
    return y;
}

}  // namespace

TEST_CASE("film experts reproduce research.md section 5.1's worked example through MoELayer and layer::FilmMerged", "[expert][film][spec]") {
    std::int64_t const d = 3, f = 2, E = 3;
    smoe_test::FormulaExperts const ffn = smoe_test::formula_experts(1, d, f);
    std::vector<float> const gamma = {0.5f, 1, 0.75f, 1.25f, 1, 1.5f}, beta = {-0.25f, -0.125f, 0.125f, 0.25f, -0.125f, 0};
    std::vector<float> const gate = {-1, 0, 1, -0.5f, 0.5f, -1, 0, 1, -0.5f};
    std::vector<float> const x = {1, -0.5f, 0.25f, -1, 0.5f, 2};
    smoe::expert::SwiGLUConfig const inner{d, f, 1};
    FilmLayer layer({.router = {.num_experts = E, .top_k = 2, .norm_topk_prob = true}, .expert = {inner, E}, .max_tokens = 2},
                    {MatrixView<float const>(gate.data(), E, d), {},
                     {smoe::expert::SwiGLUWeights<float>::dense(ffn.w1.data(), ffn.w3.data(), ffn.w2.data(), inner),
                      MatrixView<float const>(gamma.data(), E, f), MatrixView<float const>(beta.data(), E, f)}});
    std::vector<float> y(6);
    auto const r = layer.forward(MatrixView<float const>(x.data(), 2, d), MatrixView<float>(y.data(), 2, d));
    CHECK(r.expert_ids(0, 0) == 2);
    CHECK(r.expert_ids(0, 1) == 0);
    CHECK(r.expert_weights(0, 0) == Approx(0.531209).epsilon(1e-5));
    CHECK(r.expert_ids(1, 0) == 0);
    CHECK(r.expert_ids(1, 1) == 2);
    CHECK(r.expert_weights(1, 0) == Approx(0.970688).epsilon(1e-5));
    std::vector<double> const want = {0.101978, 0.0293892, -0.0431997, 0.150154, 0.0487688, -0.0526159};
    for (std::size_t i = 0; i < 6; ++i) CHECK(y[i] == Approx(want[i]).epsilon(1e-5));

    // The merged form: one FFN pass per token on Γ ⊙ h + B.
    smoe::layer::FilmMerged<smoe::expert::SwiGLU<float>> merged(
        {.router = {.num_experts = E, .top_k = 2, .norm_topk_prob = true}, .expert = {inner, E}, .max_tokens = 2},
        {MatrixView<float const>(gate.data(), E, d),
         {smoe::expert::SwiGLUWeights<float>::dense(ffn.w1.data(), ffn.w3.data(), ffn.w2.data(), inner), MatrixView<float const>(gamma.data(), E, f),
          MatrixView<float const>(beta.data(), E, f)}});
    std::vector<float> ym(6);
    auto const rm = merged.forward(MatrixView<float const>(x.data(), 2, d), MatrixView<float>(ym.data(), 2, d));
    CHECK(rm.expert_ids(0, 0) == 2);
    for (std::size_t i = 0; i < 6; ++i) CHECK(ym[i] == Approx(want[i]).epsilon(1e-5));
}

TEST_CASE("film experts, per slot and merged, agree with the fp64 oracle on random shapes, and refuse bad weights by name", "[expert][film][random][errors]") {
    std::mt19937_64 rng(51);
    for (auto const& [d, f, E, T] : std::vector<std::array<std::int64_t, 4>>{{16, 24, 4, 9}, {33, 19, 7, 70}, {8, 40, 3, 1}, {8, 8, 2, 0}}) {
        INFO("d " << d << ", f " << f << ", E " << E << ", T " << T);
        auto const w1 = smoe_test::normal(rng, std::size_t(f * d), 0.3), w3 = smoe_test::normal(rng, std::size_t(f * d), 0.3),
                   w2 = smoe_test::normal(rng, std::size_t(d * f), 0.3), g = smoe_test::normal(rng, std::size_t(E * f), 1.0),
                   b = smoe_test::normal(rng, std::size_t(E * f), 0.1), gate = smoe_test::normal(rng, std::size_t(E * d), 0.5),
                   x = smoe_test::normal(rng, std::size_t(T * d), 1.0);
        smoe::expert::SwiGLUConfig const inner{d, f, 1};
        FilmLayer::Weights const w{MatrixView<float const>(gate.data(), E, d), {},
                                   {smoe::expert::SwiGLUWeights<float>::dense(w1.data(), w3.data(), w2.data(), inner),
                                    MatrixView<float const>(g.data(), E, f), MatrixView<float const>(b.data(), E, f)}};
        FilmLayer layer({.router = {.num_experts = E, .top_k = 2}, .expert = {inner, E}, .max_tokens = std::max<std::int64_t>(T, 1)}, w);
        std::vector<float> y(std::size_t(T * d));
        auto const r = layer.forward(MatrixView<float const>(x.data(), T, d), MatrixView<float>(y.data(), T, d));
        auto const ref = film_oracle(r, w1, w3, w2, g, b, x, d, f);
        smoe::layer::FilmMerged<smoe::expert::SwiGLU<float>> merged(
            {.router = {.num_experts = E, .top_k = 2}, .expert = {inner, E}, .max_tokens = std::max<std::int64_t>(T, 1)}, {w.gate, w.experts});
        std::vector<float> ym(std::size_t(T * d));
        merged.forward(MatrixView<float const>(x.data(), T, d), MatrixView<float>(ym.data(), T, d));
        for (std::int64_t t = 0; t < T; ++t) {
            double err = 0, mag = 0;
            for (std::int64_t i = 0; i < d; ++i) {
                err = std::max(err, std::fabs(double(y[std::size_t(t * d + i)]) - ref[std::size_t(t * d + i)]));
                mag = std::max(mag, std::fabs(ref[std::size_t(t * d + i)]));
            }
            CHECK(err <= 1e-5 * std::max(mag, 1e-30));
            double errm = 0;
            for (std::int64_t i = 0; i < d; ++i) errm = std::max(errm, std::fabs(double(ym[std::size_t(t * d + i)]) - ref[std::size_t(t * d + i)]));
            CHECK(errm <= 1e-5 * std::max(mag, 1e-30));  // the merged form, within the same bound
        }
    }
    std::vector<float> const w(64, 0.1f), g(8, 1.0f);
    std::vector<float> bad = g;
    bad[5] = std::numeric_limits<float>::infinity();
    smoe::expert::SwiGLUConfig const inner{4, 4, 1};
    auto const iw = smoe::expert::SwiGLUWeights<float>::dense(w.data(), w.data(), w.data(), inner);
    CHECK_THROWS_WITH(FilmExpert({inner, 2}, {iw, MatrixView<float const>(g.data(), 2, 4), MatrixView<float const>(bad.data(), 2, 4)}),
                      Contains("'film_beta' = inf at expert 1, column 1"));
    CHECK_THROWS_WITH(FilmExpert({inner, 2}, {iw, MatrixView<float const>(g.data(), 1, 8), MatrixView<float const>(g.data(), 2, 4)}),
                      Contains("'film_gamma'"));
    CHECK_THROWS_WITH(FilmExpert({{4, 4, 2}, 2}, {iw, MatrixView<float const>(g.data(), 2, 4), MatrixView<float const>(g.data(), 2, 4)}),
                      Contains("'inner.num_experts' = 2"));
}

// ---------------------------------------------------------------------------------------------------------
// expert::FilmLinear and layer::FilmBlock (research.md §5.2, MoFME as released)

namespace {

// The §5.2 worked example's tensors, row-major as printed.
struct MofmeExample {
    std::vector<float> ln_w{1, 1, 1}, ln_b{0, 0, 0};
    std::vector<float> A{-0.5f, 0, 0.5f, -0.25f, 0.25f, -0.5f, 0, 0.5f, -0.25f}, a{0.125f, 0, -0.125f};
    std::vector<float> B{-0.25f, 0, 0.25f, 0.25f, 0.5f, -0.5f, -0.5f, -0.25f, 0}, b{0, 0.25f, 0};
    std::vector<float> R{-0.5f, 0, 0.5f, 0.5f, 1, -1, -1, -0.5f, 0}, r{0, 0.1f, -0.1f};
    std::vector<float> U1{-0.5f, -0.25f, 0, -0.25f, 0, 0.25f, 0, 0.25f, 0.5f, 0.25f, 0.5f, -0.5f}, c1{0, 0, 0, 0};
    std::vector<float> U2{-0.25f, 0.25f, -0.5f, 0, 0, 0.5f, -0.25f, 0.25f, 0.25f, -0.5f, 0, 0.5f}, c2{0, 0, 0.05f};
    std::vector<float> P{-0.25f, -0.125f, 0,      -0.125f, 0,      0.125f, 0,     0.125f, 0.25f,   // P_0
                         -0.125f, 0,      0.125f, 0,       0.125f, 0.25f,  0.125f, 0.25f, -0.25f,  // P_1
                         0,      0.125f,  0.25f,  0.125f,  0.25f, -0.25f,  0.25f, -0.25f, -0.125f};  // P_2
    std::vector<float> p{0.75f, 1, 1.25f, 1, 1.25f, 0.75f, 1.25f, 0.75f, 1};
    std::vector<float> Q{-0.25f, 0, 0.25f,   -0.125f, 0.125f, -0.25f, 0,      0.25f,   -0.125f,  // Q_0
                         0,      0.25f, -0.125f, 0.125f, -0.25f, 0,     0.25f,  -0.125f, 0.125f,   // Q_1
                         0.25f, -0.125f, 0.125f, -0.25f, 0,      0.25f, -0.125f, 0.125f, -0.25f};  // Q_2
    std::vector<float> q{-0.25f, 0, 0.25f, -0.125f, 0.125f, -0.25f, 0, 0.25f, -0.125f};
    std::vector<float> x{1, -0.5f, 0.25f, -1, 0.5f, 2};  // x0, x1 (research.md §0)

    smoe::expert::FilmLinearWeights experts() const { return {P, p, Q, q}; }
    smoe::layer::FilmBlockWeights weights() const {
        return {ln_w, ln_b, MatrixView<float const>(A.data(), 3, 3), MatrixView<float const>(B.data(), 3, 3), a, b,
                MatrixView<float const>(R.data(), 3, 3), r, MatrixView<float const>(U1.data(), 4, 3), c1,
                MatrixView<float const>(U2.data(), 3, 4), c2, experts()};
    }
};

void check_near(std::vector<float> const& got, std::vector<double> const& want, double eps = 1e-5) {
    REQUIRE(got.size() == want.size());
    for (std::size_t i = 0; i < got.size(); ++i) {
        INFO("element " << i);
        CHECK(got[i] == Approx(want[i]).epsilon(eps).margin(1e-7));
    }
}

}  // namespace

TEST_CASE("film_linear modules reproduce research.md section 5.2's g_e(h) and GELU(h)", "[expert][film][spec]") {
    MofmeExample const ex;
    std::vector<float> const h = {0.0467066f, 0.00929417f, 0.0520283f, 0.753351f, 0.0777318f, -0.0879711f};
    std::vector<float> const ones = {1, 1};
    smoe::expert::FilmLinear const intended({.hidden_size = 3, .num_experts = 3, .expert0_gelu = false}, ex.experts());
    smoe::expert::FilmLinear const released({.hidden_size = 3, .num_experts = 3}, ex.experts());
    std::vector<std::vector<double>> const g = {{-0.214239, -0.00838327, 0.311593, -0.0445216, 0.00709742, 0.171545},
                                                {-0.0824423, 0.140264, -0.194212, 0.579554, 0.295946, -0.160282},
                                                {0.0760634, 0.258256, -0.0905071, 1.10007, 0.108508, -0.291257}};
    smoe::WorkspaceBuffer buf(intended.workspace_size(2));
    auto run = [&](smoe::expert::FilmLinear const& f, std::int64_t e) {
        std::vector<float> out(6);
        smoe::Workspace ws = buf.workspace();
        f.run(xsimd::default_arch{}, e, MatrixView<float const>(h.data(), 2, 3), ones, MatrixView<float>(out.data(), 2, 3), ws);
        return out;
    };
    for (std::int64_t e = 0; e < 3; ++e) {
        INFO("module " << e);
        check_near(run(intended, e), g[std::size_t(e)], 2e-5);
    }
    check_near(run(released, 0), {0.0242233, 0.00468154, 0.0270936, 0.583381, 0.041274, -0.0409021}, 2e-5);
    check_near(run(released, 2), g[1], 2e-5);  // column e >= 1 is module e - 1
}

TEST_CASE("film_block reproduces research.md section 5.2's worked example in both indexings", "[layer][film][spec]") {
    MofmeExample const ex;
    for (bool const rel : {true, false}) {
        INFO((rel ? "released" : "intended"));
        smoe::layer::FilmBlockConfig const cfg{.hidden_size = 3, .adaptor_size = 4, .num_experts = 3, .top_k = 2, .expert0_gelu = rel, .max_tokens = 2};
        smoe::layer::FilmBlock<> block(cfg, ex.weights());
        std::vector<float> y(6);
        auto const r = block.forward(MatrixView<float const>(ex.x.data(), 2, 3), MatrixView<float>(y.data(), 2, 3));
        REQUIRE(r.k == 2);
        CHECK(r.expert_ids(0, 0) == 1);
        CHECK(r.expert_ids(0, 1) == 0);
        CHECK(r.expert_weights(0, 0) == Approx(0.556014).epsilon(1e-5));
        CHECK(r.expert_weights(0, 1) == Approx(0.443986).epsilon(1e-5));
        CHECK(r.expert_ids(1, 0) == 0);
        CHECK(r.expert_ids(1, 1) == 2);
        CHECK(r.expert_weights(1, 0) == Approx(0.700567).epsilon(1e-5));
        if (rel)
            check_near(y, {-0.022124, -0.00658586, 0.0103853, 0.0143136, 0.00146356, 0.128094});
        else
            check_near(y, {-0.00988471, 0.00509825, 0.0423986, 0.00286832, -0.00881119, 0.0687617});
        auto const ref = smoe::reference::film_block(cfg, ex.weights(), MatrixView<float const>(ex.x.data(), 2, 3));
        for (std::size_t i = 0; i < 6; ++i) CHECK(ref.y[i] == Approx(y[i]).epsilon(1e-5));
    }
}

TEST_CASE("film_block agrees with the fp64 oracle on random shapes, T = 0 included, and names bad input", "[layer][film][random][errors]") {
    std::mt19937_64 rng(52);
    for (auto const& [d, a, E, k, T] : std::vector<std::array<std::int64_t, 5>>{{16, 0, 4, 2, 9}, {33, 20, 7, 3, 70}, {8, 32, 3, 1, 1}, {8, 8, 2, 2, 0}}) {
        INFO("d " << d << ", a " << a << ", E " << E << ", k " << k << ", T " << T);
        smoe::layer::FilmBlockConfig const cfg{.hidden_size = d, .adaptor_size = a, .num_experts = E, .top_k = k, .max_tokens = std::max<std::int64_t>(T, 1)};
        std::int64_t const A = cfg.adaptor();
        auto nrm = [&](std::int64_t n, double sd) { return smoe_test::normal(rng, std::size_t(n), sd); };
        auto const lnw = nrm(d, 0.2), lnb = nrm(d, 0.1), Aw = nrm(d * d, 0.3), aw = nrm(d, 0.1), Bw = nrm(d * d, 0.3), bw = nrm(d, 0.1),
                   Rw = nrm(E * d, 0.5), rw = nrm(E, 0.1), U1 = nrm(A * d, 0.3), c1 = nrm(A, 0.1), U2 = nrm(d * A, 0.3), c2 = nrm(d, 0.1),
                   P = nrm(E * d * d, 0.2), p = nrm(E * d, 0.5), Q = nrm(E * d * d, 0.2), q = nrm(E * d, 0.1), x = nrm(T * d, 1.0);
        std::vector<float> lnw1 = lnw;
        for (auto& v : lnw1) v += 1.0f;
        smoe::layer::FilmBlockWeights const w{lnw1, lnb, MatrixView<float const>(Aw.data(), d, d), MatrixView<float const>(Bw.data(), d, d), aw, bw,
                                              MatrixView<float const>(Rw.data(), E, d), rw, MatrixView<float const>(U1.data(), A, d), c1,
                                              MatrixView<float const>(U2.data(), d, A), c2, {P, p, Q, q}};
        smoe::layer::FilmBlock<> block(cfg, w);
        std::vector<float> y(std::size_t(T * d));
        auto const r = block.forward(MatrixView<float const>(x.data(), T, d), MatrixView<float>(y.data(), T, d));
        auto const ref = smoe::reference::film_block(cfg, w, MatrixView<float const>(x.data(), T, d));
        for (std::int64_t t = 0; t < T; ++t) {
            for (std::int64_t j = 0; j < k; ++j) {
                CHECK(r.expert_ids(t, j) == ref.expert_ids[std::size_t(t * k + j)]);
                CHECK(r.expert_weights(t, j) == Approx(ref.expert_weights[std::size_t(t * k + j)]).epsilon(1e-5));
            }
            double err = 0, mag = 0;
            for (std::int64_t i = 0; i < d; ++i) {
                err = std::max(err, std::fabs(double(y[std::size_t(t * d + i)]) - ref.y[std::size_t(t * d + i)]));
                mag = std::max(mag, std::fabs(ref.y[std::size_t(t * d + i)]));
            }
            CHECK(err <= 2e-5 * mag);
        }
    }
    MofmeExample const ex;
    CHECK_THROWS_WITH(smoe::layer::FilmBlock<>({.hidden_size = 3, .num_experts = 3, .top_k = 4}, ex.weights()), Contains("'top_k' = 4"));
    CHECK_THROWS_WITH(smoe::layer::FilmBlock<>({.hidden_size = 3, .num_experts = 3, .top_k = 2, .layer_norm_eps = 0}, ex.weights()),
                      Contains("'layer_norm_eps' = 0"));
    auto w = ex.weights();
    w.U1 = MatrixView<float const>(ex.U1.data(), 3, 4);
    CHECK_THROWS_WITH(smoe::layer::FilmBlock<>({.hidden_size = 3, .adaptor_size = 4, .num_experts = 3, .top_k = 2}, w), Contains("'U1'"));
    std::vector<float> badp = ex.p;
    badp[4] = std::numeric_limits<float>::quiet_NaN();
    CHECK_THROWS_WITH(smoe::expert::FilmLinear({.hidden_size = 3, .num_experts = 3}, {ex.P, badp, ex.Q, ex.q}), Contains("'film.p' = nan at element 4"));
    CHECK_THROWS_WITH(smoe::expert::FilmLinear({.hidden_size = 3, .num_experts = 2}, ex.experts()), Contains("'film.P' = length 27"));
}
