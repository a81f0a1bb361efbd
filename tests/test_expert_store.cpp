// Expert stores and packed expert files (smoe/store/): a layer whose experts come from a packed file,
// mapped or cached within any budget (one expert to all), with every eviction policy, prefetch on or
// off and a thread pool, gives the bits of the layer packed in memory; the cache evicts in the order
// its policy says on a scripted routing; every corruption of the file is an error naming it.

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <tuple>
#include <vector>

#include <catch2/catch.hpp>
#include <unistd.h>

#include "common/data.hpp"
#include "smoe/balance/least_loaded.hpp"
#include "smoe/smoe.hpp"
#include "smoe/store/expert_store.hpp"
#include "smoe/store/pack_experts.hpp"
#include "smoe/store/packed_file.hpp"
#include "smoe/store/pregate.hpp"

using smoe::MatrixView;
using Catch::Matchers::Contains;
namespace store = smoe::store;
namespace fs = std::filesystem;

namespace {

using Layer = smoe::MoELayer<smoe::router::TopK, smoe::expert::SwiGLU<float>, smoe::balance::None>;
using QLayer = smoe::MoELayer<smoe::router::TopK, smoe::expert::QuantSwiGLU, smoe::balance::None>;

fs::path temp_file(std::string const& name) {
    return fs::temp_directory_path() / ("smoe_store_" + std::to_string(::getpid()) + "_" + name);
}

struct Model {
    std::int64_t d = 48, f = 40, E = 8, T = 24;  // f not a multiple of 8: the padded down panels
    std::vector<float> gate, w1, w3, w2, x;
    explicit Model(std::uint64_t seed, std::int64_t E_ = 8) : E(E_) {
        std::mt19937_64 rng(seed);
        gate = smoe_test::normal(rng, std::size_t(E * d), 0.5);
        w1 = smoe_test::normal(rng, std::size_t(E * f * d), 0.2);
        w3 = smoe_test::normal(rng, std::size_t(E * f * d), 0.2);
        w2 = smoe_test::normal(rng, std::size_t(E * d * f), 0.2);
        x = smoe_test::normal(rng, std::size_t(T * d), 1.0);
    }
    Layer::Config config(store::StoreConfig s = {}) const {
        Layer::Config c;
        c.router = {.num_experts = E, .top_k = 2, .norm_topk_prob = true};
        c.expert = {d, f, E, smoe::expert::Bf16Dot::automatic, smoe::expert::Int8Dot::off, s};
        c.max_tokens = T;
        return c;
    }
    Layer resident(std::int64_t top_k = 2) const {
        auto c = config();
        c.router.top_k = top_k;
        return Layer(c, {MatrixView<float const>(gate.data(), E, d), {},
                         smoe::expert::SwiGLUWeights<float>::dense(w1.data(), w3.data(), w2.data(), c.expert)});
    }
    Layer packed(std::shared_ptr<store::PackedFile const> file, store::StoreConfig s, std::int64_t layer = 0) const {
        smoe::expert::SwiGLUWeights<float> w;
        w.packed = {std::move(file), layer, {}};
        return Layer(config(s), {MatrixView<float const>(gate.data(), E, d), {}, w});
    }
};

// A prefill of T tokens, then decode steps of one token each (the cache's contents change between).
// touched: experts that got tokens, summed over the calls (each is one acquire of a non-resident store).
template <class L>
std::vector<float> run(L& layer, std::vector<float> const& x, std::int64_t d, std::int64_t T, bool predict = false,
                       std::int64_t* touched = nullptr) {
    std::vector<float> y(x.size());
    auto call = [&](std::int64_t t0, std::int64_t n) {
        auto const r = layer.forward(MatrixView<float const>(x.data() + t0 * d, n, d), MatrixView<float>(y.data() + t0 * d, n, d));
        for (std::int64_t e = 0; touched && e < r.num_experts; ++e) *touched += r.load(e) > 0;
    };
    call(0, T / 2);
    for (std::int64_t t = T / 2; t < T; ++t) {
        if (predict) {  // an engine's guess for the next step: the experts this token's neighbour used
            std::vector<std::int64_t> ids = {t % 8, (t * 5 + 1) % 8, (t * 3) % 8};
            layer.experts().store().prefetch(ids);
        }
        call(t, 1);
    }
    return y;
}

std::shared_ptr<store::PackedFile const> write_file(fs::path const& p, Layer const& l, std::int64_t layer_index = 0) {
    store::PackedWriter w(p);
    store::add_layer(w, layer_index, l.experts());
    w.finish();
    return store::PackedFile::open(p);
}

// A model, its resident layer and that layer written into a packed file (removed at the end).
struct Packed {
    Model m;
    Layer ref;
    fs::path path;
    std::shared_ptr<store::PackedFile const> file;
    Packed(std::uint64_t seed, char const* name, std::int64_t E = 8, std::int64_t layer = 0)
        : m(seed, E), ref(m.resident()), path(temp_file(name)), file(write_file(path, ref, layer)) {}
    ~Packed() {
        std::error_code ec;
        fs::remove(path, ec);
    }
};

std::vector<std::byte> read_all(fs::path const& p) {
    std::ifstream in(p, std::ios::binary);
    std::vector<char> c((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    std::vector<std::byte> b(c.size());
    std::memcpy(b.data(), c.data(), c.size());
    return b;
}
void write_all(fs::path const& p, std::vector<std::byte> const& b) {
    std::ofstream out(p, std::ios::binary | std::ios::trunc);
    out.write(reinterpret_cast<char const*>(b.data()), static_cast<std::streamsize>(b.size()));
}

}  // namespace

TEST_CASE("xxh64 gives the published xxHash digests", "[store][checksum]") {
    auto h = [](std::string const& s) { return store::xxh64(std::as_bytes(std::span(s.data(), s.size()))); };
    CHECK(h("") == 0xEF46DB3751D8E999ull);
    CHECK(h("abc") == 0x44BC2CF5AD770999ull);
    CHECK(h("Nobody inspects the spammish repetition") == 0xFBCEA83C8A378BF1ull);  // > 32 bytes: the stripes
}

TEST_CASE("a packed layer gives the resident layer's bits for every budget, policy, prefetch and pool", "[store][layer]") {
    Packed fx(11, "same_bits.smoe");
    auto const& [m, ref, path, file] = std::tie(fx.m, fx.ref, fx.path, fx.file);
    std::int64_t acquires = 0;
    auto const want = run(ref, m.x, m.d, m.T, false, &acquires);
    REQUIRE(file->layers().size() == 1);
    CHECK(file->layers()[0].kind == store::ExpertKind::swiglu_f32);
    CHECK(file->file_bytes() % 64 == 0);
    // The data start maps at a 2 MiB boundary, as in the file, so huge pages can back the records.
    CHECK(reinterpret_cast<std::uintptr_t>(file->mapped(file->record(file->layers()[0], 0)).data() - file->record(file->layers()[0], 0).offset +
                                           store::kPackedDataOffset) % store::kHugeRecordAlignment == 0);
    file->verify_all();
    for (auto const& l : file->layers())
        for (std::int64_t e = 0; e < l.num_experts; ++e) {
            CHECK(file->record(l, e).offset % store::kRecordAlignment == 0);
            CHECK(reinterpret_cast<std::uintptr_t>(file->mapped(file->record(l, e)).data()) % 4096 == 0);
        }

    for (auto residency : {store::Residency::resident, store::Residency::mapped}) {
        Layer l = m.packed(file, {.residency = residency});
        CHECK(run(l, m.x, m.d, m.T) == want);
        CHECK(l.experts().store().slots() == m.E);
    }
    std::size_t const slot = [&] {
        Layer l = fx.m.packed(fx.file, {.residency = store::Residency::cached, .budget_bytes = std::size_t(1) << 30});
        return l.experts().store().slot_bytes();
    }();
    store::EvictionPolicy const highest_id = [](std::span<store::EvictionCandidate const> c) {
        std::size_t pick = 0;
        for (std::size_t i = 1; i < c.size(); ++i)
            if (c[i].expert > c[pick].expert) pick = i;
        return pick;
    };
    smoe::DefaultThreadPool pool(2);
    for (std::int64_t slots = 1; slots <= m.E; ++slots)
        for (auto ev : {store::Eviction::lru, store::Eviction::lfu, store::Eviction::custom})
            for (bool prefetch : {false, true})
                for (bool threads : {false, true}) {
                    CAPTURE(slots, store::to_string(ev), prefetch, threads);
                    bool const stream = (slots + int(threads)) % 2 == 0;  // rounds, or the overflow from the mapping
                    CAPTURE(stream);
                    store::StoreConfig const s{store::Residency::cached, std::size_t(slots) * slot + slot / 2, ev,
                                               ev == store::Eviction::custom ? highest_id : store::EvictionPolicy{}, prefetch, false, stream};
                    Layer l = m.packed(file, s);
                    if (threads) l.set_thread_pool(pool);
                    auto& st = l.experts().store();
                    CHECK(st.slots() == slots);
                    CHECK(st.bounded() == (slots < m.E && !stream));
                    CHECK(!st.shares_cache());
                    CHECK(run(l, m.x, m.d, m.T, prefetch) == want);
                    st.wait_idle();
                    auto const stats = st.stats();
                    CHECK(stats.hits + stats.misses == acquires);
                    std::uint64_t const rec = file->record(file->layers()[0], 0).bytes;
                    CHECK(stats.bytes_read == std::uint64_t(stats.misses - stats.streamed + stats.prefetch_loaded) * rec);
                    if (!stream || slots == m.E) CHECK(stats.streamed == 0);
                    if (slots == m.E) CHECK(stats.evictions == 0);  // every expert read at most once
                    if (slots == 1 && !prefetch) CHECK(stats.hits <= 1 + m.T / 2);  // at most the first expert of a call
                    if (prefetch && slots < m.E) CHECK(stats.prefetch_issued > 0);  // a full cache needs none
                    CHECK(stats.routed_pairs == m.T * 2);
                }
}

TEST_CASE("an expert run one at a time holds its record for the call, with the mapping of a rank's experts",
          "[store][dist]") {
    Packed fx(12, "rank.smoe");
    auto const& [m, ref, path, file] = std::tie(fx.m, fx.ref, fx.path, fx.file);
    // A rank holding experts 5 and 2 of the file as its local 0 and 1, in a cache of one slot.
    smoe::expert::SwiGLUConfig cfg{m.d, m.f, 2};
    cfg.store = {.residency = store::Residency::cached, .budget_bytes = 1};
    smoe::expert::SwiGLUWeights<float> w;
    w.packed = {file, 0, {5, 2}};
    CHECK_THROWS_WITH(smoe::expert::SwiGLU<float>(cfg, w), Contains("store.budget_bytes' = 1: expected at least one expert's slot"));
    cfg.store.budget_bytes = 1 << 20;
    smoe::expert::SwiGLU<float> const rank(cfg, w);
    CHECK(rank.store().slots() == 2);
    std::int64_t const M = 5;
    std::vector<float> rw(M, 0.75f), a(std::size_t(M * m.d)), b(a.size());
    smoe::WorkspaceBuffer ws(rank.workspace_size(M));
    for (auto [local, global] : {std::pair{0, 5}, std::pair{1, 2}}) {
        auto wa = ws.workspace();
        rank.run(xsimd::default_arch{}, local, MatrixView<float const>(m.x.data(), M, m.d), rw, MatrixView<float>(a.data(), M, m.d), wa);
        auto wb = ws.workspace();
        ref.experts().run(xsimd::default_arch{}, global, MatrixView<float const>(m.x.data(), M, m.d), rw, MatrixView<float>(b.data(), M, m.d), wb);
        CHECK(a == b);
    }
    w.packed.experts = {5, 8};
    CHECK_THROWS_WITH(smoe::expert::SwiGLU<float>(cfg, w), Contains(path.string() + ": layer 0 expert ids' = 0-7: expected 5, 8 (the experts"));
}

// Expert ids of a record table: its model_experts and each entry's id, the table's checksum redone
// (and the header's, which covers it), so only the id checks can catch the edit.
void edit_ids(std::vector<std::byte>& b, std::int64_t model_experts, std::vector<std::int64_t> const& ids) {
    store::FileHeader h;
    std::memcpy(&h, b.data(), sizeof h);
    std::size_t const table = h.table_offset;
    store::LayerEntry le;
    std::memcpy(&le, b.data() + table, sizeof le);
    le.model_experts = model_experts;
    std::memcpy(b.data() + table, &le, sizeof le);
    for (std::size_t i = 0; i < ids.size(); ++i) {
        std::size_t const at = table + sizeof(store::LayerEntry) + i * sizeof(store::ExpertEntry);
        store::ExpertEntry x;
        std::memcpy(&x, b.data() + at, sizeof x);
        x.expert = ids[i];
        std::memcpy(b.data() + at, &x, sizeof x);
    }
    h.table_checksum = store::xxh64(std::span<std::byte const>(b.data() + table, h.table_bytes));
    h.header_checksum = 0;
    h.header_checksum = store::xxh64(std::as_bytes(std::span(&h, 1)));
    std::memcpy(b.data(), &h, sizeof h);
}

TEST_CASE("a rank's packed file records its experts' global ids, checked on load and by every reader", "[store][dist][ids]") {
    Packed fx(13, "ids_whole.smoe");
    auto& m = fx.m;
    auto& ref = fx.ref;
    CHECK(fx.file->layer(0).model_experts == 8);
    CHECK(std::vector<std::int64_t>(fx.file->expert_ids(fx.file->layer(0)).begin(), fx.file->expert_ids(fx.file->layer(0)).end()) ==
          std::vector<std::int64_t>{0, 1, 2, 3, 4, 5, 6, 7});
    // Rank 1 of a placement holding experts 1, 4 and 6 of 8 packs them alone into its own file.
    std::vector<std::int64_t> const mine = {1, 4, 6};
    auto const path = temp_file("ids_rank.smoe");
    {
        store::PackedWriter w(path);
        w.begin_layer(0, ref.experts().packed_layer_info(), 8);
        for (std::int64_t id : mine) w.add(store::record_of(ref.experts(), id), ref.experts().packed_record_info(id), id);
        CHECK_THROWS_WITH(w.add(store::record_of(ref.experts(), 6), {}, 6), Contains("expert id' = 6: expected in [7, 8) (layer 0's ids"));
        CHECK_THROWS_WITH(w.add(store::record_of(ref.experts(), 0), {}, 8), Contains("expert id' = 8: expected in [7, 8)"));
        CHECK(w.record_bytes() == 3 * ref.experts().record_bytes(0));  // the records, not the holes between them
        CHECK(w.bytes_written() > store::kPackedDataOffset + w.record_bytes());
        w.finish();
    }
    auto const file = store::PackedFile::open(path);
    auto const& L = file->layer(0);
    CHECK(L.num_experts == 3);
    CHECK(L.model_experts == 8);
    CHECK(file->record_bytes() == 3 * ref.experts().record_bytes(0));
    CHECK(file->find(L, 4) == 1);
    CHECK(file->find(L, 5) == -1);
    CHECK(file->where(L, 2) == "layer 0 expert 6 (record 2 of the layer)");
    // Read by its ids, in any order the reader holds them, or whole: the resident layer's bits.
    smoe::expert::SwiGLUConfig cfg{m.d, m.f, 3};
    cfg.store = {.residency = store::Residency::cached, .budget_bytes = 1 << 20};
    std::int64_t const M = 3;
    std::vector<float> rw(M, 0.5f), a(std::size_t(M * m.d)), b(a.size());
    smoe::WorkspaceBuffer ws(ref.experts().workspace_size(M));
    for (auto const& ids : {mine, std::vector<std::int64_t>{6, 1, 4}, std::vector<std::int64_t>{}}) {
        smoe::expert::SwiGLUWeights<float> w;
        w.packed = {file, 0, ids};
        smoe::expert::SwiGLU<float> const rank(cfg, w);
        for (std::int64_t local = 0; local < 3; ++local) {
            std::int64_t const global = ids.empty() ? mine[std::size_t(local)] : ids[std::size_t(local)];
            auto wa = ws.workspace();
            rank.run(xsimd::default_arch{}, local, MatrixView<float const>(m.x.data(), M, m.d), rw, MatrixView<float>(a.data(), M, m.d), wa);
            auto wb = ws.workspace();
            ref.experts().run(xsimd::default_arch{}, global, MatrixView<float const>(m.x.data(), M, m.d), rw, MatrixView<float>(b.data(), M, m.d), wb);
            CHECK(a == b);
        }
        CHECK(rank.store().source().experts == (ids.empty() ? mine : ids));
    }
    // Another rank (experts 0, 2, 3) opening this file, or a reader of the whole model: named, both id lists.
    smoe::expert::SwiGLUWeights<float> other;
    other.packed = {file, 0, {0, 2, 3}};
    CHECK_THROWS_WITH(smoe::expert::SwiGLU<float>(cfg, other),
                      Contains(path.string() + ": layer 0 expert ids' = 1, 4, 6: expected 0, 2-3 (the experts the reader holds"));
    other.packed = {file, 0, {0, 1, 2, 3, 4, 5, 6, 7}};
    CHECK_THROWS_WITH(smoe::expert::SwiGLU<float>(m.config().expert, other), Contains("expert ids' = 1, 4, 6: expected 0-7"));

    // The id table under corruption: every edit of it is caught, by a checksum or by the id checks.
    auto const good = read_all(path);
    auto const bad = temp_file("ids_bad.smoe");
    std::string const name = bad.string();
    auto open_with = [&](std::int64_t model_experts, std::vector<std::int64_t> const& ids) {
        auto b = good;
        edit_ids(b, model_experts, ids);
        write_all(bad, b);
        return store::PackedFile::open(bad);
    };
    CHECK(open_with(8, {1, 4, 6})->expert_ids(file->layer(0)).size() == 3);  // the edit itself changes nothing
    {
        auto b = good;  // an id flipped, the checksums left: the table's checksum, which the header's covers
        store::FileHeader h;
        std::memcpy(&h, b.data(), sizeof h);
        std::size_t const at = h.table_offset + sizeof(store::LayerEntry) + sizeof(store::ExpertEntry) + offsetof(store::ExpertEntry, expert);
        b[at] ^= std::byte{1};
        write_all(bad, b);
        CHECK_THROWS_WITH(store::PackedFile::open(bad), Contains(name + ": table checksum'"));
        h.table_checksum = store::xxh64(std::span<std::byte const>(b.data() + h.table_offset, h.table_bytes));
        std::memcpy(b.data(), &h, sizeof h);  // the table's checksum redone, not the header's
        write_all(bad, b);
        CHECK_THROWS_WITH(store::PackedFile::open(bad), Contains(name + ": header checksum'"));
    }
    CHECK_THROWS_WITH(open_with(8, {1, 4, 4}), Contains(name + ": layer 0 expert 2 id' = 4: expected in [5, 8) (a layer's expert ids strictly increasing"));
    CHECK_THROWS_WITH(open_with(8, {4, 1, 6}), Contains(name + ": layer 0 expert 1 id' = 1: expected in [5, 8)"));
    CHECK_THROWS_WITH(open_with(8, {-1, 4, 6}), Contains(name + ": layer 0 expert 0 id' = -1: expected in [0, 8)"));
    CHECK_THROWS_WITH(open_with(8, {1, 4, 8}), Contains(name + ": layer 0 expert 2 id' = 8: expected in [5, 8)"));
    CHECK_THROWS_WITH(open_with(6, {1, 4, 6}), Contains(name + ": layer 0 expert 2 id' = 6: expected in [5, 6)"));
    CHECK_THROWS_WITH(open_with(2, {0, 1, 2}), Contains(name + ": layer entry 0 model_experts' = 2: expected in [num_experts 3, "));
    CHECK_THROWS_WITH(open_with(std::int64_t(1) << 40, {1, 4, 6}), Contains("model_experts' = 1099511627776"));
    // Valid ids of another expert list: the file opens, the reader expecting rank 1's experts fails by name.
    auto const moved = open_with(8, {1, 5, 6});
    smoe::expert::SwiGLUWeights<float> w;
    w.packed = {moved, 0, mine};
    CHECK_THROWS_WITH(smoe::expert::SwiGLU<float>(cfg, w), Contains(name + ": layer 0 expert ids' = 1, 5-6: expected 1, 4, 6"));
    fs::remove(bad);
    fs::remove(path);
}

TEST_CASE("the cache evicts in its policy's order on a scripted routing", "[store][eviction]") {
    Packed fx(13, "evict.smoe", 6);
    auto const& [m, ref, path, file] = std::tie(fx.m, fx.ref, fx.path, fx.file);
    std::size_t const slot = (file->record(file->layers()[0], 0).bytes + 4095) / 4096 * 4096;
    // One token per step, routed to the scripted expert; the slots' contents after each step.
    auto script = [&](store::StoreConfig s, std::vector<std::int32_t> const& ids) {
        s.residency = store::Residency::cached;
        s.budget_bytes = 2 * slot;
        Layer l = fx.m.packed(fx.file, s);
        std::vector<std::vector<std::int64_t>> after;
        std::vector<float> y(std::size_t(fx.m.d));
        float const one = 1.0f;
        for (std::int32_t e : ids) {
            l.forward_routed(MatrixView<float const>(fx.m.x.data(), 1, fx.m.d), MatrixView<std::int32_t const>(&e, 1, 1),
                             MatrixView<float const>(&one, 1, 1), MatrixView<float>(y.data(), 1, fx.m.d));
            after.push_back(l.experts().store().cached_experts());
        }
        return std::pair{after, l.experts().store().stats()};
    };
    using V = std::vector<std::int64_t>;
    {  // LRU: 1 is least recently used when 2 comes, then 0 when 1 comes back
        auto const [after, st] = script({.eviction = store::Eviction::lru}, {0, 1, 0, 2, 1, 1, 3});
        CHECK(after[2] == V{0, 1});
        CHECK(after[3] == V{0, 2});
        CHECK(after[4] == V{1, 2});
        CHECK(after[6] == V{1, 3});
        CHECK(st.hits == 2);
        CHECK(st.misses == 5);
        CHECK(st.evictions == 3);
    }
    {  // LFU by tokens routed: 0 has 3 tokens, 1 one, so 2 replaces 1; then 3 replaces 2 (1 token, older)
        auto const [after, st] = script({.eviction = store::Eviction::lfu}, {0, 0, 0, 1, 2, 3});
        CHECK(after[3] == V{0, 1});
        CHECK(after[4] == V{0, 2});
        CHECK(after[5] == V{0, 3});
        CHECK(st.hits == 2);
    }
    {  // the same sequence under LRU evicts 0 first
        auto const [after, st] = script({.eviction = store::Eviction::lru}, {0, 0, 0, 1, 2, 3});
        CHECK(after[4] == V{2, 1});
        CHECK(after[5] == V{2, 3});
    }
    {  // the engine's own: evict the lowest id
        store::EvictionPolicy lowest = [](std::span<store::EvictionCandidate const> c) {
            std::size_t pick = 0;
            for (std::size_t i = 1; i < c.size(); ++i)
                if (c[i].expert < c[pick].expert) pick = i;
            return pick;
        };
        auto const [after, st] = script({.eviction = store::Eviction::custom, .evict = lowest}, {4, 5, 1, 3});
        CHECK(after[2] == V{1, 5});
        CHECK(after[3] == V{3, 5});
        store::StoreConfig bad{.residency = store::Residency::cached, .budget_bytes = 2 * slot, .eviction = store::Eviction::custom};
        CHECK_THROWS_WITH(m.packed(file, bad), Contains("store.evict' = empty"));
    }
}

TEST_CASE("layers sharing one budget give the resident bits and evict across layers", "[store][shared]") {
    // Two models' layers in one file, as decoder layers 3 and 5 of a model.
    Model const ma(21), mb(22);
    Layer ra = ma.resident(), rb = mb.resident();
    fs::path const path = temp_file("shared.smoe");
    std::shared_ptr<store::PackedFile const> file;
    {
        store::PackedWriter w(path);
        store::add_layer(w, 3, ra.experts());
        store::add_layer(w, 5, rb.experts());
        w.finish();
        file = store::PackedFile::open(path);
    }
    std::size_t const slot = (file->record(file->layer(3), 0).bytes + 4095) / 4096 * 4096;
    // A prefill through both layers, then decode steps of one token through both (a model's order).
    auto model_run = [&](Layer& a, Layer& b, bool predict) {
        std::vector<float> ya(ma.x.size()), yb(mb.x.size());
        auto call = [&](Layer& l, Model const& m, std::vector<float>& y, std::int64_t t0, std::int64_t n) {
            l.forward(MatrixView<float const>(m.x.data() + t0 * m.d, n, m.d), MatrixView<float>(y.data() + t0 * m.d, n, m.d));
        };
        call(a, ma, ya, 0, ma.T / 2);
        call(b, mb, yb, 0, mb.T / 2);
        for (std::int64_t t = ma.T / 2; t < ma.T; ++t) {
            call(a, ma, ya, t, 1);
            if (predict) {  // the next layer's guess, read while this one finishes
                std::vector<std::int64_t> ids = {t % 8, (t * 5 + 1) % 8};
                b.experts().store().prefetch(ids);
            }
            call(b, mb, yb, t, 1);
        }
        return std::pair{ya, yb};
    };
    auto const want = model_run(ra, rb, false);
    smoe::DefaultThreadPool pool(2);
    for (std::int64_t slots : {1, 2, 3, 5, 8, 11, 16})
        for (auto ev : {store::Eviction::lru, store::Eviction::lfu})
            for (bool prefetch : {false, true})
                for (bool stream : {false, true}) {
                    CAPTURE(slots, store::to_string(ev), prefetch, stream);
                    auto const cache = store::SlotCache::for_file(std::size_t(slots) * slot + slot / 2, *file);
                    CHECK(cache->slots() == slots);
                    store::StoreConfig s{.residency = store::Residency::cached, .budget_bytes = 1, .eviction = ev, .prefetch = prefetch,
                                         .stream_overflow = stream, .cache = cache};
                    Layer a = ma.packed(file, s, 3), b = mb.packed(file, s, 5);
                    a.set_thread_pool(pool);
                    CHECK(a.experts().store().cache() == cache.get());
                    CHECK(a.experts().store().shares_cache());
                    CHECK(b.experts().store().slots() == slots);
                    CHECK(model_run(a, b, prefetch) == want);
                    b.experts().store().wait_idle();
                    CHECK(a.experts().store().memory_bytes() + b.experts().store().memory_bytes() <= std::size_t(slots) * slot);
                    if (slots == 16) CHECK(a.experts().store().stats().evictions + b.experts().store().stats().evictions == 0);
                }

    // Eviction across layers on a scripted routing: 3 slots for both layers, one token per call.
    auto const cache_of_3 = [&] { return store::SlotCache::for_file(3 * slot, *file); };
    auto step = [&](Layer& l, Model const& m, std::int32_t e) {
        std::vector<float> y(std::size_t(m.d));
        float const one = 1.0f;
        l.forward_routed(MatrixView<float const>(m.x.data(), 1, m.d), MatrixView<std::int32_t const>(&e, 1, 1), MatrixView<float const>(&one, 1, 1),
                         MatrixView<float>(y.data(), 1, m.d));
    };
    using V = std::vector<std::int64_t>;
    {  // LRU over both layers' uses: a0 b0 a1, then b1 evicts a0 (the oldest), a1 hits, a2 evicts b0
        auto const cache = cache_of_3();
        store::StoreConfig const s{.residency = store::Residency::cached, .eviction = store::Eviction::lru, .cache = cache};
        Layer a = ma.packed(file, s, 3), b = mb.packed(file, s, 5);
        auto& sa = a.experts().store();
        auto& sb = b.experts().store();
        step(a, ma, 0), step(b, mb, 0), step(a, ma, 1);
        CHECK(sa.cached_experts() == V{0, -1, 1});
        CHECK(sb.cached_experts() == V{-1, 0, -1});
        step(b, mb, 1);
        CHECK(sa.cached_experts() == V{-1, -1, 1});
        CHECK(sb.cached_experts() == V{1, 0, -1});
        CHECK(sa.stats().evictions == 1);  // counted where the expert was lost
        step(a, ma, 1), step(a, ma, 2);
        CHECK(sa.cached_experts() == V{-1, 2, 1});
        CHECK(sb.cached_experts() == V{1, -1, -1});
        CHECK(sa.stats().hits == 1);
        CHECK(sb.stats().evictions == 1);
        CHECK(sa.memory_bytes() == 2 * cache->slot_bytes());
    }
    {  // LFU by tokens routed: a0 twice, b0, a1; b2 evicts b0 (one token, older than a1); LRU would evict a0
        for (auto ev : {store::Eviction::lfu, store::Eviction::lru}) {
            store::StoreConfig const s{.residency = store::Residency::cached, .eviction = ev, .cache = cache_of_3()};
            Layer a = ma.packed(file, s, 3), b = mb.packed(file, s, 5);
            step(a, ma, 0), step(a, ma, 0), step(b, mb, 0), step(a, ma, 1), step(b, mb, 2);
            CHECK(a.experts().store().cached_experts() == (ev == store::Eviction::lfu ? V{0, -1, 1} : V{-1, -1, 1}));
            CHECK(b.experts().store().cached_experts() == (ev == store::Eviction::lfu ? V{-1, 2, -1} : V{2, 0, -1}));
        }
    }
    {  // the engine's own policy sees each candidate's layer: it gives up layer 5's experts first, but
       // not b1, layer 5's latest call (another layer's working set is kept while other victims exist)
        std::vector<std::int64_t> seen;
        store::EvictionPolicy const layer5_first = [&](std::span<store::EvictionCandidate const> c) {
            std::size_t pick = 0;
            for (std::size_t i = 0; i < c.size(); ++i) {
                seen.push_back(c[i].layer);
                if (c[i].layer == 5 && (c[pick].layer != 5 || c[i].expert < c[pick].expert)) pick = i;
            }
            return pick;
        };
        store::StoreConfig const s{.residency = store::Residency::cached, .eviction = store::Eviction::custom, .evict = layer5_first,
                                   .cache = cache_of_3()};
        Layer a = ma.packed(file, s, 3), b = mb.packed(file, s, 5);
        step(a, ma, 0), step(b, mb, 4), step(b, mb, 1), step(a, ma, 6);
        CHECK(a.experts().store().cached_experts() == V{0, 6, -1});
        CHECK(b.experts().store().cached_experts() == V{-1, -1, 1});
        std::sort(seen.begin(), seen.end());
        CHECK(seen == V{3, 5});
    }
    {  // a cache holding only the layers' latest calls: the layer that ran last (it runs again last) gives
       // up its expert, not the oldest (the next layer's, which LRU and LFU would take just before its use)
        for (auto ev : {store::Eviction::lru, store::Eviction::lfu}) {
            store::StoreConfig const s{.residency = store::Residency::cached, .eviction = ev,
                                       .cache = store::SlotCache::for_file(2 * slot, *file)};
            Layer a = ma.packed(file, s, 3), b = mb.packed(file, s, 5), c = ma.packed(file, s, 3);
            step(a, ma, 0), step(b, mb, 0), step(c, ma, 1);
            CHECK(a.experts().store().cached_experts() == V{0, -1});
            CHECK(b.experts().store().cached_experts() == V{-1, -1});
            CHECK(c.experts().store().cached_experts() == V{-1, 1});
        }
    }
    {  // a store going away gives its slots back; the cache outlives it
        auto const cache = cache_of_3();
        store::StoreConfig const s{.residency = store::Residency::cached, .cache = cache};
        Layer b = mb.packed(file, s, 5);
        {
            Layer a = ma.packed(file, s, 3);
            step(a, ma, 0), step(a, ma, 1), step(a, ma, 2);
        }
        step(b, mb, 3), step(b, mb, 4);
        CHECK(b.experts().store().cached_experts() == V{3, 4, -1});
        CHECK(b.experts().store().stats().evictions == 0);
    }
    CHECK_THROWS_WITH(store::SlotCache::for_file(slot - 1, *file), Contains("store.cache budget_bytes' = " + std::to_string(slot - 1)));
    store::StoreConfig small{.residency = store::Residency::cached, .cache = std::make_shared<store::SlotCache>(8 * slot, slot - 4096)};
    CHECK_THROWS_WITH(ma.packed(file, small, 3), Contains("store.cache slot_bytes' = " + std::to_string(slot - 4096)));
    file.reset();
    std::error_code ec;
    fs::remove(path, ec);
}

TEST_CASE("a call needing more experts than the cache keeps its hits and streams the rest", "[store][eviction]") {
    Packed fx(16, "overflow.smoe");
    auto const& [m, ref, path, file] = std::tie(fx.m, fx.ref, fx.path, fx.file);
    std::size_t const slot = (file->record(file->layers()[0], 0).bytes + 4095) / 4096 * 4096;
    smoe::DefaultThreadPool pool(2);
    using V = std::vector<std::int64_t>;
    using R = std::pair<std::int64_t, V>;  // hits of the call, the cache's experts after it
    for (int mode = 0; mode < 3; ++mode) {  // rounds; rounds with O_DIRECT reads; the overflow streamed
        CAPTURE(mode);
        // 3 slots, one token per call routed to the scripted experts (up to 5: more than 3 in two calls).
        auto c = m.config({.residency = store::Residency::cached, .budget_bytes = 3 * slot, .direct_io = mode == 1,
                           .stream_overflow = mode == 2});
        c.router.top_k = 5;
        smoe::expert::SwiGLUWeights<float> pw;
        pw.packed = {file, 0, {}};
        Layer l(c, {MatrixView<float const>(m.gate.data(), m.E, m.d), {}, pw});
        Layer ref5 = m.resident(5);
        l.set_thread_pool(pool);
        auto& st = l.experts().store();
        CHECK(st.streams() == (mode == 2));
        std::vector<float> y(std::size_t(m.d)), want(y.size());
        // fx.m, not the binding m: clang 14 cannot capture structured bindings.
        auto call = [&](std::vector<std::int32_t> const& ids) {
            std::int64_t const k = std::int64_t(ids.size());
            std::vector<float> const w(ids.size(), 1.0f / float(k));
            auto const before = st.stats().hits;
            for (auto* L : {&l, &ref5})
                L->forward_routed(MatrixView<float const>(fx.m.x.data(), 1, fx.m.d), MatrixView<std::int32_t const>(ids.data(), 1, k),
                                  MatrixView<float const>(w.data(), 1, k), MatrixView<float>((L == &l ? y : want).data(), 1, fx.m.d));
            CHECK(y == want);
            auto c = st.cached_experts();
            std::sort(c.begin(), c.end());
            return R{st.stats().hits - before, c};
        };
        CHECK(call({5, 6, 7}) == R{0, {5, 6, 7}});
        if (mode < 2) {
            // Acquired in id order, 0 and 1 would evict 5 and 6 before their round and the call would hit
            // nothing; held first, all three hit, and the misses then replace the call's oldest hits.
            CHECK(call({0, 1, 5, 6, 7}) == R{3, {0, 1, 7}});
            // 2 replaces 1 (not in the call); 3, in the second round, replaces 2 (a miss of this call)
            // rather than 0 or 7 (its hits), which LRU alone would have evicted.
            CHECK(call({0, 2, 3, 7}) == R{2, {0, 3, 7}});
            CHECK(st.stats().streamed == 0);
        } else {
            // One round: the hits held, 0 and 1 run from the mapping; the cache keeps 5, 6 and 7.
            CHECK(call({0, 1, 5, 6, 7}) == R{3, {5, 6, 7}});
            // 7 hits; 0 and 2 replace 5 and 6 (least recently used, not in the call); 3 is streamed.
            CHECK(call({0, 2, 3, 7}) == R{1, {0, 2, 7}});
            CHECK(st.stats().streamed == 3);
        }
        if (mode == 1) INFO("O_DIRECT on " << path.string() << ": " << (st.direct_io() ? "yes" : "refused, buffered"));
        CHECK(st.stats().misses == 3 + 2 + (mode < 2 ? 2 : 3));
    }
}

TEST_CASE("a planned balancer over a cached store runs exactly each round's held experts", "[store][llep]") {
    using PLayer = smoe::MoELayer<smoe::router::TopK, smoe::expert::SwiGLU<float>, smoe::balance::LeastLoaded>;
    Packed fx(17, "planned.smoe");
    auto const& [m, ref, path, file] = std::tie(fx.m, fx.ref, fx.path, fx.file);
    std::size_t const slot = (file->record(file->layers()[0], 0).bytes + 4095) / 4096 * 4096;
    smoe::DefaultThreadPool pool(2);
    Layer ref5 = m.resident(5);
    for (bool direct : {false, true}) {
        CAPTURE(direct);
        auto const c = m.config({.residency = store::Residency::cached, .budget_bytes = 3 * slot, .direct_io = direct});
        smoe::expert::SwiGLUWeights<float> pw;
        pw.packed = {file, 0, {}};
        PLayer l({.router = {.num_experts = m.E, .top_k = 5, .norm_topk_prob = true}, .expert = c.expert,
                  .balance = {.num_experts = m.E, .num_workers = 3, .min_tokens_per_gemm = 1}, .max_tokens = m.T},
                 {MatrixView<float const>(m.gate.data(), m.E, m.d), {}, pw});
        l.set_thread_pool(pool);
        // Four tokens per call on the scripted experts. After {5, 6, 7} the store puts its hit 7 first,
        // so {0, 2, 3, 7} runs as the rounds {7, 0, 2} and {3}: a round is not an id range.
        std::int64_t const T = 4;
        std::vector<float> y(std::size_t(T * m.d)), want(y.size());
        for (std::vector<std::int32_t> const& one : {std::vector<std::int32_t>{5, 6, 7}, {0, 2, 3, 7}, {1, 4, 6}, {0, 1, 2, 3, 4}}) {
            std::int64_t const k = std::int64_t(one.size());
            std::vector<std::int32_t> ids;
            for (std::int64_t t = 0; t < T; ++t) ids.insert(ids.end(), one.begin(), one.end());
            std::vector<float> const w(ids.size(), 1.0f / float(k));
            CAPTURE(one);
            l.forward_routed(MatrixView<float const>(fx.m.x.data(), T, fx.m.d), MatrixView<std::int32_t const>(ids.data(), T, k),
                             MatrixView<float const>(w.data(), T, k), MatrixView<float>(y.data(), T, fx.m.d));
            ref5.forward_routed(MatrixView<float const>(fx.m.x.data(), T, fx.m.d), MatrixView<std::int32_t const>(ids.data(), T, k),
                                MatrixView<float const>(w.data(), T, k), MatrixView<float>(want.data(), T, fx.m.d));
            CHECK(y == want);
            std::int64_t rows = 0;
            for (auto const& it : l.balancer().plan_items()) rows += it.row_end - it.row_begin;
            CHECK(rows == T * k);
        }
    }
}

TEST_CASE("prefetched experts are read by the I/O thread and counted when used", "[store][prefetch]") {
    Packed fx(14, "prefetch.smoe");
    auto const& [m, ref, path, file] = std::tie(fx.m, fx.ref, fx.path, fx.file);
    Layer l = m.packed(file, {.residency = store::Residency::cached, .budget_bytes = std::size_t(1) << 20, .prefetch = true});
    auto& st = l.experts().store();
    std::vector<std::int64_t> const ids = {1, 3, 6};
    st.prefetch(ids);
    st.wait_idle();
    CHECK(st.cached_experts() == std::vector<std::int64_t>{1, 3, 6, -1, -1, -1, -1, -1});
    std::vector<std::int32_t> const route = {3, 6};
    std::vector<float> const w = {0.5f, 0.5f};
    std::vector<float> y(std::size_t(m.d));
    l.forward_routed(MatrixView<float const>(m.x.data(), 1, m.d), MatrixView<std::int32_t const>(route.data(), 1, 2),
                     MatrixView<float const>(w.data(), 1, 2), MatrixView<float>(y.data(), 1, m.d));
    auto const s = st.stats();
    CHECK(s.prefetch_loaded == 3);
    CHECK(s.prefetch_used == 2);
    CHECK(s.hits == 2);
    CHECK(s.misses == 0);
    CHECK(s.prediction_accuracy() == 1.0);  // both experts of the call were named

    // A prefetch evicts neither the latest call's experts nor those the prediction names: with 2 slots
    // holding 1 and 2 (the latest call), a prediction of {1, 3} cannot read 3 without losing one it needs.
    std::size_t const slot = (file->record(file->layers()[0], 0).bytes + 4095) / 4096 * 4096;
    Layer two = m.packed(file, {.residency = store::Residency::cached, .budget_bytes = 2 * slot, .prefetch = true});
    auto& st2 = two.experts().store();
    float const one = 1.0f;
    for (std::int32_t e : {1, 2})
        two.forward_routed(MatrixView<float const>(m.x.data(), 1, m.d), MatrixView<std::int32_t const>(&e, 1, 1),
                           MatrixView<float const>(&one, 1, 1), MatrixView<float>(y.data(), 1, m.d));
    std::vector<std::int64_t> const next = {1, 3};
    st2.prefetch(next);
    st2.wait_idle();
    CHECK(st2.cached_experts() == std::vector<std::int64_t>{1, 2});
    CHECK(st2.stats().prefetch_issued == 1);  // 1 is cached already
    CHECK(st2.stats().prefetch_loaded == 0);
}

TEST_CASE("a call's misses are read in pieces by several threads while its hits run, and a failed read releases the call",
          "[store][readers]") {
    Packed fx(17, "readers.smoe");
    auto& m = fx.m;
    auto const want = run(fx.ref, m.x, m.d, m.T);
    std::size_t const slot = (fx.file->record(fx.file->layers()[0], 0).bytes + 4095) / 4096 * 4096;
    std::uint64_t const rec = fx.file->record(fx.file->layers()[0], 0).bytes;
    smoe::DefaultThreadPool pool(2);
    // Readers (0: the caller reads) x pieces of one page (6 per record) or one piece x budget (one slot: a
    // round per expert) x O_DIRECT: the resident bits, every byte read once per miss.
    for (std::int32_t readers : {0, 1, 4})
        for (std::size_t piece : {std::size_t(4096), std::size_t(512) << 10})
            for (std::int64_t slots : {1, 3, 8})
                for (bool direct : {false, true}) {
                    CAPTURE(readers, piece, slots, direct);
                    store::StoreConfig const s{store::Residency::cached, std::size_t(slots) * slot, store::Eviction::lru, {}, slots == 3, direct,
                                               false, nullptr, readers, piece};
                    Layer l = m.packed(fx.file, s);
                    l.set_thread_pool(pool);
                    auto& st = l.experts().store();
                    CHECK(run(l, m.x, m.d, m.T, slots == 3) == want);
                    st.wait_idle();
                    auto const stats = st.stats();
                    CHECK(stats.bytes_read == std::uint64_t(stats.misses + stats.prefetch_loaded) * rec);
                    CHECK(stats.reads_at_once >= 1);
                    CHECK(stats.reads_at_once <= readers + 2);  // the readers and the pool's threads
                }

    // Reader settings out of range are named.
    CHECK_THROWS_WITH(m.packed(fx.file, {.residency = store::Residency::cached, .budget_bytes = 4 * slot, .read_threads = -1}),
                      Contains("'store.read_threads' = -1: expected 0 <= store.read_threads <= 4096"));
    CHECK_THROWS_WITH(m.packed(fx.file, {.residency = store::Residency::cached, .budget_bytes = 4 * slot, .read_threads = 5000}),
                      Contains("'store.read_threads' = 5000"));
    CHECK_THROWS_WITH(m.packed(fx.file, {.residency = store::Residency::cached, .budget_bytes = 4 * slot, .read_piece_bytes = 1000}),
                      Contains("'store.read_piece_bytes' = 1000: expected a positive multiple of 4096"));

    // Acquired without waiting, a hit is readable at once and a miss once read: without readers,
    // ready_first reads it on the caller's thread, after handing out the hits.
    {
        Layer l = m.packed(fx.file, {.residency = store::Residency::cached, .budget_bytes = 4 * slot, .read_threads = 0, .read_piece_bytes = 4096});
        auto& st = l.experts().store();
        REQUIRE(st.acquire(1));
        st.release(1);
        std::vector<std::int32_t> ids = {2, 1, 3};
        for (std::int32_t e : ids) REQUIRE(st.acquire(e, 1, false));
        CHECK(st.record(2) == nullptr);  // not read yet
        CHECK(st.ready_first(ids) == 1);
        CHECK(ids == std::vector<std::int32_t>{1, 2, 3});
        CHECK(st.ready_first(std::span(ids).subspan(1)) >= 1);
        CHECK(st.ready_first(std::span(ids).subspan(1), true) == 2);
        for (std::int32_t e : ids) {
            auto const r = fx.file->mapped(fx.file->record(fx.file->layers()[0], e));
            CHECK(std::equal(r.begin(), r.end(), st.record(e)));
            st.release(e);
        }
        CHECK(st.stats().misses == 3);
        CHECK(st.stats().hits == 1);
    }

    // A copy of the file whose expert 5 has a flipped byte and which ends inside expert 6's record (the
    // table, read at open, stays in memory): reads in flight when one fails.
    auto const path = temp_file("readers_bad.smoe");
    fs::copy_file(fx.path, path, fs::copy_options::overwrite_existing);
    auto const file = store::PackedFile::open(path);
    auto const& L = file->layers()[0];
    {
        std::fstream f(path, std::ios::in | std::ios::out | std::ios::binary);
        f.seekg(std::streamoff(file->record(L, 5).offset + 100));
        char const b = char(f.get() ^ 0x10);
        f.seekp(std::streamoff(file->record(L, 5).offset + 100));
        f.put(b);
    }
    fs::resize_file(path, file->record(L, 6).offset + 4096);
    auto c4 = m.config();
    c4.router.top_k = 4;
    Layer ref4(c4, {MatrixView<float const>(m.gate.data(), m.E, m.d), {},
                    smoe::expert::SwiGLUWeights<float>::dense(m.w1.data(), m.w3.data(), m.w2.data(), c4.expert)});
    for (std::int32_t readers : {0, 4})
        for (std::int64_t slots : {1, 8}) {
            CAPTURE(readers, slots);
            auto c = m.config({.residency = store::Residency::cached, .budget_bytes = std::size_t(slots) * slot, .stream_overflow = false,
                               .read_threads = readers, .read_piece_bytes = 4096});
            c.router.top_k = 4;
            smoe::expert::SwiGLUWeights<float> pw;
            pw.packed = {file, 0, {}};
            Layer l(c, {MatrixView<float const>(fx.m.gate.data(), fx.m.E, fx.m.d), {}, pw});
            l.set_thread_pool(pool);
            auto& st = l.experts().store();
            std::vector<float> y(std::size_t(m.d)), y4(y.size());
            std::vector<float> const w(4, 0.25f);
            auto call = [&](std::vector<std::int32_t> const& ids) {
                for (auto* p : {&l, &ref4})
                    p->forward_routed(MatrixView<float const>(fx.m.x.data(), 1, fx.m.d), MatrixView<std::int32_t const>(ids.data(), 1, 4),
                                      MatrixView<float const>(w.data(), 1, 4), MatrixView<float>((p == &l ? y : y4).data(), 1, fx.m.d));
                return y == y4;
            };
            CHECK_THROWS_WITH(call({0, 1, 5, 2}), Contains(path.string() + ": layer 0 expert 5 checksum'"));
            st.wait_idle();
            // Nothing held: a one-slot cache still runs a call; the good records read meanwhile are kept.
            CHECK(call({0, 1, 2, 3}));
            CHECK_THROWS_WITH(call({3, 6, 1, 7}), Contains(": layer 0 expert ") && Contains(" record' = unreadable at offset"));
            st.wait_idle();
            CHECK(call({3, 4, 1, 2}));
            auto cached = st.cached_experts();
            CHECK(std::find(cached.begin(), cached.end(), 5) == cached.end());
            CHECK(std::find(cached.begin(), cached.end(), 6) == cached.end());
            if (slots == 8) CHECK(st.stats().hits >= 5);  // 1 and 2 the second time, 3 and 1 the fourth
        }
    std::error_code ec;
    fs::remove(path, ec);
}

TEST_CASE("quantised experts of mixed formats from a packed file give the resident bits", "[store][quant]") {
    using smoe::quant::Format;
    Model const m(15);
    // The formats smoe's quantiser writes (FP8 and MXFP4 come from checkpoints; their records are bytes
    // like these to the store).
    std::vector<Format> const gu = {Format::int4(16), Format::int8_channel(), Format::bf16(), Format::f32(),
                                    Format::int4(0), Format::int4(24), Format::int4(16), Format::bf16()};
    std::vector<Format> const dn = {Format::int4(8), Format::int8_channel(), Format::bf16(), Format::int4(0),
                                    Format::f32(), Format::int4(20), Format::int8_channel(), Format::f32()};
    QLayer::Config c;
    c.router = {.num_experts = m.E, .top_k = 2, .norm_topk_prob = true};
    c.expert = {m.d, m.f, m.E};
    c.max_tokens = m.T;
    MatrixView<float const> const gate(m.gate.data(), m.E, m.d);
    QLayer ref(c, {gate, {}, smoe::expert::QuantSwiGLUWeights::quantized(m.w1.data(), m.w3.data(), m.w2.data(), c.expert, gu, dn)});
    auto const want = run(ref, m.x, m.d, m.T);
    auto const path = temp_file("quant.smoe");
    {  // streaming: one single-expert QuantSwiGLU at a time
        store::PackedWriter w(path);
        store::add_layer_streaming(w, 7, m.E, [&](std::int64_t e, auto&& sink) {
            auto one_cfg = c.expert;
            one_cfg.num_experts = 1;
            std::int64_t const fd = m.f * m.d;
            sink(smoe::expert::QuantSwiGLU(one_cfg, smoe::expert::QuantSwiGLUWeights::quantized(m.w1.data() + e * fd, m.w3.data() + e * fd,
                                                                                                  m.w2.data() + e * fd, one_cfg, {gu[std::size_t(e)]},
                                                                                                  {dn[std::size_t(e)]})));
        });
        w.finish();
    }
    auto const file = store::PackedFile::open(path);
    CHECK(file->layer(7).kind == store::ExpertKind::quant_swiglu);
    CHECK(file->record(file->layer(7), 5).gate_up == gu[5]);
    std::size_t slot = 0;
    for (std::int64_t e = 0; e < m.E; ++e) slot = std::max<std::size_t>(slot, file->record(file->layer(7), e).bytes);
    slot = (slot + 4095) / 4096 * 4096;
    for (std::size_t budget : {slot, 3 * slot, std::size_t(1) << 24}) {
        auto qc = c;
        qc.expert.store = {.residency = store::Residency::cached, .budget_bytes = budget, .eviction = store::Eviction::lfu};
        smoe::expert::QuantSwiGLUWeights w;
        w.packed = {file, 7, {}};
        QLayer l(qc, {gate, {}, w});
        CHECK(run(l, m.x, m.d, m.T) == want);
        for (std::int64_t e = 0; e < m.E; ++e) CHECK(l.experts().format_name(e) == ref.experts().format_name(e));
    }
    {  // mapped, and read by a layer whose int8 dot option packs otherwise
        auto qc = c;
        qc.expert.store = {.residency = store::Residency::mapped};
        smoe::expert::QuantSwiGLUWeights w;
        w.packed = {file, 7, {}};
        QLayer l(qc, {gate, {}, w});
        CHECK(run(l, m.x, m.d, m.T) == want);
        qc.expert.int8_dot = smoe::expert::Int8Dot::portable;
        CHECK_THROWS_WITH(QLayer(qc, {gate, {}, w}), Contains("layer 7 packing' = plain panels: expected int8 dot panels"));
        CHECK_THROWS_WITH(m.packed(file, {}, 7), Contains("layer 7 expert type' = QuantSwiGLU: expected SwiGLU<float>"));
    }
    fs::remove(path);
}

TEST_CASE("MXFP4 and int4 experts packed for the int8 dot path give the resident bits from a file", "[store][quant]") {
    using smoe::quant::Format;
    using smoe::quant::Matrix;
    std::int64_t const d = 64, f = 96, E = 4, T = 8;  // MXFP4 needs in_features % 32 == 0
    std::mt19937_64 rng(1512);
    auto matrix = [&](Format const& fm, std::int64_t R, std::int64_t C) {
        Matrix x;
        x.format = fm;
        x.rows = R;
        x.cols = C;
        std::uint64_t const codes = fm.kind == smoe::quant::Kind::int8_channel ? 256 : 16;
        for (std::int64_t i = 0; i < R * C; ++i) x.codes.push_back(std::uint8_t(rng() % codes));
        for (std::int64_t i = 0; i < R * fm.groups(C); ++i) {
            x.scales.push_back(fm.kind == smoe::quant::Kind::mxfp4 ? smoe::quant::e8m0_to_float(std::uint8_t(118 + rng() % 8)) : 0.01f + 0.001f * float(rng() % 50));
            if (fm.kind == smoe::quant::Kind::int4) x.zeros.push_back(fm.symmetric ? 8 : std::uint8_t(rng() % 16));
        }
        x.validate("test");
        return x;
    };
    std::vector<Format> const gu = {Format::mxfp4(), Format::int4(32, false), Format::mxfp4(), Format::int4(64)};
    std::vector<Format> const dn = {Format::mxfp4(), Format::mxfp4(), Format::int4(32, false), Format::int8_channel()};
    std::vector<smoe::expert::QuantExpertWeights> xs;
    for (std::int64_t e = 0; e < E; ++e) {
        auto const& g = gu[std::size_t(e)];
        xs.push_back({matrix(g, f, d), matrix(g, f, d), matrix(dn[std::size_t(e)], d, f)});
    }
    QLayer::Config c;
    c.router = {.num_experts = E, .top_k = 2, .norm_topk_prob = true};
    c.expert = {d, f, E};
    c.expert.int8_dot = smoe::expert::Int8Dot::on;
    c.max_tokens = T;
    std::vector<float> const gate = smoe_test::normal(rng, std::size_t(E * d), 0.5), x = smoe_test::normal(rng, std::size_t(T * d), 1.0);
    MatrixView<float const> const gv(gate.data(), E, d);
    QLayer ref(c, {gv, {}, smoe::expert::QuantSwiGLUWeights::of(xs)});
    for (std::int64_t e = 0; e < E; ++e) CHECK(ref.experts().dot_path(e).starts_with("int8 dot"));
    auto const want = run(ref, x, d, T);
    auto const path = temp_file("mxfp4_dot.smoe");
    {
        store::PackedWriter w(path);
        store::add_layer_streaming(w, 2, E, [&](std::int64_t e, auto&& sink) {
            auto one = c.expert;
            one.num_experts = 1;
            sink(smoe::expert::QuantSwiGLU(one, smoe::expert::QuantSwiGLUWeights::of(std::span(&xs[std::size_t(e)], 1))));
        });
        w.finish();
    }
    auto const file = store::PackedFile::open(path);
    for (auto const residency : {store::Residency::mapped, store::Residency::cached}) {
        auto qc = c;
        qc.expert.store = {.residency = residency, .budget_bytes = std::size_t(1) << 22};
        smoe::expert::QuantSwiGLUWeights w;
        w.packed = {file, 2, {}};
        QLayer l(qc, {gv, {}, w});
        CHECK(run(l, x, d, T) == want);
        for (std::int64_t e = 0; e < E; ++e) CHECK(l.experts().dot_path(e) == ref.experts().dot_path(e));
    }
    fs::remove(path);
}

TEST_CASE("act-order int4 experts carry their column order in a packed file", "[store][quant]") {
    using smoe::quant::Format;
    Model const m(17, 3);
    std::mt19937_64 rng(17);
    // GPTQ desc_act: group g_idx[i] of input column i, whole groups permuted (formats.md §5).
    auto act = [&](std::int64_t R, std::int64_t C, std::int64_t g, std::vector<std::int32_t> const* gidx) {
        smoe::quant::Matrix x;
        x.format = Format::int4(g);
        x.format.act_order = true;
        x.rows = R;
        x.cols = C;
        for (std::int64_t i = 0; i < R * C; ++i) x.codes.push_back(std::uint8_t(rng() % 16));
        for (std::int64_t i = 0; i < R * (C / g); ++i) x.scales.push_back(0.01f + 0.001f * float(rng() % 50));
        x.zeros.assign(std::size_t(R * (C / g)), 8);
        if (gidx) {
            x.gidx = *gidx;
        } else {
            std::vector<std::int32_t> perm(static_cast<std::size_t>(C));
            for (std::int64_t i = 0; i < C; ++i) perm[std::size_t(i)] = std::int32_t(i);
            std::shuffle(perm.begin(), perm.end(), rng);
            for (auto p : perm) x.gidx.push_back(std::int32_t(p / g));
        }
        return x;
    };
    std::vector<smoe::expert::QuantExpertWeights> experts;
    for (std::int64_t e = 0; e < m.E; ++e) {
        auto gate = act(m.f, m.d, 16, nullptr);
        auto up = act(m.f, m.d, 16, &gate.gidx);  // gate and up share their input's order
        experts.push_back({gate, up, act(m.d, m.f, 8, nullptr)});
    }
    QLayer::Config c;
    c.router = {.num_experts = m.E, .top_k = 2, .norm_topk_prob = true};
    c.expert = {m.d, m.f, m.E};
    c.max_tokens = m.T;
    MatrixView<float const> const gate(m.gate.data(), m.E, m.d);
    smoe::expert::QuantSwiGLUWeights rw;
    rw.gate_up.assign(std::size_t(m.E), experts[0].gate.format);
    rw.down.assign(std::size_t(m.E), experts[0].down.format);
    rw.load = [&](std::int64_t e) { return experts[std::size_t(e)]; };
    QLayer ref(c, {gate, {}, rw});
    auto const want = run(ref, m.x, m.d, m.T);
    auto const path = temp_file("actorder.smoe"), bad = temp_file("actorder_bad.smoe");
    {
        store::PackedWriter w(path);
        store::add_layer(w, 0, ref.experts());
        w.finish();
    }
    auto const file = store::PackedFile::open(path);
    CHECK(file->record(file->layer(0), 1).gate_up.act_order);
    std::size_t const slot = (file->record(file->layer(0), 0).bytes + 4095) / 4096 * 4096;
    for (auto residency : {store::Residency::mapped, store::Residency::cached}) {
        auto qc = c;
        qc.expert.store = {.residency = residency, .budget_bytes = slot};  // cached: one slot
        smoe::expert::QuantSwiGLUWeights w;
        w.packed = {file, 0, {}};
        QLayer l(qc, {gate, {}, w});
        CHECK(run(l, m.x, m.d, m.T) == want);
        CHECK(l.experts().format_name(1) == ref.experts().format_name(1));
    }
    // Expert 1's gate_up order (after its panels) names a group the matrix does not have.
    auto bytes = read_all(path);
    auto const& r1 = file->record(file->layer(0), 1);
    std::int32_t const g = 99;
    std::memcpy(bytes.data() + r1.offset + r1.bytes - 4 * std::size_t(m.d + m.f), &g, 4);
    write_all(bad, bytes);
    smoe::expert::QuantSwiGLUWeights w;
    w.packed = {store::PackedFile::open(bad), 0, {}};
    CHECK_THROWS_WITH(QLayer(c, {gate, {}, w}), Contains("layer 0 expert 1 gate_up.gidx element [0]' = 99: expected 0 <= g_idx < G = 3"));
    fs::remove(path);
    fs::remove(bad);
}

TEST_CASE("every corruption of a packed file is an error naming the file, layer, expert and what differs", "[store][errors]") {
    Packed fx(16, "good.smoe", 8, 3);
    auto const& [m, ref, path, file] = std::tie(fx.m, fx.ref, fx.path, fx.file);
    auto const bad = temp_file("bad.smoe");
    auto const good = read_all(path);
    auto const& L = file->layer(3);
    auto const table = good.size() - (sizeof(store::LayerEntry) + std::size_t(m.E) * sizeof(store::ExpertEntry));
    auto open_bad = [&](auto&& edit) {
        auto b = good;
        edit(b);
        write_all(bad, b);
        return [&] { (void)store::PackedFile::open(bad); };
    };
    auto header_field = [&](std::vector<std::byte>& b, std::size_t off, std::uint32_t v) {  // and a valid header checksum
        std::memcpy(b.data() + off, &v, 4);
        store::FileHeader h;
        std::memcpy(&h, b.data(), sizeof h);
        h.header_checksum = 0;
        h.header_checksum = store::xxh64(std::as_bytes(std::span(&h, 1)));
        std::memcpy(b.data(), &h, sizeof h);
    };
    std::string const name = bad.string();
    CHECK_THROWS_WITH(open_bad([](auto& b) { b.resize(b.size() - 100); })(), Contains(name + ": size'") && Contains("as the header records"));
    CHECK_THROWS_WITH(open_bad([](auto& b) { b.resize(64); })(), Contains(name + ": size' = 64"));
    CHECK_THROWS_WITH(open_bad([](auto& b) { b[20] ^= std::byte{1}; })(), Contains(name + ": header checksum'"));
    CHECK_THROWS_WITH(open_bad([](auto& b) { b[0] = std::byte{'X'}; })(), Contains(name + ": magic'"));
    CHECK_THROWS_WITH(open_bad([&](auto& b) { header_field(b, 8, 6); })(), Contains(name + ": version' = 6: expected 5 (the format"));
    // Versions 1 to 4 predate the int8 dot panels without zero tables (and 1-3 the FP8 panels' pair groups,
    // 1-2 the expert ids, 1 the ternary fields of FormatEntry): refused, naming both.
    for (std::uint32_t v : {1u, 2u, 3u, 4u})
        CHECK_THROWS_WITH(open_bad([&](auto& b) { header_field(b, 8, v); })(),
                          Contains(name + ": version' = " + std::to_string(v) + ": expected 5 (the format this smoe reads: an older smoe-pack wrote it"));
    CHECK_THROWS_WITH(open_bad([&](auto& b) { b[table + 200] ^= std::byte{4}; })(), Contains(name + ": table checksum'"));
    // A payload byte of expert 5: the table still opens; the record fails its checksum when read.
    auto const r5 = file->record(L, 5);
    {
        auto b = good;
        b[r5.offset + r5.bytes / 2] ^= std::byte{0x10};
        write_all(bad, b);
    }
    auto const broken = store::PackedFile::open(bad);
    CHECK_THROWS_WITH(broken->verify_all(), Contains(name + ": layer 3 expert 5 checksum'"));
    CHECK_THROWS_WITH(m.packed(broken, {.residency = store::Residency::resident}, 3), Contains("layer 3 expert 5 checksum"));
    for (auto residency : {store::Residency::mapped, store::Residency::cached}) {
        CAPTURE(store::to_string(residency));
        Layer l = m.packed(broken, {.residency = residency, .budget_bytes = 2 * 65536}, 3);
        std::vector<float> y(std::size_t(m.d));
        float const one = 1.0f;
        auto route = [&](std::int32_t e) {
            l.forward_routed(MatrixView<float const>(fx.m.x.data(), 1, fx.m.d), MatrixView<std::int32_t const>(&e, 1, 1),
                             MatrixView<float const>(&one, 1, 1), MatrixView<float>(y.data(), 1, fx.m.d));
        };
        route(4);
        CHECK_THROWS_WITH(route(5), Contains("layer 3 expert 5 checksum"));
        CHECK_NOTHROW(route(6));  // the failed read left its slot free and nothing held
        CHECK_THROWS_WITH(route(5), Contains("layer 3 expert 5 checksum"));
    }
    // Shapes and counts the reader holds the file to.
    auto cfg = m.config().expert;
    smoe::expert::SwiGLUWeights<float> w;
    w.packed = {file, 3, {}};
    CHECK_NOTHROW(smoe::expert::SwiGLU<float>(cfg, w));
    cfg.intermediate_size = 32;
    CHECK_THROWS_WITH(smoe::expert::SwiGLU<float>(cfg, w), Contains(path.string() + ": layer 3 intermediate_size' = 40: expected the config's 32"));
    cfg = m.config().expert;
    cfg.hidden_size = 64;
    CHECK_THROWS_WITH(smoe::expert::SwiGLU<float>(cfg, w), Contains("layer 3 hidden_size' = 48"));
    cfg = m.config().expert;
    cfg.num_experts = 7;
    CHECK_THROWS_WITH(smoe::expert::SwiGLU<float>(cfg, w), Contains("layer 3 num_experts' = 8: expected the config's 7"));
    w.packed.layer = 0;
    CHECK_THROWS_WITH(smoe::expert::SwiGLU<float>(m.config().expert, w), Contains(": layer' = 0: expected a layer the file holds (3)"));
    smoe::expert::SwiGLUWeights<smoe::bf16> wb;
    wb.packed = {file, 3, {}};
    smoe::expert::SwiGLUConfig bc = m.config().expert;
    bc.bf16_dot = smoe::expert::Bf16Dot::off;
    CHECK_THROWS_WITH(smoe::expert::SwiGLU<smoe::bf16>(bc, wb), Contains("layer 3 expert type' = SwiGLU<float>: expected SwiGLU<bf16>"));
    // A record whose size disagrees with the layout (an entry edited, its table checksum redone).
    {
        auto b = good;
        store::ExpertEntry x;
        std::size_t const at = table + sizeof(store::LayerEntry) + 2 * sizeof(store::ExpertEntry);
        std::memcpy(&x, b.data() + at, sizeof x);
        x.bytes -= 64;
        std::memcpy(b.data() + at, &x, sizeof x);
        store::FileHeader h;
        std::memcpy(&h, b.data(), sizeof h);
        h.table_checksum = store::xxh64(std::span<std::byte const>(b.data() + table, b.size() - table));
        h.header_checksum = 0;
        h.header_checksum = store::xxh64(std::as_bytes(std::span(&h, 1)));
        std::memcpy(b.data(), &h, sizeof h);
        write_all(bad, b);
        smoe::expert::SwiGLUWeights<float> wr;
        wr.packed = {store::PackedFile::open(bad), 3, {}};
        CHECK_THROWS_WITH(smoe::expert::SwiGLU<float>(m.config().expert, wr), Contains("layer 3 expert 2 record bytes'"));
    }
    // Residency other than resident needs a packed file.
    CHECK_THROWS_WITH(Layer(m.config({.residency = store::Residency::mapped}),
                            {MatrixView<float const>(m.gate.data(), m.E, m.d), {},
                             smoe::expert::SwiGLUWeights<float>::dense(m.w1.data(), m.w3.data(), m.w2.data(), m.config().expert)}),
                      Contains("store.residency' = mapped"));
    fs::remove(bad);
}

TEST_CASE("pre-gating with the next layer's own gate predicts every expert it uses", "[store][pregate]") {
    Packed fx(17, "pregate.smoe");
    auto const& [m, ref, path, file] = std::tie(fx.m, fx.ref, fx.path, fx.file);
    // The "next layer" is this one: its router on the same input picks exactly the predicted experts
    // (top-2 of softmax = top-2 of the logits), so the accuracy is 1; another gate's is lower.
    Layer next = m.packed(file, {.residency = store::Residency::cached, .budget_bytes = std::size_t(1) << 22, .prefetch = true});
    store::PreGate pre(MatrixView<float const>(m.gate.data(), m.E, m.d), {}, 2, m.T);
    std::vector<float> y(m.x.size());
    for (std::int64_t t = 0; t < m.T; ++t) {
        MatrixView<float const> const xt(m.x.data() + t * m.d, 1, m.d);
        auto const ids = pre.predict(xt);
        CHECK(ids.size() == 2);
        pre.prefetch(next.experts().store(), xt);
        next.forward(xt, MatrixView<float>(y.data() + t * m.d, 1, m.d));
    }
    auto const s = next.experts().store().stats();
    CHECK(s.predicted_total == 2 * m.T);
    CHECK(s.prediction_accuracy() == 1.0);
    CHECK(s.routed_pairs == 2 * m.T);
    CHECK(s.routing_consistency() >= 0.0);
    std::vector<float> other(m.gate.rbegin(), m.gate.rend());
    store::PreGate wrong(MatrixView<float const>(other.data(), m.E, m.d), {}, 2, m.T);
    next.experts().store().reset_stats();
    for (std::int64_t t = 0; t < m.T; ++t) {
        MatrixView<float const> const xt(m.x.data() + t * m.d, 1, m.d);
        wrong.prefetch(next.experts().store(), xt);
        next.forward(xt, MatrixView<float>(y.data() + t * m.d, 1, m.d));
    }
    CHECK(next.experts().store().stats().prediction_accuracy() < 1.0);
    CHECK_THROWS_WITH(store::PreGate(MatrixView<float const>(m.gate.data(), m.E, m.d), {}, 9, m.T), Contains("top_k' = 9"));
}
