#pragma once
// smoe::router::SparseMixer: PhiMoE's inference routing (families.md §2.4; Liu et al., "GRIN: GRadient-
// INformed MoE", 2024; huggingface/transformers models/phimoe `sparsemixer`). Exactly two experts per
// token, each weighted by a softmax over the logits close to it:
//
//   e1 = argmax L (ties to the lower id), m1 = L_e1
//   M1 = {j : (m1 − L_j) / max(|L_j|, m1) <= 2ε}   (a 0/0 ratio counts as kept, as torch's > is false on NaN)
//   w1 = exp(L_e1) / Σ_(j∈M1) exp(L_j)
//   e2, m2, M2, w2: the same over the experts other than e1
//
// ε = `router_jitter_noise` (0.01). No renormalisation, no scaling; the token-major row is sorted by
// weight, so e2 comes first when w2 > w1. Training's Gumbel sampling and custom backward are not part
// of inference. HF computes in the model dtype; smoe in fp32 (the softmax denominator in double).
//
// Example (E = 6): logits [1, 0.99, 0.5, 0.985, −1, 0.2] give M1 = {0, 1, 3}, w1 = 0.336116, and
// M2 = {1, 3}, w2 = 0.50125, so the row is [1, 0] with 0.50125, 0.336116.
//
//   smoe::router::SparseMixer router({.num_experts = 16});
//   router.route(arch, logits /*[T, 16]*/, {}, out /*[T, >= 2]*/, workspace);

#include <cmath>
#include <cstdint>
#include <span>
#include <string>

#include "smoe/core/error.hpp"
#include "smoe/core/limits.hpp"
#include "smoe/core/router_control.hpp"
#include "smoe/core/routing.hpp"
#include "smoe/core/workspace.hpp"
#include "smoe/kernels/cpu/finite_check.hpp"
#include "smoe/kernels/cpu/softmax_topk.hpp"
#include "smoe/router/control.hpp"
#include "smoe/router/router_base.hpp"
#include "smoe/router/route_checks.hpp"

namespace smoe::inline v0::router {

struct SparseMixerConfig {
    std::int64_t num_experts = 0;       // 2 <= E <= limits::kMaxExperts (two experts per token)
    float router_jitter_noise = 0.01f;  // ε, finite and >= 0

    // Throws smoe::invalid_argument naming the key, the value and the valid range.
    void validate() const {
        smoe::detail::require_in_range("num_experts", num_experts, 2, limits::kMaxExperts,
                                       "smoe::limits::kMaxExperts (sparsemixer selects two experts)");
        if (!std::isfinite(router_jitter_noise) || !(router_jitter_noise >= 0.0f))
            smoe::detail::fail("router_jitter_noise", router_jitter_noise, "a finite value >= 0");
    }
};

class SparseMixer : public detail::RouterBase<SparseMixer, SparseMixerConfig> {
public:
    static constexpr std::int64_t kSlots = 2;

    using RouterBase::RouterBase;

    std::int64_t max_slots() const { return kSlots; }

    // logits [T, E]; bias must be empty; out [T, >= 2]. Returns K = 2.
    template <class Arch>
    std::int64_t route(Arch arch, MatrixView<float const> logits, std::span<float const> bias, TokenMajorOut out,
                       Workspace& ws) const {
        return route(arch, logits, bias, out, ws, RouterControl{});
    }

    // Under test-time control (research.md §8 gives no sparsemixer row; this follows its rules for
    // logits): the offset is added to the logits and a removed expert is neither picked nor in M1 / M2.
    // Sparsemixer has no score for a boost or an override to act on: both are refused. Needs |A| >= 2.
    template <class Arch>
    std::int64_t route(Arch arch, MatrixView<float const> logits, std::span<float const> bias, TokenMajorOut out,
                       Workspace& ws, RouterControl const& control) const {
        std::int64_t const E = cfg_.num_experts;
        std::int64_t const T =
            checks::check_unbiased(arch, logits, bias, out, E, kSlots, "2 (sparsemixer's two experts)", "sparsemixer");
        if (!control.empty()) {
            if (!control.boost.empty())
                smoe::detail::fail("boost", "a boost", "none (sparsemixer has no score to boost)");
            if (!control.score_override.empty())
                smoe::detail::fail("score_override", "an override", "none (sparsemixer has no score row to replace)");
            control::validate(control, E, T, kSlots, "2 (sparsemixer's two experts)");
        }
        control::RowScratch const r = control::carve_row(ws, E);
        for (std::int64_t t = 0; t < T; ++t) {
            float const* x = control::offset_row(control, logits.row(t), r.x.data(), E, t);
            std::int32_t* const ids = out.expert_ids.row(t);
            float* const w = out.expert_weights.row(t);
            ids[0] = pick(control, x, -1, w[0]);
            ids[1] = pick(control, x, ids[0], w[1]);
            kernels::cpu::sort_by_weight(ids, w, kSlots);
        }
        return kSlots;
    }

private:
    // The best allowed expert other than `skip` and its weight over the experts within 2ε of it.
    std::int32_t pick(RouterControl const& control, float const* x, std::int64_t skip, float& weight) const {
        std::int64_t const E = cfg_.num_experts;
        std::int64_t best = -1;
        for (std::int64_t e = 0; e < E; ++e)
            if (e != skip && control::allowed(control, e) && (best < 0 || x[e] > x[best])) best = e;
        float const m = x[best], limit = 2.0f * cfg_.router_jitter_noise;
        double z = 0.0;  // in double, as softmax_row's denominator
        for (std::int64_t j = 0; j < E; ++j) {
            if (j == skip || !control::allowed(control, j)) continue;
            float const ratio = (m - x[j]) / std::max(std::fabs(x[j]), m);
            if (!(ratio > limit)) z += kernels::cpu::exp_of_difference(x[j], m);
        }
        weight = static_cast<float>(1.0 / z);  // exp(m − m) = 1 over the sum
        return static_cast<std::int32_t>(best);
    }
};

}  // namespace smoe::inline v0::router
