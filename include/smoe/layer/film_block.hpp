#pragma once
// smoe::layer::FilmBlock: MoFME's MoE block as released (research.md §5.2; Zhang et al., "Efficient
// Deweather Mixture-of-Experts with Uncertainty-aware Feature-wise Linear Modulation", AAAI 2024;
// RoyZry98/MoFME-Pytorch models/moe/film.py Transformer_MoE_FiLM). Per token x [d] (the block input
// after attention, before any norm):
//
//   u = LayerNorm(x)                      affine, eps layer_norm_eps
//   h = GELU(A u + a) ⊙ (B u + b)         the shared basenet, A, B [d, d]; GELU with erf
//   ℓ = R x + r                           the router reads x, not u
//   S = top-k of ℓ, w = softmax over S    (KeepTopK then softmax: router::TopK score_after_topk)
//   m = Σ_(e∈S) w_e g_e(h)                expert::FilmLinear (column 0 = GELU(h) with expert0_gelu)
//   y = U2 GELU(U1 m + c1) + c2           the shared adaptor, U1 [a, d], U2 [d, a], a = 4d by default
//
// forward returns y; the residual x + y is the host's. The experts read h while the router reads x, and
// a nonlinear adaptor follows the mixture, so the block is a composition: the per-token steps here and a
// MoELayer<TopK, FilmLinear, None> without a gate, called with forward_logits(h, ℓ). Training-only: the
// uncertainty-aware router (five router samples); inference uses ℓ as is. Ties keep exactly k experts
// by the tie rule where KeepTopK keeps every logit equal to the k-th (§10.12).
//
// Example (research.md §5.2): d = 3, a = 4, E = 3, k = 2, x0 = [1, −0.5, 0.25]: ℓ = [−0.375, −0.15,
// −0.85], columns [1, 0] with 0.556014, 0.443986, released m = [−0.108365, −0.00258267, 0.185279],
// y = [−0.022124, −0.00658586, 0.0103853].
//
//   smoe::layer::FilmBlock block({.hidden_size = d, .num_experts = E, .top_k = k, .max_tokens = 256}, weights);
//   block.forward(x, y);   // y [T, d]; then x + y

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <span>
#include <string>

#include "smoe/backend/cpu.hpp"
#include "smoe/balance/none.hpp"
#include "smoe/core/error.hpp"
#include "smoe/core/limits.hpp"
#include "smoe/core/view.hpp"
#include "smoe/core/workspace.hpp"
#include "smoe/expert/film_linear.hpp"
#include "smoe/kernels/cpu/gemm_nt.hpp"
#include "smoe/layer.hpp"
#include "smoe/router/topk.hpp"

namespace smoe::inline v0::layer {

struct FilmBlockConfig {
    std::int64_t hidden_size = 0;      // d
    std::int64_t adaptor_size = 0;     // a >= 1; 0 = 4 · hidden_size (the code's mlp_dim)
    std::int64_t num_experts = 0;      // E
    std::int64_t top_k = 0;            // 1 <= k <= E
    float layer_norm_eps = 1e-5f;      // > 0
    bool expert0_gelu = true;          // the released indexing (§10.11)
    std::int64_t max_tokens = 256;     // the workspace is sized once for this many tokens per call

    std::int64_t adaptor() const { return adaptor_size > 0 ? adaptor_size : 4 * hidden_size; }
    void validate() const {
        using smoe::detail::fail;
        smoe::detail::require_in_range("hidden_size", hidden_size, 1, limits::kMaxDimension, "smoe::limits::kMaxDimension");
        smoe::detail::require_in_range("adaptor_size", adaptor_size, 0, limits::kMaxDimension, "smoe::limits::kMaxDimension");
        smoe::detail::require_in_range("num_experts", num_experts, 1, limits::kMaxExperts, "smoe::limits::kMaxExperts");
        if (top_k < 1 || top_k > num_experts) fail("top_k", top_k, "1 <= top_k <= num_experts (" + std::to_string(num_experts) + ")");
        if (!(std::isfinite(layer_norm_eps) && layer_norm_eps > 0.0f)) fail("layer_norm_eps", layer_norm_eps, "a finite eps > 0");
        smoe::detail::require_in_range("max_tokens", max_tokens, 0, limits::kMaxTokens, "smoe::limits::kMaxTokens");
    }
};

// Views of the checkpoint's tensors (decoder layer i of transformer.layers): ln_* = {i}.3.0, A/a =
// {i}.3.1.0.0, B/b = {i}.3.1.1.0, R/r = {i}.1.0, U1/c1 = {i}.2.0, U2/c2 = {i}.2.3, experts = {i}.3.{3+e}.
struct FilmBlockWeights {
    std::span<float const> ln_weight, ln_bias;  // [d]
    MatrixView<float const> A, B;               // [d, d]
    std::span<float const> a, b;                // [d]
    MatrixView<float const> R;                  // [E, d]
    std::span<float const> r;                   // [E]
    MatrixView<float const> U1;                 // [a, d]
    std::span<float const> c1;                  // [a]
    MatrixView<float const> U2;                 // [d, a]
    std::span<float const> c2;                  // [d]
    expert::FilmLinearWeights experts;
};

template <class Backend = backend::Cpu<>>
class FilmBlock {
    using arch = typename smoe::detail::arch_of<Backend>::type;
    using Moe = MoELayer<router::TopK, expert::FilmLinear, balance::None, Backend>;

public:
    using Config = FilmBlockConfig;
    using Weights = FilmBlockWeights;

    FilmBlock(Config const& cfg, Weights const& w) : cfg_(checked(cfg)), w_(w), moe_(moe_config(cfg_), {{}, {}, w.experts}) {
        std::int64_t const d = cfg_.hidden_size, E = cfg_.num_experts, a = cfg_.adaptor();
        using smoe::detail::check_vector;
        using smoe::detail::check_view;
        check_vector(w.ln_weight, d, "ln_weight", "hidden_size", "element");
        check_vector(w.ln_bias, d, "ln_bias", "hidden_size", "element");
        check_view(w.A, "A", d, d);
        check_view(w.B, "B", d, d);
        check_vector(w.a, d, "a", "hidden_size", "element");
        check_vector(w.b, d, "b", "hidden_size", "element");
        check_view(w.R, "R", E, d);
        check_vector(w.r, E, "r", "num_experts", "expert");
        check_view(w.U1, "U1", a, d);
        check_vector(w.c1, a, "c1", "adaptor_size", "element");
        check_view(w.U2, "U2", d, a);
        check_vector(w.c2, d, "c2", "hidden_size", "element");
        buffer_ = WorkspaceBuffer(workspace_size());
    }

    Config const& config() const { return cfg_; }
    Moe const& moe() const { return moe_; }
    LoadStats const& stats() const { return moe_.stats(); }

    std::size_t workspace_size() const {
        WorkspaceSize size;
        carve(size, cfg_.max_tokens);
        size.add<std::byte>(moe_.workspace_size());
        return required_bytes(size.bytes());
    }

    // x [T, d] -> y [T, d] (the block's MoE branch; the host adds x). The result's views point into the workspace.
    RoutingResult forward(MatrixView<float const> x, MatrixView<float> y, std::span<std::byte> workspace) {
        std::int64_t const T = x.rows, d = cfg_.hidden_size;
        smoe::detail::check_view(x, "x", -1, d);
        smoe::detail::check_view(y, "y", T, d);
        if (T > cfg_.max_tokens) smoe::detail::fail("x.rows", T, "at most max_tokens = " + std::to_string(cfg_.max_tokens) + " tokens");
        Workspace ws(workspace);
        Buffers const s = carve(ws, T);
        arch const ar{};
        for (std::int64_t t = 0; t < T; ++t) layer_norm(x.row(t), s.u.row(t));
        kernels::cpu::gemm_nt(ar, MatrixView<float const>(s.u), w_.A, s.ga);
        kernels::cpu::gemm_nt(ar, MatrixView<float const>(s.u), w_.B, s.gb);
        for (std::int64_t t = 0; t < T; ++t) {
            add_bias(s.ga.row(t), w_.a, d);
            expert::detail::gelu(ar, s.ga.row(t), s.ga.row(t), d);
            for (std::int64_t i = 0; i < d; ++i) s.ga(t, i) *= s.gb(t, i) + w_.b[static_cast<std::size_t>(i)];  // h, in place
        }
        kernels::cpu::gemm_nt(ar, x, w_.R, s.logits);
        for (std::int64_t t = 0; t < T; ++t) add_bias(s.logits.row(t), w_.r, cfg_.num_experts);
        RoutingResult const r =
            moe_.forward_logits(MatrixView<float const>(s.ga), MatrixView<float const>(s.logits), s.m, ws.take<std::byte>(moe_.workspace_size()));
        kernels::cpu::gemm_nt(ar, MatrixView<float const>(s.m), w_.U1, s.z);
        for (std::int64_t t = 0; t < T; ++t) {
            add_bias(s.z.row(t), w_.c1, cfg_.adaptor());
            expert::detail::gelu(ar, s.z.row(t), s.z.row(t), cfg_.adaptor());
        }
        kernels::cpu::gemm_nt(ar, MatrixView<float const>(s.z), w_.U2, y);
        for (std::int64_t t = 0; t < T; ++t) add_bias(y.row(t), w_.c2, d);
        return r;
    }

    RoutingResult forward(MatrixView<float const> x, MatrixView<float> y) { return forward(x, y, buffer_.bytes()); }

private:
    struct Buffers {
        MatrixView<float> u, ga, gb, logits, m, z;
    };

    template <class Alloc>
    Buffers carve(Alloc& al, std::int64_t T) const {
        std::int64_t const d = cfg_.hidden_size;
        auto const mat = [&](std::int64_t cols) {
            return MatrixView<float>(al.template take<float>(static_cast<std::size_t>(T * cols)).data(), T, cols);
        };
        Buffers s;
        s.u = mat(d);
        s.ga = mat(d);
        s.gb = mat(d);
        s.logits = mat(cfg_.num_experts);
        s.m = mat(d);
        s.z = mat(cfg_.adaptor());
        return s;
    }

    static void add_bias(float* v, std::span<float const> bias, std::int64_t n) {
        for (std::int64_t i = 0; i < n; ++i) v[i] += bias[static_cast<std::size_t>(i)];
    }

    // torch.nn.LayerNorm: biased variance; mean and variance accumulated in double, one rounding each.
    void layer_norm(float const* x, float* u) const {
        std::int64_t const d = cfg_.hidden_size;
        double mean = 0, var = 0;
        for (std::int64_t i = 0; i < d; ++i) mean += x[i];
        mean /= double(d);
        for (std::int64_t i = 0; i < d; ++i) var += (x[i] - mean) * (x[i] - mean);
        auto const inv = static_cast<float>(1.0 / std::sqrt(var / double(d) + double(cfg_.layer_norm_eps)));
        auto const mu = static_cast<float>(mean);
        for (std::int64_t i = 0; i < d; ++i)
            u[i] = (x[i] - mu) * inv * w_.ln_weight[static_cast<std::size_t>(i)] + w_.ln_bias[static_cast<std::size_t>(i)];
    }

    static Config const& checked(Config const& cfg) {
        cfg.validate();
        return cfg;
    }
    static typename Moe::Config moe_config(Config const& c) {
        typename Moe::Config m;
        m.router = {.num_experts = c.num_experts, .top_k = c.top_k, .score_after_topk = true};
        m.expert = {.hidden_size = c.hidden_size, .num_experts = c.num_experts, .expert0_gelu = c.expert0_gelu};
        m.max_tokens = c.max_tokens;
        m.own_workspace = false;  // carved from the block's
        return m;
    }

    Config cfg_;
    Weights w_;
    Moe moe_;
    WorkspaceBuffer buffer_;
};

}  // namespace smoe::inline v0::layer
