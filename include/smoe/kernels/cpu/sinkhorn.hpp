#pragma once
// The balancing step of router::Sinkhorn (routing.md §7): Sinkhorn normalisation of the row-shifted
// kernel K[t, e] = exp(x_te - m_t) over the whole batch, in fp32 as Megatron-LM's `sinkhorn` computes
// it, and the balanced score row P_t = d1 * K_t * d0_t the router selects on.
//
// Layout: K is stored once ([T, ld], ld = E rounded up to kSinkhornPad with zero columns) so every
// pass is whole SIMD batches with no tail; a zero column adds nothing to a sum. Each iteration is one
// streaming pass over K: d0_t needs d1 of the previous iteration only, so the column sums
// Σ_t d0_t K_te of the same iteration are accumulated in the same row visit.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <span>

#include "smoe/detail/xsimd.hpp"

#include "smoe/config.hpp"
#include "smoe/core/view.hpp"
#include "smoe/kernels/cpu/simd_map.hpp"
#include "smoe/kernels/cpu/softmax_topk.hpp"

namespace smoe::inline v0::kernels::cpu {

// What one call of the balancing did (routing.md §7 step 5).
struct SinkhornReport {
    std::int64_t iterations = 0;  // n, 0 when balancing did not run
    bool balanced = false;        // balancing ran (T >= 2 and max_iterations > 0); otherwise P = a
    bool converged = false;       // err <= tol after the last iteration; false when balancing did not run
    double error = 0.0;           // err after the last iteration; 0 when balancing did not run
};

// Row stride of K and length of the [E] vectors: the widest SIMD batch (16 floats) divides it.
inline constexpr std::int64_t kSinkhornPad = 16;
inline constexpr std::int64_t sinkhorn_stride(std::int64_t num_experts) {
    return (num_experts + kSinkhornPad - 1) / kSinkhornPad * kSinkhornPad;
}

// Per-call scratch, sized for max_tokens rows.
struct SinkhornScratch {
    std::int64_t ld = 0;
    std::span<float> kernel;     // [T, ld] K, zero in the padding columns
    std::span<float> d0;         // [T]
    std::span<float> d1;         // [ld], zero in the padding
    std::span<float> col_block;  // [ld] column sums of the current block of rows
    std::span<float> col;        // [ld] column sums Σ_t d0_t K_te
    std::span<float> row;        // [ld] one row of P (or of the activation)
};

template <class Alloc>
SinkhornScratch carve_sinkhorn(Alloc& a, std::int64_t max_tokens, std::int64_t num_experts) {
    SinkhornScratch s;
    s.ld = sinkhorn_stride(num_experts);
    auto const ld = static_cast<std::size_t>(s.ld), T = static_cast<std::size_t>(max_tokens);
    s.kernel = a.template take<float>(T * ld);
    s.d0 = a.template take<float>(T);
    s.d1 = a.template take<float>(ld);
    s.col_block = a.template take<float>(ld);
    s.col = a.template take<float>(ld);
    s.row = a.template take<float>(ld);
    return s;
}

// Column sums are added in blocks of this many rows, then the block sums into the total: the fp32
// rounding error of a column sum grows like (kBlock + T / kBlock) ulps instead of T ulps (T = 4096:
// 128 instead of 4096), which keeps P within the 1e-5 agreement of routing.md §0 for large batches.
inline constexpr std::int64_t kSinkhornColumnBlock = 64;

// Fills s.kernel with K for logits [T, E] (finite, T <= the scratch's rows), runs the iteration of
// routing.md §7 step 2 to err <= tol or max_iterations (>= 1), and leaves d0 and d1 in the scratch.
template <class Arch>
SinkhornReport sinkhorn_balance(Arch arch, MatrixView<float const> logits, double tol, std::int64_t max_iterations,
                                SinkhornScratch const& s) {
    using batch = xsimd::batch<float, Arch>;
    constexpr std::int64_t W = batch::size;
    static_assert(kSinkhornPad % W == 0, "the padding of K must be a whole number of SIMD batches");
    static_assert(SMOE_WORKSPACE_ALIGNMENT % Arch::alignment() == 0, "workspace buffers must suit aligned SIMD loads");
    std::int64_t const T = logits.rows, E = logits.cols, ld = s.ld;
    float* const kernel = s.kernel.data();
    float* const d0 = s.d0.data();
    float* const d1 = s.d1.data();
    float* const cb = s.col_block.data();
    float* const col = s.col.data();

    // K = exp(x - m) exactly as softmax_row computes its numerators, so equal logits give equal K and
    // the softmax weights can be taken from K without recomputing the exponentials.
    for (std::int64_t t = 0; t < T; ++t) {
        float const* x = logits.row(t);
        float* k = kernel + t * ld;
        batch const mv(row_max(arch, x, E));
        simd_map(arch, x, k, E, [&](batch v) { return exp_of_difference(v, mv); });
        std::fill(k + E, k + ld, 0.0f);
    }
    std::fill(d1, d1 + E, 1.0f);
    std::fill(d1 + E, d1 + ld, 0.0f);

    // Megatron: d0 = (1 / T) * 1 / (Σ_e d1_e K_te + eps), d1 = (1 / E) * 1 / (Σ_t d0_t K_te + eps).
    float const inv_t = static_cast<float>(1.0 / static_cast<double>(T));
    float const inv_e = static_cast<float>(1.0 / static_cast<double>(E));
    float const eps = 1e-8f;

    SinkhornReport r;
    r.balanced = true;
    for (;;) {
        std::fill(col, col + ld, 0.0f);
        std::fill(cb, cb + ld, 0.0f);
        for (std::int64_t t = 0; t < T; ++t) {
            float const* k = kernel + t * ld;
            batch acc(0.0f);
            for (std::int64_t i = 0; i < ld; i += W) acc = xsimd::fma(batch::load_aligned(d1 + i), batch::load_aligned(k + i), acc);
            float const d0t = inv_t / (xsimd::hadd(acc) + eps);
            d0[t] = d0t;
            batch const dv(d0t);
            for (std::int64_t i = 0; i < ld; i += W)
                xsimd::fma(dv, batch::load_aligned(k + i), batch::load_aligned(cb + i)).store_aligned(cb + i);
            if ((t + 1) % kSinkhornColumnBlock == 0 || t + 1 == T) {
                for (std::int64_t i = 0; i < ld; i += W) {
                    (batch::load_aligned(col + i) + batch::load_aligned(cb + i)).store_aligned(col + i);
                    batch(0.0f).store_aligned(cb + i);
                }
            }
        }
        // One scalar loop for every expert, so two equal columns get bit-equal d1 (exact ties stay ties).
        double err = 0.0;
        for (std::int64_t e = 0; e < E; ++e) {
            float const next = inv_e / (col[e] + eps);
            err += std::fabs(static_cast<double>(next) - static_cast<double>(d1[e]));
            d1[e] = next;
        }
        r.error = err / static_cast<double>(E);
        ++r.iterations;
        // routing.md §7: "until err <= tol or n = max_iterations", and "tol = 0 runs to the cap": in
        // fp32 the iteration often reaches an exact fixed point (err = 0) after a dozen steps, so
        // tol = 0 keeps iterating (P no longer changes) and reports converged if it ends there.
        r.converged = r.error <= tol;
        if ((r.converged && tol > 0.0) || r.iterations >= max_iterations) break;
    }
    return r;
}

// P_t = d1 * K_t * d0_t (Megatron's order: (d1 * K) * d0) for row t of a balanced scratch, into s.row.
template <class Arch>
float const* balanced_score_row(Arch, SinkhornScratch const& s, std::int64_t t) {
    using batch = xsimd::batch<float, Arch>;
    constexpr std::int64_t W = batch::size;
    float const* k = s.kernel.data() + t * s.ld;
    batch const dv(s.d0[t]);
    for (std::int64_t i = 0; i < s.ld; i += W)
        ((batch::load_aligned(s.d1.data() + i) * batch::load_aligned(k + i)) * dv).store_aligned(s.row.data() + i);
    return s.row.data();
}

}  // namespace smoe::inline v0::kernels::cpu
