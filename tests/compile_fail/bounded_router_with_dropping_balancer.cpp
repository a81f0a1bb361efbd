// expect: already bounds every expert's load
// An expert-choice-like router (each expert takes at most C tokens) combined with a balancer that
// drops tokens: the pair is rejected with one sentence naming both policies.
#include <smoe/smoe.hpp>

struct BoundedRouter {
    struct Config {};
    static constexpr bool bounds_load = true;
    std::int64_t num_experts() const { return 4; }
    std::int64_t num_logits() const { return 4; }
    std::int64_t max_slots() const { return 4; }
    std::size_t workspace_size(std::int64_t) const { return 0; }
    template <class Arch>
    std::int64_t route(Arch, smoe::MatrixView<float const>, std::span<float const>, smoe::TokenMajorOut, smoe::Workspace&) const {
        return 0;
    }
};

using Layer = smoe::MoELayer<BoundedRouter, smoe::expert::SwiGLU<float>, smoe::balance::Capacity>;

Layer::Config config;
