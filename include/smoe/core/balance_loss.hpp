#pragma once
// Training-time balance losses and the router z-loss as values (balance.md §6). smoe computes no
// gradients: these exist so that an engine can log them, and so that a case file's `aux_loss` and
// `z_loss` can be compared with Megatron-LM and Hugging Face. Input is the router's fp32 logits
// [T, E]; everything is accumulated in double.
//
// The three load-balancing normalisations in use all reduce to one product. With
//     S_e = Σ_t p_te   (summed router probability of expert e)
//     c_e              (slots a plain top-k of p gives expert e, Σ_e c_e = k·T)
// they are
//     Megatron switch_load_balancing_loss_func   coeff · E / (k·T²) · Σ_e S_e c_e     uniform: coeff
//     HF load_balancing_loss_func                coeff · E / T²     · Σ_e S_e c_e     uniform: k·coeff
//     first choice (DeepSpeed top2gating,        coeff · E / T²     · Σ_e S_e c1_e    uniform: coeff
//       Tutel gshard_loss, HF Switch)
// DeepSpeed topkgating (E²/k · mean_e(mean_t p · c/T)) is the Megatron value and has no function here.
//
// Why HF is k × Megatron: HF averages its one-hot mask [T, k, E] over tokens only, so its
// tokens_per_expert[j][e] is the fraction of tokens whose j-th choice is e, and summing the product
// with mean_t p over j and e gives Σ_e (c_e / T) · (S_e / T) with c counting all k slots. Megatron
// divides the same sum by k, so that uniform routing costs exactly coeff whatever k is.
// Why the HF value of several layers is not the mean of their values: HF concatenates the logits of all
// layers along the token axis before anything else (T = Σ_l T_l), so S and c are pooled first and
// imbalances of opposite sign in two layers cancel (balance.md §6, two-layer example).

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <numeric>
#include <span>
#include <string>
#include <vector>

#include "smoe/core/error.hpp"
#include "smoe/core/view.hpp"
#include "smoe/router/topk_config.hpp"

namespace smoe::inline v0 {
namespace detail {

// The pooled sums of the header comment, over one or more layers.
struct RouterLoad {
    std::vector<double> prob_sum;     // [E] S_e
    std::vector<std::int64_t> count;  // [E] c_e
    std::int64_t tokens = 0;          // T

    explicit RouterLoad(std::int64_t num_experts)
        : prob_sum(static_cast<std::size_t>(num_experts), 0.0), count(static_cast<std::size_t>(num_experts), 0) {}

    // E / T² · Σ_e S_e c_e; 0 without tokens.
    double scaled_product() const {
        if (tokens == 0) return 0.0;
        double s = 0.0;
        for (std::size_t e = 0; e < count.size(); ++e) s += prob_sum[e] * static_cast<double>(count[e]);
        double const T = static_cast<double>(tokens);
        return static_cast<double>(count.size()) * s / (T * T);
    }
};

// `where` prefixes the position in the message ("layer 1, "), so that pooled input names its layer.
inline void check_router_logits(MatrixView<float const> logits, char const* name, std::string const& where = {}) {
    check_view(logits, name, -1, -1);
    if (logits.cols < 1) fail(name, where + shape_text(logits.rows, logits.cols), "at least one expert column");
    for (std::int64_t t = 0; t < logits.rows; ++t)
        for (std::int64_t e = 0; e < logits.cols; ++e)
            if (!std::isfinite(logits(t, e)))
                fail(name, to_text(logits(t, e)) + " at " + where + "token " + std::to_string(t) + ", expert " +
                               std::to_string(e),
                     "finite values");
}

inline void check_loss_top_k(std::int64_t top_k, std::int64_t num_experts) {
    if (top_k < 1 || top_k > num_experts)
        fail("top_k", top_k, "1 <= top_k <= num_experts (" + std::to_string(num_experts) + ")");
}

inline void check_coeff(double coeff) {
    if (!std::isfinite(coeff)) fail("coeff", coeff, "a finite value");
}

// Adds one layer's S and c to `load` (already validated logits, load sized for E).
//
// Scores. Softmax: p = exp(l - max) / Σ exp(l - max). Sigmoid: Megatron divides sigmoid(l) by its row
// sum (plus 1e-20, which smoe leaves out: the spec says "divided by their sum"); that quotient is a
// softmax over log sigmoid(l), computed that way here so that rows whose sigmoids all underflow
// (l below about -745) still give the exact ratios instead of 0/0.
//
// Selection. The top-k is taken on the logits: p is strictly increasing in l for both score
// functions, so this is the top-k of p in exact arithmetic, with none of the ties that rounding
// creates in p (exp underflow, sigmoid saturating at 1). Equal logits go to the lower expert id.
// No expert bias, no group limit, no dropping: Megatron counts c from this plain top-k (moe/router.py,
// moe_utils.py; balance.md §6), not from the routing actually used.
inline void add_router_load(MatrixView<float const> logits, std::int64_t top_k, router::ScoreFunc score,
                            RouterLoad& load) {
    auto const E = logits.cols;
    std::vector<double> s(static_cast<std::size_t>(E));
    std::vector<std::int64_t> ids(static_cast<std::size_t>(E));
    for (std::int64_t t = 0; t < logits.rows; ++t) {
        auto const* l = logits.row(t);
        for (std::int64_t e = 0; e < E; ++e) {
            double const x = l[e];
            // log sigmoid(x) = -log1p(exp(-x)), written for each sign so that exp never overflows.
            if (score == router::ScoreFunc::softmax) s[e] = x;
            else if (score == router::ScoreFunc::sqrtsoftplus)
                s[e] = 0.5 * std::log(x > 20.0 ? x : std::log1p(std::exp(x)));
            else s[e] = x >= 0 ? -std::log1p(std::exp(-x)) : x - std::log1p(std::exp(x));
        }
        double const m = *std::max_element(s.begin(), s.end());
        double sum = 0.0;
        for (auto& v : s) sum += (v = std::exp(v - m));
        for (std::int64_t e = 0; e < E; ++e) load.prob_sum[e] += s[e] / sum;

        std::iota(ids.begin(), ids.end(), std::int64_t{0});
        std::partial_sort(ids.begin(), ids.begin() + top_k, ids.end(), [l](std::int64_t a, std::int64_t b) {
            return l[a] > l[b] || (l[a] == l[b] && a < b);
        });
        for (std::int64_t j = 0; j < top_k; ++j) ++load.count[ids[j]];
    }
    load.tokens += logits.rows;
}

}  // namespace detail

// Megatron-LM switch_load_balancing_loss_func (moe_utils.py) for one layer:
//     coeff · E / (k·T²) · Σ_e (Σ_t p_te) · c_e
// p: softmax of the logits, or sigmoid scores divided by their row sum; c: a plain top-k of p (see
// detail::add_router_load). Uniform routing gives coeff. T = 0 gives 0. This is a case file's
// `aux_loss` with coeff = moe_aux_loss_coeff. Throws smoe::invalid_argument for a non-finite logit
// (naming token and expert), top_k outside [1, E] or a non-finite coeff.
inline double aux_loss_megatron(MatrixView<float const> logits, std::int64_t top_k,
                                router::ScoreFunc score = router::ScoreFunc::softmax, double coeff = 1.0) {
    detail::check_router_logits(logits, "logits");
    detail::check_loss_top_k(top_k, logits.cols);
    detail::check_coeff(coeff);
    detail::RouterLoad load(logits.cols);
    detail::add_router_load(logits, top_k, score, load);
    return coeff * load.scaled_product() / static_cast<double>(top_k);
}

// Hugging Face load_balancing_loss_func (Mixtral, OLMoE, Qwen2-MoE) over the router logits of all
// layers, concatenated along tokens first (T = Σ_l T_l):
//     coeff · E · Σ_e (c_e / T) · mean_t p_te
// softmax scores, c counting all k slots. For one layer this is k × aux_loss_megatron; for several it
// is not the mean of the per-layer values (header comment). coeff is router_aux_loss_coef. HF's
// attention_mask (padding tokens left out) has no counterpart: pass only the real tokens. Every layer
// must have the same E.
inline double aux_loss_hf(std::span<MatrixView<float const> const> layers_logits, std::int64_t top_k,
                          double coeff = 1.0) {
    if (layers_logits.empty())
        detail::fail("layers_logits", "an empty list", "the router logits of at least one layer");
    auto const E = layers_logits.front().cols;
    for (std::size_t i = 0; i < layers_logits.size(); ++i) {
        std::string const where = "layer " + std::to_string(i) + ", ";
        detail::check_router_logits(layers_logits[i], "layers_logits", where);
        if (layers_logits[i].cols != E)
            detail::fail("layers_logits", where + std::to_string(layers_logits[i].cols) + " experts",
                         "the same number of experts in every layer (" + std::to_string(E) + ")");
    }
    detail::check_loss_top_k(top_k, E);
    detail::check_coeff(coeff);
    detail::RouterLoad load(E);
    for (auto const& logits : layers_logits) detail::add_router_load(logits, top_k, router::ScoreFunc::softmax, load);
    return coeff * load.scaled_product();
}

inline double aux_loss_hf(MatrixView<float const> logits, std::int64_t top_k, double coeff = 1.0) {
    return aux_loss_hf(std::span<MatrixView<float const> const>(&logits, 1), top_k, coeff);
}

// First-choice balance loss: DeepSpeed top2gating and Tutel gshard_loss (for any k), HF Switch
// (top-1):
//     coeff · E · Σ_e (c1_e / T) · mean_t p_te
// with c1 the counts of each token's first choice only (softmax p, ties to the lower id). Equal to
// aux_loss_megatron with k = 1. Uniform routing gives coeff; T = 0 gives 0.
inline double aux_loss_first_choice(MatrixView<float const> logits, double coeff = 1.0) {
    return aux_loss_megatron(logits, 1, router::ScoreFunc::softmax, coeff);
}

// Router z-loss (ST-MoE; Megatron z_loss_func, HF Switch router_z_loss_func):
//     coeff · mean_t (log Σ_e exp l_te)²
// logsumexp taken as max + log Σ exp(l - max), so large logits neither overflow nor lose the max.
// This is a case file's `z_loss` with coeff = moe_z_loss_coeff. T = 0 gives 0.
inline double z_loss(MatrixView<float const> logits, double coeff = 1.0) {
    detail::check_router_logits(logits, "logits");
    detail::check_coeff(coeff);
    if (logits.rows == 0) return 0.0;
    double acc = 0.0;
    for (std::int64_t t = 0; t < logits.rows; ++t) {
        auto const* l = logits.row(t);
        double const m = *std::max_element(l, l + logits.cols);
        double sum = 0.0;
        for (std::int64_t e = 0; e < logits.cols; ++e) sum += std::exp(static_cast<double>(l[e]) - m);
        double const lse = m + std::log(sum);
        acc += lse * lse;
    }
    return coeff * acc / static_cast<double>(logits.rows);
}

}  // namespace smoe::inline v0
