#pragma once
// smoe::balance::None: dropless (balance.md §2). Every selected slot is computed; expert e's segment
// has exactly its load in rows. This is what Megatron-LM (capacity factor None), Hugging Face, vLLM,
// SGLang, TensorRT-LLM and llama.cpp do. It fills the load statistics (stats()).

#include <cstddef>
#include <cstdint>

#include "smoe/balance/context.hpp"
#include "smoe/balance/stats_collector.hpp"

namespace smoe::inline v0::balance {

class None : public StatsCollector {
public:
    struct Config {
        StatsOptions stats{};
    };
    static constexpr bool drops_tokens = false;

    None() = default;
    explicit None(Config const& cfg) : StatsCollector(cfg.stats) {}

    std::size_t workspace_size(std::int64_t /*max_tokens*/) const { return 0; }
    void plan(BalanceContext& ctx) { record(ctx); }
};

}  // namespace smoe::inline v0::balance
