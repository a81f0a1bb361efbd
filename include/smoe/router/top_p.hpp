#pragma once
// smoe::router::TopP: confidence-based dynamic k (routing.md §4; Huang et al., "Harder Tasks Need
// More Experts: Dynamic Routing in MoE Models", ACL 2024; ZhenweiAn/Dynamic_MoE
// top_p_sampling_batched_all_sequence).
//
//   s   = softmax(x) over the E experts (fp32)
//   e_1 … e_E: the experts by s descending, ties to the lower id
//   c_j = s_(e_1) + … + s_(e_j), accumulated in this order in fp32
//   n   = the smallest j with c_j > top_p (strictly: a prefix equal to p does not stop the scan, the
//         expert that crosses p is included); n = E if none does, and always when top_p = 1
//   n  ← min(max(n, min_k), max_k)   (smoe's additions; the defaults 1 and E leave the rule unchanged)
//   select e_1 … e_n with w = s: the softmax probabilities, not renormalised
//
// A token gets 1 to max_k experts, so this is a variable-k router: max_slots() = max_k and route()
// returns K = the largest count in the batch, shorter rows padded with -1 / 0.
//
// Example (routing.md §4): E = 4, p = 0.4. Logits [0.2, 0.5, −1.0, 0.1] give s = 0.281224, 0.379612,
// 0.0847029, 0.254462; prefix sums 0.379612 (≤ p) then 0.660836 (> p), so the token takes [1, 0] with
// 0.379612, 0.281224. Logits [3, 0, 0, 0] take [0] (0.870049 > p at once); a batch of both has K = 2.
//
//   smoe::router::TopP router({.num_experts = 4, .top_p = 0.4f});
//   router.route(arch, logits /*[T, 4]*/, {}, out /*[T, >= max_k]*/, workspace);

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <optional>
#include <span>
#include <string>

#include "smoe/core/error.hpp"
#include "smoe/core/limits.hpp"
#include "smoe/core/routing.hpp"
#include "smoe/core/workspace.hpp"
#include "smoe/kernels/cpu/finite_check.hpp"
#include "smoe/kernels/cpu/top_p.hpp"
#include "smoe/kernels/cpu/variable_k.hpp"
#include "smoe/router/control.hpp"
#include "smoe/router/router_base.hpp"
#include "smoe/router/route_checks.hpp"
#include "smoe/router/topk_config.hpp"

namespace smoe::inline v0::router {

struct TopPConfig {
    std::int64_t num_experts = 0;        // 1 <= E <= limits::kMaxExperts
    float top_p = 0.4f;                  // 0 < p <= 1 (the reference's top_p_threshold default); fp32 like the sums
    std::optional<std::int64_t> max_k;   // 1 <= max_k <= E; none means E
    std::int64_t min_k = 1;              // 1 <= min_k <= max_k
    ScoreFunc score_func = ScoreFunc::softmax;  // softmax only (a key for uniformity with the other routers)

    std::int64_t max_selected() const { return max_k.value_or(num_experts); }

    // Throws smoe::invalid_argument naming the key, the value and the valid range.
    void validate() const {
        using smoe::detail::fail;
        smoe::detail::require_in_range("num_experts", num_experts, 1, limits::kMaxExperts, "smoe::limits::kMaxExperts");
        if (!(std::isfinite(top_p) && top_p > 0.0f && top_p <= 1.0f)) fail("top_p", top_p, "a finite value with 0 < top_p <= 1");
        if (max_k && (*max_k < 1 || *max_k > num_experts))
            fail("max_k", *max_k, "1 <= max_k <= num_experts (" + std::to_string(num_experts) + ")");
        if (min_k < 1 || min_k > max_selected())
            fail("min_k", min_k, "1 <= min_k <= max_k (" + std::to_string(max_selected()) + ")");
        if (score_func != ScoreFunc::softmax)
            fail("score_func", to_string(score_func), "\"softmax\" (top_p is defined on softmax probabilities)");
    }
};

class TopP : public detail::RouterBase<TopP, TopPConfig> {
    friend RouterBase;  // workspace_size() calls carve()

public:
    using RouterBase::RouterBase;

    std::int64_t max_slots() const { return cfg_.max_selected(); }

    // logits [T, E]; bias must be empty (top-p has no selection bias); out [T, >= max_k]. Returns K =
    // the largest number of experts any token got (0 only for T = 0). Throws on non-finite logits.
    template <class Arch>
    std::int64_t route(Arch arch, MatrixView<float const> logits, std::span<float const> bias, TokenMajorOut out,
                       Workspace& ws) const {
        std::int64_t const E = cfg_.num_experts, max_k = max_slots();
        std::int64_t const T = checks::check_unbiased(arch, logits, bias, out, E, max_k, "max_k", "top_p");

        Scratch s = carve(ws, T);
        std::int64_t K = 0;
        for (std::int64_t t = 0; t < T; ++t) {
            std::int64_t const n = kernels::cpu::top_p_route_row(arch, logits.row(t), E, cfg_.top_p, cfg_.min_k, max_k,
                                                                 s.score.data(), s.keys.data(), out.expert_ids.row(t),
                                                                 out.expert_weights.row(t));
            s.count[t] = static_cast<std::int32_t>(n);
            K = std::max(K, n);
        }
        kernels::cpu::pad_rows(out.expert_ids, out.expert_weights, s.count, K);
        return K;
    }

    // Under test-time control (research.md §8): softmax over the allowed experts of x + a (or the
    // override row), times the boost and divided by its sum over A so that p stays a probability mass;
    // the scan runs over A only. Needs |A| >= min_k.
    template <class Arch>
    std::int64_t route(Arch arch, MatrixView<float const> logits, std::span<float const> bias, TokenMajorOut out,
                       Workspace& ws, RouterControl const& control) const {
        if (control.empty()) return route(arch, logits, bias, out, ws);
        std::int64_t const E = cfg_.num_experts, max_k = max_slots();
        std::int64_t const T = checks::check_unbiased(arch, logits, bias, out, E, max_k, "max_k", "top_p");
        control::validate(control, E, T, cfg_.min_k, "min_k");

        Scratch s = carve(ws, T);
        control::RowScratch const r = control::carve_row(ws, E);
        std::int64_t K = 0;
        for (std::int64_t t = 0; t < T; ++t) {
            control::controlled_scores(arch, ScoreFunc::softmax, control, logits.row(t), t, r, E);
            if (!control.boost.empty()) control::renormalise_allowed(control, r.score.data(), E);
            std::int64_t const n =
                scan(control, r.score.data(), s.keys.data(), out.expert_ids.row(t), out.expert_weights.row(t));
            s.count[t] = static_cast<std::int32_t>(n);
            K = std::max(K, n);
        }
        kernels::cpu::pad_rows(out.expert_ids, out.expert_weights, s.count, K);
        return K;
    }

private:
    // kernels::cpu::top_p_route_row's scan (fp32 prefix in row order, strictly greater than p, then
    // min_k / max_k) over the allowed experts' scores s.
    std::int64_t scan(RouterControl const& control, float const* s, std::uint64_t* keys, std::int32_t* ids,
                      float* w) const {
        std::int64_t m = 0;
        for (std::int64_t e = 0; e < cfg_.num_experts; ++e)
            if (control::allowed(control, e)) keys[m++] = kernels::cpu::weight_order_key(s[e], e);
        std::make_heap(keys, keys + m);
        std::uint64_t* heap_end = keys + m;
        bool const all = cfg_.top_p >= 1.0f;
        float prefix = 0.0f;
        bool crossed = false;
        std::int64_t n = 0;
        while (n < std::min(max_slots(), m) && (n < cfg_.min_k || !crossed)) {
            std::pop_heap(keys, heap_end--);
            ids[n] = kernels::cpu::weight_order_id(*heap_end);
            w[n] = kernels::cpu::weight_order_weight(*heap_end);
            prefix += w[n];
            ++n;
            if (!all && prefix > cfg_.top_p) crossed = true;
        }
        return n;
    }

    struct Scratch {
        std::span<float> score;          // [E]
        std::span<std::uint64_t> keys;   // [E]
        std::span<std::int32_t> count;   // [T]
    };

    template <class Alloc>
    Scratch carve(Alloc& a, std::int64_t T) const {
        auto const E = static_cast<std::size_t>(cfg_.num_experts);
        Scratch s;
        s.score = a.template take<float>(E);
        s.keys = a.template take<std::uint64_t>(E);
        s.count = a.template take<std::int32_t>(static_cast<std::size_t>(T));
        return s;
    }
};

}  // namespace smoe::inline v0::router
