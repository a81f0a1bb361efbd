#pragma once
// smoe::router::detail::RouterBase<Derived, Config>: the plumbing every router policy shares, so that a
// router's file holds its routing step and nothing else. It keeps the validated config, answers
// config(), num_experts() and num_logits() (the config's num_logits() where it has one, else E), and
// sizes the workspace as route() carves it: the router's own scratch first (Derived::carve(alloc, T),
// when the router has one), then test-time control's row of num_logits() floats (control.hpp).
// A router whose workspace differs (top-k's two paths share bytes; Sinkhorn's control carves more)
// declares its own workspace_size, which hides this one.
//
//   class ReLU : public detail::RouterBase<ReLU, ReLUConfig> {
//       friend RouterBase;   // workspace_size() calls the private carve()
//   public:
//       using RouterBase::RouterBase;
//       ...
//   };

#include <cstddef>
#include <cstdint>

#include "smoe/core/workspace.hpp"
#include "smoe/router/control.hpp"

namespace smoe::inline v0::router::detail {

template <class Derived, class Cfg>
class RouterBase {
public:
    using Config = Cfg;

    // Throws what Config::validate() throws (smoe::invalid_argument naming the key).
    explicit RouterBase(Config const& cfg) : cfg_(cfg) { cfg_.validate(); }

    Config const& config() const { return cfg_; }
    std::int64_t num_experts() const { return cfg_.num_experts; }
    std::int64_t num_logits() const {
        if constexpr (requires { cfg_.num_logits(); })
            return cfg_.num_logits();
        else
            return cfg_.num_experts;
    }

    std::size_t workspace_size(std::int64_t max_tokens) const {
        Derived const& self = static_cast<Derived const&>(*this);
        WorkspaceSize size;
        if constexpr (requires { self.carve(size, max_tokens); }) self.carve(size, max_tokens);
        control::carve_row(size, self.num_logits());
        return size.bytes();
    }

protected:
    Config cfg_;
};

}  // namespace smoe::inline v0::router::detail
