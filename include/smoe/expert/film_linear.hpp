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
// run(e, rows, w) writes w · g(rows) for the rows routed to column e: one pass of the packed fp32 kernel
// (kernels/cpu/gemm_packed.hpp) over panels that hold 8 units of P_e and the same 8 units of Q_e, as
// SwiGLU's gate/up panels do, whose epilogue forms w · ((P h + p) ⊙ h + (Q h + q)) for the 8 units.
// Packed once at construction (the weights' views are not read afterwards): run through gemm_nt on the
// unpacked rows, MoFME's block was slower than a d -> 4d -> d top-k FFN at T = 128. GELU is the erf form.
//
// 2d² + 2d parameters per expert (295K at d = 384, against 1.18M for a d → 4d → d FFN); a merge of k
// experts' parameters would cost the same k·2d² per token, so experts run per slot.
//
//   smoe::expert::FilmLinear ex({.hidden_size = d, .num_experts = E}, {.P = P, .p = p, .Q = Q, .q = q});

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "smoe/detail/xsimd.hpp"

#include "smoe/core/error.hpp"
#include "smoe/core/limits.hpp"
#include "smoe/core/view.hpp"
#include "smoe/core/workspace.hpp"
#include "smoe/kernels/cpu/gemm_packed.hpp"
#include "smoe/kernels/cpu/pack.hpp"
#include "smoe/kernels/cpu/simd_map.hpp"
#include "smoe/macros.hpp"

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
// and bias); views, read while the expert is constructed only.
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

// Store of a finished P/Q tile: 8 units u = 8 · panel + c, P h in columns 0-7 and Q h in 8-15 of the tile:
// out = w · ((P h + p) ⊙ h + (Q h + q)), the units below d only.
struct FilmStore {
    MatrixView<float const> h;
    MatrixView<float> out;
    float const* row_w;
    float const* p;  // module's p, q, padded to the panels' units with zeros
    float const* q;
#if SMOE_PACKED_AVX2
    SMOE_ALWAYS_INLINE void store(std::int64_t i, std::int64_t panel, __m256 ph, __m256 qh) {
        std::int64_t const u0 = panel * 8, n = std::min<std::int64_t>(8, out.cols - u0);
        alignas(32) float hv[8] = {};
        std::copy(h.row(i) + u0, h.row(i) + u0 + n, hv);
        __m256 const a = _mm256_add_ps(ph, _mm256_loadu_ps(p + u0));
        __m256 const b = _mm256_add_ps(qh, _mm256_loadu_ps(q + u0));
        __m256 const g = _mm256_mul_ps(_mm256_set1_ps(row_w[i]), _mm256_add_ps(_mm256_mul_ps(a, _mm256_load_ps(hv)), b));
        alignas(32) float t[8];
        _mm256_store_ps(t, g);
        std::copy(t, t + n, out.row(i) + u0);
    }
#endif
    void store(std::int64_t i, std::int64_t panel, float const* v) {
        std::int64_t const u0 = panel * 8, n = std::min<std::int64_t>(8, out.cols - u0);
        for (std::int64_t c = 0; c < n; ++c)
            out(i, u0 + c) = row_w[i] * ((v[c] + p[u0 + c]) * h(i, u0 + c) + (v[c + 8] + q[u0 + c]));
    }
};

}  // namespace detail

class FilmLinear {
public:
    using Config = FilmLinearConfig;
    using Weights = FilmLinearWeights;
    static constexpr bool is_compute_free = false;

    FilmLinear(Config const& cfg, Weights const& w) : cfg_(cfg) {
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
        pack(w);
    }

    Config const& config() const { return cfg_; }
    std::int64_t num_experts() const { return cfg_.num_experts; }
    std::int64_t hidden_size() const { return cfg_.hidden_size; }
    // The module router column e runs, or -1 for the GELU column of the released indexing.
    std::int64_t module_of(std::int64_t e) const { return cfg_.expert0_gelu ? e - 1 : e; }

    std::size_t workspace_size(std::int64_t /*max_rows*/) const { return 0; }  // the epilogue needs no scratch

    template <class Arch>
    void run(Arch arch, std::int64_t e, MatrixView<float const> h, std::span<float const> row_w, MatrixView<float> out,
             Workspace& /*ws*/) const {
        std::int64_t const M = h.rows, d = cfg_.hidden_size, m = module_of(e);
        if (M == 0) return;
        if (m < 0) {
            for (std::int64_t r = 0; r < M; ++r) {
                detail::gelu(arch, h.row(r), out.row(r), d);
                for (std::int64_t i = 0; i < d; ++i) out(r, i) *= row_w[static_cast<std::size_t>(r)];
            }
            return;
        }
            std::int64_t const units = panels_per_module() * 8;
        detail::FilmStore epi{h, out, row_w.data(), bias_p_.data() + m * units, bias_q_.data() + m * units};
        kernels::cpu::gemm_packed(arch, h, panels_.data() + m * panels_per_module() * d * kernels::cpu::kPanelCols, 0,
                                  panels_per_module(), epi);
    }

    // Bytes of the packed P/Q panels and biases.
    std::size_t packed_bytes() const { return panels_.size() * sizeof(float) + (bias_p_.size() + bias_q_.size()) * sizeof(float); }

private:
    std::int64_t panels_per_module() const { return (cfg_.hidden_size + 7) / 8; }

    // Module m's panel j: columns 0-7 are rows 8j..8j+7 of P_m, columns 8-15 the same rows of Q_m (zeros
    // past d); p and q padded to the panels' units.
    void pack(Weights const& w) {
        std::int64_t const d = cfg_.hidden_size, E = cfg_.num_experts, np = panels_per_module();
        std::int64_t const pstride = d * kernels::cpu::kPanelCols;
        panels_ = kernels::cpu::AlignedArray<float>(static_cast<std::size_t>(E * np * pstride));
        bias_p_.assign(static_cast<std::size_t>(E * np * 8), 0.0f);
        bias_q_.assign(bias_p_.size(), 0.0f);
        for (std::int64_t m = 0; m < E; ++m) {
            float const* P = w.P.data() + m * d * d;
            float const* Q = w.Q.data() + m * d * d;
            for (std::int64_t j = 0; j < np; ++j)
                kernels::cpu::pack_panel(panels_.data() + (m * np + j) * pstride, d, [&](int c) -> float const* {
                    std::int64_t const u = j * 8 + c % 8;
                    return u >= d ? nullptr : (c < 8 ? P : Q) + u * d;
                });
            std::copy(w.p.begin() + m * d, w.p.begin() + (m + 1) * d, bias_p_.begin() + m * np * 8);
            std::copy(w.q.begin() + m * d, w.q.begin() + (m + 1) * d, bias_q_.begin() + m * np * 8);
        }
    }

    Config cfg_;
    kernels::cpu::AlignedArray<float> panels_;
    std::vector<float> bias_p_, bias_q_;
};

}  // namespace smoe::inline v0::expert
