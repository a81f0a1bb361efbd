// smoe_dist_demo: a small model of MoE layers with its experts sharded over the MPI ranks. Every rank
// holds all routers and its own experts of every layer, takes a contiguous share of one global batch,
// and runs the layers in turn (x <- x + moe(x)). It prints each layer's load per rank and the
// imbalance between ranks, and a checksum of the whole output that is the same for any rank count
// (the sharded layer is bit-identical to one process for top-k routing).
//
//   mpiexec -n 2 build/release/bench/dist/smoe_dist_demo [--tokens 64] [--layers 4] [--experts 16]
//                                                        [--top-k 2] [--hidden 256] [--ffn 512]

#include <cstdint>
#include <cstdio>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "bench_data.hpp"
#include "smoe/dist/layer.hpp"
#include "smoe/dist/mpi_communicator.hpp"
#include "smoe/smoe.hpp"

namespace {

using Layer = smoe::dist::MoELayer<smoe::router::TopK, smoe::expert::SwiGLU<float>, smoe::balance::None,
                                   smoe::dist::MpiCommunicator>;

struct Options {
    std::int64_t tokens = 64, layers = 4, experts = 16, top_k = 2, hidden = 256, ffn = 512;
};

Options parse(int argc, char** argv) {
    Options o;
    for (int i = 1; i + 1 < argc; i += 2) {
        std::string const a = argv[i];
        std::int64_t const v = std::stoll(argv[i + 1]);
        if (a == "--tokens") o.tokens = v;
        else if (a == "--layers") o.layers = v;
        else if (a == "--experts") o.experts = v;
        else if (a == "--top-k") o.top_k = v;
        else if (a == "--hidden") o.hidden = v;
        else if (a == "--ffn") o.ffn = v;
        else throw std::invalid_argument("smoe_dist_demo: unknown argument " + a);
    }
    return o;
}

// One layer's tensors on this rank: the router gate and this rank's experts, drawn from per-layer
// streams so every rank count loads the same global model.
struct LayerTensors {
    std::unique_ptr<float[]> gate, w1, w3, w2;
};

LayerTensors load(Options const& o, smoe::dist::ExpertPlacement const& pl, int rank, std::int64_t layer) {
    std::uint64_t const key = 1000 * static_cast<std::uint64_t>(layer + 1);
    auto const fd = static_cast<std::size_t>(o.hidden * o.ffn);
    std::int64_t const L = pl.num_local(rank);
    LayerTensors t;
    t.gate = smoe_bench::stream(static_cast<std::size_t>(o.experts * o.hidden), key + smoe_bench::kKeyRouter, 0.5);
    t.w1.reset(new float[std::max<std::size_t>(1, L * fd)]);
    t.w3.reset(new float[std::max<std::size_t>(1, L * fd)]);
    t.w2.reset(new float[std::max<std::size_t>(1, L * fd)]);
    for (std::int64_t l = 0; l < L; ++l) {
        auto const e = static_cast<std::uint64_t>(pl.global_id(rank, l));
        smoe_bench::fill(t.w1.get() + l * fd, fd, e * fd, key + smoe_bench::kKeyW1, 0.05);
        smoe_bench::fill(t.w3.get() + l * fd, fd, e * fd, key + smoe_bench::kKeyW3, 0.05);
        smoe_bench::fill(t.w2.get() + l * fd, fd, e * fd, key + smoe_bench::kKeyW2, 0.05);
    }
    return t;
}

// Order-independent over tokens, specific to each token's index and bits: sums of per-row hashes.
std::uint64_t row_hash(std::int64_t token, float const* row, std::int64_t d) {
    std::uint64_t h = smoe_bench::mix64(static_cast<std::uint64_t>(token) + 0x9E3779B97F4A7C15ull);
    for (std::int64_t i = 0; i < d; ++i) {
        std::uint32_t bits;
        std::memcpy(&bits, row + i, sizeof bits);
        h = smoe_bench::mix64(h ^ bits);
    }
    return h;
}

}  // namespace

int main(int argc, char** argv) {
    MPI_Init(&argc, &argv);
    int status = 0;
    {
        smoe::dist::MpiCommunicator comm(MPI_COMM_WORLD);
        int const rank = comm.rank(), P = comm.size();
        try {
            Options const o = parse(argc, argv);
            auto const placement = smoe::dist::ExpertPlacement::contiguous(o.experts, P);
            std::int64_t const first = rank * o.tokens / P, T = (rank + 1) * o.tokens / P - first;
            std::int64_t const d = o.hidden;
            smoe::expert::SwiGLUConfig const ecfg{d, o.ffn, placement.num_local(rank)};

            std::vector<LayerTensors> tensors;
            std::vector<std::unique_ptr<Layer>> layers;
            for (std::int64_t l = 0; l < o.layers; ++l) {
                tensors.push_back(load(o, placement, rank, l));
                auto const& t = tensors.back();
                layers.push_back(std::make_unique<Layer>(
                    comm, placement,
                    Layer::Config{.router = {.num_experts = o.experts, .top_k = o.top_k, .norm_topk_prob = true},
                                  .expert = ecfg, .max_tokens = (o.tokens + P - 1) / P},
                    Layer::Weights{.gate = smoe::MatrixView<float const>(t.gate.get(), o.experts, d),
                                   .experts = smoe::expert::SwiGLUWeights<float>::dense(t.w1.get(), t.w3.get(), t.w2.get(), ecfg)}));
            }

            auto x = smoe_bench::stream(static_cast<std::size_t>(T * d), smoe_bench::kKeyX, 1.0, static_cast<std::uint64_t>(first * d));
            std::vector<float> y(static_cast<std::size_t>(T * d));
            if (rank == 0)
                std::printf("smoe_dist_demo: %d ranks, %lld tokens, %lld layers, E = %lld, k = %lld, d = %lld, f = %lld\n", P,
                            static_cast<long long>(o.tokens), static_cast<long long>(o.layers), static_cast<long long>(o.experts),
                            static_cast<long long>(o.top_k), static_cast<long long>(d), static_cast<long long>(o.ffn));
            for (std::int64_t l = 0; l < o.layers; ++l) {
                layers[static_cast<std::size_t>(l)]->forward(smoe::MatrixView<float const>(x.get(), T, d), smoe::MatrixView<float>(y.data(), T, d));
                for (std::size_t i = 0; i < y.size(); ++i) x[i] += y[i];
                auto const g = layers[static_cast<std::size_t>(l)]->global_stats();
                if (rank == 0) {
                    std::printf("layer %lld: rows per rank", static_cast<long long>(l));
                    for (auto v : g.rank_load) std::printf(" %lld", static_cast<long long>(v));
                    std::printf(" | rank max/mean %.3f | expert max/mean %.3f, dead experts %lld\n", g.rank_imbalance(),
                                g.global.max_over_mean(), static_cast<long long>(g.global.dead_experts()));
                }
            }
            std::uint64_t sum = 0;
            for (std::int64_t t = 0; t < T; ++t) sum += row_hash(first + t, x.get() + t * d, d);
            MPI_Allreduce(MPI_IN_PLACE, &sum, 1, MPI_UINT64_T, MPI_SUM, comm.comm());
            if (rank == 0) std::printf("output checksum %016llx (the same for every rank count)\n", static_cast<unsigned long long>(sum));
        } catch (std::exception const& e) {
            std::fprintf(stderr, "rank %d: %s\n", rank, e.what());
            status = 1;
        }
    }
    MPI_Finalize();
    return status;
}
