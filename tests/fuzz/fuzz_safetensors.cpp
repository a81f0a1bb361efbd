// libFuzzer target for the safetensors reader: any byte string must either parse into tensors that
// all lie inside the buffer, or throw smoe::invalid_argument. Anything else (another exception, a
// crash, a sanitizer report, a broken invariant) is a bug. Built as a libFuzzer binary with
// -DSMOE_FUZZ=ON under clang, and always into the deterministic corpus replay that ctest runs.
#include <smoe/io/safetensors.hpp>

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string_view>
#include <vector>

namespace {

volatile unsigned g_sink;  // keeps the reads of every byte from being optimised away

void require(bool ok) {
    if (!ok) std::abort();
}

// Reads every byte and converts every tensor the readers accept, so that ASan sees any span that
// points outside the buffer.
void touch(smoe::io::SafetensorsFile const& f) {
    namespace io = smoe::io;
    auto const file = f.file_bytes();
    unsigned sum = 0;
    for (auto const& t : f.tensors()) {
        require(f.find(t.name) == &t);
        require(t.numel() >= 0);
        require(static_cast<std::uint64_t>(t.numel()) * io::dtype_size(t.dtype) == t.bytes.size());
        require(t.bytes.empty() || (t.bytes.data() >= file.data() && t.bytes.data() + t.bytes.size() <= file.data() + file.size()));
        for (std::byte b : t.bytes) sum += static_cast<unsigned>(b);
        try {
            switch (t.dtype) {
                case io::Dtype::F32: case io::Dtype::BF16: case io::Dtype::F16:
                    require(io::read_f32(t, t.shape).size() == t.bytes.size() / io::dtype_size(t.dtype));
                    break;
                case io::Dtype::U8: case io::Dtype::BOOL:
                    require(io::read_u8(t).size() == t.bytes.size());
                    [[fallthrough]];
                default:
                    (void)io::read_i32(t);  // I64 out of int32 range and F64 throw
            }
        } catch (smoe::invalid_argument const&) {
        }
    }
    for (auto const& [k, v] : f.metadata()) sum += static_cast<unsigned>(k.size() + v.size());
    g_sink = sum;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(std::uint8_t const* data, std::size_t size) {
    std::vector<std::byte> bytes(size);
    if (size) std::memcpy(bytes.data(), data, size);
    try {
        touch(smoe::io::SafetensorsFile::from_bytes(std::move(bytes), "fuzz.safetensors"));
    } catch (smoe::invalid_argument const&) {
    }
    // The same strict JSON parser reads index and config files, with deeper nesting allowed.
    try {
        (void)smoe::io::parse_json_strict(std::string_view(reinterpret_cast<char const*>(data), size), "fuzz.json");
    } catch (smoe::invalid_argument const&) {
    }
    return 0;
}
