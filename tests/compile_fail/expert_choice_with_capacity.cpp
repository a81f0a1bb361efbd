// expect: already bounds every expert's load
// Expert choice fixes each expert's capacity itself; a capacity balancer on top has nothing to drop.
#include <smoe/smoe.hpp>

using Layer = smoe::MoELayer<smoe::router::ExpertChoice, smoe::expert::SwiGLU<float>, smoe::balance::Capacity>;

Layer::Config config;
