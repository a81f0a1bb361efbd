#pragma once
// What the SwiGLU experts (expert::SwiGLU, expert::QuantSwiGLU) share: the epilogues, what a finished
// tile of the packed kernels (gemm_packed, gemm_bf16_dot, gemm_quant) becomes, so every expert format
// turns the same accumulators into the same bits; and run(), the two phases over blocks of rows.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <span>

#include "smoe/detail/xsimd.hpp"

#include "smoe/core/view.hpp"
#include "smoe/core/workspace.hpp"
#include "smoe/expert/swiglu_config.hpp"
#include "smoe/kernels/cpu/activation.hpp"
#include "smoe/kernels/cpu/gemm_packed.hpp"
#include "smoe/kernels/cpu/pack.hpp"
#include "smoe/macros.hpp"
#include "smoe/store/expert_store.hpp"

namespace smoe::inline v0::expert::detail {

inline constexpr std::int64_t kP = kernels::cpu::kPanelCols;
inline constexpr std::int64_t kHalf = kP / 2;  // gate (or up) units per gate/up panel

// Units of h per gate/up panel: 8 (8 gate and the 8 matching up columns), 16 for a non-gated expert
// (GluActivation::relu2: every column an up unit).
inline std::int64_t units_per_panel(GluActivation const& a) { return a.gated() ? kHalf : kP; }

// Store of a finished gate/up tile: h = silu(s1 · g) · (s3 · u), 8 units, into h's padded row. The
// general path (`general`: a clamped activation, biases or an input weight, swiglu_config.hpp) forms
// g = w · (s1 · acc) + b1 (u likewise) and the clamped activation; the plain path keeps its own bits.
// A non-gated expert (act->relu2) has 16 up units in the tile: h = relu(w · (s · acc) + b)², 16 units.
struct GateUpStore {
    MatrixView<float> h;
    float const* scale;                  // [panels * 16] or nullptr
    float const* bias = nullptr;         // [panels * 16] (gate 8, up 8 per panel) or nullptr
    float const* in_w = nullptr;         // [rows]: the routing weight on the input (Llama 4) or nullptr
    GluActivation const* act = nullptr;  // nullptr: plain silu, unless bias or in_w asks for the general path
    bool general() const { return bias != nullptr || in_w != nullptr || act != nullptr; }
#if SMOE_PACKED_AVX2
    SMOE_ALWAYS_INLINE void store(std::int64_t i, std::int64_t p, __m256 g, __m256 u) {
        using batch = xsimd::batch<float, xsimd::fma3<xsimd::avx2>>;
        if (scale) {
            g = _mm256_mul_ps(g, _mm256_loadu_ps(scale + p * kP));
            u = _mm256_mul_ps(u, _mm256_loadu_ps(scale + p * kP + kHalf));
        }
        if (general()) [[unlikely]]
            return store_general(i, p, batch(g), batch(u));
        batch const gv(g), uv(u);
        batch const hv = gv / (batch(1.0f) + xsimd::exp(-gv)) * uv;
        hv.store_unaligned(h.row(i) + p * kHalf);
    }
    SMOE_NOINLINE void store_general(std::int64_t i, std::int64_t p, xsimd::batch<float, xsimd::fma3<xsimd::avx2>> g,
                                     xsimd::batch<float, xsimd::fma3<xsimd::avx2>> u) {
        using batch = xsimd::batch<float, xsimd::fma3<xsimd::avx2>>;
        if (in_w) g *= batch(in_w[i]), u *= batch(in_w[i]);
        if (bias) g += batch::load_unaligned(bias + p * kP), u += batch::load_unaligned(bias + p * kP + kHalf);
        if (act && act->relu2) {  // max(0, v): maxps returns its second operand, v, when v is NaN
            g = xsimd::max(batch(0.0f), g);
            u = xsimd::max(batch(0.0f), u);
            (g * g).store_unaligned(h.row(i) + p * kP);
            (u * u).store_unaligned(h.row(i) + p * kP + kHalf);
            return;
        }
        GluActivation const a = act ? *act : GluActivation{};
        kernels::cpu::clamped_glu(g, u, a.alpha, a.limit, a.up_offset).store_unaligned(h.row(i) + p * kHalf);
    }
#endif
    // The kernels that hand over 16 floats (bf16 and int8 dot paths, the scalar tiles) get the same
    // vector SiLU where the build has AVX2: a scalar std::exp per unit cost a third of a dot-path expert.
    void store(std::int64_t i, std::int64_t p, float const* v) {
#if SMOE_PACKED_AVX2
        store(i, p, _mm256_loadu_ps(v), _mm256_loadu_ps(v + kHalf));
#else
        GluActivation const a = act ? *act : GluActivation{};
        if (a.relu2) {
            for (int c = 0; c < kP; ++c) {
                float u = scale ? v[c] * scale[p * kP + c] : v[c];
                if (in_w) u *= in_w[i];
                if (bias) u += bias[p * kP + c];
                u = std::isnan(u) ? u : std::max(u, 0.0f);
                h(i, p * kP + c) = u * u;
            }
            return;
        }
        for (int c = 0; c < kHalf; ++c) {
            float g = v[c], u = v[c + kHalf];
            if (scale) g *= scale[p * kP + c], u *= scale[p * kP + kHalf + c];
            if (!general()) {
                h(i, p * kHalf + c) = g / (1.0f + std::exp(-g)) * u;
                continue;
            }
            if (in_w) g *= in_w[i], u *= in_w[i];
            if (bias) g += bias[p * kP + c], u += bias[p * kP + kHalf + c];
            g = std::isnan(g) ? g : std::min(g, a.limit);
            u = std::isnan(u) ? u : std::max(-a.limit, std::min(u, a.limit));
            h(i, p * kHalf + c) = g / (1.0f + std::exp(-a.alpha * g)) * (u + a.up_offset);
        }
#endif
    }
};

// Store of a finished down tile: out = w · (s2 · acc + b2), the columns below d only; row_w nullptr
// means weight 1 (the weight already scaled the input: SwiGLUConfig::weight_on_input).
struct DownStore {
    MatrixView<float> out;
    float const* row_w;
    float const* scale;
    float const* bias = nullptr;  // [panels * 16] or nullptr
#if SMOE_PACKED_AVX2
    SMOE_ALWAYS_INLINE void store(std::int64_t i, std::int64_t p, __m256 lo, __m256 hi) {
        if (scale) {
            lo = _mm256_mul_ps(lo, _mm256_loadu_ps(scale + p * kP));
            hi = _mm256_mul_ps(hi, _mm256_loadu_ps(scale + p * kP + kHalf));
        }
        if (bias) {
            lo = _mm256_add_ps(lo, _mm256_loadu_ps(bias + p * kP));
            hi = _mm256_add_ps(hi, _mm256_loadu_ps(bias + p * kP + kHalf));
        }
        if (row_w) {
            __m256 const w = _mm256_set1_ps(row_w[i]);
            lo = _mm256_mul_ps(lo, w);
            hi = _mm256_mul_ps(hi, w);
        }
        float* dst = out.row(i) + p * kP;
        if ((p + 1) * kP <= out.cols) {
            _mm256_storeu_ps(dst, lo);
            _mm256_storeu_ps(dst + kHalf, hi);
        } else {
            alignas(32) float t[kP];
            _mm256_store_ps(t, lo);
            _mm256_store_ps(t + kHalf, hi);
            std::copy(t, t + (out.cols - p * kP), dst);
        }
    }
#endif
    void store(std::int64_t i, std::int64_t p, float const* v) {
        std::int64_t const n = std::min(kP, out.cols - p * kP);
        for (std::int64_t c = 0; c < n; ++c) {
            float a = v[c];
            if (scale) a *= scale[p * kP + c];
            if (bias) a += bias[p * kP + c];
            out(i, p * kP + c) = row_w ? a * row_w[i] : a;
        }
    }
};

// One SwiGLU expert over fp32 panels held elsewhere, in SwiGLU<float>'s layout (gate/up panels over d,
// then down panels over hidden_stride()): the merged expert of layer::SoftMerge. It has the members
// run_phased and a panel split over threads need.
struct MergedPanels {
    static constexpr std::int64_t kRowBlock = 64;
    float const* panels = nullptr;
    std::int64_t d = 0, gu_panels = 0, dn_panels = 0;

    std::int64_t gate_up_panels() const { return gu_panels; }
    std::int64_t down_panels() const { return dn_panels; }
    std::int64_t hidden_stride() const { return gu_panels * kHalf; }
    template <class Arch>
    void run_gate_up(Arch arch, std::int64_t, MatrixView<float const> x, MatrixView<float> h, std::int64_t p0, std::int64_t p1,
                     std::span<float const> = {}) const {
        GateUpStore epi{h, nullptr};
        kernels::cpu::gemm_packed(arch, x, panels, p0, p1, epi);
    }
    template <class Arch>
    void run_down(Arch arch, std::int64_t, MatrixView<float const> h, std::span<float const> row_w, MatrixView<float> out, std::int64_t p0,
                  std::int64_t p1) const {
        DownStore epi{out, row_w.data(), nullptr};
        kernels::cpu::gemm_packed(arch, h, panels + gu_panels * d * kP, p0, p1, epi);
    }
};

// GluBiases packed as the panels are, one expert after another: gate/up [E, panels_gu, 16] (8 gate
// units, the same 8 up units; non-gated: 16 up units), down [E, panels_dn, 16]; zeros where a bias is
// absent or past f or d. Both empty when there is no bias at all.
struct PackedBiases {
    kernels::cpu::AlignedArray<float> gu, dn;
    std::int64_t gu_panels = 0, dn_panels = 0;

    PackedBiases() = default;
    PackedBiases(GluBiases const& b, std::int64_t E, std::int64_t f, std::int64_t d, std::int64_t gu_p, std::int64_t dn_p,
                 bool gated = true)
        : gu_panels(gu_p), dn_panels(dn_p) {
        if (b.b1.data || b.b3.data) {
            gu = kernels::cpu::AlignedArray<float>(static_cast<std::size_t>(E * gu_p * kP));
            std::fill(gu.data(), gu.data() + gu.size(), 0.0f);
            for (std::int64_t e = 0; e < E; ++e)
                for (std::int64_t p = 0; p < gu_p; ++p)
                    for (std::int64_t c = 0; c < kP; ++c) {
                        std::int64_t const unit = gated ? p * kHalf + c % kHalf : p * kP + c;
                        auto const& src = gated && c < kHalf ? b.b1 : b.b3;
                        if (unit < f && src.data) gu.data()[(e * gu_p + p) * kP + c] = src(e, unit);
                    }
        }
        if (b.b2.data) {
            dn = kernels::cpu::AlignedArray<float>(static_cast<std::size_t>(E * dn_p * kP));
            std::fill(dn.data(), dn.data() + dn.size(), 0.0f);
            for (std::int64_t e = 0; e < E; ++e)
                for (std::int64_t o = 0; o < d; ++o) dn.data()[e * dn_p * kP + o] = b.b2(e, o);
        }
    }
    float const* gate_up(std::int64_t e) const { return gu.size() ? gu.data() + e * gu_panels * kP : nullptr; }
    float const* down(std::int64_t e) const { return dn.size() ? dn.data() + e * dn_panels * kP : nullptr; }
    std::size_t bytes() const { return (gu.size() + dn.size()) * sizeof(float); }
};

// The stores of expert e for an expert with config `c` (SwiGLU, QuantSwiGLU): the activation and input
// weight from the config, the biases from `b`.
inline GateUpStore gate_up_store(SwiGLUConfig const& c, PackedBiases const& b, std::int64_t e, MatrixView<float> h,
                                 float const* scale, std::span<float const> row_w) {
    return {h, scale, b.gate_up(e), c.weight_on_input ? row_w.data() : nullptr, c.activation.is_silu() ? nullptr : &c.activation};
}
inline DownStore down_store(SwiGLUConfig const& c, PackedBiases const& b, std::int64_t e, MatrixView<float> out, float const* scale,
                            std::span<float const> row_w) {
    return {out, c.weight_on_input ? nullptr : row_w.data(), scale, b.down(e)};
}

// The h scratch of a two-phase expert X (X::kRowBlock rows of hidden_stride() floats at most) and its
// run(): slot_out[r] = row_w[r] · f_e(rows_in[r]), gate/up then down over each block of rows.
template <class X>
std::size_t phased_h_floats(X const& ex, std::int64_t max_rows) {
    return static_cast<std::size_t>(std::min(max_rows, X::kRowBlock) * ex.hidden_stride());
}
// Kernel scratch of one phase call (QuantSwiGLU's bf16 dot path: phase_scratch_bytes()), else 0.
template <class X>
std::size_t phase_scratch_bytes(X const& ex) {
    if constexpr (requires { ex.phase_scratch_bytes(); })
        return ex.phase_scratch_bytes();
    else
        return 0;
}
template <class X>
std::size_t phased_workspace_size(X const& ex, std::int64_t max_rows) {
    WorkspaceSize size;
    size.take<float>(phased_h_floats(ex, max_rows));
    size.take_bytes(phase_scratch_bytes(ex));
    return size.bytes();
}
// `between(h, r0)` may change the hidden rows r0 .. r0 + h.rows of a block between the two phases
// (expert::Film's and layer::FilmMerged's modulation).
struct KeepHidden {
    void operator()(MatrixView<float>, std::int64_t) const {}
};
template <class X, class Arch, class Between = KeepHidden>
void run_phased(X const& ex, Arch arch, std::int64_t e, MatrixView<float const> rows_in, std::span<float const> row_w,
                MatrixView<float> slot_out, Workspace& ws, Between const& between = {}) {
    std::int64_t const M = rows_in.rows;
    if (M == 0) return;
    std::span<float> const hbuf = ws.take<float>(phased_h_floats(ex, M));
    [[maybe_unused]] std::span<std::byte> const scratch = ws.take<std::byte>(phase_scratch_bytes(ex));
    for (std::int64_t r0 = 0; r0 < M; r0 += X::kRowBlock) {
        std::int64_t const mb = std::min(X::kRowBlock, M - r0);
        MatrixView<float> const h(hbuf.data(), mb, ex.hidden_stride());
        auto const w = row_w.subspan(static_cast<std::size_t>(r0), static_cast<std::size_t>(mb));
        if constexpr (requires { ex.phase_scratch_bytes(); }) {
            ex.run_gate_up(arch, e, rows_in.block(r0, mb), h, 0, ex.gate_up_panels(), w, scratch);
            between(h, r0);
            ex.run_down(arch, e, MatrixView<float const>(h), w, slot_out.block(r0, mb), 0, ex.down_panels(), scratch);
        } else {
            ex.run_gate_up(arch, e, rows_in.block(r0, mb), h, 0, ex.gate_up_panels(), w);
            between(h, r0);
            ex.run_down(arch, e, MatrixView<float const>(h), w, slot_out.block(r0, mb), 0, ex.down_panels());
        }
    }
}

// run() of an expert whose record may not be resident: held for the call (MoELayer's unphased path,
// dist::MoELayer run one expert at a time; MoELayer's phased path holds experts itself, in rounds).
template <class X, class Arch>
void run_held(store::ExpertStore& st, X const& ex, Arch arch, std::int64_t e, MatrixView<float const> rows_in,
              std::span<float const> row_w, MatrixView<float> slot_out, Workspace& ws) {
    if (rows_in.rows == 0) return;
    if (st.residency() == store::Residency::resident) return run_phased(ex, arch, e, rows_in, row_w, slot_out, ws);
    store::ExpertStore::Pin const pin(st, e, rows_in.rows);  // the rows count as tokens for LFU
    run_phased(ex, arch, e, rows_in, row_w, slot_out, ws);
}

}  // namespace smoe::inline v0::expert::detail
