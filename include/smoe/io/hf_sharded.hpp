#pragma once
// smoe::io::HfShardedMoeLayer<Comm>: a Hugging Face MoE block (io/hf_moe.hpp) with its routed experts
// sharded over the ranks of a communicator (dist/layer.hpp). Each rank reads the router, the shared
// expert (replicated) and only its own routed experts from the checkpoint:
//
//   smoe::dist::MpiCommunicator comm(MPI_COMM_WORLD);
//   auto placement = smoe::dist::ExpertPlacement::contiguous(cfg.num_experts(), comm.size());
//   auto moe = smoe::io::HfShardedMoeLayer<smoe::dist::MpiCommunicator>::load(
//       cfg, ckpt, layer, {.max_tokens = 512}, dir.string(), {&comm, placement});
//   moe.forward(x, y);   // collective: every rank calls it with its own tokens

#include <cstdint>
#include <memory>
#include <vector>

#include "smoe/dist/layer.hpp"
#include "smoe/io/hf_moe.hpp"

namespace smoe::inline v0::io {

template <class Comm>
struct ShardedLayers {
    Comm* comm = nullptr;
    dist::ExpertPlacement placement;

    template <class Expert>
    using layer = dist::MoELayer<router::TopK, Expert, balance::None, Comm>;

    std::vector<std::int64_t> experts(std::int64_t num_experts) const {
        if (placement.num_experts() != num_experts)
            smoe::detail::fail("placement.num_experts", placement.num_experts(), "the checkpoint's num_experts (" + std::to_string(num_experts) + ")");
        std::vector<std::int64_t> ids;
        for (std::int64_t l = 0; l < placement.num_local(comm->rank()); ++l) ids.push_back(placement.global_id(comm->rank(), l));
        return ids;
    }
    template <class L>
    std::unique_ptr<L> make(typename L::Config const& c, typename L::Weights const& w) const {
        return std::make_unique<L>(*comm, placement, c, w);
    }
};

template <class Comm>
using HfShardedMoeLayer = BasicHfMoeLayer<ShardedLayers<Comm>>;

}  // namespace smoe::inline v0::io
