// expect: owns a selection bias
// AdaMoE's null-expert router selects without a bias, so a loss-free bias balancer cannot act on it.
#include <smoe/smoe.hpp>

using Layer = smoe::MoELayer<smoe::router::NullExpert, smoe::expert::SwiGLU<float>, smoe::balance::LossFreeBias>;

Layer::Config config;
