// See oracles.hpp: the reference routers, compiled by the C++ compiler for the CUDA tests.
#include "oracles.hpp"

#include "smoe/kernels/reference/reference.hpp"

namespace smoe_cuda_test {
namespace {

smoe::MatrixView<float const> view(std::vector<float> const& v, std::int64_t T, std::int64_t W) { return {v.data(), T, W}; }

Rows rows_of(smoe::RoutingData const& r) { return {r.k, r.expert_ids, r.expert_weights}; }

}  // namespace

Rows oracle_null_expert(std::vector<float> const& logits, std::int64_t T, std::int64_t E, std::int64_t N, std::int64_t k) {
    smoe::router::NullExpertConfig const cfg{.num_experts = E, .num_null_experts = N, .top_k = k};
    return rows_of(smoe::reference::route_null_expert(cfg, view(logits, T, E + N)));
}

Rows oracle_relu(std::vector<float> const& logits, std::int64_t T, std::int64_t E) {
    return rows_of(smoe::reference::route_relu(smoe::router::ReLUConfig{.num_experts = E}, view(logits, T, E)));
}

Rows oracle_top_p(std::vector<float> const& logits, std::int64_t T, std::int64_t E, float p, std::int64_t min_k,
                  std::int64_t max_k) {
    smoe::router::TopPConfig const cfg{.num_experts = E, .top_p = p, .max_k = max_k, .min_k = min_k};
    return rows_of(smoe::reference::route_top_p(cfg, view(logits, T, E)));
}

Rows oracle_expert_choice(std::vector<float> const& logits, std::int64_t T, std::int64_t E, bool sigmoid,
                          std::optional<std::int64_t> capacity, std::optional<double> factor, std::int64_t& c_eff) {
    smoe::router::ExpertChoiceConfig const cfg{
        .num_experts = E, .capacity = capacity, .capacity_factor = factor,
        .score_func = sigmoid ? smoe::router::ScoreFunc::sigmoid : smoe::router::ScoreFunc::softmax};
    c_eff = std::min(smoe::reference::expert_choice_capacity(cfg, T), T);
    return rows_of(smoe::reference::route_expert_choice(cfg, view(logits, T, E)));
}

SinkhornOracle oracle_sinkhorn(std::vector<float> const& logits, std::int64_t T, std::int64_t E, std::int64_t k, double tol,
                               std::int64_t max_iterations) {
    smoe::router::SinkhornConfig const cfg{.num_experts = E, .top_k = k, .tol = tol, .max_iterations = max_iterations};
    auto const scores = smoe::reference::sinkhorn_scores(cfg, view(logits, T, E));
    SinkhornOracle o;
    o.rows = rows_of(smoe::reference::route_sinkhorn(cfg, view(logits, T, E)));
    o.balanced = scores.balanced;
    o.iterations = scores.report.iterations;
    o.converged = scores.report.converged;
    return o;
}

}  // namespace smoe_cuda_test
