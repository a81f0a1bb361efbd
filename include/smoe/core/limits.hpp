#pragma once
// smoe::limits: the largest value smoe accepts for each size or count that nothing else bounds.
//
// A checkpoint bounds its own dimensions (a tensor's shape times its dtype size is its byte length,
// inside a file that exists), and the loaders check every config dimension against those shapes
// before allocating. What no file bounds gets a maximum here instead: a router-only config's expert
// count before its logits are read, an expert-choice capacity, a capacity factor, Sinkhorn's
// iteration cap, a layer's max_tokens. Each maximum is far above any published model and small enough
// that (a) every product of up to three bounded sizes fits int64 (2^20 · 2^20 · 2^20 = 2^60), so
// no workspace or buffer size computed from them can wrap, and (b) the work or memory one call can ask
// for stays within what a machine has: a value above its maximum is an smoe::invalid_argument naming
// the key, never a std::bad_alloc or a hang.
//
//   maximum                     bounds                                       why this value
//   kMaxExperts      = 2^20     num_experts, num_null_experts, n_shared      PEER's 1024^2 experts
//   kMaxDimension    = 2^20     hidden_size, intermediate sizes, LoRA dims   14x PaLM's FFN width (73728)
//   kMaxLayers       = 2^16     num_hidden_layers                            a loop over layers stays cheap
//   kMaxTokens       = 2^20     max_tokens, expert-choice capacity,          one call's tokens; a capacity
//                               min_capacity, capacity_alignment             above it can never be used
//   kMaxCapacityFactor = 1024   capacity_factor, moe_expert_capacity_factor  C <= 1024 T k / E
//   kMaxSinkhornIterations = 10^4  Sinkhorn max_iterations                   ~ 10^4 · T · E flops per call
//   kMaxThreads      = 4096     DefaultThreadPool's num_threads              the largest servers' threads

#include <cstdint>
#include <string>

#include "smoe/core/error.hpp"

namespace smoe::inline v0::limits {

inline constexpr std::int64_t kMaxExperts = std::int64_t(1) << 20;
inline constexpr std::int64_t kMaxDimension = std::int64_t(1) << 20;
inline constexpr std::int64_t kMaxLayers = std::int64_t(1) << 16;
inline constexpr std::int64_t kMaxTokens = std::int64_t(1) << 20;
inline constexpr double kMaxCapacityFactor = 1024.0;
inline constexpr std::int64_t kMaxSinkhornIterations = 10'000;
inline constexpr std::int64_t kMaxThreads = 4096;

}  // namespace smoe::inline v0::limits

namespace smoe::inline v0::detail {

// lo <= value <= hi, else smoe::invalid_argument naming `argument` and the maximum's name, so a
// message says which documented limit a value broke.
inline void require_in_range(char const* argument, std::int64_t value, std::int64_t lo, std::int64_t hi,
                             char const* limit_name) {
    if (value < lo || value > hi)
        fail(argument, value,
             std::to_string(lo) + " <= " + argument + " <= " + std::to_string(hi) + " (" + limit_name + ")");
}

}  // namespace smoe::inline v0::detail
