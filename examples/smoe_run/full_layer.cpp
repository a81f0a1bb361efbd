// Full-layer cases: a Hugging Face config.json and checkpoint (one file, or shards through
// model.safetensors.index.json), the MoE block of decoder layer --layer N (default 0).

#include <algorithm>
#include <cstdio>
#include <cstring>

#include "case_io.hpp"
#include "smoe/io/hf_config.hpp"
#include "smoe/io/hf_moe.hpp"
#include "smoe/io/hf_pack.hpp"

namespace smoe_run {

namespace {

template <class Source>
int run_with(Args const& a, smoe::io::HfMoeConfig const& cfg, Source const& src, std::string const& name) {
    auto const input = SafetensorsFile::open(a.case_dir / "input.safetensors");
    Matrix const x =
        read_matrix(input, "hidden_states", any_extent, {cfg.hidden_size, cfg.keys.hidden_size}, cfg.keys.file);
    smoe::io::HfMoeLayer::Options opt{.max_tokens = std::max<std::int64_t>(x.rows, 1), .bf16_dot = a.bf16_dot, .int8_dot = a.int8_dot};
    if (!a.packed.empty()) {
        // The file's expert type decides the layer's format; the rest (router, shared expert) comes from the case.
        opt.packed = smoe::store::PackedFile::open(a.packed);
        switch (opt.packed->layer(a.layer).kind) {
            case smoe::store::ExpertKind::swiglu_f32: opt.format = smoe::io::WeightFormat::f32; break;
            case smoe::store::ExpertKind::swiglu_bf16: opt.format = smoe::io::WeightFormat::bf16; break;
            case smoe::store::ExpertKind::swiglu_int8: opt.format = smoe::io::WeightFormat::int8; break;
            default: opt.format = smoe::io::WeightFormat::int4, opt.int4_group = 0; break;
        }
        opt.store.residency = a.budget >= 0 ? smoe::store::Residency::cached : smoe::store::Residency::mapped;
        opt.store.budget_bytes = static_cast<std::size_t>(std::max<std::int64_t>(a.budget, 0));
        opt.store.eviction = a.eviction;
    }
    auto moe = smoe::io::HfMoeLayer::load(cfg, src, a.layer, opt, name);
    // Optional token_ids I32 [T]: what a deepseek_v4 hash_moe layer routes by (ignored by the others).
    std::vector<std::int32_t> ids;
    if (auto const* t = input.find("token_ids")) {
        if (t->dtype != smoe::io::Dtype::I32 || t->shape != std::vector<std::int64_t>{x.rows})
            smoe::io::detail::file_fail(t->file, "tensor 'token_ids'", smoe::io::shape_text(t->shape),
                                        "I32 [T = " + std::to_string(x.rows) + "] (one id per row of hidden_states)");
        ids.resize(static_cast<std::size_t>(x.rows));
        std::memcpy(ids.data(), t->bytes.data(), ids.size() * sizeof(std::int32_t));
    }
    std::vector<float> y(x.data.size());
    smoe::RoutingResult const r = moe.forward(smoe::MatrixView<float const>(x.data.data(), x.rows, x.cols),
                                              smoe::MatrixView<float>(y.data(), x.rows, x.cols), smoe::TokenIds{ids});
    SafetensorsWriter w;
    w.add_f32("hidden_states", {x.rows, x.cols}, y);
    add_token_major(w, r);
    w.write(a.out_file);
    std::fprintf(stderr, "smoe-run: %s layer %lld, %s weights, T = %lld, E = %lld, k = %lld\n", to_string(cfg.family),
                 static_cast<long long>(a.layer), to_string(moe.format()), static_cast<long long>(x.rows),
                 static_cast<long long>(cfg.num_experts()), static_cast<long long>(cfg.top_k()));
    if (!a.packed.empty())
        moe.visit([&](auto& l) {
            auto const& st = l.experts().store();
            auto const s = st.stats();
            std::fprintf(stderr, "smoe-run: %s store of %s: %lld of %lld experts held, hits %lld, misses %lld, evictions %lld, %llu bytes read\n",
                         smoe::store::to_string(st.residency()), a.packed.string().c_str(), static_cast<long long>(st.slots()),
                         static_cast<long long>(st.num_experts()), static_cast<long long>(s.hits), static_cast<long long>(s.misses),
                         static_cast<long long>(s.evictions), static_cast<unsigned long long>(s.bytes_read));
        });
    if (moe.format() == smoe::io::WeightFormat::quantized || moe.format() == smoe::io::WeightFormat::int4)
        for (std::size_t e = 0; e < moe.local_experts().size(); ++e)
            std::fprintf(stderr, "smoe-run: expert %zu: %s, %s\n", e, moe.expert_format(std::int64_t(e)).c_str(),
                         moe.expert_dot_path(std::int64_t(e)).c_str());
    return 0;
}

}  // namespace

namespace {

// f(source, name) on the folder's tensors: a case folder holds weights.safetensors, a checkpoint folder
// an index or its own files.
template <class F>
int with_source(fs::path const& dir, F&& f) {
    if (fs::exists(dir / "model.safetensors.index.json") || !fs::exists(dir / "weights.safetensors")) {
        auto const ckpt = smoe::io::Checkpoint::open(dir);
        return f(ckpt, dir.string());
    }
    auto const file = SafetensorsFile::open(dir / "weights.safetensors");
    return f(file, (dir / "weights.safetensors").string());
}

smoe::io::HfMoeConfig read_config(fs::path const& dir, nlohmann::json const& config, char const* tool) {
    auto const config_path = (dir / "config.json").string();
    auto cfg = smoe::io::parse_hf_config(config, config_path);
    for (auto const& d : cfg.defaulted)
        std::fprintf(stderr, "%s: %s: %s (not in the file: the family's Hugging Face default)\n", tool, config_path.c_str(), d.c_str());
    return cfg;
}

}  // namespace

int run_full_layer(Args const& a, nlohmann::json const& config) {
    auto const cfg = read_config(a.case_dir, config, "smoe-run");
    return with_source(a.case_dir, [&](auto const& src, std::string const& name) { return run_with(a, cfg, src, name); });
}

int pack_case(PackArgs const& a) {
    if (!fs::is_directory(a.source))
        throw smoe::io::file_error(a.source.string(), "folder", "not a directory", "a case folder or checkpoint folder with config.json");
    auto const json = smoe::io::read_json_file(a.source / "config.json");
    if (!json.is_object() || !json.contains("model_type"))
        throw smoe::io::file_error((a.source / "config.json").string(), "model_type", "missing",
                                   "a Hugging Face config (router-only and LoRA cases have no experts to pack)");
    auto const cfg = read_config(a.source, json, "smoe-pack");
    std::vector<std::int64_t> layers = a.layers;
    if (layers.empty()) layers = fs::exists(a.source / "weights.safetensors") ? std::vector<std::int64_t>{0} : smoe::io::moe_layers(cfg);
    smoe::io::HfMoeLayer::Options opt{.int4_group = a.int4_group, .bf16_dot = a.bf16_dot, .int8_dot = a.int8_dot};
    if (a.dtype == "f32") opt.format = smoe::io::WeightFormat::f32;
    else if (a.dtype == "bf16") opt.format = smoe::io::WeightFormat::bf16;
    else if (a.dtype == "int8") opt.format = smoe::io::WeightFormat::int8;
    else if (a.dtype == "int4") opt.format = smoe::io::WeightFormat::int4;
    else if (!a.dtype.empty()) throw usage_error("--dtype: '" + a.dtype + "' is not one of f32, bf16, int8, int4");
    smoe::store::PackedWriter out(a.out_file);
    with_source(a.source, [&](auto const& src, std::string const& name) {
        smoe::io::pack_hf_layers(cfg, src, layers, out, opt, name);
        return 0;
    });
    out.finish();
    auto const f = smoe::store::PackedFile::open(a.out_file);
    for (auto const& l : f->layers())
        std::fprintf(stderr, "smoe-pack: layer %lld: %lld experts, %s, d = %lld, f = %lld, %s\n", static_cast<long long>(l.layer_index),
                     static_cast<long long>(l.num_experts), smoe::store::to_string(l.kind), static_cast<long long>(l.hidden_size),
                     static_cast<long long>(l.intermediate_size), smoe::store::flags_name(l.flags).c_str());
    std::fprintf(stderr, "smoe-pack: wrote %s (%zu bytes)\n", a.out_file.string().c_str(), f->file_bytes());
    return 0;
}

}  // namespace smoe_run
