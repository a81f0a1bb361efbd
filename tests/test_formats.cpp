// Weight formats (experts.md §9): bf16 round-to-nearest-even and the int8 per-channel quantiser, on
// hand-computed examples.

#include <bit>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include <catch2/catch.hpp>

#include "smoe/core/bf16.hpp"
#include "smoe/core/format.hpp"

using smoe::bf16;
using smoe::to_bf16;
using smoe::to_float;
using Catch::Matchers::Contains;

namespace {
std::uint16_t bits_of(float x) { return to_bf16(x).bits; }
float from_bits(std::uint32_t b) { return std::bit_cast<float>(b); }
}  // namespace

TEST_CASE("bf16 rounds to nearest with ties to even, as experts.md section 9 states", "[formats][bf16]") {
    static_assert(to_bf16(1.0f).bits == 0x3F80, "to_bf16 is usable in constant expressions");
    CHECK(bits_of(1.0f + 0x1p-8f) == 0x3F80);              // tie, even mantissa stays: 1.0
    CHECK(to_float(to_bf16(1.0f + 3 * 0x1p-8f)) == 1.015625f);  // tie, odd mantissa rounds up
    CHECK(bits_of(1.0f + 0x1p-8f + 0x1p-20f) == 0x3F81);   // above the tie rounds up
    CHECK(bits_of(-2.0f) == 0xC000);
    CHECK(bits_of(0.0f) == 0x0000);
    CHECK(bits_of(-0.0f) == 0x8000);
    CHECK(bits_of(std::numeric_limits<float>::infinity()) == 0x7F80);
    CHECK(bits_of(-std::numeric_limits<float>::infinity()) == 0xFF80);
    // Overflow: FLT_MAX lies above the largest bf16 (0x7F7F) by more than half an ulp.
    CHECK(bits_of(std::numeric_limits<float>::max()) == 0x7F80);
    CHECK(bits_of(-std::numeric_limits<float>::max()) == 0xFF80);
    CHECK(bits_of(from_bits(0x7F7F7FFF)) == 0x7F7F);  // just below the tie: the largest finite bf16
    CHECK(bits_of(from_bits(0x7F7F8000)) == 0x7F80);  // the tie at the top goes to the even: inf
    // Subnormals round like normals.
    CHECK(bits_of(from_bits(0x00008000)) == 0x0000);
    CHECK(bits_of(from_bits(0x00018000)) == 0x0002);
    CHECK(bits_of(from_bits(0x00018001)) == 0x0002);
    CHECK(bits_of(from_bits(0x00010001)) == 0x0001);
}

TEST_CASE("bf16 conversion turns every NaN into a quiet NaN and widening is exact", "[formats][bf16]") {
    for (std::uint32_t b : {0x7FC00000u, 0x7F800001u, 0xFFFFFFFFu, 0x7FFFFFFFu, 0xFF800001u}) {
        INFO("bits " << b);
        CHECK(std::isnan(to_float(to_bf16(from_bits(b)))));
        CHECK(to_bf16(from_bits(b)).bits == 0x7FC0);
    }
    // A NaN whose low half would carry into the exponent must not become inf.
    CHECK(std::isnan(to_float(to_bf16(from_bits(0x7F80FFFFu)))));
    for (std::uint32_t hi = 0; hi < 0x10000u; hi += 0x101u) {
        bf16 const b{static_cast<std::uint16_t>(hi)};
        CHECK(std::bit_cast<std::uint32_t>(to_float(b)) == hi << 16);
        if (!std::isnan(to_float(b))) CHECK(to_bf16(to_float(b)) == b);  // a bf16 value survives the round trip
    }
}

TEST_CASE("the int8 per-channel quantiser matches hand-computed q and s bit for bit", "[formats][int8]") {
    // Row 0: amax 127 -> s = 1, so q = rint(W) with ties to even. Row 1: amax 254 -> s = 2.
    // Row 2: all zero -> s = 0, q = 0. Row 3: the amax is negative.
    std::vector<float> const w = {127, -2.5f, 3.5f, -0.5f, 0.5f, 1.5f, -127, 126.6f,
                                  254, 5, -7, 3, 0.9f, -1, 2, -3.1f,
                                  0, 0, -0.0f, 0, 0, 0, 0, 0,
                                  -254, 1, 3, -3, 127, 0, 0, 0};
    auto const r = smoe::quantize_int8_per_channel(smoe::MatrixView<float const>(w.data(), 4, 8));
    CHECK(r.s == std::vector<float>{1.0f, 2.0f, 0.0f, 2.0f});
    std::vector<std::int8_t> const want = {127, -2, 4, 0, 0, 2, -127, 127,
                                           127, 2, -4, 2, 0, 0, 1, -2,
                                           0, 0, 0, 0, 0, 0, 0, 0,
                                           -127, 0, 2, -2, 64, 0, 0, 0};
    CHECK(r.q == want);
}

TEST_CASE("the int8 quantiser divides by amax / 127 in fp32 and never stores -128", "[formats][int8]") {
    std::vector<float> const w = {0.3f, -0.1f, 0.2f, -0.3f, 0.15f};
    auto const r = smoe::quantize_int8_per_channel(smoe::MatrixView<float const>(w.data(), 1, 5));
    float const s = 0.3f / 127.0f;
    REQUIRE(r.s[0] == s);
    for (std::size_t i = 0; i < w.size(); ++i) {
        INFO("column " << i);
        CHECK(r.q[i] == static_cast<std::int8_t>(std::nearbyint(w[i] / s)));
        CHECK(r.q[i] >= -127);
    }
    CHECK(r.q[0] == 127);
    CHECK(r.q[3] == -127);
}

TEST_CASE("the int8 quantiser rejects non-finite weights and mismatched outputs", "[formats][int8]") {
    std::vector<float> w = {1, 2, std::numeric_limits<float>::infinity(), 4};
    CHECK_THROWS_WITH(smoe::quantize_int8_per_channel(smoe::MatrixView<float const>(w.data(), 2, 2)),
                      Contains("'src' = inf at row 1, column 0") && Contains("finite weights"));
    w[2] = 3;
    std::vector<std::int8_t> q(4);
    std::vector<float> s(3);
    CHECK_THROWS_WITH(smoe::quantize_int8_per_channel(smoe::MatrixView<float const>(w.data(), 2, 2),
                                                      smoe::MatrixView<std::int8_t>(q.data(), 2, 2), s),
                      Contains("'s' = length 3"));
}
