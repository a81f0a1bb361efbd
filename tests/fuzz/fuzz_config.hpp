#pragma once
// What the config.json fuzz target did with its last input, for the deterministic replay.

namespace smoe_fuzz {

enum class Outcome { skipped, ran, refused };
extern Outcome last_outcome;

}  // namespace smoe_fuzz
