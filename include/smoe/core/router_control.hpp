#pragma once
// smoe::RouterControl: test-time control of a trained router (research.md §8), passed per call and
// owned by the engine; routers store nothing of it. Every field is optional, and a record with no
// field routes exactly as a call without one (same code path, same bits).
//
//   L = the router's num_logits() (E; E + N for null experts; r for rankwise_lora)
//   logit_offset [L]  a, added to the logits before the score function (Rewiring Experts)
//   boost        [L]  b >= 0, multiplies the scores after the score function (RICE)
//   expert_mask  [L]  1 = allowed, 0 = removed: never scored, normalised over or selected (PreMoe)
//   score_override [L] with override_tokens [n] (strictly increasing, < T): the score row of those
//                      tokens becomes v / Σ_allowed v (C3PO)
//
// Where each field enters each router's math is the router's own rule (research.md §8's table); the
// record is checked at the call and bad fields throw smoe::invalid_argument naming field and index.
//
//   std::vector<std::uint8_t> mask(E, 1); mask[0] = 0;
//   layer.forward(x, y, smoe::RouterControl{.expert_mask = mask});

#include <cstdint>
#include <span>

namespace smoe::inline v0 {

struct RouterControl {
    std::span<float const> logit_offset;
    std::span<float const> boost;
    std::span<std::uint8_t const> expert_mask;
    std::span<float const> score_override;
    std::span<std::int32_t const> override_tokens;

    bool empty() const {
        return logit_offset.empty() && boost.empty() && expert_mask.empty() && score_override.empty() &&
               override_tokens.empty();
    }
};

}  // namespace smoe::inline v0
