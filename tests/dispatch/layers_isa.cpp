// The layers test_dispatch builds, compiled once per ISA by smoe_dispatch_sources (tests/dispatch/CMakeLists.txt).
#include "smoe/dispatch_instantiate.hpp"
#include "smoe/smoe.hpp"

#include "common/avx512_codegen_probe.hpp"
#include "dispatch/codegen_probe.hpp"

// This ISA object's flags, with the workaround smoe_dispatch_sources adds where the compiler needs it.
template <>
int smoe_test::wrong_constants_in<SMOE_DISPATCH_ARCH>() {
    return wrong_constant_values();
}

SMOE_DISPATCH_INSTANTIATE(smoe::router::TopK, smoe::expert::SwiGLU<float>, smoe::balance::None)
SMOE_DISPATCH_INSTANTIATE(smoe::router::TopK, smoe::expert::SwiGLU<smoe::bf16>, smoe::balance::None)
