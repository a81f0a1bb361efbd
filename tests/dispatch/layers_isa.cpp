// The layers test_dispatch builds, compiled once per ISA by smoe_dispatch_sources (tests/dispatch/CMakeLists.txt).
#include "smoe/dispatch_instantiate.hpp"
#include "smoe/smoe.hpp"

SMOE_DISPATCH_INSTANTIATE(smoe::router::TopK, smoe::expert::SwiGLU<float>, smoe::balance::None)
SMOE_DISPATCH_INSTANTIATE(smoe::router::TopK, smoe::expert::SwiGLU<smoe::bf16>, smoe::balance::None)
