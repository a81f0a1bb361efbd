#pragma once
// One expert matrix W [R, C] read from checkpoint tensors into smoe::quant::Matrix (formats.md §1-§3,
// §5), in two steps so that a loader checks everything before it packs anything:
//
//   plan_matrix(src, quant, "model.layers.0.mlp.experts.3.gate_proj", rows, cols, source)
//       identifies the layout from the tensors present next to the module (§5's identification table),
//       holds it to the config's scheme for that module (QuantConfig::scheme_of), and checks every
//       tensor's presence, dtype and shape against R and C from config.json, the group divisibility
//       and weight_shape. Errors: `"FILE: tensor 'P.qzeros'" = missing: expected the zero points ...`.
//   read_matrix(plan)
//       reads the tensors, widens float scales exactly to fp32 and calls the unpackers of
//       quant/unpack.hpp (which check elements: nibbles, scales > 0, NaN codes, E8M0, g_idx).
//
// A dense module (a float `weight`, no scale) decodes to f32 or bf16 (its dtype), or to the format
// the caller asks for at load (int4, int8 channel: quant/quantize.hpp). gpt-oss stacks its MXFP4 experts
// per layer (`experts.gate_up_proj_blocks [E, 2f, d/32, 16]`, gate and up rows interleaved):
// plan_gpt_oss_experts / read_gpt_oss_expert. Llama 4's FP8 release stacks them as transposed e4m3 codes
// with per-channel factors: plan_llama4_fp8_experts / read_llama4_fp8_expert.

#include <cmath>
#include <cstdint>
#include <cstring>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "smoe/expert/quant_swiglu.hpp"
#include "smoe/io/config_extent.hpp"
#include "smoe/io/dtype.hpp"
#include "smoe/io/file_error.hpp"
#include "smoe/io/quant_config.hpp"
#include "smoe/io/safetensors_file.hpp"
#include "smoe/io/tensor_read.hpp"
#include "smoe/quant/matrix.hpp"
#include "smoe/quant/quantize.hpp"
#include "smoe/quant/ternary.hpp"
#include "smoe/quant/unpack.hpp"

namespace smoe::inline v0::io {

// Where one matrix is and how it is stored; TensorInfo pointers into the source, valid while it is open.
struct QuantMatrixPlan {
    std::string module;  // P, the name without ".weight"
    std::string file;    // the source's name, for errors
    std::int64_t rows = 0, cols = 0;
    QuantScheme scheme;       // layout dense: a float weight
    quant::Format format;     // what read_matrix returns
    TensorInfo const* weight = nullptr;  // weight, weight_packed or qweight
    TensorInfo const* scale = nullptr;   // weight_scale, weight_scale_inv or scales
    TensorInfo const* zero = nullptr;    // weight_zero_point or qzeros
    TensorInfo const* g_idx = nullptr;   // weight_g_idx or g_idx
};

namespace detail {

inline std::string dims_text(std::initializer_list<std::int64_t> d) {
    std::vector<std::int64_t> v(d);
    return shape_text(v);
}

struct PlanChecks {
    std::string const& file;
    std::string const& module;
    std::int64_t R, C;
    std::string const& config_file;

    std::string name(char const* suffix) const { return module + "." + suffix; }
    std::string tensor(char const* suffix) const { return "tensor " + quoted(name(suffix)); }
    [[noreturn]] void missing(char const* suffix, std::string const& what) const { io::detail::file_fail(file, tensor(suffix), "missing", what); }
    [[noreturn]] void forbidden(char const* suffix, std::string const& why) const { io::detail::file_fail(file, tensor(suffix), "present", "absent: " + why); }
    void dtype(TensorInfo const& t, std::initializer_list<Dtype> ok, char const* expected) const {
        for (Dtype d : ok)
            if (t.dtype == d) return;
        io::detail::file_fail(file, "tensor " + quoted(t.name) + " dtype", std::string(dtype_name(t.dtype)), expected);
    }
    void float_dtype(TensorInfo const& t) const { dtype(t, {Dtype::F32, Dtype::BF16, Dtype::F16}, "F32, BF16 or F16"); }
    void shape(TensorInfo const& t, std::initializer_list<std::int64_t> want, std::string const& formula) const {
        if (t.shape != std::vector<std::int64_t>(want))
            io::detail::file_fail(file, "tensor " + quoted(t.name) + " shape", shape_text(t.shape),
                      dims_text(want) + " = " + formula + " (R, C from config.json)");
    }
    void multiple(char const* suffix, char const* axis, std::int64_t n, std::int64_t m, char const* why) const {
        if (n % m != 0) io::detail::file_fail(file, tensor(suffix) + " " + axis, n, "a multiple of " + std::to_string(m) + " (" + why + ")");
    }
    void group_divides(QuantScheme const& s, char const* suffix) const {
        if (s.group > 0 && C % s.group != 0)
            io::detail::file_fail(config_file, "key '" + s.group_key + "'", s.group,
                      "a divisor of in_features " + std::to_string(C) + " (" + tensor(suffix) + ")");
    }
};

template <class S>
TensorInfo const* find_suffix(S const& src, std::string const& module, char const* suffix) {
    return src.find(module + "." + suffix);
}

inline quant::Format format_of(QuantScheme const& s, std::int64_t C) {
    switch (s.layout) {
        case QuantLayout::ct_int4:
        case QuantLayout::gptq:
        case QuantLayout::awq: {
            bool const one_group = s.group == 0 || s.group == C;  // per channel: act order permutes nothing
            return quant::Format::int4(one_group ? 0 : s.group, s.symmetric, s.act_order && !one_group);
        }
        case QuantLayout::ct_int8: return quant::Format::int8_channel();
        case QuantLayout::ct_fp8:
        case QuantLayout::fp8:
            if (s.block_rows == 1 && s.block_cols == 0) return quant::Format::fp8_channel();
            return quant::Format::fp8_block(s.block_rows, s.block_cols);
        case QuantLayout::ct_mxfp4:
        case QuantLayout::mxfp4:
        case QuantLayout::fp4: return quant::Format::mxfp4();
        case QuantLayout::ternary: return quant::Format::ternary(s.ternary_scale, s.group, s.packing);
        case QuantLayout::bitnet: return quant::Format::ternary();
        default: return quant::Format::f32();
    }
}

}  // namespace detail

// `quant` is config.json's quantization_config (nullptr: none). R, C: the matrix's out and in features
// from config.json; xr, xc name their keys for a dense weight of the wrong shape.
template <class S>
QuantMatrixPlan plan_matrix(S const& src, QuantConfig const* quant, std::string const& module, ConfigExtent xr, ConfigExtent xc,
                            std::string const& file, std::string const& config_file) {
    std::int64_t const R = xr.value * xr.factor, C = xc.value * xc.factor;
    QuantMatrixPlan p{module, file, R, C, {}, {}, nullptr, nullptr, nullptr, nullptr};
    detail::PlanChecks const ck{file, module, R, C, config_file};
    auto find = [&](char const* suffix) { return detail::find_suffix(src, module, suffix); };
    TensorInfo const* const weight = find("weight");
    TensorInfo const* const packed = find("weight_packed");
    TensorInfo const* const qweight = find("qweight");
    TensorInfo const* const ternary = find("weight_ternary");

    // What the tensors say (§5's identification).
    QuantLayout found = QuantLayout::dense;
    char const* found_name = "weight";
    if (packed && qweight) ck.forbidden("qweight", "'" + ck.name("weight_packed") + "' holds the matrix (one kind of tensor per matrix)");
    if (weight && (packed || qweight))
        ck.forbidden("weight", "'" + ck.name(packed ? "weight_packed" : "qweight") + "' holds the matrix (one kind of tensor per matrix)");
    if (ternary && (weight || packed || qweight))
        ck.forbidden(weight ? "weight" : packed ? "weight_packed" : "qweight",
                     "'" + ck.name("weight_ternary") + "' holds the matrix (one kind of tensor per matrix)");
    if (ternary) {
        ck.dtype(*ternary, {Dtype::U8}, "U8 (ternary codes)");
        found = QuantLayout::ternary;
        found_name = "weight_ternary";
    } else if (packed) {
        ck.dtype(*packed, {Dtype::I32, Dtype::U8}, "I32 (pack-quantized int4) or U8 (mxfp4-pack-quantized)");
        found = packed->dtype == Dtype::I32 ? QuantLayout::ct_int4 : QuantLayout::ct_mxfp4;
        found_name = "weight_packed";
    } else if (qweight) {
        ck.dtype(*qweight, {Dtype::I32}, "I32");
        found = quant && quant->method == QuantMethod::awq ? QuantLayout::awq : QuantLayout::gptq;
        found_name = "qweight";
    } else if (weight) {
        // DeepSeek's own files call weight_scale_inv `scale` (transformers renames it on load).
        if (weight->dtype == Dtype::F8_E4M3)
            found = find("weight_scale_inv") || find("scale") ? QuantLayout::fp8 : QuantLayout::ct_fp8;
        else if ((weight->dtype == Dtype::I8 || weight->dtype == Dtype::U8) && quant && quant->method == QuantMethod::fp8 &&
                 quant->scheme.expert_fp4)
            found = QuantLayout::fp4;
        else if (weight->dtype == Dtype::I8)
            found = QuantLayout::ct_int8;
        else if (weight->dtype == Dtype::U8 && quant && quant->method == QuantMethod::bitnet)
            found = QuantLayout::bitnet;
        else
            ck.dtype(*weight, {Dtype::F32, Dtype::BF16, Dtype::F16}, "F32, BF16 or F16 (dense), F8_E4M3 (FP8) or I8 (int8 per channel)");
    }

    // What the config says, and whether the two agree.
    QuantScheme const s = quant ? quant->scheme_of(module) : QuantScheme{};
    bool const mx_alias = (found == QuantLayout::ct_mxfp4 && s.layout == QuantLayout::mxfp4) ||
                          (found == QuantLayout::fp4 && s.layout == QuantLayout::fp8);  // an FP4 expert of an expert_dtype fp4 file
    bool const fp8_alias = (found == QuantLayout::fp8 && s.layout == QuantLayout::ct_fp8) ||
                           (found == QuantLayout::ct_fp8 && s.layout == QuantLayout::fp8);
    if (s.layout != found && !mx_alias) {
        if (!weight && !packed && !qweight) {
            char const* main = s.layout == QuantLayout::ct_int4 || s.layout == QuantLayout::ct_mxfp4 ? "weight_packed"
                               : s.layout == QuantLayout::gptq || s.layout == QuantLayout::awq  ? "qweight"
                               : s.layout == QuantLayout::ternary                                ? "weight_ternary"
                                                                                                : "weight";
            ck.missing(main, std::string("the matrix [") + std::to_string(R) + ", " + std::to_string(C) + "] (" + to_string(s.layout) + ")");
        }
        if (found != QuantLayout::dense && !quant)
            io::detail::file_fail(config_file, "key 'quantization_config'", "missing",
                      "a quantization_config describing the quantised " + ck.tensor(found_name) + " (" + to_string(found) + ")");
        if (found != QuantLayout::dense && !s.quantized())
            ck.forbidden(found_name, std::string("quantization_config (") + to_string(quant->method) + ") leaves module '" + module + "' dense");
        if (fp8_alias)
            ck.missing(s.layout == QuantLayout::fp8 ? "weight_scale_inv" : "weight_scale",
                       std::string("the factors of an FP8 matrix (") + to_string(s.layout) + ")");
        if (found == QuantLayout::dense)
            ck.missing(s.layout == QuantLayout::ct_int4 || s.layout == QuantLayout::ct_mxfp4 ? "weight_packed"
                       : s.layout == QuantLayout::gptq || s.layout == QuantLayout::awq      ? "qweight"
                       : s.layout == QuantLayout::ternary                                    ? "weight_ternary"
                                                                                            : "weight_scale",
                       std::string("the ") + to_string(s.layout) + " tensors: quantization_config (" + to_string(quant->method) +
                           ") quantises module '" + module + "', the file holds a dense 'weight'");
        io::detail::file_fail(file, ck.tensor(found_name), to_string(found),
                  std::string("the layout quantization_config gives module '") + module + "': " + to_string(s.layout));
    }
    p.scheme = s;
    if (mx_alias) p.scheme.layout = found;
    p.format = detail::format_of(p.scheme, C);

    auto need = [&](char const* suffix, std::string const& what) {
        auto const* t = find(suffix);
        if (!t) ck.missing(suffix, what);
        return t;
    };
    std::int64_t const g = s.group > 0 ? s.group : C, G = C % g == 0 ? C / g : 0;
    switch (p.scheme.layout) {
        case QuantLayout::dense:
            if (!weight) ck.missing("weight", "the weight [" + std::to_string(R) + ", " + std::to_string(C) + "]");
            require_extents(*weight, config_file, {xr, xc});
            p.weight = weight;
            p.format = weight->dtype == Dtype::BF16 ? quant::Format::bf16() : quant::Format::f32();
            for (char const* extra : {"weight_scale", "weight_scale_inv"})
                if (find(extra)) ck.forbidden(extra, "the weight is dense (" + std::string(dtype_name(weight->dtype)) + ")");
            break;
        case QuantLayout::ct_int4: {
            ck.group_divides(s, "weight_packed");
            ck.shape(*packed, {R, (C + 7) / 8}, "[R, ceil(C/8)]");
            p.weight = packed;
            p.scale = need("weight_scale", "the scales [R, G] of a pack-quantized matrix");
            ck.float_dtype(*p.scale);
            ck.shape(*p.scale, {R, G}, s.group > 0 ? "[R, C/group_size]" : "[R, 1] (per channel)");
            if (auto const* ws = find("weight_shape")) {
                ck.dtype(*ws, {Dtype::I64, Dtype::I32}, "I64 (I32 accepted)");
                if (ws->shape != std::vector<std::int64_t>{2}) io::detail::file_fail(file, ck.tensor("weight_shape") + " shape", shape_text(ws->shape), "[2]");
                auto const v = read_i32(*ws);
                if (v[0] != R || v[1] != C)
                    io::detail::file_fail(file, ck.tensor("weight_shape"), detail::dims_text({v[0], v[1]}), detail::dims_text({R, C}) + " (from config.json)");
            }
            p.zero = find("weight_zero_point");
            if (s.symmetric && p.zero) ck.forbidden("weight_zero_point", "the scheme is symmetric");
            if (!s.symmetric) {
                if (!p.zero) ck.missing("weight_zero_point", "the zero points [ceil(R/8), G] of an asymmetric pack-quantized matrix");
                ck.dtype(*p.zero, {Dtype::I32, Dtype::I8}, "I32 (packed) or I8 (compressed-tensors <= 0.8)");
                if (p.zero->dtype == Dtype::I32)
                    ck.shape(*p.zero, {(R + 7) / 8, G}, "[ceil(R/8), G]");
                else
                    ck.shape(*p.zero, {R, G}, "[R, G]");
            }
            p.g_idx = find("weight_g_idx");
            if (s.act_order) {
                if (!p.g_idx) ck.missing("weight_g_idx", "the column groups [C] of an act-order matrix (actorder \"group\")");
            } else if (p.g_idx) {
                ck.forbidden("weight_g_idx", "actorder is not \"group\" (columns are in group order)");
            }
            if (p.g_idx) {
                ck.dtype(*p.g_idx, {Dtype::I32, Dtype::I64}, "I32");
                ck.shape(*p.g_idx, {C}, "[C]");
            }
            break;
        }
        case QuantLayout::gptq:
        case QuantLayout::awq: {
            bool const gptq = s.layout == QuantLayout::gptq;
            ck.multiple("qweight", "out_features", R, 8, gptq ? "GPTQ packs 8 outputs per zero-point word" : "AWQ packs 8 outputs per word");
            if (gptq) ck.multiple("qweight", "in_features", C, 8, "GPTQ packs 8 inputs per word");
            ck.group_divides(s, "qweight");
            if (gptq)
                ck.shape(*qweight, {C / 8, R}, "[C/8, R]");
            else
                ck.shape(*qweight, {C, R / 8}, "[C, R/8]");
            p.weight = qweight;
            p.zero = need("qzeros", std::string("the zero points [G, R/8] of a ") + (gptq ? "GPTQ" : "AWQ") + " matrix");
            ck.dtype(*p.zero, {Dtype::I32}, "I32");
            ck.shape(*p.zero, {G, R / 8}, "[G, R/8]");
            p.scale = need("scales", std::string("the scales [G, R] of a ") + (gptq ? "GPTQ" : "AWQ") + " matrix");
            ck.float_dtype(*p.scale);
            ck.shape(*p.scale, {G, R}, "[G, R]");
            p.g_idx = find("g_idx");
            if (gptq && s.act_order && !p.g_idx) ck.missing("g_idx", "the column groups [C] of an act-order GPTQ matrix (desc_act is true)");
            if (!gptq && p.g_idx) ck.forbidden("g_idx", "AWQ has no act order");
            if (p.g_idx) {
                ck.dtype(*p.g_idx, {Dtype::I32, Dtype::I64}, "I32");
                ck.shape(*p.g_idx, {C}, "[C]");
            }
            break;
        }
        case QuantLayout::ct_int8:
            ck.shape(*weight, {R, C}, "[R, C]");
            p.weight = weight;
            p.scale = need("weight_scale", "the per-channel scales [R, 1] of an int8 matrix");
            ck.float_dtype(*p.scale);
            ck.shape(*p.scale, {R, 1}, "[R, 1]");
            if (find("weight_zero_point")) ck.forbidden("weight_zero_point", "int8 per channel is symmetric");
            break;
        case QuantLayout::fp4: {
            char const* const scale_name = find("weight_scale_inv") || !find("scale") ? "weight_scale_inv" : "scale";
            ck.multiple("weight", "in_features", C, 32, "FP4 experts have one E8M0 factor per 32 inputs");
            ck.shape(*weight, {R, C / 2}, "[R, C/2] (two E2M1 codes per byte)");
            p.weight = weight;
            p.scale = need(scale_name, "the E8M0 factors [R, C/32] of an FP4 expert matrix");
            ck.dtype(*p.scale, {Dtype::F8_E8M0, Dtype::U8, Dtype::F32}, "F8_E8M0 or U8 (E8M0 bytes), or F32 powers of two");
            ck.shape(*p.scale, {R, C / 32}, "[R, C/32]");
            break;
        }
        case QuantLayout::ct_fp8:
        case QuantLayout::fp8: {
            bool const inv = s.layout == QuantLayout::fp8;
            char const* const scale_name = !inv ? "weight_scale" : find("weight_scale_inv") || !find("scale") ? "weight_scale_inv" : "scale";
            ck.dtype(*weight, {Dtype::F8_E4M3}, "F8_E4M3");
            ck.shape(*weight, {R, C}, "[R, C]");
            p.weight = weight;
            p.scale = need(scale_name, "the factors of an FP8 matrix");
            if (inv && s.ue8m0)
                ck.dtype(*p.scale, {Dtype::F32, Dtype::BF16, Dtype::F16, Dtype::F8_E8M0, Dtype::U8}, "F32, BF16, F16, F8_E8M0 or U8 (scale_fmt ue8m0)");
            else
                ck.float_dtype(*p.scale);
            std::int64_t const SR = p.format.scale_rows(R), SC = p.format.groups(C);
            bool const one = s.block_rows == 0 && s.block_cols == 0;
            if (one && inv) {
                if (p.scale->shape != std::vector<std::int64_t>{} && p.scale->shape != std::vector<std::int64_t>{1})
                    io::detail::file_fail(file, ck.tensor(scale_name) + " shape", shape_text(p.scale->shape), "[] or [1] (weight_block_size is null: one factor)");
            } else if (one) {
                ck.shape(*p.scale, {1}, "[1] (strategy tensor)");
            } else if (s.block_rows == 1 && s.block_cols == 0) {
                ck.shape(*p.scale, {R, 1}, "[R, 1] (strategy channel)");
            } else {
                ck.shape(*p.scale, {SR, SC}, "[ceil(R/" + std::to_string(s.block_rows) + "), ceil(C/" + std::to_string(s.block_cols) + ")]");
            }
            break;
        }
        case QuantLayout::ternary: {  // research.md §7.4, §7.5
            ck.group_divides(s, "weight_ternary");
            bool const b3 = s.packing == quant::TernaryPacking::b3;
            ck.shape(*ternary, {R, quant::ternary_row_bytes(s.packing, C)}, b3 ? "[R, ceil(C/5)] (b3)" : "[R, ceil(C/4)] (2b)");
            p.weight = ternary;
            p.scale = need("weight_scale", "the scales of a ternary matrix");
            ck.dtype(*p.scale, {Dtype::F32}, "F32");
            if (s.ternary_scale == quant::TernaryScale::tensor)
                ck.shape(*p.scale, {1}, "[1] (scale tensor)");
            else if (s.ternary_scale == quant::TernaryScale::channel)
                ck.shape(*p.scale, {R, 1}, "[R, 1] (scale channel)");
            else
                ck.shape(*p.scale, {R, G}, "[R, C/group_size]");
            break;
        }
        case QuantLayout::bitnet:
            if (R % 4 != 0 || weight->shape != std::vector<std::int64_t>{R / 4, C})
                io::detail::file_fail(file, ck.tensor("weight") + " shape", shape_text(weight->shape) + " with out_features " + std::to_string(R),
                                      "[out_features / 4, in_features] and out_features % 4 = 0");
            p.weight = weight;
            p.scale = need("weight_scale", "the scale [1] of a BitNet matrix");
            ck.float_dtype(*p.scale);
            if (p.scale->shape != std::vector<std::int64_t>{} && p.scale->shape != std::vector<std::int64_t>{1})
                io::detail::file_fail(file, ck.tensor("weight_scale") + " shape", shape_text(p.scale->shape), "[] or [1] (one scale per matrix)");
            break;
        case QuantLayout::ct_mxfp4:
        case QuantLayout::mxfp4:
            ck.multiple("weight_packed", "in_features", C, 32, "MXFP4 has one E8M0 scale per 32 inputs");
            ck.shape(*packed, {R, C / 2}, "[R, C/2]");
            p.weight = packed;
            p.scale = need("weight_scale", "the E8M0 scales [R, C/32] of an MXFP4 matrix");
            ck.dtype(*p.scale, {Dtype::U8, Dtype::F8_E8M0}, "U8 (E8M0 bytes)");
            ck.shape(*p.scale, {R, C / 32}, "[R, C/32]");
            break;
    }
    return p;
}

namespace detail {

inline std::vector<std::uint8_t> raw_bytes(TensorInfo const& t) {
    std::vector<std::uint8_t> v(t.bytes.size());
    if (!v.empty()) std::memcpy(v.data(), t.bytes.data(), v.size());
    return v;
}
inline std::vector<std::int8_t> raw_i8(TensorInfo const& t) {
    std::vector<std::int8_t> v(t.bytes.size());
    if (!v.empty()) std::memcpy(v.data(), t.bytes.data(), v.size());
    return v;
}
// The factor tensor's suffix as the file spells it: weight_scale_inv, or DeepSeek's own `scale`.
inline char const* scale_suffix(TensorInfo const& t) {
    return t.name.size() >= 6 && t.name.compare(t.name.size() - 6, 6, ".scale") == 0 ? "scale" : "weight_scale_inv";
}
// Factors as fp32: floats widened exactly; E8M0 bytes (scale_fmt ue8m0) as 2^(b - 127), 255 rejected.
inline std::vector<float> read_factors(TensorInfo const& t) {
    if (t.dtype != Dtype::U8 && t.dtype != Dtype::F8_E8M0) return read_f32(t);
    auto const b = raw_bytes(t);
    std::vector<float> out(b.size());
    for (std::size_t k = 0; k < b.size(); ++k) {
        if (b[k] == quant::kE8m0Nan)
            io::detail::file_fail(t.file, "tensor " + quoted(t.name) + " element " + std::to_string(k), 255, "an E8M0 byte 0..254 (255 is NaN)");
        out[k] = quant::e8m0_to_float(b[k]);
    }
    return out;
}

}  // namespace detail

// The matrix in canonical form. `at_load`: the format a dense matrix is quantised to (int4, int8
// channel, bf16, f32; quant/quantize.hpp); quantised matrices keep their own.
inline quant::Matrix read_matrix(QuantMatrixPlan const& p, std::optional<quant::Format> at_load = std::nullopt) {
    quant::Source const src{p.weight ? p.weight->file : p.file, p.module};
    std::int64_t const R = p.rows, C = p.cols;
    QuantScheme const& s = p.scheme;
    bool const act_order = p.format.act_order;  // false for one group per row (g_idx then checked to be 0)
    switch (s.layout) {
        case QuantLayout::dense: {
            auto const v = read_f32(*p.weight);
            require_finite(*p.weight, std::span<float const>(v));
            quant::Format const fmt = at_load.value_or(p.format);
            if (fmt.kind != quant::Kind::f32 && !(fmt.kind == quant::Kind::bf16 && p.format.kind == quant::Kind::bf16))
                return quant::quantize(MatrixView<float const>(v.data(), R, C), fmt);
            quant::Matrix m;
            m.format = fmt;
            m.rows = R;
            m.cols = C;
            m.values = v;
            return m;
        }
        case QuantLayout::ct_int4: {
            auto const packed = read_i32(*p.weight);
            auto const scale = read_f32(*p.scale);
            std::vector<std::int32_t> zp;
            std::vector<std::int8_t> z8;
            if (p.zero && p.zero->dtype == Dtype::I32) zp = read_i32(*p.zero);
            if (p.zero && p.zero->dtype == Dtype::I8) z8 = detail::raw_i8(*p.zero);
            std::vector<std::int32_t> gi;
            std::optional<std::span<std::int32_t const>> gspan;
            if (p.g_idx) gi = read_i32(*p.g_idx), gspan = std::span<std::int32_t const>(gi);
            return quant::from_compressed_tensors(src, R, C, s.group, s.symmetric, packed, scale, zp, z8, gspan, act_order);
        }
        case QuantLayout::gptq:
        case QuantLayout::awq: {
            auto const qw = read_i32(*p.weight);
            auto const qz = read_i32(*p.zero);
            auto const sc = read_f32(*p.scale);
            if (s.layout == QuantLayout::awq) return quant::from_awq(src, R, C, s.group, qw, qz, sc);
            std::vector<std::int32_t> gi;
            std::optional<std::span<std::int32_t const>> gspan;
            if (p.g_idx) gi = read_i32(*p.g_idx), gspan = std::span<std::int32_t const>(gi);
            return quant::from_gptq(src, R, C, s.group, s.symmetric, s.gptq_v2, act_order, qw, qz, sc, gspan);
        }
        case QuantLayout::ct_int8: {
            auto const sc = read_f32(*p.scale);
            quant::detail::check_file_scales(src, "weight_scale", sc, 1);
            quant::Matrix m;
            m.format = quant::Format::int8_channel();
            m.rows = R;
            m.cols = C;
            m.codes = detail::raw_bytes(*p.weight);
            m.scales = sc;
            return m;
        }
        case QuantLayout::ct_fp8:
        case QuantLayout::fp8: {
            auto const w = detail::raw_bytes(*p.weight);
            auto const sc = detail::read_factors(*p.scale);
            bool const channel = s.block_rows == 1 && s.block_cols == 0;
            return quant::from_fp8(src, R, C, s.block_rows, channel ? 0 : s.block_cols, w, sc,
                                   s.layout == QuantLayout::fp8 ? detail::scale_suffix(*p.scale) : "weight_scale");
        }
        case QuantLayout::fp4: {
            // E2M1 pairs, low nibble first, and an E8M0 factor per 32 inputs: MXFP4's numerics (formats.md §3.1).
            auto const b = detail::raw_bytes(*p.weight);
            std::vector<std::uint8_t> sc;
            if (p.scale->dtype == Dtype::F32) {  // a float factor must be what an E8M0 byte can say
                auto const v = read_f32(*p.scale);
                for (std::size_t k = 0; k < v.size(); ++k) {
                    int ex = 0;
                    float const m = std::isfinite(v[k]) ? std::frexp(v[k], &ex) : 0.0f;
                    if (m != 0.5f || ex - 1 < -127 || ex - 1 > 127)
                        io::detail::file_fail(p.scale->file, "tensor " + io::detail::quoted(p.scale->name) + " element " + std::to_string(k), v[k],
                                              "a power of two 2^-127 .. 2^127 (an E8M0 factor)");
                    sc.push_back(static_cast<std::uint8_t>(ex - 1 + 127));
                }
            } else {
                sc = detail::raw_bytes(*p.scale);
            }
            return quant::from_mxfp4(src, R, C, b, sc, "weight", detail::scale_suffix(*p.scale));
        }
        case QuantLayout::ternary: {
            auto const b = detail::raw_bytes(*p.weight);
            auto const sc = read_f32(*p.scale);
            return quant::unpack_ternary(src, b, p.weight->shape[0], p.weight->shape[1], sc, p.format, R, C);
        }
        case QuantLayout::bitnet: {
            auto const b = detail::raw_bytes(*p.weight);
            auto const sc = read_f32(*p.scale);
            return quant::unpack_bitnet(src, b, R / 4, C, sc.at(0), s.bitlinear, R, C);
        }
        default: {
            auto const b = detail::raw_bytes(*p.weight);
            auto const sc = detail::raw_bytes(*p.scale);
            return quant::from_mxfp4(src, R, C, b, sc, "weight_packed", "weight_scale");
        }
    }
}

// gpt-oss (formats.md §3.2): a layer's experts stacked in four U8 tensors under `prefix`
// ("model.layers.{l}.mlp.experts").
struct GptOssExpertsPlan {
    std::string prefix, file;
    std::int64_t E = 0, d = 0, f = 0;
    TensorInfo const *gu_blocks = nullptr, *gu_scales = nullptr, *dn_blocks = nullptr, *dn_scales = nullptr;
};

template <class S>
GptOssExpertsPlan plan_gpt_oss_experts(S const& src, std::string const& prefix, std::int64_t E, std::int64_t d, std::int64_t f,
                                       std::string const& file) {
    GptOssExpertsPlan p{prefix, file, E, d, f};
    detail::PlanChecks const ck{file, prefix, 2 * f, d, file};
    ck.multiple("gate_up_proj_blocks", "in_features (hidden_size)", d, 32, "MXFP4 has one E8M0 scale per 32 inputs");
    ck.multiple("down_proj_blocks", "in_features (intermediate_size)", f, 32, "MXFP4 has one E8M0 scale per 32 inputs");
    auto need = [&](char const* suffix, std::initializer_list<std::int64_t> shape, char const* formula) {
        auto const* t = src.find(prefix + "." + suffix);
        if (!t) ck.missing(suffix, std::string("the stacked MXFP4 experts ") + formula + " (gpt-oss)");
        ck.dtype(*t, {Dtype::U8}, "U8");
        ck.shape(*t, shape, formula);
        return t;
    };
    p.gu_blocks = need("gate_up_proj_blocks", {E, 2 * f, d / 32, 16}, "[E, 2f, d/32, 16]");
    p.gu_scales = need("gate_up_proj_scales", {E, 2 * f, d / 32}, "[E, 2f, d/32]");
    p.dn_blocks = need("down_proj_blocks", {E, d, f / 32, 16}, "[E, d, f/32, 16]");
    p.dn_scales = need("down_proj_scales", {E, d, f / 32}, "[E, d, f/32]");
    return p;
}

// Expert e: gate = the even rows of gate_up, up = the odd rows, down.
inline expert::QuantExpertWeights read_gpt_oss_expert(GptOssExpertsPlan const& p, std::int64_t e) {
    std::int64_t const d = p.d, f = p.f;
    auto slice = [&](TensorInfo const& t, std::int64_t per_expert) {
        std::vector<std::uint8_t> v(static_cast<std::size_t>(per_expert));
        std::memcpy(v.data(), t.bytes.data() + e * per_expert, v.size());
        return v;
    };
    quant::Source const src{p.gu_blocks->file, p.prefix};
    auto const gu = quant::from_mxfp4(src, 2 * f, d, slice(*p.gu_blocks, 2 * f * d / 2), slice(*p.gu_scales, 2 * f * d / 32),
                                      "gate_up_proj_blocks", "gate_up_proj_scales", e);
    expert::QuantExpertWeights w;
    w.down = quant::from_mxfp4(src, d, f, slice(*p.dn_blocks, d * f / 2), slice(*p.dn_scales, d * f / 32), "down_proj_blocks",
                               "down_proj_scales", e);
    for (int parity = 0; parity < 2; ++parity) {
        quant::Matrix& m = parity ? w.up : w.gate;
        m.format = gu.format;
        m.rows = f;
        m.cols = d;
        std::int64_t const B = d / 32;
        for (std::int64_t r = 0; r < f; ++r) {
            std::int64_t const src_row = 2 * r + parity;
            m.codes.insert(m.codes.end(), gu.codes.begin() + src_row * d, gu.codes.begin() + (src_row + 1) * d);
            m.scales.insert(m.scales.end(), gu.scales.begin() + src_row * B, gu.scales.begin() + (src_row + 1) * B);
        }
    }
    return w;
}

// Llama 4's FP8 release (quant_method fbgemm_fp8; transformers FbgemmFp8Llama4TextExperts, families.md §2.8): a
// layer's experts under `prefix` ("language_model.model.layers.{l}.feed_forward.experts") as
//   gate_up_proj F8_E4M3 [E, d, 2f] (gate columns first), gate_up_proj_scale [E, 1, 2f],
//   down_proj    F8_E4M3 [E, f, d],                      down_proj_scale    [E, d, 1]   (scales F32, BF16 or F16)
// one factor per output channel, the codes stored [in, out]:
//   W_gate[j, i] = e4m3(gate_up_proj[e, i, j]) · gate_up_proj_scale[e, 0, j]   (up: column f + j)
//   W_down[o, j] = e4m3(down_proj[e, j, o]) · down_proj_scale[e, o, 0]
// Each expert becomes three fp8-e4m3-channel matrices [out, in] (formats.md §2.3's channel rule). The factors
// are read and checked at plan time (they are small), the codes one expert at a time, errors in file indices.
struct Llama4Fp8ExpertsPlan {
    std::string prefix, file;
    std::int64_t E = 0, d = 0, f = 0;
    TensorInfo const *gu = nullptr, *dn = nullptr;
    std::vector<float> gu_scale, dn_scale;  // [E, 2f], [E, d]
};

template <class S>
Llama4Fp8ExpertsPlan plan_llama4_fp8_experts(S const& src, std::string const& prefix, std::int64_t E, std::int64_t d, std::int64_t f,
                                             std::string const& file) {
    Llama4Fp8ExpertsPlan p{prefix, file, E, d, f, nullptr, nullptr, {}, {}};
    detail::PlanChecks const ck{file, prefix, 2 * f, d, file};
    auto need = [&](char const* suffix, bool codes, std::initializer_list<std::int64_t> shape, char const* formula) {
        auto const* t = src.find(prefix + "." + suffix);
        if (!t) ck.missing(suffix, std::string("the stacked FP8 experts ") + formula + " (llama4, fbgemm_fp8)");
        if (codes)
            ck.dtype(*t, {Dtype::F8_E4M3}, "F8_E4M3");
        else
            ck.float_dtype(*t);
        ck.shape(*t, shape, formula);
        return t;
    };
    p.gu = need("gate_up_proj", true, {E, d, 2 * f}, "[E, d, 2f]");
    p.dn = need("down_proj", true, {E, f, d}, "[E, f, d]");
    auto scales = [&](char const* suffix, std::initializer_list<std::int64_t> shape, char const* formula, bool col) {
        auto const* t = need(suffix, false, shape, formula);
        auto v = read_f32(*t);
        std::int64_t const n = col ? 2 * f : d;  // per expert
        for (std::size_t k = 0; k < v.size(); ++k)
            if (!std::isfinite(v[k]) || !(v[k] > 0.0f)) {
                std::int64_t const e = static_cast<std::int64_t>(k) / n, c = static_cast<std::int64_t>(k) % n;
                io::detail::file_fail(file, "tensor " + io::detail::quoted(t->name) + " element " + (col ? detail::dims_text({e, 0, c}) : detail::dims_text({e, c, 0})), v[k],
                                      "a finite scale > 0");
            }
        return v;
    };
    p.gu_scale = scales("gate_up_proj_scale", {E, 1, 2 * f}, "[E, 1, 2f]", true);
    p.dn_scale = scales("down_proj_scale", {E, d, 1}, "[E, d, 1]", false);
    return p;
}

inline expert::QuantExpertWeights read_llama4_fp8_expert(Llama4Fp8ExpertsPlan const& p, std::int64_t e) {
    std::int64_t const d = p.d, f = p.f;
    // out x in codes of a stack stored [e][in][out] (row stride `ld` outputs), from output column c0; a NaN code
    // is named by its index in the file.
    auto transposed = [&](TensorInfo const& t, std::int64_t in, std::int64_t ld, std::int64_t out, std::int64_t c0) {
        std::vector<std::uint8_t> codes(static_cast<std::size_t>(out * in));
        auto const* b = reinterpret_cast<std::uint8_t const*>(t.bytes.data()) + e * in * ld;
        for (std::int64_t i = 0; i < in; ++i)
            for (std::int64_t o = 0; o < out; ++o) {
                std::uint8_t const v = b[i * ld + c0 + o];
                if (quant::e4m3_is_nan(v))
                    io::detail::file_fail(t.file, "tensor " + io::detail::quoted(t.name) + " element " + detail::dims_text({e, i, c0 + o}),
                                          std::string(v == 0x7F ? "0x7F" : "0xFF"), "a finite e4m3 code (0x7F and 0xFF are NaN)");
                codes[static_cast<std::size_t>(o * in + i)] = v;
            }
        return codes;
    };
    auto matrix = [&](std::int64_t R, std::int64_t C, std::vector<std::uint8_t> const& codes, float const* sc, char const* name) {
        quant::Source const src{p.gu->file, p.prefix};
        return quant::from_fp8(src, R, C, 1, 0, codes, std::span<float const>(sc, static_cast<std::size_t>(R)), name);
    };
    expert::QuantExpertWeights w;
    float const* const g = p.gu_scale.data() + e * 2 * f;
    w.gate = matrix(f, d, transposed(*p.gu, d, 2 * f, f, 0), g, "gate_up_proj_scale");
    w.up = matrix(f, d, transposed(*p.gu, d, 2 * f, f, f), g + f, "gate_up_proj_scale");
    w.down = matrix(d, f, transposed(*p.dn, f, d, d, 0), p.dn_scale.data() + e * d, "down_proj_scale");
    return w;
}

}  // namespace smoe::inline v0::io
