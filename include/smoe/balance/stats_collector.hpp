#pragma once
// Statistics every balancer fills (balance.md §6): the base class of the balancers. Counting is O(E)
// from the CSR offsets; the losses need a pass over the logits and run only when asked for.

#include <cmath>
#include <optional>

#include "smoe/balance/context.hpp"
#include "smoe/core/balance_loss.hpp"
#include "smoe/core/error.hpp"
#include "smoe/core/stats.hpp"

namespace smoe::inline v0::balance {

struct StatsOptions {
    bool collect = true;                   // per-expert counters (O(E) per call)
    std::optional<double> aux_loss_coeff;  // set: Megatron's switch loss times this (moe_aux_loss_coeff)
    std::optional<double> z_loss_coeff;    // set: router z-loss times this (moe_z_loss_coeff)

    void validate() const {
        if (aux_loss_coeff && !std::isfinite(*aux_loss_coeff))
            smoe::detail::fail("moe_aux_loss_coeff", *aux_loss_coeff, "a finite coefficient");
        if (z_loss_coeff && !std::isfinite(*z_loss_coeff)) smoe::detail::fail("moe_z_loss_coeff", *z_loss_coeff, "a finite coefficient");
    }
};

class StatsCollector {
public:
    explicit StatsCollector(StatsOptions const& options = {}) : options_(options) { options_.validate(); }

    LoadStats const& stats() const { return stats_; }
    void reset_stats() { stats_.reset(); }
    StatsOptions const& stats_options() const { return options_; }

protected:
    void record(BalanceContext const& ctx) {
        if (stats_.num_experts() != ctx.num_experts) stats_.resize(ctx.num_experts);
        if (options_.collect)
            stats_.record(ctx.routed_offsets, ctx.csr.offsets, ctx.num_tokens, ctx.num_tokens * ctx.k, ctx.null_slots);
        stats_.aux_loss.reset();
        stats_.z_loss.reset();
        if (ctx.num_tokens > 0 && options_.aux_loss_coeff)
            stats_.aux_loss = aux_loss_megatron(ctx.logits, ctx.k, ctx.score_func, *options_.aux_loss_coeff);
        if (options_.z_loss_coeff) stats_.z_loss = z_loss(ctx.logits, *options_.z_loss_coeff);
    }

private:
    StatsOptions options_;
    LoadStats stats_;
};

}  // namespace smoe::inline v0::balance
