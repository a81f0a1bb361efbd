#pragma once
// Writing expert layers into a packed expert file (store/packed_file.hpp) from the expert types
// themselves, so a file's records are exactly the bytes those types pack in memory:
//
//   store::PackedWriter out("model.smoe");
//   store::add_layer(out, /*layer=*/3, experts);           // an expert object already packed (resident)
//   store::add_layer_streaming(out, 5, E, [&](std::int64_t e, auto&& sink) { sink(make_one_expert(e)); });
//   out.finish();
//
// add_layer_streaming builds one single-expert object at a time (peak memory: one expert and its
// source tensors): an expert's record depends only on its own weights and formats, so expert e packed
// alone is expert e's record in the whole layer. io/hf_pack.hpp does this from a checkpoint.

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>

#include "smoe/core/error.hpp"
#include "smoe/store/expert_store.hpp"
#include "smoe/store/packed_file.hpp"

namespace smoe::inline v0::store {

// Record e of an expert object's resident store.
template <class X>
std::span<std::byte const> record_of(X const& x, std::int64_t e) {
    if (x.store().residency() != Residency::resident)
        smoe::detail::fail("expert store", to_string(x.store().residency()), "resident experts to write into a packed file");
    return {x.store().record(e), x.record_bytes(e)};
}

template <class X>
void add_layer(PackedWriter& w, std::int64_t layer_index, X const& x) {
    w.begin_layer(layer_index, x.packed_layer_info());
    for (std::int64_t e = 0; e < x.num_experts(); ++e) w.add(record_of(x, e), x.packed_record_info(e));
    w.end_layer();
}

// one(e, sink) builds an object holding expert e as its expert 0 (a one-expert X, or a layer of them)
// and calls sink(x) with it; the object may go once sink returns. ids: the model's id of each of the
// num_experts records (a rank's experts, strictly increasing, below model_experts); empty: 0..E-1.
template <class One>
void add_layer_streaming(PackedWriter& w, std::int64_t layer_index, std::int64_t num_experts, One&& one,
                         std::span<std::int64_t const> ids = {}, std::int64_t model_experts = 0) {
    if (!ids.empty() && static_cast<std::int64_t>(ids.size()) != num_experts)
        smoe::detail::fail("ids", std::to_string(ids.size()) + " ids", "one per record (" + std::to_string(num_experts) + ")");
    LayerInfo first{};
    for (std::int64_t e = 0; e < num_experts; ++e)
        one(e, [&](auto const& x) {
            LayerInfo const info = x.packed_layer_info();
            if (e == 0) {
                first = info;
                w.begin_layer(layer_index, info, model_experts);
            } else if (info.kind != first.kind || info.flags != first.flags || info.hidden_size != first.hidden_size ||
                       info.intermediate_size != first.intermediate_size) {
                smoe::detail::fail("expert " + std::to_string(e) + " of layer " + std::to_string(layer_index), to_string(info.kind),
                                   std::string("the layer's expert type, packing and shape (") + to_string(first.kind) + ")");
            }
            w.add(record_of(x, 0), x.packed_record_info(0), ids.empty() ? e : ids[static_cast<std::size_t>(e)]);
        });
    w.end_layer();
}

}  // namespace smoe::inline v0::store
