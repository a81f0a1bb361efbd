#pragma once
// smoe::DispatchedLayer<Router, Expert, Balancer>: one binary that runs the MoE layer with the best
// instruction set of the CPU it finds itself on (xsimd's recipe, STYLE.md habit 3).
//
// The layer's code is compiled once per ISA, each time in a translation unit built with that ISA's
// flags: SMOE_DISPATCH_INSTANTIATE (smoe/dispatch_instantiate.hpp) there defines
// LayerFactory<Arch, Router, Expert, Balancer>::create, whose MoELayer<..., backend::Cpu<Arch>> and
// kernels all carry Arch in their types, so every ISA's symbols differ. This header holds no SIMD
// code: the engine's own files include it with their usual (baseline) flags, and construction asks
// xsimd::dispatch which listed ISA is the best the CPU supports. CMake does the per-ISA compiles:
//
//   # CMakeLists.txt (cmake/smoe_dispatch.cmake, exported with smoe::smoe)
//   smoe_dispatch_sources(engine SOURCES moe_layers_isa.cpp)      # avx512bw, fma3<avx2>, sse2
//
//   // moe_layers_isa.cpp: compiled once per ISA, never by hand
//   #include <smoe/dispatch_instantiate.hpp>
//   SMOE_DISPATCH_INSTANTIATE(smoe::router::TopK, smoe::expert::SwiGLU<smoe::bf16>, smoe::balance::None)
//
//   // engine.cpp: plain flags
//   #include <smoe/dispatch.hpp>
//   smoe::DispatchedLayer<smoe::router::TopK, smoe::expert::SwiGLU<smoe::bf16>, smoe::balance::None> layer(cfg, w);
//   layer.isa();             // "avx512bw", "fma3+avx2" or "sse2"
//   layer.forward(x, y);
//
// The layer is reached through one virtual call per forward; everything below it is the ISA's own
// MoELayer, so results are those of MoELayer compiled with that ISA's flags.

#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>

#include "smoe/detail/xsimd.hpp"

#include "smoe/core/error.hpp"
#include "smoe/core/routing.hpp"
#include "smoe/core/stats.hpp"
#include "smoe/core/thread_pool.hpp"
#include "smoe/core/view.hpp"
#include "smoe/layer.hpp"

namespace smoe::inline v0 {

// The ISAs smoe_dispatch_sources compiles by default, best first (xsimd::dispatch's order). sse2 is
// every x86-64 CPU; its layer runs the packed GEMMs on the scalar path.
using dispatch_archs = xsimd::arch_list<xsimd::avx512bw, xsimd::fma3<xsimd::avx2>, xsimd::sse2>;

// What a DispatchedLayer does, whatever its ISA.
template <class Router, class Expert, class Balancer>
class LayerInterface {
public:
    using Config = MoEConfig<Router, Expert, Balancer>;
    using Weights = MoEWeights<Expert>;

    virtual ~LayerInterface() = default;
    virtual char const* isa() const noexcept = 0;
    virtual Config const& config() const = 0;
    virtual Router const& router() const = 0;
    virtual Expert const& experts() const = 0;
    virtual Balancer& balancer() = 0;
    virtual LoadStats const& stats() const = 0;
    virtual std::size_t workspace_size() const = 0;
    virtual void set_thread_pool(PoolRef pool) = 0;
    virtual RoutingResult forward(MatrixView<float const> x, MatrixView<float> y, std::span<std::byte> workspace) = 0;
    virtual RoutingResult forward(MatrixView<float const> x, MatrixView<float> y) = 0;
    // Test-time router control and token ids (MoELayer::forward's overloads).
    virtual RoutingResult forward(MatrixView<float const> x, MatrixView<float> y, std::span<std::byte> workspace,
                                  RouterControl const& control, TokenIds token_ids) = 0;
    virtual RoutingResult forward(MatrixView<float const> x, MatrixView<float> y, RouterControl const& control,
                                  TokenIds token_ids) = 0;
    virtual RoutingResult forward_routed(MatrixView<float const> x, MatrixView<std::int32_t const> expert_ids,
                                         MatrixView<float const> expert_weights, MatrixView<float> y,
                                         std::span<std::byte> workspace) = 0;
    virtual RoutingResult forward_routed(MatrixView<float const> x, MatrixView<std::int32_t const> expert_ids,
                                         MatrixView<float const> expert_weights, MatrixView<float> y) = 0;
};

// Declared here, defined by SMOE_DISPATCH_INSTANTIATE in the file compiled for Arch. A link error
// naming LayerFactory<xsimd::...> means that ISA's file is missing from the build.
template <class Arch, class Router, class Expert, class Balancer>
struct LayerFactory {
    static std::unique_ptr<LayerInterface<Router, Expert, Balancer>> create(MoEConfig<Router, Expert, Balancer> const& cfg,
                                                                            MoEWeights<Expert> const& w);
};

struct DispatchOptions {
    // Empty: the best ISA of the list that this CPU supports. Otherwise an ISA's xsimd name from the
    // list ("avx512bw", "fma3+avx2", "sse2"), e.g. to compare ISAs or to pin one for reproducibility.
    std::string_view isa{};
};

namespace detail {

template <class Archs>
struct arch_names;
template <class... A>
struct arch_names<xsimd::arch_list<A...>> {
    static constexpr char const* value[] = {A::name()...};
    static constexpr unsigned version[] = {A::version()...};
    static constexpr std::size_t size = sizeof...(A);
};

template <class Arch, class... A>
constexpr int position_in(xsimd::arch_list<A...>) {
    int i = 0, found = -1;
    ((std::is_same_v<Arch, A> ? (found = i, ++i) : ++i), ...);
    return found;
}

template <class Archs>
struct arch_position {
    template <class Arch>
    int operator()(Arch) const noexcept {
        return position_in<Arch>(Archs{});
    }
};

inline std::string list_names(char const* const* names, std::size_t n) {
    std::string s;
    for (std::size_t i = 0; i < n; ++i) s += (i ? ", " : "") + std::string(names[i]);
    return s;
}

// Position in Archs of the ISA named `name` (an xsimd name), or -1.
template <class Archs>
int arch_index(std::string_view name) {
    using names = arch_names<Archs>;
    for (std::size_t i = 0; i < names::size; ++i)
        if (name == names::value[i]) return static_cast<int>(i);
    return -1;
}

// Position in Archs of the ISA to build: the requested one, or the best the CPU supports.
template <class Archs>
int select_arch(std::string_view requested) {
    using names = arch_names<Archs>;
    unsigned const best = xsimd::available_architectures().best;
    if (requested.empty()) {
        // xsimd::dispatch is noexcept and takes the last entry even when the CPU lacks it; check first.
        if (names::version[names::size - 1] > best)
            fail("isa", "(best available)",
                 "a CPU supporting one of the dispatched ISAs (" + list_names(names::value, names::size) + ")");
        return xsimd::dispatch<Archs>(arch_position<Archs>{})();
    }
    int const i = arch_index<Archs>(requested);
    if (i < 0) fail("isa", std::string(requested), "one of the dispatched ISAs (" + list_names(names::value, names::size) + ")");
    if (names::version[i] > best)
        fail("isa", std::string(requested), "an ISA this CPU supports (it lacks " + std::string(requested) + ")");
    return i;
}

template <class R, class E, class B, class... A>
std::unique_ptr<LayerInterface<R, E, B>> create_at(int pos, MoEConfig<R, E, B> const& cfg, MoEWeights<E> const& w,
                                                   xsimd::arch_list<A...>) {
    using Make = std::unique_ptr<LayerInterface<R, E, B>> (*)(MoEConfig<R, E, B> const&, MoEWeights<E> const&);
    static constexpr Make make[] = {&LayerFactory<A, R, E, B>::create...};
    return make[pos](cfg, w);
}

}  // namespace detail

// True when this CPU can run the ISA named `isa` (an xsimd name).
template <class Archs = dispatch_archs>
bool isa_supported(std::string_view isa) {
    int const i = detail::arch_index<Archs>(isa);
    return i >= 0 && detail::arch_names<Archs>::version[i] <= xsimd::available_architectures().best;
}

template <class Router, class Expert, class Balancer, class Archs = dispatch_archs>
class DispatchedLayer {
public:
    using Interface = LayerInterface<Router, Expert, Balancer>;
    using Config = typename Interface::Config;
    using Weights = typename Interface::Weights;

    DispatchedLayer(Config const& cfg, Weights const& w, DispatchOptions opt = {})
        : impl_(detail::create_at(detail::select_arch<Archs>(opt.isa), cfg, w, Archs{})) {}

    // The xsimd name of the ISA this layer runs ("avx512bw", "fma3+avx2", "sse2").
    char const* isa() const noexcept { return impl_->isa(); }
    Config const& config() const { return impl_->config(); }
    Router const& router() const { return impl_->router(); }
    Expert const& experts() const { return impl_->experts(); }
    Balancer& balancer() { return impl_->balancer(); }
    LoadStats const& stats() const { return impl_->stats(); }
    std::int64_t hidden_size() const { return impl_->experts().hidden_size(); }
    std::int64_t num_experts() const { return impl_->router().num_experts(); }
    std::size_t workspace_size() const { return impl_->workspace_size(); }

    template <ThreadPool P>
    void set_thread_pool(P& pool) { impl_->set_thread_pool(PoolRef(pool)); }
    void clear_thread_pool() { impl_->set_thread_pool(PoolRef()); }

    RoutingResult forward(MatrixView<float const> x, MatrixView<float> y, std::span<std::byte> workspace) {
        return impl_->forward(x, y, workspace);
    }
    RoutingResult forward(MatrixView<float const> x, MatrixView<float> y) { return impl_->forward(x, y); }
    // Under test-time router control (research.md §8) and with the call's token ids; a router without
    // control refuses a non-empty record with smoe::invalid_argument.
    RoutingResult forward(MatrixView<float const> x, MatrixView<float> y, std::span<std::byte> workspace,
                          RouterControl const& control, TokenIds token_ids = {}) {
        return impl_->forward(x, y, workspace, control, token_ids);
    }
    RoutingResult forward(MatrixView<float const> x, MatrixView<float> y, RouterControl const& control,
                          TokenIds token_ids = {}) {
        return impl_->forward(x, y, control, token_ids);
    }
    RoutingResult forward_routed(MatrixView<float const> x, MatrixView<std::int32_t const> expert_ids,
                                 MatrixView<float const> expert_weights, MatrixView<float> y,
                                 std::span<std::byte> workspace) {
        return impl_->forward_routed(x, expert_ids, expert_weights, y, workspace);
    }
    RoutingResult forward_routed(MatrixView<float const> x, MatrixView<std::int32_t const> expert_ids,
                                 MatrixView<float const> expert_weights, MatrixView<float> y) {
        return impl_->forward_routed(x, expert_ids, expert_weights, y);
    }

private:
    std::unique_ptr<Interface> impl_;
};

}  // namespace smoe::inline v0
