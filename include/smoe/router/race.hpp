#pragma once
// smoe::router::Race: Expert Race (research.md §4; Yuan, Wang, Huang, Zhu, Zhou, Yu, Min, "Expert Race:
// A Flexible Routing Strategy for Scaling Diffusion Transformer with Mixture of Experts", ICML 2025,
// arXiv 2503.16057). No official code exists; the tie order, race_group and T = 1 are smoe's (§10.8).
//
//   s[t, e] = score(L[t, e])   identity (the paper's choice: scores stay comparable across tokens),
//                              sigmoid, or softmax over the token's E logits
//   per race group g (race_group consecutive tokens; 0 = the whole call; a last partial group races
//   with its own size): the K_g = k · |g| candidates (t, e), t ∈ g, with the largest s win, ordered by
//   (s descending, token ascending, expert ascending); w[t, e] = s[t, e], no renormalisation or scaling
//
// A token gets 0 to E experts and nnz = k · T exactly, so this is a variable-k router: max_slots() = E,
// route() returns K = the largest count in the call, rows sorted by weight (ties to the lower id) and
// padded with -1 / 0. Identity weights may be zero or negative and are kept. The result depends on the
// whole group (not causal, not batch-invariant, as expert choice): an engine batching one token of each
// of several requests sets race_group to the tokens per request (1 when decoding) to keep them apart.
//
// Example (research.md §4): E = 4, T = 3, k = 2; logits t0 [2, −1, 0.5, 1], t1 [1.5, 1.5, 0.5, −2],
// t2 [−0.5, −1, 0.5, 0]. Identity, whole call (budget 6): t0 [0, 3, 2] 2, 1, 0.5; t1 [0, 1, 2] 1.5,
// 1.5, 0.5; t2 nothing (the sixth place is a three-way tie at 0.5 that the lower tokens win), K = 3.
// race_group 1: t0 [0, 3] 2, 1; t1 [0, 1] 1.5, 1.5; t2 [2, 3] 0.5, 0 (token choice, unnormalised).
//
//   smoe::router::Race router({.num_experts = 4, .top_k = 2});
//   router.route(arch, logits /*[T, 4]*/, {}, out /*[T, >= 4]*/, workspace);

#include <cstdint>
#include <span>
#include <string>

#include "smoe/core/error.hpp"
#include "smoe/core/limits.hpp"
#include "smoe/core/routing.hpp"
#include "smoe/core/workspace.hpp"
#include "smoe/kernels/cpu/race.hpp"
#include "smoe/kernels/cpu/softmax_topk.hpp"
#include "smoe/router/control.hpp"
#include "smoe/router/router_base.hpp"
#include "smoe/router/route_checks.hpp"

namespace smoe::inline v0::router {

// The score function of a race (its key `score_func`): identity is the paper's, and not one of
// router::ScoreFunc's, whose members all turn logits into probabilities.
enum class RaceScore { identity, sigmoid, softmax };

inline char const* to_string(RaceScore s) {
    return s == RaceScore::identity ? "identity" : s == RaceScore::sigmoid ? "sigmoid" : "softmax";
}

inline RaceScore parse_race_score(std::string const& s) {
    if (s == "identity") return RaceScore::identity;
    if (s == "sigmoid") return RaceScore::sigmoid;
    if (s == "softmax") return RaceScore::softmax;
    smoe::detail::fail("score_func", s, "\"identity\", \"sigmoid\" or \"softmax\"");
}

struct RaceConfig {
    std::int64_t num_experts = 0;        // 1 <= E <= limits::kMaxExperts
    std::int64_t top_k = 0;              // 1 <= k <= E: the budget per token
    RaceScore score = RaceScore::identity;
    std::int64_t race_group = 0;         // >= 0 tokens per race, consecutive; 0 = the whole call

    // Throws smoe::invalid_argument naming the key, the value and the valid range.
    void validate() const {
        smoe::detail::require_in_range("num_experts", num_experts, 1, limits::kMaxExperts, "smoe::limits::kMaxExperts");
        if (top_k < 1 || top_k > num_experts)
            smoe::detail::fail("top_k", top_k, "1 <= top_k <= num_experts (" + std::to_string(num_experts) + ")");
        if (race_group < 0) smoe::detail::fail("race_group", race_group, "a group size >= 0 (0: the whole call)");
        if (static_cast<int>(score) > static_cast<int>(RaceScore::softmax))
            smoe::detail::fail("score_func", static_cast<int>(score), "identity, sigmoid or softmax");
    }
};

class Race : public detail::RouterBase<Race, RaceConfig> {
    friend RouterBase;  // workspace_size() calls carve()

public:
    using RouterBase::RouterBase;

    std::int64_t max_slots() const { return cfg_.num_experts; }
    // nnz = k · T exactly: a layer sizes its per-row buffers for this, not T · max_slots().
    std::int64_t max_routed_rows(std::int64_t T) const { return cfg_.top_k * T; }

    // logits [T, E]; bias must be empty (a race has no selection bias); out [T, >= E]. Returns K = the
    // largest number of experts any token got (0 only for T = 0). Throws on non-finite logits.
    template <class Arch>
    std::int64_t route(Arch arch, MatrixView<float const> logits, std::span<float const> bias, TokenMajorOut out,
                       Workspace& ws) const {
        std::int64_t const E = cfg_.num_experts;
        std::int64_t const T = checks::check_unbiased(arch, logits, bias, out, E, E, "num_experts", "race");
        Scratch s = carve(ws, T);
        for (std::int64_t t = 0; t < T; ++t) {
            float* const st = s.score.row(t);
            if (cfg_.score == RaceScore::softmax)
                kernels::cpu::softmax_row(arch, logits.row(t), st, E);
            else if (cfg_.score == RaceScore::sigmoid)
                kernels::cpu::sigmoid_row(arch, logits.row(t), st, E);
            else
                std::copy(logits.row(t), logits.row(t) + E, st);
        }
        return kernels::cpu::race_select(MatrixView<float const>(s.score), cfg_.top_k, cfg_.race_group, {},
                                         out.expert_ids, out.expert_weights, s.keys, s.count);
    }

    // Under test-time control (research.md §8's race row): the offset enters the logits, the score
    // function runs over the allowed experts (softmax's denominator too), an override token's scores
    // are v / Σ_A v, the boost multiplies s, and a removed expert is no candidate. Needs |A| >= k.
    template <class Arch>
    std::int64_t route(Arch arch, MatrixView<float const> logits, std::span<float const> bias, TokenMajorOut out,
                       Workspace& ws, RouterControl const& control) const {
        if (control.empty()) return route(arch, logits, bias, out, ws);
        std::int64_t const E = cfg_.num_experts;
        std::int64_t const T = checks::check_unbiased(arch, logits, bias, out, E, E, "num_experts", "race");
        control::validate(control, E, T, cfg_.top_k, "top_k");
        Scratch s = carve(ws, T);
        control::RowScratch const r = control::carve_row(ws, E);
        for (std::int64_t t = 0; t < T; ++t) {
            float* const st = s.score.row(t);
            if (float const* v = control::override_row(control, t)) {
                control::override_scores(control, v, st, E);
            } else {
                float const* xo = control::offset_row(control, logits.row(t), r.x.data(), E, t);
                if (cfg_.score == RaceScore::identity)
                    std::copy(xo, xo + E, st);
                else
                    control::score_row(arch, cfg_.score == RaceScore::softmax ? ScoreFunc::softmax : ScoreFunc::sigmoid,
                                       control, xo, st, r.compact.data(), E);
            }
            control::boost_scores(control, st, E);
        }
        return kernels::cpu::race_select(MatrixView<float const>(s.score), cfg_.top_k, cfg_.race_group,
                                         control.expert_mask, out.expert_ids, out.expert_weights, s.keys, s.count);
    }

private:
    struct Scratch {
        MatrixView<float> score;          // [T, E]
        std::span<std::uint64_t> keys;    // [T · E]: one group's candidates, then a row's sort keys
        std::span<std::int32_t> count;    // [T]
    };

    template <class Alloc>
    Scratch carve(Alloc& a, std::int64_t T) const {
        std::int64_t const E = cfg_.num_experts;
        auto const n = static_cast<std::size_t>(T * E);
        Scratch s;
        s.score = MatrixView<float>(a.template take<float>(n).data(), T, E);
        s.keys = a.template take<std::uint64_t>(std::max<std::size_t>(n, static_cast<std::size_t>(E)));
        s.count = a.template take<std::int32_t>(static_cast<std::size_t>(T));
        return s;
    }
};

}  // namespace smoe::inline v0::router
