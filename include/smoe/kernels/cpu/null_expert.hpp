#pragma once
// The score-and-select step of router::NullExpert (routing.md §5) for one token row: softmax over the
// E true and N null experts, top-k over all of them by the tie rule, then the true weights are
// renormalised over the selected true experts only while null weights keep their raw probability.

#include <cstdint>

#include "smoe/kernels/cpu/softmax_topk.hpp"

namespace smoe::inline v0::kernels::cpu {

// x [E + N] logits, score [E + N] scratch; writes k ids (null ids are E..E+N-1) and weights, ordered
// by weight. With N = 0 this is exactly topk_route_row with softmax, norm_topk_prob and norm_eps 0.
template <class Arch>
void null_expert_route_row(Arch arch, std::int64_t E, std::int64_t N, std::int64_t k, float const* x, float* score,
                           std::int32_t* ids, float* w) {
    softmax_row(arch, x, score, E + N);
    TopList top{ids, w, k};
    for (std::int64_t e = 0; e < E + N; ++e) top.offer(score[e], static_cast<std::int32_t>(e));
    double sigma = 0.0;  // in double, as topk_route_row's renormalisation
    for (std::int64_t j = 0; j < k; ++j)
        if (ids[j] < E) sigma += w[j];
    // No true expert selected, or all their scores underflowed: AdaMoE's guard sets σ = 1.
    auto const denom = sigma == 0.0 ? 1.0f : static_cast<float>(sigma);
    for (std::int64_t j = 0; j < k; ++j)
        if (ids[j] < E) w[j] /= denom;
    sort_by_weight(ids, w, k);
}

}  // namespace smoe::inline v0::kernels::cpu
