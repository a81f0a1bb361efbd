#pragma once
// Kernel scratch for work items that run in parallel on a pool (smoe::ThreadPool) and need a private
// buffer each (QuantSwiGLU's bf16 dot path: ~300 KB of activations and sums, which must not live on
// the stack of a pool thread). The slots are carved from the caller's workspace, so nothing is
// allocated per call; an item claims a free slot for its call and gives it back after.
//
// Their count is one per hardware thread (at most kMaxScratchSlots), whatever the pool, so that a
// layer's workspace_size() never depends on when set_thread_pool is called. An item that finds no free
// slot (a pool larger than that) gets an empty span: kernels then use small stack buffers, which gives
// the same bits, slower.

#include <algorithm>
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <span>
#include <thread>

#include "smoe/core/workspace.hpp"

namespace smoe::inline v0 {

class ScratchSlots {
public:
    static constexpr unsigned kMaxScratchSlots = 64;
    static std::size_t count() { return std::clamp(std::thread::hardware_concurrency(), 1u, kMaxScratchSlots); }

    ScratchSlots() = default;
    // `bytes` per slot (0: none at all). Alloc is WorkspaceSize (sizing) or Workspace (carving).
    template <class Alloc>
    ScratchSlots(Alloc& a, std::size_t bytes) : slot_(WorkspaceSize::round_up(bytes)) {
        std::size_t const n = slot_ ? count() : 0;
        bytes_ = a.template take<std::byte>(n * slot_);
        busy_ = a.template take<std::uint32_t>(n);
        std::fill(busy_.begin(), busy_.end(), 0u);
    }

    // f(slot) with a free slot (or an empty span when every one is taken), then frees it, also when f throws
    // (a slot left taken would send every later item to the slower stack path).
    template <class F>
    void with(F&& f) const {
        std::size_t s = 0;
        for (; s < busy_.size(); ++s)
            if (std::atomic_ref<std::uint32_t>(busy_[s]).exchange(1u, std::memory_order_acquire) == 0u) break;
        if (s == busy_.size()) return f(std::span<std::byte>{});
        struct Release {
            std::uint32_t& flag;
            ~Release() { std::atomic_ref<std::uint32_t>(flag).store(0u, std::memory_order_release); }
        } const release{busy_[s]};
        f(bytes_.subspan(s * slot_, slot_));
    }

private:
    std::span<std::byte> bytes_;
    std::span<std::uint32_t> busy_;
    std::size_t slot_ = 0;
};

}  // namespace smoe::inline v0
