#pragma once
// The layer benchmark's seam between its translation units (bench_layer.cpp runs every benchmark;
// bench_layer_quant.cpp builds QuantSwiGLU's layers): a set of copies of one (shape, format) layer
// behind a virtual interface, so each expert type's MoELayer is instantiated in one TU only and the
// two compile in parallel (QuantSwiGLU's kernels alone take as long as the rest of bench_layer.cpp).

#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>

#include <smoe/smoe.hpp>

#include "bench_data.hpp"
#include "layer/limits.hpp"

namespace smoe_bench {

// The copies of one (shape, format) layer. Benchmarks run in registration order (shape, format,
// protocol, ...), so each set is built once and grown once, from source tensors it keeps until the
// next set replaces it: one copy for the hot protocol, L for the cold.
struct LayerSet {
    virtual ~LayerSet() = default;
    virtual std::size_t size() const = 0;
    virtual void add_copy() = 0;
    virtual smoe::RoutingResult forward(std::size_t i, smoe::MatrixView<float const> x, smoe::MatrixView<float> y,
                                        std::span<std::byte> ws) = 0;
    virtual void set_pool(smoe::DefaultThreadPool* pool) = 0;
    double expert_bytes = 0;  // one expert's bytes as the layer streams them (scales, factor tables included)
    double packed_bytes = 0;  // one copy's packed experts
    std::size_t workspace_bytes = 0;
};

// Experts a call touched: the weight bytes it streamed are these times LayerSet::expert_bytes.
inline std::int64_t distinct_experts(smoe::RoutingResult const& r) {
    std::int64_t n = 0;
    for (std::int64_t e = 0; e < r.num_experts; ++e) n += r.load(e) > 0;
    return n;
}

// One copy of a QuantSwiGLU layer (int4, fp8, mxfp4, int8q: is_quant_swiglu(f)), on bench_data.hpp's
// weights quantised at load; bench_layer_quant.cpp.
std::unique_ptr<LayerSet> make_quant_layer_set(Shape const& s, LayerFormat f, std::int64_t max_tokens);

}  // namespace smoe_bench
