#pragma once
// smoe::router::Sinkhorn: balanced token choice through Sinkhorn normalisation (routing.md §7;
// S-BASE in Megatron-LM `moe_utils.py` `sinkhorn`, `router.py` `sinkhorn_load_balancing`; BASE Layers,
// Lewis et al. 2021, at inference).
//
// Per batch of T tokens, logits x [T, E]:
//   a = sigmoid(x) if k = 1, softmax(x) if k > 1                      (the activation; the weights)
//   if T >= 2 and max_iterations > 0:
//     K[t, e] = exp(x_te - m_t), m_t the row maximum; d0 = 1 [T], d1 = 1 [E], eps = 1e-8, n = 0
//     repeat d0_t = (1/T) / (Σ_e d1_e K_te + eps); d1_e = (1/E) / (Σ_t d0_t K_te + eps);
//            err = (1/E) Σ_e |d1_e - d1_e(previous)|; n = n + 1
//     until err <= tol or n = max_iterations
//     P[t, e] = d1_e K_te d0_t   (columns sum to ~1/E, rows to ~1/T)
//   else P = a
//   S_t = top-k of P_t (score descending, ties to the lower id); w_te = a_te for e in S_t, not
//   renormalised. The row shift (absent in Megatron) makes logits above 88.7 safe and leaves P
//   unchanged in exact arithmetic; T = 1 skips balancing (a single row balances to 1/E everywhere).
//   The balancing runs in fp32 like Megatron's; the oracle (kernels/reference/sinkhorn.hpp) runs in
//   double and may stop one iteration apart near tol.
//
// Example (routing.md §7): E = 3, T = 4, k = 1, tol 1e-4, logits
//   [[2, 1, 0], [1.8, 0.2, 1], [1.5, 1.4, -1], [1.2, 0, 0.9]] converge after n = 6 iterations and route
//   t0 -> 0 (0.880797), t1 -> 2 (0.731059), t2 -> 1 (0.802184), t3 -> 2 (0.710949); without balancing
//   (`megatron_eval`) every token would go to expert 0.
//
//   smoe::router::Sinkhorn router({.num_experts = 64, .top_k = 2});
//   router.route(arch, logits /*[T, 64]*/, {}, out /*[T, >= 2]*/, workspace);
//   router.last_report().iterations;    // n of that call; last_report().converged: err <= tol reached
//
// Iteration report: route(..., report) writes it to the caller's SinkhornReport and touches nothing
// else, so one router object may serve concurrent calls. The five-argument route() (the RouterPolicy
// form MoELayer and smoe::route call) also stores it in the router for last_report(); that member is
// mutable, so concurrent five-argument calls on one router object are a data race: give each thread
// its own router (it is a small value) or use the overload.

#include <cmath>
#include <cstdint>
#include <span>
#include <string>

#include "smoe/core/error.hpp"
#include "smoe/core/limits.hpp"
#include "smoe/core/routing.hpp"
#include "smoe/core/view.hpp"
#include "smoe/core/workspace.hpp"
#include "smoe/kernels/cpu/finite_check.hpp"
#include "smoe/kernels/cpu/sinkhorn.hpp"
#include "smoe/kernels/cpu/softmax_topk.hpp"
#include "smoe/router/topk_config.hpp"
#include "smoe/router/control.hpp"
#include "smoe/router/router_base.hpp"
#include "smoe/router/route_checks.hpp"

namespace smoe::inline v0::router {

using SinkhornReport = kernels::cpu::SinkhornReport;

// Keys of routing.md §7.
struct SinkhornConfig {
    std::int64_t num_experts = 0;        // E >= 1
    std::int64_t top_k = 0;              // 1 <= k <= E
    double tol = 1e-4;                   // finite, >= 0 (Megatron's default)
    std::int64_t max_iterations = 100;   // 0 <= n <= limits::kMaxSinkhornIterations; 0 disables balancing

    // The activation: sigmoid for k = 1, softmax for k > 1 (Megatron `_sinkhorn_activation`).
    ScoreFunc activation() const { return top_k == 1 ? ScoreFunc::sigmoid : ScoreFunc::softmax; }

    // Throws smoe::invalid_argument naming the key, the value and the valid range.
    void validate() const {
        using smoe::detail::fail;
        smoe::detail::require_in_range("num_experts", num_experts, 1, limits::kMaxExperts, "smoe::limits::kMaxExperts");
        if (top_k < 1 || top_k > num_experts)
            fail("top_k", top_k, "1 <= top_k <= num_experts (" + std::to_string(num_experts) + ")");
        if (!std::isfinite(tol) || !(tol >= 0.0)) fail("tol", tol, "a finite value >= 0");
        // The cap is what bounds a call's time: tol = 0 runs to it (routing.md §7).
        smoe::detail::require_in_range("max_iterations", max_iterations, 0, limits::kMaxSinkhornIterations,
                                       "smoe::limits::kMaxSinkhornIterations; 0 disables balancing");
    }

    // Megatron-LM in evaluation (and BASE Layers' inference with k = 1): no balancing, the top-k of
    // the activation.
    static SinkhornConfig megatron_eval(std::int64_t num_experts, std::int64_t top_k) {
        return {.num_experts = num_experts, .top_k = top_k, .max_iterations = 0};
    }
};

class Sinkhorn : public detail::RouterBase<Sinkhorn, SinkhornConfig> {
public:
    using RouterBase::RouterBase;

    std::int64_t max_slots() const { return cfg_.top_k; }

    // K [max_tokens, E] and the scaling vectors, so route() never allocates.
    std::size_t workspace_size(std::int64_t max_tokens) const {
        WorkspaceSize size;
        kernels::cpu::carve_sinkhorn(size, max_tokens, cfg_.num_experts);
        carve_control(size, max_tokens);
        return size.bytes();
    }

    // The iteration report of the last five-argument route() on this object (see the header comment).
    SinkhornReport const& last_report() const { return last_; }
    std::int64_t last_iterations() const { return last_.iterations; }
    bool last_converged() const { return last_.converged; }

    // logits [T, E]; bias must be empty (Sinkhorn takes none); out [T, >= k]. Returns K = k. Throws on
    // non-finite logits or a bias.
    template <class Arch>
    std::int64_t route(Arch arch, MatrixView<float const> logits, std::span<float const> bias, TokenMajorOut out,
                       Workspace& ws) const {
        return route(arch, logits, bias, out, ws, last_);
    }

    template <class Arch>
    std::int64_t route(Arch arch, MatrixView<float const> logits, std::span<float const> bias, TokenMajorOut out,
                       Workspace& ws, SinkhornReport& report) const {
        std::int64_t const E = cfg_.num_experts, k = cfg_.top_k;
        check_logits(arch, logits, bias);
        std::int64_t const T = logits.rows;
        checks::check_out_shape(out, T, k, "top_k");
        auto const s = kernels::cpu::carve_sinkhorn(ws, T, E);
        report = balance(arch, logits, s);

        if (!report.balanced) {  // P = a: plain top-k of the activation
            TopKConfig const topk{.num_experts = E, .top_k = k, .score_func = cfg_.activation()};
            kernels::cpu::TopKScratch const ts{.score = s.row, .select = {}, .group_val = {}, .group_id = {}};
            for (std::int64_t t = 0; t < T; ++t)
                kernels::cpu::topk_route_row(arch, topk, logits.row(t), nullptr, ts, out.expert_ids.row(t),
                                             out.expert_weights.row(t));
            return k;
        }
        for (std::int64_t t = 0; t < T; ++t) {
            std::int32_t* const ids = out.expert_ids.row(t);
            float* const w = out.expert_weights.row(t);
            float const* p = kernels::cpu::balanced_score_row(arch, s, t);
            kernels::cpu::TopList top{ids, w, k};
            for (std::int64_t e = 0; e < E; ++e) top.offer(p[e], static_cast<std::int32_t>(e));
            activation_at(arch, logits.row(t), s.kernel.data() + t * s.ld, ids, w);
            kernels::cpu::sort_by_weight(ids, w, k);  // the row is ordered by weight, not by P
        }
        return k;
    }

    // Under test-time control (research.md §8): the allowed columns of x + a are balanced on their own
    // (each to 1 / |A|) and select; the boost multiplies the activation (softmax over A, or sigmoid),
    // which gives the weights, and selects only where balancing does not run (a per-expert factor
    // cancels in P). An override token takes the top-k of v ⊙ b over A with those values as weights
    // (the table's formula), while its logits still enter the balancing. Needs |A| >= k.
    template <class Arch>
    std::int64_t route(Arch arch, MatrixView<float const> logits, std::span<float const> bias, TokenMajorOut out,
                       Workspace& ws, RouterControl const& control) const {
        if (control.empty()) return route(arch, logits, bias, out, ws);
        std::int64_t const E = cfg_.num_experts, k = cfg_.top_k;
        check_logits(arch, logits, bias);
        std::int64_t const T = logits.rows;
        checks::check_out_shape(out, T, k, "top_k");
        control::validate(control, E, T, k, "top_k");

        std::int64_t const A = control::allowed_count(control, E);
        auto const s = kernels::cpu::carve_sinkhorn(ws, T, A);
        Control const c = carve_control(ws, T);
        MatrixView<float> const xa(c.logits.data(), T, A);  // x + a over the allowed columns
        for (std::int64_t t = 0; t < T; ++t) {
            float const* xo = control::offset_row(control, logits.row(t), c.row.x.data(), E, t);
            for (std::int64_t e = 0, i = 0; e < E; ++e)
                if (control::allowed(control, e)) xa(t, i++) = xo[e];
        }
        last_ = balance(arch, MatrixView<float const>(xa), s);
        for (std::int64_t t = 0; t < T; ++t) {
            std::int32_t* const ids = out.expert_ids.row(t);
            float* const w = out.expert_weights.row(t);
            float* const a = c.row.score.data();
            float const* v = control::override_row(control, t);
            if (v)
                for (std::int64_t e = 0; e < E; ++e) a[e] = control::allowed(control, e) ? v[e] : 0.0f;
            else
                control::score_row(arch, cfg_.activation(), control,
                                   control::offset_row(control, logits.row(t), c.row.x.data(), E, t), a,
                                   c.row.compact.data(), E);
            control::boost_scores(control, a, E);
            kernels::cpu::TopList top{ids, w, k};
            if (last_.balanced && !v) {
                float const* p = kernels::cpu::balanced_score_row(arch, s, t);
                for (std::int64_t e = 0, i = 0; e < E; ++e)
                    if (control::allowed(control, e)) top.offer(p[i++], static_cast<std::int32_t>(e));
                for (std::int64_t j = 0; j < k; ++j) w[j] = a[ids[j]];
            } else {
                for (std::int64_t e = 0; e < E; ++e)
                    if (control::allowed(control, e)) top.offer(a[e], static_cast<std::int32_t>(e));
            }
            kernels::cpu::sort_by_weight(ids, w, k);
        }
        return k;
    }

    // Diagnostics: the scores selection is made on (routing.md §1), P [T, E] when balancing runs and
    // the activation a otherwise. Same checks, workspace and report as route().
    template <class Arch>
    SinkhornReport balanced_scores(Arch arch, MatrixView<float const> logits, MatrixView<float> scores, Workspace& ws) const {
        std::int64_t const E = cfg_.num_experts;
        check_logits(arch, logits, {});
        std::int64_t const T = logits.rows;
        smoe::detail::check_view(scores, "scores", T, E);
        auto const s = kernels::cpu::carve_sinkhorn(ws, T, E);
        SinkhornReport const report = balance(arch, logits, s);
        for (std::int64_t t = 0; t < T; ++t) {
            float* const out = scores.row(t);
            if (report.balanced) {
                float const* p = kernels::cpu::balanced_score_row(arch, s, t);
                std::copy(p, p + E, out);
            } else if (cfg_.top_k == 1) {
                kernels::cpu::sigmoid_row(arch, logits.row(t), out, E);
            } else {
                kernels::cpu::softmax_row(arch, logits.row(t), out, E);
            }
        }
        return report;
    }

private:
    struct Control {
        std::span<float> logits;  // [T, E] the allowed columns of x + a
        control::RowScratch row;
    };

    template <class Alloc>
    Control carve_control(Alloc& a, std::int64_t T) const {
        Control c;
        c.logits = a.template take<float>(static_cast<std::size_t>(T * cfg_.num_experts));
        c.row = control::carve_row(a, cfg_.num_experts);
        return c;
    }

    template <class Arch>
    void check_logits(Arch arch, MatrixView<float const> logits, std::span<float const> bias) const {
        checks::check_logits_shape(logits, cfg_.num_experts, cfg_.top_k);
        checks::reject_bias(bias, "sinkhorn");
        kernels::cpu::check_finite(arch, logits, "logits");
    }

    template <class Arch>
    SinkhornReport balance(Arch arch, MatrixView<float const> logits, kernels::cpu::SinkhornScratch const& s) const {
        if (logits.rows < 2 || cfg_.max_iterations == 0) return {};
        return kernels::cpu::sinkhorn_balance(arch, logits, cfg_.tol, cfg_.max_iterations, s);
    }

    // w_j = a at the k selected ids. Softmax from the stored K = exp(x - m) with the double
    // denominator of softmax_row, so the weights are bit-equal to the unbalanced path's; the sigmoid
    // through sigmoid_row's SIMD code for the same reason.
    template <class Arch>
    void activation_at(Arch arch, float const* x, float const* kernel_row, std::int32_t const* ids, float* w) const {
        std::int64_t const k = cfg_.top_k;
        if (k == 1) {
            kernels::cpu::sigmoid_row(arch, x + ids[0], w, 1);
            return;
        }
        double z = 0.0;
        for (std::int64_t e = 0; e < cfg_.num_experts; ++e) z += kernel_row[e];
        auto const zf = static_cast<float>(z);
        for (std::int64_t j = 0; j < k; ++j) w[j] = kernel_row[ids[j]] / zf;
    }

    mutable SinkhornReport last_{};
};

}  // namespace smoe::inline v0::router
