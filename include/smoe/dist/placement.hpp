#pragma once
// smoe::dist::ExpertPlacement: which rank holds each of the E global experts. A rank stores the
// weights of its own experts only, stacked in increasing global id: its local expert l is the l-th
// smallest global id it owns.
//
//   auto p = ExpertPlacement::contiguous(8, 3);         // ranks own {0,1}, {2,3,4}, {5,6,7}
//   auto q = ExpertPlacement::from_table({1, 0, 1, 0}, 2);  // rank 0 owns {1,3}, rank 1 owns {0,2}
//
// A rank may own no expert (it still routes and combines its own tokens). Replicated hot experts
// (EPLB, DeepSeek-V3's redundant experts) are the planned extension: a table with several ranks per
// expert, and a source that picks one replica per row (for example by its own rank); the exchange
// itself does not change, since it only needs a destination (rank, local id) per row.

#include <algorithm>
#include <cstdint>
#include <string>
#include <vector>

#include "smoe/core/error.hpp"

namespace smoe::inline v0::dist {

class ExpertPlacement {
public:
    ExpertPlacement() = default;

    // Rank p owns the global ids [p·E/P, (p+1)·E/P) (floor division): blocks whose sizes differ by
    // at most one, the larger ones last.
    static ExpertPlacement contiguous(std::int64_t num_experts, int num_ranks) {
        check_sizes(num_experts, num_ranks);
        std::vector<std::int32_t> table(static_cast<std::size_t>(num_experts));
        for (int p = 0; p < num_ranks; ++p)
            for (std::int64_t e = p * num_experts / num_ranks; e < (p + 1) * num_experts / num_ranks; ++e)
                table[static_cast<std::size_t>(e)] = p;
        return ExpertPlacement(std::move(table), num_ranks);
    }

    // rank_of[e] in [0, num_ranks) for every global expert e.
    static ExpertPlacement from_table(std::vector<std::int32_t> rank_of, int num_ranks) {
        check_sizes(static_cast<std::int64_t>(rank_of.size()), num_ranks);
        for (std::size_t e = 0; e < rank_of.size(); ++e)
            if (rank_of[e] < 0 || rank_of[e] >= num_ranks)
                smoe::detail::fail("rank_of", std::to_string(rank_of[e]) + " at expert " + std::to_string(e),
                                   "a rank in [0, " + std::to_string(num_ranks) + ")");
        return ExpertPlacement(std::move(rank_of), num_ranks);
    }

    std::int64_t num_experts() const { return static_cast<std::int64_t>(rank_of_.size()); }
    int num_ranks() const { return num_ranks_; }
    std::int32_t rank_of(std::int64_t e) const { return rank_of_[static_cast<std::size_t>(e)]; }
    std::int32_t local_of(std::int64_t e) const { return local_of_[static_cast<std::size_t>(e)]; }
    std::int64_t num_local(int rank) const { return offsets_[static_cast<std::size_t>(rank) + 1] - offsets_[static_cast<std::size_t>(rank)]; }
    // The largest num_local over ranks: the width of a counts block in the exchange.
    std::int64_t max_local() const { return max_local_; }
    // The global id of `rank`'s local expert l.
    std::int32_t global_id(int rank, std::int64_t l) const {
        return experts_[static_cast<std::size_t>(offsets_[static_cast<std::size_t>(rank)] + l)];
    }

private:
    ExpertPlacement(std::vector<std::int32_t> rank_of, int num_ranks)
        : rank_of_(std::move(rank_of)), local_of_(rank_of_.size()), offsets_(static_cast<std::size_t>(num_ranks) + 1, 0),
          experts_(rank_of_.size()), num_ranks_(num_ranks) {
        // A counting sort by rank, stable in global id, gives each rank's experts in increasing id.
        for (auto r : rank_of_) ++offsets_[static_cast<std::size_t>(r) + 1];
        for (int p = 0; p < num_ranks; ++p) {
            offsets_[static_cast<std::size_t>(p) + 1] += offsets_[static_cast<std::size_t>(p)];
            max_local_ = std::max(max_local_, num_local(p));
        }
        std::vector<std::int64_t> next(offsets_.begin(), offsets_.end() - 1);
        for (std::size_t e = 0; e < rank_of_.size(); ++e) {
            auto const p = static_cast<std::size_t>(rank_of_[e]);
            local_of_[e] = static_cast<std::int32_t>(next[p] - offsets_[p]);
            experts_[static_cast<std::size_t>(next[p]++)] = static_cast<std::int32_t>(e);
        }
    }

    static void check_sizes(std::int64_t num_experts, int num_ranks) {
        if (num_ranks < 1) smoe::detail::fail("num_ranks", num_ranks, "at least one rank");
        if (num_experts < 1) smoe::detail::fail("num_experts", num_experts, "E >= 1");
        if (num_experts > INT32_MAX) smoe::detail::fail("num_experts", num_experts, "E < 2^31 (expert ids are int32)");
    }

    std::vector<std::int32_t> rank_of_, local_of_;
    std::vector<std::int64_t> offsets_;     // [P+1]: rank p's experts are experts_[offsets_[p], offsets_[p+1])
    std::vector<std::int32_t> experts_;     // global ids grouped by rank, increasing within a rank
    int num_ranks_ = 0;
    std::int64_t max_local_ = 0;
};

}  // namespace smoe::inline v0::dist
