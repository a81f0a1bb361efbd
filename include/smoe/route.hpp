#pragma once
// Routing outside a layer: run any RouterPolicy on logits and get the full RoutingResult (token-major
// and expert-major views) in caller-owned workspace. MoELayer routes through the same two steps.
//
//   smoe::router::TopK router(smoe::router::TopKConfig::olmoe());
//   std::vector<std::byte> ws(smoe::routing_workspace_size(router, max_tokens));
//   smoe::RoutingResult r = smoe::route(router, logits, {}, ws);

#include <cstddef>
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <span>
#include <string>

#include "smoe/detail/xsimd.hpp"

#include "smoe/concepts.hpp"
#include "smoe/core/error.hpp"
#include "smoe/core/routing.hpp"
#include "smoe/core/workspace.hpp"
#include "smoe/kernels/cpu/dispatch.hpp"

namespace smoe::inline v0 {

namespace detail {

// forward_routed's input (smoe::MoELayer's and dist::MoELayer's): ids [T, K] in [0, E) or -1 (an empty
// slot), each expert at most once per token, K <= max_slots; finite weights [T, K]. Returns K.
inline std::int64_t check_precomputed_routing(MatrixView<std::int32_t const> ids, MatrixView<float const> w, std::int64_t T,
                                              std::int64_t E, std::int64_t max_slots) {
    check_view(ids, "expert_ids", T, -1);
    check_view(w, "expert_weights", T, ids.cols);
    std::int64_t const K = ids.cols;
    if (K > max_slots) fail("expert_ids.cols", K, "at most the router's max_slots() = " + std::to_string(max_slots));
    for (std::int64_t t = 0; t < T; ++t)
        for (std::int64_t j = 0; j < K; ++j) {
            std::int32_t const e = ids(t, j);
            // Built only on failure: forward_routed allocates nothing on valid input.
            auto at = [&] { return " at token " + std::to_string(t) + ", slot " + std::to_string(j); };
            if (e < -1 || e >= E) fail("expert_ids", std::to_string(e) + at(), "an expert id in [0, " + std::to_string(E) + ") or -1 for an empty slot");
            if (e >= 0 && !std::isfinite(w(t, j))) fail("expert_weights", to_text(w(t, j)) + at(), "finite weights");
            for (std::int64_t i = 0; i < j && e >= 0; ++i)
                if (ids(t, i) == e) fail("expert_ids", std::to_string(e) + at(), "each expert at most once per token");
        }
    return K;
}

// The buffers of one routing, sized for T tokens and the router's largest K.
struct RoutingBuffers {
    TokenMajorOut token_major;
    kernels::cpu::ExpertMajor expert_major;
};

template <class Router, class Alloc>
RoutingBuffers carve_routing(Router const& router, Alloc& a, std::int64_t T) {
    std::int64_t const K = router.max_slots(), E = router.num_experts();
    auto const n = static_cast<std::size_t>(T * K);
    RoutingBuffers b;
    b.token_major.expert_ids = MatrixView<std::int32_t>(a.template take<std::int32_t>(n).data(), T, K);
    b.token_major.expert_weights = MatrixView<float>(a.template take<float>(n).data(), T, K);
    b.expert_major.offsets = a.template take<std::int32_t>(static_cast<std::size_t>(E + 1));
    b.expert_major.token_ids = a.template take<std::int32_t>(n);
    b.expert_major.weights = a.template take<float>(n);
    b.expert_major.slots = a.template take<std::int32_t>(n);
    b.expert_major.slot_rows = a.template take<std::int32_t>(n);
    return b;
}

// The token-major columns in use: the router's K of its max_slots() columns.
inline MatrixView<std::int32_t const> used_ids(RoutingBuffers const& b, std::int64_t K) {
    auto const& v = b.token_major.expert_ids;
    return {v.data, v.rows, K, v.ld};
}
inline MatrixView<float const> used_weights(RoutingBuffers const& b, std::int64_t K) {
    auto const& v = b.token_major.expert_weights;
    return {v.data, v.rows, K, v.ld};
}

// The counting sort of the K columns in use into the CSR (the dispatch pass).
// Returns the number of null-expert slots.
inline std::int64_t build_csr(RoutingBuffers const& b, std::int64_t E, std::int64_t K) {
    std::int64_t nulls = 0;
    kernels::cpu::build_expert_major(used_ids(b, K), used_weights(b, K), E, b.expert_major, &nulls);
    return nulls;
}

// The result view over the buffers, as the CSR stands now (a dropping balancer may have shrunk it).
inline RoutingResult routing_view(RoutingBuffers const& b, std::int64_t E, std::int64_t K) {
    auto const nnz = static_cast<std::size_t>(b.expert_major.offsets[E]);
    RoutingResult r;
    r.num_tokens = b.token_major.expert_ids.rows;
    r.num_experts = E;
    r.k = K;
    r.offsets = std::span<std::int32_t const>(b.expert_major.offsets.data(), static_cast<std::size_t>(E + 1));
    r.token_ids = std::span<std::int32_t const>(b.expert_major.token_ids.data(), nnz);
    r.weights = std::span<float const>(b.expert_major.weights.data(), nnz);
    r.slots = std::span<std::int32_t const>(b.expert_major.slots.data(), nnz);
    r.expert_ids = used_ids(b, K);
    r.expert_weights = used_weights(b, K);
    return r;
}

// The buffers the balancer step needs besides the routing's.
struct BalanceBuffers {
    std::span<std::int32_t> routed_offsets;  // [E+1] copy before the balancer (statistics)
    std::span<std::uint8_t> dropped;         // [T*Kmax]
    Workspace scratch;                       // the balancer's own
};

template <class Router, class Balancer, class Alloc>
BalanceBuffers carve_balance(Router const& router, Balancer const& balancer, Alloc& a, std::int64_t T) {
    BalanceBuffers b;
    b.routed_offsets = a.template take<std::int32_t>(static_cast<std::size_t>(router.num_experts() + 1));
    b.dropped = a.template take<std::uint8_t>(static_cast<std::size_t>(T * router.max_slots()));
    b.scratch = a.take_bytes(balancer.workspace_size(T));
    return b;
}

template <class Router>
router::ScoreFunc score_func_of(Router const& router) {
    if constexpr (requires { router.config().score_func; })
        return router.config().score_func;
    else
        return router::ScoreFunc::softmax;
}

// The bias the router selects with: the balancer's own (LossFreeBias) or the caller's.
template <class Balancer>
std::span<float const> selection_bias(Balancer const& balancer, std::span<float const> given) {
    if constexpr (requires { balancer.selection_bias(); })
        return balancer.selection_bias();
    else
        return given;
}

// The dispatch pass (counting sort into the CSR) and the balancer step after it: the balancer may
// drop pairs, renormalise and pad, and records the statistics. Returns the view of the result.
template <class Balancer>
RoutingResult balance_routing(Balancer& balancer, RoutingBuffers const& b, BalanceBuffers const& bb, std::int64_t E,
                              std::int64_t K, MatrixView<float const> logits, router::ScoreFunc score_func) {
    std::int64_t const T = b.token_major.expert_ids.rows;
    std::int64_t const null_slots = build_csr(b, E, K);
    auto const& csr = b.expert_major;
    std::copy(csr.offsets.begin(), csr.offsets.begin() + E + 1, bb.routed_offsets.begin());
    // Only a dropping balancer writes the mask; the others never see it filled.
    auto const dropped = Balancer::drops_tokens ? bb.dropped.first(static_cast<std::size_t>(T * K)) : std::span<std::uint8_t>{};
    std::fill(dropped.begin(), dropped.end(), std::uint8_t{0});

    balance::BalanceContext ctx;
    ctx.num_tokens = T;
    ctx.num_experts = E;
    ctx.k = K;
    ctx.logits = logits;
    ctx.score_func = score_func;
    ctx.expert_ids = used_ids(b, K);
    auto const& tw = b.token_major.expert_weights;
    ctx.expert_weights = MatrixView<float>(tw.data, T, K, tw.ld);
    ctx.csr = csr;
    ctx.routed_offsets = bb.routed_offsets.first(static_cast<std::size_t>(E + 1));
    ctx.dropped = dropped;
    ctx.null_slots = null_slots;
    ctx.scratch = bb.scratch;
    balancer.plan(ctx);

    RoutingResult r = routing_view(b, E, K);
    if constexpr (Balancer::drops_tokens) r.dropped = dropped;
    r.padded_rows = ctx.padded_rows;
    return r;
}

}  // namespace detail

template <class Router>
std::size_t routing_workspace_size(Router const& router, std::int64_t max_tokens) {
    WorkspaceSize size;
    detail::carve_routing(router, size, max_tokens);
    size.take_bytes(router.workspace_size(max_tokens));
    return required_bytes(size.bytes());
}

// Routes logits [T, router.num_logits()] (with an optional selection bias). The result's views point
// into `workspace` and stay valid until it is reused.
template <class Arch = xsimd::default_arch, class Router>
    requires RouterPolicy<Router, Arch>
RoutingResult route(Router const& router, MatrixView<float const> logits, std::span<float const> bias,
                    std::span<std::byte> workspace) {
    Workspace ws(workspace);
    detail::RoutingBuffers b = detail::carve_routing(router, ws, logits.rows);
    Workspace scratch = ws.take_bytes(router.workspace_size(logits.rows));
    std::int64_t const K = router.route(Arch{}, logits, bias, b.token_major, scratch);
    detail::build_csr(b, router.num_experts(), K);
    return detail::routing_view(b, router.num_experts(), K);
}

// The same under test-time control (research.md §8); an empty record is the call above.
template <class Arch = xsimd::default_arch, class Router>
requires ControllableRouter<Router, Arch> RoutingResult route(Router const& router, MatrixView<float const> logits,
                                                              std::span<float const> bias,
                                                              std::span<std::byte> workspace,
                                                              RouterControl const& control) {
    Workspace ws(workspace);
    detail::RoutingBuffers b = detail::carve_routing(router, ws, logits.rows);
    Workspace scratch = ws.take_bytes(router.workspace_size(logits.rows));
    std::int64_t const K = router.route(Arch{}, logits, bias, b.token_major, scratch, control);
    detail::build_csr(b, router.num_experts(), K);
    return detail::routing_view(b, router.num_experts(), K);
}

// With the call's token ids, for a router that selects by them (router::Hash).
template <class Arch = xsimd::default_arch, class Router>
requires TokenRouter<Router, Arch> RoutingResult route(Router const& router, MatrixView<float const> logits,
                                                       std::span<float const> bias, std::span<std::byte> workspace,
                                                       RouterControl const& control, TokenIds token_ids) {
    Workspace ws(workspace);
    detail::RoutingBuffers b = detail::carve_routing(router, ws, logits.rows);
    Workspace scratch = ws.take_bytes(router.workspace_size(logits.rows));
    std::int64_t const K = router.route(Arch{}, logits, bias, b.token_major, scratch, control, token_ids);
    detail::build_csr(b, router.num_experts(), K);
    return detail::routing_view(b, router.num_experts(), K);
}

}  // namespace smoe::inline v0

namespace smoe::inline v0 {

// Routing plus a balancer, outside a layer: what a router-only case with capacity or statistics keys
// runs, and what an engine that dispatches on its own needs. Drops, padding and statistics are as in
// MoELayer (the balancer's stats() after the call).
template <class Router, class Balancer>
std::size_t routing_workspace_size(Router const& router, Balancer const& balancer, std::int64_t max_tokens) {
    WorkspaceSize size;
    detail::carve_routing(router, size, max_tokens);
    size.take_bytes(router.workspace_size(max_tokens));
    detail::carve_balance(router, balancer, size, max_tokens);
    return required_bytes(size.bytes());
}

template <class Arch = xsimd::default_arch, class Router, class Balancer>
    requires RouterPolicy<Router, Arch> && BalancePolicy<Balancer>
RoutingResult route(Router const& router, Balancer& balancer, MatrixView<float const> logits, std::span<float const> bias,
                    std::span<std::byte> workspace) {
    Workspace ws(workspace);
    detail::RoutingBuffers b = detail::carve_routing(router, ws, logits.rows);
    Workspace scratch = ws.take_bytes(router.workspace_size(logits.rows));
    detail::BalanceBuffers bb = detail::carve_balance(router, balancer, ws, logits.rows);
    std::int64_t const K = router.route(Arch{}, logits, detail::selection_bias(balancer, bias), b.token_major, scratch);
    return detail::balance_routing(balancer, b, bb, router.num_experts(), K, logits, detail::score_func_of(router));
}

}  // namespace smoe::inline v0
