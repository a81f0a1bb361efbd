// The research compositions of issue 18 (research.md §1-§3) against plain top-k at the same shapes
// (bench_data.hpp's olmoe and qwen2moe, T = 1 and 128), one thread, fp32 SwiGLU experts for every
// design (SMEAR's merge reads fp32 panels with its SIMD loop), the layer called again and again (hot;
// at these sizes the experts a call touches do not fit the last-level cache anyway):
//
//   BM_research_layers/<shape>/topk/T:…       MoELayer<TopK, SwiGLU<float>>: softmax top-k (olmoe k 8,
//                                             qwen2moe k 4), no renormalisation (the baseline)
//   BM_research_layers/<shape>/chain/T:…      layer::Chain, C = 2 passes of k/2 (the paper's setting:
//                                             as many expert evaluations as top-k), inner residual
//   BM_research_layers/<shape>/rmoe/T:…       layer::Recurrent, p = 256 (the code's default), GRU, top-k,
//                                             a non-zero state (a later MoE layer: all six GRU GEMMs)
//   BM_research_layers/<shape>/smear_seq/T:…  layer::SoftMerge, one sequence of T tokens: one merge
//   BM_research_layers/<shape>/smear_tok/T:…  layer::SoftMerge, scope token: T merges
//
// Counters: time_per_token, and expert_GFLOP (the experts' multiply-adds × 2 that the design implies:
// k·6fd per token for top-k, chain and rmoe; E·6fd per merge plus 6fd per token for SMEAR).
//
//   cmake --build build/release --target smoe_bench
//   build/release/bench/smoe_bench --benchmark_filter=BM_research_layers

#include <cstdint>
#include <cmath>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include <benchmark/benchmark.h>
#include <smoe/layer/chain.hpp>
#include <smoe/layer/recurrent.hpp>
#include <smoe/layer/soft_merge.hpp>
#include <smoe/smoe.hpp>

#include "bench_data.hpp"

namespace {

using smoe::MatrixView;
using smoe_bench::Shape;
using Swi = smoe::expert::SwiGLU<float>;

enum Design : int { kTopK, kChain, kRmoe, kSmearSeq, kSmearTok };
char const* const kDesignNames[] = {"topk", "chain", "rmoe", "smear_seq", "smear_tok"};
constexpr std::int64_t kMaxT = 128, kRnnHidden = 256;
constexpr std::uint64_t kKeyGate2 = 5, kKeyCell = 6, kKeyP = 7, kKeyQ = 8;

// Everything one (shape, design) needs, built once for both T (packing an fp32 layer takes seconds and
// about 2 GB; the previous one is released first).
struct Model {
    std::string key;
    std::unique_ptr<float[]> w1, w3, w2, gate, gate2, cell, P, Q;
    std::unique_ptr<smoe::MoELayer<smoe::router::TopK, Swi, smoe::balance::None>> topk;
    std::unique_ptr<smoe::layer::Chain<smoe::router::TopK, Swi, smoe::balance::None>> chain;
    std::unique_ptr<smoe::gate::RecurrentCell> rnn_cell;
    std::unique_ptr<smoe::layer::Recurrent<smoe::router::TopK, Swi, smoe::balance::None>> rmoe;
    std::unique_ptr<smoe::layer::SoftMerge<Swi>> smear;
};

Model& model_for(Shape const& s, Design design) {
    static Model m;
    std::string const want = std::string(s.name) + "/" + kDesignNames[design];
    if (m.key == want) return m;
    m = Model{};
    std::int64_t const d = s.d, f = s.f, E = s.E, p = kRnnHidden;
    auto const n = std::size_t(E * f * d);
    m.w1 = smoe_bench::stream(n, smoe_bench::kKeyW1, smoe_bench::kWeightSd);
    m.w3 = smoe_bench::stream(n, smoe_bench::kKeyW3, smoe_bench::kWeightSd);
    m.w2 = smoe_bench::stream(n, smoe_bench::kKeyW2, smoe_bench::kWeightSd);
    m.gate = smoe_bench::stream(std::size_t(E * d), smoe_bench::kKeyRouter, smoe_bench::kWeightSd);
    smoe::expert::SwiGLUConfig const ec{d, f, E};
    auto const experts = smoe::expert::SwiGLUWeights<float>::dense(m.w1.get(), m.w3.get(), m.w2.get(), ec);
    MatrixView<float const> const gate(m.gate.get(), E, d);
    switch (design) {
        case kTopK:
            m.topk = std::make_unique<smoe::MoELayer<smoe::router::TopK, Swi, smoe::balance::None>>(
                smoe::MoEConfig<smoe::router::TopK, Swi, smoe::balance::None>{.router = {.num_experts = E, .top_k = s.k}, .expert = ec, .max_tokens = kMaxT},
                smoe::MoEWeights<Swi>{.gate = gate, .experts = experts});
            break;
        case kChain: {
            m.gate2 = smoe_bench::stream(std::size_t(E * d), kKeyGate2, smoe_bench::kWeightSd);
            std::vector<MatrixView<float const>> const gates{gate, MatrixView<float const>(m.gate2.get(), E, d)};
            m.chain = std::make_unique<smoe::layer::Chain<smoe::router::TopK, Swi, smoe::balance::None>>(
                smoe::layer::Chain<smoe::router::TopK, Swi, smoe::balance::None>::Config{
                    .router = {.num_experts = E, .top_k = s.k / 2}, .expert = ec, .num_iterations = 2, .max_tokens = kMaxT},
                smoe::layer::Chain<smoe::router::TopK, Swi, smoe::balance::None>::Weights{.gates = gates, .experts = experts});
            break;
        }
        case kRmoe: {
            double const sd = 1.0 / std::sqrt(double(p));
            m.cell = smoe_bench::stream(std::size_t(6 * p * p + 6 * p), kKeyCell, sd);
            m.P = smoe_bench::stream(std::size_t(p * d), kKeyP, 1.0 / std::sqrt(double(d)));
            m.Q = smoe_bench::stream(std::size_t(E * p), kKeyQ, sd);
            float const* c = m.cell.get();
            auto mat = [&](int i) { return MatrixView<float const>(c + i * p * p, p, p); };
            auto vec = [&](int i) { return std::span<float const>(c + 6 * p * p + i * p, std::size_t(p)); };
            m.rnn_cell = std::make_unique<smoe::gate::RecurrentCell>(
                smoe::gate::RecurrentCellConfig{.hidden_size = p},
                smoe::gate::RecurrentCellWeights{mat(0), mat(1), mat(2), mat(3), mat(4), mat(5), vec(0), vec(1), vec(2), vec(3), vec(4), vec(5)});
            m.rmoe = std::make_unique<smoe::layer::Recurrent<smoe::router::TopK, Swi, smoe::balance::None>>(
                smoe::layer::Recurrent<smoe::router::TopK, Swi, smoe::balance::None>::Config{
                    .router = {.num_experts = E, .top_k = s.k}, .expert = ec, .max_tokens = kMaxT},
                *m.rnn_cell,
                smoe::layer::Recurrent<smoe::router::TopK, Swi, smoe::balance::None>::Weights{
                    .gate = {MatrixView<float const>(m.P.get(), p, d), MatrixView<float const>(m.Q.get(), E, p)}, .experts = experts});
            break;
        }
        case kSmearSeq:
        case kSmearTok:
            m.smear = std::make_unique<smoe::layer::SoftMerge<Swi>>(
                smoe::layer::SoftMerge<Swi>::Config{
                    .expert = ec, .scope = design == kSmearSeq ? smoe::layer::MergeScope::sequence : smoe::layer::MergeScope::token, .max_tokens = kMaxT},
                smoe::layer::SoftMerge<Swi>::Weights{.gate = gate, .experts = experts});
            break;
    }
    // The experts are packed: the source streams are no longer read.
    m.w1.reset(), m.w3.reset(), m.w2.reset();
    m.key = want;
    return m;
}

void BM_research_layers(benchmark::State& state, Shape s, Design design) {
    std::int64_t const T = state.range(0), d = s.d;
    Model& m = model_for(s, design);
    auto const x = smoe_bench::stream(std::size_t(T * d), smoe_bench::kKeyX, smoe_bench::kInputSd);
    std::vector<float> y(std::size_t(T * d));
    MatrixView<float const> const xv(x.get(), T, d);
    MatrixView<float> const yv(y.data(), T, d);
    std::vector<std::int32_t> const offsets{0, std::int32_t(T)};
    std::optional<smoe::gate::RouterState> rstate;
    if (design == kRmoe) {  // a later MoE layer: the state comes from the previous one (here: the same layer once)
        rstate.emplace(kMaxT, *m.rnn_cell);
        rstate->reset(T);
        m.rmoe->forward(xv, yv, *rstate);
    }
    for (auto _ : state) {
        switch (design) {
            case kTopK: m.topk->forward(xv, yv); break;
            case kChain: m.chain->forward(xv, yv); break;
            case kRmoe: m.rmoe->forward(xv, yv, *rstate); break;
            case kSmearSeq: m.smear->forward(xv, yv, {.sequence_offsets = offsets}); break;
            case kSmearTok: m.smear->forward(xv, yv); break;
        }
        benchmark::ClobberMemory();
    }
    double const per_expert_row = 6.0 * double(s.d) * double(s.f);
    double const merges = design == kSmearSeq ? 1.0 : design == kSmearTok ? double(T) : 0.0;
    double const flops = design >= kSmearSeq ? merges * double(s.E) * per_expert_row + double(T) * per_expert_row
                                             : double(T) * double(s.k) * per_expert_row;
    state.counters["expert_GFLOP"] = benchmark::Counter(flops * 1e-9 * double(state.iterations()), benchmark::Counter::kIsRate);
    state.counters["time_per_token"] =
        benchmark::Counter(double(T) * double(state.iterations()), benchmark::Counter::kIsRate | benchmark::Counter::kInvert);
}

[[maybe_unused]] bool const registered = [] {
    for (char const* name : {"olmoe", "qwen2moe"}) {
        Shape const s = smoe_bench::shape(name);
        for (int dz = kTopK; dz <= kSmearTok; ++dz) {
            auto* b = benchmark::RegisterBenchmark((std::string("BM_research_layers/") + name + "/" + kDesignNames[dz]).c_str(),
                                                   BM_research_layers, s, Design(dz))
                          ->ArgName("T")
                          ->Arg(1)
                          ->Arg(128)
                          ->UseRealTime()
                          ->Unit(benchmark::kMillisecond);
            if (dz == kSmearTok) b->Iterations(2);  // T = 128 is 128 merges of every expert: seconds per call
        }
    }
    return true;
}();

}  // namespace
