#pragma once
// smoe::TokenIds: the vocabulary ids of a call's T tokens, an optional per-call input for routers that
// route by token (router::Hash, DeepSeek-V4's first layers). Other routers ignore it, so an engine may
// pass the ids to every layer.

#include <cstdint>
#include <span>

namespace smoe::inline v0 {

struct TokenIds {
    std::span<std::int32_t const> ids;  // [T]
};

}  // namespace smoe::inline v0
