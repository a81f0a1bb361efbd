// Quantised weight formats (formats.md): the element decoders, the canonical Matrix, the unpackers of
// every published layout and smoe's int4 quantiser, bit for bit on the spec's worked examples
// (§1.5, §1.6, §1.7, §2.1, §2.4, §3.3), and §5's errors with their messages.

#include <bit>
#include <cmath>
#include <cstdint>
#include <limits>
#include <optional>
#include <string>
#include <vector>

#include <catch2/catch.hpp>

#include "smoe/quant/element.hpp"
#include "smoe/quant/matrix.hpp"
#include "smoe/quant/quantize.hpp"
#include "smoe/quant/unpack.hpp"

using namespace smoe::quant;
using Catch::Matchers::Contains;

namespace {

std::vector<float> row_of(Matrix const& m, std::int64_t o) {
    std::vector<float> r;
    for (std::int64_t i = 0; i < m.cols; ++i) r.push_back(m.deq(o, i));
    return r;
}
std::vector<float> col_of(Matrix const& m, std::int64_t i) {
    std::vector<float> c;
    for (std::int64_t o = 0; o < m.rows; ++o) c.push_back(m.deq(o, i));
    return c;
}
bool same_bits(std::vector<float> const& a, std::vector<float> const& b) {
    if (a.size() != b.size()) return false;
    for (std::size_t i = 0; i < a.size(); ++i)
        if (std::bit_cast<std::uint32_t>(a[i]) != std::bit_cast<std::uint32_t>(b[i])) return false;
    return true;
}
std::int32_t word(std::uint32_t w) { return std::bit_cast<std::int32_t>(w); }

// formats.md §1.5: R = 8, C = 16, g = 8.
constexpr std::int64_t R = 8, C = 16, g = 8, G = 2;
int u_of(int o, int i) { return (i + 3 * o) % 16; }
float s_of(int o, int k) { return float(8 + o) / 128.0f * std::ldexp(1.0f, -k); }
int z_of(int o, int k) { return 1 + (2 * o + 7 * k) % 15; }

std::vector<std::int32_t> ct_packed() {
    std::vector<std::int32_t> w(R * 2);
    for (int o = 0; o < R; ++o)
        for (int k = 0; k < C; ++k) w[o * 2 + k / 8] = word(std::bit_cast<std::uint32_t>(w[o * 2 + k / 8]) | std::uint32_t(u_of(o, k)) << (4 * (k % 8)));
    return w;
}
std::vector<float> scales_rg() {  // [R, G]
    std::vector<float> s;
    for (int o = 0; o < R; ++o)
        for (int k = 0; k < G; ++k) s.push_back(s_of(o, k));
    return s;
}
std::vector<float> scales_gr() {  // [G, R]
    std::vector<float> s;
    for (int k = 0; k < G; ++k)
        for (int o = 0; o < R; ++o) s.push_back(s_of(o, k));
    return s;
}
std::vector<std::int32_t> gptq_qweight() {  // [C/8, R]: qweight[w, o] = CT weight_packed[o, w]
    auto const ct = ct_packed();
    std::vector<std::int32_t> q(2 * R);
    for (int w = 0; w < 2; ++w)
        for (int o = 0; o < R; ++o) q[w * R + o] = ct[o * 2 + w];
    return q;
}

std::vector<float> const kSym0 = {-0.5f, -0.4375f, -0.375f, -0.3125f, -0.25f, -0.1875f, -0.125f, -0.0625f,
                                  0.0f,  0.03125f, 0.0625f, 0.09375f, 0.125f, 0.15625f, 0.1875f, 0.21875f};
std::vector<float> const kSym5 = {0.7109375f,   -0.8125f, -0.7109375f, -0.609375f, -0.5078125f, -0.40625f,  -0.3046875f, -0.203125f,
                                  -0.05078125f, 0.0f,     0.05078125f, 0.1015625f, 0.15234375f, 0.203125f,  0.25390625f, 0.3046875f};
std::vector<float> const kAsym0 = {-0.0625f, 0.0f,     0.0625f, 0.125f,   0.1875f, 0.25f,     0.3125f, 0.375f,
                                   0.0f,     0.03125f, 0.0625f, 0.09375f, 0.125f,  0.15625f, 0.1875f, 0.21875f};
std::vector<float> const kAsym5 = {0.40625f,   -1.1171875f, -1.015625f, -0.9140625f, -0.8125f,   -0.7109375f, -0.609375f, -0.5078125f,
                                   0.203125f, 0.25390625f, 0.3046875f, 0.35546875f, 0.40625f, 0.45703125f, 0.5078125f, 0.55859375f};
std::vector<float> const kAsymCol0 = {-0.0625f, 0.0f, 0.078125f, 0.171875f, 0.28125f, 0.40625f, -1.203125f, -1.171875f};
std::vector<std::int32_t> const kGidx = {1, 0, 0, 1, 0, 1, 1, 0, 0, 0, 1, 1, 1, 0, 1, 0};

Source const src{"f.safetensors", "m.experts.0.gate_proj"};

}  // namespace

TEST_CASE("e4m3, E2M1 and E8M0 decode as formats.md section 2.1 and 3.1 state", "[quant][formats]") {
    // The table of §2.1.
    std::pair<int, float> const table[] = {{0x00, 0.0f},   {0x01, 0x1p-9f}, {0x07, 0.013671875f}, {0x08, 0x1p-6f}, {0x38, 1.0f},
                                           {0x39, 1.125f}, {0x40, 2.0f},    {0x7E, 448.0f},       {0xB8, -1.0f},   {0xC4, -3.0f},
                                           {0xFE, -448.0f}};
    for (auto [b, v] : table) CHECK(e4m3_to_float(std::uint8_t(b)) == v);
    CHECK(std::bit_cast<std::uint32_t>(e4m3_to_float(0x80)) == 0x80000000u);  // -0
    CHECK(std::isnan(e4m3_to_float(0x7F)));
    CHECK(std::isnan(e4m3_to_float(0xFF)));
    // All 256 bytes against the formula of §2.1, computed independently in double.
    for (int b = 0; b < 256; ++b) {
        int const S = b >> 7, E = (b >> 3) & 15, M = b & 7;
        if (E == 15 && M == 7) continue;
        double const mag = E == 0 ? M * std::ldexp(1.0, -9) : (1.0 + M / 8.0) * std::ldexp(1.0, E - 7);
        INFO("byte " << b);
        CHECK(double(e4m3_to_float(std::uint8_t(b))) == (S ? -mag : mag));
    }
    CHECK(e2m1_to_float(7) == 6.0f);
    CHECK(e2m1_to_float(13) == -3.0f);
    CHECK(std::signbit(e2m1_to_float(8)));
    CHECK(e8m0_to_float(127) == 1.0f);
    CHECK(e8m0_to_float(0) == 0x1p-127f);
    CHECK(e8m0_to_float(254) == 0x1p127f);
    CHECK(std::isnan(e8m0_to_float(255)));
    // float_to_e8m0 inverts it on every e but 255, and nothing else is an E8M0 scale.
    for (int e = 0; e < 255; ++e)
        CHECK(float_to_e8m0(e8m0_to_float(std::uint8_t(e))) == std::optional<std::uint8_t>(std::uint8_t(e)));
    for (float s : {0.0f, -1.0f, 0x1p-128f, 0.75f, 3.0f, std::numeric_limits<float>::infinity(), std::numeric_limits<float>::quiet_NaN()})
        CHECK_FALSE(float_to_e8m0(s).has_value());
}

TEST_CASE("compressed-tensors pack-quantized decodes the worked example of formats.md section 1.5", "[quant][formats][int4]") {
    auto const packed = ct_packed();
    // The words the spec prints for rows 0 and 5.
    CHECK(std::bit_cast<std::uint32_t>(packed[0]) == 0x76543210u);
    CHECK(std::bit_cast<std::uint32_t>(packed[1]) == 0xFEDCBA98u);
    CHECK(std::bit_cast<std::uint32_t>(packed[10]) == 0x6543210Fu);
    CHECK(std::bit_cast<std::uint32_t>(packed[11]) == 0xEDCBA987u);
    auto const s = scales_rg();
    SECTION("symmetric") {
        Matrix const m = from_compressed_tensors(src, R, C, g, true, packed, s, {}, {}, std::nullopt, false);
        m.validate("m");
        CHECK(name(m.format, C) == "int4-g8-sym");
        CHECK(same_bits(row_of(m, 0), kSym0));
        CHECK(same_bits(row_of(m, 5), kSym5));
    }
    SECTION("asymmetric, packed zero points") {
        std::vector<std::int32_t> const zp = {word(0xFDB97531u), word(0x7531ECA8u)};
        Matrix const m = from_compressed_tensors(src, R, C, g, false, packed, s, zp, {}, std::nullopt, false);
        CHECK(same_bits(row_of(m, 0), kAsym0));
        CHECK(same_bits(row_of(m, 5), kAsym5));
        CHECK(same_bits(col_of(m, 0), kAsymCol0));
    }
    SECTION("asymmetric, unpacked I8 zero points (compressed-tensors <= 0.8)") {
        std::vector<std::int8_t> zi;
        for (int o = 0; o < R; ++o)
            for (int k = 0; k < G; ++k) zi.push_back(std::int8_t(z_of(o, k) - 8));
        Matrix const m = from_compressed_tensors(src, R, C, g, false, packed, s, {}, zi, std::nullopt, false);
        CHECK(same_bits(row_of(m, 5), kAsym5));
    }
    SECTION("the first 12 columns: a partial last word, pad nibbles ignored") {
        std::vector<std::int32_t> p12(R * 2);
        for (int o = 0; o < R; ++o)
            for (int k = 0; k < 12; ++k) p12[o * 2 + k / 8] = word(std::bit_cast<std::uint32_t>(p12[o * 2 + k / 8]) | std::uint32_t(u_of(o, k)) << (4 * (k % 8)));
        CHECK(std::bit_cast<std::uint32_t>(p12[1]) == 0x0000BA98u);
        std::vector<float> s12(R, 0.0625f);
        Matrix const m = from_compressed_tensors(src, R, 12, 0, true, p12, s12, {}, {}, std::nullopt, false);
        CHECK(m.cols == 12);
        CHECK(name(m.format, 12) == "int4-channel-sym");
        CHECK(m.deq(0, 11) == (11 - 8) * 0.0625f);
    }
    SECTION("act order with weight_g_idx, symmetric") {
        Matrix const m = from_compressed_tensors(src, R, C, g, true, packed, s, {}, {}, std::span<std::int32_t const>(kGidx), true);
        CHECK(name(m.format, C) == "int4-g8-sym-actorder");
        std::vector<float> const want = {-0.25f, -0.4375f, -0.375f, -0.15625f, -0.25f, -0.09375f, -0.0625f, -0.0625f,
                                         0.0f,   0.0625f,  0.0625f, 0.09375f,  0.125f, 0.3125f,   0.1875f,  0.4375f};
        CHECK(same_bits(row_of(m, 0), want));
    }
}

TEST_CASE("GPTQ v1 and v2 and AWQ decode the same matrix as compressed-tensors (formats.md section 1.5)", "[quant][formats][int4]") {
    auto const qw = gptq_qweight();
    auto const s = scales_gr();
    SECTION("GPTQ v1 asymmetric") {
        std::vector<std::int32_t> const qz = {word(0xECA86420u), word(0x6420DB97u)};
        Matrix const m = from_gptq(src, R, C, g, false, false, false, qw, qz, s, std::nullopt);
        CHECK(same_bits(row_of(m, 0), kAsym0));
        CHECK(same_bits(row_of(m, 5), kAsym5));
        CHECK(same_bits(col_of(m, 0), kAsymCol0));
    }
    SECTION("GPTQ v1 symmetric: every qzeros word 0x77777777") {
        std::vector<std::int32_t> const qz = {word(0x77777777u), word(0x77777777u)};
        Matrix const m = from_gptq(src, R, C, g, true, false, false, qw, qz, s, std::nullopt);
        CHECK(same_bits(row_of(m, 0), kSym0));
        CHECK(same_bits(row_of(m, 5), kSym5));
    }
    SECTION("GPTQ v2 asymmetric: z = nibble") {
        std::vector<std::int32_t> const qz = {word(0xFDB97531u), word(0x7531ECA8u)};
        Matrix const m = from_gptq(src, R, C, g, false, true, false, qw, qz, s, std::nullopt);
        CHECK(same_bits(row_of(m, 5), kAsym5));
    }
    SECTION("GPTQ v1 act order") {
        std::vector<std::int32_t> const qz = {word(0xECA86420u), word(0x6420DB97u)};
        Matrix const m = from_gptq(src, R, C, g, false, false, true, qw, qz, s, std::span<std::int32_t const>(kGidx));
        std::vector<float> const want0 = {-0.25f, 0.0f, 0.0625f, -0.15625f, 0.1875f, -0.09375f, -0.0625f, 0.375f,
                                          0.4375f, 0.5f, 0.0625f, 0.09375f, 0.125f, 0.75f, 0.1875f, 0.875f};
        std::vector<float> const want5 = {0.609375f,  -1.1171875f, -1.015625f, -0.05078125f, -0.8125f,  0.05078125f, 0.1015625f, -0.5078125f,
                                          -0.40625f, -0.3046875f, 0.3046875f, 0.35546875f,  0.40625f, 0.1015625f,  0.5078125f, 0.3046875f};
        CHECK(same_bits(row_of(m, 0), want0));
        CHECK(same_bits(row_of(m, 5), want5));
    }
    SECTION("GPTQ g_idx equal to i / g without act order is accepted and ignored") {
        std::vector<std::int32_t> const qz = {word(0xECA86420u), word(0x6420DB97u)};
        std::vector<std::int32_t> gi(C);
        for (int i = 0; i < C; ++i) gi[i] = i / g;
        Matrix const m = from_gptq(src, R, C, g, false, false, false, qw, qz, s, std::span<std::int32_t const>(gi));
        CHECK_FALSE(m.format.act_order);
        CHECK(same_bits(row_of(m, 0), kAsym0));
    }
    SECTION("AWQ, interleaved nibbles") {
        std::vector<std::uint32_t> const words = {0x5F932C60, 0x60A43D71, 0x71B54E82, 0x82C65F93, 0x93D760A4, 0xA4E871B5,
                                                  0xB5F982C6, 0xC60A93D7, 0xD71BA4E8, 0xE82CB5F9, 0xF93DC60A, 0x0A4ED71B,
                                                  0x1B5FE82C, 0x2C60F93D, 0x3D710A4E, 0x4E821B5F};
        std::vector<std::int32_t> aw;
        for (auto w : words) aw.push_back(word(w));
        std::vector<std::int32_t> const qz = {word(0xFB73D951u), word(0x73EA51C8u)};
        Matrix const m = from_awq(src, R, C, g, aw, qz, s);
        CHECK(same_bits(row_of(m, 0), kAsym0));
        CHECK(same_bits(row_of(m, 5), kAsym5));
        CHECK(same_bits(col_of(m, 0), kAsymCol0));
    }
}

TEST_CASE("FP8 e4m3 with block, channel and tensor factors decodes formats.md section 2.4", "[quant][formats][fp8]") {
    std::vector<std::uint8_t> const w = {0x38, 0x40, 0xB8, 0x00, 0x3C, 0x44, 0x30, 0xC0, 0x7E, 0x01, 0x48, 0xBC, 0x34, 0x3A, 0xFE, 0x08, 0x50, 0x28};
    SECTION("block [2, 4]") {
        std::vector<float> const s = {0.5f, 0.25f, 2.0f, 0.125f};
        Matrix const m = from_fp8(src, 3, 6, 2, 4, w, s, "weight_scale_inv");
        CHECK(name(m.format, 6) == "fp8-e4m3-b2x4");
        CHECK(same_bits(row_of(m, 0), {0.5f, 1.0f, -0.5f, 0.0f, 0.375f, 0.75f}));
        CHECK(same_bits(row_of(m, 1), {0.25f, -1.0f, 224.0f, 0.0009765625f, 1.0f, -0.375f}));
        CHECK(same_bits(row_of(m, 2), {1.5f, 2.5f, -896.0f, 0.03125f, 1.0f, 0.03125f}));
    }
    SECTION("channel") {
        std::vector<float> const s = {0.5f, 2.0f, 0.125f};
        Matrix const m = from_fp8(src, 3, 6, 1, 0, w, s, "weight_scale");
        CHECK(name(m.format, 6) == "fp8-e4m3-channel");
        CHECK(same_bits(row_of(m, 1), {1.0f, -4.0f, 896.0f, 0.00390625f, 8.0f, -3.0f}));
        CHECK(same_bits(row_of(m, 2), {0.09375f, 0.15625f, -56.0f, 0.001953125f, 1.0f, 0.03125f}));
    }
    SECTION("tensor") {
        std::vector<float> const s = {0.25f};
        Matrix const m = from_fp8(src, 3, 6, 0, 0, w, s, "weight_scale");
        CHECK(name(m.format, 6) == "fp8-e4m3-tensor");
        CHECK(same_bits(row_of(m, 2), {0.1875f, 0.3125f, -112.0f, 0.00390625f, 2.0f, 0.0625f}));
    }
}

TEST_CASE("MXFP4 blocks and E8M0 scales decode formats.md section 3.3", "[quant][formats][mxfp4]") {
    std::vector<std::uint8_t> blocks(2 * 2 * 16), scales = {127, 128, 126, 130};
    std::uint8_t const r0[8] = {0x10, 0x32, 0x54, 0x76, 0x98, 0xBA, 0xDC, 0xFE}, r1[8] = {0xEF, 0xCD, 0xAB, 0x89, 0x67, 0x45, 0x23, 0x01};
    for (int b = 0; b < 2; ++b)
        for (int j = 0; j < 16; ++j) {
            blocks[(0 * 2 + b) * 16 + j] = r0[j % 8];
            blocks[(1 * 2 + b) * 16 + j] = r1[j % 8];
        }
    Matrix const m = from_mxfp4(src, 2, 64, blocks, scales, "gate_up_proj_blocks", "gate_up_proj_scales", 0);
    m.validate("m");
    CHECK(name(m.format, 64) == "mxfp4");
    auto const row0 = row_of(m, 0), row1 = row_of(m, 1);
    CHECK(same_bits({row0.begin(), row0.begin() + 16}, {0, 0.5f, 1, 1.5f, 2, 3, 4, 6, -0.0f, -0.5f, -1, -1.5f, -2, -3, -4, -6}));
    CHECK(same_bits({row0.begin() + 32, row0.begin() + 40}, {0, 1, 2, 3, 4, 6, 8, 12}));
    CHECK(same_bits({row1.begin(), row1.begin() + 8}, {-3, -2, -1.5f, -1, -0.75f, -0.5f, -0.25f, -0.0f}));
    CHECK(same_bits({row1.begin() + 32, row1.begin() + 40}, {-48, -32, -24, -16, -12, -8, -4, -0.0f}));
    SECTION("scale extremes: bytes 0 and 252 exact, 253 overflows") {
        std::vector<std::uint8_t> bl(16, 0);
        bl[0] = 0x10;
        bl[1] = 0x76;
        for (auto [e, want] : {std::pair<int, std::vector<float>>{0, {0, 0x1p-128f, 0x1p-125f, 1.5f * 0x1p-125f}},
                               {252, {0, 0x1p124f, 0x1p127f, 1.5f * 0x1p127f}}}) {
            std::vector<std::uint8_t> const sc = {std::uint8_t(e)};
            Matrix const x = from_mxfp4(src, 1, 32, bl, sc, "b", "s");
            CHECK(same_bits({x.deq(0, 0), x.deq(0, 1), x.deq(0, 2), x.deq(0, 3)}, want));
        }
        std::vector<std::uint8_t> const sc = {253};
        CHECK_THROWS_WITH(from_mxfp4(src, 1, 32, bl, sc, "b", "s", 3),
                          Contains("element [3, 0, 0, 1]' = code 6 with scale byte 253") &&
                              Contains("a block whose values are finite in fp32"));
    }
}

TEST_CASE("int8 per channel from compressed-tensors and smoe's int4 quantiser (formats.md 1.6, 1.7)", "[quant][formats]") {
    Matrix m;
    m.format = Format::int8_channel();
    m.rows = 2;
    m.cols = 4;
    for (int v : {-128, -1, 0, 127, 5, -7, 64, -64}) m.codes.push_back(std::uint8_t(std::int8_t(v)));
    m.scales = {0.5f, 0.0078125f};
    m.validate("m");
    CHECK(same_bits(m.dequantize(), {-64, -0.5f, 0, 63.5f, 0.0390625f, -0.0546875f, 0.5f, -0.5f}));

    // amax 1.5 -> s = 0.2; W / s rounds to even at the tie 0.1 / 0.2 = 0.5 -> 0; clamp at 7.
    std::vector<float> const w = {1.5f, -1.5f, 0.1f, 0.3f, 0.0f, 0.0f, 0.0f, 0.0f, -0.7f, 0.2f, 1.4f, 0.05f, 0, 0, 0, 0};
    Matrix const q = quantize(smoe::MatrixView<float const>(w.data(), 2, 8), Format::int4(4));
    CHECK(q.scales[0] == 1.5f / 7.5f);
    CHECK(q.scales[1] == 0.0f);  // the all-zero group
    CHECK(q.scales[2] == 1.4f / 7.5f);
    auto code = [&](int o, int i) { return int(q.codes[std::size_t(o * 8 + i)]) - 8; };
    CHECK(code(0, 0) == 7);  // 7.5 clamps to 7
    CHECK(code(0, 1) == -8);  // -7.5 rounds to even -8
    CHECK(code(0, 2) == int(std::nearbyint(0.1f / (1.5f / 7.5f))));
    CHECK(code(0, 4) == 0);
    CHECK(code(1, 2) == 7);
    for (auto z : q.zeros) CHECK(z == 8);
    q.validate("q");
    CHECK_THROWS_WITH(quantize(smoe::MatrixView<float const>(w.data(), 2, 8), Format::fp8_channel()), Contains("FP8 and MXFP4 weights load from checkpoints"));
}

TEST_CASE("invalid quantised tensors get formats.md section 5's named errors", "[quant][formats][errors]") {
    auto const qw = gptq_qweight();
    auto s = scales_gr();
    SECTION("GPTQ v1 zero nibble 15") {
        std::vector<std::int32_t> const qz = {word(0xECA8642Fu), word(0x6420DB97u)};
        CHECK_THROWS_WITH(from_gptq(src, R, C, g, false, false, false, qw, qz, s, std::nullopt),
                          Contains("f.safetensors: tensor 'm.experts.0.gate_proj.qzeros' element [0, 0] nibble 0' = 15") &&
                              Contains("0..14 in a GPTQ v1 file"));
    }
    SECTION("a symmetric file's zero point other than 8") {
        std::vector<std::int32_t> const qz = {word(0x77777767u), word(0x77777777u)};
        CHECK_THROWS_WITH(from_gptq(src, R, C, g, true, false, false, qw, qz, s, std::nullopt),
                          Contains("element [0, 0] nibble 1' = 6") && Contains("7 (zero point 8: sym is true)"));
    }
    SECTION("zero, negative, NaN and infinite scales") {
        std::vector<std::int32_t> const qz = {word(0x77777777u), word(0x77777777u)};
        for (float bad : {0.0f, -0.1f, std::numeric_limits<float>::quiet_NaN(), std::numeric_limits<float>::infinity()}) {
            auto t = s;
            t[1 * R + 5] = bad;
            CHECK_THROWS_WITH(from_gptq(src, R, C, g, true, false, false, qw, qz, t, std::nullopt),
                              Contains("tensor 'm.experts.0.gate_proj.scales' element [1, 5]") && Contains("a finite scale > 0"));
        }
    }
    SECTION("g_idx out of range, and not i / g without act order") {
        std::vector<std::int32_t> const qz = {word(0x77777777u), word(0x77777777u)};
        auto gi = kGidx;
        gi[3] = 2;
        CHECK_THROWS_WITH(from_gptq(src, R, C, g, true, false, true, qw, qz, s, std::span<std::int32_t const>(gi)),
                          Contains("tensor 'm.experts.0.gate_proj.g_idx' element [3]' = 2") && Contains("0 <= g_idx < G = 2"));
        CHECK_THROWS_WITH(from_gptq(src, R, C, g, true, false, false, qw, qz, s, std::span<std::int32_t const>(kGidx)),
                          Contains("element [0]' = 1") && Contains("i / group_size = 0 (desc_act is false)"));
    }
    SECTION("FP8 NaN codes") {
        std::vector<std::uint8_t> w(18, 0x38);
        w[7] = 0xFF;
        std::vector<float> const sc = {1.0f};
        CHECK_THROWS_WITH(from_fp8(src, 3, 6, 0, 0, w, sc, "weight_scale"),
                          Contains("tensor 'm.experts.0.gate_proj.weight' element [1, 1]' = 0xFF") && Contains("0x7F and 0xFF are NaN"));
    }
    SECTION("E8M0 255") {
        std::vector<std::uint8_t> const bl(16, 0), sc = {255};
        CHECK_THROWS_WITH(from_mxfp4(src, 1, 32, bl, sc, "down_proj_blocks", "down_proj_scales", 2),
                          Contains("tensor 'm.experts.0.gate_proj.down_proj_scales' element [2, 0, 0]' = 255") && Contains("255 is NaN"));
    }
    SECTION("a packed tensor of the wrong size") {
        auto p = ct_packed();
        p.pop_back();
        CHECK_THROWS_WITH(from_compressed_tensors(src, R, C, g, true, p, scales_rg(), {}, {}, std::nullopt, false),
                          Contains("tensor 'm.experts.0.gate_proj.weight_packed' shape") && Contains("[R, ceil(C/8)]"));
    }
    SECTION("CT I8 zero points outside -8..7") {
        std::vector<std::int8_t> zi(R * G, 0);
        zi[3] = 9;
        CHECK_THROWS_WITH(from_compressed_tensors(src, R, C, g, false, ct_packed(), scales_rg(), {}, zi, std::nullopt, false),
                          Contains("weight_zero_point' element [1, 1]' = 9"));
    }
    SECTION("canonical matrices: codes, sizes and act-order groups") {
        Matrix m = quantize(smoe::MatrixView<float const>(s.data(), 2, 8), Format::int4(4));
        m.codes[3] = 16;
        CHECK_THROWS_WITH(m.validate("w1"), Contains("w1.codes element [0, 3]") && Contains("a 4-bit code 0..15"));
        m.codes[3] = 1;
        m.scales.pop_back();
        CHECK_THROWS_WITH(m.validate("w1"), Contains("w1.scales") && Contains("length 3"));
        CHECK_THROWS_WITH(Format::int4(3).check("w", 2, 8), Contains("a divisor of in_features 8"));
        Matrix x;
        x.format = Format::mxfp4();
        x.rows = 1;
        x.cols = 64;
        x.codes.assign(64, 3);
        x.scales = {0x1p-127f, 0x1p127f};
        x.validate("x");
        for (float bad : {0.75f, 0.0f, 0x1p-128f}) {
            x.scales[1] = bad;
            CHECK_THROWS_WITH(x.validate("x"), Contains("x.scales element [0, 1]") && Contains("an E8M0 scale"));
        }
    }
}
