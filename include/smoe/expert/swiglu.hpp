#pragma once
// smoe::expert::SwiGLU<W>: f_e(x) = W2 (silu(W1 x) ⊙ W3 x) (experts.md §3), fp32 inside, with weights
// stored as W = float, smoe::bf16 or std::int8_t (per-channel scales; core/format.hpp).
//
//   smoe::expert::SwiGLU<float> experts(cfg, smoe::expert::SwiGLUWeights<float>::dense(w1, w3, w2, cfg));
//   smoe::expert::SwiGLU<smoe::bf16> b(cfg, smoe::expert::SwiGLUWeights<smoe::bf16>::fused(gate_up, down, cfg));
//
// Packing: the constructor copies the weights once into panels (kernels/cpu/pack.hpp) that the
// kernels stream front to back; after construction only that copy is read, so the caller's tensors
// may be released (weights() then names released memory). Memory: the packed copy is the weights'
// own size, E · (2 · 16 · ceil(f/8) · d + 16 · ceil(d/16) · ceil(f/8) · 8) elements of W (f rounded up
// to 8, d to 16), plus 4 · E · (2 · 8 · ceil(f/8) + 16 · ceil(d/16)) bytes of scales for int8; the
// AVX512-BF16 path's k-pair panels round d up to even in the gate/up panels as well.
//
// Kernels (kernels/cpu/gemm_packed.hpp): gate and up are packed together, 8 gate and the 8 matching
// up units per panel (a non-gated relu² expert, GluActivation::relu2: 16 up units, no W1), so one pass
// reads W1 and W3 and the store computes h = silu(g) · u in place;
// the down projection multiplies by the routing weight in its store. A row alone (decode) and rows in
// a batch (prefill) use different tile shapes over the same panels, and every output is one FMA
// chain over k in order, so both give the same bits (rule 3), whatever the thread count.
//
// int8: g = s1 · Σ q·x, u = s3 · Σ q·x, out = w · (s2 · Σ q·h): the scale is factored out of the dot
// product (experts.md §9 allows it).
//
// bf16 with AVX512-BF16 (config bf16_dot, swiglu_config.hpp; default: where the CPU has it at run
// time): the panels are packed as k pairs instead (kernels/cpu/bf16_dot.hpp) and x and h are rounded
// to bf16 before vdpbf16ps, so results differ from the fp32 path by those roundings (within
// experts.md §9's bf16-output bound), still one fixed chain per output (rule 3), and the same bits
// for every Arch. uses_bf16_dot() says which path was chosen.

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <type_traits>
#include <vector>

#include "smoe/detail/xsimd.hpp"

#include "smoe/core/format.hpp"
#include "smoe/core/view.hpp"
#include "smoe/core/workspace.hpp"
#include "smoe/expert/swiglu_config.hpp"
#include "smoe/expert/swiglu_store.hpp"
#include "smoe/kernels/cpu/bf16_dot.hpp"
#include "smoe/kernels/cpu/gemm_packed.hpp"
#include "smoe/kernels/cpu/pack.hpp"
#include "smoe/kernels/cpu/weighted_sum.hpp"
#include "smoe/store/expert_store.hpp"

namespace smoe::inline v0::expert {

template <class W = float>
class SwiGLU {
    static_assert(is_weight_format_v<W>,
                  "smoe::expert::SwiGLU<W>: W must be a weight format: float, smoe::bf16 or std::int8_t (with "
                  "per-channel scales); the expert computes fp32 weights only after widening each of them");

public:
    using Config = SwiGLUConfig;
    using Weights = SwiGLUWeights<W>;
    using weight_type = W;
    static constexpr bool is_compute_free = false;

    // Rows per pass of run(): bounds the h scratch to kRowBlock x f floats whatever the batch; 64 rows
    // already reuse each panel enough to leave the memory-bound regime.
    static constexpr std::int64_t kRowBlock = 64;
    static constexpr std::int64_t kHalf = kernels::cpu::kPanelCols / 2;  // gate (or up) units per panel

    SwiGLU(Config const& cfg, Weights const& w) : cfg_(cfg), w_(w), upp_(detail::units_per_panel(cfg.activation)) {
        cfg_.validate();
        if (cfg_.int8_dot != Int8Dot::off)
            smoe::detail::fail("int8_dot", to_string(cfg_.int8_dot),
                               "off for expert::SwiGLU (the int8 dot path is expert::QuantSwiGLU's, with int4 or int8-channel weights)");
        w_.validate(cfg_);
        dot_ = resolve_bf16_dot(cfg_.bf16_dot);
        plan();
        bias_ = detail::PackedBiases(w_.bias, cfg_.num_experts, cfg_.intermediate_size, cfg_.hidden_size, gu_panels_, dn_panels_,
                                     cfg_.activation.gated());
        if (w_.packed) {
            open_packed();
            return;
        }
        if (cfg_.store.residency != store::Residency::resident)
            smoe::detail::fail("store.residency", store::to_string(cfg_.store.residency),
                               "resident, or weights.packed (a packed expert file: smoe-pack, store::pack_experts)");
        store_ = std::make_unique<store::ExpertStore>(std::vector<std::size_t>(static_cast<std::size_t>(cfg_.num_experts), record_bytes_),
                                                      [&](std::int64_t e, std::byte* dst) { pack_expert(e, dst); });
    }

    Config const& config() const { return cfg_; }
    Weights const& weights() const { return w_; }
    std::int64_t num_experts() const { return cfg_.num_experts; }
    std::int64_t hidden_size() const { return cfg_.hidden_size; }
    std::int64_t intermediate_size() const { return cfg_.intermediate_size; }
    // Whether run and the phases take the AVX512-BF16 path (native or emulated), and which:
    // Bf16Dot::off (fp32 path), on (vdpbf16ps) or emulated.
    bool uses_bf16_dot() const { return dot_ != Bf16Dot::off; }
    Bf16Dot bf16_dot() const { return dot_; }
    double flops_per_row() const { return 2.0 * matrices() * double(cfg_.hidden_size) * double(cfg_.intermediate_size); }
    // Bytes of expert e's weights as stored in format W (scales included for int8).
    double weight_bytes(std::int64_t /*e*/) const {
        double const d = double(cfg_.hidden_size), f = double(cfg_.intermediate_size);
        double bytes = matrices() * d * f * sizeof(W);
        if constexpr (Weights::has_scales) bytes += ((matrices() - 1.0) * f + d) * sizeof(float);
        return bytes;
    }
    // Bytes of the packed records the expert holds in memory (see the top of this file; a cached
    // store's arena, 0 for a mapped one).
    std::size_t packed_bytes() const { return store_->memory_bytes() + bias_.bytes(); }

    // Where the packed records live (store/expert_store.hpp); MoELayer holds experts through it.
    store::ExpertStore& store() const { return *store_; }
    // What a packed expert file records of this layer and of expert e (store::pack_experts).
    store::LayerInfo packed_layer_info() const {
        constexpr auto kind = std::is_same_v<W, float>  ? store::ExpertKind::swiglu_f32
                              : std::is_same_v<W, bf16> ? store::ExpertKind::swiglu_bf16
                                                        : store::ExpertKind::swiglu_int8;
        std::uint32_t const flags = (dot_ != Bf16Dot::off ? std::uint32_t(store::kPackBf16KPairs) : 0u) |
                                    (cfg_.activation.gated() ? 0u : std::uint32_t(store::kPackNonGated));
        return {kind, flags, cfg_.hidden_size, cfg_.intermediate_size};
    }
    store::RecordInfo packed_record_info(std::int64_t) const { return {}; }
    std::size_t record_bytes(std::int64_t) const { return record_bytes_; }

    // The two phases of run() as separate steps, for a caller that splits work over threads: panels
    // are independent, so any split of [0, gate_up_panels()) or [0, down_panels()) gives the same bits.
    std::int64_t gate_up_panels() const { return gu_panels_; }
    std::int64_t down_panels() const { return dn_panels_; }
    // Columns of the h rows between the phases: f rounded up to 8 (non-gated: 16; the extra columns hold zeros).
    std::int64_t hidden_stride() const { return gu_panels_ * upp_; }

    std::size_t workspace_size(std::int64_t max_rows) const { return detail::phased_workspace_size(*this, max_rows); }

    // slot_out[r] = row_w[r] · f_e(rows_in[r]) for the M rows of expert e.
    template <class Arch>
    void run(Arch arch, std::int64_t e, MatrixView<float const> rows_in, std::span<float const> row_w,
             MatrixView<float> slot_out, Workspace& ws) const {
        detail::run_held(*store_, *this, arch, e, rows_in, row_w, slot_out, ws);
    }

    // h[:, 8p .. 8p+8) = silu(W1 x) ⊙ W3 x for the gate/up panels p in [p0, p1); h is [M, hidden_stride()].
    // row_w: the M rows' routing weights, read only with config().weight_on_input.
    template <class Arch>
    void run_gate_up(Arch arch, std::int64_t e, MatrixView<float const> x, MatrixView<float> h, std::int64_t p0,
                     std::int64_t p1, std::span<float const> row_w = {}) const {
        std::byte const* const rec = store_->record(e);
        auto epi = detail::gate_up_store(cfg_, bias_, e, h, scales(rec, su_off_), row_w);
        W const* const gu = reinterpret_cast<W const*>(rec);
        if constexpr (std::is_same_v<W, bf16>)
            if (dot_ != Bf16Dot::off) return kernels::cpu::gemm_bf16_dot(arch, dot_kernel(), x, gu, p0, p1, epi);
        kernels::cpu::gemm_packed(arch, x, gu, p0, p1, epi);
    }

    // out[:, 16p .. 16p+16) = row_w · (W2 h) for the down panels p in [p0, p1); h is [M, hidden_stride()].
    template <class Arch>
    void run_down(Arch arch, std::int64_t e, MatrixView<float const> h, std::span<float const> row_w,
                  MatrixView<float> out, std::int64_t p0, std::int64_t p1) const {
        std::byte const* const rec = store_->record(e);
        auto epi = detail::down_store(cfg_, bias_, e, out, scales(rec, sd_off_), row_w);
        W const* const dn = reinterpret_cast<W const*>(rec + dn_off_);
        if constexpr (std::is_same_v<W, bf16>)
            if (dot_ != Bf16Dot::off) return kernels::cpu::gemm_bf16_dot(arch, dot_kernel(), h, dn, p0, p1, epi);
        kernels::cpu::gemm_packed(arch, h, dn, p0, p1, epi);
    }

    // Soft merging (layer::SoftMerge, research.md §3): merged[i] = Σ_e coeffs[e] · W_e[i], summed in
    // expert order in fp32 from each expert's exact fp32 value (bf16 widened, int8 times its channel
    // scale), for the floats i in [begin, end) of the merged expert's fp32 panels: gate/up panels, then
    // down panels, the layout of SwiGLU<float> (detail::MergedPanels runs them). begin and end are
    // multiples of 16, so a caller may split the range over threads. fp32 weights take the SIMD loop,
    // bf16 (both panel layouts) and int8 its AVX2 widening form (builds without AVX2 widen element by
    // element: the same bits).
    std::int64_t merged_floats() const { return gu_panels_ * cfg_.hidden_size * kP + dn_panels_ * hidden_stride() * kP; }
    template <class Arch>
    void merge(Arch, std::span<float const> coeffs, float* merged, std::int64_t begin, std::int64_t end) const {
        std::int64_t const split = gu_panels_ * cfg_.hidden_size * kP;
        // A resident store holds the records back to back, record_bytes_ apart (a multiple of 64).
        if (store_->residency() != store::Residency::resident)
            smoe::detail::fail("store.residency", store::to_string(store_->residency()), "resident experts to merge (soft merging reads every expert)");
        std::byte const* const rec0 = store_->record(0);
        auto part = [&](W const* base, std::int64_t expert_stride, std::int64_t b, std::int64_t e, std::int64_t offset, bool down) {
            if (b >= e) return;
            if constexpr (std::is_same_v<W, float>) {
                kernels::cpu::weighted_sum(Arch{}, coeffs, base, expert_stride, b, e, merged + offset);
            } else {
#if SMOE_PACKED_AVX2
                if constexpr (kernels::cpu::kPackedAvx2<Arch> || kernels::cpu::kPackedAvx512<Arch>) {
                    std::int64_t const K = down ? hidden_stride() : cfg_.hidden_size;
                    float const* const s0 = Weights::has_scales ? reinterpret_cast<float const*>(rec0 + (down ? sd_off_ : su_off_)) : nullptr;
                    std::int64_t const s_stride = static_cast<std::int64_t>(record_bytes_ / sizeof(float));
                    return kernels::cpu::weighted_sum_widened(Arch{}, coeffs, b, e, merged + offset, [&](std::int64_t x, std::int64_t i, __m256& lo, __m256& hi) {
                        W const* const src = base + x * expert_stride;
                        std::int64_t const p = i / (K * kP), k = i % (K * kP) / kP;
                        if constexpr (std::is_same_v<W, bf16>)
                            if (dot_ != Bf16Dot::off) return kernels::cpu::load_kpair_row_avx2(src + p * panel_elems(K) + k / 2 * 2 * kP, k, lo, hi);
                        kernels::cpu::detail::load_panel_avx2(src + i, lo, hi);
                        if (s0) {
                            float const* const sc = s0 + x * s_stride + p * kP;
                            lo = _mm256_mul_ps(lo, _mm256_loadu_ps(sc));
                            hi = _mm256_mul_ps(hi, _mm256_loadu_ps(sc + 8));
                        }
                    });
                }
#endif
                for (std::int64_t i = b; i < e; ++i) {
                    float acc = 0.0f;
                    for (std::size_t x = 0; x < coeffs.size(); ++x) acc = std::fma(coeffs[x], widened(std::int64_t(x), i, down), acc);
                    merged[offset + i - b] = acc;
                }
            }
        };

        std::int64_t const stride = static_cast<std::int64_t>(record_bytes_ / sizeof(W));
        part(reinterpret_cast<W const*>(rec0), stride, begin, std::min(end, split), 0, false);
        part(reinterpret_cast<W const*>(rec0 + dn_off_), stride, std::max(begin, split) - split, end - split, std::max(begin, split) - begin, true);
    }

private:
    static constexpr std::int64_t kP = kernels::cpu::kPanelCols;
    double matrices() const { return cfg_.activation.gated() ? 3.0 : 2.0; }

    // Element i of expert e's gate/up (or down) matrix in the fp32 panel layout, as its exact fp32 value.
    float widened(std::int64_t e, std::int64_t i, bool down) const {
        std::int64_t const K = down ? hidden_stride() : cfg_.hidden_size, p = i / (K * kP), k = i % (K * kP) / kP, c = i % kP;
        std::byte const* const rec = store_->record(e);
        W const* base = reinterpret_cast<W const*>(down ? rec + dn_off_ : rec);
        W v{};
        if (dot_ != Bf16Dot::off)
            v = base[p * panel_elems(K) + ((k / 2) * kP + c) * 2 + k % 2];
        else
            v = base[p * K * kP + k * kP + kernels::cpu::kPanelSlotColumn<W>[c]];  // the slot permutation is its own inverse
        if constexpr (Weights::has_scales)
            return float(v) * reinterpret_cast<float const*>(rec + (down ? sd_off_ : su_off_))[p * kP + c];
        else
            return FormatTraits<W>::widen(v);
    }

    static float const* scales(std::byte const* rec, std::size_t off) {
        return Weights::has_scales ? reinterpret_cast<float const*>(rec + off) : nullptr;
    }

    static Bf16Dot resolve_bf16_dot(Bf16Dot asked) {
        bool const native = std::is_same_v<W, bf16> && kernels::cpu::cpu_has_avx512_bf16();
        switch (asked) {
            case Bf16Dot::automatic: return native ? Bf16Dot::on : Bf16Dot::off;
            case Bf16Dot::off: return Bf16Dot::off;
            default:
                if (!std::is_same_v<W, bf16>)
                    smoe::detail::fail("bf16_dot", to_string(asked), "automatic or off for weights other than bf16");
                if (asked == Bf16Dot::on && !native)
                    smoe::detail::fail("bf16_dot", "on", "a CPU with AVX512-BF16 (F, BW, VL); use automatic, off or emulated");
                return asked;
        }
    }
    kernels::cpu::Bf16DotKernel dot_kernel() const {
        return dot_ == Bf16Dot::on ? kernels::cpu::Bf16DotKernel::native : kernels::cpu::Bf16DotKernel::emulated;
    }
    // Elements of one panel over K: k-pair panels on the AVX512-BF16 path, 16 · K otherwise.
    std::int64_t panel_elems(std::int64_t K) const { return dot_ != Bf16Dot::off ? kernels::cpu::kpair_panel_elems(K) : K * kP; }
    template <class RowOf>
    void pack_one(W* dst, std::int64_t K, RowOf row_of) const {
        if constexpr (std::is_same_v<W, bf16>)
            if (dot_ != Bf16Dot::off) return kernels::cpu::pack_panel_kpairs(dst, K, row_of);
        kernels::cpu::pack_panel(dst, K, row_of);
    }

    // A record holds one expert: gate/up panels, down panels, then (int8) the gate/up and down scales,
    // each part 64-byte aligned; the same bytes in memory and in a packed file.
    void plan() {
        std::int64_t const d = cfg_.hidden_size, f = cfg_.intermediate_size;
        gu_panels_ = (f + upp_ - 1) / upp_;
        dn_panels_ = (d + kP - 1) / kP;
        gu_stride_ = panel_elems(d);
        dn_stride_ = panel_elems(gu_panels_ * upp_);
        auto const r64 = [](std::int64_t b) { return static_cast<std::size_t>((b + 63) / 64 * 64); };
        dn_off_ = r64(gu_panels_ * gu_stride_ * std::int64_t(sizeof(W)));
        su_off_ = dn_off_ + r64(dn_panels_ * dn_stride_ * std::int64_t(sizeof(W)));
        sd_off_ = su_off_ + (Weights::has_scales ? r64(gu_panels_ * kP * 4) : 0);
        record_bytes_ = sd_off_ + (Weights::has_scales ? r64(dn_panels_ * kP * 4) : 0);
    }

    void open_packed() {
        auto const& L = store::expect_layer(w_.packed, packed_layer_info(), cfg_.num_experts);
        for (std::int64_t e = 0; e < cfg_.num_experts; ++e) store::expect_record_bytes(w_.packed, L, e, record_bytes_);
        store_ = std::make_unique<store::ExpertStore>(cfg_.store, w_.packed);
    }

    // Panel p of gate/up: columns 0-7 are gate units 8p..8p+7, columns 8-15 the same up units; non-gated:
    // column c is up unit 16p + c.
    std::int64_t unit_of(std::int64_t p, int c) const { return upp_ == kHalf ? p * kHalf + c % kHalf : p * kP + c; }
    bool gate_column(int c) const { return upp_ == kHalf && c < kHalf; }
    void pack_expert(std::int64_t e, std::byte* rec) const {
        std::int64_t const d = cfg_.hidden_size, f = cfg_.intermediate_size, fs = gu_panels_ * upp_;
        std::fill(rec, rec + record_bytes_, std::byte{0});
        W* const gu = reinterpret_cast<W*>(rec);
        W* const dn = reinterpret_cast<W*>(rec + dn_off_);
        float* const su = reinterpret_cast<float*>(rec + su_off_);
        float* const sd = reinterpret_cast<float*>(rec + sd_off_);
        auto const W1 = cfg_.activation.gated() ? w_.w1[e] : MatrixView<W const>{};  // non-gated: no W1 (null)
        auto const W3 = w_.w3[e], W2 = w_.w2[e];
        for (std::int64_t p = 0; p < gu_panels_; ++p) {
            pack_one(gu + p * gu_stride_, d, [&](int c) -> W const* {
                std::int64_t const unit = unit_of(p, c);
                if (unit >= f) return nullptr;
                return gate_column(c) ? W1.row(unit) : W3.row(unit);
            });
            if constexpr (Weights::has_scales)
                for (int c = 0; c < kP; ++c) {
                    std::int64_t const unit = unit_of(p, c);
                    su[p * kP + c] = unit >= f ? 0.0f : gate_column(c) ? w_.s1(e, unit) : w_.s3(e, unit);
                }
        }
        // The down panels' K is f rounded up to 8 (h's padded columns): zero rows pad each W2 row.
        std::vector<W> rows(fs == f ? 0 : static_cast<std::size_t>(kP * fs), W{});
        for (std::int64_t p = 0; p < dn_panels_; ++p) {
            // W2 rows are f long; copy them into fs-long rows first when f is not a multiple of 8.
            W* const dst = dn + p * dn_stride_;
            if (fs == f) {
                pack_one(dst, fs, [&](int c) -> W const* {
                    std::int64_t const o = p * kP + c;
                    return o < d ? W2.row(o) : nullptr;
                });
            } else {
                for (int c = 0; c < kP && p * kP + c < d; ++c)
                    std::copy(W2.row(p * kP + c), W2.row(p * kP + c) + f, rows.begin() + c * fs);
                pack_one(dst, fs, [&](int c) -> W const* {
                    return p * kP + c < d ? rows.data() + c * fs : nullptr;
                });
            }
            if constexpr (Weights::has_scales)
                for (int c = 0; c < kP; ++c) {
                    std::int64_t const o = p * kP + c;
                    sd[p * kP + c] = o < d ? w_.s2(e, o) : 0.0f;
                }
        }
    }

    Config cfg_;
    Weights w_;
    std::int64_t upp_;            // h units per gate/up panel (detail::units_per_panel)
    Bf16Dot dot_ = Bf16Dot::off;  // resolved: off, on or emulated
    std::int64_t gu_panels_ = 0, dn_panels_ = 0, gu_stride_ = 0, dn_stride_ = 0;
    std::size_t dn_off_ = 0, su_off_ = 0, sd_off_ = 0, record_bytes_ = 0;  // within a record
    std::unique_ptr<store::ExpertStore> store_;
    detail::PackedBiases bias_;
};

}  // namespace smoe::inline v0::expert
