#pragma once
// smoe::expert::Film<Inner>: FiLM experts with constant modulation on one shared FFN (research.md §5.1,
// completing experts.md §11's sketch; Zhang et al., "Efficient Deweather Mixture-of-Experts with
// Uncertainty-aware Feature-wise Linear Modulation", AAAI 2024, MoFME).
//
//   f_e(x) = W2 (γ_e ⊙ h(x) + β_e)        h(x): the Inner FFN's hidden; SwiGLU: silu(W1 x) ⊙ W3 x
//
// One FFN (the Inner with num_experts = 1) and 2f parameters per expert: film_gamma, film_beta [E, f].
// run(e, rows, w) computes w · f_e per slot, as every expert does (k hidden evaluations per token); the
// paper's saving (one hidden per token, Σ_j w_j f_(e_j) = W2 (Γ ⊙ h + B) with Γ = Σ w_j γ_(e_j),
// B = Σ w_j β_(e_j)) is the composition layer::FilmMerged (layer/film_merged.hpp), which agrees with this
// form within experts.md §9's bound, not bit for bit (another summation order).
//
// Example (research.md §5.1): d = 3, f = 2, E = 3, k = 2; the shared FFN is formula expert 0;
// γ = [[0.5, 1], [0.75, 1.25], [1, 1.5]], β = [[−0.25, −0.125], [0.125, 0.25], [−0.125, 0]]; softmax
// top-2 renormalised with gate [[−1, 0, 1], [−0.5, 0.5, −1], [0, 1, −0.5]]. x0 = [1, −0.5, 0.25] takes
// [2, 0] 0.531209, 0.468791 and gives y = [0.101978, 0.0293892, −0.0431997].
//
//   using F = smoe::expert::Film<smoe::expert::SwiGLU<float>>;
//   F::Weights w{.inner = SwiGLUWeights<float>::dense(w1, w3, w2, {d, f, 1}), .gamma = g, .beta = b};
//   smoe::MoELayer<smoe::router::TopK, F, smoe::balance::None> layer({..., .expert = {{d, f, 1}, E}}, {gate, {}, w});

#include <cmath>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "smoe/core/error.hpp"
#include "smoe/core/limits.hpp"
#include "smoe/core/view.hpp"
#include "smoe/core/workspace.hpp"
#include "smoe/expert/swiglu_store.hpp"

namespace smoe::inline v0::expert {

template <class InnerConfig>
struct FilmConfig {
    InnerConfig inner{};            // the shared FFN; its num_experts must be 1
    std::int64_t num_experts = 0;   // E, 1 <= E <= limits::kMaxExperts
};

template <class InnerWeights>
struct FilmWeights {
    InnerWeights inner{};
    MatrixView<float const> gamma;  // film_gamma [E, f]
    MatrixView<float const> beta;   // film_beta [E, f]
};

// Inner: a two-phase expert (SwiGLU, QuantSwiGLU: run_gate_up / run_down over its hidden).
template <class Inner>
class Film {
public:
    using Config = FilmConfig<typename Inner::Config>;
    using Weights = FilmWeights<typename Inner::Weights>;
    static constexpr bool is_compute_free = false;
    static constexpr std::int64_t kRowBlock = Inner::kRowBlock;

    Film(Config const& cfg, Weights const& w) : cfg_(cfg), inner_(checked(cfg).inner, w.inner) {
        std::int64_t const E = cfg_.num_experts, f = inner_.intermediate_size();
        auto const take = [&](MatrixView<float const> m, char const* name, std::vector<float>& dst) {
            smoe::detail::check_view(m, name, E, f);
            dst.assign(static_cast<std::size_t>(E * inner_.hidden_stride()), 0.0f);  // padded columns stay 0
            for (std::int64_t e = 0; e < E; ++e)
                for (std::int64_t j = 0; j < f; ++j) {
                    float const v = m(e, j);
                    if (!std::isfinite(v))
                        smoe::detail::fail(name, smoe::detail::to_text(v) + " at expert " + std::to_string(e) + ", column " + std::to_string(j),
                                           "finite values");
                    dst[static_cast<std::size_t>(e * inner_.hidden_stride() + j)] = v;
                }
        };
        take(w.gamma, "film_gamma", gamma_);
        take(w.beta, "film_beta", beta_);
    }

    Config const& config() const { return cfg_; }
    Inner const& inner() const { return inner_; }
    std::int64_t num_experts() const { return cfg_.num_experts; }
    std::int64_t hidden_size() const { return inner_.hidden_size(); }
    std::int64_t intermediate_size() const { return inner_.intermediate_size(); }
    std::int64_t hidden_stride() const { return inner_.hidden_stride(); }
    std::int64_t gate_up_panels() const { return inner_.gate_up_panels(); }
    std::int64_t down_panels() const { return inner_.down_panels(); }

    std::size_t workspace_size(std::int64_t max_rows) const { return detail::phased_workspace_size(*this, max_rows); }

    // γ_e and β_e, hidden_stride() floats each (zero past f).
    float const* gamma(std::int64_t e) const { return gamma_.data() + e * hidden_stride(); }
    float const* beta(std::int64_t e) const { return beta_.data() + e * hidden_stride(); }

    // slot_out[r] = row_w[r] · W2 (γ_e ⊙ h(rows_in[r]) + β_e): the Inner's gate/up, the modulation, its down.
    template <class Arch>
    void run(Arch arch, std::int64_t e, MatrixView<float const> rows_in, std::span<float const> row_w, MatrixView<float> slot_out,
             Workspace& ws) const {
        std::int64_t const S = hidden_stride();
        float const* g = gamma(e);
        float const* b = beta(e);
        detail::run_phased(inner_, arch, 0, rows_in, row_w, slot_out, ws, [&](MatrixView<float> h, std::int64_t) {
            for (std::int64_t r = 0; r < h.rows; ++r) {
                float* hr = h.row(r);
                for (std::int64_t j = 0; j < S; ++j) hr[j] = std::fma(g[j], hr[j], b[j]);
            }
        });
    }

private:
    static Config const& checked(Config const& cfg) {
        smoe::detail::require_in_range("num_experts", cfg.num_experts, 1, limits::kMaxExperts, "smoe::limits::kMaxExperts");
        if (cfg.inner.num_experts != 1)
            smoe::detail::fail("inner.num_experts", cfg.inner.num_experts, "1 (FiLM experts share one FFN)");
        return cfg;
    }

    Config cfg_;
    Inner inner_;
    std::vector<float> gamma_, beta_;  // [E, hidden_stride], zero past f
};

}  // namespace smoe::inline v0::expert
