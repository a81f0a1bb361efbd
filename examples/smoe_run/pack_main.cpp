// smoe-pack SOURCE_DIR OUT_FILE [--dtype f32|bf16|int8|int4] [--int4-group N] [--layer N]... [--bf16-dot M]
// [--int8-dot M]: writes the routed experts of a checkpoint's MoE layers (or a case folder's layer,
// cases.md) into a packed expert file (smoe/store/packed_file.hpp), one expert at a time, loaded
// through the same code as smoe-run. Exit status 0 on success, 1 on bad input, 2 on a usage error.

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
                 "smoe-pack: %s\n"
                 "usage: smoe-pack SOURCE_DIR OUT_FILE [--dtype f32|bf16|int8|int4] [--int4-group N] [--layer N]...\n"
                 "                 [--bf16-dot automatic|off|on|emulated] [--int8-dot off|on|avx2|avx-vnni|portable]\n"
                 "  SOURCE_DIR   a Hugging Face checkpoint folder, or a case folder (cases.md)\n"
                 "  OUT_FILE     the packed expert file (read by smoe-run --packed and store::PackedFile)\n"
                 "  --dtype      the experts' storage: f32, bf16, int8 (per channel), int4 (QuantSwiGLU, group\n"
                 "               --int4-group, 0 = per channel); default: the checkpoint's own (a quantised\n"
                 "               checkpoint keeps its formats)\n"
                 "  --layer N    a decoder layer to pack (repeatable); default: every MoE layer, layer 0 of a case\n"
                 "  --bf16-dot, --int8-dot  the dot paths the file is packed for (as smoe-run's; a reader must\n"
                 "               resolve them the same way)\n",
                 msg);
    return 2;
}

bool parse_int(std::string const& v, std::int64_t& out) {
    auto [p, ec] = std::from_chars(v.data(), v.data() + v.size(), out);
    return ec == std::errc() && p == v.data() + v.size() && out >= 0;
}

}  // namespace

int main(int argc, char** argv) {
    smoe_run::PackArgs a;
    std::vector<std::string> positional;
    for (int i = 1; i < argc; ++i) {
        std::string const arg = argv[i];
        auto value = [&](char const* what) -> char const* { return i + 1 < argc ? argv[++i] : (usage((arg + " needs " + what).c_str()), nullptr); };
        if (arg == "--dtype") {
            char const* v = value("a value");
            if (!v) return 2;
            a.dtype = v;
        } else if (arg == "--int4-group" || arg == "--layer") {
            char const* v = value("a number");
            if (!v) return 2;
            std::int64_t n = 0;
            if (!parse_int(v, n)) return usage((arg + ": '" + v + "' is not a number >= 0").c_str());
            if (arg == "--layer")
                a.layers.push_back(n);
            else
                a.int4_group = n;
        } else if (arg == "--bf16-dot") {
            char const* v = value("a value");
            if (!v) return 2;
            auto const dot = smoe::expert::parse_bf16_dot(v);
            if (!dot) return usage(("--bf16-dot: '" + std::string(v) + "' is not one of automatic, off, on, emulated").c_str());
            a.bf16_dot = *dot;
        } else if (arg == "--int8-dot") {
            char const* v = value("a value");
            if (!v) return 2;
            auto const dot = smoe::expert::parse_int8_dot(v);
            if (!dot) return usage(("--int8-dot: '" + std::string(v) + "' is not one of off, on, avx2, avx-vnni, portable").c_str());
            a.int8_dot = *dot;
        } else if (arg == "-h" || arg == "--help") {
            usage("packs experts");
            return 0;
        } else if (!arg.empty() && arg[0] == '-') {
            return usage(("unknown option '" + arg + "'").c_str());
        } else {
            positional.push_back(arg);
        }
    }
    if (positional.size() != 2) return usage("expected SOURCE_DIR and OUT_FILE");
    a.source = positional[0];
    a.out_file = positional[1];
    try {
        return smoe_run::pack_case(a);
    } catch (smoe_run::usage_error const& e) {
        return usage(e.what());
    } catch (smoe::invalid_argument const& e) {
        std::fprintf(stderr, "smoe-pack: error: %s\n", e.what());
        return 1;
    } catch (std::bad_alloc const&) {
        std::fprintf(stderr, "smoe-pack: error: out of memory packing %s\n", a.source.string().c_str());
        return 1;
    } catch (std::exception const& e) {
        std::fprintf(stderr, "smoe-pack: error: %s\n", e.what());
        return 1;
    }
}
