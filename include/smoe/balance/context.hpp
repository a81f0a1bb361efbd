#pragma once
// What a balancer sees and may change (balance.md §1): it runs after the router and the counting sort
// and before the experts. It may drop (token, expert) pairs (remove their CSR rows, mark them in
// `dropped`), renormalise kept weights, ask for padded segments, and it records the statistics.

#include <cstdint>
#include <span>

#include "smoe/core/view.hpp"
#include "smoe/core/workspace.hpp"
#include "smoe/kernels/cpu/dispatch.hpp"
#include "smoe/router/topk_config.hpp"

namespace smoe::inline v0::balance {

struct BalanceContext {
    std::int64_t num_tokens = 0;   // T
    std::int64_t num_experts = 0;  // E (CSR rows)
    std::int64_t k = 0;            // K: slots per token of this call

    MatrixView<float const> logits;                  // [T, num_logits]: for the losses
    router::ScoreFunc score_func = router::ScoreFunc::softmax;  // how the router turns logits into scores
    MatrixView<std::int32_t const> expert_ids;       // [T, K]
    MatrixView<float> expert_weights;                // [T, K]; changed only by renormalisation
    kernels::cpu::ExpertMajor csr;                   // the dispatch CSR; a dropping balancer compacts it
    std::span<std::int32_t const> routed_offsets;    // [E+1] a copy of the offsets before the balancer
    std::span<std::uint8_t> dropped;                 // [T*K], zero on entry; 1 marks a dropped slot
                                                     // (empty for balancers that never drop)
    std::int64_t null_slots = 0;                     // slots given to null experts (not load)

    // Out: when > 0, every expert's segment is padded to exactly this many rows (zero rows of weight
    // 0, computed and never scattered).
    std::int64_t padded_rows = 0;

    Workspace scratch;  // the balancer's workspace_size(T) bytes

    std::int32_t load(std::int64_t e) const { return csr.offsets[e + 1] - csr.offsets[e]; }
};

}  // namespace smoe::inline v0::balance
