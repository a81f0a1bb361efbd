#pragma once
// Workspace plan (CUB's two-phase temporary storage, CUTLASS's get_workspace_size): every component
// reports how many bytes it needs for a maximum problem size, the layer sums them, the caller owns the
// bytes, and the hot path carves its buffers out of them without allocating.

#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string>

#include "smoe/config.hpp"
#include "smoe/core/error.hpp"

namespace smoe::inline v0 {

inline constexpr std::size_t kWorkspaceAlignment = SMOE_WORKSPACE_ALIGNMENT;

// Sums buffer sizes the way Workspace::take carves them (each rounded up to the alignment), so a
// component computes its size with the same sequence of calls it later carves with.
class WorkspaceSize {
public:
    template <class T>
    constexpr WorkspaceSize& add(std::size_t count) {
        bytes_ += round_up(count * sizeof(T));
        return *this;
    }
    constexpr WorkspaceSize& add_bytes(std::size_t bytes) {
        bytes_ += round_up(bytes);
        return *this;
    }
    constexpr std::size_t bytes() const { return bytes_; }

    // The same calls a component makes on a Workspace, so one carving routine both sizes and carves
    // (see MoELayer::carve): here they only count.
    template <class T>
    std::span<T> take(std::size_t count) {
        add<T>(count);
        return {};
    }
    class Workspace take_bytes(std::size_t bytes);
    static constexpr std::size_t round_up(std::size_t b) {
        return (b + kWorkspaceAlignment - 1) / kWorkspaceAlignment * kWorkspaceAlignment;
    }

private:
    std::size_t bytes_ = 0;
};

// A bump allocator over caller-owned bytes. The start is aligned up on construction, so plan one
// alignment's worth of slack when the bytes come from an unaligned source (required_bytes does).
class Workspace {
public:
    Workspace() = default;
    explicit Workspace(std::span<std::byte> bytes) {
        auto addr = reinterpret_cast<std::uintptr_t>(bytes.data());
        std::size_t skip = (kWorkspaceAlignment - addr % kWorkspaceAlignment) % kWorkspaceAlignment;
        if (skip > bytes.size()) skip = bytes.size();
        begin_ = bytes.data() + skip;
        size_ = bytes.size() - skip;
    }

    // Takes `count` elements of T; throws if the caller's workspace was planned too small.
    template <class T>
    std::span<T> take(std::size_t count) {
        std::size_t const need = WorkspaceSize::round_up(count * sizeof(T));
        if (need > size_ - used_)
            detail::fail("workspace", std::to_string(size_) + " bytes",
                         "at least " + std::to_string(used_ + need) +
                             " bytes (size it with workspace_size(max_tokens) for the largest call)");
        T* p = reinterpret_cast<T*>(begin_ + used_);
        used_ += need;
        return {p, count};
    }

    std::size_t used() const { return used_; }
    std::size_t capacity() const { return size_; }

    // A sub-workspace of `bytes` bytes for a component that carves its own buffers.
    Workspace take_bytes(std::size_t bytes) {
        auto s = take<std::byte>(bytes);
        return Workspace(s, aligned_tag{});
    }

    // Everything not yet taken, as a new workspace (for a sub-component that carves its own buffers).
    Workspace rest() const { return Workspace(std::span<std::byte>(begin_ + used_, size_ - used_)); }

private:
    struct aligned_tag {};
    // Bytes carved by take are already aligned and their size is a multiple of the alignment.
    Workspace(std::span<std::byte> bytes, aligned_tag) : begin_(bytes.data()), size_(WorkspaceSize::round_up(bytes.size())) {}

    std::byte* begin_ = nullptr;
    std::size_t size_ = 0;
    std::size_t used_ = 0;
};

inline Workspace WorkspaceSize::take_bytes(std::size_t bytes) {
    add_bytes(bytes);
    return {};
}

// Bytes a caller must provide for a component that reports `planned` bytes, whatever the alignment
// of the caller's buffer.
constexpr std::size_t required_bytes(std::size_t planned) { return planned + kWorkspaceAlignment; }

// Owns aligned bytes for callers that do not manage their own memory (examples, tests, the layer's
// convenience overload). Allocates once, at construction.
class WorkspaceBuffer {
public:
    WorkspaceBuffer() = default;
    explicit WorkspaceBuffer(std::size_t planned_bytes)
        : size_(WorkspaceSize::round_up(planned_bytes)),
          data_(size_ ? static_cast<std::byte*>(::operator new(size_, std::align_val_t{kWorkspaceAlignment}))
                      : nullptr) {}
    WorkspaceBuffer(WorkspaceBuffer&& o) noexcept : size_(o.size_), data_(o.data_) {
        o.data_ = nullptr;
        o.size_ = 0;
    }
    WorkspaceBuffer& operator=(WorkspaceBuffer&& o) noexcept {
        if (this != &o) {
            release();
            size_ = o.size_;
            data_ = o.data_;
            o.data_ = nullptr;
            o.size_ = 0;
        }
        return *this;
    }
    WorkspaceBuffer(WorkspaceBuffer const&) = delete;
    WorkspaceBuffer& operator=(WorkspaceBuffer const&) = delete;
    ~WorkspaceBuffer() { release(); }

    std::span<std::byte> bytes() const { return {data_, size_}; }
    Workspace workspace() const { return Workspace(bytes()); }
    std::size_t size() const { return size_; }

private:
    void release() {
        if (data_) ::operator delete(data_, std::align_val_t{kWorkspaceAlignment});
        data_ = nullptr;
    }
    std::size_t size_ = 0;
    std::byte* data_ = nullptr;
};

}  // namespace smoe::inline v0
