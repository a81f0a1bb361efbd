#pragma once
// Element-wise comparison of a computed sequence with expected values from the spec, reporting every
// index that fails rather than only the first.

#include <cstddef>
#include <iterator>
#include <vector>

#include <catch2/catch.hpp>

namespace smoe_test {

// |actual - expected| <= rel * |expected| + abs. `abs` exists for expected zeros (and -0).
template <class Range>
void check_all_close(Range const& actual, std::vector<double> const& expected, double rel, double abs = 0.0) {
    REQUIRE(static_cast<std::size_t>(std::size(actual)) == expected.size());
    for (std::size_t i = 0; i < expected.size(); ++i) {
        INFO("index " << i);
        CHECK(static_cast<double>(actual[i]) == Approx(expected[i]).epsilon(rel).margin(abs));
    }
}

template <class Range, class T>
void check_equal(Range const& actual, std::vector<T> const& expected) {
    REQUIRE(static_cast<std::size_t>(std::size(actual)) == expected.size());
    for (std::size_t i = 0; i < expected.size(); ++i) {
        INFO("index " << i);
        CHECK(actual[i] == expected[i]);
    }
}

}  // namespace smoe_test
