// Full-layer cases: a Hugging Face config.json and checkpoint (one file, or shards through
// model.safetensors.index.json), the MoE block of decoder layer --layer N (default 0).

#include <algorithm>
#include <cstdio>

#include "case_io.hpp"
#include "smoe/io/hf_config.hpp"
#include "smoe/io/hf_moe.hpp"

namespace smoe_run {

namespace {

template <class Source>
int run_with(Args const& a, smoe::io::HfMoeConfig const& cfg, Source const& src, std::string const& name) {
    auto const input = SafetensorsFile::open(a.case_dir / "input.safetensors");
    Matrix const x =
        read_matrix(input, "hidden_states", any_extent, {cfg.hidden_size, cfg.keys.hidden_size}, cfg.keys.file);
    auto moe = smoe::io::HfMoeLayer::load(cfg, src, a.layer, {.max_tokens = std::max<std::int64_t>(x.rows, 1), .bf16_dot = a.bf16_dot, .int8_dot = a.int8_dot}, name);
    std::vector<float> y(x.data.size());
    smoe::RoutingResult const r = moe.forward(smoe::MatrixView<float const>(x.data.data(), x.rows, x.cols),
                                              smoe::MatrixView<float>(y.data(), x.rows, x.cols));
    SafetensorsWriter w;
    w.add_f32("hidden_states", {x.rows, x.cols}, y);
    add_token_major(w, r);
    w.write(a.out_file);
    std::fprintf(stderr, "smoe-run: %s layer %lld, %s weights, T = %lld, E = %lld, k = %lld\n", to_string(cfg.family),
                 static_cast<long long>(a.layer), to_string(moe.format()), static_cast<long long>(x.rows),
                 static_cast<long long>(cfg.num_experts()), static_cast<long long>(cfg.top_k()));
    if (moe.format() == smoe::io::WeightFormat::quantized || moe.format() == smoe::io::WeightFormat::int4)
        for (std::size_t e = 0; e < moe.local_experts().size(); ++e)
            std::fprintf(stderr, "smoe-run: expert %zu: %s, %s\n", e, moe.expert_format(std::int64_t(e)).c_str(),
                         moe.expert_dot_path(std::int64_t(e)).c_str());
    return 0;
}

}  // namespace

int run_full_layer(Args const& a, nlohmann::json const& config) {
    auto const config_path = (a.case_dir / "config.json").string();
    auto const cfg = smoe::io::parse_hf_config(config, config_path);
    for (auto const& d : cfg.defaulted)
        std::fprintf(stderr, "smoe-run: %s: %s (not in the file: the family's Hugging Face default)\n", config_path.c_str(), d.c_str());
    // A case folder holds weights.safetensors; a checkpoint folder an index or its own files.
    if (fs::exists(a.case_dir / "model.safetensors.index.json") || !fs::exists(a.case_dir / "weights.safetensors")) {
        auto const ckpt = smoe::io::Checkpoint::open(a.case_dir);
        return run_with(a, cfg, ckpt, a.case_dir.string());
    }
    auto const file = SafetensorsFile::open(a.case_dir / "weights.safetensors");
    return run_with(a, cfg, file, (a.case_dir / "weights.safetensors").string());
}

}  // namespace smoe_run
