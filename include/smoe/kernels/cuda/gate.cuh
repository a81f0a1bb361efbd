#pragma once
// Router projection on the device: logits [T, E] = x [T, d] · gateᵀ, gate fp32 [E, d], accumulated in
// fp32 (routing.md §0). One warp per (expert, 8 tokens): the lanes stride d, so the gate row and the
// token rows are read coalesced, each gate element serves eight tokens from a register, and the sum
// order is fixed (deterministic logits, the same for a token alone or in a batch).

#include <cstdint>

#include "smoe/kernels/cuda/common.cuh"

namespace smoe::inline v0::kernels::cuda {

inline constexpr int kGateTokens = 8;
inline constexpr int kGateWarps = 8;

template <class T>
__global__ void gate_logits_kernel(T const* __restrict__ x, std::int64_t ldx, int tokens, float const* __restrict__ gate,
                                   std::int64_t ldg, int experts, int d, float* __restrict__ logits, std::int64_t ldl) {
    int const lane = threadIdx.x & 31;
    int const e = blockIdx.x * kGateWarps + (threadIdx.x >> 5);
    int const t0 = blockIdx.y * kGateTokens;
    if (e >= experts) return;
    int const rows = tokens - t0 < kGateTokens ? tokens - t0 : kGateTokens;
    float acc[kGateTokens] = {};
    float const* g = gate + static_cast<std::int64_t>(e) * ldg;
    for (int i = lane; i < d; i += 32) {
        float const gv = g[i];
#pragma unroll
        for (int r = 0; r < kGateTokens; ++r)
            if (r < rows) acc[r] = fmaf(gv, to_float(x[static_cast<std::int64_t>(t0 + r) * ldx + i]), acc[r]);
    }
#pragma unroll
    for (int r = 0; r < kGateTokens; ++r) {
        float const v = warp_sum(acc[r]);
        if (lane == 0 && r < rows) logits[static_cast<std::int64_t>(t0 + r) * ldl + e] = v;
    }
}

template <class T>
void launch_gate_logits(T const* x, std::int64_t ldx, std::int64_t tokens, float const* gate, std::int64_t ldg,
                        std::int64_t experts, std::int64_t d, float* logits, std::int64_t ldl, cudaStream_t stream) {
    if (tokens == 0) return;
    dim3 const grid(static_cast<unsigned>(ceil_div(experts, kGateWarps)), static_cast<unsigned>(ceil_div(tokens, kGateTokens)));
    gate_logits_kernel<T><<<grid, 32 * kGateWarps, 0, stream>>>(x, ldx, static_cast<int>(tokens), gate, ldg,
                                                                static_cast<int>(experts), static_cast<int>(d), logits, ldl);
    check_launch("gate_logits_kernel");
}

}  // namespace smoe::inline v0::kernels::cuda
