#pragma once
// What format one expert matrix is stored in (formats.md §4): the descriptor a loader resolves per
// (expert, matrix) from a checkpoint's tensors and config, or an engine picks for quantise-at-load,
// before anything is packed. Its short name is what a layer reports (§4 rule 5).
//
// | kind          | parameters                                   | name                          |
// |---------------|----------------------------------------------|-------------------------------|
// | f32, bf16     | none                                         | f32, bf16                     |
// | int8_channel  | one scale per row                            | int8-channel                  |
// | int4          | group g along C (0: g = C), symmetric, act order | int4-g128-sym, int4-g32-asym-actorder, int4-channel-sym |
// | fp8           | block [bh, bw] (0: the whole extent)         | fp8-e4m3-b128x128, fp8-e4m3-channel, fp8-e4m3-tensor |
// | mxfp4         | one E8M0 scale per 32 columns                | mxfp4                         |
// | ternary       | t in {-1, 0, 1}; one fp32 scale per tensor, row or group of g columns; file packing 2b or b3 | ternary-2b-tensor, ternary-b3-channel, ternary-2b-g128 |

#include <cstdint>
#include <string>

#include "smoe/core/error.hpp"

namespace smoe::inline v0::quant {

enum class Kind : std::uint8_t { f32, bf16, int8_channel, int4, fp8, mxfp4, ternary };

// Ternary (research.md §7): the scale unit, and how a file packs the codes along C (2 bits per weight,
// or llama.cpp TQ1_0's five trits per byte). The packing is the file's; in memory codes are canonical.
enum class TernaryScale : std::uint8_t { tensor, channel, group };
enum class TernaryPacking : std::uint8_t { p2b, b3 };

inline char const* to_string(Kind k) {
    switch (k) {
        case Kind::f32: return "f32";
        case Kind::bf16: return "bf16";
        case Kind::int8_channel: return "int8-channel";
        case Kind::int4: return "int4";
        case Kind::fp8: return "fp8";
        case Kind::ternary: return "ternary";
        default: return "mxfp4";
    }
}

inline constexpr std::int64_t kMxfp4Block = 32;

struct Format {
    Kind kind = Kind::f32;
    std::int64_t group = 0;       // int4: columns per group; 0 = one group per row (per channel)
    bool symmetric = true;        // int4: z = 8 everywhere
    bool act_order = false;       // int4: columns carry their group in gidx (GPTQ desc_act)
    std::int64_t block_rows = 0;  // fp8: rows per scale block; 0 = all rows
    std::int64_t block_cols = 0;  // fp8: columns per scale block; 0 = all columns
    TernaryScale ternary_scale = TernaryScale::tensor;  // ternary: the scale unit (group: `group` columns)
    TernaryPacking packing = TernaryPacking::p2b;       // ternary: the file's packing

    static Format f32() { return {}; }
    static Format bf16() { return {Kind::bf16}; }
    static Format int8_channel() { return {Kind::int8_channel}; }
    static Format int4(std::int64_t g, bool sym = true, bool act = false) { return {Kind::int4, g, sym, act}; }
    static Format fp8_block(std::int64_t bh, std::int64_t bw) { return {Kind::fp8, 0, true, false, bh, bw}; }
    static Format fp8_channel() { return {Kind::fp8, 0, true, false, 1, 0}; }
    static Format fp8_tensor() { return {Kind::fp8, 0, true, false, 0, 0}; }
    static Format mxfp4() { return {Kind::mxfp4}; }
    static Format ternary(TernaryScale scale = TernaryScale::tensor, std::int64_t g = 0, TernaryPacking p = TernaryPacking::p2b) {
        Format f{Kind::ternary, scale == TernaryScale::group ? g : 0};
        f.ternary_scale = scale;
        f.packing = p;
        return f;
    }

    bool scaled() const { return kind != Kind::f32 && kind != Kind::bf16; }
    bool ternary_tensor() const { return kind == Kind::ternary && ternary_scale == TernaryScale::tensor; }
    // Columns per group along C (int4, fp8) or per scale (mxfp4); C for one group per row.
    std::int64_t group_cols(std::int64_t C) const {
        switch (kind) {
            case Kind::int4: return group > 0 ? group : C;
            case Kind::fp8: return block_cols > 0 ? block_cols : C;
            case Kind::mxfp4: return kMxfp4Block;
            case Kind::ternary: return ternary_scale == TernaryScale::group && group > 0 ? group : C;
            default: return C;
        }
    }
    std::int64_t groups(std::int64_t C) const {
        std::int64_t const g = group_cols(C);
        return g > 0 ? (C + g - 1) / g : 0;
    }
    std::int64_t scale_rows(std::int64_t R) const {
        if (kind == Kind::ternary && ternary_scale == TernaryScale::tensor) return 1;
        if (kind != Kind::fp8) return R;
        std::int64_t const bh = block_rows > 0 ? block_rows : R;
        return bh > 0 ? (R + bh - 1) / bh : 0;
    }

    friend bool operator==(Format const&, Format const&) = default;

    // The parameters against a matrix of R x C (formats.md §0, §1-§3); `what` names the matrix.
    void check(std::string const& what, std::int64_t /*R*/, std::int64_t C) const {
        using smoe::detail::fail;
        switch (kind) {
            case Kind::int4:
                if (group < 0 || (group > 0 && C % group != 0))
                    fail(what + ".group", group, "0 (per channel) or a divisor of in_features " + std::to_string(C));
                if (act_order && group == 0) fail(what + ".act_order", true, "false for a per-channel matrix (one group)");
                break;
            case Kind::fp8:
                if (block_rows < 0 || block_cols < 0)
                    fail(what + ".block", "[" + std::to_string(block_rows) + ", " + std::to_string(block_cols) + "]",
                         "block sizes >= 0 (0: the whole extent)");
                break;
            case Kind::mxfp4:
                if (C % kMxfp4Block != 0) fail(what + ".in_features", C, "a multiple of 32 (one E8M0 scale per 32)");
                break;
            case Kind::ternary:
                if (static_cast<int>(ternary_scale) > static_cast<int>(TernaryScale::group))
                    fail(what + ".ternary_scale", static_cast<int>(ternary_scale), "tensor, channel or group");
                if (static_cast<int>(packing) > static_cast<int>(TernaryPacking::b3))
                    fail(what + ".packing", static_cast<int>(packing), "2b or b3");
                if (ternary_scale == TernaryScale::group && (group < 1 || C % group != 0))
                    fail(what + ".group", group, "a divisor of in_features " + std::to_string(C) + " (ternary group scales)");
                break;
            default: break;
        }
        if (static_cast<int>(kind) > static_cast<int>(Kind::ternary)) fail(what + ".kind", static_cast<int>(kind), "a smoe::quant::Kind");
    }
};

// formats.md §4 rule 5's short name; C is needed to tell per-channel from grouped.
inline std::string name(Format const& f, std::int64_t C) {
    switch (f.kind) {
        case Kind::int4: {
            std::string s = f.group == 0 || f.group == C ? "int4-channel" : "int4-g" + std::to_string(f.group);
            s += f.symmetric ? "-sym" : "-asym";
            if (f.act_order) s += "-actorder";
            return s;
        }
        case Kind::fp8:
            if (f.block_rows == 1 && (f.block_cols == 0 || f.block_cols == C)) return "fp8-e4m3-channel";
            if (f.block_rows == 0 && f.block_cols == 0) return "fp8-e4m3-tensor";
            return "fp8-e4m3-b" + std::to_string(f.block_rows) + "x" + std::to_string(f.block_cols);
        case Kind::ternary:
            return std::string("ternary-") + (f.packing == TernaryPacking::b3 ? "b3-" : "2b-") +
                   (f.ternary_scale == TernaryScale::tensor    ? std::string("tensor")
                    : f.ternary_scale == TernaryScale::channel ? std::string("channel")
                                                               : "g" + std::to_string(f.group));
        default: return to_string(f.kind);
    }
}

}  // namespace smoe::inline v0::quant
