#pragma once
// smoe::router::RankwiseLoRA: SMoRA's rank-wise routing, every rank of one LoRA adapter is an expert
// (routing.md §8; Zhao et al., "Each Rank Could be an Expert: Single-Ranked Mixture of Experts LoRA";
// StyxXuan/smora SRMoLELinear).
//
//   g = sigmoid(z)            z [T, r]: rank logits x · lora_router.weightᵀ (the layer's gate projection)
//   c = g + lora_biases       the bias (optional, length r) DOES enter the weights, unlike TopK's
//   S = top-k of c            ties to the lower rank
//   w_i = k · c_i / Σ_(j∈S) c_j,  i ∈ S   (a sum that is not positive is an error naming the token)
//
// E = num_experts() = num_logits() = r and K = max_slots() = k (fixed k). The bias comes through
// route()'s `bias` argument: MoELayer passes Weights::expert_bias there (it names lora_biases).
// `accepts_selection_bias` is false: the bias here is part of the weights, not a selection-only bias,
// so a balancer that owns a selection bias (LossFreeBias) must not drive it.
//
// Example (routing.md §8): r = 4, k = 2. z = [0.5, 2, 0, 2.5] gives g = [0.622459, 0.880797, 0.5,
// 0.924142] and selects ranks [3, 1] with weights 1.02401, 0.975985; with lora_biases [0, 0, 0, −0.5]
// it selects [1, 0] with 1.17185, 0.828148.
//
//   smoe::router::RankwiseLoRA router({.in_features = 3, .out_features = 2, .rank = 4, .top_k = 2, .lora_alpha = 4});
//   router.route(arch, z /*[T, 4]*/, lora_biases /*[4] or {}*/, out /*[T, >= 2]*/, workspace);

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <span>
#include <string>

#include "smoe/core/error.hpp"
#include "smoe/core/limits.hpp"
#include "smoe/core/routing.hpp"
#include "smoe/core/workspace.hpp"
#include "smoe/kernels/cpu/finite_check.hpp"
#include "smoe/kernels/cpu/softmax_topk.hpp"
#include "smoe/router/control.hpp"
#include "smoe/router/router_base.hpp"
#include "smoe/router/route_checks.hpp"

namespace smoe::inline v0::router {

// Config {"layer": "rankwise_lora", ...} (routing.md §8); shared by the router, expert::LoraRank and
// expert::rankwise_lora_forward.
struct RankwiseLoRAConfig {
    std::int64_t in_features = 0;   // >= 1
    std::int64_t out_features = 0;  // >= 1
    std::int64_t rank = 0;          // r >= 1
    std::int64_t top_k = 0;         // 1 <= k <= r (the reference's activate_r)
    float lora_alpha = 0.0f;        // finite; the LoRA branch is scaled by lora_alpha / k

    float scale() const { return lora_alpha / static_cast<float>(top_k); }

    // Throws smoe::invalid_argument naming the key, the value and the valid range.
    void validate() const {
        using smoe::detail::fail;
        using smoe::detail::require_in_range;
        require_in_range("in_features", in_features, 1, limits::kMaxDimension, "smoe::limits::kMaxDimension");
        require_in_range("out_features", out_features, 1, limits::kMaxDimension, "smoe::limits::kMaxDimension");
        require_in_range("rank", rank, 1, limits::kMaxDimension, "smoe::limits::kMaxDimension");
        if (top_k < 1 || top_k > rank) fail("top_k", top_k, "1 <= top_k <= rank (" + std::to_string(rank) + ")");
        if (!std::isfinite(lora_alpha)) fail("lora_alpha", lora_alpha, "a finite value");
    }
};

class RankwiseLoRA : public detail::RouterBase<RankwiseLoRA, RankwiseLoRAConfig> {
public:
    static constexpr bool accepts_selection_bias = false;

    using RouterBase::RouterBase;

    std::int64_t num_experts() const { return cfg_.rank; }
    std::int64_t num_logits() const { return cfg_.rank; }
    std::int64_t max_slots() const { return cfg_.top_k; }

    std::size_t workspace_size(std::int64_t /*max_tokens*/) const {
        WorkspaceSize size;
        carve(size);
        control::carve_row(size, cfg_.rank);
        return size.bytes();
    }

    // z [T, r]; lora_biases [r] or empty; out [T, >= k]. Returns K = k. Throws on non-finite z or
    // bias, a bias of the wrong length, or a token whose selected c sum to a value that is not positive.
    template <class Arch>
    std::int64_t route(Arch arch, MatrixView<float const> logits, std::span<float const> bias, TokenMajorOut out,
                       Workspace& ws) const {
        std::int64_t const r = cfg_.rank, k = cfg_.top_k;
        std::int64_t const T = checks::check_logits_shape(logits, r, k);
        checks::check_out_shape(out, T, k, "top_k");
        if (!bias.empty()) smoe::detail::check_vector(bias, r, "lora_biases", "rank", "rank");
        kernels::cpu::check_finite(arch, logits, "logits");

        std::span<float> const c = carve(ws);
        for (std::int64_t t = 0; t < T; ++t) {
            kernels::cpu::sigmoid_row(arch, logits.row(t), c.data(), r);
            select_row(
                c.data(), bias, t, [](std::int64_t) { return true; }, out.expert_ids.row(t), out.expert_weights.row(t));
        }
        return k;
    }

    // Under test-time control (research.md §8): g = sigmoid(z + a) (or the override row), g ⊙ b before
    // the bias, a removed rank is never selected. Needs |A| >= k.
    template <class Arch>
    std::int64_t route(Arch arch, MatrixView<float const> logits, std::span<float const> bias, TokenMajorOut out,
                       Workspace& ws, RouterControl const& control) const {
        if (control.empty()) return route(arch, logits, bias, out, ws);
        std::int64_t const r = cfg_.rank, k = cfg_.top_k;
        std::int64_t const T = checks::check_logits_shape(logits, r, k);
        checks::check_out_shape(out, T, k, "top_k");
        if (!bias.empty()) smoe::detail::check_vector(bias, r, "lora_biases", "rank", "rank");
        kernels::cpu::check_finite(arch, logits, "logits");
        control::validate(control, r, T, k, "top_k");

        std::span<float> const c = carve(ws);
        control::RowScratch const row = control::carve_row(ws, r);
        auto const allowed = [&](std::int64_t i) { return control::allowed(control, i); };
        for (std::int64_t t = 0; t < T; ++t) {
            control::controlled_scores(arch, ScoreFunc::sigmoid, control, logits.row(t), t, row, r);
            std::copy(row.score.begin(), row.score.end(), c.begin());
            select_row(c.data(), bias, t, allowed, out.expert_ids.row(t), out.expert_weights.row(t));
        }
        return k;
    }

private:
    // c [r] = g (sigmoid, or controlled scores): adds the bias, takes the top-k of the allowed ranks and
    // writes w_i = k · c_i / Σ_S c (routing.md §8 steps 2-4).
    template <class Allowed>
    void select_row(float* c, std::span<float const> bias, std::int64_t t, Allowed allowed, std::int32_t* ids,
                    float* w) const {
        std::int64_t const r = cfg_.rank, k = cfg_.top_k;
        if (!bias.empty())
            for (std::int64_t i = 0; i < r; ++i) c[i] += bias[i];
        kernels::cpu::TopList top{ids, w, k};
        for (std::int64_t i = 0; i < r; ++i)
            if (allowed(i)) top.offer(c[i], static_cast<std::int32_t>(i));
        double sum = 0.0;  // in double, as softmax_row's denominator
        for (std::int64_t j = 0; j < k; ++j) sum += w[j];
        if (!(sum > 0.0))
            smoe::detail::fail(
                bias.empty() ? "logits" : "lora_biases",
                "a selected score sum of " + smoe::detail::to_text(sum) + " at token " + std::to_string(t),
                "sigmoid(z) + lora_biases summing to a positive value over the top_k selected ranks");
        double const norm = static_cast<double>(k) / sum;
        for (std::int64_t j = 0; j < k; ++j) w[j] = static_cast<float>(static_cast<double>(w[j]) * norm);
        // w is monotone in c, but two c that differ by an ulp can round to one w: restore the tie rule.
        kernels::cpu::sort_by_weight(ids, w, k);
    }

    template <class Alloc>
    std::span<float> carve(Alloc& a) const {
        return a.template take<float>(static_cast<std::size_t>(cfg_.rank));
    }
};

}  // namespace smoe::inline v0::router
