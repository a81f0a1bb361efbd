#pragma once
// smoe::router::TopK: token choice, each token picks k experts (routing.md §2). Softmax or sigmoid
// scores, renormalisation, top-k then softmax, routed scaling, group-limited selection and a
// selection-only expert bias; presets for Mixtral, OLMoE, Qwen2-MoE, DeepSeek-V2/V3 and Megatron in
// TopKConfig.
//
//   smoe::router::TopK router(smoe::router::TopKConfig::deepseek_v3());
//   router.route(arch, logits /*[T, 256]*/, bias /*[256]*/, out /*[T, >= 8]*/, workspace);

#include <cstdint>
#include <span>
#include <string>

#include "smoe/core/routing.hpp"
#include "smoe/core/workspace.hpp"
#include "smoe/kernels/cpu/finite_check.hpp"
#include "smoe/kernels/cpu/softmax_topk.hpp"
#include "smoe/router/topk_config.hpp"
#include "smoe/router/route_checks.hpp"

namespace smoe::inline v0::router {

class TopK {
public:
    using Config = TopKConfig;
    static constexpr bool accepts_selection_bias = true;

    explicit TopK(Config const& cfg) : cfg_(cfg) { cfg_.validate(); }

    Config const& config() const { return cfg_; }
    std::int64_t num_experts() const { return cfg_.num_experts; }
    std::int64_t num_logits() const { return cfg_.num_experts; }
    std::int64_t max_slots() const { return cfg_.top_k; }

    std::size_t workspace_size(std::int64_t /*max_tokens*/) const {
        WorkspaceSize size;
        carve(size);
        return size.bytes();
    }

    // logits [T, E]; bias [E] or empty; out [T, >= k]. Returns K = k. Throws on non-finite logits or
    // bias, a bias of the wrong length, or a missing bias the config requires.
    template <class Arch>
    std::int64_t route(Arch arch, MatrixView<float const> logits, std::span<float const> bias, TokenMajorOut out,
                       Workspace& ws) const {
        std::int64_t const E = cfg_.num_experts, k = cfg_.top_k;
        std::int64_t const T = checks::check_logits_shape(logits, E, k);
        checks::check_out_shape(out, T, k, "top_k");
        if (!bias.empty()) smoe::detail::check_vector(bias, E, "expert_bias", "num_experts", "expert");
        if (bias.empty() && cfg_.requires_expert_bias)
            smoe::detail::fail("expert_bias", "none", "a bias of length " + std::to_string(E) + " (this config requires one)");
        if (!bias.empty() && cfg_.score_after_topk)
            smoe::detail::fail("expert_bias", "a bias", "no bias with score_after_topk");
        if (!bias.empty() && cfg_.n_group > 1 && cfg_.group_size() < 2)
            smoe::detail::fail("expert_bias", "a bias", "groups of at least 2 experts (num_experts / n_group >= 2)");
        kernels::cpu::check_finite(arch, logits, "logits");

        kernels::cpu::TopKScratch scratch = carve(ws);
        float const* b = bias.empty() ? nullptr : bias.data();
        for (std::int64_t t = 0; t < T; ++t)
            kernels::cpu::topk_route_row(arch, cfg_, logits.row(t), b, scratch, out.expert_ids.row(t), out.expert_weights.row(t));
        return k;
    }

private:
    template <class Alloc>
    kernels::cpu::TopKScratch carve(Alloc& a) const {
        auto const E = static_cast<std::size_t>(cfg_.num_experts), G = static_cast<std::size_t>(cfg_.n_group);
        kernels::cpu::TopKScratch s;
        s.score = a.template take<float>(E);
        s.select = a.template take<float>(E);
        s.group_val = a.template take<float>(G);
        s.group_id = a.template take<std::int32_t>(G);
        return s;
    }

    Config cfg_;
};

}  // namespace smoe::inline v0::router
