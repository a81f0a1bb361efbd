#pragma once
// smoe::layer::FilmMerged<Inner>: FiLM experts (research.md §5.1) in their efficient form, one hidden
// per token. Since W2 is linear,
//
//   Σ_j w_j f_(e_j)(x) = W2 (Γ ⊙ h(x) + B),   Γ = Σ_j w_j γ_(e_j),  B = Σ_j w_j β_(e_j)
//
// so the layer routes (router::TopK on gate · x), sums Γ and B over each token's slots (slot order), and
// runs the shared FFN once per token: 3·d·f multiply-adds per token whatever k, against k times that
// for MoELayer<Router, expert::Film<Inner>> (the per-slot form, which agrees within experts.md §9's bound,
// not bit for bit). This is what makes MoFME's "39 % of inference time" saving possible.
//
// Example (research.md §5.1): x0 takes [2, 0] 0.531209, 0.468791, so Γ = [0.765605, 1.2656],
// B = [−0.183599, −0.0585988] and y = [0.101978, 0.0293892, −0.0431997], as the per-slot form.
//
//   smoe::layer::FilmMerged<smoe::expert::SwiGLU<float>> film({.router = ..., .expert = {{d, f, 1}, E}}, {gate, film_weights});
//   film.forward(x, y);

#include <algorithm>
#include <cstdint>
#include <span>
#include <string>

#include "smoe/backend/cpu.hpp"
#include "smoe/core/error.hpp"
#include "smoe/core/limits.hpp"
#include "smoe/core/routing.hpp"
#include "smoe/core/view.hpp"
#include "smoe/core/workspace.hpp"
#include "smoe/expert/film.hpp"
#include "smoe/kernels/cpu/gemm_nt.hpp"
#include "smoe/layer.hpp"
#include "smoe/route.hpp"
#include "smoe/router/topk.hpp"

namespace smoe::inline v0::layer {

template <class Inner, class Backend = backend::Cpu<>>
class FilmMerged {
    using arch = typename smoe::detail::arch_of<Backend>::type;

public:
    using Expert = expert::Film<Inner>;
    struct Config {
        router::TopKConfig router{};
        typename Expert::Config expert{};
        std::int64_t max_tokens = 256;
    };
    struct Weights {
        MatrixView<float const> gate;  // [E, d]
        typename Expert::Weights experts{};
    };

    FilmMerged(Config const& cfg, Weights const& w) : cfg_(cfg), router_(cfg.router), film_(cfg.expert, w.experts), gate_(w.gate) {
        smoe::detail::require_in_range("max_tokens", cfg_.max_tokens, 0, limits::kMaxTokens, "smoe::limits::kMaxTokens");
        if (router_.num_experts() != film_.num_experts())
            smoe::detail::fail("router.num_experts", router_.num_experts(), "the experts' num_experts (" + std::to_string(film_.num_experts()) + ")");
        smoe::detail::check_view(gate_, "gate", router_.num_logits(), film_.hidden_size());
        buffer_ = WorkspaceBuffer(workspace_size());
    }

    Expert const& experts() const { return film_; }

    std::size_t workspace_size() const {
        WorkspaceSize size;
        carve(size, cfg_.max_tokens);
        return required_bytes(size.bytes());
    }

    // x [T, d] -> y [T, d]. The result's views point into the workspace.
    RoutingResult forward(MatrixView<float const> x, MatrixView<float> y, std::span<std::byte> workspace) {
        std::int64_t const T = x.rows, d = film_.hidden_size(), S = film_.hidden_stride();
        smoe::detail::check_view(x, "x", -1, d);
        smoe::detail::check_view(y, "y", T, d);
        if (T > cfg_.max_tokens) smoe::detail::fail("x.rows", T, "at most max_tokens = " + std::to_string(cfg_.max_tokens) + " tokens");
        Workspace ws(workspace);
        Buffers const b = carve(ws, T);
        kernels::cpu::gemm_nt(arch{}, x, gate_, b.logits);
        RoutingResult const r = smoe::route<arch>(router_, MatrixView<float const>(b.logits), {}, b.routing);
        std::fill(b.ones.begin(), b.ones.end(), 1.0f);
        Workspace ews(b.expert);
        expert::detail::run_phased(film_.inner(), arch{}, 0, x, std::span<float const>(b.ones), y, ews, [&](MatrixView<float> h, std::int64_t r0) {
            for (std::int64_t i = 0; i < h.rows; ++i) {
                std::int64_t const t = r0 + i;
                std::fill(b.gamma.begin(), b.gamma.end(), 0.0f);
                std::fill(b.beta.begin(), b.beta.end(), 0.0f);
                for (std::int64_t j = 0; j < r.k; ++j) {
                    std::int32_t const e = r.expert_ids(t, j);
                    if (e < 0) continue;
                    float const w = r.expert_weights(t, j);
                    float const* g = film_.gamma(e);
                    float const* be = film_.beta(e);
                    for (std::int64_t c = 0; c < S; ++c) {
                        b.gamma[static_cast<std::size_t>(c)] = std::fma(w, g[c], b.gamma[static_cast<std::size_t>(c)]);
                        b.beta[static_cast<std::size_t>(c)] = std::fma(w, be[c], b.beta[static_cast<std::size_t>(c)]);
                    }
                }
                float* hr = h.row(i);
                for (std::int64_t c = 0; c < S; ++c) hr[c] = std::fma(b.gamma[static_cast<std::size_t>(c)], hr[c], b.beta[static_cast<std::size_t>(c)]);
            }
        });
        return r;
    }

    RoutingResult forward(MatrixView<float const> x, MatrixView<float> y) { return forward(x, y, buffer_.bytes()); }

private:
    struct Buffers {
        MatrixView<float> logits;
        std::span<std::byte> routing, expert;
        std::span<float> ones, gamma, beta;
    };

    template <class Alloc>
    Buffers carve(Alloc& a, std::int64_t T) const {
        Buffers b;
        b.logits = MatrixView<float>(a.template take<float>(static_cast<std::size_t>(T * router_.num_logits())).data(), T, router_.num_logits());
        b.routing = a.template take<std::byte>(routing_workspace_size(router_, T));
        b.expert = a.template take<std::byte>(film_.workspace_size(T));
        b.ones = a.template take<float>(static_cast<std::size_t>(T));
        b.gamma = a.template take<float>(static_cast<std::size_t>(film_.hidden_stride()));
        b.beta = a.template take<float>(static_cast<std::size_t>(film_.hidden_stride()));
        return b;
    }

    Config cfg_;
    router::TopK router_;
    Expert film_;
    MatrixView<float const> gate_;
    WorkspaceBuffer buffer_;
};

}  // namespace smoe::inline v0::layer
