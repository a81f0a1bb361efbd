#pragma once
// smoe::dist::MpiCommunicator: the Communicator concept (dist/communicator.hpp) over an MPI
// communicator. The only smoe header that includes <mpi.h>; link MPI::MPI_CXX (or smoe::mpi).
//
//   MPI_Init(&argc, &argv);
//   {
//       smoe::dist::MpiCommunicator comm(MPI_COMM_WORLD);   // collective: duplicates the communicator
//       ... smoe::dist::MoELayer<..., smoe::dist::MpiCommunicator> layer(comm, placement, cfg, weights);
//   }                                                        // destroy before MPI_Finalize
//   MPI_Finalize();
//
// The layer's traffic runs on a duplicate of the engine's communicator, so its collectives can never
// match an engine's own operations on the same communicator. MPI errors follow the communicator's
// error handler (MPI_ERRORS_ARE_FATAL by default: the job aborts rather than hangs).

// The C API only: Open MPI's and MPICH's deprecated C++ bindings (removed in MPI-3) would otherwise come
// with <mpi.h>, and with them -Wcast-function-type warnings and an extra library.
#ifndef OMPI_SKIP_MPICXX
#define OMPI_SKIP_MPICXX 1
#endif
#ifndef MPICH_SKIP_MPICXX
#define MPICH_SKIP_MPICXX 1
#endif
#include <mpi.h>

#include <climits>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "smoe/core/error.hpp"
#include "smoe/dist/communicator.hpp"

namespace smoe::inline v0::dist {

class MpiCommunicator {
public:
    // Collective over `comm`; MPI must be initialised.
    explicit MpiCommunicator(MPI_Comm comm = MPI_COMM_WORLD) {
        int initialised = 0;
        MPI_Initialized(&initialised);
        if (!initialised) smoe::detail::fail("MPI", "not initialised", "MPI_Init before constructing an MpiCommunicator");
        MPI_Comm_dup(comm, &comm_);
        MPI_Comm_rank(comm_, &rank_);
        MPI_Comm_size(comm_, &size_);
        ints_.resize(4 * static_cast<std::size_t>(size_));
    }
    MpiCommunicator(MpiCommunicator&& o) noexcept
        : comm_(o.comm_), rank_(o.rank_), size_(o.size_), ints_(std::move(o.ints_)) {
        o.comm_ = MPI_COMM_NULL;
    }
    MpiCommunicator& operator=(MpiCommunicator&&) = delete;
    MpiCommunicator(MpiCommunicator const&) = delete;
    MpiCommunicator& operator=(MpiCommunicator const&) = delete;
    ~MpiCommunicator() {
        int finalised = 0;
        MPI_Finalized(&finalised);
        if (comm_ != MPI_COMM_NULL && !finalised) MPI_Comm_free(&comm_);
    }

    int rank() const { return rank_; }
    int size() const { return size_; }
    MPI_Comm comm() const { return comm_; }

    void alltoall(std::span<std::int64_t const> send, std::span<std::int64_t> recv) {
        auto const P = static_cast<std::size_t>(size_);
        if (send.size() % P != 0 || recv.size() != send.size())
            smoe::detail::fail("alltoall", "lengths " + std::to_string(send.size()) + " / " + std::to_string(recv.size()),
                               "equal lengths, a multiple of the communicator size " + std::to_string(size_));
        int const n = to_int(static_cast<std::int64_t>(send.size() / P), "alltoall block");
        MPI_Alltoall(send.data(), n, MPI_INT64_T, recv.data(), n, MPI_INT64_T, comm_);
    }

    void alltoallv(std::span<float const> send, std::span<std::int64_t const> send_counts,
                   std::span<std::int64_t const> send_displs, std::span<float> recv,
                   std::span<std::int64_t const> recv_counts, std::span<std::int64_t const> recv_displs) {
        auto const P = static_cast<std::size_t>(size_);
        int* sc = ints_.data();
        int* sd = sc + P;
        int* rc = sd + P;
        int* rd = rc + P;
        for (std::size_t p = 0; p < P; ++p) {
            sc[p] = to_int(send_counts[p], "alltoallv send count");
            sd[p] = to_int(send_displs[p], "alltoallv send displacement");
            rc[p] = to_int(recv_counts[p], "alltoallv receive count");
            rd[p] = to_int(recv_displs[p], "alltoallv receive displacement");
        }
        MPI_Alltoallv(send.data(), sc, sd, MPI_FLOAT, recv.data(), rc, rd, MPI_FLOAT, comm_);
    }

    void allreduce_sum(std::span<std::int64_t> values) { allreduce(values, MPI_SUM); }
    void allreduce_min(std::span<std::int64_t> values) { allreduce(values, MPI_MIN); }

private:
    void allreduce(std::span<std::int64_t> values, MPI_Op op) {
        MPI_Allreduce(MPI_IN_PLACE, values.data(), to_int(static_cast<std::int64_t>(values.size()), "allreduce length"),
                      MPI_INT64_T, op, comm_);
    }

    // MPI-3 counts are int; the layer sizes its plan so that its counts fit.
    static int to_int(std::int64_t v, char const* what) {
        if (v < 0 || v > INT_MAX) smoe::detail::fail(what, v, "a count in [0, 2^31 - 1] (MPI-3 counts are int)");
        return static_cast<int>(v);
    }

    MPI_Comm comm_ = MPI_COMM_NULL;
    int rank_ = 0, size_ = 1;
    std::vector<int> ints_;  // the four int arrays MPI_Alltoallv takes, allocated once
};

static_assert(Communicator<MpiCommunicator>);

}  // namespace smoe::inline v0::dist
