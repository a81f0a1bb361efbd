#pragma once
// An L2 prefetch of a byte range spread in slices over a loop that runs meanwhile: the next tile's
// panels while a tile computes, the first tile's while the activations are converted or quantised
// (bf16_dot_quant.hpp, int8_dot.hpp). Issued at once, the burst waits for miss buffers that the loop's
// own loads need (int8_dot.hpp's dot_tile_vnni: ~1 % slower).

#include <algorithm>
#include <cstdint>

#if (defined(__x86_64__) || defined(_M_X64)) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>

namespace smoe::inline v0::kernels::cpu {

// bytes at base (none where base is null) in slices of step bytes, whole 64-byte lines, the fewest
// that let `slices` calls of advance() cover them. A plain value: kept in registers once inlined.
struct PrefetchSpread {
    char const* base = nullptr;
    std::int64_t bytes = 0, step = 0, o = 0;  // o: the next byte to prefetch

    static constexpr std::int64_t slice_bytes(std::int64_t bytes, std::int64_t slices) {
        std::int64_t const lines = 64 * std::max<std::int64_t>(slices, 1);
        return (bytes + lines - 1) / lines * 64;
    }
    PrefetchSpread() = default;
    PrefetchSpread(void const* p, std::int64_t n, std::int64_t slices)
        : base(static_cast<char const*>(p)), bytes(p ? n : 0), step(slice_bytes(bytes, slices)) {}

    // Prefetches the next slice into L2.
    void advance() {
        for (std::int64_t const e = std::min(bytes, o + step); o < e; o += 64) _mm_prefetch(base + o, _MM_HINT_T1);
    }
    // Slice i (step bytes from i · step), not prefetched here but as its own spread in slices of sub bytes
    // (a block's share cut per vector of the block). By index, so a loop that only splits holds no cursor.
    PrefetchSpread slice(std::int64_t i, std::int64_t sub) const {
        std::int64_t const lo = std::min(i * step, bytes);
        PrefetchSpread s;
        s.base = base + lo;
        s.bytes = std::min(step, bytes - lo);
        s.step = sub;
        return s;
    }
};

}  // namespace smoe::inline v0::kernels::cpu
#endif
