// Load statistics and balance losses (balance.md §6). Expected values are the spec's worked numbers
// (the §3 example) or hand derivations written out in the test; the random checks compare with a
// second, deliberately naive computation that follows the Hugging Face code's shape ([T, k, E]
// one-hot mask averaged over tokens).

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <numeric>
#include <random>
#include <span>
#include <string>
#include <vector>

#include <catch2/catch.hpp>

#include "common/approx.hpp"
#include "smoe/core/balance_loss.hpp"
#include "smoe/core/stats.hpp"

using Catch::Matchers::Contains;
using smoe::LoadKind;
using smoe::MatrixView;
using smoe::router::ScoreFunc;

namespace {

// CSR offsets [E+1] from per-expert counts.
std::vector<std::int32_t> offsets(std::vector<std::int32_t> const& counts) {
    std::vector<std::int32_t> o(counts.size() + 1, 0);
    std::partial_sum(counts.begin(), counts.end(), o.begin() + 1);
    return o;
}

void record(smoe::LoadStats& s, std::vector<std::int32_t> const& routed, std::vector<std::int32_t> const& kept,
            std::int64_t tokens, std::int64_t slots, std::int64_t null_slots = 0) {
    auto const ro = offsets(routed), ko = offsets(kept);
    s.record(ro, ko, tokens, slots, null_slots);
}

// balance.md §3: T = 8, E = 4, k = 2.
std::vector<float> const kExampleLogits = {2, 1, 0, -1, 1.5f, 0, 1, -1, .5f, 2, 0, 0, 2.5f, 0, .5f, 0,
                                           1, 0, 0, 2,  0,    .5f, 3, 0, 3, 0, 0, 1, 1.2f, 1, 0, 0};
// balance.md §6: the second layer of the two-layer example (6 tokens).
std::vector<float> const kSecondLayerLogits = {0, 0, 1, 2, 0, 1, 0, 2, 1, 0, 0, 2,
                                               0, 0, 2, 1, 0, 1, 2, 0, 2, 0, 0, 1};

MatrixView<float const> view(std::vector<float> const& v, std::int64_t cols) {
    return {v.data(), static_cast<std::int64_t>(v.size()) / cols, cols};
}

constexpr double kRel = 1e-6;

}  // namespace

// ---------------------------------------------------------------------------------------------------
// LoadStats

TEST_CASE("load statistics of the capacity example match the spec on routed and kept counts", "[stats]") {
    smoe::LoadStats s(4);
    // Offsets spelled out once, as the dispatch pass builds them.
    std::vector<std::int32_t> const routed_offsets = {0, 7, 11, 14, 16}, kept_offsets = {0, 4, 8, 11, 13};
    s.record(routed_offsets, kept_offsets, 8, 16, 0);

    smoe_test::check_equal(s.routed, std::vector<std::int64_t>{7, 4, 3, 2});
    smoe_test::check_equal(s.kept, std::vector<std::int64_t>{4, 4, 3, 2});
    smoe_test::check_equal(s.dropped, std::vector<std::int64_t>{3, 0, 0, 0});
    CHECK(s.tokens == 8);
    CHECK(s.slots == 16);

    CHECK(s.mean_load(LoadKind::routed) == Approx(4.0).epsilon(kRel));
    CHECK(s.max_rows(LoadKind::routed) == 7);
    CHECK(s.max_over_mean(LoadKind::routed) == Approx(1.75).epsilon(kRel));
    CHECK(s.max_violation(LoadKind::routed) == Approx(0.75).epsilon(kRel));
    CHECK(s.cv_squared(LoadKind::routed) == Approx(0.21875).epsilon(kRel));

    CHECK(s.mean_load() == Approx(3.25).epsilon(kRel));  // kept is the default kind
    CHECK(s.max_rows() == 4);
    // The spec prints 6 decimals (half a unit of the last one as margin); by hand, max 4 over mean
    // 13/4 is 16/13, MaxVio 3/13, and CV² = (11/16) / (13/4)² = 11/169.
    CHECK(s.max_over_mean(LoadKind::kept) == Approx(1.230769).margin(5e-7));
    CHECK(s.max_violation(LoadKind::kept) == Approx(0.230769).margin(5e-7));
    CHECK(s.cv_squared(LoadKind::kept) == Approx(0.065089).margin(5e-7));
    CHECK(s.max_over_mean(LoadKind::kept) == Approx(16.0 / 13.0).epsilon(1e-12));
    CHECK(s.max_violation(LoadKind::kept) == Approx(3.0 / 13.0).epsilon(1e-12));
    CHECK(s.cv_squared(LoadKind::kept) == Approx(11.0 / 169.0).epsilon(1e-12));

    CHECK(s.dead_experts(LoadKind::routed) == 0);
    CHECK(s.dead_experts(LoadKind::kept) == 0);
    CHECK(s.active_experts() == 4);
    CHECK(s.drop_rate() == Approx(3.0 / 16.0).epsilon(kRel));
}

TEST_CASE("tile padding fraction counts the rows that round each expert up to the tile height", "[stats]") {
    smoe::LoadStats s(4);
    record(s, {7, 4, 3, 2}, {4, 4, 3, 2}, 8, 16);
    // kept [4,4,3,2], M = 4: padded 4+4+4+4 = 16, padding 0+0+1+2 = 3.
    CHECK(s.tile_padding_fraction(4) == Approx(3.0 / 16.0).epsilon(kRel));
    // routed [7,4,3,2], M = 4: padded 8+4+4+4 = 20, padding 1+0+1+2 = 4.
    CHECK(s.tile_padding_fraction(4, LoadKind::routed) == Approx(4.0 / 20.0).epsilon(kRel));
    // kept, M = 8: padded 4·8 = 32, padding 32 - 13 = 19.
    CHECK(s.tile_padding_fraction(8) == Approx(19.0 / 32.0).epsilon(kRel));
    CHECK(s.tile_padding_fraction(1) == 0.0);
}

TEST_CASE("cumulative counters sum over calls and reset keeps the last call readable", "[stats][cumulative]") {
    smoe::LoadStats s(4);
    record(s, {7, 4, 3, 2}, {4, 4, 3, 2}, 8, 16);
    record(s, {0, 2, 2, 0}, {0, 2, 2, 0}, 2, 4);
    record(s, {1, 0, 3, 0}, {1, 0, 2, 0}, 3, 6, 2);  // 4 real slots + 2 null slots = T·k

    smoe_test::check_equal(s.cumulative_routed, std::vector<std::uint64_t>{8, 6, 8, 2});
    smoe_test::check_equal(s.cumulative_kept, std::vector<std::uint64_t>{5, 6, 7, 2});
    smoe_test::check_equal(s.cumulative_dropped, std::vector<std::uint64_t>{3, 0, 1, 0});
    CHECK(s.cumulative_tokens == 13);
    CHECK(s.cumulative_slots == 26);
    CHECK(s.cumulative_null_slots == 2);
    CHECK(s.calls == 3);
    CHECK(s.dead_experts_cumulative() == 0);

    // The derived metrics are those of the last call.
    CHECK(s.null_slots == 2);
    CHECK(s.dead_experts() == 2);
    CHECK(s.active_experts() == 2);
    CHECK(s.drop_rate() == Approx(1.0 / 6.0).epsilon(kRel));

    s.reset();
    smoe_test::check_equal(s.cumulative_routed, std::vector<std::uint64_t>{0, 0, 0, 0});
    smoe_test::check_equal(s.cumulative_kept, std::vector<std::uint64_t>{0, 0, 0, 0});
    smoe_test::check_equal(s.cumulative_dropped, std::vector<std::uint64_t>{0, 0, 0, 0});
    CHECK(s.cumulative_tokens == 0);
    CHECK(s.cumulative_slots == 0);
    CHECK(s.cumulative_null_slots == 0);
    CHECK(s.calls == 0);
    smoe_test::check_equal(s.routed, std::vector<std::int64_t>{1, 0, 3, 0});
    smoe_test::check_equal(s.kept, std::vector<std::int64_t>{1, 0, 2, 0});
    CHECK(s.tokens == 3);
    CHECK(s.slots == 6);
}

TEST_CASE("an expert is dead over the window only while its cumulative kept count is zero", "[stats][cumulative]") {
    smoe::LoadStats s(4);
    CHECK(s.dead_experts_cumulative() == 4);  // an empty window: nothing has been computed
    record(s, {1, 2, 2, 0}, {0, 2, 2, 0}, 3, 6, 1);
    CHECK(s.dead_experts_cumulative() == 2);  // experts 0 and 3; a routed-but-dropped slot is not compute
    record(s, {1, 0, 2, 0}, {1, 0, 2, 0}, 3, 3);
    CHECK(s.dead_experts() == 2);             // experts 1 and 3 in this call
    CHECK(s.dead_experts_cumulative() == 1);  // only expert 3 over both
    s.reset();
    CHECK(s.dead_experts_cumulative() == 4);
}

TEST_CASE("zero tokens give zero counts and zero ratios without dividing by zero", "[stats][edge]") {
    smoe::LoadStats s(4);
    record(s, {0, 0, 0, 0}, {0, 0, 0, 0}, 0, 0);
    for (auto kind : {LoadKind::routed, LoadKind::kept}) {
        CHECK(s.mean_load(kind) == 0.0);
        CHECK(s.max_rows(kind) == 0);
        CHECK(s.max_over_mean(kind) == 0.0);
        CHECK(s.max_violation(kind) == 0.0);
        CHECK(s.cv_squared(kind) == 0.0);
        CHECK(s.tile_padding_fraction(16, kind) == 0.0);
        CHECK(s.dead_experts(kind) == 4);
    }
    CHECK(s.drop_rate() == 0.0);
    CHECK(s.calls == 1);

    smoe::LoadStats none;  // no expert at all
    CHECK(none.num_experts() == 0);
    CHECK(none.max_over_mean() == 0.0);
    CHECK(none.cv_squared() == 0.0);
    CHECK(none.max_rows() == 0);
}

// ---------------------------------------------------------------------------------------------------
// Balance losses

TEST_CASE("balance losses on the capacity example match the spec's three normalisations", "[stats][loss]") {
    auto const L = view(kExampleLogits, 4);
    CHECK(smoe::aux_loss_megatron(L, 2) == Approx(1.21259196).epsilon(kRel));
    CHECK(smoe::aux_loss_hf(L, 2) == Approx(2.42518392).epsilon(kRel));
    CHECK(smoe::aux_loss_first_choice(L) == Approx(1.39383682).epsilon(kRel));
    // DeepSpeed topkgating, E²/k · mean_e(mean_t p · c/T), is the Megatron value: with the spec's
    // mean_t p and c = [7,4,3,2] written out by hand it gives the same number.
    std::vector<double> const mean_p = {0.44691841, 0.20209210, 0.21159160, 0.13939789};
    std::vector<double> const c = {7, 4, 3, 2};
    double mean_e = 0;
    for (int e = 0; e < 4; ++e) mean_e += mean_p[e] * c[e] / 8.0 / 4.0;
    CHECK(16.0 / 2.0 * mean_e == Approx(smoe::aux_loss_megatron(L, 2)).epsilon(kRel));
}

TEST_CASE("balance losses scale linearly with their coefficient", "[stats][loss]") {
    auto const L = view(kExampleLogits, 4);
    CHECK(smoe::aux_loss_megatron(L, 2, ScoreFunc::softmax, 1e-2) == Approx(1.21259196e-2).epsilon(kRel));
    CHECK(smoe::aux_loss_hf(L, 2, 1e-3) == Approx(2.42518392e-3).epsilon(kRel));
    CHECK(smoe::aux_loss_first_choice(L, 0.5) == Approx(0.5 * 1.39383682).epsilon(kRel));
    CHECK(smoe::z_loss(L, 1e-3) == Approx(0.00685830).epsilon(1e-5));
    CHECK(smoe::aux_loss_megatron(L, 2, ScoreFunc::softmax, 0.0) == 0.0);
}

TEST_CASE("the pooled Hugging Face loss of two layers differs from the mean of the per-layer losses", "[stats][loss]") {
    std::vector<float> const first6(kExampleLogits.begin(), kExampleLogits.begin() + 24);
    auto const L1 = view(first6, 4), L2 = view(kSecondLayerLogits, 4);
    double const m1 = smoe::aux_loss_megatron(L1, 2), m2 = smoe::aux_loss_megatron(L2, 2);
    CHECK(m1 == Approx(1.16348338).epsilon(kRel));
    CHECK(m2 == Approx(1.15446806).epsilon(kRel));
    CHECK((m1 + m2) / 2 == Approx(1.15897572).epsilon(kRel));  // Megatron's logged value

    std::vector<MatrixView<float const>> const layers = {L1, L2};
    double const pooled = smoe::aux_loss_hf(layers, 2);
    CHECK(pooled == Approx(2.04166842).epsilon(kRel));
    CHECK(pooled / 2 == Approx(1.02083421).epsilon(kRel));
    // Opposite imbalances cancel once the tokens are pooled: well below k × the per-layer mean.
    CHECK(pooled < 2 * (m1 + m2) / 2 - 0.2);

    // Pooling is concatenation along tokens: the same as one layer of the 12 rows.
    std::vector<float> concatenated = first6;
    concatenated.insert(concatenated.end(), kSecondLayerLogits.begin(), kSecondLayerLogits.end());
    CHECK(smoe::aux_loss_hf(view(concatenated, 4), 2) == Approx(pooled).epsilon(1e-12));
}

TEST_CASE("the router z-loss of the capacity example matches the spec per token and on average",
          "[stats][loss][zloss]") {
    auto const L = view(kExampleLogits, 4);
    std::vector<double> const lse = {2.44019, 2.14802, 2.40132, 2.76198, 2.49381, 3.16692, 3.21100, 2.08423};
    for (std::int64_t t = 0; t < 8; ++t) {
        INFO("token " << t);
        // One token: the z-loss is the square of its logsumexp, which is positive here.
        CHECK(std::sqrt(smoe::z_loss(L.block(t, 1))) == Approx(lse[t]).epsilon(1e-5));
    }
    CHECK(smoe::z_loss(L) == Approx(6.85830091).epsilon(kRel));
    CHECK(smoe::z_loss(L, 1e-3) == Approx(0.00685830).epsilon(1e-5));
}

TEST_CASE("the z-loss takes the logsumexp stably for large and very negative logits", "[stats][loss][zloss]") {
    // exp(1000) overflows double and exp(-1000) underflows; logsumexp of 4 equal values is v + ln 4.
    for (float v : {1000.0f, -1000.0f, 0.0f}) {
        INFO("logit " << v);
        std::vector<float> const row(4, v);
        double const expect = (double(v) + std::log(4.0)) * (double(v) + std::log(4.0));
        CHECK(smoe::z_loss(view(row, 4)) == Approx(expect).epsilon(1e-12));
    }
    // One dominant logit: logsumexp = 80 + log(1 + 3·exp(-80)) = 80 in double.
    std::vector<float> const row = {80.0f, 0.0f, 0.0f, 0.0f};
    CHECK(smoe::z_loss(view(row, 4)) == Approx(6400.0).epsilon(1e-12));
}

TEST_CASE("uniform routing costs coeff under Megatron and first choice and k times coeff under HF", "[stats][loss]") {
    // All logits equal within a token: p is uniform whatever top-k picks (ties go to experts 0..k-1),
    // so Σ_e S_e c_e = (T/E) · k·T and Megatron = E/(k·T²) · k·T²/E = 1. Rows differ from each other
    // so that the per-row max shift is exercised.
    std::int64_t const T = 5, E = 4;
    std::vector<float> logits(T * E);
    for (std::int64_t t = 0; t < T; ++t)
        for (std::int64_t e = 0; e < E; ++e) logits[t * E + e] = 0.5f * float(t) - 1.0f;
    auto const L = view(logits, E);
    for (std::int64_t k = 1; k <= E; ++k) {
        INFO("k = " << k);
        CHECK(smoe::aux_loss_megatron(L, k) == Approx(1.0).epsilon(1e-12));
        CHECK(smoe::aux_loss_megatron(L, k, ScoreFunc::sigmoid) == Approx(1.0).epsilon(1e-12));
        CHECK(smoe::aux_loss_megatron(L, k, ScoreFunc::softmax, 0.01) == Approx(0.01).epsilon(1e-12));
        CHECK(smoe::aux_loss_hf(L, k) == Approx(double(k)).epsilon(1e-12));
    }
    CHECK(smoe::aux_loss_first_choice(L) == Approx(1.0).epsilon(1e-12));
}

TEST_CASE("top-k counts for the loss break equal logits toward the lower expert id", "[stats][loss][ties]") {
    // E = 3, k = 1, T = 2. Token 0 [1,1,0] ties experts 0 and 1; token 1 [0,2,0] picks expert 1.
    // Lower id: c = [1,1,0]; the other order would give c = [0,2,0] and a different value.
    std::vector<float> const logits = {1, 1, 0, 0, 2, 0};
    double const e = std::exp(1.0), e2 = std::exp(2.0);
    double const p0[3] = {e / (2 * e + 1), e / (2 * e + 1), 1 / (2 * e + 1)};
    double const p1[3] = {1 / (e2 + 2), e2 / (e2 + 2), 1 / (e2 + 2)};
    double const S0 = p0[0] + p1[0], S1 = p0[1] + p1[1];
    // E/(k·T²) = 3/4.
    double const lower_id = 0.75 * (S0 * 1 + S1 * 1);
    double const other = 0.75 * (S1 * 2);
    REQUIRE(std::abs(lower_id - other) > 1e-3);
    CHECK(smoe::aux_loss_megatron(view(logits, 3), 1) == Approx(lower_id).epsilon(1e-12));
    CHECK(smoe::aux_loss_first_choice(view(logits, 3)) == Approx(lower_id).epsilon(1e-12));
}

TEST_CASE("sigmoid scores are normalised by their row sum before the Megatron loss", "[stats][loss][sigmoid]") {
    // T = 1, E = 2, k = 1, logits [0, ln 3]: sigmoid [1/2, 3/4] -> p = [0.4, 0.6], softmax p = [1/4, 3/4].
    // The top-1 is expert 1, so the loss is E · p_1 = 1.2 (sigmoid) and 1.5 (softmax).
    std::vector<float> const logits = {0.0f, float(std::log(3.0))};
    CHECK(smoe::aux_loss_megatron(view(logits, 2), 1, ScoreFunc::sigmoid) == Approx(1.2).epsilon(kRel));
    CHECK(smoe::aux_loss_megatron(view(logits, 2), 1, ScoreFunc::softmax) == Approx(1.5).epsilon(kRel));

    // Logits near -800: every sigmoid underflows in double, yet sigmoid(l) ≈ exp(l) there, so the exact
    // ratios are those of a softmax: p_0 = 1 / (1 + e^-1) to within e^-800.
    std::vector<float> const tiny = {-800.0f, -801.0f};
    CHECK(smoe::aux_loss_megatron(view(tiny, 2), 1, ScoreFunc::sigmoid) ==
          Approx(2.0 / (1.0 + std::exp(-1.0))).epsilon(1e-12));
}

namespace {

// A second computation, shaped like HF load_balancing_loss_func: p by a plain softmax (or sigmoid
// divided by its sum), a full sort per token (p descending, id ascending), a one-hot mask [T, k, E]
// averaged over tokens, multiplied with mean_t p, summed over k and E, times E.
double naive_hf(std::vector<float> const& logits, std::int64_t E, std::int64_t k, bool sigmoid = false) {
    std::int64_t const T = static_cast<std::int64_t>(logits.size()) / E;
    if (T == 0) return 0.0;
    std::vector<double> mean_p(E, 0.0);
    std::vector<std::vector<double>> tokens_per_expert(k, std::vector<double>(E, 0.0));
    for (std::int64_t t = 0; t < T; ++t) {
        std::vector<double> p(E);
        double sum = 0;
        for (std::int64_t e = 0; e < E; ++e) {
            double const x = logits[t * E + e];
            p[e] = sigmoid ? 1.0 / (1.0 + std::exp(-x)) : std::exp(x);
            sum += p[e];
        }
        for (auto& v : p) v /= sum;
        std::vector<std::int64_t> order(E);
        std::iota(order.begin(), order.end(), 0);
        std::sort(order.begin(), order.end(), [&](auto a, auto b) { return p[a] > p[b] || (p[a] == p[b] && a < b); });
        for (std::int64_t j = 0; j < k; ++j) tokens_per_expert[j][order[j]] += 1.0 / double(T);
        for (std::int64_t e = 0; e < E; ++e) mean_p[e] += p[e] / double(T);
    }
    double loss = 0;
    for (std::int64_t j = 0; j < k; ++j)
        for (std::int64_t e = 0; e < E; ++e) loss += tokens_per_expert[j][e] * mean_p[e];
    return loss * double(E);
}

// Normal logits on a 0.25 grid: exact ties are common, distinct values are far apart.
std::vector<float> grid_logits(std::mt19937_64& rng, std::int64_t n) {
    std::normal_distribution<double> dist(0.0, 1.5);
    std::vector<float> v(n);
    for (auto& x : v) x = static_cast<float>(std::round(dist(rng) / 0.25) * 0.25);
    return v;
}

}  // namespace

TEST_CASE("balance losses agree with a naive HF-shaped computation on random logits", "[stats][loss][random]") {
    std::mt19937_64 rng(20240611);
    for (std::int64_t E : {1, 2, 3, 8, 16}) {
        for (std::int64_t T : {1, 7, 33}) {
            auto const logits = grid_logits(rng, T * E);
            auto const L = view(logits, E);
            for (std::int64_t k = 1; k <= E; ++k) {
                INFO("E = " << E << ", T = " << T << ", k = " << k);
                double const hf = naive_hf(logits, E, k);
                CHECK(smoe::aux_loss_hf(L, k) == Approx(hf).epsilon(1e-12));
                CHECK(smoe::aux_loss_megatron(L, k) == Approx(hf / double(k)).epsilon(1e-12));
                CHECK(smoe::aux_loss_megatron(L, k, ScoreFunc::sigmoid) ==
                      Approx(naive_hf(logits, E, k, true) / double(k)).epsilon(1e-12));
            }
            CHECK(smoe::aux_loss_first_choice(L) == Approx(naive_hf(logits, E, 1)).epsilon(1e-12));
        }
    }
}

TEST_CASE("pooled HF loss over random layers equals the loss of their concatenation", "[stats][loss][random]") {
    std::mt19937_64 rng(7);
    std::int64_t const E = 8, k = 2;
    std::vector<std::vector<float>> layers = {grid_logits(rng, 5 * E), grid_logits(rng, 11 * E), grid_logits(rng, 0),
                                              grid_logits(rng, 3 * E)};
    std::vector<MatrixView<float const>> views;
    std::vector<float> all;
    for (auto const& l : layers) {
        views.push_back(view(l, E));
        all.insert(all.end(), l.begin(), l.end());
    }
    CHECK(smoe::aux_loss_hf(views, k) == Approx(naive_hf(all, E, k)).epsilon(1e-12));
    // A layer pooled with itself has the same means and fractions as the layer alone.
    std::vector<MatrixView<float const>> const twice = {views[1], views[1]};
    CHECK(smoe::aux_loss_hf(twice, k) == Approx(smoe::aux_loss_hf(views[1], k)).epsilon(1e-12));
}

TEST_CASE("losses read strided views the same as contiguous ones", "[stats][loss][view]") {
    // The §3 logits as the first 4 columns of an [8, 6] matrix whose extra columns hold NaN, which
    // must never be read.
    std::vector<float> wide(8 * 6, std::numeric_limits<float>::quiet_NaN());
    for (int t = 0; t < 8; ++t)
        for (int e = 0; e < 4; ++e) wide[t * 6 + e] = kExampleLogits[t * 4 + e];
    MatrixView<float const> const L(wide.data(), 8, 4, 6);
    CHECK(smoe::aux_loss_megatron(L, 2) == Approx(1.21259196).epsilon(kRel));
    CHECK(smoe::aux_loss_hf(L, 2) == Approx(2.42518392).epsilon(kRel));
    CHECK(smoe::aux_loss_first_choice(L) == Approx(1.39383682).epsilon(kRel));
    CHECK(smoe::z_loss(L) == Approx(6.85830091).epsilon(kRel));
}

TEST_CASE("losses of zero tokens are zero", "[stats][loss][edge]") {
    MatrixView<float const> const empty(nullptr, 0, 4);
    CHECK(smoe::aux_loss_megatron(empty, 2) == 0.0);
    CHECK(smoe::aux_loss_megatron(empty, 2, ScoreFunc::sigmoid) == 0.0);
    CHECK(smoe::aux_loss_hf(empty, 2) == 0.0);
    CHECK(smoe::aux_loss_first_choice(empty) == 0.0);
    CHECK(smoe::z_loss(empty) == 0.0);
    std::vector<MatrixView<float const>> const layers = {empty, empty};
    CHECK(smoe::aux_loss_hf(layers, 4) == 0.0);
}

TEST_CASE("non-finite logits are rejected with their token and expert", "[stats][loss][errors]") {
    std::vector<float> logits = kExampleLogits;
    logits[1 * 4 + 2] = std::numeric_limits<float>::quiet_NaN();
    auto const L = view(logits, 4);
    std::string const expected = "smoe: invalid argument 'logits' = nan at token 1, expert 2: expected finite values";
    CHECK_THROWS_AS(smoe::aux_loss_megatron(L, 2), smoe::invalid_argument);
    CHECK_THROWS_WITH(smoe::aux_loss_megatron(L, 2), expected);
    CHECK_THROWS_WITH(smoe::aux_loss_megatron(L, 2, ScoreFunc::sigmoid), expected);
    CHECK_THROWS_WITH(smoe::aux_loss_hf(L, 2), Contains("token 1, expert 2"));
    CHECK_THROWS_WITH(smoe::aux_loss_first_choice(L), expected);
    CHECK_THROWS_WITH(smoe::z_loss(L), expected);

    logits[1 * 4 + 2] = 0.0f;
    logits[6 * 4 + 0] = -std::numeric_limits<float>::infinity();
    CHECK_THROWS_WITH(smoe::z_loss(view(logits, 4)), Contains("token 6, expert 0") && Contains("-inf"));

    // Pooled input names the layer as well.
    std::vector<MatrixView<float const>> const layers = {view(kExampleLogits, 4), view(logits, 4)};
    CHECK_THROWS_WITH(smoe::aux_loss_hf(layers, 2),
                      Contains("'layers_logits'") && Contains("layer 1, token 6, expert 0"));
}

TEST_CASE("top_k outside one to E and other malformed arguments are rejected by name", "[stats][loss][errors]") {
    auto const L = view(kExampleLogits, 4);
    for (std::int64_t k : {0, -1, 5}) {
        INFO("k = " << k);
        CHECK_THROWS_WITH(smoe::aux_loss_megatron(L, k), Contains("'top_k'") && Contains("num_experts (4)"));
        CHECK_THROWS_WITH(smoe::aux_loss_hf(L, k), Contains("'top_k'"));
    }
    CHECK_THROWS_AS(smoe::aux_loss_megatron(L, 5), smoe::invalid_argument);

    // Layers with different expert counts cannot be pooled.
    std::vector<float> const three(6 * 3, 0.0f);
    std::vector<MatrixView<float const>> const mixed = {L, view(three, 3)};
    CHECK_THROWS_WITH(smoe::aux_loss_hf(mixed, 2), Contains("'layers_logits'") && Contains("same number of experts"));
    CHECK_THROWS_WITH(smoe::aux_loss_hf(std::span<MatrixView<float const> const>{}, 2), Contains("'layers_logits'"));

    // No expert column, a bad view, a non-finite coefficient.
    CHECK_THROWS_WITH(smoe::z_loss(MatrixView<float const>(nullptr, 0, 0)), Contains("'logits'") && Contains("expert"));
    CHECK_THROWS_WITH(smoe::aux_loss_megatron(MatrixView<float const>(kExampleLogits.data(), 8, 4, 3), 2),
                      Contains("'logits'") && Contains("ld"));
    CHECK_THROWS_WITH(smoe::aux_loss_megatron(L, 2, ScoreFunc::softmax, std::nan("")), Contains("'coeff'"));
    CHECK_THROWS_WITH(smoe::z_loss(L, std::numeric_limits<double>::infinity()), Contains("'coeff'"));
}
