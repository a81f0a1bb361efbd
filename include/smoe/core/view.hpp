#pragma once
// Non-owning row-major matrix views. A view never allocates and never copies; `ld` is the distance in
// elements between the starts of two rows (ld >= cols), so a view can name a block of a larger matrix.

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <type_traits>

#include "smoe/core/error.hpp"

namespace smoe::inline v0 {

template <class T>
struct MatrixView {
    using element_type = T;

    T* data = nullptr;
    std::int64_t rows = 0;
    std::int64_t cols = 0;
    std::int64_t ld = 0;

    constexpr MatrixView() = default;
    constexpr MatrixView(T* d, std::int64_t r, std::int64_t c) : data(d), rows(r), cols(c), ld(c) {}
    constexpr MatrixView(T* d, std::int64_t r, std::int64_t c, std::int64_t l) : data(d), rows(r), cols(c), ld(l) {}

    // A view of T converts to a view of T const, never the other way.
    template <class U>
        requires(std::is_same_v<T, U const>)
    constexpr MatrixView(MatrixView<U> const& o) : data(o.data), rows(o.rows), cols(o.cols), ld(o.ld) {}

    constexpr T* row(std::int64_t r) const { return data + r * ld; }
    constexpr T& operator()(std::int64_t r, std::int64_t c) const { return data[r * ld + c]; }
    constexpr bool empty() const { return rows == 0 || cols == 0; }
    constexpr bool contiguous() const { return ld == cols; }
    constexpr std::span<T> row_span(std::int64_t r) const { return {row(r), static_cast<std::size_t>(cols)}; }
    constexpr MatrixView block(std::int64_t r0, std::int64_t nr) const { return {row(r0), nr, cols, ld}; }
};

template <class T>
MatrixView(T*, std::int64_t, std::int64_t) -> MatrixView<T>;

// `count` matrices of rows x cols stacked in one tensor, e.g. expert weights [E, out, in]. `stride` is
// the distance in elements between two matrices, so a fused [E, 2f, d] tensor yields two views.
template <class T>
struct StackedView {
    T* data = nullptr;
    std::int64_t count = 0;
    std::int64_t rows = 0;
    std::int64_t cols = 0;
    std::int64_t ld = 0;
    std::int64_t stride = 0;

    constexpr StackedView() = default;
    // A dense [count, rows, cols] tensor.
    constexpr StackedView(T* d, std::int64_t n, std::int64_t r, std::int64_t c)
        : data(d), count(n), rows(r), cols(c), ld(c), stride(r * c) {}
    constexpr StackedView(T* d, std::int64_t n, std::int64_t r, std::int64_t c, std::int64_t l, std::int64_t s)
        : data(d), count(n), rows(r), cols(c), ld(l), stride(s) {}
    template <class U>
        requires(std::is_same_v<T, U const>)
    constexpr StackedView(StackedView<U> const& o)
        : data(o.data), count(o.count), rows(o.rows), cols(o.cols), ld(o.ld), stride(o.stride) {}

    constexpr MatrixView<T> operator[](std::int64_t i) const { return {data + i * stride, rows, cols, ld}; }
};

namespace detail {

// Built by appending: g++ 12's -Wrestrict misfires on `"literal" + std::string&&` (GCC PR 105651).
inline std::string shape_text(std::int64_t r, std::int64_t c) {
    std::string s = "[";
    s += std::to_string(r);
    s += ", ";
    s += std::to_string(c);
    s += ']';
    return s;
}

inline std::string shape_text(std::int64_t n, std::int64_t r, std::int64_t c) {
    std::string s = "[";
    s += std::to_string(n);
    s += ", ";
    s += shape_text(r, c).substr(1);
    return s;
}

// Checks that a view is well formed and, where rows/cols are >= 0, that it has that shape.
template <class T>
void check_view(MatrixView<T> const& v, char const* name, std::int64_t rows, std::int64_t cols) {
    if (v.rows < 0 || v.cols < 0 || v.ld < v.cols)
        fail(name, shape_text(v.rows, v.cols) + " with ld " + std::to_string(v.ld),
             "non-negative sizes and ld >= cols");
    if (v.data == nullptr && v.rows > 0 && v.cols > 0) fail(name, "a null pointer", "data for a non-empty view");
    if ((rows >= 0 && v.rows != rows) || (cols >= 0 && v.cols != cols))
        fail(name, shape_text(v.rows, v.cols),
             "shape " + shape_text(rows, cols) + (rows < 0 || cols < 0 ? " (-1: any)" : ""));
}

template <class T>
void check_stacked(StackedView<T> const& v, char const* name, std::int64_t count, std::int64_t rows, std::int64_t cols) {
    if (v.count != count || v.rows != rows || v.cols != cols)
        fail(name, shape_text(v.count, v.rows, v.cols), "shape " + shape_text(count, rows, cols));
    if (v.ld < v.cols || v.stride < 0) fail(name, "ld " + std::to_string(v.ld), "ld >= cols and stride >= 0");
    if (v.data == nullptr && count > 0 && rows > 0 && cols > 0) fail(name, "a null pointer", "weight data");
}

// A per-expert vector such as a selection bias: exactly `count` finite values. The first bad entry
// is named, as check_finite names a logit. O(count), outside any per-token loop.
inline void check_vector(std::span<float const> v, std::int64_t count, char const* name, char const* count_name,
                         char const* index_name) {
    if (static_cast<std::int64_t>(v.size()) != count)
        fail(name, "length " + std::to_string(v.size()), std::string("length ") + count_name + " = " + std::to_string(count));
    for (std::size_t i = 0; i < v.size(); ++i)
        if (!std::isfinite(v[i])) fail(name, to_text(v[i]) + " at " + index_name + " " + std::to_string(i), "finite values");
}

}  // namespace detail
}  // namespace smoe::inline v0
