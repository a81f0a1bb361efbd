// smoe::limits (core/limits.hpp): every size or count that no file bounds has a documented maximum,
// and a value above it is a smoe::invalid_argument naming the key and the limit, before anything is
// allocated or iterated. Issue 14's router-only mutants once hung (Sinkhorn) or died of std::bad_alloc
// (expert-choice capacity); the Hugging Face ones are in test_hf_loader.cpp.

#include <chrono>
#include <cstdint>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include <catch2/catch.hpp>

#include "common/data.hpp"
#include "smoe/route.hpp"
#include "smoe/smoe.hpp"

using Catch::Matchers::Contains;
namespace limits = smoe::limits;

namespace {

constexpr std::int64_t kHuge = std::int64_t(1) << 40;

// The message a limit gives: the argument, its value and the name of the constant it broke. (A
// class, since Catch's `&&` keeps references to its operands.)
struct Names : Catch::MatcherBase<std::string> {
    std::string said, limit;
    Names(std::string const& argument, std::string const& value, std::string const& limit_name)
        : said("'" + argument + "' = " + value), limit("smoe::limits::" + limit_name) {}
    bool match(std::string const& s) const override {
        return s.find(said) != std::string::npos && s.find(limit) != std::string::npos;
    }
    std::string describe() const override { return "names " + said + " and " + limit; }
};
Names names(std::string const& argument, std::string const& value, std::string const& limit) {
    return {argument, value, limit};
}

}  // namespace

TEST_CASE("the limits keep every product of three bounded sizes inside int64", "[limits]") {
    STATIC_REQUIRE(limits::kMaxExperts <= std::numeric_limits<std::int64_t>::max() / limits::kMaxDimension / limits::kMaxDimension);
    STATIC_REQUIRE(limits::kMaxTokens <= std::numeric_limits<std::int64_t>::max() / limits::kMaxExperts / limits::kMaxDimension);
}

TEST_CASE("router configs refuse counts above their documented maxima, naming the key", "[limits][router]") {
    using namespace smoe::router;
    std::string const huge = std::to_string(kHuge);
    CHECK_THROWS_WITH(TopK({.num_experts = kHuge, .top_k = 1}), names("num_experts", huge, "kMaxExperts"));
    CHECK_THROWS_WITH(TopP({.num_experts = kHuge}), names("num_experts", huge, "kMaxExperts"));
    CHECK_THROWS_WITH(ReLU({.num_experts = kHuge}), names("num_experts", huge, "kMaxExperts"));
    // E + N once overflowed int64 before any check.
    CHECK_THROWS_WITH(NullExpert({.num_experts = 8, .num_null_experts = std::numeric_limits<std::int64_t>::max() - 4, .top_k = 2}),
                      names("num_null_experts", std::to_string(std::numeric_limits<std::int64_t>::max() - 4), "kMaxExperts"));
    CHECK_THROWS_WITH(Sinkhorn({.num_experts = 8, .top_k = 2, .max_iterations = kHuge}),
                      names("max_iterations", huge, "kMaxSinkhornIterations"));
    CHECK_NOTHROW(Sinkhorn({.num_experts = 8, .top_k = 2, .max_iterations = limits::kMaxSinkhornIterations}));
    CHECK_THROWS_WITH(ExpertChoice({.num_experts = 8, .capacity = kHuge}), names("capacity", huge, "kMaxTokens"));
    CHECK_NOTHROW(ExpertChoice({.num_experts = 8, .capacity = limits::kMaxTokens}));
    for (double f : {1e300, 1025.0, std::numeric_limits<double>::infinity(), std::numeric_limits<double>::quiet_NaN(), 0.0})
        CHECK_THROWS_WITH(ExpertChoice({.num_experts = 8, .capacity_factor = f}),
                          Contains("'capacity_factor'") && Contains("kMaxCapacityFactor"));
    CHECK_THROWS_WITH(RankwiseLoRA({.in_features = 8, .out_features = 8, .rank = kHuge, .top_k = 1, .lora_alpha = 1}),
                      names("rank", huge, "kMaxDimension"));
}

TEST_CASE("balancers and layers refuse sizes above their documented maxima, naming the key", "[limits][balance][layer]") {
    using smoe::balance::CapacityConfig;
    std::string const huge = std::to_string(kHuge);
    CHECK_THROWS_WITH(smoe::balance::Capacity(CapacityConfig{.capacity_factor = 1e30}),
                      Contains("'moe_expert_capacity_factor'") && Contains("kMaxCapacityFactor"));
    CHECK_THROWS_WITH(smoe::balance::Capacity(CapacityConfig{.capacity_factor = 1.0, .min_capacity = kHuge}),
                      names("min_capacity", huge, "kMaxTokens"));
    CHECK_THROWS_WITH(smoe::balance::Capacity(CapacityConfig{.capacity_factor = 1.0, .capacity_alignment = kHuge}),
                      names("capacity_alignment", huge, "kMaxTokens"));
    CHECK_THROWS_WITH(smoe::balance::LossFreeBias({.num_experts = kHuge}), names("num_experts", huge, "kMaxExperts"));
    CHECK_THROWS_WITH(smoe::expert::SwiGLUConfig({.hidden_size = 8, .intermediate_size = kHuge, .num_experts = 2}).validate(),
                      names("intermediate_size", huge, "kMaxDimension"));

    // max_tokens sizes the layer's workspace: refused before it is allocated.
    using Layer = smoe::MoELayer<smoe::router::TopK, smoe::expert::SwiGLU<float>, smoe::balance::None>;
    std::int64_t const d = 8, f = 4, E = 2;
    std::mt19937_64 rng(14);
    auto const gate = smoe_test::normal(rng, E * d, 0.5), w1 = smoe_test::normal(rng, E * f * d, 0.3),
               w3 = smoe_test::normal(rng, E * f * d, 0.3), w2 = smoe_test::normal(rng, E * d * f, 0.3);
    Layer::Config cfg{.router = {.num_experts = E, .top_k = 1}, .expert = {d, f, E}, .max_tokens = kHuge};
    Layer::Weights const w{smoe::MatrixView<float const>(gate.data(), E, d), {},
                           smoe::expert::SwiGLUWeights<float>::dense(w1.data(), w3.data(), w2.data(), cfg.expert)};
    CHECK_THROWS_WITH(Layer(cfg, w), names("max_tokens", huge, "kMaxTokens"));
    cfg.max_tokens = 16;
    CHECK_NOTHROW(Layer(cfg, w));
}

TEST_CASE("Sinkhorn at its iteration cap with tol = 0 returns within seconds", "[limits][router][sinkhorn]") {
    // tol = 0 never converges, so the cap alone bounds the call (the mutant that hung had 1e11).
    std::int64_t const T = 64, E = 8;
    smoe::router::Sinkhorn router({.num_experts = E, .top_k = 2, .tol = 0.0, .max_iterations = limits::kMaxSinkhornIterations});
    std::mt19937_64 rng(15);
    auto const logits = smoe_test::normal(rng, T * E, 1.0);
    smoe::balance::None balancer(smoe::balance::None::Config{});
    std::vector<std::byte> ws(smoe::routing_workspace_size(router, balancer, T));
    auto const t0 = std::chrono::steady_clock::now();
    auto const r = smoe::route(router, balancer, smoe::MatrixView<float const>(logits.data(), T, E), {}, ws);
    // A hang guard, not a timing: the capped call takes ~0.1 s in release and a few seconds at -O0 under
    // ASan on a loaded machine; the unbounded mutant never returns.
    CHECK(std::chrono::steady_clock::now() - t0 < std::chrono::seconds(60));
    CHECK(router.last_iterations() == limits::kMaxSinkhornIterations);
    CHECK(r.num_tokens == T);
}
