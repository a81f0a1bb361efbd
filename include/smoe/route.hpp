#pragma once
// Routing outside a layer: run any RouterPolicy on logits and get the full RoutingResult (token-major
// and expert-major views) in caller-owned workspace. MoELayer routes through the same two steps.
//
//   smoe::router::TopK router(smoe::router::TopKConfig::olmoe());
//   std::vector<std::byte> ws(smoe::routing_workspace_size(router, max_tokens));
//   smoe::RoutingResult r = smoe::route(router, logits, {}, ws);

#include <cstddef>
#include <cstdint>
#include <span>

#include <xsimd/xsimd.hpp>

#include "smoe/concepts.hpp"
#include "smoe/core/routing.hpp"
#include "smoe/core/workspace.hpp"
#include "smoe/kernels/cpu/dispatch.hpp"

namespace smoe::inline v0 {

namespace detail {

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
inline void build_csr(RoutingBuffers const& b, std::int64_t E, std::int64_t K) {
    kernels::cpu::build_expert_major(used_ids(b, K), used_weights(b, K), E, b.expert_major);
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

}  // namespace smoe::inline v0
