#pragma once
// What a sharded MoE layer needs from a transport (smoe::dist::Communicator), and SelfCommunicator, the
// one-rank transport that needs no library. MPI's implementation is in dist/mpi_communicator.hpp, the
// only header that includes <mpi.h>; an engine with its own transport (NCCL, a GPU runtime, a test
// harness) models the concept with its own type.
//
// Every operation is a collective: all ranks of the communicator call it, in the same order, with
// sizes that agree (the receiver's counts are what the senders send). The layer's steady state uses
// exactly three per forward, none of them a barrier (four under LLEP when its plan copies experts: the
// copied records travel in one more alltoallv, floats as the carrier of their bytes):
//
//   alltoall(send, recv)       int64 blocks of equal length n = send.size() / size(): block p of `send`
//                              goes to rank p, block q of `recv` came from rank q (MPI_Alltoall)
//   alltoallv(send, send_counts, send_displs, recv, recv_counts, recv_displs)
//                              floats; counts and displacements in floats, one per peer (MPI_Alltoallv).
//                              Counts and displacements fit int32 (the layer checks its plan for it)
//   allreduce_sum(values), allreduce_min(values)
//                              element-wise over ranks, in place (construction and statistics only)
//
// A rank that rejects its input must still take part in the next collective, or its peers wait
// forever; the layer therefore reports a per-rank status inside the counts exchange and every rank
// throws when any rank failed (dist/layer.hpp).

#include <algorithm>
#include <concepts>
#include <cstdint>
#include <span>
#include <string>

#include "smoe/core/error.hpp"

namespace smoe::inline v0::dist {

template <class C>
concept Communicator = requires(C& c, std::span<std::int64_t const> in64, std::span<std::int64_t> out64,
                                std::span<float const> fin, std::span<float> fout) {
    { c.rank() } -> std::convertible_to<int>;
    { c.size() } -> std::convertible_to<int>;
    c.alltoall(in64, out64);
    c.alltoallv(fin, in64, in64, fout, in64, in64);
    c.allreduce_sum(out64);
    c.allreduce_min(out64);
};

// One rank: every collective is a copy. Runs the sharded layer's code path in a single process
// (tests without MPI, engines that start unsharded).
class SelfCommunicator {
public:
    int rank() const { return 0; }
    int size() const { return 1; }

    void alltoall(std::span<std::int64_t const> send, std::span<std::int64_t> recv) {
        if (recv.size() != send.size())
            smoe::detail::fail("alltoall recv", "length " + std::to_string(recv.size()),
                               "the send length " + std::to_string(send.size()));
        std::copy(send.begin(), send.end(), recv.begin());
    }

    void alltoallv(std::span<float const> send, std::span<std::int64_t const> send_counts,
                   std::span<std::int64_t const> send_displs, std::span<float> recv,
                   std::span<std::int64_t const> recv_counts, std::span<std::int64_t const> recv_displs) {
        if (send_counts[0] != recv_counts[0])
            smoe::detail::fail("alltoallv recv_counts[0]", recv_counts[0], "the send count " + std::to_string(send_counts[0]));
        auto const n = static_cast<std::size_t>(send_counts[0]);
        std::copy_n(send.begin() + send_displs[0], n, recv.begin() + recv_displs[0]);
    }

    void allreduce_sum(std::span<std::int64_t>) {}
    void allreduce_min(std::span<std::int64_t>) {}
};

static_assert(Communicator<SelfCommunicator>);

}  // namespace smoe::inline v0::dist
