// Every router × expert × balancer that should combine does: each valid triple models the concepts,
// builds, and runs the same dispatch and combine (variable-k, expert-major and null-expert routers
// included) to the oracle's output for the routing it returned. The invalid pairs are in
// tests/compile_fail/ (expert choice with a dropping balancer, a bias balancer with a router that
// selects without a bias).

#include <cmath>
#include <random>
#include <string>
#include <vector>

#include <catch2/catch.hpp>

#include "common/data.hpp"
#include "smoe/balance/capacity.hpp"
#include "smoe/balance/loss_free_bias.hpp"
#include "smoe/kernels/reference/reference.hpp"
#include "smoe/router/relu.hpp"
#include "smoe/router/sinkhorn.hpp"
#include "smoe/router/top_p.hpp"
#include "smoe/smoe.hpp"

using smoe::MatrixView;
namespace router = smoe::router;
namespace balance = smoe::balance;
using Swi = smoe::expert::SwiGLU<float>;

constexpr std::int64_t kE = 6, kD = 13, kF = 11, kT = 37;

static_assert(smoe::RouterPolicy<router::TopK> && smoe::RouterPolicy<router::TopP> && smoe::RouterPolicy<router::ReLU>);
static_assert(smoe::RouterPolicy<router::ExpertChoice> && smoe::RouterPolicy<router::NullExpert> &&
              smoe::RouterPolicy<router::Sinkhorn>);
static_assert(smoe::ExpertPolicy<Swi>);
static_assert(smoe::BalancePolicy<balance::None> && smoe::BalancePolicy<balance::Capacity> &&
              smoe::BalancePolicy<balance::LossFreeBias>);

namespace {

template <class Balancer>
typename Balancer::Config balancer_config() {
    if constexpr (std::is_same_v<Balancer, balance::Capacity>)
        return {.capacity_factor = 0.75};
    else if constexpr (std::is_same_v<Balancer, balance::LossFreeBias>)
        return {.num_experts = kE, .update_every_forward = true};
    else
        return {};
}

// Runs MoELayer<Router, SwiGLU, Balancer> twice (so a bias balancer has moved) and compares the output
// with the oracle's combine of the routing the layer reports, dropped slots removed.
template <class Router, class Balancer>
void check_triple(typename Router::Config const& rcfg, std::int64_t num_logits, std::string const& name) {
    using Layer = smoe::MoELayer<Router, Swi, Balancer>;
    INFO(name);
    std::mt19937_64 rng(std::hash<std::string>{}(name));
    auto gate = smoe_test::normal(rng, num_logits * kD, 0.6), w1 = smoe_test::normal(rng, kE * kF * kD, 0.4),
         w3 = smoe_test::normal(rng, kE * kF * kD, 0.4), w2 = smoe_test::normal(rng, kE * kD * kF, 0.4);
    auto const x = smoe_test::normal(rng, kT * kD, 1.0);
    smoe::expert::SwiGLUConfig const ec{kD, kF, kE};
    auto const experts = smoe::expert::SwiGLUWeights<float>::dense(w1.data(), w3.data(), w2.data(), ec);
    Layer layer({.router = rcfg, .expert = ec, .balance = balancer_config<Balancer>(), .max_tokens = kT},
                {.gate = MatrixView<float const>(gate.data(), num_logits, kD), .experts = experts});
    std::vector<float> y(kT * kD);
    for (int call = 0; call < 2; ++call) {
        auto const r = layer.forward(MatrixView<float const>(x.data(), kT, kD), MatrixView<float>(y.data(), kT, kD));
        std::vector<std::int32_t> ids;
        std::vector<float> w;
        for (std::int64_t t = 0; t < kT; ++t)
            for (std::int64_t j = 0; j < r.k; ++j) {
                bool const dropped = !r.dropped.empty() && r.dropped[t * r.k + j];
                ids.push_back(dropped ? -1 : r.expert_ids(t, j));
                w.push_back(r.expert_weights(t, j));
            }
        auto const ref = smoe::reference::combine_swiglu(smoe::reference::from_token_major(kT, r.k, kE, ids, w).view(), experts,
                                                         MatrixView<float const>(x.data(), kT, kD));
        for (std::int64_t t = 0; t < kT; ++t) {
            double err = 0, mag = 0;
            for (std::int64_t i = 0; i < kD; ++i) {
                err = std::max(err, std::fabs(double(y[t * kD + i]) - ref[t * kD + i]));
                mag = std::max(mag, std::fabs(ref[t * kD + i]));
            }
            INFO("call " << call << ", token " << t);
            CHECK((mag > 0 ? err / mag : err) <= 2e-5);
        }
        std::int64_t kept = 0;
        for (auto c : layer.stats().kept) kept += c;
        CHECK(kept == r.nnz());
    }
}

}  // namespace

TEST_CASE("every router composes with SwiGLU and every balancer it should combine with", "[compose]") {
    router::TopKConfig const topk{.num_experts = kE, .top_k = 2, .norm_topk_prob = true};
    router::TopPConfig const top_p{.num_experts = kE, .top_p = 0.5f};
    router::ReLUConfig const relu{.num_experts = kE};
    router::ExpertChoiceConfig const ec{.num_experts = kE, .capacity_factor = 1.5};
    router::NullExpertConfig const null{.num_experts = kE, .num_null_experts = 3, .top_k = 3};
    router::SinkhornConfig const sink{.num_experts = kE, .top_k = 2};

    check_triple<router::TopK, balance::None>(topk, kE, "topk none");
    check_triple<router::TopK, balance::Capacity>(topk, kE, "topk capacity");
    check_triple<router::TopK, balance::LossFreeBias>(topk, kE, "topk loss-free bias");
    check_triple<router::TopP, balance::None>(top_p, kE, "top_p none");
    check_triple<router::TopP, balance::Capacity>(top_p, kE, "top_p capacity");
    check_triple<router::ReLU, balance::None>(relu, kE, "relu none");
    check_triple<router::ReLU, balance::Capacity>(relu, kE, "relu capacity");
    check_triple<router::ExpertChoice, balance::None>(ec, kE, "expert choice none");
    check_triple<router::NullExpert, balance::None>(null, kE + 3, "null expert none");
    check_triple<router::NullExpert, balance::Capacity>(null, kE + 3, "null expert capacity");
    check_triple<router::Sinkhorn, balance::None>(sink, kE, "sinkhorn none");
    check_triple<router::Sinkhorn, balance::Capacity>(sink, kE, "sinkhorn capacity");
}
