// Expert stores on a controlled routing (issue 17 item 6): decode steps of one token through L layers
// of int8 SwiGLU experts read from a packed file, for each store (resident, mapped, cached with LRU or
// LFU) x budget (10, 25, 50 % of the expert bytes) x prefetch (off; on: the next step's routing handed
// to prefetch() one step ahead, the Read-ME upper bound a perfect predictor reaches).
//
// The routing is generated, not learned: random weights have no locality of their own. Each token
// picks k experts; with probability `reuse` an expert of the previous token (temporal locality, the
// local routing consistency of Liang et al.), otherwise one drawn from a Zipf law of exponent `zipf`
// over a fixed random permutation of the experts (popularity). BM_store/<store>/<budget %>/<prefetch>/
// zipf:<x100>/reuse:<%>/direct:<0|1>/warm:<steps>/readers:<N>. warm:0 times the first kSteps tokens after the layers
// are built: every expert a run touches is read once (its compulsory misses: with 64 tokens most of
// the ~3 MB per token read), which resident does outside the timing, at its construction. warm:N first
// decodes N tokens untimed (the decode's steady state: the cache holds what the routing reuses), then
// drops the page cache and times the next kSteps tokens. Either way the timed run starts from a cold
// page cache (posix_fadvise DONTNEED on the file), so a first read comes from the disk (or whatever backs the file here);
// direct:1 makes every read of a cached store O_DIRECT, so its misses never come from the page cache
// (direct:0: a miss re-reads what the page cache kept, the OS lending the cache its free memory).
// readers:N is the cached store's reader threads (StoreConfig::read_threads: a call's misses read in
// pieces by N threads at once while its hits run; 0: read one after another by the calling thread).
//
// The mapped floor (llama.cpp's mmap) on a model larger than memory: run alone, BM_store's mapped store has all
// the free memory of the machine for its pages, here (2 layers of 64 experts, ~200 MB) the whole file, so after
// the first touch it reads nothing. bench/layer/store_floor.sh runs the mapped and cached cases inside a memory
// cgroup whose limit is the cached store's budget plus the process's own memory (rss_anon_MB of a run without a
// limit, plus 32 MiB of slack: the kernel's own charges and that memory varying): the page cache that serves
// mapped's faults (and a buffered cached store's reads) is then as large as the cached store's slots, as on a
// machine whose memory the model exceeds. disk_MB_per_token (the process's read_bytes in /proc/self/io over the
// timed tokens) shows what each store really reads, page faults included; MB_per_token counts the store's own
// reads (a mapped store: first uses only).
//
// Counters: tokens/s, hit_rate, MB_per_token read from the file, stall_ms_per_token (acquire's and
// ready_first's waits), reads_at_once (most pieces read at the same time), disk_MB_per_token and
// rss_anon_MB (above), expert_MB (every layer's expert bytes: budgets are a share of it),
// wasted_MB_per_token (prefetched records evicted before any use), consistency (the routing's local
// routing consistency: the share of a token's experts the previous token used, store::StoreStats).
//
// The local-routing-consistency paper (Liang et al. 2025, arXiv 2505.16056) finds that on 20 MoE LLMs a
// cache of about twice the active experts balances hit rate against size: here k = 8 of E = 64, so the
// 25 % budget (16 slots) is that cache. Zipf 0.8 / reuse 50 % gives a consistency of 0.57 and Zipf
// 1.2 / reuse 80 % 0.83 (the consistency counter), an LRU cache of 2k hitting 67-69 % and 89 % of them.
// The paper's figures per model are not reproduced here; these two routings bracket a model with
// little locality and one with the locality its finding (2k suffices) needs.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include <benchmark/benchmark.h>
#include <unistd.h>

#include <fstream>

#include "smoe/balance/none.hpp"
#include "smoe/expert/swiglu.hpp"
#include "smoe/layer.hpp"
#include "smoe/router/topk.hpp"
#include "smoe/store/expert_store.hpp"
#include "smoe/store/pack_experts.hpp"

namespace {

namespace store = smoe::store;
using Layer = smoe::MoELayer<smoe::router::TopK, smoe::expert::SwiGLU<std::int8_t>, smoe::balance::None>;

constexpr std::int64_t kD = 1024, kF = 512, kE = 64, kK = 8, kLayers = 2, kSteps = 64, kMaxWarm = 256;

// The packed file of `layers` layers of random int8 experts, written once per process.
struct Model {
    std::filesystem::path path;
    std::shared_ptr<store::PackedFile const> file;
    std::vector<float> gate;
    std::uint64_t expert_bytes = 0;  // per layer
    explicit Model(std::int64_t layers = kLayers) {
        path = std::filesystem::temp_directory_path() /
               ("smoe_bench_store_" + std::to_string(::getpid()) + "_" + std::to_string(layers) + ".smoe");
        std::mt19937_64 rng(7);
        std::normal_distribution<float> nd(0.0f, 0.05f);
        gate.resize(kE * kD);
        for (auto& g : gate) g = nd(rng);
        store::PackedWriter out(path);
        smoe::expert::SwiGLUConfig one{kD, kF, 1};
        std::vector<float> w1(kF * kD), w3(kF * kD), w2(kD * kF);
        for (std::int64_t l = 0; l < layers; ++l)
            store::add_layer_streaming(out, l, kE, [&](std::int64_t, auto&& sink) {
                for (auto* w : {&w1, &w3, &w2})
                    for (auto& v : *w) v = nd(rng);
                auto q1 = smoe::quantize_int8_per_channel(smoe::MatrixView<float const>(w1.data(), kF, kD));
                auto q3 = smoe::quantize_int8_per_channel(smoe::MatrixView<float const>(w3.data(), kF, kD));
                auto q2 = smoe::quantize_int8_per_channel(smoe::MatrixView<float const>(w2.data(), kD, kF));
                sink(smoe::expert::SwiGLU<std::int8_t>(
                    one, smoe::expert::SwiGLUWeights<std::int8_t>::dense(q1.q.data(), q1.s.data(), q3.q.data(), q3.s.data(), q2.q.data(),
                                                                        q2.s.data(), one)));
            });
        out.finish();
        file = store::PackedFile::open(path);
        auto const& L = file->layers()[0];
        for (std::int64_t e = 0; e < kE; ++e) expert_bytes += file->record(L, e).bytes;
    }
    ~Model() { std::filesystem::remove(path); }
};

Model& model() {
    static Model m;
    return m;
}

// A field of /proc/self/<file> ("read_bytes" of io, "RssAnon" of status, in kB), 0 where there is none.
double proc_field(char const* file, std::string const& key) {
    std::ifstream in(std::string("/proc/self/") + file);
    for (std::string k; in >> k;) {
        double v = 0;
        if (k == key + ":" && in >> v) return v;
    }
    return 0;
}

// (kMaxWarm + kSteps) x layers routings of one token: k distinct experts, reused from the previous
// token with probability reuse, else Zipf(zipf)-popular; each layer its own zipf and reuse.
struct LayerRouting {
    double zipf = 0, reuse = 0;
};
std::vector<std::int32_t> routing(std::vector<LayerRouting> const& per_layer, std::uint64_t seed) {
    constexpr std::int64_t steps = kMaxWarm + kSteps;
    std::int64_t const layers = static_cast<std::int64_t>(per_layer.size());
    std::mt19937_64 rng(seed);
    std::vector<std::vector<double>> cdfs;
    for (auto const& r : per_layer) {
        double sum = 0;
        auto& cdf = cdfs.emplace_back(kE);
        for (std::int64_t i = 0; i < kE; ++i) cdf[i] = (sum += 1.0 / std::pow(double(i + 1), r.zipf));
    }
    std::vector<std::int32_t> perm(kE);
    for (std::int64_t i = 0; i < kE; ++i) perm[i] = std::int32_t(i);
    std::shuffle(perm.begin(), perm.end(), rng);
    std::uniform_real_distribution<double> u(0.0, 1.0);
    std::vector<std::int32_t> ids(steps * layers * kK);
    for (std::int64_t l = 0; l < layers; ++l)
        for (std::int64_t s = 0; s < steps; ++s) {
            auto const& cdf = cdfs[std::size_t(l)];
            double const reuse = per_layer[std::size_t(l)].reuse, sum = cdf.back();
            std::int32_t* const row = ids.data() + (s * layers + l) * kK;
            std::int32_t const* prev = s > 0 ? ids.data() + ((s - 1) * layers + l) * kK : nullptr;
            for (std::int64_t j = 0; j < kK; ++j) {
                std::int32_t e;
                do {
                    if (prev && u(rng) < reuse)
                        e = prev[std::uniform_int_distribution<int>(0, kK - 1)(rng)];
                    else
                        e = perm[std::lower_bound(cdf.begin(), cdf.end(), u(rng) * sum) - cdf.begin()];
                } while (std::find(row, row + j, e) != row + j);
                row[j] = e;
            }
        }
    return ids;
}
std::vector<std::int32_t> routing(double zipf, double reuse, std::uint64_t seed) {
    return routing(std::vector<LayerRouting>(kLayers, {zipf, reuse}), seed);
}

// The first n layers of m's file, each with the store c.expert.store says.
std::vector<std::unique_ptr<Layer>> file_layers(Model const& m, Layer::Config const& c, std::int64_t n, smoe::DefaultThreadPool& pool) {
    std::vector<std::unique_ptr<Layer>> layers;
    for (std::int64_t l = 0; l < n; ++l) {
        smoe::expert::SwiGLUWeights<std::int8_t> pw;
        pw.packed = {m.file, l, {}};
        layers.push_back(std::make_unique<Layer>(c, Layer::Weights{smoe::MatrixView<float const>(m.gate.data(), kE, kD), {}, pw}));
        layers.back()->set_thread_pool(pool);
    }
    return layers;
}

// residency: 0 resident, 1 mapped, 2 cached LRU, 3 cached LFU; budget in % of a layer's expert bytes.
void BM_store(benchmark::State& state) {
    auto& m = model();
    int const kind = int(state.range(0));
    double const budget = double(state.range(1)) / 100.0;
    bool const prefetch = state.range(2) != 0;
    double const zipf = double(state.range(3)) / 100.0, reuse = double(state.range(4)) / 100.0;
    bool const direct = state.range(5) != 0;
    std::int64_t const warm = std::min<std::int64_t>(state.range(6), kMaxWarm);
    std::int32_t const readers = std::int32_t(state.range(7));
    store::StoreConfig sc;
    sc.residency = kind == 0 ? store::Residency::resident : kind == 1 ? store::Residency::mapped : store::Residency::cached;
    sc.eviction = kind == 3 ? store::Eviction::lfu : store::Eviction::lru;
    sc.budget_bytes = static_cast<std::size_t>(budget * double(m.expert_bytes));
    sc.prefetch = prefetch;
    sc.direct_io = direct;
    sc.read_threads = readers;
    Layer::Config c;
    c.router = {.num_experts = kE, .top_k = kK};
    c.expert = {kD, kF, kE, smoe::expert::Bf16Dot::automatic, smoe::expert::Int8Dot::off, sc};
    c.max_tokens = 1;
    auto const ids = routing(zipf, reuse, 11);
    std::vector<float> const w(kK, 1.0f / kK);
    std::vector<float> x(kD, 0.01f), y(kD);
    smoe::DefaultThreadPool pool(2);
    double tokens = 0, hits = 0, acquires = 0, bytes = 0, stall = 0, wasted = 0, consistent = 0, pairs = 0, disk = 0, anon = 0, at_once = 0;
    double const record_bytes = double(m.expert_bytes) / double(kE);
    for (auto _ : state) {
        state.PauseTiming();
        m.file->drop_page_cache();
        auto layers = file_layers(m, c, kLayers, pool);
        // Step s of the routing through every layer; the prefetch of each layer's next routing is read
        // while the other layers run.
        auto step = [&](std::int64_t s) {
            for (std::int64_t l = 0; l < kLayers; ++l) {
                auto& layer = *layers[std::size_t(l)];
                layer.forward_routed(smoe::MatrixView<float const>(x.data(), 1, kD),
                                     smoe::MatrixView<std::int32_t const>(ids.data() + (s * kLayers + l) * kK, 1, kK),
                                     smoe::MatrixView<float const>(w.data(), 1, kK), smoe::MatrixView<float>(y.data(), 1, kD));
                if (prefetch && s + 1 < warm + kSteps) {
                    std::int32_t const* next = ids.data() + ((s + 1) * kLayers + l) * kK;
                    std::int64_t p[kK];
                    for (std::int64_t j = 0; j < kK; ++j) p[j] = next[j];
                    layer.experts().store().prefetch(p);
                }
            }
        };
        if (warm > 0) {  // the steady state: what the cache keeps stays, the page cache goes
            for (std::int64_t s = 0; s < warm; ++s) step(s);
            for (auto& l : layers) {
                l->experts().store().wait_idle();
                l->experts().store().reset_stats();
            }
            m.file->drop_page_cache();
        }
        double const read0 = proc_field("io", "read_bytes");
        state.ResumeTiming();
        for (std::int64_t s = warm; s < warm + kSteps; ++s) step(s);
        state.PauseTiming();
        disk += proc_field("io", "read_bytes") - read0;
        anon = std::max(anon, proc_field("status", "RssAnon") / 1e3);
        for (auto& l : layers) {
            auto const st = l->experts().store().stats();
            hits += double(st.hits);
            acquires += double(st.hits + st.misses);
            bytes += double(st.bytes_read);
            stall += st.stall_seconds;
            // (a prefetch read during the warm-up and used after it counts as used only: clamped)
            wasted += double(std::max<std::int64_t>(st.prefetch_loaded - st.prefetch_used, 0)) * record_bytes;
            consistent += double(st.consistent);
            pairs += double(st.routed_pairs);
            at_once = std::max(at_once, double(st.reads_at_once));
        }
        tokens += kSteps;
        layers.clear();
        state.ResumeTiming();
    }
    state.counters["tokens_per_s"] = benchmark::Counter(tokens, benchmark::Counter::kIsRate);
    state.counters["hit_rate"] = acquires > 0 ? hits / acquires : 1.0;
    state.counters["MB_per_token"] = bytes / tokens / 1e6;
    state.counters["stall_ms_per_token"] = 1e3 * stall / tokens;
    state.counters["wasted_MB_per_token"] = wasted / tokens / 1e6;
    if (pairs > 0) state.counters["consistency"] = consistent / pairs;
    state.counters["disk_MB_per_token"] = disk / tokens / 1e6;
    state.counters["rss_anon_MB"] = anon;
    state.counters["reads_at_once"] = at_once;
    state.counters["expert_MB"] = double(kLayers) * double(m.expert_bytes) / 1e6;
}

void store_args(benchmark::internal::Benchmark* b) {
    for (int warm : {0, 256})
        for (auto [zipf, reuse] : {std::pair{80, 50}, std::pair{120, 80}}) {
            b->Args({0, 100, 0, zipf, reuse, 0, warm, 0});
            b->Args({1, 100, 0, zipf, reuse, 0, warm, 0});
            for (int kind : {2, 3})
                for (int budget : {10, 25, 50})
                    for (int pf : {0, 1})
                        for (int direct : {0, 1})
                            for (int readers : {4, 0}) b->Args({kind, budget, pf, zipf, reuse, direct, warm, readers});
        }
    b->ArgNames({"store", "budget", "prefetch", "zipf", "reuse", "direct", "warm", "readers"});
    b->Unit(benchmark::kMillisecond);
    b->Iterations(3);
    b->UseRealTime();
}
BENCHMARK(BM_store)->Apply(store_args);

// One budget for the whole model against a budget per layer of the same total bytes, on layers whose
// routings differ (SlotCache::for_file: every layer's store draws slots from one arena, a miss evicting
// among all layers' unheld experts). BM_store_layers/<policy: 2 LRU, 3 LFU>/<budget % of the model's
// expert bytes>/<global 0|1>/<profile>: 4 layers of 64 int8 experts, k = 8, warm 256 then 64 timed
// steps, every miss an O_DIRECT read (no page cache: the bytes counted are the disk's). Profiles of
// (Zipf exponent, reuse) per layer: 0 alike, every layer (0.8, 50 %): the control, where one budget
// has nothing to move between layers; 1 graded, (0.4, 30 %), (0.8, 50 %), (1.2, 80 %), (1.6, 90 %);
// 2 one wide layer (0.4, 30 %: its experts spread, it misses most) and three narrow ones (1.6, 90 %:
// a few experts, hit with few slots). Per-layer budgets give each layer a quarter of the slots; one
// budget lets the narrow layers' unneeded slots go to the wide one. hit_l<i>: layer i's hit rate.
constexpr std::int64_t kModelLayers = 4;

Model& model4() {
    static Model m(kModelLayers);
    return m;
}

std::vector<LayerRouting> layer_profile(int profile) {
    switch (profile) {
        case 0: return std::vector<LayerRouting>(kModelLayers, {0.8, 0.5});
        case 1: return {{0.4, 0.3}, {0.8, 0.5}, {1.2, 0.8}, {1.6, 0.9}};
        default: return {{0.4, 0.3}, {1.6, 0.9}, {1.6, 0.9}, {1.6, 0.9}};
    }
}

void BM_store_layers(benchmark::State& state) {
    auto& m = model4();
    bool const global = state.range(2) != 0;
    auto const ids = routing(layer_profile(int(state.range(3))), 13);
    std::uint64_t biggest = 0;
    for (auto const& L : m.file->layers())
        for (std::int64_t e = 0; e < L.num_experts; ++e) biggest = std::max(biggest, m.file->record(L, e).bytes);
    std::size_t const slot = store::whole_pages(biggest);
    // The same slots in all: a whole number of them per layer.
    std::int64_t const per_layer = std::max<std::int64_t>(1, std::llround(double(state.range(1)) / 100.0 * double(kE)));
    store::StoreConfig sc;
    sc.residency = store::Residency::cached;
    sc.eviction = state.range(0) == 3 ? store::Eviction::lfu : store::Eviction::lru;
    sc.budget_bytes = std::size_t(per_layer) * slot;
    sc.direct_io = true;
    Layer::Config c;
    c.router = {.num_experts = kE, .top_k = kK};
    c.max_tokens = 1;
    std::vector<float> const w(kK, 1.0f / kK);
    std::vector<float> x(kD, 0.01f), y(kD);
    smoe::DefaultThreadPool pool(2);
    double tokens = 0, bytes = 0;
    std::vector<double> hits(kModelLayers), acquires(kModelLayers);
    std::int64_t constexpr warm = kMaxWarm;
    for (auto _ : state) {
        state.PauseTiming();
        m.file->drop_page_cache();
        if (global) sc.cache = store::SlotCache::for_file(std::size_t(per_layer * kModelLayers) * slot, *m.file);
        c.expert = {kD, kF, kE, smoe::expert::Bf16Dot::automatic, smoe::expert::Int8Dot::off, sc};
        auto layers = file_layers(m, c, kModelLayers, pool);
        auto step = [&](std::int64_t s) {
            for (std::int64_t l = 0; l < kModelLayers; ++l)
                layers[std::size_t(l)]->forward_routed(smoe::MatrixView<float const>(x.data(), 1, kD),
                                                       smoe::MatrixView<std::int32_t const>(ids.data() + (s * kModelLayers + l) * kK, 1, kK),
                                                       smoe::MatrixView<float const>(w.data(), 1, kK), smoe::MatrixView<float>(y.data(), 1, kD));
        };
        for (std::int64_t s = 0; s < warm; ++s) step(s);
        for (auto& l : layers) l->experts().store().reset_stats();
        m.file->drop_page_cache();
        state.ResumeTiming();
        for (std::int64_t s = warm; s < warm + kSteps; ++s) step(s);
        state.PauseTiming();
        for (std::int64_t l = 0; l < kModelLayers; ++l) {
            auto const st = layers[std::size_t(l)]->experts().store().stats();
            hits[std::size_t(l)] += double(st.hits);
            acquires[std::size_t(l)] += double(st.hits + st.misses);
            bytes += double(st.bytes_read);
        }
        tokens += kSteps;
        layers.clear();
        sc.cache.reset();
        state.ResumeTiming();
    }
    double all_hits = 0, all_acquires = 0;
    for (std::int64_t l = 0; l < kModelLayers; ++l) {
        all_hits += hits[std::size_t(l)];
        all_acquires += acquires[std::size_t(l)];
        state.counters["hit_l" + std::to_string(l)] = acquires[std::size_t(l)] > 0 ? hits[std::size_t(l)] / acquires[std::size_t(l)] : 1.0;
    }
    state.counters["tokens_per_s"] = benchmark::Counter(tokens, benchmark::Counter::kIsRate);
    state.counters["hit_rate"] = all_acquires > 0 ? all_hits / all_acquires : 1.0;
    state.counters["MB_per_token"] = bytes / tokens / 1e6;
    state.counters["slots"] = double(per_layer * kModelLayers);
}
BENCHMARK(BM_store_layers)
    ->ArgsProduct({{2, 3}, {10, 25}, {0, 1}, {0, 1, 2}})
    ->ArgNames({"policy", "budget", "global", "profile"})
    ->Unit(benchmark::kMillisecond)
    ->Iterations(3)
    ->UseRealTime();

}  // namespace
