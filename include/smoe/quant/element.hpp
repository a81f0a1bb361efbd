#pragma once
// The 8- and 4-bit element codes of the quantised formats (formats.md §2.1, §3.1), decoded exactly to
// fp32. Every value is exact in fp32: e4m3 and E2M1 are short mantissas, E8M0 a power of two (2^-127 is
// an fp32 subnormal). The SIMD decoders (kernels/cpu/quant_decode.hpp) use the same arithmetic, so a
// decoded weight has the same bits on every ISA; they need subnormals kept (no DAZ in MXCSR).

#include <bit>
#include <cmath>
#include <cstdint>
#include <optional>

namespace smoe::inline v0::quant {

// 2^120: an e4m3 byte's exponent and mantissa bits moved into an fp32 at bit 20 read as 2^-120 times
// its value, normal or subnormal; one exact multiplication rescales it.
inline constexpr float kE4m3Rescale = 0x1p120f;

constexpr bool e4m3_is_nan(std::uint8_t b) { return (b & 0x7F) == 0x7F; }

// e4m3fn (bias 7, no infinities; 0x7F and 0xFF are NaN): the fp32 value, bit for bit
// torch.float8_e4m3fn -> float32.
inline float e4m3_to_float(std::uint8_t b) {
    std::uint32_t const bits = (std::uint32_t(b & 0x80) << 24) | (std::uint32_t(b & 0x7F) << 20);
    if (e4m3_is_nan(b)) return std::bit_cast<float>(bits | 0x7FC00000u);
    return std::bit_cast<float>(bits) * kE4m3Rescale;
}

// E2M1 (sign, 2 exponent bits, 1 mantissa bit), transformers' FP4_VALUES.
inline constexpr float kE2m1Values[16] = {0.0f,  0.5f,  1.0f,  1.5f,  2.0f,  3.0f,  4.0f,  6.0f,
                                          -0.0f, -0.5f, -1.0f, -1.5f, -2.0f, -3.0f, -4.0f, -6.0f};
inline float e2m1_to_float(std::uint8_t code) { return kE2m1Values[code & 15]; }

// E8M0: 2^(e - 127); 255 is NaN (OCP MX) and rejected by every loader before it gets here.
inline constexpr std::uint8_t kE8m0Nan = 255;
inline float e8m0_to_float(std::uint8_t e) {
    if (e == kE8m0Nan) return std::bit_cast<float>(0x7FC00000u);
    if (e == 0) return 0x1p-127f;  // the only subnormal
    return std::bit_cast<float>(std::uint32_t(e) << 23);
}
// The inverse: e for a scale 2^(e - 127), e = 0..254; none for any other value.
inline std::optional<std::uint8_t> float_to_e8m0(float s) {
    if (!(s > 0.0f) || !std::isfinite(s)) return std::nullopt;
    int const e = std::ilogb(s) + 127;
    if (e < 0 || e >= kE8m0Nan || e8m0_to_float(static_cast<std::uint8_t>(e)) != s) return std::nullopt;
    return static_cast<std::uint8_t>(e);
}

}  // namespace smoe::inline v0::quant
