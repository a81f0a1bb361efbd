#pragma once
// smoe's CUDA umbrella header: MoELayer<router::TopK, expert::SwiGLU<W>, balance::None, backend::Cuda<Sm>>
// with W = float or __nv_bfloat16, the kernels it is built from, and routing kernels for the other
// routers (null experts, ReLU, top-p, expert choice, Sinkhorn). Include it from .cu files only;
// the CPU umbrella (smoe/smoe.hpp) never pulls it, and it pulls neither Eigen nor xsimd. docs/cuda.md
// has the design, the build and the usage.

#if !defined(__CUDACC__)
#error "smoe/cuda.hpp is the CUDA backend: include it from a .cu file compiled by nvcc (link smoe::cuda); CPU code includes smoe/smoe.hpp"
#endif

#include "smoe/backend/cuda.hpp"
#include "smoe/kernels/cuda/combine.cuh"
#include "smoe/kernels/cuda/dispatch.cuh"
#include "smoe/kernels/cuda/gate.cuh"
#include "smoe/kernels/cuda/grouped_swiglu.cuh"
#include "smoe/kernels/cuda/moe_layer.cuh"
#include "smoe/kernels/cuda/plan.cuh"
#include "smoe/kernels/cuda/routing_batch.cuh"
#include "smoe/kernels/cuda/routing_rows.cuh"
#include "smoe/kernels/cuda/routing_topk.cuh"
