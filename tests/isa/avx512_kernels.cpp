// Compiled with AVX-512 flags (tests/isa/CMakeLists.txt): xsimd::default_arch is avx512bw here and
// gemm_packed takes the 512-bit tiles for it. No object with dynamic initialisation lives in this
// file (see avx512_kernels.hpp), and the executable links this object last, so the inline functions
// it shares with the other objects (std::vector, Catch) keep the copies built with ordinary flags
// (the linker keeps the first definition of each).

#include "isa/avx512_kernels.hpp"

#include <cstring>
#include <span>

#include "common/avx512_codegen_probe.hpp"
#include "smoe/smoe.hpp"

namespace smoe_isa {
namespace {

namespace cpu = smoe::kernels::cpu;
using Arch512 = xsimd::avx512bw;

static_assert(!SMOE_PACKED_AVX512 || (cpu::kPackedAvx512<Arch512> && !cpu::kPackedAvx2<Arch512>),
              "an AVX-512 build selects the 512-bit tiles, and only them, for AVX-512 archs");

// Keeps every finished tile's raw sums: C[row, 16 p + c].
struct Capture {
    float* c;
    std::int64_t ld;
#if SMOE_PACKED_AVX2
    void store(std::int64_t i, std::int64_t p, __m256 lo, __m256 hi) {
        _mm256_storeu_ps(c + i * ld + p * 16, lo);
        _mm256_storeu_ps(c + i * ld + p * 16 + 8, hi);
    }
#endif
    void store(std::int64_t i, std::int64_t p, float const* v) { std::memcpy(c + i * ld + p * 16, v, 16 * sizeof(float)); }
};

template <class W>
void gemm(float const* a, std::int64_t M, std::int64_t K, W const* panels, std::int64_t P, std::int64_t p0, std::int64_t p1,
          float* c) {
    Capture epi{c, P * 16};
    cpu::gemm_packed(Arch512{}, smoe::MatrixView<float const>(a, M, K), panels, p0, p1, epi);
}

template <class W>
void swiglu(smoe::expert::SwiGLU<W> const& ex, std::int64_t e, float const* x, std::int64_t M, float const* row_w, float* out) {
    std::int64_t const d = ex.hidden_size();
    smoe::WorkspaceBuffer buf(ex.workspace_size(M));
    smoe::Workspace ws = buf.workspace();
    ex.run(Arch512{}, e, smoe::MatrixView<float const>(x, M, d), std::span<float const>(row_w, std::size_t(M)),
           smoe::MatrixView<float>(out, M, d), ws);
}

}  // namespace

int wrong_constant_values_avx512() { return smoe_test::wrong_constant_values(); }

bool avx512_tiles_selected() { return SMOE_PACKED_AVX512 && cpu::kPackedAvx512<xsimd::default_arch>; }

void gemm_avx512(float const* a, std::int64_t M, std::int64_t K, float const* panels, std::int64_t P, std::int64_t p0,
                 std::int64_t p1, float* c) {
    gemm(a, M, K, panels, P, p0, p1, c);
}
void gemm_avx512(float const* a, std::int64_t M, std::int64_t K, smoe::bf16 const* panels, std::int64_t P, std::int64_t p0,
                 std::int64_t p1, float* c) {
    gemm(a, M, K, panels, P, p0, p1, c);
}
void gemm_avx512(float const* a, std::int64_t M, std::int64_t K, std::int8_t const* panels, std::int64_t P, std::int64_t p0,
                 std::int64_t p1, float* c) {
    gemm(a, M, K, panels, P, p0, p1, c);
}

void swiglu_avx512(smoe::expert::SwiGLU<float> const& ex, std::int64_t e, float const* x, std::int64_t M, float const* row_w,
                   float* out) {
    swiglu(ex, e, x, M, row_w, out);
}
void swiglu_avx512(smoe::expert::SwiGLU<smoe::bf16> const& ex, std::int64_t e, float const* x, std::int64_t M,
                   float const* row_w, float* out) {
    swiglu(ex, e, x, M, row_w, out);
}
void swiglu_avx512(smoe::expert::SwiGLU<std::int8_t> const& ex, std::int64_t e, float const* x, std::int64_t M,
                   float const* row_w, float* out) {
    swiglu(ex, e, x, M, row_w, out);
}

}  // namespace smoe_isa
