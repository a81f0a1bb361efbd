#pragma once
// smoe::balance::LeastLoaded: LLEP, least-loaded rerouting (research.md §6, completing balance.md §5;
// Nguyen, Pandit, Xu, Xiong, Joty, "Least-Loaded Expert Parallelism: Load Balancing An Imbalanced
// Mixture-of-Experts", arXiv 2601.17111; SalesforceAIResearch/LeastLoadedEP llep/gpt_oss_llep.py
// compute_llep_lpt_plan, exactly).
//
// It changes where rows are computed, never which rows exist or their weights: rows of an overloaded
// worker's experts go to other workers, which use expert e's weights (on one machine the same view; in
// smoe::dist a copy sent once per call and (e, helper) pair). Routing, statistics of balance.md §6 and
// the output are those of balance::None, bit for bit, for any W, α, m, λ (experts.md rules 2 and 3).
//
//   c_e: rows of expert e; native(e): its worker (dist::ExpertPlacement, default contiguous(E, W))
//   native_load[w] = Σ_(native(e) = w) c_e;  ratio = max / mean (1 when the mean is 0)
//   the plan runs when λ = 0 or ratio >= λ, else every row stays native
//   cap = ⌊α · ⌊Σc / W⌋⌋ (Σc when ⌊Σc / W⌋ = 0), at least 1; eff(w) = assigned[w] + pending[w]
//   experts with c_e > 0 by (c_e descending, e ascending), g = native(e): pending[g] −= c_e,
//   avail = cap − eff(g);
//     avail >= c_e: all rows on g
//     0 < avail < c_e: rows [0, avail) on g; then chunks to the workers ≠ g ordered by (eff, id),
//       re-ordered every chunk: the first with room = cap − eff > 0 whose chunk min(left, room) is >= m
//       or finishes the expert takes it; none: all that is left goes to the first, past cap
//     avail <= 0: the same walk over one ordering made once; what is left goes to its first worker
//   (W = 1: everything stays on g). Rows are positions in e's CSR segment (token id ascending).
//
// Example (research.md §6 B): c = [40, 4, 4, 4, 30, 2, 2, 2], W = 4, α = 1.1, m = 1024: cap 24; expert
// 0 rows [0, 20) on worker 0, [20, 40) on worker 3 (20 < m, but it finishes the expert); expert 4
// [0, 22) on worker 2, [22, 30) on worker 1; planned loads [24, 16, 24, 24]. α = 1, m = 1: [22, 22, 22, 22].
//
//   using L = smoe::MoELayer<smoe::router::TopK, smoe::expert::SwiGLU<float>, smoe::balance::LeastLoaded>;
//   cfg.balance = {.num_experts = E, .num_workers = 4};
//   layer.set_thread_pool(pool);                           // W = 4 tasks over the pool's threads
//   layer.forward(x, y);  layer.balancer().plan_items();   // (expert, worker, rows) of the last call
//
// On one machine the workers are the layer's tasks (§6): with a two-phase expert (SwiGLU, QuantSwiGLU,
// Film) MoELayer runs one pool task per worker, which computes that worker's items (both phases, every
// panel), instead of splitting each expert by weight panels; an expert without phases gets the same
// one task per worker, each calling run() on its items with an expert workspace of its own. executed()
// records, per item, the task and the thread that ran it. W should be the pool's thread count (W tasks
// over fewer threads share them; more threads than W idle). In smoe::dist::MoELayer the workers are
// the ranks: every rank gathers every rank's loads, replan()s on their sum (the same plan everywhere),
// and a helper rank receives the packed record of each expert it computes rows of (dist/layer.hpp).

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <numeric>
#include <optional>
#include <span>
#include <string>
#include <thread>
#include <vector>

#include "smoe/balance/context.hpp"
#include "smoe/balance/stats_collector.hpp"
#include "smoe/core/error.hpp"
#include "smoe/core/limits.hpp"
#include "smoe/dist/placement.hpp"

namespace smoe::inline v0::balance {

struct LeastLoadedConfig {
    std::int64_t num_experts = 0;            // E, 1 <= E <= limits::kMaxExperts
    std::int64_t num_workers = 0;            // llep_num_workers W, 1 <= W <= limits::kMaxThreads
    double max_tokens_factor = 1.1;          // llep_max_tokens_factor α > 0, finite (the code's default)
    std::int64_t min_tokens_per_gemm = 1024; // llep_min_tokens_per_gemm m >= 1
    double adaptive_ratio = 0.0;             // llep_adaptive_ratio λ >= 0; 0 = always plan
    std::optional<dist::ExpertPlacement> placement;  // default contiguous(E, W)
    StatsOptions stats{};

    void validate() const {
        using smoe::detail::fail;
        smoe::detail::require_in_range("num_experts", num_experts, 1, limits::kMaxExperts, "smoe::limits::kMaxExperts");
        smoe::detail::require_in_range("llep_num_workers", num_workers, 1, limits::kMaxThreads, "smoe::limits::kMaxThreads");
        if (!(std::isfinite(max_tokens_factor) && max_tokens_factor > 0.0))
            fail("llep_max_tokens_factor", max_tokens_factor, "a finite factor > 0");
        if (min_tokens_per_gemm < 1) fail("llep_min_tokens_per_gemm", min_tokens_per_gemm, "at least 1 row");
        if (!(std::isfinite(adaptive_ratio) && adaptive_ratio >= 0.0))
            fail("llep_adaptive_ratio", adaptive_ratio, "a finite ratio >= 0 (0: always plan)");
        if (placement && (placement->num_experts() != num_experts || placement->num_ranks() != num_workers))
            fail("placement", std::to_string(placement->num_experts()) + " experts on " + std::to_string(placement->num_ranks()) + " workers",
                 "num_experts = " + std::to_string(num_experts) + " on llep_num_workers = " + std::to_string(num_workers));
        stats.validate();
    }
};

// Rows [row_begin, row_end) of expert `expert`'s CSR segment, computed by `worker`.
struct LlepItem {
    std::int32_t expert, worker, row_begin, row_end;
    friend bool operator==(LlepItem const&, LlepItem const&) = default;
};

// Who computed a plan item: the layer's task (the plan's worker, -1 until run) and its thread.
struct LlepRun {
    std::int32_t worker = -1;
    std::thread::id thread{};
};

// The per-call statistics of research.md §6 (all 0 for T = 0).
struct LlepStats {
    std::vector<std::int64_t> native_load, planned_load;  // [W]
    double native_ratio = 0.0, planned_ratio = 0.0;      // max / mean of each
    std::int64_t spilled_rows = 0;                        // rows computed off their native worker
    std::int64_t weight_copies = 0;                       // pairs (e, w != native(e)) that receive rows
    bool plan_ran = false;
};

// The plan for loads c [E] (any source: a CSR's segment lengths, a count table). Writes the items in
// plan order (experts by the LPT order, chunks in row order) and the statistics. `items` and the
// scratch vectors are sized once at construction (max_items), so run() never allocates.
class LlepPlanner {
public:
    // The most items a plan can have: min(E (W + 1), 2E + W). Per expert: its first item, at most one
    // chunk per helper (a chunk short of the expert's end fills the helper to cap, so it has no room left
    // for that expert) and the last rows past cap. Over the plan: every item ends its expert (E) or fills
    // a worker to exactly cap; eff(w) only falls when one of w's own experts starts (pending drops), so w
    // is filled at most 1 + (its experts) times, W + E in all. Exhaustive search over small E, W reaches
    // 2E + W - 1 (W = 2: 2E + 1, more than the E W once reserved); 2E + W items of 16 bytes are 34 MB at
    // the limits (E = 2^20, W = 4096).
    static std::size_t max_items(std::int64_t E, std::int64_t W) {
        auto const e = static_cast<std::size_t>(E), w = static_cast<std::size_t>(W);
        return std::min(e * (w + 1), 2 * e + w);
    }

    explicit LlepPlanner(LeastLoadedConfig const& cfg)
        : cfg_(cfg), place_(cfg.placement ? *cfg.placement : dist::ExpertPlacement::contiguous(cfg.num_experts, static_cast<int>(cfg.num_workers))) {
        auto const W = static_cast<std::size_t>(cfg.num_workers), E = static_cast<std::size_t>(cfg.num_experts);
        order_.reserve(E);
        pending_.resize(W);
        assigned_.resize(W);
        helpers_.reserve(W);
        copied_.resize(W, -1);
        items_.reserve(max_items(cfg.num_experts, cfg.num_workers));
        stats_.native_load.resize(W);
        stats_.planned_load.resize(W);
    }

    std::span<LlepItem const> items() const { return items_; }
    LlepStats const& stats() const { return stats_; }
    dist::ExpertPlacement const& placement() const { return place_; }

    void run(std::span<std::int64_t const> c) {
        std::int64_t const W = cfg_.num_workers, E = cfg_.num_experts;
        items_.clear();
        std::fill(stats_.native_load.begin(), stats_.native_load.end(), 0);
        std::int64_t total = 0;
        for (std::int64_t e = 0; e < E; ++e) {
            stats_.native_load[static_cast<std::size_t>(place_.rank_of(e))] += c[static_cast<std::size_t>(e)];
            total += c[static_cast<std::size_t>(e)];
        }
        stats_.spilled_rows = stats_.weight_copies = 0;
        stats_.plan_ran = false;
        if (total == 0) {  // T = 0 (or nothing dispatched): no plan, every statistic 0
            std::fill(stats_.planned_load.begin(), stats_.planned_load.end(), 0);
            stats_.native_ratio = stats_.planned_ratio = 0.0;
            return;
        }
        stats_.native_ratio = ratio(stats_.native_load, total);
        stats_.plan_ran = cfg_.adaptive_ratio == 0.0 || stats_.native_ratio >= cfg_.adaptive_ratio;
        if (!stats_.plan_ran) {
            for (std::int64_t e = 0; e < E; ++e)
                if (c[static_cast<std::size_t>(e)] > 0) add(e, place_.rank_of(e), 0, c[static_cast<std::size_t>(e)]);
        } else {
            plan(c, total, W);
        }
        std::fill(stats_.planned_load.begin(), stats_.planned_load.end(), 0);
        std::int32_t last_expert = -1;
        for (auto const& it : items_) {
            stats_.planned_load[static_cast<std::size_t>(it.worker)] += it.row_end - it.row_begin;
            if (it.worker == place_.rank_of(it.expert)) continue;
            stats_.spilled_rows += it.row_end - it.row_begin;
            if (it.expert != last_expert) std::fill(copied_.begin(), copied_.end(), -1);
            last_expert = it.expert;
            if (copied_[static_cast<std::size_t>(it.worker)] != it.expert) ++stats_.weight_copies;
            copied_[static_cast<std::size_t>(it.worker)] = it.expert;
        }
        stats_.planned_ratio = ratio(stats_.planned_load, total);
    }

private:
    static double ratio(std::vector<std::int64_t> const& load, std::int64_t total) {
        double const mean = double(total) / double(load.size());
        return mean > 0.0 ? double(*std::max_element(load.begin(), load.end())) / mean : 1.0;
    }

    void add(std::int64_t e, std::int64_t w, std::int64_t r0, std::int64_t r1) {
        items_.push_back({static_cast<std::int32_t>(e), static_cast<std::int32_t>(w), static_cast<std::int32_t>(r0), static_cast<std::int32_t>(r1)});
        assigned_[static_cast<std::size_t>(w)] += r1 - r0;
    }
    std::int64_t eff(std::int64_t w) const { return assigned_[static_cast<std::size_t>(w)] + pending_[static_cast<std::size_t>(w)]; }

    // The workers other than g by (eff ascending, id ascending).
    void order_helpers(std::int64_t g, std::int64_t W) {
        helpers_.clear();
        for (std::int64_t w = 0; w < W; ++w)
            if (w != g) helpers_.push_back(w);
        std::sort(helpers_.begin(), helpers_.end(), [&](std::int64_t a, std::int64_t b) { return eff(a) < eff(b) || (eff(a) == eff(b) && a < b); });
    }

    void plan(std::span<std::int64_t const> c, std::int64_t total, std::int64_t W) {
        std::int64_t const E = cfg_.num_experts, m = cfg_.min_tokens_per_gemm;
        std::int64_t const base = total / W;
        std::int64_t cap = base > 0 ? static_cast<std::int64_t>(std::floor(cfg_.max_tokens_factor * double(base))) : total;
        cap = std::max<std::int64_t>(cap, 1);
        std::copy(stats_.native_load.begin(), stats_.native_load.end(), pending_.begin());
        std::fill(assigned_.begin(), assigned_.end(), 0);
        order_.clear();
        for (std::int64_t e = 0; e < E; ++e)
            if (c[static_cast<std::size_t>(e)] > 0) order_.push_back(e);
        std::sort(order_.begin(), order_.end(), [&](std::int64_t a, std::int64_t b) {
            auto const ca = c[static_cast<std::size_t>(a)], cb = c[static_cast<std::size_t>(b)];
            return ca > cb || (ca == cb && a < b);
        });
        for (std::int64_t const e : order_) {
            std::int64_t const ce = c[static_cast<std::size_t>(e)], g = place_.rank_of(e);
            pending_[static_cast<std::size_t>(g)] -= ce;
            std::int64_t const avail = cap - eff(g);
            if (avail >= ce || W == 1) {
                add(e, g, 0, ce);
                continue;
            }
            std::int64_t r = 0;
            // A helper takes a chunk if it has room and the chunk is at least m rows or ends the expert.
            auto offer = [&](std::int64_t h) {
                std::int64_t const room = cap - eff(h), chunk = std::min(ce - r, room);
                if (room <= 0 || (chunk < m && chunk != ce - r)) return false;
                add(e, h, r, r + chunk);
                r += chunk;
                return true;
            };
            if (avail > 0) {
                add(e, g, 0, avail);
                r = avail;
                while (r < ce) {
                    order_helpers(g, W);
                    bool took = false;
                    for (std::int64_t const h : helpers_)
                        if ((took = offer(h))) break;
                    if (!took) {
                        add(e, helpers_.front(), r, ce);
                        r = ce;
                    }
                }
            } else {
                order_helpers(g, W);
                for (std::int64_t const h : helpers_)
                    if (r < ce) offer(h);
                if (r < ce) add(e, helpers_.front(), r, ce);
            }
        }
    }

    LeastLoadedConfig cfg_;
    dist::ExpertPlacement place_;
    std::vector<std::int64_t> order_, pending_, assigned_, helpers_, copied_;
    std::vector<LlepItem> items_;
    LlepStats stats_;
};

class LeastLoaded : public StatsCollector {
public:
    using Config = LeastLoadedConfig;
    static constexpr bool drops_tokens = false;

    explicit LeastLoaded(Config const& cfg)
        : StatsCollector((cfg.validate(), cfg.stats)), cfg_(cfg), planner_(cfg), loads_(static_cast<std::size_t>(cfg.num_experts)) {
        runs_.reserve(LlepPlanner::max_items(cfg.num_experts, cfg.num_workers));  // one per plan item
    }

    Config const& config() const { return cfg_; }
    // The last call's plan: (expert, worker, CSR rows) items, and research.md §6's statistics.
    std::span<LlepItem const> plan_items() const { return planner_.items(); }
    LlepStats const& llep_stats() const { return planner_.stats(); }
    dist::ExpertPlacement const& placement() const { return planner_.placement(); }
    // Per plan item, who ran it in the last MoELayer call (worker -1: not run by a layer's tasks).
    std::span<LlepRun const> executed() const { return runs_; }
    // Called by MoELayer's task `worker` once it has computed item i; tasks write distinct items.
    void record_run(std::size_t i, std::int64_t worker) { runs_[i] = {static_cast<std::int32_t>(worker), std::this_thread::get_id()}; }

    std::size_t workspace_size(std::int64_t /*max_tokens*/) const { return 0; }

    // The plan for loads summed elsewhere (smoe::dist: every rank's loads, gathered), replacing the
    // last call's; routing statistics are not touched (plan() recorded this caller's own routing).
    void replan(std::span<std::int64_t const> loads) {
        if (static_cast<std::int64_t>(loads.size()) != cfg_.num_experts)
            smoe::detail::fail("loads.size", loads.size(), "num_experts = " + std::to_string(cfg_.num_experts));
        planner_.run(loads);
        runs_.assign(planner_.items().size(), LlepRun{});
    }

    void plan(BalanceContext& ctx) {
        if (ctx.num_experts != cfg_.num_experts)
            smoe::detail::fail("num_experts", ctx.num_experts, "the balancer's num_experts (" + std::to_string(cfg_.num_experts) + ")");
        for (std::int64_t e = 0; e < ctx.num_experts; ++e) loads_[static_cast<std::size_t>(e)] = ctx.load(e);
        planner_.run(loads_);
        runs_.assign(planner_.items().size(), LlepRun{});
        record(ctx);
    }

private:
    Config cfg_;
    LlepPlanner planner_;
    std::vector<std::int64_t> loads_;
    std::vector<LlepRun> runs_;
};

}  // namespace smoe::inline v0::balance
