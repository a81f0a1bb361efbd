// smoe_dist_bench: one sharded MoE layer (top-k, SwiGLU fp32, experts in contiguous blocks) per
// shape of shared/perf.md, timed phase by phase: the all-to-all exchanges against the expert compute.
//
//   mpiexec -n 2 build/release/bench/dist/smoe_dist_bench [--tokens 1,32,512] [--shapes mixtral,olmoe]
//                                                         [--f-div 4] [--reps 5] [--no-sync]
//                                                         [--skew 100] [--balancers none,llep]
//                                                         [--llep-alpha 1.1] [--llep-min 1024]
//
// --skew b adds b to the selection bias of experts 0 .. k-1 (all on rank 0): b = 100 sends every
// token there, the imbalance LLEP (balance::LeastLoaded, research.md §6) is for. --balancers runs each
// shape and T with each balancer in turn on the same ranks (an A/B on one warm machine); llep rows add
// the record exchange ("records": expert copies sent to helper ranks), the rows spilled and the copies.
// "exp cpu" is the slowest rank's thread CPU time in its experts phase (no collective inside, so MPI's
// busy waiting does not count): the straggler compute that LLEP evens out.
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
#include <type_traits>
#include <vector>

#include "bench_data.hpp"
#include "smoe/dist/layer.hpp"
#include "smoe/dist/mpi_communicator.hpp"
#include "smoe/smoe.hpp"
#include "timing_communicator.hpp"

namespace {

using Timing = smoe_bench::TimingCommunicator<smoe::dist::MpiCommunicator>;
template <class Balancer>
using Layer = smoe::dist::MoELayer<smoe::router::TopK, smoe::expert::SwiGLU<float>, Balancer, Timing>;

struct Options {
    std::vector<std::int64_t> tokens{1, 32, 512};
    std::vector<std::string> shapes{"mixtral", "olmoe", "qwen2moe", "deepseek-v2-lite"};
    std::int64_t f_div = 4;
    int reps = 5;
    bool sync = true;
    double skew = 0.0;
    std::vector<std::string> balancers{"none"};
    double llep_alpha = 1.1;
    std::int64_t llep_min = 1024;
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
        } else if (a == "--skew") {
            o.skew = std::stod(next());
        } else if (a == "--balancers") {
            o.balancers = split(next());
            for (auto const& b : o.balancers)
                if (b != "none" && b != "llep") throw std::invalid_argument("smoe_dist_bench: --balancers takes none and llep, not " + b);
        } else if (a == "--llep-alpha") {
            o.llep_alpha = std::stod(next());
        } else if (a == "--llep-min") {
            o.llep_min = std::stoll(next());
        } else {
            throw std::invalid_argument("smoe_dist_bench: unknown argument " + a);
        }
    }
    return o;
}

// Phase times of one forward, seconds.
enum Phase { kTotal, kRoutePack, kCounts, kWaitDispatch, kDispatch, kExperts, kWaitReturn, kReturn, kCombine, kRecords, kExpertsCpu, kPhases };
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
    // The last two alltoallv are the rows and their return; LLEP may send expert records before them.
    std::size_t const n = v2.size(), nb = bar.size();
    p[kTotal] = t1 - t0;
    p[kRoutePack] = counts.start - t0;
    p[kCounts] = counts.end - counts.start;
    p[kRecords] = n == 3 ? v2.at(0).end - v2.at(0).start : 0;
    p[kDispatch] = v2.at(n - 2).end - v2.at(n - 2).start;
    p[kReturn] = v2.at(n - 1).end - v2.at(n - 1).start;
    p[kWaitDispatch] = nb == 0 ? 0 : bar.at(nb - 2).end - bar.at(nb - 2).start;
    p[kWaitReturn] = nb == 0 ? 0 : bar.at(nb - 1).end - bar.at(nb - 1).start;
    auto const& before_return = nb == 0 ? v2.at(n - 1) : bar.at(nb - 1);
    p[kExperts] = before_return.start - v2.at(n - 2).end;
    p[kExpertsCpu] = before_return.cpu_start - v2.at(n - 2).cpu_end;
    p[kCombine] = t1 - v2.at(n - 1).end;
    return p;
}

template <class Balancer>
void run_layer(smoe::dist::MpiCommunicator& mpi, Options const& o, smoe_bench::Shape const& s, smoe::dist::ExpertPlacement const& placement,
               smoe::expert::SwiGLUConfig const& ecfg, smoe::expert::SwiGLUWeights<float> const& ew, float const* gate, char const* tag);

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
    smoe::expert::SwiGLUConfig const ecfg{s.d, s.f, L};
    auto const ew = smoe::expert::SwiGLUWeights<float>::dense(w1.get(), w3.get(), w2.get(), ecfg);
    for (auto const& b : o.balancers) {
        if (b == "llep")
            run_layer<smoe::balance::LeastLoaded>(mpi, o, s, placement, ecfg, ew, gate.get(), "llep");
        else
            run_layer<smoe::balance::None>(mpi, o, s, placement, ecfg, ew, gate.get(), "none");
    }
}

template <class Balancer>
void run_layer(smoe::dist::MpiCommunicator& mpi, Options const& o, smoe_bench::Shape const& s, smoe::dist::ExpertPlacement const& placement,
               smoe::expert::SwiGLUConfig const& ecfg, smoe::expert::SwiGLUWeights<float> const& ew, float const* gate, char const* tag) {
    int const rank = mpi.rank(), P = mpi.size();
    std::int64_t const L = placement.num_local(rank);
    auto const fd = static_cast<std::size_t>(s.f * s.d);
    std::int64_t const Tmax = *std::max_element(o.tokens.begin(), o.tokens.end());
    // --skew: experts 0 .. k-1 first for every token when the bias dominates the logits.
    std::vector<float> bias;
    if (o.skew != 0.0) {
        bias.assign(static_cast<std::size_t>(s.E), 0.0f);
        for (std::int64_t e = 0; e < s.k; ++e) bias[static_cast<std::size_t>(e)] = static_cast<float>(o.skew);
    }
    typename Balancer::Config bc{};
    if constexpr (std::is_same_v<Balancer, smoe::balance::LeastLoaded>)
        bc = {.num_experts = s.E, .num_workers = P, .max_tokens_factor = o.llep_alpha, .min_tokens_per_gemm = o.llep_min};
    Timing comm(mpi, o.sync);
    Layer<Balancer> layer(comm, placement,
                          {.router = {.num_experts = s.E, .top_k = s.k, .norm_topk_prob = true}, .expert = ecfg, .balance = bc, .max_tokens = Tmax},
                          {.gate = smoe::MatrixView<float const>(gate, s.E, s.d), .expert_bias = bias, .experts = ew});

    std::size_t ws = layer.workspace_size();
    MPI_Allreduce(MPI_IN_PLACE, &ws, 1, MPI_UINT64_T, MPI_MAX, mpi.comm());
    if (rank == 0)
        std::printf("# %s at d = %lld, f = %lld, E = %lld, k = %lld, skew %g, %s: workspace %.1f MB per rank (max_tokens %lld), experts %.0f MB per rank\n",
                    s.name, static_cast<long long>(s.d), static_cast<long long>(s.f), static_cast<long long>(s.E),
                    static_cast<long long>(s.k), o.skew, tag, double(ws) / 1e6, static_cast<long long>(Tmax), 3.0 * double(L * fd) * 4 / 1e6);
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
        std::int64_t spilled = 0, copies = 0;
        if constexpr (std::is_same_v<Balancer, smoe::balance::LeastLoaded>) {
            spilled = layer.balancer().llep_stats().spilled_rows;
            copies = layer.balancer().llep_stats().weight_copies;
        }
        if (rank != 0) continue;
        double const ms = 1e3;
        double const a2a = worst[kCounts] + worst[kRecords] + worst[kDispatch] + worst[kReturn];
        // Bytes that cross between ranks, both directions, per rank on average.
        double const mb = 2.0 * double(sums[0]) * double(s.d + 1) * 4.0 / P / 1e6;
        double const gflops = double(sums[1]) / P * 6.0 * double(s.d) * double(s.f) / worst[kExperts] / 1e9;
        std::printf("%-17s %-4s %4lld | %9.3f | %8.3f %8.3f %8.3f %8.3f %8.3f | %9.3f %9.3f %7.1f | %8.3f %8.3f %8.3f | %7.3f %6.2f | %5.2f %7lld %6lld\n",
                    s.name, tag, static_cast<long long>(T), worst[kTotal] * ms, worst[kRoutePack] * ms, worst[kCounts] * ms,
                    worst[kRecords] * ms, worst[kDispatch] * ms, worst[kReturn] * ms, worst[kExperts] * ms, worst[kExpertsCpu] * ms, gflops,
                    a2a * ms, (worst[kWaitDispatch] + worst[kWaitReturn]) * ms, worst[kCombine] * ms, mb, a2a > 0 ? mb / 1e3 / a2a : 0.0,
                    g.rank_imbalance(), static_cast<long long>(spilled), static_cast<long long>(copies));
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
                std::printf("%-17s %-4s %4s | %9s | %8s %8s %8s %8s %8s | %9s %9s %7s | %8s %8s %8s | %7s %6s | %5s %7s %6s\n", "shape", "bal",
                            "T/rk", "forward", "route", "counts", "records", "dispatch", "return", "experts", "exp cpu", "GFLOP/s", "a2a",
                            "wait", "combine", "MB/rank", "GB/s", "imbal", "spilled", "copies");
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
