#pragma once
// smoe::io::HfMoeLayer: one decoder layer's MoE block loaded from a Hugging Face checkpoint
// (cases.md, experts.md §12) into the MoELayer type of its family:
//
//   mixtral, minimax, minimax_m2, olmoe, flex_olmo, qwen3_moe, mellum, jamba, lfm2_moe, granitemoe, mimo_v2_flash, beam
//                                    MoELayer<TopK, SwiGLU<W>, None>
//   qwen2_moe, qwen3_next, qwen3_5_moe, qwen4_exp
//                                    MoELayer<TopK, Shared<SwiGLU<W>, shared_gate::Sigmoid>, None>
//   qwen3_vl_moe (fused experts stored transposed)   the first shape
//   deepseek_v2, _v3, _v32, glm4_moe, glm4v_moe, glm4_moe_lite, glm_moe_dsa, dots1, exaone_moe, bailing_hybrid,
//   kimi_linear, solar_open, afmoe, hy_v3, hunyuan_v1_moe, ernie4_5_moe, flint, granitemoeshared, granitemoehybrid,
//   granitemoe_swa                   MoELayer<TopK, Shared<SwiGLU<W>, shared_gate::None>, None>
//   gpt_oss, jetmoe, dbrx, longcat_flash, phimoe     the first shape
//   deepseek_v4, llama4, cohere2_moe                 the third shape
// (a config with no shared expert, n_shared_experts = 0, takes the first shape). The families' expert forms
// are runtime settings of these types (HfMoeConfig::activation, weight_on_input, expert and router biases,
// shared_scale; expert/swiglu_config.hpp); JetMoE's output bias is added by forward, and PhiMoE's
// sparsemixer routes in forward (router::SparseMixer) before the layer runs on that routing, and so do
// DeepSeek-V4's hash_moe layers (router::Hash on gate.tid2eid, with forward's token ids).
//
// Quantised checkpoints (config.json's quantization_config, formats.md §1-§4; gpt-oss's stacked MXFP4 and
// Llama 4's stacked FP8 experts, io/quant_tensors.hpp) and quantise-at-load
// int4 (Options::format = WeightFormat::int4) build the same three shapes over expert::QuantSwiGLU:
// every expert matrix is planned first (io/quant_tensors.hpp: layout, dtypes, shapes, config keys),
// then QuantSwiGLU reads and packs one expert at a time (peak memory: the packed weights plus one
// expert in canonical form). Each expert, and the shared expert, keeps the format its tensors have
// (expert_format(e), shared_format()); dense modules of such a checkpoint (an `ignore`d shared expert)
// load as bf16/f32, or in the format Options asks for.
//
// W is the checkpoint's dtype: BF16 experts stay bf16 in memory (W = smoe::bf16), F32 and F16 become
// fp32 (F16 widened exactly; smoe has no fp16 kernels). Router weights, the shared gate and the
// DeepSeek-V3 score-correction bias are fp32 (routing is fp32, routing.md §0). Expert tensors are
// copied once into stacked [E, rows, cols] buffers, since a file stores each expert separately and
// with any alignment.
//
//   auto cfg = smoe::io::read_hf_config(dir / "config.json");
//   auto ckpt = smoe::io::Checkpoint::open(dir);
//   smoe::io::HfMoeLayer moe = smoe::io::HfMoeLayer::load(cfg, ckpt, /*layer=*/0, {.max_tokens = 512});
//   moe.forward(x, y);

#include <array>
#include <cmath>
#include <new>
#include <cstdint>
#include <cstring>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <type_traits>
#include <variant>
#include <vector>

#include "smoe/core/bf16.hpp"
#include "smoe/core/format.hpp"
#include "smoe/core/thread_pool.hpp"
#include "smoe/expert/quant_swiglu.hpp"
#include "smoe/expert/shared.hpp"
#include "smoe/expert/swiglu.hpp"
#include "smoe/io/config_extent.hpp"
#include "smoe/io/dtype.hpp"
#include "smoe/io/file_error.hpp"
#include "smoe/io/hf_config.hpp"
#include "smoe/io/quant_tensors.hpp"
#include "smoe/io/safetensors.hpp"
#include "smoe/io/tensor_read.hpp"
#include "smoe/layer.hpp"
#include "smoe/core/token_ids.hpp"
#include "smoe/router/hash.hpp"
#include "smoe/router/sparsemixer.hpp"
#include "smoe/router/topk.hpp"
#include "smoe/store/expert_store.hpp"
#include "smoe/balance/none.hpp"

namespace smoe::inline v0::io {

// Anything that finds tensors by name: SafetensorsFile, Checkpoint, TensorMap.
template <class S>
concept TensorSource = requires(S const& s, std::string_view name) {
    { s.find(name) } -> std::convertible_to<TensorInfo const*>;
};

// int8 is quantised at load with smoe's per-output-channel quantiser (experts.md §9), int4 with smoe's
// symmetric group quantiser (formats.md §1.6); quantized is a checkpoint's own quantised formats
// (per expert: BasicHfMoeLayer::expert_format), never asked for.
enum class WeightFormat { f32, bf16, int8, int4, quantized };
inline char const* to_string(WeightFormat f) {
    switch (f) {
        case WeightFormat::f32: return "f32";
        case WeightFormat::bf16: return "bf16";
        case WeightFormat::int8: return "int8";
        case WeightFormat::int4: return "int4";
        default: return "quantized";
    }
}

namespace detail {

inline void require_float_dtype(TensorInfo const& t, std::string const& source) {
    if (t.dtype != Dtype::F32 && t.dtype != Dtype::BF16 && t.dtype != Dtype::F16)
        file_fail(source, "tensor " + io::detail::quoted(t.name) + " dtype", dtype_name(t.dtype), "F32, BF16 or F16");
}

// Copies a float tensor of the expected shape into dst (converting to W). The loader has held its
// shape to the config already (naming the key); the checks here guard the copy. A non-finite weight
// is refused under the checkpoint's tensor name: past this point it would surface as a non-finite
// logit or scale with no name the user knows.
template <class W>
void copy_tensor(TensorInfo const& t, std::string const& source, std::vector<std::int64_t> const& shape, W* dst) {
    require_float_dtype(t, source);
    check_shape(t, shape);
    W* const begin = dst;
    if constexpr (std::is_same_v<W, bf16>) {
        if (t.dtype == Dtype::BF16)
            std::memcpy(dst, t.bytes.data(), t.bytes.size());  // bf16 stays bf16, bit for bit
        else
            for (float v : read_f32(t)) *dst++ = to_bf16(v);
    } else {
        auto const v = read_f32(t);
        std::copy(v.begin(), v.end(), dst);
    }
    require_finite(t, std::span<W const>(begin, static_cast<std::size_t>(t.numel())));
}

// Elements [begin, begin + n) of a float tensor whose shape the loader has checked, converted to W and
// refused if not finite (as copy_tensor): a fused [E, ...] stack is read one expert at a time, so loading
// it never holds a second copy of the whole stack (a Llama 4 layer's is 4 GB in bf16).
template <class W>
void copy_elements(TensorInfo const& t, std::string const& source, std::int64_t begin, std::int64_t n, W* dst) {
    require_float_dtype(t, source);
    std::size_t const es = t.dtype == Dtype::F32 ? 4 : 2;
    if (static_cast<std::size_t>(begin + n) * es > t.bytes.size())
        file_fail(source, "tensor " + io::detail::quoted(t.name) + " size", t.bytes.size(),
                  "at least " + std::to_string((begin + n) * static_cast<std::int64_t>(es)) + " bytes");
    std::byte const* src = t.bytes.data() + static_cast<std::size_t>(begin) * es;
    for (std::int64_t i = 0; i < n; ++i) {
        float v;
        std::uint16_t h = 0;
        if (t.dtype == Dtype::F32) {
            std::memcpy(&v, src + i * 4, 4);
        } else {
            std::memcpy(&h, src + i * 2, 2);
            v = t.dtype == Dtype::BF16 ? bf16_to_f32(h) : f16_to_f32(h);
        }
        if (!std::isfinite(v))
            file_fail(t.file, "tensor " + io::detail::quoted(t.name) + " element " + std::to_string(begin + i), v, "finite values");
        if constexpr (std::is_same_v<W, bf16>)
            dst[i] = t.dtype == Dtype::BF16 ? std::bit_cast<bf16>(h) : to_bf16(v);  // bf16 stays bf16, bit for bit
        else
            dst[i] = v;
    }
}

// Tensor names of one decoder layer (experts.md §12, families.md §2.8): the on-disk per-expert names
// and the fused gate_up_proj / down_proj that Hugging Face writes when it re-saves.
struct HfNames {
    std::vector<std::string> prefixes;  // the block's prefix, tried in order: the router weight finds it
    char const* gate_name;              // per-expert gate / up / down projection names
    char const* up_name;
    char const* down_name;
    std::vector<char const*> router = {"gate.weight"};  // tried in order at each prefix
    // Fused [E, 2f, d] (gate rows first) and [E, d, f] stacks, tried in order; per_expert: whether the
    // family also stores one tensor per expert (Granite's files hold only the fused input/output_linear).
    std::vector<std::pair<char const*, char const*>> fused = {{"experts.gate_up_proj", "experts.down_proj"}};
    bool per_expert = true;
    bool gated = true;              // false: no gate projection (Nemotron-H: up and down only; the fused stack is [E, f, d])
    bool fused_transposed = false;  // fused stacks as [E, d, 2f] (gate columns first) and [E, f, d] (Qwen3-VL-MoE)
    bool fused_interleaved = false; // gate and up units alternate in the fused stack (GPT-OSS: columns 2j, 2j + 1)
    bool dbrx_stacks = false;       // DBRX: experts.mlp.w1 / v1 / w2, each [E·f, d] (w2 is the down projection transposed)
    bool gpt_oss_mxfp4 = false;     // GPT-OSS: the experts may be MXFP4 experts.{gate_up,down}_proj_{blocks,scales}
    char const* router_bias = nullptr;    // the router linear's bias [E] (GPT-OSS router.bias)
    char const* expert_bias_gu = nullptr; // [E, 2f] in the fused stack's gate/up order (GPT-OSS experts.gate_up_proj_bias)
    char const* expert_bias_dn = nullptr; // [E, d]
    char const* output_bias = nullptr;    // [d], added to the block's output (JetMoE mlp.bias)
    // The selection bias, tried in order: DeepSeek's name, EXAONE-MoE's and MiniMax-M2's on-disk name,
    // Bailing's, AFMoE's and LFM2-MoE's expert_bias, ERNIE-4.5's moe_statics.
    // ERNIE-4.5's moe_statics bias is [1, E].
    std::vector<char const*> bias = {"gate.e_score_correction_bias", "e_score_correction_bias", "gate.expert_bias", "expert_bias",
                                     "moe_statics.e_score_correction_bias", "gate.moe_statics.e_score_correction_bias"};
    char const* shared = "shared_experts.";  // the shared expert's prefix in the block
    char const* shared_gate = "shared_expert_gate.weight";
    bool shared_at_layer = false;  // the shared expert is the decoder layer's, beside the block (Granite)
    bool shared_fused = false;     // shared input_linear [2f_s, d] (gate rows first) and output_linear [d, f_s]

    static HfNames of(HfFamily f, std::int64_t layer) {
        // A decoder nested in a multimodal wrapper (Qwen3.5-MoE, Llama 4) keeps its layers one level down.
        std::string const l = std::to_string(layer) + ".";
        std::vector<std::string> bases{"model.layers." + l, "model.language_model.layers." + l, "language_model.model.layers." + l};
        HfNames n{{}, "gate_proj", "up_proj", "down_proj"};
        bool const granite = f == HfFamily::granitemoe || f == HfFamily::granitemoeshared || f == HfFamily::granitemoehybrid ||
                             f == HfFamily::granitemoe_swa;
        bool const mixtral_names = f == HfFamily::mixtral || f == HfFamily::minimax || f == HfFamily::minimax_m2 || f == HfFamily::kimi_linear ||
                                   f == HfFamily::phimoe || granite;
        bool const feed_forward = f == HfFamily::jamba || f == HfFamily::lfm2_moe || f == HfFamily::llama4;
        if (f == HfFamily::deepseek_v4) n.prefixes.push_back("layers." + l + "ffn.");  // DeepSeek's own files
        for (auto const& b : bases) {
            if (mixtral_names) n.prefixes.push_back(b + "block_sparse_moe.");
            n.prefixes.push_back(b + (feed_forward ? "feed_forward." : "mlp."));
        }
        if ((mixtral_names && !granite) || f == HfFamily::lfm2_moe) n.gate_name = "w1", n.up_name = "w3", n.down_name = "w2";
        n.fused_transposed = f == HfFamily::qwen3_vl_moe;
        if (f == HfFamily::qwen2_moe || f == HfFamily::qwen3_next || f == HfFamily::qwen3_5_moe || f == HfFamily::qwen4_exp ||
            f == HfFamily::flint)
            n.shared = "shared_expert.";
        if (f == HfFamily::hy_v3) n.router = {"router.gate.weight", "gate.weight"}, n.shared = "shared_mlp.";  // on disk; re-saved: gate, shared_experts
        if (f == HfFamily::hunyuan_v1_moe) n.router = {"gate.wg.weight"}, n.shared = "shared_mlp.";
        if (f == HfFamily::jamba) n.router = {"router.weight"};
        if (f == HfFamily::afmoe) n.router = {"router.gate.weight"};
        if (f == HfFamily::gpt_oss) {
            // No conversion mapping: the files hold the module's parameters, [E, d, 2f] with gate and up columns
            // interleaved and [E, f, d], or their MXFP4 blocks (rows = output channels, quant_tensors.hpp).
            n.router = {"router.weight"}, n.router_bias = "router.bias";
            n.per_expert = false, n.fused_transposed = true, n.fused_interleaved = true, n.gpt_oss_mxfp4 = true;
            n.expert_bias_gu = "experts.gate_up_proj_bias", n.expert_bias_dn = "experts.down_proj_bias";
        }
        if (f == HfFamily::phimoe) n.router = {"gate.weight", "router.weight"};  // on disk; re-saved by HF: router.weight
        if (f == HfFamily::llama4) n.router = {"router.weight"}, n.fused_transposed = true, n.shared = "shared_expert.";
        if (f == HfFamily::jetmoe) {
            n.router = {"router.layer.weight", "router.weight"}, n.output_bias = "bias";
            n.fused = {{"input_linear.weight", "output_linear.weight"}, {"experts.gate_up_proj", "experts.down_proj"}};
            n.per_expert = false;
        }
        if (f == HfFamily::dbrx) {
            n.prefixes = {"transformer.blocks." + l + "ffn."};
            n.router = {"router.layer.weight"};
            n.fused.clear(), n.per_expert = false, n.dbrx_stacks = true;
        }
        if (f == HfFamily::longcat_flash) n.router = {"router.classifier.weight", "gate.weight"}, n.bias.insert(n.bias.begin(), "router.e_score_correction_bias");
        if (f == HfFamily::deepseek_v4) {
            // On disk ffn.experts.{i}.w1/w3/w2, gate.bias, shared_experts.w1/w3/w2; re-saved by HF under mlp. with
            // the fused stacks, e_score_correction_bias and shared_experts.{gate,up,down}_proj.
            n.gate_name = "w1", n.up_name = "w3", n.down_name = "w2";
            n.bias.insert(n.bias.begin(), "gate.bias");
        }
        if (f == HfFamily::nemotron_h) {
            // On disk backbone.layers.{l}.mixer.experts.{i}.up_proj / down_proj; re-saved by HF under model. as the
            // stacks experts.up_proj [E, f, d] and experts.down_proj [E, d, f]. The shared MLP: shared_experts.up/down_proj.
            n.prefixes = {"backbone.layers." + l + "mixer."};
            for (auto const& b : bases) n.prefixes.push_back(b + "mixer.");
            n.gated = false;
            n.fused = {{"experts.up_proj", "experts.down_proj"}};
        }
        if (granite) {
            // On disk block_sparse_moe.router.layer / input_linear / output_linear; re-saved as mlp.router / experts.*.
            n.router = {"router.layer.weight", "router.weight"};
            n.fused = {{"input_linear.weight", "output_linear.weight"}, {"experts.gate_up_proj", "experts.down_proj"}};
            n.per_expert = false;
            n.shared = "shared_mlp.", n.shared_at_layer = true, n.shared_fused = true;
        }
        return n;
    }
};

}  // namespace detail

// How BasicHfMoeLayer builds its layer, and which routed experts it holds: LocalLayers builds a
// smoe::MoELayer with every expert; io/hf_sharded.hpp builds a dist::MoELayer with this rank's.
struct LocalLayers {
    template <class Expert>
    using layer = MoELayer<router::TopK, Expert, balance::None>;

    std::vector<std::int64_t> experts(std::int64_t num_experts) const {
        std::vector<std::int64_t> ids(static_cast<std::size_t>(num_experts));
        for (std::int64_t e = 0; e < num_experts; ++e) ids[static_cast<std::size_t>(e)] = e;
        return ids;
    }
    template <class L>
    std::unique_ptr<L> make(typename L::Config const& c, typename L::Weights const& w) const {
        return std::make_unique<L>(c, w);
    }
};

template <class Maker = LocalLayers>
class BasicHfMoeLayer {
public:
    struct Options {
        std::int64_t max_tokens = 256;           // the workspace is sized once for this many tokens
        std::optional<WeightFormat> format;      // default: bf16 when every expert tensor is BF16, else f32;
                                                 // int8 and int4 quantise at load; a quantised checkpoint keeps
                                                 // its formats and this applies to its dense expert matrices
        std::int64_t int4_group = 128;           // int4: columns per group (0: per channel)
        // bf16 experts only: automatic takes the AVX512-BF16 dot product where the CPU has it (activations
        // rounded to bf16), off always computes in fp32 (expert/swiglu_config.hpp).
        expert::Bf16Dot bf16_dot = expert::Bf16Dot::automatic;
        // Quantised layers (QuantSwiGLU): int4 and int8-channel experts on the int8 dot path (formats.md
        // §6.2) with on / avx2 / portable; FP8 and MXFP4 experts on the bf16 dot path with bf16_dot on or
        // emulated (automatic and off keep the exact path there).
        expert::Int8Dot int8_dot = expert::Int8Dot::off;
        // The routed experts from this packed expert file's layer instead of the checkpoint's tensors
        // (store/packed_file.hpp; format must name the file's expert type: f32, bf16, int8, or int4 for
        // QuantSwiGLU), held as `store` says (resident, mapped, cached within a budget).
        std::shared_ptr<store::PackedFile const> packed;
        store::StoreConfig store{};
    };

    template <class W>
    using Plain = typename Maker::template layer<expert::SwiGLU<W>>;
    template <class W>
    using SharedGated = typename Maker::template layer<expert::Shared<expert::SwiGLU<W>, expert::shared_gate::Sigmoid>>;
    template <class W>
    using SharedPlain = typename Maker::template layer<expert::Shared<expert::SwiGLU<W>, expert::shared_gate::None>>;
    using QuantPlain = typename Maker::template layer<expert::QuantSwiGLU>;
    using QuantSharedGated = typename Maker::template layer<expert::Shared<expert::QuantSwiGLU, expert::shared_gate::Sigmoid>>;
    using QuantSharedPlain = typename Maker::template layer<expert::Shared<expert::QuantSwiGLU, expert::shared_gate::None>>;

    // `source_name` names the checkpoint in errors (a folder or file path).
    template <TensorSource S>
    static BasicHfMoeLayer load(HfMoeConfig const& cfg, S const& src, std::int64_t layer, Options const& opt,
                                std::string const& source_name, Maker maker = {}) {
        if (!cfg.is_moe_layer(layer))
            io::detail::file_fail(cfg.keys.file, "layer", layer,
                                  "a MoE decoder layer of this " + std::string(to_string(cfg.family)) + " config: " +
                                      cfg.moe_layer_rule() + " (dense layers have no router)");
        BasicHfMoeLayer m;
        m.maker_ = std::move(maker);
        m.cfg_ = cfg;
        // DeepSeek-V4's hash_moe layers: experts chosen by gate.tid2eid[token id], weights from the gate's
        // scores (families.md §2.2); the hash gate has no selection bias.
        m.hash_layer_ = std::find(cfg.hash_layers.begin(), cfg.hash_layers.end(), layer) != cfg.hash_layers.end();
        if (m.hash_layer_) m.cfg_.router.requires_expert_bias = false;
        m.layer_index_ = layer;
        m.source_ = source_name;
        m.format_ = opt.format.value_or(WeightFormat::f32);
        if (m.format_ == WeightFormat::quantized)
            smoe::detail::fail("options.format", "quantized", "f32, bf16, int8 or int4 (a quantised checkpoint keeps its formats by itself)");
        if (cfg.sparsemixer || m.hash_layer_) {  // the routing buffers of forward, sized once
            std::int64_t const T = std::max<std::int64_t>(opt.max_tokens, 0), k = m.own_router_k();
            m.route_logits_.resize(static_cast<std::size_t>(T * cfg.num_experts()));
            m.route_ids_.resize(static_cast<std::size_t>(T * k));
            m.route_w_.resize(static_cast<std::size_t>(T * k));
            m.max_tokens_ = T;
        }
        if (cfg.sparsemixer) {
            m.mixer_.emplace(router::SparseMixerConfig{.num_experts = cfg.num_experts(), .router_jitter_noise = *cfg.sparsemixer});
            m.route_ws_.resize(m.mixer_->workspace_size(m.max_tokens_) + 64);
        }
        try {
            m.locate(src, opt);  // every shape held to the config before anything is sized from it
            if (m.quant_)
                m.format_ = opt.format == WeightFormat::int4 && !m.any_quantized_ ? WeightFormat::int4 : WeightFormat::quantized;
            else
                m.format_ = opt.format.value_or(m.all_bf16_ ? WeightFormat::bf16 : WeightFormat::f32);
            m.build_layer(opt);
        } catch (allocation_error const&) {
            throw;
        } catch (std::bad_alloc const&) {
            throw allocation_error(m.what_is_loaded());
        }
        // The source may be closed after loading: forget where its tensors were.
        m.fused_gate_up_ = m.fused_down_ = m.dbrx_up_ = nullptr;
        m.gpt_oss_plan_.reset();
        m.llama4_plan_.reset();
        m.experts_.clear();
        m.shared_ = {};
        m.qplans_.clear();
        m.qshared_.reset();
        return m;
    }

    BasicHfMoeLayer(BasicHfMoeLayer&&) noexcept = default;
    BasicHfMoeLayer& operator=(BasicHfMoeLayer&&) noexcept = default;

    // x [T, d] -> y [T, d]; T <= max_tokens. The result's views point into the layer's workspace.
    // token_ids [T]: the batch's vocabulary ids, which a deepseek_v4 hash_moe layer routes by (an error
    // there without them); every other layer ignores them, so an engine may pass them to all layers.
    RoutingResult forward(MatrixView<float const> x, MatrixView<float> y, TokenIds token_ids = {});

    HfMoeConfig const& config() const { return cfg_; }
    std::int64_t layer_index() const { return layer_index_; }
    WeightFormat format() const { return format_; }
    std::int64_t hidden_size() const { return cfg_.hidden_size; }
    std::int64_t num_experts() const { return cfg_.num_experts(); }
    LoadStats const& stats() const {
        return std::visit([](auto const& l) -> LoadStats const& { return l->stats(); }, layer_);
    }
    void reset_stats() {
        std::visit([](auto& l) { l->balancer().reset_stats(); }, layer_);
    }
    // Bytes of the weights this layer holds: the experts' packed copies (the stacked tensors read
    // from the checkpoint are released once packed), router and gates in fp32.
    std::size_t weight_bytes() const {
        std::size_t const small = (gate_.size() + bias_.size() + shared_gate_.size() + gate_bias_.size() + out_bias_.size()) * sizeof(float);
        return small + std::visit(
                           [](auto const& l) -> std::size_t {
                               if constexpr (requires { l->has_local_experts(); })
                                   if (!l->has_local_experts()) return 0;
                               return l->experts().packed_bytes();
                           },
                           layer_);
    }
    // Expert work of every later forward goes to `pool` (smoe::ThreadPool); same bits with or without.
    template <ThreadPool P>
    void set_thread_pool(P& pool) {
        std::visit(
            [&](auto& l) {
                if constexpr (requires { l->set_thread_pool(pool); }) l->set_thread_pool(pool);
            },
            layer_);
    }
    // The layer itself (a smoe::MoELayer or a dist::MoELayer of the format and shared-expert kind).
    template <class F>
    decltype(auto) visit(F&& f) {
        return std::visit([&](auto& l) -> decltype(auto) { return f(*l); }, layer_);
    }
    // Global ids of the routed experts this layer holds, in local order.
    std::vector<std::int64_t> const& local_experts() const { return local_; }
    std::size_t workspace_bytes() const {
        return std::visit([](auto const& l) { return l->workspace_size(); }, layer_);
    }
    // The R-V3 families' score-correction bias (empty for the others).
    std::span<float const> expert_bias() const { return bias_; }
    // The router weight [E, d] (fp32), e.g. for a pre-gating predictor (store/pregate.hpp).
    MatrixView<float const> gate() const { return {gate_.data(), cfg_.num_experts(), cfg_.hidden_size}; }
    // The routed experts' store (store/expert_store.hpp); nullptr for a rank without local experts.
    store::ExpertStore* expert_store() {
        return std::visit(
            [](auto const& l) -> store::ExpertStore* {
                if constexpr (requires { l->has_local_experts(); })
                    if (!l->has_local_experts()) return nullptr;
                return &l->experts().store();
            },
            layer_);
    }
    // formats.md §4 rule 5: local expert e's format ("int4-g128-sym", "fp8-e4m3-b128x128", "gate/up X,
    // down Y"), or the layer's dtype for an unquantised layer; the shared expert's ("" when none).
    std::string expert_format(std::int64_t e) const {
        return on_experts<false>([&](auto const& x) -> std::string {
            if constexpr (requires { x.format_name(e); })
                return x.format_name(e);
            else
                return to_string(format_);
        });
    }
    // The dot path local expert e takes (QuantSwiGLU::dot_path), "exact" for an unquantised layer's
    // fp32 path, "bf16 dot" where SwiGLU<bf16> takes vdpbf16ps.
    std::string expert_dot_path(std::int64_t e) const {
        return on_experts<false>([&](auto const& x) -> std::string {
            if constexpr (requires { x.dot_path(e); })
                return x.dot_path(e);
            else if constexpr (requires { x.uses_bf16_dot(); })
                return x.uses_bf16_dot() ? "bf16 dot" : "exact";
            else
                return "exact";
        });
    }
    std::string shared_format() const {
        if (cfg_.shared_intermediate_size == 0) return "";
        return on_experts<true>([&](auto const& x) -> std::string {
            if constexpr (requires { x.format_name(0); })
                return x.format_name(0);
            else
                return to_string(format_);
        });
    }

private:
    BasicHfMoeLayer() = default;
    RoutingResult forward_own_router(MatrixView<float const> x, MatrixView<float> y, TokenIds token_ids);
    std::int64_t own_router_k() const { return cfg_.sparsemixer ? 2 : cfg_.top_k(); }

    // f on the layer's routed experts (an expert::Shared's routed()) or, with SharedOne, on its shared one.
    template <bool SharedOne, class F>
    std::string on_experts(F&& f) const {
        return std::visit(
            [&](auto const& l) -> std::string {
                auto const& x = l->experts();
                if constexpr (SharedOne && requires { x.shared(); })
                    return f(x.shared());
                else if constexpr (!SharedOne && requires { x.routed(); })
                    return f(x.routed());
                else
                    return f(x);
            },
            layer_);
    }

    enum Slot { w1, w3, w2, s1, s3, s2, kSlots };

    // Finds every tensor of the block and holds its dtype and shape to the config (an extent that
    // disagrees names the config key), then reads the router's small tensors. Nothing is sized from
    // the config before the tensor that bounds it is checked: the router weight bounds E and d.
    template <TensorSource S>
    void locate(S const& src, Options const& opt) {
        auto const names = detail::HfNames::of(cfg_.family, layer_index_);
        auto const& k = cfg_.keys;
        std::int64_t const E = cfg_.num_experts(), d = cfg_.hidden_size, f = cfg_.intermediate_size;
        ConfigExtent const xE{E, k.num_experts}, xd{d, k.hidden_size}, xf{f, k.intermediate_size};
        all_bf16_ = true;  // of the expert tensors; the router's are read as fp32 whatever their dtype
        auto checked = [&](TensorInfo const* t, std::initializer_list<ConfigExtent> dims, bool expert = true) {
            detail::require_float_dtype(*t, source_);
            require_extents(*t, k.file, dims);
            all_bf16_ = all_bf16_ && (!expert || t->dtype == Dtype::BF16);
            return t;
        };
        TensorInfo const* gate = nullptr;
        for (auto const& p : names.prefixes) {
            for (auto const* r : names.router)
                if ((gate = src.find(p + r))) break;
            if (gate) {
                prefix_ = p;
                break;
            }
        }
        if (!gate) missing(names.prefixes.front() + names.router.front(), "the router weight [E, d]");
        // LongCat-Flash's router has a row per identity expert too: [E + Z, d].
        std::int64_t const nl = cfg_.router.num_logits();
        ConfigExtent const xL = nl == E ? xE : ConfigExtent{nl, "n_routed_experts + zero_expert_num"};
        checked(gate, {xL, xd}, false);
        TensorInfo const* router_bias = nullptr;
        if (cfg_.router_bias) checked(router_bias = find_or_fail(src, prefix_ + names.router_bias, "the router bias [E]"), {xE}, false);
        TensorInfo const* bias = nullptr;
        if (cfg_.router.requires_expert_bias) {
            for (auto const* b : names.bias)
                if ((bias = src.find(prefix_ + b))) break;
            if (!bias) missing(prefix_ + names.bias.front(), "the score-correction bias [E]");
            if (bias->shape.size() == 2)
                checked(bias, {{1}, xL}, false);
            else
                checked(bias, {xL}, false);
        }
        local_ = maker_.experts(E);

        TensorInfo const* gu = nullptr;
        char const* down_name = nullptr;
        if (opt.packed) {
            // The routed experts come packed from the file, so their tensors are not looked for (a model
            // larger than memory has none besides the file): the layer type follows the file's records.
            auto const& pl = opt.packed->layer(layer_index_);
            quant_ = pl.kind == store::ExpertKind::quant_swiglu;
            for (std::int64_t e = 0; quant_ && e < pl.num_experts; ++e)
                for (auto const& f : {opt.packed->record(pl, e).gate_up, opt.packed->record(pl, e).down})
                    any_quantized_ = any_quantized_ || (f.kind != quant::Kind::f32 && f.kind != quant::Kind::bf16);
        } else {
            for (auto const& [g, dn] : names.fused)
                if ((gu = src.find(prefix_ + g))) {
                    down_name = dn;
                    break;
                }
        }
        if (opt.packed) {
            // located above
        } else if (!gu && names.gpt_oss_mxfp4 && src.find(prefix_ + "experts.gate_up_proj_blocks")) {
            // GPT-OSS's MXFP4 release: the experts stacked as blocks and E8M0 scales (quant_tensors.hpp).
            if (opt.format == WeightFormat::int4)
                io::detail::file_fail(source_, "tensor " + io::detail::quoted(prefix_ + "experts.gate_up_proj_blocks"), "present",
                                      "float experts for options.format int4 (MXFP4 experts keep their format)");
            gpt_oss_plan_ = plan_gpt_oss_experts(src, prefix_ + "experts", E, d, f, source_);
            quant_ = any_quantized_ = true;
            routed_fmt_ = {std::vector<quant::Format>(local_.size(), quant::Format::mxfp4()),
                           std::vector<quant::Format>(local_.size(), quant::Format::mxfp4())};
        } else if (gu && gu->dtype == Dtype::F8_E4M3 && cfg_.family == HfFamily::llama4) {
            // Llama 4's FP8 release (fbgemm_fp8): the fused transposed stacks as e4m3 codes with a factor per output
            // channel (quant_tensors.hpp), read one expert at a time into fp8-e4m3-channel matrices.
            if (!cfg_.quant)
                io::detail::file_fail(k.file, "key 'quantization_config'", "missing",
                                      "a quantization_config (fbgemm_fp8) describing the F8_E4M3 tensor " + io::detail::quoted(gu->name));
            if (opt.format == WeightFormat::int4)
                io::detail::file_fail(source_, "tensor " + io::detail::quoted(gu->name), "F8_E4M3",
                                      "float experts for options.format int4 (FP8 experts keep their format)");
            llama4_plan_ = plan_llama4_fp8_experts(src, prefix_ + "experts", E, d, f, source_);
            quant_ = any_quantized_ = true;
            routed_fmt_ = {std::vector<quant::Format>(local_.size(), quant::Format::fp8_channel()),
                           std::vector<quant::Format>(local_.size(), quant::Format::fp8_channel())};
            gu = nullptr;
        } else if (names.dbrx_stacks) {
            // DBRX: w1 (gate), v1 (up) and w2 (down, transposed: a row per intermediate unit), each [E·f, d].
            ConfigExtent const xEf{E, k.num_experts, f};
            fused_gate_up_ = checked(find_or_fail(src, prefix_ + "experts.mlp.w1", "the stacked gate projections [E·f, d]"), {xEf, xd});
            dbrx_up_ = checked(find_or_fail(src, prefix_ + "experts.mlp.v1", "the stacked up projections [E·f, d]"), {xEf, xd});
            fused_down_ = checked(find_or_fail(src, prefix_ + "experts.mlp.w2", "the stacked down projections, transposed [E·f, d]"), {xEf, xd});
        } else if (!gu && !names.per_expert) {
            missing(prefix_ + names.fused.front().first, "the fused expert gate/up projections [E, 2f, d]");
        }
        if (gu && opt.format == WeightFormat::int4)
            io::detail::file_fail(source_, "tensor " + io::detail::quoted(gu->name), "present",
                                  "per-expert tensors for options.format int4 (the fused layout loads as f32, bf16 or int8)");
        if (!gu && !quant_ && !fused_gate_up_ && !local_.empty() && !opt.packed) {
            // Quantised when the config says so, when asked for int4, or when the first expert's weight
            // is not a float tensor (an FP8 weight, weight_packed or qweight without a config: an error
            // naming quantization_config, from plan_matrix).
            std::string const p0 = prefix_ + "experts." + std::to_string(local_.front()) + "." + (names.gated ? names.gate_name : names.up_name) + ".";
            auto const* w = src.find(p0 + "weight");
            bool const foreign = w ? (w->dtype != Dtype::F32 && w->dtype != Dtype::BF16 && w->dtype != Dtype::F16)
                                   : (src.find(p0 + "weight_packed") || src.find(p0 + "qweight"));
            quant_ = cfg_.quant.has_value() || opt.format == WeightFormat::int4 || foreign;
        }
        if (quant_ && !names.gated && !opt.packed)
            io::detail::file_fail(source_, "experts of decoder layer " + std::to_string(layer_index_) + " (" + to_string(cfg_.family) + ")",
                                  "quantised or options.format int4", "float experts (non-gated relu² experts load as f32, bf16 or int8)");
        if (gpt_oss_plan_ || llama4_plan_ || opt.packed) {
            // planned above, or packed
        } else if (quant_) {
            plan_quant(src, names, opt);
        } else if (gu) {
            fused_transposed_ = names.fused_transposed;
            fused_interleaved_ = names.fused_interleaved;
            ConfigExtent const xgu = names.gated ? ConfigExtent{f, k.intermediate_size, 2} : xf;  // 2f, or f up rows alone
            if (fused_transposed_) {
                fused_gate_up_ = checked(gu, {xE, xd, xgu});
                fused_down_ = checked(find_or_fail(src, prefix_ + down_name, "the fused down projection [E, f, d]"), {xE, xf, xd});
            } else {
                fused_gate_up_ = checked(gu, {xE, xgu, xd});
                fused_down_ = checked(find_or_fail(src, prefix_ + down_name, "the fused down projection [E, d, f]"), {xE, xd, xf});
            }
        }
        if (!quant_ && !gu && !fused_gate_up_ && !opt.packed) {
            experts_.resize(local_.size());
            for (std::size_t l = 0; l < local_.size(); ++l) {
                std::string const p = prefix_ + "experts." + std::to_string(local_[l]) + ".";
                auto& t = experts_[l];
                auto const* gate_proj = names.gated ? find_or_fail(src, p + names.gate_name + ".weight", "expert gate projection [f, d]") : nullptr;
                auto const* up_proj = find_or_fail(src, p + names.up_name + ".weight", "expert up projection [f, d]");
                auto const* down_proj = find_or_fail(src, p + names.down_name + ".weight", "expert down projection [d, f]");
                t = {gate_proj ? checked(gate_proj, {xf, xd}) : nullptr, checked(up_proj, {xf, xd}), checked(down_proj, {xd, xf})};
            }
        }
        TensorInfo const* shared_gate = nullptr;
        std::int64_t const fs = cfg_.shared_intermediate_size;
        ConfigExtent const xs = k.shared_in_routed_units ? ConfigExtent{fs / f, k.shared_size, f} : ConfigExtent{fs, k.shared_size};
        if (fs > 0) {
            // The layer's prefix: the block's without its last component ("model.layers.3.block_sparse_moe." -> "model.layers.3.").
            std::string const layer_prefix = prefix_.substr(0, prefix_.rfind('.', prefix_.size() - 2) + 1);
            std::string const p = (names.shared_at_layer ? layer_prefix : prefix_) + names.shared;
            if (names.shared_fused) {
                if (quant_)
                    io::detail::file_fail(source_, "tensor " + io::detail::quoted(p + "input_linear.weight"), "a fused shared expert",
                                          "a float checkpoint (quantised Granite experts are not loaded)");
                shared_[0] = checked(find_or_fail(src, p + "input_linear.weight", "shared expert gate/up projection [2f_s, d]"),
                                     {{fs, k.shared_size, 2}, xd});
                shared_[2] = checked(find_or_fail(src, p + "output_linear.weight", "shared expert down projection [d, f_s]"), {xd, xs});
            } else if (quant_) {
                auto plan = [&](char const* proj, ConfigExtent r, ConfigExtent c) {
                    return plan_matrix(src, cfg_.quant ? &*cfg_.quant : nullptr, p + proj, r, c, source_, k.file);
                };
                // gate_proj / up_proj / down_proj, or DeepSeek-V4's w1 / w3 / w2.
                bool const w = !src.find(p + "gate_proj.weight") && src.find(p + "w1.weight");
                qshared_ = {plan(w ? "w1" : "gate_proj", xs, xd), plan(w ? "w3" : "up_proj", xs, xd), plan(w ? "w2" : "down_proj", xd, xs)};
                check_pair(*qshared_, "shared expert", opt);
            } else {
                // gate_proj / up_proj / down_proj, or DeepSeek-V4's w1 / w3 / w2.
                bool const w = !src.find(p + "gate_proj.weight") && src.find(p + "w1.weight");
                if (names.gated)
                    shared_[0] = checked(find_or_fail(src, p + (w ? "w1" : "gate_proj") + ".weight", "shared expert gate projection"), {xs, xd});
                shared_[1] = checked(find_or_fail(src, p + (w ? "w3" : "up_proj") + ".weight", "shared expert up projection"), {xs, xd});
                shared_[2] = checked(find_or_fail(src, p + (w ? "w2" : "down_proj") + ".weight", "shared expert down projection"), {xd, xs});
            }
            if (cfg_.shared_gated) {
                shared_gate = find_or_fail(src, prefix_ + names.shared_gate, "the shared expert gate [1, d]");
                checked(shared_gate, {{1}, xd}, false);
            }
        }
        if (quant_ && !any_quantized_ && opt.format != WeightFormat::int4 && !opt.packed) {
            // Every expert matrix is dense (the config quantises other modules only): the SwiGLU<W> layer.
            quant_ = false;
            experts_.resize(local_.size());
            for (std::size_t l = 0; l < local_.size(); ++l)
                experts_[l] = {checked(qplans_[l][0].weight, {xf, xd}), checked(qplans_[l][1].weight, {xf, xd}),
                               checked(qplans_[l][2].weight, {xd, xf})};
            if (qshared_)
                shared_ = {checked((*qshared_)[0].weight, {xs, xd}), checked((*qshared_)[1].weight, {xs, xd}),
                           checked((*qshared_)[2].weight, {xd, xs})};
            qplans_.clear();
            qshared_.reset();
        }

        TensorInfo const *ebias_gu = nullptr, *ebias_dn = nullptr, *out_bias = nullptr;
        if (cfg_.expert_biases) {
            ebias_gu = checked(find_or_fail(src, prefix_ + names.expert_bias_gu, "the experts' gate/up bias [E, 2f]"),
                               {xE, {f, k.intermediate_size, 2}}, false);
            ebias_dn = checked(find_or_fail(src, prefix_ + names.expert_bias_dn, "the experts' down bias [E, d]"), {xE, xd}, false);
        }
        if (cfg_.output_bias) checked(out_bias = find_or_fail(src, prefix_ + names.output_bias, "the block's output bias [d]"), {xd}, false);

        gate_.resize(static_cast<std::size_t>(nl * d));
        detail::copy_tensor(*gate, source_, {nl, d}, gate_.data());
        if (hash_layer_) read_hash_table(find_or_fail(src, prefix_ + "gate.tid2eid", "the hash layer's token id -> expert ids table [vocab, k]"));
        if (bias) {
            bias_.resize(static_cast<std::size_t>(nl));
            detail::copy_tensor(*bias, source_, bias->shape.size() == 2 ? std::vector<std::int64_t>{1, nl} : std::vector<std::int64_t>{nl},
                                bias_.data());
        }
        if (router_bias) {
            gate_bias_.resize(static_cast<std::size_t>(E));
            detail::copy_tensor(*router_bias, source_, {E}, gate_bias_.data());
        }
        if (out_bias) {
            out_bias_.resize(static_cast<std::size_t>(d));
            detail::copy_tensor(*out_bias, source_, {d}, out_bias_.data());
        }
        if (ebias_gu) {
            // Both [E, 2f] (the fused stack's order: interleaved for GPT-OSS) to b1, b3 [E_local, f] and [E_local, d].
            std::vector<float> gu(static_cast<std::size_t>(E * 2 * f));
            std::vector<float> dn(static_cast<std::size_t>(E * d));
            detail::copy_tensor(*ebias_gu, source_, {E, 2 * f}, gu.data());
            detail::copy_tensor(*ebias_dn, source_, {E, d}, dn.data());
            bool const il = names.fused_interleaved;
            for (std::int64_t e : local_)
                for (std::int64_t j = 0; j < f; ++j) {
                    b1_.push_back(gu[static_cast<std::size_t>(e * 2 * f + (il ? 2 * j : j))]);
                    b3_.push_back(gu[static_cast<std::size_t>(e * 2 * f + (il ? 2 * j + 1 : f + j))]);
                }
            for (std::int64_t e : local_) b2_.insert(b2_.end(), dn.begin() + e * d, dn.begin() + (e + 1) * d);
        }
        if (shared_gate) {
            shared_gate_.resize(static_cast<std::size_t>(d));
            detail::copy_tensor(*shared_gate, source_, {1, d}, shared_gate_.data());
        }
    }

    // For an out-of-memory error: what was being loaded, and how large it is.
    std::string what_is_loaded() const {
        auto const [E, d, f, fs] = std::array{cfg_.num_experts(), cfg_.hidden_size, cfg_.intermediate_size,
                                              cfg_.shared_intermediate_size};
        double const weights = 3.0 * double(E * f + fs) * double(d);
        double const bytes = weights * (format_ == WeightFormat::f32    ? 4
                                        : format_ == WeightFormat::bf16 ? 2
                                        : format_ == WeightFormat::int8 ? 1
                                                                        : 0.5);
        return "loading the MoE block of decoder layer " + std::to_string(layer_index_) + " from " + source_ + " (" +
               to_string(cfg_.family) + ", " + std::to_string(E) + " experts of d = " + std::to_string(d) + ", f = " +
               std::to_string(f) + (fs > 0 ? ", shared f = " + std::to_string(fs) : std::string()) + ": " +
               smoe::detail::to_text(bytes / double(1 << 30)) + " GiB of " + to_string(format_) + " expert weights)";
    }

    // The stacked tensors in format L (what the file holds, widened or narrowed), then the layer of
    // format W: L = W, or L = float and W = int8 quantised here.
    template <class W>
    void build(Options const& opt) {
        using L = std::conditional_t<std::is_same_v<W, std::int8_t>, float, W>;
        std::int64_t const E = static_cast<std::int64_t>(local_.size()), d = cfg_.hidden_size, f = cfg_.intermediate_size;
        std::int64_t const fs = cfg_.shared_intermediate_size, all = cfg_.num_experts();
        auto& store = storage<L>();
        auto sz = [](std::int64_t n) { return static_cast<std::size_t>(n); };
        bool const gated = cfg_.activation.gated();  // non-gated (relu²): no W1 / S1 (GluActivation::relu2)
        if (!opt.packed) {
            if (gated) store[w1].resize(sz(E * f * d));
            store[w3].resize(sz(E * f * d));
            store[w2].resize(sz(E * d * f));
        }
        if (opt.packed) {
            // The routed experts come packed from the file.
        } else if (dbrx_up_) {
            // [E·f, d] each (shapes checked in locate), an expert's f rows contiguous: read one held expert at
            // a time, like the fused stacks below, never a second copy of a whole stack. W2[e][o][j] = w2[e·f + j][o].
            std::vector<L> dn(sz(f * d));  // one expert's
            for (std::int64_t l = 0; l < E; ++l) {
                std::int64_t const e = local_[sz(l)];
                detail::copy_elements(*fused_gate_up_, source_, e * f * d, f * d, store[w1].data() + l * f * d);
                detail::copy_elements(*dbrx_up_, source_, e * f * d, f * d, store[w3].data() + l * f * d);
                detail::copy_elements(*fused_down_, source_, e * f * d, f * d, dn.data());
                for (std::int64_t o = 0; o < d; ++o)
                    for (std::int64_t j = 0; j < f; ++j) store[w2][sz(l * d * f + o * f + j)] = dn[sz(j * d + o)];
            }
        } else if (fused_gate_up_ && !gated) {
            // Non-gated (Nemotron-H re-saved by HF): up [E, f, d] and down [E, d, f], one held expert at a time.
            check_shape(*fused_gate_up_, {all, f, d});
            check_shape(*fused_down_, {all, d, f});
            for (std::int64_t l = 0; l < E; ++l) {
                std::int64_t const e = local_[sz(l)];
                detail::copy_elements(*fused_gate_up_, source_, e * f * d, f * d, store[w3].data() + l * f * d);
                detail::copy_elements(*fused_down_, source_, e * d * f, d * f, store[w2].data() + l * d * f);
            }
        } else if (fused_gate_up_) {
            // [E, 2f, d], gate rows first, and [E, d, f]: one held expert at a time, split into the
            // canonical W1 / W3 / W2 stacks. Transposed: [E, d, 2f] and [E, f, d], the gate columns
            // first, or (GPT-OSS) gate and up columns interleaved.
            bool const tr = fused_transposed_;
            std::int64_t const gcol = fused_interleaved_ ? 2 : 1, ucol0 = fused_interleaved_ ? 1 : f;
            check_shape(*fused_gate_up_, tr ? std::vector<std::int64_t>{all, d, 2 * f} : std::vector<std::int64_t>{all, 2 * f, d});
            check_shape(*fused_down_, tr ? std::vector<std::int64_t>{all, f, d} : std::vector<std::int64_t>{all, d, f});
            std::vector<L> gu(sz(2 * f * d)), dn(sz(d * f));  // one expert's
            for (std::int64_t l = 0; l < E; ++l) {
                std::int64_t const e = local_[sz(l)];
                detail::copy_elements(*fused_gate_up_, source_, e * 2 * f * d, 2 * f * d, gu.data());
                detail::copy_elements(*fused_down_, source_, e * d * f, d * f, dn.data());
                auto const* g = gu.data();
                auto const* o = dn.data();
                L* const g1 = store[w1].data() + l * f * d;
                L* const u1 = store[w3].data() + l * f * d;
                L* const d1 = store[w2].data() + l * d * f;
                if (tr) {  // [d, 2f] and [f, d] to the canonical [f, d] and [d, f]
                    for (std::int64_t i = 0; i < d; ++i)
                        for (std::int64_t j = 0; j < f; ++j) {
                            g1[j * d + i] = g[i * 2 * f + gcol * j];
                            u1[j * d + i] = g[i * 2 * f + ucol0 + gcol * j];
                            d1[i * f + j] = o[j * d + i];
                        }
                } else {
                    std::copy(g, g + f * d, g1);
                    std::copy(g + f * d, g + 2 * f * d, u1);
                    std::copy(o, o + d * f, d1);
                }
            }
        } else {
            for (std::int64_t l = 0; l < E; ++l) {
                auto const& t = experts_[sz(l)];
                if (gated) detail::copy_tensor(*t[0], source_, {f, d}, store[w1].data() + l * f * d);
                detail::copy_tensor(*t[1], source_, {f, d}, store[w3].data() + l * f * d);
                detail::copy_tensor(*t[2], source_, {d, f}, store[w2].data() + l * d * f);
            }
        }
        if (fs > 0) {
            if (gated) store[s1].resize(sz(fs * d));
            store[s3].resize(sz(fs * d));
            store[s2].resize(sz(d * fs));
            if (shared_[1]) {
                if (gated) detail::copy_tensor(*shared_[0], source_, {fs, d}, store[s1].data());
                detail::copy_tensor(*shared_[1], source_, {fs, d}, store[s3].data());
            } else {  // fused [2f_s, d], gate rows first
                std::vector<L> gu(sz(2 * fs * d));
                detail::copy_tensor(*shared_[0], source_, {2 * fs, d}, gu.data());
                std::copy(gu.begin(), gu.begin() + fs * d, store[s1].begin());
                std::copy(gu.begin() + fs * d, gu.end(), store[s3].begin());
            }
            detail::copy_tensor(*shared_[2], source_, {d, fs}, store[s2].data());
        }
        expert::Bf16Dot const dot = std::is_same_v<W, bf16> ? opt.bf16_dot : expert::Bf16Dot::automatic;
        auto const cfgs = expert_configs(dot, expert::Int8Dot::off, opt.store);
        expert::SwiGLUConfig const& routed = cfgs.first;
        expert::SwiGLUConfig const& shared = cfgs.second;
        Quantized q;
        if constexpr (std::is_same_v<W, std::int8_t>) q = quantize(store, routed, shared);
        auto weights_of = [&](Slot a, Slot b, Slot c, expert::SwiGLUConfig const& sc) {
            if (a == w1 && opt.packed) {
                expert::SwiGLUWeights<W> pw;
                pw.packed = {opt.packed, layer_index_, packed_experts(*opt.packed)};
                return pw;
            }
            if constexpr (std::is_same_v<W, std::int8_t>)
                return expert::SwiGLUWeights<W>::dense(gated ? q.q[a].data() : nullptr, gated ? q.s[a].data() : nullptr, q.q[b].data(),
                                                        q.s[b].data(), q.q[c].data(), q.s[c].data(), sc);
            else
                return expert::SwiGLUWeights<W>::dense(gated ? store[a].data() : nullptr, store[b].data(), store[c].data(), sc);
        };
        auto routed_weights = [&] {
            auto w = weights_of(w1, w3, w2, routed);
            w.bias = biases();
            return w;
        };
        MatrixView<float const> const gate(gate_.data(), cfg_.router.num_logits(), d);
        if (fs == 0) {
            using M = Plain<W>;
            layer_ = maker_.template make<M>(typename M::Config{.router = cfg_.router, .expert = routed, .max_tokens = opt.max_tokens},
                                         typename M::Weights{gate, bias_, routed_weights(), gate_bias_});
        } else if (cfg_.shared_gated) {
            using M = SharedGated<W>;
            layer_ = maker_.template make<M>(
                typename M::Config{.router = cfg_.router, .expert = {routed, shared, cfg_.shared_scale}, .max_tokens = opt.max_tokens},
                typename M::Weights{gate, bias_,
                                    {routed_weights(), weights_of(s1, s3, s2, shared), MatrixView<float const>(shared_gate_.data(), 1, d)}, gate_bias_});
        } else {
            using M = SharedPlain<W>;
            layer_ = maker_.template make<M>(
                typename M::Config{.router = cfg_.router, .expert = {routed, shared, cfg_.shared_scale}, .max_tokens = opt.max_tokens},
                typename M::Weights{gate, bias_, {routed_weights(), weights_of(s1, s3, s2, shared), {}}, gate_bias_});
        }
        // The experts packed their own copy: the stacks are not read again.
        for (auto& v : store) std::vector<L>().swap(v);
    }

    // Quantised layers (formats.md §4): every expert matrix planned (quant_tensors.hpp), formats resolved.
    template <TensorSource S>
    void plan_quant(S const& src, detail::HfNames const& names, Options const& opt) {
        auto const& k = cfg_.keys;
        ConfigExtent const xd{cfg_.hidden_size, k.hidden_size}, xf{cfg_.intermediate_size, k.intermediate_size};
        QuantConfig const* q = cfg_.quant ? &*cfg_.quant : nullptr;
        qplans_.reserve(local_.size());
        for (std::int64_t e : local_) {
            std::string const p = prefix_ + "experts." + std::to_string(e) + ".";
            qplans_.push_back({plan_matrix(src, q, p + names.gate_name, xf, xd, source_, k.file),
                               plan_matrix(src, q, p + names.up_name, xf, xd, source_, k.file),
                               plan_matrix(src, q, p + names.down_name, xd, xf, source_, k.file)});
            check_pair(qplans_.back(), "expert " + std::to_string(e), opt);
        }
    }

    // The formats of one expert's matrices (a dense one: what Options asks for, else its dtype; gate and
    // up one format), recorded for the layer; W1 and W3 in different formats is an error (§5).
    void check_pair(std::array<QuantMatrixPlan, 3> const& pl, std::string const& who, Options const& opt) {
        auto const eff = [&](QuantMatrixPlan const& p, bool bf16) -> quant::Format {
            if (p.scheme.quantized()) return p.format;
            if (opt.format == WeightFormat::int4) {
                std::int64_t const g = opt.int4_group;
                if (g < 0 || (g > 0 && p.cols % g != 0))
                    smoe::detail::fail("options.int4_group", g,
                                       "0 (per channel) or a divisor of in_features " + std::to_string(p.cols) + " (" + p.module + ")");
                return quant::Format::int4(g == p.cols ? 0 : g);
            }
            if (opt.format == WeightFormat::int8) return quant::Format::int8_channel();
            if (opt.format == WeightFormat::bf16) return quant::Format::bf16();
            if (opt.format == WeightFormat::f32) return quant::Format::f32();
            return bf16 ? quant::Format::bf16() : quant::Format::f32();
        };
        bool const pair_bf16 = pl[0].format.kind == quant::Kind::bf16 && pl[1].format.kind == quant::Kind::bf16;
        quant::Format const gu = eff(pl[0], pair_bf16), up = eff(pl[1], pair_bf16);
        if (!(gu == up))
            io::detail::file_fail(source_, who + " gate and up formats", quant::name(gu, pl[0].cols) + ", " + quant::name(up, pl[1].cols),
                                  "one format for both");
        for (auto const& p : pl) any_quantized_ = any_quantized_ || p.scheme.quantized();
        auto& [fgu, fdn] = who == "shared expert" ? shared_fmt_ : routed_fmt_;
        fgu.push_back(gu);
        fdn.push_back(eff(pl[2], pl[2].format.kind == quant::Kind::bf16));
    }

    // The routed and shared experts' configs: the family's activation for both; the weight on the input
    // and `store` (where the packed records live) for the routed ones only.
    std::pair<expert::SwiGLUConfig, expert::SwiGLUConfig> expert_configs(expert::Bf16Dot dot, expert::Int8Dot i8, store::StoreConfig const& store) const {
        std::int64_t const E = static_cast<std::int64_t>(local_.size()), d = cfg_.hidden_size;
        expert::SwiGLUConfig routed{d, cfg_.intermediate_size, E, dot, i8, store, cfg_.activation, cfg_.weight_on_input};
        expert::SwiGLUConfig shared{d, cfg_.shared_intermediate_size, 1, dot, i8, {}, cfg_.activation, false};
        return {routed, shared};
    }
    expert::GluBiases biases() const {
        if (b1_.empty()) return {};
        std::int64_t const E = static_cast<std::int64_t>(local_.size()), d = cfg_.hidden_size, f = cfg_.intermediate_size;
        return {MatrixView<float const>(b1_.data(), E, f), MatrixView<float const>(b3_.data(), E, f), MatrixView<float const>(b2_.data(), E, d)};
    }

    // Builds layer_ in format_ from what locate() found. Defined below the class, not inline, with forward():
    // the twelve layer types' code, which SMOE_HF_MOE_EXTERN keeps out of every translation unit but one.
    void build_layer(Options const& opt);
    void build_quant(Options const& opt);

    struct Quantized {
        std::vector<std::int8_t> q[kSlots];
        std::vector<float> s[kSlots];
    };
    // Each stacked [E, out, in] tensor is E·out output channels of `in` weights.
    static Quantized quantize(std::vector<float> (&store)[kSlots], expert::SwiGLUConfig const& routed, expert::SwiGLUConfig const& shared) {
        Quantized q;
        for (int slot = 0; slot < kSlots; ++slot) {
            if (store[slot].empty()) continue;
            auto const& c = slot < s1 ? routed : shared;
            std::int64_t const in = (slot == w2 || slot == s2) ? c.intermediate_size : c.hidden_size;
            std::int64_t const rows = static_cast<std::int64_t>(store[slot].size()) / in;
            auto r = quantize_int8_per_channel(MatrixView<float const>(store[slot].data(), rows, in));
            q.q[slot] = std::move(r.q);
            q.s[slot] = std::move(r.s);
        }
        return q;
    }

    template <class W>
    std::vector<W> (&storage())[kSlots] {
        if constexpr (std::is_same_v<W, bf16>)
            return bf16_;
        else
            return f32_;
    }

    // DeepSeek-V4's gate.tid2eid [vocab, k], I64 (HF's buffer) or I32: every row k distinct ids in [0, E),
    // held to that here so that a bad file is named by its tensor; then the router::Hash over it.
    void read_hash_table(TensorInfo const* t) {
        std::int64_t const E = cfg_.num_experts(), k = cfg_.top_k();
        std::string const what = "tensor " + io::detail::quoted(t->name);
        if (t->dtype != Dtype::I64 && t->dtype != Dtype::I32) io::detail::file_fail(source_, what + " dtype", std::string(dtype_name(t->dtype)), "I64 or I32");
        if (t->shape.size() != 2 || t->shape[0] < 1 || t->shape[1] != k)
            io::detail::file_fail(source_, what + " shape", shape_text(t->shape),
                                  "[vocab, " + std::to_string(k) + "] (k = " + std::string(cfg_.keys.top_k) + ")");
        std::int64_t const V = t->shape[0];
        hash_table_.resize(static_cast<std::size_t>(V * k));
        for (std::int64_t i = 0; i < V * k; ++i) {
            std::int64_t v = 0;
            if (t->dtype == Dtype::I64) {
                std::memcpy(&v, t->bytes.data() + i * 8, 8);
            } else {
                std::int32_t v32 = 0;
                std::memcpy(&v32, t->bytes.data() + i * 4, 4);
                v = v32;
            }
            std::int32_t const* row = hash_table_.data() + (i / k) * k;
            if (v < 0 || v >= E || std::find(row, row + i % k, static_cast<std::int32_t>(v)) != row + i % k)
                io::detail::file_fail(source_, what + " at token id " + std::to_string(i / k) + ", slot " + std::to_string(i % k), v,
                                      "distinct expert ids in [0, " + std::to_string(E) + ") per row");
            hash_table_[static_cast<std::size_t>(i)] = static_cast<std::int32_t>(v);
        }
        hash_.emplace(router::HashConfig{.num_experts = E, .top_k = k, .vocab_size = V, .tid2eid = hash_table_,
                                         .score_func = cfg_.router.score_func, .norm_topk_prob = cfg_.router.norm_topk_prob,
                                         .routed_scaling_factor = cfg_.router.routed_scaling_factor, .norm_eps = cfg_.router.norm_eps});
        route_ws_.resize(hash_->workspace_size(max_tokens_) + 64);
    }

    template <TensorSource S>
    TensorInfo const* find_or_fail(S const& src, std::string const& name, char const* what) const {
        auto const* t = src.find(name);
        if (!t) missing(name, what);
        return t;
    }
    // The held experts by their model ids: the file's layer finds them among its records' ids (a whole
    // model's file, or a rank's own from pack_hf_layers' experts; another rank's fails naming both id
    // lists), after its model expert count is the config's.
    std::vector<std::int64_t> packed_experts(store::PackedFile const& f) const {
        auto const& l = f.layer(layer_index_);
        if (l.model_experts != cfg_.num_experts())
            io::detail::file_fail(f.name(), "layer " + std::to_string(layer_index_) + " model_experts", l.model_experts,
                                  "the config's num_experts " + std::to_string(cfg_.num_experts()));
        return local_;
    }
    [[noreturn]] void missing(std::string const& name, char const* what) const {
        io::detail::file_fail(source_, "tensor " + io::detail::quoted(name), "missing",
                  std::string(what) + " of decoder layer " + std::to_string(layer_index_) + " (" + to_string(cfg_.family) + ")");
    }

    HfMoeConfig cfg_;
    std::int64_t layer_index_ = 0;
    std::string source_, prefix_;
    WeightFormat format_ = WeightFormat::f32;
    bool all_bf16_ = false;
    bool quant_ = false, any_quantized_ = false;  // a QuantSwiGLU layer; some expert matrix stored quantised
    using FormatLists = std::pair<std::vector<quant::Format>, std::vector<quant::Format>>;  // gate/up, down
    std::vector<std::array<QuantMatrixPlan, 3>> qplans_;  // per local expert: gate, up, down
    std::optional<std::array<QuantMatrixPlan, 3>> qshared_;
    FormatLists routed_fmt_, shared_fmt_;
    bool fused_transposed_ = false, fused_interleaved_ = false;
    TensorInfo const* fused_gate_up_ = nullptr;
    TensorInfo const* fused_down_ = nullptr;
    TensorInfo const* dbrx_up_ = nullptr;
    std::optional<GptOssExpertsPlan> gpt_oss_plan_;
    std::optional<Llama4Fp8ExpertsPlan> llama4_plan_;
    std::vector<std::array<TensorInfo const*, 3>> experts_;
    std::array<TensorInfo const*, 3> shared_{};

    Maker maker_;
    std::vector<std::int64_t> local_;  // global ids of the routed experts held, in local order
    std::vector<float> gate_, bias_, shared_gate_;
    std::vector<float> gate_bias_, out_bias_;  // GPT-OSS router bias [E]; JetMoE output bias [d]
    std::vector<float> b1_, b3_, b2_;          // GPT-OSS expert biases of the held experts: [E_local, f], [.., f], [.., d]
    // Routers that run in forward, before the layer takes their routing (forward_routed), with these
    // buffers (max_tokens_ rows): PhiMoE's sparsemixer, DeepSeek-V4's hash layers (table: a view of hash_table_).
    std::optional<router::SparseMixer> mixer_;
    bool hash_layer_ = false;
    std::vector<std::int32_t> hash_table_;
    std::optional<router::Hash> hash_;
    std::vector<float> route_logits_, route_w_;
    std::vector<std::int32_t> route_ids_;
    std::vector<std::byte> route_ws_;
    std::int64_t max_tokens_ = 0;
    std::vector<float> f32_[kSlots];
    std::vector<bf16> bf16_[kSlots];
    std::variant<std::unique_ptr<Plain<float>>, std::unique_ptr<SharedGated<float>>, std::unique_ptr<SharedPlain<float>>,
                 std::unique_ptr<Plain<bf16>>, std::unique_ptr<SharedGated<bf16>>, std::unique_ptr<SharedPlain<bf16>>,
                 std::unique_ptr<Plain<std::int8_t>>, std::unique_ptr<SharedGated<std::int8_t>>, std::unique_ptr<SharedPlain<std::int8_t>>,
                 std::unique_ptr<QuantPlain>, std::unique_ptr<QuantSharedGated>, std::unique_ptr<QuantSharedPlain>>
        layer_;
};

template <class Maker>
RoutingResult BasicHfMoeLayer<Maker>::forward(MatrixView<float const> x, MatrixView<float> y, TokenIds token_ids) {
    RoutingResult r = mixer_ || hash_ ? forward_own_router(x, y, token_ids)
                                      : std::visit([&](auto& l) -> RoutingResult { return l->forward(x, y); }, layer_);
    if (!out_bias_.empty())  // JetMoE: after the combine (and the shared expert), as HF adds it
        for (std::int64_t t = 0; t < y.rows; ++t)
            for (std::int64_t i = 0; i < y.cols; ++i) y(t, i) += out_bias_[static_cast<std::size_t>(i)];
    return r;
}

// PhiMoE and DeepSeek-V4's hash layers: logits = x · gateᵀ (fp32), router::SparseMixer or router::Hash
// (by token id), then the layer on that routing (forward_routed).
template <class Maker>
RoutingResult BasicHfMoeLayer<Maker>::forward_own_router(MatrixView<float const> x, MatrixView<float> y, TokenIds token_ids) {
    std::int64_t const T = x.rows, E = cfg_.num_experts(), d = cfg_.hidden_size, k = own_router_k();
    if (T > max_tokens_) smoe::detail::fail("x.rows", T, "at most options.max_tokens (" + std::to_string(max_tokens_) + ")");
    smoe::detail::check_view(x, "x", -1, d);
    MatrixView<float> const logits(route_logits_.data(), T, E);
    kernels::cpu::gemm_nt(xsimd::default_arch{}, x, MatrixView<float const>(gate_.data(), E, d), logits);
    MatrixView<std::int32_t> const ids(route_ids_.data(), T, k);
    MatrixView<float> const w(route_w_.data(), T, k);
    Workspace ws(route_ws_);
    if (mixer_)
        mixer_->route(xsimd::default_arch{}, MatrixView<float const>(logits), {}, TokenMajorOut{ids, w}, ws);
    else
        hash_->route(xsimd::default_arch{}, MatrixView<float const>(logits), {}, TokenMajorOut{ids, w}, ws, RouterControl{}, token_ids);
    return std::visit(
        [&](auto& l) -> RoutingResult {
            if constexpr (requires { l->forward_routed(x, MatrixView<std::int32_t const>(ids), MatrixView<float const>(w), y); })
                return l->forward_routed(x, MatrixView<std::int32_t const>(ids), MatrixView<float const>(w), y);
            else
                smoe::detail::fail("family", mixer_ ? "phimoe" : "deepseek_v4 (hash_moe layer)",
                                   "smoe::MoELayer (this layer type takes no precomputed routing)");
        },
        layer_);
}

template <class Maker>
void BasicHfMoeLayer<Maker>::build_layer(Options const& opt) {
    if (quant_)
        build_quant(opt);
    else if (format_ == WeightFormat::bf16)
        build<bf16>(opt);
    else if (format_ == WeightFormat::int8)
        build<std::int8_t>(opt);
    else
        build<float>(opt);
}

template <class Maker>
void BasicHfMoeLayer<Maker>::build_quant(Options const& opt) {
    std::int64_t const d = cfg_.hidden_size, fs = cfg_.shared_intermediate_size;
    // Read and decoded one expert at a time while QuantSwiGLU packs (never after construction).
    auto weights = [](std::vector<std::array<QuantMatrixPlan, 3>> const& plans, FormatLists const& fmt) {
        expert::QuantSwiGLUWeights w;
        w.gate_up = fmt.first;
        w.down = fmt.second;
        w.load = [&plans, gu = fmt.first, dn = fmt.second](std::int64_t e) {
            auto const i = static_cast<std::size_t>(e);
            auto const& p = plans[i];
            return expert::QuantExpertWeights{read_matrix(p[0], gu[i]), read_matrix(p[1], gu[i]), read_matrix(p[2], dn[i])};
        };
        return w;
    };
    auto routed_weights = [&] {
        expert::QuantSwiGLUWeights w;
        if (opt.packed) {
            w.packed = {opt.packed, layer_index_, packed_experts(*opt.packed)};
        } else if (gpt_oss_plan_) {  // GPT-OSS's stacked MXFP4 experts, read one at a time
            w.gate_up = routed_fmt_.first;
            w.down = routed_fmt_.second;
            w.load = [this](std::int64_t e) { return read_gpt_oss_expert(*gpt_oss_plan_, local_[static_cast<std::size_t>(e)]); };
        } else if (llama4_plan_) {  // Llama 4's stacked FP8 experts, read one at a time
            w.gate_up = routed_fmt_.first;
            w.down = routed_fmt_.second;
            w.load = [this](std::int64_t e) { return read_llama4_fp8_expert(*llama4_plan_, local_[static_cast<std::size_t>(e)]); };
        } else {
            w = weights(qplans_, routed_fmt_);
        }
        w.bias = biases();
        return w;
    };
    std::vector<std::array<QuantMatrixPlan, 3>> shared_plans;
    if (qshared_) shared_plans.push_back(*qshared_);
    auto const cfgs = expert_configs(opt.bf16_dot, opt.int8_dot, opt.store);
    expert::SwiGLUConfig const& routed = cfgs.first;
    expert::SwiGLUConfig const& shared = cfgs.second;
    MatrixView<float const> const gate(gate_.data(), cfg_.router.num_logits(), d);
    if (fs == 0) {
        using M = QuantPlain;
        layer_ = maker_.template make<M>(typename M::Config{.router = cfg_.router, .expert = routed, .max_tokens = opt.max_tokens},
                                         typename M::Weights{gate, bias_, routed_weights(), gate_bias_});
    } else if (cfg_.shared_gated) {
        using M = QuantSharedGated;
        layer_ = maker_.template make<M>(
            typename M::Config{.router = cfg_.router, .expert = {routed, shared, cfg_.shared_scale}, .max_tokens = opt.max_tokens},
            typename M::Weights{gate, bias_,
                                {routed_weights(), weights(shared_plans, shared_fmt_), MatrixView<float const>(shared_gate_.data(), 1, d)}, gate_bias_});
    } else {
        using M = QuantSharedPlain;
        layer_ = maker_.template make<M>(
            typename M::Config{.router = cfg_.router, .expert = {routed, shared, cfg_.shared_scale}, .max_tokens = opt.max_tokens},
            typename M::Weights{gate, bias_, {routed_weights(), weights(shared_plans, shared_fmt_), {}}, gate_bias_});
    }
}

using HfMoeLayer = BasicHfMoeLayer<>;

// An engine (or this project's build) that includes this header in several translation units defines
// SMOE_HF_MOE_EXTERN in all of them and `template class smoe::io::BasicHfMoeLayer<smoe::io::LocalLayers>;`
// in one (cmake/smoe_hf_moe_instance.cpp): the layers' code is then compiled once, not once per unit.
#ifdef SMOE_HF_MOE_EXTERN
extern template class BasicHfMoeLayer<LocalLayers>;
#endif

}  // namespace smoe::inline v0::io
