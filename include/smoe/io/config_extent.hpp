#pragma once
// A tensor whose shape a config predicts: each extent comes from a config key (or matches anything).
// The tensor's rank is the file's business; an extent that disagrees is reported as the key, with the
// tensor that contradicts it. The user wrote the key, and the file's size bounds the tensor, so an
// absurd value (num_experts = 2^40) reads as what it is, never as "tensor shape mismatch", and is
// caught before anything is allocated from it.
//
//   io::require_extents(t, "config.json", {io::any_extent, {E, "num_experts"}});
//   // config.json: key 'num_experts' = 1099511627776: expected 8, from tensor 'router_logits' [7, 8]
//   // in input.safetensors (axis 1 = num_experts)

#include <cstdint>
#include <initializer_list>
#include <string>
#include <vector>

#include "smoe/io/file_error.hpp"
#include "smoe/io/safetensors_file.hpp"
#include "smoe/io/tensor_read.hpp"

namespace smoe::inline v0::io {

// Axis extent = value · factor, where value is the config key's (a factor: the fused gate_up_proj holds
// 2 · intermediate_size rows, DeepSeek's shared experts n_shared_experts · moe_intermediate_size).
struct ConfigExtent {
    std::int64_t value = -1;
    char const* key = nullptr;  // nullptr: a fixed extent (value >= 0), or any (value < 0)
    std::int64_t factor = 1;
};
inline constexpr ConfigExtent any_extent{};

inline void require_extents(TensorInfo const& t, std::string const& config_file,
                            std::initializer_list<ConfigExtent> dims) {
    std::vector<std::int64_t> fixed;  // what the file alone gets wrong is reported as the tensor's shape
    for (ConfigExtent const& d : dims) fixed.push_back(d.key ? -1 : d.value);
    check_shape(t, fixed);
    std::size_t axis = 0;
    for (ConfigExtent const& d : dims) {
        std::int64_t const n = t.shape[axis];
        // Compared as n / factor so that a huge value times its factor cannot wrap.
        if (d.key && !(n % d.factor == 0 && n / d.factor == d.value)) {
            std::string const file_says = n % d.factor == 0 ? std::to_string(n / d.factor) : std::string("a value");
            detail::file_fail(config_file, "key '" + std::string(d.key) + "'", d.value,
                              file_says + ", from tensor " + detail::quoted(t.name) + " " + shape_text(t.shape) +
                                  " in " + t.file + " (axis " + std::to_string(axis) + " = " + d.key +
                                  (d.factor == 1 ? "" : " x " + std::to_string(d.factor)) + ")");
        }
        ++axis;
    }
}

}  // namespace smoe::inline v0::io
