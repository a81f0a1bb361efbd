#pragma once
// The only place with compiler-specific #ifs.

#include "smoe/config.hpp"

#if defined(__CUDACC__)
#define SMOE_HOST_DEVICE __host__ __device__ inline
#else
#define SMOE_HOST_DEVICE inline
#endif

#if defined(__GNUC__) || defined(__clang__)
#define SMOE_RESTRICT __restrict__
#define SMOE_ALWAYS_INLINE inline __attribute__((always_inline))
// Keeps a rare path out of an inlined kernel body (its registers and code out of the hot loop).
#define SMOE_NOINLINE __attribute__((noinline))
// Not inlined and not cloned for constant arguments either (g++'s IPA-CP would make a copy per call site).
#if defined(__clang__)
#define SMOE_NOIPA __attribute__((noinline))
#else
#define SMOE_NOIPA __attribute__((noipa))
#endif
#define SMOE_UNLIKELY(x) __builtin_expect(!!(x), 0)
#else
#define SMOE_RESTRICT
#define SMOE_ALWAYS_INLINE inline
#define SMOE_NOINLINE
#define SMOE_NOIPA
#define SMOE_UNLIKELY(x) (x)
#endif
