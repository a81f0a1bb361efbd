#pragma once
// smoe::store::ExpertStore: where an expert type's packed records live (expert::SwiGLU<W>,
// expert::QuantSwiGLU hold one; StoreConfig in their Config picks the kind):
//
//   resident  every record in memory (what the experts always did: packed at construction, or read
//             from a packed file and checked)
//   mapped    the packed file's pages (PackedFile's mmap): the OS reads and evicts them, as llama.cpp
//             does; each record's checksum is checked on its first use
//   cached    a fixed arena of budget_bytes / slot records (a slot: the largest record, rounded to
//             4 KiB), locked in memory where the OS allows (mlock); an expert not resident is read into
//             a slot on demand (pread; its checksum checked on the record's first read), and another
//             expert that no caller holds is evicted by the policy the engine picks: LRU, LFU by the
//             tokens routed to each expert (the layer's load statistics, summed), or the engine's own
//             (StoreConfig::evict). A miss that finds every slot held by the call itself is streamed
//             (StoreConfig::stream_overflow): run from the file's mapping, as mapped does, so a call
//             needing more experts than the cache holds evicts none of its own and pages the rest
//             through the OS (the cache is then a pinned tier above the page cache). The slots are
//             the store's own (a budget per layer) or a SlotCache the layers share (StoreConfig::cache:
//             one budget for the model, eviction across layers).
//
// Same bits for every kind and budget: a record is the same bytes wherever it sits, and an expert's
// output never depends on which others are resident (experts.md §1 rule 3). MoELayer holds the
// experts of a call in rounds: it acquires touched experts (those cached first: hits_first) until the
// cache is full, runs both phases over them on its thread pool, releases them and goes on, so a budget
// of one expert still completes any call (one expert per round; a streaming store needs one round).
// The kernels' threads only read records; acquire, release and prefetch are the store's, under its mutex.
//
// Reads (cached): a miss claims its slot and queues the record in pieces (StoreConfig::read_piece_bytes)
// for the store's reader threads (read_threads), several pieces and records at once: one read at a
// time leaves most of a virtio or NVMe disk idle (this VM: ~1.1-1.4 GB/s for one 1.5 MB read after
// another, ~1.7-2.3 GB/s with 2-6 under way). The layer acquires a round without waiting
// (acquire(e, tokens, false)) and runs the experts that ready_first() hands it, the hits first, while
// the misses are read; a caller waiting for a record reads its pieces too, so read_threads = 0 reads
// them on the caller's thread. A read that fails (short, or its checksum) stays with the callers
// holding it: each gets the file_error naming layer and expert, and the last release empties the slot.
//
// Prefetch (StoreConfig::prefetch, cached): prefetch(ids) queues experts for a background I/O thread
// that reads them into free or evictable slots while the layer computes (Read-ME's lookahead, ExpertFlow's
// predicted routing); a call that needs an expert still being read waits for it (counted as stall).
// On a mapped store prefetch advises the kernel (madvise WILLNEED); on a resident one it does nothing.
//
// Statistics (stats()): hits, misses, evictions, bytes read, time stalled in acquire, prefetches
// issued/used, and, from observe(routing) which the layer calls once per call, the prediction accuracy
// (fraction of a call's experts that the last prefetch named) and the local routing consistency (the
// fraction of a token's experts already used by the previous token: Liang et al. 2025 find it high
// enough on 20 MoE LLMs that a cache of about twice the active experts suffices).
//
// Allocation: everything is sized at construction (arena, tables, the eviction candidates, the queue);
// acquire, release, prefetch and observe allocate nothing.

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <exception>
#include <functional>
#include <limits>
#include <memory>
#include <mutex>
#include <span>
#include <string>
#include <system_error>
#include <thread>
#include <vector>

#include "smoe/core/error.hpp"
#include "smoe/core/limits.hpp"
#include "smoe/core/routing.hpp"
#include "smoe/kernels/cpu/pack.hpp"
#include "smoe/store/packed_file.hpp"
#include "smoe/store/store_config.hpp"

namespace smoe::inline v0::store {

inline std::string flags_name(std::uint32_t f) {
    std::string s;
    if (f & kPackBf16KPairs) s += "bf16 k-pair panels, ";
    if (f & kPackInt8Dot) s += "int8 dot panels, ";
    if (f & kPackBf16DotQuant) s += "bf16 dot panels, ";
    if (f & kPackNonGated) s += "non-gated, ";
    return s.empty() ? "plain panels" : s.substr(0, s.size() - 2);
}

// What an expert type reading a packed layer holds it to: its own type and packing variant (want),
// d, f, and its expert count (the layer's, or as many as src.experts names, each of which the layer's
// ids must hold). Returns the layer.
inline PackedLayer const& expect_layer(PackedSource const& src, LayerInfo const& want, std::int64_t num_experts) {
    auto const& F = *src.file;
    auto const& L = F.layer(src.layer);
    std::string const at = "layer " + std::to_string(L.layer_index);
    if (L.kind != want.kind)
        io::detail::file_fail(F.name(), at + " expert type", to_string(L.kind), std::string(to_string(want.kind)) + " (the expert type reading it)");
    if (L.flags != want.flags)
        io::detail::file_fail(F.name(), at + " packing", flags_name(L.flags),
                              flags_name(want.flags) + " (what the reader's bf16_dot / int8_dot resolve to; pack with the same options)");
    if (L.hidden_size != want.hidden_size)
        io::detail::file_fail(F.name(), at + " hidden_size", L.hidden_size, "the config's " + std::to_string(want.hidden_size));
    if (L.intermediate_size != want.intermediate_size)
        io::detail::file_fail(F.name(), at + " intermediate_size", L.intermediate_size, "the config's " + std::to_string(want.intermediate_size));
    std::int64_t const have = src.experts.empty() ? L.num_experts : static_cast<std::int64_t>(src.experts.size());
    if (have != num_experts)
        io::detail::file_fail(F.name(), at + " num_experts", have, "the config's " + std::to_string(num_experts) + (src.experts.empty() ? "" : " (packed.experts)"));
    (void)F.records_of(L, src.experts);
    return L;
}

// The file's record of local expert e (after expect_layer).
inline std::int64_t file_expert(PackedSource const& src, PackedLayer const& L, std::int64_t e) {
    return src.experts.empty() ? e : src.file->find(L, src.experts[static_cast<std::size_t>(e)]);
}

// Record e of a packed layer must have the size the reader's layout gives it.
inline void expect_record_bytes(PackedSource const& src, PackedLayer const& L, std::int64_t e, std::uint64_t bytes) {
    std::int64_t const id = file_expert(src, L, e);
    auto const& r = src.file->record(L, id);
    if (r.bytes != bytes)
        io::detail::file_fail(src.file->name(), src.file->where(L, id) + " record bytes", r.bytes,
                              std::to_string(bytes) + " (the reader's panel layout for its shape and formats)");
}

struct StoreStats {
    std::int64_t hits = 0, misses = 0, evictions = 0;
    std::uint64_t bytes_read = 0;
    double stall_seconds = 0;  // in acquire and ready_first: waiting for a record, or reading a piece of it
    std::int64_t reads_at_once = 0;  // the most pieces of records read at the same time (readers and callers)
    std::int64_t prefetch_issued = 0, prefetch_loaded = 0, prefetch_used = 0;
    std::int64_t streamed = 0;  // misses run from the file's mapping (stream_overflow), not read into a slot
    std::int64_t predicted_hits = 0, predicted_total = 0;  // experts of a call the last prefetch named / all
    std::int64_t consistent = 0, routed_pairs = 0;         // (token, expert) pairs the previous token also used
    double hit_rate() const { return hits + misses > 0 ? double(hits) / double(hits + misses) : 1.0; }
    double prediction_accuracy() const { return predicted_total > 0 ? double(predicted_hits) / double(predicted_total) : 0.0; }
    double routing_consistency() const { return routed_pairs > 0 ? double(consistent) / double(routed_pairs) : 0.0; }
};

class ExpertStore;

// The slots of cached stores: an arena of slots() records of slot_bytes() (the largest record, rounded
// to 4 KiB), mlock'ed where the OS allows, with the lock of every store using it and the clock of their
// LRU. A cached store makes its own from StoreConfig::budget_bytes (a budget per layer), or the engine
// makes one and hands it to the stores of every layer (StoreConfig::cache: one budget in bytes for the
// whole model). A miss in any layer then evicts, by the missing store's policy, among the unheld
// experts of every layer: a layer whose experts are reused keeps them, one whose routing wanders gives
// its slots up. The clock is the cache's, so LRU compares the uses of different layers.
class SlotCache {
public:
    SlotCache() = default;  // no slots: the lock of a resident or mapped store
    // budget_bytes / slot_bytes slots, at most max_slots (slot_bytes a multiple of 4 KiB, at least one slot).
    SlotCache(std::size_t budget_bytes, std::size_t slot_bytes, std::int64_t max_slots = std::numeric_limits<std::int64_t>::max())
        : slot_bytes_(slot_bytes) {
        if (slot_bytes == 0 || slot_bytes % kRecordAlignment != 0)
            smoe::detail::fail("cache slot_bytes", slot_bytes, "a positive multiple of " + std::to_string(kRecordAlignment));
        if (budget_bytes < slot_bytes)
            smoe::detail::fail("cache budget_bytes", budget_bytes, "at least one slot: " + std::to_string(slot_bytes) + " bytes");
        n_ = static_cast<std::int64_t>(std::min<std::size_t>(budget_bytes / slot_bytes, static_cast<std::size_t>(max_slots)));
        auto const n = static_cast<std::size_t>(n_);
        // One page more than the slots: the first slot starts on a page (O_DIRECT reads need it).
        arena_ = kernels::cpu::AlignedArray<std::byte>(n * slot_bytes_ + kRecordAlignment);
        auto const misalign = reinterpret_cast<std::uintptr_t>(arena_.data()) % kRecordAlignment;
        base_ = arena_.data() + (kRecordAlignment - misalign) % kRecordAlignment;
#if SMOE_IO_HAS_MMAP
        // Pinned where RLIMIT_MEMLOCK allows; an arena the OS may swap still works.
        pinned_ = ::mlock(arena_.data(), arena_.size()) == 0;
#endif
        owner_.assign(n, nullptr);
        expert_.assign(n, -1);
        pins_.assign(n, 0);
        ready_.assign(n, 0);
        prefetched_.assign(n, 0);
        next_.assign(n, 0);
        pieces_.assign(n, 0);
        left_.assign(n, 0);
        pf_read_.assign(n, 0);
        error_.assign(n, nullptr);
        candidates_.reserve(n);
        cand_slot_.reserve(n);
    }
    // One budget for the stores of every layer of `file`: slots of the file's largest record.
    static std::shared_ptr<SlotCache> for_file(std::size_t budget_bytes, PackedFile const& file) {
        std::size_t biggest = 0;
        for (auto const& L : file.layers())
            for (std::int64_t e = 0; e < L.num_experts; ++e) biggest = std::max<std::size_t>(biggest, file.record(L, e).bytes);
        std::size_t const slot = whole_pages(std::max<std::size_t>(biggest, 1));
        if (budget_bytes < slot)
            smoe::detail::fail("store.cache budget_bytes", budget_bytes,
                               "at least one expert's slot: " + std::to_string(slot) + " bytes (" + file.name() + "'s largest record, rounded to 4 KiB)");
        return std::make_shared<SlotCache>(budget_bytes, slot);
    }
    SlotCache(SlotCache const&) = delete;
    SlotCache& operator=(SlotCache const&) = delete;
    ~SlotCache() {
#if SMOE_IO_HAS_MMAP
        if (pinned_) ::munlock(arena_.data(), arena_.size());
#endif
    }
    std::int64_t slots() const { return n_; }
    std::size_t slot_bytes() const { return slot_bytes_; }
    std::size_t memory_bytes() const { return arena_.size(); }
    bool pinned() const { return pinned_; }

private:
    friend class ExpertStore;
    std::byte* slot(std::size_t s) const { return base_ + s * slot_bytes_; }

    mutable std::mutex mu_;
    std::condition_variable cv_;
    std::uint64_t tick_ = 0;  // acquires of every store using the cache
    std::int64_t n_ = 0;
    std::size_t slot_bytes_ = 0;
    bool pinned_ = false;
    kernels::cpu::AlignedArray<std::byte> arena_;
    std::byte* base_ = nullptr;  // the first slot, page-aligned in arena_
    // Slot by slot: the store and its expert held there (nullptr, -1: empty), callers holding it, read
    // complete, read by a prefetch and not used since.
    std::vector<ExpertStore*> owner_;
    std::vector<std::int64_t> expert_;
    std::vector<std::int32_t> pins_;
    std::vector<std::uint8_t> ready_, prefetched_;
    // A read in flight: its pieces claimed by readers (next_ of pieces_) and not yet done (left_), read
    // for a prefetch (pf_read_: 1; 2 once a caller holds it); a failed read's error (error_, while
    // callers hold the slot: each gets the error, the last release frees the slot).
    std::vector<std::int32_t> next_, pieces_, left_;
    std::vector<std::uint8_t> pf_read_;
    std::vector<std::exception_ptr> error_;
    std::vector<EvictionCandidate> candidates_;  // victim()'s, with their slots
    std::vector<std::int64_t> cand_slot_;
};

class ExpertStore {
public:
    // Resident records packed by the expert itself: fill(e, dst) writes record e (bytes[e] bytes).
    template <class Fill>
    ExpertStore(std::vector<std::size_t> const& bytes, Fill&& fill) : E_(static_cast<std::int64_t>(bytes.size())), cache_(std::make_shared<SlotCache>()) {
        init_tables();
        std::vector<std::size_t> off(bytes.size());
        std::size_t total = 0;
        for (std::size_t e = 0; e < bytes.size(); ++e) {
            off[e] = total;
            total += (bytes[e] + 63) / 64 * 64;
        }
        arena_ = kernels::cpu::AlignedArray<std::byte>(total);
        for (std::int64_t e = 0; e < E_; ++e) {
            std::byte* p = arena_.data() + off[static_cast<std::size_t>(e)];
            fill(e, p);
            ptr_[static_cast<std::size_t>(e)].store(p, std::memory_order_relaxed);
        }
    }

    // Records of a packed file's layer, whose sizes the expert type has checked against its own layout.
    ExpertStore(StoreConfig const& cfg, PackedSource const& src) : cfg_(cfg), file_(src.file), cache_(std::make_shared<SlotCache>()) {
        layer_ = &file_->layer(src.layer);
        ids_ = file_->records_of(*layer_, src.experts);
        E_ = static_cast<std::int64_t>(ids_.size());
        init_tables();
        std::size_t biggest = 0;
        for (std::int64_t e = 0; e < E_; ++e) biggest = std::max<std::size_t>(biggest, rec(e).bytes);
        switch (cfg_.residency) {
            case Residency::resident: {
                std::vector<std::size_t> off(static_cast<std::size_t>(E_));
                std::size_t total = 0;
                for (std::int64_t e = 0; e < E_; ++e) {
                    off[static_cast<std::size_t>(e)] = total;
                    total += (rec(e).bytes + 63) / 64 * 64;
                }
                arena_ = kernels::cpu::AlignedArray<std::byte>(total);
                open_fd();
                for (std::int64_t e = 0; e < E_; ++e) {
                    std::byte* p = arena_.data() + off[static_cast<std::size_t>(e)];
                    read_record(e, p);
                    ptr_[static_cast<std::size_t>(e)].store(p, std::memory_order_relaxed);
                }
                close_fd();
                break;
            }
            case Residency::mapped:
                for (std::int64_t e = 0; e < E_; ++e) ptr_[static_cast<std::size_t>(e)].store(file_->mapped(rec(e)).data(), std::memory_order_relaxed);
                verified_.assign(static_cast<std::size_t>(E_), 0);
                break;
            case Residency::cached: {
                std::size_t const slot = whole_pages(biggest);
                std::string const at = "layer " + std::to_string(layer_->layer_index) + "'s largest record, rounded to 4 KiB";
                if (cfg_.cache) {
                    if (cfg_.cache->slot_bytes() < slot)
                        smoe::detail::fail("store.cache slot_bytes", cfg_.cache->slot_bytes(), "at least " + std::to_string(slot) + " bytes (" + at + ")");
                    cache_ = cfg_.cache;
                } else {
                    if (cfg_.budget_bytes < slot)
                        smoe::detail::fail("store.budget_bytes", cfg_.budget_bytes, "at least one expert's slot: " + std::to_string(slot) + " bytes (" + at + ")");
                    cache_ = std::make_shared<SlotCache>(cfg_.budget_bytes, slot, E_);
                }
                if (cfg_.eviction == Eviction::custom && !cfg_.evict)
                    smoe::detail::fail("store.evict", "empty", "a function choosing the victim with store.eviction = custom");
                smoe::detail::require_in_range("store.read_threads", cfg_.read_threads, 0, limits::kMaxThreads, "limits::kMaxThreads");
                if (cfg_.read_piece_bytes == 0 || cfg_.read_piece_bytes % kRecordAlignment != 0)
                    smoe::detail::fail("store.read_piece_bytes", cfg_.read_piece_bytes, "a positive multiple of " + std::to_string(kRecordAlignment));
                open_fd(cfg_.direct_io, true);
                stream_ = cfg_.stream_overflow && !direct_;
                verified_.assign(static_cast<std::size_t>(E_), 0);
                streaming_.assign(static_cast<std::size_t>(E_), 0);
                queue_.assign(static_cast<std::size_t>(E_), 0);
                todo_.reserve(static_cast<std::size_t>(cache_->n_));
                try {
                    for (std::int32_t t = 0; t < std::max(cfg_.read_threads, cfg_.prefetch ? 1 : 0); ++t) io_.emplace_back([this] { io_loop(); });
                } catch (std::system_error const& e) {
                    // The destructor will not run: join the readers already started (a joinable std::thread
                    // destroyed unjoined terminates the process), then say which thread failed.
                    stop_readers();
                    close_fd();
                    throw std::system_error(e.code(), "smoe::store::ExpertStore: could not start reader thread " +
                                                          std::to_string(io_.size() + 1) + " (store.read_threads = " +
                                                          std::to_string(cfg_.read_threads) + ")");
                }
                break;
            }
        }
    }

    ExpertStore(ExpertStore const&) = delete;
    ExpertStore& operator=(ExpertStore const&) = delete;
    ~ExpertStore() {
        stop_readers();
        if (residency() == Residency::cached) {  // a shared cache outlives its stores: their slots go free
            std::lock_guard lk(cache_->mu_);
            for (std::size_t s = 0; s < static_cast<std::size_t>(cache_->n_); ++s)
                if (cache_->owner_[s] == this) free_slot(s);
        }
        close_fd();
    }

    Residency residency() const { return file_ ? cfg_.residency : Residency::resident; }
    // Whether a caller must hold experts in rounds (a cache smaller than the layer that cannot stream).
    bool bounded() const { return residency() == Residency::cached && cache_->n_ < E_ && !stream_; }
    // Whether misses beyond the held slots run from the mapping (StoreConfig::stream_overflow).
    bool streams() const { return stream_; }
    std::int64_t num_experts() const { return E_; }
    // Slots of its cache (shared: with other stores), E when resident or mapped.
    std::int64_t slots() const { return residency() == Residency::cached ? cache_->n_ : E_; }
    std::size_t slot_bytes() const { return cache_->slot_bytes_; }
    bool pinned() const { return cache_->pinned_; }
    SlotCache const* cache() const { return residency() == Residency::cached ? cache_.get() : nullptr; }
    // Whether its slots are a SlotCache shared with other stores (StoreConfig::cache), not its own.
    bool shares_cache() const { return residency() == Residency::cached && cfg_.cache != nullptr; }
    // Whether misses bypass the page cache (StoreConfig::direct_io and a file system that allows it).
    bool direct_io() const { return direct_; }
    // Bytes this store holds in memory: the resident records, its own cache's arena, or the slots of a
    // shared cache its experts fill now (the cache's arena is SlotCache::memory_bytes); 0 when mapped.
    std::size_t memory_bytes() const {
        if (residency() != Residency::cached) return arena_.size();
        if (!cfg_.cache) return cache_->memory_bytes();
        std::lock_guard lk(cache_->mu_);
        return static_cast<std::size_t>(std::count(cache_->owner_.begin(), cache_->owner_.end(), this)) * cache_->slot_bytes_;
    }
    PackedSource source() const {
        if (!file_) return {};
        PackedSource s{file_, layer_->layer_index, {}};
        for (std::int64_t i : ids_) s.experts.push_back(file_->record(*layer_, i).expert);
        return s;
    }

    // A resident store's records, writable: back to back in id order, each at its size rounded up to 64
    // bytes. smoe::dist's LLEP (dist/layer.hpp) receives other ranks' records straight into them.
    std::span<std::byte> resident_bytes() {
        if (residency() != Residency::resident)
            smoe::detail::fail("store.residency", to_string(residency()), "resident records to write into");
        return {arena_.data(), arena_.size()};
    }

    // Record e's bytes; valid while e is held (acquire .. release), always for resident and mapped.
    std::byte const* record(std::int64_t e) const { return ptr_[static_cast<std::size_t>(e)].load(std::memory_order_acquire); }

    // Holds expert e (tokens: routed to it in this call, for LFU) and makes its record readable:
    // false when every slot is held by callers (release some, then retry). Throws a file_error naming
    // the layer and expert when the record read from the file is short or has the wrong checksum (e is
    // then not held). wait = false (cached): a miss only starts its read (the reader threads read it in
    // pieces, several at once) and acquire returns at once; ready_first() then says which held
    // experts are readable, so a caller computes its hits while its misses are read.
    bool acquire(std::int64_t e, std::int64_t tokens = 0, bool wait = true) {
        auto const i = static_cast<std::size_t>(e);
        std::unique_lock lk(cache_->mu_);
        last_use_[i] = ++cache_->tick_;
        ++uses_[i];
        load_[i] += static_cast<std::uint64_t>(std::max<std::int64_t>(tokens, 0));
        if (residency() == Residency::resident) return true;
        if (residency() == Residency::mapped) {
            if (!verified_[i]) {
                auto const t0 = clock::now();
                file_->verify(*layer_, ids_[i]);  // pages the record in
                verified_[i] = 1;
                ++stats_.misses;
                stats_.bytes_read += rec(e).bytes;
                stats_.stall_seconds += seconds_since(t0);
            } else {
                ++stats_.hits;
            }
            return true;
        }
        auto& c = *cache_;
        auto const t0 = clock::now();
        bool waited = false;
        for (;; waited = true, c.cv_.wait(lk)) {
            if (std::int32_t const s = slot_of_[i]; s >= 0) {  // cached, or being read
                auto const si = static_cast<std::size_t>(s);
                ++c.pins_[si];
                if (c.pf_read_[si] == 1 || (c.ready_[si] && c.prefetched_[si])) ++stats_.prefetch_used;
                c.pf_read_[si] = c.pf_read_[si] ? 2 : 0;
                c.prefetched_[si] = 0;
                hit_tick_[i] = call_tick_;
                ++stats_.hits;
                break;
            }
            if (std::int64_t const s = victim(); s >= 0) {
                start_read(e, s, false);
                ++c.pins_[static_cast<std::size_t>(s)];
                ++stats_.misses;
                break;
            }
            if (stream_) {  // every slot held: run it from the mapping, evicting nothing
                if (!verified_[i]) {
                    file_->verify(*layer_, ids_[i]);  // pages the record in
                    verified_[i] = 1;
                }
                ptr_[i].store(file_->mapped(rec(e)).data(), std::memory_order_release);
                ++streaming_[i];
                ++stats_.misses;
                ++stats_.streamed;
                stats_.stall_seconds += seconds_since(t0);
                return true;
            }
            // Every slot is held: by callers (give up) or by a prefetch's read that nobody holds (wait
            // for it). A read a caller holds frees nothing when done, so it is no reason to wait.
            bool reading = false;
            for (std::size_t k = 0; k < static_cast<std::size_t>(c.n_); ++k) reading = reading || (!c.ready_[k] && c.pins_[k] == 0);
            if (!reading) {
                if (waited) stats_.stall_seconds += seconds_since(t0);
                return false;
            }
        }
        if (waited) stats_.stall_seconds += seconds_since(t0);
        if (!wait) return true;
        auto id = static_cast<std::int32_t>(e);
        try {
            await(lk, std::span<std::int32_t>(&id, 1), true);
        } catch (...) {
            release_locked(e);
            throw;
        }
        return true;
    }

    // Of experts held by acquire(e, tokens, false), moves those whose records are readable to the
    // front of ids and returns how many: at least one (every one, with all), reading pieces of the
    // missing records meanwhile or waiting for the readers. Throws the file_error of a failed read
    // (naming the layer and expert); the caller still holds every id and releases them.
    std::size_t ready_first(std::span<std::int32_t> ids, bool all = false) {
        if (residency() != Residency::cached) return ids.size();
        std::unique_lock lk(cache_->mu_);
        return await(lk, ids, all);
    }

    void release(std::int64_t e) {
        if (residency() != Residency::cached) return;
        std::lock_guard lk(cache_->mu_);
        release_locked(e);
    }

    // Orders a call's experts for acquire: those in the cache first (in id order), then the misses.
    // A call that needs more experts than the cache holds runs in rounds; acquired in id order, a miss
    // of the first round could evict an expert the same call needs in a later round (with 6 slots and
    // k = 8 that is most of them: LRU hit rates of 1-4 %). Hits pinned first, a miss only evicts
    // experts this call does not use (and, in later rounds, this call's earlier misses before its hits).
    void hits_first(std::span<std::int32_t> ids) const {
        if (residency() != Residency::cached) return;
        std::lock_guard lk(cache_->mu_);
        std::size_t n = 0, m = 0;
        for (std::int32_t e : ids) (slot_of_[static_cast<std::size_t>(e)] >= 0 ? ids[n++] : order_[m++]) = e;
        std::copy(order_.begin(), order_.begin() + static_cast<std::ptrdiff_t>(m), ids.begin() + static_cast<std::ptrdiff_t>(n));
    }

    // Holds e for a scope: for callers that run one expert at a time (MoELayer's unphased path,
    // dist::MoELayer), where some slot is always free.
    class Pin {
    public:
        Pin(ExpertStore& s, std::int64_t e, std::int64_t tokens = 0) : s_(&s), e_(e) {
            if (!s.acquire(e, tokens)) smoe::detail::fail("expert store", "every slot held", "a free slot for expert " + std::to_string(e) + " (release experts first)");
        }
        Pin(Pin const&) = delete;
        Pin& operator=(Pin const&) = delete;
        ~Pin() { s_->release(e_); }

    private:
        ExpertStore* s_;
        std::int64_t e_;
    };

    // Experts the engine expects next (its predicted routing, or the pre-gating router's): read into
    // the cache by the I/O thread (cached with prefetch), advised to the kernel (mapped). Remembered
    // for the prediction accuracy of the next observe().
    void prefetch(std::span<std::int64_t const> experts) {
        std::lock_guard lk(cache_->mu_);
        std::fill(predicted_.begin(), predicted_.end(), std::uint8_t{0});
        have_prediction_ = true;
        for (std::int64_t e : experts) {
            if (e < 0 || e >= E_) continue;
            auto const i = static_cast<std::size_t>(e);
            predicted_[i] = 1;
            if (residency() == Residency::mapped) {
#if SMOE_IO_HAS_MMAP
                auto const r = file_->mapped(rec(e));
                auto const page = reinterpret_cast<std::uintptr_t>(r.data()) / 4096 * 4096;
                (void)::madvise(reinterpret_cast<void*>(page), r.size() + (reinterpret_cast<std::uintptr_t>(r.data()) - page), MADV_WILLNEED);
#endif
                ++stats_.prefetch_issued;
            } else if (cfg_.prefetch && !io_.empty() && slot_of_[i] < 0 && !queue_[i] && (streaming_.empty() || !streaming_[i])) {
                queue_[i] = 1;
                ++queued_;
                ++stats_.prefetch_issued;
            }
        }
        io_cv_.notify_all();
    }

    // One call's routing (the layer calls it before acquiring): prediction accuracy against the last
    // prefetch, and the local routing consistency token by token (the previous call's last token
    // carries over, so decode steps count too). A rank's store (dist::MoELayer) passes local_of, the
    // store's expert of a routing's expert id (-1: another rank's); ids >= E (identity experts) never count.
    void observe(RoutingResult const& r) {
        observe(r, [](std::int64_t e) { return e; });
    }
    template <class LocalOf>
    void observe(RoutingResult const& r, LocalOf&& local_of) {
        std::lock_guard lk(cache_->mu_);
        call_tick_ = cache_->tick_ + 1;  // the acquires of this call come after
        auto const local = [&](std::int64_t e) -> std::int64_t {
            if (e < 0 || e >= r.num_experts) return -1;
            std::int64_t const l = local_of(e);
            return l >= 0 && l < E_ ? l : -1;
        };
        for (std::int64_t t = 0; t < r.num_tokens; ++t) {
            std::fill(cur_.begin(), cur_.end(), std::uint8_t{0});
            for (std::int64_t j = 0; j < r.k; ++j) {
                std::int64_t const e = local(r.expert_ids(t, j));
                if (e < 0) continue;
                auto const i = static_cast<std::size_t>(e);
                cur_[i] = 1;
                ++stats_.routed_pairs;
                stats_.consistent += prev_[i];
            }
            std::swap(cur_, prev_);
        }
        if (have_prediction_) {
            for (std::int64_t e = 0; e < r.num_experts; ++e)
                if (std::int64_t const l = local(e); l >= 0 && r.load(e) > 0) {
                    ++stats_.predicted_total;
                    stats_.predicted_hits += predicted_[static_cast<std::size_t>(l)];
                }
            have_prediction_ = false;
        }
    }

    // Blocks until the prefetch queue is empty and no read is in flight (tests, benchmarks).
    void wait_idle() {
        std::unique_lock lk(cache_->mu_);
        cache_->cv_.wait(lk, [&] { return queued_ == 0 && reads_ == 0; });
    }

    StoreStats stats() const {
        std::lock_guard lk(cache_->mu_);
        return stats_;
    }
    void reset_stats() {
        std::lock_guard lk(cache_->mu_);
        stats_ = {};
    }
    // The experts in the cache, slot by slot (-1: empty, or another store's); tests read the eviction order here.
    std::vector<std::int64_t> cached_experts() const {
        std::lock_guard lk(cache_->mu_);
        std::vector<std::int64_t> v(static_cast<std::size_t>(cache_->n_), -1);
        for (std::size_t s = 0; s < v.size(); ++s)
            if (cache_->owner_[s] == this) v[s] = cache_->expert_[s];
        return v;
    }

private:
    using clock = std::chrono::steady_clock;
    static double seconds_since(clock::time_point t0) { return std::chrono::duration<double>(clock::now() - t0).count(); }

    PackedRecord const& rec(std::int64_t e) const { return file_->record(*layer_, ids_[static_cast<std::size_t>(e)]); }

    void init_tables() {
        auto const n = static_cast<std::size_t>(E_);
        ptr_ = std::make_unique<std::atomic<std::byte const*>[]>(n);
        slot_of_.assign(n, -1);
        last_use_.assign(n, 0);
        uses_.assign(n, 0);
        load_.assign(n, 0);
        predicted_.assign(n, 0);
        hit_tick_.assign(n, 0);
        order_.assign(n, 0);
        cur_.assign(n, 0);
        prev_.assign(n, 0);
    }

    // A free slot, else the policy's victim among the ready slots nobody holds; -1 when none. A
    // prefetch (speculative) never evicts an expert of the latest call: that is the working set the
    // next call most likely needs (local routing consistency), and a wrong prediction must not cost it.
    // Nor one the pending prediction names: a prefetch of the next call's experts that evicted another
    // of them (cached already, so not queued) read a record to lose one (BM_store: a third more bytes).
    std::int64_t victim(bool speculative = false) {
        auto& c = *cache_;
        c.candidates_.clear();
        c.cand_slot_.clear();
        for (std::int64_t s = 0; s < c.n_; ++s)
            if (!c.owner_[static_cast<std::size_t>(s)]) return s;
        // A demand miss takes a slot of this call's hits last: an expert found in the cache again is
        // the reuse the cache exists for, and an earlier round's miss of the same call (streamed
        // through) is the better victim when the call needs more experts than the cache holds. In a
        // shared cache each slot answers to the store holding it (its latest call, its clock of uses),
        // and another layer's latest call (hits and misses: what its next call most likely reuses) is
        // also taken last: else LFU gave the next layer's misses the experts a layer had just read,
        // fewest tokens so far, and a budget for the model hit 53 % where per-layer budgets hit 72 %
        // (BM_store_layers, 4 layers alike; now 72 % both).
        bool latest_calls_only = false;
        for (int pass = 0; pass < 2 && c.candidates_.empty(); ++pass) {
            latest_calls_only = pass == 1;
            for (std::int64_t s = 0; s < c.n_; ++s) {
                auto const si = static_cast<std::size_t>(s);
                if (c.pins_[si] == 0 && c.ready_[si]) {
                    ExpertStore const& o = *c.owner_[si];
                    auto const e = static_cast<std::size_t>(c.expert_[si]);
                    if (speculative && (o.last_use_[e] >= o.call_tick_ || (o.have_prediction_ && o.predicted_[e]))) continue;
                    if (pass == 0 && o.call_tick_ > 0 && (o.hit_tick_[e] == o.call_tick_ || (&o != this && o.last_use_[e] >= o.call_tick_))) continue;
                    c.candidates_.push_back({c.expert_[si], o.last_use_[e], o.uses_[e], o.load_[e], o.layer_ ? o.layer_->layer_index : -1});
                    c.cand_slot_.push_back(s);
                }
            }
        }
        if (c.candidates_.empty()) return -1;
        // A shared cache holding only the layers' latest calls (one budget below a decode step's L x k
        // experts): the layer that ran last runs again last (a model's layers run in order), so its
        // experts go first. The policy's usual pick, the oldest, is the next layer's: LRU took them just
        // before their use, every layer missing every expert (BM_store_layers at 10 %: 0 % hits).
        if (latest_calls_only && shares_cache()) {
            ExpertStore const* last = nullptr;
            for (std::int64_t s : c.cand_slot_) {
                ExpertStore const* o = c.owner_[static_cast<std::size_t>(s)];
                if (o != this && (!last || o->call_tick_ > last->call_tick_)) last = o;
            }
            std::size_t n = 0;
            for (std::size_t q = 0; last && q < c.cand_slot_.size(); ++q)
                if (c.owner_[static_cast<std::size_t>(c.cand_slot_[q])] == last) {
                    c.candidates_[n] = c.candidates_[q];
                    c.cand_slot_[n++] = c.cand_slot_[q];
                }
            if (last) {
                c.candidates_.resize(n);
                c.cand_slot_.resize(n);
            }
        }
        std::size_t pick = 0;
        switch (cfg_.eviction) {
            case Eviction::lru:
                for (std::size_t q = 1; q < c.candidates_.size(); ++q)
                    if (c.candidates_[q].last_use < c.candidates_[pick].last_use) pick = q;
                break;
            case Eviction::lfu:  // fewest tokens routed; ties: least recently used
                for (std::size_t q = 1; q < c.candidates_.size(); ++q)
                    if (c.candidates_[q].load < c.candidates_[pick].load ||
                        (c.candidates_[q].load == c.candidates_[pick].load && c.candidates_[q].last_use < c.candidates_[pick].last_use))
                        pick = q;
                break;
            case Eviction::custom:
                pick = cfg_.evict(std::span<EvictionCandidate const>(c.candidates_));
                if (pick >= c.candidates_.size())
                    smoe::detail::fail("store.evict result", pick, "an index into the " + std::to_string(c.candidates_.size()) + " candidates");
                break;
        }
        return c.cand_slot_[pick];
    }

    // Claims slot s for expert e's record (its holder, if any, loses it) and queues the read's pieces
    // for the reader threads, a demand read ahead of prefetches; a caller waiting for it reads pieces
    // too (ready_first), so a store without readers reads its misses on the caller's thread.
    void start_read(std::int64_t e, std::int64_t s, bool prefetched) {
        auto& c = *cache_;
        auto const si = static_cast<std::size_t>(s), i = static_cast<std::size_t>(e);
        if (ExpertStore* const o = c.owner_[si]) {  // counted as the holder's eviction (another layer's, if shared)
            auto const old = static_cast<std::size_t>(c.expert_[si]);
            o->slot_of_[old] = -1;
            o->ptr_[old].store(nullptr, std::memory_order_release);
            ++o->stats_.evictions;
        }
        c.owner_[si] = this;
        c.expert_[si] = e;
        slot_of_[i] = static_cast<std::int32_t>(s);
        c.ready_[si] = 0;
        c.prefetched_[si] = 0;
        c.pf_read_[si] = prefetched ? 1 : 0;
        c.error_[si] = nullptr;
        std::size_t const piece = cfg_.read_piece_bytes;
        c.pieces_[si] = c.left_[si] = static_cast<std::int32_t>(std::max<std::size_t>((read_bytes(e) + piece - 1) / piece, 1));
        c.next_[si] = 0;
        ++reads_;
        todo_.insert(prefetched ? todo_.end() : todo_.begin(), static_cast<std::int32_t>(s));
        io_cv_.notify_all();
    }

    // Reads the next piece of slot s's record with the lock released (after a failed piece the rest
    // are skipped); whoever finishes its last piece checks the checksum (on the record's first read:
    // later reads of the same bytes are trusted, as a mapped store trusts its pages) and makes it
    // ready, or keeps the error for the callers holding it (a read nobody holds leaves the slot empty).
    void read_piece(std::unique_lock<std::mutex>& lk, std::int32_t s) {
        auto& c = *cache_;
        auto const si = static_cast<std::size_t>(s);
        std::size_t const p = static_cast<std::size_t>(c.next_[si]++) * cfg_.read_piece_bytes;
        if (c.next_[si] == c.pieces_[si]) todo_.erase(std::find(todo_.begin(), todo_.end(), s));
        std::int64_t const e = c.expert_[si];
        std::byte* const dst = c.slot(si);
        if (!c.error_[si]) {
            stats_.reads_at_once = std::max(stats_.reads_at_once, ++reading_);
            lk.unlock();
            std::exception_ptr err;
            try {
                read_into(e, dst, p, cfg_.read_piece_bytes);
            } catch (...) {
                err = std::current_exception();
            }
            lk.lock();
            --reading_;
            if (err && !c.error_[si]) c.error_[si] = err;
        }
        if (--c.left_[si] > 0) return;
        auto const i = static_cast<std::size_t>(e);
        if (!c.error_[si] && !verified_[i]) {
            lk.unlock();
            std::exception_ptr err;
            try {
                file_->check(*layer_, ids_[i], std::span<std::byte const>(dst, rec(e).bytes));
            } catch (...) {
                err = std::current_exception();
            }
            lk.lock();
            c.error_[si] = err;
        }
        --reads_;
        c.ready_[si] = 1;
        if (c.error_[si]) {
            if (c.pins_[si] == 0) free_slot(si);  // a prefetch nobody holds: the next acquire reads it again
        } else {
            verified_[i] = 1;
            c.prefetched_[si] = c.pf_read_[si] == 1;
            stats_.prefetch_loaded += c.pf_read_[si] != 0;
            stats_.bytes_read += rec(e).bytes;
            ptr_[i].store(dst, std::memory_order_release);
        }
        c.pf_read_[si] = 0;
        c.cv_.notify_all();
    }

    // ready_first() with the lock held.
    std::size_t await(std::unique_lock<std::mutex>& lk, std::span<std::int32_t> ids, bool all) {
        auto& c = *cache_;
        auto const t0 = clock::now();
        for (bool waited = false;; waited = true) {
            std::size_t n = 0, m = 0;
            std::int32_t help = -1;
            for (std::int32_t e : ids) {
                std::int32_t const s = slot_of_[static_cast<std::size_t>(e)];  // -1: streamed from the mapping
                auto const si = static_cast<std::size_t>(s);
                if (s >= 0 && c.ready_[si] && c.error_[si]) {
                    if (waited) stats_.stall_seconds += seconds_since(t0);
                    std::rethrow_exception(c.error_[si]);
                }
                if (s < 0 || c.ready_[si]) {
                    ids[n++] = e;
                } else {
                    order_[m++] = e;
                    if (help < 0 && c.next_[si] < c.pieces_[si]) help = s;
                }
            }
            std::copy(order_.begin(), order_.begin() + static_cast<std::ptrdiff_t>(m), ids.begin() + static_cast<std::ptrdiff_t>(n));
            if (n == ids.size() || (n > 0 && !all)) {
                if (waited) stats_.stall_seconds += seconds_since(t0);
                return n;
            }
            if (help >= 0)
                read_piece(lk, help);
            else
                c.cv_.wait(lk);
        }
    }

    void release_locked(std::int64_t e) {
        auto& c = *cache_;
        if (streaming_[static_cast<std::size_t>(e)] > 0) {  // held from the mapping, not in a slot
            --streaming_[static_cast<std::size_t>(e)];
        } else if (std::int32_t const s = slot_of_[static_cast<std::size_t>(e)]; s >= 0 && c.pins_[static_cast<std::size_t>(s)] > 0) {
            auto const si = static_cast<std::size_t>(s);
            if (--c.pins_[si] == 0 && c.ready_[si] && c.error_[si]) free_slot(si);  // its read failed: empty again
            if (c.pins_[si] == 0 && !c.ready_[si] && io_.empty()) {
                // Let go unread (its caller threw): no reader thread would finish it, and only its
                // holders read its pieces, so none is being read now.
                if (auto const q = std::find(todo_.begin(), todo_.end(), s); q != todo_.end()) todo_.erase(q);
                --reads_;
                free_slot(si);
            }
        }
        c.cv_.notify_all();
    }

    void free_slot(std::size_t s) {
        auto& c = *cache_;
        if (c.owner_[s] == this) slot_of_[static_cast<std::size_t>(c.expert_[s])] = -1;
        c.owner_[s] = nullptr;
        c.expert_[s] = -1;
        c.pins_[s] = 0;
        c.ready_[s] = 1;
        c.prefetched_[s] = 0;
        c.pf_read_[s] = 0;
        c.next_[s] = c.pieces_[s] = c.left_[s] = 0;
        c.error_[s] = nullptr;
    }

    // A reader thread: pieces of queued reads first (demand reads ahead), then prefetches.
    // A reader finishes the piece it reads; the destructor then frees the slots, dropping unfinished reads.
    void stop_readers() {
        if (io_.empty()) return;
        {
            std::lock_guard lk(cache_->mu_);
            stop_ = true;
        }
        io_cv_.notify_all();
        for (auto& t : io_) t.join();
        io_.clear();
    }

    void io_loop() {
        std::unique_lock lk(cache_->mu_);
        for (;;) {
            io_cv_.wait(lk, [&] { return stop_ || !todo_.empty() || queued_ > 0; });
            if (stop_) return;
            if (!todo_.empty()) {
                read_piece(lk, todo_.front());
                continue;
            }
            std::int64_t e = 0;
            while (!queue_[static_cast<std::size_t>(e)]) ++e;
            queue_[static_cast<std::size_t>(e)] = 0;
            --queued_;
            cache_->cv_.notify_all();
            // Cached already, or a caller runs it from the mapping now.
            if (slot_of_[static_cast<std::size_t>(e)] >= 0 || streaming_[static_cast<std::size_t>(e)]) continue;
            // None free: every slot held or in the latest call's working set: drop this prediction.
            if (std::int64_t const s = victim(true); s >= 0) start_read(e, s, true);
        }
    }

    // random: a cached store reads exactly its records, so the kernel's readahead around them would
    // only fill the page cache with bytes nobody asked for (BM_store in a memory cgroup: 3.2 MB read
    // from the disk per 1.9 MB of records).
    void open_fd(bool direct = false, bool random = false) {
#if SMOE_IO_HAS_MMAP
#ifdef O_DIRECT
        if (direct) {  // tmpfs and some others refuse O_DIRECT: buffered reads then (direct_io() says which)
            fd_ = ::open(file_->path().c_str(), O_RDONLY | O_CLOEXEC | O_DIRECT);
            direct_ = fd_ >= 0;
            if (direct_) return;
        }
#endif
        fd_ = ::open(file_->path().c_str(), O_RDONLY | O_CLOEXEC);
        if (fd_ < 0) io::detail::file_fail(file_->name(), "file", "cannot reopen for reading", "a readable packed expert file");
        if (random) (void)::posix_fadvise(fd_, 0, 0, POSIX_FADV_RANDOM);
#endif
    }
    void close_fd() {
#if SMOE_IO_HAS_MMAP
        if (fd_ >= 0) ::close(fd_);
        fd_ = -1;
#endif
    }

    // Bytes a read of record e covers: O_DIRECT reads whole pages into the page-aligned slot (records
    // start on a page; the bytes after the record are the next record's or the table's, never used).
    std::size_t read_bytes(std::int64_t e) const { return direct_ ? whole_pages(rec(e).bytes) : rec(e).bytes; }

    // Reads bytes [at, at + n) of record e (explicit reads: the arena, not the page cache's mapping,
    // holds it) into dst + at.
    void read_into(std::int64_t e, std::byte* dst, std::size_t at, std::size_t n) const {
        auto const& r = rec(e);
        std::size_t const end = std::min(read_bytes(e), at + n), need = std::min<std::size_t>(r.bytes, end);
#if SMOE_IO_HAS_MMAP
        for (std::size_t done = at; done < need;) {
            ssize_t const got = ::pread(fd_, dst + done, end - done, static_cast<off_t>(r.offset + done));
            if (got <= 0)
                io::detail::file_fail(file_->name(), file_->where(*layer_, ids_[static_cast<std::size_t>(e)]) + " record",
                                      "unreadable at offset " + std::to_string(r.offset + done), "the record's " + std::to_string(r.bytes) + " bytes");
            done += static_cast<std::size_t>(got);
        }
#else
        auto const m = file_->mapped(r);
        if (at < need) std::copy(m.begin() + static_cast<std::ptrdiff_t>(at), m.begin() + static_cast<std::ptrdiff_t>(need), dst + at);
#endif
    }

    // Reads record e into dst and checks its checksum (resident stores).
    void read_record(std::int64_t e, std::byte* dst) const {
        read_into(e, dst, 0, read_bytes(e));
        file_->check(*layer_, ids_[static_cast<std::size_t>(e)], std::span<std::byte const>(dst, rec(e).bytes));
    }

    StoreConfig cfg_;
    std::shared_ptr<PackedFile const> file_;
    PackedLayer const* layer_ = nullptr;
    std::vector<std::int64_t> ids_;
    std::int64_t E_ = 0;
    bool direct_ = false;
    int fd_ = -1;
    kernels::cpu::AlignedArray<std::byte> arena_;  // resident
    std::unique_ptr<std::atomic<std::byte const*>[]> ptr_;

    std::shared_ptr<SlotCache> cache_;  // its lock always; its slots when cached
    std::uint64_t call_tick_ = 0;       // the cache's clock at the first acquire of the latest call
    std::vector<std::int32_t> slot_of_;
    std::vector<std::uint64_t> last_use_, uses_, load_, hit_tick_;  // hit_tick_: the call_tick_ of its last hit
    mutable std::vector<std::int32_t> order_;                         // hits_first's misses
    std::vector<std::uint8_t> verified_, predicted_, cur_, prev_;  // verified_: mapped, or streamed once
    std::vector<std::int32_t> streaming_;  // cached: callers running it from the mapping now
    bool stream_ = false;
    bool have_prediction_ = false;
    std::vector<std::uint8_t> queue_;  // prefetches not started
    std::int64_t queued_ = 0;
    std::vector<std::int32_t> todo_;  // slots of this store's reads with pieces nobody reads yet, demand reads first
    std::int64_t reads_ = 0, reading_ = 0;  // reads not finished; pieces being read now
    bool stop_ = false;
    std::vector<std::thread> io_;  // the reader threads
    // Wakes this store's readers only (reads queued, prefetches, stop), with the cache's lock: the
    // cache's own condition (a read done, a slot released) concerns every store sharing it.
    std::condition_variable io_cv_;
    StoreStats stats_;
};

}  // namespace smoe::inline v0::store
