// expect: Expert parameter does not model smoe::ExpertPolicy
// A type with the nested types of an expert but no run(): the layer names the slot and what is missing.
#include <smoe/smoe.hpp>

struct HalfAnExpert {
    struct Config {};
    struct Weights {};
    static constexpr bool is_compute_free = false;
};

using Layer = smoe::MoELayer<smoe::router::TopK, HalfAnExpert, smoe::balance::None>;

Layer::Config config;
