#pragma once
// smoe::io::pack_hf_layers: the routed experts of a Hugging Face checkpoint's MoE layers written into
// a packed expert file (store/packed_file.hpp), one expert at a time: each is loaded through
// HfMoeLayer (the same tensor names, checks and formats as a model load) as a layer of its own, packed
// and written, so the peak memory is about one expert (fused and DBRX stacks are read one expert's
// slice at a time). smoe-pack is this function's tool.
//
//   auto cfg = smoe::io::read_hf_config(dir / "config.json");
//   auto ckpt = smoe::io::Checkpoint::open(dir);
//   smoe::store::PackedWriter out("model.smoe");
//   smoe::io::pack_hf_layers(cfg, ckpt, smoe::io::moe_layers(cfg), out, {.format = smoe::io::WeightFormat::int8}, dir.string());
//   out.finish();
//
// Options are HfMoeLayer's: format (f32, bf16, int8 quantise at load, int4 with int4_group: the
// QuantSwiGLU kind; a quantised checkpoint keeps its formats), bf16_dot and int8_dot (they choose the
// panel layout, so a reader must resolve them the same way).

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "smoe/io/hf_moe.hpp"
#include "smoe/store/pack_experts.hpp"

namespace smoe::inline v0::io {

namespace detail {

// BasicHfMoeLayer's Maker for packing: routed expert `expert` alone, no router around it.
struct OneExpertLayers {
    std::int64_t expert = 0;
    template <class Expert>
    struct layer {
        using Config = MoEConfig<router::TopK, Expert, balance::None>;
        using Weights = MoEWeights<Expert>;
        layer(Config const& c, Weights const& w) : x(c.expert, w.experts) {}
        Expert const& experts() const { return x; }
        Expert x;
    };
    std::vector<std::int64_t> experts(std::int64_t) const { return {expert}; }
    template <class L>
    std::unique_ptr<L> make(typename L::Config const& c, typename L::Weights const& w) const {
        return std::make_unique<L>(c, w);
    }
};

}  // namespace detail

// The same from a source per expert: source_of(layer, e) returns a TensorSource (by value or
// reference) holding at least expert e's tensors and the layer's router, read before the next call.
// An engine that generates or downloads its weights one expert at a time (demo_engine --write-model)
// writes a model larger than memory this way. experts: the model's experts to pack, strictly
// increasing (a rank of an expert-parallel layer packs its own, as its placement lists them); the file
// records their ids, by which HfMoeLayer finds them (a rank reading another rank's file fails by name);
// empty: all.
template <class SourceOf>
void pack_hf_experts(HfMoeConfig const& cfg, std::span<std::int64_t const> layers, store::PackedWriter& out, HfMoeLayer::Options const& opt,
                     std::string const& source_name, SourceOf&& source_of, std::span<std::int64_t const> experts = {}) {
    using One = BasicHfMoeLayer<detail::OneExpertLayers>;
    One::Options o;
    o.max_tokens = 1;
    o.format = opt.format;
    o.int4_group = opt.int4_group;
    o.bf16_dot = opt.bf16_dot;
    o.int8_dot = opt.int8_dot;
    // A routed expert's record does not depend on the shared expert: not read (nor packed) once per
    // routed expert.
    HfMoeConfig routed = cfg;
    routed.shared_intermediate_size = 0;
    for (std::size_t i = 0; i < experts.size(); ++i)
        if (experts[i] < (i == 0 ? 0 : experts[i - 1] + 1) || experts[i] >= cfg.num_experts())
            smoe::detail::fail("experts[" + std::to_string(i) + "]", experts[i],
                               "an expert of the model in [" + std::to_string(i == 0 ? 0 : experts[i - 1] + 1) + ", " +
                                   std::to_string(cfg.num_experts()) + ") (strictly increasing)");
    std::int64_t const n = experts.empty() ? cfg.num_experts() : static_cast<std::int64_t>(experts.size());
    for (std::int64_t layer : layers)
        store::add_layer_streaming(out, layer, n, [&](std::int64_t i, auto&& sink) {
            std::int64_t const e = experts.empty() ? i : experts[static_cast<std::size_t>(i)];
            decltype(auto) src = source_of(layer, e);
            auto m = One::load(routed, src, layer, o, source_name, detail::OneExpertLayers{e});
            m.visit([&](auto& l) {
                auto const& x = l.experts();
                if constexpr (requires { x.routed(); })
                    sink(x.routed());
                else
                    sink(x);
            });
        }, experts, cfg.num_experts());
}

template <TensorSource S>
void pack_hf_layers(HfMoeConfig const& cfg, S const& src, std::span<std::int64_t const> layers, store::PackedWriter& out,
                    HfMoeLayer::Options const& opt, std::string const& source_name, std::span<std::int64_t const> experts = {}) {
    pack_hf_experts(cfg, layers, out, opt, source_name, [&](std::int64_t, std::int64_t) -> S const& { return src; }, experts);
}

// The decoder layers of cfg that are MoE layers.
inline std::vector<std::int64_t> moe_layers(HfMoeConfig const& cfg) {
    std::vector<std::int64_t> v;
    for (std::int64_t l = 0; l < cfg.num_hidden_layers; ++l)
        if (cfg.is_moe_layer(l)) v.push_back(l);
    return v;
}

}  // namespace smoe::inline v0::io
