#pragma once
// Weight panels for the packed expert kernels (gemm_packed.hpp), built once when an expert is
// constructed.
//
// A panel holds kPanelCols output columns of one weight matrix W [N, K] ("column" = an output unit,
// a row of the nn.Linear weight) over the whole K: element (k, c) at [k * 16 + slot(c)]. The kernels
// stream a panel front to back, so one expert's matrix is one sequential read, and every output column
// accumulates over k = 0, 1, ..., K-1 in that order whatever kernel, tile or thread computes it
// (experts.md §1 rule 3). Columns past N are zero.
//
// bf16 panels store the 16 columns in the order {0-3, 8-11, 4-7, 12-15} so that AVX2 widens them with
// two unpacks against zero (vpunpck{l,h}wd works inside 128-bit lanes); the order is a property of
// the stored bytes only, every kernel maps a slot back to its column with kPanelSlotColumn.

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <memory>
#include <new>
#include <type_traits>
#if defined(__linux__)
#include <sys/mman.h>
#endif

#include "smoe/core/bf16.hpp"

namespace smoe::inline v0::kernels::cpu {

inline constexpr std::int64_t kPanelCols = 16;

template <class W>
inline constexpr int kPanelSlotColumn[16] = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15};
template <>
inline constexpr int kPanelSlotColumn<bf16>[16] = {0, 1, 2, 3, 8, 9, 10, 11, 4, 5, 6, 7, 12, 13, 14, 15};

// Owning, 64-byte aligned, uninitialised storage for packed weights (no zeroing pass over gigabytes).
// From 2 MiB on, the array is aligned to 2 MiB and, on Linux, advised as transparent huge pages before
// anything touches it: the kernels stream these weights from memory, and on 4 KiB pages each stream
// pays a page walk every 4 KiB (measured cold on the Zen 4 VM, one thread: a plain read 19 -> 35 GB/s,
// the int4 dot kernel at one row 47 -> 51 GB/s). Where THP is off or "never", the advice does nothing.
template <class T>
class AlignedArray {
public:
    AlignedArray() = default;
    explicit AlignedArray(std::size_t n)
        : n_(n), p_(n ? static_cast<T*>(::operator new(n * sizeof(T), std::align_val_t{alignment(n)})) : nullptr) {
#if defined(__linux__)
        if (n && alignment(n) == kHugePage) (void)::madvise(p_, n * sizeof(T), MADV_HUGEPAGE);
#endif
    }
    AlignedArray(AlignedArray&& o) noexcept : n_(o.n_), p_(o.p_) {
        o.n_ = 0;
        o.p_ = nullptr;
    }
    AlignedArray& operator=(AlignedArray&& o) noexcept {
        if (this != &o) {
            release();
            n_ = o.n_;
            p_ = o.p_;
            o.n_ = 0;
            o.p_ = nullptr;
        }
        return *this;
    }
    AlignedArray(AlignedArray const&) = delete;
    AlignedArray& operator=(AlignedArray const&) = delete;
    ~AlignedArray() { release(); }

    T* data() const { return p_; }
    std::size_t size() const { return n_; }

private:
    static constexpr std::size_t kHugePage = std::size_t{2} << 20;
    static constexpr std::size_t alignment(std::size_t n) { return n * sizeof(T) >= kHugePage ? kHugePage : 64; }
    void release() {
        if (p_) ::operator delete(p_, std::align_val_t{alignment(n_)});
        p_ = nullptr;
    }
    std::size_t n_ = 0;
    T* p_ = nullptr;
};

// Writes one panel: column c of the panel is the row row_of(c) (a W const* of K elements, consecutive),
// or zeros where row_of returns nullptr.
template <class W, class RowOf>
void pack_panel(W* dst, std::int64_t K, RowOf row_of) {
    W const* rows[kPanelCols];
    for (int s = 0; s < kPanelCols; ++s) rows[s] = row_of(kPanelSlotColumn<W>[s]);
    for (std::int64_t k = 0; k < K; ++k)
        for (int s = 0; s < kPanelCols; ++s) dst[k * kPanelCols + s] = rows[s] ? rows[s][k] : W{};
}

}  // namespace smoe::inline v0::kernels::cpu
