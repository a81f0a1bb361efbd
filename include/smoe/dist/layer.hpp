#pragma once
// smoe::dist::MoELayer<Router, Expert, Balancer, Comm, Backend>: one MoE block with its experts
// sharded over the ranks of a communicator (expert parallelism). Each rank holds the full router gate
// and the weights of its own experts only (ExpertPlacement), and calls forward on its own tokens
// (any T <= max_tokens, 0 included); forward is a collective: every rank calls it once per step.
//
// One forward, on every rank:
//   1. gate GEMM, routing and balancer on the rank's own tokens (as smoe::MoELayer does);
//   2. pack: each dispatched (token, expert) row x_t with its weight w into a send buffer grouped by
//      destination rank, within a rank by local expert id, within an expert in CSR (token) order;
//   3. alltoall of a counts block per peer: [status, rows for each of the peer's local experts];
//      status != 0 from any rank makes every rank throw (no rank waits in step 4 for a failed one);
//   4. alltoallv of the rows (d floats + the weight: d + 1 floats each);
//   5. each local expert gathers its rows from every source, runs once on all of them
//      (slot_out[r] = w_r · f_e(x_r), experts.md §1) and writes its outputs over its input rows;
//   6. alltoallv back into the send buffer, the reverse of step 4;
//   7. combine on the source in slot order (kernels::cpu::combine_slots).
// Bytes on the wire per routed (token, expert) pair whose expert is on another rank: (d + 1) · 4 each
// way, plus the counts block, 8 · (1 + max local experts) bytes per peer.
//
// Exactness: the gate GEMM and the experts are row-independent bit for bit (experts.md §1 rule 3),
// routers with per-token selection (top-k, top-p, ReLU) route a token the same in any batch, and the
// combine keeps the slot order, so y equals smoe::MoELayer's y on all ranks' tokens bit for bit.
// Routers that select over the batch (expert choice: each expert takes its C best tokens) select over
// the rank's own tokens: y equals smoe::MoELayer run on that rank's tokens alone. A balancer likewise
// sees the rank's own routing (capacity per rank; LossFreeBias updates from the rank's own counts). A
// padding balancer's static segments are not reproduced (row independence makes them irrelevant to y).
//
// LLEP (Balancer = balance::LeastLoaded, research.md §6, llep_num_workers = ranks): step 3's blocks
// carry every rank's loads of all E experts instead, so every rank sums the same global loads and
// computes the same plan (balancer().plan_items(): (expert, rank, rows) items, rows being positions in
// the expert's global CSR segment, rank 0's tokens first). A rank sends its rows of an item to the
// item's rank, grouped by destination and, within it, in plan order. A rank that computes rows of an
// expert it does not hold receives that expert's packed record from its native rank once per call and
// (expert, rank) pair, in one more alltoallv before the rows (only when the plan copies any), straight
// into a resident expert set of its own (`helper` records, sized once: min(E − local experts, the rows
// it can receive)); it runs the rows with that copy, and records every item it ran in
// balancer().executed() (worker = this rank). The output is the same bits as balance::None and
// smoe::MoELayer (row independence, slot-order combine). Needs an expert with packed resident records
// built from dense views and no biases (expert::SwiGLU<float | bf16>), and on every rank an expert
// config giving d and f (a rank that owns no expert still computes copies).
//
// Workspace: workspace_size() bytes, planned once for max_tokens tokens on every rank, the receive
// side for the worst case (every rank sends all its rows to this one). forward never allocates. The
// layer keeps small per-peer count arrays as members, so one layer runs one forward at a time.
//
//   smoe::dist::MpiCommunicator comm(MPI_COMM_WORLD);
//   auto placement = smoe::dist::ExpertPlacement::contiguous(8, comm.size());
//   using Layer = smoe::dist::MoELayer<smoe::router::TopK, smoe::expert::SwiGLU<float>, smoe::balance::None,
//                                      smoe::dist::MpiCommunicator>;
//   Layer layer(comm, placement,
//               {.router = smoe::router::TopKConfig::mixtral(), .expert = {4096, 14336, placement.num_local(comm.rank())},
//                .max_tokens = 512},
//               {.gate = gate, .experts = my_experts});   // this rank's experts, stacked by global id
//   layer.forward(x, y);                                  // x, y [T_rank, d]

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <exception>
#include <iterator>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "smoe/balance/least_loaded.hpp"
#include "smoe/dist/communicator.hpp"
#include "smoe/dist/placement.hpp"
#include "smoe/dist/stats.hpp"
#include "smoe/layer.hpp"

namespace smoe::inline v0::dist {

template <class Router, class Expert, class Balancer, class Comm, class Backend = backend::Cpu<>>
class MoELayer {
    // The policy checks (and their readable messages) are smoe::MoELayer's: instantiating it runs them.
    static_assert(sizeof(smoe::MoELayer<Router, Expert, Balancer, Backend>) > 0);
    static_assert(Communicator<Comm>,
                  "smoe::dist::MoELayer: the Comm parameter does not model smoe::dist::Communicator (it needs rank(), "
                  "size(), alltoall, alltoallv, allreduce_sum and allreduce_min; use smoe::dist::MpiCommunicator)");
    using arch = typename smoe::detail::arch_of<Backend>::type;

public:
    using router_type = Router;
    using expert_type = Expert;
    using balancer_type = Balancer;
    using communicator_type = Comm;

    struct Config {
        typename smoe::detail::config_of<Router>::type router{};
        typename smoe::detail::config_of<Expert>::type expert{};  // num_experts = this rank's count
        typename smoe::detail::config_of<Balancer>::type balance{};
        std::int64_t max_tokens = 256;  // per rank and call; the same on every rank
    };

    struct Weights {
        MatrixView<float const> gate;        // the full router projection [num_logits, d], on every rank
        std::span<float const> expert_bias;  // optional selection bias [E] (global ids)
        typename smoe::detail::weights_of<Expert>::type experts{};  // this rank's experts, by increasing global id
        std::span<float const> gate_bias{};  // optional bias of the router linear [num_logits] (gpt-oss), as smoe::MoELayer's
    };

    // Collective. Throws smoe::invalid_argument on every rank when any rank's arguments are invalid or
    // the ranks disagree on E, d, num_logits, max_slots or max_tokens. A rank that owns no expert
    // constructs no Expert (its cfg.expert and w.experts are not read).
    MoELayer(Comm& comm, ExpertPlacement placement, Config const& cfg, Weights const& w)
        : comm_(&comm), placement_(std::move(placement)), cfg_(cfg), weights_(w) {
        std::exception_ptr err;
        try {
            construct(cfg, w);
        } catch (...) {
            err = std::current_exception();
        }
        std::int64_t first_failed = err ? comm_->rank() : comm_->size();
        comm_->allreduce_min(std::span<std::int64_t>(&first_failed, 1));
        if (err) std::rethrow_exception(err);
        if (first_failed < comm_->size()) fail_peer(first_failed);
        agree_on_shapes();
    }

    MoELayer(MoELayer const&) = delete;
    MoELayer& operator=(MoELayer const&) = delete;

    Config const& config() const { return cfg_; }
    ExpertPlacement const& placement() const { return placement_; }
    Router const& router() const { return *router_; }
    Balancer& balancer() { return *balancer_; }
    Balancer const& balancer() const { return *balancer_; }
    bool has_local_experts() const { return expert_.has_value(); }
    Expert const& experts() const { return *expert_; }  // only when has_local_experts()
    std::int64_t hidden_size() const { return d_; }
    std::int64_t num_experts() const { return router_->num_experts(); }
    std::int64_t num_local_experts() const { return placement_.num_local(comm_->rank()); }

    // This rank's balancer statistics: the routing of its own tokens over all E experts.
    LoadStats const& stats() const { return balancer_->stats(); }
    // Collective: the statistics of every rank summed, rows per rank and the imbalance between ranks.
    ShardedLoadStats global_stats() const { return sum_load_stats(*comm_, balancer_->stats(), placement_); }
    // Rows this rank's experts computed in the last forward (rows received from every rank, itself included).
    std::int64_t rows_computed() const { return rows_computed_; }
    // Rows of the last forward sent to experts on other ranks (each also comes back).
    std::int64_t rows_sent_remote() const { return rows_sent_remote_; }

    std::size_t workspace_size() const {
        WorkspaceSize size;
        carve_local(size, cfg_.max_tokens);
        carve_remote(size);
        return required_bytes(size.bytes());
    }
    // LLEP: expert records this rank can hold for other ranks' experts in one call (0 without LLEP).
    std::int64_t helper_records() const { return helper_ ? helper_->num_experts() : 0; }

    // Collective. x [T, d] -> y [T, d], T <= max_tokens (T may differ between ranks, 0 included). The
    // result is the routing of this rank's tokens; its views point into the workspace.
    RoutingResult forward(MatrixView<float const> x, MatrixView<float> y, std::span<std::byte> workspace) {
        return run(x, y, workspace, nullptr);
    }
    RoutingResult forward(MatrixView<float const> x, MatrixView<float> y) { return forward(x, y, buffer_.bytes()); }

    // Collective, like forward, with this rank's routing from the host instead of the gate and router
    // (smoe::MoELayer::forward_routed's rules: expert_ids [T, K], -1 an empty slot, K <= max_slots;
    // expert_weights [T, K]): PhiMoE's sparsemixer, DeepSeek-V4's hash layers (io/hf_moe.hpp).
    RoutingResult forward_routed(MatrixView<float const> x, MatrixView<std::int32_t const> expert_ids,
                                 MatrixView<float const> expert_weights, MatrixView<float> y, std::span<std::byte> workspace) {
        Precomputed const pre{expert_ids, expert_weights};
        return run(x, y, workspace, &pre);
    }
    RoutingResult forward_routed(MatrixView<float const> x, MatrixView<std::int32_t const> expert_ids,
                                 MatrixView<float const> expert_weights, MatrixView<float> y) {
        return forward_routed(x, expert_ids, expert_weights, y, buffer_.bytes());
    }

private:
    struct Precomputed {
        MatrixView<std::int32_t const> ids;
        MatrixView<float const> weights;
    };

    RoutingResult run(MatrixView<float const> x, MatrixView<float> y, std::span<std::byte> workspace, Precomputed const* pre) {
        std::fill(send_meta_.begin(), send_meta_.end(), 0);
        std::exception_ptr err;
        Call c;
        try {
            c = route_and_pack(x, y, workspace, pre);
        } catch (...) {
            err = std::current_exception();
            for (std::size_t p = 0; p < static_cast<std::size_t>(comm_->size()); ++p) send_meta_[p * block_width()] = 1;
        }
        comm_->alltoall(send_meta_, recv_meta_);
        if (err) std::rethrow_exception(err);
        throw_if_a_peer_failed();

        if constexpr (kLlep) {
            llep_plan();
            pack_planned(x, c.routing, c.local);
            if (balancer_->llep_stats().weight_copies > 0) send_records(c.remote);  // every rank knows: one plan
        } else {
            exchange_plan();
        }
        comm_->alltoallv(std::span<float const>(c.local.xfer), send_counts(), send_displs(), c.remote.recv, recv_counts(), recv_displs());
        observe_store(c.routing);
        if constexpr (kLlep)
            run_planned_items(c.remote);
        else
            run_local_experts(c.remote);
        comm_->alltoallv(std::span<float const>(c.remote.recv), recv_counts(), recv_displs(), c.local.xfer, send_counts(), send_displs());
        RoutingResult const& r = c.routing;
        MatrixView<float const> const slot_out(c.local.xfer.data(), r.nnz(), d_, d_ + 1);
        kernels::cpu::combine_slots(arch{}, slot_out, std::span<std::int32_t const>(c.local.slot_rows.data(), static_cast<std::size_t>(r.num_tokens * r.k)), r.k, y);
        // Shared experts (expert::Shared) are replicated: every rank runs them on its own tokens after
        // the routed sum, as smoe::MoELayer does (same order, same bits).
        if constexpr (kHasShared) {
            Workspace ews = c.remote.expert_ws;
            expert_->run_shared(arch{}, x, y, ews);
        }
        return r;
    }

    static constexpr bool kHasShared =
        requires(Expert const& x, Workspace& w) { x.run_shared(arch{}, MatrixView<float const>{}, MatrixView<float>{}, w); };
    // LLEP: a balancer with a plan that takes loads summed over ranks (balance::LeastLoaded).
    static constexpr bool kLlep = requires(Balancer& b, std::span<std::int64_t const> c) {
        b.replan(c);
        b.plan_items();
        b.record_run(std::size_t{0}, std::int64_t{0});
    };

    struct Local {
        std::span<float> logits;
        smoe::detail::RoutingBuffers routing;
        Workspace router_ws;
        smoe::detail::BalanceBuffers balance;
        std::span<float> xfer;             // [T·Kmax, d + 1] rows (x, w) sent, then the outputs received back
        std::span<std::int32_t> slot_rows; // [T·Kmax] the xfer row of each token-major slot, -1 if none
    };
    struct Remote {
        std::span<float> recv;      // [rows received, d + 1]: inputs, then the outputs written over them
        std::span<float> gathered;  // one local expert's rows from every source [<= P·max_tokens, d]
        std::span<float> row_w;     // their weights
        std::span<float> out;       // their outputs
        Workspace expert_ws;
        std::span<float> records;   // LLEP: the expert records this rank sends to other ranks
    };
    struct Call {
        Local local;
        Remote remote;
        RoutingResult routing;
    };

    // Steps 1 and 2: everything that can reject this rank's input, before the first collective.
    Call route_and_pack(MatrixView<float const> x, MatrixView<float> y, std::span<std::byte> workspace, Precomputed const* pre) {
        std::int64_t const T = check_io(x, y);
        Workspace ws(workspace);
        Call c;
        c.local = carve_local(ws, T);
        c.remote = carve_remote(ws);
        if (pre) {  // as smoe::MoELayer::forward_routed: no logits, the balancer sees the host's routing
            std::int64_t const K = smoe::detail::check_precomputed_routing(pre->ids, pre->weights, T, router_->num_experts(), router_->max_slots());
            auto const& tm = c.local.routing.token_major;
            for (std::int64_t t = 0; t < T; ++t)
                for (std::int64_t j = 0; j < K; ++j) {
                    tm.expert_ids(t, j) = pre->ids(t, j);
                    tm.expert_weights(t, j) = pre->ids(t, j) < 0 ? 0.0f : pre->weights(t, j);
                }
            c.routing = smoe::detail::balance_routing(*balancer_, c.local.routing, c.local.balance, router_->num_experts(), K, {},
                                                      smoe::detail::score_func_of(*router_));
            pack_or_count(x, c);
            return c;
        }
        MatrixView<float> const logits(c.local.logits.data(), T, router_->num_logits());
        kernels::cpu::gemm_nt(arch{}, x, weights_.gate, logits);
        if (!weights_.gate_bias.empty())  // the same additions as smoe::MoELayer's, so the same bits
            for (std::int64_t t = 0; t < T; ++t)
                for (std::int64_t e = 0; e < logits.cols; ++e) logits(t, e) += weights_.gate_bias[static_cast<std::size_t>(e)];
        Workspace scratch = c.local.router_ws;
        std::int64_t const K = router_->route(arch{}, MatrixView<float const>(logits),
                                              smoe::detail::selection_bias(*balancer_, weights_.expert_bias),
                                              c.local.routing.token_major, scratch);
        c.routing = smoe::detail::balance_routing(*balancer_, c.local.routing, c.local.balance, router_->num_experts(), K,
                                                  MatrixView<float const>(logits), smoe::detail::score_func_of(*router_));
        pack_or_count(x, c);
        return c;
    }

    // Without LLEP, step 2 proper. With it, the counts blocks only: this rank's load of every expert,
    // the same block to every peer; the rows are packed once the plan is known (pack_planned).
    void pack_or_count(MatrixView<float const> x, Call const& c) {
        if constexpr (kLlep) {
            RoutingResult const& r = c.routing;
            auto const B = block_width();
            for (std::int64_t e = 0; e < r.num_experts; ++e) {
                if (r.load(e) > r.num_tokens) too_many_rows(r, e);
                for (std::size_t p = 0; p < static_cast<std::size_t>(comm_->size()); ++p)
                    send_meta_[p * B + 1 + static_cast<std::size_t>(e)] = r.load(e);
            }
        } else {
            pack(x, c.routing, c.local);
        }
    }

    [[noreturn]] static void too_many_rows(RoutingResult const& r, std::int64_t e) {
        smoe::detail::fail("routing load", std::to_string(r.load(e)) + " rows for expert " + std::to_string(e),
                           "at most one row per token (T = " + std::to_string(r.num_tokens) + ")");
    }

    // Step 3's agreement: the status word of every peer's counts block.
    void throw_if_a_peer_failed() const {
        for (std::size_t q = 0; q < static_cast<std::size_t>(comm_->size()); ++q)
            if (recv_meta_[q * block_width()] != 0) fail_peer(static_cast<std::int64_t>(q));
    }

    void construct(Config const& cfg, Weights const& w) {
        int const rank = comm_->rank();
        if (placement_.num_ranks() != comm_->size())
            smoe::detail::fail("placement.num_ranks", placement_.num_ranks(), "the communicator size " + std::to_string(comm_->size()));
        smoe::detail::require_in_range("max_tokens", cfg.max_tokens, 0, limits::kMaxTokens, "smoe::limits::kMaxTokens");
        router_.emplace(cfg.router);
        // Identity experts add w · x after the combine (smoe::MoELayer); this layer has no such step yet,
        // and dropping them silently would change the output.
        if constexpr (requires { router_->identity_nulls(); })
            if (router_->identity_nulls())
                smoe::detail::fail("router.num_null_experts", router_->num_logits() - router_->num_experts(),
                                   "0 in smoe::dist::MoELayer (identity experts run in smoe::MoELayer only)");
        if constexpr (kLlep) {
            // The plan's workers are the ranks, and its native workers the layer's placement.
            auto bc = cfg.balance;
            if (bc.num_workers != comm_->size())
                smoe::detail::fail("balance.llep_num_workers", bc.num_workers, "the communicator size " + std::to_string(comm_->size()));
            if (bc.placement && bc.num_experts == placement_.num_experts())
                for (std::int64_t e = 0; e < placement_.num_experts(); ++e)
                    if (bc.placement->rank_of(e) != placement_.rank_of(e))
                        smoe::detail::fail("balance.placement",
                                           "rank " + std::to_string(bc.placement->rank_of(e)) + " for expert " + std::to_string(e),
                                           "the layer's placement (rank " + std::to_string(placement_.rank_of(e)) + ")");
            if (!bc.placement && bc.num_experts == placement_.num_experts()) bc.placement = placement_;
            balancer_.emplace(bc);
        } else {
            balancer_.emplace(cfg.balance);
        }
        std::int64_t const E = router_->num_experts();
        if (placement_.num_experts() != E)
            smoe::detail::fail("placement.num_experts", placement_.num_experts(), "the router's num_experts (" + std::to_string(E) + ")");
        smoe::detail::check_view(w.gate, "gate", router_->num_logits(), -1);
        d_ = w.gate.cols;
        if (d_ < 1) smoe::detail::fail("gate.cols", d_, "the hidden size d >= 1");
        std::int64_t const L = placement_.num_local(rank);
        auto const check_count = [&](std::int64_t n) {
            if (n != L)
                smoe::detail::fail("expert.num_experts", n,
                                   "this rank's expert count in the placement (" + std::to_string(L) + " on rank " + std::to_string(rank) + ")");
        };
        if constexpr (kHasShared)
            if (L == 0)
                smoe::detail::fail("placement", "no expert on rank " + std::to_string(rank),
                                   "at least one routed expert on every rank with shared experts (expert::Shared holds the "
                                   "replicated shared expert beside this rank's routed experts)");
        if (L > 0) {
            // Named before the expert checks its weights against the (wrong) count.
            if constexpr (requires { cfg.expert.num_experts; }) check_count(cfg.expert.num_experts);
            expert_.emplace(cfg.expert, w.experts);
            check_count(expert_->num_experts());
            if (expert_->hidden_size() != d_)
                smoe::detail::fail("expert.hidden_size", expert_->hidden_size(), "the gate's hidden size (" + std::to_string(d_) + ")");
        }
        smoe::detail::check_int32_extent(cfg.max_tokens, router_->max_slots());
        construct_helper(cfg, w);
        if (!w.expert_bias.empty()) smoe::detail::check_vector(w.expert_bias, E, "expert_bias", "num_experts", "expert");
        if (!w.gate_bias.empty())
            smoe::detail::check_vector(w.gate_bias, router_->num_logits(), "gate_bias", "num_logits", "expert");
        if constexpr (requires { balancer_->config().num_experts; })
            if (balancer_->config().num_experts != E)
                smoe::detail::fail("balance.num_experts", balancer_->config().num_experts,
                                   "the router's num_experts (" + std::to_string(E) + ")");
        if constexpr (smoe::detail::balancer_owns_bias<Balancer>)
            if (!w.expert_bias.empty()) balancer_->set_bias(w.expert_bias);
        // Every count and displacement of the row exchanges must fit an MPI-3 int.
        std::int64_t const row = d_ + 1, Tm = cfg.max_tokens;
        if (Tm > 0 && (Tm * router_->max_slots() > INT32_MAX / row || max_rows_received() > INT32_MAX / row))
            smoe::detail::fail("max_tokens", Tm,
                               "a plan whose exchanged floats fit int32 (MPI-3 counts): max_tokens x max_slots x (d + 1) and "
                               "ranks x max_tokens x min(max_slots, local experts) x (d + 1) below 2^31");
        auto const P = static_cast<std::size_t>(comm_->size());
        send_meta_.assign(P * block_width(), 0);
        recv_meta_.assign(P * block_width(), 0);
        counts_.assign(4 * P, 0);
        cursor_.assign(P, 0);
        buffer_ = WorkspaceBuffer(workspace_size());
    }

    // E, d, num_logits, max_slots and max_tokens size every buffer of the exchange: they must agree.
    void agree_on_shapes() {
        std::int64_t const mine[] = {router_->num_experts(), d_, router_->num_logits(), router_->max_slots(), cfg_.max_tokens};
        char const* const names[] = {"num_experts", "hidden_size", "num_logits", "max_slots", "max_tokens"};
        constexpr std::size_t n = std::size(mine);
        std::int64_t v[2 * n];
        for (std::size_t i = 0; i < n; ++i) {
            v[i] = mine[i];
            v[n + i] = -mine[i];
        }
        comm_->allreduce_min(std::span<std::int64_t>(v, 2 * n));
        for (std::size_t i = 0; i < n; ++i)
            if (v[i] != -v[n + i])
                smoe::detail::fail(names[i], mine[i],
                                   "the same value on every rank (they range from " + std::to_string(v[i]) + " to " +
                                       std::to_string(-v[n + i]) + ")");
    }

    [[noreturn]] void fail_peer(std::int64_t rank) const {
        smoe::detail::fail("rank", rank,
                           "every rank's call to succeed: rank " + std::to_string(rank) +
                               " rejected its input (its own exception names it), so every rank stops this collective call");
    }

    // LLEP's blocks hold a load per global expert.
    std::size_t block_width() const { return static_cast<std::size_t>(1 + (kLlep ? placement_.num_experts() : placement_.max_local())); }
    // Rows a rank can receive in one call: from every rank, at most max_tokens per expert it computes
    // (its own; under LLEP, any) and max_slots per token.
    std::int64_t max_rows_received() const {
        std::int64_t const experts = kLlep ? placement_.num_experts() : placement_.num_local(comm_->rank());
        return comm_->size() * cfg_.max_tokens * std::min(router_->max_slots(), experts);
    }

    template <class Alloc>
    Local carve_local(Alloc& a, std::int64_t T) const {
        auto const slots = static_cast<std::size_t>(T * router_->max_slots());
        Local b;
        b.logits = a.template take<float>(static_cast<std::size_t>(T * router_->num_logits()));
        b.routing = smoe::detail::carve_routing(*router_, a, T);
        b.router_ws = a.take_bytes(router_->workspace_size(T));
        b.balance = smoe::detail::carve_balance(*router_, *balancer_, a, T);
        b.xfer = a.template take<float>(slots * static_cast<std::size_t>(d_ + 1));
        b.slot_rows = a.template take<std::int32_t>(slots);
        return b;
    }

    template <class Alloc>
    Remote carve_remote(Alloc& a) const {
        auto const per_expert = static_cast<std::size_t>(expert_ || helper_ ? comm_->size() * cfg_.max_tokens : 0);
        auto const d = static_cast<std::size_t>(d_);
        Remote b;
        b.recv = a.template take<float>(static_cast<std::size_t>(max_rows_received()) * (d + 1));
        b.gathered = a.template take<float>(per_expert * d);
        b.row_w = a.template take<float>(per_expert);
        b.out = a.template take<float>(per_expert * d);
        auto const M = static_cast<std::int64_t>(per_expert);
        b.expert_ws = a.take_bytes(std::max(expert_ ? expert_->workspace_size(M) : 0, helper_ ? helper_->workspace_size(M) : 0));
        b.records = a.template take<float>(static_cast<std::size_t>(records_sent_max_ * record_floats_));
        return b;
    }

    std::int64_t check_io(MatrixView<float const> x, MatrixView<float> y) const {
        smoe::detail::check_view(x, "x", -1, d_);
        smoe::detail::check_view(y, "y", x.rows, d_);
        if (x.rows > cfg_.max_tokens)
            smoe::detail::fail("x.rows", x.rows, "at most max_tokens = " + std::to_string(cfg_.max_tokens) + " tokens");
        return x.rows;
    }

    // Step 2: rows grouped by destination rank, local expert, CSR order; the counts blocks; the map
    // from each token-major slot to its row.
    void pack(MatrixView<float const> x, RoutingResult const& r, Local const& loc) {
        auto const B = block_width();
        std::int64_t const d = d_, T = r.num_tokens;
        auto const bytes = static_cast<std::size_t>(d) * sizeof(float);
        std::fill(loc.slot_rows.begin(), loc.slot_rows.begin() + T * r.k, -1);
        std::int64_t pos = 0, remote = 0;
        for (int p = 0; p < comm_->size(); ++p)
            for (std::int64_t l = 0; l < placement_.num_local(p); ++l) {
                std::int32_t const e = placement_.global_id(p, l);
                std::int32_t const load = r.load(e);
                // Receivers plan max_tokens rows per local expert and source: one row per token.
                if (load > T) too_many_rows(r, e);
                send_meta_[static_cast<std::size_t>(p) * B + 1 + static_cast<std::size_t>(l)] = load;
                if (p != comm_->rank()) remote += load;
                for (std::int32_t i = r.offsets[e]; i < r.offsets[e + 1]; ++i, ++pos) {
                    float* row = loc.xfer.data() + pos * (d + 1);
                    std::memcpy(row, x.row(r.token_ids[i]), bytes);
                    row[d] = r.weights[i];
                    loc.slot_rows[static_cast<std::size_t>(r.slots[i])] = static_cast<std::int32_t>(pos);
                }
            }
        rows_sent_remote_ = remote;
    }

    std::span<std::int64_t> send_counts() { return std::span<std::int64_t>(counts_).subspan(0, counts_.size() / 4); }
    std::span<std::int64_t> send_displs() { return std::span<std::int64_t>(counts_).subspan(counts_.size() / 4, counts_.size() / 4); }
    std::span<std::int64_t> recv_counts() { return std::span<std::int64_t>(counts_).subspan(counts_.size() / 2, counts_.size() / 4); }
    std::span<std::int64_t> recv_displs() { return std::span<std::int64_t>(counts_).subspan(3 * counts_.size() / 4, counts_.size() / 4); }

    // Float counts and displacements of the row exchanges from the counts blocks.
    void exchange_plan() {
        auto const P = static_cast<std::size_t>(comm_->size());
        auto const B = block_width();
        std::int64_t const row = d_ + 1;
        auto sc = send_counts(), rc = recv_counts();
        std::int64_t received = 0;
        for (std::size_t p = 0; p < P; ++p) {
            std::int64_t n = 0, m = 0;
            for (std::size_t l = 0; l < B - 1; ++l) {
                n += send_meta_[p * B + 1 + l];
                m += recv_meta_[p * B + 1 + l];
            }
            sc[p] = n * row;
            rc[p] = m * row;
            received += m;
        }
        rows_computed_ = received;
        displs_from_counts(counts_);
    }

    // An alltoallv's displacements, the exclusive prefix sums of its counts, in a block laid out as
    // counts_ and record_counts_ are: [send counts, send displs, recv counts, recv displs], P each.
    static void displs_from_counts(std::span<std::int64_t> block) {
        auto const P = block.size() / 4;
        for (std::size_t side = 0; side < 4; side += 2) {
            std::int64_t at = 0;
            for (std::size_t p = 0; p < P; ++p) {
                block[(side + 1) * P + p] = at;
                at += block[side * P + p];
            }
        }
    }

    // ---- LLEP (research.md §6 across ranks) ----

    // LLEP's plan state, and the copies this rank may receive: one per expert it does not own, and no
    // more than rows it can receive (each copy comes with at least one row). Built once from zero weights
    // of the same shape, so their records have the layout of the rank's own; each call overwrites the
    // records it uses.
    void construct_helper(Config const& cfg, Weights const& w) {
        if constexpr (kLlep) {
            auto const Pu = static_cast<std::size_t>(comm_->size()), Eu = static_cast<std::size_t>(router_->num_experts());
            prefix_.assign((Pu + 1) * Eu, 0);
            global_load_.assign(Eu, 0);
            slot_of_.assign(Eu, -1);
            record_counts_.assign(4 * Pu, 0);
            last_copy_.assign(Pu, -1);
            using Wt = typename Expert::weight_type;
            static_assert(requires(Wt const* p, typename smoe::detail::config_of<Expert>::type const& c) {
                Expert::Weights::dense(p, p, p, c);
                std::declval<Expert const&>().store().resident_bytes();
                std::declval<Expert const&>().record_bytes(0);
            }, "smoe::dist::MoELayer with balance::LeastLoaded: the expert's packed records travel between ranks, so it "
               "needs resident records built from dense weights (expert::SwiGLU<float> or SwiGLU<bf16>)");
            if constexpr (requires { w.experts.bias.any(); })
                if (expert_ && w.experts.bias.any())
                    smoe::detail::fail("experts.bias", "expert biases", "none with balance::LeastLoaded in smoe::dist (a copied expert "
                                       "record carries the weights only)");
            if (expert_ && expert_->store().residency() != store::Residency::resident)
                smoe::detail::fail("expert.store.residency", store::to_string(expert_->store().residency()),
                                   "resident with balance::LeastLoaded in smoe::dist (records are sent from memory)");
            std::int64_t const E = router_->num_experts(), L = placement_.num_local(comm_->rank());
            std::int64_t const rows = max_rows_received();
            std::int64_t const slots = std::min(E - L, rows);
            // Records sent per call: one per (own expert, other rank) pair with rows, at most the rows
            // every rank can send.
            std::int64_t const P = comm_->size();
            records_sent_max_ = std::min(L * (P - 1), P * cfg.max_tokens * router_->max_slots());
            if (slots <= 0 && records_sent_max_ <= 0) return;
            auto hc = cfg.expert;
            if constexpr (requires { hc.num_experts; }) hc.num_experts = std::max<std::int64_t>(slots, 1);
            auto const n = static_cast<std::size_t>(hc.num_experts * hc.intermediate_size * hc.hidden_size);
            std::vector<Wt> const zeros(n);
            helper_.emplace(hc, Expert::Weights::dense(zeros.data(), zeros.data(), zeros.data(), hc));
            if (helper_->hidden_size() != d_)
                smoe::detail::fail("expert.hidden_size", helper_->hidden_size(), "the gate's hidden size (" + std::to_string(d_) + ")");
            std::size_t const rb = helper_->record_bytes(0);
            if (expert_ && expert_->record_bytes(0) != rb)
                smoe::detail::fail("expert record bytes", expert_->record_bytes(0),
                                   "the copies' " + std::to_string(rb) + " (one layout on every rank)");
            if (rb % 64 != 0 || helper_->store().resident_bytes().size() != static_cast<std::size_t>(hc.num_experts) * rb)
                smoe::detail::fail("expert records", std::to_string(helper_->store().resident_bytes().size()) + " bytes",
                                   "records back to back, each a multiple of 64 bytes");
            record_floats_ = static_cast<std::int64_t>(rb / sizeof(float));
            if (std::max(slots, records_sent_max_) > INT32_MAX / record_floats_)
                smoe::detail::fail("max_tokens", cfg.max_tokens, "expert records exchanged in one call below 2^31 floats (MPI-3 counts)");
            if (slots <= 0) helper_.reset();  // this rank only sends
        }
    }

    // The loads of every rank (the counts blocks), their sum, the plan, and the float counts of the
    // row exchanges: rows [r0, r1) of an item are global positions in expert e's segment, rank q's
    // rows of e being [prefix(q, e), prefix(q + 1, e)).
    void llep_plan() {
        auto const P = static_cast<std::size_t>(comm_->size());
        auto const E = static_cast<std::size_t>(router_->num_experts());
        auto const B = block_width();
        auto const me = static_cast<std::size_t>(comm_->rank());
        for (std::size_t e = 0; e < E; ++e) {
            prefix_[e] = 0;
            for (std::size_t q = 0; q < P; ++q) prefix_[(q + 1) * E + e] = prefix_[q * E + e] + recv_meta_[q * B + 1 + e];
            global_load_[e] = prefix_[P * E + e];
        }
        balancer_->replan(global_load_);
        auto sc = send_counts(), rc = recv_counts();
        std::fill(sc.begin(), sc.end(), 0);
        std::fill(rc.begin(), rc.end(), 0);
        for (auto const& it : balancer_->plan_items()) {
            auto const h = static_cast<std::size_t>(it.worker);
            sc[h] += overlap(it, me);
            if (h == me)
                for (std::size_t q = 0; q < P; ++q) rc[q] += overlap(it, q);
        }
        std::int64_t const row = d_ + 1;
        std::int64_t received = 0;
        for (std::size_t p = 0; p < P; ++p) {
            received += rc[p];
            sc[p] *= row;
            rc[p] *= row;
        }
        rows_computed_ = received;
        displs_from_counts(counts_);
        plan_records();
    }

    // Rows of item `it` that rank q holds.
    std::int64_t overlap(balance::LlepItem const& it, std::size_t q) const {
        auto const E = static_cast<std::size_t>(router_->num_experts()), e = static_cast<std::size_t>(it.expert);
        return std::max<std::int64_t>(0, std::min<std::int64_t>(it.row_end, prefix_[(q + 1) * E + e]) -
                                             std::max<std::int64_t>(it.row_begin, prefix_[q * E + e]));
    }

    // f(e, h) once per (expert, rank) pair whose rank computes rows of an expert it does not own, in
    // plan order (an expert's items are consecutive in the plan).
    template <class F>
    void for_each_copy(F&& f) {
        std::fill(last_copy_.begin(), last_copy_.end(), -1);
        for (auto const& it : balancer_->plan_items()) {
            auto const h = static_cast<std::size_t>(it.worker);
            if (it.worker == placement_.rank_of(it.expert) || last_copy_[h] == it.expert) continue;
            last_copy_[h] = it.expert;
            f(it.expert, it.worker);
        }
    }

    // Which record slot of the copies each received expert takes (sources in rank order, then plan
    // order), and the float counts of the record exchange: a sender's records to rank h in plan order.
    void plan_records() {
        auto const P = static_cast<std::size_t>(comm_->size());
        int const me = comm_->rank();
        auto const n = record_counts_.size() / 4;
        std::span<std::int64_t> const c(record_counts_);
        auto sc = c.subspan(0, n), sd = c.subspan(n, n), rc = c.subspan(2 * n, n), rd = c.subspan(3 * n, n);
        std::fill(c.begin(), c.end(), 0);
        std::fill(slot_of_.begin(), slot_of_.end(), -1);
        for_each_copy([&](std::int32_t e, std::int32_t h) {
            if (placement_.rank_of(e) == me) ++sc[static_cast<std::size_t>(h)];
            if (h == me) ++rc[static_cast<std::size_t>(placement_.rank_of(e))];
        });
        displs_from_counts(c);
        // Slots: rank q's records start at rd[q] (in records), in plan order.
        for_each_copy([&](std::int32_t e, std::int32_t h) {
            if (h == me) slot_of_[static_cast<std::size_t>(e)] = rd[static_cast<std::size_t>(placement_.rank_of(e))]++;
        });
        for (std::size_t p = 0; p < P; ++p) {
            rd[p] -= rc[p];
            sc[p] *= record_floats_;
            sd[p] *= record_floats_;
            rc[p] *= record_floats_;
            rd[p] *= record_floats_;
        }
    }

    // The record exchange: this rank's records to the ranks that compute some of their rows, the
    // records of other ranks' experts straight into the copies' slots.
    void send_records(Remote const& rem) {
        auto const n = record_counts_.size() / 4;
        std::span<std::int64_t const> const c(record_counts_);
        auto const rb = static_cast<std::size_t>(record_floats_) * sizeof(float);
        int const me = comm_->rank();
        // Sender order: destinations ascending, then plan order (the receiver's slot order).
        std::int64_t at = 0;
        for (int h = 0; h < comm_->size(); ++h)
            for_each_copy([&](std::int32_t e, std::int32_t to) {
                if (to != h || placement_.rank_of(e) != me) return;
                std::memcpy(rem.records.data() + at * record_floats_, expert_->store().record(placement_.local_of(e)), rb);
                ++at;
            });
        std::span<float> into;
        if (helper_) {
            auto const bytes = helper_->store().resident_bytes();
            into = std::span<float>(reinterpret_cast<float*>(bytes.data()), bytes.size() / sizeof(float));
        }
        comm_->alltoallv(std::span<float const>(rem.records.data(), static_cast<std::size_t>(at * record_floats_)), c.subspan(0, n),
                         c.subspan(n, n), into, c.subspan(2 * n, n), c.subspan(3 * n, n));
    }

    // Step 2 under LLEP: this rank's rows of every item to the item's rank, destinations ascending,
    // within one in plan order, within an item in CSR order.
    void pack_planned(MatrixView<float const> x, RoutingResult const& r, Local const& loc) {
        auto const E = static_cast<std::size_t>(router_->num_experts());
        auto const me = static_cast<std::size_t>(comm_->rank());
        std::int64_t const d = d_, row = d_ + 1;
        auto const bytes = static_cast<std::size_t>(d) * sizeof(float);
        std::fill(loc.slot_rows.begin(), loc.slot_rows.begin() + r.num_tokens * r.k, -1);
        auto const sd = send_displs();
        std::span<std::int64_t> const cursor = cursor_;
        std::int64_t remote = 0;
        for (std::size_t p = 0; p < cursor.size(); ++p) cursor[p] = sd[p] / row;
        for (auto const& it : balancer_->plan_items()) {
            auto const e = static_cast<std::size_t>(it.expert), h = static_cast<std::size_t>(it.worker);
            std::int64_t const mine0 = prefix_[me * E + e];
            std::int64_t const a = std::max<std::int64_t>(it.row_begin, mine0);
            std::int64_t const b = std::min<std::int64_t>(it.row_end, prefix_[(me + 1) * E + e]);
            for (std::int64_t g = a; g < b; ++g) {
                std::int32_t const i = r.offsets[it.expert] + static_cast<std::int32_t>(g - mine0);
                std::int64_t const pos = cursor[h]++;
                float* dst = loc.xfer.data() + pos * row;
                std::memcpy(dst, x.row(r.token_ids[i]), bytes);
                dst[d] = r.weights[i];
                loc.slot_rows[static_cast<std::size_t>(r.slots[i])] = static_cast<std::int32_t>(pos);
            }
            if (h != me && b > a) remote += b - a;
        }
        rows_sent_remote_ = remote;
    }

    // Step 5 under LLEP: this rank's items in plan order, each on its rows from every source (sources
    // in rank order: the expert's global CSR order), with its own expert or the copy received for it.
    void run_planned_items(Remote const& rem) {
        auto const P = static_cast<std::size_t>(comm_->size());
        auto const me = comm_->rank();
        std::int64_t const d = d_, row = d_ + 1;
        auto const bytes = static_cast<std::size_t>(d) * sizeof(float);
        auto const rd = recv_displs();
        std::span<std::int64_t> const cursor = cursor_;
        for (std::size_t q = 0; q < P; ++q) cursor[q] = rd[q] / row;
        auto const items = balancer_->plan_items();
        for (std::size_t i = 0; i < items.size(); ++i) {
            auto const& it = items[i];
            if (it.worker != me) continue;
            std::int64_t M = 0;
            for (std::size_t q = 0; q < P; ++q)
                for (std::int64_t j = 0, n = overlap(it, q); j < n; ++j, ++M) {
                    float const* src = rem.recv.data() + (cursor[q] + j) * row;
                    std::memcpy(rem.gathered.data() + M * d, src, bytes);
                    rem.row_w[static_cast<std::size_t>(M)] = src[d];
                }
            Workspace ews = rem.expert_ws;
            MatrixView<float const> const in(rem.gathered.data(), M, d);
            std::span<float const> const w(rem.row_w.data(), static_cast<std::size_t>(M));
            MatrixView<float> const out(rem.out.data(), M, d);
            if (placement_.rank_of(it.expert) == me)
                expert_->run(arch{}, placement_.local_of(it.expert), in, w, out, ews);
            else
                helper_->run(arch{}, slot_of_[static_cast<std::size_t>(it.expert)], in, w, out, ews);
            M = 0;
            for (std::size_t q = 0; q < P; ++q) {
                std::int64_t const n = overlap(it, q);
                for (std::int64_t j = 0; j < n; ++j, ++M)
                    std::memcpy(rem.recv.data() + (cursor[q] + j) * row, rem.out.data() + M * d, bytes);
                cursor[q] += n;
            }
            balancer_->record_run(i, me);
        }
    }

    // A rank's expert store (store/expert_store.hpp) sees the routing of the rank's own tokens over its
    // own experts: the rows other ranks send carry no token it could follow from call to call. Its
    // prediction accuracy and routing consistency are this rank's share.
    void observe_store(RoutingResult const& r) {
        if constexpr (requires { expert_->store(); }) {
            if (!expert_ || expert_->store().residency() == store::Residency::resident) return;
            int const rank = comm_->rank();
            expert_->store().observe(r, [&](std::int64_t e) -> std::int64_t {
                return placement_.rank_of(e) == rank ? placement_.local_of(e) : -1;
            });
        }
    }

    // Step 5: each local expert once, on its rows from every source, outputs written over the inputs.
    void run_local_experts(Remote const& rem) {
        if (!expert_) return;
        auto const P = static_cast<std::size_t>(comm_->size());
        auto const B = block_width();
        std::int64_t const d = d_, row = d_ + 1;
        auto const bytes = static_cast<std::size_t>(d) * sizeof(float);
        auto rd = recv_displs();
        // cursor[q]: the first row from source q not yet consumed (rows of (d + 1) floats).
        std::span<std::int64_t> const cursor = cursor_;
        for (std::size_t q = 0; q < P; ++q) cursor[q] = rd[q] / row;
        for (std::int64_t l = 0; l < placement_.num_local(comm_->rank()); ++l) {
            std::int64_t M = 0;
            for (std::size_t q = 0; q < P; ++q)
                for (std::int64_t i = 0; i < recv_meta_[q * B + 1 + static_cast<std::size_t>(l)]; ++i, ++M) {
                    float const* src = rem.recv.data() + (cursor[q] + i) * row;
                    std::memcpy(rem.gathered.data() + M * d, src, bytes);
                    rem.row_w[static_cast<std::size_t>(M)] = src[d];
                }
            if (M > 0) {
                Workspace ews = rem.expert_ws;
                expert_->run(arch{}, l, MatrixView<float const>(rem.gathered.data(), M, d),
                             std::span<float const>(rem.row_w.data(), static_cast<std::size_t>(M)),
                             MatrixView<float>(rem.out.data(), M, d), ews);
            }
            M = 0;
            for (std::size_t q = 0; q < P; ++q) {
                std::int64_t const c = recv_meta_[q * B + 1 + static_cast<std::size_t>(l)];
                for (std::int64_t i = 0; i < c; ++i, ++M)
                    std::memcpy(rem.recv.data() + (cursor[q] + i) * row, rem.out.data() + M * d, bytes);
                cursor[q] += c;
            }
        }
    }

    Comm* comm_;
    ExpertPlacement placement_;
    Config cfg_;
    Weights weights_;
    std::optional<Router> router_;
    std::optional<Balancer> balancer_;
    std::optional<Expert> expert_;
    std::optional<Expert> helper_;  // LLEP: copies of other ranks' experts (records overwritten per call)
    std::int64_t d_ = 0;
    std::vector<std::int64_t> send_meta_, recv_meta_;  // [P, 1 + max_local]: status, rows per local expert
    std::vector<std::int64_t> counts_;                 // send counts, send displs, recv counts, recv displs [4, P]
    std::vector<std::int64_t> cursor_;                 // [P]
    std::int64_t rows_computed_ = 0, rows_sent_remote_ = 0;
    // LLEP: prefix_[q, e] = rows of expert e on ranks < q ([P+1, E]); the summed loads [E]; each received
    // expert's copy slot [E]; the record exchange's counts [4, P]; for_each_copy's marks [P].
    std::vector<std::int64_t> prefix_, global_load_, slot_of_, record_counts_, last_copy_;
    std::int64_t record_floats_ = 0, records_sent_max_ = 0;
    WorkspaceBuffer buffer_;
};

}  // namespace smoe::inline v0::dist
