#pragma once
// research.md §0's formula weights and tokens, which the research designs' worked examples share:
// F(v) = ((v mod 5) − 2) / 4 (exact in bf16), formula SwiGLU expert e of size (d, f) with
// W1[i][j] = F(e + 2i + 3j), W3[i][j] = F(2e + i + 2j), W2[j][i] = F(3e + i + j), and x0, x1, x2.

#include <cstdint>
#include <vector>

#include "smoe/expert/swiglu.hpp"

namespace smoe_test {

inline float formula(std::int64_t v) { return static_cast<float>((v % 5) - 2) / 4.0f; }

struct FormulaExperts {
    std::int64_t E, d, f;
    std::vector<float> w1, w3, w2;  // [E, f, d], [E, f, d], [E, d, f]
    smoe::expert::SwiGLUConfig cfg() const { return {.hidden_size = d, .intermediate_size = f, .num_experts = E}; }
    smoe::expert::SwiGLUWeights<float> weights() const {
        return smoe::expert::SwiGLUWeights<float>::dense(w1.data(), w3.data(), w2.data(), cfg());
    }
};

// Experts first_id .. first_id + E − 1 of the formula.
inline FormulaExperts formula_experts(std::int64_t E, std::int64_t d, std::int64_t f, std::int64_t first_id = 0) {
    FormulaExperts x{E, d, f, std::vector<float>(E * f * d), std::vector<float>(E * f * d), std::vector<float>(E * d * f)};
    for (std::int64_t k = 0; k < E; ++k) {
        std::int64_t const e = first_id + k;
        for (std::int64_t i = 0; i < f; ++i)
            for (std::int64_t j = 0; j < d; ++j) {
                x.w1[(k * f + i) * d + j] = formula(e + 2 * i + 3 * j);
                x.w3[(k * f + i) * d + j] = formula(2 * e + i + 2 * j);
                x.w2[(k * d + j) * f + i] = formula(3 * e + i + j);
            }
    }
    return x;
}

inline std::vector<float> const kFormulaX{1.0f, -0.5f, 0.25f, -1.0f, 0.5f, 2.0f, 0.5f, 1.0f, -1.0f};  // x0, x1, x2

}  // namespace smoe_test
