#pragma once
// h = silu(g) ⊙ u with silu(g) = g / (1 + exp(-g)) in fp32 (experts.md §3). For g below about -88,
// exp(-g) overflows to +inf and g / inf gives -0, the spec's value; no clamp is needed.
//
// The clamped form (experts.md §5, expert/swiglu_config.hpp GluActivation), for GPT-OSS and DeepSeek-V4:
//   g' = min(g, λ), u' = clamp(u, −λ, λ), h = g' / (1 + exp(−α g')) · (u' + c)
// The limit is the first operand of min/max: x86's minps returns its second operand when either is NaN,
// so a NaN g or u stays NaN (torch.clamp's behaviour), never becomes λ.

#include <cstdint>

#include "smoe/detail/xsimd.hpp"

#include "smoe/kernels/cpu/simd_map.hpp"

namespace smoe::inline v0::kernels::cpu {

template <class Arch>
void silu_mul(Arch arch, float const* g, float const* u, float* h, std::int64_t n) {
    using batch = xsimd::batch<float, Arch>;
    batch const one(1.0f);
    simd_map2(arch, g, u, h, n, [&](batch gv, batch uv) { return gv / (one + xsimd::exp(-gv)) * uv; });
}

// One batch of the clamped form; `B` is any xsimd batch of floats.
template <class B>
inline B clamped_glu(B g, B u, float alpha, float limit, float up_offset) {
    B const lim(limit);
    g = xsimd::min(lim, g);
    u = xsimd::max(-lim, xsimd::min(lim, u));
    return g / (B(1.0f) + xsimd::exp(B(-alpha) * g)) * (u + B(up_offset));
}

template <class Arch>
void clamped_glu_mul(Arch arch, float const* g, float const* u, float* h, std::int64_t n, float alpha, float limit, float up_offset) {
    using batch = xsimd::batch<float, Arch>;
    simd_map2(arch, g, u, h, n, [&](batch gv, batch uv) { return clamped_glu(gv, uv, alpha, limit, up_offset); });
}

}  // namespace smoe::inline v0::kernels::cpu
