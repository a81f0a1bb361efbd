// The program both consumer projects build: a tiny MoE layer (E=4, k=2, d=8, f=16) with deterministic
// weights, one forward of T=6 tokens. Exit 0 and "consumer ok" iff the output is finite and not all
// zero and every token was routed to k experts, and the same layer built through runtime ISA dispatch
// (smoe::DispatchedLayer, consumer_isa.cpp per ISA) gives the same output within rounding.
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <vector>

#include <smoe/dispatch.hpp>
#include <smoe/smoe.hpp>

int main() {
    constexpr std::int64_t E = 4, k = 2, d = 8, f = 16, T = 6;
    using Layer = smoe::MoELayer<smoe::router::TopK, smoe::expert::SwiGLU<float>, smoe::balance::None>;

    // Deterministic, sign-alternating values in about [-0.1, 0.1]: no RNG, so every build sees the same layer.
    auto fill = [](std::vector<float>& v, int seed) {
        for (std::size_t i = 0; i < v.size(); ++i) v[i] = 0.1f * std::sin(0.37f * static_cast<float>(i) + static_cast<float>(seed));
    };
    std::vector<float> gate(E * d), w1(E * f * d), w3(E * f * d), w2(E * d * f), x(T * d), y(T * d, 0.0f);
    fill(gate, 1), fill(w1, 2), fill(w3, 3), fill(w2, 4), fill(x, 5);
    for (auto& v : x) v *= 10.0f;

    Layer::Config cfg;
    cfg.router = smoe::router::TopKConfig{.num_experts = E, .top_k = k, .norm_topk_prob = true};
    cfg.expert = {.hidden_size = d, .intermediate_size = f, .num_experts = E};
    cfg.max_tokens = T;
    Layer::Weights w;
    w.gate = smoe::MatrixView<float const>(gate.data(), E, d);
    w.experts = smoe::expert::SwiGLUWeights<float>::dense(w1.data(), w3.data(), w2.data(), cfg.expert);
    Layer layer(cfg, w);

    smoe::RoutingResult r = layer.forward(smoe::MatrixView<float const>(x.data(), T, d), smoe::MatrixView<float>(y.data(), T, d));

    bool finite = true, nonzero = false;
    for (float v : y) finite = finite && std::isfinite(v), nonzero = nonzero || v != 0.0f;
    std::int64_t routed = 0;
    std::printf("loads:");
    for (std::int64_t e = 0; e < r.num_experts; ++e) std::printf(" %d", static_cast<int>(r.load(e))), routed += r.load(e);
    std::printf("\n");

    smoe::DispatchedLayer<smoe::router::TopK, smoe::expert::SwiGLU<float>, smoe::balance::None> dispatched(cfg, w);
    std::vector<float> yd(T * d, 0.0f);
    dispatched.forward(smoe::MatrixView<float const>(x.data(), T, d), smoe::MatrixView<float>(yd.data(), T, d));
    float diff = 0.0f;
    for (std::size_t i = 0; i < y.size(); ++i) diff = std::fmax(diff, std::fabs(y[i] - yd[i]));
    std::printf("dispatched isa %s, max |difference| %g\n", dispatched.isa(), static_cast<double>(diff));

    bool const ok = finite && nonzero && r.num_experts == E && routed == T * k && diff <= 1e-5f;
    std::printf("%s (finite=%d nonzero=%d routed=%lld of %lld)\n", ok ? "consumer ok" : "consumer FAILED", finite, nonzero,
                static_cast<long long>(routed), static_cast<long long>(T * k));
    return ok ? 0 : 1;
}
