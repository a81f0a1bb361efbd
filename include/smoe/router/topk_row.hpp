#pragma once
// router::TopK's row for the calls kernels/cpu/softmax_topk.hpp's SIMD row does not cover: a call with
// a RouterControl (research.md §8), and the options group_score, norm_p, sqrtsoftplus and identity
// null columns (routing.md §10.1, families.md §2). It follows routing.md §2 step by step, with §8's
// control steps in their places; without control and options it selects as the SIMD row does (tested),
// but the plain path never comes here, so an uncontrolled call keeps its bits and speed.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <span>

#include "smoe/core/router_control.hpp"
#include "smoe/kernels/cpu/softmax_topk.hpp"
#include "smoe/router/control.hpp"
#include "smoe/router/topk_config.hpp"

namespace smoe::inline v0::router::detail {

struct TopKRowScratch {
    std::span<float> x;        // [L] offset logits
    std::span<float> score;    // [L] s
    std::span<float> select;   // [L] c = s + bias
    std::span<float> compact;  // [L] the allowed entries of a masked softmax
    std::span<float> group_val;
    std::span<std::int32_t> group_id;
};

// The score of the group whose members are c[0, G) (expert ids first..): over its allowed members only
// (research.md §8 step 7), −inf without one; by cfg.group_score, summing as many of the largest as the
// group has when it has fewer. `best` is scratch for up to G values.
inline float group_score(TopKConfig const& cfg, RouterControl const& ctl, float const* c, std::int64_t first,
                         std::int64_t G, bool biased, float* best) {
    std::int64_t take = 1;
    if (cfg.group_score == GroupScore::top2_sum || (cfg.group_score == GroupScore::max_or_top2 && biased)) take = 2;
    if (cfg.group_score == GroupScore::topk_over_groups_sum) take = cfg.top_k / cfg.groups_kept();
    std::int64_t n = 0;
    for (std::int64_t i = 0; i < G; ++i) {
        if (!control::allowed(ctl, first + i)) continue;
        float const v = c[i];
        if (n == take && !(v > best[take - 1])) continue;
        std::int64_t p = std::min(n, take - 1);
        for (; p > 0 && v > best[p - 1]; --p) best[p] = best[p - 1];
        best[p] = v;
        n = std::min(n + 1, take);
    }
    if (n == 0) return -std::numeric_limits<float>::infinity();
    float sum = 0.0f;
    for (std::int64_t i = 0; i < n; ++i) sum += best[i];  // largest first, as the SIMD row adds a + b
    return sum;
}

// score_after_topk (routing.md §2 A) under control: the boost adds ln b to the logits (b = 0 removes
// the expert); an override token selects the top-k of v ⊙ b over A and renormalises it over S.
template <class Arch>
void topk_after_row(Arch, TopKConfig const& cfg, RouterControl const& ctl, float const* x, std::int64_t t,
                    TopKRowScratch const& s, std::int32_t* ids, float* w) {
    std::int64_t const L = cfg.num_logits(), k = cfg.top_k;
    kernels::cpu::TopList top{ids, w, k};
    if (float const* v = control::override_row(ctl, t)) {
        for (std::int64_t e = 0; e < L; ++e)
            if (control::allowed(ctl, e))
                top.offer(ctl.boost.empty() ? v[e] : v[e] * ctl.boost[static_cast<std::size_t>(e)],
                          static_cast<std::int32_t>(e));
        double z = 0.0;
        for (std::int64_t j = 0; j < k; ++j) z += w[j];
        auto const zf = static_cast<float>(z);
        for (std::int64_t j = 0; j < k; ++j) w[j] = zf > 0.0f ? w[j] / zf * cfg.routed_scaling_factor : 0.0f;
        kernels::cpu::sort_by_weight(ids, w, k);
        return;
    }
    float const* xo = control::offset_row(ctl, x, s.x.data(), L, t);
    for (std::int64_t e = 0; e < L; ++e) {
        if (!control::allowed(ctl, e)) continue;
        float const b = ctl.boost.empty() ? 1.0f : ctl.boost[static_cast<std::size_t>(e)];
        if (b > 0.0f) top.offer(b == 1.0f ? xo[e] : xo[e] + std::log(b), static_cast<std::int32_t>(e));
    }
    float const m = w[0];
    double z = 0.0;  // in double, as the SIMD row
    for (std::int64_t j = 0; j < k; ++j) z += (w[j] = kernels::cpu::exp_of_difference(w[j], m));
    auto const zf = static_cast<float>(z);
    for (std::int64_t j = 0; j < k; ++j) w[j] = w[j] / zf * cfg.routed_scaling_factor;
    kernels::cpu::sort_by_weight(ids, w, k);
}

// routing.md §2 B with research.md §8's steps: scores over A, override, boost, c = s + bias, groups
// over A, top-k of c over eligible ∩ A, w = s (p-norm renormalisation, scaling), sorted by weight.
template <class Arch>
void topk_general_row(Arch arch, TopKConfig const& cfg, RouterControl const& ctl, float const* x, float const* bias,
                      std::int64_t t, TopKRowScratch const& s, std::int32_t* ids, float* w) {
    if (cfg.score_after_topk) return topk_after_row(arch, cfg, ctl, x, t, s, ids, w);
    std::int64_t const L = cfg.num_logits(), k = cfg.top_k;
    float* const score = s.score.data();
    control::controlled_scores(arch, cfg.score_func, ctl, x, t, s.x.data(), score, s.compact.data(), L);
    float const* c = score;
    if (bias) {
        for (std::int64_t e = 0; e < L; ++e) s.select[e] = score[e] + bias[e];
        c = s.select.data();
    }
    kernels::cpu::TopList top{ids, w, k};
    auto offer = [&](std::int64_t e) {
        if (control::allowed(ctl, e)) top.offer(c[e], static_cast<std::int32_t>(e));
    };
    if (cfg.n_group > 1) {
        std::int64_t const G = cfg.group_size(), keep = cfg.groups_kept();
        kernels::cpu::TopList groups{s.group_id.data(), s.group_val.data(), keep};
        for (std::int64_t g = 0; g < cfg.n_group; ++g)
            groups.offer(group_score(cfg, ctl, c + g * G, g * G, G, bias != nullptr, s.compact.data()),
                         static_cast<std::int32_t>(g));
        std::sort(s.group_id.data(), s.group_id.data() + keep);  // candidates must arrive in ascending id
        for (std::int64_t gi = 0; gi < keep; ++gi)
            for (std::int64_t e = s.group_id[gi] * G, end = e + G; e < end; ++e) offer(e);
    } else {
        for (std::int64_t e = 0; e < L; ++e) offer(e);
    }
    for (std::int64_t j = 0; j < k; ++j) w[j] = score[ids[j]];  // the bias never enters a weight
    if (cfg.norm_topk_prob) {
        double sum = 0.0;
        if (cfg.norm_p == 1.0f) {
            for (std::int64_t j = 0; j < k; ++j) sum += w[j];
        } else {
            double const p = cfg.norm_p;
            for (std::int64_t j = 0; j < k; ++j) sum += std::pow(static_cast<double>(w[j]), p);
            sum = std::pow(sum, 1.0 / p);
        }
        auto const denom = static_cast<float>(sum + cfg.norm_eps);
        if (denom > 0.0f)  // all-zero selected scores keep weight 0, as the SIMD row (no NaN from finite input)
            for (std::int64_t j = 0; j < k; ++j) w[j] /= denom;
    }
    if (cfg.routed_scaling_factor != 1.0f)
        for (std::int64_t j = 0; j < k; ++j) w[j] *= cfg.routed_scaling_factor;
    kernels::cpu::sort_by_weight(ids, w, k);
}

}  // namespace smoe::inline v0::router::detail
