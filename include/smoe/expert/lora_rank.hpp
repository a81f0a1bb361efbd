#pragma once
// smoe::expert::LoraRank<W>: SMoRA's rank-1 experts (experts.md §10). "Expert" i is rank i of one LoRA
// adapter:
//
//   f_i(x) = scale · (A[i, :] · x) · B[:, i],   scale = lora_alpha / k
//
// with A = lora_A.weight [r, in] and B = lora_B.weight [out, r] (column i has stride r). Routed by
// router::RankwiseLoRA (routing.md §8), whose weights w_i the layer multiplies in.
//
// Inside MoELayer: the layer keeps the hidden width (x and y are both [T, d]), so this policy requires
// in_features == out_features = d, and the layer computes the routed sum only; the base layer
// W0 x + b0 is the engine's. For in != out, or with the base layer, call
// smoe::expert::rankwise_lora_forward (smoe/expert/rankwise_lora_forward.hpp).
//
//   using Layer = smoe::MoELayer<smoe::router::RankwiseLoRA, smoe::expert::LoraRank<float>, smoe::balance::None>;
//   Layer layer({.router = cfg, .expert = cfg, .max_tokens = 64},
//               {.gate = lora_router /*[r, d]*/, .expert_bias = lora_biases, .experts = {lora_A, lora_B}});

#include <algorithm>
#include <cstdint>
#include <span>
#include <string>
#include <type_traits>

#include "smoe/core/error.hpp"
#include "smoe/core/view.hpp"
#include "smoe/core/workspace.hpp"
#include "smoe/kernels/cpu/gemm_nt.hpp"
#include "smoe/router/rankwise_lora.hpp"

namespace smoe::inline v0::expert {

template <class W>
struct LoraRankWeights {
    MatrixView<W const> lora_A;  // [r, in]
    MatrixView<W const> lora_B;  // [out, r]

    void validate(router::RankwiseLoRAConfig const& c) const {
        smoe::detail::check_view(lora_A, "lora_A.weight", c.rank, c.in_features);
        smoe::detail::check_view(lora_B, "lora_B.weight", c.out_features, c.rank);
    }
};

namespace detail {

// slot_out[m, :] += or = (scale · row_w[m] · (A[e] · x_m)) · B[:, e] for the M rows of one rank:
// the k-of-r sparse read (one row of A, one column of B).
template <class Arch>
void lora_rank_rows(Arch arch, MatrixView<float const> A, MatrixView<float const> B, std::int64_t e, float scale,
                    MatrixView<float const> rows_in, std::span<float const> row_w, std::span<float> proj,
                    MatrixView<float> out, bool accumulate) {
    std::int64_t const M = rows_in.rows, n_out = B.rows;
    MatrixView<float> const p(proj.data(), M, 1);
    kernels::cpu::gemm_nt(arch, rows_in, A.block(e, 1), p, row_w);  // p[m] = row_w[m] · (A[e] · x_m)
    for (std::int64_t m = 0; m < M; ++m) {
        float const a = scale * p(m, 0);
        float* const y = out.row(m);
        float const* b = B.data + e;
        if (accumulate)
            for (std::int64_t o = 0; o < n_out; ++o) y[o] += a * b[o * B.ld];
        else
            for (std::int64_t o = 0; o < n_out; ++o) y[o] = a * b[o * B.ld];
    }
}

}  // namespace detail

template <class W = float>
class LoraRank {
    static_assert(std::is_same_v<W, float>, "smoe::expert::LoraRank<W>: this version computes fp32 weights only (W = float)");

public:
    using Config = router::RankwiseLoRAConfig;
    using Weights = LoraRankWeights<W>;
    static constexpr bool is_compute_free = false;

    LoraRank(Config const& cfg, Weights const& w) : cfg_(cfg), w_(w) {
        cfg_.validate();
        if (cfg_.out_features != cfg_.in_features)
            smoe::detail::fail("out_features", cfg_.out_features,
                               "out_features == in_features (" + std::to_string(cfg_.in_features) +
                                   ") inside MoELayer, which keeps the hidden width; use "
                                   "smoe::expert::rankwise_lora_forward for in != out");
        w_.validate(cfg_);
    }

    Config const& config() const { return cfg_; }
    Weights const& weights() const { return w_; }
    std::int64_t num_experts() const { return cfg_.rank; }
    std::int64_t hidden_size() const { return cfg_.in_features; }
    double flops_per_row() const { return 2.0 * double(cfg_.in_features + cfg_.out_features); }
    double weight_bytes(std::int64_t /*e*/) const { return double(cfg_.in_features + cfg_.out_features) * sizeof(W); }

    std::size_t workspace_size(std::int64_t max_rows) const {
        WorkspaceSize size;
        size.take<float>(static_cast<std::size_t>(std::max<std::int64_t>(max_rows, 0)));
        return size.bytes();
    }

    // slot_out[m] = row_w[m] · scale · (A[e] · x_m) · B[:, e] for the M rows of rank e.
    template <class Arch>
    void run(Arch arch, std::int64_t e, MatrixView<float const> rows_in, std::span<float const> row_w,
             MatrixView<float> slot_out, Workspace& ws) const {
        std::int64_t const M = rows_in.rows;
        if (M == 0) return;
        std::span<float> const proj = ws.take<float>(static_cast<std::size_t>(M));
        detail::lora_rank_rows(arch, w_.lora_A, w_.lora_B, e, cfg_.scale(), rows_in, row_w, proj, slot_out, false);
    }

private:
    Config cfg_;
    Weights w_;
};

}  // namespace smoe::inline v0::expert
