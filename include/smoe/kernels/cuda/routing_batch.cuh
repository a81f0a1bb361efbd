#pragma once
// Routers whose choice couples the tokens of a batch (routing.md §3, §7), written for correctness
// first: each is a few plain kernels with fixed reduction orders (deterministic), no host
// synchronisation, and sizes known on the host (the capacity C of expert choice depends on T only).
//
//   expert choice: scores [T, E] (warp per row), then one block per expert ranks every token by
//     (s[t, e] descending, t ascending) in O(T²) compares (shared-memory chunks of the column) and
//     keeps the first C_eff = min(C, T); a warp per token then writes its row by weight.
//   sinkhorn: activation a and K = exp(x - row max) [T, E] (warp per row); one block runs the capped
//     iteration of §7 (d0 over tokens, d1 over experts, err = mean |Δd1|) and writes the report;
//     a warp per token takes the top-k of P = d1·K·d0 (or of a when balancing does not run) with
//     weights a.

#include <cstdint>

#include <cub/block/block_reduce.cuh>

#include "smoe/kernels/cuda/common.cuh"
#include "smoe/kernels/cuda/routing_rows.cuh"

namespace smoe::inline v0::kernels::cuda {

inline constexpr int kBatchThreads = 256;

// Kernels are templates on their block size (see dispatch.cuh for why).

// s [T, E]: softmax (or sigmoid) per row; with `kmat`, also exp(x - row max) (Sinkhorn's kernel).
// A non-finite row gets all-zero scores (selected by nobody with a positive score) and is counted.
template <int kThreads>
__global__ void __launch_bounds__(kThreads) row_scores_kernel(float const* __restrict__ logits, std::int64_t ld, int tokens, int E, bool sigmoid,
                                  float* __restrict__ s, float* __restrict__ kmat, std::int32_t* __restrict__ nonfinite) {
    int const lane = threadIdx.x & 31;
    int const t = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    if (t >= tokens) return;
    float const* x = logits + static_cast<std::int64_t>(t) * ld;
    float* srow = s + static_cast<std::int64_t>(t) * E;
    bool bad = false;
    float m = -INFINITY;
    for (int e = lane; e < E; e += 32) {
        bad |= !isfinite(x[e]);
        m = fmaxf(m, x[e]);
    }
    if (__any_sync(0xffffffffu, bad)) {
        if (lane == 0) atomicAdd(nonfinite, 1);
        for (int e = lane; e < E; e += 32) {
            srow[e] = 0.0f;
            if (kmat) kmat[static_cast<std::int64_t>(t) * E + e] = 0.0f;
        }
        return;
    }
    m = warp_max(m);
    // The denominator is summed in double: expert choice compares s[t, e] across tokens, and two rows
    // holding the same logits in another order must give the same fp32 score (an fp32 sum in lane
    // order would differ by an ulp and break the tie rule between those tokens).
    double sum = 0.0;
    for (int e = lane; e < E; e += 32) {
        float const z = expf(x[e] - m);
        if (kmat) kmat[static_cast<std::int64_t>(t) * E + e] = z;
        sum += z;
    }
    for (int o = 16; o > 0; o >>= 1) sum += __shfl_xor_sync(0xffffffffu, sum, o);
    for (int e = lane; e < E; e += 32)
        srow[e] = sigmoid ? 1.0f / (1.0f + expf(-x[e])) : static_cast<float>(static_cast<double>(expf(x[e] - m)) / sum);
}

// chosen[t, e] = 1 iff token t is among expert e's first `capacity` tokens by the tie rule.
template <int kThreads>
__global__ void __launch_bounds__(kThreads) expert_choice_select_kernel(float const* __restrict__ s, int tokens, int E, int capacity,
                                            std::uint8_t* __restrict__ chosen) {
    __shared__ float col[kThreads];
    int const e = blockIdx.x;
    for (int base = 0; base < tokens; base += kThreads) {
        int const t = base + static_cast<int>(threadIdx.x);
        float const v = t < tokens ? s[static_cast<std::int64_t>(t) * E + e] : 0.0f;
        int rank = 0;
        for (int c0 = 0; c0 < tokens; c0 += kThreads) {
            __syncthreads();
            int const u = c0 + static_cast<int>(threadIdx.x);
            col[threadIdx.x] = u < tokens ? s[static_cast<std::int64_t>(u) * E + e] : -INFINITY;
            __syncthreads();
            int const n = tokens - c0 < kThreads ? tokens - c0 : kThreads;
            for (int i = 0; i < n; ++i) rank += ranks_before(col[i], c0 + i, v, t) ? 1 : 0;
        }
        if (t < tokens) chosen[static_cast<std::int64_t>(t) * E + e] = rank < capacity ? 1 : 0;
    }
}

// Token-major rows from the chosen mask, width E (a token can be chosen by every expert).
template <int kMaxWarps>
__global__ void __launch_bounds__(32 * kMaxWarps) expert_choice_rows_kernel(float const* __restrict__ s, std::uint8_t const* __restrict__ chosen, int tokens,
                                          int E, std::int32_t* __restrict__ out_ids, float* __restrict__ out_w,
                                          std::int64_t out_ld, std::int32_t* __restrict__ max_k) {
    extern __shared__ float smem[];
    int const lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    int const t = blockIdx.x * (blockDim.x >> 5) + warp;
    if (t >= tokens) return;
    float* sw = smem + warp * 2 * E;
    int* sid = reinterpret_cast<int*>(sw + E);
    int n = 0;
    for (int base = 0; base < E; base += 32) {
        int const e = base + lane;
        bool const sel = e < E && chosen[static_cast<std::int64_t>(t) * E + e] != 0;
        unsigned const mask = __ballot_sync(0xffffffffu, sel);
        if (sel) {
            int const pos = n + __popc(mask & ((1u << lane) - 1u));
            sw[pos] = s[static_cast<std::int64_t>(t) * E + e];
            sid[pos] = e;
        }
        n += __popc(mask);
    }
    __syncwarp();
    warp_write_ranked(sw, sid, n, out_ids + static_cast<std::int64_t>(t) * out_ld,
                      out_w + static_cast<std::int64_t>(t) * out_ld, E);
    if (lane == 0) atomicMax(max_k, n);
}

// scratch: s [T*E] floats and chosen [T*E] bytes. capacity: C_eff = min(C, T) from the host.
inline void launch_expert_choice_route(float const* logits, std::int64_t ld, std::int64_t tokens, std::int64_t E,
                                       bool sigmoid, std::int64_t capacity, float* s, std::uint8_t* chosen,
                                       std::int32_t* out_ids, float* out_w, std::int64_t out_ld, std::int32_t* max_k,
                                       std::int32_t* nonfinite, cudaStream_t stream) {
    if (tokens == 0) return;
    constexpr int kWarps = kBatchThreads / 32;
    row_scores_kernel<kBatchThreads><<<detail::row_blocks(tokens, kWarps), kBatchThreads, 0, stream>>>(
        logits, ld, static_cast<int>(tokens), static_cast<int>(E), sigmoid, s, nullptr, nonfinite);
    check_launch("row_scores_kernel");
    expert_choice_select_kernel<kBatchThreads><<<static_cast<unsigned>(E), kBatchThreads, 0, stream>>>(
        s, static_cast<int>(tokens), static_cast<int>(E), static_cast<int>(capacity < tokens ? capacity : tokens), chosen);
    check_launch("expert_choice_select_kernel");
    std::size_t const per_warp = static_cast<std::size_t>(2 * E) * sizeof(float);
    int const warps = detail::row_warps(per_warp, "num_experts", E);
    expert_choice_rows_kernel<kRowWarps><<<detail::row_blocks(tokens, warps), 32 * warps, per_warp * warps, stream>>>(
        s, chosen, static_cast<int>(tokens), static_cast<int>(E), out_ids, out_w, out_ld, max_k);
    check_launch("expert_choice_rows_kernel");
}

// ---- Sinkhorn (routing.md §7) ------------------------------------------------------------------

// The iteration report, in device memory.
struct SinkhornDeviceReport {
    std::int32_t iterations;
    std::int32_t converged;
    float error;
};

// One block: d0 [T], d1 [E] (global scratch), `kmat` [T, E]. Runs when T >= 2 and max_iterations > 0.
template <int kThreads>
__global__ void __launch_bounds__(kThreads) sinkhorn_balance_kernel(float const* __restrict__ kmat, int tokens, int E, float tol, int max_iterations,
                                        float* __restrict__ d0, float* __restrict__ d1, SinkhornDeviceReport* report) {
    using Reduce = cub::BlockReduce<float, kThreads>;
    __shared__ typename Reduce::TempStorage tmp;
    __shared__ float err_shared;
    float const eps = 1e-8f, inv_t = 1.0f / static_cast<float>(tokens), inv_e = 1.0f / static_cast<float>(E);
    for (int e = threadIdx.x; e < E; e += kThreads) d1[e] = 1.0f;
    __syncthreads();
    int n = 0;
    float err = 0.0f;
    bool converged = false;
    for (;;) {
        for (int t = threadIdx.x; t < tokens; t += kThreads) {
            float acc = 0.0f;
            for (int e = 0; e < E; ++e) acc += d1[e] * kmat[static_cast<std::int64_t>(t) * E + e];
            d0[t] = inv_t / (acc + eps);
        }
        __syncthreads();
        float local = 0.0f;
        for (int e = threadIdx.x; e < E; e += kThreads) {
            float acc = 0.0f;
            for (int t = 0; t < tokens; ++t) acc += d0[t] * kmat[static_cast<std::int64_t>(t) * E + e];
            float const next = inv_e / (acc + eps);
            local += fabsf(next - d1[e]);
            d1[e] = next;
        }
        float const total = Reduce(tmp).Sum(local);  // valid in thread 0
        if (threadIdx.x == 0) err_shared = total * inv_e;
        __syncthreads();  // publishes err_shared and the new d1 before the next d0 pass
        err = err_shared;
        ++n;
        converged = err <= tol;
        // tol = 0 runs to the cap (routing.md §7), as the oracle and the CPU router do.
        if ((converged && tol > 0.0f) || n >= max_iterations) break;
        __syncthreads();  // err_shared is rewritten next round only after every thread has read it
    }
    if (threadIdx.x == 0) *report = {n, converged ? 1 : 0, err};
}

// Top-k of P (balanced) or of a, weights a, rows by weight.
template <int kMaxWarps>
__global__ void __launch_bounds__(32 * kMaxWarps) sinkhorn_select_kernel(float const* __restrict__ act, float const* __restrict__ kmat,
                                       float const* __restrict__ d0, float const* __restrict__ d1, bool balanced,
                                       int tokens, int E, int k, std::int32_t* __restrict__ out_ids,
                                       float* __restrict__ out_w, std::int64_t out_ld) {
    extern __shared__ float smem[];
    int const lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    int const t = blockIdx.x * (blockDim.x >> 5) + warp;
    if (t >= tokens) return;
    float* c = smem + warp * (E + 2 * k);
    float* sw = c + E;
    int* sid = reinterpret_cast<int*>(sw + k);
    float const* a = act + static_cast<std::int64_t>(t) * E;
    for (int e = lane; e < E; e += 32)
        c[e] = balanced ? d1[e] * kmat[static_cast<std::int64_t>(t) * E + e] * d0[t] : a[e];
    __syncwarp();
    detail::warp_top_k(c, E, k, sid);
    for (int j = lane; j < k; j += 32) sw[j] = sid[j] >= 0 ? a[sid[j]] : 0.0f;
    __syncwarp();
    warp_write_ranked(sw, sid, k, out_ids + static_cast<std::int64_t>(t) * out_ld,
                      out_w + static_cast<std::int64_t>(t) * out_ld, k);
}

// scratch: act, kmat [T*E], d0 [T], d1 [E] floats. The activation is sigmoid for k = 1, else softmax.
inline void launch_sinkhorn_route(float const* logits, std::int64_t ld, std::int64_t tokens, std::int64_t E,
                                  std::int64_t k, float tol, std::int64_t max_iterations, float* act, float* kmat,
                                  float* d0, float* d1, SinkhornDeviceReport* report, std::int32_t* out_ids,
                                  float* out_w, std::int64_t out_ld, std::int32_t* nonfinite, cudaStream_t stream) {
    cudaError_t const e0 = cudaMemsetAsync(report, 0, sizeof(SinkhornDeviceReport), stream);
    if (e0 != cudaSuccess) throw cuda_error(e0, "cudaMemsetAsync(sinkhorn report)");
    if (tokens == 0) return;
    constexpr int kWarps = kBatchThreads / 32;
    row_scores_kernel<kBatchThreads><<<detail::row_blocks(tokens, kWarps), kBatchThreads, 0, stream>>>(
        logits, ld, static_cast<int>(tokens), static_cast<int>(E), k == 1, act, kmat, nonfinite);
    check_launch("row_scores_kernel");
    bool const balanced = tokens >= 2 && max_iterations > 0;
    if (balanced) {
        sinkhorn_balance_kernel<kBatchThreads><<<1, kBatchThreads, 0, stream>>>(kmat, static_cast<int>(tokens), static_cast<int>(E), tol,
                                                                 static_cast<int>(max_iterations), d0, d1, report);
        check_launch("sinkhorn_balance_kernel");
    }
    std::size_t const per_warp = static_cast<std::size_t>(E + 2 * k) * sizeof(float);
    int const warps = detail::row_warps(per_warp, "num_experts", E);
    sinkhorn_select_kernel<kRowWarps><<<detail::row_blocks(tokens, warps), 32 * warps, per_warp * warps, stream>>>(
        act, kmat, d0, d1, balanced, static_cast<int>(tokens), static_cast<int>(E), static_cast<int>(k), out_ids, out_w,
        out_ld);
    check_launch("sinkhorn_select_kernel");
}

}  // namespace smoe::inline v0::kernels::cuda
