#pragma once
// Shape and weight views of the SwiGLU expert (experts.md §3): W1, W3 [E, f, d] (gate, up), W2 [E, d, f].

#include <cstdint>
#include <string>

#include "smoe/core/error.hpp"
#include "smoe/core/view.hpp"

namespace smoe::inline v0::expert {

struct SwiGLUConfig {
    std::int64_t hidden_size = 0;        // d
    std::int64_t intermediate_size = 0;  // f
    std::int64_t num_experts = 0;        // E

    void validate() const {
        if (hidden_size < 1) smoe::detail::fail("hidden_size", hidden_size, "d >= 1");
        if (intermediate_size < 1) smoe::detail::fail("intermediate_size", intermediate_size, "f >= 1");
        if (num_experts < 1) smoe::detail::fail("num_experts", num_experts, "E >= 1");
    }
};

template <class W>
struct SwiGLUWeights {
    StackedView<W const> w1;  // gate [E, f, d]
    StackedView<W const> w3;  // up   [E, f, d]
    StackedView<W const> w2;  // down [E, d, f]

    // Separate dense tensors, as Mixtral's files hold them once stacked.
    static SwiGLUWeights dense(W const* w1, W const* w3, W const* w2, SwiGLUConfig const& c) {
        auto const E = c.num_experts, f = c.intermediate_size, d = c.hidden_size;
        return {{w1, E, f, d}, {w3, E, f, d}, {w2, E, d, f}};
    }
    // A fused gate_up [E, 2f, d] with gate rows first (HF gate_up_proj, Megatron linear_fc1) and down [E, d, f].
    static SwiGLUWeights fused(W const* gate_up, W const* down, SwiGLUConfig const& c) {
        auto const E = c.num_experts, f = c.intermediate_size, d = c.hidden_size;
        return {{gate_up, E, f, d, d, 2 * f * d}, {gate_up + f * d, E, f, d, d, 2 * f * d}, {down, E, d, f}};
    }

    void validate(SwiGLUConfig const& c) const {
        smoe::detail::check_stacked(w1, "w1", c.num_experts, c.intermediate_size, c.hidden_size);
        smoe::detail::check_stacked(w3, "w3", c.num_experts, c.intermediate_size, c.hidden_size);
        smoe::detail::check_stacked(w2, "w2", c.num_experts, c.hidden_size, c.intermediate_size);
    }
};

}  // namespace smoe::inline v0::expert
