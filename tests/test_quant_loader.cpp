// Quantised checkpoints through the Hugging Face loader (formats.md §1.2-§1.4, §2.2-§2.3, §3.2, §4,
// §5): config.json's quantization_config, one matrix planned and read from its tensors (the worked
// examples of §1.5, §2.4 and §3.3 bit for bit), whole MoE blocks in each layout against the same block
// stored dense with W_deq computed here from the formulas, and the loader's rows of §5's error table.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include <catch2/catch.hpp>

#include "smoe/io/hf_config.hpp"
#include "smoe/io/hf_moe.hpp"
#include "smoe/io/quant_config.hpp"
#include "smoe/io/quant_tensors.hpp"
#include "smoe/io/tensor_map.hpp"
#include "smoe/quant/quantize.hpp"
#include "smoe/quant/ternary.hpp"

using Catch::Matchers::Contains;
using smoe::io::Dtype;
using smoe::io::HfMoeLayer;
using smoe::io::TensorMap;
using json = nlohmann::json;

namespace {

using i64 = std::int64_t;
using Words = std::vector<std::int32_t>;

// The int4 canonical triple of formats.md §1.1 for W [R, C], group g.
struct Int4 {
    i64 R, C, g;
    std::vector<int> u, z;  // [R, C], [R, G]
    std::vector<float> s;   // [R, G]
    std::vector<std::int32_t> gidx;  // empty: i / g

    i64 G() const { return C / g; }
    i64 group(i64 i) const { return gidx.empty() ? i / g : gidx[static_cast<std::size_t>(i)]; }
    // §1.5's family of matrices; shift 0 is the worked example.
    static Int4 example(i64 R, i64 C, i64 g, bool sym, int shift = 0) {
        Int4 m{R, C, g, {}, {}, {}, {}};
        for (i64 o = 0; o < R; ++o)
            for (i64 i = 0; i < C; ++i) m.u.push_back(int((i + 3 * o + shift) % 16));
        for (i64 o = 0; o < R; ++o)
            for (i64 k = 0; k < C / g; ++k) {
                m.s.push_back(float(double(8 + o) / 128.0 * std::ldexp(1.0, -int(k))));
                m.z.push_back(sym ? 8 : 1 + int((2 * o + 7 * k + shift) % 15));
            }
        return m;
    }
    // W_deq: (u - z) * s, exact in double, rounded once (formats.md §0).
    std::vector<float> deq() const {
        std::vector<float> w;
        for (i64 o = 0; o < R; ++o)
            for (i64 i = 0; i < C; ++i) {
                auto const k = static_cast<std::size_t>(o * G() + group(i));
                w.push_back(float(double(u[static_cast<std::size_t>(o * C + i)] - z[k]) * double(s[k])));
            }
        return w;
    }
    // compressed-tensors weight_packed [R, ceil(C/8)]: column 8w+k in nibble k.
    Words ct_packed() const {
        i64 const W = (C + 7) / 8;
        Words out(static_cast<std::size_t>(R * W), 0);
        for (i64 o = 0; o < R; ++o)
            for (i64 i = 0; i < C; ++i)
                out[static_cast<std::size_t>(o * W + i / 8)] |= std::int32_t(std::uint32_t(u[static_cast<std::size_t>(o * C + i)]) << (4 * (i % 8)));
        return out;
    }
    // Zero points packed along rows: word [w, k], row 8w+j in nibble j, value z + offset.
    Words zeros_by_rows(int offset) const {
        Words out(static_cast<std::size_t>((R + 7) / 8 * G()), 0);
        for (i64 o = 0; o < R; ++o)
            for (i64 k = 0; k < G(); ++k)
                out[static_cast<std::size_t>(o / 8 * G() + k)] |= std::int32_t(std::uint32_t(z[static_cast<std::size_t>(o * G() + k)] + offset) << (4 * (o % 8)));
        return out;
    }
    // GPTQ qweight [C/8, R]: qweight[w, o] = CT weight_packed[o, w].
    Words gptq_qweight() const {
        auto const ct = ct_packed();
        Words out(static_cast<std::size_t>(C / 8 * R));
        for (i64 w = 0; w < C / 8; ++w)
            for (i64 o = 0; o < R; ++o) out[static_cast<std::size_t>(w * R + o)] = ct[static_cast<std::size_t>(o * (C / 8) + w)];
        return out;
    }
    // AWQ: output 8w + order[k] in nibble k.
    Words awq(std::vector<int> const& v, i64 cols, bool transpose_rows) const {
        static constexpr int order[8] = {0, 2, 4, 6, 1, 3, 5, 7};
        Words out(static_cast<std::size_t>(cols * (R / 8)), 0);
        for (i64 i = 0; i < cols; ++i)
            for (i64 w = 0; w < R / 8; ++w)
                for (int k = 0; k < 8; ++k) {
                    i64 const o = w * 8 + order[k];
                    int const val = transpose_rows ? v[static_cast<std::size_t>(o * cols + i)] : v[static_cast<std::size_t>(o * cols + i)];
                    out[static_cast<std::size_t>(i * (R / 8) + w)] |= std::int32_t(std::uint32_t(val) << (4 * k));
                }
        return out;
    }
    std::vector<float> scales_transposed() const {  // [G, R]
        std::vector<float> out(static_cast<std::size_t>(G() * R));
        for (i64 o = 0; o < R; ++o)
            for (i64 k = 0; k < G(); ++k) out[static_cast<std::size_t>(k * R + o)] = s[static_cast<std::size_t>(o * G() + k)];
        return out;
    }
};

std::int32_t word(std::uint32_t w) { return static_cast<std::int32_t>(w); }

template <class T>
void put(TensorMap& m, std::string name, Dtype dt, std::vector<i64> shape, std::vector<T> const& v) {
    m.add_values(std::move(name), dt, std::move(shape), std::span<T const>(v));
}

// Puts one int4 matrix under module P in `layout` ("ct", "ct_sym", "gptq", "gptq_v2", "awq").
void put_int4(TensorMap& m, std::string const& P, Int4 const& w, std::string const& layout) {
    if (layout == "ct" || layout == "ct_sym") {
        put(m, P + ".weight_packed", Dtype::I32, {w.R, (w.C + 7) / 8}, w.ct_packed());
        put(m, P + ".weight_scale", Dtype::F32, {w.R, w.G()}, w.s);
        put(m, P + ".weight_shape", Dtype::I64, {2}, std::vector<std::int64_t>{w.R, w.C});
        if (layout == "ct") put(m, P + ".weight_zero_point", Dtype::I32, {(w.R + 7) / 8, w.G()}, w.zeros_by_rows(0));
        if (!w.gidx.empty()) put(m, P + ".weight_g_idx", Dtype::I32, {w.C}, w.gidx);
    } else if (layout == "gptq" || layout == "gptq_v2") {
        Words qz(static_cast<std::size_t>(w.G() * (w.R / 8)), 0);
        for (i64 o = 0; o < w.R; ++o)
            for (i64 k = 0; k < w.G(); ++k)
                qz[static_cast<std::size_t>(k * (w.R / 8) + o / 8)] |=
                    std::int32_t(std::uint32_t(w.z[static_cast<std::size_t>(o * w.G() + k)] - (layout == "gptq" ? 1 : 0)) << (4 * (o % 8)));
        put(m, P + ".qweight", Dtype::I32, {w.C / 8, w.R}, w.gptq_qweight());
        put(m, P + ".qzeros", Dtype::I32, {w.G(), w.R / 8}, qz);
        put(m, P + ".scales", Dtype::F32, {w.G(), w.R}, w.scales_transposed());
        if (!w.gidx.empty()) put(m, P + ".g_idx", Dtype::I32, {w.C}, w.gidx);
    } else {
        put(m, P + ".qweight", Dtype::I32, {w.C, w.R / 8}, w.awq(w.u, w.C, true));
        put(m, P + ".qzeros", Dtype::I32, {w.G(), w.R / 8}, w.awq(w.z, w.G(), true));
        put(m, P + ".scales", Dtype::F32, {w.G(), w.R}, w.scales_transposed());
    }
}

smoe::quant::Matrix read_one(TensorMap const& m, json const& qc, std::string const& P, i64 R, i64 C) {
    auto const q = smoe::io::parse_quant_config(qc, "config.json");
    auto const plan = smoe::io::plan_matrix(m, &q, P, {R}, {C}, "ckpt", "config.json");
    return smoe::io::read_matrix(plan);
}

std::vector<float> row(smoe::quant::Matrix const& m, i64 o) {
    std::vector<float> r;
    for (i64 i = 0; i < m.cols; ++i) r.push_back(m.deq(o, i));
    return r;
}

json ct_int4(i64 g, bool sym, json actorder = nullptr) {
    return {{"quant_method", "compressed-tensors"}, {"format", "pack-quantized"}, {"quantization_status", "compressed"},
            {"config_groups",
             {{"group_0",
               {{"targets", {"Linear"}},
                {"weights", {{"num_bits", 4}, {"type", "int"}, {"symmetric", sym}, {"strategy", "group"}, {"group_size", g}, {"dynamic", false},
                             {"actorder", actorder}}}}}}},
            {"ignore", {"lm_head", "re:.*gate$"}},
            {"sparsity_config", json::object()}};
}
json gptq(bool v2, bool desc_act, bool sym = false, i64 g = 8) {
    return {{"quant_method", "gptq"}, {"bits", 4}, {"group_size", g}, {"desc_act", desc_act}, {"sym", sym},
            {"checkpoint_format", v2 ? "gptq_v2" : "gptq"}, {"damp_percent", 0.1}};
}
json awq() { return {{"quant_method", "awq"}, {"bits", 4}, {"group_size", 8}, {"zero_point", true}, {"version", "gemm"}, {"modules_to_not_convert", nullptr}}; }

std::vector<float> const kAsymRow0 = {-0.0625, 0, 0.0625, 0.125, 0.1875, 0.25, 0.3125, 0.375, 0, 0.03125, 0.0625, 0.09375, 0.125, 0.15625, 0.1875, 0.21875};
std::vector<float> const kAsymRow5 = {0.40625,   -1.1171875, -1.015625, -0.9140625, -0.8125,  -0.7109375, -0.609375, -0.5078125,
                                      0.203125, 0.25390625, 0.3046875, 0.35546875, 0.40625, 0.45703125, 0.5078125, 0.55859375};
std::vector<float> const kSymRow0 = {-0.5, -0.4375, -0.375, -0.3125, -0.25, -0.1875, -0.125, -0.0625, 0, 0.03125, 0.0625, 0.09375, 0.125, 0.15625, 0.1875, 0.21875};
std::vector<std::int32_t> const kGidx = {1, 0, 0, 1, 0, 1, 1, 0, 0, 0, 1, 1, 1, 0, 1, 0};

}  // namespace

TEST_CASE("the int4 layouts of formats.md sec. 1.5 are written as the spec prints them and load bit for bit", "[quant][loader][int4]") {
    Int4 const a = Int4::example(8, 16, 8, false), s = Int4::example(8, 16, 8, true);
    // The test's packers against the spec's words.
    CHECK(a.ct_packed()[0] == word(0x76543210u));
    CHECK(a.ct_packed()[1] == word(0xFEDCBA98u));
    CHECK(a.zeros_by_rows(0) == Words{word(0xFDB97531u), word(0x7531ECA8u)});
    CHECK(a.awq(a.u, 16, true)[0] == word(0x5F932C60u));
    CHECK(a.awq(a.z, 2, true) == Words{word(0xFB73D951u), word(0x73EA51C8u)});

    for (std::string const layout : {"ct", "gptq", "gptq_v2", "awq"}) {
        INFO(layout);
        TensorMap m;
        put_int4(m, "P", a, layout);
        json const qc = layout == "ct" ? ct_int4(8, false) : layout == "awq" ? awq() : gptq(layout == "gptq_v2", false);
        auto const w = read_one(m, qc, "P", 8, 16);
        CHECK(smoe::quant::name(w.format, 16) == "int4-g8-asym");
        CHECK(row(w, 0) == kAsymRow0);
        CHECK(row(w, 5) == kAsymRow5);
        CHECK(w.dequantize() == a.deq());
    }
    TensorMap m;
    put_int4(m, "P", s, "ct_sym");
    auto const w = read_one(m, ct_int4(8, true), "P", 8, 16);
    CHECK(smoe::quant::name(w.format, 16) == "int4-g8-sym");
    CHECK(row(w, 0) == kSymRow0);

    SECTION("compressed-tensors <= 0.8: zero points unpacked, I8 [R, G] holding z - 8") {
        auto const ct08 = [&](std::vector<std::int8_t> const& z8) {
            TensorMap c;
            put(c, "P.weight_packed", Dtype::I32, {a.R, (a.C + 7) / 8}, a.ct_packed());
            put(c, "P.weight_scale", Dtype::F32, {a.R, a.G()}, a.s);
            put(c, "P.weight_shape", Dtype::I64, {2}, std::vector<std::int64_t>{a.R, a.C});
            put(c, "P.weight_zero_point", Dtype::I8, {a.R, a.G()}, z8);
            return read_one(c, ct_int4(8, false), "P", 8, 16);
        };
        std::vector<std::int8_t> z8;
        for (int z : a.z) z8.push_back(static_cast<std::int8_t>(z - 8));
        auto const wc = ct08(z8);
        CHECK(row(wc, 5) == kAsymRow5);
        CHECK(wc.dequantize() == a.deq());
        z8[3] = 9;  // beyond a signed nibble
        CHECK_THROWS_WITH(ct08(z8), Contains("weight_zero_point") && Contains("[1, 1]") && Contains("-8..7"));
    }
    SECTION("act order: GPTQ v1 desc_act and compressed-tensors actorder group") {
        Int4 ag = a;
        ag.gidx = kGidx;
        TensorMap g;
        put_int4(g, "P", ag, "gptq");
        auto const wg = read_one(g, gptq(false, true), "P", 8, 16);
        CHECK(row(wg, 0) == std::vector<float>{-0.25, 0, 0.0625, -0.15625, 0.1875, -0.09375, -0.0625, 0.375, 0.4375, 0.5, 0.0625, 0.09375, 0.125,
                                               0.75, 0.1875, 0.875});
        Int4 sg = s;
        sg.gidx = kGidx;
        TensorMap c;
        put_int4(c, "P", sg, "ct_sym");
        auto const wc = read_one(c, ct_int4(8, true, "group"), "P", 8, 16);
        CHECK(smoe::quant::name(wc.format, 16) == "int4-g8-sym-actorder");
        CHECK(row(wc, 0) == std::vector<float>{-0.25, -0.4375, -0.375, -0.15625, -0.25, -0.09375, -0.0625, -0.0625, 0, 0.0625, 0.0625, 0.09375,
                                               0.125, 0.3125, 0.1875, 0.4375});
    }
}

TEST_CASE("FP8 (sec. 2.4), int8 per channel (sec. 1.7) and MXFP4 (sec. 3.3, per module and gpt-oss stacked) load bit for bit", "[quant][loader]") {
    std::vector<std::uint8_t> const codes = {0x38, 0x40, 0xB8, 0x00, 0x3C, 0x44, 0x30, 0xC0, 0x7E, 0x01, 0x48, 0xBC, 0x34, 0x3A, 0xFE, 0x08, 0x50, 0x28};
    SECTION("FP8 block factors, weight_scale_inv (DeepSeek), partial edge blocks") {
        TensorMap m;
        put(m, "P.weight", Dtype::F8_E4M3, {3, 6}, codes);
        put(m, "P.weight_scale_inv", Dtype::F32, {2, 2}, std::vector<float>{0.5f, 0.25f, 2.0f, 0.125f});
        auto const w = read_one(m, {{"quant_method", "fp8"}, {"fmt", "e4m3"}, {"activation_scheme", "dynamic"}, {"weight_block_size", {2, 4}}}, "P", 3, 6);
        CHECK(smoe::quant::name(w.format, 6) == "fp8-e4m3-b2x4");
        CHECK(w.dequantize() == std::vector<float>{0.5, 1, -0.5, 0, 0.375, 0.75, 0.25, -1, 224, 0.0009765625, 1, -0.375, 1.5, 2.5, -896, 0.03125, 1, 0.03125});
    }
    SECTION("FP8 scale_fmt ue8m0: power-of-two factors as F32 or as E8M0 bytes (F8_E8M0, U8), 255 refused") {
        json const qc = {{"quant_method", "fp8"}, {"fmt", "e4m3"}, {"activation_scheme", "dynamic"}, {"weight_block_size", {2, 4}},
                         {"scale_fmt", "ue8m0"}};
        std::vector<std::uint8_t> const e8 = {126, 125, 128, 124};  // 0.5, 0.25, 2, 0.125 as in the section above
        std::vector<float> const want = {0.5, 1, -0.5, 0, 0.375, 0.75, 0.25, -1, 224, 0.0009765625, 1, -0.375, 1.5, 2.5, -896, 0.03125, 1, 0.03125};
        for (Dtype const dt : {Dtype::F8_E8M0, Dtype::U8}) {
            TensorMap m;
            put(m, "P.weight", Dtype::F8_E4M3, {3, 6}, codes);
            put(m, "P.weight_scale_inv", dt, {2, 2}, e8);
            CHECK(read_one(m, qc, "P", 3, 6).dequantize() == want);
        }
        TensorMap f;
        put(f, "P.weight", Dtype::F8_E4M3, {3, 6}, codes);
        put(f, "P.weight_scale_inv", Dtype::F32, {2, 2}, std::vector<float>{0.5f, 0.25f, 2.0f, 0.125f});
        CHECK(read_one(f, qc, "P", 3, 6).dequantize() == want);
        TensorMap nan;
        put(nan, "P.weight", Dtype::F8_E4M3, {3, 6}, codes);
        put(nan, "P.weight_scale_inv", Dtype::U8, {2, 2}, std::vector<std::uint8_t>{126, 255, 128, 124});
        CHECK_THROWS_WITH(read_one(nan, qc, "P", 3, 6), Contains("weight_scale_inv") && Contains("255") && Contains("E8M0"));
        TensorMap plain;  // without ue8m0, byte factors are not a float dtype
        put(plain, "P.weight", Dtype::F8_E4M3, {3, 6}, codes);
        put(plain, "P.weight_scale_inv", Dtype::U8, {2, 2}, e8);
        json qf = qc;
        qf.erase("scale_fmt");
        CHECK_THROWS_WITH(read_one(plain, qf, "P", 3, 6), Contains("weight_scale_inv") && Contains("dtype"));
    }
    SECTION("FP8 channel and tensor factors, compressed-tensors float-quantized") {
        auto const cfg = [](std::string const& strategy) {
            return json{{"quant_method", "compressed-tensors"}, {"format", "float-quantized"},
                        {"config_groups", {{"g", {{"targets", {"Linear"}}, {"weights", {{"num_bits", 8}, {"type", "float"}, {"symmetric", true}, {"strategy", strategy}}}}}}}};
        };
        TensorMap c;
        put(c, "P.weight", Dtype::F8_E4M3, {3, 6}, codes);
        put(c, "P.weight_scale", Dtype::F32, {3, 1}, std::vector<float>{0.5f, 2.0f, 0.125f});
        auto const wc = read_one(c, cfg("channel"), "P", 3, 6);
        CHECK(smoe::quant::name(wc.format, 6) == "fp8-e4m3-channel");
        CHECK(row(wc, 1) == std::vector<float>{1, -4, 896, 0.00390625, 8, -3});
        TensorMap t;
        put(t, "P.weight", Dtype::F8_E4M3, {3, 6}, codes);
        put(t, "P.weight_scale", Dtype::F32, {1}, std::vector<float>{0.25f});
        auto const wt = read_one(t, cfg("tensor"), "P", 3, 6);
        CHECK(row(wt, 2) == std::vector<float>{0.1875, 0.3125, -112, 0.00390625, 2, 0.0625});
    }
    SECTION("int8 per channel, compressed-tensors int-quantized") {
        TensorMap m;
        put(m, "P.weight", Dtype::I8, {2, 4}, std::vector<std::int8_t>{-128, -1, 0, 127, 5, -7, 64, -64});
        put(m, "P.weight_scale", Dtype::F32, {2, 1}, std::vector<float>{0.5f, 0.0078125f});
        auto const w = read_one(m,
                                {{"quant_method", "compressed-tensors"}, {"format", "int-quantized"},
                                 {"config_groups", {{"g", {{"targets", {"Linear"}}, {"weights", {{"num_bits", 8}, {"type", "int"}, {"symmetric", true}, {"strategy", "channel"}}}}}}}},
                                "P", 2, 4);
        CHECK(w.dequantize() == std::vector<float>{-64, -0.5, 0, 63.5, 0.0390625, -0.0546875, 0.5, -0.5});
    }
    // §3.3: row 0 codes i mod 16, scales 127, 128; row 1 codes 15 - i mod 16, scales 126, 130.
    std::vector<std::uint8_t> blocks, scales = {127, 128, 126, 130};
    for (int r = 0; r < 2; ++r)
        for (int b = 0; b < 2; ++b)
            for (int j = 0; j < 16; ++j) {
                int const lo = (2 * j) % 16, hi = (2 * j + 1) % 16;
                blocks.push_back(static_cast<std::uint8_t>(r == 0 ? lo | hi << 4 : (15 - lo) | (15 - hi) << 4));
            }
    std::vector<float> const row0 = {0, 0.5, 1, 1.5, 2, 3, 4, 6, -0.0f, -0.5, -1, -1.5, -2, -3, -4, -6};
    std::vector<float> const row1 = {-3, -2, -1.5, -1, -0.75, -0.5, -0.25, -0.0f};
    SECTION("MXFP4 per module (compressed-tensors mxfp4-pack-quantized)") {
        TensorMap m;
        put(m, "P.weight_packed", Dtype::U8, {2, 32}, blocks);
        put(m, "P.weight_scale", Dtype::U8, {2, 2}, scales);
        auto const w = read_one(m,
                                {{"quant_method", "compressed-tensors"}, {"format", "mxfp4-pack-quantized"},
                                 {"config_groups", {{"g", {{"targets", {"Linear"}}, {"weights", {{"num_bits", 4}, {"type", "float"}, {"strategy", "group"}, {"group_size", 32}}}}}}}},
                                "P", 2, 64);
        auto const r0 = row(w, 0), r1 = row(w, 1);
        CHECK(std::vector<float>(r0.begin(), r0.begin() + 16) == row0);
        CHECK(std::vector<float>(r1.begin(), r1.begin() + 8) == row1);
        CHECK(r1[32] == -48.0f);
        CHECK(r0[32 + 7] == 12.0f);
    }
    SECTION("gpt-oss: stacked experts, gate and up rows interleaved") {
        // E = 1, d = 64, f = 32: gate_up rows 0 and 1 are the example's, the rest zero codes with scale 127.
        std::int64_t const d = 64, f = 32;
        std::vector<std::uint8_t> gub(static_cast<std::size_t>(2 * f * d / 2), 0), gus(static_cast<std::size_t>(2 * f * d / 32), 127);
        std::copy(blocks.begin(), blocks.end(), gub.begin());
        std::copy(scales.begin(), scales.end(), gus.begin());
        std::vector<std::uint8_t> dnb(static_cast<std::size_t>(d * f / 2), 0x21), dns(static_cast<std::size_t>(d * f / 32), 128);
        TensorMap m;
        std::string const p = "model.layers.0.mlp.experts";
        put(m, p + ".gate_up_proj_blocks", Dtype::U8, {1, 2 * f, d / 32, 16}, gub);
        put(m, p + ".gate_up_proj_scales", Dtype::U8, {1, 2 * f, d / 32}, gus);
        put(m, p + ".down_proj_blocks", Dtype::U8, {1, d, f / 32, 16}, dnb);
        put(m, p + ".down_proj_scales", Dtype::U8, {1, d, f / 32}, dns);
        auto const plan = smoe::io::plan_gpt_oss_experts(m, p, 1, d, f, "ckpt");
        auto const w = smoe::io::read_gpt_oss_expert(plan, 0);
        auto const g0 = row(w.gate, 0), u0 = row(w.up, 0);
        CHECK(std::vector<float>(g0.begin(), g0.begin() + 16) == row0);
        CHECK(std::vector<float>(u0.begin(), u0.begin() + 8) == row1);
        CHECK(w.gate.rows == f);
        CHECK(w.down.deq(3, 0) == 1.0f);  // low nibble 1 = 0.5, times 2
        CHECK(w.down.deq(3, 1) == 2.0f);  // high nibble 2 = 1, times 2
        m.add_values(p + ".x", Dtype::U8, {0}, std::span<std::uint8_t const>());
        TensorMap bad;
        put(bad, p + ".gate_up_proj_blocks", Dtype::U8, {1, 2 * f, d / 32, 16}, gub);
        CHECK_THROWS_WITH(smoe::io::plan_gpt_oss_experts(bad, p, 1, d, f, "ckpt"),
                          Contains("tensor 'model.layers.0.mlp.experts.gate_up_proj_scales'' = missing"));
    }
}

namespace {

// A one-layer block: the router and the experts' W_deq stored dense (F32) for the reference layer,
// and the quantised tensors for the loader under test.
struct Model {
    json config;
    TensorMap dense{"dense"}, quant{"quant"};
};

std::vector<float> normal(std::mt19937_64& rng, i64 n, double sd) {
    std::normal_distribution<double> nd(0.0, sd);
    std::vector<float> v(static_cast<std::size_t>(n));
    for (auto& x : v) x = static_cast<float>(nd(rng));
    return v;
}

// Output of the quantised block and of the dense block (W_deq) on the same tokens: bit for bit
// (QuantSwiGLU gives SwiGLU<float>'s bits on W_deq, quant_swiglu.hpp), or with act order, whose chain
// runs in group order, within formats.md §6.1's 1e-5 per token.
void same_as_dense(Model const& m, bool act_order = false, HfMoeLayer::Options qopt = {}) {
    auto const cfg = smoe::io::parse_hf_config(m.config, "config.json");
    json dense_cfg = m.config;
    dense_cfg.erase("quantization_config");
    auto const dcfg = smoe::io::parse_hf_config(dense_cfg, "config.json");
    auto q = HfMoeLayer::load(cfg, m.quant, 0, qopt, "quant");
    auto r = HfMoeLayer::load(dcfg, m.dense, 0, {.max_tokens = 256, .format = smoe::io::WeightFormat::f32}, "dense");
    std::mt19937_64 rng(7);
    i64 const T = 9, d = cfg.hidden_size;
    auto const x = normal(rng, T * d, 1.0);
    std::vector<float> yq(static_cast<std::size_t>(T * d)), yr(yq.size());
    q.forward(smoe::MatrixView<float const>(x.data(), T, d), smoe::MatrixView<float>(yq.data(), T, d));
    r.forward(smoe::MatrixView<float const>(x.data(), T, d), smoe::MatrixView<float>(yr.data(), T, d));
    CHECK(q.format() == smoe::io::WeightFormat::quantized);
    if (!act_order) {
        CHECK(yq == yr);
        return;
    }
    for (i64 t = 0; t < T; ++t) {
        double diff = 0, mag = 0;
        for (i64 i = 0; i < d; ++i) {
            auto const k = static_cast<std::size_t>(t * d + i);
            diff = std::max(diff, std::fabs(double(yq[k]) - double(yr[k])));
            mag = std::max(mag, std::fabs(double(yr[k])));
        }
        CHECK(diff <= 1e-5 * mag);
    }
}

json mixtral(json quant) {
    return {{"model_type", "mixtral"}, {"hidden_size", 16}, {"intermediate_size", 8}, {"num_local_experts", 2}, {"num_experts_per_tok", 2},
            {"num_hidden_layers", 1}, {"hidden_act", "silu"}, {"quantization_config", quant}};
}

constexpr char const* kMixtralBlock = "model.layers.0.block_sparse_moe.";

// The config and the fp32 router, the same in the dense and the quantised checkpoint.
Model mixtral_with_router(json quant, std::mt19937_64& rng) {
    Model m{mixtral(quant)};
    auto const gate = normal(rng, 2 * 16, 0.5);
    put(m.dense, std::string(kMixtralBlock) + "gate.weight", Dtype::F32, {2, 16}, gate);
    put(m.quant, std::string(kMixtralBlock) + "gate.weight", Dtype::F32, {2, 16}, gate);
    return m;
}

// Mixtral, d = 16, f = 8, 2 experts, every matrix int4 group 8 in `layout`.
Model mixtral_int4(std::string const& layout, json quant, bool act_order = false) {
    std::mt19937_64 rng(3);
    Model m = mixtral_with_router(quant, rng);
    std::string const p = kMixtralBlock;
    bool const sym = layout == "ct_sym";
    for (int e = 0; e < 2; ++e)
        for (auto const& [name, R, C, shift] : {std::tuple{"w1", 8, 16, 0}, std::tuple{"w3", 8, 16, 5}, std::tuple{"w2", 16, 8, 9}}) {
            Int4 w = Int4::example(R, C, 8, sym, shift + 3 * e);
            if (act_order && C == 16) w.gidx = kGidx;
            if (act_order && C == 8) w.gidx = std::vector<std::int32_t>(8, 0);
            std::string const P = p + "experts." + std::to_string(e) + "." + name;
            put_int4(m.quant, P, w, layout);
            put(m.dense, P + ".weight", Dtype::F32, {R, C}, w.deq());
        }
    return m;
}

// Mixtral, d = 16, f = 8, 2 experts, every matrix ternary (research.md §7.4) as `fmt` quantises it:
// smoe-ternary's weight_ternary + weight_scale, or (hf_bitnet) HF BitNet's U8 weight packed along rows
// with weight_scale = 1 / s ("bitlinear" divides; s a power of two, so the loader's 1 / weight_scale is s).
Model mixtral_ternary(json quant, smoe::quant::Format const& fmt, bool hf_bitnet = false) {
    std::mt19937_64 rng(4);
    Model m = mixtral_with_router(quant, rng);
    std::string const p = kMixtralBlock;
    for (int e = 0; e < 2; ++e)
        for (auto const& [name, R, C] : {std::tuple{"w1", 8, 16}, std::tuple{"w3", 8, 16}, std::tuple{"w2", 16, 8}}) {
            auto const w = normal(rng, R * C, 0.3);
            auto q = smoe::quant::quantize(smoe::MatrixView<float const>(w.data(), R, C), fmt);
            std::string const P = p + "experts." + std::to_string(e) + "." + name;
            if (hf_bitnet) {
                q.scales = {0.25f};
                std::vector<std::uint8_t> packed(static_cast<std::size_t>(R / 4 * C), 0);
                for (i64 o = 0; o < R; ++o)
                    for (i64 c = 0; c < C; ++c)
                        packed[static_cast<std::size_t>(o % (R / 4) * C + c)] |=
                            static_cast<std::uint8_t>(q.codes[static_cast<std::size_t>(o * C + c)] << (2 * (o / (R / 4))));
                put(m.quant, P + ".weight", Dtype::U8, {R / 4, C}, packed);
                put(m.quant, P + ".weight_scale", Dtype::F32, {1}, std::vector<float>{4.0f});
            } else {
                std::vector<i64> sshape = fmt.ternary_tensor() ? std::vector<i64>{1} : std::vector<i64>{R, q.groups()};
                put(m.quant, P + ".weight_ternary", Dtype::U8, {R, smoe::quant::ternary_row_bytes(fmt.packing, C)}, smoe::quant::pack_ternary(q));
                put(m.quant, P + ".weight_scale", Dtype::F32, sshape, q.scales);
            }
            put(m.dense, P + ".weight", Dtype::F32, {R, C}, q.dequantize());
        }
    return m;
}

}  // namespace

TEST_CASE("a Mixtral block of ternary experts (smoe-ternary, HF BitNet) computes what the block with W_deq computes", "[quant][loader][layer][ternary]") {
    // What smoe-run and demo_engine load from a MoTE checkpoint (research.md §7.4), end to end.
    using smoe::quant::Format;
    using smoe::quant::TernaryPacking;
    using smoe::quant::TernaryScale;
    SECTION("2b, one scale per tensor") {
        same_as_dense(mixtral_ternary({{"quant_method", "smoe-ternary"}, {"packing", "2b"}, {"scale", "tensor"}}, Format::ternary()));
    }
    SECTION("b3, one scale per row") {
        same_as_dense(mixtral_ternary({{"quant_method", "smoe-ternary"}, {"packing", "b3"}, {"scale", "channel"}},
                                      Format::ternary(TernaryScale::channel, 0, TernaryPacking::b3)));
    }
    SECTION("2b, groups of 4 columns") {
        auto const m = mixtral_ternary({{"quant_method", "smoe-ternary"}, {"scale", "group"}, {"group_size", 4}}, Format::ternary(TernaryScale::group, 4));
        same_as_dense(m);
        auto const l = HfMoeLayer::load(smoe::io::parse_hf_config(m.config, "c"), m.quant, 0, {}, "q");
        CHECK(l.expert_format(0) == "ternary-2b-g4");  // one format for W1/W3 and W2
    }
    SECTION("HF BitNet, bitlinear") { same_as_dense(mixtral_ternary({{"quant_method", "bitnet"}}, Format::ternary(), true)); }
}

TEST_CASE("a Mixtral block in each int4 layout computes what the same block with W_deq computes", "[quant][loader][layer]") {
    SECTION("compressed-tensors asymmetric") { same_as_dense(mixtral_int4("ct", ct_int4(8, false))); }
    SECTION("compressed-tensors symmetric, act order") { same_as_dense(mixtral_int4("ct_sym", ct_int4(8, true, "group"), true), true); }
    SECTION("GPTQ v1, act order") { same_as_dense(mixtral_int4("gptq", gptq(false, true), true), true); }
    SECTION("GPTQ v2") { same_as_dense(mixtral_int4("gptq_v2", gptq(true, false))); }
    SECTION("AWQ") {
        auto const m = mixtral_int4("awq", awq());
        same_as_dense(m);
        auto const l = HfMoeLayer::load(smoe::io::parse_hf_config(m.config, "c"), m.quant, 0, {}, "q");
        CHECK(l.expert_format(1) == "gate/up int4-g8-asym, down int4-channel-asym");  // f = 8 = g
        CHECK(l.shared_format().empty());
    }
}

TEST_CASE("DeepSeek-V3 FP8 block experts with a bf16 shared expert, and a Qwen2-MoE block mixing int4, MXFP4 and bf16", "[quant][loader][layer]") {
    std::mt19937_64 rng(11);
    SECTION("deepseek_v3, weight_block_size [4, 8], shared experts in modules_to_not_convert") {
        Model m{{{"model_type", "deepseek_v3"}, {"hidden_size", 16}, {"moe_intermediate_size", 8}, {"n_routed_experts", 4},
                 {"num_experts_per_tok", 2}, {"n_shared_experts", 1}, {"n_group", 1}, {"topk_group", 1}, {"first_k_dense_replace", 0},
                 {"num_hidden_layers", 1}, {"hidden_act", "silu"},
                 {"quantization_config",
                  {{"quant_method", "fp8"}, {"fmt", "e4m3"}, {"activation_scheme", "dynamic"}, {"weight_block_size", {4, 8}},
                   {"modules_to_not_convert", {"shared_experts", "model.layers.*.mlp.gate"}}}}}};
        std::string const p = "model.layers.0.mlp.";
        auto const gate = normal(rng, 4 * 16, 0.5);
        auto const bias = normal(rng, 4, 0.1);
        for (TensorMap* t : {&m.dense, &m.quant}) {
            put(*t, p + "gate.weight", Dtype::F32, {4, 16}, gate);
            put(*t, p + "gate.e_score_correction_bias", Dtype::F32, {4}, bias);
        }
        for (int e = 0; e < 4; ++e)
            for (auto const& [name, R, C] : {std::tuple{"gate_proj", 8, 16}, std::tuple{"up_proj", 8, 16}, std::tuple{"down_proj", 16, 8}}) {
                std::vector<std::uint8_t> codes(static_cast<std::size_t>(R * C));
                for (auto& c : codes) c = static_cast<std::uint8_t>((rng() % 0x60) | (rng() % 2 ? 0x80 : 0));
                i64 const SR = (R + 3) / 4, SC = (C + 7) / 8;
                std::vector<float> s(static_cast<std::size_t>(SR * SC));
                for (auto& v : s) v = std::ldexp(1.0f + float(rng() % 8) / 8.0f, -int(rng() % 6) - 2);
                std::vector<float> deq(codes.size());
                for (i64 r = 0; r < R; ++r)
                    for (i64 c = 0; c < C; ++c)
                        deq[static_cast<std::size_t>(r * C + c)] = static_cast<float>(
                            double(smoe::quant::e4m3_to_float(codes[static_cast<std::size_t>(r * C + c)])) * s[static_cast<std::size_t>(r / 4 * SC + c / 8)]);
                std::string const P = p + "experts." + std::to_string(e) + "." + name;
                put(m.quant, P + ".weight", Dtype::F8_E4M3, {R, C}, codes);
                put(m.quant, P + ".weight_scale_inv", Dtype::F32, {SR, SC}, s);
                put(m.dense, P + ".weight", Dtype::F32, {R, C}, deq);
            }
        for (auto const& [name, R, C] : {std::tuple{"gate_proj", 8, 16}, std::tuple{"up_proj", 8, 16}, std::tuple{"down_proj", 16, 8}}) {
            auto v = normal(rng, R * C, 0.3);
            std::vector<smoe::bf16> b(v.size());
            for (std::size_t i = 0; i < v.size(); ++i) b[i] = smoe::to_bf16(v[i]);
            put(m.quant, p + "shared_experts." + name + ".weight", Dtype::BF16, {R, C}, b);
            put(m.dense, p + "shared_experts." + name + ".weight", Dtype::BF16, {R, C}, b);
        }
        same_as_dense(m);
        auto const l = HfMoeLayer::load(smoe::io::parse_hf_config(m.config, "c"), m.quant, 0, {}, "q");
        CHECK(l.expert_format(3) == "fp8-e4m3-b4x8");
        CHECK(l.shared_format() == "bf16");
        CHECK(l.weight_bytes() > 0);
    }
    SECTION("qwen2_moe, compressed-tensors mixed-precision: expert 0 int4 g32 sym, expert 1 MXFP4, the shared expert dense") {
        i64 const d = 64, f = 32;
        json const int4 = {{"num_bits", 4}, {"type", "int"}, {"symmetric", true}, {"strategy", "group"}, {"group_size", 32}};
        json const mx = {{"num_bits", 4}, {"type", "float"}, {"symmetric", true}, {"strategy", "group"}, {"group_size", 32}};
        Model m{{{"model_type", "qwen2_moe"}, {"hidden_size", d}, {"moe_intermediate_size", f}, {"num_experts", 2}, {"num_experts_per_tok", 2},
                 {"shared_expert_intermediate_size", f}, {"num_hidden_layers", 1}, {"hidden_act", "silu"},
                 {"quantization_config",
                  {{"quant_method", "compressed-tensors"}, {"format", "mixed-precision"}, {"quantization_status", "compressed"},
                   {"config_groups",
                    {{"group_0", {{"targets", {"re:.*experts\\.0\\."}}, {"format", "pack-quantized"}, {"weights", int4}}},
                     {"group_1", {{"targets", {"re:.*experts\\.1\\."}}, {"format", "mxfp4-pack-quantized"}, {"weights", mx}}}}},
                   {"ignore", {"lm_head"}}}}}};
        std::string const p = "model.layers.0.mlp.";
        auto const gate = normal(rng, 2 * d, 0.5), sgate = normal(rng, d, 0.5);
        for (TensorMap* t : {&m.dense, &m.quant}) {
            put(*t, p + "gate.weight", Dtype::F32, {2, d}, gate);
            put(*t, p + "shared_expert_gate.weight", Dtype::F32, {1, d}, sgate);
        }
        for (auto const& [name, R, C] : {std::tuple{"gate_proj", f, d}, std::tuple{"up_proj", f, d}, std::tuple{"down_proj", d, f}}) {
            std::string const P0 = p + "experts.0." + name, P1 = p + "experts.1." + name;
            Int4 w = Int4::example(R, C, 32, true, int(R));
            put_int4(m.quant, P0, w, "ct_sym");
            put(m.dense, P0 + ".weight", Dtype::F32, {R, C}, w.deq());
            std::vector<std::uint8_t> packed(static_cast<std::size_t>(R * C / 2)), sc(static_cast<std::size_t>(R * C / 32));
            for (auto& b : packed) b = static_cast<std::uint8_t>(rng());
            for (auto& b : sc) b = static_cast<std::uint8_t>(120 + rng() % 8);
            std::vector<float> deq(static_cast<std::size_t>(R * C));
            for (i64 k = 0; k < R * C; ++k) {
                std::uint8_t const byte = packed[static_cast<std::size_t>(k / 2)];
                deq[static_cast<std::size_t>(k)] = smoe::quant::e2m1_to_float(k % 2 ? byte >> 4 : byte & 15) *
                                                   std::ldexp(1.0f, int(sc[static_cast<std::size_t>(k / 32)]) - 127);
            }
            put(m.quant, P1 + ".weight_packed", Dtype::U8, {R, C / 2}, packed);
            put(m.quant, P1 + ".weight_scale", Dtype::U8, {R, C / 32}, sc);
            put(m.dense, P1 + ".weight", Dtype::F32, {R, C}, deq);
            auto const v = normal(rng, R * C, 0.2);
            put(m.quant, p + "shared_expert." + name + ".weight", Dtype::F32, {R, C}, v);
            put(m.dense, p + "shared_expert." + name + ".weight", Dtype::F32, {R, C}, v);
        }
        same_as_dense(m);
        auto const l = HfMoeLayer::load(smoe::io::parse_hf_config(m.config, "c"), m.quant, 0, {}, "q");
        CHECK(l.expert_format(0) == "gate/up int4-g32-sym, down int4-channel-sym");  // f = 32: one group per row
        CHECK(l.expert_format(1) == "mxfp4");
        CHECK(l.shared_format() == "f32");
    }
}

TEST_CASE("WeightFormat::int4 quantises a dense checkpoint at load, group 128 by default", "[quant][loader][layer]") {
    json cfg = mixtral(nullptr);
    cfg.erase("quantization_config");
    cfg["hidden_size"] = 256;
    cfg["intermediate_size"] = 256;
    std::mt19937_64 rng(5);
    TensorMap m;
    std::string const p = "model.layers.0.block_sparse_moe.";
    put(m, p + "gate.weight", Dtype::F32, {2, 256}, normal(rng, 2 * 256, 0.5));
    for (int e = 0; e < 2; ++e)
        for (auto const& [name, R, C] : {std::tuple{"w1", 256, 256}, std::tuple{"w3", 256, 256}, std::tuple{"w2", 256, 256}})
            put(m, p + "experts." + std::to_string(e) + "." + name + ".weight", Dtype::F32, {R, C}, normal(rng, R * C, 0.05));
    auto const c = smoe::io::parse_hf_config(cfg, "c");
    auto const q = HfMoeLayer::load(c, m, 0, {.format = smoe::io::WeightFormat::int4}, "m");
    CHECK(q.format() == smoe::io::WeightFormat::int4);
    CHECK(q.expert_format(0) == "int4-g128-sym");
    auto const q64 = HfMoeLayer::load(c, m, 0, {.format = smoe::io::WeightFormat::int4, .int4_group = 64}, "m");
    CHECK(q64.expert_format(1) == "int4-g64-sym");
    CHECK(q.weight_bytes() < HfMoeLayer::load(c, m, 0, {.format = smoe::io::WeightFormat::f32}, "m").weight_bytes() / 4);
    CHECK_THROWS_WITH(HfMoeLayer::load(c, m, 0, {.format = smoe::io::WeightFormat::int4, .int4_group = 96}, "m"),
                      Contains("options.int4_group") && Contains("a divisor of in_features 256"));
}

TEST_CASE("quantization_config: unsupported values and storage-changing keys are errors naming the key (formats.md sec. 5)", "[quant][loader][errors]") {
    auto const fails = [](json const& q, std::string const& key, std::string const& value) {
        CHECK_THROWS_WITH(smoe::io::parse_quant_config(q, "config.json"),
                          Contains("config.json: key 'quantization_config." + key + "'' = " + value + ": expected"));
    };
    json q = gptq(false, false);
    q["bits"] = 3;
    fails(q, "bits", "3");
    CHECK_THROWS_WITH(smoe::io::parse_quant_config(q, "config.json"), Contains("4 (int4; other bit widths are not supported)"));
    q = gptq(false, false);
    q["checkpoint_format"] = "marlin";
    fails(q, "checkpoint_format", "marlin");
    q = gptq(false, false);
    q["dynamic"] = {{"+:.*experts\\.0\\..*", {{"bits", 8}}}};
    fails(q, "dynamic.+:.*experts\\.0\\..*.bits", "8");
    q = awq();
    q["version"] = "gemv";
    fails(q, "version", "gemv");
    fails({{"quant_method", "fp8"}, {"fmt", "e5m2"}}, "fmt", "e5m2");
    fails({{"quant_method", "fp8"}, {"weight_block_size", {128}}}, "weight_block_size", "[128]");
    fails({{"quant_method", "fp8"}, {"expert_dtype", "fp6"}}, "expert_dtype", "fp6");  // fp4: DeepSeek-V4 (test_hf_loader)
    fails({{"quant_method", "bitsandbytes"}}, "quant_method", "bitsandbytes");
    q = ct_int4(128, true);
    q["sparsity_config"] = {{"format", "sparse-24-bitmask"}};
    fails(q, "sparsity_config", R"({"format":"sparse-24-bitmask"})");
    CHECK_THROWS_WITH(smoe::io::parse_quant_config(q, "config.json"), Contains("null or {}"));
    q = ct_int4(128, true);
    q["config_groups"]["group_0"]["weights"]["num_bits"] = 2;
    fails(q, "config_groups.group_0.weights.num_bits", "2");
    q = ct_int4(128, true);
    q["config_groups"]["group_0"]["weights"]["strategy"] = "tensor";
    fails(q, "config_groups.group_0.weights.strategy", "tensor");
    q = ct_int4(128, true);
    q["config_groups"]["group_0"]["targets"] = {"re:(?P<x>a)"};
    fails(q, "config_groups.group_0.targets", "(?P<x>a)");
}

TEST_CASE("quantization_config resolves each module's scheme: exact name, then patterns, then Linear (and ignore, dynamic and not_convert)", "[quant][loader]") {
    json q = ct_int4(128, true);
    q["config_groups"]["group_1"] = {{"targets", {"re:.*experts\\.1\\..*"}},
                                     {"weights", {{"num_bits", 4}, {"type", "int"}, {"symmetric", false}, {"strategy", "group"}, {"group_size", 32}}}};
    q["config_groups"]["group_2"] = {{"targets", {"model.layers.0.mlp.experts.1.down_proj"}},
                                     {"weights", {{"num_bits", 4}, {"type", "int"}, {"symmetric", true}, {"strategy", "channel"}}}};
    auto const c = smoe::io::parse_quant_config(q, "config.json");
    CHECK(c.scheme_of("model.layers.0.mlp.experts.0.up_proj").group == 128);
    CHECK(c.scheme_of("model.layers.0.mlp.experts.1.up_proj").group == 32);
    CHECK(c.scheme_of("model.layers.0.mlp.experts.1.down_proj").group == 0);
    CHECK(c.scheme_of("model.layers.0.mlp.experts.1.down_proj").quantized());
    CHECK(!c.scheme_of("model.layers.0.mlp.gate").quantized());  // ignore "re:.*gate$"
    CHECK(!c.scheme_of("lm_head").quantized());

    json g = gptq(false, false, true, 128);
    g["dynamic"] = {{"-:.*shared_expert\\..*", json::object()}, {"+:.*experts\\.3\\..*", {{"group_size", 32}, {"desc_act", true}}}};
    auto const d = smoe::io::parse_quant_config(g, "config.json");
    CHECK(!d.scheme_of("model.layers.0.mlp.shared_expert.up_proj").quantized());
    CHECK(d.scheme_of("model.layers.0.mlp.experts.3.up_proj").group == 32);
    CHECK(d.scheme_of("model.layers.0.mlp.experts.3.up_proj").act_order);
    CHECK(d.scheme_of("model.layers.0.mlp.experts.4.up_proj").group == 128);

    // Two patterns for expert 3, disagreeing: in file order the first wins (GPTQModel), without the order
    // it is an error naming both.
    g["dynamic"]["+:.*experts\\.[0-4]\\..*"] = {{"group_size", 64}};
    CHECK_THROWS_WITH(smoe::io::parse_quant_config(g, "config.json").scheme_of("model.layers.0.mlp.experts.3.up_proj"),
                      Contains("both match") && Contains("experts.3"));
    auto const in_order = [&](std::vector<std::string> const& order) {
        return smoe::io::parse_quant_config(g, "config.json", order).scheme_of("model.layers.0.mlp.experts.3.up_proj").group;
    };
    std::string const wide = "+:.*experts\\.[0-4]\\..*", three = "+:.*experts\\.3\\..*", shared = "-:.*shared_expert\\..*";
    CHECK(in_order({shared, wide, three}) == 64);
    CHECK(in_order({three, shared, wide}) == 32);
    // Through a file: read_hf_config keeps the order the file writes. dump() writes the keys sorted
    // (three before wide); the second file swaps the two entries.
    {
        std::string const text = mixtral(g).dump();
        std::string const wide_entry = json(wide).dump() + ":" + json{{"group_size", 64}}.dump();
        std::string const three_entry = json(three).dump() + ":" + json{{"desc_act", true}, {"group_size", 32}}.dump();
        REQUIRE(text.find(three_entry) != std::string::npos);
        REQUIRE(text.find(wide_entry) != std::string::npos);
        REQUIRE(text.find(three_entry) < text.find(wide_entry));
        std::filesystem::path const dir = std::filesystem::temp_directory_path() / "smoe_dynamic_order";
        std::filesystem::create_directories(dir);
        auto const group_of_expert3 = [&](std::string const& t) {
            std::ofstream(dir / "config.json") << t;
            return smoe::io::read_hf_config(dir / "config.json").quant->scheme_of("model.layers.0.mlp.experts.3.up_proj").group;
        };
        CHECK(group_of_expert3(text) == 32);
        std::string swapped = text;
        swapped.replace(swapped.find(wide_entry), wide_entry.size(), "@W@");
        swapped.replace(swapped.find(three_entry), three_entry.size(), wide_entry);
        swapped.replace(swapped.find("@W@"), 3, three_entry);
        CHECK(group_of_expert3(swapped) == 64);
        std::filesystem::remove_all(dir);
    }

    auto const f = smoe::io::parse_quant_config({{"quant_method", "fp8"}, {"ignored_layers", {"model.layers.*.mlp.shared_experts"}}}, "config.json");
    CHECK(!f.scheme_of("model.layers.2.mlp.shared_experts.down_proj").quantized());
    CHECK(f.scheme_of("model.layers.2.mlp.experts.0.down_proj").quantized());
}

TEST_CASE("the loader's rows of formats.md sec. 5: missing, forbidden, dtype, shape, weight_shape, group size, mixed W1/W3", "[quant][loader][errors]") {
    std::string const P = "model.layers.0.block_sparse_moe.experts.0.w1";
    auto const load_fails = [&](Model const& m, std::vector<std::string> const& parts) {
        auto const cfg = smoe::io::parse_hf_config(m.config, "config.json");
        try {
            (void)HfMoeLayer::load(cfg, m.quant, 0, {}, "ckpt");
            FAIL("no error");
        } catch (smoe::io::file_error const& e) {
            for (auto const& s : parts) CHECK_THAT(e.what(), Contains(s));
        }
    };
    // Rebuilds the block with one tensor replaced by zeros of `dt` and `shape` (or removed).
    auto const with = [&](std::string const& layout, json quant, std::string const& name, Dtype dt, std::vector<i64> shape, bool remove_only = false) {
        Model m = mixtral_int4(layout, quant);
        Model out{m.config};
        // TensorMap cannot remove: copy every tensor but the replaced one.
        TensorMap const& src = m.quant;
        std::vector<std::string> names;
        std::string const p = "model.layers.0.block_sparse_moe.";
        names.push_back(p + "gate.weight");
        for (int e = 0; e < 2; ++e)
            for (char const* w : {"w1", "w3", "w2"})
                for (char const* s : {"weight_packed", "weight_scale", "weight_shape", "weight_zero_point", "qweight", "qzeros", "scales", "g_idx"})
                    names.push_back(p + "experts." + std::to_string(e) + "." + w + "." + s);
        for (auto const& n : names)
            if (auto const* t = src.find(n); t && n.rfind(name, 0) != 0)
                out.quant.add(n, t->dtype, t->shape, std::vector<std::byte>(t->bytes.begin(), t->bytes.end()));
        if (!remove_only) {
            std::size_t n = smoe::io::dtype_size(dt);
            for (auto x : shape) n *= static_cast<std::size_t>(x);
            std::vector<std::byte> bytes(n);
            out.quant.add(name, dt, shape, std::move(bytes));
        }
        return out;
    };
    SECTION("missing tensor") {
        load_fails(with("gptq", gptq(false, false), P + ".qzeros", Dtype::I32, {}, true),
                   {"ckpt: tensor '" + P + ".qzeros'' = missing: expected the zero points [G, R/8] of a GPTQ matrix"});
        load_fails(with("ct", ct_int4(8, false), P + ".weight_zero_point", Dtype::I32, {}, true),
                   {"tensor '" + P + ".weight_zero_point'' = missing"});
    }
    SECTION("forbidden tensor") {
        auto m = mixtral_int4("ct", ct_int4(8, false));
        m.config["quantization_config"]["config_groups"]["group_0"]["weights"]["symmetric"] = true;
        load_fails(m, {"tensor '" + P + ".weight_zero_point'' = present: expected absent: the scheme is symmetric"});
        auto two = mixtral_int4("ct", ct_int4(8, false));
        put(two.quant, P + ".weight", Dtype::F32, {8, 16}, std::vector<float>(128, 0.0f));
        load_fails(two, {"tensor '" + P + ".weight'' = present: expected absent: '" + P + ".weight_packed' holds the matrix"});
        Model ignored = mixtral_int4("ct", ct_int4(8, false));
        ignored.config["quantization_config"]["ignore"] = {"re:.*experts\\.0\\.w1$"};
        load_fails(ignored, {"tensor '" + P + ".weight_packed'' = present", "leaves module '" + P + "' dense"});
    }
    SECTION("dtype") {
        load_fails(with("gptq", gptq(false, false), P + ".qweight", Dtype::F16, {2, 8}),
                   {"tensor '" + P + ".qweight' dtype' = F16: expected I32"});
        load_fails(with("ct", ct_int4(8, false), P + ".weight_scale", Dtype::I32, {8, 2}),
                   {"tensor '" + P + ".weight_scale' dtype' = I32: expected F32, BF16 or F16"});
    }
    SECTION("shape, packed size") {
        load_fails(with("ct", ct_int4(8, false), P + ".weight_packed", Dtype::I32, {8, 1}),
                   {"tensor '" + P + ".weight_packed' shape' = [8, 1]: expected [8, 2] = [R, ceil(C/8)] (R, C from config.json)"});
        load_fails(with("awq", awq(), P + ".scales", Dtype::F32, {2, 7}),
                   {"tensor '" + P + ".scales' shape' = [2, 7]: expected [2, 8] = [G, R]"});
    }
    SECTION("weight_shape contents") {
        load_fails(with("ct", ct_int4(8, false), P + ".weight_shape", Dtype::I32, {2}),
                   {"tensor '" + P + ".weight_shape'' = [0, 0]: expected [8, 16] (from config.json)"});
    }
    SECTION("group divisibility") {
        auto m = mixtral_int4("gptq", gptq(false, false));
        m.config["quantization_config"]["group_size"] = 6;
        load_fails(m, {"config.json: key 'quantization_config.group_size'' = 6: expected a divisor of in_features 16 (tensor '" + P + ".qweight')"});
    }
    SECTION("no quantization_config for quantised tensors") {
        auto m = mixtral_int4("ct", ct_int4(8, false));
        m.config.erase("quantization_config");
        load_fails(m, {"config.json: key 'quantization_config'' = missing"});
    }
    SECTION("gate and up of one expert in different formats") {
        // Expert 0's W3 left dense by `ignore` (an f32 weight), its W1 int4.
        std::string const P3 = "model.layers.0.block_sparse_moe.experts.0.w3";
        Model m = with("ct", ct_int4(8, false), P3 + ".", Dtype::F32, {}, true);
        m.config["quantization_config"]["ignore"] = {"re:.*experts\\.0\\.w3$"};
        put(m.quant, P3 + ".weight", Dtype::F32, {8, 16}, std::vector<float>(128, 0.5f));
        load_fails(m, {"ckpt: expert 0 gate and up formats' = int4-g8-asym, f32: expected one format for both"});
    }
    SECTION("a scale of 0 (an element check of the unpackers, through the loader)") {
        Model out = with("gptq", gptq(false, false), P + ".scales", Dtype::F32, {2, 8});
        load_fails(out, {"tensor '" + P + ".scales' element [0, 0]' = 0: expected a finite scale > 0"});
    }
}
