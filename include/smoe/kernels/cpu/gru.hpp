#pragma once
// The element-wise half of a GRU (or Elman RNN) cell over T rows, after the GEMMs: torch.nn.GRUCell's
// arithmetic in fp32 (research.md §2):
//   r = σ(gi_r + gh_r + b_r)   z = σ(gi_z + gh_z + b_z)   n = tanh(gi_n + b_in + r ⊙ (gh_n + b_hn))
//   h' = (1 − z) ⊙ n + z ⊙ h                 rnn cell:  h' = tanh(gi_n + b_in + gh_n + b_hn)
// with b_r = b_ir + b_hr and b_z = b_iz + b_hz. Rows are padded to kGruPad floats, so every lane goes
// through the same SIMD code and no scalar tail rounds differently; the pad columns' results are never
// read (the next GEMM reads p columns). gh == nullptr means h = 0 (the first MoE layer): the W_h· terms vanish, the biases stay.

#include <cstdint>

#include "smoe/detail/xsimd.hpp"

namespace smoe::inline v0::kernels::cpu {

inline constexpr std::int64_t kGruPad = 16;  // the widest batch (AVX-512)

struct GruRows {
    std::int64_t rows = 0, width = 0, ld = 0;  // width: padded to kGruPad; ld: the row stride of every buffer
    float const *gi_r = nullptr, *gi_z = nullptr, *gi_n = nullptr;  // W_i· u
    float const *gh_r = nullptr, *gh_z = nullptr, *gh_n = nullptr;  // W_h· h, or nullptr for h = 0
    float const *b_r = nullptr, *b_z = nullptr, *b_in = nullptr, *b_hn = nullptr;  // [width]
    float const* h = nullptr;  // previous state, nullptr for 0
    float* h_out = nullptr;    // may be h
};

template <class Arch>
void gru_rows(Arch, GruRows const& g) {
    using batch = xsimd::batch<float, Arch>;
    static_assert(kGruPad % batch::size == 0);
    batch const one(1.0f), zero(0.0f);
    auto sigmoid = [&](batch v) { return one / (one + xsimd::exp(-v)); };
    auto load = [](float const* p, std::int64_t i) { return p ? batch::load_unaligned(p + i) : batch(0.0f); };
    for (std::int64_t t = 0; t < g.rows; ++t) {
        std::int64_t const o = t * g.ld;
        for (std::int64_t i = 0; i < g.width; i += batch::size) {
            batch const hn = (g.gh_n ? batch::load_unaligned(g.gh_n + o + i) : zero) + batch::load_unaligned(g.b_hn + i);
            batch const r = sigmoid(batch::load_unaligned(g.gi_r + o + i) + load(g.gh_r, o + i) + batch::load_unaligned(g.b_r + i));
            batch const z = sigmoid(batch::load_unaligned(g.gi_z + o + i) + load(g.gh_z, o + i) + batch::load_unaligned(g.b_z + i));
            batch const n = xsimd::tanh(batch::load_unaligned(g.gi_n + o + i) + batch::load_unaligned(g.b_in + i) + r * hn);
            batch const h = load(g.h, o + i);
            ((one - z) * n + z * h).store_unaligned(g.h_out + o + i);
        }
    }
}

template <class Arch>
void rnn_rows(Arch, GruRows const& g) {
    using batch = xsimd::batch<float, Arch>;
    static_assert(kGruPad % batch::size == 0);
    for (std::int64_t t = 0; t < g.rows; ++t) {
        std::int64_t const o = t * g.ld;
        for (std::int64_t i = 0; i < g.width; i += batch::size) {
            batch const hn = g.gh_n ? batch::load_unaligned(g.gh_n + o + i) : batch(0.0f);
            xsimd::tanh(batch::load_unaligned(g.gi_n + o + i) + batch::load_unaligned(g.b_in + i) + hn + batch::load_unaligned(g.b_hn + i))
                .store_unaligned(g.h_out + o + i);
        }
    }
}

}  // namespace smoe::inline v0::kernels::cpu
