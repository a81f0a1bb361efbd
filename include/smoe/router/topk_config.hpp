#pragma once
// Configuration of smoe::router::TopK (routing.md §2): keys, defaults, validation and named presets.

#include <cmath>
#include <cstdint>
#include <string>

#include "smoe/core/error.hpp"
#include "smoe/core/limits.hpp"

namespace smoe::inline v0::router {

// sqrtsoftplus: s = sqrt(softplus(x)), DeepSeek-V4's `scoring_func` (families.md §2.2); topk only.
enum class ScoreFunc { softmax, sigmoid, sqrtsoftplus };

inline char const* to_string(ScoreFunc s) {
    return s == ScoreFunc::softmax ? "softmax" : s == ScoreFunc::sigmoid ? "sigmoid" : "sqrtsoftplus";
}

// How a group is scored for group-limited selection (routing.md §10.1): DeepSeek's rule (the group
// maximum without a selection bias, the sum of its two largest scores with one), always the top-2
// sum, or Megatron's sum of the top top_k / topk_group scores.
enum class GroupScore { max_or_top2, top2_sum, topk_over_groups_sum };

inline char const* to_string(GroupScore g) {
    return g == GroupScore::max_or_top2 ? "max_or_top2"
           : g == GroupScore::top2_sum  ? "top2_sum"
                                        : "topk_over_groups_sum";
}

struct TopKConfig {
    std::int64_t num_experts = 0;  // 1 <= E <= limits::kMaxExperts
    std::int64_t top_k = 0;        // 1 <= k <= E
    ScoreFunc score_func = ScoreFunc::softmax;
    bool norm_topk_prob = false;    // renormalise the selected weights
    bool score_after_topk = false;  // softmax over the k selected logits only (Megatron's default)
    float routed_scaling_factor = 1.0f;
    std::int64_t n_group = 1;     // divides E
    std::int64_t topk_group = 0;  // 0 means n_group (the spec's default)
    float norm_eps = 1e-20f;      // added to the renormalisation denominator
    bool requires_expert_bias = false;  // DeepSeek-V3: a forward without expert_bias is an error
    GroupScore group_score = GroupScore::max_or_top2;
    // The renormalisation divides by the p-norm of the selected weights (DBRX's
    // moe_normalize_expert_weights; p = 1 is the plain sum), plus norm_eps.
    float norm_p = 1.0f;
    // Z identity experts (LongCat-Flash's zero_expert_num, families.md §2.5): the router scores and
    // selects over E + Z logit columns, and a selected id >= E carries w · x to the output without
    // being dispatched. Not with groups or score_after_topk.
    std::int64_t num_null_experts = 0;

    std::int64_t num_logits() const { return num_experts + num_null_experts; }
    std::int64_t group_size() const { return num_experts / n_group; }
    std::int64_t groups_kept() const { return topk_group == 0 ? n_group : topk_group; }
    // The options that kernels/cpu/softmax_topk.hpp's row has no branch for: such a config routes
    // through router/topk_row.hpp, as every call with a RouterControl does.
    bool needs_general_row() const {
        return score_func == ScoreFunc::sqrtsoftplus || group_score != GroupScore::max_or_top2 || norm_p != 1.0f ||
               num_null_experts > 0;
    }

    // Throws smoe::invalid_argument naming the key, the value and the valid range.
    void validate() const {
        using smoe::detail::fail;
        smoe::detail::require_in_range("num_experts", num_experts, 1, limits::kMaxExperts, "smoe::limits::kMaxExperts");
        smoe::detail::require_in_range("num_null_experts", num_null_experts, 0, limits::kMaxExperts,
                                       "smoe::limits::kMaxExperts");
        if (top_k < 1 || top_k > num_logits())
            fail("top_k", top_k,
                 num_null_experts > 0
                     ? "1 <= top_k <= num_experts + num_null_experts (" + std::to_string(num_logits()) + ")"
                     : "1 <= top_k <= num_experts (" + std::to_string(num_experts) + ")");
        if (!std::isfinite(routed_scaling_factor)) fail("routed_scaling_factor", routed_scaling_factor, "a finite value");
        if (!(norm_eps >= 0.0f) || !std::isfinite(norm_eps)) fail("norm_eps", norm_eps, "a finite value >= 0");
        if (n_group < 1 || num_experts % n_group != 0)
            fail("n_group", n_group, "a divisor of num_experts (" + std::to_string(num_experts) + ")");
        if (topk_group < 0 || topk_group > n_group)
            fail("topk_group", topk_group, "1 <= topk_group <= n_group (" + std::to_string(n_group) + "), or 0 for n_group");
        if (n_group > 1 && top_k > groups_kept() * group_size())
            fail("top_k", top_k,
                 "top_k <= topk_group * num_experts / n_group (" + std::to_string(groups_kept() * group_size()) + ")");
        if (score_after_topk) {
            if (score_func != ScoreFunc::softmax) fail("score_after_topk", true, "score_func \"softmax\" with score_after_topk");
            if (n_group != 1) fail("score_after_topk", true, "n_group = 1 with score_after_topk (n_group is " + std::to_string(n_group) + ")");
            if (requires_expert_bias) fail("score_after_topk", true, "no expert_bias with score_after_topk");
        }
        if (requires_expert_bias && n_group > 1 && group_size() < 2)
            fail("n_group", n_group, "groups of at least 2 experts when an expert_bias is used");
        if (!(norm_p > 0.0f) || !std::isfinite(norm_p)) fail("norm_p", norm_p, "a finite p > 0");
        if (num_null_experts > 0 && (n_group != 1 || score_after_topk))
            fail("num_null_experts", num_null_experts, "0 with n_group > 1 or score_after_topk");
        if (n_group > 1 && group_score == GroupScore::top2_sum && group_size() < 2)
            fail("group_score", to_string(group_score), "groups of at least 2 experts (num_experts / n_group >= 2)");
        if (n_group > 1 && group_score == GroupScore::topk_over_groups_sum &&
            (top_k < groups_kept() || top_k / groups_kept() > group_size()))
            fail("group_score", to_string(group_score),
                 "topk_group <= top_k and top_k / topk_group <= num_experts / n_group (the scores each group sums)");
    }

    // Presets (routing.md §2 table). E and k are those of the published checkpoints.
    static TopKConfig mixtral() { return {.num_experts = 8, .top_k = 2, .norm_topk_prob = true}; }
    static TopKConfig olmoe() { return {.num_experts = 64, .top_k = 8}; }
    static TopKConfig qwen2_moe() { return {.num_experts = 60, .top_k = 4}; }
    static TopKConfig deepseek_v2() {
        return {.num_experts = 160, .top_k = 6, .routed_scaling_factor = 16.0f, .n_group = 8, .topk_group = 3};
    }
    static TopKConfig deepseek_v2_lite() { return {.num_experts = 64, .top_k = 6}; }
    static TopKConfig deepseek_v3() {
        return {.num_experts = 256,
                .top_k = 8,
                .score_func = ScoreFunc::sigmoid,
                .norm_topk_prob = true,
                .routed_scaling_factor = 2.5f,
                .n_group = 8,
                .topk_group = 4,
                .requires_expert_bias = true};
    }
    static TopKConfig megatron(std::int64_t num_experts, std::int64_t top_k) {
        return {.num_experts = num_experts, .top_k = top_k, .score_after_topk = true};
    }
};

}  // namespace smoe::inline v0::router
