#pragma once
// Published checkpoint layouts -> smoe::quant::Matrix (formats.md §1.2-§1.4, §2.2-§2.3, §3.2), one
// matrix at a time, with §5's element checks. The caller (a loader) has read the tensors, checked
// their dtypes and shapes against config.json, and widened float scales exactly to fp32; these
// functions take the raw words and bytes in the file's own orientation and name them in errors:
//
//   "FILE: tensor 'P.qzeros' element [k, w] nibble j" = 15: expected 0..14 in a GPTQ v1 file ...
//
// Element indices are the file tensor's (row-major, first offender), as §5 requires.

#include <cmath>
#include <cstdint>
#include <limits>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "smoe/io/file_error.hpp"
#include "smoe/quant/matrix.hpp"

namespace smoe::inline v0::quant {

// Names for messages: the file and the module prefix P ("model.layers.0.mlp.experts.3.gate_proj").
struct Source {
    std::string file;
    std::string prefix;
    std::string tensor(char const* suffix) const { return io::detail::quoted(prefix + "." + suffix); }
};

namespace detail {

inline std::string index_text(std::initializer_list<std::int64_t> idx) {
    std::string s = "[";
    bool first = true;
    for (auto v : idx) {
        if (!first) s += ", ";
        s += std::to_string(v);
        first = false;
    }
    return s + "]";
}
inline unsigned nibble(std::int32_t word, int k) { return (static_cast<std::uint32_t>(word) >> (4 * k)) & 15u; }

template <class T>
void require_size(Source const& src, char const* suffix, std::span<T const> v, std::int64_t n, std::string const& shape) {
    if (static_cast<std::int64_t>(v.size()) != n)
        io::detail::file_fail(src.file, "tensor " + src.tensor(suffix) + " shape", std::to_string(v.size()) + " elements",
                              std::to_string(n) + " = " + shape);
}

// Scales of §1-§2 as stored in the file ([rows, cols] in its orientation): finite and > 0.
inline void check_file_scales(Source const& src, char const* suffix, std::span<float const> s, std::int64_t cols) {
    for (std::size_t k = 0; k < s.size(); ++k)
        if (!std::isfinite(s[k]) || !(s[k] > 0.0f))
            io::detail::file_fail(src.file,
                                  "tensor " + src.tensor(suffix) + " element " +
                                      index_text({static_cast<std::int64_t>(k) / cols, static_cast<std::int64_t>(k) % cols}),
                                  s[k], "a finite scale > 0");
}

// gidx from a file: in range, and i / g unless act order (formats.md §8.3).
inline std::vector<std::int32_t> read_gidx(Source const& src, char const* suffix, std::span<std::int32_t const> g_idx, std::int64_t C,
                                           std::int64_t g, std::int64_t G, bool act_order) {
    require_size(src, suffix, g_idx, C, "[C]");
    for (std::int64_t i = 0; i < C; ++i) {
        std::int32_t const v = g_idx[static_cast<std::size_t>(i)];
        std::string const what = "tensor " + src.tensor(suffix) + " element " + index_text({i});
        if (v < 0 || v >= G) io::detail::file_fail(src.file, what, v, "0 <= g_idx < G = " + std::to_string(G));
        if (!act_order && v != i / g)
            io::detail::file_fail(src.file, what, v, "i / group_size = " + std::to_string(i / g) + " (desc_act is false)");
    }
    if (!act_order) return {};
    std::vector<std::int64_t> count(static_cast<std::size_t>(G), 0);
    for (auto v : g_idx) ++count[static_cast<std::size_t>(v)];
    for (std::int64_t k = 0; k < G; ++k)
        if (count[static_cast<std::size_t>(k)] != g)
            io::detail::file_fail(src.file, "tensor " + src.tensor(suffix) + " group " + std::to_string(k),
                                  std::to_string(count[static_cast<std::size_t>(k)]) + " columns",
                                  std::to_string(g) + " columns (group_size) in every group");
    return {g_idx.begin(), g_idx.end()};
}

inline Matrix int4_matrix(std::int64_t R, std::int64_t C, std::int64_t g, bool sym, bool act) {
    Matrix m;
    m.format = Format::int4(g == C ? 0 : g, sym, act);
    m.rows = R;
    m.cols = C;
    m.codes.resize(static_cast<std::size_t>(R * C));
    m.zeros.assign(static_cast<std::size_t>(R * (C / g)), 8);
    return m;
}

}  // namespace detail

// Group size g of a file (-1 or 0: per channel) as columns per group; C % g is checked by the loader
// against `key 'quantization_config.group_size'` (§5); here it is a precondition.
inline std::int64_t file_group(std::int64_t g, std::int64_t C) { return g <= 0 ? C : g; }

// compressed-tensors pack-quantized (§1.2). weight_packed I32 [R, ceil(C/8)]; weight_scale [R, G];
// zero points either packed I32 [ceil(R/8), G] (zero_packed) or I8 [R, G] (zero_i8, ≤ 0.8), both
// absent when symmetric; weight_g_idx [C] with act order.
inline Matrix from_compressed_tensors(Source const& src, std::int64_t R, std::int64_t C, std::int64_t group, bool symmetric,
                                      std::span<std::int32_t const> packed, std::span<float const> scale,
                                      std::span<std::int32_t const> zero_packed, std::span<std::int8_t const> zero_i8,
                                      std::optional<std::span<std::int32_t const>> g_idx, bool act_order) {
    using detail::index_text;
    std::int64_t const g = file_group(group, C), G = C / g, W = (C + 7) / 8;
    detail::require_size(src, "weight_packed", packed, R * W, "[R, ceil(C/8)]");
    detail::require_size(src, "weight_scale", scale, R * G, "[R, G]");
    detail::check_file_scales(src, "weight_scale", scale, G);
    Matrix m = detail::int4_matrix(R, C, g, symmetric, act_order && g_idx.has_value());
    for (std::int64_t o = 0; o < R; ++o)
        for (std::int64_t i = 0; i < C; ++i)
            m.codes[static_cast<std::size_t>(o * C + i)] = static_cast<std::uint8_t>(detail::nibble(packed[static_cast<std::size_t>(o * W + i / 8)], int(i % 8)));
    m.scales.assign(scale.begin(), scale.end());
    if (!symmetric) {
        if (!zero_packed.empty()) {
            std::int64_t const RW = (R + 7) / 8;
            detail::require_size(src, "weight_zero_point", zero_packed, RW * G, "[ceil(R/8), G]");
            for (std::int64_t o = 0; o < R; ++o)
                for (std::int64_t k = 0; k < G; ++k)
                    m.zeros[static_cast<std::size_t>(o * G + k)] =
                        static_cast<std::uint8_t>(detail::nibble(zero_packed[static_cast<std::size_t>(o / 8 * G + k)], int(o % 8)));
        } else {
            detail::require_size(src, "weight_zero_point", zero_i8, R * G, "[R, G] (I8, compressed-tensors <= 0.8)");
            for (std::int64_t k = 0; k < R * G; ++k) {
                int const z = zero_i8[static_cast<std::size_t>(k)];
                if (z < -8 || z > 7)
                    io::detail::file_fail(src.file, "tensor " + src.tensor("weight_zero_point") + " element " + index_text({k / G, k % G}), z,
                                          "-8..7 (a signed 4-bit zero point)");
                m.zeros[static_cast<std::size_t>(k)] = static_cast<std::uint8_t>(z + 8);
            }
        }
    }
    if (g_idx) {
        auto gi = detail::read_gidx(src, "weight_g_idx", *g_idx, C, g, G, act_order);
        if (act_order) m.gidx = std::move(gi);
    }
    return m;
}

// GPTQ (§1.3): qweight I32 [C/8, R], qzeros I32 [G, R/8], scales [G, R], g_idx [C] (optional).
// v2 (checkpoint format gptq_v2): z = nibble; v1: z = nibble + 1, nibble 15 rejected (§8.2).
inline Matrix from_gptq(Source const& src, std::int64_t R, std::int64_t C, std::int64_t group, bool symmetric, bool v2, bool desc_act,
                        std::span<std::int32_t const> qweight, std::span<std::int32_t const> qzeros, std::span<float const> scales,
                        std::optional<std::span<std::int32_t const>> g_idx) {
    using detail::index_text;
    std::int64_t const g = file_group(group, C), G = C / g, R8 = R / 8;
    detail::require_size(src, "qweight", qweight, C / 8 * R, "[C/8, R]");
    detail::require_size(src, "qzeros", qzeros, G * R8, "[G, R/8]");
    detail::require_size(src, "scales", scales, G * R, "[G, R]");
    detail::check_file_scales(src, "scales", scales, R);
    Matrix m = detail::int4_matrix(R, C, g, symmetric, desc_act && g_idx.has_value());
    for (std::int64_t w = 0; w < C / 8; ++w)
        for (std::int64_t o = 0; o < R; ++o) {
            std::int32_t const word = qweight[static_cast<std::size_t>(w * R + o)];
            for (int k = 0; k < 8; ++k) m.codes[static_cast<std::size_t>(o * C + w * 8 + k)] = static_cast<std::uint8_t>(detail::nibble(word, k));
        }
    for (std::int64_t k = 0; k < G; ++k)
        for (std::int64_t w = 0; w < R8; ++w)
            for (int j = 0; j < 8; ++j) {
                unsigned const n = detail::nibble(qzeros[static_cast<std::size_t>(k * R8 + w)], j);
                std::string const what = "tensor " + src.tensor("qzeros") + " element " + index_text({k, w}) + " nibble " + std::to_string(j);
                if (!v2 && n == 15)
                    io::detail::file_fail(src.file, what, n, "0..14 in a GPTQ v1 file (zero point 16, or an overflowed 0; formats.md §8)");
                unsigned const z = v2 ? n : n + 1;
                if (symmetric && z != 8) io::detail::file_fail(src.file, what, n, std::string(v2 ? "8" : "7") + " (zero point 8: sym is true)");
                m.zeros[static_cast<std::size_t>((w * 8 + j) * G + k)] = static_cast<std::uint8_t>(z);
            }
    m.scales.resize(static_cast<std::size_t>(R * G));
    for (std::int64_t k = 0; k < G; ++k)
        for (std::int64_t o = 0; o < R; ++o) m.scales[static_cast<std::size_t>(o * G + k)] = scales[static_cast<std::size_t>(k * R + o)];
    if (g_idx) {
        auto gi = detail::read_gidx(src, "g_idx", *g_idx, C, g, G, desc_act);
        if (desc_act) m.gidx = std::move(gi);
    }
    return m;
}

// AWQ GEMM (§1.4): qweight I32 [C, R/8] and qzeros I32 [G, R/8] in AWQ's interleaved nibble order,
// scales [G, R]; z = nibble.
inline constexpr int kAwqOutputOfNibble[8] = {0, 2, 4, 6, 1, 3, 5, 7};
inline Matrix from_awq(Source const& src, std::int64_t R, std::int64_t C, std::int64_t group, std::span<std::int32_t const> qweight,
                       std::span<std::int32_t const> qzeros, std::span<float const> scales) {
    std::int64_t const g = file_group(group, C), G = C / g, R8 = R / 8;
    detail::require_size(src, "qweight", qweight, C * R8, "[C, R/8]");
    detail::require_size(src, "qzeros", qzeros, G * R8, "[G, R/8]");
    detail::require_size(src, "scales", scales, G * R, "[G, R]");
    detail::check_file_scales(src, "scales", scales, R);
    Matrix m = detail::int4_matrix(R, C, g, false, false);
    for (std::int64_t i = 0; i < C; ++i)
        for (std::int64_t w = 0; w < R8; ++w)
            for (int k = 0; k < 8; ++k)
                m.codes[static_cast<std::size_t>((w * 8 + kAwqOutputOfNibble[k]) * C + i)] =
                    static_cast<std::uint8_t>(detail::nibble(qweight[static_cast<std::size_t>(i * R8 + w)], k));
    for (std::int64_t k = 0; k < G; ++k)
        for (std::int64_t w = 0; w < R8; ++w)
            for (int j = 0; j < 8; ++j)
                m.zeros[static_cast<std::size_t>((w * 8 + kAwqOutputOfNibble[j]) * G + k)] =
                    static_cast<std::uint8_t>(detail::nibble(qzeros[static_cast<std::size_t>(k * R8 + w)], j));
    m.scales.resize(static_cast<std::size_t>(R * G));
    for (std::int64_t k = 0; k < G; ++k)
        for (std::int64_t o = 0; o < R; ++o) m.scales[static_cast<std::size_t>(o * G + k)] = scales[static_cast<std::size_t>(k * R + o)];
    return m;
}

// FP8 e4m3 (§2.2, §2.3): weight [R, C] bytes, the factor grid [ceil(R/bh), ceil(C/bw)] (bh, bw 0: the
// whole extent, so per-tensor is [1, 1] and per-channel [R, 1] with bh = 1). scale_suffix is the file's
// name for it (weight_scale_inv or weight_scale).
inline Matrix from_fp8(Source const& src, std::int64_t R, std::int64_t C, std::int64_t bh, std::int64_t bw,
                       std::span<std::uint8_t const> weight, std::span<float const> scale, char const* scale_suffix) {
    Matrix m;
    m.format = Format::fp8_block(bh, bw);
    if (bh == 1 && (bw == 0 || bw == C)) m.format = Format::fp8_channel();
    m.rows = R;
    m.cols = C;
    std::int64_t const SR = m.format.scale_rows(R), SC = m.format.groups(C);
    detail::require_size(src, "weight", weight, R * C, "[R, C]");
    detail::require_size(src, scale_suffix, scale, SR * SC, "[ceil(R/bh), ceil(C/bw)] = " + detail::index_text({SR, SC}));
    detail::check_file_scales(src, scale_suffix, scale, SC);
    for (std::int64_t k = 0; k < R * C; ++k)
        if (e4m3_is_nan(weight[static_cast<std::size_t>(k)]))
            io::detail::file_fail(src.file, "tensor " + src.tensor("weight") + " element " + detail::index_text({k / C, k % C}),
                                  "0x" + std::string(weight[static_cast<std::size_t>(k)] == 0x7F ? "7F" : "FF"),
                                  "a finite e4m3 code (0x7F and 0xFF are NaN)");
    m.codes.assign(weight.begin(), weight.end());
    m.scales.assign(scale.begin(), scale.end());
    return m;
}

// MXFP4 (§3.2) of one matrix: blocks [R, C/32, 16] bytes (low nibble first), scales [R, C/32] E8M0
// bytes. `expert` >= 0 prefixes element indices with the expert (gpt-oss stacks them: [e, r, b, j]).
inline Matrix from_mxfp4(Source const& src, std::int64_t R, std::int64_t C, std::span<std::uint8_t const> blocks,
                         std::span<std::uint8_t const> scales, char const* blocks_name, char const* scales_name, std::int64_t expert = -1) {
    auto idx = [&](std::initializer_list<std::int64_t> rest) {
        std::string s = detail::index_text(rest);
        return expert >= 0 ? "[" + std::to_string(expert) + ", " + s.substr(1) : s;
    };
    if (C % kMxfp4Block != 0)
        io::detail::file_fail(src.file, "tensor " + src.tensor(blocks_name) + " in_features", C, "a multiple of 32 (MXFP4 blocks)");
    std::int64_t const B = C / kMxfp4Block;
    detail::require_size(src, blocks_name, blocks, R * B * 16, "[R, C/32, 16]");
    detail::require_size(src, scales_name, scales, R * B, "[R, C/32]");
    Matrix m;
    m.format = Format::mxfp4();
    m.rows = R;
    m.cols = C;
    m.codes.resize(static_cast<std::size_t>(R * C));
    m.scales.resize(static_cast<std::size_t>(R * B));
    for (std::int64_t r = 0; r < R; ++r)
        for (std::int64_t b = 0; b < B; ++b) {
            std::uint8_t const e = scales[static_cast<std::size_t>(r * B + b)];
            if (e == kE8m0Nan)
                io::detail::file_fail(src.file, "tensor " + src.tensor(scales_name) + " element " + idx({r, b}), int(e),
                                      "an E8M0 byte 0..254 (255 is NaN)");
            for (int j = 0; j < 16; ++j) {
                std::uint8_t const byte = blocks[static_cast<std::size_t>((r * B + b) * 16 + j)];
                for (int h = 0; h < 2; ++h) {
                    std::uint8_t const c = h ? byte >> 4 : byte & 15;
                    // 6 * 2^126 and 2 * 2^127 overflow fp32 (§3.1): the largest finite value is < 2^128.
                    if (e >= 253 && std::fabs(double(e2m1_to_float(c))) * std::ldexp(1.0, e - 127) > double(std::numeric_limits<float>::max()))
                        io::detail::file_fail(src.file, "tensor " + src.tensor(blocks_name) + " element " + idx({r, b, j}),
                                              "code " + std::to_string(c) + " with scale byte " + std::to_string(e),
                                              "a block whose values are finite in fp32");
                    m.codes[static_cast<std::size_t>(r * C + b * kMxfp4Block + 2 * j + h)] = c;
                }
            }
            m.scales[static_cast<std::size_t>(r * B + b)] = e8m0_to_float(e);
        }
    return m;
}

}  // namespace smoe::inline v0::quant
