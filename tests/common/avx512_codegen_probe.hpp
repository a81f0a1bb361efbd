#pragma once
// The constant vectors that g++ 12.2 turns into one broadcast value under AVX-512 flags
// (cmake/smoe_avx512_probe.cpp, cmake/smoe_avx512_codegen.cmake). A unit that includes this and runs
// wrong_constant_values() tells whether the flags it was built with carry the workaround: a test fails
// on an AVX-512 CPU when they do not. Internal linkage: every unit keeps the copy its own flags built.
#include <cstdint>
#include <vector>

namespace smoe_test {
namespace {

[[gnu::noinline]] std::vector<std::int64_t> probe_pairs_i64(std::int64_t v) {
    if (v == 1) return {1, 1, 0, 0};  // constants, as the defect needs them
    return {3, 3, 0, 0};
}
[[gnu::noinline]] std::vector<std::int32_t> probe_quads_i32() { return {1, 1, 1, 1, 0, 0, 0, 0}; }
[[gnu::noinline]] void probe_copy_i64(std::int64_t* p) {
    std::int64_t const v[4] = {1, 1, 0, 0};
    for (int i = 0; i < 4; ++i) p[i] = v[i];
}

// Compared element by element with scalars: a vector constant on this side would be built wrongly too.
[[gnu::noinline, maybe_unused]] int wrong_constant_values() {
    int wrong = 0;
    std::vector<std::int64_t> const a = probe_pairs_i64(1), b = probe_pairs_i64(3);
    std::vector<std::int32_t> const c = probe_quads_i32();
    std::int64_t d[4];
    probe_copy_i64(d);
    for (int i = 0; i < 4; ++i) {
        wrong += a[std::size_t(i)] != (i < 2 ? 1 : 0);
        wrong += b[std::size_t(i)] != (i < 2 ? 3 : 0);
        wrong += d[i] != (i < 2 ? 1 : 0);
    }
    for (int i = 0; i < 8; ++i) wrong += c[std::size_t(i)] != (i < 4 ? 1 : 0);
    return wrong;
}

}  // namespace
}  // namespace smoe_test
