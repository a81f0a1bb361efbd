#pragma once
// SafetensorsFile: one .safetensors file, memory-mapped read-only and validated as untrusted input.
//
// Layout: an 8-byte little-endian header length N, N bytes of UTF-8 JSON, then the data area.
// The JSON maps each tensor name to {"dtype", "shape", "data_offsets": [begin, end]} (offsets
// relative to the data area) and may hold "__metadata__", an object of string -> string.
//
// Every check of huggingface/safetensors' reader (safetensors/src/tensor.rs) is made here, and a
// few more; each failure is a smoe::io::file_error naming the file, the tensor or key, the value
// found and what was expected:
//  * at least 8 bytes; 0 < N <= 100'000'000 (the reference's MAX_HEADER_SIZE) and N <= size - 8;
//  * the header is UTF-8, JSON, an object, with no duplicate key (nlohmann::json would silently
//    keep one of two entries of the same name);
//  * each tensor entry is an object with exactly dtype (a known name), shape (non-negative
//    integers whose product, times the dtype size, fits 64 bits) and data_offsets (two integers,
//    begin <= end, end - begin = numel * dtype size); the reference ignores unknown fields, we
//    reject them: no known writer emits any, and a misspelt field is more likely than a new one;
//  * sorted by offsets, the tensors tile the data area exactly: each starts where the previous one
//    ends (so none overlap and there are no holes) and the last ends at the end of the file. The
//    reference requires exactly this (Metadata::validate and MetadataIncompleteBuffer), so a file
//    we accept is one it accepts, and no byte of the file is left unaccounted for.
//
// TensorInfo::bytes may be UNALIGNED for its dtype: the data area starts at 8 + N, and writers
// other than the reference do not pad N to a multiple of 8. Never reinterpret_cast it to a typed
// pointer; copy with std::memcpy (read_f32 and friends in tensor_read.hpp do).

#include <smoe/io/dtype.hpp>
#include <smoe/io/file_error.hpp>
#include <smoe/io/mapped_file.hpp>
#include <smoe/io/strict_json.hpp>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <limits>
#include <map>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace smoe::inline v0::io {

struct TensorInfo {
    std::string name;
    Dtype dtype = Dtype::F32;
    std::vector<std::int64_t> shape;
    std::span<std::byte const> bytes;  // may be unaligned: see the top of this file
    std::string file;                  // the file it came from, for error messages

    std::int64_t numel() const noexcept {
        std::int64_t n = 1;
        for (std::int64_t d : shape) n *= d;  // validated at open: cannot overflow
        return n;
    }
};

// "[2, 3]"; -1 prints as "any".
inline std::string shape_text(std::span<std::int64_t const> shape) {
    std::string s = "[";
    for (std::size_t i = 0; i < shape.size(); ++i) {
        if (i) s += ", ";
        s += shape[i] < 0 ? std::string("any") : std::to_string(shape[i]);
    }
    return s + "]";
}

class SafetensorsFile {
public:
    static constexpr std::uint64_t kMaxHeaderBytes = 100'000'000;

    static SafetensorsFile open(std::filesystem::path const& path) {
        return SafetensorsFile(MappedFile::open(path), path, path.string());
    }

    // The same validation on bytes in memory; `label` names them in errors.
    static SafetensorsFile from_bytes(std::vector<std::byte> bytes, std::string label) {
        std::filesystem::path p(label);
        return SafetensorsFile(MappedFile(std::move(bytes)), std::move(p), std::move(label));
    }

    SafetensorsFile(SafetensorsFile&&) noexcept = default;
    SafetensorsFile& operator=(SafetensorsFile&&) noexcept = default;
    SafetensorsFile(SafetensorsFile const&) = delete;
    SafetensorsFile& operator=(SafetensorsFile const&) = delete;

    std::filesystem::path const& path() const noexcept { return path_; }
    std::string const& label() const noexcept { return label_; }

    // In file order: by data offset (empty tensors sharing an offset by name).
    std::vector<TensorInfo> const& tensors() const noexcept { return tensors_; }

    TensorInfo const* find(std::string_view name) const {
        auto it = index_.find(name);
        return it == index_.end() ? nullptr : &tensors_[it->second];
    }

    TensorInfo const& at(std::string_view name) const {
        if (auto const* t = find(name)) return *t;
        detail::file_fail(label_, "tensor " + detail::quoted(name), std::string("missing"),
                          "a tensor of that name (the file holds " + std::to_string(tensors_.size()) + ")");
    }

    std::map<std::string, std::string> const& metadata() const noexcept { return metadata_; }

    // The whole file, header included.
    std::span<std::byte const> file_bytes() const noexcept { return data_.bytes(); }

private:
    SafetensorsFile(MappedFile data, std::filesystem::path path, std::string label)
        : data_(std::move(data)), path_(std::move(path)), label_(std::move(label)) {
        parse();
    }

    struct Entry {
        std::string name;
        Dtype dtype;
        std::vector<std::int64_t> shape;
        std::uint64_t begin, end;
    };

    [[noreturn]] void fail(std::string const& what, std::string value, std::string expected) const {
        detail::file_fail(label_, what, std::move(value), std::move(expected));
    }

    void parse() {
        auto const file = data_.bytes();
        if (file.size() < 8)
            fail("file size", std::to_string(file.size()) + " bytes", "at least 8 bytes (the header length)");
        std::uint64_t n = 0;
        for (int i = 7; i >= 0; --i) n = (n << 8) | static_cast<std::uint8_t>(file[static_cast<std::size_t>(i)]);
        if (n == 0) fail("header length", "0", "at least 2 bytes (a JSON object)");
        if (n > kMaxHeaderBytes) fail("header length", std::to_string(n), "at most 100000000 bytes");
        if (n > file.size() - 8)
            fail("header length", std::to_string(n),
                 "at most the file size minus 8 = " + std::to_string(file.size() - 8) + " bytes (truncated file?)");

        std::string_view const text(reinterpret_cast<char const*>(file.data()) + 8, static_cast<std::size_t>(n));
        // Depth 3 is all a header needs: the top object, a tensor entry, its shape.
        nlohmann::json const header = parse_json_strict(text, label_, 3);
        if (!header.is_object()) fail("header", header.type_name(), "a JSON object");

        std::uint64_t const data_size = file.size() - 8 - n;
        std::vector<Entry> entries;
        entries.reserve(header.size());
        for (auto const& [key, value] : header.items()) {
            if (key == "__metadata__")
                read_metadata(value);
            else
                entries.push_back(read_entry(key, value, data_size));
        }
        // Stable: entries come in key order from the std::map-backed object, so ties (empty
        // tensors at one offset) are ordered by name.
        std::stable_sort(entries.begin(), entries.end(), [](Entry const& a, Entry const& b) {
            return a.begin != b.begin ? a.begin < b.begin : a.end < b.end;
        });
        check_tiling(entries, data_size);

        std::byte const* const data = file.data() + 8 + n;
        tensors_.reserve(entries.size());
        for (Entry& e : entries) {
            index_.emplace(e.name, tensors_.size());
            tensors_.push_back(TensorInfo{std::move(e.name), e.dtype, std::move(e.shape),
                                          {data + e.begin, static_cast<std::size_t>(e.end - e.begin)}, label_});
        }
    }

    void read_metadata(nlohmann::json const& value) {
        if (!value.is_object()) fail("__metadata__", value.type_name(), "a JSON object of string -> string");
        for (auto const& [k, v] : value.items()) {
            if (!v.is_string())
                fail("__metadata__ key " + detail::quoted(k), v.type_name(), "a string value");
            metadata_.emplace(k, v.get<std::string>());
        }
    }

    static std::string dump(nlohmann::json const& v) {
        std::string s = v.dump();
        return s.size() > 200 ? s.substr(0, 200) + "..." : s;
    }

    // A JSON number that is an integer in [0, max]; anything else (negative, fractional,
    // beyond 2^64 and so parsed as a float) is nullopt.
    static std::optional<std::uint64_t> as_count(nlohmann::json const& v, std::uint64_t max) {
        std::uint64_t x = 0;
        if (v.is_number_unsigned())
            x = v.get<std::uint64_t>();
        else if (v.is_number_integer() && v.get<std::int64_t>() >= 0)
            x = static_cast<std::uint64_t>(v.get<std::int64_t>());
        else
            return std::nullopt;
        if (x > max) return std::nullopt;
        return x;
    }

    Entry read_entry(std::string const& name, nlohmann::json const& value, std::uint64_t data_size) const {
        std::string const t = "tensor " + detail::quoted(name);
        if (!value.is_object())
            fail(t, value.type_name(), "a JSON object with dtype, shape and data_offsets");
        for (auto const& [k, v] : value.items())
            if (k != "dtype" && k != "shape" && k != "data_offsets")
                fail(t + " key " + detail::quoted(k), "present", "only dtype, shape and data_offsets");
        for (char const* k : {"dtype", "shape", "data_offsets"})
            if (!value.contains(k)) fail(t + " " + k, "missing", "present");

        auto const& jdtype = value["dtype"];
        if (!jdtype.is_string()) fail(t + " dtype", dump(jdtype), "a string, " + std::string(kDtypeNames));
        auto const dtype = parse_dtype(jdtype.get_ref<std::string const&>());
        if (!dtype) fail(t + " dtype", detail::quoted(jdtype.get_ref<std::string const&>()), std::string(kDtypeNames));

        auto const& jshape = value["shape"];
        if (!jshape.is_array()) fail(t + " shape", dump(jshape), "a list of non-negative integers");
        std::vector<std::int64_t> shape;
        bool has_zero = false;
        for (std::size_t i = 0; i < jshape.size(); ++i) {
            auto const d = as_count(jshape[i], static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max()));
            if (!d) fail(t + " shape[" + std::to_string(i) + "]", dump(jshape[i]), "a non-negative integer below 2^63");
            shape.push_back(static_cast<std::int64_t>(*d));
            has_zero = has_zero || *d == 0;
        }
        // numel * dtype size must fit 63 bits (numel() returns int64); a zero dim makes it 0 however large the rest.
        std::uint64_t nbytes = 0;
        if (!has_zero) {
            std::uint64_t const limit = static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max());
            nbytes = dtype_size(*dtype);
            for (std::int64_t d : shape) {
                auto const ud = static_cast<std::uint64_t>(d);
                if (nbytes > limit / ud)
                    fail(t + " shape", shape_text(shape), "a size that fits 2^63 bytes (overflow)");
                nbytes *= ud;
            }
        }

        auto const& joff = value["data_offsets"];
        if (!joff.is_array() || joff.size() != 2) fail(t + " data_offsets", dump(joff), "a list of two integers [begin, end]");
        auto const begin = as_count(joff[0], std::numeric_limits<std::uint64_t>::max());
        auto const end = as_count(joff[1], std::numeric_limits<std::uint64_t>::max());
        if (!begin || !end) fail(t + " data_offsets", dump(joff), "two non-negative integers [begin, end]");
        if (*begin > *end) fail(t + " data_offsets", dump(joff), "begin <= end");
        if (*end > data_size)
            fail(t + " data_offsets", dump(joff),
                 "offsets inside the data area of " + std::to_string(data_size) + " bytes");
        if (*end - *begin != nbytes)
            fail(t + " data_offsets", dump(joff) + " (" + std::to_string(*end - *begin) + " bytes)",
                 std::to_string(nbytes) + " bytes for dtype " + std::string(dtype_name(*dtype)) + " and shape " +
                     shape_text(shape));
        return Entry{name, *dtype, std::move(shape), *begin, *end};
    }

    // Sorted entries must tile [0, data_size) exactly; see the top of this file.
    void check_tiling(std::vector<Entry> const& entries, std::uint64_t data_size) const {
        std::uint64_t pos = 0;
        std::string const* previous = nullptr;
        for (Entry const& e : entries) {
            std::string const offsets = "[" + std::to_string(e.begin) + ", " + std::to_string(e.end) + "]";
            std::string const t = "tensor " + detail::quoted(e.name) + " data_offsets";
            if (e.begin < pos)
                fail(t, offsets, "no overlap with tensor " + detail::quoted(*previous) + ", which ends at " +
                                     std::to_string(pos));
            if (e.begin > pos)
                fail(t, offsets,
                     "to start at " + std::to_string(pos) +
                         (previous ? ", where tensor " + detail::quoted(*previous) + " ends" : std::string()) +
                         " (the data area must be covered without holes)");
            pos = e.end;
            previous = &e.name;
        }
        if (pos != data_size)
            fail("data area", std::to_string(data_size) + " bytes",
                 std::to_string(pos) + " bytes, the end of the last tensor (no trailing bytes)");
    }

    MappedFile data_;
    std::filesystem::path path_;
    std::string label_;
    std::vector<TensorInfo> tensors_;
    std::map<std::string, std::size_t, std::less<>> index_;
    std::map<std::string, std::string> metadata_;
};

}  // namespace smoe::inline v0::io
