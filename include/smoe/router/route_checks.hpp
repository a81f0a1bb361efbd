#pragma once
// The argument checks every router's route() starts with, so each router names bad input the same
// way: logits [T, num_logits], T * slots within int32 (routing.md §1), the output [T, >= slots], and a
// bias passed to a router that selects without one.

#include <cstdint>
#include <span>
#include <string>

#include "smoe/core/error.hpp"
#include "smoe/core/routing.hpp"
#include "smoe/core/view.hpp"
#include "smoe/kernels/cpu/finite_check.hpp"

namespace smoe::inline v0::router::checks {

// Returns T.
inline std::int64_t check_logits_shape(MatrixView<float const> logits, std::int64_t num_logits, std::int64_t slots) {
    smoe::detail::check_view(logits, "logits", -1, num_logits);
    smoe::detail::check_int32_extent(logits.rows, slots);
    return logits.rows;
}

// `slots_name` is what the router calls its column count ("top_k", "max_k", "num_experts").
inline void check_out_shape(TokenMajorOut const& out, std::int64_t T, std::int64_t slots, char const* slots_name) {
    if (out.expert_ids.rows != T || out.expert_ids.cols < slots || out.expert_weights.rows != T ||
        out.expert_weights.cols < slots)
        smoe::detail::fail("out", smoe::detail::shape_text(out.expert_ids.rows, out.expert_ids.cols),
                           std::string("[T, >= ") + slots_name + "] = " + smoe::detail::shape_text(T, slots));
}

inline void reject_bias(std::span<float const> bias, char const* router_name) {
    if (!bias.empty())
        smoe::detail::fail("expert_bias", "length " + std::to_string(bias.size()),
                           std::string("none (") + router_name + " takes no selection bias)");
}

// The whole entry of a router that selects without a bias (both its plain and its controlled route):
// logits [T, num_logits] and finite, out [T, >= slots], no bias. Returns T.
template <class Arch>
std::int64_t check_unbiased(Arch arch, MatrixView<float const> logits, std::span<float const> bias, TokenMajorOut const& out,
                            std::int64_t num_logits, std::int64_t slots, char const* slots_name, char const* router_name) {
    std::int64_t const T = check_logits_shape(logits, num_logits, slots);
    check_out_shape(out, T, slots, slots_name);
    reject_bias(bias, router_name);
    kernels::cpu::check_finite(arch, logits, "logits");
    return T;
}

}  // namespace smoe::inline v0::router::checks
