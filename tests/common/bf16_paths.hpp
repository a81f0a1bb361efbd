#pragma once
// The SwiGLU<W> dot-product paths a test runs on purpose, whatever the CPU. Never `automatic`: it takes
// vdpbf16ps on an AVX512-BF16 CPU and the fp32 path elsewhere, so a bound would hold on one machine only.
// bf16: the fp32 path (off: widened weights, fp32 FMA, bound 2e-5) and the AVX512-BF16 arithmetic
// (emulated: the bits of vdpbf16ps, which tests/isa checks natively; x and h rounded to bf16, bound
// kBf16DotOracleBound). Other formats: off, their only path.
#include <type_traits>
#include <vector>

#include "smoe/core/bf16.hpp"
#include "smoe/expert/swiglu_config.hpp"

namespace smoe_test {

// Relative to the token's largest output, against the fp64 oracle on the fp32 input (measured 3e-3 ..
// 9e-3 per token: the roundings of x and h; test_bf16_dot.cpp).
inline constexpr double kBf16DotOracleBound = 1.5e-2;
inline constexpr double kFp32PathOracleBound = 2e-5;

template <class W>
std::vector<smoe::expert::Bf16Dot> dot_paths() {
    if constexpr (std::is_same_v<W, smoe::bf16>) return {smoe::expert::Bf16Dot::off, smoe::expert::Bf16Dot::emulated};
    return {smoe::expert::Bf16Dot::off};
}

inline double oracle_bound(smoe::expert::Bf16Dot dot) {
    return dot == smoe::expert::Bf16Dot::off ? kFp32PathOracleBound : kBf16DotOracleBound;
}

}  // namespace smoe_test
