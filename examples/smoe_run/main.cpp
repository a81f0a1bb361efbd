// smoe-run CASE_DIR OUT_FILE [--layer N]: runs one MoE layer, one router or one rank-wise LoRA layer
// described by a case folder (cases.md) and writes its outputs as safetensors. Exit status 0 on
// success, 1 on bad input (the message names the file, tensor or key), 2 on a usage error.

#include <charconv>
#include <cstdio>
#include <exception>
#include <string>

#include "case_io.hpp"
#include "smoe/io/hf_config.hpp"

namespace {

int usage(char const* msg) {
    std::fprintf(stderr,
                 "smoe-run: %s\n"
                 "usage: smoe-run CASE_DIR OUT_FILE [--layer N]\n"
                 "  CASE_DIR  a case folder (config.json, weights.safetensors or a checkpoint, input.safetensors)\n"
                 "  OUT_FILE  the outputs, written as safetensors\n"
                 "  --layer N the decoder layer of a full checkpoint (default 0)\n",
                 msg);
    return 2;
}

}  // namespace

int main(int argc, char** argv) {
    smoe_run::Args a;
    std::vector<std::string> positional;
    for (int i = 1; i < argc; ++i) {
        std::string const arg = argv[i];
        if (arg == "--layer") {
            if (i + 1 >= argc) return usage("--layer needs a value");
            std::string const v = argv[++i];
            auto [p, ec] = std::from_chars(v.data(), v.data() + v.size(), a.layer);
            if (ec != std::errc() || p != v.data() + v.size() || a.layer < 0)
                return usage(("--layer: '" + v + "' is not a layer index >= 0").c_str());
            a.layer_given = true;
        } else if (arg == "-h" || arg == "--help") {
            usage("runs one case folder");
            return 0;
        } else if (!arg.empty() && arg[0] == '-') {
            return usage(("unknown option '" + arg + "'").c_str());
        } else {
            positional.push_back(arg);
        }
    }
    if (positional.size() != 2) return usage("expected CASE_DIR and OUT_FILE");
    a.case_dir = positional[0];
    a.out_file = positional[1];
    try {
        if (!smoe_run::fs::is_directory(a.case_dir))
            throw smoe::io::file_error(a.case_dir.string(), "case folder", "not a directory", "a folder with config.json");
        auto const config = smoe::io::read_json_file(a.case_dir / "config.json");
        if (!config.is_object())
            throw smoe::io::file_error((a.case_dir / "config.json").string(), "top level", config.type_name(), "a JSON object");
        if (config.contains("model_type")) return smoe_run::run_full_layer(a, config);
        if (config.contains("router")) {
            if (a.layer_given) return usage("--layer applies to full checkpoints only");
            return smoe_run::run_router_case(a, config);
        }
        if (config.contains("layer")) {
            if (a.layer_given) return usage("--layer applies to full checkpoints only");
            return smoe_run::run_lora_case(a, config);
        }
        throw smoe::io::file_error((a.case_dir / "config.json").string(), "keys", "no model_type, router or layer",
                                   "a Hugging Face config (model_type), a router-only config (router) or a rank-wise LoRA config (layer)");
    } catch (smoe::invalid_argument const& e) {
        std::fprintf(stderr, "smoe-run: error: %s\n", e.what());
        return 1;
    } catch (std::exception const& e) {
        std::fprintf(stderr, "smoe-run: error: %s\n", e.what());
        return 1;
    }
}
