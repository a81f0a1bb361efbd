#pragma once
// smoe::bf16: the storage type of bfloat16 weights (the upper 16 bits of an fp32), with the
// round-to-nearest-even conversion of experts.md §9. Arithmetic always happens in fp32: a bf16 is
// widened exactly (bits << 16) before any product.
//
//   smoe::bf16 b = smoe::to_bf16(1.0f + 0x1p-8f);   // 1.0: the tie goes to the even mantissa
//   float x = smoe::to_float(b);

#include <bit>
#include <cstdint>
#include <type_traits>

namespace smoe::inline v0 {

struct bf16 {
    std::uint16_t bits;
    friend constexpr bool operator==(bf16, bf16) = default;
};
static_assert(sizeof(bf16) == 2 && std::is_trivially_copyable_v<bf16> && std::is_standard_layout_v<bf16>);

// Round to nearest, ties to even, from the fp32 bits b: (b + 0x7FFF + ((b >> 16) & 1)) >> 16. Overflow
// rounds to ±inf and subnormals round like normals; every NaN becomes the quiet NaN 0x7FC0, as
// PyTorch's scalar path writes it (its vectorised path writes 0xFFFF: compare NaN-ness, not bits).
constexpr bf16 to_bf16(float x) noexcept {
    std::uint32_t const b = std::bit_cast<std::uint32_t>(x);
    if ((b & 0x7FFFFFFFu) > 0x7F800000u) return {0x7FC0};
    return {static_cast<std::uint16_t>((b + 0x7FFFu + ((b >> 16) & 1u)) >> 16)};
}

// Exact: every bf16 is an fp32 whose low 16 bits are zero.
constexpr float to_float(bf16 x) noexcept { return std::bit_cast<float>(static_cast<std::uint32_t>(x.bits) << 16); }

}  // namespace smoe::inline v0
