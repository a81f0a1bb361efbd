#pragma once
// The CPU backend: SIMD kernels instantiated for one xsimd Arch. The default follows the compile flags
// (-march=native gives the best ISA of the build machine); an engine that dispatches at run time
// instantiates MoELayer once per Arch, one translation unit per ISA (STYLE.md habit 3).

#include "smoe/detail/xsimd.hpp"

namespace smoe::inline v0::backend {

struct cpu_tag {};

template <class Arch = xsimd::default_arch>
struct Cpu {
    using tag = cpu_tag;
    using arch = Arch;
    static constexpr char const* name = "cpu";
};

}  // namespace smoe::inline v0::backend
