// Host-side plan of the CUDA layer (include/smoe/kernels/cuda/plan.cuh): the bounds that size the GPU
// grids and the workspace before the routing is known, the tile schedule the device builds, and the
// workspace carving. Plain C++: runs on every machine, GPU or not.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <numeric>
#include <random>
#include <vector>

#include "smoe/core/workspace.hpp"
#include "smoe/kernels/cuda/plan.cuh"

namespace kc = smoe::kernels::cuda;

namespace {

// A random split of nnz rows among E experts, with some experts empty and some holding all rows.
std::vector<std::int32_t> random_counts(std::mt19937_64& rng, std::int64_t nnz, std::int64_t E) {
    std::vector<std::int32_t> c(static_cast<std::size_t>(E), 0);
    std::uniform_int_distribution<std::int64_t> pick(0, E - 1);
    int const mode = static_cast<int>(rng() % 3);
    for (std::int64_t i = 0; i < nnz; ++i) {
        std::int64_t e = pick(rng);
        if (mode == 1) e = 0;                 // one expert takes everything
        if (mode == 2) e = std::min(e, E / 2);  // the upper half stays empty
        ++c[static_cast<std::size_t>(e)];
    }
    return c;
}

std::int64_t tiles_of(std::vector<std::int32_t> const& c, std::int64_t tile) {
    std::int64_t n = 0;
    for (auto v : c) n += (v + tile - 1) / tile;
    return n;
}

}  // namespace

TEST_CASE("max_m_tiles bounds the m-tiles of every split of the rows among the experts", "[cuda][plan]") {
    std::mt19937_64 rng(7);
    for (std::int64_t E : {1, 2, 7, 64, 300})
        for (std::int64_t nnz : {0, 1, 5, 63, 64, 65, 513, 4096}) {
            for (int rep = 0; rep < 20; ++rep) {
                auto const c = random_counts(rng, nnz, E);
                INFO("E " << E << " nnz " << nnz);
                CHECK(tiles_of(c, kc::kTileM) <= kc::max_m_tiles(nnz, E));
                CHECK(tiles_of(c, kc::kTileM) * kc::kTileM <= kc::max_padded_rows(nnz, E));
            }
        }
    // The bound is reached: one row in each of min(E, nnz) experts needs one tile each.
    CHECK(kc::max_m_tiles(5, 64) == 5);
    CHECK(kc::max_m_tiles(64 * 64, 64) == 64 + (64 * 63) / 64);
    CHECK(kc::max_m_tiles(0, 8) == 0);
    CHECK(kc::max_padded_rows(1, 8) == kc::kTileM);
}

TEST_CASE("the host tile schedule lists every row of every expert exactly once, experts in id order", "[cuda][plan]") {
    std::mt19937_64 rng(11);
    for (std::int64_t E : {1, 3, 64})
        for (std::int64_t nnz : {0, 1, 7, 130, 1000}) {
            auto const c = random_counts(rng, nnz, E);
            auto const s = kc::host_tile_schedule(c);
            REQUIRE(s.offsets.size() == c.size() + 1);
            CHECK(s.offsets.back() == nnz);
            CHECK(static_cast<std::int64_t>(s.tile_expert.size()) <= kc::max_m_tiles(nnz, E));
            CHECK(s.padded_offsets.back() == static_cast<std::int32_t>(s.tile_expert.size()) * kc::kTileM);
            std::vector<std::int32_t> covered(c.size(), 0);
            for (std::size_t i = 0; i < s.tile_expert.size(); ++i) {
                auto const e = static_cast<std::size_t>(s.tile_expert[i]);
                CHECK(s.tile_row0[i] == covered[e]);
                CHECK(s.tile_row0[i] < c[e]);
                covered[e] += std::min<std::int32_t>(kc::kTileM, c[e] - s.tile_row0[i]);
                if (i > 0) CHECK(s.tile_expert[i - 1] <= s.tile_expert[i]);
            }
            CHECK(covered == c);
            for (std::size_t e = 0; e < c.size(); ++e) {
                CHECK(s.padded_offsets[e] % kc::kTileM == 0);
                CHECK(s.padded_offsets[e + 1] - s.padded_offsets[e] >= c[e]);
                CHECK(s.padded_offsets[e + 1] - s.padded_offsets[e] < c[e] + kc::kTileM);
            }
            std::int64_t nonempty = std::count_if(c.begin(), c.end(), [](std::int32_t v) { return v > 0; });
            CHECK(static_cast<std::int64_t>(s.active.size()) == nonempty);
            CHECK(std::is_sorted(s.active.begin(), s.active.end()));
        }
}

TEST_CASE("the layer workspace carves disjoint aligned buffers of the planned sizes", "[cuda][plan]") {
    for (auto const& dims : {kc::LayerDims{0, 8, 2, 64, 128}, kc::LayerDims{1, 64, 8, 2048, 1024},
                             kc::LayerDims{513, 6, 2, 40, 72}, kc::LayerDims{7, 5, 5, 100, 36}}) {
        std::size_t const bytes = kc::layer_workspace_size<std::uint16_t>(dims);
        smoe::WorkspaceBuffer buf(bytes);
        smoe::Workspace ws(buf.bytes());
        auto const b = kc::carve_layer<std::uint16_t>(ws, dims);
        CHECK(ws.used() + smoe::kWorkspaceAlignment <= bytes);

        std::int64_t const T = dims.tokens, E = dims.experts, K = dims.slots, nnz = T * K;
        CHECK(b.logits.size() == static_cast<std::size_t>(T * E));
        CHECK(b.offsets.size() == static_cast<std::size_t>(E + 1));
        CHECK(b.slot_rows.size() == static_cast<std::size_t>(nnz));
        CHECK(b.tile_expert.size() == static_cast<std::size_t>(kc::max_m_tiles(nnz, E)));
        CHECK(b.hidden.size() == static_cast<std::size_t>(kc::max_padded_rows(nnz, E) * dims.intermediate));
        CHECK(b.slot_out.size() == static_cast<std::size_t>(nnz * dims.hidden));
        CHECK(b.counters.size() == static_cast<std::size_t>(kc::kCounterCount));

        struct Range {
            std::byte const* begin;
            std::size_t bytes;
        };
        auto const r = [](auto s) { return Range{reinterpret_cast<std::byte const*>(s.data()), s.size_bytes()}; };
        std::vector<Range> all = {r(b.logits),    r(b.expert_ids), r(b.expert_weights), r(b.counts),    r(b.offsets),
                                  r(b.padded_offsets), r(b.token_ids), r(b.weights),     r(b.slots),     r(b.slot_rows),
                                  r(b.tile_expert), r(b.tile_row0), r(b.active),          r(b.counters), r(b.hidden),
                                  r(b.slot_out)};
        std::sort(all.begin(), all.end(), [](Range const& a, Range const& c) { return a.begin < c.begin; });
        for (std::size_t i = 0; i < all.size(); ++i) {
            CHECK(reinterpret_cast<std::uintptr_t>(all[i].begin) % smoe::kWorkspaceAlignment == 0);
            CHECK(all[i].begin + all[i].bytes <= buf.bytes().data() + buf.bytes().size());
            if (i + 1 < all.size()) CHECK(all[i].begin + all[i].bytes <= all[i + 1].begin);
        }
    }
}

TEST_CASE("the layer workspace grows with the token count and fails loudly when planned too small", "[cuda][plan]") {
    std::size_t prev = 0;
    for (std::int64_t T : {0, 1, 8, 64, 512, 4096}) {
        std::size_t const bytes = kc::layer_workspace_size<std::uint16_t>({T, 64, 8, 2048, 1024});
        CHECK(bytes >= prev);
        prev = bytes;
    }
    kc::LayerDims const big{64, 8, 2, 64, 128}, small{8, 8, 2, 64, 128};
    smoe::WorkspaceBuffer buf(kc::layer_workspace_size<float>(small));
    smoe::Workspace ws(buf.bytes());
    CHECK_THROWS_AS(kc::carve_layer<float>(ws, big), smoe::invalid_argument);
}
