#pragma once
// The AVX-512 side of smoe_avx512_tests: functions compiled with AVX-512 flags (avx512_kernels.cpp)
// that the test cases (test_avx512_kernels.cpp, ordinary flags) call only after the runner has seen
// an AVX-512 CPU. Nothing in that file runs before main, so on other CPUs the executable still lists
// its cases and exits with 77 instead of dying on an AVX-512 instruction during start-up.

#include <cstdint>

#include "smoe/expert/swiglu.hpp"

namespace smoe_isa {

// tests/common/avx512_codegen_probe.hpp's count of wrong constants, with this object's flags.
int wrong_constant_values_avx512();

// Whether avx512_kernels.cpp was built for AVX-512 and gemm_packed picks the 512-bit tiles there.
bool avx512_tiles_selected();

// C[i, 16 p + c] for rows [0, M) and panels [p0, p1) of gemm_packed with xsimd::avx512bw: the raw
// sums each finished tile hands to its epilogue. c is [M, 16 · P].
void gemm_avx512(float const* a, std::int64_t M, std::int64_t K, float const* panels, std::int64_t P, std::int64_t p0,
                 std::int64_t p1, float* c);
void gemm_avx512(float const* a, std::int64_t M, std::int64_t K, smoe::bf16 const* panels, std::int64_t P, std::int64_t p0,
                 std::int64_t p1, float* c);
void gemm_avx512(float const* a, std::int64_t M, std::int64_t K, std::int8_t const* panels, std::int64_t P, std::int64_t p0,
                 std::int64_t p1, float* c);

// ex.run(xsimd::avx512bw{}, e, x [M, d], row_w [M], out [M, d]) with its own workspace.
void swiglu_avx512(smoe::expert::SwiGLU<float> const& ex, std::int64_t e, float const* x, std::int64_t M, float const* row_w,
                   float* out);
void swiglu_avx512(smoe::expert::SwiGLU<smoe::bf16> const& ex, std::int64_t e, float const* x, std::int64_t M,
                   float const* row_w, float* out);
void swiglu_avx512(smoe::expert::SwiGLU<std::int8_t> const& ex, std::int64_t e, float const* x, std::int64_t M,
                   float const* row_w, float* out);

}  // namespace smoe_isa
