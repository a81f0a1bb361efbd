#pragma once
// The CUDA backend tag: MoELayer<Router, Expert, Balancer, backend::Cuda<Sm>> runs the layer on an
// NVIDIA GPU (include "smoe/cuda.hpp" from a .cu file compiled by nvcc). This header itself is plain
// C++ with no CUDA include, so host code can name the tag (e.g. to pick a layer type) without nvcc.
//
// Sm is the lowest compute capability the engine builds for (90 = Hopper). It is part of the type so
// that two engines built for different architectures never share a symbol (STYLE.md habit 3); the
// kernels themselves follow CMAKE_CUDA_ARCHITECTURES and need sm_80 or newer for the bf16 tensor-core
// path (older architectures get the SIMT path).

namespace smoe::inline v0::backend {

struct cuda_tag {};

template <int Sm = 90>
struct Cuda {
    static_assert(Sm >= 50, "smoe::backend::Cuda<Sm>: Sm is a compute capability times ten, e.g. 90 for sm_90");
    using tag = cuda_tag;
    static constexpr int sm = Sm;
    static constexpr char const* name = "cuda";
};

}  // namespace smoe::inline v0::backend
