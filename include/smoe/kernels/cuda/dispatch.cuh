#pragma once
// Dispatch on the device (routing.md §1): the token-major [T, K] selection becomes the expert-major
// CSR with the same layout as the CPU's counting sort (token ids increasing within an expert), plus
// the tile schedule of the grouped GEMM. Three launches, no atomics, no host synchronisation:
//
//   1. expert_count_kernel   one block per expert counts its slots (block reduction);
//   2. expert_schedule_kernel one block scans the counts with cub::BlockScan: CSR offsets, offsets of
//      the segments padded to the GEMM tile, the (expert, first row) table of every m-tile, and the
//      list of non-empty experts (the decode path's grid);
//   3. expert_place_kernel   one block per expert ranks its slots in slot order (block exclusive
//      scan), which is token order because a token's slots are contiguous: a stable counting sort.
//
// Each block reads all T·K ids once per pass (E · T · K reads from L2: 8 M for E = 256, T = 4096,
// K = 8), which costs less than the atomics and the second sort a scatter-based version needs and
// gives a deterministic order for free.

#include <cstdint>

#include <cub/block/block_reduce.cuh>
#include <cub/block/block_scan.cuh>

#include "smoe/kernels/cuda/common.cuh"
#include "smoe/kernels/cuda/plan.cuh"

namespace smoe::inline v0::kernels::cuda {

inline constexpr int kDispatchThreads = 256;

// Every kernel of these headers is a template (here on its block size), because a non-template
// __global__ function defined in a header is a multiple definition once two translation units
// include it.

// counts[e] = number of slots with id e; block 0 also marks the slots no expert computes (padding -1,
// null experts >= E) in slot_rows, which expert_place_kernel never writes.
template <int kThreads>
__global__ void __launch_bounds__(kThreads) expert_count_kernel(std::int32_t const* __restrict__ ids, int n, int experts,
                                    std::int32_t* __restrict__ counts, std::int32_t* __restrict__ slot_rows) {
    using Reduce = cub::BlockReduce<int, kThreads>;
    __shared__ typename Reduce::TempStorage tmp;
    int const e = blockIdx.x;
    int c = 0;
    for (int s = threadIdx.x; s < n; s += kThreads) {
        int const id = ids[s];
        c += id == e ? 1 : 0;
        if (e == 0 && (id < 0 || id >= experts)) slot_rows[s] = -1;
    }
    int const total = Reduce(tmp).Sum(c);
    if (threadIdx.x == 0) counts[e] = total;
}

template <int kThreads>
__global__ void __launch_bounds__(kThreads) expert_schedule_kernel(std::int32_t const* __restrict__ counts, int experts, int tile,
                                       std::int32_t* __restrict__ offsets, std::int32_t* __restrict__ padded_offsets,
                                       std::int32_t* __restrict__ tile_expert, std::int32_t* __restrict__ tile_row0,
                                       std::int32_t* __restrict__ active, std::int32_t* __restrict__ counters) {
    using Scan = cub::BlockScan<int, kThreads>;
    __shared__ typename Scan::TempStorage tmp;
    int rows = 0, tiles = 0, nonempty = 0;  // running totals of the chunks before this one
    for (int base = 0; base < experts; base += kThreads) {
        int const e = base + static_cast<int>(threadIdx.x);
        int const c = e < experts ? counts[e] : 0;
        int const t = (c + tile - 1) / tile;
        int row_start, tile_start, active_idx, chunk_rows, chunk_tiles, chunk_active;
        Scan(tmp).ExclusiveSum(c, row_start, chunk_rows);
        __syncthreads();
        Scan(tmp).ExclusiveSum(t, tile_start, chunk_tiles);
        __syncthreads();
        Scan(tmp).ExclusiveSum(c > 0 ? 1 : 0, active_idx, chunk_active);
        __syncthreads();
        if (e < experts) {
            offsets[e] = rows + row_start;
            padded_offsets[e] = (tiles + tile_start) * tile;
            for (int i = 0; i < t; ++i) {
                tile_expert[tiles + tile_start + i] = e;
                tile_row0[tiles + tile_start + i] = i * tile;
            }
            if (c > 0) active[nonempty + active_idx] = e;
        }
        rows += chunk_rows;
        tiles += chunk_tiles;
        nonempty += chunk_active;
    }
    if (threadIdx.x == 0) {
        offsets[experts] = rows;
        padded_offsets[experts] = tiles * tile;
        counters[kCounterTiles] = tiles;
        counters[kCounterActive] = nonempty;
    }
}

template <int kThreads>
__global__ void __launch_bounds__(kThreads) expert_place_kernel(std::int32_t const* __restrict__ ids, float const* __restrict__ w, int n, int K,
                                    std::int32_t const* __restrict__ offsets, std::int32_t* __restrict__ token_ids,
                                    float* __restrict__ weights, std::int32_t* __restrict__ slots,
                                    std::int32_t* __restrict__ slot_rows) {
    using Scan = cub::BlockScan<int, kThreads>;
    __shared__ typename Scan::TempStorage tmp;
    int const e = blockIdx.x;
    int next = offsets[e];
    for (int base = 0; base < n; base += kThreads) {
        int const s = base + static_cast<int>(threadIdx.x);
        int const hit = s < n && ids[s] == e ? 1 : 0;
        int rank, chunk;
        Scan(tmp).ExclusiveSum(hit, rank, chunk);
        __syncthreads();  // tmp is reused by the next chunk
        if (hit) {
            int const row = next + rank;
            token_ids[row] = s / K;
            weights[row] = w[s];  // the same float in both views (routing.md §1)
            slots[row] = s;
            slot_rows[s] = row;
        }
        next += chunk;
    }
}

// ids / w: token-major [T, K] (contiguous). Fills the CSR and schedule buffers of b.
template <class H>
void launch_dispatch(LayerBuffers<H> const& b, std::int32_t const* ids, float const* w, std::int64_t T, std::int64_t K,
                     std::int64_t E, cudaStream_t stream) {
    int const n = static_cast<int>(T * K);
    expert_count_kernel<kDispatchThreads><<<static_cast<unsigned>(E), kDispatchThreads, 0, stream>>>(ids, n, static_cast<int>(E),
                                                                                   b.counts.data(), b.slot_rows.data());
    check_launch("expert_count_kernel");
    expert_schedule_kernel<kDispatchThreads><<<1, kDispatchThreads, 0, stream>>>(b.counts.data(), static_cast<int>(E), kTileM,
                                                               b.offsets.data(), b.padded_offsets.data(),
                                                               b.tile_expert.data(), b.tile_row0.data(),
                                                               b.active.data(), b.counters.data());
    check_launch("expert_schedule_kernel");
    if (n == 0) return;
    expert_place_kernel<kDispatchThreads><<<static_cast<unsigned>(E), kDispatchThreads, 0, stream>>>(
        ids, w, n, static_cast<int>(K), b.offsets.data(), b.token_ids.data(), b.weights.data(), b.slots.data(),
        b.slot_rows.data());
    check_launch("expert_place_kernel");
}

}  // namespace smoe::inline v0::kernels::cuda
