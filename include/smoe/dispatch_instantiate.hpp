#pragma once
// The per-ISA half of smoe/dispatch.hpp: include this only in a file that smoe_dispatch_sources
// compiles once per ISA, and name each layer type the engine dispatches:
//
//   #include <smoe/dispatch_instantiate.hpp>
//   SMOE_DISPATCH_INSTANTIATE(smoe::router::TopK, smoe::expert::SwiGLU<float>, smoe::balance::None)
//
// The ISA is the file's xsimd::default_arch, i.e. its compile flags. smoe_dispatch_sources also
// defines SMOE_DISPATCH_ARCH to the ISA it meant, so a flag that did not take effect is a compile
// error here rather than a layer built for the wrong ISA.

#include <memory>
#include <type_traits>

#include "smoe/dispatch.hpp"

namespace smoe::inline v0 {

namespace detail {

template <class Arch, class Router, class Expert, class Balancer>
class LayerOn final : public LayerInterface<Router, Expert, Balancer> {
    using Layer = MoELayer<Router, Expert, Balancer, backend::Cpu<Arch>>;

public:
    using Config = MoEConfig<Router, Expert, Balancer>;
    using Weights = MoEWeights<Expert>;

    LayerOn(Config const& cfg, Weights const& w) : layer_(cfg, w) {}

    char const* isa() const noexcept override { return Arch::name(); }
    Config const& config() const override { return layer_.config(); }
    Router const& router() const override { return layer_.router(); }
    Expert const& experts() const override { return layer_.experts(); }
    Balancer& balancer() override { return layer_.balancer(); }
    LoadStats const& stats() const override { return layer_.stats(); }
    std::size_t workspace_size() const override { return layer_.workspace_size(); }
    void set_thread_pool(PoolRef pool) override {
        // The layer keeps a reference to the pool it is given: hand it our copy, which lives as long.
        pool_ = pool;
        if (pool_.empty())
            layer_.clear_thread_pool();
        else
            layer_.set_thread_pool(pool_);
    }
    RoutingResult forward(MatrixView<float const> x, MatrixView<float> y, std::span<std::byte> workspace) override {
        return layer_.forward(x, y, workspace);
    }
    RoutingResult forward(MatrixView<float const> x, MatrixView<float> y) override { return layer_.forward(x, y); }
    RoutingResult forward(MatrixView<float const> x, MatrixView<float> y, std::span<std::byte> workspace,
                          RouterControl const& control, TokenIds token_ids) override {
        if constexpr (ControllableRouter<Router, Arch>) return layer_.forward(x, y, workspace, control, token_ids);
        refuse_control(control);
        return layer_.forward(x, y, workspace);
    }
    RoutingResult forward(MatrixView<float const> x, MatrixView<float> y, RouterControl const& control,
                          TokenIds token_ids) override {
        if constexpr (ControllableRouter<Router, Arch>) return layer_.forward(x, y, control, token_ids);
        refuse_control(control);
        return layer_.forward(x, y);
    }
    RoutingResult forward_routed(MatrixView<float const> x, MatrixView<std::int32_t const> expert_ids,
                                 MatrixView<float const> expert_weights, MatrixView<float> y,
                                 std::span<std::byte> workspace) override {
        return layer_.forward_routed(x, expert_ids, expert_weights, y, workspace);
    }
    RoutingResult forward_routed(MatrixView<float const> x, MatrixView<std::int32_t const> expert_ids,
                                 MatrixView<float const> expert_weights, MatrixView<float> y) override {
        return layer_.forward_routed(x, expert_ids, expert_weights, y);
    }

private:
    // The interface is the same for every router; one without route(..., control) runs only empty records.
    static void refuse_control(RouterControl const& control) {
        if (!control.empty())
            smoe::detail::fail("control", "a RouterControl record", "none: this Router has no route(..., control)");
    }

    Layer layer_;
    PoolRef pool_;
};

}  // namespace detail

template <class Arch, class Router, class Expert, class Balancer>
std::unique_ptr<LayerInterface<Router, Expert, Balancer>> LayerFactory<Arch, Router, Expert, Balancer>::create(
    MoEConfig<Router, Expert, Balancer> const& cfg, MoEWeights<Expert> const& w) {
    return std::make_unique<detail::LayerOn<Arch, Router, Expert, Balancer>>(cfg, w);
}

}  // namespace smoe::inline v0

#ifdef SMOE_DISPATCH_ARCH
#define SMOE_DISPATCH_CHECK_ARCH_                                                                          \
    static_assert(std::is_same_v<::xsimd::default_arch, SMOE_DISPATCH_ARCH>,                               \
                  "smoe dispatch: this file's flags do not give the ISA smoe_dispatch_sources compiles it for " \
                  "(xsimd::default_arch differs from SMOE_DISPATCH_ARCH)");
#else
#define SMOE_DISPATCH_CHECK_ARCH_
#endif

// Defines LayerFactory<this file's ISA, Router, Expert, Balancer>::create (the arguments are the
// three policy types).
#define SMOE_DISPATCH_INSTANTIATE(...) \
    SMOE_DISPATCH_CHECK_ARCH_          \
    template struct ::smoe::LayerFactory<::xsimd::default_arch, __VA_ARGS__>;
