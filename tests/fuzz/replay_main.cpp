// Deterministic replay of the fuzz corpus for ctest (no libFuzzer needed): every file of the
// corpus folder, then a fixed set of mutations of each (bit flips, digit changes, truncations,
// byte insertions and deletions, random bytes from a fixed seed), through LLVMFuzzerTestOneInput.
// A bug shows as an abort or a sanitizer report, as in the fuzzer itself.
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <random>
#include <string>
#include <vector>

extern "C" int LLVMFuzzerTestOneInput(std::uint8_t const* data, std::size_t size);

namespace {

using Bytes = std::vector<std::uint8_t>;

std::size_t runs = 0;

void run(Bytes const& b) {
    LLVMFuzzerTestOneInput(b.data(), b.size());
    ++runs;
}

// rng() % n rather than std::uniform_int_distribution, whose output differs between standard
// libraries: the same inputs everywhere.
std::size_t pick(std::mt19937_64& rng, std::size_t n) { return n ? static_cast<std::size_t>(rng() % n) : 0; }

void mutate(Bytes const& seed, std::mt19937_64& rng) {
    if (seed.empty()) return;
    for (int i = 0; i < 48; ++i) {  // single bit flips
        Bytes b = seed;
        b[pick(rng, b.size())] ^= static_cast<std::uint8_t>(1u << pick(rng, 8));
        run(b);
    }
    std::vector<std::size_t> digits;  // the numbers in the header: shapes, offsets
    for (std::size_t i = 8; i < seed.size(); ++i)
        if (seed[i] >= '0' && seed[i] <= '9') digits.push_back(i);
    for (int i = 0; i < 32 && !digits.empty(); ++i) {
        Bytes b = seed;
        b[digits[pick(rng, digits.size())]] = static_cast<std::uint8_t>('0' + pick(rng, 10));
        run(b);
    }
    for (int i = 0; i < 16; ++i) {  // truncations
        run(Bytes(seed.begin(), seed.begin() + static_cast<std::ptrdiff_t>(pick(rng, seed.size()))));
    }
    static constexpr std::uint8_t kInteresting[] = {0, 0xFF, 0x80, '"', '{', '}', '[', ']', ',', ':', '-', '9', '\\'};
    for (int i = 0; i < 24; ++i) {  // insert, overwrite or delete one byte
        Bytes b = seed;
        auto const at = static_cast<std::ptrdiff_t>(pick(rng, b.size()));
        std::uint8_t const v = kInteresting[pick(rng, std::size(kInteresting))];
        switch (i % 3) {
            case 0: b.insert(b.begin() + at, v); break;
            case 1: b[static_cast<std::size_t>(at)] = v; break;
            default: b.erase(b.begin() + at); break;
        }
        run(b);
    }
    for (int i = 0; i < 8; ++i) {  // a random header length over valid JSON
        Bytes b = seed;
        for (std::size_t k = 0; k < std::min<std::size_t>(8, b.size()); ++k) b[k] = static_cast<std::uint8_t>(rng());
        if (i % 2 && b.size() >= 8) b[2] = b[3] = b[4] = b[5] = b[6] = b[7] = 0;  // a small one
        run(b);
    }
}

}  // namespace

int main(int argc, char** argv) {
    if (argc != 2) {
        std::fprintf(stderr, "usage: %s CORPUS_DIR\n", argv[0]);
        return 2;
    }
    std::vector<std::filesystem::path> files;
    for (auto const& e : std::filesystem::directory_iterator(argv[1]))
        if (e.is_regular_file()) files.push_back(e.path());
    std::sort(files.begin(), files.end());
    if (files.empty()) {
        std::fprintf(stderr, "no corpus files in %s\n", argv[1]);
        return 1;
    }
    std::mt19937_64 rng(20261123);
    for (auto const& p : files) {
        std::ifstream in(p, std::ios::binary);
        Bytes const seed((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
        run(seed);
        mutate(seed, rng);
    }
    for (int i = 0; i < 256; ++i) {  // random bytes, some behind a plausible header length
        Bytes b(pick(rng, 96));
        for (auto& x : b) x = static_cast<std::uint8_t>(rng());
        if (i % 2 && b.size() >= 8) {
            b[0] = static_cast<std::uint8_t>(b.size() - 8 - pick(rng, b.size() - 7));
            std::fill(b.begin() + 1, b.begin() + 8, 0);
        }
        run(b);
    }
    std::printf("replayed %zu corpus files and %zu inputs in all\n", files.size(), runs);
    return 0;
}
