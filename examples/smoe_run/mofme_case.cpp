// MoFME block cases (research.md §5.2, layer::FilmBlock): {"layer": "mofme", "hidden_size",
// "adaptor_size", "num_experts", "top_k", "layer_norm_eps", "expert0_gelu"} with the released code's
// tensor names for decoder layer i (--layer i, default 0): {i}.1.0 router, {i}.2.0 / {i}.2.3 adaptor,
// {i}.3.0 LayerNorm, {i}.3.1.0.0 / {i}.3.1.1.0 basenet, {i}.3.{3+e}.expert.0 / .expert.1 FiLM module e,
// each .weight and .bias. Input hidden_states [T, d]; outputs hidden_states (the block's branch y, before
// the host's residual), expert_ids, expert_weights and tokens_per_expert.

#include <string>
#include <vector>

#include "case_io.hpp"
#include "smoe/io/hf_config.hpp"
#include "smoe/layer/film_block.hpp"

namespace smoe_run {

int run_mofme_case(Args const& a, nlohmann::json const& config) {
    auto const file = a.config_file();
    std::vector<std::string> defaulted;
    smoe::io::detail::ConfigReader r(config, file, defaulted);
    check_known_keys(config, file, {"layer", "hidden_size", "adaptor_size", "num_experts", "top_k", "layer_norm_eps", "expert0_gelu"},
                     "a MoFME config");
    smoe::layer::FilmBlockConfig cfg;
    cfg.hidden_size = r.integer("hidden_size", std::nullopt);
    cfg.num_experts = r.integer("num_experts", std::nullopt);
    cfg.top_k = r.integer("top_k", std::nullopt);
    cfg.adaptor_size = r.has("adaptor_size") ? r.integer("adaptor_size", std::nullopt) : 4 * cfg.hidden_size;
    cfg.layer_norm_eps = r.number_f32("layer_norm_eps", 1e-5);
    cfg.expert0_gelu = r.boolean("expert0_gelu", true);
    try {
        cfg.validate();
    } catch (smoe::invalid_argument const& e) {
        throw smoe::io::file_error(file, "key '" + e.argument() + "'", e.value(), e.expected());
    }
    std::int64_t const d = cfg.hidden_size, E = cfg.num_experts, A = cfg.adaptor();
    ConfigExtent const xd{d, "hidden_size"}, xE{E, "num_experts"}, xA{A, "adaptor_size"};

    auto const wfile = SafetensorsFile::open(a.case_dir / "weights.safetensors");
    std::string const p = std::to_string(a.layer) + ".";
    auto mat = [&](std::string const& n, ConfigExtent rows, ConfigExtent cols) { return read_matrix(wfile, p + n + ".weight", rows, cols, file); };
    auto vec = [&](std::string const& n, ConfigExtent len, char const* part = ".bias") { return read_vector(wfile, p + n + part, len, file); };
    auto const ln_w = vec("3.0", xd, ".weight"), ln_b = vec("3.0", xd);
    Matrix const Aw = mat("3.1.0.0", xd, xd), Bw = mat("3.1.1.0", xd, xd), R = mat("1.0", xE, xd), U1 = mat("2.0", xA, xd), U2 = mat("2.3", xd, xA);
    auto const av = vec("3.1.0.0", xd), bv = vec("3.1.1.0", xd), rv = vec("1.0", xE), c1 = vec("2.0", xA), c2 = vec("2.3", xd);
    std::vector<float> P, pb, Q, qb;
    for (std::int64_t e = 0; e < E; ++e) {
        std::string const m = "3." + std::to_string(3 + e) + ".expert.";
        for (auto const& [W, bias, k] : {std::tuple{&P, &pb, "0"}, std::tuple{&Q, &qb, "1"}}) {
            Matrix const w = mat(m + k, xd, xd);
            W->insert(W->end(), w.data.begin(), w.data.end());
            auto const b = vec(m + k, xd);
            bias->insert(bias->end(), b.begin(), b.end());
        }
    }
    auto const input = SafetensorsFile::open(a.case_dir / "input.safetensors");
    Matrix const x = read_matrix(input, "hidden_states", any_extent, xd, file);
    cfg.max_tokens = std::max<std::int64_t>(x.rows, 1);
    using smoe::MatrixView;
    smoe::layer::FilmBlock<> block(cfg, {ln_w, ln_b, MatrixView<float const>(Aw.data.data(), d, d), MatrixView<float const>(Bw.data.data(), d, d),
                                         av, bv, MatrixView<float const>(R.data.data(), E, d), rv, MatrixView<float const>(U1.data.data(), A, d), c1,
                                         MatrixView<float const>(U2.data.data(), d, A), c2, {P, pb, Q, qb}});
    std::vector<float> y(static_cast<std::size_t>(x.rows * d));
    auto const res = block.forward(MatrixView<float const>(x.data.data(), x.rows, d), MatrixView<float>(y.data(), x.rows, d));
    SafetensorsWriter wr;
    wr.add_f32("hidden_states", {x.rows, d}, y);
    add_token_major(wr, res);
    std::vector<std::int32_t> kept(block.stats().kept.begin(), block.stats().kept.end());
    if (kept.empty()) kept.assign(static_cast<std::size_t>(E), 0);
    wr.add_i32("tokens_per_expert", {E}, kept);
    wr.write(a.out_file);
    return 0;
}

}  // namespace smoe_run
