#pragma once
// Fused top-k routing (routing.md §2), one warp per token row: scores (softmax or sigmoid), the
// selection-only bias, group-limited selection, top-k with ties to the lower id, renormalisation and
// scaling, and the token-major row ordered by final weight, in one pass over the logits.
//
// Each warp keeps its row's scores in shared memory (2E + 2·n_group + 2k floats) so every step is a
// strided scan plus a 5-step shuffle reduction; k rounds of warp arg-max are cheap at the k ≤ 8 and
// E ≤ 256 of real models and stay correct up to k = E.
//
// Non-finite logits: the CPU router throws, which a kernel cannot do without a host synchronisation.
// Here such a row is routed nowhere (ids -1, weights 0: zero routed output, nothing leaks into other
// rows) and counted in *nonfinite, which the caller may read after the stream completes.

#include <cstdint>
#include <stdexcept>

#include "smoe/core/error.hpp"
#include "smoe/kernels/cuda/common.cuh"
#include "smoe/router/topk_config.hpp"

namespace smoe::inline v0::kernels::cuda {

// TopKConfig flattened into what the kernel reads.
struct TopKParams {
    int experts = 0, k = 0, n_group = 1, group_size = 0, topk_group = 1;
    bool sigmoid = false, norm = false, after_topk = false;
    float scale = 1.0f, eps = 0.0f;

    static TopKParams from(router::TopKConfig const& c) {
        c.validate();
        // These kernels have none of TopK's general-row options (router/topk_row.hpp): refused, never ignored.
        using smoe::detail::fail;
        if (c.score_func == router::ScoreFunc::sqrtsoftplus) fail("score_func", "sqrtsoftplus", "softmax or sigmoid on the CUDA backend");
        if (c.group_score != router::GroupScore::max_or_top2)
            fail("group_score", static_cast<int>(c.group_score), "max_or_top2 (0) on the CUDA backend");
        if (c.norm_p != 1.0f) fail("norm_p", c.norm_p, "1 on the CUDA backend");
        if (c.num_null_experts > 0) fail("num_null_experts", c.num_null_experts, "0 on the CUDA backend");
        TopKParams p;
        p.experts = static_cast<int>(c.num_experts);
        p.k = static_cast<int>(c.top_k);
        p.n_group = static_cast<int>(c.n_group);
        p.group_size = static_cast<int>(c.group_size());
        p.topk_group = static_cast<int>(c.groups_kept());
        p.sigmoid = c.score_func == router::ScoreFunc::sigmoid;
        p.norm = c.norm_topk_prob;
        p.after_topk = c.score_after_topk;
        p.scale = c.routed_scaling_factor;
        p.eps = c.norm_eps;
        return p;
    }
    // Shared-memory floats one warp uses.
    __host__ __device__ int warp_floats() const { return 2 * experts + 2 * n_group + 2 * k; }
};

inline constexpr int kRoutingWarps = 4;
inline constexpr std::size_t kRoutingSmemLimit = 48 * 1024;  // no opt-in attribute needed below this

// A template (on the warps per block, its launch bound) so that several translation units can include
// this header: a non-template __global__ function here would be defined in each.
template <int kMaxWarps>
__global__ void __launch_bounds__(32 * kMaxWarps) topk_route_kernel(float const* __restrict__ logits, std::int64_t ld, int tokens,
                                  float const* __restrict__ bias, TopKParams p, std::int32_t* __restrict__ out_ids,
                                  float* __restrict__ out_w, std::int64_t out_ld, std::int32_t* __restrict__ nonfinite) {
    extern __shared__ float smem[];
    int const lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    int const t = blockIdx.x * (blockDim.x >> 5) + warp;
    if (t >= tokens) return;  // whole warps exit together: no later __syncwarp waits on them

    int const E = p.experts, k = p.k;
    float* s = smem + warp * p.warp_floats();  // weighting score (or the logit for after_topk)
    float* c = s + E;                          // selection score; -inf once taken or not eligible
    float* gscore = c + E;                     // [n_group]
    float* gkept = gscore + p.n_group;         // [n_group] 1 if the group is kept
    float* sw = gkept + p.n_group;             // [k] selected weights
    int* sid = reinterpret_cast<int*>(sw + k); // [k] selected ids

    float const* x = logits + static_cast<std::int64_t>(t) * ld;
    std::int32_t* ids_row = out_ids + static_cast<std::int64_t>(t) * out_ld;
    float* w_row = out_w + static_cast<std::int64_t>(t) * out_ld;

    bool bad = false;
    float m = -INFINITY;
    for (int e = lane; e < E; e += 32) {
        float const v = x[e];
        bad |= !isfinite(v);
        s[e] = v;
        m = fmaxf(m, v);
    }
    if (__any_sync(0xffffffffu, bad)) {
        if (lane == 0) atomicAdd(nonfinite, 1);
        for (int j = lane; j < k; j += 32) {
            ids_row[j] = -1;
            w_row[j] = 0.0f;
        }
        return;
    }
    m = warp_max(m);

    if (p.after_topk) {
        for (int e = lane; e < E; e += 32) c[e] = s[e];
    } else {
        if (p.sigmoid) {
            for (int e = lane; e < E; e += 32) s[e] = 1.0f / (1.0f + expf(-s[e]));
        } else {
            float sum = 0.0f;
            for (int e = lane; e < E; e += 32) {
                float const z = expf(s[e] - m);
                s[e] = z;
                sum += z;
            }
            sum = warp_sum(sum);
            for (int e = lane; e < E; e += 32) s[e] = s[e] / sum;
        }
        for (int e = lane; e < E; e += 32) c[e] = bias ? s[e] + bias[e] : s[e];
    }
    __syncwarp();

    if (p.n_group > 1) {
        int const G = p.group_size;
        // Group score: the largest c without a bias (DeepSeek-V2), the sum of the two largest with one
        // (DeepSeek-V3); routing.md §10.1.
        for (int g = lane; g < p.n_group; g += 32) {
            float a = -INFINITY, b = -INFINITY;
            for (int e = g * G; e < (g + 1) * G; ++e) {
                float const v = c[e];
                if (v > a) {
                    b = a;
                    a = v;
                } else if (v > b) {
                    b = v;
                }
            }
            gscore[g] = bias ? a + b : a;
            gkept[g] = 0.0f;
        }
        __syncwarp();
        for (int r = 0; r < p.topk_group; ++r) {
            float bv = -INFINITY;
            int bi = 0x7fffffff;
            for (int g = lane; g < p.n_group; g += 32)
                if (gkept[g] == 0.0f && ranks_before(gscore[g], g, bv, bi)) {
                    bv = gscore[g];
                    bi = g;
                }
            warp_argmax(bv, bi);
            if (lane == 0 && bi < p.n_group) gkept[bi] = 1.0f;
            __syncwarp();
        }
        for (int e = lane; e < E; e += 32)
            if (gkept[e / G] == 0.0f) c[e] = -INFINITY;
        __syncwarp();
    }

    // k rounds of arg-max; a taken expert becomes -inf. Eligible experts number at least k
    // (validated), and their scores are finite, so a -inf is never taken.
    for (int j = 0; j < k; ++j) {
        float bv = -INFINITY;
        int bi = 0x7fffffff;
        for (int e = lane; e < E; e += 32)
            if (ranks_before(c[e], e, bv, bi)) {
                bv = c[e];
                bi = e;
            }
        warp_argmax(bv, bi);
        if (lane == 0) {
            // Only a NaN in the (device-side, unchecked) bias can leave no candidate; the slot then
            // stays empty instead of indexing out of bounds.
            int const id = bi < E ? bi : -1;
            sid[j] = id;
            if (id >= 0) c[id] = -INFINITY;
        }
        __syncwarp();
    }

    // Weights in selection order. after_topk: softmax over the selected logits; sid[0] holds the
    // largest logit (it was taken first).
    float sum = 0.0f;
    if (p.after_topk) {
        float const top = s[sid[0]];  // after_topk takes no bias, so sid[0] is valid
        for (int j = lane; j < k; j += 32) {
            float const z = expf(s[sid[j]] - top);
            sw[j] = z;
            sum += z;
        }
        sum = warp_sum(sum);
        for (int j = lane; j < k; j += 32) sw[j] = sw[j] / sum * p.scale;
    } else {
        for (int j = lane; j < k; j += 32) {
            sw[j] = sid[j] >= 0 ? s[sid[j]] : 0.0f;
            sum += sw[j];
        }
        sum = warp_sum(sum);
        float const denom = sum + p.eps;
        // As the oracle: with an all-underflowed row and eps = 0 the weights stay 0 rather than 0/0.
        bool const divide = p.norm && denom > 0.0f;
        for (int j = lane; j < k; j += 32) sw[j] = (divide ? sw[j] / denom : sw[j]) * p.scale;
    }
    __syncwarp();

    warp_write_ranked(sw, sid, k, ids_row, w_row, k);
}

// Launches the kernel on stream; logits [tokens, ld >= E], bias [E] or null, out [tokens, out_ld >= k].
inline void launch_topk_route(TopKParams const& p, float const* logits, std::int64_t ld, std::int64_t tokens,
                              float const* bias, std::int32_t* out_ids, float* out_w, std::int64_t out_ld,
                              std::int32_t* nonfinite, cudaStream_t stream) {
    if (tokens == 0) return;
    std::size_t const per_warp = static_cast<std::size_t>(p.warp_floats()) * sizeof(float);
    if (per_warp > kRoutingSmemLimit)
        smoe::detail::fail("num_experts", p.experts, "at most about 6000 experts for the CUDA top-k router (one warp's row in 48 KB of shared memory)");
    int warps = static_cast<int>(kRoutingSmemLimit / per_warp);
    warps = warps < 1 ? 1 : (warps > kRoutingWarps ? kRoutingWarps : warps);
    auto const blocks = static_cast<unsigned>(ceil_div(tokens, warps));
    topk_route_kernel<kRoutingWarps><<<blocks, 32 * warps, per_warp * static_cast<std::size_t>(warps), stream>>>(
        logits, ld, static_cast<int>(tokens), bias, p, out_ids, out_w, out_ld, nonfinite);
    check_launch("topk_route_kernel");
}

}  // namespace smoe::inline v0::kernels::cuda
