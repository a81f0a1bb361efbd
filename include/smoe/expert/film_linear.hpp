#pragma once
// smoe::expert::FilmLinear: MoFME's FiLM modules as released (research.md §5.2; Zhang et al., AAAI 2024;
// RoyZry98/MoFME-Pytorch models/moe/film.py Modular_Experts). Expert e modulates the hidden h [d] of
// the block's shared basenet with input-dependent affine maps and has no expansion:
//
//   g_e(h) = (P_e h + p_e) ⊙ h + (Q_e h + q_e)       P_e, Q_e [d, d]; p_e, q_e [d]
//
// The released forward applies ff_list[idx + 2] for router column idx, so column 0 weights GELU(h)
// (the activation module, no parameters) and column e >= 1 weights module e − 1 (module E − 1 is stored
// and never used): `expert0_gelu` (default true) reproduces that; false maps column e to module e.
// run(e, rows, w) writes w · g(rows) for the rows routed to column e: two [M, d] x [d, d] products
// (kernels/cpu/gemm_nt.hpp) and one fused element pass. GELU is the erf form.
//
// 2d² + 2d parameters per expert (295K at d = 384, against 1.18M for a d → 4d → d FFN); a merge of k
// experts' parameters would cost the same k·2d² per token, so experts run per slot.
//
//   smoe::expert::FilmLinear ex({.hidden_size = d, .num_experts = E}, {.P = P, .p = p, .Q = Q, .q = q});

#include <cmath>
#include <cstdint>
#include <span>
#include <string>
#include <utility>

#include "smoe/detail/xsimd.hpp"

#include "smoe/core/error.hpp"
#include "smoe/core/limits.hpp"
#include "smoe/core/view.hpp"
#include "smoe/core/workspace.hpp"
#include "smoe/kernels/cpu/gemm_nt.hpp"
#include "smoe/kernels/cpu/simd_map.hpp"

namespace smoe::inline v0::expert {

struct FilmLinearConfig {
    std::int64_t hidden_size = 0;  // d, 1 <= d <= limits::kMaxDimension
    std::int64_t num_experts = 0;  // E router columns and E stored modules
    bool expert0_gelu = true;      // the released indexing (research.md §10.11)

    void validate() const {
        smoe::detail::require_in_range("hidden_size", hidden_size, 1, limits::kMaxDimension, "smoe::limits::kMaxDimension");
        smoe::detail::require_in_range("num_experts", num_experts, 1, limits::kMaxExperts, "smoe::limits::kMaxExperts");
    }
};

// Module e's P_e, Q_e at [e · d · d], p_e, q_e at [e · d] (the checkpoint's expert.0 and expert.1 weight
// and bias); views, read at every call.
struct FilmLinearWeights {
    std::span<float const> P, p, Q, q;  // [E, d, d], [E, d], [E, d, d], [E, d]
};

namespace detail {

// 0.5 x (1 + erf(x / sqrt 2)), torch's default GELU.
template <class Arch>
void gelu(Arch arch, float const* x, float* y, std::int64_t n) {
    using batch = xsimd::batch<float, Arch>;
    batch const half(0.5f), one(1.0f), r(0.70710678118654752f);
    kernels::cpu::simd_map(arch, x, y, n, [&](batch v) { return half * v * (one + xsimd::erf(v * r)); });
}

}  // namespace detail

class FilmLinear {
public:
    using Config = FilmLinearConfig;
    using Weights = FilmLinearWeights;
    static constexpr bool is_compute_free = false;

    FilmLinear(Config const& cfg, Weights const& w) : cfg_(cfg), w_(w) {
        cfg_.validate();
        std::int64_t const d = cfg_.hidden_size, E = cfg_.num_experts;
        auto const check = [&](std::span<float const> v, std::int64_t n, char const* name) {
            if (static_cast<std::int64_t>(v.size()) != n)
                smoe::detail::fail(name, "length " + std::to_string(v.size()), std::to_string(n) + " (num_experts · " + (n == E * d ? "d" : "d · d") + ")");
            for (std::size_t i = 0; i < v.size(); ++i)
                if (!std::isfinite(v[i])) smoe::detail::fail(name, smoe::detail::to_text(v[i]) + " at element " + std::to_string(i), "finite weights");
        };
        check(w.P, E * d * d, "film.P");
        check(w.p, E * d, "film.p");
        check(w.Q, E * d * d, "film.Q");
        check(w.q, E * d, "film.q");
    }

    Config const& config() const { return cfg_; }
    std::int64_t num_experts() const { return cfg_.num_experts; }
    std::int64_t hidden_size() const { return cfg_.hidden_size; }
    // The module router column e runs, or -1 for the GELU column of the released indexing.
    std::int64_t module_of(std::int64_t e) const { return cfg_.expert0_gelu ? e - 1 : e; }

    std::size_t workspace_size(std::int64_t max_rows) const {
        WorkspaceSize size;
        carve(size, max_rows);
        return size.bytes();
    }

    template <class Arch>
    void run(Arch arch, std::int64_t e, MatrixView<float const> h, std::span<float const> row_w, MatrixView<float> out, Workspace& ws) const {
        std::int64_t const M = h.rows, d = cfg_.hidden_size, m = module_of(e);
        if (M == 0) return;
        if (m < 0) {
            for (std::int64_t r = 0; r < M; ++r) {
                detail::gelu(arch, h.row(r), out.row(r), d);
                for (std::int64_t i = 0; i < d; ++i) out(r, i) *= row_w[static_cast<std::size_t>(r)];
            }
            return;
        }
        auto const [tp, tq] = carve(ws, M);
        auto const mat = [&](std::span<float const> W) { return MatrixView<float const>(W.data() + m * d * d, d, d); };
        kernels::cpu::gemm_nt(arch, h, mat(w_.P), tp);
        kernels::cpu::gemm_nt(arch, h, mat(w_.Q), tq);
        float const* p = w_.p.data() + m * d;
        float const* q = w_.q.data() + m * d;
        for (std::int64_t r = 0; r < M; ++r) {
            float const wr = row_w[static_cast<std::size_t>(r)];
            float const* hr = h.row(r);
            float* o = out.row(r);
            for (std::int64_t i = 0; i < d; ++i) o[i] = wr * ((tp(r, i) + p[i]) * hr[i] + (tq(r, i) + q[i]));
        }
    }

private:
    // P_e h and Q_e h of M rows.
    template <class Alloc>
    std::pair<MatrixView<float>, MatrixView<float>> carve(Alloc& a, std::int64_t M) const {
        std::int64_t const d = cfg_.hidden_size;
        auto const n = static_cast<std::size_t>(M * d);
        MatrixView<float> const tp(a.template take<float>(n).data(), M, d);
        return {tp, MatrixView<float>(a.template take<float>(n).data(), M, d)};
    }

    Config cfg_;
    Weights w_;
};

}  // namespace smoe::inline v0::expert
