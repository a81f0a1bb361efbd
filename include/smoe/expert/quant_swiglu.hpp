#pragma once
// smoe::expert::QuantSwiGLU: the SwiGLU expert (experts.md §3) with each expert's matrices in a format
// of its own (formats.md §4): f32, bf16, int8 per channel, int4 group-wise (symmetric or with zero
// points, act order), FP8 e4m3 with block/channel/tensor factors, MXFP4, ternary (research.md §7). A
// layer of one format is the special case of every expert agreeing; the shared expert (expert::Shared)
// is another QuantSwiGLU and may have its own format.
//
//   auto w = smoe::expert::QuantSwiGLUWeights::of(experts);   // or a loader's per-expert callback
//   smoe::MoELayer<smoe::router::TopK, smoe::expert::QuantSwiGLU, smoe::balance::None> layer(cfg, {gate, {}, w});
//
// Construction resolves every expert's formats first (Weights::gate_up, Weights::down), sizes the
// packed store once, then asks Weights::load for one expert at a time and packs it
// (kernels/cpu/quant_panel.hpp): peak memory is the packed weights plus one expert in canonical form
// (quant/matrix.hpp, one byte per code). After construction only the packed copy is read.
//
// Numbers: the exact path of formats.md §6.1. Every weight is decoded to W_deq in registers and each
// output is one fp32 FMA chain in k order (kernels/cpu/gemm_quant.hpp), with SwiGLU's epilogues
// (swiglu_store.hpp): an expert gives the bits of expert::SwiGLU<float> on its dequantised weights
// (act order: the chain runs in group order), so the same expert in a mixed and in a single-format
// layer gives the same bits (§4 rule 4), on every ISA and thread count. Per call each expert's kernel
// is chosen once by its format (one switch), never per row or element.
//
// int8_dot (SwiGLUConfig, formats.md §6.2): int4, int8-channel, ternary and MXFP4 experts then take the
// int8 dot path (kernels/cpu/int8_dot.hpp: activations quantised per block of 32, integer dot products;
// MXFP4 as u = 2 · E2M1 + 12 on int4's arithmetic) and are packed for it; the other formats keep the exact
// path. uses_int8_dot(e) says which expert takes it.
// bf16_dot on (AVX512-BF16, an error on a CPU without it) or emulated: FP8 and MXFP4 experts take the
// bf16 dot path (kernels/cpu/bf16_dot_quant.hpp: activations rounded to bf16, vdpbf16ps, the factor on
// each block's fp32 partial sum); with both switches MXFP4 keeps the bf16 path, whose bound is the tighter
// (2e-3 against 5e-2 of the exact result); `automatic` and `off` keep the exact path here (formats.md
// §6.1 is the default; §6.2's paths are opt-in). uses_bf16_dot(e) says which experts take it.

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "smoe/core/error.hpp"
#include "smoe/core/view.hpp"
#include "smoe/core/workspace.hpp"
#include "smoe/io/file_error.hpp"
#include "smoe/expert/swiglu_config.hpp"
#include "smoe/expert/swiglu_store.hpp"
#include "smoe/kernels/cpu/bf16_dot_quant.hpp"
#include "smoe/kernels/cpu/gemm_quant.hpp"
#include "smoe/kernels/cpu/int8_dot.hpp"
#include "smoe/kernels/cpu/pack.hpp"
#include "smoe/kernels/cpu/quant_panel.hpp"
#include "smoe/quant/matrix.hpp"
#include "smoe/quant/quantize.hpp"
#include "smoe/store/expert_store.hpp"

namespace smoe::inline v0::expert {

// One expert in canonical form: gate W1 and up W3 [f, d] (one format for both), down W2 [d, f].
struct QuantExpertWeights {
    quant::Matrix gate, up, down;
};

struct QuantSwiGLUWeights {
    std::vector<quant::Format> gate_up;  // per expert: the format of W1 and W3
    std::vector<quant::Format> down;     // per expert: the format of W2
    // Expert e's matrices, called once per expert in order during construction (never after).
    std::function<QuantExpertWeights(std::int64_t)> load;
    // Instead of formats and load: a layer of a packed expert file (store/packed_file.hpp), whose
    // table gives every expert's formats; nothing is packed.
    store::PackedSource packed{};
    GluBiases bias{};  // optional fp32 biases (GPT-OSS), read during construction only

    // Experts already in canonical form; `experts` must outlive the expert's construction only.
    static QuantSwiGLUWeights of(std::span<QuantExpertWeights const> experts) {
        QuantSwiGLUWeights w;
        for (auto const& x : experts) {
            w.gate_up.push_back(x.gate.format);
            w.down.push_back(x.down.format);
        }
        w.load = [experts](std::int64_t e) { return experts[static_cast<std::size_t>(e)]; };
        return w;
    }
    // Dense fp32 W1, W3 [E, f, d] and W2 [E, d, f] quantised at load (quant/quantize.hpp), one expert at
    // a time, to each expert's formats (the engine's expert -> format map, formats.md §4 2(d)).
    static QuantSwiGLUWeights quantized(float const* w1, float const* w3, float const* w2, SwiGLUConfig const& c,
                                        std::vector<quant::Format> gate_up, std::vector<quant::Format> down) {
        QuantSwiGLUWeights w;
        w.gate_up = std::move(gate_up);
        w.down = std::move(down);
        std::int64_t const f = c.intermediate_size, d = c.hidden_size;
        w.load = [w1, w3, w2, f, d, gu = w.gate_up, dn = w.down](std::int64_t e) {
            auto const i = static_cast<std::size_t>(e);
            return QuantExpertWeights{quant::quantize(MatrixView<float const>(w1 + e * f * d, f, d), gu[i]),
                                      quant::quantize(MatrixView<float const>(w3 + e * f * d, f, d), gu[i]),
                                      quant::quantize(MatrixView<float const>(w2 + e * d * f, d, f), dn[i])};
        };
        return w;
    }
};

class QuantSwiGLU {
public:
    using Config = SwiGLUConfig;
    using Weights = QuantSwiGLUWeights;
    static constexpr bool is_compute_free = false;
    static constexpr std::int64_t kRowBlock = 64;  // rows per pass of run(), as SwiGLU's

    QuantSwiGLU(Config const& cfg, Weights const& w) : cfg_(cfg) {
        cfg_.validate();
        if (!cfg_.activation.gated())
            smoe::detail::fail("activation.relu2", "true", "gated experts for expert::QuantSwiGLU (non-gated relu² experts: expert::SwiGLU<W>)");
        if (cfg_.bf16_dot == Bf16Dot::on && !kernels::cpu::cpu_has_avx512_bf16())
            smoe::detail::fail("bf16_dot", "on", "a CPU with AVX512-BF16 (F, BW, VL); use off, automatic (both: the exact path) or emulated");
        bf16_kernel_ = cfg_.bf16_dot == Bf16Dot::on ? kernels::cpu::Bf16DotKernel::native : kernels::cpu::Bf16DotKernel::emulated;
        dot_kernel_ = resolve_int8_dot(cfg_.int8_dot);
        std::int64_t const E = cfg_.num_experts;
        auto const En = static_cast<std::size_t>(E);
        std::int64_t const d = cfg_.hidden_size, f = cfg_.intermediate_size;
        gu_panels_ = (f + detail::kHalf - 1) / detail::kHalf;
        dn_panels_ = (d + detail::kP - 1) / detail::kP;
        w.bias.validate(cfg_);
        bias_ = detail::PackedBiases(w.bias, E, f, d, gu_panels_, dn_panels_);
        if (w.packed) {
            fmt_gu_.resize(En);
            fmt_dn_.resize(En);
            auto const& L = store::expect_layer(w.packed, packed_layer_info(), E);
            for (std::int64_t e = 0; e < E; ++e) {
                auto const& r = w.packed.file->record(L, store::file_expert(w.packed, L, e));
                plan_expert(e, r.gate_up, r.down);
                store::expect_record_bytes(w.packed, L, e, record_bytes(e));
                if (r.gate_up.act_order || r.down.act_order) {
                    // The column order sits after the panels (pack): read from the mapping, checked as a
                    // file's g_idx is (the record's checksum is checked on its first use).
                    auto const rec = w.packed.file->mapped(r);
                    std::string const at = w.packed.file->name() + ": " + w.packed.file->where(L, store::file_expert(w.packed, L, e));
                    auto const order = [&](quant::Format const& fmt, std::size_t off, std::int64_t cols, char const* part) {
                        quant::Matrix m{.format = fmt, .cols = cols};
                        m.gidx.resize(static_cast<std::size_t>(cols));
                        std::memcpy(m.gidx.data(), rec.data() + off, m.gidx.size() * sizeof(std::int32_t));
                        quant::check_gidx(at + " " + part, fmt, cols, m.gidx);
                        return m;
                    };
                    auto const i = static_cast<std::size_t>(e);
                    std::size_t const off = panel_bytes(e);
                    std::int64_t const d = cfg_.hidden_size, f = cfg_.intermediate_size;
                    if (r.gate_up.act_order) {
                        quant::Matrix const m = order(r.gate_up, off, d, "gate_up");
                        gu_[i] = layout("expert " + std::to_string(e) + " gate_up", r.gate_up, d, &m);
                    }
                    if (r.down.act_order) {
                        quant::Matrix const m = order(r.down, off + (r.gate_up.act_order ? std::size_t(d) * 4 : 0), f, "down");
                        dn_[i] = layout("expert " + std::to_string(e) + " down", r.down, f, &m);
                    }
                }
            }
            store_ = std::make_unique<store::ExpertStore>(cfg_.store, w.packed);
            return;
        }
        if (cfg_.store.residency != store::Residency::resident)
            smoe::detail::fail("store.residency", store::to_string(cfg_.store.residency),
                               "resident, or weights.packed (a packed expert file: smoe-pack, store::pack_experts)");
        if (w.gate_up.size() != En || w.down.size() != En)
            smoe::detail::fail("weights.gate_up/down", std::to_string(w.gate_up.size()) + " and " + std::to_string(w.down.size()) + " formats",
                               "one per expert (" + std::to_string(E) + ")");
        if (!w.load) smoe::detail::fail("weights.load", "empty", "a function returning expert e's matrices");
        fmt_gu_ = w.gate_up;
        fmt_dn_ = w.down;
        std::vector<std::size_t> bytes(En);
        for (std::int64_t e = 0; e < E; ++e) {
            std::string const ex = "expert " + std::to_string(e);
            w.gate_up[static_cast<std::size_t>(e)].check(ex + " gate_up", f, d);
            w.down[static_cast<std::size_t>(e)].check(ex + " down", d, f);
            plan_expert(e, w.gate_up[static_cast<std::size_t>(e)], w.down[static_cast<std::size_t>(e)]);
            bytes[static_cast<std::size_t>(e)] = record_bytes(e);
        }
        store_ = std::make_unique<store::ExpertStore>(bytes, [&](std::int64_t e, std::byte* rec) {
            auto const i = static_cast<std::size_t>(e);
            pack(e, w.load(e), w.gate_up[i], w.down[i], reinterpret_cast<std::uint8_t*>(rec));
        });
    }

    Config const& config() const { return cfg_; }
    std::int64_t num_experts() const { return cfg_.num_experts; }
    std::int64_t hidden_size() const { return cfg_.hidden_size; }
    std::int64_t intermediate_size() const { return cfg_.intermediate_size; }
    // Whether expert e's matrices take the bf16 dot path (FP8, MXFP4 with bf16_dot on or emulated).
    bool uses_bf16_dot(std::int64_t e) const { return gu_[static_cast<std::size_t>(e)].bf16 || dn_[static_cast<std::size_t>(e)].bf16; }
    // Whether expert e's matrices take the int8 dot path (formats.md §6.2), and by which kernel.
    bool uses_int8_dot(std::int64_t e) const { return gu_[static_cast<std::size_t>(e)].dot || dn_[static_cast<std::size_t>(e)].dot; }
    kernels::cpu::Int8DotKernel int8_dot_kernel() const { return dot_kernel_; }
    // formats.md §4 rule 5: the path expert e takes: "exact", "int8 dot (avx512-vnni)" ("avx-vnni", "avx2",
    // "portable"...: to_string(Int8DotKernel)), "bf16 dot (vdpbf16ps)" ("emulated"); "gate/up ..., down ..."
    // when they differ.
    std::string dot_path(std::int64_t e) const {
        auto const path = [&](Packed const& P) -> std::string {
            if (P.dot) return std::string("int8 dot (") + kernels::cpu::to_string(dot_kernel_) + ")";
            if (P.bf16) return bf16_kernel_ == kernels::cpu::Bf16DotKernel::native ? "bf16 dot (vdpbf16ps)" : "bf16 dot (emulated)";
            return "exact";
        };
        std::string const a = path(gu_[static_cast<std::size_t>(e)]), b = path(dn_[static_cast<std::size_t>(e)]);
        return a == b ? a : "gate/up " + a + ", down " + b;
    }
    double flops_per_row() const { return 6.0 * double(cfg_.hidden_size) * double(cfg_.intermediate_size); }
    quant::Format const& gate_up_format(std::int64_t e) const { return fmt_gu_[static_cast<std::size_t>(e)]; }
    quant::Format const& down_format(std::int64_t e) const { return fmt_dn_[static_cast<std::size_t>(e)]; }
    // formats.md §4 rule 5: "int4-g128-sym", or "gate/up X, down Y" when they differ.
    std::string format_name(std::int64_t e) const {
        std::string const a = quant::name(gate_up_format(e), cfg_.hidden_size), b = quant::name(down_format(e), cfg_.intermediate_size);
        return a == b ? a : "gate/up " + a + ", down " + b;
    }
    // Bytes of expert e as packed: codes, factor tables and padding; what one call streams per expert.
    double weight_bytes(std::int64_t e) const {
        auto const i = static_cast<std::size_t>(e);
        return double(gu_panels_ * gu_[i].pstride() + dn_panels_ * dn_[i].pstride());
    }
    std::size_t packed_bytes() const { return store_->memory_bytes() + bias_.bytes(); }

    // Where the packed records live (store/expert_store.hpp); MoELayer holds experts through it.
    store::ExpertStore& store() const { return *store_; }
    // What a packed expert file records of this layer and of expert e (store::pack_experts).
    store::LayerInfo packed_layer_info() const {
        std::uint32_t flags = 0;
        if (cfg_.int8_dot != Int8Dot::off) flags |= store::kPackInt8Dot;
        if (cfg_.bf16_dot == Bf16Dot::on || cfg_.bf16_dot == Bf16Dot::emulated) flags |= store::kPackBf16DotQuant;
        return {store::ExpertKind::quant_swiglu, flags, cfg_.hidden_size, cfg_.intermediate_size};
    }
    store::RecordInfo packed_record_info(std::int64_t e) const { return {gate_up_format(e), down_format(e)}; }
    // Bytes of expert e's record: its gate/up panels, its down panels, then the column order of its
    // act-order matrices (gate_up's d, then down's f int32 g_idx: a packed file carries it).
    std::size_t record_bytes(std::int64_t e) const {
        auto const i = static_cast<std::size_t>(e);
        return panel_bytes(e) + 4 * static_cast<std::size_t>((fmt_gu_[i].act_order ? cfg_.hidden_size : 0) +
                                                            (fmt_dn_[i].act_order ? cfg_.intermediate_size : 0));
    }

    std::int64_t gate_up_panels() const { return gu_panels_; }
    std::int64_t down_panels() const { return dn_panels_; }
    std::int64_t hidden_stride() const { return gu_panels_ * detail::kHalf; }

    std::size_t workspace_size(std::int64_t max_rows) const { return detail::phased_workspace_size(*this, max_rows); }
    // Bytes of kernel scratch one run_gate_up / run_down call uses when given them (the bf16 dot path's
    // buffers, bf16_dot_quant.hpp, sized to the widest matrix that takes it); concurrent calls need one each.
    // 0 when no expert takes that path.
    std::size_t phase_scratch_bytes() const {
        std::int64_t K = 0;
        for (std::size_t i = 0; i < gu_.size(); ++i) {
            if (gu_[i].bf16) K = std::max(K, gu_[i].q.K);
            if (dn_[i].bf16) K = std::max(K, dn_[i].q.K);
        }
        return K > 0 ? kernels::cpu::bf16q_scratch_bytes(K) : 0;
    }

    template <class Arch>
    void run(Arch arch, std::int64_t e, MatrixView<float const> rows_in, std::span<float const> row_w, MatrixView<float> slot_out,
             Workspace& ws) const {
        detail::run_held(*store_, *this, arch, e, rows_in, row_w, slot_out, ws);
    }

    // scratch: phase_scratch_bytes() for this call alone (64-byte aligned), or empty (the kernels' buffers
    // then go on the stack: same bits, slower).
    template <class Arch>
    void run_gate_up(Arch arch, std::int64_t e, MatrixView<float const> x, MatrixView<float> h, std::int64_t p0, std::int64_t p1,
                     std::span<float const> row_w = {}, std::span<std::byte> scratch = {}) const {
        // h's padded columns (f not a multiple of 8) come out 0: their slots decode to +0 (and their biases are 0).
        auto epi = detail::gate_up_store(cfg_, bias_, e, h, nullptr, row_w);
        auto const i = static_cast<std::size_t>(e);
        gu_[i].run(arch, dot_kernel_, bf16_kernel_, x, reinterpret_cast<std::uint8_t const*>(store_->record(e)), p0, p1, epi, scratch);
    }

    template <class Arch>
    void run_down(Arch arch, std::int64_t e, MatrixView<float const> h, std::span<float const> row_w, MatrixView<float> out, std::int64_t p0,
                  std::int64_t p1, std::span<std::byte> scratch = {}) const {
        auto epi = detail::down_store(cfg_, bias_, e, out, nullptr, row_w);
        auto const i = static_cast<std::size_t>(e);
        dn_[i].run(arch, dot_kernel_, bf16_kernel_, h, reinterpret_cast<std::uint8_t const*>(store_->record(e)) + dn_off_[i], p0, p1, epi,
                   scratch);
    }

private:
    std::size_t panel_bytes(std::int64_t e) const {
        return dn_off_[static_cast<std::size_t>(e)] + static_cast<std::size_t>(dn_panels_ * dn_[static_cast<std::size_t>(e)].pstride());
    }

    // One matrix of one expert as packed: for the exact path (quant_panel.hpp), the int8 dot path or
    // the bf16 dot path (q then holds k-pair codes).
    struct Packed {
        bool dot = false, bf16 = false;
        kernels::cpu::QuantLayout q;
        kernels::cpu::DotLayout d;
        std::int64_t pstride() const { return dot ? d.pstride : q.pstride; }
        template <class Arch, class Epi>
        void run(Arch arch, kernels::cpu::Int8DotKernel k, kernels::cpu::Bf16DotKernel kb, MatrixView<float const> A,
                 std::uint8_t const* panels, std::int64_t p0, std::int64_t p1, Epi& epi, std::span<std::byte> scratch) const {
            if (dot)
                kernels::cpu::gemm_int8_dot(k, MatrixView<float const>(A.data, A.rows, d.K, A.ld), d, panels, p0, p1, epi);
            else if (bf16)
                kernels::cpu::gemm_bf16_dot_quant(kb, A, q, panels, p0, p1, epi, scratch);
            else
                kernels::cpu::gemm_quant(arch, A, q, panels, p0, p1, epi);
        }
    };

    Packed layout(std::string const& what, quant::Format const& f, std::int64_t K, quant::Matrix const* m) const {
        Packed P;
        P.bf16 = (cfg_.bf16_dot == Bf16Dot::on || cfg_.bf16_dot == Bf16Dot::emulated) && kernels::cpu::bf16_dot_format(f, K);
        P.dot = cfg_.int8_dot != Int8Dot::off && (f.kind == quant::Kind::int4 || f.kind == quant::Kind::int8_channel ||
                                                  f.kind == quant::Kind::ternary || (f.kind == quant::Kind::mxfp4 && !P.bf16));
        if (P.bf16) {
            P.q = kernels::cpu::bf16q_layout(f, K);
            return P;
        }
        if (!P.dot) {
            P.q = kernels::cpu::quant_layout(f, K, m);
            return P;
        }
        if ((f.kind == quant::Kind::int4 || f.kind == quant::Kind::ternary) && f.groups(K) > 1 &&
            f.group_cols(K) % kernels::cpu::kQ8Block != 0)
            smoe::detail::fail(what + " group", f.group_cols(K), "a multiple of 32 or one group per row with int8_dot on (formats.md §6.2)");
        P.d = kernels::cpu::dot_layout(f, K, m);
        return P;
    }


    // Expert e's layouts from its formats (act order: its column order comes with the matrices, in pack)
    // and where its down panels start in its record.
    void plan_expert(std::int64_t e, quant::Format const& fgu, quant::Format const& fdn) {
        std::string const ex = "expert " + std::to_string(e);
        auto const i = static_cast<std::size_t>(e);
        gu_.push_back(layout(ex + " gate_up", fgu, cfg_.hidden_size, nullptr));
        dn_.push_back(layout(ex + " down", fdn, cfg_.intermediate_size, nullptr));
        dn_off_.push_back(static_cast<std::size_t>(gu_panels_ * gu_.back().pstride()));
        if (i < fmt_gu_.size()) {
            fmt_gu_[i] = fgu;
            fmt_dn_[i] = fdn;
        }
    }

    void pack(std::int64_t e, QuantExpertWeights const& x, quant::Format const& fgu, quant::Format const& fdn, std::uint8_t* rec) {
        std::int64_t const d = cfg_.hidden_size, f = cfg_.intermediate_size;
        std::string const ex = "expert " + std::to_string(e);
        auto const expect = [&](quant::Matrix const& m, char const* part, std::int64_t R, std::int64_t C, quant::Format const& fmt) {
            if (m.rows != R || m.cols != C)
                smoe::detail::fail(ex + " " + part + " shape", "[" + std::to_string(m.rows) + ", " + std::to_string(m.cols) + "]",
                                   "[" + std::to_string(R) + ", " + std::to_string(C) + "]");
            if (!(m.format == fmt))
                smoe::detail::fail(ex + " " + part + " format", quant::name(m.format, C), quant::name(fmt, C) + " (resolved before packing)");
            m.validate(ex + " " + part);
        };
        if (!(x.gate.format == x.up.format))
            smoe::detail::fail(ex + " gate and up formats", quant::name(x.gate.format, d) + ", " + quant::name(x.up.format, d), "one format for both");
        expect(x.gate, "gate", f, d, fgu);
        expect(x.up, "up", f, d, fgu);
        expect(x.down, "down", d, f, fdn);
        if (fgu.act_order && x.gate.gidx != x.up.gidx)
            smoe::detail::fail(ex + " gate and up g_idx", "different column orders",
                               "the same g_idx (they share panels; GPTQ gives both the order of their common input)");
        auto const i = static_cast<std::size_t>(e);
        gu_[i] = layout(ex + " gate_up", fgu, d, &x.gate);
        dn_[i] = layout(ex + " down", fdn, f, &x.down);
        using kernels::cpu::QuantSlot;
        for (std::int64_t p = 0; p < gu_panels_; ++p) {
            QuantSlot slot[detail::kP];
            for (int c = 0; c < detail::kP; ++c) {
                std::int64_t const unit = p * detail::kHalf + c % detail::kHalf;
                if (unit < f) slot[c] = {c < detail::kHalf ? &x.gate : &x.up, unit};
            }
            pack_panel(rec + p * gu_[i].pstride(), gu_[i], slot);
        }
        for (std::int64_t p = 0; p < dn_panels_; ++p) {
            QuantSlot slot[detail::kP];
            for (int c = 0; c < detail::kP; ++c)
                if (p * detail::kP + c < d) slot[c] = {&x.down, p * detail::kP + c};
            pack_panel(rec + dn_off_[i] + p * dn_[i].pstride(), dn_[i], slot);
        }
        std::uint8_t* order = rec + panel_bytes(e);  // act order: the column order, for packed files
        for (auto const* m : {&x.gate, &x.down})
            if (m->format.act_order) {
                std::memcpy(order, m->gidx.data(), m->gidx.size() * sizeof(std::int32_t));
                order += m->gidx.size() * sizeof(std::int32_t);
            }
    }

    static kernels::cpu::Int8DotKernel resolve_int8_dot(Int8Dot asked) {
        using kernels::cpu::Int8DotKernel;
        bool const avx2 = kernels::cpu::cpu_has_avx2_fma(), avx_vnni = kernels::cpu::cpu_has_avx_vnni();
        bool const avx512_vnni = kernels::cpu::cpu_has_avx512_vnni();
        if (asked == Int8Dot::avx2 && !avx2) smoe::detail::fail("int8_dot", "avx2", "a CPU with AVX2 and FMA; use on or portable");
        if (asked == Int8Dot::avx_vnni && !avx_vnni && !(avx2 && avx512_vnni))
            smoe::detail::fail("int8_dot", "avx-vnni", "a CPU with AVX-VNNI (or AVX512-VNNI); use on or portable");
        switch (asked) {
            case Int8Dot::on:
                return avx512_vnni ? Int8DotKernel::native
                       : avx_vnni  ? Int8DotKernel::avx_vnni
                       : avx2      ? Int8DotKernel::avx2
                                   : Int8DotKernel::portable;
            case Int8Dot::avx2: return Int8DotKernel::avx2;
            case Int8Dot::avx_vnni: return avx_vnni ? Int8DotKernel::avx_vnni : Int8DotKernel::avx_vnni_evex;
            default: return Int8DotKernel::portable;
        }
    }

    static void pack_panel(std::uint8_t* dst, Packed const& P, kernels::cpu::QuantSlot const (&slot)[detail::kP]) {
        if (P.dot)
            kernels::cpu::pack_dot_panel(dst, P.d, slot);
        else if (P.bf16)
            kernels::cpu::pack_bf16q_panel(dst, P.q, slot);
        else
            kernels::cpu::pack_quant_panel(dst, P.q, slot);
    }

    Config cfg_;
    kernels::cpu::Int8DotKernel dot_kernel_ = kernels::cpu::Int8DotKernel::portable;
    kernels::cpu::Bf16DotKernel bf16_kernel_ = kernels::cpu::Bf16DotKernel::emulated;
    std::int64_t gu_panels_ = 0, dn_panels_ = 0;
    std::vector<Packed> gu_, dn_;
    std::vector<std::size_t> dn_off_;  // within expert e's record
    std::vector<quant::Format> fmt_gu_, fmt_dn_;
    std::unique_ptr<store::ExpertStore> store_;
    detail::PackedBiases bias_;
};

}  // namespace smoe::inline v0::expert
