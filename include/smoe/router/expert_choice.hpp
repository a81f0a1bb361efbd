#pragma once
// smoe::router::ExpertChoice: each expert takes its C best tokens (routing.md §3; Zhou et al.,
// "Mixture-of-Experts with Expert Choice Routing", NeurIPS 2022; google/flaxformer
// ExpertsChooseMaskedRouter).
//
//   s[t, ·] = softmax(L[t, ·]) over the experts (or sigmoid per element)
//   C       = capacity, or ceil((T / E) · capacity_factor) in IEEE double, in exactly that order
//             (Megatron get_capacity; T = 150, E = 3, 1.1 gives 56 where exact arithmetic gives 55)
//   C_eff   = min(C, T)
//   expert e takes the top-C_eff tokens by s[·, e], ties to the lower token id, with w = s[t, e]
//             (no renormalisation, no scaling)
//
// A token is chosen by 0 to E experts, so this is a variable-k router: max_slots() = E and route()
// returns K = the largest count of any token in the batch (rows padded with -1 / 0). The routing is a
// function of the T tokens of one call; with C >= T (every T = 1 call) every expert takes every token
// and the layer computes densely. Expert choice bounds every expert's load by C itself
// (`bounds_load`), so MoELayer rejects a balancer that drops tokens at compile time.
//
// Example (routing.md §3): E = 3, T = 4, capacity_factor 1.5, so C = ceil((4 / 3) · 1.5) = 2;
// logits t0 [2, 0, 0], t1 = t2 = [1, 1, −1], t3 [−1, 2, 0.5]. Expert 0 takes t0, t1 (t1 beats its
// twin t2), expert 1 takes t3, t1, expert 2 takes t3, t0; t2 is dropped. Token-major, K = 2:
// t0 [0, 2] 0.786986, 0.106507; t1 [0, 1] 0.468311, 0.468311; t2 [−1, −1]; t3 [1, 2] 0.785597, 0.17529.
//
//   smoe::router::ExpertChoice router({.num_experts = 3, .capacity_factor = 1.5});
//   router.route(arch, logits /*[T, 3]*/, {}, out /*[T, >= 3]*/, workspace);
//   std::int64_t C = router.capacity(T);  // for the fixed-capacity view below

#include <cmath>
#include <cstdint>
#include <limits>
#include <optional>
#include <span>
#include <string>

#include "smoe/core/error.hpp"
#include "smoe/core/limits.hpp"
#include "smoe/core/routing.hpp"
#include "smoe/core/workspace.hpp"
#include "smoe/kernels/cpu/expert_choice.hpp"
#include "smoe/kernels/cpu/finite_check.hpp"
#include "smoe/kernels/cpu/softmax_topk.hpp"
#include "smoe/router/topk_config.hpp"
#include "smoe/router/control.hpp"
#include "smoe/router/router_base.hpp"
#include "smoe/router/route_checks.hpp"

namespace smoe::inline v0::router {

struct ExpertChoiceConfig {
    std::int64_t num_experts = 0;                // E >= 1
    std::optional<std::int64_t> capacity;        // 1 <= C <= limits::kMaxTokens; exactly one of capacity, capacity_factor
    std::optional<double> capacity_factor;       // 0 < f <= limits::kMaxCapacityFactor
    ScoreFunc score_func = ScoreFunc::softmax;   // the paper's softmax, or sigmoid

    // Throws smoe::invalid_argument naming the key, the value and the valid range.
    void validate() const {
        using smoe::detail::fail;
        smoe::detail::require_in_range("num_experts", num_experts, 1, limits::kMaxExperts, "smoe::limits::kMaxExperts");
        if (score_func == ScoreFunc::sqrtsoftplus)
            fail("score_func", to_string(score_func), "\"softmax\" or \"sigmoid\"");
        if (capacity && capacity_factor)
            fail("capacity", *capacity, "exactly one of capacity and capacity_factor (both are set)");
        if (!capacity && !capacity_factor)
            fail("capacity", "none", "exactly one of capacity and capacity_factor (neither is set)");
        // The [E, C] fixed-capacity view is sized by C: a capacity above any call's tokens is refused.
        if (capacity)
            smoe::detail::require_in_range("capacity", *capacity, 1, limits::kMaxTokens, "smoe::limits::kMaxTokens");
        if (capacity_factor && !(*capacity_factor > 0.0 && *capacity_factor <= limits::kMaxCapacityFactor))
            fail("capacity_factor", *capacity_factor, "0 < capacity_factor <= 1024 (smoe::limits::kMaxCapacityFactor)");
    }

    // C for a call of T tokens: `capacity`, or ceil((T / E) · capacity_factor) in double, in this order.
    // Only min(C, T) is ever used to select; the saturation guards a config that skipped validate().
    std::int64_t capacity_for(std::int64_t T) const {
        if (capacity) return *capacity;
        double const c = std::ceil((static_cast<double>(T) / static_cast<double>(num_experts)) * *capacity_factor);
        return c >= 0x1p63 ? std::numeric_limits<std::int64_t>::max() : static_cast<std::int64_t>(c);
    }
};

class ExpertChoice : public detail::RouterBase<ExpertChoice, ExpertChoiceConfig> {
public:
    // Every expert takes at most C tokens: a token-dropping balancer has nothing to do (concepts.hpp).
    static constexpr bool bounds_load = true;

    using RouterBase::RouterBase;

    std::int64_t max_slots() const { return cfg_.num_experts; }
    // The capacity C of a call with T tokens (the width of the fixed-capacity view).
    std::int64_t capacity(std::int64_t T) const { return cfg_.capacity_for(T); }

    std::size_t workspace_size(std::int64_t max_tokens) const {
        WorkspaceSize size;
        carve(size, max_tokens);
        control::carve_row(size, cfg_.num_experts);
        size.add<std::int32_t>(static_cast<std::size_t>(cfg_.num_experts));
        return size.bytes();
    }

    // logits [T, E]; bias must be empty (expert choice has no selection bias); out [T, >= E].
    // Returns K = the largest number of experts any token got (0 when nothing is selected).
    template <class Arch>
    std::int64_t route(Arch arch, MatrixView<float const> logits, std::span<float const> bias, TokenMajorOut out,
                       Workspace& ws) const {
        std::int64_t const E = cfg_.num_experts;
        std::int64_t const T = checks::check_unbiased(arch, logits, bias, out, E, E, "num_experts", "expert_choice");

        Scratch s = carve(ws, T);
        for (std::int64_t t = 0; t < T; ++t) {
            if (cfg_.score_func == ScoreFunc::softmax)
                kernels::cpu::softmax_row(arch, logits.row(t), s.score.row(t), E);
            else
                kernels::cpu::sigmoid_row(arch, logits.row(t), s.score.row(t), E);
        }
        std::int64_t const c_eff = std::min(capacity(T), T);
        return kernels::cpu::expert_choice_select(s.score, c_eff, out.expert_ids, out.expert_weights, s.keys, s.count);
    }

    // Under test-time control (research.md §8): each token's softmax (or sigmoid) of x + a over the
    // allowed experts, or its override row, ranks the tokens of every allowed expert; a removed expert
    // takes no token. The boost multiplies the weights only: a per-expert factor would keep each
    // expert's token ranking anyway, and a factor of 0 must not turn the ranking into ties.
    template <class Arch>
    std::int64_t route(Arch arch, MatrixView<float const> logits, std::span<float const> bias, TokenMajorOut out,
                       Workspace& ws, RouterControl const& control) const {
        if (control.empty()) return route(arch, logits, bias, out, ws);
        std::int64_t const E = cfg_.num_experts;
        std::int64_t const T = checks::check_unbiased(arch, logits, bias, out, E, E, "num_experts", "expert_choice");
        control::validate(control, E, T, 0, "");

        Scratch s = carve(ws, T);
        control::RowScratch const r = control::carve_row(ws, E);
        std::span<std::int32_t> const expert_of = ws.take<std::int32_t>(static_cast<std::size_t>(E));
        std::int64_t A = 0;  // the allowed experts become the columns of a [T, A] score matrix
        for (std::int64_t e = 0; e < E; ++e)
            if (control::allowed(control, e)) expert_of[static_cast<std::size_t>(A++)] = static_cast<std::int32_t>(e);
        MatrixView<float> const score(s.score.data, T, A);
        for (std::int64_t t = 0; t < T; ++t) {
            control::unboosted_scores(arch, cfg_.score_func, control, logits.row(t), t, r.x.data(), r.score.data(),
                                      r.compact.data(), E);
            for (std::int64_t i = 0; i < A; ++i) score(t, i) = r.score[expert_of[static_cast<std::size_t>(i)]];
        }
        std::int64_t const c_eff = std::min(capacity(T), T);
        std::int64_t const K = kernels::cpu::expert_choice_select(MatrixView<float const>(score), c_eff, out.expert_ids,
                                                                  out.expert_weights, s.keys, s.count);
        for (std::int64_t t = 0; t < T; ++t) {
            std::int32_t* const ids = out.expert_ids.row(t);
            float* const w = out.expert_weights.row(t);
            for (std::int64_t j = 0; j < s.count[t]; ++j) {
                ids[j] = expert_of[static_cast<std::size_t>(ids[j])];
                if (!control.boost.empty()) w[j] *= control.boost[static_cast<std::size_t>(ids[j])];
            }
            if (!control.boost.empty()) kernels::cpu::sort_row_by_weight(ids, w, s.count[t], s.keys);
        }
        return K;
    }

private:
    struct Scratch {
        MatrixView<float> score;          // [T, E]
        std::span<std::uint64_t> keys;    // [max(T, E)]
        std::span<std::int32_t> count;    // [T]
    };

    template <class Alloc>
    Scratch carve(Alloc& a, std::int64_t T) const {
        std::int64_t const E = cfg_.num_experts;
        Scratch s;
        s.score = MatrixView<float>(a.template take<float>(static_cast<std::size_t>(T * E)).data(), T, E);
        s.keys = a.template take<std::uint64_t>(static_cast<std::size_t>(std::max(T, E)));
        s.count = a.template take<std::int32_t>(static_cast<std::size_t>(T));
        return s;
    }

};

// The fixed-capacity view of routing.md §1 (cases.md): token_ids [E, C] and weights [E, C], row e the
// CSR row e (increasing token id) padded with -1 / 0 up to C. C is the router's capacity(T) (any
// C >= every expert's load works). Throws if the spans are not E · C long or an expert's load exceeds C.
inline void expert_choice_capacity_view(RoutingResult const& r, std::int64_t C, std::span<std::int32_t> token_ids,
                                        std::span<float> weights) {
    using smoe::detail::fail;
    std::int64_t const E = r.num_experts;
    if (C < 0) fail("C", C, "a capacity >= 0");
    if (C > 0 && E > std::numeric_limits<std::int64_t>::max() / C) fail("C", C, "num_experts * C to fit int64");
    auto const n = static_cast<std::size_t>(E * C);
    if (token_ids.size() != n)
        fail("token_ids", "length " + std::to_string(token_ids.size()), "num_experts * C = " + std::to_string(n));
    if (weights.size() != n)
        fail("weights", "length " + std::to_string(weights.size()), "num_experts * C = " + std::to_string(n));
    for (std::int64_t e = 0; e < E; ++e) {
        std::int64_t const load = r.load(e);
        if (load > C)
            fail("C", C, "at least the load of every expert (expert " + std::to_string(e) + " has " + std::to_string(load) + ")");
        std::int64_t const begin = r.offsets[e];
        for (std::int64_t i = 0; i < C; ++i) {
            token_ids[e * C + i] = i < load ? r.token_ids[begin + i] : -1;
            weights[e * C + i] = i < load ? r.weights[begin + i] : 0.0f;
        }
    }
}

}  // namespace smoe::inline v0::router
