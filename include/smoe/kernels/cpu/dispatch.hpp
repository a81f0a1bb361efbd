#pragma once
// Dispatch: a counting sort of the token-major selections into expert-major order (count per expert,
// exclusive scan, scatter in token order, so token ids increase within each expert), and the gather
// of each expert's input rows into one contiguous block for the expert GEMMs.

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <span>

#include "smoe/core/view.hpp"

namespace smoe::inline v0::kernels::cpu {

struct ExpertMajor {
    std::span<std::int32_t> offsets;    // [E+1]
    std::span<std::int32_t> token_ids;  // [nnz]
    std::span<float> weights;           // [nnz]
    std::span<std::int32_t> slots;      // [nnz]: token-major slot t*K + j of each row
    std::span<std::int32_t> slot_rows;  // [T*K]: CSR row of each token-major slot, -1 if not dispatched
};

// ids/w: [T, K] token-major; ids in [0, E) are dispatched, -1 (padding) and ids >= E (null experts,
// compute-free) are not. Returns nnz; counts the null slots into *null_slots when given (the
// statistics take them from this pass rather than from a second one).
inline std::int64_t build_expert_major(MatrixView<std::int32_t const> ids, MatrixView<float const> w, std::int64_t E,
                                       ExpertMajor const& out, std::int64_t* null_slots = nullptr) {
    std::int64_t const T = ids.rows, K = ids.cols;
    auto& off = out.offsets;
    std::fill(off.begin(), off.begin() + E + 1, 0);
    std::int64_t nulls = 0;
    for (std::int64_t t = 0; t < T; ++t)
        for (std::int64_t j = 0; j < K; ++j) {
            std::int32_t const e = ids(t, j);
            if (e >= 0 && e < E) ++off[e + 1];
            nulls += e >= E;
        }
    if (null_slots) *null_slots = nulls;
    for (std::int64_t e = 0; e < E; ++e) off[e + 1] += off[e];
    // off[e] now is the next free row of expert e; it ends at the start of expert e + 1, and the
    // shift below restores the starts.
    for (std::int64_t t = 0; t < T; ++t)
        for (std::int64_t j = 0; j < K; ++j) {
            std::int32_t const e = ids(t, j);
            std::int32_t const slot = static_cast<std::int32_t>(t * K + j);
            if (e < 0 || e >= E) {
                out.slot_rows[slot] = -1;
                continue;
            }
            std::int32_t const row = off[e]++;
            out.token_ids[row] = static_cast<std::int32_t>(t);
            out.weights[row] = w(t, j);
            out.slots[row] = slot;
            out.slot_rows[slot] = row;
        }
    for (std::int64_t e = E; e > 0; --e) off[e] = off[e - 1];
    off[0] = 0;
    return off[E];
}

// dst[r] = x[token_ids[r]] for the rows of one expert.
inline void gather_rows(MatrixView<float const> x, std::span<std::int32_t const> token_ids, MatrixView<float> dst) {
    std::size_t const bytes = static_cast<std::size_t>(x.cols) * sizeof(float);
    for (std::size_t r = 0; r < token_ids.size(); ++r) std::memcpy(dst.row(static_cast<std::int64_t>(r)), x.row(token_ids[r]), bytes);
}

}  // namespace smoe::inline v0::kernels::cpu
