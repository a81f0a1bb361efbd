// expect: Backend parameter does not model smoe::Backend
#include <smoe/smoe.hpp>

using Layer = smoe::MoELayer<smoe::router::TopK, smoe::expert::SwiGLU<float>, smoe::balance::None, int>;

Layer::Config config;
