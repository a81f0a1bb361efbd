#pragma once
// smoe::io::TensorMap: named tensors held in memory, found like a checkpoint's (find / at), so an
// engine or a demo can build a model in memory and load it through the same code as a file.

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <map>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "smoe/io/file_error.hpp"
#include "smoe/io/safetensors_file.hpp"

namespace smoe::inline v0::io {

class TensorMap {
public:
    explicit TensorMap(std::string label = "<memory>") : label_(std::move(label)) {}
    TensorMap(TensorMap const&) = delete;
    TensorMap& operator=(TensorMap const&) = delete;
    TensorMap(TensorMap&&) = default;
    TensorMap& operator=(TensorMap&&) = default;

    // Takes `bytes` (numel × dtype size of `shape`, checked); replaces nothing: a second tensor of
    // the same name is an error.
    void add(std::string name, Dtype dtype, std::vector<std::int64_t> shape, std::vector<std::byte> bytes) {
        std::int64_t n = 1;
        for (auto d : shape) {
            if (d < 0) io::detail::file_fail(label_, "tensor " + io::detail::quoted(name) + " shape", shape_text(shape), "non-negative sizes");
            n *= d;
        }
        if (bytes.size() != static_cast<std::size_t>(n) * dtype_size(dtype))
            io::detail::file_fail(label_, "tensor " + io::detail::quoted(name) + " bytes", bytes.size(),
                                  std::to_string(n) + " elements of " + std::string(dtype_name(dtype)));
        auto [it, inserted] = entries_.try_emplace(name);
        if (!inserted) io::detail::file_fail(label_, "tensor " + io::detail::quoted(name), "a second tensor of that name", "unique names");
        Entry& e = it->second;
        e.data = std::move(bytes);
        e.info = TensorInfo{std::move(name), dtype, std::move(shape), std::span<std::byte const>(e.data), label_};
    }
    template <class T>
    void add_values(std::string name, Dtype dtype, std::vector<std::int64_t> shape, std::span<T const> values) {
        std::vector<std::byte> bytes(values.size_bytes());
        if (!bytes.empty()) std::memcpy(bytes.data(), values.data(), bytes.size());
        add(std::move(name), dtype, std::move(shape), std::move(bytes));
    }

    TensorInfo const* find(std::string_view name) const {
        auto it = entries_.find(std::string(name));
        return it == entries_.end() ? nullptr : &it->second.info;
    }
    TensorInfo const& at(std::string_view name) const {
        if (auto const* t = find(name)) return *t;
        io::detail::file_fail(label_, "tensor " + io::detail::quoted(name), "missing", "a tensor of that name");
    }
    std::size_t size() const { return entries_.size(); }

private:
    struct Entry {
        TensorInfo info;
        std::vector<std::byte> data;
    };
    std::string label_;
    std::map<std::string, Entry> entries_;  // nodes never move, so info.bytes stays valid
};

}  // namespace smoe::inline v0::io
