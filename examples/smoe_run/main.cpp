// smoe-run CASE_DIR OUT_FILE [--layer N] [--bf16-dot PATH] [--int8-dot PATH] [--packed FILE [--budget BYTES]]: runs one MoE layer, one router or one rank-wise LoRA layer
// described by a case folder (cases.md) and writes its outputs as safetensors. Exit status 0 on
// success, 1 on bad input (the message names the file, tensor or key), 2 on a usage error.

#include <charconv>
#include <cstdio>
#include <exception>
#include <new>
#include <string>

#include "case_io.hpp"
#include "smoe/core/error.hpp"

namespace {

int usage(char const* msg) {
    std::fprintf(stderr,
                 "smoe-run: %s\n"
                 "usage: smoe-run CASE_DIR OUT_FILE [--layer N] [--bf16-dot automatic|off|on|emulated]\n"
                 "                [--int8-dot off|on|avx2|avx-vnni|portable] [--packed FILE [--budget BYTES] [--eviction lru|lfu]]\n"
                 "  CASE_DIR  a case folder (config.json, weights.safetensors or a checkpoint, input.safetensors)\n"
                 "  OUT_FILE  the outputs, written as safetensors\n"
                 "  --layer N the decoder layer of a full checkpoint (default 0)\n"
                 "  --bf16-dot bf16 experts' dot product: automatic (vdpbf16ps where the CPU has it), off (fp32),\n"
                 "            on (vdpbf16ps, required), emulated (its arithmetic in scalar code); on and emulated\n"
                 "            also put FP8 and MXFP4 experts on the bf16 dot path\n"
                 "  --int8-dot int4, int8, ternary and MXFP4 experts of a quantised layer: off (exact fp32 path, the\n"
                 "            default), on (activations quantised to int8 per 32: VNNI, else AVX2, else portable),\n"
                 "            avx2, avx-vnni, portable; MXFP4 keeps the bf16 dot path where --bf16-dot puts it there\n"
                 "  --packed FILE  the routed experts from a packed expert file (smoe-pack), mapped; the same bits\n"
                 "  --budget BYTES with --packed: a cache of that many bytes (at least one expert) instead\n"
                 "  --eviction lru|lfu  the cache's eviction policy (default lru)\n",
                 msg);
    return 2;
}

}  // namespace

int main(int argc, char** argv) {
    smoe_run::Args a;
    std::vector<std::string> positional;
    for (int i = 1; i < argc; ++i) {
        std::string const arg = argv[i];
        if (arg == "--layer") {
            if (i + 1 >= argc) return usage("--layer needs a value");
            std::string const v = argv[++i];
            auto [p, ec] = std::from_chars(v.data(), v.data() + v.size(), a.layer);
            if (ec != std::errc() || p != v.data() + v.size() || a.layer < 0)
                return usage(("--layer: '" + v + "' is not a layer index >= 0").c_str());
            a.layer_given = true;
        } else if (arg == "--bf16-dot") {
            if (i + 1 >= argc) return usage("--bf16-dot needs a value");
            std::string const v = argv[++i];
            auto const dot = smoe::expert::parse_bf16_dot(v);
            if (!dot) return usage(("--bf16-dot: '" + v + "' is not one of automatic, off, on, emulated").c_str());
            a.bf16_dot = *dot;
        } else if (arg == "--int8-dot") {
            if (i + 1 >= argc) return usage("--int8-dot needs a value");
            std::string const v = argv[++i];
            auto const dot = smoe::expert::parse_int8_dot(v);
            if (!dot) return usage(("--int8-dot: '" + v + "' is not one of off, on, avx2, avx-vnni, portable").c_str());
            a.int8_dot = *dot;
        } else if (arg == "--packed") {
            if (i + 1 >= argc) return usage("--packed needs a file");
            a.packed = argv[++i];
        } else if (arg == "--budget") {
            if (i + 1 >= argc) return usage("--budget needs a byte count");
            std::string const v = argv[++i];
            auto [p, ec] = std::from_chars(v.data(), v.data() + v.size(), a.budget);
            if (ec != std::errc() || p != v.data() + v.size() || a.budget < 0)
                return usage(("--budget: '" + v + "' is not a byte count >= 0").c_str());
        } else if (arg == "--eviction") {
            if (i + 1 >= argc) return usage("--eviction needs a policy");
            std::string const v = argv[++i];
            if (v == "lru") a.eviction = smoe::store::Eviction::lru;
            else if (v == "lfu") a.eviction = smoe::store::Eviction::lfu;
            else return usage(("--eviction: '" + v + "' is not one of lru, lfu").c_str());
        } else if (arg == "-h" || arg == "--help") {
            usage("runs one case folder");
            return 0;
        } else if (!arg.empty() && arg[0] == '-') {
            return usage(("unknown option '" + arg + "'").c_str());
        } else {
            positional.push_back(arg);
        }
    }
    if (positional.size() != 2) return usage("expected CASE_DIR and OUT_FILE");
    if (a.packed.empty() && (a.budget >= 0 || a.eviction != smoe::store::Eviction::lru)) return usage("--budget and --eviction need --packed");
    a.case_dir = positional[0];
    a.out_file = positional[1];
    try {
        return smoe_run::run_case(a);
    } catch (smoe_run::usage_error const& e) {
        return usage(e.what());
    } catch (smoe::invalid_argument const& e) {
        std::fprintf(stderr, "smoe-run: error: %s\n", e.what());
        return 1;
    } catch (smoe::allocation_error const& e) {
        std::fprintf(stderr, "smoe-run: error: %s\n", e.what());
        return 1;
    } catch (std::bad_alloc const&) {
        // The checks bound every allocation by the files; one that still fails is a real shortage.
        std::fprintf(stderr, "smoe-run: error: out of memory running the case in %s\n", a.case_dir.string().c_str());
        return 1;
    } catch (std::exception const& e) {
        std::fprintf(stderr, "smoe-run: error: %s\n", e.what());
        return 1;
    }
}
