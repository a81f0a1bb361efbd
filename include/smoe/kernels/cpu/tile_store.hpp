#pragma once
// A finished register tile handed to the epilogue: rows x panels outputs of 16 columns each, [i][j]
// order. The shape is a run-time value and there is one function per epilogue, neither inlined nor
// cloned: the epilogue (the SwiGLU store's vector exp, scales, bias, a partial last panel) inlined into
// every tile shape of every kernel was most of a quantised expert unit's code and compile time
// (bench_layer_quant at -O3: the int8-dot driver alone was 428 KB of the unit's 1.33 MB). One call per
// tile is nothing next to the tile's K loop.

#include <cstdint>

#include "smoe/kernels/cpu/pack.hpp"
#include "smoe/macros.hpp"

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#endif

namespace smoe::inline v0::kernels::cpu {

// The ISA this unit is compiled for, part of every store_tile instance's name. smoe_dispatch_sources
// compiles a layer once per ISA and the linker keeps one copy of each weak function for all of them
// (cmake/smoe_check_isa_symbols.sh): without it, the float version below, compiled without AVX2 in the
// baseline object, would be the copy that the AVX-512 object's kernels call (the epilogue's scalar exp:
// slower, and other bits than the same layer built for that ISA alone).
#if defined(__AVX512F__) && defined(__AVX2__) && defined(__FMA__)
inline constexpr int kTileStoreIsa = 2;
#elif defined(__AVX2__) && defined(__FMA__)
inline constexpr int kTileStoreIsa = 1;
#else
inline constexpr int kTileStoreIsa = 0;
#endif

// out[i * ld + j * kPanelCols + c]: ld is the tile's row stride in floats (rows of panels * kPanelCols by default).
template <class Epi, int Isa = kTileStoreIsa>
SMOE_NOIPA void store_tile(Epi& epi, std::int64_t row0, std::int64_t p0, int rows, int panels, float const* out,
                           std::int64_t ld = 0) {
    if (ld == 0) ld = panels * kPanelCols;
    for (int i = 0; i < rows; ++i)
        for (int j = 0; j < panels; ++j) epi.store(row0 + i, p0 + j, static_cast<float const*>(out + i * ld + j * kPanelCols));
}

#if defined(__AVX2__) && defined(__FMA__)
// Two ymm per output, columns 0-7 and 8-15: out[(i * panels + j) * 2 + h].
template <class Epi, int Isa = kTileStoreIsa>
SMOE_NOIPA void store_tile(Epi& epi, std::int64_t row0, std::int64_t p0, int rows, int panels, __m256 const* out) {
    for (int i = 0; i < rows; ++i)
        for (int j = 0; j < panels; ++j) epi.store(row0 + i, p0 + j, out[(i * panels + j) * 2], out[(i * panels + j) * 2 + 1]);
}
#endif

#if defined(__AVX512F__) && defined(__AVX2__) && defined(__FMA__)
// One zmm per output, handed over as its two ymm halves: out[i * panels + j].
template <class Epi, int Isa = kTileStoreIsa>
SMOE_NOIPA void store_tile(Epi& epi, std::int64_t row0, std::int64_t p0, int rows, int panels, __m512 const* out) {
    for (int i = 0; i < rows; ++i)
        for (int j = 0; j < panels; ++j) {
            __m512 const v = out[i * panels + j];
            epi.store(row0 + i, p0 + j, _mm512_castps512_ps256(v), _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1)));
        }
}
#endif

}  // namespace smoe::inline v0::kernels::cpu
