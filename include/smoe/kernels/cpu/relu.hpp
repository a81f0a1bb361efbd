#pragma once
// The select step of router::ReLU (routing.md §6) for one token row: the positive logits, ordered by
// value (descending, ties to the lower id). ReMoE rows are sparse (training drives them towards
// k / E non-zeros), so a SIMD compare skips whole vectors without a positive entry.

#include <algorithm>
#include <cstdint>
#include <functional>

#include "smoe/detail/xsimd.hpp"

#include "smoe/kernels/cpu/variable_k.hpp"

namespace smoe::inline v0::kernels::cpu {

// Routes one token: x [E] finite logits; keys [E] scratch. Writes the n experts with x > 0 (strictly:
// +0 and -0 are not selected) and their weights w = x, in row order; returns n.
template <class Arch>
std::int64_t relu_route_row(Arch, float const* x, std::int64_t E, std::uint64_t* keys, std::int32_t* ids, float* w) {
    using batch = xsimd::batch<float, Arch>;
    constexpr std::int64_t W = batch::size;
    batch const zero(0.0f);
    std::int64_t n = 0, e = 0;
    auto take_positive = [&](std::int64_t from, std::int64_t to) {
        for (std::int64_t i = from; i < to; ++i)
            if (x[i] > 0.0f) keys[n++] = weight_order_key(x[i], i);
    };
    for (; e + W <= E; e += W)
        if (xsimd::any(batch::load_unaligned(x + e) > zero)) take_positive(e, e + W);
    take_positive(e, E);
    std::sort(keys, keys + n, std::greater<>{});
    for (std::int64_t j = 0; j < n; ++j) {
        ids[j] = weight_order_id(keys[j]);
        w[j] = weight_order_weight(keys[j]);
    }
    return n;
}

}  // namespace smoe::inline v0::kernels::cpu
