#pragma once
// Round-to-nearest FP8 (e4m3, block factors) and MXFP4 quantisers for the layer benchmark. smoe has no
// quantiser of its own for these formats (quant/quantize.hpp: they load from checkpoints), and the
// benchmark only needs weights of the right format and magnitude, so these are the simplest ones:
//   fp8    s = amax / 448 over each [bh, bw] block (fp32), code = e4m3 nearest to W / s (ties to even in
//          the normal range; subnormals rounded by rint); an all-zero block stores s = 0, codes 0.
//   mxfp4  per 32 columns of a row e = ceil(log2(amax / 6)) (so nothing clips), factor 2^e, code = the
//          E2M1 value nearest to W / 2^e; an all-zero block stores 2^0 and codes 0.
// Everything else goes to quant::quantize.

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>

#include <smoe/quant/matrix.hpp>
#include <smoe/quant/quantize.hpp>

namespace smoe_bench {

// |v| <= 448 (the largest finite e4m3) to the nearest e4m3 code, sign in bit 7.
inline std::uint8_t float_to_e4m3(float v) {
    std::uint8_t const sign = std::signbit(v) ? 0x80 : 0;
    float const a = std::min(std::fabs(v), 448.0f);
    if (a < 0x1p-6f) return sign | static_cast<std::uint8_t>(std::nearbyint(a * 0x1p9f));  // subnormal; 8 = 2^-6
    std::uint32_t bits = std::bit_cast<std::uint32_t>(a);
    bits += 0x7FFFFu + ((bits >> 20) & 1u);  // round the mantissa to 3 bits, ties to even
    std::uint32_t const e = (bits >> 23) - 127 + 7, m = (bits >> 20) & 7u;
    return sign | static_cast<std::uint8_t>(std::min<std::uint32_t>(e << 3 | m, 0x7E));
}

// v to the nearest E2M1 code (|v| <= 6; larger saturates), sign in bit 3.
inline std::uint8_t float_to_e2m1(float v) {
    float const a = std::fabs(v);
    std::uint8_t const c = a < 0.25f ? 0 : a < 0.75f ? 1 : a < 1.25f ? 2 : a < 1.75f ? 3 : a < 2.5f ? 4 : a < 3.5f ? 5 : a < 5.0f ? 6 : 7;
    return static_cast<std::uint8_t>((std::signbit(v) && c ? 8 : 0) | c);
}

inline smoe::quant::Matrix rtn_quantize(smoe::MatrixView<float const> w, smoe::quant::Format const& fmt) {
    using smoe::quant::Kind;
    if (fmt.kind != Kind::fp8 && fmt.kind != Kind::mxfp4) return smoe::quant::quantize(w, fmt);
    std::int64_t const R = w.rows, C = w.cols, G = fmt.groups(C), g = fmt.group_cols(C);
    smoe::quant::Matrix m;
    m.format = fmt;
    m.rows = R;
    m.cols = C;
    m.codes.resize(static_cast<std::size_t>(R * C));
    m.scales.resize(static_cast<std::size_t>(fmt.scale_rows(R) * G));
    auto const code = [&](std::int64_t o, std::int64_t i) -> std::uint8_t& { return m.codes[static_cast<std::size_t>(o * C + i)]; };
    if (fmt.kind == Kind::mxfp4) {
        for (std::int64_t o = 0; o < R; ++o)
            for (std::int64_t k = 0; k < G; ++k) {
                float amax = 0.0f;
                for (std::int64_t i = k * g; i < (k + 1) * g; ++i) amax = std::max(amax, std::fabs(w(o, i)));
                int const e = amax > 0.0f ? std::clamp(int(std::ceil(std::log2(double(amax) / 6.0))), -127, 127) : 0;
                float const s = std::ldexp(1.0f, e), inv = std::ldexp(1.0f, -e);
                m.scales[static_cast<std::size_t>(o * G + k)] = s;
                for (std::int64_t i = k * g; i < (k + 1) * g; ++i) code(o, i) = float_to_e2m1(w(o, i) * inv);
            }
        return m;
    }
    std::int64_t const bh = fmt.block_rows > 0 ? fmt.block_rows : R;
    for (std::int64_t r0 = 0; r0 < R; r0 += bh)
        for (std::int64_t k = 0; k < G; ++k) {
            std::int64_t const r1 = std::min(R, r0 + bh), i0 = k * g, i1 = std::min(C, i0 + g);
            float amax = 0.0f;
            for (std::int64_t o = r0; o < r1; ++o)
                for (std::int64_t i = i0; i < i1; ++i) amax = std::max(amax, std::fabs(w(o, i)));
            float const s = amax / 448.0f;
            m.scales[static_cast<std::size_t>(r0 / bh * G + k)] = s;
            for (std::int64_t o = r0; o < r1; ++o)
                for (std::int64_t i = i0; i < i1; ++i) code(o, i) = s == 0.0f ? 0 : float_to_e4m3(w(o, i) / s);
        }
    return m;
}

}  // namespace smoe_bench
