#pragma once
// smoe::MoELayer<Router, Expert, Balancer, Backend>: one sparse MoE block.
//
//   y = Σ_(e, w) in route(x · gateᵀ)  w · expert_e(x)
//
// forward(x, y, workspace): gate projection (fp32), routing, balancing, dispatch (counting sort into
// expert-major order and a gather per expert), the experts that received tokens (the others are
// never touched), and the combine in slot order. forward_routed() takes the routing from the host
// engine and runs dispatch, experts and combine only; forward_logits() takes the logits from a gate of
// the host's own (gate::Recurrent) and routes them. A layer built without a gate (an empty view) takes
// only those two.
//
// Workspace: workspace_size() bytes for config().max_tokens tokens; forward never allocates. The
// two-argument forward uses a buffer the layer allocated once at construction, so it is not safe to
// call concurrently on one layer; the three-argument form is, with one workspace per caller.
//
//   using Layer = smoe::MoELayer<smoe::router::TopK, smoe::expert::SwiGLU<float>, smoe::balance::None>;
//   Layer layer({.router = smoe::router::TopKConfig::mixtral(), .expert = {4096, 14336, 8}, .max_tokens = 512},
//               {.gate = gate, .experts = smoe::expert::SwiGLUWeights<float>::dense(w1, w3, w2, expert_cfg)});
//   smoe::RoutingResult r = layer.forward(x, y);   // r.load(e): tokens of expert e

#include <algorithm>
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <thread>
#include <type_traits>

#include "smoe/backend/cpu.hpp"
#include "smoe/balance/context.hpp"
#include "smoe/concepts.hpp"
#include "smoe/core/error.hpp"
#include "smoe/core/limits.hpp"
#include "smoe/core/routing.hpp"
#include "smoe/core/scratch_slots.hpp"
#include "smoe/core/thread_pool.hpp"
#include "smoe/core/view.hpp"
#include "smoe/core/workspace.hpp"
#include "smoe/kernels/cpu/combine.hpp"
#include "smoe/kernels/cpu/dispatch.hpp"
#include "smoe/kernels/cpu/finite_check.hpp"
#include "smoe/kernels/cpu/gemm_nt.hpp"
#include "smoe/route.hpp"
#include "smoe/store/store_config.hpp"

namespace smoe::inline v0 {

namespace detail {

// Stand-ins that keep MoELayer's declarations well formed when a parameter is not a policy, so the
// static_assert below is the one error the user reads.
struct not_a_policy {
    struct Config {};
    struct Weights {};
};
template <class P, class = void>
struct config_of {
    using type = not_a_policy::Config;
};
template <class P>
struct config_of<P, std::void_t<typename P::Config>> {
    using type = typename P::Config;
};
template <class P, class = void>
struct weights_of {
    using type = not_a_policy::Weights;
};
template <class P>
struct weights_of<P, std::void_t<typename P::Weights>> {
    using type = typename P::Weights;
};
template <class B, class = void>
struct arch_of {
    using type = xsimd::default_arch;
};
template <class B>
struct arch_of<B, std::void_t<typename B::arch>> {
    using type = typename B::arch;
};

// An expert whose run splits into two phases over independent weight panels (expert::SwiGLU): the
// layer then spreads (expert, panel range) items of every touched expert over its thread pool.
template <class X, class Arch>
concept PhasedExpert = requires(X const& x, Arch a, std::int64_t n, MatrixView<float const> in, MatrixView<float> out,
                                std::span<float const> w) {
    { x.gate_up_panels() } -> std::convertible_to<std::int64_t>;
    { x.down_panels() } -> std::convertible_to<std::int64_t>;
    { x.hidden_stride() } -> std::convertible_to<std::int64_t>;
    x.run_gate_up(a, n, in, out, n, n);
    x.run_down(a, n, in, w, out, n, n);
};

// A balancer that owns the router's selection bias (LossFreeBias).
template <class B>
inline constexpr bool balancer_owns_bias = requires(B const& b) { b.selection_bias(); };

template <class B>
constexpr bool balancer_drops_tokens() {
    if constexpr (requires { B::drops_tokens; })
        return B::drops_tokens;
    else
        return false;
}

}  // namespace detail

// A layer's configuration and weights name its policies only, not its backend, so one Config builds the
// layer for any ISA (smoe/dispatch.hpp builds one per ISA from the same Config).
template <class Router, class Expert, class Balancer>
struct MoEConfig {
    typename detail::config_of<Router>::type router{};
    typename detail::config_of<Expert>::type expert{};
    typename detail::config_of<Balancer>::type balance{};
    std::int64_t max_tokens = 256;  // the workspace is sized once for this many tokens per call (<= limits::kMaxTokens)
    // false: no buffer of the layer's own for the overloads without a workspace (they then throw), for a
    // composition that always passes its own (layer::Chain's passes).
    bool own_workspace = true;
};

template <class Expert>
struct MoEWeights {
    MatrixView<float const> gate;        // router projection [num_logits, d]
    std::span<float const> expert_bias;  // optional selection bias [num_logits] (DeepSeek-V3)
    typename detail::weights_of<Expert>::type experts{};
    // Optional bias of the router linear [num_logits]: logits = gate · x + gate_bias, used for selection
    // and weights (gpt-oss's mlp.router.bias), unlike expert_bias, which only selects.
    std::span<float const> gate_bias{};
};

template <class Router, class Expert, class Balancer, class Backend = backend::Cpu<>>
class MoELayer {
    static_assert(smoe::Backend<Backend>,
                  "smoe::MoELayer: the Backend parameter does not model smoe::Backend (it needs a nested `tag` "
                  "type and a static `name`; use smoe::backend::Cpu<Arch>)");
    using arch = typename detail::arch_of<Backend>::type;
    static_assert(RouterPolicy<Router, arch>,
                  "smoe::MoELayer: the Router parameter does not model smoe::RouterPolicy (it needs a nested "
                  "Config and num_experts(), num_logits(), max_slots(), workspace_size(max_tokens) and "
                  "route(arch, logits, bias, out, workspace); use a type from smoe::router)");
    static_assert(ExpertPolicy<Expert, arch>,
                  "smoe::MoELayer: the Expert parameter does not model smoe::ExpertPolicy (it needs nested "
                  "Config and Weights, is_compute_free, num_experts(), hidden_size(), workspace_size(max_rows) "
                  "and run(arch, e, rows_in, row_w, slot_out, workspace); use a type from smoe::expert)");
    static_assert(BalancePolicy<Balancer>,
                  "smoe::MoELayer: the Balancer parameter does not model smoe::BalancePolicy (it needs a nested "
                  "Config, drops_tokens, workspace_size(max_tokens), plan(context) and stats(); use a type from "
                  "smoe::balance)");

    static_assert(!(router_bounds_load<Router>() && detail::balancer_drops_tokens<Balancer>()),
                  "smoe::MoELayer: this Router already bounds every expert's load (expert choice: each expert "
                  "takes at most C tokens), so a Balancer that drops tokens (drops_tokens = true, e.g. "
                  "smoe::balance::Capacity) has nothing to cap; use smoe::balance::None, or set the router's "
                  "capacity instead");

    static_assert(!detail::balancer_owns_bias<Balancer> || router_accepts_selection_bias<Router>(),
                  "smoe::MoELayer: this Balancer owns a selection bias (e.g. smoe::balance::LossFreeBias) but the "
                  "Router does not select with one (accepts_selection_bias); use smoe::router::TopK, or "
                  "smoe::balance::None");

public:
    using router_type = Router;
    using expert_type = Expert;
    using balancer_type = Balancer;
    using backend_type = Backend;

    using Config = MoEConfig<Router, Expert, Balancer>;
    using Weights = MoEWeights<Expert>;

    MoELayer(Config const& cfg, Weights const& w)
        : cfg_(cfg), router_(cfg.router), expert_(cfg.expert, w.experts), balancer_(cfg.balance), weights_(w) {
        detail::require_in_range("max_tokens", cfg_.max_tokens, 0, limits::kMaxTokens, "smoe::limits::kMaxTokens");
        if (router_.num_experts() != expert_.num_experts())
            detail::fail("router.num_experts", router_.num_experts(),
                         "the experts' num_experts (" + std::to_string(expert_.num_experts()) + ")");
        detail::check_int32_extent(cfg_.max_tokens, router_.max_slots());
        // No gate (an empty view): the host computes the logits and calls forward_logits or forward_routed.
        if (w.gate.data != nullptr || w.gate.rows != 0) detail::check_view(w.gate, "gate", router_.num_logits(), expert_.hidden_size());
        if (!w.expert_bias.empty())
            detail::check_vector(w.expert_bias, router_.num_logits(), "expert_bias", "num_logits", "expert");
        if (!w.gate_bias.empty())
            detail::check_vector(w.gate_bias, router_.num_logits(), "gate_bias", "num_logits", "expert");
        if constexpr (requires { balancer_.config().num_experts; })
            if (balancer_.config().num_experts != router_.num_experts())
                detail::fail("balance.num_experts", balancer_.config().num_experts,
                             "the router's num_experts (" + std::to_string(router_.num_experts()) + ")");
        if constexpr (detail::balancer_owns_bias<Balancer>)
            if (!w.expert_bias.empty()) balancer_.set_bias(w.expert_bias);
        if (cfg_.own_workspace) buffer_ = WorkspaceBuffer(workspace_size());
    }

    Config const& config() const { return cfg_; }
    Router const& router() const { return router_; }
    Expert const& experts() const { return expert_; }
    Balancer& balancer() { return balancer_; }
    Balancer const& balancer() const { return balancer_; }
    // Load statistics of the last call and accumulated since balancer().reset_stats().
    LoadStats const& stats() const { return balancer_.stats(); }
    std::int64_t hidden_size() const { return expert_.hidden_size(); }
    std::int64_t num_experts() const { return router_.num_experts(); }

    // Expert work goes to `pool` (smoe::ThreadPool: parallel_for(n, fn)) from the next call on; the
    // pool must outlive the layer or the next set_thread_pool. Results are the same bits with or
    // without a pool, whatever its size. Without one (the default) everything runs on the caller.
    template <ThreadPool P>
    void set_thread_pool(P& pool) { pool_ = PoolRef(pool); }
    void clear_thread_pool() { pool_ = PoolRef(); }

    // Bytes of workspace one call of up to config().max_tokens tokens needs.
    std::size_t workspace_size() const {
        WorkspaceSize size;
        carve(size, cfg_.max_tokens);
        return required_bytes(size.bytes());
    }

    // x [T, d] -> y [T, d], T <= max_tokens. The result's views point into the workspace.
    RoutingResult forward(MatrixView<float const> x, MatrixView<float> y, std::span<std::byte> workspace) {
        return forward_controlled(x, y, workspace, RouterControl{}, TokenIds{});
    }

    RoutingResult forward(MatrixView<float const> x, MatrixView<float> y) { return forward(x, y, own_bytes()); }

    // The same under test-time router control (research.md §8), for this call only; an empty record is
    // the plain call.
    RoutingResult forward(MatrixView<float const> x, MatrixView<float> y, std::span<std::byte> workspace,
                          RouterControl const& control) {
        static_assert(ControllableRouter<Router, arch>,
                      "smoe::MoELayer::forward with a RouterControl: this Router has no route(..., control)");
        return forward_controlled(x, y, workspace, control, TokenIds{});
    }

    RoutingResult forward(MatrixView<float const> x, MatrixView<float> y, RouterControl const& control) {
        return forward(x, y, own_bytes(), control);
    }

    // With the call's token ids [T] (smoe::TokenIds): a router that selects by token id (router::Hash)
    // needs them; the others ignore them, so an engine may pass them to every layer.
    RoutingResult forward(MatrixView<float const> x, MatrixView<float> y, std::span<std::byte> workspace,
                          RouterControl const& control, TokenIds token_ids) {
        static_assert(ControllableRouter<Router, arch>,
                      "smoe::MoELayer::forward with a RouterControl: this Router has no route(..., control)");
        return forward_controlled(x, y, workspace, control, token_ids);
    }

    RoutingResult forward(MatrixView<float const> x, MatrixView<float> y, RouterControl const& control,
                          TokenIds token_ids) {
        return forward(x, y, own_bytes(), control, token_ids);
    }

    // Precomputed routing from the host engine: expert_ids / expert_weights [T, K] (K <= the router's
    // max_slots(); id -1 marks an empty slot; ids >= num_experts() are identity experts where the router
    // has them). Runs dispatch, the balancer (capacity, statistics; no losses, as there are no logits),
    // experts and combine.
    RoutingResult forward_routed(MatrixView<float const> x, MatrixView<std::int32_t const> expert_ids,
                                 MatrixView<float const> expert_weights, MatrixView<float> y,
                                 std::span<std::byte> workspace) {
        std::int64_t const T = check_io(x, y);
        std::int64_t const K = check_precomputed(expert_ids, expert_weights, T);
        Workspace ws(workspace);
        Buffers b = carve(ws, T);
        for (std::int64_t t = 0; t < T; ++t)
            for (std::int64_t j = 0; j < K; ++j) {
                b.routing.token_major.expert_ids(t, j) = expert_ids(t, j);
                b.routing.token_major.expert_weights(t, j) = expert_ids(t, j) < 0 ? 0.0f : expert_weights(t, j);
            }
        return dispatch_and_run(x, y, b, K, {});
    }

    RoutingResult forward_routed(MatrixView<float const> x, MatrixView<std::int32_t const> expert_ids,
                                 MatrixView<float const> expert_weights, MatrixView<float> y) {
        return forward_routed(x, expert_ids, expert_weights, y, own_bytes());
    }

    // Logits from the host's own gate (a recurrent router, a chain pass, ...): logits [T, num_logits]
    // replace gate · x (+ gate_bias); routing, balancer (losses included), experts and combine as forward.
    RoutingResult forward_logits(MatrixView<float const> x, MatrixView<float const> logits, MatrixView<float> y,
                                 std::span<std::byte> workspace) {
        std::int64_t const T = check_io(x, y);
        detail::check_view(logits, "logits", T, router_.num_logits());
        Workspace ws(workspace);
        Buffers b = carve(ws, T);
        return route_and_run(x, y, b, logits, RouterControl{}, TokenIds{});
    }

    RoutingResult forward_logits(MatrixView<float const> x, MatrixView<float const> logits, MatrixView<float> y) {
        return forward_logits(x, logits, y, own_bytes());
    }

private:
    std::span<std::byte> own_bytes() {
        if (!cfg_.own_workspace)
            detail::fail("workspace", "none (own_workspace is false)", "a workspace of workspace_size() bytes passed to forward");
        return buffer_.bytes();
    }

    // The forward of every public overload; an empty control and no token ids take the router's plain
    // route(), so a layer whose router has no control still builds.
    RoutingResult forward_controlled(MatrixView<float const> x, MatrixView<float> y, std::span<std::byte> workspace,
                                     RouterControl const& control, TokenIds token_ids) {
        std::int64_t const T = check_io(x, y);
        if (weights_.gate.data == nullptr && T > 0)
            detail::fail("gate", "an empty view", "a gate [num_logits, d] for forward (without one, call forward_logits or forward_routed)");
        Workspace ws(workspace);
        Buffers b = carve(ws, T);
        MatrixView<float> logits(b.logits.data(), T, router_.num_logits());
        // The router's weights are read once per call, cold in a model (olmoe, qwen2moe: 0.5 MB, ~20 us of
        // one thread at decode, while the other threads wait for the experts): split by logit over the
        // pool. Each logit is one dot product in a fixed order (gemm_nt.hpp), so the split keeps the bits.
        std::int64_t const L = logits.cols, parts = std::clamp<std::int64_t>((L + 15) / 16, 1, pool_.num_threads());
        pool_.parallel_for(parts, [&](std::int64_t i) {
            auto const at = [&](std::int64_t j) { return j == parts ? L : L * j / parts / 4 * 4; };
            std::int64_t const c0 = at(i), n = at(i + 1) - c0;
            kernels::cpu::gemm_nt(arch{}, x, weights_.gate.block(c0, n), MatrixView<float>(logits.data + c0, T, n, logits.ld));
        });
        if (!weights_.gate_bias.empty())
            for (std::int64_t t = 0; t < T; ++t)
                for (std::int64_t e = 0; e < logits.cols; ++e)
                    logits(t, e) += weights_.gate_bias[static_cast<std::size_t>(e)];
        return route_and_run(x, y, b, logits, control, token_ids);
    }

    // Rows one expert call may see: its load (at most T), or the balancer's padded segment.
    std::int64_t max_expert_rows(std::int64_t T) const {
        if constexpr (requires { balancer_.config().capacity(T, 1, 1); })
            if (pads())
                return std::max(T, balancer_.config().capacity(T, router_.max_slots(), router_.num_experts()));
        return T;
    }

    struct Buffers {
        std::span<float> logits;
        detail::RoutingBuffers routing;
        Workspace router_ws;
        detail::BalanceBuffers balance;
        std::span<float> gathered;   // one expert's input rows (padded segment included)
        std::span<float> padded_w;   // its row weights, when padded
        std::span<float> padded_out; // its output rows, when padded
        std::span<float> slot_out;   // [T*K, d] weighted expert outputs in CSR order
        std::span<float> hidden;     // phased experts: [T*K, hidden_stride] between the two phases
        std::span<std::int32_t> touched;  // phased experts: ids of the experts that got rows
        std::span<std::uint32_t> pieces;  // phased experts: per touched expert, gate/up pieces taken, then done
        ScratchSlots scratch;              // phased experts' kernel scratch (phase_scratch_bytes), per item
        Workspace expert_ws;
        std::span<std::byte> worker_ws;    // single-call experts under a plan: one expert workspace per worker
        std::size_t worker_ws_stride = 0;
    };

    // A balancer with a plan (balance::LeastLoaded) over an expert without phases: one task per planned
    // worker calls run() on its items, so every dispatched row is gathered at once and each task has an
    // expert workspace of its own.
    static constexpr bool kPlannedSingleCall = requires(Balancer const& bal) { bal.plan_items(); } && !detail::PhasedExpert<Expert, arch>;

    // One routine sizes (with WorkspaceSize) and carves (with Workspace), so they cannot disagree.
    template <class Alloc>
    Buffers carve(Alloc& a, std::int64_t T) const {
        auto const d = static_cast<std::size_t>(expert_.hidden_size());
        auto const t = static_cast<std::size_t>(T);
        auto const slots = static_cast<std::size_t>(max_routed_rows(T));
        auto const rows = static_cast<std::size_t>(max_expert_rows(T));
        Buffers b;
        b.logits = a.template take<float>(t * static_cast<std::size_t>(router_.num_logits()));
        b.routing = detail::carve_routing(router_, a, T);
        b.router_ws = a.take_bytes(router_.workspace_size(T));
        b.balance = detail::carve_balance(router_, balancer_, a, T);
        b.gathered = a.template take<float>((kPlannedSingleCall ? slots : rows) * d);
        b.padded_w = a.template take<float>(pads() ? rows : 0);
        b.padded_out = a.template take<float>(pads() ? rows * d : 0);
        b.slot_out = a.template take<float>(slots * d);
        if constexpr (detail::PhasedExpert<Expert, arch>) {
            b.hidden = a.template take<float>(slots * static_cast<std::size_t>(expert_.hidden_stride()));
            b.touched = a.template take<std::int32_t>(static_cast<std::size_t>(router_.num_experts()));
            b.pieces = a.template take<std::uint32_t>(2 * static_cast<std::size_t>(router_.num_experts()));
            if constexpr (requires { expert_.phase_scratch_bytes(); }) b.scratch = ScratchSlots(a, expert_.phase_scratch_bytes());
        }
        b.expert_ws = a.take_bytes(expert_.workspace_size(max_expert_rows(T)));
        if constexpr (kPlannedSingleCall) {
            b.worker_ws_stride = WorkspaceSize::round_up(expert_.workspace_size(max_expert_rows(T)));
            b.worker_ws = a.template take<std::byte>(static_cast<std::size_t>(balancer_.config().num_workers) * b.worker_ws_stride);
        }
        return b;
    }

    // Dispatched (token, expert) rows one call may have: T · max_slots(), or fewer where the router
    // bounds them (router::Race: k · T exactly, while a token may take up to E slots).
    std::int64_t max_routed_rows(std::int64_t T) const {
        if constexpr (requires { router_.max_routed_rows(T); })
            return router_.max_routed_rows(T);
        else
            return T * router_.max_slots();
    }

    bool pads() const {
        if constexpr (requires { balancer_.config().pad_to_capacity; })
            return balancer_.config().pad_to_capacity;
        else
            return false;
    }

    std::int64_t check_io(MatrixView<float const> x, MatrixView<float> y) const {
        std::int64_t const d = expert_.hidden_size();
        detail::check_view(x, "x", -1, d);
        detail::check_view(y, "y", x.rows, d);
        if (x.rows > cfg_.max_tokens)
            detail::fail("x.rows", x.rows, "at most max_tokens = " + std::to_string(cfg_.max_tokens) + " tokens");
        return x.rows;
    }

    std::int64_t check_precomputed(MatrixView<std::int32_t const> ids, MatrixView<float const> w, std::int64_t T) const {
        std::int64_t E = router_.num_experts();  // ids past it: the router's identity experts, if it has them
        if constexpr (requires { router_.identity_nulls(); })
            if (router_.identity_nulls()) E = router_.num_logits();
        std::int64_t const K = detail::check_precomputed_routing(ids, w, T, E, router_.max_slots());
        if constexpr (requires { router_.max_routed_rows(T); }) {
            std::int64_t routed = 0;
            for (std::int64_t t = 0; t < T; ++t)
                for (std::int64_t j = 0; j < K; ++j) routed += ids(t, j) >= 0;
            if (routed > max_routed_rows(T))
                detail::fail("expert_ids", std::to_string(routed) + " routed slots",
                             "at most the router's budget of " + std::to_string(max_routed_rows(T)) + " for " + std::to_string(T) + " tokens");
        }
        return K;
    }

    // Routing (the router on `logits`), then dispatch_and_run: what forward and forward_logits share.
    RoutingResult route_and_run(MatrixView<float const> x, MatrixView<float> y, Buffers const& b, MatrixView<float const> logits,
                                RouterControl const& control, TokenIds token_ids) {
        Workspace scratch = b.router_ws;
        auto const bias = detail::selection_bias(balancer_, weights_.expert_bias);
        std::int64_t K = 0;
        if constexpr (TokenRouter<Router, arch>)
            K = router_.route(arch{}, logits, bias, b.routing.token_major, scratch, control, token_ids);
        else if constexpr (ControllableRouter<Router, arch>)
            K = control.empty() ? router_.route(arch{}, logits, bias, b.routing.token_major, scratch)
                                : router_.route(arch{}, logits, bias, b.routing.token_major, scratch, control);
        else
            K = router_.route(arch{}, logits, bias, b.routing.token_major, scratch);
        return dispatch_and_run(x, y, b, K, logits);
    }

    // Dispatch (counting sort), balancer, experts, combine: what forward and forward_routed share.
    RoutingResult dispatch_and_run(MatrixView<float const> x, MatrixView<float> y, Buffers const& b, std::int64_t K,
                                   MatrixView<float const> logits) {
        RoutingResult const r = detail::balance_routing(balancer_, b.routing, b.balance, router_.num_experts(), K, logits,
                                                        detail::score_func_of(router_));
        run_experts(x, y, r, b);
        if constexpr (requires { router_.identity_nulls(); })
            if (router_.identity_nulls()) add_identity_nulls(x, y, r);
        // Shared experts (expert::Shared) see every token and come after the routed sum (rule 2).
        if constexpr (requires(Workspace& w) { expert_.run_shared(arch{}, x, y, w, pool_); }) {
            Workspace ews = b.expert_ws;
            expert_.run_shared(arch{}, x, y, ews, pool_);
        }
        return r;
    }

    // Identity experts (families.md §2.5): a selected id >= E adds w · x to the token's routed sum; it is
    // never dispatched. After the combine and before shared experts, in slot order.
    void add_identity_nulls(MatrixView<float const> x, MatrixView<float> y, RoutingResult const& r) const {
        for (std::int64_t t = 0; t < r.num_tokens; ++t)
            for (std::int64_t j = 0; j < r.k; ++j)
                if (r.expert_ids(t, j) >= r.num_experts) {
                    float const w = r.expert_weights(t, j);
                    for (std::int64_t i = 0; i < x.cols; ++i) y(t, i) += w * x(t, i);
                }
    }

    // Phased experts, unpadded routing: three parallel steps, each over items that write disjoint
    // outputs. (1) gather every dispatched row into slot_out (CSR order); (2) gate/up over (touched
    // expert, panel range) items into `hidden`, then down over (touched expert, panel range) items into
    // slot_out, which the gathered inputs no longer need, in one pool call (see panel_phases);
    // (3) combine over token blocks. An expert
    // with most of the tokens is split into as many items as one with a single row, so both cores stay
    // busy; the item split never changes a bit (each output is one fixed-order chain). A balancer with
    // a plan (balance::LeastLoaded, research.md §6) replaces steps (2) and (3): one task per planned
    // worker runs that worker's (expert, CSR rows) items, both phases over all panels, so the plan
    // decides which thread computes which rows; row independence keeps the bits.
    void run_experts_phased(MatrixView<float const> x, MatrixView<float> y, RoutingResult const& r, Buffers const& b) {
        std::int64_t const d = expert_.hidden_size(), hs = expert_.hidden_stride(), nnz = r.nnz();
        MatrixView<float> const slot_out(b.slot_out.data(), nnz, d), hidden(b.hidden.data(), nnz, hs);
        constexpr std::int64_t kGatherRows = 64, kCombineTokens = 16;
        pool_.parallel_for((nnz + kGatherRows - 1) / kGatherRows, [&](std::int64_t i) {
            std::int64_t const r0 = i * kGatherRows, n = std::min(kGatherRows, nnz - r0);
            kernels::cpu::gather_rows(x, r.token_ids.subspan(static_cast<std::size_t>(r0), static_cast<std::size_t>(n)), slot_out.block(r0, n));
        });
        std::int64_t touched = 0;
        for (std::int64_t e = 0; e < r.num_experts; ++e)
            if (r.load(e) > 0) b.touched[static_cast<std::size_t>(touched++)] = static_cast<std::int32_t>(e);
        // An expert store that may not hold every touched expert at once (store/expert_store.hpp): rounds
        // of as many touched experts as it holds, those it holds already first; each round runs both
        // phases, then lets go (one round when the store streams what its slots cannot hold).
        std::int64_t first = 0, last = touched;
        // Panel ranges per expert: one per expert on one thread; otherwise 2 per thread, in multiples of
        // 4 panels (the single-row tile reads 4 panels at once), of 12 at prefill (8 rows an expert on
        // average and more): the bf16 dot kernels run 3 panels a tile there, and a range that is not a
        // multiple of 3 ends in single-panel tiles (olmoe, 2 threads: 8 of an expert's 128 panels, 2 now).
        std::int64_t const quantum = nnz >= 8 * touched ? 12 : 4;
        auto chunk = [&](std::int64_t panels) {
            std::int64_t const parts = pool_.num_threads() > 1 ? 2 * pool_.num_threads() : 1;
            return std::max<std::int64_t>(quantum, ((panels + parts - 1) / parts + quantum - 1) / quantum * quantum);
        };
        // Gate/up and down in one pool call, every gate/up item before every down item, instead of a call
        // each: a thread out of gate/up items goes on with the down items of experts already finished
        // rather than waiting at a barrier for the layer's slowest gate/up item (at decode, 0.3-0.5 ms a
        // layer, each barrier costs part of an item, ~10-30 us, plus the other thread's wake-up). Expert
        // e's down needs all of its hidden rows, so a down item first runs the gate/up pieces of e that
        // no thread has taken yet (the pool may run items in any order and on one thread: ReversePool in
        // tests/test_threads.cpp runs the down items first), then waits for the pieces other threads are
        // running, which wait on nothing. A gate/up item runs the next untaken piece of its expert,
        // whichever that is, or nothing: a piece's bits do not depend on the thread that computes it.
        auto panel_phases = [&] {
            std::int64_t const gp = expert_.gate_up_panels(), dp = expert_.down_panels(), n = last - first;
            std::int64_t const gc = chunk(gp), gper = (gp + gc - 1) / gc, dc = chunk(dp), dper = (dp + dc - 1) / dc;
            std::uint32_t* const taken = b.pieces.data();
            std::uint32_t* const done = taken + n;
            std::fill(taken, done + n, 0u);
            auto const gate_up_piece = [&](std::int64_t i) {
                std::int64_t const piece = std::atomic_ref<std::uint32_t>(taken[i]).fetch_add(1u, std::memory_order_relaxed);
                if (piece >= gper) return false;
                std::int64_t const e = b.touched[static_cast<std::size_t>(first + i)], off = r.offsets[e], M = r.load(e);
                std::int64_t const p0 = piece * gc, p1 = std::min(gp, p0 + gc);
                auto const in = MatrixView<float const>(slot_out.block(off, M));
                auto const w = r.weights.subspan(static_cast<std::size_t>(off), static_cast<std::size_t>(M));
                if constexpr (requires { expert_.phase_scratch_bytes(); })
                    b.scratch.with([&](std::span<std::byte> sc) { expert_.run_gate_up(arch{}, e, in, hidden.block(off, M), p0, p1, w, sc); });
                else
                    expert_.run_gate_up(arch{}, e, in, hidden.block(off, M), p0, p1, w);
                std::atomic_ref<std::uint32_t>(done[i]).fetch_add(1u, std::memory_order_release);
                return true;
            };
            pool_.parallel_for(n * (gper + dper), [&](std::int64_t item) {
                if (item < n * gper) {
                    gate_up_piece(item / gper);
                    return;
                }
                std::int64_t const i = (item - n * gper) / dper, p0 = (item - n * gper) % dper * dc, p1 = std::min(dp, p0 + dc);
                while (gate_up_piece(i)) {}
                while (std::atomic_ref<std::uint32_t>(done[i]).load(std::memory_order_acquire) < static_cast<std::uint32_t>(gper))
                    std::this_thread::yield();
                std::int64_t const e = b.touched[static_cast<std::size_t>(first + i)], off = r.offsets[e], M = r.load(e);
                auto const h = MatrixView<float const>(hidden.block(off, M));
                auto const w = r.weights.subspan(static_cast<std::size_t>(off), static_cast<std::size_t>(M));
                if constexpr (requires { expert_.phase_scratch_bytes(); })
                    b.scratch.with([&](std::span<std::byte> sc) { expert_.run_down(arch{}, e, h, w, slot_out.block(off, M), p0, p1, sc); });
                else
                    expert_.run_down(arch{}, e, h, w, slot_out.block(off, M), p0, p1);
            });
        };
        auto both_phases = [&] {
            if constexpr (requires { balancer_.plan_items(); }) {
                if (last == first) return;
                // The experts of this round, b.touched[first, last): an expert store orders them hits first,
                // so they are no id range. in_round[e] != 0 for each (pieces is free: no panel phases here).
                std::span<std::uint32_t> const in_round = b.pieces.first(static_cast<std::size_t>(r.num_experts));
                std::fill(in_round.begin(), in_round.end(), 0u);
                for (std::int64_t i = first; i < last; ++i) in_round[static_cast<std::size_t>(b.touched[static_cast<std::size_t>(i)])] = 1u;
                auto const items = balancer_.plan_items();
                pool_.parallel_for(balancer_.config().num_workers, [&](std::int64_t w) {
                    for (std::size_t i = 0; i < items.size(); ++i) {
                        auto const& it = items[i];
                        if (it.worker != w || in_round[static_cast<std::size_t>(it.expert)] == 0) continue;
                        std::int64_t const off = r.offsets[it.expert] + it.row_begin, M = it.row_end - it.row_begin;
                        auto const rw = r.weights.subspan(static_cast<std::size_t>(off), static_cast<std::size_t>(M));
                        expert_.run_gate_up(arch{}, it.expert, MatrixView<float const>(slot_out.block(off, M)), hidden.block(off, M), 0,
                                            expert_.gate_up_panels(), rw);
                        expert_.run_down(arch{}, it.expert, MatrixView<float const>(hidden.block(off, M)), rw, slot_out.block(off, M), 0,
                                         expert_.down_panels());
                        balancer_.record_run(i, w);
                    }
                });
            } else {
                panel_phases();
            }
        };
        if constexpr (requires { expert_.store(); }) {
            auto& st = expert_.store();
            if (st.residency() != store::Residency::resident) {
                st.observe(r);
                st.hits_first(std::span<std::int32_t>(b.touched.data(), static_cast<std::size_t>(touched)));
                for (std::int64_t begin = 0, end = 0; begin < touched; begin = end) {
                    struct Held {  // released also when a read or a kernel throws
                        decltype(st) s;
                        std::int32_t const* ids;
                        std::int64_t n = 0;
                        ~Held() {
                            for (std::int64_t i = 0; i < n; ++i) s.release(ids[i]);
                        }
                    } held{st, b.touched.data() + begin};
                    for (end = begin; end < touched && st.acquire(b.touched[static_cast<std::size_t>(end)], r.load(b.touched[static_cast<std::size_t>(end)]), false); ++end)
                        ++held.n;
                    if (end == begin)
                        detail::fail("expert store", "every slot held", "a slot for expert " + std::to_string(b.touched[static_cast<std::size_t>(begin)]));
                    // The held experts run as their records arrive: the hits while the misses are read.
                    for (first = begin; first < end; first = last) {
                        std::span<std::int32_t> const held_now(b.touched.data() + first, static_cast<std::size_t>(end - first));
                        last = first + static_cast<std::int64_t>(st.ready_first(held_now));
                        both_phases();
                    }
                }
                first = 0;
                last = touched;
            } else {
                both_phases();
            }
        } else {
            both_phases();
        }
        std::int64_t const T = y.rows, K = r.k;
        pool_.parallel_for((T + kCombineTokens - 1) / kCombineTokens, [&](std::int64_t i) {
            std::int64_t const t0 = i * kCombineTokens, n = std::min(kCombineTokens, T - t0);
            kernels::cpu::combine_slots(arch{}, MatrixView<float const>(slot_out),
                                        b.routing.expert_major.slot_rows.subspan(static_cast<std::size_t>(t0 * K), static_cast<std::size_t>(n * K)), K,
                                        y.block(t0, n));
        });
    }

    // Single-call experts under a plan (research.md §6 on one machine): every dispatched row gathered
    // in CSR order, then one pool task per planned worker runs that worker's (expert, CSR rows) items
    // with its own expert workspace. Row independence (experts.md §1 rule 3) keeps the bits of None.
    void run_experts_planned(MatrixView<float const> x, MatrixView<float> y, RoutingResult const& r, Buffers const& b) {
        std::int64_t const d = expert_.hidden_size(), nnz = r.nnz();
        MatrixView<float> const slot_out(b.slot_out.data(), nnz, d), gathered(b.gathered.data(), nnz, d);
        kernels::cpu::gather_rows(x, r.token_ids.subspan(0, static_cast<std::size_t>(nnz)), gathered);
        auto const items = balancer_.plan_items();
        pool_.parallel_for(balancer_.config().num_workers, [&](std::int64_t w) {
            auto const ws = b.worker_ws.subspan(static_cast<std::size_t>(w) * b.worker_ws_stride, b.worker_ws_stride);
            for (std::size_t i = 0; i < items.size(); ++i) {
                auto const& it = items[i];
                if (it.worker != w) continue;
                std::int64_t const off = r.offsets[it.expert] + it.row_begin, M = it.row_end - it.row_begin;
                Workspace ews(ws);  // each worker's bytes start aligned: the stride is rounded up
                expert_.run(arch{}, it.expert, MatrixView<float const>(gathered.block(off, M)),
                            r.weights.subspan(static_cast<std::size_t>(off), static_cast<std::size_t>(M)), slot_out.block(off, M), ews);
                balancer_.record_run(i, w);
            }
        });
        kernels::cpu::combine_slots(arch{}, MatrixView<float const>(slot_out), b.routing.expert_major.slot_rows, r.k, y);
    }

    void run_experts(MatrixView<float const> x, MatrixView<float> y, RoutingResult const& r, Buffers const& b) {
        if constexpr (detail::PhasedExpert<Expert, arch>)
            if (r.padded_rows == 0) return run_experts_phased(x, y, r, b);
        if constexpr (kPlannedSingleCall) return run_experts_planned(x, y, r, b);
        std::int64_t const d = expert_.hidden_size();
        MatrixView<float> const slot_out(b.slot_out.data(), r.nnz(), d);
        for (std::int64_t e = 0; e < r.num_experts; ++e) {
            std::int64_t const M = r.load(e);
            auto const begin = static_cast<std::size_t>(r.offsets[e]);
            auto const rows = static_cast<std::size_t>(M);
            Workspace ews = b.expert_ws;
            if (r.padded_rows > 0) {
                // Static shapes (balance.md §3): the segment is exactly padded_rows rows, the real ones
                // first, then zero rows of weight 0 that are computed and never scattered.
                std::int64_t const P = r.padded_rows;
                MatrixView<float> const xe(b.gathered.data(), P, d);
                kernels::cpu::gather_rows(x, r.token_ids.subspan(begin, rows), xe.block(0, M));
                std::fill(xe.row(M), xe.row(P), 0.0f);
                std::copy(r.weights.begin() + static_cast<std::ptrdiff_t>(begin), r.weights.begin() + static_cast<std::ptrdiff_t>(begin + rows), b.padded_w.begin());
                std::fill(b.padded_w.begin() + M, b.padded_w.begin() + P, 0.0f);
                MatrixView<float> const out(b.padded_out.data(), P, d);
                expert_.run(arch{}, e, MatrixView<float const>(xe), std::span<float const>(b.padded_w.data(), static_cast<std::size_t>(P)), out, ews);
                for (std::int64_t i = 0; i < M; ++i) std::copy(out.row(i), out.row(i) + d, slot_out.row(r.offsets[e] + i));
                continue;
            }
            if (M == 0) continue;
            MatrixView<float> const xe(b.gathered.data(), M, d);
            kernels::cpu::gather_rows(x, r.token_ids.subspan(begin, rows), xe);
            expert_.run(arch{}, e, MatrixView<float const>(xe), r.weights.subspan(begin, rows), slot_out.block(r.offsets[e], M), ews);
        }
        kernels::cpu::combine_slots(arch{}, MatrixView<float const>(slot_out), b.routing.expert_major.slot_rows, r.k, y);
    }

    Config cfg_;
    Router router_;
    Expert expert_;
    Balancer balancer_;
    Weights weights_;
    WorkspaceBuffer buffer_;
    PoolRef pool_;
};

}  // namespace smoe::inline v0
