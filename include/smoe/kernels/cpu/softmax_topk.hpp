#pragma once
// The score-and-select step of router::TopK (routing.md §2) for one token row: SIMD scores (softmax or
// sigmoid over E), an optional selection bias and group limit, a top-k by the tie rule, and the
// weights. Selection keeps a sorted list of k candidates; candidates arrive in ascending expert id,
// so a strict comparison is enough to give ties to the lower id.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <span>
#include <type_traits>

#include "smoe/detail/xsimd.hpp"

#include "smoe/kernels/cpu/simd_map.hpp"
#include "smoe/macros.hpp"
#include "smoe/router/topk_config.hpp"

namespace smoe::inline v0::kernels::cpu {

template <class Arch>
float row_max(Arch, float const* x, std::int64_t n) {
    using batch = xsimd::batch<float, Arch>;
    constexpr std::int64_t W = batch::size;
    float m = x[0];
    std::int64_t i = 0;
    if (n >= W) {
        batch mv = batch::load_unaligned(x);
        for (i = W; i + W <= n; i += W) mv = xsimd::max(mv, batch::load_unaligned(x + i));
        alignas(64) float lanes[W];
        mv.store_aligned(lanes);
        m = *std::max_element(lanes, lanes + W);
    }
    for (; i < n; ++i) m = std::max(m, x[i]);
    return m;
}

// exp(a - b) without the rounding error of the fp32 subtraction.
template <class T>
SMOE_ALWAYS_INLINE T exp_of_difference(T a, T b) {
    T const hi = a - b;
    T const bb = hi - a;
    T const lo = (a - (hi - bb)) - (b + bb);
    if constexpr (std::is_same_v<T, float>)
        return std::exp(hi) * (1.0f + lo);
    else
        return xsimd::exp(hi) * (T(1.0f) + lo);
}

// s = softmax(x) over n entries.
template <class Arch>
void softmax_row(Arch arch, float const* x, float* s, std::int64_t n) {
    using batch = xsimd::batch<float, Arch>;
    float const m = row_max(arch, x, n);
    batch const mv(m);
    // x - m rounds in fp32 (for x - m near -50 by up to 2e-6 relative in exp), which alone would
    // break the 1e-6 weight agreement of routing.md §0; TwoSum recovers the rounding error r exactly
    // and exp(hi + r) = exp(hi) * (1 + r) to fp32 precision, since |r| <= 2^-24 |hi|.
    simd_map(arch, x, s, n, [&](batch v) { return exp_of_difference(v, mv); });
    // The denominator is summed in double: an fp32 sum of up to 256 terms alone costs up to 1e-6
    // relative, the whole weight budget of routing.md §0; in double only exp's and one final
    // rounding remain (measured 2e-7).
    double z = 0.0;
    for (std::int64_t i = 0; i < n; ++i) z += s[i];
    batch const zv(static_cast<float>(z));
    simd_map(arch, s, s, n, [&](batch v) { return v / zv; });
}

// s = 1 / (1 + exp(-x)).
template <class Arch>
void sigmoid_row(Arch arch, float const* x, float* s, std::int64_t n) {
    using batch = xsimd::batch<float, Arch>;
    batch const one(1.0f);
    simd_map(arch, x, s, n, [&](batch v) { return one / (one + xsimd::exp(-v)); });
}

// A top-n list ordered by (value descending, id ascending). Candidates must be offered in ascending id.
struct TopList {
    std::int32_t* ids;
    float* vals;
    std::int64_t capacity;
    std::int64_t size = 0;

    void offer(float v, std::int32_t id) {
        if (size == capacity && !(v > vals[size - 1])) return;
        std::int64_t p = size < capacity ? size : capacity - 1;
        while (p > 0 && v > vals[p - 1]) {
            vals[p] = vals[p - 1];
            ids[p] = ids[p - 1];
            --p;
        }
        vals[p] = v;
        ids[p] = id;
        if (size < capacity) ++size;
    }
};

// Sorts k (id, weight) pairs by weight descending, ties to the lower id (the token-major row order).
inline void sort_by_weight(std::int32_t* ids, float* w, std::int64_t k) {
    for (std::int64_t i = 1; i < k; ++i) {
        std::int32_t const id = ids[i];
        float const v = w[i];
        std::int64_t p = i;
        while (p > 0 && (v > w[p - 1] || (v == w[p - 1] && id < ids[p - 1]))) {
            w[p] = w[p - 1];
            ids[p] = ids[p - 1];
            --p;
        }
        w[p] = v;
        ids[p] = id;
    }
}

// Per-call scratch of the top-k kernel, sized by topk_scratch_floats.
struct TopKScratch {
    std::span<float> score;      // [E] weighting score s
    std::span<float> select;     // [E] selection score c = s + bias
    std::span<float> group_val;  // [n_group]
    std::span<std::int32_t> group_id;  // [n_group]
};

// Routes one token: x [E] logits, bias [E] or null; writes k ids and weights, ordered by weight.
template <class Arch>
void topk_route_row(Arch arch, router::TopKConfig const& cfg, float const* x, float const* bias, TopKScratch const& s,
                    std::int32_t* ids, float* w) {
    std::int64_t const E = cfg.num_experts, k = cfg.top_k;
    TopList top{ids, w, k};
    if (cfg.score_after_topk) {
        for (std::int64_t e = 0; e < E; ++e) top.offer(x[e], static_cast<std::int32_t>(e));
        float const m = w[0];
        double z = 0.0;  // in double, as in softmax_row
        for (std::int64_t j = 0; j < k; ++j) z += (w[j] = exp_of_difference(w[j], m));
        auto const zf = static_cast<float>(z);
        for (std::int64_t j = 0; j < k; ++j) w[j] = w[j] / zf * cfg.routed_scaling_factor;
        sort_by_weight(ids, w, k);
        return;
    }
    float* const score = s.score.data();
    if (cfg.score_func == router::ScoreFunc::softmax)
        softmax_row(arch, x, score, E);
    else
        sigmoid_row(arch, x, score, E);
    float const* c = score;
    if (bias) {
        for (std::int64_t e = 0; e < E; ++e) s.select[e] = score[e] + bias[e];
        c = s.select.data();
    }
    if (cfg.n_group > 1) {
        std::int64_t const G = cfg.group_size(), keep = cfg.groups_kept();
        TopList groups{s.group_id.data(), s.group_val.data(), keep};
        for (std::int64_t g = 0; g < cfg.n_group; ++g) {
            float const* cg = c + g * G;
            float gs;
            if (bias) {  // DeepSeek-V3 noaux_tc: the sum of the two largest in the group
                float a = std::max(cg[0], cg[1]), b = std::min(cg[0], cg[1]);
                for (std::int64_t i = 2; i < G; ++i) {
                    if (cg[i] > a) {
                        b = a;
                        a = cg[i];
                    } else if (cg[i] > b) {
                        b = cg[i];
                    }
                }
                gs = a + b;
            } else {  // DeepSeek-V2 group_limited_greedy: the group maximum
                gs = *std::max_element(cg, cg + G);
            }
            groups.offer(gs, static_cast<std::int32_t>(g));
        }
        // Visit kept groups in ascending id so expert candidates still arrive in ascending id.
        std::sort(s.group_id.data(), s.group_id.data() + keep);
        for (std::int64_t gi = 0; gi < keep; ++gi)
            for (std::int64_t e = s.group_id[gi] * G, end = e + G; e < end; ++e) top.offer(c[e], static_cast<std::int32_t>(e));
    } else {
        for (std::int64_t e = 0; e < E; ++e) top.offer(c[e], static_cast<std::int32_t>(e));
    }
    for (std::int64_t j = 0; j < k; ++j) w[j] = score[ids[j]];  // the bias never enters a weight
    if (cfg.norm_topk_prob) {
        double sum = 0.0;  // in double for the same reason as softmax_row's denominator
        for (std::int64_t j = 0; j < k; ++j) sum += w[j];
        auto const denom = static_cast<float>(sum + cfg.norm_eps);
        // Every selected sigmoid score can underflow to 0 (logits below about -104 in fp32); with
        // norm_eps = 0 that is 0 / 0, and no router may turn finite input into NaN (routing.md §0),
        // so the weights stay 0, as the oracle keeps them.
        if (denom > 0.0f)
            for (std::int64_t j = 0; j < k; ++j) w[j] /= denom;
    }
    if (cfg.routed_scaling_factor != 1.0f)
        for (std::int64_t j = 0; j < k; ++j) w[j] *= cfg.routed_scaling_factor;
    sort_by_weight(ids, w, k);
}

}  // namespace smoe::inline v0::kernels::cpu
