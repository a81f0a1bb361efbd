// Router-only cases (cases.md "Router-only configs"): router_logits [T, E] (or [T, E+N] for null
// experts) and an optional expert_bias [E] through one router and its balancer; the routing, the
// load statistics and the losses are written. Every key is checked: an unknown one is an error.

#include <algorithm>
#include <cmath>
#include <optional>
#include <set>
#include <string>

#include "case_io.hpp"
#include "smoe/io/hf_config.hpp"
#include "smoe/smoe.hpp"

namespace smoe_run {

namespace {

using smoe::MatrixView;
using smoe::io::detail::ConfigReader;

struct BalanceKeys {
    std::optional<double> capacity_factor;
    smoe::balance::DropPolicy drop_policy = smoe::balance::DropPolicy::probs;
    bool pad = false;
    std::int64_t min_capacity = 0;
    std::optional<double> bias_update_rate;
    smoe::balance::StatsOptions stats;
    std::optional<double> l1_reg_coeff;
    std::optional<std::int64_t> target_top_k;
    std::optional<smoe::balance::LeastLoadedConfig> llep;  // llep_* keys (research.md §6)
};

struct Case {
    std::string file;  // config.json, for messages
    nlohmann::json const& j;
    std::vector<std::string> defaulted;
    ConfigReader r;
    std::set<std::string> allowed{"router", "num_experts", "moe_expert_capacity_factor", "moe_token_drop_policy",
                                  "moe_pad_expert_input_to_capacity", "min_capacity", "moe_router_bias_update_rate",
                                  "moe_aux_loss_coeff", "moe_z_loss_coeff", "llep_num_workers", "llep_max_tokens_factor",
                                  "llep_min_tokens_per_gemm", "llep_adaptive_ratio"};

    Case(std::string f, nlohmann::json const& json) : file(std::move(f)), j(json), r(json, file, defaulted) {}

    void allow(std::initializer_list<char const*> keys) { allowed.insert(keys.begin(), keys.end()); }
    void check_keys() const { check_known_keys(j, file, allowed, "this router or of the balancers"); }
    smoe::router::ScoreFunc score_func() const {
        std::string const s = r.string("score_func", std::string("softmax"));
        if (s == "softmax") return smoe::router::ScoreFunc::softmax;
        if (s == "sigmoid") return smoe::router::ScoreFunc::sigmoid;
        smoe::io::detail::file_fail(file, "key 'score_func'", s, "\"softmax\" or \"sigmoid\"");
    }
    BalanceKeys balance_keys() const {
        BalanceKeys b;
        if (r.has("moe_expert_capacity_factor")) b.capacity_factor = r.number("moe_expert_capacity_factor", std::nullopt);
        if (r.has("moe_token_drop_policy")) {
            try {
                b.drop_policy = smoe::balance::parse_drop_policy(r.string("moe_token_drop_policy", std::nullopt));
            } catch (smoe::invalid_argument const& e) {
                throw smoe::io::file_error(file, "key 'moe_token_drop_policy'", e.value(), e.expected());
            }
        }
        b.pad = r.boolean("moe_pad_expert_input_to_capacity", false);
        b.min_capacity = r.has("min_capacity") ? r.integer("min_capacity", std::nullopt, 0) : 0;
        if (r.has("moe_router_bias_update_rate")) b.bias_update_rate = r.number("moe_router_bias_update_rate", std::nullopt);
        if (r.has("moe_aux_loss_coeff")) b.stats.aux_loss_coeff = r.number("moe_aux_loss_coeff", std::nullopt);
        if (r.has("moe_z_loss_coeff")) b.stats.z_loss_coeff = r.number("moe_z_loss_coeff", std::nullopt);
        if (r.has("l1_reg_coeff")) b.l1_reg_coeff = r.number("l1_reg_coeff", std::nullopt);
        if (r.has("target_top_k")) b.target_top_k = r.integer("target_top_k", std::nullopt);
        if (r.has("llep_num_workers")) {
            smoe::balance::LeastLoadedConfig l{.num_workers = r.integer("llep_num_workers", std::nullopt)};
            if (r.has("llep_max_tokens_factor")) l.max_tokens_factor = r.number("llep_max_tokens_factor", std::nullopt);
            if (r.has("llep_min_tokens_per_gemm")) l.min_tokens_per_gemm = r.integer("llep_min_tokens_per_gemm", std::nullopt);
            if (r.has("llep_adaptive_ratio")) l.adaptive_ratio = r.number("llep_adaptive_ratio", std::nullopt);
            b.llep = l;
        } else if (r.has("llep_max_tokens_factor") || r.has("llep_min_tokens_per_gemm") || r.has("llep_adaptive_ratio")) {
            smoe::io::detail::file_fail(file, "key 'llep_num_workers'", "missing", "the worker count of the llep_* keys (research.md §6)");
        }
        if (b.llep && (b.capacity_factor || b.bias_update_rate))
            smoe::io::detail::file_fail(file, "key 'llep_num_workers'", b.llep->num_workers,
                                        "llep rerouting alone, without a capacity or bias balancer");
        bool const capacity_only = b.pad || r.has("moe_token_drop_policy") || r.has("min_capacity");
        if (capacity_only && !b.capacity_factor)
            smoe::io::detail::file_fail(file, "key 'moe_expert_capacity_factor'", "missing",
                                        "a capacity factor with moe_token_drop_policy / moe_pad_expert_input_to_capacity / min_capacity");
        if (b.capacity_factor && b.bias_update_rate)
            smoe::io::detail::file_fail(file, "key 'moe_router_bias_update_rate'", *b.bias_update_rate,
                                        "either a capacity balancer (moe_expert_capacity_factor) or bias balancing, not both");
        if (b.l1_reg_coeff.has_value() != b.target_top_k.has_value())
            smoe::io::detail::file_fail(file, b.l1_reg_coeff ? "key 'target_top_k'" : "key 'l1_reg_coeff'", "missing",
                                        "l1_reg_coeff and target_top_k together (ReMoE's L1 regulariser)");
        return b;
    }
};

// ReMoE's L1 regulariser: Megatron's switch loss on the relu outputs, c_e counting the tokens whose
// output for e is positive, with target_top_k as its k, times l1_reg_coeff.
double remoe_l1(MatrixView<float const> logits, std::int64_t target_k, double coeff) {
    std::int64_t const T = logits.rows, E = logits.cols;
    if (T == 0) return 0.0;
    double sum = 0.0;
    for (std::int64_t e = 0; e < E; ++e) {
        double s = 0.0;
        std::int64_t c = 0;
        for (std::int64_t t = 0; t < T; ++t)
            if (logits(t, e) > 0.0f) {
                s += logits(t, e);
                ++c;
            }
        sum += s * double(c);
    }
    return coeff * double(E) / (double(target_k) * double(T) * double(T)) * sum;
}

struct Inputs {
    Matrix logits;
    std::vector<float> bias;  // empty when the file has none
};

template <class Router, class Balancer>
void route_and_write(Args const& a, Router const& router, Balancer& balancer, Inputs const& in, BalanceKeys const& keys,
                     std::string const& input_name) {
    std::int64_t const T = in.logits.rows, E = router.num_experts();
    MatrixView<float const> const logits(in.logits.data.data(), T, in.logits.cols);
    std::vector<std::byte> ws(smoe::routing_workspace_size(router, balancer, std::max<std::int64_t>(T, 1)));
    std::span<float const> bias = in.bias;
    if constexpr (requires { balancer.set_bias(bias); }) {
        if (bias.empty())
            smoe::io::detail::file_fail(input_name, "tensor 'expert_bias'", "missing", "the bias that moe_router_bias_update_rate updates, F32 [E]");
        balancer.set_bias(bias);
    } else if constexpr (!smoe::router_accepts_selection_bias<Router>()) {
        if (!bias.empty())
            smoe::io::detail::file_fail(input_name, "tensor 'expert_bias'", "present",
                                        "no expert_bias: this router does not select with a bias (routing.md)");
    }
    smoe::RoutingResult const r = smoe::route(router, balancer, logits, bias, ws);

    SafetensorsWriter w;
    add_token_major(w, r);
    if constexpr (requires { router.capacity(T); }) {
        std::int64_t const C = router.capacity(T);
        std::vector<std::int32_t> ids(static_cast<std::size_t>(E * C), -1);
        std::vector<float> wts(static_cast<std::size_t>(E * C), 0.0f);
        for (std::int64_t e = 0; e < E; ++e)
            for (std::int32_t i = r.offsets[e]; i < r.offsets[e + 1]; ++i) {
                auto const at = static_cast<std::size_t>(e * C + (i - r.offsets[e]));
                ids[at] = r.token_ids[i];
                wts[at] = r.weights[i];
            }
        w.add_i32("token_ids", {E, C}, ids);
        w.add_f32("weights", {E, C}, wts);
    }
    if constexpr (Balancer::drops_tokens) {
        std::vector<std::uint8_t> dropped(r.dropped.begin(), r.dropped.end());
        w.add_u8("dropped", {T, r.k}, dropped);
    }
    auto const& st = balancer.stats();
    std::vector<std::int32_t> kept(st.kept.begin(), st.kept.end());
    if (kept.empty()) kept.assign(static_cast<std::size_t>(E), 0);
    w.add_i32("tokens_per_expert", {E}, kept);
    if (keys.l1_reg_coeff) {
        float const v = static_cast<float>(remoe_l1(logits, *keys.target_top_k, *keys.l1_reg_coeff));
        w.add_f32("aux_loss", {1}, std::span<float const>(&v, 1));
    } else if (st.aux_loss) {
        float const v = static_cast<float>(*st.aux_loss);
        w.add_f32("aux_loss", {1}, std::span<float const>(&v, 1));
    }
    if (st.z_loss) {
        float const v = static_cast<float>(*st.z_loss);
        w.add_f32("z_loss", {1}, std::span<float const>(&v, 1));
    }
    if constexpr (requires { balancer.update(); }) {
        balancer.update();
        w.add_f32("updated_bias", {E}, balancer.bias());
    }
    if constexpr (requires { balancer.llep_stats(); }) {
        auto const& ls = balancer.llep_stats();
        auto const Wn = static_cast<std::int64_t>(ls.native_load.size());
        std::vector<std::int32_t> native(ls.native_load.begin(), ls.native_load.end()), planned(ls.planned_load.begin(), ls.planned_load.end());
        w.add_i32("llep_native_load", {Wn}, native);
        w.add_i32("llep_planned_load", {Wn}, planned);
    }
    w.write(a.out_file);
}

// build(), with a smoe::invalid_argument from a config's validation turned into one that names
// config.json and the key.
template <class F>
auto keyed(std::string const& config_name, F&& build) {
    try {
        return build();
    } catch (smoe::io::file_error const&) {
        throw;
    } catch (smoe::invalid_argument const& e) {
        throw smoe::io::file_error(config_name, "key '" + e.argument() + "'", e.value(), e.expected());
    }
}

// The balancer the keys ask for, around one router.
template <class Router>
void with_balancer(Args const& a, Router const& router, Inputs const& in, BalanceKeys const& keys, std::string const& input_name,
                   std::string const& config_name) {
    if (keys.capacity_factor) {
        if constexpr (smoe::router_bounds_load<Router>()) {
            smoe::io::detail::file_fail(config_name, "key 'moe_expert_capacity_factor'", *keys.capacity_factor,
                                        "no capacity balancer with expert choice (each expert already takes C tokens; set capacity)");
        } else {
            smoe::balance::CapacityConfig const bc{.capacity_factor = *keys.capacity_factor,
                                                   .drop_policy = keys.drop_policy,
                                                   .pad_to_capacity = keys.pad,
                                                   .min_capacity = keys.min_capacity,
                                                   .stats = keys.stats};
            keyed(config_name, [&] { bc.validate(); });
            smoe::balance::Capacity b(bc);
            route_and_write(a, router, b, in, keys, input_name);
        }
    } else if (keys.bias_update_rate) {
        if constexpr (!smoe::router_accepts_selection_bias<Router>()) {
            smoe::io::detail::file_fail(config_name, "key 'moe_router_bias_update_rate'", *keys.bias_update_rate,
                                        "router \"topk\" (the only router that selects with a bias)");
        } else {
            smoe::balance::LossFreeBiasConfig const bc{.num_experts = router.num_experts(),
                                                       .bias_update_rate = *keys.bias_update_rate, .stats = keys.stats};
            keyed(config_name, [&] { bc.validate(); });
            smoe::balance::LossFreeBias b(bc);
            route_and_write(a, router, b, in, keys, input_name);
        }
    } else if (keys.llep) {
        smoe::balance::LeastLoadedConfig bc = *keys.llep;
        bc.num_experts = router.num_experts();
        bc.stats = keys.stats;
        keyed(config_name, [&] { bc.validate(); });
        smoe::balance::LeastLoaded b(bc);
        route_and_write(a, router, b, in, keys, input_name);
    } else {
        keyed(config_name, [&] { keys.stats.validate(); });
        smoe::balance::None b({.stats = keys.stats});
        route_and_write(a, router, b, in, keys, input_name);
    }
}

}  // namespace

int run_router_case(Args const& a, nlohmann::json const& config) {
    Case c((a.case_dir / "config.json").string(), config);
    std::string const name = c.r.string("router", std::nullopt);
    std::int64_t const E = c.r.integer("num_experts", std::nullopt);

    auto const input_path = (a.case_dir / "input.safetensors").string();
    auto const input = SafetensorsFile::open(input_path);
    // Null experts add N logit columns, so the columns' key is both (each bounded: no overflow).
    auto read_inputs = [&](std::int64_t cols) {
        Inputs in;
        in.logits = read_matrix(input, "router_logits", any_extent,
                                {cols, cols == E ? "num_experts" : "num_experts + num_null_experts"}, c.file);
        if (input.find("expert_bias")) in.bias = read_vector(input, "expert_bias", {E, "num_experts"}, c.file);
        return in;
    };
    auto make = [&](auto&& build) { return keyed(c.file, build); };

    if (name == "topk") {
        c.allow({"top_k", "score_func", "norm_topk_prob", "score_after_topk", "routed_scaling_factor", "n_group", "topk_group"});
        c.check_keys();
        auto const keys = c.balance_keys();
        auto router = make([&] {
            return smoe::router::TopK({.num_experts = E,
                                       .top_k = c.r.integer("top_k", std::nullopt),
                                       .score_func = c.score_func(),
                                       .norm_topk_prob = c.r.boolean("norm_topk_prob", false),
                                       .score_after_topk = c.r.boolean("score_after_topk", false),
                                       .routed_scaling_factor = c.r.number_f32("routed_scaling_factor", 1.0),
                                       .n_group = c.r.integer("n_group", 1),
                                       .topk_group = c.r.integer("topk_group", 0, 0)});
        });
        with_balancer(a, router, read_inputs(E), keys, input_path, c.file);
    } else if (name == "expert_choice") {
        c.allow({"capacity", "capacity_factor", "score_func"});
        c.check_keys();
        auto const keys = c.balance_keys();
        auto router = make([&] {
            smoe::router::ExpertChoiceConfig rc{.num_experts = E, .score_func = c.score_func()};
            if (c.r.has("capacity")) rc.capacity = c.r.integer("capacity", std::nullopt);
            if (c.r.has("capacity_factor")) rc.capacity_factor = c.r.number("capacity_factor", std::nullopt);
            return smoe::router::ExpertChoice(rc);
        });
        with_balancer(a, router, read_inputs(E), keys, input_path, c.file);
    } else if (name == "top_p") {
        c.allow({"top_p", "max_k", "min_k"});
        c.check_keys();
        auto const keys = c.balance_keys();
        auto router = make([&] {
            smoe::router::TopPConfig rc{.num_experts = E};
            if (c.r.has("top_p")) rc.top_p = c.r.number_f32("top_p", std::nullopt);
            if (c.r.has("max_k")) rc.max_k = c.r.integer("max_k", std::nullopt);
            if (c.r.has("min_k")) rc.min_k = c.r.integer("min_k", std::nullopt);
            return smoe::router::TopP(rc);
        });
        with_balancer(a, router, read_inputs(E), keys, input_path, c.file);
    } else if (name == "null_expert") {
        c.allow({"num_null_experts", "top_k"});
        c.check_keys();
        auto const keys = c.balance_keys();
        auto router = make([&] {
            return smoe::router::NullExpert({.num_experts = E,
                                             .num_null_experts = c.r.integer("num_null_experts", std::nullopt, 0),
                                             .top_k = c.r.integer("top_k", std::nullopt)});
        });
        with_balancer(a, router, read_inputs(router.num_logits()), keys, input_path, c.file);
    } else if (name == "relu") {
        c.allow({"l1_reg_coeff", "target_top_k"});
        c.check_keys();
        auto const keys = c.balance_keys();
        auto router = make([&] { return smoe::router::ReLU({.num_experts = E}); });
        with_balancer(a, router, read_inputs(E), keys, input_path, c.file);
    } else if (name == "sinkhorn") {
        c.allow({"top_k", "tol", "max_iterations"});
        c.check_keys();
        auto const keys = c.balance_keys();
        auto router = make([&] {
            smoe::router::SinkhornConfig rc{.num_experts = E, .top_k = c.r.integer("top_k", std::nullopt)};
            if (c.r.has("tol")) rc.tol = c.r.number("tol", std::nullopt);
            if (c.r.has("max_iterations")) rc.max_iterations = c.r.integer("max_iterations", std::nullopt, 0);
            return smoe::router::Sinkhorn(rc);
        });
        with_balancer(a, router, read_inputs(E), keys, input_path, c.file);
    } else if (name == "race") {
        c.allow({"top_k", "score_func", "race_group"});
        c.check_keys();
        auto const keys = c.balance_keys();
        auto router = make([&] {
            return smoe::router::Race({.num_experts = E,
                                       .top_k = c.r.integer("top_k", std::nullopt),
                                       .score = smoe::router::parse_race_score(c.r.string("score_func", std::string("identity"))),
                                       .race_group = c.r.integer("race_group", 0, 0)});
        });
        with_balancer(a, router, read_inputs(E), keys, input_path, c.file);
    } else {
        smoe::io::detail::file_fail(c.file, "key 'router'", name, "one of topk, expert_choice, top_p, null_expert, relu, sinkhorn, race");
    }
    return 0;
}

}  // namespace smoe_run
