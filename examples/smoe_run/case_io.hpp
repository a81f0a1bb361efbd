#pragma once
// What the three kinds of case (cases.md) share: the input file, typed reads with the expected shape,
// and the output writer. Every read names the file and the tensor when it fails.

#include <cstdint>
#include <filesystem>
#include <set>
#include <span>
#include <stdexcept>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "smoe/core/routing.hpp"
#include "smoe/expert/swiglu_config.hpp"
#include "smoe/io/config_extent.hpp"
#include "smoe/io/safetensors.hpp"
#include "smoe/store/store_config.hpp"

namespace smoe_run {

namespace fs = std::filesystem;
using smoe::io::SafetensorsFile;
using smoe::io::SafetensorsWriter;
using smoe::io::ConfigExtent;
using smoe::io::any_extent;

struct Args {
    fs::path case_dir, out_file;
    std::int64_t layer = 0;
    bool layer_given = false;
    smoe::expert::Bf16Dot bf16_dot = smoe::expert::Bf16Dot::automatic;  // bf16 checkpoints (FP8/MXFP4: on, emulated)
    smoe::expert::Int8Dot int8_dot = smoe::expert::Int8Dot::off;         // quantised int4/int8 experts
    fs::path packed;                 // --packed FILE: the routed experts from a packed expert file
    std::int64_t budget = -1;        // --budget BYTES: a cached store of that many bytes (else mapped)
    smoe::store::Eviction eviction = smoe::store::Eviction::lru;

    std::string config_file() const { return (case_dir / "config.json").string(); }
};

// A [rows, cols] F32 tensor (BF16/F16 widened) whose extents config.json predicts (any_extent: the
// file's); an extent that disagrees is an error naming the config key, checked before the read.
struct Matrix {
    std::vector<float> data;
    std::int64_t rows = 0, cols = 0;
};
Matrix read_matrix(SafetensorsFile const& f, std::string const& name, ConfigExtent rows, ConfigExtent cols,
                   std::string const& config_file);
std::vector<float> read_vector(SafetensorsFile const& f, std::string const& name, ConfigExtent n,
                               std::string const& config_file);

// Every key of `config` must be in `allowed` (cases.md: any other key is an error naming it); `what`
// names the kind of config in the message.
void check_known_keys(nlohmann::json const& config, std::string const& file, std::set<std::string> const& allowed, char const* what);

// expert_ids I32 [T, K] and expert_weights F32 [T, K] from the token-major view (names + suffix).
void add_token_major(SafetensorsWriter& w, smoe::RoutingResult const& r, std::string const& suffix = "");

// A command-line mistake found while running (main prints the usage and exits with status 2).
struct usage_error : std::runtime_error {
    using std::runtime_error::runtime_error;
};

// Runs the case folder a.case_dir: returns 0 with the outputs written, throws smoe::invalid_argument
// (a smoe::io::file_error naming the file, tensor or key) on bad input, usage_error on a bad option.
int run_case(Args const& a);
int run_full_layer(Args const& a, nlohmann::json const& config);
int run_router_case(Args const& a, nlohmann::json const& config);
int run_lora_case(Args const& a, nlohmann::json const& config);
int run_mofme_case(Args const& a, nlohmann::json const& config);
bool is_research_layer(nlohmann::json const& config);  // chain_of_experts, recurrent_router, smear, film
int run_research_layer(Args const& a, nlohmann::json const& config);

// smoe-pack: the routed experts of a case folder's or checkpoint's MoE layers into a packed expert file.
struct PackArgs {
    fs::path source, out_file;
    std::vector<std::int64_t> layers;  // empty: every MoE layer (a case folder: layer 0)
    std::string dtype;                 // f32, bf16, int8, int4; empty: the checkpoint's own
    std::int64_t int4_group = 128;
    smoe::expert::Bf16Dot bf16_dot = smoe::expert::Bf16Dot::automatic;
    smoe::expert::Int8Dot int8_dot = smoe::expert::Int8Dot::off;
};
int pack_case(PackArgs const& a);

}  // namespace smoe_run
