// Deterministic replay of the config.json fuzz target for ctest (no libFuzzer needed). For every case
// of tests/data/cases: the config as it is (it must run), then each key the loaders and routers read
// set to each value of a list that once broke them or might (huge, negative, float, string, null,
// wrong type) or removed, keys a router config lacks added with huge values, and a few random pairs of
// those from a fixed seed; then every file of the corpus folder (issue regressions, libFuzzer finds).
// A bug shows as an uncaught exception (abort), a sanitizer report, or ctest's timeout.
#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <random>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "fuzz_config.hpp"
#include "smoe/io/strict_json.hpp"

extern "C" int LLVMFuzzerTestOneInput(std::uint8_t const* data, std::size_t size);

namespace {

using json = nlohmann::json;
namespace fs = std::filesystem;

// What parse_hf_config, the router-only, the rank-wise LoRA and the research-layer readers read.
char const* const kKeys[] = {
    "model_type", "hidden_act", "hidden_size", "intermediate_size", "moe_intermediate_size", "num_hidden_layers",
    "num_local_experts", "num_experts", "n_routed_experts", "num_experts_per_tok", "norm_topk_prob",
    "shared_expert_intermediate_size", "n_shared_experts", "decoder_sparse_step", "mlp_only_layers",
    "first_k_dense_replace", "moe_layer_freq", "routed_scaling_factor", "scoring_func", "topk_method", "n_group",
    "topk_group", "router", "top_k", "score_func", "score_after_topk", "capacity", "capacity_factor", "top_p",
    "max_k", "min_k", "num_null_experts", "tol", "max_iterations", "l1_reg_coeff", "target_top_k",
    "moe_expert_capacity_factor", "moe_token_drop_policy", "moe_pad_expert_input_to_capacity", "min_capacity",
    "moe_router_bias_update_rate", "moe_aux_loss_coeff", "moe_z_loss_coeff", "layer", "in_features",
    "out_features", "rank", "lora_alpha", "rank_partition", "module",
    // research layers (README: research layers in smoe-run)
    "num_iterations", "independent_gates", "inner_residual", "output", "rnn_hidden_size", "cell", "num_moe_layers", "scope",
    "router_input"};
// Keys a router config may lack whose value alone decides how much work or memory a call takes.
char const* const kUnboundedKeys[] = {"max_iterations", "capacity", "capacity_factor", "min_capacity",
                                      "moe_expert_capacity_factor", "num_null_experts", "max_k", "top_k"};

std::vector<json> values() {
    return {json(-1), json(0), json(std::int64_t(1) << 31), json(std::int64_t(1) << 40), json(std::int64_t(1) << 62),
            json(UINT64_MAX), json(1e12), json(0.5), json("8"), json(nullptr), json(true), json::array({8})};
}

std::size_t runs = 0;

smoe_fuzz::Outcome run(std::string const& case_name, json const& config) {
    std::string const in = case_name + "\n" + config.dump();
    LLVMFuzzerTestOneInput(reinterpret_cast<std::uint8_t const*>(in.data()), in.size());
    ++runs;
    return smoe_fuzz::last_outcome;
}

void mutate(std::string const& name, json const& seed, std::mt19937_64& rng) {
    std::vector<std::string> present;
    for (char const* k : kKeys)
        if (seed.contains(k)) present.push_back(k);
    auto const vals = values();
    for (auto const& k : present) {
        for (auto const& v : vals) {
            json c = seed;
            c[k] = v;
            run(name, c);
        }
        json c = seed;
        c.erase(k);
        run(name, c);
    }
    if (seed.contains("router"))
        for (char const* k : kUnboundedKeys)
            for (auto const& v : {json(std::int64_t(1) << 40), json(1e300)}) {
                json c = seed;
                c[k] = v;
                run(name, c);
            }
    for (int i = 0; i < 8 && present.size() >= 2; ++i) {  // two keys at once
        json c = seed;
        for (int j = 0; j < 2; ++j) c[present[rng() % present.size()]] = vals[rng() % vals.size()];
        run(name, c);
    }
}

}  // namespace

int main(int argc, char** argv) {
    if (argc != 3) {
        std::fprintf(stderr, "usage: %s CASES_DIR CORPUS_DIR\n", argv[0]);
        return 2;
    }
    std::vector<fs::path> cases, corpus;
    for (auto const& e : fs::directory_iterator(argv[1]))
        if (fs::is_regular_file(e.path() / "config.json")) cases.push_back(e.path());
    for (auto const& e : fs::directory_iterator(argv[2]))
        if (e.is_regular_file()) corpus.push_back(e.path());
    std::sort(cases.begin(), cases.end());
    std::sort(corpus.begin(), corpus.end());
    if (cases.empty()) {
        std::fprintf(stderr, "no case folders in %s\n", argv[1]);
        return 1;
    }
    std::mt19937_64 rng(20261124);
    int bad_seeds = 0;
    for (auto const& dir : cases) {
        // Read as smoe reads configs: a published config may hold Python's Infinity (granitemoehybrid's does).
        std::ifstream in(dir / "config.json", std::ios::binary);
        std::string const text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
        json const seed = smoe::io::parse_json_strict(text, (dir / "config.json").string(), 32, smoe::io::JsonFloats::python);
        std::string const name = dir.filename().string();
        if (run(name, seed) != smoe_fuzz::Outcome::ran) {  // the fuzzing must reach the layers
            std::fprintf(stderr, "seed %s did not run\n", name.c_str());
            ++bad_seeds;
        }
        mutate(name, seed, rng);
    }
    for (auto const& p : corpus) {
        std::ifstream in(p, std::ios::binary);
        std::string const bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
        LLVMFuzzerTestOneInput(reinterpret_cast<std::uint8_t const*>(bytes.data()), bytes.size());
        ++runs;
    }
    std::printf("replayed %zu cases, %zu corpus files, %zu inputs in all\n", cases.size(), corpus.size(), runs);
    return bad_seeds == 0 ? 0 : 1;
}
