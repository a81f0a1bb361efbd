#pragma once
// Checked reads of one tensor into a std::vector of the type asked for. The dtype must convert
// exactly (no narrowing except I64 -> int32 with a range check), and the shape must match
// `expected_shape` where it is not empty (-1 entries match any extent; an empty expected_shape
// checks nothing, so require a scalar by looking at TensorInfo::shape). Errors name the file, the
// tensor, and the dtype or shape expected and found. Each comes for a TensorInfo, a SafetensorsFile
// and a Checkpoint.
//
// The source bytes may be unaligned (see safetensors_file.hpp): every element is copied with
// std::memcpy, never read through a cast pointer.

#include <smoe/core/bf16.hpp>
#include <smoe/io/dtype.hpp>
#include <smoe/io/file_error.hpp>
#include <smoe/io/checkpoint.hpp>
#include <smoe/io/safetensors_file.hpp>

#include <bit>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <limits>
#include <span>
#include <string>
#include <string_view>
#include <type_traits>
#include <vector>

namespace smoe::inline v0::io {

static_assert(std::endian::native == std::endian::little,
              "safetensors data is little-endian; smoe::io reads it in place on little-endian hosts only");

inline void check_shape(TensorInfo const& t, std::vector<std::int64_t> const& expected_shape) {
    if (expected_shape.empty()) return;
    bool ok = t.shape.size() == expected_shape.size();
    for (std::size_t i = 0; ok && i < t.shape.size(); ++i) ok = expected_shape[i] < 0 || expected_shape[i] == t.shape[i];
    if (!ok) detail::file_fail(t.file, "tensor " + detail::quoted(t.name) + " shape", shape_text(t.shape), shape_text(expected_shape));
}

namespace detail {

[[noreturn]] inline void dtype_fail(TensorInfo const& t, char const* expected) {
    file_fail(t.file, "tensor " + detail::quoted(t.name) + " dtype", std::string(dtype_name(t.dtype)), expected);
}

template <class Raw>
Raw load(std::byte const* p) noexcept {
    Raw v;
    std::memcpy(&v, p, sizeof v);
    return v;
}

template <class Out, class Raw, class Convert>
std::vector<Out> convert_all(TensorInfo const& t, Convert convert) {
    std::size_t const n = t.bytes.size() / sizeof(Raw);
    std::vector<Out> out(n);
    for (std::size_t i = 0; i < n; ++i) out[i] = convert(load<Raw>(t.bytes.data() + i * sizeof(Raw)), i);
    return out;
}

template <class Out, class Raw>
std::vector<Out> widen_all(TensorInfo const& t) {
    return convert_all<Out, Raw>(t, [](Raw v, std::size_t) { return static_cast<Out>(v); });
}

}  // namespace detail

// F32 as is; BF16 and F16 widened exactly (subnormals, inf and nan included).
inline std::vector<float> read_f32(TensorInfo const& t, std::vector<std::int64_t> const& expected_shape = {}) {
    check_shape(t, expected_shape);
    switch (t.dtype) {
        case Dtype::F32: return detail::widen_all<float, float>(t);
        case Dtype::BF16:
            return detail::convert_all<float, std::uint16_t>(t, [](std::uint16_t v, std::size_t) { return bf16_to_f32(v); });
        case Dtype::F16:
            return detail::convert_all<float, std::uint16_t>(t, [](std::uint16_t v, std::size_t) { return f16_to_f32(v); });
        default: detail::dtype_fail(t, "F32, BF16 or F16 (read as float)");
    }
}

// I32 as is; I16, I8, U8 and BOOL widened; I64 when every value fits int32.
inline std::vector<std::int32_t> read_i32(TensorInfo const& t, std::vector<std::int64_t> const& expected_shape = {}) {
    check_shape(t, expected_shape);
    switch (t.dtype) {
        case Dtype::I32: return detail::widen_all<std::int32_t, std::int32_t>(t);
        case Dtype::I16: return detail::widen_all<std::int32_t, std::int16_t>(t);
        case Dtype::I8: return detail::widen_all<std::int32_t, std::int8_t>(t);
        case Dtype::U8:
        case Dtype::BOOL: return detail::widen_all<std::int32_t, std::uint8_t>(t);
        case Dtype::I64:
            return detail::convert_all<std::int32_t, std::int64_t>(t, [&t](std::int64_t v, std::size_t i) {
                if (v < std::numeric_limits<std::int32_t>::min() || v > std::numeric_limits<std::int32_t>::max())
                    detail::file_fail(t.file, "tensor " + detail::quoted(t.name) + " element " + std::to_string(i), v,
                                      "a value that fits int32");
                return static_cast<std::int32_t>(v);
            });
        default: detail::dtype_fail(t, "I32, I16, I8, U8, BOOL or I64 (read as int32)");
    }
}

// U8 and BOOL bytes as they are.
inline std::vector<std::uint8_t> read_u8(TensorInfo const& t, std::vector<std::int64_t> const& expected_shape = {}) {
    check_shape(t, expected_shape);
    if (t.dtype != Dtype::U8 && t.dtype != Dtype::BOOL) detail::dtype_fail(t, "U8 or BOOL");
    return detail::widen_all<std::uint8_t, std::uint8_t>(t);
}

// Every value read from tensor t is finite, else an error naming the file, the tensor and the first
// bad element: past the reader a NaN surfaces under an internal name ("logits", "scales").
template <class T>
void require_finite(TensorInfo const& t, std::span<T const> values) {
    for (std::size_t i = 0; i < values.size(); ++i) {
        float v;
        if constexpr (std::is_same_v<T, bf16>)
            v = to_float(values[i]);
        else
            v = values[i];
        if (!std::isfinite(v))
            detail::file_fail(t.file, "tensor " + detail::quoted(t.name) + " element " + std::to_string(i), v,
                              "finite values");
    }
}

inline std::vector<float> read_f32(SafetensorsFile const& f, std::string_view name,
                                   std::vector<std::int64_t> const& expected_shape = {}) {
    return read_f32(f.at(name), expected_shape);
}
inline std::vector<float> read_f32(Checkpoint const& c, std::string_view name,
                                   std::vector<std::int64_t> const& expected_shape = {}) {
    return read_f32(c.at(name), expected_shape);
}
inline std::vector<std::int32_t> read_i32(SafetensorsFile const& f, std::string_view name,
                                          std::vector<std::int64_t> const& expected_shape = {}) {
    return read_i32(f.at(name), expected_shape);
}
inline std::vector<std::int32_t> read_i32(Checkpoint const& c, std::string_view name,
                                          std::vector<std::int64_t> const& expected_shape = {}) {
    return read_i32(c.at(name), expected_shape);
}
inline std::vector<std::uint8_t> read_u8(SafetensorsFile const& f, std::string_view name,
                                         std::vector<std::int64_t> const& expected_shape = {}) {
    return read_u8(f.at(name), expected_shape);
}
inline std::vector<std::uint8_t> read_u8(Checkpoint const& c, std::string_view name,
                                         std::vector<std::int64_t> const& expected_shape = {}) {
    return read_u8(c.at(name), expected_shape);
}

}  // namespace smoe::inline v0::io
