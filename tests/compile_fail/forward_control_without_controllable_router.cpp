// expect: this Router has no route(..., control)
// A router that models RouterPolicy but has no route(..., control): the plain forward builds, and a
// forward with a RouterControl fails with one sentence.
#include <cstdint>
#include <span>

#include <smoe/layer.hpp>
#include <smoe/balance/none.hpp>
#include <smoe/expert/swiglu.hpp>

struct PlainRouter {
    struct Config {};
    explicit PlainRouter(Config) {}
    std::int64_t num_experts() const { return 1; }
    std::int64_t num_logits() const { return 1; }
    std::int64_t max_slots() const { return 1; }
    std::size_t workspace_size(std::int64_t) const { return 0; }
    template <class Arch>
    std::int64_t route(Arch, smoe::MatrixView<float const>, std::span<float const>, smoe::TokenMajorOut, smoe::Workspace&) const {
        return 1;
    }
};

using Layer = smoe::MoELayer<PlainRouter, smoe::expert::SwiGLU<float>, smoe::balance::None>;

void forward_plain(Layer& layer, smoe::MatrixView<float const> x, smoe::MatrixView<float> y) { layer.forward(x, y); }

void forward_controlled(Layer& layer, smoe::MatrixView<float const> x, smoe::MatrixView<float> y) {
    layer.forward(x, y, smoe::RouterControl{});
}
