#pragma once
// Per-row routing kernels beside top-k (routing.md §4-§6), one warp per token row like
// routing_topk.cuh, each writing the token-major view [T, width] ordered by weight (ties to the lower
// id) and padded with -1 / 0. Variable-k routers also raise *max_k to the row's count (integer
// atomicMax: order-independent), the K of the batch, which stays on the device.
//
//   null_expert  softmax over E + N columns, top-k, true experts renormalised over the selected true
//                experts (σ = 0 → 1), nulls keep their raw probability (ids >= E: never dispatched);
//   relu         every x > 0 with weight x;
//   top_p        the experts in score order up to the first whose prefix sum (fp32, in that order)
//                exceeds p, clamped to [min_k, max_k]; p >= 1 takes all.
//
// A row with a non-finite logit is routed nowhere and counted in *nonfinite (see routing_topk.cuh).
// Kernels are templates on their warps per block (a header-defined non-template __global__ function
// would be defined once per translation unit).

#include <cstdint>

#include "smoe/core/error.hpp"
#include "smoe/kernels/cuda/common.cuh"

namespace smoe::inline v0::kernels::cuda {

inline constexpr int kRowWarps = 4;

namespace detail {

// Loads row x[0, n) into s (shared), checks finiteness, and applies softmax when asked. Returns false
// (on every lane) for a row with a non-finite value. Whole warp.
__device__ __forceinline__ bool warp_load_row(float const* x, int n, float* s, bool softmax) {
    int const lane = threadIdx.x & 31;
    bool bad = false;
    float m = -INFINITY;
    for (int e = lane; e < n; e += 32) {
        float const v = x[e];
        bad |= !isfinite(v);
        s[e] = v;
        m = fmaxf(m, v);
    }
    if (__any_sync(0xffffffffu, bad)) return false;
    if (softmax) {
        m = warp_max(m);
        float sum = 0.0f;
        for (int e = lane; e < n; e += 32) {
            float const z = expf(s[e] - m);
            s[e] = z;
            sum += z;
        }
        sum = warp_sum(sum);
        for (int e = lane; e < n; e += 32) s[e] = s[e] / sum;
    }
    __syncwarp();
    return true;
}

__device__ __forceinline__ void warp_empty_row(std::int32_t* ids_row, float* w_row, int width, std::int32_t* nonfinite) {
    int const lane = threadIdx.x & 31;
    if (lane == 0) atomicAdd(nonfinite, 1);
    for (int j = lane; j < width; j += 32) {
        ids_row[j] = -1;
        w_row[j] = 0.0f;
    }
}

// k rounds of warp arg-max over c[0, n) by the tie rule; taken entries become -inf. Whole warp.
__device__ __forceinline__ void warp_top_k(float* c, int n, int k, int* sid) {
    int const lane = threadIdx.x & 31;
    for (int j = 0; j < k; ++j) {
        float bv = -INFINITY;
        int bi = 0x7fffffff;
        for (int e = lane; e < n; e += 32)
            if (ranks_before(c[e], e, bv, bi)) {
                bv = c[e];
                bi = e;
            }
        warp_argmax(bv, bi);
        if (lane == 0) {
            int const id = bi < n ? bi : -1;
            sid[j] = id;
            if (id >= 0) c[id] = -INFINITY;
        }
        __syncwarp();
    }
}

inline unsigned row_blocks(std::int64_t tokens, int warps) { return static_cast<unsigned>(ceil_div(tokens, warps)); }

inline int row_warps(std::size_t per_warp_bytes, char const* what, std::int64_t width) {
    constexpr std::size_t kLimit = 48 * 1024;
    if (per_warp_bytes > kLimit) smoe::detail::fail(what, width, "few enough columns for one warp's row in 48 KB of shared memory");
    std::size_t const w = kLimit / per_warp_bytes;
    return w >= kRowWarps ? kRowWarps : static_cast<int>(w);
}

}  // namespace detail

// ---- null experts (routing.md §5) ----------------------------------------------------------------

template <int kMaxWarps>
__global__ void __launch_bounds__(32 * kMaxWarps) null_expert_route_kernel(float const* __restrict__ logits, std::int64_t ld, int tokens, int E, int N, int k,
                                         std::int32_t* __restrict__ out_ids, float* __restrict__ out_w, std::int64_t out_ld,
                                         std::int32_t* __restrict__ nonfinite) {
    extern __shared__ float smem[];
    int const lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    int const t = blockIdx.x * (blockDim.x >> 5) + warp;
    if (t >= tokens) return;
    int const W = E + N;
    float* s = smem + warp * (2 * W + 2 * k);
    float* c = s + W;
    float* sw = c + W;
    int* sid = reinterpret_cast<int*>(sw + k);
    std::int32_t* ids_row = out_ids + static_cast<std::int64_t>(t) * out_ld;
    float* w_row = out_w + static_cast<std::int64_t>(t) * out_ld;
    if (!detail::warp_load_row(logits + static_cast<std::int64_t>(t) * ld, W, s, true)) {
        detail::warp_empty_row(ids_row, w_row, k, nonfinite);
        return;
    }
    for (int e = lane; e < W; e += 32) c[e] = s[e];
    __syncwarp();
    detail::warp_top_k(c, W, k, sid);
    float sigma = 0.0f;
    for (int j = lane; j < k; j += 32)
        if (sid[j] >= 0 && sid[j] < E) sigma += s[sid[j]];
    sigma = warp_sum(sigma);
    if (sigma == 0.0f) sigma = 1.0f;  // the reference's guard: a row of nulls only
    for (int j = lane; j < k; j += 32) {
        int const id = sid[j];
        sw[j] = id < 0 ? 0.0f : (id < E ? s[id] / sigma : s[id]);
    }
    __syncwarp();
    warp_write_ranked(sw, sid, k, ids_row, w_row, k);
}

inline void launch_null_expert_route(float const* logits, std::int64_t ld, std::int64_t tokens, std::int64_t E,
                                     std::int64_t N, std::int64_t k, std::int32_t* out_ids, float* out_w,
                                     std::int64_t out_ld, std::int32_t* nonfinite, cudaStream_t stream) {
    if (tokens == 0) return;
    std::size_t const per_warp = static_cast<std::size_t>(2 * (E + N) + 2 * k) * sizeof(float);
    int const warps = detail::row_warps(per_warp, "num_experts + num_null_experts", E + N);
    null_expert_route_kernel<kRowWarps><<<detail::row_blocks(tokens, warps), 32 * warps, per_warp * warps, stream>>>(
        logits, ld, static_cast<int>(tokens), static_cast<int>(E), static_cast<int>(N), static_cast<int>(k), out_ids,
        out_w, out_ld, nonfinite);
    check_launch("null_expert_route_kernel");
}

// ---- ReLU (routing.md §6) ----------------------------------------------------------------------

template <int kMaxWarps>
__global__ void __launch_bounds__(32 * kMaxWarps) relu_route_kernel(float const* __restrict__ logits, std::int64_t ld, int tokens, int E,
                                  std::int32_t* __restrict__ out_ids, float* __restrict__ out_w, std::int64_t out_ld,
                                  std::int32_t* __restrict__ max_k, std::int32_t* __restrict__ nonfinite) {
    extern __shared__ float smem[];
    int const lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    int const t = blockIdx.x * (blockDim.x >> 5) + warp;
    if (t >= tokens) return;
    float* sw = smem + warp * 2 * E;
    int* sid = reinterpret_cast<int*>(sw + E);
    float const* x = logits + static_cast<std::int64_t>(t) * ld;
    std::int32_t* ids_row = out_ids + static_cast<std::int64_t>(t) * out_ld;
    float* w_row = out_w + static_cast<std::int64_t>(t) * out_ld;
    bool bad = false;
    for (int e = lane; e < E; e += 32) bad |= !isfinite(x[e]);
    if (__any_sync(0xffffffffu, bad)) {
        detail::warp_empty_row(ids_row, w_row, E, nonfinite);
        return;
    }
    // Compaction in id order with a ballot: selection i of the row lands at position i.
    int n = 0;
    for (int base = 0; base < E; base += 32) {
        int const e = base + lane;
        float const v = e < E ? x[e] : 0.0f;
        bool const sel = v > 0.0f;  // strictly: 0 and -0 are not selected
        unsigned const mask = __ballot_sync(0xffffffffu, sel);
        if (sel) {
            int const pos = n + __popc(mask & ((1u << lane) - 1u));
            sw[pos] = v;
            sid[pos] = e;
        }
        n += __popc(mask);
    }
    __syncwarp();
    warp_write_ranked(sw, sid, n, ids_row, w_row, E);
    if (lane == 0) atomicMax(max_k, n);
}

inline void launch_relu_route(float const* logits, std::int64_t ld, std::int64_t tokens, std::int64_t E,
                              std::int32_t* out_ids, float* out_w, std::int64_t out_ld, std::int32_t* max_k,
                              std::int32_t* nonfinite, cudaStream_t stream) {
    if (tokens == 0) return;
    std::size_t const per_warp = static_cast<std::size_t>(2 * E) * sizeof(float);
    int const warps = detail::row_warps(per_warp, "num_experts", E);
    relu_route_kernel<kRowWarps><<<detail::row_blocks(tokens, warps), 32 * warps, per_warp * warps, stream>>>(
        logits, ld, static_cast<int>(tokens), static_cast<int>(E), out_ids, out_w, out_ld, max_k, nonfinite);
    check_launch("relu_route_kernel");
}

// ---- top-p (routing.md §4) ---------------------------------------------------------------------

template <int kMaxWarps>
__global__ void __launch_bounds__(32 * kMaxWarps) top_p_route_kernel(float const* __restrict__ logits, std::int64_t ld, int tokens, int E, float p,
                                   int min_k, int max_k_cfg, std::int32_t* __restrict__ out_ids, float* __restrict__ out_w,
                                   std::int64_t out_ld, std::int32_t* __restrict__ max_k, std::int32_t* __restrict__ nonfinite) {
    extern __shared__ float smem[];
    int const lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    int const t = blockIdx.x * (blockDim.x >> 5) + warp;
    if (t >= tokens) return;
    float* s = smem + warp * 2 * E;
    int* order = reinterpret_cast<int*>(s + E);
    std::int32_t* ids_row = out_ids + static_cast<std::int64_t>(t) * out_ld;
    float* w_row = out_w + static_cast<std::int64_t>(t) * out_ld;
    if (!detail::warp_load_row(logits + static_cast<std::int64_t>(t) * ld, E, s, true)) {
        detail::warp_empty_row(ids_row, w_row, max_k_cfg, nonfinite);
        return;
    }
    // The score order e_1, e_2, ... by the tie rule, as ranks (no two experts share a rank).
    for (int e = lane; e < E; e += 32) {
        int rank = 0;
        for (int j = 0; j < E; ++j) rank += ranks_before(s[j], j, s[e], e) ? 1 : 0;
        order[rank] = e;
    }
    __syncwarp();
    int n = E;
    if (lane == 0 && p < 1.0f) {  // p = 1 takes all whatever the rounding of the sum
        float c = 0.0f;
        for (int j = 0; j < E; ++j) {
            c += s[order[j]];
            if (c > p) {
                n = j + 1;
                break;
            }
        }
    }
    n = __shfl_sync(0xffffffffu, n, 0);
    n = n < min_k ? min_k : (n > max_k_cfg ? max_k_cfg : n);
    for (int j = lane; j < max_k_cfg; j += 32) {
        ids_row[j] = j < n ? order[j] : -1;
        w_row[j] = j < n ? s[order[j]] : 0.0f;
    }
    if (lane == 0) atomicMax(max_k, n);
}

inline void launch_top_p_route(float const* logits, std::int64_t ld, std::int64_t tokens, std::int64_t E, float p,
                               std::int64_t min_k, std::int64_t max_k_cfg, std::int32_t* out_ids, float* out_w,
                               std::int64_t out_ld, std::int32_t* max_k, std::int32_t* nonfinite, cudaStream_t stream) {
    if (tokens == 0) return;
    std::size_t const per_warp = static_cast<std::size_t>(2 * E) * sizeof(float);
    int const warps = detail::row_warps(per_warp, "num_experts", E);
    top_p_route_kernel<kRowWarps><<<detail::row_blocks(tokens, warps), 32 * warps, per_warp * warps, stream>>>(
        logits, ld, static_cast<int>(tokens), static_cast<int>(E), p, static_cast<int>(min_k), static_cast<int>(max_k_cfg),
        out_ids, out_w, out_ld, max_k, nonfinite);
    check_launch("top_p_route_kernel");
}

}  // namespace smoe::inline v0::kernels::cuda
