#pragma once
// The steps of research.md §8 that every router shares, so each router's controlled path only says
// where they enter its own math: the record's validation at the call, the allowed set A, the offset
// logits, a score function over A, the override row and the boost. Nothing here runs when a call has
// no control: each router's route(..., control) hands an empty record to its plain route() (SparseMixer
// and Hash have one path, where an empty record costs a test per expert).

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>

#include "smoe/detail/xsimd.hpp"

#include "smoe/core/error.hpp"
#include "smoe/core/router_control.hpp"
#include "smoe/core/workspace.hpp"
#include "smoe/kernels/cpu/simd_map.hpp"
#include "smoe/kernels/cpu/softmax_topk.hpp"
#include "smoe/router/topk_config.hpp"

namespace smoe::inline v0::router::control {

// Per-call scratch of a controlled row: offset logits, scores, and the allowed entries of a masked softmax.
struct RowScratch {
    std::span<float> x, score, compact;
};

template <class Alloc>
RowScratch carve_row(Alloc& a, std::int64_t L) {
    auto const n = static_cast<std::size_t>(L);
    RowScratch r;
    r.x = a.template take<float>(n);
    r.score = a.template take<float>(n);
    r.compact = a.template take<float>(n);
    return r;
}

// The workspace of a router whose only scratch is the controlled row (hash, sparsemixer).
inline std::size_t row_workspace_size(std::int64_t L) {
    WorkspaceSize size;
    carve_row(size, L);
    return size.bytes();
}

inline bool allowed(RouterControl const& c, std::int64_t e) {
    return c.expert_mask.empty() || c.expert_mask[static_cast<std::size_t>(e)] != 0;
}

inline std::int64_t allowed_count(RouterControl const& c, std::int64_t L) {
    if (c.expert_mask.empty()) return L;
    return std::count_if(c.expert_mask.begin(), c.expert_mask.end(), [](std::uint8_t m) { return m != 0; });
}

namespace detail {

template <class V>
void check_length(std::span<V const> v, std::int64_t L, char const* name) {
    if (!v.empty() && static_cast<std::int64_t>(v.size()) != L)
        smoe::detail::fail(name, "length " + std::to_string(v.size()), "length num_logits() = " + std::to_string(L));
}

inline void check_values(std::span<float const> v, char const* name, bool non_negative) {
    for (std::size_t i = 0; i < v.size(); ++i)
        if (!std::isfinite(v[i]) || (non_negative && v[i] < 0.0f))
            smoe::detail::fail(name, smoe::detail::to_text(v[i]) + " at expert " + std::to_string(i),
                               non_negative ? "finite values >= 0" : "finite values");
}

}  // namespace detail

// research.md §8 "Validation": L = num_logits(), T tokens. `min_allowed` is the least |A| the router
// needs (k for fixed-k routers, min_k for top_p, 0 where any A works); `min_name` names that bound.
inline void validate(RouterControl const& c, std::int64_t L, std::int64_t T, std::int64_t min_allowed,
                     char const* min_name) {
    using smoe::detail::fail;
    detail::check_length(c.logit_offset, L, "logit_offset");
    detail::check_length(c.boost, L, "boost");
    detail::check_length(c.expert_mask, L, "expert_mask");
    detail::check_length(c.score_override, L, "score_override");
    detail::check_values(c.logit_offset, "logit_offset", false);
    detail::check_values(c.boost, "boost", true);
    for (std::size_t i = 0; i < c.expert_mask.size(); ++i)
        if (c.expert_mask[i] > 1)
            fail("expert_mask", std::to_string(c.expert_mask[i]) + " at expert " + std::to_string(i),
                 "0 (removed) or 1 (allowed)");
    std::int64_t const n_allowed = allowed_count(c, L);
    if (n_allowed < min_allowed)
        fail("expert_mask", std::to_string(n_allowed) + " allowed experts",
             std::string("at least ") + min_name + " = " + std::to_string(min_allowed));
    if (c.score_override.empty() != c.override_tokens.empty())
        fail(c.score_override.empty() ? "score_override" : "override_tokens", "none",
             c.score_override.empty() ? "a score row for override_tokens" : "the tokens score_override applies to");
    if (c.score_override.empty()) return;
    detail::check_values(c.score_override, "score_override", true);
    double sum = 0.0;
    for (std::int64_t e = 0; e < L; ++e)
        if (allowed(c, e)) sum += c.score_override[static_cast<std::size_t>(e)];
    if (!(sum > 0.0))
        fail("score_override", "a sum of " + smoe::detail::to_text(sum) + " over the allowed experts",
             "a positive sum");
    for (std::size_t i = 0; i < c.override_tokens.size(); ++i) {
        std::int32_t const t = c.override_tokens[i];
        if (t < 0 || t >= T || (i > 0 && t <= c.override_tokens[i - 1]))
            fail("override_tokens", std::to_string(t) + " at index " + std::to_string(i),
                 "strictly increasing token ids in [0, T = " + std::to_string(T) + ")");
    }
}

// The override row of token t, or null when t is not an override token.
inline float const* override_row(RouterControl const& c, std::int64_t t) {
    auto const it = std::lower_bound(c.override_tokens.begin(), c.override_tokens.end(), t);
    return it != c.override_tokens.end() && *it == t ? c.score_override.data() : nullptr;
}

// xo = x + a over the L logits of token t (x itself without an offset). A finite sum can still
// overflow, which would turn finite input into NaN scores: that is an error naming the offset.
inline float const* offset_row(RouterControl const& c, float const* x, float* xo, std::int64_t L, std::int64_t t) {
    if (c.logit_offset.empty()) return x;
    for (std::int64_t e = 0; e < L; ++e) {
        xo[e] = x[e] + c.logit_offset[static_cast<std::size_t>(e)];
        if (!std::isfinite(xo[e]))
            smoe::detail::fail("logit_offset",
                               smoe::detail::to_text(c.logit_offset[static_cast<std::size_t>(e)]) + " at token " +
                                   std::to_string(t) + ", expert " + std::to_string(e),
                               "an offset whose sum with the logit is finite");
    }
    return xo;
}

// sqrt(softplus(x)) (DeepSeek-V4, families.md §2.2), softplus with torch's threshold of 20 (x above it
// is returned as is); in double, one rounding to fp32.
inline float sqrt_softplus(float x) {
    double const v = static_cast<double>(x);
    return static_cast<float>(std::sqrt(v > 20.0 ? v : std::log1p(std::exp(v))));
}

// softmax_row's and sigmoid_row's arithmetic step for step (so the same bits), in functions of their
// own: one more call site of the kernels' own functions makes the compiler stop inlining them into the
// uncontrolled row, which measured 20 % slower for TopK (E 64, k 8, T 512) though it never runs this code.
template <class Arch>
void softmax_of(Arch arch, float const* x, float* s, std::int64_t n) {
    using batch = xsimd::batch<float, Arch>;
    batch const mv(kernels::cpu::row_max(arch, x, n));
    kernels::cpu::simd_map(arch, x, s, n, [&](batch v) { return kernels::cpu::exp_of_difference(v, mv); });
    double z = 0.0;
    for (std::int64_t i = 0; i < n; ++i) z += s[i];
    batch const zv(static_cast<float>(z));
    kernels::cpu::simd_map(arch, s, s, n, [&](batch v) { return v / zv; });
}

template <class Arch>
void sigmoid_of(Arch arch, float const* x, float* s, std::int64_t n) {
    using batch = xsimd::batch<float, Arch>;
    batch const one(1.0f);
    kernels::cpu::simd_map(arch, x, s, n, [&](batch v) { return one / (one + xsimd::exp(-v)); });
}

// s = score(xo) over A: softmax over the allowed entries only (the denominator sums over A), sigmoid
// or sqrt-softplus per entry; removed entries get 0 and must never be offered for selection. Without
// a mask the softmax is softmax_row's on the whole row, as the uncontrolled path computes it.
template <class Arch>
void score_row(Arch arch, ScoreFunc f, RouterControl const& c, float const* xo, float* s, float* compact,
               std::int64_t L) {
    if (f == ScoreFunc::softmax) {
        if (c.expert_mask.empty()) return softmax_of(arch, xo, s, L);
        std::int64_t n = 0;
        for (std::int64_t e = 0; e < L; ++e)
            if (allowed(c, e)) compact[n++] = xo[e];
        softmax_of(arch, compact, compact, n);
        for (std::int64_t e = 0, i = 0; e < L; ++e) s[e] = allowed(c, e) ? compact[i++] : 0.0f;
        return;
    }
    if (f == ScoreFunc::sigmoid)
        sigmoid_of(arch, xo, s, L);
    else
        for (std::int64_t e = 0; e < L; ++e) s[e] = sqrt_softplus(xo[e]);
    for (std::int64_t e = 0; e < L && !c.expert_mask.empty(); ++e)
        if (!allowed(c, e)) s[e] = 0.0f;
}

// s_e = v_e / Σ_(j∈A) v_j on A, 0 elsewhere (the sum in double, as softmax_row's denominator).
inline void override_scores(RouterControl const& c, float const* v, float* s, std::int64_t L) {
    double sum = 0.0;
    for (std::int64_t e = 0; e < L; ++e)
        if (allowed(c, e)) sum += v[e];
    auto const z = static_cast<float>(sum);
    for (std::int64_t e = 0; e < L; ++e) s[e] = allowed(c, e) ? v[e] / z : 0.0f;
}

inline void boost_scores(RouterControl const& c, float* s, std::int64_t L) {
    for (std::int64_t e = 0; e < L && !c.boost.empty(); ++e) s[e] *= c.boost[static_cast<std::size_t>(e)];
}

// Offset, score function over A, override: steps 1-4 of research.md §8 for token t.
template <class Arch>
void unboosted_scores(Arch arch, ScoreFunc f, RouterControl const& c, float const* x, std::int64_t t, float* xo,
                      float* s, float* compact, std::int64_t L) {
    if (float const* v = override_row(c, t))
        override_scores(c, v, s, L);
    else
        score_row(arch, f, c, offset_row(c, x, xo, L, t), s, compact, L);
}

// Steps 1-5: the above, then the boost.
template <class Arch>
void controlled_scores(Arch arch, ScoreFunc f, RouterControl const& c, float const* x, std::int64_t t, float* xo,
                       float* s, float* compact, std::int64_t L) {
    unboosted_scores(arch, f, c, x, t, xo, s, compact, L);
    boost_scores(c, s, L);
}

template <class Arch>
void controlled_scores(Arch arch, ScoreFunc f, RouterControl const& c, float const* x, std::int64_t t,
                       RowScratch const& r, std::int64_t L) {
    controlled_scores(arch, f, c, x, t, r.x.data(), r.score.data(), r.compact.data(), L);
}

// Divides the allowed scores by their sum (double), so a boosted distribution stays one (top_p); a row
// whose allowed scores are all 0 stays 0.
inline void renormalise_allowed(RouterControl const& c, float* s, std::int64_t L) {
    double sum = 0.0;
    for (std::int64_t e = 0; e < L; ++e)
        if (allowed(c, e)) sum += s[e];
    auto const z = static_cast<float>(sum);
    if (z > 0.0f)
        for (std::int64_t e = 0; e < L; ++e) s[e] /= z;
}

}  // namespace smoe::inline v0::router::control
