// libFuzzer target for config.json, through smoe-run's own code (smoe_run::run_case). An input is
// one line naming a case folder of tests/data/cases, then the config.json to run it with; the
// folder's tensors are copied into a scratch folder next to it. Any config must either run or throw
// smoe::invalid_argument (a message naming the file, tensor or key). Anything else is a bug: another
// exception (std::bad_alloc, even a named smoe::allocation_error: these cases are kilobytes), a crash,
// a sanitizer report, or a hang (ctest's timeout; libFuzzer's -timeout).
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <string>
#include <string_view>

#include <unistd.h>

#include <nlohmann/json.hpp>

#include "fuzz_config.hpp"
#include "smoe/core/error.hpp"
#include "smoe_run/case_io.hpp"

namespace fs = std::filesystem;

namespace {

struct Scratch {
    fs::path dir = fs::temp_directory_path() / ("smoe_fuzz_config." + std::to_string(::getpid()));
    ~Scratch() {
        std::error_code ec;
        fs::remove_all(dir, ec);
    }
};

// The case folder's files but its config and expected outputs, copied once per case.
fs::path const& scratch_for(std::string const& name, std::int64_t& layer) {
    static Scratch const s;
    fs::path const& scratch = s.dir;
    static std::string current;
    static std::int64_t current_layer = 0;
    if (name != current) {
        fs::remove_all(scratch);
        fs::create_directories(scratch);
        fs::path const src = fs::path(SMOE_CASES_DIR) / name;
        current_layer = 0;
        for (auto const& e : fs::directory_iterator(src)) {
            auto const file = e.path().filename().string();
            if (file == "case.json") {
                std::ifstream in(e.path());
                current_layer = nlohmann::json::parse(in).value("layer", std::int64_t(0));
            } else if (file != "config.json" && file != "expected.safetensors") {
                fs::copy_file(e.path(), scratch / file);
            }
        }
        current = name;
    }
    layer = current_layer;
    return scratch;
}

bool is_case(std::string const& name) {
    if (name.empty() || name.find('/') != std::string::npos || name.front() == '.') return false;
    std::error_code ec;
    return fs::is_regular_file(fs::path(SMOE_CASES_DIR) / name / "config.json", ec);
}

}  // namespace

namespace smoe_fuzz {

Outcome last_outcome = Outcome::skipped;

}  // namespace smoe_fuzz

extern "C" int LLVMFuzzerTestOneInput(std::uint8_t const* data, std::size_t size) {
    using smoe_fuzz::last_outcome;
    std::string_view const in(reinterpret_cast<char const*>(data), size);
    last_outcome = smoe_fuzz::Outcome::skipped;
    auto const nl = in.find('\n');
    if (nl == std::string_view::npos || !is_case(std::string(in.substr(0, nl)))) return 0;
    smoe_run::Args a;
    a.case_dir = scratch_for(std::string(in.substr(0, nl)), a.layer);
    a.layer_given = a.layer != 0;
    a.out_file = a.case_dir / "out.safetensors";
    {
        std::ofstream out(a.config_file(), std::ios::binary | std::ios::trunc);
        out.write(in.data() + nl + 1, static_cast<std::streamsize>(size - nl - 1));
    }
    try {
        smoe_run::run_case(a);
        last_outcome = smoe_fuzz::Outcome::ran;
    } catch (smoe::invalid_argument const&) {
        last_outcome = smoe_fuzz::Outcome::refused;
    } catch (smoe_run::usage_error const&) {  // --layer with a router config: the case's, not a bug
        last_outcome = smoe_fuzz::Outcome::refused;
    }
    return 0;
}
