#pragma once
// smoe::expert::SwiGLU<W>: f_e(x) = W2 (silu(W1 x) ⊙ W3 x) (experts.md §3), fp32 inside.
//
//   smoe::expert::SwiGLU<float> experts(cfg, smoe::expert::SwiGLUWeights<float>::dense(w1, w3, w2, cfg));

#include <algorithm>
#include <cstdint>
#include <span>
#include <type_traits>

#include "smoe/core/view.hpp"
#include "smoe/core/workspace.hpp"
#include "smoe/expert/swiglu_config.hpp"
#include "smoe/kernels/cpu/activation.hpp"
#include "smoe/kernels/cpu/gemm_nt.hpp"

namespace smoe::inline v0::expert {

template <class W = float>
class SwiGLU {
    static_assert(std::is_same_v<W, float>,
                  "smoe::expert::SwiGLU<W>: this version computes fp32 weights only (W = float); bf16 and int8 "
                  "weight formats are planned as storage traits");

public:
    using Config = SwiGLUConfig;
    using Weights = SwiGLUWeights<W>;
    static constexpr bool is_compute_free = false;

    // Rows per pass over an expert's weights: bounds the gate/up scratch to kRowBlock x f floats
    // whatever the batch, while 64 rows already reuse each weight tile enough to leave the memory-bound
    // regime.
    static constexpr std::int64_t kRowBlock = 64;

    SwiGLU(Config const& cfg, Weights const& w) : cfg_(cfg), w_(w) {
        cfg_.validate();
        w_.validate(cfg_);
    }

    Config const& config() const { return cfg_; }
    Weights const& weights() const { return w_; }
    std::int64_t num_experts() const { return cfg_.num_experts; }
    std::int64_t hidden_size() const { return cfg_.hidden_size; }
    std::int64_t intermediate_size() const { return cfg_.intermediate_size; }
    double flops_per_row() const { return 6.0 * double(cfg_.hidden_size) * double(cfg_.intermediate_size); }
    double weight_bytes(std::int64_t /*e*/) const {
        return 3.0 * double(cfg_.hidden_size) * double(cfg_.intermediate_size) * sizeof(W);
    }

    std::size_t workspace_size(std::int64_t max_rows) const {
        WorkspaceSize size;
        carve(size, max_rows);
        return size.bytes();
    }

    // slot_out[r] = row_w[r] · f_e(rows_in[r]) for the M rows of expert e.
    template <class Arch>
    void run(Arch arch, std::int64_t e, MatrixView<float const> rows_in, std::span<float const> row_w,
             MatrixView<float> slot_out, Workspace& ws) const {
        std::int64_t const M = rows_in.rows, f = cfg_.intermediate_size;
        if (M == 0) return;
        Scratch s = carve(ws, M);
        MatrixView<float const> const w1 = w_.w1[e], w3 = w_.w3[e], w2 = w_.w2[e];
        for (std::int64_t r0 = 0; r0 < M; r0 += kRowBlock) {
            std::int64_t const mb = std::min(kRowBlock, M - r0);
            MatrixView<float const> const x = rows_in.block(r0, mb);
            MatrixView<float> const g(s.g.data(), mb, f), u(s.u.data(), mb, f);
            kernels::cpu::gemm_nt(arch, x, w1, g);
            kernels::cpu::gemm_nt(arch, x, w3, u);
            kernels::cpu::silu_mul(arch, g.data, u.data, g.data, mb * f);
            kernels::cpu::gemm_nt(arch, MatrixView<float const>(g), w2, slot_out.block(r0, mb), row_w.subspan(r0, mb));
        }
    }

private:
    struct Scratch {
        std::span<float> g, u;
    };
    template <class Alloc>
    Scratch carve(Alloc& a, std::int64_t max_rows) const {
        auto const n = static_cast<std::size_t>(std::min(max_rows, kRowBlock) * cfg_.intermediate_size);
        return {a.template take<float>(n), a.template take<float>(n)};
    }

    Config cfg_;
    Weights w_;
};

}  // namespace smoe::inline v0::expert
