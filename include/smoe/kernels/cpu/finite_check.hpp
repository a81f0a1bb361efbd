#pragma once
// Non-finite input is an error at the call (routing.md §0). The SIMD pass only detects; the scalar
// pass that follows a detection finds the first offending entry (lowest row, then lowest column) to
// name it.

#include <cmath>
#include <cstdint>
#include <string>

#include "smoe/detail/xsimd.hpp"

#include "smoe/core/error.hpp"
#include "smoe/core/view.hpp"

namespace smoe::inline v0::kernels::cpu {

template <class Arch>
bool all_finite(Arch, float const* x, std::int64_t n) {
    using batch = xsimd::batch<float, Arch>;
    constexpr std::int64_t W = batch::size;
    // x - x is 0 for finite x and NaN for NaN or ±Inf; NaN poisons the running sum.
    batch acc(0.0f);
    std::int64_t i = 0;
    for (; i + W <= n; i += W) {
        batch const v = batch::load_unaligned(x + i);
        acc += v - v;
    }
    float tail = 0.0f;
    for (; i < n; ++i) tail += x[i] - x[i];
    return xsimd::hadd(acc) == 0.0f && tail == 0.0f;
}

// Throws smoe::invalid_argument naming `name`, the row and column of the first non-finite entry and
// its value; `row_name`/`col_name` say what rows and columns are ("token", "expert"). Per-expert
// vectors are checked by smoe::detail::check_vector.
template <class Arch>
void check_finite(Arch arch, MatrixView<float const> m, char const* name, char const* row_name = "token",
                  char const* col_name = "expert") {
    for (std::int64_t r = 0; r < m.rows; ++r) {
        if (all_finite(arch, m.row(r), m.cols)) continue;
        for (std::int64_t c = 0; c < m.cols; ++c)
            if (!std::isfinite(m(r, c)))
                smoe::detail::fail(name,
                                   smoe::detail::to_text(m(r, c)) + " at " + row_name + " " + std::to_string(r) + ", " +
                                       col_name + " " + std::to_string(c),
                                   "finite values");
    }
}

}  // namespace smoe::inline v0::kernels::cpu
