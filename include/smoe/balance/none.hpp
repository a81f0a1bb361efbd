#pragma once
// smoe::balance::None: dropless (balance.md §2). Every selected slot is computed; expert e's segment
// has exactly its load in rows. This is what Megatron-LM (capacity factor None), Hugging Face, vLLM,
// SGLang, TensorRT-LLM and llama.cpp do.

#include <cstddef>
#include <cstdint>

#include "smoe/core/routing.hpp"

namespace smoe::inline v0::balance {

class None {
public:
    struct Config {};
    static constexpr bool drops_tokens = false;

    None() = default;
    explicit None(Config const&) {}

    std::size_t workspace_size(std::int64_t /*max_tokens*/) const { return 0; }
    void plan(RoutingResult const& /*routing*/) {}
};

}  // namespace smoe::inline v0::balance
