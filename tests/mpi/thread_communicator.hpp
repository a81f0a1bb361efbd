#pragma once
// A dist::Communicator whose ranks are threads of one process: what an engine-supplied transport looks
// like, and how the multi-rank exchange is tested where MPI is absent. Every collective publishes this
// rank's buffers, waits for all ranks, copies what it needs from the others, and waits again so that
// no rank reuses a buffer another is still reading.

#include <algorithm>
#include <barrier>
#include <cstdint>
#include <span>
#include <stdexcept>
#include <vector>

#include "smoe/dist/communicator.hpp"

namespace smoe_test {

class ThreadHub {
public:
    explicit ThreadHub(int ranks) : ranks_(ranks), barrier_(ranks), posts_(static_cast<std::size_t>(ranks)) {}
    int ranks() const { return ranks_; }

private:
    friend class ThreadCommunicator;
    struct Post {
        void const* send = nullptr;
        std::int64_t const* counts = nullptr;  // alltoallv send counts and displacements
        std::int64_t const* displs = nullptr;
        std::size_t n = 0;                     // alltoall block / allreduce length
    };
    int ranks_;
    std::barrier<> barrier_;
    std::vector<Post> posts_;
};

class ThreadCommunicator {
public:
    ThreadCommunicator(ThreadHub& hub, int rank) : hub_(&hub), rank_(rank) {}
    int rank() const { return rank_; }
    int size() const { return hub_->ranks(); }

    void alltoall(std::span<std::int64_t const> send, std::span<std::int64_t> recv) {
        std::size_t const n = send.size() / static_cast<std::size_t>(size());
        publish({send.data(), nullptr, nullptr, n});
        for (int q = 0; q < size(); ++q) {
            auto const* src = static_cast<std::int64_t const*>(post(q).send) + static_cast<std::size_t>(rank_) * n;
            std::copy_n(src, n, recv.begin() + static_cast<std::ptrdiff_t>(static_cast<std::size_t>(q) * n));
        }
        hub_->barrier_.arrive_and_wait();
    }

    void alltoallv(std::span<float const> send, std::span<std::int64_t const> send_counts,
                   std::span<std::int64_t const> send_displs, std::span<float> recv,
                   std::span<std::int64_t const> recv_counts, std::span<std::int64_t const> recv_displs) {
        publish({send.data(), send_counts.data(), send_displs.data(), 0});
        bool agree = true;
        for (int q = 0; q < size(); ++q) {
            auto const& p = post(q);
            std::int64_t const n = p.counts[rank_];
            agree = agree && n == recv_counts[static_cast<std::size_t>(q)];
            if (n == recv_counts[static_cast<std::size_t>(q)])
                std::copy_n(static_cast<float const*>(p.send) + p.displs[rank_], n, recv.begin() + recv_displs[static_cast<std::size_t>(q)]);
        }
        hub_->barrier_.arrive_and_wait();
        // After the barrier, so that the other ranks are not left waiting in it.
        if (!agree) throw std::logic_error("ThreadCommunicator: a sender's count differs from the receiver's");
    }

    void allreduce_sum(std::span<std::int64_t> v) {
        reduce(v, [](std::int64_t a, std::int64_t b) { return a + b; });
    }
    void allreduce_min(std::span<std::int64_t> v) {
        reduce(v, [](std::int64_t a, std::int64_t b) { return std::min(a, b); });
    }

private:
    void publish(ThreadHub::Post p) {
        hub_->posts_[static_cast<std::size_t>(rank_)] = p;
        hub_->barrier_.arrive_and_wait();
    }
    ThreadHub::Post const& post(int q) const { return hub_->posts_[static_cast<std::size_t>(q)]; }

    template <class Op>
    void reduce(std::span<std::int64_t> v, Op op) {
        std::vector<std::int64_t> out(v.begin(), v.end());
        publish({v.data(), nullptr, nullptr, v.size()});
        for (int q = 0; q < size(); ++q)
            if (q != rank_)
                for (std::size_t i = 0; i < v.size(); ++i) out[i] = op(out[i], static_cast<std::int64_t const*>(post(q).send)[i]);
        hub_->barrier_.arrive_and_wait();  // every rank has read v before any rank overwrites its own
        std::copy(out.begin(), out.end(), v.begin());
    }

    ThreadHub* hub_;
    int rank_;
};

static_assert(smoe::dist::Communicator<ThreadCommunicator>);

}  // namespace smoe_test
