#pragma once
// Threads for the layer's expert work. smoe never creates threads behind the caller's back: a layer
// runs on the calling thread unless it is given a pool (MoELayer::set_thread_pool).
//
// The contract is one call, `pool.parallel_for(n, fn)`: run fn(i) once for every i in [0, n), on any
// threads, in any order, and return when all have finished. fn is a TaskRef (a non-owning reference
// to the caller's callable; copying it never allocates) and does not throw. An engine passes its own
// pool by giving it that member; the optional `num_threads()` tells the layer how finely to split.
//
// Results never depend on the pool: every work item writes its own outputs, each computed in a fixed
// order (experts.md §1 rules 2 and 3), so 1, 2 or 16 threads give the same bits.
//
//   smoe::DefaultThreadPool pool(2);      // the caller plus one worker
//   layer.set_thread_pool(pool);

#include <algorithm>
#include <atomic>
#include <chrono>
#include <concepts>
#include <cstdint>
#include <string>
#include <system_error>
#include <thread>
#include <type_traits>
#include <vector>

#include "smoe/core/error.hpp"
#include "smoe/core/limits.hpp"

namespace smoe::inline v0 {

// A non-owning reference to a callable taking the item index; the callable must outlive the call.
class TaskRef {
public:
    template <class F>
        requires(!std::is_same_v<std::remove_cvref_t<F>, TaskRef> && std::invocable<F const&, std::int64_t>)
    TaskRef(F const& f) noexcept  // NOLINT: implicit, as std::function_ref
        : obj_(&f), call_([](void const* o, std::int64_t i) { (*static_cast<F const*>(o))(i); }) {}
    void operator()(std::int64_t i) const { call_(obj_, i); }

private:
    void const* obj_;
    void (*call_)(void const*, std::int64_t);
};

template <class P>
concept ThreadPool = requires(P& p, std::int64_t n, TaskRef fn) { p.parallel_for(n, fn); };

// What a layer keeps of the pool it was given: the pool's address and how to call it.
class PoolRef {
public:
    PoolRef() = default;
    template <ThreadPool P>
    explicit PoolRef(P& p)
        : pool_(&p), run_([](void* q, std::int64_t n, TaskRef fn) { static_cast<P*>(q)->parallel_for(n, fn); }),
          threads_(threads_of(p)) {}

    void parallel_for(std::int64_t n, TaskRef fn) const {
        if (pool_ == nullptr || n <= 1) {
            for (std::int64_t i = 0; i < n; ++i) fn(i);
        } else {
            run_(pool_, n, fn);
        }
    }
    std::int64_t num_threads() const { return threads_; }
    bool empty() const { return pool_ == nullptr; }

private:
    template <class P>
    static std::int64_t threads_of(P& p) {
        if constexpr (requires { p.num_threads(); })
            return std::max<std::int64_t>(1, static_cast<std::int64_t>(p.num_threads()));
        else
            return 2;
    }
    void* pool_ = nullptr;
    void (*run_)(void*, std::int64_t, TaskRef) = nullptr;
    std::int64_t threads_ = 1;
};

// A small pool: num_threads - 1 workers plus the calling thread, which takes items too. Items are
// claimed one at a time from an atomic ticket, so uneven items balance, and the caller waits only for
// items that were claimed: a worker the OS has not yet scheduled (the machine is shared) never holds
// up a call, it simply finds nothing left. A parallel_for call allocates nothing; workers spin briefly
// for the next call, then sleep on an atomic wait (futex), so an idle pool costs no CPU. One
// parallel_for at a time per pool.
class DefaultThreadPool {
public:
    explicit DefaultThreadPool(std::int64_t num_threads = std::max(1u, std::thread::hardware_concurrency())) {
        smoe::detail::require_in_range("num_threads", num_threads, 1, limits::kMaxThreads, "limits::kMaxThreads");
        workers_.reserve(static_cast<std::size_t>(num_threads - 1));
        try {
            for (std::int64_t i = 1; i < num_threads; ++i) workers_.emplace_back([this] { work(); });
        } catch (std::system_error const& e) {
            // The destructor will not run: join the workers already started (a joinable std::thread
            // destroyed unjoined terminates the process), then say which thread failed and why.
            stop_workers();
            throw std::system_error(e.code(), "smoe::DefaultThreadPool: could not start thread " +
                                                  std::to_string(workers_.size() + 1) + " of num_threads = " +
                                                  std::to_string(num_threads));
        }
    }
    DefaultThreadPool(DefaultThreadPool const&) = delete;
    DefaultThreadPool& operator=(DefaultThreadPool const&) = delete;
    ~DefaultThreadPool() { stop_workers(); }

    std::int64_t num_threads() const { return static_cast<std::int64_t>(workers_.size()) + 1; }

    void parallel_for(std::int64_t n, TaskRef fn) {
        if (workers_.empty() || n <= 1) {
            for (std::int64_t i = 0; i < n; ++i) fn(i);
            return;
        }
        // The ticket's low 32 bits index items: larger calls go in slices.
        constexpr std::int64_t kSlice = std::int64_t{1} << 30;
        for (std::int64_t first = 0; first < n; first += kSlice) run(first, std::min(kSlice, n - first), fn);
    }

private:
    // Polling before sleeping, by the clock: long enough to catch the next call of a layer that runs
    // back to back (decode: the combine, the router and the routing between two calls take ~5-25 µs),
    // short enough not to steal a core from other work for long. A count of polls (2^14) lasted only
    // ~4.5 µs on Zen 4, and a worker asleep on a VM wakes late (tens of µs: the idle vCPU halted), so at
    // decode the caller ran the start of every call alone.
    static constexpr auto kSpinTime = std::chrono::microseconds(50);
    using clock = std::chrono::steady_clock;
    // True once kSpinTime has passed since `start` (the clock read every 64 polls).
    static bool spun_out(clock::time_point start, int spin) { return spin % 64 == 63 && clock::now() - start >= kSpinTime; }

    struct Call {
        std::atomic<TaskRef const*> fn{nullptr};
        std::atomic<std::int64_t> first{0}, n{0};
    };

    void run(std::int64_t first, std::int64_t n, TaskRef const& fn) {
        std::uint64_t const g = generation_.load(std::memory_order_relaxed) + 1;
        Call& c = call_[g & 1];
        c.fn.store(&fn, std::memory_order_relaxed);
        c.first.store(first, std::memory_order_relaxed);
        c.n.store(n, std::memory_order_relaxed);
        finished_.store(0, std::memory_order_relaxed);
        ticket_.store((g & 0xFFFFFFFFu) << 32, std::memory_order_relaxed);
        generation_.store(g, std::memory_order_release);
        generation_.notify_all();
        drain(g);
        clock::time_point const start = clock::now();
        for (int spin = 0;; ++spin) {
            std::int64_t const done = finished_.load(std::memory_order_acquire);
            if (done == n) break;
            if (spun_out(start, spin)) finished_.wait(done, std::memory_order_acquire);
        }
    }

    // Claims items of call g until none is left or the call is over (the ticket names another call).
    void drain(std::uint64_t g) {
        Call const& slot = call_[g & 1];
        TaskRef const* const fn = slot.fn.load(std::memory_order_relaxed);
        std::int64_t const first = slot.first.load(std::memory_order_relaxed), n = slot.n.load(std::memory_order_relaxed);
        std::uint64_t const tag = (g & 0xFFFFFFFFu) << 32;
        std::uint64_t cur = ticket_.load(std::memory_order_relaxed);
        for (;;) {
            if ((cur & ~std::uint64_t{0xFFFFFFFFu}) != tag) return;
            auto const i = static_cast<std::int64_t>(cur & 0xFFFFFFFFu);
            if (i >= n) return;
            if (!ticket_.compare_exchange_weak(cur, cur + 1, std::memory_order_acquire, std::memory_order_relaxed)) continue;
            (*fn)(first + i);
            if (finished_.fetch_add(1, std::memory_order_acq_rel) + 1 == n) finished_.notify_one();
            cur = ticket_.load(std::memory_order_relaxed);
        }
    }

    void work() {
        std::uint64_t seen = 0;
        for (;;) {
            std::uint64_t g = generation_.load(std::memory_order_acquire);
            clock::time_point const start = clock::now();
            for (int spin = 0; g == seen; ++spin) {
                if (spun_out(start, spin)) generation_.wait(g, std::memory_order_acquire);
                g = generation_.load(std::memory_order_acquire);
            }
            seen = g;
            if (stop_.load(std::memory_order_relaxed)) return;
            drain(g);
        }
    }

    void stop_workers() {
        stop_.store(true, std::memory_order_relaxed);
        generation_.fetch_add(1, std::memory_order_release);
        generation_.notify_all();
        for (std::thread& t : workers_) t.join();
    }

    std::vector<std::thread> workers_;
    // Two slots: a worker that wakes late for call g reads slot g & 1 while call g + 1 writes the
    // other; a claim only succeeds while the ticket still names g, i.e. while call g is running.
    Call call_[2];
    std::atomic<std::uint64_t> ticket_{0};
    std::atomic<std::int64_t> finished_{0};
    std::atomic<std::uint64_t> generation_{0};
    std::atomic<bool> stop_{false};
};

static_assert(ThreadPool<DefaultThreadPool>);

}  // namespace smoe::inline v0
