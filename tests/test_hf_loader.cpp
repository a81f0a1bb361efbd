// smoe::io::read_hf_config / HfMoeLayer: Hugging Face configs of the five families, and MoE blocks
// loaded from checkpoint tensors (held in a TensorMap) against the scalar oracle. The real-module
// comparisons are the case tests (tests/cases, data from scripts/gen_cases.py).

#include <algorithm>
#include <chrono>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <limits>
#include <new>
#include <random>
#include <string>
#include <vector>

#include <catch2/catch.hpp>

#include "common/data.hpp"
#include "common/layer_model.hpp"
#include "smoe/io/hf_config.hpp"
#include "smoe/io/hf_moe.hpp"
#include "smoe/io/tensor_map.hpp"
#include "smoe/kernels/reference/reference.hpp"

using Catch::Matchers::Contains;
using smoe::MatrixView;
using smoe::io::Dtype;
using smoe::io::HfFamily;
using smoe::io::HfMoeLayer;
using smoe::io::parse_hf_config;
using smoe::io::TensorMap;
using json = nlohmann::json;

namespace {

std::vector<float> rnd(std::mt19937_64& rng, std::int64_t n, double sd) { return smoe_test::normal(rng, static_cast<std::size_t>(n), sd); }

void put(TensorMap& m, std::string name, std::vector<std::int64_t> shape, std::vector<float> const& v, bool bf16 = false) {
    if (!bf16) return m.add_values(std::move(name), Dtype::F32, std::move(shape), std::span<float const>(v));
    std::vector<smoe::bf16> b(v.size());
    for (std::size_t i = 0; i < v.size(); ++i) b[i] = smoe::to_bf16(v[i]);
    m.add_values(std::move(name), Dtype::BF16, std::move(shape), std::span<smoe::bf16 const>(b));
}

// A small random block of one family: the tensors under their checkpoint names, and the same
// values (rounded to bf16 when asked) as dense stacks for the oracle.
struct Block {
    std::int64_t d, f, E, fs;
    std::vector<float> gate, bias, w1, w3, w2, s1, s3, s2, sgate;
    std::int64_t Z = 0;  // identity experts: the gate and the selection bias have E + Z rows (LongCat-Flash)
    std::vector<float> gbias, b1, b3, b2, obias;  // router bias [E], expert biases [E, f], [E, f], [E, d], output bias [d]

    static Block random(std::mt19937_64& rng, std::int64_t d, std::int64_t f, std::int64_t E, std::int64_t fs, bool bf16,
                        std::int64_t Z = 0) {
        Block b{d, f, E, fs, {}, {}, {}, {}, {}, {}, {}, {}, {}};
        b.Z = Z;
        auto round = [&](std::vector<float> v) {
            if (bf16)
                for (auto& x : v) x = smoe::to_float(smoe::to_bf16(x));
            return v;
        };
        b.gate = rnd(rng, (E + Z) * d, 0.5);
        b.bias = rnd(rng, E + Z, 0.1);
        b.w1 = round(rnd(rng, E * f * d, 0.3));
        b.w3 = round(rnd(rng, E * f * d, 0.3));
        b.w2 = round(rnd(rng, E * d * f, 0.3));
        b.s1 = round(rnd(rng, fs * d, 0.3));
        b.s3 = round(rnd(rng, fs * d, 0.3));
        b.s2 = round(rnd(rng, d * fs, 0.3));
        b.sgate = rnd(rng, d, 0.5);
        b.gbias = rnd(rng, E, 0.5), b.b1 = rnd(rng, E * f, 0.5), b.b3 = rnd(rng, E * f, 0.5), b.b2 = rnd(rng, E * d, 0.5);
        b.obias = rnd(rng, d, 0.5);
        return b;
    }

    // The block's tensors under the on-disk names of families.md §2.8.
    struct Disk {
        std::string block;                       // "model.layers.1.mlp."
        std::string router = "gate.weight";
        std::string bias;                        // the selection bias; "": none
        std::string gate = "gate_proj.weight", up = "up_proj.weight", down = "down_proj.weight";
        std::string shared = "shared_experts.";  // the shared expert's prefix in the block
        std::string shared_gate;                 // "": ungated
        bool fused = false;                      // fused_gate_up [E, 2f, d] / fused_down [E, d, f]
        bool bias_row = false;                   // the bias as [1, E] (ERNIE-4.5's moe_statics)
        std::string fused_gate_up = "experts.gate_up_proj", fused_down = "experts.down_proj";
        std::string shared_at;                   // the shared expert's full prefix, when it is not in the block
        bool shared_fused = false;               // shared input_linear [2fs, d] / output_linear [d, fs] (Granite)
        bool fused_transposed = false;           // fused as [E, d, 2f] and [E, f, d] (Qwen3-VL-MoE)
        bool interleaved = false;                // with fused_transposed: gate and up columns alternate (GPT-OSS)
        bool dbrx = false;                       // experts.mlp.w1 / v1 / w2 [E·f, d], w2 transposed (DBRX)
        std::string router_bias, gu_bias, dn_bias, out_bias;  // "": none (GPT-OSS, JetMoE)
        bool shared_w = false;                   // the shared expert as w1 / w3 / w2 (DeepSeek-V4)
        bool gated = true;                       // false: no gate tensors; fused_gate_up is the up stack [E, f, d] (Nemotron-H)
    };

    TensorMap tensors(HfFamily fam, std::int64_t layer, bool bf16, bool fused = false) const {
        bool const mix = fam == HfFamily::mixtral, qwen = fam == HfFamily::qwen2_moe;
        Disk n{.block = "model.layers." + std::to_string(layer) + (mix ? ".block_sparse_moe." : ".mlp."), .fused = fused};
        if (fam == HfFamily::deepseek_v3) n.bias = "gate.e_score_correction_bias";
        if (mix) n.gate = "w1.weight", n.up = "w3.weight", n.down = "w2.weight";
        if (qwen) n.shared = "shared_expert.", n.shared_gate = "shared_expert_gate.weight";
        return write(n, bf16);
    }

    TensorMap write(Disk const& n, bool bf16) const {
        TensorMap m;
        std::string const& p = n.block;
        put(m, p + n.router, {E + Z, d}, gate);
        if (!n.bias.empty()) put(m, p + n.bias, n.bias_row ? std::vector<std::int64_t>{1, E + Z} : std::vector<std::int64_t>{E + Z}, bias);
        if (!n.router_bias.empty()) put(m, p + n.router_bias, {E}, gbias);
        if (!n.out_bias.empty()) put(m, p + n.out_bias, {d}, obias);
        if (!n.gu_bias.empty()) {
            std::vector<float> gu;
            for (std::int64_t e = 0; e < E; ++e)
                for (std::int64_t j = 0; j < f; ++j) gu.push_back(b1[std::size_t(e * f + j)]), gu.push_back(b3[std::size_t(e * f + j)]);
            put(m, p + n.gu_bias, {E, 2 * f}, gu);  // interleaved, as GPT-OSS's
            put(m, p + n.dn_bias, {E, d}, b2);
        }
        if (n.dbrx) {
            std::vector<float> dn(static_cast<std::size_t>(E * f * d));
            for (std::int64_t e = 0; e < E; ++e)
                for (std::int64_t i = 0; i < d; ++i)
                    for (std::int64_t j = 0; j < f; ++j) dn[std::size_t((e * f + j) * d + i)] = w2[std::size_t((e * d + i) * f + j)];
            put(m, p + "experts.mlp.w1", {E * f, d}, w1, bf16);
            put(m, p + "experts.mlp.v1", {E * f, d}, w3, bf16);
            put(m, p + "experts.mlp.w2", {E * f, d}, dn, bf16);
        } else if (n.fused && n.fused_transposed) {
            std::int64_t const gc = n.interleaved ? 2 : 1, uc = n.interleaved ? 1 : f;
            std::vector<float> gu(static_cast<std::size_t>(E * d * 2 * f)), dn(static_cast<std::size_t>(E * f * d));
            for (std::int64_t e = 0; e < E; ++e)
                for (std::int64_t i = 0; i < d; ++i)
                    for (std::int64_t j = 0; j < f; ++j) {
                        gu[static_cast<std::size_t>((e * d + i) * 2 * f + gc * j)] = w1[static_cast<std::size_t>((e * f + j) * d + i)];
                        gu[static_cast<std::size_t>((e * d + i) * 2 * f + uc + gc * j)] = w3[static_cast<std::size_t>((e * f + j) * d + i)];
                        dn[static_cast<std::size_t>((e * f + j) * d + i)] = w2[static_cast<std::size_t>((e * d + i) * f + j)];
                    }
            put(m, p + n.fused_gate_up, {E, d, 2 * f}, gu, bf16);
            put(m, p + n.fused_down, {E, f, d}, dn, bf16);
        } else if (n.fused) {
            std::vector<float> gu;
            for (std::int64_t e = 0; e < E; ++e) {
                if (n.gated) gu.insert(gu.end(), w1.begin() + e * f * d, w1.begin() + (e + 1) * f * d);
                gu.insert(gu.end(), w3.begin() + e * f * d, w3.begin() + (e + 1) * f * d);
            }
            put(m, p + n.fused_gate_up, {E, (n.gated ? 2 : 1) * f, d}, gu, bf16);
            put(m, p + n.fused_down, {E, d, f}, w2, bf16);
        } else {
            for (std::int64_t e = 0; e < E; ++e) {
                std::string const q = p + "experts." + std::to_string(e) + ".";
                auto slice = [&](std::vector<float> const& v, std::int64_t n) { return std::vector<float>(v.begin() + e * n, v.begin() + (e + 1) * n); };
                if (n.gated) put(m, q + n.gate, {f, d}, slice(w1, f * d), bf16);
                put(m, q + n.up, {f, d}, slice(w3, f * d), bf16);
                put(m, q + n.down, {d, f}, slice(w2, d * f), bf16);
            }
        }
        if (fs > 0) {
            std::string const s = n.shared_at.empty() ? p + n.shared : n.shared_at;
            if (n.shared_fused) {
                std::vector<float> gu(s1);
                gu.insert(gu.end(), s3.begin(), s3.end());
                put(m, s + "input_linear.weight", {2 * fs, d}, gu, bf16);
                put(m, s + "output_linear.weight", {d, fs}, s2, bf16);
            } else {
                if (n.gated) put(m, s + (n.shared_w ? "w1" : "gate_proj") + ".weight", {fs, d}, s1, bf16);
                put(m, s + (n.shared_w ? "w3" : "up_proj") + ".weight", {fs, d}, s3, bf16);
                put(m, s + (n.shared_w ? "w2" : "down_proj") + ".weight", {d, fs}, s2, bf16);
            }
            if (!n.shared_gate.empty()) put(m, p + n.shared_gate, {1, d}, sgate);
        }
        return m;
    }

    // Oracle: route the fp32 logits (the layer's own gate GEMM), combine in double, add the shared expert.
    std::vector<double> oracle(smoe::io::HfMoeConfig const& c, std::vector<float> const& x, std::int64_t T) const {
        std::vector<float> logits(static_cast<std::size_t>(T * E));
        smoe::kernels::cpu::gemm_nt(xsimd::default_arch{}, MatrixView<float const>(x.data(), T, d), MatrixView<float const>(gate.data(), E, d),
                                    MatrixView<float>(logits.data(), T, E));
        std::span<float const> sel_bias;
        if (c.router.requires_expert_bias) sel_bias = bias;
        auto const r = smoe::reference::route_topk(c.router, MatrixView<float const>(logits.data(), T, E), sel_bias);
        auto const w = smoe::expert::SwiGLUWeights<float>::dense(w1.data(), w3.data(), w2.data(), {d, f, E});
        auto y = smoe::reference::combine_swiglu(r.view(), w, MatrixView<float const>(x.data(), T, d));
        if (fs == 0) return y;
        auto const sw = smoe::expert::SwiGLUWeights<float>::dense(s1.data(), s3.data(), s2.data(), {d, fs, 1});
        for (std::int64_t t = 0; t < T; ++t) {
            double g = 1.0;
            if (c.shared_gated) {
                double z = 0;
                for (std::int64_t i = 0; i < d; ++i) z += double(sgate[i]) * x[t * d + i];
                g = 1.0 / (1.0 + std::exp(-z));
            }
            auto const o = smoe::reference::swiglu_expert(sw, 0, x.data() + t * d);
            for (std::int64_t i = 0; i < d; ++i) y[t * d + i] += g * o[i];
        }
        return y;
    }
};

// The block built by hand from the same fp32 tensors: smoe's MoELayer with the router config a family
// must map to, written out from families.md (never taken from parse_hf_config).
template <class Expert>
using HandLayer = smoe::MoELayer<smoe::router::TopK, Expert, smoe::balance::None>;

// The expert forms of families.md §2.1-§2.6 a family's block has beyond plain SwiGLU, written out per family.
struct Extra {
    smoe::expert::GluActivation act{};
    bool on_input = false, gate_bias = false, expert_bias = false, out_bias = false;
    float shared_scale = 1.0f;
    std::int64_t Z = 0;   // identity experts
    float mixer = -1.0f;  // >= 0: PhiMoE's sparsemixer with this ε routes, the layer runs forward_routed
};

std::vector<float> by_hand(Block const& b, smoe::router::TopKConfig const& rc, bool gated, std::vector<float> const& x, std::int64_t T,
                           Extra const& ex = {}) {
    using smoe::expert::SwiGLU;
    using smoe::expert::SwiGLUWeights;
    namespace gate_kind = smoe::expert::shared_gate;
    std::int64_t const d = b.d;
    std::vector<float> y(static_cast<std::size_t>(T * d));
    auto const off = smoe::expert::Bf16Dot::off;
    smoe::expert::SwiGLUConfig const routed{d, b.f, b.E, off, {}, {}, ex.act, ex.on_input}, shared{d, b.fs, 1, off, {}, {}, ex.act};
    bool const g = ex.act.gated();  // non-gated relu² (Nemotron-H): no W1
    auto rw = SwiGLUWeights<float>::dense(g ? b.w1.data() : nullptr, b.w3.data(), b.w2.data(), routed);
    if (ex.expert_bias)
        rw.bias = {MatrixView<float const>(b.b1.data(), b.E, b.f), MatrixView<float const>(b.b3.data(), b.E, b.f), MatrixView<float const>(b.b2.data(), b.E, d)};
    auto const sw = SwiGLUWeights<float>::dense(g ? b.s1.data() : nullptr, b.s3.data(), b.s2.data(), shared);
    MatrixView<float const> const gate(b.gate.data(), b.E + ex.Z, d);
    std::span<float const> bias, gbias;
    if (rc.requires_expert_bias) bias = b.bias;
    if (ex.gate_bias) gbias = b.gbias;
    std::int64_t const max_tokens = std::max<std::int64_t>(T, 1);
    auto run = [&](auto&& layer) {
        MatrixView<float const> const xv(x.data(), T, d);
        if (ex.mixer < 0) return void(layer.forward(xv, MatrixView<float>(y.data(), T, d)));
        std::vector<float> logits(std::size_t(T * b.E)), w(std::size_t(T * 2));
        std::vector<std::int32_t> ids(std::size_t(T * 2));
        smoe::kernels::cpu::gemm_nt(xsimd::default_arch{}, xv, gate, MatrixView<float>(logits.data(), T, b.E));
        smoe::router::SparseMixer const mixer({.num_experts = b.E, .router_jitter_noise = ex.mixer});
        std::vector<std::byte> wsb(mixer.workspace_size(T) + 64);
        smoe::Workspace ws(wsb);
        mixer.route(xsimd::default_arch{}, MatrixView<float const>(logits.data(), T, b.E), {},
                    smoe::TokenMajorOut{MatrixView<std::int32_t>(ids.data(), T, 2), MatrixView<float>(w.data(), T, 2)}, ws);
        layer.forward_routed(xv, MatrixView<std::int32_t const>(ids.data(), T, 2), MatrixView<float const>(w.data(), T, 2),
                             MatrixView<float>(y.data(), T, d));
    };
    if (b.fs == 0) {
        using L = HandLayer<SwiGLU<float>>;
        run(L(L::Config{.router = rc, .expert = routed, .max_tokens = max_tokens}, L::Weights{gate, bias, rw, gbias}));
    } else if (gated) {
        using L = HandLayer<smoe::expert::Shared<SwiGLU<float>, gate_kind::Sigmoid>>;
        run(L(L::Config{.router = rc, .expert = {routed, shared, ex.shared_scale}, .max_tokens = max_tokens},
              L::Weights{gate, bias, {rw, sw, MatrixView<float const>(b.sgate.data(), 1, d)}, gbias}));
    } else {
        using L = HandLayer<smoe::expert::Shared<SwiGLU<float>, gate_kind::None>>;
        run(L(L::Config{.router = rc, .expert = {routed, shared, ex.shared_scale}, .max_tokens = max_tokens},
              L::Weights{gate, bias, {rw, sw, {}}, gbias}));
    }
    if (ex.out_bias)
        for (std::int64_t t = 0; t < T; ++t)
            for (std::int64_t i = 0; i < d; ++i) y[std::size_t(t * d + i)] += b.obias[std::size_t(i)];
    return y;
}

// R-V3 (families.md §0): sigmoid, selection-only bias, groups, renorm(1e-20), r.
smoe::router::TopKConfig sigmoid_bias_router(std::int64_t E, std::int64_t k, std::int64_t n_group, std::int64_t topk_group, bool norm, float r) {
    return {.num_experts = E, .top_k = k, .score_func = smoe::router::ScoreFunc::sigmoid, .norm_topk_prob = norm,
            .routed_scaling_factor = r, .n_group = n_group, .topk_group = topk_group, .requires_expert_bias = true};
}

// A quantised layer and the float layer on its dequantised weights: the same bits on x [T, d], and not zeros.
void same_outputs(HfMoeLayer& quantised, HfMoeLayer& dense, std::vector<float> const& x, std::int64_t T, std::int64_t d) {
    std::vector<float> yq(static_cast<std::size_t>(T * d)), yf(yq.size());
    quantised.forward(MatrixView<float const>(x.data(), T, d), MatrixView<float>(yq.data(), T, d));
    dense.forward(MatrixView<float const>(x.data(), T, d), MatrixView<float>(yf.data(), T, d));
    CHECK(yq == yf);
    double mag = 0;
    for (float v : yf) mag = std::max(mag, double(std::fabs(v)));
    CHECK(mag > 0.1);
}

// Random E2M1 rows [R, C] as MXFP4 and FP4 experts store them (formats.md §3.1): byte i of a 32-block holds
// element 2i in its low nibble and 2i + 1 in its high one, one E8M0 factor 123..128 per block. Returns the values.
std::vector<float> random_e2m1(std::mt19937_64& rng, std::int64_t R, std::int64_t C, std::vector<std::uint8_t>& bytes,
                               std::vector<std::uint8_t>& scales) {
    std::uniform_int_distribution<int> nib(0, 15), sc(123, 128);
    float const e2m1[8] = {0, .5f, 1, 1.5f, 2, 3, 4, 6};
    std::vector<float> w(static_cast<std::size_t>(R * C));
    for (std::int64_t r = 0; r < R; ++r)
        for (std::int64_t b = 0; b < C / 32; ++b) {
            int const s = sc(rng);
            scales.push_back(static_cast<std::uint8_t>(s));
            for (int i = 0; i < 16; ++i) {
                int const lo = nib(rng), hi = nib(rng);
                bytes.push_back(static_cast<std::uint8_t>(lo | (hi << 4)));
                for (int h = 0; h < 2; ++h) {
                    int const q = h ? hi : lo;
                    w[static_cast<std::size_t>(r * C + b * 32 + 2 * i + h)] = (q & 8 ? -1.0f : 1.0f) * e2m1[q & 7] * std::ldexp(1.0f, s - 127);
                }
            }
        }
    return w;
}

json family_config(HfFamily fam, std::int64_t d, std::int64_t f, std::int64_t E, std::int64_t k, std::int64_t fs) {
    switch (fam) {
        case HfFamily::mixtral:
            return {{"model_type", "mixtral"}, {"hidden_size", d}, {"intermediate_size", f}, {"num_local_experts", E},
                    {"num_experts_per_tok", k}, {"num_hidden_layers", 2}};
        case HfFamily::olmoe:
            return {{"model_type", "olmoe"}, {"hidden_size", d}, {"intermediate_size", f}, {"num_experts", E},
                    {"num_experts_per_tok", k}, {"num_hidden_layers", 2}, {"norm_topk_prob", false}};
        case HfFamily::qwen2_moe:
            return {{"model_type", "qwen2_moe"}, {"hidden_size", d}, {"moe_intermediate_size", f}, {"num_experts", E},
                    {"num_experts_per_tok", k}, {"num_hidden_layers", 2}, {"norm_topk_prob", true},
                    {"shared_expert_intermediate_size", fs}};
        case HfFamily::deepseek_v2:
            return {{"model_type", "deepseek_v2"}, {"hidden_size", d}, {"moe_intermediate_size", f}, {"n_routed_experts", E},
                    {"num_experts_per_tok", k}, {"num_hidden_layers", 2}, {"n_shared_experts", fs / f},
                    {"topk_method", "group_limited_greedy"}, {"n_group", 4}, {"topk_group", 2}, {"routed_scaling_factor", 1.5}};
        case HfFamily::deepseek_v3:
            return {{"model_type", "deepseek_v3"}, {"hidden_size", d}, {"moe_intermediate_size", f}, {"n_routed_experts", E},
                    {"num_experts_per_tok", k}, {"num_hidden_layers", 2}, {"n_shared_experts", fs / f}, {"n_group", 4},
                    {"topk_group", 2}, {"first_k_dense_replace", 0}, {"routed_scaling_factor", 2.5}};
        default: return {};  // the other families are written out where they are tested
    }
}

}  // namespace

TEST_CASE("Hugging Face configs map onto router presets and shared experts", "[hf][config]") {
    auto const mix = parse_hf_config({{"model_type", "mixtral"}, {"num_hidden_layers", 4}}, "c.json");
    CHECK(mix.family == HfFamily::mixtral);
    CHECK(mix.hidden_size == 4096);
    CHECK(mix.router.norm_topk_prob);
    CHECK(mix.router.num_experts == 8);
    CHECK(mix.shared_intermediate_size == 0);
    CHECK(std::find(mix.defaulted.begin(), mix.defaulted.end(), "hidden_size = 4096") != mix.defaulted.end());

    auto const qwen = parse_hf_config({{"model_type", "qwen2_moe"}, {"decoder_sparse_step", 2}, {"mlp_only_layers", {3}}, {"num_hidden_layers", 8}}, "q.json");
    CHECK(qwen.shared_gated);
    CHECK(qwen.shared_intermediate_size == 5632);
    CHECK(qwen.intermediate_size == 1408);
    CHECK(!qwen.router.norm_topk_prob);
    CHECK(!qwen.is_moe_layer(0));
    CHECK(qwen.is_moe_layer(1));
    CHECK(!qwen.is_moe_layer(3));  // mlp_only_layers
    CHECK(qwen.is_moe_layer(5));
    CHECK(!qwen.is_moe_layer(8));

    auto const v2 = parse_hf_config(family_config(HfFamily::deepseek_v2, 64, 16, 16, 4, 32), "v2.json");
    CHECK(v2.router.n_group == 4);
    CHECK(v2.router.topk_group == 2);
    CHECK(v2.router.routed_scaling_factor == 1.5f);
    CHECK(v2.shared_intermediate_size == 32);
    CHECK(!v2.shared_gated);

    auto const v3 = parse_hf_config({{"model_type", "deepseek_v3"}}, "v3.json");
    CHECK(v3.router.score_func == smoe::router::ScoreFunc::sigmoid);
    CHECK(v3.router.requires_expert_bias);
    CHECK(v3.router.norm_topk_prob);
    CHECK(v3.first_moe_layer == 3);
    CHECK(!v3.is_moe_layer(2));
    CHECK(v3.is_moe_layer(3));
}

TEST_CASE("bad Hugging Face configs name the file and the key", "[hf][config][errors]") {
    CHECK_THROWS_WITH(parse_hf_config({{"model_type", "llama"}}, "c.json"), Contains("c.json") && Contains("model_type") && Contains("llama"));
    CHECK_THROWS_WITH(parse_hf_config({{"hidden_size", 4}}, "c.json"), Contains("model_type") && Contains("missing"));
    CHECK_THROWS_WITH(parse_hf_config({{"model_type", "mixtral"}, {"hidden_act", "gelu"}}, "c.json"), Contains("hidden_act"));
    CHECK_THROWS_WITH(parse_hf_config({{"model_type", "olmoe"}, {"num_experts", "64"}}, "c.json"), Contains("num_experts") && Contains("an integer"));
    CHECK_THROWS_WITH(parse_hf_config({{"model_type", "olmoe"}, {"hidden_size", -3}}, "c.json"), Contains("hidden_size") && Contains(">= 1"));
    CHECK_THROWS_WITH(parse_hf_config({{"model_type", "olmoe"}, {"num_experts", 4}, {"num_experts_per_tok", 5}}, "c.json"),
                      Contains("top_k") && Contains("c.json"));
    CHECK_THROWS_WITH(parse_hf_config({{"model_type", "deepseek_v2"}}, "c.json"), Contains("num_experts_per_tok") && Contains("no default"));
    CHECK_THROWS_WITH(parse_hf_config({{"model_type", "deepseek_v2"}, {"num_experts_per_tok", 2}, {"topk_method", "group_limited_greedy"}}, "c.json"),
                      Contains("n_group"));
    CHECK_THROWS_WITH(parse_hf_config({{"model_type", "deepseek_v3"}, {"scoring_func", "softmax"}}, "c.json"), Contains("scoring_func"));
    CHECK_THROWS_WITH(parse_hf_config(json::array(), "c.json"), Contains("JSON object"));
}

TEST_CASE("configs written by Python's json load with Infinity and NaN where smoe does not read them", "[hf][config][json]") {
    // transformers 4.x wrote float('inf') as Python's json does, a bare Infinity (Mamba's and Nemotron-H's
    // time_step_limit [0.0, Infinity]); such a config loads, a key smoe reads is still held to its type and range,
    // and anything else that is not JSON stays an error. Safetensors headers stay strict.
    using smoe::io::JsonFloats;
    auto parse = [](std::string const& t) { return smoe::io::parse_json_strict(t, "c.json", 32, JsonFloats::python); };
    std::string const text = R"({"model_type": "granitemoehybrid", "time_step_limit": [0.0, Infinity], "a":-Infinity, "b": NaN,
                                 "c": "NaN Infinity", "d": {"e": [NaN,-Infinity ,Infinity]}})";
    auto const j = parse(text);
    double const inf = std::numeric_limits<double>::infinity();
    CHECK(j["time_step_limit"][1].get<double>() == inf);
    CHECK(j["a"].get<double>() == -inf);
    CHECK(std::isnan(j["b"].get<double>()));
    CHECK(j["c"] == "NaN Infinity");
    CHECK((std::isnan(j["d"]["e"][0].get<double>()) && j["d"]["e"][1].get<double>() == -inf && j["d"]["e"][2].get<double>() == inf));
    CHECK(parse_hf_config(j, "c.json").family == HfFamily::granitemoehybrid);
    CHECK_THROWS_WITH(parse_hf_config(parse(R"({"model_type": "deepseek_v3", "routed_scaling_factor": Infinity})"), "c.json"),
                      Contains("key 'routed_scaling_factor'") && Contains("a finite number"));
    CHECK_THROWS_WITH(parse_hf_config(parse(R"({"model_type": "olmoe", "num_experts": NaN})"), "c.json"), Contains("key 'num_experts'") && Contains("an integer"));
    for (char const* bad : {R"({"a": Inf})", R"({"a": +Infinity})", R"({"a": infinity})", R"({"a": NaNa})", R"({NaN: 1})", R"({"a": [1 NaN]})",
                            R"({"a": Infinity1})", R"({"a": "\u0001NaN", "b": NaN})"}) {
        INFO(bad);
        CHECK_THROWS_WITH(parse(bad), Contains("valid JSON"));
    }
    CHECK(parse(R"({"a": "\u0001NaN"})")["a"] == "\u0001NaN");  // a string of the file is never read as a float
    CHECK_THROWS_WITH(smoe::io::parse_json_strict(text, "h.json"), Contains("h.json") && Contains("valid JSON"));
    // From a file, GPTQ's `dynamic` keys in file order (a second, order-keeping parse of the same text).
    auto const path = std::filesystem::temp_directory_path() / "smoe_test_python_floats_config.json";
    std::ofstream(path) << R"({"model_type": "mixtral", "time_step_limit": [0.0, Infinity],
        "quantization_config": {"quant_method": "gptq", "bits": 4, "group_size": 128, "sym": true,
                                "dynamic": {"-:.*gate.*": {}, "+:.*experts.*": {"group_size": 32}}}})";
    auto const c = smoe::io::read_hf_config(path);
    std::filesystem::remove(path);
    CHECK(c.family == HfFamily::mixtral);
    REQUIRE(c.quant);
    CHECK((c.quant->dynamic_ordered && c.quant->dynamic.size() == 2 && c.quant->dynamic[0].dense));
}

TEST_CASE("every family loads and matches the oracle, in fp32 and in bf16", "[hf][load]") {
    std::mt19937_64 rng(21);
    for (auto fam : {HfFamily::mixtral, HfFamily::olmoe, HfFamily::qwen2_moe, HfFamily::deepseek_v2, HfFamily::deepseek_v3}) {
        for (bool bf16 : {false, true}) {
            std::int64_t const d = 40, f = 12, E = 8, k = 2;
            std::int64_t const fs = fam == HfFamily::qwen2_moe ? 20 : (fam == HfFamily::deepseek_v2 || fam == HfFamily::deepseek_v3) ? 24 : 0;
            INFO(to_string(fam) << (bf16 ? " bf16" : " f32"));
            auto const cfg = parse_hf_config(family_config(fam, d, f, E, k, fs), "c.json");
            Block const b = Block::random(rng, d, f, E, fs, bf16);
            auto const tensors = b.tensors(fam, 1, bf16);
            // bf16_dot off: the 2e-5 bound is the fp32 path's (an AVX512-BF16 CPU would round activations).
            auto moe = HfMoeLayer::load(cfg, tensors, 1, {.max_tokens = 33, .bf16_dot = smoe::expert::Bf16Dot::off}, "mem");
            CHECK(moe.format() == (bf16 ? smoe::io::WeightFormat::bf16 : smoe::io::WeightFormat::f32));
            for (std::int64_t T : {0, 1, 33}) {
                auto const x = rnd(rng, T * d, 1.0);
                std::vector<float> y(static_cast<std::size_t>(T * d));
                moe.forward(MatrixView<float const>(x.data(), T, d), MatrixView<float>(y.data(), T, d));
                smoe_test::check_close(y, b.oracle(cfg, x, T), T, d, 2e-5);
            }
        }
    }
}

// Issue 16: families whose math smoe has, mapped from their own config keys and on-disk names.
TEST_CASE("the families that reuse smoe's routers take their Hugging Face defaults", "[hf][config][families]") {
    auto has_default = [](smoe::io::HfMoeConfig const& c, std::string const& kv) {
        return std::find(c.defaulted.begin(), c.defaulted.end(), kv) != c.defaulted.end();
    };
    // families.md §2.7, Qwen3MoeConfig: 128 experts, top-8, width 768, no renorm, every layer MoE.
    auto const q3 = parse_hf_config({{"model_type", "qwen3_moe"}}, "q3.json");
    CHECK(q3.family == HfFamily::qwen3_moe);
    CHECK((q3.num_experts() == 128 && q3.top_k() == 8 && q3.intermediate_size == 768 && q3.hidden_size == 2048));
    CHECK(q3.router.score_func == smoe::router::ScoreFunc::softmax);
    CHECK(!q3.router.norm_topk_prob);
    CHECK(q3.shared_intermediate_size == 0);
    CHECK((q3.is_moe_layer(0) && q3.is_moe_layer(23) && !q3.is_moe_layer(24)));
    CHECK(has_default(q3, "num_experts = 128"));
    // Both spellings of the expert count; two that disagree are an error naming both.
    CHECK(parse_hf_config({{"model_type", "qwen3_moe"}, {"num_local_experts", 16}}, "q3.json").num_experts() == 16);
    CHECK(parse_hf_config({{"model_type", "qwen3_moe"}, {"num_experts", 16}, {"num_local_experts", 16}}, "q3.json").num_experts() == 16);
    CHECK_THROWS_WITH(parse_hf_config({{"model_type", "qwen3_moe"}, {"num_experts", 16}, {"num_local_experts", 32}}, "q3.json"),
                      Contains("key 'num_local_experts'") && Contains("32") && Contains("'num_experts' (16)"));

    struct Defaults {
        char const* type;
        std::int64_t d, f, L, E, k, fs, n_group, topk_group;
        float r;
        bool norm;
        std::int64_t first_moe;
    };
    for (auto const& x : {Defaults{"glm4_moe", 4096, 1408, 46, 128, 8, 1408, 1, 1, 1.0f, true, 1},
                          Defaults{"glm4_moe_lite", 2048, 1536, 47, 64, 4, 1536, 1, 1, 1.8f, true, 1},
                          Defaults{"glm_moe_dsa", 6144, 2048, 78, 256, 8, 2048, 1, 1, 2.5f, true, 3},
                          Defaults{"deepseek_v32", 7168, 2048, 61, 256, 8, 2048, 8, 4, 2.5f, true, 3},
                          Defaults{"exaone_moe", 4096, 1024, 32, 64, 8, 1024, 1, 1, 2.5f, true, 1},
                          Defaults{"glm4v_moe", 4096, 1408, 46, 128, 8, 1408, 1, 1, 1.0f, true, 1},
                          Defaults{"kimi_linear", 2304, 1024, 27, 256, 8, 1024, 1, 1, 2.446f, true, 1},
                          Defaults{"solar_open", 4096, 1280, 48, 128, 8, 1280, 1, 1, 1.0f, true, 0},
                          Defaults{"mimo_v2_flash", 4096, 2048, 48, 256, 8, 0, 1, 1, 1.0f, true, 1},
                          Defaults{"beam", 5120, 2560, 52, 256, 8, 0, 8, 4, 2.5f, true, 3}}) {
        INFO(x.type);
        auto const c = parse_hf_config({{"model_type", x.type}}, "c.json");
        CHECK(to_string(c.family) == std::string(x.type));
        CHECK((c.hidden_size == x.d && c.intermediate_size == x.f && c.num_hidden_layers == x.L));
        CHECK((c.num_experts() == x.E && c.top_k() == x.k && c.shared_intermediate_size == x.fs && !c.shared_gated));
        CHECK(c.router.score_func == smoe::router::ScoreFunc::sigmoid);
        CHECK(c.router.requires_expert_bias);
        CHECK((c.router.n_group == x.n_group && c.router.topk_group == x.topk_group));
        CHECK(c.router.routed_scaling_factor == x.r);
        CHECK(c.router.norm_topk_prob == x.norm);
        CHECK(!c.is_moe_layer(x.first_moe - 1));
        CHECK(c.is_moe_layer(x.first_moe));
        CHECK(c.is_moe_layer(x.L - 1));
    }
    // The other families' configuration-class defaults (families.md §2.7), one row each: the config, then
    // (field, value) pairs and the layers that are and are not MoE. Fields: d f L E k fs (widths and counts),
    // gated (the shared expert's sigmoid gate), sigmoid (score function), norm, bias (selection bias), after
    // (score_after_topk), eps, r, n_group, topk_group. The family's name is the top-level model_type.
    struct Row {
        json config;
        std::vector<std::pair<char const*, double>> want;
        std::vector<std::int64_t> moe, dense;
    };
    auto field = [](smoe::io::HfMoeConfig const& c, std::string const& n) -> double {
        auto const& r = c.router;
        if (n == "d") return double(c.hidden_size);
        if (n == "f") return double(c.intermediate_size);
        if (n == "L") return double(c.num_hidden_layers);
        if (n == "E") return double(c.num_experts());
        if (n == "k") return double(c.top_k());
        if (n == "fs") return double(c.shared_intermediate_size);
        if (n == "gated") return c.shared_gated;
        if (n == "sigmoid") return r.score_func == smoe::router::ScoreFunc::sigmoid;
        if (n == "norm") return r.norm_topk_prob;
        if (n == "bias") return r.requires_expert_bias;
        if (n == "after") return r.score_after_topk;
        if (n == "eps") return r.norm_eps;
        if (n == "r") return r.routed_scaling_factor;
        if (n == "n_group") return double(r.n_group);
        if (n == "topk_group") return double(r.topk_group);
        FAIL("unknown field " << n);
        return 0;
    };
    std::vector<Row> const rows{
        {{{"model_type", "qwen3_next"}}, {{"E", 512}, {"k", 10}, {"f", 512}, {"L", 48}, {"fs", 512}, {"gated", 1}, {"norm", 1}}},
        {{{"model_type", "minimax"}}, {{"E", 8}, {"k", 2}, {"f", 14336}, {"d", 4096}, {"L", 32}, {"sigmoid", 0}, {"norm", 1}, {"bias", 0}}},
        {{{"model_type", "minimax_m2"}},
         {{"E", 256}, {"k", 8}, {"f", 1536}, {"d", 3072}, {"L", 62}, {"sigmoid", 1}, {"bias", 1}, {"norm", 1}, {"eps", 0}, {"n_group", 1}, {"r", 1}}},
        {{{"model_type", "flex_olmo"}}, {{"E", 7}, {"k", 5}, {"f", 11008}, {"d", 4096}, {"norm", 0}, {"fs", 0}}},
        // Bailing spells its keys its own way.
        {{{"model_type", "bailing_hybrid"}},
         {{"E", 512}, {"k", 8}, {"f", 768}, {"d", 2560}, {"fs", 768}, {"n_group", 8}, {"topk_group", 4}, {"r", 2.5}, {"norm", 1}, {"L", 42}},
         {2},
         {1}},
        // Mellum: Qwen3-MoE's block, 2304 wide; mlp_layer_types default all sparse.
        {{{"model_type", "mellum"}}, {{"d", 2304}, {"f", 896}, {"E", 64}, {"k", 8}, {"L", 28}, {"norm", 1}, {"fs", 0}}, {0, 27}},
        {{{"model_type", "qwen4_exp"}, {"text_config", {{"model_type", "qwen4_exp_text"}}}},
         {{"E", 512}, {"k", 10}, {"f", 512}, {"fs", 512}, {"gated", 1}, {"norm", 1}, {"L", 40}},
         {0}},
        {{{"model_type", "qwen3_vl_moe"}, {"text_config", {{"norm_topk_prob", false}}}}, {{"E", 60}, {"k", 4}, {"f", 1408}, {"norm", 1}}},
        // Flint: sigmoid top-k, ungated shared expert, mlp_only_layers [0, 1].
        {{{"model_type", "flint"}},
         {{"E", 256}, {"k", 6}, {"f", 512}, {"L", 49}, {"fs", 1024}, {"gated", 0}, {"sigmoid", 1}, {"norm", 1}, {"bias", 0}},
         {2},
         {1}},
        {{{"model_type", "hy_v3"}},
         {{"E", 192}, {"k", 8}, {"f", 1536}, {"fs", 1536}, {"r", 2.826}, {"bias", 1}, {"eps", 1e-20}, {"d", 4096}, {"L", 80}},
         {1},
         {0}},
        {{{"model_type", "granitemoe_swa"}}, {{"after", 1}, {"fs", 0}, {"E", 8}}},
        // AFMoE and LFM2-MoE (R-SB), Jamba and HunYuan (softmax top-k).
        {{{"model_type", "afmoe"}},
         {{"E", 64}, {"k", 6}, {"f", 1408}, {"fs", 2 * 1408}, {"sigmoid", 1}, {"bias", 1}, {"norm", 1}, {"eps", 1e-20}, {"r", 1}},
         {1},
         {0}},
        {{{"model_type", "lfm2_moe"}},
         {{"E", 32}, {"k", 4}, {"f", 1792}, {"fs", 0}, {"sigmoid", 1}, {"bias", 1}, {"norm", 1}, {"eps", 1e-6}},
         {2},
         {1}},
        {{{"model_type", "jamba"}}, {{"E", 16}, {"k", 2}, {"f", 14336}, {"norm", 0}}, {1, 31}, {0, 2}},
        {{{"model_type", "hunyuan_v1_moe"}}, {{"E", 1}, {"k", 1}, {"f", 11008}, {"fs", 11008}, {"norm", 1}, {"gated", 0}}},
        // ERNIE-4.5 (softmax + moe_statics bias; start/end/interval) and Granite (top-k, then softmax over k).
        {{{"model_type", "ernie4_5_moe"}},
         {{"E", 64}, {"k", 6}, {"f", 1536}, {"d", 2560}, {"L", 28}, {"fs", 2 * 1536}, {"gated", 0}, {"sigmoid", 0}, {"bias", 1}, {"norm", 1}, {"eps", 0}},
         {1, 27},
         {0}},
        {{{"model_type", "granitemoe"}}, {{"E", 8}, {"k", 2}, {"f", 11008}, {"after", 1}}},
        {{{"model_type", "granitemoeshared"}}, {{"fs", 0}}},
        {{{"model_type", "granitemoehybrid"}}, {{"fs", 1024}, {"gated", 0}, {"after", 1}}, {31}},
        // Qwen3.5-MoE: the decoder's keys in text_config; its router always renormalises (there is no key).
        {{{"model_type", "qwen3_5_moe"}, {"text_config", {{"num_experts", 16}, {"norm_topk_prob", false}}}},
         {{"E", 16}, {"k", 8}, {"f", 512}, {"L", 40}, {"fs", 512}, {"gated", 1}, {"norm", 1}},
         {0, 39}},
        // dots1 has no default for its counts (Dots1Config: None): the file says.
        {{{"model_type", "dots1"}, {"n_routed_experts", 128}, {"num_experts_per_tok", 6}, {"n_shared_experts", 2}},
         {{"E", 128}, {"k", 6}, {"fs", 2 * 1408}, {"norm", 0}, {"r", 1}},
         {0}},
    };
    for (auto const& row : rows) {
        std::string const type = row.config["model_type"];
        INFO(type);
        auto const c = parse_hf_config(row.config, "c.json");
        CHECK(to_string(c.family) == type);
        for (auto const& [n, v] : row.want) {
            INFO(n);
            CHECK(field(c, n) == Approx(v).epsilon(1e-6).margin(0));
        }
        for (auto l : row.moe) CHECK(c.is_moe_layer(l));
        for (auto l : row.dense) CHECK(!c.is_moe_layer(l));
    }
    CHECK(has_default(parse_hf_config({{"model_type", "bailing_hybrid"}}, "b.json"), "num_experts_per_token = 8"));
    auto const bail2 = parse_hf_config({{"model_type", "bailing_hybrid"}, {"num_experts", 16}, {"num_experts_per_token", 3},
                                        {"num_expert_group", 4}, {"topk_group", 2}, {"moe_renormalize", false}, {"num_shared_experts", 0}}, "b.json");
    CHECK((bail2.num_experts() == 16 && bail2.top_k() == 3 && bail2.router.n_group == 4 && !bail2.router.norm_topk_prob));
    CHECK(bail2.shared_intermediate_size == 0);
    // Glm4v-MoE's decoder in text_config (glm4v_moe_text).
    CHECK(parse_hf_config({{"model_type", "glm4v_moe"}, {"text_config", {{"model_type", "glm4v_moe_text"}, {"n_routed_experts", 16}}}}, "c.json")
              .num_experts() == 16);
    CHECK(!parse_hf_config({{"model_type", "lfm2_moe"}, {"use_expert_bias", false}}, "l.json").router.requires_expert_bias);
    CHECK_THROWS_WITH(parse_hf_config({{"model_type", "jamba"}, {"expert_layer_period", 2}, {"expert_layer_offset", 2}}, "j.json"),
                      Contains("key 'expert_layer_offset'") && Contains("expert_layer_period (2)"));
    CHECK_THROWS_WITH(parse_hf_config({{"model_type", "jamba"}, {"num_experts", 1}, {"num_experts_per_tok", 1}}, "j.json"),
                      Contains("key 'num_experts'") && Contains("at least 2"));
    CHECK_THROWS_WITH(parse_hf_config({{"model_type", "hunyuan_v1_moe"}, {"num_experts", 8}, {"moe_topk", {2, 2}}}, "h.json"),
                      Contains("key 'moe_topk'") && Contains("an integer"));
    CHECK_THROWS_WITH(parse_hf_config({{"model_type", "hunyuan_v1_moe"}, {"num_experts", 8}, {"moe_topk", 9}}, "h.json"),
                      Contains("key 'moe_topk'") && Contains("9"));
    auto const er2 = parse_hf_config({{"model_type", "ernie4_5_moe"}, {"moe_layer_end_index", 5}, {"moe_layer_interval", 2}}, "e.json");
    for (std::int64_t l = 0; l < 8; ++l) CHECK(er2.is_moe_layer(l) == (l == 1 || l == 3 || l == 5));
    CHECK_THROWS_WITH(parse_hf_config({{"model_type", "ernie4_5_moe"}, {"moe_norm_min", 0.5}}, "e.json"),
                      Contains("key 'moe_norm_min'") && Contains("num_experts_per_tok / num_experts"));
    CHECK_THROWS_WITH(parse_hf_config({{"model_type", "ernie4_5_moe"}, {"use_bias", true}}, "e.json"), Contains("key 'use_bias'"));
    CHECK_THROWS_WITH(parse_hf_config({{"model_type", "granitemoehybrid"}, {"num_local_experts", 0}}, "g.json"),
                      Contains("key 'num_local_experts'") && Contains(">= 1"));
    CHECK(parse_hf_config({{"model_type", "qwen3_5_moe"}, {"text_config", {{"model_type", "qwen3_5_moe_text"}}}}, "c.json").family ==
          HfFamily::qwen3_5_moe);
    CHECK_THROWS_WITH(parse_hf_config({{"model_type", "qwen3_5_moe"}, {"text_config", {{"num_experts", "16"}}}}, "c.json"),
                      Contains("c.json text_config: key 'num_experts'") && Contains("an integer"));
    CHECK_THROWS_WITH(parse_hf_config({{"model_type", "qwen3_5_moe"}, {"text_config", 3}}, "c.json"),
                      Contains("key 'text_config'") && Contains("JSON object"));
    CHECK_THROWS_WITH(parse_hf_config({{"model_type", "dots1"}}, "d.json"), Contains("n_routed_experts") && Contains("no default"));

    // mlp_layer_types decides alone where a family reads it; first_k_dense_replace only when it is absent.
    json v32 = {{"model_type", "deepseek_v32"}, {"num_hidden_layers", 3}, {"first_k_dense_replace", 2},
                {"mlp_layer_types", {"sparse", "dense", "sparse"}}};
    auto const c32 = parse_hf_config(v32, "v.json");
    CHECK((c32.is_moe_layer(0) && !c32.is_moe_layer(1) && c32.is_moe_layer(2)));
    v32["mlp_layer_types"] = {"sparse", "dense"};
    CHECK_THROWS_WITH(parse_hf_config(v32, "v.json"), Contains("key 'mlp_layer_types'") && Contains("num_hidden_layers (3)"));
    v32["mlp_layer_types"] = {"sparse", "moe", "dense"};
    CHECK_THROWS_WITH(parse_hf_config(v32, "v.json"), Contains("key 'mlp_layer_types'") && Contains("\"moe\"") && Contains("\"dense\" or \"sparse\""));
    v32["mlp_layer_types"] = "sparse";
    CHECK_THROWS_WITH(parse_hf_config(v32, "v.json"), Contains("key 'mlp_layer_types'") && Contains("a list of strings"));
    // glm4_moe reads first_k_dense_replace only (Glm4MoeConfig has no mlp_layer_types).
    auto const glm = parse_hf_config({{"model_type", "glm4_moe"}, {"num_hidden_layers", 3}, {"first_k_dense_replace", 2},
                                      {"mlp_layer_types", {"sparse", "sparse", "sparse"}}}, "g.json");
    CHECK((!glm.is_moe_layer(1) && glm.is_moe_layer(2)));
    CHECK_THROWS_WITH(parse_hf_config({{"model_type", "glm4_moe"}, {"n_group", 3}}, "g.json"), Contains("key 'n_group'") && Contains("divisor"));
    CHECK_THROWS_WITH(parse_hf_config({{"model_type", "exaone_moe"}, {"num_shared_experts", -1}}, "e.json"), Contains("key 'num_shared_experts'"));

    // The families with expert forms of their own: their configuration classes' defaults (families.md §2.7).
    struct Own {
        json config;
        std::int64_t d, f, L, E, k, fs;
        smoe::router::ScoreFunc score;
        bool after_topk, norm;
        float r;
    };
    using smoe::router::ScoreFunc;
    for (auto const& x : {Own{{{"model_type", "gpt_oss"}}, 2880, 2880, 36, 128, 4, 0, ScoreFunc::softmax, true, false, 1.0f},
                          Own{{{"model_type", "deepseek_v4"}}, 4096, 2048, 43, 256, 6, 2048, ScoreFunc::sqrtsoftplus, false, true, 1.5f},
                          Own{{{"model_type", "llama4"}, {"text_config", json::object()}}, 5120, 8192, 48, 16, 1, 8192, ScoreFunc::sigmoid,
                              false, false, 1.0f},
                          Own{{{"model_type", "cohere2_moe"}}, 8192, 22528, 40, 8, 2, 0, ScoreFunc::softmax, true, false, 1.0f},
                          Own{{{"model_type", "jetmoe"}}, 2048, 5632, 12, 8, 2, 0, ScoreFunc::softmax, true, false, 1.0f},
                          Own{{{"model_type", "dbrx"}}, 2048, 3584, 24, 4, 1, 0, ScoreFunc::softmax, false, true, 1.0f},
                          Own{{{"model_type", "longcat_flash"}}, 6144, 2048, 28, 512, 12, 0, ScoreFunc::softmax, false, false, 6.0f},
                          Own{{{"model_type", "phimoe"}}, 4096, 6400, 32, 16, 2, 0, ScoreFunc::softmax, false, false, 1.0f},
                          Own{{{"model_type", "nemotron_h"}}, 4096, 7688, 4, 8, 2, 7688, ScoreFunc::sigmoid, false, true, 1.0f}}) {
        auto const c = parse_hf_config(x.config, "c.json");
        INFO(to_string(c.family));
        CHECK((c.hidden_size == x.d && c.intermediate_size == x.f && c.num_hidden_layers == x.L));
        CHECK((c.num_experts() == x.E && c.top_k() == x.k && c.shared_intermediate_size == x.fs && !c.shared_gated));
        CHECK((c.router.score_func == x.score && c.router.score_after_topk == x.after_topk && c.router.norm_topk_prob == x.norm));
        CHECK(c.router.routed_scaling_factor == x.r);
    }
    auto const oss = parse_hf_config({{"model_type", "gpt_oss"}}, "g.json");
    CHECK((oss.activation.alpha == 1.702f && oss.activation.limit == 7.0f && oss.activation.up_offset == 1.0f));
    CHECK((oss.router_bias && oss.expert_biases && oss.is_moe_layer(35)));
    auto const v4 = parse_hf_config({{"model_type", "deepseek_v4"}, {"hidden_size", 64}, {"num_hidden_layers", 5}}, "v.json");
    CHECK((v4.activation.limit == 10.0f && v4.activation.alpha == 1.0f && v4.activation.up_offset == 0.0f && v4.router.requires_expert_bias));
    CHECK(v4.hash_layers == std::vector<std::int64_t>{0, 1, 2});
    CHECK_THROWS_WITH(parse_hf_config({{"model_type", "deepseek_v4"}, {"mlp_bias", true}}, "v.json"), Contains("key 'mlp_bias'"));
    CHECK_THROWS_WITH(parse_hf_config({{"model_type", "deepseek_v4"}, {"scoring_func", "sigmoid"}}, "v.json"),
                      Contains("key 'scoring_func'") && Contains("sqrtsoftplus"));
    auto const l4 = parse_hf_config({{"model_type", "llama4"}, {"text_config", {{"num_hidden_layers", 4}, {"interleave_moe_layer_step", 2}}}}, "l.json");
    CHECK((l4.weight_on_input && !l4.is_moe_layer(0) && l4.is_moe_layer(1) && !l4.is_moe_layer(2) && l4.is_moe_layer(3)));
    CHECK_THROWS_WITH(parse_hf_config({{"model_type", "llama4"}, {"text_config", {{"num_hidden_layers", 4}, {"moe_layers", {4}}}}}, "l.json"),
                      Contains("key 'moe_layers'") && Contains("[0, num_hidden_layers (4))"));
    auto const co = parse_hf_config({{"model_type", "cohere2_moe"}, {"num_shared_experts", 1}, {"shared_expert_combination_strategy", "sum"}}, "c.json");
    CHECK((co.shared_intermediate_size == 22528 && co.shared_scale == 1.0f && co.router.routed_scaling_factor == 1.0f));
    CHECK_THROWS_WITH(parse_hf_config({{"model_type", "cohere2_moe"}, {"expert_selection_fn", "relu"}}, "c.json"),
                      Contains("key 'expert_selection_fn'") && Contains("\"softmax\" or \"sigmoid\""));
    CHECK_THROWS_WITH(parse_hf_config({{"model_type", "jetmoe"}, {"activation_function", "gelu"}}, "j.json"), Contains("key 'activation_function'"));
    CHECK(!parse_hf_config({{"model_type", "dbrx"}, {"ffn_config", {{"moe_normalize_expert_weights", nullptr}}}}, "d.json").router.norm_topk_prob);
    CHECK_THROWS_WITH(parse_hf_config({{"model_type", "dbrx"}, {"ffn_config", {{"moe_num_experts", "4"}}}}, "d.json"),
                      Contains("d.json ffn_config: key 'moe_num_experts'"));
    CHECK_THROWS_WITH(parse_hf_config({{"model_type", "dbrx"}, {"ffn_config", {{"ffn_act_fn", {{"name", "gelu"}}}}}}, "d.json"),
                      Contains("ffn_act_fn.name") && Contains("silu"));
    CHECK(parse_hf_config({{"model_type", "longcat_flash"}}, "l.json").router.num_null_experts == 256);
    CHECK(parse_hf_config({{"model_type", "phimoe"}, {"num_experts_per_tok", 4}}, "p.json").sparsemixer == 0.01f);
    CHECK(parse_hf_config({{"model_type", "phimoe"}, {"num_experts_per_tok", 4}}, "p.json").top_k() == 2);
    CHECK_THROWS_WITH(parse_hf_config({{"model_type", "phimoe"}, {"router_jitter_noise", -1}}, "p.json"), Contains("key 'router_jitter_noise'"));
    // Nemotron-H: NemotronHConfig's default layers (mamba, moe, attention, mlp), relu² experts; what it cannot load is named.
    auto const nh = parse_hf_config({{"model_type", "nemotron_h"}, {"hidden_act", "gelu"}}, "n.json");
    CHECK((nh.activation.relu2 && nh.router.requires_expert_bias && !nh.is_moe_layer(0) && nh.is_moe_layer(1) && !nh.is_moe_layer(3)));
    CHECK(parse_hf_config({{"model_type", "nemotron_h"}, {"hybrid_override_pattern", "MEME*-E"}}, "n.json").num_hidden_layers == 7);
    CHECK_THROWS_WITH(parse_hf_config({{"model_type", "nemotron_h"}, {"mlp_hidden_act", "silu"}}, "n.json"), Contains("key 'mlp_hidden_act'") && Contains("relu2"));
    CHECK_THROWS_WITH(parse_hf_config({{"model_type", "nemotron_h"}, {"moe_latent_size", 1024}}, "n.json"),
                      Contains("key 'moe_latent_size'") && Contains("1024") && Contains("fc1_latent_proj"));
    CHECK_THROWS_WITH(parse_hf_config({{"model_type", "nemotron_h"}, {"mlp_bias", true}}, "n.json"), Contains("key 'mlp_bias'"));
    CHECK_THROWS_WITH(parse_hf_config({{"model_type", "nemotron_h"}, {"hybrid_override_pattern", "ME?"}}, "n.json"),
                      Contains("key 'hybrid_override_pattern'") && Contains("ME?"));
    CHECK_THROWS_WITH(parse_hf_config({{"model_type", "nemotron_h"}, {"layers_block_type", {"moe", "ssm"}}}, "n.json"),
                      Contains("key 'layers_block_type'") && Contains("\"ssm\""));
}

TEST_CASE("each family's first MoE layer loads from its on-disk names to the block built by hand, bit for bit",
          "[hf][load][families]") {
    std::int64_t const d = 40, f = 12, E = 8, k = 2;
    struct Family {
        char const* name;
        json config;                  // in the family's own keys
        Block::Disk disk;             // families.md §2.8
        std::int64_t layer;           // the first MoE layer
        std::int64_t dense;           // a dense layer, and what its error must name
        char const* dense_rule;
        smoe::router::TopKConfig router;  // what the family's router is
        std::int64_t fs;
        bool gated;
        Extra extra{};
    };
    using smoe::router::ScoreFunc;
    std::vector<Family> const families{
        {"qwen3_moe",
         {{"model_type", "qwen3_moe"}, {"hidden_size", d}, {"moe_intermediate_size", f}, {"num_experts", E}, {"num_experts_per_tok", k},
          {"num_hidden_layers", 4}, {"norm_topk_prob", true}, {"decoder_sparse_step", 2}, {"mlp_only_layers", {3}}},
         {.block = "model.layers.1.mlp."}, 1, 3, "layer not in mlp_only_layers",
         {.num_experts = E, .top_k = k, .score_func = ScoreFunc::softmax, .norm_topk_prob = true}, 0, false},
        {"qwen3_moe re-saved (fused experts, num_local_experts)",
         {{"model_type", "qwen3_moe"}, {"hidden_size", d}, {"moe_intermediate_size", f}, {"num_local_experts", E},
          {"num_experts_per_tok", k}, {"num_hidden_layers", 4}, {"decoder_sparse_step", 2}},
         {.block = "model.layers.1.mlp.", .fused = true}, 1, 2, "(layer + 1) % decoder_sparse_step (2) == 0",
         {.num_experts = E, .top_k = k, .score_func = ScoreFunc::softmax, .norm_topk_prob = false}, 0, false},
        {"qwen3_moe under a multimodal wrapper's prefix",
         {{"model_type", "qwen3_moe"}, {"hidden_size", d}, {"moe_intermediate_size", f}, {"num_experts", E}, {"num_experts_per_tok", k},
          {"num_hidden_layers", 2}},
         {.block = "model.language_model.layers.1.mlp."}, 1, 2, "num_hidden_layers (2)",
         {.num_experts = E, .top_k = k, .score_func = ScoreFunc::softmax, .norm_topk_prob = false}, 0, false},
        {"qwen3_next",
         {{"model_type", "qwen3_next"}, {"hidden_size", d}, {"moe_intermediate_size", f}, {"num_experts", E}, {"num_experts_per_tok", k},
          {"shared_expert_intermediate_size", 20}, {"num_hidden_layers", 2}, {"decoder_sparse_step", 2}},
         {.block = "model.layers.1.mlp.", .shared = "shared_expert.", .shared_gate = "shared_expert_gate.weight"}, 1, 0,
         "(layer + 1) % decoder_sparse_step (2) == 0",
         {.num_experts = E, .top_k = k, .score_func = ScoreFunc::softmax, .norm_topk_prob = true}, 20, true},
        {"qwen3_5_moe (text_config, model.language_model. prefix, fused experts)",
         {{"model_type", "qwen3_5_moe"},
          {"text_config", {{"model_type", "qwen3_5_moe_text"}, {"hidden_size", d}, {"moe_intermediate_size", f}, {"num_experts", E},
                           {"num_experts_per_tok", k}, {"shared_expert_intermediate_size", 16}, {"num_hidden_layers", 2}}}},
         {.block = "model.language_model.layers.0.mlp.", .shared = "shared_expert.", .shared_gate = "shared_expert_gate.weight", .fused = true},
         0, 2, "num_hidden_layers (2)",
         {.num_experts = E, .top_k = k, .score_func = ScoreFunc::softmax, .norm_topk_prob = true}, 16, true},
        {"minimax",
         {{"model_type", "minimax"}, {"hidden_size", d}, {"intermediate_size", f}, {"num_local_experts", E}, {"num_experts_per_tok", k},
          {"num_hidden_layers", 1}},
         {.block = "model.layers.0.block_sparse_moe.", .gate = "w1.weight", .up = "w3.weight", .down = "w2.weight"}, 0, 1,
         "num_hidden_layers (1)", {.num_experts = E, .top_k = k, .score_func = ScoreFunc::softmax, .norm_topk_prob = true}, 0, false},
        {"minimax_m2",
         {{"model_type", "minimax_m2"}, {"hidden_size", d}, {"intermediate_size", f}, {"num_local_experts", E}, {"num_experts_per_tok", k},
          {"num_hidden_layers", 1}},
         {.block = "model.layers.0.block_sparse_moe.", .bias = "e_score_correction_bias", .gate = "w1.weight", .up = "w3.weight",
          .down = "w2.weight"},
         0, 1, "num_hidden_layers (1)",
         {.num_experts = E, .top_k = k, .score_func = ScoreFunc::sigmoid, .norm_topk_prob = true, .norm_eps = 0.0f, .requires_expert_bias = true},
         0, false},
        {"flex_olmo",
         {{"model_type", "flex_olmo"}, {"hidden_size", d}, {"intermediate_size", f}, {"num_experts", E}, {"num_experts_per_tok", k},
          {"num_hidden_layers", 1}},
         {.block = "model.layers.0.mlp."}, 0, 1, "num_hidden_layers (1)",
         {.num_experts = E, .top_k = k, .score_func = ScoreFunc::softmax, .norm_topk_prob = false}, 0, false},
        {"bailing_hybrid",
         {{"model_type", "bailing_hybrid"}, {"hidden_size", d}, {"moe_intermediate_size", f}, {"num_experts", E},
          {"num_experts_per_token", k}, {"num_shared_experts", 1}, {"num_expert_group", 4}, {"topk_group", 2}, {"first_k_dense_replace", 1},
          {"num_hidden_layers", 2}},
         {.block = "model.layers.1.mlp.", .bias = "gate.expert_bias"}, 1, 0, "layer >= first_k_dense_replace (1)",
         sigmoid_bias_router(E, k, 4, 2, true, 2.5f), f, false},
        {"afmoe",
         {{"model_type", "afmoe"}, {"hidden_size", d}, {"moe_intermediate_size", f}, {"num_experts", E}, {"num_experts_per_tok", k},
          {"num_shared_experts", 1}, {"route_scale", 2.0}, {"num_hidden_layers", 2}},
         {.block = "model.layers.1.mlp.", .router = "router.gate.weight", .bias = "expert_bias"}, 1, 0, "layer >= num_dense_layers (1)",
         sigmoid_bias_router(E, k, 1, 1, true, 2.0f), f, false},
        {"lfm2_moe",
         {{"model_type", "lfm2_moe"}, {"hidden_size", d}, {"moe_intermediate_size", f}, {"num_experts", E}, {"num_experts_per_tok", k},
          {"num_hidden_layers", 3}},
         {.block = "model.layers.2.feed_forward.", .bias = "expert_bias", .gate = "w1.weight", .up = "w3.weight", .down = "w2.weight"}, 2, 1,
         "layer >= num_dense_layers (2)",
         {.num_experts = E, .top_k = k, .score_func = ScoreFunc::sigmoid, .norm_topk_prob = true, .norm_eps = 1e-6f, .requires_expert_bias = true},
         0, false},
        {"lfm2_moe without expert_bias",
         {{"model_type", "lfm2_moe"}, {"hidden_size", d}, {"moe_intermediate_size", f}, {"num_experts", E}, {"num_experts_per_tok", k},
          {"num_hidden_layers", 1}, {"num_dense_layers", 0}, {"use_expert_bias", false}, {"routed_scaling_factor", 1.5}},
         {.block = "model.layers.0.feed_forward.", .gate = "w1.weight", .up = "w3.weight", .down = "w2.weight"}, 0, 1, "num_hidden_layers (1)",
         {.num_experts = E, .top_k = k, .score_func = ScoreFunc::sigmoid, .norm_topk_prob = true, .routed_scaling_factor = 1.5f, .norm_eps = 1e-6f},
         0, false},
        {"jamba",
         {{"model_type", "jamba"}, {"hidden_size", d}, {"intermediate_size", f}, {"num_experts", E}, {"num_experts_per_tok", k},
          {"num_hidden_layers", 4}},
         {.block = "model.layers.1.feed_forward.", .router = "router.weight"}, 1, 2,
         "layer % expert_layer_period (2) == expert_layer_offset (1)",
         {.num_experts = E, .top_k = k, .score_func = ScoreFunc::softmax, .norm_topk_prob = false}, 0, false},
        {"hunyuan_v1_moe",
         {{"model_type", "hunyuan_v1_moe"}, {"hidden_size", d}, {"intermediate_size", f}, {"num_experts", E}, {"moe_topk", k},
          {"num_hidden_layers", 1}},
         {.block = "model.layers.0.mlp.", .router = "gate.wg.weight", .shared = "shared_mlp."}, 0, 1, "num_hidden_layers (1)",
         {.num_experts = E, .top_k = k, .score_func = ScoreFunc::softmax, .norm_topk_prob = true}, f, false},
        {"ernie4_5_moe",
         {{"model_type", "ernie4_5_moe"}, {"hidden_size", d}, {"moe_intermediate_size", f}, {"moe_num_experts", E}, {"moe_k", k},
          {"moe_num_shared_experts", 1}, {"num_hidden_layers", 3}},
         {.block = "model.layers.1.mlp.", .bias = "moe_statics.e_score_correction_bias", .bias_row = true}, 1, 0,
         "layer >= moe_layer_start_index (1)",
         {.num_experts = E, .top_k = k, .score_func = ScoreFunc::softmax, .norm_topk_prob = true, .norm_eps = 0.0f, .requires_expert_bias = true},
         f, false},
        {"granitemoe",
         {{"model_type", "granitemoe"}, {"hidden_size", d}, {"intermediate_size", f}, {"num_local_experts", E}, {"num_experts_per_tok", k},
          {"num_hidden_layers", 1}},
         {.block = "model.layers.0.block_sparse_moe.", .router = "router.layer.weight", .fused = true,
          .fused_gate_up = "input_linear.weight", .fused_down = "output_linear.weight"},
         0, 1, "num_hidden_layers (1)",
         {.num_experts = E, .top_k = k, .score_func = ScoreFunc::softmax, .score_after_topk = true}, 0, false},
        {"granitemoeshared (the layer's fused shared_mlp)",
         {{"model_type", "granitemoeshared"}, {"hidden_size", d}, {"intermediate_size", f}, {"num_local_experts", E},
          {"num_experts_per_tok", k}, {"shared_intermediate_size", 16}, {"num_hidden_layers", 1}},
         {.block = "model.layers.0.block_sparse_moe.", .router = "router.layer.weight", .fused = true,
          .fused_gate_up = "input_linear.weight", .fused_down = "output_linear.weight", .shared_at = "model.layers.0.shared_mlp.",
          .shared_fused = true},
         0, 1, "num_hidden_layers (1)",
         {.num_experts = E, .top_k = k, .score_func = ScoreFunc::softmax, .score_after_topk = true}, 16, false},
        {"granitemoehybrid",
         {{"model_type", "granitemoehybrid"}, {"hidden_size", d}, {"intermediate_size", f}, {"num_local_experts", E},
          {"num_experts_per_tok", k}, {"shared_intermediate_size", 20}, {"num_hidden_layers", 2}},
         {.block = "model.layers.1.block_sparse_moe.", .router = "router.layer.weight", .fused = true,
          .fused_gate_up = "input_linear.weight", .fused_down = "output_linear.weight", .shared_at = "model.layers.1.shared_mlp.",
          .shared_fused = true},
         1, 2, "num_hidden_layers (2)",
         {.num_experts = E, .top_k = k, .score_func = ScoreFunc::softmax, .score_after_topk = true}, 20, false},
        {"mellum",
         {{"model_type", "mellum"}, {"hidden_size", d}, {"moe_intermediate_size", f}, {"num_experts", E}, {"num_experts_per_tok", k},
          {"num_hidden_layers", 2}, {"mlp_layer_types", {"dense", "sparse"}}},
         {.block = "model.layers.1.mlp."}, 1, 0, "mlp_layer_types[layer] == \"sparse\"",
         {.num_experts = E, .top_k = k, .score_func = ScoreFunc::softmax, .norm_topk_prob = true}, 0, false},
        {"glm4v_moe (text_config, model.language_model. prefix)",
         {{"model_type", "glm4v_moe"},
          {"text_config", {{"model_type", "glm4v_moe_text"}, {"hidden_size", d}, {"moe_intermediate_size", f}, {"n_routed_experts", E},
                           {"num_experts_per_tok", k}, {"n_shared_experts", 1}, {"num_hidden_layers", 2}}}},
         {.block = "model.language_model.layers.1.mlp.", .bias = "gate.e_score_correction_bias"}, 1, 0, "layer >= first_k_dense_replace (1)",
         sigmoid_bias_router(E, k, 1, 1, true, 1.0f), f, false},
        {"kimi_linear",
         {{"model_type", "kimi_linear"}, {"hidden_size", d}, {"moe_intermediate_size", f}, {"num_experts", E}, {"num_experts_per_token", k},
          {"num_shared_experts", 1}, {"num_expert_group", 2}, {"topk_group", 1}, {"num_hidden_layers", 2}},
         {.block = "model.layers.1.block_sparse_moe.", .bias = "gate.e_score_correction_bias", .gate = "w1.weight", .up = "w3.weight",
          .down = "w2.weight"},
         1, 0, "layer >= first_k_dense_replace (1)", sigmoid_bias_router(E, k, 2, 1, true, 2.446f), f, false},
        {"solar_open",
         {{"model_type", "solar_open"}, {"hidden_size", d}, {"moe_intermediate_size", f}, {"n_routed_experts", E}, {"num_experts_per_tok", k},
          {"num_hidden_layers", 1}},
         {.block = "model.layers.0.mlp.", .bias = "gate.e_score_correction_bias"}, 0, 1, "num_hidden_layers (1)",
         sigmoid_bias_router(E, k, 1, 1, true, 1.0f), f, false},
        {"mimo_v2_flash",
         {{"model_type", "mimo_v2_flash"}, {"hidden_size", d}, {"moe_intermediate_size", f}, {"n_routed_experts", E}, {"num_experts_per_tok", k},
          {"num_hidden_layers", 2}, {"routed_scaling_factor", 1.5}},
         {.block = "model.layers.1.mlp.", .bias = "gate.e_score_correction_bias"}, 1, 0, "mlp_layer_types[layer] == \"sparse\"",
         sigmoid_bias_router(E, k, 1, 1, true, 1.5f), 0, false},
        {"flint",
         {{"model_type", "flint"}, {"hidden_size", d}, {"moe_intermediate_size", f}, {"num_experts", E}, {"num_experts_per_tok", k},
          {"shared_expert_intermediate_size", 20}, {"num_hidden_layers", 3}},
         {.block = "model.layers.2.mlp.", .shared = "shared_expert."}, 2, 1, "layer not in mlp_only_layers",
         {.num_experts = E, .top_k = k, .score_func = ScoreFunc::sigmoid, .norm_topk_prob = true, .norm_eps = 0.0f}, 20, false},
        {"hy_v3",
         {{"model_type", "hy_v3"}, {"hidden_size", d}, {"moe_intermediate_size", f}, {"num_experts", E}, {"num_experts_per_tok", k},
          {"num_hidden_layers", 2}},
         {.block = "model.layers.1.mlp.", .router = "router.gate.weight", .bias = "expert_bias", .shared = "shared_mlp."}, 1, 0,
         "mlp_layer_types[layer] == \"sparse\"", sigmoid_bias_router(E, k, 1, 1, true, 2.826f), f, false},
        {"granitemoe_swa",
         {{"model_type", "granitemoe_swa"}, {"hidden_size", d}, {"intermediate_size", f}, {"num_local_experts", E},
          {"num_experts_per_tok", k}, {"shared_intermediate_size", 8}, {"num_hidden_layers", 1}},
         {.block = "model.layers.0.block_sparse_moe.", .router = "router.layer.weight", .fused = true,
          .fused_gate_up = "input_linear.weight", .fused_down = "output_linear.weight", .shared_at = "model.layers.0.shared_mlp.",
          .shared_fused = true},
         0, 1, "num_hidden_layers (1)",
         {.num_experts = E, .top_k = k, .score_func = ScoreFunc::softmax, .score_after_topk = true}, 8, false},
        {"qwen3_vl_moe (text_config, fused experts stored transposed)",
         {{"model_type", "qwen3_vl_moe"},
          {"text_config", {{"model_type", "qwen3_vl_moe_text"}, {"hidden_size", d}, {"moe_intermediate_size", f}, {"num_experts", E},
                           {"num_experts_per_tok", k}, {"num_hidden_layers", 2}, {"mlp_only_layers", {0}}}}},
         {.block = "model.language_model.layers.1.mlp.", .fused = true, .fused_transposed = true}, 1, 0, "layer not in mlp_only_layers",
         {.num_experts = E, .top_k = k, .score_func = ScoreFunc::softmax, .norm_topk_prob = true}, 0, false},
        {"qwen4_exp (text_config)",
         {{"model_type", "qwen4_exp"},
          {"text_config", {{"hidden_size", d}, {"moe_intermediate_size", f}, {"num_experts", E}, {"num_experts_per_tok", k},
                           {"shared_expert_intermediate_size", 12}, {"num_hidden_layers", 1}, {"norm_topk_prob", false}}}},
         {.block = "model.language_model.layers.0.mlp.", .shared = "shared_expert.", .shared_gate = "shared_expert_gate.weight"}, 0, 1,
         "num_hidden_layers (1)", {.num_experts = E, .top_k = k, .score_func = ScoreFunc::softmax, .norm_topk_prob = false}, 12, true},
        {"beam",
         {{"model_type", "beam"}, {"hidden_size", d}, {"moe_intermediate_size", f}, {"num_experts", E}, {"num_experts_per_tok", k},
          {"num_hidden_layers", 4}, {"n_group", 2}, {"topk_group", 1}},
         {.block = "model.layers.3.mlp.", .bias = "gate.e_score_correction_bias"}, 3, 2, "mlp_layer_types[layer] == \"sparse\"",
         sigmoid_bias_router(E, k, 2, 1, true, 2.5f), 0, false},
        {"glm4_moe",
         {{"model_type", "glm4_moe"}, {"hidden_size", d}, {"moe_intermediate_size", f}, {"n_routed_experts", E}, {"num_experts_per_tok", k},
          {"n_shared_experts", 2}, {"num_hidden_layers", 3}, {"routed_scaling_factor", 2.5}},
         {.block = "model.layers.1.mlp.", .bias = "gate.e_score_correction_bias"}, 1, 0, "layer >= first_k_dense_replace (1)",
         sigmoid_bias_router(E, k, 1, 1, true, 2.5f), 2 * f, false},
        {"glm4_moe_lite",
         {{"model_type", "glm4_moe_lite"}, {"hidden_size", d}, {"moe_intermediate_size", f}, {"n_routed_experts", E},
          {"num_experts_per_tok", k}, {"num_hidden_layers", 3}},
         {.block = "model.layers.1.mlp.", .bias = "gate.e_score_correction_bias"}, 1, 0, "mlp_layer_types[layer] == \"sparse\"",
         sigmoid_bias_router(E, k, 1, 1, true, 1.8f), f, false},
        {"glm_moe_dsa",
         {{"model_type", "glm_moe_dsa"}, {"hidden_size", d}, {"moe_intermediate_size", f}, {"n_routed_experts", E},
          {"num_experts_per_tok", k}, {"num_hidden_layers", 5}, {"norm_topk_prob", false}},
         {.block = "model.layers.3.mlp.", .bias = "gate.e_score_correction_bias"}, 3, 2, "layer >= first_k_dense_replace (3)",
         sigmoid_bias_router(E, k, 1, 1, false, 2.5f), f, false},
        {"deepseek_v32",
         {{"model_type", "deepseek_v32"}, {"hidden_size", d}, {"moe_intermediate_size", f}, {"n_routed_experts", E},
          {"num_experts_per_tok", k}, {"num_hidden_layers", 4}, {"n_group", 4}, {"topk_group", 2},
          {"mlp_layer_types", {"dense", "dense", "sparse", "sparse"}}},
         {.block = "model.layers.2.mlp.", .bias = "gate.e_score_correction_bias"}, 2, 1, "mlp_layer_types[layer] == \"sparse\"",
         sigmoid_bias_router(E, k, 4, 2, true, 2.5f), f, false},
        {"dots1",
         {{"model_type", "dots1"}, {"hidden_size", d}, {"moe_intermediate_size", f}, {"n_routed_experts", E}, {"num_experts_per_tok", k},
          {"n_shared_experts", 1}, {"num_hidden_layers", 2}},
         {.block = "model.layers.0.mlp.", .bias = "gate.e_score_correction_bias", .fused = true}, 0, 2, "num_hidden_layers (2)",
         sigmoid_bias_router(E, k, 1, 1, false, 1.0f), f, false},
        {"exaone_moe",
         {{"model_type", "exaone_moe"}, {"hidden_size", d}, {"moe_intermediate_size", f}, {"num_experts", E}, {"num_experts_per_tok", k},
          {"num_shared_experts", 2}, {"num_hidden_layers", 3}},
         {.block = "model.layers.1.mlp.", .bias = "e_score_correction_bias"}, 1, 0, "layer >= first_k_dense_replace (1)",
         sigmoid_bias_router(E, k, 1, 1, true, 2.5f), 2 * f, false},
        {"phimoe (sparsemixer, two experts whatever num_experts_per_tok says)",
         {{"model_type", "phimoe"}, {"hidden_size", d}, {"intermediate_size", f}, {"num_local_experts", E}, {"num_experts_per_tok", 3},
          {"num_hidden_layers", 1}, {"router_jitter_noise", 0.05}},
         {.block = "model.layers.0.block_sparse_moe.", .gate = "w1.weight", .up = "w3.weight", .down = "w2.weight"}, 0, 1,
         "num_hidden_layers (1)", {.num_experts = E, .top_k = 2}, 0, false, {.mixer = 0.05f}},
        // The families with expert forms of their own (families.md §2.1-§2.6); limits that bind on these weights.
        {"gpt_oss (router bias, clamped experts with biases, fused transposed and interleaved)",
         {{"model_type", "gpt_oss"}, {"hidden_size", d}, {"intermediate_size", f}, {"num_local_experts", E}, {"num_experts_per_tok", k},
          {"num_hidden_layers", 1}, {"swiglu_limit", 2.0}},
         {.block = "model.layers.0.mlp.", .router = "router.weight", .fused = true, .fused_transposed = true, .interleaved = true,
          .router_bias = "router.bias", .gu_bias = "experts.gate_up_proj_bias", .dn_bias = "experts.down_proj_bias"},
         0, 1, "num_hidden_layers (1)", {.num_experts = E, .top_k = k, .score_after_topk = true}, 0, false,
         {.act = smoe::expert::GluActivation::gpt_oss(1.702f, 2.0f), .gate_bias = true, .expert_bias = true}},
        {"deepseek_v4 (DeepSeek's own names, a hash layer first)",
         {{"model_type", "deepseek_v4"}, {"hidden_size", d}, {"moe_intermediate_size", f}, {"n_routed_experts", E},
          {"num_experts_per_tok", k}, {"num_hidden_layers", 3}, {"num_hash_layers", 1}, {"swiglu_limit", 2.0}},
         {.block = "layers.1.ffn.", .bias = "gate.bias", .gate = "w1.weight", .up = "w3.weight", .down = "w2.weight", .shared_w = true}, 1, 3,
         "num_hidden_layers (3)",
         {.num_experts = E, .top_k = k, .score_func = ScoreFunc::sqrtsoftplus, .norm_topk_prob = true, .routed_scaling_factor = 1.5f,
          .requires_expert_bias = true},
         f, false, {.act = smoe::expert::GluActivation::limited(2.0f)}},
        {"deepseek_v4 re-saved by HF (mlp., e_score_correction_bias, fused)",
         {{"model_type", "deepseek_v4"}, {"hidden_size", d}, {"moe_intermediate_size", f}, {"n_routed_experts", E},
          {"num_experts_per_tok", k}, {"num_hidden_layers", 2}, {"mlp_layer_types", {"hash_moe", "moe"}}},
         {.block = "model.layers.1.mlp.", .bias = "gate.e_score_correction_bias", .fused = true}, 1, 2, "num_hidden_layers (2)",
         {.num_experts = E, .top_k = k, .score_func = ScoreFunc::sqrtsoftplus, .norm_topk_prob = true, .routed_scaling_factor = 1.5f,
          .requires_expert_bias = true},
         f, false, {.act = smoe::expert::GluActivation::limited(10.0f)}},
        {"llama4 (text_config, moe_layers, weight on the input, fused transposed)",
         {{"model_type", "llama4"},
          {"text_config", {{"model_type", "llama4_text"}, {"hidden_size", d}, {"intermediate_size", f}, {"num_local_experts", E},
                           {"num_experts_per_tok", k}, {"num_hidden_layers", 4}, {"moe_layers", {1, 3}}}}},
         {.block = "language_model.model.layers.1.feed_forward.", .router = "router.weight", .shared = "shared_expert.", .fused = true,
          .fused_transposed = true},
         1, 2, "layer in moe_layers", {.num_experts = E, .top_k = k, .score_func = ScoreFunc::sigmoid}, f, false, {.on_input = true}},
        {"cohere2_moe (average with the shared experts)",
         {{"model_type", "cohere2_moe"}, {"hidden_size", d}, {"intermediate_size", f}, {"num_experts", E}, {"num_experts_per_tok", k},
          {"num_shared_experts", 2}, {"num_hidden_layers", 2}, {"mlp_layer_types", {"dense", "sparse"}}},
         {.block = "model.layers.1.mlp."}, 1, 0, "mlp_layer_types[layer] == \"sparse\"",
         {.num_experts = E, .top_k = k, .score_after_topk = true, .routed_scaling_factor = 0.5f}, 2 * f, false, {.shared_scale = 0.5f}},
        {"cohere2_moe (sigmoid selection, no shared experts)",
         {{"model_type", "cohere2_moe"}, {"hidden_size", d}, {"intermediate_size", f}, {"num_experts", E}, {"num_experts_per_tok", k},
          {"num_hidden_layers", 2}, {"first_k_dense_replace", 1}, {"expert_selection_fn", "sigmoid"}},
         {.block = "model.layers.1.mlp."}, 1, 0, "layer >= first_k_dense_replace (1)",
         {.num_experts = E, .top_k = k, .score_func = ScoreFunc::sigmoid, .norm_topk_prob = true, .norm_eps = 0.0f}, 0, false},
        {"jetmoe (fused input/output_linear, output bias)",
         {{"model_type", "jetmoe"}, {"hidden_size", d}, {"intermediate_size", f}, {"num_local_experts", E}, {"num_experts_per_tok", k},
          {"num_hidden_layers", 1}},
         {.block = "model.layers.0.mlp.", .router = "router.layer.weight", .fused = true, .fused_gate_up = "input_linear.weight",
          .fused_down = "output_linear.weight", .out_bias = "bias"},
         0, 1, "num_hidden_layers (1)", {.num_experts = E, .top_k = k, .score_after_topk = true}, 0, false, {.out_bias = true}},
        {"dbrx (ffn_config, 2-D stacks, p-norm 2)",
         {{"model_type", "dbrx"}, {"d_model", d}, {"n_layers", 1},
          {"ffn_config", {{"ffn_hidden_size", f}, {"moe_num_experts", E}, {"moe_top_k", k}, {"moe_normalize_expert_weights", 2.0}}}},
         {.block = "transformer.blocks.0.ffn.", .router = "router.layer.weight", .dbrx = true}, 0, 1, "num_hidden_layers (1)",
         {.num_experts = E, .top_k = k, .norm_topk_prob = true, .norm_eps = 0.0f, .norm_p = 2.0f}, 0, false},
        {"longcat_flash (identity experts)",
         {{"model_type", "longcat_flash"}, {"hidden_size", d}, {"expert_ffn_hidden_size", f}, {"n_routed_experts", E},
          {"zero_expert_num", 3}, {"moe_topk", k}, {"num_layers", 1}},
         {.block = "model.layers.0.mlp.", .router = "router.classifier.weight", .bias = "router.e_score_correction_bias"}, 0, 1,
         "num_hidden_layers (1)",
         {.num_experts = E, .top_k = k, .routed_scaling_factor = 6.0f, .requires_expert_bias = true, .num_null_experts = 3}, 0, false,
         {.Z = 3}},
        {"nemotron_h (non-gated relu² experts, backbone.layers.{l}.mixer.)",
         {{"model_type", "nemotron_h"}, {"hidden_size", d}, {"moe_intermediate_size", f}, {"n_routed_experts", E}, {"num_experts_per_tok", k},
          {"moe_shared_expert_intermediate_size", 20}, {"n_group", 4}, {"topk_group", 2}, {"routed_scaling_factor", 2.5},
          {"layers_block_type", {"mamba", "moe", "attention"}}},
         {.block = "backbone.layers.1.mixer.", .bias = "gate.e_score_correction_bias", .gated = false}, 1, 0,
         "layers_block_type[layer] == \"moe\"", sigmoid_bias_router(E, k, 4, 2, true, 2.5f), 20, false,
         {.act = smoe::expert::GluActivation::relu_squared()}},
        {"nemotron_h re-saved (experts.up_proj [E, f, d], hybrid_override_pattern)",
         {{"model_type", "nemotron_h"}, {"hidden_size", d}, {"moe_intermediate_size", f}, {"n_routed_experts", E}, {"num_experts_per_tok", k},
          {"moe_shared_expert_intermediate_size", 16}, {"norm_topk_prob", false}, {"hybrid_override_pattern", "ME*"}},
         {.block = "model.layers.1.mixer.", .bias = "gate.e_score_correction_bias", .fused = true, .fused_gate_up = "experts.up_proj",
          .gated = false},
         1, 2, "hybrid_override_pattern[layer] == 'E'", sigmoid_bias_router(E, k, 1, 1, false, 1.0f), 16, false,
         {.act = smoe::expert::GluActivation::relu_squared()}},
    };
    std::mt19937_64 rng(27);
    for (auto const& fam : families) {
        INFO(fam.name);
        auto const cfg = parse_hf_config(fam.config, "c.json");
        Block const b = Block::random(rng, d, f, E, fam.fs, false, fam.extra.Z);
        auto const tensors = b.write(fam.disk, false);
        auto moe = HfMoeLayer::load(cfg, tensors, fam.layer, {.max_tokens = 33}, "mem");
        CHECK(moe.format() == smoe::io::WeightFormat::f32);
        for (std::int64_t T : {1, 33}) {
            auto const x = rnd(rng, T * d, 1.0);
            std::vector<float> y(static_cast<std::size_t>(T * d));
            moe.forward(MatrixView<float const>(x.data(), T, d), MatrixView<float>(y.data(), T, d));
            CHECK(y == by_hand(b, fam.router, fam.gated, x, T, fam.extra));
        }
        if (cfg.family == HfFamily::granitemoe || cfg.family == HfFamily::granitemoehybrid) {  // Granite's files hold only fused input/output_linear
            Block::Disk per = fam.disk;
            per.fused = false;
            CHECK_THROWS_WITH(HfMoeLayer::load(cfg, b.write(per, false), fam.layer, {}, "mem"),
                              Contains("block_sparse_moe.input_linear.weight") && Contains("missing"));
        }
        CHECK_THROWS_WITH(HfMoeLayer::load(cfg, tensors, fam.dense, {}, "mem"),
                          Contains("c.json" + std::string(fam.config.contains("text_config") ? " text_config" : "") +
                                   ": layer' = " + std::to_string(fam.dense)) &&
                              Contains(fam.dense_rule) &&
                              Contains("dense layers have no router"));
    }

    // DeepSeek-V4's hash_moe layer (families.md §2.2): the experts are gate.tid2eid[token id] (no selection bias),
    // the weights the gate's sqrt-softplus scores over them renormalised, × 1.5; forward needs the token ids.
    // The outputs against DeepseekV4SparseMoeBlock are case.deepseek_v4_hash_f32_t7.
    auto const v4 = parse_hf_config({{"model_type", "deepseek_v4"}, {"hidden_size", d}, {"moe_intermediate_size", f}, {"n_routed_experts", E},
                                     {"num_experts_per_tok", k}, {"num_hidden_layers", 2}, {"mlp_layer_types", {"hash_moe", "moe"}}},
                                    "v.json");
    Block const b = Block::random(rng, d, f, E, f, false);
    Block::Disk const disk{.block = "layers.0.ffn.", .gate = "w1.weight", .up = "w3.weight", .down = "w2.weight", .shared_w = true};
    auto with_table = [&](std::vector<std::int64_t> const& table, std::int64_t rows) {
        auto m = b.write(disk, false);
        m.add_values("layers.0.ffn.gate.tid2eid", Dtype::I64, {rows, static_cast<std::int64_t>(table.size()) / rows},
                     std::span<std::int64_t const>(table));
        return m;
    };
    std::vector<std::int64_t> const table{3, 0, 1, 7, 5, 2, 6, 4, 0, 1};  // vocab 5
    auto const tensors = with_table(table, 5);
    auto moe = HfMoeLayer::load(v4, tensors, 0, {.max_tokens = 8}, "mem");
    std::int64_t const T = 6;
    std::vector<std::int32_t> const ids{4, 0, 3, 1, 2, 4};
    auto const x = rnd(rng, T * d, 1.0);
    std::vector<float> y(static_cast<std::size_t>(T * d));
    auto const r = moe.forward(MatrixView<float const>(x.data(), T, d), MatrixView<float>(y.data(), T, d), smoe::TokenIds{ids});
    for (std::int64_t t = 0; t < T; ++t) {
        double s[2], sum = 0;
        for (int j = 0; j < 2; ++j) {
            double logit = 0;
            for (std::int64_t i = 0; i < d; ++i) logit += double(x[t * d + i]) * b.gate[table[ids[t] * 2 + j] * d + i];
            sum += s[j] = std::sqrt(std::log1p(std::exp(logit)));
        }
        for (int j = 0; j < 2; ++j) {  // the result's rows are sorted by weight
            int const at = r.expert_ids(t, 0) == table[ids[t] * 2 + j] ? 0 : 1;
            CHECK(r.expert_ids(t, at) == table[ids[t] * 2 + j]);
            CHECK(std::abs(r.expert_weights(t, at) - s[j] / sum * 1.5) <= 1e-5 * s[j] / sum * 1.5);
        }
    }
    CHECK_THROWS_WITH(moe.forward(MatrixView<float const>(x.data(), T, d), MatrixView<float>(y.data(), T, d)),
                      Contains("token_ids' = none") && Contains("hash routing"));
    CHECK_THROWS_WITH(HfMoeLayer::load(v4, with_table({3, 0, 1, 1}, 2), 0, {}, "mem"),
                      Contains("'layers.0.ffn.gate.tid2eid' at token id 1, slot 1' = 1") && Contains("distinct expert ids in [0, 8)"));
    CHECK_THROWS_WITH(HfMoeLayer::load(v4, with_table({3, 0, 1}, 1), 0, {}, "mem"),
                      Contains("'layers.0.ffn.gate.tid2eid' shape") && Contains("[vocab, 2]"));
    CHECK_THROWS_WITH(HfMoeLayer::load(v4, b.write(disk, false), 0, {}, "mem"), Contains("tid2eid") && Contains("missing"));
}

TEST_CASE("int8 quantised at load stays within the sanity bound of experts.md section 9", "[hf][load][int8]") {
    std::mt19937_64 rng(24);
    for (auto fam : {HfFamily::olmoe, HfFamily::qwen2_moe, HfFamily::deepseek_v3}) {
        std::int64_t const d = 48, f = 20, E = 8, fs = fam == HfFamily::olmoe ? 0 : 20, T = 17;
        INFO(to_string(fam));
        auto const cfg = parse_hf_config(family_config(fam, d, f, E, 2, fs), "c.json");
        Block const b = Block::random(rng, d, f, E, fs, false);
        auto const tensors = b.tensors(fam, 0, false);
        auto moe = HfMoeLayer::load(cfg, tensors, 0, {.max_tokens = T, .format = smoe::io::WeightFormat::int8}, "mem");
        CHECK(moe.format() == smoe::io::WeightFormat::int8);
        auto const x = rnd(rng, T * d, 1.0);
        std::vector<float> y(static_cast<std::size_t>(T * d));
        auto const r = moe.forward(MatrixView<float const>(x.data(), T, d), MatrixView<float>(y.data(), T, d));
        smoe_test::check_close(y, b.oracle(cfg, x, T), T, d, 5e-2);
        CHECK(r.k == 2);
        // 1 byte per expert weight (+ scales) instead of 4.
        CHECK(moe.weight_bytes() < static_cast<std::size_t>(3 * E * f * d + 3 * fs * d) * 2);
    }
    // Nemotron-H's non-gated experts: int8 against the fp32 layer; int4 (QuantSwiGLU, gated only) is refused by name.
    std::int64_t const d = 48, f = 20, E = 8, T = 17;
    auto const cfg = parse_hf_config({{"model_type", "nemotron_h"}, {"hidden_size", d}, {"moe_intermediate_size", f}, {"n_routed_experts", E},
                                      {"moe_shared_expert_intermediate_size", f}, {"layers_block_type", {"moe"}}},
                                     "n.json");
    Block const b = Block::random(rng, d, f, E, f, false);
    auto const tensors = b.write({.block = "backbone.layers.0.mixer.", .bias = "gate.e_score_correction_bias", .gated = false}, false);
    auto m32 = HfMoeLayer::load(cfg, tensors, 0, {.max_tokens = T}, "mem");
    auto m8 = HfMoeLayer::load(cfg, tensors, 0, {.max_tokens = T, .format = smoe::io::WeightFormat::int8}, "mem");
    auto const x = rnd(rng, T * d, 1.0);
    std::vector<float> y32(static_cast<std::size_t>(T * d)), y8(y32.size());
    m32.forward(MatrixView<float const>(x.data(), T, d), MatrixView<float>(y32.data(), T, d));
    m8.forward(MatrixView<float const>(x.data(), T, d), MatrixView<float>(y8.data(), T, d));
    smoe_test::check_close(y8, std::vector<double>(y32.begin(), y32.end()), T, d, 5e-2);
    CHECK(m8.weight_bytes() < static_cast<std::size_t>(2 * E * f * d + 2 * f * d) * 2);
    CHECK_THROWS_WITH(HfMoeLayer::load(cfg, tensors, 0, {.format = smoe::io::WeightFormat::int4}, "mem"),
                      Contains("nemotron_h") && Contains("non-gated relu² experts load as f32, bf16 or int8"));
}

TEST_CASE("gpt-oss's MXFP4 experts load to the bits of their dequantised values", "[hf][load][gpt_oss][mxfp4]") {
    // families.md §2.1: blocks [E, N, K/32, 16] (byte i: element 2i low nibble, 2i + 1 high), scales [E, N, K/32],
    // value = E2M1(nibble) · 2^(scale - 127); rows are output channels, gate and up rows interleaved. The same
    // values as the module's float parameters ([E, d, 2f] interleaved columns, [E, f, d]) must give the same bits:
    // QuantSwiGLU's exact path is SwiGLU<float> on the dequantised weights.
    std::int64_t const d = 64, f = 32, E = 4, k = 2;
    std::mt19937_64 rng(71);
    auto mx = [&](std::int64_t N, std::int64_t K, std::vector<std::uint8_t>& blocks, std::vector<std::uint8_t>& scales) {
        return random_e2m1(rng, E * N, K, blocks, scales);  // [E, N, K]
    };
    std::vector<std::uint8_t> gub, gus, dnb, dns;
    auto const gu = mx(2 * f, d, gub, gus), dn = mx(d, f, dnb, dns);
    std::vector<float> gu_t(gu.size()), dn_t(dn.size());  // the module's layouts: [E, d, 2f] and [E, f, d]
    for (std::int64_t e = 0; e < E; ++e) {
        for (std::int64_t n = 0; n < 2 * f; ++n)
            for (std::int64_t i = 0; i < d; ++i) gu_t[std::size_t((e * d + i) * 2 * f + n)] = gu[std::size_t((e * 2 * f + n) * d + i)];
        for (std::int64_t o = 0; o < d; ++o)
            for (std::int64_t j = 0; j < f; ++j) dn_t[std::size_t((e * f + j) * d + o)] = dn[std::size_t((e * d + o) * f + j)];
    }
    auto const gate = rnd(rng, E * d, 0.5), gbias = rnd(rng, E, 0.5), bgu = rnd(rng, E * 2 * f, 0.5), bdn = rnd(rng, E * d, 0.5);
    std::string const p = "model.layers.0.mlp.";
    auto common = [&](TensorMap& m) {
        put(m, p + "router.weight", {E, d}, gate);
        put(m, p + "router.bias", {E}, gbias);
        put(m, p + "experts.gate_up_proj_bias", {E, 2 * f}, bgu);
        put(m, p + "experts.down_proj_bias", {E, d}, bdn);
    };
    TensorMap q, fl;
    common(q), common(fl);
    q.add_values(p + "experts.gate_up_proj_blocks", Dtype::U8, {E, 2 * f, d / 32, 16}, std::span<std::uint8_t const>(gub));
    q.add_values(p + "experts.gate_up_proj_scales", Dtype::U8, {E, 2 * f, d / 32}, std::span<std::uint8_t const>(gus));
    q.add_values(p + "experts.down_proj_blocks", Dtype::U8, {E, d, f / 32, 16}, std::span<std::uint8_t const>(dnb));
    q.add_values(p + "experts.down_proj_scales", Dtype::U8, {E, d, f / 32}, std::span<std::uint8_t const>(dns));
    put(fl, p + "experts.gate_up_proj", {E, d, 2 * f}, gu_t);
    put(fl, p + "experts.down_proj", {E, f, d}, dn_t);
    json config = {{"model_type", "gpt_oss"}, {"hidden_size", d}, {"intermediate_size", f}, {"num_local_experts", E},
                   {"num_experts_per_tok", k}, {"num_hidden_layers", 1}, {"swiglu_limit", 20.0}};
    auto const cf = parse_hf_config(config, "c.json");
    config["quantization_config"] = {{"quant_method", "mxfp4"}};
    auto const cq = parse_hf_config(config, "c.json");
    auto mq = HfMoeLayer::load(cq, q, 0, {.max_tokens = 17}, "mem");
    auto mf = HfMoeLayer::load(cf, fl, 0, {.max_tokens = 17}, "mem");
    CHECK(mq.expert_format(1) == "mxfp4");
    CHECK(mf.format() == smoe::io::WeightFormat::f32);
    same_outputs(mq, mf, rnd(rng, 17 * d, 0.05), 17, d);
    TensorMap bad;
    common(bad);
    bad.add_values(p + "experts.gate_up_proj_blocks", Dtype::U8, {E, 2 * f, d / 32, 16}, std::span<std::uint8_t const>(gub));
    CHECK_THROWS_WITH(HfMoeLayer::load(cq, bad, 0, {}, "mem"), Contains("gate_up_proj_scales") && Contains("missing"));
}

TEST_CASE("Llama 4's FP8 experts (fbgemm_fp8) load to the bits of their dequantised values", "[hf][load][llama4][fp8]") {
    // families.md §2.8: gate_up_proj F8_E4M3 [E, d, 2f] with gate_up_proj_scale [E, 1, 2f], down_proj [E, f, d] with
    // down_proj_scale [E, d, 1]; W_gate[j, i] = e4m3(gate_up_proj[e, i, j]) · scale[e, 0, j] (FbgemmFp8Llama4TextExperts).
    // The factors are powers of two, so the dequantised fp32 weights are exact and the float layer on them must give
    // the same bits (QuantSwiGLU's exact path). e4m3 by formats.md §2.1's formula: (1 + M/8) · 2^(E - 7), E = 0: M · 2^-9.
    std::int64_t const d = 40, f = 24, E = 4, T = 9;
    std::mt19937_64 rng(72);
    std::uniform_int_distribution<int> byte(0, 255), pow2(-9, -5);
    auto e4m3 = [](int b) {
        int const ex = (b >> 3) & 15, m = b & 7;
        return float((b & 0x80 ? -1 : 1) * (ex == 0 ? m * std::ldexp(1.0, -9) : (1 + m / 8.0) * std::ldexp(1.0, ex - 7)));
    };
    auto codes = [&](std::int64_t n) {
        std::vector<std::uint8_t> c(static_cast<std::size_t>(n));
        for (auto& v : c)
            do v = static_cast<std::uint8_t>(byte(rng));
            while ((v & 0x7F) == 0x7F);
        return c;
    };
    auto scales = [&](std::int64_t n) {
        std::vector<float> s(static_cast<std::size_t>(n));
        for (auto& v : s) v = std::ldexp(1.0f, pow2(rng));
        return s;
    };
    auto const gq = codes(E * d * 2 * f), dq = codes(E * f * d);
    auto const gs = scales(E * 2 * f), ds = scales(E * d);
    std::vector<float> gw(gq.size()), dw(dq.size());  // the module's float layouts [E, d, 2f], [E, f, d]
    for (std::int64_t e = 0; e < E; ++e)
        for (std::int64_t i = 0; i < d; ++i)
            for (std::int64_t j = 0; j < 2 * f; ++j) gw[std::size_t((e * d + i) * 2 * f + j)] = e4m3(gq[std::size_t((e * d + i) * 2 * f + j)]) * gs[std::size_t(e * 2 * f + j)];
    for (std::int64_t e = 0; e < E; ++e)
        for (std::int64_t j = 0; j < f; ++j)
            for (std::int64_t o = 0; o < d; ++o) dw[std::size_t((e * f + j) * d + o)] = e4m3(dq[std::size_t((e * f + j) * d + o)]) * ds[std::size_t(e * d + o)];
    // The shared expert: dense (modules_to_not_convert), or FP8 per Linear (weight [R, C] F8_E4M3, weight_scale [R, 1]).
    auto const sgq = codes(f * d), suq = codes(f * d), sdq = codes(d * f);
    auto const sgs = scales(f), sus = scales(f), sds = scales(d);
    auto deq = [&](std::vector<std::uint8_t> const& q, std::vector<float> const& s, std::int64_t C) {
        std::vector<float> w(q.size());
        for (std::size_t i = 0; i < q.size(); ++i) w[i] = e4m3(q[i]) * s[i / std::size_t(C)];
        return w;
    };
    auto const gate = rnd(rng, E * d, 0.5);
    std::string const p = "language_model.model.layers.0.feed_forward.";
    auto f8 = [](TensorMap& m, std::string n, std::vector<std::int64_t> shape, std::vector<std::uint8_t> const& q) {
        m.add_values(std::move(n), Dtype::F8_E4M3, std::move(shape), std::span<std::uint8_t const>(q));
    };
    // What the FP8 file holds (the error checks below break a copy).
    auto gq_file = gq;
    auto gs_file = gs, ds_file = ds;
    std::vector<std::int64_t> gs_shape{E, 1, 2 * f};
    auto model = [&](bool fp8_experts, bool fp8_shared) {
        TensorMap m;
        put(m, p + "router.weight", {E, d}, gate);
        if (fp8_experts) {
            f8(m, p + "experts.gate_up_proj", {E, d, 2 * f}, gq_file);
            put(m, p + "experts.gate_up_proj_scale", gs_shape, gs_file);
            f8(m, p + "experts.down_proj", {E, f, d}, dq);
            put(m, p + "experts.down_proj_scale", {E, d, 1}, ds_file);
        } else {
            put(m, p + "experts.gate_up_proj", {E, d, 2 * f}, gw);
            put(m, p + "experts.down_proj", {E, f, d}, dw);
        }
        std::string const s = p + "shared_expert.";
        if (fp8_shared) {
            f8(m, s + "gate_proj.weight", {f, d}, sgq), put(m, s + "gate_proj.weight_scale", {f, 1}, sgs);
            f8(m, s + "up_proj.weight", {f, d}, suq), put(m, s + "up_proj.weight_scale", {f, 1}, sus);
            f8(m, s + "down_proj.weight", {d, f}, sdq), put(m, s + "down_proj.weight_scale", {d, 1}, sds);
        } else {
            put(m, s + "gate_proj.weight", {f, d}, deq(sgq, sgs, d));
            put(m, s + "up_proj.weight", {f, d}, deq(suq, sus, d));
            put(m, s + "down_proj.weight", {d, f}, deq(sdq, sds, f));
        }
        return m;
    };
    json config = {{"model_type", "llama4"},
                   {"text_config", {{"hidden_size", d}, {"intermediate_size", f}, {"num_local_experts", E}, {"num_experts_per_tok", 1},
                                    {"num_hidden_layers", 1}}}};
    auto const cf = parse_hf_config(config, "c.json");
    auto const xs = rnd(rng, T * d, 1.0);
    auto run = [&](smoe::io::HfMoeConfig const& c, TensorMap const& m) {
        auto moe = HfMoeLayer::load(c, m, 0, {.max_tokens = T}, "mem");
        std::vector<float> y(static_cast<std::size_t>(T * d));
        moe.forward(MatrixView<float const>(xs.data(), T, d), MatrixView<float>(y.data(), T, d));
        return std::pair{moe.expert_format(2) + "; shared " + moe.shared_format(), y};
    };
    auto const [ff, yf] = run(cf, model(false, false));
    double mag = 0;
    for (float v : yf) mag = std::max(mag, double(std::fabs(v)));
    CHECK(mag > 0.1);  // the comparison is not of zeros
    for (bool fp8_shared : {false, true}) {
        INFO("FP8 shared expert " << fp8_shared);
        config["quantization_config"] = {{"quant_method", "fbgemm_fp8"}, {"activation_scale_ub", 1200.0}};
        if (!fp8_shared) config["quantization_config"]["modules_to_not_convert"] = {"feed_forward.shared_expert", "router"};
        auto const cq = parse_hf_config(config, "c.json");
        auto const [fq, yq] = run(cq, model(true, fp8_shared));
        CHECK(fq == std::string("fp8-e4m3-channel; shared ") + (fp8_shared ? "fp8-e4m3-channel" : "f32"));
        CHECK(yq == yf);
    }
    // What a broken file gets: the tensor and the element in the file's indices.
    auto const cq = parse_hf_config(config, "c.json");
    auto load = [&] { return HfMoeLayer::load(cq, model(true, true), 0, {}, "mem"); };
    gq_file[std::size_t((2 * d + 5) * 2 * f + f + 3)] = 0xFF;  // expert 2, input 5, up unit 3
    CHECK_THROWS_WITH(load(), Contains("experts.gate_up_proj' element [2, 5, " + std::to_string(f + 3) + "]") && Contains("0xFF") &&
                                  Contains("NaN"));
    gq_file = gq;
    ds_file[std::size_t(1 * d + 7)] = 0.0f;
    CHECK_THROWS_WITH(load(), Contains("experts.down_proj_scale' element [1, 7, 0]") && Contains("a finite scale > 0"));
    ds_file = ds;
    gs_shape = {E, 2 * f};
    CHECK_THROWS_WITH(load(), Contains("experts.gate_up_proj_scale' shape") && Contains("[E, 1, 2f]"));
    CHECK_THROWS_WITH(HfMoeLayer::load(cf, model(true, false), 0, {}, "mem"), Contains("quantization_config") && Contains("fbgemm_fp8"));
}

TEST_CASE("DeepSeek-V4's FP4 experts (expert_dtype fp4) load to the bits of their dequantised values", "[hf][load][deepseek_v4][fp4]") {
    // families.md §2.8: routed experts ffn.experts.{i}.w1/w3/w2.weight I8 [N, K/2] (E2M1 pairs, element 2i the low
    // nibble) with `.scale` E8M0 [N, K/32], W = E2M1 · 2^(s - 127) (formats.md §3.1, transformers FP8Experts with
    // expert_dtype fp4); the shared expert FP8 e4m3 with 128 x 128 UE8M0 `.scale` blocks (DeepSeek's own names). Every
    // factor is a power of two, so the float layer on the dequantised weights must give the same bits.
    std::int64_t const d = 64, f = 32, E = 4, T = 9;
    std::mt19937_64 rng(73);
    std::uniform_int_distribution<int> byte(0, 255), sc(123, 128);
    // FP8 e4m3 codes 0x00..0x77 and 0x80..0xF7 (finite), one UE8M0 factor per 128 x 128 block: [1, 1] here.
    auto fp8 = [&](std::int64_t n, std::vector<std::uint8_t>& q, std::uint8_t e8) {
        std::vector<float> w(static_cast<std::size_t>(n));
        for (auto& x : w) {
            int const b = byte(rng) & 0xF7, ex = (b >> 3) & 15, m = b & 7;
            q.push_back(static_cast<std::uint8_t>(b));
            x = float((b & 0x80 ? -1 : 1) * (ex == 0 ? m * std::ldexp(1.0, -9) : (1 + m / 8.0) * std::ldexp(1.0, ex - 7)) *
                      std::ldexp(1.0, e8 - 127));
        }
        return w;
    };
    std::string const p = "layers.0.ffn.";
    TensorMap q, fl;
    auto const gate = rnd(rng, E * d, 0.5), bias = rnd(rng, E, 0.1);
    for (TensorMap* m : {&q, &fl}) put(*m, p + "gate.weight", {E, d}, gate), put(*m, p + "gate.bias", {E}, bias);
    auto e8m0 = [](TensorMap& m, std::string n, std::vector<std::int64_t> shape, std::vector<std::uint8_t> const& v) {
        m.add_values(std::move(n), Dtype::F8_E8M0, std::move(shape), std::span<std::uint8_t const>(v));
    };
    for (std::int64_t e = 0; e < E; ++e)
        for (auto [name, R, C] : {std::tuple<char const*, std::int64_t, std::int64_t>{"w1", f, d}, {"w3", f, d}, {"w2", d, f}}) {
            std::vector<std::uint8_t> codes, scales;
            auto const w = random_e2m1(rng, R, C, codes, scales);
            std::string const n = p + "experts." + std::to_string(e) + "." + name;
            q.add_values(n + ".weight", Dtype::I8, {R, C / 2}, std::span<std::uint8_t const>(codes));
            e8m0(q, n + ".scale", {R, C / 32}, scales);
            put(fl, n + ".weight", {R, C}, w);
        }
    for (auto [name, R, C] : {std::tuple<char const*, std::int64_t, std::int64_t>{"w1", f, d}, {"w3", f, d}, {"w2", d, f}}) {
        std::vector<std::uint8_t> codes;
        std::uint8_t const e8 = static_cast<std::uint8_t>(sc(rng));
        auto const w = fp8(R * C, codes, e8);
        std::string const n = p + "shared_experts." + name;
        q.add_values(n + ".weight", Dtype::F8_E4M3, {R, C}, std::span<std::uint8_t const>(codes));
        e8m0(q, n + ".scale", {1, 1}, {e8});
        put(fl, n + ".weight", {R, C}, w);
    }
    json config = {{"model_type", "deepseek_v4"}, {"hidden_size", d}, {"moe_intermediate_size", f}, {"n_routed_experts", E},
                   {"num_experts_per_tok", 2}, {"num_hidden_layers", 1}, {"mlp_layer_types", {"moe"}}};
    auto const cf = parse_hf_config(config, "c.json");
    config["quantization_config"] = {{"quant_method", "fp8"}, {"fmt", "e4m3"}, {"scale_fmt", "ue8m0"}, {"weight_block_size", {128, 128}},
                                     {"expert_dtype", "fp4"}, {"activation_scheme", "dynamic"}};
    auto const cq = parse_hf_config(config, "c.json");
    auto mq = HfMoeLayer::load(cq, q, 0, {.max_tokens = T}, "mem");
    auto mf = HfMoeLayer::load(cf, fl, 0, {.max_tokens = T}, "mem");
    CHECK(mq.expert_format(3) == "mxfp4");
    CHECK(mq.shared_format() == "fp8-e4m3-b128x128");
    same_outputs(mq, mf, rnd(rng, T * d, 0.3), T, d);
    // F32 factors are accepted when an E8M0 byte can say them; 0.3 cannot. A wrong shape is named with its formula.
    auto with = [&](std::string const& name, Dtype dt, std::vector<std::int64_t> shape, std::vector<float> const& v) {
        TensorMap m;
        put(m, p + "gate.weight", {E, d}, gate), put(m, p + "gate.bias", {E}, bias);
        for (std::int64_t e = 0; e < E; ++e)
            for (auto [w, R, C] : {std::tuple<char const*, std::int64_t, std::int64_t>{"w1", f, d}, {"w3", f, d}, {"w2", d, f}}) {
                std::string const n = p + "experts." + std::to_string(e) + "." + w;
                std::vector<std::uint8_t> codes(static_cast<std::size_t>(R * C / 2), 0x21), e8(static_cast<std::size_t>(R * C / 32), 127);
                m.add_values(n + ".weight", Dtype::I8, {R, C / 2}, std::span<std::uint8_t const>(codes));
                if (n + ".scale" == name)
                    m.add_values(name, dt, shape, std::span<float const>(v));
                else
                    e8m0(m, n + ".scale", {R, C / 32}, e8);
            }
        for (auto [w, R, C] : {std::tuple<char const*, std::int64_t, std::int64_t>{"w1", f, d}, {"w3", f, d}, {"w2", d, f}}) {
            std::vector<std::uint8_t> const ones(static_cast<std::size_t>(R * C), 0x38);  // e4m3 1.0
            m.add_values(p + "shared_experts." + w + ".weight", Dtype::F8_E4M3, {R, C}, std::span<std::uint8_t const>(ones));
            e8m0(m, p + "shared_experts." + w + ".scale", {1, 1}, {127});
        }
        return m;
    };
    std::vector<float> pow2(static_cast<std::size_t>(f * d / 32), 0.25f), bad = pow2;
    bad[5] = 0.3f;
    CHECK_NOTHROW(HfMoeLayer::load(cq, with(p + "experts.1.w3.scale", Dtype::F32, {f, d / 32}, pow2), 0, {}, "mem"));
    CHECK_THROWS_WITH(HfMoeLayer::load(cq, with(p + "experts.1.w3.scale", Dtype::F32, {f, d / 32}, bad), 0, {}, "mem"),
                      Contains("experts.1.w3.scale' element 5") && Contains("a power of two"));
    CHECK_THROWS_WITH(HfMoeLayer::load(cq, with(p + "experts.1.w3.scale", Dtype::F32, {f, d / 16}, std::vector<float>(std::size_t(f * d / 16), 0.25f)),
                                       0, {}, "mem"),
                      Contains("experts.1.w3.scale' shape") && Contains("[R, C/32]"));
    config["quantization_config"]["expert_dtype"] = "fp6";
    CHECK_THROWS_WITH(parse_hf_config(config, "c.json"), Contains("expert_dtype") && Contains("\"fp8\" or \"fp4\""));
}

TEST_CASE("fused gate_up_proj / down_proj load to the same layer as per-expert tensors", "[hf][load]") {
    std::mt19937_64 rng(22);
    std::int64_t const d = 24, f = 10, E = 4, T = 9;
    auto const cfg = parse_hf_config(family_config(HfFamily::olmoe, d, f, E, 2, 0), "c.json");
    Block const b = Block::random(rng, d, f, E, 0, false);
    auto const per = b.tensors(HfFamily::olmoe, 0, false), fused = b.tensors(HfFamily::olmoe, 0, false, true);
    auto m1 = HfMoeLayer::load(cfg, per, 0, {.max_tokens = T}, "per-expert");
    auto m2 = HfMoeLayer::load(cfg, fused, 0, {.max_tokens = T}, "fused");
    auto const x = rnd(rng, T * d, 1.0);
    std::vector<float> y1(T * d), y2(T * d);
    m1.forward(MatrixView<float const>(x.data(), T, d), MatrixView<float>(y1.data(), T, d));
    m2.forward(MatrixView<float const>(x.data(), T, d), MatrixView<float>(y2.data(), T, d));
    CHECK(y1 == y2);
}

TEST_CASE("a checkpoint that does not match its config is an error naming the tensor", "[hf][load][errors]") {
    std::mt19937_64 rng(23);
    std::int64_t const d = 16, f = 8, E = 4;
    auto const cfg = parse_hf_config(family_config(HfFamily::qwen2_moe, d, f, E, 2, 12), "c.json");
    Block const b = Block::random(rng, d, f, E, 12, false);
    auto const good = b.tensors(HfFamily::qwen2_moe, 0, false);
    CHECK_THROWS_WITH(HfMoeLayer::load(cfg, good, 1, {}, "ckpt"), Contains("model.layers.1.mlp.gate.weight") && Contains("missing"));
    CHECK_THROWS_WITH(HfMoeLayer::load(cfg, good, 2, {}, "ckpt"), Contains("layer") && Contains("MoE decoder layer"));
    // A dense layer is the config's doing: the message says which keys make it so.
    json sparse = family_config(HfFamily::qwen2_moe, d, f, E, 2, 12);
    sparse["decoder_sparse_step"] = 2;
    CHECK_THROWS_WITH(HfMoeLayer::load(parse_hf_config(sparse, "c.json"), good, 0, {}, "ckpt"),
                      Contains("c.json: layer' = 0") && Contains("decoder_sparse_step (2)"));

    // A config extent that disagrees with the checkpoint names the key, its value, the checkpoint's value
    // and the tensor that says so.
    auto wrong_d = parse_hf_config(family_config(HfFamily::qwen2_moe, d + 1, f, E, 2, 12), "c.json");
    CHECK_THROWS_WITH(HfMoeLayer::load(wrong_d, good, 0, {}, "ckpt"),
                      Contains("c.json: key 'hidden_size'' = 17: expected 16") && Contains("'model.layers.0.mlp.gate.weight' [4, 16]"));
    auto wrong_f = parse_hf_config(family_config(HfFamily::qwen2_moe, d, f + 2, E, 2, 12), "c.json");
    CHECK_THROWS_WITH(HfMoeLayer::load(wrong_f, good, 0, {}, "ckpt"),
                      Contains("key 'moe_intermediate_size'' = 10: expected 8") && Contains("experts.0.gate_proj.weight"));
    auto more_experts = parse_hf_config(family_config(HfFamily::qwen2_moe, d, f, E + 4, 2, 12), "c.json");
    CHECK_THROWS_WITH(HfMoeLayer::load(more_experts, good, 0, {}, "ckpt"),
                      Contains("key 'num_experts'' = 8: expected 4") && Contains("gate.weight"));
    auto wider_shared = parse_hf_config(family_config(HfFamily::qwen2_moe, d, f, E, 2, 16), "c.json");
    CHECK_THROWS_WITH(HfMoeLayer::load(wider_shared, good, 0, {}, "ckpt"),
                      Contains("key 'shared_expert_intermediate_size'' = 16: expected 12") && Contains("shared_expert.gate_proj"));

    auto const v3cfg = parse_hf_config(family_config(HfFamily::deepseek_v3, d, f, 2 * E, 2, 8), "c.json");
    Block const b3 = Block::random(rng, d, f, 2 * E, 8, false);
    auto v3 = b3.tensors(HfFamily::olmoe, 0, false);  // olmoe names: no shared experts, no bias
    CHECK_THROWS_WITH(HfMoeLayer::load(v3cfg, v3, 0, {}, "ckpt"), Contains("e_score_correction_bias") && Contains("missing"));
    // DeepSeek's shared width is n_shared_experts routed widths: that is the key named.
    auto const v3_three_shared = parse_hf_config(family_config(HfFamily::deepseek_v3, d, f, 2 * E, 2, 3 * f), "c.json");
    CHECK_THROWS_WITH(HfMoeLayer::load(v3_three_shared, b3.tensors(HfFamily::deepseek_v3, 0, false), 0, {}, "ckpt"),
                      Contains("key 'n_shared_experts'' = 3: expected 1") && Contains("shared_experts.gate_proj.weight"));

    TensorMap ints;
    std::vector<std::int32_t> iv(static_cast<std::size_t>(E * d));
    ints.add_values("model.layers.0.mlp.gate.weight", Dtype::I32, {E, d}, std::span<std::int32_t const>(iv));
    CHECK_THROWS_WITH(HfMoeLayer::load(cfg, ints, 0, {}, "ckpt"), Contains("dtype") && Contains("I32"));
}

// Issue 14: values that once reached an allocation before any check (std::bad_alloc, or 41 s and
// 16.8 GB for n_routed_experts = 2^31) are refused while the config is read, naming the key.
TEST_CASE("absurd config dimensions are refused by key before anything is allocated", "[hf][config][errors][limits]") {
    struct Absurd {
        HfFamily family;
        char const* key;
        json value;
    };
    std::int64_t const p31 = std::int64_t(1) << 31, p40 = std::int64_t(1) << 40;
    for (auto const& [fam, key, value] : {Absurd{HfFamily::mixtral, "intermediate_size", p40},
                                         Absurd{HfFamily::mixtral, "num_local_experts", p40},
                                         Absurd{HfFamily::qwen2_moe, "moe_intermediate_size", p31},
                                         Absurd{HfFamily::qwen2_moe, "moe_intermediate_size", 33000099},
                                         Absurd{HfFamily::deepseek_v3, "n_routed_experts", p31},
                                         Absurd{HfFamily::deepseek_v3, "n_shared_experts", std::int64_t(1) << 62},
                                         Absurd{HfFamily::olmoe, "num_experts", std::int64_t(1000000000000)},
                                         Absurd{HfFamily::olmoe, "hidden_size", p40},
                                         Absurd{HfFamily::olmoe, "num_hidden_layers", p40}}) {
        INFO(key << " = " << value.dump());
        json j = family_config(fam, 16, 8, 8, 2, fam == HfFamily::mixtral || fam == HfFamily::olmoe ? 0 : 8);
        j[key] = value;
        auto const t0 = std::chrono::steady_clock::now();
        CHECK_THROWS_WITH(parse_hf_config(j, "c.json"), Contains("c.json: key '" + std::string(key) + "'") &&
                                                             Contains(value.dump()) && Contains("smoe::limits::kMax"));
        CHECK(std::chrono::steady_clock::now() - t0 < std::chrono::seconds(1));
    }
    // 1e12 is a JSON float: still the key, as "an integer".
    CHECK_THROWS_WITH(parse_hf_config({{"model_type", "olmoe"}, {"num_experts", 1e12}}, "c.json"),
                      Contains("key 'num_experts'") && Contains("an integer"));
    for (json bad : {json(-8), json(8.5), json("8"), json(nullptr), json::array({8}), json(true)}) {
        INFO(bad.dump());
        json j = family_config(HfFamily::mixtral, 16, 8, 8, 2, 0);
        j["num_local_experts"] = bad;
        if (bad.is_null())  // null is a missing key: the family's default (8) applies
            CHECK(parse_hf_config(j, "c.json").num_experts() == 8);
        else
            CHECK_THROWS_WITH(parse_hf_config(j, "c.json"), Contains("key 'num_local_experts'"));
    }
    CHECK_THROWS_WITH(parse_hf_config({{"model_type", "olmoe"}, {"num_experts", 4}, {"num_experts_per_tok", 5}}, "c.json"),
                      Contains("key 'num_experts_per_tok'") && Contains("5"));
}

TEST_CASE("a config that is plausible but larger than its checkpoint fails fast, naming the key", "[hf][load][errors][limits]") {
    std::mt19937_64 rng(25);
    std::int64_t const d = 16, f = 8, E = 8;
    Block const b = Block::random(rng, d, f, E, 8, false);
    auto const tensors = b.tensors(HfFamily::deepseek_v3, 0, false);
    // The largest counts the limits allow: refused by the router weight's shape, before anything of
    // that size exists (the loader used to size its expert list from the config first).
    for (auto const& [key, value] : {std::pair{"n_routed_experts", smoe::limits::kMaxExperts},
                                     std::pair{"moe_intermediate_size", smoe::limits::kMaxDimension},
                                     std::pair{"hidden_size", smoe::limits::kMaxDimension}}) {
        INFO(key);
        json j = family_config(HfFamily::deepseek_v3, d, f, E, 2, 8);
        j["n_group"] = 1;
        j["topk_group"] = 1;
        j[key] = value;
        if (std::string(key) == "moe_intermediate_size") j["n_shared_experts"] = 0;
        auto const cfg = parse_hf_config(j, "c.json");
        auto const t0 = std::chrono::steady_clock::now();
        CHECK_THROWS_WITH(HfMoeLayer::load(cfg, tensors, 0, {}, "ckpt"),
                          Contains("c.json: key '" + std::string(key) + "'") && Contains(std::to_string(value)) &&
                              Contains("from tensor 'model.layers.0.mlp."));
        CHECK(std::chrono::steady_clock::now() - t0 < std::chrono::seconds(1));
    }
}

TEST_CASE("a non-finite value in a checkpoint tensor is named by the checkpoint's tensor", "[hf][load][errors]") {
    std::mt19937_64 rng(26);
    std::int64_t const d = 16, f = 8, E = 8;
    auto const cfg = parse_hf_config(family_config(HfFamily::deepseek_v3, d, f, E, 2, 8), "c.json");
    for (char const* name : {"model.layers.0.mlp.gate.e_score_correction_bias", "model.layers.0.mlp.gate.weight",
                             "model.layers.0.mlp.experts.3.down_proj.weight", "model.layers.0.mlp.shared_experts.up_proj.weight"}) {
        for (float bad : {std::numeric_limits<float>::quiet_NaN(), std::numeric_limits<float>::infinity()}) {
            for (bool bf16 : {false, true}) {
                INFO(name << " " << bad << (bf16 ? " bf16" : " f32"));
                Block b = Block::random(rng, d, f, E, 8, bf16);
                std::string const n = name;
                auto& v = n.ends_with("bias")          ? b.bias
                          : n.ends_with("gate.weight") ? b.gate
                          : n.find("experts.3") != std::string::npos ? b.w2
                                                                     : b.s3;
                v[n.find("experts.3") != std::string::npos ? 3 * d * f + 5 : 5] = bad;
                auto const tensors = b.tensors(HfFamily::deepseek_v3, 0, bf16);
                CHECK_THROWS_WITH(HfMoeLayer::load(cfg, tensors, 0, {}, "ckpt"),
                                  Contains("tensor '" + n + "' element 5") && Contains("finite values"));
            }
        }
    }
    // A fused stack is read one expert at a time; the element is still counted in the whole tensor.
    for (bool bf16 : {false, true}) {
        Block b = Block::random(rng, d, f, E, 8, bf16);
        b.w2[std::size_t(3 * d * f + 5)] = std::numeric_limits<float>::infinity();
        CHECK_THROWS_WITH(HfMoeLayer::load(cfg, b.tensors(HfFamily::deepseek_v3, 0, bf16, true), 0, {}, "ckpt"),
                          Contains("tensor 'model.layers.0.mlp.experts.down_proj' element " + std::to_string(3 * d * f + 5)) &&
                              Contains("finite values"));
    }
}

TEST_CASE("running out of memory while loading names what was being built", "[hf][load][errors]") {
    smoe::allocation_error const e("loading the MoE block of decoder layer 3 from ckpt");
    std::bad_alloc const& as_bad_alloc = e;  // a host's handler for std::bad_alloc still catches it
    CHECK(std::string(as_bad_alloc.what()) == "smoe: out of memory loading the MoE block of decoder layer 3 from ckpt");
    smoe::allocation_error const copy = e;
    CHECK(std::string(copy.what()) == e.what());
}
