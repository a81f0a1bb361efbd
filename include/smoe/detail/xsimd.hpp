#pragma once
// xsimd (and the intrinsic headers it pulls in), with g++'s -Wuninitialized off for their text only.
// g++ 12.2's _mm512_undefined_* (`__m512 __Y = __Y;`), reached through xsimd's AVX-512 conversions,
// trips -Wuninitialized wherever it is instantiated, even from a system header (fixed in later GCC);
// the value is never read. g++ decides by the warning's location, so this covers every instantiation,
// as long as this is the translation unit's first include of xsimd or <immintrin.h>: every smoe header
// includes xsimd through this one. Warnings in smoe's own code stay on.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#endif
#include <xsimd/xsimd.hpp>
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic pop
#endif
