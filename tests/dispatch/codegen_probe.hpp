#pragma once
// wrong_constants_in<Arch>(): tests/common/avx512_codegen_probe.hpp's count, run in the object that
// smoe_dispatch_sources compiled for Arch (layers_isa.cpp defines the specialisation of its ISA).
#include "smoe/detail/xsimd.hpp"  // not <xsimd/xsimd.hpp>: see there

namespace smoe_test {
template <class Arch>
int wrong_constants_in();
template <>
int wrong_constants_in<xsimd::avx512bw>();
template <>
int wrong_constants_in<xsimd::fma3<xsimd::avx2>>();
template <>
int wrong_constants_in<xsimd::sse2>();
}  // namespace smoe_test
