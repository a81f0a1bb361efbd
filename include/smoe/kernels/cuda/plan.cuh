#pragma once
// Host-side plan of the CUDA layer: tile sizes, the bounds that size the grids and the workspace
// before the routing is known, the workspace carving, and a host mirror of the device tile schedule.
// Plain C++ with no CUDA include (a .cpp test compiles it with g++ and runs it on a machine without a
// GPU); the kernels read the same constants.
//
// Why bounds: forward never synchronises with the host (CUDA-graph capture), so the per-expert row
// counts stay on the device. The host launches a conservative grid sized by these bounds and the
// blocks past the device-side schedule exit at once.

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

#include "smoe/core/workspace.hpp"

namespace smoe::inline v0::kernels::cuda {

// Grouped GEMM tile (rows of one expert x output columns x reduction step). 64 x 64 keeps four warps
// of 32 x 32 bf16 WMMA accumulators (2 x 2 fragments each) and two 64 x 40 operand tiles per GEMM
// in 20 KB of shared memory, so several blocks fit per SM.
inline constexpr int kTileM = 64;
inline constexpr int kTileN = 64;
inline constexpr int kTileK = 32;
inline constexpr int kTileThreads = 128;
// Decode path: when no expert can receive more than this many rows (T <= kSmallM, since a token
// picks an expert at most once), a GEMV-like kernel streams each touched expert's weights once.
inline constexpr int kSmallM = 8;
inline constexpr int kSmallThreads = 256;

// Upper bound of Σ_e ceil(c_e / tile) over any split of nnz rows among E experts: at most
// min(E, nnz) experts are non-empty and each wastes at most tile - 1 rows.
constexpr std::int64_t max_m_tiles(std::int64_t nnz, std::int64_t E, std::int64_t tile = kTileM) {
    if (nnz <= 0 || E <= 0) return 0;
    std::int64_t const active = std::min(E, nnz);
    return std::min(nnz, (nnz + active * (tile - 1)) / tile);
}

// Rows of the tile-padded expert-major buffer: every expert segment rounded up to the tile.
constexpr std::int64_t max_padded_rows(std::int64_t nnz, std::int64_t E, std::int64_t tile = kTileM) {
    return max_m_tiles(nnz, E, tile) * tile;
}

// What the device schedule kernel computes from the per-expert counts, written the plain way. Tests
// compare the device result with it and check its invariants.
struct TileSchedule {
    std::vector<std::int32_t> offsets;         // [E+1] CSR offsets (exclusive scan of counts)
    std::vector<std::int32_t> padded_offsets;  // [E+1] the same with every count rounded up to the tile
    std::vector<std::int32_t> tile_expert;     // [tiles] expert of each m-tile, experts in id order
    std::vector<std::int32_t> tile_row0;       // [tiles] first row of the tile inside its expert
    std::vector<std::int32_t> active;          // experts with at least one row, in id order
};

inline TileSchedule host_tile_schedule(std::span<std::int32_t const> counts, std::int32_t tile = kTileM) {
    TileSchedule s;
    s.offsets.push_back(0);
    s.padded_offsets.push_back(0);
    for (std::size_t e = 0; e < counts.size(); ++e) {
        std::int32_t const c = counts[e];
        s.offsets.push_back(s.offsets.back() + c);
        std::int32_t const tiles = (c + tile - 1) / tile;
        s.padded_offsets.push_back(s.padded_offsets.back() + tiles * tile);
        for (std::int32_t i = 0; i < tiles; ++i) {
            s.tile_expert.push_back(static_cast<std::int32_t>(e));
            s.tile_row0.push_back(i * tile);
        }
        if (c > 0) s.active.push_back(static_cast<std::int32_t>(e));
    }
    return s;
}

// Sizes of one layer call.
struct LayerDims {
    std::int64_t tokens = 0;       // T
    std::int64_t experts = 0;      // E (CSR rows)
    std::int64_t slots = 0;        // K: slots per token in the token-major view
    std::int64_t hidden = 0;       // d
    std::int64_t intermediate = 0; // f
};

// Every device buffer of one forward, carved from the caller's workspace in this order. H is the
// element type of the hidden activations (the weight type). One routine sizes (WorkspaceSize) and
// carves (Workspace), so the two cannot disagree; Workspace never dereferences, so device pointers
// are carved like host ones.
template <class H>
struct LayerBuffers {
    std::span<float> logits;                // [T, E]
    std::span<std::int32_t> expert_ids;     // [T, K] token-major
    std::span<float> expert_weights;        // [T, K]
    std::span<std::int32_t> counts;         // [E]
    std::span<std::int32_t> offsets;        // [E+1]
    std::span<std::int32_t> padded_offsets; // [E+1]
    std::span<std::int32_t> token_ids;      // [T*K] CSR
    std::span<float> weights;               // [T*K] CSR
    std::span<std::int32_t> slots;          // [T*K] CSR row -> token-major slot
    std::span<std::int32_t> slot_rows;      // [T*K] token-major slot -> CSR row, -1 if not dispatched
    std::span<std::int32_t> tile_expert;    // [max_m_tiles]
    std::span<std::int32_t> tile_row0;      // [max_m_tiles]
    std::span<std::int32_t> active;         // [min(E, T*K)] non-empty experts
    std::span<std::int32_t> counters;       // [4]: number of m-tiles, of active experts, non-finite logits, spare
    std::span<H> hidden;                    // [max_padded_rows, f] silu(g) * u, tile-padded expert-major
    std::span<float> slot_out;              // [T*K, d] weighted expert outputs in CSR order
};

inline constexpr int kCounterTiles = 0, kCounterActive = 1, kCounterNonFinite = 2, kCounterCount = 4;

template <class H, class Alloc>
LayerBuffers<H> carve_layer(Alloc& a, LayerDims const& n) {
    auto const sz = [](std::int64_t v) { return static_cast<std::size_t>(v); };
    std::int64_t const nnz = n.tokens * n.slots;
    LayerBuffers<H> b;
    b.logits = a.template take<float>(sz(n.tokens * n.experts));
    b.expert_ids = a.template take<std::int32_t>(sz(nnz));
    b.expert_weights = a.template take<float>(sz(nnz));
    b.counts = a.template take<std::int32_t>(sz(n.experts));
    b.offsets = a.template take<std::int32_t>(sz(n.experts + 1));
    b.padded_offsets = a.template take<std::int32_t>(sz(n.experts + 1));
    b.token_ids = a.template take<std::int32_t>(sz(nnz));
    b.weights = a.template take<float>(sz(nnz));
    b.slots = a.template take<std::int32_t>(sz(nnz));
    b.slot_rows = a.template take<std::int32_t>(sz(nnz));
    b.tile_expert = a.template take<std::int32_t>(sz(max_m_tiles(nnz, n.experts)));
    b.tile_row0 = a.template take<std::int32_t>(sz(max_m_tiles(nnz, n.experts)));
    b.active = a.template take<std::int32_t>(sz(std::min(n.experts, nnz)));
    b.counters = a.template take<std::int32_t>(kCounterCount);
    b.hidden = a.template take<H>(sz(max_padded_rows(nnz, n.experts) * n.intermediate));
    b.slot_out = a.template take<float>(sz(nnz * n.hidden));
    return b;
}

// Bytes of device workspace for calls of up to dims.tokens tokens (with slack for an unaligned start).
template <class H>
std::size_t layer_workspace_size(LayerDims const& dims) {
    WorkspaceSize size;
    carve_layer<H>(size, dims);
    return required_bytes(size.bytes());
}

}  // namespace smoe::inline v0::kernels::cuda
