#pragma once
// What the three kinds of case (cases.md) share: the input file, typed reads with the expected shape,
// and the output writer. Every read names the file and the tensor when it fails.

#include <cstdint>
#include <filesystem>
#include <set>
#include <span>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "smoe/core/routing.hpp"
#include "smoe/io/safetensors.hpp"

namespace smoe_run {

namespace fs = std::filesystem;
using smoe::io::SafetensorsFile;
using smoe::io::SafetensorsWriter;

struct Args {
    fs::path case_dir, out_file;
    std::int64_t layer = 0;
    bool layer_given = false;
};

// Rows of a [rows, cols] F32 tensor (BF16/F16 widened); rows = -1 takes the file's.
struct Matrix {
    std::vector<float> data;
    std::int64_t rows = 0, cols = 0;
};
Matrix read_matrix(SafetensorsFile const& f, std::string const& name, std::int64_t rows, std::int64_t cols);
std::vector<float> read_vector(SafetensorsFile const& f, std::string const& name, std::int64_t n);

// Every key of `config` must be in `allowed` (cases.md: any other key is an error naming it); `what`
// names the kind of config in the message.
void check_known_keys(nlohmann::json const& config, std::string const& file, std::set<std::string> const& allowed, char const* what);

// expert_ids I32 [T, K] and expert_weights F32 [T, K] from the token-major view.
void add_token_major(SafetensorsWriter& w, smoe::RoutingResult const& r);

int run_full_layer(Args const& a, nlohmann::json const& config);
int run_router_case(Args const& a, nlohmann::json const& config);
int run_lora_case(Args const& a, nlohmann::json const& config);

}  // namespace smoe_run
