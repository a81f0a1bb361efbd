#pragma once
// What each policy slot of MoELayer<Router, Expert, Balancer, Backend> must provide. MoELayer checks
// each with one static_assert whose sentence names the slot and the missing members, so a wrong type
// fails with one readable error (tests/compile_fail/ proves every message).

#include <concepts>
#include <cstddef>
#include <cstdint>
#include <span>

#include "smoe/detail/xsimd.hpp"

#include "smoe/balance/context.hpp"
#include "smoe/core/router_control.hpp"
#include "smoe/core/routing.hpp"
#include "smoe/core/token_ids.hpp"
#include "smoe/core/stats.hpp"
#include "smoe/core/view.hpp"
#include "smoe/core/workspace.hpp"

namespace smoe::inline v0 {

// SIMD kernels are templates on the xsimd Arch (the ISA is in the symbol, STYLE.md habit 3); the
// concepts check the policies with the Arch the layer's backend will use.

// A router turns logits [T, num_logits()] into token-major selections; MoELayer builds the CSR view.
// route() returns the K it used (<= max_slots()).
template <class R, class Arch = xsimd::default_arch>
concept RouterPolicy = requires(R const& r, Arch arch, MatrixView<float const> logits, std::span<float const> bias,
                                TokenMajorOut out, Workspace& ws, std::int64_t n) {
    typename R::Config;
    { r.num_experts() } -> std::convertible_to<std::int64_t>;
    { r.num_logits() } -> std::convertible_to<std::int64_t>;
    { r.max_slots() } -> std::convertible_to<std::int64_t>;
    { r.workspace_size(n) } -> std::convertible_to<std::size_t>;
    { r.route(arch, logits, bias, out, ws) } -> std::convertible_to<std::int64_t>;
};

// A router that takes test-time control (research.md §8): route(..., control), where an empty record
// routes as the plain call. Every router in smoe::router does.
template <class R, class Arch = xsimd::default_arch>
concept ControllableRouter = RouterPolicy<R, Arch> &&
    requires(R const& r, Arch arch, MatrixView<float const> logits, std::span<float const> bias, TokenMajorOut out,
             Workspace& ws, RouterControl const& control) {
    { r.route(arch, logits, bias, out, ws, control) } -> std::convertible_to<std::int64_t>;
};

// A router that selects by token id (router::Hash) takes the call's smoe::TokenIds after the control.
template <class R, class Arch = xsimd::default_arch>
concept TokenRouter = ControllableRouter<R, Arch> &&
    requires(R const& r, Arch arch, MatrixView<float const> logits, std::span<float const> bias, TokenMajorOut out,
             Workspace& ws, RouterControl const& control, TokenIds ids) {
    { r.route(arch, logits, bias, out, ws, control, ids) } -> std::convertible_to<std::int64_t>;
};

// An expert computes slot_out[r] = row_w[r] * f_e(rows_in[r]) for the M gathered rows of expert e
// (experts.md §1).
template <class X, class Arch = xsimd::default_arch>
concept ExpertPolicy = requires(X const& x, Arch arch, std::int64_t e, MatrixView<float const> rows_in,
                                std::span<float const> row_w, MatrixView<float> slot_out, Workspace& ws, std::int64_t n) {
    typename X::Config;
    typename X::Weights;
    { X::is_compute_free } -> std::convertible_to<bool>;
    { x.num_experts() } -> std::convertible_to<std::int64_t>;
    { x.hidden_size() } -> std::convertible_to<std::int64_t>;
    { x.workspace_size(n) } -> std::convertible_to<std::size_t>;
    x.run(arch, e, rows_in, row_w, slot_out, ws);
};

// A balancer sees the routing after the router and the counting sort and before the experts
// (balance.md §1): plan() may drop pairs, renormalise, pad, and records the load statistics.
template <class B>
concept BalancePolicy = requires(B& b, balance::BalanceContext& ctx, std::int64_t n) {
    typename B::Config;
    { B::drops_tokens } -> std::convertible_to<bool>;
    { b.workspace_size(n) } -> std::convertible_to<std::size_t>;
    b.plan(ctx);
    { b.stats() } -> std::convertible_to<LoadStats const&>;
};

// A router whose selection already bounds every expert's load (expert choice: each expert takes C
// tokens) says so with `static constexpr bool bounds_load = true`.
template <class R>
constexpr bool router_bounds_load() {
    if constexpr (requires { R::bounds_load; })
        return R::bounds_load;
    else
        return false;
}

// A router that adds a per-expert bias to its selection scores (routing.md §2) says so with
// `static constexpr bool accepts_selection_bias = true`; a balancer that owns such a bias
// (LossFreeBias) needs one.
template <class R>
constexpr bool router_accepts_selection_bias() {
    if constexpr (requires { R::accepts_selection_bias; })
        return R::accepts_selection_bias;
    else
        return false;
}

// Where the layer runs. backend::Cpu<Arch> is the only one today; the CUDA backend will model this too.
template <class B>
concept Backend = requires {
    typename B::tag;
    { B::name } -> std::convertible_to<char const*>;
};

}  // namespace smoe::inline v0
