#pragma once
// Load statistics of a sharded layer (balance.md §6 over ranks). Each rank's balancer records the
// routing of that rank's own tokens (per-rank LoadStats over all E global experts); summing them over
// ranks gives the global tokens per expert, and the experts' placement turns those into the rows each
// rank computed, whose max / mean is the imbalance between ranks (the straggler that every rank waits
// for in the return exchange).

#include <algorithm>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "smoe/core/stats.hpp"
#include "smoe/dist/communicator.hpp"
#include "smoe/dist/placement.hpp"

namespace smoe::inline v0::dist {

struct ShardedLoadStats {
    // The per-expert counters of every rank summed (last call and cumulative); tokens and slots are
    // summed too, `calls` is one rank's count. aux_loss and z_loss stay empty: they are per rank.
    LoadStats global;
    std::vector<std::int64_t> rank_load;              // [P] kept rows rank p's experts computed, last call
    std::vector<std::uint64_t> cumulative_rank_load;  // [P] the same since the balancers' reset_stats()

    // max_p load / mean_p load, 0 when nothing was computed.
    double rank_imbalance() const { return max_over_mean(rank_load); }
    double cumulative_rank_imbalance() const { return max_over_mean(cumulative_rank_load); }

private:
    template <class V>
    static double max_over_mean(std::vector<V> const& load) {
        if (load.empty()) return 0.0;
        double sum = 0;
        for (auto v : load) sum += double(v);
        double const mean = sum / double(load.size());
        return mean > 0 ? double(*std::max_element(load.begin(), load.end())) / mean : 0.0;
    }
};

// Collective: every rank passes its own balancer's stats; every rank gets the same result.
template <Communicator C>
ShardedLoadStats sum_load_stats(C& comm, LoadStats const& local, ExpertPlacement const& placement) {
    if (local.num_experts() != placement.num_experts())
        smoe::detail::fail("stats.num_experts", local.num_experts(),
                           "the placement's num_experts (" + std::to_string(placement.num_experts()) + ")");
    auto const E = static_cast<std::size_t>(local.num_experts());
    constexpr std::size_t kScalars = 6;
    std::vector<std::int64_t> v(6 * E + kScalars);
    auto put = [&](std::size_t block, auto const& counts) {
        for (std::size_t e = 0; e < E; ++e) v[block * E + e] = static_cast<std::int64_t>(counts[e]);
    };
    put(0, local.routed);
    put(1, local.kept);
    put(2, local.dropped);
    put(3, local.cumulative_routed);
    put(4, local.cumulative_kept);
    put(5, local.cumulative_dropped);
    std::int64_t* s = v.data() + 6 * E;
    s[0] = local.null_slots;
    s[1] = local.tokens;
    s[2] = local.slots;
    s[3] = static_cast<std::int64_t>(local.cumulative_tokens);
    s[4] = static_cast<std::int64_t>(local.cumulative_slots);
    s[5] = static_cast<std::int64_t>(local.cumulative_null_slots);
    comm.allreduce_sum(std::span<std::int64_t>(v));

    ShardedLoadStats out;
    LoadStats& g = out.global;
    g.resize(local.num_experts());
    for (std::size_t e = 0; e < E; ++e) {
        g.routed[e] = v[e];
        g.kept[e] = v[E + e];
        g.dropped[e] = v[2 * E + e];
        g.cumulative_routed[e] = static_cast<std::uint64_t>(v[3 * E + e]);
        g.cumulative_kept[e] = static_cast<std::uint64_t>(v[4 * E + e]);
        g.cumulative_dropped[e] = static_cast<std::uint64_t>(v[5 * E + e]);
    }
    g.null_slots = s[0];
    g.tokens = s[1];
    g.slots = s[2];
    g.cumulative_tokens = static_cast<std::uint64_t>(s[3]);
    g.cumulative_slots = static_cast<std::uint64_t>(s[4]);
    g.cumulative_null_slots = static_cast<std::uint64_t>(s[5]);
    g.calls = local.calls;

    auto const P = static_cast<std::size_t>(placement.num_ranks());
    out.rank_load.assign(P, 0);
    out.cumulative_rank_load.assign(P, 0);
    for (std::size_t e = 0; e < E; ++e) {
        auto const p = static_cast<std::size_t>(placement.rank_of(static_cast<std::int64_t>(e)));
        out.rank_load[p] += g.kept[e];
        out.cumulative_rank_load[p] += g.cumulative_kept[e];
    }
    return out;
}

}  // namespace smoe::inline v0::dist
