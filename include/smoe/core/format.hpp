#pragma once
// Expert weight formats as storage traits (experts.md §9): what is stored, its size, and how an
// element widens to fp32. Kernels compute in fp32 whatever the format.
//
// | format                   | stored                              | widening to fp32             |
// |--------------------------|-------------------------------------|------------------------------|
// | format::F32 (float)      | fp32                                | none                         |
// | format::Bf16 (bf16)      | bf16, upper half of an fp32         | bits << 16, exact            |
// | format::Int8PerChannel   | q int8 [out, in], s fp32 [out]      | W[o, i] = s[o] · q[o, i]     |
//
// quantize_int8_per_channel is smoe's quantiser, bit for bit the rule of §9: amax = max_i |W[o, i]|,
// s = amax / 127 (fp32), q = clamp(rint(W / s), -127, 127) with ties to even; a zero row stores s = 0,
// q = 0. Loaders that receive pre-quantised (q, s) pass them through unchanged.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <span>
#include <string>
#include <type_traits>
#include <vector>

#include "smoe/core/bf16.hpp"
#include "smoe/core/error.hpp"
#include "smoe/core/view.hpp"

namespace smoe::inline v0 {

namespace format {
using F32 = float;
using Bf16 = smoe::bf16;
using Int8PerChannel = std::int8_t;
}  // namespace format

template <class W>
inline constexpr bool is_weight_format_v =
    std::is_same_v<W, format::F32> || std::is_same_v<W, format::Bf16> || std::is_same_v<W, format::Int8PerChannel>;

template <class W>
struct FormatTraits;
template <>
struct FormatTraits<float> {
    static constexpr char const* name = "f32";
    static constexpr bool has_scales = false;
    static float widen(float w) { return w; }
};
template <>
struct FormatTraits<bf16> {
    static constexpr char const* name = "bf16";
    static constexpr bool has_scales = false;
    static float widen(bf16 w) { return to_float(w); }
};
template <>
struct FormatTraits<std::int8_t> {
    static constexpr char const* name = "int8";
    static constexpr bool has_scales = true;  // one fp32 per output channel, applied after the dot product
    static float widen(std::int8_t w) { return static_cast<float>(w); }
};

// q [rows, cols] and s [rows] from src [rows, cols]; see the top of this file.
inline void quantize_int8_per_channel(MatrixView<float const> src, MatrixView<std::int8_t> q, std::span<float> s) {
    smoe::detail::check_view(src, "src", -1, -1);
    smoe::detail::check_view(q, "q", src.rows, src.cols);
    if (static_cast<std::int64_t>(s.size()) != src.rows)
        smoe::detail::fail("s", "length " + std::to_string(s.size()), "one scale per row (" + std::to_string(src.rows) + ")");
    for (std::int64_t o = 0; o < src.rows; ++o) {
        float amax = 0.0f;
        for (std::int64_t i = 0; i < src.cols; ++i) {
            float const v = src(o, i);
            if (!std::isfinite(v))
                smoe::detail::fail("src", smoe::detail::to_text(v) + " at row " + std::to_string(o) + ", column " + std::to_string(i),
                                   "finite weights");
            amax = std::max(amax, std::fabs(v));
        }
        float const scale = amax / 127.0f;
        s[static_cast<std::size_t>(o)] = scale;
        for (std::int64_t i = 0; i < src.cols; ++i) {
            // nearbyint rounds ties to even in the default rounding mode; |W / s| <= 127 up to one
            // rounding of the division, which the clamp absorbs.
            float const r = scale == 0.0f ? 0.0f : std::nearbyint(src(o, i) / scale);
            q(o, i) = static_cast<std::int8_t>(std::clamp(r, -127.0f, 127.0f));
        }
    }
}

struct Int8Quantized {
    std::vector<std::int8_t> q;  // [rows, cols]
    std::vector<float> s;        // [rows]
};

inline Int8Quantized quantize_int8_per_channel(MatrixView<float const> src) {
    smoe::detail::check_view(src, "src", -1, -1);
    Int8Quantized out{std::vector<std::int8_t>(static_cast<std::size_t>(src.rows * src.cols)),
                      std::vector<float>(static_cast<std::size_t>(src.rows))};
    quantize_int8_per_channel(src, MatrixView<std::int8_t>(out.q.data(), src.rows, src.cols), out.s);
    return out;
}

}  // namespace smoe::inline v0
