#pragma once
// The safetensors element types smoe reads, and the exact widening of the 16-bit floats to float.

#include <smoe/io/file_error.hpp>

#include <array>
#include <bit>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <string_view>

namespace smoe::inline v0::io {

// F8_E4M3, F8_E5M2 and F8_E8M0 are read as bytes (quantised weights and scales, formats.md §2-§3).
enum class Dtype { F64, F32, F16, BF16, I64, I32, I16, I8, U8, BOOL, F8_E4M3, F8_E5M2, F8_E8M0 };

inline constexpr std::array<Dtype, 13> kAllDtypes = {Dtype::F64, Dtype::F32, Dtype::F16,     Dtype::BF16,    Dtype::I64,
                                                     Dtype::I32, Dtype::I16, Dtype::I8,      Dtype::U8,      Dtype::BOOL,
                                                     Dtype::F8_E4M3, Dtype::F8_E5M2, Dtype::F8_E8M0};

constexpr std::size_t dtype_size(Dtype t) noexcept {
    switch (t) {
        case Dtype::F64: case Dtype::I64: return 8;
        case Dtype::F32: case Dtype::I32: return 4;
        case Dtype::F16: case Dtype::BF16: case Dtype::I16: return 2;
        case Dtype::I8: case Dtype::U8: case Dtype::BOOL:
        case Dtype::F8_E4M3: case Dtype::F8_E5M2: case Dtype::F8_E8M0: return 1;
    }
    return 0;
}

// The names safetensors writes in the header.
constexpr std::string_view dtype_name(Dtype t) noexcept {
    switch (t) {
        case Dtype::F64: return "F64";
        case Dtype::F32: return "F32";
        case Dtype::F16: return "F16";
        case Dtype::BF16: return "BF16";
        case Dtype::I64: return "I64";
        case Dtype::I32: return "I32";
        case Dtype::I16: return "I16";
        case Dtype::I8: return "I8";
        case Dtype::U8: return "U8";
        case Dtype::BOOL: return "BOOL";
        case Dtype::F8_E4M3: return "F8_E4M3";
        case Dtype::F8_E5M2: return "F8_E5M2";
        case Dtype::F8_E8M0: return "F8_E8M0";
    }
    return "?";
}

// nullopt for names safetensors has but smoe does not read (U16, U32, U64, F4, ...) and for junk.
constexpr std::optional<Dtype> parse_dtype(std::string_view name) noexcept {
    for (Dtype t : kAllDtypes)
        if (dtype_name(t) == name) return t;
    return std::nullopt;
}

inline constexpr std::string_view kDtypeNames = "one of F64, F32, F16, BF16, I64, I32, I16, I8, U8, BOOL, F8_E4M3, F8_E5M2, F8_E8M0";

// bf16 is the upper half of a float: widening is a shift, exact for every value including nan payloads.
constexpr float bf16_to_f32(std::uint16_t bits) noexcept {
    return std::bit_cast<float>(static_cast<std::uint32_t>(bits) << 16);
}

// IEEE binary16 -> binary32, exact for every input: normals re-bias the exponent, subnormals are
// normalised (binary32 has room for all of them), inf stays inf, nan keeps its payload's top bits.
constexpr float f16_to_f32(std::uint16_t bits) noexcept {
    std::uint32_t const sign = static_cast<std::uint32_t>(bits & 0x8000u) << 16;
    std::uint32_t exponent = (bits >> 10) & 0x1Fu;
    std::uint32_t mantissa = bits & 0x3FFu;
    if (exponent == 0x1Fu) return std::bit_cast<float>(sign | 0x7F800000u | (mantissa << 13));
    if (exponent == 0) {
        if (mantissa == 0) return std::bit_cast<float>(sign);
        // Subnormal m * 2^-24: shift the leading 1 up to the implicit-bit position.
        exponent = 127 - 15 + 1;
        while ((mantissa & 0x400u) == 0) {
            mantissa <<= 1;
            --exponent;
        }
        mantissa &= 0x3FFu;
        return std::bit_cast<float>(sign | (exponent << 23) | (mantissa << 13));
    }
    return std::bit_cast<float>(sign | ((exponent + 127 - 15) << 23) | (mantissa << 13));
}

}  // namespace smoe::inline v0::io
