// compare_case CASE_DIR OUT_FILE: checks smoe-run's outputs against the case's expected.safetensors.
// Every expected tensor must be in OUT_FILE with the same shape (names starting with "hf_" are
// information only). Integer tensors (ids, drop masks, counts) must match exactly; hidden_states by
// experts.md §9's per-token metric max|y - r| / max|r| within 1e-4 for fp32 weights and 2e-2 for
// bf16 weights (the bounds); routing weights and losses within 1e-5 relative.

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <string>

#include "smoe/io/safetensors.hpp"

namespace fs = std::filesystem;
using smoe::io::Dtype;
using smoe::io::SafetensorsFile;

namespace {

bool has_bf16_weights(fs::path const& dir) {
    for (auto const& entry : fs::directory_iterator(dir)) {
        auto const name = entry.path().filename().string();
        if (entry.path().extension() != ".safetensors" || name == "input.safetensors" || name == "expected.safetensors") continue;
        auto const f = SafetensorsFile::open(entry.path());
        for (auto const& t : f.tensors())
            if (t.dtype == Dtype::BF16) return true;
    }
    return false;
}

int failures = 0;

void fail(std::string const& msg) {
    std::fprintf(stderr, "MISMATCH %s\n", msg.c_str());
    ++failures;
}

}  // namespace

int main(int argc, char** argv) {
    if (argc != 3) {
        std::fprintf(stderr, "usage: compare_case CASE_DIR OUT_FILE\n");
        return 2;
    }
    fs::path const dir = argv[1];
    try {
        auto const expected = SafetensorsFile::open(dir / "expected.safetensors");
        auto const got = SafetensorsFile::open(argv[2]);
        double const hidden_tol = has_bf16_weights(dir) ? 2e-2 : 1e-4;
        int compared = 0;
        for (auto const& want : expected.tensors()) {
            if (want.name.rfind("hf_", 0) == 0) continue;
            auto const* have = got.find(want.name);
            if (!have) {
                fail(want.name + ": missing from the output");
                continue;
            }
            if (have->shape != want.shape) {
                fail(want.name + ": shape differs");
                continue;
            }
            ++compared;
            bool const integer = want.dtype == Dtype::I32 || want.dtype == Dtype::U8 || want.dtype == Dtype::BOOL || want.dtype == Dtype::I64;
            if (integer) {
                auto const a = smoe::io::read_i32(*have), b = smoe::io::read_i32(want);
                for (std::size_t i = 0; i < a.size(); ++i)
                    if (a[i] != b[i]) {
                        fail(want.name + "[" + std::to_string(i) + "]: " + std::to_string(a[i]) + " != expected " + std::to_string(b[i]));
                        break;
                    }
                continue;
            }
            auto const a = smoe::io::read_f32(*have), b = smoe::io::read_f32(want);
            if (want.name == "hidden_states") {
                std::int64_t const rows = want.shape.empty() ? 1 : want.shape[0];
                std::size_t const cols = rows ? a.size() / static_cast<std::size_t>(rows) : 0;
                double worst = 0;
                for (std::int64_t t = 0; t < rows; ++t) {
                    double err = 0, mag = 0;
                    for (std::size_t i = 0; i < cols; ++i) {
                        std::size_t const at = static_cast<std::size_t>(t) * cols + i;
                        err = std::max(err, std::fabs(double(a[at]) - b[at]));
                        mag = std::max(mag, std::fabs(double(b[at])));
                    }
                    double const rel = mag > 0 ? err / mag : err;
                    if (!(rel <= hidden_tol)) fail("hidden_states token " + std::to_string(t) + ": relative error " + std::to_string(rel));
                    worst = std::max(worst, rel);
                }
                std::printf("hidden_states: max per-token relative error %.3g (bound %.0e)\n", worst, hidden_tol);
                continue;
            }
            for (std::size_t i = 0; i < a.size(); ++i) {
                double const d = std::fabs(double(a[i]) - b[i]);
                if (!(d <= 1e-5 * std::max(1.0, std::fabs(double(b[i]))))) {
                    fail(want.name + "[" + std::to_string(i) + "]: " + std::to_string(a[i]) + " vs expected " + std::to_string(b[i]));
                    break;
                }
            }
        }
        std::printf("%s: %d tensors compared, %d mismatches\n", dir.filename().c_str(), compared, failures);
        if (compared == 0) return 1;
    } catch (std::exception const& e) {
        std::fprintf(stderr, "compare_case: %s\n", e.what());
        return 1;
    }
    return failures == 0 ? 0 : 1;
}
