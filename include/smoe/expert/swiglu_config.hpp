#pragma once
// Shape and weight views of the SwiGLU expert (experts.md §3): W1, W3 [E, f, d] (gate, up), W2 [E, d, f],
// stored in one of the weight formats of core/format.hpp (float, smoe::bf16, std::int8_t). int8
// weights carry one fp32 scale per output channel: s1, s3 [E, f], s2 [E, d] (W = s · q).

#include <cmath>
#include <cstdint>
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
// integer dot products (AVX512-VNNI where the CPU has it, else AVX2, else the portable kernel: the
// same bits); `avx2` forces the AVX2 kernel (an error on a CPU without AVX2 and FMA) and `portable` the
// scalar model (tests, and checking one machine's results on another).
enum class Int8Dot { off, on, avx2, portable };

inline char const* to_string(Int8Dot m) {
    return m == Int8Dot::off ? "off" : m == Int8Dot::on ? "on" : m == Int8Dot::avx2 ? "avx2" : "portable";
}
inline std::optional<Int8Dot> parse_int8_dot(std::string_view s) {
    for (Int8Dot m : {Int8Dot::off, Int8Dot::on, Int8Dot::avx2, Int8Dot::portable})
        if (s == to_string(m)) return m;
    return std::nullopt;
}

struct SwiGLUConfig {
    std::int64_t hidden_size = 0;        // d <= limits::kMaxDimension
    std::int64_t intermediate_size = 0;  // f <= limits::kMaxDimension
    std::int64_t num_experts = 0;        // E <= limits::kMaxExperts
    Bf16Dot bf16_dot = Bf16Dot::automatic;
    Int8Dot int8_dot = Int8Dot::off;  // expert::QuantSwiGLU only
    // Where the packed records live (store/store_config.hpp): resident (the default), or, for weights
    // from a packed file, mapped or cached within a byte budget.
    store::StoreConfig store{};

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
        smoe::detail::check_stacked(w1, "w1", c.num_experts, c.intermediate_size, c.hidden_size);
        smoe::detail::check_stacked(w3, "w3", c.num_experts, c.intermediate_size, c.hidden_size);
        smoe::detail::check_stacked(w2, "w2", c.num_experts, c.hidden_size, c.intermediate_size);
        if constexpr (has_scales) {
            smoe::detail::check_view(this->s1, "s1", c.num_experts, c.intermediate_size);
            smoe::detail::check_view(this->s3, "s3", c.num_experts, c.intermediate_size);
            smoe::detail::check_view(this->s2, "s2", c.num_experts, c.hidden_size);
            check_scales(this->s1, "s1");
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
