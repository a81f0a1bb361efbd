#pragma once
// smoe::router::NullExpert: token-adaptive k through null experts that cost nothing (routing.md §5;
// Zeng et al., "AdaMoE: Token-Adaptive Routing with Null Experts for Mixture-of-Experts Language
// Models", 2024; CengZihao/AdaMoE CustomMixtralSparseMoeBlock).
//
//   logits L[t] of width E + N: columns 0..E-1 the true experts, E..E+N-1 the null experts
//   s = softmax over all E + N;  S = top-k of s over all E + N (ties to the lower id, so a true
//   expert beats a null with an equal score)
//   σ = Σ s_e over the true experts in S (σ = 0 → 1)
//   true e ∈ S: w_e = s_e / σ;  null e ∈ S: w_e = s_e (raw)
//
// K = k (a fixed-k router). Null ids appear in the token-major view only; the layer's counting sort
// never dispatches ids >= num_experts(), so a null selection costs nothing and contributes zero
// output. A token that picks only nulls gets zero routed output. N = 0 is TopK with softmax,
// norm_topk_prob and norm_eps = 0.
//
// Example (routing.md §5): E = 3, N = 2, k = 2; t1 logits [1, −1, 0, 1.5, 0] give s = [0.284106,
// 0.0384495, 0.104517, 0.468411, 0.104517]; S = {3, 0}; σ = 0.284106, so the row is [0, 3] with
// weights 1 and 0.468411 (the null keeps its raw s).
//
//   smoe::router::NullExpert router(smoe::router::NullExpertConfig::adamoe_mixtral());
//   router.route(arch, logits /*[T, 24]*/, {}, out /*[T, >= 4]*/, workspace);

#include <cstdint>
#include <span>
#include <string>

#include "smoe/core/error.hpp"
#include "smoe/core/limits.hpp"
#include "smoe/core/routing.hpp"
#include "smoe/core/workspace.hpp"
#include "smoe/kernels/cpu/finite_check.hpp"
#include "smoe/kernels/cpu/null_expert.hpp"
#include "smoe/router/control.hpp"
#include "smoe/router/router_base.hpp"
#include "smoe/router/route_checks.hpp"

namespace smoe::inline v0::router {

struct NullExpertConfig {
    std::int64_t num_experts = 0;       // E >= 1, the true experts
    std::int64_t num_null_experts = 0;  // N >= 0
    std::int64_t top_k = 0;             // 1 <= k <= E + N

    std::int64_t num_logits() const { return num_experts + num_null_experts; }

    // Throws smoe::invalid_argument naming the key, the value and the valid range.
    void validate() const {
        using smoe::detail::fail;
        smoe::detail::require_in_range("num_experts", num_experts, 1, limits::kMaxExperts, "smoe::limits::kMaxExperts");
        smoe::detail::require_in_range("num_null_experts", num_null_experts, 0, limits::kMaxExperts,
                                       "smoe::limits::kMaxExperts");
        if (top_k < 1 || top_k > num_logits())
            fail("top_k", top_k, "1 <= top_k <= num_experts + num_null_experts (" + std::to_string(num_logits()) + ")");
    }

    // The Mixtral experiment of AdaMoE (loader.py): 8 true experts, 16 nulls, k = 4.
    static NullExpertConfig adamoe_mixtral() { return {.num_experts = 8, .num_null_experts = 16, .top_k = 4}; }
};

class NullExpert : public detail::RouterBase<NullExpert, NullExpertConfig> {
public:
    using RouterBase::RouterBase;

    std::int64_t num_null_experts() const { return cfg_.num_null_experts; }
    std::int64_t max_slots() const { return cfg_.top_k; }

    std::size_t workspace_size(std::int64_t /*max_tokens*/) const {
        WorkspaceSize size;
        size.add<float>(static_cast<std::size_t>(cfg_.num_logits()));
        control::carve_row(size, cfg_.num_logits());
        return size.bytes();
    }

    // logits [T, E + N]; bias must be empty; out [T, >= k]. Returns K = k.
    template <class Arch>
    std::int64_t route(Arch arch, MatrixView<float const> logits, std::span<float const> bias, TokenMajorOut out,
                       Workspace& ws) const {
        std::int64_t const E = cfg_.num_experts, N = cfg_.num_null_experts, k = cfg_.top_k;
        std::int64_t const T = checks::check_unbiased(arch, logits, bias, out, E + N, k, "top_k", "null_expert");

        float* const score = ws.take<float>(static_cast<std::size_t>(E + N)).data();
        for (std::int64_t t = 0; t < T; ++t)
            kernels::cpu::null_expert_route_row(arch, E, N, k, logits.row(t), score, out.expert_ids.row(t),
                                                out.expert_weights.row(t));
        return k;
    }

    // Under test-time control (research.md §8) over all E + N columns: softmax over the allowed ones of
    // x + a (or the override row), times the boost, then the top-k over A; true and null weights come
    // from the boosted s. A mask that removes every null leaves a top-k over the true experts.
    template <class Arch>
    std::int64_t route(Arch arch, MatrixView<float const> logits, std::span<float const> bias, TokenMajorOut out,
                       Workspace& ws, RouterControl const& control) const {
        if (control.empty()) return route(arch, logits, bias, out, ws);
        std::int64_t const E = cfg_.num_experts, L = cfg_.num_logits(), k = cfg_.top_k;
        std::int64_t const T = checks::check_unbiased(arch, logits, bias, out, L, k, "top_k", "null_expert");
        control::validate(control, L, T, k, "top_k");

        ws.take<float>(static_cast<std::size_t>(L));  // the plain path's score row
        control::RowScratch const r = control::carve_row(ws, L);
        for (std::int64_t t = 0; t < T; ++t) {
            std::int32_t* const ids = out.expert_ids.row(t);
            float* const w = out.expert_weights.row(t);
            control::controlled_scores(arch, ScoreFunc::softmax, control, logits.row(t), t, r, L);
            kernels::cpu::TopList top{ids, w, k};
            for (std::int64_t e = 0; e < L; ++e)
                if (control::allowed(control, e)) top.offer(r.score[e], static_cast<std::int32_t>(e));
            double sigma = 0.0;  // as kernels::cpu::null_expert_route_row, with AdaMoE's guard
            for (std::int64_t j = 0; j < k; ++j)
                if (ids[j] < E) sigma += w[j];
            auto const denom = sigma == 0.0 ? 1.0f : static_cast<float>(sigma);
            for (std::int64_t j = 0; j < k; ++j)
                if (ids[j] < E) w[j] /= denom;
            kernels::cpu::sort_by_weight(ids, w, k);
        }
        return k;
    }
};

}  // namespace smoe::inline v0::router
