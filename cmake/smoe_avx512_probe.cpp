// The constant-vector patterns that Debian 12's g++ 12.2 compiles wrongly whenever AVX-512 is enabled
// (-mavx512f, -march=x86-64-v4, -march=native on an AVX-512 CPU) at -O2/-O3: the SLP vectoriser stores
// one broadcast value over a whole ymm ({1, 1, 0, 0} becomes {1, 1, 1, 1}). cmake/smoe_avx512_codegen.cmake
// compiles this file to assembly and looks for that broadcast (a build machine without AVX-512 can
// still judge the compiler), and runs it where the CPU has AVX-512 (SMOE_PROBE_MAIN): the exit status
// is the number of wrong values. tests/common/avx512_codegen_probe.hpp holds the same patterns for ctest.
#include <cstdint>
#include <vector>

std::vector<std::int64_t> smoe_probe_a() { return {1, 1, 0, 0}; }
std::vector<std::int64_t> smoe_probe_b() { return {3, 3, 0, 0}; }
std::vector<std::int32_t> smoe_probe_c() { return {1, 1, 1, 1, 0, 0, 0, 0}; }
void smoe_probe_d(std::int64_t* p) {
    std::int64_t const v[4] = {1, 1, 0, 0};
    for (int i = 0; i < 4; ++i) p[i] = v[i];
}

#ifdef SMOE_PROBE_MAIN
// Element by element against scalars: a vector constant on this side would be miscompiled the same way.
int main() {
    int wrong = 0;
    std::vector<std::int64_t> const a = smoe_probe_a(), b = smoe_probe_b();
    std::vector<std::int32_t> const c = smoe_probe_c();
    std::int64_t d[4];
    smoe_probe_d(d);
    for (int i = 0; i < 4; ++i) {
        wrong += a[i] != (i < 2 ? 1 : 0);
        wrong += b[i] != (i < 2 ? 3 : 0);
        wrong += d[i] != (i < 2 ? 1 : 0);
    }
    for (int i = 0; i < 8; ++i) wrong += c[i] != (i < 4 ? 1 : 0);
    return wrong;
}
#endif
