#pragma once
// smoe::invalid_argument: every bad input (shape, config value, non-finite logit, malformed file)
// is reported with the argument's name, the offending value and what was expected.

#include <cstdint>
#include <new>
#include <sstream>
#include <stdexcept>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>

namespace smoe::inline v0 {

class invalid_argument : public std::invalid_argument {
public:
    invalid_argument(std::string argument, std::string value, std::string expected)
        : std::invalid_argument("smoe: invalid argument '" + argument + "' = " + value + ": expected " + expected),
          argument_(std::move(argument)), value_(std::move(value)), expected_(std::move(expected)) {}

    std::string const& argument() const noexcept { return argument_; }
    std::string const& value() const noexcept { return value_; }
    std::string const& expected() const noexcept { return expected_; }

private:
    std::string argument_, value_, expected_;
};

// What smoe throws instead of a bare std::bad_alloc where it knows what it was building (a layer
// loaded from a checkpoint, ...): still a std::bad_alloc, so a host's handler for that catches it,
// but what() names the thing and its size, as every other smoe error does.
class allocation_error : public std::bad_alloc {
public:
    explicit allocation_error(std::string const& what) : what_("smoe: out of memory " + what) {}
    char const* what() const noexcept override { return what_.what(); }

private:
    std::runtime_error what_;  // a reference-counted string whose copy cannot throw
};

namespace detail {

template <class T>
std::string to_text(T const& v) {
    if constexpr (std::is_same_v<T, bool>) {
        return v ? "true" : "false";
    } else if constexpr (std::is_convertible_v<T const&, std::string_view>) {
        return std::string(std::string_view(v));
    } else {
        std::ostringstream s;
        s.precision(9);
        s << v;
        return s.str();
    }
}

template <class T>
[[noreturn]] void fail(std::string argument, T const& value, std::string expected) {
    throw invalid_argument(std::move(argument), to_text(value), std::move(expected));
}

template <class T>
void require(bool ok, char const* argument, T const& value, char const* expected) {
    if (!ok) fail(argument, value, expected);
}

}  // namespace detail
}  // namespace smoe::inline v0
