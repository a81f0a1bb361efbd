#pragma once
// Checkpoint: the tensors of a Hugging Face checkpoint folder, possibly split over several
// safetensors shards.
//  * With `model.safetensors.index.json`, its "weight_map" (tensor name -> shard file name) says
//    where each tensor is; every shard it names must exist in the folder and hold the tensors
//    mapped to it. Shard names must be plain file names: an index cannot point outside the folder.
//  * Without one, every `*.safetensors` file in the folder is read, and a tensor name that occurs
//    in two files is an error (which one would be meant is unknowable).

#include <smoe/io/file_error.hpp>
#include <smoe/io/mapped_file.hpp>
#include <smoe/io/safetensors_file.hpp>
#include <smoe/io/strict_json.hpp>

#include <algorithm>
#include <cstddef>
#include <filesystem>
#include <functional>
#include <map>
#include <string>
#include <string_view>
#include <vector>

namespace smoe::inline v0::io {

class Checkpoint {
public:
    static constexpr char const* kIndexFile = "model.safetensors.index.json";

    static Checkpoint open(std::filesystem::path const& dir) {
        std::error_code ec;
        if (!std::filesystem::is_directory(dir, ec))
            detail::file_fail(dir.string(), "checkpoint folder", std::string("missing or not a folder"),
                              "a folder holding *.safetensors files");
        Checkpoint c;
        c.dir_ = dir;
        if (std::filesystem::exists(dir / kIndexFile, ec))
            c.open_indexed();
        else
            c.open_all();
        return c;
    }

    std::filesystem::path const& dir() const noexcept { return dir_; }
    std::vector<SafetensorsFile> const& files() const noexcept { return files_; }

    TensorInfo const* find(std::string_view name) const {
        auto it = where_.find(name);
        return it == where_.end() ? nullptr : it->second;
    }

    // Throws naming the folder (and the index, when there is one) if the tensor is absent.
    TensorInfo const& at(std::string_view name) const {
        if (auto const* t = find(name)) return *t;
        detail::file_fail(has_index_ ? (dir_ / kIndexFile).string() : dir_.string(), "tensor " + detail::quoted(name),
                          std::string("missing"),
                          "a tensor of that name (the checkpoint holds " + std::to_string(where_.size()) + ")");
    }

    // Sorted.
    std::vector<std::string> names() const {
        std::vector<std::string> out;
        out.reserve(where_.size());
        for (auto const& [name, t] : where_) out.push_back(name);
        return out;
    }

private:
    void open_indexed() {
        has_index_ = true;
        auto const index_path = dir_ / kIndexFile;
        std::string const label = index_path.string();
        auto const mapped = MappedFile::open(index_path);
        auto const bytes = mapped.bytes();
        auto const index = parse_json_strict(
            std::string_view(reinterpret_cast<char const*>(bytes.data()), bytes.size()), label);
        if (!index.is_object()) detail::file_fail(label, "index", std::string(index.type_name()), "a JSON object");
        if (!index.contains("weight_map")) detail::file_fail(label, "weight_map", std::string("missing"), "present");
        auto const& map = index["weight_map"];
        if (!map.is_object())
            detail::file_fail(label, "weight_map", std::string(map.type_name()), "a JSON object of tensor -> shard file");

        std::map<std::string, std::size_t, std::less<>> shard_index;
        std::vector<std::pair<std::string, std::size_t>> wanted;
        for (auto const& [tensor, shard] : map.items()) {
            std::string const what = "weight_map " + detail::quoted(tensor);
            if (!shard.is_string()) detail::file_fail(label, what, std::string(shard.type_name()), "a shard file name");
            std::string const& file = shard.get_ref<std::string const&>();
            if (!is_plain_file_name(file))
                detail::file_fail(label, what, detail::quoted(file), "a file name inside the checkpoint folder");
            auto it = shard_index.find(file);
            if (it == shard_index.end()) {
                std::error_code ec;
                if (!std::filesystem::is_regular_file(dir_ / file, ec))
                    detail::file_fail(label, what, detail::quoted(file), "an existing shard file in the folder (missing shard)");
                it = shard_index.emplace(file, files_.size()).first;
                files_.push_back(SafetensorsFile::open(dir_ / file));
            }
            wanted.emplace_back(tensor, it->second);
        }
        for (auto const& [tensor, file] : wanted) {
            TensorInfo const* t = files_[file].find(tensor);
            if (!t)
                detail::file_fail(label, "weight_map " + detail::quoted(tensor), detail::quoted(files_[file].label()),
                                  "a shard that holds this tensor (it does not)");
            where_.emplace(tensor, t);
        }
    }

    void open_all() {
        std::vector<std::filesystem::path> paths;
        for (auto const& entry : std::filesystem::directory_iterator(dir_))
            if (entry.is_regular_file() && entry.path().extension() == ".safetensors") paths.push_back(entry.path());
        std::sort(paths.begin(), paths.end());
        if (paths.empty())
            detail::file_fail(dir_.string(), "checkpoint folder", std::string("no *.safetensors file"),
                              "a " + std::string(kIndexFile) + " or at least one *.safetensors file");
        for (auto const& p : paths) files_.push_back(SafetensorsFile::open(p));
        for (auto const& f : files_)
            for (auto const& t : f.tensors()) {
                auto [it, inserted] = where_.emplace(t.name, &t);
                if (!inserted)
                    detail::file_fail(f.label(), "tensor " + detail::quoted(t.name), "also in " + it->second->file,
                                      "each tensor in one file only (or a " + std::string(kIndexFile) + ")");
            }
    }

    static bool is_plain_file_name(std::string const& s) {
        return !s.empty() && s != "." && s != ".." && s.find('/') == std::string::npos &&
               s.find('\\') == std::string::npos && s.find('\0') == std::string::npos;
    }

    std::filesystem::path dir_;
    bool has_index_ = false;
    // The files own the TensorInfo objects; moving the vector keeps their addresses (heap buffers).
    std::vector<SafetensorsFile> files_;
    std::map<std::string, TensorInfo const*, std::less<>> where_;
};

}  // namespace smoe::inline v0::io
