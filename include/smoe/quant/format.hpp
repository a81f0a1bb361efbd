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

#include <cstdint>
#include <string>

#include "smoe/core/error.hpp"

namespace smoe::inline v0::quant {

enum class Kind : std::uint8_t { f32, bf16, int8_channel, int4, fp8, mxfp4 };

inline char const* to_string(Kind k) {
    switch (k) {
        case Kind::f32: return "f32";
        case Kind::bf16: return "bf16";
        case Kind::int8_channel: return "int8-channel";
        case Kind::int4: return "int4";
        case Kind::fp8: return "fp8";
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

    static Format f32() { return {}; }
    static Format bf16() { return {Kind::bf16}; }
    static Format int8_channel() { return {Kind::int8_channel}; }
    static Format int4(std::int64_t g, bool sym = true, bool act = false) { return {Kind::int4, g, sym, act}; }
    static Format fp8_block(std::int64_t bh, std::int64_t bw) { return {Kind::fp8, 0, true, false, bh, bw}; }
    static Format fp8_channel() { return {Kind::fp8, 0, true, false, 1, 0}; }
    static Format fp8_tensor() { return {Kind::fp8, 0, true, false, 0, 0}; }
    static Format mxfp4() { return {Kind::mxfp4}; }

    bool scaled() const { return kind != Kind::f32 && kind != Kind::bf16; }
    // Columns per group along C (int4, fp8) or per scale (mxfp4); C for one group per row.
    std::int64_t group_cols(std::int64_t C) const {
        switch (kind) {
            case Kind::int4: return group > 0 ? group : C;
            case Kind::fp8: return block_cols > 0 ? block_cols : C;
            case Kind::mxfp4: return kMxfp4Block;
            default: return C;
        }
    }
    std::int64_t groups(std::int64_t C) const {
        std::int64_t const g = group_cols(C);
        return g > 0 ? (C + g - 1) / g : 0;
    }
    std::int64_t scale_rows(std::int64_t R) const {
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
            default: break;
        }
        if (static_cast<int>(kind) > static_cast<int>(Kind::mxfp4)) fail(what + ".kind", static_cast<int>(kind), "a smoe::quant::Kind");
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
        default: return to_string(f.kind);
    }
}

}  // namespace smoe::inline v0::quant
