#pragma once
// smoe::io::file_error: a malformed or unreadable file. It is a smoe::invalid_argument, so a host
// that catches smoe::invalid_argument for every bad input catches these too; the message names the
// file, the tensor or key inside it, the offending value and what was expected.

#include <smoe/core/error.hpp>

#include <string>
#include <string_view>
#include <utility>

namespace smoe::inline v0::io {

class file_error : public smoe::invalid_argument {
public:
    // `what` is the place inside the file ("header length", "tensor 'w' dtype", ...).
    file_error(std::string file, std::string const& what, std::string value, std::string expected)
        : smoe::invalid_argument(file + ": " + what, std::move(value), std::move(expected)), file_(std::move(file)) {}

    std::string const& file() const noexcept { return file_; }

private:
    std::string file_;
};

namespace detail {

template <class T>
[[noreturn]] void file_fail(std::string const& file, std::string const& what, T const& value, std::string expected) {
    throw file_error(file, what, smoe::detail::to_text(value), std::move(expected));
}

// A name or key as it appears in messages: quoted, and cut short so that a hostile 100 MB key
// cannot turn into a 100 MB exception message. Call it qualified (detail::quoted): unqualified,
// ADL also finds std::quoted, which wins for a non-const std::string argument.
inline std::string quoted(std::string_view s) {
    constexpr std::size_t kMax = 200;
    std::string out = "'";
    out.append(s.substr(0, kMax));
    if (s.size() > kMax) out += "...";
    out += "'";
    return out;
}
inline std::string quoted(std::string const& s) { return quoted(std::string_view(s)); }

}  // namespace detail
}  // namespace smoe::inline v0::io
