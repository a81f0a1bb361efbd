#pragma once
// The MoE block of a Hugging Face `config.json` (cases.md "Full-layer configs"): which family, the
// shapes, the router preset with the file's values, and the shared expert. Untrusted input: a key of
// the wrong type or range is an error naming the file and the key; a key the family needs and the
// file lacks takes the default of the family's Hugging Face configuration class and is listed in
// `defaulted` (the tools print it on stderr). Dimensions and counts are bounded by smoe::limits
// here, before any checkpoint is read, so that no product of them can wrap; the loader then holds each
// one to the checkpoint's tensor shapes, naming the key (`keys`) when they disagree.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <limits>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "smoe/core/limits.hpp"
#include "smoe/expert/swiglu_config.hpp"
#include "smoe/io/file_error.hpp"
#include "smoe/io/quant_config.hpp"
#include "smoe/io/strict_json.hpp"
#include "smoe/router/topk_config.hpp"

namespace smoe::inline v0::io {

// The model_types parse_hf_config maps (../shared/spec/families.md §2). Families whose block is another's
// with other defaults and names share its router preset and layer type:
//   R-SM / R-SMN softmax top-k    mixtral, minimax, olmoe, flex_olmo, jamba, hunyuan_v1_moe, qwen2_moe, qwen3_moe,
//                                 qwen3_next, qwen3_5_moe, qwen3_vl_moe, qwen4_exp, mellum
//   sigmoid top-k, renorm         flint
//   R-SB sigmoid + bias           minimax_m2, afmoe, lfm2_moe, hy_v3
//   R-TKS top-k, softmax over k   granitemoe, granitemoeshared, granitemoehybrid, granitemoe_swa
//   softmax + bias, renorm        ernie4_5_moe
//   R-V3 sigmoid + bias + groups  deepseek_v3, deepseek_v32, glm4_moe, glm4v_moe, glm4_moe_lite, glm_moe_dsa, dots1,
//                                 exaone_moe, bailing_hybrid, kimi_linear, solar_open, mimo_v2_flash, beam
// and the families with an expert form of their own (families.md §2.1-§2.6; expert/swiglu_config.hpp):
//   gpt_oss        R-TKS on logits with the router's bias; clamped SwiGLU (alpha, limit, +1), biases, interleaved
//   deepseek_v4    sqrt-softplus + bias, renorm, r; SwiGLU clamped at swiglu_limit, routed and shared (hash layers: no)
//   llama4         sigmoid top-k, no renorm; the weight on the expert input; ungated shared expert
//   cohere2_moe    R-TKS, or sigmoid [renorm]; `average`: routed and shared halved
//   jetmoe         R-TKS; one output bias [d] per layer
//   dbrx           softmax top-k, w / ||w||_p
//   longcat_flash  softmax over E + Z, selection bias, r, no renorm; ids >= E identity experts
//   phimoe         sparsemixer (router::SparseMixer, two experts whatever num_experts_per_tok says)
//   nemotron_h     R-V3 over non-gated relu² experts (up, down) and a relu² shared MLP (GluActivation::relu2)
enum class HfFamily {
    mixtral, olmoe, qwen2_moe, deepseek_v2, deepseek_v3,
    qwen3_moe, deepseek_v32, glm4_moe, glm4_moe_lite, glm_moe_dsa, dots1, exaone_moe,
    qwen3_next, qwen3_5_moe, minimax, minimax_m2, flex_olmo, bailing_hybrid,
    afmoe, lfm2_moe, jamba, hunyuan_v1_moe, ernie4_5_moe, granitemoe, granitemoeshared, granitemoehybrid,
    mellum, glm4v_moe, kimi_linear, solar_open, mimo_v2_flash, flint, hy_v3, granitemoe_swa, qwen3_vl_moe,
    qwen4_exp, beam, gpt_oss, deepseek_v4, llama4, cohere2_moe, jetmoe, dbrx, longcat_flash, phimoe, nemotron_h
};

inline char const* to_string(HfFamily f) {
    switch (f) {
        case HfFamily::mixtral: return "mixtral";
        case HfFamily::olmoe: return "olmoe";
        case HfFamily::qwen2_moe: return "qwen2_moe";
        case HfFamily::deepseek_v2: return "deepseek_v2";
        case HfFamily::deepseek_v3: return "deepseek_v3";
        case HfFamily::qwen3_moe: return "qwen3_moe";
        case HfFamily::deepseek_v32: return "deepseek_v32";
        case HfFamily::glm4_moe: return "glm4_moe";
        case HfFamily::glm4_moe_lite: return "glm4_moe_lite";
        case HfFamily::glm_moe_dsa: return "glm_moe_dsa";
        case HfFamily::dots1: return "dots1";
        case HfFamily::exaone_moe: return "exaone_moe";
        case HfFamily::qwen3_next: return "qwen3_next";
        case HfFamily::qwen3_5_moe: return "qwen3_5_moe";
        case HfFamily::minimax: return "minimax";
        case HfFamily::minimax_m2: return "minimax_m2";
        case HfFamily::flex_olmo: return "flex_olmo";
        case HfFamily::bailing_hybrid: return "bailing_hybrid";
        case HfFamily::afmoe: return "afmoe";
        case HfFamily::lfm2_moe: return "lfm2_moe";
        case HfFamily::jamba: return "jamba";
        case HfFamily::hunyuan_v1_moe: return "hunyuan_v1_moe";
        case HfFamily::ernie4_5_moe: return "ernie4_5_moe";
        case HfFamily::granitemoe: return "granitemoe";
        case HfFamily::granitemoeshared: return "granitemoeshared";
        case HfFamily::granitemoehybrid: return "granitemoehybrid";
        case HfFamily::mellum: return "mellum";
        case HfFamily::glm4v_moe: return "glm4v_moe";
        case HfFamily::kimi_linear: return "kimi_linear";
        case HfFamily::solar_open: return "solar_open";
        case HfFamily::mimo_v2_flash: return "mimo_v2_flash";
        case HfFamily::flint: return "flint";
        case HfFamily::hy_v3: return "hy_v3";
        case HfFamily::granitemoe_swa: return "granitemoe_swa";
        case HfFamily::qwen3_vl_moe: return "qwen3_vl_moe";
        case HfFamily::qwen4_exp: return "qwen4_exp";
        case HfFamily::beam: return "beam";
        case HfFamily::gpt_oss: return "gpt_oss";
        case HfFamily::deepseek_v4: return "deepseek_v4";
        case HfFamily::llama4: return "llama4";
        case HfFamily::cohere2_moe: return "cohere2_moe";
        case HfFamily::jetmoe: return "jetmoe";
        case HfFamily::dbrx: return "dbrx";
        case HfFamily::longcat_flash: return "longcat_flash";
        case HfFamily::phimoe: return "phimoe";
        case HfFamily::nemotron_h: return "nemotron_h";
    }
    return "?";
}
inline constexpr char const* kHfModelTypes =
    "mixtral, minimax, minimax_m2, olmoe, flex_olmo, qwen2_moe, qwen3_moe, qwen3_next, qwen3_5_moe (or its text_config "
    "qwen3_5_moe_text), deepseek_v2, deepseek_v3, deepseek_v32, glm4_moe, glm4_moe_lite, glm_moe_dsa, dots1, exaone_moe, "
    "bailing_hybrid, afmoe, lfm2_moe, jamba, hunyuan_v1_moe, ernie4_5_moe, granitemoe, granitemoeshared, granitemoehybrid, "
    "mellum, glm4v_moe (or its text_config glm4v_moe_text), kimi_linear, solar_open, mimo_v2_flash, flint, hy_v3, granitemoe_swa, "
    "qwen3_vl_moe (or its text_config qwen3_vl_moe_text), qwen4_exp (or qwen4_exp_text), beam, gpt_oss, deepseek_v4, "
    "llama4 (or its text_config llama4_text), cohere2_moe, jetmoe, dbrx, longcat_flash, phimoe, nemotron_h";

// Which config.json key each dimension came from (families spell them differently), so that errors
// name what the user wrote.
struct HfConfigKeys {
    std::string file = "config.json";
    char const* hidden_size = "hidden_size";
    char const* intermediate_size = "intermediate_size";
    char const* num_experts = "num_local_experts";
    char const* top_k = "num_experts_per_tok";
    // The shared expert's width: its own key (Qwen2-MoE), or n_shared_experts × the routed width (DeepSeek).
    char const* shared_size = "shared_expert_intermediate_size";
    bool shared_in_routed_units = false;
};

struct HfMoeConfig {
    HfFamily family = HfFamily::mixtral;
    std::int64_t hidden_size = 0;           // d
    std::int64_t intermediate_size = 0;     // f of one routed expert
    std::int64_t num_hidden_layers = 0;
    router::TopKConfig router;              // E, k, score, norm, groups, scale
    std::int64_t shared_intermediate_size = 0;  // 0: no shared expert; n_shared · f for DeepSeek
    bool shared_gated = false;              // Qwen2-MoE's sigmoid shared_expert_gate
    // Which decoder layers are MoE layers (the others are dense MLPs and have no router).
    std::int64_t first_moe_layer = 0;       // DeepSeek first_k_dense_replace
    std::int64_t moe_layer_freq = 1;        // DeepSeek moe_layer_freq, Qwen2-MoE decoder_sparse_step
    bool sparse_step_counts_from_one = false;  // Qwen2-MoE: (layer + 1) % decoder_sparse_step == 0
    std::vector<std::int64_t> dense_layers;    // Qwen2-MoE mlp_only_layers
    char const* dense_key = "mlp_only_layers";
    // mlp_layer_types as the file lists them (1 = "sparse"), one per layer; when present it alone decides.
    std::vector<std::uint8_t> moe_layer_types;
    std::string layer_types_rule = "mlp_layer_types[layer] == \"sparse\"";  // moe_layer_types' source, for errors
    char const* first_moe_key = nullptr;    // the key first_moe_layer came from (none: every layer from 0)
    char const* layer_freq_key = nullptr;   // the key moe_layer_freq came from
    std::int64_t moe_layer_offset = 0;      // Jamba: layer % expert_layer_period == expert_layer_offset
    char const* layer_offset_key = nullptr;
    std::int64_t last_moe_layer = INT64_MAX;  // ERNIE-4.5 moe_layer_end_index (inclusive)
    char const* last_moe_key = nullptr;
    // The experts' forms beyond plain SwiGLU (expert/swiglu_config.hpp), routed and shared alike.
    expert::GluActivation activation{};     // gpt_oss, deepseek_v4
    bool weight_on_input = false;           // llama4 (routed experts only)
    bool expert_biases = false;             // gpt_oss: experts.gate_up_proj_bias [E, 2f], down_proj_bias [E, d]
    bool router_bias = false;               // gpt_oss: the router linear's bias [E], in selection and weights
    bool output_bias = false;               // jetmoe: one bias [d] added to the block's output
    float shared_scale = 1.0f;              // cohere2_moe `average`: 0.5 (routed_scaling_factor 0.5 too)
    std::vector<std::int64_t> hash_layers;  // deepseek_v4: layers routed by token id (router::Hash on gate.tid2eid)
    std::optional<float> sparsemixer;       // phimoe: router::SparseMixer's ε (router_jitter_noise); router is then {E, 2}
    std::vector<std::string> defaulted;     // "key = value" taken from the family's defaults
    HfConfigKeys keys;                      // where the dimensions above came from
    std::optional<QuantConfig> quant;       // quantization_config, when the checkpoint is quantised

    std::int64_t num_experts() const { return router.num_experts; }
    std::int64_t top_k() const { return router.top_k; }

    bool is_moe_layer(std::int64_t layer) const {
        if (layer < 0 || layer >= num_hidden_layers) return false;
        if (!moe_layer_types.empty()) return moe_layer_types[static_cast<std::size_t>(layer)] != 0;
        for (auto l : dense_layers)
            if (l == layer) return false;
        if (layer < first_moe_layer || layer > last_moe_layer) return false;
        if (sparse_step_counts_from_one) return (layer + 1) % moe_layer_freq == 0;
        return layer % moe_layer_freq == moe_layer_offset;
    }
    // is_moe_layer's rule in the file's keys and values, for an error about a dense layer.
    std::string moe_layer_rule() const {
        std::string s = "0 <= layer < num_hidden_layers (" + std::to_string(num_hidden_layers) + ")";
        if (!moe_layer_types.empty()) return s + ", " + layer_types_rule;
        if (first_moe_key) s += ", layer >= " + std::string(first_moe_key) + " (" + std::to_string(first_moe_layer) + ")";
        if (last_moe_key) s += ", layer <= " + std::string(last_moe_key) + " (" + std::to_string(last_moe_layer) + ")";
        if (sparse_step_counts_from_one)
            s += ", (layer + 1) % " + std::string(layer_freq_key) + " (" + std::to_string(moe_layer_freq) + ") == 0";
        else if (layer_freq_key)
            s += ", layer % " + std::string(layer_freq_key) + " (" + std::to_string(moe_layer_freq) + ") == " +
                 (layer_offset_key ? std::string(layer_offset_key) + " (" + std::to_string(moe_layer_offset) + ")" : "0");
        if (!dense_layers.empty()) s += ", layer not in " + std::string(dense_key);
        return s;
    }
};

namespace detail {

// Reads keys of one JSON object with their family defaults; `file` names the source in errors.
class ConfigReader {
public:
    ConfigReader(nlohmann::json const& j, std::string file, std::vector<std::string>& defaulted)
        : j_(j), file_(std::move(file)), defaulted_(defaulted) {}

    bool has(char const* key) const { return j_.contains(key) && !j_[key].is_null(); }

    std::int64_t integer(char const* key, std::optional<std::int64_t> def, std::int64_t min = 1,
                         std::int64_t max = INT64_MAX, char const* limit_name = nullptr) const {
        if (!has(key)) return defaulted(key, def, "an integer");
        auto const& v = j_[key];
        if (!v.is_number_integer() || (v.is_number_unsigned() && v.get<std::uint64_t>() > INT64_MAX))
            file_fail(file_, "key '" + std::string(key) + "'", v.dump(), "an integer");
        auto const x = v.get<std::int64_t>();
        if (x < min) file_fail(file_, "key '" + std::string(key) + "'", x, "an integer >= " + std::to_string(min));
        if (x > max)
            file_fail(file_, "key '" + std::string(key) + "'", x,
                      "an integer <= " + std::to_string(max) + (limit_name ? " (" + std::string(limit_name) + ")" : ""));
        return x;
    }
    // A size (hidden_size, an intermediate size, a LoRA rank): 1 <= x <= limits::kMaxDimension.
    std::int64_t dimension(char const* key, std::optional<std::int64_t> def, std::int64_t min = 1) const {
        return integer(key, def, min, limits::kMaxDimension, "smoe::limits::kMaxDimension");
    }
    // A number of experts: min <= x <= limits::kMaxExperts.
    std::int64_t expert_count(char const* key, std::optional<std::int64_t> def, std::int64_t min = 1) const {
        return integer(key, def, min, limits::kMaxExperts, "smoe::limits::kMaxExperts");
    }
    double number(char const* key, std::optional<double> def) const {
        if (!has(key)) return defaulted(key, def, "a number");
        auto const& v = j_[key];
        if (!v.is_number()) file_fail(file_, "key '" + std::string(key) + "'", v.dump(), "a number");
        auto const x = v.get<double>();
        if (!std::isfinite(x)) file_fail(file_, "key '" + std::string(key) + "'", x, "a finite number");
        return x;
    }
    // A number the library holds as float: beyond float's range the conversion would be undefined.
    float number_f32(char const* key, std::optional<double> def) const {
        double const x = number(key, def);
        if (std::fabs(x) > std::numeric_limits<float>::max())
            file_fail(file_, "key '" + std::string(key) + "'", x, "a number within float's range");
        return static_cast<float>(x);
    }
    bool boolean(char const* key, bool def) const {
        if (!has(key)) return defaulted(key, std::optional<bool>(def), "true or false");
        auto const& v = j_[key];
        if (!v.is_boolean()) file_fail(file_, "key '" + std::string(key) + "'", v.dump(), "true or false");
        return v.get<bool>();
    }
    std::string string(char const* key, std::optional<std::string> def) const {
        if (!has(key)) return defaulted(key, def, "a string");
        auto const& v = j_[key];
        if (!v.is_string()) file_fail(file_, "key '" + std::string(key) + "'", v.dump(), "a string");
        return v.get<std::string>();
    }
    std::vector<std::int64_t> integers(char const* key) const {
        std::vector<std::int64_t> out;
        if (!has(key)) return out;
        auto const& v = j_[key];
        if (!v.is_array()) file_fail(file_, "key '" + std::string(key) + "'", v.dump(), "a list of integers");
        for (auto const& e : v) {
            if (!e.is_number_integer()) file_fail(file_, "key '" + std::string(key) + "'", v.dump(), "a list of integers");
            out.push_back(e.get<std::int64_t>());
        }
        return out;
    }
    std::vector<std::string> strings(char const* key) const {
        std::vector<std::string> out;
        if (!has(key)) return out;
        auto const& v = j_[key];
        if (!v.is_array()) file_fail(file_, "key '" + std::string(key) + "'", v.dump(), "a list of strings");
        for (auto const& e : v) {
            if (!e.is_string()) file_fail(file_, "key '" + std::string(key) + "'", v.dump(), "a list of strings");
            out.push_back(e.get<std::string>());
        }
        return out;
    }
    // The first of several synonymous keys that is present (e.g. num_local_experts / n_routed_experts).
    char const* first_of(std::initializer_list<char const*> keys) const {
        for (auto k : keys)
            if (has(k)) return k;
        return *keys.begin();
    }
    // Synonymous keys (num_experts / num_local_experts): the first present; two present must agree.
    char const* alias(std::initializer_list<char const*> keys) const {
        char const* found = nullptr;
        for (auto k : keys) {
            if (!has(k)) continue;
            if (!found)
                found = k;
            else if (j_[k] != j_[found])
                file_fail(file_, "key '" + std::string(k) + "'", j_[k].dump(),
                          "the value of its synonym '" + std::string(found) + "' (" + j_[found].dump() + ")");
        }
        return found ? found : *keys.begin();
    }
    std::string const& file() const { return file_; }

private:
    template <class T>
    T defaulted(char const* key, std::optional<T> const& def, char const* what) const {
        if (!def) file_fail(file_, "key '" + std::string(key) + "'", "missing", std::string(what) + " (the family has no default)");
        std::ostringstream s;
        s << key << " = " << std::boolalpha << *def;
        defaulted_.push_back(s.str());
        return *def;
    }

    nlohmann::json const& j_;
    std::string file_;
    std::vector<std::string>& defaulted_;
};

// The R-V3 families' defaults (transformers 5.23 configuration classes; families.md §2.7). A family
// without a default for a key (dots1's counts) requires it from the file.
struct SigmoidBiasFamily {
    HfFamily family;
    std::int64_t d, f, layers;
    std::optional<std::int64_t> experts, top_k, shared;
    char const* shared_key;
    std::int64_t n_group, topk_group;
    double scale;
    bool norm;
    std::int64_t first_dense;  // dense layers before the first MoE one: first_k_dense_replace's default, or the
                               // default mlp_layer_types' (glm4_moe_lite, mimo_v2_flash: no such key)
    bool first_key;            // the family reads first_k_dense_replace
    bool layer_types;          // the family reads mlp_layer_types (it then decides alone)
    bool bailing_keys = false; // BailingHybridConfig's spellings first (num_experts_per_token, ...), Kimi-Linear's too
};

inline std::optional<SigmoidBiasFamily> sigmoid_bias_family(std::string const& type) {
    using F = HfFamily;
    using I = std::optional<std::int64_t>;
    if (type == "deepseek_v32") return SigmoidBiasFamily{F::deepseek_v32, 7168, 2048, 61, 256, 8, 1, "n_shared_experts", 8, 4, 2.5, true, 3, true, true};
    if (type == "glm4_moe") return SigmoidBiasFamily{F::glm4_moe, 4096, 1408, 46, 128, 8, 1, "n_shared_experts", 1, 1, 1.0, true, 1, true, false};
    if (type == "glm4v_moe" || type == "glm4v_moe_text")
        return SigmoidBiasFamily{F::glm4v_moe, 4096, 1408, 46, 128, 8, 1, "n_shared_experts", 1, 1, 1.0, true, 1, true, false};
    if (type == "glm4_moe_lite") return SigmoidBiasFamily{F::glm4_moe_lite, 2048, 1536, 47, 64, 4, 1, "n_shared_experts", 1, 1, 1.8, true, 1, false, true};
    if (type == "glm_moe_dsa") return SigmoidBiasFamily{F::glm_moe_dsa, 6144, 2048, 78, 256, 8, 1, "n_shared_experts", 1, 1, 2.5, true, 3, true, true};
    if (type == "dots1") return SigmoidBiasFamily{F::dots1, 4608, 1408, 62, I{}, I{}, I{}, "n_shared_experts", 1, 1, 1.0, false, 0, true, false};
    if (type == "exaone_moe") return SigmoidBiasFamily{F::exaone_moe, 4096, 1024, 32, 64, 8, 1, "num_shared_experts", 1, 1, 2.5, true, 1, true, true};
    if (type == "bailing_hybrid")
        return SigmoidBiasFamily{F::bailing_hybrid, 2560, 768, 42, 512, 8, 1, "num_shared_experts", 8, 4, 2.5, true, 2, true, true, true};
    if (type == "kimi_linear")
        return SigmoidBiasFamily{F::kimi_linear, 2304, 1024, 27, 256, 8, 1, "num_shared_experts", 1, 1, 2.446, true, 1, true, true, true};
    if (type == "solar_open") return SigmoidBiasFamily{F::solar_open, 4096, 1280, 48, 128, 8, 1, "n_shared_experts", 1, 1, 1.0, true, 0, false, false};
    // Beam: R-V3 without shared experts (r multiplies the summed output: the same sum, weighted); three dense layers.
    if (type == "beam") return SigmoidBiasFamily{F::beam, 5120, 2560, 52, 256, 8, 0, nullptr, 8, 4, 2.5, true, 3, false, true};
    // MiMo-V2-Flash: DeepSeek-V3's block without shared experts.
    if (type == "mimo_v2_flash") return SigmoidBiasFamily{F::mimo_v2_flash, 4096, 2048, 48, 256, 8, 0, nullptr, 1, 1, 1.0, true, 1, false, true};
    return std::nullopt;
}

// The Qwen-MoE families' defaults (Qwen2MoeConfig, Qwen3MoeConfig, Qwen3NextConfig, Qwen3_5MoeTextConfig,
// and MellumConfig, whose block is Qwen3-MoE's).
struct QwenFamily {
    HfFamily family;
    std::int64_t d, f, layers, experts, top_k;
    std::optional<bool> norm;  // norm_topk_prob's default; none: no key, always renormalised
    std::int64_t shared;       // the sigmoid-gated shared expert's width; 0: none
    bool sparse_step;          // decoder_sparse_step and mlp_only_layers
    bool layer_types = false;  // mlp_layer_types (default: every layer sparse)
    bool sigmoid = false;      // Flint: sigmoid scores, the shared expert ungated
};

inline std::optional<QwenFamily> qwen_family(std::string const& type) {
    using F = HfFamily;
    if (type == "qwen2_moe") return QwenFamily{F::qwen2_moe, 2048, 1408, 24, 60, 4, false, 5632, true};
    if (type == "qwen3_moe") return QwenFamily{F::qwen3_moe, 2048, 768, 24, 128, 8, false, 0, true};
    if (type == "qwen3_next") return QwenFamily{F::qwen3_next, 2048, 512, 48, 512, 10, true, 512, true};
    if (type == "qwen3_5_moe" || type == "qwen3_5_moe_text") return QwenFamily{F::qwen3_5_moe, 2048, 512, 40, 256, 8, std::nullopt, 512, false};
    if (type == "mellum") return QwenFamily{F::mellum, 2304, 896, 28, 64, 8, true, 0, false, true};
    if (type == "flint") return QwenFamily{F::flint, 2048, 512, 49, 256, 6, true, 1024, true, false, true};
    // Qwen4-Exp: Qwen3-Next's block in every layer (its hyper-connections are outside the block).
    if (type == "qwen4_exp" || type == "qwen4_exp_text") return QwenFamily{F::qwen4_exp, 2048, 512, 40, 512, 10, true, 512, false};
    // Qwen3-VL-MoE's router always renormalises; its files store the fused experts transposed.
    if (type == "qwen3_vl_moe" || type == "qwen3_vl_moe_text")
        return QwenFamily{F::qwen3_vl_moe, 2048, 1408, 24, 60, 4, std::nullopt, 0, true};
    return std::nullopt;
}

// mlp_layer_types: one "dense" or "sparse" per decoder layer.
inline std::vector<std::uint8_t> mlp_layer_types(ConfigReader const& r, std::int64_t num_layers) {
    auto const t = r.strings("mlp_layer_types");
    if (static_cast<std::int64_t>(t.size()) != num_layers)
        file_fail(r.file(), "key 'mlp_layer_types'", std::to_string(t.size()) + " entries",
                  "one entry per layer: num_hidden_layers (" + std::to_string(num_layers) + ")");
    std::vector<std::uint8_t> out;
    for (auto const& s : t) {
        if (s != "dense" && s != "sparse") file_fail(r.file(), "key 'mlp_layer_types'", "\"" + s + "\"", "\"dense\" or \"sparse\"");
        out.push_back(s == "sparse");
    }
    return out;
}

}  // namespace detail

// Family defaults are those of transformers' configuration classes (MixtralConfig, OlmoeConfig,
// MiniMaxConfig, MiniMaxM2Config, FlexOlmoConfig, JambaConfig, HunYuanMoEV1Config, GraniteMoe{,Shared,Hybrid,SWA}Config,
// Ernie4_5_MoeConfig, AfmoeConfig, HYV3Config, Lfm2MoeConfig, qwen_family's, DeepseekV2Config, DeepseekV3Config and
// sigmoid_bias_family's);
// routing semantics follow routing.md §2 and families.md §2. `dynamic_order`: quantization_config.dynamic's keys
// in file order (read_hf_config finds them).
inline HfMoeConfig parse_hf_config(nlohmann::json const& j, std::string const& file, std::vector<std::string> const& dynamic_order = {}) {
    if (!j.is_object()) io::detail::file_fail(file, "top level", j.type_name(), "a JSON object (a Hugging Face config)");
    // A multimodal wrapper (Qwen3.5-MoE, Llama 4) keeps the decoder's keys in text_config; its model_type
    // and quantization_config may stay at the top level.
    if (j.contains("text_config") && !j["text_config"].is_null()) {
        auto const& t = j["text_config"];
        if (!t.is_object()) io::detail::file_fail(file, "key 'text_config'", t.dump(), "a JSON object (the decoder's config)");
        nlohmann::json text = t;
        for (char const* k : {"model_type", "quantization_config"})
            if (!text.contains(k) && j.contains(k)) text[k] = j[k];
        return parse_hf_config(text, file + " text_config", dynamic_order);
    }
    HfMoeConfig c;
    c.keys.file = file;
    HfConfigKeys& keys = c.keys;
    detail::ConfigReader r(j, file, c.defaulted);
    auto layers = [&](std::optional<std::int64_t> def) {
        return r.integer("num_hidden_layers", def, 1, limits::kMaxLayers, "smoe::limits::kMaxLayers");
    };
    std::string const type = r.string("model_type", std::nullopt);
    router::TopKConfig& rc = c.router;
    // Nemotron-H names its experts' activation mlp_hidden_act (below); its hidden_act, if any, is not the experts'.
    std::string const act = type == "nemotron_h" ? std::string("silu") : r.string("hidden_act", std::string("silu"));
    if (act != "silu")
        io::detail::file_fail(file, "key 'hidden_act'", act, "\"silu\" (smoe's SwiGLU experts; other activations are not loaded)");

    // The block's extents under Mixtral's key names, which several families share, with their defaults.
    auto mixtral_keys = [&](std::int64_t d, std::int64_t f, std::int64_t L, std::int64_t E, std::int64_t k) {
        c.hidden_size = r.dimension("hidden_size", d);
        c.intermediate_size = r.dimension("intermediate_size", f);
        c.num_hidden_layers = layers(L);
        rc.num_experts = r.expert_count("num_local_experts", E);
        rc.top_k = r.integer("num_experts_per_tok", k);
    };

    if (type == "mixtral") {
        c.family = HfFamily::mixtral;
        mixtral_keys(4096, 14336, 32, 8, 2);
        rc.norm_topk_prob = true;  // Mixtral always renormalises (routing.md §2)
    } else if (type == "minimax" || type == "minimax_m2") {
        // Mixtral's block and names; MiniMax-M2 scores with R-SB (families.md §0): sigmoid, a selection-only
        // bias, no groups, renormalised without epsilon, r = 1. (MiniMax's mlp_alpha/beta_factor weigh the
        // residual, outside the block.)
        bool const m2 = type == "minimax_m2";
        c.family = m2 ? HfFamily::minimax_m2 : HfFamily::minimax;
        c.hidden_size = r.dimension("hidden_size", m2 ? 3072 : 4096);
        c.intermediate_size = r.dimension("intermediate_size", m2 ? 1536 : 14336);
        c.num_hidden_layers = layers(m2 ? 62 : 32);
        keys.num_experts = r.alias({"num_local_experts", "num_experts"});
        rc.num_experts = r.expert_count(keys.num_experts, m2 ? 256 : 8);
        rc.top_k = r.integer("num_experts_per_tok", m2 ? 8 : 2);
        rc.norm_topk_prob = true;
        if (m2) {
            rc.score_func = router::ScoreFunc::sigmoid;
            rc.requires_expert_bias = true;
            rc.norm_eps = 0.0f;
        }
    } else if (type == "olmoe" || type == "flex_olmo") {
        bool const flex = type == "flex_olmo";
        c.family = flex ? HfFamily::flex_olmo : HfFamily::olmoe;
        c.hidden_size = r.dimension("hidden_size", flex ? 4096 : 2048);
        c.intermediate_size = r.dimension("intermediate_size", flex ? 11008 : 2048);
        c.num_hidden_layers = layers(flex ? 32 : 16);
        keys.num_experts = flex ? r.alias({"num_experts", "num_local_experts"}) : "num_experts";
        rc.num_experts = r.expert_count(keys.num_experts, flex ? 7 : 64);
        rc.top_k = r.integer("num_experts_per_tok", flex ? 5 : 8);
        rc.norm_topk_prob = r.boolean("norm_topk_prob", false);
    } else if (type == "jamba" || type == "hunyuan_v1_moe") {
        // Softmax top-k: Jamba keeps the selected probabilities (R-SM), HunYuan renormalises (R-SMN) and adds
        // an ungated shared_mlp as wide as a routed expert.
        bool const hy = type == "hunyuan_v1_moe";
        c.family = hy ? HfFamily::hunyuan_v1_moe : HfFamily::jamba;
        c.hidden_size = r.dimension("hidden_size", 4096);
        c.intermediate_size = r.dimension("intermediate_size", hy ? 11008 : 14336);
        c.num_hidden_layers = layers(32);
        keys.num_experts = r.alias({"num_experts", "num_local_experts"});
        rc.num_experts = r.expert_count(keys.num_experts, hy ? 1 : 16);
        // HunYuan's moe_topk may be a list, one per layer; smoe reads one k for the file.
        rc.top_k = r.integer(keys.top_k = hy ? r.alias({"moe_topk", "num_experts_per_tok"}) : "num_experts_per_tok", hy ? 1 : 2);
        rc.norm_topk_prob = hy;
        if (hy) {
            c.shared_intermediate_size = c.intermediate_size;
            keys.shared_size = "intermediate_size";
        } else {
            if (rc.num_experts < 2)  // JambaConfig.layers_num_experts: one expert makes every layer a dense MLP
                io::detail::file_fail(file, "key '" + std::string(keys.num_experts) + "'", rc.num_experts,
                                      "at least 2 (with one expert every Jamba layer is dense)");
            c.moe_layer_freq = r.integer(c.layer_freq_key = "expert_layer_period", 2);
            c.moe_layer_offset = r.integer(c.layer_offset_key = "expert_layer_offset", 1, 0);
            if (c.moe_layer_offset >= c.moe_layer_freq)
                io::detail::file_fail(file, "key 'expert_layer_offset'", c.moe_layer_offset,
                                      "less than expert_layer_period (" + std::to_string(c.moe_layer_freq) + "), else no layer is MoE");
        }
    } else if (type == "granitemoe" || type == "granitemoeshared" || type == "granitemoehybrid" || type == "granitemoe_swa") {
        // R-TKS (families.md §0): top-k of the logits, softmax over those k. residual_multiplier scales
        // the block's output at the residual add, outside the block. The shared and hybrid variants add the
        // layer's ungated shared_mlp (width shared_intermediate_size; 0: none) to the block's output.
        bool const hybrid = type == "granitemoehybrid";
        c.family = type == "granitemoe"       ? HfFamily::granitemoe
                   : type == "granitemoe_swa" ? HfFamily::granitemoe_swa
                   : hybrid                   ? HfFamily::granitemoehybrid
                                              : HfFamily::granitemoeshared;
        if (c.family != HfFamily::granitemoe)
            c.shared_intermediate_size = r.dimension(keys.shared_size = "shared_intermediate_size", hybrid ? 1024 : 0, 0);
        mixtral_keys(4096, 11008, 32, 8, 2);
        rc.score_after_topk = true;
    } else if (type == "ernie4_5_moe") {
        // Softmax scores, selection by s + b (moe_statics), w = s_S / max(sum, moe_norm_min): the sum of
        // the k largest of E probabilities is at least k / E, so a floor below that never binds and the
        // weights are s_S / sum (norm_eps 0).
        c.family = HfFamily::ernie4_5_moe;
        c.hidden_size = r.dimension("hidden_size", 2560);
        c.intermediate_size = r.dimension(keys.intermediate_size = "moe_intermediate_size", 1536);
        c.num_hidden_layers = layers(28);
        keys.num_experts = r.alias({"moe_num_experts", "num_experts"});
        rc.num_experts = r.expert_count(keys.num_experts, 64);
        rc.top_k = r.integer(keys.top_k = r.alias({"moe_k", "num_experts_per_tok"}), 6);
        rc.norm_topk_prob = true;
        rc.norm_eps = 0.0f;
        rc.requires_expert_bias = true;
        keys.shared_size = "moe_num_shared_experts";
        keys.shared_in_routed_units = true;
        c.shared_intermediate_size = c.intermediate_size * r.expert_count("moe_num_shared_experts", 2, 0);
        if (r.boolean("use_bias", false))
            io::detail::file_fail(file, "key 'use_bias'", true, "false (smoe's shared experts have no biases)");
        double const floor = r.number("moe_norm_min", 1e-12);
        if (floor < 0 || floor * static_cast<double>(rc.num_experts) > static_cast<double>(rc.top_k))
            io::detail::file_fail(file, "key 'moe_norm_min'", floor,
                                  "0 <= moe_norm_min <= num_experts_per_tok / num_experts (a floor that could bind is not loaded)");
        c.first_moe_layer = r.integer(c.first_moe_key = "moe_layer_start_index", 1, 0);
        std::int64_t const end = r.integer("moe_layer_end_index", -1, -1);
        c.last_moe_layer = end == -1 ? c.num_hidden_layers - 1 : end;
        c.last_moe_key = "moe_layer_end_index";
        c.moe_layer_freq = r.integer(c.layer_freq_key = "moe_layer_interval", 1);
        c.sparse_step_counts_from_one = true;
    } else if (type == "afmoe" || type == "lfm2_moe" || type == "hy_v3") {
        // R-SB (families.md §0): sigmoid, selection-only bias, no groups, renorm, r. AFMoE and HY-V3: ε 1e-20,
        // r = route_scale / router_scaling_factor, num_shared_experts ungated; LFM2-MoE: ε 1e-6, the bias
        // optional (use_expert_bias).
        bool const af = type == "afmoe", hy = type == "hy_v3";
        c.family = af ? HfFamily::afmoe : hy ? HfFamily::hy_v3 : HfFamily::lfm2_moe;
        c.hidden_size = r.dimension("hidden_size", hy ? 4096 : 2048);
        c.intermediate_size = r.dimension(keys.intermediate_size = "moe_intermediate_size", af ? 1408 : hy ? 1536 : 1792);
        c.num_hidden_layers = layers(hy ? 80 : 32);
        keys.num_experts = hy ? r.alias({"num_experts", "num_local_experts"}) : "num_experts";
        rc.num_experts = r.expert_count(keys.num_experts, af ? 64 : hy ? 192 : 32);
        rc.top_k = r.integer("num_experts_per_tok", af ? 6 : hy ? 8 : 4);
        rc.score_func = router::ScoreFunc::sigmoid;
        if (af || hy) {
            rc.norm_topk_prob = true;
            rc.routed_scaling_factor = hy ? r.number_f32("router_scaling_factor", 2.826) : r.number_f32("route_scale", 1.0);
            rc.requires_expert_bias = true;
            keys.shared_size = "num_shared_experts";
            keys.shared_in_routed_units = true;
            c.shared_intermediate_size = c.intermediate_size * r.expert_count("num_shared_experts", af ? 2 : 1, 0);
        } else {
            rc.norm_topk_prob = r.boolean("norm_topk_prob", true);
            rc.norm_eps = 1e-6f;
            rc.routed_scaling_factor = r.number_f32("routed_scaling_factor", 1.0);
            rc.requires_expert_bias = r.boolean("use_expert_bias", true);
        }
        if (!hy) {
            c.first_moe_layer = r.integer(c.first_moe_key = "num_dense_layers", af ? 1 : 2, 0);
        } else if (r.has("mlp_layer_types")) {
            c.moe_layer_types = detail::mlp_layer_types(r, c.num_hidden_layers);
        } else {  // HYV3Config: one dense layer, then sparse
            c.defaulted.push_back("mlp_layer_types = [1 x \"dense\", \"sparse\", ...]");
            c.moe_layer_types.assign(static_cast<std::size_t>(c.num_hidden_layers), 1);
            c.moe_layer_types[0] = 0;
        }
    } else if (auto const q = detail::qwen_family(type)) {
        c.family = q->family;
        c.hidden_size = r.dimension("hidden_size", q->d);
        c.intermediate_size = r.dimension(keys.intermediate_size = "moe_intermediate_size", q->f);
        c.num_hidden_layers = layers(q->layers);
        // Qwen3-MoE files say num_experts; transformers 5.23 re-saves it as num_local_experts.
        keys.num_experts = r.alias({"num_experts", "num_local_experts"});
        rc.num_experts = r.expert_count(keys.num_experts, q->experts);
        rc.top_k = r.integer("num_experts_per_tok", q->top_k);
        rc.norm_topk_prob = q->norm ? r.boolean("norm_topk_prob", *q->norm) : true;  // Qwen3.5 always renormalises
        if (q->sigmoid) {
            rc.score_func = router::ScoreFunc::sigmoid;
            rc.norm_eps = 0.0f;  // the selected sigmoids divided by their sum
        }
        if (q->shared) {
            c.shared_intermediate_size = r.dimension("shared_expert_intermediate_size", q->shared, 0);
            c.shared_gated = !q->sigmoid;
        }
        if (q->sparse_step) {
            c.moe_layer_freq = r.integer(c.layer_freq_key = "decoder_sparse_step", 1);
            c.sparse_step_counts_from_one = true;
            c.dense_layers = r.integers("mlp_only_layers");
            if (q->family == HfFamily::flint && !r.has("mlp_only_layers")) {  // FlintConfig's default
                c.dense_layers = {0, 1};
                c.defaulted.push_back("mlp_only_layers = [0, 1]");
            }
        }
        if (q->layer_types && r.has("mlp_layer_types")) c.moe_layer_types = detail::mlp_layer_types(r, c.num_hidden_layers);
    } else if (type == "deepseek_v2" || type == "deepseek_v3") {
        bool const v3 = type == "deepseek_v3";
        c.family = v3 ? HfFamily::deepseek_v3 : HfFamily::deepseek_v2;
        c.hidden_size = r.dimension("hidden_size", v3 ? 7168 : 4096);
        c.intermediate_size = r.dimension(keys.intermediate_size = "moe_intermediate_size", v3 ? 2048 : 1407);
        c.num_hidden_layers = layers(v3 ? 61 : 30);
        keys.num_experts = r.first_of({"n_routed_experts", "num_local_experts", "num_experts"});
        rc.num_experts = r.expert_count(keys.num_experts, v3 ? 256 : 64);
        rc.top_k = r.integer("num_experts_per_tok", v3 ? std::optional<std::int64_t>(8) : std::nullopt);
        keys.shared_size = "n_shared_experts";
        keys.shared_in_routed_units = true;
        c.shared_intermediate_size = c.intermediate_size * r.expert_count("n_shared_experts", v3 ? 1 : 2, 0);
        c.first_moe_layer = r.integer(c.first_moe_key = "first_k_dense_replace", v3 ? 3 : 0, 0);
        c.moe_layer_freq = r.integer(c.layer_freq_key = "moe_layer_freq", 1);
        rc.routed_scaling_factor = r.number_f32("routed_scaling_factor", v3 ? 2.5 : 1.0);
        if (v3) {
            std::string const scoring = r.string("scoring_func", std::string("sigmoid"));
            if (scoring != "sigmoid") io::detail::file_fail(file, "key 'scoring_func'", scoring, "\"sigmoid\" for deepseek_v3");
            std::string const method = r.string("topk_method", std::string("noaux_tc"));
            if (method != "noaux_tc") io::detail::file_fail(file, "key 'topk_method'", method, "\"noaux_tc\" for deepseek_v3");
            rc.score_func = router::ScoreFunc::sigmoid;
            rc.norm_topk_prob = r.boolean("norm_topk_prob", true);
            rc.n_group = r.integer("n_group", 8);
            rc.topk_group = r.integer("topk_group", 4);
            rc.requires_expert_bias = true;
        } else {
            std::string const scoring = r.string("scoring_func", std::string("softmax"));
            if (scoring != "softmax") io::detail::file_fail(file, "key 'scoring_func'", scoring, "\"softmax\" for deepseek_v2");
            // routing.md §2: the HF port ignores norm_topk_prob for V2 (every published config has false).
            std::string const method = r.string("topk_method", std::string("greedy"));
            if (method == "group_limited_greedy") {
                rc.n_group = r.integer("n_group", std::nullopt);
                rc.topk_group = r.integer("topk_group", std::nullopt);
            } else if (method != "greedy") {
                io::detail::file_fail(file, "key 'topk_method'", method, "\"greedy\" or \"group_limited_greedy\" for deepseek_v2");
            }
        }
    } else if (auto const v = detail::sigmoid_bias_family(type)) {
        // R-V3 (families.md §0): sigmoid scores, selection-only score-correction bias, groups, renorm(1e-20), r.
        c.family = v->family;
        c.hidden_size = r.dimension("hidden_size", v->d);
        c.intermediate_size = r.dimension(keys.intermediate_size = "moe_intermediate_size", v->f);
        c.num_hidden_layers = layers(v->layers);
        // Bailing writes the names its attribute_map gives; the others', then, are synonyms.
        bool const b = v->bailing_keys;
        keys.num_experts = b ? r.alias({"num_experts", "num_local_experts"}) : r.alias({"n_routed_experts", "num_local_experts", "num_experts"});
        rc.num_experts = r.expert_count(keys.num_experts, v->experts);
        rc.top_k = r.integer(keys.top_k = b ? r.alias({"num_experts_per_token", "num_experts_per_tok"}) : "num_experts_per_tok", v->top_k);
        keys.shared_size = b ? r.alias({"num_shared_experts", "n_shared_experts"}) : v->shared_key;
        keys.shared_in_routed_units = true;
        if (keys.shared_size) c.shared_intermediate_size = c.intermediate_size * r.expert_count(keys.shared_size, v->shared, 0);
        rc.score_func = router::ScoreFunc::sigmoid;
        rc.requires_expert_bias = true;
        rc.n_group = r.integer(b ? r.alias({"num_expert_group", "n_group"}) : "n_group", v->n_group);
        rc.topk_group = r.integer("topk_group", v->topk_group);
        rc.norm_topk_prob = r.boolean(b ? r.alias({"moe_renormalize", "norm_topk_prob"}) : "norm_topk_prob", v->norm);
        rc.routed_scaling_factor = r.number_f32("routed_scaling_factor", v->scale);
        if (v->layer_types && r.has("mlp_layer_types")) {
            c.moe_layer_types = detail::mlp_layer_types(r, c.num_hidden_layers);
        } else if (v->first_key) {
            c.first_moe_layer = r.integer(c.first_moe_key = "first_k_dense_replace", v->first_dense, 0);
        } else if (v->first_dense > 0) {
            // No first_k_dense_replace (Glm4MoeLiteConfig, MiMoV2FlashConfig): the default list is dense layers, then sparse.
            c.defaulted.push_back("mlp_layer_types = [" + std::to_string(v->first_dense) + " x \"dense\", \"sparse\", ...]");
            c.moe_layer_types.assign(static_cast<std::size_t>(c.num_hidden_layers), 1);
            for (std::int64_t l = 0; l < std::min(v->first_dense, c.num_hidden_layers); ++l) c.moe_layer_types[static_cast<std::size_t>(l)] = 0;
        }
    } else if (type == "gpt_oss") {
        // families.md §2.1: logits = W_r x + b_r, top-k of the logits, softmax over those k (R-TKS); experts
        // (u + 1) · g' σ(α g') with g' = min(g, λ), u clamped to ±λ, biases on both projections.
        c.family = HfFamily::gpt_oss;
        mixtral_keys(2880, 2880, 36, 128, 4);
        rc.score_after_topk = true;
        // GptOssExperts: alpha 1.702 (fixed in HF; some exports write swiglu_alpha), limit swiglu_limit.
        c.activation = expert::GluActivation::gpt_oss(r.number_f32("swiglu_alpha", 1.702), r.number_f32("swiglu_limit", 7.0));
        c.expert_biases = true;
        c.router_bias = true;
    } else if (type == "deepseek_v4") {
        // families.md §2.2: s = sqrt(softplus(L)), c = s + b, top-k (no groups), w = s_S / (sum + 1e-20) · r
        // (norm_topk_prob is not read); experts and the shared expert silu(min(g, λ)) · clamp(u, ±λ).
        c.family = HfFamily::deepseek_v4;
        c.hidden_size = r.dimension("hidden_size", 4096);
        c.intermediate_size = r.dimension(keys.intermediate_size = r.alias({"moe_intermediate_size", "intermediate_size"}), 2048);
        c.num_hidden_layers = layers(43);
        if (r.boolean("mlp_bias", false)) io::detail::file_fail(file, "key 'mlp_bias'", true, "false (smoe's shared experts have no biases)");
        keys.num_experts = r.alias({"n_routed_experts", "num_local_experts"});
        rc.num_experts = r.expert_count(keys.num_experts, 256);
        rc.top_k = r.integer("num_experts_per_tok", 6);
        std::string const scoring = r.string("scoring_func", std::string("sqrtsoftplus"));
        if (scoring != "sqrtsoftplus") io::detail::file_fail(file, "key 'scoring_func'", scoring, "\"sqrtsoftplus\" for deepseek_v4");
        rc.score_func = router::ScoreFunc::sqrtsoftplus;
        rc.norm_topk_prob = true;
        rc.routed_scaling_factor = r.number_f32("routed_scaling_factor", 1.5);
        rc.requires_expert_bias = true;
        c.activation = expert::GluActivation::limited(r.number_f32("swiglu_limit", 10.0));
        // One shared expert of the routed width (n_shared_experts is not read by HF's DeepSeek-V4).
        keys.shared_size = keys.intermediate_size;
        c.shared_intermediate_size = c.intermediate_size;
        // Every layer is MoE; mlp_layer_types says which route by token id ("hash_moe": router::Hash).
        std::vector<std::string> t = r.strings("mlp_layer_types");
        if (t.empty()) {
            std::int64_t const h = r.integer("num_hash_layers", 3, 0);
            for (std::int64_t l = 0; l < c.num_hidden_layers; ++l) t.push_back(l < h ? "hash_moe" : "moe");
        } else if (static_cast<std::int64_t>(t.size()) != c.num_hidden_layers) {
            io::detail::file_fail(file, "key 'mlp_layer_types'", std::to_string(t.size()) + " entries",
                      "one entry per layer: num_hidden_layers (" + std::to_string(c.num_hidden_layers) + ")");
        }
        for (std::size_t l = 0; l < t.size(); ++l) {
            if (t[l] != "moe" && t[l] != "hash_moe") io::detail::file_fail(file, "key 'mlp_layer_types'", "\"" + t[l] + "\"", "\"moe\" or \"hash_moe\"");
            if (t[l] == "hash_moe") c.hash_layers.push_back(static_cast<std::int64_t>(l));
        }
    } else if (type == "llama4" || type == "llama4_text") {
        // families.md §2.3: S = top-k(L), w = σ(L_S) without renorm (sigmoid is monotone: the top-k of the
        // scores), each expert applied to w · x; one ungated shared expert of the routed width.
        c.family = HfFamily::llama4;
        mixtral_keys(5120, 8192, 48, 16, 1);
        rc.score_func = router::ScoreFunc::sigmoid;
        c.weight_on_input = true;
        keys.shared_size = "intermediate_size";
        c.shared_intermediate_size = c.intermediate_size;
        // moe_layers lists the MoE layers; absent: every interleave_moe_layer_step-th (s - 1, 2s - 1, ...).
        c.moe_layer_types.assign(static_cast<std::size_t>(c.num_hidden_layers), 0);
        if (r.has("moe_layers")) {
            for (std::int64_t l : r.integers("moe_layers")) {
                if (l < 0 || l >= c.num_hidden_layers)
                    io::detail::file_fail(file, "key 'moe_layers'", l, "layer indices in [0, num_hidden_layers (" + std::to_string(c.num_hidden_layers) + "))");
                c.moe_layer_types[static_cast<std::size_t>(l)] = 1;
            }
            c.layer_types_rule = "layer in moe_layers";
        } else {
            std::int64_t const step = r.integer("interleave_moe_layer_step", 1);
            for (std::int64_t l = step - 1; l < c.num_hidden_layers; l += step) c.moe_layer_types[static_cast<std::size_t>(l)] = 1;
            c.layer_types_rule = "(layer + 1) % interleave_moe_layer_step (" + std::to_string(step) + ") == 0";
        }
    } else if (type == "cohere2_moe") {
        // Cohere2MoeConfig: top-k of the logits; softmax over those k (R-TKS), or sigmoid of them with
        // renorm(0) when norm_topk_prob. `average` halves routed and shared (with shared experts only).
        c.family = HfFamily::cohere2_moe;
        c.hidden_size = r.dimension("hidden_size", 8192);
        c.intermediate_size = r.dimension("intermediate_size", 22528);
        c.num_hidden_layers = layers(40);
        keys.num_experts = "num_experts";
        rc.num_experts = r.expert_count("num_experts", 8);
        rc.top_k = r.integer("num_experts_per_tok", 2);
        std::string const fn = r.string("expert_selection_fn", std::string("softmax"));
        if (fn == "softmax") {
            rc.score_after_topk = true;
        } else if (fn == "sigmoid") {
            rc.score_func = router::ScoreFunc::sigmoid;
            rc.norm_topk_prob = r.boolean("norm_topk_prob", true);
            rc.norm_eps = 0.0f;
        } else {
            io::detail::file_fail(file, "key 'expert_selection_fn'", fn, "\"softmax\" or \"sigmoid\"");
        }
        keys.shared_size = "num_shared_experts";
        keys.shared_in_routed_units = true;
        c.shared_intermediate_size = c.intermediate_size * r.expert_count("num_shared_experts", 0, 0);
        std::string const mix = r.string("shared_expert_combination_strategy", std::string("average"));
        if (mix != "average" && mix != "sum") io::detail::file_fail(file, "key 'shared_expert_combination_strategy'", mix, "\"average\" or \"sum\"");
        if (mix == "average" && c.shared_intermediate_size > 0) rc.routed_scaling_factor = 0.5f, c.shared_scale = 0.5f;
        if (r.has("mlp_layer_types")) {
            c.moe_layer_types = detail::mlp_layer_types(r, c.num_hidden_layers);
        } else {
            c.first_moe_layer = r.integer(c.first_moe_key = "first_k_dense_replace", 0, 0);
        }
    } else if (type == "jetmoe") {
        // JetMoE: R-TKS, fused input_linear (gate rows first) / output_linear, one bias [d] after the combine.
        c.family = HfFamily::jetmoe;
        mixtral_keys(2048, 5632, 12, 8, 2);
        rc.score_after_topk = true;
        c.output_bias = true;
        std::string const act = r.string("activation_function", std::string("silu"));
        if (act != "silu") io::detail::file_fail(file, "key 'activation_function'", act, "\"silu\" (smoe's experts are SwiGLU)");
    } else if (type == "dbrx") {
        // DBRX: the MoE keys in ffn_config; softmax top-k, w / ||w||_p with p = moe_normalize_expert_weights
        // (null: no normalisation).
        c.family = HfFamily::dbrx;
        c.hidden_size = r.dimension(keys.hidden_size = "d_model", 2048);
        c.num_hidden_layers = r.integer("n_layers", 24, 1, limits::kMaxLayers, "smoe::limits::kMaxLayers");
        nlohmann::json const none = nlohmann::json::object();
        auto const& ffn = j.contains("ffn_config") && !j["ffn_config"].is_null() ? j["ffn_config"] : none;
        if (!ffn.is_object()) io::detail::file_fail(file, "key 'ffn_config'", ffn.dump(), "a JSON object");
        detail::ConfigReader f(ffn, file + " ffn_config", c.defaulted);
        c.intermediate_size = f.dimension(keys.intermediate_size = "ffn_hidden_size", 3584);
        rc.num_experts = f.expert_count(keys.num_experts = "moe_num_experts", 4);
        rc.top_k = f.integer(keys.top_k = "moe_top_k", 1);
        if (ffn.contains("moe_normalize_expert_weights") && ffn["moe_normalize_expert_weights"].is_null()) {
            rc.norm_topk_prob = false;
        } else {
            rc.norm_topk_prob = true;
            rc.norm_p = f.number_f32("moe_normalize_expert_weights", 1.0);
            rc.norm_eps = 0.0f;
        }
        if (ffn.contains("ffn_act_fn") && ffn["ffn_act_fn"].is_object() && ffn["ffn_act_fn"].contains("name") &&
            ffn["ffn_act_fn"]["name"] != "silu")
            io::detail::file_fail(file + " ffn_config", "key 'ffn_act_fn.name'", ffn["ffn_act_fn"]["name"].dump(), "\"silu\" (smoe's experts are SwiGLU)");
    } else if (type == "phimoe") {
        // families.md §2.4: PhiMoE's sparsemixer picks exactly two experts (num_experts_per_tok is not read by
        // HF's router); HfMoeLayer routes with router::SparseMixer and runs the block on that routing.
        c.family = HfFamily::phimoe;
        mixtral_keys(4096, 6400, 32, 16, 2);
        if (rc.num_experts < 2) io::detail::file_fail(file, "key 'num_local_experts'", rc.num_experts, "at least 2 (sparsemixer picks two experts)");
        rc.top_k = 2;
        float const eps = r.number_f32("router_jitter_noise", 0.01);
        if (eps < 0.0f) io::detail::file_fail(file, "key 'router_jitter_noise'", eps, "a number >= 0");
        c.sparsemixer = eps;
    } else if (type == "longcat_flash") {
        // families.md §2.5: softmax over E + Z logits, selection by s + b (E + Z entries), top-k, w = s_S · r,
        // no renorm; the Z ids >= E are identity experts (w · x), never dispatched.
        c.family = HfFamily::longcat_flash;
        c.hidden_size = r.dimension("hidden_size", 6144);
        c.intermediate_size = r.dimension(keys.intermediate_size = "expert_ffn_hidden_size", 2048);
        c.num_hidden_layers = r.integer(r.alias({"num_layers", "num_hidden_layers"}), 28, 1, limits::kMaxLayers, "smoe::limits::kMaxLayers");
        rc.num_experts = r.expert_count(keys.num_experts = "n_routed_experts", 512);
        rc.num_null_experts = r.expert_count("zero_expert_num", 256, 0);
        rc.top_k = r.integer(keys.top_k = "moe_topk", 12);
        rc.routed_scaling_factor = r.number_f32("routed_scaling_factor", 6.0);
        rc.requires_expert_bias = true;
    } else if (type == "nemotron_h") {
        // NemotronHConfig (families.md §4): R-V3 (NemotronHTopkRouter: fp32 sigmoid, selection bias, top-2-sum
        // groups, renorm(1e-20), r); experts down(relu(up x)²); one shared relu² MLP of its own width. The
        // decoder's layers are layers_block_type (alias layer_types), else hybrid_override_pattern's letters
        // (M mamba, E moe, * attention, - mlp); num_hidden_layers is their count, as in HF.
        c.family = HfFamily::nemotron_h;
        c.hidden_size = r.dimension("hidden_size", 4096);
        c.intermediate_size = r.dimension(keys.intermediate_size = "moe_intermediate_size", 7688);
        keys.num_experts = r.alias({"n_routed_experts", "num_local_experts"});
        rc.num_experts = r.expert_count(keys.num_experts, 8);
        rc.top_k = r.integer("num_experts_per_tok", 2);
        rc.score_func = router::ScoreFunc::sigmoid;
        rc.requires_expert_bias = true;
        rc.n_group = r.integer("n_group", 1);
        rc.topk_group = r.integer("topk_group", 1);
        rc.norm_topk_prob = r.boolean("norm_topk_prob", true);
        rc.routed_scaling_factor = r.number_f32("routed_scaling_factor", 1.0);
        std::string const mact = r.string("mlp_hidden_act", std::string("relu2"));
        if (mact != "relu2") io::detail::file_fail(file, "key 'mlp_hidden_act'", mact, "\"relu2\" (smoe's non-gated experts are relu²)");
        if (r.boolean("mlp_bias", false)) io::detail::file_fail(file, "key 'mlp_bias'", true, "false (smoe's shared experts have no biases)");
        if (r.has("moe_latent_size"))
            io::detail::file_fail(file, "key 'moe_latent_size'", j["moe_latent_size"].dump(),
                                  "null (the latent projections fc1_latent_proj / fc2_latent_proj around the experts are not loaded)");
        c.activation = expert::GluActivation::relu_squared();
        c.shared_intermediate_size = r.dimension(keys.shared_size = "moe_shared_expert_intermediate_size", 7688, 0);
        char const* const tkey = r.alias({"layers_block_type", "layer_types"});
        std::vector<std::string> t = r.strings(tkey);
        if (t.empty() && r.has("hybrid_override_pattern")) {
            std::string const pat = r.string("hybrid_override_pattern", std::nullopt);
            for (char ch : pat) {
                if (ch != 'M' && ch != 'E' && ch != '*' && ch != '-')
                    io::detail::file_fail(file, "key 'hybrid_override_pattern'", pat, "letters M, E, * and - only");
                t.push_back(ch == 'E' ? "moe" : ch == 'M' ? "mamba" : ch == '*' ? "attention" : "mlp");
            }
            c.layer_types_rule = "hybrid_override_pattern[layer] == 'E'";
        } else if (t.empty()) {
            t = {"mamba", "moe", "attention", "mlp"};
            c.defaulted.push_back("layers_block_type = [\"linear_attention\", \"moe\", \"full_attention\", \"mlp\"]");
            c.layer_types_rule = "layers_block_type[layer] == \"moe\"";
        } else {
            c.layer_types_rule = std::string(tkey) + "[layer] == \"moe\"";
        }
        if (t.size() > static_cast<std::size_t>(limits::kMaxLayers))
            io::detail::file_fail(file, "key '" + std::string(tkey) + "'", std::to_string(t.size()) + " entries", "at most smoe::limits::kMaxLayers");
        for (auto const& x : t)
            if (x != "moe" && x != "mlp" && x != "mamba" && x != "linear_attention" && x != "attention" && x != "full_attention")
                io::detail::file_fail(file, "key '" + std::string(tkey) + "'", "\"" + x + "\"",
                                      "\"moe\", \"mlp\", \"linear_attention\" (\"mamba\") or \"full_attention\" (\"attention\")");
        c.num_hidden_layers = static_cast<std::int64_t>(t.size());
        for (auto const& x : t) c.moe_layer_types.push_back(x == "moe");
    } else {
        io::detail::file_fail(file, "key 'model_type'", type, std::string("one of ") + kHfModelTypes);
    }
    if (c.shared_intermediate_size == 0 && !c.shared_gated) keys.shared_size = nullptr;
    if (j.contains("quantization_config") && !j["quantization_config"].is_null()) c.quant = parse_quant_config(j["quantization_config"], file, dynamic_order);
    try {
        rc.validate();
    } catch (smoe::invalid_argument const& e) {
        // The router's names, as this file spells them (n_group, topk_group, ... are the same).
        std::string const key = e.argument() == "top_k"         ? keys.top_k
                                : e.argument() == "num_experts" ? keys.num_experts
                                                                : e.argument();
        throw file_error(file, "key '" + key + "'", e.value(), e.expected());
    }
    return c;
}

namespace detail {
inline std::string read_text_file(std::filesystem::path const& path) {
    std::ifstream in(path, std::ios::binary);
    if (!in) io::detail::file_fail(path.string(), "file", "unreadable", "a readable JSON file");
    std::ostringstream s;
    s << in.rdbuf();
    return s.str();
}
}  // namespace detail

inline nlohmann::json read_json_file(std::filesystem::path const& path) {
    // The parser of safetensors headers: UTF-8, no duplicate keys, no NUL, bounded depth; a config file may
    // also hold Python's Infinity / NaN tokens (io/strict_json.hpp).
    return parse_json_strict(detail::read_text_file(path), path.string(), 32, JsonFloats::python);
}

inline HfMoeConfig read_hf_config(std::filesystem::path const& path) {
    std::string const text = detail::read_text_file(path);
    nlohmann::json const j = parse_json_strict(text, path.string(), 32, JsonFloats::python);
    // GPTQ `dynamic` patterns apply in file order; nlohmann::json sorts keys, so the order comes from
    // a second, order-keeping parse of the text the strict parser has accepted.
    std::vector<std::string> order;
    auto const q = j.find("quantization_config");
    if (q != j.end() && q->is_object() && q->contains("dynamic") && (*q)["dynamic"].is_object() && (*q)["dynamic"].size() > 1) {
        nlohmann::ordered_json const ordered = nlohmann::ordered_json::parse(detail::mark_python_floats(text).value_or(text));
        for (auto const& [key, v] : ordered["quantization_config"]["dynamic"].items()) order.push_back(key);
    }
    return parse_hf_config(j, path.string(), order);
}

}  // namespace smoe::inline v0::io
