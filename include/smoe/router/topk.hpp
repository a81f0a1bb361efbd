#pragma once
// smoe::router::TopK: token choice, each token picks k experts (routing.md §2). Softmax or sigmoid
// scores, renormalisation, top-k then softmax, routed scaling, group-limited selection and a
// selection-only expert bias; presets for Mixtral, OLMoE, Qwen2-MoE, DeepSeek-V2/V3 and Megatron in
// TopKConfig. The options of the Hugging Face families (group_score, norm_p, sqrtsoftplus, identity
// null experts) and test-time control (research.md §8) run router/topk_row.hpp's row; the rest runs
// the SIMD row of kernels/cpu/softmax_topk.hpp.
//
//   smoe::router::TopK router(smoe::router::TopKConfig::deepseek_v3());
//   router.route(arch, logits /*[T, 256]*/, bias /*[256]*/, out /*[T, >= 8]*/, workspace);
//   router.route(arch, logits, bias, out, workspace, smoe::RouterControl{.expert_mask = mask});

#include <algorithm>
#include <cstdint>
#include <span>
#include <string>

#include "smoe/core/router_control.hpp"
#include "smoe/core/routing.hpp"
#include "smoe/core/workspace.hpp"
#include "smoe/kernels/cpu/finite_check.hpp"
#include "smoe/kernels/cpu/softmax_topk.hpp"
#include "smoe/router/control.hpp"
#include "smoe/router/router_base.hpp"
#include "smoe/router/route_checks.hpp"
#include "smoe/router/topk_config.hpp"
#include "smoe/router/topk_row.hpp"

namespace smoe::inline v0::router {

class TopK : public detail::RouterBase<TopK, TopKConfig> {
public:
    static constexpr bool accepts_selection_bias = true;

    using RouterBase::RouterBase;

    // Selected ids >= num_experts() are identity experts (families.md §2.5): the layer adds w · x.
    bool identity_nulls() const { return cfg_.num_null_experts > 0; }
    std::int64_t max_slots() const { return cfg_.top_k; }

    std::size_t workspace_size(std::int64_t /*max_tokens*/) const {
        // The two carves share the bytes: a call takes one path.
        WorkspaceSize plain, general;
        carve(plain);
        carve_general(general);
        return std::max(plain.bytes(), general.bytes());
    }

    // logits [T, L] (L = num_logits(): E, or E + Z with identity experts); bias [L] or empty; out
    // [T, >= k]. Returns K = k. Throws on non-finite logits or bias, a bias of the wrong length, or a
    // missing bias the config requires.
    template <class Arch>
    std::int64_t route(Arch arch, MatrixView<float const> logits, std::span<float const> bias, TokenMajorOut out,
                       Workspace& ws) const {
        std::int64_t const T = check_args(arch, logits, bias, out);
        if (cfg_.needs_general_row()) return route_general(arch, logits, bias, out, ws, RouterControl{});
        kernels::cpu::TopKScratch scratch = carve(ws);
        float const* b = bias.empty() ? nullptr : bias.data();
        for (std::int64_t t = 0; t < T; ++t)
            kernels::cpu::topk_route_row(arch, cfg_, logits.row(t), b, scratch, out.expert_ids.row(t),
                                         out.expert_weights.row(t));
        return cfg_.top_k;
    }

    // The same under test-time control (research.md §8): mask, offset, score function, override, boost,
    // selection bias, groups over the allowed experts, top-k, weights. An empty record is the plain call.
    template <class Arch>
    std::int64_t route(Arch arch, MatrixView<float const> logits, std::span<float const> bias, TokenMajorOut out,
                       Workspace& ws, RouterControl const& control) const {
        if (control.empty()) return route(arch, logits, bias, out, ws);
        check_args(arch, logits, bias, out);
        return route_general(arch, logits, bias, out, ws, control);
    }

private:
    // The checks of every call; returns T.
    template <class Arch>
    std::int64_t check_args(Arch arch, MatrixView<float const> logits, std::span<float const> bias,
                            TokenMajorOut const& out) const {
        std::int64_t const L = cfg_.num_logits(), k = cfg_.top_k;
        std::int64_t const T = checks::check_logits_shape(logits, L, k);
        checks::check_out_shape(out, T, k, "top_k");
        if (!bias.empty())
            smoe::detail::check_vector(bias, L, "expert_bias",
                                       identity_nulls() ? "num_experts + num_null_experts" : "num_experts", "expert");
        if (bias.empty() && cfg_.requires_expert_bias)
            smoe::detail::fail("expert_bias", "none",
                               "a bias of length " + std::to_string(L) + " (this config requires one)");
        if (!bias.empty() && cfg_.score_after_topk)
            smoe::detail::fail("expert_bias", "a bias", "no bias with score_after_topk");
        if (!bias.empty() && cfg_.n_group > 1 && cfg_.group_size() < 2)
            smoe::detail::fail("expert_bias", "a bias", "groups of at least 2 experts (num_experts / n_group >= 2)");
        kernels::cpu::check_finite(arch, logits, "logits");
        return T;
    }

    // router/topk_row.hpp's row for every token: calls with control, configs with its options.
    template <class Arch>
    std::int64_t route_general(Arch arch, MatrixView<float const> logits, std::span<float const> bias,
                               TokenMajorOut out, Workspace& ws, RouterControl const& control) const {
        detail::TopKRowScratch const s = carve_general(ws);
        if (!control.empty()) check_control(control, logits.rows, s);
        float const* b = bias.empty() ? nullptr : bias.data();
        for (std::int64_t t = 0; t < logits.rows; ++t)
            detail::topk_general_row(arch, cfg_, control, logits.row(t), b, t, s, out.expert_ids.row(t),
                                     out.expert_weights.row(t));
        return cfg_.top_k;
    }

    // research.md §8: every token gets k experts, so |A| >= k; with groups, the topk_group groups with
    // the fewest allowed experts must hold k of them; under score_after_topk a boost of 0 removes too.
    void check_control(RouterControl const& c, std::int64_t T, detail::TopKRowScratch const& s) const {
        std::int64_t const L = cfg_.num_logits(), k = cfg_.top_k;
        control::validate(c, L, T, k, "top_k");
        if (cfg_.score_after_topk && !c.boost.empty()) {
            std::int64_t n = 0;
            for (std::int64_t e = 0; e < L; ++e)
                n += control::allowed(c, e) && c.boost[static_cast<std::size_t>(e)] > 0.0f;
            if (n < k)
                smoe::detail::fail("boost", std::to_string(n) + " allowed experts with a boost > 0",
                                   "at least top_k = " + std::to_string(k) +
                                       " (under score_after_topk a boost of 0 removes the expert)");
        }
        if (cfg_.n_group > 1 && !c.expert_mask.empty()) {
            std::int64_t const G = cfg_.group_size(), keep = cfg_.groups_kept();
            kernels::cpu::TopList fewest{s.group_id.data(), s.group_val.data(), keep};  // the largest −count
            for (std::int64_t g = 0; g < cfg_.n_group; ++g) {
                std::int64_t n = 0;
                for (std::int64_t e = g * G; e < (g + 1) * G; ++e) n += control::allowed(c, e);
                fewest.offer(-static_cast<float>(n), static_cast<std::int32_t>(g));
            }
            std::int64_t n = 0;
            for (std::int64_t g = 0; g < keep; ++g) n -= static_cast<std::int64_t>(s.group_val[g]);
            if (n < k)
                smoe::detail::fail(
                    "expert_mask",
                    std::to_string(n) + " allowed experts in the " + std::to_string(cfg_.groups_kept()) +
                        " groups with the fewest",
                    "at least top_k = " + std::to_string(k) + " there, so every token gets top_k experts");
        }
    }

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

    template <class Alloc>
    detail::TopKRowScratch carve_general(Alloc& a) const {
        auto const L = static_cast<std::size_t>(cfg_.num_logits()), G = static_cast<std::size_t>(cfg_.n_group);
        detail::TopKRowScratch s;
        s.x = a.template take<float>(L);
        s.score = a.template take<float>(L);
        s.select = a.template take<float>(L);
        s.compact = a.template take<float>(L);
        s.group_val = a.template take<float>(G);
        s.group_id = a.template take<std::int32_t>(G);
        return s;
    }
};

}  // namespace smoe::inline v0::router
