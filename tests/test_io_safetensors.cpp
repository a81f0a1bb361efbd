// smoe::io safetensors reader, writer and checkpoint folders: round trips, exact 16-bit float
// widening, and a clear error for every kind of corrupted file (cases.md, "safetensors, briefly").
#include <catch2/catch.hpp>

#include <smoe/io/safetensors.hpp>

#include <atomic>
#include <bit>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <limits>
#include <random>
#include <string>
#include <vector>

namespace fs = std::filesystem;
namespace io = smoe::io;
using Catch::Matchers::Contains;

namespace {

// A file as the format defines it: 8-byte little-endian N (the header's size unless given), the
// header text, then `data` bytes counting 0, 1, 2, ...
std::vector<std::byte> raw_file(std::string const& header, std::size_t data, std::uint64_t n = ~std::uint64_t{0}) {
    if (n == ~std::uint64_t{0}) n = header.size();
    std::vector<std::byte> out;
    for (int i = 0; i < 8; ++i) out.push_back(static_cast<std::byte>((n >> (8 * i)) & 0xFF));
    for (char c : header) out.push_back(static_cast<std::byte>(c));
    for (std::size_t i = 0; i < data; ++i) out.push_back(static_cast<std::byte>(i & 0xFF));
    return out;
}

io::SafetensorsFile parse(std::vector<std::byte> bytes) {
    return io::SafetensorsFile::from_bytes(std::move(bytes), "bad.safetensors");
}

std::vector<std::byte> to_bytes(std::initializer_list<int> v) {
    std::vector<std::byte> out;
    for (int x : v) out.push_back(static_cast<std::byte>(x));
    return out;
}

template <class T>
std::vector<std::byte> bytes_of(std::vector<T> const& v) {
    auto s = std::as_bytes(std::span<T const>(v));
    return {s.begin(), s.end()};
}

// A fresh folder under the system temp directory, removed with everything in it.
struct TempDir {
    fs::path path;
    TempDir() {
        static std::atomic<int> counter{0};
        std::random_device rd;
        path = fs::temp_directory_path() /
               ("smoe_test_io_" + std::to_string(rd()) + "_" + std::to_string(counter++));
        fs::create_directories(path);
    }
    ~TempDir() {
        std::error_code ec;
        fs::remove_all(path, ec);
    }
    TempDir(TempDir const&) = delete;
    TempDir& operator=(TempDir const&) = delete;
};

void write_text(fs::path const& p, std::string const& text) {
    std::ofstream(p, std::ios::binary) << text;
}

// The independent definition of binary16: (-1)^s * 2^(e-15) * (1 + m/1024), subnormals
// (-1)^s * 2^-14 * m/1024.
float f16_by_definition(std::uint16_t bits) {
    int const s = bits >> 15, e = (bits >> 10) & 31, m = bits & 1023;
    double const sign = s ? -1.0 : 1.0;
    if (e == 31) return m ? std::numeric_limits<float>::quiet_NaN() : static_cast<float>(sign * INFINITY);
    if (e == 0) return static_cast<float>(sign * std::ldexp(m / 1024.0, -14));
    return static_cast<float>(sign * std::ldexp(1.0 + m / 1024.0, e - 15));
}

}  // namespace

TEST_CASE("the writer's bytes are the reference implementation's bytes", "[io][safetensors]") {
    // Expected bytes: the serialization tests of huggingface/safetensors (safetensors/src/tensor.rs).
    std::vector<float> const v = {0, 1, 2, 3, 4, 5};
    SECTION("one F32 tensor whose header needs no padding") {
        io::SafetensorsWriter w;
        w.add_f32("attn.0", {1, 2, 3}, v);
        CHECK(w.to_bytes() ==
              to_bytes({64,  0,   0,   0,   0,   0,  0,   0,   123, 34,  97,  116, 116, 110, 46,  48,  34,  58,
                        123, 34,  100, 116, 121, 112, 101, 34,  58,  34,  70,  51,  50,  34,  44,  34,  115, 104,
                        97,  112, 101, 34,  58,  91,  49,  44,  50,  44,  51,  93,  44,  34,  100, 97,  116, 97,
                        95,  111, 102, 102, 115, 101, 116, 115, 34,  58,  91,  48,  44,  50,  52,  93,  125, 125,
                        0,   0,   0,   0,   0,   0,   128, 63,  0,   0,   0,   64,  0,   0,   64,  64,  0,   0,
                        128, 64,  0,   0,   160, 64}));
    }
    SECTION("a header padded with spaces to 8 bytes") {
        io::SafetensorsWriter w;
        w.add_f32("attn0", {1, 1, 2, 3}, v);
        CHECK(w.to_bytes() ==
              to_bytes({72,  0,   0,   0,   0,   0,   0,   0,   123, 34,  97,  116, 116, 110, 48,  34,  58,  123,
                        34,  100, 116, 121, 112, 101, 34,  58,  34,  70,  51,  50,  34,  44,  34,  115, 104, 97,
                        112, 101, 34,  58,  91,  49,  44,  49,  44,  50,  44,  51,  93,  44,  34,  100, 97,  116,
                        97,  95,  111, 102, 102, 115, 101, 116, 115, 34,  58,  91,  48,  44,  50,  52,  93,  125,
                        125, 32,  32,  32,  32,  32,  32,  32,  0,   0,   0,   0,   0,   0,   128, 63,  0,   0,
                        0,   64,  0,   0,   64,  64,  0,   0,   128, 64,  0,   0,   160, 64}));
    }
    SECTION("no tensor, with and without metadata") {
        io::SafetensorsWriter w;
        CHECK(w.to_bytes() == to_bytes({8, 0, 0, 0, 0, 0, 0, 0, 123, 125, 32, 32, 32, 32, 32, 32}));
        w.set_metadata("framework", "pt");
        CHECK(w.to_bytes() == to_bytes({40,  0,   0,   0,  0,   0,   0,   0,   123, 34, 95, 95, 109, 101,
                                        116, 97,  100, 97, 116, 97,  95,  95,  34,  58, 123, 34, 102, 114,
                                        97,  109, 101, 119, 111, 114, 107, 34,  58,  34, 112, 116, 34, 125,
                                        125, 32,  32,  32,  32,  32}));
        auto const f = parse(w.to_bytes());
        CHECK(f.tensors().empty());
        CHECK(f.metadata() == std::map<std::string, std::string>{{"framework", "pt"}});
    }
}

TEST_CASE("files written by the writer read back bit for bit: every dtype, empty and scalar tensors", "[io][safetensors]") {
    std::vector<float> const f32 = {1.5f, -2.25f, 3.0f, 0.0f, -0.0f, 1e-38f};
    std::vector<std::uint16_t> const bf16 = {0x3F80, 0xC000, 0x7F80};
    std::vector<std::uint16_t> const f16 = {0x3C00, 0x0001, 0xFC00, 0x7E00};
    std::vector<std::int32_t> const i32 = {7, -8, std::numeric_limits<std::int32_t>::max()};
    std::vector<std::uint8_t> const u8 = {0, 1, 255};
    std::vector<float> const empty;
    std::vector<float> const scalar = {42.0f};

    io::SafetensorsWriter w;
    w.add_u8("u8", {3}, u8);  // added first, laid out last: the writer orders by element size
    w.add_f32("f32", {2, 3}, f32);
    w.add_bf16("bf16", {3, 1}, bf16);
    w.add_f16("f16", {2, 2}, f16);
    w.add_i32("i32", {3}, i32);
    w.add_f32("empty", {4, 0, 2}, empty);
    w.add_f32("scalar", {}, scalar);
    w.set_metadata("format", "pt");

    auto check = [&](io::SafetensorsFile const& f) {
        REQUIRE(f.tensors().size() == 7);
        CHECK(f.metadata().at("format") == "pt");
        CHECK(f.at("f32").dtype == io::Dtype::F32);
        CHECK(f.at("f32").shape == std::vector<std::int64_t>{2, 3});
        CHECK(io::read_f32(f, "f32", {2, 3}) == f32);
        CHECK(io::read_f32(f, "bf16", {3, 1}) == std::vector<float>{1.0f, -2.0f, INFINITY});
        auto const h = io::read_f32(f, "f16", {2, -1});
        CHECK(h[0] == 1.0f);
        CHECK(h[1] == std::ldexp(1.0f, -24));
        CHECK(h[2] == -INFINITY);
        CHECK(std::isnan(h[3]));
        CHECK(io::read_i32(f, "i32", {3}) == i32);
        CHECK(io::read_u8(f, "u8", {3}) == u8);
        CHECK(f.at("empty").numel() == 0);
        CHECK(f.at("empty").bytes.empty());
        CHECK(io::read_f32(f, "empty", {4, 0, 2}).empty());
        CHECK(f.at("scalar").shape.empty());
        CHECK(f.at("scalar").numel() == 1);
        CHECK(io::read_f32(f, "scalar") == scalar);
        CHECK(f.find("absent") == nullptr);
        // Laid out by decreasing element size, each tensor aligned to its size in the file.
        auto const base = f.file_bytes().data();
        for (auto const& t : f.tensors()) {
            CAPTURE(t.name);
            CHECK((t.bytes.data() - base) % static_cast<std::ptrdiff_t>(io::dtype_size(t.dtype)) == 0);
        }
        for (std::size_t i = 1; i < f.tensors().size(); ++i)
            CHECK(io::dtype_size(f.tensors()[i - 1].dtype) >= io::dtype_size(f.tensors()[i].dtype));
        CHECK(f.tensors().back().name == "u8");
    };

    SECTION("in memory") { check(parse(w.to_bytes())); }
    SECTION("through a memory-mapped file, also after a move") {
        TempDir dir;
        w.write(dir.path / "t.safetensors");
        auto f = io::SafetensorsFile::open(dir.path / "t.safetensors");
        CHECK(f.path() == dir.path / "t.safetensors");
        check(f);
        io::SafetensorsFile moved = std::move(f);
        check(moved);
    }
}

TEST_CASE("BF16 and F16 widen to float exactly", "[io][safetensors]") {
    CHECK(io::bf16_to_f32(0x3F80) == 1.0f);
    CHECK(io::bf16_to_f32(0xC040) == -3.0f);
    CHECK(io::bf16_to_f32(0x0001) == std::bit_cast<float>(0x00010000u));  // a float subnormal
    CHECK(io::bf16_to_f32(0xFF80) == -INFINITY);
    CHECK(std::isnan(io::bf16_to_f32(0x7FC1)));

    CHECK(io::f16_to_f32(0x3C00) == 1.0f);
    CHECK(io::f16_to_f32(0xC000) == -2.0f);
    CHECK(io::f16_to_f32(0x7BFF) == 65504.0f);
    CHECK(io::f16_to_f32(0x0400) == std::ldexp(1.0f, -14));  // smallest normal
    CHECK(io::f16_to_f32(0x0001) == std::ldexp(1.0f, -24));  // smallest subnormal
    CHECK(io::f16_to_f32(0x03FF) == 1023 * std::ldexp(1.0f, -24));
    CHECK(io::f16_to_f32(0x7C00) == INFINITY);
    CHECK(std::isnan(io::f16_to_f32(0x7C01)));
    CHECK(std::signbit(io::f16_to_f32(0x8000)));
    CHECK(io::f16_to_f32(0x8000) == 0.0f);

    for (std::uint32_t b = 0; b < 0x10000; ++b) {
        auto const bits = static_cast<std::uint16_t>(b);
        float const got = io::f16_to_f32(bits), want = f16_by_definition(bits);
        if (std::isnan(want)) {
            if (!std::isnan(got)) FAIL("f16 " << b << " should be nan, got " << got);
        } else if (std::bit_cast<std::uint32_t>(got) != std::bit_cast<std::uint32_t>(want)) {
            FAIL("f16 " << b << ": got " << got << ", want " << want);
        }
    }
}

TEST_CASE("tensors at unaligned offsets are read by copying", "[io][safetensors]") {
    // Padding the header to 8 + N = 1 (mod 4) starts the data area at an odd byte of the buffer:
    // neither tensor is 2- or 4-byte aligned (UBSan flags any typed read of them).
    std::string header = R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F16","shape":[1],"data_offsets":[8,10]}})";
    while ((8 + header.size()) % 4 != 1) header += ' ';
    auto bytes = raw_file(header, 10);
    float const a[2] = {0.5f, -7.0f};
    std::uint16_t const b = 0x3C00;
    std::memcpy(bytes.data() + 8 + header.size(), a, 8);
    std::memcpy(bytes.data() + 8 + header.size() + 8, &b, 2);
    auto const f = parse(std::move(bytes));
    CHECK(io::read_f32(f, "a", {2}) == std::vector<float>{0.5f, -7.0f});
    CHECK(io::read_f32(f, "b") == std::vector<float>{1.0f});
}

TEST_CASE("read_i32 widens the integer dtypes and range-checks I64", "[io][safetensors]") {
    io::SafetensorsWriter w;
    std::vector<std::int64_t> const small = {-5, 1LL << 30};
    std::vector<std::int64_t> const big = {1, 1LL << 31};
    std::vector<std::int8_t> const i8 = {-128, 127};
    w.add("small", io::Dtype::I64, {2}, bytes_of(small));
    w.add("big", io::Dtype::I64, {2}, bytes_of(big));
    w.add("i8", io::Dtype::I8, {2}, bytes_of(i8));
    w.add("flag", io::Dtype::BOOL, {2}, bytes_of(std::vector<std::uint8_t>{1, 0}));
    auto const f = io::SafetensorsFile::from_bytes(w.to_bytes(), "ints.safetensors");
    CHECK(io::read_i32(f, "small") == std::vector<std::int32_t>{-5, 1 << 30});
    CHECK(io::read_i32(f, "i8") == std::vector<std::int32_t>{-128, 127});
    CHECK(io::read_i32(f, "flag") == std::vector<std::int32_t>{1, 0});
    CHECK_THROWS_WITH(io::read_i32(f, "big"),
                      Contains("ints.safetensors") && Contains("'big' element 1") && Contains("2147483648") &&
                          Contains("fits int32"));
    CHECK_THROWS_WITH(io::read_f32(f, "small"), Contains("'small' dtype' = I64") && Contains("F32, BF16 or F16"));
}

TEST_CASE("a corrupted safetensors file gives an error naming the file, the place and the expectation", "[io][safetensors]") {
    auto rejects = [](std::vector<std::byte> bytes, std::vector<std::string> const& parts) {
        try {
            (void)parse(std::move(bytes));
            FAIL("accepted");
        } catch (io::file_error const& e) {
            std::string const msg = e.what();
            CAPTURE(msg);
            CHECK(e.file() == "bad.safetensors");
            CHECK_THAT(msg, Contains("bad.safetensors"));
            for (auto const& p : parts) CHECK_THAT(msg, Contains(p));
        }
    };
    std::string const good = R"({"w":{"dtype":"F32","shape":[2,3],"data_offsets":[0,24]}})";
    REQUIRE_NOTHROW(parse(raw_file(good, 24)));

    SECTION("fewer than 8 bytes") { rejects(to_bytes({1, 0, 0}), {"file size", "3 bytes", "at least 8 bytes"}); }
    SECTION("header length 0") { rejects(raw_file("", 0), {"header length' = 0"}); }
    SECTION("header length beyond the file (truncated)") {
        auto b = raw_file(good, 24);
        b.resize(40);
        rejects(std::move(b), {"header length' = " + std::to_string(good.size()), "at most the file size minus 8 = 32"});
    }
    SECTION("an absurd header length") {
        rejects(raw_file(good, 24, 1ULL << 62), {"header length", "at most 100000000 bytes"});
        rejects(raw_file(good, 24, ~std::uint64_t{0} - 1), {"header length", "at most 100000000 bytes"});
    }
    SECTION("data area truncated") {
        rejects(raw_file(good, 20), {"tensor 'w' data_offsets' = [0,24]", "inside the data area of 20 bytes"});
    }
    SECTION("trailing bytes after the last tensor") {
        rejects(raw_file(good, 25), {"data area' = 25 bytes", "no trailing bytes"});
    }
    SECTION("not JSON") {
        rejects(raw_file(R"({"w":{"dtype":"F32",)", 0), {"JSON text", "valid JSON"});
        // nlohmann alone would stop at the NUL and accept the header.
        rejects(raw_file(good + std::string(3, '\0'), 24), {"a NUL byte at byte " + std::to_string(good.size()), "valid JSON"});
    }
    SECTION("not UTF-8") {
        std::string h = good;
        h[3] = '\xC3';  // a lead byte followed by ASCII
        rejects(raw_file(h, 24), {"byte 3 is not UTF-8", "valid UTF-8"});
        rejects(raw_file("{\"\xED\xA0\x80\":1}", 0), {"byte 2 is not UTF-8"});  // a UTF-16 surrogate
    }
    SECTION("not an object") {
        rejects(raw_file("[1, 2]", 0), {"header' = array", "a JSON object"});
        rejects(raw_file(R"({"w": [1]})", 0), {"tensor 'w'' = array", "dtype, shape and data_offsets"});
    }
    SECTION("nested deeper than a header can be") {
        rejects(raw_file(R"({"w":{"shape":[[1]]}})", 0), {"JSON nesting", "at most 3 levels"});
    }
    SECTION("a missing, unknown or mistyped field") {
        rejects(raw_file(R"({"w":{"dtype":"F32","shape":[0]}})", 0), {"tensor 'w' data_offsets' = missing"});
        rejects(raw_file(R"({"w":{"dtype":"F32","shape":[0],"data_offsets":[0,0],"offsets":1}})", 0),
                {"tensor 'w' key 'offsets'", "only dtype, shape and data_offsets"});
        rejects(raw_file(R"({"w":{"dtype":32,"shape":[0],"data_offsets":[0,0]}})", 0), {"tensor 'w' dtype' = 32"});
    }
    SECTION("an unknown dtype") {
        rejects(raw_file(R"({"w":{"dtype":"U16","shape":[2],"data_offsets":[0,4]}})", 4),
                {"tensor 'w' dtype' = 'U16'", "one of F64, F32, F16, BF16"});
    }
    SECTION("a shape that is not a list of non-negative integers") {
        rejects(raw_file(R"({"w":{"dtype":"F32","shape":[2,-3],"data_offsets":[0,0]}})", 0),
                {"tensor 'w' shape[1]' = -3", "non-negative integer"});
        rejects(raw_file(R"({"w":{"dtype":"F32","shape":[2.5],"data_offsets":[0,0]}})", 0), {"shape[0]' = 2.5"});
        rejects(raw_file(R"({"w":{"dtype":"F32","shape":[99999999999999999999],"data_offsets":[0,0]}})", 0),
                {"shape[0]"});
        rejects(raw_file(R"({"w":{"dtype":"F32","shape":"2","data_offsets":[0,0]}})", 0), {"tensor 'w' shape' = \"2\""});
    }
    SECTION("a shape whose size overflows") {
        rejects(raw_file(R"({"w":{"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,0]}})", 0),
                {"tensor 'w' shape' = [4294967296, 4294967296]", "overflow"});
        // A zero extent makes any shape empty: no overflow.
        CHECK_NOTHROW(parse(raw_file(R"({"w":{"dtype":"F32","shape":[4294967296,4294967296,0],"data_offsets":[0,0]}})", 0)));
    }
    SECTION("data_offsets that are not [begin, end] with begin <= end") {
        rejects(raw_file(R"({"w":{"dtype":"F32","shape":[0],"data_offsets":[0]}})", 0), {"[begin, end]"});
        rejects(raw_file(R"({"w":{"dtype":"F32","shape":[0],"data_offsets":[0,-1]}})", 0), {"non-negative integers"});
        rejects(raw_file(R"({"w":{"dtype":"F32","shape":[1],"data_offsets":[4,0]}})", 4), {"[4,0]", "begin <= end"});
    }
    SECTION("shape and offsets that disagree") {
        rejects(raw_file(R"({"w":{"dtype":"F32","shape":[2,3],"data_offsets":[0,20]}})", 20),
                {"tensor 'w' data_offsets' = [0,20] (20 bytes)", "24 bytes for dtype F32 and shape [2, 3]"});
        rejects(raw_file(R"({"w":{"dtype":"BF16","shape":[2,3],"data_offsets":[0,24]}})", 24),
                {"12 bytes for dtype BF16"});
    }
    SECTION("offsets beyond the data") {
        rejects(raw_file(R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[16,24]}})", 16),
                {"[16,24]", "inside the data area of 16 bytes"});
    }
    SECTION("overlapping tensors") {
        rejects(raw_file(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})", 12),
                {"tensor 'b' data_offsets' = [4, 12]", "no overlap with tensor 'a', which ends at 8"});
        rejects(raw_file(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})", 8),
                {"no overlap with tensor 'a'"});
        // An empty tensor inside another one is an overlap too, as in the reference.
        rejects(raw_file(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"e":{"dtype":"F32","shape":[0],"data_offsets":[4,4]}})", 8),
                {"tensor 'e'", "no overlap with tensor 'a'"});
    }
    SECTION("a hole between tensors") {
        rejects(raw_file(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"b":{"dtype":"F32","shape":[1],"data_offsets":[8,12]}})", 12),
                {"tensor 'b' data_offsets' = [8, 12]", "to start at 4, where tensor 'a' ends", "without holes"});
        rejects(raw_file(R"({"b":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})", 8), {"to start at 0"});
    }
    SECTION("entries in any order are fine") {
        auto const f = parse(raw_file(
            R"({"z":{"dtype":"U8","shape":[2],"data_offsets":[0,2]},"a":{"dtype":"U8","shape":[3],"data_offsets":[2,5]}})", 5));
        REQUIRE(f.tensors().size() == 2);
        CHECK(f.tensors()[0].name == "z");
        CHECK(io::read_u8(f, "a") == std::vector<std::uint8_t>{2, 3, 4});
    }
    SECTION("a duplicate tensor name") {
        rejects(raw_file(R"({"w":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},"w":{"dtype":"U8","shape":[1],"data_offsets":[1,2]}})", 2),
                {"JSON object at the top level' = 'w'", "duplicate key"});
        rejects(raw_file(R"({"w":{"dtype":"U8","dtype":"U8","shape":[1],"data_offsets":[0,1]}})", 1),
                {"JSON object at /w' = 'dtype'", "duplicate key"});
    }
    SECTION("__metadata__ that is not an object of strings") {
        rejects(raw_file(R"({"__metadata__":"x"})", 0), {"__metadata__' = string", "string -> string"});
        rejects(raw_file(R"({"__metadata__":{"k":1}})", 0), {"__metadata__ key 'k'' = number", "a string value"});
    }
    SECTION("a hostile tensor name is cut short in the message") {
        std::string const name(10000, 'x');
        try {
            (void)parse(raw_file("{\"" + name + "\":1}", 0));
            FAIL("accepted");
        } catch (io::file_error const& e) {
            CHECK(std::string(e.what()).size() < 1000);
        }
    }
}

TEST_CASE("missing tensors and unexpected dtypes or shapes are errors naming the file and the tensor", "[io][safetensors]") {
    io::SafetensorsWriter w;
    std::vector<float> const x(6, 1.0f);
    w.add_f32("x", {2, 3}, x);
    w.add_i32("ids", {2}, std::vector<std::int32_t>{1, 2});
    auto const f = io::SafetensorsFile::from_bytes(w.to_bytes(), "case/input.safetensors");

    CHECK_THROWS_AS(f.at("hidden_states"), smoe::invalid_argument);
    CHECK_THROWS_WITH(f.at("hidden_states"), Contains("case/input.safetensors: tensor 'hidden_states'' = missing"));
    CHECK_THROWS_WITH(io::read_f32(f, "x", {3, -1}),
                      Contains("case/input.safetensors: tensor 'x' shape' = [2, 3]: expected [3, any]"));
    CHECK_THROWS_WITH(io::read_f32(f, "x", {2, 3, 1}), Contains("expected [2, 3, 1]"));
    CHECK_THROWS_WITH(io::read_f32(f, "ids"), Contains("tensor 'ids' dtype' = I32: expected F32, BF16 or F16"));
    CHECK_THROWS_WITH(io::read_i32(f, "x"), Contains("tensor 'x' dtype' = F32"));
    CHECK_THROWS_WITH(io::read_u8(f, "x"), Contains("U8 or BOOL"));
    CHECK(io::read_f32(f, "x", {-1, 3}) == x);
}

TEST_CASE("a missing or unreadable file is an error naming it", "[io][safetensors]") {
    TempDir dir;
    CHECK_THROWS_WITH(io::SafetensorsFile::open(dir.path / "nope.safetensors"),
                      Contains("nope.safetensors") && Contains("open failed"));
    CHECK_THROWS_WITH(io::SafetensorsFile::open(dir.path), Contains("a directory"));
    write_text(dir.path / "empty.safetensors", "");
    CHECK_THROWS_WITH(io::SafetensorsFile::open(dir.path / "empty.safetensors"), Contains("file size' = 0 bytes"));
}

TEST_CASE("the writer refuses tensors it could not write correctly", "[io][safetensors]") {
    io::SafetensorsWriter w;
    std::vector<float> const three(3, 0.0f);
    w.add_f32("a", {3}, three);
    CHECK_THROWS_WITH(w.add_f32("a", {3}, three), Contains("'name' = a") && Contains("not added before"));
    CHECK_THROWS_WITH(w.add_f32("b", {2, 2}, three), Contains("16 bytes for dtype F32"));
    CHECK_THROWS_WITH(w.add_f32("c", {-3}, three), Contains("non-negative"));
    CHECK_THROWS_WITH(w.add_f32("__metadata__", {3}, three), Contains("other than __metadata__"));
    CHECK_THROWS_AS(w.add_f32("\xFF", {3}, three), smoe::invalid_argument);
}

TEST_CASE("a checkpoint folder is read through its shard index", "[io][checkpoint]") {
    TempDir dir;
    std::vector<float> const a = {1, 2, 3, 4};
    std::vector<std::uint16_t> const b = {0x3F80, 0x4000};  // bf16 1, 2
    io::SafetensorsWriter s1, s2;
    s1.add_f32("model.a", {2, 2}, a);
    s1.add_f32("unlisted", {1}, std::vector<float>{9});
    s2.add_bf16("model.b", {2}, b);
    s1.write(dir.path / "model-00001-of-00002.safetensors");
    s2.write(dir.path / "model-00002-of-00002.safetensors");
    auto const index = dir.path / io::Checkpoint::kIndexFile;
    write_text(index, R"({"metadata": {"total_size": 20}, "weight_map": {
        "model.a": "model-00001-of-00002.safetensors", "model.b": "model-00002-of-00002.safetensors"}})");

    SECTION("a well-formed index") {
        auto const c = io::Checkpoint::open(dir.path);
        CHECK(c.names() == std::vector<std::string>{"model.a", "model.b"});
        CHECK(c.files().size() == 2);
        CHECK(io::read_f32(c, "model.a", {2, 2}) == a);
        CHECK(io::read_f32(c, "model.b", {2}) == std::vector<float>{1.0f, 2.0f});
        CHECK(c.find("unlisted") == nullptr);  // the index decides what the checkpoint holds
        CHECK_THAT(c.at("model.b").file, Contains("model-00002-of-00002.safetensors"));
        CHECK_THROWS_WITH(c.at("model.c"), Contains(io::Checkpoint::kIndexFile) && Contains("'model.c'' = missing"));
        CHECK_THROWS_WITH(io::read_f32(c, "model.a", {4}),
                          Contains("model-00001-of-00002.safetensors: tensor 'model.a' shape' = [2, 2]"));
    }
    SECTION("an index naming a missing shard") {
        write_text(index, R"({"weight_map": {"model.a": "model-00003-of-00002.safetensors"}})");
        CHECK_THROWS_WITH(io::Checkpoint::open(dir.path),
                          Contains(io::Checkpoint::kIndexFile) && Contains("weight_map 'model.a'") &&
                              Contains("'model-00003-of-00002.safetensors'") && Contains("missing shard"));
    }
    SECTION("an index mapping a tensor to a shard that lacks it") {
        write_text(index, R"({"weight_map": {"model.b": "model-00001-of-00002.safetensors"}})");
        CHECK_THROWS_WITH(io::Checkpoint::open(dir.path), Contains("weight_map 'model.b'") && Contains("it does not"));
    }
    SECTION("an index pointing outside the folder") {
        write_text(index, R"({"weight_map": {"model.a": "../model-00001-of-00002.safetensors"}})");
        CHECK_THROWS_WITH(io::Checkpoint::open(dir.path), Contains("a file name inside the checkpoint folder"));
    }
    SECTION("a malformed index") {
        write_text(index, R"({"weight_map": {"model.a": "x",)");
        CHECK_THROWS_WITH(io::Checkpoint::open(dir.path), Contains(io::Checkpoint::kIndexFile) && Contains("valid JSON"));
        write_text(index, R"({"metadata": {}})");
        CHECK_THROWS_WITH(io::Checkpoint::open(dir.path), Contains("weight_map' = missing"));
        write_text(index, R"({"weight_map": ["model.a"]})");
        CHECK_THROWS_WITH(io::Checkpoint::open(dir.path), Contains("weight_map' = array"));
        write_text(index, R"({"weight_map": {"model.a": 1}})");
        CHECK_THROWS_WITH(io::Checkpoint::open(dir.path), Contains("weight_map 'model.a'' = number"));
        write_text(index, R"({"weight_map": {"model.a": "model-00001-of-00002.safetensors", "model.a": "model-00001-of-00002.safetensors"}})");
        CHECK_THROWS_WITH(io::Checkpoint::open(dir.path), Contains("duplicate key"));
    }
    SECTION("a corrupted shard is reported with the shard's name") {
        write_text(dir.path / "model-00002-of-00002.safetensors", "short");
        CHECK_THROWS_WITH(io::Checkpoint::open(dir.path),
                          Contains("model-00002-of-00002.safetensors: file size' = 5 bytes"));
    }
}

TEST_CASE("a checkpoint folder without an index holds every safetensors file in it", "[io][checkpoint]") {
    TempDir dir;
    io::SafetensorsWriter s1, s2;
    s1.add_f32("x", {1}, std::vector<float>{1});
    s2.add_f32("y", {1}, std::vector<float>{2});
    s1.write(dir.path / "a.safetensors");
    s2.write(dir.path / "b.safetensors");
    write_text(dir.path / "config.json", "{}");
    {
        auto const c = io::Checkpoint::open(dir.path);
        CHECK(c.names() == std::vector<std::string>{"x", "y"});
        CHECK(io::read_f32(c, "y") == std::vector<float>{2});
    }
    s2.add_f32("x", {1}, std::vector<float>{3});
    s2.write(dir.path / "b.safetensors");
    CHECK_THROWS_WITH(io::Checkpoint::open(dir.path),
                      Contains("b.safetensors: tensor 'x'' = also in") && Contains("a.safetensors") &&
                          Contains("each tensor in one file only"));

    TempDir none;
    CHECK_THROWS_WITH(io::Checkpoint::open(none.path), Contains("no *.safetensors file"));
    CHECK_THROWS_WITH(io::Checkpoint::open(none.path / "absent"), Contains("missing or not a folder"));
}

TEST_CASE("the fuzz seed corpus holds what its file names say", "[io][safetensors]") {
    // tests/fuzz/make_corpus.py: valid_* files parse, invalid_* files are rejected; a corpus that
    // drifted from its names would seed the fuzzer with less than it claims.
    int valid = 0, invalid = 0;
    for (auto const& e : fs::directory_iterator(fs::path(SMOE_TESTS_DIR) / "fuzz" / "corpus")) {
        std::string const name = e.path().filename().string();
        CAPTURE(name);
        std::ifstream in(e.path(), std::ios::binary);
        std::string const text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
        std::vector<std::byte> bytes(text.size());
        std::memcpy(bytes.data(), text.data(), text.size());
        if (name == "valid_index_json") {
            CHECK(io::parse_json_strict(text, name).contains("weight_map"));
        } else if (name.starts_with("valid_")) {
            CHECK_NOTHROW(io::SafetensorsFile::from_bytes(std::move(bytes), name));
            ++valid;
        } else if (name.starts_with("invalid_")) {
            CHECK_THROWS_AS(io::SafetensorsFile::from_bytes(std::move(bytes), name), io::file_error);
            ++invalid;
        }
    }
    CHECK(valid >= 5);
    CHECK(invalid >= 15);
}
