// The consumer's dispatched layer, compiled once per ISA by smoe_dispatch_sources.
#include <smoe/dispatch_instantiate.hpp>
#include <smoe/smoe.hpp>

SMOE_DISPATCH_INSTANTIATE(smoe::router::TopK, smoe::expert::SwiGLU<float>, smoe::balance::None)
