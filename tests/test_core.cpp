// Core types: the workspace plan, views and the error type.

#include <algorithm>
#include <cstdint>
#include <stdexcept>
#include <vector>

#include <catch2/catch.hpp>

#include "common/avx512_codegen_probe.hpp"
#include "smoe/core/error.hpp"
#include "smoe/core/scratch_slots.hpp"
#include "smoe/core/view.hpp"
#include "smoe/core/workspace.hpp"

using Catch::Matchers::Contains;

// Every tests/test_*.cpp is built with these flags (-march=native): on an AVX-512 CPU this fails when they
// lack the workaround for a compiler that miscompiles constant vectors (cmake/smoe_avx512_codegen.cmake),
// as test_balance's expected {1, 1, 0, 0} once became {1, 1, 1, 1} with g++ 12.2.
TEST_CASE("constant vectors keep their values under this build's flags", "[core][toolchain]") {
    CHECK(smoe_test::wrong_constant_values() == 0);
}

TEST_CASE("a workspace carves aligned buffers and sizes them the way it carves", "[core][workspace]") {
    smoe::WorkspaceSize size;
    size.take<float>(3);
    size.take<std::int32_t>(17);
    size.take_bytes(100);
    CHECK(size.bytes() == 64 + 128 + 128);
    // An unaligned caller buffer of required_bytes() is enough.
    std::vector<std::byte> raw(smoe::required_bytes(size.bytes()) + 3);
    smoe::Workspace ws(std::span<std::byte>(raw.data() + 3, smoe::required_bytes(size.bytes())));
    auto a = ws.take<float>(3);
    auto b = ws.take<std::int32_t>(17);
    auto sub = ws.take_bytes(100);
    CHECK(reinterpret_cast<std::uintptr_t>(a.data()) % 64 == 0);
    CHECK(reinterpret_cast<std::uintptr_t>(b.data()) % 64 == 0);
    CHECK(sub.capacity() == 128);
    CHECK(ws.used() == size.bytes());
    CHECK_THROWS_WITH(ws.take<float>(1000), Contains("'workspace'") && Contains("expected at least"));
    CHECK_THROWS_AS(ws.take<float>(1000), smoe::invalid_argument);
}

TEST_CASE("an owned workspace buffer is aligned and movable", "[core][workspace]") {
    smoe::WorkspaceBuffer buf(1000);
    CHECK(buf.size() == 1024);
    CHECK(reinterpret_cast<std::uintptr_t>(buf.bytes().data()) % 64 == 0);
    smoe::WorkspaceBuffer moved(std::move(buf));
    CHECK(moved.size() == 1024);
    CHECK(buf.size() == 0);
    CHECK(smoe::WorkspaceBuffer(0).bytes().empty());
}

TEST_CASE("scratch slots are claimed one per item and given back, also when the item throws", "[core][workspace]") {
    smoe::WorkspaceSize size;
    smoe::ScratchSlots(size, 100);
    smoe::WorkspaceBuffer buf(size.bytes());
    smoe::Workspace ws(buf.bytes());
    smoe::ScratchSlots const slots(ws, 100);
    std::size_t const n = smoe::ScratchSlots::count();
    // Nested claims take distinct slots until none is left; then an item gets an empty span.
    std::vector<std::byte*> seen;
    auto claim = [&](auto&& self, std::size_t depth) -> void {
        slots.with([&](std::span<std::byte> s) {
            if (depth == n) {
                CHECK(s.empty());
                return;
            }
            REQUIRE(s.size() >= 100);
            seen.push_back(s.data());
            self(self, depth + 1);
        });
    };
    claim(claim, 0);
    std::sort(seen.begin(), seen.end());
    CHECK(std::adjacent_find(seen.begin(), seen.end()) == seen.end());
    CHECK(seen.size() == n);
    std::byte* first = nullptr;
    CHECK_THROWS_AS(slots.with([&](std::span<std::byte> s) {
                        first = s.data();
                        throw std::runtime_error("item failed");
                    }),
                    std::runtime_error);
    slots.with([&](std::span<std::byte> s) { CHECK(s.data() == first); });  // given back: the same slot again
}

TEST_CASE("invalid_argument names the argument, the value and the expectation", "[core][error]") {
    try {
        smoe::detail::fail("top_k", 9, "1 <= top_k <= num_experts (8)");
        FAIL("no exception");
    } catch (smoe::invalid_argument const& e) {
        CHECK(e.argument() == "top_k");
        CHECK(e.value() == "9");
        CHECK(std::string(e.what()) == "smoe: invalid argument 'top_k' = 9: expected 1 <= top_k <= num_experts (8)");
    }
}

TEST_CASE("views check their shapes and convert to const only", "[core][view]") {
    std::vector<float> data(12);
    smoe::MatrixView<float> m(data.data(), 3, 4);
    smoe::MatrixView<float const> c = m;
    CHECK(c.rows == 3);
    CHECK(c.block(1, 2).row(0) == data.data() + 4);
    CHECK_NOTHROW(smoe::detail::check_view(c, "x", 3, 4));
    CHECK_NOTHROW(smoe::detail::check_view(c, "x", -1, 4));
    CHECK_THROWS_WITH(smoe::detail::check_view(c, "x", 3, 5), Contains("'x'") && Contains("[3, 4]") && Contains("[3, 5]"));
    CHECK_THROWS_WITH(smoe::detail::check_view(smoe::MatrixView<float const>(nullptr, 2, 2), "gate", 2, 2), Contains("null"));
    CHECK_THROWS_WITH(smoe::detail::check_view(smoe::MatrixView<float const>(data.data(), 2, 4, 3), "gate", 2, 4), Contains("ld"));
    static_assert(!std::is_convertible_v<smoe::MatrixView<float const>, smoe::MatrixView<float>>);
    smoe::StackedView<float const> s(data.data(), 2, 3, 2);
    CHECK(s[1].data == data.data() + 6);
    CHECK_THROWS_WITH(smoe::detail::check_stacked(s, "w1", 2, 2, 3), Contains("'w1'") && Contains("[2, 3, 2]"));
}
