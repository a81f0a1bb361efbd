// expect: Router parameter does not model smoe::RouterPolicy
// `int` is not a router: MoELayer must reject it with one readable sentence, not a template backtrace.
#include <smoe/smoe.hpp>

using Layer = smoe::MoELayer<int, smoe::expert::SwiGLU<float>, smoe::balance::None>;

Layer::Config config;
