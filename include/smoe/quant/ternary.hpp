#pragma once
// Ternary expert weights (research.md §7; MoTE: Wang et al., arXiv 2506.14435; the grid of BitNet b1.58,
// Ma et al., arXiv 2402.17764): W[o, i] = t[o, i] · s(o, i), t ∈ {−1, 0, +1}, s an fp32 scale per
// tensor, row or group of g columns (quant::Format::ternary). In memory the canonical quant::Matrix holds
// u = t + 1 per byte; the quantiser is quant::quantize's absmean. This file is the files' side:
//
//   2b  (per row along C, ⌈C/4⌉ bytes): column 4b + j in bits 2j..2j+1 of byte b as u = t + 1; u = 3
//       is invalid; fields past C are written as u = 1 and ignored on reading
//   b3  (per row along C, ⌈C/5⌉ bytes; llama.cpp TQ1_0's byte code): N = Σ_n u_n · 3^(4−n) over columns
//       5b..5b+4 (5b most significant), q = ⌈256·N / 243⌉ = (256·N + 242) div 243; decoding is
//       u_n = (((q · 3^n) mod 256) · 3) >> 8. The 13 bytes that decode to trits re-encoding to another
//       byte (0x01, 0x14, 0x28, ...) are invalid
//   HF BitNet (quant_method "bitnet"): `weight` U8 [R/4, C] packed along rows, bits 2i..2i+1 of
//       weight[j, c] holding row i·(R/4) + j as u = t + 1 (R % 4 = 0); `weight_scale` [1] divides
//       (linear_class "bitlinear", the default: s = fl32(1 / weight_scale)) or multiplies ("autobitlinear")
//
// Example (research.md §7.6): row t = [1, 0, 1, −1, 0] packs as 2b bytes 0x26, 0x55 and b3 byte 0xDC
// (u = [2, 1, 2, 0, 1], N = 208, q = ⌈53248 / 243⌉ = 220).
//
// Errors follow formats.md §5: "FILE: tensor 'P.weight_ternary' element [o, b] field j" = 3: expected
// 0..2 (t + 1); "... element [o, b]" = 0x14: expected a base-3 code byte; scales finite and > 0.

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <span>
#include <string>
#include <vector>

#include "smoe/quant/matrix.hpp"
#include "smoe/quant/unpack.hpp"

namespace smoe::inline v0::quant {

inline std::int64_t ternary_row_bytes(TernaryPacking p, std::int64_t C) { return p == TernaryPacking::b3 ? (C + 4) / 5 : (C + 3) / 4; }

// The five trits of a base-3 byte, most significant first, by multiplies and shifts only.
inline void ternary_b3_decode(std::uint8_t q, std::uint8_t (&u)[5]) {
    static constexpr unsigned kPow3[5] = {1, 3, 9, 27, 81};
    for (int n = 0; n < 5; ++n) u[n] = static_cast<std::uint8_t>((((unsigned(q) * kPow3[n]) & 255u) * 3u) >> 8);
}

inline std::uint8_t ternary_b3_encode(std::uint8_t const (&u)[5]) {
    unsigned N = 0;
    for (int n = 0; n < 5; ++n) N = N * 3 + u[n];
    return static_cast<std::uint8_t>((256u * N + 242u) / 243u);
}

// The file bytes [R, ternary_row_bytes] of a ternary matrix in the packing its format names.
inline std::vector<std::uint8_t> pack_ternary(Matrix const& m) {
    std::int64_t const R = m.rows, C = m.cols, B = ternary_row_bytes(m.format.packing, C);
    std::vector<std::uint8_t> out(static_cast<std::size_t>(R * B));
    auto const u_at = [&](std::int64_t o, std::int64_t i) -> std::uint8_t { return i < C ? m.codes[static_cast<std::size_t>(o * C + i)] : 1; };
    for (std::int64_t o = 0; o < R; ++o)
        for (std::int64_t b = 0; b < B; ++b) {
            std::uint8_t& byte = out[static_cast<std::size_t>(o * B + b)];
            if (m.format.packing == TernaryPacking::p2b) {
                for (int j = 0; j < 4; ++j) byte = static_cast<std::uint8_t>(byte | (u_at(o, 4 * b + j) << (2 * j)));
            } else {
                std::uint8_t u[5];
                for (int n = 0; n < 5; ++n) u[n] = u_at(o, 5 * b + n);
                byte = ternary_b3_encode(u);
            }
        }
    return out;
}

namespace detail {

inline std::string hex_byte(std::uint8_t b) {
    char buf[8];
    std::snprintf(buf, sizeof buf, "0x%02X", unsigned(b));
    return buf;
}

// s as the file gives it: [1], [R] (or [R, 1]) or [R, G], each finite and > 0.
inline std::vector<float> ternary_scales(Source const& src, char const* suffix, std::span<float const> s, Format const& f, std::int64_t R,
                                         std::int64_t C) {
    std::int64_t const G = f.groups(C), n = f.ternary_tensor() ? 1 : R * G;
    require_size(src, suffix, s, n,
                 f.ternary_tensor() ? "[1]" : "[R, " + std::to_string(G) + "] (R " + std::to_string(R) + ")");
    check_file_scales(src, suffix, s, f.ternary_tensor() ? 1 : G);
    return {s.begin(), s.end()};
}

}  // namespace detail

// smoe-native files: `P.weight_ternary` U8 [R, ternary_row_bytes] and `P.weight_scale` F32; the
// format (packing, scale unit, group) comes from quantization_config. Checks every byte and scale.
// packed is [packed_rows, packed_cols] as the file's header gives them.
inline Matrix unpack_ternary(Source const& src, std::span<std::uint8_t const> packed, std::int64_t packed_rows, std::int64_t packed_cols,
                             std::span<float const> scale, Format const& f, std::int64_t R, std::int64_t C) {
    if (f.kind == Kind::ternary && f.ternary_scale == TernaryScale::group && (f.group < 1 || C % f.group != 0))
        io::detail::file_fail(src.file, "key 'quantization_config.group_size'", f.group, "a divisor of in_features " + std::to_string(C));
    f.check("format", R, C);
    std::int64_t const B = ternary_row_bytes(f.packing, C);
    if (packed_rows != R || packed_cols != B || static_cast<std::int64_t>(packed.size()) != R * B)
        io::detail::file_fail(src.file, "tensor " + src.tensor("weight_ternary") + " shape", detail::index_text({packed_rows, packed_cols}),
                              "[R, ceil(C/4)] = " + detail::index_text({R, (C + 3) / 4}) + " (2b) or [R, ceil(C/5)] = " +
                                  detail::index_text({R, (C + 4) / 5}) + " (b3)");
    Matrix m;
    m.format = f;
    m.rows = R;
    m.cols = C;
    m.codes.resize(static_cast<std::size_t>(R * C));
    for (std::int64_t o = 0; o < R; ++o)
        for (std::int64_t b = 0; b < B; ++b) {
            std::uint8_t const byte = packed[static_cast<std::size_t>(o * B + b)];
            std::string const at = "tensor " + src.tensor("weight_ternary") + " element " + detail::index_text({o, b});
            if (f.packing == TernaryPacking::p2b) {
                for (int j = 0; j < 4 && 4 * b + j < C; ++j) {
                    unsigned const u = (byte >> (2 * j)) & 3u;
                    if (u == 3) io::detail::file_fail(src.file, at + " field " + std::to_string(j), 3, "0..2 (t + 1)");
                    m.codes[static_cast<std::size_t>(o * C + 4 * b + j)] = static_cast<std::uint8_t>(u);
                }
            } else {
                std::uint8_t u[5];
                ternary_b3_decode(byte, u);
                if (ternary_b3_encode(u) != byte)
                    io::detail::file_fail(src.file, at, detail::hex_byte(byte), "a base-3 code byte (not one of the 13 non-codes)");
                for (int n = 0; n < 5 && 5 * b + n < C; ++n) m.codes[static_cast<std::size_t>(o * C + 5 * b + n)] = u[n];
            }
        }
    m.scales = detail::ternary_scales(src, "weight_scale", scale, f, R, C);
    return m;
}

// Hugging Face BitNet: `P.weight` U8 [R/4, C], `P.weight_scale` [1] (widened exactly to fp32 by the
// caller); `bitlinear` true divides (s = fl32(1 / weight_scale)), false multiplies (autobitlinear).
inline Matrix unpack_bitnet(Source const& src, std::span<std::uint8_t const> weight, std::int64_t weight_rows, std::int64_t weight_cols,
                            float weight_scale, bool bitlinear, std::int64_t R, std::int64_t C, TernaryPacking file_packing = TernaryPacking::p2b) {
    if (R % 4 != 0 || weight_rows != R / 4 || weight_cols != C)
        io::detail::file_fail(src.file, "tensor " + src.tensor("weight") + " shape",
                              "[" + std::to_string(weight_rows) + ", " + std::to_string(weight_cols) + "] with out_features " + std::to_string(R),
                              "[out_features / 4, in_features] and out_features % 4 = 0");
    if (!std::isfinite(weight_scale) || !(weight_scale > 0.0f))
        io::detail::file_fail(src.file, "tensor " + src.tensor("weight_scale") + " element [0]", weight_scale, "a finite scale > 0");
    Matrix m;
    m.format = Format::ternary(TernaryScale::tensor, 0, file_packing);
    m.rows = R;
    m.cols = C;
    m.codes.resize(static_cast<std::size_t>(R * C));
    std::int64_t const Q = R / 4;
    for (std::int64_t j = 0; j < Q; ++j)
        for (std::int64_t c = 0; c < C; ++c) {
            std::uint8_t const byte = weight[static_cast<std::size_t>(j * C + c)];
            for (int i = 0; i < 4; ++i) {
                unsigned const u = (byte >> (2 * i)) & 3u;
                if (u == 3)
                    io::detail::file_fail(src.file, "tensor " + src.tensor("weight") + " element " + detail::index_text({j, c}) + " field " +
                                                        std::to_string(i),
                                          3, "0..2 (t + 1)");
                m.codes[static_cast<std::size_t>((i * Q + j) * C + c)] = static_cast<std::uint8_t>(u);
            }
        }
    float const s = bitlinear ? 1.0f / weight_scale : weight_scale;
    if (!std::isfinite(s) || !(s > 0.0f))
        io::detail::file_fail(src.file, "tensor " + src.tensor("weight_scale") + " element [0]", weight_scale, "a scale whose inverse is finite");
    m.scales = {s};
    return m;
}

}  // namespace smoe::inline v0::quant
