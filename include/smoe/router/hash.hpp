#pragma once
// smoe::router::Hash: routing by token id through a fixed table (DeepSeek-V4's hash layers, families.md
// §2.2: `gate.tid2eid` [vocab, k], the first `num_hash_layers` layers; MoWE-style token routing).
//
//   S = tid2eid[token_id]                         (k distinct experts, in table order)
//   s = score(L) over E (sqrtsoftplus in DeepSeek-V4; softmax or sigmoid also accepted)
//   w_e = s_e / (Σ_(j∈S) s_j + norm_eps) · routed_scaling_factor   (norm_topk_prob; else w_e = s_e · r)
//
// The gate still computes logits: they give the weights, never the selection. The token ids come with
// the call (smoe::TokenIds); a call without them is an error. No selection bias. The table is a
// non-owning view that must outlive the router, like expert weights.
//
//   smoe::router::Hash router({.num_experts = 256, .top_k = 6, .vocab_size = V, .tid2eid = table,
//                              .routed_scaling_factor = 1.5f});
//   router.route(arch, logits, {}, out, workspace, {}, smoe::TokenIds{ids});

#include <algorithm>
#include <cstdint>
#include <span>
#include <string>

#include "smoe/core/error.hpp"
#include "smoe/core/limits.hpp"
#include "smoe/core/router_control.hpp"
#include "smoe/core/routing.hpp"
#include "smoe/core/token_ids.hpp"
#include "smoe/core/workspace.hpp"
#include "smoe/kernels/cpu/finite_check.hpp"
#include "smoe/kernels/cpu/softmax_topk.hpp"
#include "smoe/router/control.hpp"
#include "smoe/router/router_base.hpp"
#include "smoe/router/route_checks.hpp"
#include "smoe/router/topk_config.hpp"

namespace smoe::inline v0::router {

struct HashConfig {
    std::int64_t num_experts = 0;           // 1 <= E <= limits::kMaxExperts
    std::int64_t top_k = 0;                 // 1 <= k <= E, the table's columns
    std::int64_t vocab_size = 0;            // >= 1, the table's rows
    std::span<std::int32_t const> tid2eid;  // [vocab_size, top_k], distinct ids in [0, E) per row
    ScoreFunc score_func = ScoreFunc::sqrtsoftplus;
    bool norm_topk_prob = true;  // DeepSeek-V4 always renormalises
    float routed_scaling_factor = 1.0f;
    float norm_eps = 1e-20f;

    // Throws smoe::invalid_argument naming the key, the value and the valid range; checks every row of
    // the table once, so route() only checks the token ids.
    void validate() const {
        using smoe::detail::fail;
        smoe::detail::require_in_range("num_experts", num_experts, 1, limits::kMaxExperts, "smoe::limits::kMaxExperts");
        if (top_k < 1 || top_k > num_experts)
            fail("top_k", top_k, "1 <= top_k <= num_experts (" + std::to_string(num_experts) + ")");
        smoe::detail::require_in_range("vocab_size", vocab_size, 1, std::int64_t{1} << 31, "2^31");
        if (static_cast<std::int64_t>(tid2eid.size()) != vocab_size * top_k)
            fail("tid2eid", "length " + std::to_string(tid2eid.size()),
                 "vocab_size * top_k = " + std::to_string(vocab_size * top_k));
        if (!std::isfinite(routed_scaling_factor))
            fail("routed_scaling_factor", routed_scaling_factor, "a finite value");
        if (!(norm_eps >= 0.0f) || !std::isfinite(norm_eps)) fail("norm_eps", norm_eps, "a finite value >= 0");
        for (std::int64_t v = 0; v < vocab_size; ++v)
            for (std::int64_t j = 0; j < top_k; ++j) {
                std::int32_t const e = tid2eid[static_cast<std::size_t>(v * top_k + j)];
                auto at = [&] {
                    return std::to_string(e) + " at token id " + std::to_string(v) + ", slot " + std::to_string(j);
                };
                if (e < 0 || e >= num_experts)
                    fail("tid2eid", at(), "expert ids in [0, num_experts = " + std::to_string(num_experts) + ")");
                for (std::int64_t i = 0; i < j; ++i)
                    if (tid2eid[static_cast<std::size_t>(v * top_k + i)] == e)
                        fail("tid2eid", at(), "distinct experts in each row");
            }
    }
};

class Hash : public detail::RouterBase<Hash, HashConfig> {
public:
    using RouterBase::RouterBase;

    std::int64_t max_slots() const { return cfg_.top_k; }

    // Without token ids there is nothing to route by.
    template <class Arch>
    std::int64_t route(Arch arch, MatrixView<float const> logits, std::span<float const> bias, TokenMajorOut out,
                       Workspace& ws) const {
        return route(arch, logits, bias, out, ws, RouterControl{}, TokenIds{});
    }

    template <class Arch>
    std::int64_t route(Arch arch, MatrixView<float const> logits, std::span<float const> bias, TokenMajorOut out,
                       Workspace& ws, RouterControl const& control) const {
        return route(arch, logits, bias, out, ws, control, TokenIds{});
    }

    // logits [T, E]; bias must be empty; token_ids [T] in [0, vocab_size); out [T, >= k]. Returns K = k.
    // Under control (research.md §8, by topk's rules): offset on the logits, override and boost on s; a
    // removed expert leaves the token's row (its slot becomes -1 / 0) and the rest is renormalised.
    template <class Arch>
    std::int64_t route(Arch arch, MatrixView<float const> logits, std::span<float const> bias, TokenMajorOut out,
                       Workspace& ws, RouterControl const& control, TokenIds token_ids) const {
        std::int64_t const E = cfg_.num_experts, k = cfg_.top_k;
        std::int64_t const T = checks::check_logits_shape(logits, E, k);
        checks::check_out_shape(out, T, k, "top_k");
        checks::reject_bias(bias, "hash");
        if (static_cast<std::int64_t>(token_ids.ids.size()) != T)
            smoe::detail::fail(
                "token_ids",
                token_ids.ids.empty() ? std::string("none") : "length " + std::to_string(token_ids.ids.size()),
                "the call's " + std::to_string(T) + " token ids (hash routing selects by token id)");
        for (std::int64_t t = 0; t < T; ++t)
            if (token_ids.ids[t] < 0 || token_ids.ids[t] >= cfg_.vocab_size)
                smoe::detail::fail("token_ids", std::to_string(token_ids.ids[t]) + " at token " + std::to_string(t),
                                   "ids in [0, vocab_size = " + std::to_string(cfg_.vocab_size) + ")");
        kernels::cpu::check_finite(arch, logits, "logits");
        if (!control.empty()) control::validate(control, E, T, 0, "");

        control::RowScratch const r = control::carve_row(ws, E);
        for (std::int64_t t = 0; t < T; ++t) {
            control::controlled_scores(arch, cfg_.score_func, control, logits.row(t), t, r, E);
            std::int32_t* const ids = out.expert_ids.row(t);
            float* const w = out.expert_weights.row(t);
            std::int32_t const* row =
                cfg_.tid2eid.data() + static_cast<std::size_t>(token_ids.ids[t]) * static_cast<std::size_t>(k);
            std::int64_t n = 0;
            double sum = 0.0;  // in double, as topk's renormalisation
            for (std::int64_t j = 0; j < k; ++j)
                if (control::allowed(control, row[j])) {
                    ids[n] = row[j];
                    sum += (w[n] = r.score[row[j]]);
                    ++n;
                }
            auto const denom = static_cast<float>(sum + cfg_.norm_eps);
            for (std::int64_t j = 0; j < n; ++j) {
                if (cfg_.norm_topk_prob && denom > 0.0f) w[j] /= denom;  // all-zero scores stay 0, no NaN
                if (cfg_.routed_scaling_factor != 1.0f) w[j] *= cfg_.routed_scaling_factor;
            }
            kernels::cpu::sort_by_weight(ids, w, n);
            std::fill(ids + n, ids + k, -1);
            std::fill(w + n, w + k, 0.0f);
        }
        return k;
    }
};

}  // namespace smoe::inline v0::router
