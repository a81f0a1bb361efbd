// The research compositions as case folders (research.md §1-§3, §5.1; keys and tensors in the README's
// "Research layers in smoe-run"): {"layer": "chain_of_experts" | "recurrent_router" | "smear" | "film", ...},
// SwiGLU experts in F32/BF16/F16 files computed in fp32, hidden_states [T, d] in, outputs written.

#include <algorithm>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "case_io.hpp"
#include "smoe/expert/film.hpp"
#include "smoe/expert/shared.hpp"
#include "smoe/io/hf_config.hpp"
#include "smoe/layer/chain.hpp"
#include "smoe/layer/film_merged.hpp"
#include "smoe/layer/recurrent.hpp"
#include "smoe/layer/soft_merge.hpp"
#include "smoe/smoe.hpp"

namespace smoe_run {

namespace {

using smoe::MatrixView;
using smoe::io::detail::ConfigReader;
using smoe::io::detail::file_fail;
using Swi = smoe::expert::SwiGLU<float>;

struct Experts {
    std::vector<float> w1, w3, w2;
    smoe::expert::SwiGLUConfig cfg;
    smoe::expert::SwiGLUWeights<float> weights() const { return smoe::expert::SwiGLUWeights<float>::dense(w1.data(), w3.data(), w2.data(), cfg); }
};

// E experts named PREFIX{i}.{gate,up,down}_proj.weight (names: the three suffixes), or one expert
// named PREFIX{gate,up,down}_proj.weight when indexed is false.
Experts read_experts(SafetensorsFile const& f, std::string const& prefix, std::array<char const*, 3> names, bool indexed, ConfigExtent E,
                     ConfigExtent d, ConfigExtent fdim, std::string const& file) {
    Experts x{{}, {}, {}, {d.value, fdim.value, E.value}};
    for (std::int64_t e = 0; e < E.value; ++e) {
        std::string const p = indexed ? prefix + std::to_string(e) + "." : prefix;
        auto const g = read_matrix(f, p + names[0] + ".weight", fdim, d, file), u = read_matrix(f, p + names[1] + ".weight", fdim, d, file),
                   dn = read_matrix(f, p + names[2] + ".weight", d, fdim, file);
        x.w1.insert(x.w1.end(), g.data.begin(), g.data.end());
        x.w3.insert(x.w3.end(), u.data.begin(), u.data.end());
        x.w2.insert(x.w2.end(), dn.data.begin(), dn.data.end());
    }
    return x;
}

// The topk keys of routing.md §2 a research layer accepts, with the released models' defaults.
smoe::router::TopKConfig topk_keys(ConfigReader const& r, std::string const& file, std::int64_t E, bool norm_default) {
    smoe::router::TopKConfig c{.num_experts = E, .top_k = r.expert_count("top_k", std::nullopt)};
    std::string const s = r.string("score_func", std::string("softmax"));
    if (s == "sigmoid")
        c.score_func = smoe::router::ScoreFunc::sigmoid;
    else if (s != "softmax")
        file_fail(file, "key 'score_func'", s, "\"softmax\" or \"sigmoid\"");
    c.norm_topk_prob = r.boolean("norm_topk_prob", norm_default);
    c.routed_scaling_factor = r.number_f32("routed_scaling_factor", 1.0);
    return c;
}

// A layer's construction errors are config errors: name the key.
template <class F>
auto as_config_error(std::string const& file, F&& build) {
    try {
        return build();
    } catch (smoe::invalid_argument const& e) {
        throw smoe::io::file_error(file, "key '" + e.argument() + "'", e.value(), e.expected());
    }
}

template <class Expert>
void run_chain(Args const& a, std::string const& file, smoe::router::TopKConfig const& rc, typename Expert::Config ec,
               typename Expert::Weights ew, std::vector<MatrixView<float const>> const& gates, std::int64_t C, bool independent, bool residual,
               smoe::layer::ChainOutput output, Matrix const& x) {
    using Layer = smoe::layer::Chain<smoe::router::TopK, Expert, smoe::balance::None>;
    Layer chain = as_config_error(file, [&] {
        return Layer({.router = rc, .expert = ec, .num_iterations = C, .independent_gates = independent, .inner_residual = residual,
                      .output = output, .max_tokens = std::max<std::int64_t>(x.rows, 1)},
                     {.gates = gates, .experts = ew});
    });
    std::vector<float> y(x.data.size());
    std::vector<smoe::RoutingResult> r(static_cast<std::size_t>(C));
    chain.forward(MatrixView<float const>(x.data.data(), x.rows, x.cols), MatrixView<float>(y.data(), x.rows, x.cols), r);
    SafetensorsWriter w;
    w.add_f32("hidden_states", {x.rows, x.cols}, y);
    for (std::int64_t t = 0; t < C; ++t) add_token_major(w, r[static_cast<std::size_t>(t)], "." + std::to_string(t));
    w.write(a.out_file);
}

int run_chain_case(Args const& a, nlohmann::json const& config, std::string const& file) {
    std::vector<std::string> defaulted;
    ConfigReader r(config, file, defaulted);
    check_known_keys(config, file, {"layer", "hidden_size", "moe_intermediate_size", "num_experts", "top_k", "num_iterations",
                                    "independent_gates", "inner_residual", "output", "shared_expert_intermediate_size", "score_func",
                                    "norm_topk_prob", "routed_scaling_factor"},
                     "a chain_of_experts config");
    std::int64_t const d = r.dimension("hidden_size", std::nullopt), f = r.dimension("moe_intermediate_size", std::nullopt),
                       E = r.expert_count("num_experts", std::nullopt);
    std::int64_t const C = r.integer("num_iterations", 2, 1, smoe::limits::kMaxLayers, "smoe::limits::kMaxLayers");
    bool const independent = r.boolean("independent_gates", true), residual = r.boolean("inner_residual", true);
    std::string const out = r.string("output", std::string("state"));
    if (out != "state" && out != "delta") file_fail(file, "key 'output'", out, "\"state\" or \"delta\"");
    auto const rc = topk_keys(r, file, E, false);
    ConfigExtent const xd{d, "hidden_size"}, xf{f, "moe_intermediate_size"}, xE{E, "num_experts"};
    auto const wf = SafetensorsFile::open(a.case_dir / "weights.safetensors");
    std::string const mlp = "model.layers.0.mlp.";
    std::vector<Matrix> gate_data;
    for (std::int64_t t = 0; t < (independent ? C : 1); ++t)
        gate_data.push_back(read_matrix(wf, independent ? mlp + "gate." + std::to_string(t) + ".weight" : mlp + "gate.weight", xE, xd, file));
    std::vector<MatrixView<float const>> gates;
    for (auto const& g : gate_data) gates.emplace_back(g.data.data(), E, d);
    auto const routed = read_experts(wf, mlp + "experts.", {"gate_proj", "up_proj", "down_proj"}, true, xE, xd, xf, file);
    auto const input = SafetensorsFile::open(a.case_dir / "input.safetensors");
    Matrix const x = read_matrix(input, "hidden_states", any_extent, xd, file);
    auto const output = out == "delta" ? smoe::layer::ChainOutput::delta : smoe::layer::ChainOutput::state;
    if (r.has("shared_expert_intermediate_size")) {
        std::int64_t const fs = r.dimension("shared_expert_intermediate_size", std::nullopt);
        auto const shared = read_experts(wf, mlp + "shared_experts.", {"gate_proj", "up_proj", "down_proj"}, false, {1, nullptr}, xd,
                                         {fs, "shared_expert_intermediate_size"}, file);
        run_chain<smoe::expert::Shared<Swi>>(a, file, rc, {.routed = routed.cfg, .shared = shared.cfg}, {.routed = routed.weights(), .shared = shared.weights()},
                                             gates, C, independent, residual, output, x);
    } else {
        run_chain<Swi>(a, file, rc, routed.cfg, routed.weights(), gates, C, independent, residual, output, x);
    }
    return 0;
}

int run_recurrent_case(Args const& a, nlohmann::json const& config, std::string const& file) {
    std::vector<std::string> defaulted;
    ConfigReader r(config, file, defaulted);
    check_known_keys(config, file, {"layer", "hidden_size", "intermediate_size", "num_experts", "top_k", "rnn_hidden_size", "cell",
                                    "num_moe_layers", "score_func", "norm_topk_prob", "routed_scaling_factor"},
                     "a recurrent_router config");
    std::int64_t const d = r.dimension("hidden_size", std::nullopt), f = r.dimension("intermediate_size", std::nullopt),
                       E = r.expert_count("num_experts", std::nullopt), p = r.dimension("rnn_hidden_size", std::nullopt);
    std::int64_t const L = r.integer("num_moe_layers", 1, 1, smoe::limits::kMaxLayers, "smoe::limits::kMaxLayers");
    std::string const cell_name = r.string("cell", std::string("gru"));
    if (cell_name != "gru" && cell_name != "rnn") file_fail(file, "key 'cell'", cell_name, "\"gru\" or \"rnn\"");
    bool const gru = cell_name == "gru";
    auto const rc = topk_keys(r, file, E, true);
    ConfigExtent const xd{d, "hidden_size"}, xf{f, "intermediate_size"}, xE{E, "num_experts"}, xp{p, "rnn_hidden_size"};
    auto const wf = SafetensorsFile::open(a.case_dir / "weights.safetensors");
    // The model-level cell: weight_{ir,hr,iz,hz,in,hn} [p, p] and bias_* [p] (rnn: in, hn only).
    char const* const parts[6] = {"ir", "hr", "iz", "hz", "in", "hn"};
    std::vector<Matrix> cw(6);
    std::vector<std::vector<float>> cb(6);
    for (int i = gru ? 0 : 4; i < 6; ++i) {
        cw[i] = read_matrix(wf, std::string("model.rnn_router.weight_") + parts[i], xp, xp, file);
        cb[i] = read_vector(wf, std::string("model.rnn_router.bias_") + parts[i], xp, file);
    }
    auto m = [&](int i) { return cw[i].data.empty() ? MatrixView<float const>{} : MatrixView<float const>(cw[i].data.data(), p, p); };
    smoe::gate::RecurrentCellWeights const cwv{m(0), m(1), m(2), m(3), m(4), m(5), cb[0], cb[1], cb[2], cb[3], cb[4], cb[5]};
    auto const cell = as_config_error(file, [&] {
        return smoe::gate::RecurrentCell({.hidden_size = p, .cell = gru ? smoe::gate::CellKind::gru : smoe::gate::CellKind::rnn}, cwv);
    });
    auto const input = SafetensorsFile::open(a.case_dir / "input.safetensors");
    using Layer = smoe::layer::Recurrent<smoe::router::TopK, Swi, smoe::balance::None>;
    SafetensorsWriter w;
    std::optional<smoe::gate::RouterState> state;
    std::int64_t T = -1;
    for (std::int64_t l = 0; l < L; ++l) {
        std::string const moe = "model.layers." + std::to_string(l) + ".block_sparse_moe.";
        Matrix const P = read_matrix(wf, moe + "weight1", xp, xd, file), Q = read_matrix(wf, moe + "weight2", xE, xp, file);
        auto const ex = read_experts(wf, moe + "experts.", {"w1", "w3", "w2"}, true, xE, xd, xf, file);
        Matrix const x = read_matrix(input, "hidden_states." + std::to_string(l), T < 0 ? any_extent : ConfigExtent{T, nullptr}, xd, file);
        if (!state) {
            T = x.rows;
            state.emplace(std::max<std::int64_t>(T, 1), cell);
            state->reset(T);
        }
        Layer layer = as_config_error(file, [&] {
            return Layer({.router = rc, .expert = ex.cfg, .max_tokens = std::max<std::int64_t>(T, 1), .layer_index = l}, cell,
                         {.gate = {MatrixView<float const>(P.data.data(), p, d), MatrixView<float const>(Q.data.data(), E, p)}, .experts = ex.weights()});
        });
        std::vector<float> y(x.data.size());
        auto const res = layer.forward(MatrixView<float const>(x.data.data(), T, d), MatrixView<float>(y.data(), T, d), *state);
        w.add_f32("hidden_states." + std::to_string(l), {T, d}, y);
        add_token_major(w, res, "." + std::to_string(l));
    }
    auto const h = std::as_const(*state).h();
    std::vector<float> hv;
    for (std::int64_t t = 0; t < T; ++t) hv.insert(hv.end(), h.row(t), h.row(t) + p);
    w.add_f32("router_state", {T, p}, hv);
    w.write(a.out_file);
    return 0;
}

int run_smear_case(Args const& a, nlohmann::json const& config, std::string const& file) {
    std::vector<std::string> defaulted;
    ConfigReader r(config, file, defaulted);
    check_known_keys(config, file, {"layer", "hidden_size", "intermediate_size", "num_experts", "scope", "router_input"}, "a smear config");
    std::int64_t const d = r.dimension("hidden_size", std::nullopt), f = r.dimension("intermediate_size", std::nullopt),
                       E = r.expert_count("num_experts", std::nullopt);
    std::string const scope = r.string("scope", std::string("sequence")), rin = r.string("router_input", std::string("mean"));
    if (scope != "sequence" && scope != "token") file_fail(file, "key 'scope'", scope, "\"sequence\" or \"token\"");
    if (rin != "mean" && rin != "given") file_fail(file, "key 'router_input'", rin, "\"mean\" or \"given\"");
    ConfigExtent const xd{d, "hidden_size"}, xf{f, "intermediate_size"}, xE{E, "num_experts"};
    auto const wf = SafetensorsFile::open(a.case_dir / "weights.safetensors");
    std::string const mlp = "model.layers.0.mlp.";
    auto const ex = read_experts(wf, mlp + "experts.", {"gate_proj", "up_proj", "down_proj"}, true, xE, xd, xf, file);
    Matrix gate;
    std::vector<float> bias;
    if (rin == "mean") {
        gate = read_matrix(wf, mlp + "gate.weight", xE, xd, file);
        if (wf.find(mlp + "gate.bias")) bias = read_vector(wf, mlp + "gate.bias", xE, file);
    }
    auto const input = SafetensorsFile::open(a.case_dir / "input.safetensors");
    Matrix const x = read_matrix(input, "hidden_states", any_extent, xd, file);
    std::vector<std::int32_t> offsets;
    if (scope == "sequence") offsets = smoe::io::read_i32(input.at("sequence_offsets"), {-1});  // [B + 1]
    std::int64_t const G = scope == "sequence" ? std::max<std::int64_t>(std::int64_t(offsets.size()) - 1, 0) : x.rows;
    Matrix logits;
    if (rin == "given") logits = read_matrix(input, "router_logits", {G, nullptr}, xE, file);
    using Layer = smoe::layer::SoftMerge<Swi>;
    Layer layer = as_config_error(file, [&] {
        return Layer({.expert = ex.cfg, .scope = scope == "token" ? smoe::layer::MergeScope::token : smoe::layer::MergeScope::sequence,
                      .router_input = rin == "given" ? smoe::layer::MergeRouting::given : smoe::layer::MergeRouting::mean,
                      .max_tokens = std::max<std::int64_t>(x.rows, 1)},
                     {.gate = gate.data.empty() ? MatrixView<float const>{} : MatrixView<float const>(gate.data.data(), E, d), .gate_bias = bias,
                      .experts = ex.weights()});
    });
    std::vector<float> y(x.data.size()), probs(static_cast<std::size_t>(G * E));
    layer.forward(MatrixView<float const>(x.data.data(), x.rows, d), MatrixView<float>(y.data(), x.rows, d),
                  {.sequence_offsets = offsets,
                   .logits = logits.data.empty() ? MatrixView<float const>{} : MatrixView<float const>(logits.data.data(), G, E),
                   .probs = MatrixView<float>(probs.data(), G, E)});
    SafetensorsWriter w;
    w.add_f32("hidden_states", {x.rows, d}, y);
    w.add_f32("merge_weights", {G, E}, probs);
    w.write(a.out_file);
    return 0;
}

// FiLM experts on one shared FFN (research.md §5.1): per slot (MoELayer<TopK, expert::Film>) or, with
// "merged", one FFN pass per token (layer::FilmMerged); the same outputs within experts.md §9's bound.
int run_film_case(Args const& a, nlohmann::json const& config, std::string const& file) {
    std::vector<std::string> defaulted;
    ConfigReader r(config, file, defaulted);
    check_known_keys(config, file, {"layer", "hidden_size", "intermediate_size", "num_experts", "top_k", "merged", "score_func", "norm_topk_prob",
                                    "routed_scaling_factor"},
                     "a film config");
    std::int64_t const d = r.dimension("hidden_size", std::nullopt), f = r.dimension("intermediate_size", std::nullopt),
                       E = r.expert_count("num_experts", std::nullopt);
    bool const merged = r.boolean("merged", false);
    auto const rc = topk_keys(r, file, E, false);
    ConfigExtent const xd{d, "hidden_size"}, xf{f, "intermediate_size"}, xE{E, "num_experts"};
    auto const wf = SafetensorsFile::open(a.case_dir / "weights.safetensors");
    std::string const mlp = "model.layers.0.mlp.";
    Matrix const gate = read_matrix(wf, mlp + "gate.weight", xE, xd, file);
    auto const ffn = read_experts(wf, mlp, {"gate_proj", "up_proj", "down_proj"}, false, {1, nullptr}, xd, xf, file);
    Matrix const gamma = read_matrix(wf, mlp + "film_gamma", xE, xf, file), beta = read_matrix(wf, mlp + "film_beta", xE, xf, file);
    auto const input = SafetensorsFile::open(a.case_dir / "input.safetensors");
    Matrix const x = read_matrix(input, "hidden_states", any_extent, xd, file);
    using Film = smoe::expert::Film<Swi>;
    Film::Weights const fw{ffn.weights(), MatrixView<float const>(gamma.data.data(), E, f), MatrixView<float const>(beta.data.data(), E, f)};
    Film::Config const fc{ffn.cfg, E};
    MatrixView<float const> const g(gate.data.data(), E, d), xv(x.data.data(), x.rows, d);
    std::int64_t const T = std::max<std::int64_t>(x.rows, 1);
    std::vector<float> y(x.data.size());
    SafetensorsWriter w;
    if (merged) {
        using Layer = smoe::layer::FilmMerged<Swi>;
        Layer layer = as_config_error(file, [&] { return Layer({.router = rc, .expert = fc, .max_tokens = T}, {g, fw}); });
        add_token_major(w, layer.forward(xv, MatrixView<float>(y.data(), x.rows, d)));
    } else {
        using Layer = smoe::MoELayer<smoe::router::TopK, Film, smoe::balance::None>;
        Layer layer = as_config_error(file, [&] { return Layer({.router = rc, .expert = fc, .max_tokens = T}, {g, {}, fw}); });
        add_token_major(w, layer.forward(xv, MatrixView<float>(y.data(), x.rows, d)));
    }
    w.add_f32("hidden_states", {x.rows, d}, y);
    w.write(a.out_file);
    return 0;
}

}  // namespace

bool is_research_layer(nlohmann::json const& config) {
    if (!config.contains("layer") || !config["layer"].is_string()) return false;
    std::string const l = config["layer"].get<std::string>();
    return l == "chain_of_experts" || l == "recurrent_router" || l == "smear" || l == "film";
}

int run_research_layer(Args const& a, nlohmann::json const& config) {
    std::string const file = a.config_file(), l = config["layer"].get<std::string>();
    if (l == "chain_of_experts") return run_chain_case(a, config, file);
    if (l == "recurrent_router") return run_recurrent_case(a, config, file);
    if (l == "film") return run_film_case(a, config, file);
    return run_smear_case(a, config, file);
}

}  // namespace smoe_run
