// smoe quickstart: one Mixtral-shaped MoE layer (top-2 of 8 SwiGLU experts), small enough to read.
// Build and run: cmake --workflow --preset demo   (or build/release/examples/quickstart)
#include <cstdint>
#include <cstdio>
#include <random>
#include <vector>

#include <smoe/smoe.hpp>

int main() {
    constexpr std::int64_t E = 8, k = 2, d = 64, f = 128, T = 16;  // experts, top-k, hidden, intermediate, tokens

    // The layer is a type: router, expert and load-balancing policy are template parameters.
    using Layer = smoe::MoELayer<smoe::router::TopK, smoe::expert::SwiGLU<float>, smoe::balance::None>;

    // Weights in the engine's own buffers; smoe only views them. N(0, 0.02), as a freshly initialised model.
    std::mt19937 rng(42);
    std::normal_distribution<float> init(0.0f, 0.02f);
    auto random = [&](std::int64_t n) {
        std::vector<float> v(static_cast<std::size_t>(n));
        for (auto& e : v) e = init(rng);
        return v;
    };
    std::vector<float> gate = random(E * d);                                    // router   [E, d]
    std::vector<float> w1 = random(E * f * d), w3 = random(E * f * d);          // gate, up [E, f, d]
    std::vector<float> w2 = random(E * d * f);                                  // down     [E, d, f]
    std::vector<float> x = random(T * d), y(static_cast<std::size_t>(T * d));   // tokens   [T, d]

    Layer::Config cfg;
    cfg.router = smoe::router::TopKConfig{.num_experts = E, .top_k = k, .norm_topk_prob = true};  // = mixtral()
    cfg.expert = {.hidden_size = d, .intermediate_size = f, .num_experts = E};
    cfg.max_tokens = T;  // the workspace is sized once, here; forward() never allocates

    Layer::Weights w;
    w.gate = smoe::MatrixView<float const>(gate.data(), E, d);
    w.experts = smoe::expert::SwiGLUWeights<float>::dense(w1.data(), w3.data(), w2.data(), cfg.expert);
    Layer layer(cfg, w);  // validates every shape; throws smoe::invalid_argument naming the culprit

    smoe::RoutingResult r = layer.forward(smoe::MatrixView<float const>(x.data(), T, d), smoe::MatrixView<float>(y.data(), T, d));

    std::printf("tokens per expert:");
    for (std::int64_t e = 0; e < r.num_experts; ++e) std::printf(" %d", static_cast<int>(r.load(e)));
    double checksum = 0.0;
    for (float v : y) checksum += v;
    std::printf("\nsum(y) = %.9g over %lld x %lld outputs\n", checksum, static_cast<long long>(T), static_cast<long long>(d));
    return 0;
}
