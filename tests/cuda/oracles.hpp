#pragma once
// The scalar oracles of the routers whose headers pull xsimd (router/*.hpp), behind plain std types:
// oracles.cpp is compiled by the C++ compiler, so the .cu test files never include xsimd.
#include <cstdint>
#include <optional>
#include <vector>

namespace smoe_cuda_test {

// A token-major view [T, K] and the batch's K.
struct Rows {
    std::int64_t K = 0;
    std::vector<std::int32_t> ids;
    std::vector<float> weights;
};

Rows oracle_null_expert(std::vector<float> const& logits, std::int64_t T, std::int64_t E, std::int64_t N, std::int64_t k);
Rows oracle_relu(std::vector<float> const& logits, std::int64_t T, std::int64_t E);
Rows oracle_top_p(std::vector<float> const& logits, std::int64_t T, std::int64_t E, float p, std::int64_t min_k,
                  std::int64_t max_k);
// c_eff receives min(C, T).
Rows oracle_expert_choice(std::vector<float> const& logits, std::int64_t T, std::int64_t E, bool sigmoid,
                          std::optional<std::int64_t> capacity, std::optional<double> factor, std::int64_t& c_eff);

struct SinkhornOracle {
    Rows rows;
    std::vector<double> balanced;  // P [T, E], to recognise near ties
    std::int64_t iterations = 0;
    bool converged = false;
};
SinkhornOracle oracle_sinkhorn(std::vector<float> const& logits, std::int64_t T, std::int64_t E, std::int64_t k, double tol,
                               std::int64_t max_iterations);

}  // namespace smoe_cuda_test
