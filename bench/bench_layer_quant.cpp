// QuantSwiGLU's layers for the layer benchmark (bench_layer.cpp, which runs them): int4 g128
// symmetric (smoe's quantiser), fp8 e4m3 in 128 x 128 blocks and MXFP4 (layer/rtn_quant.hpp's
// round-to-nearest) and int8 per channel (int8q), each quantised at load from bench_data.hpp's fp32
// weights. One MoELayer type for every format, instantiated here only (layer/layer_set.hpp).

#include <cstdint>
#include <cstring>
#include <memory>
#include <span>
#include <thread>
#include <vector>

#include <smoe/smoe.hpp>

#include "bench_data.hpp"
#include "layer/layer_set.hpp"
#include "layer/limits.hpp"
#include "layer/rtn_quant.hpp"

namespace {

using smoe::MatrixView;
using smoe_bench::Shape;

// QuantSwiGLU's layers: every expert quantised once from the fp32 stream (generated one expert at a
// time, so the fp32 tensors never exist whole) into canonical form, which every copy packs from.
struct QuantLayerCopies final : smoe_bench::LayerSet {
    using Layer = smoe::MoELayer<smoe::router::TopK, smoe::expert::QuantSwiGLU, smoe::balance::None>;
    Shape s;
    Layer::Config cfg;
    std::unique_ptr<float[]> router_src;
    std::vector<smoe::expert::QuantExpertWeights> experts;
    std::vector<std::unique_ptr<float[]>> routers;
    std::vector<std::unique_ptr<Layer>> layers;

    QuantLayerCopies(Shape const& shape, smoe::quant::Format const& fmt, bool int8_dot, bool bf16_dot, std::int64_t max_tokens)
        : s(shape) {
        using namespace smoe_bench;
        auto const d = std::size_t(s.d), f = std::size_t(s.f), E = std::size_t(s.E), fd = f * d;
        router_src = stream(E * d, kKeyRouter, kWeightSd);
        experts.resize(E);
        // Both cores, an expert each: quantising mixtral's 1.4 G weights on one takes tens of seconds.
        auto part = [&](std::size_t e0, std::size_t step) {
            std::unique_ptr<float[]> buf(new float[fd]);
            for (std::size_t e = e0; e < E; e += step) {
                auto one = [&](std::uint64_t key, std::int64_t R, std::int64_t C) {
                    fill(buf.get(), fd, e * fd, key, kWeightSd);  // W[e] of the [E, R, C] stream
                    return rtn_quantize(MatrixView<float const>(buf.get(), R, C), fmt);
                };
                experts[e] = {one(kKeyW1, s.f, s.d), one(kKeyW3, s.f, s.d), one(kKeyW2, s.d, s.f)};
            }
        };
        std::thread other(part, 1, 2);
        part(0, 2);
        other.join();
        cfg.router = smoe::router::TopKConfig{.num_experts = s.E, .top_k = s.k, .norm_topk_prob = true};
        cfg.expert = {s.d, s.f, s.E};
        if (int8_dot) cfg.expert.int8_dot = smoe::expert::Int8Dot::on;
        if (bf16_dot) cfg.expert.bf16_dot = smoe::expert::Bf16Dot::on;
        cfg.max_tokens = max_tokens;
        add_copy();
        expert_bytes = layers[0]->experts().weight_bytes(0);
        packed_bytes = double(layers[0]->experts().packed_bytes());
        workspace_bytes = layers[0]->workspace_size();
    }
    std::size_t size() const override { return layers.size(); }
    void add_copy() override {
        std::size_t const n = std::size_t(s.E * s.d);
        routers.emplace_back(new float[n]);
        std::memcpy(routers.back().get(), router_src.get(), n * sizeof(float));
        Layer::Weights w;
        w.gate = MatrixView<float const>(routers.back().get(), s.E, s.d);
        w.experts = smoe::expert::QuantSwiGLUWeights::of(experts);
        layers.push_back(std::make_unique<Layer>(cfg, w));  // packs its own copy of the experts
    }
    smoe::RoutingResult forward(std::size_t i, MatrixView<float const> x, MatrixView<float> y,
                                std::span<std::byte> ws) override {
        return layers[i]->forward(x, y, ws);
    }
    void set_pool(smoe::DefaultThreadPool* pool) override {
        for (auto& l : layers) {
            if (pool) l->set_thread_pool(*pool);
            else l->clear_thread_pool();
        }
    }
};

smoe::quant::Format quant_format(smoe_bench::LayerFormat f) {
    using smoe_bench::LayerFormat;
    switch (f) {
        case LayerFormat::int4:
        case LayerFormat::int4d: return smoe::quant::Format::int4(128);
        case LayerFormat::fp8:
        case LayerFormat::fp8b: return smoe::quant::Format::fp8_block(128, 128);
        case LayerFormat::mxfp4:
        case LayerFormat::mxfp4b:
        case LayerFormat::mxfp4d: return smoe::quant::Format::mxfp4();
        default: return smoe::quant::Format::int8_channel();
    }
}

}  // namespace

std::unique_ptr<smoe_bench::LayerSet> smoe_bench::make_quant_layer_set(Shape const& s, LayerFormat f, std::int64_t max_tokens) {
    return std::make_unique<QuantLayerCopies>(s, quant_format(f), smoe_bench::info(f).int8_dot, smoe_bench::info(f).bf16_dot, max_tokens);
}
