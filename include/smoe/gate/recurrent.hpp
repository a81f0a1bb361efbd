#pragma once
// smoe::gate::Recurrent: RMoE's layerwise recurrent router front end (research.md §2). Instead of
// ℓ = G · x, the l-th MoE layer computes
//
//   u_l = P_l · x_l                  P_l [p, d]  (`weight1`, per layer)
//   h_l = cell(u_l, h_(l−1))         one GRU cell for the whole model; h_(−1) = 0 at the first MoE layer
//   ℓ_l = Q_l · h_l                  Q_l [E, p]  (`weight2`, per layer)
//
// and any router selects on ℓ_l; the experts still see x_l. The cell is torch.nn.GRUCell's arithmetic
// (kernels/cpu/gru.hpp, six biases, b_hn inside the reset product; §10.4), or an Elman cell "rnn":
// h' = tanh(W_in u + b_in + W_hn h + b_hn). At the first MoE layer h = 0: the W_h· terms vanish, the
// biases still enter.
//
// Paper: Zihan Qiu, Zeyu Huang, Shuang Cheng, Yizhi Zhou, Zili Wang, Ivan Titov, Jie Fu, "Layerwise
// Recurrent Router for Mixture-of-Experts", ICLR 2025 (arXiv 2408.06793); code qiuzh20/RMoE
// (llama_moe_rnn/rnn.py CustomGRUCell, llama_moe_modeling.py).
//
// Ownership: RecurrentCell (the GRU weights, model level) is shared by every RMoE layer; P_l and Q_l
// belong to the layer; RouterState (h [T, p] fp32, one row per token of the call) belongs to the
// engine, which resets it before the first MoE layer of each forward pass and passes the same object
// to every MoE layer in order (a dense layer leaves it alone). It never persists across calls: the
// recurrence runs over layers, not time, so decoding needs no cache. An engine that reorders or drops
// tokens between layers reorders the state rows the same way (h()).
//
// Cost per token and layer: p·d + 6p² + E·p multiply-adds (gemm_nt) instead of E·d, plus 3p
// transcendental functions (SIMD). d = 2048, E = 64, p = 256: about 7× the linear gate, under 15 % of
// one expert of f = 1024.
//
// Worked example (research.md §2): d = 3, p = 2, E = 4, the GRU weights of the spec, two layers,
// x0 = [1, −0.5, 0.25] at layer 0: u = [−0.75, −1], h = [0.321915, −0.11018], ℓ = [−0.266825,
// 0.0507776, −0.160958, 0.432095] (top-2 renormalised: [3, 1] 0.594191, 0.405809); at layer 1 with
// input [−0.5, 0.5, 0.5]: h = [0.197374, −0.122915], top-2 [2, 0]. From a zero state instead, layer 1
// would select [1, 3].

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "smoe/core/error.hpp"
#include "smoe/core/limits.hpp"
#include "smoe/core/view.hpp"
#include "smoe/core/workspace.hpp"
#include "smoe/kernels/cpu/gemm_nt.hpp"
#include "smoe/kernels/cpu/gru.hpp"

namespace smoe::inline v0::gate {

enum class CellKind { gru, rnn };

struct RecurrentCellConfig {
    std::int64_t hidden_size = 0;  // p (`rnn_hidden_size`): no default, it comes with the checkpoint
    CellKind cell = CellKind::gru;
};

// The code's names without the prefix; [p, p] and [p]. The rnn cell uses weight_in, weight_hn,
// bias_in and bias_hn only (the others stay empty).
struct RecurrentCellWeights {
    MatrixView<float const> weight_ir, weight_hr, weight_iz, weight_hz, weight_in, weight_hn;
    std::span<float const> bias_ir, bias_hr, bias_iz, bias_hz, bias_in, bias_hn;
};

// The model-level cell: views of the caller's weights (they must outlive it) and the summed, padded
// biases (a copy of 4p floats).
class RecurrentCell {
public:
    RecurrentCell(RecurrentCellConfig const& cfg, RecurrentCellWeights const& w) : cfg_(cfg), w_(w) {
        detail::require_in_range("rnn_hidden_size", cfg.hidden_size, 1, limits::kMaxDimension, "smoe::limits::kMaxDimension");
        std::int64_t const p = cfg.hidden_size;
        bool const gru = cfg.cell == CellKind::gru;
        auto matrix = [&](MatrixView<float const> m, char const* name, bool used) {
            if (used) {
                detail::check_view(m, name, p, p);
                for (std::int64_t i = 0; i < p; ++i)
                    for (std::int64_t j = 0; j < p; ++j)
                        if (!std::isfinite(m(i, j)))
                            detail::fail(name, detail::to_text(m(i, j)) + " at [" + std::to_string(i) + ", " + std::to_string(j) + "]", "finite weights");
            } else if (m.data != nullptr) {
                detail::fail(name, "a [" + std::to_string(m.rows) + ", " + std::to_string(m.cols) + "] view", "no such weight in an rnn cell");
            }
        };
        auto vec = [&](std::span<float const> b, char const* name, bool used) {
            if (used)
                detail::check_vector(b, p, name, "rnn_hidden_size", "unit");
            else if (!b.empty())
                detail::fail(name, "length " + std::to_string(b.size()), "no such bias in an rnn cell");
        };
        matrix(w.weight_ir, "weight_ir", gru), matrix(w.weight_hr, "weight_hr", gru), matrix(w.weight_iz, "weight_iz", gru);
        matrix(w.weight_hz, "weight_hz", gru), matrix(w.weight_in, "weight_in", true), matrix(w.weight_hn, "weight_hn", true);
        vec(w.bias_ir, "bias_ir", gru), vec(w.bias_hr, "bias_hr", gru), vec(w.bias_iz, "bias_iz", gru);
        vec(w.bias_hz, "bias_hz", gru), vec(w.bias_in, "bias_in", true), vec(w.bias_hn, "bias_hn", true);
        std::int64_t const pp = padded();
        auto padded_copy = [&](std::span<float const> a, std::span<float const> b) {
            std::vector<float> v(static_cast<std::size_t>(pp), 0.0f);
            for (std::size_t i = 0; i < a.size(); ++i) v[i] = a[i] + (b.empty() ? 0.0f : b[i]);
            return v;
        };
        b_r_ = padded_copy(w.bias_ir, w.bias_hr);
        b_z_ = padded_copy(w.bias_iz, w.bias_hz);
        b_in_ = padded_copy(w.bias_in, {});
        b_hn_ = padded_copy(w.bias_hn, {});
    }

    RecurrentCellConfig const& config() const { return cfg_; }
    RecurrentCellWeights const& weights() const { return w_; }
    std::int64_t hidden_size() const { return cfg_.hidden_size; }
    // The row stride of the state and of the cell's buffers: p rounded up to kernels::cpu::kGruPad.
    std::int64_t padded() const { return (cfg_.hidden_size + kernels::cpu::kGruPad - 1) / kernels::cpu::kGruPad * kernels::cpu::kGruPad; }

    std::size_t workspace_size(std::int64_t max_rows) const {
        WorkspaceSize size;
        size.take<float>(static_cast<std::size_t>(6 * max_rows * padded()));
        return size.bytes();
    }

    // h [T, p] (row stride padded()) ← cell(u, h); u [T, p]. zero_state: h is 0 (its contents are not read).
    template <class Arch>
    void step(Arch arch, MatrixView<float const> u, MatrixView<float> h, bool zero_state, Workspace& ws) const {
        std::int64_t const T = u.rows, pp = padded();
        std::span<float> const buf = ws.take<float>(static_cast<std::size_t>(6 * T * pp));
        auto view = [&](int i) { return MatrixView<float>(buf.data() + i * T * pp, T, cfg_.hidden_size, pp); };
        kernels::cpu::GruRows g{.rows = T, .width = pp, .ld = pp};
        MatrixView<float const> const hc = h;
        bool const gru = cfg_.cell == CellKind::gru;
        kernels::cpu::gemm_nt(arch, u, w_.weight_in, view(2));
        g.gi_n = view(2).data;
        if (!zero_state) {
            kernels::cpu::gemm_nt(arch, hc, w_.weight_hn, view(5));
            g.gh_n = view(5).data;
        }
        g.b_in = b_in_.data(), g.b_hn = b_hn_.data(), g.h_out = h.data;
        if (!gru) return kernels::cpu::rnn_rows(arch, g);
        kernels::cpu::gemm_nt(arch, u, w_.weight_ir, view(0));
        kernels::cpu::gemm_nt(arch, u, w_.weight_iz, view(1));
        g.gi_r = view(0).data, g.gi_z = view(1).data;
        if (!zero_state) {
            kernels::cpu::gemm_nt(arch, hc, w_.weight_hr, view(3));
            kernels::cpu::gemm_nt(arch, hc, w_.weight_hz, view(4));
            g.gh_r = view(3).data, g.gh_z = view(4).data, g.h = h.data;
        }
        g.b_r = b_r_.data(), g.b_z = b_z_.data();
        kernels::cpu::gru_rows(arch, g);
    }

private:
    RecurrentCellConfig cfg_;
    RecurrentCellWeights w_;
    std::vector<float> b_r_, b_z_, b_in_, b_hn_;
};

// h [T, p] of one forward pass, owned by the engine: sized once for max_tokens, reset before the first
// MoE layer, passed to every MoE layer in model order.
class RouterState {
public:
    RouterState(std::int64_t max_tokens, RecurrentCell const& cell)
        : width_(cell.hidden_size()), ld_(cell.padded()), max_tokens_(max_tokens) {
        detail::require_in_range("max_tokens", max_tokens, 0, limits::kMaxTokens, "smoe::limits::kMaxTokens");
        h_.assign(static_cast<std::size_t>(max_tokens * ld_), 0.0f);
    }

    // A new forward pass of T tokens: h = 0 for every row (nothing is written; the cell skips W_h·h).
    void reset(std::int64_t num_tokens) {
        detail::require_in_range("num_tokens", num_tokens, 0, max_tokens_, "the state's max_tokens");
        rows_ = num_tokens;
        zero_ = true;
    }
    std::int64_t rows() const { return rows_; }
    std::int64_t width() const { return width_; }
    bool is_zero() const { return zero_; }
    // h [rows, p]; zeros while is_zero(). The mutable view (to reorder rows with the tokens) makes the
    // state explicit.
    MatrixView<float const> h() const {
        if (zero_) std::fill(h_.begin(), h_.begin() + rows_ * ld_, 0.0f);
        return {h_.data(), rows_, width_, ld_};
    }
    MatrixView<float> h() {
        std::as_const(*this).h();
        zero_ = false;
        return {h_.data(), rows_, width_, ld_};
    }
    // The rows the gate overwrites with the new state (no zero fill first).
    MatrixView<float> overwrite() {
        zero_ = false;
        return {h_.data(), rows_, width_, ld_};
    }

private:
    std::int64_t width_, ld_, max_tokens_, rows_ = 0;
    bool zero_ = true;
    mutable std::vector<float> h_;
};

// One MoE layer's front end: P_l, Q_l and a reference to the model's cell.
class Recurrent {
public:
    struct Weights {
        MatrixView<float const> weight1;  // P_l [p, d]
        MatrixView<float const> weight2;  // Q_l [E, p]
    };

    Recurrent(RecurrentCell const& cell, std::int64_t num_logits, std::int64_t hidden_size, Weights const& w)
        : cell_(&cell), w_(w) {
        detail::check_view(w.weight1, "weight1", cell.hidden_size(), hidden_size);
        detail::check_view(w.weight2, "weight2", num_logits, cell.hidden_size());
    }

    RecurrentCell const& cell() const { return *cell_; }
    Weights const& weights() const { return w_; }
    std::int64_t num_logits() const { return w_.weight2.rows; }

    std::size_t workspace_size(std::int64_t max_tokens) const {
        WorkspaceSize size;
        size.take<float>(static_cast<std::size_t>(max_tokens * cell_->padded()));
        size.take_bytes(cell_->workspace_size(max_tokens));
        return size.bytes();
    }

    // logits [T, E] from x [T, d] and the state of the previous MoE layer, which becomes this layer's.
    template <class Arch>
    void logits(Arch arch, MatrixView<float const> x, RouterState& state, MatrixView<float> logits, Workspace& ws) const {
        std::int64_t const T = x.rows, p = cell_->hidden_size();
        if (state.rows() != T || state.width() != p)
            detail::fail("state", "[" + std::to_string(state.rows()) + ", " + std::to_string(state.width()) + "]",
                         "[" + std::to_string(T) + ", " + std::to_string(p) + "]: one row of rnn_hidden_size per token (reset(T) before the first MoE layer)");
        bool const zero = state.is_zero();
        if (!zero) {
            auto const h = std::as_const(state).h();
            for (std::int64_t t = 0; t < T; ++t)
                for (std::int64_t i = 0; i < p; ++i)
                    if (!std::isfinite(h(t, i)))
                        detail::fail("state", detail::to_text(h(t, i)) + " at token " + std::to_string(t) + ", unit " + std::to_string(i), "a finite state");
        }
        MatrixView<float> const u(ws.take<float>(static_cast<std::size_t>(T * cell_->padded())).data(), T, p, cell_->padded());
        kernels::cpu::gemm_nt(arch, x, w_.weight1, u);
        Workspace cell_ws = ws.take_bytes(cell_->workspace_size(T));
        MatrixView<float> const h = state.overwrite();
        cell_->step(arch, MatrixView<float const>(u), h, zero, cell_ws);
        kernels::cpu::gemm_nt(arch, MatrixView<float const>(h), w_.weight2, logits);
    }

private:
    RecurrentCell const* cell_;
    Weights w_;
};

}  // namespace smoe::inline v0::gate
