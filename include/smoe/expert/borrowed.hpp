#pragma once
// smoe::expert::Borrowed<X>: an expert set owned elsewhere, used by reference. Several MoELayers that
// must run the same experts (layer::Chain's C iterations: one expert set, C gates) then share one
// packed copy instead of packing the weights once per layer. Every member forwards to the referenced
// X, the two phases and the shared experts included, so a layer over Borrowed<X> runs exactly the
// code (and gives the bits) of a layer over X.
//
//   smoe::expert::SwiGLU<float> experts(cfg, w);                                   // packed once
//   smoe::MoELayer<smoe::router::TopK, smoe::expert::Borrowed<smoe::expert::SwiGLU<float>>, smoe::balance::None>
//       layer({.router = rc}, {.gate = gate, .experts = {&experts}});             // experts must outlive layer

#include <cstdint>
#include <span>

#include "smoe/core/error.hpp"
#include "smoe/core/thread_pool.hpp"
#include "smoe/core/view.hpp"
#include "smoe/core/workspace.hpp"

namespace smoe::inline v0::expert {

template <class X>
class Borrowed {
public:
    using inner_type = X;
    static constexpr bool is_compute_free = X::is_compute_free;
    struct Config {};
    struct Weights {
        X const* experts = nullptr;
    };

    Borrowed(Config const&, Weights const& w) : x_(w.experts) {
        if (x_ == nullptr) smoe::detail::fail("experts", "a null pointer", "the expert set this layer borrows");
    }

    X const& inner() const { return *x_; }
    std::int64_t num_experts() const { return x_->num_experts(); }
    std::int64_t hidden_size() const { return x_->hidden_size(); }
    std::size_t workspace_size(std::int64_t max_rows) const { return x_->workspace_size(max_rows); }

    template <class Arch>
    void run(Arch arch, std::int64_t e, MatrixView<float const> rows_in, std::span<float const> row_w, MatrixView<float> slot_out,
             Workspace& ws) const {
        x_->run(arch, e, rows_in, row_w, slot_out, ws);
    }

    // The set's expert store (store/expert_store.hpp), so MoELayer holds borrowed experts as its own.
    decltype(auto) store() const
        requires requires(X const& i) { i.store(); }
    {
        return x_->store();
    }
    std::int64_t gate_up_panels() const
        requires requires(X const& i) { i.gate_up_panels(); }
    {
        return x_->gate_up_panels();
    }
    std::int64_t down_panels() const
        requires requires(X const& i) { i.down_panels(); }
    {
        return x_->down_panels();
    }
    std::int64_t hidden_stride() const
        requires requires(X const& i) { i.hidden_stride(); }
    {
        return x_->hidden_stride();
    }
    template <class Arch>
    void run_gate_up(Arch arch, std::int64_t e, MatrixView<float const> x, MatrixView<float> h, std::int64_t p0, std::int64_t p1,
                     std::span<float const> row_w = {}) const
        requires requires(X const& i) { i.run_gate_up(arch, e, x, h, p0, p1, row_w); }
    {
        x_->run_gate_up(arch, e, x, h, p0, p1, row_w);
    }
    template <class Arch>
    void run_down(Arch arch, std::int64_t e, MatrixView<float const> h, std::span<float const> row_w, MatrixView<float> out,
                  std::int64_t p0, std::int64_t p1) const
        requires requires(X const& i) { i.run_down(arch, e, h, row_w, out, p0, p1); }
    {
        x_->run_down(arch, e, h, row_w, out, p0, p1);
    }
    template <class Arch>
    void run_shared(Arch arch, MatrixView<float const> x, MatrixView<float> y, Workspace& ws, PoolRef const& pool = {}) const
        requires requires(X const& i, Workspace& w) { i.run_shared(arch, x, y, w, pool); }
    {
        x_->run_shared(arch, x, y, ws, pool);
    }

private:
    X const* x_;
};

}  // namespace smoe::inline v0::expert
