#pragma once
// Load statistics (balance.md §6): per-expert slot counts of the last call, the same counts
// accumulated over calls until reset(), and the derived imbalance metrics. Counting costs O(E) per
// call: the counts come from the CSR offsets the dispatch pass builds anyway, not from a second pass
// over the tokens.

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <string>
#include <optional>
#include <span>
#include <vector>

#include "smoe/core/error.hpp"
#include "smoe/macros.hpp"

namespace smoe::inline v0 {

// Which counts a metric is computed on: the router's choice (router imbalance) or what the experts
// computed after the balancer (compute imbalance).
enum class LoadKind { routed, kept };

struct LoadStats {
    // Last call.
    std::vector<std::int64_t> routed;   // [E] slots per real expert before the balancer
    std::vector<std::int64_t> kept;     // [E] after it
    std::vector<std::int64_t> dropped;  // [E] routed - kept
    std::int64_t null_slots = 0;        // slots given to null experts (not load)
    std::int64_t tokens = 0;            // T
    std::int64_t slots = 0;             // T * K (K: slots per token of the call)

    // Accumulated since the last reset(): the same counters summed over calls.
    std::vector<std::uint64_t> cumulative_routed, cumulative_kept, cumulative_dropped;
    std::uint64_t cumulative_tokens = 0, cumulative_slots = 0, cumulative_null_slots = 0, calls = 0;

    // Training-time values of the last call, computed only when the balancer's StatsOptions ask
    // (core/balance_loss.hpp): Megatron's switch load-balancing loss and the router z-loss, each times
    // its coefficient.
    std::optional<double> aux_loss, z_loss;

    LoadStats() = default;
    explicit LoadStats(std::int64_t num_experts) { resize(num_experts); }

    void resize(std::int64_t num_experts) {
        auto const E = static_cast<std::size_t>(num_experts);
        routed.assign(E, 0);
        kept.assign(E, 0);
        dropped.assign(E, 0);
        cumulative_routed.assign(E, 0);
        cumulative_kept.assign(E, 0);
        cumulative_dropped.assign(E, 0);
        reset();
    }
    std::int64_t num_experts() const { return static_cast<std::int64_t>(routed.size()); }

    // Zeroes the accumulated counters (EPLB-style windows); the last call's counts stay readable.
    void reset() {
        std::fill(cumulative_routed.begin(), cumulative_routed.end(), 0);
        std::fill(cumulative_kept.begin(), cumulative_kept.end(), 0);
        std::fill(cumulative_dropped.begin(), cumulative_dropped.end(), 0);
        cumulative_tokens = cumulative_slots = cumulative_null_slots = calls = 0;
    }

    // Records one call from per-expert CSR offsets before ([E+1], routed) and after ([E+1], kept)
    // the balancer. O(E).
    void record(std::span<std::int32_t const> routed_offsets, std::span<std::int32_t const> kept_offsets,
                std::int64_t num_tokens, std::int64_t num_slots, std::int64_t num_null_slots) {
        if (routed_offsets.size() != routed.size() + 1 || kept_offsets.size() != routed.size() + 1)
            detail::fail("offsets", "length " + std::to_string(routed_offsets.size()) + " / " + std::to_string(kept_offsets.size()),
                         "num_experts + 1 = " + std::to_string(routed.size() + 1) + " entries each");
        count_experts(routed_offsets.data(), kept_offsets.data(), routed.size(), routed.data(), kept.data(), dropped.data(),
                      cumulative_routed.data(), cumulative_kept.data(), cumulative_dropped.data());
        tokens = num_tokens;
        slots = num_slots;
        null_slots = num_null_slots;
        cumulative_tokens += static_cast<std::uint64_t>(num_tokens);
        cumulative_slots += static_cast<std::uint64_t>(num_slots);
        cumulative_null_slots += static_cast<std::uint64_t>(num_null_slots);
        ++calls;
    }

    std::vector<std::int64_t> const& counts(LoadKind kind) const { return kind == LoadKind::routed ? routed : kept; }

    // Derived metrics of the last call (balance.md §6). With no load (T = 0) every ratio is 0.
    double mean_load(LoadKind kind = LoadKind::kept) const {
        auto const& c = counts(kind);
        if (c.empty()) return 0.0;
        double s = 0;
        for (auto v : c) s += double(v);
        return s / double(c.size());
    }
    std::int64_t max_rows(LoadKind kind = LoadKind::kept) const {
        auto const& c = counts(kind);
        return c.empty() ? 0 : *std::max_element(c.begin(), c.end());
    }
    double max_over_mean(LoadKind kind = LoadKind::kept) const {
        double const m = mean_load(kind);
        return m > 0 ? double(max_rows(kind)) / m : 0.0;
    }
    double max_violation(LoadKind kind = LoadKind::kept) const {  // MaxVio
        double const m = mean_load(kind);
        return m > 0 ? (double(max_rows(kind)) - m) / m : 0.0;
    }
    double cv_squared(LoadKind kind = LoadKind::kept) const {  // var(c) / mean²
        double const m = mean_load(kind);
        if (m <= 0) return 0.0;
        double v = 0;
        for (auto c : counts(kind)) v += (double(c) - m) * (double(c) - m);
        return v / double(counts(kind).size()) / (m * m);
    }
    std::int64_t dead_experts(LoadKind kind = LoadKind::kept) const {
        auto const& c = counts(kind);
        return std::count(c.begin(), c.end(), 0);
    }
    std::int64_t active_experts(LoadKind kind = LoadKind::kept) const { return num_experts() - dead_experts(kind); }
    // Experts that got no kept slot over the whole accumulation window.
    std::int64_t dead_experts_cumulative() const {
        return std::count(cumulative_kept.begin(), cumulative_kept.end(), std::uint64_t{0});
    }
    double drop_rate() const {
        if (slots == 0) return 0.0;
        double d = 0;
        for (auto v : dropped) d += double(v);
        return d / double(slots);
    }
    // Σ_e (ceil(c_e / M) M - c_e) / Σ_e ceil(c_e / M) M for GEMM tile height M.
    double tile_padding_fraction(std::int64_t tile_rows, LoadKind kind = LoadKind::kept) const {
        if (tile_rows < 1) detail::fail("tile_rows", tile_rows, "a tile height >= 1");
        double padded = 0, pad = 0;
        for (auto c : counts(kind)) {
            std::int64_t const p = (c + tile_rows - 1) / tile_rows * tile_rows;
            padded += double(p);
            pad += double(p - c);
        }
        return padded > 0 ? pad / padded : 0.0;
    }

private:
    // Six separate arrays could alias as far as the compiler knows; restrict on the parameters (GCC
    // ignores it on local pointers) lets the loop vectorise: about 0.5 µs -> well under 0.1 µs at
    // E = 256, small next to routing even at T = 1.
    static void count_experts(std::int32_t const* SMOE_RESTRICT ro, std::int32_t const* SMOE_RESTRICT ko, std::size_t E,
                              std::int64_t* SMOE_RESTRICT r, std::int64_t* SMOE_RESTRICT k, std::int64_t* SMOE_RESTRICT d,
                              std::uint64_t* SMOE_RESTRICT cr, std::uint64_t* SMOE_RESTRICT ck, std::uint64_t* SMOE_RESTRICT cd) {
        for (std::size_t e = 0; e < E; ++e) {
            std::int64_t const a = ro[e + 1] - ro[e], b = ko[e + 1] - ko[e];
            r[e] = a;
            k[e] = b;
            d[e] = a - b;
            cr[e] += static_cast<std::uint64_t>(a);
            ck[e] += static_cast<std::uint64_t>(b);
            cd[e] += static_cast<std::uint64_t>(a - b);
        }
    }
};

}  // namespace smoe::inline v0
