#pragma once
// C[M, N] = scale[m] * (A[M, K] · B[N, K]ᵀ): both operands row-major along K, as activations [T, d] and
// nn.Linear weights [out, in] are stored, so no operand is transposed or packed.
//
// Every output element is one dot product accumulated in a fixed order: SIMD lanes over K in steps of
// the vector width, then a scalar tail, then xsimd::hadd. That order depends on K and the ISA only, not
// on M, N or the tile a row falls into, so a row computes the same bits alone or inside a batch
// (experts.md §1 rule 3), and the result does not depend on how rows are split over threads.

#include <algorithm>
#include <cstdint>
#include <span>
#include <type_traits>

#include "smoe/detail/xsimd.hpp"

#include "smoe/core/view.hpp"
#include "smoe/macros.hpp"

namespace smoe::inline v0::kernels::cpu {

namespace detail {

// Register tile MR x NR: MR*NR accumulators plus MR A-vectors must fit the register file
// (16 vector registers up to AVX2: 3 x 4; 32 with AVX-512: 4 x 4). NR = 4 streams four weight rows
// at once, which also keeps four independent prefetch streams busy in the memory-bound M = 1 case.
template <class Arch>
struct GemmTile {
    static constexpr int kMR = std::is_base_of_v<xsimd::avx512f, Arch> ? 4 : 3;
    static constexpr int kNR = 4;
};

template <class Arch>
inline constexpr bool kHasFma = std::is_base_of_v<xsimd::fma3<xsimd::sse4_2>, Arch> ||
                                std::is_base_of_v<xsimd::fma3<xsimd::avx>, Arch> ||
                                std::is_base_of_v<xsimd::fma3<xsimd::avx2>, Arch> ||
                                std::is_base_of_v<xsimd::fma4, Arch> || std::is_base_of_v<xsimd::avx512f, Arch>;

// acc + a·b. Where the ISA has FMA it is one fused operation everywhere. Without it, xsimd computes
// a*b + c, which GCC (-ffp-contract=fast is its C++ default) may fuse in one register tile and not
// in another when FMA instructions are enabled; the empty asm makes the product opaque, so every
// tile rounds the product the same way and rows stay independent bit for bit.
template <class Arch, class B>
SMOE_ALWAYS_INLINE B multiply_add(B a, B b, B acc) {
    if constexpr (kHasFma<Arch>) {
        return xsimd::fma(a, b, acc);
    } else {
        B p = a * b;
#if (defined(__GNUC__) || defined(__clang__)) && (defined(__x86_64__) || defined(__i386__))
        __asm__("" : "+x"(p.data));
#endif
        return acc + p;
    }
}

template <class Arch, int MR, int NR>
SMOE_ALWAYS_INLINE void gemm_nt_tile(float const* SMOE_RESTRICT a, std::int64_t lda, float const* SMOE_RESTRICT b,
                                     std::int64_t ldb, float* SMOE_RESTRICT c, std::int64_t ldc, std::int64_t K,
                                     float const* row_scale) {
    using batch = xsimd::batch<float, Arch>;
    constexpr std::int64_t W = batch::size;
    batch acc[MR][NR];
    for (int i = 0; i < MR; ++i)
        for (int j = 0; j < NR; ++j) acc[i][j] = batch(0.0f);
    std::int64_t const kv = K / W * W;
    for (std::int64_t k = 0; k < kv; k += W) {
        batch av[MR];
        for (int i = 0; i < MR; ++i) av[i] = batch::load_unaligned(a + i * lda + k);
        for (int j = 0; j < NR; ++j) {
            batch const bv = batch::load_unaligned(b + j * ldb + k);
            for (int i = 0; i < MR; ++i) acc[i][j] = multiply_add<Arch>(av[i], bv, acc[i][j]);
        }
    }
    for (int i = 0; i < MR; ++i) {
        float const s = row_scale ? row_scale[i] : 1.0f;
        for (int j = 0; j < NR; ++j) {
            float tail = 0.0f;
            for (std::int64_t k = kv; k < K; ++k) tail = std::fma(a[i * lda + k], b[j * ldb + k], tail);
            c[i * ldc + j] = s * (xsimd::hadd(acc[i][j]) + tail);
        }
    }
}

// Rows [m0, M) in tiles of MR, then the remainder with a smaller MR.
template <class Arch, int MR, int NR>
void gemm_nt_rows(MatrixView<float const> A, float const* b, std::int64_t ldb, MatrixView<float> C, std::int64_t n,
                  std::int64_t m0, float const* scale) {
    std::int64_t m = m0;
    for (; m + MR <= A.rows; m += MR)
        gemm_nt_tile<Arch, MR, NR>(A.row(m), A.ld, b, ldb, C.row(m) + n, C.ld, A.cols, scale ? scale + m : nullptr);
    if constexpr (MR > 1)
        if (m < A.rows) gemm_nt_rows<Arch, MR - 1, NR>(A, b, ldb, C, n, m, scale);
}

template <class Arch, int NR>
void gemm_nt_cols(MatrixView<float const> A, MatrixView<float const> B, MatrixView<float> C, std::int64_t n0,
                  float const* scale) {
    constexpr int MR = GemmTile<Arch>::kMR;
    std::int64_t n = n0;
    // Outer loop over weight rows: a tile of NR weight rows stays in L1/L2 while every activation row
    // passes over it, so weights are streamed from memory once per call.
    for (; n + NR <= B.rows; n += NR) gemm_nt_rows<Arch, MR, NR>(A, B.row(n), B.ld, C, n, 0, scale);
    if constexpr (NR > 1)
        if (n < B.rows) gemm_nt_cols<Arch, NR - 1>(A, B, C, n, scale);
}

}  // namespace detail

// C = diag(row_scale) · A · Bᵀ; row_scale empty means 1. Shapes: A [M, K], B [N, K], C [M, N].
template <class Arch>
void gemm_nt(Arch, MatrixView<float const> A, MatrixView<float const> B, MatrixView<float> C,
             std::span<float const> row_scale = {}) {
    if (A.rows == 0 || B.rows == 0) return;
    detail::gemm_nt_cols<Arch, detail::GemmTile<Arch>::kNR>(A, B, C, 0, row_scale.empty() ? nullptr : row_scale.data());
}

}  // namespace smoe::inline v0::kernels::cpu
