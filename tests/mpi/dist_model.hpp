#pragma once
// Helpers of the sharded-layer tests: one rank's share of a LayerModel's experts, a batch split over
// ranks, and the bitwise comparison of output rows.

#include <cstdint>
#include <cstring>
#include <numeric>
#include <random>
#include <vector>

#include "common/data.hpp"
#include "common/layer_model.hpp"
#include "smoe/dist/layer.hpp"

namespace smoe_test {

// The weights of `rank`'s experts, stacked by increasing global id, as that rank would load them.
struct LocalExperts {
    std::vector<float> w1, w3, w2;
    smoe::expert::SwiGLUConfig cfg;
    smoe::expert::SwiGLUWeights<float> weights() const {
        return smoe::expert::SwiGLUWeights<float>::dense(w1.data(), w3.data(), w2.data(), cfg);
    }
};

template <class Router>
LocalExperts local_experts(LayerModel<Router> const& m, smoe::dist::ExpertPlacement const& pl, int rank) {
    LocalExperts out;
    std::int64_t const L = pl.num_local(rank), fd = m.f * m.d;
    out.cfg = {m.d, m.f, L};
    for (std::int64_t l = 0; l < L; ++l) {
        auto const e = pl.global_id(rank, l);
        auto const at = static_cast<std::ptrdiff_t>(e * fd);
        out.w1.insert(out.w1.end(), m.w1.begin() + at, m.w1.begin() + at + fd);
        out.w3.insert(out.w3.end(), m.w3.begin() + at, m.w3.begin() + at + fd);
        out.w2.insert(out.w2.end(), m.w2.begin() + at, m.w2.begin() + at + fd);
    }
    return out;
}

// Tokens of every rank in one batch (rank 0's first), drawn from one seed so every rank holds the same.
struct SplitBatch {
    std::vector<std::int64_t> tokens;  // [P] T of each rank
    std::vector<float> x;              // [sum T, d]
    std::int64_t d = 0;

    std::int64_t total() const { return std::accumulate(tokens.begin(), tokens.end(), std::int64_t{0}); }
    std::int64_t first(int rank) const {
        return std::accumulate(tokens.begin(), tokens.begin() + rank, std::int64_t{0});
    }
    smoe::MatrixView<float const> all() const { return {x.data(), total(), d}; }
    smoe::MatrixView<float const> of(int rank) const {
        return {x.data() + first(rank) * d, tokens[static_cast<std::size_t>(rank)], d};
    }
};

inline SplitBatch split_batch(std::uint64_t seed, std::vector<std::int64_t> tokens, std::int64_t d, double sd = 1.0) {
    SplitBatch b{std::move(tokens), {}, d};
    std::mt19937_64 rng(seed);
    b.x = normal(rng, static_cast<std::size_t>(b.total() * d), sd);
    return b;
}

// Rows [first, first + rows) of a [*, d] buffer equal y bit for bit.
inline bool same_bits(std::vector<float> const& want, std::int64_t first, std::vector<float> const& y, std::int64_t d) {
    if (y.empty()) return true;
    return std::memcmp(want.data() + first * d, y.data(), y.size() * sizeof(float)) == 0;
}

}  // namespace smoe_test
