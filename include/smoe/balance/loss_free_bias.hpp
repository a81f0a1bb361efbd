#pragma once
// smoe::balance::LossFreeBias: auxiliary-loss-free load balancing (Wang et al. 2024, DeepSeek-V3;
// balance.md §4). It owns a per-expert fp32 bias that the router adds to its scores for selection only
// (weights stay unbiased), and updates it from the observed load:
//
//   c̄ = (1/E) Σ_e c_e        b_e ← b_e + u · sign(c̄ − c_e)        (sign(0) = 0)
//
// c_e counts the kept slots of real experts (after any dropping, null slots excluded) accumulated
// over forward calls since the last update(). Inference keeps the bias frozen (u = 0 or never call
// update()); online balancing calls update() once per global batch, as Megatron does, or sets
// update_every_forward. The bias can be read and written to save and restore it; the layer seeds it
// from Weights::expert_bias (the checkpoint's e_score_correction_bias) when one is given.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "smoe/balance/context.hpp"
#include "smoe/balance/stats_collector.hpp"
#include "smoe/core/error.hpp"
#include "smoe/core/limits.hpp"

namespace smoe::inline v0::balance {

struct LossFreeBiasConfig {
    std::int64_t num_experts = 0;        // E
    double bias_update_rate = 1e-3;      // moe_router_bias_update_rate u, finite and >= 0
    bool update_every_forward = false;   // apply update() at the end of every forward
    StatsOptions stats{};

    void validate() const {
        smoe::detail::require_in_range("num_experts", num_experts, 1, limits::kMaxExperts, "smoe::limits::kMaxExperts");
        if (!(bias_update_rate >= 0.0) || !std::isfinite(bias_update_rate))
            smoe::detail::fail("moe_router_bias_update_rate", bias_update_rate, "a finite rate >= 0");
        stats.validate();
    }
};

class LossFreeBias : public StatsCollector {
public:
    using Config = LossFreeBiasConfig;
    static constexpr bool drops_tokens = false;

    explicit LossFreeBias(Config const& cfg)
        : StatsCollector((cfg.validate(), cfg.stats)),
          cfg_(cfg),
          bias_(static_cast<std::size_t>(cfg.num_experts), 0.0f),
          counts_(static_cast<std::size_t>(cfg.num_experts), 0) {}

    Config const& config() const { return cfg_; }

    // The bias the router adds to its selection scores.
    std::span<float const> selection_bias() const { return bias_; }
    std::span<float const> bias() const { return bias_; }
    void set_bias(std::span<float const> b) {
        smoe::detail::check_vector(b, cfg_.num_experts, "expert_bias", "num_experts", "expert");
        std::copy(b.begin(), b.end(), bias_.begin());
    }

    // Kept slots per expert accumulated since the last update().
    std::span<std::int64_t const> pending_counts() const { return counts_; }

    // b_e += u · sign(mean - c_e) on the accumulated counts, then zeroes them.
    void update() {
        double mean = 0.0;
        for (auto c : counts_) mean += double(c);
        mean /= double(counts_.size());
        auto const u = static_cast<float>(cfg_.bias_update_rate);
        for (std::size_t e = 0; e < counts_.size(); ++e) {
            double const diff = mean - double(counts_[e]);
            bias_[e] += diff > 0 ? u : diff < 0 ? -u : 0.0f;
        }
        std::fill(counts_.begin(), counts_.end(), 0);
    }

    std::size_t workspace_size(std::int64_t /*max_tokens*/) const { return 0; }

    void plan(BalanceContext& ctx) {
        if (ctx.num_experts != cfg_.num_experts)
            smoe::detail::fail("num_experts", ctx.num_experts, "the balancer's num_experts (" + std::to_string(cfg_.num_experts) + ")");
        for (std::int64_t e = 0; e < ctx.num_experts; ++e) counts_[e] += ctx.load(e);
        record(ctx);
        if (cfg_.update_every_forward) update();
    }

private:
    Config cfg_;
    std::vector<float> bias_;
    std::vector<std::int64_t> counts_;
};

}  // namespace smoe::inline v0::balance
