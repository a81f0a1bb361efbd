#pragma once
// Read-only bytes of a whole file: memory-mapped where POSIX mmap exists, read into memory
// elsewhere. Move-only; the bytes stay at the same address when the object moves, so spans into
// them survive a move of their owner.
//
// A mapped file that another process truncates while it is mapped raises SIGBUS on access: the
// usual price of mmap, which safetensors readers everywhere pay for zero-copy loading.

#include <smoe/io/file_error.hpp>

#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <span>
#include <string>
#include <utility>
#include <vector>

#if __has_include(<sys/mman.h>) && __has_include(<unistd.h>) && __has_include(<fcntl.h>)
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
#define SMOE_IO_HAS_MMAP 1
#else
#define SMOE_IO_HAS_MMAP 0
#endif

namespace smoe::inline v0::io {

class MappedFile {
public:
    MappedFile() = default;

    // Owns `bytes` instead of a mapping (tests, fuzzing, in-memory files).
    explicit MappedFile(std::vector<std::byte> bytes) : owned_(std::move(bytes)) {
        data_ = owned_.data();
        size_ = owned_.size();
    }

    // align: the mapping's address a multiple of it (a power of two; 0: where the OS puts it), so that
    // data at file offsets aligned the same way can sit on huge pages (store::PackedFile: 2 MiB).
    static MappedFile open(std::filesystem::path const& path, std::size_t align = 0) {
        std::string const label = path.string();
        std::error_code ec;
        if (std::filesystem::is_directory(path, ec))
            detail::file_fail(label, "file", std::string("a directory"), "a regular file");
#if SMOE_IO_HAS_MMAP
        int const fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
        if (fd < 0) system_fail(label, "open", errno);
        struct stat st {};
        if (::fstat(fd, &st) != 0) {
            int const err = errno;
            ::close(fd);
            system_fail(label, "fstat", err);
        }
        MappedFile f;
        f.size_ = static_cast<std::size_t>(st.st_size);
        if (f.size_ > 0) {  // mmap of length 0 fails; an empty file needs no mapping
            void* at = nullptr;
            int flags = MAP_PRIVATE;
            if (align > 0 && (align & (align - 1)) == 0) {
                // Reserve size + align bytes, keep the aligned size_ of them for the file (MAP_FIXED over the
                // reservation) and give back the head and tail; no reservation: the OS's address.
                void* const r = ::mmap(nullptr, f.size_ + align, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
                if (r != MAP_FAILED) {
                    auto const base = reinterpret_cast<std::uintptr_t>(r), a = (base + align - 1) / align * align;
                    if (a > base) ::munmap(r, a - base);
                    if (auto const end = base + f.size_ + align, used = a + f.size_; end > used) ::munmap(reinterpret_cast<void*>(used), end - used);
                    at = reinterpret_cast<void*>(a);
                    flags |= MAP_FIXED;
                }
            }
            void* p = ::mmap(at, f.size_, PROT_READ, flags, fd, 0);
            if (p == MAP_FAILED) {
                if (at) ::munmap(at, f.size_);
                int const err = errno;
                ::close(fd);
                system_fail(label, "mmap", err);
            }
            f.data_ = static_cast<std::byte const*>(p);
            f.mapped_ = true;
        }
        ::close(fd);  // the mapping keeps its own reference to the file
        return f;
#else
        std::ifstream in(path, std::ios::binary);
        if (!in) detail::file_fail(label, "file", std::string("unreadable"), "a readable file");
        std::vector<std::byte> bytes;
        in.seekg(0, std::ios::end);
        bytes.resize(static_cast<std::size_t>(in.tellg()));
        in.seekg(0);
        in.read(reinterpret_cast<char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
        if (!in) detail::file_fail(label, "file", std::string("unreadable"), "a readable file");
        return MappedFile(std::move(bytes));
#endif
    }

    MappedFile(MappedFile&& o) noexcept { swap(o); }
    MappedFile& operator=(MappedFile&& o) noexcept {
        MappedFile tmp(std::move(o));
        swap(tmp);
        return *this;
    }
    MappedFile(MappedFile const&) = delete;
    MappedFile& operator=(MappedFile const&) = delete;
    ~MappedFile() { release(); }

    std::span<std::byte const> bytes() const noexcept { return {data_, size_}; }
    // Whether the bytes are the file's mapping (not a copy owned in memory).
    bool is_mapping() const noexcept { return mapped_; }

private:
    void swap(MappedFile& o) noexcept {
        std::swap(data_, o.data_);
        std::swap(size_, o.size_);
        std::swap(mapped_, o.mapped_);
        owned_.swap(o.owned_);  // swapping vectors keeps their buffers where they are
    }

    void release() noexcept {
#if SMOE_IO_HAS_MMAP
        if (mapped_) ::munmap(const_cast<std::byte*>(data_), size_);
#endif
        mapped_ = false;
        data_ = nullptr;
        size_ = 0;
    }

    [[noreturn]] static void system_fail(std::string const& label, char const* call, int err) {
        detail::file_fail(label, "file", std::string(call) + " failed: " + std::strerror(err), "a readable file");
    }

    std::byte const* data_ = nullptr;
    std::size_t size_ = 0;
    bool mapped_ = false;
    std::vector<std::byte> owned_;
};

}  // namespace smoe::inline v0::io
