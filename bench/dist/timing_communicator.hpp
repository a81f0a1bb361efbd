#pragma once
// A Communicator that wraps another and timestamps every collective: what an engine-supplied
// communicator looks like, and how the benchmark splits one sharded forward into its phases without
// touching the layer. The layer's forward makes exactly three collectives (counts alltoall, rows
// alltoallv, results alltoallv), and between the two alltoallv it only runs its local experts, so:
//
//   route + pack = counts.start - forward start     counts   = counts.end - counts.start
//   dispatch     = first alltoallv                  experts  = second.start - first.end
//   return       = second alltoallv                 combine  = forward end - second.end
//
// With sync_before_exchange, an extra barrier before each alltoallv separates the time a rank waits
// for slower peers (their routing or their experts: load imbalance) from the transfer itself. Under
// balance::LeastLoaded a forward that copies expert records makes one more alltoallv before the rows.
//
// Every event also carries the calling thread's CPU time (CLOCK_THREAD_CPUTIME_ID), so a phase without
// collectives (the experts) has a CPU time that the MPI library's busy waiting does not inflate.

#include <chrono>
#include <ctime>
#include <cstdint>
#include <span>
#include <vector>

#include "smoe/dist/communicator.hpp"

namespace smoe_bench {

template <smoe::dist::Communicator Inner>
class TimingCommunicator {
public:
    enum class Op { alltoall, barrier, alltoallv, allreduce };
    struct Event {
        Op op;
        double start, end;          // seconds since an arbitrary origin
        double cpu_start, cpu_end;  // this thread's CPU seconds
    };

    TimingCommunicator(Inner& inner, bool sync_before_exchange) : inner_(&inner), sync_(sync_before_exchange) { events_.reserve(64); }

    int rank() const { return inner_->rank(); }
    int size() const { return inner_->size(); }

    void alltoall(std::span<std::int64_t const> send, std::span<std::int64_t> recv) {
        timed(Op::alltoall, [&] { inner_->alltoall(send, recv); });
    }
    void alltoallv(std::span<float const> send, std::span<std::int64_t const> sc, std::span<std::int64_t const> sd,
                   std::span<float> recv, std::span<std::int64_t const> rc, std::span<std::int64_t const> rd) {
        if (sync_) timed(Op::barrier, [&] { barrier(); });
        timed(Op::alltoallv, [&] { inner_->alltoallv(send, sc, sd, recv, rc, rd); });
    }
    void allreduce_sum(std::span<std::int64_t> v) { timed(Op::allreduce, [&] { inner_->allreduce_sum(v); }); }
    void allreduce_min(std::span<std::int64_t> v) { timed(Op::allreduce, [&] { inner_->allreduce_min(v); }); }

    // A barrier from the concept's own operations (a one-element allreduce).
    void barrier() {
        std::int64_t v = 0;
        inner_->allreduce_min(std::span<std::int64_t>(&v, 1));
    }

    static double now() {
        return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
    }
    static double cpu_now() {
        timespec ts{};
        clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
        return double(ts.tv_sec) + 1e-9 * double(ts.tv_nsec);
    }
    std::vector<Event> const& events() const { return events_; }
    void clear() { events_.clear(); }

private:
    template <class F>
    void timed(Op op, F&& f) {
        double const t0 = now(), c0 = cpu_now();
        f();
        events_.push_back({op, t0, now(), c0, cpu_now()});
    }

    Inner* inner_;
    bool sync_;
    std::vector<Event> events_;
};

}  // namespace smoe_bench
