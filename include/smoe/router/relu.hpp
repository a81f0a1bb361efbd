#pragma once
// smoe::router::ReLU: ReMoE's fully differentiable routing with a variable number of experts
// (routing.md §6; Wang, Chen, Zhu, "ReMoE: Fully Differentiable Mixture-of-Experts with ReLU
// Routing", ICLR 2025; thu-ml/ReMoE ReLURouter).
//
//   w_e = max(x_e, 0), and the token selects e iff x_e > 0 (strictly: +0 and -0 are not selected)
//
// No normalisation, no scaling, no top-k at inference (training's adaptive L1 penalty only drives the
// logits towards the target sparsity 1 − k/E). A token gets 0 to E experts, so this is a variable-k
// router: max_slots() = E and route() returns K = the largest count in the batch (0 when no logit is
// positive), rows sorted by weight (ties to the lower id) and padded with -1 / 0. A row without a
// positive logit is empty and gets zero routed output; that is not an error.
//
// Example (routing.md §6): E = 4. Logits [1.5, −0.5, 0.0, 0.25] take [0, 3] with 1.5, 0.25;
// [−1, −2, −0.1, −3] take nothing; [0.5, 0.5, 2, −1] take [2, 0, 1] with 2, 0.5, 0.5 (0 before 1 by the
// tie rule). K = 3, so the first row is padded with one −1 and the second is all −1.
//
//   smoe::router::ReLU router({.num_experts = 4});
//   router.route(arch, logits /*[T, 4]*/, {}, out /*[T, >= 4]*/, workspace);

#include <algorithm>
#include <cstdint>
#include <span>
#include <string>

#include "smoe/core/error.hpp"
#include "smoe/core/limits.hpp"
#include "smoe/core/routing.hpp"
#include "smoe/core/workspace.hpp"
#include "smoe/kernels/cpu/finite_check.hpp"
#include "smoe/kernels/cpu/relu.hpp"
#include "smoe/kernels/cpu/variable_k.hpp"
#include "smoe/router/control.hpp"
#include "smoe/router/router_base.hpp"
#include "smoe/router/route_checks.hpp"

namespace smoe::inline v0::router {

struct ReLUConfig {
    std::int64_t num_experts = 0;  // 1 <= E <= limits::kMaxExperts (relu has no other inference key)

    // Throws smoe::invalid_argument naming the key, the value and the valid range.
    void validate() const {
        smoe::detail::require_in_range("num_experts", num_experts, 1, limits::kMaxExperts, "smoe::limits::kMaxExperts");
    }
};

class ReLU : public detail::RouterBase<ReLU, ReLUConfig> {
    friend RouterBase;  // workspace_size() calls carve()

public:
    using RouterBase::RouterBase;

    std::int64_t max_slots() const { return cfg_.num_experts; }

    // logits [T, E]; bias must be empty (relu has no selection bias); out [T, >= E]. Returns K = the
    // largest number of experts any token got (0 when nothing is selected). Throws on non-finite logits.
    template <class Arch>
    std::int64_t route(Arch arch, MatrixView<float const> logits, std::span<float const> bias, TokenMajorOut out,
                       Workspace& ws) const {
        std::int64_t const E = cfg_.num_experts;
        std::int64_t const T = checks::check_unbiased(arch, logits, bias, out, E, E, "num_experts", "relu");

        Scratch s = carve(ws, T);
        std::int64_t K = 0;
        for (std::int64_t t = 0; t < T; ++t) {
            std::int64_t const n = kernels::cpu::relu_route_row(arch, logits.row(t), E, s.keys.data(), out.expert_ids.row(t),
                                                                out.expert_weights.row(t));
            s.count[t] = static_cast<std::int32_t>(n);
            K = std::max(K, n);
        }
        kernels::cpu::pad_rows(out.expert_ids, out.expert_weights, s.count, K);
        return K;
    }

    // Under test-time control (research.md §8): w = b ⊙ relu(x + a) over the allowed experts, or
    // w = v ⊙ b for an override token (the table's formula: relu scores are no distribution, so v is
    // taken as given); selected iff w > 0. No bound on |A|.
    template <class Arch>
    std::int64_t route(Arch arch, MatrixView<float const> logits, std::span<float const> bias, TokenMajorOut out,
                       Workspace& ws, RouterControl const& control) const {
        if (control.empty()) return route(arch, logits, bias, out, ws);
        std::int64_t const E = cfg_.num_experts;
        std::int64_t const T = checks::check_unbiased(arch, logits, bias, out, E, E, "num_experts", "relu");
        control::validate(control, E, T, 0, "");

        Scratch s = carve(ws, T);
        control::RowScratch const r = control::carve_row(ws, E);
        std::int64_t K = 0;
        for (std::int64_t t = 0; t < T; ++t) {
            float const* v = control::override_row(control, t);
            float const* xo = v ? nullptr : control::offset_row(control, logits.row(t), r.x.data(), E, t);
            for (std::int64_t e = 0; e < E; ++e) {
                float const b = control.boost.empty() ? 1.0f : control.boost[static_cast<std::size_t>(e)];
                r.score[e] = !control::allowed(control, e) ? 0.0f : (v ? v[e] : std::max(xo[e], 0.0f)) * b;
            }
            std::int64_t const n = kernels::cpu::relu_route_row(arch, r.score.data(), E, s.keys.data(),
                                                                out.expert_ids.row(t), out.expert_weights.row(t));
            s.count[t] = static_cast<std::int32_t>(n);
            K = std::max(K, n);
        }
        kernels::cpu::pad_rows(out.expert_ids, out.expert_weights, s.count, K);
        return K;
    }

private:
    struct Scratch {
        std::span<std::uint64_t> keys;  // [E]
        std::span<std::int32_t> count;  // [T]
    };

    template <class Alloc>
    Scratch carve(Alloc& a, std::int64_t T) const {
        Scratch s;
        s.keys = a.template take<std::uint64_t>(static_cast<std::size_t>(cfg_.num_experts));
        s.count = a.template take<std::int32_t>(static_cast<std::size_t>(T));
        return s;
    }
};

}  // namespace smoe::inline v0::router
