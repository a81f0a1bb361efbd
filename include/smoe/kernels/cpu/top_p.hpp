#pragma once
// The score-and-select step of router::TopP (routing.md §4) for one token row. The experts are taken
// in the order of the rule (probability descending, ties to the lower id) from a max-heap of packed
// keys: building it is O(E) and each selection O(log E), so a row that stops after a few experts never
// pays for a full sort, and p = 1 costs one heap sort.

#include <algorithm>
#include <cstdint>

#include "smoe/kernels/cpu/softmax_topk.hpp"
#include "smoe/kernels/cpu/variable_k.hpp"

namespace smoe::inline v0::kernels::cpu {

// Routes one token: x [E] logits; s [E] and keys [E] scratch. Writes n ids and weights (the softmax
// probabilities, in row order) and returns n = clamp(first j whose fp32 prefix sum > p, min_k, max_k);
// p >= 1 means n = E before the clamp, whatever the rounding of the sum.
template <class Arch>
std::int64_t top_p_route_row(Arch arch, float const* x, std::int64_t E, float p, std::int64_t min_k, std::int64_t max_k,
                             float* s, std::uint64_t* keys, std::int32_t* ids, float* w) {
    softmax_row(arch, x, s, E);
    for (std::int64_t e = 0; e < E; ++e) keys[e] = weight_order_key(s[e], e);
    std::uint64_t* heap_end = keys + E;
    std::make_heap(keys, heap_end);
    bool const all = p >= 1.0f;
    float prefix = 0.0f;  // fp32, accumulated in row order: the spec defines the rule on this sum
    bool crossed = false;
    std::int64_t n = 0;
    while (n < max_k && (n < min_k || !crossed)) {
        std::pop_heap(keys, heap_end--);
        ids[n] = weight_order_id(*heap_end);
        w[n] = weight_order_weight(*heap_end);
        prefix += w[n];
        ++n;
        if (!all && prefix > p) crossed = true;
    }
    return n;
}

}  // namespace smoe::inline v0::kernels::cpu
