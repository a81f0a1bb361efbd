// Rank-wise LoRA cases (cases.md "Rank-wise LoRA configs", routing.md §8, experts.md §10): the SMoRA
// layer y = W0 x + b0 + (α/k) Σ_(i∈S) w_i (A_i · x) B_i on hidden_states [T, in].

#include <optional>
#include <set>
#include <string>

#include "smoe/detail/xsimd.hpp"  // not <xsimd/xsimd.hpp>: see there

#include "case_io.hpp"
#include "smoe/expert/rankwise_lora_forward.hpp"
#include "smoe/io/hf_config.hpp"

namespace smoe_run {

int run_lora_case(Args const& a, nlohmann::json const& config) {
    auto const file = (a.case_dir / "config.json").string();
    std::vector<std::string> defaulted;
    smoe::io::detail::ConfigReader r(config, file, defaulted);
    check_known_keys(config, file, {"layer", "in_features", "out_features", "rank", "top_k", "lora_alpha", "rank_partition", "module"},
                     "a rank-wise LoRA config");
    std::string const layer = r.string("layer", std::nullopt);
    if (layer != "rankwise_lora") smoe::io::detail::file_fail(file, "key 'layer'", layer, "\"rankwise_lora\"");
    if (r.has("rank_partition") && r.integer("rank_partition", std::nullopt) != 1)
        smoe::io::detail::file_fail(file, "key 'rank_partition'", config["rank_partition"].dump(), "1 (smoe supports one gate per rank only)");

    smoe::router::RankwiseLoRAConfig cfg;
    cfg.in_features = r.integer("in_features", std::nullopt);
    cfg.out_features = r.integer("out_features", std::nullopt);
    cfg.rank = r.integer("rank", std::nullopt);
    cfg.top_k = r.integer("top_k", std::nullopt);
    cfg.lora_alpha = r.number_f32("lora_alpha", std::nullopt);
    std::optional<smoe::router::RankwiseLoRA> router;
    try {
        router.emplace(cfg);
    } catch (smoe::invalid_argument const& e) {
        throw smoe::io::file_error(file, "key '" + e.argument() + "'", e.value(), e.expected());
    }

    // Names: the official module's, or a PEFT adapter's and its base checkpoint's under `module`.
    std::string lora_prefix, base_prefix = "base_layer.";
    if (r.has("module")) {
        std::string const m = r.string("module", std::nullopt);
        lora_prefix = "base_model.model." + m + ".";
        base_prefix = m + ".";
    }
    auto const wfile = SafetensorsFile::open(a.case_dir / "weights.safetensors");
    std::int64_t const in = cfg.in_features, out = cfg.out_features, R = cfg.rank;
    ConfigExtent const xin{in, "in_features"}, xout{out, "out_features"}, xR{R, "rank"};
    Matrix const router_w = read_matrix(wfile, lora_prefix + "lora_router.weight", xR, xin, file);
    Matrix const A = read_matrix(wfile, lora_prefix + "lora_A.weight", xR, xin, file);
    Matrix const B = read_matrix(wfile, lora_prefix + "lora_B.weight", xout, xR, file);
    std::vector<float> biases;
    if (wfile.find(lora_prefix + "lora_biases")) biases = read_vector(wfile, lora_prefix + "lora_biases", xR, file);
    Matrix base;
    std::vector<float> base_bias;
    if (wfile.find(base_prefix + "weight")) base = read_matrix(wfile, base_prefix + "weight", xout, xin, file);
    if (wfile.find(base_prefix + "bias")) base_bias = read_vector(wfile, base_prefix + "bias", xout, file);

    auto const input = SafetensorsFile::open(a.case_dir / "input.safetensors");
    Matrix const x = read_matrix(input, "hidden_states", any_extent, xin, file);
    using smoe::MatrixView;
    smoe::expert::RankwiseLoRAWeights w{MatrixView<float const>(router_w.data.data(), R, in),
                                        biases,
                                        MatrixView<float const>(A.data.data(), R, in),
                                        MatrixView<float const>(B.data.data(), out, R),
                                        base.data.empty() ? MatrixView<float const>{} : MatrixView<float const>(base.data.data(), out, in),
                                        base_bias};
    std::vector<float> y(static_cast<std::size_t>(x.rows * out));
    std::vector<std::byte> ws(smoe::expert::rankwise_lora_workspace_size(*router, std::max<std::int64_t>(x.rows, 1)));
    auto const res = smoe::expert::rankwise_lora_forward(xsimd::default_arch{}, *router, w, MatrixView<float const>(x.data.data(), x.rows, in),
                                                         MatrixView<float>(y.data(), x.rows, out), ws);
    SafetensorsWriter wr;
    wr.add_f32("hidden_states", {x.rows, out}, y);
    add_token_major(wr, res);
    wr.write(a.out_file);
    return 0;
}

}  // namespace smoe_run
