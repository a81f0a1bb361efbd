#pragma once
// smoe::layer::Chain<Router, Expert, Balancer>: Chain-of-Experts (research.md §1). C routed passes over
// one expert set, each with its own gate, the next pass routing on the previous pass's output:
//
//   x⁽⁰⁾ = x
//   for t = 1 .. C:
//       ℓ⁽ᵗ⁾ = G_t · x⁽ᵗ⁻¹⁾                          G_t [E, d]; G_1 for every t with independent_gates = false
//       (S_t, w_t) = router(ℓ⁽ᵗ⁾)                    default: softmax, top-k, no renormalisation, × 1
//       x⁽ᵗ⁾ = I_r · x⁽ᵗ⁻¹⁾ + Σ_(e∈S_t) w_(t,e) f_e(x⁽ᵗ⁻¹⁾) + Σ_s g_s(x⁽ᵗ⁻¹⁾) f^sh_s(x⁽ᵗ⁻¹⁾)
//   y = x⁽ᶜ⁾ (output state)   or   y = x⁽ᶜ⁾ − x⁽⁰⁾ (output delta)
//
// I_r is 1 with inner_residual. The routed and shared experts are the same in every pass; shared
// experts (expert::Shared) apply to each pass's input, as the released code does (§10.2). The host
// owns the decoder's residual (§10.1): the released model outputs the state and adds no residual.
//
// Paper: Zihan Wang, Rui Pan, Jiarui Yao, Róbert Csordás, Linjie Li, Lu Yin, Jiajun Wu, Tong Zhang,
// Manling Li, Shiwei Liu, "Chain-of-Experts: Unlocking the Communication Power of Mixture-of-Experts
// Models", arXiv 2506.18945 (2025); code ZihanWang314/CoE (CoeMoE, MoEGate). Its main setting, C = 2
// passes of k = 4 of 64 experts, evaluates as many experts per token as top-8 MoE.
//
// Composition: C MoELayer<Router, expert::Borrowed<Expert>, Balancer> that differ only in their gate
// (and their balancer, so statistics and a dropping balancer apply per pass: a token may lose an
// expert in one pass only) and share one Expert, packed once. forward() runs the passes in sequence on
// two fp32 [T, d] buffers; nothing is rounded between passes. The cost is C × (gate + routing + k
// experts) per token, strictly in sequence: at T = 1 the latency of C dependent expert passes.
//
//   using Chain = smoe::layer::Chain<smoe::router::TopK, smoe::expert::SwiGLU<float>, smoe::balance::None>;
//   std::array gates{g1, g2};                                    // MatrixView<float const> [E, d] each
//   Chain chain({.router = {.num_experts = 64, .top_k = 4}, .expert = {d, f, 64}, .num_iterations = 2},
//               {.gates = gates, .experts = smoe::expert::SwiGLUWeights<float>::dense(w1, w3, w2, ec)});
//   chain.forward(x, y);                 // chain.stats(t): pass t's load; Σ_t routed[e]: evaluations of e
//
// Worked example (research.md §1): d = 3, f = 2, E = 4 formula experts, one formula shared expert
// (e = 4), k = 2, C = 2, independent gates, inner residual, softmax top-2 without renormalisation,
// G_t[e][j] = ((3e + 2j + 5(t − 1)) mod 7 − 3) / 4. Token x0 = [1, −0.5, 0.25] selects [2, 3] in
// pass 1 and [0, 1] in pass 2: y = [0.91457, −0.601943, 0.447606] (delta: [−0.0854297, −0.101943,
// 0.197606]); x1 = [−1, 0.5, 2] selects [3, 0] then [1, 3]: y = [−1.2329, 0.693573, 2.30977]. With
// one shared gate x0 selects [2, 3] twice: y = [0.850081, −0.575641, 0.494084].

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "smoe/core/error.hpp"
#include "smoe/core/limits.hpp"
#include "smoe/core/routing.hpp"
#include "smoe/core/thread_pool.hpp"
#include "smoe/core/view.hpp"
#include "smoe/core/workspace.hpp"
#include "smoe/expert/borrowed.hpp"
#include "smoe/layer.hpp"

namespace smoe::inline v0::layer {

// What Chain returns: x⁽ᶜ⁾ ("state", the released model) or x⁽ᶜ⁾ − x⁽⁰⁾ ("delta", for h + Δ hosts).
enum class ChainOutput { state, delta };

template <class Router, class Expert, class Balancer, class Backend = backend::Cpu<>>
class Chain {
public:
    using pass_type = MoELayer<Router, expert::Borrowed<Expert>, Balancer, Backend>;

    struct Config {
        typename Router::Config router{};     // the router of every pass (research.md: softmax top-k, no renormalisation)
        typename Expert::Config expert{};
        typename Balancer::Config balance{};  // each pass gets its own balancer with this config
        std::int64_t num_iterations = 2;      // C >= 1
        bool independent_gates = true;        // false: G_1 in every pass (the paper's weaker ablation)
        bool inner_residual = true;           // I_r
        ChainOutput output = ChainOutput::state;
        std::int64_t max_tokens = 256;
    };
    struct Weights {
        std::span<MatrixView<float const> const> gates;  // C gates [E, d] (independent_gates), else 1
        typename Expert::Weights experts{};
        std::span<float const> expert_bias{};            // optional selection bias [E], every pass
    };

    Chain(Config const& cfg, Weights const& w) : cfg_(cfg), experts_(std::make_unique<Expert>(cfg.expert, w.experts)) {
        detail::require_in_range("num_iterations", cfg.num_iterations, 1, limits::kMaxLayers, "smoe::limits::kMaxLayers");
        auto const C = static_cast<std::size_t>(cfg.num_iterations);
        std::size_t const want = cfg.independent_gates ? C : 1;
        if (w.gates.size() != want)
            detail::fail("gates", std::to_string(w.gates.size()) + " gate tensors",
                         cfg.independent_gates ? std::to_string(C) + " (one per iteration: independent_gates is true)"
                                               : std::string("1 (independent_gates is false)"));
        passes_.reserve(C);
        for (std::size_t t = 0; t < C; ++t) {
            std::string const name = "gates[" + std::to_string(cfg.independent_gates ? t : 0) + "]";
            auto const gate = w.gates[cfg.independent_gates ? t : 0];
            detail::check_view(gate, name.c_str(), -1, experts_->hidden_size());
            // The chain carves every pass's workspace from its own, so a pass keeps none.
            passes_.emplace_back(typename pass_type::Config{.router = cfg.router, .balance = cfg.balance, .max_tokens = cfg.max_tokens,
                                                            .own_workspace = false},
                                 typename pass_type::Weights{.gate = gate, .expert_bias = w.expert_bias, .experts = {experts_.get()}});
        }
        buffer_ = WorkspaceBuffer(workspace_size());
    }

    Config const& config() const { return cfg_; }
    Expert const& experts() const { return *experts_; }
    std::int64_t num_iterations() const { return cfg_.num_iterations; }
    std::int64_t hidden_size() const { return experts_->hidden_size(); }
    // Pass t (0-based): its router, balancer and load statistics (balance.md §6).
    pass_type& pass(std::int64_t t) { return passes_.at(static_cast<std::size_t>(t)); }
    pass_type const& pass(std::int64_t t) const { return passes_.at(static_cast<std::size_t>(t)); }
    LoadStats const& stats(std::int64_t t) const { return pass(t).stats(); }

    template <ThreadPool P>
    void set_thread_pool(P& pool) {
        for (auto& p : passes_) p.set_thread_pool(pool);
    }
    void clear_thread_pool() {
        for (auto& p : passes_) p.clear_thread_pool();
    }

    // Two [T, d] fp32 buffers and one workspace per pass, so every pass's RoutingResult stays readable.
    std::size_t workspace_size() const {
        WorkspaceSize size;
        carve(size, cfg_.max_tokens);
        return required_bytes(size.bytes());
    }

    // x [T, d] -> y [T, d] (y may alias x). per_pass, when not empty, holds C results that receive each
    // pass's routing (views into `workspace`).
    void forward(MatrixView<float const> x, MatrixView<float> y, std::span<std::byte> workspace,
                 std::span<RoutingResult> per_pass = {}) {
        std::int64_t const d = hidden_size(), C = cfg_.num_iterations;
        detail::check_view(x, "x", -1, d);
        detail::check_view(y, "y", x.rows, d);
        if (x.rows > cfg_.max_tokens)
            detail::fail("x.rows", x.rows, "at most max_tokens = " + std::to_string(cfg_.max_tokens) + " tokens");
        if (!per_pass.empty() && static_cast<std::int64_t>(per_pass.size()) != C)
            detail::fail("per_pass", std::to_string(per_pass.size()) + " results", "empty or num_iterations = " + std::to_string(C));
        std::int64_t const T = x.rows;
        Workspace ws(workspace);
        MatrixView<float> const buf[2] = {MatrixView<float>(ws.take<float>(static_cast<std::size_t>(T * d)).data(), T, d),
                                          MatrixView<float>(ws.take<float>(static_cast<std::size_t>(T * d)).data(), T, d)};
        MatrixView<float const> in = x;
        for (std::int64_t t = 0; t < C; ++t) {
            MatrixView<float> const out = buf[t % 2];
            RoutingResult const r = run_pass(t, in, out, ws.take<std::byte>(pass_bytes()));
            if (!per_pass.empty()) per_pass[static_cast<std::size_t>(t)] = r;
            if (cfg_.inner_residual)
                for (std::int64_t i = 0; i < T; ++i)
                    for (std::int64_t c = 0; c < d; ++c) out(i, c) += in(i, c);
            in = out;
        }
        for (std::int64_t i = 0; i < T; ++i)
            for (std::int64_t c = 0; c < d; ++c) y(i, c) = cfg_.output == ChainOutput::delta ? in(i, c) - x(i, c) : in(i, c);
    }

    void forward(MatrixView<float const> x, MatrixView<float> y, std::span<RoutingResult> per_pass = {}) {
        forward(x, y, buffer_.bytes(), per_pass);
    }

private:
    std::size_t pass_bytes() const { return passes_.front().workspace_size(); }

    template <class Alloc>
    void carve(Alloc& a, std::int64_t T) const {
        auto const n = static_cast<std::size_t>(T * hidden_size());
        a.template take<float>(n);
        a.template take<float>(n);
        for (std::int64_t t = 0; t < cfg_.num_iterations; ++t) a.template take<std::byte>(pass_bytes());
    }

    // One pass; a bad input found inside it (a non-finite logit, ...) is reported with the pass.
    RoutingResult run_pass(std::int64_t t, MatrixView<float const> in, MatrixView<float> out, std::span<std::byte> ws) {
        try {
            return passes_[static_cast<std::size_t>(t)].forward(in, out, ws);
        } catch (invalid_argument const& e) {
            throw invalid_argument(e.argument() + " (chain iteration " + std::to_string(t + 1) + " of " +
                                       std::to_string(cfg_.num_iterations) + ")",
                                   e.value(), e.expected());
        }
    }

    Config cfg_;
    std::unique_ptr<Expert> experts_;  // on the heap: the passes point at it, and the chain stays movable
    std::vector<pass_type> passes_;
    WorkspaceBuffer buffer_;
};

}  // namespace smoe::inline v0::layer
