#pragma once
// smoe::layer::SoftMerge<Expert>: SMEAR, soft merging of experts (research.md §3). Per routing group g
// (one sequence, or one token), every expert's parameters are averaged with the router's probabilities
// and the one merged expert runs on the group's tokens:
//
//   ℓ_g = W_r · x̄_g + b_r          x̄_g = the mean of x_t over t ∈ g      (or ℓ_g given by the host)
//   p_g = softmax(ℓ_g) over all E experts
//   W̄1_g = Σ_e p_(g,e) W1_e     W̄3_g = Σ_e p_(g,e) W3_e     W̄2_g = Σ_e p_(g,e) W2_e
//   y_t = W̄2_g (silu(W̄1_g x_t) ⊙ W̄3_g x_t)      for t ∈ g
//
// No top-k: all experts are merged and one expert is evaluated. This is not the output mixture
// Σ_e p_e f_e(x) (the expert is nonlinear). The merge sums in expert order in fp32 from each expert's
// exact fp32 weights (bf16 widened, int8 times its scales) into fp32 panels (expert::SwiGLU::merge);
// the merged expert runs the fp32 tiles of SwiGLU<float> (detail::MergedPanels).
//
// Paper: Mohammed Muqeeth, Haokun Liu, Colin Raffel, "Soft Merging of Experts with Adaptive Routing",
// TMLR 2024 (arXiv 2306.03745); code r-three/smear (adapter_controller_fast.py). The reference merges
// adapters per example and LayerNorms the router's input and columns: a host reproduces it with
// router_input = given (§10.6). Scope token is smoe's addition for decoder-only generation: a
// sequence's mean is not causal.
//
// Cost, and why it is slow where the paper says so: a merge reads every expert's weights and costs
// E·3fd multiply-adds per group, plus 3fd per token for the merged expert. Scope token pays (E + 1)·3fd
// per token against k·3fd for top-k (OLMoE shape: 65 / 8 = 8.1× top-8's FLOPs, and all 64 experts'
// weights streamed per token); scope sequence over S tokens pays (E/S + 1)·3fd per token (S = 512:
// 0.14× top-8). An engine that keeps p fixed (routing given once per request, as the reference's
// decoder) merges once and calls run_merged at every step (merge / run_merged below).
//
//   using Smear = smoe::layer::SoftMerge<smoe::expert::SwiGLU<float>>;
//   Smear smear({.expert = {d, f, E}, .scope = smoe::layer::MergeScope::sequence}, {.gate = w_r, .experts = w});
//   std::array<std::int32_t, 3> offsets{0, 100, 160};                  // two sequences of a batch of 160 tokens
//   smear.forward(x, y, {.sequence_offsets = offsets});
//
// Worked example (research.md §3): d = 3, f = 2, E = 3 formula experts, W_r = [[−1, −0.5, 0], [0, 0.5,
// 1], [1, −1, −0.5]], tokens x0, x1, x2 as one sequence: x̄ = [0.166667, 0.333333, 0.416667],
// p = [0.224209, 0.560733, 0.215059], y(x0) = [0.00470493, −0.00143, −0.00326023] (the output
// mixture would give [0.0406155, −0.0364062, −0.0457026]); scope token: p(x0) = [0.087033, 0.184249,
// 0.728718], y(x0) = [−0.00660576, −0.00360471, −0.0164485].

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>

#include "smoe/backend/cpu.hpp"
#include "smoe/core/error.hpp"
#include "smoe/core/limits.hpp"
#include "smoe/core/thread_pool.hpp"
#include "smoe/core/view.hpp"
#include "smoe/core/workspace.hpp"
#include "smoe/expert/swiglu_store.hpp"
#include "smoe/kernels/cpu/gemm_nt.hpp"
#include "smoe/layer.hpp"

namespace smoe::inline v0::layer {

enum class MergeScope { sequence, token };  // one merged expert per sequence (the paper) or per token
enum class MergeRouting { mean, given };    // gate on the group's mean input, or the host's logits [G, E]

// What one call routes on besides x: the sequences (scope sequence) and the host's logits (given).
struct MergeInput {
    std::span<std::int32_t const> sequence_offsets{};  // [B + 1]: 0 first, T last, non-decreasing
    MatrixView<float const> logits{};                  // [G, E] with router_input given (G = B or T)
    MatrixView<float> probs{};                         // optional out: p [G, E]
};

template <class Expert, class Backend = backend::Cpu<>>
class SoftMerge {
    using arch = typename detail::arch_of<Backend>::type;
    static_assert(requires(Expert const& x, std::span<float const> c, float* m) {
        x.merged_floats();
        x.merge(arch{}, c, m, std::int64_t{}, std::int64_t{});
    }, "smoe::layer::SoftMerge<Expert>: the Expert must merge its parameters linearly (merged_floats() and merge(); "
       "expert::SwiGLU<W> does)");

public:
    struct Config {
        typename Expert::Config expert{};
        MergeScope scope = MergeScope::sequence;
        MergeRouting router_input = MergeRouting::mean;
        std::int64_t max_tokens = 256;
    };
    struct Weights {
        MatrixView<float const> gate{};         // W_r [E, d]; required with router_input mean
        std::span<float const> gate_bias{};     // optional b_r [E]
        typename Expert::Weights experts{};
    };

    SoftMerge(Config const& cfg, Weights const& w) : cfg_(cfg), w_(w), experts_(cfg.expert, w.experts) {
        detail::require_in_range("max_tokens", cfg.max_tokens, 0, limits::kMaxTokens, "smoe::limits::kMaxTokens");
        std::int64_t const E = experts_.num_experts(), d = experts_.hidden_size();
        // The merged expert runs silu(g) · u on panels without biases: a clamped, non-gated (relu²) or biased
        // expert would merge into something else.
        if constexpr (requires { cfg.expert.plain_activation(); w.experts.bias.any(); })
            if (!cfg.expert.plain_activation() || w.experts.bias.any())
                detail::fail("expert.activation", "a clamped, non-gated, input-weighted or biased form", "plain SwiGLU experts to merge");
        if (cfg.router_input == MergeRouting::mean) {
            if (w.gate.data == nullptr) detail::fail("gate", "none", "a router weight [E, d] with router_input mean");
            detail::check_view(w.gate, "gate", E, d);
            if (!w.gate_bias.empty()) detail::check_vector(w.gate_bias, E, "gate_bias", "num_experts", "expert");
        } else if (w.gate.data != nullptr || !w.gate_bias.empty()) {
            detail::fail("gate", "given", "no router weight with router_input given (the host passes the logits)");
        }
        panels_ = {nullptr, d, experts_.gate_up_panels(), experts_.down_panels()};
        buffer_ = WorkspaceBuffer(workspace_size());
    }

    Config const& config() const { return cfg_; }
    Expert const& experts() const { return experts_; }
    std::int64_t num_experts() const { return experts_.num_experts(); }
    std::int64_t hidden_size() const { return experts_.hidden_size(); }
    // Floats of one merged expert (its fp32 panels): the size of an engine's per-sequence cache entry.
    std::int64_t merged_floats() const { return experts_.merged_floats(); }

    // The merge and the merged expert's panels are spread over `pool`; the split never changes a bit.
    template <ThreadPool P>
    void set_thread_pool(P& pool) { pool_ = PoolRef(pool); }
    void clear_thread_pool() { pool_ = PoolRef(); }

    std::size_t workspace_size() const {
        WorkspaceSize size;
        carve(size, cfg_.max_tokens);
        return required_bytes(size.bytes());
    }

    // x [T, d] -> y [T, d] (y may alias x).
    void forward(MatrixView<float const> x, MatrixView<float> y, MergeInput const& in, std::span<std::byte> workspace) {
        std::int64_t const d = hidden_size(), E = num_experts();
        detail::check_view(x, "x", -1, d);
        detail::check_view(y, "y", x.rows, d);
        std::int64_t const T = x.rows;
        if (T > cfg_.max_tokens) detail::fail("x.rows", T, "at most max_tokens = " + std::to_string(cfg_.max_tokens) + " tokens");
        std::int64_t const G = check_groups(in.sequence_offsets, T);
        if (cfg_.router_input == MergeRouting::given) {
            detail::check_view(in.logits, "logits", G, E);
            check_finite(in.logits);
        } else if (in.logits.data != nullptr) {
            detail::fail("logits", "given", "none with router_input mean (the layer's gate computes them)");
        }
        if (in.probs.data != nullptr) detail::check_view(in.probs, "probs", G, E);
        Workspace ws(workspace);
        Buffers b = carve(ws, T);
        for (std::int64_t g = 0; g < G; ++g) {
            std::int64_t const r0 = group_begin(in.sequence_offsets, g), r1 = group_begin(in.sequence_offsets, g + 1);
            if (r0 == r1) {  // an empty sequence: no rows, no merge; p from its given logits if any
                if (in.probs.data != nullptr) std::fill(in.probs.row(g), in.probs.row(g) + E, 0.0f);
                continue;
            }
            if (cfg_.router_input == MergeRouting::given)
                std::copy(in.logits.row(g), in.logits.row(g) + E, b.logits.begin());
            else
                gate_logits(x, r0, r1, b);
            softmax(b);
            if (in.probs.data != nullptr) std::copy(b.probs.begin(), b.probs.end(), in.probs.row(g));
            merge(b.probs, b.merged);
            run_merged(b.merged, x.block(r0, r1 - r0), y.block(r0, r1 - r0), b);
        }
    }

    void forward(MatrixView<float const> x, MatrixView<float> y, MergeInput const& in = {}) { forward(x, y, in, buffer_.bytes()); }

    // The two steps of forward for an engine that caches a merged expert per sequence while p holds:
    // merged [merged_floats()] ← Σ_e p[e] W_e, then y = f_merged(x) as often as needed.
    void merge(std::span<float const> p, std::span<float> merged) const {
        if (static_cast<std::int64_t>(p.size()) != num_experts())
            detail::fail("p", "length " + std::to_string(p.size()), "num_experts = " + std::to_string(num_experts()));
        if (static_cast<std::int64_t>(merged.size()) < merged_floats())
            detail::fail("merged", std::to_string(merged.size()) + " floats", "merged_floats() = " + std::to_string(merged_floats()));
        std::int64_t const n = merged_floats(), parts = pool_.num_threads() > 1 ? 2 * pool_.num_threads() : 1;
        std::int64_t const chunk = ((n + parts - 1) / parts + 15) / 16 * 16;
        pool_.parallel_for((n + chunk - 1) / chunk, [&](std::int64_t i) {
            std::int64_t const b0 = i * chunk, b1 = std::min(n, b0 + chunk);
            experts_.merge(arch{}, p, merged.data() + b0, b0, b1);
        });
    }
    void run_merged(std::span<float const> merged, MatrixView<float const> x, MatrixView<float> y, std::span<std::byte> workspace) const {
        detail::check_view(x, "x", -1, hidden_size());
        detail::check_view(y, "y", x.rows, hidden_size());
        if (x.rows > cfg_.max_tokens) detail::fail("x.rows", x.rows, "at most max_tokens = " + std::to_string(cfg_.max_tokens) + " tokens");
        if (static_cast<std::int64_t>(merged.size()) < merged_floats())
            detail::fail("merged", std::to_string(merged.size()) + " floats", "merged_floats() = " + std::to_string(merged_floats()));
        Workspace ws(workspace);
        run_merged(merged, x, y, carve(ws, x.rows));
    }

private:
    struct Buffers {
        std::span<float> merged, xbar, logits, probs, ones, hidden;
    };
    template <class Alloc>
    Buffers carve(Alloc& a, std::int64_t T) const {
        auto const E = static_cast<std::size_t>(num_experts()), d = static_cast<std::size_t>(hidden_size());
        auto const rows = static_cast<std::size_t>(std::min<std::int64_t>(T, MergedPanels::kRowBlock));
        Buffers b;
        b.merged = a.template take<float>(static_cast<std::size_t>(merged_floats()));
        b.xbar = a.template take<float>(d);
        b.logits = a.template take<float>(E);
        b.probs = a.template take<float>(E);
        b.ones = a.template take<float>(rows);
        b.hidden = a.template take<float>(rows * static_cast<std::size_t>(panels_.hidden_stride()));
        return b;
    }
    using MergedPanels = expert::detail::MergedPanels;

    // Groups: B sequences from the offsets, or one per token.
    std::int64_t check_groups(std::span<std::int32_t const> off, std::int64_t T) const {
        if (cfg_.scope == MergeScope::token) {
            if (!off.empty()) detail::fail("sequence_offsets", "given", "none with scope token (each token is its own group)");
            return T;
        }
        if (off.empty()) detail::fail("sequence_offsets", "none", "[B + 1] offsets with scope sequence");
        if (off.front() != 0) detail::fail("sequence_offsets[0]", off.front(), "0");
        for (std::size_t i = 1; i < off.size(); ++i)
            if (off[i] < off[i - 1])
                detail::fail("sequence_offsets[" + std::to_string(i) + "]", off[i],
                             "non-decreasing offsets (the previous one is " + std::to_string(off[i - 1]) + ")");
        if (off.back() != T)
            detail::fail("sequence_offsets[" + std::to_string(off.size() - 1) + "]", off.back(), "T = " + std::to_string(T) + " (the last offset)");
        return static_cast<std::int64_t>(off.size()) - 1;
    }
    std::int64_t group_begin(std::span<std::int32_t const> off, std::int64_t g) const { return off.empty() ? g : off[static_cast<std::size_t>(g)]; }

    void check_finite(MatrixView<float const> l) const {
        for (std::int64_t g = 0; g < l.rows; ++g)
            for (std::int64_t e = 0; e < l.cols; ++e)
                if (!std::isfinite(l(g, e)))
                    detail::fail("logits", detail::to_text(l(g, e)) + " at group " + std::to_string(g) + ", expert " + std::to_string(e),
                                 "finite logits");
    }

    // ℓ = W_r · mean(x[r0, r1)) + b_r; the mean accumulates in double (a long sequence's fp32 sum would
    // lose bits) and is rounded once.
    void gate_logits(MatrixView<float const> x, std::int64_t r0, std::int64_t r1, Buffers const& b) const {
        std::int64_t const d = hidden_size();
        for (std::int64_t c = 0; c < d; ++c) {
            double s = 0.0;
            for (std::int64_t t = r0; t < r1; ++t) s += x(t, c);
            b.xbar[static_cast<std::size_t>(c)] = static_cast<float>(s / double(r1 - r0));
        }
        MatrixView<float> const l(b.logits.data(), 1, num_experts());
        kernels::cpu::gemm_nt(arch{}, MatrixView<float const>(b.xbar.data(), 1, d), w_.gate, l);
        for (std::size_t e = 0; e < b.logits.size(); ++e) {
            if (!w_.gate_bias.empty()) b.logits[e] += w_.gate_bias[e];
            if (!std::isfinite(b.logits[e]))
                detail::fail("logits", detail::to_text(b.logits[e]) + " at expert " + std::to_string(e) + " of a group starting at token " + std::to_string(r0),
                             "finite logits (W_r · mean(x) + b_r)");
        }
    }

    static void softmax(Buffers const& b) {
        float const m = *std::max_element(b.logits.begin(), b.logits.end());
        float s = 0.0f;
        for (std::size_t e = 0; e < b.logits.size(); ++e) s += (b.probs[e] = std::exp(b.logits[e] - m));
        for (float& p : b.probs) p /= s;
    }

    // y = f_merged(x) in blocks of kRowBlock rows, each phase's panels spread over the pool.
    void run_merged(std::span<float const> merged, MatrixView<float const> x, MatrixView<float> y, Buffers const& b) const {
        MergedPanels ex = panels_;
        ex.panels = merged.data();
        std::fill(b.ones.begin(), b.ones.end(), 1.0f);
        std::int64_t const parts = pool_.num_threads() > 1 ? 2 * pool_.num_threads() : 1;
        for (std::int64_t r0 = 0; r0 < x.rows; r0 += MergedPanels::kRowBlock) {
            std::int64_t const mb = std::min(MergedPanels::kRowBlock, x.rows - r0);
            MatrixView<float> const h(b.hidden.data(), mb, ex.hidden_stride());
            auto spread = [&](std::int64_t panels, auto&& body) {
                std::int64_t const n = std::min(parts, panels);
                pool_.parallel_for(n, [&](std::int64_t i) { body(panels * i / n, panels * (i + 1) / n); });
            };
            spread(ex.gu_panels, [&](std::int64_t p0, std::int64_t p1) { ex.run_gate_up(arch{}, 0, x.block(r0, mb), h, p0, p1); });
            spread(ex.dn_panels, [&](std::int64_t p0, std::int64_t p1) {
                ex.run_down(arch{}, 0, MatrixView<float const>(h), std::span<float const>(b.ones.data(), static_cast<std::size_t>(mb)), y.block(r0, mb), p0, p1);
            });
        }
    }

    Config cfg_;
    Weights w_;
    Expert experts_;
    MergedPanels panels_;
    WorkspaceBuffer buffer_;
    PoolRef pool_;
};

}  // namespace smoe::inline v0::layer
