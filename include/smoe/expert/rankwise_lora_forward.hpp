#pragma once
// smoe::expert::rankwise_lora_forward: the whole SMoRA layer for any in/out (experts.md §10,
// routing.md §8), where MoELayer needs in == out and leaves the base layer to the engine:
//
//   z = x · lora_router.weightᵀ                      [T, r], fp32 (gemm_nt)
//   (S, w) = RankwiseLoRA routing of z (+ lora_biases)
//   y = x · W0ᵀ + b0 + (lora_alpha / k) · Σ_(i∈S) w_i (A[i, :] · x) B[:, i]
//
// Only the k selected rows of A and columns of B are read per token. W0 and b0 are optional (empty
// views: no base term). The workspace holds z and the routing result, which the return value points
// into.
//
//   std::vector<std::byte> ws(smoe::expert::rankwise_lora_workspace_size(router, T));
//   smoe::RoutingResult r = smoe::expert::rankwise_lora_forward(arch, router, weights, x, y, ws);

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>

#include "smoe/core/error.hpp"
#include "smoe/core/routing.hpp"
#include "smoe/core/view.hpp"
#include "smoe/core/workspace.hpp"
#include "smoe/expert/lora_rank.hpp"
#include "smoe/kernels/cpu/finite_check.hpp"
#include "smoe/kernels/cpu/gemm_nt.hpp"
#include "smoe/route.hpp"
#include "smoe/router/rankwise_lora.hpp"

namespace smoe::inline v0::expert {

// The official module's tensors (routing.md §8).
struct RankwiseLoRAWeights {
    MatrixView<float const> lora_router;  // lora_router.weight [r, in]
    std::span<float const> lora_biases;   // [r] or empty (0)
    MatrixView<float const> lora_A;       // lora_A.weight [r, in]
    MatrixView<float const> lora_B;       // lora_B.weight [out, r]
    MatrixView<float const> base_weight;  // base_layer.weight [out, in], or empty: no base term
    std::span<float const> base_bias;     // base_layer.bias [out], or empty

    bool has_base() const { return base_weight.data != nullptr; }

    void validate(router::RankwiseLoRAConfig const& c) const {
        using smoe::detail::check_view;
        using smoe::detail::fail;
        check_view(lora_router, "lora_router.weight", c.rank, c.in_features);
        if (!lora_biases.empty() && static_cast<std::int64_t>(lora_biases.size()) != c.rank)
            fail("lora_biases", "length " + std::to_string(lora_biases.size()), "length rank = " + std::to_string(c.rank));
        check_view(lora_A, "lora_A.weight", c.rank, c.in_features);
        check_view(lora_B, "lora_B.weight", c.out_features, c.rank);
        if (has_base()) check_view(base_weight, "base_layer.weight", c.out_features, c.in_features);
        if (!base_bias.empty() && static_cast<std::int64_t>(base_bias.size()) != c.out_features)
            fail("base_layer.bias", "length " + std::to_string(base_bias.size()), "length out_features = " + std::to_string(c.out_features));
    }
};

namespace detail {
template <class Alloc>
std::span<float> carve_rankwise_lora(router::RankwiseLoRA const& router, Alloc& a, std::int64_t T) {
    return a.template take<float>(static_cast<std::size_t>(T * router.num_logits() + T));  // z, then one projection per token
}
}  // namespace detail

// Bytes of workspace one call of up to max_tokens tokens needs.
inline std::size_t rankwise_lora_workspace_size(router::RankwiseLoRA const& router, std::int64_t max_tokens) {
    WorkspaceSize size;
    detail::carve_rankwise_lora(router, size, max_tokens);
    size.take_bytes(routing_workspace_size(router, max_tokens));
    return required_bytes(size.bytes());
}

// x [T, in] -> y [T, out]. Returns the routing (rank ids and weights), pointing into `workspace`.
template <class Arch = xsimd::default_arch>
RoutingResult rankwise_lora_forward(Arch arch, router::RankwiseLoRA const& router, RankwiseLoRAWeights const& w,
                                    MatrixView<float const> x, MatrixView<float> y, std::span<std::byte> workspace) {
    auto const& cfg = router.config();
    w.validate(cfg);
    smoe::detail::check_view(x, "x", -1, cfg.in_features);
    std::int64_t const T = x.rows, r = cfg.rank, n_out = cfg.out_features;
    smoe::detail::check_view(y, "y", T, n_out);

    Workspace ws(workspace);
    std::span<float> const buf = detail::carve_rankwise_lora(router, ws, T);
    MatrixView<float> const z(buf.data(), T, r);
    std::span<float> const proj = buf.subspan(static_cast<std::size_t>(T * r));
    kernels::cpu::gemm_nt(arch, x, w.lora_router, z);
    std::span<std::byte> const route_ws = ws.take<std::byte>(routing_workspace_size(router, T));
    RoutingResult const routing = route<Arch>(router, MatrixView<float const>(z), w.lora_biases, route_ws);

    if (!w.has_base())
        for (std::int64_t t = 0; t < T; ++t) std::fill(y.row(t), y.row(t) + n_out, 0.0f);
    else
        kernels::cpu::gemm_nt(arch, x, w.base_weight, y);
    if (!w.base_bias.empty())
        for (std::int64_t t = 0; t < T; ++t)
            for (std::int64_t o = 0; o < n_out; ++o) y(t, o) += w.base_bias[o];

    float const scale = cfg.scale();
    for (std::int64_t t = 0; t < T; ++t)
        for (std::int64_t j = 0; j < routing.k; ++j) {  // slot order (experts.md §1 rule 2)
            std::int64_t const e = routing.expert_ids(t, j);
            std::span<float const> const wt(&routing.expert_weights(t, j), 1);
            detail::lora_rank_rows(arch, w.lora_A, w.lora_B, e, scale, x.block(t, 1), wt, proj.subspan(static_cast<std::size_t>(t), 1),
                                   y.block(t, 1), true);
        }
    return routing;
}

}  // namespace smoe::inline v0::expert
