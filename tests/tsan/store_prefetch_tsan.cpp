// ThreadSanitizer check of the expert store (issue 17): a cached store with its reader threads (a
// call's misses read in pieces of a page by 4 threads and the caller while it computes its hits) and
// prefetch() called from a second engine thread while the layer runs forward on a thread pool of 2, a
// budget of 3 of 8 experts (top-2: a slot left for prefetches) so that reads and evictions overlap; and
// two layers sharing one budget of 3 slots (store::SlotCache), whose readers and misses evict each
// other's experts. Built with -fsanitize=thread (tests/tsan/CMakeLists.txt); TSan makes the process fail
// on a data race. The output must also be the resident layer's bits. A plain main, no Catch: the build
// stays short.

#include <atomic>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <random>
#include <thread>
#include <vector>

#include <unistd.h>

#include "smoe/balance/none.hpp"
#include "smoe/expert/swiglu.hpp"
#include "smoe/layer.hpp"
#include "smoe/router/topk.hpp"
#include "smoe/store/expert_store.hpp"
#include "smoe/store/pack_experts.hpp"

using Layer = smoe::MoELayer<smoe::router::TopK, smoe::expert::SwiGLU<float>, smoe::balance::None>;
namespace store = smoe::store;

int main() {
    std::int64_t const d = 32, f = 24, E = 8, T = 16;
    std::mt19937_64 rng(5);
    std::normal_distribution<float> nd(0.0f, 0.3f);
    auto draw = [&](std::int64_t n) {
        std::vector<float> v(static_cast<std::size_t>(n));
        for (auto& a : v) a = nd(rng);
        return v;
    };
    auto const gate = draw(E * d), w1 = draw(E * f * d), w3 = draw(E * f * d), w2 = draw(E * d * f), x = draw(T * d);
    Layer::Config c;
    c.router = {.num_experts = E, .top_k = 2, .norm_topk_prob = true};
    c.expert = {d, f, E};
    c.max_tokens = T;
    smoe::MatrixView<float const> const g(gate.data(), E, d);
    Layer ref(c, {g, {}, smoe::expert::SwiGLUWeights<float>::dense(w1.data(), w3.data(), w2.data(), c.expert)});
    auto const path = std::filesystem::temp_directory_path() / ("smoe_tsan_" + std::to_string(::getpid()) + ".smoe");
    {
        store::PackedWriter out(path);
        store::add_layer(out, 0, ref.experts());
        out.finish();
    }
    auto const file = store::PackedFile::open(path);
    std::size_t const slot = (file->record(file->layers()[0], 0).bytes + 4095) / 4096 * 4096;
    auto cached = c;
    // Records in pieces of a page (3 each), read by 4 threads and the callers at once.
    cached.expert.store = {.residency = store::Residency::cached, .budget_bytes = 3 * slot, .prefetch = true, .read_piece_bytes = 4096};
    smoe::expert::SwiGLUWeights<float> pw;
    pw.packed = {file, 0, {}};
    Layer l(cached, {g, {}, pw});
    auto shared = cached;
    shared.expert.store.cache = store::SlotCache::for_file(3 * slot, *file);
    Layer a(shared, {g, {}, pw}), b(shared, {g, {}, pw});
    smoe::DefaultThreadPool pool(2);
    l.set_thread_pool(pool);
    a.set_thread_pool(pool);

    std::atomic<bool> done{false};
    std::thread engine([&] {  // the engine's predictor, on its own thread
        std::int64_t i = 0;
        while (!done.load()) {
            std::vector<std::int64_t> const ids = {i % E, (i * 3 + 1) % E};
            for (Layer* p : {&l, &a, &b}) {
                p->experts().store().prefetch(ids);
                (void)p->experts().store().stats();
            }
            ++i;
            std::this_thread::yield();
        }
    });
    std::vector<float> want(x.size()), got(x.size());
    int bad = 0;
    for (int round = 0; round < 20; ++round)
        for (std::int64_t t = 0; t < T; ++t) {
            smoe::MatrixView<float const> const xt(x.data() + t * d, 1, d);
            ref.forward(xt, smoe::MatrixView<float>(want.data() + t * d, 1, d));
            for (Layer* p : {&l, &a, &b}) {
                p->forward(xt, smoe::MatrixView<float>(got.data() + t * d, 1, d));
                bad += want != got;
            }
        }
    done = true;
    engine.join();
    auto const s = l.experts().store().stats();
    std::printf("store_prefetch_tsan: %lld hits, %lld misses, %lld prefetched, %lld used, %d mismatches\n", static_cast<long long>(s.hits),
                static_cast<long long>(s.misses), static_cast<long long>(s.prefetch_loaded), static_cast<long long>(s.prefetch_used), bad);
    std::filesystem::remove(path);
    auto const sa = a.experts().store().stats(), sb = b.experts().store().stats();
    std::printf("  two layers sharing 3 slots: evictions %lld and %lld, prefetched %lld and %lld\n", static_cast<long long>(sa.evictions),
                static_cast<long long>(sb.evictions), static_cast<long long>(sa.prefetch_loaded), static_cast<long long>(sb.prefetch_loaded));
    return bad == 0 && s.prefetch_loaded > 0 && sa.evictions > 0 && sb.evictions > 0 ? 0 : 1;
}
