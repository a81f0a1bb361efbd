// The CUDA backend against the scalar oracle (kernels/reference/, plain std C++ and so fine in a .cu
// file): the top-k routing kernel, dispatch and its tile schedule, the whole layer in fp32 and bf16,
// forward_routed, CUDA-graph capture, non-finite rows. Needs a GPU: cuda_main.cpp skips (77) without.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <random>
#include <span>
#include <vector>

#include "common/approx.hpp"
#include "smoe/cuda.hpp"
#include "smoe/kernels/reference/moe.hpp"

namespace kc = smoe::kernels::cuda;
using smoe::MatrixView;
using TopKConfig = smoe::router::TopKConfig;

namespace {

#define SMOE_CUDA_REQUIRE(call) REQUIRE(cudaSuccess == (call))

template <class T>
class DeviceArray {
public:
    explicit DeviceArray(std::size_t n) : n_(n) {
        if (n_ > 0) SMOE_CUDA_REQUIRE(cudaMalloc(&p_, n_ * sizeof(T)));
    }
    explicit DeviceArray(std::vector<T> const& v) : DeviceArray(v.size()) { upload(v); }
    DeviceArray(DeviceArray const&) = delete;
    DeviceArray& operator=(DeviceArray const&) = delete;
    ~DeviceArray() {
        if (p_) cudaFree(p_);
    }
    T* data() const { return p_; }
    std::size_t size() const { return n_; }
    void upload(std::vector<T> const& v) {
        REQUIRE(v.size() == n_);
        if (n_ > 0) SMOE_CUDA_REQUIRE(cudaMemcpy(p_, v.data(), n_ * sizeof(T), cudaMemcpyHostToDevice));
    }

private:
    T* p_ = nullptr;
    std::size_t n_ = 0;
};

template <class T>
std::vector<T> download(T const* p, std::int64_t n) {
    std::vector<T> v(static_cast<std::size_t>(n));
    if (n > 0) SMOE_CUDA_REQUIRE(cudaMemcpy(v.data(), p, v.size() * sizeof(T), cudaMemcpyDeviceToHost));
    return v;
}

// experts.md §9 round to nearest even, written from the spec's bit formula (not from cuda_bf16.h).
std::uint16_t bf16_bits(float v) {
    std::uint32_t b;
    std::memcpy(&b, &v, 4);
    if (std::isnan(v)) return 0x7FC0;
    return static_cast<std::uint16_t>((b + 0x7FFFu + ((b >> 16) & 1u)) >> 16);
}
float bf16_value(std::uint16_t h) {
    std::uint32_t const b = std::uint32_t{h} << 16;
    float v;
    std::memcpy(&v, &b, 4);
    return v;
}

std::vector<float> normal(std::mt19937_64& rng, std::size_t n, double sd, double grid = 0.0) {
    std::normal_distribution<double> dist(0.0, sd);
    std::vector<float> v(n);
    for (auto& x : v) {
        double const r = dist(rng);
        x = static_cast<float>(grid > 0.0 ? std::round(r / grid) * grid : r);
    }
    return v;
}

// Values of W on the device; for bf16 the host floats must already be bf16 values (round_to<W> first).
template <class W>
std::vector<W> to_w(std::vector<float> const& v) {
    std::vector<W> out(v.size());
    for (std::size_t i = 0; i < v.size(); ++i) {
        if constexpr (std::is_same_v<W, float>) {
            out[i] = v[i];
        } else if constexpr (std::is_same_v<W, smoe::bf16>) {
            out[i] = smoe::bf16{bf16_bits(v[i])};
        } else {
            __nv_bfloat16_raw raw;
            raw.x = bf16_bits(v[i]);
            out[i] = __nv_bfloat16(raw);
        }
    }
    return out;
}
template <class W>
std::vector<float> from_w(std::vector<W> const& v) {
    std::vector<float> out(v.size());
    for (std::size_t i = 0; i < v.size(); ++i) {
        if constexpr (std::is_same_v<W, float>) {
            out[i] = v[i];
        } else if constexpr (std::is_same_v<W, smoe::bf16>) {
            out[i] = bf16_value(v[i].bits);
        } else {
            out[i] = bf16_value(static_cast<__nv_bfloat16_raw>(v[i]).x);
        }
    }
    return out;
}
template <class W>
void round_to(std::vector<float>& v) {
    if constexpr (!std::is_same_v<W, float>)
        for (auto& x : v) x = bf16_value(bf16_bits(x));
}

void check_same_rows(std::vector<std::int32_t> const& ids, std::vector<float> const& w, smoe::RoutingData const& ref,
                     double rel) {
    REQUIRE(ids.size() == ref.expert_ids.size());
    for (std::size_t i = 0; i < ids.size(); ++i) {
        INFO("token " << i / static_cast<std::size_t>(ref.k) << " slot " << i % static_cast<std::size_t>(ref.k));
        CHECK(ids[i] == ref.expert_ids[i]);
        CHECK(w[i] == Approx(ref.expert_weights[i]).epsilon(rel).margin(1e-30));
    }
}

smoe::RoutingData route_on_device(TopKConfig const& cfg, std::vector<float> const& logits, std::int64_t T,
                                  std::vector<float> const& bias = {}) {
    std::int64_t const E = cfg.num_experts, K = cfg.top_k;
    DeviceArray<float> dl(logits), db(bias);
    DeviceArray<std::int32_t> ids(static_cast<std::size_t>(T * K)), nonfinite(std::vector<std::int32_t>{0});
    DeviceArray<float> w(static_cast<std::size_t>(T * K));
    kc::launch_topk_route(kc::TopKParams::from(cfg), dl.data(), E, T, bias.empty() ? nullptr : db.data(), ids.data(),
                          w.data(), K, nonfinite.data(), nullptr);
    SMOE_CUDA_REQUIRE(cudaDeviceSynchronize());
    smoe::RoutingData r;
    r.num_tokens = T;
    r.num_experts = E;
    r.k = K;
    r.expert_ids = download(ids.data(), T * K);
    r.expert_weights = download(w.data(), T * K);
    CHECK(download(nonfinite.data(), 1)[0] == 0);
    return r;
}

}  // namespace

TEST_CASE("the CUDA top-k router reproduces routing.md's worked example", "[cuda][router][topk]") {
    std::vector<float> const logits = {2.0f,  1.0f,  1.0f, -1.0f, 0.5f, -0.5f, -3.0f, -1.0f, -2.0f,
                                       -0.5f, -4.0f, -1.5f, 0.3f, -0.2f, 1.7f,  0.9f,  1.2f,  -2.0f};
    auto run = [&](TopKConfig cfg, std::vector<float> const& bias, std::vector<std::int32_t> const& ids,
                   std::vector<double> const& w) {
        auto const r = route_on_device(cfg, logits, 3, bias);
        smoe_test::check_equal(r.expert_ids, ids);
        smoe_test::check_all_close(r.expert_weights, w, 1e-5);
    };
    TopKConfig a{.num_experts = 6, .top_k = 2, .norm_topk_prob = true};
    run(a, {}, {0, 1, 3, 1, 2, 4}, {0.731059, 0.268941, 0.622459, 0.377541, 0.622459, 0.377541});
    TopKConfig b{.num_experts = 6, .top_k = 2};
    run(b, {}, {0, 1, 3, 1, 2, 4}, {0.478295, 0.175955, 0.432934, 0.262588, 0.403755, 0.24489});
    TopKConfig c{.num_experts = 6, .top_k = 2, .score_after_topk = true};
    run(c, {}, {0, 1, 3, 1, 2, 4}, {0.731059, 0.268941, 0.622459, 0.377541, 0.622459, 0.377541});
    TopKConfig d{.num_experts = 6, .top_k = 2, .score_func = smoe::router::ScoreFunc::sigmoid, .norm_topk_prob = true,
                 .routed_scaling_factor = 2.5f, .n_group = 3, .topk_group = 2};
    run(d, {0.0f, 0.0f, 0.1f, -0.1f, 0.0f, 0.3f}, {0, 1, 3, 5, 2, 4},
        {1.36612, 1.13388, 1.68555, 0.814449, 1.30964, 1.19036});
    TopKConfig e{.num_experts = 6, .top_k = 2, .routed_scaling_factor = 16.0f, .n_group = 3, .topk_group = 1};
    run(e, {}, {0, 1, 3, 2, 2, 3}, {7.65272, 2.81528, 6.92694, 1.54561, 6.46008, 2.9027});
}

TEST_CASE("the CUDA top-k router selects the oracle's experts on random rows with exact ties", "[cuda][router][topk]") {
    std::mt19937_64 rng(42);
    using smoe::router::ScoreFunc;
    std::vector<TopKConfig> const configs = {
        TopKConfig::mixtral(),
        TopKConfig::olmoe(),
        TopKConfig{.num_experts = 60, .top_k = 4},
        TopKConfig{.num_experts = 64, .top_k = 6, .routed_scaling_factor = 16.0f, .n_group = 8, .topk_group = 3},
        TopKConfig{.num_experts = 256, .top_k = 8, .score_func = ScoreFunc::sigmoid, .norm_topk_prob = true,
                   .routed_scaling_factor = 2.5f, .n_group = 8, .topk_group = 4, .requires_expert_bias = true},
        TopKConfig::megatron(40, 5),
        TopKConfig{.num_experts = 5, .top_k = 5, .norm_topk_prob = true},  // k = E
        TopKConfig{.num_experts = 1, .top_k = 1},
        TopKConfig{.num_experts = 33, .top_k = 3, .score_func = ScoreFunc::sigmoid},
    };
    for (auto const& cfg : configs)
        for (std::int64_t T : {0, 1, 7, 64, 513}) {
            std::int64_t const E = cfg.num_experts;
            INFO("E " << E << " k " << cfg.top_k << " T " << T);
            // A grid of 0.25 makes exact ties common and keeps distinct scores far apart.
            auto logits = normal(rng, static_cast<std::size_t>(T * E), 2.0, 0.25);
            if (T > 1)  // one all-negative row (vLLM PR #37605)
                for (std::int64_t e = 0; e < E; ++e) logits[E + e] = -std::fabs(logits[E + e]) - 3.0f;
            std::vector<float> bias;
            if (cfg.requires_expert_bias) bias = normal(rng, static_cast<std::size_t>(E), 0.1, 0.125);
            auto const ref = smoe::reference::route_topk(cfg, MatrixView<float const>(logits.data(), T, E), bias);
            auto const got = route_on_device(cfg, logits, T, bias);
            check_same_rows(got.expert_ids, got.expert_weights, ref, 1e-6);
        }
}

TEST_CASE("CUDA dispatch builds the oracle's CSR, its inverse and the tile schedule", "[cuda][dispatch]") {
    std::mt19937_64 rng(5);
    for (std::int64_t E : {1, 6, 64})
        for (std::int64_t K : {1, 2, 6})
            for (std::int64_t T : {0, 1, 7, 64, 513}) {
                if (K > E) continue;
                INFO("E " << E << " K " << K << " T " << T);
                // Distinct ids per row; expert 0 takes every token (slot 0); -1 padding and null ids >= E.
                std::vector<std::int32_t> ids(static_cast<std::size_t>(T * K));
                std::vector<float> w = normal(rng, ids.size(), 1.0);
                for (std::int64_t t = 0; t < T; ++t) {
                    std::vector<std::int32_t> perm(static_cast<std::size_t>(E + 2));
                    for (std::size_t i = 0; i < perm.size(); ++i) perm[i] = static_cast<std::int32_t>(i);
                    std::shuffle(perm.begin() + 1, perm.end(), rng);
                    for (std::int64_t j = 0; j < K; ++j) {
                        std::int32_t id = perm[static_cast<std::size_t>(j)];
                        if (id == E + 1) id = -1;  // id E stays a null expert
                        ids[static_cast<std::size_t>(t * K + j)] = id;
                    }
                }
                auto const ref = smoe::reference::from_token_major(T, K, E, ids, w);

                kc::LayerDims const dims{T, E, K, 8, 8};
                DeviceArray<std::byte> ws(kc::layer_workspace_size<float>(dims));
                smoe::Workspace carve(std::span<std::byte>(ws.data(), ws.size()));
                auto const b = kc::carve_layer<float>(carve, dims);
                DeviceArray<std::int32_t> dids(ids);
                DeviceArray<float> dw(w);
                SMOE_CUDA_REQUIRE(cudaMemset(b.counters.data(), 0, b.counters.size_bytes()));
                kc::launch_dispatch(b, dids.data(), dw.data(), T, K, E, nullptr);
                SMOE_CUDA_REQUIRE(cudaDeviceSynchronize());

                std::int64_t const nnz = ref.offsets.back();
                smoe_test::check_equal(download(b.offsets.data(), E + 1), ref.offsets);
                smoe_test::check_equal(download(b.token_ids.data(), nnz), ref.token_ids);
                smoe_test::check_equal(download(b.weights.data(), nnz), ref.weights);
                smoe_test::check_equal(download(b.slots.data(), nnz), ref.slots);
                std::vector<std::int32_t> inverse(ids.size(), -1);
                for (std::int64_t r = 0; r < nnz; ++r) inverse[static_cast<std::size_t>(ref.slots[r])] = static_cast<std::int32_t>(r);
                smoe_test::check_equal(download(b.slot_rows.data(), T * K), inverse);

                std::vector<std::int32_t> counts(static_cast<std::size_t>(E));
                for (std::int64_t e = 0; e < E; ++e) counts[e] = ref.offsets[e + 1] - ref.offsets[e];
                auto const s = kc::host_tile_schedule(counts);
                auto const counters = download(b.counters.data(), kc::kCounterCount);
                REQUIRE(counters[kc::kCounterTiles] == static_cast<std::int32_t>(s.tile_expert.size()));
                REQUIRE(counters[kc::kCounterActive] == static_cast<std::int32_t>(s.active.size()));
                smoe_test::check_equal(download(b.padded_offsets.data(), E + 1), s.padded_offsets);
                smoe_test::check_equal(download(b.tile_expert.data(), counters[kc::kCounterTiles]), s.tile_expert);
                smoe_test::check_equal(download(b.tile_row0.data(), counters[kc::kCounterTiles]), s.tile_row0);
                smoe_test::check_equal(download(b.active.data(), counters[kc::kCounterActive]), s.active);
            }
}

namespace {

template <class W>
using CudaLayer = smoe::MoELayer<smoe::router::TopK, smoe::expert::SwiGLU<W>, smoe::balance::None, smoe::backend::Cuda<90>>;

// Host copies (values exactly representable in W) and device copies of one layer's tensors.
template <class W>
struct LayerFixture {
    smoe::expert::SwiGLUConfig ecfg;
    std::vector<float> gate, w1, w3, w2, bias;
    DeviceArray<float> dgate, dbias;
    DeviceArray<W> dw1, dw3, dw2;

    static std::vector<float> rounded(std::vector<float> v) {
        round_to<W>(v);
        return v;
    }
    LayerFixture(std::mt19937_64& rng, std::int64_t d, std::int64_t f, std::int64_t E, bool biased)
        : ecfg{d, f, E},
          gate(normal(rng, static_cast<std::size_t>(E * d), 0.5)),
          w1(rounded(normal(rng, static_cast<std::size_t>(E * f * d), 0.3))),
          w3(rounded(normal(rng, static_cast<std::size_t>(E * f * d), 0.3))),
          w2(rounded(normal(rng, static_cast<std::size_t>(E * d * f), 0.3))),
          bias(biased ? normal(rng, static_cast<std::size_t>(E), 0.1) : std::vector<float>{}),
          dgate(gate), dbias(bias), dw1(to_w<W>(w1)), dw3(to_w<W>(w3)), dw2(to_w<W>(w2)) {}

    typename CudaLayer<W>::Weights weights() const {
        return {MatrixView<float const>(dgate.data(), ecfg.num_experts, ecfg.hidden_size),
                std::span<float const>(dbias.data(), dbias.size()),
                smoe::expert::SwiGLUWeights<W>::dense(dw1.data(), dw3.data(), dw2.data(), ecfg)};
    }
    smoe::expert::SwiGLUWeights<float> host_weights() const {
        return smoe::expert::SwiGLUWeights<float>::dense(w1.data(), w3.data(), w2.data(), ecfg);
    }
};

// experts.md §9 metric per token: max_i |y_i - r_i| / max_i |r_i|.
void check_close(std::vector<float> const& y, std::vector<double> const& ref, std::int64_t T, std::int64_t d, double bound) {
    REQUIRE(y.size() == ref.size());
    for (std::int64_t t = 0; t < T; ++t) {
        double err = 0, mag = 0;
        for (std::int64_t i = 0; i < d; ++i) {
            err = std::max(err, std::fabs(double(y[t * d + i]) - ref[t * d + i]));
            mag = std::max(mag, std::fabs(ref[t * d + i]));
        }
        INFO("token " << t << ", max |ref| " << mag);
        CHECK((mag > 0 ? err / mag : err) <= bound);
    }
}

// The oracle routes on the GPU's own logits (the gate projection's rounding cannot flip a near tie
// between the two sides); a differing row is accepted only at a near tie (routing.md §0), and the
// expert outputs are then checked on the GPU's routing.
void check_routing_against_oracle(TopKConfig const& cfg, smoe::cuda::DeviceRouting const& r, std::vector<float> const& bias) {
    std::int64_t const T = r.num_tokens, E = r.num_experts, K = r.k;
    auto const logits = download(r.logits, T * E);
    auto const ref = smoe::reference::route_topk(cfg, MatrixView<float const>(logits.data(), T, E), bias);
    auto const ids = download(r.expert_ids, T * K);
    auto const w = download(r.expert_weights, T * K);
    for (std::int64_t t = 0; t < T; ++t) {
        bool same = true;
        for (std::int64_t j = 0; j < K; ++j) same &= ids[t * K + j] == ref.expert_ids[t * K + j];
        if (!same) {
            // routing.md §0: only a near tie may route differently. Either two selected weights within
            // 1e-6 swapped places (same set), or, for an unbiased config, the k-th and (k+1)-th
            // logits (scores are monotonic in them) are within a few ulps.
            std::vector<std::int32_t> a(ids.begin() + t * K, ids.begin() + (t + 1) * K);
            std::vector<std::int32_t> b(ref.expert_ids.begin() + t * K, ref.expert_ids.begin() + (t + 1) * K);
            std::sort(a.begin(), a.end());
            std::sort(b.begin(), b.end());
            bool near = false;
            if (a == b) {
                near = true;
                for (std::int64_t j = 0; j < K; ++j)
                    near &= std::fabs(w[t * K + j] - ref.expert_weights[t * K + j]) <= 1e-6f * std::fabs(ref.expert_weights[t * K + j]) + 1e-30f;
            } else if (bias.empty() && cfg.n_group == 1 && K < E) {
                std::vector<float> row(logits.begin() + t * E, logits.begin() + (t + 1) * E);
                std::sort(row.begin(), row.end(), std::greater<>());
                near = std::fabs(row[K - 1] - row[K]) <= 4e-6f * std::fabs(row[K - 1]) + 1e-30f;
            }
            INFO("token " << t << " routed differently from the oracle without a near tie");
            CHECK(near);
            continue;
        }
        for (std::int64_t j = 0; j < K; ++j)
            CHECK(w[t * K + j] == Approx(ref.expert_weights[t * K + j]).epsilon(1e-6).margin(1e-30));
    }
    CHECK(download(r.nonfinite_rows, 1)[0] == 0);
}

// y of the layer vs the oracle's combine on the GPU's routing.
template <class W>
void check_layer_output(LayerFixture<W> const& m, smoe::cuda::DeviceRouting const& r, std::vector<float> const& x,
                        std::vector<float> const& y, double bound) {
    std::int64_t const T = r.num_tokens, K = r.k, d = m.ecfg.hidden_size;
    auto const tm = smoe::reference::from_token_major(T, K, r.num_experts, download(r.expert_ids, T * K),
                                                      download(r.expert_weights, T * K));
    auto const ref = smoe::reference::combine_swiglu(tm.view(), m.host_weights(), MatrixView<float const>(x.data(), T, d));
    check_close(y, ref, T, d, bound);
    // The CSR the GPU dispatched is the oracle's CSR of the same token-major rows.
    std::int64_t const nnz = tm.offsets.back();
    smoe_test::check_equal(download(r.offsets, r.num_experts + 1), tm.offsets);
    smoe_test::check_equal(download(r.token_ids, nnz), tm.token_ids);
}

template <class W>
void run_layer_case(std::mt19937_64& rng, TopKConfig const& cfg, std::int64_t d, std::int64_t f, double bound) {
    bool const biased = cfg.requires_expert_bias;
    LayerFixture<W> m(rng, d, f, cfg.num_experts, biased);
    std::int64_t const max_T = 513;
    CudaLayer<W> layer({.router = cfg, .expert = m.ecfg, .max_tokens = max_T}, m.weights());
    DeviceArray<std::byte> ws(layer.workspace_size());
    for (std::int64_t T : {0, 1, 7, 8, 9, 64, 513}) {
        INFO("d " << d << " f " << f << " E " << cfg.num_experts << " k " << cfg.top_k << " T " << T);
        auto x = normal(rng, static_cast<std::size_t>(T * d), 1.0);
        round_to<W>(x);
        DeviceArray<W> dx(to_w<W>(x)), dy(static_cast<std::size_t>(T * d));
        auto const r = layer.forward(MatrixView<W const>(dx.data(), T, d), MatrixView<W>(dy.data(), T, d),
                                     std::span<std::byte>(ws.data(), ws.size()), nullptr);
        SMOE_CUDA_REQUIRE(cudaDeviceSynchronize());
        check_routing_against_oracle(cfg, r, m.bias);
        check_layer_output(m, r, x, from_w(download(dy.data(), T * d)), bound);
    }
}

}  // namespace

TEST_CASE("the fp32 CUDA layer matches the oracle within 2e-5 on shapes that are not tile multiples", "[cuda][layer]") {
    std::mt19937_64 rng(1);
    run_layer_case<float>(rng, TopKConfig{.num_experts = 6, .top_k = 2, .norm_topk_prob = true}, 40, 72, 2e-5);
    run_layer_case<float>(rng, TopKConfig{.num_experts = 5, .top_k = 5}, 100, 36, 2e-5);  // every expert, every token
    run_layer_case<float>(rng, TopKConfig{.num_experts = 16, .top_k = 4, .score_func = smoe::router::ScoreFunc::sigmoid,
                                          .norm_topk_prob = true, .routed_scaling_factor = 2.5f, .n_group = 4,
                                          .topk_group = 2, .requires_expert_bias = true},
                          64, 130, 2e-5);
}

TEST_CASE("the bf16 CUDA layer matches the oracle on the same bf16 values within 5e-3", "[cuda][layer][bf16]") {
    std::mt19937_64 rng(2);
    run_layer_case<__nv_bfloat16>(rng, TopKConfig{.num_experts = 8, .top_k = 2, .norm_topk_prob = true}, 128, 192, 5e-3);
    run_layer_case<__nv_bfloat16>(rng, TopKConfig{.num_experts = 6, .top_k = 2}, 36, 70, 5e-3);  // scalar loads (d, f % 8 != 0)
    run_layer_case<__nv_bfloat16>(rng, TopKConfig{.num_experts = 3, .top_k = 3}, 136, 200, 5e-3);
}

TEST_CASE("the CUDA layer takes smoe::bf16 weights, the CPU backend's bf16 format", "[cuda][layer][bf16]") {
    std::mt19937_64 rng(9);
    run_layer_case<smoe::bf16>(rng, TopKConfig::olmoe(), 64, 96, 5e-3);
}

TEST_CASE("forward_routed reproduces experts.md's SwiGLU worked example", "[cuda][layer][spec]") {
    smoe::expert::SwiGLUConfig const ecfg{4, 3, 4};
    std::vector<float> const w1 = {.5f, .25f, -1, 0, -.5f, 0, 1, .25f, 0, -.25f, .5f, .5f,  // expert 0
                                   .25f, 0, .5f, .25f, 1, .5f, 0, -.5f, 0, 0, -.5f, 1};    // expert 1
    std::vector<float> const w3 = {1, 0, .5f, -.25f, .25f, .5f, 0, .5f, -1, .25f, 0, .25f,
                                   .5f, -.5f, 0, .25f, 0, .25f, 1, 0, .25f, 0, 0, .5f};
    std::vector<float> const w2 = {1, -.5f, .25f, 0, .5f, -1, .5f, .25f, 0, -.25f, 1, .5f,
                                   .5f, 0, -.25f, .25f, 1, 0, 0, -.5f, .5f, 1, 0, .25f};
    auto pad = [](std::vector<float> v) {  // experts 2 and 3 are never routed to
        v.resize(v.size() * 2, 0.0f);
        return v;
    };
    DeviceArray<float> dw1(pad(w1)), dw3(pad(w3)), dw2(pad(w2)), gate(std::vector<float>(16, 0.0f));
    std::vector<float> const x = {1, -2, 0.5f, 3};
    DeviceArray<float> dx(x), dy(4);
    DeviceArray<std::int32_t> ids(std::vector<std::int32_t>{0, 1});
    DeviceArray<float> w(std::vector<float>{0.62245933f, 0.37754067f});
    CudaLayer<float> layer({.router = TopKConfig{.num_experts = 4, .top_k = 2, .norm_topk_prob = true}, .expert = ecfg, .max_tokens = 1},
                           {.gate = MatrixView<float const>(gate.data(), 4, 4),
                            .experts = smoe::expert::SwiGLUWeights<float>::dense(dw1.data(), dw3.data(), dw2.data(), ecfg)});
    DeviceArray<std::byte> ws(layer.workspace_size());
    layer.forward_routed(MatrixView<float const>(dx.data(), 1, 4), MatrixView<std::int32_t const>(ids.data(), 1, 2),
                         MatrixView<float const>(w.data(), 1, 2), MatrixView<float>(dy.data(), 1, 4),
                         std::span<std::byte>(ws.data(), ws.size()), nullptr);
    SMOE_CUDA_REQUIRE(cudaDeviceSynchronize());
    smoe_test::check_all_close(download(dy.data(), 4), {-0.42946792, 1.27548728, 0.88394640, 1.02966663}, 2e-5);
}

TEST_CASE("forward_routed skips empty slots and serves an expert that every token chose", "[cuda][layer]") {
    std::mt19937_64 rng(3);
    std::int64_t const d = 48, f = 80, E = 5, K = 3, T = 77;
    LayerFixture<float> m(rng, d, f, E, false);
    CudaLayer<float> layer({.router = TopKConfig{.num_experts = E, .top_k = K}, .expert = m.ecfg, .max_tokens = T}, m.weights());
    std::vector<std::int32_t> ids(static_cast<std::size_t>(T * K));
    std::vector<float> w = normal(rng, ids.size(), 0.5);
    for (std::int64_t t = 0; t < T; ++t) {
        ids[t * K] = 2;                                  // expert 2 takes every token
        ids[t * K + 1] = t % 2 ? 4 : -1;                 // half the tokens leave slot 1 empty
        ids[t * K + 2] = -1;                             // slot 2 always empty; experts 0, 1, 3 get nothing
    }
    auto const x = normal(rng, static_cast<std::size_t>(T * d), 1.0);
    DeviceArray<float> dx(x), dy(static_cast<std::size_t>(T * d)), dw(w);
    DeviceArray<std::int32_t> dids(ids);
    DeviceArray<std::byte> ws(layer.workspace_size());
    auto const r = layer.forward_routed(MatrixView<float const>(dx.data(), T, d), MatrixView<std::int32_t const>(dids.data(), T, K),
                                        MatrixView<float const>(dw.data(), T, K), MatrixView<float>(dy.data(), T, d),
                                        std::span<std::byte>(ws.data(), ws.size()), nullptr);
    SMOE_CUDA_REQUIRE(cudaDeviceSynchronize());
    for (std::size_t i = 0; i < ids.size(); ++i)
        if (ids[i] < 0) w[i] = 0.0f;
    auto const tm = smoe::reference::from_token_major(T, K, E, ids, w);
    auto const ref = smoe::reference::combine_swiglu(tm.view(), m.host_weights(), MatrixView<float const>(x.data(), T, d));
    check_close(download(dy.data(), T * d), ref, T, d, 2e-5);
    smoe_test::check_equal(download(r.offsets, E + 1), tm.offsets);
}

TEST_CASE("a forward captured in a CUDA graph replays to the bits of a direct call", "[cuda][layer][graph]") {
    std::mt19937_64 rng(4);
    std::int64_t const d = 64, f = 96, E = 8, T = 40;
    LayerFixture<__nv_bfloat16> m(rng, d, f, E, false);
    CudaLayer<__nv_bfloat16> layer({.router = TopKConfig::mixtral(), .expert = m.ecfg, .max_tokens = T}, m.weights());
    DeviceArray<std::byte> ws(layer.workspace_size());
    std::span<std::byte> const wspan(ws.data(), ws.size());
    auto x1 = normal(rng, static_cast<std::size_t>(T * d), 1.0), x2 = normal(rng, static_cast<std::size_t>(T * d), 1.0);
    round_to<__nv_bfloat16>(x1);
    round_to<__nv_bfloat16>(x2);
    DeviceArray<__nv_bfloat16> dx(to_w<__nv_bfloat16>(x1)), dy(static_cast<std::size_t>(T * d));
    MatrixView<__nv_bfloat16 const> const xv(dx.data(), T, d);
    MatrixView<__nv_bfloat16> const yv(dy.data(), T, d);

    cudaStream_t stream;
    SMOE_CUDA_REQUIRE(cudaStreamCreate(&stream));
    cudaGraph_t graph;
    cudaGraphExec_t exec;
    SMOE_CUDA_REQUIRE(cudaStreamBeginCapture(stream, cudaStreamCaptureModeGlobal));
    layer.forward(xv, yv, wspan, stream);
    SMOE_CUDA_REQUIRE(cudaStreamEndCapture(stream, &graph));
    SMOE_CUDA_REQUIRE(cudaGraphInstantiate(&exec, graph, 0));

    for (auto const* x : {&x1, &x2}) {  // the graph reads x at replay time: new inputs, same pointers
        dx.upload(to_w<__nv_bfloat16>(*x));
        SMOE_CUDA_REQUIRE(cudaGraphLaunch(exec, stream));
        SMOE_CUDA_REQUIRE(cudaStreamSynchronize(stream));
        auto const from_graph = download(dy.data(), T * d);
        layer.forward(xv, yv, wspan, stream);
        SMOE_CUDA_REQUIRE(cudaStreamSynchronize(stream));
        auto const direct = download(dy.data(), T * d);
        CHECK(std::memcmp(from_graph.data(), direct.data(), direct.size() * sizeof(direct[0])) == 0);
    }
    cudaGraphExecDestroy(exec);
    cudaGraphDestroy(graph);
    cudaStreamDestroy(stream);
}

TEST_CASE("a token with a non-finite input is routed nowhere, counted, and leaves the other tokens intact", "[cuda][layer]") {
    std::mt19937_64 rng(6);
    std::int64_t const d = 32, f = 48, E = 4, T = 9;
    LayerFixture<float> m(rng, d, f, E, false);
    TopKConfig const cfg{.num_experts = E, .top_k = 2};
    CudaLayer<float> layer({.router = cfg, .expert = m.ecfg, .max_tokens = T}, m.weights());
    auto x = normal(rng, static_cast<std::size_t>(T * d), 1.0);
    x[3 * d + 5] = std::nanf("");
    DeviceArray<float> dx(x), dy(static_cast<std::size_t>(T * d));
    DeviceArray<std::byte> ws(layer.workspace_size());
    auto const r = layer.forward(MatrixView<float const>(dx.data(), T, d), MatrixView<float>(dy.data(), T, d),
                                 std::span<std::byte>(ws.data(), ws.size()), nullptr);
    SMOE_CUDA_REQUIRE(cudaDeviceSynchronize());
    CHECK(download(r.nonfinite_rows, 1)[0] == 1);
    auto const y = download(dy.data(), T * d);
    auto const ids = download(r.expert_ids, T * 2);
    CHECK(ids[6] == -1);
    CHECK(ids[7] == -1);
    for (std::int64_t i = 0; i < d; ++i) CHECK(y[3 * d + i] == 0.0f);
    for (std::int64_t i = 0; i < T * d; ++i) CHECK(std::isfinite(y[i]));
}

TEST_CASE("the CUDA layer rejects bad arguments before launching anything", "[cuda][layer]") {
    std::mt19937_64 rng(8);
    LayerFixture<float> m(rng, 16, 16, 4, false);
    using L = CudaLayer<float>;
    CHECK_THROWS_AS(L({.router = TopKConfig{.num_experts = 5, .top_k = 2}, .expert = m.ecfg}, m.weights()), smoe::invalid_argument);
    CHECK_THROWS_AS(L({.router = TopKConfig::deepseek_v3(), .expert = m.ecfg}, m.weights()), smoe::invalid_argument);
    for (int option = 0; option < 4; ++option) {  // TopK options the CUDA kernels do not have: refused by name
        TopKConfig rc{.num_experts = 4, .top_k = 2};
        char const* key = option == 0 ? "score_func" : option == 1 ? "group_score" : option == 2 ? "norm_p" : "num_null_experts";
        if (option == 0) rc.score_func = smoe::router::ScoreFunc::sqrtsoftplus;
        if (option == 1) rc.n_group = 2, rc.topk_group = 1, rc.group_score = smoe::router::GroupScore::top2_sum;
        if (option == 2) rc.norm_p = 2.0f;
        if (option == 3) rc.num_null_experts = 1;
        INFO(key);
        CHECK_THROWS_WITH(L({.router = rc, .expert = m.ecfg}, m.weights()), Catch::Contains(key) && Catch::Contains("CUDA backend"));
    }
    L layer({.router = TopKConfig{.num_experts = 4, .top_k = 2}, .expert = m.ecfg, .max_tokens = 4}, m.weights());
    DeviceArray<float> dx(16 * 8), dy(16 * 8);
    DeviceArray<std::byte> ws(layer.workspace_size());
    std::span<std::byte> const wspan(ws.data(), ws.size());
    CHECK_THROWS_AS(layer.forward(MatrixView<float const>(dx.data(), 8, 16), MatrixView<float>(dy.data(), 8, 16), wspan, nullptr),
                    smoe::invalid_argument);  // more than max_tokens
    CHECK_THROWS_AS(layer.forward(MatrixView<float const>(dx.data(), 2, 15), MatrixView<float>(dy.data(), 2, 15), wspan, nullptr),
                    smoe::invalid_argument);  // wrong width
    CHECK_THROWS_AS(layer.forward(MatrixView<float const>(dx.data(), 2, 16), MatrixView<float>(dy.data(), 2, 16),
                                  wspan.first(64), nullptr),
                    smoe::invalid_argument);  // workspace too small
}

TEST_CASE("forward_routed takes a variable-k router's rows (ReLU kernel, K = E) and fewer slots than top_k", "[cuda][layer]") {
    std::mt19937_64 rng(10);
    std::int64_t const d = 40, f = 56, E = 6, T = 33;
    LayerFixture<float> m(rng, d, f, E, false);
    CudaLayer<float> layer({.router = TopKConfig{.num_experts = E, .top_k = E}, .expert = m.ecfg, .max_tokens = T}, m.weights());
    DeviceArray<std::byte> ws(layer.workspace_size());
    std::span<std::byte> const wspan(ws.data(), ws.size());
    auto const x = normal(rng, static_cast<std::size_t>(T * d), 1.0);
    DeviceArray<float> dx(x), dy(static_cast<std::size_t>(T * d));

    // ReLU routing on the device (K = E columns, -1 padded), straight into the layer.
    auto const logits = normal(rng, static_cast<std::size_t>(T * E), 1.0, 0.25);
    DeviceArray<float> dl(logits), dw(static_cast<std::size_t>(T * E));
    DeviceArray<std::int32_t> dids(static_cast<std::size_t>(T * E)), counters(std::vector<std::int32_t>{0, 0});
    kc::launch_relu_route(dl.data(), E, T, E, dids.data(), dw.data(), E, counters.data(), counters.data() + 1, nullptr);
    auto const r = layer.forward_routed(MatrixView<float const>(dx.data(), T, d), MatrixView<std::int32_t const>(dids.data(), T, E),
                                        MatrixView<float const>(dw.data(), T, E), MatrixView<float>(dy.data(), T, d), wspan, nullptr);
    SMOE_CUDA_REQUIRE(cudaDeviceSynchronize());
    CHECK(r.k == E);
    check_layer_output(m, r, x, download(dy.data(), T * d), 2e-5);

    // Two slots of a top_k = E layer.
    std::vector<std::int32_t> ids2(static_cast<std::size_t>(T * 2));
    std::vector<float> w2 = normal(rng, ids2.size(), 0.5);
    for (std::int64_t t = 0; t < T; ++t) {
        ids2[t * 2] = static_cast<std::int32_t>(t % E);
        ids2[t * 2 + 1] = static_cast<std::int32_t>((t + 1 + t / E) % E == t % E ? -1 : (t + 1 + t / E) % E);
    }
    DeviceArray<std::int32_t> dids2(ids2);
    DeviceArray<float> dw2(w2);
    auto const r2 = layer.forward_routed(MatrixView<float const>(dx.data(), T, d), MatrixView<std::int32_t const>(dids2.data(), T, 2),
                                         MatrixView<float const>(dw2.data(), T, 2), MatrixView<float>(dy.data(), T, d), wspan, nullptr);
    SMOE_CUDA_REQUIRE(cudaDeviceSynchronize());
    CHECK(r2.k == 2);
    check_layer_output(m, r2, x, download(dy.data(), T * d), 2e-5);
}
