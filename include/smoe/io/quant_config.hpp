#pragma once
// smoe::io::QuantConfig: config.json's `quantization_config` (formats.md §1.2-§1.4, §2.2-§2.3, §3.2,
// §4), parsed once and asked per module: which layout and parameters the module's tensors must have,
// or none (the module is dense). Untrusted input: every unsupported value and every key that would
// change the storage is a file_error naming the key (`key 'quantization_config.bits' = 3: expected 4
// (int4; other bit widths are not supported)`); calibration keys are ignored.
//
// | quant_method        | layouts                                                  | modules left dense          |
// |---------------------|----------------------------------------------------------|-----------------------------|
// | compressed-tensors  | pack-quantized int4, float-/naive-quantized FP8, int-/naive-quantized int8 channel, mxfp4-pack-quantized; mixed-precision per group | `ignore`, modules no group targets |
// | gptq                | qweight/qzeros/scales[/g_idx], v1 or v2 zero points      | `dynamic` "-:" patterns     |
// | awq                 | GEMM qweight/qzeros/scales                               | `modules_to_not_convert`    |
// | fp8                 | weight F8_E4M3 + weight_scale_inv (block, or one factor) | `modules_to_not_convert`, `ignored_layers` |
// | fbgemm_fp8          | weight F8_E4M3 + weight_scale [R, 1] (per channel); Llama 4's fused experts (quant_tensors.hpp) | `modules_to_not_convert` |
// | mxfp4               | gpt-oss `_blocks`/`_scales`, per module weight_packed U8 | `modules_to_not_convert`    |
// | smoe-ternary        | weight_ternary U8 (2b or b3) + weight_scale F32 (research.md §7.4) | `modules_to_not_convert` |
// | bitnet              | HF BitNet: weight U8 [R/4, C] + weight_scale [1]; linear_class bitlinear divides | `modules_to_not_convert` |
//
// Matching (§4 2): compressed-tensors targets and ignore entries are an exact module name, a `re:`
// pattern (ECMAScript std::regex, matched from the start of the name as Python's re.match) or the class
// name "Linear" (every expert projection is a Linear); a module takes the first match in the order
// exact name, patterns (sorted as strings), class name. GPTQ `dynamic`: patterns with "-:" (dense) or
// "+:"/no prefix (overrides of bits, group_size, sym, desc_act); the first in file order wins, as in
// GPTQModel (read_hf_config passes the order; nlohmann::json keeps keys sorted, so for a config given
// as a parsed object two patterns that match one module and disagree are an error naming both).
// modules_to_not_convert entries leave a
// module dense when the name contains the entry or the entry, as a pattern, matches from its start
// (transformers' rule, which also reads gpt-oss's `model.layers.*.mlp.router`).

#include <algorithm>
#include <cstdint>
#include <optional>
#include <regex>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "smoe/io/file_error.hpp"
#include "smoe/quant/format.hpp"

namespace smoe::inline v0::io {

enum class QuantMethod { compressed_tensors, gptq, awq, fp8, mxfp4, smoe_ternary, bitnet, fbgemm_fp8 };

inline char const* to_string(QuantMethod m) {
    switch (m) {
        case QuantMethod::compressed_tensors: return "compressed-tensors";
        case QuantMethod::gptq: return "gptq";
        case QuantMethod::awq: return "awq";
        case QuantMethod::fp8: return "fp8";
        case QuantMethod::smoe_ternary: return "smoe-ternary";
        case QuantMethod::bitnet: return "bitnet";
        case QuantMethod::fbgemm_fp8: return "fbgemm_fp8";
        default: return "mxfp4";
    }
}

// How one module's matrix is stored (formats.md §5's identification table, from the config's side).
enum class QuantLayout {
    dense,             // P.weight, F32/BF16/F16
    ct_int4,           // §1.2 weight_packed I32, weight_scale, [weight_zero_point], [weight_g_idx], [weight_shape]
    ct_int8,           // §1.7 weight I8, weight_scale [R, 1]
    ct_fp8,            // §2.3 weight F8_E4M3, weight_scale
    ct_mxfp4,          // §3.2 weight_packed U8 [R, C/2], weight_scale U8 [R, C/32]
    gptq,              // §1.3 qweight, qzeros, scales, [g_idx]
    awq,               // §1.4 qweight, qzeros, scales
    fp8,               // §2.2 weight F8_E4M3, weight_scale_inv
    mxfp4,             // §3.2 gpt-oss stacked _blocks/_scales (or a module's weight_packed U8)
    ternary,           // research.md §7.4 weight_ternary U8, weight_scale F32
    bitnet,            // research.md §7.4 HF BitNet weight U8 [R/4, C], weight_scale [1]
    fp4,               // DeepSeek-V4's experts (fp8 with expert_dtype "fp4"): weight I8 [R, C/2] E2M1 pairs, scale E8M0 [R, C/32]
};

inline char const* to_string(QuantLayout l) {
    switch (l) {
        case QuantLayout::dense: return "dense";
        case QuantLayout::ct_int4: return "compressed-tensors pack-quantized int4";
        case QuantLayout::ct_int8: return "compressed-tensors int8 per channel";
        case QuantLayout::ct_fp8: return "compressed-tensors float-quantized FP8";
        case QuantLayout::ct_mxfp4: return "compressed-tensors mxfp4-pack-quantized";
        case QuantLayout::gptq: return "GPTQ";
        case QuantLayout::awq: return "AWQ GEMM";
        case QuantLayout::fp8: return "FP8 (weight_scale_inv)";
        case QuantLayout::ternary: return "smoe ternary (weight_ternary)";
        case QuantLayout::bitnet: return "HF BitNet ternary";
        case QuantLayout::fp4: return "FP4 experts (expert_dtype fp4)";
        default: return "MXFP4";
    }
}

// The parameters of one module's layout, as the config gives them.
struct QuantScheme {
    QuantLayout layout = QuantLayout::dense;
    std::int64_t group = 0;        // int4: columns per group; 0 = per channel (-1 / null in files)
    bool symmetric = true;         // int4: no zero points (CT), zero point 8 (GPTQ)
    bool act_order = false;        // int4: g_idx carries each column's group (CT actorder group, GPTQ desc_act)
    bool gptq_v2 = false;          // GPTQ: z = nibble (v1: nibble + 1)
    std::int64_t block_rows = 0;   // FP8: rows per factor; 0 = all rows (per tensor)
    std::int64_t block_cols = 0;   // FP8: columns per factor; 0 = all columns
    bool ue8m0 = false;            // FP8 scale_fmt "ue8m0": factors may be E8M0 bytes
    bool expert_fp4 = false;       // FP8 expert_dtype "fp4": a module whose weight is I8/U8 is QuantLayout::fp4
    std::string group_key;         // the key that gave `group`, for divisibility errors
    quant::TernaryScale ternary_scale = quant::TernaryScale::tensor;  // smoe-ternary: the scale unit
    quant::TernaryPacking packing = quant::TernaryPacking::p2b;       // smoe-ternary: 2b or b3
    bool bitlinear = true;         // bitnet: linear_class "bitlinear" (W = t / weight_scale), else autobitlinear (t · weight_scale)

    bool quantized() const { return layout != QuantLayout::dense; }
};

struct QuantConfig {
    QuantMethod method = QuantMethod::compressed_tensors;
    std::string file;  // config.json, for errors

    // compressed-tensors
    struct Target {
        std::string text;                 // as written ("re:..." or a name)
        std::optional<std::regex> pattern;
    };
    struct Group {
        std::string name;
        std::vector<Target> targets;
        QuantScheme scheme;
    };
    std::vector<Group> groups;
    std::vector<Target> ignore;

    // gptq, awq, fp8, mxfp4: one scheme for every converted module
    QuantScheme scheme;
    struct Override {
        std::string text;  // the key as written, prefix included
        bool dense = false;
        std::regex pattern;
        QuantScheme scheme;
    };
    std::vector<Override> dynamic;    // gptq, in file order when dynamic_ordered
    bool dynamic_ordered = false;     // the file's key order is known: the first matching pattern wins
    std::vector<Target> not_convert;  // awq, fp8, mxfp4

    // The module's scheme (`module` is the name without ".weight", e.g.
    // "model.layers.0.mlp.experts.3.gate_proj"); dense when the config leaves it unquantised.
    QuantScheme scheme_of(std::string const& module) const {
        if (method == QuantMethod::compressed_tensors) {
            for (auto const& t : ignore)
                if (ct_match(t, module) >= 0) return {};
            int best = 3;
            std::string const* best_text = nullptr;
            Group const* found = nullptr;
            for (auto const& g : groups)
                for (auto const& t : g.targets) {
                    int const rank = ct_match(t, module);
                    if (rank < 0) continue;
                    if (rank < best || (rank == best && best_text && t.text < *best_text)) {
                        best = rank;
                        best_text = &t.text;
                        found = &g;
                    }
                }
            return found ? found->scheme : QuantScheme{};
        }
        for (auto const& t : not_convert)
            if (module.find(t.text) != std::string::npos || (t.pattern && match_from_start(*t.pattern, module))) return {};
        if (method == QuantMethod::gptq) {
            // GPTQModel takes the first match in the file's order; without that order (a config given as
            // a parsed object) two matches must agree.
            Override const* hit = nullptr;
            for (auto const& o : dynamic) {
                if (!match_from_start(o.pattern, module)) continue;
                if (dynamic_ordered) {
                    hit = &o;
                    break;
                }
                if (hit && (hit->dense != o.dense || !same(hit->scheme, o.scheme)))
                    detail::file_fail(file, "key 'quantization_config.dynamic'", hit->text + " and " + o.text + " both match " + module,
                                      "at most one pattern per module, or patterns that agree (the key order is unknown here)");
                if (!hit) hit = &o;
            }
            if (hit) return hit->dense ? QuantScheme{} : hit->scheme;
        }
        return scheme;
    }

private:
    static bool match_from_start(std::regex const& re, std::string const& s) {
        return std::regex_search(s, re, std::regex_constants::match_continuous);
    }
    static bool same(QuantScheme const& a, QuantScheme const& b) {
        return a.layout == b.layout && a.group == b.group && a.symmetric == b.symmetric && a.act_order == b.act_order;
    }
    // 0: exact name, 1: pattern, 2: class name, -1: no match.
    static int ct_match(Target const& t, std::string const& module) {
        if (t.pattern) return match_from_start(*t.pattern, module) ? 1 : -1;
        if (t.text == module) return 0;
        if (t.text == "Linear") return 2;
        return -1;
    }
};

namespace detail {

// Reads quantization_config keys, naming them `quantization_config.<path>.<key>` in errors.
class QuantKeys {
public:
    QuantKeys(nlohmann::json const& j, std::string file, std::string path) : j_(j), file_(std::move(file)), path_(std::move(path)) {}

    std::string key(std::string const& k) const { return path_ + "." + k; }
    [[noreturn]] void fail(std::string const& k, nlohmann::json const& v, std::string const& expected) const {
        file_fail(file_, "key '" + key(k) + "'", v.is_string() ? v.get<std::string>() : v.dump(), expected);
    }
    bool has(char const* k) const { return j_.contains(k) && !j_[k].is_null(); }
    // The value, or null when absent (const operator[] on a missing key is undefined).
    nlohmann::json const& at(char const* k) const {
        static nlohmann::json const null;
        return j_.contains(k) ? j_[k] : null;
    }
    std::optional<std::string> str(char const* k) const {
        if (!has(k)) return std::nullopt;
        if (!j_[k].is_string()) fail(k, j_[k], "a string");
        return j_[k].get<std::string>();
    }
    std::optional<std::int64_t> integer(char const* k) const {
        if (!has(k)) return std::nullopt;
        if (!j_[k].is_number_integer()) fail(k, j_[k], "an integer");
        return j_[k].get<std::int64_t>();
    }
    std::optional<bool> boolean(char const* k) const {
        if (!has(k)) return std::nullopt;
        if (!j_[k].is_boolean()) fail(k, j_[k], "true or false");
        return j_[k].get<bool>();
    }
    // Keys that would change how the tensors are stored: absent, null or {}.
    void storage_neutral(std::initializer_list<char const*> keys) const {
        for (char const* k : keys)
            if (has(k) && !(j_[k].is_object() && j_[k].empty())) fail(k, j_[k], "null or {} (a key that changes the storage)");
    }
    // group_size: -1, 0 or null per channel; else > 0.
    std::int64_t group(char const* k) const {
        auto const g = integer(k);
        if (!g || *g == -1 || *g == 0) return 0;
        if (*g < 0) fail(k, j_[k], "a group size > 0, or -1 (per channel)");
        return *g;
    }
    std::vector<QuantConfig::Target> targets(char const* k) const {
        std::vector<QuantConfig::Target> out;
        if (!has(k)) return out;
        auto const& v = j_[k];
        if (v.is_string()) return {target(k, v.get<std::string>(), true)};
        if (!v.is_array()) fail(k, v, "a list of module names, \"re:\" patterns or class names");
        for (auto const& e : v) {
            if (!e.is_string()) fail(k, v, "a list of module names, \"re:\" patterns or class names");
            out.push_back(target(k, e.get<std::string>(), true));
        }
        return out;
    }
    // modules_to_not_convert: every entry a substring and a pattern.
    std::vector<QuantConfig::Target> names(char const* k) const {
        std::vector<QuantConfig::Target> out;
        if (!has(k)) return out;
        auto const& v = j_[k];
        if (!v.is_array()) fail(k, v, "a list of module names");
        for (auto const& e : v) {
            if (!e.is_string()) fail(k, v, "a list of module names");
            QuantConfig::Target t{e.get<std::string>(), regex(k, e.get<std::string>())};
            out.push_back(std::move(t));
        }
        return out;
    }
    std::regex regex(std::string const& k, std::string const& pattern) const {
        try {
            return std::regex(pattern, std::regex::ECMAScript);
        } catch (std::regex_error const&) {
            file_fail(file_, "key '" + key(k) + "'", pattern, "a pattern in the ECMAScript regex subset (std::regex)");
        }
    }

private:
    QuantConfig::Target target(std::string const& k, std::string const& s, bool re_prefix) const {
        QuantConfig::Target t{s, std::nullopt};
        if (re_prefix && s.rfind("re:", 0) == 0) t.pattern = regex(k, s.substr(3));
        return t;
    }

    nlohmann::json const& j_;
    std::string file_;
    std::string path_;
};

inline char const* const kInt4Only = "4 (int4; other bit widths are not supported)";

// A compressed-tensors group's `weights` (§1.2, §1.7, §2.3, §3.2) in the group's format.
inline QuantScheme ct_scheme(nlohmann::json const& w, std::string const& format, std::string const& file, std::string const& path) {
    QuantKeys k(w, file, path);
    if (!w.is_object()) file_fail(file, "key '" + path + "'", w.dump(), "an object (the weights' quantization args)");
    auto const bits = k.integer("num_bits").value_or(8);
    std::string const type = k.str("type").value_or("int");
    std::string const strategy = k.str("strategy").value_or("tensor");
    bool const symmetric = k.boolean("symmetric").value_or(true);
    if (k.has("dynamic") && !(k.at("dynamic").is_boolean() && !k.at("dynamic").get<bool>()))
        k.fail("dynamic", k.at("dynamic"), "false (static weight scales)");
    if (type != "int" && type != "float") k.fail("type", k.at("type"), "\"int\" or \"float\"");
    QuantScheme s;
    s.group_key = k.key("group_size");
    if (format == "pack-quantized") {
        if (bits != 4) k.fail("num_bits", bits, kInt4Only);
        if (type != "int") k.fail("type", k.at("type"), "\"int\" (pack-quantized int4)");
        s.layout = QuantLayout::ct_int4;
        s.symmetric = symmetric;
        if (strategy == "group") {
            s.group = k.group("group_size");
            if (s.group == 0) k.fail("group_size", k.has("group_size") ? k.at("group_size") : nlohmann::json(nullptr), "a group size > 0 for strategy \"group\"");
        } else if (strategy == "channel") {
            s.group = 0;
        } else {
            k.fail("strategy", k.at("strategy"), "\"group\" or \"channel\" (int4)");
        }
        if (k.has("actorder")) {
            auto const& a = k.at("actorder");
            if (a.is_boolean()) {
                s.act_order = a.get<bool>();
            } else if (a.is_string()) {
                std::string const v = a.get<std::string>();
                if (v == "group" || v == "dynamic") s.act_order = true;
                else if (v != "weight" && v != "static") k.fail("actorder", a, "null, \"weight\", \"static\", \"group\", \"dynamic\" or a boolean");
            } else {
                k.fail("actorder", a, "null, \"weight\", \"static\", \"group\", \"dynamic\" or a boolean");
            }
        }
        if (s.act_order && s.group == 0) k.fail("actorder", k.at("actorder"), "no act order for a per-channel matrix (one group)");
        return s;
    }
    if (format == "mxfp4-pack-quantized") {
        if (bits != 4) k.fail("num_bits", bits, "4 (MXFP4)");
        if (type != "float") k.fail("type", k.at("type"), "\"float\" (MXFP4)");
        if (k.has("group_size") && k.group("group_size") != 32) k.fail("group_size", k.at("group_size"), "32 (one E8M0 scale per 32)");
        s.layout = QuantLayout::ct_mxfp4;
        return s;
    }
    if (format == "float-quantized" || format == "naive-quantized" || format == "int-quantized") {
        if (bits != 8) k.fail("num_bits", bits, "8 (FP8 or int8 per channel in " + format + ")");
        if (!symmetric) k.fail("symmetric", false, "true (8-bit weights have no zero point)");
        if (type == "float") {
            if (format == "int-quantized") k.fail("type", k.at("type"), "\"int\" (int-quantized)");
            s.layout = QuantLayout::ct_fp8;
            if (strategy == "tensor") {
                s.block_rows = s.block_cols = 0;
            } else if (strategy == "channel") {
                s.block_rows = 1;
            } else if (strategy == "block") {
                auto const& b = k.has("block_structure") ? k.at("block_structure") : nlohmann::json(nullptr);
                if (!b.is_array() || b.size() != 2 || !b[0].is_number_integer() || !b[1].is_number_integer() || b[0].get<std::int64_t>() <= 0 ||
                    b[1].get<std::int64_t>() <= 0)
                    k.fail("block_structure", b, "two positive integers [bh, bw]");
                s.block_rows = b[0].get<std::int64_t>();
                s.block_cols = b[1].get<std::int64_t>();
            } else {
                k.fail("strategy", k.at("strategy"), "\"tensor\", \"channel\" or \"block\" (FP8)");
            }
            return s;
        }
        if (format == "float-quantized") k.fail("type", k.at("type"), "\"float\" (float-quantized)");
        if (strategy != "channel") k.fail("strategy", k.has("strategy") ? k.at("strategy") : nlohmann::json("tensor"), "\"channel\" (int8 per channel, formats.md §1.7)");
        s.layout = QuantLayout::ct_int8;
        return s;
    }
    if (format == "dense") return {};
    file_fail(file, "key '" + path.substr(0, path.rfind('.')) + ".format'", format,
              "\"pack-quantized\", \"float-quantized\", \"naive-quantized\", \"int-quantized\", \"mxfp4-pack-quantized\" or \"dense\"");
}

// bits / group_size / sym / desc_act of GPTQ (the top level or a `dynamic` override over `base`).
inline QuantScheme gptq_scheme(QuantKeys const& k, QuantScheme base) {
    if (auto const bits = k.integer("bits"); bits && *bits != 4) k.fail("bits", *bits, detail::kInt4Only);
    if (k.has("group_size")) {
        base.group = k.group("group_size");
        base.group_key = k.key("group_size");
    }
    if (auto const sym = k.boolean("sym")) base.symmetric = *sym;
    if (auto const act = k.boolean("desc_act")) base.act_order = *act;
    return base;
}

}  // namespace detail

// `q` is the value of config.json's "quantization_config"; `file` names config.json in errors.
// `dynamic_order`: GPTQ `dynamic`'s keys in the file's order (nlohmann::json sorts them), when known.
inline QuantConfig parse_quant_config(nlohmann::json const& q, std::string const& file,
                                      std::vector<std::string> const& dynamic_order = {}) {
    std::string const root = "quantization_config";
    if (!q.is_object()) detail::file_fail(file, "key '" + root + "'", q.dump(), "an object");
    detail::QuantKeys k(q, file, root);
    QuantConfig c;
    c.file = file;
    std::string const method = k.str("quant_method").value_or("");
    if (method == "compressed-tensors") {
        c.method = QuantMethod::compressed_tensors;
        k.storage_neutral({"sparsity_config", "transform_config", "moe_sparsity_config"});
        if (auto const st = k.str("quantization_status"); st && *st != "compressed")
            k.fail("quantization_status", *st, "\"compressed\" (the tensors hold the quantised layout)");
        std::string const top = k.str("format").value_or("dense");
        if (!k.has("config_groups") || !k.at("config_groups").is_object())
            k.fail("config_groups", k.has("config_groups") ? k.at("config_groups") : nlohmann::json(nullptr), "an object of quantisation groups");
        for (auto const& [name, g] : k.at("config_groups").items()) {
            std::string const path = root + ".config_groups." + name;
            if (!g.is_object()) detail::file_fail(file, "key '" + path + "'", g.dump(), "an object");
            detail::QuantKeys gk(g, file, path);
            std::string format = gk.str("format").value_or(top);
            if (format == "mixed-precision")
                gk.fail("format", g.contains("format") ? g["format"] : nlohmann::json(top), "each group's own format with top-level \"mixed-precision\"");
            QuantConfig::Group group{name, gk.targets("targets"), {}};
            if (gk.has("weights")) group.scheme = detail::ct_scheme(gk.at("weights"), format, file, path + ".weights");
            c.groups.push_back(std::move(group));
        }
        c.ignore = k.targets("ignore");
    } else if (method == "gptq") {
        c.method = QuantMethod::gptq;
        c.scheme.layout = QuantLayout::gptq;
        c.scheme.group = 128;
        c.scheme.group_key = k.key("group_size");
        c.scheme.symmetric = true;
        if (!k.has("bits")) k.fail("bits", "missing", detail::kInt4Only);
        c.scheme = detail::gptq_scheme(k, c.scheme);
        auto const fmt = k.str("checkpoint_format"), fmt2 = k.str("format");
        for (auto const& [key, v] : {std::pair{"checkpoint_format", fmt}, std::pair{"format", fmt2}})
            if (v && *v != "gptq" && *v != "gptq_v2") k.fail(key, *v, "\"gptq\" or \"gptq_v2\" (other GPTQ formats use other layouts)");
        if (fmt && fmt2 && *fmt != *fmt2) k.fail("checkpoint_format", *fmt, "the same as key '" + k.key("format") + "' (" + *fmt2 + ")");
        c.scheme.gptq_v2 = (fmt ? *fmt : fmt2.value_or("gptq")) == "gptq_v2";
        if (auto const p = k.str("pack_dtype"); p && *p != "int32") k.fail("pack_dtype", *p, "\"int32\"");
        if (k.has("dynamic")) {
            auto const& d = k.at("dynamic");
            if (!d.is_object()) k.fail("dynamic", d, "an object of pattern -> overrides");
            for (auto const& [pat, ov] : d.items()) {
                QuantConfig::Override o;
                o.text = pat;
                std::string body = pat;
                if (pat.rfind("-:", 0) == 0) o.dense = true, body = pat.substr(2);
                else if (pat.rfind("+:", 0) == 0) body = pat.substr(2);
                std::string const path = root + ".dynamic." + pat;
                o.pattern = k.regex("dynamic", body);
                if (!ov.is_object()) detail::file_fail(file, "key '" + path + "'", ov.dump(), "an object of overrides (bits, group_size, sym, desc_act)");
                if (!o.dense) o.scheme = detail::gptq_scheme(detail::QuantKeys(ov, file, path), c.scheme);
                c.dynamic.push_back(std::move(o));
            }
            if (!dynamic_order.empty()) {
                auto const rank = [&](QuantConfig::Override const& o) {
                    auto const it = std::find(dynamic_order.begin(), dynamic_order.end(), o.text);
                    if (it == dynamic_order.end()) detail::file_fail(file, "key '" + root + ".dynamic." + o.text + "'", "not in the key order", "a key of the file");
                    return it - dynamic_order.begin();
                };
                std::stable_sort(c.dynamic.begin(), c.dynamic.end(), [&](auto const& a, auto const& b) { return rank(a) < rank(b); });
                c.dynamic_ordered = true;
            }
        }
    } else if (method == "awq") {
        c.method = QuantMethod::awq;
        if (!k.has("bits")) k.fail("bits", "missing", detail::kInt4Only);
        if (auto const bits = k.integer("bits"); *bits != 4) k.fail("bits", *bits, detail::kInt4Only);
        c.scheme.layout = QuantLayout::awq;
        c.scheme.group = k.group("group_size");
        c.scheme.group_key = k.key("group_size");
        c.scheme.symmetric = false;
        if (auto const z = k.boolean("zero_point"); z && !*z) k.fail("zero_point", false, "true (the GEMM layout has zero points)");
        for (char const* key : {"version", "format"})
            if (auto const v = k.str(key)) {
                std::string low = *v;
                std::transform(low.begin(), low.end(), low.begin(), [](unsigned char ch) { return static_cast<char>(std::tolower(ch)); });
                if (low != "gemm") k.fail(key, *v, "\"gemm\" (gemv, gemv_fast and llm-awq use other layouts)");
            }
        c.not_convert = k.names("modules_to_not_convert");
    } else if (method == "fp8") {
        c.method = QuantMethod::fp8;
        c.scheme.layout = QuantLayout::fp8;
        if (auto const f = k.str("fmt"); f && *f != "e4m3") k.fail("fmt", *f, "\"e4m3\"");
        if (k.has("weight_block_size")) {
            auto const& b = k.at("weight_block_size");
            if (!b.is_array() || b.size() != 2 || !b[0].is_number_integer() || !b[1].is_number_integer() || b[0].get<std::int64_t>() <= 0 ||
                b[1].get<std::int64_t>() <= 0)
                k.fail("weight_block_size", b, "null or two positive integers [bh, bw]");
            c.scheme.block_rows = b[0].get<std::int64_t>();
            c.scheme.block_cols = b[1].get<std::int64_t>();
        }
        if (auto const a = k.str("activation_scheme"); a && *a != "dynamic" && *a != "static")
            k.fail("activation_scheme", *a, "\"dynamic\" or \"static\"");
        if (auto const s = k.str("scale_fmt"); s) {
            if (*s != "float" && *s != "ue8m0") k.fail("scale_fmt", *s, "\"float\" or \"ue8m0\"");
            c.scheme.ue8m0 = *s == "ue8m0";
        }
        // DeepSeek-V4: expert_dtype "fp4" stores the routed experts as E2M1 pairs (transformers FP8Experts: weight int8
        // [N, K/2], one UE8M0 factor per 1 x 32; the other linears stay FP8 blocks): plan_matrix tells them by dtype.
        if (auto const e = k.str("expert_dtype"); e && *e != "fp8" && *e != "fp4") k.fail("expert_dtype", *e, "\"fp8\" or \"fp4\"");
        c.scheme.expert_fp4 = k.str("expert_dtype") == std::optional<std::string>("fp4");
        c.not_convert = k.names("modules_to_not_convert");
        for (auto& t : k.names("ignored_layers")) c.not_convert.push_back(std::move(t));
    } else if (method == "fbgemm_fp8") {
        // transformers' FbgemmFp8Config (Llama 4's FP8 release): a Linear's weight F8_E4M3 [R, C] with weight_scale
        // [R, 1], one factor per output channel: compressed-tensors' channel rule (formats.md §2.3). smoe does not
        // quantise activations, so activation_scale_ub is not read.
        c.method = QuantMethod::fbgemm_fp8;
        c.scheme.layout = QuantLayout::ct_fp8;
        c.scheme.block_rows = 1;
        c.scheme.block_cols = 0;
        c.not_convert = k.names("modules_to_not_convert");
    } else if (method == "mxfp4") {
        c.method = QuantMethod::mxfp4;
        c.scheme.layout = QuantLayout::mxfp4;
        c.not_convert = k.names("modules_to_not_convert");
    } else if (method == "smoe-ternary") {  // research.md §7.4
        c.method = QuantMethod::smoe_ternary;
        c.scheme.layout = QuantLayout::ternary;
        std::string const packing = k.str("packing").value_or("2b");
        if (packing != "2b" && packing != "b3") k.fail("packing", packing, "\"2b\" or \"b3\"");
        c.scheme.packing = packing == "b3" ? quant::TernaryPacking::b3 : quant::TernaryPacking::p2b;
        std::string const scale = k.str("scale").value_or("tensor");
        if (scale == "tensor") c.scheme.ternary_scale = quant::TernaryScale::tensor;
        else if (scale == "channel") c.scheme.ternary_scale = quant::TernaryScale::channel;
        else if (scale == "group") c.scheme.ternary_scale = quant::TernaryScale::group;
        else k.fail("scale", scale, "\"tensor\", \"channel\" or \"group\"");
        if (c.scheme.ternary_scale == quant::TernaryScale::group) {
            auto const g = k.integer("group_size");
            if (!g || *g < 1) k.fail("group_size", k.at("group_size"), "a group size >= 1 with scale \"group\"");
            c.scheme.group = *g;
            c.scheme.group_key = k.key("group_size");
        }
        c.not_convert = k.names("modules_to_not_convert");
    } else if (method == "bitnet") {
        c.method = QuantMethod::bitnet;
        c.scheme.layout = QuantLayout::bitnet;
        std::string const lc = k.str("linear_class").value_or("bitlinear");
        if (lc != "bitlinear" && lc != "autobitlinear") k.fail("linear_class", lc, "\"bitlinear\" or \"autobitlinear\"");
        c.scheme.bitlinear = lc == "bitlinear";
        if (auto const q = k.str("quantization_mode"); q && *q != "offline")
            k.fail("quantization_mode", *q, "\"offline\" (the file holds packed ternary weights)");
        c.not_convert = k.names("modules_to_not_convert");
    } else {
        detail::file_fail(file, "key '" + k.key("quant_method") + "'", method.empty() ? std::string("missing") : method,
                          "\"compressed-tensors\", \"gptq\", \"awq\", \"fp8\", \"fbgemm_fp8\", \"mxfp4\", \"smoe-ternary\" or \"bitnet\"");
    }
    return c;
}

}  // namespace smoe::inline v0::io
