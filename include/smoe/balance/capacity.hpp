#pragma once
// smoe::balance::Capacity: capacity factor with token dropping (balance.md §3).
//
//   C = ceil((T·k / E) · capacity_factor)   in IEEE double, in that order (Megatron get_capacity)
//   C = max(C, min_capacity), then rounded up to a multiple of capacity_alignment
//
// An expert with more than C slots keeps C of them, chosen by the drop policy; a dropped slot
// contributes nothing, kept slots keep their weights (unless renormalize_after_drop), and a token
// whose every slot was dropped gets zero routed output (shared experts still apply). Dropped slots
// are marked in RoutingResult::dropped and counted in stats().

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>
#include <string_view>

#include "smoe/balance/context.hpp"
#include "smoe/balance/stats_collector.hpp"
#include "smoe/core/error.hpp"
#include "smoe/core/limits.hpp"
#include "smoe/core/workspace.hpp"

namespace smoe::inline v0::balance {

enum class DropPolicy {
    probs,          // keep the C largest final weights, ties to the lower token (Megatron default)
    position,       // keep the first C in token order (Megatron, DeepSpeed, HF Switch)
    slot_priority,  // every slot-0 choice in token order, then slot 1, ... (DeepSpeed top2gating)
};

inline char const* to_string(DropPolicy p) {
    return p == DropPolicy::probs ? "probs" : p == DropPolicy::position ? "position" : "slot_priority";
}

// moe_token_drop_policy as config files spell it; anything else is an error naming the key.
inline DropPolicy parse_drop_policy(std::string_view name) {
    if (name == "probs") return DropPolicy::probs;
    if (name == "position") return DropPolicy::position;
    if (name == "slot_priority") return DropPolicy::slot_priority;
    smoe::detail::fail("moe_token_drop_policy", "\"" + std::string(name) + "\"", "\"probs\", \"position\" or \"slot_priority\"");
}

struct CapacityConfig {
    double capacity_factor = 0.0;               // moe_expert_capacity_factor, 0 < f <= limits::kMaxCapacityFactor
    DropPolicy drop_policy = DropPolicy::probs;  // moe_token_drop_policy
    bool pad_to_capacity = false;               // moe_pad_expert_input_to_capacity
    std::int64_t min_capacity = 0;              // DeepSpeed's name; smoe default 0; <= limits::kMaxTokens
    std::int64_t capacity_alignment = 1;        // Tutel's alignment; <= limits::kMaxTokens
    bool renormalize_after_drop = false;        // DeepSpeed: kept weights / their sum
    StatsOptions stats{};

    void validate() const {
        // Padded to capacity, C rows per expert are workspace: every term of C is bounded.
        if (!(capacity_factor > 0.0 && capacity_factor <= limits::kMaxCapacityFactor))
            smoe::detail::fail("moe_expert_capacity_factor", capacity_factor,
                               "0 < moe_expert_capacity_factor <= 1024 (smoe::limits::kMaxCapacityFactor)");
        smoe::detail::require_in_range("min_capacity", min_capacity, 0, limits::kMaxTokens, "smoe::limits::kMaxTokens");
        smoe::detail::require_in_range("capacity_alignment", capacity_alignment, 1, limits::kMaxTokens,
                                       "smoe::limits::kMaxTokens");
        stats.validate();
    }

    // The capacity for T tokens with k slots each over E experts.
    std::int64_t capacity(std::int64_t T, std::int64_t k, std::int64_t E) const {
        double const c = std::ceil((double(T) * double(k) / double(E)) * capacity_factor);
        auto cap = static_cast<std::int64_t>(std::min(c, 9.0e18));
        cap = std::max(cap, min_capacity);
        return (cap + capacity_alignment - 1) / capacity_alignment * capacity_alignment;
    }
};

class Capacity : public StatsCollector {
public:
    using Config = CapacityConfig;
    static constexpr bool drops_tokens = true;

    explicit Capacity(Config const& cfg) : StatsCollector((cfg.validate(), cfg.stats)), cfg_(cfg) {}

    Config const& config() const { return cfg_; }
    // The capacity of the last call.
    std::int64_t last_capacity() const { return last_capacity_; }

    std::size_t workspace_size(std::int64_t max_tokens) const {
        WorkspaceSize size;
        size.take<std::int32_t>(static_cast<std::size_t>(max_tokens));
        return size.bytes();
    }

    void plan(BalanceContext& ctx) {
        std::int64_t const E = ctx.num_experts, C = cfg_.capacity(ctx.num_tokens, ctx.k, E);
        last_capacity_ = C;
        auto order = ctx.scratch.take<std::int32_t>(static_cast<std::size_t>(ctx.num_tokens));
        bool any_dropped = false;
        for (std::int64_t e = 0; e < E; ++e) {
            std::int32_t const begin = ctx.csr.offsets[e], load = ctx.load(e);
            if (load <= C) continue;
            any_dropped = true;
            mark_dropped(ctx, begin, load, C, order);
        }
        if (any_dropped) compact(ctx);
        if (any_dropped && cfg_.renormalize_after_drop) renormalize(ctx);
        if (cfg_.pad_to_capacity) ctx.padded_rows = C;
        record(ctx);
    }

private:
    // Rows [begin, begin + load) of one expert, in token order; marks all but C of them dropped.
    void mark_dropped(BalanceContext& ctx, std::int32_t begin, std::int32_t load, std::int64_t C,
                      std::span<std::int32_t> order) const {
        auto const& csr = ctx.csr;
        std::int32_t* const rows = order.data();
        for (std::int32_t r = 0; r < load; ++r) rows[r] = begin + r;
        auto const slot_of = [&](std::int32_t row) { return csr.slots[row] % ctx.k; };
        // Rows are in increasing token order, so breaking ties by row gives "ties to the lower
        // token"; with that total order nth_element finds exactly the kept set, in O(load) and
        // without the buffer std::stable_sort would allocate on the hot path.
        switch (cfg_.drop_policy) {
            case DropPolicy::probs:
                std::nth_element(rows, rows + C, rows + load, [&](std::int32_t a, std::int32_t b) {
                    return csr.weights[a] > csr.weights[b] || (csr.weights[a] == csr.weights[b] && a < b);
                });
                break;
            case DropPolicy::position:
                break;
            case DropPolicy::slot_priority:
                std::nth_element(rows, rows + C, rows + load, [&](std::int32_t a, std::int32_t b) {
                    return slot_of(a) < slot_of(b) || (slot_of(a) == slot_of(b) && a < b);
                });
                break;
        }
        for (std::int64_t i = C; i < load; ++i) {
            std::int32_t const slot = csr.slots[rows[i]];
            ctx.dropped[slot] = 1;
            csr.slot_rows[slot] = -1;
            csr.token_ids[rows[i]] = -1;  // marks the row for compact()
        }
    }

    // Removes dropped rows from the CSR, keeping token order within each expert.
    static void compact(BalanceContext& ctx) {
        auto const& csr = ctx.csr;
        std::int32_t out = 0;
        for (std::int64_t e = 0; e < ctx.num_experts; ++e) {
            std::int32_t const begin = csr.offsets[e], end = csr.offsets[e + 1];
            csr.offsets[e] = out;
            for (std::int32_t r = begin; r < end; ++r) {
                if (csr.token_ids[r] < 0) continue;
                csr.token_ids[out] = csr.token_ids[r];
                csr.weights[out] = csr.weights[r];
                csr.slots[out] = csr.slots[r];
                csr.slot_rows[csr.slots[r]] = out;
                ++out;
            }
        }
        csr.offsets[ctx.num_experts] = out;
    }

    // DeepSpeed: the surviving weights of a token that lost a slot are divided by their sum.
    static void renormalize(BalanceContext& ctx) {
        auto const& csr = ctx.csr;
        for (std::int64_t t = 0; t < ctx.num_tokens; ++t) {
            bool lost = false;
            double sum = 0.0;
            for (std::int64_t j = 0; j < ctx.k; ++j) {
                std::int32_t const row = csr.slot_rows[t * ctx.k + j];
                lost = lost || ctx.dropped[t * ctx.k + j];
                if (row >= 0) sum += csr.weights[row];
            }
            if (!lost || sum <= 0.0) continue;
            for (std::int64_t j = 0; j < ctx.k; ++j) {
                std::int32_t const row = csr.slot_rows[t * ctx.k + j];
                if (row < 0) continue;
                csr.weights[row] = static_cast<float>(csr.weights[row] / sum);
                ctx.expert_weights(t, j) = csr.weights[row];
            }
        }
    }

    Config cfg_;
    std::int64_t last_capacity_ = 0;
};

}  // namespace smoe::inline v0::balance
