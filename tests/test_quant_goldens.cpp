// The decoders of formats.md §1.2-§1.4, §2 and §3 against goldens from the reference packages (§7):
// each tests/data/quant/*.safetensors holds one matrix's packed tensors as a checkpoint stores them
// (module prefix `m`), `golden` F32 [R, C] as the reference dequantised it with fp32 scales, and in its
// __metadata__ the parameters and the reference function (scripts/gen_quant_goldens.py writes them).
// smoe reads the tensors, decodes them with quant::from_* and must give `golden` bit for bit.

#include <bit>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <iomanip>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include <catch2/catch.hpp>

#include "smoe/io/safetensors_file.hpp"
#include "smoe/io/tensor_read.hpp"
#include "smoe/quant/unpack.hpp"

namespace {

using i64 = std::int64_t;
using smoe::io::SafetensorsFile;

std::string meta(SafetensorsFile const& f, std::string const& key) {
    auto it = f.metadata().find(key);
    REQUIRE(it != f.metadata().end());
    return it->second;
}
i64 meta_int(SafetensorsFile const& f, std::string const& key) { return std::stoll(meta(f, key)); }
bool meta_bool(SafetensorsFile const& f, std::string const& key) { return meta(f, key) == "true"; }

// F8_E4M3 (and any one-byte dtype) as its bytes.
std::vector<std::uint8_t> raw_bytes(SafetensorsFile const& f, std::string const& name) {
    auto const& t = f.at(name);
    std::vector<std::uint8_t> out(t.bytes.size());
    std::memcpy(out.data(), t.bytes.data(), out.size());
    return out;
}

smoe::quant::Matrix decode(SafetensorsFile const& f) {
    namespace io = smoe::io;
    smoe::quant::Source const src{f.label(), "m"};
    std::string const format = meta(f, "format");
    i64 const R = meta_int(f, "R"), C = meta_int(f, "C");
    if (format == "compressed-tensors") {
        auto const packed = io::read_i32(f, "m.weight_packed");
        auto const scale = io::read_f32(f, "m.weight_scale");
        std::vector<std::int32_t> zeros, gidx;
        if (f.find("m.weight_zero_point")) zeros = io::read_i32(f, "m.weight_zero_point");
        if (f.find("m.weight_g_idx")) gidx = io::read_i32(f, "m.weight_g_idx");
        std::optional<std::span<std::int32_t const>> g;
        if (!gidx.empty()) g = std::span<std::int32_t const>(gidx);
        return smoe::quant::from_compressed_tensors(src, R, C, meta_int(f, "group"), meta_bool(f, "symmetric"), packed, scale, zeros, {}, g,
                                                    meta_bool(f, "act_order"));
    }
    if (format == "gptq") {
        auto const gidx = io::read_i32(f, "m.g_idx");
        return smoe::quant::from_gptq(src, R, C, meta_int(f, "group"), meta_bool(f, "symmetric"), meta(f, "checkpoint_format") == "gptq_v2",
                                      meta_bool(f, "act_order"), io::read_i32(f, "m.qweight"), io::read_i32(f, "m.qzeros"),
                                      io::read_f32(f, "m.scales"), std::span<std::int32_t const>(gidx));
    }
    if (format == "awq")
        return smoe::quant::from_awq(src, R, C, meta_int(f, "group"), io::read_i32(f, "m.qweight"), io::read_i32(f, "m.qzeros"),
                                     io::read_f32(f, "m.scales"));
    if (format == "fp8") {
        std::string const scale_name = meta(f, "scale_name");
        REQUIRE(f.at("m.weight").dtype == io::Dtype::F8_E4M3);
        return smoe::quant::from_fp8(src, R, C, meta_int(f, "block_rows"), meta_int(f, "block_cols"), raw_bytes(f, "m.weight"),
                                     io::read_f32(f, "m." + scale_name), scale_name.c_str());
    }
    REQUIRE(format == "mxfp4");
    return smoe::quant::from_mxfp4(src, R, C, io::read_u8(f, "m.gate_up_proj_blocks"), io::read_u8(f, "m.gate_up_proj_scales"),
                                   "gate_up_proj_blocks", "gate_up_proj_scales", 0);
}

}  // namespace

TEST_CASE("every decoder gives the reference packages' dequantised weights bit for bit", "[quant][golden]") {
    // One file per case of scripts/gen_quant_goldens.py; listed so that a missing file fails.
    std::string const name = GENERATE(as<std::string>{}, "ct_sym_g32", "ct_asym_g32", "ct_sym_channel_c100", "ct_asym_g20_c60",
                                      "ct_sym_g32_actorder", "gptq_v1_asym_g32_actorder", "gptq_v1_sym_g32", "awq_g32",
                                      "fp8_block128_r300_c200", "fp8_channel", "mxfp4");
    auto const path = std::filesystem::path(SMOE_TESTS_DIR) / "data" / "quant" / (name + ".safetensors");
    INFO(path.string());
    auto const f = SafetensorsFile::open(path);
    INFO("reference: " << meta(f, "reference") << " (" << meta(f, "versions") << ")");
    i64 const R = meta_int(f, "R"), C = meta_int(f, "C");
    auto const golden = smoe::io::read_f32(f, "golden", {R, C});
    REQUIRE(f.at("golden").dtype == smoe::io::Dtype::F32);
    auto const m = decode(f);
    auto const w = m.dequantize();
    REQUIRE(w.size() == golden.size());
    i64 mismatches = 0, first = -1;
    for (std::size_t k = 0; k < w.size(); ++k)
        if (std::bit_cast<std::uint32_t>(w[k]) != std::bit_cast<std::uint32_t>(golden[k]) && mismatches++ == 0) first = static_cast<i64>(k);
    if (mismatches) {
        auto const k = static_cast<std::size_t>(first);
        INFO("first of " << mismatches << " mismatches [" << first / C << ", " << first % C << "]: smoe " << std::setprecision(9) << w[k]
                                 << " golden " << golden[k]);
        CHECK(mismatches == 0);
    }
    CHECK(m.rows == R);
    CHECK(m.cols == C);
}
