#pragma once
// What an engine chooses about an expert store (store/expert_store.hpp), kept apart from the store so
// that the expert configs (expert/swiglu_config.hpp, also read by nvcc) carry it without the store's
// threads and files: the residency, the byte budget, the eviction policy, prefetch, and the packed
// layer a store reads.

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <vector>

namespace smoe::inline v0::store {

class PackedFile;
class SlotCache;

enum class Residency { resident, mapped, cached };
inline char const* to_string(Residency r) { return r == Residency::resident ? "resident" : r == Residency::mapped ? "mapped" : "cached"; }

enum class Eviction { lru, lfu, custom };
inline char const* to_string(Eviction e) { return e == Eviction::lru ? "lru" : e == Eviction::lfu ? "lfu" : "custom"; }

// What a custom eviction policy sees: the cached experts no caller holds. It returns the index of the
// victim in the span. last_use: the cache's acquire counter at the expert's last use; uses: acquires
// since construction; load: tokens routed to it since construction; layer: its store's decoder layer
// (a cache shared by the layers of a model offers every layer's experts).
struct EvictionCandidate {
    std::int64_t expert = 0;
    std::uint64_t last_use = 0, uses = 0, load = 0;
    std::int64_t layer = -1;
};
using EvictionPolicy = std::function<std::size_t(std::span<EvictionCandidate const>)>;

struct StoreConfig {
    Residency residency = Residency::resident;
    std::size_t budget_bytes = 0;  // cached: the arena (at least one slot, the largest record)
    Eviction eviction = Eviction::lru;
    EvictionPolicy evict;          // Eviction::custom
    bool prefetch = false;         // cached: a background I/O thread serves prefetch()
    // cached: reads bypass the page cache (O_DIRECT where the file system allows it), so the budget
    // is all the memory the experts take and a benchmark's misses come from the disk.
    bool direct_io = false;
    // cached, without direct_io: a miss that finds every slot held by the same call runs from the
    // file's mapping (the OS pages it, as mapped does) instead of waiting for a later round that
    // evicts the call's own experts: the budget pins the hot experts, the page cache serves the rest.
    bool stream_overflow = true;
    // cached: slots shared with the other layers' stores (SlotCache::for_file: one budget for the whole
    // model, eviction across layers by the missing store's policy); budget_bytes is then not used.
    std::shared_ptr<SlotCache> cache;
    // cached: threads reading misses and prefetches, each record in pieces of read_piece_bytes (a
    // multiple of 4 KiB), several at once: this VM's disk gives ~0.5-1.5 GB/s to one 1.5 MB read at a
    // time and 1.5-2.3 GB/s to 2-8 (bench/layer/results/store_target_s7.md). 0: the caller reads its
    // own misses, one piece after another (and a prefetch thread if prefetch).
    std::int32_t read_threads = 4;
    std::size_t read_piece_bytes = std::size_t(512) << 10;
};

// A layer of a packed file as an expert's weights (SwiGLUWeights::packed, QuantSwiGLUWeights::packed).
struct PackedSource {
    std::shared_ptr<PackedFile const> file;
    std::int64_t layer = 0;             // the model's decoder layer index
    std::vector<std::int64_t> experts;  // the model's expert id of each local expert (a rank's), found by the file's ids; empty: all records
    explicit operator bool() const { return file != nullptr; }
};

}  // namespace smoe::inline v0::store
