#pragma once
// smoe::store::PreGate: the built-in expert predictor (pre-gating, Read-ME, Cai et al. 2024; the same
// idea as ExpertFlow's routing-path prediction): the next MoE layer's router projection applied to the
// current layer's input. Hidden states change little from one layer to the next (a residual stream),
// so the next layer's top-k on this layer's input names most of the experts it will use, one layer
// ahead, in time for the store's I/O thread to read them while this layer computes:
//
//   smoe::store::PreGate pre(next_gate, next_bias, /*top_k=*/8, max_tokens);
//   pre.prefetch(next_layer.experts().store(), x);   // before running this layer on x
//   this_layer.forward(x, y);                        // the next layer's misses are fewer
//
// The prediction is the union over the tokens of each token's top_k experts by logit (plus the
// selection bias, when the next router has one); the store measures its accuracy (StoreStats::
// prediction_accuracy: the fraction of the next call's experts that were predicted). Scratch is sized
// once for max_tokens; predict and prefetch allocate nothing.

#include <cstddef>
#include <cstdint>
#include <limits>
#include <span>
#include <string>
#include <vector>

#include "smoe/core/error.hpp"
#include "smoe/core/view.hpp"
#include "smoe/detail/xsimd.hpp"
#include "smoe/kernels/cpu/gemm_nt.hpp"

namespace smoe::inline v0::store {

class PreGate {
public:
    // gate [E, d] (the next layer's router weight, held by view), bias [E] or empty, k <= E.
    PreGate(MatrixView<float const> gate, std::span<float const> bias, std::int64_t top_k, std::int64_t max_tokens)
        : gate_(gate), bias_(bias), k_(top_k), max_tokens_(max_tokens) {
        smoe::detail::check_view(gate, "gate", -1, -1);
        smoe::detail::require_in_range("top_k", top_k, 1, gate.rows, "the gate's rows (the next layer's num_experts)");
        smoe::detail::require_in_range("max_tokens", max_tokens, 1, std::int64_t(1) << 20, "smoe::limits::kMaxTokens");
        if (!bias.empty() && static_cast<std::int64_t>(bias.size()) != gate.rows)
            smoe::detail::fail("bias", bias.size(), "empty or one per expert (" + std::to_string(gate.rows) + ")");
        logits_.resize(static_cast<std::size_t>(max_tokens * gate.rows));
        chosen_.resize(static_cast<std::size_t>(gate.rows));
        ids_.reserve(static_cast<std::size_t>(gate.rows));
    }

    // The next layer's predicted experts for x [T, d], T <= max_tokens, in increasing id order.
    template <class Arch = xsimd::default_arch>
    std::span<std::int64_t const> predict(MatrixView<float const> x) {
        smoe::detail::check_view(x, "x", -1, gate_.cols);
        if (x.rows > max_tokens_) smoe::detail::fail("x.rows", x.rows, "at most max_tokens = " + std::to_string(max_tokens_));
        std::int64_t const E = gate_.rows;
        MatrixView<float> const logits(logits_.data(), x.rows, E);
        kernels::cpu::gemm_nt(Arch{}, x, gate_, logits);
        std::fill(chosen_.begin(), chosen_.end(), std::uint8_t{0});
        for (std::int64_t t = 0; t < x.rows; ++t) {
            float* const row = logits.row(t);
            if (!bias_.empty())
                for (std::int64_t e = 0; e < E; ++e) row[e] += bias_[static_cast<std::size_t>(e)];
            for (std::int64_t j = 0; j < k_; ++j) {  // k passes of an arg-max: k is small
                std::int64_t best = -1;
                for (std::int64_t e = 0; e < E; ++e)
                    if (row[e] == row[e] && (best < 0 || row[e] > row[best])) best = e;
                if (best < 0) break;
                chosen_[static_cast<std::size_t>(best)] = 1;
                row[best] = -std::numeric_limits<float>::infinity();
                if (j + 1 == k_) break;
            }
        }
        ids_.clear();
        for (std::int64_t e = 0; e < E; ++e)
            if (chosen_[static_cast<std::size_t>(e)]) ids_.push_back(e);
        return ids_;
    }

    // predict(x), handed to the next layer's store (ExpertStore::prefetch).
    template <class Store, class Arch = xsimd::default_arch>
    void prefetch(Store& next_store, MatrixView<float const> x) {
        next_store.prefetch(predict<Arch>(x));
    }

private:
    MatrixView<float const> gate_;
    std::span<float const> bias_;
    std::int64_t k_, max_tokens_;
    std::vector<float> logits_;
    std::vector<std::uint8_t> chosen_;
    std::vector<std::int64_t> ids_;
};

}  // namespace smoe::inline v0::store
