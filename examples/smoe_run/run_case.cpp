// One case folder, whatever its kind: config.json says which (cases.md), the kind's runner does the
// rest. main() and the config.json fuzz target (tests/fuzz/fuzz_config.cpp) both come through here.

#include "case_io.hpp"
#include "smoe/io/hf_config.hpp"

namespace smoe_run {

int run_case(Args const& a) {
    if (!fs::is_directory(a.case_dir))
        throw smoe::io::file_error(a.case_dir.string(), "case folder", "not a directory", "a folder with config.json");
    auto const config = smoe::io::read_json_file(a.case_dir / "config.json");
    if (!config.is_object())
        throw smoe::io::file_error(a.config_file(), "top level", config.type_name(), "a JSON object");
    if (config.contains("model_type")) return run_full_layer(a, config);
    bool const mofme = config.contains("layer") && config["layer"] == "mofme";  // research.md §5.2: tensors of layer i
    if (a.layer_given && (config.contains("router") || (config.contains("layer") && !mofme)))
        throw usage_error("--layer applies to full checkpoints and MoFME configs only");
    if (mofme) return run_mofme_case(a, config);
    if (config.contains("router")) return run_router_case(a, config);
    if (is_research_layer(config)) return run_research_layer(a, config);
    if (config.contains("layer")) return run_lora_case(a, config);
    throw smoe::io::file_error(a.config_file(), "keys", "no model_type, router or layer",
                               "a Hugging Face config (model_type), a router-only config (router) or a rank-wise LoRA "
                               "config (layer)");
}

}  // namespace smoe_run
