// expect: Balancer parameter does not model smoe::BalancePolicy
// A router passed where the balancer goes.
#include <smoe/smoe.hpp>

using Layer = smoe::MoELayer<smoe::router::TopK, smoe::expert::SwiGLU<float>, smoe::router::TopK>;

Layer::Config config;
