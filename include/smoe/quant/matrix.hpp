#pragma once
// smoe::quant::Matrix: one expert matrix W [R, C] in the canonical form of its format (formats.md
// §1.1, §2.2, §3.1), what every loader decodes a checkpoint's layout into and what the expert kernels
// pack from. One code per byte: a whole expert in this form is a few bytes per weight, never an fp32
// copy. deq(o, i) is formats.md §0's W_deq, the fidelity oracle's weights.
//
// | kind         | codes [R, C]        | scales                          | zeros [R, G] | gidx [C] | values [R, C] |
// |--------------|---------------------|---------------------------------|--------------|----------|---------------|
// | f32, bf16    |                     |                                 |              |          | fp32 (bf16: exact bf16 values) |
// | int8_channel | int8 as bytes       | [R]                             |              |          |               |
// | int4         | u, 0..15            | [R, G], finite > 0              | z, 0..15     | act order|               |
// | fp8          | e4m3 bytes          | [ceil(R/bh), ceil(C/bw)] > 0    |              |          |               |
// | mxfp4        | E2M1, 0..15         | [R, C/32], 2^(e-127) (E8M0)     |              |          |               |
// | ternary      | u = t + 1, 0..2     | [1], [R] or [R, G], > 0         |              |          |               |

#include <cmath>
#include <cstdint>
#include <limits>
#include <span>
#include <string>
#include <vector>

#include "smoe/core/bf16.hpp"
#include "smoe/core/error.hpp"
#include "smoe/quant/element.hpp"
#include "smoe/quant/format.hpp"

namespace smoe::inline v0::quant {

// Act order's column groups (formats.md §5): every g_idx in [0, G) and G groups of group_cols columns
// each (act order permutes whole groups). `what` names the matrix; a packed file's column order is
// checked here too (store: QuantSwiGLU records).
inline void check_gidx(std::string const& what, Format const& format, std::int64_t cols, std::span<std::int32_t const> gidx) {
    using smoe::detail::fail;
    std::int64_t const G = format.groups(cols);
    if (static_cast<std::int64_t>(gidx.size()) != cols)
        fail(what + ".gidx", "length " + std::to_string(gidx.size()), std::to_string(cols) + " (one group per column)");
    std::vector<std::int64_t> per_group(static_cast<std::size_t>(G), 0);
    for (std::int64_t i = 0; i < cols; ++i) {
        std::int32_t const g = gidx[static_cast<std::size_t>(i)];
        if (g < 0 || g >= G) fail(what + ".gidx element [" + std::to_string(i) + "]", g, "0 <= g_idx < G = " + std::to_string(G));
        ++per_group[static_cast<std::size_t>(g)];
    }
    for (std::int64_t g = 0; g < G; ++g)
        if (per_group[static_cast<std::size_t>(g)] != format.group_cols(cols))
            fail(what + ".gidx group " + std::to_string(g), std::to_string(per_group[static_cast<std::size_t>(g)]) + " columns",
                 std::to_string(format.group_cols(cols)) + " columns in every group (act order permutes whole groups)");
}

struct Matrix {
    Format format;
    std::int64_t rows = 0, cols = 0;
    std::vector<std::uint8_t> codes;
    std::vector<float> scales;
    std::vector<std::uint8_t> zeros;
    std::vector<std::int32_t> gidx;  // int4 with act order only
    std::vector<float> values;       // f32 and bf16

    std::int64_t groups() const { return format.groups(cols); }
    std::int64_t group_of(std::int64_t i) const {
        return format.act_order ? gidx[static_cast<std::size_t>(i)] : i / format.group_cols(cols);
    }
    // The factor element (o, i) is multiplied by; 1 for f32/bf16.
    float scale_of(std::int64_t o, std::int64_t i) const {
        switch (format.kind) {
            case Kind::int8_channel: return scales[static_cast<std::size_t>(o)];
            case Kind::ternary: return scales[static_cast<std::size_t>(format.ternary_tensor() ? 0 : o * groups() + group_of(i))];
            case Kind::int4:
            case Kind::mxfp4: return scales[static_cast<std::size_t>(o * groups() + group_of(i))];
            case Kind::fp8: {
                std::int64_t const bh = format.block_rows > 0 ? format.block_rows : rows;
                std::int64_t const bw = format.group_cols(cols);
                return scales[static_cast<std::size_t>(o / bh * groups() + i / bw)];
            }
            default: return 1.0f;
        }
    }
    // The zero point the kernels subtract from a code: int4's z, ternary's 1 (u = t + 1), else 0.
    std::int32_t zero_of(std::int64_t o, std::int64_t i) const {
        if (format.kind == Kind::ternary) return 1;
        if (format.kind != Kind::int4) return 0;
        return zeros[static_cast<std::size_t>(o * groups() + group_of(i))];
    }
    // The element before its factor (int4: u - z; ternary: t), exact in fp32.
    float unscaled(std::int64_t o, std::int64_t i) const {
        std::uint8_t const c = codes.empty() ? 0 : codes[static_cast<std::size_t>(o * cols + i)];
        switch (format.kind) {
            case Kind::int8_channel: return static_cast<float>(static_cast<std::int8_t>(c));
            case Kind::int4: return static_cast<float>(int(c) - int(zeros[static_cast<std::size_t>(o * groups() + group_of(i))]));
            case Kind::fp8: return e4m3_to_float(c);
            case Kind::mxfp4: return e2m1_to_float(c);
            case Kind::ternary: return static_cast<float>(int(c) - 1);
            default: return values[static_cast<std::size_t>(o * cols + i)];
        }
    }
    // W_deq[o, i]: the exact product rounded once to fp32 (formats.md §0).
    float deq(std::int64_t o, std::int64_t i) const {
        if (!format.scaled()) return unscaled(o, i);
        return static_cast<float>(double(unscaled(o, i)) * double(scale_of(o, i)));
    }
    std::vector<float> dequantize() const {
        std::vector<float> w(static_cast<std::size_t>(rows * cols));
        for (std::int64_t o = 0; o < rows; ++o)
            for (std::int64_t i = 0; i < cols; ++i) w[static_cast<std::size_t>(o * cols + i)] = deq(o, i);
        return w;
    }

    // Sizes, code ranges, scales and gidx against the format (formats.md §5's rules on the canonical
    // form; loaders have named the file's tensors already). `what` names the matrix in messages.
    void validate(std::string const& what) const {
        using smoe::detail::fail;
        auto const size = [](auto const& v) { return static_cast<std::int64_t>(v.size()); };
        auto const need = [&](auto const& v, std::int64_t n, char const* part) {
            if (size(v) != n)
                fail(what + "." + part, "length " + std::to_string(v.size()), std::to_string(n) + " for " + name(format, cols) + " [" +
                                                                                   std::to_string(rows) + ", " + std::to_string(cols) + "]");
        };
        if (rows < 0 || cols < 0) fail(what + ".shape", "[" + std::to_string(rows) + ", " + std::to_string(cols) + "]", "non-negative");
        format.check(what, rows, cols);
        std::int64_t const G = groups();
        bool const dense = !format.scaled();
        need(values, dense ? rows * cols : 0, "values");
        need(codes, dense ? 0 : rows * cols, "codes");
        need(scales, dense ? 0 : format.kind == Kind::int8_channel ? rows : format.scale_rows(rows) * G, "scales");
        need(zeros, format.kind == Kind::int4 ? rows * G : 0, "zeros");
        need(gidx, format.act_order ? cols : 0, "gidx");
        auto const at = [](std::int64_t r, std::int64_t c) { return "element [" + std::to_string(r) + ", " + std::to_string(c) + "]"; };
        if (dense) {
            for (std::int64_t k = 0; k < size(values); ++k) {
                float const v = values[static_cast<std::size_t>(k)];
                if (!std::isfinite(v)) fail(what + " " + at(k / cols, k % cols), smoe::detail::to_text(v), "a finite weight");
                if (format.kind == Kind::bf16 && to_float(to_bf16(v)) != v)
                    fail(what + " " + at(k / cols, k % cols), smoe::detail::to_text(v), "a bf16 value (kind bf16)");
            }
            return;
        }
        std::int64_t const scols = format.kind == Kind::int8_channel ? 1 : G;
        for (std::int64_t k = 0; k < size(scales); ++k) {
            float const s = scales[static_cast<std::size_t>(k)];
            // The quantisers' all-zero rows and groups store 0 (format.hpp, quantize.hpp); files never do (§5).
            if (!std::isfinite(s) || s < 0.0f)
                fail(what + ".scales " + at(k / scols, k % scols), smoe::detail::to_text(s), "a finite scale >= 0");
            // The int8 dot panels keep an MXFP4 factor as its exponent byte (int8_dot.hpp), so it must be one.
            if (format.kind == Kind::mxfp4 && !float_to_e8m0(s))
                fail(what + ".scales " + at(k / scols, k % scols), smoe::detail::to_text(s), "an E8M0 scale 2^(e - 127), e = 0..254");
        }
        std::uint8_t const max_code = format.kind == Kind::ternary ? 2 : format.kind == Kind::int4 || format.kind == Kind::mxfp4 ? 15 : 255;
        for (std::int64_t k = 0; k < size(codes); ++k) {
            std::uint8_t const c = codes[static_cast<std::size_t>(k)];
            if (c > max_code)
                fail(what + ".codes " + at(k / cols, k % cols), int(c), format.kind == Kind::ternary ? "a ternary code 0..2 (t + 1)" : "a 4-bit code 0..15");
            if (format.kind == Kind::fp8 && e4m3_is_nan(c))
                fail(what + ".codes " + at(k / cols, k % cols), int(c), "a finite e4m3 code (0x7F and 0xFF are NaN)");
        }
        for (std::int64_t k = 0; k < size(zeros); ++k)
            if (zeros[static_cast<std::size_t>(k)] > 15)
                fail(what + ".zeros " + at(k / G, k % G), int(zeros[static_cast<std::size_t>(k)]), "a zero point 0..15");
        if (format.kind == Kind::int4 && format.symmetric)
            for (std::int64_t k = 0; k < size(zeros); ++k)
                if (zeros[static_cast<std::size_t>(k)] != 8)
                    fail(what + ".zeros " + at(k / G, k % G), int(zeros[static_cast<std::size_t>(k)]), "8 (the format is symmetric)");
        if (format.act_order) check_gidx(what, format, cols, gidx);
        if (format.kind == Kind::mxfp4)  // 2^(e-127) times 6 overflows fp32 from e = 253 (§3.1)
            for (std::int64_t o = 0; o < rows; ++o)
                for (std::int64_t i = 0; i < cols; ++i)
                    if (std::fabs(double(unscaled(o, i)) * double(scale_of(o, i))) > double(std::numeric_limits<float>::max()))
                        fail(what + " " + at(o, i), "code " + std::to_string(codes[static_cast<std::size_t>(o * cols + i)]) + " with scale " +
                                                        smoe::detail::to_text(scale_of(o, i)),
                             "a block whose values are finite in fp32");
    }
};

}  // namespace smoe::inline v0::quant
