#pragma once
// smoe::layer::Recurrent<Router, Expert, Balancer>: an RMoE layer (research.md §2). gate::Recurrent
// computes ℓ from (x, the state of the previous MoE layer) and updates the state; the router selects on
// ℓ; the experts run on x:
//
//   ℓ_l = Q_l · cell(P_l · x_l, h_(l−1))        (S, w) = router(ℓ_l)        y_l = Σ_(e∈S) w_e f_e(x_l)
//
// The routing, balancer (statistics and losses on ℓ), dispatch, experts and combine are MoELayer's
// (forward_logits: the layer holds no linear gate). Default router of the released code: softmax top-k
// renormalised (router::TopKConfig{.norm_topk_prob = true}); any router with its keys is accepted.
//
//   smoe::gate::RecurrentCell cell({.hidden_size = 256}, gru_weights);       // one per model
//   smoe::gate::RouterState state(max_tokens, cell);                         // one per forward pass
//   using Layer = smoe::layer::Recurrent<smoe::router::TopK, smoe::expert::SwiGLU<float>, smoe::balance::None>;
//   Layer moe({.router = {.num_experts = 8, .top_k = 2, .norm_topk_prob = true}, .expert = ec}, cell,
//             {.gate = {.weight1 = P, .weight2 = Q}, .experts = experts});
//   state.reset(T);                                    // before the first MoE layer of the pass
//   for (auto& layer : moe_layers) layer.forward(x_l, y_l, state);
//
// Paper, math, cost and worked example: smoe/gate/recurrent.hpp.

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>

#include "smoe/core/error.hpp"
#include "smoe/core/routing.hpp"
#include "smoe/core/thread_pool.hpp"
#include "smoe/core/view.hpp"
#include "smoe/core/workspace.hpp"
#include "smoe/gate/recurrent.hpp"
#include "smoe/layer.hpp"

namespace smoe::inline v0::layer {

template <class Router, class Expert, class Balancer, class Backend = backend::Cpu<>>
class Recurrent {
    using arch = typename detail::arch_of<Backend>::type;

public:
    using moe_type = MoELayer<Router, Expert, Balancer, Backend>;
    struct Config {
        typename Router::Config router{};
        typename Expert::Config expert{};
        typename Balancer::Config balance{};
        std::int64_t max_tokens = 256;
        std::int64_t layer_index = 0;  // the layer's index in the model, for error messages
    };
    struct Weights {
        gate::Recurrent::Weights gate{};
        typename Expert::Weights experts{};
        std::span<float const> expert_bias{};
    };

    Recurrent(Config const& cfg, gate::RecurrentCell const& cell, Weights const& w)
        : cfg_(cfg),
          moe_({.router = cfg.router, .expert = cfg.expert, .balance = cfg.balance, .max_tokens = cfg.max_tokens,
                .own_workspace = false},  // carved from the composition's
               {.gate = {}, .expert_bias = w.expert_bias, .experts = w.experts}),
          gate_(cell, moe_.router().num_logits(), moe_.hidden_size(), w.gate) {
        buffer_ = WorkspaceBuffer(workspace_size());
    }

    Config const& config() const { return cfg_; }
    moe_type& moe() { return moe_; }
    moe_type const& moe() const { return moe_; }
    gate::Recurrent const& gate() const { return gate_; }
    LoadStats const& stats() const { return moe_.stats(); }
    std::int64_t hidden_size() const { return moe_.hidden_size(); }
    template <ThreadPool P>
    void set_thread_pool(P& pool) { moe_.set_thread_pool(pool); }

    std::size_t workspace_size() const {
        WorkspaceSize size;
        carve(size, cfg_.max_tokens);
        return required_bytes(size.bytes());
    }

    // x [T, d] -> y [T, d]; state: h of the previous MoE layer (reset: zero), this layer's on return.
    RoutingResult forward(MatrixView<float const> x, MatrixView<float> y, gate::RouterState& state, std::span<std::byte> workspace) {
        detail::check_view(x, "x", -1, hidden_size());
        if (x.rows > cfg_.max_tokens)
            detail::fail("x.rows", x.rows, "at most max_tokens = " + std::to_string(cfg_.max_tokens) + " tokens");
        Workspace ws(workspace);
        Buffers b = carve(ws, x.rows);
        MatrixView<float> const logits(b.logits.data(), x.rows, gate_.num_logits());
        try {
            gate_.logits(arch{}, x, state, logits, b.gate);
            return moe_.forward_logits(x, logits, y, b.moe);
        } catch (invalid_argument const& e) {
            throw invalid_argument(e.argument() + " (recurrent router, MoE layer " + std::to_string(cfg_.layer_index) + ")", e.value(),
                                   e.expected());
        }
    }

    RoutingResult forward(MatrixView<float const> x, MatrixView<float> y, gate::RouterState& state) {
        return forward(x, y, state, buffer_.bytes());
    }

private:
    struct Buffers {
        std::span<float> logits;
        Workspace gate;
        std::span<std::byte> moe;
    };
    template <class Alloc>
    Buffers carve(Alloc& a, std::int64_t T) const {
        Buffers b;
        b.logits = a.template take<float>(static_cast<std::size_t>(T * gate_.num_logits()));
        b.gate = a.take_bytes(gate_.workspace_size(T));
        b.moe = a.template take<std::byte>(moe_.workspace_size());
        return b;
    }

    Config cfg_;
    moe_type moe_;
    gate::Recurrent gate_;
    WorkspaceBuffer buffer_;
};

}  // namespace smoe::inline v0::layer
