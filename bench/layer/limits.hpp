#pragma once
// What the layer benchmarks need beyond bench_machine.hpp's limits (per weight format, 1 and 2
// threads, each peak from the widest instruction the CPU has): the weight formats of the layer
// benchmark and the peak each is judged against, and the last-level cache and the memory left, which
// size the cold protocol's copies of the layer (bench_layer.cpp).

#include <cstddef>
#include <cstdio>
#include <fstream>
#include <string>

#include "bench_machine.hpp"

namespace smoe_bench {

// The layer benchmark's weight formats: SwiGLU<W>'s three (f32, bf16, int8 per channel) and
// QuantSwiGLU's (formats.md §4): int4 g128 symmetric, FP8 e4m3 in 128 x 128 blocks, MXFP4, and
// int8 per channel again through QuantSwiGLU's kernels ("int8q"). QuantSwiGLU computes the exact path
// of formats.md §6.1 (each weight decoded to fp32 in registers, fp32 FMA), so its formats are judged
// against the fp32 FMA peak, whatever the width of their codes; their decode is judged, as every
// format's, against the DRAM bandwidth on the packed bytes it streams (QuantSwiGLU::weight_bytes).
// int4d and int8d are int4 g128 and int8 per channel on formats.md §6.2's int8 dot path
// (SwiGLUConfig::int8_dot on: activations quantised per 32, vpdpbusd), judged against the int8 dot peak;
// fp8b and mxfp4b are FP8 and MXFP4 on its bf16 dot path (bf16_dot on: vdpbf16ps), judged against the
// bf16 dot peak (registered where the CPU has AVX512-BF16); mxfp4d is MXFP4 on the int8 dot path (its
// E2M1 codes mapped to 2 v + 12 by a nibble table), judged against the int8 dot peak.
enum class LayerFormat : int { f32, bf16, int8, int4, fp8, mxfp4, int8q, int4d, int8d, fp8b, mxfp4b, mxfp4d };
inline constexpr LayerFormat kLayerFormats[] = {LayerFormat::f32,   LayerFormat::bf16,  LayerFormat::int8,   LayerFormat::int4,
                                                LayerFormat::fp8,   LayerFormat::mxfp4, LayerFormat::int8q,  LayerFormat::int4d,
                                                LayerFormat::int8d, LayerFormat::fp8b,  LayerFormat::mxfp4b, LayerFormat::mxfp4d};

struct LayerFormatInfo {
    char const* name;           // in benchmark names: BM_layer/<shape>/<name>/...
    Format peak;                // the bench_machine.hpp peak the format's FLOPs are judged against
    bool exact_fp32;            // QuantSwiGLU's exact path: says so in the record's label
    bool int8_dot;              // QuantSwiGLU's int8 dot path
    double bytes_per_weight;    // packed, factor tables included; sizes the cold protocol only (the
                                // counters use the expert's own weight_bytes)
    bool bf16_dot = false;      // QuantSwiGLU's bf16 dot path (FP8, MXFP4)
};
// Packed bytes per weight (kernels/cpu/quant_panel.hpp): int4 g128 0.5 + two fp32 tables (scale, zero
// point) per 128 = 0.5625; fp8 1 + one fp32 factor per slot per 128 columns = 1.03; MXFP4 0.5 + one
// fp32 factor per 32 = 0.625; int8q 1 + one table per slot. The int8 dot panels (int8_dot.hpp) of
// int4d, int8d and mxfp4d hold no zero tables (one zero point each), and MXFP4's factors stay E8M0
// bytes there: 0.53125, 1.03125 and 0.53125.
inline constexpr LayerFormatInfo kLayerFormatInfo[] = {
    {"f32", Format::f32, false, false, 4},       {"bf16", Format::bf16, false, false, 2},   {"int8", Format::int8, false, false, 1},
    {"int4", Format::f32, true, false, 0.5625},  {"fp8", Format::f32, true, false, 1.03125}, {"mxfp4", Format::f32, true, false, 0.625},
    {"int8q", Format::f32, true, false, 1},      {"int4d", Format::int8, false, true, 0.53125}, {"int8d", Format::int8, false, true, 1.03125},
    {"fp8b", Format::bf16, false, false, 1.03125, true}, {"mxfp4b", Format::bf16, false, false, 0.625, true},
    {"mxfp4d", Format::int8, false, true, 0.53125},
};
inline LayerFormatInfo const& info(LayerFormat f) { return kLayerFormatInfo[int(f)]; }
inline bool is_quant_swiglu(LayerFormat f) { return info(f).exact_fp32 || info(f).int8_dot || info(f).bf16_dot; }

// Bytes of cpu0's last-level cache (sysfs "32768K"); 32 MiB, this project's machines, when unreadable.
inline double llc_bytes() {
    std::ifstream in("/sys/devices/system/cpu/cpu0/cache/index3/size");
    double v = 0;
    std::string unit;
    if (!(in >> v) || v <= 0) return 32.0 * (1 << 20);
    in >> unit;
    return v * (unit.starts_with("K") ? 1024.0 : unit.starts_with("M") ? 1048576.0 : 1.0);
}

// MemAvailable from /proc/meminfo in bytes; 0 when unreadable.
inline double mem_available_bytes() {
    std::ifstream in("/proc/meminfo");
    std::string key;
    double kib = 0;
    while (in >> key >> kib) {
        if (key == "MemAvailable:") return kib * 1024.0;
        in.ignore(256, '\n');
    }
    return 0;
}

}  // namespace smoe_bench
