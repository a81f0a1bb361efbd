#pragma once
// SafetensorsWriter: builds a .safetensors file that the reference implementation reads back.
//
// Like the reference writer (huggingface/safetensors, tensor.rs `prepare`), the tensors are laid
// out by decreasing element size (ties keep the order of add()) and the JSON header is padded
// with spaces to a multiple of 8 bytes, so that every tensor's data is aligned to its element size
// in the file and in a page-aligned mapping of it.

#include <smoe/io/dtype.hpp>
#include <smoe/io/file_error.hpp>
#include <smoe/io/strict_json.hpp>

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <map>
#include <set>
#include <span>
#include <string>
#include <vector>

namespace smoe::inline v0::io {

class SafetensorsWriter {
public:
    // `bytes` (copied) must hold numel(shape) * dtype_size(dtype) bytes, little-endian.
    void add(std::string name, Dtype dtype, std::vector<std::int64_t> shape, std::span<std::byte const> bytes) {
        if (name == "__metadata__") smoe::detail::fail("name", name, "a tensor name other than __metadata__");
        if (find_invalid_utf8(name)) smoe::detail::fail("name", std::string("not UTF-8"), "a UTF-8 tensor name");
        if (names_.contains(name)) smoe::detail::fail("name", name, "a tensor name not added before");
        std::uint64_t n = dtype_size(dtype);
        for (std::int64_t d : shape) {
            if (d < 0) smoe::detail::fail("shape of " + name, d, "non-negative extents");
            if (d != 0 && n > static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max()) / static_cast<std::uint64_t>(d))
                smoe::detail::fail("shape of " + name, d, "a tensor size below 2^63 bytes");
            n *= static_cast<std::uint64_t>(d);
        }
        if (n != bytes.size())
            smoe::detail::fail("bytes of " + name, bytes.size(),
                               std::to_string(n) + " bytes for dtype " + std::string(dtype_name(dtype)));
        names_.insert(name);
        entries_.push_back(Entry{std::move(name), dtype, std::move(shape), {bytes.begin(), bytes.end()}});
    }

    void add_f32(std::string name, std::vector<std::int64_t> shape, std::span<float const> v) {
        add(std::move(name), Dtype::F32, std::move(shape), std::as_bytes(v));
    }
    void add_i32(std::string name, std::vector<std::int64_t> shape, std::span<std::int32_t const> v) {
        add(std::move(name), Dtype::I32, std::move(shape), std::as_bytes(v));
    }
    void add_u8(std::string name, std::vector<std::int64_t> shape, std::span<std::uint8_t const> v) {
        add(std::move(name), Dtype::U8, std::move(shape), std::as_bytes(v));
    }
    // Raw 16-bit patterns.
    void add_bf16(std::string name, std::vector<std::int64_t> shape, std::span<std::uint16_t const> bits) {
        add(std::move(name), Dtype::BF16, std::move(shape), std::as_bytes(bits));
    }
    void add_f16(std::string name, std::vector<std::int64_t> shape, std::span<std::uint16_t const> bits) {
        add(std::move(name), Dtype::F16, std::move(shape), std::as_bytes(bits));
    }

    void set_metadata(std::string key, std::string value) {
        if (find_invalid_utf8(key) || find_invalid_utf8(value))
            smoe::detail::fail("metadata " + key, std::string("not UTF-8"), "UTF-8 keys and values");
        metadata_[std::move(key)] = std::move(value);
    }

    std::vector<std::byte> to_bytes() const {
        std::vector<Entry const*> order;
        for (auto const& e : entries_) order.push_back(&e);
        std::stable_sort(order.begin(), order.end(),
                         [](Entry const* a, Entry const* b) { return dtype_size(a->dtype) > dtype_size(b->dtype); });

        nlohmann::ordered_json header = nlohmann::ordered_json::object();
        if (!metadata_.empty()) header["__metadata__"] = metadata_;
        std::uint64_t offset = 0;
        for (Entry const* e : order) {
            header[e->name] = {{"dtype", dtype_name(e->dtype)},
                               {"shape", e->shape},
                               {"data_offsets", {offset, offset + e->bytes.size()}}};
            offset += e->bytes.size();
        }
        std::string text = header.dump();
        text.append((8 - text.size() % 8) % 8, ' ');

        std::vector<std::byte> out;
        out.reserve(8 + text.size() + offset);
        std::uint64_t n = text.size();
        for (int i = 0; i < 8; ++i) out.push_back(static_cast<std::byte>((n >> (8 * i)) & 0xFFu));
        for (char c : text) out.push_back(static_cast<std::byte>(c));
        for (Entry const* e : order) out.insert(out.end(), e->bytes.begin(), e->bytes.end());
        return out;
    }

    void write(std::filesystem::path const& path) const {
        auto const bytes = to_bytes();
        std::ofstream out(path, std::ios::binary | std::ios::trunc);
        if (out) out.write(reinterpret_cast<char const*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
        if (out) out.close();
        if (!out) detail::file_fail(path.string(), "file", std::string("not writable"), "a writable path");
    }

private:
    struct Entry {
        std::string name;
        Dtype dtype;
        std::vector<std::int64_t> shape;
        std::vector<std::byte> bytes;
    };

    std::vector<Entry> entries_;
    std::set<std::string, std::less<>> names_;
    std::map<std::string, std::string> metadata_;
};

}  // namespace smoe::inline v0::io
