#pragma once
// Combine (experts.md §1 rule 2): y[t] = Σ_j slot_out[row of slot (t, j)] in slot order j = 0..K-1,
// fp32, rounded once to the output type. Each token gathers its own K rows, so there are no atomics
// and the sum order is fixed: the result is deterministic and independent of the other tokens.
// Slots that no expert computed (padding, null experts) contribute nothing; a token without any
// slot gets 0.

#include <cstdint>

#include "smoe/kernels/cuda/common.cuh"

namespace smoe::inline v0::kernels::cuda {

inline constexpr int kCombineThreads = 256;

template <class T>
__global__ void combine_slots_kernel(float const* __restrict__ slot_out, std::int32_t const* __restrict__ slot_rows,
                                     int K, int d, T* __restrict__ y, std::int64_t ldy) {
    int const t = blockIdx.x;
    std::int32_t const* rows = slot_rows + static_cast<std::int64_t>(t) * K;
    T* out = y + static_cast<std::int64_t>(t) * ldy;
    for (int o = threadIdx.x; o < d; o += kCombineThreads) {
        float acc = 0.0f;
        for (int j = 0; j < K; ++j) {
            int const row = rows[j];
            if (row >= 0) acc += slot_out[static_cast<std::int64_t>(row) * d + o];
        }
        out[o] = from_float<T>(acc);
    }
}

template <class T>
void launch_combine(float const* slot_out, std::int32_t const* slot_rows, std::int64_t tokens, std::int64_t K,
                    std::int64_t d, T* y, std::int64_t ldy, cudaStream_t stream) {
    if (tokens == 0) return;
    combine_slots_kernel<T><<<static_cast<unsigned>(tokens), kCombineThreads, 0, stream>>>(
        slot_out, slot_rows, static_cast<int>(K), static_cast<int>(d), y, ldy);
    check_launch("combine_slots_kernel");
}

}  // namespace smoe::inline v0::kernels::cuda
