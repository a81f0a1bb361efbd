#pragma once
// Shape and weight views of the SwiGLU expert (experts.md §3): W1, W3 [E, f, d] (gate, up), W2 [E, d, f],
// stored in one of the weight formats of core/format.hpp (float, smoe::bf16, std::int8_t). int8
// weights carry one fp32 scale per output channel: s1, s3 [E, f], s2 [E, d] (W = s · q).

#include <cmath>
#include <cstdint>
#include <limits>
#include <optional>
#include <string>
#include <string_view>
#include <type_traits>

#include "smoe/core/error.hpp"
#include "smoe/core/limits.hpp"
#include "smoe/core/format.hpp"
#include "smoe/core/view.hpp"
#include "smoe/store/store_config.hpp"

namespace smoe::inline v0::expert {

// SwiGLU<bf16>'s dot product (kernels/cpu/bf16_dot.hpp): `automatic` takes the AVX512-BF16 path
// (activations rounded to bf16, vdpbf16ps) where the CPU has it at run time, the fp32 path (weights
// widened, fp32 FMA) elsewhere; `off` always takes the fp32 path, `on` the AVX512-BF16 one (an error
// on a CPU without it); `emulated` runs the AVX512-BF16 path's exact arithmetic in scalar code, on
// any CPU (slow: for tests and for checking results against a machine with the instruction). Other
// weight formats accept `automatic` and `off` only.
enum class Bf16Dot { automatic, off, on, emulated };

inline char const* to_string(Bf16Dot m) {
    switch (m) {
        case Bf16Dot::automatic: return "automatic";
        case Bf16Dot::off: return "off";
        case Bf16Dot::on: return "on";
        default: return "emulated";
    }
}

// The enum from its to_string spelling (command lines, configs); nullopt for anything else.
inline std::optional<Bf16Dot> parse_bf16_dot(std::string_view s) {
    for (Bf16Dot m : {Bf16Dot::automatic, Bf16Dot::off, Bf16Dot::on, Bf16Dot::emulated})
        if (s == to_string(m)) return m;
    return std::nullopt;
}

// The int8 dot path of formats.md §6.2 for int4 and int8 weights (expert::QuantSwiGLU): `off` (the
// default) computes the exact fp32 path; `on` quantises activations to int8 per block of 32 and takes
// integer dot products (AVX512-VNNI where the CPU has it, else AVX-VNNI, else AVX2, else the portable kernel:
// the same bits); `avx2` forces the AVX2 kernel (an error on a CPU without AVX2 and FMA), `avx-vnni` the AVX2
// kernel with vpdpbusd on ymm (in its EVEX encoding on a CPU with AVX512-VNNI but no AVX-VNNI; an error on a CPU
// with neither) and `portable` the scalar model (tests, and checking one machine's results on another).
enum class Int8Dot { off, on, avx2, avx_vnni, portable };

inline char const* to_string(Int8Dot m) {
    switch (m) {
        case Int8Dot::off: return "off";
        case Int8Dot::on: return "on";
        case Int8Dot::avx2: return "avx2";
        case Int8Dot::avx_vnni: return "avx-vnni";
        default: return "portable";
    }
}
inline std::optional<Int8Dot> parse_int8_dot(std::string_view s) {
    for (Int8Dot m : {Int8Dot::off, Int8Dot::on, Int8Dot::avx2, Int8Dot::avx_vnni, Int8Dot::portable})
        if (s == to_string(m)) return m;
    return std::nullopt;
}

// The gated activation of the SwiGLU experts (experts.md §3 and §5, families.md §2.1-§2.2):
//
//   g' = min(g, limit),  u' = clamp(u, -limit, limit),  h = g' · σ(alpha · g') · (u' + up_offset)
//
// The defaults (alpha 1, limit +inf, up_offset 0) are silu(g) · u, the plain SwiGLU, which keeps its own
// path (g / (1 + exp(-g)) · u, unchanged bits). GPT-OSS (HF GptOssExperts._apply_gate): alpha 1.702, limit
// 7 and the +1 on up; DeepSeek-V4, GLM-5-Next and HY-V4: silu with limit 10 (swiglu_limit). A NaN g or u
// stays NaN through the clamps, as with torch.clamp. Example (experts.md §3's expert 0, gpt_oss(1.702, 1)):
// g = (-0.5, 0.75, 2.25) -> g' = (-0.5, 0.75, 1), u = (0.5, 0.75, -0.75) -> h = (-0.224417, 1.026183, 0.211449)
// (tests/test_glu_experts.cpp checks it, and the whole §3 example under each form).
//
// relu2 makes the expert non-gated (Nemotron-H, families.md §4: HF NemotronHExperts, has_gate = false):
//   u = W3 x (+ b3),  h = relu(u)²,  out = W2 h
// with no W1 and no b1 (alpha, limit and up_offset keep their defaults). The same expert type runs it: a
// gate/up panel then holds 16 up units instead of 8 gate and the 8 matching up units, so no weight is stored
// or multiplied twice. relu(NaN) stays NaN, as torch.relu. Example: u = (-1, 0.5, 3) -> h = (0, 0.25, 9).
struct GluActivation {
    float alpha = 1.0f;
    float limit = std::numeric_limits<float>::infinity();
    float up_offset = 0.0f;
    bool relu2 = false;  // non-gated relu(u)² (then no W1)

    static GluActivation gpt_oss(float alpha = 1.702f, float limit = 7.0f) { return {alpha, limit, 1.0f}; }
    static GluActivation limited(float limit) { return {1.0f, limit, 0.0f}; }
    static GluActivation relu_squared() { return {1.0f, std::numeric_limits<float>::infinity(), 0.0f, true}; }
    bool gated() const { return !relu2; }
    bool is_silu() const { return alpha == 1.0f && limit == std::numeric_limits<float>::infinity() && up_offset == 0.0f && !relu2; }
    void validate() const {
        if (!std::isfinite(alpha) || alpha <= 0.0f) smoe::detail::fail("activation.alpha", alpha, "a finite number > 0");
        if (!(limit > 0.0f)) smoe::detail::fail("activation.limit", limit, "a number > 0 (+inf: no clamp)");
        if (!std::isfinite(up_offset)) smoe::detail::fail("activation.up_offset", up_offset, "a finite number");
        if (relu2 && !(GluActivation{alpha, limit, up_offset}.is_silu()))
            smoe::detail::fail("activation.relu2", "true with alpha, limit or up_offset set", "the defaults (relu(u)² has no gate to clamp)");
    }
};

struct SwiGLUConfig {
    std::int64_t hidden_size = 0;        // d <= limits::kMaxDimension
    std::int64_t intermediate_size = 0;  // f <= limits::kMaxDimension
    std::int64_t num_experts = 0;        // E <= limits::kMaxExperts
    Bf16Dot bf16_dot = Bf16Dot::automatic;
    Int8Dot int8_dot = Int8Dot::off;  // expert::QuantSwiGLU only
    // Where the packed records live (store/store_config.hpp): resident (the default), or, for weights
    // from a packed file, mapped or cached within a byte budget.
    store::StoreConfig store{};
    GluActivation activation{};
    // Llama 4 (families.md §2.3): the routing weight scales the expert's input, slot = f_e(w · x), not
    // w · f_e(x); silu is not linear, so no change of weights expresses it. Since W1 and W3 are linear,
    // the expert forms w · (W1 x) (then adds b1) in its gate/up store: no scaled copy of the rows.
    bool weight_on_input = false;

    void validate() const {
        // Bounded so that E·f·d, the size of every stacked weight and packed panel, fits int64.
        using smoe::detail::require_in_range;
        require_in_range("hidden_size", hidden_size, 1, limits::kMaxDimension, "smoe::limits::kMaxDimension");
        require_in_range("intermediate_size", intermediate_size, 1, limits::kMaxDimension, "smoe::limits::kMaxDimension");
        require_in_range("num_experts", num_experts, 1, limits::kMaxExperts, "smoe::limits::kMaxExperts");
        if (static_cast<int>(bf16_dot) < 0 || static_cast<int>(bf16_dot) > static_cast<int>(Bf16Dot::emulated))
            smoe::detail::fail("bf16_dot", static_cast<int>(bf16_dot), "a smoe::expert::Bf16Dot value");
        if (static_cast<int>(int8_dot) < 0 || static_cast<int>(int8_dot) > static_cast<int>(Int8Dot::portable))
            smoe::detail::fail("int8_dot", static_cast<int>(int8_dot), "a smoe::expert::Int8Dot value");
        activation.validate();
    }
    // Whether the gate/up store takes the general activation path (a clamp, alpha, offset, biases or an
    // input weight), rather than plain silu(g) · u.
    bool plain_activation() const { return activation.is_silu() && !weight_on_input; }
};

// Optional fp32 biases of the SwiGLU experts (GPT-OSS: gate_up_proj_bias, down_proj_bias):
// g = W1 x + b1, u = W3 x + b3, out = W2 h + b2, the routing weight then multiplying out, b2 included
// (HF GptOssExperts: `next_states * routing_weights`). Empty views: no bias. Biases are small: a loader
// de-interleaves GPT-OSS's [E, 2f] gate_up bias (even entries gate) into b1 and b3.
struct GluBiases {
    MatrixView<float const> b1;  // gate [E, f]
    MatrixView<float const> b3;  // up   [E, f]
    MatrixView<float const> b2;  // down [E, d]

    bool any() const { return b1.data != nullptr || b3.data != nullptr || b2.data != nullptr; }
    void validate(SwiGLUConfig const& c) const {
        auto check = [&](MatrixView<float const> v, char const* name, std::int64_t n) {
            if (v.data == nullptr) return;
            smoe::detail::check_view(v, name, c.num_experts, n);
            for (std::int64_t e = 0; e < v.rows; ++e)
                for (std::int64_t o = 0; o < v.cols; ++o)
                    if (!std::isfinite(v(e, o)))
                        smoe::detail::fail(name, smoe::detail::to_text(v(e, o)) + " at expert " + std::to_string(e) + ", unit " + std::to_string(o),
                                           "finite biases");
        };
        check(b1, "bias.b1", c.intermediate_size);
        check(b3, "bias.b3", c.intermediate_size);
        check(b2, "bias.b2", c.hidden_size);
    }
};

namespace detail {

// Per-output-channel scales of int8 weights; empty for the other formats.
struct NoScales {};
struct ChannelScales {
    MatrixView<float const> s1;  // [E, f] gate
    MatrixView<float const> s3;  // [E, f] up
    MatrixView<float const> s2;  // [E, d] down
};

}  // namespace detail

template <class W>
struct SwiGLUWeights : std::conditional_t<std::is_same_v<W, std::int8_t>, detail::ChannelScales, detail::NoScales> {
    StackedView<W const> w1;  // gate [E, f, d]
    StackedView<W const> w3;  // up   [E, f, d]
    StackedView<W const> w2;  // down [E, d, f]
    // Instead of the views: a layer of a packed expert file (store/packed_file.hpp), already packed.
    store::PackedSource packed{};
    GluBiases bias{};          // optional fp32 biases

    static constexpr bool has_scales = std::is_same_v<W, std::int8_t>;

    // Separate dense tensors, as Mixtral's files hold them once stacked (fp32 and bf16).
    static SwiGLUWeights dense(W const* w1, W const* w3, W const* w2, SwiGLUConfig const& c)
        requires(!has_scales)
    {
        // No locals for E, f, d here: nvcc reports them as unused (#177) in this requires-constrained member.
        SwiGLUWeights w;
        w.w1 = {w1, c.num_experts, c.intermediate_size, c.hidden_size};
        w.w3 = {w3, c.num_experts, c.intermediate_size, c.hidden_size};
        w.w2 = {w2, c.num_experts, c.hidden_size, c.intermediate_size};
        return w;
    }
    // A fused gate_up [E, 2f, d] with gate rows first (HF gate_up_proj, Megatron linear_fc1) and down [E, d, f].
    static SwiGLUWeights fused(W const* gate_up, W const* down, SwiGLUConfig const& c)
        requires(!has_scales)
    {
        auto const E = c.num_experts, f = c.intermediate_size, d = c.hidden_size;
        SwiGLUWeights w;
        w.w1 = {gate_up, E, f, d, d, 2 * f * d};
        w.w3 = {gate_up + f * d, E, f, d, d, 2 * f * d};
        w.w2 = {down, E, d, f};
        return w;
    }

    // A fused gate_up [E, 2f, d] with gate and up rows interleaved (row 2j gate unit j, row 2j + 1 up unit
    // j: GPT-OSS's gate_up_proj once transposed to [out, in]) and down [E, d, f].
    static SwiGLUWeights interleaved(W const* gate_up, W const* down, SwiGLUConfig const& c)
        requires(!has_scales)
    {
        auto const E = c.num_experts, f = c.intermediate_size, d = c.hidden_size;
        SwiGLUWeights w;
        w.w1 = {gate_up, E, f, d, 2 * d, 2 * f * d};
        w.w3 = {gate_up + d, E, f, d, 2 * d, 2 * f * d};
        w.w2 = {down, E, d, f};
        return w;
    }

    // int8: q tensors as above plus scales s1, s3 [E, f] and s2 [E, d].
    static SwiGLUWeights dense(W const* w1, float const* s1, W const* w3, float const* s3, W const* w2,
                               float const* s2, SwiGLUConfig const& c)
        requires has_scales
    {
        auto const E = c.num_experts, f = c.intermediate_size, d = c.hidden_size;
        SwiGLUWeights w;
        w.w1 = {w1, E, f, d};
        w.w3 = {w3, E, f, d};
        w.w2 = {w2, E, d, f};
        w.s1 = {s1, E, f};
        w.s3 = {s3, E, f};
        w.s2 = {s2, E, d};
        return w;
    }
    // int8 fused: gate_up [E, 2f, d] with its scales [E, 2f] (gate first), down [E, d, f] with [E, d].
    static SwiGLUWeights fused(W const* gate_up, float const* s_gate_up, W const* down, float const* s_down,
                               SwiGLUConfig const& c)
        requires has_scales
    {
        auto const E = c.num_experts, f = c.intermediate_size, d = c.hidden_size;
        SwiGLUWeights w;
        w.w1 = {gate_up, E, f, d, d, 2 * f * d};
        w.w3 = {gate_up + f * d, E, f, d, d, 2 * f * d};
        w.w2 = {down, E, d, f};
        w.s1 = {s_gate_up, E, f, 2 * f};
        w.s3 = {s_gate_up + f, E, f, 2 * f};
        w.s2 = {s_down, E, d};
        return w;
    }

    void validate(SwiGLUConfig const& c) const {
        if (packed) return;  // the expert holds the file's layer to the config instead
        if (!c.activation.gated()) {
            if (w1.data != nullptr || bias.b1.data != nullptr)
                smoe::detail::fail(w1.data ? "w1" : "bias.b1", "given", "none for non-gated experts (activation.relu2: h = relu(W3 x)²)");
        } else {
            smoe::detail::check_stacked(w1, "w1", c.num_experts, c.intermediate_size, c.hidden_size);
        }
        smoe::detail::check_stacked(w3, "w3", c.num_experts, c.intermediate_size, c.hidden_size);
        smoe::detail::check_stacked(w2, "w2", c.num_experts, c.hidden_size, c.intermediate_size);
        bias.validate(c);
        if constexpr (has_scales) {
            if (c.activation.gated()) smoe::detail::check_view(this->s1, "s1", c.num_experts, c.intermediate_size);
            smoe::detail::check_view(this->s3, "s3", c.num_experts, c.intermediate_size);
            smoe::detail::check_view(this->s2, "s2", c.num_experts, c.hidden_size);
            if (c.activation.gated()) check_scales(this->s1, "s1");
            check_scales(this->s3, "s3");
            check_scales(this->s2, "s2");
        }
    }

private:
    static void check_scales(MatrixView<float const> s, char const* name) {
        for (std::int64_t e = 0; e < s.rows; ++e)
            for (std::int64_t o = 0; o < s.cols; ++o)
                if (!std::isfinite(s(e, o)))
                    smoe::detail::fail(name, smoe::detail::to_text(s(e, o)) + " at expert " + std::to_string(e) + ", channel " + std::to_string(o),
                                       "finite scales");
    }
};

}  // namespace smoe::inline v0::expert
