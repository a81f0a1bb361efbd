#pragma once
// smoe::expert::Shared<Inner, Gate>: routed experts of type Inner plus one always-on shared expert
// (experts.md §6). MoELayer adds the shared output after the routed sum, which keeps rule 2's order:
//
//   y_t = Σ_j w_tj · f_{e_tj}(x_t)  +  g(x_t) · f^sh(x_t)
//
//   shared_gate::None     g = 1                   (DeepSeek-V2/V3, Megatron's default)
//   shared_gate::Sigmoid  g = σ(w_g · x), w_g [1, d], no bias (Qwen2-MoE `shared_expert_gate`)
//
// n shared experts of width f are one shared expert of width n·f with concatenated W1/W3 rows and W2
// columns, which is what Hugging Face's DeepSeek builds, so the shared part is one Inner expert
// (num_experts = 1) with its own intermediate size. The routing weight scaling
// (routed_scaling_factor) never reaches it: the router scales the routed weights only.
//
// Config::shared_scale multiplies g: Cohere2-MoE's `average` combine, y = (routed + shared) / 2
// (families.md §2.6), is routed_scaling_factor 0.5 in the router and shared_scale 0.5 here, both exact
// in binary floating point.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <span>
#include <string>
#include <type_traits>

#include "smoe/core/error.hpp"
#include "smoe/core/scratch_slots.hpp"
#include "smoe/core/thread_pool.hpp"
#include "smoe/core/view.hpp"
#include "smoe/core/workspace.hpp"
#include "smoe/kernels/cpu/gemm_nt.hpp"

namespace smoe::inline v0::expert {

namespace shared_gate {
struct None {};
struct Sigmoid {};
}  // namespace shared_gate

template <class Inner, class Gate = shared_gate::None>
class Shared {
    static_assert(std::is_same_v<Gate, shared_gate::None> || std::is_same_v<Gate, shared_gate::Sigmoid>,
                  "smoe::expert::Shared<Inner, Gate>: Gate is shared_gate::None or shared_gate::Sigmoid");

public:
    using inner_type = Inner;
    using gate_type = Gate;
    static constexpr bool is_compute_free = false;
    static constexpr bool gated = std::is_same_v<Gate, shared_gate::Sigmoid>;

    struct Config {
        typename Inner::Config routed{};
        typename Inner::Config shared{};  // num_experts = 1; intermediate size n_shared · f for n experts
        float shared_scale = 1.0f;        // multiplies g (finite)
    };
    struct Weights {
        typename Inner::Weights routed{};
        typename Inner::Weights shared{};
        MatrixView<float const> gate{};  // [1, d] with shared_gate::Sigmoid; empty with None
    };

    // Rows the shared expert takes per pass: bounds its scratch whatever the batch.
    static constexpr std::int64_t kRowBlock = 64;

    Shared(Config const& cfg, Weights const& w) : cfg_(cfg), routed_(cfg.routed, w.routed), shared_(cfg.shared, w.shared), gate_(w.gate) {
        if (!std::isfinite(cfg_.shared_scale)) smoe::detail::fail("shared_scale", cfg_.shared_scale, "a finite number");
        if constexpr (requires { cfg.shared.weight_on_input; })
            if (cfg.shared.weight_on_input)
                smoe::detail::fail("shared.weight_on_input", "true", "false (the shared expert is not routed: it has no routing weight)");
        if (shared_.num_experts() != 1)
            smoe::detail::fail("shared.num_experts", shared_.num_experts(),
                               "1 (n shared experts of width f are given as one of width n*f)");
        if (shared_.hidden_size() != routed_.hidden_size())
            smoe::detail::fail("shared.hidden_size", shared_.hidden_size(),
                               "the routed experts' hidden_size (" + std::to_string(routed_.hidden_size()) + ")");
        if constexpr (gated) {
            smoe::detail::check_view(gate_, "shared_expert_gate", 1, routed_.hidden_size());
        } else if (gate_.data != nullptr) {
            smoe::detail::fail("shared_expert_gate", "a [" + std::to_string(gate_.rows) + ", " + std::to_string(gate_.cols) + "] view",
                               "no gate weight with shared_gate::None (use shared_gate::Sigmoid)");
        }
    }

    Config const& config() const { return cfg_; }
    Inner const& routed() const { return routed_; }
    Inner const& shared() const { return shared_; }
    std::int64_t num_experts() const { return routed_.num_experts(); }
    std::int64_t hidden_size() const { return routed_.hidden_size(); }

    std::size_t workspace_size(std::int64_t max_rows) const {
        WorkspaceSize size;
        carve(size, max_rows);
        return std::max(routed_.workspace_size(max_rows), size.bytes());
    }

    template <class Arch>
    void run(Arch arch, std::int64_t e, MatrixView<float const> rows_in, std::span<float const> row_w, MatrixView<float> slot_out,
             Workspace& ws) const {
        routed_.run(arch, e, rows_in, row_w, slot_out, ws);
    }

    // The routed experts' two phases, when Inner has them (expert::SwiGLU): MoELayer then spreads
    // (expert, panel range) items over its thread pool.
    std::int64_t gate_up_panels() const
        requires requires(Inner const& i) { i.gate_up_panels(); }
    {
        return routed_.gate_up_panels();
    }
    std::int64_t down_panels() const
        requires requires(Inner const& i) { i.down_panels(); }
    {
        return routed_.down_panels();
    }
    std::int64_t hidden_stride() const
        requires requires(Inner const& i) { i.hidden_stride(); }
    {
        return routed_.hidden_stride();
    }
    template <class Arch>
    void run_gate_up(Arch arch, std::int64_t e, MatrixView<float const> x, MatrixView<float> h, std::int64_t p0, std::int64_t p1,
                     std::span<float const> row_w = {}) const
        requires requires(Inner const& i) { i.run_gate_up(arch, e, x, h, p0, p1, row_w); }
    {
        routed_.run_gate_up(arch, e, x, h, p0, p1, row_w);
    }
    template <class Arch>
    void run_down(Arch arch, std::int64_t e, MatrixView<float const> h, std::span<float const> row_w, MatrixView<float> out,
                  std::int64_t p0, std::int64_t p1) const
        requires requires(Inner const& i) { i.run_down(arch, e, h, row_w, out, p0, p1); }
    {
        routed_.run_down(arch, e, h, row_w, out, p0, p1);
    }
    // Kernel scratch per phase call (QuantSwiGLU: its bf16 dot path), for the routed experts' phases.
    std::size_t phase_scratch_bytes() const
        requires requires(Inner const& i) { i.phase_scratch_bytes(); }
    {
        return routed_.phase_scratch_bytes();
    }
    template <class Arch>
    void run_gate_up(Arch arch, std::int64_t e, MatrixView<float const> x, MatrixView<float> h, std::int64_t p0, std::int64_t p1,
                     std::span<float const> row_w, std::span<std::byte> scratch) const
        requires requires(Inner const& i) { i.phase_scratch_bytes(); }
    {
        routed_.run_gate_up(arch, e, x, h, p0, p1, row_w, scratch);
    }
    template <class Arch>
    void run_down(Arch arch, std::int64_t e, MatrixView<float const> h, std::span<float const> row_w, MatrixView<float> out,
                  std::int64_t p0, std::int64_t p1, std::span<std::byte> scratch) const
        requires requires(Inner const& i) { i.phase_scratch_bytes(); }
    {
        routed_.run_down(arch, e, h, row_w, out, p0, p1, scratch);
    }
    // Bytes of the weights the experts hold (their packed copies where they pack).
    // The routed experts' store (store/expert_store.hpp); the shared expert is always resident.
    decltype(auto) store() const
        requires requires(Inner const& i) { i.store(); }
    {
        return routed_.store();
    }

    std::size_t packed_bytes() const
        requires requires(Inner const& i) { i.packed_bytes(); }
    {
        return routed_.packed_bytes() + shared_.packed_bytes();
    }

    // y[t] += g(x_t) · f^sh(x_t) for every token, in blocks of kRowBlock rows. The workspace is the
    // one the layer sized with workspace_size(rows) for rows >= x.rows. With a phased Inner, each
    // block's panels are spread over `pool`; the split never changes a bit (each output is one
    // fixed-order chain), so the result is the same for any pool.
    template <class Arch>
    void run_shared(Arch arch, MatrixView<float const> x, MatrixView<float> y, Workspace& ws, PoolRef const& pool = {}) const {
        std::int64_t const T = x.rows, d = hidden_size();
        if (T == 0) return;
        Scratch s = carve(ws, T);
        for (std::int64_t r0 = 0; r0 < T; r0 += kRowBlock) {
            std::int64_t const mb = std::min(kRowBlock, T - r0);
            MatrixView<float const> const xb = x.block(r0, mb);
            std::span<float> const g = s.gate.first(static_cast<std::size_t>(mb));
            if constexpr (gated) {
                kernels::cpu::gemm_nt(arch, xb, gate_, MatrixView<float>(g.data(), mb, 1));
                for (float& v : g) v = cfg_.shared_scale / (1.0f + std::exp(-v));
            } else {
                std::fill(g.begin(), g.end(), cfg_.shared_scale);
            }
            MatrixView<float> const out(s.out.data(), mb, d);
            if constexpr (kPhased) {
                MatrixView<float> const h(s.hidden.data(), mb, shared_.hidden_stride());
                auto const gu = shared_.gate_up_panels(), dn = shared_.down_panels();
                std::int64_t const parts = pool.num_threads() > 1 ? 2 * pool.num_threads() : 1;
                pool.parallel_for(std::min(parts, gu), [&](std::int64_t i) {
                    std::int64_t const p0 = gu * i / std::min(parts, gu), p1 = gu * (i + 1) / std::min(parts, gu);
                    if constexpr (kScratch)
                        s.kernel.with([&](std::span<std::byte> sc) { shared_.run_gate_up(arch, 0, xb, h, p0, p1, {}, sc); });
                    else
                        shared_.run_gate_up(arch, 0, xb, h, p0, p1);
                });
                pool.parallel_for(std::min(parts, dn), [&](std::int64_t i) {
                    std::int64_t const p0 = dn * i / std::min(parts, dn), p1 = dn * (i + 1) / std::min(parts, dn);
                    MatrixView<float const> const hc(h);
                    if constexpr (kScratch)
                        s.kernel.with([&](std::span<std::byte> sc) { shared_.run_down(arch, 0, hc, std::span<float const>(g), out, p0, p1, sc); });
                    else
                        shared_.run_down(arch, 0, hc, std::span<float const>(g), out, p0, p1);
                });
            } else {
                Workspace inner = s.inner;
                shared_.run(arch, 0, xb, std::span<float const>(g), out, inner);
            }
            for (std::int64_t i = 0; i < mb; ++i) {
                float* yt = y.row(r0 + i);
                float const* o = out.row(i);
                for (std::int64_t c = 0; c < d; ++c) yt[c] += o[c];
            }
        }
    }

private:
    static constexpr bool kPhased = requires(Inner const& i) {
        i.gate_up_panels();
        i.down_panels();
        i.hidden_stride();
    };

    static constexpr bool kScratch = requires(Inner const& i) { i.phase_scratch_bytes(); };

    struct Scratch {
        std::span<float> gate, out, hidden;
        ScratchSlots kernel;  // the shared expert's phase calls (kScratch)
        Workspace inner;
    };
    template <class Alloc>
    Scratch carve(Alloc& a, std::int64_t max_rows) const {
        auto const rows = std::min(max_rows, kRowBlock);
        Scratch s;
        s.gate = a.template take<float>(static_cast<std::size_t>(rows));
        s.out = a.template take<float>(static_cast<std::size_t>(rows * hidden_size()));
        if constexpr (kPhased) s.hidden = a.template take<float>(static_cast<std::size_t>(rows * shared_.hidden_stride()));
        if constexpr (kScratch) s.kernel = ScratchSlots(a, shared_.phase_scratch_bytes());
        s.inner = a.take_bytes(shared_.workspace_size(rows));
        return s;
    }

    Config cfg_;
    Inner routed_;
    Inner shared_;
    MatrixView<float const> gate_;
};

}  // namespace smoe::inline v0::expert
