#pragma once
// Strict JSON for untrusted files (safetensors headers, index and config files): UTF-8 is checked
// first, duplicate keys are an error (nlohmann::json alone silently keeps the last of two equal
// keys, which would let a header hide a tensor entry), and nesting is capped so a hostile file
// cannot build an arbitrarily deep tree.
//
// Python's json module writes float('inf'), -inf and nan as the bare tokens Infinity, -Infinity and NaN
// (allow_nan, its default), which are not JSON. transformers 4.x config.json files carry them (Mamba's and
// Nemotron-H's time_step_limit [0.0, Infinity]); 5.x writes {"__float__": "Infinity"}, which is JSON. An engine
// author expects a published config to load, so config files are parsed with JsonFloats::python: those three
// tokens, whole and where a value stands, become the doubles they name (a key smoe reads then fails its own
// finiteness check, naming the key); `Inf`, `+Infinity`, `infinity` or `NaN` inside a key stay errors.
// Safetensors headers and index files keep JsonFloats::strict.

#include <smoe/io/file_error.hpp>

#include <nlohmann/json.hpp>

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace smoe::inline v0::io {

// Offset of the first byte that is not part of well-formed UTF-8 (RFC 3629: no overlong forms,
// no surrogates, nothing above U+10FFFF), or nullopt when all of `s` is well formed.
constexpr std::optional<std::size_t> find_invalid_utf8(std::string_view s) noexcept {
    std::size_t i = 0;
    while (i < s.size()) {
        auto const b0 = static_cast<unsigned char>(s[i]);
        if (b0 < 0x80) {
            ++i;
            continue;
        }
        std::size_t len = 0;
        unsigned char lo = 0x80, hi = 0xBF;  // allowed range of the second byte
        if (b0 >= 0xC2 && b0 <= 0xDF) {
            len = 2;
        } else if (b0 >= 0xE0 && b0 <= 0xEF) {
            len = 3;
            if (b0 == 0xE0) lo = 0xA0;  // overlong
            if (b0 == 0xED) hi = 0x9F;  // surrogates
        } else if (b0 >= 0xF0 && b0 <= 0xF4) {
            len = 4;
            if (b0 == 0xF0) lo = 0x90;  // overlong
            if (b0 == 0xF4) hi = 0x8F;  // above U+10FFFF
        } else {
            return i;
        }
        if (s.size() - i < len) return i;
        for (std::size_t k = 1; k < len; ++k) {
            auto const b = static_cast<unsigned char>(s[i + k]);
            if (k == 1 ? (b < lo || b > hi) : (b < 0x80 || b > 0xBF)) return i;
        }
        i += len;
    }
    return std::nullopt;
}

enum class JsonFloats { strict, python };

namespace detail {

// The decoded value of the string that stands in for a Python float token (an escaped U+0001 first, so the
// JSON text around it stays valid); the builder turns it back into the double.
inline constexpr std::string_view kPythonFloatMark = "\x01";

// `text` with each Python float token in value position replaced by "\u0001<token>", or nullopt when there is
// none (or when a string of the file itself holds an escaped U+0001, which would read as a marker).
inline std::optional<std::string> mark_python_floats(std::string_view text) {
    std::string out;
    std::size_t copied = 0;
    bool in_string = false;
    char prev = 0;  // the last byte outside strings that is not whitespace
    auto ws = [](char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r'; };
    for (std::size_t i = 0; i < text.size(); ++i) {
        char const c = text[i];
        if (in_string) {
            if (c == '\\' && i + 1 < text.size()) {
                if (text.substr(i + 1, 5) == "u0001") return std::nullopt;
                ++i;
            } else if (c == '"') {
                in_string = false;
                prev = '"';
            }
            continue;
        }
        if (c == '"') {
            in_string = true;
            continue;
        }
        if (ws(c)) continue;
        if (prev == 0 || prev == ':' || prev == '[' || prev == ',') {
            for (std::string_view tok : {"NaN", "Infinity", "-Infinity"}) {
                std::size_t const end = i + tok.size();
                if (text.substr(i, tok.size()) != tok) continue;
                if (end < text.size() && !ws(text[end]) && text[end] != ',' && text[end] != ']' && text[end] != '}') continue;
                out.append(text.substr(copied, i - copied)).append("\"\\u0001").append(tok).append("\"");
                copied = end;
                i = end - 1;
                break;
            }
        }
        prev = text[i];
    }
    if (copied == 0) return std::nullopt;
    out.append(text.substr(copied));
    return out;
}

// A nlohmann DOM builder that refuses duplicate keys and deep nesting.
class StrictDomBuilder : public nlohmann::json_sax<nlohmann::json> {
public:
    using json = nlohmann::json;

    StrictDomBuilder(std::string const& label, std::size_t max_depth, bool python_floats = false)
        : label_(label), max_depth_(max_depth), python_floats_(python_floats) {}

    json& result() { return root_; }

    // The error found, if parsing stopped early; sax_parse returns false then.
    std::optional<file_error> const& error() const { return error_; }

    bool null() override { return value(json(nullptr)); }
    bool boolean(bool v) override { return value(json(v)); }
    bool number_integer(number_integer_t v) override { return value(json(v)); }
    bool number_unsigned(number_unsigned_t v) override { return value(json(v)); }
    bool number_float(number_float_t v, string_t const&) override { return value(json(v)); }
    bool string(string_t& v) override {
        if (python_floats_ && v.size() > 1 && v.compare(0, 1, kPythonFloatMark) == 0) {
            std::string_view const t = std::string_view(v).substr(1);
            if (t == "NaN") return value(json(std::numeric_limits<double>::quiet_NaN()));
            if (t == "Infinity" || t == "-Infinity") return value(json(t[0] == '-' ? -HUGE_VAL : HUGE_VAL));
        }
        return value(json(std::move(v)));
    }
    bool binary(binary_t&) override { return stop("JSON value", "binary", "text JSON"); }

    bool start_object(std::size_t) override { return open(json::value_t::object); }
    bool start_array(std::size_t) override { return open(json::value_t::array); }
    bool end_object() override { return close(); }
    bool end_array() override { return close(); }

    bool key(string_t& k) override {
        json& object = *stack_.back();
        if (object.contains(k))
            return stop("JSON object " + pointer(), detail::quoted(k), "each key at most once (duplicate key)");
        slot_ = &object[k];
        last_key_ = k;
        return true;
    }

    bool parse_error(std::size_t position, std::string const&, nlohmann::detail::exception const& e) override {
        // nlohmann's message quotes the token read so far, which may be huge; keep it short.
        std::string what = e.what();
        if (what.size() > 300) what = what.substr(0, 300) + "...";
        return stop("JSON text", "byte " + std::to_string(position) + ": " + what, "valid JSON");
    }

private:
    json* place(json&& v) {
        if (stack_.empty()) {
            root_ = std::move(v);
            return &root_;
        }
        if (stack_.back()->is_array()) {
            stack_.back()->push_back(std::move(v));
            return &stack_.back()->back();
        }
        *slot_ = std::move(v);
        return slot_;
    }

    bool value(json&& v) {
        place(std::move(v));
        return true;
    }

    bool open(json::value_t type) {
        if (stack_.size() >= max_depth_)
            return stop("JSON nesting", std::to_string(stack_.size() + 1) + " levels at " + pointer(),
                        "at most " + std::to_string(max_depth_) + " levels");
        keys_.push_back(stack_.empty() ? std::string() : (stack_.back()->is_array() ? "[]" : last_key_));
        stack_.push_back(place(json(type)));
        return true;
    }

    bool close() {
        stack_.pop_back();
        keys_.pop_back();
        return true;
    }

    std::string pointer() const {
        std::string p;
        for (std::size_t i = 1; i < keys_.size(); ++i) p += "/" + keys_[i].substr(0, 100);
        return p.empty() ? "at the top level" : "at " + p;
    }

    bool stop(std::string const& what, std::string value, std::string expected) {
        error_.emplace(label_, what, std::move(value), std::move(expected));
        return false;
    }

    std::string const& label_;
    std::size_t max_depth_;
    bool python_floats_;
    json root_;
    std::vector<json*> stack_;
    std::vector<std::string> keys_;
    std::string last_key_;
    json* slot_ = nullptr;
    std::optional<file_error> error_;
};

}  // namespace detail

// Parses `text` (named `label` in errors) or throws file_error: invalid UTF-8 (with the byte
// offset), invalid JSON, a duplicate key, or more than `max_depth` nested containers. `floats`: whether
// Python's Infinity, -Infinity and NaN tokens are read (config files; see the top of this file).
inline nlohmann::json parse_json_strict(std::string_view text, std::string const& label, std::size_t max_depth = 32,
                                        JsonFloats floats = JsonFloats::strict) {
    if (auto bad = find_invalid_utf8(text))
        detail::file_fail(label, "JSON text", "byte " + std::to_string(*bad) + " is not UTF-8", "valid UTF-8");
    // JSON text never holds a raw NUL (not whitespace outside strings, an unescaped control
    // character inside), but nlohmann's lexer takes one for the end of input and would accept
    // `{...}\0garbage`; the reference reader (serde_json) rejects it, and so do we.
    if (auto nul = text.find('\0'); nul != std::string_view::npos)
        detail::file_fail(label, "JSON text", "a NUL byte at byte " + std::to_string(nul), "valid JSON");
    std::optional<std::string> const marked = floats == JsonFloats::python ? detail::mark_python_floats(text) : std::nullopt;
    if (marked) text = *marked;  // byte offsets in errors then count the markers' extra bytes
    detail::StrictDomBuilder builder(label, max_depth, marked.has_value());
    bool const ok = nlohmann::json::sax_parse(text.begin(), text.end(), &builder);
    if (!ok || builder.error()) {
        if (builder.error()) throw *builder.error();
        detail::file_fail(label, "JSON text", "unparsable", "valid JSON");
    }
    return std::move(builder.result());
}

}  // namespace smoe::inline v0::io
