// demo_engine: a small host engine around smoe's MoE layers. It builds a model of several MoE
// layers (by default a random DeepSeek-like model in memory, loaded through the same Hugging Face
// loader as a real checkpoint; --model DIR loads a real checkpoint folder instead), runs a prefill
// batch and then token-by-token decode through a residual stream (RMS-normalised input to each
// layer, y added back), and reports tokens per second, the memory of weights and workspaces, and
// per-layer per-expert load as a table and a text histogram.
//
//   demo_engine [--model DIR] [--shape deepseek|mixtral|qwen3_moe|gpt_oss|llama4] [--layers N] [--prefill T] [--decode N]
//               [--dtype bf16|f32|int8|int4|fp8|mxfp4] [--threads N] [--seed S] [--shard] [--hidden D] [--ffn F]
//               [--router topk|chain|rmoe]
//
// --router chain runs Chain-of-Experts layers (layer::Chain, research.md §1: 2 passes of top-2 over 32
// experts and a shared expert, as many expert evaluations as top-4) and --router rmoe RMoE layers
// (layer::Recurrent, §2: a GRU router state of width 128 carried from each MoE layer to the next and
// reset for every forward pass), both on a random bf16 model of the deepseek shape built in memory.
//
// --dtype int8 and int4 quantise bf16 weights at load; fp8 and mxfp4 make the random model a quantised
// checkpoint (DeepSeek-FP8 block layout, weight_scale_inv with weight_block_size [128, 128]; resp.
// compressed-tensors mxfp4-pack-quantized experts with a dense bf16 shared expert), with its
// quantization_config, so the loader reads them as it would a published one.
//
// qwen3_moe, gpt_oss and llama4 are at their published widths (Qwen3-30B-A3B: d 2048, 128 experts of
// 768, top-8; gpt-oss-20b's layer with 32 experts of 2880, top-4, clamped SwiGLU with biases; Llama 4
// Scout: d 5120, 16 experts of 8192, top-1, shared expert, the weight on the expert input), under their
// files' tensor names; one or two layers by default (a Llama 4 layer holds 4.3 GB in bf16).
//
//   mpiexec -n 2 demo_engine --shard     experts sharded over the ranks (expert parallelism, MPI builds)
//
// --store mapped|cached writes the model's routed experts into a packed expert file first (--packed
// FILE, default a temporary file; smoe/store/), then runs them from it: mapped (the OS pages them) or
// cached within --budget-frac of each layer's expert bytes (--eviction lru|lfu; --global-budget: that
// share of the whole model's expert bytes in one cache the layers share, evicting across layers); --pregate prefetches
// each next layer's experts predicted by its router on the current layer's input (store/pregate.hpp).
// Each layer's store statistics are printed with the load table.
//
// A model larger than memory (issue 17 item 5): --write-model SIZE generates a random model's routed
// experts one at a time and packs each straight into the packed file (no checkpoint: peak memory about
// one expert), as many layers of the --shape as make SIZE bytes of expert records (SIZE: bytes with a
// K/M/G/T suffix, or Nx for N times this machine's physical memory), then runs it from the file.
// --sweep LIST runs prefill and decode once per entry on the same file (mapped, resident, or a budget
// fraction F for cached; the page cache dropped before each) and prints a table: decode tokens/s, the
// bytes read from the disk per token (/proc/self/io), the store's bytes read per token and its hit rate.
// --direct: cached stores read with O_DIRECT (the budget is then all the memory the experts take).
// --reuse-packed runs the file an earlier --write-model --packed FILE left (its routers drawn again:
// random either way). A cached budget over the memory available now (less 2 GiB) is skipped, not run.
//
//   demo_engine --shape qwen3_moe --dtype int8 --write-model 1.5x --sweep mapped,0.1,0.25,0.5 --prefill 4 --decode 16

#include <algorithm>
#include <array>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <exception>
#include <filesystem>
#include <optional>
#include <random>
#include <span>
#include <string>
#include <vector>

#include <unistd.h>

#include "smoe/core/bf16.hpp"
#include "smoe/expert/shared.hpp"
#include "smoe/io/checkpoint.hpp"
#include "smoe/io/hf_config.hpp"
#include "smoe/io/hf_moe.hpp"
#include "smoe/io/hf_pack.hpp"
#include "smoe/io/tensor_map.hpp"
#include "smoe/store/pregate.hpp"
#include "smoe/layer/chain.hpp"
#include "smoe/layer/recurrent.hpp"

#ifdef SMOE_DEMO_MPI
#include <mpi.h>

#include "smoe/dist/mpi_communicator.hpp"
#include "smoe/io/hf_sharded.hpp"
#endif

namespace {

using smoe::io::Dtype;
using smoe::io::HfMoeLayer;
using Clock = std::chrono::steady_clock;

struct Options {
    std::optional<std::string> model;
    std::string shape = "deepseek";
    std::int64_t layers = 4;
    bool layers_given = false;
    std::int64_t prefill = 128;
    std::int64_t decode = 32;
    std::string dtype = "bf16";
    smoe::expert::Int8Dot int8_dot = smoe::expert::Int8Dot::off;
    smoe::expert::Bf16Dot bf16_dot = smoe::expert::Bf16Dot::automatic;
    std::int64_t threads = 2;
    std::int64_t hidden = 0, ffn = 0;  // random model: d and the expert width instead of the shape's
    bool shard = false;
    std::uint64_t seed = 1;
    std::string store = "resident";  // resident, mapped, cached
    double budget_frac = 0.25;       // cached: the share of each layer's expert bytes held
    bool global_budget = false;      // cached: budget_frac of the model's expert bytes, one cache for every layer
    std::string eviction = "lru";
    std::string packed;              // the packed file (default: a temporary one)
    bool pregate = false;
    std::uint64_t write_model = 0;   // bytes of expert records to generate into the packed file
    bool reuse_packed = false;       // --write-model's file exists already (--packed FILE): run it again
    std::vector<std::string> sweep;  // store configurations run one after the other: mapped, resident or F
    bool direct = false;             // cached: O_DIRECT reads
    std::string router = "topk";  // topk: the Hugging Face model; chain, rmoe: research layers (research.md §1, §2)
};

[[noreturn]] void usage(std::string const& msg) {
    std::fprintf(stderr,
                 "demo_engine: %s\n"
                 "usage: demo_engine [--model DIR] [--shape deepseek|mixtral|qwen3_moe|gpt_oss|llama4] [--layers N] [--prefill T]\n"
                 "                   [--decode N]\n"
                 "                   [--dtype bf16|f32|int8|int4|fp8|mxfp4] [--threads N] [--seed S] [--shard (under mpiexec)]\n"
                 "                   [--hidden D] [--ffn F] (the random model's d and expert width)\n"
                 "                   [--int8-dot off|on|avx2|avx-vnni|portable] (int4/int8/MXFP4 experts: formats.md 6.2's int8 dot path)\n"
                 "                   [--bf16-dot automatic|off|on|emulated] (on/emulated: also FP8/MXFP4 experts)\n"
                 "                   [--store resident|mapped|cached] [--budget-frac F] [--global-budget] [--eviction lru|lfu] [--packed FILE]\n"
                 "                   [--pregate] (experts from a packed file; prefetch by the next layer's router)\n"
                 "                   [--write-model SIZE] (a random model of SIZE bytes of experts, K/M/G/T or Nx memory, written\n"
                 "                   straight to the packed file) [--sweep mapped,resident,F,...] (one run per store) [--direct]\n"
                 "                   [--reuse-packed] (with --write-model and --packed FILE: the file written before)\n"
                 "                   [--router topk|chain|rmoe] (chain: Chain-of-Experts layers, rmoe: recurrent-router layers)\n",
                 msg.c_str());
    std::exit(2);
}

// Bytes, with a K/M/G/T suffix (powers of 1024), or "Nx": N times the physical memory.
std::uint64_t parse_size(char const* flag, std::string const& v) {
    char* end = nullptr;
    double const x = std::strtod(v.c_str(), &end);
    std::string const suffix = end ? std::string(end) : std::string();
    double scale = 1;
    if (suffix == "x") scale = double(::sysconf(_SC_PHYS_PAGES)) * double(::sysconf(_SC_PAGESIZE));
    else if (suffix == "K") scale = 1024.0;
    else if (suffix == "M") scale = 1024.0 * 1024;
    else if (suffix == "G") scale = 1024.0 * 1024 * 1024;
    else if (suffix == "T") scale = 1024.0 * 1024 * 1024 * 1024;
    else if (!suffix.empty()) scale = -1;
    if (end == v.c_str() || scale <= 0 || !(x > 0) || x * scale > 1e15)
        usage(std::string(flag) + ": '" + v + "' is not a size (bytes with K, M, G or T, or Nx of the physical memory)");
    return static_cast<std::uint64_t>(x * scale);
}

// A --budget-frac value: in (0, 1].
double parse_fraction(char const* flag, std::string const& v) {
    char* end = nullptr;
    double const f = std::strtod(v.c_str(), &end);
    if (end == v.c_str() || *end != '\0' || !(f > 0.0 && f <= 1.0)) usage(std::string(flag) + ": '" + v + "' is not in (0, 1]");
    return f;
}

std::int64_t parse_count(char const* flag, char const* v, std::int64_t min) {
    char* end = nullptr;
    long long const x = std::strtoll(v, &end, 10);
    if (end == v || *end != '\0' || x < min || x > 1'000'000) usage(std::string(flag) + ": '" + v + "' is not a count >= " + std::to_string(min));
    return x;
}

Options parse(int argc, char** argv) {
    Options o;
    for (int i = 1; i < argc; ++i) {
        std::string const a = argv[i];
        auto value = [&]() -> char const* {
            if (i + 1 >= argc) usage(a + " needs a value");
            return argv[++i];
        };
        if (a == "--model") o.model = value();
        else if (a == "--shape") o.shape = value();
        else if (a == "--layers") o.layers = parse_count("--layers", value(), 1), o.layers_given = true;
        else if (a == "--prefill") o.prefill = parse_count("--prefill", value(), 1);
        else if (a == "--decode") o.decode = parse_count("--decode", value(), 0);
        else if (a == "--dtype") o.dtype = value();
        else if (a == "--int8-dot") {
            std::string const v = value();
            auto const d = smoe::expert::parse_int8_dot(v);
            if (!d) usage("--int8-dot: '" + v + "' is not off, on, avx2, avx-vnni or portable");
            o.int8_dot = *d;
        } else if (a == "--bf16-dot") {
            std::string const v = value();
            auto const d = smoe::expert::parse_bf16_dot(v);
            if (!d) usage("--bf16-dot: '" + v + "' is not automatic, off, on or emulated");
            o.bf16_dot = *d;
        }
        else if (a == "--threads") o.threads = parse_count("--threads", value(), 1);
        else if (a == "--shard") o.shard = true;
        else if (a == "--hidden") o.hidden = parse_count("--hidden", value(), 1);
        else if (a == "--ffn") o.ffn = parse_count("--ffn", value(), 1);
        else if (a == "--seed") o.seed = static_cast<std::uint64_t>(parse_count("--seed", value(), 0));
        else if (a == "--store") o.store = value();
        else if (a == "--eviction") o.eviction = value();
        else if (a == "--packed") o.packed = value();
        else if (a == "--pregate") o.pregate = true;
        else if (a == "--budget-frac") o.budget_frac = parse_fraction("--budget-frac", value());
        else if (a == "--global-budget") o.global_budget = true;
        else if (a == "--write-model") o.write_model = parse_size("--write-model", value());
        else if (a == "--direct") o.direct = true;
        else if (a == "--reuse-packed") o.reuse_packed = true;
        else if (a == "--sweep") {
            std::string const v = value();
            for (std::size_t b = 0, e; b <= v.size(); b = e + 1) {
                e = std::min(v.find(',', b), v.size());
                std::string const item = v.substr(b, e - b);
                if (item != "mapped" && item != "resident") parse_fraction("--sweep", item);
                o.sweep.push_back(item);
            }
        }
        else if (a == "--router") o.router = value();
        else if (a == "-h" || a == "--help") usage("a host engine around smoe's MoE layers");
        else usage("unknown argument '" + a + "'");
    }
    if (o.shape != "deepseek" && o.shape != "mixtral" && o.shape != "qwen3_moe" && o.shape != "gpt_oss" && o.shape != "llama4")
        usage("--shape: '" + o.shape + "' is not deepseek, mixtral, qwen3_moe, gpt_oss or llama4");
    bool const fused = o.shape == "gpt_oss" || o.shape == "llama4";  // the files hold fused expert stacks
    if (!o.model && fused && (o.dtype == "fp8" || o.dtype == "mxfp4" || o.dtype == "int4"))
        usage("--dtype " + o.dtype + ": the random " + o.shape + " model has fused bf16/f32 experts (use bf16, f32 or int8)");
    if (!o.layers_given && (fused || o.shape == "qwen3_moe")) o.layers = o.shape == "llama4" ? 1 : 2;
    if (o.dtype != "bf16" && o.dtype != "f32" && o.dtype != "int8" && o.dtype != "int4" && o.dtype != "fp8" && o.dtype != "mxfp4")
        usage("--dtype: '" + o.dtype + "' is not bf16, f32, int8, int4, fp8 or mxfp4");
    if (o.store != "resident" && o.store != "mapped" && o.store != "cached") usage("--store: '" + o.store + "' is not resident, mapped or cached");
    if (o.eviction != "lru" && o.eviction != "lfu") usage("--eviction: '" + o.eviction + "' is not lru or lfu");
    if (o.pregate && o.store == "resident") usage("--pregate needs --store mapped or cached (nothing to prefetch into otherwise)");
    if (o.router != "topk" && o.router != "chain" && o.router != "rmoe") usage("--router: '" + o.router + "' is not topk, chain or rmoe");
    if (o.router != "topk" && (o.model || o.shard || o.dtype != "bf16" || o.shape != "deepseek" || o.store != "resident"))
        usage("--router " + o.router + ": a random bf16 model of the deepseek shape only (no --model, --shard, --dtype, --shape or --store)");
    if (o.write_model > 0 && (o.model || o.shard || o.router != "topk" || fused || o.dtype == "fp8" || o.dtype == "mxfp4"))
        usage("--write-model: a random model of per-expert tensors (deepseek, mixtral or qwen3_moe) in f32, bf16, int8 or int4, one process");
    if (o.reuse_packed && (o.write_model == 0 || o.packed.empty()))
        usage("--reuse-packed: runs the file an earlier --write-model wrote (give the same --write-model, --shape, --dtype and --packed)");
    if (o.write_model > 0 && o.store == "resident" && o.sweep.empty())
        usage("--write-model: the model runs from its file (--store mapped|cached, or --sweep)");
    if (!o.sweep.empty() && (o.shard || o.router != "topk")) usage("--sweep: one process, --router topk");
    if (o.direct && o.store != "cached" && o.sweep.empty()) usage("--direct: for --store cached (or --sweep)");
    if (o.model && (o.dtype == "fp8" || o.dtype == "mxfp4"))
        usage("--dtype " + o.dtype + ": for the random model only (a checkpoint's quantised experts load in their own format)");
    return o;
}

// The random model's config, as a Hugging Face config.json would hold it: small enough to build and
// run in seconds on 2 cores, with the structure of the real thing.
nlohmann::json random_config(Options const& o) {
    std::int64_t const d = o.hidden ? o.hidden : 1024;
    nlohmann::json j;
    if (o.dtype == "fp8")
        j["quantization_config"] = {{"quant_method", "fp8"}, {"fmt", "e4m3"}, {"activation_scheme", "dynamic"}, {"weight_block_size", {128, 128}}};
    if (o.dtype == "mxfp4")
        j["quantization_config"] = {
            {"quant_method", "compressed-tensors"}, {"format", "mxfp4-pack-quantized"}, {"quantization_status", "compressed"},
            {"config_groups",
             {{"group_0",
               {{"targets", {"re:.*\\.experts\\..*"}},
                {"weights", {{"num_bits", 4}, {"type", "float"}, {"symmetric", true}, {"strategy", "group"}, {"group_size", 32}}}}}}},
            {"ignore", {"lm_head"}}};
    if (o.shape == "mixtral") {
        j.update({{"model_type", "mixtral"}, {"hidden_size", d}, {"intermediate_size", o.ffn ? o.ffn : 3584}, {"num_local_experts", 8},
                  {"num_experts_per_tok", 2}, {"num_hidden_layers", o.layers}, {"hidden_act", "silu"}});
        return j;
    }
    if (o.shape == "qwen3_moe") {
        j.update({{"model_type", "qwen3_moe"}, {"hidden_size", o.hidden ? o.hidden : 2048}, {"moe_intermediate_size", o.ffn ? o.ffn : 768},
                  {"num_experts", 128}, {"num_experts_per_tok", 8}, {"norm_topk_prob", true}, {"num_hidden_layers", o.layers}});
        return j;
    }
    if (o.shape == "gpt_oss") {
        j.update({{"model_type", "gpt_oss"}, {"hidden_size", o.hidden ? o.hidden : 2880}, {"intermediate_size", o.ffn ? o.ffn : 2880},
                  {"num_local_experts", 32}, {"num_experts_per_tok", 4}, {"num_hidden_layers", o.layers}, {"swiglu_limit", 7.0}});
        return j;
    }
    if (o.shape == "llama4") {
        j.update({{"model_type", "llama4_text"}, {"hidden_size", o.hidden ? o.hidden : 5120}, {"intermediate_size", o.ffn ? o.ffn : 8192},
                  {"num_local_experts", 16}, {"num_experts_per_tok", 1}, {"num_hidden_layers", o.layers}});
        return j;
    }
    j.update({{"model_type", "deepseek_v3"}, {"hidden_size", d}, {"moe_intermediate_size", o.ffn ? o.ffn : 512}, {"n_routed_experts", 32},
            {"num_experts_per_tok", 4}, {"n_shared_experts", 1}, {"n_group", 4}, {"topk_group", 2},
            {"routed_scaling_factor", 2.5}, {"norm_topk_prob", true}, {"first_k_dense_replace", 0},
            {"num_hidden_layers", o.layers}, {"hidden_act", "silu"}, {"scoring_func", "sigmoid"}, {"topk_method", "noaux_tc"}});
    return j;
}

// Uniform(-a, a) weights with a = sqrt(3 / fan_in) (unit-variance outputs), in bf16 or fp32, under the
// checkpoint's tensor names; a fast generator, since the model has hundreds of millions of weights.
class RandomModel {
public:
    // dtype: "f32", "bf16" (int8 and int4 quantise bf16 at load) or "fp8" / "mxfp4" (quantised experts).
    RandomModel(smoe::io::HfMoeConfig const& c, std::string dtype, std::uint64_t seed)
        : cfg_(c), bf16_(dtype != "f32"), dtype_(std::move(dtype)), state_(seed * 0x9E3779B97F4A7C15ull + 1) {}

    smoe::io::TensorMap build() {
        smoe::io::TensorMap m("<random model>");
        for (std::int64_t l = 0; l < cfg_.num_hidden_layers; ++l) {
            if (cfg_.family == smoe::io::HfFamily::gpt_oss || cfg_.family == smoe::io::HfFamily::llama4) {
                add_fused(m, l);
                continue;
            }
            add_router(m, l);
            for (std::int64_t e = 0; e < cfg_.num_experts(); ++e) add_routed(m, l, e);
            add_shared(m, l);
        }
        return m;
    }

    // Layer l's router (per-expert families), its routed expert e, its shared expert: --write-model
    // generates the routers and shared experts of all layers and then one routed expert at a time.
    void add_router(smoe::io::TensorMap& m, std::int64_t l) {
        std::int64_t const d = cfg_.hidden_size, E = cfg_.num_experts();
        add(m, prefix(l) + "gate.weight", {E, d}, d, false);
        if (cfg_.router.requires_expert_bias) add(m, prefix(l) + "gate.e_score_correction_bias", {E}, 1000, false);
    }
    void add_routed(smoe::io::TensorMap& m, std::int64_t l, std::int64_t e) {
        std::int64_t const d = cfg_.hidden_size, f = cfg_.intermediate_size;
        bool const mix = cfg_.family == smoe::io::HfFamily::mixtral;
        std::string const q = prefix(l) + "experts." + std::to_string(e) + ".";
        add_expert(m, q + (mix ? "w1" : "gate_proj"), f, d);
        add_expert(m, q + (mix ? "w3" : "up_proj"), f, d);
        add_expert(m, q + (mix ? "w2" : "down_proj"), d, f);
    }
    void add_shared(smoe::io::TensorMap& m, std::int64_t l) {
        std::int64_t const d = cfg_.hidden_size, fs = cfg_.shared_intermediate_size;
        if (fs == 0) return;
        // FP8 checkpoints quantise the shared expert too; the mxfp4 config targets routed experts only.
        std::string const p = prefix(l);
        bool const q = dtype_ == "fp8";
        q ? add_expert(m, p + "shared_experts.gate_proj", fs, d) : add(m, p + "shared_experts.gate_proj.weight", {fs, d}, d, bf16_);
        q ? add_expert(m, p + "shared_experts.up_proj", fs, d) : add(m, p + "shared_experts.up_proj.weight", {fs, d}, d, bf16_);
        q ? add_expert(m, p + "shared_experts.down_proj", d, fs) : add(m, p + "shared_experts.down_proj.weight", {d, fs}, fs, bf16_);
    }

private:
    std::string prefix(std::int64_t l) const {
        return "model.layers." + std::to_string(l) + (cfg_.family == smoe::io::HfFamily::mixtral ? ".block_sparse_moe." : ".mlp.");
    }

    // GPT-OSS (mlp.router.weight/bias, experts.gate_up_proj [E, d, 2f] with gate/up columns interleaved, its
    // bias [E, 2f], down_proj [E, f, d] and its bias [E, d]) and Llama 4 (feed_forward.router.weight, the same
    // stacks with gate columns first, no biases, shared_expert.*): the stacks' rows are inputs, so fan_in d / f.
    void add_fused(smoe::io::TensorMap& m, std::int64_t l) {
        std::int64_t const d = cfg_.hidden_size, f = cfg_.intermediate_size, E = cfg_.num_experts();
        bool const oss = cfg_.family == smoe::io::HfFamily::gpt_oss;
        std::string const p = "model.layers." + std::to_string(l) + (oss ? ".mlp." : ".feed_forward.");
        add(m, p + "router.weight", {E, d}, d, false);
        add(m, p + "experts.gate_up_proj", {E, d, 2 * f}, d, bf16_);
        add(m, p + "experts.down_proj", {E, f, d}, f, bf16_);
        if (oss) {
            add(m, p + "router.bias", {E}, 1000, false);
            add(m, p + "experts.gate_up_proj_bias", {E, 2 * f}, 1000, bf16_);
            add(m, p + "experts.down_proj_bias", {E, d}, 1000, bf16_);
        } else {
            std::int64_t const fs = cfg_.shared_intermediate_size;
            add(m, p + "shared_expert.gate_proj.weight", {fs, d}, d, bf16_);
            add(m, p + "shared_expert.up_proj.weight", {fs, d}, d, bf16_);
            add(m, p + "shared_expert.down_proj.weight", {d, fs}, fs, bf16_);
        }
    }
    float uniform() {  // xorshift64*: fast, and good enough for weights
        state_ ^= state_ >> 12, state_ ^= state_ << 25, state_ ^= state_ >> 27;
        return static_cast<float>((state_ * 2685821657736338717ull) >> 40) * (2.0f / 16777216.0f) - 1.0f;
    }
    void add(smoe::io::TensorMap& m, std::string name, std::vector<std::int64_t> shape, std::int64_t fan_in, bool bf16) {
        std::int64_t n = 1;
        for (auto s : shape) n *= s;
        float const a = std::sqrt(3.0f / static_cast<float>(fan_in));
        if (bf16) {
            std::vector<smoe::bf16> v(static_cast<std::size_t>(n));
            for (auto& x : v) x = smoe::to_bf16(a * uniform());
            m.add_values(std::move(name), Dtype::BF16, std::move(shape), std::span<smoe::bf16 const>(v));
        } else {
            std::vector<float> v(static_cast<std::size_t>(n));
            for (auto& x : v) x = a * uniform();
            m.add_values(std::move(name), Dtype::F32, std::move(shape), std::span<float const>(v));
        }
    }

    std::uint64_t bits() {
        state_ ^= state_ >> 12, state_ ^= state_ << 25, state_ ^= state_ >> 27;
        return state_ * 2685821657736338717ull;
    }
    // One expert matrix [R, C] under module P: dense, FP8 (random e4m3 codes of magnitude 2^-3..~4, one
    // factor per 128 x 128 block) or MXFP4 (random E2M1 codes, one E8M0 scale per 32), all scaled to
    // about the dense weights' range sqrt(3 / C).
    void add_expert(smoe::io::TensorMap& m, std::string const& P, std::int64_t R, std::int64_t C) {
        float const a = std::sqrt(3.0f / static_cast<float>(C));
        auto const n = static_cast<std::size_t>(R * C);
        if (dtype_ == "fp8") {
            std::vector<std::uint8_t> codes(n);
            for (auto& c : codes) {
                std::uint64_t const b = bits() >> 40;
                c = static_cast<std::uint8_t>((b & 0x80) | ((4 + (b >> 3) % 5) << 3) | (b & 7));  // exponent 4..8
            }
            std::int64_t const SR = (R + 127) / 128, SC = (C + 127) / 128;
            std::vector<float> s(static_cast<std::size_t>(SR * SC), a / 2.0f);
            m.add_values(P + ".weight", Dtype::F8_E4M3, {R, C}, std::span<std::uint8_t const>(codes));
            m.add_values(P + ".weight_scale_inv", Dtype::F32, {SR, SC}, std::span<float const>(s));
        } else if (dtype_ == "mxfp4") {
            std::vector<std::uint8_t> packed(n / 2), scales(n / 32, static_cast<std::uint8_t>(127 + std::lround(std::log2(a / 3.0f))));
            for (auto& b : packed) b = static_cast<std::uint8_t>(bits() >> 56);
            m.add_values(P + ".weight_packed", Dtype::U8, {R, C / 2}, std::span<std::uint8_t const>(packed));
            m.add_values(P + ".weight_scale", Dtype::U8, {R, C / 32}, std::span<std::uint8_t const>(scales));
        } else {
            add(m, P + ".weight", {R, C}, C, bf16_);
        }
    }

    smoe::io::HfMoeConfig const& cfg_;
    bool bf16_;
    std::string dtype_;
    std::uint64_t state_;
};

// In place: each row scaled to unit RMS, as the RMSNorm before a decoder's MLP does.
void rms_normalize(float const* in, float* out, std::int64_t rows, std::int64_t d) {
    for (std::int64_t t = 0; t < rows; ++t) {
        double ss = 0;
        for (std::int64_t i = 0; i < d; ++i) ss += double(in[t * d + i]) * in[t * d + i];
        float const s = static_cast<float>(1.0 / std::sqrt(ss / double(d) + 1e-6));
        for (std::int64_t i = 0; i < d; ++i) out[t * d + i] = in[t * d + i] * s;
    }
}

struct Ranks {
    int rank = 0, size = 1;
    void (*barrier)() = [] {};
};

// The batch share of rank r: T tokens split as evenly as possible, the first ranks taking one more.
std::int64_t share(std::int64_t T, Ranks const& r) { return T / r.size + (r.rank < T % r.size ? 1 : 0); }

double seconds_since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

// Cumulative kept slots per expert: this process's, or summed over the ranks (a collective).
template <class Layer>
std::vector<std::uint64_t> cumulative_kept(Layer& l) {
    return l.visit([](auto& layer) {
        if constexpr (requires { layer.global_stats(); })
            return layer.global_stats().global.cumulative_kept;
        else
            return layer.stats().cumulative_kept;
    });
}

// load[i]: layer labels[i]'s cumulative kept slots per expert.
void print_load_table(std::vector<std::vector<std::uint64_t>> const& load, std::vector<std::int64_t> const& labels, Ranks const& ranks) {
    if (ranks.rank != 0) return;
    std::size_t const E = load.front().size();
    std::printf("\ntokens routed to each expert (kept slots, prefill + decode%s)\n  expert", ranks.size > 1 ? ", all ranks" : "");
    for (auto l : labels) std::printf(" %7s", ("L" + std::to_string(l)).c_str());
    std::printf("\n");
    for (std::size_t e = 0; e < E; ++e) {
        std::printf("  %6zu", e);
        for (auto const& c : load) std::printf(" %7llu", static_cast<unsigned long long>(c[e]));
        std::printf("\n");
    }
    // One character per expert, height ∝ load: skew and dead experts show at a glance.
    static char const* const bars[] = {" ", "▁", "▂", "▃", "▄", "▅", "▆", "▇", "█"};
    std::printf("\nload histogram (one column per expert, 0..%zu left to right; max/mean, dead experts)\n", E - 1);
    for (std::size_t i = 0; i < load.size(); ++i) {
        auto const& c = load[i];
        double const mx = static_cast<double>(*std::max_element(c.begin(), c.end()));
        double mean = 0;
        int dead = 0;
        for (auto v : c) mean += static_cast<double>(v), dead += v == 0;
        mean /= static_cast<double>(c.size());
        std::printf("  L%-4lld |", static_cast<long long>(labels[i]));
        for (auto v : c) std::printf("%s", bars[mx > 0 ? static_cast<int>(std::lround(8.0 * static_cast<double>(v) / mx)) : 0]);
        std::printf("|  max/mean %.2f, dead %d\n", mean > 0 ? mx / mean : 0.0, dead);
    }
}

template <class Layer>
void print_load(std::vector<Layer>& layers, Ranks const& ranks) {
    std::vector<std::vector<std::uint64_t>> load;
    std::vector<std::int64_t> labels;
    for (auto& l : layers) load.push_back(cumulative_kept(l)), labels.push_back(l.layer_index());
    print_load_table(load, labels, ranks);
}

// h [T, d] += moe(rmsnorm(h)) through every layer.
// With pregates (one per layer but the last): layer i + 1's experts predicted from layer i's input are
// prefetched before layer i runs.
template <class Layer>
void step(std::vector<Layer>& layers, std::vector<float>& h, std::int64_t T, std::int64_t d, std::vector<float>& normed,
          std::vector<float>& out, std::vector<smoe::store::PreGate>* pregates = nullptr) {
    normed.resize(static_cast<std::size_t>(T * d));
    out.resize(static_cast<std::size_t>(T * d));
    for (std::size_t li = 0; li < layers.size(); ++li) {
        auto& l = layers[li];
        rms_normalize(h.data(), normed.data(), T, d);
        smoe::MatrixView<float const> const x(normed.data(), T, d);
        if (pregates && li + 1 < layers.size())
            if (auto* next = layers[li + 1].expert_store()) (*pregates)[li].prefetch(*next, x);
        l.forward(x, smoe::MatrixView<float>(out.data(), T, d));
        for (std::size_t i = 0; i < out.size(); ++i) h[i] += out[i];
    }
}

// Each layer's expert store: what it holds and what it did (prefill + decode).
template <class Layer>
void print_stores(std::vector<Layer>& layers, Ranks const& ranks) {
    if (ranks.rank != 0) return;
    std::printf("\nexpert store per layer%s (rank 0): held/E (one budget for all layers: the slots it holds now), hit rate, misses, "
                "evictions, MiB read, stall ms, prefetch used/loaded, prediction accuracy, routing consistency\n", ranks.size > 1 ? "" : "");
    for (auto& l : layers) {
        auto* st = l.expert_store();
        if (!st) continue;
        auto const s = st->stats();
        bool const shared = st->shares_cache();
        std::printf("  L%-4lld %-8s %3lld/%-3lld  %5.1f %%  %6lld  %6lld  %8.1f  %8.2f  %5lld/%-5lld  %5.1f %%  %5.1f %%\n",
                    static_cast<long long>(l.layer_index()), smoe::store::to_string(st->residency()), static_cast<long long>(shared ? std::int64_t(st->memory_bytes() / st->slot_bytes()) : st->slots()),
                    static_cast<long long>(st->num_experts()), 100.0 * s.hit_rate(), static_cast<long long>(s.misses),
                    static_cast<long long>(s.evictions), double(s.bytes_read) / (1 << 20), 1e3 * s.stall_seconds,
                    static_cast<long long>(s.prefetch_used), static_cast<long long>(s.prefetch_loaded), 100.0 * s.prediction_accuracy(),
                    100.0 * s.routing_consistency());
    }
}

// --router chain | rmoe: L research layers on random bf16 weights of the deepseek shape (d 1024, 32
// experts of width 512; chain: 2 passes of top-2 and a shared expert; rmoe: top-4 renormalised over a
// GRU state of width 128), the same prefill and decode loop as run(). A chain returns its delta
// x⁽ᶜ⁾ − x⁽⁰⁾, which this engine adds to the residual stream. RMoE's state is the engine's: reset
// before the first MoE layer of every forward pass and handed to each layer in order.
int run_research(Options const& o) {
    using W = smoe::bf16;
    std::int64_t const d = o.hidden ? o.hidden : 1024, f = o.ffn ? o.ffn : 512, E = 32, L = o.layers, p = 128;
    std::mt19937_64 rng(o.seed);
    std::uniform_real_distribution<float> uni(-1.0f, 1.0f);
    std::vector<std::vector<W>> bf16_source;
    std::vector<std::vector<float>> fstore;
    auto weights = [&](std::int64_t n, std::int64_t fan_in) {
        float const a = std::sqrt(3.0f / static_cast<float>(fan_in));
        bf16_source.emplace_back(static_cast<std::size_t>(n));
        for (auto& v : bf16_source.back()) v = smoe::to_bf16(a * uni(rng));
        return bf16_source.back().data();
    };
    auto floats = [&](std::int64_t n, float a) {
        fstore.emplace_back(static_cast<std::size_t>(n));
        for (auto& v : fstore.back()) v = a * uni(rng);
        return smoe::MatrixView<float const>(fstore.back().data(), 1, n);
    };
    bf16_source.reserve(static_cast<std::size_t>(8 * L)), fstore.reserve(static_cast<std::size_t>(16 * L + 16));
    smoe::expert::SwiGLUConfig const ec{d, f, E}, sc{d, f, 1};
    auto experts = [&](smoe::expert::SwiGLUConfig const& c) {
        W const* w1 = weights(c.num_experts * f * d, d);
        W const* w3 = weights(c.num_experts * f * d, d);
        return smoe::expert::SwiGLUWeights<W>::dense(w1, w3, weights(c.num_experts * d * f, f), c);
    };
    auto const t_load = Clock::now();
    using Chain = smoe::layer::Chain<smoe::router::TopK, smoe::expert::Shared<smoe::expert::SwiGLU<W>>, smoe::balance::None>;
    using Rmoe = smoe::layer::Recurrent<smoe::router::TopK, smoe::expert::SwiGLU<W>, smoe::balance::None>;
    std::vector<Chain> chains;
    std::vector<Rmoe> rmoes;
    std::vector<std::array<smoe::MatrixView<float const>, 2>> gates(static_cast<std::size_t>(L));
    float const gate_a = std::sqrt(3.0f / static_cast<float>(d)), cell_a = std::sqrt(3.0f / static_cast<float>(p));
    auto mat = [&](std::int64_t r, std::int64_t c, float a) { return smoe::MatrixView<float const>(floats(r * c, a).data, r, c); };
    auto vec = [&](std::int64_t n) { return std::span<float const>(floats(n, 0.1f).data, static_cast<std::size_t>(n)); };
    std::optional<smoe::gate::RecurrentCell> cell;
    if (o.router == "rmoe")
        cell.emplace(smoe::gate::RecurrentCellConfig{.hidden_size = p},
                     smoe::gate::RecurrentCellWeights{mat(p, p, cell_a), mat(p, p, cell_a), mat(p, p, cell_a), mat(p, p, cell_a), mat(p, p, cell_a),
                                                      mat(p, p, cell_a), vec(p), vec(p), vec(p), vec(p), vec(p), vec(p)});
    for (std::int64_t l = 0; l < L; ++l) {
        if (o.router == "chain") {
            gates[static_cast<std::size_t>(l)] = {mat(E, d, gate_a), mat(E, d, gate_a)};
            chains.emplace_back(Chain::Config{.router = {.num_experts = E, .top_k = 2}, .expert = {.routed = ec, .shared = sc},
                                              .output = smoe::layer::ChainOutput::delta, .max_tokens = o.prefill},
                                Chain::Weights{.gates = gates[static_cast<std::size_t>(l)], .experts = {.routed = experts(ec), .shared = experts(sc)}});
        } else {
            rmoes.emplace_back(Rmoe::Config{.router = {.num_experts = E, .top_k = 4, .norm_topk_prob = true}, .expert = ec, .max_tokens = o.prefill,
                                            .layer_index = l},
                               *cell, Rmoe::Weights{.gate = {mat(p, d, gate_a), mat(E, p, cell_a)}, .experts = experts(ec)});
        }
        bf16_source.clear();  // packed by the layer: the bf16 source is no longer read
    }
    double const load_s = seconds_since(t_load);
    smoe::DefaultThreadPool pool(o.threads);
    for (auto& c : chains) c.set_thread_pool(pool);
    for (auto& r : rmoes) r.set_thread_pool(pool);
    std::optional<smoe::gate::RouterState> state;
    if (cell) state.emplace(o.prefill, *cell);
    std::printf("smoe demo engine: random deepseek-like model in memory (seed %llu), %s layers\n", static_cast<unsigned long long>(o.seed),
                o.router == "chain" ? "Chain-of-Experts (layer::Chain)" : "RMoE (layer::Recurrent)");
    std::printf("  %lld MoE layers, d = %lld, E = %lld, expert f = %lld, bf16 expert weights, %s; built in %.2f s; %lld threads\n",
                static_cast<long long>(L), static_cast<long long>(d), static_cast<long long>(E), static_cast<long long>(f),
                o.router == "chain" ? "2 passes of top-2 + 1 shared expert per pass" : "top-4 renormalised over a GRU state of width 128", load_s,
                static_cast<long long>(o.threads));
    std::vector<float> normed, out;
    auto forward = [&](std::vector<float>& h, std::int64_t T) {
        normed.resize(h.size()), out.resize(h.size());
        if (state) state->reset(T);  // a new forward pass: RMoE's recurrence starts from zero
        for (std::int64_t l = 0; l < L; ++l) {
            rms_normalize(h.data(), normed.data(), T, d);
            smoe::MatrixView<float const> const x(normed.data(), T, d);
            smoe::MatrixView<float> const y(out.data(), T, d);
            if (state)
                rmoes[static_cast<std::size_t>(l)].forward(x, y, *state);
            else
                chains[static_cast<std::size_t>(l)].forward(x, y);
            for (std::size_t i = 0; i < out.size(); ++i) h[i] += out[i];
        }
    };
    std::normal_distribution<float> nd(0.0f, 1.0f);
    std::vector<float> h(static_cast<std::size_t>(o.prefill * d));
    for (auto& v : h) v = nd(rng);
    auto const t_prefill = Clock::now();
    forward(h, o.prefill);
    double const prefill_s = seconds_since(t_prefill);
    std::printf("  prefill: %lld tokens in %.3f s = %.1f tokens/s\n", static_cast<long long>(o.prefill), prefill_s, double(o.prefill) / prefill_s);
    std::vector<float> tok(h.end() - d, h.end());
    auto const t_decode = Clock::now();
    for (std::int64_t i = 0; i < o.decode; ++i) forward(tok, 1);
    double const decode_s = seconds_since(t_decode);
    if (o.decode > 0)
        std::printf("  decode: %lld steps in %.3f s = %.1f tokens/s (%.2f ms per step over %lld layers)\n", static_cast<long long>(o.decode),
                    decode_s, double(o.decode) / decode_s, 1e3 * decode_s / double(o.decode), static_cast<long long>(L));
    // Load per layer; a chain's experts count once per pass that chose them (its evaluations).
    std::vector<std::vector<std::uint64_t>> load;
    std::vector<std::int64_t> labels;
    for (std::int64_t l = 0; l < L; ++l) {
        labels.push_back(l);
        if (state) {
            load.push_back(rmoes[static_cast<std::size_t>(l)].stats().cumulative_kept);
            continue;
        }
        auto const& c = chains[static_cast<std::size_t>(l)];
        std::vector<std::uint64_t> sum(static_cast<std::size_t>(E), 0);
        for (std::int64_t t = 0; t < c.num_iterations(); ++t)
            for (std::int64_t e = 0; e < E; ++e) sum[static_cast<std::size_t>(e)] += c.stats(t).cumulative_kept[static_cast<std::size_t>(e)];
        load.push_back(sum);
    }
    print_load_table(load, labels, Ranks{});
    return 0;
}

// Bytes this process has read from the storage (the page cache's misses, mapped or read), or 0.
std::uint64_t disk_read_bytes() {
    std::FILE* f = std::fopen("/proc/self/io", "r");
    if (!f) return 0;
    char line[128];
    unsigned long long v = 0;
    while (std::fgets(line, sizeof line, f))
        if (std::sscanf(line, "read_bytes: %llu", &v) == 1) break;
    std::fclose(f);
    return v;
}

// MemAvailable of /proc/meminfo in bytes (the physical memory where it cannot be read).
double available_memory() {
    double kb = 0;
    if (std::FILE* f = std::fopen("/proc/meminfo", "r")) {
        char line[128];
        while (std::fgets(line, sizeof line, f))
            if (std::sscanf(line, "MemAvailable: %lf kB", &kb) == 1) break;
        std::fclose(f);
    }
    return kb > 0 ? kb * 1024.0 : double(::sysconf(_SC_PHYS_PAGES)) * double(::sysconf(_SC_PAGESIZE));
}

// The store statistics of every layer, summed.
template <class Layer>
smoe::store::StoreStats sum_stores(std::vector<Layer>& layers) {
    smoe::store::StoreStats t;
    for (auto& l : layers)
        if (auto* st = l.expert_store()) {
            auto const s = st->stats();
            t.hits += s.hits, t.misses += s.misses, t.bytes_read += s.bytes_read, t.stall_seconds += s.stall_seconds;
        }
    return t;
}

// A random model's routed experts over the tensors of all of it but them (--write-model): expert e's
// tensors exist only while it is packed.
struct ExpertOverlay {
    smoe::io::TensorMap const* rest;
    smoe::io::TensorMap one;
    smoe::io::TensorInfo const* find(std::string_view name) const {
        auto const* t = one.find(name);
        return t ? t : rest->find(name);
    }
};

// --write-model: the random model's routed experts generated one at a time and packed straight into
// `path` (peak memory: one expert's bf16 tensors and its record), layer after layer until the records
// reach o.write_model bytes; `rest` gets the routers and shared experts. Returns the config of the
// layers written.
smoe::io::HfMoeConfig write_random_model(Options const& o, smoe::io::TensorMap& rest, std::string const& path,
                                         smoe::io::HfMoeLayer::Options const& po, bool talk) {
    Options big = o;
    big.layers = 4096;  // enough for any size; the layers written are counted after the first
    smoe::io::HfMoeConfig const cfg = smoe::io::parse_hf_config(random_config(big), "<random " + o.shape + " config>");
    RandomModel rm(cfg, o.dtype, o.seed);
    if (o.reuse_packed) {  // the file is there: the routers and shared experts of its layers only
        auto const L = static_cast<std::int64_t>(smoe::store::PackedFile::open(path)->layers().size());
        for (std::int64_t l = 0; l < L; ++l) rm.add_router(rest, l), rm.add_shared(rest, l);
        Options fit = o;
        fit.layers = L;
        return smoe::io::parse_hf_config(random_config(fit), "<random " + o.shape + " config>");
    }
    smoe::store::PackedWriter out(path);
    auto const t0 = Clock::now();
    std::int64_t L = 1;
    for (std::int64_t l = 0; l < L; ++l) {
        rm.add_router(rest, l);
        rm.add_shared(rest, l);
        std::int64_t const layer[] = {l};
        smoe::io::pack_hf_experts(cfg, layer, out, po, "<random model>", [&](std::int64_t li, std::int64_t e) {
            ExpertOverlay s{&rest, smoe::io::TensorMap("<random model>")};
            rm.add_routed(s.one, li, e);
            return s;
        });
        // The size counts the records (what the stores read and cache), not the alignment holes between them.
        std::uint64_t const written = out.record_bytes();
        if (l == 0) L = static_cast<std::int64_t>((o.write_model + written - 1) / written);
        if (talk)
            std::fprintf(stderr, "\rwrote layer %lld of %lld: %.2f GiB of records in %.0f s", static_cast<long long>(l + 1), static_cast<long long>(L),
                         double(written) / double(1 << 30), seconds_since(t0));
    }
    out.finish();
    if (talk) std::fprintf(stderr, "\n");
    Options fit = o;
    fit.layers = L;
    return smoe::io::parse_hf_config(random_config(fit), "<random " + o.shape + " config>");
}

// "12.3 %", or "-" for a negative fraction (none measured).
std::string percent(double f) {
    char b[16] = "-";
    if (f >= 0) std::snprintf(b, sizeof b, "%.1f %%", 100.0 * f);
    return b;
}

// One row of --sweep's table.
struct SweepRow {
    std::string store;  // with " (O_DIRECT)" when the cached stores read so
    double budget = 1, tokens_per_s = 0, disk_mb = 0, store_mb = 0, hit_rate = 0, memory_mib = 0;
};

// Builds or loads the model, then prefill and decode. Layer is HfMoeLayer (one process) or
// HfShardedMoeLayer (experts over the ranks; every rank runs its own share of the batch). With --sweep,
// the model's layers are built and run once per store configuration.
template <class Layer, class Maker>
int run(Options const& o, Maker const& maker, Ranks const& ranks) {
    bool const talk = ranks.rank == 0;
    std::vector<Layer> layers;
    auto t_load = Clock::now();
    std::string source;
    smoe::io::HfMoeConfig cfg;
    typename Layer::Options lo{.max_tokens = o.prefill, .bf16_dot = o.bf16_dot, .int8_dot = o.int8_dot};
    // A real checkpoint keeps its dtype unless --dtype says otherwise; int8 is quantised at load.
    if (o.dtype == "int8") lo.format = smoe::io::WeightFormat::int8;
    if (o.dtype == "int4") lo.format = smoe::io::WeightFormat::int4;
    if (o.model && o.dtype == "f32") lo.format = smoe::io::WeightFormat::f32;
    // --store mapped|cached: the routed experts go into a packed file first (one per rank when sharded:
    // each packs, maps or caches only its own experts, in its local order).
    std::string const packed_path = !o.packed.empty() ? o.packed + (ranks.size > 1 ? "." + std::to_string(ranks.rank) : "")
                                                      : (std::filesystem::temp_directory_path() /
                                                         ("smoe_demo_" + std::to_string(::getpid()) + ".smoe")).string();
    std::string store_kind = o.store;  // this run's (one entry of --sweep)
    double budget_frac = o.budget_frac;
    smoe::io::HfMoeLayer::Options po;
    po.format = lo.format;
    po.bf16_dot = lo.bf16_dot;
    po.int8_dot = lo.int8_dot;
    auto open_packed = [&] {
        lo.packed = smoe::store::PackedFile::open(packed_path);
        if (talk)
            std::fprintf(stderr, "packed %zu MoE layers of %lld experts into %s (%.1f MiB of records, %.1f MiB long) in %.2f s\n",
                         lo.packed->layers().size(), static_cast<long long>(lo.packed->layers()[0].num_experts), packed_path.c_str(),
                         double(lo.packed->record_bytes()) / (1 << 20), double(lo.packed->file_bytes()) / (1 << 20), seconds_since(t_load));
        switch (lo.packed->layers()[0].kind) {  // the layer type follows the file's records
            case smoe::store::ExpertKind::swiglu_f32: lo.format = smoe::io::WeightFormat::f32; break;
            case smoe::store::ExpertKind::swiglu_bf16: lo.format = smoe::io::WeightFormat::bf16; break;
            case smoe::store::ExpertKind::swiglu_int8: lo.format = smoe::io::WeightFormat::int8; break;
            default: lo.format = smoe::io::WeightFormat::int4, lo.int4_group = 0; break;
        }
    };
    std::shared_ptr<smoe::store::SlotCache> shared_cache;  // --global-budget: this run's, for every layer
    auto pack_and_load = [&](auto const& src, std::int64_t l, std::string const& name) {
        if (store_kind == "resident" && !lo.packed) return Layer::load(cfg, src, l, lo, name, maker);
        if (!lo.packed) {
            std::vector<std::int64_t> moe;
            for (std::int64_t i = 0; i < cfg.num_hidden_layers && (!o.layers_given || std::int64_t(moe.size()) < o.layers); ++i)
                if (cfg.is_moe_layer(i)) moe.push_back(i);
            smoe::store::PackedWriter out(packed_path);
            std::vector<std::int64_t> const mine = maker.experts(cfg.num_experts());  // all, or this rank's
            smoe::io::pack_hf_layers(cfg, src, moe, out, po, name, mine);
            out.finish();
            open_packed();
        }
        auto const& pl = lo.packed->layer(l);
        std::uint64_t bytes = 0;
        for (std::int64_t e = 0; e < pl.num_experts; ++e) bytes += lo.packed->record(pl, e).bytes;
        lo.store.residency = store_kind == "mapped"     ? smoe::store::Residency::mapped
                             : store_kind == "resident" ? smoe::store::Residency::resident
                                                        : smoe::store::Residency::cached;
        lo.store.eviction = o.eviction == "lfu" ? smoe::store::Eviction::lfu : smoe::store::Eviction::lru;
        lo.store.prefetch = o.pregate && store_kind == "cached";
        lo.store.direct_io = o.direct;
        // At least one expert's slot, so the smallest fraction still runs (one expert per round).
        std::uint64_t slot = 0;
        for (std::int64_t e = 0; e < pl.num_experts; ++e) slot = std::max<std::uint64_t>(slot, (lo.packed->record(pl, e).bytes + 4095) / 4096 * 4096);
        lo.store.budget_bytes = static_cast<std::size_t>(std::max<double>(double(slot), budget_frac * double(bytes)));
        lo.store.cache = nullptr;
        if (o.global_budget && store_kind == "cached") {
            if (!shared_cache) {
                shared_cache = smoe::store::SlotCache::for_file(
                    static_cast<std::size_t>(std::max<double>(double(slot), budget_frac * double(lo.packed->record_bytes()))), *lo.packed);
            }
            lo.store.cache = shared_cache;
        }
        return Layer::load(cfg, src, l, lo, name, maker);
    };
    std::optional<smoe::io::Checkpoint> ckpt;
    std::optional<smoe::io::TensorMap> weights;  // the random model (--write-model: all but its routed experts)
    if (o.model) {
        std::filesystem::path const dir = *o.model;
        cfg = smoe::io::read_hf_config(dir / "config.json");
        if (talk)
            for (auto const& k : cfg.defaulted) std::fprintf(stderr, "demo_engine: config.json lacks %s (family default)\n", k.c_str());
        ckpt.emplace(smoe::io::Checkpoint::open(dir));
        source = dir.string();
    } else if (o.write_model > 0) {
        weights.emplace("<random model>");
        cfg = write_random_model(o, *weights, packed_path, po, talk);
        open_packed();
        source = "random " + o.shape + "-like model " + (o.reuse_packed ? "in " : "written to ") + packed_path + " expert by expert (seed " +
                 std::to_string(o.seed) + ")";
    } else {
        cfg = smoe::io::parse_hf_config(random_config(o), "<random " + o.shape + " config>");
        weights.emplace(RandomModel(cfg, o.dtype, o.seed).build());
        source = "random " + o.shape + "-like model in memory (seed " + std::to_string(o.seed) + ")";
    }
    std::vector<SweepRow> rows;
    std::vector<float> first_out;  // --sweep: the first run's prefill output and last decoded state
    std::vector<std::string> const runs = o.sweep.empty() ? std::vector<std::string>{o.store} : o.sweep;
    for (std::string const& run_store : runs) {
        if (run_store == "mapped" || run_store == "resident") {
            store_kind = run_store;
        } else if (!o.sweep.empty()) {
            store_kind = "cached";
            budget_frac = std::strtod(run_store.c_str(), nullptr);
        }
        layers.clear();
        shared_cache.reset();
        if (lo.packed && store_kind == "cached") {  // pinned arenas must not push the machine into the OOM killer
            double const want = budget_frac * double(lo.packed->record_bytes()), have = available_memory() - double(2u << 30);
            if (want > have) {
                if (talk)
                    std::printf("\n== --sweep %s: skipped: a cache of %.1f GiB exceeds the memory available now less 2 GiB (%.1f GiB)\n",
                                run_store.c_str(), want / double(1 << 30), have / double(1 << 30));
                continue;
            }
        }
        if (lo.packed) {
            // Every run from the disk: each reads what it needs, not the pages the previous run left.
            lo.packed->drop_page_cache();
            if (store_kind == "resident" && o.write_model > 0 &&
                double(lo.packed->record_bytes()) > 0.5 * double(::sysconf(_SC_PHYS_PAGES)) * double(::sysconf(_SC_PAGESIZE)))
                throw smoe::invalid_argument("--sweep", "resident", "mapped or a budget: the written model is over half of the memory");
        }
        t_load = Clock::now();
        if (ckpt) {
            for (std::int64_t l = 0; l < cfg.num_hidden_layers && (!o.layers_given || std::int64_t(layers.size()) < o.layers); ++l) {
                if (!cfg.is_moe_layer(l)) continue;
                if (talk) std::fprintf(stderr, "\rloading layer %lld of %lld", static_cast<long long>(l + 1), static_cast<long long>(cfg.num_hidden_layers));
                try {
                    layers.push_back(pack_and_load(*ckpt, l, *o.model));
                } catch (...) {
                    if (talk) std::fprintf(stderr, "\n");  // end the progress line before the error
                    throw;
                }
            }
            if (talk) std::fprintf(stderr, "\n");
        } else {
            for (std::int64_t l = 0; l < cfg.num_hidden_layers; ++l) layers.push_back(pack_and_load(*weights, l, "<random model>"));
        }
        if (layers.empty()) throw smoe::invalid_argument("--model", source, "a checkpoint with at least one MoE layer");
        double const load_s = seconds_since(t_load);
        smoe::DefaultThreadPool pool(o.threads);
        for (auto& l : layers) l.set_thread_pool(pool);
        std::vector<smoe::store::PreGate> pregates;
        if (o.pregate)
            for (std::size_t i = 0; i + 1 < layers.size(); ++i)
                pregates.emplace_back(layers[i + 1].gate(), layers[i + 1].expert_bias(), cfg.top_k(), o.prefill);
        auto* const pg = o.pregate ? &pregates : nullptr;
        std::int64_t const d = cfg.hidden_size;

        std::size_t wbytes = 0, wsbytes = 0;
        for (auto const& l : layers) wbytes += l.weight_bytes(), wsbytes += l.workspace_bytes();
        if (talk) {
            if (!o.sweep.empty()) std::printf("\n== --sweep %s: store %s\n", run_store.c_str(), store_kind.c_str());
            std::printf("smoe demo engine: %s\n", source.c_str());
            std::printf("  %s: %zu MoE layers, d = %lld, E = %lld, k = %lld, expert f = %lld, shared f = %lld, %s expert weights\n",
                        to_string(cfg.family), layers.size(), static_cast<long long>(d), static_cast<long long>(cfg.num_experts()),
                        static_cast<long long>(cfg.top_k()), static_cast<long long>(cfg.intermediate_size),
                        static_cast<long long>(cfg.shared_intermediate_size), to_string(layers.front().format()));
            // Per-expert formats of the first layer (formats.md §4 rule 5), as runs of equal formats.
            auto const& l0 = layers.front();
            std::printf("  expert formats (layer %lld):", static_cast<long long>(l0.layer_index()));
            std::int64_t const E0 = static_cast<std::int64_t>(l0.local_experts().size());
            for (std::int64_t e = 0, start = 0; e < E0; ++e)
                if (e + 1 == E0 || l0.expert_format(e + 1) != l0.expert_format(start)) {
                    std::printf(" %lld..%lld %s (%s);", static_cast<long long>(start), static_cast<long long>(e), l0.expert_format(start).c_str(),
                                l0.expert_dot_path(start).c_str());
                    start = e + 1;
                }
            if (!l0.shared_format().empty()) std::printf(" shared %s", l0.shared_format().c_str());
            std::printf("\n");
            if (ranks.size > 1)
                std::printf("  sharded over %d ranks: rank 0 holds experts %lld..%lld; each rank runs its share of the batch\n", ranks.size,
                            static_cast<long long>(layers.front().local_experts().front()),
                            static_cast<long long>(layers.front().local_experts().back()));
            std::printf("  memory%s: weights %.1f MiB, workspaces %.2f MiB (max_tokens = %lld); built/loaded in %.2f s; %lld threads\n",
                        ranks.size > 1 ? " (rank 0)" : "", double(wbytes) / (1 << 20), double(wsbytes) / (1 << 20),
                        static_cast<long long>(o.prefill), load_s, static_cast<long long>(o.threads));
        }

        // A prompt of random embeddings, then decode: each new token's input is the last hidden state.
        std::mt19937_64 rng(o.seed + static_cast<std::uint64_t>(ranks.rank));
        std::normal_distribution<float> nd(0.0f, 1.0f);
        std::int64_t const T = share(o.prefill, ranks);
        std::vector<float> h(static_cast<std::size_t>(T * d)), normed, out;
        for (auto& v : h) v = nd(rng);
        ranks.barrier();
        auto const t_prefill = Clock::now();
        step(layers, h, T, d, normed, out, pg);
        ranks.barrier();
        double const prefill_s = seconds_since(t_prefill);
        if (talk)
            std::printf("  prefill: %lld tokens in %.3f s = %.1f tokens/s\n", static_cast<long long>(o.prefill), prefill_s,
                        double(o.prefill) / prefill_s);

        // Every rank decodes one sequence (its last prompt token onwards), so a step is P tokens.
        std::vector<float> tok(static_cast<std::size_t>(d));
        if (T > 0) std::copy(h.end() - d, h.end(), tok.begin());
        else for (auto& v : tok) v = nd(rng);
        auto const before = sum_stores(layers);
        std::uint64_t const disk0 = disk_read_bytes();
        auto const t_decode = Clock::now();
        for (std::int64_t i = 0; i < o.decode; ++i) {
            rms_normalize(tok.data(), tok.data(), 1, d);
            step(layers, tok, 1, d, normed, out, pg);
            if (talk && ((i + 1) % 8 == 0 || i + 1 == o.decode))
                std::fprintf(stderr, "\rdecode %lld/%lld steps", static_cast<long long>(i + 1), static_cast<long long>(o.decode));
        }
        ranks.barrier();
        double const decode_s = seconds_since(t_decode);
        std::uint64_t const disk = disk_read_bytes() - disk0;
        auto const after = sum_stores(layers);
        if (talk && o.decode > 0) {
            std::fprintf(stderr, "\n");
            double const tokens = double(o.decode) * ranks.size;
            std::printf("  decode: %lld steps x %d sequence%s in %.3f s = %.1f tokens/s (%.2f ms per step over %zu layers)\n",
                        static_cast<long long>(o.decode), ranks.size, ranks.size > 1 ? "s" : "", decode_s, tokens / decode_s,
                        1e3 * decode_s / double(o.decode), layers.size());
            bool direct = false;
            for (auto& l : layers)
                if (auto* st = l.expert_store()) direct = direct || st->direct_io();
            SweepRow row{store_kind + (direct ? " (O_DIRECT)" : o.direct && store_kind == "cached" ? " (buffered: O_DIRECT refused)" : ""),
                         store_kind == "cached" ? budget_frac : 1.0, tokens / decode_s};
            row.disk_mb = double(disk) / 1e6 / tokens;
            row.store_mb = double(after.bytes_read - before.bytes_read) / 1e6 / tokens;
            // A mapped store's hits are records used before (checked once), not pages in memory: the
            // disk column says what the page cache missed.
            std::int64_t const hits = after.hits - before.hits, n = hits + after.misses - before.misses;
            row.hit_rate = n > 0 && store_kind == "cached" ? double(hits) / double(n) : -1;
            for (auto& l : layers)
                if (auto* st = l.expert_store()) row.memory_mib += double(st->memory_bytes()) / (1 << 20);
            if (lo.packed)
                std::printf("  decode reads: %.1f MB per token from the disk (/proc/self/io), %.1f MB per token by the stores, store hit "
                            "rate %s, experts in memory %.0f MiB\n",
                            row.disk_mb, row.store_mb, percent(row.hit_rate).c_str(), row.memory_mib);
            rows.push_back(row);
        }
        if (!o.sweep.empty()) {  // every store gives the same bits (store/expert_store.hpp)
            h.insert(h.end(), tok.begin(), tok.end());
            if (first_out.empty())
                first_out = std::move(h);
            else if (h != first_out)
                throw smoe::invalid_argument("--sweep " + run_store, "an output that differs from --sweep " + runs.front() + "'s",
                                             "the same bits from every store");
            if (talk) std::printf("  output: the same bits as --sweep %s\n", runs.front().c_str());
        }
        if (o.sweep.empty()) {
            print_load(layers, ranks);
            if (store_kind != "resident") print_stores(layers, ranks);
        }
    }
    if (talk && !o.sweep.empty()) {
        std::printf("\nsweep (decode only; page cache dropped before each run):\n"
                    "  | store | budget | decode tokens/s | disk MB/token | store MB/token | store hit rate | expert memory MiB |\n"
                    "  |---|---|---|---|---|---|---|\n");
        for (auto const& r : rows)
            std::printf("  | %s | %.0f %% | %.3f | %.1f | %.1f | %s | %.0f |\n", r.store.c_str(), 100.0 * r.budget, r.tokens_per_s, r.disk_mb,
                        r.store_mb, percent(r.hit_rate).c_str(), r.memory_mib);
    }
    if (lo.packed && o.packed.empty()) std::filesystem::remove(packed_path);  // mapped pages stay valid until unmapped
    return 0;
}

}  // namespace

int main(int argc, char** argv) {
    Options const o = parse(argc, argv);
#ifdef SMOE_DEMO_MPI
    if (o.shard) {
        MPI_Init(&argc, &argv);
        int rc = 1;
        try {
            smoe::dist::MpiCommunicator comm(MPI_COMM_WORLD);
            Ranks ranks{comm.rank(), comm.size(), [] { MPI_Barrier(MPI_COMM_WORLD); }};
            nlohmann::json const j = o.model ? smoe::io::read_json_file(std::filesystem::path(*o.model) / "config.json") : random_config(o);
            auto const E = smoe::io::parse_hf_config(j, "config.json").num_experts();
            smoe::io::ShardedLayers<smoe::dist::MpiCommunicator> maker{&comm, smoe::dist::ExpertPlacement::contiguous(E, comm.size())};
            rc = run<smoe::io::HfShardedMoeLayer<smoe::dist::MpiCommunicator>>(o, maker, ranks);
        } catch (std::exception const& e) {
            std::fprintf(stderr, "demo_engine: error: %s\n", e.what());
        }
        MPI_Finalize();
        return rc;
    }
#else
    if (o.shard) usage("--shard needs a build with MPI (Debian libopenmpi-dev; see docs/distributed.md)");
#endif
    try {
        if (o.router != "topk") return run_research(o);
        return run<HfMoeLayer>(o, smoe::io::LocalLayers{}, Ranks{});
    } catch (std::exception const& e) {
        std::fprintf(stderr, "demo_engine: error: %s\n", e.what());
        return 1;
    }
}
