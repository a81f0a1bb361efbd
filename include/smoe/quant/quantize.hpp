#pragma once
// Quantise at load (formats.md §1.6, experts.md §9): an fp32 matrix W [R, C] into a Matrix of the
// format an engine asks for. int4 is smoe's symmetric group quantiser, bit for bit:
//   amax = max |W| over the group, s = amax / 7.5 (fp32), q = clamp(rint(W / s), -8, 7) (fp32 division,
//   ties to even), u = q + 8, z = 8; an all-zero group stores s = 0, u = 8.
// ternary is BitNet b1.58's absmean (research.md §7.3): per scale unit U (matrix, row or group),
//   γ = mean |W| over U (summed in fp64, divided, rounded once to fp32), s = max(γ, 1e-5),
//   t = clamp(rint(W · fl32(1 / s)), -1, 1) (the product in fp32, ties to even), u = t + 1.
// int8-channel is core/format.hpp's quantiser; bf16 rounds to nearest even; f32 copies. FP8 and MXFP4
// come from checkpoints only (unpack.hpp): smoe has no quantiser of its own for them.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>

#include "smoe/core/bf16.hpp"
#include "smoe/core/error.hpp"
#include "smoe/core/format.hpp"
#include "smoe/core/view.hpp"
#include "smoe/quant/matrix.hpp"

namespace smoe::inline v0::quant {

inline Matrix quantize(MatrixView<float const> src, Format const& fmt) {
    smoe::detail::check_view(src, "src", -1, -1);
    std::int64_t const R = src.rows, C = src.cols;
    fmt.check("format", R, C);
    for (std::int64_t o = 0; o < R; ++o)
        for (std::int64_t i = 0; i < C; ++i)
            if (!std::isfinite(src(o, i)))
                smoe::detail::fail("src", smoe::detail::to_text(src(o, i)) + " at row " + std::to_string(o) + ", column " + std::to_string(i),
                                   "finite weights");
    Matrix m;
    m.format = fmt;
    m.rows = R;
    m.cols = C;
    auto const n = static_cast<std::size_t>(R * C);
    switch (fmt.kind) {
        case Kind::f32:
        case Kind::bf16:
            m.values.resize(n);
            for (std::int64_t o = 0; o < R; ++o)
                for (std::int64_t i = 0; i < C; ++i) {
                    float const v = src(o, i);
                    m.values[static_cast<std::size_t>(o * C + i)] = fmt.kind == Kind::bf16 ? to_float(to_bf16(v)) : v;
                }
            return m;
        case Kind::int8_channel: {
            std::vector<std::int8_t> q(n);
            m.scales.resize(static_cast<std::size_t>(R));
            quantize_int8_per_channel(src, MatrixView<std::int8_t>(q.data(), R, C), m.scales);
            m.codes.assign(reinterpret_cast<std::uint8_t const*>(q.data()), reinterpret_cast<std::uint8_t const*>(q.data()) + n);
            return m;
        }
        case Kind::int4: {
            if (!fmt.symmetric || fmt.act_order)
                smoe::detail::fail("format", name(fmt, C), "a symmetric int4 format without act order (smoe's quantiser, formats.md §1.6)");
            std::int64_t const g = fmt.group_cols(C), G = C / g;
            m.codes.resize(n);
            m.zeros.assign(static_cast<std::size_t>(R * G), 8);
            m.scales.resize(static_cast<std::size_t>(R * G));
            for (std::int64_t o = 0; o < R; ++o)
                for (std::int64_t k = 0; k < G; ++k) {
                    float amax = 0.0f;
                    for (std::int64_t i = k * g; i < (k + 1) * g; ++i) amax = std::max(amax, std::fabs(src(o, i)));
                    float const s = amax / 7.5f;
                    m.scales[static_cast<std::size_t>(o * G + k)] = s;
                    for (std::int64_t i = k * g; i < (k + 1) * g; ++i) {
                        float const q = s == 0.0f ? 0.0f : std::clamp(std::nearbyint(src(o, i) / s), -8.0f, 7.0f);
                        m.codes[static_cast<std::size_t>(o * C + i)] = static_cast<std::uint8_t>(static_cast<int>(q) + 8);
                    }
                }
            return m;
        }
        case Kind::ternary: {
            bool const tensor = fmt.ternary_tensor();
            std::int64_t const g = fmt.group_cols(C), G = fmt.groups(C);
            std::int64_t const units = tensor ? 1 : R * G;
            m.codes.resize(n);
            m.scales.resize(static_cast<std::size_t>(units));
            // Unit u covers rows [r0, r1) and columns [c0, c1).
            auto const each_unit = [&](auto&& f) {
                if (tensor) return f(0, 0, R, 0, C);
                for (std::int64_t o = 0; o < R; ++o)
                    for (std::int64_t k = 0; k < G; ++k) f(o * G + k, o, o + 1, k * g, (k + 1) * g);
            };
            each_unit([&](std::int64_t u, std::int64_t r0, std::int64_t r1, std::int64_t c0, std::int64_t c1) {
                double sum = 0.0;
                for (std::int64_t o = r0; o < r1; ++o)
                    for (std::int64_t i = c0; i < c1; ++i) sum += std::fabs(double(src(o, i)));
                std::int64_t const count = (r1 - r0) * (c1 - c0);
                float const gamma = count > 0 ? static_cast<float>(sum / double(count)) : 0.0f;
                float const s = std::max(gamma, 1e-5f), inv = 1.0f / s;
                m.scales[static_cast<std::size_t>(u)] = s;
                for (std::int64_t o = r0; o < r1; ++o)
                    for (std::int64_t i = c0; i < c1; ++i) {
                        float const t = std::clamp(std::nearbyint(src(o, i) * inv), -1.0f, 1.0f);
                        m.codes[static_cast<std::size_t>(o * C + i)] = static_cast<std::uint8_t>(static_cast<int>(t) + 1);
                    }
            });
            return m;
        }
        default:
            smoe::detail::fail("format", name(fmt, C), "f32, bf16, int8-channel, int4 or ternary (FP8 and MXFP4 weights load from checkpoints)");
    }
}

}  // namespace smoe::inline v0::quant
