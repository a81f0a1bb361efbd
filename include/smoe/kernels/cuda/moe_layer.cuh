#pragma once
// MoELayer<router::TopK, expert::SwiGLU<W>, balance::None, backend::Cuda<Sm>>: the layer of
// smoe/layer.hpp on an NVIDIA GPU, W = float, smoe::bf16 (format::Bf16, the CPU's spelling) or
// __nv_bfloat16 (the same bits) for weights, activations and output.
//
// A partial specialisation of smoe::MoELayer on the backend, so an engine switches backends by
// changing one template argument. It lives apart from layer.hpp because layer.hpp and the CPU
// policies pull xsimd, which never enters a .cu file: the policy types are only named here (forward
// declarations), their configs (xsimd-free headers) are what the GPU code reads.
//
//   using Layer = smoe::MoELayer<smoe::router::TopK, smoe::expert::SwiGLU<smoe::bf16>,
//                                smoe::balance::None, smoe::backend::Cuda<90>>;
//   Layer layer({.router = smoe::router::TopKConfig::olmoe(), .expert = {2048, 1024, 64}, .max_tokens = 4096},
//               {.gate = gate_dev, .experts = smoe::expert::SwiGLUWeights<smoe::bf16>::dense(w1, w3, w2, ecfg)});
//   // once: cudaMalloc(&ws, layer.workspace_size());
//   smoe::cuda::DeviceRouting r = layer.forward(x_dev, y_dev, {ws, layer.workspace_size()}, stream);
//
// Every pointer is device memory. forward enqueues work on `stream` and returns: no allocation, no
// host synchronisation, no host read of device data, so it can be captured into a CUDA graph (the
// graph then replays with the shapes of the captured call). Argument errors throw
// smoe::invalid_argument before anything is enqueued; a failed launch throws cuda_error.

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <type_traits>

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include "smoe/backend/cuda.hpp"
#include "smoe/core/bf16.hpp"
#include "smoe/core/error.hpp"
#include "smoe/core/routing.hpp"
#include "smoe/core/view.hpp"
#include "smoe/core/workspace.hpp"
#include "smoe/expert/swiglu_config.hpp"
#include "smoe/kernels/cuda/combine.cuh"
#include "smoe/kernels/cuda/common.cuh"
#include "smoe/kernels/cuda/dispatch.cuh"
#include "smoe/kernels/cuda/gate.cuh"
#include "smoe/kernels/cuda/grouped_swiglu.cuh"
#include "smoe/kernels/cuda/plan.cuh"
#include "smoe/kernels/cuda/routing_topk.cuh"
#include "smoe/router/topk_config.hpp"

namespace smoe::inline v0 {

namespace router {
class TopK;
}
namespace expert {
template <class W>
class SwiGLU;
}
namespace balance {
class None;
}

template <class Router, class Expert, class Balancer, class Backend>
class MoELayer;

namespace cuda {

// One call's routing, in device memory carved from the caller's workspace (valid until the workspace
// is reused). The same fields as RoutingResult (routing.md §1); copy them to the host after the
// stream completes to inspect them.
struct DeviceRouting {
    std::int64_t num_tokens = 0, num_experts = 0, k = 0;
    std::int32_t const* offsets = nullptr;     // [E+1]
    std::int32_t const* token_ids = nullptr;   // [nnz]
    float const* weights = nullptr;            // [nnz]
    std::int32_t const* slots = nullptr;       // [nnz] token-major slot of each CSR row
    std::int32_t const* expert_ids = nullptr;  // [T, K]
    float const* expert_weights = nullptr;     // [T, K]
    float const* logits = nullptr;             // [T, E] the gate projection routed on (null from forward_routed)
    // Rows with a non-finite logit: routed nowhere (zero output). The CPU router throws instead; a
    // kernel cannot without a host synchronisation, so the caller checks this after the stream.
    std::int32_t const* nonfinite_rows = nullptr;
};

}  // namespace cuda

namespace detail {

template <class X>
struct cuda_swiglu_weight {
    static constexpr bool ok = false;
    using type = float;
};
template <class W>
struct cuda_swiglu_weight<expert::SwiGLU<W>> {
    static constexpr bool ok = std::is_same_v<W, float> || std::is_same_v<W, bf16> || std::is_same_v<W, __nv_bfloat16>;
    using type = W;
};

// The element type the kernels compute on: smoe::bf16 is the upper half of an fp32, bit for bit an
// __nv_bfloat16, so its device arrays are read as such.
template <class W>
struct cuda_kernel_type {
    using type = W;
};
template <>
struct cuda_kernel_type<bf16> {
    using type = __nv_bfloat16;
};
static_assert(sizeof(bf16) == sizeof(__nv_bfloat16) && alignof(bf16) <= alignof(__nv_bfloat16));

inline bool aligned16(void const* p) { return reinterpret_cast<std::uintptr_t>(p) % 16 == 0; }

}  // namespace detail

template <class Router, class Expert, class Balancer, int Sm>
class MoELayer<Router, Expert, Balancer, backend::Cuda<Sm>> {
    static_assert(std::is_same_v<Router, router::TopK>,
                  "smoe::MoELayer<..., smoe::backend::Cuda<Sm>>: the CUDA backend routes with smoe::router::TopK "
                  "only (softmax/sigmoid, bias, groups, renormalisation, scaling); the other routers run on the CPU "
                  "backend");
    static_assert(detail::cuda_swiglu_weight<Expert>::ok,
                  "smoe::MoELayer<..., smoe::backend::Cuda<Sm>>: the CUDA backend's Expert is "
                  "smoe::expert::SwiGLU<float>, smoe::expert::SwiGLU<smoe::bf16> or smoe::expert::SwiGLU<__nv_bfloat16>");
    static_assert(std::is_same_v<Balancer, balance::None>,
                  "smoe::MoELayer<..., smoe::backend::Cuda<Sm>>: the CUDA backend is dropless "
                  "(smoe::balance::None); capacity and bias balancers run on the CPU backend");

public:
    using router_type = Router;
    using expert_type = Expert;
    using balancer_type = Balancer;
    using backend_type = backend::Cuda<Sm>;
    using value_type = typename detail::cuda_swiglu_weight<Expert>::type;  // weights, x and y
    using kernel_type = typename detail::cuda_kernel_type<value_type>::type;

    struct Config {
        router::TopKConfig router{};
        expert::SwiGLUConfig expert{};
        std::int64_t max_tokens = 256;  // the workspace is sized once for this many tokens per call
    };

    // Device pointers. gate is fp32 (routing.md §0); expert_bias fp32 [E] or empty. A device-side
    // bias cannot be checked for finiteness on the host; a NaN in it leaves slots empty.
    struct Weights {
        MatrixView<float const> gate;
        std::span<float const> expert_bias;
        expert::SwiGLUWeights<value_type> experts{};
    };

    MoELayer(Config const& cfg, Weights const& w) : cfg_(cfg), w_(w), params_(kernels::cuda::TopKParams::from(cfg.router)) {
        cfg_.expert.validate();
        w_.experts.validate(cfg_.expert);
        // The CUDA kernels compute plain silu(g) · u with the weight on the output and no biases.
        if (!cfg_.expert.plain_activation())
            detail::fail("expert.activation / weight_on_input", "a clamped activation or the weight on the input",
                         "plain SwiGLU on the CUDA backend (the CPU backend computes the others)");
        if (w_.experts.bias.any()) detail::fail("experts.bias", "expert biases", "none on the CUDA backend (the CPU backend adds them)");
        std::int64_t const E = cfg_.router.num_experts, K = cfg_.router.top_k, d = cfg_.expert.hidden_size;
        if (E != cfg_.expert.num_experts)
            detail::fail("router.num_experts", E, "the experts' num_experts (" + std::to_string(cfg_.expert.num_experts) + ")");
        if (cfg_.max_tokens < 0) detail::fail("max_tokens", cfg_.max_tokens, "a count >= 0");
        detail::check_int32_extent(cfg_.max_tokens, K);
        // Grid limits: 65535 blocks in y for the gate (8 tokens per block) and the tile schedule.
        if (kernels::cuda::ceil_div(cfg_.max_tokens, kernels::cuda::kGateTokens) > 65535 ||
            kernels::cuda::max_m_tiles(cfg_.max_tokens * K, E) > 65535)
            detail::fail("max_tokens", cfg_.max_tokens, "at most 65535 row tiles of 64 (about 4 M token-expert pairs) per call");
        if (d > INT32_MAX || cfg_.expert.intermediate_size > INT32_MAX)
            detail::fail("hidden_size", d, "d and f below 2^31");
        if (static_cast<std::size_t>(params_.warp_floats()) * sizeof(float) > kernels::cuda::kRoutingSmemLimit)
            detail::fail("router.num_experts", E, "few enough experts for one warp's scores in 48 KB of shared memory (E <= about 6000)");
        detail::check_view(w.gate, "gate", E, d);
        bool const biased = !w.expert_bias.empty();
        if (biased && static_cast<std::int64_t>(w.expert_bias.size()) != E)
            detail::fail("expert_bias", "length " + std::to_string(w.expert_bias.size()), "length num_experts = " + std::to_string(E));
        if (!biased && cfg_.router.requires_expert_bias)
            detail::fail("expert_bias", "none", "a bias of length " + std::to_string(E) + " (this config requires one)");
        if (biased && cfg_.router.score_after_topk) detail::fail("expert_bias", "a bias", "no bias with score_after_topk");
        if (biased && cfg_.router.n_group > 1 && cfg_.router.group_size() < 2)
            detail::fail("expert_bias", "a bias", "groups of at least 2 experts (num_experts / n_group >= 2)");
    }

    Config const& config() const { return cfg_; }
    std::int64_t hidden_size() const { return cfg_.expert.hidden_size; }
    std::int64_t num_experts() const { return cfg_.router.num_experts; }

    // Bytes of device workspace one call of up to config().max_tokens tokens needs.
    std::size_t workspace_size() const { return kernels::cuda::layer_workspace_size<kernel_type>(dims(cfg_.max_tokens)); }

    // x [T, d] -> y [T, d] on `stream`, T <= max_tokens; all device memory.
    cuda::DeviceRouting forward(MatrixView<value_type const> x, MatrixView<value_type> y, std::span<std::byte> workspace,
                                cudaStream_t stream) const {
        std::int64_t const T = check_io(x, y);
        std::int64_t const E = num_experts(), K = cfg_.router.top_k;
        Workspace ws(workspace);
        auto const b = kernels::cuda::carve_layer<kernel_type>(ws, dims(T));
        start(b, stream);
        kernels::cuda::launch_gate_logits(as_kernel(x.data), x.ld, T, w_.gate.data, w_.gate.ld, E, hidden_size(), b.logits.data(), E,
                                          stream);
        kernels::cuda::launch_topk_route(params_, b.logits.data(), E, T, w_.expert_bias.empty() ? nullptr : w_.expert_bias.data(),
                                         b.expert_ids.data(), b.expert_weights.data(), K,
                                         b.counters.data() + kernels::cuda::kCounterNonFinite, stream);
        run(x, y, b, b.expert_ids.data(), b.expert_weights.data(), T, K, stream);
        return routing(b, b.expert_ids.data(), b.expert_weights.data(), T, K);
    }

    // Precomputed routing from the engine, as the CPU layer's forward_routed: expert_ids /
    // expert_weights [T, K] device arrays, contiguous (ld = K), K <= top_k; id -1 marks an empty slot
    // and each expert appears at most once per token (routing.md §1; device data is not checked: a
    // bad id is skipped, never dereferenced). Runs dispatch, experts and combine. With K = top_k = E
    // it also serves the variable-k routers' kernels (routing_rows.cuh, routing_batch.cuh).
    cuda::DeviceRouting forward_routed(MatrixView<value_type const> x, MatrixView<std::int32_t const> expert_ids,
                                       MatrixView<float const> expert_weights, MatrixView<value_type> y,
                                       std::span<std::byte> workspace, cudaStream_t stream) const {
        std::int64_t const T = check_io(x, y);
        detail::check_view(expert_ids, "expert_ids", T, -1);
        detail::check_view(expert_weights, "expert_weights", T, expert_ids.cols);
        std::int64_t const K = expert_ids.cols;
        if (K > cfg_.router.top_k)
            detail::fail("expert_ids.cols", K, "at most the router's top_k = " + std::to_string(cfg_.router.top_k));
        if (!expert_ids.contiguous() || !expert_weights.contiguous())
            detail::fail("expert_ids.ld", expert_ids.ld, "contiguous rows (ld = cols) for both expert_ids and expert_weights");
        Workspace ws(workspace);
        auto const b = kernels::cuda::carve_layer<kernel_type>(ws, dims(T));
        start(b, stream);
        run(x, y, b, expert_ids.data, expert_weights.data, T, K, stream);
        cuda::DeviceRouting r = routing(b, expert_ids.data, expert_weights.data, T, K);
        r.logits = nullptr;  // nothing was projected or routed
        return r;
    }

private:
    using Buffers = kernels::cuda::LayerBuffers<kernel_type>;

    static kernel_type const* as_kernel(value_type const* p) { return reinterpret_cast<kernel_type const*>(p); }
    static kernel_type* as_kernel(value_type* p) { return reinterpret_cast<kernel_type*>(p); }

    kernels::cuda::LayerDims dims(std::int64_t T) const {
        return {T, cfg_.router.num_experts, cfg_.router.top_k, cfg_.expert.hidden_size, cfg_.expert.intermediate_size};
    }

    std::int64_t check_io(MatrixView<value_type const> x, MatrixView<value_type> y) const {
        std::int64_t const d = hidden_size();
        detail::check_view(x, "x", -1, d);
        detail::check_view(y, "y", x.rows, d);
        if (x.rows > cfg_.max_tokens)
            detail::fail("x.rows", x.rows, "at most max_tokens = " + std::to_string(cfg_.max_tokens) + " tokens");
        return x.rows;
    }

    static void start(Buffers const& b, cudaStream_t stream) {
        cudaError_t const e = cudaMemsetAsync(b.counters.data(), 0, b.counters.size_bytes(), stream);
        if (e != cudaSuccess) throw kernels::cuda::cuda_error(e, "cudaMemsetAsync(counters)");
    }

    // K <= top_k: the buffers are carved for top_k slots per token, the kernels take K.
    void run(MatrixView<value_type const> x, MatrixView<value_type> y, Buffers const& b, std::int32_t const* ids,
             float const* w, std::int64_t T, std::int64_t K, cudaStream_t stream) const {
        std::int64_t const E = num_experts(), d = hidden_size(), f = cfg_.expert.intermediate_size;
        kernels::cuda::launch_dispatch(b, ids, w, T, K, E, stream);

        constexpr std::int64_t V = 16 / sizeof(kernel_type);
        auto const vec = [](void const* p, std::int64_t ld, std::int64_t stride) {
            return detail::aligned16(p) && ld % V == 0 && stride % V == 0;
        };
        auto const& ex = w_.experts;
        kernels::cuda::SwiGLUProblem<kernel_type> p;
        p.x = as_kernel(x.data);
        p.ldx = x.ld;
        p.w1 = as_kernel(ex.w1.data);
        p.ld1 = ex.w1.ld;
        p.stride1 = ex.w1.stride;
        p.w3 = as_kernel(ex.w3.data);
        p.ld3 = ex.w3.ld;
        p.stride3 = ex.w3.stride;
        p.w2 = as_kernel(ex.w2.data);
        p.ld2 = ex.w2.ld;
        p.stride2 = ex.w2.stride;
        p.d = static_cast<int>(d);
        p.f = static_cast<int>(f);
        p.offsets = b.offsets.data();
        p.padded_offsets = b.padded_offsets.data();
        p.token_ids = b.token_ids.data();
        p.weights = b.weights.data();
        p.tile_expert = b.tile_expert.data();
        p.tile_row0 = b.tile_row0.data();
        p.active = b.active.data();
        p.counters = b.counters.data();
        p.hidden = b.hidden.data();
        p.slot_out = b.slot_out.data();
        p.vec_x = vec(x.data, x.ld, 0);
        p.vec_w13 = vec(ex.w1.data, ex.w1.ld, ex.w1.stride) && vec(ex.w3.data, ex.w3.ld, ex.w3.stride);
        p.vec_w2 = vec(ex.w2.data, ex.w2.ld, ex.w2.stride);
        p.vec_h = vec(b.hidden.data(), f, 0);
        kernels::cuda::launch_grouped_swiglu(p, T, K, E, stream);
        kernels::cuda::launch_combine(b.slot_out.data(), b.slot_rows.data(), T, K, d, as_kernel(y.data), y.ld, stream);
    }

    cuda::DeviceRouting routing(Buffers const& b, std::int32_t const* ids, float const* w, std::int64_t T,
                                std::int64_t K) const {
        cuda::DeviceRouting r;
        r.num_tokens = T;
        r.num_experts = num_experts();
        r.k = K;
        r.offsets = b.offsets.data();
        r.token_ids = b.token_ids.data();
        r.weights = b.weights.data();
        r.slots = b.slots.data();
        r.expert_ids = ids;
        r.expert_weights = w;
        r.logits = b.logits.data();
        r.nonfinite_rows = b.counters.data() + kernels::cuda::kCounterNonFinite;
        return r;
    }

    Config cfg_;
    Weights w_;
    kernels::cuda::TopKParams params_;
};

}  // namespace smoe::inline v0
