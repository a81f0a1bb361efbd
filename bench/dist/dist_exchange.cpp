// smoe_dist_bench: one sharded MoE layer (top-k, SwiGLU fp32, experts in contiguous blocks) per
// shape of shared/perf.md, timed phase by phase: the all-to-all exchanges against the expert compute.
//
//   mpiexec -n 2 build/release/bench/dist/smoe_dist_bench [--tokens 1,32,512] [--shapes mixtral,olmoe]
//                                                         [--f-div 4] [--reps 5] [--no-sync]
//
// --f-div divides every shape's intermediate size f (the weights must fit the machine): the exchanged
// bytes depend on d only, the expert time on d·f, so the expert column scales by f-div to the full
// shape. Each phase is the slowest rank's in each forward, then the minimum over forwards. A plain timed
// loop, not Google Benchmark: its adaptive iteration counts would differ between ranks, and every
// forward is a collective.

#include <algorithm>
#include <array>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <limits>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "bench_data.hpp"
#include "smoe/dist/layer.hpp"
#include "smoe/dist/mpi_communicator.hpp"
#include "smoe/smoe.hpp"
#include "timing_communicator.hpp"

namespace {

using Timing = smoe_bench::TimingCommunicator<smoe::dist::MpiCommunicator>;
using Layer = smoe::dist::MoELayer<smoe::router::TopK, smoe::expert::SwiGLU<float>, smoe::balance::None, Timing>;

struct Options {
    std::vector<std::int64_t> tokens{1, 32, 512};
    std::vector<std::string> shapes{"mixtral", "olmoe", "qwen2moe", "deepseek-v2-lite"};
    std::int64_t f_div = 4;
    int reps = 5;
    bool sync = true;
};

std::vector<std::string> split(std::string const& s) {
    std::vector<std::string> out;
    std::stringstream in(s);
    for (std::string item; std::getline(in, item, ',');) out.push_back(item);
    return out;
}

Options parse(int argc, char** argv) {
    Options o;
    for (int i = 1; i < argc; ++i) {
        std::string const a = argv[i];
        auto next = [&]() -> std::string { return i + 1 < argc ? argv[++i] : ""; };
        if (a == "--tokens") {
            o.tokens.clear();
            for (auto const& t : split(next())) o.tokens.push_back(std::stoll(t));
        } else if (a == "--shapes") {
            o.shapes = split(next());
        } else if (a == "--f-div") {
            o.f_div = std::stoll(next());
        } else if (a == "--reps") {
            o.reps = std::stoi(next());
        } else if (a == "--no-sync") {
            o.sync = false;
        } else {
            throw std::invalid_argument("smoe_dist_bench: unknown argument " + a);
        }
    }
    return o;
}

// Phase times of one forward, seconds.
enum Phase { kTotal, kRoutePack, kCounts, kWaitDispatch, kDispatch, kExperts, kWaitReturn, kReturn, kCombine, kPhases };
using Phases = std::array<double, kPhases>;

Phases phases_of(std::vector<Timing::Event> const& ev, double t0, double t1) {
    using Op = Timing::Op;
    std::vector<Timing::Event> v2, bar;
    Timing::Event counts{};
    for (auto const& e : ev) {
        if (e.op == Op::alltoall) counts = e;
        if (e.op == Op::alltoallv) v2.push_back(e);
        if (e.op == Op::barrier) bar.push_back(e);
    }
    Phases p{};
    p[kTotal] = t1 - t0;
    p[kRoutePack] = counts.start - t0;
    p[kCounts] = counts.end - counts.start;
    p[kDispatch] = v2.at(0).end - v2.at(0).start;
    p[kReturn] = v2.at(1).end - v2.at(1).start;
    p[kWaitDispatch] = bar.empty() ? 0 : bar.at(0).end - bar.at(0).start;
    p[kWaitReturn] = bar.empty() ? 0 : bar.at(1).end - bar.at(1).start;
    p[kExperts] = (bar.empty() ? v2.at(1).start : bar.at(1).start) - v2.at(0).end;
    p[kCombine] = t1 - v2.at(1).end;
    return p;
}

void run_shape(smoe::dist::MpiCommunicator& mpi, Options const& o, smoe_bench::Shape s) {
    int const rank = mpi.rank(), P = mpi.size();
    s.f /= o.f_div;
    auto const placement = smoe::dist::ExpertPlacement::contiguous(s.E, P);
    std::int64_t const L = placement.num_local(rank);
    auto const fd = static_cast<std::size_t>(s.f * s.d);
    // This rank's experts, each the slice of the global stream its global id names.
    std::unique_ptr<float[]> w1(new float[std::max<std::size_t>(1, L * fd)]), w3(new float[std::max<std::size_t>(1, L * fd)]),
        w2(new float[std::max<std::size_t>(1, L * fd)]);
    for (std::int64_t l = 0; l < L; ++l) {
        auto const e = static_cast<std::uint64_t>(placement.global_id(rank, l));
        smoe_bench::fill(w1.get() + l * fd, fd, e * fd, smoe_bench::kKeyW1, smoe_bench::kWeightSd);
        smoe_bench::fill(w3.get() + l * fd, fd, e * fd, smoe_bench::kKeyW3, smoe_bench::kWeightSd);
        smoe_bench::fill(w2.get() + l * fd, fd, e * fd, smoe_bench::kKeyW2, smoe_bench::kWeightSd);
    }
    auto const gate = smoe_bench::stream(static_cast<std::size_t>(s.E * s.d), smoe_bench::kKeyRouter, smoe_bench::kWeightSd);
    std::int64_t const Tmax = *std::max_element(o.tokens.begin(), o.tokens.end());
    smoe::expert::SwiGLUConfig const ecfg{s.d, s.f, L};
    Timing comm(mpi, o.sync);
    Layer layer(comm, placement,
                {.router = {.num_experts = s.E, .top_k = s.k, .norm_topk_prob = true}, .expert = ecfg, .max_tokens = Tmax},
                {.gate = smoe::MatrixView<float const>(gate.get(), s.E, s.d),
                 .experts = smoe::expert::SwiGLUWeights<float>::dense(w1.get(), w3.get(), w2.get(), ecfg)});

    std::size_t ws = layer.workspace_size();
    MPI_Allreduce(MPI_IN_PLACE, &ws, 1, MPI_UINT64_T, MPI_MAX, mpi.comm());
    if (rank == 0)
        std::printf("# %s at d = %lld, f = %lld, E = %lld, k = %lld: workspace %.1f MB per rank (max_tokens %lld), experts %.0f MB per rank\n",
                    s.name, static_cast<long long>(s.d), static_cast<long long>(s.f), static_cast<long long>(s.E),
                    static_cast<long long>(s.k), double(ws) / 1e6, static_cast<long long>(Tmax), 3.0 * double(L * fd) * 4 / 1e6);
    for (std::int64_t T : o.tokens) {
        auto const x = smoe_bench::stream(static_cast<std::size_t>(T * s.d), smoe_bench::kKeyX, smoe_bench::kInputSd,
                                          static_cast<std::uint64_t>(rank * T * s.d));
        std::vector<float> y(static_cast<std::size_t>(T * s.d));
        smoe::MatrixView<float const> const xv(x.get(), T, s.d);
        smoe::MatrixView<float> const yv(y.data(), T, s.d);
        layer.forward(xv, yv);  // warm-up
        // Per forward, each phase of the slowest rank (the one its peers wait for); then the minimum of
        // that over the timed forwards, against the noise of a shared machine.
        Phases worst;
        worst.fill(std::numeric_limits<double>::infinity());
        int const reps = T >= 512 ? std::min(o.reps, 3) : o.reps;  // a T = 512 forward takes seconds
        for (int r = 0; r < reps; ++r) {
            comm.barrier();
            comm.clear();
            double const t0 = Timing::now();
            layer.forward(xv, yv);
            double const t1 = Timing::now();
            Phases p = phases_of(comm.events(), t0, t1);
            MPI_Allreduce(MPI_IN_PLACE, p.data(), kPhases, MPI_DOUBLE, MPI_MAX, mpi.comm());
            for (int i = 0; i < kPhases; ++i) worst[i] = std::min(worst[i], p[i]);
        }
        std::int64_t sums[2] = {layer.rows_sent_remote(), layer.rows_computed()};
        MPI_Allreduce(MPI_IN_PLACE, sums, 2, MPI_INT64_T, MPI_SUM, mpi.comm());
        auto const g = layer.global_stats();
        if (rank != 0) continue;
        double const ms = 1e3;
        double const a2a = worst[kCounts] + worst[kDispatch] + worst[kReturn];
        // Bytes that cross between ranks, both directions, per rank on average.
        double const mb = 2.0 * double(sums[0]) * double(s.d + 1) * 4.0 / P / 1e6;
        double const gflops = double(sums[1]) / P * 6.0 * double(s.d) * double(s.f) / worst[kExperts] / 1e9;
        std::printf("%-17s %4lld | %9.3f | %8.3f %8.3f %8.3f %8.3f | %9.3f %7.1f | %8.3f %8.3f %8.3f | %7.3f %6.2f | %5.2f\n", s.name,
                    static_cast<long long>(T), worst[kTotal] * ms, worst[kRoutePack] * ms, worst[kCounts] * ms,
                    worst[kDispatch] * ms, worst[kReturn] * ms, worst[kExperts] * ms, gflops, a2a * ms,
                    (worst[kWaitDispatch] + worst[kWaitReturn]) * ms, worst[kCombine] * ms, mb,
                    a2a > 0 ? mb / 1e3 / a2a : 0.0, g.rank_imbalance());
        std::fflush(stdout);
    }
}

}  // namespace

int main(int argc, char** argv) {
    MPI_Init(&argc, &argv);
    int status = 0;
    {
        smoe::dist::MpiCommunicator mpi(MPI_COMM_WORLD);
        try {
            Options const o = parse(argc, argv);
            if (mpi.rank() == 0) {
                std::printf("smoe_dist_bench: %d ranks, f divided by %lld, per phase the slowest rank, min over %d forwards (3 at T >= 512), ms%s\n",
                            mpi.size(), static_cast<long long>(o.f_div), o.reps,
                            o.sync ? "; a barrier before each alltoallv separates waiting from transfer" : "");
                std::printf("%-17s %4s | %9s | %8s %8s %8s %8s | %9s %7s | %8s %8s %8s | %7s %6s | %5s\n", "shape", "T/rk",
                            "forward", "route", "counts", "dispatch", "return", "experts", "GFLOP/s", "a2a", "wait", "combine",
                            "MB/rank", "GB/s", "imbal");
            }
            for (auto const& name : o.shapes) run_shape(mpi, o, smoe_bench::shape(name));
        } catch (std::exception const& e) {
            std::fprintf(stderr, "rank %d: %s\n", mpi.rank(), e.what());
            status = 1;
        }
    }
    MPI_Finalize();
    return status;
}
